//! The attribution log on Kafka.
//!
//! `publish` resolves on the delivery report: with `acks=all` and idempotence on, `Ok` means
//! every in-sync replica has the event, exactly once. A full local queue is refused at once
//! (back-pressure, not memory growth). Readiness follows a metadata probe of the topic.
//!
//! Self-healing: an idempotent producer can get stuck for good, with a fatal error, or when
//! the broker forgot its producer id (a broker that lost its state answers every produce
//! with `UNKNOWN_PRODUCER_ID` while librdkafka keeps retrying). When the broker answers
//! metadata but nothing has been delivered for a while, the probe replaces the producer;
//! the old one's in-flight messages fail (503 to their clients, never a false 201).

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use referral_schemas::messages::{LogEvent, LogMessage, SCHEMA_VERSION};

use super::{KIND_HEADER, KafkaSettings, SCHEMA_VERSION_HEADER};
use crate::log::{EventLog, PublishError};

/// How often readiness re-probes the broker.
const READINESS_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How long one readiness probe waits.
const READINESS_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

fn now_ms() -> i64 {
    referral_schemas::Timestamp::now().as_millis()
}

/// Producer client configuration shared by every producer of this project.
pub fn producer_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = settings.client_config();
    config
        .set("client.id", &settings.client_id)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("compression.type", "lz4")
        .set("linger.ms", settings.linger.as_millis().to_string())
        .set(
            "message.timeout.ms",
            settings.message_timeout.as_millis().to_string(),
        )
        .set(
            "queue.buffering.max.messages",
            settings.queue_max_messages.to_string(),
        )
        .set("batch.num.messages", "10000");
    config
}

/// The attribution log on a Kafka topic.
pub struct KafkaLog {
    /// Replaced when it is stuck; cloning a `FutureProducer` clones an `Arc`.
    producer: RwLock<FutureProducer>,
    settings: KafkaSettings,
    topic: String,
    /// Set by the readiness probe: the broker answered for the topic recently.
    ready: Arc<AtomicBool>,
    /// Why the last probe failed, for `/readyz` and the log.
    not_ready_because: Mutex<String>,
    /// When (ms since the epoch) a message was enqueued with no successful delivery since;
    /// 0 while deliveries succeed. Clients may stop waiting for their delivery reports, so
    /// the age of unanswered work is the signal, not counted failures.
    waiting_since_ms: AtomicI64,
}

impl KafkaLog {
    /// Creates the producer and checks, within `METADATA_TIMEOUT`, that the topic exists.
    pub async fn connect(settings: &KafkaSettings) -> Result<Self, KafkaError> {
        let producer: FutureProducer = producer_config(settings).create()?;
        let log = Self {
            producer: RwLock::new(producer),
            settings: settings.clone(),
            topic: settings.topic.clone(),
            ready: Arc::new(AtomicBool::new(false)),
            not_ready_because: Mutex::new(String::new()),
            waiting_since_ms: AtomicI64::new(0),
        };
        if let Err(why) = log.probe(super::METADATA_TIMEOUT).await {
            tracing::warn!(topic = %log.topic, why, "the topic is not ready");
            return Err(KafkaError::MetadataFetch(
                RDKafkaErrorCode::UnknownTopicOrPartition,
            ));
        }
        log.ready.store(true, Ordering::Relaxed);
        Ok(log)
    }

    fn producer(&self) -> FutureProducer {
        self.producer
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether the producer should be replaced: it reported a fatal error, or a message has
    /// waited two message timeouts with nothing delivered since (although the broker answers,
    /// which the caller checks).
    fn is_stuck(&self) -> bool {
        if self.producer().client().fatal_error().is_some() {
            return true;
        }
        let stale_ms =
            i64::try_from(self.settings.message_timeout.as_millis() * 2).unwrap_or(i64::MAX);
        let waiting_since = self.waiting_since_ms.load(Ordering::Relaxed);
        waiting_since != 0 && now_ms() - waiting_since > stale_ms
    }

    fn replace_producer(&self) {
        match producer_config(&self.settings).create::<FutureProducer>() {
            Ok(fresh) => {
                *self
                    .producer
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = fresh;
                self.waiting_since_ms.store(0, Ordering::Relaxed);
                metrics::counter!("referral_kafka_producer_replaced_total").increment(1);
                tracing::warn!(topic = %self.topic, "producer was stuck; replaced it");
            }
            Err(error) => tracing::error!(%error, "cannot create a replacement producer"),
        }
    }

    /// Whether the broker lists the topic with at least one partition; if not, why.
    async fn probe(&self, timeout: Duration) -> Result<(), String> {
        let producer = self.producer();
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || {
            let metadata = producer
                .client()
                .fetch_metadata(Some(&topic), timeout)
                .map_err(|error| format!("metadata request failed: {error}"))?;
            let listed = metadata.topics().iter().find(|t| t.name() == topic);
            match listed {
                None => Err("the broker does not list the topic".to_owned()),
                Some(listed) => match listed.error() {
                    Some(error) => Err(format!(
                        "the broker lists the topic with an error: {}",
                        RDKafkaErrorCode::from(error)
                    )),
                    None if listed.partitions().is_empty() => {
                        Err("the broker lists the topic with no partitions".to_owned())
                    }
                    None => Ok(()),
                },
            }
        })
        .await
        .unwrap_or_else(|error| Err(format!("the probe task failed: {error}")))
    }

