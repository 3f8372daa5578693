//! master (`serve master`): HTTPS with mutual TLS on `master_bind_ip:7741`.
//!
//! Who is asking is decided by the client certificate: the handshake requires one verified against the terminal
//! CA (`http::mtls`), and master then looks its serial up in the store: it must be an unrevoked certificate of a
//! paired, non-revoked terminal, and that terminal is the caller. Under Scenario A (cas-vpn runs the VPN) the TCP
//! source must in addition be the tunnel address of a live session of that same terminal, so a certificate copied
//! off one terminal is useless from another's tunnel or from outside the VPN. Under Scenario B there is no tunnel
//! (the operator's own VPN router is in front), and the certificate alone identifies the terminal. The scenario
//! follows the configuration while master runs (re-read every 30 s and on SIGHUP). Anything else
//! gets 403 on every path, or no TLS session at all (invariant 2). master listens on that one address only and
//! refuses to start on 0.0.0.0, `::`, a public address or an address this host does not have (invariant 1).
//!
//! Endpoints: `POST /v1/heartbeat` (version, status; the store keeps last seen; the answer says from when to renew)
//! and `POST /v1/renew` (CSR in, new certificate out, only from the current certificate's renewal point, spread
//! per certificate over the first half of its renewal window: `renewal`; a retry with the same key gets the same
//! certificate). A renewed certificate works on the next connection: the store knows its serial. Why a renewal
//! failed is kept per terminal until one succeeds (`renewal`).

mod renewal;

pub mod probe;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use openssl::ssl::SslAcceptor;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::app::{AppError, Ctx, csr, new_cert, rfc3339};
use crate::config::VpnConfig;
use crate::control::signer;
use crate::db::{CertRow, Credential};
use crate::domain::renewal::RenewalPolicy;
use crate::domain::{Actor, Kind};
use crate::http::mtls::{self, PeerCertificate};
use crate::http::{ApiError, ServeLimits, read_json, server};
use crate::wire::{HeartbeatRequest, HeartbeatResponse, RenewRequest, RenewResponse, SERVICE_PORT, version_date};

/// Everything master's handlers share. Cheap to clone.
#[derive(Clone)]
pub struct MasterState(Arc<Inner>);

struct Inner {
    ctx: Arc<Ctx>,
    /// When terminals may renew (`renew_before_days`).
    renewal: RenewalPolicy,
    /// Scenario A: a caller must also come from its own live tunnel address. Follows the configuration while
    /// master runs (`recheck_scenario`), so a switch of `batm.vpn-skip` needs no restart.
    tunnel_required: AtomicBool,
    /// master's certificate and key, client certificates verified against the terminal CA.
    tls: SslAcceptor,
}

impl MasterState {
    /// Reads the scenario from the configuration and master's TLS material from `pki/` (made by `init`).
    pub fn new(ctx: Arc<Ctx>) -> Result<MasterState, AppError> {
        let tunnel_required = ctx.cfg.active_vpn().is_some();
        MasterState::with_scenario(ctx, tunnel_required)
    }

    /// As [`MasterState::new`], with the scenario given: `tunnel_required` is Scenario A.
    pub fn with_scenario(ctx: Arc<Ctx>, tunnel_required: bool) -> Result<MasterState, AppError> {
        let defaults = VpnConfig::default();
        let vpn = ctx.cfg.vpn.as_ref().unwrap_or(&defaults);
        let renew_days = vpn.renew_before_days;
        let (cert, key, ca) = ctx.pki.read_master_tls().map_err(|e| {
            AppError::Other(format!("master has no TLS certificate ({e}): run `cas-vpn init` to make it"))
        })?;
        let tls = mtls::server_acceptor(&cert, &key, &ca).map_err(|e| AppError::Other(format!("master: {e}")))?;
        Ok(MasterState(Arc::new(Inner {
            ctx,
            renewal: RenewalPolicy::from_days(renew_days),
            tunnel_required: AtomicBool::new(tunnel_required),
            tls,
        })))
    }
}

impl MasterState {
    /// Re-reads the configuration and takes its scenario: Scenario A requires the caller's own tunnel address,
    /// Scenario B the certificate alone. Logs one INFO line when that changed and returns whether it did; a
    /// configuration that does not load changes nothing (logged).
    pub fn recheck_scenario(&self) -> bool {
        let cfg = match crate::config::Config::load(&self.0.ctx.cfg.root) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "master: the configuration does not load; keeping the scenario");
                return false;
            }
        };
        let required = cfg.active_vpn().is_some();
        if self.0.tunnel_required.swap(required, Ordering::Relaxed) == required {
            return false;
        }
        if required {
            tracing::info!(
                "master: Scenario A now (cas-vpn runs the VPN): a terminal must also come from its own tunnel"
            );
        } else {
            tracing::info!(
                why = cfg.scenario_reason(),
                "master: Scenario B now (no VPN): the certificate alone identifies a terminal"
            );
        }
        true
    }
}

/// How often master re-reads the configuration's scenario (also on SIGHUP).
const RECHECK_EVERY: Duration = Duration::from_secs(30);

