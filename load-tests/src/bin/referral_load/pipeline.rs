//! The whole pipeline on this machine, started by the load tool itself, with the faults the
//! scenarios inject.
//!
//! - Kafka topology: tansu (SQLite engine, so a broker restart keeps the log, as a Kafka
//!   cluster does), ClickHouse 18.16, `referral-aggregator migrate`, then
//!   `referral-aggregator run`, `referral-api` and `referral-ingest`, each on its own port.
//! - Embedded topology: `referral-api` alone (edge, log, aggregator and store in one
//!   process); its "aggregator" fault kills that process.
//!
//! The service binaries are taken from the directory of this executable (the same cargo
//! profile), so `cargo build --workspace --bins` is all the tool needs.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use referral_load_tests::bench::Service;
use referral_load_tests::services::{ClickHouseServer, TansuBroker, free_ports};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

use crate::http::{Call, HttpClient, Outcome};

type Result<T, E = String> = std::result::Result<T, E>;

const DATABASE: &str = "referral";
/// How long a service may take to answer `/readyz` 200.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Topology {
    /// Kafka + ClickHouse when tansu and clickhouse-server are installed, else embedded.
    Auto,
    Kafka,
    Embedded,
}

/// Whether tansu and a ClickHouse server can be found (as the test support finds them).
pub fn kafka_topology_installed() -> bool {
    let on_path = |name: &str| {
        std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()))
    };
    let tansu = std::env::var_os("REFERRAL_TANSU").is_some() || on_path("tansu");
    let clickhouse = std::env::var_os("REFERRAL_CLICKHOUSE_SERVER").is_some()
        || on_path("clickhouse-server")
        || Path::new("/usr/sbin/clickhouse-server").is_file();
    tansu && clickhouse
}

/// A component the scenarios can kill and restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    Ingest,
    Aggregator,
    Api,
}

/// How to start one of our binaries again, identically.
struct Launch {
    name: &'static str,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    port: u16,
}

struct Running {
    launch: Launch,
    service: Option<Service>,
}

pub struct Pipeline {
    pub topology: Topology,
    broker: Option<TansuBroker>,
    clickhouse: Option<ClickHouseServer>,
    /// Embedded: only `api` (which is also the edge and the aggregator).
    ingest: Option<Running>,
    aggregator: Option<Running>,
    api: Running,
    logs: TempDir,
    _data: TempDir,
    /// Peak RSS (VmHWM) of each process seen so far, by name: the maximum over restarts.
    peak_rss: Vec<(String, u64)>,
    client: HttpClient,
    /// The admin token of this run's API (random; the API holds only its SHA-256).
    api_token: String,
}

/// Peak resident memory of a process (VmHWM), in bytes.
pub fn peak_rss_bytes(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn binary_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(|error| format!("cannot find myself: {error}"))?;
    exe.parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| "this executable has no directory".to_owned())
}

fn binary(name: &str) -> Result<PathBuf> {
    let path = binary_dir()?.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} not found: build the services with the same profile first \
             (cargo build --workspace --bins, add --release for release)",
            path.display()
        ))
    }
}

