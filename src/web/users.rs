//! The Users page: add a user (a one-time setup link to pass on), disable or enable one, reset a lost
//! authenticator. The same operations as `cas-vpn web-user …`, audited as the web user who did them.

use axum::extract::{Form, Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::auth::{Authed, Session};
use super::views::{Nav, UserAdded, UserView, Users};
use super::{WebError, WebState};
use crate::domain::Name;
use crate::ops;

async fn page(state: &WebState, s: &Session, error: Option<String>) -> Result<Users, WebError> {
    let me = s.user.name.to_string();
    let rows = state.ctx.store.list_web_users().await?.iter().map(|u| UserView::of(u, &me)).collect();
    Ok(Users { nav: Nav::new(s, "users"), rows, error })
}

pub async fn list(State(state): State<WebState>, Authed(s): Authed) -> Result<Response, WebError> {
    Ok(page(&state, &s, None).await?.into_response())
}

#[derive(Deserialize)]
pub struct AddForm {
    #[serde(default)]
    csrf: String,
    name: String,
}

pub async fn add(
    State(state): State<WebState>,
    Authed(s): Authed,
    Form(f): Form<AddForm>,
) -> Result<Response, WebError> {
    s.check_csrf(&f.csrf)?;
    let added = match f.name.trim().parse::<Name>() {
        Ok(name) => ops::web_users::add(&s.ctx(&state), &name, false).await.map_err(WebError::from),
        Err(e) => Err(WebError::BadRequest(e.to_string())),
    };
    match added {
        Ok(a) => Ok(UserAdded {
            nav: Nav::new(&s, "users"),
            name: a.name.to_string(),
            link: a.setup_url,
            expires_at: a.expires_at,
        }
        .into_response()),
        Err(WebError::BadRequest(m)) => {
            Ok((axum::http::StatusCode::BAD_REQUEST, page(&state, &s, Some(m)).await?).into_response())
        }
        Err(e) => Err(e),
    }
}

#[derive(Deserialize)]
pub struct CsrfOnly {
    #[serde(default)]
    csrf: String,
}

fn name(raw: &str) -> Result<Name, WebError> {
    raw.parse().map_err(|_| WebError::NotFound)
}

pub async fn disable(
    State(state): State<WebState>,
    Authed(s): Authed,
    Path(n): Path<String>,
    Form(f): Form<CsrfOnly>,
) -> Result<Response, WebError> {
    s.check_csrf(&f.csrf)?;
    ops::web_users::set_disabled(&s.ctx(&state), &name(&n)?, true).await?;
    Ok(Redirect::to("/users").into_response())
}

pub async fn enable(
    State(state): State<WebState>,
    Authed(s): Authed,
    Path(n): Path<String>,
    Form(f): Form<CsrfOnly>,
) -> Result<Response, WebError> {
    s.check_csrf(&f.csrf)?;
    ops::web_users::set_disabled(&s.ctx(&state), &name(&n)?, false).await?;
    Ok(Redirect::to("/users").into_response())
}

pub async fn reset_totp(
    State(state): State<WebState>,
    Authed(s): Authed,
    Path(n): Path<String>,
    Form(f): Form<CsrfOnly>,
) -> Result<Response, WebError> {
    s.check_csrf(&f.csrf)?;
    let n = name(&n)?;
    if n == s.user.name {
        return Err(WebError::BadRequest("reset your own authenticator from another administrator's account".into()));
    }
    ops::web_users::reset_totp(&s.ctx(&state), &n).await?;
    Ok(Redirect::to("/users").into_response())
}
