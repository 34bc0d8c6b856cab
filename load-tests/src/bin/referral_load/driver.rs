//! Drives a run: clicks to the edge (open loop at a fixed rate, or as fast as a fixed number
//! of connections allow), as click POSTs, redirect and pixel GETs and HEAD previews
//! ([`crate::traffic`]), and, alongside, a stream of confirmations, reversals and deletes
//! to the API.
//! Every answer is checked against what the request must get and recorded in the ledger;
//! latencies go to HDR histograms, overall and per second.
//!
//! A confirmation does not know its click's verdict (the writer decides it after the 201),
//! but it knows the user agent it sent: a bot's click must be refused with 409
//! `not_a_visitor`, and only a bot's.
//!
//! Open-loop latency is measured from the moment a request was due, not sent, so a stalled
//! service shows up in the percentiles instead of silently slowing the generator
//! (coordinated omission).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hdrhistogram::Histogram;
use hyper::{Method, header};
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use referral_schemas::verdict::is_bot;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::http::{Call, HttpClient, Outcome};
use crate::ledger::{Channel, ClickState, Ledger, Sent};
use crate::links::{LinkClient, LinkJudgement, LinkOutcome, judge_link};
use crate::report::{Percentiles, SecondSample};
use crate::traffic::{
    ClickGenerator, ClickRequest, Expect, LinkKind, LinkRequest, Mix, Population, Traffic,
};

pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// Open loop: this many clicks (POSTs, link GETs, HEADs) per second, whatever the answers.
    Rate(f64),
    /// Closed loop: this many connections, each sending its next click on the answer.
    Max { connections: usize },
}

#[derive(Debug, Clone)]
pub struct LoadPlan {
    pub mode: Mode,
    pub duration: Duration,
    /// Cap on requests in flight (open loop); beyond it, due requests wait (and their
    /// latency counts the wait).
    pub max_in_flight: usize,
    pub mix: Mix,
    /// Confirmations and deletes per second sent to the API (0 = none).
    pub commands_per_second: f64,
    /// Commands name clicks acknowledged at least this long ago (0: the newest ones, racing
    /// their clicks through the pipeline; conversions in life come minutes later).
    pub command_min_age: Duration,
    pub seed: u64,
    pub progress: bool,
    /// Every this often, one click is followed until it reads back by id (freshness).
    pub freshness_probe: Option<Duration>,
}

/// Where the run sends its requests.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// Base URL of the edge (click POSTs), e.g. `http://127.0.0.1:8081`.
    pub ingest: String,
    /// Base URL of the API (commands, reads).
    pub api: String,
    /// Bearer token for the API (read, write and admin scopes), when it requires one; never
    /// sent with clicks.
    pub api_token: Option<String>,
}

/// Counters and histograms of one kind of request.
pub struct Tally {
    pub latency_us: Histogram<u64>,
    pub statuses: BTreeMap<u16, u64>,
    pub timeouts: u64,
    pub transport_errors: u64,
    pub first_transport_error: Option<String>,
}

impl Tally {
    fn new() -> Self {
        Self {
            latency_us: new_histogram(),
            statuses: BTreeMap::new(),
            timeouts: 0,
            transport_errors: 0,
            first_transport_error: None,
        }
    }

    fn record(&mut self, outcome: &Outcome, latency: Duration) {
        match outcome {
            Outcome::Answered { status, .. } => {
                *self.statuses.entry(status.as_u16()).or_default() += 1;
                let _ = self.latency_us.record(micros(latency));
            }
            Outcome::TimedOut => self.timeouts += 1,
            Outcome::Transport(error) => {
                self.transport_errors += 1;
                self.first_transport_error
                    .get_or_insert_with(|| error.clone());
            }
        }
    }

    pub fn sent(&self) -> u64 {
        self.statuses.values().sum::<u64>() + self.timeouts + self.transport_errors
    }

    pub fn percentiles(&self) -> Percentiles {
        Percentiles::of(&self.latency_us)
    }
}

pub fn new_histogram() -> Histogram<u64> {
    // 1 us .. 100 s at 3 significant digits; the bounds are constants, so this cannot fail.
    Histogram::new_with_bounds(1, 100_000_000, 3).unwrap_or_else(|_| {
        Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant digits are valid"))
    })
}

