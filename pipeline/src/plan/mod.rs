//! The one implementation of every rule of the single writer, decided without I/O.
//!
//! Both modes use it: the consumer hands over, per partition, the events read since the
//! last flush and the partition's checkpoint (the next offset whose effects are not yet
//! stored); the store loads what those events refer to ([`References`] -> [`Known`]).
//! [`plan`] then walks the events in log order over an in-memory overlay of that state, so
//! a command sees every event before it on its partition, flushed or not, and returns what
//! to store: versioned [`rows`], per-mentor hourly totals deltas, checkpoint moves, and
//! every command's verdict. Each click gets its verdict (counted, duplicate, bot) from its
//! partition's [`DedupWindow`], which the planner advances in log order. A store ([`crate::store::StoreWriter`]) writes the plan as it
//! is; it decides nothing.
//!
//! Invariants:
//! * events below their partition's checkpoint are skipped: their effects, totals included,
//!   are already stored;
//! * a command whose decision is recorded for this very message (a replay after a crash) is
//!   not decided again: its recorded effect is written again (idempotent rows; its totals
//!   were not counted, since the checkpoint did not move past it);
//! * a command id seen before in another message (a client retry) changes nothing and
//!   answers with the recorded verdict;
//! * every other command is decided with the pure rules of [`referral_schemas::state`];
//! * a click's verdict depends only on the clicks before it on its partition, so a replay
//!   from the checkpoint (with the window rebuilt from the clicks below it) decides the same.

pub mod rows;

use std::collections::{BTreeMap, HashMap, HashSet};

use referral_schemas::Timestamp;
use referral_schemas::messages::{
    AssignCode, ConfirmConversion, DeleteAttribution, LogEvent, Rejection, RetireCode,
    ReverseConversion, Verdict,
};
use referral_schemas::state::{self, Confirmation, Reversal};
use referral_schemas::verdict::{ClickVerdict, DedupWindow, VisitorKey};
use serde::{Deserialize, Serialize};

use self::rows::{AttributionRow, ClickSource, CodeRow, DecisionRow, EventRow, MemberRow};

/// A log partition: topic and partition number. The embedded log is one partition.
pub type PartitionKey = (String, i32);

/// One partition's events since its last flush.
#[derive(Clone, Debug)]
pub struct PartitionBatch {
    pub topic: String,
    pub partition: i32,
    /// Decodable events with their offsets, in log order.
    pub events: Vec<(i64, LogEvent)>,
    /// The offset after the last message read (decodable or not): the new checkpoint.
    pub end: i64,
}

/// What the events of a flush refer to, to be loaded from the store.
#[derive(Debug, Default)]
pub struct References {
    pub command_ids: HashSet<String>,
    pub attribution_ids: HashSet<String>,
    pub member_ids: HashSet<String>,
    pub codes: HashSet<String>,
}

impl References {
    pub fn of<'a>(events: impl IntoIterator<Item = &'a LogEvent>) -> Self {
        let mut references = Self::default();
        for event in events {
            if let Some(command_id) = event.command_id() {
                references.command_ids.insert(command_id.to_owned());
            }
            match event {
                LogEvent::Click(_) => {}
                LogEvent::ConfirmConversion(command) => {
                    references
                        .attribution_ids
                        .insert(command.attribution_id.clone());
                    references.member_ids.insert(command.new_member_id.clone());
                }
                LogEvent::DeleteAttribution(command) => {
                    references
                        .attribution_ids
                        .insert(command.attribution_id.clone());
                }
                LogEvent::ReverseConversion(command) => {
                    references
                        .attribution_ids
                        .insert(command.attribution_id.clone());
                }
                LogEvent::AssignCode(command) => {
                    references.codes.insert(command.code.clone());
                }
                LogEvent::RetireCode(command) => {
                    references.codes.insert(command.code.clone());
                }
            }
        }
        references
    }
}

impl References {
    /// The members to load: those the events name, and those the loaded attributions hold
    /// (a deletion releases its attribution's member, whose row version it must know).
    pub fn members_of(&self, attributions: &[AttributionRow]) -> HashSet<String> {
        let mut members = self.member_ids.clone();
        members.extend(
            attributions
                .iter()
                .filter_map(|row| row.new_member_id.clone()),
        );
        members
    }
}

/// The stored state the events refer to (latest version of each row, tombstones included).
#[derive(Debug, Default)]
pub struct Known {
    pub decisions: HashMap<String, DecisionRow>,
    pub attributions: HashMap<String, AttributionRow>,
    pub members: HashMap<String, MemberRow>,
    pub codes: HashMap<String, CodeRow>,
}

impl Known {
    /// The rows a store loaded, keyed as the planner looks them up.
    pub fn from_rows(
        decisions: Vec<DecisionRow>,
        attributions: Vec<AttributionRow>,
        members: Vec<MemberRow>,
        codes: Vec<CodeRow>,
    ) -> Self {
        Self {
            decisions: decisions
                .into_iter()
                .map(|row| (row.command_id.clone(), row))
                .collect(),
            attributions: attributions
                .into_iter()
                .map(|row| (row.id.clone(), row))
                .collect(),
            members: members
                .into_iter()
                .map(|row| (row.new_member_id.clone(), row))
                .collect(),
            codes: codes
                .into_iter()
                .map(|row| (row.code.clone(), row))
                .collect(),
        }
    }
}

