//! Several VPN nodes on one store (PostgreSQL; SQLite serves one node). Every node is stateless beyond the store:
//! it registers under its name, heartbeats, records the sessions its openvpn processes hold, and follows the
//! store's events (kills after a revocation or a suspension, drains) so that a change made on any node reaches
//! live sessions on every node.
//!
//! - `Local`: this node's name and whether it is draining, shared by the instances of `serve vpn`.
//! - `follow`: the event follower (LISTEN/NOTIFY, a catch-up read after every notification, every reconnect and
//!   every [`CATCH_UP_EVERY`]) and the heartbeat.
//!
//! Floor 3 (what services share): `serve vpn` runs it, `ops` reads its constants.

pub mod follow;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::config::Config;
use crate::domain::{Host, Name};

/// How often a node writes its heartbeat.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
/// A node whose heartbeat is younger than this is alive (three heartbeats: one lost write is not a death).
pub const ALIVE_FOR_SECS: i64 = 15;
/// Sessions of a node silent for this long are deleted by the others (it cannot clear them itself).
pub const DEAD_AFTER_SECS: i64 = 30;
/// The periodic catch-up read of the event rows, whatever the notifications did.
pub const CATCH_UP_EVERY: Duration = Duration::from_secs(5);
/// Events older than this are deleted (a node down for longer starts afresh anyway).
pub const EVENTS_KEPT_SECS: i64 = 86_400;
/// The temporary denial a draining node gives new terminals: openvpn 2.6 moves on to its next `remote` at once
/// (`advance remote`) and OpenVPN 3 retries after the backoff.
pub const DRAINING: &str = "TEMP[backoff 2,advance remote]:node draining, try another";

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "node {name} is already running (its heartbeat is {age} s old): another process serves this node name; \
         stop it, or give this one another name (node= in config/vpn, or serve --node NAME)"
    )]
    NameInUse { name: Name, age: i64 },
    #[error(
        "the store is SQLite, which serves one node, and node {other} is running on it (heartbeat {age} s old): \
         several nodes need PostgreSQL (--database-url postgres://…); stop {other} to run this node instead"
    )]
    SingleNode { other: String, age: i64 },
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
}

/// This node, as the instances of `serve vpn` see it.
#[derive(Debug)]
pub struct Local {
    pub name: Name,
    draining: AtomicBool,
}

impl Local {
    pub fn new(name: Name, draining: bool) -> Local {
        Local { name, draining: AtomicBool::new(draining) }
    }

    /// Draining: no new terminal session is let in (they get [`DRAINING`]).
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn set_draining(&self, on: bool) {
        self.draining.store(on, Ordering::Relaxed);
    }
}

/// This node's name: `serve --node NAME`, else `node=` in config/vpn, else the host name (lower-cased), else
/// `node-1`. Every node of one store needs its own.
pub fn node_name(cfg: &Config, flag: Option<&Name>) -> Name {
    if let Some(n) = flag.cloned().or_else(|| cfg.vpn.as_ref().and_then(|v| v.node.clone())) {
        return n;
    }
    crate::sys::host_name().and_then(|h| h.parse().ok()).unwrap_or_else(|| "node-1".parse().expect("a valid name"))
}

/// Where clients reach this node, the `remote` its profiles (and the other nodes') list: `public_hostname`,
/// else `public_ip`.
pub fn public_address(cfg: &Config) -> Option<Host> {
    cfg.vpn.as_ref().and_then(|v| v.public_hostname.clone()).or_else(|| cfg.network.public_ip.map(Host::from))
}
