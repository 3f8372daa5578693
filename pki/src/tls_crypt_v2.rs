//! OpenVPN tls-crypt-v2 keys, made natively (one `openvpn --genkey` process per client is too slow for a
//! fleet).
//!
//! The format, as specified in OpenVPN's `doc/tls-crypt-v2.txt` and implemented in
//! `src/openvpn/tls_crypt.c`:
//!
//! * Server key: 128 bytes = two 64-byte halves (cipher, then HMAC); only the first 32 bytes of each are
//!   used: `Ke` (AES-256-CTR) and `Ka` (HMAC-SHA256). PEM label `OpenVPN tls-crypt-v2 server key`.
//! * Client key `Kc`: 256 random bytes.
//! * Metadata: one type byte (`0x00` user data, `0x01` timestamp as 8-byte big-endian Unix time), at most
//!   734 bytes in all, so at most 733 bytes of user data.
//! * `len` = length of `WKc` as a big-endian u16; `T = HMAC-SHA256(Ka, len || Kc || metadata)`;
//!   `WKc = T || AES-256-CTR(Ke, IV = T[..16], Kc || metadata) || len`; at most 1024 bytes.
//! * Client key file: PEM `OpenVPN tls-crypt-v2 client key` of `Kc || WKc`, 64 columns.
//!
//! [`TlsCryptV2ServerKey::unwrap`] is meant to run on untrusted bytes (a front proxy): it checks lengths
//! before touching them, compares the tag in constant time, and never panics.

use std::fmt;

use aes::Aes256;
use ctr::Ctr128BE;
use ctr::cipher::{KeyIvInit, StreamCipher};
use hmac::{Hmac, Mac};
use rand::RngCore as _;
use sha2::Sha256;
use thiserror::Error;
use zeroize::Zeroizing;

use crate::pem;

const SERVER_PEM_LABEL: &str = "OpenVPN tls-crypt-v2 server key";
const CLIENT_PEM_LABEL: &str = "OpenVPN tls-crypt-v2 client key";

/// Size of the server key file's payload (OpenVPN's `struct key`: 64-byte cipher + 64-byte HMAC half).
pub const SERVER_KEY_LEN: usize = 128;
/// Size of a client key `Kc` (OpenVPN's `struct key2` keys: 2 × 128 bytes).
pub const CLIENT_KEY_LEN: usize = 256;
/// Largest wrapped client key OpenVPN accepts.
pub const MAX_WKC_LEN: usize = 1024;
/// Size of the HMAC-SHA256 tag at the front of `WKc`.
const TAG_LEN: usize = 32;
/// Size of the trailing length field.
const LEN_FIELD: usize = 2;
/// Largest metadata, type byte included.
pub const MAX_METADATA_LEN: usize = MAX_WKC_LEN - (CLIENT_KEY_LEN + TAG_LEN + LEN_FIELD);
/// Largest user metadata payload (after the type byte).
pub const MAX_USER_METADATA_LEN: usize = MAX_METADATA_LEN - 1;
/// Smallest `WKc` carrying a key and a metadata type byte.
const MIN_WKC_LEN: usize = TAG_LEN + CLIENT_KEY_LEN + 1 + LEN_FIELD;
/// Offsets of the key halves in the server key.
const KE_RANGE: std::ops::Range<usize> = 0..32;
const KA_RANGE: std::ops::Range<usize> = 64..96;
/// Cap on PEM text we read (a client key file is about 1.7 KiB).
const MAX_PEM_LEN: usize = 8 * 1024;

const METADATA_TYPE_USER: u8 = 0x00;
const METADATA_TYPE_TIMESTAMP: u8 = 0x01;

type Aes256Ctr = Ctr128BE<Aes256>;
type HmacSha256 = Hmac<Sha256>;

/// tls-crypt-v2 errors. They never contain key bytes.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TlsCryptError {
    #[error("malformed tls-crypt-v2 key file: {0}")]
    MalformedPem(String),
    #[error("user metadata is {0} bytes; at most 733 allowed")]
    MetadataTooLong(usize),
    #[error("wrapped client key is {0} bytes; it must be between 291 and 1024")]
    BadLength(usize),
    #[error("wrapped client key length field does not match its size")]
    LengthMismatch,
    #[error("wrapped client key failed authentication (wrong server key or tampered)")]
    AuthFailed,
    #[error("unrecognised client key metadata: {0}")]
    BadMetadata(String),
}

