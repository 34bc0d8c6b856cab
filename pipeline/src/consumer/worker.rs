//! Pending batches per partition, and the flush that plans and writes them.
//!
//! Owned by the consumer thread behind a mutex that the thread never holds while polling, so
//! that a Kafka rebalance callback (which runs inside the poll) can flush or drop a revoked
//! partition's batch before the revocation completes. Knows nothing of where its records
//! come from ([`super::LogSource`]) or which store it writes ([`StoreWriter`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use referral_schemas::Timestamp;
use referral_schemas::messages::{LogEvent, LogMessage, MessageDecodeError};
use tokio::runtime::Handle;

use super::announce::Announcer;
use super::fault::FaultPoint;
use super::position::{Positions, ReadStep};
use super::{DeadLetter, Record};
use referral_schemas::verdict::{CountedVisit, DedupWindow, VisitorKey};

use crate::plan::{self, DedupWindows, PartitionBatch, PartitionKey, Plan, References};
use crate::store::{StoreError, StoreWriter};

/// How long after a failed read of the assigned partitions' checkpoints the store is asked
/// again (records meanwhile are read again later).
const CHECKPOINTS_RETRY: Duration = Duration::from_millis(500);

/// How the worker batches and decides.
#[derive(Clone, Debug)]
pub struct WorkerSettings {
    /// Messages a partition gathers at most before its batch is flushed.
    pub batch_max_rows: usize,
    /// Payload bytes a partition gathers at most before its batch is flushed.
    pub batch_max_bytes: usize,
    /// The longest a message waits for its flush. Zero flushes whatever the source had
    /// ready (the embedded store wants small, prompt transactions; ClickHouse wants big,
    /// rare inserts).
    pub batch_max_wait: Duration,
    /// The longest a command waits for its flush: someone waits for its verdict, so a
    /// batch that holds a command is flushed this soon (at most `batch_max_wait`).
    pub command_max_wait: Duration,
    /// A gap in a partition's offsets is read again (the source seeks back) before it is
    /// taken. Kafka: yes (its offsets are dense on these topics). The file log: no (its
    /// reader stops at a missing offset itself).
    pub seek_gaps: bool,
    /// `--attribution-window` in milliseconds, for the planner.
    pub window_ms: i64,
    /// `--dedup-window` in milliseconds (0: no click is a duplicate).
    pub dedup_window_ms: i64,
}

/// Times a flush's phases (`referral_flush_phase_duration_seconds{phase}`): where a slow
/// flush spends its time, reads, planning, state inserts or the commit, tells whether the
/// store or the writer bounds it.
struct PhaseTimer {
    since: Instant,
}

impl PhaseTimer {
    fn start() -> Self {
        Self {
            since: Instant::now(),
        }
    }

    /// Records the phase that ends now; the next one starts.
    fn lap(&mut self, phase: &'static str) {
        let now = Instant::now();
        metrics::histogram!("referral_flush_phase_duration_seconds", "phase" => phase)
            .record(now.duration_since(self.since).as_secs_f64());
        self.since = now;
    }
}

/// One partition's messages since its last flush.
#[derive(Debug)]
struct Pending {
    events: Vec<(i64, LogEvent)>,
    dead_letters: Vec<DeadLetter>,
    /// The offset after the last message read.
    end: i64,
    /// Messages read (events and dead letters).
    messages: usize,
    bytes: usize,
    since: Instant,
    /// When the batch's first command was read.
    command_since: Option<Instant>,
}

impl Pending {
    fn is_full(&self, settings: &WorkerSettings) -> bool {
        self.messages >= settings.batch_max_rows || self.bytes >= settings.batch_max_bytes
    }

    /// When the batch is due by time: `batch_max_wait` after its first message, sooner
    /// when it holds a command (someone waits for its verdict).
    fn due_at(&self, settings: &WorkerSettings) -> Instant {
        let by_age = self.since + settings.batch_max_wait;
        self.command_since
            .map_or(by_age, |at| by_age.min(at + settings.command_max_wait))
    }
}

