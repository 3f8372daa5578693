//! `cas-vpn doctor`: checks what an operator would check by hand before a terminal outage does it for them, and
//! says for each what is wrong and the one thing to do about it: tools present (openvpn's version), the store
//! reachable, key and directory modes and every owner, CRLs fresh and far from expiry, every certificate far from
//! its end, no import left unfinished, every service running under its own user, the VPN instances healthy, the
//! firewall applied as planned, 7741 closed outside pairing windows and 7777 closed after bootstrap.
//!
//! What cannot be determined is `unknown`, with why: never `ok` on a guess. The ports are judged from the rules
//! installed against the plan (a probe from this host would not pass the DNAT the Internet goes through).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use super::{Ctx, OpsError, status};
use crate::app::accounts::{Accounts, UserMode};
use crate::daemon::Service;
use crate::domain::Kind;
use crate::firewall::engine::Drift;
use crate::pkifiles::ServerRole;

/// How long the store gets to answer.
const STORE_DEADLINE: Duration = Duration::from_secs(5);
/// What finishes (or rolls back) an interrupted import.
const RESUME: &str = "run `cas-vpn terminal import --resume`";
/// Client certificates ending within this are reported.
const CLIENT_CERT_WARN_SECS: i64 = 30 * 86400;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    /// Could not be determined (the detail says why); not a failure.
    Unknown,
    Warn,
    Fail,
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub check: String,
    pub level: Level,
    /// What was found: what is wrong, or what is fine.
    pub detail: String,
    /// The one thing to do about it; `None` when there is nothing to do.
    pub fix: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
    /// True when no check failed (warnings and unknowns allowed).
    pub healthy: bool,
}

#[derive(Default)]
struct Checks(Vec<Check>);

impl Checks {
    fn add(&mut self, check: &str, level: Level, detail: impl Into<String>, fix: Option<&str>) {
        let fix = if level == Level::Ok { None } else { fix.map(str::to_owned) };
        self.0.push(Check { check: check.into(), level, detail: detail.into(), fix });
    }
    fn ok(&mut self, check: &str, detail: impl Into<String>) {
        self.add(check, Level::Ok, detail, None);
    }
    fn with_fix(&mut self, check: &str, level: Level, detail: impl Into<String>, fix: impl Into<String>) {
        let fix = fix.into();
        self.add(check, level, detail, Some(&fix));
    }
}

fn mode(p: &Path) -> Option<u32> {
    std::fs::metadata(p).ok().map(|m| m.permissions().mode() & 0o7777)
}

/// The effective uid of process `pid` (`/proc/PID/status`), `None` when it cannot be read.
fn uid_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Whether an installed or planned rule line forwards public `port` (a DNAT to that port).
fn forwards(line: &str, port: u16) -> bool {
    let l = line.to_ascii_lowercase();
    l.contains("dnat") && (l.contains(&format!("dport {port} ")) || l.contains(&format!(":{port}")))
}

