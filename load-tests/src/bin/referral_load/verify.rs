//! The end-to-end verifier: after the pipeline drained, the store must hold exactly what
//! the service acknowledged.
//!
//! - Every acknowledged click is readable by id, with its mentor, code and the state its
//!   acknowledged commands gave it; an acknowledged delete made it 404.
//! - Each mentor's attributions, listed page by page, hold no id twice and no deleted id,
//!   and include every acknowledged live click of the mentor.
//! - Each mentor's materialized totals equal what its listing holds: clicks = attributions,
//!   conversions = confirmed ones. A click applied twice shows up here, because the totals
//!   are counted by the writer, not from the listing.
//!
//! Clicks whose POST failed (timeout, 503, cut connection) may or may not be stored; those
//! that are count as `unacked_stored`, never as an error. Only the run's own mentors are
//! checked, so a shared deployment with other data can be verified too.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::task::JoinSet;

use crate::driver::{Run, lock};
use crate::http::{Call, Outcome};
use crate::ledger::ClickState;

/// Requests in flight while verifying.
const CONCURRENCY: usize = 16;
/// Attempts per verification read (a transport error is retried, never counted as loss).
const ATTEMPTS: u32 = 5;

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Verification {
    /// Clicks answered 201.
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
    /// Stored attributions whose POST got no 201 (allowed: the request failed after the
    /// event was durable).
    pub unacked_stored: u64,
    /// Acknowledged clicks with a command of unknown outcome (either state accepted).
    pub uncertain: u64,
    /// Wrong answers during the load (from the ledger).
    pub violations: u64,
    pub mentors_checked: u64,
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

    pub fn passed(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.inconsistent == 0 && self.violations == 0
    }

    fn problem(&mut self, what: String) {
        if self.problems.len() < 30 {
            self.problems.push(what);
        }
    }
}