/// Why a flush failed. The batch stays pending and is retried.
#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("announcing the flush failed: {0}")]
    Announce(String),
    #[error("injected fault: {0}")]
    Injected(&'static str),
}

pub struct Worker {
    store: Box<dyn StoreWriter>,
    announcer: Box<dyn Announcer>,
    handle: Handle,
    settings: WorkerSettings,
    pending: BTreeMap<PartitionKey, Pending>,
    owned: HashSet<PartitionKey>,
    /// Per owned partition, the read position since its assignment (see [`Positions`]).
    positions: Positions,
    /// The store did not give the assigned partitions' checkpoints: not asked before this.
    checkpoints_retry_at: Option<Instant>,
    /// The dedup window of each partition this worker has flushed since it was assigned,
    /// in step with the stored checkpoint. Dropped (and rebuilt from the store before the
    /// next flush) whenever it may not be: a failed flush, an assignment, a revocation.
    dedup: DedupWindows,
    fault: FaultPoint,
    /// Flushes that stored their checkpoint, and flushes attempted (for fault injection).
    flushes: u64,
    attempts: u64,
}

impl Worker {
    pub fn new(
        store: Box<dyn StoreWriter>,
        announcer: Box<dyn Announcer>,
        handle: Handle,
        settings: WorkerSettings,
        fault: FaultPoint,
    ) -> Self {
        Self {
            store,
            announcer,
            handle,
            pending: BTreeMap::new(),
            owned: HashSet::new(),
            positions: Positions::default(),
            checkpoints_retry_at: None,
            dedup: DedupWindows::new(settings.dedup_window_ms),
            settings,
            fault,
            flushes: 0,
            attempts: 0,
        }
    }

    /// Adds one message to its partition's batch; undecodable ones become dead letters.
    /// Returns where the source must read the partition again from, when records are
    /// missing before this one (see [`Positions`]); the source reports a seek carried out
    /// with [`Self::sought`].
    #[must_use]
    pub fn add(&mut self, record: &Record<'_>) -> Option<i64> {
        let key = (record.topic.to_owned(), record.partition);
        if !self.owned.contains(&key) {
            // Fetched before a revocation: the new owner reads it again.
            return None;
        }
        if self.settings.seek_gaps && !self.positions.has(&key) && !self.start_positions() {
            // Without its checkpoint, a gap at the start could not be told: read it again.
            return Some(record.offset);
        }
        match self
            .positions
            .read(&key, record.offset, Instant::now(), self.settings.seek_gaps)
        {
            ReadStep::Take => {}
            ReadStep::Repeat { next } => {
                metrics::counter!("referral_consumer_records_read_again_total").increment(1);
                tracing::warn!(
                    topic = record.topic,
                    partition = record.partition,
                    offset = record.offset,
                    next,
                    "a record came again from the log; dropped"
                );
                return None;
            }
            ReadStep::Behind { stored } => {
                if stored {
                    metrics::counter!("referral_events_skipped_total").increment(1);
                }
                return None;
            }
            ReadStep::SeekBack { next, from } => {
                metrics::counter!("referral_consumer_offset_gaps_total", "outcome" => "sought")
                    .increment(1);
                tracing::warn!(
                    topic = record.topic,
                    partition = record.partition,
                    offset = record.offset,
                    next,
                    from,
                    "records missing before this one; reading the partition again"
                );
                return Some(from);
            }
            ReadStep::AwaitSeek => return None,
            ReadStep::TakeOverGap { next } => {
                metrics::counter!("referral_consumer_offset_gaps_total", "outcome" => "accepted")
                    .increment(1);
                tracing::error!(
                    topic = record.topic,
                    partition = record.partition,
                    offset = record.offset,
                    next,
                    "offsets missing after reading again for a while; taken as the log's own"
                );
            }
        }
        let decoded = match record.payload {
            Some(bytes) => LogMessage::from_json(bytes),
            None => Err(MessageDecodeError::UnsupportedVersion(0)),
        };
        let pending = self.pending.entry(key).or_insert_with(|| Pending {
            events: Vec::new(),
            dead_letters: Vec::new(),
            end: record.offset,
            messages: 0,
            bytes: 0,
            since: Instant::now(),
            command_since: None,
        });
        pending.end = record.offset + 1;
        pending.messages += 1;
        pending.bytes += record.payload.map_or(0, <[u8]>::len);
        match decoded {
            Ok(decoded) => {
                if pending.command_since.is_none() && decoded.event.command_id().is_some() {
                    pending.command_since = Some(Instant::now());
                }
                pending.events.push((record.offset, decoded.event));
            }
            Err(error) => {
                let (label, reason) = match (&error, record.payload) {
                    (_, None) => ("empty", "the message has no payload".to_owned()),
                    (MessageDecodeError::Malformed(_), _) => ("malformed", error.to_string()),
                    (MessageDecodeError::UnsupportedVersion(_), _) => {
                        ("unsupported_version", error.to_string())
                    }
                };
                pending.dead_letters.push(DeadLetter {
                    offset: record.offset,
                    key: record.key.map(<[u8]>::to_vec),
                    payload: record.payload.map(<[u8]>::to_vec),
                    reason,
                    label,
                });
            }
        }
        None
    }

