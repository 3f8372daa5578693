//! The server side of the control socket (protocol and client: `crate::control`). The socket is
//! `root:batm 0660` in a `root:batm 0750` directory (`0600`/`0700` in single-uid mode), and every request is
//! authorised by the caller's uid (`SO_PEERCRED`): root, the service's own uid and the web UI's user may kill and
//! reload; any service user may ask for the status; anything else is refused and audited.

use std::path::{Path, PathBuf};

use tokio::sync::{mpsc, oneshot};

use super::Registry;
use crate::app::accounts::Accounts;
use crate::control::{ControlError, Request, Response, server, socket_path};
use crate::db::Store;
use crate::domain::Actor;

/// Longest request line read: a `kill-many` of `control::KILL_BATCH` names of the longest kind is about 18 KiB.
const MAX_LINE: u64 = 64 * 1024;

/// Whether the caller `uid` may make `req`.
pub fn allowed(req: &Request, uid: u32, own_uid: u32, accounts: Option<&Accounts>) -> bool {
    let owner = uid == 0 || uid == own_uid;
    let admin = accounts.is_some_and(|a| a.admin.uid == uid);
    match req {
        Request::Kill { .. } | Request::KillMany { .. } | Request::Reload => owner || admin,
        Request::Status => owner || accounts.is_some_and(|a| a.service_of(uid).is_some()),
    }
}

/// Who a refused caller was, for the audit row: a service account by its service, root as the CLI (the only
/// root caller besides this service itself), anyone else by uid.
pub fn actor_of(uid: u32, accounts: Option<&Accounts>) -> Actor {
    match accounts.and_then(|a| a.service_of(uid)) {
        Some("gate") => Actor::Gate,
        Some("master") => Actor::Master,
        Some("admin") => Actor::Admin,
        // openvpn's own user: the vpn service's children.
        Some("openvpn") => Actor::Vpn,
        _ if uid == 0 => Actor::cli(uid, crate::sys::users::name_of(uid).as_deref()),
        _ => Actor::Uid(uid),
    }
}

/// Serves the control socket until the task is dropped.
pub async fn serve(
    root: PathBuf,
    store: Store,
    accounts: Option<Accounts>,
    registry: Registry,
    reload: mpsc::Sender<oneshot::Sender<()>>,
) -> Result<(), ControlError> {
    let path = socket_path(&root);
    let dir = path.parent().unwrap_or(Path::new("/")).to_owned();
    let io = |path: &Path, source: std::io::Error| ControlError::Io { path: path.to_owned(), source };
    crate::sys::fs::ensure_dir(&dir, if accounts.is_some() { 0o750 } else { 0o700 })
        .map_err(|e| io(&dir, std::io::Error::other(e.to_string())))?;
    if let Some(a) = &accounts {
        std::os::unix::fs::chown(&dir, Some(0), Some(a.gid)).map_err(|e| io(&dir, e))?;
    }
    let listener = server::bind(&path, accounts.as_ref().map(|a| a.gid)).map_err(|e| io(&path, e))?;
    let own_uid = nix::unistd::geteuid().as_raw();
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let (registry, reload, store, accounts) = (registry.clone(), reload.clone(), store.clone(), accounts.clone());
        tokio::spawn(async move {
            let Some((uid, req, mut write)) = server::read_request::<Request>(stream, MAX_LINE).await else { return };
            let resp = match req {
                Ok(req) if !allowed(&req, uid, own_uid, accounts.as_ref()) => {
                    let actor = actor_of(uid, accounts.as_ref());
                    tracing::warn!(%actor, ?req, "control socket: request refused");
                    let _ = store.audit(&actor, "control.refused", "-", &format!("{req:?}"), crate::app::now()).await;
                    Response::Error { message: format!("uid {uid} may not do this") }
                }
                Ok(Request::Kill { name }) => Response::Killed { sessions: registry.kill(&name).await },
                Ok(Request::KillMany { names }) if names.len() > crate::control::KILL_BATCH => {
                    Response::Error { message: format!("at most {} names per kill-many", crate::control::KILL_BATCH) }
                }
                Ok(Request::KillMany { names }) => Response::Killed { sessions: registry.kill_many(&names).await },
                Ok(Request::Reload) => {
                    let (tx, rx) = oneshot::channel();
                    if reload.send(tx).await.is_ok() && rx.await.is_ok() {
                        Response::Reloaded
                    } else {
                        Response::Error { message: "shutting down".into() }
                    }
                }
                Ok(Request::Status) => Response::Status { instances: registry.status().await },
                Err(message) => Response::Error { message },
            };
            server::write_response(&mut write, &resp).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_root_own_uid_and_admin_may_kill() {
        let a = Accounts::example();
        let kill = Request::Kill { name: "atm-1".parse().unwrap() };
        let many = Request::KillMany { names: vec!["atm-1".parse().unwrap(), "atm-2".parse().unwrap()] };
        for (uid, may_kill, may_status) in [
            (0, true, true),
            (500, true, true),
            (903, true, true),
            (901, false, true),
            (902, false, true),
            (77, false, false),
        ] {
            assert_eq!(allowed(&kill, uid, 500, Some(&a)), may_kill, "kill by {uid}");
            assert_eq!(allowed(&many, uid, 500, Some(&a)), may_kill, "kill-many by {uid}");
            assert_eq!(allowed(&Request::Reload, uid, 500, Some(&a)), may_kill, "reload by {uid}");
            assert_eq!(allowed(&Request::Status, uid, 500, Some(&a)), may_status, "status by {uid}");
        }
    }

    #[test]
    fn refused_callers_are_named_by_their_service_or_uid() {
        let a = Accounts::example();
        assert_eq!(actor_of(901, Some(&a)), Actor::Gate);
        assert_eq!(actor_of(904, Some(&a)), Actor::Vpn);
        assert_eq!(actor_of(902, Some(&a)), Actor::Master);
        assert_eq!(actor_of(903, Some(&a)), Actor::Admin);
        assert_eq!(actor_of(77, Some(&a)), Actor::Uid(77));
        assert_eq!(actor_of(77, None), Actor::Uid(77));
        assert!(matches!(actor_of(0, None), Actor::Cli { .. }));
    }
}
