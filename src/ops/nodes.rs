//! `cas-vpn node list | drain NAME | resume NAME`, and what `revoke` waits for: every live node's
//! acknowledgement of an event (`cluster`). Several nodes need PostgreSQL; on SQLite there is one node and
//! draining it would leave terminals nowhere to go, so `drain` refuses there.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::{Ctx, OpsError, rfc3339};
use crate::cluster::ALIVE_FOR_SECS;
use crate::db::Store;
use crate::domain::Name;

/// How long `revoke` and `drain` wait for the live nodes to acknowledge.
pub const ACK_DEADLINE: Duration = Duration::from_secs(2);
/// How long `drain` waits for the node's last terminal session to go.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(10);

#[derive(Debug, Serialize)]
pub struct NodeItem {
    pub name: String,
    pub address: String,
    pub version: String,
    /// Its heartbeat is younger than 15 s.
    pub live: bool,
    pub draining: bool,
    pub started_at: String,
    pub last_seen: String,
    /// Live sessions it holds (terminals and admins).
    pub sessions: usize,
}

#[derive(Debug, Serialize)]
pub struct NodeList {
    pub backend: &'static str,
    pub nodes: Vec<NodeItem>,
}

/// One live node's answer to an event.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct NodeAck {
    pub node: String,
    pub acknowledged: bool,
    /// Sessions it ended (0 when it did not acknowledge).
    pub killed: u64,
}

#[derive(Debug, Serialize)]
pub struct Drained {
    pub node: String,
    pub draining: bool,
    pub acknowledged: bool,
    /// Terminal sessions it sent elsewhere.
    pub moved: u64,
    /// Terminal sessions still on it when the command returned.
    pub left: usize,
}

pub async fn list(ctx: &Ctx) -> Result<NodeList, OpsError> {
    let now = ctx.clock.now();
    let sessions = ctx.store.list_sessions().await?;
    let nodes = ctx
        .store
        .list_nodes()
        .await?
        .into_iter()
        .map(|n| NodeItem {
            sessions: sessions.iter().filter(|s| s.node == n.name).count(),
            live: n.last_seen >= now - ALIVE_FOR_SECS,
            draining: n.draining_since.is_some(),
            started_at: rfc3339(n.started_at),
            last_seen: rfc3339(n.last_seen),
            name: n.name,
            address: n.address,
            version: n.version,
        })
        .collect();
    Ok(NodeList { backend: ctx.store.backend(), nodes })
}

/// The nodes alive now (heartbeat younger than [`ALIVE_FOR_SECS`]), by name.
async fn live_nodes(store: &Store, now: i64) -> Result<Vec<String>, OpsError> {
    Ok(store.list_nodes().await?.into_iter().filter(|n| n.last_seen >= now - ALIVE_FOR_SECS).map(|n| n.name).collect())
}

/// What the other nodes said, for an audit row's detail: how many acknowledged and ended how many sessions, and
/// which did not acknowledge (empty when there is no other node).
pub fn acks_detail(nodes: &[NodeAck]) -> String {
    let mut detail = String::new();
    let silent: Vec<&str> = nodes.iter().filter(|n| !n.acknowledged).map(|n| n.node.as_str()).collect();
    if !nodes.is_empty() {
        let ended: u64 = nodes.iter().map(|n| n.killed).sum();
        detail.push_str(&format!(
            "; {} node(s) acknowledged, {ended} session(s) ended there",
            nodes.len() - silent.len()
        ));
    }
    if !silent.is_empty() {
        detail.push_str(&format!("; no acknowledgement from {}", silent.join(", ")));
    }
    detail
}

