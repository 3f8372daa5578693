//! The firewall part of `serve net` (root): installs the plan at start and keeps it in force.
//!
//! ```text
//!  start → ensure
//!  select! ─┬─ stop → install the plan with the window closed (a stopped net never leaves 7741 open), exit
//!           ├─ run/net.sock `reload` (the CLI after pairing open/close, admin issue, revoke) → ensure → answer
//!           ├─ the open window's end → ensure
//!           ├─ every 0.5 s: config files changed (mtime, size) → ensure
//!           └─ every drift_check (30 s): ensure, logging any drift found (rules edited by hand are repaired)
//!  ensure = read config + store → plan → render → compare with what is installed → install when different
//! ```
//! A restart during a window reads the window from the store, so it stays open until its end and no longer.
//! While `<root>/run/firewall.hold` exists (an unconfirmed `firewall apply --confirm` or its rollback) nothing is
//! installed automatically: the operator's manual step wins until `firewall apply` or `firewall confirm`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot, watch};

use super::engine::{self, Drift, Script};
use super::{FirewallError, Window};
use crate::app::accounts::Accounts;
use crate::app::{AppError, Ctx};
use crate::config::Config;
use crate::control::net::{NetRequest, NetResponse, socket_path};
use crate::control::server;

/// How often the config files are looked at (so a config change is in force within a second).
const CONFIG_POLL: Duration = Duration::from_millis(500);
/// Longest request line read from the socket.
const MAX_LINE: u64 = 1024;

/// `<root>/run/firewall.hold`: automatic installs pause while it exists.
pub fn hold_path(root: &Path) -> PathBuf {
    root.join("run").join("firewall.hold")
}

/// Who may ask `reload`: root, this service's own uid, and the admin UI's user.
pub fn allowed(uid: u32, own_uid: u32, accounts: Option<&Accounts>) -> bool {
    uid == 0 || uid == own_uid || accounts.is_some_and(|a| a.admin.uid == uid)
}

/// What ensure did.
struct Ensured {
    plan: String,
    changed: bool,
    window_end: Option<i64>,
}

struct Keeper {
    ctx: Arc<Ctx>,
    root: PathBuf,
}

impl Keeper {
    /// Computes the plan from a fresh read of the configuration and the store and installs it when what is
    /// installed differs. `closed`: plan as if no window were open (shutdown).
    async fn ensure(&self, why: &str, closed: bool) -> Result<Ensured, FirewallError> {
        let cfg = Config::load(&self.root)?;
        let now = crate::app::now();
        let mut inputs = super::inputs(&cfg, &self.ctx, now).await?;
        if closed {
            inputs.window = Window::Closed;
        }
        let plan = super::plan(&inputs);
        let script = Script::render(&plan, cfg.firewall.backend);
        let hash = script.hash();
        let window_end = plan.changes_at();
        if !cfg.firewall.manage {
            return Ok(Ensured { plan: hash, changed: false, window_end });
        }
        if hold_path(&self.root).exists() {
            tracing::warn!(why, "firewall: held by an unconfirmed `firewall apply --confirm`; nothing installed");
            return Ok(Ensured { plan: hash, changed: false, window_end });
        }
        let drift = engine::drift(&self.root, &script)?;
        if drift.in_force() {
            return Ok(Ensured { plan: hash, changed: false, window_end });
        }
        match &drift {
            Drift::Edited { .. } | Drift::Unrecorded => {
                tracing::warn!(why, drift = %drift.summary(), "firewall drift found; repairing")
            }
            _ => {}
        }
        for w in &plan.warnings {
            tracing::warn!(warning = %w, "firewall plan");
        }
        let previous = engine::load_state(&self.root)?;
        engine::install(&self.root, &script, previous.as_ref(), now)?;
        let window = match &plan.window {
            Window::Open { until, .. } => format!("open until {}", crate::app::rfc3339(*until)),
            Window::Closed => "closed".into(),
        };
        tracing::info!(why, plan = %hash, %window, doors = plan.doors.len(), "firewall installed");
        Ok(Ensured { plan: hash, changed: true, window_end })
    }
}

