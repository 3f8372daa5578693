//! One node's part in the cluster, as tasks of `serve vpn`: registration at start, the heartbeat (with the
//! clean-up of dead nodes' sessions and of old events), and the event follower, which applies every event meant
//! for this node exactly as often as it takes: a kill is idempotent, so an event seen through a notification and
//! again through a catch-up read does no harm; what matters is that none is missed.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::{ALIVE_FOR_SECS, CATCH_UP_EVERY, ClusterError, DEAD_AFTER_SECS, EVENTS_KEPT_SECS, HEARTBEAT_EVERY, Local};
use crate::db::events::Wake;
use crate::db::{DbError, Event, NodeRefusal, NodeStart, Store};
use crate::domain::Name;

/// What a node does with an event meant for it; answers how many sessions it ended.
pub trait Applier: Send {
    fn apply(&mut self, event: &Event) -> impl Future<Output = usize> + Send;
}

/// A registered node.
pub struct Registered {
    /// Draining if the store says so.
    pub local: Arc<Local>,
    /// This run's id (the heartbeat proves the name is still ours with it).
    pub run_id: String,
    /// The newest event at registration: the follower applies what comes after (this node's sessions are
    /// cleared after registering, so nothing older can concern them).
    pub after_event: i64,
}

/// Registers this node: refused when another live process holds its name, or when the store is SQLite and
/// another node is alive there.
/// `holder`: who runs the node (see [`holder_id`]).
pub async fn register(
    store: &Store,
    name: Name,
    holder: &str,
    address: &str,
    now: i64,
) -> Result<Registered, ClusterError> {
    let run_id = format!("{holder}/{}", hex::encode(rand::random::<[u8; 8]>()));
    let start = NodeStart {
        name: &name,
        address,
        version: env!("CARGO_PKG_VERSION"),
        run_id: &run_id,
        now,
        alive_since: now - ALIVE_FOR_SECS,
    };
    let after_event = store.last_event_id().await?;
    match store.register_node(&start).await? {
        Ok(row) => {
            Ok(Registered { local: Arc::new(Local::new(name, row.draining_since.is_some())), run_id, after_event })
        }
        Err(NodeRefusal::NameInUse { last_seen }) => Err(ClusterError::NameInUse { name, age: now - last_seen }),
        Err(NodeRefusal::SingleNode { other, last_seen }) => {
            Err(ClusterError::SingleNode { other, age: now - last_seen })
        }
    }
}

/// Who runs a node: this machine (its machine id, else its host name) and the installation root, hashed. A
/// `serve vpn` restarted after a crash is the same holder (its root's single-instance lock says the predecessor
/// is gone), while a copy of the configuration on another machine, or in another root, is not.
pub fn holder_id(root: &std::path::Path) -> String {
    use sha2::{Digest, Sha256};
    let machine = crate::sys::machine_id().unwrap_or_default();
    let digest = Sha256::new()
        .chain_update(machine.as_bytes())
        .chain_update([0])
        .chain_update(root.as_os_str().as_encoded_bytes())
        .finalize();
    hex::encode(&digest[..8])
}

/// Every [`HEARTBEAT_EVERY`]: the heartbeat, and every sixth beat the sessions of dead nodes and old events go.
/// (The draining flag needs no polling: registration reads it, and the follower applies every drain and resume
/// from the event rows after that.)
pub async fn heartbeat(store: Store, local: Arc<Local>, run_id: String, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut beats: u64 = 0;
    let mut failing = false;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        beats += 1;
        let now = crate::app::now();
        let result: Result<(), DbError> = async {
            if !store.node_heartbeat(&local.name, &run_id, now).await? {
                tracing::error!(
                    node = %local.name,
                    "another process now holds this node's name in the store: two nodes answer for one name"
                );
            }
            if beats.is_multiple_of(6) {
                let cleared = store.clear_dead_nodes_sessions(now - DEAD_AFTER_SECS).await?;
                if cleared > 0 {
                    tracing::info!(sessions = cleared, "cleared the sessions of nodes that stopped answering");
                }
                store.prune_events(now - EVENTS_KEPT_SECS).await?;
            }
            Ok(())
        }
        .await;
        match result {
            // The node keeps serving what is established (its openvpn never stops for the store's sake); new
            // connections it cannot check are denied by the CONNECT answer itself.
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(node = %local.name, error = %e, "heartbeat: store unreachable; serving established sessions");
            }
            Err(_) => {}
            Ok(()) if failing => {
                failing = false;
                tracing::info!(node = %local.name, "heartbeat: store reachable again");
            }
            Ok(()) => {}
        }
    }
}

/// Follows the store's events for this node until shutdown, from `after` on (`Registered::after_event`):
/// LISTEN (PostgreSQL), and a catch-up read after every notification, after every reconnection and at least
/// every [`CATCH_UP_EVERY`].
pub async fn follow(
    store: Store,
    local: Arc<Local>,
    after: i64,
    mut applier: impl Applier,
    mut shutdown: watch::Receiver<bool>,
) {
    let retry = Duration::from_secs(1);
    let mut last = after;
    let mut listener = None;
    let mut failing = false;
    loop {
        if listener.is_none() {
            match store.event_listener().await {
                Ok(l) => listener = Some(l),
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "event follower: cannot listen; reading the events every second");
                }
                Err(_) => {}
            }
        }
        match catch_up(&store, &local, &mut last, &mut applier).await {
            Ok(()) if failing && listener.is_some() => {
                failing = false;
                tracing::info!("event follower: store reachable again; caught up");
            }
            Ok(()) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "event follower: store unreachable; will catch up when it is back");
            }
            Err(_) => {}
        }
        let wake = match listener.as_mut() {
            Some(l) => tokio::select! {
                _ = shutdown.changed() => return,
                w = l.wait(CATCH_UP_EVERY) => w,
            },
            None => tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(retry) => Ok(Wake::Quiet),
            },
        };
        match wake {
            Ok(Wake::Reconnected) => tracing::info!("event follower: listening again; catching up"),
            Ok(_) => {}
            Err(_) => {
                // The listener could not reconnect: make a new one after a pause (the catch-up runs meanwhile).
                listener = None;
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(retry) => {}
                }
            }
        }
    }
}

/// Applies and acknowledges every event after `last` meant for this node, oldest first.
async fn catch_up(store: &Store, local: &Local, last: &mut i64, applier: &mut impl Applier) -> Result<(), DbError> {
    loop {
        let events = store.events_after(*last, local.name.as_str()).await?;
        if events.is_empty() {
            return Ok(());
        }
        for e in &events {
            let killed = applier.apply(e).await;
            store
                .ack_event(e.id, local.name.as_str(), i64::try_from(killed).unwrap_or(i64::MAX), crate::app::now())
                .await?;
            *last = e.id;
        }
    }
}
