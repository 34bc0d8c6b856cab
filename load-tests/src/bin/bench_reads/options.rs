//! The flags of `bench_reads` (`--help` lists them): the common ones ([`BenchArgs`]:
//! `--record`, `--doc`, `--bin-dir`, `--partitions`), then the data's and the measurement's.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use clap::builder::RangedU64ValueParser;
use referral_load_tests::bench::BenchArgs;

use crate::Result;

/// How to build what this program starts, for the error when a binary is missing.
const BUILD: &str =
    "cargo build --release -p referral-aggregator -p referral-api -p referral-load-tests --bins";

/// Headings of `--help`.
const DATA: &str = "Data";
const MEASUREMENT: &str = "Measurement";

/// The read benchmark (issue 5): latency of the API's reads over attributions stored in
/// ClickHouse 18.16.
///
/// Starts ClickHouse 18.16, tansu and the release binaries itself, writes the data with the
/// production writer, measures every read endpoint over HTTP and prints a Markdown report
/// (`--record` also writes it into docs/BENCHMARKS.md).
#[derive(Clone, Debug, Parser)]
#[command(name = "bench_reads")]
pub struct Options {
    /// Attributions generated
    #[arg(long, value_name = "N", default_value_t = 10_000_000, value_parser = positive(),
          help_heading = DATA)]
    pub attributions: u64,

    /// Mentors
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = positive_size(),
          help_heading = DATA)]
    pub mentors: usize,

    /// Zipf exponent of the mentors' popularity
    #[arg(long, value_name = "S", default_value_t = 1.0, value_parser = exponent,
          help_heading = DATA)]
    pub zipf: f64,

    /// occurred_at spread evenly over the last N days
    #[arg(long, value_name = "N", default_value_t = 400,
          value_parser = clap::value_parser!(i64).range(1..), help_heading = DATA)]
    pub days: i64,

    /// Share of clicks confirmed, in percent
    #[arg(long = "confirmed-pct", value_name = "P", default_value_t = 10.0,
          value_parser = percentage, help_heading = DATA)]
    pub confirmed_pct: f64,

    /// Share of clicks deleted, in percent
    #[arg(long = "deleted-pct", value_name = "P", default_value_t = 1.0,
          value_parser = percentage, help_heading = DATA)]
    pub deleted_pct: f64,

    /// Clicks per writer flush
    #[arg(long, value_name = "N", default_value_t = 200_000, value_parser = positive(),
          help_heading = DATA)]
    pub flush_rows: u64,

    /// Commands per writer flush at most
    #[arg(long, value_name = "N", default_value_t = 5_000, value_parser = positive_size(),
          help_heading = DATA)]
    pub commands_per_flush: usize,

    /// Seed of the generator
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = positive(),
          help_heading = DATA)]
    pub seed: u64,

    /// Longest wait for ClickHouse's background merges after the load, in seconds
    #[arg(long, value_name = "SECONDS", default_value_t = 900, value_parser = positive(),
          help_heading = DATA)]
    pub merge_wait: u64,

    /// Timed requests per endpoint
    #[arg(long, value_name = "N", default_value_t = 2_000, value_parser = positive_size(),
          help_heading = MEASUREMENT)]
    pub requests: usize,

    /// Untimed requests per endpoint before them
    #[arg(long, value_name = "N", default_value_t = 200, help_heading = MEASUREMENT)]
    pub warm_up: usize,

    /// Keep-alive connections, closed loop
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = positive_size(),
          help_heading = MEASUREMENT)]
    pub connections: usize,

    /// Targets per endpoint whose SQL is timed directly
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = positive_size(),
          help_heading = MEASUREMENT)]
    pub sql_samples: usize,

    /// After the measurement, also time that SQL on copies of the attribution tables with
    /// index_granularity = N (0: skip)
    #[arg(long, value_name = "N", default_value_t = 0, help_heading = MEASUREMENT)]
    pub what_if_granularity: u32,

    /// Timed requests per endpoint again on one connection, for the latency without
    /// queueing (0: skip)
    #[arg(long, value_name = "N", default_value_t = 500, help_heading = MEASUREMENT)]
    pub unloaded_requests: usize,

    /// Export only the attributions of the last N days (from = now - N days) instead of
    /// all of them
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i64).range(1..=90),
          help_heading = MEASUREMENT)]
    pub export_days: Option<i64>,

    /// Keep ClickHouse and the API running this long after the report (their URLs are
    /// printed, and a file that ends the wait when removed), to look into the data by hand
    #[arg(long, value_name = "SECONDS", value_parser = positive(), help_heading = MEASUREMENT)]
    pub hold: Option<u64>,

    // `--record`, `--doc`, `--bin-dir`, `--partitions` (listed last in `--help`).
    #[command(flatten)]
    pub common: BenchArgs,
}

