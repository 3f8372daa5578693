//! `serve all`: one command that runs every service as its own child process, each under its own user where the
//! service users exist (gate as `batmgate`, master as `batmmaster`, the web UI as `batmadmin`; net, signer and
//! vpn as root), restarts a
//! child that dies (the backoff of `domain::lifecycle`), and stops them all together.
//!
//! - Order: `net` first (the service addresses must exist before anything binds them), then `signer` (answering
//!   a ping), then vpn, gate, master and admin (the web UI).
//! - A child that exits with an error within its first seconds, before ever having run, is a configuration error,
//!   not a crash: everything stops and `serve all` exits 1 (its own message is already on stderr). A child killed
//!   by a signal, or one that fails later, is restarted.
//! - Children get SIGKILL as their parent-death signal (set after the credential change), so a kill -9 of the
//!   launcher takes every service down with it; the vpn service's openvpn processes follow it the same way.
//! - `CAS_VPN_CA_PASSPHRASE` reaches the signer only; the database URL travels in the environment (never on a
//!   command line that every user can read in /proc).

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::{Service, service_accounts, stop_on_signals};
use crate::app::AppError;
use crate::config::Config;
use crate::control::signer::{self, SignerRequest, SignerResponse};
use crate::domain::Name;
use crate::domain::lifecycle::{Action, Event, Machine, State};
use crate::sys::process::{Creds, signal_group, signal_process, spawn_service};

/// How long a first start may take before an early error exit counts as a crash rather than a refusal to start.
const STARTUP: Duration = Duration::from_secs(5);
/// How long to wait for net's addresses and the signer's socket.
const READY_WITHIN: Duration = Duration::from_secs(15);

#[derive(Debug, Clone)]
struct Child {
    service: Service,
    creds: Option<Creds>,
}

