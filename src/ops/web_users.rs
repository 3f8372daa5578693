//! Accounts of the admin web UI, for the CLI (`cas-vpn web-user add|list|disable|enable|reset-totp`) and the
//! UI's Users page alike. A new user gets a one-time setup link (24 h) to choose a password; TOTP is enrolled at
//! their first login. Nothing here ever shows a password, a hash or a TOTP seed.

use serde::Serialize;

use super::{Ctx, OpsError, rfc3339};
use crate::app::secret::{hash_secret, new_secret};
use crate::db::{DbError, WebUser};
use crate::domain::Name;

/// How long a setup link works.
pub const SETUP_LINK_HOURS: i64 = 24;

#[derive(Debug, Serialize)]
pub struct Added {
    pub name: Name,
    /// One-time: shown once, stored hashed.
    pub setup_url: String,
    pub expires_at: String,
}

fn setup_url(host: std::net::Ipv4Addr, secret: &str) -> String {
    format!("https://{host}:{}/setup/{secret}", crate::config::ADMIN_UI_PORT)
}

/// Adds a user with a setup link; or, for an existing user who never finished setting up (or whose account an
/// admin wants to start afresh), `renew` gives a new link.
pub async fn add(ctx: &Ctx, name: &Name, renew: bool) -> Result<Added, OpsError> {
    add_at(ctx, name, renew, ctx.cfg.network.admin_bind_ip).await
}

/// As `add`, with the link pointing at `host` (the public address in bootstrap mode).
pub async fn add_at(ctx: &Ctx, name: &Name, renew: bool, host: std::net::Ipv4Addr) -> Result<Added, OpsError> {
    let secret = new_secret();
    let now = ctx.clock.now();
    let expires = now + SETUP_LINK_HOURS * 3600;
    match ctx.store.web_user_by_name(name.as_str()).await? {
        Some(u) if renew => ctx.store.new_setup_link(u.id, &hash_secret(&secret), expires, now).await?,
        Some(_) => {
            return Err(OpsError::Other(format!(
                "web user {name} exists; `web-user add {name} --renew` gives them a new setup link"
            )));
        }
        None => {
            ctx.store.create_web_user(name, &hash_secret(&secret), expires, now).await?;
        }
    }
    ctx.audit("web_user.add", name.as_str(), if renew { "new setup link" } else { "setup link" }, now).await?;
    Ok(Added { name: name.clone(), setup_url: setup_url(host, &secret), expires_at: rfc3339(expires) })
}

#[derive(Debug, Serialize)]
pub struct Row {
    pub name: Name,
    /// `active`, `setup_pending` (no password yet) or `disabled`.
    pub state: &'static str,
    pub totp: bool,
    pub created_at: String,
}

pub async fn list(ctx: &Ctx) -> Result<Vec<Row>, OpsError> {
    Ok(ctx
        .store
        .list_web_users()
        .await?
        .into_iter()
        .map(|u| Row {
            state: if u.disabled_at.is_some() {
                "disabled"
            } else if u.password_hash.is_none() {
                "setup_pending"
            } else {
                "active"
            },
            totp: u.totp_secret.is_some(),
            created_at: rfc3339(u.created_at),
            name: u.name,
        })
        .collect())
}

async fn user(ctx: &Ctx, name: &Name) -> Result<WebUser, OpsError> {
    ctx.store
        .web_user_by_name(name.as_str())
        .await?
        .ok_or_else(|| DbError::NotFound { what: format!("web user {name}") }.into())
}

#[derive(Debug, Serialize)]
pub struct Changed {
    pub name: Name,
    /// False when there was nothing to change.
    pub changed: bool,
}

/// Disables a user (their sessions and API tokens end at once) or enables them again.
pub async fn set_disabled(ctx: &Ctx, name: &Name, disabled: bool) -> Result<Changed, OpsError> {
    let u = user(ctx, name).await?;
    if disabled && ctx.actor == crate::domain::Actor::WebUser(name.clone()) {
        return Err(OpsError::Other("you cannot disable yourself".into()));
    }
    let now = ctx.clock.now();
    let changed = ctx.store.set_web_user_disabled(u.id, disabled.then_some(now)).await?;
    if changed {
        ctx.audit(if disabled { "web_user.disable" } else { "web_user.enable" }, name.as_str(), "", now).await?;
    }
    Ok(Changed { name: name.clone(), changed })
}

/// Takes a user's authenticator and recovery codes away and ends their sessions: their next login enrols a new
/// one (for a lost phone).
pub async fn reset_totp(ctx: &Ctx, name: &Name) -> Result<Changed, OpsError> {
    let u = user(ctx, name).await?;
    let changed = u.totp_secret.is_some();
    ctx.store.reset_totp(u.id).await?;
    ctx.audit("web_user.reset_totp", name.as_str(), "", ctx.clock.now()).await?;
    Ok(Changed { name: name.clone(), changed })
}
