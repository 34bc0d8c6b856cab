//! Where a process spends its CPU during a measured window: `perf record -p` on its pid,
//! then `perf report`'s top threads and functions, for the report next to the figure they
//! explain. `-p` follows only the threads that exist when it attaches, so a window starts
//! once a process is up (a system-wide recording filtered by pid was tried: it mislabels
//! threads). Sampled without call graphs (cheap at 499 Hz; self time is what a report
//! shows); the profiler's own failure is a note instead of an error, so a machine without
//! `perf` still gets its figures.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Samples per second per CPU.
const FREQUENCY: &str = "499";
/// `perf record -p` fails at once when a thread of the process ends while it attaches (a
/// runtime's blocking threads come and go): it is tried again after this, this many times.
const ATTACH_CHECK: Duration = Duration::from_millis(200);
const ATTACH_ATTEMPTS: u32 = 4;

/// A `perf record` of one process, running for a fixed time.
pub struct Profile {
    name: String,
    pid: String,
    /// When the window ends (a recorder started again records what is left of it).
    until: Instant,
    recorder: Option<Child>,
    data: PathBuf,
    failure: Option<String>,
}

/// What a profile found: shares of the process's samples, biggest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProfileSummary {
    pub name: String,
    /// By thread name (`comm`): which of a process's threads works.
    pub threads: Vec<(f64, String)>,
    /// By function (self time), `[k]` marking the kernel's.
    pub functions: Vec<(f64, String)>,
    /// Why there is nothing, when there is nothing.
    pub note: Option<String>,
}

impl Profile {
    /// Starts `perf record` on process `pid` (named `name`) for `length`; its data goes
    /// into `dir`. Call [`Profile::attached`] on the profiles started together.
    pub fn start(name: &str, pid: &str, length: Duration, dir: &Path) -> Self {
        let mut profile = Self {
            name: name.to_owned(),
            pid: pid.to_owned(),
            until: Instant::now() + length,
            recorder: None,
            data: dir.join(format!("perf-{pid}.data")),
            failure: None,
        };
        profile.spawn();
        profile
    }

    fn spawn(&mut self) {
        let seconds = format!(
            "{:.1}",
            self.until
                .saturating_duration_since(Instant::now())
                .as_secs_f64()
        );
        let spawned = Command::new("perf")
            .args(["record", "-q", "-F", FREQUENCY, "-p", &self.pid, "-o"])
            .arg(&self.data)
            .args(["--", "sleep", &seconds])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match spawned {
            Ok(child) => self.recorder = Some(child),
            Err(error) => self.failure = Some(format!("perf could not start: {error}")),
        }
    }

    /// Checks that each recorder attached (a recorder that failed at once is started again,
    /// for what is left of its window); returns the profiles.
    pub fn attached(mut profiles: Vec<Self>) -> Vec<Self> {
        for _ in 1..ATTACH_ATTEMPTS {
            std::thread::sleep(ATTACH_CHECK);
            let mut retried = false;
            for profile in &mut profiles {
                let failed = profile
                    .recorder
                    .as_mut()
                    .and_then(|recorder| recorder.try_wait().ok().flatten())
                    .is_some_and(|status| !status.success());
                if failed {
                    profile.recorder = None;
                    profile.spawn();
                    retried = true;
                }
            }
            if !retried {
                break;
            }
        }
        profiles
    }

    /// Waits for the recording to end (its data stays for [`Profile::summarize`]).
    pub fn wait(&mut self) {
        if let Some(mut recorder) = self.recorder.take() {
            match recorder.wait() {
                Ok(status) if status.success() => {}
                Ok(status) => {
                    self.failure = Some(format!(
                        "perf record ended with {status}: the process ended, one of its \
                         threads ended while perf attached, or kernel.perf_event_paranoid \
                         forbids it"
                    ));
                }
                Err(error) => self.failure = Some(format!("perf record: {error}")),
            }
        }
    }

