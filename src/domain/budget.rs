//! Connection budgets of a public listener (invariant 13), and the log policy for what they refuse. Pure: the
//! accept loops (`http::budget`) feed them addresses and the time and act on the answers.
//!
//! A connection is *pending* from its accept until it proves something (the front: a genuine tls-crypt-v2 client
//! key; HTTP listeners: a complete TLS handshake and request head), then *established*. A stranger can only ever
//! hold pending connections, and those are bounded three ways: per source at once, per source per second (a token
//! bucket), and all sources together. When all sources together are at the bound, the newest pending connection of
//! the source holding the most is shed for a newcomer from a source holding fewer (else the newcomer is refused);
//! an established connection is never shed. A source is an IPv4 address or an IPv6 /64 (one
//! IPv6 host commonly holds a whole /64).

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

/// The bounds of one listener.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Pending connections one source may hold at once.
    pub per_source_pending: u32,
    /// New connections per second one source may open, sustained…
    pub per_source_rate: f64,
    /// …and in a burst.
    pub per_source_burst: u32,
    /// Pending connections of all sources together.
    pub pending: usize,
    /// All connections, pending and established.
    pub total: usize,
}

/// Why a new connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Its source already holds `per_source_pending` unproven connections.
    SourceBusy,
    /// Its source opens connections faster than `per_source_rate`.
    SourceRate,
    /// The pending (or total) budget is full and no other source holds more unproven connections than this one.
    Full,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::SourceBusy => "too many unfinished connections from this source",
            Refusal::SourceRate => "too many new connections per second from this source",
            Refusal::Full => "connection budget full",
        }
    }
}

/// A pending connection, as the budget knows it.
pub type ConnId = u64;

/// An admitted connection; `shed` names a pending connection of the heaviest source that must be closed to make
/// room for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    pub id: ConnId,
    pub shed: Option<(IpAddr, ConnId)>,
}

/// The source a budget is kept for: the IPv4 address, or the /64 of an IPv6 address.
pub fn source_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

#[derive(Debug)]
struct Source {
    /// Its pending connections, oldest first.
    pending: Vec<ConnId>,
    tokens: f64,
    refilled: Instant,
}

/// Sources remembered at most (about 100 bytes each); past it, forgotten sources are swept at most once a second
/// and a new source finding no room is refused as `Full`.
const MAX_SOURCES: usize = 65_536;

/// When a budget is full, the newcomer takes the place of the newest pending connection of the source holding the
/// most, if that source holds more than the newcomer's: a flood from many addresses fills the budget, but a
/// terminal that holds nothing always gets in, and the flood's own newest connections make room (max-min fairness).
#[derive(Debug)]
pub struct Budget {
    limits: Limits,
    sources: HashMap<IpAddr, Source>,
    /// Sources holding pending connections, by how many.
    by_load: BTreeSet<(usize, IpAddr)>,
    pending: usize,
    established: usize,
    next_id: ConnId,
    swept: Option<Instant>,
}

impl Budget {
    pub fn new(limits: Limits) -> Budget {
        Budget {
            limits,
            sources: HashMap::new(),
            by_load: BTreeSet::new(),
            pending: 0,
            established: 0,
            next_id: 0,
            swept: None,
        }
    }

    /// A new connection from `ip` at `now`: admitted as pending (maybe in place of another), or refused.
    pub fn admit(&mut self, ip: IpAddr, now: Instant) -> Result<Admitted, Refusal> {
        let key = source_of(ip);
        if !self.sources.contains_key(&key) && self.sources.len() >= MAX_SOURCES {
            self.sweep(now);
            if self.sources.len() >= MAX_SOURCES {
                return Err(Refusal::Full);
            }
        }
        let limits = self.limits;
        let s = self.sources.entry(key).or_insert(Source {
            pending: Vec::new(),
            tokens: f64::from(limits.per_source_burst),
            refilled: now,
        });
        let elapsed = now.saturating_duration_since(s.refilled).as_secs_f64();
        s.tokens = (s.tokens + elapsed * limits.per_source_rate).min(f64::from(limits.per_source_burst));
        s.refilled = now;
        if s.pending.len() >= limits.per_source_pending as usize {
            return Err(Refusal::SourceBusy);
        }
        if s.tokens < 1.0 {
            return Err(Refusal::SourceRate);
        }
        let mine = s.pending.len();
        let full = self.pending >= limits.pending || self.pending + self.established >= limits.total;
        let shed = if full {
            match self.by_load.last().copied() {
                Some((heaviest, victim)) if heaviest > mine => {
                    let id = self.sources.get(&victim).and_then(|v| v.pending.last().copied());
                    let id = id.expect("a source in by_load holds pending connections");
                    self.leave_pending(victim, id);
                    Some((victim, id))
                }
                _ => return Err(Refusal::Full),
            }
        } else {
            None
        };
        let id = self.next_id;
        self.next_id += 1;
        let s = self.sources.get_mut(&key).expect("entry made above");
        s.tokens -= 1.0;
        self.by_load.remove(&(s.pending.len(), key));
        s.pending.push(id);
        self.by_load.insert((s.pending.len(), key));
        self.pending += 1;
        Ok(Admitted { id, shed })
    }

