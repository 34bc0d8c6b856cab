//! `referral-aggregator run` against real services started here: a tansu broker and a
//! ClickHouse 18.16 server (installed by `./scripts/install-test-services.sh`).
//!
//! Every test checks exact results: N acknowledged clicks -> exactly N attributions and
//! totals N, whatever crashes, restarts, redeliveries or rebalances happen in between.

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use referral_load_tests::services::{ClickHouseServer, TansuBroker, free_port};
use referral_pipeline::kafka::producer::KafkaLog;
use referral_pipeline::kafka::{KafkaSettings, admin};
use referral_pipeline::log::EventLog;
use referral_schemas::Timestamp;
use referral_schemas::id::new_attribution_id;
use referral_schemas::messages::{
    AssignCode, ClickEvent, ConfirmConversion, DeleteAttribution, LogEvent, Verdict,
};

const PARTITIONS: i32 = 3;
const DEAD_LETTER_TOPIC: &str = "referral-events-dead-letter";

/// A tansu broker and a ClickHouse server for one test, and the topics on the broker.
struct Services {
    _broker: TansuBroker,
    clickhouse: ClickHouseServer,
    settings: KafkaSettings,
    database: String,
}

impl Services {
    async fn start() -> Self {
        let broker = TansuBroker::start();
        let clickhouse = ClickHouseServer::start();
        let settings = KafkaSettings {
            brokers: broker.address(),
            topic: "referral-events".into(),
            codes_topic: "referral-codes".into(),
            message_timeout: Duration::from_secs(10),
            linger: Duration::from_millis(5),
            queue_max_messages: 100_000,
            client_id: "aggregator-test".into(),
            security: Default::default(),
        };
        admin::ensure_topics(&settings, PARTITIONS, 1)
            .await
            .expect("create topics");
        admin::ensure_topic(&settings, DEAD_LETTER_TOPIC, 1, 1)
            .await
            .expect("create the dead-letter topic");
        Self {
            _broker: broker,
            clickhouse,
            settings,
            database: "referral".into(),
        }
    }

    fn aggregator(&self, extra_env: &[(&str, &str)]) -> Aggregator {
        let port = free_port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_referral-aggregator"));
        command
            .arg("run")
            .env("REFERRAL_KAFKA_BROKERS", &self.settings.brokers)
            .env("REFERRAL_CLICKHOUSE_URL", self.clickhouse.http_url())
            .env("REFERRAL_CLICKHOUSE_DATABASE", &self.database)
            .env("REFERRAL_LISTEN", format!("127.0.0.1:{port}"))
            .env("REFERRAL_KAFKA_SESSION_TIMEOUT", "6s")
            .env("REFERRAL_BATCH_MAX_WAIT", "200ms")
            .env("REFERRAL_BATCH_MAX_ROWS", "500")
            // Flushes here hold a few to a few hundred clicks: split them as bulk flushes
            // are, so that the crashes, restarts and rebalances below happen with two
            // concurrent attribution inserts per flush.
            .env("REFERRAL_CLICKHOUSE_INSERT_SPLIT_ROWS", "2")
            .env("RUST_LOG", "info")
            .env_remove("REFERRAL_FAULT_INJECTION")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (name, value) in extra_env {
            command.env(name, value);
        }
        Aggregator {
            child: command.spawn().expect("start referral-aggregator"),
            port,
        }
    }

    async fn publish(&self, events: Vec<LogEvent>) {
        let log = KafkaLog::connect(&self.settings).await.expect("producer");
        let sends = events.into_iter().map(|event| log.publish(event));
        for result in futures_join_all(sends).await {
            result.expect("the broker acknowledged the event");
        }
        log.flush(Duration::from_secs(10)).await;
    }

