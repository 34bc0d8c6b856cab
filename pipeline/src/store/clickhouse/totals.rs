//! The rows of `mentor_totals`: signed totals deltas and checkpoint increments, in one table
//! so that one insert stores both (see [`super`] for why that makes the flush exactly-once).

use clickhouse::Row;
use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use crate::plan::{Counts, Plan};
use referral_schemas::query::week_monday;

/// `mentor_totals.grain` (an `Enum8`, sent as its number).
pub mod grain {
    pub const HOUR: i8 = 1;
    pub const DAY: i8 = 2;
    pub const CHECKPOINT: i8 = 3;
    /// Every mentor's recorded attributions per day, under the empty mentor id.
    pub const GLOBAL_DAY: i8 = 4;
    /// Clicks with the verdict `duplicate` and `bot` (in `clicks`), per hour and day.
    pub const DUPLICATE_HOUR: i8 = 5;
    pub const DUPLICATE_DAY: i8 = 6;
    pub const BOT_HOUR: i8 = 7;
    pub const BOT_DAY: i8 = 8;
    /// The 'day' rows' counted clicks and conversions keyed by day first
    /// ([`time_day_key`]): what leaderboards read.
    pub const TIME_DAY: i8 = 9;
    /// The 'hour' rows' counted clicks and conversions keyed by hour first
    /// ([`time_hour_key`]).
    pub const TIME_HOUR: i8 = 10;
    /// The 'day' rows' counted clicks and conversions summed per ISO week, keyed by the
    /// week's Monday first ([`time_day_key`]): whole weeks of a leaderboard's period.
    pub const TIME_WEEK: i8 = 11;
    /// Reversed conversions (in `clicks`), per hour and day of their `confirmed_at`.
    pub const REVERSAL_HOUR: i8 = 12;
    pub const REVERSAL_DAY: i8 = 13;
    /// One zero row per commit insert on a cluster, keyed by the flush's token: makes
    /// distinct flushes distinct blocks to replicated deduplication (migration 9).
    pub const FLUSH: i8 = 14;
}

/// The 'flush' row of a commit insert named `token` (its offset ranges).
pub fn flush_marker(token: &str) -> TotalsRow {
    TotalsRow {
        mentor_id: token.to_owned(),
        grain: grain::FLUSH,
        bucket: 0,
        clicks: 0,
        conversions: 0,
        next_offset: 0,
    }
}

/// The `mentor_id` of a 'time_hour' row: the hour in 10 digits, `:`, the mentor.
pub fn time_hour_key(hour: i64, mentor_id: &str) -> String {
    format!("{hour:010}:{mentor_id}")
}

/// Where a 'time_hour' key's mentor starts (1-based, for ClickHouse's `substring`).
pub const TIME_HOUR_MENTOR_FROM: usize = 12;

/// The `mentor_id` of a 'time_day' row (or a 'time_week' row, with the week's Monday): the
/// day in 8 digits, `:`, the mentor. Within the grain the table's sort key then orders
/// rows by day.
pub fn time_day_key(day: i64, mentor_id: &str) -> String {
    format!("{day:08}:{mentor_id}")
}

/// Where a 'time_day' key's mentor starts (1-based, for ClickHouse's `substring`).
pub const TIME_DAY_MENTOR_FROM: usize = 10;

/// `mentor_totals`: a signed delta, or a checkpoint increment.
#[derive(Clone, Debug, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct TotalsRow {
    /// The mentor; for checkpoint rows, the topic.
    pub mentor_id: String,
    pub grain: i8,
    /// Hours or days since the epoch; for checkpoint rows, the partition.
    pub bucket: i64,
    pub clicks: i64,
    pub conversions: i64,
    pub next_offset: i64,
}

/// The rows of one mentor's bucket: counted clicks and conversions under `counted`, and a
/// row per filtered verdict, and for reversals, that changed.
fn bucket_rows(
    rows: &mut Vec<TotalsRow>,
    mentor_id: &str,
    bucket: i64,
    sums: Counts,
    [counted, duplicate, bot, reversal]: [i8; 4],
) {
    let mut push = |grain, clicks, conversions| {
        rows.push(TotalsRow {
            mentor_id: mentor_id.to_owned(),
            grain,
            bucket,
            clicks,
            conversions,
            next_offset: 0,
        });
    };
    if (sums.clicks, sums.conversions) != (0, 0) {
        push(counted, sums.clicks, sums.conversions);
    }
    if sums.duplicates != 0 {
        push(duplicate, sums.duplicates, 0);
    }
    if sums.bots != 0 {
        push(bot, sums.bots, 0);
    }
    if sums.reversals != 0 {
        push(reversal, sums.reversals, 0);
    }
}

