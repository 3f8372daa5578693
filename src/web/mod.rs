//! `serve admin`: the admin web UI and its JSON API, as user `batmadmin`, on `admin_bind_ip:7777` only (reachable
//! through the admin tunnels; invariant 1). HTTPS with a self-signed certificate `init` makes (its fingerprint is
//! in `init` and `status`), so that session cookies can be `Secure`.
//!
//! ```text
//!  browser ─► security headers ─► origin check (unsafe methods) ─► body limit ─► routes
//!     login · setup · enroll                      (no session, or a half-made one: auth.rs, login.rs)
//!     dashboard · terminals · admin-vpn · sessions · audit · users · account   (full session + CSRF)
//!     /api/v1/…                                   (API token, scopes read/write: api.rs)
//!     /metrics                                    (the metrics token: metrics.rs)
//! ```
//!
//! Every operation goes through `ops` with a context acting as the web user from their address, so the audit
//! trail reads the same for the UI, the API and the CLI. This process never holds a CA key: admin credentials
//! and CRLs come from the signer.

mod account;
mod admin_vpn;
pub mod api;
mod auth;
mod dashboard;
mod login;
pub mod metrics;
pub mod password;
mod terminals;
pub mod throttle;
pub mod totp;
mod users;
mod views;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use tokio::sync::watch;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::app::{AppError, Ctx};
use crate::http::ServeLimits;

pub use auth::{COOKIE, hash_secret};

/// Largest request body (forms and API requests are small).
pub const MAX_BODY: usize = 64 * 1024;

/// What every handler shares: the context (store, config, PKI, clock), login throttling and TOTP replay memory.
#[derive(Clone)]
pub struct WebState(Arc<Inner>);

pub struct Inner {
    pub ctx: Arc<Ctx>,
    pub throttle: Mutex<throttle::Throttle>,
    pub replay: totp::Replay,
    /// `https://admin_bind_ip:7777` (and `https://public_ip:7777` in bootstrap mode): the only `Origin`s a state
    /// change may come from.
    pub origins: Vec<String>,
}

impl std::ops::Deref for WebState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl WebState {
    pub fn new(ctx: Arc<Ctx>) -> WebState {
        let net = &ctx.cfg.network;
        let origin = |ip| format!("https://{ip}:{}", crate::config::ADMIN_UI_PORT);
        let mut origins = vec![origin(net.admin_bind_ip)];
        if let Some(public) = net.public_ip.filter(|_| ctx.cfg.firewall.admin_ui_bootstrap) {
            origins.push(origin(public));
        }
        WebState(Arc::new(Inner {
            ctx,
            throttle: Mutex::new(throttle::Throttle::default()),
            replay: totp::Replay::default(),
            origins,
        }))
    }

