//! Read-side requests shared by every store: list filters, pages and totals periods,
//! parsed from query strings with the same field-level errors as bodies.

use serde::Serialize;

use crate::Timestamp;
use crate::attribution::{AttributionKind, AttributionStatus};
use crate::calendar::{Interval, Zone};
use crate::error::{ApiError, ErrorKind};
use crate::timestamp::{DAY_MS, HOUR_MS};
use crate::validation::{normalize_code, validate_party_id};
use crate::verdict::ClickVerdict;

/// Default and largest page sizes.
pub const DEFAULT_LIMIT: u32 = 20;
pub const MAX_LIMIT: u32 = 100;
/// Deepest page reachable by offset: beyond this, offset pagination costs more than it is
/// worth to a dashboard, and a filter (`from`/`to`) is the way in.
pub const MAX_OFFSET: u64 = 100_000;
/// Matches a filtered list counts at most: the deepest reachable page ([`MAX_OFFSET`] +
/// [`MAX_LIMIT`]). Past that, `total` reads as this bound (counting every match of a broad
/// filter would cost a scan per page).
pub const COUNT_BOUND: u64 = MAX_OFFSET + MAX_LIMIT as u64;

/// Which attributions a list shows. All filters combine with AND.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AttributionFilter {
    pub status: Option<AttributionStatus>,
    pub kind: Option<AttributionKind>,
    pub code: Option<String>,
    pub mentor_id: Option<String>,
    /// Inclusive lower bound on `occurred_at`.
    pub from: Option<Timestamp>,
    /// Exclusive upper bound on `occurred_at`.
    pub to: Option<Timestamp>,
    pub verdict: Option<ClickVerdict>,
    /// Only attributions after this position in the list's order (`cursor`).
    pub after: Option<ListCursor>,
}

/// A position in a list (newest first, by `occurred_at` then `id`, both of which never
/// change): the next page holds the attributions after it. Keyset pages see every
/// attribution that matches exactly once while clicks keep arriving, at any depth.
///
/// Printed as `c1.<occurred_at ms>.<id>`: URL-safe, versioned, checked when read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListCursor {
    pub occurred_at: Timestamp,
    pub id: String,
}

impl ListCursor {
    const VERSION: &'static str = "c1";

    pub fn encode(&self) -> String {
        format!(
            "{}.{}.{}",
            Self::VERSION,
            self.occurred_at.as_millis(),
            self.id
        )
    }

    pub fn decode(text: &str) -> Result<Self, ApiError> {
        let invalid = || ApiError::invalid("cursor", "must be a next_cursor this API answered");
        let mut parts = text.splitn(3, '.');
        let (Some(Self::VERSION), Some(millis), Some(id)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid());
        };
        let millis: i64 = millis.parse().map_err(|_| invalid())?;
        // Ids are compared byte by byte: only the canonical (upper-case) form is one.
        let canonical = id
            .strip_prefix(crate::id::ATTRIBUTION_PREFIX)
            .is_some_and(|ulid| ulid.bytes().all(|byte| !byte.is_ascii_lowercase()));
        if !crate::id::is_attribution_id(id) || !canonical {
            return Err(invalid());
        }
        let cursor = Self {
            occurred_at: Timestamp::from_millis(millis),
            id: id.to_owned(),
        };
        // Exactly what `encode` prints (no `+`, no leading zeros).
        if cursor.encode() != text {
            return Err(invalid());
        }
        Ok(cursor)
    }
}

/// A page of a list: 1-based.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PageRequest {
    pub page: u32,
    pub limit: u32,
}

impl PageRequest {
    pub fn offset(self) -> u64 {
        u64::from(self.page.saturating_sub(1)) * u64::from(self.limit)
    }
}

/// `pagination` in list answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Pagination {
    pub page: u32,
    pub limit: u32,
    pub total: u64,
    /// Attribution lists: the cursor of the next page, null on the last one. Absent from
    /// lists without cursors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<Option<String>>,
}

