//! Administration VPN credentials in the UI: "issue" makes a one-time download link (10 minutes, bound to the
//! browser session that asked); following it makes the credential (through the signer) and its profile, which
//! goes straight into the response (`no-store`) and is never written on the server. A second use of the link
//! gets 410 Gone. Revoking ends the credential and its live session at once, like `cas-vpn revoke`.

use axum::extract::{Form, Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use cas_pki::RevocationReason;
use serde::Deserialize;

use super::auth::{self, Authed};
use super::views::{AdminIssued, AdminRowView, AdminVpn, Nav};
use super::{WebError, WebState};
use crate::db::Download;
use crate::domain::{Kind, Name};
use crate::ops;

/// How long a download link works.
pub const LINK_MINUTES: i64 = 10;

async fn page(state: &WebState, s: &auth::Session, error: Option<String>) -> Result<AdminVpn, WebError> {
    let ctx = s.ctx(state);
    let sessions = ops::browse::sessions(&ctx).await?;
    let rows = ops::admin::list(&ctx, false)
        .await?
        .into_iter()
        .map(|r| AdminRowView {
            session: sessions
                .iter()
                .find(|x| x.name == r.name.as_str())
                .map_or_else(String::new, |x| x.real_addr.clone()),
            name: r.name.to_string(),
            port: r.port.map_or_else(|| "-".into(), |p| p.to_string()),
            state: r.state.to_owned(),
            created_at: r.created_at,
        })
        .collect();
    Ok(AdminVpn { nav: Nav::new(s, "admin-vpn"), rows, suggested: s.user.name.to_string(), error })
}

pub async fn list(State(state): State<WebState>, Authed(s): Authed) -> Result<Response, WebError> {
    Ok(page(&state, &s, None).await?.into_response())
}

#[derive(Deserialize)]
pub struct IssueForm {
    #[serde(default)]
    csrf: String,
    name: String,
}

pub async fn issue(
    State(state): State<WebState>,
    Authed(s): Authed,
    Form(f): Form<IssueForm>,
) -> Result<Response, WebError> {
    s.check_csrf(&f.csrf)?;
    let refuse = |msg: String| async {
        let p = page(&state, &s, Some(msg)).await?;
        Ok::<_, WebError>((axum::http::StatusCode::BAD_REQUEST, p).into_response())
    };
    let name: Name = match f.name.trim().parse() {
        Ok(n) => n,
        Err(e) => return refuse(format!("{e}")).await,
    };
    // Checked now for a friendly answer; the signer checks again when the link is used.
    if state.ctx.store.credential_by_name(&name).await?.is_some_and(|c| !c.is_revoked()) {
        return refuse(format!("the name {name} is already in use by an active credential")).await;
    }
    let ticket = auth::new_secret();
    let now = state.now();
    state
        .ctx
        .store
        .create_download(&auth::hash_secret(&ticket), &s.row.id_hash, &name, now + LINK_MINUTES * 60, now)
        .await?;
    s.ctx(&state).audit("admin.download_link", name.as_str(), &format!("valid {LINK_MINUTES} minutes"), now).await?;
    Ok(AdminIssued {
        nav: Nav::new(&s, "admin-vpn"),
        name: name.to_string(),
        link: format!("/admin-vpn/download/{ticket}"),
        minutes: LINK_MINUTES,
    }
    .into_response())
}

pub async fn download(
    State(state): State<WebState>,
    Authed(s): Authed,
    Path(ticket): Path<String>,
) -> Result<Response, WebError> {
    let taken = state.ctx.store.take_download(&auth::hash_secret(&ticket), &s.row.id_hash, state.now()).await?;
    let name = match taken {
        Download::Take(name) => name,
        Download::Used => {
            return Err(WebError::Gone(
                "This download link was already used. Issue a new credential if you lost the file.".into(),
            ));
        }
        Download::Expired => {
            return Err(WebError::Gone("This download link has expired. Issue the credential again.".into()));
        }
        Download::Unknown => return Err(WebError::NotFound),
    };
    let issued = ops::admin::issue_profile(&s.ctx(&state), &name).await?;
    let disposition = HeaderValue::from_str(&format!("attachment; filename=\"{name}.ovpn\""))
        .map_err(|e| WebError::Internal(e.to_string()))?;
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("application/x-openvpn-profile")),
            (header::CONTENT_DISPOSITION, disposition),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        issued.profile_text,
    )
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
    let name: Name = name.parse().map_err(|_| WebError::NotFound)?;
    if f.confirm.trim() != name.as_str() {
        let p = page(&state, &s, Some(format!("type the name ({name}) to confirm the revocation"))).await?;
        return Ok((axum::http::StatusCode::BAD_REQUEST, p).into_response());
    }
    let ctx = s.ctx(&state);
    match state.ctx.store.credential_by_name(&name).await? {
        Some(c) if c.kind == Kind::Admin => {}
        _ => return Err(WebError::NotFound),
    }
    ops::revoke::revoke(&ctx, &name, RevocationReason::Unspecified).await?;
    Ok(Redirect::to("/admin-vpn").into_response())
}