/// The metadata wrapped with a client key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClientMetadata {
    /// Type 0x00: free-form bytes (what `openvpn --genkey tls-crypt-v2-client FILE BASE64` stores).
    User(Vec<u8>),
    /// Type 0x01: Unix time of key creation (OpenVPN's default; `--tls-crypt-v2-max-age` reads it).
    Timestamp(u64),
}

impl ClientMetadata {
    /// A timestamp of the current time, as OpenVPN writes by default.
    pub fn timestamp_now() -> ClientMetadata {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        ClientMetadata::Timestamp(u64::try_from(now).unwrap_or(0))
    }

    fn encode(&self) -> Result<Vec<u8>, TlsCryptError> {
        Ok(match self {
            ClientMetadata::User(data) => {
                if data.len() > MAX_USER_METADATA_LEN {
                    return Err(TlsCryptError::MetadataTooLong(data.len()));
                }
                let mut out = Vec::with_capacity(1 + data.len());
                out.push(METADATA_TYPE_USER);
                out.extend_from_slice(data);
                out
            }
            ClientMetadata::Timestamp(t) => {
                let mut out = Vec::with_capacity(9);
                out.push(METADATA_TYPE_TIMESTAMP);
                out.extend_from_slice(&t.to_be_bytes());
                out
            }
        })
    }

    fn decode(raw: &[u8]) -> Result<ClientMetadata, TlsCryptError> {
        match raw.split_first() {
            None => Err(TlsCryptError::BadMetadata("empty".into())),
            Some((&METADATA_TYPE_USER, rest)) => Ok(ClientMetadata::User(rest.to_vec())),
            Some((&METADATA_TYPE_TIMESTAMP, rest)) => {
                let bytes: [u8; 8] = rest.try_into().map_err(|_| {
                    TlsCryptError::BadMetadata(format!("timestamp of {} bytes; 8 expected", rest.len()))
                })?;
                Ok(ClientMetadata::Timestamp(u64::from_be_bytes(bytes)))
            }
            Some((t, _)) => Err(TlsCryptError::BadMetadata(format!("type 0x{t:02x}"))),
        }
    }
}

/// The tls-crypt-v2 server key shared by all OpenVPN instances of a group.
pub struct TlsCryptV2ServerKey {
    raw: Zeroizing<[u8; SERVER_KEY_LEN]>,
}

impl TlsCryptV2ServerKey {
    /// 128 random bytes, like `openvpn --genkey tls-crypt-v2-server`.
    pub fn generate() -> TlsCryptV2ServerKey {
        let mut raw = Zeroizing::new([0u8; SERVER_KEY_LEN]);
        rand::rng().fill_bytes(&mut raw[..]);
        TlsCryptV2ServerKey { raw }
    }

    /// Reads an `OpenVPN tls-crypt-v2 server key` PEM file.
    pub fn from_pem(pem: &str) -> Result<TlsCryptV2ServerKey, TlsCryptError> {
        let der = decode_pem(pem, SERVER_PEM_LABEL)?;
        if der.len() != SERVER_KEY_LEN {
            return Err(TlsCryptError::MalformedPem(format!(
                "server key is {} bytes; {SERVER_KEY_LEN} expected",
                der.len()
            )));
        }
        let mut raw = Zeroizing::new([0u8; SERVER_KEY_LEN]);
        raw.copy_from_slice(&der);
        Ok(TlsCryptV2ServerKey { raw })
    }

    /// The PEM file OpenVPN reads with `tls-crypt-v2 FILE` on the server.
    pub fn to_pem(&self) -> Zeroizing<String> {
        pem::encode(SERVER_PEM_LABEL, &self.raw[..])
    }

    /// Wraps a new random client key with `metadata`.
    pub fn wrap_client_key(&self, metadata: &ClientMetadata) -> Result<TlsCryptV2ClientKey, TlsCryptError> {
        let metadata = metadata.encode()?;
        let mut kc = Zeroizing::new(vec![0u8; CLIENT_KEY_LEN]);
        rand::rng().fill_bytes(&mut kc);
        let wkc = self.wrap(&kc, &metadata);
        Ok(TlsCryptV2ClientKey { kc, wkc })
    }