    /// The source carried out the seek back that [`Self::add`] asked for.
    pub fn sought(&mut self, key: &PartitionKey) {
        self.positions.sought(key);
    }

    /// The source resumed fetching after a pause (see [`Positions::resumed`]).
    pub fn resumed_fetching(&mut self) {
        self.positions.resumed(Instant::now());
    }

    /// Starts every owned partition without a read position at its stored checkpoint (one
    /// store read), so that records missing at the very start are read again too (a
    /// partition without one starts at 0). False when the store does not answer (then not
    /// asked again for [`CHECKPOINTS_RETRY`]).
    fn start_positions(&mut self) -> bool {
        if self
            .checkpoints_retry_at
            .is_some_and(|at| Instant::now() < at)
        {
            return false;
        }
        let keys: Vec<PartitionKey> = self
            .owned
            .iter()
            .filter(|key| !self.positions.has(key))
            .cloned()
            .collect();
        let handle = self.handle.clone();
        match handle.block_on(self.store.checkpoints(&keys)) {
            Ok(checkpoints) => {
                for key in keys {
                    let next = checkpoint_at(&checkpoints, &key.0, key.1);
                    self.positions.start_at_checkpoint(key, next);
                }
                self.checkpoints_retry_at = None;
                true
            }
            Err(error) => {
                tracing::warn!(%error, "cannot read the checkpoints of assigned partitions; their records are read again later");
                self.checkpoints_retry_at = Some(Instant::now() + CHECKPOINTS_RETRY);
                false
            }
        }
    }

    /// Whether some partition's batch is full or old enough.
    pub fn due(&self) -> bool {
        let now = Instant::now();
        self.pending
            .values()
            .any(|pending| pending.is_full(&self.settings) || pending.due_at(&self.settings) <= now)
    }

    /// When the first batch becomes due by time.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending
            .values()
            .map(|pending| pending.due_at(&self.settings))
            .min()
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Messages waiting in all batches.
    pub fn pending_rows(&self) -> usize {
        self.pending.values().map(|pending| pending.messages).sum()
    }

    pub fn pending_partitions(&self) -> Vec<PartitionKey> {
        self.pending.keys().cloned().collect()
    }

    /// Partitions assigned to this consumer: their checkpoints are read afresh.
    pub fn assigned(&mut self, partitions: Vec<PartitionKey>) {
        for key in &partitions {
            self.positions.forget(key);
        }
        self.store.forget_checkpoints(&partitions);
        self.forget_windows(&partitions);
        self.owned.extend(partitions);
    }

