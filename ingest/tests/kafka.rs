//! `referral-ingest` against a real Kafka-protocol broker (tansu, started here per test):
//! every acknowledged click is on the topic exactly once with its key, headers and schema;
//! refused requests never reach Kafka; a stopped broker gives 503 within the timeout and
//! `/readyz` false, then 201 again once it is back; codes published on the compacted topic
//! are honoured within 5 s; one flooding IP is limited while another is served.

mod support;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::producer::FutureProducer;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use referral_pipeline::kafka::{KafkaSettings, admin, codes, producer};
use referral_schemas::messages::{LogEvent, LogMessage};
use referral_schemas::{ReferralCode, Timestamp};
use serde_json::Value;
use support::{ChildGuard, free_address, free_port};

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A broker restarted on its port must find the port free: a test that picks ports while
/// another one's broker is down could take it (and the restarted test would then talk to
/// the wrong broker). The restart test runs alone; the others share.
static BROKER_PORTS: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// A tansu broker. `durable` keeps its data in `dir` (SQLite); otherwise it is in memory.
///
/// tansu 0.6.0's SQLite engine panics on the first produce of an idempotent producer that
/// outlived a broker restart (`idempotent_message_check`: "more or less than one row") and
/// then refuses everything, so the restart test uses the memory engine: a restart there is a
/// broker that lost its state, which the edge must survive too.
struct Broker {
    process: Option<ChildGuard>,
    port: u16,
    dir: tempfile::TempDir,
    durable: bool,
}

impl Broker {
    async fn start() -> Self {
        Self::start_with(true).await
    }

    async fn start_with(durable: bool) -> Self {
        let mut broker = Self {
            process: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            durable,
        };
        broker.restart().await;
        broker
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    async fn restart(&mut self) {
        let url = format!("tcp://{}", self.address());
        let child = Command::new("tansu")
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args([
                "--storage-engine",
                if self.durable {
                    "sqlite://tansu.db"
                } else {
                    "memory://tansu/"
                },
            ])
            .current_dir(self.dir.path())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu is not installed: run ./scripts/test.sh, which installs it");
        self.process = Some(ChildGuard(child));
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(self.address())
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "tansu did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn stop(&mut self) {
        self.process = None;
    }
}

fn settings(broker: &Broker, suffix: &str) -> KafkaSettings {
    KafkaSettings {
        brokers: broker.address(),
        topic: format!("referral-events-{suffix}"),
        codes_topic: format!("referral-codes-{suffix}"),
        message_timeout: Duration::from_secs(3),
        linger: Duration::from_millis(5),
        queue_max_messages: 10_000,
        client_id: "referral-ingest-test".into(),
        security: Default::default(),
    }
}

async fn assign(settings: &KafkaSettings, code: &str, mentor: &str) {
    let producer: FutureProducer = producer::producer_config(settings).create().unwrap();
    let now = Timestamp::now();
    let record = ReferralCode {
        code: code.into(),
        mentor_id: mentor.into(),
        destination_url: None,
        created_at: now,
        updated_at: now,
    };
    codes::publish_assignment(&producer, &settings.codes_topic, &record)
        .await
        .unwrap();
}

async fn retire(settings: &KafkaSettings, code: &str) {
    let producer: FutureProducer = producer::producer_config(settings).create().unwrap();
    codes::publish_retirement(&producer, &settings.codes_topic, code)
        .await
        .unwrap();
}

/// The edge binary in Kafka mode.
struct Edge {
    _process: ChildGuard,
    base: String,
    client: HttpClient,
}

impl Edge {
    async fn start(settings: &KafkaSettings, extra_env: &[(&str, &str)]) -> Self {
        let address = free_address();
        let child = Command::new(env!("CARGO_BIN_EXE_referral-ingest"))
            .env("REFERRAL_LISTEN", &address)
            .env("REFERRAL_KAFKA_BROKERS", &settings.brokers)
            .env("REFERRAL_KAFKA_TOPIC", &settings.topic)
            .env("REFERRAL_KAFKA_CODES_TOPIC", &settings.codes_topic)
            .env("REFERRAL_KAFKA_MESSAGE_TIMEOUT", "3s")
            .env("REFERRAL_ACK_TIMEOUT", "2s")
            .env("RUST_LOG", "warn")
            .envs(extra_env.iter().copied())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let edge = Self {
            _process: ChildGuard(child),
            base: format!("http://{address}"),
            client: Client::builder(TokioExecutor::new()).build_http(),
        };
        edge.wait_ready(true, Duration::from_secs(30)).await;
        edge
    }

