//! Atomic, mode-correct file writes (temp file, fsync, rename, right mode from creation).

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot create directory {path}: {source}")]
    Dir { path: PathBuf, source: io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
}

/// Writes `data` to `path` atomically: a temp file in the same directory, created with `mode` (so a secret is never
/// readable by others, not even for a moment), fsynced, renamed over the target, and the directory fsynced so the
/// rename survives a power cut. A reader sees the old file or the new one, never half of one.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), FsError> {
    let err = |source| FsError::Write { path: path.to_owned(), source };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = temp_name(path).map_err(err)?;
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        // The umask may have narrowed the mode; set it exactly.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(err)
}

/// Files written by `stage`, not yet visible under their final names. Dropping it unpublished removes them, so a
/// failed bulk operation leaves nothing behind.
#[derive(Debug, Default)]
pub struct Staged {
    files: Vec<(PathBuf, PathBuf)>,
}

impl Staged {
    /// Writes `data` to a hidden temp file beside `path`, created with `mode`. Not fsynced: `publish` syncs the
    /// whole file system once, which is what makes writing thousands of profiles fast.
    pub fn stage(&mut self, path: &Path, data: &[u8], mode: u32) -> Result<(), FsError> {
        let tmp = write_temp(path, data, mode)?;
        self.files.push((tmp, path.to_owned()));
        Ok(())
    }

    /// Makes every staged file durable with one `syncfs`, renames them into place, and syncs their directories.
    pub fn publish(mut self) -> Result<(), FsError> {
        let files = std::mem::take(&mut self.files);
        let Some((first, _)) = files.first() else { return Ok(()) };
        let err = |path: &Path, source| FsError::Write { path: path.to_owned(), source };
        let f = fs::File::open(first).map_err(|e| err(first, e))?;
        nix::unistd::syncfs(&f).map_err(|e| err(first, e.into()))?;
        let mut dirs = std::collections::BTreeSet::new();
        for (tmp, path) in &files {
            fs::rename(tmp, path).map_err(|e| err(path, e))?;
            dirs.insert(path.parent().unwrap_or(Path::new(".")).to_owned());
        }
        for d in dirs {
            fs::File::open(&d).and_then(|f| f.sync_all()).map_err(|e| err(&d, e))?;
        }
        Ok(())
    }
}

/// Writes `data` to a new hidden temp file beside `path` (created exclusively, with `mode` from the start, so a
/// secret is never readable by others) and returns its name; not fsynced and not renamed: the caller renames it
/// with `rename_into` and makes it durable with `sync_fs`. A failure removes the temp file. Its name is one
/// `temp_target` maps back to `path`, so leftovers of a kill can be found and swept.
pub fn write_temp(path: &Path, data: &[u8], mode: u32) -> Result<PathBuf, FsError> {
    let tmp = temp_name(path).map_err(|source| FsError::Write { path: path.to_owned(), source })?;
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(data)
    })();
    if let Err(source) = result {
        let _ = fs::remove_file(&tmp);
        return Err(FsError::Write { path: path.to_owned(), source });
    }
    Ok(tmp)
}

/// Renames a temp file from `write_temp` over `path` (same directory, so same file system).
pub fn rename_into(tmp: &Path, path: &Path) -> Result<(), FsError> {
    fs::rename(tmp, path).map_err(|source| {
        let _ = fs::remove_file(tmp);
        FsError::Write { path: path.to_owned(), source }
    })
}

/// Makes everything written on the file system holding `dir` durable (one `syncfs`), and `dir`'s entries with it
/// (an fsync of the directory, for the renames in it).
pub fn sync_fs(dir: &Path) -> Result<(), FsError> {
    let err = |source| FsError::Write { path: dir.to_owned(), source };
    let d = fs::File::open(dir).map_err(err)?;
    nix::unistd::syncfs(&d).map_err(|e| err(e.into()))?;
    d.sync_all().map_err(err)
}

/// Makes `dir`'s entries durable (an fsync of the directory: a file or directory created in it survives a power
/// cut).
pub fn sync_dir(dir: &Path) -> Result<(), FsError> {
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|source| FsError::Write { path: dir.to_owned(), source })
}

