//! Every query the API runs against ClickHouse, built in one place so that a test can run
//! the very same SQL on ClickHouse 18.16 and on a current engine (chdb) and compare.
//!
//! Which table serves which endpoint, and why:
//!
//! | endpoint | table | sort key |
//! |---|---|---|
//! | GET /:id, PUT, DELETE checks | `attributions` | `id` |
//! | GET /mentor/:mentorId | `attributions_by_mentor` | `(mentor_id, occurred_at, id)` |
//! | GET list (any other filter) | `attributions_by_time` | `(occurred_at, id)` |
//! | GET /mentor/:mentorId/total | `mentor_totals` | `(grain, mentor_id, bucket)` |
//! | referral codes | `referral_codes` | `code` |
//! | verdicts of commands | `command_verdicts` | `command_id` |
//!
//! ReplacingMergeTree rows are read with `FINAL` in an inner query whose `WHERE` uses only
//! sort-key columns (which never change between versions of a row); filters on columns
//! that do change (status, deleted_at, retired) apply outside, after the latest version was
//! chosen. Filtering those inside would let a stale version through.
//! Totals need no `FINAL`: the sum of partly merged rows is the same sum.

use std::fmt::Write as _;

use referral_schemas::query::{AttributionFilter, HourRange, PageRequest};

/// One value bound to a `?`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bound {
    Text(String),
    Int(i64),
}

/// SQL with `?` placeholders and their values, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadQuery {
    pub sql: String,
    pub binds: Vec<Bound>,
}

impl ReadQuery {
    fn new(sql: String) -> Self {
        Self {
            sql,
            binds: Vec::new(),
        }
    }

    fn bind(mut self, value: Bound) -> Self {
        self.binds.push(value);
        self
    }

    /// A client query with every value bound (escaped by the client).
    pub fn to_clickhouse(&self, client: &clickhouse::Client) -> clickhouse::query::Query {
        let mut query = client.query(&self.sql);
        for bound in &self.binds {
            query = match bound {
                Bound::Text(text) => query.bind(text.as_str()),
                Bound::Int(number) => query.bind(*number),
            };
        }
        query
    }

    /// The SQL with values as literals and `?fields` expanded to `columns`: for engines
    /// reached without this client (tests on chdb).
    pub fn render(&self, columns: &str) -> String {
        let sql = self.sql.replace("?fields", columns);
        let mut rendered = String::with_capacity(sql.len() + 32);
        let mut binds = self.binds.iter();
        for piece in sql.split('?').enumerate() {
            let (index, text) = piece;
            if index > 0 {
                match binds.next() {
                    Some(Bound::Text(value)) => {
                        rendered.push('\'');
                        for character in value.chars() {
                            match character {
                                '\\' => rendered.push_str("\\\\"),
                                '\'' => rendered.push_str("\\'"),
                                other => rendered.push(other),
                            }
                        }
                        rendered.push('\'');
                    }
                    Some(Bound::Int(value)) => {
                        let _ = write!(rendered, "{value}");
                    }
                    None => rendered.push('?'),
                }
            }
            rendered.push_str(text);
        }
        rendered
    }
}

/// Columns of `attributions` and its sorted copies, in table order.
pub const ATTRIBUTION_COLUMNS: &str = "id, code, mentor_id, kind, status, new_member_id, \
     ip_address, user_agent, referrer_url, occurred_at, confirmed_at, created_at, deleted_at, version, \
     verdict, duplicate_of, source_topic, source_partition, source_offset, reversed_at, \
     reversal_reason";
/// Columns of `referral_codes`, in table order (and `CodeRow`'s field order).
pub const CODE_COLUMNS: &str =
    "code, mentor_id, destination_url, created_at, updated_at, retired, version";

/// The latest state of one attribution (live or tombstone).
pub fn attribution(id: &str) -> ReadQuery {
    ReadQuery::new("SELECT ?fields FROM attributions FINAL WHERE id = ?".into())
        .bind(Bound::Text(id.to_owned()))
}

/// The inner query of a list: the table whose sort key fits, restricted by key columns.
fn list_source(filter: &AttributionFilter) -> ReadQuery {
    let table = if filter.mentor_id.is_some() {
        "attributions_by_mentor"
    } else {
        "attributions_by_time"
    };
    let mut clauses = Vec::new();
    let mut query = ReadQuery::new(String::new());
    if let Some(mentor_id) = &filter.mentor_id {
        clauses.push("mentor_id = ?");
        query = query.bind(Bound::Text(mentor_id.clone()));
    }
    if let Some(from) = filter.from {
        clauses.push("occurred_at >= ?");
        query = query.bind(Bound::Int(from.as_millis()));
    }
    if let Some(to) = filter.to {
        clauses.push("occurred_at < ?");
        query = query.bind(Bound::Int(to.as_millis()));
    }
    if let Some(cursor) = &filter.after {
        // Sort-key columns, never changed: safe inside FINAL's query.
        clauses.push("(occurred_at < ? OR (occurred_at = ? AND id < ?))");
        let at = cursor.occurred_at.as_millis();
        query = query
            .bind(Bound::Int(at))
            .bind(Bound::Int(at))
            .bind(Bound::Text(cursor.id.clone()));
    }
    let condition = if clauses.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", clauses.join(" AND "))
    };
    query.sql = format!("SELECT {ATTRIBUTION_COLUMNS} FROM {table} FINAL{condition}");
    query
}