/// A signed change to one mentor's totals in one hour (clicks of each verdict by
/// `occurred_at`, conversions and reversed conversions by `confirmed_at`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    pub mentor_id: String,
    pub hour: i64,
    /// Counted clicks.
    pub clicks: i64,
    /// Recorded decisions from before verdicts existed have no such field: zero.
    #[serde(default)]
    pub duplicates: i64,
    #[serde(default)]
    pub bots: i64,
    pub conversions: i64,
    /// Recorded decisions from before reversals existed have no such field: zero.
    #[serde(default)]
    pub reversals: i64,
}

impl Delta {
    pub fn counts(&self) -> Counts {
        Counts {
            clicks: self.clicks,
            duplicates: self.duplicates,
            bots: self.bots,
            conversions: self.conversions,
            reversals: self.reversals,
        }
    }
}

impl From<state::TotalsDelta> for Delta {
    fn from(delta: state::TotalsDelta) -> Self {
        Self {
            mentor_id: delta.mentor_id,
            hour: delta.hour,
            clicks: delta.clicks,
            duplicates: delta.duplicates,
            bots: delta.bots,
            conversions: delta.conversions,
            reversals: delta.reversals,
        }
    }
}

/// Summed totals changes of one bucket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Counted clicks.
    pub clicks: i64,
    pub duplicates: i64,
    pub bots: i64,
    pub conversions: i64,
    /// Reversed conversions.
    pub reversals: i64,
}

impl Counts {
    pub fn add(&mut self, other: Counts) {
        self.clicks += other.clicks;
        self.duplicates += other.duplicates;
        self.bots += other.bots;
        self.conversions += other.conversions;
        self.reversals += other.reversals;
    }

    pub fn is_zero(&self) -> bool {
        *self == Self::default()
    }

    /// Recorded clicks of every verdict: what a list of attributions holds.
    pub fn recorded(&self) -> i64 {
        self.clicks + self.duplicates + self.bots
    }
}

/// Clicks planned in a flush, by verdict (for metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerdictCounts {
    pub counted: u64,
    pub duplicate: u64,
    pub bot: u64,
}

impl VerdictCounts {
    fn add(&mut self, verdict: ClickVerdict) {
        match verdict {
            ClickVerdict::Counted => self.counted += 1,
            ClickVerdict::Duplicate => self.duplicate += 1,
            ClickVerdict::Bot => self.bot += 1,
        }
    }
}

/// The dedup windows of the partitions a flush covers. The consumer loads a partition's
/// window from the store before its first flush; a partition missing here starts empty.
#[derive(Clone, Debug, Default)]
pub struct DedupWindows {
    /// `--dedup-window` in ms (0: no click is a duplicate).
    pub window_ms: i64,
    pub partitions: HashMap<PartitionKey, DedupWindow>,
}

impl DedupWindows {
    pub fn new(window_ms: i64) -> Self {
        Self {
            window_ms,
            partitions: HashMap::new(),
        }
    }
}

/// What an accepted command writes; recorded with its decision and re-applied as is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Effect {
    pub attribution: Option<AttributionRow>,
    pub member: Option<MemberRow>,
    pub code: Option<CodeRow>,
    pub deltas: Vec<Delta>,
    /// The webhook event the decision causes (absent in effects recorded before webhooks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<EventRow>,
}

/// One partition's checkpoint before and after a flush: the flush applies the events in
/// `from..to` (offsets; `to` is the next offset to apply).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointMove {
    pub topic: String,
    pub partition: i32,
    pub from: i64,
    pub to: i64,
}

/// Everything one flush stores, in the order it must be written: decisions first (so that
/// nothing is ever decided twice), then state rows, then the commit point (totals deltas and
/// checkpoint moves, stored together).
#[derive(Debug, Default)]
pub struct Plan {
    /// New decisions.
    pub decisions: Vec<DecisionRow>,
    /// Webhook events of the decisions (new or replayed), in log order.
    pub events: Vec<EventRow>,
    pub attributions: Vec<AttributionRow>,
    pub members: Vec<MemberRow>,
    /// Code states; the announcer also hands them to the edges' code directories.
    pub codes: Vec<CodeRow>,
    /// Per mentor and hour, the flush's summed totals changes (none that sum to zero),
    /// ordered by mentor and hour.
    pub deltas: Vec<Delta>,
    /// Every partition of the flush whose checkpoint moves.
    pub checkpoints: Vec<CheckpointMove>,
    /// The verdict of every command the flush saw (decided now, or recorded before), for
    /// whoever waits on it once the flush is stored.
    pub verdicts: Vec<(String, Verdict)>,
    /// Outcome of each command decided in this flush, for metrics ("applied" or a reason).
    pub outcomes: Vec<&'static str>,
    /// Events skipped because they were below their checkpoint.
    pub skipped: usize,
    /// Clicks decided in this flush, by verdict.
    pub click_verdicts: VerdictCounts,
}

