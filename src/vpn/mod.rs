//! `serve vpn`: supervises one openvpn process per terminal instance and per live admin credential.
//!
//! - `domain::lifecycle`: the pure life cycle of one process (backoff, crash loop, stop).
//! - `instance`: the tokio driver of one instance (process, management socket, CONNECT answers, sessions).
//! - `auth`: the pure answer to a CONNECT from store rows.
//! - `mgmt`: the management protocol and client.
//! - `front`: the terminal front port (7742), relaying each terminal to its home instance.
//! - `relay`: one relay's byte pump; `relays`: the open relays by terminal (real addresses, and a kill's cut).
//! - `control`: the server side of the control socket (`crate::control`) other cas-vpn processes use.
//! - `writer`: the one task that writes every instance's session rows to the store, batched.
//! - `service`: wires it all together with graceful shutdown (interfaces and the firewall belong to `serve net`,
//!   CRLs to `serve signer`).

pub mod auth;
pub mod control;
pub mod front;
pub mod instance;
pub mod mgmt;
pub mod relay;
pub mod relays;
pub mod service;
pub mod writer;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::app::instances::InstanceSpec;
use crate::cluster::Local;
use crate::db::Store;
use crate::domain::Name;
use instance::{Control, Instance, InstanceStatus};
use relays::Relays;

/// How long `apply` waits for the instances it started to be ready. They start all at once: the front port
/// holds a terminal until its own instance listens, so nothing is gained by starting them one after another, and on
/// a busy machine that took a second or more per instance while the whole fleet waited outside (ARCHITECTURE.md,
/// "A fleet's storm").
const READY_WAIT: Duration = Duration::from_secs(2);

struct Handle {
    /// Fingerprint of the rendered config: a change restarts only this instance.
    config_hash: [u8; 32],
    ctl: mpsc::Sender<Control>,
    join: JoinHandle<()>,
}

/// The running instances' control channels, shared with the control socket: a `kill` (revocation) or a `status`
/// reaches every instance at once and never waits behind `apply`, which may be starting or stopping instances for
/// seconds.
///
/// It also holds the front's home cache, so that a killed credential (a revocation) is looked up afresh by the
/// front at its next connection, and refused there, instead of being relayed on what the front learned before;
/// and the front's open relays, which a kill cuts first (`relays`).
#[derive(Clone, Default)]
pub struct Registry {
    ctls: Arc<RwLock<HashMap<Name, mpsc::Sender<Control>>>>,
    homes: front::Homes,
    relays: Relays,
}

impl Registry {
    fn senders(&self) -> Vec<mpsc::Sender<Control>> {
        self.ctls.read().map(|m| m.values().cloned().collect()).unwrap_or_default()
    }

    fn insert(&self, name: Name, ctl: mpsc::Sender<Control>) {
        if let Ok(mut m) = self.ctls.write() {
            m.insert(name, ctl);
        }
    }

    fn remove(&self, name: &Name) {
        if let Ok(mut m) = self.ctls.write() {
            m.remove(name);
        }
    }

    /// Kills every live session of `name` on every instance; returns how many.
    ///
    /// A terminal the front relays has its relays cut as soon as every instance has dropped its sessions (each
    /// counts what it dropped; cut first, openvpn could report them gone before the kill reached the instance):
    /// that ends the sessions' transport at once. An instance told that the name is relayed asks openvpn to kill
    /// its sessions without waiting for the answer (openvpn busy with a fleet's handshakes answers in seconds);
    /// it waits for it only otherwise (an admin's session, or one that did not come through the front).
    pub async fn kill(&self, name: &Name) -> usize {
        let started = std::time::Instant::now();
        let relayed = self.forget_home(name);
        let total = self.ask_all(|reply| Control::Kill { name: name.clone(), relayed, reply }).await;
        let cut = self.relays.cut(name);
        // One line per revocation (or other kill) in the service log, whatever it found.
        tracing::info!(credential = %name, sessions = total, relays_cut = cut, ms = started.elapsed().as_millis(), "kill: live sessions ended");
        total
    }

    /// The front forgets `name`'s home (its next connection asks the store, which refuses a revoked one); returns
    /// whether the front relays `name` now (its relays are to be cut).
    fn forget_home(&self, name: &Name) -> bool {
        self.homes.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
        self.relays.count(name) > 0
    }

    /// Kills every live session of each of `names` (a bulk revocation): each instance is fed the kills by a task
    /// of its own, all at once, and the answers are summed.
    pub async fn kill_many(&self, names: &[Name]) -> usize {
        let relayed: Vec<bool> = names.iter().map(|n| self.forget_home(n)).collect();
        let relayed = &relayed;
        let per_instance = self.senders().into_iter().map(|ctl| async move {
            let mut waits = Vec::with_capacity(names.len());
            for (name, &relayed) in names.iter().zip(relayed) {
                let (reply, rx) = oneshot::channel();
                if ctl.send(Control::Kill { name: name.clone(), relayed, reply }).await.is_err() {
                    break;
                }
                waits.push(rx);
            }
            let mut n = 0;
            for w in waits {
                n += w.await.unwrap_or(0);
            }
            n
        });
        let total: usize = futures_util::future::join_all(per_instance).await.into_iter().sum();
        for name in names {
            self.relays.cut(name);
        }
        tracing::info!(credentials = names.len(), sessions = total, "kill: live sessions ended (bulk)");
        total
    }

