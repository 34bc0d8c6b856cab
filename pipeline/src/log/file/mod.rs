//! The embedded log: append-only segment files under `DATA_DIR/log/`.
//!
//! ```text
//!   publish ──queue──▶ appender thread: batch, write, fsync ──▶ ack (201)
//!                                │ durable end
//!                                ▼
//!                      LogReader (the consumer) ──▶ store ──▶ release(checkpoint)
//! ```
//!
//! * [`frame`]: the on-disk format (batches of framed, checksummed records).
//! * [`segment`]: segment files, and recovery at start (a torn tail is cut, corruption stops
//!   the start naming the file and byte).
//! * [`appender`]: the one thread that writes: group commit (every event waiting in the
//!   queue goes into one write and one fsync), then acknowledges each publisher.
//! * [`reader`]: reads durable records from any offset on, for the consumer.
//!
//! Why not a crate: see the README ("The embedded log"). In short, the crates looked at
//! (mrecordlog, okaywal) keep unapplied records in memory or skip corrupt ones silently,
//! and this log needs neither.
//!
//! Invariants:
//! * a publisher is acknowledged `Ok` only after the fsync that covered its record;
//! * a reader never sees a record that is not durable (it reads only below the durable
//!   end, and a failed write is cut off before anything is acknowledged after it);
//! * offsets are dense: record `n` is the `n`-th record ever appended, across segments and
//!   restarts, so the store's checkpoint (the next offset to apply) says what is applied;
//! * a segment is deleted only once the store's checkpoint has passed every record in it.

pub mod appender;
pub mod frame;
pub mod reader;
pub mod segment;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use referral_schemas::messages::{LogEvent, LogMessage};
use tokio::sync::{mpsc, oneshot, watch};

use self::appender::{Answerer, Appender, Envelope};
use self::reader::LogReader;
use self::segment::Segment;
use super::{EventLog, PublishError};

/// The log's partition name, under which the store keeps its checkpoint.
pub const TOPIC: &str = "embedded-log";
/// Bytes of records in one batch by default: a quarter of what readers and recovery
/// accept, whatever `--log-queue-capacity` lets gather (10,000 clicks of the largest size
/// allowed would be 60 MiB).
pub const BATCH_MAX_BYTES: usize = frame::MAX_BATCH_BYTES / 4;
/// Sub-directory of the data directory that holds the segments.
pub const DIRECTORY: &str = "log";

/// Why the log cannot be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "{path}: corrupt log at byte {byte}: {reason}. The records from there on were \
         acknowledged and are not readable; restore the file from a backup, or move it \
         aside to start without them"
    )]
    Corrupt {
        path: PathBuf,
        byte: u64,
        reason: String,
    },
    #[error("{path}: the log has a gap: offset {expected} expected, the segment starts at {found}")]
    Gap {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error(
        "the store has applied the log up to offset {checkpoint}, but the log in {dir} \
         ends at {end} (starting at {start}): acknowledged records are missing"
    )]
    Missing {
        dir: PathBuf,
        checkpoint: u64,
        start: u64,
        end: u64,
    },
}

impl LogError {
    pub fn io(path: &Path, error: std::io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            error,
        }
    }
}

/// How the log behaves; see the `--log-*` flags and `--max-apply-lag`.
#[derive(Clone, Debug)]
pub struct FileLogSettings {
    /// The directory of the segments.
    pub dir: PathBuf,
    /// A segment is closed and a new one started once it holds this many bytes.
    pub segment_bytes: u64,
    /// Events waiting for the appender at most (then 503 at once).
    pub queue_capacity: usize,
    /// Events in one write and fsync at most.
    pub batch_max_events: usize,
    /// Bytes of records in one write and fsync at most (capped at half of what readers and
    /// recovery accept, [`frame::MAX_BATCH_BYTES`]).
    pub batch_max_bytes: usize,
    /// The shortest time between the starts of two fsyncs.
    pub fsync_interval: Duration,
    /// Events the store may be behind the log at most (then 503 at once).
    pub max_apply_lag: u64,
}

