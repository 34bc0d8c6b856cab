//! The consumer's [`StoreWriter`] on ClickHouse: its reads and inserts.
//!
//! Reads use `FINAL` so that ReplacingMergeTree rows are seen at their latest version even
//! before a merge. A flush inserts its decisions first, then its other state rows at once
//! (the attributions in two inserts when many, see
//! [`ClickHouseSink::with_attribution_split`]); the commit point is the one `mentor_totals` insert that carries the totals deltas and
//! the checkpoint increments (see [`super`] for why that is exactly-once).

use std::collections::HashMap;
use std::time::Instant;

use async_trait::async_trait;
use clickhouse::{Client, RowOwned, RowRead, RowWrite};

use super::queries::{self, CountedBelow, newest_counted};
use super::totals;
use super::{ClickHouseSettings, ServerVersion, placeholders, server_version};
use crate::plan::rows::{AttributionRow, CodeRow, DecisionRow, MemberRow};
use crate::plan::{Known, PartitionKey, Plan, References};
use crate::store::{CountedClick, StoreError, StoreWriter};
use referral_schemas::id::first_attribution_id_at;

/// Keys per `IN` list: ~34 bytes each, well inside ClickHouse's 256 KiB `max_query_size`.
const SELECT_IN_CHUNK: usize = 1_000;
/// A dedup window's rebuild first reads the ids of its two windows plus this before now.
const REBUILD_SLACK_MS: i64 = 3_600_000;
/// Past this span the rebuild reads every id (a partition idle, or its consumer behind, for
/// about a month).
const REBUILD_UNBOUNDED_AFTER_MS: i64 = 32 * 24 * 3_600_000;

/// Reads and writes of one aggregator. Caches checkpoints of the partitions it owns.
pub struct ClickHouseSink {
    client: Client,
    settings: ClickHouseSettings,
    server: ServerVersion,
    /// (topic, partition) -> next offset to apply, as stored.
    checkpoints: HashMap<PartitionKey, i64>,
    /// From this many attribution rows a flush inserts them as two concurrent inserts
    /// (0: never; see [`Self::with_attribution_split`]).
    split_attributions_from: usize,
}

/// Stores once what writers of an older release stored without 'time_day' and
/// 'time_hour' rows (`mentor_totals_backfill`, migration 5). Run when a writer connects: the aggregators roll
/// with `Recreate`, so no older writer runs then, and writers of this release add to both
/// grains alike; two writers connecting at once store the same differences, which the
/// table replaces. The marker goes last: a fill cut short is done again.
async fn fill_totals_backfill(client: &clickhouse::Client) -> Result<(), StoreError> {
    let done: u64 = queries::backfill_filled()
        .to_clickhouse(client)
        .fetch_one()
        .await?;
    if done > 0 {
        return Ok(());
    }
    let version = u64::try_from(referral_schemas::Timestamp::now().as_millis()).unwrap_or(0);
    let started = std::time::Instant::now();
    queries::fill_backfill(version)
        .to_clickhouse(client)
        .execute()
        .await?;
    queries::mark_backfill(version)
        .to_clickhouse(client)
        .execute()
        .await?;
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "totals by time backfilled"
    );
    Ok(())
}

impl ClickHouseSink {
    /// Connects and probes the server version.
    pub async fn connect(settings: &ClickHouseSettings) -> Result<Self, StoreError> {
        let mut client = settings.client();
        let server = server_version(&client).await?;
        if settings.insert_quorum > 0 {
            // Every write reaches the quorum before it counts. The server stops waiting for
            // the quorum when this process would.
            let timeout_ms = settings.insert_timeout.as_millis().to_string();
            client = client
                .with_setting("insert_quorum", settings.insert_quorum.to_string())
                .with_setting("insert_quorum_timeout", timeout_ms);
            if server.at_least((20, 10)) {
                // Parallel quorum inserts (the default of newer servers) void sequential
                // consistency and the checkpoint barrier (`quorum_barrier`): one quorum
                // insert at a time per table.
                client = client.with_setting("insert_quorum_parallel", "0");
            }
        }
        if settings.sequential_reads {
            // Every read of the writer (its checkpoints, the state it decides on) comes
            // from a replica holding every acknowledged write: after a failover it resumes
            // from what the replica set stored.
            client = client.with_setting("select_sequential_consistency", "1");
        }
        tracing::info!(server = %server.text, insert_tokens = server.has_insert_tokens(), "clickhouse connected");
        fill_totals_backfill(&client).await?;
        Ok(Self {
            client,
            settings: settings.clone(),
            server,
            checkpoints: HashMap::new(),
            split_attributions_from: 0,
        })
    }

