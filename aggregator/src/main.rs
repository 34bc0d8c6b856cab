//! `referral-aggregator`: the single writer as its own process.
//!
//! * `migrate`: applies the store's migrations (ClickHouse when `--clickhouse-url` is set,
//!   else the embedded SQLite store) and creates the Kafka topics when `--kafka-brokers` is
//!   set. The Helm chart runs it as a job before upgrades.
//! * `run`: the consumer group member that applies the log to ClickHouse.
//!
//! With neither Kafka nor ClickHouse, the embedded pipeline runs inside `referral-api`.

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use referral_aggregator::config::{ConsumerArgs, PipelineArgs};
use referral_aggregator::consumer::fault::{FAULT_ENV, FaultPoint};
use referral_aggregator::kafka::admin;
use referral_aggregator::ops;
use referral_aggregator::service::AggregatorService;
use referral_aggregator::store::clickhouse::migrate;
use referral_aggregator::store::sqlite;
use tokio::sync::watch;

#[derive(Parser, Debug)]
#[command(name = "referral-aggregator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Apply pending migrations (and create the Kafka topics), then exit.
    Migrate(MigrateArgs),
    /// Consume the log and apply it to ClickHouse (needs --kafka-brokers and --clickhouse-url).
    Run(RunArgs),
}

#[derive(Args, Debug)]
struct MigrateArgs {
    #[command(flatten)]
    pipeline: PipelineArgs,
    #[command(flatten)]
    topics: TopicArgs,
}

#[derive(Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    pipeline: PipelineArgs,
    #[command(flatten)]
    consumer: ConsumerArgs,
}

/// How `migrate` creates topics that do not exist yet.
#[derive(Args, Debug)]
struct TopicArgs {
    /// Partitions of the attribution log when `migrate` creates it.
    #[arg(long, env = "REFERRAL_KAFKA_PARTITIONS", default_value_t = 6)]
    kafka_partitions: i32,
    /// Replication factor of topics `migrate` creates.
    #[arg(long, env = "REFERRAL_KAFKA_REPLICATION", default_value_t = 1)]
    kafka_replication: i32,
    /// Dead-letter topic to create next to the log.
    #[arg(
        long,
        env = "REFERRAL_KAFKA_DEAD_LETTER_TOPIC",
        default_value = "referral-events-dead-letter"
    )]
    kafka_dead_letter_topic: String,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match Cli::parse().command {
        Command::Migrate(args) => migrate_command(args),
        Command::Run(args) => run_command(args),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn migrate_command(args: MigrateArgs) -> anyhow::Result<()> {
    let pipeline = args.pipeline;
    pipeline.validate()?;
    let runtime = runtime()?;
    runtime.block_on(async {
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
                let report = migrate::migrate(&clickhouse).await?;
                tracing::info!(
                    applied = ?report.applied,
                    deferred = ?report.deferred,
                    server = report.server.map(|server| server.text).unwrap_or_default(),
                    database = %clickhouse.database,
                    "clickhouse is up to date"
                );
            }
            None => {
                sqlite::open(
                    &pipeline.data_dir,
                    pipeline.sqlite_synchronous,
                    pipeline.attribution_window_ms(),
                )?;
                tracing::info!(data_dir = %pipeline.data_dir.display(), "store is up to date");
            }
        }
        Ok(())
    })
}

fn run_command(args: RunArgs) -> anyhow::Result<()> {
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
    let metrics = ops::install_metrics()?;
    let runtime = runtime()?;
    runtime.block_on(async move {
        // Listen for SIGTERM from the start: one arriving during start-up still drains.
        let shutdown = shutdown_signal()?;
        let listener = ops::bind(consumer.listen).await?;
        let service = AggregatorService::start(&pipeline, &consumer, fault).await?;
        let (stop, stopped) = watch::channel(false);
        let ops = tokio::spawn(ops::serve(listener, metrics, service.status(), stopped));
        tracing::info!(listen = %consumer.listen, "ops endpoints up");
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(Duration::from_millis(500)) => {
                    if service.ended() {
                        let _ = stop.send(true);
                        anyhow::bail!("the consumer thread ended unexpectedly");
                    }
                }
            }
        }
        tracing::info!("shutdown requested: flushing and leaving the group");
        service.shutdown().await;
        let _ = stop.send(true);
        let _ = ops.await;
        tracing::info!("aggregator stopped");
        Ok(())
    })
}

/// SIGTERM (Kubernetes) or SIGINT (a terminal). Registered when called, awaited later.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("cannot listen for SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}
