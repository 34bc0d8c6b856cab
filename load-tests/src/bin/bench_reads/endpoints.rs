//! The endpoints measured, the random targets of their requests, and what a correct answer
//! to each holds (checked against the generated data).

use std::sync::Arc;

use referral_schemas::Timestamp;
use referral_schemas::timestamp::{DAY_MS, HOUR_MS};
use serde_json::Value;

use crate::data::{Dataset, Recent, Rng, hour_floor, mentor_id};
use crate::options::Options;
use crate::{HEAVY_MENTORS, PAGE_LIMIT, PREFIX, Result};

/// The leaderboard's query (issue 15): the 30-day top 10, by conversions (the default).
pub const TOP_QUERY: &str = "period=30d&limit=10";
/// Rows of that leaderboard.
const TOP_LIMIT: usize = 10;
/// Asia/Kolkata's offset (UTC+05:30 all year: no daylight saving time).
const KOLKATA_OFFSET_MS: i64 = 19_800_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    ById,
    MentorListHeavy,
    MentorListAny,
    TotalsAllTime,
    Totals30d,
    ListFirstPage,
    /// Issue 15: a 90-day daily series (UTC).
    Series90dDaily,
    /// Issue 15: a 48-hour hourly series (UTC; from/to, as there is no named 48 h period).
    Series48hHourly,
    /// Issue 15: a 30-day daily series in Asia/Kolkata.
    Series30dKolkata,
    /// Issue 15: the 30-day top 10.
    Top30d,
}

impl Endpoint {
    pub const ALL: [Self; 10] = [
        Self::ById,
        Self::MentorListHeavy,
        Self::MentorListAny,
        Self::TotalsAllTime,
        Self::Totals30d,
        Self::ListFirstPage,
        Self::Series90dDaily,
        Self::Series48hHourly,
        Self::Series30dKolkata,
        Self::Top30d,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::ById => "GET /:id (random live ids)",
            Self::MentorListHeavy => "GET /mentor/:id?page=1&limit=20 (top-100 mentors)",
            Self::MentorListAny => "GET /mentor/:id?page=1&limit=20 (any mentor, uniform)",
            Self::TotalsAllTime => "GET /mentor/:id/total (all_time)",
            Self::Totals30d => "GET /mentor/:id/total?period=30d",
            Self::ListFirstPage => "GET /?page=1&limit=20 (list, first page)",
            Self::Series90dDaily => "GET /mentor/:id/timeseries?interval=day&period=90d",
            Self::Series48hHourly => "GET /mentor/:id/timeseries?interval=hour&from=now-48h&to=now",
            Self::Series30dKolkata => {
                "GET /mentor/:id/timeseries?interval=day&period=30d&tz=Asia/Kolkata"
            }
            Self::Top30d => "GET /mentors/top?period=30d&limit=10",
        }
    }
}

/// The instants a request was sent and answered at: a rolling period ("90d") starts at
/// the server's `now` minus its length, somewhere between the two.
#[derive(Clone, Copy, Debug)]
pub struct When {
    pub sent: Timestamp,
    pub answered: Timestamp,
}

/// The period a series asks for.
#[derive(Clone, Copy, Debug)]
pub enum SeriesWindow {
    /// A named rolling period of this many ms (`period=90d`): `[now - ms, now)`.
    Rolling(i64),
    /// `from` and `to` given (ms).
    Fixed { from: i64, to: i64 },
}

/// What a correct time series holds.
#[derive(Clone, Debug)]
pub struct SeriesCheck {
    pub rank: usize,
    pub mentor: String,
    /// `interval`, `tz` and `period` as the answer echoes them.
    pub interval: &'static str,
    pub tz: &'static str,
    pub period: &'static str,
    /// The length of a bucket (ms) and the zone's offset (ms; the zones used keep one
    /// offset all year) and its label in `start`.
    pub bucket_ms: i64,
    pub offset_ms: i64,
    pub offset: &'static str,
    pub window: SeriesWindow,
    pub truth: Arc<Recent>,
}

