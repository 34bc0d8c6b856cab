//! Calendar arithmetic in the viewer's time zone: the buckets of a time series and the
//! calendar periods of totals (`today`, `this_month`, ...), decided without I/O.
//!
//! Buckets start at local midnight (or the local hour, ISO Monday, the first of the
//! month), so a day at a DST change lasts 23 or 25 hours and a day in Asia/Kolkata starts
//! at 18:30 UTC. The stores count clicks per 15-minute slot (every UTC offset in use since
//! 1972 is a whole number of quarter hours), which is what lets any zone's buckets be
//! summed exactly from them.

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{ToSpan, Zoned};

use crate::Timestamp;
use crate::error::ApiError;

/// The stores' counting slot: a quarter of an hour, in ms.
pub const SLOT_MS: i64 = 15 * 60 * 1000;
/// Buckets a series answers at most.
pub const MAX_BUCKETS: usize = 1_000;
/// The earliest instant a series starts at: 1972-01-01T00:00:00Z. Before it some zones'
/// offsets were not whole minutes (Africa/Monrovia's -00:44:30), which no RFC 3339 offset
/// can print and no 15-minute slot can bound.
pub const SERIES_EPOCH_MS: i64 = 63_072_000_000;

/// A series' bucket size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interval {
    Hour,
    Day,
    /// ISO weeks, starting on Monday.
    Week,
    Month,
}

impl Interval {
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        match text {
            "hour" => Ok(Self::Hour),
            "day" => Ok(Self::Day),
            "week" => Ok(Self::Week),
            "month" => Ok(Self::Month),
            _ => Err(ApiError::invalid(
                "interval",
                "must be hour, day, week or month",
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hour => "hour",
            Self::Day => "day",
            Self::Week => "week",
            Self::Month => "month",
        }
    }
}

/// An IANA time zone (the bundled tz database), `UTC` by default.
#[derive(Clone, Debug)]
pub struct Zone {
    pub name: String,
    tz: TimeZone,
}

/// Zones are equal when their names are.
impl PartialEq for Zone {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for Zone {}

impl Zone {
    pub fn parse(name: Option<&str>) -> Result<Self, ApiError> {
        let name = name.unwrap_or("UTC");
        let tz = TimeZone::get(name)
            .map_err(|_| ApiError::invalid("tz", "must be an IANA time zone, e.g. Europe/Paris"))?;
        Ok(Self {
            name: name.to_owned(),
            tz,
        })
    }

    pub fn utc() -> Self {
        Self {
            name: "UTC".into(),
            tz: TimeZone::UTC,
        }
    }

    fn zoned(&self, at: Timestamp) -> Result<Zoned, ApiError> {
        jiff::Timestamp::from_millisecond(at.as_millis())
            .map(|instant| instant.to_zoned(self.tz.clone()))
            .map_err(|_| ApiError::invalid("from", "is out of range"))
    }

    fn day_start(&self, date: Date) -> Result<Zoned, ApiError> {
        date.to_zoned(self.tz.clone())
            .and_then(|zoned| zoned.start_of_day())
            .map_err(|_| ApiError::invalid("from", "is out of range"))
    }

    /// The start of the bucket of `interval` that contains `at`.
    fn bucket_start(&self, interval: Interval, at: Timestamp) -> Result<Zoned, ApiError> {
        let zoned = self.zoned(at)?;
        let out_of_range = |_| ApiError::invalid("from", "is out of range");
        match interval {
            Interval::Hour => zoned
                .with()
                .minute(0)
                .second(0)
                .subsec_nanosecond(0)
                .build()
                .map_err(out_of_range),
            Interval::Day => self.day_start(zoned.date()),
            Interval::Week => {
                let back = i64::from(zoned.date().weekday().to_monday_zero_offset());
                let monday = zoned
                    .date()
                    .checked_sub(back.days())
                    .map_err(out_of_range)?;
                self.day_start(monday)
            }
            Interval::Month => self.day_start(zoned.date().first_of_month()),
        }
    }

    /// The start of the bucket after the one starting at `start`.
    fn next_start(&self, interval: Interval, start: &Zoned) -> Result<Zoned, ApiError> {
        let out_of_range = |_| ApiError::invalid("to", "is out of range");
        match interval {
            // An absolute hour later, back to the local hour. Where the clock goes back by
            // half an hour (Lord Howe), that local hour is the one just left: step on by
            // quarter hours until the local hour is a new one (that hour lasts 90 minutes).
            Interval::Hour => {
                let mut later = start.checked_add(1.hour()).map_err(out_of_range)?;
                loop {
                    let at = Timestamp::from_millis(later.timestamp().as_millisecond());
                    let next = self.bucket_start(interval, at)?;
                    if next.timestamp() > start.timestamp() {
                        return Ok(next);
                    }
                    later = later.checked_add(15.minutes()).map_err(out_of_range)?;
                }
            }
            Interval::Day => {
                self.day_start(start.date().checked_add(1.day()).map_err(out_of_range)?)
            }
            Interval::Week => {
                self.day_start(start.date().checked_add(1.week()).map_err(out_of_range)?)
            }
            Interval::Month => self.day_start(
                start
                    .date()
                    .first_of_month()
                    .checked_add(1.month())
                    .map_err(out_of_range)?,
            ),
        }
    }

