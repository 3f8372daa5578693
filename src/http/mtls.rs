//! Mutual TLS between master and the terminals, both sides.
//!
//! Server (master): a TLS 1.2+ acceptor with master's certificate that *requires* a client certificate verified
//! against the terminal CA and nothing else (the admin CA, the system store and self-signed certificates are not
//! trusted; OpenSSL's default purpose check on a server wants EKU clientAuth, which terminal certificates carry).
//! The handshake only proves the client holds a key the terminal CA once certified: whose it is and whether it
//! still counts is the store's answer, which master asks with the certificate's serial ([`serial_hex`]). The
//! accept loop (`server`) hands the verified certificate to handlers as [`PeerCertificate`].
//!
//! Client (the agent): [`ClientTls`] presents the terminal's certificate and key and verifies master's certificate
//! against the terminal CA it got at pairing, and master's name (address or host name, from `master.json`)
//! against the certificate's subject alternative names, so that another certificate of the same CA (a terminal's,
//! the VPN server's) cannot stand in for master.

use std::sync::Arc;

use openssl::pkey::PKey;
use openssl::ssl::{Ssl, SslAcceptor, SslContext, SslMethod, SslVerifyMode, SslVersion};
use openssl::x509::X509;
use openssl::x509::store::X509StoreBuilder;

/// The DER of the client certificate the handshake verified, in every request of that connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertificate(pub Arc<Vec<u8>>);

#[derive(Debug, thiserror::Error)]
pub enum MtlsError {
    #[error("TLS setup failed: {0}")]
    Tls(#[from] openssl::error::ErrorStack),
    #[error("{0}")]
    Invalid(String),
}

/// One CA certificate as the only trust anchor of a verifying context.
fn only_ca(ca_pem: &str) -> Result<(X509, openssl::x509::store::X509Store), MtlsError> {
    let ca = X509::from_pem(ca_pem.as_bytes())?;
    let mut store = X509StoreBuilder::new()?;
    store.add_cert(ca.clone())?;
    Ok((ca, store.build()))
}

/// master's acceptor: its certificate and key, client certificates required and verified against `ca_pem` only.
pub fn server_acceptor(cert_pem: &str, key_pem: &str, ca_pem: &str) -> Result<SslAcceptor, MtlsError> {
    Ok(requiring_ca(cert_pem, key_pem, ca_pem)?.build())
}

/// The agent's status endpoint (probed by master): its terminal certificate and key, client certificates required
/// and verified against the terminal CA only. The purpose check is off: the certificate master presents is its
/// server certificate (EKU serverAuth); whose it is, is checked by name afterwards ([`names_ip`]).
pub fn peer_acceptor(cert_pem: &str, key_pem: &str, ca_pem: &str) -> Result<SslAcceptor, MtlsError> {
    let mut b = requiring_ca(cert_pem, key_pem, ca_pem)?;
    b.verify_param_mut().set_purpose(openssl::x509::X509PurposeId::ANY)?;
    Ok(b.build())
}

/// An acceptor presenting `cert_pem`/`key_pem` that requires a client certificate issued by `ca_pem`, and no other.
fn requiring_ca(cert_pem: &str, key_pem: &str, ca_pem: &str) -> Result<openssl::ssl::SslAcceptorBuilder, MtlsError> {
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())?;
    b.set_min_proto_version(Some(SslVersion::TLS1_2))?;
    let (cert, key) = (X509::from_pem(cert_pem.as_bytes())?, PKey::private_key_from_pem(key_pem.as_bytes())?);
    b.set_certificate(&cert)?;
    b.set_private_key(&key)?;
    b.check_private_key()?;
    let (ca, store) = only_ca(ca_pem)?;
    b.set_verify_cert_store(store)?;
    // Tells clients which CA to pick a certificate for.
    let mut names = openssl::stack::Stack::new()?;
    names.push(ca.subject_name().to_owned()?)?;
    b.set_client_ca_list(names);
    b.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
    // The terminal CA is a root issuing leaves only: a chain is the leaf and the root.
    b.set_verify_depth(1);
    Ok(b)
}