impl Plan {
    /// The hourly deltas summed per mentor and day (days since the epoch); none that sum
    /// to zero.
    pub fn daily_deltas(&self) -> BTreeMap<(String, i64), Counts> {
        let mut daily: BTreeMap<(String, i64), Counts> = BTreeMap::new();
        for delta in &self.deltas {
            daily
                .entry((delta.mentor_id.clone(), delta.hour.div_euclid(24)))
                .or_default()
                .add(delta.counts());
        }
        daily.retain(|_, counts| !counts.is_zero());
        daily
    }

    /// Every mentor's deltas summed per day: what the unfiltered list counts.
    pub fn global_daily_deltas(&self) -> BTreeMap<i64, Counts> {
        let mut global: BTreeMap<i64, Counts> = BTreeMap::new();
        for delta in &self.deltas {
            global
                .entry(delta.hour.div_euclid(24))
                .or_default()
                .add(delta.counts());
        }
        global.retain(|_, counts| !counts.is_zero());
        global
    }
}

/// Plans one flush. `checkpoints` holds each batch's stored checkpoint (by topic and
/// partition; absent = nothing stored yet). `dedup` is advanced past the flush's clicks:
/// if the flush is not stored, the caller must rebuild the windows it covered. `now`
/// stamps new decisions.
pub fn plan(
    batches: &[PartitionBatch],
    checkpoints: &HashMap<PartitionKey, i64>,
    known: Known,
    window_ms: i64,
    dedup: &mut DedupWindows,
    now: Timestamp,
) -> Plan {
    // Only clicks that a command of this flush refers to need to be in the overlay.
    let referenced = References::of(
        batches
            .iter()
            .flat_map(|batch| batch.events.iter().map(|(_, event)| event)),
    )
    .attribution_ids;
    // Nearly every event of a bulk flush is a click that becomes one row: sized once, the
    // rows are not copied over and over as the vector grows (8% of a 50,000-row flush).
    let incoming = batches.iter().map(|batch| batch.events.len()).sum();
    let mut planner = Planner {
        known,
        referenced,
        window_ms,
        now,
        plan: Plan {
            attributions: Vec::with_capacity(incoming),
            ..Plan::default()
        },
        deltas: BTreeMap::new(),
    };
    for batch in batches {
        let key = (batch.topic.clone(), batch.partition);
        let checkpoint = checkpoints.get(&key).copied().unwrap_or(0);
        let window_ms = dedup.window_ms;
        let window = dedup
            .partitions
            .entry(key)
            .or_insert_with(|| DedupWindow::new(window_ms));
        for (offset, event) in &batch.events {
            if *offset < checkpoint {
                planner.plan.skipped += 1;
                continue;
            }
            planner.apply(batch, *offset, event, window);
        }
        if batch.end > checkpoint {
            planner.plan.checkpoints.push(CheckpointMove {
                topic: batch.topic.clone(),
                partition: batch.partition,
                from: checkpoint,
                to: batch.end,
            });
        }
    }
    planner.finish()
}

struct Planner {
    /// Starts as the stored state and is updated event by event (the overlay).
    known: Known,
    /// Attributions the flush's commands refer to: the only clicks the overlay keeps.
    referenced: HashSet<String>,
    window_ms: i64,
    now: Timestamp,
    plan: Plan,
    /// (mentor, hour) -> summed changes over the flush.
    deltas: BTreeMap<(String, i64), Counts>,
}

impl Planner {
    fn apply(
        &mut self,
        batch: &PartitionBatch,
        offset: i64,
        event: &LogEvent,
        window: &mut DedupWindow,
    ) {
        let LogEvent::Click(click) = event else {
            return self.apply_command(batch, offset, event);
        };
        let agent = click.user_agent.as_deref();
        let visitor = VisitorKey::of(&click.mentor_id, &click.code, &click.ip_address, agent);
        let (verdict, duplicate_of) = window.decide(
            visitor,
            agent,
            &click.attribution_id,
            click.received_at.as_millis(),
        );
        self.plan.click_verdicts.add(verdict);
        let (attribution, delta) = state::record_click(click, verdict, duplicate_of);
        let source = ClickSource {
            topic: &batch.topic,
            partition: batch.partition,
            offset,
        };
        let row = AttributionRow::click(&attribution, source);
        // A replayed click may find a later state (confirmed, deleted): keep that one in the
        // overlay. Its row is written anyway; every store keeps the higher version.
        if self.referenced.contains(&row.id) {
            self.known
                .attributions
                .entry(row.id.clone())
                .or_insert_with(|| row.clone());
        }
        self.plan.attributions.push(row);
        self.add_delta(delta.into());
    }

