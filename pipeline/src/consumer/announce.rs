//! What a flush tells the world beyond the store, in each mode.
//!
//! * [`KafkaAnnouncer`] (production): before the commit point, code changes go to the
//!   compacted codes topic every edge follows, and undecodable messages to the dead-letter
//!   topic, each acknowledged by the broker. A replayed flush announces them again; the
//!   codes topic keeps the latest record per code.
//! * [`InProcessAnnouncer`] (embedded): undecodable records go to a dead-letter file before
//!   the commit point; after it, code changes reach this process's code directory and every
//!   verdict reaches the request waiting for it, without a look-up in the store.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use referral_schemas::ReferralCode;

use super::DeadLetter;
use crate::codes::{CodeChange, CodeDirectory};
use crate::kafka::codes;
use crate::plan::rows::CodeRow;
use crate::plan::{PartitionKey, Plan};
use crate::verdicts::VerdictWaiter;

/// The consumer's side effects around the commit point of a flush.
#[async_trait]
pub trait Announcer: Send {
    /// Before the commit point: what must reach the world even if the flush is replayed.
    /// An error fails the flush (it is retried whole).
    async fn before_commit(
        &mut self,
        plan: &Plan,
        dead_letters: &[(PartitionKey, DeadLetter)],
    ) -> Result<(), String>;

    /// After the commit point: what only a stored flush may tell.
    fn after_commit(&mut self, plan: &Plan);
}

/// How long a flush's code publication waits for room in an empty-handed full queue
/// (another producer of this process filled it) before it tries again.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(5);

/// The code record of a code row: `None` when it is retired.
fn live_code(row: &CodeRow) -> Option<ReferralCode> {
    row.live_code()
}

fn count_dead_letter(partition: &PartitionKey, letter: &DeadLetter) {
    metrics::counter!("referral_dead_lettered_total", "reason" => letter.label).increment(1);
    tracing::warn!(topic = %partition.0, partition = partition.1, offset = letter.offset, reason = %letter.reason, "message dead-lettered");
}

/// Production: the codes topic and the dead-letter topic.
pub struct KafkaAnnouncer {
    pub producer: FutureProducer,
    pub codes_topic: String,
    pub dead_letter_topic: String,
    /// How long one send may take.
    pub produce_timeout: Duration,
}

#[async_trait]
impl Announcer for KafkaAnnouncer {
    async fn before_commit(
        &mut self,
        plan: &Plan,
        dead_letters: &[(PartitionKey, DeadLetter)],
    ) -> Result<(), String> {
        // Every code of the flush enqueued in order, then every acknowledgement awaited:
        // a bulk assignment of a thousand codes costs one round trip, not a thousand. A
        // full local queue waits for the oldest acknowledgement (within the produce
        // timeout), so a flush with more codes than the queue holds still goes through.
        let published = |error: KafkaError| format!("code publication: {error}");
        let deadline = Instant::now() + self.produce_timeout;
        let mut deliveries = VecDeque::with_capacity(plan.codes.len());
        for row in &plan.codes {
            let code = live_code(row);
            loop {
                match codes::enqueue(&self.producer, &self.codes_topic, &row.code, code.as_ref()) {
                    Ok(delivery) => {
                        deliveries.push_back(delivery);
                        break;
                    }
                    Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull))
                        if Instant::now() < deadline =>
                    {
                        match deliveries.pop_front() {
                            Some(oldest) => codes::delivered(oldest).await.map_err(published)?,
                            None => tokio::time::sleep(QUEUE_FULL_PAUSE).await,
                        }
                    }
                    Err(error) => return Err(published(error)),
                }
            }
        }
        for delivery in deliveries {
            codes::delivered(delivery).await.map_err(published)?;
        }
        for (partition, letter) in dead_letters {
            self.send_dead_letter(partition, letter).await?;
            count_dead_letter(partition, letter);
        }
        Ok(())
    }

    fn after_commit(&mut self, _: &Plan) {}
}

impl KafkaAnnouncer {
    /// Sends one undecodable message with the reason and its source in headers, and waits
    /// for the broker's ack.
    async fn send_dead_letter(
        &self,
        (topic, partition): &PartitionKey,
        letter: &DeadLetter,
    ) -> Result<(), String> {
        let partition = partition.to_string();
        let offset = letter.offset.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "dead_letter_reason",
                value: Some(letter.reason.as_str()),
            })
            .insert(Header {
                key: "source_topic",
                value: Some(topic.as_str()),
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
            FutureRecord::to(&self.dead_letter_topic).headers(headers);
        if let Some(key) = &letter.key {
            record = record.key(key.as_slice());
        }
        if let Some(payload) = &letter.payload {
            record = record.payload(payload.as_slice());
        }
        self.producer
            .send(record, self.produce_timeout)
            .await
            .map(|_| ())
            .map_err(|(error, _)| format!("dead letter: {error}"))
    }
}

/// Embedded: this process's code directory and verdict waiters, and a dead-letter file.
pub struct InProcessAnnouncer {
    pub directory: CodeDirectory,
    pub verdicts: Arc<VerdictWaiter>,
    /// JSON lines, one per undecodable record (`DATA_DIR/dead-letters.jsonl`).
    pub dead_letter_file: PathBuf,
}

impl InProcessAnnouncer {
    fn write_dead_letters(
        &self,
        dead_letters: &[(PartitionKey, DeadLetter)],
    ) -> Result<(), String> {
        let mut lines = Vec::new();
        for ((topic, partition), letter) in dead_letters {
            let line = serde_json::json!({
                "source_topic": topic,
                "source_partition": partition,
                "source_offset": letter.offset,
                "reason": letter.reason,
                "payload": letter.payload.as_deref().map(String::from_utf8_lossy),
            });
            lines.extend_from_slice(line.to_string().as_bytes());
            lines.push(b'\n');
        }
        let mut file: File = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.dead_letter_file)
            .map_err(|error| format!("{}: {error}", self.dead_letter_file.display()))?;
        file.write_all(&lines)
            .and_then(|()| file.sync_data())
            .map_err(|error| format!("{}: {error}", self.dead_letter_file.display()))
    }
}

#[async_trait]
impl Announcer for InProcessAnnouncer {
    async fn before_commit(
        &mut self,
        _: &Plan,
        dead_letters: &[(PartitionKey, DeadLetter)],
    ) -> Result<(), String> {
        if dead_letters.is_empty() {
            return Ok(());
        }
        self.write_dead_letters(dead_letters)?;
        for (partition, letter) in dead_letters {
            count_dead_letter(partition, letter);
        }
        Ok(())
    }

    /// Codes first: a code's PUT is answered with its verdict, and clicks sent after that
    /// answer must find the code.
    fn after_commit(&mut self, plan: &Plan) {
        let changes: Vec<CodeChange> = plan
            .codes
            .iter()
            .map(|row| match live_code(row) {
                Some(code) => CodeChange::Assigned {
                    code: code.code,
                    mentor_id: code.mentor_id,
                    destination_url: code.destination_url,
                },
                None => CodeChange::Retired {
                    code: row.code.clone(),
                },
            })
            .collect();
        self.directory.apply(&changes);
        self.verdicts.deliver(&plan.verdicts);
    }
}
