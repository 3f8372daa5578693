//! Failure bans of pairing sources, kept in the store so that every gate (every node) shares them.
//!
//! An attempt is counted *before* it is evaluated: `reserve_attempt` takes one of the source's allowed attempts in
//! one write transaction, and `settle_attempt` keeps it as a failure (banning the source at its limit) or gives it
//! back on success. So however many requests a source sends at once, to however many gates, at most `max` of them
//! are ever evaluated before its ban. A source is several keys at once (the address and its /24 or /64, each with
//! its own limit); an attempt goes ahead only if every key has room. A crash between the two steps leaves the
//! attempt counted as a failure: the cautious side. A row that no longer counts (ban over, first failure older
//! than the window) starts afresh when its source comes back, and such rows are deleted whenever a failure is
//! settled; a success's reservation is given back (its row deleted when it was the only one). A failure settled,
//! an attempt refused as banned and each ban imposed also bump `metric_counters` in the same transaction
//! (`/metrics`: cumulative, shared by every gate).

use super::metrics::{BUMP, Counter};
use super::{DbError, Store};

/// One key of a source and how many attempts it may have in a window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BanKey {
    pub key: String,
    pub max: u32,
}

/// What `reserve_attempt` decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reserved {
    /// Evaluate the attempt, then settle it.
    Go,
    /// A key is banned until then (unix seconds); the key is named.
    Banned { key: String, until: i64 },
    /// A key's allowed attempts are all taken by attempts still being evaluated: retry in a moment.
    Busy { key: String },
}

/// A row still counts: a ban not over, or failures inside their window.
const LIVE: &str = "((banned_until IS NOT NULL AND banned_until > $1) \
                     OR (banned_until IS NULL AND first_failure_at + $2 > $1))";
/// In an upsert on `ip_bans` (`$2` now, `$3` the window): the existing row no longer counts (its ban is over, or
/// its first failure is older than the window).
const STALE: &str = "((ip_bans.banned_until IS NOT NULL AND ip_bans.banned_until <= $2) \
                      OR (ip_bans.banned_until IS NULL AND ip_bans.first_failure_at + $3 <= $2))";
/// Giving one attempt of key `$1` back: the row goes when it held only that attempt (the usual case)…
pub(crate) const GIVE_BACK_LAST: &str = "DELETE FROM ip_bans WHERE ip = $1 AND banned_until IS NULL AND failures <= 1";
/// …else it holds one fewer.
pub(crate) const GIVE_BACK_ONE: &str =
    "UPDATE ip_bans SET failures = failures - 1 WHERE ip = $1 AND banned_until IS NULL";

/// The body of [`Store::reserve_attempt`] inside an open transaction `$tx` (the gate's grouped writes run it too,
/// `Store::gate_writes`). Evaluates to `Result<Reserved, DbError>`. One upsert a key: a row that no longer counts
/// starts afresh; the count is taken first and given back in the same transaction when a key turns out banned or
/// full (the refusal path; the common path writes nothing else). A macro because `in_tx!` expands its body once
/// per backend.
macro_rules! reserve_in_tx {
    ($tx:ident, $keys:expr, $now:expr, $window:expr) => {
        async {
            let (keys, now, window_secs): (&[$crate::db::BanKey], i64, i64) = ($keys, $now, $window);
            let mut taken: Vec<&str> = Vec::with_capacity(keys.len());
            let mut refusal = None;
            for k in keys {
                let (failures, banned_until): (i64, Option<i64>) = sqlx::query_as($crate::db::bans::RESERVE.as_str())
                    .bind(&k.key)
                    .bind(now)
                    .bind(window_secs)
                    .fetch_one(&mut *$tx)
                    .await?;
                if let Some(until) = banned_until {
                    refusal = Some($crate::db::Reserved::Banned { key: k.key.clone(), until });
                    break;
                }
                taken.push(&k.key);
                if failures > i64::from(k.max) {
                    refusal = Some($crate::db::Reserved::Busy { key: k.key.clone() });
                    break;
                }
            }
            let Some(refusal) = refusal else { return Ok($crate::db::Reserved::Go) };
            if matches!(refusal, $crate::db::Reserved::Banned { .. }) {
                sqlx::query($crate::db::metrics::BUMP)
                    .bind($crate::db::Counter::PairingsBanned.as_str())
                    .bind(1_i64)
                    .execute(&mut *$tx)
                    .await?;
            }
            for key in taken {
                if sqlx::query($crate::db::bans::GIVE_BACK_LAST).bind(key).execute(&mut *$tx).await?.rows_affected()
                    == 0
                {
                    sqlx::query($crate::db::bans::GIVE_BACK_ONE).bind(key).execute(&mut *$tx).await?;
                }
            }
            Ok::<_, $crate::db::DbError>(refusal)
        }
        .await
    };
}
pub(crate) use reserve_in_tx;

