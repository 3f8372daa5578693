//! Credentials: terminals and admin users, their tunnel addresses and admin ports, and revocation.
//!
//! Allocation reads the current allocations once and hands out addresses in memory, inside the same (serialized)
//! write transaction as the inserts, so a batch of 2000 terminals costs a handful of statements. The partial
//! unique indexes stay the final word: two allocators that somehow raced would fail, never share an address.

use std::collections::{HashMap, HashSet};

use cas_pki::RevocationReason;
use sqlx::QueryBuilder;

use super::audit::NewAudit;
use super::certificates::{NewCert, cert_err, insert_cert};
use super::tokens::NewToken;
use super::{Clash, DbError, Store, clash, narrow, parse_kind};
use crate::domain::{Actor, Kind, Name, PortRange};

/// A terminal or admin credential. Rows are never deleted: a revoked credential stays for the record and its
/// name, address or port become free for a new credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub id: i64,
    pub name: Name,
    pub kind: Kind,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    pub revoke_reason: Option<String>,
    /// Terminal: index of the VPN instance whose subnet holds its address.
    pub home_instance: Option<u32>,
    /// Terminal: offset of its address inside that instance's subnet (≥ 2: .0 is the network, .1 the server).
    pub host_index: Option<u32>,
    /// Admin: the port of its own OpenVPN instance.
    pub admin_port: Option<u16>,
    pub hw_serial: Option<String>,
    pub version: Option<String>,
    pub last_seen: Option<i64>,
    pub paired_at: Option<i64>,
    /// Admin: suspended after repeated takeovers of its session (refused on connect until resumed).
    pub suspended_at: Option<i64>,
}

impl Credential {
    pub fn is_revoked(&self) -> bool {
        self.revoked_at.is_some()
    }
}

/// One terminal to create: its name, and optionally its certificate (server-keygen) and pairing token.
#[derive(Debug, Clone)]
pub struct NewTerminal {
    pub name: Name,
    pub cert: Option<NewCert>,
    pub token: Option<NewToken>,
}

/// How terminal addresses are laid out: `instances` VPN instances, each with host indexes
/// `2 .. 2 + hosts_per_instance`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TerminalLayout {
    pub instances: u32,
    pub hosts_per_instance: u32,
}

/// First host index handed out: .0 is the network address and .1 the server's own tunnel address.
const FIRST_HOST: u32 = 2;

/// Rows per multi-row INSERT: 100 rows × at most 8 columns stays under SQLite's historic 999-variable limit.
const CHUNK: usize = 100;

/// Column list matching [`CredRow`].
macro_rules! cred_cols {
    () => {
        "id, name, kind, created_at, revoked_at, revoke_reason, home_instance, host_index, admin_port, \
         hw_serial, version, last_seen, paired_at, suspended_at"
    };
}
pub(crate) const CRED_BY_ID: &str = concat!("SELECT ", cred_cols!(), " FROM credentials WHERE id = $1");
/// Every credential row, filtered by what the caller appends (`WHERE …`).
pub(crate) const CRED_SELECT: &str = concat!("SELECT ", cred_cols!(), " FROM credentials");
const CRED_ACTIVE_BY_NAME: &str =
    concat!("SELECT ", cred_cols!(), " FROM credentials WHERE name = $1 AND revoked_at IS NULL");

/// A `credentials` row as stored; [`CredRow::into_credential`] validates it into the domain type.
#[derive(sqlx::FromRow)]
pub(crate) struct CredRow {
    id: i64,
    name: String,
    kind: String,
    created_at: i64,
    revoked_at: Option<i64>,
    revoke_reason: Option<String>,
    home_instance: Option<i64>,
    host_index: Option<i64>,
    admin_port: Option<i64>,
    hw_serial: Option<String>,
    version: Option<String>,
    last_seen: Option<i64>,
    paired_at: Option<i64>,
    suspended_at: Option<i64>,
}

impl CredRow {
    pub(crate) fn into_credential(self) -> Result<Credential, DbError> {
        Ok(Credential {
            id: self.id,
            name: self.name.parse().map_err(|e: crate::domain::DomainError| DbError::Corrupt(e.to_string()))?,
            kind: parse_kind(&self.kind)?,
            created_at: self.created_at,
            revoked_at: self.revoked_at,
            revoke_reason: self.revoke_reason,
            home_instance: narrow("home_instance", self.home_instance)?,
            host_index: narrow("host_index", self.host_index)?,
            admin_port: narrow("admin_port", self.admin_port)?,
            hw_serial: self.hw_serial,
            version: self.version,
            last_seen: self.last_seen,
            paired_at: self.paired_at,
            suspended_at: self.suspended_at,
        })
    }
}

