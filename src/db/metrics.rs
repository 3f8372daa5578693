//! What `/metrics` reads from the store: the scrape token (its SHA-256 only), the cumulative counters other
//! transactions bump (`metric_counters`), and counts read at scrape time (sessions per instance, pairings,
//! revocations, the soonest client certificates). Every read is one statement; nothing here is a secret.

use super::{DbError, Store};
use crate::domain::Kind;

/// Bumps counter `$1` by `$2`, inside the caller's transaction (so a counted event and its count stand or fall
/// together).
pub(crate) const BUMP: &str = "UPDATE metric_counters SET value = value + $2 WHERE name = $1";

/// The counters `metric_counters` holds (rows made by migration 0008).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// Pairing attempts evaluated and settled as failures (wrong or used token, bad CSR, …).
    PairingsFailed,
    /// Pairing attempts refused because their source (address or network) was banned.
    PairingsBanned,
    /// Bans imposed (each key — an address or its /24 or /64 — that reached its limit).
    Bans,
}

impl Counter {
    pub const ALL: [Counter; 3] = [Counter::PairingsFailed, Counter::PairingsBanned, Counter::Bans];

    pub fn as_str(self) -> &'static str {
        match self {
            Counter::PairingsFailed => "pairings_failed",
            Counter::PairingsBanned => "pairings_banned",
            Counter::Bans => "bans",
        }
    }
}

/// Live sessions of one instance, by the kind of their credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceSessions {
    /// The VPN node whose openvpn holds them (several nodes on one store).
    pub node: String,
    pub instance: String,
    pub kind: Kind,
    pub sessions: i64,
}

/// The client certificates of one CA's active credentials: the soonest end, and how many end before a limit.
/// A credential counts by its newest unrevoked certificate (a renewed one replaces the old).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertExpiry {
    pub kind: Kind,
    pub soonest: Option<i64>,
    pub expiring: i64,
}

/// The newest unrevoked certificate of each active credential of CA `$1`.
const NEWEST_CERTS: &str = "SELECT MAX(x.not_after) AS not_after FROM certificates x \
     JOIN credentials c ON c.id = x.credential_id \
     WHERE x.ca = $1 AND x.revoked_at IS NULL AND c.revoked_at IS NULL GROUP BY c.id";

impl Store {
    /// Replaces every metrics token by the one whose SHA-256 (hex) is `token_hash` (one transaction).
    pub async fn set_metrics_token(&self, token_hash: &str, now: i64) -> Result<(), DbError> {
        in_tx!(self, tx => async {
            sqlx::query("DELETE FROM metrics_tokens").execute(&mut *tx).await?;
            sqlx::query("INSERT INTO metrics_tokens (token_hash, created_at) VALUES ($1, $2)")
                .bind(token_hash)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            Ok(())
        })
    }

    /// Deletes every metrics token; returns how many there were.
    pub async fn clear_metrics_tokens(&self) -> Result<u64, DbError> {
        Ok(on_pool!(self, pool => {
            sqlx::query("DELETE FROM metrics_tokens").execute(pool).await?.rows_affected()
        }))
    }

    /// The SHA-256 (hex) of every valid metrics token (the caller compares in constant time).
    pub async fn metrics_token_hashes(&self) -> Result<Vec<String>, DbError> {
        Ok(on_pool!(self, pool => {
            sqlx::query_scalar("SELECT token_hash FROM metrics_tokens ORDER BY id").fetch_all(pool).await?
        }))
    }

    /// Every counter of `metric_counters`, in `Counter::ALL` order (a missing row reads as 0).
    pub async fn metric_counters(&self) -> Result<Vec<(Counter, i64)>, DbError> {
        let rows: Vec<(String, i64)> = on_pool!(self, pool => {
            sqlx::query_as("SELECT name, value FROM metric_counters").fetch_all(pool).await?
        });
        Ok(Counter::ALL
            .iter()
            .map(|c| (*c, rows.iter().find(|(n, _)| n == c.as_str()).map_or(0, |(_, v)| *v)))
            .collect())
    }

    /// Publishes node `node`'s gate's upgrade downloads in progress (one upsert: a gauge, not a history).
    pub async fn set_gate_gauges(&self, node: &str, upgrade_slots_in_use: i64, now: i64) -> Result<(), DbError> {
        on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO gate_gauges (node, upgrade_slots_in_use, updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (node) DO UPDATE SET upgrade_slots_in_use = excluded.upgrade_slots_in_use, \
                 updated_at = excluded.updated_at",
            )
            .bind(node)
            .bind(upgrade_slots_in_use)
            .bind(now)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Each node's gate's upgrade downloads in progress, from rows written at or after `fresh_since` (an older row
    /// is a gate that stopped), by node.
    pub async fn gate_gauges(&self, fresh_since: i64) -> Result<Vec<(String, i64)>, DbError> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT node, upgrade_slots_in_use FROM gate_gauges WHERE updated_at >= $1 ORDER BY node",
            )
            .bind(fresh_since)
            .fetch_all(pool)
            .await?
        }))
    }

    /// Live sessions (of nodes alive since `alive_since`) per node, instance and credential kind, in that order.
    pub async fn sessions_per_instance(&self, alive_since: i64) -> Result<Vec<InstanceSessions>, DbError> {
        let rows: Vec<(String, String, String, i64)> = on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT s.node, s.instance, c.kind, COUNT(*) FROM sessions s \
                 JOIN credentials c ON c.id = s.credential_id \
                 JOIN nodes n ON n.name = s.node AND n.last_seen >= $1 \
                 GROUP BY s.node, s.instance, c.kind ORDER BY s.node, s.instance, c.kind",
            )
            .bind(alive_since)
            .fetch_all(pool)
            .await?
        });
        rows.into_iter()
            .map(|(node, instance, kind, sessions)| {
                Ok(InstanceSessions { node, instance, kind: super::parse_kind(&kind)?, sessions })
            })
            .collect()
    }

    /// Terminals that ever completed pairing (by token, by approval, or by the first VPN session of a profile
    /// delivered out of band), revoked ones included: it only grows.
    pub async fn count_pairings(&self) -> Result<i64, DbError> {
        Ok(on_pool!(self, pool => {
            sqlx::query_scalar("SELECT COUNT(*) FROM credentials WHERE kind = 'terminal' AND paired_at IS NOT NULL")
                .fetch_one(pool)
                .await?
        }))
    }

    /// Revoked credentials of `kind`, ever (revocation keeps the row): it only grows.
    pub async fn count_revoked(&self, kind: Kind) -> Result<i64, DbError> {
        Ok(on_pool!(self, pool => {
            sqlx::query_scalar("SELECT COUNT(*) FROM credentials WHERE kind = $1 AND revoked_at IS NOT NULL")
                .bind(kind.to_string())
                .fetch_one(pool)
                .await?
        }))
    }

    /// The soonest end of `kind`'s active client certificates and how many end before `before`.
    pub async fn client_cert_expiry(&self, kind: Kind, before: i64) -> Result<ClientCertExpiry, DbError> {
        let (soonest, expiring): (Option<i64>, i64) = on_pool!(self, pool => {
            sqlx::query_as(&format!(
                "SELECT MIN(n.not_after), COALESCE(SUM(CASE WHEN n.not_after < $2 THEN 1 ELSE 0 END), 0) \
                 FROM ({NEWEST_CERTS}) n"
            ))
            .bind(kind.to_string())
            .bind(before)
            .fetch_one(pool)
            .await?
        });
        Ok(ClientCertExpiry { kind, soonest, expiring })
    }
}
