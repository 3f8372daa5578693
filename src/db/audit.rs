//! The audit trail: who did what to which credential, append-only. Callers write details without secrets.

use super::{DbError, Store};
use crate::domain::Actor;

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AuditRow {
    pub id: i64,
    pub at: i64,
    /// A row whose actor this version cannot read fails the read (it is never shown as someone else).
    #[sqlx(try_from = "String")]
    pub actor: Actor,
    pub action: String,
    pub subject: String,
    pub detail: String,
}

impl Store {
    pub async fn audit(
        &self,
        actor: &Actor,
        action: &str,
        subject: &str,
        detail: &str,
        now: i64,
    ) -> Result<(), DbError> {
        on_pool!(self, pool => {
            sqlx::query("INSERT INTO audit (at, actor, action, subject, detail) VALUES ($1, $2, $3, $4, $5)")
                .bind(now)
                .bind(actor.to_string())
                .bind(action)
                .bind(subject)
                .bind(detail)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// The newest `limit` audit rows, newest first.
    pub async fn list_audit(&self, limit: u32) -> Result<Vec<AuditRow>, DbError> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as("SELECT id, at, actor, action, subject, detail FROM audit ORDER BY id DESC LIMIT $1")
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
        }))
    }
}
