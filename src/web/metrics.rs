//! `GET /metrics`: the Prometheus text format (`ops::metrics` aggregates the store, the vpn service and the PKI
//! files at each scrape), for a scraper holding the metrics token (`cas-vpn metrics token`):
//! `Authorization: Bearer cvmet_…`. Without a valid token the answer is `401` with an empty body: not a metric
//! name, not a hint. The token has 256 random bits and is compared (as its SHA-256) in constant time.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::WebState;
use crate::ops;

/// What Prometheus expects of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Errors of a scrape: only one, and it says nothing.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("a valid metrics token is required")]
    Unauthorized,
}

impl IntoResponse for MetricsError {
    fn into_response(self) -> Response {
        let mut r = StatusCode::UNAUTHORIZED.into_response();
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        r
    }
}

pub async fn metrics(State(state): State<WebState>, headers: HeaderMap) -> Result<Response, MetricsError> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .ok_or(MetricsError::Unauthorized)?;
    match ops::metrics::token_valid(&state.ctx, presented).await {
        Ok(true) => {}
        Ok(false) => return Err(MetricsError::Unauthorized),
        Err(e) => {
            // The store did not answer: the token cannot be checked, so nothing is shown.
            tracing::warn!(error = %e, "metrics: cannot check the token");
            return Err(MetricsError::Unauthorized);
        }
    }
    let body = ops::metrics::collect(&state.ctx).await.render();
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))], body).into_response())
}
