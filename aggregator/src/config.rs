//! `referral-aggregator` flags. Every one has a `REFERRAL_*` environment variable.

use clap::{Args, Parser, Subcommand};
use referral_pipeline::config::{ConsumerArgs, PipelineArgs, WebhookArgs, WebhookGroupArgs};

#[derive(Parser, Debug)]
#[command(name = "referral-aggregator", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Apply pending migrations (and create the Kafka topics), then exit.
    Migrate(MigrateArgs),
    /// Consume the log and apply it to ClickHouse (needs --kafka-brokers and --clickhouse-url).
    Run(RunArgs),
    /// Deliver webhooks from ClickHouse's event outbox (needs --clickhouse-url). With
    /// --kafka-brokers, deliverers join their own consumer group, which splits the
    /// endpoints between them; without, run only one.
    Deliver(DeliverArgs),
}

#[derive(Args, Clone, Debug)]
pub struct DeliverArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    #[command(flatten)]
    pub webhooks: WebhookArgs,
    #[command(flatten)]
    pub group: WebhookGroupArgs,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "REFERRAL_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
}

#[derive(Args, Debug)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    #[command(flatten)]
    pub topics: TopicArgs,
}

#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    #[command(flatten)]
    pub consumer: ConsumerArgs,
}

/// How `migrate` creates topics that do not exist yet.
#[derive(Args, Debug)]
pub struct TopicArgs {
    /// Partitions of the attribution log when `migrate` creates it.
    #[arg(long, env = "REFERRAL_KAFKA_PARTITIONS", default_value_t = 6)]
    pub kafka_partitions: i32,
    /// Replication factor of topics `migrate` creates.
    #[arg(long, env = "REFERRAL_KAFKA_REPLICATION", default_value_t = 1)]
    pub kafka_replication: i32,
    /// Dead-letter topic to create next to the log.
    #[arg(
        long,
        env = "REFERRAL_KAFKA_DEAD_LETTER_TOPIC",
        default_value = "referral-events-dead-letter"
    )]
    pub kafka_dead_letter_topic: String,
}
