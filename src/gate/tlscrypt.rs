//! The tls-crypt-v2 client key of a delivered profile, derived deterministically from the server key and the
//! certificate it goes with, so that a retried pairing (or a repeated poll) gets byte-for-byte the same `.ovpn`
//! without the gate storing any client key (the store never holds key material).
//!
//! `Kc` = HMAC-SHA256 in counter mode under a key derived from the tls-crypt-v2 server key, over the terminal's
//! name and certificate serial. Anyone holding the server key can already unwrap every client key, so deriving
//! from it gives nothing away. The wrapping itself follows OpenVPN's `doc/tls-crypt-v2.txt` exactly as
//! `cas_pki::TlsCryptV2ServerKey` does (which exposes wrapping only with a random `Kc`); every key made here is
//! checked by unwrapping it with `cas_pki` before use, so the two implementations cannot drift apart silently.

use aes::Aes256;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ctr::Ctr128BE;
use ctr::cipher::{KeyIvInit, StreamCipher};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use cas_pki::{ClientMetadata, TlsCryptV2ClientKey, TlsCryptV2ServerKey};

use crate::domain::{Kind, Name};
use crate::ops::profile::metadata_for;

type HmacSha256 = Hmac<Sha256>;

const CLIENT_KEY_LEN: usize = 256;
const SERVER_KEY_LEN: usize = 128;

/// A server key kept with its raw halves, for derivation.
pub struct Deriver {
    server: TlsCryptV2ServerKey,
    raw: Zeroizing<Vec<u8>>,
}

impl Deriver {
    pub fn new(server: TlsCryptV2ServerKey) -> Result<Deriver, String> {
        let pem = server.to_pem();
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let raw = Zeroizing::new(B64.decode(body.trim()).map_err(|_| "unreadable tls-crypt-v2 server key".to_owned())?);
        if raw.len() != SERVER_KEY_LEN {
            return Err("unexpected tls-crypt-v2 server key size".into());
        }
        Ok(Deriver { server, raw })
    }

    /// The client key file (PEM) for terminal `name` holding certificate `serial`: always the same for the same
    /// inputs, different for any other certificate.
    pub fn client_key_pem(&self, name: &Name, serial: &str) -> Result<Zeroizing<String>, String> {
        let ClientMetadata::User(meta_user) = metadata_for(Kind::Terminal, name) else {
            return Err("unexpected metadata type".into());
        };
        let mut metadata = Vec::with_capacity(1 + meta_user.len());
        metadata.push(0x00);
        metadata.extend_from_slice(&meta_user);

        let kc = self.derive_kc(name, serial);
        let wkc = self.wrap(&kc, &metadata);
        // Check with the reference implementation: the tag verifies and the metadata reads back.
        let (back, meta) = self.server.unwrap(&wkc).map_err(|e| format!("derived key does not unwrap: {e}"))?;
        if back.as_slice() != kc.as_slice() || meta != metadata_for(Kind::Terminal, name) {
            return Err("derived key does not round-trip".into());
        }
        let mut both = Zeroizing::new(Vec::with_capacity(kc.len() + wkc.len()));
        both.extend_from_slice(&kc);
        both.extend_from_slice(&wkc);
        let b64 = Zeroizing::new(B64.encode(&both[..]));
        let mut pem = String::from("-----BEGIN OpenVPN tls-crypt-v2 client key-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(chunk).unwrap_or_default());
            pem.push('\n');
        }
        pem.push_str("-----END OpenVPN tls-crypt-v2 client key-----\n");
        let pem = Zeroizing::new(pem);
        // Re-encode through cas_pki so the file looks exactly like every other client key it writes.
        Ok(TlsCryptV2ClientKey::from_pem(&pem).map_err(|e| e.to_string())?.to_pem())
    }

    fn derive_kc(&self, name: &Name, serial: &str) -> Zeroizing<Vec<u8>> {
        let mut prk = <HmacSha256 as Mac>::new_from_slice(&self.raw).expect("HMAC takes any key length");
        prk.update(b"cas-vpn/gate/tls-crypt-v2-kc/v1");
        let prk = Zeroizing::new(prk.finalize().into_bytes().to_vec());
        let mut kc = Zeroizing::new(Vec::with_capacity(CLIENT_KEY_LEN));
        for i in 0u8.. {
            if kc.len() >= CLIENT_KEY_LEN {
                break;
            }
            let mut m = <HmacSha256 as Mac>::new_from_slice(&prk).expect("HMAC takes any key length");
            m.update(&[i]);
            m.update(name.as_str().as_bytes());
            m.update(&[0]);
            m.update(serial.as_bytes());
            kc.extend_from_slice(&m.finalize().into_bytes());
        }
        kc.truncate(CLIENT_KEY_LEN);
        kc
    }

    /// `WKc = T || AES-256-CTR(Ke, IV = T[..16], Kc || metadata) || len`, `T = HMAC-SHA256(Ka, len || Kc || metadata)`.
    fn wrap(&self, kc: &[u8], metadata: &[u8]) -> Vec<u8> {
        let total = 32 + kc.len() + metadata.len() + 2;
        let len = u16::try_from(total).unwrap_or(u16::MAX).to_be_bytes();
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&self.raw[64..96]).expect("HMAC takes any key length");
        mac.update(&len);
        mac.update(kc);
        mac.update(metadata);
        let tag = mac.finalize().into_bytes();
        let mut wkc = Vec::with_capacity(total);
        wkc.extend_from_slice(&tag);
        wkc.extend_from_slice(kc);
        wkc.extend_from_slice(metadata);
        let mut cipher = Ctr128BE::<Aes256>::new_from_slices(&self.raw[0..32], &tag[..16])
            .expect("a 32-byte key and a 16-byte IV fit AES-256-CTR");
        cipher.apply_keystream(&mut wkc[32..]);
        wkc.extend_from_slice(&len);
        wkc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_keys_are_stable_valid_and_distinct() {
        let server = TlsCryptV2ServerKey::generate();
        let server_pem = server.to_pem();
        let d = Deriver::new(server).unwrap();
        let name: Name = "atm-1".parse().unwrap();
        let a = d.client_key_pem(&name, "0a1b").unwrap();
        assert_eq!(a, d.client_key_pem(&name, "0a1b").unwrap());
        assert_ne!(a, d.client_key_pem(&name, "0a1c").unwrap());
        assert_ne!(a, d.client_key_pem(&"atm-2".parse().unwrap(), "0a1b").unwrap());

        // The reference implementation reads it, and the front would route it to atm-1.
        let key = TlsCryptV2ClientKey::from_pem(&a).unwrap();
        let reloaded = TlsCryptV2ServerKey::from_pem(&server_pem).unwrap();
        let (kc, meta) = reloaded.unwrap(key.wrapped_key()).unwrap();
        assert_eq!(kc.as_slice(), key.client_key());
        assert_eq!(crate::ops::profile::parse_metadata(&meta), Some((Kind::Terminal, name)));

        // Another server key derives something else.
        let other = Deriver::new(TlsCryptV2ServerKey::generate()).unwrap();
        assert_ne!(a, other.client_key_pem(&"atm-1".parse().unwrap(), "0a1b").unwrap());
    }
}
