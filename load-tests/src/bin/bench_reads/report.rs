//! The Markdown report: the data, the latency per endpoint against the goal, the exports,
//! the server side of each endpoint, the what-if replay, and the checks.

use std::fmt::Write as _;
use std::fs;
use std::time::Duration;

use referral_load_tests::bench::{cpu_line, machine, quantile, thousands};
use referral_schemas::Timestamp;

use crate::GOAL_P99;
use crate::checks::Checks;
use crate::data::Dataset;
use crate::endpoints::Endpoint;
use crate::export::{ExportRun, GOAL_ROWS_PER_SECOND, mib};
use crate::latency::Phase;
use crate::options::Options;
use crate::server_side::{ServerRequest, ServerSide};

/// The list size up to which the API reads a page without time windows: a copy of
/// `WINDOWLESS_MAX` in pipeline/src/store/clickhouse/reader.rs, shown in the report.
const WINDOWLESS_MAX: u64 = 20_000;

/// The 1, 5 and 15 minute load averages, as /proc/loadavg prints them.
pub fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" / ")
        })
        .unwrap_or_else(|| "?".to_owned())
}

pub fn per_second(count: u64, time: Duration) -> u64 {
    (count as f64 / time.as_secs_f64().max(1e-9)) as u64
}

/// Microseconds as milliseconds, 1 decimal.
pub fn ms(micros: Option<u64>) -> String {
    micros.map_or_else(|| "-".to_owned(), |us| format!("{:.1}", us as f64 / 1000.0))
}

/// Mean statements per request.
fn statements(requests: &[ServerRequest]) -> f64 {
    requests.iter().map(|r| r.statements).sum::<u64>() as f64 / requests.len().max(1) as f64
}

/// "p50 / p99" of the server's elapsed time per request, in ms.
fn server_ms(requests: &[ServerRequest]) -> String {
    let mut elapsed: Vec<u64> = requests.iter().map(|r| (r.elapsed * 1e6) as u64).collect();
    elapsed.sort_unstable();
    format!(
        "{} / {}",
        ms(quantile(&elapsed, 0.5)),
        ms(quantile(&elapsed, 0.99))
    )
}

/// One cell of the what-if table, or "-" when the variant does not apply.
fn what_if_cell(requests: &[ServerRequest]) -> String {
    if requests.is_empty() {
        return "-".to_owned();
    }
    let mut rows: Vec<u64> = requests.iter().map(|r| r.rows_read).collect();
    rows.sort_unstable();
    format!(
        "{:.1}; {}; {}",
        statements(requests),
        thousands(quantile(&rows, 0.5).unwrap_or(0)),
        server_ms(requests)
    )
}

pub struct Report<'a> {
    pub options: &'a Options,
    pub data: &'a Dataset,
    pub merges: (Duration, bool),
    pub parts: Vec<(String, u64, u64, u64)>,
    pub load_average: String,
    pub measurement_started: Timestamp,
    pub results: &'a [(Endpoint, Phase, Option<Phase>)],
    pub exports: &'a [ExportRun],
    pub checks: &'a Checks,
    pub server_side: &'a [(Endpoint, ServerSide)],
    /// How long copying the tables for the what-if figures took.
    pub copied: Option<Duration>,
    /// `index_granularity` of the tables read.
    pub granularities: Vec<(&'static str, u64)>,
    pub runtime: Duration,
}