/// Gives back one attempt of every key of `$keys` inside an open transaction `$tx` (a success's reservation).
/// Evaluates to `Result<(), DbError>`. Distinct keys (an address and its network, the usual case) take one
/// statement when every row held only that attempt ([`give_back_sql`]): each statement is a round trip to the
/// SQLite connection's thread, and a successful pairing gives back in the group commit. Repeated keys are given
/// back one at a time, as many times as they appear.
macro_rules! give_back_in_tx {
    ($tx:ident, $keys:expr) => {
        async {
            let keys: &[$crate::db::BanKey] = $keys;
            let distinct = keys.iter().enumerate().all(|(i, k)| keys[..i].iter().all(|o| o.key != k.key));
            if !keys.is_empty() && distinct {
                let (delete, update) = $crate::db::bans::give_back_sql(keys.len());
                let mut q = sqlx::query(&delete);
                for k in keys {
                    q = q.bind(&k.key);
                }
                let gone = q.execute(&mut *$tx).await?.rows_affected();
                if gone < keys.len() as u64 {
                    // Rows that held more than this attempt (or a ban): one fewer; the deleted ones are not there.
                    let mut q = sqlx::query(&update);
                    for k in keys {
                        q = q.bind(&k.key);
                    }
                    q.execute(&mut *$tx).await?;
                }
                return Ok(());
            }
            for k in keys {
                if sqlx::query($crate::db::bans::GIVE_BACK_LAST).bind(&k.key).execute(&mut *$tx).await?.rows_affected()
                    == 0
                {
                    sqlx::query($crate::db::bans::GIVE_BACK_ONE).bind(&k.key).execute(&mut *$tx).await?;
                }
            }
            Ok::<(), $crate::db::DbError>(())
        }
        .await
    };
}
pub(crate) use give_back_in_tx;

/// [`GIVE_BACK_LAST`] and [`GIVE_BACK_ONE`] for `n` distinct keys at once (`$1`…`$n`): the rows that held only
/// this attempt go, the others hold one fewer. Built per call (`n` is 1 or 2: a few statements in the cache).
pub(crate) fn give_back_sql(n: usize) -> (String, String) {
    let list = (1..=n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ");
    (
        format!("DELETE FROM ip_bans WHERE ip IN ({list}) AND banned_until IS NULL AND failures <= 1"),
        format!("UPDATE ip_bans SET failures = failures - 1 WHERE ip IN ({list}) AND banned_until IS NULL"),
    )
}

/// Takes one attempt of key `$1` at `$2` (window `$3`): see `reserve_in_tx!`.
pub(crate) static RESERVE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "INSERT INTO ip_bans (ip, failures, first_failure_at, banned_until) VALUES ($1, 1, $2, NULL) \
         ON CONFLICT (ip) DO UPDATE SET \
           failures = CASE WHEN {STALE} THEN 1 \
                           WHEN ip_bans.banned_until IS NOT NULL THEN ip_bans.failures \
                           ELSE ip_bans.failures + 1 END, \
           first_failure_at = CASE WHEN {STALE} THEN $2 ELSE ip_bans.first_failure_at END, \
           banned_until = CASE WHEN {STALE} THEN NULL ELSE ip_bans.banned_until END \
         RETURNING failures, banned_until"
    )
});

