//! The flags of `bench_aggregator` (`--help` lists them): the common ones
//! ([`BenchArgs`]: `--record`, `--doc`, `--bin-dir`, `--partitions`), then each phase's.

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::RangedU64ValueParser;
use clap::{Parser, ValueEnum};
use referral_load_tests::bench::BenchArgs;

use crate::{GOAL_RATE, Result};

/// How to build what this program starts, for the error when a binary is missing.
const BUILD: &str = "cargo build --release -p referral-aggregator -p referral-ingest \
                     -p referral-load-tests --bins --examples";

/// Headings of `--help`.
const THROUGHPUT: &str = "Throughput phase";
const FRESHNESS: &str =
    "Freshness phase (the aggregator keeps its default batch flags unless told)";

/// A list of `REFERRAL_BATCH_MAX_ROWS` values (one flag value, comma-separated).
pub type RowsList = Vec<u64>;
/// A list of `REFERRAL_BATCH_MAX_WAIT` values (one flag value, comma-separated).
pub type WaitList = Vec<String>;

/// The aggregator benchmark (issue 4): rows/s into ClickHouse, and freshness of the totals.
///
/// Starts tansu, ClickHouse 18.16 and the release binaries itself, fresh for each phase, and
/// prints a Markdown report (`--record` also writes it into docs/BENCHMARKS.md).
#[derive(Clone, Debug, Parser)]
#[command(name = "bench_aggregator")]
pub struct Options {
    /// Run only this phase [default: both]
    #[arg(long, value_enum, value_name = "PHASE")]
    pub only: Option<Phase>,

    /// Click events pre-loaded onto the topic
    #[arg(long, value_name = "N", default_value_t = 1_000_000, value_parser = positive(),
          help_heading = THROUGHPUT)]
    pub clicks: u64,

    /// Distinct mentors (= message keys) of those clicks
    #[arg(long, value_name = "N", default_value_t = 1_000, value_parser = positive(),
          help_heading = THROUGHPUT)]
    pub mentors: u64,

    /// REFERRAL_BATCH_MAX_ROWS of the aggregator
    #[arg(long, value_name = "N", default_value_t = 50_000, value_parser = positive(),
          help_heading = THROUGHPUT)]
    pub batch_max_rows: u64,

    /// REFERRAL_BATCH_MAX_BYTES of the aggregator
    #[arg(long, value_name = "N", default_value_t = 32 * 1024 * 1024, value_parser = positive(),
          help_heading = THROUGHPUT)]
    pub batch_max_bytes: u64,

    /// REFERRAL_BATCH_MAX_WAIT of the aggregator
    #[arg(long, value_name = "D", default_value = "250ms", help_heading = THROUGHPUT)]
    pub batch_max_wait: String,

    /// Comma-separated REFERRAL_BATCH_MAX_ROWS values to run the phase again with, for
    /// comparison (none: no sweep)
    #[arg(long, value_name = "LIST", default_value = "20000,100000", value_parser = rows_list,
          help_heading = THROUGHPUT)]
    pub sweep_rows: RowsList,

    /// Click POSTs per second, open loop
    #[arg(long, value_name = "N", default_value_t = GOAL_RATE, value_parser = positive(),
          help_heading = FRESHNESS)]
    pub rate: u64,

    /// Duration of the measured load, in seconds
    #[arg(long, value_name = "N", default_value_t = 30, value_parser = positive(),
          help_heading = FRESHNESS)]
    pub seconds: u64,

    /// Keep-alive connections
    #[arg(long, value_name = "N", default_value_t = 128,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..),
          help_heading = FRESHNESS)]
    pub connections: usize,

    /// Every N-th click is a probe
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = positive(),
          help_heading = FRESHNESS)]
    pub probe_every: u64,

    /// Probe mentors, used in turn
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = positive(),
          help_heading = FRESHNESS)]
    pub probe_mentors: u64,

    /// Interval of the probe poller, in milliseconds
    #[arg(long, value_name = "N", default_value_t = 25, value_parser = positive(),
          help_heading = FRESHNESS)]
    pub poll_ms: u64,

    /// REFERRAL_BATCH_MAX_WAIT of this phase's aggregator [default: unset, the aggregator's
    /// default]
    #[arg(long, value_name = "D",
          help_heading = FRESHNESS)]
    pub freshness_batch_max_wait: Option<String>,

    /// Comma-separated REFERRAL_BATCH_MAX_WAIT values to run the phase again with, for
    /// comparison (none: no sweep)
    #[arg(long, value_name = "LIST", default_value = "100ms", value_parser = wait_list,
          help_heading = FRESHNESS)]
    pub sweep_wait: WaitList,

    // `--record`, `--doc`, `--bin-dir`, `--partitions` (listed last in `--help`).
    #[command(flatten)]
    pub common: BenchArgs,

    /// Measure produce -> consume latency through the broker (not again in sweeps).
    #[arg(skip = true)]
    pub fetch_latency: bool,
}

