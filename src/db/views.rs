//! Read models for the admin UI and API: one page of terminals (search, filter, paging that stay fast with tens
//! of thousands of rows), certificates nearing expiry, and a filtered page of the audit trail. Only SQL text that
//! is ours is ever concatenated; everything the user typed is bound.

use super::health::{HealthClock, health_sql, live_sql};
use super::{AuditRow, DbError, Store, narrow};
use crate::domain::{Health, Kind, Name};

/// The health of `c` in a page query (placeholders `$9`, `$10`, `$11`: see [`TerminalFilter::sql`]).
static HEALTH: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| health_sql("$9", "$10", "$11"));

/// Which terminals a page lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TerminalFilter {
    /// Every unrevoked terminal.
    #[default]
    Active,
    /// A live tunnel: a session on a node whose heartbeat is alive (healthy or agent silent).
    Online,
    /// Health `offline`: paired (or seen) at least once, no live tunnel now (Scenario B: silent).
    Offline,
    NeverPaired,
    Revoked,
    /// Its newest certificate ends within the expiry horizon.
    Expiring,
    /// Health `healthy`.
    Healthy,
    /// Health `agent_silent`: the tunnel is up, the agent silent.
    AgentSilent,
}

impl TerminalFilter {
    pub const ALL: [TerminalFilter; 8] = [
        TerminalFilter::Active,
        TerminalFilter::Online,
        TerminalFilter::Healthy,
        TerminalFilter::AgentSilent,
        TerminalFilter::Offline,
        TerminalFilter::NeverPaired,
        TerminalFilter::Revoked,
        TerminalFilter::Expiring,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            TerminalFilter::Active => "active",
            TerminalFilter::Online => "online",
            TerminalFilter::Offline => "offline",
            TerminalFilter::NeverPaired => "never_paired",
            TerminalFilter::Revoked => "revoked",
            TerminalFilter::Expiring => "expiring",
            TerminalFilter::Healthy => "healthy",
            TerminalFilter::AgentSilent => "agent_silent",
        }
    }
    /// The condition; `$9`, `$10`, `$11` are the health clock's alive-since, fresh-after and scenario.
    fn sql(self) -> String {
        let health = |h: Health| format!("{} = '{}'", *HEALTH, h.as_str());
        match self {
            TerminalFilter::Active => "c.revoked_at IS NULL".into(),
            TerminalFilter::Online => format!("c.revoked_at IS NULL AND {}", live_sql("$9")),
            TerminalFilter::Offline => health(Health::Offline),
            TerminalFilter::NeverPaired => health(Health::NeverPaired),
            TerminalFilter::Healthy => health(Health::Healthy),
            TerminalFilter::AgentSilent => health(Health::AgentSilent),
            TerminalFilter::Revoked => "c.revoked_at IS NOT NULL".into(),
            TerminalFilter::Expiring => "c.revoked_at IS NULL AND EXISTS (SELECT 1 FROM certificates x \
                 WHERE x.credential_id = c.id AND x.revoked_at IS NULL AND x.not_after < $4)"
                .into(),
        }
    }
}

impl std::str::FromStr for TerminalFilter {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TerminalFilter::ALL.into_iter().find(|f| f.as_str() == s).ok_or_else(|| {
            format!(
                "unknown filter {s:?} (expected one of active, online, healthy, agent_silent, offline, never_paired, \
                 revoked, expiring)"
            )
        })
    }
}

