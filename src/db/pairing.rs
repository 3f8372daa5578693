//! Pairing window and per-address failure bans (pairing only while a window is open; 5 failures ban
//! a source address for 15 minutes). Both are single statements, so concurrent gate requests cannot lose counts.

use super::{DbError, Store};

impl Store {
    /// Opens the pairing window until `open_until` (unix seconds), or closes it (`None`).
    pub async fn set_pairing_window(&self, open_until: Option<i64>) -> Result<(), DbError> {
        self.set_pairing_window_from(open_until, None).await
    }

    /// As [`Store::set_pairing_window`], with the sources allowed to reach the pairing port (`None`: everyone), in
    /// one statement so the firewall never sees a window with another window's sources.
    pub async fn set_pairing_window_from(&self, open_until: Option<i64>, from: Option<&str>) -> Result<(), DbError> {
        on_pool!(self, pool => {
            sqlx::query("UPDATE pairing_window SET open_until = $1, open_from = $2 WHERE id = 1")
                .bind(open_until)
                .bind(from)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// The window's end and its sources (`None`: everyone) as [`Store::set_pairing_window_from`] stored them.
    pub async fn pairing_window_from(&self) -> Result<(Option<i64>, Option<String>), DbError> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as("SELECT open_until, open_from FROM pairing_window WHERE id = 1").fetch_one(pool).await?
        }))
    }

    /// When the pairing window closes; `None` when it was closed explicitly (or never opened). A time in the past
    /// means closed as well: the caller compares with its clock.
    pub async fn pairing_window(&self) -> Result<Option<i64>, DbError> {
        Ok(on_pool!(self, pool => {
            sqlx::query_scalar("SELECT open_until FROM pairing_window WHERE id = 1").fetch_one(pool).await?
        }))
    }

    /// Counts a failed pairing attempt from `ip` and returns whether the address is banned now. The
    /// `max_failures`-th failure within `ban_secs` of the first bans it for `ban_secs`; attempts during a ban do
    /// not extend it; after the ban (or the counting window) runs out, counting starts afresh.
    pub async fn record_failure(&self, ip: &str, now: i64, max_failures: u32, ban_secs: i64) -> Result<bool, DbError> {
        // "stale": the old row no longer counts (its ban ran out, or its first failure is older than the window).
        const SQL: &str = "\
            INSERT INTO ip_bans (ip, failures, first_failure_at, banned_until) \
            VALUES ($1, 1, $2, CASE WHEN $3 <= 1 THEN $2 + $4 END) \
            ON CONFLICT (ip) DO UPDATE SET \
              failures = CASE WHEN (ip_bans.banned_until IS NOT NULL AND ip_bans.banned_until <= $2) \
                                OR (ip_bans.banned_until IS NULL AND ip_bans.first_failure_at + $4 <= $2) \
                         THEN 1 ELSE ip_bans.failures + 1 END, \
              first_failure_at = CASE WHEN (ip_bans.banned_until IS NOT NULL AND ip_bans.banned_until <= $2) \
                                        OR (ip_bans.banned_until IS NULL AND ip_bans.first_failure_at + $4 <= $2) \
                                 THEN $2 ELSE ip_bans.first_failure_at END, \
              banned_until = CASE \
                WHEN (ip_bans.banned_until IS NOT NULL AND ip_bans.banned_until <= $2) \
                  OR (ip_bans.banned_until IS NULL AND ip_bans.first_failure_at + $4 <= $2) \
                  THEN CASE WHEN $3 <= 1 THEN $2 + $4 END \
                WHEN ip_bans.banned_until IS NOT NULL THEN ip_bans.banned_until \
                WHEN ip_bans.failures + 1 >= $3 THEN $2 + $4 \
              END \
            RETURNING banned_until";
        // Rows that no longer count for anything go first, so the table holds only live failures and bans.
        on_pool!(self, pool => {
            sqlx::query(
                "DELETE FROM ip_bans WHERE ip <> $1 AND ((banned_until IS NOT NULL AND banned_until <= $2) \
                 OR (banned_until IS NULL AND first_failure_at + $3 <= $2))",
            )
            .bind(ip)
            .bind(now)
            .bind(ban_secs)
            .execute(pool)
            .await?;
        });
        let banned_until: Option<i64> = on_pool!(self, pool => {
            sqlx::query_scalar(SQL)
                .bind(ip)
                .bind(now)
                .bind(i64::from(max_failures))
                .bind(ban_secs)
                .fetch_one(pool)
                .await?
        });
        Ok(banned_until.is_some_and(|until| until > now))
    }

    pub async fn is_banned(&self, ip: &str, now: i64) -> Result<bool, DbError> {
        let banned_until: Option<Option<i64>> = on_pool!(self, pool => {
            sqlx::query_scalar("SELECT banned_until FROM ip_bans WHERE ip = $1").bind(ip).fetch_optional(pool).await?
        });
        Ok(banned_until.flatten().is_some_and(|until| until > now))
    }

    /// Lifts a ban and forgets the address's failures. Returns whether there was anything to forget.
    pub async fn unban(&self, ip: &str) -> Result<bool, DbError> {
        let n = on_pool!(self, pool => {
            sqlx::query("DELETE FROM ip_bans WHERE ip = $1").bind(ip).execute(pool).await?.rows_affected()
        });
        Ok(n > 0)
    }

    /// Addresses banned at `now`, with the end of their ban, by address.
    pub async fn banned_ips(&self, now: i64) -> Result<Vec<(String, i64)>, DbError> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as("SELECT ip, banned_until FROM ip_bans WHERE banned_until > $1 ORDER BY ip")
                .bind(now)
                .fetch_all(pool)
                .await?
        }))
    }
}
