//! Facts about a certificate for `status`, `doctor` and renewal windows.

use thiserror::Error;
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use crate::pem;
use crate::serial::Serial;

/// Largest certificate PEM accepted.
const MAX_CERT_PEM_LEN: usize = 64 * 1024;

/// Why a certificate could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CertInfoError {
    #[error("malformed certificate: {0}")]
    Malformed(String),
    #[error("unsupported serial number: {0}")]
    Serial(#[from] crate::serial::SerialError),
}

/// What callers need to know about a certificate without parsing X.509 themselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub serial: Serial,
    /// The first CN of the subject; empty when there is none.
    pub common_name: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// basicConstraints CA:TRUE.
    pub is_ca: bool,
}

/// Reads the first certificate in `cert_pem`.
pub fn cert_info(cert_pem: &str) -> Result<CertInfo, CertInfoError> {
    let der = decode_certificate(cert_pem).map_err(CertInfoError::Malformed)?;
    let (_, cert) = X509Certificate::from_der(&der).map_err(|e| CertInfoError::Malformed(e.to_string()))?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .map(|cn| {
            cn.as_str().map(str::to_string).map_err(|_| CertInfoError::Malformed("common name is not a string".into()))
        })
        .transpose()?
        .unwrap_or_default();
    Ok(CertInfo {
        serial: Serial::from_der_integer(cert.raw_serial())?,
        common_name,
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
        is_ca: cert.is_ca(),
    })
}

/// PEM to DER for one certificate, with the size cap; the error is a message for the caller's variant.
pub(crate) fn decode_certificate(cert_pem: &str) -> Result<Vec<u8>, String> {
    if cert_pem.len() > MAX_CERT_PEM_LEN {
        return Err(format!("{} bytes of PEM; at most {MAX_CERT_PEM_LEN} accepted", cert_pem.len()));
    }
    let block = pem::decode(cert_pem, &["CERTIFICATE"]).map_err(|e| e.to_string())?;
    Ok(block.der.to_vec())
}
