//! `referral-load bench`: the benchmark report, measured in one run on this machine.
//!
//! 1. Edge: click POSTs/s of a minimal hyper server (the physical baseline, this binary's
//!    hidden `baseline-server`), then of the edge on the embedded log, then of
//!    `referral-ingest` on Kafka; each as a ratio to the baseline, with the same generator,
//!    connections and duration.
//! 2. End to end on Kafka + ClickHouse: as many clicks as the edge takes for a while, then
//!    until the pipeline drained: sustained clicks/s = acknowledged / (load + drain). Verified.
//! 3. An open-loop run at a fixed rate with freshness probes (201 -> readable by id), its
//!    throughput and latency over time as a chart. Verified.
//! 4. Read latencies on the data of 2 and 3.
//! 5. Peak RSS of every process; the fault scenarios' verifier lines (unless --no-scenarios).
//!
//! With `--record`, the Markdown goes between `<!-- load:begin -->` and `<!-- load:end -->`
//! in the benchmark document, the chart and the JSON next to it.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use referral_load_tests::bench::{CpuWindow, Service, record_section};
use referral_load_tests::services::free_port;
use serde::Serialize;
use tokio::time::Instant;

use crate::driver::{Endpoints, LoadPlan, Mode, Run, lock, micros, new_histogram};
use crate::http::{Call, HttpClient};
use crate::ledger::Ledger;
use crate::pipeline::{Pipeline, PipelineOptions, Topology, kafka_topology_installed};
use crate::report::{Percentiles, RunReport};
use crate::scenario::{self, Fault, RunOptions, ScenarioOptions};
use crate::traffic::{CLICK_PATH, ClickGenerator, Mix, Population};

type Result<T, E = String> = std::result::Result<T, E>;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Write the report into `--doc` (and the chart and JSON into `--assets`).
    #[arg(long)]
    record: bool,
    #[arg(
        long,
        env = "REFERRAL_LOAD_BENCH_DOC",
        default_value = "docs/BENCHMARKS.md"
    )]
    doc: PathBuf,
    #[arg(
        long,
        env = "REFERRAL_LOAD_BENCH_ASSETS",
        default_value = "docs/benchmarks"
    )]
    assets: PathBuf,
    /// Seconds of each edge measurement.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    edge_duration: Duration,
    /// Connections of the closed-loop measurements.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Seconds of the end-to-end max-throughput run.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    sustained_duration: Duration,
    /// Click rate and length of the open-loop run (freshness, chart).
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    #[arg(long, default_value = "40s", value_parser = humantime::parse_duration)]
    rate_duration: Duration,
    /// Seconds of each read measurement.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    read_duration: Duration,
    /// Skip the four fault scenarios.
    #[arg(long)]
    no_scenarios: bool,
}

#[derive(Debug, Clone, Serialize)]
struct EdgeRow {
    server: String,
    requests_per_second: f64,
    ratio: f64,
    latency: Percentiles,
    non_201: u64,
    errors: u64,
    /// Cores used over the measurement, per process.
    cpu: String,
}

#[derive(Debug, Clone, Serialize)]
struct ReadRow {
    endpoint: String,
    latency: Percentiles,
    non_200: u64,
}

#[derive(Debug, Clone, Serialize)]
struct ScenarioRow {
    scenario: String,
    line: String,
    passed: bool,
    acked_per_second: f64,
    failed_requests: u64,
}

#[derive(Serialize)]
struct BenchReport {
    started_at: String,
    machine: String,
    edge: Vec<EdgeRow>,
    sustained: RunReport,
    /// Acknowledged clicks / (load + drain) seconds.
    sustained_clicks_per_second: f64,
    open_loop: RunReport,
    freshness: Percentiles,
    freshness_missed: u64,
    reads: Vec<ReadRow>,
    peak_rss: Vec<(String, u64)>,
    scenarios: Vec<ScenarioRow>,
}