impl Report<'_> {
    pub fn render(&self) -> String {
        let (options, data) = (self.options, self.data);
        let all_met = self
            .results
            .iter()
            .all(|(_, phase, _)| phase.p99().is_some_and(|p99| p99 <= GOAL_P99));
        let mut out = String::new();
        let _ = writeln!(
            out,
            "### Reads: {} attributions in ClickHouse 18.16 ({})\n",
            thousands(data.clicks),
            machine()
        );
        let load = &data.load;
        let top = data.mentor_clicks.first().copied().unwrap_or(0);
        let last = data.mentor_clicks.last().copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "`{}` ({:.0} min in all). ClickHouse 18.16 and tansu started fresh; `referral-aggregator \
             migrate`; the data written by the production writer as a library (`plan::plan`, \
             `write_state`, `commit`), oldest first; then `referral-api` (release, production \
             mode: Kafka + ClickHouse, rate limits off), all on this machine.\n",
            Options::command_line(),
            self.runtime.as_secs_f64() / 60.0
        );
        let _ = writeln!(
            out,
            "**Data.** {} clicks over {} mentors (Zipf s = {}: the top mentor has {} live clicks, \
             the last {}), `occurred_at` evenly over the last {} days, {} confirmed ({:.0}%), {} \
             deleted ({:.0}%): {} live attributions. Written in {:.0} s ({} attributions/s \
             overall): {} click flushes of {} in {:.0} s ({} clicks/s), {} command flushes \
             ({} commands, codes included) in {:.0} s. Then {:.0} s of background merges ({}); \
             active parts when measured: {}. `index_granularity`: {}.\n",
            thousands(data.clicks),
            thousands(options.mentors as u64),
            options.zipf,
            thousands(top),
            thousands(last),
            options.days,
            thousands(data.confirmed),
            options.confirmed_pct,
            thousands(data.deleted),
            options.deleted_pct,
            thousands(data.live),
            load.total.as_secs_f64(),
            thousands(per_second(data.clicks, load.total)),
            load.click_flushes,
            thousands(options.flush_rows),
            load.click_time.as_secs_f64(),
            thousands(per_second(data.clicks, load.click_time)),
            load.command_flushes,
            thousands(load.commands),
            load.command_time.as_secs_f64(),
            self.merges.0.as_secs_f64(),
            if self.merges.1 {
                "settled: no merge running for 5 s"
            } else {
                "**not settled** within --merge-wait"
            },
            self.parts
                .iter()
                .map(|(table, parts, rows, bytes)| format!(
                    "{table} {parts} ({} rows, {} MiB)",
                    thousands(*rows),
                    thousands(bytes / (1024 * 1024))
                ))
                .collect::<Vec<_>>()
                .join(", "),
            self.granularities
                .iter()
                .map(|(table, granularity)| format!("{table} {}", thousands(*granularity)))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let newest_age = (self.measurement_started.as_millis() - data.newest_live.0) / 60_000;
        let _ = writeln!(
            out,
            "**Latency** over HTTP/1.1 keep-alive, {} connections, closed loop, {} timed \
             requests per endpoint after {} untimed, random targets (then {} more on one \
             connection: the latency without queueing); every answer checked \
             against the generated data (status, id, list total, page size, mentor, all_time \
             totals; a series' every bucket: a local midnight or hour with the zone's offset, \
             consecutive, covering the period, holding exactly the mentor's generated clicks \
             by `occurred_at` and conversions by `confirmed_at`; the top 10 row by row against \
             the generated leaderboard by conversions). Series and top-10 targets: mentors \
             half from the top 100, half uniform; the 48-hour series asks `from`/`to` (48 h \
             before the targets were made; there is no named 48 h period). Load average before measuring (1/5/15 min): {} (the merges just ended; \
             other work shares this machine). The newest click was {newest_age} min old at the \
             start. Goal: p99 <= {} ms for each.\n",
            options.connections,
            thousands(options.requests as u64),
            thousands(options.warm_up as u64),
            thousands(options.unloaded_requests as u64),
            self.load_average,
            GOAL_P99.as_millis()
        );
        let _ = writeln!(
            out,
            "| endpoint | p50 ms | p99 ms | max ms | req/s | p99 <= {} ms | one connection: p50 / p99 ms | wrong answers | CPU (cores) |\n|---|---|---|---|---|---|---|---|---|",
            GOAL_P99.as_millis()
        );
        for (endpoint, phase, unloaded) in self.results {
            let sorted = phase.sorted();
            let single = unloaded.as_ref().map_or_else(
                || "-".to_owned(),
                |single| {
                    let sorted = single.sorted();
                    format!(
                        "{} / {}",
                        ms(quantile(&sorted, 0.5)),
                        ms(quantile(&sorted, 0.99))
                    )
                },
            );
            let wrong = phase.wrong
                + phase.errors
                + unloaded
                    .as_ref()
                    .map_or(0, |single| single.wrong + single.errors);
            let first_wrong = phase.first_wrong.as_ref().or(unloaded
                .as_ref()
                .and_then(|single| single.first_wrong.as_ref()));
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {:.0} | {} | {single} | {wrong}{} | {} |",
                endpoint.label(),
                ms(quantile(&sorted, 0.5)),
                ms(quantile(&sorted, 0.99)),
                ms(sorted.last().copied()),
                phase.per_second,
                if phase.p99().is_some_and(|p99| p99 <= GOAL_P99) {
                    "met"
                } else {
                    "**not met**"
                },
                first_wrong
                    .map(|why| format!(" (first: {why})"))
                    .unwrap_or_default(),
                cpu_line(&phase.cpu)
            );
        }
        let _ = writeln!(
            out,
            "\n**Goal** (p99 <= {} ms for every endpoint): {}.\n",
            GOAL_P99.as_millis(),
            if all_met { "met" } else { "**not met**" }
        );
        self.render_exports(&mut out);
        let _ = writeln!(
            out,
            "**Server side.** The SQL each request runs (built by `queries.rs`; the list pages \
             replay the reader's `newest_first`: a list of at most {} read in one query, a \
             longer one within growing windows 1 h, 1 d, 30 d, 365 d, then all), rendered and \
             run over ClickHouse's HTTP interface one at a time with `FORMAT JSON`, for {} \
             random targets per endpoint; rows read and elapsed from the answer's statistics, \
             summed per request. The time series are not replayed: the reader decides their \
             reads per request (hourly totals, and per 15-minute slot the hours a bucket \
             boundary cuts), not one query of `queries.rs`; their figures are the latency \
             above.\n",
            thousands(WINDOWLESS_MAX),
            options.sql_samples
        );
        let _ = writeln!(
            out,
            "| endpoint | statements per request (mean) | rows read per request p50 / max | server ms per request p50 / p99 |\n|---|---|---|---|"
        );
        for (endpoint, figures) in self.server_side {
            let requests = &figures.as_is;
            let mut rows: Vec<u64> = requests.iter().map(|r| r.rows_read).collect();
            rows.sort_unstable();
            let _ = writeln!(
                out,
                "| {} | {:.1} | {} / {} | {} |",
                endpoint.label(),
                statements(requests),
                thousands(quantile(&rows, 0.5).unwrap_or(0)),
                thousands(rows.last().copied().unwrap_or(0)),
                server_ms(requests),
            );
        }
        let copies = self
            .copied
            .map(|copied| (copied, options.what_if_granularity));
        let current = self
            .granularities
            .iter()
            .find(|(table, _)| *table == "attributions_by_mentor")
            .map_or(0, |(_, granularity)| *granularity);
        let _ = writeln!(
            out,
            "\n**What if** (not what the API runs today): the same replay with a mentor's page \
             that starts at the day where its daily totals (`mentor_totals` grain 'day'; their \
             sum is `pagination.total`, read today with another query on the same rows) put its \
             20th newest click: 2 statements per page whatever the mentor's size{}. The \
             variants take turns per target. Cells: statements per request; rows read p50; \
             server ms p50 / p99.\n",
            copies.map_or_else(String::new, |(copied, granularity)| format!(
                "; and copies of `attributions`, `attributions_by_mentor` and \
                 `attributions_by_time` with `index_granularity = {granularity}` instead of \
                 {current} (each active part copied as one part with merges stopped: the same \
                 part layout; {:.0} s)",
                copied.as_secs_f64()
            ))
        );
        match copies {
            Some((_, granularity)) => {
                let _ = writeln!(
                    out,
                    "| endpoint | as is | page start from daily totals | index_granularity {granularity} | both |\n|---|---|---|---|---|"
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "| endpoint | as is | page start from daily totals |\n|---|---|---|"
                );
            }
        }
        for (endpoint, figures) in self.server_side {
            if figures.guided.is_empty() && figures.copies.is_empty() {
                continue;
            }
            let mut row = format!(
                "| {} | {} | {} |",
                endpoint.label(),
                what_if_cell(&figures.as_is),
                what_if_cell(&figures.guided),
            );
            if copies.is_some() {
                let _ = write!(
                    row,
                    " {} | {} |",
                    what_if_cell(&figures.copies),
                    what_if_cell(&figures.copies_guided)
                );
            }
            let _ = writeln!(out, "{row}");
        }
        let checks = self.checks;
        let _ = writeln!(
            out,
            "\n**Checks.** Totals (all_time and 30d) of {} mentors (half from the top 100) equal \
             a direct `countIf` over `attributions_by_mentor FINAL` and the generated counts: {}. \
             Deleted ids answered 404: {} of {}. `count()` of live rows in `attributions FINAL`: \
             {} (generated: {}; the query took {:.1} s).",
            checks.mentors,
            if checks.mismatches.is_empty() {
                "all equal".to_owned()
            } else {
                format!(
                    "**{} differences** (first: {})",
                    checks.mismatches.len(),
                    checks.mismatches[0]
                )
            },
            checks.deleted_not_found,
            checks.deleted_asked,
            thousands(u64::try_from(checks.live_rows).unwrap_or(0)),
            thousands(data.live),
            checks.live_count_time.as_secs_f64()
        );
        out.trim_end().to_owned()
    }

    /// The exports: one row per format, against the goal.
    fn render_exports(&self, out: &mut String) {
        let Some(first) = self.exports.first() else {
            return;
        };
        let what = match self.options.export_days {
            Some(days) => format!(
                "the {} live attributions of the last {days} days (`from` = now - {days} d)",
                thousands(first.expected)
            ),
            None => format!("all {} live attributions", thousands(first.expected)),
        };
        let _ = writeln!(
            out,
            "**Export** (`GET /export?format=...`): {what}, each format over one connection, \
             the body read as it streams (rows counted at each newline, the body never held \
             whole); every row checked: newest first, each strictly after the one before by \
             (`occurred_at`, id), so none twice, the first the newest live click, the count \
             the generated one. Rows/s over the whole transfer (request to the body's end). \
             referral-api's resident memory (VmRSS from /proc) sampled every 100 ms: before \
             the request, the peak while streaming, and 1 s after the end. Goal: >= {} rows/s \
             with flat memory.\n",
            thousands(GOAL_ROWS_PER_SECOND)
        );
        let _ = writeln!(
            out,
            "| format | rows | MiB sent | seconds | first byte ms | rows/s | >= {} rows/s | referral-api RSS before / peak / after MiB | wrong rows | CPU (cores) |\n|---|---|---|---|---|---|---|---|---|---|",
            thousands(GOAL_ROWS_PER_SECOND)
        );
        let rss = |kib: Option<u64>| kib.map_or_else(|| "?".to_owned(), mib);
        for run in self.exports {
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {:.1} | {} | {} | {} | {} / {} / {} ({} samples) | {}{} | {} |",
                run.format.as_str(),
                thousands(run.rows),
                run.bytes as f64 / (1024.0 * 1024.0),
                run.elapsed.as_secs_f64(),
                ms(run
                    .first_byte
                    .map(|at| u64::try_from(at.as_micros()).unwrap_or(u64::MAX))),
                thousands(run.rows_per_second()),
                if run.goal_met() { "met" } else { "**not met**" },
                rss(run.rss_before),
                rss(run.rss_peak),
                rss(run.rss_after),
                run.rss_samples,
                run.wrong,
                run.first_wrong
                    .as_ref()
                    .map(|why| format!(" (first: {why})"))
                    .unwrap_or_default(),
                cpu_line(&run.cpu)
            );
        }
        let _ = writeln!(
            out,
            "\n**Goal** (export >= {} rows/s, every row right): {}.\n",
            thousands(GOAL_ROWS_PER_SECOND),
            if self.exports.iter().all(ExportRun::goal_met) {
                "met"
            } else {
                "**not met**"
            }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_as_the_report_prints_them() {
        assert_eq!(ms(Some(12_345)), "12.3");
        assert_eq!(ms(None), "-");
        assert_eq!(per_second(1_000, Duration::from_millis(500)), 2_000);
        let requests = [
            ServerRequest {
                statements: 1,
                rows_read: 10,
                elapsed: 0.002,
            },
            ServerRequest {
                statements: 2,
                rows_read: 30,
                elapsed: 0.004,
            },
        ];
        assert_eq!(statements(&requests), 1.5);
        assert_eq!(server_ms(&requests), "2.0 / 4.0");
        assert_eq!(what_if_cell(&requests), "1.5; 10; 2.0 / 4.0");
        assert_eq!(what_if_cell(&[]), "-");
    }
}
