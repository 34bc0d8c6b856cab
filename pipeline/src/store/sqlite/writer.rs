//! The consumer's writes to SQLite: one transaction per flush.
//!
//! Exactly once, simply: a flush's decisions, rows, totals deltas and checkpoint move are
//! committed in one SQLite transaction, so the stored checkpoint can never disagree with
//! the data. A flush that fails is rolled back and retried whole; a crash before the commit
//! leaves nothing of it, and the consumer reads its events again from the checkpoint.
//!
//! Versioned rows keep the highest version, and of equal versions the last written, as
//! ClickHouse's ReplacingMergeTree does: both stores hold the same state for the same plans.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use referral_schemas::Timestamp;
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};

use crate::plan::rows::{AttributionRow, CodeRow, DecisionRow, MemberRow};
use crate::plan::{Known, PartitionKey, Plan, References};
use crate::store::{CountedClick, StoreError, StoreWriter};

/// How long decisions are kept: far longer than any waiter needs one, and than any replay
/// of the log can reach back (the consumer's checkpoint moves with every flush).
const VERDICT_RETENTION_MS: i64 = 24 * 3_600_000;
/// How often the writer prunes old decisions.
const VERDICT_PRUNE_INTERVAL: Duration = Duration::from_secs(60);
/// Most values bound in one `IN (...)` look-up (SQLite allows 32,766).
const MAX_BOUND: usize = 10_000;

/// The writer's connection. Owned by the consumer thread.
pub struct SqliteWriter {
    connection: Connection,
    last_prune: Option<Instant>,
    /// Whether a commit is fsynced as it returns (`synchronous = FULL`).
    commits_durable: bool,
}

impl SqliteWriter {
    pub(super) fn new(connection: Connection, commits_durable: bool) -> Self {
        Self {
            connection,
            last_prune: None,
            commits_durable,
        }
    }

