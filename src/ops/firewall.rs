//! `cas-vpn firewall plan | apply | status | confirm`: the firewall `serve net` keeps in force, shown and
//! installed by hand. Reports only; `cli` prints them.
//!
//! `apply` refuses a plan that would not let a new connection of the SSH session it runs in back in (from
//! `SSH_CONNECTION`). With `--confirm DUR` it writes `run/firewall.hold` (which pauses `serve net`'s automatic
//! installs) holding what was installed before, and the caller waits: `firewall confirm` (from a second session)
//! removes the hold and the new rules stay; otherwise, at the deadline, the previous rules come back and the hold
//! stays, so `serve net` does not reinstall the refused plan until the next `firewall apply`.

use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Ctx, OpsError, now, rfc3339};
use crate::config::{Backend, Config};
use crate::firewall::engine::{self, Drift, Script, State};
use crate::firewall::service::hold_path;
use crate::firewall::{self, Plan, Window};

fn err(e: firewall::FirewallError) -> OpsError {
    OpsError::Other(e.to_string())
}

#[derive(Debug, Serialize)]
pub struct PlanReport {
    pub backend: Backend,
    /// `sha256:…` of the rules.
    pub plan: String,
    /// The exact rules.
    pub rules: String,
    /// What the plan cannot do (no public interface, what ufw cannot express).
    pub warnings: Vec<String>,
    /// From the installed script to the planned one (`-`/`+` lines; empty: same rules).
    pub diff: Vec<String>,
    pub drift: Drift,
    pub window: Window,
    /// What the Internet can reach under the plan.
    pub exposure: Vec<String>,
    /// Whether `config/firewall` lets `serve net` manage the firewall.
    pub managed: bool,
    /// An unconfirmed `apply --confirm` (or its rollback) holds `serve net`'s automatic installs.
    pub held: bool,
}

async fn planned(ctx: &Ctx, backend: Option<Backend>) -> Result<(Config, Plan, Script), OpsError> {
    let cfg = Config::load(&ctx.cfg.root)?;
    let inputs = firewall::inputs(&cfg, ctx, now()).await.map_err(err)?;
    let plan = firewall::plan(&inputs);
    let script = Script::render(&plan, backend.unwrap_or(cfg.firewall.backend));
    Ok((cfg, plan, script))
}

/// `firewall plan` and `firewall status`: the planned rules against what is installed.
pub async fn plan(ctx: &Ctx, backend: Option<Backend>) -> Result<PlanReport, OpsError> {
    let (cfg, plan, script) = planned(ctx, backend).await?;
    let root = &ctx.cfg.root;
    let state = engine::load_state(root).map_err(err)?;
    let drift = engine::drift(root, &script).map_err(err)?;
    let installed = state.filter(|s| s.script.backend() == script.backend()).map(|s| s.script.text());
    let mut warnings = plan.warnings.clone();
    if script.backend() == Backend::Ufw {
        warnings.extend(firewall::ufw::unsupported(&plan));
    }
    Ok(PlanReport {
        backend: script.backend(),
        plan: script.hash(),
        rules: script.text(),
        warnings,
        diff: firewall::line_diff(installed.as_deref().unwrap_or(""), &script.text()),
        drift,
        window: plan.window.clone(),
        exposure: plan.exposure(),
        managed: cfg.firewall.manage,
        held: hold_path(root).exists(),
    })
}

#[derive(Debug, Serialize)]
pub struct ApplyReport {
    pub backend: Backend,
    pub plan: String,
    /// False when the plan was already in force.
    pub changed: bool,
    pub warnings: Vec<String>,
    /// With `--confirm`: when the previous rules come back unless `firewall confirm` runs first.
    pub confirm_by: Option<String>,
}

/// What `run/firewall.hold` holds.
#[derive(Debug, Serialize, Deserialize)]
struct Hold {
    /// Unix seconds; `None` once rolled back.
    deadline: Option<i64>,
    previous: Option<State>,
}