    /// Pending connection `id` from `ip` proved itself; false when it was no longer pending (shed).
    pub fn establish(&mut self, ip: IpAddr, id: ConnId) -> bool {
        let proved = self.leave_pending(source_of(ip), id);
        if proved {
            self.established += 1;
        }
        proved
    }

    /// Connection `id` from `ip` ended, pending or established.
    pub fn release(&mut self, ip: IpAddr, id: ConnId, established: bool) {
        if established {
            self.established = self.established.saturating_sub(1);
        } else {
            self.leave_pending(source_of(ip), id);
        }
    }

    fn leave_pending(&mut self, key: IpAddr, id: ConnId) -> bool {
        let Some(s) = self.sources.get_mut(&key) else { return false };
        let Some(at) = s.pending.iter().position(|p| *p == id) else { return false };
        self.by_load.remove(&(s.pending.len(), key));
        s.pending.remove(at);
        if !s.pending.is_empty() {
            self.by_load.insert((s.pending.len(), key));
        }
        self.pending -= 1;
        true
    }

    /// Forgets sources that hold nothing and whose bucket has refilled: they are as good as new.
    fn sweep(&mut self, now: Instant) {
        if self.swept.is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1)) {
            return;
        }
        self.swept = Some(now);
        let limits = self.limits;
        self.sources.retain(|_, s| {
            let refill = (f64::from(limits.per_source_burst) - s.tokens) / limits.per_source_rate.max(f64::EPSILON);
            !s.pending.is_empty() || now.saturating_duration_since(s.refilled).as_secs_f64() < refill
        });
    }

    /// (pending, established) connections now.
    pub fn counts(&self) -> (usize, usize) {
        (self.pending, self.established)
    }
}

/// One line for the log: `refused` connections from `source` (`None`: from sources past the per-interval cap,
/// `sources` of them) for `reason` (the latest one).
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub source: Option<IpAddr>,
    pub sources: usize,
    pub refused: u64,
    pub reason: &'static str,
    /// The first refusal of this source in this interval (logged at once; later ones are summed).
    pub first: bool,
}

#[derive(Debug)]
struct Quiet {
    since: Instant,
    suppressed: u64,
    reason: &'static str,
}

/// Rate-limited logging of refusals: the first refusal of a source is logged at once, then one summary line per
/// source per interval; past `max_sources` sources in an interval, the rest share one line. A flood therefore
/// writes a bounded number of lines whatever its size.
#[derive(Debug)]
pub struct RefusalLog {
    interval: Duration,
    max_sources: usize,
    sources: HashMap<IpAddr, Quiet>,
    others: Option<(Instant, u64, std::collections::HashSet<IpAddr>, &'static str)>,
}

/// Distinct sources the "other sources" line counts at most (it is a count for the operator, not an index).
const MAX_OTHERS: usize = 65_536;

impl RefusalLog {
    pub fn new(interval: Duration, max_sources: usize) -> RefusalLog {
        RefusalLog { interval, max_sources, sources: HashMap::new(), others: None }
    }

