//! What the benchmark asks of ClickHouse directly: queries in the database, counts,
//! background merges, active parts, index granularity, and copies of the attribution tables
//! with another `index_granularity` (for the what-if figures).

use std::thread;
use std::time::{Duration, Instant};

use referral_load_tests::services::ClickHouseServer;

use crate::{DATABASE, Result};

/// Merges must stay at zero this long before the data counts as settled.
const MERGES_QUIET: Duration = Duration::from_secs(5);

/// `sql` in the benchmark's database.
pub fn query(clickhouse: &ClickHouseServer, sql: &str) -> Result<String> {
    clickhouse.try_query_with(sql, &[("database", DATABASE)])
}

pub fn numbers(clickhouse: &ClickHouseServer, sql: &str) -> Result<Vec<i64>> {
    let text = query(clickhouse, sql)?;
    text.split_whitespace()
        .map(|field| {
            field
                .parse::<i64>()
                .map_err(|_| format!("{sql} answered {text:?}"))
        })
        .collect()
}

/// Waits until no merge has run for [`MERGES_QUIET`], at most `within`: (time waited,
/// whether it settled).
pub fn wait_for_merges(
    clickhouse: &ClickHouseServer,
    within: Duration,
) -> Result<(Duration, bool)> {
    let started = Instant::now();
    let mut quiet_since: Option<Instant> = None;
    loop {
        let running = numbers(clickhouse, "SELECT count() FROM system.merges")?;
        if running.first().copied().unwrap_or(0) == 0 {
            let since = *quiet_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= MERGES_QUIET {
                return Ok((started.elapsed(), true));
            }
        } else {
            quiet_since = None;
        }
        if started.elapsed() > within {
            return Ok((started.elapsed(), false));
        }
        thread::sleep(Duration::from_millis(500));
    }
}

/// Active parts, rows and bytes on disk per table of the database.
pub fn parts(clickhouse: &ClickHouseServer) -> Result<Vec<(String, u64, u64, u64)>> {
    let text = query(
        clickhouse,
        "SELECT table, count(), sum(rows), sum(bytes) FROM system.parts \
         WHERE active AND database = 'referral' GROUP BY table ORDER BY table",
    )?;
    text.lines()
        .map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            let number = |index: usize| -> Result<u64> {
                fields
                    .get(index)
                    .and_then(|field| field.parse().ok())
                    .ok_or_else(|| format!("unexpected system.parts line {line:?}"))
            };
            Ok((fields[0].to_owned(), number(1)?, number(2)?, number(3)?))
        })
        .collect()
}

/// The tables read with `FINAL`, and their sort keys.
pub const COPIED_TABLES: [(&str, &str); 3] = [
    ("attributions", "id"),
    ("attributions_by_mentor", "(mentor_id, occurred_at, id)"),
    ("attributions_by_time", "(occurred_at, id)"),
];

/// Copies of [`COPIED_TABLES`] with another `index_granularity`, part for part (each active
/// part inserted as one block, so one part; merges stopped first), so the copies have the
/// same part layout. Returns the time it took.
pub fn copy_with_granularity(clickhouse: &ClickHouseServer, granularity: u32) -> Result<Duration> {
    let started = Instant::now();
    query(clickhouse, "SYSTEM STOP MERGES")?;
    for (table, key) in COPIED_TABLES {
        let copy = format!("{table}_g{granularity}");
        query(
            clickhouse,
            &format!(
                "CREATE TABLE {copy} AS {table} ENGINE = ReplacingMergeTree(version) \
                 ORDER BY {key} SETTINGS index_granularity = {granularity}"
            ),
        )?;
        let parts = query(
            clickhouse,
            &format!(
                "SELECT name FROM system.parts WHERE active AND database = '{DATABASE}' \
                 AND table = '{table}' ORDER BY name"
            ),
        )?;
        for part in parts.lines() {
            clickhouse.try_query_with(
                &format!("INSERT INTO {copy} SELECT * FROM {table} WHERE _part = '{part}'"),
                &[
                    ("database", DATABASE),
                    ("max_insert_block_size", "1000000000"),
                    ("min_insert_block_size_rows", "1000000000"),
                    ("min_insert_block_size_bytes", "1000000000000"),
                ],
            )?;
        }
        let counts = numbers(
            clickhouse,
            &format!(
                "SELECT countIf(table = '{table}'), countIf(table = '{copy}') FROM system.parts \
                 WHERE active AND database = '{DATABASE}'"
            ),
        )?;
        if counts.first() != counts.get(1) {
            return Err(format!(
                "{copy} has {:?} parts, {table} {:?}: the layouts differ",
                counts.get(1),
                counts.first()
            ));
        }
    }
    Ok(started.elapsed())
}

/// A table's `index_granularity`, from `SHOW CREATE TABLE`.
pub fn index_granularity(clickhouse: &ClickHouseServer, table: &str) -> Result<u64> {
    let text = query(clickhouse, &format!("SHOW CREATE TABLE {table}"))?;
    text.split("index_granularity = ")
        .nth(1)
        .and_then(|rest| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|digits| digits.parse().ok())
        })
        .ok_or_else(|| format!("no index_granularity in {text:?}"))
}
