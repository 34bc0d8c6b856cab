//! What the API reads from SQLite: a small pool of read-only connections on the blocking
//! thread pool. Every read sees the last committed flush.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use referral_schemas::messages::Verdict;
use referral_schemas::query::{AttributionFilter, COUNT_BOUND, HourRange, PageRequest};
use referral_schemas::{Attribution, ReferralCode};
use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params, params_from_iter};

use super::{ATTRIBUTION_COLUMNS, BUSY_TIMEOUT, attribution_from_row, code_from_row};
use std::collections::HashMap;

use referral_schemas::query::RankBy;

use crate::store::span::SlotSpan;
use crate::store::top_window_reads;
use crate::store::{
    AttributionPage, AttributionReader, CodePage, MentorTotals, SLOTS_PER_HOUR, SlotCounts,
    StoreError, TopWindow, rank,
};

/// Read connections kept open at most.
const READ_POOL_MAX: usize = 8;

fn live_attribution(connection: &Connection, id: &str) -> Result<Option<Attribution>, StoreError> {
    let sql = format!(
        "SELECT {ATTRIBUTION_COLUMNS} FROM attributions WHERE id = ?1 AND deleted_at IS NULL"
    );
    let found = connection
        .prepare_cached(&sql)?
        .query_row([id], attribution_from_row)
        .optional()?;
    Ok(found)
}

fn live_code(connection: &Connection, code: &str) -> Result<Option<ReferralCode>, StoreError> {
    Ok(connection
        .prepare_cached(
            "SELECT code, mentor_id, created_at, updated_at, destination_url FROM referral_codes \
             WHERE code = ?1 AND retired = 0",
        )?
        .query_row([code], code_from_row)
        .optional()?)
}

/// Read-only connections for the API, opened on demand and kept for reuse.
#[derive(Clone)]
pub struct SqliteReader {
    path: PathBuf,
    pool: Arc<Mutex<Vec<Connection>>>,
}

impl SqliteReader {
    pub(super) fn new(path: PathBuf) -> Self {
        Self {
            path,
            pool: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Runs `read` on a pooled connection on the blocking thread pool.
    async fn read<T, F>(&self, read: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let reader = self.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = reader
                .pool
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            let connection = match pooled {
                Some(connection) => connection,
                None => reader.open_connection()?,
            };
            let result = read(&connection);
            let mut pool = reader.pool.lock().unwrap_or_else(PoisonError::into_inner);
            if pool.len() < READ_POOL_MAX {
                pool.push(connection);
            }
            result
        })
        .await
        .map_err(|error| StoreError::Task(error.to_string()))?
    }

    fn open_connection(&self) -> Result<Connection, StoreError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let connection = Connection::open_with_flags(&self.path, flags)?;
        connection.busy_timeout(BUSY_TIMEOUT)?;
        Ok(connection)
    }
}

/// WHERE clauses and their bound values for a list filter. Only fixed SQL fragments are
/// ever concatenated; every value is bound.
fn filter_clauses(filter: &AttributionFilter) -> (String, Vec<Value>) {
    let mut clauses = vec!["deleted_at IS NULL"];
    let mut values = Vec::new();
    if let Some(status) = filter.status {
        clauses.push("status = ?");
        values.push(Value::Text(status.as_str().to_owned()));
    }
    if let Some(kind) = filter.kind {
        clauses.push("kind = ?");
        values.push(Value::Text(kind.as_str().to_owned()));
    }
    if let Some(code) = &filter.code {
        clauses.push("code = ?");
        values.push(Value::Text(code.clone()));
    }
    if let Some(mentor_id) = &filter.mentor_id {
        clauses.push("mentor_id = ?");
        values.push(Value::Text(mentor_id.clone()));
    }
    if let Some(from) = filter.from {
        clauses.push("occurred_at >= ?");
        values.push(Value::Integer(from.as_millis()));
    }
    if let Some(to) = filter.to {
        clauses.push("occurred_at < ?");
        values.push(Value::Integer(to.as_millis()));
    }
    if let Some(verdict) = filter.verdict {
        clauses.push("verdict = ?");
        values.push(Value::Text(verdict.as_str().to_owned()));
    }
    if let Some(cursor) = &filter.after {
        // A row value: SQLite seeks the (occurred_at, id) indexes to it (the OR form would
        // scan from the newest row on every page).
        clauses.push("(occurred_at, id) < (?, ?)");
        values.push(Value::Integer(cursor.occurred_at.as_millis()));
        values.push(Value::Text(cursor.id.clone()));
    }
    (clauses.join(" AND "), values)
}