/// Filters on columns that change between versions: applied after `FINAL`.
fn list_condition(filter: &AttributionFilter, mut query: ReadQuery) -> ReadQuery {
    let mut clauses = vec!["deleted_at IS NULL"];
    if let Some(status) = filter.status {
        clauses.push("status = ?");
        query = query.bind(Bound::Text(status.as_str().to_owned()));
    }
    if let Some(kind) = filter.kind {
        clauses.push("kind = ?");
        query = query.bind(Bound::Text(kind.as_str().to_owned()));
    }
    if let Some(code) = &filter.code {
        clauses.push("code = ?");
        query = query.bind(Bound::Text(code.clone()));
    }
    if let Some(verdict) = filter.verdict {
        clauses.push("verdict = ?");
        query = query.bind(Bound::Text(verdict.as_str().to_owned()));
    }
    query.sql = format!("{} WHERE {}", query.sql, clauses.join(" AND "));
    query
}

pub use referral_schemas::query::COUNT_BOUND;

/// How `total` of a list is found cheaply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListTotal {
    /// The unfiltered list or a mentor's list: live attributions per day, newest day first,
    /// from the materialized totals (a row per day). Their sum is `total`, and they tell on
    /// which day a page starts.
    Days(ReadQuery),
    /// Any other filter: a count that stops at [`COUNT_BOUND`].
    Bounded(ReadQuery),
}

/// The query for `total` of a list. Clicks in the materialized totals are exactly the live
/// attributions by `occurred_at`, so the unfiltered list and a mentor's list read totals;
/// every other filter is counted, bounded.
pub fn list_total(filter: &AttributionFilter) -> ListTotal {
    let only_mentor = AttributionFilter {
        mentor_id: filter.mentor_id.clone(),
        ..AttributionFilter::default()
    };
    if *filter == AttributionFilter::default() {
        return ListTotal::Days(ReadQuery::new(
            "SELECT bucket, toInt64(sum(clicks)) AS live FROM mentor_totals \
             WHERE grain = 'global_day' GROUP BY bucket HAVING live != 0 ORDER BY bucket DESC"
                .into(),
        ));
    }
    if let (true, Some(mentor_id)) = (*filter == only_mentor, &filter.mentor_id) {
        return ListTotal::Days(
            ReadQuery::new(
                "SELECT bucket, toInt64(sum(clicks)) AS live FROM mentor_totals \
                 WHERE grain IN ('day', 'duplicate_day', 'bot_day') AND mentor_id = ? \
                 GROUP BY bucket HAVING live != 0 ORDER BY bucket DESC"
                    .into(),
            )
            .bind(Bound::Text(mentor_id.clone())),
        );
    }
    ListTotal::Bounded(attribution_count(filter))
}

/// How many live attributions match, counting at most [`COUNT_BOUND`].
pub fn attribution_count(filter: &AttributionFilter) -> ReadQuery {
    let source = list_source(filter);
    let query = ReadQuery {
        sql: format!("SELECT 1 FROM ({})", source.sql),
        binds: source.binds,
    };
    let mut query = list_condition(filter, query);
    query.sql = format!(
        "SELECT toUInt64(count()) AS total FROM ({} LIMIT {COUNT_BOUND})",
        query.sql
    );
    query
}

/// One page of live attributions, newest first, and the row after it (which tells whether
/// another page follows).
pub fn attribution_page(filter: &AttributionFilter, page: PageRequest) -> ReadQuery {
    let source = list_source(filter);
    let query = ReadQuery {
        sql: format!("SELECT ?fields FROM ({})", source.sql),
        binds: source.binds,
    };
    let mut query = list_condition(filter, query);
    // `LIMIT offset, count`: the form both 18.16 and current servers accept.
    query
        .sql
        .push_str(" ORDER BY occurred_at DESC, id DESC LIMIT ?, ?");
    query
        .bind(Bound::Int(i64::try_from(page.offset()).unwrap_or(i64::MAX)))
        .bind(Bound::Int(i64::from(page.limit) + 1))
}

/// A mentor's counted, duplicate and bot clicks and conversions over `hours`: whole days
/// from the daily rows, the ragged ends from the hourly rows, in one query.
pub fn mentor_totals(mentor_id: &str, hours: HourRange) -> ReadQuery {
    let query = ReadQuery::new(String::new()).bind(Bound::Text(mentor_id.to_owned()));
    let mut query = totals_ranges(hours, query);
    query.sql = format!(
        "SELECT {TOTALS_SUMS}, \
         toInt64(sumIf(clicks, grain IN ('reversal_hour', 'reversal_day'))) AS reversals \
         FROM mentor_totals WHERE mentor_id = ? AND ({})",
        query.sql
    );
    query
}

/// The four sums of a totals read: counted clicks, duplicates, bots, conversions.
const TOTALS_SUMS: &str = "toInt64(sumIf(clicks, grain IN ('hour', 'day'))) AS total_clicks, \
     toInt64(sumIf(clicks, grain IN ('duplicate_hour', 'duplicate_day'))) AS duplicates, \
     toInt64(sumIf(clicks, grain IN ('bot_hour', 'bot_day'))) AS bots, \
     toInt64(sum(conversions)) AS total_conversions";

/// The leaderboard over whole hours: every mentor's sums from the materialized totals,
/// ranked by `by` (then mentor id), the first `limit`.
pub fn top_mentors(hours: HourRange, by: referral_schemas::query::RankBy, limit: u32) -> ReadQuery {
    let mut query = totals_ranges(hours, ReadQuery::new(String::new()));
    let order = match by {
        referral_schemas::query::RankBy::Clicks => "total_clicks",
        referral_schemas::query::RankBy::Conversions => "total_conversions",
    };
    query.sql = format!(
        "SELECT mentor_id, {TOTALS_SUMS} FROM mentor_totals WHERE ({}) GROUP BY mentor_id \
         HAVING total_clicks != 0 OR total_conversions != 0 \
         ORDER BY {order} DESC, mentor_id LIMIT ?",
        query.sql
    );
    query.bind(Bound::Int(i64::from(limit)))
}

