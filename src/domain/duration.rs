//! `Dur`: a human duration for the CLI (`15m`, `24h`, `30d`), parsed by `humantime` and bounded.

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
