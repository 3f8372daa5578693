//! The PKI on disk under `<root>/pki` (0700, keys 0600): the two root CAs, the VPN server certificates, the gate's
//! TLS certificate, the tls-crypt-v2 server keys and the CRLs.
//!
//! CA keys are read here and nowhere else; they never leave `pki/` (invariant 6, ARCHITECTURE.md).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cas_pki::{AltName, Ca, KeyType, PrivateKey, Revoked, TlsCryptV2ServerKey, Validity};
use time::OffsetDateTime;

use crate::domain::Kind;
use crate::sys::fs::{FsError, ensure_dir, read_optional, write_atomic};

#[derive(Debug, thiserror::Error)]
pub enum PkiFilesError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("{path}: {why}")]
    Invalid { path: PathBuf, why: String },
    #[error("PKI not initialised: {path} is missing (run `cas-vpn init`)")]
    Missing { path: PathBuf },
    #[error("{0}")]
    Pki(String),
    #[error("new CRL for the {kind} CA failed its pre-flight check: {why}")]
    CrlCheck { kind: Kind, why: String },
    #[error("path cannot be written into an OpenVPN config: {0}")]
    Path(#[from] crate::domain::DomainError),
}

fn pki_err(e: impl std::fmt::Display) -> PkiFilesError {
    PkiFilesError::Pki(e.to_string())
}

/// Which server identity: the terminal VPN, the admin VPN, the gate or master (the gate's and master's certs hang
/// off the terminal CA: terminals verify master by that CA, and master's certificate names its addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerRole {
    TerminalVpn,
    AdminVpn,
    Gate,
    Master,
}

impl ServerRole {
    fn file_stem(self) -> &'static str {
        match self {
            ServerRole::TerminalVpn => "terminal-server",
            ServerRole::AdminVpn => "admin-server",
            ServerRole::Gate => "gate",
            ServerRole::Master => "master",
        }
    }
    /// The certificate CN; clients check it with `verify-x509-name … name`.
    pub fn common_name(self) -> &'static str {
        match self {
            ServerRole::TerminalVpn => "cas-vpn-terminal-server",
            ServerRole::AdminVpn => "cas-vpn-admin-server",
            ServerRole::Gate => "cas-vpn-gate",
            ServerRole::Master => "cas-vpn-master",
        }
    }
    pub fn ca(self) -> Kind {
        match self {
            ServerRole::AdminVpn => Kind::Admin,
            ServerRole::TerminalVpn | ServerRole::Gate | ServerRole::Master => Kind::Terminal,
        }
    }
}

/// Paths of everything in `pki/`.
#[derive(Debug, Clone)]
pub struct PkiDir {
    dir: PathBuf,
    vpn_dir: PathBuf,
    passphrase: Option<String>,
}