pub fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros())
        .unwrap_or(u64::MAX)
        .clamp(1, 100_000_000)
}

/// One second of the run, being filled.
struct Second {
    succeeded: u64,
    failed: u64,
    latency_us: Histogram<u64>,
}

/// Everything measured during a run.
pub struct Recorder {
    /// Click POSTs.
    pub clicks: Tally,
    /// Redirect link GETs, pixel GETs, and HEADs of either link.
    pub redirects: Tally,
    pub pixels: Tally,
    pub heads: Tally,
    /// Redirect GETs whose `Location` carried the recorded click's id, and those without
    /// (not recorded: rate limited or overloaded; the visitor was redirected anyway).
    pub redirects_recorded: u64,
    pub redirects_unrecorded: u64,
    /// Valid clicks (POSTs, link GETs) by a returning visitor, and by a bot's user agent
    /// (or none).
    pub revisits_sent: u64,
    pub bot_clicks_sent: u64,
    pub commands: Tally,
    /// Command answers by what was sent and what came back (e.g. `confirm 200`).
    pub command_outcomes: BTreeMap<String, u64>,
    /// Click 201 -> the same id readable through the API.
    pub freshness_us: Histogram<u64>,
    /// Probes whose click never became readable within the probe's deadline.
    pub freshness_missed: u64,
    /// Click POSTs that re-sent an earlier one verbatim, and invalid ones sent.
    pub repeated_sent: u64,
    pub invalid_sent: u64,
    seconds: Vec<Second>,
}

impl Recorder {
    fn new() -> Self {
        Self {
            clicks: Tally::new(),
            redirects: Tally::new(),
            pixels: Tally::new(),
            heads: Tally::new(),
            redirects_recorded: 0,
            redirects_unrecorded: 0,
            revisits_sent: 0,
            bot_clicks_sent: 0,
            commands: Tally::new(),
            command_outcomes: BTreeMap::new(),
            freshness_us: new_histogram(),
            freshness_missed: 0,
            repeated_sent: 0,
            invalid_sent: 0,
            seconds: Vec::new(),
        }
    }

    fn second(&mut self, index: usize) -> &mut Second {
        while self.seconds.len() <= index {
            self.seconds.push(Second {
                succeeded: 0,
                failed: 0,
                latency_us: new_histogram(),
            });
        }
        &mut self.seconds[index]
    }

    pub fn timeline(&self) -> Vec<SecondSample> {
        self.seconds
            .iter()
            .enumerate()
            .map(|(index, second)| {
                let answered = !second.latency_us.is_empty();
                let at = |q: f64| {
                    answered.then(|| second.latency_us.value_at_quantile(q) as f64 / 1000.0)
                };
                SecondSample {
                    second: u32::try_from(index).unwrap_or(u32::MAX),
                    succeeded: second.succeeded,
                    failed: second.failed,
                    p50_ms: at(0.5),
                    p99_ms: at(0.99),
                }
            })
            .collect()
    }
}

/// The shared state of a run.
pub struct Run {
    pub population: Arc<Population>,
    pub endpoints: Endpoints,
    pub client: HttpClient,
    /// For link GETs and HEADs (keeps the answers' headers).
    pub links: LinkClient,
    /// The writer's `--dedup-window`, which the verifier's exact verdict check relies on.
    pub dedup_window: Duration,
    pub ledger: Mutex<Ledger>,
    pub recorder: Mutex<Recorder>,
    pub started: Instant,
    /// Set when the load phase is over (the command stream stops too).
    pub finished: AtomicBool,
    answered: AtomicU64,
}

