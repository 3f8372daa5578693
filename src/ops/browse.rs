//! Looking at the fleet the way the web UI and the JSON API do: one page of terminals (search by name, serial or
//! tunnel address; filters; paging), what expires soon, the sessions with their credentials' names. Reports only;
//! the store does the filtering, so a page costs the same with 20 or 20,000 terminals.

use std::net::Ipv4Addr;

use serde::Serialize;

use super::instances::{terminal_ip, terminal_slices};
use super::{Ctx, OpsError, rfc3339};
use crate::db::{TerminalFilter, TerminalQuery};
use crate::domain::{Name, Subnet};

/// Rows per page of the terminals list.
pub const PAGE_SIZE: u32 = 50;
/// Certificates ending within this many days are "expiring".
pub const EXPIRY_HORIZON_DAYS: i64 = 30;
/// The longest search text taken.
pub const MAX_SEARCH: usize = 64;

/// What the operator asked for.
#[derive(Debug, Clone, Default)]
pub struct PageRequest {
    pub search: Option<String>,
    pub filter: TerminalFilter,
    pub version: Option<String>,
    /// 1-based.
    pub page: u32,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TerminalItem {
    #[schema(value_type = String)]
    pub name: Name,
    /// `online` (a session on a live node), `offline` (paired, no live session now), `never_paired` or `revoked`.
    pub state: &'static str,
    /// `healthy`, `agent_silent` (tunnel up, agent silent), `offline`, `never_paired` or `revoked`
    /// (`domain::health`).
    #[schema(value_type = String)]
    pub health: crate::domain::Health,
    /// When the terminal entered that health (RFC 3339), as master recorded it; `None` when not recorded.
    pub health_since: Option<String>,
    pub tunnel_ip: Option<String>,
    pub version: Option<String>,
    pub last_seen: Option<String>,
    pub paired_at: Option<String>,
    pub cert_not_after: Option<String>,
    /// The newest certificate ends within the expiry horizon.
    pub expiring: bool,
    pub revoked_at: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TerminalPage {
    pub terminals: Vec<TerminalItem>,
    pub total: u64,
    pub page: u32,
    pub pages: u32,
    pub page_size: u32,
}

/// `(home_instance, host_index)` of a tunnel address, if it lies in a terminal instance's subnet.
fn address_of(slices: &[Subnet], ip: Ipv4Addr) -> Option<(u32, u32)> {
    slices.iter().enumerate().find(|(_, s)| s.contains(ip)).map(|(i, s)| {
        let offset = u32::from(ip) - u32::from(s.network());
        (u32::try_from(i).unwrap_or(u32::MAX), offset)
    })
}

/// One page of terminals.
pub async fn terminals(ctx: &Ctx, req: &PageRequest) -> Result<TerminalPage, OpsError> {
    let now = ctx.clock.now();
    let horizon = now + EXPIRY_HORIZON_DAYS * 86_400;
    let slices = ctx.cfg.active_vpn().and_then(|v| terminal_slices(v).ok());
    let search = req.search.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(|s| {
        let mut s = s.to_owned();
        s.truncate(s.char_indices().nth(MAX_SEARCH).map_or(s.len(), |(i, _)| i));
        s
    });
    let address = search
        .as_deref()
        .and_then(|s| s.parse::<Ipv4Addr>().ok())
        .zip(slices.as_deref())
        .and_then(|(ip, sl)| address_of(sl, ip));
    let page = req.page.max(1);
    let q = TerminalQuery {
        filter: req.filter,
        search,
        address,
        version: req.version.clone().filter(|v| !v.is_empty()),
        expiring_before: horizon,
        offset: (page - 1).saturating_mul(PAGE_SIZE),
        limit: PAGE_SIZE,
        health: ctx.health_clock(),
    };
    let (rows, total) = ctx.store.terminals_page(&q).await?;
    let terminals = rows
        .into_iter()
        .map(|r| TerminalItem {
            state: if r.revoked_at.is_some() {
                "revoked"
            } else if r.sessions > 0 {
                "online"
            } else if r.paired_at.is_some() {
                "offline"
            } else {
                "never_paired"
            },
            health: r.health,
            health_since: r.health_since.map(rfc3339),
            tunnel_ip: slices
                .as_deref()
                .zip(r.home_instance.zip(r.host_index))
                .and_then(|(s, (h, i))| terminal_ip(s, h, i))
                .map(|ip| ip.to_string()),
            expiring: r.revoked_at.is_none() && r.cert_not_after.is_some_and(|t| t < horizon),
            cert_not_after: r.cert_not_after.map(rfc3339),
            version: r.version,
            last_seen: r.last_seen.map(rfc3339),
            paired_at: r.paired_at.map(rfc3339),
            revoked_at: r.revoked_at.map(rfc3339),
            name: r.name,
        })
        .collect();
    let pages = u32::try_from(total.div_ceil(u64::from(PAGE_SIZE))).unwrap_or(u32::MAX).max(1);
    Ok(TerminalPage { terminals, total, page, pages, page_size: PAGE_SIZE })
}

/// A live session with the name of its credential.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SessionItem {
    pub name: String,
    /// `terminal` or `admin`.
    pub kind: String,
    /// The VPN node whose openvpn holds it.
    pub node: String,
    pub instance: String,
    pub tunnel_ip: String,
    pub real_addr: String,
    pub since: String,
    pub bytes_in: i64,
    pub bytes_out: i64,
}

pub async fn sessions(ctx: &Ctx) -> Result<Vec<SessionItem>, OpsError> {
    Ok(ctx.store.list_sessions_with_kind(ctx.alive_since()).await?.into_iter().map(|(s, kind)| item(s, kind)).collect())
}

/// The live sessions of one credential.
pub async fn sessions_of(ctx: &Ctx, name: &Name) -> Result<Vec<SessionItem>, OpsError> {
    let Some(c) = ctx.store.credential_by_name(name).await? else { return Ok(Vec::new()) };
    Ok(ctx.store.sessions_of(c.id).await?.into_iter().map(|s| item(s, c.kind.to_string())).collect())
}

fn item(s: crate::db::SessionRow, kind: String) -> SessionItem {
    SessionItem {
        name: s.common_name,
        kind,
        node: s.node,
        instance: s.instance,
        tunnel_ip: s.tunnel_ip,
        real_addr: s.real_addr,
        since: rfc3339(s.since),
        bytes_in: s.bytes_in,
        bytes_out: s.bytes_out,
    }
}

/// Something that ends: a CA, a server or web certificate, a CRL, or a client certificate.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ExpiryItem {
    pub what: String,
    pub not_after: Option<String>,
    pub days_left: Option<i64>,
    /// Within the horizon (or already past, or missing).
    pub warning: bool,
}

