//! The read benchmark of issue 5: latency of the API's reads over 10 million attributions
//! stored in ClickHouse 18.16.
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
//!    click's receive time, as the edge makes them.
//! 3. Background merges are awaited (bounded by `--merge-wait`), then `referral-api` starts
//!    in production mode (Kafka + ClickHouse, rate limits off) and /readyz is awaited.
//! 4. Each endpoint is measured in turn over HTTP/1.1 keep-alive connections, closed loop:
//!    a warm-up, then `--requests` timed requests on random targets, then
//!    `--unloaded-requests` more on one connection (latency without queueing). Every answer
//!    is checked against what was generated (status, ids, totals, list totals).
//! 5. Independent checks against ClickHouse (counts over the sorted copy with `FINAL`), and
//!    the server side of each endpoint: the SQL the API runs (built by
//!    `aggregator/src/store/clickhouse/queries.rs`, rendered with `ReadQuery::render`; the
//!    page logic of `reader.rs` replayed) timed over ClickHouse's HTTP interface with
//!    `FORMAT JSON`, whose statistics give the rows read and the server's elapsed time;
//!    18.16 has no usable EXPLAIN and this server no `system.query_log`. The same replay
//!    with a mentor's page started from its daily totals (a reader change to consider), and
//!    optionally on copies of the attribution tables with another `index_granularity`.
//!
//! Prints a Markdown report; `--record` also writes it between `<!-- reads:begin -->` and
//! `<!-- reads:end -->` in docs/BENCHMARKS.md. Figures are measured in this run on this
//! machine: compare them with the goal and with each other, not across machines.

use std::fmt::Write as _;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, header};
use hyper_util::rt::TokioIo;
use referral_load_tests::bench::{
    CpuWindow, Service, cpu_line, http_get, pid_text, quantile, record_section, runtime, thousands,
    wait_http_ok,
};
use referral_load_tests::services::{ClickHouseServer, TansuBroker, free_port};
use referral_pipeline::plan::{self, PartitionBatch, References};
use referral_pipeline::store::StoreWriter;
use referral_pipeline::store::clickhouse::ClickHouseSettings;
use referral_pipeline::store::clickhouse::queries::{
    self, ATTRIBUTION_COLUMNS, ListTotal, ReadQuery,
};
use referral_pipeline::store::clickhouse::sink::ClickHouseSink;
use referral_schemas::Timestamp;
use referral_schemas::messages::{
    AssignCode, ClickEvent, ConfirmConversion, DeleteAttribution, LogEvent,
};
use referral_schemas::query::{AttributionFilter, HourRange, PageRequest, parse_totals_query};
use referral_schemas::timestamp::{DAY_MS, HOUR_MS};
use serde_json::Value;
use tempfile::TempDir;
use ulid::Ulid;

type Result<T, E = String> = std::result::Result<T, E>;

const TOPIC: &str = "referral-events";
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
/// The list size up to which the API reads a page without time windows: a copy of
/// `WINDOWLESS_MAX` in aggregator/src/store/clickhouse/reader.rs, shown in the report.
const WINDOWLESS_MAX: u64 = 20_000;
/// How many ids of the generated clicks are kept as get-by-id targets (at most).
const SAMPLED_IDS: u64 = 100_000;
/// Mentors whose totals are compared with a direct count in ClickHouse.
const CHECKED_MENTORS: usize = 20;
/// Merges must stay at zero this long before the data counts as settled.
const MERGES_QUIET: Duration = Duration::from_secs(5);

const USAGE: &str = "\
usage: bench_reads [--record] [options]

  --record                 write the report into docs/BENCHMARKS.md (see --doc)
  data:
  --attributions N         attributions generated (default 10000000)
  --mentors N              mentors (default 10000)
  --zipf S                 Zipf exponent of the mentors' popularity (default 1.0)
  --days N                 occurred_at spread evenly over the last N days (default 400)
  --confirmed-pct P        share of clicks confirmed, in percent (default 10)
  --deleted-pct P          share of clicks deleted, in percent (default 1)
  --flush-rows N           clicks per writer flush (default 200000)
  --commands-per-flush N   commands per writer flush at most (default 5000)
  --partitions N           partitions of the topic; clicks are spread over them by mentor
                           (default 6)
  --seed N                 seed of the generator (default 5)
  --merge-wait SECONDS     longest wait for ClickHouse's background merges after the load
                           (default 900)
  measurement:
  --requests N             timed requests per endpoint (default 2000)
  --warm-up N              untimed requests per endpoint before them (default 200)
  --connections N          keep-alive connections, closed loop (default 4)
  --sql-samples N          targets per endpoint whose SQL is timed directly (default 50)
  --what-if-granularity N  after the measurement, also time that SQL on copies of the
                           attribution tables with index_granularity = N (default 0: skip)
  --unloaded-requests N    timed requests per endpoint again on one connection, for the
                           latency without queueing (default 500; 0: skip)
  --hold SECONDS           keep ClickHouse and the API running this long after the report
                           (their URLs are printed, and a file that ends the wait when
                           removed), to look into the data by hand
  --bin-dir DIR            where referral-aggregator and referral-api are (default: this
                           program's directory)
  --doc FILE               the file --record writes (default docs/BENCHMARKS.md)";

#[derive(Clone, Debug)]
struct Options {
    record: bool,
    attributions: u64,
    mentors: usize,
    zipf: f64,
    days: i64,
    confirmed: f64,
    deleted: f64,
    flush_rows: u64,
    commands_per_flush: usize,
    partitions: i32,
    seed: u64,
    merge_wait: Duration,
    requests: usize,
    warm_up: usize,
    connections: usize,
    sql_samples: usize,
    what_if_granularity: u32,
    unloaded_requests: usize,
    hold: Duration,
    bin_dir: PathBuf,
    doc: PathBuf,
}

impl Options {
    fn parse() -> Result<Self> {
        let bin_dir = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("target/release"));
        let mut options = Self {
            record: false,
            attributions: 10_000_000,
            mentors: 10_000,
            zipf: 1.0,
            days: 400,
            confirmed: 0.10,
            deleted: 0.01,
            flush_rows: 200_000,
            commands_per_flush: 5_000,
            partitions: 6,
            seed: 5,
            merge_wait: Duration::from_secs(900),
            requests: 2_000,
            warm_up: 200,
            connections: 4,
            sql_samples: 50,
            what_if_granularity: 0,
            unloaded_requests: 500,
            hold: Duration::ZERO,
            bin_dir,
            doc: PathBuf::from("docs/BENCHMARKS.md"),
        };
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            if flag == "--record" {
                options.record = true;
                continue;
            }
            if flag == "--help" || flag == "-h" {
                return Err(USAGE.to_owned());
            }
            let value = args
                .next()
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
            let number = || -> Result<u64> {
                value
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("{flag} takes a positive integer, not {value:?}"))
            };
            let share = || -> Result<f64> {
                value
                    .parse::<f64>()
                    .ok()
                    .filter(|p| (0.0..=100.0).contains(p))
                    .map(|p| p / 100.0)
                    .ok_or_else(|| format!("{flag} takes a percentage, not {value:?}"))
            };
            let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
            match flag.as_str() {
                "--attributions" => options.attributions = number()?,
                "--mentors" => options.mentors = size(number()?),
                "--zipf" => {
                    options.zipf = value
                        .parse::<f64>()
                        .ok()
                        .filter(|s| *s >= 0.0)
                        .ok_or_else(|| format!("--zipf takes a number >= 0, not {value:?}"))?;
                }
                "--days" => {
                    options.days =
                        i64::try_from(number()?).map_err(|_| "--days is too large".to_owned())?;
                }
                "--confirmed-pct" => options.confirmed = share()?,
                "--deleted-pct" => options.deleted = share()?,
                "--flush-rows" => options.flush_rows = number()?,
                "--commands-per-flush" => options.commands_per_flush = size(number()?),
                "--partitions" => {
                    options.partitions = i32::try_from(number()?)
                        .map_err(|_| "--partitions is too large".to_owned())?;
                }
                "--seed" => options.seed = number()?,
                "--merge-wait" => options.merge_wait = Duration::from_secs(number()?),
                "--requests" => options.requests = size(number()?),
                "--warm-up" => {
                    options.warm_up = value
                        .parse()
                        .map_err(|_| format!("--warm-up takes a number, not {value:?}"))?;
                }
                "--connections" => options.connections = size(number()?),
                "--sql-samples" => options.sql_samples = size(number()?),
                "--what-if-granularity" => {
                    options.what_if_granularity = value.parse().map_err(|_| {
                        format!("--what-if-granularity takes a number, not {value:?}")
                    })?;
                }
                "--unloaded-requests" => {
                    options.unloaded_requests = value.parse().map_err(|_| {
                        format!("--unloaded-requests takes a number, not {value:?}")
                    })?;
                }
                "--hold" => options.hold = Duration::from_secs(number()?),
                "--bin-dir" => options.bin_dir = PathBuf::from(value),
                "--doc" => options.doc = PathBuf::from(value),
                _ => return Err(format!("unknown option {flag}\n{USAGE}")),
            }
        }
        Ok(options)
    }

    fn binary(&self, name: &str) -> Result<PathBuf> {
        let path = self.bin_dir.join(name);
        if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "{} not found: build it first (cargo build --release -p referral-aggregator \
                 -p referral-api -p referral-load-tests --bins) or pass --bin-dir",
                path.display()
            ))
        }
    }

    /// The flags that differ from the defaults, as given (for the report).
    fn command_line() -> String {
        let mut line = String::from("./scripts/bench-reads.sh");
        for arg in std::env::args().skip(1) {
            line.push(' ');
            line.push_str(&arg);
        }
        line
    }
}

