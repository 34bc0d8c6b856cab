//! The Markdown report of both phases and their sweeps.

use std::fmt::Write as _;
use std::time::Duration;

use referral_load_tests::bench::{cpu_line, machine, quantile, thousands};

use crate::freshness::{FreshnessReport, WARM_UP};
use crate::options::Options;
use crate::throughput::ThroughputReport;
use crate::{
    GOAL_FRESHNESS_P99, GOAL_RATE, GOAL_ROWS_PER_SECOND, ISSUE_19_FRESHNESS_P99,
    ISSUE_19_ROWS_PER_SECOND,
};

/// The aggregator's defaults (aggregator/src/config.rs), shown in the report.
const DEFAULT_BATCH: &str = "50000 rows, 33554432 bytes, 250ms; fetch wait 100ms";

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "**not met**" }
}

/// The report of the phases that ran (`None`: not asked for) and their sweeps.
pub fn render(
    options: &Options,
    throughput: Option<&ThroughputReport>,
    sweep: &[(u64, ThroughputReport)],
    freshness: Option<&FreshnessReport>,
    fresh_sweep: &[(String, FreshnessReport)],
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### Aggregator: throughput and freshness ({})\n",
        machine()
    );
    let _ = writeln!(
        out,
        "`./scripts/bench-aggregator.sh{}`: tansu 0.6.0 (memory engine) and ClickHouse 18.16 \
         started fresh for each phase, release builds of `referral-aggregator` and \
         `referral-ingest`, all on this machine. CPU is in cores (1.00 = one core busy), from \
         /proc over the measured window.",
        if options.common.record {
            " --record"
        } else {
            ""
        }
    );
    if let Some(report) = throughput {
        let _ = writeln!(
            out,
            "\n**Throughput.** {} clicks ({} mentors, {} partitions) produced to the topic \
             first ({:.1} s), then `referral-aggregator run` started with `{}`.\n",
            thousands(report.clicks),
            thousands(options.mentors),
            options.common.partitions,
            report.preload.as_secs_f64(),
            options.batch_flags()
        );
        let exact = report.attributions == report.clicks as i64
            && report.daily_clicks == report.clicks as i64;
        let rows = [
            (
                "**rows/s, first stored checkpoint -> caught up**".to_owned(),
                format!(
                    "**{}** (goal >= {}: {}; issue 19's >= {}: {})",
                    thousands(report.rows_per_second as u64),
                    thousands(GOAL_ROWS_PER_SECOND as u64),
                    met(report.rows_per_second >= GOAL_ROWS_PER_SECOND),
                    thousands(ISSUE_19_ROWS_PER_SECOND as u64),
                    met(report.rows_per_second >= ISSUE_19_ROWS_PER_SECOND)
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
                "flush time by phase (state: the state inserts, run concurrently); insert time per flush by table (concurrent inserts summed)".to_owned(),
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
        let _ = writeln!(
            out,
            "\nProfile of the catch-up (`perf record -F 499 -p PID` for {} s from {} s after \
             the aggregator's start; `perf report --no-children --sort comm|sym`, share of \
             each process's samples):\n",
            crate::throughput::PROFILE_FOR.as_secs(),
            crate::throughput::PROFILE_AFTER.as_secs()
        );
        for profile in &report.profiles {
            let _ = writeln!(out, "- {}", profile.line());
        }
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
        let issue_19 =
            p99.is_some_and(|p99| p99 <= ISSUE_19_FRESHNESS_P99) && at_rate && visible_all;
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
            options.poll().as_millis()
        );
        let mut other = format!("{}", report.load.non_created());
        if !report.load.other_status.is_empty() {
            let _ = write!(other, " {:?}", report.load.other_status);
        }
        let rows = [
            (
                "**freshness p50 / p99 / max (ms)**".to_owned(),
                format!(
                    "**{} / {} / {}** (goal p99 <= {} ms at {} clicks/s: {}; issue 19's <= {} ms: {})",
                    ms(quantile(&sorted, 0.5)),
                    ms(p99),
                    ms(sorted.last().copied()),
                    GOAL_FRESHNESS_P99.as_millis(),
                    thousands(GOAL_RATE),
                    met(goal),
                    ISSUE_19_FRESHNESS_P99.as_millis(),
                    met(issue_19)
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
                "flush time by phase (state: the state inserts, run concurrently); insert time per flush by table (concurrent inserts summed)".to_owned(),
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
