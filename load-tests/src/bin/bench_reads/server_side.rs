//! The server side of each endpoint: the SQL the API runs (built by
//! `pipeline/src/store/clickhouse/queries.rs`, rendered with `ReadQuery::render`; the page
//! logic of `reader.rs` replayed) timed over ClickHouse's HTTP interface with `FORMAT JSON`,
//! whose statistics give the rows read and the server's elapsed time; optionally on copies
//! of the attribution tables with another `index_granularity`.

use referral_load_tests::services::ClickHouseServer;
use referral_pipeline::store::clickhouse::queries::{
    self, ATTRIBUTION_COLUMNS, ListTotal, ReadQuery,
};
use referral_schemas::Timestamp;
use referral_schemas::query::{
    AttributionFilter, HourRange, PageRequest, parse_top_query, parse_totals_query,
};
use referral_schemas::timestamp::DAY_MS;
use serde_json::Value;

use crate::clickhouse::COPIED_TABLES;
use crate::data::{Dataset, Rng, mentor_id};
use crate::endpoints::{Endpoint, TOP_QUERY, mixed_mentor};
use crate::options::Options;
use crate::{HEAVY_MENTORS, PAGE_LIMIT, Result};

/// `query` rendered with `columns` (on the copies of `variant`), run with `FORMAT JSON`:
/// rows returned, rows read and server elapsed seconds from the answer's statistics, and
/// the answer.
fn timed_sql(
    clickhouse: &ClickHouseServer,
    query: &ReadQuery,
    columns: &str,
    variant: Variant,
) -> Result<(SqlRun, Value)> {
    let mut sql = query.render(columns);
    if let Some(granularity) = variant.granularity {
        for (table, _) in COPIED_TABLES {
            sql = sql.replace(
                &format!("FROM {table} FINAL"),
                &format!("FROM {table}_g{granularity} FINAL"),
            );
        }
    }
    sql.push_str(" FORMAT JSON");
    let text = crate::clickhouse::query(clickhouse, &sql)?;
    let answer: Value =
        serde_json::from_str(&text).map_err(|error| format!("{sql}: not JSON ({error})"))?;
    let statistics = &answer["statistics"];
    let run = SqlRun {
        rows: answer["rows"].as_u64().unwrap_or(0),
        rows_read: statistics["rows_read"].as_u64().unwrap_or(0),
        elapsed: statistics["elapsed"].as_f64().unwrap_or(0.0),
    };
    Ok((run, answer))
}

/// An integer of a JSON answer (ClickHouse quotes 64-bit integers).
fn json_i64(value: &Value) -> i64 {
    value
        .as_i64()
        .or_else(|| value.as_str().and_then(|text| text.parse().ok()))
        .unwrap_or(0)
}

#[derive(Clone, Copy, Debug, Default)]
pub struct SqlRun {
    rows: u64,
    rows_read: u64,
    elapsed: f64,
}

/// What the server does for one request, summed over its statements.
#[derive(Clone, Copy, Debug, Default)]
pub struct ServerRequest {
    pub statements: u64,
    pub rows_read: u64,
    pub elapsed: f64,
}

impl ServerRequest {
    fn add(&mut self, run: SqlRun) {
        self.statements += 1;
        self.rows_read += run.rows_read;
        self.elapsed += run.elapsed;
    }
}

/// How the server-side SQL is replayed.
#[derive(Clone, Copy, Debug, Default)]
struct Variant {
    /// Read the copies with this `index_granularity` (`None`: the tables, as the API does).
    granularity: Option<u32>,
    /// A mentor's page starts at the day its daily totals put the page's last row (a reader
    /// change to consider), instead of the growing windows.
    /// Kept for the report's what-if column; the reader now always starts such pages
    /// from the daily totals, so it equals "as is".
    guided: bool,
}