    fn apply_command(&mut self, batch: &PartitionBatch, offset: i64, event: &LogEvent) {
        let Some(command_id) = event.command_id() else {
            return;
        };
        if let Some(recorded) = self.known.decisions.get(command_id) {
            let same_message = recorded.source_topic == batch.topic
                && recorded.source_partition == batch.partition
                && recorded.source_offset == offset;
            let verdict = serde_json::from_str::<Verdict>(&recorded.verdict).ok();
            let effect = same_message
                .then(|| match serde_json::from_str::<Effect>(&recorded.effect) {
                    Ok(effect) => Some(effect),
                    Err(error) => {
                        // Never silent: the decision stands, its effect cannot be re-written.
                        tracing::error!(%error, command_id, "a recorded effect does not parse");
                        metrics::counter!("referral_unreadable_effects_total").increment(1);
                        None
                    }
                })
                .flatten();
            if let Some(verdict) = verdict {
                self.plan.verdicts.push((command_id.to_owned(), verdict));
            }
            if let Some(effect) = effect {
                // Decided before a crash; its effects may be partly written. Write them again.
                self.write_effect(effect);
            }
            return;
        }
        let (verdict, mut effect) = match event {
            LogEvent::Click(_) => return,
            LogEvent::ConfirmConversion(command) => self.decide_confirmation(command),
            LogEvent::DeleteAttribution(command) => self.decide_deletion(command),
            LogEvent::AssignCode(command) => self.decide_assignment(command),
            LogEvent::RetireCode(command) => self.decide_retirement(command),
            LogEvent::ReverseConversion(command) => self.decide_reversal(command),
        };
        self.plan.outcomes.push(match &verdict {
            Verdict::Rejected { reason } => reason.as_str(),
            _ => "applied",
        });
        effect.event =
            EventRow::of_verdict(command_id, &verdict, effect.attribution.as_ref(), self.now).map(
                |row| EventRow {
                    source_topic: batch.topic.clone(),
                    source_partition: batch.partition,
                    source_offset: offset,
                    ..row
                },
            );
        // Serializing these plain structs cannot fail; an empty text would only lose the
        // replay of this one decision's effect, never double it.
        let decision = DecisionRow {
            command_id: command_id.to_owned(),
            verdict: serde_json::to_string(&verdict).unwrap_or_default(),
            effect: serde_json::to_string(&effect).unwrap_or_default(),
            decided_at: self.now.as_millis(),
            source_topic: batch.topic.clone(),
            source_partition: batch.partition,
            source_offset: offset,
        };
        self.known
            .decisions
            .insert(command_id.to_owned(), decision.clone());
        self.plan.decisions.push(decision);
        self.plan.verdicts.push((command_id.to_owned(), verdict));
        self.write_effect(effect);
    }

    fn write_effect(&mut self, effect: Effect) {
        if let Some(row) = effect.event {
            self.plan.events.push(row);
        }
        if let Some(row) = effect.attribution {
            self.known.attributions.insert(row.id.clone(), row.clone());
            self.plan.attributions.push(row);
        }
        if let Some(row) = effect.member {
            self.known
                .members
                .insert(row.new_member_id.clone(), row.clone());
            self.plan.members.push(row);
        }
        if let Some(row) = effect.code {
            self.known.codes.insert(row.code.clone(), row.clone());
            self.plan.codes.push(row);
        }
        for delta in effect.deltas {
            self.add_delta(delta);
        }
    }

    fn add_delta(&mut self, delta: Delta) {
        let counts = delta.counts();
        self.deltas
            .entry((delta.mentor_id, delta.hour))
            .or_default()
            .add(counts);
    }

    /// The live attribution and its row version (`None` when unknown or deleted).
    fn live_attribution(
        &self,
        id: &str,
    ) -> Option<(referral_schemas::Attribution, &AttributionRow)> {
        let row = self
            .known
            .attributions
            .get(id)
            .filter(|row| row.is_live())?;
        // A row that does not parse is treated as absent: the command is rejected, not
        // applied to state we cannot read.
        row.to_attribution()
            .ok()
            .map(|attribution| (attribution, row))
    }

    fn member_version(&self, member: &str) -> u64 {
        self.known.members.get(member).map_or(0, |row| row.version)
    }

    fn decide_confirmation(&mut self, command: &ConfirmConversion) -> (Verdict, Effect) {
        let current = self.live_attribution(&command.attribution_id);
        let holder = self
            .known
            .members
            .get(&command.new_member_id)
            .and_then(MemberRow::holder);
        let attribution = current.as_ref().map(|(attribution, _)| attribution);
        match state::confirm(attribution, holder, command, self.window_ms) {
            Err(reason) => (Verdict::Rejected { reason }, Effect::default()),
            Ok(Confirmation::Replayed { attribution }) => (
                Verdict::Confirmed {
                    attribution,
                    replayed: true,
                },
                Effect::default(),
            ),
            Ok(Confirmation::Applied { attribution, delta }) => {
                let Some((_, row)) = current else {
                    // `confirm` applies only to a live attribution; unreachable.
                    return (
                        Verdict::Rejected {
                            reason: Rejection::AttributionNotFound,
                        },
                        Effect::default(),
                    );
                };
                let row = row.next_state(&attribution);
                let member = MemberRow {
                    new_member_id: command.new_member_id.clone(),
                    attribution_id: attribution.id.clone(),
                    released: 0,
                    version: self.member_version(&command.new_member_id) + 1,
                };
                let effect = Effect {
                    attribution: Some(row),
                    member: Some(member),
                    code: None,
                    deltas: vec![delta.into()],
                    event: None,
                };
                (
                    Verdict::Confirmed {
                        attribution,
                        replayed: false,
                    },
                    effect,
                )
            }
        }
    }

