//! Pending batches per partition, and the flush that plans and writes them.
//!
//! Owned by the consumer thread behind a mutex that the thread never holds while polling, so
//! that a Kafka rebalance callback (which runs inside the poll) can flush or drop a revoked
//! partition's batch before the revocation completes. Knows nothing of where its records
//! come from ([`super::LogSource`]) or which store it writes ([`StoreWriter`]).
//!
//! A flush may overlap the reading of the next batch (`overlap_flushes`): its batches are
//! taken out of `pending` and written on a thread of its own by the [`Writer`] (the store,
//! the announcer and the dedup windows), while records read meanwhile start new batches.
//! At most one flush is in flight, and everything that needs the writer (the next flush, a
//! rebalance, a checkpoint read) first waits for it to end ([`Worker::settle`]): the next
//! flush is planned only on what the one before it stored. A failed flush puts its batches
//! back in front of what was read since.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
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
    /// A flush runs on a thread of its own while the consumer reads the next batch
    /// (Kafka + ClickHouse: the inserts and the reading take turns otherwise). The embedded
    /// consumer keeps its flushes on its own thread, whose CPU priority its pacing sets.
    pub overlap_flushes: bool,
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

    /// This batch (of a flush that failed) followed by `later`, read while it was in flight.
    fn followed_by(mut self, later: Option<Pending>) -> Pending {
        if let Some(later) = later {
            self.events.extend(later.events);
            self.dead_letters.extend(later.dead_letters);
            self.end = later.end;
            self.messages += later.messages;
            self.bytes += later.bytes;
            self.command_since = self.command_since.or(later.command_since);
        }
        self
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
    #[error("the flush thread got no batches; its partitions are read again")]
    Lost,
}

/// What a flush writes with. Shared with the flush's thread, which holds it for the time
/// of one flush.
struct Writer {
    store: Box<dyn StoreWriter>,
    announcer: Box<dyn Announcer>,
    handle: Handle,
    settings: WorkerSettings,
    /// The dedup window of each partition this worker has flushed since it was assigned,
    /// in step with the stored checkpoint. Dropped (and rebuilt from the store before the
    /// next flush) whenever it may not be: a failed flush, an assignment, a revocation.
    dedup: DedupWindows,
    fault: FaultPoint,
    /// Flushes that stored their checkpoint, and flushes attempted (for fault injection).
    flushes: u64,
    attempts: u64,
}

/// One flush's batches, taken out of `pending`.
struct FlushJob {
    keys: Vec<PartitionKey>,
    batches: Vec<PartitionBatch>,
    dead_letters: Vec<(PartitionKey, DeadLetter)>,
}

/// What a flush's thread hands back: the plan stored, or the error and the batches.
type JobResult = Result<Plan, (FlushError, Vec<PartitionBatch>)>;

/// A flush on its own thread, and the batches it took (their events are in the job).
struct InFlight {
    thread: JoinHandle<Option<JobResult>>,
    taken: Vec<(PartitionKey, Pending)>,
}

/// The checkpoints a flush stored, or why it failed.
pub type FlushOutcome = Result<Vec<(PartitionKey, i64)>, FlushError>;

pub struct Worker {
    writer: Arc<Mutex<Writer>>,
    handle: Handle,
    settings: WorkerSettings,
    pending: BTreeMap<PartitionKey, Pending>,
    owned: HashSet<PartitionKey>,
    /// Per owned partition, the read position since its assignment (see [`Positions`]).
    positions: Positions,
    /// The store did not give the assigned partitions' checkpoints: not asked before this.
    checkpoints_retry_at: Option<Instant>,
    in_flight: Option<InFlight>,
    /// The outcome of a flush that ended in the background, for [`Self::take_finished`].
    finished: Option<FlushOutcome>,
}

