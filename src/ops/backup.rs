//! `cas-vpn backup FILE` and `cas-vpn restore FILE`: the whole installation (store, `config/`, `pki/`) in one
//! passphrase-encrypted file, taken while `serve` runs, and put back onto an empty root.
//!
//! ```text
//!  backup:  read config/ + pki/ (regular files; no temp files, no pki/imports/ staging, nothing of run/, vpn/, db/)
//!           → one read transaction of the store (db::snapshot) → manifest (versions, counts, SHA-256 of each part)
//!           → tar (manifest.json, store.jsonl, files/…) inside age (scrypt passphrase) → FILE.tmp (0600) → rename
//!  restore: decrypt + read everything into memory and check it (format, hashes, migration ≤ this binary's)
//!           → refuse a non-empty root or store → stage the files in a sibling `.ROOT.restore-ID/` (modes of the
//!           backup) → store: SQLite inside the staging directory, PostgreSQL loaded in one transaction
//!           → one syncfs, one rename of the staging directory onto ROOT → owners and modes (ops::ownership)
//!           → fresh CRLs from the restored store (when the CA keys can be loaded here)
//! ```
//! Files are read before the store, so the store is never older than the CRLs beside it (a revocation in flight
//! during the backup is then at worst in the store and not yet in a CRL, the state a crash between the two
//! leaves, which revoking again or the restore's fresh CRLs heal; the CONNECT answer goes by the store anyway).
//!
//! A failed restore leaves nothing (invariant 9): everything is checked before the first write, the staging
//! directory goes on any failure, and the root appears by one rename. With PostgreSQL the store commits before
//! that rename; a restore killed between the two is finished by running it again (its staging directory is still
//! beside the root and the store holds this backup's restore audit row, so it is recognised as this restore and
//! only the files are put in place).
//!
//! The archive is an ordinary [age](https://age-encryption.org) file (scrypt passphrase recipient) holding a tar
//! stream: `age -d FILE | tar t` lists it. The passphrase never travels in argv, a log or the file.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use age::secrecy::SecretString;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Ctx, OpsError};
use crate::db::Store;
use crate::db::snapshot::{Dump, SnapshotError, TableDump};
use crate::sys::fs as sysfs;

/// Where `backup` and `restore` take the passphrase from when it is set (else they ask on the terminal).
pub const PASSPHRASE_ENV: &str = "CAS_VPN_BACKUP_PASSPHRASE";
/// The archive layout this version writes and reads.
pub const FORMAT: u32 = 1;
/// The scrypt work factor (log2 N) of new backups: age's own default (about a second of one core, 256 MiB).
const WORK_FACTOR: u8 = 18;
/// The highest work factor a backup may ask of `restore` (what the reference age implementation accepts).
const MAX_WORK_FACTOR: u8 = 22;
/// The directories of the root a backup holds.
const DIRS: [&str; 2] = ["config", "pki"];
/// Never backed up: an import's staging (`ops::import`), which lives and dies with its own run.
const SKIPPED: [&str; 1] = ["pki/imports"];
const MANIFEST: &str = "manifest.json";
const STORE: &str = "store.jsonl";
const FILES: &str = "files/";
const STAGE_MARK: &str = ".restore-";

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("the backup passphrase is empty: set {PASSPHRASE_ENV} or type one")]
    EmptyPassphrase,
    #[error("cannot read {path}: {why}")]
    Read { path: PathBuf, why: String },
    #[error("cannot write {path}: {why}")]
    Write { path: PathBuf, why: String },
    #[error("{path} is not an age-encrypted cas-vpn backup")]
    NotABackup { path: PathBuf },
    #[error("{path}: wrong passphrase (or not encrypted with a passphrase); nothing was changed")]
    WrongPassphrase { path: PathBuf },
    #[error("{path} is damaged ({why}); nothing was changed")]
    Damaged { path: PathBuf, why: String },
    #[error("{path} was written in backup format {found}; this cas-vpn reads format {FORMAT}: use a newer cas-vpn")]
    Format { path: PathBuf, found: u32 },
    #[error("{root} is not empty: restore only onto a new or empty root; nothing was changed")]
    RootNotEmpty { root: PathBuf },
    #[error("{root} cannot be replaced by a rename ({why}): is it a mount point? restore onto a directory inside it")]
    Rename { root: PathBuf, why: String },
    #[error("restore puts a SQLite store under the root (db/); --database-url is for a PostgreSQL store")]
    SqliteUrl,
    #[error(transparent)]
    Store(#[from] SnapshotError),
}

