//! The aggregator benchmark of issue 4: how many rows per second `referral-aggregator run`
//! applies to ClickHouse on this machine, and how fresh the totals are (click POST
//! acknowledged -> visible in `mentor_totals`) at a fixed click rate.
//!
//! Run it with `./scripts/bench-aggregator.sh [--record]`, which installs the services and
//! builds the release binaries this program starts. Every service is started here, fresh for
//! each phase, through the launchers of `referral_load_tests::services`:
//!
//! 1. **Throughput.** `referral-aggregator migrate` creates the topics and tables; N click
//!    events (the JSON the edge publishes, keyed by mentor) are produced to the topic; then
//!    `referral-aggregator run` starts and the stored checkpoints
//!    (`sum(next_offset) ... WHERE grain = 'checkpoint'`) are polled until they reach the
//!    log end. rows/s = rows applied after the first stored checkpoint / time from the first
//!    stored checkpoint to caught up, and N / time from the aggregator's start. Exactness is
//!    checked at the end (`count()` of `attributions FINAL` and the daily click totals = N).
//!    Then the same phase again at other `REFERRAL_BATCH_MAX_ROWS` values (`--sweep-rows`).
//! 2. **Freshness.** `referral-ingest` (Kafka) and `referral-aggregator run` (default batch
//!    flags); click POSTs at a fixed open-loop rate over keep-alive connections. Every K-th
//!    click is a probe on one of a few probe mentors: at its 201 the mentor's expected total
//!    is known (201s so far for that mentor), and one poller queries all outstanding probe
//!    mentors in one query every few tens of milliseconds until the total reaches it.
//!    freshness = time the poll answer arrived - time the 201 arrived (an upper bound, by at
//!    most one poll interval plus one query). Before the load, the produce -> consume
//!    latency through the broker is measured at two `fetch.wait.max.ms` values (what a click
//!    waits before the aggregator sees it); after it, the same phase runs again at other
//!    `REFERRAL_BATCH_MAX_WAIT` values (`--sweep-wait`).
//!
//! Prints a Markdown report; `--record` also writes it between `<!-- aggregator:begin -->`
//! and `<!-- aggregator:end -->` in docs/BENCHMARKS.md. Figures are measured in this run on
//! this machine: compare them with goals and with each other, not across machines.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use referral_load_tests::bench::{
    CpuWindow, Service, cpu_line, http_get, pid_text, quantile, record_section, runtime, thousands,
    wait_http_ok,
};
use referral_load_tests::services::{ClickHouseServer, TansuBroker, free_port};
use referral_schemas::Timestamp;
use referral_schemas::id::new_attribution_id;
use referral_schemas::messages::{ClickEvent, LogEvent, LogMessage, SCHEMA_VERSION};
use tempfile::TempDir;

type Result<T, E = String> = std::result::Result<T, E>;

const TOPIC: &str = "referral-events";
const CODES_TOPIC: &str = "referral-codes";
const DATABASE: &str = "referral";
const CLICK_PATH: &str = "/api/v1/referral-attributions";
/// The goals.
const GOAL_ROWS_PER_SECOND: f64 = 100_000.0;
const GOAL_FRESHNESS_P99: Duration = Duration::from_secs(1);
const GOAL_RATE: u64 = 5_000;
/// Delivery reports the pre-load producer waits for at most at once.
const PRELOAD_IN_FLIGHT: usize = 200_000;
/// How often the throughput phase reads the stored checkpoints.
const CHECKPOINT_POLL: Duration = Duration::from_millis(50);
/// How long `log_end` reads with nothing arriving before it takes the end as found.
const LOG_END_IDLE: Duration = Duration::from_millis(1500);
/// How long the aggregator may take to apply the pre-loaded log.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(240);
/// How long probes may stay invisible after the load ended before they count as lost.
const PROBE_DRAIN: Duration = Duration::from_secs(20);
/// Load-phase codes (each its own mentor) besides the probe codes.
const LOAD_CODES: u64 = 100;
/// How long the freshness phase warms up (connections, producer, group, first flushes).
const WARM_UP: Duration = Duration::from_secs(3);
/// `fetch.wait.max.ms` values whose produce -> consume latency through the broker is
/// measured (librdkafka's default, and a short one; the aggregator sets 100 ms).
const FETCH_WAITS: [u32; 2] = [500, 50];
/// Topic of that measurement (the aggregator does not read it).
const FETCH_LATENCY_TOPIC: &str = "bench-fetch-latency";
/// The aggregator's defaults (aggregator/src/config.rs), shown in the report.
const DEFAULT_BATCH: &str = "50000 rows, 33554432 bytes, 250ms; fetch wait 100ms";