/// `store_error`: why the store did not open (`Ctx::open_for_doctor`), the first finding rather than a failure.
/// `config_warnings`: what a broken configuration file had replaced by defaults.
pub async fn doctor(ctx: &Ctx, store_error: Option<&str>, config_warnings: &[String]) -> Result<Report, OpsError> {
    let mut c = Checks::default();
    if config_warnings.is_empty() {
        c.ok("configuration", "every file parses");
    } else {
        c.with_fix(
            "configuration",
            Level::Fail,
            config_warnings.join("; "),
            "correct the named lines (the services refuse to start on them)",
        );
    }
    tools(&mut c);
    let accounts = crate::app::accounts::lookup(&UserMode::from_env()?)?;
    tun(&mut c, accounts.as_ref());

    // The store first: everything below that reads it is `unknown` when it does not answer.
    let started = std::time::Instant::now();
    let store_ok = match store_error {
        Some(e) => {
            c.with_fix("store", Level::Fail, format!("{} did not open: {e}", ctx.store.backend()), store_fix(ctx));
            false
        }
        None => store_answers(&mut c, ctx, started).await,
    };

    files(&mut c, ctx, accounts.as_ref());
    pki(&mut c, ctx);

    if store_ok {
        let s = status::status(ctx).await?;
        expiry(&mut c, &s);
        crl_freshness(&mut c, ctx);
        client_certs(&mut c, ctx).await?;
        admin_credentials(&mut c, ctx).await?;
        imports(&mut c, ctx).await?;
        services(&mut c, ctx);
        service_users(&mut c, ctx, accounts.as_ref());
        instances(&mut c, ctx, &s);
        firewall(&mut c, ctx).await;
    } else {
        let why = "the store does not answer";
        for check in ["expiry", "CRL freshness", "client certificates", "admin credentials", "imports"] {
            c.with_fix(check, Level::Unknown, why, "fix the store first (see the store check)");
        }
        services(&mut c, ctx);
        service_users(&mut c, ctx, accounts.as_ref());
        for check in ["serve", "firewall", "pairing port 7741", "web UI port 7777"] {
            c.with_fix(check, Level::Unknown, why, "fix the store first (see the store check)");
        }
    }
    let healthy = !c.0.iter().any(|k| k.level == Level::Fail);
    Ok(Report { checks: c.0, healthy })
}

/// Whether the opened store answers a query within `STORE_DEADLINE`, as the store check says.
async fn store_answers(c: &mut Checks, ctx: &Ctx, started: std::time::Instant) -> bool {
    match tokio::time::timeout(STORE_DEADLINE, ctx.store.count_sessions()).await {
        Ok(Ok(_)) => {
            c.ok("store", format!("{} answers ({} ms)", ctx.store.backend(), started.elapsed().as_millis()));
            true
        }
        Ok(Err(e)) => {
            c.with_fix("store", Level::Fail, format!("{}: {e}", ctx.store.backend()), store_fix(ctx));
            false
        }
        Err(_) => {
            let detail = format!("{} did not answer within {} s", ctx.store.backend(), STORE_DEADLINE.as_secs());
            c.with_fix("store", Level::Fail, detail, store_fix(ctx));
            false
        }
    }
}

fn store_fix(ctx: &Ctx) -> &'static str {
    match ctx.store.backend() {
        "postgres" => "check that PostgreSQL runs and that --database-url / CAS_VPN_DATABASE_URL reaches it",
        _ => "check db/cas-vpn.sqlite: disk space, owner and mode (`cas-vpn init` as root puts them back)",
    }
}

fn tools(c: &mut Checks) {
    match crate::sys::cmd::run("openvpn", ["--version"]) {
        Ok(v) | Err(crate::sys::cmd::CmdError::Failed { stderr: v, .. }) if v.contains("OpenVPN 2.") => {
            let first = v.lines().next().unwrap_or("").split_whitespace().take(2).collect::<Vec<_>>().join(" ");
            let old = first.contains("OpenVPN 2.4") || first.contains("OpenVPN 2.5");
            if old {
                c.with_fix(
                    "openvpn",
                    Level::Warn,
                    format!("{first}: older than 2.6 (no tls-crypt-v2 cookies, fewer fixes)"),
                    "install openvpn 2.6 or newer (Debian 12: apt-get install openvpn)",
                );
            } else {
                c.ok("openvpn", first);
            }
        }
        _ => c.with_fix("openvpn", Level::Fail, "openvpn not found", "apt-get install openvpn"),
    }
    if crate::sys::cmd::run("nft", ["--version"]).is_ok() {
        c.ok("nft", "present");
    } else {
        c.with_fix(
            "nft",
            Level::Fail,
            "nft not found: the firewall (tunnel isolation, the pairing window) cannot be applied",
            "apt-get install nftables (or set backend=iptables in config/firewall)",
        );
    }
}