/// Query-string pairs with duplicate and unknown names refused.
struct QueryParams<'q> {
    pairs: Vec<(std::borrow::Cow<'q, str>, std::borrow::Cow<'q, str>)>,
}

impl<'q> QueryParams<'q> {
    fn parse(query: Option<&'q str>, allowed: &[&str]) -> Result<Self, ApiError> {
        let pairs: Vec<_> = form_urlencoded::parse(query.unwrap_or("").as_bytes()).collect();
        for (index, (name, _)) in pairs.iter().enumerate() {
            if !allowed.contains(&name.as_ref()) {
                return Err(ApiError::new(
                    ErrorKind::UnknownField,
                    format!("unknown query parameter; allowed: {}", allowed.join(", ")),
                )
                .on_field(name));
            }
            if pairs[..index].iter().any(|(earlier, _)| earlier == name) {
                return Err(ApiError::invalid(name, "must be given at most once"));
            }
        }
        Ok(Self { pairs })
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_ref())
    }
}

fn parse_bound(name: &str, raw: Option<&str>) -> Result<Option<Timestamp>, ApiError> {
    raw.map(|raw| {
        Timestamp::parse_rfc3339(raw).map_err(|error| ApiError::invalid(name, error.to_string()))
    })
    .transpose()
}

fn parse_u32(name: &str, raw: &str, range: std::ops::RangeInclusive<u32>) -> Result<u32, ApiError> {
    let out_of_range = || {
        ApiError::invalid(
            name,
            format!(
                "must be an integer from {} to {}",
                range.start(),
                range.end()
            ),
        )
    };
    let value: u32 = raw.parse().map_err(|_| out_of_range())?;
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(out_of_range())
    }
}

/// Parses `page` and `limit`.
fn parse_page(params: &QueryParams<'_>) -> Result<PageRequest, ApiError> {
    let page = params
        .get("page")
        .map(|raw| parse_u32("page", raw, 1..=u32::MAX))
        .transpose()?
        .unwrap_or(1);
    let limit = params
        .get("limit")
        .map(|raw| parse_u32("limit", raw, 1..=MAX_LIMIT))
        .transpose()?
        .unwrap_or(DEFAULT_LIMIT);
    let request = PageRequest { page, limit };
    if request.offset() > MAX_OFFSET {
        return Err(ApiError::invalid(
            "page",
            format!("page * limit must be at most {MAX_OFFSET}; narrow the list with from/to"),
        ));
    }
    Ok(request)
}

/// Parses the list query: `page`, `limit`, `status`, `type`, `code`, `mentor_id`, `from`,
/// `to`, `verdict`, `cursor` (which replaces `page`). `mentor_id` is taken from the path, not the query, on the mentor route.
pub fn parse_list_query(
    query: Option<&str>,
    mentor_in_path: bool,
) -> Result<(AttributionFilter, PageRequest), ApiError> {
    const LIST: &[&str] = &[
        "page",
        "limit",
        "status",
        "type",
        "code",
        "mentor_id",
        "from",
        "to",
        "verdict",
        "cursor",
    ];
    const MENTOR_LIST: &[&str] = &[
        "page", "limit", "status", "type", "code", "from", "to", "verdict", "cursor",
    ];
    let params = QueryParams::parse(query, if mentor_in_path { MENTOR_LIST } else { LIST })?;
    let page = parse_page(&params)?;
    let after = params.get("cursor").map(ListCursor::decode).transpose()?;
    if after.is_some() && params.get("page").is_some() {
        return Err(ApiError::invalid(
            "cursor",
            "give either cursor or page: a cursor is its own position",
        ));
    }
    let filter = AttributionFilter {
        after,
        ..list_filter(&params)?
    };
    Ok((filter, page))
}

