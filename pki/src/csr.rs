//! Certificate signing requests from terminals, reduced to the one thing we take from them: a public key.
//!
//! A CSR arrives from outside (the pairing gate), so it is size-capped, parsed with x509-parser, its key
//! checked against a short list (EC P-256/P-384, RSA 2048..=8192), and its self-signature verified (proof
//! that the sender holds the private key). The key is checked before the signature so that a weak key is
//! reported as weak and not as a bad signature. Nothing else in the request (subject, SANs, CA rights, key
//! usages) is kept: [`crate::Ca::sign_csr`] decides all of that itself. This sidesteps rcgen's own CSR
//! import, which copies every requested field and, for a P-256 key signed with SHA-384, picked the
//! wrong curve (rcgen issue 448).

use std::fmt;

use sha2::{Digest, Sha256};
use thiserror::Error;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::error::X509Error;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION, OID_PKCS1_SHA1WITHRSA,
    OID_SHA1_WITH_RSA,
};
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::pem;

/// Largest CSR accepted, PEM text. An RSA-8192 CSR is about 2.5 KiB; anything far larger is not a CSR.
pub const MAX_CSR_PEM_LEN: usize = 16 * 1024;

const MIN_RSA_BITS: usize = 2048;
const MAX_RSA_BITS: usize = 8192;

/// Why a CSR was refused. Messages say what is wrong; they never include the request itself.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CsrError {
    #[error("malformed CSR: {0}")]
    Malformed(String),
    #[error("the CSR's signature does not verify with its own public key")]
    BadSignature,
    #[error("weak key: {0}")]
    WeakKey(String),
    #[error("unsupported key: {0}")]
    UnsupportedKey(String),
}

/// The kind of key a verified CSR carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CsrKeyKind {
    EcP256,
    EcP384,
    Rsa,
}

impl CsrKeyKind {
    /// The rcgen algorithm whose SubjectPublicKeyInfo encoding matches this key (curve OID for EC,
    /// rsaEncryption with NULL parameters for RSA). Only the key encoding is taken from it: certificates
    /// are signed with the CA's own algorithm.
    fn spki_algorithm(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            CsrKeyKind::EcP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            CsrKeyKind::EcP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            CsrKeyKind::Rsa => &rcgen::PKCS_RSA_SHA256,
        }
    }
}

/// A CSR whose self-signature verified and whose key is acceptable.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifiedCsr {
    spki_der: Vec<u8>,
    /// The BIT STRING content of the SPKI: what rcgen calls the public key's `der_bytes`.
    key_bits: Vec<u8>,
    kind: CsrKeyKind,
    /// RSA modulus size, or the curve size for EC.
    key_size_bits: usize,
    sha256: [u8; 32],
}

impl VerifiedCsr {
    /// Parses a PEM CSR (`CERTIFICATE REQUEST`, or `NEW CERTIFICATE REQUEST` as Java's keytool writes),
    /// checks its key and verifies its signature.
    pub fn from_pem(pem: &str) -> Result<VerifiedCsr, CsrError> {
        if pem.len() > MAX_CSR_PEM_LEN {
            return Err(CsrError::Malformed(format!("{} bytes; at most {MAX_CSR_PEM_LEN} accepted", pem.len())));
        }
        let block = pem::decode(pem, &["CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"])
            .map_err(|e| CsrError::Malformed(e.to_string()))?;
        let (rest, csr) = X509CertificationRequest::from_der(&block.der)
            .map_err(|e| CsrError::Malformed(format!("not a PKCS#10 request ({e})")))?;
        if !rest.is_empty() {
            return Err(CsrError::Malformed("trailing bytes after the request".into()));
        }
        let info = &csr.certification_request_info;
        if info.version.0 != 0 {
            return Err(CsrError::Malformed(format!("unknown version {}", info.version.0)));
        }

        let spki = &info.subject_pki;
        let (kind, key_size_bits) = classify_key(spki)?;

        let sig_oid = &csr.signature_algorithm.algorithm;
        if *sig_oid == OID_PKCS1_SHA1WITHRSA || *sig_oid == OID_SHA1_WITH_RSA {
            return Err(CsrError::WeakKey("the CSR is signed with SHA-1; SHA-256 or stronger required".into()));
        }
        csr.verify_signature().map_err(|e| match e {
            X509Error::SignatureVerificationError => CsrError::BadSignature,
            X509Error::SignatureUnsupportedAlgorithm => {
                CsrError::UnsupportedKey(format!("signature algorithm {sig_oid} with this key is not supported"))
            }
            other => CsrError::Malformed(other.to_string()),
        })?;

        let csr = VerifiedCsr {
            spki_der: spki.raw.to_vec(),
            key_bits: spki.subject_public_key.data.to_vec(),
            kind,
            key_size_bits,
            sha256: Sha256::digest(spki.raw).into(),
        };
        // The certificate will carry the key as rcgen re-encodes it. Insist that this is byte-for-byte the
        // SPKI that was signed, so a non-canonical encoding can never turn into a different key.
        if rcgen::PublicKeyData::subject_public_key_info(&csr) != csr.spki_der {
            return Err(CsrError::UnsupportedKey("non-canonical SubjectPublicKeyInfo encoding".into()));
        }
        Ok(csr)
    }

