//! Webhooks end to end, on the real binaries, in both modes, against real HTTP receivers
//! (`scripts/webhook-receiver.py`): one answers 500 to its first attempts, one is slower
//! than the timeout at first, one is down and comes up later. Midway the deliverer is
//! SIGKILLed and started again (embedded: the whole `referral-api`, which runs it;
//! production: `referral-aggregator deliver`). Every event must reach every receiver at
//! least once, in log order per endpoint (first 2xx of each event id), and every request's
//! signature must verify with Python's `hmac` (an implementation independent of ours).
//! In production, deliverers in their consumer group split the endpoints, and a dead one's
//! endpoints move on.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use referral_load_tests::services::{ChildGuard, ClickHouseServer, TansuBroker, free_ports};
use serde_json::{Value, json};

const CODE: &str = "HOOK-TEST-0001";
const CLICKS: usize = 12;
/// The receiver that fails first answers 500 this many times.
const FAILS_FIRST: usize = 3;
const WEBHOOK_FLAGS: [&str; 7] = [
    "--webhook-allow-private",
    "--webhook-timeout",
    "1s",
    "--webhook-retry-base",
    "200ms",
    "--webhook-poll",
    "100ms",
];

/// The deliverers' group session in production (tansu joins take ~3 s at 6 s).
const GROUP_SESSION: Duration = Duration::from_secs(6);

fn api_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_referral-api"))
}

/// `referral-aggregator`, built next to `referral-api` by `cargo test --workspace`.
fn aggregator_binary() -> PathBuf {
    let path = api_binary().with_file_name("referral-aggregator");
    assert!(
        path.exists(),
        "{} is missing: build it (cargo build --bin referral-aggregator) or run the workspace's tests",
        path.display()
    );
    path
}

fn receiver_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/webhook-receiver.py")
}