/// State shared by the appender, the readers and the publishers.
pub(crate) struct Shared {
    dir: PathBuf,
    /// The offset after the last durable record (the log's end). A batch whose first offset
    /// is below it was written whole and fsynced before it moved: readers read those only.
    durable_end: AtomicU64,
    /// Guards the wait on `appended`.
    appended_lock: Mutex<()>,
    /// Signalled when `durable_end` moves (readers wait on it).
    appended: Condvar,
    /// The store's checkpoint: the offset after the last applied record, for waiters...
    applied: watch::Sender<u64>,
    /// ...and for the lag every publish reads, without the watch's lock.
    applied_at: AtomicU64,
    /// Every segment, oldest first; the appender adds, `release` removes.
    segments: Mutex<Vec<Segment>>,
    /// Set when a write could not be undone or an fsync failed: nothing more is
    /// acknowledged until a restart recovers the log from disk.
    failed: AtomicBool,
    /// Set when the appender stopped.
    closed: AtomicBool,
    /// Clients waiting for the store to catch up (reads of fresh clicks, commands): the
    /// consumer does not defer while there are any.
    awaiting: AtomicUsize,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded values are plain numbers and lists, consistent between statements.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub(crate) fn end(&self) -> u64 {
        self.durable_end.load(Ordering::Acquire)
    }

    pub(crate) fn applied(&self) -> u64 {
        self.applied_at.load(Ordering::Acquire)
    }

    /// Events appended but not yet applied to the store.
    pub(crate) fn lag(&self) -> u64 {
        self.end().saturating_sub(self.applied())
    }

    /// Whether a client waits for the store.
    pub(crate) fn is_awaited(&self) -> bool {
        self.awaiting.load(Ordering::Acquire) > 0
    }

    fn segments(&self) -> MutexGuard<'_, Vec<Segment>> {
        lock(&self.segments)
    }

    /// Called by the appender after an fsync.
    fn made_durable(&self, end: u64) {
        {
            let _guard = lock(&self.appended_lock);
            self.durable_end.store(end, Ordering::Release);
        }
        self.appended.notify_all();
        self.report_lag();
    }

    /// The lag gauge: set whenever either end moves, so it is current even while the
    /// consumer is stuck.
    fn report_lag(&self) {
        metrics::gauge!("referral_apply_lag_events").set(self.lag() as f64);
    }

    /// Waits (at most `timeout`) until the log's end passes `offset`.
    fn wait_past(&self, offset: u64, timeout: Duration) -> bool {
        let guard = lock(&self.appended_lock);
        if self.end() > offset {
            return true;
        }
        let (_guard, _) = self
            .appended
            .wait_timeout_while(guard, timeout, |_| self.end() <= offset)
            .unwrap_or_else(PoisonError::into_inner);
        self.end() > offset
    }
}

