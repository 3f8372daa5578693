//! Many small files written into one directory at once (`terminal import --out`: 2,000 profiles), each one
//! appearing under its name only complete and with its mode from the start, then all of them made durable.
//!
//! Why not one thread creating a temp name and renaming it per file: creating a name holds its directory's lock
//! while the file system allocates the inode, and on ext4 without a journal that allocation scans past every inode
//! freed in the last minute or so in that part of the disk (`recently_deleted`: other processes' deleted build
//! output, a previous run's files), so creations in one directory run one at a time however many threads ask. A
//! file opened `O_TMPFILE` has no name and takes no directory lock while its inode is allocated and its data
//! written; `linkat` names it once it is complete. A kill leaves nothing of a file not yet named.
//!
//! Why not one `syncfs` to make them durable: it writes every dirty page of the whole file system, other
//! processes' included, so its time follows whatever else wrote to the disk in the last 30 s (hundreds of MB while
//! a build runs), and its error says nothing of which file. Each file written is fsynced instead, from several
//! threads so that their waits overlap (the block layer merges the cache flushes of concurrent fsyncs), then the
//! directory once for the names.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::fs as sysfs;

/// Threads fsyncing at once: each mostly waits on the disk, so more than the cores; past ~32 the flushes they
/// share stop getting fewer.
const SYNC_THREADS: usize = 32;

/// Files per fsync thread below which fewer threads are started (starting one costs more than a few fsyncs).
const PER_SYNC_THREAD: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum BulkError {
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot make {path} durable: {source}")]
    Sync { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Fs(#[from] sysfs::FsError),
}

/// One file to write: its name in the directory and its content.
pub type Named<'a> = (String, &'a [u8]);

/// Writes every file into `dir` with `mode`, replacing what had its name, on one thread per core. Each is written
/// unnamed (`O_TMPFILE`) and named once complete; where the file system has no `O_TMPFILE`, or a name is taken,
/// through a hidden temp name (`sysfs::write_temp`'s, which `sysfs::temp_target` maps back) and a rename, one such
/// temp file at a time, so a kill leaves at most one. Not durable yet: see [`sync`].
pub fn write(dir: &Path, files: &[Named], mode: u32) -> Result<(), BulkError> {
    if files.is_empty() {
        return Ok(());
    }
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8).min(files.len());
    let next = AtomicUsize::new(0);
    // Held from a temp name's creation to its rename: never two temp files at once.
    let one_temp = Mutex::new(());
    // Unnamed files are named through /proc; without it (or without O_TMPFILE), temp names.
    let unnamed = AtomicBool::new(Path::new("/proc/self/fd").is_dir());
    std::thread::scope(|s| {
        let work = || -> Result<(), BulkError> {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((name, data)) = files.get(i) else { return Ok(()) };
                let target = dir.join(name);
                let err = |source| BulkError::Write { path: target.clone(), source };
                if unnamed.load(Ordering::Relaxed) {
                    match write_unnamed(dir, &target, data, mode, &one_temp) {
                        Ok(()) => continue,
                        Err(e) if no_tmpfile(&e) => unnamed.store(false, Ordering::Relaxed),
                        Err(e) => return Err(err(e)),
                    }
                }
                let _one = one_temp.lock().unwrap_or_else(|p| p.into_inner());
                let tmp = sysfs::write_temp(&target, data, mode)?;
                sysfs::rename_into(&tmp, &target)?;
            }
        };
        let handles: Vec<_> = (0..workers).map(|_| s.spawn(work)).collect();
        handles.into_iter().try_for_each(|h| h.join().expect("a file writer panicked"))
    })
}

/// Files written but not yet named: opened `O_TMPFILE`, so they can be written before their names may appear
/// (before an import's store commit) and vanish with the process if it is killed first. Each holds a descriptor
/// until named.
#[derive(Debug)]
pub struct Unnamed {
    dir: PathBuf,
    files: Vec<(String, File)>,
}

