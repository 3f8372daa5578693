//! `serve net` (root, or CAP_NET_ADMIN only): the one process that changes interfaces and firewall rules. This
//! module puts the service addresses on the service interface; the firewall (public doors, pairing-window DNAT,
//! tunnel isolation, drift repair) is `crate::firewall`, run in the same process by `daemon`. Holds no key.

use std::sync::Arc;

use tokio::sync::watch;

use crate::app::{AppError, Ctx};

/// The interface half of `serve net`: makes the service addresses exist, then stays up until `stop` (so that a
/// supervisor sees it alive).
pub async fn run_net(ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>) -> Result<(), AppError> {
    let net = &ctx.cfg.network;
    match ctx.cfg.active_vpn() {
        Some(vpn) => {
            crate::sys::net::ensure_dummy(
                vpn.interface.as_str(),
                &[net.master_bind_ip, net.admin_bind_ip, net.gate_bind_ip],
            )
            .map_err(|e| AppError::Other(format!("service interface {}: {e}", vpn.interface.as_str())))?;
            tracing::info!(interface = vpn.interface.as_str(), "service addresses in place");
        }
        None => tracing::warn!(
            why = ctx.cfg.scenario_reason(),
            "Scenario B: no service interface; the service addresses must already exist on this host"
        ),
    }
    let _ = stop.wait_for(|s| *s).await;
    Ok(())
}
