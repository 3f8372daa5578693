//! Bulk revocation (`revoke --file`): many credentials revoked in one transaction, each with its certificates,
//! its unused pairing tokens locked, its audit row and its kill event (so every node ends its sessions,
//! invariant 14), or none of it. Multi-row statements keep 1,000 names to a few dozen statements.

use std::collections::HashMap;

use cas_pki::RevocationReason;
use sqlx::QueryBuilder;

use super::credentials::{CRED_SELECT, CredRow};
use super::{DbError, Store};
use crate::domain::{Actor, Name};

/// Names per `IN (…)` list: one bind each, far under SQLite's historic 999-variable limit.
const NAMES_CHUNK: usize = 500;
/// Rows per multi-row INSERT (at most 5 columns here).
const ROWS_CHUNK: usize = 100;
/// Names listed in a refusal; the rest are counted.
const LISTED: usize = 20;

/// One credential of a bulk revocation.
#[derive(Debug, Clone)]
pub struct BulkRevoked {
    pub credential: super::Credential,
    /// Certificates this revocation revoked, sorted (none when it was already revoked).
    pub serials: Vec<String>,
    /// It was revoked before (a redo, allowed by the caller): only its kill is announced again.
    pub already: bool,
}

/// What [`Store::revoke_many`] did: the credentials in the order asked, and their kill events' ids.
#[derive(Debug, Clone)]
pub struct BulkRevocation {
    pub revoked: Vec<BulkRevoked>,
    pub first_event: i64,
    pub last_event: i64,
}

/// Why a bulk revocation changed nothing: names that are unknown, or already revoked (when that is not allowed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkRefusal {
    pub unknown: Vec<Name>,
    pub already_revoked: Vec<Name>,
}

impl std::fmt::Display for BulkRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |names: &[Name]| {
            let mut s = names.iter().take(LISTED).map(Name::as_str).collect::<Vec<_>>().join(", ");
            if names.len() > LISTED {
                s.push_str(&format!(" and {} more", names.len() - LISTED));
            }
            s
        };
        let mut parts = Vec::new();
        if !self.unknown.is_empty() {
            parts.push(format!("{} unknown: {}", self.unknown.len(), list(&self.unknown)));
        }
        if !self.already_revoked.is_empty() {
            parts.push(format!(
                "{} already revoked (pass --allow-revoked to end their sessions again): {}",
                self.already_revoked.len(),
                list(&self.already_revoked)
            ));
        }
        write!(f, "nothing revoked; {}", parts.join("; "))
    }
}

