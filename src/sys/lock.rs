//! Single-instance locks: an exclusive `flock` on a file, held for the life of the process. The kernel drops it
//! when the process dies, however it dies, so a stale lock cannot outlive its owner. The lock file holds the
//! owner's pid, for the message a second instance prints.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{path}: {source}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("already running (pid {pid}; lock {path})")]
    Held { path: PathBuf, pid: String },
    #[error("{path}: {source}")]
    Lock { path: PathBuf, source: nix::Error },
}

/// Held while alive; dropping it (or dying) releases the lock.
#[derive(Debug)]
pub struct InstanceLock {
    _lock: Flock<File>,
}

/// Takes the lock at `path` without waiting. The file is created (0644) when missing and the caller may create
/// it; otherwise it is opened read-only, which is all `flock` needs, so an unprivileged service can lock a file
/// root made for it.
pub fn try_lock(path: &Path) -> Result<InstanceLock, LockError> {
    let open_err = |source| LockError::Open { path: path.to_owned(), source };
    let file = match OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o644).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => File::open(path).map_err(open_err)?,
        Err(e) => return Err(open_err(e)),
    };
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(mut lock) => {
            // Best effort: a read-only lock file keeps the previous pid, which only affects a message.
            let _ = lock.set_len(0).and_then(|_| lock.rewind()).and_then(|_| writeln!(lock, "{}", std::process::id()));
            Ok(InstanceLock { _lock: lock })
        }
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            Err(LockError::Held {
                path: path.to_owned(),
                pid: if pid.is_empty() { "unknown".into() } else { pid.into() },
            })
        }
        Err((_, source)) => Err(LockError::Lock { path: path.to_owned(), source }),
    }
}

/// Takes an exclusive lock on the directory `dir` itself without waiting, writing nothing (so taking it changes no
/// file); a holder is reported with an unknown pid.
pub fn try_lock_dir(dir: &Path) -> Result<InstanceLock, LockError> {
    let file = File::open(dir).map_err(|source| LockError::Open { path: dir.to_owned(), source })?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(InstanceLock { _lock: lock }),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            Err(LockError::Held { path: dir.to_owned(), pid: "unknown".into() })
        }
        Err((_, source)) => Err(LockError::Lock { path: dir.to_owned(), source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_and_names_the_holder_until_the_first_is_dropped() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("svc.lock");
        let first = try_lock(&p).unwrap();
        match try_lock(&p) {
            Err(LockError::Held { pid, .. }) => assert_eq!(pid, std::process::id().to_string()),
            other => panic!("expected Held, got {other:?}"),
        }
        drop(first);
        try_lock(&p).unwrap();
    }

    #[test]
    fn a_directory_lock_is_exclusive_and_writes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let first = try_lock_dir(d.path()).unwrap();
        assert!(matches!(try_lock_dir(d.path()), Err(LockError::Held { .. })));
        drop(first);
        try_lock_dir(d.path()).unwrap();
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }
}