    /// Partitions being revoked. Their batches are flushed (when the assignment was not
    /// lost) or dropped, before this returns, that is before the revocation completes.
    /// Dropping is safe: nothing of theirs past the checkpoint is stored anywhere. Returns
    /// the checkpoints stored by that flush.
    pub fn revoked(
        &mut self,
        partitions: Vec<PartitionKey>,
        lost: bool,
    ) -> Vec<(PartitionKey, i64)> {
        let with_batches: Vec<PartitionKey> = partitions
            .iter()
            .filter(|key| self.pending.contains_key(*key))
            .cloned()
            .collect();
        let mut stored = Vec::new();
        if !with_batches.is_empty() {
            if lost {
                tracing::warn!(partitions = ?with_batches, "assignment lost: pending batches dropped");
            } else {
                match self.flush(Some(&with_batches)) {
                    Ok(checkpoints) => stored = checkpoints,
                    Err(error) => {
                        tracing::warn!(%error, partitions = ?with_batches, "revoked partitions' batches dropped: flush failed");
                    }
                }
            }
        }
        for key in &partitions {
            self.pending.remove(key);
            self.owned.remove(key);
            self.positions.forget(key);
            // Not ours any more: its new owner reports its lag. A frozen value here would
            // keep alerting (or hide real lag) long after the move.
            metrics::gauge!(
                "referral_consumer_lag",
                "topic" => key.0.clone(),
                "partition" => key.1.to_string()
            )
            .set(0.0);
        }
        self.store.forget_checkpoints(&partitions);
        self.forget_windows(&partitions);
        stored
    }

    fn forget_windows(&mut self, partitions: &[PartitionKey]) {
        for key in partitions {
            self.dedup.partitions.remove(key);
        }
        self.report_window_size();
    }

    fn report_window_size(&self) {
        let visitors: usize = self.dedup.partitions.values().map(DedupWindow::len).sum();
        metrics::gauge!("referral_dedup_window_visitors").set(visitors as f64);
    }

