//! The JSON API under `/api/v1`: the UI's actions for scripts, authenticated by API tokens
//! (`Authorization: Bearer cvapi_…`; scope `read` or `write`; expiring; revocable; stored hashed). Routes and the
//! OpenAPI 3 document (`/api/v1/openapi.json`) come from the same `#[utoipa::path]` annotations
//! (`utoipa_axum`), so the document cannot list a route that does not exist or miss one that does.
//!
//! Errors are `{"error": {"code": "…", "message": "…"}}`. A wrong token counts as a failed login of its source
//! address (5 ban it for 15 minutes, as for the login form).

use std::net::IpAddr;

use axum::Json;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use cas_pki::RevocationReason;
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::throttle::Verdict;
use super::{WebState, auth};
use crate::app::{AppError, Ctx};
use crate::db::{AuditQuery, Scope, TerminalFilter, WebUser};
use crate::domain::{Actor, Name};
use crate::ops;
use crate::ops::browse::{ExpiryItem, SessionItem, TerminalItem, TerminalPage};

#[derive(OpenApi)]
#[openapi(
    info(title = "cas-vpn admin API", description = "The admin UI's actions for scripts. Authenticate with an API token \
        made under My account: `Authorization: Bearer cvapi_…`. Read-only tokens may use every GET."),
    // The paths below are relative to the router's mount point; without this a client would call `/status`.
    servers((url = "/api/v1")),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    components(schemas(ApiErrorBody, ErrorDetail))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The API's routes and its OpenAPI document, made together.
pub fn parts() -> (axum::Router<WebState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(get_status))
        .routes(routes!(list_terminals, add_terminal))
        .routes(routes!(get_terminal))
        .routes(routes!(revoke_credential))
        .routes(routes!(list_sessions))
        .routes(routes!(list_admin_credentials))
        .routes(routes!(list_audit))
        .split_for_parts()
}

/// The router `/api/v1` nests, with `openapi.json` beside the routes it describes.
pub fn router() -> axum::Router<WebState> {
    let (router, doc) = parts();
    let json = doc.to_json().unwrap_or_else(|_| "{}".into());
    router.route(
        "/openapi.json",
        axum::routing::get(move || {
            let json = json.clone();
            async move { ([(header::CONTENT_TYPE, "application/json")], json) }
        }),
    )
}

/// The OpenAPI document, as served.
pub fn openapi_json() -> String {
    parts().1.to_json().unwrap_or_default()
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("an API token is required: Authorization: Bearer cvapi_…")]
    Unauthorized,
    #[error("this token may only read")]
    ReadOnly,
    #[error("too many failed attempts from this address: try again in {0} s")]
    Banned(i64),
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    BadRequest(String),
    #[error("internal error (reference {0})")]
    Internal(String),
}

#[derive(Serialize, ToSchema)]
pub struct ApiErrorBody {
    error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// `unauthorized`, `read_only`, `banned`, `not_found`, `bad_request` or `internal`.
    code: &'static str,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::ReadOnly => (StatusCode::FORBIDDEN, "read_only"),
            ApiError::Banned(_) => (StatusCode::TOO_MANY_REQUESTS, "banned"),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        let body = ApiErrorBody { error: ErrorDetail { code, message: self.to_string() } };
        let mut r = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        r
    }
}

impl From<AppError> for ApiError {
    fn from(e: AppError) -> Self {
        match super::WebError::from(e) {
            super::WebError::NotFound => ApiError::NotFound,
            super::WebError::BadRequest(m) => ApiError::BadRequest(m),
            other => {
                let reference = hex::encode(rand::random::<[u8; 4]>());
                tracing::error!(%reference, error = %other, "API request failed");
                ApiError::Internal(reference)
            }
        }
    }
}

impl From<crate::db::DbError> for ApiError {
    fn from(e: crate::db::DbError) -> Self {
        ApiError::from(AppError::from(e))
    }
}

/// A request with a live API token.
pub struct Token {
    pub user: WebUser,
    pub scope: Scope,
    pub token_id: i64,
    pub source: IpAddr,
}

impl Token {
    /// The context operations run with: the token's user, from this address.
    fn ctx(&self, state: &WebState) -> Ctx {
        state.ctx.acting_as(Actor::ApiUser(self.user.name.clone()), Some(self.source.to_string()))
    }
    fn write(&self) -> Result<(), ApiError> {
        if self.scope == Scope::Write { Ok(()) } else { Err(ApiError::ReadOnly) }
    }
}

impl FromRequestParts<WebState> for Token {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &WebState) -> Result<Self, Self::Rejection> {
        let source = auth::source(parts);
        let now = state.now();
        if let Verdict::Banned(left) = state.throttle().check(source, now) {
            return Err(ApiError::Banned(left));
        }
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| t.starts_with(super::account::TOKEN_PREFIX) && t.len() <= 128);
        let found = match presented {
            Some(t) => state.ctx.store.use_api_token(&auth::hash_secret(t), now).await?,
            None => None,
        };
        let Some((token, user)) = found else {
            if presented.is_some() {
                state.throttle().fail(source, now);
            }
            return Err(ApiError::Unauthorized);
        };
        Ok(Token { user, scope: token.scope, token_id: token.id, source })
    }
}

