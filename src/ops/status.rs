//! `cas-vpn status`: what is configured, what the store holds, and when each CRL and certificate expires (with
//! warnings well before any of them can lock terminals out), and how the fleet's certificate renewals go.

use serde::Serialize;

use super::instances::{Instance, plan};
use super::{Ctx, OpsError, crl, rfc3339};
use crate::domain::{Health, Kind};
use crate::pkifiles::ServerRole;

/// Warn this long before a CRL's nextUpdate (openvpn rejects everyone once it passes).
const CRL_WARN_SECS: i64 = 3 * 86400;
/// Warn this long before a CA or server certificate expires.
const CERT_WARN_SECS: i64 = 60 * 86400;

#[derive(Debug, Serialize)]
pub struct Expiry {
    pub what: String,
    pub not_after: Option<String>,
    pub seconds_left: Option<i64>,
    pub warning: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Counts {
    pub terminals: usize,
    pub terminals_paired: usize,
    pub admins: usize,
    pub revoked: usize,
    pub sessions: usize,
    /// Terminals by health (`domain::health`), revoked ones included.
    pub health: HealthCounts,
}

/// How many terminals are in each health state.
#[derive(Debug, Default, Serialize)]
pub struct HealthCounts {
    pub healthy: usize,
    pub agent_silent: usize,
    pub offline: usize,
    pub never_paired: usize,
    pub revoked: usize,
}

impl HealthCounts {
    /// Counts every terminal of the store by its health at `clock`.
    pub async fn read(ctx: &Ctx, clock: &crate::db::HealthClock) -> Result<HealthCounts, OpsError> {
        let mut h = HealthCounts::default();
        for f in ctx.store.health_facts(clock, None).await? {
            *match f.health(clock) {
                Health::Healthy => &mut h.healthy,
                Health::AgentSilent => &mut h.agent_silent,
                Health::Offline => &mut h.offline,
                Health::NeverPaired => &mut h.never_paired,
                Health::Revoked => &mut h.revoked,
            } += 1;
        }
        Ok(h)
    }
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub root: String,
    pub scenario: &'static str,
    pub database: &'static str,
    pub public_ip: Option<String>,
    pub master_bind_ip: String,
    pub gate_bind_ip: String,
    pub admin_bind_ip: String,
    pub instances: Vec<Instance>,
    /// The running instances as `serve` reports them; `None` when no `serve` runs.
    pub running: Option<Vec<crate::vpn::instance::InstanceStatus>>,
    /// Every service of this root and whether it really runs (its process holds its lock), whatever the
    /// configured scenario says.
    pub services: Vec<ServiceState>,
    pub sessions: Vec<SessionReport>,
    pub counts: Counts,
    pub expiry: Vec<Expiry>,
    /// Terminal certificates: how many end soon, how many are overdue for renewal, which terminals failed to renew.
    pub renewal: RenewalReport,
    pub warnings: Vec<String>,
    /// The admin web UI: its address (through an admin tunnel) and its certificate's SHA-256 fingerprint.
    pub web_url: String,
    pub web_fingerprint: Option<String>,
}

/// The fleet's renewal progress: unrevoked terminals, each counted by its newest unrevoked certificate.
#[derive(Debug, Serialize)]
pub struct RenewalReport {
    /// The renewal window (`renew_before_days`); each certificate's own renewal point lies in its first half.
    pub renew_before_days: u32,
    pub expiring_7d: u64,
    pub expiring_30d: u64,
    pub expiring_60d: u64,
    /// Already expired (also counted as expiring and overdue): these terminals can neither connect nor renew.
    pub expired: u64,
    /// Past their renewal point by more than an hour and not renewed.
    pub overdue: u64,
    /// Terminals whose last renewal attempt failed; `failures` names the latest 20 of them.
    pub failed: u64,
    pub failures: Vec<RenewalFailureReport>,
}

/// A terminal whose last renewal failed: when, who saw it (`master`, or the `terminal` in a heartbeat), the
/// code and the message.
#[derive(Debug, Serialize)]
pub struct RenewalFailureReport {
    pub terminal: String,
    pub failed_at: String,
    pub source: &'static str,
    pub error: String,
    pub message: String,
}

async fn renewal_report(ctx: &Ctx, now: i64) -> Result<RenewalReport, OpsError> {
    let policy = crate::app::renewal::policy(&ctx.cfg);
    let f = crate::app::renewal::fleet(&ctx.store, policy, now, crate::app::renewal::LISTED_FAILURES).await?;
    Ok(RenewalReport {
        renew_before_days: u32::try_from(policy.renew_before_secs() / 86_400).unwrap_or(u32::MAX),
        expiring_7d: f.expiring[0],
        expiring_30d: f.expiring[1],
        expiring_60d: f.expiring[2],
        expired: f.expired,
        overdue: f.overdue,
        failed: f.failed,
        failures: f
            .failures
            .iter()
            .map(|x| RenewalFailureReport {
                terminal: x.name.to_string(),
                failed_at: rfc3339(x.at),
                source: x.source.as_str(),
                error: x.code.to_string(),
                message: x.detail.to_string(),
            })
            .collect(),
    })
}

/// What the renewal report asks of the operator.
fn renewal_warnings(r: &RenewalReport) -> Vec<String> {
    let mut out = Vec::new();
    if r.expired > 0 {
        out.push(format!(
            "{} terminal certificate(s) have EXPIRED: those terminals can neither connect nor renew; they need a new \
             credential",
            r.expired
        ));
    }
    let overdue = r.overdue - r.expired.min(r.overdue);
    if overdue > 0 {
        out.push(format!(
            "{overdue} terminal certificate(s) are past their renewal point and not renewed: are those terminals \
             online? (`cas-vpn terminal list` shows each one's certificate end)"
        ));
    }
    if let Some(latest) = r.failures.first() {
        out.push(format!(
            "{} terminal(s) failed to renew their certificate; latest: {} at {} ({}): {}: {}",
            r.failed, latest.terminal, latest.failed_at, latest.source, latest.error, latest.message
        ));
    }
    out
}

/// One service of the root: `running` with its pid when its process holds the service's lock.
#[derive(Debug, Serialize)]
pub struct ServiceState {
    pub service: &'static str,
    pub running: bool,
    pub pid: Option<u32>,
}

/// A live session as `status --json` shows it. Mapped field by field from the store row, so a new column in the
/// store cannot change the stable output unnoticed.
#[derive(Debug, Serialize)]
pub struct SessionReport {
    pub id: i64,
    /// The node whose openvpn holds it.
    pub node: String,
    pub instance: String,
    pub credential_id: i64,
    pub common_name: String,
    pub tunnel_ip: String,
    pub real_addr: String,
    /// Unix seconds (as first published; not RFC 3339).
    pub since: i64,
    pub bytes_in: i64,
    pub bytes_out: i64,
    pub client_id: i64,
}

impl From<&crate::db::SessionRow> for SessionReport {
    fn from(s: &crate::db::SessionRow) -> Self {
        SessionReport {
            id: s.id,
            node: s.node.clone(),
            instance: s.instance.clone(),
            credential_id: s.credential_id,
            common_name: s.common_name.clone(),
            tunnel_ip: s.tunnel_ip.clone(),
            real_addr: s.real_addr.clone(),
            since: s.since,
            bytes_in: s.bytes_in,
            bytes_out: s.bytes_out,
            client_id: s.client_id,
        }
    }
}

fn expiry(what: String, not_after: Option<i64>, now: i64, warn: i64) -> Expiry {
    let left = not_after.map(|t| t - now);
    let warning = match left {
        None => Some(format!("{what}: missing")),
        Some(s) if s <= 0 => Some(format!("{what}: EXPIRED")),
        Some(s) if s < warn => {
            Some(format!("{what}: expires in {}", humantime::format_duration(std::time::Duration::from_secs(s as u64))))
        }
        _ => None,
    };
    Expiry { what, not_after: not_after.map(rfc3339), seconds_left: left, warning }
}

fn cert_not_after(pem: Result<String, crate::pkifiles::PkiFilesError>) -> Option<i64> {
    pem.ok().and_then(|p| cas_pki::cert_info(&p).ok()).map(|i| i.not_after.unix_timestamp())
}

pub async fn status(ctx: &Ctx) -> Result<Status, OpsError> {
    let now = ctx.clock.now();
    let scenario = if ctx.vpn("status").is_ok() { "A" } else { "B" };
    let instances = if scenario == "A" { plan(ctx).await? } else { Vec::new() };
    let c = ctx.store.credential_counts().await?;
    let n = |v: i64| usize::try_from(v).unwrap_or(0);
    let counts = Counts {
        terminals: n(c.terminals),
        terminals_paired: n(c.terminals_paired),
        admins: n(c.admins),
        revoked: n(c.revoked),
        sessions: n(ctx.store.count_live_sessions(ctx.alive_since()).await?),
        health: HealthCounts::read(ctx, &ctx.health_clock()).await?,
    };
    let mut exp = Vec::new();
    for kind in [Kind::Terminal, Kind::Admin] {
        let left = crl::seconds_left(ctx, kind).unwrap_or(None);
        exp.push(expiry(format!("{kind} CRL"), left.map(|l| now + l), now, CRL_WARN_SECS));
        exp.push(expiry(format!("{kind} CA"), cert_not_after(ctx.pki.read_ca_cert(kind)), now, CERT_WARN_SECS));
    }
    for role in [ServerRole::TerminalVpn, ServerRole::AdminVpn, ServerRole::Gate, ServerRole::Master] {
        exp.push(expiry(
            format!("{} certificate", role.common_name()),
            cert_not_after(ctx.pki.read_server_cert(role)),
            now,
            CERT_WARN_SECS,
        ));
    }
    exp.push(expiry(
        "web UI certificate".into(),
        cert_not_after(
            std::fs::read_to_string(ctx.pki.web_cert_path())
                .map_err(|e| crate::pkifiles::PkiFilesError::Pki(e.to_string())),
        ),
        now,
        CERT_WARN_SECS,
    ));
    let mut warnings: Vec<String> = exp.iter().filter_map(|e| e.warning.clone()).collect();
    let renewal = renewal_report(ctx, now).await?;
    warnings.extend(renewal_warnings(&renewal));
    let running = match crate::control::request(
        &ctx.cfg.root,
        &crate::control::Request::Status,
        std::time::Duration::from_secs(3),
    )
    .await
    {
        Ok(Some(crate::control::Response::Status { instances })) => Some(instances),
        Ok(_) => None,
        Err(e) => {
            warnings.push(format!("the running cas-vpn did not answer: {e}"));
            None
        }
    };
    if let Some(r) = &running {
        warnings.extend(r.iter().filter(|i| i.crash_loop).map(|i| format!("instance {} is crash-looping", i.name)));
    }
    let services: Vec<ServiceState> = crate::daemon::ALL
        .iter()
        .filter(|s| **s != crate::daemon::Service::All)
        .map(|s| {
            let pid = crate::daemon::running(&ctx.cfg.root, *s);
            ServiceState { service: s.name(), running: pid.is_some(), pid }
        })
        .collect();
    // What runs against what the configuration says (a live switch not followed yet, or not followable).
    let vpn_runs = services.iter().any(|s| s.service == crate::daemon::Service::Vpn.name() && s.running);
    let instances_run = running.as_ref().is_some_and(|r| !r.is_empty());
    if scenario == "A" && !vpn_runs && services.iter().any(|s| s.running) {
        warnings.push("Scenario A is configured but `serve vpn` does not run: no terminal can connect".into());
    }
    if scenario == "B" && instances_run {
        warnings
            .push("Scenario B is configured but VPN instances still run (re-plan pending: SIGHUP `serve vpn`)".into());
    }
    warnings.extend(
        ctx.store.list_credentials(Some(Kind::Admin), false).await?.iter().filter(|c| c.suspended_at.is_some()).map(
            |c| {
                format!(
                    "admin credential {} is suspended: its session was taken over repeatedly from different addresses \
             (`cas-vpn admin-vpn resume {}` or re-issue it)",
                    c.name, c.name
                )
            },
        ),
    );
    let sessions = ctx.store.live_sessions(ctx.alive_since()).await?.iter().map(SessionReport::from).collect();
    let net = &ctx.cfg.network;
    Ok(Status {
        root: ctx.cfg.root.display().to_string(),
        scenario,
        database: ctx.store.backend(),
        public_ip: net.public_ip.map(|ip| ip.to_string()),
        master_bind_ip: net.master_bind_ip.to_string(),
        gate_bind_ip: net.gate_bind_ip.to_string(),
        admin_bind_ip: net.admin_bind_ip.to_string(),
        instances,
        services,
        running,
        sessions,
        counts,
        expiry: exp,
        renewal,
        warnings,
        web_url: format!("https://{}:{}/", net.admin_bind_ip, crate::config::ADMIN_UI_PORT),
        web_fingerprint: ctx.pki.web_fingerprint(),
    })
}
