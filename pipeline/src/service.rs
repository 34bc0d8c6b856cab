//! `referral-aggregator run` as a library: start the consumer over ClickHouse, stop it.
//!
//! The binary wraps it with signals and the ops endpoints; tests of other crates (the API's
//! production-mode contract tests) run it in process.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use rdkafka::producer::{FutureProducer, Producer};

use crate::config::{ConsumerArgs, PipelineArgs};
use crate::consumer::fault::FaultPoint;
use crate::consumer::worker::{Worker, WorkerSettings};
use crate::consumer::{self, ConsumerStatus};
use crate::kafka::producer;
use crate::store::clickhouse::migrate;
use crate::store::clickhouse::sink::ClickHouseSink;

/// A running aggregator.
pub struct AggregatorService {
    thread: Option<JoinHandle<()>>,
    status: Arc<ConsumerStatus>,
    producer: FutureProducer,
    drain: Duration,
}

impl AggregatorService {
    /// Applies migrations (unless `--no-migrate`), connects to ClickHouse and joins the
    /// consumer group. Must run inside a multi-threaded tokio runtime.
    pub async fn start(
        pipeline: &PipelineArgs,
        args: &ConsumerArgs,
        fault: FaultPoint,
    ) -> anyhow::Result<Self> {
        let kafka = pipeline.kafka_settings("referral-aggregator").context(
            "referral-aggregator run needs --kafka-brokers; with no Kafka the embedded pipeline \
             runs inside referral-api (cargo run --release --bin referral-api)",
        )?;
        let clickhouse = pipeline
            .clickhouse_settings(args.clickhouse_insert_timeout)
            .context("referral-aggregator run needs --clickhouse-url")?;
        if !args.no_migrate {
            let report = migrate::migrate(&clickhouse).await?;
            tracing::info!(applied = ?report.applied, deferred = ?report.deferred, "migrations checked");
        }
        let sink = ClickHouseSink::connect(&clickhouse).await?;
        let producer: FutureProducer = producer::producer_config(&kafka)
            .create()
            .context("cannot create the Kafka producer")?;
        let settings = WorkerSettings {
            codes_topic: kafka.codes_topic.clone(),
            dead_letter_topic: args.kafka_dead_letter_topic.clone(),
            batch_max_rows: args.batch_max_rows,
            batch_max_bytes: args.batch_max_bytes,
            batch_max_wait: args.batch_max_wait,
            window_ms: pipeline.attribution_window_ms(),
            produce_timeout: kafka.message_timeout,
        };
        let worker = Worker::new(
            sink,
            producer.clone(),
            tokio::runtime::Handle::current(),
            settings,
            fault,
        );
        let status = Arc::new(ConsumerStatus::default());
        let thread = consumer::start(&kafka, args, worker, status.clone())
            .context("cannot join the consumer group")?;
        tracing::info!(topic = %kafka.topic, group = %args.kafka_group_id, "aggregator running");
        Ok(Self {
            thread: Some(thread),
            status,
            producer,
            drain: args.drain_timeout,
        })
    }

    pub fn status(&self) -> Arc<ConsumerStatus> {
        self.status.clone()
    }

    /// Whether the consumer thread ended on its own (it only should when asked to stop).
    pub fn ended(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Flushes what is pending, leaves the group, flushes the producer.
    pub async fn shutdown(mut self) {
        self.status.stopping.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let limit = self.drain + Duration::from_secs(5);
            let joined =
                tokio::time::timeout(limit, tokio::task::spawn_blocking(move || thread.join()))
                    .await;
            if !matches!(joined, Ok(Ok(Ok(())))) {
                tracing::error!("the consumer did not stop cleanly in time");
            }
        }
        let producer = self.producer.clone();
        let flushed =
            tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(10))).await;
        if !matches!(flushed, Ok(Ok(()))) {
            tracing::warn!("producer flush incomplete at shutdown");
        }
    }
}