    fn decide_reversal(&mut self, command: &ReverseConversion) -> (Verdict, Effect) {
        let current = self.live_attribution(&command.attribution_id);
        let attribution = current.as_ref().map(|(attribution, _)| attribution);
        match state::reverse(attribution, command) {
            Err(reason) => (Verdict::Rejected { reason }, Effect::default()),
            Ok(Reversal::Replayed { attribution }) => (
                Verdict::Reversed {
                    attribution,
                    replayed: true,
                },
                Effect::default(),
            ),
            Ok(Reversal::Applied { attribution, delta }) => {
                let Some((_, row)) = current else {
                    // `reverse` applies only to a live attribution; unreachable.
                    return (
                        Verdict::Rejected {
                            reason: Rejection::AttributionNotFound,
                        },
                        Effect::default(),
                    );
                };
                let effect = Effect {
                    attribution: Some(row.next_state(&attribution)),
                    deltas: vec![delta.into()],
                    ..Effect::default()
                };
                (
                    Verdict::Reversed {
                        attribution,
                        replayed: false,
                    },
                    effect,
                )
            }
        }
    }

    fn decide_deletion(&mut self, command: &DeleteAttribution) -> (Verdict, Effect) {
        let current = self.live_attribution(&command.attribution_id);
        let attribution = current.as_ref().map(|(attribution, _)| attribution);
        match state::delete(attribution, command) {
            Err(reason) => (Verdict::Rejected { reason }, Effect::default()),
            Ok(deletion) => {
                let mut tombstone = current.map(|(_, row)| row.clone());
                if let Some(row) = tombstone.as_mut() {
                    row.deleted_at = Some(command.issued_at.as_millis());
                    row.version += 1;
                }
                let member = deletion.released_member.map(|member| MemberRow {
                    version: self.member_version(&member) + 1,
                    new_member_id: member,
                    attribution_id: command.attribution_id.clone(),
                    released: 1,
                });
                let effect = Effect {
                    attribution: tombstone,
                    member,
                    code: None,
                    deltas: deletion.deltas.into_iter().map(Delta::from).collect(),
                    event: None,
                };
                (
                    Verdict::Deleted {
                        deletion: deletion.view,
                    },
                    effect,
                )
            }
        }
    }

    fn decide_assignment(&mut self, command: &AssignCode) -> (Verdict, Effect) {
        let stored = self.known.codes.get(&command.code);
        let version = stored.map_or(0, |row| row.version) + 1;
        let current = stored.and_then(CodeRow::live_code);
        let (code, created) = state::assign_code(current.as_ref(), command);
        let row = CodeRow {
            code: code.code.clone(),
            mentor_id: code.mentor_id.clone(),
            destination_url: code.destination_url.clone(),
            created_at: code.created_at.as_millis(),
            updated_at: code.updated_at.as_millis(),
            retired: 0,
            version,
        };
        let effect = Effect {
            code: Some(row),
            ..Effect::default()
        };
        (Verdict::CodeAssigned { code, created }, effect)
    }

    fn decide_retirement(&mut self, command: &RetireCode) -> (Verdict, Effect) {
        let stored = self.known.codes.get(&command.code);
        let current = stored.and_then(CodeRow::live_code);
        match state::retire_code(current.as_ref(), command) {
            Err(reason) => (Verdict::Rejected { reason }, Effect::default()),
            Ok(retirement) => {
                let row = stored.map(|row| CodeRow {
                    retired: 1,
                    updated_at: command.issued_at.as_millis(),
                    version: row.version + 1,
                    ..row.clone()
                });
                let effect = Effect {
                    code: row,
                    ..Effect::default()
                };
                (Verdict::CodeRetired { retirement }, effect)
            }
        }
    }

    fn finish(mut self) -> Plan {
        self.plan.deltas = self
            .deltas
            .into_iter()
            .filter(|(_, sums)| !sums.is_zero())
            .map(|((mentor_id, hour), sums)| Delta {
                mentor_id,
                hour,
                clicks: sums.clicks,
                duplicates: sums.duplicates,
                bots: sums.bots,
                conversions: sums.conversions,
                reversals: sums.reversals,
            })
            .collect();
        self.plan
    }
}

#[cfg(test)]
mod tests {
    use referral_schemas::messages::ClickEvent;

    use referral_schemas::timestamp::HOUR_MS;

    use super::*;

    const TOPIC: &str = "referral-events";
    const WINDOW: i64 = 90 * referral_schemas::timestamp::DAY_MS;
    const BROWSER: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Safari/605.1.15";

    fn at(hour: i64) -> Timestamp {
        Timestamp::from_millis(hour * HOUR_MS + 1_000)
    }

    fn click(id: &str, mentor: &str, hour: i64) -> LogEvent {
        LogEvent::Click(ClickEvent {
            attribution_id: id.into(),
            code: "JAN-1".into(),
            mentor_id: mentor.into(),
            ip_address: "203.0.113.7".into(),
            user_agent: Some(BROWSER.into()),
            referrer_url: None,
            occurred_at: at(hour),
            received_at: at(hour),
        })
    }

