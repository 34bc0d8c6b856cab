//! Settings of the pipeline (log, consumer, store), shared by every binary.
//!
//! Every setting is a flag with a `REFERRAL_*` environment variable. Defaults are named
//! constants with the reason for their value.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::kafka::{
    KafkaSecurity, KafkaSettings, SaslCredentials, SaslMechanism, SecurityProtocol,
};

/// Default directory of the embedded store.
pub const DEFAULT_DATA_DIR: &str = "./data";
/// How long after a click a confirmation still counts: 90 days, the common cookie window of
/// referral programs.
pub const DEFAULT_ATTRIBUTION_WINDOW: &str = "90days";
/// Events queued for the embedded log's appender at most (and so in one write and fsync at
/// most). At a few hundred bytes each this bounds the queue to a few MiB; when it is full,
/// publishers get 503 at once instead of memory growing.
pub const DEFAULT_LOG_QUEUE_CAPACITY: usize = 10_000;
/// Events the embedded consumer applies in one SQLite transaction at most. Larger
/// transactions amortize the commit (fsync, WAL frames) over more clicks, which is what lets
/// the store catch up after a burst; ten thousand still commit in tens of milliseconds.
pub const DEFAULT_COMMIT_BATCH_MAX: usize = 10_000;
/// A segment of the embedded log is closed and a new one started past this size: big
/// enough that rolls are rare (a second or more at full load), small enough that applied
/// segments are deleted soon and recovery reads one at a time.
pub const DEFAULT_LOG_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// The shortest time between two fsyncs of the embedded log: on a busy edge, batches grow
/// meanwhile and each fsync's CPU is shared by more clicks (measured: docs/BENCHMARKS.md);
/// on an idle one, a click waits at most this much longer.
pub const DEFAULT_LOG_FSYNC_INTERVAL: &str = "250us";
/// How far the embedded store may fall behind its log before clicks are refused (503).
/// The consumer defers during a burst until half of it: a 10 s burst at the edge's full
/// speed on two cores (~90k clicks/s) is served with the store standing aside (at 1,000,000
/// it competed with the edge for the second half: docs/BENCHMARKS.md). About 300 bytes of
/// log per click (~600 MB at the bound; about 12 GB if every click had the largest fields
/// allowed), nothing in memory.
pub const DEFAULT_MAX_APPLY_LAG: u64 = 2_000_000;

/// A cluster's writes reach two replicas before they count: one replica can be lost
/// without losing a stored flush (three replicas keep writing with one down).
pub const DEFAULT_CLUSTER_INSERT_QUORUM: u32 = 2;