/// A positive integer.
fn positive() -> RangedU64ValueParser<u64> {
    RangedU64ValueParser::new().range(1..)
}

/// A positive count.
fn positive_size() -> RangedU64ValueParser<usize> {
    RangedU64ValueParser::new().range(1..)
}

/// A number >= 0 (a Zipf exponent).
fn exponent(value: &str) -> Result<f64> {
    value
        .parse::<f64>()
        .ok()
        .filter(|s| *s >= 0.0)
        .ok_or_else(|| format!("takes a number >= 0, not {value:?}"))
}

/// A percentage, 0 to 100.
fn percentage(value: &str) -> Result<f64> {
    value
        .parse::<f64>()
        .ok()
        .filter(|p| (0.0..=100.0).contains(p))
        .ok_or_else(|| format!("takes a percentage, not {value:?}"))
}

impl Options {
    /// The release binary `name` (under `--bin-dir`), or how to build it.
    pub fn binary(&self, name: &str) -> Result<PathBuf> {
        self.common.binary(name, BUILD)
    }

    /// Share of clicks confirmed, 0 to 1.
    pub fn confirmed(&self) -> f64 {
        self.confirmed_pct / 100.0
    }

    /// Share of clicks deleted, 0 to 1.
    pub fn deleted(&self) -> f64 {
        self.deleted_pct / 100.0
    }

    pub fn merge_wait(&self) -> Duration {
        Duration::from_secs(self.merge_wait)
    }

    /// `--hold`, zero when not given.
    pub fn hold(&self) -> Duration {
        Duration::from_secs(self.hold.unwrap_or(0))
    }

    /// The command line as given (for the report).
    pub fn command_line() -> String {
        let mut line = String::from("./scripts/bench-reads.sh");
        for arg in std::env::args().skip(1) {
            line.push(' ');
            line.push_str(&arg);
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn defaults_and_every_flag_the_script_documents() {
        Options::command().debug_assert();
        let options = Options::try_parse_from(["bench_reads"]).unwrap();
        assert!(!options.common.record);
        assert_eq!(options.common.partitions, 6);
        assert_eq!(
            (options.attributions, options.mentors, options.days),
            (10_000_000, 10_000, 400)
        );
        assert_eq!((options.confirmed(), options.deleted()), (0.1, 0.01));
        assert_eq!(options.zipf, 1.0);
        assert_eq!(options.merge_wait(), Duration::from_secs(900));
        assert_eq!(options.hold(), Duration::ZERO);
        assert_eq!(options.export_days, None);
        assert_eq!(
            (options.requests, options.warm_up, options.connections),
            (2_000, 200, 4)
        );
        assert_eq!(
            (options.what_if_granularity, options.unloaded_requests),
            (0, 500)
        );

        let options = Options::try_parse_from([
            "bench_reads",
            "--record",
            "--attributions",
            "1000000",
            "--mentors",
            "50",
            "--zipf",
            "0",
            "--confirmed-pct",
            "100",
            "--warm-up",
            "0",
            "--unloaded-requests",
            "0",
            "--merge-wait",
            "30",
            "--hold",
            "5",
            "--export-days",
            "7",
            "--bin-dir",
            "/opt/bin",
        ])
        .unwrap();
        assert!(options.common.record);
        assert_eq!((options.attributions, options.mentors), (1_000_000, 50));
        assert_eq!((options.zipf, options.confirmed()), (0.0, 1.0));
        assert_eq!((options.warm_up, options.unloaded_requests), (0, 0));
        assert_eq!(options.merge_wait(), Duration::from_secs(30));
        assert_eq!(options.hold(), Duration::from_secs(5));
        assert_eq!(options.export_days, Some(7));
        assert_eq!(options.common.bin_dir(), PathBuf::from("/opt/bin"));

        for bad in [
            &["--attributions", "0"][..],
            &["--zipf", "-1"],
            &["--deleted-pct", "101"],
            &["--days", "0"],
            &["--hold", "0"],
            &["--export-days", "0"],
            &["--export-days", "91"],
            &["--requests", "x"],
            &["--nope"],
        ] {
            let args = std::iter::once("bench_reads").chain(bad.iter().copied());
            assert!(Options::try_parse_from(args).is_err(), "{bad:?}");
        }
    }
}
