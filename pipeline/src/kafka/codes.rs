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
//! end of every partition, so that a miss can wait, bounded, for a fresh view. Because
//! librdkafka reports the end of a partition only once per arrival there, an idle topic
//! gives no new such announcement: a miss then asks the prober, which compares the topic's
//! end offsets (from the broker) with what the follower applied.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use referral_schemas::ReferralCode;
use referral_schemas::messages::SCHEMA_VERSION;
use tokio::sync::{Notify, oneshot, watch};

use super::{KafkaSettings, METADATA_TIMEOUT, SCHEMA_VERSION_HEADER};
use crate::codes::{CodeChange, CodeDirectory};

/// How long the broker may hold a fetch open when there is nothing new: the follower's
/// worst-case added latency for a code change.
const FETCH_WAIT: Duration = Duration::from_millis(100);
/// Shortest time between two freshness probes.
const PROBE_INTERVAL: Duration = Duration::from_millis(25);
/// Longest a freshness probe waits for the broker's answer on one partition: no miss waits
/// longer than the edge's 500 ms, so a later answer would help nobody.
const PROBE_TIMEOUT: Duration = Duration::from_millis(400);

/// The follower's client context: reaching the end of a partition is how the follower
/// knows it caught up (`enable.partition.eof`), not an error; librdkafka's default context
/// would log every one at ERROR level.
pub struct FollowerContext;

impl ClientContext for FollowerContext {
    fn error(&self, error: KafkaError, reason: &str) {
        // librdkafka reports the end of an empty partition as a global error, the others as
        // partition errors: both are how the follower knows it caught up.
        if matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        ) {
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
    delivered(enqueue(producer, topic, &code.code, Some(code))?).await
}

/// Publishes a code's tombstone (after the writer applied a retirement).
pub async fn publish_retirement(
    producer: &FutureProducer,
    topic: &str,
    code: &str,
) -> Result<(), KafkaError> {
    delivered(enqueue(producer, topic, code, None)?).await
}

/// Enqueues a code's state (its record, or `None` for a retirement's tombstone) without
/// waiting for the broker. Messages enqueued one after the other reach the topic in that
/// order (the producer is idempotent), so a writer enqueues a flush's codes at once and
/// then waits for them all: one round trip per flush, not one per code. A full local queue
/// is an error now.
pub fn enqueue(
    producer: &FutureProducer,
    topic: &str,
    code: &str,
    record: Option<&ReferralCode>,
) -> Result<DeliveryFuture, KafkaError> {
    let payload = record
        .map(serde_json::to_vec)
        .transpose()
        .map_err(|error| KafkaError::Subscription(error.to_string()))?;
    let version = SCHEMA_VERSION.to_string();
    let headers = OwnedHeaders::new().insert(Header {
        key: SCHEMA_VERSION_HEADER,
        value: Some(version.as_str()),
    });
    let mut message: FutureRecord<'_, str, [u8]> =
        FutureRecord::to(topic).key(code).headers(headers);
    if let Some(payload) = &payload {
        message = message.payload(payload);
    }
    producer.send_result(message).map_err(|(error, _)| error)
}

/// Waits for an enqueued code's acknowledgement.
pub async fn delivered(delivery: DeliveryFuture) -> Result<(), KafkaError> {
    match delivery.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((error, _))) => Err(error),
        Err(_) => Err(KafkaError::Canceled),
    }
}

/// What the follower tells the edge about its progress.
#[derive(Clone, Debug)]
pub struct CodeSync {
    /// The latest instant as of which the directory is known to hold every change published
    /// before it; `None` until the follower first reached the end of the topic (or a probe
    /// found nothing left to apply).
    complete_as_of: watch::Receiver<Option<Instant>>,
    /// Wakes the prober: a miss wants to know whether the directory is complete now.
    probe_wanted: Arc<Notify>,
}

impl CodeSync {
    /// Whether the follower has ever caught up (the directory is complete as of start).
    pub fn is_loaded(&self) -> bool {
        self.complete_as_of.borrow().is_some()
    }

    /// Waits, at most `limit`, until the directory is known to include every change published
    /// before the call: either the follower reaches the end of the topic again, or a probe
    /// started after the call finds nothing left to apply (the usual case for an unknown
    /// code: one broker round trip, shared with every other miss of the moment).
    pub async fn wait_for_fresh_view(&self, limit: Duration) -> bool {
        let asked = Instant::now();
        let mut complete = self.complete_as_of.clone();
        self.probe_wanted.notify_one();
        tokio::time::timeout(
            limit,
            complete.wait_for(|as_of| as_of.is_some_and(|at| at >= asked)),
        )
        .await
        .is_ok_and(|changed| changed.is_ok())
    }
}

/// Next offset to apply, per partition: written by the follower after each record, read by
/// the prober.
type AppliedOffsets = Arc<Mutex<HashMap<i32, i64>>>;

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
    // Offsets requests on a client of their own: on the follower's connection they would
    // queue behind its long-polling fetch (up to the fetch wait) on a real broker.
    let offsets: BaseConsumer<FollowerContext> = settings
        .client_config()
        .set("client.id", format!("{}-codes-probe", settings.client_id))
        .set("group.id", format!("{}-codes-follower", settings.client_id))
        .set("enable.auto.commit", "false")
        .create_with_context(FollowerContext)?;
    let (complete, complete_as_of) = watch::channel(None);
    let complete = Arc::new(complete);
    let probe_wanted = Arc::new(Notify::new());
    let probe_wanted_by_follower = probe_wanted.clone();
    let applied = AppliedOffsets::default();
    // The prober lives as long as the follower: it stops when this sender is dropped.
    let (follower_alive, follower_gone) = oneshot::channel::<()>();
    tokio::spawn(run_prober(
        Prober {
            offsets,
            topic,
            partitions: partitions.clone(),
            applied: applied.clone(),
        },
        complete.clone(),
        probe_wanted.clone(),
        follower_gone,
    ));
    tokio::spawn(async move {
        run_follower(
            consumer,
            partitions,
            directory,
            applied,
            complete,
            probe_wanted_by_follower,
            stop,
        )
        .await;
        drop(follower_alive);
    });
    Ok(CodeSync {
        complete_as_of,
        probe_wanted,
    })
}

