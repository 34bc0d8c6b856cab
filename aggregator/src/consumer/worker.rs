//! Pending batches per partition, and the flush that writes them.
//!
//! Owned by the consumer thread behind a mutex that the thread never holds while polling,
//! so the rebalance callback (which runs inside `poll`) can flush or drop a revoked
//! partition's batch before the revocation completes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::Offset;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use referral_schemas::messages::{LogEvent, LogMessage, MessageDecodeError};
use referral_schemas::{ReferralCode, Timestamp};
use tokio::runtime::Handle;

use super::fault::FaultPoint;
use crate::kafka::codes::{publish_assignment, publish_retirement};
use crate::store::StoreError;
use crate::store::clickhouse::plan::{self, PartitionBatch, Plan, References};
use crate::store::clickhouse::sink::ClickHouseSink;

/// A topic and partition.
pub type PartitionKey = (String, i32);

/// What the worker needs besides the sink and producer.
#[derive(Clone, Debug)]
pub struct WorkerSettings {
    pub codes_topic: String,
    pub dead_letter_topic: String,
    pub batch_max_rows: usize,
    pub batch_max_bytes: usize,
    pub batch_max_wait: Duration,
    pub window_ms: i64,
    /// How long a producer send (dead letter, code publication) may take.
    pub produce_timeout: Duration,
}

/// A message that could not be decoded, on its way to the dead-letter topic.
#[derive(Clone, Debug)]
struct DeadLetter {
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    reason: String,
    label: &'static str,
}

/// One partition's messages since its last flush.
#[derive(Debug)]
struct Pending {
    events: Vec<(i64, LogEvent)>,
    dead_letters: Vec<DeadLetter>,
    /// The offset after the last message read.
    end: i64,
    /// Messages read (events and dead letters).
    messages: usize,
    bytes: usize,
    since: Instant,
}

impl Pending {
    fn rows(&self) -> usize {
        self.messages
    }
}

/// Why a flush failed. The batch stays pending and is retried.
#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("kafka: {0}")]
    Kafka(String),
    #[error("injected fault: {0}")]
    Injected(&'static str),
}

pub struct Worker {
    sink: ClickHouseSink,
    producer: FutureProducer,
    handle: Handle,
    settings: WorkerSettings,
    pending: BTreeMap<PartitionKey, Pending>,
    owned: HashSet<PartitionKey>,
    fault: FaultPoint,
    /// Flushes that stored their checkpoint, and flushes attempted (for fault injection).
    flushes: u64,
    attempts: u64,
}

impl Worker {
    pub fn new(
        sink: ClickHouseSink,
        producer: FutureProducer,
        handle: Handle,
        settings: WorkerSettings,
        fault: FaultPoint,
    ) -> Self {
        Self {
            sink,
            producer,
            handle,
            settings,
            pending: BTreeMap::new(),
            owned: HashSet::new(),
            fault,
            flushes: 0,
            attempts: 0,
        }
    }

    /// Adds one message to its partition's batch; undecodable ones become dead letters.
    pub fn add(&mut self, message: &BorrowedMessage<'_>) {
        let key = (message.topic().to_owned(), message.partition());
        if !self.owned.contains(&key) {
            // Fetched before a revocation: the new owner reads it again.
            return;
        }
        let payload = message.payload();
        let decoded = match payload {
            Some(bytes) => LogMessage::from_json(bytes),
            None => Err(MessageDecodeError::UnsupportedVersion(0)),
        };
        let pending = self.pending.entry(key).or_insert_with(|| Pending {
            events: Vec::new(),
            dead_letters: Vec::new(),
            end: message.offset(),
            messages: 0,
            bytes: 0,
            since: Instant::now(),
        });
        pending.end = message.offset() + 1;
        pending.messages += 1;
        pending.bytes += payload.map_or(0, <[u8]>::len);
        match decoded {
            Ok(decoded) => pending.events.push((message.offset(), decoded.event)),
            Err(error) => {
                let (label, reason) = match (&error, payload) {
                    (_, None) => ("empty", "the message has no payload".to_owned()),
                    (MessageDecodeError::Malformed(_), _) => ("malformed", error.to_string()),
                    (MessageDecodeError::UnsupportedVersion(_), _) => {
                        ("unsupported_version", error.to_string())
                    }
                };
                pending.dead_letters.push(DeadLetter {
                    offset: message.offset(),
                    key: message.key().map(<[u8]>::to_vec),
                    payload: payload.map(<[u8]>::to_vec),
                    reason,
                    label,
                });
            }
        }
    }

    /// Whether some partition's batch is full or old enough.
    pub fn due(&self) -> bool {
        self.pending.values().any(|pending| {
            pending.rows() >= self.settings.batch_max_rows
                || pending.bytes >= self.settings.batch_max_bytes
                || pending.since.elapsed() >= self.settings.batch_max_wait
        })
    }

