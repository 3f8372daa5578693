//! `cas-vpn serve [all|vpn|gate|master|admin]`: the long-running services, joined in one process, stopped
//! gracefully on SIGTERM/SIGINT (every openvpn child is terminated before the process exits).
//!
//! `all` runs the VPN (Scenario A only), the gate and master side by side on one shutdown signal: when one of them
//! fails, the others are told to stop too and the first error is reported.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;

use crate::app::{AppError, Ctx};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Service {
    All,
    Vpn,
    Gate,
    Master,
    Admin,
}

pub async fn serve(ctx: Ctx, what: Service) -> Result<(), AppError> {
    let ctx = Arc::new(ctx);
    let (stop_tx, stop) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let signals = stop_tx.clone();
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
        let _ = signals.send(true);
    });
    match what {
        Service::Vpn => crate::vpn::service::run_vpn(ctx, stop).await,
        Service::Gate => crate::gate::run_gate(ctx, stop).await,
        Service::Master => crate::master::run_master(ctx, stop).await,
        Service::All => {
            let vpn = ctx.vpn("the VPN").is_ok();
            if vpn {
                // The service addresses must exist before the gate and master bind them (run_vpn makes sure of
                // them too; doing it first here removes the race).
                let v = ctx.vpn("the VPN")?;
                let net = &ctx.cfg.network;
                crate::sys::net::ensure_dummy(
                    v.interface.as_str(),
                    &[net.master_bind_ip, net.admin_bind_ip, net.gate_bind_ip],
                )
                .map_err(|e| AppError::Other(format!("service interface {}: {e}", v.interface.as_str())))?;
            } else {
                tracing::warn!("Scenario B: no VPN instances run");
            }
            let vpn_task = {
                let (ctx, mut stop) = (ctx.clone(), stop.clone());
                async move {
                    if vpn {
                        crate::vpn::service::run_vpn(ctx, stop).await
                    } else {
                        let _ = stop.wait_for(|s| *s).await;
                        Ok(())
                    }
                }
            };
            let (a, b, c) = tokio::join!(
                stop_all_on_error(&stop_tx, "vpn", vpn_task),
                stop_all_on_error(&stop_tx, "gate", crate::gate::run_gate(ctx.clone(), stop.clone())),
                stop_all_on_error(&stop_tx, "master", crate::master::run_master(ctx.clone(), stop.clone())),
            );
            a.and(b).and(c)
        }
        Service::Admin => Err(AppError::Other(
            format!("`serve {what:?}` is not available in this version", what = what).to_lowercase(),
        )),
    }
}

/// Runs one service; if it fails (or ends while the others run), every other service is told to stop.
async fn stop_all_on_error(
    stop_tx: &watch::Sender<bool>,
    name: &'static str,
    service: impl Future<Output = Result<(), AppError>>,
) -> Result<(), AppError> {
    let r = service.await;
    if let Err(e) = &r {
        tracing::error!(service = name, error = %e, "service failed; stopping the others");
    }
    let _ = stop_tx.send(true);
    r
}
