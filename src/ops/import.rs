//! `terminal import --out DIR`, crash-safe and resumable (invariant 9): a kill -9 at any moment leaves an import
//! that the next import of the root, or `terminal import --resume`, rolls back or finishes, and never a private
//! key outside the root's private directories other than the profiles it publishes.
//!
//! ```text
//!  make (memory) → stage in pki/imports/<id>/staged.bundle (every profile and tokens.csv in one file, fsynced)
//!    → journal.json (atomic) → store commit (one transaction, audit row in it, durable) → journal: committed
//!    → publish: each profile named in DIR (written there unnamed, O_TMPFILE 0600, during staging and commit)
//!    → the profiles made durable (`sys::bulk::sync`) → tokens.csv last
//!    → the staging directory goes (renamed to .trash-<id>, then its two files deleted)
//! ```
//! The profiles are written into DIR while the bundle is staged and the store commits (both mostly wait on the
//! disk), but without names (`sys::bulk::Unnamed`): a kill before the commit leaves nothing of them, and after it
//! only the names are left to give. Where that cannot be done (no `O_TMPFILE`, too few descriptors, a resume),
//! they are written after the commit (`sys::bulk::write`).
//! Staging is one file ([`Bundle`]) rather than one per profile: creating, reading back and deleting 2,000 staged
//! files cost more than making the keys. The run that staged it publishes from memory; only a resume reads it,
//! checking its SHA-256 first (a truncated or damaged bundle is refused, changing nothing). Staging directories of
//! older versions (one `NAME.ovpn` per profile beside `tokens.csv`; their journal has no `staging` field) are still
//! resumed from those files.
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
use sha2::{Digest, Sha256};

use super::terminal::{AddOptions, Added, Batch, ImportReport, Progress, placement};
use super::{Ctx, OpsError};
use crate::db::{AuditQuery, Credential};
use crate::domain::{Kind, Name};
use crate::sys::bulk;
use crate::sys::fs as sysfs;
use crate::sys::lock::{InstanceLock, LockError};

/// Test hook (debug builds only): `CAS_VPN_FAILPOINT=import.<moment>` makes an import stop at that moment, log
/// `failpoint <name> reached` and wait to be killed. Moments: `before_commit`, `after_commit`, `after_audit`,
/// `mid_publish` (half the profiles named, the others written but unnamed), `before_tokens`, `before_cleanup`.
/// Release builds ignore it.
pub const FAILPOINT_ENV: &str = "CAS_VPN_FAILPOINT";

const JOURNAL: &str = "journal.json";
const TOKENS: &str = "tokens.csv";
const BUNDLE: &str = "staged.bundle";
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
        "{path}: unreadable import journal ({why}); nothing was changed: its import's staged profiles and tokens are beside it"
    )]
    Journal { path: PathBuf, why: String },
    #[error(
        "{path}: damaged import bundle ({why}); nothing was changed. Import {id} is committed (its {names} terminals \
         are in the store) but its staged profiles and tokens are lost: revoke those terminals (`cas-vpn revoke \
         --file NAMES`), delete {dir} and import them again"
    )]
    Bundle { path: PathBuf, why: String, id: String, names: usize, dir: PathBuf },
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