/// Whether the certificate (DER) names `name` (an address or a DNS name) among its subject alternative names:
/// master's certificate names `master_bind_ip` and `batm.master.hostname`; no terminal's or VPN server's does.
pub fn names_ip(der: &[u8], name: &str) -> bool {
    let Ok(cert) = X509::from_der(der) else { return false };
    let Some(sans) = cert.subject_alt_names() else { return false };
    let ip: Option<std::net::IpAddr> = name.parse().ok();
    sans.iter().any(|n| match (ip, n.ipaddress(), n.dnsname()) {
        (Some(ip), Some(bytes), _) => match ip {
            std::net::IpAddr::V4(v4) => bytes == v4.octets(),
            std::net::IpAddr::V6(v6) => bytes == v6.octets(),
        },
        (None, _, Some(dns)) => dns.eq_ignore_ascii_case(name),
        _ => false,
    })
}

/// A certificate's serial in the store's form: 32 lowercase hex digits.
pub fn serial_hex(der: &[u8]) -> Option<String> {
    let cert = X509::from_der(der).ok()?;
    let hex = cert.serial_number().to_bn().ok()?.to_hex_str().ok()?.to_ascii_lowercase();
    (hex.len() <= 32 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| format!("{hex:0>32}"))
}

/// A terminal's side of the mutual TLS with master: its certificate and key, the terminal CA, and the name master
/// must carry.
#[derive(Clone)]
pub struct ClientTls {
    ctx: Arc<SslContext>,
    verify_name: String,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls").field("verify_name", &self.verify_name).finish_non_exhaustive()
    }
}

impl PartialEq for ClientTls {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.ctx, &other.ctx) && self.verify_name == other.verify_name
    }
}

impl Eq for ClientTls {}

impl ClientTls {
    /// `verify_name`: the address or host name master's certificate must name (what `master.json` says), which
    /// may differ from where the connection goes (`agent run --master`).
    pub fn new(ca_pem: &str, cert_pem: &str, key_pem: &str, verify_name: &str) -> Result<ClientTls, MtlsError> {
        ClientTls::build(ca_pem, cert_pem, key_pem, verify_name, false)
    }

    /// master probing a terminal's agent: master's certificate and key presented, the agent's terminal
    /// certificate verified against the terminal CA and its name (`verify_name`, the terminal's, which a terminal
    /// certificate carries as its common name). The purpose check is off because that certificate is a client
    /// certificate (EKU clientAuth) serving here.
    pub fn for_probe(ca_pem: &str, cert_pem: &str, key_pem: &str, terminal: &str) -> Result<ClientTls, MtlsError> {
        ClientTls::build(ca_pem, cert_pem, key_pem, terminal, true)
    }

    fn build(
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &str,
        verify_name: &str,
        any_purpose: bool,
    ) -> Result<ClientTls, MtlsError> {
        if verify_name.is_empty() {
            return Err(MtlsError::Invalid("master's name is empty".into()));
        }
        let mut b = SslContext::builder(SslMethod::tls_client())?;
        b.set_min_proto_version(Some(SslVersion::TLS1_2))?;
        let (_, store) = only_ca(ca_pem)?;
        b.set_verify_cert_store(store)?;
        b.set_verify(SslVerifyMode::PEER);
        b.set_verify_depth(1);
        if any_purpose {
            b.verify_param_mut().set_purpose(openssl::x509::X509PurposeId::ANY)?;
        }
        let (cert, key) = (X509::from_pem(cert_pem.as_bytes())?, PKey::private_key_from_pem(key_pem.as_bytes())?);
        b.set_certificate(&cert)?;
        b.set_private_key(&key)?;
        b.check_private_key()
            .map_err(|_| MtlsError::Invalid("the terminal's key does not belong to its certificate".into()))?;
        Ok(ClientTls { ctx: Arc::new(b.build()), verify_name: verify_name.to_owned() })
    }

    /// A connection's TLS state, checking master's certificate against the CA and its name.
    pub fn ssl(&self) -> Result<Ssl, MtlsError> {
        let mut ssl = Ssl::new(&self.ctx)?;
        match self.verify_name.parse::<std::net::IpAddr>() {
            Ok(ip) => ssl.param_mut().set_ip(ip)?,
            Err(_) => {
                ssl.set_hostname(&self.verify_name)?;
                ssl.param_mut().set_host(&self.verify_name)?;
            }
        }
        Ok(ssl)
    }

    pub fn verify_name(&self) -> &str {
        &self.verify_name
    }
}