/// A verified run on the Kafka pipeline, with the CPU of its processes over the load.
async fn measured_run(
    pipeline: &Pipeline,
    endpoints: &Endpoints,
    options: RunOptions,
    name: &str,
) -> Result<(Arc<Run>, RunReport)> {
    let options = RunOptions {
        cpu_of: pipeline.processes(),
        ..options
    };
    let label = format!("bench {name}");
    let outcome = scenario::load_and_verify(endpoints.clone(), &options, &label, |_| None).await?;
    let report = RunReport::new(
        name,
        "Kafka (tansu memory engine) + ClickHouse 18.16",
        options.describe(),
        outcome.seconds,
        (options.mentors, options.codes),
        &lock(&outcome.run.recorder),
        outcome.faults,
        outcome.verification,
        Vec::new(),
    )
    .with_cpu(outcome.cpu);
    Ok((outcome.run, report))
}

/// The edge of `pipeline` measured like the baseline, as a row of the edge table.
async fn edge_row(
    pipeline: &Pipeline,
    server: &str,
    seed: u64,
    args: &BenchArgs,
    base_rps: f64,
) -> Result<EdgeRow> {
    let endpoints = Endpoints {
        ingest: pipeline.ingest_url(),
        api: pipeline.api_url(),
        api_token: Some(pipeline.api_token().to_owned()),
    };
    let population = population_on(&endpoints, seed).await?;
    let (rps, latency, non_201, errors, cpu) = edge_throughput(
        server,
        &endpoints.ingest,
        &population,
        args.connections,
        args.edge_duration,
        pipeline.processes(),
    )
    .await;
    Ok(EdgeRow {
        server: server.to_owned(),
        requests_per_second: rps,
        ratio: if base_rps > 0.0 { rps / base_rps } else { 0.0 },
        latency,
        non_201,
        errors,
        cpu,
    })
}

/// Clicks/s of each fault scenario in the report. The broker restart runs at 300/s: at
/// 1,000/s tansu 0.6.0 (SQLite engine) panics on the first produce of an idempotent
/// producer whose epoch librdkafka bumped after a failed in-flight batch (its
/// `idempotent_message_check`: "more or less than one row") and then serves no client at
/// all, which no client can survive; Apache Kafka has no such failure.
fn scenario_rate(fault: Fault) -> f64 {
    match fault {
        Fault::BrokerRestart => 300.0,
        _ => 1000.0,
    }
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split(':').nth(1))
                .map(|name| name.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    format!("{cores} cores, {cpu}")
}