/// How an import's profiles and tokens are staged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Staging {
    /// `NAME.ovpn` per profile and `tokens.csv`: imports staged by versions before the bundle (their journal has
    /// no `staging` field), still resumed.
    #[default]
    Files,
    /// One `staged.bundle` ([`Bundle`]).
    Bundle,
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
    #[serde(default)]
    staging: Staging,
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
                report = Some(finish_found(ctx, journal, &dir).await?);
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
    let mut laps = Laps::start();
    let batch = Batch::make(ctx, &names, opts, &ctx.store.list_nodes().await?, progress)?;
    laps.lap("make");
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
        staging: Staging::Bundle,
    };
    let tokens = batch.tokens_csv();
    let staged =
        Staged { profiles: batch.profiles().map(|(n, p)| (n.as_str(), p.as_bytes())).collect(), tokens: &tokens };
    // The profiles are written into DIR unnamed (O_TMPFILE) while the bundle is staged and the store commits,
    // which wait on the disk and one core; only their names wait for the commit. Killed before they are named,
    // they vanish with the process. A copy: the writer runs beside the awaited commit.
    let owned: Vec<(String, Vec<u8>)> =
        staged.profiles.iter().map(|(n, p)| (format!("{n}.ovpn"), p.to_vec())).collect();
    let target = journal.out_dir.clone();
    let unnamed = std::thread::spawn(move || {
        let files: Vec<bulk::Named> = owned.iter().map(|(n, p)| (n.clone(), p.as_slice())).collect();
        bulk::Unnamed::write(&target, &files, 0o600)
    });
    let stage = (|| -> Result<(), OpsError> {
        sysfs::ensure_dir(&dir, 0o700)?;
        // Durable before the journal exists: a committed import's keys must survive a power cut. The bundle is
        // fsynced with its directory's entry (write_atomic), and `imports/` for the staging directory's own.
        sysfs::write_atomic(&dir.join(BUNDLE), &Bundle::encode(&staged), 0o600)?;
        sysfs::sync_dir(&imports_dir(ctx))?;
        write_journal(&dir, &journal)
    })();
    if let Err(e) = stage {
        drop(unnamed.join());
        let _ = discard(ctx, &id, &dir);
        return Err(e);
    }
    laps.lap("stage");
    failpoint("import.before_commit");
    // The audit row goes in with the terminals; `finish` still writes it if missing (journals of older runs).
    let audit = ctx.audit_entry(
        AUDIT_ACTION,
        &audit_subject(&journal),
        if journal.server_keygen { "server-keygen" } else { "token" },
    );
    let created = match batch.commit(ctx, &audit).await {
        Ok(created) => created,
        Err(e) => {
            drop(unnamed.join());
            // Only a batch the store certainly does not hold is rolled back; in doubt, the next import or
            // `--resume` decides from the store.
            if matches!(ctx.store.token(&journal.marker_token).await, Ok(None)) {
                discard(ctx, &id, &dir)?;
            }
            return Err(e);
        }
    };
    laps.lap("commit");
    // A writer that failed is not fatal: publishing writes whatever is not ready (and says what fails).
    let unnamed = match unnamed.join() {
        Ok(Ok(u)) => u,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "profiles not written ahead; writing them now");
            None
        }
        Err(_) => None,
    };
    laps.lap("profiles written");
    failpoint("import.after_commit");
    // Published from memory: the bundle is only read back by a resume.
    let report = finish(ctx, journal, &dir, &staged, unnamed, Some(created), &mut laps).await;
    tracing::debug!(laps = %laps, "import timings");
    report
}

/// Where an import's time went, for `RUST_LOG=cas_vpn::ops::import=debug`: each step's wall time, in order.
struct Laps {
    last: std::time::Instant,
    laps: Vec<(&'static str, std::time::Duration)>,
}

impl Laps {
    fn start() -> Laps {
        Laps { last: std::time::Instant::now(), laps: Vec::new() }
    }

    /// Ends the step `name` now.
    fn lap(&mut self, name: &'static str) {
        let now = std::time::Instant::now();
        self.laps.push((name, now - self.last));
        self.last = now;
    }
}

impl std::fmt::Display for Laps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (k, (name, d)) in self.laps.iter().enumerate() {
            write!(f, "{}{name} {:.1} ms", if k == 0 { "" } else { ", " }, d.as_secs_f64() * 1e3)?;
        }
        Ok(())
    }
}

fn write_journal(dir: &Path, j: &Journal) -> Result<(), OpsError> {
    let text = serde_json::to_string_pretty(j).map_err(|e| OpsError::Other(e.to_string()))?;
    Ok(sysfs::write_atomic(&dir.join(JOURNAL), text.as_bytes(), 0o600)?)
}

/// The subject of an import's audit row (unique: it names the import).
fn audit_subject(j: &Journal) -> String {
    format!("import {}: {} terminals", j.id, j.names.len())
}

/// An import's staged profiles (name without `.ovpn`, content) and `tokens.csv`, borrowed from the batch in memory
/// or from a [`Bundle`] read back.
#[derive(Debug, PartialEq, Eq)]
pub struct Staged<'a> {
    pub profiles: Vec<(&'a str, &'a [u8])>,
    pub tokens: &'a str,
}