/// How long the producer retries one message. The edge's `--ack-timeout` may not exceed it,
/// so a request never outlives its message's fate by more than this.
pub const DEFAULT_KAFKA_MESSAGE_TIMEOUT: &str = "10s";
/// Small: the edge answers after the ack, so linger adds straight to click latency and, with
/// a client's connections each waiting for its ack, bounds the edge's rate (connections /
/// round trip). 1 ms still batches hundreds of clicks per request at load; measured on
/// tansu at 256 connections: 5 ms served 38k clicks/s, 1 ms 83k (docs/BENCHMARKS.md).
pub const DEFAULT_KAFKA_LINGER: &str = "1ms";
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

    /// How clients reach the brokers: plaintext, ssl, sasl-plaintext or sasl-ssl.
    #[arg(
        long,
        env = "REFERRAL_KAFKA_SECURITY_PROTOCOL",
        value_enum,
        default_value = "plaintext"
    )]
    pub kafka_security_protocol: SecurityProtocol,

    /// SASL mechanism (with sasl-plaintext or sasl-ssl): PLAIN, SCRAM-SHA-256, SCRAM-SHA-512.
    #[arg(long, env = "REFERRAL_KAFKA_SASL_MECHANISM", value_enum)]
    pub kafka_sasl_mechanism: Option<SaslMechanism>,

    /// SASL user name.
    #[arg(long, env = "REFERRAL_KAFKA_SASL_USERNAME")]
    pub kafka_sasl_username: Option<String>,

    /// SASL password (set it through the environment, from a Secret).
    #[arg(long, env = "REFERRAL_KAFKA_SASL_PASSWORD", hide_env_values = true)]
    pub kafka_sasl_password: Option<String>,

    /// PEM file of the CAs that signed the brokers' certificates (with ssl or sasl-ssl;
    /// unset: the system's CAs).
    #[arg(long, env = "REFERRAL_KAFKA_SSL_CA_LOCATION")]
    pub kafka_ssl_ca_location: Option<PathBuf>,

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

    /// ClickHouse cluster (a `remote_servers` entry of the servers' config) whose replicas
    /// hold the store: migrations run `ON CLUSTER` with Replicated engines (each server
    /// needs `<zookeeper>` and the `{shard}` and `{replica}` macros). Unset: one server.
    #[arg(long, env = "REFERRAL_CLICKHOUSE_CLUSTER")]
    pub clickhouse_cluster: Option<String>,

    /// Replicas every insert of the writer must reach before it counts (`insert_quorum`),
    /// and its reads see only what such inserts wrote (`select_sequential_consistency`):
    /// after a failover the checkpoint it resumes from reflects every flush stored.
    /// 0: the default, 2 with --clickhouse-cluster (and none without).
    #[arg(long, env = "REFERRAL_CLICKHOUSE_INSERT_QUORUM", default_value_t = 0)]
    pub clickhouse_insert_quorum: u32,

    /// The writer's reads only from a replica holding every acknowledged insert
    /// (`select_sequential_consistency`): on by itself with --clickhouse-cluster; set it on
    /// ClickHouse Cloud, whose replicas pick up new parts asynchronously, so that an
    /// aggregator moved to another replica never resumes from an older checkpoint.
    #[arg(long, env = "REFERRAL_CLICKHOUSE_SEQUENTIAL_READS")]
    pub clickhouse_sequential_reads: bool,

    /// Threads one read of the API may use in ClickHouse (`max_threads`; 0: the server's
    /// default, its core count). Dashboard reads are many and small: measured on 2 cores
    /// with 4 concurrent leaderboards, one thread each answered p99 ~15% sooner than two.
    #[arg(long, env = "REFERRAL_CLICKHOUSE_READ_THREADS", default_value_t = 1)]
    pub clickhouse_read_threads: u64,

    /// Longest time from click to confirmation (e.g. 90days, 30d, 12h).
    #[arg(long, env = "REFERRAL_ATTRIBUTION_WINDOW", default_value = DEFAULT_ATTRIBUTION_WINDOW, value_parser = humantime::parse_duration)]
    pub attribution_window: Duration,

    /// A click by the same code, client IP and user agent as a counted click less than this
    /// long before (by the edge's receive time) is recorded as a `duplicate` (0: never).
    /// Decided by the aggregator, the single writer: set it there.
    #[arg(long, env = "REFERRAL_DEDUP_WINDOW", default_value = "1h", value_parser = humantime::parse_duration)]
    pub dedup_window: Duration,

    /// Durability of each embedded-store commit.
    #[arg(
        long,
        env = "REFERRAL_SQLITE_SYNCHRONOUS",
        value_enum,
        default_value = "full"
    )]
    pub sqlite_synchronous: SqliteSynchronous,

    /// Events queued for the embedded log at most (then 503); also the most events in one
    /// write and fsync.
    #[arg(long, env = "REFERRAL_LOG_QUEUE_CAPACITY", default_value_t = DEFAULT_LOG_QUEUE_CAPACITY, value_parser = clap::value_parser!(usize))]
    pub log_queue_capacity: usize,

    /// Shortest time between two fsyncs of the embedded log (group commit window).
    #[arg(long, env = "REFERRAL_LOG_FSYNC_INTERVAL", default_value = DEFAULT_LOG_FSYNC_INTERVAL, value_parser = humantime::parse_duration)]
    pub log_fsync_interval: Duration,

    /// Bytes after which the embedded log starts a new segment file.
    #[arg(long, env = "REFERRAL_LOG_SEGMENT_BYTES", default_value_t = DEFAULT_LOG_SEGMENT_BYTES)]
    pub log_segment_bytes: u64,

    /// Events the embedded store may be behind its log at most (then clicks and commands get
    /// 503 at once, and /readyz fails).
    #[arg(long, env = "REFERRAL_MAX_APPLY_LAG", default_value_t = DEFAULT_MAX_APPLY_LAG)]
    pub max_apply_lag: u64,

    /// Longest the embedded store stands still while events wait: past it the consumer
    /// applies a batch even while the machine is busy (how stale dashboards may get under
    /// contention; a reader of its own fresh click waits for the store anyway). Shorter
    /// costs a burst: at 1 s the edge served about 15% fewer clicks (docs/BENCHMARKS.md).
    #[arg(long, env = "REFERRAL_MAX_APPLY_DELAY", default_value = "10s", value_parser = humantime::parse_duration)]
    pub max_apply_delay: Duration,

    /// Events the embedded consumer applies per SQLite transaction at most.
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
            self.log_segment_bytes >= 4096,
            "--log-segment-bytes must be at least 4096"
        );
        anyhow::ensure!(
            self.log_fsync_interval <= Duration::from_secs(1),
            "--log-fsync-interval must be at most 1s (every click waits for it)"
        );
        anyhow::ensure!(
            !self.attribution_window.is_zero(),
            "--attribution-window must be longer than zero"
        );
        if let Some(url) = &self.clickhouse_url {
            anyhow::ensure!(
                url.starts_with("http://") || url.starts_with("https://"),
                "--clickhouse-url must be the server's HTTP(S) URL (http://host:8123, \
                 https://host:8443)"
            );
            crate::store::clickhouse::migrate::quoted_identifier(&self.clickhouse_database)
                .map_err(|error| anyhow::anyhow!("--clickhouse-database: {error}"))?;
        }
        if let Some(cluster) = &self.clickhouse_cluster {
            crate::store::clickhouse::migrate::quoted_identifier(cluster)
                .map_err(|error| anyhow::anyhow!("--clickhouse-cluster: {error}"))?;
        }
        anyhow::ensure!(
            self.clickhouse_insert_quorum == 0 || self.clickhouse_cluster.is_some(),
            "--clickhouse-insert-quorum needs --clickhouse-cluster (replicas to reach)"
        );
        anyhow::ensure!(
            self.kafka_queue_max_messages >= 1,
            "--kafka-queue-max-messages must be at least 1"
        );
        self.kafka_security()?;
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
            // Checked by `validate` at start-up; a bad combination cannot get here.
            security: self.kafka_security().unwrap_or_default(),
        })
    }

    /// The Kafka security settings, or why they do not fit together.
    pub fn kafka_security(&self) -> anyhow::Result<KafkaSecurity> {
        let protocol = self.kafka_security_protocol;
        let sasl_flags = [
            self.kafka_sasl_mechanism.is_some(),
            self.kafka_sasl_username.is_some(),
            self.kafka_sasl_password.is_some(),
        ];
        let sasl = if protocol.uses_sasl() {
            match (
                self.kafka_sasl_mechanism,
                &self.kafka_sasl_username,
                &self.kafka_sasl_password,
            ) {
                (Some(mechanism), Some(username), Some(password)) if !username.is_empty() => {
                    Some(SaslCredentials {
                        mechanism,
                        username: username.clone(),
                        password: password.clone(),
                    })
                }
                _ => anyhow::bail!(
                    "--kafka-security-protocol {protocol:?} needs --kafka-sasl-mechanism, \
                     --kafka-sasl-username and --kafka-sasl-password"
                ),
            }
        } else {
            anyhow::ensure!(
                !sasl_flags.contains(&true),
                "--kafka-sasl-* settings need --kafka-security-protocol sasl-plaintext or sasl-ssl"
            );
            None
        };
        if let Some(ca) = &self.kafka_ssl_ca_location {
            anyhow::ensure!(
                protocol.uses_tls(),
                "--kafka-ssl-ca-location needs --kafka-security-protocol ssl or sasl-ssl"
            );
            anyhow::ensure!(
                ca.is_file(),
                "--kafka-ssl-ca-location: {} is not a readable file",
                ca.display()
            );
        }
        Ok(KafkaSecurity {
            protocol,
            sasl,
            ssl_ca_location: self.kafka_ssl_ca_location.clone(),
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
                read_threads: self.clickhouse_read_threads,
                cluster: self.clickhouse_cluster.clone(),
                insert_quorum: match (self.clickhouse_insert_quorum, &self.clickhouse_cluster) {
                    (0, Some(_)) => DEFAULT_CLUSTER_INSERT_QUORUM,
                    (quorum, _) => quorum,
                },
                sequential_reads: self.clickhouse_sequential_reads
                    || self.clickhouse_cluster.is_some(),
            })
    }

    /// The dedup window in milliseconds (0: off).
    pub fn dedup_window_ms(&self) -> i64 {
        i64::try_from(self.dedup_window.as_millis()).unwrap_or(i64::MAX)
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
/// The longest a command waits for its batch: a client waits for its verdict. Shorter than
/// the batch wait, long enough that commands arriving together share a flush.
pub const DEFAULT_COMMAND_MAX_WAIT: &str = "10ms";
/// How long the broker may hold a fetch with nothing new. Kafka answers as soon as data
/// arrives; some brokers (tansu) hold the fetch for the whole wait, so this bounds what the
/// broker adds to freshness.
pub const DEFAULT_KAFKA_FETCH_WAIT: &str = "100ms";
/// One insert slower than this is treated as failed and the flush retried.
pub const DEFAULT_CLICKHOUSE_INSERT_TIMEOUT: &str = "30s";
pub const DEFAULT_CLICKHOUSE_INSERT_SPLIT_ROWS: usize = 10_000;

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

    /// Longest time a command (a confirmation, reversal, deletion, code change) waits for
    /// its flush; a batch holding one is flushed this soon. At most --batch-max-wait.
    #[arg(long, env = "REFERRAL_COMMAND_MAX_WAIT", default_value = DEFAULT_COMMAND_MAX_WAIT, value_parser = humantime::parse_duration)]
    pub command_max_wait: Duration,

    /// Longest time one ClickHouse insert may take.
    #[arg(long, env = "REFERRAL_CLICKHOUSE_INSERT_TIMEOUT", default_value = DEFAULT_CLICKHOUSE_INSERT_TIMEOUT, value_parser = humantime::parse_duration)]
    pub clickhouse_insert_timeout: Duration,

    /// From this many attribution rows in a flush, they are written as two concurrent
    /// inserts (0: always one). Ignored with an insert quorum.
    #[arg(
        long,
        env = "REFERRAL_CLICKHOUSE_INSERT_SPLIT_ROWS",
        default_value_t = DEFAULT_CLICKHOUSE_INSERT_SPLIT_ROWS
    )]
    pub clickhouse_insert_split_rows: usize,

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