/// Key ranges `[from, to)` of one by-time grain ("(mentor_id >= ? AND mentor_id < ?) OR
/// ..."), bound as keys made by `key`; `None` ends are unbounded.
fn key_ranges(
    ranges: &[(Option<i64>, Option<i64>)],
    key: fn(i64, &str) -> String,
    binds: &mut Vec<Bound>,
) -> String {
    let mut sql = Vec::new();
    for (from, to) in ranges {
        let mut range = vec!["1"];
        if let Some(from) = from {
            range.push("mentor_id >= ?");
            binds.push(Bound::Text(key(*from, "")));
        }
        if let Some(to) = to {
            range.push("mentor_id < ?");
            binds.push(Bound::Text(key(*to, "")));
        }
        sql.push(format!("({})", range.join(" AND ")));
    }
    sql.join(" OR ")
}

/// Bucket ranges `[from, to)` of one backfill grain, as [`key_ranges`] does for keys.
fn backfill_ranges(
    grain: &str,
    ranges: &[(Option<i64>, Option<i64>)],
    binds: &mut Vec<Bound>,
) -> Vec<String> {
    let mut sql = Vec::new();
    for (from, to) in ranges {
        let mut range = format!("(grain = '{grain}'");
        if let Some(from) = from {
            range.push_str(" AND bucket >= ?");
            binds.push(Bound::Int(*from));
        }
        if let Some(to) = to {
            range.push_str(" AND bucket < ?");
            binds.push(Bound::Int(*to));
        }
        range.push(')');
        sql.push(range);
    }
    sql
}

/// One by-time grain of `mentor_totals` as a leaderboard reads it: its key ranges, and the
/// grain of `mentor_totals_backfill` that holds what older writers stored without it.
struct ByTimeGrain {
    name: &'static str,
    backfill_name: &'static str,
    /// Where the key's mentor starts (1-based, for `substring`).
    mentor_from: usize,
    key: fn(i64, &str) -> String,
    ranges: Vec<(Option<i64>, Option<i64>)>,
}

/// The leaderboard over whole hours by time first: the 'time_week' rows of the period's
/// whole ISO weeks, the 'time_day' rows of its ragged days and the 'time_hour' rows of its
/// ragged hours ([`HourRange::plan`], [`split_weeks`]), plus what older writers stored
/// without them (`mentor_totals_backfill`), ranked by `by` (then mentor id), the first
/// `limit`. Reads the period's rows only, whatever the history's length.
///
/// [`split_weeks`]: referral_schemas::query::split_weeks
pub fn top_by_time(hours: HourRange, by: referral_schemas::query::RankBy, limit: u32) -> ReadQuery {
    use super::totals::{TIME_DAY_MENTOR_FROM, TIME_HOUR_MENTOR_FROM, time_day_key, time_hour_key};
    let plan = hours.plan();
    let split = plan
        .daily
        .map(|(from, to)| referral_schemas::query::split_weeks(from, to))
        .unwrap_or_default();
    let daily: Vec<(Option<i64>, Option<i64>)> = split
        .daily
        .iter()
        .map(|(from, to)| (Some(*from), Some(*to)))
        .collect();
    let hourly: Vec<(Option<i64>, Option<i64>)> = plan
        .hourly
        .iter()
        .map(|(from, to)| (Some(*from), Some(*to)))
        .collect();
    let grains = [
        ByTimeGrain {
            name: "time_week",
            backfill_name: "week",
            mentor_from: TIME_DAY_MENTOR_FROM,
            key: time_day_key,
            ranges: split.weekly.into_iter().collect(),
        },
        ByTimeGrain {
            name: "time_day",
            backfill_name: "day",
            mentor_from: TIME_DAY_MENTOR_FROM,
            key: time_day_key,
            ranges: daily,
        },
        ByTimeGrain {
            name: "time_hour",
            backfill_name: "hour",
            mentor_from: TIME_HOUR_MENTOR_FROM,
            key: time_hour_key,
            ranges: hourly,
        },
    ];
    let mut parts: Vec<String> = Vec::new();
    let mut backfill: Vec<String> = Vec::new();
    let mut key_binds: Vec<Bound> = Vec::new();
    let mut backfill_binds: Vec<Bound> = Vec::new();
    for grain in grains {
        if grain.ranges.is_empty() {
            continue;
        }
        parts.push(format!(
            "SELECT substring(mentor_id, {}) AS mentor, clicks, conversions \
             FROM mentor_totals WHERE grain = '{}' AND ({})",
            grain.mentor_from,
            grain.name,
            key_ranges(&grain.ranges, grain.key, &mut key_binds)
        ));
        backfill.extend(backfill_ranges(
            grain.backfill_name,
            &grain.ranges,
            &mut backfill_binds,
        ));
    }
    if parts.is_empty() {
        // An empty period: no row can match.
        parts.push("SELECT '' AS mentor, toInt64(0) AS clicks, toInt64(0) AS conversions".into());
        backfill.push("0".into());
    }
    parts.push(format!(
        "SELECT mentor_id AS mentor, clicks, conversions FROM mentor_totals_backfill FINAL \
         WHERE {}",
        backfill.join(" OR ")
    ));
    let order = match by {
        referral_schemas::query::RankBy::Clicks => "total_clicks",
        referral_schemas::query::RankBy::Conversions => "total_conversions",
    };
    let mut query = ReadQuery::new(format!(
        "SELECT mentor, toInt64(sum(clicks)) AS total_clicks, \
         toInt64(sum(conversions)) AS total_conversions FROM ({}) GROUP BY mentor \
         HAVING total_clicks != 0 OR total_conversions != 0 \
         ORDER BY {order} DESC, mentor LIMIT ?",
        parts.join(" UNION ALL ")
    ));
    for bound in key_binds.into_iter().chain(backfill_binds) {
        query = query.bind(bound);
    }
    query.bind(Bound::Int(i64::from(limit)))
}