fn rows_into(rows: Vec<CredRow>) -> Result<Vec<Credential>, DbError> {
    rows.into_iter().map(CredRow::into_credential).collect()
}

/// An active credential's name and, for terminals, its address, as read before allocating.
#[derive(sqlx::FromRow)]
struct Active {
    name: String,
    home_instance: Option<i64>,
    host_index: Option<i64>,
}

/// Checks the names and allocates an address for each new terminal, in input order. Pure, so it can be tested
/// without a database and stays linear in the batch size.
fn plan_terminals(new: &[NewTerminal], active: &[Active], layout: TerminalLayout) -> Result<Vec<(u32, u32)>, DbError> {
    let mut names: HashSet<&str> = active.iter().map(|a| a.name.as_str()).collect();
    for t in new {
        if !names.insert(t.name.as_str()) {
            return Err(DbError::NameTaken { name: t.name.clone() });
        }
    }

    let hosts = layout.hosts_per_instance as usize;
    let mut used = vec![vec![false; hosts]; layout.instances as usize];
    let mut count = vec![0usize; layout.instances as usize];
    for a in active {
        // Addresses outside the current layout (it shrank) neither count nor block anything.
        let (Some(i), Some(h)) = (a.home_instance, a.host_index) else { continue };
        let (Ok(i), Ok(slot)) = (usize::try_from(i), usize::try_from(h - i64::from(FIRST_HOST))) else { continue };
        if i < used.len() && slot < hosts && !used[i][slot] {
            used[i][slot] = true;
            count[i] += 1;
        }
    }
    // Nothing is freed during a batch, so each instance's lowest free slot only ever moves up.
    let mut cursor = vec![0usize; used.len()];
    let mut out = Vec::with_capacity(new.len());
    for _ in new {
        let instance = (0..used.len())
            .filter(|&i| count[i] < hosts)
            .min_by_key(|&i| (count[i], i))
            .ok_or(DbError::AddressesExhausted)?;
        while used[instance][cursor[instance]] {
            cursor[instance] += 1;
        }
        let slot = cursor[instance];
        used[instance][slot] = true;
        count[instance] += 1;
        // Both fit in u32: the instance came from a u32 count, the slot is below hosts_per_instance.
        out.push((instance as u32, slot as u32 + FIRST_HOST));
    }
    Ok(out)
}

impl Store {
    /// Creates every terminal in one transaction, all or nothing: checks the names (`NameTaken` names the first
    /// clash, with an active credential or earlier in the batch), gives each the home instance with the fewest
    /// active terminals (ties: lowest index) and the lowest free host index there (`AddressesExhausted` when
    /// every instance is full), and inserts the certificates (CA `terminal`) and tokens that come with them.
    /// Returns the credentials in input order.
    pub async fn create_terminals(
        &self,
        new: &[NewTerminal],
        layout: TerminalLayout,
        now: i64,
    ) -> Result<Vec<Credential>, DbError> {
        self.create_terminals_audited(new, layout, now, None).await
    }

