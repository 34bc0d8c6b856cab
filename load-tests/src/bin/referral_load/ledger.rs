//! What the service acknowledged during a run, which the verifier later holds it to.
//!
//! Invariant: an attribution is in `clicks` only if its POST was answered 201. Its state
//! moves only on a definite answer to a command (200/404/409); a command that got no
//! definite answer (timeout, 5xx, connection lost) makes the state `Uncertain`, and no
//! further command is sent for that attribution, so every other expectation stays exact.
//!
//! Acknowledged clicks come from a click POST's 201 and from a redirect GET's `Location`
//! (its `attribution_id`). Requests that may have stored a click without telling its id are
//! counted per code: click POSTs and redirect GETs not acknowledged (`attempts`), and pixel
//! GETs (`pixels`), which never tell. The verifier holds the stored clicks without an id to
//! those counts.

use std::collections::HashMap;

use rand::Rng;
use rand::rngs::SmallRng;
use referral_schemas::Timestamp;
use referral_schemas::id::attribution_created_at;
use std::time::Duration;

/// The expected state of an acknowledged click.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClickState {
    Pending,
    Confirmed {
        member: String,
    },
    /// Confirmed, then reversed (reason `refund`): still the member's, no longer counted.
    Reversed {
        member: String,
        /// As the first 200 printed it: a retry must answer the same.
        reversed_at: String,
    },
    Deleted,
    /// A command on it got no definite answer: it may or may not have been applied.
    Uncertain,
}

/// What was sent for an acknowledged click.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub mentor: usize,
    pub code: usize,
    /// As the 201 printed it; `None` for a redirect GET (its click is dated by the edge).
    pub occurred_at: Option<String>,
    /// The user agent sent (body or header); `None`: none at all.
    pub user_agent: Option<String>,
    /// The IP the body named; `None`: the connection's (this tool's address).
    pub ip: Option<String>,
}

/// How an acknowledged click came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Post,
    Redirect,
}

#[derive(Debug, Clone)]
pub struct AckedClick {
    pub mentor: usize,
    pub code: usize,
    pub occurred_at: Option<String>,
    pub user_agent: Option<String>,
    pub ip: Option<String>,
    pub channel: Channel,
    pub state: ClickState,
    /// A command for it is in flight (commands on one attribution are never concurrent,
    /// so the expected answer is known).
    pub busy: bool,
}

/// Answers that contradict the contract (a 201 for an invalid click, a wrong mentor, ...).
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Violations {
    pub count: u64,
    /// The first few, for the report.
    pub examples: Vec<String>,
}

impl Violations {
    pub fn record(&mut self, what: String) {
        self.count += 1;
        if self.examples.len() < 20 {
            self.examples.push(what);
        }
    }
}

#[derive(Default)]
pub struct Ledger {
    pub clicks: HashMap<String, AckedClick>,
    /// Ids in acknowledgement order, for picking command targets.
    pub order: Vec<String>,
    pub violations: Violations,
    /// Acknowledged confirmations (id, code, member): re-sent verbatim (an idempotent
    /// retry), or their member offered to another click (a conflict while still confirmed).
    pub confirmations: Vec<(String, String, String)>,
    /// Acknowledged deletes, for deleting again (404).
    pub deleted: Vec<String>,
    /// Acknowledged reversals, for reversing again (200, the same record).
    pub reversed: Vec<String>,
    /// Per code: valid clicks sent (POST or redirect GET) that got no id, so may or may not
    /// be stored.
    pub attempts: HashMap<usize, u64>,
    /// Per code: pixel GETs sent (each may or may not be stored; the answer never says).
    pub pixels: HashMap<usize, u64>,
}

impl Ledger {
    pub fn acked(&mut self, id: String, sent: Sent, channel: Channel) {
        if self.clicks.contains_key(&id) {
            self.violations
                .record(format!("id {id} acknowledged twice for two clicks"));
            return;
        }
        self.order.push(id.clone());
        let Sent {
            mentor,
            code,
            occurred_at,
            user_agent,
            ip,
        } = sent;
        self.clicks.insert(
            id,
            AckedClick {
                mentor,
                code,
                occurred_at,
                user_agent,
                ip,
                channel,
                state: ClickState::Pending,
                busy: false,
            },
        );
    }

    /// A valid click of `code` sent without getting its id back.
    pub fn attempted(&mut self, code: usize) {
        *self.attempts.entry(code).or_default() += 1;
    }

    /// A pixel GET of `code` sent.
    pub fn pixel_sent(&mut self, code: usize) {
        *self.pixels.entry(code).or_default() += 1;
    }

    /// A random recent attribution with no command in flight whose state is `Pending`
    /// (or, when `confirmed_ok`, also `Confirmed` or `Reversed`), among the 5,000 newest
    /// acknowledged at least `min_age` ago (ids carry their creation time); marks it busy.
    pub fn take_target(
        &mut self,
        rng: &mut SmallRng,
        confirmed_ok: bool,
        min_age: Duration,
    ) -> Option<String> {
        let end = if min_age.is_zero() {
            self.order.len()
        } else {
            let age_ms = i64::try_from(min_age.as_millis()).unwrap_or(i64::MAX);
            let newest = Timestamp::now().as_millis().saturating_sub(age_ms);
            // Acknowledgement order is creation order but for a few milliseconds.
            self.order.partition_point(|id| {
                attribution_created_at(id).is_some_and(|made| made.as_millis() <= newest)
            })
        };
        if end == 0 {
            return None;
        }
        for _ in 0..16 {
            // Mostly recent clicks: conversions follow clicks.
            let window = end.min(5_000);
            let index = end - 1 - rng.random_range(0..window);
            let id = &self.order[index];
            if let Some(click) = self.clicks.get_mut(id) {
                let eligible = match click.state {
                    ClickState::Pending => true,
                    ClickState::Confirmed { .. } | ClickState::Reversed { .. } => confirmed_ok,
                    ClickState::Deleted | ClickState::Uncertain => false,
                };
                if eligible && !click.busy {
                    click.busy = true;
                    return Some(id.clone());
                }
            }
        }
        None
    }

    pub fn release(&mut self, id: &str, state: Option<ClickState>) {
        if let Some(click) = self.clicks.get_mut(id) {
            click.busy = false;
            if let Some(state) = state {
                click.state = state;
            }
        }
    }

    /// Whether the attribution is expected to be stored and live.
    pub fn is_live(state: &ClickState) -> bool {
        matches!(
            state,
            ClickState::Pending | ClickState::Confirmed { .. } | ClickState::Reversed { .. }
        )
    }

    pub fn acked_count(&self) -> usize {
        self.clicks.len()
    }
}
