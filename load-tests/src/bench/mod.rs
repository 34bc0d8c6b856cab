//! Pieces the benchmark drivers (`bench_aggregator`, `bench_reads`, `referral-load bench`)
//! share:
//!
//! - [`args`]: the flags every driver takes ([`BenchArgs`], flattened into each driver's
//!   clap parser) and finding the service binaries;
//! - [`process`]: their child processes (with logs), `referral-aggregator migrate`, and the
//!   CPU each process used over a measured window;
//! - [`net`]: plain GETs to a service, waiting for it to be ready, and keep-alive
//!   connections for load;
//! - [`record`]: recording a report into the benchmark document;
//! - [`profile`]: `perf` on a process during a measured window, its top threads and functions;
//! - [`flush_stats`]: the aggregator's own account of its flushes, from its /metrics;
//! - here: figures as a report prints them, and the async runtime of a driver.

pub mod args;
pub mod flush_stats;
pub mod net;
pub mod process;
pub mod profile;
pub mod record;

use std::fs;
use std::process::Command;
use std::thread;

pub use args::BenchArgs;
pub use flush_stats::FlushStats;
pub use net::{connect, http_get, wait_http_ok};
pub use process::{CpuWindow, Service, clock_ticks_per_second, cpu_ticks, migrate, pid_text};
pub use profile::{Profile, ProfileSummary};
pub use record::record_section;

type Result<T, E = String> = std::result::Result<T, E>;

/// `name cores, ...` for a report.
pub fn cpu_line(cpu: &[(&'static str, f64)]) -> String {
    cpu.iter()
        .map(|(name, cores)| format!("{name} {cores:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `1234567` as `1,234,567`.
pub fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// The `q` quantile (nearest rank) of sorted values.
pub fn quantile<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// `DATE, N cores, CPU MODEL` of this run, for a report's heading.
pub fn machine() -> String {
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
    format!("{date}, {cores} cores, {cpu_model}")
}

/// A single-threaded runtime for the async parts of a benchmark binary.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| format!("cannot start the async runtime: {error}"))
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
        assert_eq!(thousands(0), "0");
        assert_eq!(cpu_line(&[("a", 1.0), ("b", 0.255)]), "a 1.00, b 0.26");
        assert!(machine().contains(" cores, "));
    }
}
