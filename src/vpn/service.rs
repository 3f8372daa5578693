//! `serve vpn`: orphan cleanup, the instances, the terminal front and the control socket, joined in one
//! `select!` with graceful shutdown. The service interface and the isolation rules belong to `serve net`, the
//! CRLs to `serve signer`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use super::front::Front;
use super::{Registry, Supervisor};
use crate::app::{AppError, Ctx, instances};
use crate::cluster::{self, Local, follow};
use crate::db::{Event, EventKind};
use crate::domain::{Kind, Name};

/// How long a re-plan asked for by another node's event may take before the follower moves on.
const RELOAD_WAIT: Duration = Duration::from_secs(10);

/// Re-plan from the store this often even without a reload request (a missed request heals itself).
const REPLAN_EVERY: Duration = Duration::from_secs(30);

/// `node`: `serve vpn --node NAME` (see `cluster::node_name`).
pub async fn run_vpn(ctx: Arc<Ctx>, mut shutdown: watch::Receiver<bool>, node: Option<Name>) -> Result<(), AppError> {
    let vpn = ctx.vpn("serve vpn")?.clone();
    if vpn.proto != crate::config::Proto::Tcp {
        // The terminal front relays TCP only; refusing is better than terminals that silently never connect.
        return Err(AppError::Other(format!(
            "{}: proto={} is not supported by the terminal front port yet; use proto=tcp",
            ctx.cfg.root.join("config/vpn").display(),
            vpn.proto
        )));
    }
    let orphans = instances::kill_orphans(&ctx.cfg.root);
    if orphans > 0 {
        tracing::warn!(orphans, "removed openvpn processes left by a previous cas-vpn");
    }
    // This node in the store: refused when its name is held by a live process, or when a second node would
    // share a SQLite store. Only then are its own (and only its own) old sessions cleared.
    let name = cluster::node_name(&ctx.cfg, node.as_ref());
    let address = cluster::public_address(&ctx.cfg).map(|h| h.to_string()).unwrap_or_default();
    let follow::Registered { local, run_id, after_event } =
        follow::register(&ctx.store, name, &follow::holder_id(&ctx.cfg.root), &address, crate::app::now())
            .await
            .map_err(|e| AppError::Other(e.to_string()))?;
    tracing::info!(node = %local.name, %address, draining = local.draining(), store = ctx.store.backend(), "node registered");
    ctx.store.clear_sessions(local.name.as_str(), None).await?;
    crate::app::pending::recover_pending(&ctx).await?;

    let relays = super::relays::Relays::default();
    // Owned by this loop alone: kills and status go through its registry, never through `apply`.
    let homes = super::front::Homes::default();
    let mut supervisor = Supervisor::new(ctx.store.clone(), local.clone(), relays.clone(), homes.clone());
    let start = std::time::Instant::now();
    let accounts = crate::app::accounts::lookup(&crate::app::accounts::UserMode::from_env()?)?;
    // openvpn runs as its own user with CAP_NET_ADMIN only, where that user exists and we may switch to it.
    let run_as = accounts
        .as_ref()
        .filter(|_| nix::unistd::geteuid().is_root())
        .map(|a| crate::sys::process::Creds { uid: a.vpn.uid, gid: a.gid });
    let run_as = match run_as {
        // Debian's udev makes /dev/net/tun 0666; a system without udev (a container) may leave it root-only,
        // and then an unprivileged openvpn could not open its tun device at all.
        Some(c) if !crate::sys::net::tun_usable_by(c.uid, c.gid) => {
            tracing::warn!(
                uid = c.uid,
                "OPENVPN RUNS AS ROOT: /dev/net/tun cannot be opened by openvpn's user (make it 0666, as udev does)"
            );
            None
        }
        Some(c) => Some(c),
        None => {
            tracing::warn!("openvpn runs as this process's user (no service users, or not root)");
            None
        }
    };
    supervisor.apply(instances::render_all(&ctx, run_as).await?).await;
    tracing::info!(elapsed_ms = start.elapsed().as_millis() as u64, "VPN instances started");

    let ports = Arc::new(std::sync::RwLock::new(vpn.terminal_ports.iter().collect::<Vec<u16>>()));
    let front = Arc::new(Front {
        key: Arc::new(ctx.pki.load_tls_crypt_v2(Kind::Terminal)?),
        store: ctx.store.clone(),
        instance_ports: ports.clone(),
        instance_ip: vpn.instance_listen_ip,
        relays,
        homes,
    });
    front.preload().await;
    let task = Some(start_front(&front, vpn.terminal_front_port).await?);
    let mut vpn_on = VpnOn { front, port: vpn.terminal_front_port, task };

    let (reload_tx, mut reload_rx) = mpsc::channel::<oneshot::Sender<()>>(8);
    let heartbeat = tokio::spawn(follow::heartbeat(ctx.store.clone(), local.clone(), run_id, shutdown.clone()));
    let applier = Applier {
        registry: supervisor.registry(),
        node: local.clone(),
        reload: reload_tx.clone(),
        root: ctx.cfg.root.clone(),
    };
    let follower =
        tokio::spawn(follow::follow(ctx.store.clone(), local.clone(), after_event, applier, shutdown.clone()));

    let control = tokio::spawn(super::control::serve(
        ctx.cfg.root.clone(),
        ctx.store.clone(),
        accounts,
        supervisor.registry(),
        reload_tx,
    ));

    let mut replan = tokio::time::interval(REPLAN_EVERY);
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| AppError::Other(format!("SIGHUP handler: {e}")))?;
    tracing::info!(port = vpn.terminal_front_port, "VPN serving");
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            Some(done) = reload_rx.recv() => {
                replan_now(&ctx, &mut supervisor, &ports, run_as, &mut vpn_on).await;
                let _ = done.send(());
            }
            _ = replan.tick() => replan_now(&ctx, &mut supervisor, &ports, run_as, &mut vpn_on).await,
            _ = hup.recv() => {
                tracing::info!("SIGHUP: re-reading the configuration");
                replan_now(&ctx, &mut supervisor, &ports, run_as, &mut vpn_on).await;
            }
        }
    }
    tracing::info!("stopping VPN instances");
    if let Some(t) = vpn_on.task.take() {
        t.abort();
    }
    control.abort();
    follower.abort();
    heartbeat.abort();
    supervisor.shutdown().await;
    let _ = std::fs::remove_file(crate::control::socket_path(&ctx.cfg.root));
    Ok(())
}

