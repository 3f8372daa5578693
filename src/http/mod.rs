//! HTTP plumbing shared by the gate and master (and the reference agent's client): the listener with its
//! budgets and TLS (`server`), master's mutual TLS on both sides (`mtls`), the one error type that maps to the wire contract's codes (`error`), bounded
//! JSON bodies (`read_json`), and the pinned HTTPS client (`client`).

pub mod budget;
pub mod client;
pub mod error;
pub mod mtls;
pub mod server;

use std::time::Duration;

use axum::body::Body;
use axum::http::HeaderMap;
use serde::de::DeserializeOwned;

pub use error::ApiError;
pub use server::ServeLimits;

/// Largest request body accepted (a CSR is at most 16 KiB of PEM).
pub const MAX_BODY: usize = 64 * 1024;
/// A client must have sent its whole body within this.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Reads a JSON body of at most [`MAX_BODY`] bytes within [`BODY_TIMEOUT`]. Errors never quote the body.
pub async fn read_json<T: DeserializeOwned>(headers: &HeaderMap, body: Body) -> Result<T, ApiError> {
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(ApiError::TooLarge(MAX_BODY));
    }
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY)).await {
        Err(_) => return Err(ApiError::Timeout),
        Ok(Err(e)) => {
            let inner = e.into_inner();
            let too_large = std::iter::successors(Some(&*inner as &(dyn std::error::Error + 'static)), |e| e.source())
                .any(|e| e.is::<http_body_util::LengthLimitError>());
            return Err(if too_large {
                ApiError::TooLarge(MAX_BODY)
            } else {
                ApiError::InvalidRequest("the request body could not be read".into())
            });
        }
        Ok(Ok(b)) => b,
    };
    serde_json::from_slice(&bytes).map_err(|e| {
        use serde_json::error::Category;
        let at = format!("line {}, column {}", e.line(), e.column());
        ApiError::InvalidRequest(match e.classify() {
            Category::Syntax | Category::Eof | Category::Io => format!("malformed JSON ({at})"),
            Category::Data => {
                // Field names are ours to show; values are the client's and are not echoed.
                let m = e.to_string();
                if m.starts_with("missing field") || m.starts_with("unknown field") {
                    m.split(" at line").next().unwrap_or("unexpected field").replace(", expected one of", "; expected")
                } else {
                    format!("a field has the wrong type or value ({at})")
                }
            }
        })
    })
}
