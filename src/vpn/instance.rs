//! The tokio driver of one openvpn instance: carries out what its `Machine` decides (spawn, signal, wake), owns
//! the instance's management connection, answers every CONNECT/REAUTH from the store, and keeps the instance's
//! live sessions in the store and in memory (for kills by name).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant as TokioInstant;

use super::auth::{Claim, Decision, decide, normalise_serial};
use super::mgmt::{ClientEvent, Env, Mgmt, MgmtError};
use super::relays::Relays;
use super::writer::SessionWriter;
use crate::app::instances::InstanceSpec;
use crate::cluster::Local;
pub use crate::control::InstanceStatus;
use crate::db::{EventKind, NewSession, SessionChange, Store};
use crate::domain::lifecycle::{Action, Event, Machine, State};
use crate::domain::takeover::{self, TakeoverWatch};
use crate::domain::{Kind, Name};
use crate::sys::process::{signal_group, spawn_guarded};

/// The IP of an `ip:port` real address (openvpn's `untrusted_ip` form, or what the front saw).
fn ip_of(addr: &str) -> Option<std::net::IpAddr> {
    addr.parse::<std::net::SocketAddr>().map(|a| a.ip()).or_else(|_| addr.parse()).ok()
}

/// How loud one line of openvpn's output is in cas-vpn's log: its own errors and warnings at their level, the
/// management interface's routine traffic (our `status 3` every 15 s) out of the way at DEBUG.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenvpnLine {
    Error,
    Warning,
    Chatter,
    Info,
}

impl OpenvpnLine {
    pub fn of(line: &str) -> OpenvpnLine {
        if line.contains("ERROR:") || line.contains("Options error") || line.contains("Exiting due to fatal error") {
            OpenvpnLine::Error
        } else if line.contains("WARNING:") {
            OpenvpnLine::Warning
        } else if line.contains("MANAGEMENT: ") {
            OpenvpnLine::Chatter
        } else {
            OpenvpnLine::Info
        }
    }
}

/// Asked of a terminal instance's openvpn as soon as its management interface is connected: only the variables
/// cas-vpn reads (`X509_0_CN`, `tls_serial_*`, `untrusted_ip`, …) and the client's peer info go with each
/// `>CLIENT:` notification, about a third of the full environment. openvpn writes its management output 1 KiB per
/// turn of its event loop and reads no command while output is waiting; with the full environment (about 2 KiB for
/// each CONNECT and again for each ESTABLISHED), a fleet coming back kept it writing, and the answers and kills
/// waited.
pub const TERMINAL_ENV_FILTER: &str = "env-filter 2";

pub enum Control {
    Stop,
    /// Kill every live session of this credential; answers how many were killed. `relayed`: the front relays
    /// it, and cuts those relays once every instance has answered (`Registry::kill`), which ends the transport of
    /// its sessions through the front.
    Kill {
        name: Name,
        relayed: bool,
        reply: oneshot::Sender<usize>,
    },
    /// Send every terminal session on to the client's next `remote` (the node drains); answers how many.
    Drain {
        reply: oneshot::Sender<usize>,
    },
    Status {
        reply: oneshot::Sender<InstanceStatus>,
    },
}

#[derive(Debug, Clone)]
struct Session {
    credential_id: i64,
    name: Name,
    tunnel_ip: Ipv4Addr,
    real_addr: String,
}

/// Retry period for (re)connecting the management socket while openvpn runs.
const MGMT_RETRY: Duration = Duration::from_millis(25);
/// A kill (or drain) that takes longer than this is logged with where its time went.
const SLOW_KILL: Duration = Duration::from_secs(1);
/// How often session byte counters are read (`status 3`) into the store, when the instance is quiet.
const STATS_EVERY: Duration = Duration::from_secs(15);

