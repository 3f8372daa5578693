//! Who is asking: server-side sessions behind a `__Host-` cookie (`Secure; HttpOnly; SameSite=Strict`), with an
//! idle (30 min) and an absolute (12 h) timeout; the CSRF token of each session; and the same-origin check every
//! state-changing request passes before any handler runs.
//!
//! The cookie holds 256 random bits; the store holds only their SHA-256, so a copy of the database opens no
//! session. A session id is replaced at every step up (password → TOTP → full), so an id seen before login is
//! worth nothing after it.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

use super::{WebError, WebState};
use crate::app::Ctx;
use crate::db::{Stage, WebSession, WebUser};
use crate::domain::Actor;

/// The session cookie. `__Host-`: the browser keeps it only if it is `Secure`, has `Path=/` and no `Domain`.
pub const COOKIE: &str = "__Host-cas-vpn";
/// A session unused this long ends.
pub const IDLE_TIMEOUT: i64 = 30 * 60;
/// No session lives longer than this.
pub const ABSOLUTE_TIMEOUT: i64 = 12 * 3600;
/// A half-made login (password given, code not yet) must be finished within this.
pub const LOGIN_STEP_TIMEOUT: i64 = 5 * 60;
/// `last_seen` is written at most this often (a write per request would make every page a write).
const TOUCH_EVERY: i64 = 60;

pub use crate::app::secret::{hash_secret, new_secret};

/// Constant-time equality of two short strings.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

pub fn set_cookie(value: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("{COOKIE}={value}; Path=/; Secure; HttpOnly; SameSite=Strict"))
        .expect("base64 is a valid header value")
}

pub fn clear_cookie() -> HeaderValue {
    HeaderValue::from_str(&format!("{COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0"))
        .expect("static header")
}

/// The session cookie's value, if the request has one.
pub fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_owned())
        .filter(|v| !v.is_empty() && v.len() <= 64)
}

/// The client's address: the TCP peer (never a header).
pub fn source(parts: &Parts) -> IpAddr {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |c| crate::http::server::peer_ip(&c.0))
}

/// A session and its user, as found from the cookie.
#[derive(Debug, Clone)]
pub struct Session {
    pub row: WebSession,
    pub user: WebUser,
    pub source: IpAddr,
    /// Bootstrap mode is on: pages show the banner.
    pub bootstrap: bool,
}

impl Session {
    /// The context operations run with: acting as this web user, from this address.
    pub fn ctx(&self, state: &WebState) -> Ctx {
        state.ctx.acting_as(Actor::WebUser(self.user.name.clone()), Some(self.source.to_string()))
    }
    /// The CSRF token a form sent must be this session's. Forms default a missing `csrf` field to "" so that a
    /// form without one is refused here (403) like a wrong one, not by the form extractor (422).
    pub fn check_csrf(&self, sent: &str) -> Result<(), WebError> {
        if same(sent, &self.row.csrf) {
            Ok(())
        } else {
            Err(WebError::Forbidden("the form is stale or did not come from this page: reload it and try again".into()))
        }
    }
    pub fn csrf(&self) -> &str {
        &self.row.csrf
    }
}

/// The live session of this request (any stage), ended here if it timed out or its user was disabled.
pub async fn current(state: &WebState, parts: &Parts) -> Result<Option<Session>, WebError> {
    let Some(cookie) = cookie_value(&parts.headers) else { return Ok(None) };
    let id_hash = hash_secret(&cookie);
    let Some(row) = state.ctx.store.web_session(&id_hash).await? else { return Ok(None) };
    let now = state.now();
    let step_limit = if row.stage == Stage::Full { IDLE_TIMEOUT } else { LOGIN_STEP_TIMEOUT };
    let user = state.ctx.store.web_user(row.user_id).await?.filter(|u| u.disabled_at.is_none());
    let expired = now - row.last_seen > step_limit || now - row.created_at > ABSOLUTE_TIMEOUT;
    let Some(user) = user.filter(|_| !expired) else {
        state.ctx.store.delete_web_session(&id_hash).await?;
        return Ok(None);
    };
    if now - row.last_seen >= TOUCH_EVERY {
        state.ctx.store.touch_web_session(&id_hash, now).await?;
    }
    Ok(Some(Session { row, user, source: source(parts), bootstrap: state.bootstrap_active().await }))
}

/// Starts a session for `user` at `stage` (ending the request's old one, if any); returns the cookie to set.
pub async fn start(
    state: &WebState,
    user: &WebUser,
    stage: Stage,
    pending_totp: Option<String>,
    replacing: Option<&WebSession>,
    from: IpAddr,
) -> Result<HeaderValue, WebError> {
    if let Some(old) = replacing {
        state.ctx.store.delete_web_session(&old.id_hash).await?;
    }
    let id = new_secret();
    let now = state.now();
    state
        .ctx
        .store
        .create_web_session(&WebSession {
            id_hash: hash_secret(&id),
            user_id: user.id,
            stage,
            csrf: new_secret(),
            source: from.to_string(),
            created_at: now,
            last_seen: now,
            pending_totp,
        })
        .await?;
    Ok(set_cookie(&id))
}

/// A fully logged-in session (password and TOTP). Anything less goes to the login page.
pub struct Authed(pub Session);

impl FromRequestParts<WebState> for Authed {
    type Rejection = WebError;
    async fn from_request_parts(parts: &mut Parts, state: &WebState) -> Result<Self, Self::Rejection> {
        match current(state, parts).await? {
            Some(s) if s.row.stage == Stage::Full => Ok(Authed(s)),
            _ => Err(WebError::Login),
        }
    }
}

/// Any session, at any stage (the login steps).
pub struct AnySession(pub Option<Session>);

impl FromRequestParts<WebState> for AnySession {
    type Rejection = WebError;
    async fn from_request_parts(parts: &mut Parts, state: &WebState) -> Result<Self, Self::Rejection> {
        Ok(AnySession(current(state, parts).await?))
    }
}

/// The client's address, as an extractor.
pub struct Source(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for Source {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Source(source(parts)))
    }
}

/// Refuses a state-changing request that a browser says came from another site (`Sec-Fetch-Site`) or another
/// origin (`Origin`): a second lock beside the per-session CSRF token, and the only one on the login form, which
/// has no session yet.
pub async fn same_origin_only(State(state): State<WebState>, req: Request, next: Next) -> Result<Response, WebError> {
    if !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        let h = req.headers();
        let site = h.get("sec-fetch-site").and_then(|v| v.to_str().ok());
        if site.is_some_and(|s| s != "same-origin" && s != "none") {
            return Err(WebError::Forbidden("cross-site requests are refused".into()));
        }
        // `null`: what a browser sends for a same-origin form under `Referrer-Policy: no-referrer`; a cross-site
        // one is caught by `Sec-Fetch-Site` above (and by the CSRF token and the SameSite cookie behind it).
        if let Some(origin) = h.get(header::ORIGIN).and_then(|v| v.to_str().ok())
            && !state.origins.iter().any(|o| o == origin)
            && origin != "null"
        {
            return Err(WebError::Forbidden("requests from another origin are refused".into()));
        }
    }
    Ok(next.run(req).await)
}

/// Deletes timed-out sessions and expired download links every minute.
pub async fn sweep_forever(state: WebState) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
    loop {
        tick.tick().await;
        let now = state.now();
        match state.ctx.store.expire_web_sessions(now - IDLE_TIMEOUT, now - ABSOLUTE_TIMEOUT, now).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(sessions = n, "expired web sessions removed"),
            Err(e) => tracing::warn!(error = %e, "could not remove expired web sessions"),
        }
    }
}
