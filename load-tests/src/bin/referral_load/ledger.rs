//! What the service acknowledged during a run, which the verifier later holds it to.
//!
//! Invariant: an attribution is in `clicks` only if its POST was answered 201. Its state
//! moves only on a definite answer to a command (200/404/409); a command that got no
//! definite answer (timeout, 5xx, connection lost) makes the state `Uncertain`, and no
//! further command is sent for that attribution, so every other expectation stays exact.

use std::collections::HashMap;

use rand::Rng;
use rand::rngs::SmallRng;

/// The expected state of an acknowledged click.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClickState {
    Pending,
    Confirmed {
        member: String,
    },
    Deleted,
    /// A command on it got no definite answer: it may or may not have been applied.
    Uncertain,
}

#[derive(Debug, Clone)]
pub struct AckedClick {
    pub mentor: usize,
    pub code: usize,
    pub occurred_at: String,
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
}

impl Ledger {
    pub fn acked(&mut self, id: String, mentor: usize, code: usize, occurred_at: String) {
        if self.clicks.contains_key(&id) {
            self.violations
                .record(format!("id {id} acknowledged twice for two POSTs"));
            return;
        }
        self.order.push(id.clone());
        self.clicks.insert(
            id,
            AckedClick {
                mentor,
                code,
                occurred_at,
                state: ClickState::Pending,
                busy: false,
            },
        );
    }

    /// A random recent attribution with no command in flight whose state is `Pending`
    /// (or, when `confirmed_ok`, also `Confirmed`); marks it busy.
    pub fn take_target(&mut self, rng: &mut SmallRng, confirmed_ok: bool) -> Option<String> {
        if self.order.is_empty() {
            return None;
        }
        for _ in 0..16 {
            // Mostly recent clicks: conversions follow clicks.
            let window = self.order.len().min(5_000);
            let index = self.order.len() - 1 - rng.random_range(0..window);
            let id = &self.order[index];
            if let Some(click) = self.clicks.get_mut(id) {
                let eligible = match click.state {
                    ClickState::Pending => true,
                    ClickState::Confirmed { .. } => confirmed_ok,
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

    pub fn acked_count(&self) -> usize {
        self.clicks.len()
    }
}