    /// Raw bytes on the log (for messages the aggregator cannot decode).
    async fn publish_raw(&self, key: &str, payload: &[u8]) {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.settings.brokers)
            .create()
            .expect("producer");
        producer
            .send(
                FutureRecord::to(&self.settings.topic)
                    .key(key)
                    .payload(payload),
                Duration::from_secs(10),
            )
            .await
            .expect("sent");
    }

    fn query(&self, sql: &str) -> String {
        self.clickhouse
            .query(&sql.replace("{db}", &self.database))
            .trim()
            .to_owned()
    }

    fn number(&self, sql: &str) -> i64 {
        let text = self.query(sql);
        text.parse()
            .unwrap_or_else(|_| panic!("{sql} answered {text:?}"))
    }

    /// Rows of `attributions` at their latest version, live or not.
    fn attributions(&self) -> i64 {
        self.number("SELECT count() FROM {db}.attributions FINAL")
    }

    fn total_clicks(&self) -> i64 {
        self.number("SELECT sum(clicks) FROM {db}.mentor_totals WHERE grain = 'day'")
    }

    /// Clicks recorded as duplicates, from the materialized totals.
    fn duplicate_clicks(&self) -> i64 {
        self.number("SELECT sum(clicks) FROM {db}.mentor_totals WHERE grain = 'duplicate_day'")
    }

    /// Every stored duplicate and the click it names.
    fn duplicates(&self) -> HashMap<String, String> {
        self.query(
            "SELECT id, duplicate_of FROM {db}.attributions FINAL WHERE verdict = 'duplicate' FORMAT TSV",
        )
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .map(|(id, of)| (id.to_owned(), of.to_owned()))
        .collect()
    }

    fn hourly_clicks(&self) -> i64 {
        self.number("SELECT sum(clicks) FROM {db}.mentor_totals WHERE grain = 'hour'")
    }

    fn total_conversions(&self) -> i64 {
        self.number("SELECT sum(conversions) FROM {db}.mentor_totals WHERE grain = 'day'")
    }

    /// The stored checkpoints, summed over partitions.
    fn checkpoints(&self) -> i64 {
        let sql = "SELECT sum(next_offset) FROM {db}.mentor_totals WHERE grain = 'checkpoint'";
        // Before the first flush the database may not exist yet.
        self.clickhouse
            .try_query(&sql.replace("{db}", &self.database))
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The log's end offsets, summed over partitions. Exact here because these tests send
    /// one message per produce request (`futures_join_all` awaits one at a time): tansu
    /// 0.6.0 reports a partition's end short by the rest of a multi-record batch.
    fn log_end(&self) -> i64 {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.settings.brokers)
            .create()
            .expect("consumer");
        (0..PARTITIONS)
            .map(|partition| {
                consumer
                    .fetch_watermarks(&self.settings.topic, partition, Duration::from_secs(5))
                    .expect("watermarks")
                    .1
            })
            .sum()
    }

    /// Waits until every message on the log is behind a stored checkpoint.
    fn wait_caught_up(&self, within: Duration) {
        let end = self.log_end();
        let deadline = Instant::now() + within;
        loop {
            let stored = self.checkpoints();
            if stored == end {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not caught up: checkpoints {stored} of {end}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn verdict(&self, command_id: &str) -> Option<Verdict> {
        let text = self.query(&format!(
            "SELECT verdict FROM {{db}}.command_verdicts FINAL WHERE command_id = '{command_id}' FORMAT TSVRaw"
        ));
        (!text.is_empty()).then(|| serde_json::from_str(&text).expect("verdict JSON"))
    }

    /// The distinct keys of the records on `topic`, read from the beginning of every
    /// partition until none comes for two seconds (tansu's watermarks do not count the
    /// records of a batch).
    fn topic_keys(&self, topic: &str) -> HashSet<Vec<u8>> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.settings.brokers)
            .set("group.id", "topic-reader")
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .expect("metadata");
        let mut assignment = TopicPartitionList::new();
        for partition in metadata
            .topics()
            .iter()
            .flat_map(|topic| topic.partitions())
        {
            assignment
                .add_partition_offset(topic, partition.id(), Offset::Beginning)
                .expect("partition");
        }
        consumer.assign(&assignment).expect("assign");
        let mut keys = HashSet::new();
        let mut last_seen = Instant::now();
        while last_seen.elapsed() < Duration::from_secs(2) {
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
                keys.insert(message.key().unwrap_or_default().to_vec());
                last_seen = Instant::now();
            }
        }
        keys
    }

    /// Messages on the dead-letter topic: (reason header, payload).
    fn dead_letters(&self) -> Vec<(String, Vec<u8>)> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.settings.brokers)
            .set("group.id", "dead-letter-reader")
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let (_, end) = consumer
            .fetch_watermarks(DEAD_LETTER_TOPIC, 0, Duration::from_secs(5))
            .expect("watermarks");
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(DEAD_LETTER_TOPIC, 0, Offset::Beginning)
            .expect("partition");
        consumer.assign(&assignment).expect("assign");
        let mut letters = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while (letters.len() as i64) < end && Instant::now() < deadline {
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
                let reason = message
                    .headers()
                    .and_then(|headers| {
                        headers
                            .iter()
                            .find(|header| header.key == "dead_letter_reason")
                            .and_then(|header| header.value)
                            .map(|value| String::from_utf8_lossy(value).into_owned())
                    })
                    .unwrap_or_default();
                letters.push((reason, message.payload().unwrap_or_default().to_vec()));
            }
        }
        letters
    }
}

