//! Renewal tracking: each terminal's last failed renewal (`renewal_failures`, migration 0010) and the certificates
//! whose renewal is near or due, for `status`, the dashboard and `/metrics`. Which of those are overdue is the
//! pure renewal policy's call (`domain::renewal`), not SQL's: a renewal point is a hash of the serial.

use super::{DbError, Store};
use crate::domain::Name;
use crate::domain::renewal::{FailureCode, FailureDetail, FailureSource};

/// Deletes a terminal's failure row (`$1`: its credential id), inside the transaction that records its renewal.
pub(crate) const CLEAR_FAILURE: &str = "DELETE FROM renewal_failures WHERE credential_id = $1";

/// A terminal whose last renewal attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenewalFailure {
    pub credential_id: i64,
    pub name: Name,
    /// Unix seconds, by master's clock (a terminal's report is never dated later than master's now).
    pub at: i64,
    pub source: FailureSource,
    pub code: FailureCode,
    pub detail: FailureDetail,
}

#[derive(sqlx::FromRow)]
struct FailureRaw {
    credential_id: i64,
    name: String,
    at: i64,
    source: String,
    code: String,
    detail: String,
}

impl FailureRaw {
    fn into_row(self) -> Result<RenewalFailure, DbError> {
        let corrupt = |e: crate::domain::DomainError| DbError::Corrupt(e.to_string());
        Ok(RenewalFailure {
            credential_id: self.credential_id,
            name: self.name.parse().map_err(corrupt)?,
            at: self.at,
            source: self.source.parse().map_err(corrupt)?,
            code: self.code.parse().map_err(corrupt)?,
            detail: self.detail.parse().map_err(corrupt)?,
        })
    }
}

/// The newest unrevoked certificate of an unrevoked terminal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenewalCandidate {
    pub credential_id: i64,
    pub serial: String,
    pub not_after: i64,
}

const FAILURE_COLS: &str = "f.credential_id, c.name, f.at, f.source, f.code, f.detail";

impl Store {
    /// Records that `credential_id`'s renewal failed at `at`, replacing its previous failure. A terminal's own
    /// report replaces only an older row: it repeats its last failure in every heartbeat until a renewal succeeds,
    /// and must not hide master's account of a later attempt.
    pub async fn record_renewal_failure(
        &self,
        credential_id: i64,
        source: FailureSource,
        code: &FailureCode,
        detail: &FailureDetail,
        at: i64,
    ) -> Result<(), DbError> {
        let sql = match source {
            FailureSource::Master => {
                "INSERT INTO renewal_failures (credential_id, at, source, code, detail) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (credential_id) DO UPDATE SET at = excluded.at, source = excluded.source, \
                 code = excluded.code, detail = excluded.detail"
            }
            FailureSource::Terminal => {
                "INSERT INTO renewal_failures (credential_id, at, source, code, detail) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (credential_id) DO UPDATE SET at = excluded.at, source = excluded.source, \
                 code = excluded.code, detail = excluded.detail WHERE renewal_failures.at < excluded.at"
            }
        };
        on_pool!(self, pool => {
            sqlx::query(sql)
                .bind(credential_id)
                .bind(at)
                .bind(source.as_str())
                .bind(code.as_str())
                .bind(detail.as_str())
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Forgets `credential_id`'s last failure (a retry of a renewal that had succeeded got its certificate).
    pub async fn clear_renewal_failure(&self, credential_id: i64) -> Result<(), DbError> {
        on_pool!(self, pool => {
            sqlx::query(CLEAR_FAILURE).bind(credential_id).execute(pool).await?;
        });
        Ok(())
    }

    /// The last failed renewal of `credential_id`, if its last attempt failed.
    pub async fn renewal_failure_of(&self, credential_id: i64) -> Result<Option<RenewalFailure>, DbError> {
        let sql = format!(
            "SELECT {FAILURE_COLS} FROM renewal_failures f JOIN credentials c ON c.id = f.credential_id \
             WHERE f.credential_id = $1"
        );
        let row: Option<FailureRaw> =
            on_pool!(self, pool => sqlx::query_as(&sql).bind(credential_id).fetch_optional(pool).await?);
        row.map(FailureRaw::into_row).transpose()
    }

    /// Unrevoked terminals whose last renewal failed, the latest failure first (at most `limit`), and how many
    /// there are in all.
    pub async fn renewal_failures(&self, limit: u32) -> Result<(Vec<RenewalFailure>, u64), DbError> {
        let page = format!(
            "SELECT {FAILURE_COLS} FROM renewal_failures f JOIN credentials c ON c.id = f.credential_id \
             WHERE c.revoked_at IS NULL ORDER BY f.at DESC, c.name LIMIT $1"
        );
        const COUNT: &str = "SELECT COUNT(*) FROM renewal_failures f JOIN credentials c ON c.id = f.credential_id \
                             WHERE c.revoked_at IS NULL";
        let (rows, total): (Vec<FailureRaw>, i64) = on_pool!(self, pool => {
            let rows = sqlx::query_as(&page).bind(i64::from(limit)).fetch_all(pool).await?;
            let total = sqlx::query_scalar(COUNT).fetch_one(pool).await?;
            (rows, total)
        });
        let rows = rows.into_iter().map(FailureRaw::into_row).collect::<Result<Vec<_>, _>>()?;
        Ok((rows, u64::try_from(total).unwrap_or(0)))
    }

    /// The newest unrevoked certificate of every unrevoked terminal, when it ends before `before` (expired ones
    /// included), soonest first: the certificates whose renewal is near or due. One row per terminal.
    pub async fn terminal_certs_ending_before(&self, before: i64) -> Result<Vec<RenewalCandidate>, DbError> {
        // No name: a scrape reads this for a whole fleet, and only counts.
        let rows: Vec<(i64, String, i64)> = on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT c.id, x.serial, x.not_after FROM certificates x \
                 JOIN credentials c ON c.id = x.credential_id \
                 WHERE c.kind = 'terminal' AND c.revoked_at IS NULL AND x.revoked_at IS NULL AND x.not_after < $1 \
                 AND x.not_after = (SELECT MAX(z.not_after) FROM certificates z \
                                    WHERE z.credential_id = c.id AND z.revoked_at IS NULL) \
                 ORDER BY x.not_after, c.id, x.serial",
            )
            .bind(before)
            .fetch_all(pool)
            .await?
        });
        let mut seen = std::collections::HashSet::new();
        Ok(rows
            .into_iter()
            // Two certificates ending in the same second: the terminal counts once.
            .filter(|(id, ..)| seen.insert(*id))
            .map(|(credential_id, serial, not_after)| RenewalCandidate { credential_id, serial, not_after })
            .collect())
    }
}