    /// Plans and writes the pending batches (all, or those of `only`) and returns the
    /// checkpoints now stored, for the source to act on (a Kafka commit, log segments to
    /// delete). On error the batches stay pending and their cached checkpoints are forgotten.
    pub fn flush(
        &mut self,
        only: Option<&[PartitionKey]>,
    ) -> Result<Vec<(PartitionKey, i64)>, FlushError> {
        let keys: Vec<PartitionKey> = self
            .pending
            .keys()
            .filter(|key| only.is_none_or(|only| only.contains(key)))
            .cloned()
            .collect();
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let started = Instant::now();
        let handle = self.handle.clone();
        let plan = match handle.block_on(self.write(&keys)) {
            Ok(plan) => plan,
            Err(error) => {
                self.store.abandon();
                self.store.forget_checkpoints(&keys);
                // The windows advanced past a flush that is not stored.
                self.forget_windows(&keys);
                metrics::counter!("referral_flush_failures_total").increment(1);
                return Err(error);
            }
        };
        self.flushes += 1;
        if self.fault.crash_after_checkpoint(self.flushes) {
            super::fault::kill_self("after the commit point, before the source's commit");
        }
        self.announcer.after_commit(&plan);
        let mut stored = Vec::with_capacity(keys.len());
        let mut rows = 0;
        let mut bytes = 0;
        for key in keys {
            if let Some(pending) = self.pending.remove(&key) {
                rows += pending.messages;
                bytes += pending.bytes;
                stored.push((key, pending.end));
            }
        }
        metrics::histogram!("referral_batch_rows").record(rows as f64);
        metrics::histogram!("referral_batch_bytes").record(bytes as f64);
        metrics::histogram!("referral_flush_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("referral_events_applied_total")
            .increment(rows.saturating_sub(plan.skipped) as u64);
        if plan.skipped > 0 {
            metrics::counter!("referral_events_skipped_total").increment(plan.skipped as u64);
        }
        for outcome in &plan.outcomes {
            metrics::counter!("referral_commands_total", "outcome" => *outcome).increment(1);
        }
        let verdicts = plan.click_verdicts;
        for (verdict, count) in [
            ("counted", verdicts.counted),
            ("duplicate", verdicts.duplicate),
            ("bot", verdicts.bot),
        ] {
            if count > 0 {
                metrics::counter!("referral_clicks_recorded_total", "verdict" => verdict)
                    .increment(count);
            }
        }
        for window in self.dedup.partitions.values_mut() {
            window.trim_if_grown();
        }
        self.report_window_size();
        Ok(stored)
    }

    async fn write(&mut self, keys: &[PartitionKey]) -> Result<Plan, FlushError> {
        self.attempts += 1;
        // The events move into the batches (no copy) and come back if the flush fails.
        let batches: Vec<PartitionBatch> = keys
            .iter()
            .filter_map(|key| {
                self.pending.get_mut(key).map(|pending| PartitionBatch {
                    topic: key.0.clone(),
                    partition: key.1,
                    events: std::mem::take(&mut pending.events),
                    end: pending.end,
                })
            })
            .collect();
        let result = self.write_batches(keys, &batches).await;
        if result.is_err() {
            for batch in batches {
                if let Some(pending) = self.pending.get_mut(&(batch.topic, batch.partition)) {
                    pending.events = batch.events;
                }
            }
        }
        result
    }

    async fn write_batches(
        &mut self,
        keys: &[PartitionKey],
        batches: &[PartitionBatch],
    ) -> Result<Plan, FlushError> {
        let mut phases = PhaseTimer::start();
        let checkpoints = self.store.checkpoints(keys).await?;
        let checkpoint_of =
            |batch: &PartitionBatch| checkpoint_at(&checkpoints, &batch.topic, batch.partition);
        let references = References::of(batches.iter().flat_map(|batch| {
            let checkpoint = checkpoint_of(batch);
            batch
                .events
                .iter()
                .filter(move |(offset, _)| *offset >= checkpoint)
                .map(|(_, event)| event)
        }));
        let known = self.store.load(&references).await?;
        self.load_windows(keys, &checkpoints).await?;
        phases.lap("read");
        let plan = plan::plan(
            batches,
            &checkpoints,
            known,
            self.settings.window_ms,
            &mut self.dedup,
            Timestamp::now(),
        );
        phases.lap("plan");
        self.store.write_state(&plan).await?;
        phases.lap("state");
        let dead_letters = self.dead_letters_at_or_past(keys, &checkpoints);
        self.announcer
            .before_commit(&plan, &dead_letters)
            .await
            .map_err(FlushError::Announce)?;
        phases.lap("announce");
        if self.fault.crash_before_checkpoint(self.attempts) {
            super::fault::kill_self("after the state writes, before the commit point");
        }
        let token = batches
            .iter()
            .map(|batch| {
                format!(
                    "{}:{}:{}-{}",
                    batch.topic,
                    batch.partition,
                    checkpoint_of(batch),
                    batch.end
                )
            })
            .collect::<Vec<_>>()
            .join(",");
        self.store.commit(&plan, &token).await?;
        phases.lap("commit");
        if self.fault.lose_totals_ack(self.attempts) {
            return Err(FlushError::Injected("commit acknowledged, ack lost"));
        }
        Ok(plan)
    }

    /// Rebuilds the dedup window of each partition in `keys` that has none, from the
    /// counted clicks stored below its checkpoint: the window as the flush that stored that
    /// checkpoint left it, so every verdict is the same as without the restart.
    async fn load_windows(
        &mut self,
        keys: &[PartitionKey],
        checkpoints: &HashMap<PartitionKey, i64>,
    ) -> Result<(), StoreError> {
        let window_ms = self.settings.dedup_window_ms;
        for key in keys {
            if self.dedup.partitions.contains_key(key) {
                continue;
            }
            let mut window = DedupWindow::new(window_ms);
            if window_ms > 0 {
                let started = Instant::now();
                let checkpoint = checkpoint_at(checkpoints, &key.0, key.1);
                let clicks = self
                    .store
                    .counted_clicks(key, checkpoint, window_ms)
                    .await?;
                for click in &clicks {
                    let visitor = VisitorKey::of(
                        &click.mentor_id,
                        &click.code,
                        &click.ip_address,
                        click.user_agent.as_deref(),
                    );
                    let visit = CountedVisit {
                        attribution_id: click.attribution_id.clone(),
                        received_at: click.received_at,
                    };
                    window.remember(visitor, visit);
                }
                window.trim_if_grown();
                tracing::info!(
                    topic = %key.0,
                    partition = key.1,
                    checkpoint,
                    clicks = clicks.len(),
                    visitors = window.len(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "dedup window rebuilt"
                );
            }
            self.dedup.partitions.insert(key.clone(), window);
        }
        Ok(())
    }

    /// The undecodable messages at or past their partition's checkpoint (those below were
    /// moved aside by an earlier flush).
    fn dead_letters_at_or_past(
        &self,
        keys: &[PartitionKey],
        checkpoints: &HashMap<PartitionKey, i64>,
    ) -> Vec<(PartitionKey, DeadLetter)> {
        let mut letters = Vec::new();
        for key in keys {
            let Some(pending) = self.pending.get(key) else {
                continue;
            };
            let checkpoint = checkpoint_at(checkpoints, &key.0, key.1);
            letters.extend(
                pending
                    .dead_letters
                    .iter()
                    .filter(|letter| letter.offset >= checkpoint)
                    .map(|letter| (key.clone(), letter.clone())),
            );
        }
        letters
    }

    /// Makes every flush stored so far durable in the store (see
    /// [`StoreWriter::make_durable`]).
    pub fn make_store_durable(&mut self) -> Result<(), StoreError> {
        let handle = self.handle.clone();
        handle.block_on(self.store.make_durable())
    }

    /// Whether the store answers (for readiness while flushes fail).
    pub fn ping(&mut self) -> bool {
        let handle = self.handle.clone();
        handle.block_on(self.store.ping())
    }
}

fn checkpoint_at(checkpoints: &HashMap<PartitionKey, i64>, topic: &str, partition: i32) -> i64 {
    checkpoints
        .get(&(topic.to_owned(), partition))
        .copied()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> WorkerSettings {
        WorkerSettings {
            batch_max_rows: 100,
            batch_max_bytes: 1 << 20,
            batch_max_wait: Duration::from_millis(250),
            command_max_wait: Duration::from_millis(10),
            seek_gaps: true,
            window_ms: 0,
            dedup_window_ms: 0,
        }
    }

    fn pending(since: Instant, command_since: Option<Instant>, messages: usize) -> Pending {
        Pending {
            events: Vec::new(),
            dead_letters: Vec::new(),
            end: 0,
            messages,
            bytes: 0,
            since,
            command_since,
        }
    }

    #[test]
    fn a_batch_of_clicks_waits_the_batch_wait_and_a_command_only_the_command_wait() {
        let settings = settings();
        let start = Instant::now();
        let clicks = pending(start, None, 5);
        assert_eq!(clicks.due_at(&settings), start + settings.batch_max_wait);
        let later = start + Duration::from_millis(100);
        let with_command = pending(start, Some(later), 6);
        assert_eq!(
            with_command.due_at(&settings),
            later + settings.command_max_wait
        );
        // A command read just before the batch is due by age does not delay it.
        let late = start + Duration::from_millis(245);
        let late_command = pending(start, Some(late), 6);
        assert_eq!(
            late_command.due_at(&settings),
            start + settings.batch_max_wait
        );
        assert!(!clicks.is_full(&settings));
        assert!(pending(start, None, 100).is_full(&settings));
    }
}
