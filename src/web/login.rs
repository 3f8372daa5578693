//! Getting in: the one-time setup link (choose a password), the login (password, then a TOTP or recovery code),
//! TOTP enrolment (QR code, confirmed by a first code; recovery codes shown once) and logging out.
//!
//! ```text
//!  setup link ─► password set ─► [enroll] ─► recovery codes ─► full
//!  login: password ─► [password] ─► code ─► full        (no TOTP yet, or reset: ─► [enroll])
//! ```
//!
//! A wrong password or code counts against the source address (5 ban it for 15 minutes) and slows the user's next
//! password check; an unknown user name costs the same time as a wrong password.

use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::auth::{self, AnySession, Session, Source};
use super::throttle::{self, Verdict};
use super::views::{Enroll, LoginPage, Recovery, SetupPage, TotpPage};
use super::{WebError, WebState, password, totp};
use crate::db::{Stage, WebUser};
use crate::domain::Actor;

fn redirect_with_cookie(to: &str, cookie: axum::http::HeaderValue) -> Response {
    let mut h = HeaderMap::new();
    h.insert(header::SET_COOKIE, cookie);
    (h, Redirect::to(to)).into_response()
}

pub async fn login_page(State(state): State<WebState>, AnySession(s): AnySession) -> Response {
    match s.map(|s| s.row.stage) {
        Some(Stage::Full) => Redirect::to("/").into_response(),
        _ => LoginPage { error: None, bootstrap: state.bootstrap_active().await }.into_response(),
    }
}

#[derive(Deserialize)]
pub struct LoginForm {
    username: String,
    password: String,
}

/// Refuses at once when the source is banned or the user must wait; else `Ok`.
fn gate(state: &WebState, src: std::net::IpAddr, user: Option<&WebUser>) -> Result<(), WebError> {
    let now = state.now();
    if let Verdict::Banned(left) = state.throttle().check(src, now) {
        return Err(WebError::TooMany(left));
    }
    if let Some(until) = user.and_then(|u| u.slow_until).filter(|u| *u > now) {
        return Err(WebError::TooMany(until - now));
    }
    Ok(())
}

/// A failed password or code: counted for the source and the user, audited.
async fn failed(state: &WebState, src: std::net::IpAddr, user: Option<&WebUser>, what: &str) -> Result<(), WebError> {
    let now = state.now();
    let banned = state.throttle().fail(src, now);
    let subject = match user {
        Some(u) => {
            state.ctx.store.web_login_failed(u.id, throttle::user_slow_until(u.failed_logins + 1, now)).await?;
            u.name.to_string()
        }
        None => "-".to_owned(),
    };
    let detail = if banned { format!("{what}; source banned for 15 minutes") } else { what.to_owned() };
    state
        .ctx
        .store
        .audit_from(&Actor::Admin, Some(&src.to_string()), "web.login_failed", &subject, &detail, now)
        .await?;
    Ok(())
}

pub async fn login(
    State(state): State<WebState>,
    Source(src): Source,
    AnySession(old): AnySession,
    Form(f): Form<LoginForm>,
) -> Result<Response, WebError> {
    let user = state.ctx.store.web_user_by_name(f.username.trim()).await?.filter(|u| u.disabled_at.is_none());
    gate(&state, src, user.as_ref())?;
    let phc = user.as_ref().and_then(|u| u.password_hash.clone()).unwrap_or_else(|| password::dummy_hash().to_owned());
    let pw = f.password;
    let ok = tokio::task::spawn_blocking(move || password::verify(&pw, &phc))
        .await
        .map_err(|e| WebError::Internal(e.to_string()))?;
    let Some(user) = user.filter(|u| ok && u.password_hash.is_some()) else {
        let known = state.ctx.store.web_user_by_name(f.username.trim()).await?;
        failed(&state, src, known.as_ref(), "wrong user name or password").await?;
        return Ok((
            axum::http::StatusCode::UNAUTHORIZED,
            LoginPage { error: Some("Wrong user name or password.".into()), bootstrap: state.bootstrap_active().await },
        )
            .into_response());
    };
    let stage = if user.totp_secret.is_some() { Stage::Password } else { Stage::Enroll };
    let cookie = auth::start(&state, &user, stage, None, old.as_ref().map(|s| &s.row), src).await?;
    Ok(redirect_with_cookie(if stage == Stage::Enroll { "/enroll" } else { "/login/totp" }, cookie))
}