/// The embedded log, opened: the publishing side, the reader for the consumer, and what
/// the process watches.
pub struct FileLog {
    queue: mpsc::Sender<Envelope>,
    shared: Arc<Shared>,
    max_apply_lag: u64,
    appender: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl FileLog {
    /// Recovers the log in `settings.dir` (creating it), checks it against the store's
    /// `checkpoint`, and starts the appender. Returns the log and a reader positioned at the
    /// checkpoint. Called in a tokio runtime, publishers are answered by a task on it (see
    /// [`appender::Answerer`]), which must keep being driven while the log is used from
    /// elsewhere; once it shuts down, the appender answers them itself.
    pub fn open(
        settings: &FileLogSettings,
        checkpoint: u64,
    ) -> Result<(Self, LogReader), LogError> {
        std::fs::create_dir_all(&settings.dir)
            .map_err(|error| LogError::io(&settings.dir, error))?;
        let recovered = segment::recover(&settings.dir, checkpoint)?;
        let (segments, end, active_len) = match recovered {
            Some(recovered) => {
                let start = recovered.segments.first().map_or(0, |segment| segment.base);
                if checkpoint > recovered.end || checkpoint < start {
                    // Nothing is cut from a log that does not match the store: the operator
                    // decides what to do with it.
                    return Err(LogError::Missing {
                        dir: settings.dir.clone(),
                        checkpoint,
                        start,
                        end: recovered.end,
                    });
                }
                if let Some(torn) = &recovered.torn {
                    torn.cut()?;
                }
                (recovered.segments, recovered.end, recovered.active_len)
            }
            None => {
                // A new log, or one whose every record was applied and deleted with the
                // directory: it continues at the store's checkpoint, so offsets stay dense.
                let first = Segment::new(&settings.dir, checkpoint);
                std::fs::File::create(&first.path)
                    .map_err(|error| LogError::io(&first.path, error))?;
                segment::sync_dir(&settings.dir)?;
                (vec![first], checkpoint, 0)
            }
        };
        let active_base = segments.last().map_or(end, |segment| segment.base);
        let (applied, _) = watch::channel(checkpoint);
        let shared = Arc::new(Shared {
            dir: settings.dir.clone(),
            durable_end: AtomicU64::new(end),
            appended_lock: Mutex::new(()),
            appended: Condvar::new(),
            applied,
            applied_at: AtomicU64::new(checkpoint),
            segments: Mutex::new(segments),
            failed: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            awaiting: AtomicUsize::new(0),
        });
        let (queue, inbox) = mpsc::channel(settings.queue_capacity.max(1));
        let appender = Appender::open(shared.clone(), settings, end, active_base, active_len)?;
        let answerer = Answerer::start();
        let thread = std::thread::Builder::new()
            .name("referral-log".into())
            .spawn(move || appender.run(inbox, answerer))
            .map_err(|error| LogError::io(&settings.dir, error))?;
        let reader = LogReader::new(shared.clone(), checkpoint);
        tracing::info!(dir = %settings.dir.display(), end, checkpoint, "embedded log open");
        Ok((
            Self {
                queue,
                shared,
                max_apply_lag: settings.max_apply_lag,
                appender: Mutex::new(Some(thread)),
            },
            reader,
        ))
    }

    /// The offset after the last durable record.
    pub fn end(&self) -> u64 {
        self.shared.end()
    }

    /// The store's checkpoint as last reported by the consumer.
    #[cfg(test)]
    pub fn applied(&self) -> u64 {
        self.shared.applied()
    }

    /// Events appended and not yet applied.
    pub fn lag(&self) -> u64 {
        self.shared.lag()
    }

    /// Waits, at most `limit`, until the store applied everything in the log when called;
    /// the consumer works at full speed meanwhile. True when it did.
    pub async fn caught_up(&self, limit: Duration) -> bool {
        let _awaited = self.awaiting();
        let target = self.end();
        let mut applied = self.shared.applied.subscribe();
        tokio::time::timeout(limit, applied.wait_for(|applied| *applied >= target))
            .await
            .is_ok_and(|seen| seen.is_ok())
    }

    /// Says that a client waits for the store (a command's verdict) until dropped.
    pub fn awaiting(&self) -> Awaiting {
        self.shared.awaiting.fetch_add(1, Ordering::AcqRel);
        Awaiting {
            shared: self.shared.clone(),
        }
    }

    /// Stops taking events, lets the appender write what is queued, and waits for it (at
    /// most `timeout`).
    pub async fn close(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.queue.send(Envelope::Close)).await;
        let thread = lock(&self.appender).take();
        if let Some(thread) = thread {
            let joined =
                tokio::time::timeout(timeout, tokio::task::spawn_blocking(move || thread.join()))
                    .await;
            if !matches!(joined, Ok(Ok(Ok(())))) {
                tracing::warn!("the log appender did not stop within the drain timeout");
            }
        }
    }
}

