//! Pairing administration: the pairing window (`pairing open|close|status`), approval-flow decisions
//! (`pairing approve|reject`) and lifting bans (`unban-ip`). Functions return reports; `cli` prints them.

use std::net::IpAddr;

use cas_pki::Validity;
use serde::Serialize;

use super::instances::{hosts_per_slice, terminal_ip, terminal_slices};
use super::{Ctx, OpsError, rfc3339};
use crate::app::new_cert;
use crate::config::VpnConfig;
use crate::db::{DbError, NewTerminal, PendingPairing, TerminalLayout};
use crate::domain::{Cidr, Dur, Kind, Name, PairingState, parse_cidrs};
use crate::wire::{code_matches, pin_text};

/// `pairing open` without `--for`.
pub const DEFAULT_WINDOW_SECS: u64 = 15 * 60;
/// The longest window `pairing open` accepts: pairing is meant to be a short, watched event.
pub const MAX_WINDOW_SECS: u64 = 7 * 24 * 3600;

#[derive(Debug, Serialize)]
pub struct WindowReport {
    pub open: bool,
    /// RFC 3339 end of the window, when open.
    pub open_until: Option<String>,
    pub remaining_secs: Option<i64>,
    /// Who may reach the pairing port while it is open (`--from`); empty: everyone.
    pub from: Vec<Cidr>,
}

fn window_report(open_until: Option<i64>, from: Option<&str>, now: i64) -> WindowReport {
    match open_until.filter(|u| *u > now) {
        Some(u) => WindowReport {
            open: true,
            open_until: Some(rfc3339(u)),
            remaining_secs: Some(u - now),
            from: parse_cidrs(from.unwrap_or("")).unwrap_or_default(),
        },
        None => WindowReport { open: false, open_until: None, remaining_secs: None, from: Vec::new() },
    }
}

/// Opens the pairing window for `duration`; with `from`, the firewall lets only those sources reach the pairing
/// port. Returns once a running `serve net` has the pairing door open.
pub async fn open_window(ctx: &Ctx, duration: Option<Dur>, from: &[Cidr]) -> Result<WindowReport, OpsError> {
    let secs = duration.map_or(DEFAULT_WINDOW_SECS, Dur::as_secs);
    if secs == 0 || secs > MAX_WINDOW_SECS {
        return Err(OpsError::Other(format!(
            "--for must be between 1s and {}d (pairing windows are meant to be short)",
            MAX_WINDOW_SECS / 86_400
        )));
    }
    let now = ctx.clock.now();
    let until = now + i64::try_from(secs).unwrap_or(i64::MAX / 2);
    let sources = from.iter().map(Cidr::to_string).collect::<Vec<_>>().join(",");
    let stored = (!sources.is_empty()).then_some(sources.as_str());
    ctx.store.set_pairing_window_from(Some(until), stored).await?;
    let detail = match stored {
        Some(s) => format!("until {}; from {s}", rfc3339(until)),
        None => format!("until {}", rfc3339(until)),
    };
    ctx.audit("pairing.open", "gate", &detail, now).await?;
    super::firewall::poke_net(ctx).await;
    Ok(window_report(Some(until), stored, now))
}

/// Closes the window; returns once a running `serve net` has the pairing door closed.
pub async fn close_window(ctx: &Ctx) -> Result<WindowReport, OpsError> {
    let now = ctx.clock.now();
    ctx.store.set_pairing_window(None).await?;
    // Pairings waiting for approval were made in this window: they end with it (a queue filled by strangers
    // must not outlive the window and block the next one).
    let expired = ctx.store.expire_pending_pairings(None, now).await?;
    if expired > 0 {
        tracing::info!(expired, "pairings waiting for approval expired with the window");
    }
    ctx.audit("pairing.close", "gate", "", now).await?;
    super::firewall::poke_net(ctx).await;
    Ok(window_report(None, None, now))
}

#[derive(Debug, Serialize)]
pub struct PendingRow {
    pub pairing_id: String,
    pub code: String,
    pub state: PairingState,
    pub common_name: Option<String>,
    pub hw_serial: Option<String>,
    pub version: Option<String>,
    pub source_ip: String,
    pub created_at: String,
    pub expires_at: String,
}

