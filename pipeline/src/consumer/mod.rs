//! The consumer: the single writer of state, in both modes. One loop reads a log, batches
//! per partition, plans each flush with the one planner, writes it to the store with its
//! checkpoint, and tells the world what changed.
//!
//! ```text
//!   LogSource (file log | Kafka) ──records──▶ Worker (batches) ──plan──▶ StoreWriter
//!                                                   │                  (SQLite | ClickHouse)
//!                                                   └──▶ Announcer (codes, verdicts, dead letters)
//! ```
//!
//! * [`worker`]: pending batches and the flush (plan, write, commit point), on its own
//!   thread while the next batch is read (Kafka).
//! * [`position`]: each partition's read position: repeats dropped, gaps read again.
//! * [`announce`]: what a flush tells beyond the store, per mode.
//! * [`kafka`]: the Kafka source (consumer group, rebalances).
//! * [`file`]: the embedded file log as a source.
//! * [`pace`]: how hard the embedded consumer works: deferred during a burst, in the
//!   background, or at normal priority when behind or awaited.
//! * [`fault`]: crash points for the exactly-once tests.
//!
//! Why the callbacks never race a write: librdkafka runs rebalance callbacks inside `poll`,
//! on the polling thread. A callback first waits for the flush in flight (at most one, see
//! [`worker`]), so no write is in flight while it runs, and a revoked partition's batch can
//! be flushed or dropped inside the callback, before the revocation completes. While the store is
//! down the thread keeps polling (with fetching paused) so that it stays in its group, and
//! retries the flush with a capped backoff.

pub mod announce;
pub mod fault;
pub mod file;
pub mod kafka;
pub mod pace;
pub mod position;
pub mod worker;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::plan::PartitionKey;
use worker::Worker;

/// The longest the thread blocks in `poll`: bounds how late it notices shutdown or a due
/// batch.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// The longest the thread blocks in `poll` while a flush is in flight: how late it notices
/// that the flush ended (and the next may start).
const IN_FLIGHT_POLL: Duration = Duration::from_millis(2);
/// Backoff between failed flushes, doubling up to the cap.
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_CAP: Duration = Duration::from_secs(5);

/// One message read from a log, borrowed from the source for the time of [`Worker::add`].
#[derive(Clone, Copy, Debug)]
pub struct Record<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
}

/// A message that could not be decoded, on its way aside (never blocking its partition).
#[derive(Clone, Debug)]
pub struct DeadLetter {
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub reason: String,
    /// A fixed name for the metric label.
    pub label: &'static str,
}

/// The worker, shared between the loop and the source (whose rebalance callbacks flush).
pub type SharedWorker = Arc<Mutex<Worker>>;

/// Locks the worker. A panic while holding it leaves batches that are at worst read again.
pub fn lock(worker: &SharedWorker) -> MutexGuard<'_, Worker> {
    worker.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Where the consumer reads from.
pub trait LogSource: Send {
    /// Waits at most `timeout` for records and adds each to the worker (with Kafka, the
    /// poll also runs rebalance callbacks, which lock the worker themselves: the caller
    /// must not hold it). Returns how many records were added.
    fn poll(&mut self, timeout: Duration, worker: &SharedWorker) -> Result<usize, String>;

    /// The checkpoints a flush stored. Kafka: commits them (a hint; the store's checkpoint
    /// decides). The file log: reports them, and deletes the segments wholly below them
    /// once the store holds them durably (through `worker`).
    fn stored(&mut self, checkpoints: &[(PartitionKey, i64)], worker: &SharedWorker);

    /// Stops or resumes fetching; true when it took effect.
    fn pause(&mut self, paused: bool) -> bool;

    /// Leaves for good after the final flush (Kafka: unsubscribes and serves the
    /// revocation).
    fn leave(&mut self, worker: &SharedWorker);
}

/// What the consumer thread tells the rest of the process.
#[derive(Debug, Default)]
pub struct ConsumerStatus {
    /// The last flush (or ping) reached the store.
    pub ready: AtomicBool,
    /// Set by the process to stop: flush, commit, leave.
    pub stopping: AtomicBool,
    /// Cleared when the thread's loop ends, for whatever reason.
    pub running: AtomicBool,
}

impl ConsumerStatus {
    /// Whether the consumer applies the log now, and if not, why.
    pub fn health(&self) -> Result<(), &'static str> {
        if self.stopping.load(Ordering::Relaxed) {
            Err("the consumer is stopping")
        } else if !self.running.load(Ordering::Relaxed) {
            Err("the consumer has stopped")
        } else if !self.ready.load(Ordering::Relaxed) {
            Err("the store is unreachable or failing: the consumer retries")
        } else {
            Ok(())
        }
    }
}

/// Clears [`ConsumerStatus::running`] however the loop ends (a panic included).
struct RunningFlag(Arc<ConsumerStatus>);

impl Drop for RunningFlag {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::Relaxed);
    }
}

/// A running consumer thread.
pub struct Consumer {
    thread: Option<JoinHandle<()>>,
    status: Arc<ConsumerStatus>,
    drain: Duration,
}