    /// When the oldest batch becomes due by time.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending
            .values()
            .map(|pending| pending.since + self.settings.batch_max_wait)
            .min()
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Rows waiting in all batches (to stop fetching while ClickHouse is down).
    pub fn pending_rows(&self) -> usize {
        self.pending.values().map(Pending::rows).sum()
    }

    /// Partitions assigned to this consumer: their checkpoints are read afresh.
    pub fn assigned(&mut self, partitions: Vec<PartitionKey>) {
        self.sink.forget_checkpoints(&partitions);
        self.owned.extend(partitions);
    }

    /// Partitions being revoked. Their batches are flushed (when the assignment was not
    /// lost) or dropped, before this returns, that is before the revocation completes.
    /// Dropping is safe: nothing of theirs past the checkpoint is committed anywhere.
    pub fn revoked<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        partitions: Vec<PartitionKey>,
        lost: bool,
    ) {
        let with_batches: Vec<PartitionKey> = partitions
            .iter()
            .filter(|key| self.pending.contains_key(*key))
            .cloned()
            .collect();
        if !with_batches.is_empty() {
            if lost {
                tracing::warn!(partitions = ?with_batches, "assignment lost: pending batches dropped");
            } else if let Err(error) = self.flush(consumer, Some(&with_batches)) {
                tracing::warn!(%error, partitions = ?with_batches, "revoked partitions' batches dropped: flush failed");
            }
        }
        for key in &partitions {
            self.pending.remove(key);
            self.owned.remove(key);
            // Not ours any more: its new owner reports its lag. A frozen value here would
            // keep alerting (or hide real lag) long after the move.
            metrics::gauge!(
                "referral_consumer_lag",
                "topic" => key.0.clone(),
                "partition" => key.1.to_string()
            )
            .set(0.0);
        }
        self.sink.forget_checkpoints(&partitions);
    }

    /// Writes the pending batches (all, or those of `only`), then commits their offsets.
    /// On error the batches stay pending and their cached checkpoints are forgotten.
    pub fn flush<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        only: Option<&[PartitionKey]>,
    ) -> Result<(), FlushError> {
        let keys: Vec<PartitionKey> = self
            .pending
            .keys()
            .filter(|key| only.is_none_or(|only| only.contains(key)))
            .cloned()
            .collect();
        if keys.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let handle = self.handle.clone();
        let result = handle.block_on(self.write(&keys));
        let plan = match result {
            Ok(plan) => plan,
            Err(error) => {
                self.sink.forget_checkpoints(&keys);
                metrics::counter!("referral_flush_failures_total").increment(1);
                return Err(error);
            }
        };
        self.flushes += 1;
        if self.fault.crash_after_checkpoint(self.flushes) {
            super::fault::kill_self("after the totals insert, before the Kafka commit");
        }
        let mut offsets = TopicPartitionList::new();
        let mut rows = 0;
        let mut bytes = 0;
        for key in &keys {
            if let Some(pending) = self.pending.remove(key) {
                rows += pending.rows();
                bytes += pending.bytes;
                // Kafka's commit is only a hint for where to start reading; the checkpoint
                // in ClickHouse is what decides what is applied.
                let _ = offsets.add_partition_offset(&key.0, key.1, Offset::Offset(pending.end));
            }
        }
        if let Err(error) = consumer.commit(&offsets, CommitMode::Async) {
            tracing::warn!(%error, "offset commit failed (the stored checkpoint still holds)");
        }
        metrics::histogram!("referral_batch_rows").record(rows as f64);
        metrics::histogram!("referral_batch_bytes").record(bytes as f64);
        metrics::histogram!("referral_flush_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("referral_events_applied_total").increment((rows - plan.skipped) as u64);
        if plan.skipped > 0 {
            metrics::counter!("referral_events_skipped_total").increment(plan.skipped as u64);
        }
        for outcome in &plan.outcomes {
            metrics::counter!("referral_commands_total", "outcome" => *outcome).increment(1);
        }
        Ok(())
    }

    async fn write(&mut self, keys: &[PartitionKey]) -> Result<Plan, FlushError> {
        self.attempts += 1;
        // The events move into the batches (no copy) and come back if the flush fails.
        let batches: Vec<PartitionBatch> = keys
            .iter()
            .filter_map(|key| {
                self.pending.get_mut(key).map(|pending| PartitionBatch {
                    topic: key.0.clone(),
                    partition: key.1,
                    events: std::mem::take(&mut pending.events),
                    end: pending.end,
                })
            })
            .collect();
        let result = self.write_batches(keys, &batches).await;
        if result.is_err() {
            for batch in batches {
                if let Some(pending) = self.pending.get_mut(&(batch.topic, batch.partition)) {
                    pending.events = batch.events;
                }
            }
        }
        result
    }

    async fn write_batches(
        &mut self,
        keys: &[PartitionKey],
        batches: &[PartitionBatch],
    ) -> Result<Plan, FlushError> {
        let checkpoints = self.sink.checkpoints(keys).await?;
        let references = References::of(batches.iter().flat_map(|batch| {
            let checkpoint = checkpoints
                .get(&(batch.topic.clone(), batch.partition))
                .copied()
                .unwrap_or(0);
            batch
                .events
                .iter()
                .filter(move |(offset, _)| *offset >= checkpoint)
                .map(|(_, event)| event)
        }));
        let known = self.sink.load(&references).await?;
        let plan = plan::plan(
            batches,
            &checkpoints,
            known,
            self.settings.window_ms,
            Timestamp::now(),
        );
        self.sink.write_state(&plan).await?;
        self.publish_codes(&plan).await?;
        self.send_dead_letters(keys, &checkpoints).await?;
        if self.fault.crash_before_checkpoint(self.attempts) {
            super::fault::kill_self("after the state inserts, before the totals insert");
        }
        let token = batches
            .iter()
            .map(|batch| {
                let from = checkpoints
                    .get(&(batch.topic.clone(), batch.partition))
                    .copied()
                    .unwrap_or(0);
                format!("{}:{}:{}-{}", batch.topic, batch.partition, from, batch.end)
            })
            .collect::<Vec<_>>()
            .join(",");
        self.sink.write_totals(&plan, &token).await?;
        if self.fault.lose_totals_ack(self.attempts) {
            return Err(FlushError::Injected("totals insert acknowledged, ack lost"));
        }
        self.sink.checkpoints_stored(
            batches
                .iter()
                .map(|batch| ((batch.topic.clone(), batch.partition), batch.end)),
        );
        Ok(plan)
    }

    /// Publishes the codes this flush changed to the compacted topic the edges follow.
    /// A replay publishes them again: the topic keeps the latest record per code.
    async fn publish_codes(&self, plan: &Plan) -> Result<(), FlushError> {
        for row in &plan.codes {
            let sent = if row.retired == 1 {
                publish_retirement(&self.producer, &self.settings.codes_topic, &row.code).await
            } else {
                let code = ReferralCode {
                    code: row.code.clone(),
                    mentor_id: row.mentor_id.clone(),
                    created_at: Timestamp::from_millis(row.created_at),
                    updated_at: Timestamp::from_millis(row.updated_at),
                };
                publish_assignment(&self.producer, &self.settings.codes_topic, &code).await
            };
            sent.map_err(|error| FlushError::Kafka(format!("code publication: {error}")))?;
        }
        Ok(())
    }

    /// Sends the undecodable messages at or past the checkpoint to the dead-letter topic,
    /// with the reason and the source in headers, and waits for the broker's ack.
    async fn send_dead_letters(
        &self,
        keys: &[PartitionKey],
        checkpoints: &HashMap<PartitionKey, i64>,
    ) -> Result<(), FlushError> {
        for key in keys {
            let Some(pending) = self.pending.get(key) else {
                continue;
            };
            let checkpoint = checkpoints.get(key).copied().unwrap_or(0);
            for letter in pending
                .dead_letters
                .iter()
                .filter(|letter| letter.offset >= checkpoint)
            {
                let partition = key.1.to_string();
                let offset = letter.offset.to_string();
                let headers = OwnedHeaders::new()
                    .insert(Header {
                        key: "dead_letter_reason",
                        value: Some(letter.reason.as_str()),
                    })
                    .insert(Header {
                        key: "source_topic",
                        value: Some(key.0.as_str()),
                    })
                    .insert(Header {
                        key: "source_partition",
                        value: Some(partition.as_str()),
                    })
                    .insert(Header {
                        key: "source_offset",
                        value: Some(offset.as_str()),
                    });
                let mut record: FutureRecord<'_, [u8], [u8]> =
                    FutureRecord::to(&self.settings.dead_letter_topic).headers(headers);
                if let Some(key) = &letter.key {
                    record = record.key(key.as_slice());
                }
                if let Some(payload) = &letter.payload {
                    record = record.payload(payload.as_slice());
                }
                self.producer
                    .send(record, self.settings.produce_timeout)
                    .await
                    .map_err(|(error, _)| FlushError::Kafka(format!("dead letter: {error}")))?;
                metrics::counter!("referral_dead_lettered_total", "reason" => letter.label)
                    .increment(1);
                tracing::warn!(topic = %key.0, partition = key.1, offset = letter.offset, reason = %letter.reason, "message dead-lettered");
            }
        }
        Ok(())
    }

    /// Whether ClickHouse answers (for /readyz while flushes fail).
    pub fn ping(&self) -> bool {
        self.handle.block_on(self.sink.ping())
    }

    pub fn pending_partitions(&self) -> Vec<PartitionKey> {
        self.pending.keys().cloned().collect()
    }
}