/// The marker row of a filled `mentor_totals_backfill`. 'filled' marked a fill without
/// weeks (migration 5's release); a fill with them is marked anew.
const BACKFILL_MARKER: &str = "filled_week";

/// Whether `mentor_totals_backfill` was filled, weeks included (its marker row).
pub fn backfill_filled() -> ReadQuery {
    ReadQuery::new(format!(
        "SELECT toUInt64(count()) FROM mentor_totals_backfill WHERE grain = '{BACKFILL_MARKER}'"
    ))
}

/// Stores, per grain ('day', 'hour', 'week'), bucket and mentor, the sums minus the
/// by-time sums (what writers of an older release stored without 'time_day', 'time_hour'
/// or 'time_week' rows), read in one scan of `mentor_totals` (one snapshot: a 'day' row
/// counts for its day and for its week), as `version`.
pub fn fill_backfill(version: u64) -> ReadQuery {
    use super::totals::{TIME_DAY_MENTOR_FROM, TIME_HOUR_MENTOR_FROM};
    ReadQuery::new(format!(
        "INSERT INTO mentor_totals_backfill (grain, bucket, mentor_id, clicks, conversions, version) \
         SELECT kind, kind_bucket, mentor, \
         sumIf(clicks, by_time = 0) - sumIf(clicks, by_time = 1) AS c, \
         sumIf(conversions, by_time = 0) - sumIf(conversions, by_time = 1) AS v, ? \
         FROM (SELECT arrayJoin(multiIf(grain = 'day', ['day', 'week'], \
         grain = 'time_day', ['day'], grain = 'time_week', ['week'], ['hour'])) AS kind, \
         if(grain IN ('time_day', 'time_hour', 'time_week'), 1, 0) AS by_time, \
         if(kind = 'week', bucket - (bucket % 7 + 10) % 7, bucket) AS kind_bucket, \
         clicks, conversions, \
         multiIf(grain IN ('time_day', 'time_week'), substring(mentor_id, {TIME_DAY_MENTOR_FROM}), \
         grain = 'time_hour', substring(mentor_id, {TIME_HOUR_MENTOR_FROM}), mentor_id) AS mentor \
         FROM mentor_totals \
         WHERE grain IN ('day', 'time_day', 'time_week', 'hour', 'time_hour')) \
         GROUP BY kind, kind_bucket, mentor HAVING c != 0 OR v != 0"
    ))
    .bind(Bound::Int(i64::try_from(version).unwrap_or(i64::MAX)))
}

/// Marks `mentor_totals_backfill` filled.
pub fn mark_backfill(version: u64) -> ReadQuery {
    ReadQuery::new(format!(
        "INSERT INTO mentor_totals_backfill (grain, bucket, mentor_id, clicks, conversions, version) \
         VALUES ('{BACKFILL_MARKER}', 0, '', 0, 0, ?)"
    ))
    .bind(Bound::Int(i64::try_from(version).unwrap_or(i64::MAX)))
}

/// Every mentor's live clicks by verdict with `occurred_at` in `[from, to)`.
pub fn clicks_by_mentor(from: Option<i64>, to: i64) -> ReadQuery {
    ReadQuery::new(
        "SELECT mentor_id, toInt64(countIf(verdict = 'counted')) AS counted, \
         toInt64(countIf(verdict = 'duplicate')) AS duplicates, \
         toInt64(countIf(verdict = 'bot')) AS bots FROM \
         (SELECT mentor_id, verdict, deleted_at FROM attributions_by_time FINAL \
         WHERE occurred_at >= ? AND occurred_at < ?) WHERE deleted_at IS NULL \
         GROUP BY mentor_id ORDER BY mentor_id"
            .into(),
    )
    .bind(Bound::Int(from.unwrap_or(i64::MIN)))
    .bind(Bound::Int(to))
}

/// Every mentor's live conversions with `confirmed_at` in `[from, to)`, from the copy
/// sorted by `confirmed_at` (which never changes, so it is filtered before `FINAL`).
pub fn conversions_by_mentor(from: Option<i64>, to: i64) -> ReadQuery {
    ReadQuery::new(
        "SELECT mentor_id, toInt64(count()) AS conversions FROM \
         (SELECT mentor_id, deleted_at, reversed_at FROM attributions_by_confirmation FINAL \
         WHERE confirmed_at >= ? AND confirmed_at < ?) \
         WHERE deleted_at IS NULL AND reversed_at IS NULL \
         GROUP BY mentor_id ORDER BY mentor_id"
            .into(),
    )
    .bind(Bound::Int(from.unwrap_or(i64::MIN)))
    .bind(Bound::Int(to))
}

