//! Time-based one-time codes (RFC 6238: SHA-1, 6 digits, 30 s, one step of clock skew each way), their QR code for
//! an authenticator app (SVG, no script), and recovery codes.
//!
//! A code is accepted once: the caller keeps the last step each user used (`Replay`), as the RFC asks.

use std::collections::HashMap;
use std::sync::Mutex;

use totp_rs::{Builder, Secret, Totp};

const ISSUER: &str = "cas-vpn";
/// Recovery codes per enrolment.
pub const RECOVERY_CODES: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum TotpError {
    #[error("the stored TOTP seed is unusable: {0}")]
    Seed(String),
}

fn totp(seed_base32: &str, account: &str) -> Result<Totp, TotpError> {
    let secret = Secret::try_from_base32(seed_base32).map_err(|e| TotpError::Seed(e.to_string()))?;
    Builder::new()
        .with_secret(secret)
        .with_account_name(account)
        .with_issuer(Some(ISSUER))
        .build()
        .map_err(|e| TotpError::Seed(e.to_string()))
}

/// A new random seed (160 bits), base32.
pub fn new_seed() -> String {
    Secret::generate().to_base32()
}

/// The step `code` matches at unix time `now`, if any. Spaces in the code are ignored.
pub fn check(seed_base32: &str, account: &str, code: &str, now: i64) -> Result<Option<u64>, TotpError> {
    let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    Ok(totp(seed_base32, account)?.check(&code, u64::try_from(now).unwrap_or(0)))
}

/// The code for unix time `now` (tests and the benchmark play the authenticator with it).
pub fn code_at(seed_base32: &str, account: &str, now: i64) -> Result<String, TotpError> {
    Ok(totp(seed_base32, account)?.generate(u64::try_from(now).unwrap_or(0)).to_string())
}

/// The `otpauth://` URL an authenticator app reads from the QR code.
pub fn url(seed_base32: &str, account: &str) -> Result<String, TotpError> {
    totp(seed_base32, account)?.to_url().map_err(|e| TotpError::Seed(e.to_string()))
}

/// `text` as a QR code in SVG (black on white, no script).
pub fn qr_svg(text: &str) -> Option<String> {
    let code = qrcode::QrCode::new(text.as_bytes()).ok()?;
    Some(code.render::<qrcode::render::svg::Color>().min_dimensions(200, 200).quiet_zone(true).build())
}

/// `text` as a QR code in a `data:` URL for an `<img>` (the page's CSP allows `img-src data:`).
pub fn qr_data_url(text: &str) -> Option<String> {
    use base64::Engine;
    qr_svg(text).map(|svg| {
        format!("data:image/svg+xml;base64,{}", base64::engine::general_purpose::STANDARD.encode(svg.as_bytes()))
    })
}

/// Fresh recovery codes, `xxxxx-xxxxx` from an unambiguous alphabet (50 bits each).
pub fn recovery_codes() -> Vec<String> {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
    (0..RECOVERY_CODES)
        .map(|_| {
            let mut s: String = (0..10).map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char).collect();
            s.insert(5, '-');
            s
        })
        .collect()
}

/// How a typed recovery code is compared: lower case, without spaces.
pub fn normalize_recovery(code: &str) -> String {
    code.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_ascii_lowercase()
}

/// The last TOTP step each user logged in with: a step is never accepted twice for one user.
#[derive(Default)]
pub struct Replay {
    last: Mutex<HashMap<i64, u64>>,
}

impl Replay {
    /// Records `step` for `user`; `false` when it (or a later step) was used already.
    pub fn accept(&self, user: i64, step: u64) -> bool {
        let mut last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match last.get(&user) {
            Some(&prev) if prev >= step => false,
            _ => {
                last.insert(user, step);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_check_with_one_step_of_skew() {
        let seed = new_seed();
        let now = 1_800_000_000;
        let code = code_at(&seed, "alice", now).unwrap();
        assert!(check(&seed, "alice", &code, now).unwrap().is_some());
        assert!(check(&seed, "alice", &code, now + 30).unwrap().is_some(), "one step late is fine");
        assert!(check(&seed, "alice", &code, now + 90).unwrap().is_none(), "three steps late is not");
        assert!(check(&seed, "alice", "12345", now).unwrap().is_none());
        assert!(check(&seed, "alice", "abcdef", now).unwrap().is_none());
        let spaced = format!("{} {}", &code[..3], &code[3..]);
        assert!(check(&seed, "alice", &spaced, now).unwrap().is_some());
        assert!(url(&seed, "alice").unwrap().starts_with("otpauth://totp/cas-vpn:alice?"));
        assert!(qr_svg("otpauth://totp/x").unwrap().contains("<svg"));
        assert!(check("not base32!", "alice", "123456", now).is_err());
    }

    #[test]
    fn a_step_is_accepted_once() {
        let r = Replay::default();
        assert!(r.accept(1, 100));
        assert!(!r.accept(1, 100));
        assert!(!r.accept(1, 99));
        assert!(r.accept(2, 100));
        assert!(r.accept(1, 101));
    }

    #[test]
    fn recovery_codes_are_distinct_and_readable() {
        let codes = recovery_codes();
        assert_eq!(codes.len(), RECOVERY_CODES);
        assert!(codes.iter().all(|c| c.len() == 11 && c.as_bytes()[5] == b'-'));
        let set: std::collections::HashSet<_> = codes.iter().collect();
        assert_eq!(set.len(), codes.len());
        assert_eq!(normalize_recovery(" AbCde-FGhjk "), "abcde-fghjk");
    }
}