    /// As [`Store::create_terminals`], with the audit row of the change in the same transaction. Durable at its
    /// commit on SQLite too (`in_durable_tx!`): once it returns, the caller hands out tokens and profiles (an
    /// import marks its journal committed and publishes keys), and a power cut must not take back terminals whose
    /// credentials are already out.
    pub async fn create_terminals_audited(
        &self,
        new: &[NewTerminal],
        layout: TerminalLayout,
        now: i64,
        audit: Option<&NewAudit>,
    ) -> Result<Vec<Credential>, DbError> {
        if new.is_empty() {
            return Ok(Vec::new());
        }
        let result = in_durable_tx!(self, tx => async {
            if let Some(a) = audit {
                sqlx::query(
                    "INSERT INTO audit (at, actor, action, subject, detail, source) VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(now)
                .bind(a.actor.to_string())
                .bind(a.action.as_str())
                .bind(a.subject.as_str())
                .bind(a.detail.as_str())
                .bind(a.source.as_deref())
                .execute(&mut *tx)
                .await?;
            }
            let active: Vec<Active> = sqlx::query_as(
                "SELECT name, home_instance, host_index FROM credentials WHERE revoked_at IS NULL",
            )
            .fetch_all(&mut *tx)
            .await?;
            let plan = plan_terminals(new, &active, layout)?;

            let mut ids: HashMap<String, i64> = HashMap::with_capacity(new.len());
            let rows: Vec<(&NewTerminal, &(u32, u32))> = new.iter().zip(&plan).collect();
            for chunk in rows.chunks(CHUNK) {
                let mut q = QueryBuilder::new(
                    "INSERT INTO credentials (name, kind, created_at, home_instance, host_index) ",
                );
                q.push_values(chunk, |mut b, (t, (instance, host))| {
                    b.push_bind(t.name.as_str())
                        .push_bind("terminal")
                        .push_bind(now)
                        .push_bind(i64::from(*instance))
                        .push_bind(i64::from(*host));
                });
                // SQLite does not promise RETURNING rows in VALUES order: match them up by name (unique here).
                q.push(" RETURNING id, name");
                let inserted: Vec<(i64, String)> = q.build_query_as().fetch_all(&mut *tx).await?;
                ids.extend(inserted.into_iter().map(|(id, name)| (name, id)));
            }
            let id_of = |t: &NewTerminal| {
                ids.get(t.name.as_str()).copied().ok_or_else(|| {
                    DbError::Corrupt(format!("no id came back for the new terminal {}", t.name))
                })
            };

            let certs: Vec<(i64, &NewCert)> = new
                .iter()
                .filter_map(|t| t.cert.as_ref().map(|c| id_of(t).map(|id| (id, c))))
                .collect::<Result<_, _>>()?;
            for chunk in certs.chunks(CHUNK) {
                let mut q = QueryBuilder::new(
                    "INSERT INTO certificates (serial, ca, credential_id, common_name, not_before, not_after, \
                     cert_pem, created_at) ",
                );
                q.push_values(chunk, |mut b, (id, c)| {
                    b.push_bind(c.serial.as_str())
                        .push_bind("terminal")
                        .push_bind(*id)
                        .push_bind(c.common_name.as_str())
                        .push_bind(c.not_before)
                        .push_bind(c.not_after)
                        .push_bind(c.cert_pem.as_str())
                        .push_bind(now);
                });
                q.build().execute(&mut *tx).await?;
            }

            let tokens: Vec<(i64, &NewToken)> = new
                .iter()
                .filter_map(|t| t.token.as_ref().map(|k| id_of(t).map(|id| (id, k))))
                .collect::<Result<_, _>>()?;
            for chunk in tokens.chunks(CHUNK) {
                let mut q = QueryBuilder::new(
                    "INSERT INTO pairing_tokens (id, credential_id, secret_hash, created_at, expires_at) ",
                );
                q.push_values(chunk, |mut b, (id, k)| {
                    b.push_bind(k.id.as_str())
                        .push_bind(*id)
                        .push_bind(k.secret_hash.as_str())
                        .push_bind(now)
                        .push_bind(k.expires_at);
                });
                q.build().execute(&mut *tx).await?;
            }

            new.iter()
                .zip(&plan)
                .map(|(t, &(instance, host))| {
                    Ok(Credential {
                        id: id_of(t)?,
                        name: t.name.clone(),
                        kind: Kind::Terminal,
                        created_at: now,
                        revoked_at: None,
                        revoke_reason: None,
                        home_instance: Some(instance),
                        host_index: Some(host),
                        admin_port: None,
                        hw_serial: None,
                        version: None,
                        last_seen: None,
                        paired_at: None,
                        suspended_at: None,
                    })
                })
                .collect::<Result<Vec<_>, DbError>>()
        });
        match result {
            Err(DbError::Sqlx(e)) => Err(self.explain_batch_clash(new, e).await),
            other => other,
        }
    }

    /// Turns a unique-index violation from a failed batch into the error that names the culprit. Runs only on the
    /// failure path, after the rollback.
    async fn explain_batch_clash(&self, new: &[NewTerminal], e: sqlx::Error) -> DbError {
        match clash(&e) {
            Some(Clash::Serial) => {
                let mut seen = HashSet::new();
                for c in new.iter().filter_map(|t| t.cert.as_ref()) {
                    let taken = !seen.insert(c.serial.as_str())
                        || matches!(self.certificate_by_serial(&c.serial).await, Ok(Some(_)));
                    if taken {
                        return DbError::SerialTaken { serial: c.serial.clone() };
                    }
                }
            }
            Some(Clash::Name) => {
                for t in new {
                    if matches!(self.credential_by_name(&t.name).await, Ok(Some(c)) if !c.is_revoked()) {
                        return DbError::NameTaken { name: t.name.clone() };
                    }
                }
            }
            _ => {}
        }
        DbError::Sqlx(e)
    }

    /// Creates an admin credential on the lowest port of `ports` that no active admin credential holds, with its
    /// certificate (CA `admin`), in one transaction. `PortsExhausted` names the range.
    pub async fn create_admin(
        &self,
        name: &Name,
        ports: PortRange,
        cert: &NewCert,
        now: i64,
    ) -> Result<Credential, DbError> {
        in_tx!(self, tx => async {
            let taken: Option<i64> =
                sqlx::query_scalar("SELECT id FROM credentials WHERE name = $1 AND revoked_at IS NULL")
                    .bind(name.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
            if taken.is_some() {
                return Err(DbError::NameTaken { name: name.clone() });
            }
            let used: Vec<i64> = sqlx::query_scalar(
                "SELECT admin_port FROM credentials \
                 WHERE kind = 'admin' AND revoked_at IS NULL AND admin_port BETWEEN $1 AND $2",
            )
            .bind(i64::from(ports.start()))
            .bind(i64::from(ports.end()))
            .fetch_all(&mut *tx)
            .await?;
            let port = ports
                .iter()
                .find(|p| !used.contains(&i64::from(*p)))
                .ok_or_else(|| DbError::PortsExhausted { range: ports.to_string() })?;
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO credentials (name, kind, created_at, admin_port) VALUES ($1, 'admin', $2, $3) \
                 RETURNING id",
            )
            .bind(name.as_str())
            .bind(now)
            .bind(i64::from(port))
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| match clash(&e) {
                Some(Clash::Name) => DbError::NameTaken { name: name.clone() },
                _ => DbError::Sqlx(e),
            })?;
            insert_cert(Kind::Admin, Some(id), cert, now).execute(&mut *tx).await.map_err(|e| cert_err(e, cert))?;
            let row: CredRow = sqlx::query_as(CRED_BY_ID).bind(id).fetch_one(&mut *tx).await?;
            row.into_credential()
        })
    }