fn lock_writer(writer: &Mutex<Writer>) -> MutexGuard<'_, Writer> {
    writer.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Worker {
    pub fn new(
        store: Box<dyn StoreWriter>,
        announcer: Box<dyn Announcer>,
        handle: Handle,
        settings: WorkerSettings,
        fault: FaultPoint,
    ) -> Self {
        let writer = Writer {
            store,
            announcer,
            handle: handle.clone(),
            dedup: DedupWindows::new(settings.dedup_window_ms),
            settings: settings.clone(),
            fault,
            flushes: 0,
            attempts: 0,
        };
        // A flush in flight is rebuilt, in the unforeseen case that its thread never got
        // it, by reading its partitions again (`settle`): only a source that seeks back
        // over a gap can. The file log's consumer never overlaps its flushes.
        let settings = WorkerSettings {
            overlap_flushes: settings.overlap_flushes && settings.seek_gaps,
            ..settings
        };
        Self {
            writer: Arc::new(Mutex::new(writer)),
            handle,
            pending: BTreeMap::new(),
            owned: HashSet::new(),
            positions: Positions::default(),
            checkpoints_retry_at: None,
            settings,
            in_flight: None,
            finished: None,
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
        self.settle();
        let handle = self.handle.clone();
        let checkpoints = handle.block_on(lock_writer(&self.writer).store.checkpoints(&keys));
        match checkpoints {
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
        self.settle();
        for key in &partitions {
            self.positions.forget(key);
        }
        lock_writer(&self.writer).forget(&partitions);
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
        // A flush in flight ends first: one that failed puts its batches back, to be
        // flushed or dropped with the rest below; the checkpoints one stored for these
        // partitions go out with this revocation's (before a later flush's, for Kafka's
        // commit to move forward only).
        self.settle();
        let mut earlier = Vec::new();
        if let Some(Ok(finished)) = &mut self.finished
            && !lost
        {
            let (revoked, kept): (Vec<_>, Vec<_>) = finished
                .drain(..)
                .partition(|(key, _)| partitions.contains(key));
            *finished = kept;
            earlier = revoked;
        }
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
        earlier.retain(|(key, _)| stored.iter().all(|(later, _)| later != key));
        earlier.extend(stored);
        let stored = earlier;
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
        lock_writer(&self.writer).forget(&partitions);
        stored
    }

    /// Whether a flush runs on its own thread now.
    pub fn flush_in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Whether some partition's batch is full: the reading waits for the flush in flight.
    pub fn batch_full(&self) -> bool {
        self.pending
            .values()
            .any(|pending| pending.is_full(&self.settings))
    }

    /// Whether flushes overlap the reading (see [`WorkerSettings::overlap_flushes`]).
    pub fn overlaps_flushes(&self) -> bool {
        self.settings.overlap_flushes
    }

    /// Plans and writes the pending batches (all, or those of `only`) on this thread and
    /// returns the checkpoints now stored, for the source to act on (a Kafka commit, log
    /// segments to delete). A flush in flight ends first (its outcome is kept for
    /// [`Self::take_finished`]). On error the batches stay pending and their cached
    /// checkpoints are forgotten.
    pub fn flush(&mut self, only: Option<&[PartitionKey]>) -> FlushOutcome {
        self.settle();
        let Some((job, taken)) = self.take_job(only) else {
            return Ok(Vec::new());
        };
        let result = lock_writer(&self.writer).run(job);
        self.complete(taken, result)
    }

    /// Starts a flush of every pending batch on a thread of its own and returns at once;
    /// its outcome comes from [`Self::take_finished`]. Runs it here when no thread can be
    /// started. False when nothing was pending (no outcome will come).
    pub fn start_flush(&mut self) -> bool {
        self.settle();
        let Some((job, taken)) = self.take_job(None) else {
            return false;
        };
        // The job goes to the thread once it runs: if it cannot start, the job is still
        // here (its events are the only copy past the log's read position).
        let (hand_over, receive) = mpsc::sync_channel::<FlushJob>(1);
        let writer = self.writer.clone();
        let spawned = std::thread::Builder::new()
            .name("referral-flush".into())
            .spawn(move || {
                let job = receive.recv().ok()?;
                Some(lock_writer(&writer).run(job))
            });
        let job = match spawned {
            Ok(thread) => match hand_over.send(job) {
                Ok(()) => {
                    self.in_flight = Some(InFlight { thread, taken });
                    return true;
                }
                Err(mpsc::SendError(job)) => job,
            },
            Err(error) => {
                tracing::warn!(%error, "cannot start a flush thread; flushing on the consumer's");
                job
            }
        };
        let result = lock_writer(&self.writer).run(job);
        let outcome = self.complete(taken, result);
        self.keep_finished(outcome);
        true
    }

    /// The outcome of a flush that ended in the background since the last call, if any
    /// (one still running is not waited for). Checkpoints of partitions revoked since are
    /// left out: their new owner reads from the store's checkpoint, and a late commit of
    /// ours would only move Kafka's hint back.
    pub fn take_finished(&mut self) -> Option<FlushOutcome> {
        if self
            .in_flight
            .as_ref()
            .is_some_and(|in_flight| in_flight.thread.is_finished())
        {
            self.settle();
        }
        let mut outcome = self.finished.take()?;
        if let Ok(stored) = &mut outcome {
            stored.retain(|(key, _)| self.owned.contains(key));
        }
        Some(outcome)
    }

    /// Waits for the flush in flight, if any, and keeps its outcome for
    /// [`Self::take_finished`]. A panic on its thread goes on here, as it would have on
    /// this thread.
    pub fn settle(&mut self) {
        let Some(in_flight) = self.in_flight.take() else {
            return;
        };
        let result = match in_flight.thread.join() {
            Ok(Some(result)) => result,
            Ok(None) => {
                // The job never reached the thread (not possible once it was handed over,
                // but its events would be the only copy): its partitions are read again
                // from their stored checkpoints, as after an assignment.
                let keys: Vec<PartitionKey> =
                    in_flight.taken.into_iter().map(|(key, _)| key).collect();
                for key in &keys {
                    self.pending.remove(key);
                    self.positions.forget(key);
                }
                lock_writer(&self.writer).forget(&keys);
                self.keep_finished(Err(FlushError::Lost));
                return;
            }
            Err(panic) => std::panic::resume_unwind(panic),
        };
        let outcome = self.complete(in_flight.taken, result);
        self.keep_finished(outcome);
    }

    fn keep_finished(&mut self, outcome: FlushOutcome) {
        self.finished = Some(match (self.finished.take(), outcome) {
            (Some(Ok(mut earlier)), Ok(stored)) => {
                earlier.extend(stored);
                Ok(earlier)
            }
            (Some(Err(error)), _) | (_, Err(error)) => Err(error),
            (None, outcome) => outcome,
        });
    }

    /// Takes the batches of `only` (or all) out of `pending`; their events move into the
    /// job (no copy) and come back if the flush fails.
    fn take_job(
        &mut self,
        only: Option<&[PartitionKey]>,
    ) -> Option<(FlushJob, Vec<(PartitionKey, Pending)>)> {
        let keys: Vec<PartitionKey> = self
            .pending
            .keys()
            .filter(|key| only.is_none_or(|only| only.contains(key)))
            .cloned()
            .collect();
        if keys.is_empty() {
            return None;
        }
        let mut taken = Vec::with_capacity(keys.len());
        let mut batches = Vec::with_capacity(keys.len());
        let mut dead_letters = Vec::new();
        for key in &keys {
            let Some(mut pending) = self.pending.remove(key) else {
                continue;
            };
            batches.push(PartitionBatch {
                topic: key.0.clone(),
                partition: key.1,
                events: std::mem::take(&mut pending.events),
                end: pending.end,
            });
            dead_letters.extend(
                pending
                    .dead_letters
                    .iter()
                    .map(|letter| (key.clone(), letter.clone())),
            );
            taken.push((key.clone(), pending));
        }
        let job = FlushJob {
            keys,
            batches,
            dead_letters,
        };
        Some((job, taken))
    }

    /// Ends a flush: the checkpoints it stored, or its batches back in front of what was
    /// read since.
    fn complete(&mut self, taken: Vec<(PartitionKey, Pending)>, result: JobResult) -> FlushOutcome {
        let plan = match result {
            Ok(plan) => plan,
            Err((error, batches)) => {
                let mut events: HashMap<PartitionKey, Vec<(i64, LogEvent)>> = batches
                    .into_iter()
                    .map(|batch| ((batch.topic, batch.partition), batch.events))
                    .collect();
                for (key, mut pending) in taken {
                    pending.events = events.remove(&key).unwrap_or_default();
                    let later = self.pending.remove(&key);
                    self.pending.insert(key, pending.followed_by(later));
                }
                return Err(error);
            }
        };
        let mut stored = Vec::with_capacity(taken.len());
        let mut rows = 0;
        let mut bytes = 0;
        for (key, pending) in taken {
            rows += pending.messages;
            bytes += pending.bytes;
            stored.push((key, pending.end));
        }
        metrics::histogram!("referral_batch_rows").record(rows as f64);
        metrics::histogram!("referral_batch_bytes").record(bytes as f64);
        metrics::counter!("referral_events_applied_total")
            .increment(rows.saturating_sub(plan.skipped) as u64);
        Ok(stored)
    }

    /// Makes every flush stored so far durable in the store (see
    /// [`StoreWriter::make_durable`]).
    pub fn make_store_durable(&mut self) -> Result<(), StoreError> {
        self.settle();
        let handle = self.handle.clone();
        handle.block_on(lock_writer(&self.writer).store.make_durable())
    }

    /// Whether the store answers (for readiness while flushes fail).
    pub fn ping(&mut self) -> bool {
        self.settle();
        let handle = self.handle.clone();
        handle.block_on(lock_writer(&self.writer).store.ping())
    }
}

impl Writer {
    /// Plans and writes one flush. On error the cached checkpoints and the dedup windows
    /// of its partitions are forgotten (read again from the store by the next flush) and
    /// the batches come back.
    fn run(&mut self, job: FlushJob) -> JobResult {
        let started = Instant::now();
        let handle = self.handle.clone();
        let plan = match handle.block_on(self.write_batches(&job)) {
            Ok(plan) => plan,
            Err(error) => {
                self.store.abandon();
                self.forget(&job.keys);
                metrics::counter!("referral_flush_failures_total").increment(1);
                return Err((error, job.batches));
            }
        };
        metrics::histogram!("referral_flush_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        self.flushes += 1;
        if self.fault.crash_after_checkpoint(self.flushes) {
            super::fault::kill_self("after the commit point, before the source's commit");
        }
        self.announcer.after_commit(&plan);
        if plan.skipped > 0 {
            metrics::counter!("referral_events_skipped_total").increment(plan.skipped as u64);
        }
        for outcome in &plan.outcomes {
            metrics::counter!("referral_commands_total", "outcome" => *outcome).increment(1);
        }
        let verdicts = &plan.click_verdicts;
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
        Ok(plan)
    }

    /// Partitions whose stored state may have moved without this writer: their cached
    /// checkpoints and dedup windows are read again before their next flush.
    fn forget(&mut self, partitions: &[PartitionKey]) {
        self.store.forget_checkpoints(partitions);
        for key in partitions {
            self.dedup.partitions.remove(key);
        }
        self.report_window_size();
    }

    fn report_window_size(&self) {
        let visitors: usize = self.dedup.partitions.values().map(DedupWindow::len).sum();
        metrics::gauge!("referral_dedup_window_visitors").set(visitors as f64);
    }

    async fn write_batches(&mut self, job: &FlushJob) -> Result<Plan, FlushError> {
        self.attempts += 1;
        let (keys, batches) = (&job.keys, &job.batches);
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
        // The undecodable messages at or past their partition's checkpoint (those below
        // were moved aside by an earlier flush).
        let dead_letters: Vec<(PartitionKey, DeadLetter)> = job
            .dead_letters
            .iter()
            .filter(|(key, letter)| letter.offset >= checkpoint_at(&checkpoints, &key.0, key.1))
            .cloned()
            .collect();
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
    use std::sync::Condvar;

    use async_trait::async_trait;
    use referral_schemas::messages::ClickEvent;

    use crate::plan::Known;
    use crate::store::CountedClick;

    /// A store in memory whose commits wait at a gate (a flush stays in flight until the
    /// test opens it) and whose state writes fail on demand.
    #[derive(Clone, Default)]
    struct GatedStore {
        shared: Arc<GatedShared>,
    }

    #[derive(Default)]
    struct GatedShared {
        open: Mutex<bool>,
        opened: Condvar,
        fail_writes: Mutex<bool>,
        checkpoint: Mutex<i64>,
        /// The source offsets of each committed flush's attribution rows.
        committed: Mutex<Vec<Vec<i64>>>,
    }

    impl GatedStore {
        fn open(&self, open: bool) {
            *self.shared.open.lock().unwrap() = open;
            self.shared.opened.notify_all();
        }

        fn fail_writes(&self, fail: bool) {
            *self.shared.fail_writes.lock().unwrap() = fail;
        }

        fn committed(&self) -> Vec<Vec<i64>> {
            self.shared.committed.lock().unwrap().clone()
        }
    }

    #[async_trait]
    impl StoreWriter for GatedStore {
        async fn checkpoints(
            &mut self,
            partitions: &[PartitionKey],
        ) -> Result<HashMap<PartitionKey, i64>, StoreError> {
            let checkpoint = *self.shared.checkpoint.lock().unwrap();
            Ok(partitions
                .iter()
                .map(|key| (key.clone(), checkpoint))
                .collect())
        }

        fn forget_checkpoints(&mut self, _: &[PartitionKey]) {}

        async fn load(&mut self, _: &References) -> Result<Known, StoreError> {
            Ok(Known::default())
        }

        async fn counted_clicks(
            &mut self,
            _: &PartitionKey,
            _: i64,
            _: i64,
        ) -> Result<Vec<CountedClick>, StoreError> {
            Ok(Vec::new())
        }

        async fn write_state(&mut self, _: &Plan) -> Result<(), StoreError> {
            if *self.shared.fail_writes.lock().unwrap() {
                return Err(StoreError::Corrupt("injected".into()));
            }
            Ok(())
        }

        async fn commit(&mut self, plan: &Plan, _: &str) -> Result<(), StoreError> {
            let mut open = self.shared.open.lock().unwrap();
            while !*open {
                open = self.shared.opened.wait(open).unwrap();
            }
            drop(open);
            if let Some(moved) = plan.checkpoints.last() {
                *self.shared.checkpoint.lock().unwrap() = moved.to;
            }
            let offsets = plan
                .attributions
                .iter()
                .map(|row| row.source_offset)
                .collect();
            self.shared.committed.lock().unwrap().push(offsets);
            Ok(())
        }

        fn abandon(&mut self) {}

        async fn ping(&mut self) -> bool {
            true
        }
    }

    struct Silent;

    #[async_trait]
    impl Announcer for Silent {
        async fn before_commit(
            &mut self,
            _: &Plan,
            _: &[(PartitionKey, DeadLetter)],
        ) -> Result<(), String> {
            Ok(())
        }

        fn after_commit(&mut self, _: &Plan) {}
    }

    const TOPIC: &str = "referral-events";

    fn overlapping_worker(runtime: &tokio::runtime::Runtime, store: &GatedStore) -> Worker {
        let settings = WorkerSettings {
            overlap_flushes: true,
            ..settings()
        };
        let mut worker = Worker::new(
            Box::new(store.clone()),
            Box::new(Silent),
            runtime.handle().clone(),
            settings,
            FaultPoint::default(),
        );
        worker.assigned(vec![(TOPIC.to_owned(), 0)]);
        assert!(worker.overlaps_flushes());
        worker
    }

    fn add_clicks(worker: &mut Worker, offsets: std::ops::Range<i64>) {
        for offset in offsets {
            let click = ClickEvent {
                attribution_id: referral_schemas::id::new_attribution_id(),
                code: "JAN-VERV-8F3A".into(),
                mentor_id: "usr_jan".into(),
                ip_address: format!("198.51.100.{offset}"),
                user_agent: Some("Mozilla/5.0 (X11; Linux x86_64)".into()),
                referrer_url: None,
                occurred_at: Timestamp::now(),
                received_at: Timestamp::now(),
            };
            let payload = LogMessage::new(LogEvent::Click(click)).to_json().unwrap();
            let record = Record {
                topic: TOPIC,
                partition: 0,
                offset,
                key: None,
                payload: Some(&payload),
            };
            assert_eq!(worker.add(&record), None);
        }
    }

    fn wait_finished(worker: &mut Worker) -> FlushOutcome {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(outcome) = worker.take_finished() {
                return outcome;
            }
            assert!(Instant::now() < deadline, "the flush did not end");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn records_read_while_a_flush_is_in_flight_wait_for_the_next_flush() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let store = GatedStore::default();
        let mut worker = overlapping_worker(&runtime, &store);
        add_clicks(&mut worker, 0..3);
        worker.start_flush();
        assert!(worker.flush_in_flight());
        // Read on while the flush waits at the store.
        add_clicks(&mut worker, 3..5);
        assert_eq!(worker.pending_rows(), 2);
        assert!(worker.take_finished().is_none());
        store.open(true);
        let key = (TOPIC.to_owned(), 0);
        assert_eq!(wait_finished(&mut worker).unwrap(), vec![(key.clone(), 3)]);
        assert!(!worker.flush_in_flight());
        assert_eq!(worker.pending_rows(), 2);
        assert_eq!(worker.flush(None).unwrap(), vec![(key, 5)]);
        assert_eq!(store.committed(), vec![vec![0, 1, 2], vec![3, 4]]);
    }

    #[test]
    fn a_failed_flush_puts_its_batch_back_before_what_was_read_since() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let store = GatedStore::default();
        let mut worker = overlapping_worker(&runtime, &store);
        store.fail_writes(true);
        add_clicks(&mut worker, 0..3);
        worker.start_flush();
        add_clicks(&mut worker, 3..5);
        store.open(true);
        assert!(wait_finished(&mut worker).is_err());
        assert_eq!(worker.pending_rows(), 5);
        store.fail_writes(false);
        let key = (TOPIC.to_owned(), 0);
        assert_eq!(worker.flush(None).unwrap(), vec![(key, 5)]);
        assert_eq!(store.committed(), vec![vec![0, 1, 2, 3, 4]]);
    }

    #[test]
    fn a_revocation_waits_for_the_flush_in_flight() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let store = GatedStore::default();
        let mut worker = overlapping_worker(&runtime, &store);
        add_clicks(&mut worker, 0..3);
        worker.start_flush();
        add_clicks(&mut worker, 3..4);
        let opener = {
            let store = store.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                store.open(true);
            })
        };
        let key = (TOPIC.to_owned(), 0);
        // The revocation flushes what was read since, after the flush in flight.
        assert_eq!(worker.revoked(vec![key.clone()], false), vec![(key, 4)]);
        // The flush in flight stored 3 first: its checkpoint went out with the revocation
        // (superseded by 4), not later.
        assert_eq!(worker.take_finished().unwrap().unwrap(), vec![]);
        assert_eq!(store.committed(), vec![vec![0, 1, 2], vec![3]]);
        opener.join().unwrap();
    }

    fn settings() -> WorkerSettings {
        WorkerSettings {
            batch_max_rows: 100,
            batch_max_bytes: 1 << 20,
            batch_max_wait: Duration::from_millis(250),
            command_max_wait: Duration::from_millis(10),
            seek_gaps: true,
            window_ms: 0,
            dedup_window_ms: 0,
            overlap_flushes: false,
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