    /// The requested public key as DER SubjectPublicKeyInfo.
    pub fn public_key_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// SHA-256 over [`Self::public_key_der`]: identifies the key across retries and in short codes.
    pub fn public_key_sha256(&self) -> [u8; 32] {
        self.sha256
    }

    /// A short description such as `EC P-256` or `RSA 2048`, for logs and UIs.
    pub fn key_description(&self) -> String {
        match self.kind {
            CsrKeyKind::EcP256 => "EC P-256".into(),
            CsrKeyKind::EcP384 => "EC P-384".into(),
            CsrKeyKind::Rsa => format!("RSA {}", self.key_size_bits),
        }
    }

    pub(crate) fn kind(&self) -> CsrKeyKind {
        self.kind
    }
}

impl fmt::Debug for VerifiedCsr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedCsr")
            .field("key", &self.key_description())
            .field("public_key_sha256", &hex::encode(self.sha256))
            .finish()
    }
}

// Lets rcgen put the requested key into a certificate without ever seeing the rest of the request.
impl rcgen::PublicKeyData for VerifiedCsr {
    fn der_bytes(&self) -> &[u8] {
        &self.key_bits
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.kind.spki_algorithm()
    }
}

fn classify_key(spki: &SubjectPublicKeyInfo<'_>) -> Result<(CsrKeyKind, usize), CsrError> {
    let alg = &spki.algorithm.algorithm;
    let bits = &spki.subject_public_key;
    if bits.unused_bits != 0 {
        return Err(CsrError::Malformed("public key BIT STRING has unused bits".into()));
    }
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .ok_or_else(|| CsrError::UnsupportedKey("EC key without a named curve".into()))?;
        let (kind, size, point_len) = if curve == OID_EC_P256 {
            (CsrKeyKind::EcP256, 256, 65)
        } else if curve == OID_NIST_EC_P384 {
            (CsrKeyKind::EcP384, 384, 97)
        } else {
            return Err(CsrError::UnsupportedKey(format!("EC curve {curve}; P-256 or P-384 required")));
        };
        // Uncompressed points only: that is what the signature check and OpenSSL peers expect.
        if bits.data.len() != point_len || bits.data[0] != 0x04 {
            return Err(CsrError::UnsupportedKey("EC public key is not an uncompressed point".into()));
        }
        Ok((kind, size))
    } else if *alg == OID_PKCS1_RSAENCRYPTION {
        let n_bits = rsa_modulus_bits(spki)?;
        if n_bits < MIN_RSA_BITS {
            return Err(CsrError::WeakKey(format!("RSA key of {n_bits} bits; at least {MIN_RSA_BITS} required")));
        }
        if n_bits > MAX_RSA_BITS {
            return Err(CsrError::UnsupportedKey(format!(
                "RSA key of {n_bits} bits; at most {MAX_RSA_BITS} supported"
            )));
        }
        Ok((CsrKeyKind::Rsa, n_bits))
    } else {
        Err(CsrError::UnsupportedKey(format!("key algorithm {alg}; EC P-256, EC P-384 or RSA required")))
    }
}