/// An import's staging file, `pki/imports/<id>/staged.bundle`: every profile and `tokens.csv` in one file, so that
/// staging costs one file creation, not one per profile. Length-prefixed, with a SHA-256 of everything before it
/// at its end, so a truncated or damaged bundle is told from a good one before anything is published from it:
///
/// ```text
/// "cas-vpn import bundle 1\n"  u64 count  (u64 len, name, u64 len, profile) × count  u64 len, tokens.csv
/// SHA-256 (32 bytes) of all of the above      (integers little-endian)
/// ```
pub struct Bundle {
    bytes: Vec<u8>,
}

impl Bundle {
    const MAGIC: &'static [u8] = b"cas-vpn import bundle 1\n";

    /// The bundle's bytes for `staged`.
    pub fn encode(staged: &Staged) -> Vec<u8> {
        let size = staged.profiles.iter().map(|(n, p)| 16 + n.len() + p.len()).sum::<usize>();
        let mut b = Vec::with_capacity(Self::MAGIC.len() + 8 + size + 8 + staged.tokens.len() + 32);
        b.extend_from_slice(Self::MAGIC);
        b.extend_from_slice(&(staged.profiles.len() as u64).to_le_bytes());
        let chunk = |b: &mut Vec<u8>, data: &[u8]| {
            b.extend_from_slice(&(data.len() as u64).to_le_bytes());
            b.extend_from_slice(data);
        };
        for (name, profile) in &staged.profiles {
            chunk(&mut b, name.as_bytes());
            chunk(&mut b, profile);
        }
        chunk(&mut b, staged.tokens.as_bytes());
        let sum = Sha256::digest(&b);
        b.extend_from_slice(&sum);
        b
    }

    /// Reads a bundle file (not yet checked: see [`Bundle::staged`]).
    pub fn read(path: &Path) -> Result<Bundle, OpsError> {
        let bytes = std::fs::read(path).map_err(|source| sysfs::FsError::Read { path: path.to_owned(), source })?;
        Ok(Bundle { bytes })
    }

    /// Its content, once its header, checksum and every length are checked; what is wrong otherwise.
    pub fn staged(&self) -> Result<Staged<'_>, String> {
        let b = &self.bytes;
        if !b.starts_with(Self::MAGIC) {
            return Err("not an import bundle: no header".into());
        }
        let Some(body_len) = b.len().checked_sub(32).filter(|&n| n >= Self::MAGIC.len()) else {
            return Err(format!("truncated: {} bytes", b.len()));
        };
        let (body, sum) = b.split_at(body_len);
        if Sha256::digest(body).as_slice() != sum {
            return Err("checksum mismatch: truncated or damaged".into());
        }
        let mut rest = &body[Self::MAGIC.len()..];
        let count = take_u64(&mut rest)?;
        let mut profiles = Vec::with_capacity(usize::try_from(count).unwrap_or(0).min(rest.len() / 16));
        for _ in 0..count {
            let name = std::str::from_utf8(take_chunk(&mut rest)?).map_err(|_| "a name is not UTF-8")?;
            profiles.push((name, take_chunk(&mut rest)?));
        }
        let tokens = std::str::from_utf8(take_chunk(&mut rest)?).map_err(|_| "tokens.csv is not UTF-8")?;
        if !rest.is_empty() {
            return Err(format!("{} bytes after tokens.csv", rest.len()));
        }
        Ok(Staged { profiles, tokens })
    }
}

fn take_u64(rest: &mut &[u8]) -> Result<u64, String> {
    let (n, tail) = rest.split_first_chunk::<8>().ok_or("a length runs past the end")?;
    *rest = tail;
    Ok(u64::from_le_bytes(*n))
}

fn take_chunk<'a>(rest: &mut &'a [u8]) -> Result<&'a [u8], String> {
    let len = usize::try_from(take_u64(rest)?).map_err(|_| "a length too large")?;
    if len > rest.len() {
        return Err("a length runs past the end".into());
    }
    let (chunk, tail) = rest.split_at(len);
    *rest = tail;
    Ok(chunk)
}

