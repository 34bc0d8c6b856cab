//! The end-to-end verifier: after the pipeline drained, the store must hold exactly what
//! the service acknowledged, each click with the verdict the rules give it.
//!
//! - Each run mentor's attributions are read in one streamed export (`GET
//!   /api/v1/referral-attributions/export?format=ndjson&mentor_id=`: whole attributions, as
//!   `GET /{id}` prints them), with its totals before and after (read again if they moved).
//!   Every acknowledged click (a click POST's 201, or a redirect's `attribution_id`) is in
//!   its mentor's export with its mentor, code, `occurred_at` (POSTs), the user agent and IP
//!   it was sent with, a verdict, and the state its acknowledged commands gave it; an
//!   acknowledged delete took it out. A sample of [`BY_ID_SAMPLE`] acknowledged clicks,
//!   spread over the run, is also read by id, which must answer exactly the export's row
//!   (or 404 when the export has none). One request per mentor instead of one per click.
//! - Each mentor's export holds no id twice and no deleted id, and includes every
//!   acknowledged live click of the mentor; its row count is the list's
//!   `pagination.total`.
//! - Each mentor's materialized totals equal what its listing holds: `total_clicks` = the
//!   listed `counted` clicks, `filtered_clicks.duplicate` and `.bot` = the listed
//!   duplicates and bots, `total_conversions` = the confirmed ones, `reversed_conversions`
//!   = the reversed ones (a refund the run sent); the mentor route's
//!   `?verdict=` filter counts the same (its `pagination.total`). A click applied twice
//!   shows up here, because the totals are counted by the writer, not from the listing.
//! - **Verdicts**, exactly, for every stored click of the run's mentors
//!   ([`verdict_mismatches`]): `bot` if and only if `is_bot(user_agent)` (never confirmed,
//!   no `duplicate_of`). The other clicks are grouped by visitor (code, IP, user agent as
//!   stored). A run is far shorter than the writer's dedup window (`--dedup-window`,
//!   default 1 h; [`dedup_window`]), so every click of a visitor is within the window of
//!   every other: each visitor has exactly one `counted` click, and every other click of
//!   that visitor is a `duplicate` whose `duplicate_of` is that counted click's id. A
//!   deleted counted click still anchors its visitor's duplicates (a deletion does not
//!   reopen the window): duplicates may point to a click the run deleted (an acknowledged
//!   delete, or a delete of unknown outcome) that was sent as the same visitor, and then the
//!   visitor has no listed counted click. If the run's clicks span the window or more (by
//!   `created_at`, the edge's receive time, which the window runs on), which click of a
//!   visitor counts depends on timing the verifier does not see: only the bot rule is
//!   checked, and the report says so. A window of 0 makes every non-bot click `counted`.
//!
//! Clicks whose request got no id (a POST that failed: timeout, 503, cut connection; a
//! redirect without `attribution_id`; every pixel GET, whose answer never tells) may or may
//! not be stored: those that are count as `unacked_stored` and `pixel_stored` (told apart
//! by the pixel's referrer), never as an error, but never more per code than such requests
//! were sent, and never one with the HEAD-only user agent (a preview recorded): past that
//! they are `unexplained` and fail the run. Only the run's own mentors are checked, so a
//! shared deployment with other data can be verified too.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use referral_schemas::Timestamp;
use referral_schemas::query::COUNT_BOUND;
use referral_schemas::verdict::is_bot;
use serde_json::Value;
use tokio::task::JoinSet;

use crate::driver::{Run, lock};
use crate::http::{Call, HttpClient, Outcome};
use crate::ledger::{Channel, ClickState, Ledger};
use crate::traffic::{PREVIEW_AGENT, is_pixel_referrer};

/// Requests in flight while verifying.
const CONCURRENCY: usize = 16;
/// Attempts per verification read (a transport error is retried, never counted as loss).
const ATTEMPTS: u32 = 5;
/// Acknowledged clicks also read by id (spread over the run), each compared with its row
/// in the export.
const BY_ID_SAMPLE: usize = 2_000;
/// Longest wait for one mentor's export.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(600);
/// How long before the run's start a mentor's export begins: the generator dates a
/// click at most an hour back.
const EXPORT_LOOKBACK_MS: i64 = 2 * 3_600_000;
/// The writer's default `--dedup-window`.
pub const DEFAULT_DEDUP_WINDOW: Duration = Duration::from_secs(3600);

static DEDUP_WINDOW: OnceLock<Duration> = OnceLock::new();

/// Tells the verifier the writer's `--dedup-window` (`referral-load run --dedup-window`).
pub fn set_dedup_window(window: Duration) {
    let _ = DEDUP_WINDOW.set(window);
}

/// The writer's dedup window: as set, else `REFERRAL_DEDUP_WINDOW` (which the pipelines this
/// tool starts inherit), else the default, 1 h.
pub fn dedup_window() -> Duration {
    if let Some(window) = DEDUP_WINDOW.get() {
        return *window;
    }
    std::env::var("REFERRAL_DEDUP_WINDOW")
        .ok()
        .and_then(|text| humantime::parse_duration(text.trim()).ok())
        .unwrap_or(DEFAULT_DEDUP_WINDOW)
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Verification {
    /// Clicks acknowledged: a POST's 201, a redirect's `attribution_id`.
    pub acked: u64,
    /// Of those, found as acknowledged (or gone after an acknowledged delete).
    pub stored: u64,
    /// Acknowledged, not deleted, and not readable.
    pub lost: u64,
    /// Attributions counted more than once: repeated ids in a listing, or totals above the
    /// attributions they are made of.
    pub duplicated: u64,
    /// Stored, but in a state that contradicts the acknowledged answers (a deleted id that
    /// reads back, a wrong mentor or member, totals below their attributions, ...).
    pub inconsistent: u64,
    /// Stored attributions whose POST or redirect GET returned no id (allowed: the request
    /// failed after the event was durable, or the redirect could not wait for it).
    pub unacked_stored: u64,
    /// Stored pixel clicks (a pixel never tells; allowed up to the pixel GETs sent).
    pub pixel_stored: u64,
    /// Stored clicks that no request explains: more of a code without an id than requests
    /// of it that got none, more pixel clicks than pixel GETs, any click of a HEAD.
    pub unexplained: u64,
    /// Acknowledged clicks with a command of unknown outcome (either state accepted).
    pub uncertain: u64,
    /// Wrong answers during the load (from the ledger).
    pub violations: u64,
    /// The run's mentors' stored clicks by verdict.
    pub counted: u64,
    pub duplicate: u64,
    pub bot: u64,
    /// Stored clicks whose verdict or `duplicate_of` breaks the rules.
    pub verdict_mismatches: u64,
    /// How the verdicts were checked: exactly, or why only the bot rule was.
    pub verdict_check: String,
    pub mentors_checked: u64,
    /// Acknowledged clicks also read by id (a sample), each compared with its export row.
    pub read_by_id: u64,
    pub drain_seconds: f64,
    pub verify_seconds: f64,
    /// The first problems found, for the report.
    pub problems: Vec<String>,
}

impl Verification {
    pub fn line(&self) -> String {
        format!(
            "acked={} stored={} lost={} duplicated={}",
            self.acked, self.stored, self.lost, self.duplicated
        )
    }

    /// The verdicts' line: counts by verdict and the mismatches found.
    pub fn verdict_line(&self) -> String {
        format!(
            "verdicts: counted={} duplicate={} bot={} mismatches={} ({}); pixel_stored={} \
             unacked_stored={} unexplained={}",
            self.counted,
            self.duplicate,
            self.bot,
            self.verdict_mismatches,
            self.verdict_check,
            self.pixel_stored,
            self.unacked_stored,
            self.unexplained
        )
    }

    pub fn passed(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.inconsistent == 0
            && self.violations == 0
            && self.unexplained == 0
            && self.verdict_mismatches == 0
    }

    fn problem(&mut self, what: String) {
        if self.problems.len() < 30 {
            self.problems.push(what);
        }
    }
}

/// A GET answered with JSON (or 404), retried on transport errors and 5xx.
async fn get(run: &Run, url: String) -> Result<(u16, Value), String> {
    let (status, body) = get_bytes(&run.client, url).await?;
    Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

/// A GET's status and raw body (below 500), retried on transport errors and 5xx.
async fn get_bytes(client: &HttpClient, url: String) -> Result<(u16, bytes::Bytes), String> {
    let mut last = String::new();
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
        }
        match client.send(Call::get(url.clone()), true).await {
            Outcome::Answered { status, body } if status.as_u16() < 500 => {
                return Ok((status.as_u16(), body));
            }
            Outcome::Answered { status, body } => {
                last = format!("{status}: {}", String::from_utf8_lossy(&body));
            }
            Outcome::TimedOut => last = "timed out".to_owned(),
            Outcome::Transport(error) => last = error,
        }
    }
    Err(format!("GET {url}: {last}"))
}

