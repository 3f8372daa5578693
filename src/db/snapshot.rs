//! A logical, backend-neutral copy of the store, for `cas-vpn backup` and `cas-vpn restore` (`ops::backup`).
//!
//! **Dump**: every table the schema holds (read from `sqlite_master` / `pg_class`, never from a hand list) but
//! those on [`TRANSIENT`] and sqlx's own `_sqlx_migrations`, read inside **one read transaction**, so the copy is
//! one consistent moment of a store that `serve` keeps writing: SQLite in WAL mode gives a read transaction one
//! snapshot; PostgreSQL gets `REPEATABLE READ READ ONLY`. Rows travel as JSON arrays of integers, strings and
//! nulls (every column of both schemas is an integer or a text), so a SQLite dump loads into PostgreSQL and back.
//!
//! **Load**: onto a store that holds nothing (tables missing, or empty but for the rows migrations seed, listed
//! in [`SEEDED`]): migrations up to the dump's version, then every table in one write transaction (parents before
//! children, following the foreign keys), identity counters moved past the loaded ids (PostgreSQL), an audit row
//! naming the backup in the same transaction, then the migrations this binary has beyond the dump's. A dump from
//! a newer schema than this binary's is refused before anything is written.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use sqlx::Row;
use sqlx::migrate::Migrator;

use super::{DbError, Store};
use crate::domain::Actor;

/// Tables whose rows describe the running moment, not the installation: never backed up, never restored (a
/// restored server starts with them empty). Live VPN sessions; browser sessions and their one-time download
/// tickets (bound to cookies of the old server); pairing-attempt reservations and bans (minutes long); cluster
/// nodes and their event queues; terminals' last renewal failures (their next attempt records them again); each
/// gate's gauges (republished every 30 s); terminal health (observations of the live fleet, made afresh by
/// master).
pub const TRANSIENT: &[&str] = &[
    "sessions",
    "web_sessions",
    "web_downloads",
    "ip_bans",
    "nodes",
    "events",
    "event_acks",
    "renewal_failures",
    "gate_gauges",
    "terminal_health",
];

/// Tables whose rows the migrations themselves insert (a store with only those is still empty): a load replaces
/// them.
pub const SEEDED: &[&str] = &["pairing_window", "metric_counters"];

/// sqlx's record of applied migrations: the version travels in the dump, the table does not.
const MIGRATIONS_TABLE: &str = "_sqlx_migrations";

/// Rows per INSERT statement while loading.
const CHUNK: usize = 4000;

static SQLITE_MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("the store's table name {0:?} is not a plain identifier")]
    Identifier(String),
    #[error("the target store is not empty: table {table} holds {rows} row(s); restore only onto an empty store")]
    NotEmpty { table: String, rows: i64 },
    #[error(
        "the backup's store is at migration {backup}, newer than this cas-vpn knows ({binary}): restore it with that \
         cas-vpn version or a newer one"
    )]
    Newer { backup: i64, binary: i64 },
    #[error("the backup's table {table} does not exist in the schema of migration {version}")]
    UnknownTable { table: String, version: i64 },
    #[error("the backup's table {table} has column {column}, which the schema of migration {version} does not")]
    UnknownColumn { table: String, column: String, version: i64 },
    #[error("table {table}: a row is not a JSON array of {columns} values")]
    BadRow { table: String, columns: usize },
    #[error("the foreign keys between {0} form a cycle")]
    Cycle(String),
}

impl From<sqlx::Error> for SnapshotError {
    fn from(e: sqlx::Error) -> SnapshotError {
        SnapshotError::Db(DbError::Sqlx(e))
    }
}

impl From<sqlx::migrate::MigrateError> for SnapshotError {
    fn from(e: sqlx::migrate::MigrateError) -> SnapshotError {
        SnapshotError::Db(DbError::Migrate(e))
    }
}