fn main() -> ExitCode {
    let options = match Options::parse() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    match run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("bench_reads: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(options: &Options) -> Result<()> {
    let started = Instant::now();
    let logs = tempfile::Builder::new()
        .prefix("bench-reads-")
        .tempdir()
        .map_err(|error| format!("cannot create a temp dir: {error}"))?;
    eprintln!("starting tansu and ClickHouse 18.16");
    let broker = TansuBroker::start();
    let clickhouse = ClickHouseServer::start();
    migrate(options, &broker, &clickhouse, &logs)?;

    eprintln!(
        "generating {} attributions ({} mentors, Zipf s = {}) with the production writer",
        thousands(options.attributions),
        thousands(options.mentors as u64),
        options.zipf
    );
    let data = runtime()?.block_on(generate(options, &clickhouse.http_url()))?;
    eprintln!(
        "written in {:.1} s: {} attributions/s",
        data.load.total.as_secs_f64(),
        thousands(per_second(data.clicks, data.load.total))
    );

    eprintln!("waiting for ClickHouse's background merges");
    let merges = wait_for_merges(&clickhouse, options.merge_wait)?;
    let parts = parts(&clickhouse)?;
    let granularities = COPIED_TABLES
        .iter()
        .map(|(table, _)| *table)
        .chain(["mentor_totals"])
        .map(|table| Ok((table, index_granularity(&clickhouse, table)?)))
        .collect::<Result<Vec<_>>>()?;

    let api_port = free_port();
    let mut api = Service::spawn(
        "referral-api",
        &options.binary("referral-api")?,
        &[],
        &[
            ("REFERRAL_LISTEN", format!("127.0.0.1:{api_port}")),
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
        ],
        &logs,
    )?;
    wait_http_ok(&mut api, api_port, "/readyz", Duration::from_secs(60))?;
    eprintln!("referral-api is ready (production mode); measuring");

    let load_average = load_average();
    let measurement_started = Timestamp::now();
    let mut rng = Rng::new(options.seed ^ 0x5eed);
    let mut results = Vec::new();
    for endpoint in Endpoint::ALL {
        let targets = targets(endpoint, &data, options, &mut rng)?;
        let cpu = CpuWindow::start(&[
            ("ClickHouse", pid_text(clickhouse.pid())),
            ("referral-api", pid_text(api.pid())),
            ("bench client", "self".to_owned()),
        ]);
        let mut phase = runtime()?.block_on(measure(
            api_port,
            targets,
            options.connections,
            options.warm_up,
        ))?;
        phase.cpu = cpu.finish();
        eprintln!("{}: {}", endpoint.label(), phase.summary());
        let unloaded = if options.unloaded_requests > 0 {
            let single = Options {
                warm_up: 0,
                requests: options.unloaded_requests,
                ..options.clone()
            };
            let phase = runtime()?.block_on(measure(
                api_port,
                self::targets(endpoint, &data, &single, &mut rng)?,
                1,
                0,
            ))?;
            eprintln!("  one connection: {}", phase.summary());
            Some(phase)
        } else {
            None
        };
        results.push((endpoint, phase, unloaded));
        api.check_alive()?;
    }

    eprintln!("checking totals against direct counts in ClickHouse");
    let checks = direct_checks(&clickhouse, api_port, &data, options, &mut rng)?;
    let copied = if options.what_if_granularity > 0 {
        eprintln!(
            "copying the attribution tables with index_granularity = {} (merges stopped)",
            options.what_if_granularity
        );
        Some(copy_with_granularity(
            &clickhouse,
            options.what_if_granularity,
        )?)
    } else {
        None
    };
    eprintln!("timing the API's SQL directly (FORMAT JSON statistics)");
    let mut server_side = Vec::new();
    for endpoint in Endpoint::ALL {
        server_side.push((
            endpoint,
            server_side_figures(&clickhouse, endpoint, &data, options, &mut rng)?,
        ));
    }
    let report = Report {
        options,
        data: &data,
        merges,
        parts,
        load_average,
        measurement_started,
        results: &results,
        checks: &checks,
        server_side: &server_side,
        copied,
        granularities,
        runtime: started.elapsed(),
    };
    let text = report.render();
    println!("{text}");
    if options.record {
        record_section(&options.doc, "reads", "Reads (issue 5)", &text)?;
        println!("recorded in {}", options.doc.display());
    }
    if !options.hold.is_zero() {
        let flag = logs.path().join("holding");
        fs::write(&flag, b"remove this file to end the wait\n")
            .map_err(|error| format!("cannot write {}: {error}", flag.display()))?;
        eprintln!(
            "holding for {:?} or until {} is removed: ClickHouse {} (database {DATABASE}), \
             API http://127.0.0.1:{api_port}",
            options.hold,
            flag.display(),
            clickhouse.http_url()
        );
        let deadline = Instant::now() + options.hold;
        while Instant::now() < deadline && flag.exists() {
            thread::sleep(Duration::from_millis(500));
        }
    }
    api.stop();
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Child processes, CPU accounting, small HTTP helpers (as in bench_aggregator.rs).

/// The 1, 5 and 15 minute load averages, as /proc/loadavg prints them.
fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" / ")
        })
        .unwrap_or_else(|| "?".to_owned())
}