impl From<BackupError> for OpsError {
    fn from(e: BackupError) -> OpsError {
        OpsError::Other(e.to_string())
    }
}

/// A backup passphrase: never empty, never shown (`Debug` is redacted), wiped from memory when dropped.
pub struct Passphrase(SecretString);

impl Passphrase {
    pub fn new(text: String) -> Result<Passphrase, BackupError> {
        if text.is_empty() {
            return Err(BackupError::EmptyPassphrase);
        }
        Ok(Passphrase(SecretString::from(text)))
    }

    /// From `CAS_VPN_BACKUP_PASSPHRASE`, when it is set (an empty value is refused, not ignored).
    pub fn from_env() -> Option<Result<Passphrase, BackupError>> {
        std::env::var(PASSPHRASE_ENV).ok().map(Passphrase::new)
    }
}

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrase(<redacted>)")
    }
}

/// One file of the root in the archive.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct FileEntry {
    /// Relative to the root (`config/network`, `pki/terminal-ca.key`).
    path: String,
    mode: u32,
    size: u64,
    sha256: String,
}

/// `manifest.json`, the archive's first entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Manifest {
    format: u32,
    id: String,
    cas_vpn_version: String,
    created_at: i64,
    backend: String,
    migration: i64,
    /// Rows per table (transient tables are not in the backup).
    tables: BTreeMap<String, u64>,
    store_sha256: String,
    files: Vec<FileEntry>,
}

/// Rows of one table in a backup.
#[derive(Debug, Serialize)]
pub struct TableRows {
    pub table: String,
    pub rows: u64,
}

fn table_rows(tables: &BTreeMap<String, u64>) -> Vec<TableRows> {
    tables.iter().map(|(table, rows)| TableRows { table: table.clone(), rows: *rows }).collect()
}

/// What `backup` made (`cas-vpn backup --json`).
#[derive(Debug, Serialize)]
pub struct BackupReport {
    pub file: String,
    pub id: String,
    pub created_at: String,
    pub cas_vpn_version: String,
    pub backend: String,
    pub migration: i64,
    pub tables: Vec<TableRows>,
    pub files: usize,
    pub bytes: u64,
}

