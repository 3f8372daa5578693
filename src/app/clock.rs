//! Time as the store keeps it: unix seconds, shown as RFC 3339 UTC.

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