    /// Wraps a client key *derived* from this server key and `context` (HMAC-SHA256 in counter mode under a key
    /// extracted from the server key): the same inputs give the same bytes, any other context another key. A server
    /// can then hand out an identical profile again (a retried request) without storing any client key. Anyone
    /// holding the server key can unwrap every client key anyway, so deriving from it reveals nothing new.
    pub fn wrap_derived_client_key(
        &self,
        context: &[u8],
        metadata: &ClientMetadata,
    ) -> Result<TlsCryptV2ClientKey, TlsCryptError> {
        let metadata = metadata.encode()?;
        let mut prk = <HmacSha256 as Mac>::new_from_slice(&self.raw[..]).expect("HMAC accepts keys of any length");
        prk.update(b"cas-pki/tls-crypt-v2/derived-client-key/v1");
        let prk = Zeroizing::new(prk.finalize().into_bytes().to_vec());
        let mut kc = Zeroizing::new(Vec::with_capacity(CLIENT_KEY_LEN + 32));
        for block in 0u8.. {
            if kc.len() >= CLIENT_KEY_LEN {
                break;
            }
            let mut m = <HmacSha256 as Mac>::new_from_slice(&prk).expect("HMAC accepts keys of any length");
            m.update(&[block]);
            m.update(context);
            kc.extend_from_slice(&m.finalize().into_bytes());
        }
        kc.truncate(CLIENT_KEY_LEN);
        let wkc = self.wrap(&kc, &metadata);
        Ok(TlsCryptV2ClientKey { kc, wkc })
    }

    /// Recovers `Kc` and the metadata from a wrapped client key. Safe on untrusted input.
    pub fn unwrap(&self, wkc: &[u8]) -> Result<(Zeroizing<Vec<u8>>, ClientMetadata), TlsCryptError> {
        if !(MIN_WKC_LEN..=MAX_WKC_LEN).contains(&wkc.len()) {
            return Err(TlsCryptError::BadLength(wkc.len()));
        }
        let (tag, rest) = wkc.split_at(TAG_LEN);
        let (ciphertext, len_field) = rest.split_at(rest.len() - LEN_FIELD);
        if usize::from(u16::from_be_bytes([len_field[0], len_field[1]])) != wkc.len() {
            return Err(TlsCryptError::LengthMismatch);
        }

        let mut plaintext = Zeroizing::new(ciphertext.to_vec());
        self.cipher(tag).apply_keystream(&mut plaintext);

        let mut mac = self.mac();
        mac.update(len_field);
        mac.update(&plaintext);
        // `verify_slice` compares in constant time.
        mac.verify_slice(tag).map_err(|_| TlsCryptError::AuthFailed)?;

        let metadata = ClientMetadata::decode(&plaintext[CLIENT_KEY_LEN..])?;
        let kc = Zeroizing::new(plaintext[..CLIENT_KEY_LEN].to_vec());
        Ok((kc, metadata))
    }

    /// `T || AES-256-CTR(Ke, T[..16], Kc || metadata) || len`. Lengths were checked by the caller.
    fn wrap(&self, kc: &[u8], metadata: &[u8]) -> Vec<u8> {
        let total = TAG_LEN + kc.len() + metadata.len() + LEN_FIELD;
        let len_field =
            u16::try_from(total).expect("metadata length is capped so WKc fits in 1024 bytes").to_be_bytes();

        let mut mac = self.mac();
        mac.update(&len_field);
        mac.update(kc);
        mac.update(metadata);
        let tag = mac.finalize().into_bytes();

        let mut wkc = Vec::with_capacity(total);
        wkc.extend_from_slice(&tag);
        wkc.extend_from_slice(kc);
        wkc.extend_from_slice(metadata);
        self.cipher(&tag).apply_keystream(&mut wkc[TAG_LEN..]);
        wkc.extend_from_slice(&len_field);
        wkc
    }

    fn mac(&self) -> HmacSha256 {
        <HmacSha256 as Mac>::new_from_slice(&self.raw[KA_RANGE]).expect("HMAC accepts keys of any length")
    }