/// A list's first page started from its live attributions per day, as
/// `ClickHouseReader::page_from_days` reads the unfiltered list and a mentor's list: one
/// query for the days (newest first; their sum is also `pagination.total`), then the page
/// from the day where the newest `limit` live clicks begin; the unbounded page only if that
/// window falls short.
fn guided_page(
    clickhouse: &ClickHouseServer,
    filter: &AttributionFilter,
    variant: Variant,
    request: &mut ServerRequest,
) -> Result<()> {
    let days = match queries::list_total(filter) {
        ListTotal::Days(query) => query,
        ListTotal::Bounded(_) => return Err("no daily totals for this filter".into()),
    };
    let (run, answer) = timed_sql(clickhouse, &days, "", variant)?;
    request.add(run);
    let mut newest = 0;
    let mut since = None;
    for day in answer["data"].as_array().into_iter().flatten() {
        newest += json_i64(&day["live"]);
        if newest >= i64::from(PAGE_LIMIT) {
            since = Some(Timestamp::from_millis(json_i64(&day["bucket"]) * DAY_MS));
            break;
        }
    }
    let page = PageRequest {
        page: 1,
        limit: PAGE_LIMIT,
    };
    let bounded = AttributionFilter {
        from: since,
        ..filter.clone()
    };
    let (run, _) = timed_sql(
        clickhouse,
        &queries::attribution_page(&bounded, page),
        ATTRIBUTION_COLUMNS,
        variant,
    )?;
    request.add(run);
    if run.rows < u64::from(PAGE_LIMIT) && since.is_some() {
        let (run, _) = timed_sql(
            clickhouse,
            &queries::attribution_page(filter, page),
            ATTRIBUTION_COLUMNS,
            variant,
        )?;
        request.add(run);
    }
    Ok(())
}

#[derive(Clone, Debug)]
enum SqlTarget {
    Id(String),
    Mentor(usize),
    Everything,
}

/// The SQL one request of `endpoint` runs, replayed as `variant`.
fn replay(
    clickhouse: &ClickHouseServer,
    endpoint: Endpoint,
    target: &SqlTarget,
    variant: Variant,
) -> Result<ServerRequest> {
    let mut request = ServerRequest::default();
    match (endpoint, target) {
        (Endpoint::ById, SqlTarget::Id(id)) => {
            let (run, _) = timed_sql(
                clickhouse,
                &queries::attribution(id),
                ATTRIBUTION_COLUMNS,
                variant,
            )?;
            request.add(run);
        }
        (Endpoint::MentorListHeavy | Endpoint::MentorListAny, SqlTarget::Mentor(rank)) => {
            // The reader starts a mentor's page from its daily totals whatever the variant.
            let _ = variant.guided;
            let filter = AttributionFilter {
                mentor_id: Some(mentor_id(*rank)),
                ..AttributionFilter::default()
            };
            guided_page(clickhouse, &filter, variant, &mut request)?;
        }
        (Endpoint::TotalsAllTime | Endpoint::Totals30d, SqlTarget::Mentor(rank)) => {
            let period = (endpoint == Endpoint::Totals30d).then_some("period=30d");
            let hours: HourRange = parse_totals_query(period, Timestamp::now())
                .map_err(|error| format!("{error:?}"))?
                .hours;
            let (run, _) = timed_sql(
                clickhouse,
                &queries::mentor_totals(&mentor_id(*rank), hours),
                "",
                variant,
            )?;
            request.add(run);
        }
        (Endpoint::ListFirstPage, _) => {
            guided_page(
                clickhouse,
                &AttributionFilter::default(),
                variant,
                &mut request,
            )?;
        }
        (Endpoint::Top30d, _) => {
            // A rolling period is whole hours of the totals by time (no exact window); the
            // writer filled the older grains' backfill at connect, as the reader expects.
            let top = parse_top_query(Some(TOP_QUERY), Timestamp::now())
                .map_err(|error| format!("{error:?}"))?;
            let (run, _) = timed_sql(
                clickhouse,
                &queries::top_by_time(top.window.hours, top.by, top.limit),
                "",
                variant,
            )?;
            request.add(run);
        }
        (endpoint, target) => return Err(format!("no replay of {endpoint:?} for {target:?}")),
    }
    Ok(request)
}