/// `query` with the `OR` of the row ranges that sum `hours` (whole days from the daily
/// rows, the ragged ends from the hourly rows) appended to its SQL and binds.
fn totals_ranges(hours: HourRange, mut query: ReadQuery) -> ReadQuery {
    let plan = hours.plan();
    let mut ranges = Vec::new();
    if let Some((from_day, to_day)) = plan.daily {
        let mut range =
            String::from("(grain IN ('day', 'duplicate_day', 'bot_day', 'reversal_day')");
        if let Some(from) = from_day {
            range.push_str(" AND bucket >= ?");
            query = query.bind(Bound::Int(from));
        }
        if let Some(to) = to_day {
            range.push_str(" AND bucket < ?");
            query = query.bind(Bound::Int(to));
        }
        range.push(')');
        ranges.push(range);
    }
    for (from, to) in plan.hourly {
        ranges.push(
            "(grain IN ('hour', 'duplicate_hour', 'bot_hour', 'reversal_hour') \
             AND bucket >= ? AND bucket < ?)"
                .to_owned(),
        );
        query = query.bind(Bound::Int(from)).bind(Bound::Int(to));
    }
    if ranges.is_empty() {
        // An empty period: no row can match.
        ranges.push("0".to_owned());
    }
    query.sql.push_str(&ranges.join(" OR "));
    query
}

/// A mentor's hourly totals in `[from, to)` (hours since the epoch; `from` `None`:
/// unbounded): counted, duplicate and bot clicks and conversions per hour; an hour whose
/// deltas cancel out (merged or not) is absent.
pub fn mentor_hours(mentor_id: &str, from: Option<i64>, to: i64) -> ReadQuery {
    ReadQuery::new(
        "SELECT bucket, toInt64(sumIf(clicks, grain = 'hour')) AS counted, \
         toInt64(sumIf(clicks, grain = 'duplicate_hour')) AS duplicates, \
         toInt64(sumIf(clicks, grain = 'bot_hour')) AS bots, \
         toInt64(sum(conversions)) AS conversions, \
         toInt64(sumIf(clicks, grain = 'reversal_hour')) AS reversals FROM mentor_totals \
         WHERE grain IN ('hour', 'duplicate_hour', 'bot_hour', 'reversal_hour') AND mentor_id = ? \
         AND bucket >= ? AND bucket < ? GROUP BY bucket \
         HAVING counted != 0 OR duplicates != 0 OR bots != 0 OR conversions != 0 \
         OR reversals != 0 \
         ORDER BY bucket"
            .into(),
    )
    .bind(Bound::Text(mentor_id.to_owned()))
    .bind(Bound::Int(from.unwrap_or(i64::MIN)))
    .bind(Bound::Int(to))
}

/// Ranges read with an `OR` at most; more become a slot set when they can.
const OR_RANGES_MAX: usize = 4;
/// Slots in one [`RangesFilter::Slots`] set at most.
const MAX_FILTER_SLOTS: i64 = 16_384;

/// How `[from, to)` ranges (sorted, disjoint) of a time column are selected.
///
/// ClickHouse 18.16 analyses an `OR` of many ranges slowly: a 30-day series in a zone with
/// a half-hour offset cuts 31 hours, and the `OR` of their ranges cost ~6 ms per query
/// before any row was read, more than the reading. When every boundary between the ranges
/// falls on a slot, the same rows are `column` within the outer bounds (which the sort key
/// serves) and in the ranges' slots (a set, checked in `PREWHERE` before `FINAL` merges);
/// otherwise the `OR` stays. Up to [`OR_RANGES_MAX`] ranges keep the `OR` anyway: it is
/// analysed quickly and reads only their rows, where the set reads every row within the
/// outer bounds (for conversions, every mentor's).
#[derive(Clone, Debug, PartialEq, Eq)]
enum RangesFilter {
    /// Within `[from, to)`, and in one of `slots` when some (every row's slot inside the
    /// bounds when none).
    Slots { from: i64, to: i64, slots: Vec<i64> },
    /// The `OR` of the ranges.
    Ranges(Vec<(i64, i64)>),
}

impl RangesFilter {
    fn of(ranges: &[(i64, i64)]) -> Self {
        use referral_schemas::calendar::SLOT_MS;
        let (Some(first), Some(last)) = (ranges.first(), ranges.last()) else {
            return Self::Slots {
                from: 0,
                to: 0,
                slots: Vec::new(),
            };
        };
        if ranges.len() == 1 {
            return Self::Slots {
                from: first.0,
                to: first.1,
                slots: Vec::new(),
            };
        }
        // A few ranges are analysed quickly, and read only their own rows: the set reads
        // every row within the outer bounds (for conversions, every mentor's).
        if ranges.len() <= OR_RANGES_MAX {
            return Self::Ranges(ranges.to_vec());
        }
        let inner_ends = ranges
            .iter()
            .map(|range| range.1)
            .take(ranges.len() - 1)
            .chain(ranges.iter().skip(1).map(|range| range.0));
        let slot_span = |&(from, to): &(i64, i64)| {
            from.div_euclid(SLOT_MS)..to.saturating_add(SLOT_MS - 1).div_euclid(SLOT_MS)
        };
        // A series has at most 1,000 buckets, so a few thousand cut slots; past the cap
        // (never asked today) the set would cost more than the `OR`.
        let count: i64 = ranges
            .iter()
            .map(|range| slot_span(range).end.saturating_sub(slot_span(range).start))
            .fold(0, i64::saturating_add);
        if count <= MAX_FILTER_SLOTS
            && inner_ends
                .into_iter()
                .all(|end| end.rem_euclid(SLOT_MS) == 0)
        {
            let slots = ranges.iter().flat_map(slot_span).collect();
            return Self::Slots {
                from: first.0,
                to: last.1,
                slots,
            };
        }
        Self::Ranges(ranges.to_vec())
    }

