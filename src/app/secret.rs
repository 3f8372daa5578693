//! One-time secrets the services hand out (web session ids, CSRF tokens, setup and download links, API tokens):
//! 256 random bits, URL-safe; the store keeps only their SHA-256.

use base64::Engine;
use sha2::{Digest, Sha256};

/// 256 random bits, URL-safe base64 without padding (43 characters).
pub fn new_secret() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// What the store keeps of a secret: its SHA-256, hex. The secrets have 256 random bits: no slow hash is needed.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}