pub struct Instance {
    spec: InstanceSpec,
    store: Store,
    /// This node: its name (sessions carry it) and whether it is draining.
    node: Arc<Local>,
    relays: Relays,
    origin: TokioInstant,
    machine: Machine,
    child: Option<Child>,
    mgmt: Option<(Mgmt, mpsc::UnboundedReceiver<ClientEvent>)>,
    mgmt_try_at: Option<TokioInstant>,
    wake: Option<TokioInstant>,
    sessions: HashMap<u64, Session>,
    /// Admin instances: recent takeovers of the credential's session.
    takeovers: TakeoverWatch,
    ready: watch::Sender<bool>,
    /// How long CONNECT/REAUTH answers took (`/metrics`).
    answers: crate::control::AnswerLatency,
    /// Terminal CONNECTs whose store lookups run beside the loop come back here (see `Decided`).
    decided_tx: mpsc::UnboundedSender<Decided>,
    decided_rx: mpsc::UnboundedReceiver<Decided>,
    acked_tx: mpsc::UnboundedSender<Acked>,
    acked_rx: mpsc::UnboundedReceiver<Acked>,
    /// Session rows go to the store through the service's writer, never from this loop (`writer`).
    writes: SessionWriter,
    /// Counts the openvpn processes this instance has run: a CONNECT answered after its process is gone belongs to a
    /// client of that process, and must never be sent to the next one (CIDs start again at 0 there).
    generation: u64,
    /// Kills so far, and the count at the last kill of each name, while answers are in flight (see `Decided`).
    kills: u64,
    killed: HashMap<Name, u64>,
    in_flight: usize,
    /// When openvpn last asked about a client (CONNECT or REAUTH), and how many byte-counter reads were put off
    /// since (see [`stats_due`]).
    last_question: Option<TokioInstant>,
    stats_put_off: u32,
}

/// A terminal CONNECT whose store lookups are done: what `connect_decided` answers openvpn with. A terminal
/// instance asks the store for many CONNECTs at once (a fleet coming back after a restart: about 200 an instance)
/// instead of one after another, while the loop keeps owning the instance's state and answering kills.
struct Decided {
    cid: u64,
    kid: u64,
    env: Env,
    decision: Decision,
    asked: std::time::Instant,
    /// `kills` when the store was asked: a kill of the same name since then voids an `Allow` (the store may have
    /// been read before the revocation that the kill carries out).
    kills_then: u64,
    /// The instance's `generation` when the CONNECT came.
    generation: u64,
}

/// openvpn's acknowledgement of a terminal CONNECT's answer (see `connect_decided`).
struct Acked {
    cid: u64,
    generation: u64,
    asked: std::time::Instant,
    /// The answer let the client in.
    allowed: bool,
    result: Result<(), MgmtError>,
}