/// One table's rows: each row a JSON array in `columns` order.
#[derive(Debug, Clone, PartialEq)]
pub struct TableDump {
    pub name: String,
    pub columns: Vec<String>,
    pub rows: Vec<serde_json::Value>,
}

/// A consistent copy of every non-transient table.
#[derive(Debug, Clone, PartialEq)]
pub struct Dump {
    /// The newest migration applied to the store it was taken from.
    pub migration: i64,
    /// Sorted by table name.
    pub tables: Vec<TableDump>,
}

/// The newest migration this binary knows, for `backend` (`"sqlite"` or `"postgres"`).
pub fn binary_migration(backend: &str) -> i64 {
    let m = if backend == "postgres" { &POSTGRES_MIGRATOR } else { &SQLITE_MIGRATOR };
    m.iter().map(|x| x.version).max().unwrap_or(0)
}

fn ident(name: &str) -> Result<String, SnapshotError> {
    let ok = !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit();
    if ok { Ok(format!("\"{name}\"")) } else { Err(SnapshotError::Identifier(name.to_owned())) }
}

const SQLITE_TABLES: &str =
    "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name";
const PG_TABLES: &str = "SELECT c.relname::text FROM pg_class c WHERE c.relkind IN ('r', 'p') \
     AND c.relnamespace = current_schema()::regnamespace ORDER BY 1";
const SQLITE_COLUMNS: &str = "SELECT name, type FROM pragma_table_info($1) ORDER BY cid";
const PG_COLUMNS: &str = "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
     WHERE a.attrelid = quote_ident($1)::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum";
const SQLITE_PARENTS: &str = "SELECT DISTINCT \"table\" FROM pragma_foreign_key_list($1)";
const PG_PARENTS: &str = "SELECT DISTINCT c.confrelid::regclass::text FROM pg_constraint c \
     WHERE c.contype = 'f' AND c.conrelid = quote_ident($1)::regclass";
const PG_IDENTITY: &str = "SELECT a.attname::text FROM pg_attribute a \
     WHERE a.attrelid = quote_ident($1)::regclass AND a.attnum > 0 AND a.attidentity <> ''";
const VERSION: &str = "SELECT COALESCE(MAX(version), 0) FROM _sqlx_migrations WHERE success";

/// Runs one SQL text on whichever connection `$conn` is (a `&mut` connection or transaction of either backend).
macro_rules! strings {
    ($conn:expr, $sql:expr, $bind:expr) => {
        sqlx::query($sql)
            .bind($bind)
            .fetch_all(&mut *$conn)
            .await?
            .iter()
            .map(|r| r.try_get::<String, _>(0))
            .collect::<Result<Vec<_>, _>>()?
    };
}

/// Inside the load's transaction: a table that gained rows since the first check (another writer) ends the load;
/// rows the migrations seeded are replaced by the dump's.
macro_rules! refuse_rows {
    ($tx:expr, $table:expr) => {{
        let name = ident($table)?;
        if SEEDED.contains(&$table) {
            sqlx::query(&format!("DELETE FROM {name}")).execute(&mut *$tx).await?;
        } else {
            let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {name}")).fetch_one(&mut *$tx).await?;
            if n > 0 {
                return Err(SnapshotError::NotEmpty { table: $table.to_owned(), rows: n });
            }
        }
    }};
}

/// The restore's audit row, inside the load's transaction. Only the columns of the first schema: the load runs
/// at the dump's migration, whatever it is.
macro_rules! insert_audit {
    ($tx:expr, $a:expr) => {
        sqlx::query("INSERT INTO audit (at, actor, action, subject, detail) VALUES ($1, $2, $3, $4, $5)")
            .bind($a.0)
            .bind($a.1.clone())
            .bind(RESTORE_ACTION)
            .bind($a.2.clone())
            .bind("the store was restored from this backup")
            .execute(&mut *$tx)
            .await?
    };
}

