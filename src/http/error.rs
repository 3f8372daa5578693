//! The one error type of the gate (and master): each variant maps to an HTTP status and a stable code of the wire
//! contract. Messages are for humans and never carry a token, a key or a request body.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::wire::{ErrorBody, ErrorCode, UpgradeInfo};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("the request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the client was too slow to send its request")]
    Timeout,
    #[error("invalid pairing token: {0}")]
    InvalidToken(&'static str),
    #[error("the pairing token has expired: ask the operator for a new one")]
    TokenExpired,
    #[error("the pairing token was already used{0}")]
    TokenUsed(&'static str),
    #[error("the pairing token was already used with another key; it is now locked")]
    KeyMismatch,
    #[error("pairing is closed: the operator must open a pairing window (cas-vpn pairing open)")]
    WindowClosed,
    #[error("too many failed attempts from this address: try again later")]
    Banned,
    #[error("too many attempts from this address are being evaluated at once: retry in a few seconds")]
    TooManyAttempts,
    #[error("invalid CSR: {0}")]
    InvalidCsr(String),
    #[error("weak key: {0}")]
    WeakKey(String),
    #[error("the CSR asks for CA rights or key-signing usages; terminals get client certificates only")]
    CsrCaRequested,
    #[error("the CSR asks for another name ({0}); the certificate can only be for this terminal")]
    CsrNameMismatch(String),
    #[error("terminal version {version} is older than {min}: upgrade first")]
    UpgradeRequired { version: String, min: u32, upgrade: Option<UpgradeInfo> },
    #[error(
        "OpenVPN {0} cannot use the issued profile (it needs tls-crypt-v2): install OpenVPN 2.5.0 or newer, or \
         OpenVPN 3 core 3.4 or newer, then pair again"
    )]
    OpenVpnTooOld(String),
    #[error("every download slot is busy: retry later")]
    SlotsFull { retry_after: u64 },
    #[error("the upgrade package is not available yet: retry later")]
    UpgradeUnavailable { retry_after: u64 },
    #[error("the current certificate is not yet in its renewal window (from {0})")]
    NotInRenewalWindow(String),
    #[error("the pairing was rejected by an administrator")]
    Rejected,
    #[error("the pairing request expired before it was approved: start again")]
    Expired,
    #[error("the server-made profile was delivered once and deleted: ask the operator to issue a new one")]
    AlreadyDelivered,
    #[error("too many pairings are waiting for approval: retry later")]
    TooManyPending,
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("forbidden")]
    Forbidden,
    #[error("internal error")]
    Internal,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        use ApiError::*;
        match self {
            InvalidRequest(_) | InvalidCsr(_) | WeakKey(_) | CsrCaRequested | CsrNameMismatch(_) => {
                StatusCode::BAD_REQUEST
            }
            TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            TooManyAttempts => StatusCode::TOO_MANY_REQUESTS,
            Timeout => StatusCode::REQUEST_TIMEOUT,
            InvalidToken(_) | TokenExpired | WindowClosed | Banned | Rejected | Forbidden => StatusCode::FORBIDDEN,
            TokenUsed(_) | KeyMismatch | NotInRenewalWindow(_) => StatusCode::CONFLICT,
            UpgradeRequired { .. } | OpenVpnTooOld(_) => StatusCode::UPGRADE_REQUIRED,
            SlotsFull { .. } | UpgradeUnavailable { .. } | TooManyPending => StatusCode::SERVICE_UNAVAILABLE,
            Expired | AlreadyDelivered => StatusCode::GONE,
            NotFound => StatusCode::NOT_FOUND,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable code of the wire contract.
    pub fn code(&self) -> ErrorCode {
        use ApiError::*;
        match self {
            InvalidRequest(_) => ErrorCode::InvalidRequest,
            TooLarge(_) => ErrorCode::TooLarge,
            Timeout => ErrorCode::Timeout,
            InvalidToken(_) => ErrorCode::InvalidToken,
            TokenExpired => ErrorCode::TokenExpired,
            TokenUsed(_) => ErrorCode::TokenUsed,
            KeyMismatch => ErrorCode::KeyMismatch,
            WindowClosed => ErrorCode::WindowClosed,
            Banned => ErrorCode::Banned,
            TooManyAttempts => ErrorCode::TooManyAttempts,
            InvalidCsr(_) => ErrorCode::InvalidCsr,
            WeakKey(_) => ErrorCode::WeakKey,
            CsrCaRequested => ErrorCode::CsrCaRequested,
            CsrNameMismatch(_) => ErrorCode::CsrNameMismatch,
            UpgradeRequired { .. } => ErrorCode::UpgradeRequired,
            OpenVpnTooOld(_) => ErrorCode::OpenvpnTooOld,
            SlotsFull { .. } => ErrorCode::SlotsFull,
            UpgradeUnavailable { .. } => ErrorCode::UpgradeUnavailable,
            NotInRenewalWindow(_) => ErrorCode::NotInRenewalWindow,
            Rejected => ErrorCode::Rejected,
            Expired => ErrorCode::Expired,
            AlreadyDelivered => ErrorCode::AlreadyDelivered,
            TooManyPending => ErrorCode::TooManyPending,
            NotFound => ErrorCode::NotFound,
            MethodNotAllowed => ErrorCode::MethodNotAllowed,
            Forbidden => ErrorCode::Forbidden,
            Internal => ErrorCode::Internal,
        }
    }

    /// Whether this refusal counts towards the per-address ban: anything a guessing or fuzzing client causes.
    /// A closed window, an old version, busy slots or our own faults never do.
    pub fn counts_as_failure(&self) -> bool {
        use ApiError::*;
        matches!(
            self,
            InvalidRequest(_)
                | TooLarge(_)
                | InvalidToken(_)
                | TokenExpired
                | TokenUsed(_)
                | KeyMismatch
                | InvalidCsr(_)
                | WeakKey(_)
                | CsrCaRequested
                | CsrNameMismatch(_)
                | NotFound
        )
    }

    /// Logs an internal fault (never shown to the client) and hides it behind `Internal`.
    pub fn internal(e: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %e, "internal error");
        ApiError::Internal
    }
}

impl From<cas_pki::CsrError> for ApiError {
    fn from(e: cas_pki::CsrError) -> ApiError {
        match e {
            cas_pki::CsrError::WeakKey(m) => ApiError::WeakKey(m),
            other => ApiError::InvalidCsr(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let retry_after = match &self {
            ApiError::SlotsFull { retry_after } | ApiError::UpgradeUnavailable { retry_after } => Some(*retry_after),
            ApiError::TooManyPending => Some(60),
            ApiError::TooManyAttempts => Some(2),
            _ => None,
        };
        let upgrade = match &self {
            ApiError::UpgradeRequired { upgrade, .. } => upgrade.clone(),
            _ => None,
        };
        let body = ErrorBody { error: self.code(), message: self.to_string(), upgrade };
        let mut resp = (status, axum::Json(body)).into_response();
        if let Some(secs) = retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }
}

impl From<crate::db::DbError> for ApiError {
    fn from(e: crate::db::DbError) -> ApiError {
        ApiError::internal(e)
    }
}

impl From<crate::app::AppError> for ApiError {
    fn from(e: crate::app::AppError) -> ApiError {
        ApiError::internal(e)
    }
}
