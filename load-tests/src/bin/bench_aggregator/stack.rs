//! The services of a phase and what is asked of them: `referral-aggregator migrate` and
//! `run`, the topic's log end (read from the broker), and the stored checkpoints and counts
//! in ClickHouse.

use std::collections::BTreeMap;
use std::thread;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message as _;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use referral_load_tests::bench::{self, Service};
use referral_load_tests::services::{ClickHouseServer, TansuBroker, free_port};
use tempfile::TempDir;

use crate::options::Options;
use crate::{DATABASE, Result, TOPIC};

/// How often the stored checkpoints are read while waiting for them.
const CHECKPOINT_POLL: Duration = Duration::from_millis(50);
/// How long `log_end` reads with nothing arriving before it takes the end as found.
const LOG_END_IDLE: Duration = Duration::from_millis(1500);

/// `referral-aggregator migrate`: the topics (`--partitions`) and the tables.
pub fn migrate(
    options: &Options,
    broker: &TansuBroker,
    clickhouse: &ClickHouseServer,
    logs: &TempDir,
) -> Result<()> {
    bench::migrate(
        &options.binary("referral-aggregator")?,
        broker,
        clickhouse,
        DATABASE,
        options.common.partitions,
        logs.path(),
    )
}

/// Starts `referral-aggregator run`; returns it with the port of its /metrics.
pub fn start_aggregator(
    options: &Options,
    broker: &TansuBroker,
    clickhouse: &ClickHouseServer,
    batch: &[(&str, String)],
    logs: &TempDir,
) -> Result<(Service, u16)> {
    let port = free_port();
    let mut env = vec![
        ("REFERRAL_KAFKA_BROKERS", broker.address()),
        ("REFERRAL_CLICKHOUSE_URL", clickhouse.http_url()),
        ("REFERRAL_CLICKHOUSE_DATABASE", DATABASE.to_owned()),
        ("REFERRAL_LISTEN", format!("127.0.0.1:{port}")),
        // Against tansu a group join takes ~23 s with librdkafka's default session timeout.
        ("REFERRAL_KAFKA_SESSION_TIMEOUT", "6s".to_owned()),
    ];
    env.extend(batch.iter().cloned());
    let service = Service::spawn(
        "referral-aggregator run",
        &options.binary("referral-aggregator")?,
        &["run"],
        &env,
        logs,
    )?;
    Ok((service, port))
}

/// The log's end offsets, summed over partitions.
///
/// Not `fetch_watermarks` alone: tansu 0.6.0 answers the high watermark as the base offset
/// of the partition's last record batch + 1, not its last offset + 1, so after a batch of
/// several records it reports less than the log holds (measured: 10 clicks in one batch,
/// high watermark 1). The last batch starts at (reported high watermark - 1) on tansu and
/// the last message is there on a correct broker, so this reads each partition from there
/// until nothing more arrives and takes the offset after the last message read.
pub fn log_end(brokers: &str, partitions: i32) -> Result<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "bench-aggregator-log-end")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .create()
        .map_err(|error| format!("cannot create a Kafka client: {error}"))?;
    let mut assignment = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for partition in 0..partitions {
        let (_, high) = consumer
            .fetch_watermarks(TOPIC, partition, Duration::from_secs(10))
            .map_err(|error| format!("cannot read the end of {TOPIC}/{partition}: {error}"))?;
        ends.insert(partition, high);
        assignment
            .add_partition_offset(TOPIC, partition, Offset::Offset((high - 1).max(0)))
            .map_err(|error| format!("cannot assign {TOPIC}/{partition}: {error}"))?;
    }
    consumer
        .assign(&assignment)
        .map_err(|error| format!("cannot assign {TOPIC}: {error}"))?;
    let mut last = Instant::now();
    while last.elapsed() < LOG_END_IDLE {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                last = Instant::now();
                let end = ends.entry(message.partition()).or_insert(0);
                *end = (*end).max(message.offset() + 1);
            }
            Some(Err(error)) => return Err(format!("cannot read {TOPIC}: {error}")),
            None => {}
        }
    }
    Ok(ends.values().sum())
}

fn number(clickhouse: &ClickHouseServer, sql: &str) -> Result<i64> {
    let text = clickhouse.try_query(sql)?;
    text.trim()
        .parse()
        .map_err(|_| format!("{sql} answered {text:?}"))
}

/// The stored checkpoints, summed over partitions (0 before the first flush).
fn checkpoints(clickhouse: &ClickHouseServer) -> Result<i64> {
    number(
        clickhouse,
        &format!(
            "SELECT toInt64(sum(next_offset)) FROM {DATABASE}.mentor_totals WHERE grain = 'checkpoint'"
        ),
    )
}

pub fn attributions(clickhouse: &ClickHouseServer) -> Result<i64> {
    number(
        clickhouse,
        &format!("SELECT count() FROM {DATABASE}.attributions FINAL"),
    )
}

pub fn daily_clicks(clickhouse: &ClickHouseServer) -> Result<i64> {
    number(
        clickhouse,
        &format!("SELECT toInt64(sum(clicks)) FROM {DATABASE}.mentor_totals WHERE grain = 'day'"),
    )
}

/// Polls the stored checkpoints until they reach `end`: (first time one was stored and the
/// rows it covered, the time they reached `end`).
pub fn wait_caught_up(
    clickhouse: &ClickHouseServer,
    aggregator: &mut Service,
    end: i64,
    within: Duration,
) -> Result<((Instant, i64), Instant)> {
    let deadline = Instant::now() + within;
    let mut first = None;
    loop {
        aggregator.check_alive()?;
        let stored = checkpoints(clickhouse)?;
        let now = Instant::now();
        if stored > 0 && first.is_none() {
            first = Some((now, stored));
        }
        if stored >= end {
            return Ok((first.unwrap_or((now, stored)), now));
        }
        if now > deadline {
            return Err(format!(
                "the aggregator did not catch up within {within:?}: checkpoints at {stored} of \
                 {end}; its log:\n{}",
                aggregator.log_tail()
            ));
        }
        thread::sleep(CHECKPOINT_POLL);
    }
}
