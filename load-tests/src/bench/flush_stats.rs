//! The aggregator's own account of its flushes, scraped from its /metrics (Prometheus
//! text): flushes, rows per flush, the share of flush time in each phase, and the mean
//! insert per table.

use std::fmt::Write as _;

use super::{http_get, thousands};

/// Sum (over label sets) of a metric's value in Prometheus text, filtered by a label.
fn metric(text: &str, name: &str, label: Option<&str>) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let series_name = series.split('{').next()?;
            if series_name != name || label.is_some_and(|label| !series.contains(label)) {
                return None;
            }
            value.parse::<f64>().ok()
        })
        .sum()
}

/// The aggregator's own account of its flushes, from /metrics.
#[derive(Clone, Debug, Default)]
pub struct FlushStats {
    flushes: f64,
    rows: f64,
    flush_seconds: f64,
    /// Seconds per flush phase (`referral_flush_phase_duration_seconds`), in flush order.
    phase_seconds: Vec<(&'static str, f64)>,
    /// Seconds per table's inserts; the state inserts of a flush run concurrently, so
    /// these may sum to more than the flush.
    insert_seconds: Vec<(String, f64)>,
}

impl FlushStats {
    /// The account so far; empty when the aggregator does not answer.
    pub fn scrape(port: u16) -> Self {
        Self::try_scrape(port).unwrap_or_default()
    }

    /// The account so far, or `None` when the aggregator does not answer.
    pub fn try_scrape(port: u16) -> Option<Self> {
        let Some((200, text)) = http_get(port, "/metrics") else {
            return None;
        };
        let tables = [
            "command_verdicts",
            "webhook_events",
            "attributions",
            "attributed_members",
            "referral_codes",
            "mentor_totals",
        ];
        Some(Self {
            flushes: metric(&text, "referral_flush_duration_seconds_count", None),
            rows: metric(&text, "referral_batch_rows_sum", None),
            flush_seconds: metric(&text, "referral_flush_duration_seconds_sum", None),
            phase_seconds: ["read", "plan", "state", "announce", "commit"]
                .into_iter()
                .map(|phase| {
                    let label = format!("phase=\"{phase}\"");
                    let seconds = metric(
                        &text,
                        "referral_flush_phase_duration_seconds_sum",
                        Some(&label),
                    );
                    (phase, seconds)
                })
                .collect(),
            insert_seconds: tables
                .iter()
                .map(|table| {
                    let label = format!("table=\"{table}\"");
                    let seconds = metric(
                        &text,
                        "referral_clickhouse_insert_duration_seconds_sum",
                        Some(&label),
                    );
                    ((*table).to_owned(), seconds)
                })
                .filter(|(_, seconds)| *seconds > 0.0)
                .collect(),
        })
    }

    /// What happened between `earlier` and this scrape (both of the same aggregator life).
    pub fn since(&self, earlier: &Self) -> Self {
        let minus = |earlier: &[(String, f64)], name: &str, now: f64| {
            let before = earlier
                .iter()
                .find(|(other, _)| other == name)
                .map_or(0.0, |(_, before_seconds)| *before_seconds);
            (now - before).max(0.0)
        };
        let earlier_phases: Vec<(String, f64)> = earlier
            .phase_seconds
            .iter()
            .map(|(phase, seconds)| ((*phase).to_owned(), *seconds))
            .collect();
        Self {
            flushes: (self.flushes - earlier.flushes).max(0.0),
            rows: (self.rows - earlier.rows).max(0.0),
            flush_seconds: (self.flush_seconds - earlier.flush_seconds).max(0.0),
            phase_seconds: self
                .phase_seconds
                .iter()
                .map(|(phase, seconds)| (*phase, minus(&earlier_phases, phase, *seconds)))
                .collect(),
            insert_seconds: self
                .insert_seconds
                .iter()
                .map(|(table, seconds)| {
                    (
                        table.clone(),
                        minus(&earlier.insert_seconds, table, *seconds),
                    )
                })
                .filter(|(_, seconds)| *seconds > 0.0)
                .collect(),
        }
    }

    /// Flushes counted (in a window: flushes in it).
    pub fn flushes(&self) -> u64 {
        self.flushes as u64
    }

    pub fn summary(&self) -> String {
        if self.flushes == 0.0 {
            return "(no /metrics)".to_owned();
        }
        format!(
            "{} flushes, {} rows per flush, {:.0} ms per flush (mean)",
            thousands(self.flushes as u64),
            thousands((self.rows / self.flushes) as u64),
            self.flush_seconds / self.flushes * 1000.0
        )
    }

    /// Each phase's share of the flush time, then each table's mean insert.
    pub fn insert_shares(&self) -> String {
        if self.flush_seconds == 0.0 || self.flushes == 0.0 {
            return "-".to_owned();
        }
        let mut out = String::new();
        for (phase, seconds) in &self.phase_seconds {
            let _ = write!(
                out,
                "{phase} {:.0}%, ",
                seconds / self.flush_seconds * 100.0
            );
        }
        out.truncate(out.trim_end_matches(", ").len());
        let inserts: Vec<String> = self
            .insert_seconds
            .iter()
            .map(|(table, seconds)| format!("{table} {:.0}", seconds / self.flushes * 1000.0))
            .collect();
        if !inserts.is_empty() {
            let _ = write!(out, "; insert ms per flush: {}", inserts.join(", "));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_a_metric_over_its_series() {
        let text = "# HELP x\nx_sum{table=\"a\"} 1.5\nx_sum{table=\"b\"} 2\nx_count 3\n";
        assert_eq!(metric(text, "x_sum", Some("table=\"a\"")), 1.5);
        assert_eq!(metric(text, "x_sum", None), 3.5);
        assert_eq!(metric(text, "x_count", None), 3.0);
        assert_eq!(metric(text, "x", None), 0.0);
    }

    #[test]
    fn summarises_flushes() {
        let stats = FlushStats {
            flushes: 4.0,
            rows: 200_000.0,
            flush_seconds: 2.0,
            phase_seconds: vec![
                ("read", 0.2),
                ("plan", 0.3),
                ("state", 1.2),
                ("commit", 0.3),
            ],
            insert_seconds: vec![
                ("attributions".to_owned(), 1.0),
                ("mentor_totals".to_owned(), 0.3),
            ],
        };
        assert_eq!(
            stats.summary(),
            "4 flushes, 50,000 rows per flush, 500 ms per flush (mean)"
        );
        assert_eq!(
            stats.insert_shares(),
            "read 10%, plan 15%, state 60%, commit 15%; insert ms per flush: attributions 250, mentor_totals 75"
        );
        assert_eq!(FlushStats::default().summary(), "(no /metrics)");
        let earlier = FlushStats {
            flushes: 1.0,
            rows: 50_000.0,
            flush_seconds: 0.5,
            phase_seconds: vec![("read", 0.1), ("state", 0.4)],
            insert_seconds: vec![("attributions".to_owned(), 0.25)],
        };
        let window = stats.since(&earlier);
        assert_eq!(
            window.summary(),
            "3 flushes, 50,000 rows per flush, 500 ms per flush (mean)"
        );
        assert_eq!(
            window.insert_shares(),
            "read 7%, plan 20%, state 53%, commit 20%; insert ms per flush: attributions 250, mentor_totals 100"
        );
    }
}
