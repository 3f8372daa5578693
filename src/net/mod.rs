//! `serve net` (root, or CAP_NET_ADMIN only): the one place that changes interfaces and firewall rules. Today it
//! puts the service addresses on the service interface and installs the tunnel isolation table; the firewall
//! (public doors, pairing-window DNAT, drift repair) will live here too. Holds no key.

use std::sync::Arc;

use tokio::sync::watch;

use crate::app::{AppError, Ctx};

/// `serve net`: makes the service addresses and isolation rules exist, then stays up until `stop` (so that a
/// supervisor sees it alive, and the rules it will keep in force have an owner).
pub async fn run_net(ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>) -> Result<(), AppError> {
    let net = &ctx.cfg.network;
    match ctx.cfg.active_vpn() {
        Some(vpn) => {
            crate::sys::net::ensure_dummy(
                vpn.interface.as_str(),
                &[net.master_bind_ip, net.admin_bind_ip, net.gate_bind_ip],
            )
            .map_err(|e| AppError::Other(format!("service interface {}: {e}", vpn.interface.as_str())))?;
            crate::sys::net::apply_isolation(net.master_bind_ip, net.admin_bind_ip)
                .map_err(|e| AppError::Other(format!("tunnel isolation rules: {e}")))?;
            tracing::info!(interface = vpn.interface.as_str(), "service addresses and isolation rules in place");
        }
        None => tracing::warn!(
            why = ctx.cfg.scenario_reason(),
            "Scenario B: no service interface; the service addresses must already exist on this host"
        ),
    }
    let _ = stop.wait_for(|s| *s).await;
    Ok(())
}