fn spawn(program: &Path, args: &[String], log: &Path) -> ChildGuard {
    let log = std::fs::File::create(log).unwrap();
    ChildGuard::new(
        Command::new(program)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

struct Receiver {
    port: u16,
    log: PathBuf,
    extra: Vec<String>,
    process: Option<ChildGuard>,
}

impl Receiver {
    fn new(dir: &Path, name: &str, port: u16, extra: &[&str]) -> Self {
        Self {
            port,
            log: dir.join(format!("{name}.jsonl")),
            extra: extra.iter().map(|flag| (*flag).to_owned()).collect(),
            process: None,
        }
    }

    fn start(&mut self) {
        let mut args = vec![
            receiver_script().display().to_string(),
            "serve".into(),
            "--port".into(),
            self.port.to_string(),
            "--log".into(),
            self.log.display().to_string(),
        ];
        args.extend(self.extra.iter().cloned());
        self.process = Some(ChildGuard::new(
            Command::new("python3")
                .args(&args)
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        ));
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hooks/referrals", self.port)
    }

    /// Python's verdict on every request received so far.
    fn verify(&self, secret: &str) -> Value {
        if !self.log.exists() {
            return json!({"requests": 0, "verified": 0, "failed": [], "events": []});
        }
        let output = Command::new("python3")
            .arg(receiver_script())
            .args(["verify", "--log"])
            .arg(&self.log)
            .args(["--secret", secret])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap()
    }
}

/// The (type, attribution id) of each event a receiver answered 2xx, in first-answer order.
fn received(report: &Value) -> Vec<(String, String)> {
    report["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| {
            (
                event["type"].as_str().unwrap().to_owned(),
                event["attribution_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The processes of one mode; `restart_deliverer` SIGKILLs whatever runs the deliverer and
/// starts it again.
struct Deployment {
    dir: PathBuf,
    api_port: u16,
    api_args: Vec<String>,
    api: Option<ChildGuard>,
    deliver_args: Vec<String>,
    deliverer: Option<ChildGuard>,
    _aggregator: Option<ChildGuard>,
    _services: Option<(TansuBroker, ClickHouseServer)>,
    http: reqwest::Client,
}

impl Deployment {
    /// `referral-api` on its own data directory, with `flags`.
    async fn embedded(dir: &Path, flags: &[&str]) -> Self {
        let port = free_ports(1)[0];
        let mut api_args = vec![
            "--data-dir".to_owned(),
            dir.join("data").display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
        ];
        api_args.extend(flags.iter().map(|flag| (*flag).to_owned()));
        let mut deployment = Self {
            dir: dir.to_owned(),
            api_port: port,
            api_args,
            api: None,
            deliver_args: Vec::new(),
            deliverer: None,
            _aggregator: None,
            _services: None,
            http: reqwest::Client::new(),
        };
        deployment.start_api().await;
        deployment
    }

    async fn production(dir: &Path) -> Self {
        let broker = TansuBroker::start();
        let clickhouse = ClickHouseServer::start();
        let brokers = broker.address();
        let clickhouse_url = clickhouse.http_url();
        let ports = free_ports(3);
        let backends = vec![
            "--kafka-brokers".to_owned(),
            brokers.clone(),
            "--clickhouse-url".into(),
            clickhouse_url.clone(),
        ];
        let mut migrate = vec![
            "migrate".to_owned(),
            "--kafka-partitions".into(),
            "3".into(),
        ];
        migrate.extend(backends.iter().cloned());
        let status = Command::new(aggregator_binary())
            .args(&migrate)
            .status()
            .unwrap();
        assert!(status.success(), "referral-aggregator migrate failed");
        let mut run = vec![
            "run".to_owned(),
            "--listen".into(),
            format!("127.0.0.1:{}", ports[1]),
            "--batch-max-wait".into(),
            "100ms".into(),
        ];
        run.extend(backends.iter().cloned());
        let aggregator = spawn(&aggregator_binary(), &run, &dir.join("aggregator.log"));
        // A member of the deliverers' group: a restarted one waits for its dead
        // predecessor's session to time out before the endpoints are its own.
        let mut deliver_args = vec![
            "deliver".to_owned(),
            "--clickhouse-url".into(),
            clickhouse_url,
            "--kafka-brokers".into(),
            brokers.clone(),
            "--webhook-session-timeout".into(),
            format!("{}s", GROUP_SESSION.as_secs()),
            "--listen".into(),
            format!("127.0.0.1:{}", ports[2]),
        ];
        deliver_args.extend(WEBHOOK_FLAGS.iter().map(|flag| (*flag).to_owned()));
        let mut api_args = backends;
        api_args.extend([
            "--listen".to_owned(),
            format!("127.0.0.1:{}", ports[0]),
            "--allow-anonymous".into(),
        ]);
        api_args.extend(WEBHOOK_FLAGS.iter().map(|flag| (*flag).to_owned()));
        let mut deployment = Self {
            dir: dir.to_owned(),
            api_port: ports[0],
            api_args,
            api: None,
            deliver_args,
            deliverer: None,
            _aggregator: Some(aggregator),
            _services: Some((broker, clickhouse)),
            http: reqwest::Client::new(),
        };
        deployment.start_deliverer();
        deployment.start_api().await;
        deployment
    }

    fn start_deliverer(&mut self) {
        self.deliverer = Some(spawn(
            &aggregator_binary(),
            &self.deliver_args,
            &self.dir.join("deliver.log"),
        ));
    }

    /// Another `referral-aggregator deliver` in the same group, its ops on `port`.
    fn another_deliverer(&self, port: u16, name: &str) -> ChildGuard {
        let mut args = self.deliver_args.clone();
        if let Some(listen) = args.iter().position(|arg| arg == "--listen") {
            args[listen + 1] = format!("127.0.0.1:{port}");
        }
        spawn(
            &aggregator_binary(),
            &args,
            &self.dir.join(format!("{name}.log")),
        )
    }

    /// The broker's address (production).
    fn brokers(&self) -> String {
        self._services
            .as_ref()
            .map(|(broker, _)| broker.address())
            .unwrap()
    }

    /// The first deliverer's ops port.
    fn deliverer_port(&self) -> u16 {
        self.deliver_args
            .iter()
            .position(|arg| arg == "--listen")
            .and_then(|listen| self.deliver_args[listen + 1].rsplit(':').next())
            .and_then(|port| port.parse().ok())
            .unwrap()
    }

    /// A gauge of the process whose ops listen on `port` (None while it does not answer).
    async fn gauge(&self, port: u16, name: &str) -> Option<f64> {
        let text = self
            .http
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|value| value.trim().parse().ok())
    }

    async fn start_api(&mut self) {
        let log = self
            .dir
            .join(format!("api-{}.log", Instant::now().elapsed().as_nanos()));
        self.api = Some(spawn(&api_binary(), &self.api_args, &log));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = self
                .http
                .get(format!("http://127.0.0.1:{}/readyz", self.api_port))
                .send()
                .await
                .is_ok_and(|response| response.status().is_success());
            if ready {
                return;
            }
            assert!(Instant::now() < deadline, "referral-api never became ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL of the process that runs the deliverer, then a new one on the same state.
    ///
    /// In production the new deliverer starts once the dead one's group session is over:
    /// tansu 0.6.0 hands a member that joins earlier only part of the partitions (the rest
    /// stay with the dead member), and when a heartbeat later notices the death it keeps
    /// the group's old assignments instead of rebalancing. A Kafka cluster rebalances then
    /// (and a survivor takes the partitions over alone).
    async fn kill_deliverer(&mut self) {
        if self.deliverer.is_some() {
            if let Some(deliverer) = self.deliverer.take() {
                deliverer.kill();
            }
            tokio::time::sleep(GROUP_SESSION + Duration::from_secs(1)).await;
            self.start_deliverer();
        } else {
            if let Some(api) = self.api.take() {
                api.kill();
            }
            self.start_api().await;
        }
    }

    /// A click on [`CODE`] from `ip_address`, confirmed for `member`: its id.
    async fn confirmed_click(&self, ip_address: &str, user_agent: &str, member: &str) -> String {
        let (status, click) = self
            .call(
                reqwest::Method::POST,
                "/api/v1/referral-attributions",
                Some(json!({"code": CODE, "ip_address": ip_address, "user_agent": user_agent})),
            )
            .await;
        assert_eq!(status, 201, "{click}");
        let id = click["id"].as_str().unwrap().to_owned();
        let (status, body) = self
            .call(
                reqwest::Method::PUT,
                &format!("/api/v1/referral-attributions/{id}"),
                Some(json!({"code": CODE, "new_member_id": member})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        id
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("http://127.0.0.1:{}{path}", self.api_port));
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

async fn webhooks_are_delivered_at_least_once_in_order_and_signed(production: bool) {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(3);
    let mut failing = Receiver::new(dir.path(), "failing", ports[0], &["--fail-first", "3"]);
    let mut slow = Receiver::new(
        dir.path(),
        "slow",
        ports[1],
        &["--slow-first", "2", "--delay", "2.5"],
    );
    let mut late = Receiver::new(dir.path(), "late", ports[2], &[]);
    failing.start();
    slow.start();
    let mut deployment = if production {
        Deployment::production(dir.path()).await
    } else {
        Deployment::embedded(dir.path(), &WEBHOOK_FLAGS).await
    };
    use reqwest::Method;
    let all = json!([
        "conversion.confirmed",
        "conversion.reversed",
        "attribution.deleted"
    ]);
    let mut endpoints = Vec::new();
    for receiver in [&failing, &slow, &late] {
        let (status, created) = deployment
            .call(
                Method::POST,
                "/api/v1/webhooks",
                Some(json!({"url": receiver.url(), "events": all})),
            )
            .await;
        assert_eq!(status, 201, "{created}");
        assert_eq!(created["enabled"], true);
        let secret = created["secret"].as_str().unwrap().to_owned();
        assert!(secret.starts_with("whsec_"));
        endpoints.push((created["id"].as_str().unwrap().to_owned(), secret));
    }
    // The secret is shown once.
    let (_, listed) = deployment.call(Method::GET, "/api/v1/webhooks", None).await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 3);
    assert!(listed["data"][0].get("secret").is_none());
    let (status, _) = deployment
        .call(
            Method::PUT,
            &format!("/api/v1/referral-codes/{CODE}"),
            Some(json!({"mentor_id": "mentor-hooks"})),
        )
        .await;
    assert!(status == 200 || status == 201);

    // The stream: each click confirmed; every second one reversed, every fourth deleted.
    let mut expected: Vec<(String, String)> = Vec::new();
    for i in 0..CLICKS {
        let id = deployment
            .confirmed_click(
                &format!("198.51.100.{}", i + 1),
                &format!("Mozilla/5.0 (X11; Linux x86_64) Firefox/120.{i}"),
                &format!("member-{i}"),
            )
            .await;
        let path = format!("/api/v1/referral-attributions/{id}");
        expected.push(("conversion.confirmed".into(), id.clone()));
        if i % 2 == 0 {
            let (status, body) = deployment
                .call(
                    Method::POST,
                    &format!("{path}/reversal"),
                    Some(json!({"reason": "refund"})),
                )
                .await;
            assert_eq!(status, 200, "{body}");
            expected.push(("conversion.reversed".into(), id.clone()));
        }
        if i % 4 == 0 {
            let (status, body) = deployment.call(Method::DELETE, &path, None).await;
            assert_eq!(status, 200, "{body}");
            expected.push(("attribution.deleted".into(), id.clone()));
        }
        if i == 3 {
            late.start();
        }
        if i == CLICKS / 2 {
            deployment.kill_deliverer().await;
        }
    }

    // Every event reaches every receiver, in log order, every signature verified by Python.
    let deadline = Instant::now() + Duration::from_secs(90);
    for (receiver, (_, secret)) in [&failing, &slow, &late].iter().zip(&endpoints) {
        loop {
            let report = receiver.verify(secret);
            let got = received(&report);
            assert_eq!(
                report["failed"],
                json!([]),
                "{}: unverified signatures",
                receiver.url()
            );
            assert_eq!(report["requests"], report["verified"]);
            if got == expected {
                break;
            }
            assert!(
                expected.starts_with(&got),
                "{}: events out of log order:\n got {got:?}\n want {expected:?}",
                receiver.url()
            );
            assert!(
                Instant::now() < deadline,
                "{}: {} of {} events after 90 s",
                receiver.url(),
                got.len(),
                expected.len()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    // The attempt logs say what happened: 500s retried, timeouts retried.
    let attempts = |id: &str| {
        let path = format!("/api/v1/webhooks/{id}/deliveries?limit=1000");
        let deployment = &deployment;
        async move { deployment.call(Method::GET, &path, None).await.1["data"].clone() }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let failing_attempts = attempts(&endpoints[0].0).await;
        let slow_attempts = attempts(&endpoints[1].0).await;
        let saw_500 = failing_attempts
            .as_array()
            .unwrap()
            .iter()
            .filter(|attempt| attempt["status_code"] == 500 && attempt["outcome"] == "retrying")
            .count();
        let saw_timeout = slow_attempts.as_array().unwrap().iter().any(|attempt| {
            attempt["status_code"].is_null()
                && attempt["error"]
                    .as_str()
                    .is_some_and(|error| error.contains("timeout"))
        });
        let delivered = failing_attempts
            .as_array()
            .unwrap()
            .iter()
            .filter(|attempt| attempt["outcome"] == "delivered")
            .count();
        // The receiver answered FAILS_FIRST 500s. One of them may be missing from the log:
        // a retrying attempt in flight when the deliverer was SIGKILLed, not yet written.
        // Its event was sent again after the restart under the same attempt number, so the
        // failing event's attempts are still numbered 1, 2, ... without a gap (a dropped
        // row would leave one) and end with its delivery.
        assert!(saw_500 <= FAILS_FIRST, "{saw_500} 500s logged");
        if saw_500 + 1 >= FAILS_FIRST && saw_timeout && delivered >= expected.len() {
            let failed_event = failing_attempts
                .as_array()
                .unwrap()
                .iter()
                .find(|attempt| attempt["status_code"] == 500)
                .map(|attempt| attempt["event_id"].clone())
                .unwrap();
            let attempts_of_event: Vec<(u64, String)> = failing_attempts
                .as_array()
                .unwrap()
                .iter()
                .filter(|attempt| attempt["event_id"] == failed_event)
                .map(|attempt| {
                    let outcome = attempt["outcome"].as_str().unwrap().to_owned();
                    (attempt["attempt"].as_u64().unwrap(), outcome)
                })
                .collect();
            // A delivery just before the SIGKILL may be sent (and logged) again: numbers
            // may repeat, never skip.
            let numbers: std::collections::BTreeSet<u64> =
                attempts_of_event.iter().map(|(n, _)| *n).collect();
            let last = numbers.last().copied().unwrap_or(0);
            assert!(
                numbers.iter().copied().eq(1..=last)
                    && (FAILS_FIRST as u64..=FAILS_FIRST as u64 + 1).contains(&last)
                    && attempts_of_event
                        .iter()
                        .any(|(n, outcome)| *n == last && outcome == "delivered"),
                "{attempts_of_event:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "attempt logs incomplete: {saw_500} 500s, timeout seen {saw_timeout}, {delivered} delivered"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // A replay sends everything again, same ids.
    let before = late.verify(&endpoints[2].1)["requests"].as_u64().unwrap();
    let (status, _) = deployment
        .call(
            Method::POST,
            &format!("/api/v1/webhooks/{}/replay", endpoints[2].0),
            Some(json!({"since": "2020-01-01T00:00:00Z"})),
        )
        .await;
    assert_eq!(status, 202);
    let deadline = Instant::now() + Duration::from_secs(30);
    while late.verify(&endpoints[2].1)["requests"].as_u64().unwrap()
        < before + expected.len() as u64
    {
        assert!(
            Instant::now() < deadline,
            "the replay did not re-send every event"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        late.verify(&endpoints[2].1)["events"]
            .as_array()
            .unwrap()
            .len(),
        expected.len()
    );
    // A deleted endpoint is gone.
    let (status, _) = deployment
        .call(
            Method::DELETE,
            &format!("/api/v1/webhooks/{}", endpoints[0].0),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = deployment
        .call(
            Method::GET,
            &format!("/api/v1/webhooks/{}", endpoints[0].0),
            None,
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("webhook_not_found"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded() {
    webhooks_are_delivered_at_least_once_in_order_and_signed(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_clickhouse() {
    webhooks_are_delivered_at_least_once_in_order_and_signed(true).await;
}

#[tokio::test]
async fn private_and_plain_http_urls_are_refused_without_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let deployment = Deployment::embedded(dir.path(), &[]).await;
    for url in [
        "http://93.184.216.34/hook",
        "https://127.0.0.1/hook",
        "https://localhost:8443/hook",
        "https://169.254.169.254/latest/meta-data/",
        "https://[::ffff:10.0.0.1]/hook",
        "https://10.1.2.3/hook",
    ] {
        let (status, body) = deployment
            .call(
                reqwest::Method::POST,
                "/api/v1/webhooks",
                Some(json!({"url": url, "events": ["conversion.confirmed"]})),
            )
            .await;
        assert_eq!(
            (status, body["error"]["field"].as_str()),
            (422, Some("url")),
            "{url}: {body}"
        );
    }
}

/// An endpoint that never answers 2xx: each event is retried for `--webhook-retry-for`
/// (counted across a SIGKILL: attempt numbers go on, never start again at 1), then its
/// attempt log says `failed` and the next event goes; after `--webhook-disable-after`
/// failing in a row the endpoint is disabled (its GET says so), and a replay enables it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_end_after_retry_for_and_an_endpoint_failing_too_long_is_disabled() {
    let dir = tempfile::tempdir().unwrap();
    let mut down = Receiver::new(
        dir.path(),
        "down",
        free_ports(1)[0],
        &["--fail-first", "100000"],
    );
    down.start();
    let mut flags = WEBHOOK_FLAGS.to_vec();
    flags.extend(["--webhook-retry-for", "3s", "--webhook-disable-after", "7s"]);
    let mut deployment = Deployment::embedded(dir.path(), &flags).await;
    use reqwest::Method;
    let (status, created) = deployment
        .call(
            Method::POST,
            "/api/v1/webhooks",
            Some(json!({"url": down.url(), "events": ["conversion.confirmed"]})),
        )
        .await;
    assert_eq!(status, 201);
    let id = created["id"].as_str().unwrap().to_owned();
    deployment
        .call(
            Method::PUT,
            &format!("/api/v1/referral-codes/{CODE}"),
            Some(json!({"mentor_id": "mentor-down"})),
        )
        .await;
    for i in 0..3 {
        deployment
            .confirmed_click(
                &format!("198.51.100.{}", i + 50),
                "Mozilla/5.0 (X11; Linux x86_64) Firefox/121.0",
                &format!("down-{i}"),
            )
            .await;
    }
    // A crash while the first event is being retried.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    deployment.kill_deliverer().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let endpoint = loop {
        let (_, endpoint) = deployment
            .call(Method::GET, &format!("/api/v1/webhooks/{id}"), None)
            .await;
        if endpoint["enabled"] == false {
            break endpoint;
        }
        assert!(Instant::now() < deadline, "never disabled: {endpoint}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(endpoint["disabled_at"].is_string());
    let (_, attempts) = deployment
        .call(
            Method::GET,
            &format!("/api/v1/webhooks/{id}/deliveries?limit=1000"),
            None,
        )
        .await;
    let attempts = attempts["data"].as_array().unwrap().clone();
    let mut by_event: Vec<(String, Vec<u64>, Vec<String>)> = Vec::new();
    for attempt in attempts.iter().rev() {
        let event = attempt["event_id"].as_str().unwrap().to_owned();
        if by_event.last().is_none_or(|(last, _, _)| *last != event) {
            by_event.push((event, Vec::new(), Vec::new()));
        }
        let (_, numbers, outcomes) = by_event.last_mut().unwrap();
        numbers.push(attempt["attempt"].as_u64().unwrap());
        outcomes.push(attempt["outcome"].as_str().unwrap().to_owned());
    }
    // The first event: retried past the crash with its numbering going on, then failed.
    let (_, numbers, outcomes) = &by_event[0];
    assert!(
        numbers.windows(2).all(|pair| pair[1] == pair[0] + 1),
        "{numbers:?}"
    );
    assert_eq!(
        outcomes.last().map(String::as_str),
        Some("failed"),
        "{outcomes:?}"
    );
    assert!(
        outcomes[..outcomes.len() - 1]
            .iter()
            .all(|outcome| outcome == "retrying")
    );
    // Then the next event went, and the endpoint was disabled on it (7 s failing in a row).
    assert!(by_event.len() >= 2, "{by_event:?}");
    let (_, _, last_outcomes) = by_event.last().unwrap();
    assert_eq!(last_outcomes.last().map(String::as_str), Some("failed"));
    // Disabled: no more attempts.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, later) = deployment
        .call(
            Method::GET,
            &format!("/api/v1/webhooks/{id}/deliveries?limit=1000"),
            None,
        )
        .await;
    assert_eq!(later["data"].as_array().unwrap().len(), attempts.len());
    // A replay enables it again.
    let (status, _) = deployment
        .call(
            Method::POST,
            &format!("/api/v1/webhooks/{id}/replay"),
            Some(json!({"since": "2020-01-01T00:00:00Z"})),
        )
        .await;
    assert_eq!(status, 202);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, endpoint) = deployment
            .call(Method::GET, &format!("/api/v1/webhooks/{id}"), None)
            .await;
        if endpoint["enabled"] == true {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a replay did not enable it: {endpoint}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Production with deliverers in their group: the group splits the endpoints (each event
/// reaches each endpoint exactly once while two run: no endpoint is served twice); a third
/// joins mid-stream and the endpoints are shared out again; one is SIGKILLed mid-stream and
/// its endpoints move to the live deliverers from their stored cursors. Every event reaches
/// every endpoint, in order, and the group's committed offsets end at the log's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliverers_in_their_group_split_the_endpoints_and_a_dead_ones_move_on() {
    use reqwest::Method;
    let dir = tempfile::tempdir().unwrap();
    let deployment = Deployment::production(dir.path()).await;
    let first = deployment.deliverer_port();
    let second_port = free_ports(1)[0];
    let second = deployment.another_deliverer(second_port, "deliver-second");
    // Both hold partitions of the log (3: two and one).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let held = (
            deployment
                .gauge(first, "referral_webhook_group_partitions")
                .await,
            deployment
                .gauge(second_port, "referral_webhook_group_partitions")
                .await,
        );
        if let (Some(a), Some(b)) = held
            && a >= 1.0
            && b >= 1.0
            && a + b == 3.0
        {
            break;
        }
        assert!(Instant::now() < deadline, "the group never split: {held:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, _) = deployment
        .call(
            Method::PUT,
            &format!("/api/v1/referral-codes/{CODE}"),
            Some(json!({"mentor_id": "mentor-group"})),
        )
        .await;
    assert!(status == 200 || status == 201);

    // Endpoints until each deliverer serves some (ids are random: usually the first 12).
    let ports = free_ports(32);
    let mut receivers: Vec<(Receiver, String)> = Vec::new();
    loop {
        for _ in 0..4 {
            let mut receiver = Receiver::new(
                dir.path(),
                &format!("receiver-{}", receivers.len()),
                ports[receivers.len()],
                &[],
            );
            receiver.start();
            let (status, created) = deployment
                .call(
                    Method::POST,
                    "/api/v1/webhooks",
                    Some(json!({"url": receiver.url(), "events": ["conversion.confirmed"]})),
                )
                .await;
            assert_eq!(status, 201, "{created}");
            receivers.push((receiver, created["secret"].as_str().unwrap().to_owned()));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let served = loop {
            let served = (
                deployment
                    .gauge(first, "referral_webhook_served_endpoints")
                    .await
                    .unwrap_or(0.0),
                deployment
                    .gauge(second_port, "referral_webhook_served_endpoints")
                    .await
                    .unwrap_or(0.0),
            );
            if served.0 + served.1 == receivers.len() as f64 {
                break served;
            }
            assert!(
                Instant::now() < deadline,
                "{served:?} endpoints served of {}",
                receivers.len()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        if (served.0 >= 1.0 && served.1 >= 1.0) || receivers.len() + 4 > ports.len() {
            assert!(served.0 >= 1.0 && served.1 >= 1.0, "{served:?}");
            break;
        }
    }

    let mut expected: Vec<(String, String)> = Vec::new();
    let confirm = |i: usize| {
        let deployment = &deployment;
        async move {
            let id = deployment
                .confirmed_click(
                    &format!("203.0.113.{}", i + 1),
                    &format!("Mozilla/5.0 (X11; Linux x86_64) Firefox/122.{i}"),
                    &format!("group-{i}"),
                )
                .await;
            ("conversion.confirmed".to_owned(), id)
        }
    };
    // `resent`: how many requests beyond one per event an endpoint may have had (0: exactly
    // once; None: any, as after a SIGKILL).
    let all_received = |expected: Vec<(String, String)>, resent: Option<u64>| {
        let receivers = &receivers;
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            for (receiver, secret) in receivers {
                loop {
                    let report = receiver.verify(secret);
                    assert_eq!(report["failed"], json!([]), "{}", receiver.url());
                    let got = received(&report);
                    assert!(
                        expected.starts_with(&got),
                        "{}: out of order:\n got {got:?}\n want {expected:?}",
                        receiver.url()
                    );
                    if got == expected {
                        if let Some(resent) = resent {
                            let requests = report["requests"].as_u64().unwrap();
                            assert!(
                                requests <= expected.len() as u64 + resent,
                                "{}: {requests} requests for {} events: an endpoint served by two deliverers",
                                receiver.url(),
                                expected.len()
                            );
                        }
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "{}: {} of {} events after 60 s",
                        receiver.url(),
                        got.len(),
                        expected.len()
                    );
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        }
    };
    for i in 0..4 {
        expected.push(confirm(i).await);
    }
    all_received(expected.clone(), Some(0)).await;
    // A third deliverer joins mid-stream: the endpoints are shared out again while events
    // go out, still in order; an event in flight at a revocation is sent again by its next
    // deliverer (a rebalance or two: at most two resent per endpoint; two deliverers
    // serving one endpoint would resend every event).
    expected.push(confirm(4).await);
    let third_port = free_ports(1)[0];
    let _third = deployment.another_deliverer(third_port, "deliver-third");
    for i in 5..9 {
        expected.push(confirm(i).await);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    all_received(expected.clone(), Some(2)).await;
    // Settled (every cursor stored past them), then one deliverer dies mid-stream.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    expected.push(confirm(9).await);
    second.kill();
    // Its replacement joins, as Kubernetes starts one, once the dead one's session is over
    // (see `Deployment::kill_deliverer`).
    tokio::time::sleep(GROUP_SESSION + Duration::from_secs(1)).await;
    let fourth_port = free_ports(1)[0];
    let _fourth = deployment.another_deliverer(fourth_port, "deliver-fourth");
    for i in 10..14 {
        expected.push(confirm(i).await);
    }
    all_received(expected.clone(), None).await;
    let mut served = 0.0;
    for port in [first, third_port, fourth_port] {
        served += deployment
            .gauge(port, "referral_webhook_served_endpoints")
            .await
            .unwrap_or(0.0);
    }
    assert_eq!(
        served,
        receivers.len() as f64,
        "the live deliverers serve every endpoint"
    );
    // The group's committed offsets are the deliverers' position on the log: with every
    // endpoint caught up, each partition's end (the dead one's too, committed by its new
    // holder).
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let reader: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", deployment.brokers())
        .set("group.id", "referral-webhooks")
        .create()
        .unwrap();
    let topic = "referral-events";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut partitions = rdkafka::TopicPartitionList::new();
        for partition in 0..3 {
            partitions.add_partition(topic, partition);
        }
        let committed = reader
            .committed_offsets(partitions, Duration::from_secs(5))
            .unwrap();
        let mut behind = Vec::new();
        let mut written = 0;
        for partition in 0..3 {
            let (_, end) = reader
                .fetch_watermarks(topic, partition, Duration::from_secs(5))
                .unwrap();
            written += end;
            let at = committed
                .find_partition(topic, partition)
                .map(|element| element.offset());
            let caught_up = match at {
                Some(rdkafka::Offset::Offset(at)) => at == end,
                _ => end == 0,
            };
            if !caught_up {
                behind.push((partition, at, end));
            }
        }
        assert!(written > 0);
        if behind.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the group's position is not the log's end: {behind:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
