//! The store: the only module that speaks SQL. The DB is the source of truth; files on disk are derived from it.
//!
//! Two backends behind one enum: SQLite (embedded default, `<root>/db/cas-vpn.sqlite`) and PostgreSQL. `sqlx::Any`
//! mis-decodes our types, so each query is written once with `$1` placeholders (SQLite accepts them) and run on
//! whichever concrete pool is there through the `on_pool!` / `in_tx!` macros below, which expand the same body
//! once per backend.
//!
//! Rules every function here keeps:
//! - a change that touches more than one row is one transaction: a failure leaves nothing behind;
//! - uniqueness (names, tunnel addresses, admin ports, serials) is enforced by the database's (partial) unique
//!   indexes; the reads before a write only produce friendlier errors;
//! - timestamps are `i64` unix seconds, supplied by the caller (`now`), so tests control time;
//! - nothing secret reaches an error or a log line (token secrets are never even seen here, only their hashes).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use crate::domain::{Kind, Name};

/// Runs `$body` with `$pool` bound to the concrete pool, once per backend (the body is compiled twice).
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store {
            $crate::db::Store::Sqlite($pool) => $body,
            $crate::db::Store::Postgres($pool) => $body,
        }
    };
}

/// Runs the async block `$body` (which yields `Result<T, DbError>`) inside one write transaction with `$tx`
/// bound to it, commits on `Ok` and rolls back on `Err`. Write transactions are serialized on both backends:
/// SQLite by `BEGIN IMMEDIATE` (takes the write lock up front, so a read-then-write can neither fail with
/// SQLITE_BUSY_SNAPSHOT nor deadlock), PostgreSQL by a transaction-scoped advisory lock (so that allocating the
/// lowest free port or address sees every earlier allocation). Writes are rare here; simple reasoning wins.
macro_rules! in_tx {
    ($store:expr, $tx:ident => $body:expr) => {
        match $store {
            $crate::db::Store::Sqlite(pool) => {
                let mut $tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let out: Result<_, $crate::db::DbError> = $body.await;
                $crate::db::finish($tx, out).await
            }
            $crate::db::Store::Postgres(pool) => {
                let mut $tx = pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind($crate::db::PG_WRITE_LOCK)
                    .execute(&mut *$tx)
                    .await?;
                let out: Result<_, $crate::db::DbError> = $body.await;
                $crate::db::finish($tx, out).await
            }
        }
    };
}

/// As `in_tx!`, made durable at its commit on SQLite too: `synchronous = FULL` for this one transaction, so the
/// WAL is synced at the commit (the store's default NORMAL syncs it at checkpoints: that survives a killed process
/// but not a power cut). For the changes whose loss in a power cut would break a promise already made: a
/// revocation (the store forgetting it would drop the serial from the next CRL and let the credential back in) and
/// a redeemed pairing token (a terminal holding a certificate the store forgot could never connect). PostgreSQL
/// commits durably already.
macro_rules! in_durable_tx {
    ($store:expr, $tx:ident => $body:expr) => {
        match $store {
            $crate::db::Store::Sqlite(pool) => {
                let mut conn = pool.acquire().await?;
                // Outside the transaction: SQLite refuses to change it inside one.
                sqlx::query("PRAGMA synchronous = FULL").execute(&mut *conn).await?;
                let out = async {
                    let mut $tx = sqlx::Connection::begin_with(&mut *conn, "BEGIN IMMEDIATE").await?;
                    let out: Result<_, $crate::db::DbError> = $body.await;
                    $crate::db::finish($tx, out).await
                }
                .await;
                // Back to the store's default before the connection returns to the pool; one that cannot be set
                // back is closed rather than reused.
                if sqlx::query("PRAGMA synchronous = NORMAL").execute(&mut *conn).await.is_err() {
                    let _ = conn.detach();
                }
                out
            }
            store @ $crate::db::Store::Postgres(_) => in_tx!(store, $tx => $body),
        }
    };
}

/// Inside an `in_tx!` body: inserts an event row and announces it (`events::Notify`), in that transaction.
/// Yields `Result<i64, DbError>` (the event id).
macro_rules! publish_event_in {
    ($tx:ident, $kind:expr, $subject:expr, $node:expr, $now:expr) => {{
        let id: i64 =
            sqlx::query_scalar("INSERT INTO events (at, kind, subject, node) VALUES ($1, $2, $3, $4) RETURNING id")
                .bind($now)
                .bind($kind.as_str())
                .bind($subject)
                .bind($node)
                .fetch_one(&mut *$tx)
                .await?;
        $crate::db::events::Notify::notify_event(&mut *$tx, id).await?;
        Ok::<i64, $crate::db::DbError>(id)
    }};
}