    /// Moves every terminal session of this node elsewhere (a drain): each is killed with openvpn's
    /// `RESTART,[N]`, which sends the client on to its next `remote`. Returns how many.
    pub async fn drain(&self) -> usize {
        let total = self.ask_all(|reply| Control::Drain { reply }).await;
        tracing::info!(sessions = total, "drain: terminal sessions sent to another node");
        total
    }

    /// Sends `ask(reply)` to every instance at once, then sums their answers.
    async fn ask_all(&self, ask: impl Fn(oneshot::Sender<usize>) -> Control) -> usize {
        let mut waits = Vec::new();
        for ctl in self.senders() {
            let (reply, rx) = oneshot::channel();
            if ctl.send(ask(reply)).await.is_ok() {
                waits.push(rx);
            }
        }
        let mut total = 0;
        for w in waits {
            total += w.await.unwrap_or(0);
        }
        total
    }

    pub async fn status(&self) -> Vec<InstanceStatus> {
        let mut out = Vec::new();
        for ctl in self.senders() {
            let (reply, rx) = oneshot::channel();
            if ctl.send(Control::Status { reply }).await.is_ok()
                && let Ok(s) = rx.await
            {
                out.push(s);
            }
        }
        out.sort_by_key(|s| (s.kind as u8, s.port));
        out
    }
}

pub struct Supervisor {
    store: Store,
    node: Arc<Local>,
    relays: Relays,
    instances: HashMap<Name, Handle>,
    registry: Registry,
    writes: writer::SessionWriter,
}

impl Supervisor {
    /// `homes`: the front's home cache, which kills clear; `relays`: the front's open relays, which kills cut
    /// (see `Registry`).
    pub fn new(store: Store, node: Arc<Local>, relays: Relays, homes: front::Homes) -> Supervisor {
        let registry = Registry { ctls: Default::default(), homes, relays: relays.clone() };
        // Ends by itself once the supervisor and every instance are gone, each instance having flushed its rows.
        // On a connection of its own: behind the shared pool, a kill's flush waited seconds for the CONNECT lookups
        // of a fleet coming back.
        let writes = writer::SessionWriter::spawn(store.dedicated(), node.name.to_string());
        Supervisor { store, node, relays, instances: HashMap::new(), registry, writes }
    }

    /// The handle the control socket uses for kills and status.
    pub fn registry(&self) -> Registry {
        self.registry.clone()
    }

    /// Makes the running set match `wanted` (spec + config hash): stops instances no longer wanted, restarts
    /// those whose config changed, starts new ones all at once and waits (bounded) until they are ready. Untouched
    /// instances keep running.
    pub async fn apply(&mut self, wanted: Vec<(InstanceSpec, [u8; 32])>) {
        let keep: std::collections::HashSet<&Name> = wanted.iter().map(|(s, _)| &s.name).collect();
        let gone: Vec<Name> = self.instances.keys().filter(|n| !keep.contains(n)).cloned().collect();
        for name in gone {
            self.stop(&name).await;
        }
        let mut started = Vec::new();
        for (spec, hash) in wanted {
            match self.instances.get(&spec.name) {
                Some(h) if h.config_hash == hash => continue,
                Some(_) => {
                    tracing::info!(instance = %spec.name, "config changed; restarting this instance");
                    self.stop(&spec.name).await;
                }
                None => {}
            }
            started.push(self.start(spec, hash));
        }
        let deadline = tokio::time::Instant::now() + READY_WAIT;
        for (name, mut ready) in started {
            if tokio::time::timeout_at(deadline, ready.wait_for(|r| *r)).await.is_err() {
                tracing::warn!(instance = %name, "not ready within {READY_WAIT:?}; going on");
            }
        }
    }

    /// Starts one instance; returns its name and readiness.
    fn start(&mut self, spec: InstanceSpec, config_hash: [u8; 32]) -> (Name, watch::Receiver<bool>) {
        let (ctl, rx) = mpsc::channel(16);
        let (ready_tx, ready) = watch::channel(false);
        let name = spec.name.clone();
        let inst = Instance::new(
            spec,
            self.store.clone(),
            self.node.clone(),
            self.relays.clone(),
            ready_tx,
            self.writes.clone(),
        );
        let join = tokio::spawn(inst.run(rx));
        // Reachable for kills from the moment it exists, not only once it is ready.
        self.registry.insert(name.clone(), ctl.clone());
        self.instances.insert(name.clone(), Handle { config_hash, ctl, join });
        (name, ready)
    }

    async fn stop(&mut self, name: &Name) {
        if let Some(h) = self.instances.remove(name) {
            self.registry.remove(name);
            let _ = h.ctl.send(Control::Stop).await;
            let _ = h.join.await;
        }
    }

    /// Stops everything: SIGTERM, then SIGKILL after the grace period; returns when all processes are gone.
    pub async fn shutdown(&mut self) {
        for h in self.instances.values() {
            let _ = h.ctl.send(Control::Stop).await;
        }
        for (name, h) in self.instances.drain() {
            self.registry.remove(&name);
            let _ = h.join.await;
        }
    }
}
