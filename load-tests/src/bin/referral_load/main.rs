//! `referral-load`: realistic referral traffic, the end-to-end verifier, the fault scenarios
//! and the benchmark report.
//!
//! - `run`: load against a deployment you name (`--ingest-url`, `--api-url`), then verify.
//! - `scenario FAULT`: starts the whole pipeline on this machine, injects the fault during
//!   the load, verifies.
//! - `smoke`: a short aggregator-kill scenario; part of the test command.
//! - `bench`: the benchmark report in `docs/BENCHMARKS.md`.
//! - `goals`: issue 19's end-to-end goals with a profile of every process (`--record`).
//! - `serve`: the pipeline for another tool to run against (the API fuzzer in the tests).
//!
//! The traffic mixes click POSTs, redirect and pixel GETs, HEAD previews, bots and returning
//! visitors; the verifier checks every stored click's verdict (`counted`, `duplicate`,
//! `bot`) and every mentor's totals by verdict exactly.
//!
//! Each run ends with the verdicts' line (`verdicts: counted=N duplicate=N bot=N
//! mismatches=0 ...`) and then the verifier's line, `acked=N stored=N lost=0 duplicated=0`,
//! and exits non-zero on any loss, duplicate, inconsistency, verdict mismatch, unexplained
//! stored click or wrong answer.

mod bench;
mod chart;
mod driver;
mod goals;
mod http;
mod ledger;
mod links;
mod pipeline;
mod report;
mod scenario;
mod serve;
mod traffic;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use driver::{Endpoints, LoadPlan, Mode};
use pipeline::{PipelineOptions, Topology};
use report::RunReport;
use scenario::{Fault, RunOptions, ScenarioOptions};
use traffic::Mix;

#[derive(Parser)]
#[command(
    name = "referral-load",
    version,
    about = "Load, verify and benchmark the referral attribution pipeline"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Drive load against running services, then verify what they acknowledged.
    Run {
        /// Base URL of the click edge (referral-ingest, or referral-api when embedded).
        #[arg(
            long,
            env = "REFERRAL_LOAD_INGEST_URL",
            default_value = "http://127.0.0.1:8080"
        )]
        ingest_url: String,
        /// Base URL of referral-api.
        #[arg(
            long,
            env = "REFERRAL_LOAD_API_URL",
            default_value = "http://127.0.0.1:8080"
        )]
        api_url: String,
        /// Bearer token for the API (read, write and admin scopes: the run creates its codes),
        /// when it requires one. The scenarios start their own API with a token of their own.
        #[arg(long, env = "REFERRAL_LOAD_API_TOKEN", hide_env_values = true)]
        api_token: Option<String>,
        /// The writer's `--dedup-window` (the aggregator's, or referral-api's when embedded):
        /// the verifier checks every click's verdict against it.
        #[arg(long, env = "REFERRAL_LOAD_DEDUP_WINDOW", default_value = "1h", value_parser = humantime::parse_duration)]
        dedup_window: Duration,
        #[command(flatten)]
        load: LoadArgs,
        /// Write NAME.json, NAME.md and NAME.svg here.
        #[arg(long, env = "REFERRAL_LOAD_REPORT_DIR")]
        report_dir: Option<PathBuf>,
    },
    /// Start the pipeline on this machine, inject a fault during the load, verify.
    Scenario {
        #[arg(value_enum)]
        fault: Fault,
        #[command(flatten)]
        local: LocalArgs,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// A short aggregator SIGKILL scenario (well under a minute) with the verifier.
    Smoke {
        #[command(flatten)]
        topology: TopologyArg,
        #[arg(long, env = "REFERRAL_LOAD_REPORT_DIR")]
        report_dir: Option<PathBuf>,
    },
    /// Measure and write the benchmark report (docs/BENCHMARKS.md with --record).
    Bench(bench::BenchArgs),
    /// Measure issue 19's end-to-end goals (3, 6, 7, 8) with a profile of every process
    /// (docs/BENCHMARKS.md with --record).
    Goals(goals::GoalsArgs),
    /// Start the pipeline on this machine, run COMMAND against it, stop it. COMMAND gets
    /// REFERRAL_API_URL, REFERRAL_INGEST_URL and REFERRAL_API_TOKEN (an admin token); the
    /// run fails when COMMAND fails or a service logged an ERROR line meanwhile.
    Serve {
        #[command(flatten)]
        topology: TopologyArg,
        /// The command and its arguments (after `--`).
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// A minimal hyper server answering every request 201 with a fixed body: the
    /// baseline the edge is compared with (started by `bench`).
    #[command(hide = true)]
    BaselineServer {
        #[arg(long)]
        listen: std::net::SocketAddr,
    },
}

/// Which pipeline the tool starts on this machine.
#[derive(Args, Clone, Copy)]
struct TopologyArg {
    #[arg(
        long,
        env = "REFERRAL_LOAD_TOPOLOGY",
        value_enum,
        default_value = "auto"
    )]
    topology: Topology,
}