    fn confirm(command: &str, id: &str, member: &str, hour: i64) -> LogEvent {
        LogEvent::ConfirmConversion(ConfirmConversion {
            command_id: command.into(),
            attribution_id: id.into(),
            code: "JAN-1".into(),
            new_member_id: member.into(),
            confirmed_at: at(hour),
            issued_at: at(hour),
        })
    }

    fn delete(command: &str, id: &str, hour: i64) -> LogEvent {
        LogEvent::DeleteAttribution(DeleteAttribution {
            command_id: command.into(),
            attribution_id: id.into(),
            issued_at: at(hour),
        })
    }

    fn batch(partition: i32, first: i64, events: Vec<LogEvent>) -> PartitionBatch {
        let end = first + events.len() as i64;
        PartitionBatch {
            topic: TOPIC.into(),
            partition,
            events: (first..).zip(events).collect(),
            end,
        }
    }

    /// (mentor, hour, clicks, conversions) of the hourly deltas.
    fn hourly(plan: &Plan) -> Vec<(String, i64, i64, i64)> {
        plan.deltas
            .iter()
            .map(|d| (d.mentor_id.clone(), d.hour, d.clicks, d.conversions))
            .collect()
    }

    fn daily(plan: &Plan) -> Vec<(String, i64, i64, i64)> {
        plan.daily_deltas()
            .into_iter()
            .map(|((mentor, day), sums)| (mentor, day, sums.clicks, sums.conversions))
            .collect()
    }

    /// (topic, partition, offsets moved, 0), as the checkpoint rows of ClickHouse hold them.
    fn moves(plan: &Plan) -> Vec<(String, i64, i64, i64)> {
        plan.checkpoints
            .iter()
            .map(|m| (m.topic.clone(), i64::from(m.partition), m.to - m.from, 0))
            .collect()
    }

    #[test]
    fn clicks_sum_per_hour_and_day_and_move_the_checkpoint() {
        let plan = plan(
            &[batch(
                0,
                0,
                vec![
                    click("a1", "m1", 10),
                    click("a2", "m1", 10),
                    click("a3", "m1", 30),
                ],
            )],
            &HashMap::new(),
            Known::default(),
            WINDOW,
            &mut DedupWindows::new(0),
            at(40),
        );
        assert_eq!(plan.attributions.len(), 3);
        assert_eq!(
            hourly(&plan),
            vec![("m1".into(), 10, 2, 0), ("m1".into(), 30, 1, 0)]
        );
        assert_eq!(
            daily(&plan),
            vec![("m1".into(), 0, 2, 0), ("m1".into(), 1, 1, 0)]
        );
        assert_eq!(moves(&plan), vec![(TOPIC.into(), 0, 3, 0)]);
        let global: Vec<(i64, i64)> = plan
            .global_daily_deltas()
            .into_iter()
            .map(|(day, sums)| (day, sums.recorded()))
            .collect();
        assert_eq!(global, vec![(0, 2), (1, 1)]);
    }

    #[test]
    fn events_below_the_checkpoint_are_skipped_and_the_increment_is_the_rest() {
        let checkpoints = HashMap::from([((TOPIC.to_owned(), 2), 11)]);
        let plan = plan(
            &[batch(
                2,
                10,
                vec![click("a1", "m1", 1), click("a2", "m1", 1)],
            )],
            &checkpoints,
            Known::default(),
            WINDOW,
            &mut DedupWindows::new(0),
            at(2),
        );
        assert_eq!(plan.skipped, 1);
        assert_eq!(hourly(&plan), vec![("m1".into(), 1, 1, 0)]);
        assert_eq!(moves(&plan), vec![(TOPIC.into(), 2, 1, 0)]);
    }

    #[test]
    fn a_command_sees_the_click_before_it_in_the_same_flush() {
        let plan = plan(
            &[batch(
                0,
                0,
                vec![click("a1", "m1", 1), confirm("c1", "a1", "new_1", 2)],
            )],
            &HashMap::new(),
            Known::default(),
            WINDOW,
            &mut DedupWindows::new(0),
            at(3),
        );
        assert_eq!(plan.outcomes, vec!["applied"]);
        assert_eq!(plan.decisions.len(), 1);
        assert_eq!(plan.attributions.last().map(|row| row.version), Some(2));
        assert_eq!(plan.members[0].holder(), Some("a1"));
        assert_eq!(
            hourly(&plan),
            vec![("m1".into(), 1, 1, 0), ("m1".into(), 2, 0, 1)]
        );
    }

    #[test]
    fn one_member_one_attribution_and_one_confirmation_per_attribution() {
        let plan = plan(
            &[batch(
                0,
                0,
                vec![
                    click("a1", "m1", 1),
                    click("a2", "m2", 1),
                    confirm("c1", "a1", "new_1", 2),
                    confirm("c2", "a1", "new_2", 2),
                    confirm("c3", "a2", "new_1", 2),
                    confirm("c4", "a1", "new_1", 2),
                ],
            )],
            &HashMap::new(),
            Known::default(),
            WINDOW,
            &mut DedupWindows::new(0),
            at(3),
        );
        assert_eq!(
            plan.outcomes,
            vec![
                "applied",
                "already_confirmed",
                "member_already_attributed",
                "applied"
            ]
        );
        // c4 repeats c1: answered as confirmed, counted once.
        let conversions: i64 = plan.deltas.iter().map(|delta| delta.conversions).sum();
        assert_eq!(conversions, 1);
    }

