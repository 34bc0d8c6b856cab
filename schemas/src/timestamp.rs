//! Instants as Unix milliseconds, printed as RFC 3339 in UTC.
//!
//! Millisecond precision is what every store keeps (ClickHouse 18.16 has no DateTime64, so
//! instants are stored as Int64 milliseconds there too); finer input is truncated.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Milliseconds in one hour: the granularity of the materialized totals.
pub const HOUR_MS: i64 = 3_600_000;
/// Milliseconds in one day.
pub const DAY_MS: i64 = 24 * HOUR_MS;

/// An instant, as milliseconds since the Unix epoch (UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

/// Why a text is not an acceptable RFC 3339 instant.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not an RFC 3339 timestamp (expected e.g. 2026-03-20T14:22:00Z)")]
pub struct TimestampParseError;

impl Timestamp {
    pub const fn from_millis(millis: i64) -> Self {
        Self(millis)
    }

    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// The current wall-clock time.
    pub fn now() -> Self {
        let millis = match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(elapsed) => i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX),
            // A clock before 1970 is a broken host; treat it as the epoch.
            Err(_) => 0,
        };
        Self(millis)
    }

    /// Parses RFC 3339 (any offset; normalized to UTC, truncated to milliseconds).
    pub fn parse_rfc3339(text: &str) -> Result<Self, TimestampParseError> {
        let parsed = OffsetDateTime::parse(text, &Rfc3339).map_err(|_| TimestampParseError)?;
        let millis = parsed.unix_timestamp_nanos().div_euclid(1_000_000);
        i64::try_from(millis)
            .map(Self)
            .map_err(|_| TimestampParseError)
    }

    /// The hour bucket (hours since the epoch) this instant falls in.
    pub const fn hour_bucket(self) -> i64 {
        self.0.div_euclid(HOUR_MS)
    }

    pub const fn saturating_add_millis(self, millis: i64) -> Self {
        Self(self.0.saturating_add(millis))
    }

    pub const fn saturating_sub_millis(self, millis: i64) -> Self {
        Self(self.0.saturating_sub(millis))
    }
}

impl fmt::Display for Timestamp {
    /// `2026-03-20T14:22:00Z`, or `2026-03-20T14:22:00.123Z` when milliseconds are set.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = i128::from(self.0) * 1_000_000;
        let Ok(at) = OffsetDateTime::from_unix_timestamp_nanos(nanos) else {
            // Only reachable for instants outside year -9999..=9999, which parsing never makes.
            return write!(f, "{}ms", self.0);
        };
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            at.year(),
            u8::from(at.month()),
            at.day(),
            at.hour(),
            at.minute(),
            at.second()
        )?;
        let millis = at.millisecond();
        if millis != 0 {
            write!(f, ".{millis:03}")?;
        }
        f.write_str("Z")
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Timestamp::parse_rfc3339(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_whole_seconds_and_millis() {
        for text in [
            "2026-03-20T14:22:00Z",
            "1999-12-31T23:59:59.999Z",
            "1970-01-01T00:00:00Z",
        ] {
            let parsed = Timestamp::parse_rfc3339(text).unwrap();
            assert_eq!(parsed.to_string(), text);
        }
    }

    #[test]
    fn normalizes_offsets_to_utc_and_truncates_to_millis() {
        let parsed = Timestamp::parse_rfc3339("2026-03-20T16:22:00.123456+02:00").unwrap();
        assert_eq!(parsed.to_string(), "2026-03-20T14:22:00.123Z");
    }

    #[test]
    fn rejects_non_rfc3339() {
        for text in [
            "2026-03-20",
            "2026-03-20 14:22:00",
            "yesterday",
            "",
            "2026-13-01T00:00:00Z",
        ] {
            assert_eq!(
                Timestamp::parse_rfc3339(text),
                Err(TimestampParseError),
                "{text}"
            );
        }
    }

    #[test]
    fn hour_buckets_floor_before_the_epoch() {
        assert_eq!(Timestamp::from_millis(-1).hour_bucket(), -1);
        assert_eq!(Timestamp::from_millis(HOUR_MS).hour_bucket(), 1);
    }
}
