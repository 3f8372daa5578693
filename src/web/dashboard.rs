//! The dashboard (counts, instances, the pairing window and its approvals, everything that expires, the terminals'
//! certificate renewals), the live
//! sessions, and the audit log with its CSV export.

use axum::extract::{Form, Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::auth::Authed;
use super::views::{Audit, AuditView, Dashboard, Nav, PendingView, Sessions};
use super::{WebError, WebState};
use crate::db::AuditQuery;
use crate::domain::{Dur, Name};
use crate::ops;

pub async fn dashboard(State(state): State<WebState>, Authed(s): Authed) -> Result<Response, WebError> {
    let ctx = s.ctx(&state);
    let st = ops::status::status(&ctx).await?;
    let pairing = ops::pairing::status(&ctx).await?;
    let expiries = ops::browse::expiries(&ctx, &st).await?;
    let instances = st
        .running
        .as_ref()
        .map(|r| {
            r.iter()
                .map(|i| {
                    let state = format!("{:?}", i.state).split_whitespace().next().unwrap_or("").to_lowercase();
                    let state = if i.crash_loop { format!("{state} (crash loop)") } else { state };
                    (i.name.to_string(), i.port, state, i.sessions)
                })
                .collect()
        })
        .unwrap_or_default();
    let page = Dashboard {
        nav: Nav::new(&s, "dashboard"),
        scenario: st.scenario.to_owned(),
        terminals: st.counts.terminals,
        terminals_paired: st.counts.terminals_paired,
        admins: st.counts.admins,
        sessions: st.counts.sessions,
        serve_running: st.running.is_some(),
        instances,
        window_open: pairing.window.open,
        window_until: pairing.window.open_until.clone().unwrap_or_default(),
        window_minutes_left: pairing.window.remaining_secs.unwrap_or(0).div_euclid(60),
        window_seconds_left: pairing.window.remaining_secs.unwrap_or(0),
        pending: pairing
            .pending
            .iter()
            .map(|p| PendingView {
                id: p.pairing_id.clone(),
                code: p.code.clone(),
                common_name: p.common_name.clone().unwrap_or_default(),
                source_ip: p.source_ip.clone(),
                expires_at: p.expires_at.clone(),
            })
            .collect(),
        expiries,
        renewal: st.renewal,
        warnings: st.warnings,
        web_fingerprint: st.web_fingerprint.unwrap_or_default(),
    };
    Ok(page.into_response())
}

#[derive(Deserialize)]
pub struct OpenForm {
    #[serde(default)]
    csrf: String,
    minutes: u32,
}

pub async fn pairing_open(
    State(state): State<WebState>,
    Authed(s): Authed,
    Form(f): Form<OpenForm>,
) -> Result<Response, WebError> {
    s.check_csrf(&f.csrf)?;
    if !(1..=1440).contains(&f.minutes) {
        return Err(WebError::BadRequest("a pairing window lasts 1 to 1440 minutes".into()));
    }
    ops::pairing::open_window(
        &s.ctx(&state),
        Some(Dur(std::time::Duration::from_secs(u64::from(f.minutes) * 60))),
        &[],
    )
    .await?;
    Ok(Redirect::to("/").into_response())
}

#[derive(Deserialize)]
pub struct CsrfOnly {
    #[serde(default)]
    csrf: String,
}

pub async fn pairing_close(
    State(state): State<WebState>,
    Authed(s): Authed,
    Form(f): Form<CsrfOnly>,
) -> Result<Response, WebError> {
    s.check_csrf(&f.csrf)?;
    ops::pairing::close_window(&s.ctx(&state)).await?;
    Ok(Redirect::to("/").into_response())
}

#[derive(Deserialize)]
pub struct ApproveForm {
    #[serde(default)]
    csrf: String,
    code: String,
    #[serde(default)]
    name: String,
}

pub async fn pairing_approve(
    State(state): State<WebState>,
    Authed(s): Authed,
    Path(id): Path<String>,
    Form(f): Form<ApproveForm>,
) -> Result<Response, WebError> {
    s.check_csrf(&f.csrf)?;
    let name = match f.name.trim() {
        "" => None,
        n => Some(n.parse::<Name>().map_err(|e| WebError::BadRequest(e.to_string()))?),
    };
    ops::pairing::approve(&s.ctx(&state), &id, f.code.trim(), name).await?;
    Ok(Redirect::to("/").into_response())
}

pub async fn pairing_reject(
    State(state): State<WebState>,
    Authed(s): Authed,
    Path(id): Path<String>,
    Form(f): Form<CsrfOnly>,
) -> Result<Response, WebError> {
    s.check_csrf(&f.csrf)?;
    ops::pairing::reject(&s.ctx(&state), &id).await?;
    Ok(Redirect::to("/").into_response())
}

/// What the dashboard shows live (`/events`, one server-sent event every `LIVE_EVERY`).
#[derive(serde::Serialize)]
struct Live {
    terminals: i64,
    admins: i64,
    sessions: usize,
    pending: usize,
    /// Seconds the pairing window stays open; `null` when closed.
    window_left: Option<i64>,
}

const LIVE_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

async fn live(state: &WebState) -> Result<Live, WebError> {
    let store = &state.ctx.store;
    let now = state.now();
    let (until, _) = store.pairing_window_from().await?;
    Ok(Live {
        terminals: store.count_active(crate::domain::Kind::Terminal).await?,
        admins: store.count_active(crate::domain::Kind::Admin).await?,
        sessions: usize::try_from(store.count_live_sessions(state.ctx.alive_since()).await?).unwrap_or(0),
        pending: store.list_pending_pairings(false, now).await?.len(),
        window_left: until.filter(|u| *u > now).map(|u| u - now),
    })
}

/// Server-sent events for the dashboard's live counters and the pairing window's countdown (`static/app.js`
/// reads them; without JavaScript the page is simply as fresh as its last load). The stream ends with the
/// session: every event re-checks it.
pub async fn events(State(state): State<WebState>, Authed(s): Authed) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let id_hash = s.row.id_hash.clone();
    let stream = futures_util::stream::unfold((state, id_hash, true), |(state, id_hash, first)| async move {
        if !first {
            tokio::time::sleep(LIVE_EVERY).await;
        }
        // A session that ended (logout, timeout, disabled user) ends its stream.
        let alive = state.ctx.store.web_session(&id_hash).await.ok().flatten().is_some();
        if !alive {
            return None;
        }
        let event = match live(&state).await {
            Ok(l) => Event::default().event("live").json_data(&l).unwrap_or_default(),
            Err(_) => Event::default().comment("store unavailable"),
        };
        Some((Ok::<_, std::convert::Infallible>(event), (state, id_hash, false)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

pub async fn sessions(State(state): State<WebState>, Authed(s): Authed) -> Result<Response, WebError> {
    let rows = ops::browse::sessions(&s.ctx(&state)).await?;
    Ok(Sessions { nav: Nav::new(&s, "sessions"), rows }.into_response())
}

/// Rows per audit page; the CSV export takes at most `CSV_ROWS`.
const AUDIT_PAGE: u32 = 100;
const CSV_ROWS: u32 = 100_000;

#[derive(Deserialize, Default)]
pub struct AuditParams {
    #[serde(default)]
    actor: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    subject: String,
    before: Option<i64>,
}

impl AuditParams {
    fn query(&self, limit: u32) -> AuditQuery {
        let opt = |s: &str| Some(s.trim().to_owned()).filter(|s| !s.is_empty() && s.len() <= 80);
        AuditQuery {
            actor: opt(&self.actor),
            action: opt(&self.action),
            subject: opt(&self.subject),
            since: None,
            before_id: self.before,
            limit,
        }
    }
    fn query_string(&self) -> String {
        let enc = |s: &str| form_urlencoded(s);
        format!("actor={}&action={}&subject={}", enc(&self.actor), enc(&self.action), enc(&self.subject))
    }
}

/// `application/x-www-form-urlencoded` encoding of one value.
pub fn form_urlencoded(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

pub async fn audit(
    State(state): State<WebState>,
    Authed(s): Authed,
    Query(p): Query<AuditParams>,
) -> Result<Response, WebError> {
    let rows = state.ctx.store.audit_page(&p.query(AUDIT_PAGE)).await?;
    let older = (rows.len() == AUDIT_PAGE as usize)
        .then(|| rows.last().map(|r| format!("{}&before={}", p.query_string(), r.id)))
        .flatten();
    Ok(Audit {
        nav: Nav::new(&s, "audit"),
        rows: rows.iter().map(AuditView::from).collect(),
        actor: p.actor.clone(),
        action: p.action.clone(),
        subject: p.subject.clone(),
        older,
        csv: p.query_string(),
    }
    .into_response())
}

/// One CSV field: quoted, quotes doubled, and a leading `=`, `+`, `-` or `@` defused (a spreadsheet would run it
/// as a formula).
fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@']) { format!("'{s}") } else { s.to_owned() };
    format!("\"{}\"", s.replace('"', "\"\""))
}

pub async fn audit_csv(
    State(state): State<WebState>,
    Authed(s): Authed,
    Query(p): Query<AuditParams>,
) -> Result<Response, WebError> {
    let rows = state.ctx.store.audit_page(&p.query(CSV_ROWS)).await?;
    let mut out = String::from("id,at,actor,action,subject,detail,source\n");
    for r in rows.iter().map(AuditView::from) {
        let fields = [r.id.to_string(), r.at, r.actor, r.action, r.subject, r.detail, r.source];
        out.push_str(&fields.iter().map(|f| csv_field(f)).collect::<Vec<_>>().join(","));
        out.push('\n');
    }
    s.ctx(&state).audit("web.audit_export", "-", &format!("{} rows", rows.len()), state.now()).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (header::CONTENT_DISPOSITION, "attachment; filename=\"cas-vpn-audit.csv\""),
        ],
        out,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_and_formulas_defused() {
        assert_eq!(csv_field("plain"), "\"plain\"");
        assert_eq!(csv_field("a \"b\""), "\"a \"\"b\"\"\"");
        assert_eq!(csv_field("=cmd|' /C calc'!A0"), "\"'=cmd|' /C calc'!A0\"");
        assert_eq!(form_urlencoded("web:a b&c"), "web%3Aa+b%26c");
    }
}
