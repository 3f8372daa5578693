//! When a terminal renews its certificate, and why a renewal failed.
//!
//! The **renewal window** is the last `renew_before` of a certificate's life. A fleet paired or imported on one day
//! gets certificates that all end within the same minute; if every terminal renewed as soon as the window opened,
//! the signer, master and the store would take the whole batch in that minute, and a fault then would hit every
//! terminal at once. So each certificate has its own **renewal point** inside the first half of its window, taken
//! from a hash of its serial: stable across heartbeats and master restarts (no state to keep), spread evenly over
//! the half for any batch (serials are random), and leaving at least half the window before expiry for retries.
//! master announces the point (`renew_after`) and accepts a renewal from that point on, so old agents, which
//! simply obey `renew_after`, are spread too. Pure: master, `status` and `/metrics` all call it.

use sha2::{Digest, Sha256};

use super::{DomainError, shown, unsafe_char};

/// How renewals are timed: the length of the window (`renew_before_days` of `config/vpn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenewalPolicy {
    renew_before_secs: i64,
}

impl RenewalPolicy {
    /// A window of `renew_before_secs` (at least one second).
    pub fn new(renew_before_secs: i64) -> Result<RenewalPolicy, DomainError> {
        if renew_before_secs < 1 {
            return Err(DomainError::Renewal { why: "the renewal window must last at least one second" });
        }
        Ok(RenewalPolicy { renew_before_secs })
    }

    /// A window of `days` days (at least one second: 0 days is read as one second, which config validation
    /// never lets through anyway).
    pub fn from_days(days: u32) -> RenewalPolicy {
        RenewalPolicy { renew_before_secs: (i64::from(days) * 86_400).max(1) }
    }

    pub fn renew_before_secs(self) -> i64 {
        self.renew_before_secs
    }

    /// When the window of a certificate ending at `not_after` opens.
    pub fn window_opens(self, not_after: i64) -> i64 {
        not_after.saturating_sub(self.renew_before_secs)
    }

    /// How much of the window renewal points are spread over, from its opening: the first half, so that the
    /// latest point still leaves half the window (30 days by default) for retries before the certificate ends.
    pub fn spread_secs(self) -> i64 {
        self.renew_before_secs / 2
    }

    /// The latest a renewal point can be: the rest of the window is the safety margin.
    pub fn latest_point(self, not_after: i64) -> i64 {
        self.window_opens(not_after).saturating_add(self.spread_secs()).min(not_after)
    }

    /// The renewal point of the certificate with `serial` (hex, either case) ending at `not_after`: from it on,
    /// master accepts its renewal. Always within `[window_opens, latest_point]`.
    pub fn point(self, serial: &str, not_after: i64) -> i64 {
        let digest = Sha256::digest(serial.to_ascii_lowercase().as_bytes());
        let mut head = [0u8; 8];
        head.copy_from_slice(&digest[..8]);
        // The spread is at most half of an i64 of seconds, so the modulo bias of a 64-bit hash is negligible.
        let span = u64::try_from(self.spread_secs()).unwrap_or(0) + 1;
        let offset = i64::try_from(u64::from_be_bytes(head) % span).unwrap_or(0);
        // `min`: only for dates so near i64::MIN that the window's opening saturated.
        self.window_opens(not_after).saturating_add(offset).min(not_after)
    }
}

/// Who saw a renewal fail: master refusing or failing it, or the terminal reporting a failure in its next
/// heartbeat (it could not reach master, master's answer was unusable, it could not write its files, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureSource {
    Master,
    Terminal,
}

impl FailureSource {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureSource::Master => "master",
            FailureSource::Terminal => "terminal",
        }
    }
}

impl std::str::FromStr for FailureSource {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "master" => Ok(FailureSource::Master),
            "terminal" => Ok(FailureSource::Terminal),
            _ => Err(DomainError::Renewal { why: "the source must be master or terminal" }),
        }
    }
}

/// Longest [`FailureCode`].
pub const MAX_CODE_LEN: usize = 40;
/// Longest [`FailureDetail`], in characters.
pub const MAX_DETAIL_CHARS: usize = 300;

/// A short machine-readable reason (`invalid_csr`, `not_in_renewal_window`, `signer_unavailable`,
/// `unreachable`, …): 1 to 40 of `a-z`, `0-9`, `_`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct FailureCode(String);

impl FailureCode {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for FailureCode {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.len() > MAX_CODE_LEN {
            return Err(DomainError::FailureCode { shown: shown(s), why: "must be 1 to 40 characters" });
        }
        if !s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
            return Err(DomainError::FailureCode { shown: shown(s), why: "only a-z, 0-9 and _ are allowed" });
        }
        Ok(FailureCode(s.to_owned()))
    }
}

impl std::fmt::Display for FailureCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What happened, for a person: at most 300 characters, no control character and no invisible format character
/// (it is shown in `status`, the web UI and logs, so it must not be able to forge a line or reorder what a
/// terminal shows).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct FailureDetail(String);