const USAGE: &str = "\
usage: bench_aggregator [--record] [options]

  --record               write the report into docs/BENCHMARKS.md (see --doc)
  --only PHASE           throughput | freshness (default: both)
  throughput phase:
  --clicks N             click events pre-loaded onto the topic (default 1000000)
  --mentors N            distinct mentors (= message keys) of those clicks (default 1000)
  --partitions N         partitions of the topic (default 6)
  --batch-max-rows N     REFERRAL_BATCH_MAX_ROWS of the aggregator (default 50000)
  --batch-max-bytes N    REFERRAL_BATCH_MAX_BYTES (default 33554432)
  --batch-max-wait D     REFERRAL_BATCH_MAX_WAIT (default 250ms)
  --sweep-rows LIST      comma-separated REFERRAL_BATCH_MAX_ROWS values to run the phase
                         again with, for comparison (default 20000,100000; none: no sweep)
  freshness phase (the aggregator keeps its default batch flags unless told):
  --rate N               click POSTs per second, open loop (default 5000)
  --seconds N            duration of the measured load (default 30)
  --connections N        keep-alive connections (default 128)
  --probe-every N        every N-th click is a probe (default 50)
  --probe-mentors N      probe mentors, used in turn (default 50)
  --poll-ms N            interval of the probe poller (default 25)
  --freshness-batch-max-wait D
                         REFERRAL_BATCH_MAX_WAIT of this phase's aggregator (default: unset,
                         the aggregator's default)
  --sweep-wait LIST      comma-separated REFERRAL_BATCH_MAX_WAIT values to run the phase
                         again with, for comparison (default 100ms; none: no sweep)
  --bin-dir DIR          where referral-aggregator and referral-ingest are (default: this
                         program's directory) and examples/seed_codes
  --doc FILE             the file --record writes (default docs/BENCHMARKS.md)";

#[derive(Clone, Debug)]
struct Options {
    record: bool,
    throughput: bool,
    freshness: bool,
    clicks: u64,
    mentors: u64,
    partitions: i32,
    batch_max_rows: u64,
    batch_max_bytes: u64,
    batch_max_wait: String,
    sweep_rows: Vec<u64>,
    rate: u64,
    seconds: u64,
    connections: usize,
    probe_every: u64,
    probe_mentors: u64,
    poll: Duration,
    freshness_batch_max_wait: Option<String>,
    sweep_wait: Vec<String>,
    /// Measure produce -> consume latency through the broker (not again in sweeps).
    fetch_latency: bool,
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
            throughput: true,
            freshness: true,
            clicks: 1_000_000,
            mentors: 1_000,
            partitions: 6,
            batch_max_rows: 50_000,
            batch_max_bytes: 32 * 1024 * 1024,
            batch_max_wait: "250ms".into(),
            sweep_rows: vec![20_000, 100_000],
            rate: GOAL_RATE,
            seconds: 30,
            connections: 128,
            probe_every: 50,
            probe_mentors: 50,
            poll: Duration::from_millis(25),
            freshness_batch_max_wait: None,
            sweep_wait: vec!["100ms".into()],
            fetch_latency: true,
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
            match flag.as_str() {
                "--only" => match value.as_str() {
                    "throughput" => options.freshness = false,
                    "freshness" => options.throughput = false,
                    _ => return Err(format!("--only takes throughput or freshness\n{USAGE}")),
                },
                "--clicks" => options.clicks = number()?,
                "--mentors" => options.mentors = number()?,
                "--partitions" => {
                    options.partitions = i32::try_from(number()?)
                        .map_err(|_| "--partitions is too large".to_owned())?;
                }
                "--batch-max-rows" => options.batch_max_rows = number()?,
                "--batch-max-bytes" => options.batch_max_bytes = number()?,
                "--batch-max-wait" => options.batch_max_wait = value,
                "--sweep-rows" if value == "none" => options.sweep_rows.clear(),
                "--sweep-rows" => {
                    options.sweep_rows = value
                        .split(',')
                        .map(|n| n.trim().parse::<u64>().ok().filter(|n| *n > 0))
                        .collect::<Option<_>>()
                        .ok_or_else(|| format!("--sweep-rows takes numbers, not {value:?}"))?;
                }
                "--rate" => options.rate = number()?,
                "--seconds" => options.seconds = number()?,
                "--connections" => {
                    options.connections = usize::try_from(number()?).unwrap_or(usize::MAX);
                }
                "--probe-every" => options.probe_every = number()?,
                "--probe-mentors" => options.probe_mentors = number()?,
                "--poll-ms" => options.poll = Duration::from_millis(number()?),
                "--freshness-batch-max-wait" => options.freshness_batch_max_wait = Some(value),
                "--sweep-wait" if value == "none" => options.sweep_wait.clear(),
                "--sweep-wait" => {
                    options.sweep_wait = value.split(',').map(|w| w.trim().to_owned()).collect();
                }
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
                 -p referral-ingest -p referral-load-tests --bins --examples) or pass --bin-dir",
                path.display()
            ))
        }
    }

    fn batch_flags(&self) -> String {
        format!(
            "REFERRAL_BATCH_MAX_ROWS={} REFERRAL_BATCH_MAX_BYTES={} REFERRAL_BATCH_MAX_WAIT={}",
            self.batch_max_rows, self.batch_max_bytes, self.batch_max_wait
        )
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
            eprintln!("bench_aggregator: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(options: &Options) -> Result<()> {
    let logs = tempfile::Builder::new()
        .prefix("bench-aggregator-")
        .tempdir()
        .map_err(|error| format!("cannot create a temp dir: {error}"))?;
    let throughput = if options.throughput {
        Some(throughput(options, &logs)?)
    } else {
        None
    };
    let mut sweep = Vec::new();
    if options.throughput {
        for &rows in &options.sweep_rows {
            let mut variant = options.clone();
            variant.batch_max_rows = rows;
            sweep.push((rows, self::throughput(&variant, &logs)?));
        }
    }
    let freshness = if options.freshness {
        Some(freshness(options, &logs)?)
    } else {
        None
    };
    let mut fresh_sweep = Vec::new();
    if options.freshness {
        for wait in &options.sweep_wait {
            let mut variant = options.clone();
            variant.freshness_batch_max_wait = Some(wait.clone());
            variant.fetch_latency = false;
            fresh_sweep.push((wait.clone(), self::freshness(&variant, &logs)?));
        }
    }
    let report = render(
        options,
        throughput.as_ref(),
        &sweep,
        freshness.as_ref(),
        &fresh_sweep,
    );
    println!("{report}");
    if options.record {
        record_section(&options.doc, "aggregator", "Aggregator (issue 4)", &report)?;
        println!("recorded in {}", options.doc.display());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Child processes, CPU accounting, small HTTP helpers.

/// Sum (over label sets) of a metric's value in Prometheus text, filtered by a label.
fn metric(text: &str, name: &str, label: Option<&str>) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let series_name = series.split('{').next()?;
            if series_name != name || label.is_some_and(|label| !series.contains(label)) {
                return None;
            }
            value.parse::<f64>().ok()
        })
        .sum()
}

/// The aggregator's own account of its flushes, from /metrics.
#[derive(Clone, Debug, Default)]
struct FlushStats {
    flushes: f64,
    rows: f64,
    flush_seconds: f64,
    insert_seconds: Vec<(String, f64)>,
}

impl FlushStats {
    fn scrape(port: u16) -> Self {
        let Some((200, text)) = http_get(port, "/metrics") else {
            return Self::default();
        };
        let tables = [
            "command_verdicts",
            "attributions",
            "attributed_members",
            "referral_codes",
            "mentor_totals",
        ];
        Self {
            flushes: metric(&text, "referral_flush_duration_seconds_count", None),
            rows: metric(&text, "referral_batch_rows_sum", None),
            flush_seconds: metric(&text, "referral_flush_duration_seconds_sum", None),
            insert_seconds: tables
                .iter()
                .map(|table| {
                    let label = format!("table=\"{table}\"");
                    let seconds = metric(
                        &text,
                        "referral_clickhouse_insert_duration_seconds_sum",
                        Some(&label),
                    );
                    ((*table).to_owned(), seconds)
                })
                .filter(|(_, seconds)| *seconds > 0.0)
                .collect(),
        }
    }

    fn summary(&self) -> String {
        if self.flushes == 0.0 {
            return "(no /metrics)".to_owned();
        }
        format!(
            "{} flushes, {} rows per flush, {:.0} ms per flush (mean)",
            thousands(self.flushes as u64),
            thousands((self.rows / self.flushes) as u64),
            self.flush_seconds / self.flushes * 1000.0
        )
    }

    fn insert_shares(&self) -> String {
        if self.flush_seconds == 0.0 {
            return "-".to_owned();
        }
        let mut out = String::new();
        let mut inserts = 0.0;
        for (table, seconds) in &self.insert_seconds {
            inserts += seconds;
            let _ = write!(
                out,
                "{table} {:.0}%, ",
                seconds / self.flush_seconds * 100.0
            );
        }
        let _ = write!(
            out,
            "everything else (decode, plan, checkpoint reads, encoding) {:.0}%",
            (1.0 - inserts / self.flush_seconds) * 100.0
        );
        out
    }
}

// ---------------------------------------------------------------------------------------
// Kafka and ClickHouse helpers.

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