pub async fn run(root: &Path, database_url: Option<&str>, node: Option<&Name>) -> Result<(), AppError> {
    let cfg = Config::load(root)?;
    let accounts = service_accounts()?;
    let creds = |pick: fn(&crate::app::accounts::Accounts) -> &crate::sys::users::Account| {
        accounts.as_ref().ok().map(|a| Creds { uid: pick(a).uid, gid: a.gid })
    };
    match &accounts {
        Ok(a) => {
            tracing::info!(group = %a.group, gate = %a.gate.name, master = %a.master.name, admin = %a.admin.name, "services run under their own users")
        }
        Err(why) => tracing::warn!(
            uid = nix::unistd::geteuid().as_raw(),
            why = %why,
            "ALL SERVICES RUN UNDER ONE UID: no privilege separation between the gate, master and the CA keys \
             (development and containers only)"
        ),
    }
    let exe = std::env::current_exe().map_err(|e| AppError::Other(format!("cannot find this executable: {e}")))?;
    let env = Env { exe, root: root.to_owned(), database_url: database_url.map(str::to_owned), node: node.cloned() };

    let stop = stop_on_signals();
    let (fatal_tx, mut fatal_rx) = mpsc::channel::<String>(8);
    let (stop_children_tx, stop_children) = watch::channel(false);
    // A SIGHUP of `serve all` goes on to the services that re-read their configuration on it (vpn, master).
    let (hup_children_tx, hup_children) = watch::channel(0u64);
    let mut tasks = Vec::new();
    let mut start = |c: Child| {
        tasks.push(tokio::spawn(supervise(
            c,
            env.clone(),
            stop_children.clone(),
            hup_children.clone(),
            fatal_tx.clone(),
        )));
    };

    let scenario_a = cfg.active_vpn().is_some();
    let net = &cfg.network;
    let addrs = [net.master_bind_ip, net.gate_bind_ip, net.admin_bind_ip];
    start(Child { service: Service::Net, creds: None });
    let ready = async {
        if scenario_a {
            wait_for("the service addresses", || async {
                addrs.iter().all(|ip| std::net::UdpSocket::bind((*ip, 0)).is_ok())
            })
            .await?;
        }
        Ok::<(), String>(())
    };
    let mut failed = until_ready(ready, &mut fatal_rx, stop.clone()).await;
    if failed.is_none() {
        start(Child { service: Service::Signer, creds: None });
        let ready = wait_for("the signer", || async {
            matches!(signer::call(root, &SignerRequest::Ping).await, Ok(SignerResponse::Pong))
        });
        failed = until_ready(ready, &mut fatal_rx, stop.clone()).await;
    }
    if failed.is_none() {
        if scenario_a {
            start(Child { service: Service::Vpn, creds: None });
        } else {
            tracing::warn!("Scenario B: no VPN instances run");
        }
        start(Child { service: Service::Gate, creds: creds(|a| &a.gate) });
        start(Child { service: Service::Master, creds: creds(|a| &a.master) });
        // The web UI needs its certificate (made by `init`) and its address (net's, or the operator's VPN's under
        // Scenario B); without either it is left out, loudly, rather than stopping everything else.
        let pki = crate::pkifiles::PkiDir::new(root, None);
        let web_addr = std::net::UdpSocket::bind((net.admin_bind_ip, 0)).is_ok();
        if !pki.web_cert_path().is_file() {
            tracing::warn!("the web UI does not start: it has no certificate yet (run `cas-vpn init`)");
        } else if !web_addr {
            tracing::warn!(admin_bind_ip = %net.admin_bind_ip, "the web UI does not start: admin_bind_ip is not an address of this host");
        } else {
            start(Child { service: Service::Admin, creds: creds(|a| &a.admin) });
        }
        // A live switch to Scenario A starts `serve vpn` (which then follows further switches by itself: under
        // Scenario B it stops its instances and front port but stays up).
        let mut vpn_started = scenario_a;
        let mut recheck = tokio::time::interval(SCENARIO_RECHECK);
        // SIGHUP looks at once (and no longer ends `serve all`, as the default action would).
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut stop = stop.clone();
        loop {
            let on_hup = tokio::select! {
                _ = stop.changed() => break,
                Some(why) = fatal_rx.recv() => {
                    failed = Some(why);
                    break;
                }
                _ = recheck.tick() => false,
                _ = async {
                    match hup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                } => true,
            };
            if on_hup {
                hup_children_tx.send_modify(|n| *n += 1);
            }
            if !vpn_started {
                if on_hup {
                    tracing::info!("SIGHUP: re-reading the configuration");
                }
                if Config::load(root).is_ok_and(|c| c.active_vpn().is_some()) {
                    tracing::info!("Scenario A now: starting the VPN service");
                    start(Child { service: Service::Vpn, creds: None });
                    vpn_started = true;
                }
            }
        }
    }
    let _ = stop_children_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    match failed {
        Some(why) => Err(AppError::Other(why)),
        None => Ok(()),
    }
}

/// Waits for `ready`, a fatal child error or a shutdown request; `Some(reason)` when not ready.
async fn until_ready(
    ready: impl std::future::Future<Output = Result<(), String>>,
    fatal: &mut mpsc::Receiver<String>,
    mut stop: watch::Receiver<bool>,
) -> Option<String> {
    tokio::select! {
        r = ready => r.err(),
        Some(why) = fatal.recv() => Some(why),
        _ = stop.wait_for(|s| *s) => Some("stopped before every service was up".into()),
    }
}

