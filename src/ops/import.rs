//! `terminal import --out DIR`, crash-safe and resumable (invariant 9): a kill -9 at any moment leaves an import
//! that the next import of the root, or `terminal import --resume`, rolls back or finishes, and never a private
//! key outside the root's private directories other than the profiles it publishes.
//!
//! ```text
//!  make (memory) → stage in pki/imports/<id>/ (NAME.ovpn, tokens.csv; one syncfs) → journal.json (atomic)
//!    → store commit (one transaction) → audit row (exactly once) → journal: committed
//!    → publish: each profile into DIR through a temp name (O_EXCL, 0600) + rename, one syncfs
//!    → tokens.csv last → the staging directory goes (renamed to .trash-<id>, then deleted)
//! ```
//! Killed before the commit, an import is rolled back: its staging directory is deleted, the store never saw it.
//! Killed after, it is finished: publishing is idempotent (every file is rewritten, temp files of its names in
//! DIR are swept first), so it can be redone from any point. Whether an import is committed is the store's word,
//! not the journal's: the journal, written before the commit, names the first terminal's token, and the batch is
//! one transaction, so that token in the store means every terminal of the batch is there.
//!
//! The journal is a file in the staging directory rather than a store row: it lives and dies with the staged
//! files it describes (one directory removal ends both), needs no migration on either backend, and the one fact
//! that needs the store's atomicity (committed or not) is read from the batch's own rows.
//!
//! One import at a time per root: each holds an `flock` on `pki/imports/` itself from before it looks for
//! leftovers until it returns, so nothing it finds belongs to a live import (and taking it writes no file).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::terminal::{AddOptions, Added, Batch, ImportReport, Progress, placement};
use super::{Ctx, OpsError};
use crate::db::AuditQuery;
use crate::domain::{Kind, Name};
use crate::sys::fs::{self as sysfs, Staged};
use crate::sys::lock::{InstanceLock, LockError};

/// Test hook (debug builds only): `CAS_VPN_FAILPOINT=import.<moment>` makes an import stop at that moment, log
/// `failpoint <name> reached` and wait to be killed. Moments: `before_commit`, `after_commit`, `after_audit`,
/// `mid_publish` (half the profiles published, the next one's temp file written), `before_tokens`,
/// `before_cleanup`. Release builds ignore it.
pub const FAILPOINT_ENV: &str = "CAS_VPN_FAILPOINT";

const JOURNAL: &str = "journal.json";
const TOKENS: &str = "tokens.csv";
const TRASH: &str = ".trash-";
const AUDIT_ACTION: &str = "terminal.import";

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("another terminal import is running on this root (it holds {path}): try again when it has ended")]
    Busy { path: PathBuf },
    #[error(
        "import {id} of {names} names into {out} is committed but not published: run `cas-vpn terminal import \
         --resume` (nothing was changed)"
    )]
    Unfinished { id: String, names: usize, out: String },
    #[error(
        "{path}: unreadable import journal ({why}); nothing was changed: its import's staged profiles and tokens.csv are beside it"
    )]
    Journal { path: PathBuf, why: String },
}