/// Webhook delivery settings: `referral-aggregator deliver`, and `referral-api` in the
/// embedded mode (where the deliverer runs in process).
#[derive(Args, Clone, Debug)]
pub struct WebhookArgs {
    /// Let webhook URLs use plain http and reach loopback, private, link-local and metadata
    /// addresses (tests, private networks). Off: https to public addresses only, checked at
    /// creation and at every delivery.
    #[arg(long, env = "REFERRAL_WEBHOOK_ALLOW_PRIVATE")]
    pub webhook_allow_private: bool,

    /// One delivery attempt's time limit (connecting included).
    #[arg(long, env = "REFERRAL_WEBHOOK_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub webhook_timeout: Duration,

    /// How long an event is retried before its attempt log says failed.
    #[arg(long, env = "REFERRAL_WEBHOOK_RETRY_FOR", default_value = "3days", value_parser = humantime::parse_duration)]
    pub webhook_retry_for: Duration,

    /// An endpoint failing this long in a row is disabled (a replay enables it again).
    #[arg(long, env = "REFERRAL_WEBHOOK_DISABLE_AFTER", default_value = "24h", value_parser = humantime::parse_duration)]
    pub webhook_disable_after: Duration,

    /// The first retry comes after half this to this (at most 5s); each next one waits
    /// twice as long (at most an hour).
    #[arg(long, env = "REFERRAL_WEBHOOK_RETRY_BASE", default_value = "2s", value_parser = humantime::parse_duration)]
    pub webhook_retry_base: Duration,

