//! A certificate authority: a self-signed root that issues server and client certificates and CRLs.
//!
//! OpenVPN's `ca` must hold self-signed roots (no partial chains), so each CA here is a root with
//! `pathlen:0`: it can sign end-entity certificates only. Every certificate gets an explicit validity, a
//! random serial (rcgen would otherwise derive one from the key), `basicConstraints CA:FALSE`, key usages
//! that OpenVPN 2.4.0 and older insist on for `remote-cert-tls`, one extended key usage, and a subject of
//! exactly `CN=<name>` from a validated name. Certificates never outlive their CA.

use std::fmt;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod,
    KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use thiserror::Error;
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::FromDer;
use zeroize::Zeroizing;

use crate::crl::{self, CrlError, Revoked};
use crate::csr::{CsrKeyKind, VerifiedCsr};
use crate::key::{KeyError, KeyType, PrivateKey};
use crate::name::{NameError, validate_common_name};
use crate::pem;
use crate::serial::Serial;
use crate::validity::{Validity, representable};

/// Largest certificate PEM accepted by [`Ca::load`].
const MAX_CERT_PEM_LEN: usize = 64 * 1024;

/// Errors from CA operations. None carries key material or a passphrase.
#[derive(Debug, Error)]
pub enum CaError {
    #[error(transparent)]
    InvalidName(#[from] NameError),
    #[error("invalid validity: {0}")]
    InvalidValidity(String),
    #[error("the certificate would end at {requested}, after its CA ({ca_not_after})")]
    OutlivesCa { requested: OffsetDateTime, ca_not_after: OffsetDateTime },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("unusable CA certificate: {0}")]
    BadCaCert(String),
    #[error("the private key does not belong to the CA certificate")]
    KeyMismatch,
    #[error("certificate signing failed: {0}")]
    Sign(String),
    #[error(transparent)]
    Crl(#[from] CrlError),
}

/// A freshly issued certificate together with its new private key.
#[derive(Debug)]
pub struct Issued {
    pub cert_pem: String,
    pub key: PrivateKey,
    pub serial: Serial,
    pub not_after: OffsetDateTime,
}

/// A subject alternative name of a server certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AltName {
    Ip(std::net::IpAddr),
    /// A host name, already validated by the caller (only its ASCII-ness is checked here).
    Dns(String),
}

/// What an end-entity certificate is for.
#[derive(Clone, Copy)]
enum Role {
    Server,
    Client,
}

/// A loaded or generated CA, ready to sign.
pub struct Ca {
    /// rcgen's view of the CA: subject name, key identifier, key usages and the signing key.
    issuer: Issuer<'static, PrivateKey>,
    cert_pem: String,
    common_name: String,
    serial: Serial,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    /// The CA's subject key identifier, repeated as authority key identifier in CRLs.
    key_id: Vec<u8>,
}

impl Ca {
    /// Creates a self-signed root: `CA:TRUE, pathlen:0`, key usages keyCertSign and cRLSign, a subject key
    /// identifier, a random serial and exactly the given validity.
    pub fn generate(common_name: &str, kt: KeyType, validity: Validity) -> Result<Ca, CaError> {
        validate_common_name(common_name)?;
        let validity = checked(validity)?;
        let key = PrivateKey::generate(kt)?;
        let serial = Serial::random();

        let mut params = CertificateParams::default();
        params.distinguished_name = cn_only(common_name);
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        params.serial_number = Some(SerialNumber::from_slice(serial.as_bytes()));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        // rcgen writes the subject key identifier for CA certificates, derived with this method.
        params.key_identifier_method = KeyIdMethod::Sha256;

        let cert = params.self_signed(&key).map_err(|e| CaError::Sign(e.to_string()))?;
        let key_id = params.key_identifier(&key);
        Ok(Ca {
            issuer: Issuer::new(params, key),
            cert_pem: cert.pem(),
            common_name: common_name.to_string(),
            serial,
            not_before: validity.not_before,
            not_after: validity.not_after,
            key_id,
        })
    }