    #[test]
    fn deleting_a_confirmed_attribution_removes_both_and_frees_the_member() {
        let plan = plan(
            &[batch(
                0,
                0,
                vec![
                    click("a1", "m1", 1),
                    confirm("c1", "a1", "new_1", 2),
                    delete("d1", "a1", 3),
                    delete("d2", "a1", 3),
                    click("a2", "m1", 4),
                    confirm("c2", "a2", "new_1", 5),
                ],
            )],
            &HashMap::new(),
            Known::default(),
            WINDOW,
            &mut DedupWindows::new(0),
            at(6),
        );
        assert_eq!(
            plan.outcomes,
            vec!["applied", "applied", "attribution_not_found", "applied"]
        );
        let day: Vec<_> = daily(&plan);
        assert_eq!(day, vec![("m1".into(), 0, 1, 1)]);
        let last_member = plan.members.last().map(|row| (row.holder(), row.version));
        assert_eq!(last_member, Some((Some("a2"), 3)));
    }

    #[test]
    fn a_replayed_message_rewrites_its_recorded_effect_and_a_retry_changes_nothing() {
        let first = plan(
            &[batch(
                0,
                0,
                vec![click("a1", "m1", 1), confirm("c1", "a1", "new_1", 2)],
            )],
            &HashMap::new(),
            Known::default(),
            WINDOW,
            &mut DedupWindows::new(0),
            at(3),
        );
        // Crash after the decision was stored, before the totals: the same messages again.
        let recorded = Known {
            decisions: first
                .decisions
                .iter()
                .map(|row| (row.command_id.clone(), row.clone()))
                .collect(),
            ..Known::default()
        };
        let replay = plan(
            &[batch(
                0,
                0,
                vec![
                    click("a1", "m1", 1),
                    confirm("c1", "a1", "new_1", 2),
                    // The API retried: the same command id in a later message.
                    confirm("c1", "a1", "new_1", 2),
                ],
            )],
            &HashMap::new(),
            recorded,
            WINDOW,
            &mut DedupWindows::new(0),
            at(9),
        );
        assert!(replay.decisions.is_empty(), "nothing is decided twice");
        assert_eq!(replay.attributions, first.attributions);
        assert_eq!(replay.members, first.members);
        assert_eq!(hourly(&replay), hourly(&first));
        // The webhook event: one for the new conversion, at its command's log position, the
        // same one again with the replayed effect, none for the retry.
        assert_eq!(first.events.len(), 1);
        let event = &first.events[0];
        assert_eq!(
            (event.event_type.as_str(), event.attribution_id.as_str()),
            ("conversion.confirmed", "a1")
        );
        assert_eq!((event.source_partition, event.source_offset), (0, 1));
        assert_eq!(event.event_id, referral_schemas::webhook::event_id("c1"));
        assert_eq!(replay.events, first.events);
    }

    fn visit(id: &str, ip: &str, agent: Option<&str>, minute: i64) -> LogEvent {
        let instant = Timestamp::from_millis(minute * 60_000);
        LogEvent::Click(ClickEvent {
            attribution_id: id.into(),
            code: "JAN-1".into(),
            mentor_id: "m1".into(),
            ip_address: ip.into(),
            user_agent: agent.map(str::to_owned),
            referrer_url: None,
            occurred_at: instant,
            received_at: instant,
        })
    }

    fn verdicts(plan: &Plan) -> Vec<(String, String, Option<String>)> {
        plan.attributions
            .iter()
            .map(|row| {
                (
                    row.id.clone(),
                    row.verdict.clone(),
                    row.duplicate_of.clone(),
                )
            })
            .collect()
    }

    #[test]
    fn clicks_get_verdicts_and_totals_count_only_counted_ones() {
        let events = vec![
            visit("a1", "10.0.0.1", Some(BROWSER), 0),
            visit("a2", "10.0.0.1", Some(BROWSER), 30),
            visit("a3", "10.0.0.2", Some(BROWSER), 31),
            visit("a4", "10.0.0.1", Some("Slackbot-LinkExpanding 1.0"), 32),
            visit("a5", "10.0.0.1", None, 33),
            visit("a6", "10.0.0.1", Some(BROWSER), 61),
            confirm("c1", "a2", "new_1", 1),
            confirm("c2", "a4", "new_2", 1),
        ];
        let mut dedup = DedupWindows::new(HOUR_MS);
        let plan = plan(
            &[batch(0, 0, events)],
            &HashMap::new(),
            Known::default(),
            WINDOW,
            &mut dedup,
            at(2),
        );
        let got: Vec<_> = verdicts(&plan).into_iter().take(6).collect();
        let expected: Vec<(String, String, Option<String>)> = [
            ("a1", "counted", None),
            ("a2", "duplicate", Some("a1")),
            ("a3", "counted", None),
            ("a4", "bot", None),
            ("a5", "bot", None),
            ("a6", "counted", None),
        ]
        .into_iter()
        .map(|(id, verdict, of)| (id.into(), verdict.into(), of.map(str::to_owned)))
        .collect();
        assert_eq!(got, expected);
        // A duplicate is a real visitor and can convert; a bot's click cannot.
        assert_eq!(plan.outcomes, vec!["applied", "not_a_visitor"]);
        let sums = plan.deltas.iter().fold(Counts::default(), |mut sums, d| {
            sums.add(d.counts());
            sums
        });
        assert_eq!(
            sums,
            Counts {
                clicks: 3,
                duplicates: 1,
                bots: 2,
                conversions: 1,
                reversals: 0
            }
        );
        assert_eq!(
            plan.click_verdicts,
            VerdictCounts {
                counted: 3,
                duplicate: 1,
                bot: 2
            }
        );
    }