fn tun(c: &mut Checks, accounts: Option<&Accounts>) {
    let tun = Path::new("/dev/net/tun").exists();
    let vpn_user_locked_out = accounts.is_some_and(|a| !crate::sys::net::tun_usable_by(a.vpn.uid, a.gid));
    match (tun, vpn_user_locked_out) {
        (false, _) => c.with_fix(
            "/dev/net/tun",
            Level::Fail,
            "missing: openvpn cannot create tun devices",
            "modprobe tun (in a container: pass --device /dev/net/tun)",
        ),
        (true, true) => c.with_fix(
            "/dev/net/tun",
            Level::Warn,
            "present, but not open to openvpn's user: openvpn runs as root",
            "chmod 0666 /dev/net/tun (as udev does)",
        ),
        (true, false) => c.ok("/dev/net/tun", "present"),
    }
}

/// Directory and key modes, then every owner and mode of the ownership table.
fn files(c: &mut Checks, ctx: &Ctx, accounts: Option<&Accounts>) {
    let pki = ctx.pki.dir();
    // With service users, the services' group may look into pki/ (each key file decides who reads it).
    let group = accounts.map(|a| a.gid);
    let pki_gid = std::fs::metadata(pki).ok().map(|m| m.gid());
    let fix_pki = format!("chmod 0750 {0} && chgrp batm {0} (or `cas-vpn init` as root)", pki.display());
    match (mode(pki), group) {
        (Some(0o700), _) => c.ok("pki directory", format!("{} is 0700", pki.display())),
        (Some(0o750), Some(g)) if pki_gid == Some(g) => {
            c.ok("pki directory", format!("{} is 0750, group of the services", pki.display()))
        }
        (Some(m), _) => c.with_fix(
            "pki directory",
            Level::Fail,
            format!("{} is {m:o}, must be 0700 (or 0750 with the services' group)", pki.display()),
            fix_pki,
        ),
        (None, _) => c.with_fix("pki directory", Level::Fail, format!("{} missing", pki.display()), "cas-vpn init"),
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
        c.ok("key modes", "every key is 0600");
    } else {
        let fix = format!("chmod 0600 {}", loose.join(" "));
        c.with_fix("key modes", Level::Fail, format!("readable by others: {}", loose.join(", ")), fix);
    }
    // Owners: the table of ops::ownership, when the services have their own users.
    let root = &ctx.cfg.root;
    match (accounts, UserMode::from_env()) {
        (Some(a), _) => {
            let mut wrong = Vec::new();
            let db = root.join("db");
            for w in super::ownership::expected(root, a, &ctx.cfg.gate.download_dir) {
                // The store's files (-wal, -shm) are remade by whichever service opens the store first: their
                // group (setgid db/) and mode say who may write, not their owner.
                let any_owner = w.path.parent() == Some(db.as_path());
                match std::fs::metadata(&w.path) {
                    Ok(m)
                        if (any_owner || m.uid() == w.uid)
                            && m.gid() == w.gid
                            && m.permissions().mode() & 0o7777 == w.mode => {}
                    Ok(m) => wrong.push(format!(
                        "{} is {}:{} {:o}, want {}:{} {:o}",
                        w.path.display(),
                        m.uid(),
                        m.gid(),
                        m.permissions().mode() & 0o7777,
                        w.uid,
                        w.gid,
                        w.mode
                    )),
                    Err(e) => wrong.push(format!("{}: {e}", w.path.display())),
                }
            }
            if wrong.is_empty() {
                c.ok("file owners", format!("every path under {} has its owner and mode", root.display()));
            } else {
                c.with_fix(
                    "file owners",
                    Level::Fail,
                    wrong.join("; "),
                    "run `cas-vpn init` as root: it gives every path its owner and mode again",
                );
            }
        }
        (None, Ok(UserMode::Single)) => c.with_fix(
            "file owners",
            Level::Warn,
            "CAS_VPN_SERVICE_USERS=none: every service runs under one uid, so owners separate nothing",
            "unset CAS_VPN_SERVICE_USERS and run `cas-vpn init` as root (development and containers only)",
        ),
        (None, _) => c.with_fix(
            "file owners",
            Level::Unknown,
            "the service users (group batm, batmgate, batmmaster, batmadmin, batmvpn) do not exist, so there is no \
             owner to compare with",
            "run `cas-vpn init` as root: it creates them and gives every path its owner",
        ),
    }
}