    /// Loads a CA from its certificate and private key (encrypted PKCS#8 when `passphrase` is given).
    ///
    /// Refuses a certificate that is not a self-signed CA allowed to sign certificates and CRLs, and a key
    /// that does not belong to it.
    pub fn load(cert_pem: &str, key_pem: &str, passphrase: Option<&str>) -> Result<Ca, CaError> {
        if cert_pem.len() > MAX_CERT_PEM_LEN {
            return Err(CaError::BadCaCert(format!(
                "certificate PEM is {} bytes; at most {MAX_CERT_PEM_LEN} accepted",
                cert_pem.len()
            )));
        }
        let der = pem::decode(cert_pem, &["CERTIFICATE"]).map_err(|e| CaError::BadCaCert(e.to_string()))?.der;
        let (rest, cert) = X509Certificate::from_der(&der)
            .map_err(|e| CaError::BadCaCert(format!("not an X.509 certificate ({e})")))?;
        if !rest.is_empty() {
            return Err(CaError::BadCaCert("trailing bytes after the certificate".into()));
        }
        check_ca_certificate(&cert)?;

        let key = match passphrase {
            Some(p) => PrivateKey::from_encrypted_pem(key_pem, p)?,
            None => PrivateKey::from_pem(key_pem)?,
        };
        if key.public_key_der() != cert.public_key().raw {
            return Err(CaError::KeyMismatch);
        }

        let serial = Serial::from_der_integer(cert.raw_serial())
            .map_err(|e| CaError::BadCaCert(format!("unsupported serial number: {e}")))?;
        let common_name =
            cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).unwrap_or_default().to_string();
        let key_id = cert
            .iter_extensions()
            .find_map(|ext| match ext.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
                _ => None,
            })
            .unwrap_or_else(|| CertificateParams::default().key_identifier(&key));
        let not_before = cert.validity().not_before.to_datetime();
        let not_after = cert.validity().not_after.to_datetime();

        let issuer = Issuer::from_ca_cert_der(&CertificateDer::from(&der[..]), key)
            .map_err(|e| CaError::BadCaCert(format!("cannot use the subject name ({e})")))?;
        let ca = Ca {
            issuer,
            cert_pem: pem::encode("CERTIFICATE", &der).to_string(),
            common_name,
            serial,
            not_before,
            not_after,
            key_id,
        };
        ca.check_issuer_name(cert.subject().as_raw())?;
        Ok(ca)
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's common name (empty for a loaded CA without one).
    pub fn common_name(&self) -> &str {
        &self.common_name
    }

    /// The CA certificate's serial number.
    pub fn serial(&self) -> Serial {
        self.serial
    }

    /// Start of the CA certificate's validity.
    pub fn not_before(&self) -> OffsetDateTime {
        self.not_before
    }

    /// End of the CA certificate's validity; no certificate it issues may end later.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// The type of the CA's own key (which also fixes the signature algorithm of what it signs).
    pub fn key_type(&self) -> KeyType {
        self.issuer.key().key_type()
    }

    /// The CA private key as PEM: encrypted PKCS#8 when a passphrase is given, plain PKCS#8 otherwise.
    pub fn key_pem(&self, passphrase: Option<&str>) -> Result<Zeroizing<String>, CaError> {
        let key = self.issuer.key();
        Ok(match passphrase {
            Some(p) => Zeroizing::new(key.to_encrypted_pem(p)?),
            None => key.to_pem(),
        })
    }

    /// Issues a server certificate with a new key (EKU serverAuth).
    pub fn issue_server(&self, common_name: &str, kt: KeyType, validity: Validity) -> Result<Issued, CaError> {
        self.issue(common_name, kt, validity, Role::Server, &[])
    }

    /// Issues a server certificate with a new key (EKU serverAuth) that also names `alt_names` as subject
    /// alternative names: for a TLS server its clients reach by address or host name (master), where the client
    /// checks the name against the certificate.
    pub fn issue_server_named(
        &self,
        common_name: &str,
        alt_names: &[AltName],
        kt: KeyType,
        validity: Validity,
    ) -> Result<Issued, CaError> {
        if alt_names.is_empty() {
            return Err(CaError::Sign("a named server certificate needs at least one name".into()));
        }
        self.issue(common_name, kt, validity, Role::Server, alt_names)
    }

    /// Issues a client certificate with a new key (EKU clientAuth), for when the server makes the key.
    pub fn issue_client(&self, common_name: &str, kt: KeyType, validity: Validity) -> Result<Issued, CaError> {
        self.issue(common_name, kt, validity, Role::Client, &[])
    }

    /// Signs a client certificate for the public key of a verified CSR. Only the key is taken from the
    /// request: subject, usages and validity are ours, CA rights and SANs are never granted.
    pub fn sign_csr(
        &self,
        csr: &VerifiedCsr,
        common_name: &str,
        validity: Validity,
    ) -> Result<(String, Serial), CaError> {
        let rsa = csr.kind() == CsrKeyKind::Rsa;
        let (cert_pem, serial) = self.sign_leaf(csr, rsa, common_name, validity, Role::Client, &[])?;
        // The certificate must carry exactly the key that proved possession in the CSR.
        let der = pem::decode(&cert_pem, &["CERTIFICATE"]).map_err(|e| CaError::Sign(e.to_string()))?.der;
        let (_, cert) = X509Certificate::from_der(&der).map_err(|e| CaError::Sign(e.to_string()))?;
        if cert.public_key().raw != csr.public_key_der() {
            return Err(CaError::Sign("issued key differs from the requested key".into()));
        }
        Ok((cert_pem, serial))
    }

    /// The CA's key, for tests that sign bytes of their own.
    #[cfg(test)]
    pub(crate) fn signing_key(&self) -> &PrivateKey {
        self.issuer.key()
    }

    /// A CRL listing `revoked`, signed by this CA, in PEM. `this_update` should be backdated a few minutes by
    /// the caller: OpenVPN rejects a CRL from the future.
    pub fn crl(
        &self,
        revoked: &[Revoked],
        crl_number: u64,
        this_update: OffsetDateTime,
        next_update: OffsetDateTime,
    ) -> Result<String, CaError> {
        Ok(crl::der_to_pem(&self.crl_der(revoked, crl_number, this_update, next_update)?))
    }

    /// `crl`, in DER.
    pub fn crl_der(
        &self,
        revoked: &[Revoked],
        crl_number: u64,
        this_update: OffsetDateTime,
        next_update: OffsetDateTime,
    ) -> Result<Vec<u8>, CaError> {
        // The issuer name exactly as the CA certificate encodes it (what a verifier compares).
        let der = pem::decode(&self.cert_pem, &["CERTIFICATE"]).map_err(|e| CaError::BadCaCert(e.to_string()))?.der;
        let (_, cert) = X509Certificate::from_der(&der).map_err(|e| CaError::BadCaCert(e.to_string()))?;
        let issuer = cert.subject().as_raw();
        Ok(crl::build(self.issuer.key(), issuer, &self.key_id, revoked, crl_number, this_update, next_update)?)
    }

    fn issue(
        &self,
        common_name: &str,
        kt: KeyType,
        validity: Validity,
        role: Role,
        alt_names: &[AltName],
    ) -> Result<Issued, CaError> {
        // Check the cheap things before spending time on a key.
        validate_common_name(common_name)?;
        let validity = self.checked_leaf_validity(validity)?;
        let key = PrivateKey::generate(kt)?;
        let (cert_pem, serial) = self.sign_leaf(&key, kt.is_rsa(), common_name, validity, role, alt_names)?;
        Ok(Issued { cert_pem, key, serial, not_after: validity.not_after })
    }

    fn sign_leaf(
        &self,
        public_key: &impl PublicKeyData,
        rsa: bool,
        common_name: &str,
        validity: Validity,
        role: Role,
        alt_names: &[AltName],
    ) -> Result<(String, Serial), CaError> {
        validate_common_name(common_name)?;
        let validity = self.checked_leaf_validity(validity)?;
        let serial = Serial::random();

        let mut params = CertificateParams::default();
        params.distinguished_name = cn_only(common_name);
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        params.serial_number = Some(SerialNumber::from_slice(serial.as_bytes()));
        // ExplicitNoCa writes `basicConstraints CA:FALSE` and a subject key identifier.
        params.is_ca = IsCa::ExplicitNoCa;
        // OpenVPN <= 2.4.0 checks these exact combinations for `remote-cert-tls`.
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            if rsa { KeyUsagePurpose::KeyEncipherment } else { KeyUsagePurpose::KeyAgreement },
        ];
        params.extended_key_usages = vec![match role {
            Role::Server => ExtendedKeyUsagePurpose::ServerAuth,
            Role::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        params.use_authority_key_identifier_extension = true;
        params.key_identifier_method = KeyIdMethod::Sha256;
        params.subject_alt_names = alt_names
            .iter()
            .map(|n| match n {
                AltName::Ip(ip) => Ok(SanType::IpAddress(*ip)),
                AltName::Dns(host) => host
                    .clone()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(|_| CaError::Sign(format!("{host:?} is not ASCII"))),
            })
            .collect::<Result<_, _>>()?;

        let cert = params.signed_by(public_key, &self.issuer).map_err(|e| CaError::Sign(e.to_string()))?;
        Ok((cert.pem(), serial))
    }

    fn checked_leaf_validity(&self, validity: Validity) -> Result<Validity, CaError> {
        let validity = checked(validity)?;
        if validity.not_after > self.not_after {
            return Err(CaError::OutlivesCa { requested: validity.not_after, ca_not_after: self.not_after });
        }
        Ok(validity)
    }

    /// rcgen rebuilds the issuer name from its own model of a distinguished name, which cannot hold
    /// every name found in the wild (repeated attribute types, for one). Sign a throwaway certificate and
    /// make sure its issuer field is byte-for-byte the CA's subject, so a CA we cannot faithfully sign for
    /// is refused at load time instead of producing certificates that chain to nothing.
    fn check_issuer_name(&self, ca_subject_der: &[u8]) -> Result<(), CaError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = cn_only("probe");
        params.serial_number = Some(SerialNumber::from_slice(&[1]));
        let probe = params.signed_by(self.issuer.key(), &self.issuer).map_err(|e| CaError::Sign(e.to_string()))?;
        let (_, probe) = X509Certificate::from_der(probe.der()).map_err(|e| CaError::Sign(e.to_string()))?;
        if probe.issuer().as_raw() != ca_subject_der {
            return Err(CaError::BadCaCert(
                "its subject name cannot be reproduced exactly (repeated or multi-valued attributes?)".into(),
            ));
        }
        Ok(())
    }
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("common_name", &self.common_name)
            .field("serial", &self.serial)
            .field("key_type", &self.key_type())
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