#[derive(Args, Clone)]
struct LocalArgs {
    #[command(flatten)]
    topology: TopologyArg,
    /// Partitions of the event topic (Kafka topology).
    #[arg(long, env = "REFERRAL_LOAD_PARTITIONS", default_value_t = 3)]
    partitions: u32,
    /// When the fault hits, as a share of the load's duration.
    #[arg(long, env = "REFERRAL_LOAD_FAULT_AT", default_value_t = 0.35)]
    fault_at: f64,
    /// How long the killed component stays down (default: 8 s for the aggregator on Kafka,
    /// longer than its group session; 2 s otherwise).
    #[arg(long, env = "REFERRAL_LOAD_DOWN_FOR", value_parser = humantime::parse_duration)]
    down_for: Option<Duration>,
    #[arg(long, env = "REFERRAL_LOAD_REPORT_DIR")]
    report_dir: Option<PathBuf>,
    /// tansu on its SQLite engine (always for broker-restart: the memory engine loses
    /// the log on a restart, as no real Kafka cluster does).
    #[arg(long, env = "REFERRAL_LOAD_DURABLE_BROKER")]
    durable_broker: bool,
    /// Profile every process (`perf record`) from this far into the load, for
    /// `--profile-for`; the top threads and functions go into the report.
    #[arg(long, env = "REFERRAL_LOAD_PROFILE_AT", value_parser = humantime::parse_duration)]
    profile_at: Option<Duration>,
    /// Length of the profile window (within the load: `--profile-at` + this <= `--duration`).
    #[arg(long, env = "REFERRAL_LOAD_PROFILE_FOR", default_value = "10s", value_parser = humantime::parse_duration)]
    profile_for: Duration,
}