    /// AES-256-CTR keyed with `Ke`, IV = first 16 bytes of the tag (OpenSSL's full 128-bit BE counter).
    fn cipher(&self, tag: &[u8]) -> Aes256Ctr {
        Aes256Ctr::new_from_slices(&self.raw[KE_RANGE], &tag[..16])
            .expect("a 32-byte key and a 16-byte IV are the sizes AES-256-CTR takes")
    }
}

impl fmt::Debug for TlsCryptV2ServerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsCryptV2ServerKey { .. }")
    }
}

/// A client's tls-crypt-v2 key: `Kc` and its wrapped form `WKc`.
pub struct TlsCryptV2ClientKey {
    kc: Zeroizing<Vec<u8>>,
    wkc: Vec<u8>,
}

impl TlsCryptV2ClientKey {
    /// Reads a client key file (see [`parse_client_key_pem`]).
    pub fn from_pem(pem: &str) -> Result<TlsCryptV2ClientKey, TlsCryptError> {
        let (kc, wkc) = parse_client_key_pem(pem)?;
        Ok(TlsCryptV2ClientKey { kc: Zeroizing::new(kc), wkc })
    }

    /// The file a client reads with `tls-crypt-v2 FILE` (or inline in `<tls-crypt-v2>`).
    pub fn to_pem(&self) -> Zeroizing<String> {
        let mut both = Zeroizing::new(Vec::with_capacity(self.kc.len() + self.wkc.len()));
        both.extend_from_slice(&self.kc);
        both.extend_from_slice(&self.wkc);
        pem::encode(CLIENT_PEM_LABEL, &both)
    }

    /// The wrapped key `WKc` (not secret without the server key; sent in clear by the client).
    pub fn wrapped_key(&self) -> &[u8] {
        &self.wkc
    }

    /// The client key `Kc`.
    pub fn client_key(&self) -> &[u8] {
        &self.kc
    }
}

impl fmt::Debug for TlsCryptV2ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsCryptV2ClientKey").field("wrapped_len", &self.wkc.len()).finish_non_exhaustive()
    }
}

/// Splits a client key file into `Kc` (256 bytes) and `WKc`, checking `WKc`'s size and length field.
pub fn parse_client_key_pem(pem: &str) -> Result<(Vec<u8>, Vec<u8>), TlsCryptError> {
    let data = decode_pem(pem, CLIENT_PEM_LABEL)?;
    if data.len() < CLIENT_KEY_LEN + MIN_WKC_LEN || data.len() > CLIENT_KEY_LEN + MAX_WKC_LEN {
        return Err(TlsCryptError::MalformedPem(format!(
            "client key file holds {} bytes; between {} and {} expected",
            data.len(),
            CLIENT_KEY_LEN + MIN_WKC_LEN,
            CLIENT_KEY_LEN + MAX_WKC_LEN
        )));
    }
    let (kc, wkc) = data.split_at(CLIENT_KEY_LEN);
    let n = wkc.len();
    if usize::from(u16::from_be_bytes([wkc[n - 2], wkc[n - 1]])) != n {
        return Err(TlsCryptError::LengthMismatch);
    }
    Ok((kc.to_vec(), wkc.to_vec()))
}

