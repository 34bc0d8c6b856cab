//! The aggregator's Kafka consumer: one thread that polls, batches per partition and
//! flushes into ClickHouse (see [`crate::store::clickhouse`] for why that is exactly-once).
//!
//! Why one plain thread with a `BaseConsumer`: librdkafka runs rebalance callbacks inside
//! `poll`, on the polling thread. With flushes on the same thread, no insert is ever in
//! flight while a callback runs, so a revoked partition's batch can be flushed or dropped
//! inside the callback, before the revocation completes. While ClickHouse is down the
//! thread keeps polling (with the partitions paused) so that it stays in the group, and
//! retries the flush with a capped backoff.

pub mod fault;
pub mod worker;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::TopicPartitionList;

use crate::config::ConsumerArgs;
use crate::kafka::KafkaSettings;
use worker::{PartitionKey, Worker};

/// The longest the thread blocks in `poll`: bounds how late it notices shutdown or a due
/// batch.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Backoff between failed flushes, doubling up to the cap.
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_CAP: Duration = Duration::from_secs(5);

/// What the consumer thread tells the rest of the process.
#[derive(Debug, Default)]
pub struct ConsumerStatus {
    /// Joined, and the last flush (or ping) reached ClickHouse.
    pub ready: AtomicBool,
    /// Set by the process to stop: flush, commit, leave the group.
    pub stopping: AtomicBool,
}

/// The rdkafka context: rebalance callbacks and statistics.
pub struct AggregatorContext {
    worker: Mutex<Worker>,
}

impl AggregatorContext {
    fn worker(&self) -> MutexGuard<'_, Worker> {
        // A panic while holding it leaves batches that are at worst re-read: keep going.
        self.worker.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ClientContext for AggregatorContext {
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

impl ConsumerContext for AggregatorContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                metrics::counter!("referral_rebalances_total", "kind" => "assign").increment(1);
                let keys = keys(partitions);
                tracing::info!(partitions = ?keys, "partitions assigned");
                self.worker().assigned(keys);
            }
            Rebalance::Revoke(partitions) => {
                metrics::counter!("referral_rebalances_total", "kind" => "revoke").increment(1);
                let keys = keys(partitions);
                let lost = consumer.assignment_lost();
                tracing::info!(partitions = ?keys, lost, "partitions revoked");
                self.worker().revoked(consumer, keys, lost);
            }
            Rebalance::Error(error) => {
                metrics::counter!("referral_rebalances_total", "kind" => "error").increment(1);
                tracing::warn!(%error, "rebalance error");
            }
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

/// Creates the consumer, joins the group on `settings.topic`, and starts the thread.
pub fn start(
    settings: &KafkaSettings,
    args: &ConsumerArgs,
    worker: Worker,
    status: Arc<ConsumerStatus>,
) -> Result<JoinHandle<()>, KafkaError> {
    let session_ms = args.kafka_session_timeout.as_millis().max(1000);
    let heartbeat_ms = (session_ms / 5).max(100);
    let consumer: BaseConsumer<AggregatorContext> = settings
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
        .create_with_context(AggregatorContext {
            worker: Mutex::new(worker),
        })?;
    consumer.subscribe(&[settings.topic.as_str()])?;
    let drain = args.drain_timeout;
    std::thread::Builder::new()
        .name("referral-consumer".into())
        .spawn(move || run(consumer, status, drain))
        .map_err(|error| KafkaError::Subscription(format!("cannot start the consumer: {error}")))
}

fn run(consumer: BaseConsumer<AggregatorContext>, status: Arc<ConsumerStatus>, drain: Duration) {
    let mut retry: Option<(Instant, Duration)> = None;
    let mut paused = false;
    status
        .ready
        .store(consumer.context().worker().ping(), Ordering::Relaxed);
    while !status.stopping.load(Ordering::Relaxed) {
        let timeout = {
            let worker = consumer.context().worker();
            let wake = match retry {
                Some((at, _)) => Some(at),
                None => worker.next_deadline(),
            };
            wake.map_or(POLL_INTERVAL, |at| {
                at.saturating_duration_since(Instant::now())
                    .min(POLL_INTERVAL)
            })
        };
        match consumer.poll(timeout) {
            Some(Ok(message)) => consumer.context().worker().add(&message),
            Some(Err(error)) => {
                metrics::counter!("referral_consumer_errors_total").increment(1);
                tracing::warn!(%error, "consumer error");
            }
            None => {}
        }
        let mut worker = consumer.context().worker();
        let attempt = match retry {
            Some((at, _)) => Instant::now() >= at,
            None => worker.due(),
        };
        if !attempt {
            continue;
        }
        match worker.flush(&consumer, None) {
            Ok(()) => {
                retry = None;
                status.ready.store(true, Ordering::Relaxed);
                if paused {
                    paused = !set_paused(&consumer, false);
                }
            }
            Err(error) => {
                let backoff = retry.map_or(RETRY_FIRST, |(_, last)| (last * 2).min(RETRY_CAP));
                tracing::warn!(%error, retry_in = ?backoff, pending = worker.pending_rows(), "flush failed; batches kept");
                retry = Some((Instant::now() + backoff, backoff));
                status.ready.store(false, Ordering::Relaxed);
                // Stop fetching until the store is back: memory stays bounded.
                paused = set_paused(&consumer, true) || paused;
            }
        }
    }
    drain_and_leave(&consumer, drain);
}

/// Pauses or resumes the whole assignment; true when it succeeded.
fn set_paused(consumer: &BaseConsumer<AggregatorContext>, pause: bool) -> bool {
    let Ok(assignment) = consumer.assignment() else {
        return false;
    };
    let result = if pause {
        consumer.pause(&assignment)
    } else {
        consumer.resume(&assignment)
    };
    result.is_ok()
}

/// Flushes what is pending (retrying until `drain` passes), commits, and leaves the group.
fn drain_and_leave(consumer: &BaseConsumer<AggregatorContext>, drain: Duration) {
    let deadline = Instant::now() + drain;
    loop {
        let mut worker = consumer.context().worker();
        if !worker.has_pending() {
            break;
        }
        match worker.flush(consumer, None) {
            Ok(()) => break,
            Err(error) if Instant::now() < deadline => {
                tracing::warn!(%error, "final flush failed; retrying");
                drop(worker);
                std::thread::sleep(RETRY_FIRST);
            }
            Err(error) => {
                tracing::error!(%error, partitions = ?worker.pending_partitions(), "final flush failed; the batches will be read again by the next owner");
                break;
            }
        }
    }
    // The flush committed its offsets asynchronously; a commit lost here only means the
    // next owner re-reads messages that the stored checkpoint makes it skip.
    consumer.unsubscribe();
    // Serve the revocation callback that unsubscribing triggers.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until && consumer.assignment().is_ok_and(|a| a.count() > 0) {
        let _ = consumer.poll(Duration::from_millis(50));
    }
    tracing::info!("consumer left the group");
}