/// A running `referral-aggregator run`.
struct Aggregator {
    child: Child,
    port: u16,
}

impl Aggregator {
    fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(40);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "aggregator exited with {status}");
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("aggregator did not stop after SIGTERM");
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.get("/readyz").0 != 200 {
            assert!(Instant::now() < deadline, "aggregator never became ready");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for the process to end on its own (an injected crash).
    fn wait_for_crash(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(!status.success(), "expected a crash, got {status}");
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the injected crash did not happen");
    }

    fn get(&self, path: &str) -> (u16, String) {
        http_get(self.port, path).unwrap_or((0, String::new()))
    }
}

impl Drop for Aggregator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.1 GET: (status, body).
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())?;
    Some((status, body))
}

async fn futures_join_all<F: std::future::Future>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let mut set = Vec::new();
    for future in futures {
        set.push(future);
    }
    let mut outputs = Vec::with_capacity(set.len());
    // One at a time: each message is its own batch on the wire.
    let handles: Vec<_> = set.into_iter().map(Box::pin).collect();
    for handle in handles {
        outputs.push(handle.await);
    }
    outputs
}

const BROWSER: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0";

/// A client address no other click of this test process used: every click of [`clicks`]
/// is a new visitor, so each one counts.
fn new_visitor_ip() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("10.{}.{}.{}", (n >> 16) & 255, (n >> 8) & 255, n & 255)
}

/// `count` clicks of `count` new visitors, spread over `mentors` mentors and five hours.
fn clicks(count: usize, mentors: usize) -> Vec<LogEvent> {
    let now = Timestamp::now();
    (0..count)
        .map(|n| {
            LogEvent::Click(ClickEvent {
                attribution_id: new_attribution_id(),
                code: format!("CODE-{}", n % mentors),
                mentor_id: format!("usr_{}", n % mentors),
                ip_address: new_visitor_ip(),
                user_agent: Some(BROWSER.into()),
                referrer_url: None,
                occurred_at: Timestamp::from_millis(now.as_millis() - (n as i64 % 5) * 3_600_000),
                received_at: now,
            })
        })
        .collect()
}

/// [`clicks`], then each of those visitors again a second later: `count` clicks, the
/// second half duplicates of the first. Returns the events and, for each repeat, the id of
/// the click it repeats.
fn visits_and_repeats(count: usize, mentors: usize) -> (Vec<LogEvent>, HashMap<String, String>) {
    let first = clicks(count / 2, mentors);
    let mut repeats = HashMap::new();
    let mut events = first.clone();
    for event in first {
        if let LogEvent::Click(mut click) = event {
            let original = click.attribution_id.clone();
            click.attribution_id = new_attribution_id();
            click.received_at = Timestamp::from_millis(click.received_at.as_millis() + 1_000);
            repeats.insert(click.attribution_id.clone(), original);
            events.push(LogEvent::Click(click));
        }
    }
    (events, repeats)
}