    /// How often the deliverer looks for new endpoints and events.
    #[arg(long, env = "REFERRAL_WEBHOOK_POLL", default_value = "250ms", value_parser = humantime::parse_duration)]
    pub webhook_poll: Duration,
}

/// The deliverers' consumer group (`referral-aggregator deliver` with `--kafka-brokers`).
#[derive(Args, Clone, Debug)]
pub struct WebhookGroupArgs {
    /// The deliverers' own consumer group on the attribution log: it splits the endpoints
    /// between the deliverers that run.
    #[arg(
        long,
        env = "REFERRAL_WEBHOOK_GROUP",
        default_value = "referral-webhooks"
    )]
    pub webhook_group: String,

    /// Session timeout in that group: how soon a dead deliverer's endpoints move to another.
    #[arg(long, env = "REFERRAL_WEBHOOK_SESSION_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub webhook_session_timeout: Duration,
}

impl WebhookGroupArgs {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.webhook_session_timeout >= Duration::from_secs(1),
            "--webhook-session-timeout must be at least 1s"
        );
        anyhow::ensure!(
            !self.webhook_group.trim().is_empty(),
            "--webhook-group must not be empty"
        );
        Ok(())
    }
}

impl WebhookArgs {
    pub fn settings(&self) -> anyhow::Result<crate::webhooks::deliver::DelivererSettings> {
        anyhow::ensure!(
            !self.webhook_timeout.is_zero() && !self.webhook_poll.is_zero(),
            "--webhook-timeout and --webhook-poll must be longer than zero"
        );
        anyhow::ensure!(
            !self.webhook_retry_base.is_zero() && self.webhook_retry_base <= Duration::from_secs(5),
            "--webhook-retry-base must be longer than zero and at most 5s (the first retry comes within it)"
        );
        Ok(crate::webhooks::deliver::DelivererSettings {
            timeout: self.webhook_timeout,
            retry_for: self.webhook_retry_for,
            disable_after: self.webhook_disable_after,
            retry_base: self.webhook_retry_base,
            allow_private: self.webhook_allow_private,
            poll: self.webhook_poll,
        })
    }
}

