//! The admin web UI's TLS certificate: self-signed, for the UI's IP addresses only.
//!
//! Deliberately not issued by the terminal or admin CA: an administrator who trusts it in a browser trusts this one
//! certificate, never a CA that could vouch for any site. The operator compares its SHA-256 fingerprint (printed
//! by `init` and `status`) with what the browser shows the first time.

use std::net::IpAddr;

use rcgen::{CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose, SanType};

use crate::ca::{CaError, Issued};
use crate::key::{KeyType, PrivateKey};
use crate::serial::Serial;
use crate::validity::Validity;

/// A self-signed server certificate (EKU serverAuth, `CA:FALSE`) for `addresses`, with a new key.
pub fn self_signed_web(
    common_name: &str,
    addresses: &[IpAddr],
    kt: KeyType,
    validity: Validity,
) -> Result<Issued, CaError> {
    crate::name::validate_common_name(common_name)?;
    if addresses.is_empty() {
        return Err(CaError::Sign("a web certificate needs at least one address".into()));
    }
    let key = PrivateKey::generate(kt)?;
    let serial = Serial::random();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.subject_alt_names = addresses.iter().map(|a| SanType::IpAddress(*a)).collect();
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(serial.as_bytes()));
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        if kt.is_rsa() { KeyUsagePurpose::KeyEncipherment } else { KeyUsagePurpose::KeyAgreement },
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.self_signed(&key).map_err(|e| CaError::Sign(e.to_string()))?;
    Ok(Issued { cert_pem: cert.pem(), key, serial, not_after: validity.not_after })
}

/// The SHA-256 fingerprint of a certificate's DER, as browsers show it (`AB:CD:…`).
pub fn sha256_fingerprint(cert_pem: &str) -> Result<String, CaError> {
    use sha2::{Digest, Sha256};
    let der = crate::pem::decode(cert_pem, &["CERTIFICATE"]).map_err(|e| CaError::BadCaCert(e.to_string()))?.der;
    Ok(Sha256::digest(&der).iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_for_its_addresses_only() {
        let ip: IpAddr = "203.0.113.2".parse().unwrap();
        let issued = self_signed_web("cas-vpn-admin-ui", &[ip], KeyType::EcP256, Validity::days_from_now(30)).unwrap();
        let text = crate::testutil::x509_text(&issued.cert_pem);
        assert!(text.contains("IP Address:203.0.113.2"), "{text}");
        assert!(text.contains("CA:FALSE"), "{text}");
        assert!(text.contains("TLS Web Server Authentication"), "{text}");
        // Self-signed: it verifies against itself and nothing else.
        let run = crate::testutil::openssl_verify(&issued.cert_pem, &issued.cert_pem, &["-partial_chain"]);
        assert!(run.ok, "{}", run.text);
        let fp = sha256_fingerprint(&issued.cert_pem).unwrap();
        assert_eq!(fp.len(), 32 * 3 - 1);
        assert!(self_signed_web("cas-vpn-admin-ui", &[], KeyType::EcP256, Validity::days_from_now(1)).is_err());
    }
}
