//! Who owns what under the root, so that each service can read exactly what it needs and no more (set by `init`
//! as root when the service users exist; ARCHITECTURE.md, "Processes and users"):
//!
//! | path | owner:group mode | why |
//! |---|---|---|
//! | the root | `root:batm 0750` | the services walk into it; nobody else needs to |
//! | `config/`, its files | `root:batm 0750`, `0640` | every service reads the configuration; none writes it |
//! | `pki/` | `root:batm 0750` | services may look in; each key file decides who reads it |
//! | `pki/*-ca.key` and VPN server keys | `root:root 0600` | the signer (root) and the vpn service only |
//! | `pki/gate.key`, `pki/tls-crypt-v2-terminal.key` | `batmgate:root 0600` | the gate's TLS key; the key it derives terminal profiles' tls-crypt-v2 keys with |
//! | `pki/web-ui.key`, `pki/tls-crypt-v2-admin.key` | `batmadmin:root 0600` | the web UI's TLS key; the key it derives admin profiles' tls-crypt-v2 keys with |
//! | `pki/master.key` | `batmmaster:root 0600` | master's TLS key (terminals verify master by the terminal CA) |
//! | `pki/pending/`, its profiles | `batmgate:root 0700`, `0600` | server-made profiles the gate hands out once and deletes |
//! | `pki/imports/`, its staging directories and files | `root:root 0700`, `0700`, `0600` | `terminal import --out`: profiles (with their private keys), tokens and journal of an import until it is published (`ops::import`); no service reads them |
//! | `db/` (SQLite) | `root:batm 2770`, files `0660` | every service writes the store; setgid keeps `-wal`/`-shm` in group `batm` |
//! | `run/` | `root:batm 0750`; `SERVICE.lock` `0644`, owned by that service's user | single-instance locks (`flock`, holding the holder's pid), the signer's and net's sockets |
//! | `batm.download` | `batmgate:batm 0750` | the gate fetches the upgrade package into it |

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::OpsError;
use crate::app::accounts::Accounts;

fn set(path: &Path, uid: u32, gid: u32, mode: u32) -> Result<(), OpsError> {
    let err = |e: std::io::Error| OpsError::Other(format!("{}: {e}", path.display()));
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(err)
}

fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir).map(|d| d.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect()).unwrap_or_default()
}

/// One path of the table: the owner, group and mode it must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    pub path: std::path::PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

/// The table above for the paths that exist now (what `apply` sets and `doctor` compares).
pub fn expected(root: &Path, a: &Accounts, download_dir: &Path) -> Vec<Want> {
    let (g, gate, admin, master) = (a.gid, a.gate.uid, a.admin.uid, a.master.uid);
    let mut out = Vec::new();
    let mut want = |path: &Path, uid, gid, mode| out.push(Want { path: path.to_owned(), uid, gid, mode });
    // The services must be able to walk into the root; nobody outside the group needs to.
    want(root, 0, g, 0o750);
    let config = root.join("config");
    want(&config, 0, g, 0o750);
    for f in files(&config) {
        want(&f, 0, g, 0o640);
    }
    let pki = root.join("pki");
    want(&pki, 0, g, 0o750);
    for f in files(&pki) {
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        match name.as_str() {
            "gate.key" | "tls-crypt-v2-terminal.key" => want(&f, gate, 0, 0o600),
            "web-ui.key" | "tls-crypt-v2-admin.key" => want(&f, admin, 0, 0o600),
            "master.key" => want(&f, master, 0, 0o600),
            n if n.ends_with(".key") => want(&f, 0, 0, 0o600),
            _ => want(&f, 0, 0, 0o644),
        }
    }
    let pending = pki.join("pending");
    want(&pending, gate, 0, 0o700);
    for f in files(&pending) {
        want(&f, gate, 0, 0o600);
    }
    let imports = pki.join("imports");
    if imports.is_dir() {
        want(&imports, 0, 0, 0o700);
    }
    let db = root.join("db");
    if db.is_dir() {
        want(&db, 0, g, 0o2770);
        for f in files(&db) {
            want(&f, 0, g, 0o660);
        }
    }
    let run = crate::daemon::run_dir(root);
    if run.is_dir() {
        want(&run, 0, g, 0o750);
    }
    for s in crate::daemon::ALL {
        let lock = crate::daemon::lock_path(root, s);
        if !lock.exists() {
            continue;
        }
        // Each service writes its pid into its own lock file (what `doctor` reads); nobody else can write it.
        let owner = match s {
            crate::daemon::Service::Gate => a.gate.uid,
            crate::daemon::Service::Master => a.master.uid,
            crate::daemon::Service::Admin => a.admin.uid,
            _ => 0,
        };
        want(&lock, owner, 0, 0o644);
    }
    if download_dir.is_dir() {
        want(download_dir, gate, g, 0o750);
    }
    // The default `<root>/app/shared/`: the gate must be able to walk into `app/` too. (A folder elsewhere is the
    // operator's to open.)
    if let Some(parent) = download_dir.parent().filter(|p| p.starts_with(root) && *p != root && p.is_dir()) {
        want(parent, 0, g, 0o750);
    }
    out
}

/// Applies the table above (making the directories and lock files it names first). Idempotent.
pub fn apply(root: &Path, a: &Accounts, download_dir: &Path) -> Result<(), OpsError> {
    // The CLI (root) makes it 0700 when it imports; made here too so that its owner and mode are known.
    crate::sys::fs::ensure_dir(&root.join("pki").join("imports"), 0o700)?;
    let run = crate::daemon::run_dir(root);
    crate::sys::fs::ensure_dir(&run, 0o750)?;
    for s in crate::daemon::ALL {
        let lock = crate::daemon::lock_path(root, s);
        if !lock.exists() {
            crate::sys::fs::write_atomic(&lock, b"", 0o644)?;
        }
    }
    crate::sys::fs::ensure_dir(download_dir, 0o750)?;
    for w in expected(root, a, download_dir) {
        set(&w.path, w.uid, w.gid, w.mode)?;
    }
    Ok(())
}

/// Hands files just written into `pki/pending/` to that directory's owner (the gate's user), so that the gate
/// can deliver and delete them. Nothing to do when root owns the directory (one uid).
pub fn give_pending(pending_dir: &Path, paths: &[&Path]) -> Result<(), OpsError> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(pending_dir) else { return Ok(()) };
    if meta.uid() == nix::unistd::geteuid().as_raw() {
        return Ok(());
    }
    for p in paths {
        std::os::unix::fs::chown(p, Some(meta.uid()), None)
            .map_err(|e| OpsError::Other(format!("{}: {e}", p.display())))?;
    }
    Ok(())
}