fn click_ids(events: &[LogEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|event| match event {
            LogEvent::Click(click) => Some(click.attribution_id.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn n_clicks_become_exactly_n_attributions_and_totals() {
    let services = Services::start().await;
    let mut aggregator = services.aggregator(&[]);
    services.publish(clicks(1_500, 7)).await;
    services.wait_caught_up(Duration::from_secs(60));
    assert_eq!(services.attributions(), 1_500);
    assert_eq!(services.total_clicks(), 1_500);
    assert_eq!(services.hourly_clicks(), 1_500);
    let per_mentor = services.query(
        "SELECT mentor_id, sum(clicks) FROM {db}.mentor_totals WHERE grain = 'day' GROUP BY mentor_id ORDER BY mentor_id FORMAT TSV",
    );
    let counts: HashMap<&str, i64> = per_mentor
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .map(|(mentor, clicks)| (mentor, clicks.parse().unwrap_or(-1)))
        .collect();
    assert_eq!(counts.len(), 7);
    assert_eq!(counts["usr_0"], 215, "{per_mentor}");
    assert_eq!(counts["usr_6"], 214, "{per_mentor}");
    let (status, body) = aggregator.get("/readyz");
    assert_eq!(status, 200, "{body}");
    // Lag per partition comes from librdkafka's statistics, every 5 s: it reaches 0.
    let caught_up = r#"referral_consumer_lag{topic="referral-events",partition="0"} 0"#;
    let deadline = Instant::now() + Duration::from_secs(20);
    let metrics = loop {
        let (_, metrics) = aggregator.get("/metrics");
        if metrics.contains(caught_up) || Instant::now() > deadline {
            break metrics;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(metrics.contains(caught_up), "{metrics}");
    assert!(metrics.contains("referral_batch_rows"), "{metrics}");
    assert!(metrics.contains("referral_clickhouse_insert_duration_seconds"));
    // The attributions went in as two inserts per flush of two or more.
    let count = |series: &str| {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let flushes = count("referral_flush_duration_seconds_count");
    let inserts =
        count(r#"referral_clickhouse_insert_duration_seconds_count{table="attributions"}"#);
    assert!(
        flushes > 0.0 && inserts > flushes,
        "{flushes} flushes, {inserts} inserts"
    );
    aggregator.terminate();
}

/// The crash the issue names (between the insert and the Kafka commit), the one before the
/// totals insert, and an insert whose acknowledgement was lost: exact totals after each.
/// Half the clicks repeat a visitor of the other half, many across the crash: each is
/// still a duplicate of the same click after a SIGKILL and restart (the window rebuilt from
/// the store) and after a redelivered batch (its rows written again with their verdicts).
#[tokio::test(flavor = "multi_thread")]
async fn crashes_around_the_commit_point_lose_nothing_and_count_nothing_twice() {
    let services = Services::start().await;
    let mut expected = 0;
    let mut expected_repeats = HashMap::new();
    for fault in [
        "crash-after-checkpoint:1",
        "crash-before-checkpoint:1",
        "lose-totals-ack:1",
    ] {
        let (events, repeats) = visits_and_repeats(1_200, 5);
        expected += 1_200;
        expected_repeats.extend(repeats);
        services.publish(events).await;
        let mut aggregator = services.aggregator(&[("REFERRAL_FAULT_INJECTION", fault)]);
        if fault.starts_with("crash") {
            aggregator.wait_for_crash(Duration::from_secs(60));
            // Restarted on the same log and store, without the fault.
            let mut restarted = services.aggregator(&[]);
            restarted.wait_ready();
            services.wait_caught_up(Duration::from_secs(90));
            restarted.terminate();
        } else {
            aggregator.wait_ready();
            services.wait_caught_up(Duration::from_secs(90));
            aggregator.terminate();
        }
        assert_eq!(services.attributions(), expected, "after {fault}");
        let duplicates = expected_repeats.len() as i64;
        assert_eq!(
            services.total_clicks(),
            expected - duplicates,
            "after {fault}"
        );
        assert_eq!(
            services.hourly_clicks(),
            expected - duplicates,
            "after {fault}"
        );
        assert_eq!(services.duplicate_clicks(), duplicates, "after {fault}");
        assert!(
            services.duplicates() == expected_repeats,
            "after {fault}: every repeat, and only repeats, is a duplicate of its first visit"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn clickhouse_restarted_mid_stream_loses_nothing() {
    let mut services = Services::start().await;
    let mut aggregator = services.aggregator(&[]);
    services.publish(clicks(800, 4)).await;
    services.wait_caught_up(Duration::from_secs(60));
    services.clickhouse.stop();
    services.publish(clicks(900, 4)).await;
    // Flushes fail meanwhile; the aggregator says so and keeps the batches.
    let deadline = Instant::now() + Duration::from_secs(20);
    while aggregator.get("/readyz").0 == 200 {
        assert!(
            Instant::now() < deadline,
            "/readyz stayed 200 with ClickHouse down"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    services.clickhouse.restart();
    services.wait_caught_up(Duration::from_secs(90));
    assert_eq!(services.attributions(), 1_700);
    assert_eq!(services.total_clicks(), 1_700);
    aggregator.terminate();
}

#[tokio::test(flavor = "multi_thread")]
async fn undecodable_messages_go_to_the_dead_letter_topic_and_never_block_the_partition() {
    let services = Services::start().await;
    let mut aggregator = services.aggregator(&[]);
    let key = "usr_0";
    services.publish(clicks(10, 1)).await;
    services.publish_raw(key, b"{not json").await;
    services
        .publish_raw(key, br#"{"schema_version":99,"kind":"click","payload":{}}"#)
        .await;
    services.publish(clicks(10, 1)).await;
    services.wait_caught_up(Duration::from_secs(60));
    assert_eq!(services.total_clicks(), 20);
    let letters = services.dead_letters();
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert!(letters[0].0.contains("malformed"), "{:?}", letters[0].0);
    assert_eq!(letters[0].1, b"{not json");
    assert!(
        letters[1].0.contains("schema_version 99"),
        "{:?}",
        letters[1].0
    );
    let (_, metrics) = aggregator.get("/metrics");
    assert!(
        metrics.contains("referral_dead_lettered_total"),
        "{metrics}"
    );
    aggregator.terminate();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rebalance_between_two_aggregators_keeps_totals_exact() {
    let services = Services::start().await;
    let mut first = services.aggregator(&[]);
    // 1,000 visitors, each back once after the group changed: a partition's window moves
    // with the partition (rebuilt from the store by its new owner).
    let (visits, repeats) = visits_and_repeats(2_000, 9);
    let (first_visits, second_visits) = visits.split_at(1_000);
    services.publish(first_visits.to_vec()).await;
    let mut second = services.aggregator(&[]);
    // Published while the group rebalances from one member to two.
    for chunk in second_visits.chunks(250) {
        services.publish(chunk.to_vec()).await;
        services.publish(clicks(250, 9)).await;
        std::thread::sleep(Duration::from_millis(300));
    }
    services.wait_caught_up(Duration::from_secs(90));
    // The first leaves: the second takes every partition.
    first.terminate();
    services.publish(clicks(700, 9)).await;
    services.wait_caught_up(Duration::from_secs(90));
    assert_eq!(services.attributions(), 3_700);
    assert_eq!(services.total_clicks(), 2_700);
    assert_eq!(services.hourly_clicks(), 2_700);
    assert_eq!(services.duplicate_clicks(), 1_000);
    assert!(services.duplicates() == repeats);
    let (_, metrics) = second.get("/metrics");
    assert!(metrics.contains("referral_rebalances_total"), "{metrics}");
    second.terminate();
}

#[tokio::test(flavor = "multi_thread")]
async fn commands_are_decided_once_against_the_current_state() {
    let services = Services::start().await;
    let mut aggregator = services.aggregator(&[]);
    let events = clicks(3, 1);
    let ids = click_ids(&events);
    services.publish(events).await;
    services.wait_caught_up(Duration::from_secs(60));
    let now = Timestamp::now();
    // 50 confirmations of one attribution with different members: exactly one applies.
    let confirms: Vec<LogEvent> = (0..50)
        .map(|n| {
            LogEvent::ConfirmConversion(ConfirmConversion {
                command_id: format!("cmd_confirm_{n}"),
                attribution_id: ids[0].clone(),
                code: "CODE-0".into(),
                new_member_id: format!("new_{n}"),
                confirmed_at: now,
                issued_at: now,
            })
        })
        .collect();
    services.publish(confirms).await;
    // The same member for another attribution: refused.
    services
        .publish(vec![LogEvent::ConfirmConversion(ConfirmConversion {
            command_id: "cmd_second_member".into(),
            attribution_id: ids[1].clone(),
            code: "CODE-0".into(),
            new_member_id: "new_0".into(),
            confirmed_at: now,
            issued_at: now,
        })])
        .await;
    services
        .publish(vec![
            LogEvent::DeleteAttribution(DeleteAttribution {
                command_id: "cmd_delete".into(),
                attribution_id: ids[2].clone(),
                issued_at: now,
            }),
            LogEvent::AssignCode(AssignCode {
                command_id: "cmd_code".into(),
                code: "NEW-CODE".into(),
                mentor_id: "usr_9".into(),
                destination_url: None,
                issued_at: now,
            }),
        ])
        .await;
    services.wait_caught_up(Duration::from_secs(60));
    let applied = (0..50)
        .filter(|n| {
            matches!(
                services.verdict(&format!("cmd_confirm_{n}")),
                Some(Verdict::Confirmed {
                    replayed: false,
                    ..
                })
            )
        })
        .count();
    assert_eq!(applied, 1);
    assert!(matches!(
        services.verdict("cmd_confirm_0"),
        Some(Verdict::Confirmed { .. })
    ));
    assert!(matches!(
        services.verdict("cmd_second_member"),
        Some(Verdict::Rejected { .. })
    ));
    assert!(matches!(
        services.verdict("cmd_delete"),
        Some(Verdict::Deleted { .. })
    ));
    assert!(matches!(
        services.verdict("cmd_code"),
        Some(Verdict::CodeAssigned { created: true, .. })
    ));
    assert_eq!(services.total_clicks(), 2);
    assert_eq!(services.total_conversions(), 1);
    assert_eq!(
        services.number(&format!(
            "SELECT count() FROM {{db}}.attributions FINAL WHERE id = '{}' AND deleted_at IS NOT NULL",
            ids[2]
        )),
        1
    );
    aggregator.terminate();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backlog_of_commands_larger_than_one_query_is_decided_in_one_flush() {
    let services = Services::start().await;
    // 8,000 commands waiting while no aggregator runs: one flush names them all, and a
    // single `IN (...)` of their ids (~270 KB) would pass ClickHouse's max_query_size.
    let now = Timestamp::now();
    let deletions: Vec<LogEvent> = (0..8_000)
        .map(|n| {
            LogEvent::DeleteAttribution(DeleteAttribution {
                command_id: format!("cmd_backlog_{n:05}_0123456789abcdef"),
                attribution_id: format!("attr_01JQ3V8W6Y7Z8A9B0C1D{n:06}"),
                issued_at: now,
            })
        })
        .collect();
    services.publish(deletions).await;
    // Batches as large and as patient as the defaults allow: the whole backlog is read
    // before the first flush.
    let mut aggregator = services.aggregator(&[
        ("REFERRAL_BATCH_MAX_WAIT", "10s"),
        ("REFERRAL_BATCH_MAX_ROWS", "50000"),
    ]);
    aggregator.wait_ready();
    services.wait_caught_up(Duration::from_secs(120));
    assert_eq!(
        services.number("SELECT count() FROM {db}.command_verdicts FINAL"),
        8_000
    );
    assert!(matches!(
        services.verdict("cmd_backlog_07999_0123456789abcdef"),
        Some(Verdict::Rejected { .. })
    ));
    aggregator.terminate();
}

/// A flush holding more code assignments than the producer's local queue holds: every code
/// reaches the codes topic all the same (a full queue waits for the oldest acknowledgement
/// instead of failing the flush, and again at every retry).
#[tokio::test(flavor = "multi_thread")]
async fn a_flush_with_more_codes_than_the_producer_queue_publishes_them_all() {
    const CODES: usize = 300;
    let services = Services::start().await;
    let now = Timestamp::now();
    let assignments: Vec<LogEvent> = (0..CODES)
        .map(|n| {
            LogEvent::AssignCode(AssignCode {
                command_id: format!("cmd_bulk_code_{n}"),
                code: format!("BULK-{n:04}"),
                mentor_id: "usr_bulk".into(),
                destination_url: None,
                issued_at: now,
            })
        })
        .collect();
    services.publish(assignments).await;
    // The whole backlog in one flush, and a queue of 50 messages.
    let mut aggregator = services.aggregator(&[
        ("REFERRAL_KAFKA_QUEUE_MAX_MESSAGES", "50"),
        ("REFERRAL_BATCH_MAX_WAIT", "5s"),
        ("REFERRAL_BATCH_MAX_ROWS", "50000"),
    ]);
    aggregator.wait_ready();
    services.wait_caught_up(Duration::from_secs(120));
    let created = (0..CODES)
        .filter(|n| {
            matches!(
                services.verdict(&format!("cmd_bulk_code_{n}")),
                Some(Verdict::CodeAssigned { created: true, .. })
            )
        })
        .count();
    let missing: Vec<String> = (0..CODES)
        .filter_map(|n| {
            let verdict = services.verdict(&format!("cmd_bulk_code_{n}"));
            (!matches!(verdict, Some(Verdict::CodeAssigned { created: true, .. })))
                .then(|| format!("{n}: {verdict:?}"))
        })
        .take(5)
        .collect();
    assert_eq!(created, CODES, "{missing:?}");
    let published = services.topic_keys("referral-codes");
    assert_eq!(published.len(), CODES);
    assert!(published.contains(b"BULK-0299".as_slice()));
    let (_, metrics) = aggregator.get("/metrics");
    assert!(
        !metrics.contains("referral_flush_failures_total"),
        "a flush failed: {metrics}"
    );
    aggregator.terminate();
}