/// Runs until `stop`; an error only when the rules cannot be installed at start (a refusal to start).
pub async fn run(ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>) -> Result<(), AppError> {
    let root = ctx.cfg.root.clone();
    let keeper = Keeper { ctx, root: root.clone() };
    let fail = |e: FirewallError| AppError::Other(e.to_string());
    let mut window_end = keeper.ensure("start", false).await.map_err(fail)?.window_end;

    let accounts = crate::app::accounts::lookup(&crate::app::accounts::UserMode::from_env()?)?;
    let (reload_tx, mut reload_rx) = mpsc::channel::<oneshot::Sender<NetResponse>>(16);
    let socket = tokio::spawn(serve_socket(root.clone(), accounts, reload_tx));

    let mut drift_every = tokio::time::interval(keeper.ctx.cfg.firewall.drift_check.0);
    drift_every.reset();
    let mut config_poll = tokio::time::interval(CONFIG_POLL);
    let mut seen = config_stamp(&root);
    loop {
        let until_end = window_end.map(|end| {
            let secs = end.saturating_sub(crate::app::now()).max(0);
            Duration::from_secs(u64::try_from(secs).unwrap_or(0))
        });
        let outcome = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            Some(reply) = reload_rx.recv() => {
                let r = keeper.ensure("reload", false).await;
                let answer = match &r {
                    Ok(e) => NetResponse::Reloaded { plan: e.plan.clone(), changed: e.changed },
                    Err(e) => NetResponse::Error { message: e.to_string() },
                };
                let _ = reply.send(answer);
                r
            }
            _ = async { tokio::time::sleep(until_end.expect("guarded")).await }, if until_end.is_some() => {
                // The window's end is a whole second: wait for the clock to be past it before re-planning.
                while window_end.is_some_and(|end| crate::app::now() < end) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                keeper.ensure("pairing window ended", false).await
            }
            _ = config_poll.tick() => {
                let now = config_stamp(&root);
                if now == seen {
                    continue;
                }
                seen = now;
                keeper.ensure("configuration changed", false).await
            }
            _ = drift_every.tick() => keeper.ensure("periodic check", false).await,
        };
        match outcome {
            Ok(e) => window_end = e.window_end,
            // Kept running: the rules in force stay, and the next event or check tries again. A window end that
            // has passed is forgotten so that its timer does not fire again at once; the periodic check retries.
            Err(e) => {
                tracing::error!(error = %e, "firewall: cannot install the plan");
                window_end = window_end.filter(|end| *end > crate::app::now());
            }
        }
    }
    socket.abort();
    if let Err(e) = keeper.ensure("shutdown: the pairing door closes with serve net", true).await {
        tracing::error!(error = %e, "firewall: cannot close the pairing door at shutdown");
    }
    Ok(())
}

/// (mtime, size) of each config file the plan reads, to notice edits cheaply.
fn config_stamp(root: &Path) -> Vec<Option<(SystemTime, u64)>> {
    ["network", "vpn", "firewall", "gate.properties"]
        .iter()
        .map(|f| std::fs::metadata(root.join("config").join(f)).ok().and_then(|m| Some((m.modified().ok()?, m.len()))))
        .collect()
}

/// Serves `run/net.sock` until aborted: `reload` from an allowed uid waits for the plan to be in force.
async fn serve_socket(root: PathBuf, accounts: Option<Accounts>, reload: mpsc::Sender<oneshot::Sender<NetResponse>>) {
    let path = socket_path(&root);
    let listener = match server::bind(&path, accounts.as_ref().map(|a| a.gid)) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "net control socket: cannot listen");
            return;
        }
    };
    let own_uid = nix::unistd::geteuid().as_raw();
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let (reload, accounts) = (reload.clone(), accounts.clone());
        tokio::spawn(async move {
            let Some((uid, req, mut write)) = server::read_request::<NetRequest>(stream, MAX_LINE).await else {
                return;
            };
            let resp = match req {
                Ok(_) if !allowed(uid, own_uid, accounts.as_ref()) => {
                    tracing::warn!(uid, "net control socket: request refused");
                    NetResponse::Error { message: format!("uid {uid} may not do this") }
                }
                Ok(NetRequest::Reload) => {
                    let (tx, rx) = oneshot::channel();
                    match reload.send(tx).await {
                        Ok(()) => rx.await.unwrap_or(NetResponse::Error { message: "shutting down".into() }),
                        Err(_) => NetResponse::Error { message: "shutting down".into() },
                    }
                }
                Err(message) => NetResponse::Error { message },
            };
            server::write_response(&mut write, &resp).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_root_own_uid_and_admin_may_reload() {
        let a = Accounts::example();
        for (uid, may) in [(0, true), (500, true), (903, true), (901, false), (902, false), (77, false)] {
            assert_eq!(allowed(uid, 500, Some(&a)), may, "reload by {uid}");
        }
    }
}