#[derive(Serialize, ToSchema)]
pub struct StatusSummary {
    /// `A` (cas-vpn runs the VPN) or `B` (no VPN).
    scenario: String,
    terminals: usize,
    terminals_paired: usize,
    admin_credentials: usize,
    live_sessions: usize,
    /// Terminals by health: `healthy`, `agent_silent`, `offline`, `never_paired`, `revoked`.
    #[schema(value_type = Object)]
    health: ops::status::HealthCounts,
    pairing_window_open: bool,
    pairing_window_until: Option<String>,
    pending_approvals: usize,
    expiry: Vec<ExpiryItem>,
    warnings: Vec<String>,
}

#[utoipa::path(get, path = "/status", tag = "status",
    responses((status = 200, body = StatusSummary), (status = 401, body = ApiErrorBody)))]
async fn get_status(State(state): State<WebState>, t: Token) -> Result<Json<StatusSummary>, ApiError> {
    let ctx = t.ctx(&state);
    let st = ops::status::status(&ctx).await?;
    let pairing = ops::pairing::status(&ctx).await?;
    let expiry = ops::browse::expiries(&ctx, &st).await?;
    Ok(Json(StatusSummary {
        scenario: st.scenario.to_owned(),
        terminals: st.counts.terminals,
        terminals_paired: st.counts.terminals_paired,
        admin_credentials: st.counts.admins,
        live_sessions: st.counts.sessions,
        health: st.counts.health,
        pairing_window_open: pairing.window.open,
        pairing_window_until: pairing.window.open_until,
        pending_approvals: pairing.pending.len(),
        expiry,
        warnings: st.warnings,
    }))
}

#[derive(Deserialize, utoipa::IntoParams)]
struct TerminalParams {
    /// Name (substring), certificate serial (prefix) or tunnel address.
    q: Option<String>,
    /// `active` (default), `online` (tunnel up), `healthy`, `agent_silent`, `offline`, `never_paired`, `revoked` or
    /// `expiring`.
    filter: Option<String>,
    /// Exact version a terminal reports.
    version: Option<String>,
    /// 1-based; 50 terminals a page.
    page: Option<u32>,
}

#[utoipa::path(get, path = "/terminals", tag = "terminals", params(TerminalParams),
    responses((status = 200, body = TerminalPage), (status = 400, body = ApiErrorBody), (status = 401, body = ApiErrorBody)))]
async fn list_terminals(
    State(state): State<WebState>,
    t: Token,
    Query(p): Query<TerminalParams>,
) -> Result<Json<TerminalPage>, ApiError> {
    let filter = match p.filter.as_deref() {
        None | Some("") => TerminalFilter::default(),
        Some(f) => f.parse().map_err(ApiError::BadRequest)?,
    };
    let req = ops::browse::PageRequest { search: p.q, filter, version: p.version, page: p.page.unwrap_or(1) };
    Ok(Json(ops::browse::terminals(&t.ctx(&state), &req).await?))
}

#[derive(Deserialize, ToSchema)]
struct NewTerminal {
    name: String,
}

#[derive(Serialize, ToSchema)]
struct AddedTerminal {
    name: String,
    /// The one-time pairing token: shown once, stored hashed.
    token: String,
    token_expires_at: String,
    tunnel_ip: Option<String>,
}

#[utoipa::path(post, path = "/terminals", tag = "terminals", request_body = NewTerminal,
    responses((status = 201, body = AddedTerminal), (status = 400, body = ApiErrorBody),
              (status = 401, body = ApiErrorBody), (status = 403, body = ApiErrorBody)))]
async fn add_terminal(
    State(state): State<WebState>,
    t: Token,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<AddedTerminal>), ApiError> {
    t.write()?;
    let req: NewTerminal =
        serde_json::from_slice(&body).map_err(|_| ApiError::BadRequest("expected {\"name\": \"…\"}".into()))?;
    let name: Name =
        req.name.trim().parse().map_err(|e: crate::domain::DomainError| ApiError::BadRequest(e.to_string()))?;
    let a = ops::terminal::add(&t.ctx(&state), name, &ops::terminal::AddOptions::default()).await?;
    Ok((
        StatusCode::CREATED,
        Json(AddedTerminal {
            name: a.name.to_string(),
            token: a.token,
            token_expires_at: a.token_expires_at,
            tunnel_ip: a.tunnel_ip,
        }),
    ))
}

#[derive(Serialize, ToSchema)]
struct TerminalInfo {
    #[serde(flatten)]
    item: TerminalItem,
    hw_serial: Option<String>,
    /// Every certificate it ever had: (serial, not_after, revoked_at).
    certificates: Vec<CertInfo>,
    sessions: Vec<SessionItem>,
}

#[derive(Serialize, ToSchema)]
struct CertInfo {
    serial: String,
    not_after: String,
    revoked_at: Option<String>,
}

#[utoipa::path(get, path = "/terminals/{name}", tag = "terminals", params(("name" = String, Path)),
    responses((status = 200, body = TerminalInfo), (status = 404, body = ApiErrorBody)))]