/// Whether the SQL of `endpoint` is replayed here: not the time series', whose reads (the
/// hourly totals, and per 15-minute slot the hours a bucket boundary cuts) the reader
/// decides per request rather than one query of `queries.rs`.
pub fn replayed(endpoint: Endpoint) -> bool {
    !matches!(
        endpoint,
        Endpoint::Series90dDaily | Endpoint::Series48hHourly | Endpoint::Series30dKolkata
    )
}

/// Server-side figures of one endpoint: per variant, one [`ServerRequest`] per target.
#[derive(Debug, Default)]
pub struct ServerSide {
    pub as_is: Vec<ServerRequest>,
    pub guided: Vec<ServerRequest>,
    pub copies: Vec<ServerRequest>,
    pub copies_guided: Vec<ServerRequest>,
}

/// The SQL of `endpoint` for `--sql-samples` random targets, timed directly: as the API runs
/// it, and (with `--what-if-granularity`) on the copies, and with the guided page start.
/// The variants take turns per target, so they see the same server conditions.
pub fn figures(
    clickhouse: &ClickHouseServer,
    endpoint: Endpoint,
    data: &Dataset,
    options: &Options,
    rng: &mut Rng,
) -> Result<ServerSide> {
    let live: Vec<&(String, usize, bool)> = data
        .sampled
        .iter()
        .filter(|(_, _, deleted)| !deleted)
        .collect();
    let mentors = options.mentors;
    let copies = (options.what_if_granularity > 0).then_some(options.what_if_granularity);
    let mentor_list = matches!(
        endpoint,
        Endpoint::MentorListHeavy | Endpoint::MentorListAny
    );
    let what_if = matches!(
        endpoint,
        Endpoint::ById
            | Endpoint::MentorListHeavy
            | Endpoint::MentorListAny
            | Endpoint::ListFirstPage
    );
    let mut figures = ServerSide::default();
    for _ in 0..options.sql_samples {
        let target = match endpoint {
            Endpoint::ById => SqlTarget::Id(live[rng.index(live.len())].0.clone()),
            Endpoint::MentorListHeavy => SqlTarget::Mentor(rng.index(HEAVY_MENTORS.min(mentors))),
            Endpoint::MentorListAny => SqlTarget::Mentor(rng.index(mentors)),
            Endpoint::TotalsAllTime | Endpoint::Totals30d => {
                SqlTarget::Mentor(mixed_mentor(rng, mentors))
            }
            Endpoint::ListFirstPage | Endpoint::Top30d => SqlTarget::Everything,
            Endpoint::Series90dDaily | Endpoint::Series48hHourly | Endpoint::Series30dKolkata => {
                return Err(format!("the SQL of {endpoint:?} is not replayed"));
            }
        };
        let as_is = Variant::default();
        figures
            .as_is
            .push(replay(clickhouse, endpoint, &target, as_is)?);
        if mentor_list {
            let guided = Variant {
                guided: true,
                ..as_is
            };
            figures
                .guided
                .push(replay(clickhouse, endpoint, &target, guided)?);
        }
        if let (true, Some(granularity)) = (what_if, copies) {
            let on_copies = Variant {
                granularity: Some(granularity),
                guided: false,
            };
            figures
                .copies
                .push(replay(clickhouse, endpoint, &target, on_copies)?);
            if mentor_list {
                let both = Variant {
                    guided: true,
                    ..on_copies
                };
                figures
                    .copies_guided
                    .push(replay(clickhouse, endpoint, &target, both)?);
            }
        }
    }
    Ok(figures)
}