/// A GET answered with JSON (or 404), retried on transport errors and 5xx.
async fn get(run: &Run, url: String) -> Result<(u16, Value), String> {
    let mut last = String::new();
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
        }
        match run.client.send(Call::get(url.clone()), true).await {
            Outcome::Answered { status, body } if status.as_u16() < 500 => {
                let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                return Ok((status.as_u16(), value));
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

/// Each mentor's all-time (clicks, conversions), for the drain check.
async fn mentor_totals(run: &Arc<Run>) -> Result<Vec<(i64, i64)>, String> {
    let mut totals = vec![(0, 0); run.population.mentors.len()];
    let mut tasks = JoinSet::new();
    let mut mentors = run.population.mentors.iter().enumerate();
    loop {
        while tasks.len() < CONCURRENCY
            && let Some((index, mentor)) = mentors.next()
        {
            let run = run.clone();
            let base = format!(
                "{}/api/v1/referral-attributions/mentor/{mentor}",
                run.endpoints.api
            );
            let mentor = mentor.clone();
            tasks.spawn(async move {
                let total = mentor_total(&run, &base, &mentor).await?;
                Ok::<_, String>((index, total))
            });
        }
        let Some(joined) = tasks.join_next().await else {
            break;
        };
        let (index, total): (usize, (i64, i64)) = joined.map_err(|error| error.to_string())??;
        totals[index] = total;
    }
    Ok(totals)
}

/// Waits until the pipeline has applied everything: every mentor's click total reaches at
/// least its acknowledged live clicks, then every mentor's clicks and conversions stay the
/// same for two polls in a row (a command decided late moves conversions only).
pub async fn drain(run: &Arc<Run>, timeout: Duration) -> Result<f64, String> {
    let started = Instant::now();
    let mut minimum = vec![0i64; run.population.mentors.len()];
    for click in lock(&run.ledger).clicks.values() {
        if matches!(
            click.state,
            ClickState::Pending | ClickState::Confirmed { .. }
        ) {
            minimum[click.mentor] += 1;
        }
    }
    let mut previous: Option<Vec<(i64, i64)>> = None;
    let mut steady = 0;
    let mut behind = 0;
    loop {
        match mentor_totals(run).await {
            Ok(totals) => {
                behind = totals
                    .iter()
                    .zip(&minimum)
                    .filter(|((clicks, _), least)| clicks < least)
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
                "the pipeline did not drain within {timeout:?}: {behind} mentors' click totals \
                 are below their acknowledged live clicks"
            ));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One acknowledged click read back by id.
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
    occurred_at: &'a str,
}

fn judge_by_id(id: &str, expected: &Expected<'_>, status: u16, body: &Value) -> ByIdOutcome {
    let Expected {
        state,
        mentor,
        code,
        occurred_at,
    } = *expected;
    let same_click = body["id"] == id
        && body["mentor_id"] == mentor
        && body["code"] == code
        && body["occurred_at"] == occurred_at;
    match (state, status) {
        (ClickState::Uncertain, 404) => ByIdOutcome::Stored,
        // Either state its unanswered command allowed; the click itself must be intact.
        (ClickState::Uncertain, 200) if same_click => ByIdOutcome::Stored,
        (ClickState::Deleted, 404) => ByIdOutcome::Stored,
        (ClickState::Deleted, _) => ByIdOutcome::Inconsistent(format!(
            "{id} was deleted (acknowledged) but reads {status} {body}"
        )),
        (_, 404) => ByIdOutcome::Lost,
        (ClickState::Pending | ClickState::Confirmed { .. }, 200) => {
            let same_state = match state {
                ClickState::Confirmed { member } => {
                    body["status"] == "confirmed" && body["new_member_id"] == member.as_str()
                }
                _ => body["status"] == "pending" && body["new_member_id"].is_null(),
            };
            if same_click && same_state {
                ByIdOutcome::Stored
            } else {
                ByIdOutcome::Inconsistent(format!(
                    "{id} expected {state:?} of {mentor}/{code}, reads {body}"
                ))
            }
        }
        (_, status) => ByIdOutcome::Inconsistent(format!("{id} reads {status} {body}")),
    }
}

/// One mentor's listing and totals.
struct MentorState {
    ids: Vec<(String, String)>,
    listed_total: i64,
    total_clicks: i64,
    total_conversions: i64,
}

/// A mentor's totals, then listing, then totals again; read again when the two totals
/// differ (a command decided during the read), so listing and totals are one state.
async fn read_mentor(run: &Run, mentor: &str) -> Result<MentorState, String> {
    let base = format!(
        "{}/api/v1/referral-attributions/mentor/{mentor}",
        run.endpoints.api
    );
    let mut attempt = 0;
    loop {
        attempt += 1;
        let before = mentor_total(run, &base, mentor).await?;
        let (ids, listed_total) = list_mentor(run, &base, mentor).await?;
        let after = mentor_total(run, &base, mentor).await?;
        if before == after || attempt >= 5 {
            return Ok(MentorState {
                ids,
                listed_total,
                total_clicks: after.0,
                total_conversions: after.1,
            });
        }
    }
}

/// A mentor's all-time (clicks, conversions).
async fn mentor_total(run: &Run, base: &str, mentor: &str) -> Result<(i64, i64), String> {
    let (status, body) = get(run, format!("{base}/total")).await?;
    match (
        body["total_clicks"].as_i64(),
        body["total_conversions"].as_i64(),
    ) {
        (Some(clicks), Some(conversions)) if status == 200 => Ok((clicks, conversions)),
        _ => Err(format!("{mentor}'s totals answered {status}: {body}")),
    }
}

/// Every page of a mentor's attributions: (id, status) and `pagination.total`.
async fn list_mentor(
    run: &Run,
    base: &str,
    mentor: &str,
) -> Result<(Vec<(String, String)>, i64), String> {
    let mut ids = Vec::new();
    let mut listed_total = 0;
    for page in 1.. {
        let (status, body) = get(run, format!("{base}?limit=100&page={page}")).await?;
        if status != 200 {
            return Err(format!("{mentor}'s page {page} answered {status}: {body}"));
        }
        listed_total = body["pagination"]["total"].as_i64().unwrap_or(-1);
        let data = body["data"].as_array().cloned().unwrap_or_default();
        if data.is_empty() {
            break;
        }
        for attribution in &data {
            ids.push((
                attribution["id"].as_str().unwrap_or_default().to_owned(),
                attribution["status"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            ));
        }
        if data.len() < 100 {
            break;
        }
    }
    Ok((ids, listed_total))
}

/// Checks the store against the ledger. Call after [`drain`].
pub async fn verify(run: &Arc<Run>) -> Result<Verification, String> {
    let started = Instant::now();
    let (clicks, violations) = {
        let ledger = lock(&run.ledger);
        let clicks: Vec<(String, ClickState, usize, usize, String)> = ledger
            .clicks
            .iter()
            .map(|(id, click)| {
                let (state, at) = (click.state.clone(), click.occurred_at.clone());
                (id.clone(), state, click.mentor, click.code, at)
            })
            .collect();
        (clicks, ledger.violations.clone())
    };
    let mut result = Verification {
        acked: clicks.len() as u64,
        violations: violations.count,
        ..Verification::default()
    };
    for example in &violations.examples {
        result.problem(format!("during the load: {example}"));
    }

    // 1. Every acknowledged click by id.
    let mut lost = HashSet::new();
    let mut tasks = JoinSet::new();
    let mut pending = clicks.clone().into_iter();
    loop {
        while tasks.len() < CONCURRENCY
            && let Some((id, state, mentor, code, occurred_at)) = pending.next()
        {
            let run = run.clone();
            tasks.spawn(async move {
                let url = format!("{}/api/v1/referral-attributions/{id}", run.endpoints.api);
                let (status, body) = get(&run, url).await?;
                let expected = Expected {
                    state: &state,
                    mentor: &run.population.mentors[mentor],
                    code: &run.population.codes[code].0,
                    occurred_at: &occurred_at,
                };
                let outcome = judge_by_id(&id, &expected, status, &body);
                Ok::<_, String>((id, matches!(state, ClickState::Uncertain), outcome))
            });
        }
        let Some(joined) = tasks.join_next().await else {
            break;
        };
        let (id, uncertain, outcome) = joined.map_err(|error| error.to_string())??;
        result.uncertain += u64::from(uncertain);
        match outcome {
            ByIdOutcome::Stored => result.stored += 1,
            ByIdOutcome::Lost => {
                result.lost += 1;
                result.problem(format!("{id} was acknowledged and is not readable"));
                lost.insert(id);
            }
            ByIdOutcome::Inconsistent(what) => {
                result.stored += 1;
                result.inconsistent += 1;
                result.problem(what);
            }
        }
    }

    // 2. Each mentor's listing and totals.
    let mut by_mentor: HashMap<usize, Vec<(String, ClickState)>> = HashMap::new();
    for (id, state, mentor, _, _) in clicks {
        by_mentor.entry(mentor).or_default().push((id, state));
    }
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
        let (mentor, state) = joined.map_err(|error| error.to_string())??;
        result.mentors_checked += 1;
        check_mentor(
            &mut result,
            &run.population.mentors[mentor],
            by_mentor
                .get(&mentor)
                .map(Vec::as_slice)
                .unwrap_or_default(),
            &state,
            &lost,
        );
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
    for (id, status) in &state.ids {
        if !seen.insert(id.as_str()) {
            result.duplicated += 1;
            result.problem(format!("{mentor}'s listing holds {id} twice"));
        }
        if status == "confirmed" {
            confirmed += 1;
        }
    }
    let acked_ids: HashMap<&str, &ClickState> = acked
        .iter()
        .map(|(id, state)| (id.as_str(), state))
        .collect();
    for id in &seen {
        match acked_ids.get(id) {
            None => result.unacked_stored += 1,
            Some(ClickState::Deleted) => {
                result.inconsistent += 1;
                result.problem(format!(
                    "{mentor}'s listing holds {id}, deleted (acknowledged)"
                ));
            }
            Some(_) => {}
        }
    }
    for (id, click) in acked {
        if matches!(click, ClickState::Pending | ClickState::Confirmed { .. })
            && !seen.contains(id.as_str())
            && !lost.contains(id)
        {
            result.inconsistent += 1;
            result.problem(format!("{mentor}'s listing misses {id} ({click:?})"));
        }
    }
    let distinct = seen.len() as i64;
    for (what, counted, held) in [
        ("clicks", state.total_clicks, distinct),
        ("conversions", state.total_conversions, confirmed),
    ] {
        if counted > held {
            result.duplicated += u64::try_from(counted - held).unwrap_or(0);
            result.problem(format!(
                "{mentor}'s total_{what} is {counted}, its listing holds {held}"
            ));
        } else if counted < held {
            result.inconsistent += 1;
            result.problem(format!(
                "{mentor}'s total_{what} is {counted}, its listing holds {held}"
            ));
        }
    }
    if state.listed_total != distinct && !state.ids.is_empty() {
        result.inconsistent += 1;
        result.problem(format!(
            "{mentor}'s pagination.total is {}, its listing holds {distinct}",
            state.listed_total
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mentor_state(ids: &[(&str, &str)], clicks: i64, conversions: i64) -> MentorState {
        MentorState {
            ids: ids
                .iter()
                .map(|(id, status)| ((*id).to_owned(), (*status).to_owned()))
                .collect(),
            listed_total: ids.len() as i64,
            total_clicks: clicks,
            total_conversions: conversions,
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
        check_mentor(
            &mut repeated,
            "usr",
            &acked,
            &mentor_state(
                &[("a", "pending"), ("a", "pending"), ("b", "confirmed")],
                2,
                1,
            ),
            &HashSet::new(),
        );
        assert_eq!(repeated.duplicated, 1);
    }

    #[test]
    fn missing_resurrected_and_unacknowledged_attributions() {
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

        let mut extra = Verification::default();
        check_mentor(
            &mut extra,
            "usr",
            &acked,
            &mentor_state(&[("a", "pending"), ("x", "pending")], 2, 0),
            &HashSet::new(),
        );
        assert!(extra.passed(), "{extra:?}");
        assert_eq!(extra.unacked_stored, 1);
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
    }
}
