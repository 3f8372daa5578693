//! The check a CRL passes before it is published: strict DER structure, issuer, and the CA's signature over
//! exactly the bytes given.
//!
//! A CRL of 100,000 entries is 4 MB; OpenSSL's parse of it builds an object per entry (and sorts them), which
//! costs more than making the CRL. This check walks the bytes once instead: every length in bounds and minimal,
//! every element of the type RFC 5280 says, in its place, nothing left over, each entry a positive INTEGER, a
//! valid time and well-formed extensions with a known critical one only; the header fields read (version v2,
//! the signature algorithm of the CA's key, the issuer byte for byte the CA's subject, both dates, the
//! extensions). Then the signature is verified with the CA certificate's public key (OpenSSL) over the
//! tbsCertList bytes of this very buffer. What passes is what OpenSSL, and so OpenVPN, parses and accepts.

use openssl::hash::MessageDigest;
use openssl::pkey::{Id, PKey, Public};
use openssl::sign::Verifier;
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::pem;

/// ecdsa-with-SHA256, no parameters.
const ECDSA_SHA256: &[u8] = &[0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
/// sha256WithRSAEncryption, NULL parameters.
const RSA_SHA256: &[u8] = &[0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b, 0x05, 0x00];
/// sha256WithRSAEncryption with the parameters left out (allowed by some writers; OpenSSL accepts it).
const RSA_SHA256_NO_NULL: &[u8] = &[0x30, 0x0b, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b];

/// id-ce-cRLNumber, id-ce-authorityKeyIdentifier, id-ce-cRLReasons (OID content octets).
const CRL_NUMBER: &[u8] = &[0x55, 0x1d, 0x14];
const AKI: &[u8] = &[0x55, 0x1d, 0x23];
const REASON: &[u8] = &[0x55, 0x1d, 0x15];

/// What a checked CRL says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrlSummary {
    pub this_update: OffsetDateTime,
    pub next_update: OffsetDateTime,
    /// The CRL number; `None` when the CRL has none or it does not fit.
    pub crl_number: Option<u64>,
    pub entries: usize,
}

/// Checks the DER CRL `crl` against the CA certificate `ca_cert_pem`: structure, issuer and signature (see the
/// module). The dates are returned, not judged: whether they suit now is the caller's call.
pub fn check_crl(ca_cert_pem: &str, crl: &[u8]) -> Result<CrlSummary, String> {
    let ca_der = pem::decode(ca_cert_pem, &["CERTIFICATE"]).map_err(|e| format!("CA: {e}"))?.der;
    let (_, ca) = X509Certificate::from_der(&ca_der).map_err(|e| format!("CA: {e}"))?;
    let key = PKey::public_key_from_der(ca.public_key().raw).map_err(|e| format!("CA key: {e}"))?;

    let mut outer = Der::new(crl);
    let mut list = outer.take(0x30, "CertificateList")?;
    outer.end("CertificateList")?;
    let tbs_raw = list.raw(0x30, "tbsCertList")?;
    let alg = list.raw(0x30, "signatureAlgorithm")?;
    let bits = list.take(0x03, "signatureValue")?.rest();
    list.end("CertificateList")?;

    let mut tbs = Der::new(tbs_raw);
    let mut body = tbs.take(0x30, "tbsCertList")?;
    if body.take(0x02, "version")?.rest() != [0x01] {
        return Err("version is not v2".into());
    }
    if body.raw(0x30, "signature")? != alg {
        return Err("the two signature algorithms differ".into());
    }
    let digest_for_key = match key.id() {
        Id::EC => alg == ECDSA_SHA256,
        Id::RSA => alg == RSA_SHA256 || alg == RSA_SHA256_NO_NULL,
        _ => false,
    };
    if !digest_for_key {
        return Err("signature algorithm does not match the CA key".into());
    }
    if body.raw(0x30, "issuer")? != ca.subject().as_raw() {
        return Err("issuer is not the CA".into());
    }
    let this_update = body.time("thisUpdate")?;
    let next_update = body.time("nextUpdate")?;
    let mut entries = 0;
    if body.peek() == Some(0x30) {
        let mut list = body.take(0x30, "revokedCertificates")?;
        let mut last_time: &[u8] = &[];
        while !list.is_empty() {
            let mut entry = list.take(0x30, "revoked certificate")?;
            entry.serial()?;
            // A bulk revocation's entries share their time: checked once.
            let (tag, when) = entry.element()?;
            if when != last_time {
                time_value(tag, when)?;
                last_time = when;
            }
            if !entry.is_empty() {
                entry.extensions(&[], |oid, value| {
                    if oid == REASON && !matches!(value, [0x0a, 0x01, 0..=6 | 8..=10]) {
                        return Err("bad reason code".into());
                    }
                    Ok(())
                })?;
            }
            entry.end("revoked certificate")?;
            entries += 1;
        }
    }
    let mut crl_number = None;
    if !body.is_empty() {
        let mut exts = body.take(0xa0, "crlExtensions")?;
        exts.extensions(&[AKI], |oid, value| {
            if oid == CRL_NUMBER {
                crl_number = read_crl_number(value)?;
            }
            Ok(())
        })?;
        exts.end("crlExtensions")?;
    }
    body.end("tbsCertList")?;
    tbs.end("tbsCertList")?;

    let Some((0, signature)) = bits.split_first() else {
        return Err("signatureValue has unused bits".into());
    };
    if !verify(&key, tbs_raw, signature)? {
        return Err("signature does not verify with the CA key".into());
    }
    Ok(CrlSummary { this_update, next_update, crl_number, entries })
}