/// What a resume reads from a staging directory: a bundle, or the files of an older version.
enum Loaded {
    Bundle(Bundle),
    Files { profiles: Vec<(String, Vec<u8>)>, tokens: String },
}

impl Loaded {
    fn read(j: &Journal, dir: &Path) -> Result<Loaded, OpsError> {
        Ok(match j.staging {
            Staging::Bundle => Loaded::Bundle(Bundle::read(&dir.join(BUNDLE))?),
            Staging::Files => {
                let mut profiles = Vec::new();
                if j.server_keygen {
                    for name in &j.names {
                        let path = dir.join(format!("{name}.ovpn"));
                        let data = std::fs::read(&path).map_err(|source| sysfs::FsError::Read { path, source })?;
                        profiles.push((name.to_string(), data));
                    }
                }
                Loaded::Files { profiles, tokens: sysfs::read(&dir.join(TOKENS))? }
            }
        })
    }

    /// The staged content, checked against the journal: every profile of its names, in order, or none.
    fn staged(&self, j: &Journal, dir: &Path) -> Result<Staged<'_>, OpsError> {
        let staged = match self {
            Loaded::Bundle(b) => b.staged(),
            Loaded::Files { profiles, tokens } => {
                Ok(Staged { profiles: profiles.iter().map(|(n, p)| (n.as_str(), p.as_slice())).collect(), tokens })
            }
        };
        let staged = staged.and_then(|s| {
            let want: Vec<&str> = if j.server_keygen { j.names.iter().map(Name::as_str).collect() } else { vec![] };
            let names: Vec<&str> = s.profiles.iter().map(|(n, _)| *n).collect();
            if names != want {
                return Err(format!(
                    "{} profiles staged, not those of the journal's {} names",
                    names.len(),
                    want.len()
                ));
            }
            Ok(s)
        });
        staged.map_err(|why| {
            let (id, names, dir) = (j.id.clone(), j.names.len(), dir.to_owned());
            ImportError::Bundle { path: dir.join(BUNDLE), why, id, names, dir }.into()
        })
    }
}

/// Finishes a committed import found on disk: its staged content is read and checked first, so a damaged bundle
/// is refused before anything changes.
async fn finish_found(ctx: &Ctx, j: Journal, dir: &Path) -> Result<ImportReport, OpsError> {
    let loaded = Loaded::read(&j, dir)?;
    let staged = loaded.staged(&j, dir)?;
    finish(ctx, j, dir, &staged, None, None, &mut Laps::start()).await
}

/// Finishes a committed import: its audit row (exactly once), then publishing, then the staging directory goes.
/// Idempotent: any step may have been done before by a killed run.
async fn finish(
    ctx: &Ctx,
    mut j: Journal,
    dir: &Path,
    staged: &Staged<'_>,
    unnamed: Option<bulk::Unnamed>,
    created: Option<Vec<Credential>>,
    laps: &mut Laps,
) -> Result<ImportReport, OpsError> {
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
    laps.lap("audit and journal");
    publish(&j, staged, unnamed, laps)?;
    failpoint("import.before_cleanup");
    discard(ctx, &j.id, dir)?;
    laps.lap("cleanup");
    let r = report(ctx, &j, staged.tokens, created).await;
    laps.lap("report");
    r
}