/// Size of the RSA modulus in bits. (x509-parser's `key_size` assumes a leading zero byte; count here.)
fn rsa_modulus_bits(spki: &SubjectPublicKeyInfo<'_>) -> Result<usize, CsrError> {
    let parsed = spki.parsed().map_err(|_| CsrError::Malformed("invalid RSA public key".into()))?;
    let x509_parser::public_key::PublicKey::RSA(rsa) = parsed else {
        return Err(CsrError::Malformed("invalid RSA public key".into()));
    };
    let exponent =
        rsa.try_exponent().map_err(|_| CsrError::UnsupportedKey("RSA public exponent out of range".into()))?;
    if exponent < 3 || exponent % 2 == 0 {
        return Err(CsrError::WeakKey(format!("RSA public exponent {exponent}")));
    }
    let modulus = rsa.modulus;
    if modulus.first().is_some_and(|b| b & 0x80 != 0) {
        return Err(CsrError::Malformed("negative RSA modulus".into()));
    }
    let Some(start) = modulus.iter().position(|b| *b != 0) else {
        return Err(CsrError::Malformed("zero RSA modulus".into()));
    };
    let significant = &modulus[start..];
    Ok(significant.len() * 8 - significant[0].leading_zeros() as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::pkey::{PKey, Private, Public};
    use openssl::rsa::Rsa;
    use openssl::x509::{X509NameBuilder, X509ReqBuilder};

    /// A CSR built by OpenSSL for `subject_key`, signed by `signer` with `digest`.
    fn openssl_csr<T: openssl::pkey::HasPublic>(
        subject_key: &PKey<T>,
        signer: &PKey<Private>,
        digest: MessageDigest,
    ) -> String {
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", "terminal").unwrap();
        let mut req = X509ReqBuilder::new().unwrap();
        req.set_subject_name(&name.build()).unwrap();
        req.set_pubkey(subject_key).unwrap();
        req.sign(signer, digest).unwrap();
        String::from_utf8(req.build().to_pem().unwrap()).unwrap()
    }

    fn ec_key(nid: Nid) -> PKey<Private> {
        PKey::from_ec_key(EcKey::generate(&EcGroup::from_curve_name(nid).unwrap()).unwrap()).unwrap()
    }

    fn rcgen_csr() -> (String, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["x.example".to_string()]).unwrap();
        (params.serialize_request(&key).unwrap().pem().unwrap(), key)
    }

    #[test]
    fn accepts_good_keys_and_exposes_the_spki() {
        let (pem, key) = rcgen_csr();
        let csr = VerifiedCsr::from_pem(&pem).unwrap();
        assert_eq!(csr.public_key_der(), rcgen::PublicKeyData::subject_public_key_info(&key));
        let expected: [u8; 32] = Sha256::digest(csr.public_key_der()).into();
        assert_eq!(csr.public_key_sha256(), expected);
        assert_eq!(csr.key_description(), "EC P-256");

        for (key, digest, want) in [
            (ec_key(Nid::X9_62_PRIME256V1), MessageDigest::sha256(), "EC P-256"),
            // P-256 with SHA-384: the combination rcgen once mishandled.
            (ec_key(Nid::X9_62_PRIME256V1), MessageDigest::sha384(), "EC P-256"),
            (ec_key(Nid::SECP384R1), MessageDigest::sha384(), "EC P-384"),
            (PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap(), MessageDigest::sha256(), "RSA 2048"),
            (PKey::from_rsa(Rsa::generate(3072).unwrap()).unwrap(), MessageDigest::sha512(), "RSA 3072"),
        ] {
            let csr = VerifiedCsr::from_pem(&openssl_csr(&key, &key, digest)).unwrap();
            assert_eq!(csr.key_description(), want);
            assert_eq!(csr.public_key_der(), key.public_key_to_der().unwrap());
        }
    }

    #[test]
    fn accepts_keytool_label() {
        let (pem, _) = rcgen_csr();
        let keytool = pem.replace("CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST");
        assert!(VerifiedCsr::from_pem(&keytool).is_ok());
    }

    #[test]
    fn rejects_tampered_signature() {
        let (pem, _) = rcgen_csr();
        let der = crate::pem::decode(&pem, &["CERTIFICATE REQUEST"]).unwrap().der;
        // The signature BIT STRING is last; flip a byte in its middle (inside the ECDSA `s` integer).
        let mut tampered = der.to_vec();
        let i = tampered.len() - 10;
        tampered[i] ^= 0x01;
        let tampered_pem = crate::pem::encode("CERTIFICATE REQUEST", &tampered);
        assert_eq!(VerifiedCsr::from_pem(&tampered_pem), Err(CsrError::BadSignature));
    }

    #[test]
    fn rejects_tampered_request_body() {
        let (pem, _) = rcgen_csr();
        let der = crate::pem::decode(&pem, &["CERTIFICATE REQUEST"]).unwrap().der;
        // Change one letter of the SAN "x.example" inside the signed part.
        let mut tampered = der.to_vec();
        let at = tampered.windows(9).position(|w| w == b"x.example").unwrap();
        tampered[at] = b'y';
        let tampered_pem = crate::pem::encode("CERTIFICATE REQUEST", &tampered);
        assert_eq!(VerifiedCsr::from_pem(&tampered_pem), Err(CsrError::BadSignature));
    }

    #[test]
    fn rejects_a_csr_signed_by_another_key() {
        let subject = ec_key(Nid::X9_62_PRIME256V1);
        let other = ec_key(Nid::X9_62_PRIME256V1);
        let pem = openssl_csr(&subject, &other, MessageDigest::sha256());
        assert_eq!(VerifiedCsr::from_pem(&pem), Err(CsrError::BadSignature));
    }

    #[test]
    fn rejects_rsa_1024_as_weak() {
        let key = PKey::from_rsa(Rsa::generate(1024).unwrap()).unwrap();
        let pem = openssl_csr(&key, &key, MessageDigest::sha256());
        assert_eq!(
            VerifiedCsr::from_pem(&pem),
            Err(CsrError::WeakKey("RSA key of 1024 bits; at least 2048 required".into()))
        );
    }

    #[test]
    fn rejects_sha1_signatures() {
        let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
        let pem = openssl_csr(&key, &key, MessageDigest::sha1());
        assert!(matches!(VerifiedCsr::from_pem(&pem), Err(CsrError::WeakKey(m)) if m.contains("SHA-1")));
    }

    #[test]
    fn rejects_oversized_rsa_before_checking_the_signature() {
        // A 8200-bit public modulus (not a real key; the request is signed by a small key). The size
        // check must fire before signature verification.
        let mut n = openssl::bn::BigNum::new().unwrap();
        n.rand(8200, openssl::bn::MsbOption::ONE, true).unwrap();
        let e = openssl::bn::BigNum::from_u32(65537).unwrap();
        let big: PKey<Public> = PKey::from_rsa(Rsa::from_public_components(n, e).unwrap()).unwrap();
        let signer = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
        let pem = openssl_csr(&big, &signer, MessageDigest::sha256());
        assert_eq!(
            VerifiedCsr::from_pem(&pem),
            Err(CsrError::UnsupportedKey("RSA key of 8200 bits; at most 8192 supported".into()))
        );
    }

    #[test]
    fn rejects_other_curves_and_algorithms() {
        let k = ec_key(Nid::SECP521R1);
        let pem = openssl_csr(&k, &k, MessageDigest::sha512());
        assert!(matches!(VerifiedCsr::from_pem(&pem), Err(CsrError::UnsupportedKey(m)) if m.contains("EC curve")));

        let k = ec_key(Nid::SECP256K1);
        let pem = openssl_csr(&k, &k, MessageDigest::sha256());
        assert!(matches!(VerifiedCsr::from_pem(&pem), Err(CsrError::UnsupportedKey(_))));

        let k = PKey::generate_ed25519().unwrap();
        let pem = openssl_csr(&k, &k, MessageDigest::null());
        assert!(matches!(VerifiedCsr::from_pem(&pem), Err(CsrError::UnsupportedKey(m)) if m.contains("key algorithm")));
    }

    #[test]
    fn rejects_garbage() {
        for input in [
            "".to_string(),
            "garbage".to_string(),
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n".to_string(),
            crate::pem::encode("CERTIFICATE REQUEST", &[0x30, 0x82, 0xff, 0xff, 0x00]).to_string(),
            "A".repeat(MAX_CSR_PEM_LEN + 1),
        ] {
            assert!(matches!(VerifiedCsr::from_pem(&input), Err(CsrError::Malformed(_))), "{input:.40}");
        }
        // A certificate is not a CSR.
        let cert = rcgen::CertificateParams::default().self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap().pem();
        assert!(matches!(VerifiedCsr::from_pem(&cert), Err(CsrError::Malformed(_))));
    }

    #[test]
    fn rejects_trailing_bytes() {
        let (pem, _) = rcgen_csr();
        let mut der = crate::pem::decode(&pem, &["CERTIFICATE REQUEST"]).unwrap().der.to_vec();
        der.push(0);
        let pem = crate::pem::encode("CERTIFICATE REQUEST", &der);
        assert!(matches!(VerifiedCsr::from_pem(&pem), Err(CsrError::Malformed(_))));
    }

    #[test]
    fn random_input_never_panics() {
        use rand::{Rng as _, RngCore as _};
        let (pem, _) = rcgen_csr();
        let der = crate::pem::decode(&pem, &["CERTIFICATE REQUEST"]).unwrap().der.to_vec();
        let mut rng = rand::rng();
        for _ in 0..2000 {
            // Random mutations of a valid request reach deeper into the parser than pure noise.
            let mut d = der.clone();
            for _ in 0..rng.random_range(1..4) {
                let i = rng.random_range(0..d.len());
                d[i] = rng.random();
            }
            if rng.random_bool(0.2) {
                d.truncate(rng.random_range(0..d.len()));
            }
            let _ = VerifiedCsr::from_pem(&crate::pem::encode("CERTIFICATE REQUEST", &d));
            let mut noise = vec![0u8; rng.random_range(0..600)];
            rng.fill_bytes(&mut noise);
            let _ = VerifiedCsr::from_pem(&crate::pem::encode("CERTIFICATE REQUEST", &noise));
        }
    }
}
