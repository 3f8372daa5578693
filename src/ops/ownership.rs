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

/// Applies the table above. Idempotent.
pub fn apply(root: &Path, a: &Accounts, download_dir: &Path) -> Result<(), OpsError> {
    let (g, gate, admin, master) = (a.gid, a.gate.uid, a.admin.uid, a.master.uid);
    // The services must be able to walk into the root; nobody outside the group needs to.
    set(root, 0, g, 0o750)?;
    let config = root.join("config");
    set(&config, 0, g, 0o750)?;
    for f in files(&config) {
        set(&f, 0, g, 0o640)?;
    }
    let pki = root.join("pki");
    set(&pki, 0, g, 0o750)?;
    for f in files(&pki) {
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        match name.as_str() {
            "gate.key" | "tls-crypt-v2-terminal.key" => set(&f, gate, 0, 0o600)?,
            "web-ui.key" | "tls-crypt-v2-admin.key" => set(&f, admin, 0, 0o600)?,
            "master.key" => set(&f, master, 0, 0o600)?,
            n if n.ends_with(".key") => set(&f, 0, 0, 0o600)?,
            _ => set(&f, 0, 0, 0o644)?,
        }
    }
    let pending = pki.join("pending");
    set(&pending, gate, 0, 0o700)?;
    for f in files(&pending) {
        set(&f, gate, 0, 0o600)?;
    }
    // The CLI (root) makes it 0700 when it imports; made here too so that its owner and mode are known.
    let imports = pki.join("imports");
    crate::sys::fs::ensure_dir(&imports, 0o700)?;
    set(&imports, 0, 0, 0o700)?;
    let db = root.join("db");
    if db.is_dir() {
        set(&db, 0, g, 0o2770)?;
        for f in files(&db) {
            set(&f, 0, g, 0o660)?;
        }
    }
    let run = crate::daemon::run_dir(root);
    crate::sys::fs::ensure_dir(&run, 0o750)?;
    set(&run, 0, g, 0o750)?;
    for s in crate::daemon::ALL {
        let lock = crate::daemon::lock_path(root, s);
        if !lock.exists() {
            crate::sys::fs::write_atomic(&lock, b"", 0o644)?;
        }
        // Each service writes its pid into its own lock file (what `doctor` reads); nobody else can write it.
        let owner = match s {
            crate::daemon::Service::Gate => a.gate.uid,
            crate::daemon::Service::Master => a.master.uid,
            crate::daemon::Service::Admin => a.admin.uid,
            _ => 0,
        };
        set(&lock, owner, 0, 0o644)?;
    }
    crate::sys::fs::ensure_dir(download_dir, 0o750)?;
    set(download_dir, gate, g, 0o750)?;
    // The default `<root>/app/shared/`: the gate must be able to walk into `app/` too. (A folder elsewhere is the
    // operator's to open.)
    if let Some(parent) = download_dir.parent().filter(|p| p.starts_with(root) && *p != root) {
        set(parent, 0, g, 0o750)?;
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