/// Removes `dir` and everything in it; a directory already gone is fine.
pub fn remove_dir(dir: &Path) -> Result<(), FsError> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(FsError::Write { path: dir.to_owned(), source: e }),
        _ => Ok(()),
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        for (tmp, _) in &self.files {
            let _ = fs::remove_file(tmp);
        }
    }
}

/// A fresh hidden temp name beside `path` (in its directory), which [`temp_target`] maps back to `path`.
pub fn temp_name(path: &Path) -> io::Result<PathBuf> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let file_name = path.file_name().ok_or_else(|| io::Error::other("no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!("{TEMP_MARK}{}-{:08x}", std::process::id(), rand::random::<u32>()));
    Ok(dir.join(tmp_name))
}

/// A file written with no name until `publish`: opened `O_TMPFILE` in its target's directory, so a kill while it
/// is written (a backup of a large store) leaves nothing behind. Where the file system has no `O_TMPFILE`, it is a
/// hidden temp file (`write_temp`'s name, which `sweep_temps` finds) removed on drop.
#[derive(Debug)]
pub struct Unnamed {
    target: PathBuf,
    /// The temp file's name on a file system without `O_TMPFILE`.
    temp: Option<PathBuf>,
}

impl Unnamed {
    /// Opens the file that will become `target`, with `mode` from the start.
    pub fn create(target: &Path, mode: u32) -> Result<(Unnamed, fs::File), FsError> {
        let err = |source| FsError::Write { path: target.to_owned(), source };
        let dir = target.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let tmpfile =
            OpenOptions::new().write(true).mode(mode).custom_flags(nix::fcntl::OFlag::O_TMPFILE.bits()).open(dir);
        match tmpfile {
            Ok(f) => Ok((Unnamed { target: target.to_owned(), temp: None }, f)),
            // EOPNOTSUPP: the file system has no O_TMPFILE; EISDIR: a kernel that predates it.
            Err(e)
                if e.raw_os_error().is_some_and(|n| {
                    n == nix::errno::Errno::EOPNOTSUPP as i32 || n == nix::errno::Errno::EISDIR as i32
                }) =>
            {
                let temp = temp_name(target).map_err(err)?;
                let f = OpenOptions::new().write(true).create_new(true).mode(mode).open(&temp).map_err(err)?;
                Ok((Unnamed { target: target.to_owned(), temp: Some(temp) }, f))
            }
            Err(e) => Err(err(e)),
        }
    }

    /// Makes `file` (the one `create` returned, fully written) durable and gives it its name, replacing what had
    /// it; the directory is fsynced so the name survives a power cut.
    pub fn publish(mut self, file: fs::File) -> Result<(), FsError> {
        let err = |source| FsError::Write { path: self.target.clone(), source };
        file.sync_all().map_err(err)?;
        let temp = match self.temp.take() {
            Some(temp) => temp,
            None => {
                // linkat of /proc/self/fd/N (following it) names the unnamed file; a temp name first, then a rename,
                // because linkat never replaces an existing file.
                let temp = temp_name(&self.target).map_err(err)?;
                let fd_path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&file));
                nix::unistd::linkat(
                    nix::fcntl::AT_FDCWD,
                    fd_path.as_str(),
                    nix::fcntl::AT_FDCWD,
                    &temp,
                    nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW,
                )
                .map_err(|e| err(e.into()))?;
                temp
            }
        };
        rename_into(&temp, &self.target)?;
        let dir = self.target.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        fs::File::open(dir).and_then(|d| d.sync_all()).map_err(err)
    }
}

impl Drop for Unnamed {
    fn drop(&mut self) {
        if let Some(temp) = &self.temp {
            let _ = fs::remove_file(temp);
        }
    }
}

/// Every temp file cas-vpn writes has this in its name, so leftovers of a crash can be found and swept.
const TEMP_MARK: &str = ".tmp-";

/// The file a temp file written by `Staged`/`write_atomic` was meant to become, if `path` is such a temp file.
pub fn temp_target(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?.to_str()?;
    let (target, _) = name.strip_prefix('.')?.rsplit_once(TEMP_MARK)?;
    (!target.is_empty()).then(|| path.with_file_name(target))
}