    /// The slot set for `PREWHERE` (with `AND` before it when `joined`), if any.
    fn push_prewhere(&self, column: &str, joined: bool, query: &mut ReadQuery) {
        let Self::Slots { slots, .. } = self else {
            return;
        };
        if slots.is_empty() {
            return;
        }
        let marks = vec!["?"; slots.len()].join(", ");
        let and = if joined { " AND " } else { "" };
        let _ = write!(
            query.sql,
            "{and}intDiv({column}, {}) IN ({marks})",
            referral_schemas::calendar::SLOT_MS
        );
        query
            .binds
            .extend(slots.iter().map(|slot| Bound::Int(*slot)));
    }

    /// The bounds or the `OR` of the ranges, for `WHERE`.
    fn push_where(&self, column: &str, query: &mut ReadQuery) {
        match self {
            Self::Slots { from, to, .. } => {
                let _ = write!(query.sql, "{column} >= ? AND {column} < ?");
                query.binds.extend([Bound::Int(*from), Bound::Int(*to)]);
            }
            Self::Ranges(ranges) => {
                let conditions: Vec<String> = ranges
                    .iter()
                    .map(|_| format!("({column} >= ? AND {column} < ?)"))
                    .collect();
                let _ = write!(query.sql, "({})", conditions.join(" OR "));
                for (from, to) in ranges {
                    query.binds.extend([Bound::Int(*from), Bound::Int(*to)]);
                }
            }
        }
    }

    fn has_prewhere(&self) -> bool {
        matches!(self, Self::Slots { slots, .. } if !slots.is_empty())
    }
}

/// A mentor's live clicks per 15-minute slot and verdict with `occurred_at` in `ranges`
/// (`[from, to)` each). `FINAL` inside on the sort key (mentor, occurred_at); deletion
/// filtered after it.
pub fn mentor_click_slots(mentor_id: &str, ranges: &[(i64, i64)]) -> ReadQuery {
    let filter = RangesFilter::of(ranges);
    let mut query = ReadQuery::new(format!(
        "SELECT intDiv(occurred_at, {slot}) AS slot, verdict, toUInt64(count()) AS clicks FROM \
         (SELECT occurred_at, verdict, deleted_at FROM attributions_by_mentor FINAL ",
        slot = referral_schemas::calendar::SLOT_MS
    ));
    if filter.has_prewhere() {
        query.sql.push_str("PREWHERE ");
        filter.push_prewhere("occurred_at", false, &mut query);
        query.sql.push(' ');
    }
    query.sql.push_str("WHERE mentor_id = ? AND ");
    query.binds.push(Bound::Text(mentor_id.to_owned()));
    filter.push_where("occurred_at", &mut query);
    query
        .sql
        .push_str(") WHERE deleted_at IS NULL GROUP BY slot, verdict ORDER BY slot, verdict");
    query
}

/// A mentor's live conversions per 15-minute slot with `confirmed_at` in `ranges`, from
/// the copy sorted by `confirmed_at` (which never changes once set): every mentor's
/// conversions in those hours are read, a few hours' worth. The mentor (the same in every
/// version of a row) is checked in `PREWHERE`, before the other columns are read and
/// `FINAL` merges.
pub fn mentor_conversion_slots(mentor_id: &str, ranges: &[(i64, i64)]) -> ReadQuery {
    let filter = RangesFilter::of(ranges);
    let mut query = ReadQuery::new(format!(
        "SELECT intDiv(confirmed_at, {slot}) AS slot, \
         toUInt64(countIf(reversed_at IS NULL)) AS conversions, \
         toUInt64(countIf(reversed_at IS NOT NULL)) AS reversals \
         FROM (SELECT confirmed_at, deleted_at, reversed_at FROM attributions_by_confirmation FINAL \
         PREWHERE mentor_id = ?",
        slot = referral_schemas::calendar::SLOT_MS
    ));
    query.binds.push(Bound::Text(mentor_id.to_owned()));
    filter.push_prewhere("confirmed_at", true, &mut query);
    query.sql.push_str(" WHERE ");
    filter.push_where("confirmed_at", &mut query);
    query
        .sql
        .push_str(") WHERE deleted_at IS NULL GROUP BY slot ORDER BY slot");
    query
}

/// The latest state of one code (live or retired).
pub fn referral_code(code: &str) -> ReadQuery {
    ReadQuery::new("SELECT ?fields FROM referral_codes FINAL WHERE code = ?".into())
        .bind(Bound::Text(code.to_owned()))
}

fn live_codes(mentor_id: Option<&str>) -> ReadQuery {
    let query = ReadQuery::new(format!(
        "SELECT {CODE_COLUMNS} FROM (SELECT {CODE_COLUMNS} FROM referral_codes FINAL) WHERE retired = 0"
    ));
    match mentor_id {
        Some(mentor_id) => ReadQuery {
            sql: format!("{} AND mentor_id = ?", query.sql),
            binds: vec![Bound::Text(mentor_id.to_owned())],
        },
        None => query,
    }
}

/// How many live codes (of a mentor, or all).
pub fn code_count(mentor_id: Option<&str>) -> ReadQuery {
    let inner = live_codes(mentor_id);
    ReadQuery {
        sql: format!("SELECT toUInt64(count()) AS total FROM ({})", inner.sql),
        binds: inner.binds,
    }
}

