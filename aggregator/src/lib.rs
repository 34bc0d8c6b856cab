//! `referral-aggregator`: the single writer as its own process.
//!
//! * `migrate` ([`migrate`]): applies the store's migrations (ClickHouse when
//!   `--clickhouse-url` is set, else the embedded SQLite store) and creates the Kafka topics
//!   when `--kafka-brokers` is set. The Helm chart runs it as a job before upgrades.
//! * `run` ([`run`]): the consumer group member that applies the log to ClickHouse
//!   ([`referral_pipeline::Aggregator`]), with `/metrics`, `/healthz` and `/readyz`.
//! * `deliver` ([`deliver`]): the webhook deliverer on ClickHouse
//!   ([`referral_pipeline::webhooks::deliver`]), with the same ops endpoints.
//!
//! With neither Kafka nor ClickHouse, the embedded pipeline runs inside `referral-api`.

pub mod config;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use referral_kit::ops::{self, OpsRoute};
use referral_kit::shutdown::Shutdown;
use referral_kit::{error, server, telemetry};
use referral_pipeline::Aggregator;
use referral_pipeline::consumer::fault::{FAULT_ENV, FaultPoint};
use referral_pipeline::embedded::DataDirLock;
use referral_pipeline::kafka::admin;
use referral_pipeline::store::clickhouse::migrate as clickhouse_migrate;
use referral_pipeline::store::sqlite;
use referral_pipeline::webhooks::group::{DeliveryGroup, Membership, Serving};
use referral_pipeline::webhooks::{self, WebhookStore, clickhouse::ClickHouseWebhooks};
use referral_schemas::{ApiError, ErrorKind};
use tokio::net::TcpListener;

pub use config::{Cli, Command, DeliverArgs, MigrateArgs, RunArgs};

/// Applies pending migrations (and creates the topics), then returns.
pub async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let pipeline = args.pipeline;
    pipeline.validate()?;
    if let Some(kafka) = pipeline.kafka_settings("referral-aggregator-migrate") {
        admin::ensure_topics(
            &kafka,
            args.topics.kafka_partitions,
            args.topics.kafka_replication,
        )
        .await
        .context("cannot create the Kafka topics")?;
        admin::ensure_topic(
            &kafka,
            &args.topics.kafka_dead_letter_topic,
            args.topics.kafka_partitions,
            args.topics.kafka_replication,
        )
        .await
        .context("cannot create the dead-letter topic")?;
    }
    match pipeline.clickhouse_settings(Duration::from_secs(30)) {
        Some(clickhouse) => {
            let report = clickhouse_migrate::migrate(&clickhouse).await?;
            tracing::info!(
                applied = ?report.applied,
                deferred = ?report.deferred,
                server = report.server.map(|server| server.text).unwrap_or_default(),
                database = %clickhouse.database,
                "clickhouse is up to date"
            );
        }
        None => {
            let _lock = DataDirLock::acquire(&pipeline.data_dir)?;
            sqlite::open(&pipeline.data_dir, pipeline.sqlite_synchronous)?;
            tracing::info!(data_dir = %pipeline.data_dir.display(), "store is up to date");
        }
    }
    Ok(())
}

/// Consumes the log into ClickHouse and serves the ops endpoints on `listener` until
/// `shutdown`; then flushes what is pending and leaves the group.
pub async fn run(listener: TcpListener, args: RunArgs, shutdown: Shutdown) -> anyhow::Result<()> {
    let RunArgs { pipeline, consumer } = args;
    pipeline.validate()?;
    consumer.validate()?;
    let fault = FaultPoint::from_env();
    if fault != FaultPoint::None {
        tracing::warn!(
            ?fault,
            "{FAULT_ENV} is set: this process will fail on purpose (tests only)"
        );
    }
    let metrics = telemetry::metrics_handle();
    telemetry::spawn_metrics_upkeep(metrics.clone(), shutdown.clone());
    let aggregator = Arc::new(Aggregator::start(&pipeline, &consumer, fault).await?);
    let (stop_ops, ops_shutdown) = referral_kit::shutdown::channel();
    let make_service = {
        let aggregator = aggregator.clone();
        move |_| {
            let aggregator = aggregator.clone();
            let metrics = metrics.clone();
            hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let response = answer(&request, &aggregator, &metrics);
                async move { Ok::<_, Infallible>(response) }
            })
        }
    };
    let settings = ops_settings();
    let address = listener
        .local_addr()
        .context("the listener has no address")?;
    let ops = tokio::spawn(server::serve(
        listener,
        make_service,
        settings,
        ops_shutdown,
    ));
    tracing::info!(listen = %address, "ops endpoints up");
    let mut shutdown = shutdown;
    let ended = loop {
        tokio::select! {
            () = shutdown.wait() => break false,
            () = tokio::time::sleep(Duration::from_millis(500)) => {
                if aggregator.ended() {
                    break true;
                }
            }
        }
    };
    if ended {
        stop_ops.trigger();
        anyhow::bail!("the consumer thread ended unexpectedly");
    }
    tracing::info!("shutdown requested: flushing and leaving the group");
    let started = Instant::now();
    aggregator.shutdown().await;
    stop_ops.trigger();
    let _ = ops.await;
    tracing::info!(took = ?started.elapsed(), "aggregator stopped");
    Ok(())
}

