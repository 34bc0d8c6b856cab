//! The read benchmark of issues 5 and 15: latency of the API's reads, and the throughput
//! of its export, over 10 million attributions stored in ClickHouse 18.16.
//!
//! Run it with `./scripts/bench-reads.sh [--record]`, which installs the services and builds
//! the release binaries this program starts. Steps:
//!
//! 1. ClickHouse 18.16 and tansu are started (the launchers of
//!    `referral_load_tests::services`); `referral-aggregator migrate` creates the tables and
//!    topics.
//! 2. N attributions are generated and written with the **production writer** used as a
//!    library (`plan::plan`, then the `StoreWriter` calls `write_state` and `commit`, as the
//!    aggregator does for every flush), so the rows, the materialized totals and the sorted
//!    copies are exactly what `referral-aggregator run` would store. The history is written
//!    oldest first, as a live system receives it: click flushes of `--flush-rows` clicks
//!    (one `PartitionBatch` per partition, offsets increasing), each followed by flushes of
//!    the confirmations and deletions of those clicks (at most `--commands-per-flush`
//!    commands each: the writer loads what commands refer to with `IN (...)` lists, and
//!    18.16 refuses queries over 256 KiB). Mentors are drawn from a Zipf distribution;
//!    `occurred_at` is spread evenly over the last `--days` days; ids are ULIDs made at the
//!    click's receive time, as the edge makes them. The instants of the last 91 days' live
//!    clicks and conversions are kept per mentor, to check series and leaderboards exactly.
//! 3. Background merges are awaited (bounded by `--merge-wait`), then `referral-api` starts
//!    in production mode (Kafka + ClickHouse, rate limits off) and /readyz is awaited.
//! 4. Each endpoint is measured in turn over HTTP/1.1 keep-alive connections, closed loop:
//!    a warm-up, then `--requests` timed requests on random targets, then
//!    `--unloaded-requests` more on one connection (latency without queueing). Every answer
//!    is checked against what was generated (status, ids, totals, list totals). The
//!    endpoints: get by id, a mentor's list page (top-100 and any mentor), a mentor's totals
//!    (all_time and 30d), the list's first page, and issue 15's: a 90-day daily series, a
//!    48-hour hourly series (from/to: there is no named 48 h period), a 30-day daily series
//!    in Asia/Kolkata (mentors half from the top 100, half uniform) and the 30-day top 10;
//!    a series must have every bucket (local midnights or hours, with the zone's offset)
//!    holding exactly the mentor's generated clicks and conversions, the top 10 exactly the
//!    generated leaderboard.
//! 5. The export (issue 15): `GET /export?format=ndjson`, then `format=csv`, of every live
//!    attribution (or those of the last `--export-days`), each over one connection, the body
//!    read as it streams (rows counted at each newline, never the whole body held), every
//!    row checked (newest first, each strictly after the one before, the count equal to the
//!    generated data); rows/s over the whole transfer, and referral-api's VmRSS sampled
//!    every 100 ms: before, the peak while streaming, and after.
//! 6. Independent checks against ClickHouse (counts over the sorted copy with `FINAL`), and
//!    the server side of each endpoint (the time series excepted: their reads are decided
//!    per request by the reader): the SQL the API runs (built by
//!    `pipeline/src/store/clickhouse/queries.rs`, rendered with `ReadQuery::render`; the
//!    page logic of `reader.rs` replayed) timed over ClickHouse's HTTP interface with
//!    `FORMAT JSON`, whose statistics give the rows read and the server's elapsed time;
//!    18.16 has no usable EXPLAIN and this server no `system.query_log`. The same replay
//!    with a mentor's page started from its daily totals (a reader change to consider), and
//!    optionally on copies of the attribution tables with another `index_granularity`.
//!
//! Prints a Markdown report; `--record` also writes it between `<!-- reads:begin -->` and
//! `<!-- reads:end -->` in docs/BENCHMARKS.md. Figures are measured in this run on this
//! machine.
//!
//! Modules, one job each:
//!
//! - `options`: the flags (clap; the common ones are `referral_load_tests::bench::BenchArgs`);
//! - `data`: the generated history (seeded: mentors under rand_distr's Zipf law, ids,
//!   confirmations, deletions) and the truth the answers are checked against;
//! - `writer`: the production writer driven as a library, flush by flush;
//! - `clickhouse`: what is asked of ClickHouse directly (counts, merges, parts, table copies);
//! - `endpoints`: the endpoints measured, their random targets and answer checks;
//! - `latency`: the closed-loop measurement over HTTP/1.1 keep-alive;
//! - `export`: the streamed exports, their rows checked, the API's memory sampled;
//! - `checks`: totals against direct counts, deleted ids;
//! - `server_side`: the SQL of each endpoint replayed and timed directly;
//! - `report`: the Markdown report.