/// Removes temp files a crash (kill -9) left in `dir`: they were never renamed, so nothing refers to them.
pub fn sweep_temps(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.starts_with('.') && n.contains(TEMP_MARK)
        })
        .filter(|e| fs::remove_file(e.path()).is_ok())
        .count()
}

/// Creates `dir` (and parents) if needed and sets its mode exactly, so that a directory made earlier with a looser
/// mode is tightened too.
pub fn ensure_dir(dir: &Path, mode: u32) -> Result<(), FsError> {
    let err = |source| FsError::Dir { path: dir.to_owned(), source };
    DirBuilder::new().recursive(true).mode(mode).create(dir).map_err(err)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(mode)).map_err(err)
}

/// Reads a file that may be absent: `Ok(None)` when it does not exist, an error naming the path otherwise.
pub fn read_optional(path: &Path) -> Result<Option<String>, FsError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(FsError::Read { path: path.to_owned(), source }),
    }
}

/// Reads a file that must exist, with an error naming the path.
pub fn read(path: &Path) -> Result<String, FsError> {
    fs::read_to_string(path).map_err(|source| FsError::Read { path: path.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_sets_mode_and_leaves_no_temp_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("secret.pem");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "two");
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1, "no temp files left behind");
    }

    #[test]
    fn failed_write_leaves_target_untouched() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("missing-dir").join("f");
        assert!(write_atomic(&p, b"x", 0o600).is_err());
        assert!(!p.exists());
    }

    #[test]
    fn staged_files_appear_only_on_publish_and_vanish_on_drop() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a.ovpn"), d.path().join("b.ovpn"));
        let mut s = Staged::default();
        s.stage(&a, b"A", 0o600).unwrap();
        s.stage(&b, b"B", 0o600).unwrap();
        assert!(!a.exists() && !b.exists());
        s.publish().unwrap();
        assert_eq!(fs::read_to_string(&b).unwrap(), "B");
        assert_eq!(fs::metadata(&a).unwrap().permissions().mode() & 0o777, 0o600);

        let c = d.path().join("c.ovpn");
        let mut s = Staged::default();
        s.stage(&c, b"C", 0o600).unwrap();
        drop(s);
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 2, "dropped staging leaves nothing");
    }

    #[test]
    fn a_temp_file_is_exclusive_private_and_recognisable_until_renamed() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("atm-1.ovpn");
        fs::write(&target, "old").unwrap();
        let tmp = write_temp(&target, b"new", 0o600).unwrap();
        assert_eq!(fs::metadata(&tmp).unwrap().mode() & 0o777, 0o600);
        assert_eq!(temp_target(&tmp), Some(target.clone()), "a leftover maps back to its file");
        assert_eq!(fs::read_to_string(&target).unwrap(), "old", "the target is untouched until the rename");
        rename_into(&tmp, &target).unwrap();
        sync_fs(d.path()).unwrap();
        assert_eq!(fs::read_to_string(&target).unwrap(), "new");
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);

        let sub = d.path().join("staging");
        ensure_dir(&sub, 0o700).unwrap();
        fs::write(sub.join("f"), "x").unwrap();
        remove_dir(&sub).unwrap();
        remove_dir(&sub).unwrap();
        assert!(!sub.exists());
    }

    #[test]
    fn temp_names_map_back_to_their_target() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("atm-1.ovpn");
        let tmp = temp_name(&target).unwrap();
        assert_eq!(temp_target(&tmp), Some(target.clone()));
        assert_eq!(temp_target(&target), None);
        assert_eq!(temp_target(&d.path().join(".x")), None);
    }

    #[test]
    fn sweep_removes_only_temps() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join(".x.pem.tmp-1-2"), "x").unwrap();
        fs::write(d.path().join("x.pem"), "x").unwrap();
        assert_eq!(sweep_temps(d.path()), 1);
        assert!(d.path().join("x.pem").exists());
    }

    #[test]
    fn ensure_dir_tightens_mode() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("pki");
        fs::create_dir(&p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        ensure_dir(&p, 0o700).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o700);
    }
}