/// The CRL number of the DER CRL `crl`, read from its header and extensions without walking its entries (nodes
/// compare it with the store's every few seconds); `None` when it has none or does not parse. Checks nothing.
pub fn crl_number(crl: &[u8]) -> Option<u64> {
    let mut body = Der::new(crl).take(0x30, "").ok()?.take(0x30, "").ok()?;
    body.take(0x02, "").ok()?;
    body.raw(0x30, "").ok()?;
    body.raw(0x30, "").ok()?;
    body.element().ok()?;
    body.element().ok()?;
    if body.peek() == Some(0x30) {
        body.element().ok()?;
    }
    let mut number = None;
    body.take(0xa0, "")
        .ok()?
        .extensions(&[AKI], |oid, value| {
            if oid == CRL_NUMBER {
                number = read_crl_number(value)?;
            }
            Ok(())
        })
        .ok()?;
    number
}

/// The content of a cRLNumber extension: the number when it fits a u64.
fn read_crl_number(value: &[u8]) -> Result<Option<u64>, String> {
    let mut v = Der::new(value);
    let n = v.integer("CRL number")?;
    v.end("CRL number")?;
    let skip = usize::from(n.len() > 1 && n[0] == 0);
    Ok((n[0] & 0x80 == 0 && n.len() - skip <= 8).then(|| n[skip..].iter().fold(0u64, |a, b| a << 8 | u64::from(*b))))
}

fn verify(key: &PKey<Public>, tbs: &[u8], signature: &[u8]) -> Result<bool, String> {
    let mut v = Verifier::new(MessageDigest::sha256(), key).map_err(|e| e.to_string())?;
    // OpenSSL reports a malformed signature as an error: to us, it does not verify.
    Ok(v.verify_oneshot(signature, tbs).unwrap_or(false))
}

/// A strict DER reader over one buffer.
struct Der<'a> {
    data: &'a [u8],
}

impl<'a> Der<'a> {
    fn new(data: &'a [u8]) -> Der<'a> {
        Der { data }
    }

    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn rest(&self) -> &'a [u8] {
        self.data
    }

    fn peek(&self) -> Option<u8> {
        self.data.first().copied()
    }