/// One page of the attributions matching `clauses`, newest first, and whether more follow.
fn page_rows(
    connection: &Connection,
    clauses: &str,
    mut bound: Vec<Value>,
    page: PageRequest,
) -> Result<(Vec<Attribution>, bool), StoreError> {
    let page_sql = format!(
        "SELECT {ATTRIBUTION_COLUMNS} FROM attributions WHERE {clauses} \
         ORDER BY occurred_at DESC, id DESC LIMIT ? OFFSET ?"
    );
    // One row past the page: whether another page follows.
    bound.push(Value::Integer(i64::from(page.limit) + 1));
    bound.push(Value::Integer(
        i64::try_from(page.offset()).unwrap_or(i64::MAX),
    ));
    let mut statement = connection.prepare_cached(&page_sql)?;
    let mut attributions = statement
        .query_map(params_from_iter(bound.iter()), attribution_from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    let more = attributions.len() > page.limit as usize;
    attributions.truncate(page.limit as usize);
    Ok((attributions, more))
}

fn sum_totals(
    connection: &Connection,
    sql: &str,
    mentor_id: &str,
    from: Option<i64>,
    to: Option<i64>,
) -> Result<MentorTotals, StoreError> {
    let (sums, reversals): ([i64; 4], i64) = connection.prepare_cached(sql)?.query_row(
        params![mentor_id, from.unwrap_or(i64::MIN), to.unwrap_or(i64::MAX)],
        |row| {
            Ok((
                [row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?],
                row.get(4)?,
            ))
        },
    )?;
    MentorTotals::from_sums(sums, mentor_id)?.with_reversals(reversals, mentor_id)
}

#[async_trait]
impl AttributionReader for SqliteReader {
    async fn attribution(&self, id: &str) -> Result<Option<Attribution>, StoreError> {
        let id = id.to_owned();
        self.read(move |connection| live_attribution(connection, &id))
            .await
    }

    async fn attributions(
        &self,
        filter: &AttributionFilter,
        page: PageRequest,
    ) -> Result<AttributionPage, StoreError> {
        let (clauses, values) = filter_clauses(filter);
        // `total` counts the whole list; a cursor only says where the page starts.
        let whole = AttributionFilter {
            after: None,
            ..filter.clone()
        };
        let (whole_clauses, whole_values) = filter_clauses(&whole);
        // Exact for the unfiltered list and a mentor's list (as the production store's
        // materialized totals are); bounded for any other filter, as in production.
        let only_mentor = AttributionFilter {
            mentor_id: filter.mentor_id.clone(),
            ..AttributionFilter::default()
        };
        let count_sql = if whole == only_mentor {
            format!("SELECT COUNT(*) FROM attributions WHERE {whole_clauses}")
        } else {
            format!(
                "SELECT COUNT(*) FROM (SELECT 1 FROM attributions WHERE {whole_clauses} \
                 LIMIT {COUNT_BOUND})"
            )
        };
        self.read(move |connection| {
            let total: i64 = connection
                .prepare_cached(&count_sql)?
                .query_row(params_from_iter(whole_values.iter()), |row| row.get(0))?;
            let (attributions, more) = page_rows(connection, &clauses, values, page)?;
            Ok(AttributionPage {
                attributions,
                total: u64::try_from(total).unwrap_or(0),
                more,
            })
        })
        .await
    }

    async fn attributions_after(
        &self,
        filter: &AttributionFilter,
        limit: u32,
    ) -> Result<AttributionPage, StoreError> {
        let (clauses, values) = filter_clauses(filter);
        self.read(move |connection| {
            let page = PageRequest { page: 1, limit };
            let (attributions, more) = page_rows(connection, &clauses, values, page)?;
            Ok(AttributionPage {
                attributions,
                total: 0,
                more,
            })
        })
        .await
    }

    async fn top_mentors(
        &self,
        window: TopWindow,
        by: RankBy,
        limit: u32,
    ) -> Result<Vec<(String, MentorTotals)>, StoreError> {
        self.read(move |connection| {
            let mut totals: HashMap<String, MentorTotals> = HashMap::new();
            let mut add = |mentor: String, sums: [i64; 4]| -> Result<(), StoreError> {
                let part = MentorTotals::from_sums(sums, &mentor)?;
                totals.entry(mentor).or_default().add(part);
                Ok(())
            };
            let (hours, ranges) = top_window_reads(window);
            if let Some(hours) = hours {
                let plan = hours.plan();
                let mut parts: Vec<(&str, &str, i64, i64)> = Vec::new();
                if let Some((from, to)) = plan.daily {
                    parts.push((
                        "mentor_daily_totals",
                        "day",
                        from.unwrap_or(i64::MIN),
                        to.unwrap_or(i64::MAX),
                    ));
                }
                for (from, to) in plan.hourly {
                    parts.push(("mentor_hourly_totals", "hour", from, to));
                }
                for (table, bucket, from, to) in parts {
                    let sql = format!(
                        "SELECT mentor_id, SUM(clicks), SUM(duplicates), SUM(bots), \
                         SUM(conversions) FROM {table} WHERE {bucket} >= ?1 AND {bucket} < ?2 \
                         GROUP BY mentor_id"
                    );
                    let mut statement = connection.prepare_cached(&sql)?;
                    let rows = statement.query_map(params![from, to], |row| {
                        Ok((
                            row.get(0)?,
                            [row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?],
                        ))
                    })?;
                    for row in rows {
                        let (mentor, sums) = row?;
                        add(mentor, sums)?;
                    }
                }
            }
            for (from, to) in ranges {
                let mut clicks = connection.prepare_cached(
                    "SELECT mentor_id, SUM(verdict = 'counted'), SUM(verdict = 'duplicate'), \
                     SUM(verdict = 'bot') FROM attributions WHERE deleted_at IS NULL \
                     AND occurred_at >= ?1 AND occurred_at < ?2 GROUP BY mentor_id",
                )?;
                let rows = clicks.query_map(params![from, to], |row| {
                    Ok((row.get(0)?, [row.get(1)?, row.get(2)?, row.get(3)?, 0]))
                })?;
                for row in rows {
                    let (mentor, sums) = row?;
                    add(mentor, sums)?;
                }
                let mut conversions = connection.prepare_cached(
                    "SELECT mentor_id, COUNT(*) FROM attributions WHERE confirmed_at IS NOT NULL \
                     AND deleted_at IS NULL AND reversed_at IS NULL \
                     AND confirmed_at >= ?1 AND confirmed_at < ?2 GROUP BY mentor_id",
                )?;
                let rows = conversions.query_map(params![from, to], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
                })?;
                for row in rows {
                    let (mentor, count) = row?;
                    add(mentor, [0, 0, 0, count])?;
                }
            }
            Ok(rank(totals, by, limit))
        })
        .await
    }

    async fn mentor_slots(
        &self,
        mentor_id: &str,
        span: &SlotSpan,
    ) -> Result<Vec<SlotCounts>, StoreError> {
        let mentor_id = mentor_id.to_owned();
        let reads = span.reads();
        self.read(move |connection| {
            let mut slots: std::collections::BTreeMap<i64, MentorTotals> = Default::default();
            if let Some((from, to)) = reads.hours {
                let mut hours = connection.prepare_cached(
                    "SELECT hour, clicks, duplicates, bots, conversions, reversals \
                     FROM mentor_hourly_totals WHERE mentor_id = ?1 AND hour >= ?2 AND hour < ?3",
                )?;
                let rows =
                    hours.query_map(params![mentor_id, from.unwrap_or(i64::MIN), to], |row| {
                        Ok((
                            row.get::<_, i64>(0)?,
                            [row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?],
                            row.get::<_, i64>(5)?,
                        ))
                    })?;
                for row in rows {
                    let (hour, sums, reversals) = row?;
                    // A fine hour is read per slot; an hour whose deltas cancel out is empty.
                    if reads.fine.contains(&hour) {
                        continue;
                    }
                    let sums = MentorTotals::from_sums(sums, &mentor_id)?
                        .with_reversals(reversals, &mentor_id)?;
                    if sums != MentorTotals::default() {
                        slots.entry(hour * SLOTS_PER_HOUR).or_default().add(sums);
                    }
                }
            }
            // Floor division: instants before 1970 are refused, so both instants are >= 0.
            let mut clicks = connection.prepare_cached(
                "SELECT occurred_at / 900000, verdict, COUNT(*) FROM attributions \
                 WHERE mentor_id = ?1 AND deleted_at IS NULL AND occurred_at >= ?2 \
                 AND occurred_at < ?3 GROUP BY 1, 2",
            )?;
            let mut conversions = connection.prepare_cached(
                "SELECT confirmed_at / 900000, COUNT(*) FROM attributions \
                 WHERE mentor_id = ?1 AND confirmed_at IS NOT NULL AND deleted_at IS NULL \
                 AND reversed_at IS NULL AND confirmed_at >= ?2 AND confirmed_at < ?3 GROUP BY 1",
            )?;
            let mut reversals = connection.prepare_cached(
                "SELECT confirmed_at / 900000, COUNT(*) FROM attributions \
                 WHERE mentor_id = ?1 AND reversed_at IS NOT NULL AND deleted_at IS NULL \
                 AND confirmed_at >= ?2 AND confirmed_at < ?3 GROUP BY 1",
            )?;
            for (from, to) in &reads.slots {
                let rows = clicks.query_map(params![mentor_id, from, to], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, i64>(2)?,
                    ))
                })?;
                for row in rows {
                    let (slot, verdict, count) = row?;
                    let count = u64::try_from(count).unwrap_or(0);
                    slots.entry(slot).or_default().add_clicks(&verdict, count);
                }
                let rows = conversions.query_map(params![mentor_id, from, to], |row| {
                    Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))
                })?;
                for row in rows {
                    let (slot, count) = row?;
                    slots.entry(slot).or_default().conversions += u64::try_from(count).unwrap_or(0);
                }
                let rows = reversals.query_map(params![mentor_id, from, to], |row| {
                    Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))
                })?;
                for row in rows {
                    let (slot, count) = row?;
                    slots.entry(slot).or_default().reversals += u64::try_from(count).unwrap_or(0);
                }
            }
            Ok(slots
                .into_iter()
                .map(|(slot, totals)| SlotCounts { slot, totals })
                .collect())
        })
        .await
    }

    async fn mentor_totals(
        &self,
        mentor_id: &str,
        hours: HourRange,
    ) -> Result<MentorTotals, StoreError> {
        let mentor_id = mentor_id.to_owned();
        self.read(move |connection| {
            let plan = hours.plan();
            let mut totals = MentorTotals::default();
            let mut add = |part: MentorTotals| totals.add(part);
            if let Some((from_day, to_day)) = plan.daily {
                add(sum_totals(
                    connection,
                    "SELECT COALESCE(SUM(clicks), 0), COALESCE(SUM(duplicates), 0), COALESCE(SUM(bots), 0), \
                     COALESCE(SUM(conversions), 0), COALESCE(SUM(reversals), 0) FROM mentor_daily_totals \
                     WHERE mentor_id = ?1 AND day >= ?2 AND day < ?3",
                    &mentor_id,
                    from_day,
                    to_day,
                )?);
            }
            for (from_hour, to_hour) in plan.hourly {
                add(sum_totals(
                    connection,
                    "SELECT COALESCE(SUM(clicks), 0), COALESCE(SUM(duplicates), 0), COALESCE(SUM(bots), 0), \
                     COALESCE(SUM(conversions), 0), COALESCE(SUM(reversals), 0) FROM mentor_hourly_totals \
                     WHERE mentor_id = ?1 AND hour >= ?2 AND hour < ?3",
                    &mentor_id,
                    Some(from_hour),
                    Some(to_hour),
                )?);
            }
            Ok(totals)
        })
        .await
    }

    async fn referral_code(&self, code: &str) -> Result<Option<ReferralCode>, StoreError> {
        let code = code.to_owned();
        self.read(move |connection| live_code(connection, &code))
            .await
    }

    async fn referral_codes(
        &self,
        mentor_id: Option<&str>,
        page: PageRequest,
    ) -> Result<CodePage, StoreError> {
        let mentor_id = mentor_id.map(str::to_owned);
        self.read(move |connection| {
            let limit = i64::from(page.limit);
            let offset = i64::try_from(page.offset()).unwrap_or(i64::MAX);
            let (total, codes) = match &mentor_id {
                Some(mentor_id) => {
                    let total: i64 = connection
                        .prepare_cached("SELECT COUNT(*) FROM referral_codes WHERE mentor_id = ?1 AND retired = 0")?
                        .query_row([mentor_id], |row| row.get(0))?;
                    let mut statement = connection.prepare_cached(
                        "SELECT code, mentor_id, created_at, updated_at, destination_url FROM referral_codes \
                         WHERE mentor_id = ?1 AND retired = 0 ORDER BY code LIMIT ?2 OFFSET ?3",
                    )?;
                    let codes = statement
                        .query_map(params![mentor_id, limit, offset], code_from_row)?
                        .collect::<Result<Vec<_>, _>>()?;
                    (total, codes)
                }
                None => {
                    let total: i64 = connection
                        .prepare_cached("SELECT COUNT(*) FROM referral_codes WHERE retired = 0")?
                        .query_row([], |row| row.get(0))?;
                    let mut statement = connection.prepare_cached(
                        "SELECT code, mentor_id, created_at, updated_at, destination_url FROM referral_codes \
                         WHERE retired = 0 ORDER BY code LIMIT ?1 OFFSET ?2",
                    )?;
                    let codes = statement
                        .query_map(params![limit, offset], code_from_row)?
                        .collect::<Result<Vec<_>, _>>()?;
                    (total, codes)
                }
            };
            Ok(CodePage {
                codes,
                total: u64::try_from(total).unwrap_or(0),
            })
        })
        .await
    }

    async fn verdict(&self, command_id: &str) -> Result<Option<Verdict>, StoreError> {
        let command_id = command_id.to_owned();
        self.read(move |connection| {
            let json: Option<String> = connection
                .prepare_cached("SELECT verdict FROM command_verdicts WHERE command_id = ?1")?
                .query_row([&command_id], |row| row.get(0))
                .optional()?;
            json.map(|json| {
                serde_json::from_str(&json)
                    .map_err(|error| StoreError::Corrupt(format!("verdict {command_id}: {error}")))
            })
            .transpose()
        })
        .await
    }
}
