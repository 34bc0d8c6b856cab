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
use referral_pipeline::kafka::producer::KafkaLog;
use referral_pipeline::kafka::{KafkaSettings, admin, codes, producer};
use referral_pipeline::log::EventLog;
use referral_schemas::messages::{ClickEvent, LogEvent, LogMessage};
use referral_schemas::{ReferralCode, Timestamp};
use serde_json::Value;
use support::{ChildGuard, free_address, free_port, free_port_but};

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A broker that comes back on its port must find the port free: a test that picks ports
/// while another one's broker is away could take it (and the test whose broker came back
/// would then talk to the wrong broker). The stopped-broker test runs alone; the others share.
static BROKER_PORTS: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// A tansu broker.
///
/// A broker that goes away and comes back ([`Broker::start_behind_relay`]) serves behind a
/// TCP relay on its advertised port: cutting the relay (the port refuses connections, open
/// ones are cut) is the broker's death as clients see it, and reopening it is the broker
/// back with its topics, as an Apache Kafka broker comes back from a restart. That broker
/// keeps its data in memory: on tansu 0.6.0's SQLite engine it closed every connection once
/// the relay was back (an idempotent producer's batch sent again after a cut; its SQLite
/// engine also panics on the first produce of an idempotent producer that outlived a
/// restart). tansu itself is not restarted: its memory engine comes back with new topic ids,
/// and asked to fetch by an old id it answers with a zero topic id and a current leader,
/// which makes librdkafka 2.12.1 (`rd_kafka_metadata_update_op`) look the topic up by a null
/// name in its metadata cache: a `strcmp(NULL, ...)` that killed the edge without a word in
/// about one run in fifteen (SIGSEGV, seen in a core dump). Apache Kafka answers an unknown
/// topic id with `UNKNOWN_TOPIC_ID` and the id asked for.
struct Broker {
    process: ChildGuard,
    /// The port clients use (and the broker advertises).
    port: u16,
    dir: tempfile::TempDir,
    /// Set for a broker behind a relay: tansu's own port, and the relay while it is open.
    relay: Option<(u16, Option<Relay>)>,
}

impl Broker {
    /// A broker on its own port.
    async fn start() -> Self {
        let port = free_port();
        Self::spawn(port, port, "sqlite://tansu.db", None).await
    }

    /// A broker behind a relay, for [`Broker::stop`] and [`Broker::come_back`].
    async fn start_behind_relay() -> Self {
        let port = free_port();
        let backend = free_port_but(port);
        let relay = Relay::open(port, backend).await;
        Self::spawn(
            port,
            backend,
            "memory://tansu/",
            Some((backend, Some(relay))),
        )
        .await
    }