/// Whether `ssh` (the value of `SSH_CONNECTION`: client address, client port, server address, server port) would
/// still be let in under `plan`; `Err(reason)` when it would not. Sessions that reach the host on another interface
/// than the public one are not filtered by the plan.
pub fn check_ssh(plan: &Plan, ssh: &str, arrives_on_public: impl Fn(IpAddr) -> bool) -> Result<(), String> {
    let words: Vec<&str> = ssh.split_whitespace().collect();
    let [client, _, server, port] = words[..] else {
        return Err(format!("SSH_CONNECTION {ssh:?} is not `CLIENT PORT SERVER PORT`: refusing to guess"));
    };
    let (Ok(client), Ok(server), Ok(port)) = (client.parse::<IpAddr>(), server.parse::<IpAddr>(), port.parse::<u16>())
    else {
        return Err(format!("SSH_CONNECTION {ssh:?} is not `CLIENT PORT SERVER PORT`: refusing to guess"));
    };
    if plan.public_interface.is_none() || !arrives_on_public(server) {
        return Ok(());
    }
    let admitted = match client {
        IpAddr::V4(c) => plan.admits(c, port),
        // Source lists are IPv4: an IPv6 client needs a door open to everyone.
        IpAddr::V6(_) => plan.doors.iter().any(|d| d.dnat_to.is_none() && d.ports.contains(&port) && d.from.is_empty()),
    };
    if admitted {
        Ok(())
    } else {
        Err(format!(
            "this plan would cut the SSH session it runs in ({client} to port {port}): set ssh_port/ssh_from in \
             config/firewall so that it stays open; nothing was changed"
        ))
    }
}

/// `firewall apply`: installs the plan now (refusing to cut `ssh`, the caller's `SSH_CONNECTION`).
pub async fn apply(
    ctx: &Ctx,
    backend: Option<Backend>,
    ssh: Option<&str>,
    confirm: Option<Duration>,
) -> Result<ApplyReport, OpsError> {
    let (_, plan, script) = planned(ctx, backend).await?;
    if let Some(ssh) = ssh {
        let public = plan.public_interface.clone();
        check_ssh(&plan, ssh, |server| match server {
            IpAddr::V4(ip) => {
                plan.public_ip == Some(ip)
                    || crate::sys::firewall::interface_holding(ip)
                        .is_some_and(|i| Some(i.as_str()) == public.as_ref().map(|p| p.as_str()))
            }
            // IPv6 addresses are not looked up: assume the public side, the careful answer.
            IpAddr::V6(_) => true,
        })
        .map_err(OpsError::Other)?;
    }
    let root = &ctx.cfg.root;
    let previous = engine::load_state(root).map_err(err)?;
    let hold = hold_path(root);
    let confirm_by = match confirm {
        Some(d) => {
            let deadline = now() + i64::try_from(d.as_secs().max(1)).unwrap_or(i64::MAX / 2);
            let h = Hold { deadline: Some(deadline), previous: previous.clone() };
            let text = serde_json::to_string(&h).map_err(|e| OpsError::Other(e.to_string()))?;
            crate::sys::fs::write_atomic(&hold, text.as_bytes(), 0o600)?;
            Some(deadline)
        }
        None => {
            let _ = std::fs::remove_file(&hold);
            None
        }
    };
    // An explicit apply always installs (atomically: whatever was edited by hand is put right too); reading the
    // installed rules first would only cost another run of the tool. `changed`: the plan differs from the last one
    // installed.
    let changed = previous.as_ref().is_none_or(|p| p.script != script);
    engine::install(root, &script, previous.as_ref(), now()).map_err(err)?;
    ctx.audit("firewall.apply", script.backend().as_str(), &script.hash(), ctx.clock.now()).await?;
    let mut warnings = plan.warnings.clone();
    if script.backend() == Backend::Ufw {
        warnings.extend(firewall::ufw::unsupported(&plan));
    }
    Ok(ApplyReport {
        backend: script.backend(),
        plan: script.hash(),
        changed,
        warnings,
        confirm_by: confirm_by.map(rfc3339),
    })
}

#[derive(Debug, Serialize)]
pub struct ConfirmReport {
    /// True: the applied rules stay. False: the deadline had passed and the previous rules came back.
    pub confirmed: bool,
}