/// Waits until every node alive when asked (or `only` that one) acknowledged event `id`, or `deadline` passed;
/// one entry per such node. On SQLite there are no other nodes and the local one answered through its control
/// socket already: nothing to wait for.
pub async fn wait_for_acks(
    ctx: &Ctx,
    id: i64,
    only: Option<&str>,
    deadline: Duration,
) -> Result<Vec<NodeAck>, OpsError> {
    if matches!(ctx.store, Store::Sqlite(_)) {
        return Ok(Vec::new());
    }
    let mut nodes = live_nodes(&ctx.store, ctx.clock.now()).await?;
    nodes.retain(|n| only.is_none_or(|o| o == n));
    let start = Instant::now();
    loop {
        let acks = ctx.store.event_acks(id).await?;
        let report: Vec<NodeAck> = nodes
            .iter()
            .map(|n| {
                let ack = acks.iter().find(|a| &a.node == n);
                NodeAck {
                    node: n.clone(),
                    acknowledged: ack.is_some(),
                    killed: ack.map_or(0, |a| u64::try_from(a.killed).unwrap_or(0)),
                }
            })
            .collect();
        if report.iter().all(|a| a.acknowledged) || start.elapsed() >= deadline {
            return Ok(report);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// As [`wait_for_acks`] for the events `first..=last` (a bulk revocation's kills): a node has acknowledged when it
/// acknowledged `last` (it applies events in order), and `killed` sums what it ended for all of them.
pub async fn wait_for_acks_between(
    ctx: &Ctx,
    first: i64,
    last: i64,
    deadline: Duration,
) -> Result<Vec<NodeAck>, OpsError> {
    if matches!(ctx.store, Store::Sqlite(_)) {
        return Ok(Vec::new());
    }
    let nodes = live_nodes(&ctx.store, ctx.clock.now()).await?;
    let start = Instant::now();
    loop {
        let acks = ctx.store.event_acks_between(first, last).await?;
        let report: Vec<NodeAck> = nodes
            .iter()
            .map(|n| {
                let ack = acks.iter().find(|(node, _, _)| node == n);
                let acknowledged = ack.is_some_and(|(_, newest, _)| *newest == last);
                NodeAck {
                    node: n.clone(),
                    acknowledged,
                    killed: if acknowledged { ack.map_or(0, |(_, _, k)| u64::try_from(*k).unwrap_or(0)) } else { 0 },
                }
            })
            .collect();
        if report.iter().all(|a| a.acknowledged) || start.elapsed() >= deadline {
            return Ok(report);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Starts a drain of `name`: its terminals are sent to their next `remote` and new ones are turned away, until
/// `resume`. Waits for the node's acknowledgement and for its last terminal session to go (or the deadlines).
pub async fn drain(ctx: &Ctx, name: &Name) -> Result<Drained, OpsError> {
    if matches!(ctx.store, Store::Sqlite(_)) {
        return Err(OpsError::Other(
            "the store is SQLite, which serves one node: draining it would leave its terminals nowhere to go \
             (several nodes need PostgreSQL)"
                .into(),
        ));
    }
    let now = ctx.clock.now();
    let id = ctx.store.set_node_draining(name, Some(now), now).await?;
    ctx.audit("node.drain", name.as_str(), "terminals sent to the other nodes", now).await?;
    let acks = wait_for_acks(ctx, id, Some(name.as_str()), ACK_DEADLINE).await?;
    let start = Instant::now();
    let left = loop {
        let left = terminal_sessions_on(&ctx.store, name).await?;
        if left == 0 || start.elapsed() >= DRAIN_DEADLINE {
            break left;
        }
        tokio::time::sleep(POLL * 10).await;
    };
    let ack = acks.first();
    Ok(Drained {
        node: name.to_string(),
        draining: true,
        acknowledged: ack.is_some_and(|a| a.acknowledged),
        moved: ack.map_or(0, |a| a.killed),
        left,
    })
}

/// Ends a drain: the node takes terminals again.
pub async fn resume(ctx: &Ctx, name: &Name) -> Result<Drained, OpsError> {
    let now = ctx.clock.now();
    let id = ctx.store.set_node_draining(name, None, now).await?;
    ctx.audit("node.resume", name.as_str(), "serving terminals again", now).await?;
    let acks = wait_for_acks(ctx, id, Some(name.as_str()), ACK_DEADLINE).await?;
    Ok(Drained {
        node: name.to_string(),
        draining: false,
        acknowledged: acks.first().is_some_and(|a| a.acknowledged),
        moved: 0,
        left: terminal_sessions_on(&ctx.store, name).await?,
    })
}

async fn terminal_sessions_on(store: &Store, node: &Name) -> Result<usize, OpsError> {
    Ok(store
        .list_sessions_with_kind(i64::MIN)
        .await?
        .iter()
        .filter(|(s, kind)| s.node == node.as_str() && kind == "terminal")
        .count())
}