fn pki(c: &mut Checks, ctx: &Ctx) {
    for kind in [Kind::Terminal, Kind::Admin] {
        if let Err(e) = ctx.pki.load_ca(kind) {
            c.with_fix(
                &format!("{kind} CA"),
                Level::Fail,
                e.to_string(),
                "set CAS_VPN_CA_PASSPHRASE if the CA keys are encrypted; a missing CA: `cas-vpn init`",
            );
        }
    }
    for role in [ServerRole::TerminalVpn, ServerRole::AdminVpn, ServerRole::Gate, ServerRole::Master] {
        if !ctx.pki.has_server(role) {
            c.with_fix(role.common_name(), Level::Fail, "certificate or key missing", "cas-vpn init");
        }
    }
}

/// Every CRL and certificate `status` dates, each with what to do before it ends.
fn expiry(c: &mut Checks, s: &status::Status) {
    for e in &s.expiry {
        let level = match (&e.warning, e.seconds_left) {
            (None, _) => Level::Ok,
            (Some(_), Some(left)) if left > 0 => Level::Warn,
            (Some(_), _) => Level::Fail,
        };
        let fix = if e.what.ends_with("CRL") {
            "run `cas-vpn crl` now, and make sure `serve signer` runs (it renews CRLs at half their life)".to_owned()
        } else if e.what.ends_with(" CA") {
            "a CA cannot be renewed in place: plan a new CA and re-issue every credential before this date".to_owned()
        } else if e.what.starts_with("web UI") {
            "run `cas-vpn init` (it remakes the web UI's certificate in its last 30 days), then restart `serve admin`"
                .to_owned()
        } else {
            let base = e.what.trim_end_matches(" certificate").trim_start_matches("cas-vpn-");
            format!(
                "move pki/{base}.crt and pki/{base}.key away, run `cas-vpn init` (it makes missing ones), restart the \
                 services"
            )
        };
        let detail = e.warning.clone().unwrap_or_else(|| format!("until {}", e.not_after.as_deref().unwrap_or("?")));
        c.with_fix(&e.what, level, detail, fix);
    }
}

fn crl_freshness(c: &mut Checks, ctx: &Ctx) {
    let mut stale = Vec::new();
    for kind in [Kind::Terminal, Kind::Admin] {
        match crate::app::crl::is_fresh(ctx, kind) {
            Ok(true) => {}
            Ok(false) => stale.push(format!("{kind}")),
            Err(e) => stale.push(format!("{kind} ({e})")),
        }
    }
    if stale.is_empty() {
        c.ok("CRL freshness", "both CRLs are the store's latest and have more than half their life left");
    } else {
        c.with_fix(
            "CRL freshness",
            Level::Warn,
            format!(
                "{} CRL: older than the store's last revocation or past half its life (the signer renews it then)",
                stale.join(", ")
            ),
            "make sure `serve signer` runs; `cas-vpn crl` renews both now",
        );
    }
}

/// The soonest terminal and admin certificates, and how many end within 30 days.
async fn client_certs(c: &mut Checks, ctx: &Ctx) -> Result<(), OpsError> {
    let now = ctx.clock.now();
    let mut parts = Vec::new();
    let mut level = Level::Ok;
    for kind in [Kind::Terminal, Kind::Admin] {
        let e = ctx.store.client_cert_expiry(kind, now + CLIENT_CERT_WARN_SECS).await?;
        match e.soonest {
            None => parts.push(format!("no {kind} certificate")),
            Some(end) => {
                if end <= now {
                    level = Level::Fail;
                } else if e.expiring > 0 {
                    level = level.max(Level::Warn);
                }
                parts.push(format!("{kind}: soonest ends {}, {} within 30 days", super::rfc3339(end), e.expiring));
            }
        }
    }
    c.with_fix(
        "client certificates",
        level,
        parts.join("; "),
        "terminals renew through master in their last 60 days (check they heartbeat); admins: `admin-vpn issue` anew",
    );
    Ok(())
}

