//! Public-key pins: `sha256:<hex>` over a certificate's SubjectPublicKeyInfo.
//!
//! Pinning the key rather than the whole certificate keeps a pin valid across re-issuance with the same key.

use sha2::{Digest, Sha256};
use thiserror::Error;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use crate::info::decode_certificate;

/// Why a pin could not be computed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PinError {
    #[error("malformed certificate: {0}")]
    Malformed(String),
}

/// `"sha256:"` followed by the lowercase hex SHA-256 of the certificate's SubjectPublicKeyInfo DER.
pub fn spki_sha256_pin(cert_pem: &str) -> Result<String, PinError> {
    let der = decode_certificate(cert_pem).map_err(PinError::Malformed)?;
    let (_, cert) = X509Certificate::from_der(&der).map_err(|e| PinError::Malformed(e.to_string()))?;
    Ok(format!("sha256:{}", hex::encode(Sha256::digest(cert.public_key().raw))))
}
