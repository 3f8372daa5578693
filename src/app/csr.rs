//! What a terminal may ask for in its CSR. `cas_pki::VerifiedCsr` proves possession of the key and checks its
//! strength; the certificate is then built from the key alone. A request that *asks* for more than a client
//! certificate of this terminal (CA rights, key-signing usages, another name) is refused outright rather than
//! silently trimmed: such a request is either a bug in the integrator's firmware or an attack, and either way
//! the operator should hear about it.

use sha2::{Digest, Sha256};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use crate::http::ApiError;
use cas_pki::VerifiedCsr;

/// A CSR that verified and asks for nothing it may not have. `common_name` is the CN it asked for, if any.
#[derive(Debug)]
pub struct CheckedCsr {
    pub csr: VerifiedCsr,
    pub common_name: Option<String>,
}

impl CheckedCsr {
    pub fn public_key_sha256_hex(&self) -> String {
        hex::encode(self.csr.public_key_sha256())
    }
}

/// Verifies `pem` (signature, key strength) and checks what it asks for. With `name`, the CN and any DNS SAN must
/// be that name; without (approval flow, where the name is chosen later), SANs must repeat the CN.
pub fn check(pem: &str, name: Option<&str>) -> Result<CheckedCsr, ApiError> {
    let csr = VerifiedCsr::from_pem(pem)?;
    let bad = |m: &str| ApiError::InvalidCsr(m.to_owned());
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.trim_start().as_bytes()).map_err(|_| bad("not PEM"))?;
    let (_, req) = X509CertificationRequest::from_der(&block.contents).map_err(|_| bad("not a PKCS#10 request"))?;
    let info = &req.certification_request_info;
    // Make sure this is the very request that verified (the two PEM readers could in theory pick different blocks).
    if Sha256::digest(info.subject_pki.raw).as_slice() != csr.public_key_sha256() {
        return Err(bad("ambiguous PEM input"));
    }

    let mut cns = info.subject.iter_common_name();
    let common_name = match cns.next() {
        None => None,
        Some(cn) => Some(cn.as_str().map_err(|_| bad("the common name is not a string"))?.to_owned()),
    };
    if cns.next().is_some() {
        return Err(ApiError::CsrNameMismatch("several common names".into()));
    }
    if let (Some(cn), Some(name)) = (&common_name, name)
        && cn != name
    {
        return Err(ApiError::CsrNameMismatch(format!("CN {}", crate::domain::shown(cn))));
    }
    let allowed = name.map(str::to_owned).or_else(|| common_name.clone());

    if let Some(exts) = req.requested_extensions() {
        for ext in exts {
            match ext {
                ParsedExtension::BasicConstraints(bc) if bc.ca => return Err(ApiError::CsrCaRequested),
                ParsedExtension::KeyUsage(ku) if ku.key_cert_sign() || ku.crl_sign() => {
                    return Err(ApiError::CsrCaRequested);
                }
                ParsedExtension::NameConstraints(_) => return Err(ApiError::CsrCaRequested),
                ParsedExtension::SubjectAlternativeName(san) => {
                    for n in &san.general_names {
                        let ok = matches!((n, &allowed), (GeneralName::DNSName(d), Some(a)) if d == a);
                        if !ok {
                            return Err(ApiError::CsrNameMismatch(format!(
                                "subject alternative name {}",
                                crate::domain::shown(&n.to_string())
                            )));
                        }
                    }
                }
                _ => {}
            }
        }
    }
    Ok(CheckedCsr { csr, common_name })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType,
    };

    fn csr(f: impl FnOnce(&mut CertificateParams)) -> String {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        f(&mut p);
        p.serialize_request(&key).unwrap().pem().unwrap()
    }

    #[test]
    fn plain_requests_pass() {
        let c = check(&csr(|_| {}), Some("atm-1")).unwrap();
        assert_eq!(c.common_name, None);
        let c = check(&csr(|p| p.distinguished_name.push(DnType::CommonName, "atm-1")), Some("atm-1")).unwrap();
        assert_eq!(c.common_name.as_deref(), Some("atm-1"));
        let pem = csr(|p| {
            p.distinguished_name.push(DnType::CommonName, "atm-1");
            p.subject_alt_names = vec![SanType::DnsName("atm-1".try_into().unwrap())];
        });
        check(&pem, None).unwrap();
        check(&pem, Some("atm-1")).unwrap();
        // Usages a client certificate has anyway are fine to ask for.
        check(&csr(|p| p.key_usages = vec![KeyUsagePurpose::DigitalSignature]), Some("atm-1")).unwrap();
    }

    #[test]
    fn ca_rights_are_refused() {
        for pem in [
            csr(|p| p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained)),
            csr(|p| p.key_usages = vec![KeyUsagePurpose::KeyCertSign]),
            csr(|p| p.key_usages = vec![KeyUsagePurpose::CrlSign]),
        ] {
            assert!(matches!(check(&pem, Some("atm-1")), Err(ApiError::CsrCaRequested)));
            assert!(matches!(check(&pem, None), Err(ApiError::CsrCaRequested)));
        }
    }

    #[test]
    fn other_names_are_refused() {
        let pem = csr(|p| p.distinguished_name.push(DnType::CommonName, "atm-2"));
        assert!(matches!(check(&pem, Some("atm-1")), Err(ApiError::CsrNameMismatch(_))));
        let pem = csr(|p| p.subject_alt_names = vec![SanType::DnsName("evil.example".try_into().unwrap())]);
        assert!(matches!(check(&pem, Some("atm-1")), Err(ApiError::CsrNameMismatch(_))));
        assert!(matches!(check(&pem, None), Err(ApiError::CsrNameMismatch(_))));
        let pem = csr(|p| p.subject_alt_names = vec![SanType::IpAddress("10.0.0.1".parse().unwrap())]);
        assert!(matches!(check(&pem, Some("atm-1")), Err(ApiError::CsrNameMismatch(_))));
    }
}
