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
    /// Where the actor was (a web client's address); `None` for a local shell or a service.
    pub source: Option<String>,
}

/// An audit row to write inside another change's transaction (so the change and its record stand or fall
/// together).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAudit {
    pub actor: Actor,
    pub source: Option<String>,
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
        self.audit_from(actor, None, action, subject, detail, now).await
    }

    /// As `audit`, naming where the actor was.
    pub async fn audit_from(
        &self,
        actor: &Actor,
        source: Option<&str>,
        action: &str,
        subject: &str,
        detail: &str,
        now: i64,
    ) -> Result<(), DbError> {
        on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO audit (at, actor, action, subject, detail, source) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(now)
            .bind(actor.to_string())
            .bind(action)
            .bind(subject)
            .bind(detail)
            .bind(source)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Writes audit rows in one transaction, each with its time (the signer's group commit of its signatures' rows).
    pub async fn audit_many(&self, rows: &[(NewAudit, i64)]) -> Result<(), DbError> {
        if rows.is_empty() {
            return Ok(());
        }
        in_tx!(self, tx => async {
            for (row, at) in rows {
                sqlx::query(
                    "INSERT INTO audit (at, actor, action, subject, detail, source) VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(at)
                .bind(row.actor.to_string())
                .bind(row.action.as_str())
                .bind(row.subject.as_str())
                .bind(row.detail.as_str())
                .bind(row.source.as_deref())
                .execute(&mut *tx)
                .await?;
            }
            Ok(())
        })
    }

    /// The newest `limit` audit rows, newest first.
    pub async fn list_audit(&self, limit: u32) -> Result<Vec<AuditRow>, DbError> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as("SELECT id, at, actor, action, subject, detail, source FROM audit ORDER BY id DESC LIMIT $1")
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
        }))
    }
}