/// One page's question. `search` matches a name (substring), a certificate serial (prefix) or, through
/// `address`, a tunnel address (the caller maps the address to its instance and host index).
#[derive(Debug, Clone, Default)]
pub struct TerminalQuery {
    pub filter: TerminalFilter,
    pub search: Option<String>,
    pub address: Option<(u32, u32)>,
    pub version: Option<String>,
    /// Certificates ending before this count as expiring.
    pub expiring_before: i64,
    pub offset: u32,
    pub limit: u32,
    /// When health is judged (also what `online` means: a session on a live node).
    pub health: HealthClock,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TerminalListRow {
    pub name: Name,
    pub home_instance: Option<u32>,
    pub host_index: Option<u32>,
    pub revoked_at: Option<i64>,
    pub paired_at: Option<i64>,
    pub last_seen: Option<i64>,
    pub version: Option<String>,
    pub cert_not_after: Option<i64>,
    /// Sessions on live nodes (stale rows of a dead node are not counted).
    pub sessions: u32,
    pub health: Health,
    /// When master recorded the change to `health` (`None`: not recorded).
    pub health_since: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct Row {
    name: String,
    home_instance: Option<i64>,
    host_index: Option<i64>,
    revoked_at: Option<i64>,
    paired_at: Option<i64>,
    last_seen: Option<i64>,
    version: Option<String>,
    cert_not_after: Option<i64>,
    sessions: i64,
    health: String,
    health_since: Option<i64>,
}

/// A certificate that ends soon, for the dashboard.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct ExpiringCert {
    pub ca: String,
    pub common_name: String,
    pub serial: String,
    pub not_after: i64,
}

/// Which audit rows a page lists.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Exact actor text (`web:alice`, `cli:root`, …).
    pub actor: Option<String>,
    /// Action prefix (`terminal.`, `revoke`, …).
    pub action: Option<String>,
    /// Subject, exact.
    pub subject: Option<String>,
    pub since: Option<i64>,
    pub before_id: Option<i64>,
    pub limit: u32,
}

/// How many credentials there are, by kind and state (what `status` and the dashboard count).
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct CredentialCounts {
    pub terminals: i64,
    pub terminals_paired: i64,
    pub admins: i64,
    pub revoked: i64,
}

impl Store {
    /// Counts in one pass of the table (a fleet's worth of rows is never loaded to be counted).
    pub async fn credential_counts(&self) -> Result<CredentialCounts, DbError> {
        const SQL: &str = "SELECT \
            COALESCE(SUM(CASE WHEN kind = 'terminal' AND revoked_at IS NULL THEN 1 ELSE 0 END), 0) AS terminals, \
            COALESCE(SUM(CASE WHEN kind = 'terminal' AND revoked_at IS NULL AND paired_at IS NOT NULL THEN 1 ELSE 0 END), 0) \
              AS terminals_paired, \
            COALESCE(SUM(CASE WHEN kind = 'admin' AND revoked_at IS NULL THEN 1 ELSE 0 END), 0) AS admins, \
            COALESCE(SUM(CASE WHEN revoked_at IS NOT NULL THEN 1 ELSE 0 END), 0) AS revoked \
            FROM credentials";
        Ok(on_pool!(self, pool => sqlx::query_as(SQL).fetch_one(pool).await?))
    }

    pub async fn count_sessions(&self) -> Result<i64, DbError> {
        Ok(on_pool!(self, pool => sqlx::query_scalar("SELECT COUNT(*) FROM sessions").fetch_one(pool).await?))
    }

