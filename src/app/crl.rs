//! CRLs: made from the store (the source of truth), checked, and swapped in atomically. An expired CRL locks out
//! every client, so `is_fresh` says when one must be remade long before its nextUpdate.

use cas_pki::{RevocationReason, Revoked, Serial};
use std::time::Instant;

use serde::Serialize;
use time::Duration;

use super::{AppError, Ctx, to_datetime};
use crate::db::Store;
use crate::domain::Kind;

/// thisUpdate is backdated: a CRL "from the future" (clock skew between hosts) is rejected by OpenVPN.
const BACKDATE: Duration = Duration::minutes(5);

#[derive(Debug, Serialize)]
pub struct CrlReport {
    pub ca: Kind,
    pub crl_number: u64,
    pub revoked: usize,
    pub next_update: String,
    #[serde(skip)]
    pub pem: String,
    /// How long each step took (zero when another process made the CRL); the CRL bench prints them.
    #[serde(skip)]
    pub timings: CrlTimings,
}

/// The time of each step of `refresh`.
#[derive(Debug, Default, Clone, Copy)]
pub struct CrlTimings {
    /// Reading the revoked serials from the store.
    pub store_read: std::time::Duration,
    /// Taking the next CRL number in the store.
    pub store_number: std::time::Duration,
    /// DER encoding and signing.
    pub sign: std::time::Duration,
    /// The pre-flight check of the signed CRL.
    pub preflight: std::time::Duration,
    /// The atomic write of the file.
    pub write: std::time::Duration,
    /// Keeping the CRL in the store for the other nodes.
    pub store_record: std::time::Duration,
}