    /// A refusal of a connection from `ip`; returns what to log now, if anything.
    pub fn note(&mut self, ip: IpAddr, reason: &'static str, now: Instant) -> Option<Summary> {
        let key = source_of(ip);
        if let Some(q) = self.sources.get_mut(&key) {
            q.suppressed += 1;
            q.reason = reason;
            if now.saturating_duration_since(q.since) < self.interval {
                return None;
            }
            let line = Summary { source: Some(key), sources: 1, refused: q.suppressed, reason, first: false };
            q.since = now;
            q.suppressed = 0;
            return Some(line);
        }
        if self.sources.len() < self.max_sources {
            self.sources.insert(key, Quiet { since: now, suppressed: 0, reason });
            return Some(Summary { source: Some(key), sources: 1, refused: 1, reason, first: true });
        }
        let others = self.others.get_or_insert_with(|| (now, 0, Default::default(), reason));
        others.1 += 1;
        others.3 = reason;
        if others.2.len() < MAX_OTHERS {
            others.2.insert(key);
        }
        None
    }

    /// Summaries of intervals that ended by `now` (call it about once per interval); forgets quiet sources.
    pub fn flush(&mut self, now: Instant) -> Vec<Summary> {
        let interval = self.interval;
        let mut out = Vec::new();
        self.sources.retain(|ip, q| {
            if now.saturating_duration_since(q.since) < interval {
                return true;
            }
            if q.suppressed > 0 {
                out.push(Summary {
                    source: Some(*ip),
                    sources: 1,
                    refused: q.suppressed,
                    reason: q.reason,
                    first: false,
                });
            }
            false
        });
        if let Some((since, refused, ips, reason)) = &self.others
            && now.saturating_duration_since(*since) >= interval
        {
            out.push(Summary { source: None, sources: ips.len(), refused: *refused, reason, first: false });
            self.others = None;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits =
        Limits { per_source_pending: 4, per_source_rate: 10.0, per_source_burst: 8, pending: 20, total: 30 };

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn admit(b: &mut Budget, a: &str, now: Instant) -> Result<Admitted, Refusal> {
        b.admit(ip(a), now)
    }

    #[test]
    fn one_source_holds_at_most_its_share_of_pending_connections() {
        let now = Instant::now();
        let mut b = Budget::new(LIMITS);
        let first = admit(&mut b, "192.0.2.1", now).unwrap();
        for _ in 0..3 {
            admit(&mut b, "192.0.2.1", now).unwrap();
        }
        assert_eq!(admit(&mut b, "192.0.2.1", now), Err(Refusal::SourceBusy));
        admit(&mut b, "192.0.2.2", now).expect("another source is not affected");
        assert!(b.establish(ip("192.0.2.1"), first.id));
        admit(&mut b, "192.0.2.1", now).expect("a proven connection frees its pending slot");
        assert_eq!(b.counts(), (5, 1));
    }

    #[test]
    fn the_rate_bucket_refills_with_time() {
        let t0 = Instant::now();
        let mut b = Budget::new(LIMITS);
        let mut admitted = 0;
        for _ in 0..100 {
            if let Ok(a) = admit(&mut b, "192.0.2.1", t0) {
                admitted += 1;
                b.release(ip("192.0.2.1"), a.id, false);
            }
        }
        assert_eq!(admitted, 8, "the burst");
        assert_eq!(admit(&mut b, "192.0.2.1", t0), Err(Refusal::SourceRate));
        admit(&mut b, "192.0.2.1", t0 + Duration::from_millis(150)).expect("one token back after 100 ms at 10/s");
    }

    #[test]
    fn an_ipv6_slash_64_is_one_source() {
        let now = Instant::now();
        let mut b = Budget::new(LIMITS);
        for i in 0..4 {
            admit(&mut b, &format!("2001:db8:0:1::{i}"), now).unwrap();
        }
        assert_eq!(admit(&mut b, "2001:db8:0:1:ffff::9", now), Err(Refusal::SourceBusy));
        admit(&mut b, "2001:db8:0:2::1", now).expect("the next /64 is another source");
        assert_eq!(source_of(ip("::ffff:192.0.2.7")), ip("192.0.2.7"), "IPv4-mapped addresses are IPv4");
    }

    #[test]
    fn a_full_budget_sheds_the_heaviest_sources_newest_and_never_an_established_one() {
        let now = Instant::now();
        let mut b = Budget::new(LIMITS);
        // 5 flooders hold 4 pending each: the pending budget (20) is full.
        let mut newest = HashMap::new();
        for f in 0..5 {
            for _ in 0..4 {
                let a = admit(&mut b, &format!("203.0.113.{f}"), now).unwrap();
                assert_eq!(a.shed, None);
                newest.insert(ip(&format!("203.0.113.{f}")), a.id);
            }
        }
        assert_eq!(b.counts(), (20, 0));
        // A terminal holding nothing gets in; a flooder's newest pending connection makes room.
        let t = admit(&mut b, "198.51.100.7", now).unwrap();
        let (victim, id) = t.shed.expect("something was shed");
        assert_eq!(newest[&victim], id, "the victim source's newest connection");
        assert!(!b.establish(victim, id), "a shed connection cannot prove itself afterwards");
        assert_eq!(b.counts(), (20, 0));
        // A flooder at its per-source bound is refused.
        assert_eq!(admit(&mut b, "203.0.113.1", now), Err(Refusal::SourceBusy));
        let t2 = admit(&mut b, "198.51.100.7", now).unwrap();
        assert!(t2.shed.is_some(), "1 pending vs 4: the terminal's second connection still gets in");
        assert!(b.establish(ip("198.51.100.7"), t.id));
        assert!(b.establish(ip("198.51.100.7"), t2.id));
        assert_eq!(b.counts(), (18, 2));

        // The total budget: 26 established (from as many sources) + 4 pending = 30; a newcomer sheds the pending
        // flooder, and when only established connections are left, it is refused.
        let mut b = Budget::new(LIMITS);
        for i in 0..26 {
            let a = ip(&format!("198.51.100.{i}"));
            let id = b.admit(a, now).unwrap().id;
            assert!(b.establish(a, id));
        }
        for _ in 0..4 {
            admit(&mut b, "203.0.113.9", now).unwrap();
        }
        let t = admit(&mut b, "198.51.100.200", now).unwrap();
        assert_eq!(t.shed.map(|s| s.0), Some(ip("203.0.113.9")));
        assert!(b.establish(ip("198.51.100.200"), t.id));
        for _ in 0..2 {
            admit(&mut b, "198.51.100.201", now).unwrap().shed.expect("sheds the flooder");
        }
        // Now .201 holds 2 and the flooder 1: .201 is the heaviest and finds no one to shed.
        assert_eq!(admit(&mut b, "198.51.100.201", now), Err(Refusal::Full));
        assert_eq!(b.counts(), (3, 27));
        assert_eq!(admit(&mut b, "198.51.100.202", now).map(|a| a.shed.map(|s| s.0)), Ok(Some(ip("198.51.100.201"))));
        assert_eq!(b.counts(), (3, 27), "never an established connection");
    }

    #[test]
    fn releases_balance_and_sources_are_forgotten() {
        let t0 = Instant::now();
        let mut b = Budget::new(LIMITS);
        let one = admit(&mut b, "192.0.2.1", t0).unwrap();
        let two = admit(&mut b, "192.0.2.1", t0).unwrap();
        assert!(b.establish(ip("192.0.2.1"), one.id));
        b.release(ip("192.0.2.1"), one.id, true);
        b.release(ip("192.0.2.1"), two.id, false);
        // A stray release changes nothing.
        b.release(ip("192.0.2.9"), 77, false);
        assert_eq!(b.counts(), (0, 0));
        assert!(b.by_load.is_empty());
        b.sweep(t0 + Duration::from_secs(5));
        assert_eq!(b.sources.len(), 0, "a source holding nothing with a full bucket is forgotten");
    }

    #[test]
    fn refusals_are_logged_once_per_source_per_interval() {
        let t0 = Instant::now();
        let mut log = RefusalLog::new(Duration::from_secs(60), 2);
        let first = log.note(ip("192.0.2.1"), "r", t0).expect("the first refusal is logged");
        assert!(first.first);
        for _ in 0..1000 {
            assert_eq!(log.note(ip("192.0.2.1"), "r", t0 + Duration::from_secs(1)), None);
        }
        assert!(log.note(ip("192.0.2.2"), "r", t0).is_some());
        // Past two sources per interval, the rest share one line.
        for i in 0..50 {
            assert_eq!(log.note(ip(&format!("203.0.113.{i}")), "r", t0), None);
        }
        assert!(log.flush(t0 + Duration::from_secs(30)).is_empty(), "nothing before the interval ends");
        let lines = log.flush(t0 + Duration::from_secs(61));
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines.contains(&Summary {
            source: Some(ip("192.0.2.1")),
            sources: 1,
            refused: 1000,
            reason: "r",
            first: false
        }));
        assert!(lines.contains(&Summary { source: None, sources: 50, refused: 50, reason: "r", first: false }));
        assert!(log.flush(t0 + Duration::from_secs(200)).is_empty());
    }
}