/// `firewall confirm`: keeps the rules of a pending `apply --confirm` and lets `serve net` manage again.
pub async fn confirm(ctx: &Ctx) -> Result<ConfirmReport, OpsError> {
    let hold = hold_path(&ctx.cfg.root);
    let Some(text) = crate::sys::fs::read_optional(&hold)? else {
        return Err(OpsError::Other("no `firewall apply --confirm` waits for a confirmation".into()));
    };
    let h: Hold = serde_json::from_str(&text).map_err(|e| OpsError::Other(format!("{}: {e}", hold.display())))?;
    if h.deadline.is_none() {
        return Err(OpsError::Other(
            "too late: the previous rules came back; run `cas-vpn firewall apply` again to install the plan".into(),
        ));
    }
    std::fs::remove_file(&hold).map_err(|e| OpsError::Other(format!("{}: {e}", hold.display())))?;
    ctx.audit("firewall.confirm", "-", "", ctx.clock.now()).await?;
    let _ = crate::control::net::reload(&ctx.cfg.root).await;
    Ok(ConfirmReport { confirmed: true })
}

/// Waits for `firewall confirm` until the hold's deadline; then puts the previous rules back. `Ok(true)` when
/// confirmed.
pub async fn await_confirmation(ctx: &Ctx) -> Result<bool, OpsError> {
    let root = &ctx.cfg.root;
    let hold = hold_path(root);
    loop {
        let Some(text) = crate::sys::fs::read_optional(&hold)? else { return Ok(true) };
        let h: Hold = serde_json::from_str(&text).map_err(|e| OpsError::Other(format!("{}: {e}", hold.display())))?;
        let Some(deadline) = h.deadline else { return Ok(false) };
        if now() >= deadline {
            let backend = engine::load_state(root).map_err(err)?.map(|s| s.script.backend());
            match &h.previous {
                Some(prev) => {
                    engine::install(root, &prev.script, engine::load_state(root).map_err(err)?.as_ref(), now())
                        .map_err(err)?;
                }
                None => {
                    if let Some(b) = backend {
                        engine::remove(root, b, engine::load_state(root).map_err(err)?.as_ref()).map_err(err)?;
                    }
                }
            }
            let rolled = Hold { deadline: None, previous: None };
            let text = serde_json::to_string(&rolled).map_err(|e| OpsError::Other(e.to_string()))?;
            crate::sys::fs::write_atomic(&hold, text.as_bytes(), 0o600)?;
            ctx.audit("firewall.rollback", "-", "not confirmed in time", ctx.clock.now()).await?;
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Tells a running `serve net` that something the firewall depends on changed, and waits until the rules are in
/// force. No `serve net` running is fine (the next start plans from the store); a failure is logged, never fatal:
/// the change itself is done, and serve net's periodic check catches up.
pub async fn poke_net(ctx: &Ctx) {
    // Every other node re-plans its instances and its firewall too (several nodes on one store).
    if let Err(e) = ctx.store.publish_event(crate::db::EventKind::Reload, "store", None, ctx.clock.now()).await {
        tracing::warn!(error = %e, "cannot tell the other nodes to re-plan (they will within 30 s)");
    }
    match crate::control::net::reload(&ctx.cfg.root).await {
        Ok(None) | Ok(Some(crate::control::net::NetResponse::Reloaded { .. })) => {}
        Ok(Some(crate::control::net::NetResponse::Error { message })) => {
            tracing::warn!(%message, "serve net could not install the new firewall rules")
        }
        Err(e) => tracing::warn!(error = %e, "cannot reach serve net to update the firewall"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FirewallConfig;
    use crate::domain::parse_cidrs;
    use crate::firewall::Inputs;

    fn plan_with(ssh_from: &str, ssh_port: u16) -> Plan {
        let fw = FirewallConfig { ssh_from: parse_cidrs(ssh_from).unwrap(), ssh_port, ..FirewallConfig::default() };
        firewall::plan(&Inputs { fw, ..Inputs::example() })
    }

    #[test]
    fn a_plan_that_would_cut_the_ssh_session_is_refused() {
        let ssh = "192.0.2.7 50000 198.51.100.1 22";
        let public = |_| true;
        assert!(check_ssh(&plan_with("", 22), ssh, public).is_ok());
        assert!(check_ssh(&plan_with("192.0.2.0/24", 22), ssh, public).is_ok());
        let e = check_ssh(&plan_with("203.0.113.0/24", 22), ssh, public).unwrap_err();
        assert!(e.contains("would cut the SSH session"), "{e}");
        assert!(check_ssh(&plan_with("", 2222), ssh, public).is_err());
        // A session over another interface is not the plan's business.
        assert!(check_ssh(&plan_with("", 2222), ssh, |_| false).is_ok());
        assert!(check_ssh(&plan_with("", 22), "garbage", public).is_err());
    }
}
