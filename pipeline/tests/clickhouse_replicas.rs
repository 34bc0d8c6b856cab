//! The production store on a replicated ClickHouse (`--clickhouse-cluster`): two 18.16
//! replicas and a ZooKeeper, started by the test, behind one address (a TCP balancer that
//! connects to whichever replica is up, as a Kubernetes Service would). Migrations run
//! `ON CLUSTER` with Replicated engines; the aggregator writes with `insert_quorum = 2`
//! and reads its checkpoints with sequential consistency. Clicks flow through Kafka while
//! one replica is killed and restarted, then the other: every acknowledged click is stored
//! once, the totals are exact, both replicas hold the same rows at the end, and the API's
//! reads through the one address work with either replica down.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use referral_load_tests::services::{ClickHouseReplicas, TansuBroker};
use referral_pipeline::Aggregator;
use referral_pipeline::config::{ConsumerArgs, PipelineArgs};
use referral_pipeline::consumer::fault::FaultPoint;
use referral_pipeline::kafka::admin;
use referral_pipeline::kafka::producer::KafkaLog;
use referral_pipeline::log::EventLog;
use referral_pipeline::store::AttributionReader;
use referral_pipeline::store::clickhouse::migrate;
use referral_pipeline::store::clickhouse::reader::ClickHouseReader;
use referral_schemas::Timestamp;
use referral_schemas::id::new_attribution_id;
use referral_schemas::messages::{ClickEvent, LogEvent};
use referral_schemas::query::HourRange;
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    pipeline: PipelineArgs,
    #[command(flatten)]
    consumer: ConsumerArgs,
}

/// One address for every replica: each connection goes to the first replica (starting
/// with the next one in turn) that accepts it.
async fn balance(backends: Vec<u16>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let turn = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let backends = backends.clone();
            let first = turn.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                for index in 0..backends.len() {
                    let port = backends[(first + index) % backends.len()];
                    if let Ok(mut server) = TcpStream::connect(("127.0.0.1", port)).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        return;
                    }
                }
            });
        }
    });
    port
}

fn click(number: usize) -> LogEvent {
    let now = Timestamp::now();
    LogEvent::Click(ClickEvent {
        attribution_id: new_attribution_id(),
        code: "REPL-0001".into(),
        mentor_id: format!("mentor-{}", number % 7),
        ip_address: format!(
            "10.{}.{}.{}",
            number / 65_536 % 256,
            number / 256 % 256,
            number % 256
        ),
        user_agent: Some("Mozilla/5.0 (X11; Linux x86_64) Firefox/121.0".into()),
        referrer_url: None,
        occurred_at: now,
        received_at: now,
    })
}

