//! Phase 2, freshness: `referral-ingest` (Kafka) and `referral-aggregator run`, click POSTs
//! at a fixed open-loop rate with probe clicks among them, and the time from a probe's 201
//! to its click being visible in the totals. Before the load, the produce -> consume latency
//! through the broker.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message as _;
use rdkafka::producer::{BaseProducer, BaseRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use referral_load_tests::bench::{
    CpuWindow, Service, pid_text, quantile, runtime, thousands, wait_http_ok,
};
use referral_load_tests::services::{ClickHouseServer, TansuBroker, free_port};
use tempfile::TempDir;

use crate::load::{LOAD_CODES, Load, LoadStats, drive};
use crate::options::Options;
use crate::probes::{PollerStats, Probes, lock, poll_probes, probe_mentor};
use crate::stack::{
    attributions, daily_clicks, log_end, migrate, start_aggregator, wait_caught_up,
};
use crate::{Result, TOPIC};
use referral_load_tests::bench::FlushStats;

const CODES_TOPIC: &str = "referral-codes";
/// How long the freshness phase warms up (connections, producer, group, first flushes).
pub const WARM_UP: Duration = Duration::from_secs(3);
/// `fetch.wait.max.ms` values whose produce -> consume latency through the broker is
/// measured (librdkafka's default, and a short one; the aggregator sets 100 ms).
const FETCH_WAITS: [u32; 2] = [500, 50];
/// Topic of that measurement (the aggregator does not read it).
const FETCH_LATENCY_TOPIC: &str = "bench-fetch-latency";

pub struct FreshnessReport {
    pub fetch_latency: Vec<(u32, Option<Duration>, Option<Duration>)>,
    pub load: LoadStats,
    pub warm_up_created: u64,
    pub probes_sent: u64,
    pub freshness: Vec<Duration>,
    pub poller: PollerStats,
    pub flush: FlushStats,
    pub daily_clicks: i64,
    pub attributions: i64,
    pub created_total: u64,
    pub cpu: Vec<(&'static str, f64)>,
}

impl FreshnessReport {
    fn sorted_freshness(&self) -> Vec<Duration> {
        let mut sorted = self.freshness.clone();
        sorted.sort_unstable();
        sorted
    }

    /// "p50 / p99 / max" in milliseconds.
    pub fn freshness_summary(&self) -> String {
        let sorted = self.sorted_freshness();
        [
            quantile(&sorted, 0.5),
            quantile(&sorted, 0.99),
            sorted.last().copied(),
        ]
        .iter()
        .map(|value| {
            value.map_or_else(
                || "-".to_owned(),
                |d| format!("{:.0}", d.as_secs_f64() * 1e3),
            )
        })
        .collect::<Vec<_>>()
        .join(" / ")
    }

    /// POSTs answered 201 per second of load.
    pub fn achieved_rate(&self) -> f64 {
        self.load.created as f64 / self.load.elapsed.as_secs_f64().max(1e-9)
    }
}

/// One run of the phase, on fresh services.
pub fn run(options: &Options, logs: &TempDir) -> Result<FreshnessReport> {
    eprintln!("freshness: starting tansu and ClickHouse 18.16");
    let broker = TansuBroker::start();
    let clickhouse = ClickHouseServer::start();
    migrate(options, &broker, &clickhouse, logs)?;
    let mut fetch_latency = Vec::new();
    for wait_ms in FETCH_WAITS.into_iter().filter(|_| options.fetch_latency) {
        let mut latencies = fetch_latency_through(&broker.address(), wait_ms)?;
        latencies.sort_unstable();
        fetch_latency.push((
            wait_ms,
            quantile(&latencies, 0.5),
            quantile(&latencies, 0.99),
        ));
    }

    // Codes on the compacted topic the edge follows: load codes and probe codes, each its
    // own mentor.
    let mut assignments: Vec<String> = (0..options.probe_mentors)
        .map(|m| format!("PROBE-{m}={}", probe_mentor(m)))
        .collect();
    assignments.extend((0..LOAD_CODES).map(|n| format!("BENCH-{n}=usr_load_{n}")));
    let mut seed_args = vec![
        broker.address(),
        TOPIC.to_owned(),
        CODES_TOPIC.to_owned(),
        options.common.partitions.to_string(),
    ];
    seed_args.extend(assignments);
    let seed_args: Vec<&str> = seed_args.iter().map(String::as_str).collect();
    Service::spawn(
        "seed_codes",
        &options.binary("examples/seed_codes")?,
        &seed_args,
        &[],
        logs,
    )?
    .wait_success(Duration::from_secs(60))?;

    eprintln!("freshness: starting referral-aggregator run and referral-ingest");
    let batch: Vec<(&str, String)> = options
        .freshness_batch_max_wait
        .iter()
        .map(|wait| ("REFERRAL_BATCH_MAX_WAIT", wait.clone()))
        .collect();
    let (mut aggregator, aggregator_port) =
        start_aggregator(options, &broker, &clickhouse, &batch, logs)?;
    wait_http_ok(
        &mut aggregator,
        aggregator_port,
        "/readyz",
        Duration::from_secs(30),
    )?;
    let ingest_port = free_port();
    let mut ingest = Service::spawn(
        "referral-ingest",
        &options.binary("referral-ingest")?,
        &[],
        &[
            ("REFERRAL_KAFKA_BROKERS", broker.address()),
            ("REFERRAL_LISTEN", format!("127.0.0.1:{ingest_port}")),
            ("REFERRAL_RATE_LIMIT_PER_IP", "0".to_owned()),
            ("REFERRAL_RATE_LIMIT_PER_CODE", "0".to_owned()),
            ("REFERRAL_RATE_LIMIT_GLOBAL", "0".to_owned()),
            ("REFERRAL_MAX_CONNECTIONS_PER_CLIENT", "0".to_owned()),
        ],
        logs,
    )?;
    wait_http_ok(&mut ingest, ingest_port, "/readyz", Duration::from_secs(30))?;

    let address = SocketAddr::from(([127, 0, 0, 1], ingest_port));
    let probes = Arc::new(Mutex::new(Probes::new(options.probe_mentors)));
    let runtime = runtime()?;

    // Warm-up at the same rate (every code, probes not timed) until the edge resolves them,
    // then wait until everything is applied, so the measured load starts on a steady state.
    eprintln!("freshness: warming up for {WARM_UP:?}");
    let warm_up = Load::new(options, address, WARM_UP, 0);
    let warmed = runtime.block_on(drive(warm_up, probes.clone()));
    if warmed.created == 0 {
        return Err(format!(
            "no click was accepted during the warm-up: {}; referral-ingest's log:\n{}",
            warmed.failures(),
            ingest.log_tail()
        ));
    }
    let end = log_end(&broker.address(), options.common.partitions)?;
    wait_caught_up(&clickhouse, &mut aggregator, end, Duration::from_secs(60))?;

    eprintln!(
        "freshness: {} clicks/s for {} s over {} connections, 1 probe in {}",
        thousands(options.rate),
        options.seconds,
        options.connections,
        options.probe_every
    );
    lock(&probes).recording = true;
    let window = [
        ("referral-ingest", pid_text(ingest.pid())),
        ("aggregator", pid_text(aggregator.pid())),
        ("ClickHouse", pid_text(clickhouse.pid())),
        ("tansu", pid_text(broker.pid())),
        ("load generator (this process)", "self".to_owned()),
    ];
    let load_done = AtomicBool::new(false);
    let (load, cpu, poller) = thread::scope(|scope| {
        let poller = scope.spawn(|| {
            poll_probes(
                &clickhouse,
                &probes,
                &load_done,
                options.poll(),
                options.probe_mentors,
            )
        });
        let cpu = CpuWindow::start(&window);
        let load = runtime.block_on(drive(
            Load::new(
                options,
                address,
                Duration::from_secs(options.seconds),
                1 << 22,
            ),
            probes.clone(),
        ));
        let cpu = cpu.finish();
        load_done.store(true, Ordering::Relaxed);
        let poller = poller.join().unwrap_or_default();
        (load, cpu, poller)
    });
    aggregator.check_alive()?;
    ingest.check_alive()?;
    eprintln!(
        "freshness: {} POSTs answered 201 in {:.1} s",
        thousands(load.created),
        load.elapsed.as_secs_f64()
    );

    let end = log_end(&broker.address(), options.common.partitions)?;
    wait_caught_up(&clickhouse, &mut aggregator, end, Duration::from_secs(60))?;
    let flush = FlushStats::scrape(aggregator_port);
    let (probes_sent, freshness) = {
        let probes = lock(&probes);
        (probes.recorded, probes.freshness.clone())
    };
    let report = FreshnessReport {
        fetch_latency,
        warm_up_created: warmed.created,
        probes_sent,
        freshness,
        poller,
        flush,
        daily_clicks: daily_clicks(&clickhouse)?,
        attributions: attributions(&clickhouse)?,
        created_total: warmed.created + load.created,
        cpu,
        load,
    };
    ingest.stop();
    aggregator.stop();
    Ok(report)
}

/// Produce -> consume latencies of single messages through the broker, for a consumer
/// with `fetch.wait.max.ms = wait_ms`: 1,000 messages/s for 3 s, each carrying its send time.
/// Explains the first part of freshness: how long a click waits to reach the aggregator.
fn fetch_latency_through(brokers: &str, wait_ms: u32) -> Result<Vec<Duration>> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .map_err(|error| format!("cannot create a Kafka admin client: {error}"))?;
    let created = runtime()?.block_on(admin.create_topics(
        &[NewTopic::new(
            FETCH_LATENCY_TOPIC,
            1,
            TopicReplication::Fixed(1),
        )],
        &AdminOptions::new(),
    ));
    match created.as_deref() {
        Ok([Ok(_)]) | Ok([Err((_, RDKafkaErrorCode::TopicAlreadyExists))]) => {}
        other => return Err(format!("cannot create {FETCH_LATENCY_TOPIC}: {other:?}")),
    }
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "0")
        .create()
        .map_err(|error| format!("cannot create a producer: {error}"))?;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "bench-aggregator-fetch-latency")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", wait_ms.to_string())
        .create()
        .map_err(|error| format!("cannot create a consumer: {error}"))?;
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(FETCH_LATENCY_TOPIC, 0, Offset::End)
        .map_err(|error| format!("cannot assign {FETCH_LATENCY_TOPIC}: {error}"))?;
    consumer
        .assign(&assignment)
        .map_err(|error| format!("cannot assign {FETCH_LATENCY_TOPIC}: {error}"))?;
    // Let the consumer resolve its offset and start fetching.
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(1) {
        let _ = consumer.poll(Duration::from_millis(50));
    }
    let origin = Instant::now();
    let mut latencies = Vec::new();
    let mut sent = 0u64;
    while origin.elapsed() < Duration::from_secs(3) {
        if origin.elapsed() >= Duration::from_millis(sent) {
            let payload = (origin.elapsed().as_micros() as u64).to_string();
            producer
                .send(BaseRecord::<(), String>::to(FETCH_LATENCY_TOPIC).payload(&payload))
                .map_err(|(error, _)| format!("cannot produce: {error}"))?;
            sent += 1;
        }
        producer.poll(Duration::ZERO);
        if let Some(Ok(message)) = consumer.poll(Duration::from_micros(500)) {
            let sent_us = message
                .payload()
                .and_then(|bytes| std::str::from_utf8(bytes).ok())
                .and_then(|text| text.parse::<u64>().ok());
            if let Some(sent_us) = sent_us {
                let now_us = origin.elapsed().as_micros() as u64;
                latencies.push(Duration::from_micros(now_us.saturating_sub(sent_us)));
            }
        }
    }
    if latencies.is_empty() {
        return Err(format!(
            "no message came back through {FETCH_LATENCY_TOPIC} (fetch.wait.max.ms={wait_ms})"
        ));
    }
    Ok(latencies)
}
