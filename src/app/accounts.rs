//! The unix accounts the services run under. As in CAS: group `batm`, users `batmgate`, `batmmaster`,
//! `batmadmin`; and `batmvpn` for openvpn itself. The prefix (`batm`) can be changed with `CAS_VPN_SERVICE_USERS=PREFIX` (two installations on one
//! machine, tests), and `CAS_VPN_SERVICE_USERS=none` runs every service under one uid (development, containers):
//! said loudly wherever it matters.

use std::path::Path;

use super::AppError;
use crate::sys::users::{self, Account};

pub const USERS_ENV: &str = "CAS_VPN_SERVICE_USERS";
pub const DEFAULT_PREFIX: &str = "batm";

/// Whether services get their own users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserMode {
    Separate { prefix: String },
    Single,
}

impl UserMode {
    /// From `CAS_VPN_SERVICE_USERS`: unset = `batm`; `none` = one uid; else a prefix of 1-16 lowercase letters
    /// and digits, starting with a letter.
    pub fn from_env() -> Result<UserMode, AppError> {
        match std::env::var(USERS_ENV) {
            Err(_) => Ok(UserMode::Separate { prefix: DEFAULT_PREFIX.into() }),
            Ok(v) => UserMode::parse(&v),
        }
    }

    pub fn parse(v: &str) -> Result<UserMode, AppError> {
        if v == "none" {
            return Ok(UserMode::Single);
        }
        let ok = (1..=16).contains(&v.len())
            && v.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && v.as_bytes()[0].is_ascii_lowercase();
        if !ok {
            return Err(AppError::Other(format!(
                "{USERS_ENV}={}: expected `none` or a user-name prefix of 1-16 lowercase letters and digits",
                crate::domain::shown(v)
            )));
        }
        Ok(UserMode::Separate { prefix: v.to_owned() })
    }
}

/// The unprivileged service accounts and their shared group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accounts {
    pub group: String,
    pub gid: u32,
    pub gate: Account,
    pub master: Account,
    pub admin: Account,
    /// openvpn's user: keeps only CAP_NET_ADMIN; reads the VPN server keys `serve vpn` copies for it.
    pub vpn: Account,
}

impl Accounts {
    /// Accounts for unit tests: group 900, gate 901, master 902, admin 903, openvpn 904.
    #[cfg(test)]
    pub(crate) fn example() -> Accounts {
        let acct = |uid, name: &str| Account { name: name.into(), uid, gid: 900 };
        Accounts {
            group: "batm".into(),
            gid: 900,
            gate: acct(901, "batmgate"),
            master: acct(902, "batmmaster"),
            admin: acct(903, "batmadmin"),
            vpn: acct(904, "batmvpn"),
        }
    }

    /// Which service a uid belongs to, for logs and audit rows.
    pub fn service_of(&self, uid: u32) -> Option<&'static str> {
        [(&self.gate, "gate"), (&self.master, "master"), (&self.admin, "admin"), (&self.vpn, "openvpn")]
            .into_iter()
            .find(|(a, _)| a.uid == uid)
            .map(|(_, s)| s)
    }
}

fn names(prefix: &str) -> [String; 4] {
    [format!("{prefix}gate"), format!("{prefix}master"), format!("{prefix}admin"), format!("{prefix}vpn")]
}

/// The accounts when they all exist; `None` in single-uid mode or when any is missing.
pub fn lookup(mode: &UserMode) -> Result<Option<Accounts>, AppError> {
    let UserMode::Separate { prefix } = mode else { return Ok(None) };
    let err = |e: users::UsersError| AppError::Other(e.to_string());
    let Some(gid) = users::group(prefix).map_err(err)? else { return Ok(None) };
    let [g, m, a, v] = names(prefix);
    let (Some(gate), Some(master), Some(admin), Some(vpn)) = (
        users::user(&g).map_err(err)?,
        users::user(&m).map_err(err)?,
        users::user(&a).map_err(err)?,
        users::user(&v).map_err(err)?,
    ) else {
        return Ok(None);
    };
    Ok(Some(Accounts { group: prefix.clone(), gid, gate, master, admin, vpn }))
}

/// Creates the group and the users where missing (root only). Returns the accounts and whether anything was
/// created; `None` in single-uid mode.
pub fn ensure(mode: &UserMode, root: &Path) -> Result<Option<(Accounts, bool)>, AppError> {
    let UserMode::Separate { prefix } = mode else { return Ok(None) };
    let err = |e: users::UsersError| AppError::Other(format!("service accounts: {e}"));
    let (_, mut created) = users::ensure_group(prefix).map_err(err)?;
    for n in names(prefix) {
        created |= users::ensure_user(&n, prefix, root).map_err(err)?.1;
    }
    Ok(lookup(mode)?.map(|a| (a, created)))
}

/// Removes the accounts of `prefix` (tests, uninstall).
pub fn remove(prefix: &str) -> Result<(), AppError> {
    let err = |e: users::UsersError| AppError::Other(e.to_string());
    for n in names(prefix) {
        users::remove_user(&n).map_err(err)?;
    }
    users::remove_group(prefix).map_err(err)
}
