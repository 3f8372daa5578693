//! Certificate revocation lists.
//!
//! OpenVPN re-reads the CRL file at every TLS session and renegotiation; an expired CRL (nextUpdate
//! passed) or one whose thisUpdate lies in the future rejects everybody. So both dates are the caller's
//! explicit choice (the caller backdates thisUpdate), and we only refuse windows that are plainly wrong.
//! The CRL carries the CRL number and an authority key identifier, which is the CA's subject key identifier so
//! that the CRL matches the CA however that CA was made.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;
use time::OffsetDateTime;

use crate::key::PrivateKey;
use crate::serial::Serial;
use crate::validity::{representable, truncate_to_second};

/// Errors while building a CRL or reading a revocation reason.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CrlError {
    #[error(
        "unknown revocation reason {0:?}; expected unspecified, key-compromise, superseded or cessation-of-operation"
    )]
    UnknownReason(String),
    #[error("invalid CRL dates: {0}")]
    InvalidDates(String),
    #[error("CRL signing failed: {0}")]
    Sign(String),
    #[error("not a PEM CRL: {0}")]
    Pem(String),
}

/// Why a certificate was revoked (the RFC 5280 reason codes cas-vpn uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RevocationReason {
    /// No reason given. RFC 5280 says to omit the reason code then, so the CRL entry has none.
    Unspecified,
    KeyCompromise,
    Superseded,
    CessationOfOperation,
}

impl RevocationReason {
    /// Every reason.
    pub const ALL: [RevocationReason; 4] = [
        RevocationReason::Unspecified,
        RevocationReason::KeyCompromise,
        RevocationReason::Superseded,
        RevocationReason::CessationOfOperation,
    ];

    /// The configuration spelling, e.g. `key-compromise`.
    pub fn as_str(self) -> &'static str {
        match self {
            RevocationReason::Unspecified => "unspecified",
            RevocationReason::KeyCompromise => "key-compromise",
            RevocationReason::Superseded => "superseded",
            RevocationReason::CessationOfOperation => "cessation-of-operation",
        }
    }

    /// The RFC 5280 CRLReason code written in a CRL entry; `None` for unspecified, whose entry carries no
    /// reason code (RFC 5280 §5.3.1: absent rather than unspecified).
    fn code(self) -> Option<u8> {
        match self {
            RevocationReason::Unspecified => None,
            RevocationReason::KeyCompromise => Some(1),
            RevocationReason::Superseded => Some(4),
            RevocationReason::CessationOfOperation => Some(5),
        }
    }
}

impl fmt::Display for RevocationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RevocationReason {
    type Err = CrlError;

    fn from_str(s: &str) -> Result<RevocationReason, CrlError> {
        RevocationReason::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| CrlError::UnknownReason(s.chars().take(40).collect()))
    }
}

/// One revoked certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Revoked {
    pub serial: Serial,
    pub revoked_at: OffsetDateTime,
    pub reason: RevocationReason,
}

/// A DER CRL as PEM (`X509 CRL`, what OpenVPN's `crl-verify` reads).
pub fn crl_der_to_pem(der: &[u8]) -> String {
    der_to_pem(der)
}

/// The DER of the first `X509 CRL` PEM block of `pem`.
pub fn crl_pem_to_der(pem: &str) -> Result<Vec<u8>, CrlError> {
    let mut block = crate::pem::decode(pem, &["X509 CRL"]).map_err(|e| CrlError::Pem(e.to_string()))?;
    Ok(std::mem::take(&mut *block.der))
}