impl Unnamed {
    /// Writes every file unnamed in `dir`, on one thread per core. `None` when that cannot be done here and
    /// [`write`] must do it later: no `O_TMPFILE` on this file system, no `/proc` to name them through, or not
    /// enough descriptors for all of them at once (the soft limit is raised to the hard one if that is enough).
    pub fn write(dir: &Path, files: &[Named], mode: u32) -> Result<Option<Unnamed>, BulkError> {
        if !Path::new("/proc/self/fd").is_dir() || !descriptors_for(files.len()) {
            return Ok(None);
        }
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8).min(files.len().max(1));
        let next = AtomicUsize::new(0);
        let unsupported = AtomicBool::new(false);
        let written: Vec<Vec<(usize, File)>> = std::thread::scope(|s| {
            let work = || -> Result<Vec<(usize, File)>, BulkError> {
                let mut mine = Vec::new();
                while !unsupported.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((name, data)) = files.get(i) else { break };
                    match write_one_unnamed(dir, data, mode) {
                        Ok(f) => mine.push((i, f)),
                        Err(e) if no_tmpfile(&e) => unsupported.store(true, Ordering::Relaxed),
                        Err(source) => return Err(BulkError::Write { path: dir.join(name), source }),
                    }
                }
                Ok(mine)
            };
            let handles: Vec<_> = (0..workers).map(|_| s.spawn(work)).collect();
            handles.into_iter().map(|h| h.join().expect("a file writer panicked")).collect::<Result<_, _>>()
        })?;
        if unsupported.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let mut by_index: Vec<(usize, File)> = written.into_iter().flatten().collect();
        by_index.sort_unstable_by_key(|(i, _)| *i);
        let files = by_index.into_iter().map(|(i, f)| (files[i].0.clone(), f)).collect();
        Ok(Some(Unnamed { dir: dir.to_owned(), files }))
    }

    /// How many files are still unnamed.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether every file is named.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Names the first `n` files still unnamed (in the order given to [`Unnamed::write`]), replacing what had
    /// their names; their descriptors are closed.
    pub fn name(&mut self, n: usize) -> Result<(), BulkError> {
        let one_temp = Mutex::new(());
        for (name, f) in self.files.drain(..n.min(self.files.len())) {
            let target = self.dir.join(&name);
            name_file(&f, &target, &one_temp).map_err(|source| BulkError::Write { path: target.clone(), source })?;
        }
        Ok(())
    }
}

/// Whether `n` more descriptors can be open at once, raising the soft limit up to the hard one when that helps.
fn descriptors_for(n: usize) -> bool {
    // Headroom for what the process has open besides (the store, its runtime, the staging files).
    let want = (n as u64).saturating_add(256);
    let mut lim = nix::libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    if unsafe { nix::libc::getrlimit(nix::libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return false;
    }
    if lim.rlim_cur >= want {
        return true;
    }
    if lim.rlim_max < want {
        return false;
    }
    let raised = nix::libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
    // SAFETY: as above.
    unsafe { nix::libc::setrlimit(nix::libc::RLIMIT_NOFILE, &raised) == 0 }
}

/// EOPNOTSUPP: the file system has no `O_TMPFILE`; EISDIR: a kernel that predates it.
fn no_tmpfile(e: &io::Error) -> bool {
    e.raw_os_error().is_some_and(|n| n == nix::errno::Errno::EOPNOTSUPP as i32 || n == nix::errno::Errno::EISDIR as i32)
}

/// One file: opened unnamed in `dir`, its mode set exactly (the umask may have narrowed it), written, then named.
fn write_unnamed(dir: &Path, target: &Path, data: &[u8], mode: u32, one_temp: &Mutex<()>) -> io::Result<()> {
    name_file(&write_one_unnamed(dir, data, mode)?, target, one_temp)
}

/// One file opened unnamed in `dir`, its mode set exactly (the umask may have narrowed it), and written.
fn write_one_unnamed(dir: &Path, data: &[u8], mode: u32) -> io::Result<File> {
    let mut f =
        OpenOptions::new().write(true).mode(mode).custom_flags(nix::fcntl::OFlag::O_TMPFILE.bits()).open(dir)?;
    f.set_permissions(fs::Permissions::from_mode(mode))?;
    f.write_all(data)?;
    Ok(f)
}

/// Names the unnamed file `f` `target`, replacing what had that name.
fn name_file(f: &File, target: &Path, one_temp: &Mutex<()>) -> io::Result<()> {
    // linkat of /proc/self/fd/N, following it, names the open file (AT_EMPTY_PATH would need CAP_DAC_READ_SEARCH).
    let link = |to: &Path| {
        let fd_path = format!("/proc/self/fd/{}", f.as_raw_fd());
        nix::unistd::linkat(
            nix::fcntl::AT_FDCWD,
            fd_path.as_str(),
            nix::fcntl::AT_FDCWD,
            to,
            nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW,
        )
        .map_err(io::Error::from)
    };
    match link(target) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            // linkat never replaces: a temp name, then a rename over the old file (atomic for a reader).
            let _one = one_temp.lock().unwrap_or_else(|p| p.into_inner());
            let tmp = sysfs::temp_name(target)?;
            link(&tmp)?;
            fs::rename(&tmp, target).inspect_err(|_| {
                let _ = fs::remove_file(&tmp);
            })
        }
        other => other,
    }
}