fn decode_pem(pem: &str, label: &'static str) -> Result<Zeroizing<Vec<u8>>, TlsCryptError> {
    if pem.len() > MAX_PEM_LEN {
        return Err(TlsCryptError::MalformedPem(format!("{} bytes; at most {MAX_PEM_LEN} accepted", pem.len())));
    }
    pem::decode(pem, &[label]).map(|b| b.der).map_err(|e| TlsCryptError::MalformedPem(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{Scratch, openvpn, require_openvpn};
    use rand::Rng as _;

    /// `openvpn --genkey tls-crypt-v2-server` into a scratch dir; returns (dir, server key path, PEM).
    fn openvpn_server_key() -> (Scratch, String, String) {
        let s = Scratch::new();
        let path = s.path().join("server.key").to_str().unwrap().to_string();
        let r = openvpn(&["--genkey", "tls-crypt-v2-server", &path]);
        assert!(r.ok, "{}", r.text);
        let pem = std::fs::read_to_string(&path).unwrap();
        (s, path, pem)
    }

    /// `openvpn --tls-crypt-v2 SERVER --genkey tls-crypt-v2-client FILE [metadata]`.
    fn openvpn_client_key(s: &Scratch, server: &str, b64_metadata: Option<&str>) -> Result<String, String> {
        let path = s.path().join("client.key").to_str().unwrap().to_string();
        let _ = std::fs::remove_file(&path);
        let mut args = vec!["--tls-crypt-v2", server, "--genkey", "tls-crypt-v2-client", &path];
        args.extend(b64_metadata);
        let r = openvpn(&args);
        if !r.ok {
            return Err(r.text);
        }
        Ok(std::fs::read_to_string(&path).unwrap())
    }

    fn b64(data: &[u8]) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(data)
    }

    #[test]
    #[ignore = "needs openvpn: scripts/test runs it with --include-ignored"]
    fn openvpn_server_key_loads_and_writes_back_identically() {
        require_openvpn();
        let (_s, _, pem) = openvpn_server_key();
        let key = TlsCryptV2ServerKey::from_pem(&pem).unwrap();
        // Byte-for-byte the layout OpenVPN writes (64 columns, `\n`).
        assert_eq!(&*key.to_pem(), &pem);
    }

    #[test]
    #[ignore = "needs openvpn: scripts/test runs it with --include-ignored"]
    fn openvpn_client_keys_unwrap_to_the_same_kc_and_metadata() {
        require_openvpn();
        let (s, server_path, server_pem) = openvpn_server_key();
        let server = TlsCryptV2ServerKey::from_pem(&server_pem).unwrap();
        let before = time::OffsetDateTime::now_utc().unix_timestamp() as u64;
        let max_user = vec![0xa5u8; MAX_USER_METADATA_LEN];
        let cases: Vec<(Option<String>, Option<ClientMetadata>)> = vec![
            (None, None), // timestamp, checked below
            (Some("Y2FzLXZwbg==".into()), Some(ClientMetadata::User(b"cas-vpn".to_vec()))),
            (Some(b64(&[0, 1, 2, 255])), Some(ClientMetadata::User(vec![0, 1, 2, 255]))),
            (Some(b64(&max_user)), Some(ClientMetadata::User(max_user.clone()))),
        ];
        for (arg, want) in cases {
            let pem = openvpn_client_key(&s, &server_path, arg.as_deref()).unwrap();
            let (kc, wkc) = parse_client_key_pem(&pem).unwrap();
            assert_eq!(kc.len(), CLIENT_KEY_LEN);
            let (kc2, metadata) = server.unwrap(&wkc).unwrap();
            assert_eq!(&kc2[..], &kc[..]);
            match want {
                Some(want) => assert_eq!(metadata, want),
                None => {
                    let after = time::OffsetDateTime::now_utc().unix_timestamp() as u64;
                    let ClientMetadata::Timestamp(t) = metadata else {
                        panic!("expected a timestamp, got {metadata:?}");
                    };
                    assert!((before..=after).contains(&t), "{before} <= {t} <= {after}");
                }
            }
            // The wrap is deterministic (SIV): re-wrapping OpenVPN's Kc and metadata must reproduce its
            // WKc exactly. This pins our HMAC input order, IV choice, counter mode and length field.
            let raw_metadata = metadata.encode().unwrap();
            assert_eq!(server.wrap(&kc, &raw_metadata), wkc);
            // And the client file we would write is OpenVPN's, byte for byte.
            let client = TlsCryptV2ClientKey::from_pem(&pem).unwrap();
            assert_eq!(&*client.to_pem(), &pem);
            assert_eq!(client.wrapped_key(), &wkc[..]);
        }
    }

    #[test]
    #[ignore = "needs openvpn: scripts/test runs it with --include-ignored"]
    fn openvpn_refuses_oversized_metadata_and_so_do_we() {
        require_openvpn();
        let (s, server_path, _) = openvpn_server_key();
        let too_long = vec![1u8; MAX_USER_METADATA_LEN + 1];
        assert!(openvpn_client_key(&s, &server_path, Some(&b64(&too_long))).is_err());
        let server = TlsCryptV2ServerKey::generate();
        assert_eq!(
            server.wrap_client_key(&ClientMetadata::User(too_long)).unwrap_err(),
            TlsCryptError::MetadataTooLong(734)
        );
    }

    #[test]
    fn our_wrap_round_trips() {
        let server = TlsCryptV2ServerKey::generate();
        for metadata in [
            ClientMetadata::User(Vec::new()),
            ClientMetadata::User(b"atm-001".to_vec()),
            ClientMetadata::User(vec![7u8; MAX_USER_METADATA_LEN]),
            ClientMetadata::Timestamp(0),
            ClientMetadata::Timestamp(u64::MAX),
            ClientMetadata::timestamp_now(),
        ] {
            let client = server.wrap_client_key(&metadata).unwrap();
            let wkc = client.wrapped_key();
            assert!(wkc.len() <= MAX_WKC_LEN);
            assert_eq!(usize::from(u16::from_be_bytes([wkc[wkc.len() - 2], wkc[wkc.len() - 1]])), wkc.len());
            let (kc, md) = server.unwrap(wkc).unwrap();
            assert_eq!(&kc[..], client.client_key());
            assert_eq!(md, metadata);
            // Through the PEM file as well.
            let (kc_file, wkc_file) = parse_client_key_pem(&client.to_pem()).unwrap();
            assert_eq!(kc_file, client.client_key());
            assert_eq!(wkc_file, wkc);
        }
        // Fresh Kc every time.
        let a = server.wrap_client_key(&ClientMetadata::Timestamp(1)).unwrap();
        let b = server.wrap_client_key(&ClientMetadata::Timestamp(1)).unwrap();
        assert_ne!(a.client_key(), b.client_key());
        assert_ne!(a.wrapped_key(), b.wrapped_key());
        // Server key PEM round trip.
        let again = TlsCryptV2ServerKey::from_pem(&server.to_pem()).unwrap();
        assert_eq!(again.unwrap(a.wrapped_key()).unwrap().1, ClientMetadata::Timestamp(1));
    }

    #[test]
    fn derived_client_keys_are_stable_distinct_and_unwrap() {
        let server = TlsCryptV2ServerKey::generate();
        let meta = ClientMetadata::User(b"cv1:t:atm-1".to_vec());
        let a = server.wrap_derived_client_key(b"atm-1\0serial-1", &meta).unwrap();
        let again = server.wrap_derived_client_key(b"atm-1\0serial-1", &meta).unwrap();
        assert_eq!(a.to_pem(), again.to_pem(), "same inputs, same bytes");
        let other = server.wrap_derived_client_key(b"atm-1\0serial-2", &meta).unwrap();
        assert_ne!(a.client_key(), other.client_key());
        let elsewhere = TlsCryptV2ServerKey::generate().wrap_derived_client_key(b"atm-1\0serial-1", &meta).unwrap();
        assert_ne!(a.client_key(), elsewhere.client_key(), "another server key derives another client key");
        let (kc, back) = server.unwrap(a.wrapped_key()).unwrap();
        assert_eq!(kc.as_slice(), a.client_key());
        assert_eq!(back, meta);
    }

    #[test]
    fn any_flipped_bit_fails() {
        let server = TlsCryptV2ServerKey::generate();
        let client = server.wrap_client_key(&ClientMetadata::User(b"meta".to_vec())).unwrap();
        let wkc = client.wrapped_key();
        for i in 0..wkc.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = wkc.to_vec();
                bad[i] ^= bit;
                let err = server.unwrap(&bad).unwrap_err();
                if i >= wkc.len() - 2 {
                    assert!(matches!(err, TlsCryptError::LengthMismatch | TlsCryptError::BadLength(_)), "{i}: {err}");
                } else {
                    assert_eq!(err, TlsCryptError::AuthFailed, "byte {i}");
                }
            }
        }
        // Another server key cannot unwrap it.
        let other = TlsCryptV2ServerKey::generate();
        assert_eq!(other.unwrap(wkc).unwrap_err(), TlsCryptError::AuthFailed);
    }

    #[test]
    fn truncated_and_oversized_input_fails_cleanly() {
        let server = TlsCryptV2ServerKey::generate();
        let client = server.wrap_client_key(&ClientMetadata::timestamp_now()).unwrap();
        let wkc = client.wrapped_key();
        for n in 0..wkc.len() {
            assert!(server.unwrap(&wkc[..n]).is_err(), "prefix of {n} bytes");
            assert!(server.unwrap(&wkc[wkc.len() - n..]).is_err(), "suffix of {n} bytes");
        }
        let mut longer = wkc.to_vec();
        longer.push(0);
        assert!(server.unwrap(&longer).is_err());
        // Over the 1024-byte limit, even with a matching length field.
        let mut huge = vec![0u8; 2000];
        huge[1998..].copy_from_slice(&2000u16.to_be_bytes());
        assert_eq!(server.unwrap(&huge).unwrap_err(), TlsCryptError::BadLength(2000));
        assert_eq!(server.unwrap(&vec![0u8; 70_000]).unwrap_err(), TlsCryptError::BadLength(70_000));
    }

    #[test]
    fn unwrap_never_panics_on_random_bytes() {
        let server = TlsCryptV2ServerKey::generate();
        let valid = server.wrap_client_key(&ClientMetadata::User(b"x".to_vec())).unwrap();
        let mut rng = rand::rng();
        for round in 0..50_000 {
            let len = rng.random_range(0..1100);
            let mut data = vec![0u8; len];
            rng.fill_bytes(&mut data);
            if round % 2 == 0 && len >= 2 {
                // Make the length field agree so the input reaches decryption and the tag check.
                let l = (len as u16).to_be_bytes();
                data[len - 2..].copy_from_slice(&l);
            }
            assert!(server.unwrap(&data).is_err());
        }
        // Mutations of a valid key.
        for _ in 0..10_000 {
            let mut data = valid.wrapped_key().to_vec();
            let i = rng.random_range(0..data.len());
            data[i] = rng.random();
            let _ = server.unwrap(&data);
        }
    }

    #[test]
    fn authentic_but_odd_metadata_is_reported() {
        let server = TlsCryptV2ServerKey::generate();
        let kc = [9u8; CLIENT_KEY_LEN];
        for (metadata, want) in [
            (vec![0x02u8, 1, 2], "type 0x02"),
            (vec![0x01u8, 1, 2], "timestamp of 2 bytes"),
            (vec![0x01u8; 10], "timestamp of 9 bytes"),
        ] {
            let wkc = server.wrap(&kc, &metadata);
            let err = server.unwrap(&wkc).unwrap_err();
            assert!(matches!(&err, TlsCryptError::BadMetadata(m) if m.contains(want)), "{err}");
        }
    }

    #[test]
    fn bad_pem_files_are_rejected() {
        assert!(TlsCryptV2ServerKey::from_pem("").is_err());
        let short = pem::encode(SERVER_PEM_LABEL, &[1u8; 64]);
        assert!(matches!(TlsCryptV2ServerKey::from_pem(&short), Err(TlsCryptError::MalformedPem(_))));
        let wrong_label = pem::encode(CLIENT_PEM_LABEL, &[1u8; 128]);
        assert!(matches!(TlsCryptV2ServerKey::from_pem(&wrong_label), Err(TlsCryptError::MalformedPem(_))));
        assert!(matches!(parse_client_key_pem("junk"), Err(TlsCryptError::MalformedPem(_))));
        let too_short = pem::encode(CLIENT_PEM_LABEL, &[1u8; 300]);
        assert!(matches!(parse_client_key_pem(&too_short), Err(TlsCryptError::MalformedPem(_))));
        let mut bad_len = vec![1u8; CLIENT_KEY_LEN + 300];
        let n = bad_len.len();
        bad_len[n - 2..].copy_from_slice(&299u16.to_be_bytes());
        let bad_len = pem::encode(CLIENT_PEM_LABEL, &bad_len);
        assert_eq!(parse_client_key_pem(&bad_len), Err(TlsCryptError::LengthMismatch));
        assert!(TlsCryptV2ServerKey::from_pem(&"A".repeat(MAX_PEM_LEN + 1)).is_err());
    }

    #[test]
    fn debug_output_has_no_key_material() {
        let server = TlsCryptV2ServerKey::generate();
        let client = server.wrap_client_key(&ClientMetadata::Timestamp(5)).unwrap();
        assert_eq!(format!("{server:?}"), "TlsCryptV2ServerKey { .. }");
        let dbg = format!("{client:?}");
        assert!(!dbg.contains(&hex::encode(&client.client_key()[..8])), "{dbg}");
        assert!(!dbg.contains(&format!("{:?}", &client.client_key()[..4])), "{dbg}");
    }
}