impl FailureDetail {
    /// Makes any text a valid detail: control characters become spaces, and it is cut at 300 characters (with
    /// `…`). For text this process writes itself; text from elsewhere goes through `parse`, which refuses.
    pub fn lossy(text: &str) -> FailureDetail {
        let mut out: String =
            text.chars().map(|c| if unsafe_char(c) { ' ' } else { c }).take(MAX_DETAIL_CHARS).collect();
        if text.chars().count() > MAX_DETAIL_CHARS {
            out.pop();
            out.push('…');
        }
        FailureDetail(out)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for FailureDetail {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.chars().count() > MAX_DETAIL_CHARS {
            return Err(DomainError::Renewal { why: "the failure message is longer than 300 characters" });
        }
        if s.chars().any(unsafe_char) {
            return Err(DomainError::Renewal { why: "the failure message holds a control or invisible character" });
        }
        Ok(FailureDetail(s.to_owned()))
    }
}

impl std::fmt::Display for FailureDetail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    /// `n` random-looking 128-bit serials, as the CA makes them (deterministic, so the test is too).
    fn serials(n: usize) -> Vec<String> {
        (0..n).map(|i| hex::encode(&Sha256::digest(format!("serial {i}").as_bytes())[..16])).collect()
    }

    #[test]
    fn points_stay_in_the_first_half_of_the_window_and_are_stable() {
        let p = RenewalPolicy::from_days(60);
        let not_after = 1_900_000_000;
        assert_eq!(p.window_opens(not_after), not_after - 60 * DAY);
        assert_eq!(p.latest_point(not_after), not_after - 30 * DAY);
        for s in serials(2000) {
            let t = p.point(&s, not_after);
            assert!(t >= p.window_opens(not_after) && t <= p.latest_point(not_after), "{s}: {t}");
            // At least half the window is left for retries.
            assert!(not_after - t >= 30 * DAY);
            // Stable: the same serial, either case, always gets the same point (no state, no clock).
            assert_eq!(p.point(&s.to_ascii_uppercase(), not_after), t);
        }
        // Tiny and odd windows keep the bounds too.
        for secs in [1, 2, 3, 7, 3601] {
            let p = RenewalPolicy::new(secs).unwrap();
            for s in serials(200) {
                let t = p.point(&s, 100);
                assert!((100 - secs..=100 - secs + secs / 2).contains(&t), "{secs}: {t}");
            }
        }
        assert!(RenewalPolicy::new(0).is_err() && RenewalPolicy::new(-5).is_err());
        assert_eq!(RenewalPolicy::from_days(0).renew_before_secs(), 1);
        // Extreme dates saturate instead of wrapping, and the bounds still hold.
        for end in [i64::MIN + 5, i64::MAX] {
            let t = p.point("ab", end);
            assert!(t >= p.window_opens(end) && t <= p.latest_point(end) && t <= end, "{end}: {t}");
        }
    }

    #[test]
    fn a_batch_issued_in_the_same_second_is_spread_evenly_over_the_half_window() {
        let p = RenewalPolicy::from_days(60);
        let not_after = 1_900_000_000;
        let n = 20_000;
        let points: Vec<i64> = serials(n).iter().map(|s| p.point(s, not_after)).collect();
        // Ten equal slices of the spread: each holds about a tenth (binomial sd ≈ 42 for 2000; ±15% is > 7 sd).
        let opens = p.window_opens(not_after);
        let mut slices = [0usize; 10];
        for t in &points {
            let i = usize::try_from((t - opens) * 10 / (p.spread_secs() + 1)).unwrap();
            slices[i] += 1;
        }
        for (i, c) in slices.iter().enumerate() {
            assert!((1700..=2300).contains(c), "slice {i}: {c} of {n} ({slices:?})");
        }
        // And no minute is a stampede: 20,000 points over 30 days average 0.46 a minute; the busiest minute
        // holds a handful, not the batch.
        let mut per_minute = std::collections::HashMap::<i64, usize>::new();
        for t in &points {
            *per_minute.entry(t / 60).or_default() += 1;
        }
        let busiest = per_minute.values().max().copied().unwrap();
        assert!(busiest <= 8, "{busiest} renewals in one minute");
    }

    #[test]
    fn failure_codes_and_details_are_validated() {
        for ok in ["invalid_csr", "not_in_renewal_window", "x", "e2big"] {
            assert_eq!(ok.parse::<FailureCode>().unwrap().as_str(), ok);
        }
        for bad in ["", "Invalid", "a b", "a-b", "a\nb", &"x".repeat(41)] {
            assert!(bad.parse::<FailureCode>().is_err(), "{bad:?}");
        }
        assert!("master said no".parse::<FailureDetail>().is_ok());
        assert!("line\nforged".parse::<FailureDetail>().is_err());
        assert!("abc\u{202E}fed".parse::<FailureDetail>().is_err(), "a bidi override");
        assert!("a\u{200B}b".parse::<FailureDetail>().is_err(), "a zero-width space");
        assert_eq!(FailureDetail::lossy("x\u{2066}y").as_str(), "x y");
        assert!("Ünïcode is fine: größer".parse::<FailureDetail>().is_ok());
        assert!("x".repeat(301).parse::<FailureDetail>().is_err());
        assert_eq!(FailureDetail::lossy("a\nb\u{7}c").as_str(), "a b c");
        let long = FailureDetail::lossy(&"y".repeat(500));
        assert_eq!(long.as_str().chars().count(), 300);
        assert!(long.as_str().ends_with('…'));
        assert!(long.as_str().parse::<FailureDetail>().is_ok());
        assert_eq!("terminal".parse::<FailureSource>().unwrap(), FailureSource::Terminal);
        assert!("agent".parse::<FailureSource>().is_err());
    }
}