/// What `pem::encode` writes (64 columns, `\n`), encoded straight into one buffer of the exact size: a CRL is
/// public, so the zeroizing writer's line-by-line string building is not needed for a 6 MB CRL.
pub(crate) fn der_to_pem(der: &[u8]) -> String {
    use base64::Engine as _;
    const BEGIN: &[u8] = b"-----BEGIN X509 CRL-----\n";
    const END: &[u8] = b"-----END X509 CRL-----\n";
    let lines = der.len().div_ceil(48);
    let mut out = vec![0; BEGIN.len() + der.len().div_ceil(3) * 4 + lines + END.len()];
    out[..BEGIN.len()].copy_from_slice(BEGIN);
    let mut at = BEGIN.len();
    for chunk in der.chunks(48) {
        at += base64::engine::general_purpose::STANDARD
            .encode_slice(chunk, &mut out[at..])
            .expect("the buffer is sized for the encoding");
        out[at] = b'\n';
        at += 1;
    }
    out[at..].copy_from_slice(END);
    String::from_utf8(out).expect("base64 and the armour are ASCII")
}

/// Builds and signs a DER CRL. `issuer_der` is the CA certificate's subject exactly as encoded there (OpenVPN
/// and OpenSSL match a CRL to its CA by these bytes); `key_id` is the CA's subject key identifier.
///
/// The DER is written directly, in one pass over the entries into one buffer: a CRL of 100,000 entries is a
/// 4 MB file made on every revocation, and a generic ASN.1 writer's nested buffers and per-entry allocations
/// cost more than the signature. The encoding is what RFC 5280 asks for (and what rcgen wrote before): v2,
/// UTCTime up to 2049, the reason code left out when unspecified, authority key identifier and CRL number as
/// the CRL extensions; `openssl crl` reads it back in the tests and the caller's pre-flight check.
pub(crate) fn build(
    key: &PrivateKey,
    issuer_der: &[u8],
    key_id: &[u8],
    revoked: &[Revoked],
    crl_number: u64,
    this_update: OffsetDateTime,
    next_update: OffsetDateTime,
) -> Result<Vec<u8>, CrlError> {
    let this_update = truncate_to_second(this_update);
    let next_update = truncate_to_second(next_update);
    if !representable(this_update) || !representable(next_update) {
        return Err(CrlError::InvalidDates("dates must fall in years 1950 to 9999".into()));
    }
    if next_update <= this_update {
        return Err(CrlError::InvalidDates("nextUpdate must be later than thisUpdate".into()));
    }
    let alg = der::algorithm(key.key_type());

    // revokedCertificates: absent when empty (RFC 5280 §5.1.2.6).
    let mut entries = Vec::with_capacity(revoked.len() * 56);
    let mut entry = Vec::with_capacity(64);
    let mut when = der::TimeCache::default();
    for r in revoked {
        if !representable(r.revoked_at) {
            return Err(CrlError::InvalidDates(format!("revocation time of serial {} is out of range", r.serial)));
        }
        entry.clear();
        der::unsigned_integer(&mut entry, r.serial.as_bytes());
        entry.extend_from_slice(when.get(r.revoked_at));
        if let Some(code) = r.reason.code() {
            // crlEntryExtensions: SEQUENCE { SEQUENCE { id-ce-cRLReasons, OCTET STRING { ENUMERATED code } } }
            entry.extend_from_slice(&[
                0x30, 0x0c, 0x30, 0x0a, 0x06, 0x03, 0x55, 0x1d, 0x15, 0x04, 0x03, 0x0a, 0x01, code,
            ]);
        }
        der::tlv(&mut entries, 0x30, &entry);
    }

    let mut tbs_body = Vec::with_capacity(entries.len() + 256);
    tbs_body.extend_from_slice(&[0x02, 0x01, 0x01]); // version v2
    tbs_body.extend_from_slice(alg);
    tbs_body.extend_from_slice(issuer_der);
    der::time(&mut tbs_body, this_update);
    der::time(&mut tbs_body, next_update);
    if !revoked.is_empty() {
        der::tlv(&mut tbs_body, 0x30, &entries);
    }
    drop(entries);
    // crlExtensions [0] EXPLICIT SEQUENCE { authorityKeyIdentifier, cRLNumber }
    let mut exts = Vec::with_capacity(64);
    let mut aki = Vec::with_capacity(key_id.len() + 4);
    der::tlv(&mut aki, 0x80, key_id); // keyIdentifier [0] IMPLICIT
    let aki = der::wrap(0x30, &aki);
    der::extension(&mut exts, &[0x55, 0x1d, 0x23], &aki);
    let mut number = Vec::with_capacity(10);
    der::unsigned_integer(&mut number, &crl_number.to_be_bytes());
    der::extension(&mut exts, &[0x55, 0x1d, 0x14], &number);
    let exts = der::wrap(0x30, &exts);
    der::tlv(&mut tbs_body, 0xa0, &exts);
    let tbs = der::wrap(0x30, &tbs_body);
    drop(tbs_body);

    let signature = rcgen::SigningKey::sign(key, &tbs).map_err(|e| CrlError::Sign(e.to_string()))?;
    let mut body = Vec::with_capacity(tbs.len() + alg.len() + signature.len() + 8);
    body.extend_from_slice(&tbs);
    body.extend_from_slice(alg);
    let mut bits = Vec::with_capacity(signature.len() + 1);
    bits.push(0); // no unused bits
    bits.extend_from_slice(&signature);
    der::tlv(&mut body, 0x03, &bits);
    Ok(der::wrap(0x30, &body))
}

