//! My account: change the password (the current one first), see and end my sessions ("log out everywhere"),
//! and make or revoke API tokens (scoped read or write, expiring, shown once, stored hashed).

use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::auth::{self, Authed, Session};
use super::views::{Account, Nav, SessionView, TokenView};
use super::{WebError, WebState, password};
use crate::db::Scope;

/// API tokens start with this, so that a leaked one is recognisable (secret scanners, logs).
pub const TOKEN_PREFIX: &str = "cvapi_";
/// The longest an API token may live.
pub const MAX_TOKEN_DAYS: u32 = 365;

async fn page(
    state: &WebState,
    s: &Session,
    message: Option<String>,
    error: Option<String>,
    new_token: Option<String>,
) -> Result<Account, WebError> {
    let now = state.now();
    let store = &state.ctx.store;
    Ok(Account {
        nav: Nav::new(s, "account"),
        sessions: store.web_sessions_of(s.user.id).await?.iter().map(|x| SessionView::of(x, &s.row.id_hash)).collect(),
        tokens: store.api_tokens_of(s.user.id).await?.iter().map(|t| TokenView::of(t, now)).collect(),
        recovery_left: store.unused_recovery_codes(s.user.id).await?,
        message,
        error,
        new_token,
    })
}

pub async fn page_get(State(state): State<WebState>, Authed(s): Authed) -> Result<Response, WebError> {
    Ok(page(&state, &s, None, None, None).await?.into_response())
}

#[derive(Deserialize)]
pub struct PasswordForm {
    #[serde(default)]
    csrf: String,
    current: String,
    password: String,
    password2: String,
}

pub async fn password(
    State(state): State<WebState>,
    Authed(s): Authed,
    Form(f): Form<PasswordForm>,
) -> Result<Response, WebError> {
    s.check_csrf(&f.csrf)?;
    let phc = s.user.password_hash.clone().unwrap_or_default();
    let current = f.current;
    let ok = tokio::task::spawn_blocking(move || password::verify(&current, &phc))
        .await
        .map_err(|e| WebError::Internal(e.to_string()))?;
    let checked = if ok {
        password::check_policy(s.user.name.as_str(), &f.password, &f.password2).map_err(|e| e.to_string())
    } else {
        Err("the current password is wrong".to_owned())
    };
    if let Err(e) = checked {
        let p = page(&state, &s, None, Some(e), None).await?;
        return Ok((axum::http::StatusCode::BAD_REQUEST, p).into_response());
    }
    let new = f.password;
    let phc = tokio::task::spawn_blocking(move || password::hash(&new))
        .await
        .map_err(|e| WebError::Internal(e.to_string()))?
        .map_err(|e| WebError::Internal(e.to_string()))?;
    state.ctx.store.set_web_password(s.user.id, &phc).await?;
    s.ctx(&state).audit("web.password_changed", s.user.name.as_str(), "", state.now()).await?;
    Ok(page(&state, &s, Some("Password changed.".into()), None, None).await?.into_response())
}

#[derive(Deserialize)]
pub struct RenewTotpForm {
    csrf: String,
    current: String,
}

/// Replaces my authenticator: after the current password, TOTP and recovery codes are taken away, every session
/// of mine ends, and this browser continues at the enrolment step.
pub async fn renew_totp(
    State(state): State<WebState>,
    Authed(s): Authed,
    Form(f): Form<RenewTotpForm>,
) -> Result<Response, WebError> {
    s.check_csrf(&f.csrf)?;
    let phc = s.user.password_hash.clone().unwrap_or_default();
    let current = f.current;
    let ok = tokio::task::spawn_blocking(move || password::verify(&current, &phc))
        .await
        .map_err(|e| WebError::Internal(e.to_string()))?;
    if !ok {
        let p = page(&state, &s, None, Some("the current password is wrong".into()), None).await?;
        return Ok((axum::http::StatusCode::BAD_REQUEST, p).into_response());
    }
    state.ctx.store.reset_totp(s.user.id).await?;
    s.ctx(&state).audit("web.totp_renewed", s.user.name.as_str(), "by the user", state.now()).await?;
    let cookie = auth::start(&state, &s.user, crate::db::Stage::Enroll, None, None, s.source).await?;
    let mut h = HeaderMap::new();
    h.insert(header::SET_COOKIE, cookie);
    Ok((h, Redirect::to("/enroll")).into_response())
}

#[derive(Deserialize)]
pub struct CsrfOnly {
    #[serde(default)]
    csrf: String,
}

pub async fn logout_everywhere(
    State(state): State<WebState>,
    Authed(s): Authed,
    Form(f): Form<CsrfOnly>,
) -> Result<Response, WebError> {
    s.check_csrf(&f.csrf)?;
    let n = state.ctx.store.delete_web_sessions_of(s.user.id).await?;
    s.ctx(&state).audit("web.logout_everywhere", s.user.name.as_str(), &format!("{n} sessions"), state.now()).await?;
    let mut h = HeaderMap::new();
    h.insert(header::SET_COOKIE, auth::clear_cookie());
    Ok((h, Redirect::to("/login")).into_response())
}

#[derive(Deserialize)]
pub struct TokenForm {
    #[serde(default)]
    csrf: String,
    label: String,
    scope: String,
    days: u32,
}

pub async fn create_token(
    State(state): State<WebState>,
    Authed(s): Authed,
    Form(f): Form<TokenForm>,
) -> Result<Response, WebError> {
    s.check_csrf(&f.csrf)?;
    let label = f.label.trim();
    let scope: Result<Scope, String> = f.scope.parse();
    let problem = match (&scope, label.is_empty() || label.chars().count() > 64, f.days) {
        (Err(e), _, _) => Some(e.clone()),
        (_, true, _) => Some("give the token a label of 1 to 64 characters".to_owned()),
        (_, _, d) if d == 0 || d > MAX_TOKEN_DAYS => Some(format!("a token lives 1 to {MAX_TOKEN_DAYS} days")),
        _ => None,
    };
    if let Some(e) = problem {
        let p = page(&state, &s, None, Some(e), None).await?;
        return Ok((axum::http::StatusCode::BAD_REQUEST, p).into_response());
    }
    let scope = scope.map_err(WebError::BadRequest)?;
    let secret = format!("{TOKEN_PREFIX}{}", auth::new_secret());
    let now = state.now();
    let t = state
        .ctx
        .store
        .create_api_token(s.user.id, label, &auth::hash_secret(&secret), scope, now + i64::from(f.days) * 86_400, now)
        .await?;
    s.ctx(&state)
        .audit(
            "web.api_token_created",
            s.user.name.as_str(),
            &format!("token {} ({}, {})", t.id, t.label, scope.as_str()),
            now,
        )
        .await?;
    Ok(page(&state, &s, None, None, Some(secret)).await?.into_response())
}

pub async fn revoke_token(
    State(state): State<WebState>,
    Authed(s): Authed,
    Path(id): Path<i64>,
    Form(f): Form<CsrfOnly>,
) -> Result<Response, WebError> {
    s.check_csrf(&f.csrf)?;
    if state.ctx.store.revoke_api_token(s.user.id, id, state.now()).await? {
        s.ctx(&state).audit("web.api_token_revoked", s.user.name.as_str(), &format!("token {id}"), state.now()).await?;
    }
    Ok(Redirect::to("/account").into_response())
}