    async fn wait_ready(&self, ready: bool, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let status = self
                .call(Method::GET, "/readyz", &[], "")
                .await
                .map(|answer| answer.0);
            if (status == Ok(StatusCode::OK)) == ready {
                return;
            }
            assert!(Instant::now() < deadline, "/readyz did not become {ready}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<(StatusCode, http::HeaderMap, Value), String> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(Bytes::from(body.to_owned())))
            .map_err(|e| e.to_string())?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| e.to_string())?;
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok((
            parts.status,
            parts.headers,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    /// The edge's Prometheus text.
    async fn metrics(&self) -> String {
        let response = self
            .client
            .request(
                Request::get(format!("{}/metrics", self.base))
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await
            .unwrap();
        String::from_utf8(
            response
                .into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
        .unwrap()
    }

    async fn click(
        &self,
        body: &str,
        extra: &[(&str, &str)],
    ) -> (StatusCode, http::HeaderMap, Value) {
        let mut headers = vec![("content-type", "application/json")];
        headers.extend_from_slice(extra);
        self.call(
            Method::POST,
            "/api/v1/referral-attributions",
            &headers,
            body,
        )
        .await
        .unwrap()
    }
}

/// Every message on `topic`, read from the beginning to the current end.
async fn read_topic(settings: &KafkaSettings) -> Vec<(String, HashMap<String, String>, Vec<u8>)> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &settings.brokers)
        .set("group.id", "referral-test-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(&settings.topic), Duration::from_secs(5))
        .unwrap();
    let partitions: Vec<i32> = metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| p.id())
        .collect();
    let mut assignment = TopicPartitionList::new();
    for partition in &partitions {
        assignment
            .add_partition_offset(&settings.topic, *partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut at_end = std::collections::HashSet::new();
    let mut messages = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while at_end.len() < partitions.len() {
        assert!(
            Instant::now() < deadline,
            "could not read the topic to its end"
        );
        match tokio::time::timeout(Duration::from_secs(5), consumer.recv()).await {
            Ok(Ok(message)) => {
                at_end.remove(&message.partition());
                let key = String::from_utf8(message.key().unwrap_or_default().to_vec()).unwrap();
                let headers = message
                    .headers()
                    .map(|headers| {
                        headers
                            .iter()
                            .map(|h| {
                                (
                                    h.key.to_owned(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                messages.push((key, headers, message.payload().unwrap_or_default().to_vec()));
            }
            Ok(Err(KafkaError::PartitionEOF(partition))) => {
                at_end.insert(partition);
            }
            Ok(Err(error)) => panic!("consumer error: {error}"),
            Err(_) => panic!("no message or end of partition within 5 s"),
        }
    }
    messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_clicks_are_on_the_topic_exactly_once_and_refused_ones_never() {
    let _shared = BROKER_PORTS.read().await;
    let broker = Broker::start().await;
    let settings = settings(&broker, "once");
    admin::ensure_topics(&settings, 3, 1).await.unwrap();
    assign(&settings, "JAN-1", "usr_1").await;
    assign(&settings, "FEB-2", "usr_2").await;
    let edge = Edge::start(&settings, &[]).await;

    let mut accepted = HashMap::new();
    for n in 0..30 {
        let code = if n % 3 == 0 { "feb-2" } else { "JAN-1" };
        let (status, _, body) = edge
            .click(
                &format!(r#"{{"code":"{code}","user_agent":"ua-{n}"}}"#),
                &[],
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        accepted.insert(body["id"].as_str().unwrap().to_owned(), body);
    }
    // Refused requests: none of them may reach the topic.
    for (content_type, body) in [
        ("application/json", r#"{"code":"NOPE-1"}"#),
        ("application/json", r#"{"code":"JAN-1","ip_address":"x"}"#),
        ("application/json", "{"),
        ("text/plain", r#"{"code":"JAN-1"}"#),
    ] {
        let (status, _, _) = edge
            .call(
                Method::POST,
                "/api/v1/referral-attributions",
                &[("content-type", content_type)],
                body,
            )
            .await
            .unwrap();
        assert!(status.is_client_error(), "{body}: {status}");
    }

    let messages = read_topic(&settings).await;
    assert_eq!(
        messages.len(),
        accepted.len(),
        "exactly the accepted clicks, each once"
    );
    let mut seen = std::collections::HashSet::new();
    for (key, headers, payload) in messages {
        let message = LogMessage::from_json(&payload).unwrap();
        let LogEvent::Click(click) = message.event else {
            panic!("not a click: {message:?}")
        };
        assert!(
            seen.insert(click.attribution_id.clone()),
            "{} twice",
            click.attribution_id
        );
        let answered = &accepted[&click.attribution_id];
        assert_eq!(key, click.mentor_id, "keyed by mentor");
        assert_eq!(answered["mentor_id"], click.mentor_id.as_str());
        assert_eq!(answered["code"], click.code.as_str());
        assert_eq!(answered["user_agent"], click.user_agent.as_deref().unwrap());
        assert_eq!(
            answered["occurred_at"],
            click.occurred_at.to_string().as_str()
        );
        assert_eq!(headers.get("kind").map(String::as_str), Some("click"));
        assert_eq!(headers.get("schema_version").map(String::as_str), Some("1"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_broker_gives_503_within_the_timeout_then_201_after_restart() {
    // Alone: its broker comes back on the same port, which no other test may take meanwhile.
    let _alone = BROKER_PORTS.write().await;
    let mut broker = Broker::start_with(false).await;
    let settings = settings(&broker, "restart");
    admin::ensure_topics(&settings, 1, 1).await.unwrap();
    assign(&settings, "JAN-1", "usr_1").await;
    let edge = Edge::start(&settings, &[]).await;
    assert_eq!(
        edge.click(r#"{"code":"JAN-1"}"#, &[]).await.0,
        StatusCode::CREATED
    );

    broker.stop();
    let started = Instant::now();
    let (status, headers, body) = edge.click(r#"{"code":"JAN-1"}"#, &[]).await;
    let waited = started.elapsed();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(headers.contains_key("retry-after"));
    assert!(
        waited < Duration::from_millis(3500),
        "answered after {waited:?}, past the 2 s ack timeout"
    );
    edge.wait_ready(false, Duration::from_secs(10)).await;

    broker.restart().await;
    // The memory engine came back empty: recreate the topics, as an operator would.
    admin::ensure_topics(&settings, 1, 1).await.unwrap();
    edge.wait_ready(true, Duration::from_secs(30)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // A connection the edge closed while the broker was away is a retry, not a failure.
        let Ok((status, _, body)) = edge
            .call(
                Method::POST,
                "/api/v1/referral-attributions",
                &[("content-type", "application/json")],
                r#"{"code":"JAN-1"}"#,
            )
            .await
        else {
            assert!(
                Instant::now() < deadline,
                "no 201 after the broker came back"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        if status == StatusCode::CREATED {
            let messages = read_topic(&settings).await;
            let id = body["id"].as_str().unwrap();
            assert!(
                messages
                    .iter()
                    .any(|(_, _, payload)| String::from_utf8_lossy(payload).contains(id)),
                "the 201 click is not on the topic"
            );
            break;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(
            Instant::now() < deadline,
            "no 201 after the broker came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codes_published_on_the_topic_are_honoured_within_five_seconds() {
    let _shared = BROKER_PORTS.read().await;
    let broker = Broker::start().await;
    let settings = settings(&broker, "codes");
    admin::ensure_topics(&settings, 1, 1).await.unwrap();
    assign(&settings, "JAN-1", "usr_1").await;
    let edge = Edge::start(&settings, &[]).await;
    assert_eq!(
        edge.click(r#"{"code":"NEW-1"}"#, &[]).await.2["error"]["code"],
        "unknown_code"
    );

    for (action, expect_mentor) in [
        ("create", Some("usr_2")),
        ("reassign", Some("usr_3")),
        ("retire", None),
    ] {
        match action {
            "create" => assign(&settings, "NEW-1", "usr_2").await,
            "reassign" => assign(&settings, "NEW-1", "usr_3").await,
            _ => retire(&settings, "NEW-1").await,
        }
        let started = Instant::now();
        loop {
            let (status, _, body) = edge.click(r#"{"code":"NEW-1"}"#, &[]).await;
            let mentor = (status == StatusCode::CREATED)
                .then(|| body["mentor_id"].as_str().unwrap().to_owned());
            if mentor.as_deref() == expect_mentor {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{action} not honoured within 5 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// An idle codes topic gives the follower no new end-of-partition event, so without the
/// freshness probe each unknown code would hold its request for the whole miss wait (500 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_codes_are_refused_after_a_probe_not_the_whole_miss_wait() {
    let _shared = BROKER_PORTS.read().await;
    let broker = Broker::start().await;
    let settings = settings(&broker, "probe");
    admin::ensure_topics(&settings, 1, 1).await.unwrap();
    assign(&settings, "JAN-1", "usr_1").await;
    let edge = Edge::start(&settings, &[]).await;
    let started = Instant::now();
    for n in 0..20 {
        let (status, _, body) = edge.click(&format!(r#"{{"code":"NOPE-{n}"}}"#), &[]).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["error"]["code"], "unknown_code");
    }
    let elapsed = started.elapsed();
    // 20 misses at the whole wait would take 10 s; probed, a few tens of milliseconds each.
    assert!(
        elapsed < Duration::from_secs(5),
        "20 unknown codes took {elapsed:?}"
    );
    let metrics = edge.metrics().await;
    assert!(
        metrics.contains(r#"referral_code_misses_total{resolution="unknown"} 20"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"referral_code_probes_total{outcome="complete"}"#),
        "{metrics}"
    );
    // A code published now (acknowledged by the broker) and never missed before is honoured
    // by the very first click: the probe sees its end offset unapplied, and the miss waits
    // for the follower instead of being refused.
    assign(&settings, "FRESH-1", "usr_9").await;
    let (status, _, body) = edge.click(r#"{"code":"FRESH-1"}"#, &[]).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["mentor_id"], "usr_9");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_flooding_ip_is_limited_while_another_is_served() {
    let _shared = BROKER_PORTS.read().await;
    let broker = Broker::start().await;
    let settings = settings(&broker, "limits");
    admin::ensure_topics(&settings, 1, 1).await.unwrap();
    assign(&settings, "JAN-1", "usr_1").await;
    let edge = Edge::start(
        &settings,
        &[
            ("REFERRAL_TRUSTED_PROXIES", "127.0.0.1"),
            ("REFERRAL_RATE_LIMIT_PER_IP", "2"),
            ("REFERRAL_RATE_LIMIT_PER_IP_BURST", "5"),
        ],
    )
    .await;
    let mut limited = 0;
    for _ in 0..20 {
        let (status, headers, _) = edge
            .click(
                r#"{"code":"JAN-1"}"#,
                &[("x-forwarded-for", "198.51.100.1")],
            )
            .await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            limited += 1;
            assert!(headers.contains_key("retry-after"));
            assert_eq!(headers["x-ratelimit-limit"], "5");
        } else {
            assert_eq!(status, StatusCode::CREATED);
        }
    }
    assert!(
        limited >= 14,
        "only {limited} of 20 flooding clicks were limited"
    );
    let (status, _, _) = edge
        .click(
            r#"{"code":"JAN-1"}"#,
            &[("x-forwarded-for", "198.51.100.2")],
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let text = edge.metrics().await;
    assert!(
        text.contains(r#"referral_clicks_rate_limited_total{limiter="client_ip"}"#),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_requests_and_every_201_is_on_the_topic() {
    let _shared = BROKER_PORTS.read().await;
    let broker = Broker::start().await;
    let settings = settings(&broker, "drain");
    admin::ensure_topics(&settings, 3, 1).await.unwrap();
    assign(&settings, "JAN-1", "usr_1").await;
    let edge =
        std::sync::Arc::new(Edge::start(&settings, &[("REFERRAL_RATE_LIMIT_PER_IP", "0")]).await);
    let clicks: Vec<_> = (0..8)
        .map(|_| {
            let edge = edge.clone();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for _ in 0..200 {
                    match edge
                        .call(
                            Method::POST,
                            "/api/v1/referral-attributions",
                            &[("content-type", "application/json")],
                            r#"{"code":"JAN-1"}"#,
                        )
                        .await
                    {
                        Ok((StatusCode::CREATED, _, body)) => {
                            acked.push(body["id"].as_str().unwrap().to_owned())
                        }
                        Ok(_) | Err(_) => break, // draining or gone
                    }
                }
                acked
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = edge._process.0.id();
    assert!(
        Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .unwrap()
            .success()
    );
    let mut acked = Vec::new();
    for task in clicks {
        acked.extend(task.await.unwrap());
    }
    assert!(
        !acked.is_empty(),
        "no click was acknowledged before the shutdown"
    );
    let on_topic: std::collections::HashSet<String> = read_topic(&settings)
        .await
        .into_iter()
        .filter_map(
            |(_, _, payload)| match LogMessage::from_json(&payload).ok()?.event {
                LogEvent::Click(click) => Some(click.attribution_id),
                _ => None,
            },
        )
        .collect();
    for id in &acked {
        assert!(
            on_topic.contains(id),
            "201 for {id}, but it is not on the topic"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut edge = std::sync::Arc::into_inner(edge).expect("all clients finished");
    let exit = loop {
        if let Some(exit) = edge._process.0.try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "the edge did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "graceful shutdown must exit 0, got {exit}");
}