fn migrate(
    options: &Options,
    broker: &TansuBroker,
    clickhouse: &ClickHouseServer,
    logs: &TempDir,
) -> Result<()> {
    Service::spawn(
        "referral-aggregator migrate",
        &options.binary("referral-aggregator")?,
        &["migrate"],
        &[
            ("REFERRAL_KAFKA_BROKERS", broker.address()),
            ("REFERRAL_CLICKHOUSE_URL", clickhouse.http_url()),
            ("REFERRAL_CLICKHOUSE_DATABASE", DATABASE.to_owned()),
            ("REFERRAL_KAFKA_PARTITIONS", options.partitions.to_string()),
        ],
        logs,
    )?
    .wait_success(Duration::from_secs(60))
}

// ---------------------------------------------------------------------------------------
// ClickHouse helpers.

fn query(clickhouse: &ClickHouseServer, sql: &str) -> Result<String> {
    clickhouse.try_query_with(sql, &[("database", DATABASE)])
}

fn numbers(clickhouse: &ClickHouseServer, sql: &str) -> Result<Vec<i64>> {
    let text = query(clickhouse, sql)?;
    text.split_whitespace()
        .map(|field| {
            field
                .parse::<i64>()
                .map_err(|_| format!("{sql} answered {text:?}"))
        })
        .collect()
}

/// Waits until no merge has run for [`MERGES_QUIET`], at most `within`: (time waited,
/// whether it settled).
fn wait_for_merges(clickhouse: &ClickHouseServer, within: Duration) -> Result<(Duration, bool)> {
    let started = Instant::now();
    let mut quiet_since: Option<Instant> = None;
    loop {
        let running = numbers(clickhouse, "SELECT count() FROM system.merges")?;
        if running.first().copied().unwrap_or(0) == 0 {
            let since = *quiet_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= MERGES_QUIET {
                return Ok((started.elapsed(), true));
            }
        } else {
            quiet_since = None;
        }
        if started.elapsed() > within {
            return Ok((started.elapsed(), false));
        }
        thread::sleep(Duration::from_millis(500));
    }
}

/// Active parts, rows and bytes on disk per table of the database.
fn parts(clickhouse: &ClickHouseServer) -> Result<Vec<(String, u64, u64, u64)>> {
    let text = query(
        clickhouse,
        "SELECT table, count(), sum(rows), sum(bytes) FROM system.parts \
         WHERE active AND database = 'referral' GROUP BY table ORDER BY table",
    )?;
    text.lines()
        .map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            let number = |index: usize| -> Result<u64> {
                fields
                    .get(index)
                    .and_then(|field| field.parse().ok())
                    .ok_or_else(|| format!("unexpected system.parts line {line:?}"))
            };
            Ok((fields[0].to_owned(), number(1)?, number(2)?, number(3)?))
        })
        .collect()
}

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
    let text = self::query(clickhouse, &sql)?;
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

/// The tables read with `FINAL`, and their sort keys.
const COPIED_TABLES: [(&str, &str); 3] = [
    ("attributions", "id"),
    ("attributions_by_mentor", "(mentor_id, occurred_at, id)"),
    ("attributions_by_time", "(occurred_at, id)"),
];

/// Copies of [`COPIED_TABLES`] with another `index_granularity`, part for part (each active
/// part inserted as one block, so one part; merges stopped first), so the copies have the
/// same part layout. Returns the time it took.
fn copy_with_granularity(clickhouse: &ClickHouseServer, granularity: u32) -> Result<Duration> {
    let started = Instant::now();
    query(clickhouse, "SYSTEM STOP MERGES")?;
    for (table, key) in COPIED_TABLES {
        let copy = format!("{table}_g{granularity}");
        query(
            clickhouse,
            &format!(
                "CREATE TABLE {copy} AS {table} ENGINE = ReplacingMergeTree(version) \
                 ORDER BY {key} SETTINGS index_granularity = {granularity}"
            ),
        )?;
        let parts = query(
            clickhouse,
            &format!(
                "SELECT name FROM system.parts WHERE active AND database = '{DATABASE}' \
                 AND table = '{table}' ORDER BY name"
            ),
        )?;
        for part in parts.lines() {
            clickhouse.try_query_with(
                &format!("INSERT INTO {copy} SELECT * FROM {table} WHERE _part = '{part}'"),
                &[
                    ("database", DATABASE),
                    ("max_insert_block_size", "1000000000"),
                    ("min_insert_block_size_rows", "1000000000"),
                    ("min_insert_block_size_bytes", "1000000000000"),
                ],
            )?;
        }
        let counts = numbers(
            clickhouse,
            &format!(
                "SELECT countIf(table = '{table}'), countIf(table = '{copy}') FROM system.parts \
                 WHERE active AND database = '{DATABASE}'"
            ),
        )?;
        if counts.first() != counts.get(1) {
            return Err(format!(
                "{copy} has {:?} parts, {table} {:?}: the layouts differ",
                counts.get(1),
                counts.first()
            ));
        }
    }
    Ok(started.elapsed())
}

#[derive(Clone, Copy, Debug, Default)]
struct SqlRun {
    rows: u64,
    rows_read: u64,
    elapsed: f64,
}

// ---------------------------------------------------------------------------------------
// Generation.

/// SplitMix64: small, fast, and deterministic for a seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    fn index(&mut self, len: usize) -> usize {
        usize::try_from(self.below(len as u64)).unwrap_or(0)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1_u64 << 53) as f64
    }

    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// An id as the edge makes it: a ULID with the given creation time.
    fn id(&mut self, prefix: &str, at_ms: i64) -> String {
        let random = (u128::from(self.next_u64()) << 64 | u128::from(self.next_u64()))
            & ((1_u128 << 80) - 1);
        let ulid = Ulid::from_parts(u64::try_from(at_ms).unwrap_or(0), random);
        format!("{prefix}{ulid}")
    }
}