impl From<ImportError> for OpsError {
    fn from(e: ImportError) -> OpsError {
        OpsError::Other(e.to_string())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum State {
    /// Staged and about to be committed (or killed before: the store then has no trace of it).
    Staged,
    /// In the store, audit row written; publishing may be under way.
    Committed,
}

/// What an import writes before its commit, beside its staged files.
#[derive(Debug, Serialize, Deserialize)]
struct Journal {
    id: String,
    out_dir: PathBuf,
    server_keygen: bool,
    created_at: i64,
    /// The first terminal's token id: in the store once (and only once) the batch is committed.
    marker_token: String,
    state: State,
    names: Vec<Name>,
}

/// The import lock of a root, held while an import (or a resume) runs.
pub struct Lock {
    _held: InstanceLock,
}

/// `pki/imports/`: the staging directories (root's, 0700), one per unfinished import.
pub fn imports_dir(ctx: &Ctx) -> PathBuf {
    ctx.pki.dir().join("imports")
}

/// Takes the root's import lock, or says which process holds it.
pub fn lock(ctx: &Ctx) -> Result<Lock, OpsError> {
    let dir = imports_dir(ctx);
    sysfs::ensure_dir(&dir, 0o700)?;
    match crate::sys::lock::try_lock_dir(&dir) {
        Ok(held) => Ok(Lock { _held: held }),
        Err(LockError::Held { path, .. }) => Err(ImportError::Busy { path }.into()),
        Err(e) => Err(OpsError::Other(e.to_string())),
    }
}

/// What an earlier import left behind.
enum Found {
    /// In the store; still to be published.
    Committed { journal: Journal, dir: PathBuf },
    /// Killed before its commit (or while being deleted): nothing of it is in the store.
    Uncommitted { id: String, dir: PathBuf },
}

async fn scan(ctx: &Ctx) -> Result<Vec<Found>, OpsError> {
    let Ok(entries) = std::fs::read_dir(imports_dir(ctx)) else { return Ok(Vec::new()) };
    let mut dirs: Vec<(String, PathBuf)> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    dirs.sort();
    let mut found = Vec::with_capacity(dirs.len());
    for (id, dir) in dirs {
        let path = dir.join(JOURNAL);
        // The journal is written atomically after every staged file: without it, the import never got as far
        // as its commit.
        let journal = match sysfs::read_optional(&path)? {
            Some(text) if !id.starts_with(TRASH) => serde_json::from_str::<Journal>(&text)
                .map_err(|e| ImportError::Journal { path: path.clone(), why: e.to_string() })?,
            _ => {
                found.push(Found::Uncommitted { id, dir });
                continue;
            }
        };
        let committed = journal.state == State::Committed || ctx.store.token(&journal.marker_token).await?.is_some();
        found.push(if committed { Found::Committed { journal, dir } } else { Found::Uncommitted { id, dir } });
    }
    Ok(found)
}

/// Deletes a staging directory: first renamed out of the way (atomic), so that a kill while deleting never leaves
/// a half-emptied directory that looks like an import.
fn discard(ctx: &Ctx, id: &str, dir: &Path) -> Result<(), OpsError> {
    let gone = if id.starts_with(TRASH) {
        dir.to_owned()
    } else {
        let gone = imports_dir(ctx).join(format!("{TRASH}{id}"));
        std::fs::rename(dir, &gone).map_err(|source| sysfs::FsError::Write { path: dir.to_owned(), source })?;
        gone
    };
    Ok(sysfs::remove_dir(&gone)?)
}

/// Before a new import: rolls back what was killed before its commit, and finishes a committed one when this is
/// the same import again (same names, same `--out`, same `--server-keygen`), returning its report. A committed
/// import of other names is refused with what exists and the command that finishes it, changing nothing.
pub async fn settle_before(
    ctx: &Ctx,
    _lock: &Lock,
    names: &[Name],
    out: Option<&Path>,
    server_keygen: bool,
) -> Result<Option<ImportReport>, OpsError> {
    let found = scan(ctx).await?;
    let out = out.map(std::path::absolute).transpose().map_err(|e| OpsError::Other(e.to_string()))?;
    let mut same = None;
    for f in &found {
        if let Found::Committed { journal: j, .. } = f {
            if j.names == names && Some(&j.out_dir) == out.as_ref() && j.server_keygen == server_keygen {
                same = Some(j.id.clone());
            } else {
                let out = j.out_dir.display().to_string();
                return Err(ImportError::Unfinished { id: j.id.clone(), names: j.names.len(), out }.into());
            }
        }
    }
    let mut report = None;
    for f in found {
        match f {
            Found::Uncommitted { id, dir } => {
                tracing::warn!(import = %id, "rolled back an import killed before its store commit");
                discard(ctx, &id, &dir)?;
            }
            Found::Committed { journal, dir } if Some(&journal.id) == same.as_ref() => {
                report = Some(finish(ctx, journal, &dir, true).await?);
            }
            Found::Committed { .. } => {}
        }
    }
    Ok(report)
}

/// The import `--out DIR` of `names`, under the lock: staged, journaled, committed, then published.
pub async fn run(
    ctx: &Ctx,
    _lock: &Lock,
    names: Vec<Name>,
    opts: &AddOptions,
    out: &Path,
    progress: &dyn Progress,
) -> Result<ImportReport, OpsError> {
    sysfs::ensure_dir(out, 0o700)?;
    let out = std::path::absolute(out).map_err(|e| OpsError::Other(e.to_string()))?;
    let batch = Batch::make(ctx, &names, opts, &ctx.store.list_nodes().await?, progress)?;
    let marker_token = batch.marker_token().ok_or_else(|| OpsError::Other("no terminal to import".into()))?;
    let id = format!("{}-{:08x}", batch.now, rand::random::<u32>());
    let dir = imports_dir(ctx).join(&id);
    let journal = Journal {
        id: id.clone(),
        out_dir: out,
        server_keygen: opts.server_keygen,
        created_at: batch.now,
        marker_token: marker_token.to_owned(),
        state: State::Staged,
        names,
    };
    let staged = (|| -> Result<(), OpsError> {
        sysfs::ensure_dir(&dir, 0o700)?;
        let mut staged = Staged::default();
        for (name, profile) in batch.profiles() {
            staged.stage(&dir.join(format!("{name}.ovpn")), profile.as_bytes(), 0o600)?;
        }
        staged.stage(&dir.join(TOKENS), batch.tokens_csv().as_bytes(), 0o600)?;
        // Durable before the journal exists: a committed import's keys must survive a power cut.
        staged.publish()?;
        write_journal(&dir, &journal)
    })();
    if let Err(e) = staged {
        let _ = discard(ctx, &id, &dir);
        return Err(e);
    }
    failpoint("import.before_commit");
    // The audit row goes in with the terminals; `finish` still writes it if missing (journals of older runs).
    let audit = ctx.audit_entry(
        AUDIT_ACTION,
        &audit_subject(&journal),
        if journal.server_keygen { "server-keygen" } else { "token" },
    );
    if let Err(e) = batch.commit(ctx, &audit).await {
        // Only a batch the store certainly does not hold is rolled back; in doubt, the next import or
        // `--resume` decides from the store.
        if matches!(ctx.store.token(&journal.marker_token).await, Ok(None)) {
            discard(ctx, &id, &dir)?;
        }
        return Err(e);
    }
    failpoint("import.after_commit");
    finish(ctx, journal, &dir, false).await
}

fn write_journal(dir: &Path, j: &Journal) -> Result<(), OpsError> {
    let text = serde_json::to_string_pretty(j).map_err(|e| OpsError::Other(e.to_string()))?;
    Ok(sysfs::write_atomic(&dir.join(JOURNAL), text.as_bytes(), 0o600)?)
}

/// Finishes a committed import: its audit row (exactly once), then publishing, then the staging directory goes.
/// Idempotent: any step may have been done before by a killed run.
/// The subject of an import's audit row (unique: it names the import).
fn audit_subject(j: &Journal) -> String {
    format!("import {}: {} terminals", j.id, j.names.len())
}

async fn finish(ctx: &Ctx, mut j: Journal, dir: &Path, resumed: bool) -> Result<ImportReport, OpsError> {
    let subject = audit_subject(&j);
    let q = AuditQuery {
        action: Some(AUDIT_ACTION.into()),
        subject: Some(subject.clone()),
        limit: 1,
        ..AuditQuery::default()
    };
    if ctx.store.audit_page(&q).await?.is_empty() {
        let detail = if j.server_keygen { "server-keygen" } else { "token" };
        ctx.audit(AUDIT_ACTION, &subject, detail, j.created_at).await?;
    }
    failpoint("import.after_audit");
    if j.state != State::Committed {
        j.state = State::Committed;
        write_journal(dir, &j)?;
    }
    let tokens = sysfs::read(&dir.join(TOKENS))?;
    publish(&j, dir, &tokens)?;
    failpoint("import.before_cleanup");
    discard(ctx, &j.id, dir)?;
    report(ctx, &j, &tokens, resumed).await
}

/// Copies the staged profiles into the operator's directory, then `tokens.csv`. DIR may be on another file system
/// than the root, so each file goes through a temp name there (created exclusively, 0600) and a rename: a kill
/// leaves at most one temp file, which the next run sweeps. Everything is rewritten, so a resumed run overwrites
/// whatever an interrupted one published.
fn publish(j: &Journal, dir: &Path, tokens: &str) -> Result<(), OpsError> {
    let out = &j.out_dir;
    sysfs::ensure_dir(out, 0o700)?;
    let mut ours: HashSet<String> = HashSet::from([TOKENS.to_owned()]);
    if j.server_keygen {
        ours.extend(j.names.iter().map(|n| format!("{n}.ovpn")));
    }
    if let Ok(entries) = std::fs::read_dir(out) {
        for e in entries.flatten() {
            let target = sysfs::temp_target(&e.path());
            if target.and_then(|t| t.file_name().map(|n| ours.contains(&*n.to_string_lossy()))) == Some(true) {
                std::fs::remove_file(e.path()).map_err(|source| sysfs::FsError::Write { path: e.path(), source })?;
            }
        }
    }
    if j.server_keygen {
        for (i, name) in j.names.iter().enumerate() {
            let file = format!("{name}.ovpn");
            let data = std::fs::read(dir.join(&file))
                .map_err(|source| sysfs::FsError::Read { path: dir.join(&file), source })?;
            let target = out.join(&file);
            let tmp = sysfs::write_temp(&target, &data, 0o600)?;
            if i == j.names.len() / 2 {
                failpoint("import.mid_publish");
            }
            sysfs::rename_into(&tmp, &target)?;
        }
        // One sync for every profile, before the staged copies can go.
        sysfs::sync_fs(out)?;
    }
    failpoint("import.before_tokens");
    // Last: its presence tells the operator the directory is complete.
    sysfs::write_atomic(&out.join(TOKENS), tokens.as_bytes(), 0o600)?;
    Ok(())
}

/// The report of a finished import, from its `tokens.csv` and the store (the same whether it ran in one go or was
/// resumed).
async fn report(ctx: &Ctx, j: &Journal, tokens: &str, resumed: bool) -> Result<ImportReport, OpsError> {
    let slices = ctx.cfg.vpn.as_ref().and_then(|v| super::instances::terminal_slices(v).ok());
    let stored: HashMap<Name, crate::db::Credential> = ctx
        .store
        .list_credentials(Some(Kind::Terminal), false)
        .await?
        .into_iter()
        .map(|c| (c.name.clone(), c))
        .collect();
    let mut terminals = Vec::with_capacity(j.names.len());
    for line in tokens.lines().skip(1) {
        let mut fields = line.splitn(3, ',');
        let (Some(name), Some(token), Some(expires)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        let name: Name = name.parse()?;
        let (home_instance, tunnel_ip) = stored.get(&name).map_or((None, None), |c| placement(c, slices.as_deref()));
        terminals.push(Added {
            token: token.to_owned(),
            token_expires_at: expires.to_owned(),
            home_instance,
            tunnel_ip,
            server_keygen: j.server_keygen,
            profile: j.server_keygen.then(|| j.out_dir.join(format!("{name}.ovpn")).display().to_string()),
            name,
        });
    }
    Ok(ImportReport {
        created: terminals.len(),
        out_dir: Some(j.out_dir.display().to_string()),
        terminals,
        resumed: resumed.then(|| j.id.clone()),
    })
}

/// What `terminal import --resume` did.
#[derive(Debug, Serialize)]
pub struct ResumeReport {
    /// Committed imports it published (at most one: a new import refuses to start while one is unfinished).
    pub finished: Vec<Finished>,
    /// Imports killed before their store commit, whose staged files it deleted (the store never had them).
    pub rolled_back: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Finished {
    pub import_id: String,
    #[serde(flatten)]
    pub report: ImportReport,
}

/// `terminal import --resume`: finishes every committed import and rolls back every uncommitted one.
pub async fn resume(ctx: &Ctx) -> Result<ResumeReport, OpsError> {
    let _lock = lock(ctx)?;
    let mut r = ResumeReport { finished: Vec::new(), rolled_back: Vec::new() };
    for f in scan(ctx).await? {
        match f {
            Found::Uncommitted { id, dir } => {
                discard(ctx, &id, &dir)?;
                if !id.starts_with(TRASH) {
                    r.rolled_back.push(id);
                }
            }
            Found::Committed { journal, dir } => {
                let import_id = journal.id.clone();
                r.finished.push(Finished { import_id, report: finish(ctx, journal, &dir, true).await? });
            }
        }
    }
    Ok(r)
}

/// An unfinished import, as `doctor` reports it.
#[derive(Debug)]
pub enum Leftover {
    /// An import holds the lock right now.
    Running,
    /// Committed, not (fully) published: terminals exist whose profiles or tokens the operator does not have.
    Committed { id: String, names: usize, out: PathBuf },
    /// Killed before its commit: staged files (keys of terminals that do not exist) wait to be deleted.
    Uncommitted { id: String },
}

/// What imports left unfinished, without changing anything.
pub async fn leftovers(ctx: &Ctx) -> Result<Vec<Leftover>, OpsError> {
    let dir = imports_dir(ctx);
    if dir.is_dir() && matches!(crate::sys::lock::try_lock_dir(&dir), Err(LockError::Held { .. })) {
        return Ok(vec![Leftover::Running]);
    }
    Ok(scan(ctx)
        .await?
        .into_iter()
        .filter_map(|f| match f {
            Found::Committed { journal: j, .. } => {
                Some(Leftover::Committed { id: j.id, names: j.names.len(), out: j.out_dir })
            }
            Found::Uncommitted { id, .. } if id.starts_with(TRASH) => None,
            Found::Uncommitted { id, .. } => Some(Leftover::Uncommitted { id }),
        })
        .collect())
}

/// See [`FAILPOINT_ENV`]. Blocks the thread for good: the process is about to be killed.
fn failpoint(name: &str) {
    if cfg!(debug_assertions) && std::env::var_os(FAILPOINT_ENV).is_some_and(|v| v == name) {
        tracing::warn!("failpoint {name} reached");
        loop {
            std::thread::park();
        }
    }
}
