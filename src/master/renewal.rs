//! master's part in keeping the fleet's certificates alive: the renewal point it announces in each heartbeat
//! (`renew_after`, spread per certificate by `domain::renewal`), and the record of why a terminal's renewal
//! failed, as master saw it (its refusal) or as the terminal reports it in its next heartbeat
//! (`status.renew_failed`, optional: older agents never send it). A renewal that succeeds clears the record.

use serde_json::{Map, Value};

use crate::app::Ctx;
use crate::db::{CertRow, Credential};
use crate::domain::renewal::{FailureCode, FailureDetail, FailureSource, RenewalPolicy};
use crate::http::ApiError;
use crate::http::mtls::{PeerCertificate, serial_hex};

/// The key of a heartbeat's `status` object under which a terminal reports its last failed renewal.
pub const REPORT_KEY: &str = "renew_failed";

/// The renewal point of the certificate the terminal presented, so that a terminal still holding an older
/// certificate than the store's newest (its renewal's answer was lost) is told to renew now, and its retry with
/// the same key gets the newest certificate; otherwise that of its newest certificate (`current`).
pub async fn renew_after(
    ctx: &Ctx,
    policy: RenewalPolicy,
    current: &CertRow,
    presented: Option<&PeerCertificate>,
) -> Result<i64, ApiError> {
    let serial = presented.and_then(|p| serial_hex(&p.0));
    let cert = match serial {
        Some(s) if s != current.serial => ctx.store.certificate_by_serial(&s).await?,
        _ => None,
    };
    let cert = cert.as_ref().filter(|c| c.credential_id == current.credential_id).unwrap_or(current);
    Ok(policy.point(&cert.serial, cert.not_after))
}

/// A renewal failure the terminal reports: when (its clock) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reported {
    pub at: i64,
    pub code: FailureCode,
    pub detail: FailureDetail,
}

/// Reads `status.renew_failed` (`{"at": UNIX, "error": "code", "message": "text"}`) from a heartbeat; absent is
/// `None`, anything else malformed is refused before the heartbeat changes anything.
pub fn reported_failure(status: &Map<String, Value>) -> Result<Option<Reported>, ApiError> {
    let Some(v) = status.get(REPORT_KEY) else { return Ok(None) };
    if v.is_null() {
        return Ok(None);
    }
    let bad = |why: String| ApiError::InvalidRequest(format!("status.{REPORT_KEY}: {why}"));
    let obj = v.as_object().ok_or_else(|| bad("must be an object {\"at\", \"error\", \"message\"}".into()))?;
    let at = obj
        .get("at")
        .and_then(Value::as_i64)
        .filter(|t| *t > 0)
        .ok_or_else(|| bad("\"at\" must be Unix seconds".into()))?;
    let code = obj.get("error").and_then(Value::as_str).ok_or_else(|| bad("\"error\" must be a code".into()))?;
    let code: FailureCode = code.parse().map_err(|e: crate::domain::DomainError| bad(e.to_string()))?;
    let detail = obj.get("message").and_then(Value::as_str).unwrap_or("");
    let detail: FailureDetail = detail.parse().map_err(|e: crate::domain::DomainError| bad(e.to_string()))?;
    Ok(Some(Reported { at, code, detail }))
}

/// Keeps a terminal's reported failure. Dated by its clock but never later than master's (a clock running ahead
/// cannot date a failure in the future); a report no newer than the stored failure changes nothing.
pub async fn note_reported(ctx: &Ctx, c: &Credential, r: &Reported, now: i64) -> Result<(), ApiError> {
    let at = r.at.min(now);
    ctx.store.record_renewal_failure(c.id, FailureSource::Terminal, &r.code, &r.detail, at).await?;
    Ok(())
}

/// Why master did not renew: the answer the terminal gets, and what the store keeps.
pub struct Failure {
    pub answer: ApiError,
    pub code: &'static str,
    pub detail: String,
}

impl From<ApiError> for Failure {
    fn from(answer: ApiError) -> Failure {
        Failure { code: answer.code().as_str(), detail: answer.to_string(), answer }
    }
}

impl From<crate::db::DbError> for Failure {
    fn from(e: crate::db::DbError) -> Failure {
        Failure::from(ApiError::from(e))
    }
}

/// Records master's refusal or failure of `c`'s renewal; a store that cannot take it is logged, and the terminal
/// still gets the answer it was due.
pub async fn note_failure(ctx: &Ctx, c: &Credential, f: &Failure, now: i64) {
    let code: FailureCode = match f.code.parse() {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = %e, "master: a renewal failure code is not valid");
            return;
        }
    };
    let detail = FailureDetail::lossy(&f.detail);
    tracing::warn!(terminal = %c.name, code = %code, detail = %detail, "renewal refused or failed");
    if let Err(e) = ctx.store.record_renewal_failure(c.id, FailureSource::Master, &code, &detail, now).await {
        tracing::warn!(terminal = %c.name, error = %e, "master: could not record a renewal failure");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn status(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn a_reported_failure_is_read_or_refused_whole() {
        assert_eq!(reported_failure(&status(json!({"openvpn": "running"}))).unwrap(), None);
        assert_eq!(reported_failure(&status(json!({"renew_failed": null}))).unwrap(), None);
        let r = reported_failure(&status(
            json!({"renew_failed": {"at": 1_800_000_000, "error": "unreachable", "message": "timed out"}}),
        ))
        .unwrap()
        .unwrap();
        assert_eq!((r.at, r.code.as_str(), r.detail.as_str()), (1_800_000_000, "unreachable", "timed out"));
        for bad in [
            json!({"renew_failed": "yes"}),
            json!({"renew_failed": {"error": "x", "message": ""}}),
            json!({"renew_failed": {"at": -1, "error": "x"}}),
            json!({"renew_failed": {"at": 1, "error": "Not A Code"}}),
            json!({"renew_failed": {"at": 1, "error": "x", "message": "two\nlines"}}),
            json!({"renew_failed": {"at": 1, "error": "x", "message": "y".repeat(301)}}),
        ] {
            let e = reported_failure(&status(bad.clone())).unwrap_err();
            assert_eq!(e.code(), crate::wire::ErrorCode::InvalidRequest, "{bad}");
        }
    }
}
