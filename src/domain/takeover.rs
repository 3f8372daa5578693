//! When "newest wins" becomes a fight: the policy that suspends an admin credential whose live session keeps being
//! taken over from *different* addresses (two parties holding one credential, e.g. a stolen `.ovpn`), while a
//! person who reconnects from the same place, or moves once, is never affected. Pure: the VPN instance feeds it
//! takeovers with the time and acts on its answer.

use std::collections::HashMap;
use std::net::IpAddr;

/// Takeovers from a different address within [`WINDOW_SECS`] that suspend the credential.
pub const LIMIT: usize = 5;
pub const WINDOW_SECS: i64 = 10 * 60;

/// Recent takeovers per admin credential (by credential id).
#[derive(Debug, Default)]
pub struct TakeoverWatch {
    recent: HashMap<i64, Vec<i64>>,
}

impl TakeoverWatch {
    /// A new session of `credential` replaced one from `old` at `now`, the newcomer coming from `new`. Returns true
    /// when the credential must be suspended.
    pub fn note(&mut self, credential: i64, old: Option<IpAddr>, new: Option<IpAddr>, now: i64) -> bool {
        // The same place reconnecting (a dropped laptop link) is not a fight; an unknown address counts.
        if old.is_some() && old == new {
            return false;
        }
        let times = self.recent.entry(credential).or_default();
        times.retain(|t| now - t < WINDOW_SECS);
        times.push(now);
        if times.len() >= LIMIT {
            times.clear();
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn a_fight_from_two_places_suspends_and_reconnects_from_one_place_never_do() {
        let mut w = TakeoverWatch::default();
        for i in 0..100 {
            assert!(!w.note(1, ip("192.0.2.1"), ip("192.0.2.1"), i * 5), "same address reconnecting");
        }
        let (a, b) = (ip("192.0.2.1"), ip("198.51.100.7"));
        let mut suspended_at = None;
        for i in 0..LIMIT as i64 {
            let (old, new) = if i % 2 == 0 { (a, b) } else { (b, a) };
            if w.note(2, old, new, 1000 + i * 5) {
                suspended_at = Some(i);
            }
        }
        assert_eq!(suspended_at, Some(LIMIT as i64 - 1), "suspended at the LIMIT-th takeover");
        // Slow takeovers (a person moving between networks now and then) never add up.
        for i in 0..50 {
            assert!(!w.note(3, a, b, i * (WINDOW_SECS / (LIMIT as i64 - 1) + 1)));
        }
    }
}
