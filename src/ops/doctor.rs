//! `cas-vpn doctor`: checks what an operator would check by hand before a terminal outage does it for them:
//! tools present, key and directory modes, CRLs and certificates far from expiry, no import left unfinished, the
//! running service healthy.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde::Serialize;

use super::{Ctx, OpsError, status};
use crate::daemon::Service;
use crate::domain::Kind;
use crate::pkifiles::ServerRole;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub check: String,
    pub level: Level,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
    /// True when no check failed (warnings allowed).
    pub healthy: bool,
}

fn mode(p: &Path) -> Option<u32> {
    std::fs::metadata(p).ok().map(|m| m.permissions().mode() & 0o777)
}

pub async fn doctor(ctx: &Ctx) -> Result<Report, OpsError> {
    let mut checks = Vec::new();
    let mut add = |check: &str, level, detail: String| checks.push(Check { check: check.into(), level, detail });

    match crate::sys::cmd::run("openvpn", ["--version"]) {
        Ok(v) | Err(crate::sys::cmd::CmdError::Failed { stderr: v, .. }) if v.contains("OpenVPN 2.") => {
            let first = v.lines().next().unwrap_or("").split_whitespace().take(2).collect::<Vec<_>>().join(" ");
            let old = first.contains("OpenVPN 2.4") || first.contains("OpenVPN 2.5");
            add("openvpn", if old { Level::Warn } else { Level::Ok }, first);
        }
        _ => add("openvpn", Level::Fail, "openvpn not found (apt-get install openvpn)".into()),
    }
    let nft = crate::sys::cmd::run("nft", ["--version"]).is_ok();
    add(
        "nft",
        if nft { Level::Ok } else { Level::Fail },
        if nft {
            "present".into()
        } else {
            "nft not found (apt-get install nftables): tunnel isolation rules cannot be applied".into()
        },
    );
    let tun = Path::new("/dev/net/tun").exists();
    let accounts = crate::app::accounts::lookup(&crate::app::accounts::UserMode::from_env()?)?;
    let vpn_user_locked_out = accounts.as_ref().is_some_and(|a| !crate::sys::net::tun_usable_by(a.vpn.uid, a.gid));
    let (level, detail) = match (tun, vpn_user_locked_out) {
        (false, _) => (Level::Fail, "missing: openvpn cannot create tun devices".to_owned()),
        (true, true) => (
            Level::Warn,
            "present, but not open to openvpn's user: openvpn runs as root (make it 0666, as udev does)".to_owned(),
        ),
        (true, false) => (Level::Ok, "present".to_owned()),
    };
    add("/dev/net/tun", level, detail);

    let pki = ctx.pki.dir();
    // With service users, the services' group may look into pki/ (each key file decides who reads it).
    let group = accounts.as_ref().map(|a| a.gid);
    let pki_gid = std::fs::metadata(pki).ok().map(|m| std::os::unix::fs::MetadataExt::gid(&m));
    match (mode(pki), group) {
        (Some(0o700), _) => add("pki directory", Level::Ok, format!("{} is 0700", pki.display())),
        (Some(0o750), Some(g)) if pki_gid == Some(g) => {
            add("pki directory", Level::Ok, format!("{} is 0750, group of the services", pki.display()))
        }
        (Some(m), _) => add(
            "pki directory",
            Level::Fail,
            format!("{} is {m:o}, must be 0700 (or 0750 with the services' group)", pki.display()),
        ),
        (None, _) => add("pki directory", Level::Fail, format!("{} missing (run init)", pki.display())),
    }
    let mut loose = Vec::new();
    if let Ok(entries) = std::fs::read_dir(pki) {
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "key") && mode(&p).is_some_and(|m| m & 0o077 != 0) {
                loose.push(p.display().to_string());
            }
        }
    }
    if loose.is_empty() {
        add("key modes", Level::Ok, "every key is 0600".into());
    } else {
        add("key modes", Level::Fail, format!("readable by others: {}", loose.join(", ")));
    }
    for kind in [Kind::Terminal, Kind::Admin] {
        if let Err(e) = ctx.pki.load_ca(kind) {
            add(&format!("{kind} CA"), Level::Fail, e.to_string());
        }
    }
    for role in [ServerRole::TerminalVpn, ServerRole::AdminVpn, ServerRole::Gate, ServerRole::Master] {
        if !ctx.pki.has_server(role) {
            add(role.common_name(), Level::Fail, "certificate or key missing (run init)".into());
        }
    }

    let s = status::status(ctx).await?;
    for e in &s.expiry {
        let level = match (&e.warning, e.seconds_left) {
            (None, _) => Level::Ok,
            (Some(_), Some(left)) if left > 0 => Level::Warn,
            (Some(_), _) => Level::Fail,
        };
        add(
            &e.what,
            level,
            e.warning.clone().unwrap_or_else(|| format!("until {}", e.not_after.as_deref().unwrap_or("?"))),
        );
    }
    let suspended: Vec<String> = ctx
        .store
        .list_credentials(Some(crate::domain::Kind::Admin), false)
        .await?
        .into_iter()
        .filter(|c| c.suspended_at.is_some())
        .map(|c| c.name.to_string())
        .collect();
    if suspended.is_empty() {
        add("admin credentials", Level::Ok, "none suspended".into());
    } else {
        add(
            "admin credentials",
            Level::Warn,
            format!("suspended after repeated takeovers: {} (admin-vpn resume, or re-issue)", suspended.join(", ")),
        );
    }
    // An import killed midway: committed but unpublished means terminals exist whose profiles and tokens the
    // operator does not have (a failure); one killed before its commit only left staged files to delete.
    use super::import::Leftover;
    let leftovers = super::import::leftovers(ctx).await?;
    let resume = "run `cas-vpn terminal import --resume`";
    let mut worst = Level::Ok;
    let mut details = Vec::new();
    for l in &leftovers {
        let (level, detail) = match l {
            Leftover::Running => (Level::Warn, "an import is running".to_owned()),
            Leftover::Committed { id, names, out } => (
                Level::Fail,
                format!("import {id} of {names} names is committed but not published to {}: {resume}", out.display()),
            ),
            Leftover::Uncommitted { id } => (
                Level::Warn,
                format!(
                    "import {id} was killed before its store commit; its staged keys wait in pki/imports/: {resume}"
                ),
            ),
        };
        worst = worst.max(level);
        details.push(detail);
    }
    if details.is_empty() {
        add("imports", Level::Ok, "no unfinished import".into());
    } else {
        add("imports", worst, details.join("; "));
    }
    // Every service of this root must run (`serve all`, or one unit each): a down service is a failure.
    let mut wanted = vec![Service::Net, Service::Signer, Service::Gate, Service::Master];
    if ctx.cfg.active_vpn().is_some() {
        wanted.insert(2, Service::Vpn);
        // The web UI: through the admin tunnels, so with the VPN (under Scenario B it runs where it can).
        wanted.push(Service::Admin);
    }
    let down: Vec<&str> =
        wanted.iter().filter(|s| crate::daemon::running(&ctx.cfg.root, **s).is_none()).map(|s| s.name()).collect();
    if down.is_empty() {
        add(
            "services",
            Level::Ok,
            format!("{} running", wanted.iter().map(|s| s.name()).collect::<Vec<_>>().join(", ")),
        );
    } else {
        add(
            "services",
            Level::Fail,
            format!("not running: {} (start `cas-vpn serve all`, or their units)", down.join(", ")),
        );
    }
    match &s.running {
        None if ctx.cfg.active_vpn().is_none() => add("serve", Level::Ok, "Scenario B: no VPN instances".into()),
        None => add("serve", Level::Fail, "the VPN service does not answer: no terminal can connect".into()),
        Some(r) => {
            let bad: Vec<String> = r.iter().filter(|i| !i.ready || i.crash_loop).map(|i| i.name.to_string()).collect();
            if bad.is_empty() {
                add("serve", Level::Ok, format!("{} instances ready", r.len()));
            } else {
                add("serve", Level::Fail, format!("not ready or crash-looping: {}", bad.join(", ")));
            }
        }
    }
    // The firewall: installed against planned. Rules edited by hand fail; anything else not in force warns
    // (serve net installs the plan when it starts and repairs drift every drift_check).
    if !ctx.cfg.firewall.manage {
        add("firewall", Level::Warn, "manage=no in config/firewall: the firewall is left to the operator".into());
    } else {
        match super::firewall::plan(ctx, None).await {
            Ok(p) => {
                use crate::firewall::engine::Drift;
                let level = match &p.drift {
                    Drift::InForce => Level::Ok,
                    Drift::Edited { .. } => Level::Fail,
                    _ => Level::Warn,
                };
                add("firewall", level, format!("{} ({}): {}", p.plan, p.backend, p.drift.summary()));
            }
            Err(e) => add("firewall", Level::Warn, format!("cannot compare with what is installed: {e}")),
        }
    }
    let healthy = !checks.iter().any(|c| c.level == Level::Fail);
    Ok(Report { checks, healthy })
}
