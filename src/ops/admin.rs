//! Administration VPN credentials: one credential, one port in `admin_ports`, one openvpn instance, one session.
//! The server makes the key (an admin downloads a complete `.ovpn`); nothing of it stays on the server.

use std::path::{Path, PathBuf};

use cas_pki::{PrivateKey, RevocationReason, Validity};
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

/// Issues a credential and writes its profile to `out` (default `./NAME.ovpn`). If the file cannot be written, the
/// credential is revoked again: without its profile it is useless.
pub async fn issue(ctx: &Ctx, name: &Name, out: Option<&Path>) -> Result<Issued, OpsError> {
    let path: PathBuf = out.map_or_else(|| PathBuf::from(format!("{name}.ovpn")), Path::to_path_buf);
    let mut issued = issue_profile(ctx, name).await?;
    if let Err(e) = crate::sys::fs::write_atomic(&path, issued.profile_text.as_bytes(), 0o600) {
        let _ = ctx.store.revoke(name, RevocationReason::CessationOfOperation, &ctx.actor, ctx.clock.now()).await;
        return Err(e.into());
    }
    issued.profile = path.display().to_string();
    Ok(issued)
}

/// Issues a credential and returns its profile without writing it anywhere (the web UI's one-time download).
/// The credential is made by the signer when it runs (this process then never sees a CA key), else here.
pub async fn issue_profile(ctx: &Ctx, name: &Name) -> Result<Issued, OpsError> {
    let vpn = ctx.vpn("an admin VPN credential")?;
    // Everything the profile needs is read before the credential exists: a missing file fails with no trace.
    let maker = ProfileMaker::new(ctx, Kind::Admin)?;
    let _ = maker.load_nodes(&ctx.store).await?;
    let (port, cert_pem, key) = make(ctx, name).await?;
    let text = match key.and_then(|k| maker.render(name, &cert_pem, Some(&k), None, Some(port))) {
        Ok(t) => t,
        Err(e) => {
            let _ = ctx.store.revoke(name, RevocationReason::CessationOfOperation, &ctx.actor, ctx.clock.now()).await;
            return Err(e);
        }
    };
    let cert = new_cert(&cert_pem)?;
    ctx.audit("admin.issue", name.as_str(), &format!("port {port}"), ctx.clock.now()).await?;
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
        profile: String::new(),
        profile_text: text,
    })
}

/// The credential, its certificate and key: from the signer, or (no signer running: a root shell) made here.
async fn make(ctx: &Ctx, name: &Name) -> Result<(u16, String, Result<PrivateKey, OpsError>), OpsError> {
    use crate::control::signer::{self, SignerError};
    match signer::issue_admin(&ctx.cfg.root, name).await {
        Ok(i) => {
            let key = PrivateKey::from_pem(&i.key_pem).map_err(|e| OpsError::Ca(e.to_string()));
            Ok((i.port, i.cert_pem, key))
        }
        // The signer's refusals (a name in use, no free port) are the operator's to read as they are.
        Err(SignerError::Refused(why)) => Err(OpsError::Other(why)),
        Err(SignerError::NotRunning { .. }) => {
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
            let cred =
                ctx.store.create_admin(name, vpn.admin_ports, &new_cert(&issued.cert_pem)?, ctx.clock.now()).await?;
            let port =
                cred.admin_port.ok_or_else(|| OpsError::Other("store gave the admin credential no port".into()))?;
            Ok((port, issued.cert_pem, Ok(issued.key)))
        }
        Err(e) => Err(OpsError::Other(format!("admin credential {name}: {e}"))),
    }
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
        ctx.store.live_sessions(ctx.alive_since()).await?.iter().map(|s| s.credential_id).collect();
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
        ctx.audit("admin.resumed", name.as_str(), "", ctx.clock.now()).await?;
    }
    Ok(Resumed { name: name.clone(), resumed })
}
