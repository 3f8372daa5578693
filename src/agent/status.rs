//! The agent's status endpoint: what master's prober asks when a terminal's heartbeats stopped while its tunnel is
//! up (`master::probe`). `GET /v1/status` → `wire::AgentStatus` (terminal, version, uptime, openvpn running, the
//! heartbeat's `status` object).
//!
//! Exposure, narrowest first:
//! - it listens only on the terminal's own **tunnel address**, port `wire::AGENT_STATUS_PORT` (7744), and only
//!   while openvpn runs. The address is the one the kernel would use as the source towards master
//!   (`sys::net::source_address_towards`), accepted only when a tun device holds it (`sys::net::tun_holding`):
//!   exactly the address master sees the heartbeats come from, whatever the tun device is called and whichever
//!   `remote` the client reached; no script (`--up` would need `script-security 2` on an ATM) and no parsing of
//!   openvpn's output. Before the tunnel is up the route to master goes elsewhere (the LAN), so nothing listens.
//!   It is looked at again every [`RECHECK`] and the listener moves when the address changes;
//! - connections from any address but master's (`master.json`'s host) are closed before TLS
//!   (`ServeLimits::agent_status`);
//! - mutual TLS: the agent presents its terminal certificate; the caller must present a certificate of the
//!   terminal CA (the one the agent got at pairing) that names master's address or host name, as master's
//!   certificate does and no terminal's does;
//! - budgets: one connection at a time, 3 s for the handshake and the request head, 10 s in all, no keep-alive,
//!   no request body read at all.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::{AgentError, MasterFile, identity};
use crate::http::mtls::{self, PeerCertificate};
use crate::http::{ApiError, ServeLimits, server};
use crate::wire::{AGENT_STATUS_PORT, AgentStatus};

/// How often the tunnel address is looked at (and the listener moved or stopped).
pub const RECHECK: Duration = Duration::from_secs(2);

/// What the endpoint reports, shared with the run loop.
#[derive(Debug)]
pub struct Shared {
    pub terminal: String,
    pub version: String,
    pub dir: PathBuf,
    started: Instant,
    openvpn: AtomicBool,
}

impl Shared {
    pub fn new(terminal: String, version: String, dir: PathBuf) -> Arc<Shared> {
        Arc::new(Shared { terminal, version, dir, started: Instant::now(), openvpn: AtomicBool::new(false) })
    }

    pub fn set_openvpn_running(&self, on: bool) {
        self.openvpn.store(on, Ordering::Relaxed);
    }

    pub fn openvpn_running(&self) -> bool {
        self.openvpn.load(Ordering::Relaxed)
    }

    fn report(&self) -> AgentStatus {
        let running = self.openvpn_running();
        AgentStatus {
            terminal: self.terminal.clone(),
            version: self.version.clone(),
            uptime_secs: self.started.elapsed().as_secs(),
            openvpn: (if running { "running" } else { "stopped" }).into(),
            status: super::run::heartbeat_status(&self.dir, running),
        }
    }
}

/// Who may ask: master's address (connections from anywhere else are closed) and the name its certificate
/// must carry.
#[derive(Debug, Clone)]
pub struct Master {
    pub ip: IpAddr,
    pub name: String,
}

impl Master {
    /// From `master.json`: its host is master's address, or a name resolved here.
    pub async fn resolve(m: &MasterFile) -> Result<Master, AgentError> {
        let ip = match m.host.parse::<IpAddr>() {
            Ok(ip) => ip,
            Err(_) => tokio::net::lookup_host((m.host.as_str(), m.port))
                .await
                .map_err(|e| AgentError::Local(format!("cannot resolve master's host {}: {e}", m.host)))?
                .next()
                .map(|a| a.ip())
                .ok_or_else(|| AgentError::Local(format!("master's host {} has no address", m.host)))?,
        };
        Ok(Master { ip, name: m.host.clone() })
    }
}