impl Run {
    pub fn new(
        population: Population,
        endpoints: Endpoints,
        client: HttpClient,
        links: LinkClient,
        dedup_window: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            population: Arc::new(population),
            endpoints,
            client,
            links,
            dedup_window,
            ledger: Mutex::new(Ledger::default()),
            recorder: Mutex::new(Recorder::new()),
            started: Instant::now(),
            finished: AtomicBool::new(false),
            answered: AtomicU64::new(0),
        })
    }

    pub fn elapsed_seconds(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// The POST of a click to the edge, with its headers.
    fn click_call(&self, request: &ClickRequest) -> Call<'static> {
        let mut call = Call {
            method: Method::POST,
            url: format!("{}{}", self.endpoints.ingest, request.path),
            body: Some((request.body.clone(), request.content_type)),
            headers: Vec::new(),
        };
        if let Some(agent) = request.user_agent {
            call.headers.push((header::USER_AGENT, agent));
        }
        if let Some(referer) = request.referer {
            call.headers.push((header::REFERER, referer));
        }
        call
    }

    /// Sends one click and records its answer. `due`: when it was scheduled.
    async fn click(self: &Arc<Self>, request: ClickRequest, due: Instant) {
        let outcome = self.client.send(self.click_call(&request), false).await;
        let latency = due.elapsed();
        let succeeded = self.judge_click(&request, &outcome);
        self.answered.fetch_add(1, Ordering::Relaxed);
        let second = self.second_of(Instant::now());
        let mut recorder = lock(&self.recorder);
        recorder.clicks.record(&outcome, latency);
        recorder.repeated_sent += u64::from(request.repeated);
        recorder.invalid_sent += u64::from(matches!(request.expect, Expect::Rejected { .. }));
        if let Some(visitor) = &request.visitor {
            recorder.revisits_sent += u64::from(request.revisit);
            recorder.bot_clicks_sent += u64::from(is_bot(visitor.user_agent));
        }
        let slot = recorder.second(second);
        match succeeded {
            Some(true) => slot.succeeded += 1,
            None => slot.failed += 1,
            Some(false) => {}
        }
        if outcome.status().is_some() {
            let _ = slot.latency_us.record(micros(latency));
        }
    }

    fn second_of(&self, at: Instant) -> usize {
        usize::try_from(at.saturating_duration_since(self.started).as_secs()).unwrap_or(0)
    }

    /// Sends one link GET or HEAD and records its answer. `due`: when it was scheduled.
    async fn link(self: &Arc<Self>, request: LinkRequest, due: Instant) {
        let method = if request.head {
            Method::HEAD
        } else {
            Method::GET
        };
        let url = format!("{}{}", self.endpoints.ingest, request.path);
        let mut headers = Vec::new();
        if let Some(agent) = request.visitor.user_agent {
            headers.push((header::USER_AGENT, agent));
        }
        if let Some(referer) = request.referer {
            headers.push((header::REFERER, referer));
        }
        let outcome = self.links.send(method, &url, &headers).await;
        let latency = due.elapsed();
        let code = request.visitor.code;
        let judgement = judge_link(&request, &self.population.destination(code), &outcome);
        {
            let mut ledger = lock(&self.ledger);
            match (&judgement, request.kind, request.head) {
                (_, _, true) => {}
                (_, LinkKind::Pixel, false) => ledger.pixel_sent(code),
                (LinkJudgement::Recorded(id), LinkKind::Redirect, false) => {
                    let sent = Sent {
                        mentor: request.visitor.mentor,
                        code,
                        occurred_at: None,
                        user_agent: request.visitor.user_agent.map(str::to_owned),
                        ip: None,
                    };
                    ledger.acked(id.clone(), sent, Channel::Redirect);
                }
                (_, LinkKind::Redirect, false) => ledger.attempted(code),
            }
            if let LinkJudgement::Wrong(what) = &judgement {
                ledger.violations.record(what.clone());
            }
        }
        self.answered.fetch_add(1, Ordering::Relaxed);
        let second = self.second_of(Instant::now());
        let mut recorder = lock(&self.recorder);
        let tally = match (request.head, request.kind) {
            (true, _) => &mut recorder.heads,
            (false, LinkKind::Redirect) => &mut recorder.redirects,
            (false, LinkKind::Pixel) => &mut recorder.pixels,
        };
        tally.record(&outcome.tally(), latency);
        if !request.head {
            recorder.revisits_sent += u64::from(request.revisit);
            recorder.bot_clicks_sent += u64::from(is_bot(request.visitor.user_agent));
        }
        if request.kind == LinkKind::Redirect && !request.head {
            match judgement {
                LinkJudgement::Recorded(_) => recorder.redirects_recorded += 1,
                LinkJudgement::Answered => recorder.redirects_unrecorded += 1,
                _ => {}
            }
        }
        let slot = recorder.second(second);
        match judgement {
            LinkJudgement::Recorded(_) | LinkJudgement::Answered => slot.succeeded += 1,
            LinkJudgement::Failed => slot.failed += 1,
            LinkJudgement::Wrong(_) => {}
        }
        if let LinkOutcome::Answered(_) = outcome {
            let _ = slot.latency_us.record(micros(latency));
        }
    }

    /// Sends one request of the stream.
    async fn send(self: &Arc<Self>, traffic: Traffic, due: Instant) {
        match traffic {
            Traffic::Post(request) => self.click(request, due).await,
            Traffic::Link(request) => self.link(request, due).await,
        }
    }

    /// Sends one valid click, then reads it back by id until it is there: the time from its
    /// 201 to the first 200 is its freshness. The API's read-after-write wait answers a GET
    /// for a fresh id as soon as it is stored (it polls every 50 ms), so a GET is re-sent
    /// only after a 404.
    async fn probe_freshness(self: &Arc<Self>, request: ClickRequest) {
        let outcome = self.client.send(self.click_call(&request), false).await;
        let acknowledged = Instant::now();
        if self.judge_click(&request, &outcome) != Some(true) {
            return;
        }
        let Some(id) = outcome
            .json()
            .and_then(|body| body["id"].as_str().map(str::to_owned))
        else {
            return;
        };
        let url = format!("{}/api/v1/referral-attributions/{id}", self.endpoints.api);
        while acknowledged.elapsed() < Duration::from_secs(30) {
            if self
                .client
                .send(Call::get(url.clone()), true)
                .await
                .status()
                == Some(200)
            {
                let fresh = acknowledged.elapsed();
                let _ = lock(&self.recorder).freshness_us.record(micros(fresh));
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        lock(&self.recorder).freshness_missed += 1;
    }

    /// Checks a click's answer. Some(true): acknowledged as it should be; Some(false): an
    /// expected refusal; None: failed (no answer, 5xx, refused by a limit).
    fn judge_click(&self, request: &ClickRequest, outcome: &Outcome) -> Option<bool> {
        if let Expect::Created { code, .. } = request.expect
            && outcome.status() != Some(201)
        {
            // It may have been stored all the same (an answer lost after the log had it).
            lock(&self.ledger).attempted(code);
        }
        let status = outcome.status()?;
        match (&request.expect, status) {
            (Expect::Created { mentor, code }, 201) => {
                let body = outcome.json().unwrap_or_default();
                let id = body["id"].as_str().unwrap_or_default().to_owned();
                let mentor_id = &self.population.mentors[*mentor];
                let code_text = &self.population.codes[*code].0;
                let mut ledger = lock(&self.ledger);
                if body["mentor_id"].as_str() != Some(mentor_id.as_str())
                    || body["code"].as_str() != Some(code_text.as_str())
                    || !id.starts_with("attr_")
                {
                    ledger.violations.record(format!(
                        "click for {code_text} answered 201 with {body} (expected mentor {mentor_id})"
                    ));
                    return Some(true);
                }
                let occurred_at = body["occurred_at"].as_str().map(str::to_owned);
                let visitor = request.visitor.as_ref();
                let sent = Sent {
                    mentor: *mentor,
                    code: *code,
                    occurred_at,
                    user_agent: visitor.and_then(|v| v.user_agent).map(str::to_owned),
                    ip: visitor.and_then(|v| v.ip.clone()),
                };
                ledger.acked(id, sent, Channel::Post);
                Some(true)
            }
            (
                Expect::Rejected {
                    status: want,
                    field,
                    why,
                },
                got,
            ) if got == *want => {
                let body = outcome.json().unwrap_or_default();
                let answered_field = body["error"]["field"].as_str();
                if field.is_some() && answered_field != *field {
                    lock(&self.ledger).violations.record(format!(
                        "{why}: {got} with field {answered_field:?}, expected {field:?}: {body}"
                    ));
                }
                Some(false)
            }
            (_, 429 | 503) => None,
            (_, got) if got >= 500 => None,
            (expect, got) => {
                let body = match outcome {
                    Outcome::Answered { body, .. } => String::from_utf8_lossy(body).into_owned(),
                    _ => String::new(),
                };
                lock(&self.ledger).violations.record(format!(
                    "click {} expected {expect:?}, got {got}: {body}",
                    String::from_utf8_lossy(&request.body)
                ));
                Some(false)
            }
        }
    }

    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }
}

