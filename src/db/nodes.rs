//! VPN nodes sharing the store (`cluster`): who runs `serve vpn`, where terminals reach it, and whether it is
//! alive. Liveness is a heartbeat (`last_seen`), used for display, for clearing a dead node's sessions and for
//! knowing whose acknowledgement `revoke` waits for; it never decides whether a node may serve.

use super::{DbError, Store};
use crate::domain::Name;

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct NodeRow {
    pub name: String,
    /// The public address terminals and admins reach it at (a `remote` line of every profile).
    pub address: String,
    pub version: String,
    pub started_at: i64,
    pub last_seen: i64,
    /// `HOLDER/RANDOM`: HOLDER names the machine and root that run the node (a restart there, after a crash
    /// whose heartbeat is still fresh, is the same holder), RANDOM this start of `serve vpn`.
    pub run_id: String,
    pub draining_since: Option<i64>,
}

/// What a starting node announces.
#[derive(Debug, Clone)]
pub struct NodeStart<'a> {
    pub name: &'a Name,
    pub address: &'a str,
    pub version: &'a str,
    pub run_id: &'a str,
    pub now: i64,
    /// A heartbeat newer than this (unix seconds) means "alive".
    pub alive_since: i64,
}

/// The holder part of a run id (`HOLDER/RANDOM`).
fn holder(run_id: &str) -> &str {
    run_id.split_once('/').map_or(run_id, |(h, _)| h)
}

/// Why a node may not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeRefusal {
    /// Another live process holds this node name.
    NameInUse { last_seen: i64 },
    /// The store is SQLite and another node is alive on it.
    SingleNode { other: String, last_seen: i64 },
}

macro_rules! node_select {
    ($tail:literal) => {
        concat!("SELECT name, address, version, started_at, last_seen, run_id, draining_since FROM nodes ", $tail)
    };
}

impl Store {
    /// Registers (or re-registers) a node at its start: refused when another holder (another machine, or another
    /// root on this one) holds the name with a live heartbeat (the same holder restarting after a crash may: its
    /// single-instance lock proves its predecessor is gone), or
    /// when the store is SQLite and another node is alive (SQLite serves one node: one machine's file). A
    /// draining node stays draining across restarts (the operator's intent lives in the store).
    pub async fn register_node(&self, n: &NodeStart<'_>) -> Result<Result<NodeRow, NodeRefusal>, DbError> {
        let single = matches!(self, Store::Sqlite(_));
        in_tx!(self, tx => async {
            let rows: Vec<NodeRow> = sqlx::query_as(node_select!("")).fetch_all(&mut *tx).await?;
            if let Some(mine) = rows.iter().find(|r| r.name == n.name.as_str())
                && holder(&mine.run_id) != holder(n.run_id)
                && mine.last_seen >= n.alive_since
            {
                return Ok(Err(NodeRefusal::NameInUse { last_seen: mine.last_seen }));
            }
            if single
                && let Some(other) = rows.iter().find(|r| r.name != n.name.as_str() && r.last_seen >= n.alive_since)
            {
                return Ok(Err(NodeRefusal::SingleNode { other: other.name.clone(), last_seen: other.last_seen }));
            }
            sqlx::query(
                "INSERT INTO nodes (name, address, version, started_at, last_seen, run_id) \
                 VALUES ($1, $2, $3, $4, $4, $5) \
                 ON CONFLICT (name) DO UPDATE SET address = excluded.address, version = excluded.version, \
                 started_at = excluded.started_at, last_seen = excluded.last_seen, run_id = excluded.run_id",
            )
            .bind(n.name.as_str())
            .bind(n.address)
            .bind(n.version)
            .bind(n.now)
            .bind(n.run_id)
            .execute(&mut *tx)
            .await?;
            let row: NodeRow = sqlx::query_as(node_select!("WHERE name = $1")).bind(n.name.as_str()).fetch_one(&mut *tx).await?;
            Ok(Ok(row))
        })
    }

    /// A node's heartbeat. `false` when the row is gone or another process took the name over (this one must
    /// say so loudly: two nodes answer for one name).
    pub async fn node_heartbeat(&self, name: &Name, run_id: &str, now: i64) -> Result<bool, DbError> {
        let n = on_pool!(self, pool => {
            sqlx::query("UPDATE nodes SET last_seen = $1 WHERE name = $2 AND run_id = $3")
                .bind(now)
                .bind(name.as_str())
                .bind(run_id)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(n == 1)
    }

    /// Every node, by name.
    pub async fn list_nodes(&self) -> Result<Vec<NodeRow>, DbError> {
        Ok(on_pool!(self, pool => sqlx::query_as(node_select!("ORDER BY name")).fetch_all(pool).await?))
    }

    /// Starts (`Some(now)`) or ends (`None`) a node's drain and publishes the event its node acts on, in one
    /// transaction. Returns the event id; `NotFound` for a node that never ran.
    pub async fn set_node_draining(&self, name: &Name, since: Option<i64>, now: i64) -> Result<i64, DbError> {
        in_tx!(self, tx => async {
            let n = sqlx::query("UPDATE nodes SET draining_since = $1 WHERE name = $2")
                .bind(since)
                .bind(name.as_str())
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n == 0 {
                return Err(DbError::NotFound { what: format!("node {name}") });
            }
            let kind = if since.is_some() { super::EventKind::Drain } else { super::EventKind::Resume };
            publish_event_in!(tx, kind, name.as_str(), Some(name.as_str()), now)
        })
    }

    /// Sessions of nodes whose heartbeat stopped before `alive_since` (a node that died cannot clear its own):
    /// deleted, so a terminal is never shown online through a dead node. Returns how many.
    pub async fn clear_dead_nodes_sessions(&self, alive_since: i64) -> Result<u64, DbError> {
        let n = on_pool!(self, pool => {
            sqlx::query(
                "DELETE FROM sessions WHERE node NOT IN (SELECT name FROM nodes WHERE last_seen >= $1)",
            )
            .bind(alive_since)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(n)
    }
}
