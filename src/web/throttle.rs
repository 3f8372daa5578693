//! Login throttling, as pure state: 5 failed logins (wrong password or code) from one source address within 15
//! minutes ban that address for 15 minutes; every failure after the 5th in a row for one user makes the next
//! password check for that user wait (1 s, 2 s, 4 s … at most 60 s). The wait slows guessing without ever locking
//! the real user out: an attacker can make them wait a minute, never take their account.
//!
//! The source table is bounded (`MAX_SOURCES`): expired entries are pruned, and while it is full of live entries
//! a new source is not remembered (the per-user wait still slows its guesses). The table lives in the admin
//! process: a restart forgets bans, never a user's wait (stored with the user).

use std::collections::HashMap;
use std::net::IpAddr;

/// Failures from one source within `WINDOW` that ban it.
pub const MAX_FAILURES: usize = 5;
/// The counting window and the ban's length, in seconds.
pub const WINDOW: i64 = 15 * 60;
/// Consecutive failures of one user before its password checks are slowed.
pub const USER_FREE_FAILURES: u32 = 5;
/// The longest a user's next password check waits.
pub const MAX_USER_DELAY: i64 = 60;
/// Most source addresses remembered at once.
pub const MAX_SOURCES: usize = 10_000;

#[derive(Debug, Default)]
struct Source {
    failures: Vec<i64>,
    banned_until: Option<i64>,
}

/// Whether a source may try to log in now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Banned for this many more seconds.
    Banned(i64),
}

#[derive(Debug, Default)]
pub struct Throttle {
    sources: HashMap<IpAddr, Source>,
}

impl Throttle {
    pub fn check(&self, ip: IpAddr, now: i64) -> Verdict {
        match self.sources.get(&ip).and_then(|s| s.banned_until) {
            Some(until) if until > now => Verdict::Banned(until - now),
            _ => Verdict::Allowed,
        }
    }

    /// Records a failure; returns true when it banned the source just now.
    pub fn fail(&mut self, ip: IpAddr, now: i64) -> bool {
        self.prune(now);
        if !self.sources.contains_key(&ip) && self.sources.len() >= MAX_SOURCES {
            // Full of live entries: this source is not remembered, but it is not let through either (the
            // per-user delay still applies to every guess).
            return false;
        }
        let s = self.sources.entry(ip).or_default();
        s.failures.retain(|t| now - t < WINDOW);
        s.failures.push(now);
        if s.failures.len() >= MAX_FAILURES && s.banned_until.is_none_or(|u| u <= now) {
            s.banned_until = Some(now + WINDOW);
            s.failures.clear();
            return true;
        }
        false
    }

    /// A good login clears the source's count (not an active ban).
    pub fn succeed(&mut self, ip: IpAddr) {
        if let Some(s) = self.sources.get_mut(&ip) {
            s.failures.clear();
        }
    }

    /// Lifts a ban (an admin's `unban`); `false` when there was none.
    pub fn unban(&mut self, ip: IpAddr) -> bool {
        self.sources.remove(&ip).is_some_and(|s| s.banned_until.is_some())
    }

    /// Sources banned now, with the time their ban ends.
    pub fn banned(&self, now: i64) -> Vec<(IpAddr, i64)> {
        let mut v: Vec<_> =
            self.sources.iter().filter_map(|(ip, s)| s.banned_until.filter(|u| *u > now).map(|u| (*ip, u))).collect();
        v.sort();
        v
    }

    fn prune(&mut self, now: i64) {
        if self.sources.len() < MAX_SOURCES / 2 {
            return;
        }
        self.sources.retain(|_, s| {
            s.failures.retain(|t| now - t < WINDOW);
            !s.failures.is_empty() || s.banned_until.is_some_and(|u| u > now)
        });
    }
}

/// When the next password check of a user with `failures` consecutive failures may happen (`None`: at once).
pub fn user_slow_until(failures: u32, now: i64) -> Option<i64> {
    let over = failures.checked_sub(USER_FREE_FAILURES - 1)?;
    if over == 0 {
        return None;
    }
    let delay = 1i64.checked_shl(over - 1).unwrap_or(MAX_USER_DELAY).min(MAX_USER_DELAY);
    Some(now + delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn five_failures_ban_the_source_for_the_window() {
        let mut t = Throttle::default();
        let a = ip("198.19.0.6");
        for i in 0..4 {
            assert!(!t.fail(a, 100 + i));
            assert_eq!(t.check(a, 100 + i), Verdict::Allowed);
        }
        assert!(t.fail(a, 104));
        assert_eq!(t.check(a, 105), Verdict::Banned(WINDOW - 1));
        assert_eq!(t.check(ip("198.19.0.7"), 105), Verdict::Allowed, "another source is not banned");
        assert_eq!(t.check(a, 104 + WINDOW), Verdict::Allowed, "the ban ends");
        assert_eq!(t.banned(105), vec![(a, 104 + WINDOW)]);
        assert!(t.unban(a));
        assert_eq!(t.check(a, 105), Verdict::Allowed);
    }

    #[test]
    fn failures_outside_the_window_do_not_count() {
        let mut t = Throttle::default();
        let a = ip("198.19.0.6");
        for i in 0..4 {
            t.fail(a, i * WINDOW);
        }
        assert!(!t.fail(a, 4 * WINDOW));
        assert_eq!(t.check(a, 4 * WINDOW), Verdict::Allowed);
    }

    #[test]
    fn a_success_clears_the_count() {
        let mut t = Throttle::default();
        let a = ip("198.19.0.6");
        for i in 0..4 {
            t.fail(a, i);
        }
        t.succeed(a);
        assert!(!t.fail(a, 10));
        assert_eq!(t.check(a, 10), Verdict::Allowed);
    }

    #[test]
    fn the_table_is_bounded() {
        let mut t = Throttle::default();
        for i in 0..(MAX_SOURCES as u32 + 100) {
            t.fail(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)), 1);
        }
        assert!(t.sources.len() <= MAX_SOURCES);
    }

    #[test]
    fn users_are_slowed_never_locked() {
        assert_eq!(user_slow_until(0, 100), None);
        assert_eq!(user_slow_until(4, 100), None);
        assert_eq!(user_slow_until(5, 100), Some(101));
        assert_eq!(user_slow_until(6, 100), Some(102));
        assert_eq!(user_slow_until(8, 100), Some(108));
        assert_eq!(user_slow_until(50, 100), Some(100 + MAX_USER_DELAY));
        assert_eq!(user_slow_until(u32::MAX, 100), Some(100 + MAX_USER_DELAY));
    }
}
