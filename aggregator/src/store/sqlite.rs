//! The embedded store: SQLite in WAL mode under `--data-dir`.
//!
//! One connection writes (owned by the writer thread); a small pool of read-only
//! connections serves the API. WAL lets readers see the last committed state while the
//! writer commits the next batch.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use referral_schemas::messages::{
    AssignCode, ClickEvent, ConfirmConversion, DeleteAttribution, LogEvent, RetireCode, Verdict,
};
use referral_schemas::migrations;
use referral_schemas::query::{AttributionFilter, HourRange, PageRequest};
use referral_schemas::state::{self, Confirmation, TotalsDelta};
use referral_schemas::{Attribution, AttributionKind, AttributionStatus, ReferralCode, Timestamp};
use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, params, params_from_iter};

use super::{
    AttributionPage, AttributionReader, CodePage, CommittedBatch, MentorTotals, StateWriter,
    StoreError,
};
use crate::codes::CodeChange;
use crate::config::SqliteSynchronous;

/// File name of the database inside the data directory.
pub const DATABASE_FILE: &str = "referral.db";
/// File locked exclusively by the process that writes the store: a second process on the
/// same data directory would be a second writer, so it is refused at start.
pub const LOCK_FILE: &str = "writer.lock";
/// How long verdicts are kept: far longer than any API waits for one.
const VERDICT_RETENTION_MS: i64 = 24 * 3_600_000;
/// How often the writer prunes old verdicts.
const VERDICT_PRUNE_INTERVAL: Duration = Duration::from_secs(60);
/// How long a connection waits on a lock before failing (only the writer takes write locks;
/// readers wait only during checkpoints).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// The writer's page cache, in KiB (negative for SQLite: a size, not a page count).
const WRITER_CACHE_KIB: i64 = -64 * 1024;
/// Read connections kept open at most.
const READ_POOL_MAX: usize = 8;

const ATTRIBUTION_COLUMNS: &str = "id, code, mentor_id, kind, status, new_member_id, ip_address, \
     user_agent, referrer_url, occurred_at, confirmed_at, created_at";

/// Opens (creating if needed) the store under `data_dir` and applies pending migrations.
pub fn open(
    data_dir: &Path,
    synchronous: SqliteSynchronous,
    attribution_window_ms: i64,
) -> Result<(SqliteWriter, SqliteReader), StoreError> {
    std::fs::create_dir_all(data_dir)
        .map_err(|error| StoreError::Open(format!("{}: {error}", data_dir.display())))?;
    let lock = std::fs::File::create(data_dir.join(LOCK_FILE))
        .map_err(|error| StoreError::Open(format!("{}: {error}", data_dir.display())))?;
    lock.try_lock().map_err(|_| {
        StoreError::Open(format!(
            "{} is in use by another process (only one writer per data directory)",
            data_dir.display()
        ))
    })?;
    let path = data_dir.join(DATABASE_FILE);
    let mut connection = Connection::open(&path)?;
    connection.busy_timeout(BUSY_TIMEOUT)?;
    connection.pragma_update(None, "journal_mode", "WAL")?;
    let synchronous = match synchronous {
        SqliteSynchronous::Full => "FULL",
        SqliteSynchronous::Normal => "NORMAL",
    };
    connection.pragma_update(None, "synchronous", synchronous)?;
    connection.pragma_update(None, "foreign_keys", "ON")?;
    // Keep the hot b-tree pages (index tails, totals) in memory between commits.
    connection.pragma_update(None, "cache_size", WRITER_CACHE_KIB)?;
    migrate(&mut connection)?;
    let writer = SqliteWriter {
        connection,
        attribution_window_ms,
        last_prune: None,
        _lock: lock,
    };
    let reader = SqliteReader {
        path,
        pool: Arc::new(Mutex::new(Vec::new())),
    };
    Ok((writer, reader))
}