mod checks;
mod clickhouse;
mod data;
mod endpoints;
mod export;
mod latency;
mod options;
mod report;
mod server_side;
mod writer;

use std::fs;
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use referral_load_tests::bench::{self, Service, record_section, runtime, thousands, wait_http_ok};
use referral_load_tests::services::{ClickHouseServer, TansuBroker, free_port};
use referral_schemas::Timestamp;
use referral_schemas::timestamp::DAY_MS;
use tempfile::TempDir;

use data::Rng;
use endpoints::Endpoint;
use options::Options;
use report::{Report, load_average, per_second};

type Result<T, E = String> = std::result::Result<T, E>;

const DATABASE: &str = "referral";
const PREFIX: &str = "/api/v1/referral-attributions";
/// The goal, per endpoint.
const GOAL_P99: Duration = Duration::from_millis(50);
/// Page size of every list request.
const PAGE_LIMIT: u32 = 20;
/// Mentors counted as heavy: the most popular ranks of the Zipf distribution.
const HEAVY_MENTORS: usize = 100;
/// The aggregator's default attribution window (aggregator/src/config.rs), for the planner.
const WINDOW_MS: i64 = 90 * DAY_MS;

fn main() -> ExitCode {
    let options = Options::parse();
    match run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("bench_reads: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Steps 1 to 6 of the module doc, then the report (and `--hold`).
fn run(options: &Options) -> Result<()> {
    let started = Instant::now();
    let logs = tempfile::Builder::new()
        .prefix("bench-reads-")
        .tempdir()
        .map_err(|error| format!("cannot create a temp dir: {error}"))?;
    eprintln!("starting tansu and ClickHouse 18.16");
    let broker = TansuBroker::start();
    let clickhouse = ClickHouseServer::start();
    bench::migrate(
        &options.binary("referral-aggregator")?,
        &broker,
        &clickhouse,
        DATABASE,
        options.common.partitions,
        logs.path(),
    )?;

    eprintln!(
        "generating {} attributions ({} mentors, Zipf s = {}) with the production writer",
        thousands(options.attributions),
        thousands(options.mentors as u64),
        options.zipf
    );
    let data = runtime()?.block_on(data::generate(options, &clickhouse.http_url()))?;
    eprintln!(
        "written in {:.1} s: {} attributions/s",
        data.load.total.as_secs_f64(),
        thousands(per_second(data.clicks, data.load.total))
    );

    eprintln!("waiting for ClickHouse's background merges");
    let merges = clickhouse::wait_for_merges(&clickhouse, options.merge_wait())?;
    let parts = clickhouse::parts(&clickhouse)?;
    let granularities = clickhouse::COPIED_TABLES
        .iter()
        .map(|(table, _)| *table)
        .chain(["mentor_totals"])
        .map(|table| Ok((table, clickhouse::index_granularity(&clickhouse, table)?)))
        .collect::<Result<Vec<_>>>()?;

    let api_port = free_port();
    let mut api = start_api(options, api_port, &broker, &clickhouse, &logs)?;
    eprintln!("referral-api is ready (production mode); measuring");

    let load_average = load_average();
    let measurement_started = Timestamp::now();
    let mut rng = Rng::new(options.seed ^ 0x5eed);
    let results = latency::measure_all(options, &data, api_port, &mut api, &clickhouse, &mut rng)?;
    eprintln!("streaming the exports");
    let exports = export::measure_all(options, &data, api_port, &mut api, &clickhouse)?;

    eprintln!("checking totals against direct counts in ClickHouse");
    let checks = checks::direct_checks(&clickhouse, api_port, &data, options, &mut rng)?;
    let copied = if options.what_if_granularity > 0 {
        eprintln!(
            "copying the attribution tables with index_granularity = {} (merges stopped)",
            options.what_if_granularity
        );
        Some(clickhouse::copy_with_granularity(
            &clickhouse,
            options.what_if_granularity,
        )?)
    } else {
        None
    };
    eprintln!("timing the API's SQL directly (FORMAT JSON statistics)");
    let server_side = Endpoint::ALL
        .into_iter()
        .filter(|endpoint| server_side::replayed(*endpoint))
        .map(|endpoint| {
            let figures = server_side::figures(&clickhouse, endpoint, &data, options, &mut rng)?;
            Ok((endpoint, figures))
        })
        .collect::<Result<Vec<_>>>()?;
    let report = Report {
        options,
        data: &data,
        merges,
        parts,
        load_average,
        measurement_started,
        results: &results,
        exports: &exports,
        checks: &checks,
        server_side: &server_side,
        copied,
        granularities,
        runtime: started.elapsed(),
    };
    let text = report.render();
    println!("{text}");
    let common = &options.common;
    if common.record {
        record_section(&common.doc, "reads", "Reads (issue 5)", &text)?;
        println!("recorded in {}", common.doc.display());
    }
    hold(options, &logs, &clickhouse, api_port)?;
    api.stop();
    Ok(())
}

/// `referral-api` (release) in production mode on `port`: Kafka + ClickHouse, rate limits
/// off; returned once /readyz answers.
fn start_api(
    options: &Options,
    port: u16,
    broker: &TansuBroker,
    clickhouse: &ClickHouseServer,
    logs: &TempDir,
) -> Result<Service> {
    let mut api = Service::spawn(
        "referral-api",
        &options.binary("referral-api")?,
        &[],
        &[
            ("REFERRAL_LISTEN", format!("127.0.0.1:{port}")),
            ("REFERRAL_KAFKA_BROKERS", broker.address()),
            ("REFERRAL_CLICKHOUSE_URL", clickhouse.http_url()),
            ("REFERRAL_CLICKHOUSE_DATABASE", DATABASE.to_owned()),
            (
                "REFERRAL_DATA_DIR",
                logs.path().join("api-data").display().to_string(),
            ),
            ("REFERRAL_RATE_LIMIT_PER_IP", "0".to_owned()),
            ("REFERRAL_RATE_LIMIT_PER_CODE", "0".to_owned()),
            ("REFERRAL_RATE_LIMIT_GLOBAL", "0".to_owned()),
            ("REFERRAL_MAX_CONNECTIONS_PER_CLIENT", "0".to_owned()),
            // Bound to 127.0.0.1 for the run only; reads measured without a token.
            ("REFERRAL_ALLOW_ANONYMOUS", "true".to_owned()),
        ],
        logs,
    )?;
    wait_http_ok(&mut api, port, "/readyz", Duration::from_secs(60))?;
    Ok(api)
}

/// `--hold`: keeps ClickHouse and the API running for a look by hand, until the time is up
/// or the flag file is removed.
fn hold(
    options: &Options,
    logs: &TempDir,
    clickhouse: &ClickHouseServer,
    api_port: u16,
) -> Result<()> {
    let hold = options.hold();
    if hold.is_zero() {
        return Ok(());
    }
    let flag = logs.path().join("holding");
    fs::write(&flag, b"remove this file to end the wait\n")
        .map_err(|error| format!("cannot write {}: {error}", flag.display()))?;
    eprintln!(
        "holding for {:?} or until {} is removed: ClickHouse {} (database {DATABASE}), \
         API http://127.0.0.1:{api_port}",
        hold,
        flag.display(),
        clickhouse.http_url()
    );
    let deadline = Instant::now() + hold;
    while Instant::now() < deadline && flag.exists() {
        thread::sleep(Duration::from_millis(500));
    }
    Ok(())
}