    /// Starts tansu on `engine`, listening on `listen_port`, advertising `port`.
    async fn spawn(
        port: u16,
        listen_port: u16,
        engine: &str,
        relay: Option<(u16, Option<Relay>)>,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("tansu")
            .args(["broker", "--listener-url"])
            .arg(format!("tcp://127.0.0.1:{listen_port}"))
            .arg("--advertised-listener-url")
            .arg(format!("tcp://127.0.0.1:{port}"))
            .args(["--storage-engine", engine])
            .current_dir(dir.path())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu is not installed: run ./scripts/test.sh, which installs it");
        let broker = Self {
            process: ChildGuard(child),
            port,
            dir,
            relay,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", listen_port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "tansu did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        broker
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker goes away for its clients: its port refuses connections and every open
    /// connection is cut.
    async fn stop(&mut self) {
        let (_, relay) = self.relay.as_mut().expect("a broker behind a relay");
        if let Some(relay) = relay.take() {
            relay.close().await;
        }
    }

    /// A fresh broker takes this one's place on its port, its `topics` (one partition each)
    /// created before any client reaches it: a broker that lost its state.
    async fn replace_with_fresh(&mut self, topics: &[&str]) {
        self.stop().await;
        let backend = free_port_but(self.port);
        let fresh = Self::spawn(self.port, backend, "memory://tansu/", None).await;
        for topic in topics {
            let mut create = ChildGuard(
                Command::new("tansu")
                    .args(["topic", "create", "--partitions", "1", "--broker"])
                    .arg(format!("tcp://127.0.0.1:{backend}"))
                    .arg(topic)
                    .stdout(Stdio::null())
                    .spawn()
                    .unwrap(),
            );
            let created =
                exit_of(&mut create.0, Duration::from_secs(20), "tansu topic create").await;
            assert!(created.success(), "tansu topic create {topic}: {created}");
        }
        self.process = fresh.process;
        self.dir = fresh.dir;
        self.relay = Some((backend, None));
        self.come_back().await;
    }

    /// The broker is back on its port, with its topics and state.
    async fn come_back(&mut self) {
        let port = self.port;
        let (backend, relay) = self.relay.as_mut().expect("a broker behind a relay");
        *relay = Some(Relay::open(port, *backend).await);
    }
}

/// Relays TCP connections from a loopback port to a backend port until closed (or, a moment
/// later, dropped): then the port refuses connections and every relayed connection is cut,
/// as a broker's death would.
struct Relay(tokio::task::JoinHandle<()>);

impl Relay {
    async fn open(port: u16, backend: u16) -> Self {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        Self(tokio::spawn(async move {
            // Owned by this task: aborting it aborts every connection's copy.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    // Out of descriptors, say: no busy loop on a two-core machine.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                connections.spawn(async move {
                    if let Ok(mut server) =
                        tokio::net::TcpStream::connect(("127.0.0.1", backend)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                // Reap finished connections.
                while connections.try_join_next().is_some() {}
            }
        }))
    }
}

impl Relay {
    /// Closes the port before returning (its relayed connections are cut with it: their
    /// tasks belong to the aborted one).
    async fn close(mut self) {
        self.0.abort();
        let _ = (&mut self.0).await;
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Waits, at most `within`, for `child` to exit; `what` names it in the failure.
async fn exit_of(
    child: &mut std::process::Child,
    within: Duration,
    what: &str,
) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not exit in {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
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
    /// The edge's log (`RUST_LOG=info`), printed when a wait on it fails.
    log: tempfile::NamedTempFile,
}

impl Edge {
    async fn start(settings: &KafkaSettings, extra_env: &[(&str, &str)]) -> Self {
        let address = free_address();
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_referral-ingest"))
            .env("REFERRAL_LISTEN", &address)
            .env("REFERRAL_KAFKA_BROKERS", &settings.brokers)
            .env("REFERRAL_KAFKA_TOPIC", &settings.topic)
            .env("REFERRAL_KAFKA_CODES_TOPIC", &settings.codes_topic)
            .env("REFERRAL_KAFKA_MESSAGE_TIMEOUT", "3s")
            .env("REFERRAL_ACK_TIMEOUT", "2s")
            .env("RUST_LOG", "info")
            .envs(extra_env.iter().copied())
            .stdout(log.reopen().unwrap())
            .spawn()
            .unwrap();
        let edge = Self {
            _process: ChildGuard(child),
            base: format!("http://{address}"),
            client: Client::builder(TokioExecutor::new()).build_http(),
            log,
        };
        edge.wait_ready(true, Duration::from_secs(30)).await;
        edge
    }

    async fn wait_ready(&self, ready: bool, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let answer = self.call(Method::GET, "/readyz", &[], "").await;
            if answer
                .as_ref()
                .is_ok_and(|answer| answer.0 == StatusCode::OK)
                == ready
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "/readyz did not become {ready} (last: {:?}); the edge's log:\n{}",
                answer.map(|(status, _, body)| (status, body)),
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The edge's process state and log, for a failure message.
    fn log_text(&self) -> String {
        let pid = self._process.0.id();
        let state = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find(|l| l.starts_with("State:"))
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| "no such process".into());
        // A zombie's wait status is the last field of its stat (signal in the low 7 bits).
        let wait_status = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| stat.split_whitespace().last().map(str::to_owned))
            .unwrap_or_default();
        let connect = std::net::TcpStream::connect(self.base.trim_start_matches("http://"))
            .map(|_| "accepts".to_owned())
            .unwrap_or_else(|error| error.to_string());
        format!(
            "process {pid}: {state} (wait status {wait_status}); its port: {connect}\n{}",
            std::fs::read_to_string(self.log.path()).unwrap_or_default()
        )
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

/// The attribution ids of the clicks on the log's topic, in log order.
async fn clicks_on_topic(settings: &KafkaSettings) -> Vec<String> {
    read_topic(settings)
        .await
        .into_iter()
        .filter_map(
            |(_, _, payload)| match LogMessage::from_json(&payload).ok()?.event {
                LogEvent::Click(click) => Some(click.attribution_id),
                _ => None,
            },
        )
        .collect()
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
async fn a_stopped_broker_gives_503_within_the_timeout_then_201_once_it_is_back() {
    // Alone: its broker comes back on the same port, which no other test may take meanwhile.
    let _alone = BROKER_PORTS.write().await;
    let mut broker = Broker::start_behind_relay().await;
    let settings = settings(&broker, "restart");
    admin::ensure_topics(&settings, 1, 1).await.unwrap();
    assign(&settings, "JAN-1", "usr_1").await;
    let edge = Edge::start(&settings, &[]).await;
    assert_eq!(
        edge.click(r#"{"code":"JAN-1"}"#, &[]).await.0,
        StatusCode::CREATED
    );

    broker.stop().await;
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
    // `/readyz` says why: the probe's own failure, not only that it failed.
    let (_, _, readiness) = edge
        .call(Method::GET, "/readyz", &[], "")
        .await
        .unwrap_or_else(|error| panic!("{error}; {}", edge.log_text()));
    let reason = readiness["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with(&format!(
            "the Kafka topic {} is not ready: metadata request failed",
            settings.topic
        )),
        "{readiness}"
    );

    broker.come_back().await;
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
                "no 201 after the broker came back; the edge's log:\n{}",
                edge.log_text()
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
            "no 201 after the broker came back ({status}: {body}); the edge's log:\n{}",
            edge.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A broker that lost its state (a fresh one on the same address, its topics recreated, as
/// after losing its disks) knows nothing of the producer's idempotence state. Publishing
/// must work again: the readiness probe replaces a producer that is stuck. The log alone,
/// in process: an edge's codes follower would meet librdkafka's crash on a broker with new
/// topic ids (see [`Broker`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_publishes_again_after_the_broker_lost_its_state() {
    let _alone = BROKER_PORTS.write().await;
    let mut broker = Broker::start_behind_relay().await;
    let settings = settings(&broker, "lost");
    admin::ensure_topics(&settings, 1, 1).await.unwrap();
    let log = std::sync::Arc::new(KafkaLog::connect(&settings).await.unwrap());
    log.spawn_readiness_probe(std::future::pending());
    let click = |id: &str| {
        LogEvent::Click(ClickEvent {
            attribution_id: id.to_owned(),
            code: "JAN-1".into(),
            mentor_id: "usr_1".into(),
            ip_address: "192.0.2.1".into(),
            user_agent: None,
            referrer_url: None,
            occurred_at: Timestamp::now(),
            received_at: Timestamp::now(),
        })
    };
    log.publish(click("att_before")).await.unwrap();

    broker
        .replace_with_fresh(&[&settings.topic, &settings.codes_topic])
        .await;
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut attempts = 0;
    let acknowledged = loop {
        attempts += 1;
        let id = format!("att_after_{attempts}");
        if let Ok(Ok(())) =
            tokio::time::timeout(Duration::from_secs(5), log.publish(click(&id))).await
        {
            break id;
        }
        assert!(
            Instant::now() < deadline,
            "nothing acknowledged in 40 s after the broker lost its state"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let on_topic: Vec<String> = clicks_on_topic(&settings).await;
    assert!(
        on_topic.contains(&acknowledged),
        "{acknowledged} acknowledged but not on the fresh broker's topic: {on_topic:?}"
    );
    assert!(
        !on_topic.iter().any(|id| id == "att_before"),
        "the fresh broker has the old broker's record: it did not lose its state"
    );
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
    let on_topic: std::collections::HashSet<String> =
        clicks_on_topic(&settings).await.into_iter().collect();
    for id in &acked {
        assert!(
            on_topic.contains(id),
            "201 for {id}, but it is not on the topic"
        );
    }
    let mut edge = std::sync::Arc::into_inner(edge).expect("all clients finished");
    let exit = exit_of(
        &mut edge._process.0,
        Duration::from_secs(15),
        "the edge after SIGTERM",
    )
    .await;
    assert!(exit.success(), "graceful shutdown must exit 0, got {exit}");
}
