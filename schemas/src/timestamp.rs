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
        let mut text = [0u8; RFC3339_MAX];
        match self.write_rfc3339(&mut text) {
            Some(len) => f.write_str(std::str::from_utf8(&text[..len]).map_err(|_| fmt::Error)?),
            // Only for instants outside years 0..=9999, which parsing never makes.
            None => write!(f, "{}ms", self.0),
        }
    }
}

/// Bytes of the longest text [`Timestamp::write_rfc3339`] writes.
const RFC3339_MAX: usize = 24;

impl Timestamp {
    /// Writes the RFC 3339 text into `out`; its length, or `None` outside years 0..=9999.
    ///
    /// By hand rather than through `time`'s formatting: every click answer and every log
    /// message carries two instants, and the general formatter was a measurable share of
    /// the edge's CPU (docs/BENCHMARKS.md). The calendar arithmetic is Howard Hinnant's
    /// `civil_from_days`; a test checks it against `time` over many instants.
    fn write_rfc3339(self, out: &mut [u8; RFC3339_MAX]) -> Option<usize> {
        let days = self.0.div_euclid(DAY_MS);
        let in_day = self.0.rem_euclid(DAY_MS);
        // civil_from_days: days since 1970-01-01 -> (year, month, day), proleptic Gregorian.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let day_of_era = z.rem_euclid(146_097);
        let year_of_era =
            (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
        let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
        let month_index = (5 * day_of_year + 2) / 153;
        let day = day_of_year - (153 * month_index + 2) / 5 + 1;
        let month = if month_index < 10 {
            month_index + 3
        } else {
            month_index - 9
        };
        let year = year_of_era + era * 400 + i64::from(month <= 2);
        if !(0..=9999).contains(&year) {
            return None;
        }
        let seconds = in_day / 1000;
        let millis = in_day % 1000;
        let digits = |out: &mut [u8], value: i64| {
            let mut value = value;
            for slot in out.iter_mut().rev() {
                *slot = b'0' + (value % 10) as u8;
                value /= 10;
            }
        };
        digits(&mut out[0..4], year);
        out[4] = b'-';
        digits(&mut out[5..7], month);
        out[7] = b'-';
        digits(&mut out[8..10], day);
        out[10] = b'T';
        digits(&mut out[11..13], seconds / 3600);
        out[13] = b':';
        digits(&mut out[14..16], seconds / 60 % 60);
        out[16] = b':';
        digits(&mut out[17..19], seconds % 60);
        if millis == 0 {
            out[19] = b'Z';
            return Some(20);
        }
        out[19] = b'.';
        digits(&mut out[20..23], millis);
        out[23] = b'Z';
        Some(24)
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

    /// The hand-written formatter against `time`'s, over instants spread across its range
    /// (leap days, century rules, the epoch, whole seconds and milliseconds).
    #[test]
    fn the_formatter_agrees_with_the_time_crate() {
        let reference = |millis: i64| {
            let at =
                OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000).unwrap();
            let mut text = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
                at.year(),
                u8::from(at.month()),
                at.day(),
                at.hour(),
                at.minute(),
                at.second()
            );
            if at.millisecond() != 0 {
                text.push_str(&format!(".{:03}", at.millisecond()));
            }
            text.push('Z');
            text
        };
        // 0000-01-01 .. 9999-12-31, in steps that land on every kind of day and time.
        let first = -62_167_219_200_000_i64;
        let last = 253_402_300_799_999_i64;
        let mut millis = first;
        let mut checked = 0;
        while millis <= last {
            assert_eq!(Timestamp(millis).to_string(), reference(millis), "{millis}");
            millis += 86_399_993_i64 * 7 + 3_601_001;
            checked += 1;
        }
        for millis in [
            0,
            -1,
            951_782_400_000,
            951_868_799_999,
            4_107_542_400_000,
            last,
        ] {
            assert_eq!(Timestamp(millis).to_string(), reference(millis), "{millis}");
        }
        assert!(checked > 400_000);
        assert_eq!(Timestamp(last + 1).to_string(), format!("{}ms", last + 1));
    }

    #[test]
    fn hour_buckets_floor_before_the_epoch() {
        assert_eq!(Timestamp::from_millis(-1).hour_bucket(), -1);
        assert_eq!(Timestamp::from_millis(HOUR_MS).hour_bucket(), 1);
    }
}