/// Runs the load phase to its end and returns the elapsed time of the load.
pub async fn drive(run: &Arc<Run>, plan: &LoadPlan) -> Duration {
    let progress = progress_bar(plan);
    let commands = (plan.commands_per_second > 0.0).then(|| {
        let run = run.clone();
        let rate = plan.commands_per_second;
        let seed = plan.seed ^ 0xC0FF_EE00;
        let min_age = plan.command_min_age;
        tokio::spawn(async move { command_stream(run, rate, min_age, seed).await })
    });
    let prober = plan.freshness_probe.map(|interval| {
        let run = run.clone();
        let mix = Mix {
            invalid: 0.0,
            duplicate: 0.0,
        };
        let mut generator = ClickGenerator::new(plan.seed ^ 0xF8E5, mix);
        tokio::spawn(async move {
            let mut probes = tokio::task::JoinSet::new();
            while !run.finished.load(Ordering::Relaxed) {
                let request = generator.next(&run.population);
                let run = run.clone();
                probes.spawn(async move { run.probe_freshness(request).await });
                tokio::time::sleep(interval).await;
            }
            while probes.join_next().await.is_some() {}
        })
    });
    let ticker = {
        let run = run.clone();
        let progress = progress.clone();
        let duration = plan.duration;
        tokio::spawn(async move {
            while !run.finished.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let elapsed = run.started.elapsed().min(duration);
                progress.set_position(elapsed.as_millis() as u64);
                let answered = run.answered();
                let acked = lock(&run.ledger).acked_count();
                progress.set_message(format!("answered {answered} acked {acked}"));
            }
        })
    };
    let started = Instant::now();
    match plan.mode {
        Mode::Rate(rate) => open_loop(run, plan, rate).await,
        Mode::Max { connections } => closed_loop(run, plan, connections).await,
    }
    let elapsed = started.elapsed();
    run.finished.store(true, Ordering::Relaxed);
    if let Some(commands) = commands {
        let _ = commands.await;
    }
    if let Some(prober) = prober {
        let _ = prober.await;
    }
    let _ = ticker.await;
    progress.finish_and_clear();
    elapsed
}