/// Everything that expires, soonest first: CAs, server certificates, CRLs, the web UI's certificate (from
/// `status`), and client certificates ending within the horizon.
pub async fn expiries(ctx: &Ctx, status: &super::status::Status) -> Result<Vec<ExpiryItem>, OpsError> {
    let now = ctx.clock.now();
    let horizon = now + EXPIRY_HORIZON_DAYS * 86_400;
    let mut items: Vec<ExpiryItem> = status
        .expiry
        .iter()
        .map(|e| ExpiryItem {
            what: e.what.clone(),
            not_after: e.not_after.clone(),
            days_left: e.seconds_left.map(|s| s.div_euclid(86_400)),
            warning: e.warning.is_some(),
        })
        .collect();
    for c in ctx.store.expiring_certificates(horizon, 200).await? {
        items.push(ExpiryItem {
            what: format!("{} certificate of {}", c.ca, c.common_name),
            not_after: Some(rfc3339(c.not_after)),
            days_left: Some((c.not_after - now).div_euclid(86_400)),
            warning: true,
        });
    }
    items.sort_by_key(|i| (!i.warning, i.days_left.unwrap_or(i64::MIN)));
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tunnel_addresses_map_back_to_their_slot() {
        let net: Subnet = "198.18.0.0/16".parse().unwrap();
        let slices = net.slices(11).unwrap();
        let ip = terminal_ip(&slices, 3, 17).unwrap();
        assert_eq!(address_of(&slices, ip), Some((3, 17)));
        assert_eq!(address_of(&slices, "10.0.0.1".parse().unwrap()), None);
    }
}
