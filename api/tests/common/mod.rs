//! An in-process API called with `oneshot`, in either mode:
//!
//! * [`Mode::Embedded`]: the embedded pipeline (file log, consumer, SQLite) on a throw-away
//!   data directory;
//! * [`Mode::Production`]: Kafka + ClickHouse, with a tansu broker and a ClickHouse 18.16
//!   server started for the test and the aggregator running in process.
//!
//! In both modes a click's 201 means "durable in the log" and the store is applied from the
//! log a moment later, so reads are eventually consistent: before every GET the harness
//! waits until the store holds everything on the log ([`TestApp::settle`]), and both modes
//! must give the same answers. Reads and commands on a click acknowledged a moment ago are
//! served without that wait (`--read-after-write-wait`), and tested so.

#![allow(dead_code)]

use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use std::time::{Duration, Instant};

use clap::Parser as _;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use referral_api::ApiService;
use referral_api::config::Config;
use referral_kit::shutdown::{Shutdown, ShutdownTrigger};
use referral_load_tests::services::{ClickHouseServer, TansuBroker};
use referral_pipeline::Aggregator;
use referral_pipeline::config::{ConsumerArgs, PipelineArgs};
use referral_pipeline::consumer::fault::FaultPoint;
use referral_pipeline::kafka::admin;
use serde_json::Value;
use tower::ServiceExt;

pub const PREFIX: &str = "/api/v1/referral-attributions";
pub const DOUBLED: &str = "/api/v1/referral-attributions/api/v1/referral-attributions";
/// The TCP peer every request appears to come from.
pub const PEER: &str = "203.0.113.7:40000";

/// Which backend a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Embedded,
    Production,
}

/// Runs one async test body in both modes, as two tests in a module named after it.
#[macro_export]
macro_rules! both_modes {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn embedded() {
                    super::$name(super::common::Mode::Embedded).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn kafka_clickhouse() {
                    super::$name(super::common::Mode::Production).await
                }
            }
        )+
    };
}

/// The services behind a production-mode app.
pub struct Production {
    _broker: TansuBroker,
    _clickhouse: ClickHouseServer,
    clickhouse_url: String,
    brokers: String,
    aggregator: Option<Aggregator>,
}

const TOPIC: &str = "referral-events";
const PARTITIONS: i32 = 3;
/// Checkpoints unchanged this long (several `--batch-max-wait` of 100 ms) count as settled.
const SETTLE_QUIET: Duration = Duration::from_millis(400);

/// `referral-aggregator run`'s flags, parsed like the binary parses them.
#[derive(clap::Parser)]
struct AggregatorFlags {
    #[command(flatten)]
    pipeline: PipelineArgs,
    #[command(flatten)]
    consumer: ConsumerArgs,
}

impl Production {
    /// `pipeline_flags`: flags the aggregator applies in production mode (the API forwards
    /// commands; the aggregator decides them), e.g. `--attribution-window`.
    async fn start(pipeline_flags: &[&str]) -> (Self, Vec<String>) {
        let broker = TansuBroker::start();
        let clickhouse = ClickHouseServer::start();
        let brokers = broker.address();
        let clickhouse_url = clickhouse.http_url();
        let mut aggregator_args = vec![
            "referral-aggregator",
            "--kafka-brokers",
            &brokers,
            "--clickhouse-url",
            &clickhouse_url,
            "--kafka-session-timeout",
            "6s",
            "--batch-max-wait",
            "100ms",
        ];
        aggregator_args.extend_from_slice(pipeline_flags);
        let flags = AggregatorFlags::try_parse_from(aggregator_args).unwrap();
        let kafka = flags.pipeline.kafka_settings("api-test").unwrap();
        admin::ensure_topics(&kafka, PARTITIONS, 1).await.unwrap();
        admin::ensure_topic(&kafka, "referral-events-dead-letter", 1, 1)
            .await
            .unwrap();
        let aggregator = Aggregator::start(&flags.pipeline, &flags.consumer, FaultPoint::None)
            .await
            .unwrap();
        let api_flags = vec![
            "--kafka-brokers".to_owned(),
            brokers.clone(),
            "--clickhouse-url".to_owned(),
            clickhouse_url.clone(),
        ];
        (
            Self {
                _broker: broker,
                _clickhouse: clickhouse,
                clickhouse_url,
                brokers,
                aggregator: Some(aggregator),
            },
            api_flags,
        )
    }