    /// The next element: (tag, content, the whole element). Lengths must be definite, minimal and in bounds.
    fn next(&mut self) -> Result<(u8, &'a [u8], &'a [u8]), String> {
        let d = self.data;
        let (&tag, rest) = d.split_first().ok_or("truncated")?;
        if tag & 0x1f == 0x1f {
            return Err("multi-byte tag".into());
        }
        let (&first, rest) = rest.split_first().ok_or("truncated")?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return Err("bad length".into());
            }
            let (bytes, rest) = rest.split_at(n);
            if bytes[0] == 0 {
                return Err("non-minimal length".into());
            }
            let len = bytes.iter().fold(0usize, |a, b| a << 8 | usize::from(*b));
            if len < 0x80 {
                return Err("non-minimal length".into());
            }
            (len, rest)
        };
        if rest.len() < len {
            return Err("length beyond the data".into());
        }
        let header = d.len() - rest.len();
        let (whole, after) = d.split_at(header + len);
        self.data = after;
        Ok((tag, &whole[header..], whole))
    }

    fn element(&mut self) -> Result<(u8, &'a [u8]), String> {
        self.next().map(|(tag, content, _)| (tag, content))
    }

    /// The next element, which must have tag `tag`, as a reader over its content.
    fn take(&mut self, tag: u8, what: &str) -> Result<Der<'a>, String> {
        match self.next().map_err(|e| format!("{what}: {e}"))? {
            (t, content, _) if t == tag => Ok(Der::new(content)),
            _ => Err(format!("{what}: unexpected element")),
        }
    }

    /// The next element, which must have tag `tag`, whole (header included).
    fn raw(&mut self, tag: u8, what: &str) -> Result<&'a [u8], String> {
        match self.next().map_err(|e| format!("{what}: {e}"))? {
            (t, _, whole) if t == tag => Ok(whole),
            _ => Err(format!("{what}: unexpected element")),
        }
    }

    fn end(&self, what: &str) -> Result<(), String> {
        if self.data.is_empty() { Ok(()) } else { Err(format!("{what}: trailing data")) }
    }

    /// A minimally encoded INTEGER's content.
    fn integer(&mut self, what: &str) -> Result<&'a [u8], String> {
        let v = self.take(0x02, what)?.rest();
        match v {
            [] => Err(format!("{what}: empty INTEGER")),
            [0, b, ..] if b & 0x80 == 0 => Err(format!("{what}: non-minimal INTEGER")),
            [0xff, b, ..] if b & 0x80 != 0 => Err(format!("{what}: non-minimal INTEGER")),
            _ => Ok(v),
        }
    }

    /// A certificate serial: a positive INTEGER of at most 20 octets (RFC 5280 §4.1.2.2).
    fn serial(&mut self) -> Result<(), String> {
        let v = self.integer("serial")?;
        if v[0] & 0x80 != 0 || v.iter().all(|b| *b == 0) {
            return Err("serial is not positive".into());
        }
        if v.len() - usize::from(v[0] == 0) > 20 {
            return Err("serial longer than 20 octets".into());
        }
        Ok(())
    }

    fn time(&mut self, what: &str) -> Result<OffsetDateTime, String> {
        let (tag, v) = self.element().map_err(|e| format!("{what}: {e}"))?;
        time_value(tag, v).map_err(|e| format!("{what}: {e}"))
    }

    /// A SEQUENCE OF Extension; `critical_ok` lists the extensions that may be critical (OpenSSL refuses a CRL
    /// with a critical extension it does not handle; the ones it handles change the CRL's scope, except the
    /// authority key identifier); `each` sees every extension's OID content and value.
    fn extensions(
        &mut self,
        critical_ok: &[&[u8]],
        mut each: impl FnMut(&[u8], &[u8]) -> Result<(), String>,
    ) -> Result<(), String> {
        let mut list = self.take(0x30, "extensions")?;
        if list.is_empty() {
            return Err("empty extensions".into());
        }
        while !list.is_empty() {
            let mut ext = list.take(0x30, "extension")?;
            let oid = ext.take(0x06, "extension id")?.rest();
            if oid.is_empty() || oid.last().is_some_and(|b| b & 0x80 != 0) {
                return Err("bad extension id".into());
            }
            if ext.peek() == Some(0x01) {
                let critical = ext.take(0x01, "critical")?.rest();
                match critical {
                    [0xff] if critical_ok.contains(&oid) => {}
                    [0xff] => return Err("unhandled critical extension".into()),
                    // DER leaves out a FALSE default.
                    _ => return Err("bad critical flag".into()),
                }
            }
            let value = ext.take(0x04, "extension value")?.rest();
            ext.end("extension")?;
            each(oid, value)?;
        }
        Ok(())
    }
}