    /// The active credential called `name`, else the most recently revoked one.
    pub async fn credential_by_name(&self, name: &Name) -> Result<Option<Credential>, DbError> {
        const SQL: &str = concat!(
            "SELECT ",
            cred_cols!(),
            " FROM credentials WHERE name = $1 \
             ORDER BY CASE WHEN revoked_at IS NULL THEN 0 ELSE 1 END, revoked_at DESC, id DESC LIMIT 1"
        );
        let row: Option<CredRow> =
            on_pool!(self, pool => sqlx::query_as(SQL).bind(name.as_str()).fetch_optional(pool).await?);
        row.map(CredRow::into_credential).transpose()
    }

    pub async fn credential_by_id(&self, id: i64) -> Result<Option<Credential>, DbError> {
        let row: Option<CredRow> =
            on_pool!(self, pool => sqlx::query_as(CRED_BY_ID).bind(id).fetch_optional(pool).await?);
        row.map(CredRow::into_credential).transpose()
    }

    /// Credentials of one kind (or all), ordered by name (bytewise), then id.
    pub async fn list_credentials(
        &self,
        kind: Option<Kind>,
        include_revoked: bool,
    ) -> Result<Vec<Credential>, DbError> {
        const SQL: &str = concat!(
            "SELECT ",
            cred_cols!(),
            " FROM credentials WHERE ($1 IS NULL OR kind = $1) AND ($2 = 1 OR revoked_at IS NULL) \
             ORDER BY name, id"
        );
        let kind = kind.map(Kind::as_str);
        let rows: Vec<CredRow> = on_pool!(self, pool => {
            sqlx::query_as(SQL).bind(kind).bind(i64::from(include_revoked)).fetch_all(pool).await?
        });
        rows_into(rows)
    }