async fn admin_credentials(c: &mut Checks, ctx: &Ctx) -> Result<(), OpsError> {
    let suspended: Vec<String> = ctx
        .store
        .list_credentials(Some(Kind::Admin), false)
        .await?
        .into_iter()
        .filter(|a| a.suspended_at.is_some())
        .map(|a| a.name.to_string())
        .collect();
    if suspended.is_empty() {
        c.ok("admin credentials", "none suspended");
    } else {
        c.with_fix(
            "admin credentials",
            Level::Warn,
            format!("suspended after repeated takeovers: {}", suspended.join(", ")),
            "make sure only its owner holds it, then `cas-vpn admin-vpn resume NAME` (or revoke and re-issue)",
        );
    }
    Ok(())
}

/// An import killed midway: committed but unpublished means terminals exist whose profiles and tokens the
/// operator does not have (a failure); one killed before its commit only left staged files to delete.
async fn imports(c: &mut Checks, ctx: &Ctx) -> Result<(), OpsError> {
    use super::import::Leftover;
    let leftovers = super::import::leftovers(ctx).await?;
    let mut worst = Level::Ok;
    let mut details = Vec::new();
    for l in &leftovers {
        let (level, detail) = match l {
            Leftover::Running => (Level::Warn, "an import is running".to_owned()),
            Leftover::Committed { id, names, out } => (
                Level::Fail,
                format!("import {id} of {names} names is committed but not published to {}: {RESUME}", out.display()),
            ),
            Leftover::Uncommitted { id } => (
                Level::Warn,
                format!(
                    "import {id} was killed before its store commit; its staged keys wait in pki/imports/: {RESUME}"
                ),
            ),
        };
        worst = worst.max(level);
        details.push(detail);
    }
    if details.is_empty() {
        c.ok("imports", "no unfinished import");
    } else {
        let fix = if leftovers.iter().all(|l| matches!(l, Leftover::Running)) { "let it finish" } else { RESUME };
        c.with_fix("imports", worst, details.join("; "), fix);
    }
    Ok(())
}

/// The services this root needs: every one, the VPN and the web UI only under Scenario A.
fn wanted_services(ctx: &Ctx) -> Vec<Service> {
    let mut wanted = vec![Service::Net, Service::Signer, Service::Gate, Service::Master];
    if ctx.cfg.active_vpn().is_some() {
        wanted.insert(2, Service::Vpn);
        // The web UI: through the admin tunnels, so with the VPN (under Scenario B it runs where it can).
        wanted.push(Service::Admin);
    }
    wanted
}

/// Every service of this root must run (`serve all`, or one unit each): a down service is a failure.
fn services(c: &mut Checks, ctx: &Ctx) {
    let wanted = wanted_services(ctx);
    let down: Vec<&str> =
        wanted.iter().filter(|s| crate::daemon::running(&ctx.cfg.root, **s).is_none()).map(|s| s.name()).collect();
    if down.is_empty() {
        c.ok("services", format!("{} running", wanted.iter().map(|s| s.name()).collect::<Vec<_>>().join(", ")));
    } else {
        c.with_fix(
            "services",
            Level::Fail,
            format!("not running: {}", down.join(", ")),
            "start `cas-vpn serve all` (systemctl start cas-vpn), or their units",
        );
    }
}

