//! The context every service and operation runs in: the parsed configuration, the store, the PKI directory and
//! the clock (`Ctx`), the one error enum of this floor (`AppError`), and what several services share: the instance
//! plan, client profiles, CRL publication, CSR policy, recovery of pending profiles.
//!
//! Floor: below the services (vpn, gate, master, signer, net) and `ops`; above db/config/pkifiles/ovpn.

pub mod accounts;
pub mod clock;
pub mod crl;
pub mod csr;
pub mod group_commit;
pub mod instances;
pub mod pending;
pub mod profile;
pub mod renewal;
pub mod secret;

pub use clock::{Clock, now, rfc3339, to_datetime};

use std::path::{Path, PathBuf};

use crate::config::{Config, ConfigError, VpnConfig};
use crate::db::{DbError, Store};
use crate::domain::{Actor, DomainError};
use crate::pkifiles::{PkiDir, PkiFilesError};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
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
    Bulk(#[from] crate::sys::bulk::BulkError),
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

/// Everything an operation needs: the parsed config, the store, the PKI directory, who is acting (for audit
/// rows) and the clock its decisions go by.
pub struct Ctx {
    pub cfg: Config,
    pub store: Store,
    pub pki: PkiDir,
    /// Who this process acts as: the CLI's unix user, or the service `serve` runs.
    pub actor: Actor,
    pub clock: Clock,
    /// The PostgreSQL URL it was opened with; `None` for the embedded SQLite store.
    pub database_url: Option<String>,
    /// Where the request came from (the web UI's client address), for audit rows; `None` for a local shell.
    pub source: Option<String>,
}

impl Ctx {
    /// The moment terminal health is judged at, by this context's clock and configuration: Scenario A when the
    /// configuration runs the VPN, the silence threshold from `terminal_heartbeat` (config/vpn, also read under
    /// Scenario B; default 60 s), a node alive within `cluster::ALIVE_FOR_SECS`.
    /// Sessions of nodes whose heartbeat is at least this recent are online; older rows are a dead node's.
    pub fn alive_since(&self) -> i64 {
        self.clock.now() - crate::cluster::ALIVE_FOR_SECS
    }

    pub fn health_clock(&self) -> crate::db::HealthClock {
        self.health_clock_in(self.cfg.active_vpn().is_some())
    }

    /// As [`Ctx::health_clock`], with the scenario given (master follows a live switch itself).
    pub fn health_clock_in(&self, vpn: bool) -> crate::db::HealthClock {
        let now = self.clock.now();
        let every = self.cfg.vpn.as_ref().map_or(60, |v| v.terminal_heartbeat.as_secs());
        crate::db::HealthClock {
            now,
            alive_since: now - crate::cluster::ALIVE_FOR_SECS,
            silent_after: crate::domain::health::silent_after(every),
            vpn,
        }
    }

    /// Opens an initialised installation: the config must parse and the store must open (migrations run).
    pub async fn open(root: &Path, database_url: Option<&str>) -> Result<Ctx, AppError> {
        // Checked first so that a command run against the wrong root creates nothing there.
        if !root.join("config").join("network").is_file() {
            return Err(AppError::NotInitialised { root: root.to_owned() });
        }
        let cfg = Config::load(root)?;
        Ctx::open_with(root, database_url, cfg).await
    }

    async fn open_with(root: &Path, database_url: Option<&str>, cfg: Config) -> Result<Ctx, AppError> {
        // Created when missing; an existing one keeps the owner and mode `init` gave it (group-writable for the
        // services when they run under their own users).
        if !root.join("db").is_dir() {
            crate::sys::fs::ensure_dir(&root.join("db"), 0o700)?;
        }
        let store = Store::open(&self::database_url(root, database_url)).await?;
        Ok(Ctx::with_store(root, database_url, cfg, store))
    }

    /// The context of the CLI's user on `store`, with the system clock.
    fn with_store(root: &Path, database_url: Option<&str>, cfg: Config, store: Store) -> Ctx {
        Ctx {
            cfg,
            store,
            pki: PkiDir::new(root, ca_passphrase()),
            actor: cli_actor(),
            clock: Clock::system(),
            database_url: database_url.map(str::to_owned),
            source: None,
        }
    }

    /// As `open`, for the commands that must work with a broken configuration file (`Config::load_lenient`): the
    /// returned warnings say what was replaced by defaults.
    pub async fn open_lenient(root: &Path, database_url: Option<&str>) -> Result<(Ctx, Vec<String>), AppError> {
        if !root.join("config").join("network").is_file() {
            return Err(AppError::NotInitialised { root: root.to_owned() });
        }
        let (cfg, warnings) = Config::load_lenient(root)?;
        let ctx = Ctx::open_with(root, database_url, cfg).await?;
        Ok((ctx, warnings.iter().map(|w| format!("{w} (defaults used for this command)")).collect()))
    }

    /// As `open_lenient`, for `doctor`: a store that does not open is not an error but the first finding. Returns
    /// the context (its store then an unopened handle whose every query fails) and why the store did not open.
    pub async fn open_for_doctor(
        root: &Path,
        database_url: Option<&str>,
    ) -> Result<(Ctx, Vec<String>, Option<String>), AppError> {
        if !root.join("config").join("network").is_file() {
            return Err(AppError::NotInitialised { root: root.to_owned() });
        }
        let (cfg, warnings) = Config::load_lenient(root)?;
        let warnings = warnings.iter().map(|w| format!("{w} (defaults used for this command)")).collect();
        match Ctx::open_with(root, database_url, cfg.clone()).await {
            Ok(ctx) => Ok((ctx, warnings, None)),
            Err(AppError::Db(e)) => {
                let store = Store::unopened(&self::database_url(root, database_url))?;
                Ok((Ctx::with_store(root, database_url, cfg, store), warnings, Some(e.to_string())))
            }
            Err(e) => Err(e),
        }
    }

    /// The same installation seen with a freshly loaded configuration (same store, PKI, actor and clock).
    pub fn with_config(&self, cfg: Config) -> Ctx {
        Ctx {
            cfg,
            store: self.store.clone(),
            pki: self.pki.clone(),
            actor: self.actor.clone(),
            clock: self.clock.clone(),
            database_url: self.database_url.clone(),
            source: self.source.clone(),
        }
    }

    /// The same installation, acting for someone else (a web user, from their address): what the operations run
    /// with this context write to the audit trail names them.
    pub fn acting_as(&self, actor: Actor, source: Option<String>) -> Ctx {
        let mut ctx = self.with_config(self.cfg.clone());
        ctx.actor = actor;
        ctx.source = source;
        ctx
    }

    /// Appends an audit row for what this context's actor did, from its source.
    pub async fn audit(&self, action: &str, subject: &str, detail: &str, now: i64) -> Result<(), DbError> {
        self.store.audit_from(&self.actor, self.source.as_deref(), action, subject, detail, now).await
    }

    /// The audit row of what this context's actor does, to write inside the change's own transaction.
    pub fn audit_entry(&self, action: &str, subject: &str, detail: &str) -> crate::db::NewAudit {
        crate::db::NewAudit {
            actor: self.actor.clone(),
            source: self.source.clone(),
            action: action.to_owned(),
            subject: subject.to_owned(),
            detail: detail.to_owned(),
        }
    }

    /// The VPN settings, or a clear error naming what needed them under Scenario B.
    pub fn vpn(&self, what: &'static str) -> Result<&VpnConfig, AppError> {
        self.cfg.active_vpn().ok_or(AppError::NoVpn { why: self.cfg.scenario_reason(), what })
    }
}

/// The CLI as the unix user who runs it: the real uid (who typed the command, even through a set-uid wrapper),
/// named when the system knows the name.
pub fn cli_actor() -> Actor {
    let uid = crate::sys::users::real_uid();
    Actor::cli(uid, crate::sys::users::name_of(uid).as_deref())
}

/// The store row for a certificate just made (serial, name and dates are read from the certificate itself).
pub fn new_cert(cert_pem: &str) -> Result<crate::db::NewCert, AppError> {
    let info = cas_pki::cert_info(cert_pem).map_err(|e| AppError::Ca(e.to_string()))?;
    Ok(crate::db::NewCert {
        serial: info.serial.to_hex(),
        common_name: info.common_name,
        not_before: info.not_before.unix_timestamp(),
        not_after: info.not_after.unix_timestamp(),
        cert_pem: cert_pem.to_owned(),
    })
}
