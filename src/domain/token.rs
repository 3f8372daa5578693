//! `PairingToken`: what `cas-vpn terminal add` prints and a terminal presents to the gate once.
//!
//! `cv1.<id>.<secret>.<pin>`: a public lookup id (so the gate finds the row without comparing secrets), 160
//! random bits of secret (only its SHA-256 is stored), and the SHA-256 pin of the gate's TLS public key (so a
//! terminal authenticates the gate on first contact, with no CA to trust).

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

use super::DomainError;

const PREFIX: &str = "cv1";
const SECRET_LEN: usize = 20;

#[derive(Clone, PartialEq, Eq)]
pub struct PairingToken {
    id: String,
    secret: [u8; SECRET_LEN],
    pin: [u8; 32],
}

impl PairingToken {
    /// A new token for the gate whose TLS key has SHA-256 pin `pin`.
    pub fn generate(pin: [u8; 32]) -> PairingToken {
        PairingToken { id: hex::encode(rand::random::<[u8; 8]>()), secret: rand::random(), pin }
    }
    pub fn id(&self) -> &str {
        &self.id
    }
    pub fn pin(&self) -> &[u8; 32] {
        &self.pin
    }
    /// The only form of the secret that is stored: hex SHA-256. The secret has 160 random bits, so a slow hash
    /// would add nothing.
    pub fn secret_hash(&self) -> String {
        hex::encode(Sha256::digest(self.secret))
    }
    /// Constant-time check of a presented token's secret against a stored hash.
    pub fn matches_hash(&self, stored_hex: &str) -> bool {
        let ours = self.secret_hash();
        ours.len() == stored_hex.len()
            && ours.bytes().zip(stored_hex.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
    /// The full token text. Deliberately not `Display`: printing it must be a visible decision.
    pub fn expose(&self) -> String {
        format!("{PREFIX}.{}.{}.{}", self.id, B64.encode(self.secret), B64.encode(self.pin))
    }
}

impl Drop for PairingToken {
    fn drop(&mut self) {
        self.secret.zeroize();
    }
}

/// Never logs the secret.
impl fmt::Debug for PairingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PairingToken({}, secret: <redacted>)", self.id)
    }
}

impl FromStr for PairingToken {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // The message never repeats the input: it may be a real secret with a typo.
        let err = |why: &'static str| DomainError::Token { why };
        if s.len() > 200 {
            return Err(err("too long"));
        }
        let mut parts = s.trim().split('.');
        let (Some(prefix), Some(id), Some(secret), Some(pin), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(err("expected cv1.<id>.<secret>.<pin>"));
        };
        if prefix != PREFIX {
            return Err(err("unknown token version (expected cv1)"));
        }
        if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
            return Err(err("the id must be 16 lowercase hex digits"));
        }
        let secret: [u8; SECRET_LEN] =
            B64.decode(secret).ok().and_then(|v| v.try_into().ok()).ok_or(err("the secret part is damaged"))?;
        let pin: [u8; 32] =
            B64.decode(pin).ok().and_then(|v| v.try_into().ok()).ok_or(err("the pin part is damaged"))?;
        Ok(PairingToken { id: id.to_owned(), secret, pin })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_hash() {
        let t = PairingToken::generate([7; 32]);
        let text = t.expose();
        let back: PairingToken = text.parse().unwrap();
        assert_eq!(back, t);
        assert!(back.matches_hash(&t.secret_hash()));
        assert!(!PairingToken::generate([7; 32]).matches_hash(&t.secret_hash()));
        assert!(!format!("{t:?}").contains(&text.split('.').nth(2).unwrap().to_string()));
    }

    #[test]
    fn refuses_damaged_tokens_without_echoing_them() {
        let t = PairingToken::generate([1; 32]).expose();
        let secret = t.split('.').nth(2).unwrap().to_owned();
        for bad in [
            String::new(),
            t.replacen("cv1", "cv2", 1),
            t[..t.len() - 2].to_owned(),
            format!("{t}.x"),
            t.replace('.', " "),
        ] {
            let e = bad.parse::<PairingToken>().unwrap_err().to_string();
            assert!(!e.contains(&secret), "{e}");
        }
    }
}