fn progress_bar(plan: &LoadPlan) -> ProgressBar {
    if !plan.progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(plan.duration.as_millis() as u64);
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {percent:>3}% {msg}")
    {
        bar.set_style(style);
    }
    bar
}

async fn open_loop(run: &Arc<Run>, plan: &LoadPlan, rate: f64) {
    let permits = Arc::new(Semaphore::new(plan.max_in_flight.max(1)));
    let mut generator = ClickGenerator::new(plan.seed, plan.mix);
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let start = run.started;
    let end = start + plan.duration;
    let mut tasks = tokio::task::JoinSet::new();
    let mut index: u32 = 0;
    loop {
        let due = start + interval.saturating_mul(index);
        if due >= end {
            break;
        }
        index = index.saturating_add(1);
        tokio::time::sleep_until(due).await;
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let request = generator.next_traffic(&run.population);
        let run = run.clone();
        tasks.spawn(async move {
            run.send(request, due).await;
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

async fn closed_loop(run: &Arc<Run>, plan: &LoadPlan, connections: usize) {
    let end = run.started + plan.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..connections.max(1) {
        let run = run.clone();
        let mut generator = ClickGenerator::new(plan.seed.wrapping_add(worker as u64), plan.mix);
        tasks.spawn(async move {
            while Instant::now() < end {
                let request = generator.next_traffic(&run.population);
                run.send(request, Instant::now()).await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// The reason every reversal of a run gives (so that sending one again is a retry).
pub const REVERSAL_REASON: &str = "refund";

/// What a command is, for the expected answer.
#[derive(Debug, Clone, Copy)]
enum CommandKind {
    /// A pending click confirmed with a new member: 200 (409 `not_a_visitor` for a bot's
    /// click).
    Confirm,
    /// An acknowledged confirmation sent again: 200 with the same member.
    RetryConfirm,
    /// A pending click confirmed with a member already attributed: 409
    /// `member_already_attributed` (`not_a_visitor` for a bot's click: checked first).
    MemberTaken,
    /// A confirmed click confirmed with another member: 409.
    OtherMember,
    /// 200, then the attribution is gone.
    Delete,
    /// A deleted attribution deleted again: 404.
    DeleteAgain,
    /// A confirmed conversion reversed (a refund): 200 with status `reversed`.
    Reverse,
    /// An acknowledged reversal sent again: 200, the same reversal.
    ReverseAgain,
}

impl CommandKind {
    fn draw(rng: &mut SmallRng) -> Self {
        match rng.random_range(0..100u8) {
            0..55 => Self::Confirm,
            55..62 => Self::RetryConfirm,
            62..67 => Self::MemberTaken,
            67..72 => Self::OtherMember,
            72..78 => Self::Reverse,
            78..80 => Self::ReverseAgain,
            80..96 => Self::Delete,
            _ => Self::DeleteAgain,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Confirm => "confirm",
            Self::RetryConfirm => "confirm retried",
            Self::MemberTaken => "confirm, member taken",
            Self::OtherMember => "confirm, other member",
            Self::Delete => "delete",
            Self::DeleteAgain => "delete again",
            Self::Reverse => "reverse",
            Self::ReverseAgain => "reverse again",
        }
    }
}

async fn command_stream(run: Arc<Run>, rate: f64, min_age: Duration, seed: u64) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let permits = Arc::new(Semaphore::new(32));
    let mut tasks = tokio::task::JoinSet::new();
    let mut member_serial: u64 = 0;
    let mut next = Instant::now();
    while !run.finished.load(Ordering::Relaxed) {
        next += interval;
        tokio::time::sleep_until(next).await;
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let kind = CommandKind::draw(&mut rng);
        let Some(command) = plan_command(&run, kind, &mut rng, &mut member_serial, min_age) else {
            continue;
        };
        let run = run.clone();
        tasks.spawn(async move {
            execute_command(&run, command).await;
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

/// A command ready to send: the attribution it targets and, for a member conflict, the
/// attribution holding the member (kept busy too, so a delete cannot free the member while
/// the command is in flight).
struct PlannedCommand {
    kind: CommandKind,
    id: String,
    holder: Option<String>,
    method: Method,
    url: String,
    body: Option<String>,
    /// The member a confirmation names.
    member: Option<String>,
    /// The target's user agent (as sent) is a bot's: a confirmation must be refused.
    bot: bool,
}

/// Picks the target of a command (marking it busy) and builds the request.
fn plan_command(
    run: &Run,
    kind: CommandKind,
    rng: &mut SmallRng,
    member_serial: &mut u64,
    min_age: Duration,
) -> Option<PlannedCommand> {
    let mut ledger = lock(&run.ledger);
    let base = format!("{}/api/v1/referral-attributions", run.endpoints.api);
    let mut fresh_member = || {
        *member_serial += 1;
        format!("mbr_ld{}_{member_serial}", run.population.run_id)
    };
    // An acknowledged confirmation whose attribution is still confirmed and idle; marked busy.
    let confirmed = |ledger: &mut Ledger, rng: &mut SmallRng| {
        if ledger.confirmations.is_empty() {
            return None;
        }
        let index = rng.random_range(0..ledger.confirmations.len());
        let (id, code, member) = ledger.confirmations[index].clone();
        let click = ledger.clicks.get_mut(&id)?;
        if click.busy || !matches!(click.state, ClickState::Confirmed { .. }) {
            return None;
        }
        click.busy = true;
        Some((id, code, member))
    };
    let (id, holder, method, body, member) = match kind {
        CommandKind::Confirm => {
            let id = ledger.take_target(rng, false, min_age)?;
            let code = &run.population.codes[ledger.clicks.get(&id)?.code].0;
            let member = fresh_member();
            let body = json!({"code": code, "new_member_id": member}).to_string();
            (id, None, Method::PUT, Some(body), Some(member))
        }
        CommandKind::MemberTaken => {
            let (holder, _, member) = confirmed(&mut ledger, rng)?;
            let Some(id) = ledger.take_target(rng, false, min_age) else {
                ledger.release(&holder, None);
                return None;
            };
            let code = &run.population.codes[ledger.clicks.get(&id)?.code].0;
            let body = json!({"code": code, "new_member_id": member}).to_string();
            (id, Some(holder), Method::PUT, Some(body), Some(member))
        }
        CommandKind::RetryConfirm | CommandKind::OtherMember => {
            let (id, code, member) = confirmed(&mut ledger, rng)?;
            let member = match kind {
                CommandKind::OtherMember => fresh_member(),
                _ => member,
            };
            let body = json!({"code": code, "new_member_id": member}).to_string();
            (id, None, Method::PUT, Some(body), Some(member))
        }
        CommandKind::Delete => (
            ledger.take_target(rng, true, min_age)?,
            None,
            Method::DELETE,
            None,
            None,
        ),
        CommandKind::DeleteAgain => {
            if ledger.deleted.is_empty() {
                return None;
            }
            let id = ledger.deleted[rng.random_range(0..ledger.deleted.len())].clone();
            let click = ledger.clicks.get_mut(&id)?;
            if click.busy || click.state != ClickState::Deleted {
                return None;
            }
            click.busy = true;
            (id, None, Method::DELETE, None, None)
        }
        CommandKind::Reverse => {
            let (id, _, member) = confirmed(&mut ledger, rng)?;
            let body = json!({"reason": REVERSAL_REASON}).to_string();
            (id, None, Method::POST, Some(body), Some(member))
        }
        CommandKind::ReverseAgain => {
            if ledger.reversed.is_empty() {
                return None;
            }
            let id = ledger.reversed[rng.random_range(0..ledger.reversed.len())].clone();
            let click = ledger.clicks.get_mut(&id)?;
            let ClickState::Reversed { member, .. } = click.state.clone() else {
                return None;
            };
            if click.busy {
                return None;
            }
            click.busy = true;
            let body = json!({"reason": REVERSAL_REASON}).to_string();
            (id, None, Method::POST, Some(body), Some(member))
        }
    };
    let url = match kind {
        CommandKind::Reverse | CommandKind::ReverseAgain => format!("{base}/{id}/reversal"),
        _ => format!("{base}/{id}"),
    };
    let bot = ledger
        .clicks
        .get(&id)
        .is_some_and(|click| is_bot(click.user_agent.as_deref()));
    Some(PlannedCommand {
        kind,
        url,
        id,
        holder,
        method,
        body,
        member,
        bot,
    })
}

async fn execute_command(run: &Run, command: PlannedCommand) {
    let PlannedCommand {
        kind,
        id,
        holder,
        method,
        url,
        body,
        member: sent,
        bot,
    } = command;
    let id = id.as_str();
    let call = match body {
        Some(body) => Call::json(method, url, body),
        None => Call {
            method,
            url,
            body: None,
            headers: Vec::new(),
        },
    };
    let started = Instant::now();
    let outcome = run.client.send(call, true).await;
    let latency = started.elapsed();
    let answer = outcome.json().unwrap_or_default();
    let status = outcome.status();
    let mut ledger = lock(&run.ledger);
    let error_code = answer["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let sent_member = |ledger: &Ledger| -> Option<String> {
        ledger
            .confirmations
            .iter()
            .find(|(confirmed, _, _)| confirmed == id)
            .map(|(_, _, member)| member.clone())
    };
    let confirms = matches!(kind, CommandKind::Confirm | CommandKind::MemberTaken);
    let new_state = match (kind, status) {
        (_, None) | (_, Some(500..)) | (_, Some(429)) => Some(ClickState::Uncertain),
        // The writer refuses to confirm a bot's click, and only a bot's.
        (_, Some(409)) if confirms && error_code == "not_a_visitor" => {
            if !bot {
                ledger.violations.record(format!(
                    "{} {id}: 409 not_a_visitor for a click whose user agent is no bot's: \
                     {answer}",
                    kind.name()
                ));
            }
            None
        }
        (_, Some(status)) if confirms && bot && status != 404 => {
            ledger.violations.record(format!(
                "{} {id} (a bot's click): expected 409 not_a_visitor, got {status} {answer}",
                kind.name()
            ));
            Some(ClickState::Uncertain)
        }
        // A confirmed (or reversed) attribution was visible: "not found" for it is wrong.
        (CommandKind::Delete | CommandKind::Reverse | CommandKind::ReverseAgain, Some(404))
            if matches!(
                ledger.clicks.get(id).map(|click| &click.state),
                Some(ClickState::Confirmed { .. } | ClickState::Reversed { .. })
            ) =>
        {
            ledger.violations.record(format!(
                "{} {id} (confirmed or reversed): 404 {answer}",
                kind.name()
            ));
            Some(ClickState::Uncertain)
        }
        // The click was not visible to the API yet (acknowledged moments before an outage):
        // a definite "not found", nothing applied.
        (CommandKind::Confirm | CommandKind::MemberTaken | CommandKind::Delete, Some(404)) => None,
        (CommandKind::Confirm, Some(200)) => {
            // The ledger holds what was sent: an answer naming another member is wrong.
            let member = sent.clone().unwrap_or_default();
            if answer["status"] != "confirmed"
                || answer["id"] != id
                || answer["new_member_id"] != member.as_str()
            {
                ledger
                    .violations
                    .record(format!("confirm {id}: 200 with {answer}"));
            }
            let code = ledger
                .clicks
                .get(id)
                .map(|click| run.population.codes[click.code].0.clone())
                .unwrap_or_default();
            ledger
                .confirmations
                .push((id.to_owned(), code, member.clone()));
            Some(ClickState::Confirmed { member })
        }
        (CommandKind::RetryConfirm, Some(200)) => {
            if answer["new_member_id"].as_str().map(str::to_owned) != sent_member(&ledger) {
                ledger
                    .violations
                    .record(format!("retried confirm {id}: 200 with {answer}"));
            }
            None
        }
        (CommandKind::MemberTaken, Some(409)) if error_code == "member_already_attributed" => None,
        (CommandKind::OtherMember, Some(409)) if error_code == "already_confirmed" => None,
        (CommandKind::Delete, Some(200)) => {
            if answer["deleted"] != true || answer["id"] != id {
                ledger
                    .violations
                    .record(format!("delete {id}: 200 with {answer}"));
            }
            ledger.deleted.push(id.to_owned());
            Some(ClickState::Deleted)
        }
        (CommandKind::DeleteAgain, Some(404)) => None,
        (CommandKind::Reverse | CommandKind::ReverseAgain, Some(200)) => {
            let member = sent.clone().unwrap_or_default();
            let reversed_at = answer["reversed_at"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            // A retry answers the first reversal, its instant included.
            let first = match ledger.clicks.get(id).map(|click| &click.state) {
                Some(ClickState::Reversed { reversed_at, .. }) => Some(reversed_at.clone()),
                _ => None,
            };
            if answer["status"] != "reversed"
                || answer["id"] != id
                || answer["type"] != "conversion"
                || answer["new_member_id"] != member.as_str()
                || answer["reversal_reason"] != REVERSAL_REASON
                || reversed_at.is_empty()
                || first.as_ref().is_some_and(|first| *first != reversed_at)
            {
                ledger
                    .violations
                    .record(format!("{} {id}: 200 with {answer}", kind.name()));
            }
            if matches!(kind, CommandKind::Reverse) {
                ledger.reversed.push(id.to_owned());
            }
            Some(ClickState::Reversed {
                member,
                reversed_at: first.unwrap_or(reversed_at),
            })
        }
        (kind, Some(status)) => {
            ledger.violations.record(format!(
                "{} {id}: expected another answer than {status} {answer}",
                kind.name()
            ));
            Some(ClickState::Uncertain)
        }
    };
    ledger.release(id, new_state);
    if let Some(holder) = holder {
        ledger.release(&holder, None);
    }
    drop(ledger);
    let mut recorder = lock(&run.recorder);
    recorder.commands.record(&outcome, latency);
    let label = match status {
        Some(status) if !error_code.is_empty() && status < 500 => {
            format!("{} {status} {error_code}", kind.name())
        }
        Some(status) => format!("{} {status}", kind.name()),
        None => format!("{} no answer", kind.name()),
    };
    *recorder.command_outcomes.entry(label).or_default() += 1;
}