#[cfg(test)]
mod kafka_security_tests {
    use clap::Parser;
    use rdkafka::ClientConfig;

    use super::PipelineArgs;
    use crate::kafka::SecurityProtocol;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        pipeline: PipelineArgs,
    }

    /// A self-signed CA (test only, no key kept): librdkafka checks the file is a CA.
    const TEST_CA_PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBjTCCATOgAwIBAgIUcaqljDAI8QtAt6K6+91X7szLaqUwCgYIKoZIzj0EAwIw\nGzEZMBcGA1UEAwwQcmVmZXJyYWwtdGVzdC1jYTAgFw0yNjExMjQxMjM2MDVaGA8y\nMTI2MTAzMTEyMzYwNVowGzEZMBcGA1UEAwwQcmVmZXJyYWwtdGVzdC1jYTBZMBMG\nByqGSM49AgEGCCqGSM49AwEHA0IABFZmd+0I5KVQGrj5FX1hBWp2CpEUBOwIzDpv\n1hucepjwvW0jEY274Tsn2NbVoeZ/tOdOFAZGKHHAJ3UaNWaSxCmjUzBRMB0GA1Ud\nDgQWBBQgYWB71llMewNBlh2DDFUjzsOCjDAfBgNVHSMEGDAWgBQgYWB71llMewNB\nlh2DDFUjzsOCjDAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0gAMEUCIEZZ\nbaPEyRrM8OIgHeOmtFkiYzjVli4KF4MXdLIdmYkVAiEApee9bT0x5x2Fd/NAGi7C\njGmyX/an+DBvSb4yNOnb1dc=\n-----END CERTIFICATE-----\n";

    fn parse(extra: &[&str]) -> PipelineArgs {
        let mut args = vec!["test", "--kafka-brokers", "kafka:9093"];
        args.extend_from_slice(extra);
        Flags::try_parse_from(args).unwrap().pipeline
    }

    #[test]
    fn sasl_ssl_with_credentials_reaches_every_client_config() {
        let ca = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(ca.path(), TEST_CA_PEM).unwrap();
        let ca_path = ca.path().display().to_string();
        let pipeline = parse(&[
            "--kafka-security-protocol",
            "sasl-ssl",
            "--kafka-sasl-mechanism",
            "SCRAM-SHA-512",
            "--kafka-sasl-username",
            "referral",
            "--kafka-sasl-password",
            "s3cret",
            "--kafka-ssl-ca-location",
            &ca_path,
            "--clickhouse-url",
            "https://clickhouse.example:8443",
        ]);
        pipeline.validate().unwrap();
        let settings = pipeline.kafka_settings("test").unwrap();
        assert_eq!(settings.security.protocol, SecurityProtocol::SaslSsl);
        let config: ClientConfig = settings.client_config();
        assert_eq!(config.get("bootstrap.servers"), Some("kafka:9093"));
        assert_eq!(config.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(config.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(config.get("sasl.username"), Some("referral"));
        assert_eq!(config.get("sasl.password"), Some("s3cret"));
        assert_eq!(config.get("ssl.ca.location"), Some(ca_path.as_str()));
        assert!(!format!("{:?}", settings.security).contains("s3cret"));
        // librdkafka accepts the combination (this build has TLS and SCRAM).
        let producer: Result<rdkafka::producer::BaseProducer, _> = config.create();
        assert!(producer.is_ok(), "{:?}", producer.err());
    }

    #[test]
    fn plaintext_is_the_default_and_sets_no_credentials() {
        let pipeline = parse(&[]);
        pipeline.validate().unwrap();
        let config = pipeline.kafka_settings("test").unwrap().client_config();
        assert_eq!(config.get("security.protocol"), Some("plaintext"));
        assert_eq!(config.get("sasl.username"), None);
    }

    #[test]
    fn settings_that_do_not_fit_together_are_refused_at_start() {
        let missing_password = parse(&[
            "--kafka-security-protocol",
            "sasl-plaintext",
            "--kafka-sasl-mechanism",
            "PLAIN",
            "--kafka-sasl-username",
            "referral",
        ]);
        let error = missing_password.validate().unwrap_err().to_string();
        assert!(error.contains("--kafka-sasl-password"), "{error}");

        let sasl_without_protocol = parse(&["--kafka-sasl-username", "referral"]);
        assert!(sasl_without_protocol.validate().is_err());

        let ca_without_tls = parse(&["--kafka-ssl-ca-location", "/etc/hostname"]);
        assert!(ca_without_tls.validate().is_err());

        let missing_ca = parse(&[
            "--kafka-security-protocol",
            "ssl",
            "--kafka-ssl-ca-location",
            "/nonexistent/ca.pem",
        ]);
        assert!(missing_ca.validate().is_err());

        assert!(
            parse(&["--clickhouse-url", "clickhouse:8123"])
                .validate()
                .is_err()
        );
    }
}
