//! The rows of `mentor_totals`: signed totals deltas and checkpoint increments, in one table
//! so that one insert stores both (see [`super`] for why that makes the flush exactly-once).

use clickhouse::Row;
use serde::{Deserialize, Serialize};

use crate::plan::Plan;

/// `mentor_totals.grain` (an `Enum8`, sent as its number).
pub mod grain {
    pub const HOUR: i8 = 1;
    pub const DAY: i8 = 2;
    pub const CHECKPOINT: i8 = 3;
    /// Every mentor's totals per day, under the empty mentor id.
    pub const GLOBAL_DAY: i8 = 4;
}

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

/// Every row a flush's commit-point insert carries: per-hour and per-day deltas, every
/// mentor's daily totals (the unfiltered list's count) and one checkpoint increment per
/// partition whose checkpoint moved (the increments sum to the next offset to apply).
pub fn rows(plan: &Plan) -> Vec<TotalsRow> {
    let mut rows = Vec::new();
    for delta in &plan.deltas {
        rows.push(TotalsRow {
            mentor_id: delta.mentor_id.clone(),
            grain: grain::HOUR,
            bucket: delta.hour,
            clicks: delta.clicks,
            conversions: delta.conversions,
            next_offset: 0,
        });
    }
    for ((mentor_id, day), (clicks, conversions)) in plan.daily_deltas() {
        rows.push(TotalsRow {
            mentor_id,
            grain: grain::DAY,
            bucket: day,
            clicks,
            conversions,
            next_offset: 0,
        });
    }
    for (day, (clicks, conversions)) in plan.global_daily_deltas() {
        rows.push(TotalsRow {
            mentor_id: String::new(),
            grain: grain::GLOBAL_DAY,
            bucket: day,
            clicks,
            conversions,
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
