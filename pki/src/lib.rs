//! `cas-pki`: the small PKI behind cas-vpn.
//!
//! Pure functions over PEM strings and bytes: CAs, server and client certificates, CSR signing, CRLs,
//! public-key pins, and OpenVPN tls-crypt-v2 keys. This crate knows nothing of async runtimes, databases,
//! HTTP or where files live; callers store what it returns.
//!
//! Invariants kept here:
//! * key material never appears in `Debug` output or error messages;
//! * every certificate has an explicit validity, a random positive serial and a validated common name;
//! * a CSR contributes only its public key, after its signature verified;
//! * `unwrap` of a tls-crypt-v2 wrapped key never panics, whatever the input.

mod ca;
mod crl;
mod crl_check;
mod csr;
mod info;
mod key;
mod name;
mod pem;
mod pin;
mod serial;
pub mod tls_crypt_v2;
mod validity;
mod web;

#[cfg(test)]
mod openvpn_interop;
#[cfg(test)]
mod testutil;

pub use ca::{AltName, Ca, CaError, Issued};
pub use crl::{CrlError, RevocationReason, Revoked, crl_der_to_pem, crl_pem_to_der};
pub use crl_check::{CrlSummary, check_crl, crl_number};
pub use csr::{CsrError, MAX_CSR_PEM_LEN, VerifiedCsr};
pub use info::{CertInfo, CertInfoError, cert_info};
pub use key::{KeyError, KeyType, PrivateKey};
pub use name::{MAX_COMMON_NAME_LEN, NameError, validate_common_name};
pub use pin::{PinError, spki_sha256_pin};
pub use serial::{Serial, SerialError};
pub use tls_crypt_v2::{ClientMetadata, TlsCryptError, TlsCryptV2ClientKey, TlsCryptV2ServerKey, parse_client_key_pem};
pub use validity::{CLOCK_SKEW_ALLOWANCE, Validity};
pub use web::{self_signed_web, sha256_fingerprint};
