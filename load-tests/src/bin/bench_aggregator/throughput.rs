//! Phase 1, throughput: N click events pre-loaded onto the topic, then
//! `referral-aggregator run` started and its stored checkpoints polled until they reach the
//! log end; rows/s from the first stored checkpoint (and from the start), exactness checked.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use referral_load_tests::bench::{
    CpuWindow, FlushStats, Profile, ProfileSummary, pid_text, runtime, thousands,
};
use referral_load_tests::services::{ClickHouseServer, TansuBroker};
use referral_schemas::Timestamp;
use referral_schemas::id::new_attribution_id;
use referral_schemas::messages::{ClickEvent, LogEvent, LogMessage, SCHEMA_VERSION};
use tempfile::TempDir;

use crate::load::{BROWSER, visitor_ip};
use crate::options::Options;
use crate::stack::{
    attributions, daily_clicks, log_end, migrate, start_aggregator, wait_caught_up,
};
use crate::{Result, TOPIC};

/// Delivery reports the pre-load producer waits for at most at once.
const PRELOAD_IN_FLIGHT: usize = 200_000;
/// The profile of ClickHouse and the aggregator: from this long after the aggregator's
/// start, for this long (the catch-up takes 5-8 s at 1,000,000 clicks).
pub const PROFILE_AFTER: Duration = Duration::from_secs(1);
pub const PROFILE_FOR: Duration = Duration::from_secs(4);
/// How long the aggregator may take to apply the pre-loaded log.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(240);

