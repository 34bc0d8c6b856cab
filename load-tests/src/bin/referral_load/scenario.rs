//! A run from start to verdict: set up the population's codes, drive the load (with a fault
//! injected on a local pipeline), wait for the pipeline to drain, verify, report.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::Method;
use serde_json::json;

use referral_load_tests::bench::{CpuWindow, FlushStats, Profile};

use crate::driver::{Endpoints, LoadPlan, Mode, Run, drive, lock};
use crate::http::{Call, HttpClient, Outcome};
use crate::ledger::{Channel, Sent};
use crate::links::LinkClient;
use crate::pipeline::{Component, Pipeline, PipelineOptions, Topology};
use crate::report::{FaultEvent, RunReport};
use crate::traffic::{CLICK_PATH, Population};
use crate::verify::{self, Verification};

type Result<T, E = String> = std::result::Result<T, E>;

/// What goes wrong during a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    /// No fault: load, drain, verify.
    None,
    /// SIGKILL the aggregator, start it again (embedded: the whole referral-api process).
    AggregatorKill,
    /// SIGKILL the broker, start it again on its data (Kafka topology only).
    BrokerRestart,
    /// SIGKILL ClickHouse, start it again on its data (Kafka topology only).
    ClickhouseRestart,
    /// SIGKILL the edge during load, start it again (embedded: the referral-api process).
    IngestRestart,
}

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "load",
            Self::AggregatorKill => "aggregator-kill",
            Self::BrokerRestart => "broker-restart",
            Self::ClickhouseRestart => "clickhouse-restart",
            Self::IngestRestart => "ingest-restart",
        }
    }
}

/// The population and load of a run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub plan: LoadPlan,
    pub mentors: usize,
    pub codes: usize,
    pub zipf_exponent: f64,
    pub request_timeout: Duration,
    pub drain_timeout: Duration,
    /// Processes (name, pid) whose CPU is measured over the load phase.
    pub cpu_of: Vec<(&'static str, String)>,
}

impl RunOptions {
    pub fn describe(&self) -> String {
        match self.plan.mode {
            Mode::Rate(rate) => format!(
                "open loop, {rate:.0} clicks/s for {} s",
                self.plan.duration.as_secs()
            ),
            Mode::Max { connections } => format!(
                "max throughput, {connections} connections for {} s",
                self.plan.duration.as_secs()
            ),
        }
    }
}

/// The fault, where it happens, and how long the component stays down.
#[derive(Debug, Clone)]
pub struct ScenarioOptions {
    pub fault: Fault,
    pub pipeline: PipelineOptions,
    /// When the fault hits, as a share of the load's duration.
    pub fault_at: f64,
    /// How long the component stays down; default: [`default_down_for`].
    pub down_for: Option<Duration>,
    pub report_dir: Option<PathBuf>,
    /// Profile every process during this window of the load (the report's `profile`).
    pub profile: Option<ProfileWindow>,
}

/// When to profile the pipeline's processes, from the load's start, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct ProfileWindow {
    pub at: Duration,
    pub length: Duration,
}

fn run_id(seed: u64) -> String {
    // Short, unique per run, valid in codes and ids: base36 of time and seed.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0);
    let mut value = (now % 36u64.pow(6)) ^ (seed % 1296);
    let mut text = String::new();
    for _ in 0..6 {
        let digit = (value % 36) as u32;
        text.push(char::from_digit(digit, 36).unwrap_or('0'));
        value /= 36;
    }
    text
}

/// The click that proved the edge knows the codes: acknowledged, or sent without an id.
struct Probe {
    acked: Option<(String, Sent)>,
    /// Code and count of the probe's attempts that may have been stored without a 201.
    unanswered: (usize, u64),
}