/// Each running service (and openvpn child) under the user it must run as, read from `/proc`.
fn service_users(c: &mut Checks, ctx: &Ctx, accounts: Option<&Accounts>) {
    let root = &ctx.cfg.root;
    let running: Vec<(Service, u32)> =
        wanted_services(ctx).into_iter().filter_map(|s| crate::daemon::running(root, s).map(|pid| (s, pid))).collect();
    let fix = "run the services through `cas-vpn serve all` as root (it starts each under its user), or give each \
               unit its User= (gate batmgate, master batmmaster, admin batmadmin; net, signer, vpn root)";
    if running.is_empty() {
        c.with_fix("service users", Level::Unknown, "no service runs: no process to look at", fix);
        return;
    }
    let Some(a) = accounts else {
        let uids: Vec<String> = running
            .iter()
            .map(|(s, pid)| format!("{} uid {}", s.name(), uid_of(*pid).map_or("?".into(), |u| u.to_string())))
            .collect();
        c.with_fix(
            "service users",
            Level::Warn,
            format!("no service users exist: no privilege separation ({})", uids.join(", ")),
            "run `cas-vpn init` as root (it creates the users), then restart `serve all`",
        );
        return;
    };
    let mut wrong = Vec::new();
    let mut unknown = Vec::new();
    let mut seen = Vec::new();
    for (s, pid) in &running {
        let want = match s {
            Service::Gate => a.gate.uid,
            Service::Master => a.master.uid,
            Service::Admin => a.admin.uid,
            _ => 0,
        };
        match uid_of(*pid) {
            Some(uid) if uid == want => seen.push(format!("{} uid {uid}", s.name())),
            Some(uid) => wrong.push(format!("{} (pid {pid}) runs as uid {uid}, want {want}", s.name())),
            None => unknown.push(format!("{} (pid {pid}): /proc/{pid}/status unreadable", s.name())),
        }
    }
    // openvpn children: as batmvpn, or as root where /dev/net/tun is not open to it (warned about above).
    let tun_ok = crate::sys::net::tun_usable_by(a.vpn.uid, a.gid);
    let mut root_openvpn = 0;
    if let Ok(dirs) = std::fs::read_dir(root.join("vpn")) {
        for d in dirs.flatten() {
            let Some(pid) =
                std::fs::read_to_string(d.path().join("openvpn.pid")).ok().and_then(|p| p.trim().parse().ok())
            else {
                continue;
            };
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if !String::from_utf8_lossy(&cmdline).contains("openvpn") {
                continue;
            }
            let name = d.file_name().to_string_lossy().into_owned();
            match uid_of(pid) {
                Some(uid) if uid == a.vpn.uid => seen.push(format!("openvpn {name} uid {uid}")),
                Some(0) if !tun_ok => root_openvpn += 1,
                Some(uid) => wrong.push(format!("openvpn {name} (pid {pid}) runs as uid {uid}, want {}", a.vpn.uid)),
                None => unknown.push(format!("openvpn {name} (pid {pid}): /proc unreadable")),
            }
        }
    }
    if !wrong.is_empty() {
        c.with_fix("service users", Level::Fail, wrong.join("; "), fix);
    } else if !unknown.is_empty() {
        c.with_fix("service users", Level::Unknown, unknown.join("; "), "run doctor as root");
    } else if root_openvpn > 0 {
        c.with_fix(
            "service users",
            Level::Warn,
            format!("{root_openvpn} openvpn processes run as root: /dev/net/tun is not open to batmvpn"),
            "chmod 0666 /dev/net/tun and restart `serve vpn`",
        );
    } else {
        c.ok("service users", seen.join(", "));
    }
}

fn instances(c: &mut Checks, ctx: &Ctx, s: &status::Status) {
    match &s.running {
        None if ctx.cfg.active_vpn().is_none() => c.ok("serve", "Scenario B: no VPN instances"),
        None => c.with_fix(
            "serve",
            Level::Fail,
            "the VPN service does not answer: no terminal can connect",
            "start `cas-vpn serve vpn` (or `serve all`); its log says why it stopped",
        ),
        Some(r) => {
            let bad: Vec<String> = r
                .iter()
                .filter(|i| !i.ready || i.crash_loop)
                .map(|i| format!("{}{}", i.name, if i.crash_loop { " (crash loop)" } else { " (not ready)" }))
                .collect();
            if bad.is_empty() {
                c.ok("serve", format!("{} instances ready", r.len()));
            } else {
                c.with_fix(
                    "serve",
                    Level::Fail,
                    format!("not ready or crash-looping: {}", bad.join(", ")),
                    "read openvpn's own lines in the log (`journalctl -u cas-vpn | grep instance=NAME`)",
                );
            }
        }
    }
}

