//! Settings of the pipeline (log, writer, store), shared by every binary.
//!
//! Every setting is a flag with a `REFERRAL_*` environment variable. Defaults are named
//! constants with the reason for their value.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::kafka::KafkaSettings;

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

/// How long the producer retries one message. The edge's `--ack-timeout` may not exceed it,
/// so a request never outlives its message's fate by more than this.
pub const DEFAULT_KAFKA_MESSAGE_TIMEOUT: &str = "10s";
/// Small: the edge answers after the ack, so linger adds straight to click latency; 5 ms
/// still batches thousands of clicks per request at load.
pub const DEFAULT_KAFKA_LINGER: &str = "5ms";
/// Local producer queue: 100k messages of a few hundred bytes is tens of MiB.
pub const DEFAULT_KAFKA_QUEUE_MAX_MESSAGES: usize = 100_000;

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

    /// Kafka topic of referral codes (compacted), followed by every edge.
    #[arg(
        long,
        env = "REFERRAL_KAFKA_CODES_TOPIC",
        default_value = "referral-codes"
    )]
    pub kafka_codes_topic: String,

    /// How long the producer retries a message before failing it (message.timeout.ms).
    #[arg(long, env = "REFERRAL_KAFKA_MESSAGE_TIMEOUT", default_value = DEFAULT_KAFKA_MESSAGE_TIMEOUT, value_parser = humantime::parse_duration)]
    pub kafka_message_timeout: Duration,

    /// How long the producer gathers a batch (linger.ms).
    #[arg(long, env = "REFERRAL_KAFKA_LINGER", default_value = DEFAULT_KAFKA_LINGER, value_parser = humantime::parse_duration)]
    pub kafka_linger: Duration,

    /// Messages the producer queues locally at most (then 503).
    #[arg(long, env = "REFERRAL_KAFKA_QUEUE_MAX_MESSAGES", default_value_t = DEFAULT_KAFKA_QUEUE_MAX_MESSAGES)]
    pub kafka_queue_max_messages: usize,

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
        if let Some(url) = &self.clickhouse_url {
            anyhow::ensure!(
                !url.starts_with("https://"),
                "--clickhouse-url: https is not supported by this build (its ClickHouse client \
                 has no TLS); reach the server over http, e.g. through a TLS-terminating sidecar"
            );
            anyhow::ensure!(
                url.starts_with("http://"),
                "--clickhouse-url must be the server's HTTP URL (http://host:8123)"
            );
            crate::store::clickhouse::migrate::quoted_identifier(&self.clickhouse_database)
                .map_err(|error| anyhow::anyhow!("--clickhouse-database: {error}"))?;
        }
        anyhow::ensure!(
            self.kafka_queue_max_messages >= 1,
            "--kafka-queue-max-messages must be at least 1"
        );
        Ok(())
    }

    /// Refuses Kafka for binaries that serve only the embedded pipeline in this build.
    pub fn require_embedded(&self, binary: &str) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.kafka_brokers.is_none(),
            "{binary} does not support --kafka-brokers yet; unset it to run the embedded pipeline \
             (referral-ingest serves clicks on Kafka)"
        );
        anyhow::ensure!(
            self.clickhouse_url.is_none(),
            "{binary} does not support --clickhouse-url yet; unset it to use the embedded store \
             (referral-aggregator run writes to ClickHouse)"
        );
        Ok(())
    }

    /// Kafka client settings, when brokers are configured.
    pub fn kafka_settings(&self, client_id: &str) -> Option<KafkaSettings> {
        self.kafka_brokers.as_ref().map(|brokers| KafkaSettings {
            brokers: brokers.clone(),
            topic: self.kafka_topic.clone(),
            codes_topic: self.kafka_codes_topic.clone(),
            message_timeout: self.kafka_message_timeout,
            linger: self.kafka_linger,
            queue_max_messages: self.kafka_queue_max_messages,
            client_id: client_id.to_owned(),
        })
    }

    /// ClickHouse settings, when a server is configured.
    pub fn clickhouse_settings(
        &self,
        insert_timeout: Duration,
    ) -> Option<crate::store::clickhouse::ClickHouseSettings> {
        self.clickhouse_url
            .as_ref()
            .map(|url| crate::store::clickhouse::ClickHouseSettings {
                url: url.clone(),
                database: self.clickhouse_database.clone(),
                user: self.clickhouse_user.clone(),
                password: self.clickhouse_password.clone(),
                insert_timeout,
            })
    }

    /// The attribution window in milliseconds, as the state machine takes it.
    pub fn attribution_window_ms(&self) -> i64 {
        i64::try_from(self.attribution_window.as_millis()).unwrap_or(i64::MAX)
    }
}