    /// Waits until every message on the log is behind a checkpoint stored in ClickHouse.
    ///
    /// tansu 0.6.0 reports a partition's end (ListOffsets) short by the rest of its last
    /// record batch when a producer batched several records, so the reported end is only a
    /// lower bound: once the stored checkpoints reach it, the harness also waits until they
    /// stop moving for a few flush intervals. Every message was acknowledged before this is
    /// called, so nothing new can arrive.
    async fn settle(&self) {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .create()
            .unwrap();
        let client = clickhouse::Client::default()
            .with_url(&self.clickhouse_url)
            .with_database("referral")
            .with_validation(false)
            .with_compression(clickhouse::Compression::None);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let end: i64 = (0..PARTITIONS)
                .map(|partition| {
                    consumer
                        .fetch_watermarks(TOPIC, partition, Duration::from_secs(5))
                        .unwrap()
                        .1
                })
                .sum();
            let stored: i64 = client
                .query("SELECT toInt64(sum(next_offset)) FROM mentor_totals WHERE grain = 'checkpoint' AND mentor_id = ?")
                .bind(TOPIC)
                .fetch_one()
                .await
                .unwrap_or(-1);
            if stored >= end {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the aggregator did not catch up: {stored} of {end}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut last = -1;
        let mut quiet_since = Instant::now();
        loop {
            let stored: i64 = client
                .query("SELECT toInt64(sum(next_offset)) FROM mentor_totals WHERE grain = 'checkpoint' AND mentor_id = ?")
                .bind(TOPIC)
                .fetch_one()
                .await
                .unwrap_or(-1);
            if stored != last {
                last = stored;
                quiet_since = Instant::now();
            } else if quiet_since.elapsed() >= SETTLE_QUIET {
                return;
            }
            assert!(Instant::now() < deadline, "the aggregator never settled");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub struct TestApp {
    pub service: Option<ApiService>,
    pub router: Router,
    pub dir: tempfile::TempDir,
    pub production: Option<Production>,
    /// Kept: dropping the trigger would stop the API's background tasks.
    _stop: ShutdownTrigger,
}

impl TestApp {
    /// The broker of the Kafka + ClickHouse mode (None: embedded).
    pub fn kafka_brokers(&self) -> Option<&str> {
        self.production
            .as_ref()
            .map(|production| production.brokers.as_str())
    }
}

/// How long the store may take to catch up with the log before a test fails.
const CATCH_UP: Duration = Duration::from_secs(30);

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Answer {
    /// `error.code` and `error.field` of an error answer.
    pub fn error(&self) -> (&str, Option<&str>) {
        (
            self.body["error"]["code"].as_str().unwrap_or("<none>"),
            self.body["error"]["field"].as_str(),
        )
    }
}

impl TestApp {
    pub async fn start(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, extra).await
    }

    /// An app in `mode`, with `extra` flags.
    pub async fn start_mode(mode: Mode, extra: &[&str]) -> Self {
        if mode == Mode::Embedded {
            return Self::start(extra).await;
        }
        let window: Vec<&str> = extra
            .windows(2)
            .filter(|pair| pair[0] == "--attribution-window")
            .flat_map(|pair| pair.iter().copied())
            .collect();
        let (production, mut flags) = Production::start(&window).await;
        let dir = tempfile::tempdir().unwrap();
        let mut args = vec!["referral-api".to_owned()];
        args.append(&mut flags);
        args.extend(
            Self::default_flags(extra)
                .iter()
                .map(|arg| (*arg).to_owned()),
        );
        // Production refuses an open API unless asked; most contract tests run without tokens.
        if !extra.contains(&"--api-tokens") {
            args.push("--allow-anonymous".to_owned());
        }
        let config = Config::try_parse_from(args).unwrap();
        let (stop, shutdown) = referral_kit::shutdown::channel();
        let service = ApiService::start(&config, shutdown).await.unwrap();
        let router = service.router();
        let app = Self {
            service: Some(service),
            router,
            dir,
            production: Some(production),
            _stop: stop,
        };
        // As a readiness gate would: the producer's first probe and the codes follower's
        // first catch-up take a moment.
        let deadline = Instant::now() + Duration::from_secs(15);
        while app.get_now("/readyz").await.status != StatusCode::OK {
            assert!(
                Instant::now() < deadline,
                "the production-mode API never became ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        app
    }

    fn default_flags<'a>(extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = Vec::new();
        // Small log segments: each one is preallocated, and a test writes a few hundred
        // records, not the default 64 MiB.
        if !extra
            .iter()
            .any(|arg| arg.starts_with("--log-segment-bytes"))
        {
            args.extend(["--log-segment-bytes", "1048576"]);
        }
        // Many clicks come from one test peer: limits stay off unless a test sets them.
        if !extra.iter().any(|arg| arg.starts_with("--rate-limit")) {
            args.extend([
                "--rate-limit-per-ip",
                "0",
                "--rate-limit-per-code",
                "0",
                "--rate-limit-global",
                "0",
            ]);
        }
        args.extend_from_slice(extra);
        args
    }

    pub fn mode(&self) -> Mode {
        if self.production.is_some() {
            Mode::Production
        } else {
            Mode::Embedded
        }
    }

    /// Waits until the store holds everything on the log: the aggregator's checkpoints in
    /// production, the embedded consumer's in the embedded mode.
    pub async fn settle(&self) {
        match (&self.production, &self.service) {
            (Some(production), _) => production.settle().await,
            (None, Some(service)) => assert!(
                service.pipeline().caught_up(CATCH_UP).await,
                "the embedded store did not catch up with its log"
            ),
            (None, None) => {}
        }
    }

    pub async fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Self {
        let data_dir = dir.path().to_str().unwrap().to_owned();
        let mut args = vec![
            "referral-api",
            "--data-dir",
            &data_dir,
            "--sqlite-synchronous",
            "normal",
        ];
        args.extend(Self::default_flags(extra));
        let config = Config::try_parse_from(args).unwrap();
        let (stop, shutdown): (ShutdownTrigger, Shutdown) = referral_kit::shutdown::channel();
        let service = ApiService::start(&config, shutdown).await.unwrap();
        let router = service.router();
        Self {
            service: Some(service),
            router,
            dir,
            production: None,
            _stop: stop,
        }
    }

    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(service) = self.service.take() {
            service.shutdown().await;
        }
        if let Some(aggregator) = self
            .production
            .as_mut()
            .and_then(|production| production.aggregator.take())
        {
            aggregator.shutdown().await;
        }
        self.dir
    }

    pub async fn call(
        &self,
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Answer {
        let mut request = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let mut request = request
            .body(body.map_or_else(Body::empty, |body| Body::from(body.to_owned())))
            .unwrap();
        let peer: SocketAddr = PEER.parse().unwrap();
        request.extensions_mut().insert(ConnectInfo(peer));
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Answer {
            status,
            headers,
            body,
        }
    }

    /// A GET once the pipeline settled (see the module docs).
    pub async fn get(&self, uri: &str) -> Answer {
        self.settle().await;
        self.call(Method::GET, uri, &[], None).await
    }

    /// A GET right away, without waiting for the pipeline.
    pub async fn get_now(&self, uri: &str) -> Answer {
        self.call(Method::GET, uri, &[], None).await
    }

    pub async fn send_json(&self, method: Method, uri: &str, body: &str) -> Answer {
        self.call(
            method,
            uri,
            &[("content-type", "application/json")],
            Some(body),
        )
        .await
    }

    pub async fn assign_code(&self, code: &str, mentor: &str) -> Answer {
        self.send_json(
            Method::PUT,
            &format!("/api/v1/referral-codes/{code}"),
            &format!(r#"{{"mentor_id":"{mentor}"}}"#),
        )
        .await
    }

    pub async fn click(&self, body: &str) -> Answer {
        self.send_json(Method::POST, PREFIX, body).await
    }

    /// Posts a click for `code` by a new visitor (see [`new_visitor`]).
    pub async fn visit(&self, code: &str) -> Answer {
        self.click(&format!(r#"{{"code":"{code}",{}}}"#, new_visitor()))
            .await
    }

    /// Records a click for `code` by a new visitor (a browser's user agent, an address no
    /// other click used: counted) and returns its id.
    pub async fn click_id(&self, code: &str, occurred_at: &str) -> String {
        let answer = self
            .click(&format!(
                r#"{{"code":"{code}","occurred_at":"{occurred_at}",{}}}"#,
                new_visitor()
            ))
            .await;
        assert_eq!(answer.status, StatusCode::CREATED, "{:?}", answer.body);
        answer.body["id"].as_str().unwrap().to_owned()
    }

    pub async fn confirm(&self, id: &str, body: &str) -> Answer {
        self.send_json(Method::PUT, &format!("{PREFIX}/{id}"), body)
            .await
    }

    pub async fn totals(&self, mentor: &str, query: &str) -> (u64, u64, f64, String) {
        let answer = self
            .get(&format!("{PREFIX}/mentor/{mentor}/total{query}"))
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
        (
            answer.body["total_clicks"].as_u64().unwrap(),
            answer.body["total_conversions"].as_u64().unwrap(),
            answer.body["conversion_rate"].as_f64().unwrap(),
            answer.body["period"].as_str().unwrap().to_owned(),
        )
    }
}

/// An RFC 3339 instant `seconds` from now (negative: in the past).
pub fn from_now(seconds: i64) -> String {
    let millis = referral_schemas::Timestamp::now().as_millis() + seconds * 1000;
    referral_schemas::Timestamp::from_millis(millis - millis.rem_euclid(1000)).to_string()
}

/// An RFC 3339 instant `seconds` after `base` (whole seconds): for tests whose instants must
/// keep their distances however long the test runs.
pub fn from_base(base: referral_schemas::Timestamp, seconds: i64) -> String {
    let millis = base.as_millis() + seconds * 1000;
    referral_schemas::Timestamp::from_millis(millis - millis.rem_euclid(1000)).to_string()
}

/// A browser's user agent (not a bot).
pub const BROWSER: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36";

/// Body fields of a visitor no other click of this test process used: a browser's user
/// agent and a fresh client address, so the click's verdict is `counted`.
pub fn new_visitor() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(
        r#""ip_address":"198.51.{}.{}","user_agent":"{BROWSER}""#,
        (n / 250) % 250,
        n % 250 + 1
    )
}