/// How long a new CRL is valid (nextUpdate − now): `crl_validity`, else `crl_days` from config/vpn.
pub fn validity(ctx: &Ctx) -> Duration {
    let defaults = crate::config::VpnConfig::default();
    let vpn = ctx.cfg.vpn.as_ref().unwrap_or(&defaults);
    match vpn.crl_validity {
        Some(d) => Duration::seconds(i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
        None => Duration::days(i64::from(vpn.crl_days)),
    }
}

/// How often `serve` checks the CRLs: a tenth of their validity, at most every minute, so a CRL is renewed when
/// half its life is left and can never expire while `serve` runs.
pub fn check_period(ctx: &Ctx) -> std::time::Duration {
    let tenth = validity(ctx).whole_milliseconds() / 10;
    std::time::Duration::from_millis(u64::try_from(tenth).unwrap_or(60_000).clamp(200, 60_000))
}

/// Publishes a fresh CRL of `kind` through the signer when it runs (the CA key stays in the signer's process,
/// and the operator's shell needs no CA passphrase), else in this process (a root CLI with no services running).
pub async fn publish(ctx: &Ctx, kind: Kind) -> Result<CrlReport, AppError> {
    use crate::control::signer::{self, SignerError};
    match signer::publish_crl(&ctx.cfg.root, kind).await {
        Ok(p) => Ok(CrlReport {
            ca: kind,
            crl_number: p.crl_number,
            revoked: p.revoked,
            next_update: p.next_update,
            pem: ctx.pki.read_crl(kind)?.unwrap_or_default(),
            timings: CrlTimings::default(),
        }),
        Err(SignerError::NotRunning { .. }) => refresh(ctx, kind).await,
        Err(e) => Err(AppError::Other(format!("CRL of the {kind} CA: {e}"))),
    }
}

/// Makes a new CRL for `kind` from the store and publishes it, in this process (it loads the CA key).
pub async fn refresh(ctx: &Ctx, kind: Kind) -> Result<CrlReport, AppError> {
    let ca = ctx.pki.load_ca(kind)?;
    let mut timings = CrlTimings::default();
    let t = Instant::now();
    let groups = ctx.store.revoked_serials(kind).await?;
    // A stored serial is 32 hex digits and a comma.
    let mut revoked = Vec::with_capacity(groups.iter().map(|(_, _, serials)| serials.len() / 33 + 1).sum());
    for (at, reason, serials) in &groups {
        let revoked_at = to_datetime(*at);
        let reason = published_reason(serials, reason);
        for serial in serials.split(',') {
            let serial = serial.parse::<Serial>().map_err(|e| AppError::Ca(format!("stored serial {serial}: {e}")))?;
            revoked.push(Revoked { serial, revoked_at, reason });
        }
    }
    drop(groups);
    timings.store_read = t.elapsed();
    let now = time::OffsetDateTime::now_utc();
    let this_update = now - BACKDATE;
    let next_update = now + validity(ctx);
    let t = Instant::now();
    let number = ctx.store.next_crl_number(kind, this_update.unix_timestamp(), next_update.unix_timestamp()).await?;
    timings.store_number = t.elapsed();
    let (pem, steps) = ctx.pki.publish_crl(&ca, kind, &revoked, number, this_update, next_update)?;
    (timings.sign, timings.preflight, timings.write) = (steps.sign, steps.check, steps.write);
    // The other nodes publish this same CRL (`adopt`), so one that was down heals itself. SQLite serves one
    // node, whose processes all read the file just written: a copy in the store (6.6 MB at 100,000 entries,
    // written twice through the WAL) would serve no one.
    let t = Instant::now();
    if !matches!(ctx.store, Store::Sqlite(_)) {
        ctx.store.record_crl(kind, number, &pem).await?;
    }
    timings.store_record = t.elapsed();
    Ok(CrlReport {
        ca: kind,
        crl_number: number,
        revoked: revoked.len(),
        next_update: super::rfc3339(next_update.unix_timestamp()),
        pem,
        timings,
    })
}

/// Publishes the store's CRL of `kind` when it is newer than the one on disk (another node made it after a
/// revocation or on its timer). Returns its number when it did.
pub async fn adopt(ctx: &Ctx, kind: Kind) -> Result<Option<u64>, AppError> {
    let local = ctx.pki.crl_number(kind)?;
    let Some((number, pem)) = ctx.store.crl_newer_than(kind, local).await? else { return Ok(None) };
    ctx.pki.install_crl(kind, &pem)?;
    Ok(Some(number))
}

/// The reason CRL entries carry for the stored `reason` of `serials` (the certificates revoked at one time with
/// that reason, joined by commas; the log names the first and counts them). No reason recorded (empty) is
/// `unspecified`, as RFC 5280 means it. A stored reason this version cannot read is a fault of the store, logged
/// loudly with the serial, and the entry is still published, as `unspecified`: the certificate IS revoked, and
/// revocation must never be blocked by unrelated data. Failing the CRL instead would keep a revoked certificate
/// usable and, once the current CRL expires, lock out every client; only the reason, which no one enforces, is
/// lost.
fn published_reason(serials: &str, stored: &str) -> RevocationReason {
    match stored_reason(stored) {
        Ok(reason) => reason,
        Err(e) => {
            tracing::error!(
                serial = serials.split(',').next().unwrap_or_default(),
                certificates = serials.split(',').count(),
                stored = %crate::domain::shown(stored),
                error = %e,
                "revoked certificate with an unreadable revocation reason in the store: published as unspecified"
            );
            RevocationReason::Unspecified
        }
    }
}

/// Reads a stored revocation reason: empty means none was recorded.
fn stored_reason(stored: &str) -> Result<RevocationReason, cas_pki::CrlError> {
    if stored.is_empty() { Ok(RevocationReason::Unspecified) } else { stored.parse() }
}

/// True when the CRL on disk exists, matches the store's last CRL, and has more than half its lifetime left.
pub fn is_fresh(ctx: &Ctx, kind: Kind) -> Result<bool, AppError> {
    let Some(pem) = ctx.pki.read_crl(kind)? else { return Ok(false) };
    let Ok(crl) = openssl::x509::X509Crl::from_pem(pem.as_bytes()) else { return Ok(false) };
    let Some(next) = crl.next_update() else { return Ok(false) };
    let half = validity(ctx).whole_seconds() / 2;
    let Ok(limit) = openssl::asn1::Asn1Time::from_unix(super::now() + half) else { return Ok(false) };
    Ok(next > limit.as_ref())
}

/// Seconds until the CRL on disk expires (negative when it has), for status and doctor.
pub fn seconds_left(ctx: &Ctx, kind: Kind) -> Result<Option<i64>, AppError> {
    let Some(pem) = ctx.pki.read_crl(kind)? else { return Ok(None) };
    let crl = openssl::x509::X509Crl::from_pem(pem.as_bytes()).map_err(|e| AppError::Ca(e.to_string()))?;
    let Some(next) = crl.next_update() else { return Ok(None) };
    let now = openssl::asn1::Asn1Time::days_from_now(0).map_err(|e| AppError::Ca(e.to_string()))?;
    let diff = now.diff(next).map_err(|e| AppError::Ca(e.to_string()))?;
    Ok(Some(i64::from(diff.days) * 86400 + i64::from(diff.secs)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_recorded_reason_is_unspecified() {
        assert_eq!(stored_reason("").unwrap(), RevocationReason::Unspecified);
        assert_eq!(published_reason("01", ""), RevocationReason::Unspecified);
        for r in RevocationReason::ALL {
            assert_eq!(stored_reason(r.as_str()).unwrap(), r);
            assert_eq!(published_reason("01", r.as_str()), r);
        }
    }

    #[test]
    fn an_unreadable_reason_is_an_error_yet_the_entry_is_published() {
        for bad in ["keyCompromise", "left the company", " superseded", "unspecified\n"] {
            assert!(stored_reason(bad).is_err(), "{bad:?} must not read as a reason");
            // Still on the CRL (as unspecified): a revoked certificate is never left off for its reason's sake.
            assert_eq!(published_reason("0a1b", bad), RevocationReason::Unspecified, "{bad:?}");
        }
    }
}
