//! `cas-vpn serve SERVICE`: one service per process (what a systemd unit runs), or `serve all`, the launcher that
//! runs each service as a child process under its own user (`launcher`).
//!
//! Every service takes a single-instance lock (`<root>/run/SERVICE.lock`) before it touches anything, so a second
//! `serve X` refuses at once and changes nothing; services run with umask 0007 so that the files they create
//! (SQLite's `-wal`/`-shm` among them) stay usable by the other services of group `batm`.

pub mod launcher;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::watch;

use crate::app::accounts::{self, UserMode};
use crate::app::{AppError, Ctx};
use crate::domain::{Actor, Name};
use crate::sys::lock::{self, InstanceLock, LockError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Service {
    All,
    Net,
    Signer,
    Vpn,
    Gate,
    Master,
    Admin,
}

impl Service {
    pub fn name(self) -> &'static str {
        match self {
            Service::All => "all",
            Service::Net => "net",
            Service::Signer => "signer",
            Service::Vpn => "vpn",
            Service::Gate => "gate",
            Service::Master => "master",
            Service::Admin => "admin",
        }
    }
}

/// Every service, for the lock files `init` makes.
pub const ALL: [Service; 7] =
    [Service::All, Service::Net, Service::Signer, Service::Vpn, Service::Gate, Service::Master, Service::Admin];

pub fn run_dir(root: &Path) -> PathBuf {
    root.join("run")
}

pub fn lock_path(root: &Path, what: Service) -> PathBuf {
    run_dir(root).join(format!("{}.lock", what.name()))
}

/// The pid of the running `serve SERVICE` of this root, from its lock file, checked against `/proc` (a pid a dead
/// service left behind, or one the system gave to another program since, is not it). Reads only: it never takes
/// the lock, so it cannot stop a service that is starting.
pub fn running(root: &Path, what: Service) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(lock_path(root, what)).ok()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let serves = args.windows(2).any(|w| w[0] == b"serve" && w[1] == what.name().as_bytes());
    serves.then_some(pid)
}

/// Takes the service's single-instance lock, creating `run/` first when we may (root).
pub fn take_lock(root: &Path, what: Service) -> Result<InstanceLock, AppError> {
    if !run_dir(root).is_dir() && nix::unistd::geteuid().is_root() {
        crate::sys::fs::ensure_dir(&run_dir(root), 0o755)?;
    }
    lock::try_lock(&lock_path(root, what)).map_err(|e| match e {
        LockError::Held { pid, .. } => AppError::Other(format!(
            "`cas-vpn serve {}` is already running (pid {pid}); nothing was changed",
            what.name()
        )),
        other => AppError::Other(format!("single-instance lock: {other}")),
    })
}

/// `cas-vpn serve WHAT`: lock first, then open the installation, then run until SIGTERM/SIGINT.
/// `node`: `serve … --node NAME`, this VPN node's name (see `cluster::node_name`).
pub async fn serve(root: &Path, database_url: Option<&str>, what: Service, node: Option<Name>) -> Result<(), AppError> {
    let _lock = take_lock(root, what)?;
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o007));
    if what == Service::All {
        return launcher::run(root, database_url, node.as_ref()).await;
    }
    let mut ctx = Ctx::open(root, database_url).await?;
    // What a service writes to the audit trail is its own doing, not the CLI's.
    ctx.actor = match what {
        Service::Net => Actor::Net,
        Service::Signer => Actor::Signer,
        Service::Vpn => Actor::Vpn,
        Service::Gate => Actor::Gate,
        Service::Master => Actor::Master,
        Service::Admin => Actor::Admin,
        Service::All => unreachable!("handled above"),
    };
    let ctx = Arc::new(ctx);
    let stop = stop_on_signals();
    match what {
        // One process, two halves: the service interface and the firewall (services never import each other).
        Service::Net => {
            tokio::try_join!(crate::net::run_net(ctx.clone(), stop.clone()), crate::firewall::service::run(ctx, stop))
                .map(drop)
        }
        Service::Signer => crate::signer::run_signer(ctx, stop).await,
        Service::Vpn => crate::vpn::service::run_vpn(ctx, stop, node).await,
        Service::Gate => crate::gate::run_gate(ctx, stop, node).await,
        Service::Master => crate::master::run_master(ctx, stop).await,
        Service::Admin => crate::web::run_admin(ctx, stop).await,
        Service::All => unreachable!("handled above"),
    }
}

/// A receiver that turns true on the first SIGTERM or SIGINT.
pub fn stop_on_signals() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutdown requested");
        let _ = tx.send(true);
        // Keep the sender alive so receivers see `true`, not a closed channel.
        std::future::pending::<()>().await;
    });
    rx
}

/// The service accounts to run children under, or `None` with the reason (said loudly by the launcher).
pub fn service_accounts() -> Result<Result<accounts::Accounts, String>, AppError> {
    let mode = UserMode::from_env()?;
    if mode == UserMode::Single {
        return Ok(Err(format!("{}=none", accounts::USERS_ENV)));
    }
    if !nix::unistd::geteuid().is_root() {
        return Ok(Err("not running as root".into()));
    }
    Ok(accounts::lookup(&mode)?.ok_or_else(|| "the service users do not exist (run `cas-vpn init` as root)".into()))
}