/// Makes the files `names` in `dir` (written by [`write`] or [`Unnamed`], `bytes` in all) durable, then `dir`'s
/// entries. Two ways, both complete for these files; the cheaper one for what else is waiting to be written:
/// - one `syncfs` when the system holds little dirty data besides ours ([`SYNCFS_MAX_OTHER`]): a single pass and
///   one cache flush (16-21 ms for 2,000 profiles on this project's machine);
/// - otherwise each file reopened by name and fsynced (an fsync writes the file's dirty pages whichever descriptor
///   wrote them) on up to [`SYNC_THREADS`] threads, then `dir`: 46-72 ms for 2,000, but independent of what other
///   processes wrote, where one `syncfs` behind a build's 277 MB of dirty pages took 0.2-0.3 s.
pub fn sync(dir: &Path, names: &[String], bytes: u64) -> Result<(), BulkError> {
    let other = dirty_bytes().map(|d| d.saturating_sub(bytes));
    if other.is_some_and(|o| o <= SYNCFS_MAX_OTHER) {
        return Ok(sysfs::sync_fs(dir)?);
    }
    fsync_each(dir, names)
}

/// The fsync of each file `names` in `dir` on up to [`SYNC_THREADS`] threads, then of `dir`.
fn fsync_each(dir: &Path, names: &[String]) -> Result<(), BulkError> {
    let threads = names.len().div_ceil(PER_SYNC_THREAD).clamp(1, SYNC_THREADS);
    let next = AtomicUsize::new(0);
    let sync_one = |path: &Path| -> io::Result<()> {
        OpenOptions::new().read(true).custom_flags(nix::libc::O_NOFOLLOW).open(path)?.sync_all()
    };
    std::thread::scope(|s| {
        let work = || -> Result<(), BulkError> {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(name) = names.get(i) else { return Ok(()) };
                let path = dir.join(name);
                sync_one(&path).map_err(|source| BulkError::Sync { path, source })?;
            }
        };
        let handles: Vec<_> = (0..threads).map(|_| s.spawn(work)).collect();
        handles.into_iter().try_for_each(|h| h.join().expect("an fsync thread panicked"))
    })?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(|source| BulkError::Sync { path: dir.to_owned(), source })
}

/// Dirty data of other writers (system-wide, every file system: an upper bound for ours) up to which one `syncfs`
/// is cheaper than an fsync per file: `syncfs` wrote ~1 GB/s here, so 32 MiB costs it ~30 ms, about what the
/// fsyncs of 2,000 files cost more than a `syncfs` of nothing else.
const SYNCFS_MAX_OTHER: u64 = 32 << 20;