/// The firewall against its plan, then what that means for the two doors that must stay shut: 7741 outside
/// pairing windows, 7777 after bootstrap.
async fn firewall(c: &mut Checks, ctx: &Ctx) {
    let apply = "`cas-vpn firewall apply` (a running `serve net` repairs it within drift_check)";
    if !ctx.cfg.firewall.manage {
        let why = "manage=no in config/firewall: the firewall is the operator's, cas-vpn cannot tell what answers";
        c.with_fix("firewall", Level::Warn, why, "set manage=yes in config/firewall, or keep your own rules exact");
        c.with_fix("pairing port 7741", Level::Unknown, why, "forward public 7741 only during pairing windows");
        c.with_fix("web UI port 7777", Level::Unknown, why, "keep public 7777 closed");
        return;
    }
    let p = match super::firewall::plan(ctx, None).await {
        Ok(p) => p,
        Err(e) => {
            let why = format!("cannot compare with what is installed: {e}");
            c.with_fix("firewall", Level::Unknown, why.clone(), "run `cas-vpn firewall status` as root");
            c.with_fix("pairing port 7741", Level::Unknown, why.clone(), "run `cas-vpn firewall status` as root");
            c.with_fix("web UI port 7777", Level::Unknown, why, "run `cas-vpn firewall status` as root");
            return;
        }
    };
    let level = match &p.drift {
        Drift::InForce => Level::Ok,
        Drift::Edited { .. } => Level::Fail,
        _ => Level::Warn,
    };
    c.with_fix("firewall", level, format!("{} ({}): {}", p.plan, p.backend, p.drift.summary()), apply);

    let window_open = matches!(p.window, crate::firewall::Window::Open { .. });
    let bootstrap = ctx.cfg.firewall.admin_ui_bootstrap && matches!(ctx.store.bootstrap_ended().await, Ok(None));
    let plan = Planned { rules: &p.rules, warnings: &p.warnings, drift: &p.drift };
    door(c, "pairing port 7741", 7741, window_open, "a pairing window is open", &plan, apply);
    door(c, "web UI port 7777", 7777, bootstrap, "bootstrap mode is on", &plan, apply);
    if bootstrap && let Some(last) = c.0.last_mut().filter(|k| k.level == Level::Ok) {
        // Open by design, but the web UI faces the Internet: say so until it ends.
        last.level = Level::Warn;
        last.fix =
            Some("connect once with an admin VPN credential (it closes for good), or set admin_ui_bootstrap=no".into());
    }
}

/// The firewall's plan as `door` judges it.
struct Planned<'a> {
    rules: &'a str,
    warnings: &'a [String],
    drift: &'a Drift,
}