#[derive(Args, Clone)]
struct LoadArgs {
    /// Open loop: clicks per second (click POSTs, redirect and pixel GETs, HEAD previews).
    #[arg(
        long,
        env = "REFERRAL_LOAD_RATE",
        default_value_t = 500.0,
        conflicts_with = "max_throughput"
    )]
    rate: f64,
    /// Closed loop instead: as fast as `--connections` connections go.
    #[arg(long, env = "REFERRAL_LOAD_MAX_THROUGHPUT")]
    max_throughput: bool,
    #[arg(long, env = "REFERRAL_LOAD_CONNECTIONS", default_value_t = 64)]
    connections: usize,
    #[arg(long, env = "REFERRAL_LOAD_DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    #[arg(long, env = "REFERRAL_LOAD_MENTORS", default_value_t = 500)]
    mentors: usize,
    #[arg(long, env = "REFERRAL_LOAD_CODES", default_value_t = 2000)]
    codes: usize,
    /// Zipf exponent of clicks over mentors (>= 0; 0 is uniform).
    #[arg(long, env = "REFERRAL_LOAD_ZIPF", default_value_t = 1.1)]
    zipf: f64,
    /// Share of click POSTs that are invalid (each must get its 4xx).
    #[arg(long, env = "REFERRAL_LOAD_INVALID_SHARE", default_value_t = 0.05)]
    invalid_share: f64,
    /// Share of click POSTs that repeat an earlier one verbatim (returning visitors and bots
    /// come on top, in fixed shares: see `traffic::LINK_SHARES`).
    #[arg(long, env = "REFERRAL_LOAD_DUPLICATE_SHARE", default_value_t = 0.02)]
    duplicate_share: f64,
    /// Confirmations and deletes per second (default: 5% of the click rate, 50 in max mode).
    #[arg(long, env = "REFERRAL_LOAD_COMMANDS_PER_SECOND")]
    commands_per_second: Option<f64>,
    /// Commands name clicks acknowledged at least this long ago (0: the newest, racing
    /// their clicks through the pipeline; conversions in life come minutes later).
    #[arg(long, env = "REFERRAL_LOAD_COMMAND_MIN_AGE", default_value = "0s", value_parser = humantime::parse_duration)]
    command_min_age: Duration,
    /// Open loop: cap on requests in flight.
    #[arg(long, env = "REFERRAL_LOAD_MAX_IN_FLIGHT", default_value_t = 1024)]
    max_in_flight: usize,
    #[arg(long, env = "REFERRAL_LOAD_REQUEST_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    request_timeout: Duration,
    /// How long the pipeline may take to apply everything after the load.
    #[arg(long, env = "REFERRAL_LOAD_DRAIN_TIMEOUT", default_value = "120s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    #[arg(long, env = "REFERRAL_LOAD_SEED", default_value_t = 42)]
    seed: u64,
    /// No progress bar (it is hidden anyway when stderr is not a terminal).
    #[arg(long, env = "REFERRAL_LOAD_NO_PROGRESS")]
    no_progress: bool,
}

impl LoadArgs {
    fn options(&self) -> Result<RunOptions, String> {
        for (name, share) in [
            ("--invalid-share", self.invalid_share),
            ("--duplicate-share", self.duplicate_share),
        ] {
            if !(0.0..=1.0).contains(&share) {
                return Err(format!("{name} must be within 0..=1, not {share}"));
            }
        }
        let rate_ok = self.rate > 0.0 && self.rate.is_finite();
        if !self.max_throughput && !rate_ok {
            return Err(format!(
                "--rate must be a positive number, not {}",
                self.rate
            ));
        }
        if self.mentors == 0 || self.codes < self.mentors {
            return Err("--mentors must be >= 1 and --codes >= --mentors".to_owned());
        }
        let mode = if self.max_throughput {
            Mode::Max {
                connections: self.connections.max(1),
            }
        } else {
            Mode::Rate(self.rate)
        };
        let commands_per_second = self.commands_per_second.unwrap_or(match mode {
            Mode::Rate(rate) => rate / 20.0,
            Mode::Max { .. } => 50.0,
        });
        Ok(RunOptions {
            plan: LoadPlan {
                mode,
                duration: self.duration,
                max_in_flight: self.max_in_flight,
                mix: Mix {
                    invalid: self.invalid_share,
                    duplicate: self.duplicate_share,
                },
                commands_per_second,
                command_min_age: self.command_min_age,
                seed: self.seed,
                progress: !self.no_progress,
                freshness_probe: None,
            },
            mentors: self.mentors,
            codes: self.codes,
            zipf_exponent: self.zipf,
            request_timeout: self.request_timeout,
            drain_timeout: self.drain_timeout,
            cpu_of: Vec::new(),
        })
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| format!("cannot start the async runtime: {error}"))
}

/// Prints the report's summary and the verifier's line; the exit code follows the verifier.
fn conclude(report: &RunReport) -> ExitCode {
    eprintln!("{}", report.markdown(None));
    println!("{}", report.verification.verdict_line());
    println!("{}", report.verification.line());
    if report.verification.passed() {
        ExitCode::SUCCESS
    } else {
        eprintln!("referral-load: verification FAILED");
        ExitCode::FAILURE
    }
}