/// Polls `check` until it holds, for at most `READY_WITHIN`.
async fn wait_for<F, Fut>(what: &str, check: F) -> Result<(), String>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + READY_WITHIN;
    while !check().await {
        if Instant::now() >= deadline {
            return Err(format!("{what} did not come up within {READY_WITHIN:?}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// How often a `serve all` started under Scenario B looks for a switch to Scenario A.
const SCENARIO_RECHECK: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
struct Env {
    exe: PathBuf,
    root: PathBuf,
    database_url: Option<String>,
    /// `serve all --node NAME`: passed on to `serve vpn`, the service that registers the node, and to `serve
    /// gate`, which publishes its gauges under it.
    node: Option<Name>,
}

impl Env {
    fn spawn(&self, c: &Child) -> std::io::Result<tokio::process::Child> {
        let mut args =
            vec!["--root".to_owned(), self.root.display().to_string(), "serve".into(), c.service.name().into()];
        if let (Some(node), Service::Vpn | Service::Gate) = (&self.node, c.service) {
            args.extend(["--node".to_owned(), node.to_string()]);
        }
        let mut set = Vec::new();
        if let Some(url) = &self.database_url {
            set.push(("CAS_VPN_DATABASE_URL", url.as_str()));
        }
        let remove: &[&str] = if c.service == Service::Signer { &[] } else { &["CAS_VPN_CA_PASSPHRASE"] };
        spawn_service(&self.exe, &args, c.creds, &set, remove)
    }
}

/// Runs one child under the lifecycle machine until `stop`.
async fn supervise(
    c: Child,
    env: Env,
    mut stop: watch::Receiver<bool>,
    mut hup: watch::Receiver<u64>,
    fatal: mpsc::Sender<String>,
) {
    let origin = Instant::now();
    let now = || origin.elapsed();
    let name = c.service.name();
    let mut m = Machine::default();
    let mut proc: Option<tokio::process::Child> = None;
    let mut wake: Option<Duration> = None;
    let mut ever_up = false;
    let mut stop_sent = false;
    let mut hup_open = true;
    let mut queue = m.handle(Event::Start, now());
    loop {
        while let Some(a) = (!queue.is_empty()).then(|| queue.remove(0)) {
            match a {
                Action::Spawn => match env.spawn(&c) {
                    Ok(child) => {
                        let pid = child.id().unwrap_or(0);
                        tracing::info!(service = name, pid, uid = ?c.creds.map(|c| c.uid), "service started");
                        proc = Some(child);
                        queue.extend(m.handle(Event::Spawned { pid }, now()));
                    }
                    Err(e) => {
                        tracing::error!(service = name, error = %e, "cannot start service");
                        queue.extend(m.handle(Event::SpawnFailed, now()));
                    }
                },
                Action::Terminate { pid } => signal_group(pid, Signal::SIGTERM),
                Action::Kill { pid } => signal_group(pid, Signal::SIGKILL),
                Action::WakeAt(t) => wake = Some(t),
            }
        }
        if m.is_finished() {
            return;
        }
        let sleep = wake.map(|t| tokio::time::sleep(t.saturating_sub(now())));
        tokio::select! {
            status = async { proc.as_mut().expect("guarded").wait().await }, if proc.is_some() => {
                proc = None;
                let ran = match m.state() { State::Running { since, .. } => now().saturating_sub(*since), _ => Duration::ZERO };
                let stopping = matches!(m.state(), State::Stopping { .. });
                match &status {
                    Ok(s) if stopping => tracing::info!(service = name, status = %s, "service stopped"),
                    Ok(s) => tracing::error!(service = name, status = %s, ran_ms = ran.as_millis() as u64, "service exited; restarting"),
                    Err(e) => tracing::error!(service = name, error = %e, "service wait failed"),
                }
                let refused_to_start = !stopping && !ever_up && ran < STARTUP
                    && status.as_ref().is_ok_and(|s| s.code().is_some_and(|code| code != 0));
                if refused_to_start {
                    let _ = fatal.send(format!("`serve {name}` refused to start (see its error above); stopping every service")).await;
                }
                ever_up |= ran >= STARTUP;
                queue.extend(m.handle(Event::Exited, now()));
            }
            _ = async { sleep.expect("guarded").await }, if sleep.is_some() => {
                wake = None;
                queue.extend(m.handle(Event::Tick, now()));
            }
            r = hup.changed(), if hup_open && matches!(c.service, Service::Vpn | Service::Master) => {
                match (r, proc.as_ref().and_then(tokio::process::Child::id)) {
                    (Err(_), _) => hup_open = false,
                    (Ok(()), Some(pid)) => signal_process(pid, Signal::SIGHUP),
                    (Ok(()), None) => {}
                }
            }
            r = stop.changed(), if !stop_sent => {
                if r.is_err() || *stop.borrow() {
                    stop_sent = true;
                    queue.extend(m.handle(Event::Stop, now()));
                }
            }
        }
    }
}