/// The phases `--only` can pick.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Phase {
    Throughput,
    Freshness,
}

/// A positive integer.
fn positive() -> RangedU64ValueParser<u64> {
    RangedU64ValueParser::new().range(1..)
}

/// `none`, or comma-separated positive integers.
fn rows_list(value: &str) -> Result<RowsList> {
    if value == "none" {
        return Ok(Vec::new());
    }
    value
        .split(',')
        .map(|n| n.trim().parse::<u64>().ok().filter(|n| *n > 0))
        .collect::<Option<_>>()
        .ok_or_else(|| format!("takes numbers, not {value:?}"))
}

/// `none`, or comma-separated durations (passed on as given).
fn wait_list(value: &str) -> Result<WaitList> {
    if value == "none" {
        return Ok(Vec::new());
    }
    Ok(value
        .split(',')
        .map(|wait| wait.trim().to_owned())
        .collect())
}

impl Options {
    pub fn throughput(&self) -> bool {
        self.only != Some(Phase::Freshness)
    }

    pub fn freshness(&self) -> bool {
        self.only != Some(Phase::Throughput)
    }

    pub fn poll(&self) -> Duration {
        Duration::from_millis(self.poll_ms)
    }

    /// The release binary `name` (under `--bin-dir`), or how to build it.
    pub fn binary(&self, name: &str) -> Result<PathBuf> {
        self.common.binary(name, BUILD)
    }

    pub fn batch_flags(&self) -> String {
        format!(
            "REFERRAL_BATCH_MAX_ROWS={} REFERRAL_BATCH_MAX_BYTES={} REFERRAL_BATCH_MAX_WAIT={}",
            self.batch_max_rows, self.batch_max_bytes, self.batch_max_wait
        )
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn defaults_and_every_flag_the_script_documents() {
        Options::command().debug_assert();
        let options = Options::try_parse_from(["bench_aggregator"]).unwrap();
        assert!(options.throughput() && options.freshness());
        assert!(!options.common.record);
        assert_eq!(
            (options.clicks, options.mentors, options.common.partitions),
            (1_000_000, 1_000, 6)
        );
        assert_eq!(options.sweep_rows, vec![20_000, 100_000]);
        assert_eq!(options.sweep_wait, vec!["100ms".to_owned()]);
        assert_eq!(options.rate, GOAL_RATE);
        assert_eq!(options.poll(), Duration::from_millis(25));
        assert_eq!(options.freshness_batch_max_wait, None);
        assert!(options.fetch_latency);
        assert_eq!(
            options.batch_flags(),
            "REFERRAL_BATCH_MAX_ROWS=50000 REFERRAL_BATCH_MAX_BYTES=33554432 \
             REFERRAL_BATCH_MAX_WAIT=250ms"
        );

        let options = Options::try_parse_from([
            "bench_aggregator",
            "--record",
            "--only",
            "throughput",
            "--clicks",
            "20000",
            "--sweep-rows",
            "none",
            "--sweep-wait",
            "50ms, 200ms",
            "--freshness-batch-max-wait",
            "100ms",
            "--connections",
            "8",
            "--poll-ms",
            "10",
            "--doc",
            "/tmp/B.md",
        ])
        .unwrap();
        assert!(options.common.record && options.throughput() && !options.freshness());
        assert_eq!(options.clicks, 20_000);
        assert!(options.sweep_rows.is_empty());
        assert_eq!(
            options.sweep_wait,
            vec!["50ms".to_owned(), "200ms".to_owned()]
        );
        assert_eq!(options.freshness_batch_max_wait.as_deref(), Some("100ms"));
        assert_eq!(options.connections, 8);
        assert_eq!(options.poll(), Duration::from_millis(10));
        assert_eq!(options.common.doc, PathBuf::from("/tmp/B.md"));

        for bad in [
            &["--clicks", "0"][..],
            &["--sweep-rows", "1,x"],
            &["--only", "both"],
            &["--connections", "0"],
            &["--unknown"],
            &["--rate"],
        ] {
            let args = std::iter::once("bench_aggregator").chain(bad.iter().copied());
            assert!(Options::try_parse_from(args).is_err(), "{bad:?}");
        }
    }
}