impl Store {
    /// Every table of the store but sqlx's own (transient ones included), sorted.
    pub async fn table_names(&self) -> Result<Vec<String>, SnapshotError> {
        let names: Vec<String> = match self {
            Store::Sqlite(pool) => sqlx::query_scalar(SQLITE_TABLES).fetch_all(pool).await?,
            Store::Postgres(pool) => sqlx::query_scalar(PG_TABLES).fetch_all(pool).await?,
        };
        Ok(names.into_iter().filter(|n| n != MIGRATIONS_TABLE).collect())
    }

    /// A consistent copy of every table but the transient ones, read in one read transaction.
    pub async fn dump(&self) -> Result<Dump, SnapshotError> {
        match self {
            Store::Sqlite(pool) => {
                // A deferred transaction: its first read fixes the WAL snapshot every later read sees.
                let mut tx = pool.begin().await?;
                let migration: i64 = sqlx::query_scalar(VERSION).fetch_one(&mut *tx).await?;
                let names: Vec<String> = sqlx::query_scalar(SQLITE_TABLES).fetch_all(&mut *tx).await?;
                let mut tables = Vec::new();
                for name in names.into_iter().filter(|n| backed_up(n)) {
                    let columns: Vec<String> = strings!(tx, SQLITE_COLUMNS, &name);
                    let sql = select_rows(&name, &columns, "json_array", "")?;
                    let raw: Vec<String> = sqlx::query_scalar(&sql).fetch_all(&mut *tx).await?;
                    tables.push(TableDump { rows: parse_rows(&name, columns.len(), raw)?, name, columns });
                }
                tx.commit().await?;
                Ok(Dump { migration, tables })
            }
            Store::Postgres(pool) => {
                let mut tx = pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
                let migration: i64 = sqlx::query_scalar(VERSION).fetch_one(&mut *tx).await?;
                let names: Vec<String> = sqlx::query_scalar(PG_TABLES).fetch_all(&mut *tx).await?;
                let mut tables = Vec::new();
                for name in names.into_iter().filter(|n| backed_up(n)) {
                    let columns: Vec<String> = strings!(tx, PG_COLUMNS, &name);
                    let sql = select_rows(&name, &columns, "json_build_array", "::text")?;
                    let raw: Vec<String> = sqlx::query_scalar(&sql).fetch_all(&mut *tx).await?;
                    tables.push(TableDump { rows: parse_rows(&name, columns.len(), raw)?, name, columns });
                }
                tx.commit().await?;
                Ok(Dump { migration, tables })
            }
        }
    }

    /// The first table (neither transient nor seeded by the migrations) that holds rows, with its row count;
    /// `None` when the store is empty (or has no tables yet).
    pub async fn first_nonempty_table(&self) -> Result<Option<(String, i64)>, SnapshotError> {
        for name in self.table_names().await? {
            if !backed_up(&name) || SEEDED.contains(&name.as_str()) {
                continue;
            }
            let sql = format!("SELECT COUNT(*) FROM {}", ident(&name)?);
            let n: i64 = on_pool!(self, pool => sqlx::query_scalar(&sql).fetch_one(pool).await?);
            if n > 0 {
                return Ok(Some((name, n)));
            }
        }
        Ok(None)
    }

    /// Whether this store holds the restore of the backup `id` (the audit row `load` writes with its rows).
    pub async fn restored_from(&self, id: &str) -> Result<bool, SnapshotError> {
        if !self.table_names().await?.iter().any(|t| t == "audit") {
            return Ok(false);
        }
        let sql = "SELECT COUNT(*) FROM audit WHERE action = $1 AND subject = $2";
        let n: i64 =
            on_pool!(self, pool => sqlx::query_scalar(sql).bind(RESTORE_ACTION).bind(id).fetch_one(pool).await?);
        Ok(n > 0)
    }

