//! `cas-vpn serve [all|vpn|gate|master|admin]`: the long-running services, joined in one `select!`, stopped
//! gracefully on SIGTERM/SIGINT (every openvpn child is terminated before the process exits).

use std::sync::Arc;

use tokio::sync::watch;

use super::{Ctx, OpsError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Service {
    All,
    Vpn,
    Gate,
    Master,
    Admin,
}

pub async fn serve(ctx: Ctx, what: Service) -> Result<(), OpsError> {
    let ctx = Arc::new(ctx);
    let (stop_tx, stop) = watch::channel(false);
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
        let _ = stop_tx.send(true);
    });
    match what {
        Service::Vpn => crate::supervisor::service::run_vpn(ctx, stop).await,
        Service::All => {
            if ctx.vpn("the VPN").is_ok() {
                crate::supervisor::service::run_vpn(ctx, stop).await
            } else {
                tracing::warn!("Scenario B: no VPN instances run");
                let mut stop = stop;
                let _ = stop.wait_for(|s| *s).await;
                Ok(())
            }
        }
        Service::Gate | Service::Master | Service::Admin => Err(OpsError::Other(
            format!("`serve {what:?}` is not available in this version", what = what).to_lowercase(),
        )),
    }
}
