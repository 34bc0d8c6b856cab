//! Pieces the benchmark binaries share: their child processes (with logs), the CPU each
//! process used over a measured window, and recording a report into the benchmark document.

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::services::{ChildGuard, free_port};

type Result<T, E = String> = std::result::Result<T, E>;

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

/// Replaces the block between `<!-- NAME:begin -->` and `<!-- NAME:end -->` in `doc` with
/// `report`, or appends a `## HEADING` section holding it. The rest of the document (the
/// analysis written around each block) is kept.
pub fn record_section(doc: &Path, name: &str, heading: &str, report: &str) -> Result<()> {
    let begin = format!("<!-- {name}:begin -->");
    let end = format!("<!-- {name}:end -->");
    let text = fs::read_to_string(doc).unwrap_or_else(|_| "# Benchmarks\n".to_owned());
    let block = format!("{begin}\n{report}\n{end}");
    let updated = match (text.find(&begin), text.find(&end)) {
        (Some(at), Some(until)) if at < until => {
            format!("{}{block}{}", &text[..at], &text[until + end.len()..])
        }
        _ => format!("{}\n\n## {heading}\n\n{block}\n", text.trim_end()),
    };
    fs::write(doc, updated).map_err(|error| format!("cannot write {}: {error}", doc.display()))
}

/// A plain HTTP/1.1 GET to 127.0.0.1: (status, body). `None` when the service does not
/// answer (within 2 s to connect, 30 s to answer).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

/// Waits until `service` answers 200 on `path`; fails with its log when it dies or when
/// `within` runs out.
pub fn wait_http_ok(service: &mut Service, port: u16, path: &str, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        service.check_alive()?;
        if http_get(port, path).is_some_and(|(status, _)| status == 200) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{} did not answer 200 on {path} within {within:?}; its log:\n{}",
                service.name,
                service.log_tail()
            ));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

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
    fn record_appends_the_section_once_then_replaces_only_the_block() {
        let dir = tempfile::tempdir().unwrap();
        let doc = dir.path().join("BENCHMARKS.md");
        fs::write(
            &doc,
            "# Benchmarks\n\n<!-- edge:begin -->\nedge\n<!-- edge:end -->\n",
        )
        .unwrap();
        record_section(&doc, "reads", "Reads (issue 5)", "first").unwrap();
        let text = fs::read_to_string(&doc).unwrap();
        assert!(
            text.ends_with(
                "## Reads (issue 5)\n\n<!-- reads:begin -->\nfirst\n<!-- reads:end -->\n"
            )
        );
        fs::write(&doc, format!("{text}\nanalysis\n")).unwrap();
        record_section(&doc, "reads", "Reads (issue 5)", "second").unwrap();
        let text = fs::read_to_string(&doc).unwrap();
        assert_eq!(text.matches("## Reads (issue 5)").count(), 1);
        assert!(text.contains("<!-- reads:begin -->\nsecond\n<!-- reads:end -->\n\nanalysis\n"));
        assert!(text.contains("<!-- edge:begin -->\nedge\n<!-- edge:end -->"));
        assert!(!text.contains("first"));
    }
}