/// One page of live codes, by code.
pub fn code_page(mentor_id: Option<&str>, page: PageRequest) -> ReadQuery {
    let inner = live_codes(mentor_id);
    ReadQuery {
        sql: format!(
            "SELECT ?fields FROM ({}) ORDER BY code LIMIT ?, ?",
            inner.sql
        ),
        binds: inner.binds,
    }
    .bind(Bound::Int(i64::try_from(page.offset()).unwrap_or(i64::MAX)))
    .bind(Bound::Int(i64::from(page.limit)))
}

/// The decision recorded for a command, and the log message it was decided for.
pub fn verdict(command_id: &str) -> ReadQuery {
    ReadQuery::new(
        "SELECT verdict, source_topic, source_partition, source_offset FROM command_verdicts \
         FINAL WHERE command_id = ?"
            .into(),
    )
    .bind(Bound::Text(command_id.to_owned()))
}

/// The verdicts recorded for any of `command_ids` (at least one id), with their sources.
pub fn verdicts(command_ids: &[String]) -> ReadQuery {
    let placeholders = vec!["?"; command_ids.len().max(1)].join(", ");
    let mut query = ReadQuery::new(format!(
        "SELECT command_id, verdict, source_topic, source_partition, source_offset \
         FROM command_verdicts FINAL WHERE command_id IN ({placeholders})"
    ));
    if command_ids.is_empty() {
        query = query.bind(Bound::Text(String::new()));
    }
    for id in command_ids {
        query = query.bind(Bound::Text(id.clone()));
    }
    query
}

/// Which of `ids` (at least one) are stored, in any version: `attributions` is sorted by id
/// and nothing is merged (no `FINAL`), so this reads a granule of the `id` column per part
/// and id: cheap enough to ask for every waiting command every few milliseconds.
pub fn stored_attribution_ids(ids: &[String]) -> ReadQuery {
    let placeholders = vec!["?"; ids.len().max(1)].join(", ");
    let mut query = ReadQuery::new(format!(
        "SELECT DISTINCT id FROM attributions WHERE id IN ({placeholders}) ORDER BY id"
    ));
    if ids.is_empty() {
        query = query.bind(Bound::Text(String::new()));
    }
    for id in ids {
        query = query.bind(Bound::Text(id.clone()));
    }
    query
}

/// Where a partition's counted clicks below its checkpoint are, for a dedup window's
/// rebuild. `since_id`: only ids from this one on (ids start with their creation time and
/// `attributions` is sorted by id, so this reads the recent granules only; None: all).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CountedBelow<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub checkpoint: i64,
    pub since_id: Option<String>,
}

impl CountedBelow<'_> {
    fn condition(&self, mut query: ReadQuery) -> ReadQuery {
        if let Some(since_id) = &self.since_id {
            query.sql.push_str("id >= ? AND ");
            query = query.bind(Bound::Text(since_id.clone()));
        }
        query.sql.push_str(
            "verdict = 'counted' AND source_topic = ? AND source_partition = ? \
             AND source_offset >= 0 AND source_offset < ?",
        );
        query
            .bind(Bound::Text(self.topic.to_owned()))
            .bind(Bound::Int(i64::from(self.partition)))
            .bind(Bound::Int(self.checkpoint))
    }
}

/// The newest `created_at` of the counted clicks, and how many there are.
pub fn newest_counted(below: &CountedBelow<'_>) -> ReadQuery {
    below.condition(ReadQuery::new(
        "SELECT toInt64(max(created_at)) AS newest, toUInt64(count()) AS clicks \
         FROM attributions WHERE "
            .into(),
    ))
}

/// The counted clicks received at or after `since` (ms): what rebuilds a dedup window. No
/// `FINAL`: every version of a row carries the same click, and tombstones count as they
/// did in the writer's window.
pub fn counted_clicks(below: &CountedBelow<'_>, since: i64) -> ReadQuery {
    let mut query = below.condition(ReadQuery::new(
        "SELECT id, mentor_id, code, ip_address, user_agent, created_at FROM attributions WHERE "
            .into(),
    ));
    query.sql.push_str(" AND created_at >= ?");
    query.bind(Bound::Int(since))
}

/// Every partition's stored checkpoint: (topic, partition, next offset).
pub fn checkpoints() -> ReadQuery {
    ReadQuery::new(
        "SELECT mentor_id, bucket, toInt64(sum(next_offset)) AS next_offset FROM mentor_totals \
         WHERE grain = 'checkpoint' GROUP BY mentor_id, bucket ORDER BY mentor_id, bucket"
            .into(),
    )
}

/// The next offset of a partition whose effects are all stored (0: none yet).
pub fn checkpoint(topic: &str, partition: i32) -> ReadQuery {
    ReadQuery::new(
        "SELECT toInt64(sum(next_offset)) AS next_offset FROM mentor_totals \
         WHERE grain = 'checkpoint' AND mentor_id = ? AND bucket = ?"
            .into(),
    )
    .bind(Bound::Text(topic.to_owned()))
    .bind(Bound::Int(i64::from(partition)))
}

#[cfg(test)]
mod tests {
    use referral_schemas::AttributionStatus;

    use super::*;