    /// Inserts a flush's attribution rows as two concurrent inserts from `rows` rows on
    /// (0: one insert). ClickHouse parses and writes one insert on one thread, and the
    /// attributions (four parts with their views) are most of a bulk flush: two halves at
    /// once took a 50,000-row flush from 240 to 164 ms. Never with `insert_quorum`: a
    /// server without parallel quorum inserts refuses a second one into the same table
    /// while the first waits for its quorum.
    pub fn with_attribution_split(mut self, rows: usize) -> Self {
        self.split_attributions_from = if self.settings.insert_quorum > 0 {
            0
        } else {
            rows
        };
        self
    }

    /// Rows of `table` whose `key` is one of `values`, asked in chunks of
    /// [`SELECT_IN_CHUNK`].
    async fn select_in<T>(
        &self,
        table: &str,
        key: &str,
        values: &std::collections::HashSet<String>,
    ) -> Result<Vec<T>, StoreError>
    where
        T: RowOwned + RowRead,
    {
        let values: Vec<&str> = values.iter().map(String::as_str).collect();
        let mut rows = Vec::new();
        // A flush may name tens of thousands of ids (a backlog of commands); one IN list of
        // them all would pass ClickHouse's max_query_size (256 KiB) on every retry.
        for chunk in values.chunks(SELECT_IN_CHUNK) {
            let sql = format!(
                "SELECT ?fields FROM {table} FINAL WHERE {key} IN {}",
                placeholders(chunk.len())
            );
            let mut query = self.client.query(&sql);
            for value in chunk {
                query = query.bind(*value);
            }
            rows.extend(query.fetch_all::<T>().await?);
        }
        Ok(rows)
    }

    async fn insert<T>(
        &self,
        table: &str,
        rows: &[T],
        token: Option<&str>,
    ) -> Result<(), StoreError>
    where
        T: RowOwned + RowWrite,
    {
        if rows.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let mut insert = self.client.insert::<T>(table).await?.with_timeouts(
            Some(self.settings.insert_timeout),
            Some(self.settings.insert_timeout),
        );
        if let Some(token) = token {
            insert = insert.with_setting("insert_deduplication_token", token);
        }
        for row in rows {
            insert.write(row).await?;
        }
        insert.end().await?;
        metrics::histogram!("referral_clickhouse_insert_duration_seconds", "table" => table.to_owned())
            .record(started.elapsed().as_secs_f64());
        metrics::histogram!("referral_clickhouse_insert_rows", "table" => table.to_owned())
            .record(rows.len() as f64);
        Ok(())
    }
}

impl ClickHouseSink {
    /// Before a checkpoint is read on a cluster: one quorum insert of a zero 'flush' row of
    /// its own. A commit insert whose quorum is still pending (its replica died before
    /// another fetched it) is stored on one replica and hidden from sequentially consistent
    /// reads; resuming from the checkpoint without it, and applying those events again in
    /// other batches, would count them twice once it arrives. ClickHouse refuses a quorum
    /// insert while an earlier one's quorum is pending, so this succeeds only once every
    /// commit the replica set took is visible to the read that follows; until then the
    /// read fails and is retried.
    async fn quorum_barrier(&self) -> Result<(), StoreError> {
        let token = format!("barrier/{}", referral_schemas::id::new_command_id());
        self.insert("mentor_totals", &[totals::flush_marker(&token)], None)
            .await
    }
}

#[async_trait]
impl StoreWriter for ClickHouseSink {
    async fn checkpoints(
        &mut self,
        partitions: &[PartitionKey],
    ) -> Result<HashMap<PartitionKey, i64>, StoreError> {
        let missing: Vec<&PartitionKey> = partitions
            .iter()
            .filter(|key| !self.checkpoints.contains_key(*key))
            .collect();
        if !missing.is_empty() && self.settings.insert_quorum > 0 {
            self.quorum_barrier().await?;
        }
        for (topic, partition) in missing {
            let next: i64 = super::queries::checkpoint(topic, *partition)
                .to_clickhouse(&self.client)
                .fetch_one()
                .await?;
            self.checkpoints.insert((topic.clone(), *partition), next);
        }
        Ok(partitions
            .iter()
            .filter_map(|key| self.checkpoints.get(key).map(|next| (key.clone(), *next)))
            .collect())
    }

    fn forget_checkpoints(&mut self, partitions: &[PartitionKey]) {
        for key in partitions {
            self.checkpoints.remove(key);
        }
    }