/// Ranks `0..n` drawn with probability proportional to `1 / (rank + 1)^s`.
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, s: f64) -> Self {
        let mut cdf = Vec::with_capacity(n);
        let mut sum = 0.0;
        for rank in 0..n {
            sum += 1.0 / ((rank + 1) as f64).powf(s);
            cdf.push(sum);
        }
        for value in &mut cdf {
            *value /= sum;
        }
        Self { cdf }
    }

    fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.unit();
        self.cdf
            .partition_point(|c| *c <= u)
            .min(self.cdf.len() - 1)
    }
}

fn mentor_id(rank: usize) -> String {
    format!("usr_bench_{rank:05}")
}

fn mentor_code(rank: usize) -> String {
    format!("BENCH-{rank:05}")
}

/// What was generated: the truth the answers are checked against.
#[derive(Debug, Default)]
struct Dataset {
    clicks: u64,
    confirmed: u64,
    deleted: u64,
    /// Live clicks and live conversions per mentor rank.
    mentor_clicks: Vec<u64>,
    mentor_conversions: Vec<u64>,
    live: u64,
    /// The first attribution of the unfiltered list: (occurred_at, id) of the newest live.
    newest_live: (i64, String),
    /// Every k-th click: (id, mentor rank, deleted).
    sampled: Vec<(String, usize, bool)>,
    load: LoadStats,
}

#[derive(Debug, Default)]
struct LoadStats {
    total: Duration,
    click_flushes: u64,
    click_time: Duration,
    command_flushes: u64,
    commands: u64,
    command_time: Duration,
    /// Commands the writer rejected (none expected: the generator only issues valid ones).
    rejected: u64,
}

/// The production writer, driven as the consumer drives it, flush by flush.
struct Writer {
    sink: ClickHouseSink,
    /// The next offset of each partition.
    next: Vec<i64>,
    flushes: u64,
}

impl Writer {
    /// One flush: `events` per partition, in log order. Returns the rejected commands.
    async fn flush(&mut self, events: Vec<(i32, Vec<LogEvent>)>) -> Result<u64> {
        let mut batches = Vec::with_capacity(events.len());
        for (partition, events) in events {
            if events.is_empty() {
                continue;
            }
            let slot = usize::try_from(partition).unwrap_or(0);
            let first = self.next[slot];
            let end = first + events.len() as i64;
            self.next[slot] = end;
            batches.push(PartitionBatch {
                topic: TOPIC.to_owned(),
                partition,
                events: (first..).zip(events).collect(),
                end,
            });
        }
        let keys: Vec<(String, i32)> = batches
            .iter()
            .map(|batch| (batch.topic.clone(), batch.partition))
            .collect();
        let store = |error: referral_pipeline::store::StoreError| error.to_string();
        let checkpoints = self.sink.checkpoints(&keys).await.map_err(store)?;
        let known = self
            .sink
            .load(&References::of(batches.iter().flat_map(|batch| {
                batch.events.iter().map(|(_, event)| event)
            })))
            .await
            .map_err(store)?;
        let plan = plan::plan(&batches, &checkpoints, known, WINDOW_MS, Timestamp::now());
        self.sink.write_state(&plan).await.map_err(store)?;
        self.flushes += 1;
        self.sink
            .commit(&plan, &format!("bench-reads-{}", self.flushes))
            .await
            .map_err(store)?;
        Ok(plan
            .outcomes
            .iter()
            .filter(|outcome| **outcome != "applied")
            .count() as u64)
    }

    /// Commands in flushes of at most `per_flush`, on partition 0 (commands share one key).
    async fn flush_commands(
        &mut self,
        commands: Vec<LogEvent>,
        per_flush: usize,
        stats: &mut LoadStats,
    ) -> Result<()> {
        let mut commands = commands.into_iter().peekable();
        while commands.peek().is_some() {
            let chunk: Vec<LogEvent> = commands.by_ref().take(per_flush).collect();
            let started = Instant::now();
            stats.commands += chunk.len() as u64;
            stats.rejected += self.flush(vec![(0, chunk)]).await?;
            stats.command_flushes += 1;
            stats.command_time += started.elapsed();
        }
        Ok(())
    }
}