impl Store {
    /// Revokes every credential of `names` in one transaction, or none: an unknown name, or an already revoked
    /// one unless `allow_revoked`, refuses the whole batch ([`DbError::BulkRefused`]). An allowed already revoked
    /// name gets its kill event again (as a second single `revoke` does), nothing else. `names` must be free of
    /// duplicates (the caller's file reader refuses them).
    pub async fn revoke_many(
        &self,
        names: &[Name],
        reason: RevocationReason,
        actor: &Actor,
        now: i64,
        allow_revoked: bool,
    ) -> Result<BulkRevocation, DbError> {
        if names.is_empty() {
            return Err(DbError::NotFound { what: "credential names to revoke (the list is empty)".into() });
        }
        let reason_text = reason.as_str();
        // Durable, as `Store::revoke`.
        in_durable_tx!(self, tx => async {
            // Every row of these names: the active one is revoked; a name with only revoked rows was revoked.
            let mut rows: Vec<CredRow> = Vec::with_capacity(names.len());
            for chunk in names.chunks(NAMES_CHUNK) {
                let mut q = QueryBuilder::new(CRED_SELECT);
                q.push(" WHERE name IN (");
                let mut list = q.separated(", ");
                for n in chunk {
                    list.push_bind(n.as_str());
                }
                q.push(")");
                rows.extend(q.build_query_as::<CredRow>().fetch_all(&mut *tx).await?);
            }
            let mut active = HashMap::new();
            let mut revoked = HashMap::new();
            for row in rows {
                let c = row.into_credential()?;
                if c.is_revoked() {
                    // The newest revoked row stands for the name (its revocation time is the one reported).
                    let newer = revoked.get(c.name.as_str()).is_none_or(|o: &super::Credential| o.revoked_at < c.revoked_at);
                    if newer {
                        revoked.insert(c.name.to_string(), c);
                    }
                } else {
                    active.insert(c.name.to_string(), c);
                }
            }
            let mut refusal = BulkRefusal { unknown: Vec::new(), already_revoked: Vec::new() };
            let mut out = Vec::with_capacity(names.len());
            for n in names {
                if let Some(c) = active.remove(n.as_str()) {
                    out.push(BulkRevoked { credential: c, serials: Vec::new(), already: false });
                } else if let Some(c) = revoked.remove(n.as_str()) {
                    if allow_revoked {
                        out.push(BulkRevoked { credential: c, serials: Vec::new(), already: true });
                    } else {
                        refusal.already_revoked.push(n.clone());
                    }
                } else {
                    refusal.unknown.push(n.clone());
                }
            }
            if !refusal.unknown.is_empty() || !refusal.already_revoked.is_empty() {
                return Err(DbError::BulkRefused(refusal));
            }

            let ids: Vec<i64> = out.iter().filter(|r| !r.already).map(|r| r.credential.id).collect();
            let mut serials: HashMap<i64, Vec<String>> = HashMap::new();
            for chunk in ids.chunks(NAMES_CHUNK) {
                let in_list = |q: &mut QueryBuilder<_>| {
                    q.push(" IN (");
                    let mut list = q.separated(", ");
                    for id in chunk {
                        list.push_bind(*id);
                    }
                    q.push(")");
                };
                let mut q = QueryBuilder::new("UPDATE credentials SET revoked_at = ");
                q.push_bind(now).push(", revoke_reason = ").push_bind(reason_text).push(" WHERE id");
                in_list(&mut q);
                q.build().execute(&mut *tx).await?;

                let mut q = QueryBuilder::new("UPDATE certificates SET revoked_at = ");
                q.push_bind(now).push(", revoke_reason = ").push_bind(reason_text);
                q.push(" WHERE revoked_at IS NULL AND credential_id");
                in_list(&mut q);
                q.push(" RETURNING credential_id, serial");
                for (id, serial) in q.build_query_as::<(i64, String)>().fetch_all(&mut *tx).await? {
                    serials.entry(id).or_default().push(serial);
                }

                // A token handed out for a credential that is now revoked must never pair anything.
                let mut q = QueryBuilder::new("UPDATE pairing_tokens SET locked_at = ");
                q.push_bind(now).push(" WHERE used_at IS NULL AND locked_at IS NULL AND credential_id");
                in_list(&mut q);
                q.build().execute(&mut *tx).await?;

                // On SQLite their session rows go with this commit, as with a single revocation.
                if matches!(self, Store::Sqlite(_)) {
                    let mut q = QueryBuilder::new("DELETE FROM sessions WHERE credential_id");
                    in_list(&mut q);
                    q.build().execute(&mut *tx).await?;
                }
            }
            for r in out.iter_mut().filter(|r| !r.already) {
                let mut s = serials.remove(&r.credential.id).unwrap_or_default();
                s.sort();
                r.serials = s;
                r.credential.revoked_at = Some(now);
                r.credential.revoke_reason = Some(reason_text.to_owned());
            }

            // One audit row per credential, as a single revoke writes.
            let actor_text = actor.to_string();
            let fresh: Vec<&BulkRevoked> = out.iter().filter(|r| !r.already).collect();
            for chunk in fresh.chunks(ROWS_CHUNK) {
                let mut q = QueryBuilder::new("INSERT INTO audit (at, actor, action, subject, detail) ");
                q.push_values(chunk, |mut b, r| {
                    b.push_bind(now)
                        .push_bind(actor_text.as_str())
                        .push_bind("revoke")
                        .push_bind(r.credential.name.as_str())
                        .push_bind(format!(
                            "{} credential; reason: {reason}; serials: {}; bulk of {}",
                            r.credential.kind,
                            r.serials.join(","),
                            names.len()
                        ));
                });
                q.build().execute(&mut *tx).await?;
            }

            // One kill event per credential, in this transaction: every node (an older one too, which knows
            // only `kill NAME`) ends them all. One notification wakes the followers; they read every event
            // after their last.
            let (mut first_event, mut last_event) = (i64::MAX, 0);
            for chunk in out.chunks(ROWS_CHUNK) {
                let mut q = QueryBuilder::new("INSERT INTO events (at, kind, subject, node) ");
                q.push_values(chunk, |mut b, r| {
                    b.push_bind(now)
                        .push_bind(super::EventKind::Kill.as_str())
                        .push_bind(r.credential.name.as_str())
                        .push_bind(None::<&str>);
                });
                q.push(" RETURNING id");
                for id in q.build_query_scalar::<i64>().fetch_all(&mut *tx).await? {
                    first_event = first_event.min(id);
                    last_event = last_event.max(id);
                }
            }
            super::events::Notify::notify_event(&mut *tx, last_event).await?;
            Ok(BulkRevocation { revoked: out, first_event, last_event })
        })
    }
}