/// Starts `referral-aggregator run`; returns it with the port of its /metrics.
fn start_aggregator(
    options: &Options,
    broker: &TansuBroker,
    clickhouse: &ClickHouseServer,
    batch: &[(&str, String)],
    logs: &TempDir,
) -> Result<(Service, u16)> {
    let port = free_port();
    let mut env = vec![
        ("REFERRAL_KAFKA_BROKERS", broker.address()),
        ("REFERRAL_CLICKHOUSE_URL", clickhouse.http_url()),
        ("REFERRAL_CLICKHOUSE_DATABASE", DATABASE.to_owned()),
        ("REFERRAL_LISTEN", format!("127.0.0.1:{port}")),
        // Against tansu a group join takes ~23 s with librdkafka's default session timeout.
        ("REFERRAL_KAFKA_SESSION_TIMEOUT", "6s".to_owned()),
    ];
    env.extend(batch.iter().cloned());
    let service = Service::spawn(
        "referral-aggregator run",
        &options.binary("referral-aggregator")?,
        &["run"],
        &env,
        logs,
    )?;
    Ok((service, port))
}

/// The log's end offsets, summed over partitions.
///
/// Not `fetch_watermarks` alone: tansu 0.6.0 answers the high watermark as the base offset
/// of the partition's last record batch + 1, not its last offset + 1, so after a batch of
/// several records it reports less than the log holds (measured: 10 clicks in one batch,
/// high watermark 1). The last batch starts at (reported high watermark - 1) on tansu and
/// the last message is there on a correct broker, so this reads each partition from there
/// until nothing more arrives and takes the offset after the last message read.
fn log_end(brokers: &str, partitions: i32) -> Result<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "bench-aggregator-log-end")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .create()
        .map_err(|error| format!("cannot create a Kafka client: {error}"))?;
    let mut assignment = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for partition in 0..partitions {
        let (_, high) = consumer
            .fetch_watermarks(TOPIC, partition, Duration::from_secs(10))
            .map_err(|error| format!("cannot read the end of {TOPIC}/{partition}: {error}"))?;
        ends.insert(partition, high);
        assignment
            .add_partition_offset(TOPIC, partition, Offset::Offset((high - 1).max(0)))
            .map_err(|error| format!("cannot assign {TOPIC}/{partition}: {error}"))?;
    }
    consumer
        .assign(&assignment)
        .map_err(|error| format!("cannot assign {TOPIC}: {error}"))?;
    let mut last = Instant::now();
    while last.elapsed() < LOG_END_IDLE {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                last = Instant::now();
                let end = ends.entry(message.partition()).or_insert(0);
                *end = (*end).max(message.offset() + 1);
            }
            Some(Err(error)) => return Err(format!("cannot read {TOPIC}: {error}")),
            None => {}
        }
    }
    Ok(ends.values().sum())
}

fn number(clickhouse: &ClickHouseServer, sql: &str) -> Result<i64> {
    let text = clickhouse.try_query(sql)?;
    text.trim()
        .parse()
        .map_err(|_| format!("{sql} answered {text:?}"))
}

/// The stored checkpoints, summed over partitions (0 before the first flush).
fn checkpoints(clickhouse: &ClickHouseServer) -> Result<i64> {
    number(
        clickhouse,
        &format!(
            "SELECT toInt64(sum(next_offset)) FROM {DATABASE}.mentor_totals WHERE grain = 'checkpoint'"
        ),
    )
}

fn attributions(clickhouse: &ClickHouseServer) -> Result<i64> {
    number(
        clickhouse,
        &format!("SELECT count() FROM {DATABASE}.attributions FINAL"),
    )
}

fn daily_clicks(clickhouse: &ClickHouseServer) -> Result<i64> {
    number(
        clickhouse,
        &format!("SELECT toInt64(sum(clicks)) FROM {DATABASE}.mentor_totals WHERE grain = 'day'"),
    )
}

/// Polls the stored checkpoints until they reach `end`: (first time one was stored and the
/// rows it covered, the time they reached `end`).
fn wait_caught_up(
    clickhouse: &ClickHouseServer,
    aggregator: &mut Service,
    end: i64,
    within: Duration,
) -> Result<((Instant, i64), Instant)> {
    let deadline = Instant::now() + within;
    let mut first = None;
    loop {
        aggregator.check_alive()?;
        let stored = checkpoints(clickhouse)?;
        let now = Instant::now();
        if stored > 0 && first.is_none() {
            first = Some((now, stored));
        }
        if stored >= end {
            return Ok((first.unwrap_or((now, stored)), now));
        }
        if now > deadline {
            return Err(format!(
                "the aggregator did not catch up within {within:?}: checkpoints at {stored} of \
                 {end}; its log:\n{}",
                aggregator.log_tail()
            ));
        }
        thread::sleep(CHECKPOINT_POLL);
    }
}

// ---------------------------------------------------------------------------------------
// Phase 1: throughput.