/// Every row a flush's commit-point insert carries: per-hour and per-day deltas by verdict,
/// every mentor's recorded attributions per day (the unfiltered list's count) and one
/// checkpoint increment per partition whose checkpoint moved (the increments sum to the
/// next offset to apply).
pub fn rows(plan: &Plan) -> Vec<TotalsRow> {
    let mut rows = Vec::new();
    let hourly = [
        grain::HOUR,
        grain::DUPLICATE_HOUR,
        grain::BOT_HOUR,
        grain::REVERSAL_HOUR,
    ];
    let daily = [
        grain::DAY,
        grain::DUPLICATE_DAY,
        grain::BOT_DAY,
        grain::REVERSAL_DAY,
    ];
    for delta in &plan.deltas {
        bucket_rows(
            &mut rows,
            &delta.mentor_id,
            delta.hour,
            delta.counts(),
            hourly,
        );
        if (delta.clicks, delta.conversions) != (0, 0) {
            rows.push(TotalsRow {
                mentor_id: time_hour_key(delta.hour, &delta.mentor_id),
                grain: grain::TIME_HOUR,
                bucket: delta.hour,
                clicks: delta.clicks,
                conversions: delta.conversions,
                next_offset: 0,
            });
        }
    }
    let mut weekly: BTreeMap<(i64, &str), (i64, i64)> = BTreeMap::new();
    let daily_deltas = plan.daily_deltas();
    for ((mentor_id, day), sums) in &daily_deltas {
        bucket_rows(&mut rows, mentor_id, *day, *sums, daily);
        if (sums.clicks, sums.conversions) != (0, 0) {
            rows.push(TotalsRow {
                mentor_id: time_day_key(*day, mentor_id),
                grain: grain::TIME_DAY,
                bucket: *day,
                clicks: sums.clicks,
                conversions: sums.conversions,
                next_offset: 0,
            });
            let week = weekly.entry((week_monday(*day), mentor_id)).or_default();
            week.0 += sums.clicks;
            week.1 += sums.conversions;
        }
    }
    for ((monday, mentor_id), (clicks, conversions)) in weekly {
        if (clicks, conversions) != (0, 0) {
            rows.push(TotalsRow {
                mentor_id: time_day_key(monday, mentor_id),
                grain: grain::TIME_WEEK,
                bucket: monday,
                clicks,
                conversions,
                next_offset: 0,
            });
        }
    }
    for (day, sums) in plan.global_daily_deltas() {
        rows.push(TotalsRow {
            mentor_id: String::new(),
            grain: grain::GLOBAL_DAY,
            bucket: day,
            clicks: sums.recorded(),
            conversions: sums.conversions,
            next_offset: 0,
        });
    }
    for moved in &plan.checkpoints {
        rows.push(TotalsRow {
            mentor_id: moved.topic.clone(),
            grain: grain::CHECKPOINT,
            bucket: i64::from(moved.partition),
            clicks: 0,
            conversions: 0,
            next_offset: moved.to - moved.from,
        });
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Delta;

    /// Counted clicks and conversions are stored twice in one insert: by mentor (totals)
    /// and by time (leaderboards); filtered clicks by mentor only.
    #[test]
    fn by_time_rows_carry_counted_clicks_and_conversions_of_their_hour_day_and_week() {
        let plan = Plan {
            deltas: vec![
                Delta {
                    mentor_id: "m1".into(),
                    hour: 49,
                    clicks: 2,
                    duplicates: 1,
                    bots: 0,
                    conversions: 1,
                    reversals: 0,
                },
                Delta {
                    mentor_id: "m1".into(),
                    hour: 50,
                    clicks: 0,
                    duplicates: 3,
                    bots: 1,
                    conversions: 0,
                    reversals: 0,
                },
                // Day 4 (a Monday) is in the next week; day 3 is in day 2's week.
                Delta {
                    mentor_id: "m1".into(),
                    hour: 4 * 24 + 1,
                    clicks: 5,
                    duplicates: 0,
                    bots: 0,
                    conversions: 0,
                    reversals: 0,
                },
                Delta {
                    mentor_id: "m1".into(),
                    hour: 3 * 24,
                    clicks: 1,
                    duplicates: 0,
                    bots: 0,
                    conversions: 2,
                    reversals: 0,
                },
            ],
            ..Plan::default()
        };
        let rows = rows(&plan);
        let by_time: Vec<(&str, i8, i64, i64, i64)> = rows
            .iter()
            .filter(|row| {
                [grain::TIME_DAY, grain::TIME_HOUR, grain::TIME_WEEK].contains(&row.grain)
            })
            .map(|row| {
                (
                    row.mentor_id.as_str(),
                    row.grain,
                    row.bucket,
                    row.clicks,
                    row.conversions,
                )
            })
            .collect();
        assert_eq!(
            by_time,
            vec![
                ("0000000049:m1", grain::TIME_HOUR, 49, 2, 1),
                ("0000000097:m1", grain::TIME_HOUR, 97, 5, 0),
                ("0000000072:m1", grain::TIME_HOUR, 72, 1, 2),
                ("00000002:m1", grain::TIME_DAY, 2, 2, 1),
                ("00000003:m1", grain::TIME_DAY, 3, 1, 2),
                ("00000004:m1", grain::TIME_DAY, 4, 5, 0),
                ("-0000003:m1", grain::TIME_WEEK, -3, 3, 3),
                ("00000004:m1", grain::TIME_WEEK, 4, 5, 0),
            ]
        );
        assert_eq!(&time_day_key(2, "m1")[TIME_DAY_MENTOR_FROM - 1..], "m1");
        assert_eq!(&time_hour_key(49, "m1")[TIME_HOUR_MENTOR_FROM - 1..], "m1");
    }
}