    /// Bootstrap mode is on (`config/firewall`) and no admin VPN session has ended it yet: the UI is also on the
    /// Internet, and every page says so.
    pub async fn bootstrap_active(&self) -> bool {
        self.ctx.cfg.firewall.admin_ui_bootstrap && matches!(self.ctx.store.bootstrap_ended().await, Ok(None))
    }
    pub fn now(&self) -> i64 {
        self.ctx.clock.now()
    }
    pub(crate) fn throttle(&self) -> std::sync::MutexGuard<'_, throttle::Throttle> {
        self.throttle.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What a page handler can fail with. Responses never carry internals: an internal error is logged with a
/// reference the page shows.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Gone(String),
    #[error("too many attempts: try again in {0} s")]
    TooMany(i64),
    /// Not logged in (or the session ended): to the login page.
    #[error("log in first")]
    Login,
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<AppError> for WebError {
    fn from(e: AppError) -> Self {
        match e {
            // What an operator can act on is shown as it is: a name in use, no free port, bad input…
            AppError::Db(crate::db::DbError::NotFound { .. }) => WebError::NotFound,
            AppError::Db(
                d @ (crate::db::DbError::NameTaken { .. }
                | crate::db::DbError::PortsExhausted { .. }
                | crate::db::DbError::AddressesExhausted
                | crate::db::DbError::AlreadyRevoked { .. }),
            ) => WebError::BadRequest(d.to_string()),
            AppError::Domain(d) => WebError::BadRequest(d.to_string()),
            AppError::NoVpn { .. } | AppError::Other(_) => WebError::BadRequest(e.to_string()),
            other => WebError::Internal(other.to_string()),
        }
    }
}

impl From<crate::db::DbError> for WebError {
    fn from(e: crate::db::DbError) -> Self {
        WebError::from(AppError::from(e))
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let (status, message) = match &self {
            WebError::Login => return Redirect::to("/login").into_response(),
            WebError::NotFound => (StatusCode::NOT_FOUND, "Not found.".to_owned()),
            WebError::Forbidden(m) => (StatusCode::FORBIDDEN, m.clone()),
            WebError::BadRequest(m) => (StatusCode::BAD_REQUEST, m.clone()),
            WebError::Gone(m) => (StatusCode::GONE, m.clone()),
            WebError::TooMany(_) => (StatusCode::TOO_MANY_REQUESTS, self.to_string()),
            WebError::Internal(detail) => {
                let reference = hex::encode(rand::random::<[u8; 4]>());
                tracing::error!(%reference, error = %detail, "web request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, format!("Something went wrong (reference {reference})."))
            }
        };
        (status, views::Message::error(status, &message)).into_response()
    }
}

/// The router, without a socket (tests call it directly). Requests must carry `ConnectInfo<SocketAddr>` (the
/// server puts it there).
pub fn router(state: WebState) -> Router {
    let pages = Router::new()
        .route("/", get(dashboard::dashboard))
        .route("/login", get(login::login_page).post(login::login))
        .route("/login/totp", get(login::totp_page).post(login::totp))
        .route("/setup/{token}", get(login::setup_page).post(login::setup))
        .route("/enroll", get(login::enroll_page).post(login::enroll))
        .route("/logout", post(login::logout))
        .route("/pairing/open", post(dashboard::pairing_open))
        .route("/pairing/close", post(dashboard::pairing_close))
        .route("/pairing/{id}/approve", post(dashboard::pairing_approve))
        .route("/pairing/{id}/reject", post(dashboard::pairing_reject))
        .route("/terminals", get(terminals::list).post(terminals::add))
        .route("/terminals/revoke", post(terminals::bulk_revoke))
        .route("/terminals/{name}", get(terminals::show))
        .route("/terminals/{name}/revoke", post(terminals::revoke))
        .route("/admin-vpn", get(admin_vpn::list).post(admin_vpn::issue))
        .route("/admin-vpn/download/{ticket}", get(admin_vpn::download))
        .route("/admin-vpn/{name}/revoke", post(admin_vpn::revoke))
        .route("/sessions", get(dashboard::sessions))
        .route("/audit", get(dashboard::audit))
        .route("/audit.csv", get(dashboard::audit_csv))
        .route("/users", get(users::list).post(users::add))
        .route("/users/{name}/disable", post(users::disable))
        .route("/users/{name}/enable", post(users::enable))
        .route("/users/{name}/reset-totp", post(users::reset_totp))
        .route("/account", get(account::page_get))
        .route("/account/password", post(account::password))
        .route("/account/totp", post(account::renew_totp))
        .route("/account/logout-everywhere", post(account::logout_everywhere))
        .route("/account/tokens", post(account::create_token))
        .route("/account/tokens/{id}/revoke", post(account::revoke_token))
        .route("/events", get(dashboard::events))
        .route("/static/app.css", get(static_css))
        .route("/static/app.js", get(static_js))
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::same_origin_only));
    Router::new()
        .merge(pages)
        .nest("/api/v1", api::router())
        .route("/metrics", get(metrics::metrics))
        .fallback(not_found)
        .with_state(state)
        .layer(tower_http::limit::RequestBodyLimitLayer::new(MAX_BODY))
        .layer(SetResponseHeaderLayer::if_not_present(header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
        .layer(SetResponseHeaderLayer::overriding(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP)))
        .layer(SetResponseHeaderLayer::overriding(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")))
        .layer(SetResponseHeaderLayer::overriding(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")))
        .layer(SetResponseHeaderLayer::overriding(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")))
        .layer(SetResponseHeaderLayer::overriding(
            header::HeaderName::from_static("cross-origin-opener-policy"),
            HeaderValue::from_static("same-origin"),
        ))
}

/// No inline script or style anywhere; images only from here or `data:` (QR codes); nothing may frame the UI.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                       connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

async fn not_found() -> WebError {
    WebError::NotFound
}

async fn static_css() -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("text/css; charset=utf-8")),
            (header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600")),
        ],
        include_str!("../../templates/web/app.css"),
    )
        .into_response()
}

async fn static_js() -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("text/javascript; charset=utf-8")),
            (header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600")),
        ],
        include_str!("../../templates/web/app.js"),
    )
        .into_response()
}

/// Checks `ip` and binds `ip:7777`; refuses an address this host does not have (invariant 1).
pub async fn bind_admin(ip: std::net::Ipv4Addr, port: u16) -> Result<tokio::net::TcpListener, AppError> {
    crate::domain::check_tunnel_side_ip(ip, "the admin UI")
        .map_err(|why| AppError::Other(format!("admin refuses to start: {why}")))?;
    let addr = SocketAddr::from((ip, port));
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        let why = if e.kind() == std::io::ErrorKind::AddrNotAvailable {
            format!(
                "{ip} is not an address of this host (admin_bind_ip must be assigned here: is `serve net` running?)"
            )
        } else {
            e.to_string()
        };
        AppError::Other(format!("admin refuses to start on {addr}: {why}"))
    })?;
    match listener.local_addr() {
        Ok(a) if a.ip() == std::net::IpAddr::V4(ip) => Ok(listener),
        other => Err(AppError::Other(format!("admin bound to {other:?} instead of {ip}"))),
    }
}