struct ThroughputReport {
    clicks: u64,
    preload: Duration,
    to_first_flush: Duration,
    first_rows: i64,
    catch_up: Duration,
    rows_per_second: f64,
    rows_per_second_with_start: f64,
    flush: FlushStats,
    attributions: i64,
    daily_clicks: i64,
    cpu: Vec<(&'static str, f64)>,
}

fn throughput(options: &Options, logs: &TempDir) -> Result<ThroughputReport> {
    eprintln!("throughput: starting tansu and ClickHouse 18.16");
    let broker = TansuBroker::start();
    let clickhouse = ClickHouseServer::start();
    migrate(options, &broker, &clickhouse, logs)?;

    eprintln!(
        "throughput: producing {} clicks to {TOPIC} ({} partitions)",
        thousands(options.clicks),
        options.partitions
    );
    let started = Instant::now();
    let ends = runtime()?.block_on(preload(&broker.address(), options))?;
    let preload_time = started.elapsed();
    // The log end from the delivery reports (tansu's reported high watermark cannot be
    // trusted, see `log_end`), checked against what the broker serves.
    let end: i64 = ends.values().sum();
    let served = log_end(&broker.address(), options.partitions)?;
    if end != options.clicks as i64 || served != end {
        return Err(format!(
            "{} clicks produced, but the delivery reports end at {end} and the topic serves \
             {served} messages",
            options.clicks
        ));
    }
    eprintln!(
        "throughput: produced in {:.1} s; starting referral-aggregator run ({})",
        preload_time.as_secs_f64(),
        options.batch_flags()
    );

    let mut cpu = CpuWindow::start(&[
        ("ClickHouse", pid_text(clickhouse.pid())),
        ("tansu", pid_text(broker.pid())),
    ]);
    let spawned = Instant::now();
    let batch = [
        (
            "REFERRAL_BATCH_MAX_ROWS",
            options.batch_max_rows.to_string(),
        ),
        (
            "REFERRAL_BATCH_MAX_BYTES",
            options.batch_max_bytes.to_string(),
        ),
        ("REFERRAL_BATCH_MAX_WAIT", options.batch_max_wait.clone()),
    ];
    let (mut aggregator, port) = start_aggregator(options, &broker, &clickhouse, &batch, logs)?;
    cpu.add_started("aggregator", pid_text(aggregator.pid()));
    let ((first_at, first_rows), done_at) =
        wait_caught_up(&clickhouse, &mut aggregator, end, CATCH_UP_TIMEOUT)?;
    let cpu = cpu.finish();
    let flush = FlushStats::scrape(port);
    aggregator.stop();

    let catch_up = done_at.duration_since(first_at);
    let report = ThroughputReport {
        clicks: options.clicks,
        preload: preload_time,
        to_first_flush: first_at.duration_since(spawned),
        first_rows,
        catch_up,
        rows_per_second: (end - first_rows) as f64 / catch_up.as_secs_f64().max(1e-9),
        rows_per_second_with_start: end as f64
            / done_at.duration_since(spawned).as_secs_f64().max(1e-9),
        flush,
        attributions: attributions(&clickhouse)?,
        daily_clicks: daily_clicks(&clickhouse)?,
        cpu,
    };
    eprintln!(
        "throughput: {:.0} rows/s after the first flush, {:.0} rows/s from the start",
        report.rows_per_second, report.rows_per_second_with_start
    );
    Ok(report)
}

/// Produces `options.clicks` click events as the edge would publish them (same JSON, key =
/// mentor id, same headers), with a producer tuned for bulk: lz4, large batches, linger.
/// Returns the next offset of each partition, from the delivery reports.
async fn preload(brokers: &str, options: &Options) -> Result<BTreeMap<i32, i64>> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("client.id", "bench-aggregator-preload")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "2097151")
        .set("message.timeout.ms", "120000");
    let producer: FutureProducer = config
        .create()
        .map_err(|error| format!("cannot create the producer: {error}"))?;
    let version = SCHEMA_VERSION.to_string();
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "kind",
            value: Some("click"),
        })
        .insert(Header {
            key: "schema_version",
            value: Some(version.as_str()),
        });
    let now = Timestamp::now().as_millis();
    let mut in_flight: VecDeque<DeliveryFuture> = VecDeque::with_capacity(PRELOAD_IN_FLIGHT);
    let mut ends = BTreeMap::new();
    for n in 0..options.clicks {
        let mentor = format!("usr_bench_{}", n % options.mentors);
        let click = ClickEvent {
            attribution_id: new_attribution_id(),
            code: format!("BENCH-{}", n % options.mentors),
            mentor_id: mentor.clone(),
            ip_address: "203.0.113.9".into(),
            user_agent: Some("Mozilla/5.0 (bench-aggregator)".into()),
            referrer_url: None,
            // A backlog of the last hour: a few hourly and daily buckets per mentor.
            occurred_at: Timestamp::from_millis(now - ((n * 7_919) % 3_600_000) as i64),
            received_at: Timestamp::from_millis(now),
        };
        let payload = LogMessage::new(LogEvent::Click(click))
            .to_json()
            .map_err(|error| format!("cannot encode a click: {error}"))?;
        loop {
            let record: FutureRecord<'_, str, Vec<u8>> = FutureRecord::to(TOPIC)
                .key(mentor.as_str())
                .payload(&payload)
                .headers(headers.clone());
            match producer.send_result(record) {
                Ok(delivery) => {
                    in_flight.push_back(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    match in_flight.pop_front() {
                        Some(delivery) => delivered(delivery, &mut ends).await?,
                        None => tokio::time::sleep(Duration::from_millis(5)).await,
                    }
                }
                Err((error, _)) => return Err(format!("cannot produce a click: {error}")),
            }
        }
        if in_flight.len() >= PRELOAD_IN_FLIGHT
            && let Some(delivery) = in_flight.pop_front()
        {
            delivered(delivery, &mut ends).await?;
        }
    }
    while let Some(delivery) = in_flight.pop_front() {
        delivered(delivery, &mut ends).await?;
    }
    Ok(ends)
}

async fn delivered(delivery: DeliveryFuture, ends: &mut BTreeMap<i32, i64>) -> Result<()> {
    match delivery.await {
        Ok(Ok(delivery)) => {
            let end = ends.entry(delivery.partition).or_insert(0);
            *end = (*end).max(delivery.offset + 1);
            Ok(())
        }
        Ok(Err((error, _))) => Err(format!("the broker did not take a click: {error}")),
        Err(_) => Err("the producer closed with clicks in flight".to_owned()),
    }
}

// ---------------------------------------------------------------------------------------
// Phase 2: freshness.

struct FreshnessReport {
    fetch_latency: Vec<(u32, Option<Duration>, Option<Duration>)>,
    load: LoadStats,
    warm_up_created: u64,
    probes_sent: u64,
    freshness: Vec<Duration>,
    poller: PollerStats,
    flush: FlushStats,
    daily_clicks: i64,
    attributions: i64,
    created_total: u64,
    cpu: Vec<(&'static str, f64)>,
}

impl FreshnessReport {
    fn sorted_freshness(&self) -> Vec<Duration> {
        let mut sorted = self.freshness.clone();
        sorted.sort_unstable();
        sorted
    }

    /// "p50 / p99 / max" in milliseconds.
    fn freshness_summary(&self) -> String {
        let sorted = self.sorted_freshness();
        [
            quantile(&sorted, 0.5),
            quantile(&sorted, 0.99),
            sorted.last().copied(),
        ]
        .iter()
        .map(|value| {
            value.map_or_else(
                || "-".to_owned(),
                |d| format!("{:.0}", d.as_secs_f64() * 1e3),
            )
        })
        .collect::<Vec<_>>()
        .join(" / ")
    }