    /// Loads `dump` onto this empty store: migrations up to its version, its rows and an audit row naming backup
    /// `id` in one transaction, then the remaining migrations. Refuses a store that holds rows, or a dump newer
    /// than this binary, before writing anything.
    pub async fn load(&self, dump: &Dump, id: &str, actor: &Actor, now: i64) -> Result<(), SnapshotError> {
        let binary = binary_migration(self.backend());
        if dump.migration > binary {
            return Err(SnapshotError::Newer { backup: dump.migration, binary });
        }
        if let Some((table, rows)) = self.first_nonempty_table().await? {
            return Err(SnapshotError::NotEmpty { table, rows });
        }
        self.migrate_to(dump.migration).await?;
        let audit = (now, actor.to_string(), id.to_owned());
        match self {
            Store::Sqlite(pool) => {
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let mut parents = BTreeMap::new();
                for t in &dump.tables {
                    parents.insert(t.name.clone(), strings!(tx, SQLITE_PARENTS, &t.name));
                }
                let order = topological(dump, &parents)?;
                for t in &order {
                    let schema: Vec<String> = strings!(tx, SQLITE_COLUMNS, &t.name);
                    check_columns(t, &schema, dump.migration)?;
                    refuse_rows!(tx, t.name.as_str());
                    for chunk in t.rows.chunks(CHUNK) {
                        let picks: Vec<String> =
                            (0..t.columns.len()).map(|i| format!("json_extract(value, '$[{i}]')")).collect();
                        let sql = format!(
                            "INSERT INTO {} ({}) SELECT {} FROM json_each($1)",
                            ident(&t.name)?,
                            column_list(&t.columns)?,
                            picks.join(", ")
                        );
                        let json = serde_json::Value::Array(chunk.to_vec()).to_string();
                        sqlx::query(&sql).bind(json).execute(&mut *tx).await?;
                    }
                }
                insert_audit!(tx, audit);
                tx.commit().await?;
            }
            Store::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(super::PG_WRITE_LOCK).execute(&mut *tx).await?;
                let mut parents = BTreeMap::new();
                for t in &dump.tables {
                    let known: Vec<String> = sqlx::query_scalar(PG_TABLES).fetch_all(&mut *tx).await?;
                    if !known.contains(&t.name) {
                        return Err(SnapshotError::UnknownTable { table: t.name.clone(), version: dump.migration });
                    }
                    parents.insert(t.name.clone(), strings!(tx, PG_PARENTS, &t.name));
                }
                let order = topological(dump, &parents)?;
                for t in &order {
                    let rows = sqlx::query(PG_COLUMNS).bind(&t.name).fetch_all(&mut *tx).await?;
                    let mut types = BTreeMap::new();
                    for r in &rows {
                        types.insert(r.try_get::<String, _>(0)?, r.try_get::<String, _>(1)?);
                    }
                    check_columns(t, &types.keys().cloned().collect::<Vec<_>>(), dump.migration)?;
                    let identity: Vec<String> = strings!(tx, PG_IDENTITY, &t.name);
                    refuse_rows!(tx, t.name.as_str());
                    let overriding = if identity.is_empty() { "" } else { " OVERRIDING SYSTEM VALUE" };
                    for chunk in t.rows.chunks(CHUNK) {
                        let picks: Vec<String> =
                            t.columns.iter().enumerate().map(|(i, c)| format!("(e->>{i})::{}", types[c])).collect();
                        let sql = format!(
                            "INSERT INTO {} ({}){overriding} SELECT {} FROM jsonb_array_elements($1::text::jsonb) AS e",
                            ident(&t.name)?,
                            column_list(&t.columns)?,
                            picks.join(", ")
                        );
                        let json = serde_json::Value::Array(chunk.to_vec()).to_string();
                        sqlx::query(&sql).bind(json).execute(&mut *tx).await?;
                    }
                    for col in identity {
                        let (table, col) = (ident(&t.name)?, ident(&col)?);
                        let sql = format!(
                            "SELECT setval(pg_get_serial_sequence('{table}', '{}'), COALESCE((SELECT MAX({col}) FROM \
                             {table}), 0) + 1, false)",
                            col.trim_matches('"')
                        );
                        sqlx::query(&sql).execute(&mut *tx).await?;
                    }
                }
                insert_audit!(tx, audit);
                tx.commit().await?;
            }
        }
        self.migrate().await?;
        Ok(())
    }

    /// Applies this binary's migrations up to `version` (none beyond it).
    async fn migrate_to(&self, version: i64) -> Result<(), SnapshotError> {
        let upto = |m: &Migrator| Migrator {
            migrations: Cow::Owned(m.iter().filter(|x| x.version <= version).cloned().collect()),
            ..Migrator::DEFAULT
        };
        match self {
            Store::Sqlite(pool) => upto(&SQLITE_MIGRATOR).run(pool).await?,
            Store::Postgres(pool) => upto(&POSTGRES_MIGRATOR).run(pool).await?,
        }
        Ok(())
    }
}