impl Launch {
    fn spawn(&self, logs: &Path) -> Result<Service> {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let mut env: Vec<(&str, String)> = self
            .env
            .iter()
            .map(|(key, value)| (key.as_str(), value.clone()))
            .collect();
        // The services log at `warn`; REFERRAL_LOAD_SERVICE_LOG (a RUST_LOG filter) for more.
        if let Ok(filter) = std::env::var("REFERRAL_LOAD_SERVICE_LOG") {
            env.push(("RUST_LOG", filter));
        }
        Service::spawn(self.name, &self.program, &args, &env, logs)
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// Options of the local pipeline.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    pub topology: Topology,
    pub partitions: u32,
    /// Extra `REFERRAL_*` settings for the aggregator (batch sizes, ...).
    pub aggregator_env: Vec<(String, String)>,
    /// tansu on its SQLite engine (the log survives a broker restart) instead of memory.
    pub durable_broker: bool,
}

impl Pipeline {
    pub async fn start(options: &PipelineOptions) -> Result<Self> {
        let topology = match options.topology {
            Topology::Auto if kafka_topology_installed() => Topology::Kafka,
            Topology::Auto => Topology::Embedded,
            other => other,
        };
        let logs = tempfile::Builder::new()
            .prefix("referral-load-logs-")
            .tempdir()
            .map_err(|error| format!("cannot create a temp dir: {error}"))?;
        let data = tempfile::Builder::new()
            .prefix("referral-load-data-")
            .tempdir()
            .map_err(|error| format!("cannot create a temp dir: {error}"))?;
        let client = HttpClient::new(4, Duration::from_secs(5), None);
        let ports = free_ports(3);
        let api_token = format!("referral-load-{:032x}", rand::random::<u128>());
        // As a deployment should: the setting holds the token's digest, not the token.
        let api_tokens = env(
            "REFERRAL_API_TOKENS",
            format!("sha256:{}=admin", hex::encode(Sha256::digest(&api_token))),
        );
        let mut pipeline = match topology {
            Topology::Embedded => {
                let api = Launch {
                    name: "referral-api",
                    program: binary("referral-api")?,
                    args: Vec::new(),
                    env: vec![
                        env("REFERRAL_LISTEN", format!("127.0.0.1:{}", ports[0])),
                        env("REFERRAL_DATA_DIR", data.path().display().to_string()),
                        api_tokens,
                        env("REFERRAL_RATE_LIMIT_PER_IP", "0"),
                        env("REFERRAL_RATE_LIMIT_PER_CODE", "0"),
                        env("REFERRAL_RATE_LIMIT_GLOBAL", "0"),
                        // One generator stands in for many clients (as with the limits).
                        env("REFERRAL_MAX_CONNECTIONS_PER_CLIENT", "0"),
                    ],
                    port: ports[0],
                };
                Self {
                    topology,
                    broker: None,
                    clickhouse: None,
                    ingest: None,
                    aggregator: None,
                    api: Running {
                        launch: api,
                        service: None,
                    },
                    logs,
                    _data: data,
                    peak_rss: Vec::new(),
                    client,
                    api_token,
                }
            }
            Topology::Kafka | Topology::Auto => {
                let broker = if options.durable_broker {
                    TansuBroker::start_durable()
                } else {
                    TansuBroker::start()
                };
                let clickhouse = ClickHouseServer::start();
                let kafka = env("REFERRAL_KAFKA_BROKERS", broker.address());
                let clickhouse_url = env("REFERRAL_CLICKHOUSE_URL", clickhouse.http_url());
                let database = env("REFERRAL_CLICKHOUSE_DATABASE", DATABASE);
                let partitions = env("REFERRAL_KAFKA_PARTITIONS", options.partitions.to_string());
                let aggregator_program = binary("referral-aggregator")?;
                let migrate = Launch {
                    name: "referral-aggregator-migrate",
                    program: aggregator_program.clone(),
                    args: vec!["migrate".to_owned()],
                    env: vec![
                        kafka.clone(),
                        clickhouse_url.clone(),
                        database.clone(),
                        partitions.clone(),
                    ],
                    port: 0,
                };
                migrate
                    .spawn(logs.path())?
                    .wait_success(Duration::from_secs(120))?;
                let mut aggregator_env = vec![
                    kafka.clone(),
                    clickhouse_url.clone(),
                    database.clone(),
                    partitions,
                    env("REFERRAL_LISTEN", format!("127.0.0.1:{}", ports[1])),
                    // A killed aggregator's partitions move after this; tansu needs short
                    // heartbeats to join a group quickly.
                    env("REFERRAL_KAFKA_SESSION_TIMEOUT", "6s"),
                    env("REFERRAL_NO_MIGRATE", "true"),
                ];
                aggregator_env.extend(options.aggregator_env.iter().cloned());
                let aggregator = Launch {
                    name: "referral-aggregator",
                    program: aggregator_program,
                    args: vec!["run".to_owned()],
                    env: aggregator_env,
                    port: ports[1],
                };
                let api = Launch {
                    name: "referral-api",
                    program: binary("referral-api")?,
                    args: Vec::new(),
                    env: vec![
                        kafka.clone(),
                        clickhouse_url,
                        database,
                        env("REFERRAL_LISTEN", format!("127.0.0.1:{}", ports[0])),
                        api_tokens,
                    ],
                    port: ports[0],
                };
                let ingest_port = free_ports(1)[0];
                let ingest = Launch {
                    name: "referral-ingest",
                    program: binary("referral-ingest")?,
                    args: Vec::new(),
                    env: vec![
                        kafka,
                        env("REFERRAL_LISTEN", format!("127.0.0.1:{ingest_port}")),
                        env("REFERRAL_RATE_LIMIT_PER_IP", "0"),
                        env("REFERRAL_RATE_LIMIT_PER_CODE", "0"),
                        env("REFERRAL_RATE_LIMIT_GLOBAL", "0"),
                        // One generator stands in for many clients (as with the limits).
                        env("REFERRAL_MAX_CONNECTIONS_PER_CLIENT", "0"),
                    ],
                    port: ingest_port,
                };
                Self {
                    topology,
                    broker: Some(broker),
                    clickhouse: Some(clickhouse),
                    ingest: Some(Running {
                        launch: ingest,
                        service: None,
                    }),
                    aggregator: Some(Running {
                        launch: aggregator,
                        service: None,
                    }),
                    api: Running {
                        launch: api,
                        service: None,
                    },
                    logs,
                    _data: data,
                    peak_rss: Vec::new(),
                    client,
                    api_token,
                }
            }
        };
        for component in [Component::Aggregator, Component::Api, Component::Ingest] {
            if pipeline.running(component).is_some() {
                pipeline.start_component(component).await?;
            }
        }
        Ok(pipeline)
    }