    /// Waits for the recording, then summarizes it (`top` entries of each list). `perf
    /// report` resolves symbols for seconds of CPU: call this after the measured load.
    pub fn summarize(mut self, top: usize) -> ProfileSummary {
        self.wait();
        let mut summary = ProfileSummary {
            name: self.name.clone(),
            ..ProfileSummary::default()
        };
        if let Some(failure) = &self.failure {
            summary.note = Some(failure.clone());
            return summary;
        }
        match (self.report("comm"), self.report("sym")) {
            (Ok(threads), Ok(functions)) => {
                summary.threads = threads.into_iter().take(top).collect();
                summary.functions = functions.into_iter().take(top).collect();
                if summary.functions.is_empty() {
                    summary.note = Some("no samples".to_owned());
                }
            }
            (Err(error), _) | (_, Err(error)) => summary.note = Some(error),
        }
        summary
    }

    fn report(&self, sort: &str) -> Result<Vec<(f64, String)>, String> {
        let output = Command::new("perf")
            .args([
                "report",
                "--stdio",
                "--no-children",
                "-q",
                "--sort",
                sort,
                "-i",
            ])
            .arg(&self.data)
            .output()
            .map_err(|error| format!("perf report: {error}"))?;
        if !output.status.success() {
            return Err(format!(
                "perf report failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(parse_report(&String::from_utf8_lossy(&output.stdout)))
    }
}

/// A profile dropped before its end (an error path) stops its recorder; its data goes.
impl Drop for Profile {
    fn drop(&mut self) {
        if let Some(mut recorder) = self.recorder.take() {
            let _ = recorder.kill();
            let _ = recorder.wait();
        }
        let _ = std::fs::remove_file(&self.data);
    }
}

/// `perf report --stdio -q` lines (`  36.12%  rdk:broker1`, `   3.01%  [.] memmove`) as
/// (share, name), in the report's order (biggest first).
pub fn parse_report(text: &str) -> Vec<(f64, String)> {
    text.lines()
        .filter_map(|line| {
            let (share, rest) = line.trim_start().split_once('%')?;
            let share: f64 = share.trim().parse().ok()?;
            let name = rest.trim();
            let name = match name.split_once("] ") {
                Some((kind, function)) if kind.ends_with("[k") => format!("{function} [k]"),
                Some((kind, function)) if kind.ends_with("[.") => function.to_owned(),
                _ => name.to_owned(),
            };
            Some((share, name.trim().to_owned())).filter(|(_, name)| !name.is_empty())
        })
        .collect()
}

impl ProfileSummary {
    /// `**name**: threads t 60.0%, ...; functions f 3.0%, ...` for one line of a report.
    pub fn line(&self) -> String {
        if let Some(note) = &self.note {
            return format!("{}: no profile ({note})", self.name);
        }
        let list = |entries: &[(f64, String)]| {
            entries
                .iter()
                .map(|(share, name)| format!("{} {share:.1}%", name.replace('|', "/")))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "**{}**: threads {}; functions {}",
            self.name,
            list(&self.threads),
            list(&self.functions)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lines_become_shares_and_names() {
        let text = "\n    36.12%  rdk:broker1\n    60.00%  tokio-runtime-w\n\
                    \n     3.01%  [.] memmove\n     9.00%  [k] _raw_spin_unlock_irqrestore\n\
                    # comment\n     0.5%  \n";
        assert_eq!(
            parse_report(text),
            vec![
                (36.12, "rdk:broker1".to_owned()),
                (60.0, "tokio-runtime-w".to_owned()),
                (3.01, "memmove".to_owned()),
                (9.0, "_raw_spin_unlock_irqrestore [k]".to_owned()),
            ]
        );
    }

    #[test]
    fn a_profile_without_samples_says_why_in_its_line() {
        let summary = ProfileSummary {
            name: "tansu".to_owned(),
            note: Some("perf could not start".to_owned()),
            ..ProfileSummary::default()
        };
        assert_eq!(summary.line(), "tansu: no profile (perf could not start)");
        let summary = ProfileSummary {
            name: "ingest".to_owned(),
            threads: vec![(60.0, "tokio-runtime-w".to_owned())],
            functions: vec![(3.0, "a|b".to_owned())],
            note: None,
        };
        assert_eq!(
            summary.line(),
            "**ingest**: threads tokio-runtime-w 60.0%; functions a/b 3.0%"
        );
    }
}