    /// One page of terminals and how many match in all.
    pub async fn terminals_page(&self, q: &TerminalQuery) -> Result<(Vec<TerminalListRow>, u64), DbError> {
        // $1 search pattern (name substring), $2 serial prefix, $3/$5 address, $4 expiry horizon, $6 version.
        // $9 alive-since, $10 fresh-after, $11 scenario A (1/0): the health clock.
        let mut filter = format!("c.kind = 'terminal' AND {}", q.filter.sql());
        if q.search.is_some() {
            filter.push_str(
                " AND (c.name LIKE $1 ESCAPE '\\' OR EXISTS (SELECT 1 FROM certificates y WHERE y.credential_id = c.id \
                 AND y.serial LIKE $2 ESCAPE '\\') OR (c.home_instance = $3 AND c.host_index = $5))",
            );
        }
        if q.version.is_some() {
            filter.push_str(" AND c.version = $6");
        }
        // Every query binds all six parameters; PostgreSQL wants each one used, so unused ones are mentioned
        // harmlessly.
        filter.push_str(
            " AND ($1 = $1 OR $2 = $2 OR $3 = $3 OR $4 = $4 OR $5 = $5 OR $6 = $6 OR $9 = $9 OR $10 = $10 OR $11 = $11)",
        );
        let health = &*HEALTH;
        let page = format!(
            "SELECT c.name, c.home_instance, c.host_index, c.revoked_at, c.paired_at, c.last_seen, c.version, \
             (SELECT MAX(x.not_after) FROM certificates x WHERE x.credential_id = c.id AND x.revoked_at IS NULL) \
             AS cert_not_after, \
             (SELECT COUNT(*) FROM sessions s JOIN nodes n ON n.name = s.node \
              WHERE s.credential_id = c.id AND n.last_seen >= $9) AS sessions, \
             {health} AS health, CASE WHEN h.state = {health} THEN h.since END AS health_since \
             FROM credentials c LEFT JOIN terminal_health h ON h.credential_id = c.id \
             WHERE {filter} ORDER BY c.name, c.id LIMIT $7 OFFSET $8"
        );
        let count = format!(
            "SELECT COUNT(*) FROM credentials c LEFT JOIN terminal_health h ON h.credential_id = c.id WHERE {filter} \
             AND ($7 = $7 OR $8 = $8)"
        );
        let (alive, fresh, vpn) = (q.health.alive_since, q.health.fresh_after(), i64::from(q.health.vpn));
        let escaped = q.search.as_deref().map(|s| s.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"));
        let name_pat = escaped.as_deref().map_or_else(String::new, |s| format!("%{s}%"));
        let serial_pat = escaped.as_deref().map_or_else(String::new, |s| format!("{}%", s.to_ascii_lowercase()));
        let (inst, host) = q.address.map_or((-1, -1), |(i, h)| (i64::from(i), i64::from(h)));
        let version = q.version.clone().unwrap_or_default();
        let (rows, total): (Vec<Row>, i64) = on_pool!(self, pool => {
            let rows = sqlx::query_as(&page)
                .bind(&name_pat)
                .bind(&serial_pat)
                .bind(inst)
                .bind(q.expiring_before)
                .bind(host)
                .bind(&version)
                .bind(i64::from(q.limit))
                .bind(i64::from(q.offset))
                .bind(alive)
                .bind(fresh)
                .bind(vpn)
                .fetch_all(pool)
                .await?;
            let total = sqlx::query_scalar(&count)
                .bind(&name_pat)
                .bind(&serial_pat)
                .bind(inst)
                .bind(q.expiring_before)
                .bind(host)
                .bind(&version)
                .bind(0_i64)
                .bind(0_i64)
                .bind(alive)
                .bind(fresh)
                .bind(vpn)
                .fetch_one(pool)
                .await?;
            (rows, total)
        });
        let rows = rows
            .into_iter()
            .map(|r| {
                Ok(TerminalListRow {
                    name: r.name.parse().map_err(|e: crate::domain::DomainError| DbError::Corrupt(e.to_string()))?,
                    home_instance: narrow("home_instance", r.home_instance)?,
                    host_index: narrow("host_index", r.host_index)?,
                    revoked_at: r.revoked_at,
                    paired_at: r.paired_at,
                    last_seen: r.last_seen,
                    version: r.version,
                    cert_not_after: r.cert_not_after,
                    sessions: narrow("sessions", Some(r.sessions))?.unwrap_or(0),
                    health: r.health.parse().map_err(DbError::Corrupt)?,
                    health_since: r.health_since,
                })
            })
            .collect::<Result<Vec<_>, DbError>>()?;
        Ok((rows, u64::try_from(total).unwrap_or(0)))
    }

    /// The versions terminals report, for the filter's choices.
    pub async fn terminal_versions(&self) -> Result<Vec<String>, DbError> {
        Ok(on_pool!(self, pool => {
            sqlx::query_scalar(
                "SELECT DISTINCT version FROM credentials WHERE kind = 'terminal' AND revoked_at IS NULL \
                 AND version IS NOT NULL ORDER BY version",
            )
            .fetch_all(pool)
            .await?
        }))
    }

    /// Unrevoked client certificates of active credentials that end before `before`, soonest first.
    pub async fn expiring_certificates(&self, before: i64, limit: u32) -> Result<Vec<ExpiringCert>, DbError> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT x.ca, x.common_name, x.serial, x.not_after FROM certificates x \
                 JOIN credentials c ON c.id = x.credential_id \
                 WHERE x.revoked_at IS NULL AND c.revoked_at IS NULL AND x.not_after < $1 \
                 AND x.not_after = (SELECT MAX(z.not_after) FROM certificates z \
                                    WHERE z.credential_id = c.id AND z.revoked_at IS NULL) \
                 ORDER BY x.not_after LIMIT $2",
            )
            .bind(before)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?
        }))
    }

    /// How many credentials of `kind` are active.
    pub async fn count_active(&self, kind: Kind) -> Result<i64, DbError> {
        Ok(on_pool!(self, pool => {
            sqlx::query_scalar("SELECT COUNT(*) FROM credentials WHERE kind = $1 AND revoked_at IS NULL")
                .bind(kind.to_string())
                .fetch_one(pool)
                .await?
        }))
    }

    /// A page of the audit trail, newest first.
    pub async fn audit_page(&self, q: &AuditQuery) -> Result<Vec<AuditRow>, DbError> {
        self.audit_rows(q, None).await
    }

    /// A page of the audit trail in the order it was written, oldest first: the rows after id `after_id` that
    /// match `q` (`q.before_id`, when set, is an exclusive upper bound), at most `q.limit`. Paging forward by the
    /// last id seen reads a trail of any length a page at a time.
    pub async fn audit_page_after(&self, q: &AuditQuery, after_id: i64) -> Result<Vec<AuditRow>, DbError> {
        self.audit_rows(q, Some(after_id)).await
    }

    async fn audit_rows(&self, q: &AuditQuery, after_id: Option<i64>) -> Result<Vec<AuditRow>, DbError> {
        let mut sql = String::from("SELECT id, at, actor, action, subject, detail, source FROM audit WHERE 1 = 1");
        if q.actor.is_some() {
            sql.push_str(" AND actor = $1");
        }
        if q.action.is_some() {
            sql.push_str(" AND action LIKE $2 ESCAPE '\\'");
        }
        if q.subject.is_some() {
            sql.push_str(" AND subject = $3");
        }
        if q.since.is_some() {
            sql.push_str(" AND at >= $4");
        }
        if q.before_id.is_some() {
            sql.push_str(" AND id < $5");
        }
        if after_id.is_some() {
            sql.push_str(" AND id > $7");
        }
        sql.push_str(" AND ($1 = $1 OR $2 = $2 OR $3 = $3 OR $4 = $4 OR $5 = $5 OR $7 = $7)");
        sql.push_str(if after_id.is_some() { " ORDER BY id ASC LIMIT $6" } else { " ORDER BY id DESC LIMIT $6" });
        let action = q.action.as_deref().map_or_else(String::new, |a| {
            format!("{}%", a.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"))
        });
        Ok(on_pool!(self, pool => {
            sqlx::query_as(&sql)
                .bind(q.actor.clone().unwrap_or_default())
                .bind(&action)
                .bind(q.subject.clone().unwrap_or_default())
                .bind(q.since.unwrap_or(0))
                .bind(q.before_id.unwrap_or(0))
                .bind(i64::from(q.limit))
                .bind(after_id.unwrap_or(0))
                .fetch_all(pool)
                .await?
        }))
    }
}
