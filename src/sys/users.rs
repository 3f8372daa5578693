//! Unix accounts of the services: look-ups, and creation with the system's own tools (`groupadd`, `useradd`),
//! which keep `/etc/passwd`, `/etc/shadow` and `/etc/group` consistent and locked while they change them.

use std::path::Path;

use super::cmd::{self, CmdError};

#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("looking up {what} {name}: {source}")]
    Lookup { what: &'static str, name: String, source: nix::Error },
    #[error(transparent)]
    Cmd(#[from] CmdError),
    #[error("{what} {name} was created but cannot be found")]
    Vanished { what: &'static str, name: String },
}

/// A unix user with its primary group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

pub fn user(name: &str) -> Result<Option<Account>, UsersError> {
    let u = nix::unistd::User::from_name(name).map_err(|source| UsersError::Lookup {
        what: "user",
        name: name.to_owned(),
        source,
    })?;
    Ok(u.map(|u| Account { name: u.name, uid: u.uid.as_raw(), gid: u.gid.as_raw() }))
}

/// The name of user `uid`, `None` when it has none (or the look-up fails: the caller falls back to the uid).
pub fn name_of(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok().flatten().map(|u| u.name)
}

/// The real uid of this process (who ran it, even under a set-uid binary).
pub fn real_uid() -> u32 {
    nix::unistd::getuid().as_raw()
}

pub fn group(name: &str) -> Result<Option<u32>, UsersError> {
    let g = nix::unistd::Group::from_name(name).map_err(|source| UsersError::Lookup {
        what: "group",
        name: name.to_owned(),
        source,
    })?;
    Ok(g.map(|g| g.gid.as_raw()))
}

/// Creates a system group if it is missing. Returns its gid and whether it was created.
pub fn ensure_group(name: &str) -> Result<(u32, bool), UsersError> {
    if let Some(gid) = group(name)? {
        return Ok((gid, false));
    }
    cmd::run("groupadd", ["--system", name])?;
    let gid = group(name)?.ok_or_else(|| UsersError::Vanished { what: "group", name: name.to_owned() })?;
    Ok((gid, true))
}

/// Creates a system user (no login shell, no home directory created) whose primary group is `group`, if it is
/// missing. Returns the account and whether it was created.
pub fn ensure_user(name: &str, group: &str, home: &Path) -> Result<(Account, bool), UsersError> {
    if let Some(a) = user(name)? {
        return Ok((a, false));
    }
    let home = home.to_string_lossy();
    cmd::run(
        "useradd",
        ["--system", "--no-create-home", "--home-dir", &home, "--shell", "/usr/sbin/nologin", "--gid", group, name],
    )?;
    let a = user(name)?.ok_or_else(|| UsersError::Vanished { what: "user", name: name.to_owned() })?;
    Ok((a, true))
}

/// Removes a user (tests and uninstall); a missing user is not an error.
pub fn remove_user(name: &str) -> Result<(), UsersError> {
    if user(name)?.is_some() {
        cmd::run("userdel", [name])?;
    }
    Ok(())
}

/// Removes a group (tests and uninstall); a missing group is not an error.
pub fn remove_group(name: &str) -> Result<(), UsersError> {
    if group(name)?.is_some() {
        cmd::run("groupdel", [name])?;
    }
    Ok(())
}
