//! The drivers' child processes (each with its output in a log file), the one-shot
//! `referral-aggregator migrate`, and the CPU each process used over a measured window
//! (from /proc).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::Result;
use crate::services::{ChildGuard, ClickHouseServer, TansuBroker, free_port};

/// A child process of this benchmark with its output in a log file.
pub struct Service {
    pub name: &'static str,
    process: Option<ChildGuard>,
    log: PathBuf,
}

impl Service {
    pub fn spawn(
        name: &'static str,
        program: &Path,
        args: &[&str],
        env: &[(&str, String)],
        logs: impl AsRef<Path>,
    ) -> Result<Self> {
        let log = logs.as_ref().join(format!("{name}-{}.log", free_port()));
        let file =
            fs::File::create(&log).map_err(|error| format!("cannot create {log:?}: {error}"))?;
        let err = file
            .try_clone()
            .map_err(|error| format!("cannot duplicate a file handle: {error}"))?;
        let mut command = Command::new(program);
        command
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err);
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command
            .spawn()
            .map_err(|error| format!("cannot start {}: {error}", program.display()))?;
        Ok(Self {
            name,
            process: Some(ChildGuard::new(child)),
            log,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ChildGuard::id)
    }

    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// An error naming the process and its log tail if it has ended.
    pub fn check_alive(&mut self) -> Result<()> {
        let exited = self.process.as_mut().and_then(ChildGuard::exited);
        match exited {
            Some(status) => Err(format!(
                "{} exited ({status}); its log:\n{}",
                self.name,
                self.log_tail()
            )),
            None => Ok(()),
        }
    }

    /// Waits for the process to end by itself; an error with its log unless it succeeded.
    pub fn wait_success(mut self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.process.as_mut().and_then(ChildGuard::exited) {
                return if status.success() {
                    Ok(())
                } else {
                    Err(format!(
                        "{} failed ({status}); its log:\n{}",
                        self.name,
                        self.log_tail()
                    ))
                };
            }
            thread::sleep(Duration::from_millis(20));
        }
        Err(format!("{} did not finish within {within:?}", self.name))
    }

    /// SIGTERM, then SIGKILL after 30 s.
    pub fn stop(mut self) {
        if let Some(process) = self.process.take() {
            process.terminate(Duration::from_secs(30));
        }
    }
}

/// CPU time (user + system, all threads) of a process in clock ticks, from /proc.
pub fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at field 3 (state);
    // utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

pub fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU used by named processes over a window, in cores (1.0 = one core busy throughout).
pub struct CpuWindow {
    started: Instant,
    start: Vec<(&'static str, String, u64)>,
}

impl CpuWindow {
    /// `processes`: (name, pid or "self").
    pub fn start(processes: &[(&'static str, String)]) -> Self {
        Self {
            started: Instant::now(),
            start: processes
                .iter()
                .map(|(name, pid)| (*name, pid.clone(), cpu_ticks(pid).unwrap_or(0)))
                .collect(),
        }
    }

    /// A process started inside the window: all its CPU time counts.
    pub fn add_started(&mut self, name: &'static str, pid: String) {
        self.start.push((name, pid, 0));
    }

    pub fn finish(&self) -> Vec<(&'static str, f64)> {
        let seconds = self.started.elapsed().as_secs_f64().max(1e-9);
        let ticks = clock_ticks_per_second();
        self.start
            .iter()
            .map(|(name, pid, start)| {
                let used = cpu_ticks(pid).unwrap_or(*start).saturating_sub(*start);
                (*name, used as f64 / ticks / seconds)
            })
            .collect()
    }
}

pub fn pid_text(pid: Option<u32>) -> String {
    pid.map_or_else(|| "0".to_owned(), |pid| pid.to_string())
}

/// `referral-aggregator migrate` (the binary at `aggregator`) against `broker` and
/// `clickhouse`: creates the topics (with `partitions`) and the tables in `database`.
pub fn migrate(
    aggregator: &Path,
    broker: &TansuBroker,
    clickhouse: &ClickHouseServer,
    database: &str,
    partitions: i32,
    logs: &Path,
) -> Result<()> {
    Service::spawn(
        "referral-aggregator migrate",
        aggregator,
        &["migrate"],
        &[
            ("REFERRAL_KAFKA_BROKERS", broker.address()),
            ("REFERRAL_CLICKHOUSE_URL", clickhouse.http_url()),
            ("REFERRAL_CLICKHOUSE_DATABASE", database.to_owned()),
            ("REFERRAL_KAFKA_PARTITIONS", partitions.to_string()),
        ],
        logs,
    )?
    .wait_success(Duration::from_secs(60))
}
