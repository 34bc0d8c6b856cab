//! The run report: one JSON document (for tools and trend lines), one Markdown page (for
//! people), and the timeline chart (SVG), written side by side.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use hdrhistogram::Histogram;
use serde::Serialize;

pub use crate::chart::{Marker, SecondSample};
use crate::driver::{Recorder, Tally};
use crate::verify::Verification;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    pub fn of(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| (us as f64 / 10.0).round() / 100.0;
        Self {
            count: histogram.len(),
            p50_ms: ms(histogram.value_at_quantile(0.5)),
            p90_ms: ms(histogram.value_at_quantile(0.9)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            p999_ms: ms(histogram.value_at_quantile(0.999)),
            max_ms: ms(histogram.max()),
        }
    }

    pub fn cells(&self) -> String {
        format!(
            "{} | {} | {} | {} | {}",
            self.p50_ms, self.p90_ms, self.p99_ms, self.p999_ms, self.max_ms
        )
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RequestSummary {
    pub sent: u64,
    /// By HTTP status.
    pub statuses: BTreeMap<u16, u64>,
    pub timeouts: u64,
    pub transport_errors: u64,
    pub first_transport_error: Option<String>,
    pub latency: Percentiles,
}

impl RequestSummary {
    pub fn of(tally: &Tally) -> Self {
        Self {
            sent: tally.sent(),
            statuses: tally.statuses.clone(),
            timeouts: tally.timeouts,
            transport_errors: tally.transport_errors,
            first_transport_error: tally.first_transport_error.clone(),
            latency: tally.percentiles(),
        }
    }

    pub fn status(&self, status: u16) -> u64 {
        self.statuses.get(&status).copied().unwrap_or(0)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TimelinePoint {
    pub second: u32,
    pub succeeded: u64,
    pub failed: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FaultEvent {
    pub at_seconds: f64,
    pub what: String,
}

/// Everything one run measured and verified.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub scenario: String,
    pub topology: String,
    pub started_at: String,
    /// "open loop, 500 clicks/s" or "max throughput, 64 connections".
    pub load: String,
    pub seconds: f64,
    pub mentors: usize,
    pub codes: usize,
    /// Click POSTs.
    pub clicks: RequestSummary,
    /// Redirect link GETs (`/r/{code}`), pixel GETs (`/p/{code}.gif`), and HEAD previews of
    /// either (never recorded).
    pub redirects: RequestSummary,
    pub pixels: RequestSummary,
    pub heads: RequestSummary,
    /// Redirect GETs whose `Location` carried the click's id, and those without (not
    /// recorded, the visitor redirected anyway).
    pub redirects_recorded: u64,
    pub redirects_unrecorded: u64,
    /// Of the click POSTs: invalid ones (each must get its 4xx), verbatim repeats.
    pub invalid_sent: u64,
    pub repeated_sent: u64,
    /// Valid clicks (POSTs and link GETs) by a returning visitor, and with a bot's user
    /// agent (or none).
    pub revisits_sent: u64,
    pub bot_clicks_sent: u64,
    /// Clicks acknowledged (a POST's 201, a redirect's id) per second of load.
    pub acked_per_second: f64,
    pub commands: RequestSummary,
    pub command_outcomes: BTreeMap<String, u64>,
    pub faults: Vec<FaultEvent>,
    pub verification: Verification,
    /// Peak resident memory (VmHWM) per process, bytes.
    pub peak_rss: Vec<(String, u64)>,
    /// Cores used over the load phase, per process (1.0 = one core busy throughout; a
    /// process restarted during the load counts its first life only).
    pub cpu_cores: Vec<(String, f64)>,
    /// Where the processes spent their CPU during the profile window (`perf`, one line per
    /// process), and the aggregator's flushes over it; empty without `--profile-at`.
    pub profile: Vec<String>,
    pub timeline: Vec<TimelinePoint>,
}

impl RunReport {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        scenario: &str,
        topology: &str,
        load: String,
        seconds: f64,
        (mentors, codes): (usize, usize),
        recorder: &Recorder,
        faults: Vec<FaultEvent>,
        verification: Verification,
        peak_rss: Vec<(String, u64)>,
    ) -> Self {
        let clicks = RequestSummary::of(&recorder.clicks);
        let acked = clicks.status(201) + recorder.redirects_recorded;
        let acked_per_second = acked as f64 / seconds.max(1e-9);
        Self {
            scenario: scenario.to_owned(),
            topology: topology.to_owned(),
            started_at: now_rfc3339(),
            load,
            seconds,
            mentors,
            codes,
            clicks,
            redirects: RequestSummary::of(&recorder.redirects),
            pixels: RequestSummary::of(&recorder.pixels),
            heads: RequestSummary::of(&recorder.heads),
            redirects_recorded: recorder.redirects_recorded,
            redirects_unrecorded: recorder.redirects_unrecorded,
            invalid_sent: recorder.invalid_sent,
            repeated_sent: recorder.repeated_sent,
            revisits_sent: recorder.revisits_sent,
            bot_clicks_sent: recorder.bot_clicks_sent,
            acked_per_second,
            commands: RequestSummary::of(&recorder.commands),
            command_outcomes: recorder.command_outcomes.clone(),
            faults,
            verification,
            peak_rss,
            cpu_cores: Vec::new(),
            profile: Vec::new(),
            // The last, partial second would read as a drop in throughput.
            timeline: recorder
                .timeline()
                .into_iter()
                .filter(|sample| f64::from(sample.second) < seconds.floor())
                .map(|sample| TimelinePoint {
                    second: sample.second,
                    succeeded: sample.succeeded,
                    failed: sample.failed,
                    p50_ms: sample.p50_ms,
                    p99_ms: sample.p99_ms,
                })
                .collect(),
        }
    }

    pub fn with_cpu(mut self, cpu: Vec<(&'static str, f64)>) -> Self {
        self.cpu_cores = cpu
            .into_iter()
            .map(|(name, cores)| (name.to_owned(), (cores * 100.0).round() / 100.0))
            .collect();
        self
    }

    /// "referral-ingest 0.31, ..." for a table cell.
    pub fn cpu_text(&self) -> String {
        let parts: Vec<String> = self
            .cpu_cores
            .iter()
            .map(|(name, cores)| format!("{name} {cores:.2}"))
            .collect();
        parts.join(", ")
    }

    pub fn chart(&self) -> String {
        let samples: Vec<SecondSample> = self
            .timeline
            .iter()
            .map(|point| SecondSample {
                second: point.second,
                succeeded: point.succeeded,
                failed: point.failed,
                p50_ms: point.p50_ms,
                p99_ms: point.p99_ms,
            })
            .collect();
        let markers: Vec<Marker> = self
            .faults
            .iter()
            .map(|fault| Marker {
                at_seconds: fault.at_seconds,
                label: fault.what.clone(),
            })
            .collect();
        let title = format!("referral-load {}: {}", self.scenario, self.load);
        crate::chart::timeline_svg(&title, &samples, &markers, 960, 520)
    }

    /// The Markdown page; `chart` is the SVG's file name next to it, if written.
    pub fn markdown(&self, chart: Option<&str>) -> String {
        let mut out = String::new();
        let v = &self.verification;
        let _ = writeln!(
            out,
            "### referral-load {}: {} ({})\n",
            self.scenario, self.load, self.topology
        );
        let _ = writeln!(
            out,
            "Verifier: `{}` ({}).\n",
            v.line(),
            if v.passed() { "passed" } else { "FAILED" }
        );
        let _ = writeln!(out, "| measure | value |\n|---|---|");
        let row = |out: &mut String, name: &str, value: String| {
            let _ = writeln!(out, "| {name} | {value} |");
        };
        row(&mut out, "started", self.started_at.clone());
        row(&mut out, "load seconds", format!("{:.1}", self.seconds));
        row(
            &mut out,
            "population",
            format!("{} mentors (Zipf), {} codes", self.mentors, self.codes),
        );
        row(
            &mut out,
            "click POSTs sent",
            format!(
                "{} ({})",
                self.clicks.sent,
                statuses(
                    &self.clicks.statuses,
                    self.clicks.timeouts,
                    self.clicks.transport_errors
                )
            ),
        );
        row(
            &mut out,
            "of which invalid / verbatim repeats",
            format!("{} / {}", self.invalid_sent, self.repeated_sent),
        );
        let summary = |name: &str, requests: &RequestSummary| {
            format!(
                "{name} {} ({})",
                requests.sent,
                statuses(
                    &requests.statuses,
                    requests.timeouts,
                    requests.transport_errors
                )
            )
        };
        row(
            &mut out,
            "link requests sent",
            format!(
                "{}; {}; {}",
                summary("redirect GET", &self.redirects),
                summary("pixel GET", &self.pixels),
                summary("HEAD preview", &self.heads)
            ),
        );
        row(
            &mut out,
            "redirects with / without the click's id",
            format!(
                "{} / {}",
                self.redirects_recorded, self.redirects_unrecorded
            ),
        );
        row(
            &mut out,
            "valid clicks by returning visitors / with a bot's user agent",
            format!("{} / {}", self.revisits_sent, self.bot_clicks_sent),
        );
        row(
            &mut out,
            "acknowledged (201 or redirect id) per second",
            format!("{:.0}", self.acked_per_second),
        );
        row(
            &mut out,
            "commands sent",
            format!(
                "{} ({})",
                self.commands.sent,
                statuses(
                    &self.commands.statuses,
                    self.commands.timeouts,
                    self.commands.transport_errors
                )
            ),
        );
        for fault in &self.faults {
            row(
                &mut out,
                "fault",
                format!("{:.1} s: {}", fault.at_seconds, fault.what),
            );
        }
        row(
            &mut out,
            "drain after the load",
            format!("{:.1} s", v.drain_seconds),
        );
        row(
            &mut out,
            "verdicts of the stored clicks",
            format!(
                "counted {}, duplicate {}, bot {}; {} mismatches ({})",
                v.counted, v.duplicate, v.bot, v.verdict_mismatches, v.verdict_check
            ),
        );
        row(
            &mut out,
            "stored without an id",
            format!(
                "{} pixel clicks, {} others (allowed); {} unexplained",
                v.pixel_stored, v.unacked_stored, v.unexplained
            ),
        );
        row(
            &mut out,
            "verified",
            format!(
                "{} acknowledged clicks in {} mentors' exports ({} also read by id), \
                 listings, verdicts and totals in {:.1} s; {} with a command of unknown \
                 outcome; {} inconsistent; {} wrong answers during the load",
                v.acked,
                v.mentors_checked,
                v.read_by_id,
                v.verify_seconds,
                v.uncertain,
                v.inconsistent,
                v.violations
            ),
        );
        let _ = writeln!(
            out,
            "\n| latency (ms) | count | p50 | p90 | p99 | p99.9 | max |\n|---|---|---|---|---|---|---|"
        );
        for (name, latency) in [
            (
                "click POST (open loop: from when it was due)",
                &self.clicks.latency,
            ),
            ("redirect GET", &self.redirects.latency),
            ("pixel GET", &self.pixels.latency),
            ("HEAD preview", &self.heads.latency),
            ("confirm / delete", &self.commands.latency),
        ] {
            let _ = writeln!(out, "| {name} | {} | {} |", latency.count, latency.cells());
        }
        if !self.command_outcomes.is_empty() {
            let outcomes: Vec<String> = self
                .command_outcomes
                .iter()
                .map(|(what, count)| format!("{what}: {count}"))
                .collect();
            let _ = writeln!(out, "\nCommand answers: {}.", outcomes.join(", "));
        }
        if !self.cpu_cores.is_empty() {
            let _ = writeln!(out, "\nCPU over the load (cores): {}.", self.cpu_text());
        }
        if !self.peak_rss.is_empty() {
            let rss: Vec<String> = self
                .peak_rss
                .iter()
                .map(|(name, bytes)| format!("{name} {:.0} MiB", *bytes as f64 / 1048576.0))
                .collect();
            let _ = writeln!(out, "\nPeak RSS (VmHWM): {}.", rss.join(", "));
        }
        if !self.profile.is_empty() {
            let _ = writeln!(out, "\nProfile:\n");
            for line in &self.profile {
                let _ = writeln!(out, "- {line}");
            }
        }
        if !v.problems.is_empty() {
            let _ = writeln!(out, "\nProblems found:\n");
            for problem in &v.problems {
                let _ = writeln!(out, "- {problem}");
            }
        }
        if let Some(chart) = chart {
            let _ = writeln!(out, "\n![throughput and latency over time]({chart})");
        }
        out
    }

    /// Writes `NAME.json`, `NAME.md` and `NAME.svg` into `dir`.
    pub fn write(&self, dir: &Path, name: &str) -> Result<(), String> {
        fs::create_dir_all(dir)
            .map_err(|error| format!("cannot create {}: {error}", dir.display()))?;
        let json = serde_json::to_string_pretty(self).map_err(|error| error.to_string())?;
        let chart = format!("{name}.svg");
        for (file, text) in [
            (format!("{name}.json"), json),
            (format!("{name}.md"), self.markdown(Some(&chart))),
            (chart.clone(), self.chart()),
        ] {
            let path = dir.join(&file);
            fs::write(&path, text)
                .map_err(|error| format!("cannot write {}: {error}", path.display()))?;
        }
        Ok(())
    }
}

fn statuses(statuses: &BTreeMap<u16, u64>, timeouts: u64, transport: u64) -> String {
    let mut parts: Vec<String> = statuses
        .iter()
        .map(|(status, count)| format!("{status}: {count}"))
        .collect();
    if timeouts > 0 {
        parts.push(format!("timed out: {timeouts}"));
    }
    if transport > 0 {
        parts.push(format!("connection errors: {transport}"));
    }
    parts.join(", ")
}

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|now| {
            now.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}