async fn generate(options: &Options, clickhouse_url: &str) -> Result<Dataset> {
    let settings = ClickHouseSettings {
        url: clickhouse_url.to_owned(),
        database: DATABASE.to_owned(),
        user: "default".to_owned(),
        password: None,
        insert_timeout: Duration::from_secs(300),
    };
    let sink = ClickHouseSink::connect(&settings)
        .await
        .map_err(|error| format!("cannot connect to ClickHouse: {error}"))?;
    let mut writer = Writer {
        sink,
        next: vec![0; usize::try_from(options.partitions).unwrap_or(1)],
        flushes: 0,
    };
    let started = Instant::now();
    let mut rng = Rng::new(options.seed);
    let zipf = Zipf::new(options.mentors, options.zipf);
    let now = Timestamp::now().as_millis() - 60_000;
    let span = options.days * DAY_MS;
    let first = now - span;
    let n = options.attributions;
    let spacing = (span / i64::try_from(n).unwrap_or(i64::MAX)).max(1);
    let sample_every = (n / SAMPLED_IDS).max(1);
    let mut data = Dataset {
        mentor_clicks: vec![0; options.mentors],
        mentor_conversions: vec![0; options.mentors],
        ..Dataset::default()
    };
    let mut stats = LoadStats::default();

    // The codes the clicks use, assigned before the history starts (as the API would).
    let codes: Vec<LogEvent> = (0..options.mentors)
        .map(|rank| {
            LogEvent::AssignCode(AssignCode {
                command_id: rng.id("cmd_", first - DAY_MS),
                code: mentor_code(rank),
                mentor_id: mentor_id(rank),
                issued_at: Timestamp::from_millis(first - DAY_MS),
            })
        })
        .collect();
    writer
        .flush_commands(codes, options.commands_per_flush, &mut stats)
        .await?;

    let mut members = 0_u64;
    let mut index = 0_u64;
    let partitions = usize::try_from(options.partitions).unwrap_or(1);
    while index < n {
        let count = options.flush_rows.min(n - index);
        let mut per_partition: Vec<Vec<LogEvent>> = vec![Vec::new(); partitions];
        let mut commands = Vec::new();
        for i in index..index + count {
            let step =
                i64::try_from(i128::from(i) * i128::from(span) / i128::from(n)).unwrap_or(span);
            let occurred = (first + step + rng.below(spacing as u64) as i64).min(now);
            let received = (occurred + rng.below(2_000) as i64).min(now);
            let rank = zipf.sample(&mut rng);
            let id = rng.id("attr_", received);
            let confirmed = rng.chance(options.confirmed);
            let deleted = rng.chance(options.deleted);
            if confirmed {
                let confirmed_at =
                    (occurred + 60_000 + rng.below(7 * DAY_MS as u64) as i64).min(now);
                members += 1;
                commands.push(LogEvent::ConfirmConversion(ConfirmConversion {
                    command_id: rng.id("cmd_", confirmed_at),
                    attribution_id: id.clone(),
                    code: mentor_code(rank),
                    new_member_id: format!("usr_member_{members:09}"),
                    confirmed_at: Timestamp::from_millis(confirmed_at),
                    issued_at: Timestamp::from_millis(confirmed_at),
                }));
                data.confirmed += 1;
            }
            if deleted {
                let issued = (occurred + 60_000 + rng.below(30 * DAY_MS as u64) as i64).min(now);
                commands.push(LogEvent::DeleteAttribution(DeleteAttribution {
                    command_id: rng.id("cmd_", issued),
                    attribution_id: id.clone(),
                    issued_at: Timestamp::from_millis(issued),
                }));
                data.deleted += 1;
            } else {
                data.live += 1;
                data.mentor_clicks[rank] += 1;
                if confirmed {
                    data.mentor_conversions[rank] += 1;
                }
                if (occurred, id.as_str()) > (data.newest_live.0, data.newest_live.1.as_str()) {
                    data.newest_live = (occurred, id.clone());
                }
            }
            if i % sample_every == 0 {
                data.sampled.push((id.clone(), rank, deleted));
            }
            let user_agent = match i % 4 {
                0 => None,
                1 => Some("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X)".to_owned()),
                2 => Some("Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/126.0".to_owned()),
                _ => Some("Mozilla/5.0 (Linux; Android 14) Mobile Safari/537.36".to_owned()),
            };
            per_partition[rank % partitions].push(LogEvent::Click(ClickEvent {
                attribution_id: id,
                code: mentor_code(rank),
                mentor_id: mentor_id(rank),
                ip_address: format!("198.51.{}.{}", i % 256, (i / 256) % 256),
                user_agent,
                referrer_url: (i % 3 == 0).then(|| "https://instagram.com".to_owned()),
                occurred_at: Timestamp::from_millis(occurred),
                received_at: Timestamp::from_millis(received),
            }));
        }
        data.clicks += count;
        let flush_started = Instant::now();
        stats.rejected += writer
            .flush(
                per_partition
                    .into_iter()
                    .enumerate()
                    .map(|(partition, events)| (i32::try_from(partition).unwrap_or(0), events))
                    .collect(),
            )
            .await?;
        stats.click_flushes += 1;
        stats.click_time += flush_started.elapsed();
        writer
            .flush_commands(commands, options.commands_per_flush, &mut stats)
            .await?;
        index += count;
        if stats.click_flushes.is_multiple_of(10) || index == n {
            eprintln!(
                "  {} of {} clicks, {} commands written ({:.0} s)",
                thousands(index),
                thousands(n),
                thousands(stats.commands),
                started.elapsed().as_secs_f64()
            );
        }
    }
    stats.total = started.elapsed();
    if stats.rejected > 0 {
        return Err(format!(
            "the writer rejected {} generated commands: the expected answers would be wrong",
            stats.rejected
        ));
    }
    data.load = stats;
    Ok(data)
}

// ---------------------------------------------------------------------------------------
// Measurement over HTTP.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    ById,
    MentorListHeavy,
    MentorListAny,
    TotalsAllTime,
    Totals30d,
    ListFirstPage,
}

impl Endpoint {
    const ALL: [Self; 6] = [
        Self::ById,
        Self::MentorListHeavy,
        Self::MentorListAny,
        Self::TotalsAllTime,
        Self::Totals30d,
        Self::ListFirstPage,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::ById => "GET /:id (random live ids)",
            Self::MentorListHeavy => "GET /mentor/:id?page=1&limit=20 (top-100 mentors)",
            Self::MentorListAny => "GET /mentor/:id?page=1&limit=20 (any mentor, uniform)",
            Self::TotalsAllTime => "GET /mentor/:id/total (all_time)",
            Self::Totals30d => "GET /mentor/:id/total?period=30d",
            Self::ListFirstPage => "GET /?page=1&limit=20 (list, first page)",
        }
    }
}

/// What a correct answer holds.
#[derive(Clone, Debug)]
enum Check {
    Attribution(String),
    MentorList { mentor: String, total: u64 },
    Totals { clicks: u64, conversions: u64 },
    Period(&'static str),
    List { total: u64, newest: String },
}

struct Target {
    path: String,
    check: Check,
}

/// A mentor rank: half from the heavy head, half uniform over all (totals endpoints).
fn mixed_mentor(rng: &mut Rng, mentors: usize) -> usize {
    if rng.chance(0.5) {
        rng.index(HEAVY_MENTORS.min(mentors))
    } else {
        rng.index(mentors)
    }
}

fn targets(
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
        })
        .collect())
}

/// Why an answer is wrong, or `None` when it is what was generated.
fn wrong(check: &Check, status: u16, body: &[u8]) -> Option<String> {
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
    }
}

#[derive(Debug, Default)]
struct Phase {
    /// Latencies of the timed requests, in microseconds.
    latencies_us: Vec<u64>,
    /// Timed requests answered per second (first timed send to last timed answer).
    per_second: f64,
    errors: u64,
    wrong: u64,
    first_wrong: Option<String>,
    cpu: Vec<(&'static str, f64)>,
}

impl Phase {
    fn sorted(&self) -> Vec<u64> {
        let mut sorted = self.latencies_us.clone();
        sorted.sort_unstable();
        sorted
    }

    fn p99(&self) -> Option<Duration> {
        quantile(&self.sorted(), 0.99).map(Duration::from_micros)
    }