mod audit;
mod bans;
mod certificates;
mod credentials;
pub mod events;
mod gate_writes;
mod health;
mod metrics;
mod nodes;
mod pairing;
mod pairing_ext;
mod renewals;
mod revocations;
mod sessions;
pub mod snapshot;
mod tokens;
mod views;
mod web;

pub use audit::{AuditRow, NewAudit};
pub use bans::{BanKey, Reserved};
pub use certificates::{CertRow, NewCert};
pub use credentials::{Credential, NewTerminal, TerminalLayout};
pub use events::{Event, EventAck, EventKind};
pub use gate_writes::{GateWrite, GateWritten, RedeemWrite};
pub use health::{HealthClock, HealthFacts};
pub use metrics::{ClientCertExpiry, Counter, InstanceSessions};
pub use nodes::{NodeRefusal, NodeRow, NodeStart};
pub use pairing_ext::{PendingPairing, Submitted};
pub use renewals::{RenewalCandidate, RenewalFailure};
pub use revocations::{BulkRefusal, BulkRevocation, BulkRevoked};
pub use sessions::{NewSession, SessionChange, SessionRow};
pub use tokens::{NewToken, PairingLookup, Redeemed, TokenRefusal, TokenRow};
pub use views::{AuditQuery, CredentialCounts, ExpiringCert, TerminalFilter, TerminalListRow, TerminalQuery};
pub use web::{ApiToken, Download, Scope, Stage, WebSession, WebUser};

/// Errors of the store, each one a message an operator can act on. None carries a secret or a database URL.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("{name} is already revoked")]
    AlreadyRevoked { name: Name },
    #[error("{0}")]
    BulkRefused(BulkRefusal),
    #[error("the name {name} is already in use by an active credential")]
    NameTaken { name: Name },
    #[error("every admin VPN port in {range} is in use: revoke an admin credential or widen admin_ports")]
    PortsExhausted { range: String },
    #[error("every terminal tunnel address is in use: revoke terminals or widen terminal_subnet/terminal_ports")]
    AddressesExhausted,
    #[error("certificate serial {serial} was already used")]
    SerialTaken { serial: String },
    #[error("{name} is a {actual} credential, not {expected}")]
    WrongKind { name: Name, actual: Kind, expected: Kind },
    #[error("pairing token unusable: {reason}")]
    TokenUnusable { reason: TokenRefusal },
    #[error("unsupported database URL (expected sqlite:PATH or postgres://…)")]
    UnsupportedUrl,
    #[error("the database holds a value this version cannot read: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// The store handle. Cheap to clone (the pools are reference-counted).
#[derive(Clone)]
pub enum Store {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl std::fmt::Debug for Store {
    // Never print the pools' options: a PostgreSQL URL carries a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.backend())
    }
}

/// Key of the advisory lock that serializes write transactions on PostgreSQL ("casvpn" in ASCII).
pub(crate) const PG_WRITE_LOCK: i64 = 0x63_61_73_76_70_6e;

/// How long a SQLite connection waits for another writer before giving up.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the embedded store lives under the installation root.
pub const SQLITE_FILE: &str = "db/cas-vpn.sqlite";

impl Store {
    /// `<root>/db/cas-vpn.sqlite`: the default store's path.
    pub fn sqlite_path(root: &Path) -> PathBuf {
        root.join(SQLITE_FILE)
    }