/// UTCTime (`YYMMDDHHMMSSZ`, 1950-2049) or GeneralizedTime (`YYYYMMDDHHMMSSZ`), as RFC 5280 writes them.
fn time_value(tag: u8, v: &[u8]) -> Result<OffsetDateTime, String> {
    let digits = match (tag, v) {
        (0x17, [d @ .., b'Z']) if d.len() == 12 => d,
        (0x18, [d @ .., b'Z']) if d.len() == 14 => d,
        _ => return Err("not a UTCTime or GeneralizedTime in Z form".into()),
    };
    if !digits.iter().all(u8::is_ascii_digit) {
        return Err("bad time".into());
    }
    let n = |i: usize| u16::from(digits[i] - b'0') * 10 + u16::from(digits[i + 1] - b'0');
    let (year, at) = if tag == 0x17 {
        let yy = i32::from(n(0));
        (if yy < 50 { 2000 + yy } else { 1900 + yy }, 2)
    } else {
        (i32::from(n(0)) * 100 + i32::from(n(2)), 4)
    };
    let month = Month::try_from(n(at) as u8).map_err(|_| "bad month")?;
    let date = Date::from_calendar_date(year, month, n(at + 2) as u8).map_err(|_| "bad date")?;
    let time = Time::from_hms(n(at + 4) as u8, n(at + 6) as u8, n(at + 8) as u8).map_err(|_| "bad time of day")?;
    Ok(PrimitiveDateTime::new(date, time).assume_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::crl::Revoked;
    use crate::validity::truncate_to_second;
    use crate::{Ca, KeyType, RevocationReason, Serial, Validity};
    use time::Duration;

    fn now() -> OffsetDateTime {
        truncate_to_second(OffsetDateTime::now_utc())
    }

    fn revoked(n: usize) -> Vec<Revoked> {
        let at = now() - Duration::hours(1);
        (0..n)
            .map(|i| Revoked {
                serial: Serial::random(),
                // Two times, to check both the shared and a changed time.
                revoked_at: if i % 2 == 0 { at } else { at - Duration::days(400) },
                reason: RevocationReason::ALL[i % 4],
            })
            .collect()
    }

    /// The tbsCertList of `crl`, with its outer parts (algorithm and signature) after it.
    fn split(crl: &[u8]) -> (&[u8], &[u8]) {
        let mut outer = Der::new(crl);
        let mut list = outer.take(0x30, "CertificateList").unwrap();
        let tbs = list.raw(0x30, "tbs").unwrap();
        (tbs, list.rest())
    }

    /// A CRL made of `tbs` (any bytes), signed with `ca`'s key as our writer signs.
    fn signed(ca: &Ca, alg: &[u8], tbs: &[u8]) -> Vec<u8> {
        let signature = rcgen::SigningKey::sign(ca.signing_key(), tbs).unwrap();
        let mut bits = vec![0];
        bits.extend_from_slice(&signature);
        let mut body = tbs.to_vec();
        body.extend_from_slice(alg);
        crate::crl::der::tlv(&mut body, 0x03, &bits);
        crate::crl::der::wrap(0x30, &body)
    }

    #[test]
    fn our_crls_pass_and_openssl_agrees() {
        for kt in [KeyType::EcP256, KeyType::Rsa2048] {
            let ca = Ca::generate("fleet-ca", kt, Validity::days_from_now(365)).unwrap();
            for n in [0, 1, 300] {
                let (this, next) = (now() - Duration::minutes(5), now() + Duration::days(7));
                let der = ca.crl_der(&revoked(n), 9, this, next).unwrap();
                let s = check_crl(ca.cert_pem(), &der).unwrap();
                assert_eq!(s, CrlSummary { this_update: this, next_update: next, crl_number: Some(9), entries: n });
                let crl = openssl::x509::X509Crl::from_der(&der).unwrap();
                let key = openssl::x509::X509::from_pem(ca.cert_pem().as_bytes()).unwrap().public_key().unwrap();
                assert!(crl.verify(&key).unwrap(), "{kt} {n}");
                assert_eq!(crl.get_revoked().map_or(0, |r| r.len()), n);
            }
        }
    }

    #[test]
    fn every_changed_byte_is_refused() {
        let ca = Ca::generate("fleet-ca", KeyType::EcP256, Validity::days_from_now(365)).unwrap();
        let der = ca.crl_der(&revoked(3), u64::MAX, now() - Duration::minutes(5), now() + Duration::days(1)).unwrap();
        assert_eq!(check_crl(ca.cert_pem(), &der).unwrap().crl_number, Some(u64::MAX));
        assert_eq!(crl_number(&der), Some(u64::MAX));
        let empty = ca.crl_der(&[], 7, now() - Duration::minutes(5), now() + Duration::days(1)).unwrap();
        assert_eq!(crl_number(&empty), Some(7));
        assert_eq!(crl_number(&der[..der.len() / 2]), None);
        for i in 0..der.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut bad = der.clone();
                bad[i] ^= flip;
                assert!(check_crl(ca.cert_pem(), &bad).is_err(), "byte {i} ^ {flip:#x} passed");
            }
        }
        // Cut short anywhere, or with a byte more.
        for len in 0..der.len() {
            assert!(check_crl(ca.cert_pem(), &der[..len]).is_err(), "{len} bytes passed");
            let _ = crl_number(&der[..len]);
        }
        let mut longer = der.clone();
        longer.push(0);
        assert!(check_crl(ca.cert_pem(), &longer).is_err());
        // Another CA of the same name, or another key type.
        let other = Ca::generate("fleet-ca", KeyType::EcP256, Validity::days_from_now(365)).unwrap();
        assert!(check_crl(other.cert_pem(), &der).unwrap_err().contains("signature"));
        let rsa = Ca::generate("fleet-ca", KeyType::Rsa2048, Validity::days_from_now(365)).unwrap();
        assert!(check_crl(rsa.cert_pem(), &der).is_err());
    }

    #[test]
    fn a_well_signed_crl_of_a_wrong_shape_is_refused() {
        let ca = Ca::generate("fleet-ca", KeyType::EcP256, Validity::days_from_now(365)).unwrap();
        let mut entries = revoked(2);
        entries[0].serial = "1234".parse().unwrap();
        let der = ca.crl_der(&entries, 1, now() - Duration::minutes(5), now() + Duration::days(1)).unwrap();
        let (tbs, outer) = split(&der);
        let alg = crate::crl::der::algorithm(KeyType::EcP256);
        assert!(outer.starts_with(alg));
        // The same bytes re-signed pass: what follows fails for its shape alone.
        check_crl(ca.cert_pem(), &signed(&ca, alg, tbs)).unwrap();
        let reshape = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut body = Der::new(tbs).take(0x30, "tbs").unwrap().rest().to_vec();
            f(&mut body);
            let tbs = crate::crl::der::wrap(0x30, &body);
            check_crl(ca.cert_pem(), &signed(&ca, alg, &tbs)).unwrap_err()
        };
        // Trailing garbage inside the tbsCertList.
        assert!(reshape(&|b| b.extend_from_slice(&[0x05, 0x00])).contains("trailing"));
        // version v1 while extensions are present.
        assert!(reshape(&|b| b[2] = 0).contains("version"));
        // An unknown critical CRL extension: OpenSSL refuses such a CRL.
        let e = reshape(&|b| {
            let exts_at = b.iter().rposition(|x| *x == 0xa0).unwrap();
            let mut exts = Der::new(&b[exts_at..]).take(0xa0, "").unwrap().take(0x30, "").unwrap().rest().to_vec();
            exts.extend_from_slice(&[0x30, 0x0a, 0x06, 0x03, 0x55, 0x1d, 0x2e, 0x01, 0x01, 0xff, 0x04, 0x00]);
            b.truncate(exts_at);
            let seq = crate::crl::der::wrap(0x30, &exts);
            crate::crl::der::tlv(b, 0xa0, &seq);
        });
        assert!(e.contains("critical"), "{e}");
        // A serial of zero, or a negative one.
        for (bytes, why) in [([0x00, 0x00], "non-minimal"), ([0x92, 0x34], "not positive")] {
            let e = reshape(&|b| {
                let at = b.windows(4).position(|w| w == [0x02, 0x02, 0x12, 0x34]).unwrap();
                b[at + 2..at + 4].copy_from_slice(&bytes);
            });
            assert!(e.contains("serial") && e.contains(why), "{e}");
        }
        // A revocation date that is no date.
        let e = reshape(&|b| {
            let at = b.windows(2).rposition(|w| w == [0x17, 0x0d]).unwrap();
            b[at + 4] = b'9'; // month 9x
        });
        assert!(e.contains("month") || e.contains("time"), "{e}");
    }
}