/// What `restore` did (`cas-vpn restore --json`).
#[derive(Debug, Serialize)]
pub struct RestoreReport {
    pub root: String,
    pub backup_id: String,
    pub backup_created_at: String,
    pub cas_vpn_version: String,
    pub backend: String,
    pub migration: i64,
    pub tables: Vec<TableRows>,
    pub files: usize,
    /// The store already held this backup (a restore killed after its store commit): only the files were put.
    pub finished_earlier_restore: bool,
    pub crls_republished: bool,
    pub warnings: Vec<String>,
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The regular files of `config/` and `pki/` (not temp files, not `pki/imports/`), relative paths sorted.
fn read_tree(root: &Path) -> Result<Vec<(String, u32, Vec<u8>)>, BackupError> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, u32, Vec<u8>)>) -> Result<(), BackupError> {
        let err = |path: &Path, e: std::io::Error| BackupError::Read { path: path.to_owned(), why: e.to_string() };
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(err(dir, e)),
        };
        for e in entries {
            let e = e.map_err(|x| err(dir, x))?;
            let path = e.path();
            let rel = path.strip_prefix(root).unwrap_or(&path).to_string_lossy().into_owned();
            let kind = e.file_type().map_err(|x| err(&path, x))?;
            if kind.is_dir() {
                if !SKIPPED.contains(&rel.as_str()) {
                    walk(root, &path, out)?;
                }
            } else if kind.is_file() && sysfs::temp_target(&path).is_none() {
                // A file deleted meanwhile (a delivered pending profile) is simply not in the backup.
                let data = match std::fs::read(&path) {
                    Ok(d) => d,
                    Err(x) if x.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(x) => return Err(err(&path, x)),
                };
                let mode = e.metadata().map_err(|x| err(&path, x))?.permissions().mode() & 0o7777;
                out.push((rel, mode, data));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for d in DIRS {
        walk(root, &root.join(d), &mut out)?;
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// The store dump as `store.jsonl`: per table a header line, then one JSON array per row.
fn store_text(dump: &Dump) -> Vec<u8> {
    let mut out = Vec::new();
    let line = serde_json::json!({ "migration": dump.migration });
    out.extend_from_slice(line.to_string().as_bytes());
    out.push(b'\n');
    for t in &dump.tables {
        let head = serde_json::json!({ "table": t.name, "columns": t.columns, "rows": t.rows.len() });
        out.extend_from_slice(head.to_string().as_bytes());
        out.push(b'\n');
        for r in &t.rows {
            out.extend_from_slice(r.to_string().as_bytes());
            out.push(b'\n');
        }
    }
    out
}

fn parse_store(text: &[u8]) -> Result<Dump, String> {
    #[derive(Deserialize)]
    struct First {
        migration: i64,
    }
    #[derive(Deserialize)]
    struct Head {
        table: String,
        columns: Vec<String>,
        rows: usize,
    }
    let text = std::str::from_utf8(text).map_err(|e| e.to_string())?;
    let mut lines = text.lines();
    let first: First = serde_json::from_str(lines.next().ok_or("empty store")?).map_err(|e| e.to_string())?;
    let mut tables = Vec::new();
    while let Some(l) = lines.next() {
        let head: Head = serde_json::from_str(l).map_err(|e| e.to_string())?;
        let mut rows = Vec::with_capacity(head.rows);
        for _ in 0..head.rows {
            let row = lines.next().ok_or_else(|| format!("table {}: rows missing", head.table))?;
            rows.push(serde_json::from_str(row).map_err(|e| e.to_string())?);
        }
        tables.push(TableDump { name: head.table, columns: head.columns, rows });
    }
    Ok(Dump { migration: first.migration, tables })
}

/// Backs up the installation of `ctx` into `out` (replaced atomically; 0600).
pub async fn backup(ctx: &Ctx, out: &Path, pass: &Passphrase) -> Result<BackupReport, OpsError> {
    let root = ctx.cfg.root.clone();
    // Files first, then the store: the store is then never older than the CRLs beside it.
    let files = read_tree(&root)?;
    let dump = ctx.store.dump().await.map_err(BackupError::from)?;
    let now = ctx.clock.now();
    let id = format!("{now}-{:08x}", rand::random::<u32>());
    let store = store_text(&dump);
    let manifest = Manifest {
        format: FORMAT,
        id: id.clone(),
        cas_vpn_version: env!("CARGO_PKG_VERSION").to_owned(),
        created_at: now,
        backend: ctx.store.backend().to_owned(),
        migration: dump.migration,
        tables: dump.tables.iter().map(|t| (t.name.clone(), t.rows.len() as u64)).collect(),
        store_sha256: sha256_hex(&store),
        files: files
            .iter()
            .map(|(path, mode, data)| FileEntry {
                path: path.clone(),
                mode: *mode,
                size: data.len() as u64,
                sha256: sha256_hex(data),
            })
            .collect(),
    };
    let manifest_json = serde_json::to_vec_pretty(&manifest).map_err(|e| OpsError::Other(e.to_string()))?;
    let out_abs = std::path::absolute(out).map_err(|e| OpsError::Other(e.to_string()))?;
    let (target, pass) = (out_abs.clone(), Passphrase(pass.0.clone()));
    let written =
        tokio::task::spawn_blocking(move || write_archive(&target, &pass, now, &manifest_json, &store, &files))
            .await
            .map_err(|e| OpsError::Other(e.to_string()))??;
    let detail = format!("{} tables, {} files, {written} bytes", manifest.tables.len(), manifest.files.len());
    ctx.audit("backup.create", &id, &detail, now).await?;
    Ok(BackupReport {
        file: out_abs.display().to_string(),
        id,
        created_at: super::rfc3339(now),
        cas_vpn_version: manifest.cas_vpn_version,
        backend: manifest.backend,
        migration: manifest.migration,
        tables: table_rows(&manifest.tables),
        files: manifest.files.len(),
        bytes: written,
    })
}

fn write_archive(
    out: &Path,
    pass: &Passphrase,
    now: i64,
    manifest: &[u8],
    store: &[u8],
    files: &[(String, u32, Vec<u8>)],
) -> Result<u64, BackupError> {
    let werr = |why: String| BackupError::Write { path: out.to_owned(), why };
    // Unnamed until complete: a backup killed while it writes leaves no file behind.
    let (unnamed, file) = crate::sys::fs::Unnamed::create(out, 0o600).map_err(|e| werr(e.to_string()))?;
    let written = (|| -> Result<(std::fs::File, u64), String> {
        let mut recipient = age::scrypt::Recipient::new(pass.0.clone());
        recipient.set_work_factor(WORK_FACTOR);
        let encryptor = age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
            .map_err(|e| e.to_string())?;
        let sealed = encryptor.wrap_output(std::io::BufWriter::new(file)).map_err(|e| e.to_string())?;
        let mut tar = tar::Builder::new(sealed);
        let mut put = |path: &str, mode: u32, data: &[u8]| -> std::io::Result<()> {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(mode);
            h.set_mtime(u64::try_from(now).unwrap_or(0));
            h.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut h, path, data)
        };
        put(MANIFEST, 0o600, manifest).map_err(|e| e.to_string())?;
        put(STORE, 0o600, store).map_err(|e| e.to_string())?;
        for (path, mode, data) in files {
            put(&format!("{FILES}{path}"), *mode, data).map_err(|e| e.to_string())?;
        }
        let sealed = tar.into_inner().map_err(|e| e.to_string())?;
        let buffered = sealed.finish().map_err(|e| e.to_string())?;
        let file = buffered.into_inner().map_err(|e| e.to_string())?;
        let len = file.metadata().map_err(|e| e.to_string())?.len();
        Ok((file, len))
    })();
    let (file, len) = written.map_err(werr)?;
    unnamed.publish(file).map_err(|e| werr(e.to_string()))?;
    Ok(len)
}

/// Everything a backup file holds, checked.
struct Opened {
    manifest: Manifest,
    dump: Dump,
    files: Vec<(FileEntry, Vec<u8>)>,
}

/// Decrypts and reads the whole backup into memory, checking its format and every hash.
fn open_archive(path: &Path, pass: &Passphrase) -> Result<Opened, BackupError> {
    let file =
        std::fs::File::open(path).map_err(|e| BackupError::Read { path: path.to_owned(), why: e.to_string() })?;
    let damaged = |why: String| BackupError::Damaged { path: path.to_owned(), why };
    let decryptor = match age::Decryptor::new_buffered(std::io::BufReader::new(file)) {
        Ok(d) => d,
        Err(age::DecryptError::Io(e)) => return Err(BackupError::Read { path: path.to_owned(), why: e.to_string() }),
        Err(_) => return Err(BackupError::NotABackup { path: path.to_owned() }),
    };
    if !decryptor.is_scrypt() {
        return Err(BackupError::WrongPassphrase { path: path.to_owned() });
    }
    let mut identity = age::scrypt::Identity::new(pass.0.clone());
    identity.set_max_work_factor(MAX_WORK_FACTOR);
    let reader = match decryptor.decrypt(std::iter::once(&identity as &dyn age::Identity)) {
        Ok(r) => r,
        Err(age::DecryptError::DecryptionFailed | age::DecryptError::NoMatchingKeys) => {
            return Err(BackupError::WrongPassphrase { path: path.to_owned() });
        }
        Err(e) => return Err(damaged(e.to_string())),
    };
    let mut archive = tar::Archive::new(reader);
    let mut manifest: Option<Manifest> = None;
    let mut store: Option<Vec<u8>> = None;
    let mut files = BTreeMap::new();
    for entry in archive.entries().map_err(|e| damaged(e.to_string()))? {
        let mut entry = entry.map_err(|e| damaged(e.to_string()))?;
        let name = entry.path().map_err(|e| damaged(e.to_string()))?.to_string_lossy().into_owned();
        let mut data = Vec::with_capacity(usize::try_from(entry.size()).unwrap_or(0));
        entry.read_to_end(&mut data).map_err(|e| damaged(e.to_string()))?;
        if name == MANIFEST {
            let m: Manifest = serde_json::from_slice(&data).map_err(|e| damaged(format!("manifest: {e}")))?;
            if m.format != FORMAT {
                return Err(BackupError::Format { path: path.to_owned(), found: m.format });
            }
            manifest = Some(m);
        } else if name == STORE {
            store = Some(data);
        } else if let Some(rel) = name.strip_prefix(FILES) {
            files.insert(rel.to_owned(), data);
        } else {
            return Err(damaged(format!("unexpected entry {}", crate::domain::shown(&name))));
        }
    }
    let manifest = manifest.ok_or_else(|| damaged("no manifest".into()))?;
    let store = store.ok_or_else(|| damaged("no store".into()))?;
    if sha256_hex(&store) != manifest.store_sha256 {
        return Err(damaged("the store's SHA-256 does not match the manifest".into()));
    }
    let dump = parse_store(&store).map_err(|e| damaged(format!("store: {e}")))?;
    if dump.migration != manifest.migration {
        return Err(damaged("the store's migration does not match the manifest".into()));
    }
    let mut checked = Vec::with_capacity(manifest.files.len());
    for f in &manifest.files {
        let data = files.remove(&f.path).ok_or_else(|| damaged(format!("{} is missing", f.path)))?;
        if sha256_hex(&data) != f.sha256 || data.len() as u64 != f.size {
            return Err(damaged(format!("{}: SHA-256 does not match the manifest", f.path)));
        }
        safe_relative(&f.path).ok_or_else(|| damaged(format!("{}: not a path under the root", f.path)))?;
        checked.push((f.clone(), data));
    }
    if let Some(extra) = files.keys().next() {
        return Err(damaged(format!("{extra} is not in the manifest")));
    }
    Ok(Opened { manifest, dump, files: checked })
}

/// `rel` when it is a plain relative path under `config/` or `pki/` (no `..`, no absolute part).
fn safe_relative(rel: &str) -> Option<&Path> {
    let p = Path::new(rel);
    let plain = p.components().all(|c| matches!(c, std::path::Component::Normal(_)));
    (plain && DIRS.iter().any(|d| p.starts_with(d))).then_some(p)
}

/// True when `root` does not exist or is an empty directory.
fn is_empty_root(root: &Path) -> Result<bool, BackupError> {
    match std::fs::read_dir(root) {
        Ok(mut d) => Ok(d.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(BackupError::Read { path: root.to_owned(), why: e.to_string() }),
    }
}

/// The sibling staging directory of a restore of `root`, and the prefix every such directory starts with.
fn stage_dir(root: &Path, id: &str) -> Result<(PathBuf, PathBuf, String), BackupError> {
    let bad = || BackupError::Write { path: root.to_owned(), why: "the root needs a parent directory".into() };
    let parent = root.parent().filter(|p| !p.as_os_str().is_empty()).ok_or_else(bad)?.to_owned();
    let name = root.file_name().ok_or_else(bad)?.to_string_lossy().into_owned();
    let prefix = format!(".{name}{STAGE_MARK}");
    Ok((parent.join(format!("{prefix}{id}-{:08x}", rand::random::<u32>())), parent, prefix))
}

/// Restores the backup `file` onto `root` (absent or empty), with the store at `database_url` (PostgreSQL) or
/// SQLite under the root. Nothing is written until everything was read and checked.
pub async fn restore(
    root: &Path,
    database_url: Option<&str>,
    file: &Path,
    pass: &Passphrase,
) -> Result<RestoreReport, OpsError> {
    if database_url.is_some_and(|u| u.starts_with("sqlite:")) {
        return Err(BackupError::SqliteUrl.into());
    }
    let root = std::path::absolute(root).map_err(|e| OpsError::Other(e.to_string()))?;
    let (file_owned, pass) = (file.to_owned(), Passphrase(pass.0.clone()));
    let opened = tokio::task::spawn_blocking(move || open_archive(&file_owned, &pass))
        .await
        .map_err(|e| OpsError::Other(e.to_string()))??;
    let target_backend = if database_url.is_some() { "postgres" } else { "sqlite" };
    let binary = crate::db::snapshot::binary_migration(target_backend);
    if opened.manifest.migration > binary {
        return Err(BackupError::from(SnapshotError::Newer { backup: opened.manifest.migration, binary }).into());
    }
    if !is_empty_root(&root)? {
        return Err(BackupError::RootNotEmpty { root }.into());
    }
    let (stage, parent, prefix) = stage_dir(&root, &opened.manifest.id)?;
    // A restore of this backup onto this root that was killed after its store commit left its staging directory.
    let interrupted = std::fs::read_dir(&parent).is_ok_and(|d| {
        let mine = format!("{prefix}{}-", opened.manifest.id);
        d.flatten().any(|e| e.file_name().to_string_lossy().starts_with(&mine))
    });
    sweep_stages(&parent, &prefix);
    let now = crate::app::now();
    let actor = crate::app::cli_actor();
    // An external store is looked at before anything is written: it must be empty, or hold this very restore.
    let external = match database_url {
        Some(url) => {
            let store = Store::connect(url).await?;
            let earlier = interrupted && store.restored_from(&opened.manifest.id).await.map_err(BackupError::from)?;
            if !earlier && let Some((table, rows)) = store.first_nonempty_table().await.map_err(BackupError::from)? {
                store.close().await;
                return Err(BackupError::from(SnapshotError::NotEmpty { table, rows }).into());
            }
            Some((store, earlier))
        }
        None => None,
    };
    let staged = async {
        write_stage(&stage, &opened.files)?;
        match &external {
            Some((store, false)) => store.load(&opened.dump, &opened.manifest.id, &actor, now).await?,
            Some((_, true)) => {}
            None => {
                let path = stage.join(crate::db::SQLITE_FILE);
                let url = format!("sqlite://{}", path.display());
                let store = Store::connect(&url).await.map_err(SnapshotError::from)?;
                let loaded = store.load(&opened.dump, &opened.manifest.id, &actor, now).await;
                store.close().await;
                loaded?;
                // Closing the last connection checkpointed the WAL; nothing but the database file remains.
            }
        }
        sysfs::sync_fs(&stage).map_err(|e| BackupError::Write { path: stage.clone(), why: e.to_string() })?;
        put_in_place(&stage, &root, &parent)
    }
    .await;
    if let Some((store, _)) = &external {
        store.close().await;
    }
    if let Err(e) = staged {
        let _ = sysfs::remove_dir(&stage);
        return Err(e.into());
    }
    let mut warnings = Vec::new();
    let crls_republished = republish_crls(&root, database_url, &mut warnings).await;
    settle_owners(&root, &mut warnings).await;
    let m = opened.manifest;
    Ok(RestoreReport {
        root: root.display().to_string(),
        backup_id: m.id,
        backup_created_at: super::rfc3339(m.created_at),
        cas_vpn_version: m.cas_vpn_version,
        backend: target_backend.to_owned(),
        migration: m.migration,
        tables: table_rows(&m.tables),
        files: m.files.len(),
        finished_earlier_restore: matches!(external, Some((_, true))),
        crls_republished,
        warnings,
    })
}

/// Writes the backup's files into the staging directory with their modes (directories 0700 until the owners
/// are settled; `db/` 0700 as `Ctx::open` makes it).
fn write_stage(stage: &Path, files: &[(FileEntry, Vec<u8>)]) -> Result<(), BackupError> {
    let werr = |path: &Path, e: std::io::Error| BackupError::Write { path: path.to_owned(), why: e.to_string() };
    std::fs::DirBuilder::new().mode(0o700).create(stage).map_err(|e| werr(stage, e))?;
    for d in DIRS.iter().chain(&["db"]) {
        sysfs::ensure_dir(&stage.join(d), 0o700)
            .map_err(|e| BackupError::Write { path: stage.join(d), why: e.to_string() })?;
    }
    for (f, data) in files {
        let rel = safe_relative(&f.path).ok_or_else(|| werr(stage, std::io::Error::other("bad path")))?;
        let path = stage.join(rel);
        if let Some(dir) = path.parent() {
            sysfs::ensure_dir(dir, 0o700)
                .map_err(|e| BackupError::Write { path: dir.to_owned(), why: e.to_string() })?;
        }
        // Private until the owners are settled: never wider than the backup recorded.
        let mode = f.mode & 0o777;
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .map_err(|e| werr(&path, e))?;
        out.set_permissions(std::fs::Permissions::from_mode(mode)).map_err(|e| werr(&path, e))?;
        out.write_all(data).map_err(|e| werr(&path, e))?;
    }
    // The configuration and pki/ directories as a single-uid `init` leaves them; `settle_owners` applies the
    // service users' table when they exist.
    for (d, mode) in [("config", 0o750), ("pki", 0o700)] {
        std::fs::set_permissions(stage.join(d), std::fs::Permissions::from_mode(mode)).map_err(|e| werr(stage, e))?;
    }
    Ok(())
}

/// Renames the staging directory onto the root (absent, or an empty directory, which rename replaces).
fn put_in_place(stage: &Path, root: &Path, parent: &Path) -> Result<(), BackupError> {
    // Re-checked at the last moment: nothing may have appeared there meanwhile.
    if !is_empty_root(root)? {
        return Err(BackupError::RootNotEmpty { root: root.to_owned() });
    }
    std::fs::set_permissions(stage, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| BackupError::Write { path: stage.to_owned(), why: e.to_string() })?;
    std::fs::rename(stage, root).map_err(|e| BackupError::Rename { root: root.to_owned(), why: e.to_string() })?;
    std::fs::File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(|e| BackupError::Write { path: parent.to_owned(), why: e.to_string() })
}

/// Removes staging directories a killed restore of this root left (one restore of a root at a time).
fn sweep_stages(parent: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(prefix) {
            let _ = sysfs::remove_dir(&e.path());
        }
    }
}

/// As root with the service users present: the owners and modes of ARCHITECTURE's table (`ops::ownership`).
async fn settle_owners(root: &Path, warnings: &mut Vec<String>) {
    use crate::app::accounts::{self, UserMode};
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let outcome = (|| -> Result<(), OpsError> {
        let mode = UserMode::from_env()?;
        let Some(a) = accounts::lookup(&mode)? else { return Ok(()) };
        let cfg = crate::config::Config::load_lenient(root)?.0;
        super::ownership::apply(root, &a, &cfg.gate.download_dir)
    })();
    if let Err(e) = outcome {
        warnings.push(format!("owners and modes not set ({e}): run `cas-vpn init` to set them"));
    }
}

/// Fresh CRLs from the restored store (its revocations may be newer than the CRL files the backup held). Needs
/// the CA keys (and `CAS_VPN_CA_PASSPHRASE` when they are encrypted); without them, a warning.
async fn republish_crls(root: &Path, database_url: Option<&str>, warnings: &mut Vec<String>) -> bool {
    let ctx = match Ctx::open_lenient(root, database_url).await {
        Ok((ctx, _)) => ctx,
        Err(e) => {
            warnings.push(format!("CRLs not republished ({e}): run `cas-vpn crl`"));
            return false;
        }
    };
    let mut ok = true;
    for kind in [crate::domain::Kind::Terminal, crate::domain::Kind::Admin] {
        if let Err(e) = crate::app::crl::refresh(&ctx, kind).await {
            warnings.push(format!("the {kind} CRL was not republished ({e}): run `cas-vpn crl`"));
            ok = false;
        }
    }
    ctx.store.close().await;
    ok
}