fn cn_only(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    // UTF8String: PrintableString has no '_', which our names allow.
    dn.push(DnType::CommonName, common_name);
    dn
}

fn checked(validity: Validity) -> Result<Validity, CaError> {
    let v = validity.normalized();
    if !representable(v.not_before) || !representable(v.not_after) {
        return Err(CaError::InvalidValidity("dates must fall in years 1950 to 9999".into()));
    }
    if v.not_after <= v.not_before {
        return Err(CaError::InvalidValidity("not_after must be later than not_before".into()));
    }
    Ok(v)
}

/// A CA certificate we can sign with: CA:TRUE, allowed to sign certificates and CRLs (when it restricts
/// key usage at all), and self-signed.
fn check_ca_certificate(cert: &X509Certificate<'_>) -> Result<(), CaError> {
    let bad = |m: &str| CaError::BadCaCert(m.to_string());
    let is_ca = cert
        .basic_constraints()
        .map_err(|_| bad("its basicConstraints extension is invalid"))?
        .is_some_and(|bc| bc.value.ca);
    if !is_ca {
        return Err(bad("it is not a CA certificate (no basicConstraints CA:TRUE)"));
    }
    let key_usage = cert.key_usage().map_err(|_| bad("its keyUsage extension is invalid"))?;
    // No keyUsage extension at all means no restriction.
    if key_usage.is_some_and(|ku| !ku.value.key_cert_sign() || !ku.value.crl_sign()) {
        return Err(bad("its keyUsage does not allow both keyCertSign and cRLSign"));
    }
    if cert.subject().as_raw() != cert.issuer().as_raw() || cert.verify_signature(None).is_err() {
        return Err(bad("it is not a self-signed root (OpenVPN's `ca` needs roots)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{Scratch, openssl, openssl_verify, x509_text};
    use std::collections::HashSet;
    use time::Duration;
    use x509_parser::extensions::GeneralName;

    fn ca(name: &str, kt: KeyType) -> Ca {
        Ca::generate(name, kt, Validity::days_from_now(365)).unwrap()
    }

    fn days(n: u32) -> Validity {
        Validity::days_from_now(n)
    }

    fn parse(pem: &str) -> Vec<u8> {
        crate::pem::decode(pem, &["CERTIFICATE"]).unwrap().der.to_vec()
    }

    /// A client CSR asking for far more than it may get.
    fn greedy_csr() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["evil.example".to_string(), "10.0.0.1".to_string()]).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, "admin");
        params.distinguished_name.push(DnType::OrganizationName, "Evil Org");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    #[test]
    fn ca_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Ca>();
        assert_send_sync::<Issued>();
    }

    #[test]
    fn issued_certificates_verify_against_their_own_ca_only() {
        let ca1 = ca("fleet-ca", KeyType::EcP256);
        let other_name = ca("other-ca", KeyType::EcP256);
        // Same subject name, different key: rejection must come from the signature, not the name.
        let same_name = ca("fleet-ca", KeyType::EcP256);

        let client = ca1.issue_client("atm-001", KeyType::EcP256, days(30)).unwrap();
        let server = ca1.issue_server("vpn-server", KeyType::EcP256, days(30)).unwrap();
        let csr = VerifiedCsr::from_pem(&greedy_csr()).unwrap();
        let (csr_cert, _) = ca1.sign_csr(&csr, "atm-002", days(30)).unwrap();

        for (cert, purpose, wrong_purpose) in [
            (&client.cert_pem, "sslclient", "sslserver"),
            (&csr_cert, "sslclient", "sslserver"),
            (&server.cert_pem, "sslserver", "sslclient"),
        ] {
            let ok = openssl_verify(ca1.cert_pem(), cert, &["-purpose", purpose]);
            assert!(ok.ok && ok.text.contains(": OK"), "{}", ok.text);
            // The EKU restricts the certificate to its role.
            let r = openssl_verify(ca1.cert_pem(), cert, &["-purpose", wrong_purpose]);
            assert!(!r.ok, "{}", r.text);
            for other in [&other_name, &same_name] {
                let r = openssl_verify(other.cert_pem(), cert, &[]);
                assert!(!r.ok, "verified against the wrong CA: {}", r.text);
            }
        }
    }

    #[test]
    fn x509_text_shows_the_expected_extensions() {
        let ca = ca("fleet-ca", KeyType::EcP256);
        let text = x509_text(ca.cert_pem());
        assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");
        assert!(text.contains("Certificate Sign, CRL Sign"), "{text}");
        assert!(text.contains("X509v3 Subject Key Identifier"), "{text}");
        assert!(text.contains("Subject: CN = fleet-ca"), "{text}");
        assert!(text.contains("ecdsa-with-SHA256"), "{text}");

        let client = ca.issue_client("atm-001", KeyType::EcP256, days(30)).unwrap();
        let text = x509_text(&client.cert_pem);
        assert!(text.contains("CA:FALSE"), "{text}");
        assert!(
            text.contains("X509v3 Key Usage: critical\n                Digital Signature, Key Agreement\n"),
            "{text}"
        );
        assert!(
            text.contains("X509v3 Extended Key Usage: \n                TLS Web Client Authentication\n"),
            "{text}"
        );
        assert!(text.contains("X509v3 Authority Key Identifier"), "{text}");
        assert!(text.contains("X509v3 Subject Key Identifier"), "{text}");
        assert!(text.contains("Subject: CN = atm-001\n"), "{text}");
        assert!(text.contains("Issuer: CN = fleet-ca\n"), "{text}");
        assert!(!text.contains("Alternative Name"), "{text}");

        let server = ca.issue_server("vpn-server", KeyType::Rsa2048, days(30)).unwrap();
        let text = x509_text(&server.cert_pem);
        assert!(text.contains("Digital Signature, Key Encipherment\n"), "{text}");
        assert!(text.contains("TLS Web Server Authentication\n"), "{text}");
        assert!(text.contains("Public-Key: (2048 bit)"), "{text}");
    }

    #[test]
    fn validity_and_serial_are_exactly_as_issued() {
        let ca = ca("fleet-ca", KeyType::EcP256);
        let v = days(30);
        let issued = ca.issue_client("atm-001", KeyType::EcP256, v).unwrap();
        assert_eq!(issued.not_after, v.not_after);
        let info = crate::cert_info(&issued.cert_pem).unwrap();
        assert_eq!(info.serial, issued.serial);
        assert_eq!(info.not_before, v.not_before);
        assert_eq!(info.not_after, v.not_after);
        assert_eq!(info.common_name, "atm-001");
        assert!(!info.is_ca);

        let ca_info = crate::cert_info(ca.cert_pem()).unwrap();
        assert!(ca_info.is_ca);
        assert_eq!(ca_info.serial, ca.serial());
        assert_eq!(ca_info.common_name, "fleet-ca");
        assert_eq!(ca_info.not_after, ca.not_after());

        // openssl agrees on the serial.
        let s = Scratch::new();
        let path = s.write("c.pem", &issued.cert_pem);
        let r = openssl(&["x509", "-in", path.to_str().unwrap(), "-noout", "-serial"]);
        let printed = r.text.trim().strip_prefix("serial=").unwrap().to_string();
        assert_eq!(printed.parse::<Serial>().unwrap(), issued.serial, "{printed}");
    }

    #[test]
    fn named_server_certificates_carry_exactly_their_names() {
        let ca = ca("fleet-ca", KeyType::EcP256);
        let ip: std::net::IpAddr = "10.3.2.1".parse().unwrap();
        let names = [AltName::Ip(ip), AltName::Dns("master.example".into())];
        let issued = ca.issue_server_named("cas-vpn-master", &names, KeyType::EcP256, days(30)).unwrap();
        let der = parse(&issued.cert_pem);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap().value;
        let got: Vec<String> = san.general_names.iter().map(|n| format!("{n:?}")).collect();
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got.iter().any(|n| n.contains("master.example")), "{got:?}");
        assert!(san.general_names.iter().any(|n| matches!(n, GeneralName::IPAddress(b) if *b == [10, 3, 2, 1])));
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);
        let r = openssl_verify(ca.cert_pem(), &issued.cert_pem, &["-purpose", "sslserver", "-verify_ip", "10.3.2.1"]);
        assert!(r.ok, "{}", r.text);
        let r = openssl_verify(ca.cert_pem(), &issued.cert_pem, &["-purpose", "sslserver", "-verify_ip", "10.3.2.2"]);
        assert!(!r.ok, "another address must not verify");
        // No names: refused (a named certificate without names would verify for nothing).
        assert!(ca.issue_server_named("cas-vpn-master", &[], KeyType::EcP256, days(30)).is_err());
    }

    #[test]
    fn serials_differ_over_1000_issuances_and_are_positive() {
        let ca = ca("fleet-ca", KeyType::EcP256);
        let mut seen = HashSet::new();
        for i in 0..1000 {
            let issued = ca.issue_client(&format!("atm-{i}"), KeyType::EcP256, days(30)).unwrap();
            // Read the serial back from the certificate: the DER INTEGER must be positive.
            let der = parse(&issued.cert_pem);
            let (_, cert) = X509Certificate::from_der(&der).unwrap();
            let raw = cert.raw_serial();
            assert_eq!(raw[0] & 0x80, 0, "negative serial");
            assert!(raw.len() <= 17);
            assert_eq!(Serial::from_der_integer(raw).unwrap(), issued.serial);
            assert!(seen.insert(issued.serial), "serial repeated");
        }
        assert_eq!(seen.len(), 1000);
    }

    #[test]
    fn sign_csr_takes_only_the_public_key() {
        let ca = ca("fleet-ca", KeyType::EcP256);
        let csr = VerifiedCsr::from_pem(&greedy_csr()).unwrap();
        let (pem, serial) = ca.sign_csr(&csr, "atm-7", days(30)).unwrap();
        let der = parse(&pem);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();

        assert_eq!(cert.public_key().raw, csr.public_key_der());
        assert_eq!(Serial::from_der_integer(cert.raw_serial()).unwrap(), serial);
        // Subject: one RDN, CN=atm-7.
        let rdns: Vec<_> = cert.subject().iter().collect();
        assert_eq!(rdns.len(), 1);
        assert_eq!(cert.subject().to_string(), "CN=atm-7");
        // No CA rights, no SANs, client usages only.
        assert!(!cert.is_ca());
        assert_eq!(cert.basic_constraints().unwrap().map(|b| b.value.ca), Some(false));
        assert!(cert.subject_alternative_name().unwrap().is_none());
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && ku.key_agreement());
        assert!(!ku.key_cert_sign() && !ku.crl_sign() && !ku.key_encipherment());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth && !eku.any && eku.other.is_empty());
        for ext in cert.extensions() {
            if let x509_parser::extensions::ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
                let names: Vec<&GeneralName> = san.general_names.iter().collect();
                panic!("unexpected SANs {names:?}");
            }
        }

        let text = x509_text(&pem);
        for absent in ["Evil", "evil.example", "admin", "CA:TRUE", "Server Authentication", "Certificate Sign"] {
            assert!(!text.contains(absent), "{absent} leaked into the certificate:\n{text}");
        }
        let r = openssl_verify(ca.cert_pem(), &pem, &["-purpose", "sslclient"]);
        assert!(r.ok, "{}", r.text);
    }

    #[test]
    fn sign_csr_key_usage_follows_the_requested_key() {
        use openssl::hash::MessageDigest;
        use openssl::pkey::PKey;
        let ca = ca("fleet-ca", KeyType::EcP256);
        let rsa = PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap();
        // A P-256 key in a CSR signed with SHA-384 (rcgen issue 448 produced broken certificates).
        let p256 = PKey::from_ec_key(
            openssl::ec::EcKey::generate(
                &openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap(),
            )
            .unwrap(),
        )
        .unwrap();
        let p384 = PKey::from_ec_key(
            openssl::ec::EcKey::generate(&openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::SECP384R1).unwrap())
                .unwrap(),
        )
        .unwrap();
        for (key, digest, ku) in [
            (&rsa, MessageDigest::sha256(), "Digital Signature, Key Encipherment\n"),
            (&p256, MessageDigest::sha384(), "Digital Signature, Key Agreement\n"),
            (&p384, MessageDigest::sha384(), "Digital Signature, Key Agreement\n"),
        ] {
            let mut req = openssl::x509::X509ReqBuilder::new().unwrap();
            req.set_pubkey(key).unwrap();
            req.sign(key, digest).unwrap();
            let pem = String::from_utf8(req.build().to_pem().unwrap()).unwrap();
            let csr = VerifiedCsr::from_pem(&pem).unwrap();
            let (cert, _) = ca.sign_csr(&csr, "atm-1", days(30)).unwrap();
            let text = x509_text(&cert);
            assert!(text.contains(ku), "{text}");
            let r = openssl_verify(ca.cert_pem(), &cert, &["-purpose", "sslclient"]);
            assert!(r.ok, "{}", r.text);
            // The certificate's key is the CSR's key, byte for byte.
            let x = openssl::x509::X509::from_pem(cert.as_bytes()).unwrap();
            assert_eq!(x.public_key().unwrap().public_key_to_der().unwrap(), key.public_key_to_der().unwrap());
        }
    }

    #[test]
    fn rsa_cas_and_certificates_work() {
        let rsa_ca = ca("rsa-ca", KeyType::Rsa2048);
        assert_eq!(rsa_ca.key_type(), KeyType::Rsa2048);
        assert!(x509_text(rsa_ca.cert_pem()).contains("sha256WithRSAEncryption"));
        for kt in KeyType::ALL {
            let c = rsa_ca.issue_client("atm-1", kt, days(30)).unwrap();
            assert_eq!(c.key.key_type(), kt);
            let r = openssl_verify(rsa_ca.cert_pem(), &c.cert_pem, &["-purpose", "sslclient"]);
            assert!(r.ok, "{kt}: {}", r.text);
            let s = rsa_ca.issue_server("srv", kt, days(30)).unwrap();
            let r = openssl_verify(rsa_ca.cert_pem(), &s.cert_pem, &["-purpose", "sslserver"]);
            assert!(r.ok, "{kt}: {}", r.text);
        }
        let ec_ca = ca("ec-ca", KeyType::EcP256);
        let c = ec_ca.issue_client("atm-1", KeyType::Rsa2048, days(30)).unwrap();
        let r = openssl_verify(ec_ca.cert_pem(), &c.cert_pem, &["-purpose", "sslclient"]);
        assert!(r.ok, "{}", r.text);
        let r = openssl_verify(rsa_ca.cert_pem(), &c.cert_pem, &[]);
        assert!(!r.ok, "{}", r.text);
    }

    #[test]
    fn issued_key_matches_its_certificate() {
        let ca = ca("fleet-ca", KeyType::EcP256);
        for kt in KeyType::ALL {
            let issued = ca.issue_client("atm-1", kt, days(30)).unwrap();
            let s = Scratch::new();
            let cert = s.write("c.pem", &issued.cert_pem);
            let key = s.write("k.pem", &issued.key.to_pem());
            // `openssl x509 -checkkey`-style check through the public keys.
            let a = openssl(&["x509", "-in", cert.to_str().unwrap(), "-noout", "-pubkey"]);
            let b = openssl(&["pkey", "-in", key.to_str().unwrap(), "-pubout"]);
            assert!(a.ok && b.ok);
            assert_eq!(a.text, b.text);
        }
    }

    #[test]
    fn encrypted_ca_key_round_trip() {
        let ca = ca("fleet-ca", KeyType::EcP256);
        let enc = ca.key_pem(Some("s3cret pass")).unwrap();
        assert!(enc.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"));

        let loaded = Ca::load(ca.cert_pem(), &enc, Some("s3cret pass")).unwrap();
        assert_eq!(loaded.serial(), ca.serial());
        assert_eq!(loaded.common_name(), "fleet-ca");
        assert_eq!(loaded.not_after(), ca.not_after());
        assert_eq!(loaded.key_type(), KeyType::EcP256);
        // The loaded CA signs certificates the original CA certificate accepts.
        let c = loaded.issue_client("atm-1", KeyType::EcP256, days(30)).unwrap();
        let r = openssl_verify(ca.cert_pem(), &c.cert_pem, &["-purpose", "sslclient"]);
        assert!(r.ok, "{}", r.text);
        // Same authority key identifier as certificates from the original.
        let c0 = ca.issue_client("atm-0", KeyType::EcP256, days(30)).unwrap();
        let aki = |pem: &str| {
            let text = x509_text(pem);
            let i = text.find("Authority Key Identifier").unwrap();
            text[i..].lines().nth(1).unwrap().trim().to_string()
        };
        assert_eq!(aki(&c.cert_pem), aki(&c0.cert_pem));

        assert!(matches!(Ca::load(ca.cert_pem(), &enc, Some("wrong")), Err(CaError::Key(KeyError::Decrypt))));
        assert!(matches!(Ca::load(ca.cert_pem(), &enc, None), Err(CaError::Key(KeyError::Encrypted))));

        // openssl reads the encrypted key with the passphrase.
        let s = Scratch::new();
        let k = s.write("k.pem", &enc);
        let r = openssl(&["pkey", "-in", k.to_str().unwrap(), "-passin", "pass:s3cret pass", "-noout"]);
        assert!(r.ok, "{}", r.text);

        // Unencrypted round trip.
        let plain = ca.key_pem(None).unwrap();
        assert!(plain.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(Ca::load(ca.cert_pem(), &plain, None).is_ok());
    }

    #[test]
    fn load_refuses_a_key_of_another_ca() {
        let a = ca("ca-a", KeyType::EcP256);
        let b = ca("ca-b", KeyType::EcP256);
        let r = Ca::load(a.cert_pem(), &b.key_pem(None).unwrap(), None);
        assert!(matches!(r, Err(CaError::KeyMismatch)), "{r:?}");
        let rsa = ca("ca-r", KeyType::Rsa2048);
        let r = Ca::load(a.cert_pem(), &rsa.key_pem(None).unwrap(), None);
        assert!(matches!(r, Err(CaError::KeyMismatch)), "{r:?}");
    }

    #[test]
    fn load_refuses_non_ca_certificates() {
        let a = ca("ca-a", KeyType::EcP256);
        let leaf = a.issue_server("srv", KeyType::EcP256, days(30)).unwrap();
        let r = Ca::load(&leaf.cert_pem, &leaf.key.to_pem(), None);
        assert!(matches!(&r, Err(CaError::BadCaCert(m)) if m.contains("not a CA")), "{r:?}");
        assert!(matches!(Ca::load("garbage", "garbage", None), Err(CaError::BadCaCert(_))));
    }

    #[test]
    fn load_accepts_an_openssl_made_ca_and_refuses_names_it_cannot_reproduce() {
        let s = Scratch::new();
        let dir = s.path().to_str().unwrap().to_string();
        // OpenSSL's own default is a 159-bit serial, more than `Serial` holds (tested below), so give it
        // a 128-bit one as easy-rsa does.
        let make = |subj: &str, name: &str| {
            let serial = format!("0x{}", Serial::random().to_hex());
            let r = openssl(&[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{dir}/{name}.key"),
                "-out",
                &format!("{dir}/{name}.pem"),
                "-subj",
                subj,
                "-days",
                "30",
                "-set_serial",
                &serial,
            ]);
            assert!(r.ok, "{}", r.text);
            (
                std::fs::read_to_string(format!("{dir}/{name}.pem")).unwrap(),
                std::fs::read_to_string(format!("{dir}/{name}.key")).unwrap(),
            )
        };
        let (cert, key) = make("/C=CH/O=Example Org/CN=Legacy CA", "legacy");
        let loaded = Ca::load(&cert, &key, None).unwrap();
        assert_eq!(loaded.common_name(), "Legacy CA");
        let c = loaded.issue_client("atm-1", KeyType::EcP256, days(10)).unwrap();
        let r = openssl_verify(&cert, &c.cert_pem, &["-purpose", "sslclient"]);
        assert!(r.ok, "{}", r.text);

        // Two OUs: rcgen's name model keeps one attribute per type, so signing would change the issuer.
        let (cert, key) = make("/CN=Odd CA/OU=one/OU=two", "odd");
        let r = Ca::load(&cert, &key, None);
        assert!(matches!(&r, Err(CaError::BadCaCert(_))), "{r:?}");

        // OpenSSL's default 159-bit serial is refused with a clear message, not mangled.
        let r = openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{dir}/big.key"),
            "-out",
            &format!("{dir}/big.pem"),
            "-subj",
            "/CN=Big Serial CA",
            "-days",
            "30",
        ]);
        assert!(r.ok, "{}", r.text);
        let cert = std::fs::read_to_string(format!("{dir}/big.pem")).unwrap();
        let key = std::fs::read_to_string(format!("{dir}/big.key")).unwrap();
        let r = Ca::load(&cert, &key, None);
        assert!(matches!(&r, Err(CaError::BadCaCert(m)) if m.contains("128 bits")), "{r:?}");
        assert!(matches!(crate::cert_info(&cert), Err(crate::CertInfoError::Serial(crate::SerialError::TooLong))));
    }

    #[test]
    fn inputs_are_validated() {
        let ca = ca("fleet-ca", KeyType::EcP256);
        for bad in ["", "has space", "a\"b", "new\nline", "-x", "..", &"x".repeat(65)] {
            assert!(matches!(ca.issue_client(bad, KeyType::EcP256, days(1)), Err(CaError::InvalidName(_))));
            assert!(matches!(Ca::generate(bad, KeyType::EcP256, days(1)), Err(CaError::InvalidName(_))));
        }
        let csr = VerifiedCsr::from_pem(&greedy_csr()).unwrap();
        assert!(matches!(ca.sign_csr(&csr, "a b", days(1)), Err(CaError::InvalidName(_))));

        let v = days(10);
        let inverted = Validity { not_before: v.not_after, not_after: v.not_before };
        assert!(matches!(ca.issue_client("a", KeyType::EcP256, inverted), Err(CaError::InvalidValidity(_))));
        assert!(matches!(Ca::generate("a", KeyType::EcP256, inverted), Err(CaError::InvalidValidity(_))));
        let far = Validity { not_before: v.not_before, not_after: v.not_before + Duration::days(400) };
        assert!(matches!(ca.issue_server("a", KeyType::EcP256, far), Err(CaError::OutlivesCa { .. })));
        assert!(matches!(ca.sign_csr(&csr, "a", far), Err(CaError::OutlivesCa { .. })));
    }

    #[test]
    fn debug_output_has_no_key_material() {
        let ca = ca("fleet-ca", KeyType::EcP256);
        let issued = ca.issue_client("atm-1", KeyType::EcP256, days(1)).unwrap();
        let key_pem = ca.key_pem(None).unwrap();
        let key_b64: String = key_pem.lines().skip(1).take(2).collect();
        let issued_b64: String = issued.key.to_pem().lines().skip(1).take(2).collect();
        for dbg in [format!("{ca:?}"), format!("{issued:?}")] {
            assert!(!dbg.contains(&key_b64[..20]) && !dbg.contains(&issued_b64[..20]), "{dbg}");
            assert!(!dbg.contains("PRIVATE KEY"), "{dbg}");
        }
        assert!(format!("{ca:?}").contains("fleet-ca"));
    }

    #[test]
    fn pin_matches_openssl() {
        let ca = ca("fleet-ca", KeyType::EcP256);
        let server = ca.issue_server("srv", KeyType::Rsa2048, days(1)).unwrap();
        let pin = crate::spki_sha256_pin(&server.cert_pem).unwrap();
        let s = Scratch::new();
        let cert = s.write("c.pem", &server.cert_pem);
        let spki = s.path().join("spki.der");
        let r = openssl(&["x509", "-in", cert.to_str().unwrap(), "-noout", "-pubkey"]);
        let pubkey = s.write("pub.pem", &r.text);
        let r = openssl(&[
            "pkey",
            "-pubin",
            "-in",
            pubkey.to_str().unwrap(),
            "-outform",
            "DER",
            "-out",
            spki.to_str().unwrap(),
        ]);
        assert!(r.ok, "{}", r.text);
        let r = openssl(&["dgst", "-sha256", "-r", spki.to_str().unwrap()]);
        let hex = r.text.split_whitespace().next().unwrap();
        assert_eq!(pin, format!("sha256:{hex}"));
        assert_eq!(pin.len(), 7 + 64);
        // Same key, same pin; the CA has another.
        assert_ne!(crate::spki_sha256_pin(ca.cert_pem()).unwrap(), pin);
        assert!(crate::spki_sha256_pin("nope").is_err());
        assert!(crate::cert_info("nope").is_err());
    }
}