    /// POSTs answered 201 per second of load.
    fn achieved_rate(&self) -> f64 {
        self.load.created as f64 / self.load.elapsed.as_secs_f64().max(1e-9)
    }
}

fn freshness(options: &Options, logs: &TempDir) -> Result<FreshnessReport> {
    eprintln!("freshness: starting tansu and ClickHouse 18.16");
    let broker = TansuBroker::start();
    let clickhouse = ClickHouseServer::start();
    migrate(options, &broker, &clickhouse, logs)?;
    let mut fetch_latency = Vec::new();
    for wait_ms in FETCH_WAITS.into_iter().filter(|_| options.fetch_latency) {
        let mut latencies = fetch_latency_through(&broker.address(), wait_ms)?;
        latencies.sort_unstable();
        fetch_latency.push((
            wait_ms,
            quantile(&latencies, 0.5),
            quantile(&latencies, 0.99),
        ));
    }

    // Codes on the compacted topic the edge follows: load codes and probe codes, each its
    // own mentor.
    let mut assignments: Vec<String> = (0..options.probe_mentors)
        .map(|m| format!("PROBE-{m}={}", probe_mentor(m)))
        .collect();
    assignments.extend((0..LOAD_CODES).map(|n| format!("BENCH-{n}=usr_load_{n}")));
    let mut seed_args = vec![
        broker.address(),
        TOPIC.to_owned(),
        CODES_TOPIC.to_owned(),
        options.partitions.to_string(),
    ];
    seed_args.extend(assignments);
    let seed_args: Vec<&str> = seed_args.iter().map(String::as_str).collect();
    Service::spawn(
        "seed_codes",
        &options.binary("examples/seed_codes")?,
        &seed_args,
        &[],
        logs,
    )?
    .wait_success(Duration::from_secs(60))?;

    eprintln!("freshness: starting referral-aggregator run and referral-ingest");
    let batch: Vec<(&str, String)> = options
        .freshness_batch_max_wait
        .iter()
        .map(|wait| ("REFERRAL_BATCH_MAX_WAIT", wait.clone()))
        .collect();
    let (mut aggregator, aggregator_port) =
        start_aggregator(options, &broker, &clickhouse, &batch, logs)?;
    wait_http_ok(
        &mut aggregator,
        aggregator_port,
        "/readyz",
        Duration::from_secs(30),
    )?;
    let ingest_port = free_port();
    let mut ingest = Service::spawn(
        "referral-ingest",
        &options.binary("referral-ingest")?,
        &[],
        &[
            ("REFERRAL_KAFKA_BROKERS", broker.address()),
            ("REFERRAL_LISTEN", format!("127.0.0.1:{ingest_port}")),
            ("REFERRAL_RATE_LIMIT_PER_IP", "0".to_owned()),
            ("REFERRAL_RATE_LIMIT_PER_CODE", "0".to_owned()),
            ("REFERRAL_RATE_LIMIT_GLOBAL", "0".to_owned()),
        ],
        logs,
    )?;
    wait_http_ok(&mut ingest, ingest_port, "/readyz", Duration::from_secs(30))?;

    let address = SocketAddr::from(([127, 0, 0, 1], ingest_port));
    let probes = Arc::new(Mutex::new(Probes::new(options.probe_mentors)));
    let runtime = runtime()?;

    // Warm-up at the same rate (every code, probes not timed) until the edge resolves them,
    // then wait until everything is applied, so the measured load starts on a steady state.
    eprintln!("freshness: warming up for {WARM_UP:?}");
    let warm_up = Load::new(options, address, WARM_UP);
    let warmed = runtime.block_on(drive(warm_up, probes.clone()));
    if warmed.created == 0 {
        return Err(format!(
            "no click was accepted during the warm-up: {}; referral-ingest's log:\n{}",
            warmed.failures(),
            ingest.log_tail()
        ));
    }
    let end = log_end(&broker.address(), options.partitions)?;
    wait_caught_up(&clickhouse, &mut aggregator, end, Duration::from_secs(60))?;

    eprintln!(
        "freshness: {} clicks/s for {} s over {} connections, 1 probe in {}",
        thousands(options.rate),
        options.seconds,
        options.connections,
        options.probe_every
    );
    lock(&probes).recording = true;
    let window = [
        ("referral-ingest", pid_text(ingest.pid())),
        ("aggregator", pid_text(aggregator.pid())),
        ("ClickHouse", pid_text(clickhouse.pid())),
        ("tansu", pid_text(broker.pid())),
        ("load generator (this process)", "self".to_owned()),
    ];
    let load_done = AtomicBool::new(false);
    let (load, cpu, poller) = thread::scope(|scope| {
        let poller = scope.spawn(|| {
            poll_probes(
                &clickhouse,
                &probes,
                &load_done,
                options.poll,
                options.probe_mentors,
            )
        });
        let cpu = CpuWindow::start(&window);
        let load = runtime.block_on(drive(
            Load::new(options, address, Duration::from_secs(options.seconds)),
            probes.clone(),
        ));
        let cpu = cpu.finish();
        load_done.store(true, Ordering::Relaxed);
        let poller = poller.join().unwrap_or_default();
        (load, cpu, poller)
    });
    aggregator.check_alive()?;
    ingest.check_alive()?;
    eprintln!(
        "freshness: {} POSTs answered 201 in {:.1} s",
        thousands(load.created),
        load.elapsed.as_secs_f64()
    );

    let end = log_end(&broker.address(), options.partitions)?;
    wait_caught_up(&clickhouse, &mut aggregator, end, Duration::from_secs(60))?;
    let flush = FlushStats::scrape(aggregator_port);
    let (probes_sent, freshness) = {
        let probes = lock(&probes);
        (probes.recorded, probes.freshness.clone())
    };
    let report = FreshnessReport {
        fetch_latency,
        warm_up_created: warmed.created,
        probes_sent,
        freshness,
        poller,
        flush,
        daily_clicks: daily_clicks(&clickhouse)?,
        attributions: attributions(&clickhouse)?,
        created_total: warmed.created + load.created,
        cpu,
        load,
    };
    ingest.stop();
    aggregator.stop();
    Ok(report)
}

/// Produce -> consume latencies of single messages through the broker, for a consumer
/// with `fetch.wait.max.ms = wait_ms`: 1,000 messages/s for 3 s, each carrying its send time.
/// Explains the first part of freshness: how long a click waits to reach the aggregator.
fn fetch_latency_through(brokers: &str, wait_ms: u32) -> Result<Vec<Duration>> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .map_err(|error| format!("cannot create a Kafka admin client: {error}"))?;
    let created = runtime()?.block_on(admin.create_topics(
        &[NewTopic::new(
            FETCH_LATENCY_TOPIC,
            1,
            TopicReplication::Fixed(1),
        )],
        &AdminOptions::new(),
    ));
    match created.as_deref() {
        Ok([Ok(_)]) | Ok([Err((_, RDKafkaErrorCode::TopicAlreadyExists))]) => {}
        other => return Err(format!("cannot create {FETCH_LATENCY_TOPIC}: {other:?}")),
    }
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "0")
        .create()
        .map_err(|error| format!("cannot create a producer: {error}"))?;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "bench-aggregator-fetch-latency")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", wait_ms.to_string())
        .create()
        .map_err(|error| format!("cannot create a consumer: {error}"))?;
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(FETCH_LATENCY_TOPIC, 0, Offset::End)
        .map_err(|error| format!("cannot assign {FETCH_LATENCY_TOPIC}: {error}"))?;
    consumer
        .assign(&assignment)
        .map_err(|error| format!("cannot assign {FETCH_LATENCY_TOPIC}: {error}"))?;
    // Let the consumer resolve its offset and start fetching.
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(1) {
        let _ = consumer.poll(Duration::from_millis(50));
    }
    let origin = Instant::now();
    let mut latencies = Vec::new();
    let mut sent = 0u64;
    while origin.elapsed() < Duration::from_secs(3) {
        if origin.elapsed() >= Duration::from_millis(sent) {
            let payload = (origin.elapsed().as_micros() as u64).to_string();
            producer
                .send(BaseRecord::<(), String>::to(FETCH_LATENCY_TOPIC).payload(&payload))
                .map_err(|(error, _)| format!("cannot produce: {error}"))?;
            sent += 1;
        }
        producer.poll(Duration::ZERO);
        if let Some(Ok(message)) = consumer.poll(Duration::from_micros(500)) {
            let sent_us = message
                .payload()
                .and_then(|bytes| std::str::from_utf8(bytes).ok())
                .and_then(|text| text.parse::<u64>().ok());
            if let Some(sent_us) = sent_us {
                let now_us = origin.elapsed().as_micros() as u64;
                latencies.push(Duration::from_micros(now_us.saturating_sub(sent_us)));
            }
        }
    }
    if latencies.is_empty() {
        return Err(format!(
            "no message came back through {FETCH_LATENCY_TOPIC} (fetch.wait.max.ms={wait_ms})"
        ));
    }
    Ok(latencies)
}