fn smoke_options() -> RunOptions {
    RunOptions {
        plan: LoadPlan {
            mode: Mode::Rate(400.0),
            duration: Duration::from_secs(16),
            max_in_flight: 512,
            mix: Mix {
                invalid: 0.05,
                duplicate: 0.02,
            },
            commands_per_second: 25.0,
            command_min_age: Duration::ZERO,
            seed: 7,
            progress: false,
            freshness_probe: None,
        },
        mentors: 50,
        codes: 100,
        zipf_exponent: 1.1,
        request_timeout: Duration::from_secs(10),
        drain_timeout: Duration::from_secs(60),
        cpu_of: Vec::new(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::BaselineServer { listen } => bench::baseline_server(listen),
        Command::Bench(args) => runtime().and_then(|runtime| runtime.block_on(bench::run(args))),
        Command::Goals(args) => runtime().and_then(|runtime| runtime.block_on(goals::run(args))),
        Command::Serve { topology, command } => {
            runtime().and_then(|runtime| runtime.block_on(serve::serve(topology.topology, command)))
        }
        Command::Run {
            ingest_url,
            api_url,
            api_token,
            dedup_window,
            load,
            report_dir,
        } => (|| {
            verify::set_dedup_window(dedup_window);
            let options = load.options()?;
            let runtime = runtime()?;
            let endpoints = Endpoints {
                ingest: ingest_url.trim_end_matches('/').to_owned(),
                api: api_url.trim_end_matches('/').to_owned(),
                api_token,
            };
            let report = runtime.block_on(async {
                let outcome =
                    scenario::load_and_verify(endpoints, &options, "run", |_| None).await?;
                let recorder = driver::lock(&outcome.run.recorder);
                Ok::<_, String>(
                    RunReport::new(
                        "run",
                        &format!("external: {ingest_url} and {api_url}"),
                        options.describe(),
                        outcome.seconds,
                        (options.mentors, options.codes),
                        &recorder,
                        outcome.faults,
                        outcome.verification,
                        Vec::new(),
                    )
                    .with_cpu(outcome.cpu),
                )
            })?;
            if let Some(dir) = report_dir {
                report.write(&dir, "run")?;
            }
            Ok(conclude(&report))
        })(),
        Command::Scenario { fault, local, load } => (|| {
            let options = load.options()?;
            if local
                .profile_at
                .is_some_and(|at| at + local.profile_for > load.duration)
            {
                return Err(
                    "--profile-at + --profile-for must end within the load's --duration".to_owned(),
                );
            }
            let scenario = ScenarioOptions {
                fault,
                pipeline: PipelineOptions {
                    topology: local.topology.topology,
                    partitions: local.partitions,
                    aggregator_env: Vec::new(),
                    durable_broker: local.durable_broker || fault == Fault::BrokerRestart,
                },
                fault_at: local.fault_at,
                down_for: local.down_for,
                report_dir: local.report_dir,
                profile: local.profile_at.map(|at| scenario::ProfileWindow {
                    at,
                    length: local.profile_for,
                }),
            };
            let report = runtime()?.block_on(scenario::run_scenario(&scenario, &options))?;
            Ok(conclude(&report))
        })(),
        Command::Smoke {
            topology,
            report_dir,
        } => (|| {
            let scenario = ScenarioOptions {
                fault: Fault::AggregatorKill,
                pipeline: PipelineOptions {
                    topology: topology.topology,
                    partitions: 3,
                    aggregator_env: Vec::new(),
                    durable_broker: false,
                },
                fault_at: 0.2,
                down_for: None,
                report_dir,
                profile: None,
            };
            let report =
                runtime()?.block_on(scenario::run_scenario(&scenario, &smoke_options()))?;
            Ok(conclude(&report))
        })(),
    };
    match outcome {
        Ok(code) => code,
        Err(message) => {
            eprintln!("referral-load: {message}");
            ExitCode::FAILURE
        }
    }
}
