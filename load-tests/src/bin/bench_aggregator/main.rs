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
//!
//! Modules, one job each:
//!
//! - `options`: the flags (clap; the common ones are `referral_load_tests::bench::BenchArgs`;
//!   the aggregator's account of its flushes is `referral_load_tests::bench::FlushStats`);
//! - `stack`: the services of a phase and what is asked of them (migrate, the aggregator,
//!   the log end, the stored checkpoints and counts in ClickHouse);
//! - `throughput`: phase 1, with the pre-load of the topic;
//! - `freshness`: phase 2, with the broker's produce -> consume latency;
//! - `load`: the open-loop click POSTs of phase 2;
//! - `probes`: the probe clicks of phase 2 and the poller that sees them in the totals;
//! - `report`: the Markdown report.

mod freshness;
mod load;
mod options;
mod probes;
mod report;
mod stack;
mod throughput;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use referral_load_tests::bench::record_section;

use options::Options;

type Result<T, E = String> = std::result::Result<T, E>;

const TOPIC: &str = "referral-events";
const DATABASE: &str = "referral";
/// The issue's goals.
const GOAL_ROWS_PER_SECOND: f64 = 100_000.0;
const GOAL_FRESHNESS_P99: Duration = Duration::from_secs(1);
const GOAL_RATE: u64 = 5_000;
/// Issue 19 raised them.
const ISSUE_19_ROWS_PER_SECOND: f64 = 250_000.0;
const ISSUE_19_FRESHNESS_P99: Duration = Duration::from_millis(400);

fn main() -> ExitCode {
    let options = Options::parse();
    match run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("bench_aggregator: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The phases `options` asks for, each followed by its sweep, then the report.
fn run(options: &Options) -> Result<()> {
    let logs = tempfile::Builder::new()
        .prefix("bench-aggregator-")
        .tempdir()
        .map_err(|error| format!("cannot create a temp dir: {error}"))?;
    let throughput = if options.throughput() {
        Some(throughput::run(options, &logs, true)?)
    } else {
        None
    };
    let mut sweep = Vec::new();
    if options.throughput() {
        for &rows in &options.sweep_rows {
            let mut variant = options.clone();
            variant.batch_max_rows = rows;
            sweep.push((rows, throughput::run(&variant, &logs, false)?));
        }
    }
    let freshness = if options.freshness() {
        Some(freshness::run(options, &logs)?)
    } else {
        None
    };
    let mut fresh_sweep = Vec::new();
    if options.freshness() {
        for wait in &options.sweep_wait {
            let mut variant = options.clone();
            variant.freshness_batch_max_wait = Some(wait.clone());
            variant.fetch_latency = false;
            fresh_sweep.push((wait.clone(), freshness::run(&variant, &logs)?));
        }
    }
    let report = report::render(
        options,
        throughput.as_ref(),
        &sweep,
        freshness.as_ref(),
        &fresh_sweep,
    );
    println!("{report}");
    let common = &options.common;
    if common.record {
        record_section(&common.doc, "aggregator", "Aggregator (issue 4)", &report)?;
        println!("recorded in {}", common.doc.display());
    }
    Ok(())
}