/// `serve admin`: HTTPS on `admin_bind_ip:7777` until `stop` turns true; expired sessions are swept every minute.
pub async fn run_admin(ctx: Arc<Ctx>, stop: watch::Receiver<bool>) -> Result<(), AppError> {
    let (cert, key) = ctx.pki.read_web_tls()?;
    let tls = crate::http::server::tls_acceptor(&cert, &key)
        .map_err(|e| AppError::Other(format!("the web UI's certificate or key is unusable: {e}")))?;
    let listener = bind_admin(ctx.cfg.network.admin_bind_ip, crate::config::ADMIN_UI_PORT).await?;
    let state = WebState::new(ctx.clone());
    tracing::info!(addr = ?listener.local_addr().ok(), "admin UI listening");
    let sweeper = tokio::spawn(auth::sweep_forever(state.clone()));
    let bootstrap = tokio::spawn(watch_bootstrap(state.clone()));
    let limits = ServeLimits::admin();
    let served = crate::http::server::serve(listener, Some(tls), router(state), stop, limits).await;
    sweeper.abort();
    bootstrap.abort();
    served.map_err(|e| AppError::Other(format!("admin: {e}")))
}

/// In bootstrap mode, waits for the first admin VPN session (the vpn service records it) and then has `serve net`
/// close public 7777 at once (its drift check would, within its period).
async fn watch_bootstrap(state: WebState) {
    if !state.bootstrap_active().await {
        return;
    }
    tracing::warn!("BOOTSTRAP MODE: the web UI answers on public_ip:7777 until the first admin VPN session");
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    while state.bootstrap_active().await {
        tick.tick().await;
    }
    tracing::info!("bootstrap mode ended: public 7777 closes");
    if let Err(e) = crate::control::net::reload(&state.ctx.cfg.root).await {
        tracing::warn!(error = %e, "could not tell serve net to close public 7777 (its drift check will)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn admin_binds_only_a_tunnel_side_address() {
        for refused in ["0.0.0.0", "8.8.8.8", "1.1.1.1"] {
            let err = bind_admin(refused.parse().unwrap(), 0).await.expect_err(refused).to_string();
            assert!(err.starts_with("admin refuses to start"), "{err}");
        }
        // A private address this host does not have: refused, naming why.
        let err = bind_admin("10.255.254.253".parse().unwrap(), 0).await.expect_err("not local").to_string();
        assert!(err.contains("is not an address of this host"), "{err}");
        let l = bind_admin("127.0.0.1".parse().unwrap(), 0).await.unwrap();
        assert_eq!(l.local_addr().unwrap().ip(), std::net::IpAddr::from([127, 0, 0, 1]));
    }
}