#[async_trait]
impl EventLog for FileLog {
    async fn publish(&self, event: LogEvent) -> Result<(), PublishError> {
        if self.shared.failed.load(Ordering::Acquire) {
            return Err(PublishError::Failed(
                "the log failed to write; restart to recover it".into(),
            ));
        }
        let lag = self.shared.lag();
        if lag > self.max_apply_lag {
            return Err(PublishError::Backlogged {
                lag,
                bound: self.max_apply_lag,
            });
        }
        let payload = LogMessage::new(event)
            .to_json()
            .map_err(|error| PublishError::Failed(error.to_string()))?;
        let (acknowledge, acknowledged) = oneshot::channel();
        self.queue
            .try_send(Envelope::Append {
                payload,
                acknowledge,
            })
            .map_err(|error| match error {
                mpsc::error::TrySendError::Full(_) => PublishError::QueueFull,
                mpsc::error::TrySendError::Closed(_) => PublishError::Closed,
            })?;
        // The appender dropping the sender without answering means it stopped.
        acknowledged
            .await
            .unwrap_or(Err(PublishError::Closed))
            .map(|_offset| ())
    }

    fn readiness(&self) -> Result<(), String> {
        if self.shared.failed.load(Ordering::Acquire) {
            return Err("the embedded log failed to write; restart to recover it".into());
        }
        if self.queue.is_closed() || self.shared.closed.load(Ordering::Acquire) {
            return Err("the embedded log is closed".into());
        }
        let lag = self.shared.lag();
        if lag > self.max_apply_lag {
            return Err(format!(
                "the store is {lag} events behind the log (--max-apply-lag {})",
                self.max_apply_lag
            ));
        }
        Ok(())
    }
}

/// A client waiting for the store, for as long as this lives.
pub struct Awaiting {
    shared: Arc<Shared>,
}

impl Drop for Awaiting {
    fn drop(&mut self) {
        self.shared.awaiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Reports the store's checkpoint: the lag, and the reads waiting for it.
pub(crate) fn report_applied(shared: &Shared, checkpoint: u64) {
    shared.applied_at.fetch_max(checkpoint, Ordering::AcqRel);
    shared.applied.send_if_modified(|applied| {
        let moved = checkpoint > *applied;
        if moved {
            *applied = checkpoint;
        }
        moved
    });
    shared.report_lag();
}

/// The segments wholly below `checkpoint`: every record in them is applied.
fn applied_segments(shared: &Shared, checkpoint: u64) -> Vec<Segment> {
    shared
        .segments()
        .windows(2)
        .take_while(|pair| pair[1].base <= checkpoint)
        .map(|pair| pair[0].clone())
        .collect()
}

/// Whether some segment could go once the store holds `checkpoint` durably.
/// Asked after every flush, so it looks at the second segment only and copies nothing.
pub(crate) fn has_applied_segments(shared: &Shared, checkpoint: u64) -> bool {
    shared
        .segments()
        .get(1)
        .is_some_and(|second| second.base <= checkpoint)
}

/// Deletes the segments wholly below `checkpoint`. The caller makes sure the store holds
/// that checkpoint durably first: a store that could roll back to an earlier one would then
/// miss records that no longer exist.
pub(crate) fn delete_applied_segments(shared: &Shared, checkpoint: u64) {
    let removable = applied_segments(shared, checkpoint);
    if removable.is_empty() {
        return;
    }
    for segment in &removable {
        if let Err(error) = std::fs::remove_file(&segment.path) {
            tracing::warn!(%error, segment = %segment.path.display(), "cannot delete an applied segment");
        }
    }
    shared
        .segments()
        .retain(|segment| !removable.contains(segment));
    if let Err(error) = segment::sync_dir(&shared.dir) {
        tracing::warn!(%error, "cannot sync the log directory after deleting segments");
    }
    metrics::gauge!("referral_log_segments").set(shared.segments().len() as f64);
}

/// [`report_applied`] and [`delete_applied_segments`], for a store whose commits are
/// durable as they return.
#[cfg(test)]
pub(crate) fn release(shared: &Shared, checkpoint: u64) {
    report_applied(shared, checkpoint);
    delete_applied_segments(shared, checkpoint);
}

#[cfg(test)]
mod tests;