/// Delivers webhooks from ClickHouse and serves the ops endpoints on `listener` until
/// `shutdown`; then lets every endpoint store its cursor.
pub async fn deliver(
    listener: TcpListener,
    args: DeliverArgs,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    args.pipeline.validate()?;
    args.group.validate()?;
    let settings = args.webhooks.settings()?;
    let clickhouse = args
        .pipeline
        .clickhouse_settings(Duration::from_secs(30))
        .context("referral-aggregator deliver needs --clickhouse-url (embedded: referral-api delivers in process)")?;
    clickhouse_migrate::refuse_newer_schema(&clickhouse).await?;
    let store: Arc<dyn WebhookStore> = Arc::new(ClickHouseWebhooks::for_deliverer(&clickhouse));
    let metrics = telemetry::metrics_handle();
    telemetry::spawn_metrics_upkeep(metrics.clone(), shutdown.clone());
    // With Kafka, the deliverers' group decides which endpoints this one serves; without,
    // it is the only deliverer and serves them all.
    let (group, serving) = match args.pipeline.kafka_settings("referral-deliverer") {
        Some(kafka) => {
            let (group, serving) = DeliveryGroup::join(
                &kafka,
                &args.group.webhook_group,
                args.group.webhook_session_timeout,
            )
            .context("cannot join the webhook deliverers' consumer group")?;
            (Some(group), serving)
        }
        None => {
            tracing::warn!(
                "no --kafka-brokers: this deliverer serves every endpoint; run only one"
            );
            (None, Serving::everything())
        }
    };
    let membership = group.as_ref().map(DeliveryGroup::membership);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut deliverer = tokio::spawn(webhooks::deliver::run(store, settings, serving, stopped));
    let (stop_ops, ops_shutdown) = referral_kit::shutdown::channel();
    let make_service = move |_| {
        let metrics = metrics.clone();
        let membership = membership.clone();
        hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
            let ready = || membership.as_ref().map_or(Ok(()), Membership::readiness);
            let response: http::Response<http_body_util::Full<bytes::Bytes>> =
                match OpsRoute::of(request.uri().path()) {
                    Some(route) => ops::answer(route, request.method(), ready, &metrics),
                    None => error::error_response(&ApiError::new(
                        ErrorKind::RouteNotFound,
                        "no such route",
                    )),
                };
            async move { Ok::<_, Infallible>(response) }
        })
    };
    let ops = tokio::spawn(server::serve(
        listener,
        make_service,
        ops_settings(),
        ops_shutdown,
    ));
    let mut shutdown = shutdown;
    // A deliverer that ends by itself leaves the group at once: its endpoints go to others.
    let (delivered, by_itself) = tokio::select! {
        () = shutdown.wait() => {
            tracing::info!("shutdown requested: storing webhook cursors");
            stop.send_replace(true);
            ((&mut deliverer).await, false)
        }
        ended = &mut deliverer => {
            tracing::error!("the webhook deliverer ended unexpectedly; leaving the group");
            (ended, true)
        }
    };
    // Only now: the endpoints go to another deliverer once their cursors are stored.
    if let Some(group) = group {
        tokio::task::spawn_blocking(move || group.leave())
            .await
            .ok();
    }
    stop_ops.trigger();
    let _ = ops.await;
    match delivered {
        Ok(Ok(())) if by_itself => Err(anyhow::anyhow!("the webhook deliverer ended unexpectedly")),
        Ok(result) => result,
        Err(error) => Err(anyhow::anyhow!("the deliverer failed: {error}")),
    }
}

fn ops_settings() -> referral_kit::server::ServerSettings {
    referral_kit::server::ServerSettings {
        header_read_timeout: Duration::from_secs(10),
        max_connections: 64,
        max_connections_per_client: 0,
        exempt: Default::default(),
        drain_timeout: Duration::from_secs(1),
    }
}

fn answer(
    request: &http::Request<hyper::body::Incoming>,
    aggregator: &Aggregator,
    metrics: &metrics_exporter_prometheus::PrometheusHandle,
) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    match OpsRoute::of(request.uri().path()) {
        Some(route) => ops::answer(route, request.method(), || aggregator.readiness(), metrics),
        None => error::error_response(&ApiError::new(ErrorKind::RouteNotFound, "no such route")),
    }
}