fn aggregator_flags(brokers: &str, url: &str) -> Vec<String> {
    [
        "referral-aggregator",
        "--kafka-brokers",
        brokers,
        "--clickhouse-url",
        url,
        "--clickhouse-cluster",
        ClickHouseReplicas::CLUSTER,
        "--clickhouse-insert-timeout",
        "5s",
        "--kafka-session-timeout",
        "6s",
        "--batch-max-wait",
        "100ms",
        "--drain-timeout",
        "3s",
        "--no-migrate",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Until every replica of the totals is writable and sees the other one active.
async fn wait_active(replicas: &ClickHouseReplicas) {
    let deadline = Instant::now() + Duration::from_secs(60);
    for index in 0..replicas.replicas.len() {
        loop {
            let state = replicas.replicas[index]
                .try_query(
                    "SELECT is_readonly, active_replicas FROM system.replicas \
                     WHERE database = 'referral' AND table = 'mentor_totals'",
                )
                .unwrap_or_default();
            if state.trim() == "0\t2" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "replica {index} not active: {state:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn scalar(replicas: &ClickHouseReplicas, index: usize, sql: &str) -> String {
    replicas.replicas[index]
        .query(&format!("{sql} SETTINGS select_sequential_consistency = 0"))
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_fail_over_with_every_click_stored_once_and_end_equal() {
    let mut replicas = ClickHouseReplicas::start(2);
    let service = balance(
        replicas
            .replicas
            .iter()
            .map(|replica| replica.http_port())
            .collect(),
    )
    .await;
    let broker = TansuBroker::start();
    let url = format!("http://127.0.0.1:{service}");
    let brokers = broker.address();
    let flags = Flags::try_parse_from(aggregator_flags(&brokers, &url)).unwrap();
    let settings = flags
        .pipeline
        .clickhouse_settings(Duration::from_secs(30))
        .unwrap();
    assert_eq!(
        settings.insert_quorum, 2,
        "a cluster writes to two replicas by default"
    );
    if let Err(error) = migrate::migrate(&settings).await {
        panic!(
            "migrations on the cluster: {error}\nreplica 0:\n{}\nreplica 1:\n{}",
            replicas.replicas[0].log_tail(30),
            replicas.replicas[1].log_tail(30)
        );
    }
    // Every table is replicated on both.
    for index in 0..2 {
        let tables = scalar(
            &replicas,
            index,
            "SELECT count() FROM system.tables WHERE database = 'referral' \
             AND engine LIKE 'Replicated%'",
        );
        assert!(
            tables.parse::<u32>().unwrap() >= 12,
            "replica {index}: {tables} replicated tables"
        );
    }
    let kafka = flags.pipeline.kafka_settings("replicas-test").unwrap();
    admin::ensure_topics(&kafka, 3, 1).await.unwrap();
    admin::ensure_topic(&kafka, "referral-events-dead-letter", 1, 1)
        .await
        .unwrap();
    let aggregator = Aggregator::start(&flags.pipeline, &flags.consumer, FaultPoint::None)
        .await
        .unwrap();
    let log = Arc::new(KafkaLog::connect(&kafka).await.unwrap());

    // Clicks flow (~150/s) the whole time; each acknowledged one is remembered.
    let flowing = Arc::new(AtomicBool::new(true));
    let producer = tokio::spawn({
        let log = log.clone();
        let flowing = flowing.clone();
        async move {
            let mut acknowledged = HashSet::new();
            let mut number = 0;
            while flowing.load(Ordering::Relaxed) {
                let event = click(number);
                number += 1;
                let LogEvent::Click(ref click) = event else {
                    unreachable!()
                };
                let id = click.attribution_id.clone();
                if log.publish(event).await.is_ok() {
                    acknowledged.insert(id);
                }
                tokio::time::sleep(Duration::from_millis(6)).await;
            }
            acknowledged
        }
    });
    // 1. Each replica killed and restarted in turn.
    for index in [0, 1] {
        tokio::time::sleep(Duration::from_secs(4)).await;
        replicas.replicas[index].stop();
        tokio::time::sleep(Duration::from_secs(5)).await;
        replicas.replicas[index].restart();
        wait_active(&replicas).await;
    }
    // 2. A commit stranded on one replica: replica 1 stops fetching the totals, an
    //    aggregator writing to replica 0 alone commits a flush there (its quorum pending),
    //    replica 0 dies, and another aggregator (other batches) takes over on replica 1.
    //    Resuming from a checkpoint without the stranded flush would apply its clicks again
    //    in other batches, and count them twice once it arrives: the checkpoint read waits
    //    for it (the quorum barrier).
    aggregator.shutdown().await;
    replicas.replicas[1].query("SYSTEM STOP FETCHES referral.mentor_totals");
    let direct =
        Flags::try_parse_from(aggregator_flags(&brokers, &replicas.replicas[0].http_url()))
            .unwrap();
    let stranding = Aggregator::start(&direct.pipeline, &direct.consumer, FaultPoint::None)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while scalar(
        &replicas,
        0,
        "SELECT count() FROM system.zookeeper \
         WHERE path = '/clickhouse/tables/01/referral/mentor_totals/quorum' AND name = 'status'",
    ) != "1"
    {
        assert!(
            Instant::now() < deadline,
            "no commit was left waiting for its quorum"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    replicas.replicas[0].stop();
    stranding.shutdown().await;
    let aggregator = Aggregator::start(&flags.pipeline, &flags.consumer, FaultPoint::None)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    replicas.replicas[1].query("SYSTEM START FETCHES referral.mentor_totals");
    replicas.replicas[0].restart();
    wait_active(&replicas).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    flowing.store(false, Ordering::Relaxed);
    let acknowledged = producer.await.unwrap();
    assert!(
        acknowledged.len() > 1_000,
        "only {} clicks acknowledged",
        acknowledged.len()
    );

    // Both replicas catch up with the log: the checkpoints sum to every acknowledged click.
    let expected = acknowledged.len();
    let deadline = Instant::now() + Duration::from_secs(120);
    for index in 0..2 {
        loop {
            replicas.replicas[index].query("SYSTEM SYNC REPLICA referral.mentor_totals");
            let stored = scalar(
                &replicas,
                index,
                "SELECT sum(next_offset) FROM referral.mentor_totals WHERE grain = 'checkpoint'",
            );
            if stored.parse::<usize>().unwrap_or(0) >= expected {
                // Never past it: a checkpoint moved twice for the same clicks.
                assert_eq!(stored, expected.to_string(), "replica {index}: checkpoints");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "replica {index} holds checkpoints for {stored} of {expected} clicks"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    aggregator.shutdown().await;
    for index in 0..2 {
        for table in ["attributions", "mentor_totals"] {
            replicas.replicas[index].query(&format!("SYSTEM SYNC REPLICA referral.{table}"));
        }
        // Every acknowledged click, nothing else (counted once: the totals below).
        let stored: HashSet<String> = scalar(
            &replicas,
            index,
            "SELECT id FROM referral.attributions FINAL",
        )
        .lines()
        .map(str::to_owned)
        .collect();
        assert_eq!(
            stored, acknowledged,
            "replica {index}: stored clicks differ from acknowledged ones"
        );
        // Totals exact: every click counted once, by hour and by day.
        for grain in ["hour", "day"] {
            let counted = scalar(
                &replicas,
                index,
                &format!("SELECT sum(clicks) FROM referral.mentor_totals WHERE grain = '{grain}'"),
            );
            assert_eq!(
                counted,
                expected.to_string(),
                "replica {index}: {grain} totals"
            );
        }
    }
    // The API's reads work against whichever replica the Service reaches: with replica 1
    // down, every mentor's totals through the balancer add up to every click.
    replicas.replicas[1].stop();
    let reader = ClickHouseReader::new(&settings);
    let mut read = 0;
    for mentor in 0..7 {
        let totals = reader
            .mentor_totals(
                &format!("mentor-{mentor}"),
                HourRange {
                    from_hour: None,
                    to_hour: None,
                },
            )
            .await
            .expect("a read through the balancer with one replica down");
        read += totals.clicks;
    }
    assert_eq!(read, expected as u64, "totals read through the Service");
    replicas.replicas[1].restart();
    // Both replicas hold the same totals, row for row.
    let totals = "SELECT mentor_id, grain, bucket, sum(clicks), sum(conversions), sum(next_offset) \
                  FROM referral.mentor_totals WHERE grain != 'flush' \
                  GROUP BY mentor_id, grain, bucket ORDER BY mentor_id, grain, bucket";
    assert_eq!(scalar(&replicas, 0, totals), scalar(&replicas, 1, totals));
}