/// The list filters of a query: `status`, `type`, `code`, `mentor_id`, `from`, `to`,
/// `verdict` (those it allows).
fn list_filter(params: &QueryParams<'_>) -> Result<AttributionFilter, ApiError> {
    let status = params
        .get("status")
        .map(|raw| {
            AttributionStatus::parse(raw).ok_or_else(|| {
                ApiError::invalid("status", "must be pending, confirmed or reversed")
            })
        })
        .transpose()?;
    let kind = params
        .get("type")
        .map(|raw| {
            AttributionKind::parse(raw)
                .ok_or_else(|| ApiError::invalid("type", "must be click or conversion"))
        })
        .transpose()?;
    let verdict = params
        .get("verdict")
        .map(|raw| {
            ClickVerdict::parse(raw)
                .ok_or_else(|| ApiError::invalid("verdict", "must be counted, duplicate or bot"))
        })
        .transpose()?;
    let code = params
        .get("code")
        .map(|raw| normalize_code("code", raw))
        .transpose()?;
    let mentor_id = params.get("mentor_id").map(str::to_owned);
    if let Some(mentor_id) = &mentor_id {
        validate_party_id("mentor_id", mentor_id)?;
    }
    let from = parse_bound("from", params.get("from"))?;
    let to = parse_bound("to", params.get("to"))?;
    if let (Some(from), Some(to)) = (from, to)
        && from > to
    {
        return Err(ApiError::invalid("to", "must not be before from"));
    }
    Ok(AttributionFilter {
        status,
        kind,
        code,
        mentor_id,
        from,
        to,
        verdict,
        after: None,
    })
}

/// The format of an export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    /// RFC 4180 CSV with a header row.
    Csv,
    /// One JSON attribution per line.
    Ndjson,
}

/// Parses the export query: `format` (`csv`, the default, or `ndjson`) and the list's
/// filters.
pub fn parse_export_query(
    query: Option<&str>,
) -> Result<(ExportFormat, AttributionFilter), ApiError> {
    const EXPORT: &[&str] = &[
        "format",
        "status",
        "type",
        "code",
        "mentor_id",
        "from",
        "to",
        "verdict",
    ];
    let params = QueryParams::parse(query, EXPORT)?;
    let format = match params.get("format") {
        None | Some("csv") => ExportFormat::Csv,
        Some("ndjson") => ExportFormat::Ndjson,
        Some(_) => return Err(ApiError::invalid("format", "must be csv or ndjson")),
    };
    Ok((format, list_filter(&params)?))
}

/// Parses `page`, `limit` and an optional `mentor_id` for the referral-code list.
pub fn parse_code_list_query(
    query: Option<&str>,
) -> Result<(Option<String>, PageRequest), ApiError> {
    let params = QueryParams::parse(query, &["page", "limit", "mentor_id"])?;
    let page = parse_page(&params)?;
    let mentor_id = params.get("mentor_id").map(str::to_owned);
    if let Some(mentor_id) = &mentor_id {
        validate_party_id("mentor_id", mentor_id)?;
    }
    Ok((mentor_id, page))
}

/// The named periods of the totals endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Period {
    AllTime,
    Last24Hours,
    Last7Days,
    Last30Days,
    Last90Days,
    /// Calendar periods in the request's time zone.
    Today,
    Yesterday,
    ThisWeek,
    ThisMonth,
    LastMonth,
    Custom,
}

impl Period {
    const NAMED: [Self; 10] = [
        Self::AllTime,
        Self::Last24Hours,
        Self::Last7Days,
        Self::Last30Days,
        Self::Last90Days,
        Self::Today,
        Self::Yesterday,
        Self::ThisWeek,
        Self::ThisMonth,
        Self::LastMonth,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::AllTime => "all_time",
            Self::Last24Hours => "24h",
            Self::Last7Days => "7d",
            Self::Last30Days => "30d",
            Self::Last90Days => "90d",
            Self::Today => "today",
            Self::Yesterday => "yesterday",
            Self::ThisWeek => "this_week",
            Self::ThisMonth => "this_month",
            Self::LastMonth => "last_month",
            Self::Custom => "custom",
        }
    }

    /// A named period (not `custom`).
    fn parse(text: &str) -> Option<Self> {
        Self::NAMED
            .into_iter()
            .find(|period| period.as_str() == text)
    }
}

