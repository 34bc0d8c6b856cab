//! The attribution log on Kafka.
//!
//! `publish` resolves on the delivery report: with `acks=all` and idempotence on, `Ok` means
//! every in-sync replica has the event, exactly once. A full local queue is refused at once
//! (back-pressure, not memory growth). Readiness follows a metadata probe of the topic.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// Producer client configuration shared by every producer of this project.
pub fn producer_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.brokers)
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
    producer: FutureProducer,
    topic: String,
    /// Set by the readiness probe: the broker answered for the topic recently.
    ready: Arc<AtomicBool>,
}

impl KafkaLog {
    /// Creates the producer and checks, within `METADATA_TIMEOUT`, that the topic exists.
    pub async fn connect(settings: &KafkaSettings) -> Result<Self, KafkaError> {
        let producer: FutureProducer = producer_config(settings).create()?;
        let log = Self {
            producer,
            topic: settings.topic.clone(),
            ready: Arc::new(AtomicBool::new(false)),
        };
        let reachable = log.probe(super::METADATA_TIMEOUT).await;
        log.ready.store(reachable, Ordering::Relaxed);
        if !reachable {
            return Err(KafkaError::MetadataFetch(
                RDKafkaErrorCode::UnknownTopicOrPartition,
            ));
        }
        Ok(log)
    }

    /// Whether the broker lists the topic with at least one partition.
    async fn probe(&self, timeout: Duration) -> bool {
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), timeout)
                .map(|metadata| {
                    metadata.topics().iter().any(|t| {
                        t.name() == topic && t.error().is_none() && !t.partitions().is_empty()
                    })
                })
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false)
    }

    /// Keeps [`EventLog::is_ready`] current until `stop` resolves.
    pub fn spawn_readiness_probe(
        self: &Arc<Self>,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let log = self.clone();
        tokio::spawn(async move {
            tokio::pin!(stop);
            loop {
                let reachable = log.probe(READINESS_PROBE_TIMEOUT).await;
                if reachable != log.ready.swap(reachable, Ordering::Relaxed) {
                    if reachable {
                        tracing::info!(topic = %log.topic, "broker reachable again");
                    } else {
                        tracing::warn!(topic = %log.topic, "broker unreachable; not ready");
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
        let producer = self.producer.clone();
        let flushed = tokio::task::spawn_blocking(move || producer.flush(timeout)).await;
        match flushed {
            Ok(Ok(())) => tracing::info!("producer flushed"),
            Ok(Err(error)) => tracing::warn!(%error, "producer flush incomplete"),
            Err(error) => tracing::warn!(%error, "producer flush task failed"),
        }
    }
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
            .producer
            .send_result(record)
            .map_err(|(error, _)| match error {
                KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => {
                    PublishError::QueueFull
                }
                other => PublishError::Failed(other.to_string()),
            })?;
        match delivery.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((error, _))) => Err(PublishError::Failed(error.to_string())),
            // The producer was dropped with the message in flight.
            Err(_) => Err(PublishError::Closed),
        }
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}
