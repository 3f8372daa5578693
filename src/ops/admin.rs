//! Administration VPN credentials: one credential, one port in `admin_ports`, one openvpn instance, one session.
//! The server makes the key (an admin downloads a complete `.ovpn`); nothing of it stays on the server.

use std::path::{Path, PathBuf};

use cas_pki::{RevocationReason, Validity};
use serde::Serialize;

use super::instances::admin_slice;
use super::profile::ProfileMaker;
use super::{Ctx, OpsError, rfc3339};
use crate::app::new_cert;
use crate::domain::{Kind, Name};

#[derive(Debug, Serialize)]
pub struct Issued {
    pub name: Name,
    pub port: u16,
    pub tunnel_ip: String,
    pub not_after: String,
    /// Where the profile was written (0600).
    pub profile: String,
    #[serde(skip)]
    pub profile_text: String,
}

/// Issues a credential and writes its profile to `out` (default `./NAME.ovpn`). The file is written before the
/// store commits: if the commit fails (name taken, ports exhausted) the file is removed again.
pub async fn issue(ctx: &Ctx, name: &Name, out: Option<&Path>) -> Result<Issued, OpsError> {
    let vpn = ctx.vpn("an admin VPN credential")?;
    if let Some(existing) = ctx.store.credential_by_name(name).await?
        && existing.revoked_at.is_none()
    {
        return Err(crate::db::DbError::NameTaken { name: name.clone() }.into());
    }
    let ca = ctx.pki.load_ca(Kind::Admin)?;
    let issued = ca
        .issue_client(name.as_str(), vpn.key_type, Validity::days_from_now(vpn.admin_cert_days))
        .map_err(|e| OpsError::Ca(e.to_string()))?;
    let cert = new_cert(&issued.cert_pem)?;
    let maker = ProfileMaker::new(ctx, Kind::Admin)?;
    let path: PathBuf = out.map_or_else(|| PathBuf::from(format!("{name}.ovpn")), Path::to_path_buf);

    let cred = ctx.store.create_admin(name, vpn.admin_ports, &cert, ctx.clock.now()).await?;
    let port = cred.admin_port.ok_or_else(|| OpsError::Other("store gave the admin credential no port".into()))?;
    let text = maker.render(name, &issued.cert_pem, Some(&issued.key), None, Some(port))?;
    if let Err(e) = crate::sys::fs::write_atomic(&path, text.as_bytes(), 0o600) {
        // Without its profile the credential is useless: take it back rather than leave a half-made admin.
        let _ = ctx.store.revoke(name, RevocationReason::CessationOfOperation, &ctx.actor, ctx.clock.now()).await;
        return Err(e.into());
    }
    ctx.store.audit(&ctx.actor, "admin.issue", name.as_str(), &format!("port {port}"), ctx.clock.now()).await?;
    // A running `serve` starts the credential's instance now (it would within 30 s anyway).
    let _ =
        crate::control::request(&ctx.cfg.root, &crate::control::Request::Reload, super::revoke::RELOAD_TIMEOUT).await;
    // And the firewall opens its port.
    super::firewall::poke_net(ctx).await;
    let slice = admin_slice(vpn, port)?;
    Ok(Issued {
        name: name.clone(),
        port,
        tunnel_ip: super::instances::host_ip(&slice, super::instances::FIRST_HOST_INDEX).to_string(),
        not_after: rfc3339(cert.not_after),
        profile: path.display().to_string(),
        profile_text: text,
    })
}

#[derive(Debug, Serialize)]
pub struct AdminRow {
    pub name: Name,
    pub port: Option<u16>,
    pub state: &'static str,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

pub async fn list(ctx: &Ctx, include_revoked: bool) -> Result<Vec<AdminRow>, OpsError> {
    let live: std::collections::HashSet<i64> =
        ctx.store.list_sessions().await?.iter().map(|s| s.credential_id).collect();
    Ok(ctx
        .store
        .list_credentials(Some(Kind::Admin), include_revoked)
        .await?
        .into_iter()
        .map(|c| AdminRow {
            state: if c.revoked_at.is_some() {
                "revoked"
            } else if c.suspended_at.is_some() {
                "suspended"
            } else if live.contains(&c.id) {
                "online"
            } else {
                "active"
            },
            port: c.admin_port,
            created_at: rfc3339(c.created_at),
            revoked_at: c.revoked_at.map(rfc3339),
            name: c.name,
        })
        .collect())
}

/// What `admin-vpn resume` did.
#[derive(Debug, Serialize)]
pub struct Resumed {
    pub name: Name,
    /// False when it was not suspended.
    pub resumed: bool,
}

/// Lifts the suspension of an admin credential (after repeated takeovers of its session, see README): the
/// operator has made sure only its owner holds it. Re-issuing (revoke, issue) is the other way out.
pub async fn resume(ctx: &Ctx, name: &Name) -> Result<Resumed, OpsError> {
    let cred = ctx
        .store
        .credential_by_name(name)
        .await?
        .filter(|c| c.kind == Kind::Admin)
        .ok_or_else(|| OpsError::Other(format!("no active admin credential named {name}")))?;
    let resumed = ctx.store.set_admin_suspended(cred.id, None).await?;
    if resumed {
        ctx.store.audit(&ctx.actor, "admin.resumed", name.as_str(), "", ctx.clock.now()).await?;
    }
    Ok(Resumed { name: name.clone(), resumed })
}