    fn summary(&self) -> String {
        let sorted = self.sorted();
        format!(
            "p50 {} / p99 {} / max {} ms, {:.0} req/s, {} wrong, {} errors",
            ms(quantile(&sorted, 0.5)),
            ms(quantile(&sorted, 0.99)),
            ms(sorted.last().copied()),
            self.per_second,
            self.wrong,
            self.errors
        )
    }
}

struct Shared {
    phase: Phase,
    first_sent: Option<Instant>,
    last_answer: Option<Instant>,
}

async fn connect(address: SocketAddr) -> Result<SendRequest<Empty<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|error| format!("connect: {error}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| format!("handshake: {error}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// Closed loop: each connection sends its next request when the previous one is answered.
async fn measure(
    port: u16,
    targets: Vec<Target>,
    connections: usize,
    warm_up: usize,
) -> Result<Phase> {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let targets = Arc::new(targets);
    let next = Arc::new(AtomicUsize::new(0));
    let shared = Arc::new(Mutex::new(Shared {
        phase: Phase::default(),
        first_sent: None,
        last_answer: None,
    }));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (targets, next, shared) = (targets.clone(), next.clone(), shared.clone());
        tasks.push(tokio::spawn(async move {
            let mut sender = None;
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(target) = targets.get(index) else {
                    break;
                };
                if sender.is_none() {
                    match connect(address).await {
                        Ok(fresh) => sender = Some(fresh),
                        Err(error) => return Err(error),
                    }
                }
                let Some(connection) = sender.as_mut() else {
                    break;
                };
                let request = Request::get(target.path.as_str())
                    .header(header::HOST, "127.0.0.1")
                    .body(Empty::<Bytes>::new())
                    .map_err(|error| error.to_string())?;
                let sent = Instant::now();
                let answer = async {
                    connection.ready().await?;
                    let response = connection.send_request(request).await?;
                    let status = response.status().as_u16();
                    let body = response.into_body().collect().await?.to_bytes();
                    Ok::<_, hyper::Error>((status, body))
                }
                .await;
                let answered = Instant::now();
                let mut shared = shared.lock().unwrap_or_else(PoisonError::into_inner);
                let timed = index >= warm_up;
                match answer {
                    Ok((status, body)) => {
                        if timed {
                            shared.phase.latencies_us.push(
                                u64::try_from(answered.duration_since(sent).as_micros())
                                    .unwrap_or(u64::MAX),
                            );
                            let first = *shared.first_sent.get_or_insert(sent);
                            shared.first_sent = Some(first.min(sent));
                            shared.last_answer = Some(answered);
                        }
                        if let Some(why) = wrong(&target.check, status, &body) {
                            shared.phase.wrong += 1;
                            shared.phase.first_wrong.get_or_insert(why);
                        }
                    }
                    Err(error) => {
                        shared.phase.errors += 1;
                        shared.phase.first_wrong.get_or_insert(error.to_string());
                        sender = None;
                    }
                }
            }
            Ok::<_, String>(())
        }));
    }
    for task in tasks {
        task.await
            .map_err(|error| format!("a load task failed: {error}"))??;
    }
    let mut shared = shared.lock().unwrap_or_else(PoisonError::into_inner);
    if let (Some(first), Some(last)) = (shared.first_sent, shared.last_answer) {
        let seconds = last.duration_since(first).as_secs_f64().max(1e-9);
        shared.phase.per_second = shared.phase.latencies_us.len() as f64 / seconds;
    }
    Ok(std::mem::take(&mut shared.phase))
}

// ---------------------------------------------------------------------------------------
// Direct checks and server-side figures.

#[derive(Debug, Default)]
struct Checks {
    /// Mentors whose all_time and 30d answers were compared with a direct count.
    mentors: usize,
    /// Comparisons that differed, with the first difference.
    mismatches: Vec<String>,
    /// `count()` of live rows in `attributions FINAL`, and how long it took.
    live_rows: i64,
    live_count_time: Duration,
    /// Deleted ids asked for: (asked, answered 404).
    deleted_asked: usize,
    deleted_not_found: usize,
}

fn direct_checks(
    clickhouse: &ClickHouseServer,
    api_port: u16,
    data: &Dataset,
    options: &Options,
    rng: &mut Rng,
) -> Result<Checks> {
    let mut checks = Checks::default();
    for index in 0..CHECKED_MENTORS {
        let rank = if index % 2 == 0 {
            rng.index(HEAVY_MENTORS.min(options.mentors))
        } else {
            rng.index(options.mentors)
        };
        let mentor = mentor_id(rank);
        // Retried once if an hour boundary passed between the API's answer and the count.
        for _ in 0..2 {
            let now = Timestamp::now();
            let from_ms = now.saturating_sub_millis(30 * DAY_MS).hour_bucket() * HOUR_MS;
            let api = |query: &str| -> Result<(i64, i64)> {
                let path = format!("{PREFIX}/mentor/{mentor}/total{query}");
                let (status, body) =
                    http_get(api_port, &path).ok_or_else(|| format!("GET {path} failed"))?;
                let json: Value = serde_json::from_str(&body)
                    .map_err(|_| format!("GET {path}: {status} {body}"))?;
                Ok((
                    json["total_clicks"].as_i64().unwrap_or(-1),
                    json["total_conversions"].as_i64().unwrap_or(-1),
                ))
            };
            let all_time = api("")?;
            let last_30d = api("?period=30d")?;
            let counted = numbers(
                clickhouse,
                &format!(
                    "SELECT countIf(deleted_at IS NULL), \
                     countIf(deleted_at IS NULL AND status = 'confirmed'), \
                     countIf(deleted_at IS NULL AND occurred_at >= {from_ms}), \
                     countIf(deleted_at IS NULL AND status = 'confirmed' \
                             AND ifNull(confirmed_at, 0) >= {from_ms}) \
                     FROM attributions_by_mentor FINAL WHERE mentor_id = '{mentor}'"
                ),
            )?;
            if Timestamp::now().hour_bucket() != now.hour_bucket() {
                continue;
            }
            let generated = (
                i64::try_from(data.mentor_clicks[rank]).unwrap_or(-1),
                i64::try_from(data.mentor_conversions[rank]).unwrap_or(-1),
            );
            let compare = [
                ("all_time, API vs count", all_time, (counted[0], counted[1])),
                ("all_time, API vs generated", all_time, generated),
                ("30d, API vs count", last_30d, (counted[2], counted[3])),
            ];
            for (what, got, want) in compare {
                if got != want {
                    checks
                        .mismatches
                        .push(format!("{mentor} {what}: {got:?} != {want:?}"));
                }
            }
            checks.mentors += 1;
            break;
        }
    }
    for (id, _, _) in data
        .sampled
        .iter()
        .filter(|(_, _, deleted)| *deleted)
        .take(20)
    {
        checks.deleted_asked += 1;
        if http_get(api_port, &format!("{PREFIX}/{id}")).is_some_and(|(status, _)| status == 404) {
            checks.deleted_not_found += 1;
        }
    }
    let started = Instant::now();
    checks.live_rows = numbers(
        clickhouse,
        "SELECT count() FROM attributions FINAL WHERE deleted_at IS NULL",
    )?
    .first()
    .copied()
    .unwrap_or(-1);
    checks.live_count_time = started.elapsed();
    Ok(checks)
}

/// What the server does for one request, summed over its statements.
#[derive(Clone, Copy, Debug, Default)]
struct ServerRequest {
    statements: u64,
    rows_read: u64,
    elapsed: f64,
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

/// A table's `index_granularity`, from `SHOW CREATE TABLE`.
fn index_granularity(clickhouse: &ClickHouseServer, table: &str) -> Result<u64> {
    let text = query(clickhouse, &format!("SHOW CREATE TABLE {table}"))?;
    text.split("index_granularity = ")
        .nth(1)
        .and_then(|rest| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|digits| digits.parse().ok())
        })
        .ok_or_else(|| format!("no index_granularity in {text:?}"))
}

/// One request's target for the server-side replay.
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
        (endpoint, target) => return Err(format!("no replay of {endpoint:?} for {target:?}")),
    }
    Ok(request)
}

