//! Settings of the pipeline (log, writer, store), shared by every binary.
//!
//! Every setting is a flag with a `REFERRAL_*` environment variable. Defaults are named
//! constants with the reason for their value.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

/// Default directory of the embedded store.
pub const DEFAULT_DATA_DIR: &str = "./data";
/// How long after a click a confirmation still counts: 90 days, the common cookie window of
/// referral programs.
pub const DEFAULT_ATTRIBUTION_WINDOW: &str = "90days";
/// Events queued for the writer at most. At a few hundred bytes each this bounds the queue to
/// a few MiB; when it is full, publishers get 503 at once instead of memory growing.
pub const DEFAULT_LOG_QUEUE_CAPACITY: usize = 10_000;
/// Events applied in one transaction at most. Larger batches amortize the commit further but
/// delay every event in the batch; a thousand keeps a commit in the low milliseconds.
pub const DEFAULT_COMMIT_BATCH_MAX: usize = 1_000;

/// How hard SQLite makes each commit durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SqliteSynchronous {
    /// fsync on every commit: acknowledged events survive power loss.
    Full,
    /// No fsync on commit (WAL): acknowledged events survive a process crash or SIGKILL,
    /// not the loss of the machine. Faster on slow disks.
    Normal,
}

/// Log, writer and store settings.
#[derive(Args, Clone, Debug)]
pub struct PipelineArgs {
    /// Directory of the embedded store (SQLite), used when no ClickHouse is configured.
    #[arg(long, env = "REFERRAL_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,

    /// Kafka bootstrap servers (host:port,...). Unset: the embedded log.
    #[arg(long, env = "REFERRAL_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,

    /// Kafka topic of the attribution log.
    #[arg(long, env = "REFERRAL_KAFKA_TOPIC", default_value = "referral-events")]
    pub kafka_topic: String,

    /// ClickHouse HTTP URL. Unset: the embedded store.
    #[arg(long, env = "REFERRAL_CLICKHOUSE_URL")]
    pub clickhouse_url: Option<String>,

    /// ClickHouse database.
    #[arg(long, env = "REFERRAL_CLICKHOUSE_DATABASE", default_value = "referral")]
    pub clickhouse_database: String,

    /// ClickHouse user.
    #[arg(long, env = "REFERRAL_CLICKHOUSE_USER", default_value = "default")]
    pub clickhouse_user: String,

    /// ClickHouse password.
    #[arg(long, env = "REFERRAL_CLICKHOUSE_PASSWORD", hide_env_values = true)]
    pub clickhouse_password: Option<String>,

    /// Longest time from click to confirmation (e.g. 90days, 30d, 12h).
    #[arg(long, env = "REFERRAL_ATTRIBUTION_WINDOW", default_value = DEFAULT_ATTRIBUTION_WINDOW, value_parser = humantime::parse_duration)]
    pub attribution_window: Duration,

    /// Durability of each embedded-store commit.
    #[arg(
        long,
        env = "REFERRAL_SQLITE_SYNCHRONOUS",
        value_enum,
        default_value = "full"
    )]
    pub sqlite_synchronous: SqliteSynchronous,

    /// Events queued for the writer at most (then 503).
    #[arg(long, env = "REFERRAL_LOG_QUEUE_CAPACITY", default_value_t = DEFAULT_LOG_QUEUE_CAPACITY, value_parser = clap::value_parser!(usize))]
    pub log_queue_capacity: usize,

    /// Events applied per transaction at most.
    #[arg(long, env = "REFERRAL_COMMIT_BATCH_MAX", default_value_t = DEFAULT_COMMIT_BATCH_MAX)]
    pub commit_batch_max: usize,
}

impl PipelineArgs {
    /// Checks what clap cannot: ranges and combinations.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.log_queue_capacity >= 1,
            "--log-queue-capacity must be at least 1"
        );
        anyhow::ensure!(
            self.commit_batch_max >= 1,
            "--commit-batch-max must be at least 1"
        );
        anyhow::ensure!(
            !self.attribution_window.is_zero(),
            "--attribution-window must be longer than zero"
        );
        anyhow::ensure!(
            self.kafka_brokers.is_none() && self.clickhouse_url.is_none(),
            "--kafka-brokers and --clickhouse-url are not supported by this build yet; \
             unset them to run the embedded pipeline"
        );
        Ok(())
    }

    /// The attribution window in milliseconds, as the state machine takes it.
    pub fn attribution_window_ms(&self) -> i64 {
        i64::try_from(self.attribution_window.as_millis()).unwrap_or(i64::MAX)
    }
}