fn at_stage(s: Option<Session>, stage: Stage) -> Result<Session, WebError> {
    s.filter(|s| s.row.stage == stage).ok_or(WebError::Login)
}

pub async fn totp_page(AnySession(s): AnySession) -> Result<Response, WebError> {
    let s = at_stage(s, Stage::Password)?;
    Ok(TotpPage { error: None, csrf: s.csrf().to_owned() }.into_response())
}

#[derive(Deserialize)]
pub struct CodeForm {
    #[serde(default)]
    csrf: String,
    code: String,
}

pub async fn totp(
    State(state): State<WebState>,
    Source(src): Source,
    AnySession(s): AnySession,
    Form(f): Form<CodeForm>,
) -> Result<Response, WebError> {
    let s = at_stage(s, Stage::Password)?;
    s.check_csrf(&f.csrf)?;
    gate(&state, src, Some(&s.user))?;
    let now = state.now();
    let user = &s.user;
    let seed = user.totp_secret.as_deref().ok_or(WebError::Login)?;
    let by_code = totp::check(seed, user.name.as_str(), &f.code, now).map_err(|e| WebError::Internal(e.to_string()))?;
    let ok = match by_code {
        Some(step) => state.replay.accept(user.id, step),
        // A recovery code, once.
        None if f.code.trim().len() > 6 => {
            let hash = auth::hash_secret(&totp::normalize_recovery(&f.code));
            state.ctx.store.use_recovery_code(user.id, &hash, now).await?
        }
        None => false,
    };
    if !ok {
        failed(&state, src, Some(user), "wrong TOTP or recovery code").await?;
        return Ok((
            axum::http::StatusCode::UNAUTHORIZED,
            TotpPage { error: Some("Wrong code.".into()), csrf: s.csrf().to_owned() },
        )
            .into_response());
    }
    state.throttle().succeed(src);
    state.ctx.store.web_login_succeeded(user.id).await?;
    let cookie = auth::start(&state, user, Stage::Full, None, Some(&s.row), src).await?;
    let how = if by_code.is_some() { "password and TOTP" } else { "password and a recovery code" };
    s.ctx(&state).audit("web.login", user.name.as_str(), how, now).await?;
    Ok(redirect_with_cookie("/", cookie))
}

pub async fn setup_page(State(state): State<WebState>, Path(token): Path<String>) -> Result<Response, WebError> {
    let user = state.ctx.store.setup_link_user(&auth::hash_secret(&token), state.now()).await?;
    let user = user.ok_or_else(|| {
        WebError::Gone("This setup link is unknown, used or expired: ask an administrator for a new one.".into())
    })?;
    Ok(SetupPage { name: user.name.to_string(), error: None, bootstrap: state.bootstrap_active().await }
        .into_response())
}

#[derive(Deserialize)]
pub struct SetupForm {
    password: String,
    password2: String,
}

pub async fn setup(
    State(state): State<WebState>,
    Source(src): Source,
    Path(token): Path<String>,
    Form(f): Form<SetupForm>,
) -> Result<Response, WebError> {
    let link = auth::hash_secret(&token);
    let user = state.ctx.store.setup_link_user(&link, state.now()).await?;
    let user = user.ok_or_else(|| {
        WebError::Gone("This setup link is unknown, used or expired: ask an administrator for a new one.".into())
    })?;
    if let Err(e) = password::check_policy(user.name.as_str(), &f.password, &f.password2) {
        let page = SetupPage {
            name: user.name.to_string(),
            error: Some(e.to_string()),
            bootstrap: state.bootstrap_active().await,
        };
        return Ok((axum::http::StatusCode::BAD_REQUEST, page).into_response());
    }
    let pw = f.password;
    let phc = tokio::task::spawn_blocking(move || password::hash(&pw))
        .await
        .map_err(|e| WebError::Internal(e.to_string()))?
        .map_err(|e| WebError::Internal(e.to_string()))?;
    let Some(user) = state.ctx.store.use_setup_link(&link, &phc, state.now()).await? else {
        return Err(WebError::Gone("This setup link was used meanwhile.".into()));
    };
    let ctx = state.ctx.acting_as(Actor::WebUser(user.name.clone()), Some(src.to_string()));
    ctx.audit("web.setup", user.name.as_str(), "password set with a setup link", state.now()).await?;
    let cookie = auth::start(&state, &user, Stage::Enroll, None, None, src).await?;
    Ok(redirect_with_cookie("/enroll", cookie))
}