pub struct ThroughputReport {
    pub clicks: u64,
    pub preload: Duration,
    pub to_first_flush: Duration,
    pub first_rows: i64,
    pub catch_up: Duration,
    pub rows_per_second: f64,
    pub rows_per_second_with_start: f64,
    pub flush: FlushStats,
    pub attributions: i64,
    pub daily_clicks: i64,
    pub cpu: Vec<(&'static str, f64)>,
    /// Where ClickHouse and the aggregator spent their CPU while catching up.
    pub profiles: Vec<ProfileSummary>,
}

/// One run of the phase, on fresh services; `profile`: with ClickHouse's and the
/// aggregator's profile over [`PROFILE_FOR`] of the catch-up.
pub fn run(options: &Options, logs: &TempDir, profile: bool) -> Result<ThroughputReport> {
    eprintln!("throughput: starting tansu and ClickHouse 18.16");
    let broker = TansuBroker::start();
    let clickhouse = ClickHouseServer::start();
    migrate(options, &broker, &clickhouse, logs)?;

    eprintln!(
        "throughput: producing {} clicks to {TOPIC} ({} partitions)",
        thousands(options.clicks),
        options.common.partitions
    );
    let started = Instant::now();
    let ends = runtime()?.block_on(preload(&broker.address(), options))?;
    let preload_time = started.elapsed();
    // The log end from the delivery reports (tansu's reported high watermark cannot be
    // trusted, see `log_end`), checked against what the broker serves.
    let end: i64 = ends.values().sum();
    let served = log_end(&broker.address(), options.common.partitions)?;
    if end != options.clicks as i64 || served != end {
        return Err(format!(
            "{} clicks produced, but the delivery reports end at {end} and the topic serves \
             {served} messages",
            options.clicks
        ));
    }
    eprintln!(
        "throughput: produced in {:.1} s; starting referral-aggregator run ({})",
        preload_time.as_secs_f64(),
        options.batch_flags()
    );

    let mut cpu = CpuWindow::start(&[
        ("ClickHouse", pid_text(clickhouse.pid())),
        ("tansu", pid_text(broker.pid())),
    ]);
    let spawned = Instant::now();
    let batch = [
        (
            "REFERRAL_BATCH_MAX_ROWS",
            options.batch_max_rows.to_string(),
        ),
        (
            "REFERRAL_BATCH_MAX_BYTES",
            options.batch_max_bytes.to_string(),
        ),
        ("REFERRAL_BATCH_MAX_WAIT", options.batch_max_wait.clone()),
    ];
    let (mut aggregator, port) = start_aggregator(options, &broker, &clickhouse, &batch, logs)?;
    cpu.add_started("aggregator", pid_text(aggregator.pid()));
    // `perf record -p` follows only the threads that exist when it attaches: the
    // aggregator's consumer and flush threads start in its first moments.
    let profiler = profile.then(|| {
        let processes = [
            ("ClickHouse", pid_text(clickhouse.pid())),
            ("aggregator", pid_text(aggregator.pid())),
        ];
        let dir = logs.path().to_path_buf();
        std::thread::spawn(move || {
            std::thread::sleep(PROFILE_AFTER);
            let started = processes
                .iter()
                .map(|(name, pid)| Profile::start(name, pid, PROFILE_FOR, &dir))
                .collect();
            let mut profiles = Profile::attached(started);
            for profile in &mut profiles {
                profile.wait();
            }
            profiles
        })
    });
    let ((first_at, first_rows), done_at) =
        wait_caught_up(&clickhouse, &mut aggregator, end, CATCH_UP_TIMEOUT)?;
    let cpu = cpu.finish();
    let flush = FlushStats::scrape(port);
    let profiles = match profiler.map(std::thread::JoinHandle::join) {
        Some(Ok(profiles)) => profiles
            .into_iter()
            .map(|profile| profile.summarize(6))
            .collect(),
        Some(Err(_)) => return Err("the profiler thread panicked".to_owned()),
        None => Vec::new(),
    };
    aggregator.stop();

    let catch_up = done_at.duration_since(first_at);
    let report = ThroughputReport {
        clicks: options.clicks,
        preload: preload_time,
        to_first_flush: first_at.duration_since(spawned),
        first_rows,
        catch_up,
        rows_per_second: (end - first_rows) as f64 / catch_up.as_secs_f64().max(1e-9),
        rows_per_second_with_start: end as f64
            / done_at.duration_since(spawned).as_secs_f64().max(1e-9),
        flush,
        attributions: attributions(&clickhouse)?,
        daily_clicks: daily_clicks(&clickhouse)?,
        cpu,
        profiles,
    };
    eprintln!(
        "throughput: {:.0} rows/s after the first flush, {:.0} rows/s from the start",
        report.rows_per_second, report.rows_per_second_with_start
    );
    Ok(report)
}

/// Produces `options.clicks` click events as the edge would publish them (same JSON, key =
/// mentor id, same headers), with a producer tuned for bulk: lz4, large batches, linger.
/// Returns the next offset of each partition, from the delivery reports.
async fn preload(brokers: &str, options: &Options) -> Result<BTreeMap<i32, i64>> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("client.id", "bench-aggregator-preload")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "2097151")
        .set("message.timeout.ms", "120000");
    let producer: FutureProducer = config
        .create()
        .map_err(|error| format!("cannot create the producer: {error}"))?;
    let version = SCHEMA_VERSION.to_string();
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "kind",
            value: Some("click"),
        })
        .insert(Header {
            key: "schema_version",
            value: Some(version.as_str()),
        });
    let now = Timestamp::now().as_millis();
    let mut in_flight: VecDeque<DeliveryFuture> = VecDeque::with_capacity(PRELOAD_IN_FLIGHT);
    let mut ends = BTreeMap::new();
    for n in 0..options.clicks {
        let mentor = format!("usr_bench_{}", n % options.mentors);
        let click = ClickEvent {
            attribution_id: new_attribution_id(),
            code: format!("BENCH-{}", n % options.mentors),
            mentor_id: mentor.clone(),
            // A visitor of its own with a browser's agent: counted, never a repeat or a bot.
            ip_address: visitor_ip(n),
            user_agent: Some(BROWSER.into()),
            referrer_url: None,
            // A backlog of the last hour: a few hourly and daily buckets per mentor.
            occurred_at: Timestamp::from_millis(now - ((n * 7_919) % 3_600_000) as i64),
            received_at: Timestamp::from_millis(now),
        };
        let payload = LogMessage::new(LogEvent::Click(click))
            .to_json()
            .map_err(|error| format!("cannot encode a click: {error}"))?;
        loop {
            let record: FutureRecord<'_, str, Vec<u8>> = FutureRecord::to(TOPIC)
                .key(mentor.as_str())
                .payload(&payload)
                .headers(headers.clone());
            match producer.send_result(record) {
                Ok(delivery) => {
                    in_flight.push_back(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    match in_flight.pop_front() {
                        Some(delivery) => delivered(delivery, &mut ends).await?,
                        None => tokio::time::sleep(Duration::from_millis(5)).await,
                    }
                }
                Err((error, _)) => return Err(format!("cannot produce a click: {error}")),
            }
        }
        if in_flight.len() >= PRELOAD_IN_FLIGHT
            && let Some(delivery) = in_flight.pop_front()
        {
            delivered(delivery, &mut ends).await?;
        }
    }
    while let Some(delivery) = in_flight.pop_front() {
        delivered(delivery, &mut ends).await?;
    }
    Ok(ends)
}

async fn delivered(delivery: DeliveryFuture, ends: &mut BTreeMap<i32, i64>) -> Result<()> {
    match delivery.await {
        Ok(Ok(delivery)) => {
            let end = ends.entry(delivery.partition).or_insert(0);
            *end = (*end).max(delivery.offset + 1);
            Ok(())
        }
        Ok(Err((error, _))) => Err(format!("the broker did not take a click: {error}")),
        Err(_) => Err("the producer closed with clicks in flight".to_owned()),
    }
}