    async fn load(&mut self, references: &References) -> Result<Known, StoreError> {
        let decisions: Vec<DecisionRow> = self
            .select_in("command_verdicts", "command_id", &references.command_ids)
            .await?;
        let attributions: Vec<AttributionRow> = self
            .select_in("attributions", "id", &references.attribution_ids)
            .await?;
        let members: Vec<MemberRow> = self
            .select_in(
                "attributed_members",
                "new_member_id",
                &references.members_of(&attributions),
            )
            .await?;
        let codes: Vec<CodeRow> = self
            .select_in("referral_codes", "code", &references.codes)
            .await?;
        Ok(Known::from_rows(decisions, attributions, members, codes))
    }

    async fn counted_clicks(
        &mut self,
        partition: &PartitionKey,
        checkpoint: i64,
        window_ms: i64,
    ) -> Result<Vec<CountedClick>, StoreError> {
        // `attributions` is sorted by id, and ids start with their creation time: look for
        // the newest counted click among recent ids first, widening the span until the
        // clicks the window needs (two windows before the newest) are all inside it, or
        // reading them all. A consumer near the head of its log reads one recent range.
        let window_span = window_ms.saturating_mul(2);
        let mut span = window_span.saturating_add(REBUILD_SLACK_MS);
        let now = referral_schemas::Timestamp::now().as_millis();
        loop {
            let floor = now.saturating_sub(span);
            let bounded = span < REBUILD_UNBOUNDED_AFTER_MS;
            let below = CountedBelow {
                topic: &partition.0,
                partition: partition.1,
                checkpoint,
                since_id: bounded.then(|| {
                    // Ids are made a moment before `received_at`; a minute of slack.
                    first_attribution_id_at(referral_schemas::Timestamp::from_millis(
                        floor.saturating_sub(60_000),
                    ))
                }),
            };
            let (newest, clicks): (i64, u64) = newest_counted(&below)
                .to_clickhouse(&self.client)
                .fetch_one()
                .await?;
            let since = newest.saturating_sub(window_span);
            if bounded && (clicks == 0 || since < floor) {
                span = span.saturating_mul(8);
                continue;
            }
            if clicks == 0 {
                return Ok(Vec::new());
            }
            let rows: Vec<(String, String, String, String, Option<String>, i64)> =
                super::queries::counted_clicks(&below, since)
                    .to_clickhouse(&self.client)
                    .fetch_all()
                    .await?;
            return Ok(rows
                .into_iter()
                .map(
                    |(attribution_id, mentor_id, code, ip_address, user_agent, received_at)| {
                        CountedClick {
                            attribution_id,
                            mentor_id,
                            code,
                            ip_address,
                            user_agent,
                            received_at,
                        }
                    },
                )
                .collect());
        }
    }

    /// Decisions first, so that nothing is ever decided twice; then the state rows.
    async fn write_state(&mut self, plan: &Plan) -> Result<(), StoreError> {
        self.insert("command_verdicts", &plan.decisions, None)
            .await?;
        // Then every state row at once: their order among themselves does not matter
        // (each is idempotent, and the totals move only with the commit point). Each
        // insert ends, failed or not, before the flush fails: none is left running
        // behind a retry.
        let rows = plan.attributions.len();
        let split = if self.split_attributions_from > 0 && rows >= self.split_attributions_from {
            rows / 2
        } else {
            0
        };
        let (first, second) = plan.attributions.split_at(split);
        let (events, first, second, members, codes) = tokio::join!(
            self.insert("webhook_events", &plan.events, None),
            self.insert("attributions", first, None),
            self.insert("attributions", second, None),
            self.insert("attributed_members", &plan.members, None),
            self.insert("referral_codes", &plan.codes, None),
        );
        events?;
        first?;
        second?;
        members?;
        codes?;
        Ok(())
    }

    /// The totals and checkpoint rows in one insert: the flush's commit point. `token`
    /// names the batch for servers that deduplicate inserts (22.2+).
    async fn commit(&mut self, plan: &Plan, token: &str) -> Result<(), StoreError> {
        let mut rows = totals::rows(plan);
        if self.settings.cluster.is_some() {
            rows.push(totals::flush_marker(token));
        }
        let token = self.server.has_insert_tokens().then_some(token);
        self.insert("mentor_totals", &rows, token).await?;
        for moved in &plan.checkpoints {
            self.checkpoints
                .insert((moved.topic.clone(), moved.partition), moved.to);
        }
        Ok(())
    }

    /// Nothing to undo: every row is idempotent, and an uncommitted flush moved no
    /// checkpoint. Cached checkpoints are forgotten by the caller.
    fn abandon(&mut self) {}

    async fn ping(&mut self) -> bool {
        self.client
            .query("SELECT 1")
            .fetch_one::<u8>()
            .await
            .is_ok()
    }
}
