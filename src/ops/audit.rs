//! Reading the audit trail from the command line: the store's audit query (the one the web UI pages with),
//! filtered by time, actor and action, in the order it was written (oldest first, as a log reads, the newest
//! line last, next to the prompt). A trail of any length is read a page at a time: `trail` fixes its bounds
//! (the newest matching row when it is called, and with a limit the oldest of the newest N), and
//! `AuditTrail::next_page` walks forward from there, so memory stays one page whatever the trail holds.

use serde::Serialize;

use super::{Ctx, OpsError, rfc3339};
use crate::db::{AuditQuery, AuditRow};
use crate::domain::{Actor, Since};

/// Rows read from the store at a time.
pub const PAGE: u32 = 500;

/// What the operator asked for.
#[derive(Debug, Clone, Default)]
pub struct AuditRequest {
    pub since: Option<Since>,
    pub actor: Option<Actor>,
    /// Action prefix (`terminal.`, `revoke`, …), taken literally.
    pub action: Option<String>,
    /// Only the newest N matching rows (still listed oldest first); `None`: all of them.
    pub limit: Option<u64>,
}

/// One audit row as the CLI shows it (`--json`: the same keys as the JSON API's `/api/v1/audit`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    pub id: i64,
    /// RFC 3339, UTC.
    pub at: String,
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub detail: String,
    /// Where the actor was (a web client's address); `None` for a local shell or a service.
    pub source: Option<String>,
}

impl From<AuditRow> for AuditEntry {
    fn from(r: AuditRow) -> AuditEntry {
        AuditEntry {
            id: r.id,
            at: rfc3339(r.at),
            actor: r.actor.to_string(),
            action: r.action,
            subject: r.subject,
            detail: r.detail,
            source: r.source,
        }
    }
}

/// A walk through the matching rows, oldest first, between bounds fixed when it began: rows written after that
/// are not part of it.
pub struct AuditTrail<'a> {
    ctx: &'a Ctx,
    query: AuditQuery,
    /// The id of the last row handed out (or just below the first one to hand out).
    after: i64,
    done: bool,
}

/// Starts reading the trail: finds its bounds (one row read, or with a limit, up to that many ids walked back a
/// page at a time).
pub async fn trail<'a>(ctx: &'a Ctx, req: &AuditRequest) -> Result<AuditTrail<'a>, OpsError> {
    let mut query = AuditQuery {
        actor: req.actor.as_ref().map(ToString::to_string),
        action: req.action.clone().filter(|a| !a.is_empty()),
        subject: None,
        since: req.since.map(|s| s.resolve(ctx.clock.now())),
        before_id: None,
        limit: 1,
    };
    let empty = AuditTrail { ctx, query: query.clone(), after: 0, done: true };
    let Some(newest) = ctx.store.audit_page(&query).await?.into_iter().next() else { return Ok(empty) };
    query.before_id = Some(newest.id.saturating_add(1));
    let mut after = i64::MIN;
    if let Some(limit) = req.limit {
        if limit == 0 {
            return Ok(empty);
        }
        // Walk back over the newest `limit` rows, keeping only where the walk ends.
        let mut left = limit;
        let mut cursor = query.before_id;
        while left > 0 {
            let take = u32::try_from(left.min(u64::from(PAGE))).unwrap_or(PAGE);
            let page = ctx.store.audit_page(&AuditQuery { before_id: cursor, limit: take, ..query.clone() }).await?;
            let Some(last) = page.last() else { break };
            left = left.saturating_sub(page.len() as u64);
            cursor = Some(last.id);
            if left == 0 {
                after = last.id.saturating_sub(1);
            }
            if page.len() < take as usize {
                break;
            }
        }
    }
    query.limit = PAGE;
    Ok(AuditTrail { ctx, query, after, done: false })
}

impl AuditTrail<'_> {
    /// The next rows, oldest first; empty once the trail is read.
    pub async fn next_page(&mut self) -> Result<Vec<AuditEntry>, OpsError> {
        if self.done {
            return Ok(Vec::new());
        }
        let rows = self.ctx.store.audit_page_after(&self.query, self.after).await?;
        if rows.len() < self.query.limit as usize {
            self.done = true;
        }
        if let Some(last) = rows.last() {
            self.after = last.id;
        }
        Ok(rows.into_iter().map(AuditEntry::from).collect())
    }
}