impl Instance {
    pub fn new(
        spec: InstanceSpec,
        store: Store,
        node: Arc<Local>,
        relays: Relays,
        ready: watch::Sender<bool>,
        writes: SessionWriter,
    ) -> Instance {
        let (decided_tx, decided_rx) = mpsc::unbounded_channel();
        let (acked_tx, acked_rx) = mpsc::unbounded_channel();
        Instance {
            spec,
            store,
            node,
            relays,
            takeovers: TakeoverWatch::default(),
            origin: TokioInstant::now(),
            machine: Machine::default(),
            child: None,
            mgmt: None,
            mgmt_try_at: None,
            wake: None,
            sessions: HashMap::new(),
            ready,
            answers: crate::control::AnswerLatency::new(),
            decided_tx,
            decided_rx,
            acked_tx,
            acked_rx,
            writes,
            generation: 0,
            kills: 0,
            killed: HashMap::new(),
            in_flight: 0,
            last_question: None,
            stats_put_off: 0,
        }
    }

    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    pub async fn run(mut self, mut control: mpsc::Receiver<Control>) {
        let _ = self.store.clear_sessions(self.node.name.as_str(), Some(self.spec.name.as_str())).await;
        self.event(Event::Start).await;
        let mut stats = tokio::time::interval(STATS_EVERY);
        stats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stats.tick() => {
                    let busy = self.last_question.is_some_and(|t| t.elapsed() < QUIET_FOR);
                    if stats_due(busy, self.stats_put_off) {
                        self.stats_put_off = 0;
                        self.record_stats();
                    } else {
                        self.stats_put_off += 1;
                    }
                }
                ctl = control.recv() => match ctl {
                    None | Some(Control::Stop) => self.event(Event::Stop).await,
                    Some(Control::Kill { name, relayed, reply }) => {
                        if self.in_flight > 0 {
                            self.kills += 1;
                            self.killed.insert(name.clone(), self.kills);
                        }
                        let started = TokioInstant::now();
                        let relays_cut = relayed && self.spec.role.kind == Kind::Terminal;
                        let had = self.sessions.values().any(|s| s.name == name);
                        let n = self.kill_sessions_of(&name, relays_cut).await;
                        // Nothing of it here, or its relays cut on SQLite: no row to wait for (there a revocation
                        // removes its credential's rows in its own transaction, and the writer never records them
                        // again). On PostgreSQL each node removes its own rows: the answer waits for them.
                        let rows_gone = relays_cut && matches!(self.store, Store::Sqlite(_));
                        if had && !rows_gone {
                            self.reply_when_written(reply, n, "kill", started);
                        } else {
                            let _ = reply.send(n);
                        }
                    }
                    Some(Control::Drain { reply }) => {
                        let started = TokioInstant::now();
                        let n = self.drain().await;
                        self.reply_when_written(reply, n, "drain", started);
                    }
                    Some(Control::Status { reply }) => {
                        let _ = reply.send(self.status());
                    }
                },
                status = wait_child(&mut self.child) => {
                    if matches!(self.machine.state(), State::Stopping { .. }) {
                        tracing::info!(instance = %self.spec.name, ?status, "openvpn stopped");
                    } else {
                        tracing::warn!(instance = %self.spec.name, ?status, "openvpn exited; restarting");
                    }
                    self.child = None;
                    self.lost_process().await;
                    self.event(Event::Exited).await;
                }
                () = sleep_until(self.wake) => {
                    self.wake = None;
                    self.event(Event::Tick).await;
                }
                () = sleep_until(self.mgmt_try_at) => self.try_connect_mgmt().await,
                Some(d) = self.decided_rx.recv() => self.connect_decided(d).await,
                Some(a) = self.acked_rx.recv() => self.answer_acked(a),
                ev = next_event(&mut self.mgmt) => match ev {
                    Some(ev) => self.client_event(ev).await,
                    None if self.child.is_none() || matches!(self.machine.state(), State::Stopping { .. }) => {
                        self.mgmt = None;
                    }
                    None => {
                        // The management connection fell over while openvpn runs: reconnect. Until then openvpn
                        // gets no answers and denies new clients (fails closed).
                        tracing::warn!(instance = %self.spec.name, "management connection lost; reconnecting");
                        self.mgmt = None;
                        let _ = self.ready.send(false);
                        if self.child.is_some() {
                            self.mgmt_try_at = Some(TokioInstant::now() + MGMT_RETRY);
                        }
                    }
                },
            }
            if self.machine.is_finished() {
                break;
            }
        }
        let _ = std::fs::remove_file(&self.spec.pidfile);
        // What was sent is written, then the rows go.
        self.writes.send(SessionChange::Clear { instance: self.spec.name.to_string() });
        self.writes.flushed().await;
    }

    fn status(&self) -> InstanceStatus {
        InstanceStatus {
            name: self.spec.name.clone(),
            kind: self.spec.role.kind,
            port: self.spec.port,
            state: self.machine.state().clone(),
            ready: self.mgmt.is_some() && self.child.is_some(),
            restarts: self.machine.restarts(),
            crash_loop: self.machine.is_crash_loop(),
            sessions: self.sessions.len(),
            answers: self.answers.clone(),
        }
    }

    async fn event(&mut self, ev: Event) {
        let mut queue = self.machine.handle(ev, self.now());
        while let Some(action) = (!queue.is_empty()).then(|| queue.remove(0)) {
            match action {
                Action::Spawn => {
                    let next = match self.spawn() {
                        Ok(pid) => Event::Spawned { pid },
                        Err(e) => {
                            tracing::error!(instance = %self.spec.name, error = %e, "cannot start openvpn");
                            Event::SpawnFailed
                        }
                    };
                    queue.extend(self.machine.handle(next, self.now()));
                }
                Action::Terminate { pid } => signal_group(pid, Signal::SIGTERM),
                Action::Kill { pid } => signal_group(pid, Signal::SIGKILL),
                Action::WakeAt(at) => self.wake = Some(self.origin + at),
            }
        }
    }

    fn spawn(&mut self) -> std::io::Result<u32> {
        let _ = std::fs::remove_file(&self.spec.management);
        let args = vec!["--config".to_owned(), self.spec.config.display().to_string()];
        let mut child = spawn_guarded("openvpn", &args, self.spec.run_as)?;
        let pid = child.id().ok_or_else(|| std::io::Error::other("openvpn exited at once"))?;
        crate::sys::fs::write_atomic(&self.spec.pidfile, format!("{pid}\n").as_bytes(), 0o644)
            .map_err(std::io::Error::other)?;
        type Out = Box<dyn tokio::io::AsyncRead + Send + Unpin>;
        let outputs: [Option<Out>; 2] =
            [child.stdout.take().map(|o| Box::new(o) as Out), child.stderr.take().map(|e| Box::new(e) as Out)];
        for out in outputs.into_iter().flatten() {
            let name = self.spec.name.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(out).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    match OpenvpnLine::of(&line) {
                        OpenvpnLine::Error => tracing::error!(target: "openvpn", instance = %name, "{line}"),
                        OpenvpnLine::Warning => tracing::warn!(target: "openvpn", instance = %name, "{line}"),
                        OpenvpnLine::Chatter => tracing::debug!(target: "openvpn", instance = %name, "{line}"),
                        OpenvpnLine::Info => tracing::info!(target: "openvpn", instance = %name, "{line}"),
                    }
                }
            });
        }
        self.child = Some(child);
        self.mgmt_try_at = Some(TokioInstant::now() + MGMT_RETRY);
        tracing::info!(instance = %self.spec.name, pid, port = self.spec.port, "openvpn started");
        Ok(pid)
    }

    async fn try_connect_mgmt(&mut self) {
        self.mgmt_try_at = None;
        if self.child.is_none() || self.mgmt.is_some() {
            return;
        }
        match Mgmt::connect(&self.spec.management).await {
            Ok(m) => {
                tracing::debug!(instance = %self.spec.name, "management connected");
                if self.spec.role.kind == Kind::Terminal {
                    // Queued first: every later command and notification comes after it. A refusal (an openvpn
                    // without the command) leaves the full environment, which is only slower.
                    let filter = m.0.clone();
                    let instance = self.spec.name.clone();
                    tokio::spawn(async move {
                        if let Err(e) = filter.command(TERMINAL_ENV_FILTER).await {
                            tracing::warn!(%instance, error = %e, "management env-filter not applied");
                        }
                    });
                }
                self.mgmt = Some(m);
                let _ = self.ready.send(true);
            }
            Err(_) => self.mgmt_try_at = Some(TokioInstant::now() + MGMT_RETRY),
        }
    }

    /// The process is gone: so are its sessions.
    async fn lost_process(&mut self) {
        self.mgmt = None;
        self.mgmt_try_at = None;
        let _ = self.ready.send(false);
        self.sessions.clear();
        self.generation += 1;
        self.writes.send(SessionChange::Clear { instance: self.spec.name.to_string() });
        let _ = std::fs::remove_file(&self.spec.pidfile);
    }

    fn mgmt(&self) -> Option<Mgmt> {
        self.mgmt.as_ref().map(|(m, _)| m.clone())
    }

    async fn client_event(&mut self, ev: ClientEvent) {
        let Some(mgmt) = self.mgmt() else { return };
        // A question openvpn waits on: how long its answer takes is measured (store lookups and the command).
        let asked =
            matches!(ev, ClientEvent::Connect { .. } | ClientEvent::Reauth { .. }).then(std::time::Instant::now);
        if asked.is_some() {
            self.last_question = Some(TokioInstant::now());
        }
        let result = match ev {
            // A draining node lets no new terminal in: the client moves on to its next `remote`.
            ClientEvent::Connect { cid, kid, .. } if self.spec.role.kind == Kind::Terminal && self.node.draining() => {
                mgmt.client_deny(cid, kid, crate::cluster::DRAINING).await
            }
            ClientEvent::Connect { cid, kid, env } if self.spec.role.kind == Kind::Terminal => {
                let (store, role, tx) = (self.store.clone(), self.spec.role.clone(), self.decided_tx.clone());
                let asked = asked.unwrap_or_else(std::time::Instant::now);
                let (kills_then, generation) = (self.kills, self.generation);
                self.in_flight += 1;
                tokio::spawn(async move {
                    let decision = Instance::authorize(&store, &role, &env).await;
                    let _ = tx.send(Decided { cid, kid, env, decision, asked, kills_then, generation });
                });
                // Answered (and measured) in `connect_decided`.
                return;
            }
            ClientEvent::Connect { cid, kid, env } => match Self::authorize(&self.store, &self.spec.role, &env).await {
                Decision::Allow { credential_id, name, tunnel_ip, netmask } => {
                    let real_addr = self.real_addr(&env, &name);
                    let mut suspend = false;
                    if self.spec.role.kind == Kind::Admin {
                        // One live session per admin credential: the newest wins (see README), the older is killed
                        // before the new one is let in, so there are never two. A fight between two places
                        // (`domain::takeover`) suspends the credential instead.
                        let old: Vec<(u64, String)> =
                            self.sessions.iter().map(|(c, s)| (*c, s.real_addr.clone())).collect();
                        let now = crate::app::now();
                        for (old_cid, old_addr) in old {
                            suspend |= self.takeovers.note(credential_id, ip_of(&old_addr), ip_of(&real_addr), now);
                            let _ = mgmt.client_kill(old_cid).await;
                            self.forget(old_cid).await;
                            tracing::warn!(
                                instance = %self.spec.name, credential = %name, from = %old_addr, to = %real_addr,
                                "older admin session replaced"
                            );
                        }
                        if suspend {
                            self.suspend(credential_id, &name, now).await;
                        } else {
                            self.end_sessions_elsewhere(credential_id, &name, now).await;
                        }
                    }
                    if suspend {
                        mgmt.client_deny(cid, kid, "credential suspended after repeated takeovers").await
                    } else {
                        self.sessions.insert(cid, Session { credential_id, name: name.clone(), tunnel_ip, real_addr });
                        tracing::info!(instance = %self.spec.name, credential = %name, %tunnel_ip, "client allowed");
                        mgmt.client_auth(cid, kid, &[format!("ifconfig-push {tunnel_ip} {netmask}")]).await
                    }
                }
                Decision::Deny(reason) => {
                    tracing::warn!(instance = %self.spec.name, cn = ?common_name(&env), reason, "client denied");
                    mgmt.client_deny(cid, kid, reason).await
                }
            },
            ClientEvent::Reauth { cid, kid, env } => match Self::authorize(&self.store, &self.spec.role, &env).await {
                Decision::Allow { .. } => mgmt.client_auth_nt(cid, kid).await,
                Decision::Deny(reason) => {
                    self.forget(cid).await;
                    mgmt.client_deny(cid, kid, reason).await
                }
            },
            ClientEvent::Established { cid, .. } => {
                if let Some(s) = self.sessions.get(&cid) {
                    let row = NewSession {
                        node: self.node.name.to_string(),
                        instance: self.spec.name.to_string(),
                        credential_id: s.credential_id,
                        common_name: s.name.to_string(),
                        tunnel_ip: s.tunnel_ip.to_string(),
                        real_addr: s.real_addr.clone(),
                        since: crate::app::now(),
                        client_id: cid as i64,
                    };
                    let (credential_id, since) = (s.credential_id, row.since);
                    let terminal = self.spec.role.kind == Kind::Terminal;
                    self.writes.send(SessionChange::Record { row, terminal });
                    if self.spec.role.kind == Kind::Admin {
                        self.end_bootstrap(credential_id, since).await;
                    }
                }
                Ok(())
            }
            ClientEvent::Disconnect { cid, .. } => {
                self.forget(cid).await;
                Ok(())
            }
        };
        if let Some(asked) = asked {
            self.answers.observe(asked.elapsed());
        }
        if let Err(e) = result {
            tracing::warn!(instance = %self.spec.name, error = %e, "management command failed");
        }
    }

    /// Reads `status 3` (parsed by its HEADER line, so 2.4 and 2.6 both work) into the sessions' byte counters,
    /// beside the loop: openvpn may take a while to answer while a fleet comes back, and a kill must not wait for
    /// it. The counters go through the writer with the other session changes (one transaction, not one each).
    fn record_stats(&self) {
        let Some(mgmt) = self.mgmt() else { return };
        let (writes, instance) = (self.writes.clone(), self.spec.name.to_string());
        tokio::spawn(async move {
            let Ok(clients) = mgmt.status().await else { return };
            for c in clients {
                let Some(cid) = c.client_id else { continue };
                writes.send(SessionChange::Bytes {
                    instance: instance.clone(),
                    client_id: cid as i64,
                    bytes_in: c.bytes_received,
                    bytes_out: c.bytes_sent,
                });
            }
        });
    }

    /// The first admin VPN session ends the web UI's bootstrap mode for good (the firewall then closes public
    /// 7777: the web UI tells `serve net` at once, its drift check would within its period).
    async fn end_bootstrap(&self, credential_id: i64, now: i64) {
        match self.store.end_bootstrap_by(credential_id, now).await {
            Ok(true) => tracing::info!("first admin VPN session: the web UI's bootstrap mode has ended"),
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "cannot record the end of the web UI's bootstrap mode"),
        }
    }

    async fn forget(&mut self, cid: u64) {
        if self.sessions.remove(&cid).is_some() {
            self.writes.send(SessionChange::Remove { instance: self.spec.name.to_string(), client_id: cid as i64 });
        }
    }

    /// Answers a kill or a drain once the session rows it removed are gone from the store (its caller reads the
    /// store next), without holding up this loop meanwhile. One that took longer than [`SLOW_KILL`] says where
    /// the time went (openvpn's answers, or the store).
    fn reply_when_written(&self, reply: oneshot::Sender<usize>, n: usize, what: &'static str, started: TokioInstant) {
        let writes = self.writes.clone();
        let openvpn = started.elapsed();
        let instance = self.spec.name.clone();
        tokio::spawn(async move {
            writes.flushed().await;
            let _ = reply.send(n);
            if started.elapsed() > SLOW_KILL {
                tracing::warn!(
                    %instance, sessions = n, openvpn_ms = openvpn.as_millis(),
                    store_ms = (started.elapsed() - openvpn).as_millis(), "slow {what}"
                );
            }
        });
    }

    /// One live session per admin credential across nodes too: the newest wins, so a session of this credential
    /// on another node is ended there (an event addressed to that node; it ends every session of the name it
    /// holds). A store that cannot say is logged: the CONNECT answer just read the same store.
    async fn end_sessions_elsewhere(&self, credential_id: i64, name: &Name, now: i64) {
        let others: std::collections::BTreeSet<String> = match self.store.sessions_of(credential_id).await {
            Ok(rows) => rows.into_iter().map(|r| r.node).filter(|n| n != self.node.name.as_str()).collect(),
            Err(e) => {
                tracing::error!(credential = %name, error = %e, "cannot look for this admin's sessions on other nodes");
                return;
            }
        };
        for node in others {
            tracing::warn!(instance = %self.spec.name, credential = %name, %node, "admin session on another node replaced");
            if let Err(e) = self.store.publish_event(EventKind::Kill, name.as_str(), Some(&node), now).await {
                tracing::error!(credential = %name, %node, error = %e, "cannot end the admin's session on the other node");
            }
        }
    }

    /// Suspends an admin credential whose session is being fought over, and says so everywhere it counts.
    async fn suspend(&mut self, credential_id: i64, name: &Name, now: i64) {
        tracing::error!(
            instance = %self.spec.name, credential = %name,
            "admin credential SUSPENDED: its session was taken over repeatedly from different addresses \
             (two parties hold it?); `cas-vpn admin-vpn resume {name}` or re-issue it"
        );
        if let Err(e) = self.store.set_admin_suspended(credential_id, Some(now)).await {
            tracing::error!(credential = %name, error = %e, "cannot record the suspension");
        }
        let detail =
            format!("{} takeovers from different addresses within {} s", takeover::LIMIT, takeover::WINDOW_SECS);
        let _ = self.store.audit(&crate::domain::Actor::Vpn, "admin.suspended", name.as_str(), &detail, now).await;
    }

    fn real_addr(&self, env: &Env, name: &Name) -> String {
        let ip = env.get("untrusted_ip").unwrap_or("");
        if ip.starts_with("127.")
            && let Some(real) = self.relays.real_addr(name)
        {
            return real.to_string();
        }
        match env.get("untrusted_port") {
            Some(port) => format!("{ip}:{port}"),
            None => ip.to_owned(),
        }
    }

    /// Answers a terminal CONNECT whose lookups are done (see `Decided`).
    async fn connect_decided(&mut self, d: Decided) {
        let Decided { cid, kid, env, decision, asked, kills_then, generation } = d;
        self.in_flight = self.in_flight.saturating_sub(1);
        let killed_since = match &decision {
            Decision::Allow { name, .. } => self.killed.get(name).is_some_and(|k| *k > kills_then),
            Decision::Deny(_) => false,
        };
        if self.in_flight == 0 {
            self.killed.clear();
        }
        if generation != self.generation {
            // Its client went with the process that asked; the CID may be another client's in the new one.
            return;
        }
        let Some(mgmt) = self.mgmt() else { return };
        // The answer is queued for openvpn here, in order (a kill queued after it comes after it), and its
        // acknowledgement awaited beside the loop (`answer_acked`): the next answers, and kills, do not wait for it.
        let mut allowed = false;
        let queued = match decision {
            // A drain that began while the store was asked wins.
            _ if self.node.draining() => mgmt.client_deny_queued(cid, kid, crate::cluster::DRAINING).await,
            // Killed (revoked?) while the store was asked: the answer may predate the revocation. Asked again at
            // the client's next attempt, which a revocation then refuses.
            Decision::Allow { .. } if killed_since => {
                mgmt.client_deny_queued(cid, kid, super::auth::PASSING_FAULT).await
            }
            Decision::Allow { credential_id, name, tunnel_ip, netmask } => {
                let real_addr = self.real_addr(&env, &name);
                self.sessions.insert(cid, Session { credential_id, name: name.clone(), tunnel_ip, real_addr });
                tracing::info!(instance = %self.spec.name, credential = %name, %tunnel_ip, "client allowed");
                allowed = true;
                mgmt.client_auth_queued(cid, kid, &[format!("ifconfig-push {tunnel_ip} {netmask}")]).await
            }
            Decision::Deny(reason) => {
                tracing::warn!(instance = %self.spec.name, cn = ?common_name(&env), reason, "client denied");
                mgmt.client_deny_queued(cid, kid, reason).await
            }
        };
        let acked = self.acked_tx.clone();
        tokio::spawn(async move {
            let result = match queued {
                Ok(answer) => answer.success().await.map(drop),
                Err(e) => Err(e),
            };
            let _ = acked.send(Acked { cid, generation, asked, allowed, result });
        });
    }

    /// openvpn acknowledged (or refused) a CONNECT's answer.
    fn answer_acked(&mut self, a: Acked) {
        self.answers.observe(a.asked.elapsed());
        let Err(e) = a.result else { return };
        tracing::warn!(instance = %self.spec.name, error = %e, "management command failed");
        if a.allowed && a.generation == self.generation && matches!(e, MgmtError::Refused { .. } | MgmtError::Closed) {
            // Gone while the store was asked (openvpn refuses the answer): nothing to remember. An answer not
            // acknowledged in time may still be carried out: the session stays known, so that its ESTABLISHED is
            // recorded, or its DISCONNECT forgets it.
            self.sessions.remove(&a.cid);
        }
    }

    /// The store's answer to a CONNECT or REAUTH on the instance `role`.
    async fn authorize(store: &Store, role: &crate::app::instances::InstanceRole, env: &Env) -> Decision {
        let (Some(cn), Some(serial)) = (common_name(env), env.get("tls_serial_hex_0")) else {
            return Decision::Deny("no client certificate");
        };
        let Ok(name) = cn.parse::<Name>() else { return Decision::Deny("unknown credential") };
        let Some(serial) = normalise_serial(serial) else { return Decision::Deny("unknown certificate") };
        // Store errors deny: never let a client in on a guess. A store that does not answer within the deadline
        // is a passing fault too (openvpn would otherwise wait for the answer until its hand-window ends).
        let lookups = async {
            let cred = store.credential_by_name(&name).await?;
            Ok::<_, crate::db::DbError>((cred, store.certificate_by_serial(&serial).await?))
        };
        let (cred, cert) = match tokio::time::timeout(super::front::STORE_DEADLINE, lookups).await {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "store unavailable; denying for now");
                return Decision::Deny(super::auth::PASSING_FAULT);
            }
            Err(_) => {
                tracing::error!("store did not answer in time; denying for now");
                return Decision::Deny(super::auth::PASSING_FAULT);
            }
        };
        let claim = Claim { common_name: cn.to_owned(), serial_hex: serial };
        decide(role, &claim, cred.as_ref(), cert.as_ref())
    }

    /// Sends every session of this instance on to the client's next `remote` (a drain of the node).
    async fn drain(&mut self) -> usize {
        if self.spec.role.kind != Kind::Terminal {
            // Admins are people at a keyboard: a drain moves terminals only.
            return 0;
        }
        let cids: Vec<u64> = self.sessions.keys().copied().collect();
        self.end_sessions(cids, true).await
    }

    /// Ends every session of `name` here. `relays_cut`: this is a terminal instance and the front cuts the
    /// terminal's relays right after, so its sessions carry nothing any more; openvpn is still told, but its answer is not waited for (an
    /// openvpn busy with a fleet's handshakes gives it seconds later, and a kill of an already gone client fails).
    async fn kill_sessions_of(&mut self, name: &Name, relays_cut: bool) -> usize {
        let cids: Vec<u64> = self.sessions.iter().filter(|(_, s)| &s.name == name).map(|(c, _)| *c).collect();
        if relays_cut { self.end_cut_sessions(cids).await } else { self.end_sessions(cids, false).await }
    }

    /// Forgets the sessions `cids`, whose relays were cut, and queues their kills at openvpn, logging its answers
    /// apart; returns how many.
    async fn end_cut_sessions(&mut self, cids: Vec<u64>) -> usize {
        let mut answers = Vec::with_capacity(cids.len());
        if let Some(mgmt) = self.mgmt() {
            for &cid in &cids {
                match mgmt.client_kill_queued(cid).await {
                    Ok(answer) => answers.push((cid, answer)),
                    Err(e) => tracing::debug!(instance = %self.spec.name, cid, error = %e, "client-kill not sent"),
                }
            }
        }
        for &cid in &cids {
            self.forget(cid).await;
        }
        let instance = self.spec.name.clone();
        tokio::spawn(async move {
            for (cid, answer) in answers {
                // Refused is the usual answer: openvpn saw the cut connection close and dropped the client first.
                if let Err(e) = answer.success().await {
                    tracing::debug!(%instance, cid, error = %e, "client-kill after the relay's cut");
                }
            }
        });
        cids.len()
    }

    /// Ends the sessions `cids` (`to_next_remote`: with openvpn's `RESTART,[N]`, so the client tries its next
    /// `remote`) and forgets them; returns how many openvpn confirmed.
    async fn end_sessions(&mut self, cids: Vec<u64>, to_next_remote: bool) -> usize {
        let Some(mgmt) = self.mgmt() else { return 0 };
        let mut ended = 0;
        for cid in cids {
            let done =
                if to_next_remote { mgmt.client_kill_to_next_remote(cid).await } else { mgmt.client_kill(cid).await };
            match done {
                Ok(()) => ended += 1,
                Err(e) => tracing::warn!(instance = %self.spec.name, error = %e, "client-kill failed"),
            }
            self.forget(cid).await;
        }
        ended
    }
}

