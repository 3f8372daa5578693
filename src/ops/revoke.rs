//! `cas-vpn revoke NAME`: store first (the source of truth), then a new CRL, then any undelivered profile is
//! deleted, then (with the VPN runtime) live sessions are killed. Revoking an already revoked name redoes the
//! later steps, so a crash between two steps heals on the next try.

use cas_pki::RevocationReason;
use serde::Serialize;

use std::time::Duration;

use super::{Ctx, OpsError, crl, rfc3339};
use crate::control::{self, Request, Response};
use crate::db::{DbError, EventKind};

/// The running `serve` answers a kill in milliseconds; this is only a bound for a stuck one.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);
pub(crate) const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);
use crate::domain::{Kind, Name};

#[derive(Debug, Serialize)]
pub struct Revoked {
    pub name: Name,
    pub kind: Kind,
    pub already_revoked: bool,
    pub revoked_at: String,
    pub serials: Vec<String>,
    pub crl_number: u64,
    /// Admin port given back to the pool.
    pub freed_port: Option<u16>,
    /// Live sessions the running `serve` ended; `None` when no `serve` runs (then there are none).
    pub killed_sessions: Option<usize>,
    /// On PostgreSQL: every live node's acknowledgement of the kill (its sessions ended), or that it gave none
    /// within the deadline. Empty on SQLite (one node: `killed_sessions`).
    pub nodes: Vec<super::nodes::NodeAck>,
}

pub async fn revoke(ctx: &Ctx, name: &Name, reason: RevocationReason) -> Result<Revoked, OpsError> {
    // Each step's time at debug level (`RUST_LOG=cas_vpn=debug`): where a slow revocation spent it.
    let started = std::time::Instant::now();
    let step =
        |what: &str| tracing::debug!(credential = %name, ms = started.elapsed().as_millis() as u64, "revoke: {what}");
    let (cred, serials, event, already) = match ctx.store.revoke(name, reason, &ctx.actor, ctx.clock.now()).await {
        Ok((cred, serials, event)) => (cred, serials, event, false),
        Err(DbError::AlreadyRevoked { .. }) => {
            let cred = ctx
                .store
                .credential_by_name(name)
                .await?
                .ok_or_else(|| DbError::NotFound { what: format!("credential {name}") })?;
            // The redo reaches every node again (one may have missed the first, e.g. down at the time).
            let event = ctx.store.publish_event(EventKind::Kill, name.as_str(), None, ctx.clock.now()).await?;
            (cred, Vec::new(), event, true)
        }
        Err(e) => return Err(e.into()),
    };
    step("stored");
    let report = crl::publish(ctx, cred.kind).await?;
    step("CRL published");
    let pending = ctx.pki.pending_dir().join(format!("{name}.ovpn"));
    if pending.exists() {
        std::fs::remove_file(&pending)
            .map_err(|source| crate::sys::fs::FsError::Write { path: pending.clone(), source })?;
    }
    // The store already refuses the credential (every CONNECT/REAUTH asks it) and the CRL is in place; now end
    // what is live. Only then is the revocation complete, so only then does the command return.
    let killed = match control::request(&ctx.cfg.root, &Request::Kill { name: cred.name.clone() }, KILL_TIMEOUT)
        .await
        .map_err(|e| {
        OpsError::Other(format!("{name} is revoked, but its live session was not confirmed ended: {e}"))
    })? {
        Some(Response::Killed { sessions }) => Some(sessions),
        Some(other) => return Err(OpsError::Other(format!("unexpected answer from the running cas-vpn: {other:?}"))),
        None => None,
    };
    step("live sessions ended");
    // Every other node ends its sessions of the credential from the store's event (PostgreSQL NOTIFY, then
    // catch-up); wait for each live one to say so.
    let nodes = super::nodes::wait_for_acks(ctx, event, None, super::nodes::ACK_DEADLINE).await?;
    // Last step of the revocation order (store → CRL → kill → audit): what the kill did, next to the store's own
    // revocation row.
    let mut detail = match killed {
        Some(n) => format!("crl #{}; {n} live session(s) ended", report.crl_number),
        None => format!("crl #{}; no serve running", report.crl_number),
    };
    detail.push_str(&super::nodes::acks_detail(&nodes));
    ctx.audit("revoke.sessions", name.as_str(), &detail, ctx.clock.now()).await?;
    step("audited");
    if cred.kind == Kind::Admin {
        // Its instance stops and its port is free for the next credential.
        let _ = control::request(&ctx.cfg.root, &Request::Reload, RELOAD_TIMEOUT).await;
        // And the firewall closes its port (serve net would within its drift check anyway).
        super::firewall::poke_net(ctx).await;
    }
    Ok(Revoked {
        nodes,
        killed_sessions: killed,
        name: cred.name.clone(),
        kind: cred.kind,
        already_revoked: already,
        revoked_at: rfc3339(cred.revoked_at.unwrap_or_else(|| ctx.clock.now())),
        serials,
        crl_number: report.crl_number,
        freed_port: if already { None } else { cred.admin_port },
    })
}