    /// Keeps [`EventLog::readiness`] current until `stop` resolves.
    pub fn spawn_readiness_probe(
        self: &Arc<Self>,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let log = self.clone();
        tokio::spawn(async move {
            tokio::pin!(stop);
            loop {
                let probed = log.probe(READINESS_PROBE_TIMEOUT).await;
                if probed.is_ok() && log.is_stuck() {
                    log.replace_producer();
                }
                match probed {
                    Ok(()) => {
                        if !log.ready.swap(true, Ordering::Relaxed) {
                            tracing::info!(topic = %log.topic, "broker reachable again");
                        }
                    }
                    Err(why) => {
                        // The reason first: `/readyz` reads it once `ready` is false.
                        let mut because = log
                            .not_ready_because
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner);
                        let other_kind = failure_kind(&because) != failure_kind(&why);
                        *because = why;
                        // Logged when it starts and when its kind changes (not when a
                        // transport failure and a timeout alternate), not every probe.
                        if log.ready.swap(false, Ordering::Relaxed) || other_kind {
                            tracing::warn!(
                                topic = %log.topic,
                                why = %because,
                                "broker unreachable; not ready"
                            );
                        }
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(READINESS_PROBE_INTERVAL) => {}
                    () = &mut stop => return,
                }
            }
        });
    }

    /// Waits (at most `timeout`) until every queued event was delivered or failed. Called at
    /// shutdown, after the server stopped taking requests.
    pub async fn flush(&self, timeout: Duration) {
        let producer = self.producer();
        let flushed = tokio::task::spawn_blocking(move || producer.flush(timeout)).await;
        match flushed {
            Ok(Ok(())) => tracing::info!("producer flushed"),
            Ok(Err(error)) => tracing::warn!(%error, "producer flush incomplete"),
            Err(error) => tracing::warn!(%error, "producer flush task failed"),
        }
    }
}

/// A probe failure's kind: its text up to the first colon ("metadata request failed",
/// "the broker does not list the topic", ...).
fn failure_kind(why: &str) -> &str {
    why.split(':').next().unwrap_or(why)
}

#[async_trait]
impl EventLog for KafkaLog {
    async fn publish(&self, event: LogEvent) -> Result<(), PublishError> {
        let key = event.partition_key().to_owned();
        let kind = event.kind_name();
        let payload = LogMessage::new(event)
            .to_json()
            .map_err(|error| PublishError::Failed(error.to_string()))?;
        let version = SCHEMA_VERSION.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: KIND_HEADER,
                value: Some(kind),
            })
            .insert(Header {
                key: SCHEMA_VERSION_HEADER,
                value: Some(version.as_str()),
            });
        let record = FutureRecord::to(&self.topic)
            .key(&key)
            .payload(&payload)
            .headers(headers);
        // `send_result` enqueues without waiting for room: a full queue is an answer now.
        let delivery = self
            .producer()
            .send_result(record)
            .map_err(|(error, _)| match error {
                KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => {
                    PublishError::QueueFull
                }
                other => PublishError::Failed(other.to_string()),
            })?;
        // Only the first waiting message sets the clock; a delivery resets it.
        let _ = self.waiting_since_ms.compare_exchange(
            0,
            now_ms(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        let outcome = match delivery.await {
            Ok(Ok(_)) => Ok(()),
            // Timed out in the local queue (MessageTimedOut) or sent and unanswered
            // (OperationTimedOut): the message may still land, as after a caller's timeout.
            Ok(Err((
                KafkaError::MessageProduction(
                    RDKafkaErrorCode::MessageTimedOut | RDKafkaErrorCode::OperationTimedOut,
                ),
                _,
            ))) => Err(PublishError::TimedOut),
            Ok(Err((error, _))) => Err(PublishError::Failed(error.to_string())),
            // The producer was dropped (replaced) with the message in flight.
            Err(_) => Err(PublishError::Closed),
        };
        if outcome.is_ok() {
            self.waiting_since_ms.store(0, Ordering::Relaxed);
        }
        outcome
    }

    /// librdkafka fails a message that was not delivered within `message.timeout.ms`
    /// (it looks about once a second, so a failure may come up to a second later).
    fn own_wait_bound(&self) -> Option<Duration> {
        Some(self.settings.message_timeout)
    }

    fn readiness(&self) -> Result<(), String> {
        if self.ready.load(Ordering::Relaxed) {
            Ok(())
        } else {
            let because = self
                .not_ready_because
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            Err(format!(
                "the Kafka topic {} is not ready: {because}",
                self.topic
            ))
        }
    }
}