fn probe_mentor(index: u64) -> String {
    format!("usr_probe_{index}")
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the probes of the load have seen: 201s per probe mentor, and the probes whose
/// effect is not yet visible in the totals.
struct Probes {
    /// 201 answers per probe mentor so far (warm-up included).
    acked: Vec<u64>,
    /// Per probe mentor: (total that makes the probe visible, when its 201 arrived).
    outstanding: Vec<VecDeque<(u64, Instant)>>,
    recording: bool,
    recorded: u64,
    freshness: Vec<Duration>,
}

impl Probes {
    fn new(mentors: u64) -> Self {
        let mentors = usize::try_from(mentors).unwrap_or(usize::MAX);
        Self {
            acked: vec![0; mentors],
            outstanding: vec![VecDeque::new(); mentors],
            recording: false,
            recorded: 0,
            freshness: Vec::new(),
        }
    }

    fn acknowledged(&mut self, mentor: usize, at: Instant) {
        self.acked[mentor] += 1;
        if self.recording {
            self.recorded += 1;
            self.outstanding[mentor].push_back((self.acked[mentor], at));
        }
    }
}

#[derive(Debug, Default)]
struct PollerStats {
    queries: u64,
    query_time: Duration,
    errors: u64,
    last_error: Option<String>,
}

/// One thread, one query per tick for all probe mentors with outstanding probes.
fn poll_probes(
    clickhouse: &ClickHouseServer,
    probes: &Mutex<Probes>,
    load_done: &AtomicBool,
    interval: Duration,
    mentors: u64,
) -> PollerStats {
    let mut stats = PollerStats::default();
    let mut drain_deadline = None;
    loop {
        let tick = Instant::now();
        let waiting: Vec<usize> = lock(probes)
            .outstanding
            .iter()
            .enumerate()
            .filter(|(_, queue)| !queue.is_empty())
            .map(|(mentor, _)| mentor)
            .collect();
        if load_done.load(Ordering::Relaxed) {
            let deadline = *drain_deadline.get_or_insert_with(|| tick + PROBE_DRAIN);
            if waiting.is_empty() || tick > deadline {
                return stats;
            }
        }
        if !waiting.is_empty() {
            let list = waiting
                .iter()
                .map(|&mentor| format!("'{}'", probe_mentor(mentor as u64)))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "SELECT mentor_id, toInt64(sum(clicks)) FROM {DATABASE}.mentor_totals \
                 WHERE grain = 'day' AND mentor_id IN ({list}) GROUP BY mentor_id FORMAT TSV"
            );
            let answer = clickhouse.try_query(&sql);
            let received = Instant::now();
            stats.queries += 1;
            stats.query_time += received.duration_since(tick);
            match answer {
                Ok(text) => {
                    let totals: HashMap<usize, u64> = text
                        .lines()
                        .filter_map(|line| {
                            let (mentor, total) = line.split_once('\t')?;
                            let index = mentor.strip_prefix("usr_probe_")?.parse().ok()?;
                            Some((index, total.parse().ok()?))
                        })
                        .filter(|(index, _)| (*index as u64) < mentors)
                        .collect();
                    let mut probes = lock(probes);
                    let Probes {
                        outstanding,
                        freshness,
                        ..
                    } = &mut *probes;
                    for mentor in waiting {
                        let total = totals.get(&mentor).copied().unwrap_or(0);
                        let queue = &mut outstanding[mentor];
                        while let Some(&(expected, acked_at)) = queue.front() {
                            if expected > total {
                                break;
                            }
                            queue.pop_front();
                            freshness.push(received.saturating_duration_since(acked_at));
                        }
                    }
                }
                Err(error) => {
                    stats.errors += 1;
                    stats.last_error = Some(error);
                }
            }
        }
        thread::sleep(interval.saturating_sub(tick.elapsed()));
    }
}

/// One open-loop load: request i is due at start + i / rate, sent on connection
/// i % connections.
struct Load {
    address: SocketAddr,
    rate: u64,
    total: u64,
    connections: usize,
    probe_every: u64,
    probe_mentors: u64,
    load_bodies: Vec<Bytes>,
    probe_bodies: Vec<Bytes>,
}

impl Load {
    fn new(options: &Options, address: SocketAddr, duration: Duration) -> Arc<Self> {
        let body = |code: String| Bytes::from(format!("{{\"code\":\"{code}\"}}"));
        Arc::new(Self {
            address,
            rate: options.rate,
            total: (options.rate as f64 * duration.as_secs_f64()) as u64,
            connections: options.connections,
            probe_every: options.probe_every,
            probe_mentors: options.probe_mentors,
            load_bodies: (0..LOAD_CODES)
                .map(|n| body(format!("BENCH-{n}")))
                .collect(),
            probe_bodies: (0..options.probe_mentors)
                .map(|m| body(format!("PROBE-{m}")))
                .collect(),
        })
    }

    fn due(&self, index: u64) -> Duration {
        Duration::from_nanos(
            u64::try_from(u128::from(index) * 1_000_000_000 / u128::from(self.rate))
                .unwrap_or(u64::MAX),
        )
    }
}

#[derive(Debug, Default)]
struct LoadStats {
    sent: u64,
    created: u64,
    other_status: BTreeMap<u16, u64>,
    errors: u64,
    first_error: Option<String>,
    /// Send -> response, microseconds.
    latency_us: Vec<u32>,
    /// Due -> sent (how far the generator fell behind its schedule), microseconds.
    lateness_us: Vec<u32>,
    elapsed: Duration,
}

impl LoadStats {
    fn merge(&mut self, other: Self) {
        self.sent += other.sent;
        self.created += other.created;
        for (status, count) in other.other_status {
            *self.other_status.entry(status).or_default() += count;
        }
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.latency_us.extend(other.latency_us);
        self.lateness_us.extend(other.lateness_us);
    }

    fn non_created(&self) -> u64 {
        self.other_status.values().sum()
    }

    fn failures(&self) -> String {
        let mut out = format!(
            "{} sent, {} answered 201, other statuses {:?}, {} connection errors",
            self.sent, self.created, self.other_status, self.errors
        );
        if let Some(error) = &self.first_error {
            let _ = write!(out, " (first: {error})");
        }
        out
    }
}