    /// Revokes the active credential `name` in one transaction: the credential and all its unrevoked
    /// certificates are marked revoked (which frees its name, port or address), its unused pairing tokens are
    /// locked, and an audit row is written. Returns the revoked credential and the serials revoked (sorted).
    /// `NotFound` if no credential ever had that name, `AlreadyRevoked` if only revoked ones do.
    pub async fn revoke(
        &self,
        name: &Name,
        reason: RevocationReason,
        actor: &Actor,
        now: i64,
    ) -> Result<(Credential, Vec<String>, i64), DbError> {
        // Stored as its stable text (`key-compromise`, …), which is what the CRL is made from later.
        let reason_text = reason.as_str();
        // Durable: `revoke` returns a promise that the credential never connects again.
        in_durable_tx!(self, tx => async {
            let row: Option<CredRow> =
                sqlx::query_as(CRED_ACTIVE_BY_NAME).bind(name.as_str()).fetch_optional(&mut *tx).await?;
            let Some(row) = row else {
                let any: Option<i64> = sqlx::query_scalar("SELECT id FROM credentials WHERE name = $1 LIMIT 1")
                    .bind(name.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
                return Err(match any {
                    Some(_) => DbError::AlreadyRevoked { name: name.clone() },
                    None => DbError::NotFound { what: format!("credential {name}") },
                });
            };
            let mut credential = row.into_credential()?;
            sqlx::query("UPDATE credentials SET revoked_at = $1, revoke_reason = $2 WHERE id = $3")
                .bind(now)
                .bind(reason_text)
                .bind(credential.id)
                .execute(&mut *tx)
                .await?;
            let mut serials: Vec<String> = sqlx::query_scalar(
                "UPDATE certificates SET revoked_at = $1, revoke_reason = $2 \
                 WHERE credential_id = $3 AND revoked_at IS NULL RETURNING serial",
            )
            .bind(now)
            .bind(reason_text)
            .bind(credential.id)
            .fetch_all(&mut *tx)
            .await?;
            serials.sort();
            // A token handed out for a credential that is now revoked must never pair anything.
            sqlx::query(
                "UPDATE pairing_tokens SET locked_at = $1 \
                 WHERE credential_id = $2 AND used_at IS NULL AND locked_at IS NULL",
            )
            .bind(now)
            .bind(credential.id)
            .execute(&mut *tx)
            .await?;
            // On SQLite (one node, whose `serve vpn` this revocation's kill reaches next) its session rows go with this
            // commit, and the session writer never records a session of a revoked credential: the kill need not
            // wait for the writer. On PostgreSQL each node removes its own rows when it has ended the sessions (a
            // node cut off keeps its row, which is the truth: its openvpn still holds the session).
            if matches!(self, Store::Sqlite(_)) {
                sqlx::query("DELETE FROM sessions WHERE credential_id = $1").bind(credential.id).execute(&mut *tx).await?;
            }
            let detail = format!("{} credential; reason: {reason}; serials: {}", credential.kind, serials.join(","));
            sqlx::query("INSERT INTO audit (at, actor, action, subject, detail) VALUES ($1, $2, 'revoke', $3, $4)")
                .bind(now)
                .bind(actor.to_string())
                .bind(name.as_str())
                .bind(detail)
                .execute(&mut *tx)
                .await?;
            // Every node ends the credential's live sessions (`cluster`), announced with this commit.
            let event = publish_event_in!(tx, super::EventKind::Kill, name.as_str(), None::<&str>, now)?;
            credential.revoked_at = Some(now);
            credential.revoke_reason = Some(reason_text.to_owned());
            Ok((credential, serials, event))
        })
    }

    /// Heartbeat from a terminal: records when it was last seen and the version it reports.
    pub async fn touch_terminal(&self, credential_id: i64, version: &str, now: i64) -> Result<(), DbError> {
        let done = on_pool!(self, pool => {
            sqlx::query("UPDATE credentials SET last_seen = $1, version = $2 WHERE id = $3 AND kind = 'terminal'")
                .bind(now)
                .bind(version)
                .bind(credential_id)
                .execute(pool)
                .await?
                .rows_affected()
        });
        if done == 0 {
            return Err(DbError::NotFound { what: format!("terminal credential #{credential_id}") });
        }
        Ok(())
    }

    /// Marks a terminal paired (approval and server-keygen flows; token redemption does it itself) and records
    /// the hardware serial it reported, if any.
    /// Suspends (`Some(now)`) or resumes (`None`) an active admin credential. Returns whether it changed anything.
    /// A suspension also ends the credential's sessions on every node (an event, in the same transaction).
    pub async fn set_admin_suspended(&self, credential_id: i64, at: Option<i64>) -> Result<bool, DbError> {
        in_tx!(self, tx => async {
            let name: Option<String> = sqlx::query_scalar(
                "UPDATE credentials SET suspended_at = $1 \
                 WHERE id = $2 AND kind = 'admin' AND revoked_at IS NULL AND (suspended_at IS NULL) <> ($1 IS NULL) \
                 RETURNING name",
            )
            .bind(at)
            .bind(credential_id)
            .fetch_optional(&mut *tx)
            .await?;
            if let (Some(name), Some(now)) = (&name, at) {
                publish_event_in!(tx, super::EventKind::Kill, name.as_str(), None::<&str>, now)?;
            }
            Ok(name.is_some())
        })
    }

    pub async fn mark_paired(&self, credential_id: i64, hw_serial: Option<&str>, now: i64) -> Result<(), DbError> {
        let done = on_pool!(self, pool => {
            sqlx::query(
                "UPDATE credentials SET paired_at = $1, hw_serial = COALESCE($2, hw_serial) \
                 WHERE id = $3 AND kind = 'terminal'",
            )
            .bind(now)
            .bind(hw_serial)
            .bind(credential_id)
            .execute(pool)
            .await?
            .rows_affected()
        });
        if done == 0 {
            return Err(DbError::NotFound { what: format!("terminal credential #{credential_id}") });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str) -> NewTerminal {
        NewTerminal { name: name.parse().unwrap(), cert: None, token: None }
    }
    fn active(name: &str, at: Option<(i64, i64)>) -> Active {
        Active { name: name.into(), home_instance: at.map(|a| a.0), host_index: at.map(|a| a.1) }
    }
    const LAYOUT: TerminalLayout = TerminalLayout { instances: 3, hosts_per_instance: 2 };

    #[test]
    fn spreads_over_instances_then_fills_lowest_hosts() {
        let new: Vec<_> = (0..6).map(|i| t(&format!("t{i}"))).collect();
        let plan = plan_terminals(&new, &[], LAYOUT).unwrap();
        assert_eq!(plan, [(0, 2), (1, 2), (2, 2), (0, 3), (1, 3), (2, 3)]);
        let err = plan_terminals(&(0..7).map(|i| t(&format!("t{i}"))).collect::<Vec<_>>(), &[], LAYOUT);
        assert!(matches!(err, Err(DbError::AddressesExhausted)));
    }

    #[test]
    fn fills_the_least_loaded_instance_and_its_holes() {
        let existing = [active("a", Some((0, 3))), active("b", Some((1, 2))), active("c", Some((1, 3)))];
        let plan = plan_terminals(&[t("x"), t("y"), t("z")], &existing, LAYOUT).unwrap();
        assert_eq!(plan, [(2, 2), (0, 2), (2, 3)]);
    }

    #[test]
    fn ignores_addresses_outside_the_layout() {
        let existing = [active("a", Some((7, 2))), active("b", Some((0, 99))), active("adm", None)];
        assert_eq!(plan_terminals(&[t("x")], &existing, LAYOUT).unwrap(), [(0, 2)]);
    }

    #[test]
    fn names_the_first_clash() {
        let existing = [active("adm", None)];
        let err = plan_terminals(&[t("x"), t("y"), t("x"), t("adm")], &existing, LAYOUT).unwrap_err();
        assert!(matches!(err, DbError::NameTaken { name } if name.as_str() == "x"));
        let err = plan_terminals(&[t("adm"), t("x")], &existing, LAYOUT).unwrap_err();
        assert!(matches!(err, DbError::NameTaken { name } if name.as_str() == "adm"));
    }

    #[test]
    fn empty_layout_has_no_addresses() {
        let none = TerminalLayout { instances: 0, hosts_per_instance: 10 };
        assert!(matches!(plan_terminals(&[t("x")], &[], none), Err(DbError::AddressesExhausted)));
        let none = TerminalLayout { instances: 2, hosts_per_instance: 0 };
        assert!(matches!(plan_terminals(&[t("x")], &[], none), Err(DbError::AddressesExhausted)));
    }
}