/// Keeps `state`'s scenario in step with the configuration until `stop` turns true.
async fn follow_config(state: MasterState, mut stop: watch::Receiver<bool>) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        tracing::warn!("master: no SIGHUP handler; the scenario is re-read every 30 s only");
        return;
    };
    let mut every = tokio::time::interval(RECHECK_EVERY);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = every.tick() => {}
            _ = hup.recv() => {}
        }
        state.recheck_scenario();
    }
}

/// The terminal a request comes from, once identified.
#[derive(Clone)]
struct Caller(Arc<Credential>);

/// master's routes; every one of them sits behind the identification of the caller.
pub fn router(state: MasterState) -> Router {
    Router::new()
        .route("/v1/heartbeat", post(heartbeat))
        .route("/v1/renew", post(renew))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::middleware::from_fn_with_state(state.clone(), identify))
        .with_state(state)
}

/// Lets a request through only with the certificate of a paired, non-revoked terminal (and, under Scenario A,
/// from that terminal's live tunnel address).
async fn identify(
    State(st): State<MasterState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    let ip = server::peer_ip(&peer).to_string();
    let cert = req.extensions().get::<PeerCertificate>().cloned();
    match caller(&st, cert.as_ref(), &ip).await {
        Ok(Ok(c)) => {
            req.extensions_mut().insert(Caller(Arc::new(c)));
            next.run(req).await
        }
        Ok(Err(why)) => {
            tracing::warn!(ip, why, "master: request refused");
            ApiError::Forbidden.into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// The terminal the certificate (and, under Scenario A, the tunnel address) names; `Err(why)` when none.
async fn caller(
    st: &MasterState,
    cert: Option<&PeerCertificate>,
    ip: &str,
) -> Result<Result<Credential, &'static str>, ApiError> {
    let store = &st.0.ctx.store;
    let Some(cert) = cert else { return Ok(Err("no client certificate")) };
    let Some(serial) = mtls::serial_hex(&cert.0) else { return Ok(Err("unreadable client certificate")) };
    let Some(row) = store.certificate_by_serial(&serial).await? else { return Ok(Err("unknown certificate")) };
    // The CA signed it, so the serial is enough; comparing the bytes as well costs nothing and needs no argument.
    if pem_der(&row.cert_pem).as_deref() != Some(cert.0.as_slice()) {
        return Ok(Err("certificate differs from the stored one"));
    }
    if row.ca != Kind::Terminal || row.revoked_at.is_some() {
        return Ok(Err("certificate revoked or not a terminal's"));
    }
    let Some(id) = row.credential_id else { return Ok(Err("certificate of no terminal")) };
    let Some(c) = store.credential_by_id(id).await? else { return Ok(Err("certificate of no terminal")) };
    if c.kind != Kind::Terminal || c.is_revoked() || c.paired_at.is_none() {
        return Ok(Err("terminal revoked or not paired"));
    }
    if st.0.tunnel_required.load(Ordering::Relaxed) {
        let Some(session) = store.session_by_tunnel_ip(ip).await? else {
            return Ok(Err("not the address of a live tunnel"));
        };
        if session.credential_id != c.id || session.common_name != c.name.as_str() {
            return Ok(Err("the tunnel is another terminal's"));
        }
    }
    Ok(Ok(c))
}

fn pem_der(pem: &str) -> Option<Vec<u8>> {
    openssl::x509::X509::from_pem(pem.as_bytes()).ok()?.to_der().ok()
}

async fn heartbeat(
    State(st): State<MasterState>,
    Extension(Caller(c)): Extension<Caller>,
    presented: Option<Extension<PeerCertificate>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    let req: HeartbeatRequest = read_json(&headers, body).await?;
    if version_date(&req.version).is_none() {
        return Err(ApiError::InvalidRequest("version must start with YYYYMMDD, e.g. 20240115".into()));
    }
    let failed = renewal::reported_failure(&req.status)?;
    let now = st.0.ctx.clock.now();
    st.0.ctx.store.touch_terminal(c.id, &req.version, now).await?;
    if let Some(f) = &failed {
        renewal::note_reported(&st.0.ctx, &c, f, now).await?;
    }
    probe::on_heartbeat(&st, c.id, c.name.as_str(), now).await;
    let current = current_cert(&st, &c).await?;
    let renew_after = match &current {
        Some(cur) => {
            Some(renewal::renew_after(&st.0.ctx, st.0.renewal, cur, presented.as_ref().map(|Extension(p)| p)).await?)
        }
        None => None,
    };
    tracing::debug!(terminal = %c.name, version = %req.version, "heartbeat");
    Ok(Json(HeartbeatResponse {
        terminal: c.name.to_string(),
        cert_not_after: current.as_ref().map(|x| x.not_after),
        renew_after,
    }))
}

async fn renew(
    State(st): State<MasterState>,
    Extension(Caller(c)): Extension<Caller>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<RenewResponse>, ApiError> {
    let now = st.0.ctx.clock.now();
    match renew_certificate(&st, &c, headers, body, now).await {
        Ok(r) => Ok(r),
        Err(f) => {
            renewal::note_failure(&st.0.ctx, &c, &f, now).await;
            Err(f.answer)
        }
    }
}

async fn renew_certificate(
    st: &MasterState,
    c: &Credential,
    headers: HeaderMap,
    body: Body,
    now: i64,
) -> Result<Json<RenewResponse>, renewal::Failure> {
    let req: RenewRequest = read_json(&headers, body).await?;
    let checked = csr::check(&req.csr, Some(c.name.as_str()))?;
    let current = current_cert(st, c).await?;
    if let Some(cur) = &current {
        // A retry with the key of the newest certificate gets that certificate again (a lost answer).
        if spki_sha256(&cur.cert_pem).is_some_and(|h| h == checked.csr.public_key_sha256()) {
            st.0.ctx.store.clear_renewal_failure(c.id).await?;
            return Ok(Json(RenewResponse { cert: cur.cert_pem.clone() }));
        }
        // From the point heartbeats announce, not from the window's opening: that is what spreads a batch.
        let from = st.0.renewal.point(&cur.serial, cur.not_after);
        if now < from {
            return Err(ApiError::NotInRenewalWindow(rfc3339(from)).into());
        }
    }
    let (cert_pem, _) = match signer::sign(&st.0.ctx.cfg.root, Kind::Terminal, &c.name, &req.csr).await {
        Ok(signed) => signed,
        Err(e) => {
            let detail = format!("the signer did not sign: {e}");
            return Err(renewal::Failure { answer: ApiError::internal(&e), code: "signer_unavailable", detail });
        }
    };
    let new = new_cert(&cert_pem).map_err(ApiError::from)?;
    st.0.ctx.store.add_renewed_certificate(c.id, &new, now).await?;
    st.0.ctx
        .store
        .audit(&Actor::Master, "terminal.renew", c.name.as_str(), &format!("serial {}", new.serial), now)
        .await?;
    tracing::info!(terminal = %c.name, serial = %new.serial, "certificate renewed");
    Ok(Json(RenewResponse { cert: cert_pem }))
}

/// The terminal's newest valid certificate.
async fn current_cert(st: &MasterState, c: &Credential) -> Result<Option<CertRow>, ApiError> {
    Ok(st
        .0
        .ctx
        .store
        .certificates_of(c.id)
        .await?
        .into_iter()
        .filter(|x| x.revoked_at.is_none())
        .max_by_key(|x| x.not_after))
}

fn spki_sha256(cert_pem: &str) -> Option<[u8; 32]> {
    let x = openssl::x509::X509::from_pem(cert_pem.as_bytes()).ok()?;
    Some(Sha256::digest(x.public_key().ok()?.public_key_to_der().ok()?).into())
}

/// Whether master may listen on `ip` (see `domain::check_tunnel_side_ip`).
pub fn check_bind_ip(ip: Ipv4Addr) -> Result<(), String> {
    crate::domain::check_tunnel_side_ip(ip, "master")
}

/// Checks `ip` and binds `ip:port`; refuses an address this host does not have.
pub async fn bind_master(ip: Ipv4Addr, port: u16) -> Result<TcpListener, AppError> {
    check_bind_ip(ip).map_err(|why| AppError::Other(format!("master refuses to start: {why}")))?;
    let addr = SocketAddr::from((ip, port));
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        let why = if e.kind() == std::io::ErrorKind::AddrNotAvailable {
            format!("{ip} is not an address of this host (master_bind_ip must be assigned here)")
        } else {
            e.to_string()
        };
        AppError::Other(format!("master refuses to start on {addr}: {why}"))
    })?;
    match listener.local_addr() {
        Ok(a) if a.ip() == std::net::IpAddr::V4(ip) => Ok(listener),
        other => Err(AppError::Other(format!("master bound to {other:?} instead of {ip}"))),
    }
}

/// `serve master`: `master_bind_ip:7741` until `stop` turns true.
pub async fn run_master(ctx: Arc<Ctx>, stop: watch::Receiver<bool>) -> Result<(), AppError> {
    let listener = bind_master(ctx.cfg.network.master_bind_ip, SERVICE_PORT).await?;
    let state = MasterState::new(ctx)?;
    let follow = tokio::spawn(follow_config(state.clone(), stop.clone()));
    let prober = tokio::spawn(probe::run(state.clone(), stop.clone()));
    let served = run_master_on(state, listener, stop).await;
    follow.abort();
    prober.abort();
    served
}

/// Serves master on an already bound listener (use [`bind_master`] to get one).
pub async fn run_master_on(
    state: MasterState,
    listener: TcpListener,
    stop: watch::Receiver<bool>,
) -> Result<(), AppError> {
    let limits = ServeLimits::master(state.0.ctx.cfg.active_vpn().is_some());
    tracing::info!(addr = ?listener.local_addr().ok(), "master listening");
    let tls = state.0.tls.clone();
    server::serve(listener, Some(tls), router(state), stop, limits)
        .await
        .map_err(|e| AppError::Other(format!("master: {e}")))
}