/// The client certificate's common name: `common_name`, or under [`TERMINAL_ENV_FILTER`] (which passes no
/// `common_name`) `X509_0_CN`, the same name read from the same certificate (depth 0 is the client's own).
fn common_name(env: &Env) -> Option<&str> {
    env.get("common_name").or_else(|| env.get("X509_0_CN"))
}

/// An instance is busy while openvpn asked about a client within this time.
const QUIET_FOR: Duration = Duration::from_secs(5);
/// Byte-counter reads put off in a row, at most (a busy instance's counters are still read every minute).
const MAX_STATS_PUT_OFF: u32 = 3;

/// Whether this tick reads the byte counters. `status 3` of 200 sessions is about 30 KiB, which openvpn writes
/// 1 KiB per turn of its event loop, reading no command meanwhile: read while a fleet comes back, it held the
/// CONNECT answers and a revocation's kill for 30 turns of a busy server. Counters are for the operator's
/// eyes; a minute late costs nothing.
fn stats_due(busy: bool, put_off: u32) -> bool {
    !busy || put_off >= MAX_STATS_PUT_OFF
}

async fn wait_child(child: &mut Option<Child>) -> std::io::Result<std::process::ExitStatus> {
    match child {
        Some(c) => c.wait().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<TokioInstant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

async fn next_event(mgmt: &mut Option<(Mgmt, mpsc::UnboundedReceiver<ClientEvent>)>) -> Option<ClientEvent> {
    match mgmt {
        Some((_, rx)) => rx.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::OpenvpnLine;

    fn env_of(lines: &[&str]) -> super::Env {
        let mut p = super::super::mgmt::proto::Parser::default();
        assert_eq!(p.feed(">CLIENT:CONNECT,1,0"), None);
        for l in lines {
            assert_eq!(p.feed(&format!(">CLIENT:ENV,{l}")), None);
        }
        match p.feed(">CLIENT:ENV,END") {
            Some(super::super::mgmt::proto::Message::Client(super::ClientEvent::Connect { env, .. })) => env,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn byte_counters_wait_for_a_quiet_moment_but_never_more_than_a_minute() {
        use super::{MAX_STATS_PUT_OFF, STATS_EVERY, stats_due};
        assert!(stats_due(false, 0));
        assert!(!stats_due(true, 0));
        assert!(!stats_due(true, MAX_STATS_PUT_OFF - 1));
        assert!(stats_due(true, MAX_STATS_PUT_OFF));
        assert!(STATS_EVERY * (MAX_STATS_PUT_OFF + 1) <= std::time::Duration::from_secs(60));
    }

    /// What openvpn 2.6 sends under `env-filter 2` (no `common_name`, no `untrusted_port`) still names the client,
    /// from its own certificate; a full environment's `common_name` is read first.
    #[test]
    fn the_common_name_is_read_from_a_filtered_environment_too() {
        let filtered = env_of(&[
            "IV_VER=2.6.3",
            "untrusted_ip=127.0.0.1",
            "tls_serial_hex_0=3a:0f",
            "tls_serial_0=14863",
            "X509_0_CN=atm-7",
            "X509_1_CN=cas-vpn terminal CA",
        ]);
        assert_eq!(super::common_name(&filtered), Some("atm-7"));
        let full = env_of(&["X509_0_CN=atm-7", "common_name=atm-7"]);
        assert_eq!(super::common_name(&full), Some("atm-7"));
        assert_eq!(super::common_name(&env_of(&["X509_1_CN=cas-vpn terminal CA"])), None, "a CA's name is no client's");
    }

    #[test]
    fn openvpn_lines_keep_their_level_and_management_chatter_is_quiet() {
        let of = OpenvpnLine::of;
        assert_eq!(
            of("2026-12-02 14:00:00 ERROR: Cannot open TUN/TAP dev /dev/net/tun: Permission denied"),
            OpenvpnLine::Error
        );
        assert_eq!(of("Options error: --crl-verify fails with '/x': Permission denied (errno=13)"), OpenvpnLine::Error);
        assert_eq!(of("2026-12-02 14:00:00 WARNING: file '/x' is group or others accessible"), OpenvpnLine::Warning);
        assert_eq!(of("2026-12-02 14:00:00 MANAGEMENT: CMD 'status 3'"), OpenvpnLine::Chatter);
        assert_eq!(of("2026-12-02 14:00:00 Initialization Sequence Completed"), OpenvpnLine::Info);
    }
}