/// The audit action `load` records, its subject being the backup's id.
pub const RESTORE_ACTION: &str = "backup.restore";

fn backed_up(table: &str) -> bool {
    table != MIGRATIONS_TABLE && !TRANSIENT.contains(&table)
}

fn column_list(columns: &[String]) -> Result<String, SnapshotError> {
    Ok(columns.iter().map(|c| ident(c)).collect::<Result<Vec<_>, _>>()?.join(", "))
}

fn select_rows(table: &str, columns: &[String], array_fn: &str, cast: &str) -> Result<String, SnapshotError> {
    let first = ident(columns.first().ok_or_else(|| SnapshotError::Identifier(table.to_owned()))?)?;
    Ok(format!("SELECT {array_fn}({}){cast} FROM {} ORDER BY {first}", column_list(columns)?, ident(table)?))
}

fn parse_rows(table: &str, columns: usize, raw: Vec<String>) -> Result<Vec<serde_json::Value>, SnapshotError> {
    raw.iter()
        .map(|r| match serde_json::from_str::<serde_json::Value>(r) {
            Ok(v @ serde_json::Value::Array(_)) if v.as_array().is_some_and(|a| a.len() == columns) => Ok(v),
            _ => Err(SnapshotError::BadRow { table: table.to_owned(), columns }),
        })
        .collect()
}

fn check_columns(t: &TableDump, schema: &[String], version: i64) -> Result<(), SnapshotError> {
    if schema.is_empty() {
        return Err(SnapshotError::UnknownTable { table: t.name.clone(), version });
    }
    if let Some(c) = t.columns.iter().find(|c| !schema.contains(c)) {
        return Err(SnapshotError::UnknownColumn { table: t.name.clone(), column: c.clone(), version });
    }
    if let Some(r) = t.rows.iter().find(|r| r.as_array().is_none_or(|a| a.len() != t.columns.len())) {
        let _ = r;
        return Err(SnapshotError::BadRow { table: t.name.clone(), columns: t.columns.len() });
    }
    Ok(())
}

/// The dump's tables, every parent (by foreign key) before its children.
fn topological<'d>(
    dump: &'d Dump,
    parents: &BTreeMap<String, Vec<String>>,
) -> Result<Vec<&'d TableDump>, SnapshotError> {
    let mut done: BTreeSet<&str> = BTreeSet::new();
    let mut order = Vec::with_capacity(dump.tables.len());
    let names: BTreeSet<&str> = dump.tables.iter().map(|t| t.name.as_str()).collect();
    while order.len() < dump.tables.len() {
        let before = order.len();
        for t in &dump.tables {
            if done.contains(t.name.as_str()) {
                continue;
            }
            let ready = parents
                .get(&t.name)
                .into_iter()
                .flatten()
                .all(|p| p == &t.name || done.contains(p.as_str()) || !names.contains(p.as_str()));
            if ready {
                done.insert(&t.name);
                order.push(t);
            }
        }
        if order.len() == before {
            let left: Vec<&str> = names.iter().copied().filter(|n| !done.contains(n)).collect();
            return Err(SnapshotError::Cycle(left.join(", ")));
        }
    }
    Ok(order)
}
