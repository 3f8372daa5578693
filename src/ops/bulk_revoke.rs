//! `cas-vpn revoke --file NAMES`: many credentials revoked as one change, in the order of a single `revoke`
//! (store → CRL → kill → audit), each step done once for the whole list: one store transaction (every name
//! checked first, all or nothing), one CRL per CA involved, one `kill-many` stream to the local `serve vpn`, one
//! wait for every live node's acknowledgement of the last kill event.

use std::time::Duration;

use cas_pki::RevocationReason;
use serde::Serialize;

use super::{Ctx, OpsError, crl, rfc3339};
use crate::control::{self, KILL_BATCH, Request, Response};
use crate::domain::{Kind, Name};

/// Bound for a stuck `serve vpn` answering one `kill-many` (it answers in milliseconds).
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Serialize)]
pub struct BulkItem {
    pub name: Name,
    pub kind: Kind,
    pub already_revoked: bool,
    pub serials: Vec<String>,
    /// Admin port given back to the pool.
    pub freed_port: Option<u16>,
}

#[derive(Debug, Serialize)]
pub struct CrlMade {
    pub ca: Kind,
    pub crl_number: u64,
    pub revoked: usize,
}

#[derive(Debug, Serialize)]
pub struct BulkRevoked {
    /// Credentials revoked now.
    pub revoked: usize,
    /// Already revoked ones whose kill was announced again (`--allow-revoked`).
    pub redone: usize,
    pub revoked_at: String,
    pub credentials: Vec<BulkItem>,
    /// One CRL per CA that had a credential in the list.
    pub crls: Vec<CrlMade>,
    /// Live sessions the running `serve vpn` here ended; `None` when none runs.
    pub killed_sessions: Option<usize>,
    /// On PostgreSQL: every live node's acknowledgement of all the kills, and the sessions it ended for them.
    pub nodes: Vec<super::nodes::NodeAck>,
}

/// Revokes every credential of `names` (unique, as `terminal::read_names` returns them). Unknown names, or
/// already revoked ones unless `allow_revoked`, refuse the whole list and change nothing.
pub async fn revoke_many(
    ctx: &Ctx,
    names: &[Name],
    reason: RevocationReason,
    allow_revoked: bool,
) -> Result<BulkRevoked, OpsError> {
    let now = ctx.clock.now();
    let done = ctx.store.revoke_many(names, reason, &ctx.actor, now, allow_revoked).await?;
    let mut crls = Vec::new();
    for kind in [Kind::Terminal, Kind::Admin] {
        if done.revoked.iter().any(|r| r.credential.kind == kind) {
            let r = crl::publish(ctx, kind).await?;
            crls.push(CrlMade { ca: kind, crl_number: r.crl_number, revoked: r.revoked });
        }
    }
    for r in &done.revoked {
        let pending = ctx.pki.pending_dir().join(format!("{}.ovpn", r.credential.name));
        match std::fs::remove_file(&pending) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(crate::sys::fs::FsError::Write { path: pending, source: e }.into());
            }
            _ => {}
        }
    }
    let all: Vec<Name> = done.revoked.iter().map(|r| r.credential.name.clone()).collect();
    let killed = kill_all(ctx, &all).await.map_err(|e| {
        OpsError::Other(format!(
            "{} credential(s) are revoked, but their live sessions were not confirmed ended: {e}",
            all.len()
        ))
    })?;
    let nodes =
        super::nodes::wait_for_acks_between(ctx, done.first_event, done.last_event, super::nodes::ACK_DEADLINE).await?;

    let revoked = done.revoked.iter().filter(|r| !r.already).count();
    let redone = done.revoked.len() - revoked;
    let mut detail = format!("{revoked} revoked, {redone} redone; reason: {reason}; crl ");
    detail.push_str(&crls.iter().map(|c| format!("{} #{}", c.ca, c.crl_number)).collect::<Vec<_>>().join(", "));
    match killed {
        Some(n) => detail.push_str(&format!("; {n} live session(s) ended")),
        None => detail.push_str("; no serve running"),
    }
    detail.push_str(&super::nodes::acks_detail(&nodes));
    ctx.audit("revoke.bulk", &format!("{} credential(s)", all.len()), &detail, ctx.clock.now()).await?;
    if done.revoked.iter().any(|r| r.credential.kind == Kind::Admin) {
        // Their instances stop, their ports are free, and the firewall closes them (as a single revoke does).
        let _ = control::request(&ctx.cfg.root, &Request::Reload, super::revoke::RELOAD_TIMEOUT).await;
        super::firewall::poke_net(ctx).await;
    }
    Ok(BulkRevoked {
        revoked,
        redone,
        revoked_at: rfc3339(now),
        credentials: done
            .revoked
            .into_iter()
            .map(|r| BulkItem {
                freed_port: if r.already { None } else { r.credential.admin_port },
                name: r.credential.name,
                kind: r.credential.kind,
                already_revoked: r.already,
                serials: r.serials,
            })
            .collect(),
        crls,
        killed_sessions: killed,
        nodes,
    })
}

/// Ends the live sessions of `names` through the local `serve vpn`: `kill-many` requests of [`KILL_BATCH`]
/// names; a service from before `kill-many` answers an error, and then each name gets its own `kill`.
/// `Ok(None)` when no `serve vpn` runs here.
async fn kill_all(ctx: &Ctx, names: &[Name]) -> Result<Option<usize>, OpsError> {
    let root = &ctx.cfg.root;
    let ask = |req: Request| async move {
        control::request(root, &req, KILL_TIMEOUT).await.map_err(|e| OpsError::Other(e.to_string()))
    };
    let mut total = 0;
    for chunk in names.chunks(KILL_BATCH) {
        match ask(Request::KillMany { names: chunk.to_vec() }).await? {
            None => return Ok(None),
            Some(Response::Killed { sessions }) => total += sessions,
            Some(Response::Error { .. }) => {
                for name in chunk {
                    match ask(Request::Kill { name: name.clone() }).await? {
                        None => return Ok(None),
                        Some(Response::Killed { sessions }) => total += sessions,
                        Some(other) => return Err(unexpected(other)),
                    }
                }
            }
            Some(other) => return Err(unexpected(other)),
        }
    }
    Ok(Some(total))
}

fn unexpected(answer: Response) -> OpsError {
    OpsError::Other(format!("unexpected answer from the running cas-vpn: {answer:?}"))
}