/// Writes the staged profiles into the operator's directory (names `unnamed`, those written ahead, else writes
/// them: `sys::bulk`), makes them durable, then `tokens.csv`. DIR may be on another file system than the root, so
/// nothing is renamed from the root: a file is written unnamed in DIR and named once complete, or, where that
/// cannot be, through a temp name there (0600) and a rename, one at a time: a kill leaves at most one temp file,
/// which the next run sweeps. Everything is rewritten, so a resumed run overwrites whatever an interrupted one
/// published.
fn publish(j: &Journal, staged: &Staged, unnamed: Option<bulk::Unnamed>, laps: &mut Laps) -> Result<(), OpsError> {
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
    laps.lap("sweep");
    if j.server_keygen {
        let files: Vec<bulk::Named> = staged.profiles.iter().map(|(n, p)| (format!("{n}.ovpn"), *p)).collect();
        let half = files.len() / 2;
        match unnamed {
            // Written ahead, in this order: only their names are left to give.
            Some(mut u) if u.len() == files.len() => {
                u.name(half)?;
                failpoint("import.mid_publish");
                u.name(files.len() - half)?;
            }
            _ => {
                let (first, second) = files.split_at(half);
                bulk::write(out, first, 0o600)?;
                failpoint("import.mid_publish");
                bulk::write(out, second, 0o600)?;
            }
        }
        laps.lap("name profiles");
        // Durable before the staged copies can go.
        let bytes = files.iter().map(|(_, p)| p.len() as u64).sum();
        bulk::sync(out, &files.into_iter().map(|(n, _)| n).collect::<Vec<_>>(), bytes)?;
        laps.lap("sync profiles");
    }
    failpoint("import.before_tokens");
    // Last: its presence tells the operator the directory is complete.
    sysfs::write_atomic(&out.join(TOKENS), staged.tokens.as_bytes(), 0o600)?;
    laps.lap("tokens");
    Ok(())
}

/// The report of a finished import, from its `tokens.csv` and its terminals' rows: `created`, those its commit
/// returned, or for a resumed import (`None`) the store's (the same report either way; reading back 2,000 rows
/// the commit has just returned cost 10-35 ms).
async fn report(
    ctx: &Ctx,
    j: &Journal,
    tokens: &str,
    created: Option<Vec<Credential>>,
) -> Result<ImportReport, OpsError> {
    let slices = ctx.cfg.vpn.as_ref().and_then(|v| super::instances::terminal_slices(v).ok());
    let resumed = created.is_none();
    let rows = match created {
        Some(rows) => rows,
        None => ctx.store.list_credentials(Some(Kind::Terminal), false).await?,
    };
    let stored: HashMap<Name, Credential> = rows.into_iter().map(|c| (c.name.clone(), c)).collect();
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
                r.finished.push(Finished { import_id, report: finish_found(ctx, journal, &dir).await? });
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Vec<(String, Vec<u8>)>, String) {
        let profiles =
            (0..3).map(|k| (format!("atm-{k}"), format!("client\n<key>\n{k}\n</key>\n").into_bytes())).collect();
        (profiles, "name,token,expires_at\natm-0,cv1.x,2030-01-01T00:00:00Z\n".into())
    }

    #[test]
    fn import_bundle_round_trips() {
        let (profiles, tokens) = sample();
        let staged =
            Staged { profiles: profiles.iter().map(|(n, p)| (n.as_str(), p.as_slice())).collect(), tokens: &tokens };
        let b = Bundle { bytes: Bundle::encode(&staged) };
        assert_eq!(b.staged().unwrap(), staged);
        let empty = Staged { profiles: vec![], tokens: "" };
        assert_eq!(Bundle { bytes: Bundle::encode(&empty) }.staged().unwrap(), empty);
    }

    #[test]
    fn import_bundle_refuses_every_truncation_and_every_changed_byte() {
        let (profiles, tokens) = sample();
        let staged =
            Staged { profiles: profiles.iter().map(|(n, p)| (n.as_str(), p.as_slice())).collect(), tokens: &tokens };
        let good = Bundle::encode(&staged);
        for len in 0..good.len() {
            assert!(Bundle { bytes: good[..len].to_vec() }.staged().is_err(), "cut at {len}");
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(Bundle { bytes: longer }.staged().is_err());
        for at in 0..good.len() {
            let mut bytes = good.clone();
            bytes[at] ^= 1;
            assert!(Bundle { bytes }.staged().is_err(), "byte {at} changed");
        }
    }

    #[test]
    fn import_bundle_with_a_good_checksum_but_bad_lengths_is_refused() {
        // A bundle whose checksum matches what it says, but whose lengths do not add up (a bug, not a disk).
        let mut body = Bundle::MAGIC.to_vec();
        body.extend_from_slice(&u64::MAX.to_le_bytes());
        body.extend_from_slice(&5u64.to_le_bytes());
        body.extend_from_slice(b"ab");
        let sum = Sha256::digest(&body);
        body.extend_from_slice(&sum);
        let err = Bundle { bytes: body }.staged().unwrap_err();
        assert!(err.contains("past the end"), "{err}");
    }
}
