//! The Kafka source: a member of the consumer group on the attribution log.
//!
//! Cooperative-sticky assignment, auto-commit off: offsets are committed after the flush
//! that stored them, and only as a hint (the store's checkpoint decides what is applied).
//! Rebalance callbacks run inside `poll` and flush (or, when the assignment was lost, drop)
//! a revoked partition's batch before the revocation completes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::Offset;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::TopicPartitionList;

use super::{LogSource, Record, SharedWorker, lock};
use crate::config::ConsumerArgs;
use crate::kafka::KafkaSettings;
use crate::plan::PartitionKey;

/// The longest a seek back over a gap in the offsets may block the consumer thread.
const SEEK_TIMEOUT: Duration = Duration::from_secs(1);

/// The rdkafka context: rebalance callbacks and statistics.
pub struct SourceContext {
    worker: SharedWorker,
    /// Fetching is paused (the store is failing): partitions assigned meanwhile are paused
    /// too, or they would fill memory while the batches cannot be written.
    paused: AtomicBool,
}

impl ClientContext for SourceContext {
    fn stats(&self, statistics: Statistics) {
        for (topic, stats) in &statistics.topics {
            for (partition, stats) in &stats.partitions {
                // -1 is librdkafka's internal "unassigned" partition; lag -1 is unknown.
                if *partition >= 0 && stats.consumer_lag >= 0 {
                    metrics::gauge!(
                        "referral_consumer_lag",
                        "topic" => topic.clone(),
                        "partition" => partition.to_string()
                    )
                    .set(stats.consumer_lag as f64);
                }
            }
        }
    }
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                metrics::counter!("referral_rebalances_total", "kind" => "assign").increment(1);
                let keys = keys(partitions);
                tracing::info!(partitions = ?keys, "partitions assigned");
                lock(&self.worker).assigned(keys);
            }
            Rebalance::Revoke(partitions) => {
                metrics::counter!("referral_rebalances_total", "kind" => "revoke").increment(1);
                let keys = keys(partitions);
                let lost = consumer.assignment_lost();
                tracing::info!(partitions = ?keys, lost, "partitions revoked");
                let stored = lock(&self.worker).revoked(keys, lost);
                commit(consumer, &stored);
            }
            Rebalance::Error(error) => {
                metrics::counter!("referral_rebalances_total", "kind" => "error").increment(1);
                tracing::warn!(%error, "rebalance error");
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance
            && self.paused.load(Ordering::Relaxed)
            && let Err(error) = consumer.pause(partitions)
        {
            tracing::warn!(%error, "cannot pause newly assigned partitions");
        }
    }
}

fn keys(partitions: &TopicPartitionList) -> Vec<PartitionKey> {
    partitions
        .elements()
        .iter()
        .map(|element| (element.topic().to_owned(), element.partition()))
        .collect()
}

/// Commits `stored` asynchronously: Kafka's commit only says where a new owner starts
/// reading; the checkpoint in the store decides what is applied.
fn commit(consumer: &BaseConsumer<SourceContext>, stored: &[(PartitionKey, i64)]) {
    if stored.is_empty() {
        return;
    }
    let mut offsets = TopicPartitionList::new();
    for ((topic, partition), next) in stored {
        let _ = offsets.add_partition_offset(topic, *partition, Offset::Offset(*next));
    }
    if let Err(error) = consumer.commit(&offsets, CommitMode::Async) {
        tracing::warn!(%error, "offset commit failed (the stored checkpoint still holds)");
    }
}

/// The consumer group member.
pub struct KafkaSource {
    consumer: BaseConsumer<SourceContext>,
}

impl KafkaSource {
    /// Creates the consumer and subscribes to `settings.topic` in `args.kafka_group_id`.
    pub fn subscribe(
        settings: &KafkaSettings,
        args: &ConsumerArgs,
        worker: SharedWorker,
    ) -> Result<Self, KafkaError> {
        let session_ms = args.kafka_session_timeout.as_millis().max(1000);
        let heartbeat_ms = (session_ms / 5).max(100);
        let consumer: BaseConsumer<SourceContext> = settings
            .client_config()
            .set("client.id", &settings.client_id)
            .set("group.id", &args.kafka_group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", session_ms.to_string())
            .set("heartbeat.interval.ms", heartbeat_ms.to_string())
            .set("statistics.interval.ms", "5000")
            .set(
                "fetch.wait.max.ms",
                args.kafka_fetch_wait.as_millis().max(1).to_string(),
            )
            .create_with_context(SourceContext {
                worker,
                paused: AtomicBool::new(false),
            })?;
        consumer.subscribe(&[settings.topic.as_str()])?;
        Ok(Self { consumer })
    }
}

impl LogSource for KafkaSource {
    fn poll(&mut self, timeout: Duration, worker: &SharedWorker) -> Result<usize, String> {
        let (key, seek_from) = match self.consumer.poll(timeout) {
            Some(Ok(message)) => {
                let seek_from = lock(worker).add(&Record {
                    topic: message.topic(),
                    partition: message.partition(),
                    offset: message.offset(),
                    key: message.key(),
                    payload: message.payload(),
                });
                ((message.topic().to_owned(), message.partition()), seek_from)
            }
            Some(Err(error)) => return Err(error.to_string()),
            None => return Ok(0),
        };
        // Records were missing before the one just read: read the partition again
        // (librdkafka drops what it had fetched for it before the seek).
        if let Some(from) = seek_from {
            let (topic, partition) = &key;
            match self
                .consumer
                .seek(topic, *partition, Offset::Offset(from), SEEK_TIMEOUT)
            {
                Ok(()) => lock(worker).sought(&key),
                Err(error) => {
                    tracing::warn!(%error, topic, partition, from, "cannot seek back over a gap; tried again on a later record");
                }
            }
        }
        Ok(1)
    }

    fn stored(&mut self, checkpoints: &[(PartitionKey, i64)], _: &SharedWorker) {
        commit(&self.consumer, checkpoints);
    }

    fn pause(&mut self, paused: bool) -> bool {
        let Ok(assignment) = self.consumer.assignment() else {
            return false;
        };
        // Set first: a rebalance served by the next poll sees it.
        self.consumer
            .context()
            .paused
            .store(paused, Ordering::Relaxed);
        let result = if paused {
            self.consumer.pause(&assignment)
        } else {
            self.consumer.resume(&assignment)
        };
        result.is_ok()
    }

    fn leave(&mut self, _: &SharedWorker) {
        // The last flush committed its offsets asynchronously; a commit lost here only means
        // the next owner re-reads messages that the stored checkpoint makes it skip.
        self.consumer.unsubscribe();
        // Serve the revocation callback that unsubscribing triggers.
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until && self.consumer.assignment().is_ok_and(|a| a.count() > 0) {
            let _ = self.consumer.poll(Duration::from_millis(50));
        }
        tracing::info!("consumer left the group");
    }
}