#[derive(Clone)]
struct St {
    shared: Arc<Shared>,
    master: Arc<Master>,
}

/// The endpoint's routes, behind the check of the caller's certificate.
pub fn router(shared: Arc<Shared>, master: Master) -> Router {
    let st = St { shared, master: Arc::new(master) };
    Router::new()
        .route("/v1/status", get(status))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::middleware::from_fn_with_state(st.clone(), only_master))
        .with_state(st)
}

async fn only_master(
    State(st): State<St>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    let from_master = server::peer_ip(&peer) == st.master.ip;
    let cert_is_master =
        req.extensions().get::<PeerCertificate>().is_some_and(|c| mtls::names_ip(&c.0, &st.master.name));
    if from_master && cert_is_master {
        next.run(req).await
    } else {
        tracing::warn!(%peer, "agent status: refused a caller that is not master");
        ApiError::Forbidden.into_response()
    }
}

async fn status(State(st): State<St>) -> Json<AgentStatus> {
    Json(st.shared.report())
}

/// Serves the endpoint on `listener` until `stop` turns true (tests bind where they like; [`keep_serving`] binds
/// the tunnel address).
pub async fn serve_on(
    listener: TcpListener,
    dir: &Path,
    shared: Arc<Shared>,
    master: Master,
    stop: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    let id = identity(dir)?;
    let tls = mtls::peer_acceptor(&id.cert_pem, &id.key_pem, &id.ca_pem)
        .map_err(|e| AgentError::Local(format!("status endpoint TLS: {e}")))?;
    let limits = ServeLimits::agent_status(master.ip);
    server::serve(listener, Some(tls), router(shared, master), stop, limits)
        .await
        .map_err(|e| AgentError::Local(format!("status endpoint: {e}")))
}

/// The tunnel address to serve on: the source address towards master, when a tun device holds it.
pub fn tunnel_address(master: IpAddr) -> Option<IpAddr> {
    let ip = crate::sys::net::source_address_towards(master).ok()?;
    crate::sys::net::tun_holding(ip).map(|_| ip)
}

/// Keeps the endpoint on the tunnel address while openvpn runs, moving it when the address (or the certificate,
/// after a renewal) changes, until `stop` turns true.
pub async fn keep_serving(shared: Arc<Shared>, master: Master, mut stop: watch::Receiver<bool>) {
    // (address, certificate) served now, and the running server's stop switch.
    let mut current: Option<(IpAddr, String, watch::Sender<bool>)> = None;
    loop {
        let wanted = if shared.openvpn_running() { tunnel_address(master.ip) } else { None };
        let cert = identity(&shared.dir).map(|i| i.cert_pem).unwrap_or_default();
        let same = matches!((&current, wanted), (Some((ip, c, _)), Some(w)) if *ip == w && *c == cert);
        if !same {
            if let Some((ip, _, off)) = current.take() {
                let _ = off.send(true);
                tracing::info!(%ip, "agent status endpoint stopped");
            }
            if let Some(ip) = wanted {
                match TcpListener::bind((ip, AGENT_STATUS_PORT)).await {
                    Ok(listener) => {
                        let (off, rx) = watch::channel(false);
                        let (dir, sh, m) = (shared.dir.clone(), shared.clone(), master.clone());
                        tokio::spawn(async move {
                            if let Err(e) = serve_on(listener, &dir, sh, m, rx).await {
                                tracing::warn!(error = %e, "agent status endpoint");
                            }
                        });
                        tracing::info!(%ip, port = AGENT_STATUS_PORT, "agent status endpoint listening");
                        current = Some((ip, cert, off));
                    }
                    Err(e) => tracing::warn!(%ip, error = %e, "agent status endpoint: cannot listen"),
                }
            }
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            _ = tokio::time::sleep(RECHECK) => {}
        }
    }
    if let Some((_, _, off)) = current {
        let _ = off.send(true);
    }
}
