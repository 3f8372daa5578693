//! Terminals: the paged, searchable list; adding one (its pairing token as text and QR code, shown once); the
//! detail page (sessions, certificates, audit); revoking one or many (typed confirmation). Revoking is
//! `ops::revoke`: store, CRL, and the live session ended, like `cas-vpn revoke`.

use axum::body::Bytes;
use axum::extract::{Form, Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use cas_pki::RevocationReason;
use serde::Deserialize;

use super::auth::Authed;
use super::dashboard::form_urlencoded;
use super::views::{AuditView, Nav, TerminalAdded, TerminalDetail, Terminals};
use super::{WebError, WebState, totp};
use crate::db::{AuditQuery, TerminalFilter};
use crate::domain::Name;
use crate::ops;

/// The most terminals one bulk revocation takes (a page and a half; a fleet-wide revocation is a shell job).
pub const MAX_BULK: usize = 500;

#[derive(Deserialize, Default)]
pub struct ListParams {
    #[serde(default)]
    q: String,
    #[serde(default)]
    filter: String,
    #[serde(default)]
    version: String,
    page: Option<u32>,
}

fn filter_labels() -> Vec<(&'static str, &'static str)> {
    TerminalFilter::ALL
        .iter()
        .map(|f| {
            let label = match f {
                TerminalFilter::Active => "all active",
                TerminalFilter::Online => "online (tunnel up)",
                TerminalFilter::Healthy => "healthy",
                TerminalFilter::AgentSilent => "tunnel up, agent silent",
                TerminalFilter::Offline => "offline",
                TerminalFilter::NeverPaired => "never paired",
                TerminalFilter::Revoked => "revoked",
                TerminalFilter::Expiring => "certificate expiring",
            };
            (f.as_str(), label)
        })
        .collect()
}

async fn list_page(
    state: &WebState,
    s: &super::auth::Session,
    p: &ListParams,
    error: Option<String>,
) -> Result<Terminals, WebError> {
    let filter: TerminalFilter =
        if p.filter.is_empty() { TerminalFilter::default() } else { p.filter.parse().map_err(WebError::BadRequest)? };
    let ctx = s.ctx(state);
    let req = ops::browse::PageRequest {
        search: Some(p.q.clone()),
        filter,
        version: Some(p.version.clone()),
        page: p.page.unwrap_or(1),
    };
    let page = ops::browse::terminals(&ctx, &req).await?;
    Ok(Terminals {
        nav: Nav::new(s, "terminals"),
        page,
        q: p.q.clone(),
        filter,
        filters: filter_labels(),
        version: p.version.clone(),
        versions: state.ctx.store.terminal_versions().await?,
        query: format!(
            "q={}&filter={}&version={}",
            form_urlencoded(&p.q),
            filter.as_str(),
            form_urlencoded(&p.version)
        ),
        error,
    })
}

pub async fn list(
    State(state): State<WebState>,
    Authed(s): Authed,
    Query(p): Query<ListParams>,
) -> Result<Response, WebError> {
    Ok(list_page(&state, &s, &p, None).await?.into_response())
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
    let name = match f.name.trim().parse::<Name>() {
        Ok(n) => n,
        Err(e) => {
            let page = list_page(&state, &s, &ListParams::default(), Some(e.to_string())).await?;
            return Ok((axum::http::StatusCode::BAD_REQUEST, page).into_response());
        }
    };
    let added = match ops::terminal::add(&s.ctx(&state), name, &ops::terminal::AddOptions::default()).await {
        Ok(a) => a,
        Err(e) => match WebError::from(e) {
            WebError::BadRequest(msg) => {
                let page = list_page(&state, &s, &ListParams::default(), Some(msg)).await?;
                return Ok((axum::http::StatusCode::BAD_REQUEST, page).into_response());
            }
            other => return Err(other),
        },
    };
    Ok(TerminalAdded {
        nav: Nav::new(&s, "terminals"),
        name: added.name.to_string(),
        qr: totp::qr_data_url(&added.token).unwrap_or_default(),
        token: added.token,
        expires_at: added.token_expires_at,
    }
    .into_response())
}

fn parse_name(raw: &str) -> Result<Name, WebError> {
    raw.parse().map_err(|_| WebError::NotFound)
}

pub async fn show(
    State(state): State<WebState>,
    Authed(s): Authed,
    Path(name): Path<String>,
) -> Result<Response, WebError> {
    let name = parse_name(&name)?;
    let ctx = s.ctx(&state);
    let d = ops::terminal::show(&ctx, &name).await?;
    let sessions = ops::browse::sessions_of(&ctx, &name).await?;
    let audit = state
        .ctx
        .store
        .audit_page(&AuditQuery { subject: Some(name.to_string()), limit: 50, ..AuditQuery::default() })
        .await?;
    let dash = |o: Option<String>| o.unwrap_or_else(|| "-".into());
    Ok(TerminalDetail {
        nav: Nav::new(&s, "terminals"),
        name: name.to_string(),
        state: d.row.state.to_owned(),
        health: d.row.health,
        health_since: dash(d.row.health_since),
        tunnel_ip: dash(d.row.tunnel_ip),
        version: dash(d.row.version),
        hw_serial: dash(d.hw_serial),
        created_at: d.row.created_at,
        paired_at: dash(d.row.paired_at),
        last_seen: dash(d.row.last_seen),
        revoked: d.row.revoked_at.is_some(),
        revoke_reason: dash(d.revoke_reason),
        certificates: d
            .certificates
            .into_iter()
            .map(|c| (c.serial, c.not_after, c.revoked_at.unwrap_or_default()))
            .collect(),
        sessions,
        audit: audit.iter().map(AuditView::from).collect(),
    }
    .into_response())
}

#[derive(Deserialize)]
pub struct RevokeForm {
    #[serde(default)]
    csrf: String,
    confirm: String,
}

pub async fn revoke(
    State(state): State<WebState>,
    Authed(s): Authed,
    Path(name): Path<String>,
    Form(f): Form<RevokeForm>,
) -> Result<Response, WebError> {
    s.check_csrf(&f.csrf)?;
    let name = parse_name(&name)?;
    if f.confirm.trim() != name.as_str() {
        return Err(WebError::BadRequest(format!("type the name ({name}) to confirm the revocation")));
    }
    let ctx = s.ctx(&state);
    // Only terminals here; admin credentials have their own page.
    ops::terminal::show(&ctx, &name).await?;
    ops::revoke::revoke(&ctx, &name, RevocationReason::Unspecified).await?;
    Ok(Redirect::to(&format!("/terminals/{name}")).into_response())
}

/// `names=a&names=b&confirm=REVOKE 2&csrf=…`: every selected terminal, after a typed confirmation that names how
/// many. All names are checked before anything is revoked.
pub async fn bulk_revoke(State(state): State<WebState>, Authed(s): Authed, body: Bytes) -> Result<Response, WebError> {
    let (mut csrf, mut confirm, mut names) = (String::new(), String::new(), Vec::new());
    for (k, v) in form_urlencoded::parse(&body) {
        match &*k {
            "csrf" => csrf = v.into_owned(),
            "confirm" => confirm = v.into_owned(),
            "names" => names.push(v.into_owned()),
            _ => {}
        }
    }
    s.check_csrf(&csrf)?;
    if names.is_empty() {
        return Err(WebError::BadRequest("select the terminals to revoke first".into()));
    }
    if names.len() > MAX_BULK {
        return Err(WebError::BadRequest(format!("at most {MAX_BULK} terminals at a time")));
    }
    if confirm.trim() != format!("REVOKE {}", names.len()) {
        return Err(WebError::BadRequest(format!("type REVOKE {} to confirm", names.len())));
    }
    let names: Vec<Name> = names
        .iter()
        .map(|n| n.parse::<Name>().map_err(|e| WebError::BadRequest(e.to_string())))
        .collect::<Result<_, _>>()?;
    let ctx = s.ctx(&state);
    for n in &names {
        ops::terminal::show(&ctx, n).await?;
    }
    for n in &names {
        ops::revoke::revoke(&ctx, n, RevocationReason::Unspecified).await?;
    }
    Ok(Redirect::to("/terminals?filter=revoked").into_response())
}
