//! Certificate validity windows.
//!
//! rcgen's default window is 1975 to 4096, so every certificate we make gets an explicit one. Times are
//! truncated to whole seconds (X.509 times carry no fractions) and kept in UTC.

use time::{Duration, OffsetDateTime, UtcOffset};

/// How far `not_before` is set back from "now" so that a peer whose clock runs a little behind still
/// accepts a freshly issued certificate.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::minutes(5);

/// The period a certificate is valid for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From five minutes ago (clock skew) until `days` days from now, both to the second.
    pub fn days_from_now(days: u32) -> Validity {
        Validity::days_from(OffsetDateTime::now_utc(), days)
    }

    /// The same window counted from `start` instead of now (a service that takes its time from a clock of its
    /// own).
    pub fn days_from(start: OffsetDateTime, days: u32) -> Validity {
        let start = truncate_to_second(start);
        Validity { not_before: start - CLOCK_SKEW_ALLOWANCE, not_after: start + Duration::days(i64::from(days)) }
    }

    /// The same window, in UTC and truncated to whole seconds, as it will appear in a certificate.
    pub(crate) fn normalized(&self) -> Validity {
        Validity { not_before: truncate_to_second(self.not_before), not_after: truncate_to_second(self.not_after) }
    }
}

/// UTC, whole seconds.
pub(crate) fn truncate_to_second(t: OffsetDateTime) -> OffsetDateTime {
    let t = t.to_offset(UtcOffset::UTC);
    // Every OffsetDateTime has a valid nanosecond 0 for the same second.
    t.replace_nanosecond(0).unwrap_or(t)
}

/// Years that an X.509 time can carry without surprises: UTCTime covers 1950-2049 and GeneralizedTime
/// has four year digits.
pub(crate) fn representable(t: OffsetDateTime) -> bool {
    (1950..=9999).contains(&t.year())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_from_now_backdates_and_truncates() {
        let before = OffsetDateTime::now_utc();
        let v = Validity::days_from_now(30);
        let after = OffsetDateTime::now_utc();
        assert_eq!(v.not_before.nanosecond(), 0);
        assert_eq!(v.not_after.nanosecond(), 0);
        assert_eq!(v.not_before.offset(), UtcOffset::UTC);
        assert!(v.not_before <= before - Duration::minutes(5));
        assert!(v.not_before >= before - Duration::minutes(5) - Duration::seconds(1));
        assert!(v.not_after <= after + Duration::days(30));
        assert!(v.not_after >= before + Duration::days(30) - Duration::seconds(1));
        assert_eq!(v.not_after - v.not_before, Duration::days(30) + Duration::minutes(5));
    }

    #[test]
    fn normalized_moves_to_utc() {
        let t = OffsetDateTime::from_unix_timestamp(1_000_000_000).unwrap() + Duration::nanoseconds(123);
        let shifted = t.to_offset(UtcOffset::from_hms(2, 0, 0).unwrap());
        let v = Validity { not_before: shifted, not_after: shifted }.normalized();
        assert_eq!(v.not_before.offset(), UtcOffset::UTC);
        assert_eq!(v.not_before.unix_timestamp(), 1_000_000_000);
        assert_eq!(v.not_before.nanosecond(), 0);
    }
}