/// Which hours of totals to add up: `[from_hour, to_hour)` in hours since the epoch;
/// `None` is unbounded.
///
/// Totals are materialized per hour (and per day), so periods resolve to whole hours: a
/// start is rounded down to its hour, an end up to the next hour boundary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HourRange {
    pub from_hour: Option<i64>,
    pub to_hour: Option<i64>,
}

/// A parsed totals request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TotalsRequest {
    pub period: Period,
    pub hours: HourRange,
    /// The period's instants when they are not whole UTC hours (a calendar period in a zone
    /// such as Asia/Kolkata): then the totals are summed from 15-minute slots instead.
    pub exact: Option<InstantRange>,
    pub zone: Zone,
}

/// `[from, to)` in ms; `None` is unbounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InstantRange {
    pub from: Option<Timestamp>,
    pub to: Option<Timestamp>,
}

/// The period of a totals or time-series query, resolved against `now` in `zone`.
struct ResolvedPeriod {
    period: Period,
    range: InstantRange,
}

/// Parses `period` (`all_time`, `24h`, `7d`, `30d`, `90d`, or the calendar periods `today`,
/// `yesterday`, `this_week`, `this_month`, `last_month` in `tz`) or `from`/`to` (answered as
/// `custom`; `period=custom` may be given with them).
fn resolve_period(
    params: &QueryParams<'_>,
    zone: &Zone,
    now: Timestamp,
) -> Result<ResolvedPeriod, ApiError> {
    let from = parse_bound("from", params.get("from"))?;
    let to = parse_bound("to", params.get("to"))?;
    let custom = from.is_some() || to.is_some();
    let period = match (params.get("period"), custom) {
        (None | Some("custom"), true) => Period::Custom,
        (Some("custom"), false) => {
            return Err(ApiError::invalid(
                "from",
                "period=custom needs from and/or to",
            ));
        }
        (Some(_), true) => {
            return Err(ApiError::invalid(
                "period",
                "give either a named period or from/to, not both",
            ));
        }
        (None | Some("all_time"), false) => Period::AllTime,
        (Some(name), false) => Period::parse(name).ok_or_else(|| {
            ApiError::invalid(
                "period",
                "must be all_time, 24h, 7d, 30d, 90d, today, yesterday, this_week, this_month, \
                 last_month or custom",
            )
        })?,
    };
    if let (Some(from), Some(to)) = (from, to)
        && from > to
    {
        return Err(ApiError::invalid("to", "must not be before from"));
    }
    let since = |millis: i64| Some(now.saturating_sub_millis(millis));
    let (from, to) = match period {
        Period::AllTime => (None, None),
        Period::Last24Hours => (since(DAY_MS), None),
        Period::Last7Days => (since(7 * DAY_MS), None),
        Period::Last30Days => (since(30 * DAY_MS), None),
        Period::Last90Days => (since(90 * DAY_MS), None),
        Period::Today => (Some(zone.midnight(now, 0)?), None),
        Period::Yesterday => (Some(zone.midnight(now, -1)?), Some(zone.midnight(now, 0)?)),
        Period::ThisWeek => (Some(zone.calendar_start(Interval::Week, now, 0)?), None),
        Period::ThisMonth => (Some(zone.calendar_start(Interval::Month, now, 0)?), None),
        Period::LastMonth => (
            Some(zone.calendar_start(Interval::Month, now, -1)?),
            Some(zone.calendar_start(Interval::Month, now, 0)?),
        ),
        Period::Custom => (from, to),
    };
    Ok(ResolvedPeriod {
        period,
        range: InstantRange { from, to },
    })
}