impl PkiDir {
    /// `passphrase`: when set, CA keys are stored as encrypted PKCS#8 and need it to be loaded.
    pub fn new(root: &Path, passphrase: Option<String>) -> PkiDir {
        PkiDir { dir: root.join("pki"), vpn_dir: root.join("vpn"), passphrase }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn ca_cert_path(&self, kind: Kind) -> PathBuf {
        self.dir.join(format!("{kind}-ca.crt"))
    }
    fn ca_key_path(&self, kind: Kind) -> PathBuf {
        self.dir.join(format!("{kind}-ca.key"))
    }
    pub fn server_cert_path(&self, role: ServerRole) -> PathBuf {
        self.dir.join(format!("{}.crt", role.file_stem()))
    }
    pub fn server_key_path(&self, role: ServerRole) -> PathBuf {
        self.dir.join(format!("{}.key", role.file_stem()))
    }
    pub fn tls_crypt_v2_path(&self, kind: Kind) -> PathBuf {
        self.dir.join(format!("tls-crypt-v2-{kind}.key"))
    }
    pub fn crl_path(&self, kind: Kind) -> PathBuf {
        self.dir.join(format!("crl-{kind}.pem"))
    }
    /// Server-keygen profiles waiting for delivery through the gate (they hold a private key).
    pub fn pending_dir(&self) -> PathBuf {
        self.dir.join("pending")
    }

    pub fn ensure_dirs(&self) -> Result<(), PkiFilesError> {
        ensure_dir(&self.dir, 0o700)?;
        ensure_dir(&self.pending_dir(), 0o700)?;
        ensure_dir(&self.vpn_dir, 0o755)?;
        Ok(())
    }

    pub fn has_ca(&self, kind: Kind) -> bool {
        self.ca_cert_path(kind).is_file() && self.ca_key_path(kind).is_file()
    }

    pub fn load_ca(&self, kind: Kind) -> Result<Ca, PkiFilesError> {
        let cert_path = self.ca_cert_path(kind);
        let key_path = self.ca_key_path(kind);
        let cert = read_optional(&cert_path)?.ok_or(PkiFilesError::Missing { path: cert_path.clone() })?;
        let key = read_optional(&key_path)?.ok_or(PkiFilesError::Missing { path: key_path.clone() })?;
        Ca::load(&cert, &key, self.passphrase.as_deref())
            .map_err(|e| PkiFilesError::Invalid { path: key_path, why: e.to_string() })
    }

    /// Makes a new root CA and writes it, key first (0600): a crash between the two writes leaves a key without a
    /// certificate, which `has_ca` treats as absent, so the next `init` starts that CA over.
    pub fn create_ca(&self, kind: Kind, key_type: KeyType, days: u32) -> Result<Ca, PkiFilesError> {
        let cn = match kind {
            Kind::Terminal => "cas-vpn-terminal-root-ca",
            Kind::Admin => "cas-vpn-admin-root-ca",
        };
        let ca = Ca::generate(cn, key_type, Validity::days_from_now(days)).map_err(pki_err)?;
        let key = ca.key_pem(self.passphrase.as_deref()).map_err(pki_err)?;
        write_atomic(&self.ca_key_path(kind), key.as_bytes(), 0o600)?;
        write_atomic(&self.ca_cert_path(kind), ca.cert_pem().as_bytes(), 0o644)?;
        Ok(ca)
    }

    pub fn has_server(&self, role: ServerRole) -> bool {
        self.server_cert_path(role).is_file() && self.server_key_path(role).is_file()
    }

    /// Issues and writes a server certificate; returns it so the caller can record its serial in the store.
    pub fn create_server(
        &self,
        ca: &Ca,
        role: ServerRole,
        key_type: KeyType,
        days: u32,
    ) -> Result<cas_pki::Issued, PkiFilesError> {
        let issued = ca.issue_server(role.common_name(), key_type, Validity::days_from_now(days)).map_err(pki_err)?;
        write_atomic(&self.server_key_path(role), issued.key.to_pem().as_bytes(), 0o600)?;
        write_atomic(&self.server_cert_path(role), issued.cert_pem.as_bytes(), 0o644)?;
        Ok(issued)
    }

    /// Issues and writes a server certificate that names `alt_names` (master: its address and host name).
    pub fn create_named_server(
        &self,
        ca: &Ca,
        role: ServerRole,
        alt_names: &[AltName],
        key_type: KeyType,
        days: u32,
    ) -> Result<cas_pki::Issued, PkiFilesError> {
        let issued = ca
            .issue_server_named(role.common_name(), alt_names, key_type, Validity::days_from_now(days))
            .map_err(pki_err)?;
        write_atomic(&self.server_key_path(role), issued.key.to_pem().as_bytes(), 0o600)?;
        write_atomic(&self.server_cert_path(role), issued.cert_pem.as_bytes(), 0o644)?;
        Ok(issued)
    }

    /// The subject alternative names of the server certificate of `role` (`None` when there is none), so that
    /// `init` remakes master's when its address or host name changed.
    pub fn server_cert_names(&self, role: ServerRole) -> Option<Vec<AltName>> {
        let pem = read_optional(&self.server_cert_path(role)).ok()??;
        let cert = openssl::x509::X509::from_pem(pem.as_bytes()).ok()?;
        let Some(sans) = cert.subject_alt_names() else { return Some(Vec::new()) };
        Some(
            sans.iter()
                .filter_map(|n| {
                    if let Some(ip) = n.ipaddress() {
                        match ip.len() {
                            4 => <[u8; 4]>::try_from(ip).ok().map(|o| AltName::Ip(o.into())),
                            16 => <[u8; 16]>::try_from(ip).ok().map(|o| AltName::Ip(o.into())),
                            _ => None,
                        }
                    } else {
                        n.dnsname().map(|d| AltName::Dns(d.to_owned()))
                    }
                })
                .collect(),
        )
    }

    /// master's TLS certificate and key (PEM), and the terminal CA it verifies clients against.
    pub fn read_master_tls(&self) -> Result<(String, zeroize::Zeroizing<String>, String), PkiFilesError> {
        let cert = self.read_server_cert(ServerRole::Master)?;
        let k = self.server_key_path(ServerRole::Master);
        let key = read_optional(&k)?.ok_or(PkiFilesError::Missing { path: k })?;
        Ok((cert, zeroize::Zeroizing::new(key), self.read_ca_cert(Kind::Terminal)?))
    }

    pub fn read_server_cert(&self, role: ServerRole) -> Result<String, PkiFilesError> {
        let p = self.server_cert_path(role);
        read_optional(&p)?.ok_or(PkiFilesError::Missing { path: p })
    }

    /// The SHA-256 pin of the gate's TLS public key, carried in every pairing token.
    pub fn gate_pin(&self) -> Result<[u8; 32], PkiFilesError> {
        let pem = self.read_server_cert(ServerRole::Gate)?;
        let pin = cas_pki::spki_sha256_pin(&pem).map_err(pki_err)?;
        let bytes = hex::decode(pin.trim_start_matches("sha256:")).map_err(pki_err)?;
        bytes.try_into().map_err(|_| PkiFilesError::Pki("gate pin is not 32 bytes".into()))
    }

    pub fn read_server_key(&self, role: ServerRole) -> Result<PrivateKey, PkiFilesError> {
        let p = self.server_key_path(role);
        let pem = read_optional(&p)?.ok_or(PkiFilesError::Missing { path: p.clone() })?;
        PrivateKey::from_pem(&pem).map_err(|e| PkiFilesError::Invalid { path: p, why: e.to_string() })
    }

    pub fn has_tls_crypt_v2(&self, kind: Kind) -> bool {
        self.tls_crypt_v2_path(kind).is_file()
    }

    pub fn create_tls_crypt_v2(&self, kind: Kind) -> Result<(), PkiFilesError> {
        let key = TlsCryptV2ServerKey::generate();
        write_atomic(&self.tls_crypt_v2_path(kind), key.to_pem().as_bytes(), 0o600)?;
        Ok(())
    }

    pub fn load_tls_crypt_v2(&self, kind: Kind) -> Result<TlsCryptV2ServerKey, PkiFilesError> {
        let p = self.tls_crypt_v2_path(kind);
        let pem = read_optional(&p)?.ok_or(PkiFilesError::Missing { path: p.clone() })?;
        TlsCryptV2ServerKey::from_pem(&pem).map_err(|e| PkiFilesError::Invalid { path: p, why: e.to_string() })
    }

    /// The admin web UI's self-signed TLS certificate and key (`pki/web-ui.crt`, `pki/web-ui.key`).
    pub fn web_cert_path(&self) -> PathBuf {
        self.dir.join("web-ui.crt")
    }
    pub fn web_key_path(&self) -> PathBuf {
        self.dir.join("web-ui.key")
    }

    /// The web UI's certificate, if it exists and names every one of `addresses`.
    pub fn web_cert_covering(&self, addresses: &[std::net::IpAddr]) -> Option<String> {
        let pem = read_optional(&self.web_cert_path()).ok()??;
        if !self.web_key_path().is_file() {
            return None;
        }
        let cert = openssl::x509::X509::from_pem(pem.as_bytes()).ok()?;
        let sans: Vec<Vec<u8>> =
            cert.subject_alt_names()?.iter().filter_map(|n| n.ipaddress().map(<[u8]>::to_vec)).collect();
        let octets = |a: &std::net::IpAddr| match a {
            std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
            std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        let unexpired = cert.not_after() > openssl::asn1::Asn1Time::days_from_now(30).ok()?;
        (unexpired && addresses.iter().all(|a| sans.contains(&octets(a)))).then_some(pem)
    }

    /// Makes the web UI's certificate for `addresses` (key first, 0600).
    pub fn create_web_cert(
        &self,
        addresses: &[std::net::IpAddr],
        key_type: KeyType,
        days: u32,
    ) -> Result<String, PkiFilesError> {
        let issued = cas_pki::self_signed_web("cas-vpn-admin-ui", addresses, key_type, Validity::days_from_now(days))
            .map_err(pki_err)?;
        write_atomic(&self.web_key_path(), issued.key.to_pem().as_bytes(), 0o600)?;
        write_atomic(&self.web_cert_path(), issued.cert_pem.as_bytes(), 0o644)?;
        Ok(issued.cert_pem)
    }

    /// The web UI's certificate and key (PEM).
    pub fn read_web_tls(&self) -> Result<(String, zeroize::Zeroizing<String>), PkiFilesError> {
        let (c, k) = (self.web_cert_path(), self.web_key_path());
        let cert = read_optional(&c)?.ok_or(PkiFilesError::Missing { path: c })?;
        let key = read_optional(&k)?.ok_or(PkiFilesError::Missing { path: k })?;
        Ok((cert, zeroize::Zeroizing::new(key)))
    }

    /// SHA-256 fingerprint of the web UI's certificate, as a browser shows it; `None` before `init` made it.
    pub fn web_fingerprint(&self) -> Option<String> {
        let pem = read_optional(&self.web_cert_path()).ok()??;
        cas_pki::sha256_fingerprint(&pem).ok()
    }

    pub fn read_ca_cert(&self, kind: Kind) -> Result<String, PkiFilesError> {
        let p = self.ca_cert_path(kind);
        read_optional(&p)?.ok_or(PkiFilesError::Missing { path: p })
    }

    /// Signs a CRL, checks it the way OpenVPN will (`preflight_crl`), then swaps it in atomically in `pki/`, as
    /// PEM (what OpenVPN's `crl-verify` reads). An unparseable or expired CRL locks out every client, so a CRL
    /// that fails the check is never written. Returns the PEM written.
    pub fn publish_crl(
        &self,
        ca: &Ca,
        kind: Kind,
        revoked: &[Revoked],
        crl_number: u64,
        this_update: OffsetDateTime,
        next_update: OffsetDateTime,
    ) -> Result<(String, CrlSteps), PkiFilesError> {
        let t = Instant::now();
        let der = ca.crl_der(revoked, crl_number, this_update, next_update).map_err(pki_err)?;
        let sign = t.elapsed();
        let t = Instant::now();
        preflight_crl(ca.cert_pem(), &der).map_err(|why| PkiFilesError::CrlCheck { kind, why })?;
        let check = t.elapsed();
        let t = Instant::now();
        let pem = cas_pki::crl_der_to_pem(&der);
        drop(der);
        // Public data, and openvpn (its own user) must read it.
        write_changed(&self.crl_path(kind), pem.as_bytes(), 0o644)?;
        Ok((pem, CrlSteps { sign, check, write: t.elapsed() }))
    }

    /// Publishes a CRL another node made (read from the store), after the same check as our own. A CRL that
    /// fails it is never written. What is written is exactly the CRL checked (its one PEM block, re-encoded):
    /// nothing else that the stored text may hold reaches OpenVPN, which would read every block of the file.
    pub fn install_crl(&self, kind: Kind, pem: &str) -> Result<(), PkiFilesError> {
        let ca_cert = self.read_ca_cert(kind)?;
        let check = |why| PkiFilesError::CrlCheck { kind, why };
        let der = cas_pki::crl_pem_to_der(pem).map_err(|e| check(e.to_string()))?;
        preflight_crl(&ca_cert, &der).map_err(check)?;
        write_changed(&self.crl_path(kind), cas_pki::crl_der_to_pem(&der).as_bytes(), 0o644)?;
        Ok(())
    }

    /// The CRL number of the CRL on disk (0 when there is none or it does not parse).
    pub fn crl_number(&self, kind: Kind) -> Result<u64, PkiFilesError> {
        let Some(pem) = self.read_crl(kind)? else { return Ok(0) };
        // The header only: the signer asks every few seconds, and a CRL may list 100,000 certificates.
        let Ok(der) = cas_pki::crl_pem_to_der(&pem) else { return Ok(0) };
        Ok(cas_pki::crl_number(&der).unwrap_or(0))
    }

    pub fn read_crl(&self, kind: Kind) -> Result<Option<String>, PkiFilesError> {
        Ok(read_optional(&self.crl_path(kind))?)
    }
}

/// How long each step of `publish_crl` took.
#[derive(Debug, Clone, Copy)]
pub struct CrlSteps {
    pub sign: Duration,
    pub check: Duration,
    pub write: Duration,
}

/// Writes atomically and makes sure OpenVPN notices: it re-reads a CRL only when its size or mtime (1 s
/// resolution) changed, so a same-size file written within the same second gets its mtime pushed forward.
fn write_changed(path: &Path, data: &[u8], mode: u32) -> Result<(), PkiFilesError> {
    let before = fs::metadata(path).ok().map(|m| (m.size(), m.mtime()));
    write_atomic(path, data, mode)?;
    if let (Some((size, mtime)), Ok(after)) = (before, fs::metadata(path))
        && after.size() == size
        && after.mtime() <= mtime
    {
        let t = nix::sys::time::TimeSpec::new(mtime + 1, 0);
        nix::sys::stat::utimensat(nix::fcntl::AT_FDCWD, path, &t, &t, nix::sys::stat::UtimensatFlags::FollowSymlink)
            .map_err(|e| FsError::Write { path: path.to_owned(), source: e.into() })?;
    }
    Ok(())
}

/// What OpenVPN will do with the CRL `der`, done first: its structure, issuer and signature by the CA
/// (`cas_pki::check_crl`: the signature over exactly these bytes), thisUpdate not in the future, nextUpdate in
/// the future.
pub fn preflight_crl(ca_cert_pem: &str, der: &[u8]) -> Result<(), String> {
    let crl = cas_pki::check_crl(ca_cert_pem, der)?;
    let now = OffsetDateTime::now_utc();
    if crl.this_update > now {
        return Err("thisUpdate is in the future".into());
    }
    if crl.next_update <= now {
        return Err("nextUpdate has passed".into());
    }
    Ok(())
}