impl Store {
    /// Takes one attempt for every key of a source at `now`, or says why not (nothing changes then). One upsert a
    /// key: a row that no longer counts starts afresh; the count is taken first and given back in the same
    /// transaction when a key turns out banned or full (the refusal path; the common path writes nothing else).
    pub async fn reserve_attempt(&self, keys: &[BanKey], now: i64, window_secs: i64) -> Result<Reserved, DbError> {
        in_tx!(self, tx => async { reserve_in_tx!(tx, keys, now, window_secs) })
    }

    /// Settles an attempt `reserve_attempt` let go: a failure stays counted and bans each key that reached its
    /// limit for `ban_secs` from `now` (and rows that no longer count are deleted); a success gives the attempt
    /// back. Returns the keys banned by this call.
    pub async fn settle_attempt(
        &self,
        keys: &[BanKey],
        failed: bool,
        now: i64,
        ban_secs: i64,
    ) -> Result<Vec<String>, DbError> {
        if !failed {
            self.give_back_attempts(&[keys.to_vec()]).await?;
            return Ok(Vec::new());
        }
        in_tx!(self, tx => async {
            sqlx::query(&format!("DELETE FROM ip_bans WHERE NOT {LIVE}"))
                .bind(now)
                .bind(ban_secs)
                .execute(&mut *tx)
                .await?;
            let mut banned = Vec::new();
            for k in keys {
                let hit: Option<String> = sqlx::query_scalar(
                    "UPDATE ip_bans SET banned_until = $2 \
                     WHERE ip = $1 AND banned_until IS NULL AND failures >= $3 RETURNING ip",
                )
                .bind(&k.key)
                .bind(now + ban_secs)
                .bind(i64::from(k.max))
                .fetch_optional(&mut *tx)
                .await?;
                banned.extend(hit);
            }
            // The metrics' cumulative counters, in the transaction that settles what they count.
            sqlx::query(BUMP).bind(Counter::PairingsFailed.as_str()).bind(1_i64).execute(&mut *tx).await?;
            if !banned.is_empty() {
                let n = i64::try_from(banned.len()).unwrap_or(i64::MAX);
                sqlx::query(BUMP).bind(Counter::Bans.as_str()).bind(n).execute(&mut *tx).await?;
            }
            Ok(banned)
        })
    }

    /// Gives back the reservations of successful attempts, many at once (one transaction; see the gate's
    /// group commit).
    pub async fn give_back_attempts(&self, batches: &[Vec<BanKey>]) -> Result<(), DbError> {
        if batches.is_empty() {
            return Ok(());
        }
        in_tx!(self, tx => async {
            for keys in batches {
                give_back_in_tx!(tx, keys)?;
            }
            Ok(())
        })
    }

    /// The first key of `keys` banned at `now`, with the end of its ban.
    pub async fn banned_key(&self, keys: &[BanKey], now: i64) -> Result<Option<(String, i64)>, DbError> {
        for k in keys {
            let until: Option<Option<i64>> = on_pool!(self, pool => {
                sqlx::query_scalar("SELECT banned_until FROM ip_bans WHERE ip = $1")
                    .bind(&k.key)
                    .fetch_optional(pool)
                    .await?
            });
            if let Some(until) = until.flatten().filter(|u| *u > now) {
                return Ok(Some((k.key.clone(), until)));
            }
        }
        Ok(None)
    }

    /// Whether `key` (an address or a network) is banned at `now`.
    pub async fn is_banned(&self, key: &str, now: i64) -> Result<bool, DbError> {
        let k = BanKey { key: key.to_owned(), max: 0 };
        Ok(self.banned_key(std::slice::from_ref(&k), now).await?.is_some())
    }

    /// Lifts a ban and forgets the key's failures. Returns whether there was anything to forget.
    pub async fn unban(&self, key: &str) -> Result<bool, DbError> {
        let n = on_pool!(self, pool => {
            sqlx::query("DELETE FROM ip_bans WHERE ip = $1").bind(key).execute(pool).await?.rows_affected()
        });
        Ok(n > 0)
    }

    /// Keys (addresses and networks) banned at `now`, with the end of their ban, in order.
    pub async fn banned_ips(&self, now: i64) -> Result<Vec<(String, i64)>, DbError> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as("SELECT ip, banned_until FROM ip_bans WHERE banned_until > $1 ORDER BY ip")
                .bind(now)
                .fetch_all(pool)
                .await?
        }))
    }
}