/// Parses the totals query: a period (see [`resolve_period`]) and `tz` (default `UTC`).
pub fn parse_totals_query(query: Option<&str>, now: Timestamp) -> Result<TotalsRequest, ApiError> {
    let params = QueryParams::parse(query, &["period", "from", "to", "tz"])?;
    totals_window(&params, now)
}

/// What the leaderboard ranks mentors by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RankBy {
    Clicks,
    Conversions,
}

impl RankBy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Clicks => "clicks",
            Self::Conversions => "conversions",
        }
    }
}

/// A parsed leaderboard request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopRequest {
    pub window: TotalsRequest,
    pub by: RankBy,
    pub limit: u32,
}

/// Parses the leaderboard query: a period and `tz` as the totals take them, `by`
/// (`clicks` or `conversions`, the default) and `limit` (1..100, default 10).
pub fn parse_top_query(query: Option<&str>, now: Timestamp) -> Result<TopRequest, ApiError> {
    let params = QueryParams::parse(query, &["period", "from", "to", "tz", "by", "limit"])?;
    let by = match params.get("by") {
        None | Some("conversions") => RankBy::Conversions,
        Some("clicks") => RankBy::Clicks,
        Some(_) => return Err(ApiError::invalid("by", "must be clicks or conversions")),
    };
    let limit = params
        .get("limit")
        .map(|raw| parse_u32("limit", raw, 1..=MAX_LIMIT))
        .transpose()?
        .unwrap_or(10);
    Ok(TopRequest {
        window: totals_window(&params, now)?,
        by,
        limit,
    })
}

/// The period and zone of a totals-like query.
fn totals_window(params: &QueryParams<'_>, now: Timestamp) -> Result<TotalsRequest, ApiError> {
    let zone = Zone::parse(params.get("tz"))?;
    let resolved = resolve_period(params, &zone, now)?;
    let InstantRange { from, to } = resolved.range;
    let rolling = matches!(
        resolved.period,
        Period::Last24Hours | Period::Last7Days | Period::Last30Days | Period::Last90Days
    );
    let hours = HourRange {
        // A rolling period starts at the hour `now - N` falls in (as ever); any other start
        // rounds down and any end up to the hour.
        from_hour: from.map(Timestamp::hour_bucket),
        to_hour: to.map(|to| to.saturating_add_millis(HOUR_MS - 1).hour_bucket()),
    };
    let whole_hours = |at: Option<Timestamp>| at.is_none_or(|at| at.as_millis() % HOUR_MS == 0);
    let calendar = matches!(
        resolved.period,
        Period::Today
            | Period::Yesterday
            | Period::ThisWeek
            | Period::ThisMonth
            | Period::LastMonth
    );
    let exact =
        (calendar && !rolling && !(whole_hours(from) && whole_hours(to))).then_some(resolved.range);
    Ok(TotalsRequest {
        period: resolved.period,
        hours,
        exact,
        zone,
    })
}

/// A parsed time-series request.
#[derive(Clone, Debug)]
pub struct SeriesRequest {
    pub interval: Interval,
    pub zone: Zone,
    pub period: Period,
    /// `[from, to)`: `from` None for `all_time` (from the mentor's first click); `to` is
    /// `now` unless the period ends earlier.
    pub from: Option<Timestamp>,
    pub to: Timestamp,
}

/// Parses the time-series query: `interval` (`hour`, `day`, `week`, `month`; default
/// `day`), `tz` (default `UTC`) and a period as the totals take it (default `30d`).
pub fn parse_series_query(query: Option<&str>, now: Timestamp) -> Result<SeriesRequest, ApiError> {
    let params = QueryParams::parse(query, &["interval", "period", "from", "to", "tz"])?;
    let interval = Interval::parse(params.get("interval").unwrap_or("day"))?;
    let zone = Zone::parse(params.get("tz"))?;
    let defaulted;
    let params = if params.get("period").is_none()
        && params.get("from").is_none()
        && params.get("to").is_none()
    {
        defaulted = QueryParams::parse(Some("period=30d"), &["period"])?;
        &defaulted
    } else {
        &params
    };
    let resolved = resolve_period(params, &zone, now)?;
    let to = resolved.range.to.unwrap_or(now);
    Ok(SeriesRequest {
        interval,
        zone,
        period: resolved.period,
        from: resolved.range.from,
        to,
    })
}

