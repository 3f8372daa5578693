//! The fleet's renewal progress, as `status`, the dashboard and `/metrics` show it: how many terminal
//! certificates end within 7, 30 and 60 days, how many are past their renewal point and still not renewed
//! (overdue), how many have expired, and the terminals whose last renewal failed. The renewal policy comes from
//! `config/vpn` (`renew_before_days`, its default under Scenario B too: master renews in both scenarios).

use crate::config::{Config, VpnConfig};
use crate::db::{DbError, RenewalFailure, Store};
use crate::domain::renewal::RenewalPolicy;

/// The horizons `status` counts certificates ending within, in days.
pub const EXPIRING_WITHIN_DAYS: [u32; 3] = [7, 30, 60];
/// A terminal renews at its first heartbeat after its point (a minute by default); only past this much later is
/// it overdue, so a snapshot never counts terminals that are simply between two heartbeats.
pub const OVERDUE_GRACE_SECS: i64 = 3600;
/// The failed terminals `status` names; the rest are counted.
pub const LISTED_FAILURES: u32 = 20;

/// The renewal policy of this installation.
pub fn policy(cfg: &Config) -> RenewalPolicy {
    let days = cfg.vpn.as_ref().map_or(VpnConfig::default().renew_before_days, |v| v.renew_before_days);
    RenewalPolicy::from_days(days)
}

/// Renewal progress across the fleet (unrevoked terminals, each by its newest unrevoked certificate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetRenewal {
    /// Certificates ending within each of [`EXPIRING_WITHIN_DAYS`] (expired ones included), in that order.
    pub expiring: [u64; 3],
    /// Already expired: the terminal cannot connect or renew any more; it needs a new credential.
    pub expired: u64,
    /// Past their renewal point by more than [`OVERDUE_GRACE_SECS`] and not renewed (expired ones included).
    pub overdue: u64,
    /// Terminals whose last renewal attempt failed.
    pub failed: u64,
    /// The latest of those failures, at most `listed`.
    pub failures: Vec<RenewalFailure>,
}

/// Reads the fleet's renewal progress at `now`, naming at most `listed` failed terminals.
pub async fn fleet(store: &Store, policy: RenewalPolicy, now: i64, listed: u32) -> Result<FleetRenewal, DbError> {
    let longest = i64::from(EXPIRING_WITHIN_DAYS[2]) * 86_400;
    // Every certificate whose window is open ends before now + renew_before: read those, and the 60-day horizon.
    let horizon = now.saturating_add(longest.max(policy.renew_before_secs()));
    let certs = store.terminal_certs_ending_before(horizon).await?;
    let mut expiring = [0u64; 3];
    for (slot, days) in expiring.iter_mut().zip(EXPIRING_WITHIN_DAYS) {
        let before = now.saturating_add(i64::from(days) * 86_400);
        *slot = certs.iter().filter(|c| c.not_after < before).count() as u64;
    }
    let expired = certs.iter().filter(|c| c.not_after <= now).count() as u64;
    let overdue =
        certs.iter().filter(|c| policy.point(&c.serial, c.not_after).saturating_add(OVERDUE_GRACE_SECS) <= now).count()
            as u64;
    let (failures, failed) = store.renewal_failures(listed).await?;
    Ok(FleetRenewal { expiring, expired, overdue, failed, failures })
}
