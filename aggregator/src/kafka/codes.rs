//! The compacted topic of referral codes, and the edge's follower of it.
//!
//! Why a compacted topic rather than the store: the edge then depends on Kafka alone (which
//! it needs anyway to accept clicks), not on ClickHouse being up; every edge holds the whole
//! directory in memory (codes are few: a million codes is tens of MiB); and a change reaches
//! every edge as fast as the broker delivers it. The single writer (the aggregator) publishes
//! a code's record after applying its command; a retired code is a tombstone.
//!
//! The follower reads the topic from the beginning (no consumer group, nothing committed),
//! applies each record to the [`CodeDirectory`], and announces each time it has reached the
//! end of every partition, so that a miss can wait, bounded, for a fresh view.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use referral_schemas::ReferralCode;
use referral_schemas::messages::SCHEMA_VERSION;
use tokio::sync::watch;

use super::{KafkaSettings, METADATA_TIMEOUT, SCHEMA_VERSION_HEADER};
use crate::codes::{CodeChange, CodeDirectory};

/// How long the broker may hold a fetch open when there is nothing new: the follower's
/// worst-case added latency for a code change.
const FETCH_WAIT: Duration = Duration::from_millis(100);

/// The follower's client context: reaching the end of a partition is how the follower
/// knows it caught up (`enable.partition.eof`), not an error; librdkafka's default context
/// would log every one at ERROR level.
pub struct FollowerContext;

impl ClientContext for FollowerContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(error, KafkaError::PartitionEOF(_)) {
            tracing::trace!(%error, "codes follower reached the end of a partition");
        } else {
            tracing::error!(%error, reason, "codes follower: librdkafka error");
        }
    }
}

impl ConsumerContext for FollowerContext {}

/// Publishes a code's current record (after the writer applied an assignment).
pub async fn publish_assignment(
    producer: &FutureProducer,
    topic: &str,
    code: &ReferralCode,
) -> Result<(), KafkaError> {
    let payload =
        serde_json::to_vec(code).map_err(|error| KafkaError::Subscription(error.to_string()))?;
    send(producer, topic, &code.code, Some(&payload)).await
}

/// Publishes a code's tombstone (after the writer applied a retirement).
pub async fn publish_retirement(
    producer: &FutureProducer,
    topic: &str,
    code: &str,
) -> Result<(), KafkaError> {
    send(producer, topic, code, None).await
}

async fn send(
    producer: &FutureProducer,
    topic: &str,
    code: &str,
    payload: Option<&[u8]>,
) -> Result<(), KafkaError> {
    let version = SCHEMA_VERSION.to_string();
    let headers = OwnedHeaders::new().insert(Header {
        key: SCHEMA_VERSION_HEADER,
        value: Some(version.as_str()),
    });
    let mut record: FutureRecord<'_, str, [u8]> =
        FutureRecord::to(topic).key(code).headers(headers);
    if let Some(payload) = payload {
        record = record.payload(payload);
    }
    producer
        .send(record, Duration::from_secs(0))
        .await
        .map(|_| ())
        .map_err(|(error, _)| error)
}

/// What the follower tells the edge about its progress.
#[derive(Clone, Debug)]
pub struct CodeSync {
    /// Increases each time the follower is at the end of every partition.
    caught_up: watch::Receiver<u64>,
}

impl CodeSync {
    /// Whether the follower has ever caught up (the directory is complete as of start).
    pub fn is_loaded(&self) -> bool {
        *self.caught_up.borrow() > 0
    }

    /// Waits, at most `limit`, for the follower to reach the end of the topic again: after
    /// this, the directory includes every change published before the call.
    pub async fn wait_for_fresh_view(&self, limit: Duration) -> bool {
        let mut caught_up = self.caught_up.clone();
        let seen = *caught_up.borrow_and_update();
        tokio::time::timeout(limit, caught_up.wait_for(|&epoch| epoch > seen))
            .await
            .is_ok_and(|changed| changed.is_ok())
    }
}

/// Starts following `settings.codes_topic` into `directory` until `stop` resolves.
pub async fn follow(
    settings: &KafkaSettings,
    directory: CodeDirectory,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<CodeSync, KafkaError> {
    let consumer: StreamConsumer<FollowerContext> = settings
        .client_config()
        .set("client.id", format!("{}-codes", settings.client_id))
        // Required by librdkafka, but unused: partitions are assigned, never subscribed,
        // and no offset is committed.
        .set("group.id", format!("{}-codes-follower", settings.client_id))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", FETCH_WAIT.as_millis().to_string())
        .create_with_context(FollowerContext)?;
    let topic = settings.codes_topic.clone();
    let consumer = Arc::new(consumer);
    let partitions = {
        let consumer = consumer.clone();
        let topic = topic.clone();
        tokio::task::spawn_blocking(move || -> Result<Vec<i32>, KafkaError> {
            let metadata = consumer.fetch_metadata(Some(&topic), METADATA_TIMEOUT)?;
            Ok(metadata
                .topics()
                .iter()
                .filter(|t| t.name() == topic)
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect())
        })
        .await
        .map_err(|error| KafkaError::Subscription(error.to_string()))??
    };
    if partitions.is_empty() {
        return Err(KafkaError::Subscription(format!(
            "topic {topic} has no partitions"
        )));
    }
    let mut assignment = TopicPartitionList::new();
    for partition in &partitions {
        assignment.add_partition_offset(&topic, *partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let (announce, caught_up) = watch::channel(0u64);
    tokio::spawn(run_follower(
        consumer, partitions, directory, announce, stop,
    ));
    Ok(CodeSync { caught_up })
}

async fn run_follower(
    consumer: Arc<StreamConsumer<FollowerContext>>,
    partitions: Vec<i32>,
    directory: CodeDirectory,
    announce: watch::Sender<u64>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    tokio::pin!(stop);
    let mut at_end: HashMap<i32, bool> = partitions.iter().map(|&p| (p, false)).collect();
    loop {
        let next = tokio::select! {
            next = consumer.recv() => next,
            () = &mut stop => return,
        };
        match next {
            Ok(message) => {
                at_end.insert(message.partition(), false);
                let Some(code) = message.key().and_then(|key| std::str::from_utf8(key).ok()) else {
                    tracing::warn!(
                        offset = message.offset(),
                        "code record without a text key; skipped"
                    );
                    continue;
                };
                let change = match message.payload() {
                    None => CodeChange::Retired {
                        code: code.to_owned(),
                    },
                    Some(payload) => match serde_json::from_slice::<ReferralCode>(payload) {
                        Ok(record) => CodeChange::Assigned {
                            code: record.code,
                            mentor_id: record.mentor_id,
                        },
                        Err(error) => {
                            tracing::warn!(%error, code, "undecodable code record; skipped");
                            continue;
                        }
                    },
                };
                directory.apply(&[change]);
            }
            Err(KafkaError::PartitionEOF(partition)) => {
                at_end.insert(partition, true);
                if at_end.values().all(|&end| end) {
                    announce.send_modify(|epoch| *epoch += 1);
                }
            }
            Err(error) => {
                tracing::warn!(%error, "codes follower error; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