/// Rows a partition gathers before its batch is flushed: large enough that ClickHouse gets
/// few, big inserts (it prefers about one insert per second per table).
pub const DEFAULT_BATCH_MAX_ROWS: usize = 50_000;
/// Bytes (message payloads) a partition gathers before its batch is flushed.
pub const DEFAULT_BATCH_MAX_BYTES: usize = 32 * 1024 * 1024;
/// The longest a message waits for its batch: bounds freshness (POST -> visible in totals).
pub const DEFAULT_BATCH_MAX_WAIT: &str = "250ms";
/// How long the broker may hold a fetch with nothing new. Kafka answers as soon as data
/// arrives; some brokers (tansu) hold the fetch for the whole wait, so this bounds what the
/// broker adds to freshness.
pub const DEFAULT_KAFKA_FETCH_WAIT: &str = "100ms";
/// One insert slower than this is treated as failed and the flush retried.
pub const DEFAULT_CLICKHOUSE_INSERT_TIMEOUT: &str = "30s";

/// Settings of `referral-aggregator run`: the consumer group and its batches.
#[derive(Args, Clone, Debug)]
pub struct ConsumerArgs {
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "REFERRAL_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,

    /// Kafka consumer group of the aggregators.
    #[arg(
        long,
        env = "REFERRAL_KAFKA_GROUP_ID",
        default_value = "referral-aggregator"
    )]
    pub kafka_group_id: String,

    /// Topic that receives messages that cannot be decoded, with the reason in headers.
    #[arg(
        long,
        env = "REFERRAL_KAFKA_DEAD_LETTER_TOPIC",
        default_value = "referral-events-dead-letter"
    )]
    pub kafka_dead_letter_topic: String,

    /// Kafka group session timeout: how fast a dead aggregator's partitions move.
    #[arg(long, env = "REFERRAL_KAFKA_SESSION_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub kafka_session_timeout: Duration,

    /// Longest time the broker may hold a fetch (fetch.wait.max.ms).
    #[arg(long, env = "REFERRAL_KAFKA_FETCH_WAIT", default_value = DEFAULT_KAFKA_FETCH_WAIT, value_parser = humantime::parse_duration)]
    pub kafka_fetch_wait: Duration,

    /// Rows a partition gathers at most before a flush.
    #[arg(long, env = "REFERRAL_BATCH_MAX_ROWS", default_value_t = DEFAULT_BATCH_MAX_ROWS)]
    pub batch_max_rows: usize,

    /// Payload bytes a partition gathers at most before a flush.
    #[arg(long, env = "REFERRAL_BATCH_MAX_BYTES", default_value_t = DEFAULT_BATCH_MAX_BYTES)]
    pub batch_max_bytes: usize,

    /// Longest time a message waits for its flush.
    #[arg(long, env = "REFERRAL_BATCH_MAX_WAIT", default_value = DEFAULT_BATCH_MAX_WAIT, value_parser = humantime::parse_duration)]
    pub batch_max_wait: Duration,

    /// Longest time one ClickHouse insert may take.
    #[arg(long, env = "REFERRAL_CLICKHOUSE_INSERT_TIMEOUT", default_value = DEFAULT_CLICKHOUSE_INSERT_TIMEOUT, value_parser = humantime::parse_duration)]
    pub clickhouse_insert_timeout: Duration,

    /// Do not apply migrations at start (the Helm chart runs `migrate` as a job).
    #[arg(long, env = "REFERRAL_NO_MIGRATE")]
    pub no_migrate: bool,

    /// How long SIGTERM waits for the last flush.
    #[arg(long, env = "REFERRAL_DRAIN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
}

impl ConsumerArgs {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.batch_max_rows >= 1,
            "--batch-max-rows must be at least 1"
        );
        anyhow::ensure!(
            self.batch_max_bytes >= 1024,
            "--batch-max-bytes must be at least 1024"
        );
        anyhow::ensure!(
            !self.batch_max_wait.is_zero(),
            "--batch-max-wait must be longer than zero"
        );
        anyhow::ensure!(
            !self.clickhouse_insert_timeout.is_zero(),
            "--clickhouse-insert-timeout must be longer than zero"
        );
        anyhow::ensure!(
            self.kafka_session_timeout >= Duration::from_secs(1),
            "--kafka-session-timeout must be at least 1s"
        );
        Ok(())
    }
}