async fn get_terminal(
    State(state): State<WebState>,
    t: Token,
    Path(name): Path<String>,
) -> Result<Json<TerminalInfo>, ApiError> {
    let name: Name = name.parse().map_err(|_| ApiError::NotFound)?;
    let ctx = t.ctx(&state);
    let d = ops::terminal::show(&ctx, &name).await?;
    let page = ops::browse::terminals(
        &ctx,
        &ops::browse::PageRequest {
            search: Some(name.to_string()),
            filter: if d.row.revoked_at.is_some() { TerminalFilter::Revoked } else { TerminalFilter::Active },
            ..Default::default()
        },
    )
    .await?;
    let item = page.terminals.into_iter().find(|i| i.name == name).ok_or(ApiError::NotFound)?;
    let sessions = ops::browse::sessions_of(&ctx, &name).await?;
    Ok(Json(TerminalInfo {
        item,
        hw_serial: d.hw_serial,
        certificates: d
            .certificates
            .into_iter()
            .map(|c| CertInfo { serial: c.serial, not_after: c.not_after, revoked_at: c.revoked_at })
            .collect(),
        sessions,
    }))
}

#[derive(Serialize, ToSchema)]
struct Revoked {
    name: String,
    /// `terminal` or `admin`.
    kind: String,
    already_revoked: bool,
    serials: Vec<String>,
    /// Live sessions ended (`null` when no VPN service runs).
    killed_sessions: Option<usize>,
}

#[utoipa::path(post, path = "/credentials/{name}/revoke", tag = "credentials", params(("name" = String, Path)),
    responses((status = 200, body = Revoked), (status = 403, body = ApiErrorBody), (status = 404, body = ApiErrorBody)))]
async fn revoke_credential(
    State(state): State<WebState>,
    t: Token,
    Path(name): Path<String>,
) -> Result<Json<Revoked>, ApiError> {
    t.write()?;
    let name: Name = name.parse().map_err(|_| ApiError::NotFound)?;
    let r = ops::revoke::revoke(&t.ctx(&state), &name, RevocationReason::Unspecified).await?;
    Ok(Json(Revoked {
        name: r.name.to_string(),
        kind: r.kind.to_string(),
        already_revoked: r.already_revoked,
        serials: r.serials,
        killed_sessions: r.killed_sessions,
    }))
}

#[utoipa::path(get, path = "/sessions", tag = "sessions", responses((status = 200, body = Vec<SessionItem>)))]
async fn list_sessions(State(state): State<WebState>, t: Token) -> Result<Json<Vec<SessionItem>>, ApiError> {
    Ok(Json(ops::browse::sessions(&t.ctx(&state)).await?))
}

#[derive(Serialize, ToSchema)]
struct AdminItem {
    name: String,
    port: Option<u16>,
    /// `active`, `online`, `suspended` or `revoked`.
    state: String,
    created_at: String,
}

#[utoipa::path(get, path = "/admin-vpn", tag = "credentials", responses((status = 200, body = Vec<AdminItem>)))]
async fn list_admin_credentials(State(state): State<WebState>, t: Token) -> Result<Json<Vec<AdminItem>>, ApiError> {
    let rows = ops::admin::list(&t.ctx(&state), false).await?;
    Ok(Json(
        rows.into_iter()
            .map(|r| AdminItem {
                name: r.name.to_string(),
                port: r.port,
                state: r.state.to_owned(),
                created_at: r.created_at,
            })
            .collect(),
    ))
}

#[derive(Deserialize, utoipa::IntoParams)]
struct AuditParams {
    /// Exact actor (`web:alice`, `api:alice`, `cli:root`, `gate`, …).
    actor: Option<String>,
    /// Action prefix (`revoke`, `terminal.`, `web.`…).
    action: Option<String>,
    subject: Option<String>,
    /// Only rows older than this id (paging).
    before: Option<i64>,
    /// At most 1000; default 100.
    limit: Option<u32>,
}

#[derive(Serialize, ToSchema)]
struct AuditItem {
    id: i64,
    at: String,
    actor: String,
    action: String,
    subject: String,
    detail: String,
    /// Where the actor was; `null` for a local shell or a service.
    source: Option<String>,
}

#[utoipa::path(get, path = "/audit", tag = "audit", params(AuditParams), responses((status = 200, body = Vec<AuditItem>)))]
async fn list_audit(
    State(state): State<WebState>,
    _t: Token,
    Query(p): Query<AuditParams>,
) -> Result<Json<Vec<AuditItem>>, ApiError> {
    let q = AuditQuery {
        actor: p.actor,
        action: p.action,
        subject: p.subject,
        since: None,
        before_id: p.before,
        limit: p.limit.unwrap_or(100).clamp(1, 1000),
    };
    let rows = state.ctx.store.audit_page(&q).await?;
    Ok(Json(
        rows.into_iter()
            .map(|r| AuditItem {
                id: r.id,
                at: crate::app::rfc3339(r.at),
                actor: r.actor.to_string(),
                action: r.action,
                subject: r.subject,
                detail: r.detail,
                source: r.source,
            })
            .collect(),
    ))
}
