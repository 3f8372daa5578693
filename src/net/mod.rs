//! `serve net` (root, or CAP_NET_ADMIN only): the one process that changes interfaces and firewall rules. This
//! module puts the service addresses on the service interface; the firewall (public doors, pairing-window DNAT,
//! tunnel isolation, drift repair) is `crate::firewall`, run in the same process by `daemon`. Holds no key.

use std::sync::Arc;

use tokio::sync::watch;

use crate::app::{AppError, Ctx};

/// How often the interface half re-reads the configuration (a live switch of `batm.vpn-skip`).
const RECHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// The interface half of `serve net`: makes the service addresses exist, then stays up until `stop` (so that a
/// supervisor sees it alive). A live switch to Scenario A puts them up (re-read every 30 s); a switch to B leaves
/// them: the operator's addresses may be the same ones, and nothing listens on them but our own services.
pub async fn run_net(ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>) -> Result<(), AppError> {
    let net = &ctx.cfg.network;
    let mut in_place = match ctx.cfg.active_vpn() {
        Some(vpn) => {
            crate::sys::net::ensure_dummy(
                vpn.interface.as_str(),
                &[net.master_bind_ip, net.admin_bind_ip, net.gate_bind_ip],
            )
            .map_err(|e| AppError::Other(format!("service interface {}: {e}", vpn.interface.as_str())))?;
            tracing::info!(interface = vpn.interface.as_str(), "service addresses in place");
            true
        }
        None => {
            tracing::warn!(
                why = ctx.cfg.scenario_reason(),
                "Scenario B: no service interface; the service addresses must already exist on this host"
            );
            false
        }
    };
    let mut every = tokio::time::interval(RECHECK_EVERY);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return Ok(()),
            _ = every.tick(), if !in_place => {}
        }
        let Ok(cfg) = crate::config::Config::load(&ctx.cfg.root) else { continue };
        let Some(vpn) = cfg.active_vpn() else { continue };
        let n = &cfg.network;
        match crate::sys::net::ensure_dummy(
            vpn.interface.as_str(),
            &[n.master_bind_ip, n.admin_bind_ip, n.gate_bind_ip],
        ) {
            Ok(()) => {
                tracing::info!(interface = vpn.interface.as_str(), "Scenario A now: service addresses in place");
                in_place = true;
            }
            Err(e) => tracing::error!(interface = vpn.interface.as_str(), error = %e, "service interface"),
        }
    }
}
