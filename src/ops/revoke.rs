//! `cas-vpn revoke NAME`: store first (the source of truth), then a new CRL, then any undelivered profile is
//! deleted, then (with the VPN runtime) live sessions are killed. Revoking an already revoked name redoes the
//! later steps, so a crash between two steps heals on the next try.

use serde::Serialize;

use super::{Ctx, OpsError, crl, now, rfc3339};
use crate::db::DbError;
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
}

pub async fn revoke(ctx: &Ctx, name: &Name, reason: &str) -> Result<Revoked, OpsError> {
    let (cred, serials, already) = match ctx.store.revoke(name, reason, "cli", now()).await {
        Ok((cred, serials)) => (cred, serials, false),
        Err(DbError::AlreadyRevoked { .. }) => {
            let cred = ctx
                .store
                .credential_by_name(name)
                .await?
                .ok_or_else(|| DbError::NotFound { what: format!("credential {name}") })?;
            (cred, Vec::new(), true)
        }
        Err(e) => return Err(e.into()),
    };
    let report = crl::refresh(ctx, cred.kind).await?;
    let pending = ctx.pki.pending_dir().join(format!("{name}.ovpn"));
    if pending.exists() {
        std::fs::remove_file(&pending)
            .map_err(|source| crate::sys::fs::FsError::Write { path: pending.clone(), source })?;
    }
    Ok(Revoked {
        name: cred.name.clone(),
        kind: cred.kind,
        already_revoked: already,
        revoked_at: rfc3339(cred.revoked_at.unwrap_or_else(now)),
        serials,
        crl_number: report.crl_number,
        freed_port: if already { None } else { cred.admin_port },
    })
}