    /// Local midnight of the day containing `at`, and of the days `offset` away.
    pub fn midnight(&self, at: Timestamp, offset_days: i64) -> Result<Timestamp, ApiError> {
        let date = self.zoned(at)?.date();
        let date = date
            .checked_add(offset_days.days())
            .map_err(|_| ApiError::invalid("period", "is out of range"))?;
        Ok(millis(&self.day_start(date)?))
    }

    /// The start of the ISO week (Monday) or month containing `at`, `offset` of them away.
    pub fn calendar_start(
        &self,
        interval: Interval,
        at: Timestamp,
        offset: i64,
    ) -> Result<Timestamp, ApiError> {
        let mut start = self.bucket_start(interval, at)?;
        for _ in 0..offset.max(0) {
            start = self.next_start(interval, &start)?;
        }
        for _ in 0..(-offset).max(0) {
            // One bucket back: the bucket of the instant just before this one.
            let before = Timestamp::from_millis(millis(&start).as_millis() - 1);
            start = self.bucket_start(interval, before)?;
        }
        Ok(millis(&start))
    }
}

fn millis(zoned: &Zoned) -> Timestamp {
    Timestamp::from_millis(zoned.timestamp().as_millisecond())
}

/// One bucket of a series: `[start, end)` and how it is printed (RFC 3339 with the local
/// offset, e.g. `2026-11-01T00:00:00-04:00`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bucket {
    pub start: Timestamp,
    pub end: Timestamp,
    pub label: String,
}

/// The buckets of `interval` in `zone` from the one containing `from` to the one
/// containing the last instant before `to`; empty when `from >= to`. More than
/// [`MAX_BUCKETS`]: 422 on `interval`.
pub fn buckets(
    zone: &Zone,
    interval: Interval,
    from: Timestamp,
    to: Timestamp,
) -> Result<Vec<Bucket>, ApiError> {
    let mut found = Vec::new();
    if from >= to {
        return Ok(found);
    }
    if from.as_millis() < SERIES_EPOCH_MS {
        return Err(ApiError::invalid(
            "from",
            "a time series starts at 1972-01-01T00:00:00Z or later",
        ));
    }
    let mut start = zone.bucket_start(interval, from)?;
    while millis(&start) < to {
        if found.len() == MAX_BUCKETS {
            return Err(ApiError::invalid(
                "interval",
                format!(
                    "the period holds more than {MAX_BUCKETS} {} buckets; choose a coarser \
                     interval or a shorter period",
                    interval.as_str()
                ),
            ));
        }
        if start.offset().seconds() % 60 != 0 {
            return Err(ApiError::invalid(
                "tz",
                "this zone's offset is not whole minutes here; choose UTC",
            ));
        }
        let next = zone.next_start(interval, &start)?;
        if next.timestamp() <= start.timestamp() {
            return Err(ApiError::invalid(
                "tz",
                "this zone's calendar cannot be bucketed here",
            ));
        }
        found.push(Bucket {
            start: millis(&start),
            end: millis(&next),
            label: start.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string(),
        });
        start = next;
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        Timestamp::parse_rfc3339(text).unwrap()
    }

    fn zone(name: &str) -> Zone {
        Zone::parse(Some(name)).unwrap()
    }

    #[test]
    fn days_at_dst_changes_last_23_and_25_hours() {
        let ny = zone("America/New_York");
        let days = buckets(
            &ny,
            Interval::Day,
            at("2026-03-08T12:00:00Z"),
            at("2026-03-09T12:00:00Z"),
        )
        .unwrap();
        assert_eq!(days[0].label, "2026-03-08T00:00:00-05:00");
        assert_eq!(
            days[0].end.as_millis() - days[0].start.as_millis(),
            23 * 3_600_000
        );
        let fall = buckets(
            &ny,
            Interval::Day,
            at("2026-11-01T12:00:00Z"),
            at("2026-11-01T13:00:00Z"),
        )
        .unwrap();
        assert_eq!(fall[0].label, "2026-11-01T00:00:00-04:00");
        assert_eq!(
            fall[0].end.as_millis() - fall[0].start.as_millis(),
            25 * 3_600_000
        );
        // 25 local hours that day: the repeated 01:00 is two buckets.
        let hours = buckets(&ny, Interval::Hour, fall[0].start, fall[0].end).unwrap();
        assert_eq!(hours.len(), 25);
        assert_eq!(hours[1].label, "2026-11-01T01:00:00-04:00");
        assert_eq!(hours[2].label, "2026-11-01T01:00:00-05:00");
    }

    #[test]
    fn a_half_hour_clock_change_back_makes_one_90_minute_hour() {
        // Lord Howe: 02:00 +11:00 becomes 01:30 +10:30 on 2026-04-05.
        let hours = buckets(
            &zone("Australia/Lord_Howe"),
            Interval::Hour,
            at("2026-04-04T13:00:00Z"),
            at("2026-04-04T17:00:00Z"),
        )
        .unwrap();
        let labels: Vec<&str> = hours.iter().map(|bucket| bucket.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "2026-04-05T00:00:00+11:00",
                "2026-04-05T01:00:00+11:00",
                "2026-04-05T02:00:00+10:30",
                "2026-04-05T03:00:00+10:30",
            ]
        );
        assert_eq!(
            hours[1].end.as_millis() - hours[1].start.as_millis(),
            90 * 60_000
        );
    }

