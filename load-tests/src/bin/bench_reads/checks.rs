//! Independent checks against ClickHouse: the API's totals (all_time and 30d) of some
//! mentors against direct counts and the generated data, deleted ids answering 404, and the
//! live rows of `attributions FINAL`.

use std::time::{Duration, Instant};

use referral_load_tests::bench::http_get;
use referral_load_tests::services::ClickHouseServer;
use referral_schemas::Timestamp;
use referral_schemas::timestamp::{DAY_MS, HOUR_MS};
use serde_json::Value;

use crate::clickhouse::numbers;
use crate::data::{Dataset, Rng, mentor_id};
use crate::options::Options;
use crate::{HEAVY_MENTORS, PREFIX, Result};

/// Mentors whose totals are compared with a direct count in ClickHouse.
const CHECKED_MENTORS: usize = 20;

#[derive(Debug, Default)]
pub struct Checks {
    /// Mentors whose all_time and 30d answers were compared with a direct count.
    pub mentors: usize,
    /// Comparisons that differed, with the first difference.
    pub mismatches: Vec<String>,
    /// `count()` of live rows in `attributions FINAL`, and how long it took.
    pub live_rows: i64,
    pub live_count_time: Duration,
    /// Deleted ids asked for: (asked, answered 404).
    pub deleted_asked: usize,
    pub deleted_not_found: usize,
}

pub fn direct_checks(
    clickhouse: &ClickHouseServer,
    api_port: u16,
    data: &Dataset,
    options: &Options,
    rng: &mut Rng,
) -> Result<Checks> {
    let mut checks = Checks::default();
    for index in 0..CHECKED_MENTORS {
        let rank = if index % 2 == 0 {
            rng.index(HEAVY_MENTORS.min(options.mentors))
        } else {
            rng.index(options.mentors)
        };
        let mentor = mentor_id(rank);
        // Retried once if an hour boundary passed between the API's answer and the count.
        for _ in 0..2 {
            let now = Timestamp::now();
            let from_ms = now.saturating_sub_millis(30 * DAY_MS).hour_bucket() * HOUR_MS;
            let api = |query: &str| -> Result<(i64, i64)> {
                let path = format!("{PREFIX}/mentor/{mentor}/total{query}");
                let (status, body) =
                    http_get(api_port, &path).ok_or_else(|| format!("GET {path} failed"))?;
                let json: Value = serde_json::from_str(&body)
                    .map_err(|_| format!("GET {path}: {status} {body}"))?;
                Ok((
                    json["total_clicks"].as_i64().unwrap_or(-1),
                    json["total_conversions"].as_i64().unwrap_or(-1),
                ))
            };
            let all_time = api("")?;
            let last_30d = api("?period=30d")?;
            let counted = numbers(
                clickhouse,
                &format!(
                    "SELECT countIf(deleted_at IS NULL), \
                     countIf(deleted_at IS NULL AND status = 'confirmed'), \
                     countIf(deleted_at IS NULL AND occurred_at >= {from_ms}), \
                     countIf(deleted_at IS NULL AND status = 'confirmed' \
                             AND ifNull(confirmed_at, 0) >= {from_ms}) \
                     FROM attributions_by_mentor FINAL WHERE mentor_id = '{mentor}'"
                ),
            )?;
            if Timestamp::now().hour_bucket() != now.hour_bucket() {
                continue;
            }
            let generated = (
                i64::try_from(data.mentor_clicks[rank]).unwrap_or(-1),
                i64::try_from(data.mentor_conversions[rank]).unwrap_or(-1),
            );
            let compare = [
                ("all_time, API vs count", all_time, (counted[0], counted[1])),
                ("all_time, API vs generated", all_time, generated),
                ("30d, API vs count", last_30d, (counted[2], counted[3])),
            ];
            for (what, got, want) in compare {
                if got != want {
                    checks
                        .mismatches
                        .push(format!("{mentor} {what}: {got:?} != {want:?}"));
                }
            }
            checks.mentors += 1;
            break;
        }
    }
    for (id, _, _) in data
        .sampled
        .iter()
        .filter(|(_, _, deleted)| *deleted)
        .take(20)
    {
        checks.deleted_asked += 1;
        if http_get(api_port, &format!("{PREFIX}/{id}")).is_some_and(|(status, _)| status == 404) {
            checks.deleted_not_found += 1;
        }
    }
    let started = Instant::now();
    checks.live_rows = numbers(
        clickhouse,
        "SELECT count() FROM attributions FINAL WHERE deleted_at IS NULL",
    )?
    .first()
    .copied()
    .unwrap_or(-1);
    checks.live_count_time = started.elapsed();
    Ok(checks)
}
