//! A terminal's health, derived from what both sides observed: the VPN (a live session on a live node: transport
//! liveness), the agent's pushes (heartbeats through the tunnel) and master's pulls (a probe of the agent's status
//! endpoint when the pushes stopped). Pure: the inputs are facts read from the store, the answer is one state.
//!
//! Order of precedence: revoked > never paired > offline > healthy > tunnel up / agent silent. The state is always
//! derived from the facts at the moment it is asked, never remembered and trusted later; what is stored
//! (`terminal_health`) is only *when* it last changed.

use serde::{Deserialize, Serialize};

/// One terminal's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Tunnel up (Scenario A) and the agent heard from recently: a heartbeat, or an answer to master's probe.
    Healthy,
    /// The tunnel is up but the agent has been silent for longer than the threshold (terminal software stuck or
    /// dead while openvpn still runs).
    AgentSilent,
    /// Paired but no session on a live node (Scenario A), or silent (Scenario B).
    Offline,
    /// Never paired and no live tunnel.
    NeverPaired,
    /// Its credential is revoked.
    Revoked,
}

impl Health {
    pub const ALL: [Health; 5] =
        [Health::Healthy, Health::AgentSilent, Health::Offline, Health::NeverPaired, Health::Revoked];

    /// The stable name (`--json`, API, filters, the store).
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::AgentSilent => "agent_silent",
            Health::Offline => "offline",
            Health::NeverPaired => "never_paired",
            Health::Revoked => "revoked",
        }
    }

    /// What a person reads (the CLI's table, the web UI).
    pub fn label(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::AgentSilent => "tunnel up, agent silent",
            Health::Offline => "offline",
            Health::NeverPaired => "never paired",
            Health::Revoked => "revoked",
        }
    }
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Health {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Health::ALL.into_iter().find(|h| h.as_str() == s).ok_or_else(|| {
            format!("unknown health {s:?} (expected healthy, agent_silent, offline, never_paired or revoked)")
        })
    }
}

/// What the VPN says about a terminal's transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tunnel {
    /// A session on a node whose heartbeat is alive (`cluster::ALIVE_FOR_SECS`).
    Up,
    /// No such session (none at all, or only on nodes that stopped heartbeating: stale rows after a crash).
    Down,
    /// Scenario B: cas-vpn runs no VPN, so it cannot tell.
    Unknown,
}

/// The facts about one terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    pub revoked: bool,
    /// `paired_at` is set.
    pub paired: bool,
    pub tunnel: Tunnel,
    /// Unix seconds of its last heartbeat.
    pub last_heartbeat: Option<i64>,
    /// Unix seconds of master's last successful probe of its status endpoint.
    pub last_probe_ok: Option<i64>,
}

/// `observed` at `now`: the agent counts as heard from when its last heartbeat or successful probe is younger
/// than `silent_after` seconds.
pub fn derive(o: &Observed, now: i64, silent_after: i64) -> Health {
    if o.revoked {
        return Health::Revoked;
    }
    // A terminal whose profile was handed over out of band (server-made keys) is paired in effect once its tunnel
    // is up: that says more than the missing pairing timestamp. (master answers only paired terminals, so a
    // heartbeat implies a pairing.)
    if !o.paired && o.tunnel != Tunnel::Up {
        return Health::NeverPaired;
    }
    if o.tunnel == Tunnel::Down {
        return Health::Offline;
    }
    let heard = o.last_heartbeat.into_iter().chain(o.last_probe_ok).max();
    let fresh = heard.is_some_and(|t| now - t < silent_after);
    match (fresh, o.tunnel) {
        (true, _) => Health::Healthy,
        (false, Tunnel::Up) => Health::AgentSilent,
        (false, _) => Health::Offline,
    }
}

/// How many heartbeat periods may be missed before the agent counts as silent.
pub const MISSED_HEARTBEATS: u32 = 3;

/// The silence threshold for a heartbeat period: [`MISSED_HEARTBEATS`] periods.
pub fn silent_after(heartbeat_every_secs: u64) -> i64 {
    i64::try_from(heartbeat_every_secs.saturating_mul(u64::from(MISSED_HEARTBEATS))).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_000_000;
    const SILENT: i64 = 180;

    fn obs(tunnel: Tunnel, hb: Option<i64>, probe: Option<i64>) -> Observed {
        Observed { revoked: false, paired: true, tunnel, last_heartbeat: hb, last_probe_ok: probe }
    }

    #[test]
    fn revoked_wins_over_everything() {
        let o = Observed { revoked: true, ..obs(Tunnel::Up, Some(NOW), Some(NOW)) };
        assert_eq!(derive(&o, NOW, SILENT), Health::Revoked);
        let o = Observed { revoked: true, paired: false, ..obs(Tunnel::Down, None, None) };
        assert_eq!(derive(&o, NOW, SILENT), Health::Revoked);
    }

    #[test]
    fn never_paired_only_when_never_seen() {
        let fresh = Observed { paired: false, ..obs(Tunnel::Down, None, None) };
        assert_eq!(derive(&fresh, NOW, SILENT), Health::NeverPaired);
        assert_eq!(derive(&Observed { tunnel: Tunnel::Unknown, ..fresh }, NOW, SILENT), Health::NeverPaired);
        // A server-made profile: connected without a pairing timestamp.
        assert_eq!(derive(&Observed { tunnel: Tunnel::Up, ..fresh }, NOW, SILENT), Health::AgentSilent);
        // Connected once without a pairing timestamp, now gone.
        assert_eq!(derive(&Observed { last_heartbeat: Some(NOW - 5000), ..fresh }, NOW, SILENT), Health::NeverPaired);
    }

    #[test]
    fn no_live_tunnel_is_offline_whatever_the_agent_said() {
        assert_eq!(derive(&obs(Tunnel::Down, Some(NOW), Some(NOW)), NOW, SILENT), Health::Offline);
        assert_eq!(derive(&obs(Tunnel::Down, None, None), NOW, SILENT), Health::Offline);
    }

    #[test]
    fn a_recent_heartbeat_or_probe_is_healthy_and_silence_is_agent_silent() {
        assert_eq!(derive(&obs(Tunnel::Up, Some(NOW - 10), None), NOW, SILENT), Health::Healthy);
        assert_eq!(derive(&obs(Tunnel::Up, Some(NOW - 500), Some(NOW - 3)), NOW, SILENT), Health::Healthy);
        assert_eq!(derive(&obs(Tunnel::Up, Some(NOW - SILENT), None), NOW, SILENT), Health::AgentSilent);
        assert_eq!(derive(&obs(Tunnel::Up, Some(NOW - SILENT + 1), None), NOW, SILENT), Health::Healthy);
        assert_eq!(derive(&obs(Tunnel::Up, None, None), NOW, SILENT), Health::AgentSilent);
    }

    #[test]
    fn scenario_b_knows_only_heartbeats() {
        assert_eq!(derive(&obs(Tunnel::Unknown, Some(NOW - 1), None), NOW, SILENT), Health::Healthy);
        assert_eq!(derive(&obs(Tunnel::Unknown, Some(NOW - 999), None), NOW, SILENT), Health::Offline);
    }

    #[test]
    fn names_round_trip() {
        for h in Health::ALL {
            assert_eq!(h.as_str().parse::<Health>(), Ok(h));
            assert_eq!(serde_json::to_value(h).unwrap(), serde_json::json!(h.as_str()));
        }
        assert!("online".parse::<Health>().is_err());
        assert_eq!(silent_after(60), 180);
    }
}