impl From<&PendingPairing> for PendingRow {
    fn from(p: &PendingPairing) -> Self {
        PendingRow {
            pairing_id: p.id.clone(),
            code: p.code.clone(),
            state: p.state,
            common_name: p.common_name.clone(),
            hw_serial: p.hw_serial.clone(),
            version: p.version.clone(),
            source_ip: p.source_ip.clone(),
            created_at: rfc3339(p.created_at),
            expires_at: rfc3339(p.expires_at),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct BannedRow {
    pub ip: String,
    pub until: String,
}

#[derive(Debug, Serialize)]
pub struct PairingStatus {
    pub window: WindowReport,
    /// `sha256:<hex>` of the gate's TLS key (what tokens carry; give it to `agent pair --gate-pin`).
    pub gate_pin: Option<String>,
    /// Approval-flow pairings waiting for an admin.
    pub pending: Vec<PendingRow>,
    pub banned: Vec<BannedRow>,
}

pub async fn status(ctx: &Ctx) -> Result<PairingStatus, OpsError> {
    let now = ctx.clock.now();
    let (until, from) = ctx.store.pairing_window_from().await?;
    let window = window_report(until, from.as_deref(), now);
    let pending = ctx.store.list_pending_pairings(false, now).await?.iter().map(PendingRow::from).collect();
    let banned = ctx
        .store
        .banned_ips(now)
        .await?
        .into_iter()
        .map(|(ip, until)| BannedRow { ip, until: rfc3339(until) })
        .collect();
    let gate_pin = ctx.pki.gate_pin().ok().map(|p| pin_text(&p));
    Ok(PairingStatus { window, gate_pin, pending, banned })
}

#[derive(Debug, Serialize)]
pub struct ApproveReport {
    pub pairing_id: String,
    pub terminal: Name,
    pub serial: String,
    pub tunnel_ip: Option<String>,
    /// True when it had been approved before (nothing changed).
    pub already_approved: bool,
}

/// Approves pairing `id` after checking `code` (what the terminal shows): creates the terminal named `name` (else
/// the CN the CSR asked for, else the terminal's reported serial) with a certificate for the CSR's key, and marks
/// the pairing approved; the terminal's next poll gets its configuration. Approving again is harmless, and an
/// approval interrupted after the terminal was created finishes when run again.
pub async fn approve(ctx: &Ctx, id: &str, code: &str, name: Option<Name>) -> Result<ApproveReport, OpsError> {
    let now = ctx.clock.now();
    let p = ctx
        .store
        .pending_pairing(id)
        .await?
        .ok_or_else(|| DbError::NotFound { what: format!("pairing {}", crate::domain::shown(id)) })?;
    if !code_matches(code, &p.code) {
        return Err(OpsError::Other(
            "the code does not match this pairing: compare it with the code the terminal shows".into(),
        ));
    }
    match p.state {
        PairingState::Approved => {
            let cred = match p.credential_id {
                Some(cid) => ctx.store.credential_by_id(cid).await?,
                None => None,
            };
            let cred = cred.ok_or_else(|| OpsError::Other("approved pairing without its terminal".into()))?;
            return Ok(ApproveReport {
                pairing_id: p.id.clone(),
                tunnel_ip: tunnel_ip(ctx, cred.home_instance, cred.host_index),
                terminal: cred.name,
                serial: p.cert_serial.clone().unwrap_or_default(),
                already_approved: true,
            });
        }
        PairingState::Rejected => {
            return Err(OpsError::Other("this pairing was rejected; the terminal must start again".into()));
        }
        PairingState::Pending if p.expires_at <= now => {
            return Err(OpsError::Other("this pairing expired; the terminal must start again".into()));
        }
        PairingState::Pending => {}
    }

    let name = match name {
        Some(n) => n,
        None => p
            .common_name
            .as_deref()
            .or(p.hw_serial.as_deref())
            .ok_or_else(|| OpsError::Other("the terminal reported no name or serial: pass --name".into()))?
            .parse::<Name>()
            .map_err(|e| OpsError::Other(format!("{e}: pass --name")))?,
    };
    let checked = crate::app::csr::check(&p.csr_pem, Some(name.as_str()))
        .map_err(|e| OpsError::Other(format!("cannot approve as {name}: {e}")))?;

    // An earlier approval may have created the terminal and stopped before marking the pairing: finish it.
    let existing = match ctx.store.credential_by_name(&name).await? {
        Some(c) if !c.is_revoked() => Some(c),
        _ => None,
    };
    let (cred, serial) = match existing {
        Some(c) => {
            let certs = ctx.store.certificates_of(c.id).await?;
            let mine = certs
                .into_iter()
                .find(|x| x.revoked_at.is_none() && spki_hex(&x.cert_pem).as_deref() == Some(p.pubkey_sha256.as_str()));
            match mine {
                Some(cert) if c.paired_at.is_none() => (c, cert.serial),
                _ => return Err(DbError::NameTaken { name }.into()),
            }
        }
        None => {
            let defaults = VpnConfig::default();
            let days = ctx.cfg.vpn.as_ref().unwrap_or(&defaults).terminal_cert_days;
            let ca = ctx.pki.load_ca(Kind::Terminal)?;
            let (cert_pem, _) = ca
                .sign_csr(&checked.csr, name.as_str(), Validity::days_from_now(days))
                .map_err(|e| OpsError::Ca(e.to_string()))?;
            let cert = new_cert(&cert_pem)?;
            let layout = match ctx.vpn("approve").ok().map(terminal_slices).transpose()? {
                Some(s) => TerminalLayout { instances: s.len() as u32, hosts_per_instance: hosts_per_slice(&s[0]) },
                None => TerminalLayout { instances: 1, hosts_per_instance: 1 << 24 },
            };
            let serial = cert.serial.clone();
            let new = NewTerminal { name: name.clone(), cert: Some(cert), token: None };
            let mut created = ctx.store.create_terminals(&[new], layout, now).await?;
            (created.pop().ok_or_else(|| OpsError::Other("no terminal was created".into()))?, serial)
        }
    };
    if !ctx.store.approve_pending_pairing(&p.id, cred.id, &serial, now).await? {
        return Err(OpsError::Other(format!(
            "pairing {} is no longer pending (expired or decided meanwhile); terminal {} exists unpaired: revoke it or approve a new pairing",
            p.id, cred.name
        )));
    }
    ctx.audit("pairing.approve", name.as_str(), &format!("pairing {}; serial {serial}", p.id), now).await?;
    Ok(ApproveReport {
        pairing_id: p.id,
        tunnel_ip: tunnel_ip(ctx, cred.home_instance, cred.host_index),
        terminal: cred.name,
        serial,
        already_approved: false,
    })
}

#[derive(Debug, Serialize)]
pub struct RejectReport {
    pub pairing_id: String,
    pub rejected: bool,
}

/// What `pairing reject --all` did.
#[derive(Debug, Serialize)]
pub struct RejectAllReport {
    pub rejected: u64,
}

/// Rejects every pairing waiting for approval.
pub async fn reject_all(ctx: &Ctx) -> Result<RejectAllReport, OpsError> {
    let now = ctx.clock.now();
    let rejected = ctx.store.reject_all_pending_pairings(now).await?;
    ctx.audit("pairing.reject", "*", &format!("{rejected} pending pairings"), now).await?;
    Ok(RejectAllReport { rejected })
}

pub async fn reject(ctx: &Ctx, id: &str) -> Result<RejectReport, OpsError> {
    let now = ctx.clock.now();
    let rejected = ctx.store.reject_pending_pairing(id, now).await?;
    if !rejected && ctx.store.pending_pairing(id).await?.is_none() {
        return Err(DbError::NotFound { what: format!("pairing {}", crate::domain::shown(id)) }.into());
    }
    if rejected {
        ctx.audit("pairing.reject", id, "", now).await?;
    }
    Ok(RejectReport { pairing_id: id.to_owned(), rejected })
}

#[derive(Debug, Serialize)]
pub struct UnbanReport {
    pub ip: String,
    /// False when the address had no failures on record.
    pub was_listed: bool,
}

/// Lifts the ban of `ip` and of its network (the operator wants this source through).
pub async fn unban(ctx: &Ctx, ip: IpAddr) -> Result<UnbanReport, OpsError> {
    let ip = ip.to_canonical().to_string();
    let mut was_listed = false;
    for k in crate::gate::ban_keys(&ip) {
        was_listed |= ctx.store.unban(&k.key).await?;
    }
    if was_listed {
        ctx.audit("unban-ip", &ip, "", ctx.clock.now()).await?;
    }
    Ok(UnbanReport { ip, was_listed })
}

fn tunnel_ip(ctx: &Ctx, home: Option<u32>, host: Option<u32>) -> Option<String> {
    let slices = ctx.cfg.active_vpn().and_then(|v| terminal_slices(v).ok())?;
    terminal_ip(&slices, home?, host?).map(|ip| ip.to_string())
}

fn spki_hex(cert_pem: &str) -> Option<String> {
    use sha2::{Digest, Sha256};
    let x = openssl::x509::X509::from_pem(cert_pem.as_bytes()).ok()?;
    Some(hex::encode(Sha256::digest(x.public_key().ok()?.public_key_to_der().ok()?)))
}