impl Consumer {
    /// Starts the loop on a thread of its own. `store_answers`: the caller has just reached
    /// the store (readiness holds until the thread's own ping says otherwise); else
    /// readiness waits for that ping.
    pub fn start<S: LogSource + 'static>(
        name: &str,
        source: S,
        worker: SharedWorker,
        drain: Duration,
        store_answers: bool,
    ) -> std::io::Result<Self> {
        let status = Arc::new(ConsumerStatus::default());
        status.running.store(true, Ordering::Relaxed);
        status.ready.store(store_answers, Ordering::Relaxed);
        let thread = std::thread::Builder::new().name(name.into()).spawn({
            let status = status.clone();
            move || run(source, worker, status, drain)
        })?;
        Ok(Self {
            thread: Some(thread),
            status,
            drain,
        })
    }

    pub fn status(&self) -> Arc<ConsumerStatus> {
        self.status.clone()
    }

    /// Whether the thread ended on its own (it only should when asked to stop).
    pub fn ended(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Flushes what is pending (retrying within the drain timeout) and leaves.
    pub async fn stop(mut self) {
        self.status.stopping.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let limit = self.drain + Duration::from_secs(5);
            let joined =
                tokio::time::timeout(limit, tokio::task::spawn_blocking(move || thread.join()))
                    .await;
            if !matches!(joined, Ok(Ok(Ok(())))) {
                tracing::error!("the consumer did not stop cleanly in time");
            }
        }
    }
}

fn run<S: LogSource>(
    mut source: S,
    worker: SharedWorker,
    status: Arc<ConsumerStatus>,
    drain: Duration,
) {
    let _running = RunningFlag(status.clone());
    let mut retry = Retry::default();
    status.ready.store(lock(&worker).ping(), Ordering::Relaxed);
    while !status.stopping.load(Ordering::Relaxed) {
        let timeout = {
            let worker = lock(&worker);
            let wake = match retry.at {
                Some((at, _)) => Some(at),
                None => worker.next_deadline(),
            };
            let timeout = wake.map_or(POLL_INTERVAL, |at| {
                at.saturating_duration_since(Instant::now())
                    .min(POLL_INTERVAL)
            });
            if worker.flush_in_flight() {
                // Nothing can start before it ends (a due batch or retry included): no
                // busy polling meanwhile.
                IN_FLIGHT_POLL
            } else {
                timeout
            }
        };
        if let Err(error) = source.poll(timeout, &worker) {
            metrics::counter!("referral_consumer_errors_total").increment(1);
            tracing::warn!(%error, "consumer error");
        }
        let mut locked = lock(&worker);
        if let Some(outcome) = locked.take_finished() {
            drop(locked);
            retry.after(outcome, &mut source, &worker, &status);
            locked = lock(&worker);
        }
        if locked.flush_in_flight() {
            if !locked.batch_full() {
                continue;
            }
            // Memory stays bounded: a full batch waits for the flush in flight, then goes.
            locked.settle();
            if let Some(outcome) = locked.take_finished() {
                drop(locked);
                retry.after(outcome, &mut source, &worker, &status);
                locked = lock(&worker);
            }
        }
        let attempt = match retry.at {
            Some((at, _)) => Instant::now() >= at,
            None => locked.due(),
        };
        if !attempt {
            continue;
        }
        if locked.overlaps_flushes() {
            // Its outcome comes back through `take_finished` while the reading goes on.
            if !locked.start_flush() {
                // Nothing was left to flush (a revocation took the batches of a failed
                // flush): the retry is over, and fetching resumes.
                drop(locked);
                retry.after(Ok(Vec::new()), &mut source, &worker, &status);
            }
            continue;
        }
        let outcome = locked.flush(None);
        drop(locked);
        retry.after(outcome, &mut source, &worker, &status);
    }
    drain_and_leave(&mut source, &worker, drain);
}

/// The loop's state between flushes: when a failed flush is tried again, and whether
/// fetching is paused meanwhile.
#[derive(Debug, Default)]
struct Retry {
    /// When the next attempt is due, and the backoff that led to it.
    at: Option<(Instant, Duration)>,
    paused: bool,
}

impl Retry {
    /// Acts on a flush's outcome: its checkpoints go to the source, or the flush is tried
    /// again after a capped backoff with fetching paused.
    fn after<S: LogSource>(
        &mut self,
        outcome: worker::FlushOutcome,
        source: &mut S,
        worker: &SharedWorker,
        status: &ConsumerStatus,
    ) {
        match outcome {
            Ok(stored) => {
                source.stored(&stored, worker);
                self.at = None;
                status.ready.store(true, Ordering::Relaxed);
                if self.paused {
                    self.paused = !source.pause(false);
                    if !self.paused {
                        lock(worker).resumed_fetching();
                    }
                }
            }
            Err(error) => {
                let backoff = self
                    .at
                    .map_or(RETRY_FIRST, |(_, last)| (last * 2).min(RETRY_CAP));
                tracing::warn!(%error, retry_in = ?backoff, pending = lock(worker).pending_rows(), "flush failed; batches kept");
                self.at = Some((Instant::now() + backoff, backoff));
                status.ready.store(false, Ordering::Relaxed);
                // Stop fetching until the store is back: memory stays bounded.
                self.paused = source.pause(true) || self.paused;
            }
        }
    }
}

/// Flushes what is pending (retrying until `drain` passes), then leaves.
fn drain_and_leave<S: LogSource>(source: &mut S, worker: &SharedWorker, drain: Duration) {
    let deadline = Instant::now() + drain;
    let finished = {
        let mut locked = lock(worker);
        locked.settle();
        locked.take_finished()
    };
    if let Some(Ok(stored)) = finished {
        source.stored(&stored, worker);
    }
    loop {
        let mut locked = lock(worker);
        if !locked.has_pending() {
            break;
        }
        match locked.flush(None) {
            Ok(stored) => {
                drop(locked);
                source.stored(&stored, worker);
                break;
            }
            Err(error) if Instant::now() < deadline => {
                tracing::warn!(%error, "final flush failed; retrying");
                drop(locked);
                std::thread::sleep(RETRY_FIRST);
            }
            Err(error) => {
                tracing::error!(%error, partitions = ?locked.pending_partitions(), "final flush failed; the batches will be read again");
                break;
            }
        }
    }
    source.leave(worker);
}