/// Creates every code of the population through the API, each with its redirect link's
/// destination, then waits until the edge resolves the last one (it learns codes
/// asynchronously in the Kafka topology). Returns the clicks of that wait.
async fn create_codes(
    population: &Population,
    endpoints: &Endpoints,
    client: &HttpClient,
) -> Result<Option<Probe>> {
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    for (index, (code, mentor)) in population.codes.iter().enumerate() {
        // Each creation waits for the writer's verdict (one flush): many in flight share one.
        if tasks.len() >= 64
            && let Some(joined) = tasks.join_next().await
        {
            joined.map_err(|error| error.to_string())??;
        }
        let url = format!("{}/api/v1/referral-codes/{code}", endpoints.api);
        let body = json!({
            "mentor_id": population.mentors[*mentor],
            "destination_url": population.destination(index),
        })
        .to_string();
        let client = client.clone();
        tasks.spawn(async move {
            for attempt in 0..5u64 {
                match client
                    .send(Call::json(Method::PUT, url.clone(), body.clone()), true)
                    .await
                {
                    Outcome::Answered { status, .. } if status.is_success() => return Ok(()),
                    Outcome::Answered { status, body } if status.is_client_error() => {
                        return Err(format!(
                            "PUT {url} answered {status}: {}",
                            String::from_utf8_lossy(&body)
                        ));
                    }
                    _ => tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await,
                }
            }
            Err(format!("PUT {url} kept failing"))
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.map_err(|error| error.to_string())??;
    }
    eprintln!(
        "referral-load: {} codes created in {:.1} s",
        population.codes.len(),
        started.elapsed().as_secs_f64()
    );
    // The edge must know the last code before the load starts.
    let Some((last, mentor)) = population.codes.last() else {
        return Ok(None);
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let code = population.codes.len() - 1;
    let mut unanswered = 0;
    loop {
        // No user agent: a bot's click, for the verifier like any other.
        let call = Call::json(
            Method::POST,
            format!("{}{CLICK_PATH}", endpoints.ingest),
            json!({"code": last}).to_string(),
        );
        let outcome = client.send(call, false).await;
        if let (Some(201), Some(body)) = (outcome.status(), outcome.json()) {
            let id = body["id"].as_str().unwrap_or_default().to_owned();
            let sent = Sent {
                mentor: *mentor,
                code,
                occurred_at: body["occurred_at"].as_str().map(str::to_owned),
                user_agent: None,
                ip: None,
            };
            return Ok(Some(Probe {
                acked: Some((id, sent)),
                unanswered: (code, unanswered),
            }));
        }
        // An unknown code (422) stores nothing; anything else may have.
        if outcome.status() != Some(422) {
            unanswered += 1;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the edge did not resolve {last} within 30 s of its creation: {outcome:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A killed aggregator stays down longer than its group session (6 s here) on the Kafka
/// topology: tansu 0.6.0 does not move a dead member's partitions to a member that joined
/// before the dead one's session expired (measured: the restarted aggregator stayed with
/// no partitions for the 40+ s of the run; Apache Kafka rebalances when the session expires).
/// Everything else comes back after 2 s.
pub fn default_down_for(fault: Fault, topology: Topology) -> Duration {
    match (fault, topology) {
        (Fault::AggregatorKill, Topology::Kafka) => Duration::from_secs(8),
        _ => Duration::from_secs(2),
    }
}

/// What a run measured and found.
pub struct LoadOutcome {
    pub run: Arc<Run>,
    /// Seconds of the load phase.
    pub seconds: f64,
    pub faults: Vec<FaultEvent>,
    pub verification: Verification,
    /// Cores used over the load phase by each of `RunOptions::cpu_of` and this tool.
    pub cpu: Vec<(&'static str, f64)>,
}

/// Drives a run against endpoints that already exist, then drains and verifies.
pub async fn load_and_verify(
    endpoints: Endpoints,
    options: &RunOptions,
    run_label: &str,
    before_load: impl FnOnce(Arc<Run>) -> Option<std::thread::JoinHandle<Vec<FaultEvent>>>,
) -> Result<LoadOutcome> {
    let id = run_id(options.plan.seed);
    let population = Population::new(&id, options.mentors, options.codes, options.zipf_exponent)?;
    let max_idle = match options.plan.mode {
        Mode::Max { connections } => connections,
        Mode::Rate(_) => options.plan.max_in_flight.min(512),
    };
    let client = HttpClient::new(
        max_idle,
        options.request_timeout,
        endpoints.api_token.clone(),
    );
    eprintln!(
        "referral-load {run_label}: run {id}, {} mentors, {} codes",
        options.mentors, options.codes
    );
    let probe = create_codes(&population, &endpoints, &client).await?;
    let links = LinkClient::new(max_idle, options.request_timeout);
    let run = Run::new(population, endpoints, client, links, verify::dedup_window());
    if let Some(Probe {
        acked,
        unanswered: (code, unanswered),
    }) = probe
    {
        let mut ledger = lock(&run.ledger);
        if let Some((id, sent)) = acked {
            ledger.acked(id, sent, Channel::Post);
        }
        for _ in 0..unanswered {
            ledger.attempted(code);
        }
    }
    let injector = before_load(run.clone());
    let mut processes = options.cpu_of.clone();
    processes.push(("referral-load (this tool)", "self".to_owned()));
    let cpu = CpuWindow::start(&processes);
    let elapsed = drive(&run, &options.plan).await;
    let cpu = cpu.finish();
    let faults = match injector {
        Some(handle) => handle
            .join()
            .map_err(|_| "the fault injector panicked".to_owned())?,
        None => Vec::new(),
    };
    eprintln!(
        "referral-load {run_label}: load done ({} acknowledged clicks), draining",
        lock(&run.ledger).acked_count()
    );
    // A pipeline that never drains still gets its verdict: what is missing counts as lost.
    let drained = verify::drain(&run, options.drain_timeout).await;
    let mut verification = verify::verify(&run).await?;
    match drained {
        Ok(seconds) => verification.drain_seconds = seconds,
        Err(error) => {
            eprintln!("referral-load {run_label}: {error}");
            verification.drain_seconds = options.drain_timeout.as_secs_f64();
            verification.problems.insert(0, error);
        }
    }
    Ok(LoadOutcome {
        run,
        seconds: elapsed.as_secs_f64(),
        faults,
        verification,
        cpu,
    })
}

/// Starts the local pipeline, runs the scenario, stops the pipeline; the report says
/// whether the verifier passed.
pub async fn run_scenario(scenario: &ScenarioOptions, options: &RunOptions) -> Result<RunReport> {
    let pipeline = Pipeline::start(&scenario.pipeline).await?;
    let topology = pipeline.topology;
    if topology == Topology::Embedded
        && matches!(
            scenario.fault,
            Fault::BrokerRestart | Fault::ClickhouseRestart
        )
    {
        return Err(format!(
            "{} needs the Kafka topology (tansu and clickhouse-server installed; \
             scripts/install-test-services.sh installs them)",
            scenario.fault.name()
        ));
    }
    let topology_name = match topology {
        Topology::Embedded => "embedded log and store, one referral-api process".to_owned(),
        _ => format!(
            "Kafka (tansu, {} engine) + ClickHouse 18.16; referral-ingest, \
             referral-aggregator, referral-api as separate processes",
            if scenario.pipeline.durable_broker {
                "SQLite"
            } else {
                "memory"
            }
        ),
    };
    eprintln!(
        "referral-load {}: pipeline up ({topology_name})",
        scenario.fault.name()
    );
    let endpoints = Endpoints {
        ingest: pipeline.ingest_url(),
        api: pipeline.api_url(),
        api_token: Some(pipeline.api_token().to_owned()),
    };
    let options = &RunOptions {
        cpu_of: pipeline.processes(),
        ..options.clone()
    };
    let aggregator_port = pipeline.aggregator_port();
    let pipeline = Arc::new(std::sync::Mutex::new(Some(pipeline)));
    let fault = scenario.fault;
    let at = options
        .plan
        .duration
        .mul_f64(scenario.fault_at.clamp(0.0, 1.0));
    let down_for = scenario
        .down_for
        .unwrap_or_else(|| default_down_for(fault, topology));
    let injector_pipeline = pipeline.clone();
    let profiled = scenario
        .profile
        .map(|window| (window, options.cpu_of.clone(), aggregator_port));
    let profiler = Arc::new(std::sync::Mutex::new(None));
    let profiler_slot = profiler.clone();
    let outcome = load_and_verify(endpoints, options, fault.name(), move |run| {
        if let Some((window, processes, port)) = profiled {
            let run = run.clone();
            *lock(&profiler_slot) = Some(std::thread::spawn(move || {
                profile_pipeline(&run, window, &processes, port)
            }));
        }
        (fault != Fault::None).then(|| {
            std::thread::spawn(move || inject(&injector_pipeline, &run, fault, at, down_for))
        })
    })
    .await;
    let mut pipeline = lock(&pipeline)
        .take()
        .ok_or_else(|| "the pipeline was lost by the fault injector".to_owned())?;
    let LoadOutcome {
        run,
        seconds,
        faults,
        verification,
        cpu,
    } = match outcome {
        Ok(outcome) => outcome,
        Err(error) => {
            let tails = pipeline.log_tails();
            pipeline.stop();
            return Err(format!("{error}\n{tails}"));
        }
    };
    let profiler = lock(&profiler).take();
    let profile = match profiler.map(std::thread::JoinHandle::join) {
        Some(Ok(window)) => window.summarize(),
        Some(Err(_)) => vec!["no profile: the profiler thread panicked".to_owned()],
        None => Vec::new(),
    };
    let mut verification = verification;
    if pipeline.broker_panicked() {
        verification.problems.insert(
            0,
            "tansu panicked during the run (see its log): tansu 0.6.0's SQLite engine fails \
             an idempotent producer whose epoch was bumped, then serves no client"
                .to_owned(),
        );
    }
    let peak_rss = pipeline.peak_rss();
    if !verification.passed() {
        eprintln!("{}", pipeline.log_tails());
    }
    pipeline.stop();
    let recorder = lock(&run.recorder);
    let report = RunReport::new(
        fault.name(),
        &topology_name,
        options.describe(),
        seconds,
        (options.mentors, options.codes),
        &recorder,
        faults,
        verification,
        peak_rss,
    )
    .with_cpu(cpu);
    let report = RunReport { profile, ..report };
    if let Some(dir) = &scenario.report_dir {
        report.write(dir, fault.name())?;
        eprintln!("referral-load: report written to {}", dir.display());
    }
    Ok(report)
}

/// What the profiler thread recorded: the window, each process's `perf` data (summarized
/// after the run, as `perf report` takes CPU of its own), the aggregator's flushes then.
struct RecordedWindow {
    header: String,
    profiles: Vec<Profile>,
    flushes: Option<String>,
    /// Holds the profiles' data until they are summarized.
    _dir: Option<tempfile::TempDir>,
}

impl RecordedWindow {
    /// One line per process, then the flushes' (the report's `profile`).
    fn summarize(self) -> Vec<String> {
        let mut lines = vec![self.header];
        lines.extend(
            self.profiles
                .into_iter()
                .map(|profile| profile.summarize(6).line()),
        );
        lines.extend(self.flushes);
        lines
    }
}

/// Runs on its own thread: waits for the window, records every process of the pipeline and
/// this tool with `perf` at once, and scrapes the aggregator's flush account around it.
fn profile_pipeline(
    run: &Run,
    window: ProfileWindow,
    processes: &[(&'static str, String)],
    aggregator_port: Option<u16>,
) -> RecordedWindow {
    std::thread::sleep(window.at.saturating_sub(run.started.elapsed()));
    let from = run.elapsed_seconds();
    let header = format!(
        "`perf record -F 499 -p PID` of each process from {from:.0} s to {:.0} s of the \
         load (a recorder that failed to attach is started again for the rest), `perf report \
         --no-children --sort comm|sym`: the top threads and functions by share of the \
         process's samples; flushes counted from the aggregator's /metrics at both ends",
        from + window.length.as_secs_f64()
    );
    let Ok(dir) = tempfile::tempdir() else {
        return RecordedWindow {
            header: format!("{header}: none, no temporary directory"),
            profiles: Vec::new(),
            flushes: None,
            _dir: None,
        };
    };
    let before = aggregator_port.and_then(FlushStats::try_scrape);
    let own = std::process::id().to_string();
    let mut profiles: Vec<Profile> = processes
        .iter()
        .map(|(name, pid)| (*name, pid.as_str()))
        .chain([("referral-load (this tool)", own.as_str())])
        .map(|(name, pid)| Profile::start(name, pid, window.length, dir.path()))
        .collect();
    profiles = Profile::attached(profiles);
    for profile in &mut profiles {
        profile.wait();
    }
    let after = aggregator_port.and_then(FlushStats::try_scrape);
    let flushes = match (before, after) {
        (Some(before), Some(after)) => {
            let flushes = after.since(&before);
            Some(if flushes.flushes() == 0 {
                "**referral-aggregator's flushes** over the window: none".to_owned()
            } else {
                format!(
                    "**referral-aggregator's flushes** over the window: {}; {}",
                    flushes.summary(),
                    flushes.insert_shares()
                )
            })
        }
        (None, None) => None,
        _ => Some(
            "**referral-aggregator's flushes**: its /metrics did not answer at both ends of \
             the window"
                .to_owned(),
        ),
    };
    RecordedWindow {
        header,
        profiles,
        flushes,
        _dir: Some(dir),
    }
}

/// Runs on its own thread with its own runtime: kills the component at `at` after the load
/// started, keeps it down for `down_for`, starts it again. Returns the fault events.
fn inject(
    pipeline: &std::sync::Mutex<Option<Pipeline>>,
    run: &Run,
    fault: Fault,
    at: Duration,
    down_for: Duration,
) -> Vec<FaultEvent> {
    let mut events = Vec::new();
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return events;
    };
    std::thread::sleep(at.saturating_sub(run.started.elapsed()));
    let mut guard = lock(pipeline);
    let Some(pipeline) = guard.as_mut() else {
        return events;
    };
    let embedded = pipeline.topology == Topology::Embedded;
    let component = match (fault, embedded) {
        (_, true) => Component::Api,
        (Fault::IngestRestart, false) => Component::Ingest,
        _ => Component::Aggregator,
    };
    let name = match (fault, embedded) {
        (Fault::BrokerRestart, _) => "broker",
        (Fault::ClickhouseRestart, _) => "ClickHouse",
        (_, true) => "referral-api (embedded pipeline)",
        (Fault::IngestRestart, false) => "referral-ingest",
        _ => "referral-aggregator",
    };
    events.push(FaultEvent {
        at_seconds: run.elapsed_seconds(),
        what: format!("{name} SIGKILL"),
    });
    match fault {
        Fault::BrokerRestart => pipeline.kill_broker(),
        Fault::ClickhouseRestart => pipeline.kill_clickhouse(),
        _ => pipeline.kill_component(component),
    }
    std::thread::sleep(down_for);
    let restarted = match fault {
        Fault::BrokerRestart => {
            pipeline.start_broker();
            Ok(())
        }
        Fault::ClickhouseRestart => {
            pipeline.start_clickhouse();
            Ok(())
        }
        _ => runtime.block_on(pipeline.start_component(component)),
    };
    events.push(FaultEvent {
        at_seconds: run.elapsed_seconds(),
        what: match restarted {
            Ok(()) => format!("{name} started again"),
            Err(error) => format!("{name} failed to start again: {error}"),
        },
    });
    events
}