/// Server-side figures of one endpoint: per variant, one [`ServerRequest`] per target.
#[derive(Debug, Default)]
struct ServerSide {
    as_is: Vec<ServerRequest>,
    guided: Vec<ServerRequest>,
    copies: Vec<ServerRequest>,
    copies_guided: Vec<ServerRequest>,
}

/// The SQL of `endpoint` for `--sql-samples` random targets, timed directly: as the API runs
/// it, and (with `--what-if-granularity`) on the copies, and with the guided page start.
/// The variants take turns per target, so they see the same server conditions.
fn server_side_figures(
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
            Endpoint::ListFirstPage => SqlTarget::Everything,
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

// ---------------------------------------------------------------------------------------
// The report.

fn per_second(count: u64, time: Duration) -> u64 {
    (count as f64 / time.as_secs_f64().max(1e-9)) as u64
}

/// Microseconds as milliseconds, 1 decimal.
fn ms(micros: Option<u64>) -> String {
    micros.map_or_else(|| "-".to_owned(), |us| format!("{:.1}", us as f64 / 1000.0))
}

/// Mean statements per request.
fn statements(requests: &[ServerRequest]) -> f64 {
    requests.iter().map(|r| r.statements).sum::<u64>() as f64 / requests.len().max(1) as f64
}

/// "p50 / p99" of the server's elapsed time per request, in ms.
fn server_ms(requests: &[ServerRequest]) -> String {
    let mut elapsed: Vec<u64> = requests.iter().map(|r| (r.elapsed * 1e6) as u64).collect();
    elapsed.sort_unstable();
    format!(
        "{} / {}",
        ms(quantile(&elapsed, 0.5)),
        ms(quantile(&elapsed, 0.99))
    )
}

/// One cell of the what-if table, or "-" when the variant does not apply.
fn what_if_cell(requests: &[ServerRequest]) -> String {
    if requests.is_empty() {
        return "-".to_owned();
    }
    let mut rows: Vec<u64> = requests.iter().map(|r| r.rows_read).collect();
    rows.sort_unstable();
    format!(
        "{:.1}; {}; {}",
        statements(requests),
        thousands(quantile(&rows, 0.5).unwrap_or(0)),
        server_ms(requests)
    )
}

struct Report<'a> {
    options: &'a Options,
    data: &'a Dataset,
    merges: (Duration, bool),
    parts: Vec<(String, u64, u64, u64)>,
    load_average: String,
    measurement_started: Timestamp,
    results: &'a [(Endpoint, Phase, Option<Phase>)],
    checks: &'a Checks,
    server_side: &'a [(Endpoint, ServerSide)],
    /// How long copying the tables for the what-if figures took.
    copied: Option<Duration>,
    /// `index_granularity` of the tables read.
    granularities: Vec<(&'static str, u64)>,
    runtime: Duration,
}

impl Report<'_> {
    fn render(&self) -> String {
        let (options, data) = (self.options, self.data);
        let date = Command::new("date")
            .args(["-u", "+%Y-%m-%d"])
            .output()
            .ok()
            .and_then(|output| String::from_utf8(output.stdout).ok())
            .map(|text| text.trim().to_owned())
            .unwrap_or_default();
        let cores = thread::available_parallelism().map_or(0, std::num::NonZero::get);
        let cpu_model = fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|line| line.starts_with("model name"))
                    .and_then(|line| line.split_once(':'))
                    .map(|(_, model)| model.trim().to_owned())
            })
            .unwrap_or_default();
        let all_met = self
            .results
            .iter()
            .all(|(_, phase, _)| phase.p99().is_some_and(|p99| p99 <= GOAL_P99));
        let mut out = String::new();
        let _ = writeln!(
            out,
            "### Reads: {} attributions in ClickHouse 18.16 ({date}, {cores} cores, {cpu_model})\n",
            thousands(data.clicks)
        );
        let load = &data.load;
        let top = data.mentor_clicks.first().copied().unwrap_or(0);
        let last = data.mentor_clicks.last().copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "`{}` ({:.0} min in all). ClickHouse 18.16 and tansu started fresh; `referral-aggregator \
             migrate`; the data written by the production writer as a library (`plan::plan`, \
             `write_state`, `commit`), oldest first; then `referral-api` (release, production \
             mode: Kafka + ClickHouse, rate limits off), all on this machine.\n",
            Options::command_line(),
            self.runtime.as_secs_f64() / 60.0
        );
        let _ = writeln!(
            out,
            "**Data.** {} clicks over {} mentors (Zipf s = {}: the top mentor has {} live clicks, \
             the last {}), `occurred_at` evenly over the last {} days, {} confirmed ({:.0}%), {} \
             deleted ({:.0}%): {} live attributions. Written in {:.0} s ({} attributions/s \
             overall): {} click flushes of {} in {:.0} s ({} clicks/s), {} command flushes \
             ({} commands, codes included) in {:.0} s. Then {:.0} s of background merges ({}); \
             active parts when measured: {}. `index_granularity`: {}.\n",
            thousands(data.clicks),
            thousands(options.mentors as u64),
            options.zipf,
            thousands(top),
            thousands(last),
            options.days,
            thousands(data.confirmed),
            options.confirmed * 100.0,
            thousands(data.deleted),
            options.deleted * 100.0,
            thousands(data.live),
            load.total.as_secs_f64(),
            thousands(per_second(data.clicks, load.total)),
            load.click_flushes,
            thousands(options.flush_rows),
            load.click_time.as_secs_f64(),
            thousands(per_second(data.clicks, load.click_time)),
            load.command_flushes,
            thousands(load.commands),
            load.command_time.as_secs_f64(),
            self.merges.0.as_secs_f64(),
            if self.merges.1 {
                "settled: no merge running for 5 s"
            } else {
                "**not settled** within --merge-wait"
            },
            self.parts
                .iter()
                .map(|(table, parts, rows, bytes)| format!(
                    "{table} {parts} ({} rows, {} MiB)",
                    thousands(*rows),
                    thousands(bytes / (1024 * 1024))
                ))
                .collect::<Vec<_>>()
                .join(", "),
            self.granularities
                .iter()
                .map(|(table, granularity)| format!("{table} {}", thousands(*granularity)))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let newest_age = (self.measurement_started.as_millis() - data.newest_live.0) / 60_000;
        let _ = writeln!(
            out,
            "**Latency** over HTTP/1.1 keep-alive, {} connections, closed loop, {} timed \
             requests per endpoint after {} untimed, random targets (then {} more on one \
             connection: the latency without queueing); every answer checked \
             against the generated data (status, id, list total, page size, mentor, all_time \
             totals). Load average before measuring (1/5/15 min): {} (the merges just ended; \
             other work shares this machine). The newest click was {newest_age} min old at the \
             start. Goal: p99 <= {} ms for each.\n",
            options.connections,
            thousands(options.requests as u64),
            thousands(options.warm_up as u64),
            thousands(options.unloaded_requests as u64),
            self.load_average,
            GOAL_P99.as_millis()
        );
        let _ = writeln!(
            out,
            "| endpoint | p50 ms | p99 ms | max ms | req/s | p99 <= {} ms | one connection: p50 / p99 ms | wrong answers | CPU (cores) |\n|---|---|---|---|---|---|---|---|---|",
            GOAL_P99.as_millis()
        );
        for (endpoint, phase, unloaded) in self.results {
            let sorted = phase.sorted();
            let single = unloaded.as_ref().map_or_else(
                || "-".to_owned(),
                |single| {
                    let sorted = single.sorted();
                    format!(
                        "{} / {}",
                        ms(quantile(&sorted, 0.5)),
                        ms(quantile(&sorted, 0.99))
                    )
                },
            );
            let wrong = phase.wrong
                + phase.errors
                + unloaded
                    .as_ref()
                    .map_or(0, |single| single.wrong + single.errors);
            let first_wrong = phase.first_wrong.as_ref().or(unloaded
                .as_ref()
                .and_then(|single| single.first_wrong.as_ref()));
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {:.0} | {} | {single} | {wrong}{} | {} |",
                endpoint.label(),
                ms(quantile(&sorted, 0.5)),
                ms(quantile(&sorted, 0.99)),
                ms(sorted.last().copied()),
                phase.per_second,
                if phase.p99().is_some_and(|p99| p99 <= GOAL_P99) {
                    "met"
                } else {
                    "**not met**"
                },
                first_wrong
                    .map(|why| format!(" (first: {why})"))
                    .unwrap_or_default(),
                cpu_line(&phase.cpu)
            );
        }
        let _ = writeln!(
            out,
            "\n**Goal** (p99 <= {} ms for every endpoint): {}.\n",
            GOAL_P99.as_millis(),
            if all_met { "met" } else { "**not met**" }
        );
        let _ = writeln!(
            out,
            "**Server side.** The SQL each request runs (built by `queries.rs`; the list pages \
             replay the reader's `newest_first`: a list of at most {} read in one query, a \
             longer one within growing windows 1 h, 1 d, 30 d, 365 d, then all), rendered and \
             run over ClickHouse's HTTP interface one at a time with `FORMAT JSON`, for {} \
             random targets per endpoint; rows read and elapsed from the answer's statistics, \
             summed per request.\n",
            thousands(WINDOWLESS_MAX),
            options.sql_samples
        );
        let _ = writeln!(
            out,
            "| endpoint | statements per request (mean) | rows read per request p50 / max | server ms per request p50 / p99 |\n|---|---|---|---|"
        );
        for (endpoint, figures) in self.server_side {
            let requests = &figures.as_is;
            let mut rows: Vec<u64> = requests.iter().map(|r| r.rows_read).collect();
            rows.sort_unstable();
            let _ = writeln!(
                out,
                "| {} | {:.1} | {} / {} | {} |",
                endpoint.label(),
                statements(requests),
                thousands(quantile(&rows, 0.5).unwrap_or(0)),
                thousands(rows.last().copied().unwrap_or(0)),
                server_ms(requests),
            );
        }
        let copies = self
            .copied
            .map(|copied| (copied, options.what_if_granularity));
        let current = self
            .granularities
            .iter()
            .find(|(table, _)| *table == "attributions_by_mentor")
            .map_or(0, |(_, granularity)| *granularity);
        let _ = writeln!(
            out,
            "\n**What if** (not what the API runs today): the same replay with a mentor's page \
             that starts at the day where its daily totals (`mentor_totals` grain 'day'; their \
             sum is `pagination.total`, read today with another query on the same rows) put its \
             20th newest click: 2 statements per page whatever the mentor's size{}. The \
             variants take turns per target. Cells: statements per request; rows read p50; \
             server ms p50 / p99.\n",
            copies.map_or_else(String::new, |(copied, granularity)| format!(
                "; and copies of `attributions`, `attributions_by_mentor` and \
                 `attributions_by_time` with `index_granularity = {granularity}` instead of \
                 {current} (each active part copied as one part with merges stopped: the same \
                 part layout; {:.0} s)",
                copied.as_secs_f64()
            ))
        );
        match copies {
            Some((_, granularity)) => {
                let _ = writeln!(
                    out,
                    "| endpoint | as is | page start from daily totals | index_granularity {granularity} | both |\n|---|---|---|---|---|"
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "| endpoint | as is | page start from daily totals |\n|---|---|---|"
                );
            }
        }
        for (endpoint, figures) in self.server_side {
            if figures.guided.is_empty() && figures.copies.is_empty() {
                continue;
            }
            let mut row = format!(
                "| {} | {} | {} |",
                endpoint.label(),
                what_if_cell(&figures.as_is),
                what_if_cell(&figures.guided),
            );
            if copies.is_some() {
                let _ = write!(
                    row,
                    " {} | {} |",
                    what_if_cell(&figures.copies),
                    what_if_cell(&figures.copies_guided)
                );
            }
            let _ = writeln!(out, "{row}");
        }
        let checks = self.checks;
        let _ = writeln!(
            out,
            "\n**Checks.** Totals (all_time and 30d) of {} mentors (half from the top 100) equal \
             a direct `countIf` over `attributions_by_mentor FINAL` and the generated counts: {}. \
             Deleted ids answered 404: {} of {}. `count()` of live rows in `attributions FINAL`: \
             {} (generated: {}; the query took {:.1} s).",
            checks.mentors,
            if checks.mismatches.is_empty() {
                "all equal".to_owned()
            } else {
                format!(
                    "**{} differences** (first: {})",
                    checks.mismatches.len(),
                    checks.mismatches[0]
                )
            },
            checks.deleted_not_found,
            checks.deleted_asked,
            thousands(u64::try_from(checks.live_rows).unwrap_or(0)),
            thousands(data.live),
            checks.live_count_time.as_secs_f64()
        );
        out.trim_end().to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_favours_the_head_and_covers_the_tail() {
        let zipf = Zipf::new(1_000, 1.0);
        let mut rng = Rng::new(1);
        let mut counts = vec![0_u32; 1_000];
        for _ in 0..200_000 {
            counts[zipf.sample(&mut rng)] += 1;
        }
        // P(rank 0) = 1 / H(1000) ~ 0.134.
        assert!((24_000..30_000).contains(&counts[0]), "{}", counts[0]);
        assert!(counts[0] > counts[1] && counts[1] > counts[9]);
        assert!(counts[999] > 0);
    }

    #[test]
    fn ids_carry_their_time_and_quantiles_are_nearest_rank() {
        let mut rng = Rng::new(2);
        let id = rng.id("attr_", 1_773_997_200_000);
        assert!(referral_schemas::id::is_attribution_id(&id), "{id}");
        assert_eq!(
            referral_schemas::id::attribution_created_at(&id).map(Timestamp::as_millis),
            Some(1_773_997_200_000)
        );
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&values, 0.5), Some(50));
        assert_eq!(quantile(&values, 0.99), Some(99));
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(ms(Some(12_345)), "12.3");
    }
}
