//! What the operator can do, as functions that return reports: `init`, terminals, admin credentials,
//! revocation, CRLs, status. They never print (`cli.rs` does); the web UI and the gate call the same functions.

pub mod admin;
pub mod crl;
pub mod doctor;
pub mod init;
pub mod instances;
pub mod pairing;
pub mod profile;
pub mod revoke;
pub mod serve;
pub mod status;
pub mod terminal;

use std::path::{Path, PathBuf};

use crate::config::{Config, ConfigError, VpnConfig};
use crate::db::{DbError, Store};
use crate::domain::DomainError;
use crate::pkifiles::{PkiDir, PkiFilesError};

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Pki(#[from] PkiFilesError),
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error(transparent)]
    Fs(#[from] crate::sys::fs::FsError),
    #[error(transparent)]
    Render(#[from] crate::ovpn::RenderError),
    #[error("{0}")]
    Pem(#[from] crate::ovpn::PemError),
    #[error("certificate authority: {0}")]
    Ca(String),
    #[error("{path}:{line}: {why}")]
    Input { path: PathBuf, line: usize, why: String },
    #[error("no VPN is configured (Scenario B: {why}); {what} needs the VPN")]
    NoVpn { why: &'static str, what: &'static str },
    #[error(
        "no public address: set public_ip in {path} or public_hostname in the VPN config (or run `cas-vpn init --public-ip IP`)"
    )]
    NoPublicAddress { path: PathBuf },
    #[error("{root} is not initialised (no config/network): run `cas-vpn init` first, or pass --root")]
    NotInitialised { root: PathBuf },
    #[error("{0}")]
    Other(String),
}

/// Where the store lives: PostgreSQL when a URL is given, else SQLite under `<root>/db/`.
pub fn database_url(root: &Path, url: Option<&str>) -> String {
    match url {
        Some(u) => u.to_owned(),
        None => format!("sqlite://{}", root.join("db").join("cas-vpn.sqlite").display()),
    }
}

/// The CA key passphrase, when the operator encrypts CA keys (env `CAS_VPN_CA_PASSPHRASE`).
pub fn ca_passphrase() -> Option<String> {
    std::env::var("CAS_VPN_CA_PASSPHRASE").ok().filter(|s| !s.is_empty())
}

/// Everything an operation needs: the parsed config, the store and the PKI directory.
pub struct Ctx {
    pub cfg: Config,
    pub store: Store,
    pub pki: PkiDir,
}

impl Ctx {
    /// Opens an initialised installation: the config must parse and the store must open (migrations run).
    pub async fn open(root: &Path, database_url: Option<&str>) -> Result<Ctx, OpsError> {
        // Checked first so that a command run against the wrong root creates nothing there.
        if !root.join("config").join("network").is_file() {
            return Err(OpsError::NotInitialised { root: root.to_owned() });
        }
        let cfg = Config::load(root)?;
        crate::sys::fs::ensure_dir(&root.join("db"), 0o700)?;
        let store = Store::open(&self::database_url(root, database_url)).await?;
        Ok(Ctx { cfg, store, pki: PkiDir::new(root, ca_passphrase()) })
    }

    /// The VPN settings, or a clear error naming what needed them under Scenario B.
    pub fn vpn(&self, what: &'static str) -> Result<&VpnConfig, OpsError> {
        self.cfg.active_vpn().ok_or(OpsError::NoVpn { why: self.cfg.scenario_reason(), what })
    }
}

/// Unix seconds now. Every timestamp in the store is this.
pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

pub fn to_datetime(unix: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(unix).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// RFC 3339 for reports and JSON.
pub fn rfc3339(unix: i64) -> String {
    to_datetime(unix).format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}