/// A mentor's all-time totals, as `GET .../mentor/{id}/total` answers them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// `total_clicks`: counted clicks only.
    pub clicks: i64,
    /// `filtered_clicks.duplicate` and `.bot`.
    pub duplicates: i64,
    pub bots: i64,
    pub conversions: i64,
    /// `reversed_conversions`.
    pub reversals: i64,
}

impl Totals {
    /// Stored clicks of every verdict.
    pub fn recorded(&self) -> i64 {
        self.clicks + self.duplicates + self.bots
    }
}

/// Each mentor's all-time totals, for the drain check.
async fn mentor_totals(run: &Arc<Run>) -> Result<Vec<Totals>, String> {
    let mut totals = vec![Totals::default(); run.population.mentors.len()];
    let mut tasks = JoinSet::new();
    let mut mentors = run.population.mentors.iter().enumerate();
    loop {
        while tasks.len() < CONCURRENCY
            && let Some((index, mentor)) = mentors.next()
        {
            let run = run.clone();
            let base = mentor_base(&run, mentor);
            let mentor = mentor.clone();
            tasks.spawn(async move {
                let total = mentor_total(&run, &base, &mentor).await?;
                Ok::<_, String>((index, total))
            });
        }
        let Some(joined) = tasks.join_next().await else {
            break;
        };
        let (index, total): (usize, Totals) = joined.map_err(|error| error.to_string())??;
        totals[index] = total;
    }
    Ok(totals)
}

fn mentor_base(run: &Run, mentor: &str) -> String {
    format!(
        "{}/api/v1/referral-attributions/mentor/{mentor}",
        run.endpoints.api
    )
}

/// Waits until the pipeline has applied everything: every mentor's recorded clicks (of
/// every verdict) reach at least its acknowledged live clicks, then every mentor's totals
/// stay the same for two polls in a row (a command decided late moves conversions only).
pub async fn drain(run: &Arc<Run>, timeout: Duration) -> Result<f64, String> {
    let started = Instant::now();
    let mut minimum = vec![0i64; run.population.mentors.len()];
    for click in lock(&run.ledger).clicks.values() {
        if Ledger::is_live(&click.state) {
            minimum[click.mentor] += 1;
        }
    }
    let mut previous: Option<Vec<Totals>> = None;
    let mut steady = 0;
    let mut behind = 0;
    loop {
        match mentor_totals(run).await {
            Ok(totals) => {
                behind = totals
                    .iter()
                    .zip(&minimum)
                    .filter(|(totals, least)| totals.recorded() < **least)
                    .count();
                if behind == 0 && previous.as_ref() == Some(&totals) {
                    steady += 1;
                    if steady >= 2 {
                        return Ok(started.elapsed().as_secs_f64());
                    }
                } else {
                    steady = 0;
                }
                previous = Some(totals);
            }
            Err(error) if started.elapsed() >= timeout => return Err(error),
            Err(_) => {}
        }
        if started.elapsed() >= timeout {
            return Err(format!(
                "the pipeline did not drain within {timeout:?}: {behind} mentors' recorded \
                 clicks are below their acknowledged live clicks"
            ));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One acknowledged click read back by id.
#[derive(Debug, PartialEq, Eq)]
enum ByIdOutcome {
    Stored,
    Lost,
    Inconsistent(String),
}

/// What the ledger knows of an acknowledged click.
struct Expected<'a> {
    state: &'a ClickState,
    mentor: &'a str,
    code: &'a str,
    /// `None`: a redirect's click, dated by the edge: `occurred_at` = `created_at`.
    occurred_at: Option<&'a str>,
    user_agent: Option<&'a str>,
    /// `None`: the connection's address.
    ip: Option<&'a str>,
}

fn same_ip(a: &str, b: &str) -> bool {
    match (a.parse::<IpAddr>(), b.parse::<IpAddr>()) {
        (Ok(a), Ok(b)) => a.to_canonical() == b.to_canonical(),
        _ => a == b,
    }
}

fn judge_by_id(id: &str, expected: &Expected<'_>, status: u16, body: &Value) -> ByIdOutcome {
    let Expected {
        state,
        mentor,
        code,
        occurred_at,
        user_agent,
        ip,
    } = *expected;
    let verdict_known = body["verdict"]
        .as_str()
        .is_some_and(|verdict| ["counted", "duplicate", "bot"].contains(&verdict));
    let same_click = body["id"] == id
        && body["mentor_id"] == mentor
        && body["code"] == code
        && match occurred_at {
            Some(at) => body["occurred_at"] == at,
            None => body["occurred_at"].is_string() && body["occurred_at"] == body["created_at"],
        }
        && body["user_agent"].as_str() == user_agent
        && ip.is_none_or(|ip| {
            body["ip_address"]
                .as_str()
                .is_some_and(|read| same_ip(read, ip))
        })
        && verdict_known;
    match (state, status) {
        (ClickState::Uncertain, 404) => ByIdOutcome::Stored,
        // Either state its unanswered command allowed; the click itself must be intact.
        (ClickState::Uncertain, 200) if same_click => ByIdOutcome::Stored,
        (ClickState::Deleted, 404) => ByIdOutcome::Stored,
        (ClickState::Deleted, _) => ByIdOutcome::Inconsistent(format!(
            "{id} was deleted (acknowledged) but reads {status} {body}"
        )),
        (_, 404) => ByIdOutcome::Lost,
        (ClickState::Pending | ClickState::Confirmed { .. } | ClickState::Reversed { .. }, 200) => {
            let same_state = match state {
                ClickState::Confirmed { member } => {
                    body["status"] == "confirmed" && body["new_member_id"] == member.as_str()
                }
                ClickState::Reversed {
                    member,
                    reversed_at,
                } => {
                    body["status"] == "reversed"
                        && body["new_member_id"] == member.as_str()
                        && body["reversed_at"] == reversed_at.as_str()
                        && body["reversal_reason"] == crate::driver::REVERSAL_REASON
                }
                _ => body["status"] == "pending" && body["new_member_id"].is_null(),
            };
            if same_click && same_state {
                ByIdOutcome::Stored
            } else {
                ByIdOutcome::Inconsistent(format!(
                    "{id} expected {state:?} of {mentor}/{code} sent with user agent \
                     {user_agent:?} and IP {ip:?}, with a verdict; reads {body}"
                ))
            }
        }
        (_, status) => ByIdOutcome::Inconsistent(format!("{id} reads {status} {body}")),
    }
}

/// One stored click, as the global list prints it (a whole attribution).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredClick {
    pub id: String,
    pub code: String,
    pub status: String,
    pub ip_address: String,
    pub user_agent: Option<String>,
    pub referrer_url: Option<String>,
    pub verdict: Option<String>,
    pub duplicate_of: Option<String>,
    /// `created_at` (the edge's receive time) in ms since the epoch.
    pub created_at_ms: Option<i64>,
}

impl StoredClick {
    fn of(row: &Value) -> Self {
        let text = |field: &str| row[field].as_str().map(str::to_owned);
        Self {
            id: text("id").unwrap_or_default(),
            code: text("code").unwrap_or_default(),
            status: text("status").unwrap_or_default(),
            ip_address: text("ip_address").unwrap_or_default(),
            user_agent: text("user_agent"),
            referrer_url: text("referrer_url"),
            verdict: text("verdict"),
            duplicate_of: text("duplicate_of"),
            created_at_ms: row["created_at"]
                .as_str()
                .and_then(|at| Timestamp::parse_rfc3339(at).ok())
                .map(Timestamp::as_millis),
        }
    }
}

/// One mentor's listing and totals.
struct MentorState {
    rows: Vec<StoredClick>,
    /// The same rows as the export printed them (whole attributions, as `GET /{id}` does):
    /// each line as sent, parsed again when a click is judged (a line is a few hundred
    /// bytes; its parsed form several times that, for every click of a long run).
    exported: Vec<bytes::Bytes>,
    listed_total: i64,
    /// The mentor route's `pagination.total` with `?verdict=counted`, `duplicate`, `bot`.
    verdict_totals: [i64; 3],
    totals: Totals,
}

const VERDICTS: [&str; 3] = ["counted", "duplicate", "bot"];

/// A mentor's totals, then listing, then totals again; read again when the two totals
/// differ (a command decided during the read), so listing and totals are one state.
async fn read_mentor(run: &Run, mentor: &str) -> Result<MentorState, String> {
    let base = mentor_base(run, mentor);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let before = mentor_total(run, &base, mentor).await?;
        let (exported, rows, listed_total) = export_mentor(run, mentor).await?;
        let mut verdict_totals = [0; 3];
        for (total, verdict) in verdict_totals.iter_mut().zip(VERDICTS) {
            let (status, body) = get(run, format!("{base}?verdict={verdict}&limit=1")).await?;
            if status != 200 {
                return Err(format!(
                    "{mentor}'s {verdict} clicks answered {status}: {body}"
                ));
            }
            *total = body["pagination"]["total"].as_i64().unwrap_or(-1);
        }
        let after = mentor_total(run, &base, mentor).await?;
        if before == after || attempt >= 5 {
            return Ok(MentorState {
                rows,
                exported,
                listed_total,
                verdict_totals,
                totals: after,
            });
        }
    }
}