/// How a store adds up an [`HourRange`]: whole days from the per-day table, the ragged ends
/// from the per-hour table, so any period reads a few dozen rows at most.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BucketPlan {
    /// `[from_hour, to_hour)` ranges to sum from the per-hour table.
    pub hourly: Vec<(i64, i64)>,
    /// `[from_day, to_day)` to sum from the per-day table; `None` ends are unbounded.
    pub daily: Option<(Option<i64>, Option<i64>)>,
}

impl HourRange {
    pub fn plan(self) -> BucketPlan {
        // First whole day at or after `from`, and the day `to` falls in (days since epoch).
        let first_day = self
            .from_hour
            .map(|hour| hour.div_euclid(24) + i64::from(hour.rem_euclid(24) != 0));
        let end_day = self.to_hour.map(|hour| hour.div_euclid(24));
        if let (Some(from), Some(to)) = (self.from_hour, self.to_hour) {
            if from >= to {
                return BucketPlan::default();
            }
            if let (Some(first), Some(end)) = (first_day, end_day)
                && first >= end
            {
                return BucketPlan {
                    hourly: vec![(from, to)],
                    daily: None,
                };
            }
        }
        let mut plan = BucketPlan {
            hourly: Vec::new(),
            daily: Some((first_day, end_day)),
        };
        if let (Some(from), Some(first)) = (self.from_hour, first_day)
            && from < first * 24
        {
            plan.hourly.push((from, first * 24));
        }
        if let (Some(to), Some(end)) = (self.to_hour, end_day)
            && end * 24 < to
        {
            plan.hourly.push((end * 24, to));
        }
        plan
    }
}

/// The Monday (days since the epoch) of the ISO week that holds `day`: 1970-01-01, day 0,
/// was a Thursday.
pub fn week_monday(day: i64) -> i64 {
    day - (day + 3).rem_euclid(7)
}

/// A day range split for a per-week table: the whole ISO weeks in it, and the ragged days
/// around them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WeekSplit {
    /// `[from_monday, to_monday)` (Mondays as days since the epoch; `None` is unbounded):
    /// the weeks to sum from the per-week table.
    pub weekly: Option<(Option<i64>, Option<i64>)>,
    /// `[from_day, to_day)` ranges to sum from the per-day table (at most two).
    pub daily: Vec<(i64, i64)>,
}

/// Splits `[from_day, to_day)` (`None` unbounded) into whole weeks and ragged days, so a
/// leaderboard over 30 days reads about four weeks' rows and a few days' instead of 30
/// days'.
pub fn split_weeks(from_day: Option<i64>, to_day: Option<i64>) -> WeekSplit {
    // First Monday at or after `from`; the Monday of the week `to` falls in.
    let first = from_day.map(|day| {
        let monday = week_monday(day);
        if monday == day { day } else { monday + 7 }
    });
    let end = to_day.map(week_monday);
    if let (Some(from), Some(to)) = (from_day, to_day) {
        if from >= to {
            return WeekSplit::default();
        }
        if let (Some(first), Some(end)) = (first, end)
            && first >= end
        {
            return WeekSplit {
                weekly: None,
                daily: vec![(from, to)],
            };
        }
    }
    let mut split = WeekSplit {
        weekly: Some((first, end)),
        daily: Vec::new(),
    };
    if let (Some(from), Some(first)) = (from_day, first)
        && from < first
    {
        split.daily.push((from, first));
    }
    if let (Some(to), Some(end)) = (to_day, end)
        && end < to
    {
        split.daily.push((end, to));
    }
    split
}