/// Whether public `port` is forwarded exactly when it should be (`open`, for the reason `why_open`), judged from
/// the planned rules and how the installed ones differ from them.
fn door(c: &mut Checks, check: &str, port: u16, open: bool, why_open: &str, plan: &Planned, fix: &str) {
    let drift = plan.drift;
    let planned = plan.rules.lines().any(|l| forwards(l, port));
    let state = if open { format!("open ({why_open})") } else { "closed".to_owned() };
    match (planned, open) {
        (true, false) => {
            let detail = format!("the plan forwards {port} although it should be closed");
            c.with_fix(check, Level::Fail, detail, "report this: the plan disagrees with the store");
            return;
        }
        (false, true) => {
            // The plan cannot forward (no public interface known, a backend that cannot DNAT): closed in fact.
            let detail = format!("{why_open}, but the plan forwards nothing to {port}: {}", plan.warnings.join("; "));
            c.with_fix(check, Level::Warn, detail, "read `cas-vpn firewall plan` (its warnings say what is missing)");
            return;
        }
        _ => {}
    }

    // Installed lines that differ from the plan: `-` only installed, `+` only planned.
    let differing = |diff: &[String], sign: char| diff.iter().any(|l| l.starts_with(sign) && forwards(&l[1..], port));
    match drift {
        Drift::InForce => c.ok(check, format!("{state}: the installed rules are the plan")),
        Drift::Edited { diff } | Drift::OtherPlan { diff } => {
            // Edited: from the recorded listing to today's (`+` added by hand); another plan: from the installed
            // script to the planned one (`-` still installed).
            let added = if matches!(drift, Drift::Edited { .. }) { '+' } else { '-' };
            let missing = if added == '+' { '-' } else { '+' };
            if differing(diff, added) && !open {
                c.with_fix(check, Level::Fail, format!("the installed rules forward {port}, the plan does not"), fix);
            } else if differing(diff, missing) && open {
                c.with_fix(check, Level::Warn, format!("{state} in the plan, but not yet forwarded"), fix);
            } else {
                c.ok(check, format!("{state}: the installed rules agree for {port} (others differ: see firewall)"));
            }
        }
        Drift::NotInstalled => c.with_fix(
            check,
            Level::Unknown,
            format!("none of cas-vpn's rules are installed: nothing forwards {port}, but nothing filters either"),
            fix,
        ),
        Drift::Unrecorded => c.with_fix(
            check,
            Level::Unknown,
            "rules are installed but no install was recorded: cannot tell what they forward",
            fix,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn levels(rules: &str, drift: Drift, open: bool) -> (Level, String) {
        let mut c = Checks::default();
        let plan = Planned { rules, warnings: &[], drift: &drift };
        door(&mut c, "pairing port 7741", 7741, open, "window", &plan, "apply");
        let k = c.0.pop().unwrap();
        (k.level, k.detail)
    }

    #[test]
    fn the_pairing_door_is_judged_from_the_plan_and_the_installed_difference() {
        let dnat = "iifname \"eth0\" ip daddr 198.51.100.1 tcp dport 7741 dnat ip to 203.0.113.3:7741";
        let tunnel = "ip daddr 203.0.113.1 tcp dport 7741 accept";
        let ipt =
            "-A CASVPN-PREROUTING -i eth0 -d 198.51.100.1/32 -p tcp --dport 7741 -j DNAT --to-destination 1.2.3.4:7741";
        assert!(forwards(dnat, 7741) && forwards(ipt, 7741) && !forwards(tunnel, 7741) && !forwards(dnat, 7777));
        assert_eq!(levels(tunnel, Drift::InForce, false).0, Level::Ok);
        assert_eq!(levels(&format!("{tunnel}\n{dnat}"), Drift::InForce, true).0, Level::Ok);
        // The plan must agree with the window: forwarding while closed is a failure, a window the plan cannot
        // forward (no public interface) a warning.
        assert_eq!(levels(&format!("{tunnel}\n{dnat}"), Drift::InForce, false).0, Level::Fail);
        assert_eq!(levels(tunnel, Drift::InForce, true).0, Level::Warn);
        // A hand-made DNAT, or a stale plan still forwarding after the window closed: fail.
        assert_eq!(levels(tunnel, Drift::Edited { diff: vec![format!("+{dnat}")] }, false).0, Level::Fail);
        assert_eq!(levels(tunnel, Drift::OtherPlan { diff: vec![format!("-{dnat}")] }, false).0, Level::Fail);
        // Other lines differing say nothing about 7741.
        assert_eq!(
            levels(tunnel, Drift::OtherPlan { diff: vec!["+tcp dport 12000 accept".into()] }, false).0,
            Level::Ok
        );
        // What cannot be known is not ok.
        assert_eq!(levels(tunnel, Drift::NotInstalled, false).0, Level::Unknown);
        assert_eq!(levels(tunnel, Drift::Unrecorded, false).0, Level::Unknown);
    }

    #[test]
    fn uid_of_reads_our_own_process() {
        assert_eq!(uid_of(std::process::id()), Some(nix::unistd::geteuid().as_raw()));
        assert_eq!(uid_of(u32::MAX), None);
    }
}