/// The few DER pieces a CRL needs.
pub(crate) mod der {
    use time::OffsetDateTime;

    use crate::key::KeyType;

    /// AlgorithmIdentifier of the CA key's signature: ecdsa-with-SHA256 (no parameters), or
    /// sha256WithRSAEncryption (NULL parameters).
    pub(crate) fn algorithm(kt: KeyType) -> &'static [u8] {
        match kt {
            KeyType::EcP256 => &[0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02],
            KeyType::Rsa2048 | KeyType::Rsa3072 => {
                &[0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b, 0x05, 0x00]
            }
        }
    }

    pub(super) fn len(out: &mut Vec<u8>, n: usize) {
        if n < 0x80 {
            out.push(n as u8);
        } else {
            let bytes = n.to_be_bytes();
            let skip = bytes.iter().take_while(|b| **b == 0).count();
            out.push(0x80 | (bytes.len() - skip) as u8);
            out.extend_from_slice(&bytes[skip..]);
        }
    }

    pub(crate) fn tlv(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
        out.push(tag);
        len(out, content.len());
        out.extend_from_slice(content);
    }

    pub(crate) fn wrap(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(content.len() + 6);
        tlv(&mut out, tag, content);
        out
    }

    /// A non-negative INTEGER from big-endian bytes: leading zeros dropped, one 0x00 added when the top bit is set.
    pub(super) fn unsigned_integer(out: &mut Vec<u8>, bytes: &[u8]) {
        let skip = bytes.iter().take_while(|b| **b == 0).count().min(bytes.len().saturating_sub(1));
        let bytes = &bytes[skip..];
        let pad = bytes.first().is_some_and(|b| b & 0x80 != 0);
        out.push(0x02);
        len(out, bytes.len() + usize::from(pad));
        if pad {
            out.push(0);
        }
        out.extend_from_slice(bytes);
    }

    /// An extension, not critical: SEQUENCE { OID (its content bytes), OCTET STRING { value } }.
    pub(super) fn extension(out: &mut Vec<u8>, oid: &[u8], value: &[u8]) {
        let mut ext = Vec::with_capacity(oid.len() + value.len() + 6);
        tlv(&mut ext, 0x06, oid);
        tlv(&mut ext, 0x04, value);
        tlv(out, 0x30, &ext);
    }

    /// Time ::= UTCTime (1950-2049) | GeneralizedTime, to the second, in UTC (the caller truncates).
    pub(super) fn time(out: &mut Vec<u8>, t: OffsetDateTime) {
        let t = t.to_offset(time::UtcOffset::UTC);
        let year = t.year();
        let mut digits = Vec::with_capacity(15);
        let mut two = |n: u32| {
            digits.push(b'0' + (n / 10 % 10) as u8);
            digits.push(b'0' + (n % 10) as u8);
        };
        let utc = (1950..2050).contains(&year);
        let year = year.unsigned_abs();
        if !utc {
            two(year / 100);
        }
        two(year % 100);
        two(u32::from(u8::from(t.month())));
        two(u32::from(t.day()));
        two(u32::from(t.hour()));
        two(u32::from(t.minute()));
        two(u32::from(t.second()));
        digits.push(b'Z');
        tlv(out, if utc { 0x17 } else { 0x18 }, &digits);
    }

    /// Entries revoked in the same second share their encoded time (a bulk revocation's all do).
    #[derive(Default)]
    pub(super) struct TimeCache {
        at: Option<i64>,
        der: Vec<u8>,
    }

    impl TimeCache {
        pub(super) fn get(&mut self, t: OffsetDateTime) -> &[u8] {
            let t = crate::validity::truncate_to_second(t);
            let key = t.unix_timestamp();
            if self.at != Some(key) {
                self.der.clear();
                time(&mut self.der, t);
                self.at = Some(key);
            }
            &self.der
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testutil::{Scratch, openssl};
    use crate::{Ca, KeyType, Validity};
    use time::Duration;
    use time::macros::format_description;

    fn now() -> OffsetDateTime {
        truncate_to_second(OffsetDateTime::now_utc())
    }

    /// OpenSSL's way of printing a time: `Nov  1 10:32:00 2026 GMT`.
    fn openssl_time(t: OffsetDateTime) -> String {
        let f = format_description!("[month repr:short] [day padding:space] [hour]:[minute]:[second] [year] GMT");
        t.format(&f).unwrap()
    }

    /// `openssl crl -text` output split into (serial as upper-case hex without leading zeros, reason line).
    fn entries(text: &str) -> Vec<(String, Option<String>)> {
        let mut out: Vec<(String, Option<String>)> = Vec::new();
        let mut lines = text.lines().peekable();
        while let Some(line) = lines.next() {
            let line = line.trim();
            if let Some(serial) = line.strip_prefix("Serial Number: ") {
                out.push((serial.trim_start_matches('0').to_string(), None));
            } else if line == "X509v3 CRL Reason Code:" {
                let reason = lines.next().unwrap().trim().to_string();
                out.last_mut().unwrap().1 = Some(reason);
            }
        }
        out
    }

    fn openssl_hex(serial: &Serial) -> String {
        serial.to_hex().to_uppercase().trim_start_matches('0').to_string()
    }

    #[test]
    fn crl_lists_serials_and_reasons_and_verifies() {
        let ca = Ca::generate("fleet-ca", KeyType::EcP256, Validity::days_from_now(365)).unwrap();
        let revoked_at = now() - Duration::hours(1);
        let revoked: Vec<Revoked> = RevocationReason::ALL
            .into_iter()
            .map(|reason| Revoked { serial: Serial::random(), revoked_at, reason })
            .collect();
        let this_update = now() - Duration::minutes(5);
        let next_update = this_update + Duration::days(7);
        let crl = ca.crl(&revoked, 42, this_update, next_update).unwrap();
        assert!(crl.starts_with("-----BEGIN X509 CRL-----"));

        let s = Scratch::new();
        let crl_path = s.write("crl.pem", &crl);
        let ca_path = s.write("ca.pem", ca.cert_pem());
        let r = openssl(&["crl", "-in", crl_path.to_str().unwrap(), "-text", "-noout"]);
        assert!(r.ok, "{}", r.text);
        let text = r.text;
        assert!(text.contains(&format!("Last Update: {}", openssl_time(this_update))), "{text}");
        assert!(text.contains(&format!("Next Update: {}", openssl_time(next_update))), "{text}");
        assert!(text.contains("X509v3 CRL Number: \n                42"), "{text}");
        assert!(text.contains("Issuer: CN = fleet-ca"), "{text}");
        assert!(text.contains(&format!("Revocation Date: {}", openssl_time(revoked_at))), "{text}");

        let listed = entries(&text);
        let expected: Vec<(String, Option<String>)> = revoked
            .iter()
            .map(|r| {
                let reason = match r.reason {
                    // RFC 5280: the reason code is left out rather than written as unspecified.
                    RevocationReason::Unspecified => None,
                    RevocationReason::KeyCompromise => Some("Key Compromise"),
                    RevocationReason::Superseded => Some("Superseded"),
                    RevocationReason::CessationOfOperation => Some("Cessation Of Operation"),
                };
                (openssl_hex(&r.serial), reason.map(str::to_string))
            })
            .collect();
        assert_eq!(listed, expected, "{text}");

        // Signature check against the right CA, and failure against another with the same name.
        let r = openssl(&["crl", "-in", crl_path.to_str().unwrap(), "-CAfile", ca_path.to_str().unwrap(), "-noout"]);
        assert!(r.ok && r.text.contains("verify OK"), "{}", r.text);
        let other = Ca::generate("fleet-ca", KeyType::EcP256, Validity::days_from_now(365)).unwrap();
        let other_path = s.write("other.pem", other.cert_pem());
        let r = openssl(&["crl", "-in", crl_path.to_str().unwrap(), "-CAfile", other_path.to_str().unwrap(), "-noout"]);
        assert!(!r.text.contains("verify OK"), "{}", r.text);
    }

    #[test]
    fn openssl_rejects_revoked_certificates_with_the_crl() {
        // What OpenVPN does with `crl-verify`: a chain check with CRL checking on.
        for kt in [KeyType::EcP256, KeyType::Rsa2048] {
            let ca = Ca::generate("fleet-ca", kt, Validity::days_from_now(365)).unwrap();
            let good = ca.issue_client("atm-good", KeyType::EcP256, Validity::days_from_now(30)).unwrap();
            let bad = ca.issue_client("atm-bad", KeyType::EcP256, Validity::days_from_now(30)).unwrap();
            let revoked = [Revoked {
                serial: bad.serial,
                revoked_at: now() - Duration::minutes(1),
                reason: RevocationReason::KeyCompromise,
            }];
            let crl = ca.crl(&revoked, 1, now() - Duration::minutes(5), now() + Duration::days(1)).unwrap();
            let s = Scratch::new();
            let ca_path = s.write("ca.pem", ca.cert_pem());
            let crl_path = s.write("crl.pem", &crl);
            let verify = |cert: &str| {
                let c = s.write("c.pem", cert);
                openssl(&[
                    "verify",
                    "-crl_check",
                    "-CAfile",
                    ca_path.to_str().unwrap(),
                    "-CRLfile",
                    crl_path.to_str().unwrap(),
                    c.to_str().unwrap(),
                ])
            };
            let r = verify(&good.cert_pem);
            assert!(r.ok, "{kt}: {}", r.text);
            let r = verify(&bad.cert_pem);
            assert!(!r.ok && r.text.contains("certificate revoked"), "{kt}: {}", r.text);
        }
    }

    #[test]
    fn crl_from_a_loaded_openssl_ca_matches_its_key_identifier() {
        // openssl's SKI is a SHA-1 hash, not rcgen's; the CRL must name the CA's actual key identifier.
        let s = Scratch::new();
        let dir = s.path().to_str().unwrap();
        let r = openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{dir}/ca.key"),
            "-out",
            &format!("{dir}/ca.pem"),
            "-subj",
            "/CN=Legacy CA",
            "-days",
            "30",
            "-set_serial",
            "0x0123456789abcdef",
        ]);
        assert!(r.ok, "{}", r.text);
        let cert = std::fs::read_to_string(format!("{dir}/ca.pem")).unwrap();
        let key = std::fs::read_to_string(format!("{dir}/ca.key")).unwrap();
        let ca = Ca::load(&cert, &key, None).unwrap();
        let crl = ca.crl(&[], 7, now() - Duration::minutes(5), now() + Duration::days(1)).unwrap();
        let crl_path = s.write("crl.pem", &crl);
        let ski = {
            let r = openssl(&["x509", "-in", &format!("{dir}/ca.pem"), "-noout", "-ext", "subjectKeyIdentifier"]);
            r.text.lines().nth(1).unwrap().trim().to_string()
        };
        let r = openssl(&["crl", "-in", crl_path.to_str().unwrap(), "-noout", "-text"]);
        assert!(r.text.contains(&ski), "SKI {ski} not in CRL:\n{}", r.text);
        assert!(r.text.contains("No Revoked Certificates"), "{}", r.text);
        let c = ca.issue_client("atm-1", KeyType::EcP256, Validity::days_from_now(10)).unwrap();
        let c_path = s.write("c.pem", &c.cert_pem);
        let r = openssl(&[
            "verify",
            "-crl_check",
            "-CAfile",
            &format!("{dir}/ca.pem"),
            "-CRLfile",
            crl_path.to_str().unwrap(),
            c_path.to_str().unwrap(),
        ]);
        assert!(r.ok, "{}", r.text);
    }

    #[test]
    fn ten_thousand_entries() {
        let ca = Ca::generate("fleet-ca", KeyType::EcP256, Validity::days_from_now(365)).unwrap();
        let revoked: Vec<Revoked> = (0..10_000)
            .map(|_| Revoked {
                serial: Serial::random(),
                revoked_at: now() - Duration::days(1),
                reason: RevocationReason::Superseded,
            })
            .collect();
        let crl = ca.crl(&revoked, u64::MAX, now() - Duration::minutes(5), now() + Duration::days(7)).unwrap();
        let s = Scratch::new();
        let crl_path = s.write("crl.pem", &crl);
        let ca_path = s.write("ca.pem", ca.cert_pem());
        let r = openssl(&[
            "crl",
            "-in",
            crl_path.to_str().unwrap(),
            "-CAfile",
            ca_path.to_str().unwrap(),
            "-text",
            "-noout",
        ]);
        assert!(r.ok && r.text.contains("verify OK"), "{}", &r.text[..r.text.len().min(2000)]);
        let listed = entries(&r.text);
        assert_eq!(listed.len(), 10_000);
        let want: std::collections::HashSet<String> = revoked.iter().map(|r| openssl_hex(&r.serial)).collect();
        let got: std::collections::HashSet<String> = listed.into_iter().map(|(s, _)| s).collect();
        assert_eq!(got, want);
        // u64::MAX as the CRL number comes out unsigned.
        assert!(r.text.contains(&format!("{}", u64::MAX)) || r.text.contains("0xFFFFFFFFFFFFFFFF"), "CRL number");
    }

    #[test]
    fn pem_is_what_the_pem_writer_writes() {
        for n in [1, 47, 48, 49, 95, 96, 97, 1000, 4801] {
            let der: Vec<u8> = (0..n).map(|i| (i * 7 % 256) as u8).collect();
            assert_eq!(der_to_pem(&der), *crate::pem::encode("X509 CRL", &der), "{n}");
            assert_eq!(crl_pem_to_der(&der_to_pem(&der)).unwrap(), der);
        }
    }

    #[test]
    fn dates_are_checked() {
        let ca = Ca::generate("fleet-ca", KeyType::EcP256, Validity::days_from_now(365)).unwrap();
        let t = now();
        assert!(matches!(ca.crl(&[], 1, t, t), Err(crate::CaError::Crl(CrlError::InvalidDates(_)))));
        assert!(matches!(
            ca.crl(&[], 1, t, t - Duration::seconds(1)),
            Err(crate::CaError::Crl(CrlError::InvalidDates(_)))
        ));
    }

    #[test]
    fn reason_strings() {
        for r in RevocationReason::ALL {
            assert_eq!(r.to_string().parse::<RevocationReason>().unwrap(), r);
        }
        assert_eq!("key-compromise".parse::<RevocationReason>().unwrap(), RevocationReason::KeyCompromise);
        assert!(matches!("keyCompromise".parse::<RevocationReason>(), Err(CrlError::UnknownReason(_))));
    }
}