    #[test]
    fn a_redelivered_batch_and_a_rebuilt_window_keep_every_verdict() {
        let events: Vec<LogEvent> = (0..40)
            .map(|n: i64| {
                let ip = format!("10.0.0.{}", n % 3);
                visit(&format!("a{n}"), &ip, Some(BROWSER), n * 7)
            })
            .collect();
        let (first, second) = events.split_at(20);
        let mut dedup = DedupWindows::new(HOUR_MS);
        let flush = |dedup: &mut DedupWindows, checkpoint: i64, events: &[LogEvent], from| {
            let checkpoints = HashMap::from([((TOPIC.to_owned(), 0), checkpoint)]);
            plan(
                &[batch(0, from, events.to_vec())],
                &checkpoints,
                Known::default(),
                WINDOW,
                dedup,
                at(9),
            )
        };
        let stored_first = flush(&mut dedup, 0, first, 0);
        let straight = flush(&mut dedup.clone(), 20, second, 20);
        // A restart: the window rebuilt from the counted clicks stored below the
        // checkpoint, as the store gives them back (any order).
        let mut rebuilt = DedupWindows::new(HOUR_MS);
        let window = rebuilt
            .partitions
            .entry((TOPIC.to_owned(), 0))
            .or_insert_with(|| DedupWindow::new(HOUR_MS));
        for row in stored_first.attributions.iter().rev() {
            if row.verdict == "counted" {
                let visitor = VisitorKey::of(
                    &row.mentor_id,
                    &row.code,
                    &row.ip_address,
                    row.user_agent.as_deref(),
                );
                let visit = referral_schemas::verdict::CountedVisit {
                    attribution_id: row.id.clone(),
                    received_at: row.created_at,
                };
                window.remember(visitor, visit);
            }
        }
        // A redelivery from before the checkpoint: the stored part is skipped.
        let redelivered = flush(&mut rebuilt.clone(), 20, &events, 0);
        let after_restart = flush(&mut rebuilt, 20, second, 20);
        assert_eq!(verdicts(&straight), verdicts(&after_restart));
        assert_eq!(verdicts(&straight), verdicts(&redelivered));
        assert_eq!(redelivered.skipped, 20);
        assert!(
            verdicts(&straight)
                .iter()
                .any(|(_, verdict, _)| verdict == "duplicate")
        );
        assert!(
            verdicts(&straight)
                .iter()
                .any(|(_, verdict, _)| verdict == "counted")
        );
        assert!(
            stored_first
                .attributions
                .iter()
                .all(|row| row.source_partition == 0)
        );
        assert_eq!(stored_first.attributions[7].source_offset, 7);
    }

    #[test]
    fn code_commands_version_each_code() {
        let assign = |command: &str, mentor: &str| {
            LogEvent::AssignCode(AssignCode {
                command_id: command.into(),
                code: "JAN-1".into(),
                mentor_id: mentor.into(),
                destination_url: None,
                issued_at: at(1),
            })
        };
        let retire = |command: &str| {
            LogEvent::RetireCode(RetireCode {
                command_id: command.into(),
                code: "JAN-1".into(),
                issued_at: at(2),
            })
        };
        let plan = plan(
            &[batch(
                1,
                0,
                vec![
                    assign("k1", "m1"),
                    assign("k2", "m2"),
                    retire("k3"),
                    retire("k4"),
                    assign("k5", "m3"),
                ],
            )],
            &HashMap::new(),
            Known::default(),
            WINDOW,
            &mut DedupWindows::new(0),
            at(3),
        );
        assert_eq!(
            plan.outcomes,
            vec!["applied", "applied", "applied", "code_not_found", "applied"]
        );
        let versions: Vec<_> = plan
            .codes
            .iter()
            .map(|row| (row.mentor_id.as_str(), row.retired, row.version))
            .collect();
        assert_eq!(
            versions,
            vec![("m1", 0, 1), ("m2", 0, 2), ("m2", 1, 3), ("m3", 0, 4)]
        );
        let verdicts: Vec<Verdict> = plan
            .decisions
            .iter()
            .filter_map(|row| serde_json::from_str(&row.verdict).ok())
            .collect();
        assert!(matches!(
            verdicts[0],
            Verdict::CodeAssigned { created: true, .. }
        ));
        assert!(matches!(
            verdicts[1],
            Verdict::CodeAssigned { created: false, .. }
        ));
        assert!(matches!(
            verdicts[4],
            Verdict::CodeAssigned { created: true, .. }
        ));
    }
}