/// What this node does with the store's events (`cluster::follow`): the same kills as the control socket's, and
/// drains.
struct Applier {
    registry: Registry,
    node: Arc<Local>,
    /// This service's own re-plan (as the control socket's `Reload`).
    reload: mpsc::Sender<oneshot::Sender<()>>,
    /// For poking this node's `serve net`.
    root: std::path::PathBuf,
}

impl follow::Applier for Applier {
    async fn apply(&mut self, event: &Event) -> usize {
        match event.kind {
            EventKind::Kill => match event.subject.parse::<Name>() {
                Ok(name) => self.registry.kill(&name).await,
                Err(_) => 0,
            },
            EventKind::Drain => {
                self.node.set_draining(true);
                tracing::info!(node = %self.node.name, "node draining: terminals go to the other nodes");
                self.registry.drain().await
            }
            EventKind::Resume => {
                self.node.set_draining(false);
                tracing::info!(node = %self.node.name, "node serving again");
                0
            }
            EventKind::Reload => {
                // Another node changed what instances and firewall derive from (an admin credential, the
                // pairing window): re-plan both here, as that node did.
                let (done, wait) = oneshot::channel();
                if self.reload.send(done).await.is_ok() {
                    let _ = tokio::time::timeout(RELOAD_WAIT, wait).await;
                }
                if let Err(e) = crate::control::net::reload(&self.root).await {
                    tracing::warn!(error = %e, "cannot reach serve net to re-plan the firewall");
                }
                0
            }
        }
    }
}

/// The terminal front port while the VPN runs: `task` is `None` while the configuration says Scenario B.
struct VpnOn {
    front: Arc<Front>,
    /// The port it was started on (a change of `terminal_front_port` needs a restart, as before).
    port: u16,
    task: Option<tokio::task::JoinHandle<()>>,
}

async fn start_front(front: &Arc<Front>, port: u16) -> Result<tokio::task::JoinHandle<()>, AppError> {
    let front_addr = std::net::SocketAddr::from(([0, 0, 0, 0], port));
    let listener = tokio::net::TcpListener::bind(front_addr)
        .await
        .map_err(|e| AppError::Other(format!("terminal front port {front_addr}: {e}")))?;
    Ok(tokio::spawn(front.clone().run(listener)))
}

/// Re-reads the config files and the store, and makes the running instances match: only instances whose
/// rendered config changed are restarted. A config that no longer parses is logged and the running set is kept.
/// A live switch to Scenario B (`batm.vpn-skip=true`) stops every instance and the front port, and a switch back
/// starts them again, each with one INFO line. (The front port number and the service interface are set at
/// start: changing those needs a restart.)
async fn replan_now(
    ctx: &Ctx,
    supervisor: &mut Supervisor,
    ports: &std::sync::RwLock<Vec<u16>>,
    run_as: Option<crate::sys::process::Creds>,
    vpn_on: &mut VpnOn,
) {
    let cfg = match crate::config::Config::load(&ctx.cfg.root) {
        Ok(cfg) => cfg,
        Err(e) => {
            tracing::error!(error = %e, "configuration does not load; keeping the running instances");
            return;
        }
    };
    if cfg.active_vpn().is_none() {
        if let Some(front) = vpn_on.task.take() {
            tracing::info!(
                why = cfg.scenario_reason(),
                "Scenario B now: stopping every VPN instance and the terminal front port"
            );
            front.abort();
            supervisor.apply(Vec::new()).await;
        }
        return;
    }
    if vpn_on.task.is_none() {
        match start_front(&vpn_on.front, vpn_on.port).await {
            Ok(t) => {
                tracing::info!(
                    port = vpn_on.port,
                    "Scenario A now: starting the VPN instances and the terminal front port"
                );
                vpn_on.task = Some(t);
            }
            Err(e) => {
                // Retried at the next re-plan; no instance starts without its front port.
                tracing::error!(error = %e, "Scenario A now, but the terminal front port cannot be opened");
                return;
            }
        }
    }
    let fresh = ctx.with_config(cfg);
    match instances::render_all(&fresh, run_as).await {
        Ok(wanted) => {
            if let Ok(v) = fresh.vpn("the VPN")
                && let Ok(mut p) = ports.write()
            {
                *p = v.terminal_ports.iter().collect();
            }
            supervisor.apply(wanted).await
        }
        Err(e) => tracing::error!(error = %e, "cannot plan instances"),
    }
}