/// What a correct answer holds.
#[derive(Clone, Debug)]
pub enum Check {
    Attribution(String),
    MentorList {
        mentor: String,
        total: u64,
    },
    Totals {
        clicks: u64,
        conversions: u64,
    },
    Period(&'static str),
    List {
        total: u64,
        newest: String,
    },
    Series(Box<SeriesCheck>),
    /// The 30-day leaderboard by conversions, against the generated data.
    Top {
        limit: usize,
        truth: Arc<Recent>,
    },
}

pub struct Target {
    pub path: String,
    pub check: Check,
}

/// A mentor rank: half from the heavy head, half uniform over all (totals endpoints).
pub fn mixed_mentor(rng: &mut Rng, mentors: usize) -> usize {
    if rng.chance(0.5) {
        rng.index(HEAVY_MENTORS.min(mentors))
    } else {
        rng.index(mentors)
    }
}

pub fn targets(
    endpoint: Endpoint,
    data: &Dataset,
    options: &Options,
    rng: &mut Rng,
) -> Result<Vec<Target>> {
    let live: Vec<&(String, usize, bool)> = data
        .sampled
        .iter()
        .filter(|(_, _, deleted)| !deleted)
        .collect();
    if live.is_empty() {
        return Err("no live attribution was sampled".to_owned());
    }
    let mentors = options.mentors;
    let list = |rank: usize| Target {
        path: format!(
            "{PREFIX}/mentor/{}?page=1&limit={PAGE_LIMIT}",
            mentor_id(rank)
        ),
        check: Check::MentorList {
            mentor: mentor_id(rank),
            total: data.mentor_clicks[rank],
        },
    };
    let series = |rank: usize, endpoint: Endpoint| -> Target {
        let mentor = mentor_id(rank);
        let (query, window, interval, tz, period) = match endpoint {
            Endpoint::Series90dDaily => (
                "interval=day&period=90d".to_owned(),
                SeriesWindow::Rolling(90 * DAY_MS),
                "day",
                "UTC",
                "90d",
            ),
            Endpoint::Series30dKolkata => (
                "interval=day&period=30d&tz=Asia/Kolkata".to_owned(),
                SeriesWindow::Rolling(30 * DAY_MS),
                "day",
                "Asia/Kolkata",
                "30d",
            ),
            _ => {
                // The last 48 hours up to the target's making: a fixed window, so the
                // buckets are known exactly whenever the request is sent.
                let to = Timestamp::now();
                let from = to.saturating_sub_millis(48 * HOUR_MS);
                (
                    format!("interval=hour&from={from}&to={to}"),
                    SeriesWindow::Fixed {
                        from: from.as_millis(),
                        to: to.as_millis(),
                    },
                    "hour",
                    "UTC",
                    "custom",
                )
            }
        };
        let kolkata = tz == "Asia/Kolkata";
        Target {
            path: format!("{PREFIX}/mentor/{mentor}/timeseries?{query}"),
            check: Check::Series(Box::new(SeriesCheck {
                rank,
                mentor,
                interval,
                tz,
                period,
                bucket_ms: if interval == "hour" { HOUR_MS } else { DAY_MS },
                offset_ms: if kolkata { KOLKATA_OFFSET_MS } else { 0 },
                offset: if kolkata { "+05:30" } else { "+00:00" },
                window,
                truth: data.recent.clone(),
            })),
        }
    };
    Ok((0..options.warm_up + options.requests)
        .map(|_| match endpoint {
            Endpoint::ById => {
                let (id, _, _) = live[rng.index(live.len())];
                Target {
                    path: format!("{PREFIX}/{id}"),
                    check: Check::Attribution(id.clone()),
                }
            }
            Endpoint::MentorListHeavy => list(rng.index(HEAVY_MENTORS.min(mentors))),
            Endpoint::MentorListAny => list(rng.index(mentors)),
            Endpoint::TotalsAllTime => {
                let rank = mixed_mentor(rng, mentors);
                Target {
                    path: format!("{PREFIX}/mentor/{}/total", mentor_id(rank)),
                    check: Check::Totals {
                        clicks: data.mentor_clicks[rank],
                        conversions: data.mentor_conversions[rank],
                    },
                }
            }
            Endpoint::Totals30d => {
                let rank = mixed_mentor(rng, mentors);
                Target {
                    path: format!("{PREFIX}/mentor/{}/total?period=30d", mentor_id(rank)),
                    check: Check::Period("30d"),
                }
            }
            Endpoint::ListFirstPage => Target {
                path: format!("{PREFIX}?page=1&limit={PAGE_LIMIT}"),
                check: Check::List {
                    total: data.live,
                    newest: data.newest_live.1.clone(),
                },
            },
            Endpoint::Series90dDaily | Endpoint::Series48hHourly | Endpoint::Series30dKolkata => {
                series(mixed_mentor(rng, mentors), endpoint)
            }
            Endpoint::Top30d => Target {
                path: format!("{PREFIX}/mentors/top?{TOP_QUERY}"),
                check: Check::Top {
                    limit: TOP_LIMIT,
                    truth: data.recent.clone(),
                },
            },
        })
        .collect())
}

/// Why an answer is wrong, or `None` when it is what was generated.
pub fn wrong(check: &Check, status: u16, body: &[u8], when: When) -> Option<String> {
    if status != 200 {
        return Some(format!("status {status}"));
    }
    let Ok(json) = serde_json::from_slice::<Value>(body) else {
        return Some("body is not JSON".to_owned());
    };
    let total = json["pagination"]["total"].as_u64();
    let data = json["data"].as_array();
    match check {
        Check::Attribution(id) => {
            (json["id"].as_str() != Some(id.as_str())).then(|| format!("not {id}"))
        }
        Check::MentorList {
            mentor,
            total: want,
        } => {
            let items = data.map_or(0, Vec::len) as u64;
            let foreign = data.is_some_and(|items| {
                items
                    .iter()
                    .any(|item| item["mentor_id"].as_str() != Some(mentor.as_str()))
            });
            if total != Some(*want) {
                Some(format!("{mentor}: total {total:?}, expected {want}"))
            } else if items != (*want).min(u64::from(PAGE_LIMIT)) || foreign {
                Some(format!("{mentor}: {items} items (or another mentor's)"))
            } else {
                None
            }
        }
        Check::Totals {
            clicks,
            conversions,
        } => {
            let got = (
                json["total_clicks"].as_u64(),
                json["total_conversions"].as_u64(),
            );
            (got != (Some(*clicks), Some(*conversions))).then(|| {
                format!(
                    "{}: totals {got:?}, expected ({clicks}, {conversions})",
                    json["mentor_id"]
                )
            })
        }
        Check::Period(period) => {
            let fine = json["period"].as_str() == Some(period)
                && json["total_clicks"].is_u64()
                && json["total_conversions"].is_u64();
            (!fine).then(|| format!("not a {period} totals answer"))
        }
        Check::List {
            total: want,
            newest,
        } => {
            let first = data.and_then(|items| items.first()).map(|item| &item["id"]);
            if total != Some(*want) {
                Some(format!("list total {total:?}, expected {want}"))
            } else if data.map_or(0, Vec::len) != PAGE_LIMIT as usize {
                Some("not a full page".to_owned())
            } else if first.and_then(Value::as_str) != Some(newest.as_str()) {
                Some(format!("first item {first:?}, expected {newest}"))
            } else {
                None
            }
        }
        Check::Series(series) => wrong_series(series, &json, when),
        Check::Top { limit, truth } => wrong_top(*limit, truth, &json, when),
    }
}

/// A time series is right when it echoes the request, has one bucket per local day or hour
/// from the one holding the period's start to the one holding its end (consecutive, each
/// starting at a local midnight or hour and labelled with the zone's offset), and every
/// bucket holds exactly the generated clicks (by `occurred_at`) and conversions (by
/// `confirmed_at`) of the mentor in the bucket and the period. A rolling period starts
/// at the server's `now` minus its length, between the request's sending and its answer:
/// the first bucket's counts may then lie between the counts from either instant.
fn wrong_series(check: &SeriesCheck, json: &Value, when: When) -> Option<String> {
    let echoed = [
        ("mentor_id", check.mentor.as_str()),
        ("interval", check.interval),
        ("tz", check.tz),
        ("period", check.period),
    ];
    for (key, want) in echoed {
        if json[key].as_str() != Some(want) {
            return Some(format!("{key} {}, expected {want}", json[key]));
        }
    }
    let Some(points) = json["data"].as_array() else {
        return Some("no data array".to_owned());
    };
    let mentor = &check.mentor;
    // The period's start (between `from_early` and `from_late`) and end.
    let (from_early, from_late, to, span) = match check.window {
        SeriesWindow::Rolling(length) => (
            when.sent.as_millis() - length,
            when.answered.as_millis() - length,
            when.answered.as_millis(),
            length,
        ),
        SeriesWindow::Fixed { from, to } => (from, from, to, to - from),
    };
    let truth = &check.truth;
    if from_early < truth.since {
        return Some(format!(
            "the period starts before the generated instants kept ({} ms): not checkable",
            truth.since
        ));
    }
    let bucket = check.bucket_ms;
    let whole = span / bucket;
    if !(whole..=whole + 1).contains(&(points.len() as i64)) {
        return Some(format!(
            "{mentor}: {} buckets, expected {whole} or {}",
            points.len(),
            whole + 1
        ));
    }
    let mut previous: Option<i64> = None;
    for (index, point) in points.iter().enumerate() {
        let Some(label) = point["start"].as_str() else {
            return Some(format!("{mentor}: bucket {index} has no start"));
        };
        let Ok(start) = Timestamp::parse_rfc3339(label).map(Timestamp::as_millis) else {
            return Some(format!("{mentor}: start {label:?} is not RFC 3339"));
        };
        if !label.ends_with(check.offset) || (start + check.offset_ms).rem_euclid(bucket) != 0 {
            return Some(format!(
                "{mentor}: start {label} is not a local {} start at {}",
                check.interval, check.offset
            ));
        }
        if previous.is_some_and(|previous| start - previous != bucket) {
            return Some(format!(
                "{mentor}: bucket {label} does not follow the last one"
            ));
        }
        if index == 0 && !(start <= from_late && start + bucket > from_early) {
            return Some(format!(
                "{mentor}: the first bucket {label} does not hold the start"
            ));
        }
        let end = start + bucket;
        if index + 1 == points.len() && end < to.min(when.sent.as_millis()) {
            return Some(format!(
                "{mentor}: the last bucket {label} ends before the period"
            ));
        }
        // At least the counts from the late start, at most those from the early one.
        let range = |count: &dyn Fn(i64, i64) -> u64| {
            let upper = end.min(to);
            (
                count(start.max(from_late), upper),
                count(start.max(from_early), upper),
            )
        };
        let clicks = range(&|from, to| truth.clicks(check.rank, from, to));
        let conversions = range(&|from, to| truth.conversions(check.rank, from, to));
        let got = (point["clicks"].as_u64(), point["conversions"].as_u64());
        let fits = |got: Option<u64>, (low, high): (u64, u64)| {
            got.is_some_and(|got| (low..=high).contains(&got))
        };
        if !fits(got.0, clicks) || !fits(got.1, conversions) {
            return Some(format!(
                "{mentor}: bucket {label}: (clicks, conversions) {got:?}, expected {clicks:?} \
                 and {conversions:?} (low, high)"
            ));
        }
        previous = Some(start);
    }
    None
}

/// The 30-day top 10 is right when it echoes the request and its rows are the generated
/// data's leaderboard by conversions (then mentor id) over the hours from the one holding
/// `now - 30 d` on (materialized totals are hourly), with each mentor's clicks and
/// conversions; `now` is the server's, between the request's sending and its answer.
fn wrong_top(limit: usize, truth: &Recent, json: &Value, when: When) -> Option<String> {
    for (key, want) in [("period", "30d"), ("by", "conversions")] {
        if json[key].as_str() != Some(want) {
            return Some(format!("{key} {}, expected {want}", json[key]));
        }
    }
    let Some(rows) = json["data"].as_array() else {
        return Some("no data array".to_owned());
    };
    let got: Vec<(Option<&str>, Option<u64>, Option<u64>)> = rows
        .iter()
        .map(|row| {
            (
                row["mentor_id"].as_str(),
                row["total_clicks"].as_u64(),
                row["total_conversions"].as_u64(),
            )
        })
        .collect();
    let starts = [when.sent, when.answered].map(|at| hour_floor(at.as_millis() - 30 * DAY_MS));
    let mut first_difference = None;
    for from in starts {
        if from < truth.since {
            return Some("the period starts before the generated instants kept".to_owned());
        }
        let want = truth.top_by_conversions(from, limit);
        let same = got.len() == want.len()
            && got
                .iter()
                .zip(want.iter())
                .all(|(got, want)| *got == (Some(want.0.as_str()), Some(want.1), Some(want.2)));
        if same {
            return None;
        }
        first_difference.get_or_insert_with(|| {
            match got
                .iter()
                .zip(want.iter())
                .position(|(got, want)| *got != (Some(want.0.as_str()), Some(want.1), Some(want.2)))
            {
                Some(row) => format!("row {row}: {:?}, expected {:?}", got[row], want[row]),
                None => format!("{} rows, expected {}", got.len(), want.len()),
            }
        });
    }
    first_difference
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use time::format_description::well_known::Rfc3339;
    use time::{OffsetDateTime, UtcOffset};

    use super::*;

    const H: i64 = HOUR_MS;
    /// 2026-03-20T00:00:00Z.
    const DAY0: i64 = 1_773_964_800_000;

    /// A bucket's `start` as the API prints it (`+00:00` for UTC, not `Z`).
    fn label(at: i64, offset_ms: i64) -> String {
        let offset = UtcOffset::from_whole_seconds((offset_ms / 1000) as i32).unwrap();
        let text = OffsetDateTime::from_unix_timestamp(at / 1000)
            .unwrap()
            .to_offset(offset)
            .format(&Rfc3339)
            .unwrap();
        match text.strip_suffix('Z') {
            Some(local) => format!("{local}+00:00"),
            None => text,
        }
    }

    /// The answer a right server gives: buckets from the one holding `from` to the one
    /// holding `to`, counted from `truth`.
    fn answer(check: &SeriesCheck, from: i64, to: i64) -> Value {
        let (bucket, offset) = (check.bucket_ms, check.offset_ms);
        let mut start = (from + offset).div_euclid(bucket) * bucket - offset;
        let mut data = Vec::new();
        while start < to {
            let (a, b) = (start.max(from), (start + bucket).min(to));
            data.push(json!({
                "start": label(start, offset),
                "clicks": check.truth.clicks(check.rank, a, b),
                "conversions": check.truth.conversions(check.rank, a, b),
            }));
            start += bucket;
        }
        json!({"mentor_id": check.mentor, "interval": check.interval, "tz": check.tz,
               "period": check.period, "data": data})
    }

    fn check(window: SeriesWindow, kolkata: bool, truth: Arc<Recent>) -> SeriesCheck {
        let hourly = matches!(window, SeriesWindow::Fixed { .. });
        SeriesCheck {
            rank: 0,
            mentor: mentor_id(0),
            interval: if hourly { "hour" } else { "day" },
            tz: if kolkata { "Asia/Kolkata" } else { "UTC" },
            period: if hourly { "custom" } else { "30d" },
            bucket_ms: if hourly { H } else { DAY_MS },
            offset_ms: if kolkata { KOLKATA_OFFSET_MS } else { 0 },
            offset: if kolkata { "+05:30" } else { "+00:00" },
            window,
            truth,
        }
    }

    fn when(at: i64) -> When {
        When {
            sent: Timestamp::from_millis(at),
            answered: Timestamp::from_millis(at + 20),
        }
    }

    #[test]
    fn a_right_series_passes_and_a_wrong_one_is_named() {
        let now = DAY0 + 40 * DAY_MS + 7 * H + 1_234;
        // Clicks next to Kolkata's midnights (18:30Z) and the start of the period.
        let clicks = vec![
            now - 30 * DAY_MS + 5,
            DAY0 + 20 * DAY_MS + 18 * H + 29 * 60_000,
            DAY0 + 20 * DAY_MS + 18 * H + 30 * 60_000,
            now - 47 * H,
            now - 1,
        ];
        let truth = Arc::new(Recent::of(DAY0, vec![clicks], vec![vec![now - 2 * H]]));
        for kolkata in [false, true] {
            let check = check(SeriesWindow::Rolling(30 * DAY_MS), kolkata, truth.clone());
            let good = answer(&check, now - 30 * DAY_MS + 10, now + 10);
            assert_eq!(good["data"].as_array().unwrap().len(), 31);
            assert_eq!(wrong_series(&check, &good, when(now)), None);
            // A click in the wrong bucket, another offset, a missing bucket, another mentor.
            let mut moved = good.clone();
            let first = moved["data"][20]["clicks"].as_u64().unwrap();
            moved["data"][20]["clicks"] = json!(first + 1);
            assert!(wrong_series(&check, &moved, when(now)).is_some());
            let mut shifted = good.clone();
            shifted["data"][3]["start"] = json!(label(
                Timestamp::parse_rfc3339(good["data"][3]["start"].as_str().unwrap())
                    .unwrap()
                    .as_millis(),
                if kolkata { 0 } else { KOLKATA_OFFSET_MS }
            ));
            assert!(wrong_series(&check, &shifted, when(now)).is_some());
            let mut short = good.clone();
            short["data"].as_array_mut().unwrap().remove(5);
            assert!(wrong_series(&check, &short, when(now)).is_some());
            let mut other = good.clone();
            other["mentor_id"] = json!(mentor_id(1));
            assert!(wrong_series(&check, &other, when(now)).is_some());
        }
        // Kolkata's buckets hold the clicks on each side of its midnight apart.
        let kolkata = check(SeriesWindow::Rolling(30 * DAY_MS), true, truth.clone());
        let answer_kolkata = answer(&kolkata, now - 30 * DAY_MS, now);
        let counts: Vec<u64> = answer_kolkata["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|point| point["clicks"].as_u64().unwrap())
            .collect();
        assert_eq!(counts.iter().sum::<u64>(), 5);
        assert!(counts.windows(2).any(|pair| pair == [1, 1]), "{counts:?}");

        let (from, to) = (now - 48 * H, now);
        let hourly = check(SeriesWindow::Fixed { from, to }, false, truth);
        let good = answer(&hourly, from, to);
        assert_eq!(good["data"].as_array().unwrap().len(), 49);
        assert_eq!(wrong_series(&hourly, &good, when(now + DAY_MS)), None);
        let mut lost = good.clone();
        lost["data"][48]["clicks"] = json!(0);
        assert!(wrong_series(&hourly, &lost, when(now)).is_some());
    }

    #[test]
    fn the_top_10_must_be_the_generated_leaderboard() {
        let now = DAY0 + 40 * DAY_MS + 1_000;
        let from = hour_floor(now - 30 * DAY_MS);
        let truth = Recent::of(
            DAY0,
            vec![vec![from - 1, from + 5], vec![from], vec![from + 9]],
            vec![vec![from + 6], vec![from + 7], vec![from - 1]],
        );
        let row = |rank: usize, clicks: u64, conversions: u64| {
            json!({"mentor_id": mentor_id(rank), "total_clicks": clicks,
                   "total_conversions": conversions})
        };
        let body = |rows: Vec<Value>| json!({"period": "30d", "by": "conversions", "data": rows});
        let good = body(vec![row(0, 1, 1), row(1, 1, 1), row(2, 1, 0)]);
        assert_eq!(wrong_top(10, &truth, &good, when(now)), None);
        for bad in [
            body(vec![row(1, 1, 1), row(0, 1, 1), row(2, 1, 0)]),
            body(vec![row(0, 2, 1), row(1, 1, 1), row(2, 1, 0)]),
            body(vec![row(0, 1, 1), row(1, 1, 1)]),
        ] {
            assert!(wrong_top(10, &truth, &bad, when(now)).is_some(), "{bad}");
        }
        assert_eq!(
            wrong_top(
                2,
                &truth,
                &body(vec![row(0, 1, 1), row(1, 1, 1)]),
                when(now)
            ),
            None
        );
    }
}