/// A mentor's all-time totals.
async fn mentor_total(run: &Run, base: &str, mentor: &str) -> Result<Totals, String> {
    let (status, body) = get(run, format!("{base}/total")).await?;
    let filtered = &body["filtered_clicks"];
    match (
        body["total_clicks"].as_i64(),
        filtered["duplicate"].as_i64(),
        filtered["bot"].as_i64(),
        body["total_conversions"].as_i64(),
        body["reversed_conversions"].as_i64(),
    ) {
        (Some(clicks), Some(duplicates), Some(bots), Some(conversions), Some(reversals))
            if status == 200 =>
        {
            Ok(Totals {
                clicks,
                duplicates,
                bots,
                conversions,
                reversals,
            })
        }
        _ => Err(format!("{mentor}'s totals answered {status}: {body}")),
    }
}

/// Every attribution of a mentor in one streamed export (`format=ndjson`, whole
/// attributions, newest first), and the list's `pagination.total` for the same filter.
/// One request per mentor instead of a read per click: a run of a million clicks is
/// verified in the time the export streams them.
async fn export_mentor(
    run: &Run,
    mentor: &str,
) -> Result<(Vec<bytes::Bytes>, Vec<StoredClick>, i64), String> {
    let base = format!("{}/api/v1/referral-attributions", run.endpoints.api);
    // A mentor of a long run has hundreds of thousands of rows: the export streams them
    // for longer than one request's usual time limit.
    let client = run.client.with_timeout(EXPORT_TIMEOUT);
    // The run's mentors are its own: nothing of theirs occurred before the run started,
    // less the hour a click may be dated back. Bounding the export there spares it a walk
    // down to 1970 through empty windows (about a second per mentor).
    let now = Timestamp::now().as_millis();
    let started = i64::try_from(run.started.elapsed().as_millis()).unwrap_or(i64::MAX);
    let since = Timestamp::from_millis(
        now.saturating_sub(started)
            .saturating_sub(EXPORT_LOOKBACK_MS)
            .div_euclid(1000)
            * 1000,
    );
    let url = format!("{base}/export?format=ndjson&mentor_id={mentor}&from={since}");
    let (status, body) = get_bytes(&client, url).await?;
    if status != 200 {
        return Err(format!(
            "{mentor}'s export answered {status}: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    let mut lines = Vec::new();
    let mut rows = Vec::new();
    let mut start = 0;
    for (at, byte) in body.iter().enumerate() {
        if *byte != b'\n' {
            continue;
        }
        let line = body.slice(start..at);
        start = at + 1;
        if line.is_empty() {
            continue;
        }
        let row: Value = serde_json::from_slice(&line)
            .map_err(|error| format!("{mentor}'s export: a line is not JSON ({error})"))?;
        rows.push(StoredClick::of(&row));
        lines.push(line);
    }
    if start < body.len() {
        return Err(format!("{mentor}'s export ends inside a line"));
    }
    let (status, body) = get(run, format!("{base}?mentor_id={mentor}&limit=1")).await?;
    if status != 200 {
        return Err(format!("{mentor}'s list answered {status}: {body}"));
    }
    let listed_total = body["pagination"]["total"].as_i64().unwrap_or(-1);
    Ok((lines, rows, listed_total))
}

/// What the ledger knows of an acknowledged click, for the checks after the reads by id.
struct AckedRecord {
    id: String,
    state: ClickState,
    mentor: usize,
    code: usize,
    /// `None` for a redirect's click (see [`Expected::occurred_at`]).
    occurred_at: Option<String>,
    user_agent: Option<String>,
    ip: Option<String>,
}

/// Checks the store against the ledger. Call after [`drain`].
pub async fn verify(run: &Arc<Run>) -> Result<Verification, String> {
    let started = Instant::now();
    let (clicks, violations, attempts, pixels) = {
        let ledger = lock(&run.ledger);
        let clicks: Vec<AckedRecord> = ledger
            .clicks
            .iter()
            .map(|(id, click)| AckedRecord {
                id: id.clone(),
                state: click.state.clone(),
                mentor: click.mentor,
                code: click.code,
                occurred_at: match click.channel {
                    Channel::Post => click.occurred_at.clone(),
                    Channel::Redirect => None,
                },
                user_agent: click.user_agent.clone(),
                ip: click.ip.clone(),
            })
            .collect();
        (
            clicks,
            ledger.violations.clone(),
            ledger.attempts.clone(),
            ledger.pixels.clone(),
        )
    };
    let clicks = Arc::new(clicks);
    let mut result = Verification {
        acked: clicks.len() as u64,
        violations: violations.count,
        ..Verification::default()
    };
    for example in &violations.examples {
        result.problem(format!("during the load: {example}"));
    }

    // 1. Each mentor's attributions, one export each, read as one state with its totals.
    let mut states: Vec<(usize, MentorState)> = Vec::with_capacity(run.population.mentors.len());
    let mut tasks = JoinSet::new();
    let mut mentors = 0..run.population.mentors.len();
    loop {
        while tasks.len() < CONCURRENCY
            && let Some(mentor) = mentors.next()
        {
            let run = run.clone();
            tasks.spawn(async move {
                let state = read_mentor(&run, &run.population.mentors[mentor]).await?;
                Ok::<_, String>((mentor, state))
            });
        }
        let Some(joined) = tasks.join_next().await else {
            break;
        };
        states.push(joined.map_err(|error| error.to_string())??);
    }
    states.sort_by_key(|(mentor, _)| *mentor);
    let mut exported: HashMap<String, &bytes::Bytes> = HashMap::new();
    for (_, state) in &states {
        for (line, row) in state.exported.iter().zip(&state.rows) {
            exported.insert(row.id.clone(), line);
        }
    }
    let exported_row = |id: &str| -> Option<Value> {
        exported
            .get(id)
            .and_then(|line| serde_json::from_slice(line).ok())
    };

    // 2. Every acknowledged click, as its mentor's export prints it. A click missing from
    //    every export (deleted, lost, or stored under a mentor the run does not export) is
    //    read by id and judged by that answer; a sample of the others is read by id too,
    //    which must answer exactly what the export printed.
    let mut lost = HashSet::new();
    let mut read_verdicts: HashMap<String, (Option<String>, Option<String>)> = HashMap::new();
    let mut own_ips: HashSet<IpAddr> = HashSet::new();
    let missing: Vec<usize> = (0..clicks.len())
        .filter(|index| !exported.contains_key(clicks[*index].id.as_str()))
        .collect();
    let step = clicks.len().div_ceil(BY_ID_SAMPLE).max(1);
    let sampled: Vec<usize> = (0..clicks.len())
        .step_by(step)
        .filter(|index| exported.contains_key(clicks[*index].id.as_str()))
        .collect();
    let mut read_by_id: HashMap<usize, (u16, Value)> = HashMap::new();
    let mut to_read = missing.iter().chain(&sampled).copied();
    let mut tasks = JoinSet::new();
    loop {
        while tasks.len() < CONCURRENCY
            && let Some(index) = to_read.next()
        {
            let run = run.clone();
            let id = clicks[index].id.clone();
            tasks.spawn(async move {
                let url = format!("{}/api/v1/referral-attributions/{id}", run.endpoints.api);
                let (status, body) = get(&run, url).await?;
                Ok::<_, String>((index, status, body))
            });
        }
        let Some(joined) = tasks.join_next().await else {
            break;
        };
        let (index, status, body) = joined.map_err(|error| error.to_string())??;
        read_by_id.insert(index, (status, body));
    }
    result.read_by_id = read_by_id.len() as u64;
    for (index, click) in clicks.iter().enumerate() {
        let id = &click.id;
        let (status, body) = match (exported_row(id), read_by_id.get(&index)) {
            (Some(row), Some((status, body))) => {
                if *status != 200 || *body != row {
                    result.inconsistent += 1;
                    result.problem(format!(
                        "{id} reads {status} {body} by id, its mentor's export holds {row}"
                    ));
                }
                (200, row)
            }
            (Some(row), None) => (200, row),
            (None, Some((status, body))) => (*status, body.clone()),
            (None, None) => (404, Value::Null),
        };
        let expected = Expected {
            state: &click.state,
            mentor: &run.population.mentors[click.mentor],
            code: &run.population.codes[click.code].0,
            occurred_at: click.occurred_at.as_deref(),
            user_agent: click.user_agent.as_deref(),
            ip: click.ip.as_deref(),
        };
        if status == 200 {
            if let Some((_, read)) = read_by_id.get(&index) {
                // What a read by id said, for the comparison with the listing below.
                let text = |field: &str| read[field].as_str().map(str::to_owned);
                read_verdicts.insert(id.clone(), (text("verdict"), text("duplicate_of")));
            }
            if click.ip.is_none() {
                own_ips.extend(
                    body["ip_address"]
                        .as_str()
                        .and_then(|ip| ip.parse::<IpAddr>().ok())
                        .map(|ip| ip.to_canonical()),
                );
            }
        }
        result.uncertain += u64::from(matches!(click.state, ClickState::Uncertain));
        match judge_by_id(id, &expected, status, &body) {
            ByIdOutcome::Stored => result.stored += 1,
            ByIdOutcome::Lost => {
                result.lost += 1;
                result.problem(format!("{id} was acknowledged and is not stored"));
                lost.insert(id.clone());
            }
            ByIdOutcome::Inconsistent(what) => {
                result.stored += 1;
                result.inconsistent += 1;
                result.problem(what);
            }
        }
    }

    // 3. Each mentor's listing, totals and verdicts.
    let mut by_mentor: HashMap<usize, Vec<(String, ClickState)>> = HashMap::new();
    let mut gone: HashMap<String, GoneClick> = HashMap::new();
    for click in clicks.iter() {
        by_mentor
            .entry(click.mentor)
            .or_default()
            .push((click.id.clone(), click.state.clone()));
        if matches!(click.state, ClickState::Deleted | ClickState::Uncertain) {
            gone.insert(
                click.id.clone(),
                GoneClick {
                    code: run.population.codes[click.code].0.clone(),
                    ip: click.ip.clone(),
                    user_agent: click.user_agent.clone(),
                },
            );
        }
    }
    let sent = SentWithoutId {
        codes: run
            .population
            .codes
            .iter()
            .enumerate()
            .map(|(index, (code, _))| (code.clone(), index))
            .collect(),
        attempts,
        pixels,
    };
    let window_ms = i64::try_from(run.dedup_window.as_millis()).unwrap_or(i64::MAX);
    let mut window_mismatches: Vec<String> = Vec::new();
    let mut window_mismatch_count = 0u64;
    let mut span: Option<(i64, i64)> = None;
    for (mentor, state) in &states {
        let (mentor, state) = (*mentor, state);
        result.mentors_checked += 1;
        let name = &run.population.mentors[mentor];
        let acked = by_mentor
            .get(&mentor)
            .map(Vec::as_slice)
            .unwrap_or_default();
        check_mentor(&mut result, name, acked, state, &lost);
        let acked_ids: HashSet<&str> = acked.iter().map(|(id, _)| id.as_str()).collect();
        account_unacked(&mut result, &state.rows, &acked_ids, &sent);
        for row in &state.rows {
            if let Some(at) = row.created_at_ms {
                span = Some(span.map_or((at, at), |(low, high)| (low.min(at), high.max(at))));
            }
            let Some(read) = read_verdicts.get(&row.id) else {
                continue;
            };
            if *read != (row.verdict.clone(), row.duplicate_of.clone()) {
                result.inconsistent += 1;
                result.problem(format!(
                    "{} reads verdict {read:?} by id, {:?} {:?} in {name}'s listing",
                    row.id, row.verdict, row.duplicate_of
                ));
            }
        }
        for mismatch in verdict_mismatches(&state.rows, &gone, &own_ips, window_ms) {
            let what = format!("{name}: {}", mismatch.what);
            match mismatch.rule {
                Rule::Bot => {
                    result.verdict_mismatches += 1;
                    result.problem(what);
                }
                Rule::Window => {
                    window_mismatch_count += 1;
                    if window_mismatches.len() < 30 {
                        window_mismatches.push(what);
                    }
                }
            }
        }
    }
    let span_ms = span.map_or(0, |(low, high)| high - low);
    let window = humantime::format_duration(run.dedup_window);
    if window_ms > 0 && span_ms >= window_ms {
        result.verdict_check = format!(
            "bot rule only: the run's clicks span {}, not less than the dedup window \
             {window}, so which click of a visitor counts depends on timing",
            humantime::format_duration(Duration::from_millis(span_ms.unsigned_abs()))
        );
        if window_mismatch_count > 0 {
            eprintln!(
                "referral-load: {window_mismatch_count} duplicate/counted verdicts not checked \
                 (the run spans the dedup window)"
            );
        }
    } else {
        result.verdict_check = format!(
            "exact: dedup window {window}, clicks span {:.1} s",
            span_ms as f64 / 1000.0
        );
        result.verdict_mismatches += window_mismatch_count;
        for what in window_mismatches {
            result.problem(what);
        }
    }
    result.verify_seconds = started.elapsed().as_secs_f64();
    Ok(result)
}

/// `lost`: acknowledged clicks already counted as lost by id (not counted again here).
fn check_mentor(
    result: &mut Verification,
    mentor: &str,
    acked: &[(String, ClickState)],
    state: &MentorState,
    lost: &HashSet<String>,
) {
    let mut seen = HashSet::new();
    let mut confirmed = 0i64;
    let mut reversed = 0i64;
    let mut by_verdict = [0i64; 3];
    for row in &state.rows {
        let id = row.id.as_str();
        if !seen.insert(id) {
            result.duplicated += 1;
            result.problem(format!("{mentor}'s listing holds {id} twice"));
            continue;
        }
        if row.status == "confirmed" {
            confirmed += 1;
        }
        if row.status == "reversed" {
            reversed += 1;
        }
        if let Some(index) = VERDICTS
            .iter()
            .position(|verdict| row.verdict.as_deref() == Some(verdict))
        {
            by_verdict[index] += 1;
        }
    }
    let [counted, duplicates, bots] = by_verdict;
    result.counted += counted.unsigned_abs();
    result.duplicate += duplicates.unsigned_abs();
    result.bot += bots.unsigned_abs();
    let acked_ids: HashMap<&str, &ClickState> = acked
        .iter()
        .map(|(id, state)| (id.as_str(), state))
        .collect();
    for id in &seen {
        if let Some(ClickState::Deleted) = acked_ids.get(id) {
            result.inconsistent += 1;
            result.problem(format!(
                "{mentor}'s listing holds {id}, deleted (acknowledged)"
            ));
        }
    }
    for (id, click) in acked {
        if Ledger::is_live(click) && !seen.contains(id.as_str()) && !lost.contains(id) {
            result.inconsistent += 1;
            result.problem(format!("{mentor}'s listing misses {id} ({click:?})"));
        }
    }
    let totals = &state.totals;
    for (what, counted_by_writer, held) in [
        ("total_clicks (counted)", totals.clicks, counted),
        ("filtered_clicks.duplicate", totals.duplicates, duplicates),
        ("filtered_clicks.bot", totals.bots, bots),
        ("total_conversions", totals.conversions, confirmed),
        ("reversed_conversions", totals.reversals, reversed),
    ] {
        if counted_by_writer > held {
            result.duplicated += u64::try_from(counted_by_writer - held).unwrap_or(0);
            result.problem(format!(
                "{mentor}'s {what} is {counted_by_writer}, its listing holds {held}"
            ));
        } else if counted_by_writer < held {
            result.inconsistent += 1;
            result.problem(format!(
                "{mentor}'s {what} is {counted_by_writer}, its listing holds {held}"
            ));
        }
    }
    let distinct = seen.len() as i64;
    if state.listed_total != distinct {
        result.inconsistent += 1;
        result.problem(format!(
            "{mentor}'s pagination.total is {}, its listing holds {distinct}",
            state.listed_total
        ));
    }
    for ((verdict, filtered), listed) in VERDICTS.iter().zip(state.verdict_totals).zip(by_verdict) {
        // The API counts a filtered list up to COUNT_BOUND matches (README: "pagination.total
        // stays cheap"); past it, the total reads as the bound.
        let bound = i64::try_from(COUNT_BOUND).unwrap_or(i64::MAX);
        let bounded = filtered == bound && listed >= bound;
        if filtered != listed && !(listed == 0 && filtered <= 0) && !bounded {
            result.inconsistent += 1;
            result.problem(format!(
                "{mentor}'s list ?verdict={verdict} counts {filtered}, its listing holds \
                 {listed}"
            ));
        }
    }
}

/// Per code, the requests that may have stored a click without telling its id.
struct SentWithoutId {
    /// Code text -> index in the population.
    codes: HashMap<String, usize>,
    /// POSTs and redirect GETs that got no id.
    attempts: HashMap<usize, u64>,
    /// Pixel GETs.
    pixels: HashMap<usize, u64>,
}

/// Counts a mentor's stored clicks that no acknowledgement names: a pixel's (by its
/// referrer) or another (a failed POST, a redirect without an id), each never more per code
/// than such requests were sent; a HEAD's click (the preview user agent) is never allowed.
fn account_unacked(
    result: &mut Verification,
    rows: &[StoredClick],
    acked: &HashSet<&str>,
    sent: &SentWithoutId,
) {
    let mut pixel: HashMap<&str, u64> = HashMap::new();
    let mut other: HashMap<&str, u64> = HashMap::new();
    let mut seen = HashSet::new();
    for row in rows {
        if acked.contains(row.id.as_str()) || !seen.insert(row.id.as_str()) {
            continue;
        }
        if row.user_agent.as_deref() == Some(PREVIEW_AGENT) {
            result.unexplained += 1;
            result.problem(format!(
                "{} was recorded from a HEAD (user agent {PREVIEW_AGENT:?}): {row:?}",
                row.id
            ));
        } else if is_pixel_referrer(row.referrer_url.as_deref()) {
            *pixel.entry(row.code.as_str()).or_default() += 1;
        } else {
            *other.entry(row.code.as_str()).or_default() += 1;
        }
    }
    result.pixel_stored += pixel.values().sum::<u64>();
    result.unacked_stored += other.values().sum::<u64>();
    for (stored, counts, what) in [
        (&pixel, &sent.pixels, "pixel GETs"),
        (&other, &sent.attempts, "clicks sent without getting an id"),
    ] {
        for (code, found) in stored {
            let allowed = sent
                .codes
                .get(*code)
                .and_then(|index| counts.get(index))
                .copied()
                .unwrap_or(0);
            if *found > allowed {
                result.unexplained += found - allowed;
                result.problem(format!(
                    "{code} has {found} stored clicks without an id of this kind, but only \
                     {allowed} {what}"
                ));
            }
        }
    }
}

/// Which rule a verdict breaks: the bot rule holds whatever the timing; the dedup rule
/// (one counted click per visitor) only while the run is shorter than the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    Bot,
    Window,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub rule: Rule,
    pub what: String,
}

/// A click the run deleted (or may have: a delete of unknown outcome), as it was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoneClick {
    pub code: String,
    /// `None`: sent with no IP of its own (the connection's).
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

impl GoneClick {
    /// Whether it was sent as the visitor (code, ip, user_agent); a click without an IP of
    /// its own has this tool's address (`own_ips`, as the edge saw it; any when unknown).
    fn is_visitor(
        &self,
        (code, ip, user_agent): (&str, &str, Option<&str>),
        own_ips: &HashSet<IpAddr>,
    ) -> bool {
        let same_ip = match &self.ip {
            Some(sent) => same_ip(sent, ip),
            None => {
                own_ips.is_empty()
                    || ip
                        .parse::<IpAddr>()
                        .is_ok_and(|ip| own_ips.contains(&ip.to_canonical()))
            }
        };
        self.code == code && self.user_agent.as_deref() == user_agent && same_ip
    }
}

/// The verdict rules over one mentor's stored clicks (see the module docs): every click that
/// breaks one, and why. `gone`: clicks the run deleted, which may still anchor duplicates;
/// `own_ips`: this tool's address as stored; `window_ms`: the writer's dedup window.
pub fn verdict_mismatches(
    rows: &[StoredClick],
    gone: &HashMap<String, GoneClick>,
    own_ips: &HashSet<IpAddr>,
    window_ms: i64,
) -> Vec<Mismatch> {
    let mut found = Vec::new();
    let mut flag = |rule: Rule, what: String| found.push(Mismatch { rule, what });
    type Key<'a> = (&'a str, &'a str, Option<&'a str>);
    let mut visitors: HashMap<Key<'_>, (Vec<&StoredClick>, Vec<&StoredClick>)> = HashMap::new();
    let mut order: Vec<Key<'_>> = Vec::new();
    let key_of = |row: &StoredClick| -> (String, String, Option<String>) {
        (
            row.code.clone(),
            row.ip_address.clone(),
            row.user_agent.clone(),
        )
    };
    let listed: HashMap<&str, &StoredClick> =
        rows.iter().map(|row| (row.id.as_str(), row)).collect();
    for row in rows {
        let agent = row.user_agent.as_deref();
        let id = &row.id;
        match (is_bot(agent), row.verdict.as_deref()) {
            (true, Some("bot")) => {
                if row.duplicate_of.is_some() || row.status == "confirmed" {
                    flag(
                        Rule::Bot,
                        format!(
                            "{id} is a bot's click with duplicate_of {:?} and status {}",
                            row.duplicate_of, row.status
                        ),
                    );
                }
            }
            (true, verdict) => flag(
                Rule::Bot,
                format!("{id}: user agent {agent:?} is a bot's, but the verdict is {verdict:?}"),
            ),
            (false, Some("bot")) => flag(
                Rule::Bot,
                format!("{id}: user agent {agent:?} is no bot's, but the verdict is bot"),
            ),
            (false, Some(verdict @ ("counted" | "duplicate"))) => {
                let key: Key<'_> = (row.code.as_str(), row.ip_address.as_str(), agent);
                let entry = visitors.entry(key).or_insert_with(|| {
                    order.push(key);
                    (Vec::new(), Vec::new())
                });
                if verdict == "counted" {
                    entry.0.push(row);
                } else {
                    entry.1.push(row);
                }
            }
            (false, verdict) => flag(Rule::Bot, format!("{id} has no verdict: {verdict:?}")),
        }
    }
    for key in order {
        let Some((counted, duplicates)) = visitors.get(&key) else {
            continue;
        };
        let (code, ip, agent) = key;
        let visitor = format!("visitor ({code}, {ip}, {agent:?})");
        if window_ms == 0 {
            for row in duplicates {
                flag(
                    Rule::Window,
                    format!("{} is a duplicate, but the dedup window is 0", row.id),
                );
            }
            continue;
        }
        for row in counted {
            if let Some(of) = &row.duplicate_of {
                flag(
                    Rule::Window,
                    format!("{} is counted but names duplicate_of {of}", row.id),
                );
            }
        }
        if counted.len() > 1 {
            let ids: Vec<&str> = counted.iter().map(|row| row.id.as_str()).collect();
            flag(
                Rule::Window,
                format!(
                    "{visitor} has {} counted clicks ({}): one counts per window",
                    counted.len(),
                    ids.join(", ")
                ),
            );
        }
        let mut deleted_anchor: Option<&str> = None;
        for row in duplicates {
            let id = &row.id;
            let Some(of) = row.duplicate_of.as_deref() else {
                flag(
                    Rule::Window,
                    format!("{id} of {visitor} is a duplicate without duplicate_of"),
                );
                continue;
            };
            if counted.iter().any(|anchor| anchor.id == of) {
                continue;
            }
            if let Some(other) = listed.get(of) {
                let other_key = key_of(other);
                flag(
                    Rule::Window,
                    format!(
                        "{id} of {visitor} is a duplicate of {of}, a {:?} click of visitor \
                         {other_key:?}",
                        other.verdict
                    ),
                );
                continue;
            }
            match gone.get(of) {
                Some(anchor) if anchor.is_visitor(key, own_ips) => {
                    if let Some(counts) = counted.first() {
                        flag(
                            Rule::Window,
                            format!(
                                "{id} of {visitor} is a duplicate of the deleted {of}, yet {} \
                                 of the same visitor counts: one counts per window",
                                counts.id
                            ),
                        );
                    } else if deleted_anchor.is_some_and(|anchor| anchor != of) {
                        flag(
                            Rule::Window,
                            format!(
                                "{visitor}'s duplicates repeat two deleted clicks ({} and \
                                 {of}): one counts per window",
                                deleted_anchor.unwrap_or_default()
                            ),
                        );
                    } else {
                        deleted_anchor = Some(of);
                    }
                }
                Some(anchor) => flag(
                    Rule::Window,
                    format!(
                        "{id} of {visitor} is a duplicate of the deleted {of}, which was sent \
                         as another visitor ({anchor:?})"
                    ),
                ),
                None => flag(
                    Rule::Window,
                    format!(
                        "{id} of {visitor} is a duplicate of {of}, which is neither listed for \
                         the mentor nor a click the run deleted"
                    ),
                ),
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHROME: &str =
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/124.0 Safari/537.36";
    const FIREFOX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0";

    fn row(id: &str, status: &str, verdict: &str) -> StoredClick {
        StoredClick {
            id: id.to_owned(),
            code: "LD-1".to_owned(),
            status: status.to_owned(),
            ip_address: "203.0.113.7".to_owned(),
            user_agent: Some(CHROME.to_owned()),
            verdict: Some(verdict.to_owned()),
            ..StoredClick::default()
        }
    }

    fn mentor_state(ids: &[(&str, &str)], clicks: i64, conversions: i64) -> MentorState {
        MentorState {
            rows: ids
                .iter()
                .map(|(id, status)| row(id, status, "counted"))
                .collect(),
            exported: Vec::new(),
            listed_total: ids.len() as i64,
            verdict_totals: [ids.len() as i64, 0, 0],
            totals: Totals {
                clicks,
                conversions,
                ..Totals::default()
            },
        }
    }

    #[test]
    fn totals_above_the_listing_are_duplicates_and_below_are_inconsistent() {
        let acked = vec![
            ("a".to_owned(), ClickState::Pending),
            ("b".to_owned(), ClickState::Confirmed { member: "m".into() }),
        ];
        let mut ok = Verification::default();
        check_mentor(
            &mut ok,
            "usr",
            &acked,
            &mentor_state(&[("a", "pending"), ("b", "confirmed")], 2, 1),
            &HashSet::new(),
        );
        assert!(ok.passed(), "{ok:?}");
        assert_eq!((ok.counted, ok.duplicate, ok.bot), (2, 0, 0));

        let mut twice = Verification::default();
        check_mentor(
            &mut twice,
            "usr",
            &acked,
            &mentor_state(&[("a", "pending"), ("b", "confirmed")], 3, 2),
            &HashSet::new(),
        );
        assert_eq!(twice.duplicated, 2);
        assert!(!twice.passed());

        let mut under = Verification::default();
        check_mentor(
            &mut under,
            "usr",
            &acked,
            &mentor_state(&[("a", "pending"), ("b", "confirmed")], 2, 0),
            &HashSet::new(),
        );
        assert_eq!(under.inconsistent, 1);

        let mut repeated = Verification::default();
        let mut state = mentor_state(
            &[("a", "pending"), ("a", "pending"), ("b", "confirmed")],
            2,
            1,
        );
        state.listed_total = 2;
        state.verdict_totals = [2, 0, 0];
        check_mentor(&mut repeated, "usr", &acked, &state, &HashSet::new());
        assert_eq!(repeated.duplicated, 1);

        // A reversed conversion counts in reversed_conversions, not in total_conversions.
        let reversed = vec![
            ("a".to_owned(), ClickState::Pending),
            (
                "b".to_owned(),
                ClickState::Reversed {
                    member: "m".into(),
                    reversed_at: "2026-12-03T10:00:00Z".into(),
                },
            ),
        ];
        let rows = [("a", "pending"), ("b", "reversed")];
        let mut restated = Verification::default();
        let mut state = mentor_state(&rows, 2, 0);
        state.totals.reversals = 1;
        check_mentor(&mut restated, "usr", &reversed, &state, &HashSet::new());
        assert!(restated.passed(), "{restated:?}");
        let mut still_counted = Verification::default();
        check_mentor(
            &mut still_counted,
            "usr",
            &reversed,
            &mentor_state(&rows, 2, 1),
            &HashSet::new(),
        );
        assert_eq!(
            still_counted.duplicated, 1,
            "a conversion the listing says is reversed"
        );
        assert_eq!(
            still_counted.inconsistent, 1,
            "reversed_conversions missing it"
        );
        assert_eq!(repeated.inconsistent, 0, "{repeated:?}");
    }

    #[test]
    fn a_verdict_count_past_the_api_bound_reads_as_the_bound() {
        let bound = i64::try_from(COUNT_BOUND).unwrap();
        let rows: Vec<_> = (0..=bound)
            .map(|n| row(&format!("d{n}"), "pending", "duplicate"))
            .collect();
        let state = |filtered| MentorState {
            listed_total: bound + 1,
            verdict_totals: [0, filtered, 0],
            rows: rows.clone(),
            exported: Vec::new(),
            totals: Totals {
                clicks: 0,
                duplicates: bound + 1,
                bots: 0,
                conversions: 0,
                reversals: 0,
            },
        };
        let mut capped = Verification::default();
        check_mentor(&mut capped, "usr", &[], &state(bound), &HashSet::new());
        assert_eq!(capped.inconsistent, 0, "{capped:?}");
        let mut short = Verification::default();
        check_mentor(&mut short, "usr", &[], &state(bound - 1), &HashSet::new());
        assert_eq!(short.inconsistent, 1, "{short:?}");
    }

    #[test]
    fn filtered_clicks_and_the_verdict_filter_match_the_listing() {
        let acked = vec![("a".to_owned(), ClickState::Pending)];
        let state = |duplicates, bots, filtered: [i64; 3]| MentorState {
            rows: vec![
                row("a", "pending", "counted"),
                row("b", "pending", "duplicate"),
                row("c", "pending", "bot"),
            ],
            exported: Vec::new(),
            listed_total: 3,
            verdict_totals: filtered,
            totals: Totals {
                clicks: 1,
                duplicates,
                bots,
                conversions: 0,
                reversals: 0,
            },
        };
        let mut ok = Verification::default();
        check_mentor(
            &mut ok,
            "usr",
            &acked,
            &state(1, 1, [1, 1, 1]),
            &HashSet::new(),
        );
        assert!(ok.passed(), "{ok:?}");
        assert_eq!((ok.counted, ok.duplicate, ok.bot), (1, 1, 1));

        let mut bots_twice = Verification::default();
        check_mentor(
            &mut bots_twice,
            "usr",
            &acked,
            &state(1, 2, [1, 1, 1]),
            &HashSet::new(),
        );
        assert_eq!(bots_twice.duplicated, 1, "{bots_twice:?}");

        let mut no_duplicates = Verification::default();
        check_mentor(
            &mut no_duplicates,
            "usr",
            &acked,
            &state(0, 1, [1, 1, 1]),
            &HashSet::new(),
        );
        assert_eq!(no_duplicates.inconsistent, 1, "{no_duplicates:?}");

        let mut filter = Verification::default();
        check_mentor(
            &mut filter,
            "usr",
            &acked,
            &state(1, 1, [1, 0, 1]),
            &HashSet::new(),
        );
        assert_eq!(filter.inconsistent, 1, "{filter:?}");
    }

    #[test]
    fn missing_and_resurrected_attributions() {
        let acked = vec![
            ("a".to_owned(), ClickState::Pending),
            ("d".to_owned(), ClickState::Deleted),
        ];
        let mut missing = Verification::default();
        check_mentor(
            &mut missing,
            "usr",
            &acked,
            &mentor_state(&[], 0, 0),
            &HashSet::new(),
        );
        assert_eq!(missing.inconsistent, 1, "{missing:?}");

        let mut resurrected = Verification::default();
        check_mentor(
            &mut resurrected,
            "usr",
            &acked,
            &mentor_state(&[("a", "pending"), ("d", "pending")], 2, 0),
            &HashSet::new(),
        );
        assert_eq!(resurrected.inconsistent, 1, "{resurrected:?}");
    }

    #[test]
    fn clicks_without_an_id_are_allowed_up_to_what_was_sent() {
        let sent = SentWithoutId {
            codes: HashMap::from([("LD-1".to_owned(), 0)]),
            attempts: HashMap::from([(0, 1)]),
            pixels: HashMap::from([(0, 2)]),
        };
        let pixel = |id: &str| StoredClick {
            referrer_url: Some(crate::traffic::PIXEL_PAGES[0].to_owned()),
            ..row(id, "pending", "counted")
        };
        let acked = HashSet::from(["a"]);
        let mut ok = Verification::default();
        let rows = vec![
            row("a", "pending", "counted"),
            row("x", "pending", "duplicate"),
            pixel("p1"),
            pixel("p2"),
        ];
        account_unacked(&mut ok, &rows, &acked, &sent);
        assert!(ok.passed(), "{ok:?}");
        assert_eq!((ok.unacked_stored, ok.pixel_stored), (1, 2));

        let mut too_many = Verification::default();
        let rows = vec![
            row("x", "pending", "counted"),
            row("y", "pending", "duplicate"),
            pixel("p1"),
            pixel("p2"),
            pixel("p3"),
        ];
        account_unacked(&mut too_many, &rows, &acked, &sent);
        assert_eq!(too_many.unexplained, 2, "{too_many:?}");
        assert!(!too_many.passed());

        let mut preview = Verification::default();
        let head = StoredClick {
            user_agent: Some(PREVIEW_AGENT.to_owned()),
            ..row("h", "pending", "bot")
        };
        account_unacked(&mut preview, &[head], &acked, &sent);
        assert_eq!(preview.unexplained, 1, "{preview:?}");
    }

    fn duplicate(id: &str, of: &str) -> StoredClick {
        StoredClick {
            duplicate_of: Some(of.to_owned()),
            ..row(id, "pending", "duplicate")
        }
    }

    fn check(rows: &[StoredClick]) -> Vec<Mismatch> {
        verdict_mismatches(rows, &HashMap::new(), &HashSet::new(), 3_600_000)
    }

    fn rules(found: &[Mismatch]) -> Vec<Rule> {
        found.iter().map(|mismatch| mismatch.rule).collect()
    }

    #[test]
    fn one_counted_click_per_visitor_and_its_duplicates_point_to_it() {
        let other_visitor = StoredClick {
            user_agent: Some(FIREFOX.to_owned()),
            ..row("f1", "pending", "counted")
        };
        let bot = StoredClick {
            user_agent: Some("Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)".into()),
            ..row("s1", "pending", "bot")
        };
        let no_agent = StoredClick {
            user_agent: None,
            ..row("n1", "pending", "bot")
        };
        let rows = vec![
            row("a1", "confirmed", "counted"),
            duplicate("a2", "a1"),
            StoredClick {
                status: "confirmed".into(),
                ..duplicate("a3", "a1")
            },
            other_visitor,
            bot,
            no_agent,
        ];
        assert_eq!(check(&rows), Vec::new());
        // Window 0: every person's click counts.
        let counted = vec![
            row("a1", "pending", "counted"),
            row("a2", "pending", "counted"),
        ];
        assert!(verdict_mismatches(&counted, &HashMap::new(), &HashSet::new(), 0).is_empty());
        assert_eq!(
            rules(&verdict_mismatches(
                &rows,
                &HashMap::new(),
                &HashSet::new(),
                0
            )),
            vec![Rule::Window, Rule::Window]
        );
    }

    #[test]
    fn a_second_counted_click_of_one_visitor_fails() {
        let rows = vec![
            row("a1", "pending", "counted"),
            row("a2", "pending", "counted"),
            duplicate("a3", "a1"),
        ];
        let found = check(&rows);
        assert_eq!(rules(&found), vec![Rule::Window], "{found:?}");
        assert!(found[0].what.contains("2 counted clicks"), "{found:?}");
    }

    #[test]
    fn a_duplicate_of_another_visitor_or_of_nothing_fails() {
        let other = StoredClick {
            ip_address: "198.51.100.9".into(),
            ..row("b1", "pending", "counted")
        };
        let rows = vec![
            row("a1", "pending", "counted"),
            duplicate("a2", "b1"),
            other,
            duplicate("a3", "attr_nowhere"),
            StoredClick {
                duplicate_of: None,
                ..row("a4", "pending", "duplicate")
            },
            duplicate("a5", "a2"),
        ];
        let found = check(&rows);
        assert_eq!(found.len(), 4, "{found:?}");
        assert!(found.iter().all(|mismatch| mismatch.rule == Rule::Window));
        assert!(found[0].what.contains("a duplicate of b1"), "{found:?}");
    }

    #[test]
    fn a_bot_marked_counted_or_a_person_marked_bot_fails() {
        let headless = StoredClick {
            user_agent: Some(
                "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
                 HeadlessChrome/124.0.0.0 Safari/537.36"
                    .into(),
            ),
            ..row("h1", "pending", "counted")
        };
        let no_agent = StoredClick {
            user_agent: None,
            ..row("n1", "pending", "duplicate")
        };
        let person = row("p1", "pending", "bot");
        let confirmed_bot = StoredClick {
            user_agent: Some("Twitterbot/1.0".into()),
            ..row("t1", "confirmed", "bot")
        };
        let unjudged = StoredClick {
            verdict: None,
            ..row("u1", "pending", "")
        };
        let found = check(&[headless, no_agent, person, confirmed_bot, unjudged]);
        assert_eq!(rules(&found), vec![Rule::Bot; 5], "{found:?}");
    }

    #[test]
    fn a_deleted_counted_click_still_anchors_its_visitors_duplicates() {
        let own: HashSet<IpAddr> = HashSet::from(["127.0.0.1".parse().unwrap()]);
        let local = |row: StoredClick| StoredClick {
            ip_address: "127.0.0.1".into(),
            ..row
        };
        let gone = HashMap::from([
            (
                "a1".to_owned(),
                GoneClick {
                    code: "LD-1".into(),
                    ip: None,
                    user_agent: Some(CHROME.into()),
                },
            ),
            (
                "z1".to_owned(),
                GoneClick {
                    code: "LD-1".into(),
                    ip: Some("198.51.100.9".into()),
                    user_agent: Some(CHROME.into()),
                },
            ),
        ]);
        let rows = vec![local(duplicate("a2", "a1")), local(duplicate("a3", "a1"))];
        assert_eq!(
            verdict_mismatches(&rows, &gone, &own, 3_600_000),
            Vec::new()
        );
        // Not if the visitor counts again, nor if the deleted click was another visitor's.
        let again = vec![
            local(duplicate("a2", "a1")),
            local(row("a4", "pending", "counted")),
        ];
        assert_eq!(verdict_mismatches(&again, &gone, &own, 3_600_000).len(), 1);
        let elsewhere = vec![local(duplicate("a2", "z1"))];
        assert_eq!(
            verdict_mismatches(&elsewhere, &gone, &own, 3_600_000).len(),
            1
        );
        let two = vec![local(duplicate("a2", "a1")), local(duplicate("a3", "z1"))];
        assert_eq!(verdict_mismatches(&two, &gone, &own, 3_600_000).len(), 1);
    }

    #[test]
    fn a_read_by_id_checks_what_was_sent_and_the_verdict() {
        let body = serde_json::json!({
            "id": "attr_1", "mentor_id": "usr_1", "code": "LD-1", "status": "pending",
            "new_member_id": null, "occurred_at": "2026-01-01T00:00:00Z",
            "created_at": "2026-01-01T00:00:00Z", "user_agent": CHROME,
            "ip_address": "2001:db8::5", "verdict": "counted",
        });
        let expected = Expected {
            state: &ClickState::Pending,
            mentor: "usr_1",
            code: "LD-1",
            occurred_at: None,
            user_agent: Some(CHROME),
            ip: Some("2001:db8:0::5"),
        };
        assert_eq!(
            judge_by_id("attr_1", &expected, 200, &body),
            ByIdOutcome::Stored
        );
        let other_agent = Expected {
            user_agent: None,
            ..expected
        };
        assert!(matches!(
            judge_by_id("attr_1", &other_agent, 200, &body),
            ByIdOutcome::Inconsistent(_)
        ));
        let mut unjudged = body.clone();
        unjudged["verdict"] = Value::Null;
        let expected = Expected {
            user_agent: Some(CHROME),
            ..other_agent
        };
        assert!(matches!(
            judge_by_id("attr_1", &expected, 200, &unjudged),
            ByIdOutcome::Inconsistent(_)
        ));
        assert_eq!(
            judge_by_id("attr_1", &expected, 404, &Value::Null),
            ByIdOutcome::Lost
        );
    }

    #[test]
    fn the_line_has_the_documented_shape() {
        let verification = Verification {
            acked: 10,
            stored: 9,
            lost: 1,
            ..Verification::default()
        };
        assert_eq!(verification.line(), "acked=10 stored=9 lost=1 duplicated=0");
        assert!(!verification.passed());
        let mismatched = Verification {
            verdict_mismatches: 1,
            ..Verification::default()
        };
        assert!(!mismatched.passed());
        assert!(mismatched.verdict_line().contains("mismatches=1"));
    }
}