    fn running(&mut self, component: Component) -> Option<&mut Running> {
        match component {
            Component::Ingest => self.ingest.as_mut(),
            Component::Aggregator => self.aggregator.as_mut(),
            Component::Api => Some(&mut self.api),
        }
    }

    /// Base URL of the click edge.
    pub fn ingest_url(&self) -> String {
        self.ingest
            .as_ref()
            .map_or_else(|| self.api.launch.url(), |ingest| ingest.launch.url())
    }

    pub fn api_url(&self) -> String {
        self.api.launch.url()
    }

    /// The admin token of this run's API.
    pub fn api_token(&self) -> &str {
        &self.api_token
    }

    /// Starts a component and waits until it answers `/readyz` 200.
    pub async fn start_component(&mut self, component: Component) -> Result<()> {
        let logs = self.logs.path().to_path_buf();
        let Some(running) = self.running(component) else {
            return Ok(());
        };
        let service = running.launch.spawn(&logs)?;
        let url = format!("{}/readyz", running.launch.url());
        running.service = Some(service);
        let started = Instant::now();
        loop {
            if let Some(Outcome::Answered { status, .. }) =
                Some(self.client.send(Call::get(url.clone()), false).await)
                && status.as_u16() == 200
            {
                return Ok(());
            }
            let Some(running) = self.running(component) else {
                return Ok(());
            };
            if let Some(service) = running.service.as_mut() {
                service.check_alive()?;
            }
            if started.elapsed() > READY_TIMEOUT {
                let tail = running
                    .service
                    .as_ref()
                    .map(Service::log_tail)
                    .unwrap_or_default();
                return Err(format!(
                    "{} was not ready within {READY_TIMEOUT:?}; its log:\n{tail}",
                    running.launch.name
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL: a crash, as far as the component can tell.
    pub fn kill_component(&mut self, component: Component) {
        self.sample_rss();
        if let Some(running) = self.running(component) {
            drop(running.service.take());
        }
    }

    /// Kills tansu (SIGKILL); `start_broker` brings it back on the same port and data.
    pub fn kill_broker(&mut self) {
        self.sample_rss();
        if let Some(broker) = self.broker.as_mut() {
            broker.stop();
        }
    }

    pub fn start_broker(&mut self) {
        if let Some(broker) = self.broker.as_mut() {
            broker.restart();
        }
    }

    pub fn kill_clickhouse(&mut self) {
        self.sample_rss();
        if let Some(clickhouse) = self.clickhouse.as_mut() {
            clickhouse.stop();
        }
    }

    pub fn start_clickhouse(&mut self) {
        if let Some(clickhouse) = self.clickhouse.as_mut() {
            clickhouse.restart();
        }
    }

    /// Records the current peak RSS of every running process (kept: the max per name).
    pub fn sample_rss(&mut self) {
        let mut seen = self.processes();
        seen.push(("referral-load (this tool)", std::process::id().to_string()));
        for (name, pid) in seen {
            let Some(bytes) = pid.parse().ok().and_then(peak_rss_bytes) else {
                continue;
            };
            match self.peak_rss.iter_mut().find(|(known, _)| known == name) {
                Some((_, peak)) => *peak = (*peak).max(bytes),
                None => self.peak_rss.push((name.to_owned(), bytes)),
            }
        }
    }

    /// Port of the aggregator's HTTP listener (`/metrics`), on the Kafka topology.
    pub fn aggregator_port(&self) -> Option<u16> {
        self.aggregator.as_ref().map(|running| running.launch.port)
    }

    /// (name, pid) of every process of the pipeline running now, for CPU accounting.
    pub fn processes(&self) -> Vec<(&'static str, String)> {
        let mut processes = Vec::new();
        for running in [
            self.ingest.as_ref(),
            self.aggregator.as_ref(),
            Some(&self.api),
        ]
        .into_iter()
        .flatten()
        {
            if let Some(pid) = running.service.as_ref().and_then(Service::pid) {
                processes.push((running.launch.name, pid.to_string()));
            }
        }
        if let Some(pid) = self.broker.as_ref().and_then(TansuBroker::pid) {
            processes.push(("tansu (broker)", pid.to_string()));
        }
        if let Some(pid) = self.clickhouse.as_ref().and_then(ClickHouseServer::pid) {
            processes.push(("clickhouse-server", pid.to_string()));
        }
        processes
    }

    pub fn peak_rss(&mut self) -> Vec<(String, u64)> {
        self.sample_rss();
        self.peak_rss.clone()
    }

    /// Whether tansu panicked (its log says so): a broker failure, not the pipeline's.
    pub fn broker_panicked(&self) -> bool {
        self.broker
            .as_ref()
            .is_some_and(|broker| broker.log_tail(100_000).contains("panicked at"))
    }

    /// Log tails of every component, for a failed run.
    pub fn log_tails(&self) -> String {
        let mut out = String::new();
        for running in [
            self.ingest.as_ref(),
            self.aggregator.as_ref(),
            Some(&self.api),
        ]
        .into_iter()
        .flatten()
        {
            if let Some(service) = &running.service {
                out.push_str(&format!(
                    "--- {}\n{}\n",
                    running.launch.name,
                    service.log_tail()
                ));
            }
        }
        if let Some(broker) = &self.broker {
            out.push_str(&format!("--- tansu\n{}\n", broker.log_tail(20)));
        }
        out
    }

    /// Stops every component (SIGTERM with a drain, then the external services).
    /// The ERROR lines (and panics) our services logged so far, every start of every
    /// component.
    pub fn logged_errors(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(self.logs.path()) else {
            return vec![format!("cannot read the logs in {:?}", self.logs.path())];
        };
        let mut errors = Vec::new();
        for entry in entries.flatten() {
            let text = fs::read_to_string(entry.path()).unwrap_or_default();
            let name = entry.file_name().to_string_lossy().into_owned();
            errors.extend(
                text.lines()
                    .filter(|line| {
                        line.split_whitespace().nth(1) == Some("ERROR")
                            || line.contains("panicked at")
                    })
                    .map(|line| format!("{name}: {line}")),
            );
        }
        errors
    }

    pub fn stop(mut self) {
        self.sample_rss();
        for component in [Component::Ingest, Component::Api, Component::Aggregator] {
            if let Some(running) = self.running(component)
                && let Some(service) = running.service.take()
            {
                service.stop();
            }
        }
    }
}

fn env(key: &str, value: impl Into<String>) -> (String, String) {
    (key.to_owned(), value.into())
}