pub async fn enroll_page(State(state): State<WebState>, AnySession(s): AnySession) -> Result<Response, WebError> {
    let s = at_stage(s, Stage::Enroll)?;
    // The seed offered stays the same until it is confirmed, so a reload does not invalidate a scanned code.
    let seed = match &s.row.pending_totp {
        Some(seed) => seed.clone(),
        None => {
            let seed = totp::new_seed();
            state.ctx.store.set_web_session_stage(&s.row.id_hash, Stage::Enroll, Some(&seed)).await?;
            seed
        }
    };
    Ok(enroll_view(&s, &seed, None)?.into_response())
}

fn enroll_view(s: &Session, seed: &str, error: Option<String>) -> Result<Enroll, WebError> {
    let url = totp::url(seed, s.user.name.as_str()).map_err(|e| WebError::Internal(e.to_string()))?;
    Ok(Enroll {
        name: s.user.name.to_string(),
        secret: seed.to_owned(),
        qr: totp::qr_data_url(&url).unwrap_or_default(),
        csrf: s.csrf().to_owned(),
        error,
    })
}

pub async fn enroll(
    State(state): State<WebState>,
    Source(src): Source,
    AnySession(s): AnySession,
    Form(f): Form<CodeForm>,
) -> Result<Response, WebError> {
    let s = at_stage(s, Stage::Enroll)?;
    s.check_csrf(&f.csrf)?;
    gate(&state, src, Some(&s.user))?;
    let seed = s.row.pending_totp.clone().ok_or(WebError::Login)?;
    let now = state.now();
    let step = totp::check(&seed, s.user.name.as_str(), &f.code, now).map_err(|e| WebError::Internal(e.to_string()))?;
    if !step.is_some_and(|st| state.replay.accept(s.user.id, st)) {
        failed(&state, src, Some(&s.user), "wrong TOTP code while enrolling").await?;
        let view = enroll_view(&s, &seed, Some("Wrong code: check the time on your phone and try again.".into()))?;
        return Ok((axum::http::StatusCode::UNAUTHORIZED, view).into_response());
    }
    let codes = totp::recovery_codes();
    let hashes: Vec<String> = codes.iter().map(|c| auth::hash_secret(c)).collect();
    state.ctx.store.set_totp(s.user.id, &seed, &hashes).await?;
    state.ctx.store.web_login_succeeded(s.user.id).await?;
    s.ctx(&state).audit("web.totp_enrolled", s.user.name.as_str(), "", now).await?;
    let cookie = auth::start(&state, &s.user, Stage::Full, None, Some(&s.row), src).await?;
    let mut h = HeaderMap::new();
    h.insert(header::SET_COOKIE, cookie);
    Ok((h, Recovery { codes }).into_response())
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

pub async fn logout(
    State(state): State<WebState>,
    AnySession(s): AnySession,
    Form(f): Form<CsrfForm>,
) -> Result<Response, WebError> {
    if let Some(s) = s {
        s.check_csrf(&f.csrf)?;
        state.ctx.store.delete_web_session(&s.row.id_hash).await?;
        s.ctx(&state).audit("web.logout", s.user.name.as_str(), "", state.now()).await?;
    }
    Ok(redirect_with_cookie("/login", auth::clear_cookie()))
}