/// Dirty and under-writeback page cache, system-wide (`/proc/meminfo`), when it can be read.
fn dirty_bytes() -> Option<u64> {
    let info = fs::read_to_string("/proc/meminfo").ok()?;
    let kb = |key: &str| -> Option<u64> {
        let line = info.lines().find(|l| l.starts_with(key))?;
        line[key.len()..].trim().trim_end_matches("kB").trim().parse().ok()
    };
    Some((kb("Dirty:")? + kb("Writeback:")?) * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(n: usize, tag: &str) -> Vec<(String, Vec<u8>)> {
        (0..n).map(|k| (format!("f{k:03}.ovpn"), format!("{tag} {k}\n").into_bytes())).collect()
    }

    fn named(files: &[(String, Vec<u8>)]) -> Vec<Named<'_>> {
        files.iter().map(|(n, d)| (n.clone(), d.as_slice())).collect()
    }

    #[test]
    fn bulk_writes_every_file_with_its_mode_and_nothing_else() {
        let d = tempfile::tempdir().unwrap();
        let want = files(50, "one");
        write(d.path(), &named(&want), 0o600).unwrap();
        sync(d.path(), &want.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(), 0).unwrap();
        let mut seen: Vec<String> =
            fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        seen.sort();
        assert_eq!(seen, want.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(), "no temp files left");
        for (n, data) in &want {
            let p = d.path().join(n);
            assert_eq!(&fs::read(&p).unwrap(), data);
            assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }

    #[test]
    fn bulk_replaces_files_of_the_same_names() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), &named(&files(20, "old")), 0o644).unwrap();
        let new = files(20, "new, longer than the old");
        write(d.path(), &named(&new), 0o600).unwrap();
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 20);
        for (n, data) in &new {
            let p = d.path().join(n);
            assert_eq!(&fs::read(&p).unwrap(), data);
            assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }

    #[test]
    fn bulk_names_the_file_that_failed() {
        let d = tempfile::tempdir().unwrap();
        let gone = d.path().join("gone");
        let err = write(&gone, &named(&files(3, "x")), 0o600).unwrap_err();
        assert!(err.to_string().contains("gone/f00"), "{err}");
        let err = fsync_each(d.path(), &["missing.ovpn".to_owned()]).unwrap_err();
        assert!(err.to_string().contains("missing.ovpn"), "{err}");
    }

    #[test]
    fn bulk_fsyncs_each_file_and_reads_the_dirty_figure() {
        let d = tempfile::tempdir().unwrap();
        let want = files(40, "x");
        write(d.path(), &named(&want), 0o600).unwrap();
        fsync_each(d.path(), &want.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>()).unwrap();
        assert!(dirty_bytes().is_some(), "/proc/meminfo has Dirty and Writeback");
    }

    #[test]
    fn unnamed_files_appear_only_when_named_and_vanish_when_dropped() {
        let d = tempfile::tempdir().unwrap();
        let want = files(10, "u");
        let Some(mut u) = Unnamed::write(d.path(), &named(&want), 0o600).unwrap() else {
            return; // no O_TMPFILE here: `write` is the path taken, tested above
        };
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 0, "nothing visible before naming");
        u.name(4).unwrap();
        assert_eq!((fs::read_dir(d.path()).unwrap().count(), u.len()), (4, 6));
        drop(u);
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 4, "the unnamed rest left nothing");
        let mut u = Unnamed::write(d.path(), &named(&files(10, "v")), 0o600).unwrap().unwrap();
        u.name(10).unwrap();
        assert!(u.is_empty());
        for (n, data) in files(10, "v") {
            assert_eq!(fs::read(d.path().join(&n)).unwrap(), data, "{n} replaced");
            assert_eq!(fs::metadata(d.path().join(&n)).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 10, "no temp files left");
    }
}