/// `conversions / clicks` rounded to 3 decimals; 0 with no clicks.
pub fn conversion_rate(clicks: u64, conversions: u64) -> f64 {
    if clicks == 0 {
        return 0.0;
    }
    (conversions as f64 / clicks as f64 * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        Timestamp::parse_rfc3339("2026-03-20T14:22:00Z").unwrap()
    }

    #[test]
    fn cursors_read_back_only_as_printed() {
        let cursor = ListCursor {
            occurred_at: Timestamp::from_millis(1_742_480_520_000),
            id: "attr_01JQ3V8W6Y7Z8A9B0C1D2E3F4G".into(),
        };
        assert_eq!(ListCursor::decode(&cursor.encode()).unwrap(), cursor);
        for bad in [
            "c1.1742480520000.attr_01jq3v8w6y7z8a9b0c1d2e3f4g",
            "c1.+1742480520000.attr_01JQ3V8W6Y7Z8A9B0C1D2E3F4G",
            "c1.01742480520000.attr_01JQ3V8W6Y7Z8A9B0C1D2E3F4G",
            "c2.1742480520000.attr_01JQ3V8W6Y7Z8A9B0C1D2E3F4G",
            "c1.1742480520000",
        ] {
            assert!(ListCursor::decode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn list_defaults_and_bounds() {
        let (filter, page) = parse_list_query(None, false).unwrap();
        assert_eq!(filter, AttributionFilter::default());
        assert_eq!(page, PageRequest { page: 1, limit: 20 });
        for (query, field) in [
            ("page=0", "page"),
            ("limit=0", "limit"),
            ("limit=101", "limit"),
            ("page=abc", "page"),
            ("page=-1", "page"),
            ("status=paid", "status"),
            ("type=lead", "type"),
            ("from=yesterday", "from"),
            ("from=2026-03-02T00:00:00Z&to=2026-03-01T00:00:00Z", "to"),
            ("page=1&page=2", "page"),
            ("page=100000&limit=100", "page"),
        ] {
            let error = parse_list_query(Some(query), false).unwrap_err();
            assert_eq!(error.field.as_deref(), Some(field), "{query}");
            assert_eq!(
                error.status(),
                http::StatusCode::UNPROCESSABLE_ENTITY,
                "{query}"
            );
        }
        let error = parse_list_query(Some("mentor_id=usr_1"), true).unwrap_err();
        assert_eq!(error.kind, ErrorKind::UnknownField);
        let (filter, page) = parse_list_query(
            Some("page=2&limit=100&status=confirmed&type=conversion&code=jan-1"),
            false,
        )
        .unwrap();
        assert_eq!(
            page,
            PageRequest {
                page: 2,
                limit: 100
            }
        );
        assert_eq!(filter.code.as_deref(), Some("JAN-1"));
        assert_eq!(filter.status, Some(AttributionStatus::Confirmed));
    }

    #[test]
    fn totals_periods() {
        let all = parse_totals_query(None, now()).unwrap();
        assert_eq!(all.period, Period::AllTime);
        assert_eq!(
            all.hours,
            HourRange {
                from_hour: None,
                to_hour: None
            }
        );
        let day = parse_totals_query(Some("period=24h"), now()).unwrap();
        assert_eq!(day.hours.from_hour, Some(now().hour_bucket() - 24));
        let custom = parse_totals_query(
            Some("from=2026-03-01T00:30:00Z&to=2026-03-02T10:00:01Z"),
            now(),
        )
        .unwrap();
        assert_eq!(custom.period, Period::Custom);
        let hour = |text: &str| Timestamp::parse_rfc3339(text).unwrap().hour_bucket();
        assert_eq!(custom.hours.from_hour, Some(hour("2026-03-01T00:00:00Z")));
        assert_eq!(custom.hours.to_hour, Some(hour("2026-03-02T11:00:00Z")));
        for query in [
            "period=1y",
            "period=7d&from=2026-03-01T00:00:00Z",
            "period=custom",
            "since=1",
        ] {
            assert!(parse_totals_query(Some(query), now()).is_err(), "{query}");
        }
    }

    #[test]
    fn plans_cover_every_hour_exactly_once() {
        let cases = [
            (Some(5), Some(100)),
            (Some(24), Some(48)),
            (Some(3), Some(20)),
            (Some(-30), Some(30)),
            (None, Some(50)),
            (Some(50), None),
            (Some(48), Some(48)),
        ];
        for (from_hour, to_hour) in cases {
            let plan = HourRange { from_hour, to_hour }.plan();
            // Expand the plan over a finite probe range and compare with the range itself.
            for hour in -100..200 {
                let in_range =
                    from_hour.is_none_or(|f| hour >= f) && to_hour.is_none_or(|t| hour < t);
                let hourly = plan
                    .hourly
                    .iter()
                    .filter(|(a, b)| (*a..*b).contains(&hour))
                    .count();
                let daily = plan
                    .daily
                    .iter()
                    .filter(|(a, b)| {
                        let day = hour.div_euclid(24);
                        a.is_none_or(|a| day >= a) && b.is_none_or(|b| day < b)
                    })
                    .count();
                assert_eq!(
                    hourly + daily,
                    usize::from(in_range),
                    "{from_hour:?}..{to_hour:?} hour {hour}"
                );
            }
        }
    }

    #[test]
    fn week_splits_cover_every_day_exactly_once() {
        // Day 4 (1970-01-05) was a Monday.
        assert_eq!(week_monday(4), 4);
        assert_eq!(week_monday(10), 4);
        assert_eq!(week_monday(3), -3);
        assert_eq!(week_monday(-4), -10);
        let ends = [
            None,
            Some(-9),
            Some(-3),
            Some(0),
            Some(4),
            Some(5),
            Some(11),
            Some(18),
            Some(30),
        ];
        for from_day in ends {
            for to_day in ends {
                let split = split_weeks(from_day, to_day);
                if let Some((Some(from), Some(to))) = split.weekly {
                    assert!(from < to, "{from_day:?}..{to_day:?}: {split:?}");
                }
                if let Some((from, to)) = split.weekly {
                    for monday in [from, to].into_iter().flatten() {
                        assert_eq!(week_monday(monday), monday, "{split:?}");
                    }
                }
                for day in -40..60 {
                    let in_range =
                        from_day.is_none_or(|f| day >= f) && to_day.is_none_or(|t| day < t);
                    let weekly = split.weekly.iter().filter(|(a, b)| {
                        let monday = week_monday(day);
                        a.is_none_or(|a| monday >= a) && b.is_none_or(|b| monday < b)
                    });
                    let weekly = weekly.count();
                    let daily = split
                        .daily
                        .iter()
                        .filter(|(a, b)| (*a..*b).contains(&day))
                        .count();
                    assert_eq!(
                        weekly + daily,
                        usize::from(in_range),
                        "{from_day:?}..{to_day:?} day {day}: {split:?}"
                    );
                }
            }
        }
        // 30 days from a Wednesday: three whole weeks and nine ragged days.
        assert_eq!(
            split_weeks(Some(6), Some(36)),
            WeekSplit {
                weekly: Some((Some(11), Some(32))),
                daily: vec![(6, 11), (32, 36)],
            }
        );
    }

    #[test]
    fn rates_round_to_three_decimals() {
        assert_eq!(conversion_rate(0, 0), 0.0);
        assert_eq!(conversion_rate(94, 12), 0.128);
        assert_eq!(conversion_rate(3, 1), 0.333);
        assert_eq!(conversion_rate(3, 2), 0.667);
    }
}