/// Closed loop: `connections` workers POST valid clicks for the population's codes for
/// `duration`; answers are counted, not checked (the baseline answers anything with 201).
async fn edge_throughput(
    name: &str,
    base_url: &str,
    population: &Arc<Population>,
    connections: usize,
    duration: Duration,
    mut cpu_of: Vec<(&'static str, String)>,
) -> (f64, Percentiles, u64, u64, String) {
    cpu_of.push(("referral-load (this tool)", "self".to_owned()));
    let client = HttpClient::new(connections, Duration::from_secs(10), None);
    let latency = Arc::new(std::sync::Mutex::new(new_histogram()));
    let counts = Arc::new(std::sync::Mutex::new((0u64, 0u64, 0u64)));
    // Warm-up (connections, caches) is not measured.
    for (measured, length) in [(false, Duration::from_secs(2)), (true, duration)] {
        let end = Instant::now() + length;
        let started = Instant::now();
        let cpu = CpuWindow::start(&cpu_of);
        let mut workers = tokio::task::JoinSet::new();
        for worker in 0..connections {
            let client = client.clone();
            let population = population.clone();
            let latency = latency.clone();
            let counts = counts.clone();
            let url = format!("{base_url}{CLICK_PATH}");
            let mix = Mix {
                invalid: 0.0,
                duplicate: 0.0,
            };
            let mut generator = ClickGenerator::new(worker as u64, mix);
            workers.spawn(async move {
                let mut local = new_histogram();
                let mut local_counts = (0u64, 0u64, 0u64);
                while Instant::now() < end {
                    let request = generator.next(&population);
                    let call = Call {
                        method: Method::POST,
                        url: url.clone(),
                        body: Some((request.body, request.content_type)),
                        headers: Vec::new(),
                    };
                    let sent = Instant::now();
                    match client.send(call, false).await.status() {
                        Some(201) => {
                            local_counts.0 += 1;
                            let _ = local.record(micros(sent.elapsed()));
                        }
                        Some(_) => local_counts.1 += 1,
                        None => local_counts.2 += 1,
                    }
                }
                if measured {
                    let _ = lock(&latency).add(&local);
                    let mut totals = lock(&counts);
                    totals.0 += local_counts.0;
                    totals.1 += local_counts.1;
                    totals.2 += local_counts.2;
                }
            });
        }
        while workers.join_next().await.is_some() {}
        if measured {
            let cpu: Vec<String> = cpu
                .finish()
                .iter()
                .map(|(name, cores)| format!("{name} {cores:.2}"))
                .collect();
            let (created, other, errors) = *lock(&counts);
            let seconds = started.elapsed().as_secs_f64();
            let rps = created as f64 / seconds;
            eprintln!("referral-load bench: {name}: {rps:.0} clicks/s");
            let percentiles = Percentiles::of(&lock(&latency));
            return (rps, percentiles, other, errors, cpu.join(", "));
        }
    }
    (0.0, Percentiles::default(), 0, 0, String::new())
}

/// Closed loop GETs over `urls` (round robin from a random start) with `connections`.
async fn read_latency(
    client: &HttpClient,
    urls: Arc<Vec<String>>,
    connections: usize,
    duration: Duration,
) -> (Percentiles, u64) {
    let latency = Arc::new(std::sync::Mutex::new(new_histogram()));
    let failures = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let end = Instant::now() + duration;
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..connections {
        let client = client.clone();
        let urls = urls.clone();
        let latency = latency.clone();
        let failures = failures.clone();
        workers.spawn(async move {
            let mut rng = SmallRng::seed_from_u64(worker as u64);
            let mut local: Histogram<u64> = new_histogram();
            while Instant::now() < end && !urls.is_empty() {
                let url = urls[rng.random_range(0..urls.len())].clone();
                let sent = Instant::now();
                let status = client.send(Call::get(url), true).await.status();
                if status == Some(200) {
                    let _ = local.record(micros(sent.elapsed()));
                } else {
                    failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            let _ = lock(&latency).add(&local);
        });
    }
    while workers.join_next().await.is_some() {}
    let percentiles = Percentiles::of(&lock(&latency));
    (
        percentiles,
        failures.load(std::sync::atomic::Ordering::Relaxed),
    )
}

fn run_options(mode: Mode, duration: Duration, seed: u64, probe: Option<Duration>) -> RunOptions {
    RunOptions {
        plan: LoadPlan {
            mode,
            duration,
            max_in_flight: 2048,
            mix: Mix {
                invalid: 0.05,
                duplicate: 0.02,
            },
            commands_per_second: 50.0,
            command_min_age: Duration::ZERO,
            seed,
            progress: false,
            freshness_probe: probe,
        },
        mentors: 500,
        codes: 2000,
        zipf_exponent: 1.1,
        request_timeout: Duration::from_secs(10),
        drain_timeout: Duration::from_secs(300),
        cpu_of: Vec::new(),
    }
}

/// Creates `population`'s codes on `api` and waits until the edge resolves them, by running
/// a one-second load through the verifier machinery (which does exactly that).
async fn population_on(endpoints: &Endpoints, seed: u64) -> Result<Arc<Population>> {
    let options = RunOptions {
        mentors: 200,
        codes: 400,
        ..run_options(Mode::Rate(50.0), Duration::from_secs(1), seed, None)
    };
    let outcome =
        scenario::load_and_verify(endpoints.clone(), &options, "bench setup", |_| None).await?;
    if !outcome.verification.passed() {
        return Err(format!(
            "setup run failed its verification: {}",
            outcome.verification.line()
        ));
    }
    Ok(outcome.run.population.clone())
}

pub async fn run(args: BenchArgs) -> Result<ExitCode> {
    if !kafka_topology_installed() {
        return Err(
            "bench needs tansu and clickhouse-server (scripts/install-test-services.sh)".into(),
        );
    }
    let started_at = crate::report::now_rfc3339();
    let mut edge = Vec::new();
    let mut peak_rss = Vec::new();

    // 1a. The baseline.
    let logs = tempfile::tempdir().map_err(|error| error.to_string())?;
    let port = free_port();
    let me = std::env::current_exe().map_err(|error| error.to_string())?;
    let listen = format!("127.0.0.1:{port}");
    let baseline = Service::spawn(
        "baseline-server",
        &me,
        &["baseline-server", "--listen", &listen],
        &[],
        logs.path(),
    )?;
    wait_listening(port).await?;
    let dummy = Arc::new(Population::new("base", 10, 10, 1.0)?);
    let base_url = format!("http://{listen}");
    let baseline_pid = vec![(
        "baseline server",
        baseline
            .pid()
            .map(|pid| pid.to_string())
            .unwrap_or_default(),
    )];
    let (base_rps, base_latency, base_other, base_errors, base_cpu) = edge_throughput(
        "baseline",
        &base_url,
        &dummy,
        args.connections,
        args.edge_duration,
        baseline_pid,
    )
    .await;
    if let Some(bytes) = baseline.pid().and_then(crate::pipeline::peak_rss_bytes) {
        peak_rss.push(("minimal hyper server (baseline)".to_owned(), bytes));
    }
    drop(baseline);
    edge.push(EdgeRow {
        server: "minimal hyper server (baseline)".into(),
        requests_per_second: base_rps,
        ratio: 1.0,
        latency: base_latency,
        non_201: base_other,
        errors: base_errors,
        cpu: base_cpu,
    });

    // 1b. The edge on the embedded log and store.
    {
        let mut pipeline = Pipeline::start(&PipelineOptions {
            topology: Topology::Embedded,
            partitions: 1,
            aggregator_env: Vec::new(),
            durable_broker: false,
        })
        .await?;
        let server = "referral-api, embedded log and store (SQLite, synchronous=full)";
        edge.push(edge_row(&pipeline, server, 1, &args, base_rps).await?);
        for (name, bytes) in pipeline.peak_rss() {
            if name.starts_with("referral-api") {
                peak_rss.push(("referral-api (embedded, edge benchmark)".to_owned(), bytes));
            }
        }
        pipeline.stop();
    }

    // 1c, 2, 3, 4 on Kafka + ClickHouse.
    let mut pipeline = Pipeline::start(&PipelineOptions {
        topology: Topology::Kafka,
        partitions: 3,
        aggregator_env: Vec::new(),
        durable_broker: false,
    })
    .await?;
    let endpoints = Endpoints {
        ingest: pipeline.ingest_url(),
        api: pipeline.api_url(),
        api_token: Some(pipeline.api_token().to_owned()),
    };
    let server = "referral-ingest, Kafka (tansu memory engine, acks=all, idempotent)";
    edge.push(edge_row(&pipeline, server, 2, &args, base_rps).await?);

    eprintln!("referral-load bench: end-to-end max throughput");
    let max = Mode::Max {
        connections: args.connections,
    };
    let (run, sustained) = measured_run(
        &pipeline,
        &endpoints,
        run_options(max, args.sustained_duration, 3, None),
        "sustained",
    )
    .await?;
    let sustained_clicks_per_second = lock(&run.ledger).acked_count() as f64
        / (sustained.seconds + sustained.verification.drain_seconds);

    eprintln!("referral-load bench: open loop with freshness probes");
    let probe = Some(Duration::from_millis(100));
    let (open_run, open_loop) = measured_run(
        &pipeline,
        &endpoints,
        run_options(Mode::Rate(args.rate), args.rate_duration, 4, probe),
        "open loop",
    )
    .await?;
    let (freshness, freshness_missed) = {
        let recorder = lock(&open_run.recorder);
        (
            Percentiles::of(&recorder.freshness_us),
            recorder.freshness_missed,
        )
    };

    eprintln!("referral-load bench: reads");
    let reads = measure_reads(&endpoints, &open_run, args.read_duration).await;
    peak_rss.extend(pipeline.peak_rss());
    pipeline.stop();

    // 5. The fault scenarios.
    let mut scenarios = Vec::new();
    if !args.no_scenarios {
        for fault in [
            Fault::AggregatorKill,
            Fault::BrokerRestart,
            Fault::ClickhouseRestart,
            Fault::IngestRestart,
        ] {
            eprintln!("referral-load bench: scenario {}", fault.name());
            let options = RunOptions {
                mentors: 200,
                codes: 400,
                ..run_options(
                    Mode::Rate(scenario_rate(fault)),
                    Duration::from_secs(30),
                    5,
                    None,
                )
            };
            let scenario = ScenarioOptions {
                fault,
                pipeline: PipelineOptions {
                    topology: Topology::Kafka,
                    partitions: 3,
                    aggregator_env: Vec::new(),
                    durable_broker: fault == Fault::BrokerRestart,
                },
                fault_at: 0.35,
                down_for: None,
                report_dir: args.record.then(|| args.assets.join("scenarios")),
                profile: None,
            };
            let report = match scenario::run_scenario(&scenario, &options).await {
                Ok(report) => report,
                Err(error) => {
                    eprintln!("referral-load bench: scenario {}: {error}", fault.name());
                    scenarios.push(ScenarioRow {
                        scenario: fault.name().to_owned(),
                        line: format!("no verdict: {}", error.lines().next().unwrap_or("")),
                        passed: false,
                        acked_per_second: 0.0,
                        failed_requests: 0,
                    });
                    continue;
                }
            };
            let failed = report.clicks.timeouts
                + report.clicks.transport_errors
                + report
                    .clicks
                    .statuses
                    .iter()
                    .filter(|(status, _)| **status >= 500)
                    .map(|(_, count)| count)
                    .sum::<u64>();
            scenarios.push(ScenarioRow {
                scenario: fault.name().to_owned(),
                line: report.verification.line(),
                passed: report.verification.passed(),
                acked_per_second: report.acked_per_second,
                failed_requests: failed,
            });
        }
    }

    let report = BenchReport {
        started_at,
        machine: machine(),
        edge,
        sustained,
        sustained_clicks_per_second,
        open_loop,
        freshness,
        freshness_missed,
        reads,
        peak_rss,
        scenarios,
    };
    let markdown = render(&report);
    println!("{markdown}");
    if args.record {
        std::fs::create_dir_all(&args.assets)
            .map_err(|error| format!("cannot create {}: {error}", args.assets.display()))?;
        let json = serde_json::to_string_pretty(&report).map_err(|error| error.to_string())?;
        for (file, text) in [
            ("load-report.json", json),
            ("load-timeline.svg", report.open_loop.chart()),
            ("sustained-timeline.svg", report.sustained.chart()),
        ] {
            let path = args.assets.join(file);
            std::fs::write(&path, text)
                .map_err(|error| format!("cannot write {}: {error}", path.display()))?;
        }
        record_section(&args.doc, "load", "End to end (issue 6)", &markdown)?;
        eprintln!("referral-load bench: recorded in {}", args.doc.display());
    }
    let passed = report.sustained.verification.passed()
        && report.open_loop.verification.passed()
        && report.scenarios.iter().all(|row| row.passed);
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn measure_reads(endpoints: &Endpoints, run: &Run, duration: Duration) -> Vec<ReadRow> {
    let client = HttpClient::new(8, Duration::from_secs(10), None);
    let base = format!("{}/api/v1/referral-attributions", endpoints.api);
    let ids: Vec<String> = {
        let ledger = lock(&run.ledger);
        ledger
            .order
            .iter()
            .filter(|id| {
                ledger
                    .clicks
                    .get(*id)
                    .is_some_and(|click| Ledger::is_live(&click.state))
            })
            .take(5_000)
            .cloned()
            .collect()
    };
    let mentors = &run.population.mentors;
    let endpoints_to_read: Vec<(&str, Vec<String>)> = vec![
        (
            "GET /:id",
            ids.iter().map(|id| format!("{base}/{id}")).collect(),
        ),
        (
            "GET /mentor/:id (first page of 20)",
            mentors
                .iter()
                .map(|m| format!("{base}/mentor/{m}"))
                .collect(),
        ),
        (
            "GET /mentor/:id/total (all_time)",
            mentors
                .iter()
                .map(|m| format!("{base}/mentor/{m}/total"))
                .collect(),
        ),
        (
            "GET /mentor/:id/total?period=30d",
            mentors
                .iter()
                .map(|m| format!("{base}/mentor/{m}/total?period=30d"))
                .collect(),
        ),
        ("GET / (first page of 20)", vec![base.clone()]),
    ];
    let mut rows = Vec::new();
    for (name, urls) in endpoints_to_read {
        let (latency, failures) = read_latency(&client, Arc::new(urls), 4, duration).await;
        rows.push(ReadRow {
            endpoint: name.to_owned(),
            latency,
            non_200: failures,
        });
    }
    rows
}

async fn wait_listening(port: u16) -> Result<()> {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Err(format!("nothing listens on port {port}"))
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / 1_048_576.0)
}

fn render(report: &BenchReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### End to end: `referral-load bench` ({}, {})\n",
        report.started_at, report.machine
    );
    let _ = writeln!(
        out,
        "`cargo build --release --workspace --bins && ./target/release/referral-load bench --record`: \
         every process on this machine, started by the tool; the generator is the same Rust \
         client for every row (keep-alive connections, realistic click bodies).\n"
    );
    let _ = writeln!(
        out,
        "**Edge** (closed loop, valid clicks, same connections and duration for each server):\n"
    );
    let _ = writeln!(
        out,
        "| server | clicks/s | ratio to baseline | p50 ms | p99 ms | p99.9 ms | non-201 | errors | CPU (cores) |\n|---|---|---|---|---|---|---|---|---|"
    );
    for row in &report.edge {
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.2} | {} | {} | {} | {} | {} | {} |",
            row.server,
            row.requests_per_second,
            row.ratio,
            row.latency.p50_ms,
            row.latency.p99_ms,
            row.latency.p999_ms,
            row.non_201,
            row.errors,
            row.cpu
        );
    }
    let sustained = &report.sustained;
    let _ = writeln!(
        out,
        "\n**End to end, Kafka + ClickHouse** ({}; 5% invalid, 2% duplicate clicks, 50 \
         confirmations/deletes per second, 500 mentors under a Zipf law):\n",
        sustained.load
    );
    let _ = writeln!(out, "| measure | value |\n|---|---|");
    let _ = writeln!(
        out,
        "| **sustained clicks/s** (acknowledged / (load + drain)) | **{:.0}** ({} acknowledged in {:.1} s + {:.1} s drain) |",
        report.sustained_clicks_per_second,
        sustained.verification.acked,
        sustained.seconds,
        sustained.verification.drain_seconds
    );
    let _ = writeln!(
        out,
        "| click POST latency p50 / p99 / p99.9 (ms) | {} / {} / {} |",
        sustained.clicks.latency.p50_ms,
        sustained.clicks.latency.p99_ms,
        sustained.clicks.latency.p999_ms
    );
    let _ = writeln!(
        out,
        "| CPU over the load (cores) | {} |",
        sustained.cpu_text()
    );
    let _ = writeln!(out, "| verifier | `{}` |", sustained.verification.line());
    let open = &report.open_loop;
    let _ = writeln!(
        out,
        "\n**Open loop** ({}), freshness probes every 100 ms:\n",
        open.load
    );
    let _ = writeln!(out, "| measure | value |\n|---|---|");
    let _ = writeln!(
        out,
        "| acknowledged clicks/s | {:.0} |",
        open.acked_per_second
    );
    let _ = writeln!(
        out,
        "| click POST latency p50 / p90 / p99 / p99.9 (ms, from when each was due) | {} / {} / {} / {} |",
        open.clicks.latency.p50_ms,
        open.clicks.latency.p90_ms,
        open.clicks.latency.p99_ms,
        open.clicks.latency.p999_ms
    );
    let _ = writeln!(
        out,
        "| **freshness** (201 -> readable by id) p50 / p99 / max (ms), probes | **{} / {} / {}**, {} ({} never readable) |",
        report.freshness.p50_ms,
        report.freshness.p99_ms,
        report.freshness.max_ms,
        report.freshness.count,
        report.freshness_missed
    );
    let _ = writeln!(
        out,
        "| confirm / delete latency p50 / p99 (ms) | {} / {} |",
        open.commands.latency.p50_ms, open.commands.latency.p99_ms
    );
    let _ = writeln!(out, "| CPU over the load (cores) | {} |", open.cpu_text());
    let _ = writeln!(out, "| verifier | `{}` |", open.verification.line());
    let _ = writeln!(
        out,
        "\n![clicks/s and latency per second of the open-loop run](benchmarks/load-timeline.svg)\n"
    );
    let _ = writeln!(
        out,
        "**Reads** after those runs (4 closed-loop connections; the 10M-row figures are in the Reads section):\n"
    );
    let _ = writeln!(
        out,
        "| endpoint | requests | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | non-200 |\n|---|---|---|---|---|---|---|---|"
    );
    for row in &report.reads {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            row.endpoint,
            row.latency.count,
            row.latency.p50_ms,
            row.latency.p90_ms,
            row.latency.p99_ms,
            row.latency.p999_ms,
            row.latency.max_ms,
            row.non_200
        );
    }
    let _ = writeln!(out, "\n**Peak RSS** (VmHWM, over the whole run):\n");
    let _ = writeln!(out, "| process | peak RSS |\n|---|---|");
    for (name, bytes) in &report.peak_rss {
        let _ = writeln!(out, "| {name} | {} |", mib(*bytes));
    }
    if !report.scenarios.is_empty() {
        let _ = writeln!(
            out,
            "\n**Fault scenarios** (`referral-load scenario FAULT`, open loop for 30 s, fault at \
             35%; 1,000 clicks/s, 300 for the broker restart (see below); reports in \
             `benchmarks/scenarios/`):\n"
        );
        let _ = writeln!(
            out,
            "| scenario | verifier | acknowledged/s | failed requests (no answer, 5xx) |\n|---|---|---|---|"
        );
        for row in &report.scenarios {
            let _ = writeln!(
                out,
                "| {} | `{}` {} | {:.0} | {} |",
                row.scenario,
                row.line,
                if row.passed { "passed" } else { "FAILED" },
                row.acked_per_second,
                row.failed_requests
            );
        }
    }
    out
}

const ANSWER: &[u8] =
    br#"{"id":"attr_01JQ3V8W6Y7Z8A9B0C1D2E3F4G","type":"click","status":"pending"}"#;

/// The least a hyper 1.x server can do for a click POST: read the body, answer 201 with a
/// small JSON body. The edge's throughput is reported as a ratio to this.
pub fn baseline_server(listen: std::net::SocketAddr) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| format!("cannot start the async runtime: {error}"))?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|error| format!("cannot listen on {listen}: {error}"))?;
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |request: Request<hyper::body::Incoming>| async move {
                        let _body = request.into_body().collect().await;
                        let mut response = Response::new(Full::new(Bytes::from_static(ANSWER)));
                        *response.status_mut() = StatusCode::CREATED;
                        response.headers_mut().insert(
                            header::CONTENT_TYPE,
                            header::HeaderValue::from_static("application/json"),
                        );
                        Ok::<_, Infallible>(response)
                    },
                );
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