    /// Every live code, its mentor and destination, to fill the edge's directory at start.
    pub fn code_assignments(&self) -> Result<Vec<(String, String, Option<String>)>, StoreError> {
        let mut statement = self.connection.prepare(
            "SELECT code, mentor_id, destination_url FROM referral_codes WHERE retired = 0",
        )?;
        let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The stored checkpoint of every partition (for the log's start-up check).
    pub fn stored_checkpoints(&self) -> Result<HashMap<PartitionKey, i64>, StoreError> {
        let mut statement = self
            .connection
            .prepare("SELECT topic, partition, next_offset FROM consumer_checkpoints")?;
        let rows = statement.query_map([], |row| {
            Ok((
                (row.get::<_, String>(0)?, row.get::<_, i32>(1)?),
                row.get(2)?,
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Rows of `table` whose `key` is one of `values`, decoded by `decode`.
    fn select_in<T>(
        &self,
        columns: &str,
        table: &str,
        key: &str,
        values: &HashSet<String>,
        decode: impl Fn(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, StoreError> {
        let values: Vec<&String> = values.iter().collect();
        let mut found = Vec::with_capacity(values.len());
        for chunk in values.chunks(MAX_BOUND) {
            let sql = format!(
                "SELECT {columns} FROM {table} WHERE {key} IN ({})",
                vec!["?"; chunk.len()].join(", ")
            );
            let mut statement = self.connection.prepare(&sql)?;
            let rows = statement.query_map(
                params_from_iter(chunk.iter().map(|value| Value::Text((*value).clone()))),
                &decode,
            )?;
            for row in rows {
                found.push(row?);
            }
        }
        Ok(found)
    }

    fn in_transaction(&self) -> bool {
        !self.connection.is_autocommit()
    }

    fn write_rows(&self, plan: &Plan) -> Result<(), StoreError> {
        let connection = &self.connection;
        let mut decisions = connection.prepare_cached(
            "INSERT INTO command_verdicts (command_id, verdict, effect, decided_at, source_topic, \
             source_partition, source_offset) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
             ON CONFLICT (command_id) DO NOTHING",
        )?;
        for row in &plan.decisions {
            decisions.execute(params![
                row.command_id,
                row.verdict,
                row.effect,
                row.decided_at,
                row.source_topic,
                row.source_partition,
                row.source_offset,
            ])?;
        }
        let mut events = connection.prepare_cached(
            "INSERT INTO webhook_events (source_topic, source_partition, source_offset, \
             event_id, event_type, attribution_id, data, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT DO NOTHING",
        )?;
        for row in &plan.events {
            events.execute(params![
                row.source_topic,
                row.source_partition,
                row.source_offset,
                row.event_id,
                row.event_type,
                row.attribution_id,
                row.data,
                row.created_at,
            ])?;
        }
        // Columns that never change between versions (id, code, mentor, client, times of
        // the click) are written by the first version only.
        let mut attributions = connection.prepare_cached(
            "INSERT INTO attributions (id, code, mentor_id, kind, status, new_member_id, \
             ip_address, user_agent, referrer_url, occurred_at, confirmed_at, created_at, \
             deleted_at, version, verdict, duplicate_of, source_topic, source_partition, \
             source_offset, reversed_at, reversal_reason) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, \
             ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21) \
             ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, status = excluded.status, \
             new_member_id = excluded.new_member_id, confirmed_at = excluded.confirmed_at, \
             deleted_at = excluded.deleted_at, version = excluded.version, \
             reversed_at = excluded.reversed_at, reversal_reason = excluded.reversal_reason \
             WHERE excluded.version >= attributions.version",
        )?;
        for row in &plan.attributions {
            attributions.execute(params![
                row.id,
                row.code,
                row.mentor_id,
                row.kind,
                row.status,
                row.new_member_id,
                row.ip_address,
                row.user_agent,
                row.referrer_url,
                row.occurred_at,
                row.confirmed_at,
                row.created_at,
                row.deleted_at,
                row.version as i64,
                row.verdict,
                row.duplicate_of,
                row.source_topic,
                row.source_partition,
                row.source_offset,
                row.reversed_at,
                row.reversal_reason,
            ])?;
        }
        let mut members = connection.prepare_cached(
            "INSERT INTO attributed_members (new_member_id, attribution_id, released, version) \
             VALUES (?1, ?2, ?3, ?4) ON CONFLICT (new_member_id) DO UPDATE SET \
             attribution_id = excluded.attribution_id, released = excluded.released, \
             version = excluded.version WHERE excluded.version >= attributed_members.version",
        )?;
        for row in &plan.members {
            members.execute(params![
                row.new_member_id,
                row.attribution_id,
                row.released,
                row.version as i64,
            ])?;
        }
        let mut codes = connection.prepare_cached(
            "INSERT INTO referral_codes (code, mentor_id, created_at, updated_at, retired, version, \
             destination_url) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (code) DO UPDATE SET \
             mentor_id = excluded.mentor_id, destination_url = excluded.destination_url, \
             created_at = excluded.created_at, \
             updated_at = excluded.updated_at, retired = excluded.retired, \
             version = excluded.version WHERE excluded.version >= referral_codes.version",
        )?;
        for row in &plan.codes {
            codes.execute(params![
                row.code,
                row.mentor_id,
                row.created_at,
                row.updated_at,
                row.retired,
                row.version as i64,
                row.destination_url,
            ])?;
        }
        Ok(())
    }

    fn write_totals_and_checkpoints(&self, plan: &Plan) -> Result<(), StoreError> {
        let connection = &self.connection;
        let mut hourly = connection.prepare_cached(
            "INSERT INTO mentor_hourly_totals (mentor_id, hour, clicks, duplicates, bots, \
             conversions, reversals) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
             ON CONFLICT (mentor_id, hour) DO UPDATE SET clicks = clicks + excluded.clicks, \
             duplicates = duplicates + excluded.duplicates, bots = bots + excluded.bots, \
             conversions = conversions + excluded.conversions, \
             reversals = reversals + excluded.reversals",
        )?;
        for delta in &plan.deltas {
            hourly.execute(params![
                delta.mentor_id,
                delta.hour,
                delta.clicks,
                delta.duplicates,
                delta.bots,
                delta.conversions,
                delta.reversals
            ])?;
        }
        let mut daily = connection.prepare_cached(
            "INSERT INTO mentor_daily_totals (mentor_id, day, clicks, duplicates, bots, \
             conversions, reversals) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
             ON CONFLICT (mentor_id, day) DO UPDATE SET clicks = clicks + excluded.clicks, \
             duplicates = duplicates + excluded.duplicates, bots = bots + excluded.bots, \
             conversions = conversions + excluded.conversions, \
             reversals = reversals + excluded.reversals",
        )?;
        for ((mentor_id, day), sums) in plan.daily_deltas() {
            daily.execute(params![
                mentor_id,
                day,
                sums.clicks,
                sums.duplicates,
                sums.bots,
                sums.conversions,
                sums.reversals
            ])?;
        }
        let mut checkpoints = connection.prepare_cached(
            "INSERT INTO consumer_checkpoints (topic, partition, next_offset) VALUES (?1, ?2, ?3) \
             ON CONFLICT (topic, partition) DO UPDATE SET next_offset = excluded.next_offset",
        )?;
        for moved in &plan.checkpoints {
            checkpoints.execute(params![moved.topic, moved.partition, moved.to])?;
        }
        Ok(())
    }

    fn prune_decisions(&mut self) -> Result<(), StoreError> {
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
        self.connection.execute(
            "DELETE FROM webhook_events WHERE created_at < ?1",
            [Timestamp::now().as_millis() - crate::webhooks::EVENT_RETENTION_MS],
        )?;
        self.last_prune = Some(Instant::now());
        Ok(())
    }
}

#[async_trait]
impl StoreWriter for SqliteWriter {
    async fn checkpoints(
        &mut self,
        partitions: &[PartitionKey],
    ) -> Result<HashMap<PartitionKey, i64>, StoreError> {
        let mut statement = self.connection.prepare_cached(
            "SELECT next_offset FROM consumer_checkpoints WHERE topic = ?1 AND partition = ?2",
        )?;
        let mut found = HashMap::with_capacity(partitions.len());
        for key in partitions {
            let next: Option<i64> = statement
                .query_row(params![key.0, key.1], |row| row.get(0))
                .optional()?;
            found.insert(key.clone(), next.unwrap_or(0));
        }
        Ok(found)
    }

    /// Nothing cached: every read goes to the (local) database.
    fn forget_checkpoints(&mut self, _: &[PartitionKey]) {}

    async fn load(&mut self, references: &References) -> Result<Known, StoreError> {
        let decisions = self.select_in(
            "command_id, verdict, effect, decided_at, source_topic, source_partition, source_offset",
            "command_verdicts",
            "command_id",
            &references.command_ids,
            |row| {
                Ok(DecisionRow {
                    command_id: row.get(0)?,
                    verdict: row.get(1)?,
                    effect: row.get(2)?,
                    decided_at: row.get(3)?,
                    source_topic: row.get(4)?,
                    source_partition: row.get(5)?,
                    source_offset: row.get(6)?,
                })
            },
        )?;
        let attributions = self.select_in(
            "id, code, mentor_id, kind, status, new_member_id, ip_address, user_agent, \
             referrer_url, occurred_at, confirmed_at, created_at, deleted_at, version, verdict, \
             duplicate_of, source_topic, source_partition, source_offset, reversed_at, \
             reversal_reason",
            "attributions",
            "id",
            &references.attribution_ids,
            |row| {
                Ok(AttributionRow {
                    id: row.get(0)?,
                    code: row.get(1)?,
                    mentor_id: row.get(2)?,
                    kind: row.get(3)?,
                    status: row.get(4)?,
                    new_member_id: row.get(5)?,
                    ip_address: row.get(6)?,
                    user_agent: row.get(7)?,
                    referrer_url: row.get(8)?,
                    occurred_at: row.get(9)?,
                    confirmed_at: row.get(10)?,
                    created_at: row.get(11)?,
                    deleted_at: row.get(12)?,
                    version: row.get::<_, i64>(13)?.max(0) as u64,
                    verdict: row.get(14)?,
                    duplicate_of: row.get(15)?,
                    source_topic: row.get(16)?,
                    source_partition: row.get(17)?,
                    source_offset: row.get(18)?,
                    reversed_at: row.get(19)?,
                    reversal_reason: row.get(20)?,
                })
            },
        )?;
        let members = self.select_in(
            "new_member_id, attribution_id, released, version",
            "attributed_members",
            "new_member_id",
            &references.members_of(&attributions),
            |row| {
                Ok(MemberRow {
                    new_member_id: row.get(0)?,
                    attribution_id: row.get(1)?,
                    released: row.get(2)?,
                    version: row.get::<_, i64>(3)?.max(0) as u64,
                })
            },
        )?;
        let codes = self.select_in(
            "code, mentor_id, created_at, updated_at, retired, version, destination_url",
            "referral_codes",
            "code",
            &references.codes,
            |row| {
                Ok(CodeRow {
                    code: row.get(0)?,
                    mentor_id: row.get(1)?,
                    created_at: row.get(2)?,
                    updated_at: row.get(3)?,
                    retired: row.get(4)?,
                    version: row.get::<_, i64>(5)?.max(0) as u64,
                    destination_url: row.get(6)?,
                })
            },
        )?;
        Ok(Known::from_rows(decisions, attributions, members, codes))
    }

    async fn counted_clicks(
        &mut self,
        partition: &PartitionKey,
        checkpoint: i64,
        window_ms: i64,
    ) -> Result<Vec<CountedClick>, StoreError> {
        let newest: Option<i64> = self
            .connection
            .prepare_cached(
                "SELECT MAX(created_at) FROM attributions WHERE verdict = 'counted' \
                 AND source_topic = ?1 AND source_partition = ?2 AND source_offset >= 0 \
                 AND source_offset < ?3",
            )?
            .query_row(params![partition.0, partition.1, checkpoint], |row| {
                row.get(0)
            })?;
        let Some(newest) = newest else {
            return Ok(Vec::new());
        };
        let mut statement = self.connection.prepare_cached(
            "SELECT id, mentor_id, code, ip_address, user_agent, created_at FROM attributions \
             WHERE verdict = 'counted' AND source_topic = ?1 AND source_partition = ?2 \
             AND created_at >= ?3 AND source_offset >= 0 AND source_offset < ?4",
        )?;
        let since = newest.saturating_sub(window_ms.saturating_mul(2));
        let found = params![partition.0, partition.1, since, checkpoint];
        let rows = statement.query_map(found, |row| {
            Ok(CountedClick {
                attribution_id: row.get(0)?,
                mentor_id: row.get(1)?,
                code: row.get(2)?,
                ip_address: row.get(3)?,
                user_agent: row.get(4)?,
                received_at: row.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    async fn write_state(&mut self, plan: &Plan) -> Result<(), StoreError> {
        self.abandon();
        self.connection.execute_batch("BEGIN IMMEDIATE")?;
        self.write_rows(plan)
    }

    async fn commit(&mut self, plan: &Plan, _token: &str) -> Result<(), StoreError> {
        if !self.in_transaction() {
            return Err(StoreError::Corrupt(
                "commit without write_state: the flush's rows are not in this transaction".into(),
            ));
        }
        self.write_totals_and_checkpoints(plan)?;
        self.connection.execute_batch("COMMIT")?;
        if let Err(error) = self.prune_decisions() {
            // The flush is stored; pruning is tried again at the next interval.
            tracing::warn!(%error, "cannot prune old decisions");
        }
        Ok(())
    }

    /// With `synchronous = NORMAL` a commit is in the WAL but not fsynced. The pages a
    /// checkpoint copied are in the database file (synced by that checkpoint), the rest in
    /// the WAL: syncing both files makes every commit so far survive a power loss. (A
    /// `wal_checkpoint(PASSIVE)` syncs nothing when it copies nothing, for example while a
    /// reader holds an old snapshot, so it cannot be relied on here.)
    async fn make_durable(&mut self) -> Result<(), StoreError> {
        if self.commits_durable {
            return Ok(());
        }
        let database = match self.connection.path() {
            Some(path) if !path.is_empty() => std::path::PathBuf::from(path),
            // An in-memory store has nothing to make durable.
            _ => return Ok(()),
        };
        let mut wal = database.clone().into_os_string();
        wal.push("-wal");
        for file in [database, std::path::PathBuf::from(wal)] {
            let synced = std::fs::File::open(&file).and_then(|opened| opened.sync_all());
            match synced {
                Ok(()) => {}
                // No WAL: every commit is in the database file.
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
                    return Err(StoreError::Open(format!(
                        "cannot sync {}: {error}",
                        file.display()
                    )));
                }
            }
        }
        Ok(())
    }

    fn abandon(&mut self) {
        if self.in_transaction()
            && let Err(error) = self.connection.execute_batch("ROLLBACK")
        {
            tracing::warn!(%error, "cannot roll back an abandoned flush");
        }
    }

    async fn ping(&mut self) -> bool {
        self.connection
            .query_row("SELECT 1", [], |row| row.get::<_, i64>(0))
            .is_ok()
    }
}
