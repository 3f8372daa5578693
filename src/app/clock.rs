//! Time as the store keeps it: unix seconds, shown as RFC 3339 UTC; and the [`Clock`] every decision that depends
//! on the time (token and pairing expiry, bans, windows, renewal) asks, so that tests move time instead of
//! rewriting rows.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// Where "now" comes from. The system clock in production; a test clock that a test sets or advances, shared by
/// every clone (and so by everything that got it from the same `Ctx`). Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Clock(Source);

#[derive(Debug, Clone, Default)]
enum Source {
    #[default]
    System,
    Test(Arc<AtomicI64>),
}

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock(Source::System)
    }

    /// A test clock standing at `unix` seconds until it is set or advanced.
    pub fn test(unix: i64) -> Clock {
        Clock(Source::Test(Arc::new(AtomicI64::new(unix))))
    }

    /// Unix seconds now, by this clock.
    pub fn now(&self) -> i64 {
        match &self.0 {
            Source::System => now(),
            Source::Test(t) => t.load(Ordering::SeqCst),
        }
    }

    /// Moves a test clock to `unix` (backwards too). Refused by the system clock, which no code may move.
    pub fn set(&self, unix: i64) -> Result<(), ClockError> {
        match &self.0 {
            Source::System => Err(ClockError::System),
            Source::Test(t) => {
                t.store(unix, Ordering::SeqCst);
                Ok(())
            }
        }
    }

    /// Moves a test clock forward by `secs`.
    pub fn advance(&self, secs: i64) -> Result<(), ClockError> {
        match &self.0 {
            Source::System => Err(ClockError::System),
            Source::Test(t) => {
                t.fetch_add(secs, Ordering::SeqCst);
                Ok(())
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClockError {
    #[error("the system clock cannot be moved (only a test clock can)")]
    System,
}

/// Unix seconds now. Every timestamp in the store is this.
pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

pub fn to_datetime(unix: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(unix).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// RFC 3339 for reports and JSON.
pub fn rfc3339(unix: i64) -> String {
    to_datetime(unix).format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_test_clock_is_shared_by_its_clones_and_the_system_clock_does_not_move() {
        let clock = Clock::test(1_000);
        let other = clock.clone();
        clock.advance(60).unwrap();
        assert_eq!(other.now(), 1_060);
        other.set(500).unwrap();
        assert_eq!(clock.now(), 500);
        let system = Clock::system();
        assert_eq!(system.set(0), Err(ClockError::System));
        assert_eq!(system.advance(1), Err(ClockError::System));
        assert!((system.now() - now()).abs() <= 1);
    }
}