    #[test]
    fn half_and_quarter_hour_zones_start_their_days_off_the_utc_hour() {
        let kolkata = buckets(
            &zone("Asia/Kolkata"),
            Interval::Day,
            at("2026-03-20T00:00:00Z"),
            at("2026-03-20T00:00:01Z"),
        )
        .unwrap();
        assert_eq!(kolkata[0].label, "2026-03-20T00:00:00+05:30");
        assert_eq!(kolkata[0].start, at("2026-03-19T18:30:00Z"));
        let kathmandu = buckets(
            &zone("Asia/Kathmandu"),
            Interval::Hour,
            at("2026-03-20T00:00:00Z"),
            at("2026-03-20T00:00:01Z"),
        )
        .unwrap();
        assert_eq!(kathmandu[0].start, at("2026-03-19T23:15:00Z"));
        assert_eq!(kathmandu[0].start.as_millis() % SLOT_MS, 0);
    }

    #[test]
    fn weeks_start_on_monday_and_months_on_the_first() {
        let utc = Zone::utc();
        let weeks = buckets(
            &utc,
            Interval::Week,
            at("2026-03-20T10:00:00Z"),
            at("2026-03-24T00:00:00Z"),
        )
        .unwrap();
        assert_eq!(
            weeks.iter().map(|b| b.label.as_str()).collect::<Vec<_>>(),
            ["2026-03-16T00:00:00+00:00", "2026-03-23T00:00:00+00:00"]
        );
        let months = buckets(
            &utc,
            Interval::Month,
            at("2026-01-31T10:00:00Z"),
            at("2026-03-01T00:00:00Z"),
        )
        .unwrap();
        assert_eq!(months.len(), 2);
        assert_eq!(months[1].start, at("2026-02-01T00:00:00Z"));
        assert_eq!(months[1].end, at("2026-03-01T00:00:00Z"));
    }

    #[test]
    fn too_many_buckets_and_unknown_zones_are_refused() {
        let hours = buckets(
            &Zone::utc(),
            Interval::Hour,
            at("2026-01-01T00:00:00Z"),
            at("2026-03-01T00:00:00Z"),
        );
        assert_eq!(hours.unwrap_err().field.as_deref(), Some("interval"));
        assert_eq!(
            Zone::parse(Some("Mars/Olympus"))
                .unwrap_err()
                .field
                .as_deref(),
            Some("tz")
        );
        assert!(Interval::parse("minute").is_err());
    }

    #[test]
    fn calendar_starts_count_back_and_forth() {
        let paris = zone("Europe/Paris");
        let now = at("2026-03-31T23:30:00Z"); // already April 1 in Paris
        assert_eq!(paris.midnight(now, 0).unwrap(), at("2026-03-31T22:00:00Z"));
        assert_eq!(paris.midnight(now, -1).unwrap(), at("2026-03-30T22:00:00Z"));
        assert_eq!(
            paris.calendar_start(Interval::Month, now, 0).unwrap(),
            at("2026-03-31T22:00:00Z")
        );
        assert_eq!(
            paris.calendar_start(Interval::Month, now, -1).unwrap(),
            at("2026-02-28T23:00:00Z")
        );
        assert_eq!(
            paris.calendar_start(Interval::Week, now, 0).unwrap(),
            at("2026-03-29T22:00:00Z")
        );
    }
}