/// Applies the migrations newer than `PRAGMA user_version`, each in its own transaction.
pub fn migrate(connection: &mut Connection) -> Result<u32, StoreError> {
    let applied: u32 = connection.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let latest = migrations::SQLITE
        .last()
        .map_or(0, |migration| migration.version);
    if applied > latest {
        return Err(StoreError::Open(format!(
            "the store is at schema version {applied}, newer than this build's {latest}"
        )));
    }
    for migration in migrations::SQLITE.iter().filter(|m| m.version > applied) {
        let transaction = connection.transaction()?;
        transaction.execute_batch(migration.sql)?;
        transaction.pragma_update(None, "user_version", migration.version)?;
        transaction.commit()?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "applied migration"
        );
    }
    Ok(latest)
}

/// The writer's connection. Owned by exactly one thread.
pub struct SqliteWriter {
    connection: Connection,
    attribution_window_ms: i64,
    last_prune: Option<Instant>,
    /// Held for the writer's lifetime; the OS releases it when the process dies.
    _lock: std::fs::File,
}

impl SqliteWriter {
    /// Every live code and its mentor, to fill the edge's directory at start.
    pub fn code_assignments(&self) -> Result<Vec<(String, String)>, StoreError> {
        let mut statement = self
            .connection
            .prepare("SELECT code, mentor_id FROM referral_codes")?;
        let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn prune_verdicts(&mut self) -> Result<(), StoreError> {
        if self
            .last_prune
            .is_some_and(|at| at.elapsed() < VERDICT_PRUNE_INTERVAL)
        {
            return Ok(());
        }
        let cutoff = Timestamp::now().as_millis() - VERDICT_RETENTION_MS;
        self.connection.execute(
            "DELETE FROM command_verdicts WHERE decided_at < ?1",
            [cutoff],
        )?;
        self.last_prune = Some(Instant::now());
        Ok(())
    }
}

impl StateWriter for SqliteWriter {
    fn apply_batch(&mut self, events: &[LogEvent]) -> Result<CommittedBatch, StoreError> {
        let window_ms = self.attribution_window_ms;
        let transaction = self.connection.transaction()?;
        let mut batch = BatchState::default();
        for event in events {
            match event {
                LogEvent::Click(click) => apply_click(&transaction, &mut batch, click)?,
                LogEvent::ConfirmConversion(command) => {
                    apply_confirmation(&transaction, &mut batch, command, window_ms)?
                }
                LogEvent::DeleteAttribution(command) => {
                    apply_deletion(&transaction, &mut batch, command)?
                }
                LogEvent::AssignCode(command) => {
                    apply_assignment(&transaction, &mut batch, command)?
                }
                LogEvent::RetireCode(command) => {
                    apply_retirement(&transaction, &mut batch, command)?
                }
            }
        }
        apply_totals(&transaction, &batch.totals)?;
        transaction.commit()?;
        self.prune_verdicts()?;
        Ok(CommittedBatch {
            code_changes: batch.code_changes,
        })
    }
}

/// What a batch accumulates before its commit.
#[derive(Default)]
struct BatchState {
    /// Deltas summed per (mentor, hour): a burst of clicks for one mentor costs one upsert.
    totals: HashMap<(String, i64), (i64, i64)>,
    code_changes: Vec<CodeChange>,
}

impl BatchState {
    fn add(&mut self, delta: TotalsDelta) {
        let entry = self
            .totals
            .entry((delta.mentor_id, delta.hour))
            .or_default();
        entry.0 += delta.clicks;
        entry.1 += delta.conversions;
    }
}

fn apply_click(
    transaction: &Connection,
    batch: &mut BatchState,
    click: &ClickEvent,
) -> Result<(), StoreError> {
    let (attribution, delta) = state::record_click(click);
    let inserted = transaction
        .prepare_cached(
            "INSERT INTO attributions (id, code, mentor_id, kind, status, new_member_id, ip_address, \
             user_agent, referrer_url, occurred_at, confirmed_at, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, NULL, ?6, ?7, ?8, ?9, NULL, ?10) \
             ON CONFLICT (id) DO NOTHING",
        )?
        .execute(params![
            attribution.id,
            attribution.code,
            attribution.mentor_id,
            attribution.kind.as_str(),
            attribution.status.as_str(),
            attribution.ip_address,
            attribution.user_agent,
            attribution.referrer_url,
            attribution.occurred_at.as_millis(),
            attribution.created_at.as_millis(),
        ])?;
    // A redelivered click (same id) was counted the first time.
    if inserted == 1 {
        batch.add(delta);
    }
    Ok(())
}

/// Whether this command was decided before (a redelivery): then it is not applied again.
fn already_decided(transaction: &Connection, command_id: &str) -> Result<bool, StoreError> {
    Ok(transaction
        .prepare_cached("SELECT 1 FROM command_verdicts WHERE command_id = ?1")?
        .exists([command_id])?)
}

fn record_verdict(
    transaction: &Connection,
    command_id: &str,
    verdict: &Verdict,
) -> Result<(), StoreError> {
    let json =
        serde_json::to_string(verdict).map_err(|error| StoreError::Corrupt(error.to_string()))?;
    transaction
        .prepare_cached(
            "INSERT INTO command_verdicts (command_id, verdict, decided_at) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![command_id, json, Timestamp::now().as_millis()])?;
    Ok(())
}

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

fn apply_confirmation(
    transaction: &Connection,
    batch: &mut BatchState,
    command: &ConfirmConversion,
    window_ms: i64,
) -> Result<(), StoreError> {
    if already_decided(transaction, &command.command_id)? {
        return Ok(());
    }
    let current = live_attribution(transaction, &command.attribution_id)?;
    let holder: Option<String> = transaction
        .prepare_cached("SELECT attribution_id FROM attributed_members WHERE new_member_id = ?1")?
        .query_row([&command.new_member_id], |row| row.get(0))
        .optional()?;
    let verdict = match state::confirm(current.as_ref(), holder.as_deref(), command, window_ms) {
        Ok(Confirmation::Applied { attribution, delta }) => {
            transaction
                .prepare_cached(
                    "UPDATE attributions SET kind = ?2, status = ?3, new_member_id = ?4, confirmed_at = ?5 \
                     WHERE id = ?1",
                )?
                .execute(params![
                    attribution.id,
                    attribution.kind.as_str(),
                    attribution.status.as_str(),
                    attribution.new_member_id,
                    attribution.confirmed_at.map(Timestamp::as_millis),
                ])?;
            transaction
                .prepare_cached("INSERT INTO attributed_members (new_member_id, attribution_id) VALUES (?1, ?2)")?
                .execute(params![command.new_member_id, attribution.id])?;
            batch.add(delta);
            Verdict::Confirmed {
                attribution,
                replayed: false,
            }
        }
        Ok(Confirmation::Replayed { attribution }) => Verdict::Confirmed {
            attribution,
            replayed: true,
        },
        Err(reason) => Verdict::Rejected { reason },
    };
    record_verdict(transaction, &command.command_id, &verdict)
}

fn apply_deletion(
    transaction: &Connection,
    batch: &mut BatchState,
    command: &DeleteAttribution,
) -> Result<(), StoreError> {
    if already_decided(transaction, &command.command_id)? {
        return Ok(());
    }
    let current = live_attribution(transaction, &command.attribution_id)?;
    let verdict = match state::delete(current.as_ref(), command) {
        Ok(deletion) => {
            transaction
                .prepare_cached("UPDATE attributions SET deleted_at = ?2 WHERE id = ?1")?
                .execute(params![
                    deletion.view.id,
                    deletion.view.deleted_at.as_millis()
                ])?;
            if let Some(member) = &deletion.released_member {
                transaction
                    .prepare_cached(
                        "DELETE FROM attributed_members WHERE new_member_id = ?1 AND attribution_id = ?2",
                    )?
                    .execute(params![member, deletion.view.id])?;
            }
            for delta in deletion.deltas {
                batch.add(delta);
            }
            Verdict::Deleted {
                deletion: deletion.view,
            }
        }
        Err(reason) => Verdict::Rejected { reason },
    };
    record_verdict(transaction, &command.command_id, &verdict)
}

fn live_code(connection: &Connection, code: &str) -> Result<Option<ReferralCode>, StoreError> {
    Ok(connection
        .prepare_cached(
            "SELECT code, mentor_id, created_at, updated_at FROM referral_codes WHERE code = ?1",
        )?
        .query_row([code], code_from_row)
        .optional()?)
}

fn apply_assignment(
    transaction: &Connection,
    batch: &mut BatchState,
    command: &AssignCode,
) -> Result<(), StoreError> {
    if already_decided(transaction, &command.command_id)? {
        return Ok(());
    }
    let current = live_code(transaction, &command.code)?;
    let (code, created) = state::assign_code(current.as_ref(), command);
    transaction
        .prepare_cached(
            "INSERT INTO referral_codes (code, mentor_id, created_at, updated_at) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (code) DO UPDATE SET mentor_id = excluded.mentor_id, updated_at = excluded.updated_at",
        )?
        .execute(params![
            code.code,
            code.mentor_id,
            code.created_at.as_millis(),
            code.updated_at.as_millis()
        ])?;
    batch.code_changes.push(CodeChange::Assigned {
        code: code.code.clone(),
        mentor_id: code.mentor_id.clone(),
    });
    record_verdict(
        transaction,
        &command.command_id,
        &Verdict::CodeAssigned { code, created },
    )
}

fn apply_retirement(
    transaction: &Connection,
    batch: &mut BatchState,
    command: &RetireCode,
) -> Result<(), StoreError> {
    if already_decided(transaction, &command.command_id)? {
        return Ok(());
    }
    let current = live_code(transaction, &command.code)?;
    let verdict = match state::retire_code(current.as_ref(), command) {
        Ok(retirement) => {
            transaction
                .prepare_cached("DELETE FROM referral_codes WHERE code = ?1")?
                .execute([&retirement.code])?;
            batch.code_changes.push(CodeChange::Retired {
                code: retirement.code.clone(),
            });
            Verdict::CodeRetired { retirement }
        }
        Err(reason) => Verdict::Rejected { reason },
    };
    record_verdict(transaction, &command.command_id, &verdict)
}

fn apply_totals(
    transaction: &Connection,
    totals: &HashMap<(String, i64), (i64, i64)>,
) -> Result<(), StoreError> {
    let mut hourly = transaction.prepare_cached(
        "INSERT INTO mentor_hourly_totals (mentor_id, hour, clicks, conversions) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (mentor_id, hour) DO UPDATE SET clicks = clicks + excluded.clicks, \
         conversions = conversions + excluded.conversions",
    )?;
    let mut daily = transaction.prepare_cached(
        "INSERT INTO mentor_daily_totals (mentor_id, day, clicks, conversions) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (mentor_id, day) DO UPDATE SET clicks = clicks + excluded.clicks, \
         conversions = conversions + excluded.conversions",
    )?;
    for ((mentor_id, hour), (clicks, conversions)) in totals {
        if (*clicks, *conversions) == (0, 0) {
            continue;
        }
        hourly.execute(params![mentor_id, hour, clicks, conversions])?;
        daily.execute(params![mentor_id, hour.div_euclid(24), clicks, conversions])?;
    }
    Ok(())
}

fn corrupt(column: usize, what: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        column,
        rusqlite::types::Type::Text,
        format!("unknown {what}").into(),
    )
}

fn attribution_from_row(row: &Row<'_>) -> rusqlite::Result<Attribution> {
    let kind: String = row.get(3)?;
    let status: String = row.get(4)?;
    Ok(Attribution {
        id: row.get(0)?,
        code: row.get(1)?,
        mentor_id: row.get(2)?,
        kind: AttributionKind::parse(&kind).ok_or_else(|| corrupt(3, "kind"))?,
        status: AttributionStatus::parse(&status).ok_or_else(|| corrupt(4, "status"))?,
        new_member_id: row.get(5)?,
        ip_address: row.get(6)?,
        user_agent: row.get(7)?,
        referrer_url: row.get(8)?,
        occurred_at: Timestamp::from_millis(row.get(9)?),
        confirmed_at: row.get::<_, Option<i64>>(10)?.map(Timestamp::from_millis),
        created_at: Timestamp::from_millis(row.get(11)?),
    })
}

fn code_from_row(row: &Row<'_>) -> rusqlite::Result<ReferralCode> {
    Ok(ReferralCode {
        code: row.get(0)?,
        mentor_id: row.get(1)?,
        created_at: Timestamp::from_millis(row.get(2)?),
        updated_at: Timestamp::from_millis(row.get(3)?),
    })
}

/// Read-only connections for the API, opened on demand and kept for reuse.
#[derive(Clone)]
pub struct SqliteReader {
    path: PathBuf,
    pool: Arc<Mutex<Vec<Connection>>>,
}

impl SqliteReader {
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
    (clauses.join(" AND "), values)
}

fn sum_totals(
    connection: &Connection,
    sql: &str,
    mentor_id: &str,
    from: Option<i64>,
    to: Option<i64>,
) -> Result<MentorTotals, StoreError> {
    let (clicks, conversions): (i64, i64) = connection.prepare_cached(sql)?.query_row(
        params![mentor_id, from.unwrap_or(i64::MIN), to.unwrap_or(i64::MAX)],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?;
    let non_negative = |value: i64, what: &str| {
        u64::try_from(value)
            .map_err(|_| StoreError::Corrupt(format!("negative {what} total for {mentor_id}")))
    };
    Ok(MentorTotals {
        clicks: non_negative(clicks, "click")?,
        conversions: non_negative(conversions, "conversion")?,
    })
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
        self.read(move |connection| {
            let count_sql = format!("SELECT COUNT(*) FROM attributions WHERE {clauses}");
            let total: i64 = connection
                .prepare_cached(&count_sql)?
                .query_row(params_from_iter(values.iter()), |row| row.get(0))?;
            let page_sql = format!(
                "SELECT {ATTRIBUTION_COLUMNS} FROM attributions WHERE {clauses} \
                 ORDER BY occurred_at DESC, id DESC LIMIT ? OFFSET ?"
            );
            let mut bound = values;
            bound.push(Value::Integer(i64::from(page.limit)));
            bound.push(Value::Integer(
                i64::try_from(page.offset()).unwrap_or(i64::MAX),
            ));
            let mut statement = connection.prepare_cached(&page_sql)?;
            let attributions = statement
                .query_map(params_from_iter(bound.iter()), attribution_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(AttributionPage {
                attributions,
                total: u64::try_from(total).unwrap_or(0),
            })
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
            let mut add = |part: MentorTotals| {
                totals.clicks += part.clicks;
                totals.conversions += part.conversions;
            };
            if let Some((from_day, to_day)) = plan.daily {
                add(sum_totals(
                    connection,
                    "SELECT COALESCE(SUM(clicks), 0), COALESCE(SUM(conversions), 0) FROM mentor_daily_totals \
                     WHERE mentor_id = ?1 AND day >= ?2 AND day < ?3",
                    &mentor_id,
                    from_day,
                    to_day,
                )?);
            }
            for (from_hour, to_hour) in plan.hourly {
                add(sum_totals(
                    connection,
                    "SELECT COALESCE(SUM(clicks), 0), COALESCE(SUM(conversions), 0) FROM mentor_hourly_totals \
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
                        .prepare_cached("SELECT COUNT(*) FROM referral_codes WHERE mentor_id = ?1")?
                        .query_row([mentor_id], |row| row.get(0))?;
                    let mut statement = connection.prepare_cached(
                        "SELECT code, mentor_id, created_at, updated_at FROM referral_codes \
                         WHERE mentor_id = ?1 ORDER BY code LIMIT ?2 OFFSET ?3",
                    )?;
                    let codes = statement
                        .query_map(params![mentor_id, limit, offset], code_from_row)?
                        .collect::<Result<Vec<_>, _>>()?;
                    (total, codes)
                }
                None => {
                    let total: i64 = connection
                        .prepare_cached("SELECT COUNT(*) FROM referral_codes")?
                        .query_row([], |row| row.get(0))?;
                    let mut statement = connection.prepare_cached(
                        "SELECT code, mentor_id, created_at, updated_at FROM referral_codes \
                         ORDER BY code LIMIT ?1 OFFSET ?2",
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

#[cfg(test)]
mod tests {
    use referral_schemas::messages::{
        AssignCode, ClickEvent, ConfirmConversion, DeleteAttribution,
    };
    use referral_schemas::query::HourRange;

    use super::*;

    const ALL_TIME: HourRange = HourRange {
        from_hour: None,
        to_hour: None,
    };

    fn click(id: &str, at: i64) -> LogEvent {
        LogEvent::Click(ClickEvent {
            attribution_id: id.into(),
            code: "JAN-1".into(),
            mentor_id: "usr_1".into(),
            ip_address: "127.0.0.1".into(),
            user_agent: None,
            referrer_url: None,
            occurred_at: Timestamp::from_millis(at),
            received_at: Timestamp::from_millis(at),
        })
    }

    fn open_store(dir: &Path) -> (SqliteWriter, SqliteReader) {
        open(dir, SqliteSynchronous::Normal, i64::MAX).unwrap()
    }

    #[tokio::test]
    async fn redelivered_events_are_applied_once() {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, reader) = open_store(dir.path());
        let now = Timestamp::now().as_millis();
        let confirm = LogEvent::ConfirmConversion(ConfirmConversion {
            command_id: "cmd_1".into(),
            attribution_id: "attr_1".into(),
            code: "JAN-1".into(),
            new_member_id: "usr_9".into(),
            confirmed_at: Timestamp::from_millis(now),
            issued_at: Timestamp::from_millis(now),
        });
        let batch = vec![
            click("attr_1", now - 1000),
            click("attr_2", now - 500),
            confirm,
        ];
        writer.apply_batch(&batch).unwrap();
        // The same events again, as a redelivery after a crash would bring them.
        writer.apply_batch(&batch).unwrap();
        let totals = reader.mentor_totals("usr_1", ALL_TIME).await.unwrap();
        assert_eq!((totals.clicks, totals.conversions), (2, 1));

        let delete = LogEvent::DeleteAttribution(DeleteAttribution {
            command_id: "cmd_2".into(),
            attribution_id: "attr_1".into(),
            issued_at: Timestamp::from_millis(now),
        });
        writer.apply_batch(std::slice::from_ref(&delete)).unwrap();
        writer
            .apply_batch(&[delete, click("attr_1", now - 1000)])
            .unwrap();
        let totals = reader.mentor_totals("usr_1", ALL_TIME).await.unwrap();
        assert_eq!(
            (totals.clicks, totals.conversions),
            (1, 0),
            "a deleted click is not revived"
        );
        assert!(reader.attribution("attr_1").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_second_process_cannot_open_the_same_store() {
        let dir = tempfile::tempdir().unwrap();
        let first = open_store(dir.path());
        let second = open(dir.path(), SqliteSynchronous::Normal, i64::MAX);
        assert!(matches!(second, Err(StoreError::Open(_))));
        drop(first);
        assert!(open(dir.path(), SqliteSynchronous::Normal, i64::MAX).is_ok());
    }

    #[tokio::test]
    async fn codes_are_listed_for_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, _) = open_store(dir.path());
        let committed = writer
            .apply_batch(&[LogEvent::AssignCode(AssignCode {
                command_id: "cmd_1".into(),
                code: "JAN-1".into(),
                mentor_id: "usr_1".into(),
                issued_at: Timestamp::now(),
            })])
            .unwrap();
        assert_eq!(committed.code_changes.len(), 1);
        assert_eq!(
            writer.code_assignments().unwrap(),
            vec![("JAN-1".to_owned(), "usr_1".to_owned())]
        );
    }
}