async fn drive(load: Arc<Load>, probes: Arc<Mutex<Probes>>) -> LoadStats {
    let start = tokio::time::Instant::now() + Duration::from_millis(20);
    let tasks: Vec<_> = (0..load.connections)
        .map(|index| tokio::spawn(drive_connection(index, load.clone(), probes.clone(), start)))
        .collect();
    let mut stats = LoadStats::default();
    for task in tasks {
        match task.await {
            Ok(part) => stats.merge(part),
            Err(error) => {
                stats.errors += 1;
                stats.first_error.get_or_insert_with(|| error.to_string());
            }
        }
    }
    stats.elapsed = start.elapsed();
    stats
}

async fn connect(address: SocketAddr) -> Result<SendRequest<Full<Bytes>>> {
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

async fn drive_connection(
    index: usize,
    load: Arc<Load>,
    probes: Arc<Mutex<Probes>>,
    start: tokio::time::Instant,
) -> LoadStats {
    let mut stats = LoadStats::default();
    let mut sender: Option<SendRequest<Full<Bytes>>> = None;
    let step = load.connections as u64;
    let mut request_index = index as u64;
    while request_index < load.total {
        let i = request_index;
        request_index += step;
        let due = start + load.due(i);
        tokio::time::sleep_until(due).await;
        if sender.is_none() {
            match connect(load.address).await {
                Ok(fresh) => sender = Some(fresh),
                Err(error) => {
                    stats.errors += 1;
                    stats.first_error.get_or_insert(error);
                    continue;
                }
            }
        }
        let Some(connection) = sender.as_mut() else {
            continue;
        };
        let probe = i
            .is_multiple_of(load.probe_every)
            .then(|| usize::try_from((i / load.probe_every) % load.probe_mentors).unwrap_or(0));
        let body = match probe {
            Some(mentor) => load.probe_bodies[mentor].clone(),
            None => load.load_bodies[(i % load.load_bodies.len() as u64) as usize].clone(),
        };
        let request = Request::builder()
            .method(Method::POST)
            .uri(CLICK_PATH)
            .header(header::HOST, "127.0.0.1")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body));
        let request = match request {
            Ok(request) => request,
            Err(error) => {
                stats.errors += 1;
                stats.first_error.get_or_insert(error.to_string());
                continue;
            }
        };
        let sent = tokio::time::Instant::now();
        stats.sent += 1;
        stats
            .lateness_us
            .push(micros(sent.saturating_duration_since(due)));
        let answer = async {
            connection.ready().await?;
            let response = connection.send_request(request).await?;
            let status = response.status();
            response.into_body().collect().await?;
            Ok::<_, hyper::Error>(status)
        }
        .await;
        let answered = Instant::now();
        match answer {
            Ok(status) => {
                stats.latency_us.push(micros(sent.elapsed()));
                if status == StatusCode::CREATED {
                    stats.created += 1;
                    if let Some(mentor) = probe {
                        lock(&probes).acknowledged(mentor, answered);
                    }
                } else {
                    *stats.other_status.entry(status.as_u16()).or_default() += 1;
                }
            }
            Err(error) => {
                stats.errors += 1;
                stats.first_error.get_or_insert(error.to_string());
                sender = None;
            }
        }
    }
    stats
}

fn micros(duration: Duration) -> u32 {
    u32::try_from(duration.as_micros()).unwrap_or(u32::MAX)
}

// ---------------------------------------------------------------------------------------
// The report.

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "**not met**" }
}

