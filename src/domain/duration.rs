//! `Dur`: a human duration for the CLI (`15m`, `24h`, `30d`), parsed by `humantime` and bounded; `Since`: a
//! point in the past, given as an RFC 3339 time or as such a duration back from now.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::{DomainError, shown};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl Dur {
    /// Ten years: anything longer is a typo, not a policy.
    const MAX: Duration = Duration::from_secs(10 * 366 * 24 * 3600);

    pub fn as_secs(self) -> u64 {
        self.0.as_secs()
    }
}

impl FromStr for Dur {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why: String| DomainError::Duration { shown: shown(s), why };
        let d = humantime::parse_duration(s).map_err(|e| err(format!("{e} (examples: 90s, 15m, 24h, 7d)")))?;
        if d.as_secs() == 0 {
            return Err(err("must be at least one second".into()));
        }
        if d > Self::MAX {
            return Err(err("longer than ten years".into()));
        }
        Ok(Dur(d))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// Where a look back in time starts: an RFC 3339 time (`2026-01-31T08:00:00Z`, any offset) or a `Dur` back from
/// now (`24h`, `7d`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// Unix seconds.
    At(i64),
    Ago(Dur),
}

impl Since {
    /// Unix seconds, for a clock reading `now`.
    pub fn resolve(self, now: i64) -> i64 {
        match self {
            Since::At(t) => t,
            Since::Ago(d) => now.saturating_sub(i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
        }
    }
}

impl FromStr for Since {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(t) = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
            return Ok(Since::At(t.unix_timestamp()));
        }
        s.parse().map(Since::Ago).map_err(|_| DomainError::Since { shown: shown(s) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_a_time_or_a_duration_back() {
        assert_eq!("2026-01-31T08:00:00Z".parse::<Since>().unwrap(), Since::At(1_769_846_400));
        assert_eq!("2026-01-31T09:00:00+01:00".parse::<Since>().unwrap(), Since::At(1_769_846_400));
        let day = "24h".parse::<Since>().unwrap();
        assert_eq!(day.resolve(1_000_000), 1_000_000 - 86_400);
        assert_eq!("7d".parse::<Since>().unwrap().resolve(1_000_000), 1_000_000 - 7 * 86_400);
        for bad in ["", "yesterday", "2026-01-31", "2026-13-01T00:00:00Z", "0s", "-1h", "1h\u{1b}[2J"] {
            let err = bad.parse::<Since>().unwrap_err();
            assert!(matches!(err, DomainError::Since { .. }), "{bad:?}: {err}");
            assert!(!err.to_string().contains('\u{1b}'), "{err}");
        }
    }
}