    #[test]
    fn ranges_on_slot_boundaries_become_bounds_and_a_slot_set() {
        const SLOT: i64 = 900_000;
        const HOUR: i64 = 4 * SLOT;
        // A ragged start, four cut hours, a ragged end: every inner boundary on an hour.
        let ranges = [
            (5 * HOUR - 1_234, 5 * HOUR),
            (30 * HOUR, 31 * HOUR),
            (54 * HOUR, 55 * HOUR),
            (60 * HOUR, 61 * HOUR),
            (70 * HOUR, 71 * HOUR),
            (78 * HOUR, 78 * HOUR + 5),
        ];
        let RangesFilter::Slots { from, to, slots } = RangesFilter::of(&ranges) else {
            panic!("aligned ranges keep their slots");
        };
        assert_eq!((from, to), (5 * HOUR - 1_234, 78 * HOUR + 5));
        let mut expected = vec![19];
        expected.extend(120..124);
        expected.extend(216..220);
        expected.extend(240..244);
        expected.extend(280..284);
        expected.push(312);
        assert_eq!(slots, expected);
        // One range: its bounds, no set.
        assert_eq!(
            RangesFilter::of(&ranges[1..2]),
            RangesFilter::Slots {
                from: 30 * HOUR,
                to: 31 * HOUR,
                slots: Vec::new()
            }
        );
        // A few ranges: their `OR`.
        assert_eq!(
            RangesFilter::of(&ranges[1..4]),
            RangesFilter::Ranges(ranges[1..4].to_vec())
        );
        // An inner boundary inside a slot: the slot set would take rows outside a range.
        let ragged: Vec<(i64, i64)> = (0..6)
            .map(|n| (n * 20 * SLOT, n * 20 * SLOT + 10 * SLOT + 7))
            .collect();
        assert_eq!(
            RangesFilter::of(&ragged),
            RangesFilter::Ranges(ragged.clone())
        );
        // Nothing: an empty range.
        assert!(matches!(
            RangesFilter::of(&[]),
            RangesFilter::Slots { from: 0, to: 0, .. }
        ));
        // Past the cap: the `OR`.
        let wide = [
            (0, HOUR),
            (2 * HOUR, 3 * HOUR),
            (4 * HOUR, 5 * HOUR),
            (6 * HOUR, 7 * HOUR),
            (8 * HOUR, 8 * HOUR + (MAX_FILTER_SLOTS + 1) * SLOT),
        ];
        assert_eq!(RangesFilter::of(&wide), RangesFilter::Ranges(wide.to_vec()));
    }

    #[test]
    fn slot_queries_bind_in_the_order_of_their_placeholders() {
        const HOUR: i64 = 3_600_000;
        let ranges: Vec<(i64, i64)> = (0..5).map(|n| (3 * n * HOUR, (3 * n + 1) * HOUR)).collect();
        for query in [
            mentor_click_slots("usr_jan", &ranges),
            mentor_conversion_slots("usr_jan", &ranges),
        ] {
            assert_eq!(
                query.sql.matches('?').count(),
                query.binds.len(),
                "{}",
                query.sql
            );
            assert!(query.sql.contains("PREWHERE"), "{}", query.sql);
            assert!(!query.sql.contains(" OR "), "{}", query.sql);
        }
        let clicks = mentor_click_slots("usr_jan", &ranges);
        // The slots, then the mentor, then the bounds.
        assert_eq!(clicks.binds[20], Bound::Text("usr_jan".into()));
        assert_eq!(clicks.binds[21..], [Bound::Int(0), Bound::Int(13 * HOUR)]);
        let conversions = mentor_conversion_slots("usr_jan", &ranges);
        assert_eq!(conversions.binds[0], Bound::Text("usr_jan".into()));
    }

    #[test]
    fn values_are_rendered_as_escaped_literals() {
        let query = ReadQuery::new("SELECT ?fields FROM t WHERE a = ? AND b = ?".into())
            .bind(Bound::Text("it's \\ fine?".into()))
            .bind(Bound::Int(-3));
        assert_eq!(
            query.render("x, y"),
            r"SELECT x, y FROM t WHERE a = 'it\'s \\ fine?' AND b = -3"
        );
    }

    #[test]
    fn list_filters_on_changing_columns_apply_after_final() {
        let filter = AttributionFilter {
            status: Some(AttributionStatus::Pending),
            mentor_id: Some("m1".into()),
            ..AttributionFilter::default()
        };
        let query = attribution_page(&filter, PageRequest { page: 2, limit: 10 });
        assert_eq!(
            query.render("*"),
            format!(
                "SELECT * FROM (SELECT {ATTRIBUTION_COLUMNS} FROM attributions_by_mentor FINAL \
                 WHERE mentor_id = 'm1') WHERE deleted_at IS NULL AND status = 'pending' \
                 ORDER BY occurred_at DESC, id DESC LIMIT 10, 11"
            )
        );
    }

    #[test]
    fn totals_read_days_and_ragged_hours_in_one_query() {
        let query = mentor_totals(
            "m1",
            HourRange {
                from_hour: Some(30),
                to_hour: Some(75),
            },
        );
        assert_eq!(
            query.render(""),
            "SELECT toInt64(sumIf(clicks, grain IN ('hour', 'day'))) AS total_clicks, \
             toInt64(sumIf(clicks, grain IN ('duplicate_hour', 'duplicate_day'))) AS duplicates, \
             toInt64(sumIf(clicks, grain IN ('bot_hour', 'bot_day'))) AS bots, \
             toInt64(sum(conversions)) AS total_conversions, \
             toInt64(sumIf(clicks, grain IN ('reversal_hour', 'reversal_day'))) AS reversals \
             FROM mentor_totals WHERE mentor_id = 'm1' AND \
             ((grain IN ('day', 'duplicate_day', 'bot_day', 'reversal_day') AND bucket >= 2 AND bucket < 3) OR \
             (grain IN ('hour', 'duplicate_hour', 'bot_hour', 'reversal_hour') AND bucket >= 30 AND bucket < 48) OR \
             (grain IN ('hour', 'duplicate_hour', 'bot_hour', 'reversal_hour') AND bucket >= 72 AND bucket < 75))"
        );
    }
}