fn render(
    options: &Options,
    throughput: Option<&ThroughputReport>,
    sweep: &[(u64, ThroughputReport)],
    freshness: Option<&FreshnessReport>,
    fresh_sweep: &[(String, FreshnessReport)],
) -> String {
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
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### Aggregator: throughput and freshness ({date}, {cores} cores, {cpu_model})\n"
    );
    let _ = writeln!(
        out,
        "`./scripts/bench-aggregator.sh{}`: tansu 0.6.0 (memory engine) and ClickHouse 18.16 \
         started fresh for each phase, release builds of `referral-aggregator` and \
         `referral-ingest`, all on this machine. CPU is in cores (1.00 = one core busy), from \
         /proc over the measured window.",
        if options.record { " --record" } else { "" }
    );
    if let Some(report) = throughput {
        let _ = writeln!(
            out,
            "\n**Throughput.** {} clicks ({} mentors, {} partitions) produced to the topic \
             first ({:.1} s), then `referral-aggregator run` started with `{}`.\n",
            thousands(report.clicks),
            thousands(options.mentors),
            options.partitions,
            report.preload.as_secs_f64(),
            options.batch_flags()
        );
        let exact = report.attributions == report.clicks as i64
            && report.daily_clicks == report.clicks as i64;
        let rows = [
            (
                "**rows/s, first stored checkpoint -> caught up**".to_owned(),
                format!(
                    "**{}** (goal >= {}: {})",
                    thousands(report.rows_per_second as u64),
                    thousands(GOAL_ROWS_PER_SECOND as u64),
                    met(report.rows_per_second >= GOAL_ROWS_PER_SECOND)
                ),
            ),
            (
                "rows/s, aggregator start -> caught up".to_owned(),
                thousands(report.rows_per_second_with_start as u64),
            ),
            (
                "aggregator start -> first stored checkpoint (group join, first batch)".to_owned(),
                format!(
                    "{:.2} s ({} rows in it)",
                    report.to_first_flush.as_secs_f64(),
                    thousands(report.first_rows.max(0) as u64)
                ),
            ),
            (
                "first stored checkpoint -> all rows checkpointed".to_owned(),
                format!("{:.2} s", report.catch_up.as_secs_f64()),
            ),
            (
                "flushes (aggregator /metrics)".to_owned(),
                report.flush.summary(),
            ),
            (
                "flush time spent in ClickHouse inserts".to_owned(),
                report.flush.insert_shares(),
            ),
            (
                "exact: count() attributions FINAL; sum(clicks) grain 'day'".to_owned(),
                format!(
                    "{}; {} ({})",
                    thousands(report.attributions.max(0) as u64),
                    thousands(report.daily_clicks.max(0) as u64),
                    if exact { "both = N" } else { "**NOT N**" }
                ),
            ),
            (
                "CPU from the aggregator's start to caught up".to_owned(),
                cpu_line(&report.cpu),
            ),
        ];
        table(&mut out, &rows);
    }
    if let Some(report) = throughput.filter(|_| !sweep.is_empty()) {
        let _ = writeln!(
            out,
            "\nThe same phase again (fresh services) with other `REFERRAL_BATCH_MAX_ROWS`, \
             other flags as above:\n"
        );
        let _ = writeln!(
            out,
            "| REFERRAL_BATCH_MAX_ROWS | rows/s after the first checkpoint | flushes | CPU |\n\
             |---|---|---|---|"
        );
        let runs = std::iter::once((options.batch_max_rows, report))
            .chain(sweep.iter().map(|(rows, report)| (*rows, report)));
        for (rows, report) in runs {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                thousands(rows),
                thousands(report.rows_per_second as u64),
                report.flush.summary(),
                cpu_line(&report.cpu)
            );
        }
    }
    if let Some(report) = freshness {
        let mut sorted = report.freshness.clone();
        sorted.sort_unstable();
        let ms = |value: Option<Duration>| {
            value.map_or_else(
                || "-".to_owned(),
                |d| format!("{:.0}", d.as_secs_f64() * 1e3),
            )
        };
        let p99 = quantile(&sorted, 0.99);
        let achieved = report.load.created as f64 / report.load.elapsed.as_secs_f64().max(1e-9);
        let at_rate = options.rate >= GOAL_RATE && achieved >= 0.98 * GOAL_RATE as f64;
        let visible_all = sorted.len() as u64 == report.probes_sent;
        let goal = p99.is_some_and(|p99| p99 <= GOAL_FRESHNESS_P99) && at_rate && visible_all;
        let mut latency = report.load.latency_us.clone();
        latency.sort_unstable();
        let mut lateness = report.load.lateness_us.clone();
        lateness.sort_unstable();
        let us_ms = |value: Option<u32>| {
            value.map_or_else(|| "-".to_owned(), |v| format!("{:.1}", f64::from(v) / 1e3))
        };
        let batch = match &options.freshness_batch_max_wait {
            Some(wait) => {
                format!("`REFERRAL_BATCH_MAX_WAIT={wait}`, other batch flags at their defaults")
            }
            None => format!("its default batch flags ({DEFAULT_BATCH})"),
        };
        let _ = writeln!(
            out,
            "\n**Freshness.** `referral-ingest` (Kafka, acks=all) and `referral-aggregator run` \
             with {batch}; click POSTs at a fixed open-loop \
             rate of {}/s for {} s over {} keep-alive connections, after a {} s warm-up. \
             Every {}th click is a probe on one of {} probe mentors; one poller asks \
             ClickHouse for all outstanding probe mentors' daily totals every {} ms. \
             Freshness = poll answer that shows the probe's click - its 201 (an upper bound).\n",
            thousands(options.rate),
            options.seconds,
            options.connections,
            WARM_UP.as_secs(),
            options.probe_every,
            options.probe_mentors,
            options.poll.as_millis()
        );
        let mut other = format!("{}", report.load.non_created());
        if !report.load.other_status.is_empty() {
            let _ = write!(other, " {:?}", report.load.other_status);
        }
        let rows = [
            (
                "**freshness p50 / p99 / max (ms)**".to_owned(),
                format!(
                    "**{} / {} / {}** (goal p99 <= {} ms at {} clicks/s: {})",
                    ms(quantile(&sorted, 0.5)),
                    ms(p99),
                    ms(sorted.last().copied()),
                    GOAL_FRESHNESS_P99.as_millis(),
                    thousands(GOAL_RATE),
                    met(goal)
                ),
            ),
            (
                "produce -> consume through tansu, p50 / p99 (ms), by the consumer's \
                 fetch.wait.max.ms (librdkafka's default 500 ms; the aggregator sets 100 ms)"
                    .to_owned(),
                report
                    .fetch_latency
                    .iter()
                    .map(|(wait, p50, p99)| format!("{wait} ms: {} / {}", ms(*p50), ms(*p99)))
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            (
                "probes visible / sent".to_owned(),
                format!(
                    "{} / {}",
                    thousands(sorted.len() as u64),
                    thousands(report.probes_sent)
                ),
            ),
            (
                "POSTs answered 201 per second (target)".to_owned(),
                format!(
                    "{} ({})",
                    thousands(achieved as u64),
                    thousands(options.rate)
                ),
            ),
            (
                "non-201 answers; connection errors".to_owned(),
                format!("{other}; {}", report.load.errors),
            ),
            (
                "POST latency p50 / p99 (ms); generator behind schedule p99 (ms)".to_owned(),
                format!(
                    "{} / {}; {}",
                    us_ms(quantile(&latency, 0.5)),
                    us_ms(quantile(&latency, 0.99)),
                    us_ms(quantile(&lateness, 0.99))
                ),
            ),
            (
                "flushes, warm-up included (aggregator /metrics)".to_owned(),
                report.flush.summary(),
            ),
            (
                "flush time spent in ClickHouse inserts".to_owned(),
                report.flush.insert_shares(),
            ),
            (
                "probe poller: queries; mean query (ms); errors".to_owned(),
                format!(
                    "{}; {:.1}; {}",
                    thousands(report.poller.queries),
                    report.poller.query_time.as_secs_f64() * 1e3
                        / report.poller.queries.max(1) as f64,
                    report.poller.errors
                ),
            ),
            (
                "exact: sum(clicks) grain 'day'; count() attributions FINAL; 201s".to_owned(),
                format!(
                    "{}; {}; {} (warm-up {} + load {})",
                    thousands(report.daily_clicks.max(0) as u64),
                    thousands(report.attributions.max(0) as u64),
                    thousands(report.created_total),
                    thousands(report.warm_up_created),
                    thousands(report.load.created)
                ),
            ),
            ("CPU during the load".to_owned(), cpu_line(&report.cpu)),
        ];
        table(&mut out, &rows);
        if let Some(error) = &report.poller.last_error {
            let _ = writeln!(out, "\nLast poller error: {error}");
        }
    }
    if let Some(report) = freshness.filter(|_| !fresh_sweep.is_empty()) {
        let _ = writeln!(
            out,
            "\nThe same phase again (fresh services) with other `REFERRAL_BATCH_MAX_WAIT`, \
             other flags at their defaults:\n"
        );
        let _ = writeln!(
            out,
            "| REFERRAL_BATCH_MAX_WAIT | freshness p50 / p99 / max (ms) | 201/s | flushes | CPU |\n\
             |---|---|---|---|---|"
        );
        let default_wait = options
            .freshness_batch_max_wait
            .clone()
            .unwrap_or_else(|| "250ms (default)".to_owned());
        let runs = std::iter::once((default_wait, report)).chain(
            fresh_sweep
                .iter()
                .map(|(wait, report)| (wait.clone(), report)),
        );
        for (wait, report) in runs {
            let _ = writeln!(
                out,
                "| {wait} | {} | {} | {} | {} |",
                report.freshness_summary(),
                thousands(report.achieved_rate() as u64),
                report.flush.summary(),
                cpu_line(&report.cpu)
            );
        }
    }
    out.trim_end().to_owned()
}

fn table(out: &mut String, rows: &[(String, String)]) {
    let _ = writeln!(out, "| measure | value |\n|---|---|");
    for (name, value) in rows {
        let _ = writeln!(out, "| {name} | {value} |");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_numbers() {
        let values: Vec<u32> = (1..=100).collect();
        assert_eq!(quantile(&values, 0.5), Some(50));
        assert_eq!(quantile(&values, 0.99), Some(99));
        assert_eq!(quantile::<u32>(&[], 0.5), None);
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(999), "999");
        let text = "# HELP x\nx_sum{table=\"a\"} 1.5\nx_sum{table=\"b\"} 2\nx_count 3\n";
        assert_eq!(metric(text, "x_sum", Some("table=\"a\"")), 1.5);
        assert_eq!(metric(text, "x_sum", None), 3.5);
        assert_eq!(metric(text, "x_count", None), 3.0);
    }
}