/// Records that the directory holds every change published before `at`.
fn announce_complete(complete: &watch::Sender<Option<Instant>>, at: Instant) {
    complete.send_if_modified(|as_of| {
        if as_of.is_some_and(|known| known >= at) {
            return false;
        }
        *as_of = Some(at);
        true
    });
}

async fn run_follower(
    consumer: Arc<StreamConsumer<FollowerContext>>,
    partitions: Vec<i32>,
    directory: CodeDirectory,
    applied: AppliedOffsets,
    complete: Arc<watch::Sender<Option<Instant>>>,
    probe_wanted: Arc<Notify>,
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
                if let Some(change) = code_change(&message) {
                    directory.apply(&[change]);
                }
                // After the apply: the prober must never see an offset the directory lacks.
                applied
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(message.partition(), message.offset() + 1);
            }
            Err(KafkaError::PartitionEOF(partition)) => {
                at_end.insert(partition, true);
                if at_end.values().all(|&end| end) {
                    if complete.borrow().is_none() {
                        // The first load: the directory holds the topic as of start.
                        announce_complete(&complete, Instant::now());
                    } else {
                        // Not "complete now": the fetch that ended here was answered a
                        // moment ago, and another partition's end may be older. Let a probe
                        // say it (misses waiting for a view that was behind get one).
                        probe_wanted.notify_one();
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, "codes follower error; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// The change a code record carries; `None` (logged) for a record that is not one.
fn code_change(message: &impl Message) -> Option<CodeChange> {
    let Some(code) = message.key().and_then(|key| std::str::from_utf8(key).ok()) else {
        tracing::warn!(
            offset = message.offset(),
            "code record without a text key; skipped"
        );
        return None;
    };
    match message.payload() {
        None => Some(CodeChange::Retired {
            code: code.to_owned(),
        }),
        Some(payload) => match serde_json::from_slice::<ReferralCode>(payload) {
            Ok(record) => Some(CodeChange::Assigned {
                code: record.code,
                mentor_id: record.mentor_id,
                destination_url: record.destination_url,
            }),
            Err(error) => {
                tracing::warn!(%error, code, "undecodable code record; skipped");
                None
            }
        },
    }
}

/// Answers "is the directory complete now?" by comparing the topic's end offsets, asked of
/// the broker, with what the follower applied.
struct Prober {
    offsets: BaseConsumer<FollowerContext>,
    topic: String,
    partitions: Vec<i32>,
    applied: AppliedOffsets,
}

impl Prober {
    /// True when every partition's end offset is already applied. Blocking (one offsets
    /// request per partition). Only as right as the broker's high watermark: tansu 0.6.0
    /// reports the base offset of the last record batch + 1, so after a batch of several
    /// code records it may answer "complete" early; a code refused then is refused for at
    /// most the negative-cache second, still inside the edge's 5 s promise.
    fn directory_is_complete(&self) -> Result<bool, KafkaError> {
        for &partition in &self.partitions {
            let (low, high) =
                self.offsets
                    .fetch_watermarks(&self.topic, partition, PROBE_TIMEOUT)?;
            let applied = self
                .applied
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&partition)
                .copied()
                .unwrap_or(0);
            // Below `low` nothing is left to read (deleted or compacted away).
            if applied.max(low) < high {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Runs one probe at a time, at most one per [`PROBE_INTERVAL`], while misses want one: a
/// storm of unknown codes costs at most that rate of broker requests, and every miss of the
/// moment shares the same answer.
async fn run_prober(
    prober: Prober,
    complete: Arc<watch::Sender<Option<Instant>>>,
    wanted: Arc<Notify>,
    follower_gone: oneshot::Receiver<()>,
) {
    let prober = Arc::new(prober);
    tokio::pin!(follower_gone);
    loop {
        tokio::select! {
            () = wanted.notified() => {}
            _ = &mut follower_gone => return,
        }
        let started = Instant::now();
        let probe = prober.clone();
        let answer = tokio::select! {
            answer = tokio::task::spawn_blocking(move || probe.directory_is_complete()) => answer,
            _ = &mut follower_gone => return,
        };
        let outcome = match answer {
            Ok(Ok(true)) => {
                announce_complete(&complete, started);
                "complete"
            }
            Ok(Ok(false)) => "behind",
            Ok(Err(error)) => {
                // Not retried here (with the broker down it would probe forever): the
                // misses of the moment wait out their bound, the next miss probes again.
                tracing::debug!(%error, "codes freshness probe failed");
                "error"
            }
            Err(error) => {
                tracing::warn!(%error, "codes freshness probe task failed");
                "error"
            }
        };
        metrics::counter!("referral_code_probes_total", "outcome" => outcome).increment(1);
        tokio::select! {
            () = tokio::time::sleep_until((started + PROBE_INTERVAL).into()) => {}
            _ = &mut follower_gone => return,
        }
    }
}