    /// Opens (creating it if missing) and migrates the store at `url`: `sqlite://PATH`, `sqlite:PATH`,
    /// `postgres://…` or `postgresql://…`.
    pub async fn open(url: &str) -> Result<Store, DbError> {
        let store = Self::connect(url).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Opens the store at `url` (creating a SQLite file if missing) without running migrations: `restore` looks
    /// at what is there first.
    pub async fn connect(url: &str) -> Result<Store, DbError> {
        if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)?;
            Self::connect_sqlite_with(opts).await
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let opts = PgConnectOptions::from_str(url)?;
            let pool = PgPoolOptions::new()
                .max_connections(10)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(opts)
                .await?;
            Ok(Store::Postgres(pool))
        } else {
            Err(DbError::UnsupportedUrl)
        }
    }

    /// A handle on the store at `url` that connects only when first used and never migrates: for `doctor`, which
    /// must report (not fail) when the store did not open. Every query through it fails as the store does.
    pub fn unopened(url: &str) -> Result<Store, DbError> {
        if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)?.busy_timeout(SQLITE_BUSY_TIMEOUT);
            Ok(Store::Sqlite(SqlitePoolOptions::new().max_connections(1).connect_lazy_with(opts)))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let opts = PgConnectOptions::from_str(url)?;
            Ok(Store::Postgres(
                PgPoolOptions::new().max_connections(1).acquire_timeout(Duration::from_secs(3)).connect_lazy_with(opts),
            ))
        } else {
            Err(DbError::UnsupportedUrl)
        }
    }

    /// Runs every migration this binary has.
    pub async fn migrate(&self) -> Result<(), DbError> {
        match self {
            Store::Sqlite(pool) => sqlx::migrate!("migrations/sqlite").run(pool).await?,
            Store::Postgres(pool) => sqlx::migrate!("migrations/postgres").run(pool).await?,
        }
        Ok(())
    }

    /// Opens (creating the file if missing, not its directory) and migrates the SQLite store at `path`.
    pub async fn open_sqlite(path: &Path) -> Result<Store, DbError> {
        Self::open_sqlite_with(SqliteConnectOptions::new().filename(path)).await
    }

    async fn open_sqlite_with(opts: SqliteConnectOptions) -> Result<Store, DbError> {
        let store = Self::connect_sqlite_with(opts).await?;
        store.migrate().await?;
        Ok(store)
    }

    async fn connect_sqlite_with(opts: SqliteConnectOptions) -> Result<Store, DbError> {
        // WAL lets readers (status, the UI) run beside the one writer; NORMAL is durable across application
        // crashes in WAL mode (only a power cut may lose the last commits, never consistency).
        let opts = opts
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(SQLITE_BUSY_TIMEOUT);
        // No ping before handing out a pooled connection (sqlx's default tests each one with a round trip to its
        // worker thread): a SQLite connection is a file handle in this process, not a socket that can go stale, and
        // under a burst of pairings that ping was one more thread hand-off for every query.
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .test_before_acquire(false)
            .connect_with(opts)
            .await?;
        Ok(Store::Sqlite(pool))
    }

    /// A handle on the same store with a connection of its own, opened when first used: for a task whose writes
    /// must not queue behind a burst of reads for the shared pool's connections (the session writer while a fleet
    /// comes back, every CONNECT asking the store).
    pub fn dedicated(&self) -> Store {
        match self {
            Store::Sqlite(pool) => Store::Sqlite(
                SqlitePoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(Duration::from_secs(10))
                    .test_before_acquire(false)
                    .connect_lazy_with((*pool.connect_options()).clone()),
            ),
            Store::Postgres(pool) => Store::Postgres(
                PgPoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_lazy_with((*pool.connect_options()).clone()),
            ),
        }
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    /// Closes every pooled connection (waits for those in use to come back).
    pub async fn close(&self) {
        on_pool!(self, pool => pool.close().await)
    }
}

/// Ends a transaction opened by `in_tx!`: commit on success, roll back on error (the error wins over a failed
/// rollback, which the server undoes anyway when the connection drops).
pub(crate) async fn finish<DB: sqlx::Database, T>(
    tx: sqlx::Transaction<'_, DB>,
    out: Result<T, DbError>,
) -> Result<T, DbError> {
    match out {
        Ok(value) => {
            tx.commit().await?;
            Ok(value)
        }
        Err(e) => {
            if let Err(rollback) = tx.rollback().await {
                tracing::warn!(error = %rollback, "rollback failed");
            }
            Err(e)
        }
    }
}

/// Which unique index a failed insert or update ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Clash {
    Name,
    Address,
    AdminPort,
    Serial,
}

/// Recognizes a unique-index violation by index name (PostgreSQL) or by the columns SQLite names in its message.
pub(crate) fn clash(e: &sqlx::Error) -> Option<Clash> {
    let sqlx::Error::Database(db) = e else { return None };
    if db.kind() != sqlx::error::ErrorKind::UniqueViolation {
        return None;
    }
    let hint = db.constraint().map(str::to_owned).unwrap_or_else(|| db.message().to_owned());
    let has = |needle: &str| hint.contains(needle);
    if has("credentials_active_name") || has("credentials.name") {
        Some(Clash::Name)
    } else if has("credentials_active_address") || has("credentials.home_instance") {
        Some(Clash::Address)
    } else if has("credentials_active_admin_port") || has("credentials.admin_port") {
        Some(Clash::AdminPort)
    } else if has("certificates_pkey") || has("certificates.serial") {
        Some(Clash::Serial)
    } else {
        None
    }
}

/// Reads a `kind`/`ca` column.
pub(crate) fn parse_kind(raw: &str) -> Result<Kind, DbError> {
    raw.parse().map_err(|e: crate::domain::DomainError| DbError::Corrupt(e.to_string()))
}

/// Narrows an integer column to the type the domain uses.
pub(crate) fn narrow<T: TryFrom<i64>>(column: &str, value: Option<i64>) -> Result<Option<T>, DbError> {
    value.map(|v| T::try_from(v).map_err(|_| DbError::Corrupt(format!("{column} = {v} is out of range")))).transpose()
}
