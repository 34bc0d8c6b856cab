//! The appender: the one thread that writes the log.
//!
//! Group commit: it takes every event waiting in the queue (up to `batch_max_events`),
//! writes them as one batch with one write, fsyncs, and only then acknowledges each
//! publisher (through one task on the runtime, see [`Answerer`]). While one batch is being
//! fsynced the next gathers in the queue, so batches grow with load. An fsync starts at
//! most every `--log-fsync-interval` (250 µs): an fsync costs tens of microseconds of CPU
//! however small the batch, and on a fast disk the batches of a busy edge stayed small
//! (about 16 clicks at 50k clicks/s); with the interval they grow, and the edge served
//! 3-12% more clicks at 256 connections, and the same at 64 (docs/BENCHMARKS.md). An idle
//! log adds at most the interval to a click's answer.
//!
//! Failures: a write that fails (a full disk) is cut off the file again and refused to every
//! publisher of its batch; the log stays usable. An fsync that fails leaves the file's state
//! unknown (the kernel may have dropped the dirty pages), so the log refuses everything from
//! then on and readiness fails: a restart recovers the log from what is on disk.
//!
//! Preallocation: segments are filled with zeros to their full size before records are
//! written into them, so an fsync writes data pages only. Appending instead grows the file,
//! and every fsync then also commits the file system's journal for the new size: measured
//! on this project's machines, an fsync of an append took about twice as long and cost about
//! twice the CPU (docs/BENCHMARKS.md). The next segment is prepared by a thread of its own
//! while the current one fills, so a roll is a rename.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::segment::{self, Segment};
use super::{FileLogSettings, LogError, Shared, frame};
use crate::log::PublishError;

/// What publishers send the appender.
pub(crate) enum Envelope {
    /// One record and the publisher waiting for its offset.
    Append {
        payload: Vec<u8>,
        acknowledge: oneshot::Sender<Result<u64, PublishError>>,
    },
    /// Stop taking records, write what is queued, exit.
    Close,
}

type Acknowledgement = oneshot::Sender<Result<u64, PublishError>>;

/// One written batch's outcome and its publishers, in offset order.
pub(crate) struct AckBatch {
    outcome: Result<u64, PublishError>,
    publishers: Vec<Acknowledgement>,
}

impl AckBatch {
    /// Tells each publisher its offset (or the batch's error).
    fn answer(self) {
        for (index, acknowledge) in self.publishers.into_iter().enumerate() {
            // A publisher that gave up waiting dropped its receiver; nothing to tell it.
            let _ = acknowledge.send(self.outcome.clone().map(|first| first + index as u64));
        }
    }
}

/// How the appender's answers reach the publishers.
///
/// A publisher's task is woken when its answer is sent. Woken from the appender's thread,
/// each wake goes through the runtime's shared queue and may unpark a worker (up to a futex
/// call and a context switch per click); woken from a task on the runtime, the wakes go to
/// that worker's own queue. So, in a runtime, the appender hands each batch to one task
/// that answers its publishers: one cross-thread wake per batch (docs/BENCHMARKS.md).
pub(crate) enum Answerer {
    /// Answers sent by the appender's thread (a log opened outside a runtime).
    Direct,
    /// Batches handed to the answering task. Unbounded, yet bounded in fact: every batch
    /// holds publishers that were let into the log's bounded queue.
    Task(mpsc::UnboundedSender<AckBatch>),
}

/// The answering task's inbox. Dropped with the task (its runtime shut down), it answers
/// what is still queued and refuses later batches, which the appender then answers itself:
/// a written record is never reported lost.
struct AnswerInbox(mpsc::UnboundedReceiver<AckBatch>);

impl Drop for AnswerInbox {
    fn drop(&mut self) {
        self.0.close();
        while let Ok(batch) = self.0.try_recv() {
            batch.answer();
        }
    }
}

impl Answerer {
    /// In a tokio runtime, starts the answering task on it; else answers directly.
    pub(crate) fn start() -> Self {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Self::Direct;
        };
        let (batches, inbox) = mpsc::unbounded_channel::<AckBatch>();
        let mut inbox = AnswerInbox(inbox);
        runtime.spawn(async move {
            while let Some(batch) = inbox.0.recv().await {
                batch.answer();
            }
        });
        Self::Task(batches)
    }

    fn answer(&self, batch: AckBatch) {
        match self {
            Self::Direct => batch.answer(),
            Self::Task(batches) => {
                // The task ended with its runtime: answer from here.
                if let Err(mpsc::error::SendError(batch)) = batches.send(batch) {
                    batch.answer();
                }
            }
        }
    }
}

/// The file the next segment is prepared in (not a segment name: recovery ignores it).
const SPARE_FILE: &str = "next-segment.tmp";
/// Zeros written per call when preallocating.
const ZERO_CHUNK: usize = 1 << 20;

/// Writes zeros over `from..to` of `file`.
fn write_zeros(file: &File, from: u64, to: u64) -> std::io::Result<()> {
    let zeros = vec![0u8; ZERO_CHUNK.min(to.saturating_sub(from) as usize)];
    let mut at = from;
    while at < to {
        let len = (to - at).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..len], at)?;
        at += len as u64;
    }
    Ok(())
}

/// Fills `file` with zeros from `from` to `to` and makes them durable.
fn zero_fill(file: &File, from: u64, to: u64) -> std::io::Result<()> {
    write_zeros(file, from, to)?;
    file.sync_all()
}

/// Prepares the next segment's file in the background: created, zero-filled, synced.
fn prepare_spare(dir: &Path, bytes: u64) -> JoinHandle<std::io::Result<PathBuf>> {
    let path = dir.join(SPARE_FILE);
    std::thread::Builder::new()
        .name("referral-log-spare".into())
        .spawn(move || {
            let prepared = File::create(&path).and_then(|file| zero_fill(&file, 0, bytes));
            if prepared.is_err() {
                // A full disk: give the space back rather than hold half a segment.
                let _ = std::fs::remove_file(&path);
            }
            prepared.map(|()| path)
        })
        // No thread: no spare, and the next roll starts an empty segment.
        .unwrap_or_else(|error| std::thread::spawn(move || Err(error)))
}

pub(crate) struct Appender {
    shared: Arc<Shared>,
    file: File,
    active_base: u64,
    /// Bytes of the active segment, all durable.
    active_len: u64,
    /// The offset the next record gets.
    next: u64,
    segment_bytes: u64,
    batch_max_events: usize,
    /// The shortest time between the starts of two fsyncs.
    fsync_interval: std::time::Duration,
    /// Bytes of records in one batch at most.
    batch_max_bytes: usize,
    /// Reused for each batch.
    buffer: Vec<u8>,
    /// The next segment being prepared.
    spare: Option<JoinHandle<std::io::Result<PathBuf>>>,
}

impl Appender {
    pub(crate) fn open(
        shared: Arc<Shared>,
        settings: &FileLogSettings,
        end: u64,
        active_base: u64,
        active_len: u64,
    ) -> Result<Self, LogError> {
        let path = Segment::new(&settings.dir, active_base).path;
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|error| LogError::io(&path, error))?;
        let segment_bytes = settings.segment_bytes.max(1);
        // The active segment is preallocated before the first write (at start, not on a
        // client's time). A stale spare from an earlier run is prepared afresh.
        let len = file
            .metadata()
            .map_err(|error| LogError::io(&path, error))?
            .len();
        if len < segment_bytes
            && let Err(error) = zero_fill(&file, len.max(active_len), segment_bytes)
        {
            // A nearly full disk: start anyway, the segment grows as records come.
            tracing::warn!(%error, segment = %path.display(), "cannot preallocate the log segment");
            file.set_len(len.max(active_len))
                .map_err(|error| LogError::io(&path, error))?;
        }
        Ok(Self {
            spare: Some(prepare_spare(&settings.dir, segment_bytes)),
            shared,
            file,
            active_base,
            active_len,
            next: end,
            segment_bytes,
            batch_max_events: settings.batch_max_events.max(1),
            fsync_interval: settings.fsync_interval,
            // Never more than readers and recovery accept, whatever the settings say.
            batch_max_bytes: settings.batch_max_bytes.min(frame::MAX_BATCH_BYTES / 2),
            buffer: Vec::new(),
        })
    }

    pub(crate) fn run(mut self, mut inbox: mpsc::Receiver<Envelope>, answerer: Answerer) {
        let mut payloads: Vec<Vec<u8>> = Vec::with_capacity(self.batch_max_events);
        let mut acknowledgements: Vec<Acknowledgement> = Vec::with_capacity(self.batch_max_events);
        // An event that did not fit the last batch's bytes: the first of the next.
        let mut carried: Option<(Vec<u8>, Acknowledgement)> = None;
        let mut closing = false;
        let mut last_start = Instant::now();
        loop {
            let mut bytes = 0;
            if let Some((payload, acknowledge)) = carried.take() {
                bytes += frame::framed_len(&payload);
                payloads.push(payload);
                acknowledgements.push(acknowledge);
            } else if !closing {
                // Sleep until there is work; `None` means every publisher is gone.
                match inbox.blocking_recv() {
                    Some(Envelope::Append {
                        payload,
                        acknowledge,
                    }) => {
                        bytes += frame::framed_len(&payload);
                        payloads.push(payload);
                        acknowledgements.push(acknowledge);
                    }
                    Some(Envelope::Close) | None => {
                        closing = true;
                        inbox.close();
                    }
                }
            }
            // One fsync per interval at most: under load the batch gathers meanwhile, and
            // fewer, bigger fsyncs cost less CPU per event.
            let since = last_start.elapsed();
            if since < self.fsync_interval && !closing {
                std::thread::sleep(self.fsync_interval - since);
            }
            last_start = Instant::now();
            while payloads.len() < self.batch_max_events {
                match inbox.try_recv() {
                    Ok(Envelope::Append {
                        payload,
                        acknowledge,
                    }) => {
                        let framed = frame::framed_len(&payload);
                        if bytes + framed > self.batch_max_bytes && !payloads.is_empty() {
                            // A batch stays well inside what recovery and readers accept.
                            carried = Some((payload, acknowledge));
                            break;
                        }
                        bytes += framed;
                        payloads.push(payload);
                        acknowledgements.push(acknowledge);
                    }
                    Ok(Envelope::Close) => {
                        closing = true;
                        inbox.close();
                    }
                    Err(_) => break,
                }
            }
            if payloads.is_empty() {
                if closing && carried.is_none() {
                    break;
                }
                continue;
            }
            let outcome = self.append(&payloads);
            payloads.clear();
            // Sized once; the gathering buffer keeps its capacity for the next batch.
            let mut publishers = Vec::with_capacity(acknowledgements.len());
            publishers.append(&mut acknowledgements);
            answerer.answer(AckBatch {
                outcome,
                publishers,
            });
        }
        self.shared.closed.store(true, Ordering::Release);
        self.shared.appended.notify_all();
        tracing::info!(end = self.next, "embedded log closed");
    }

    /// Writes and fsyncs one batch; the offset of its first record.
    fn append(&mut self, payloads: &[Vec<u8>]) -> Result<u64, PublishError> {
        if self.shared.failed.load(Ordering::Acquire) {
            return Err(PublishError::Failed(
                "the log failed to write; restart to recover it".into(),
            ));
        }
        let first = self.next;
        frame::encode_batch(first, payloads, &mut self.buffer);
        let started = Instant::now();
        if let Err(error) = self.file.write_all_at(&self.buffer, self.active_len) {
            metrics::counter!("referral_log_write_failures_total", "step" => "write").increment(1);
            // Undo what part of the batch reached the file, so nothing follows a torn batch:
            // zeros over it where the file was preallocated, a cut where it grew.
            if let Err(undo) = self.undo(self.buffer.len() as u64) {
                self.fail(&format!(
                    "write failed ({error}) and could not be undone ({undo})"
                ));
            } else {
                tracing::error!(%error, events = payloads.len(), "log write failed; batch refused");
            }
            return Err(PublishError::Failed(format!("log write failed: {error}")));
        }
        if let Err(error) = self.file.sync_data() {
            metrics::counter!("referral_log_write_failures_total", "step" => "fsync").increment(1);
            self.fail(&format!("fsync failed: {error}"));
            return Err(PublishError::Failed(format!("log fsync failed: {error}")));
        }
        metrics::histogram!("referral_log_fsync_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        metrics::histogram!("referral_log_batch_events").record(payloads.len() as f64);
        self.active_len += self.buffer.len() as u64;
        self.next += payloads.len() as u64;
        self.shared.made_durable(self.next);
        if self.active_len >= self.segment_bytes {
            self.roll();
        }
        Ok(first)
    }

    /// Removes a failed batch of `len` bytes written at the end of the records.
    fn undo(&self, len: u64) -> std::io::Result<()> {
        let file_len = self.file.metadata()?.len();
        let preallocated = self.segment_bytes.min(file_len);
        if self.active_len < preallocated {
            write_zeros(
                &self.file,
                self.active_len,
                (self.active_len + len).min(preallocated),
            )?;
        }
        if file_len > preallocated.max(self.active_len) {
            self.file.set_len(preallocated.max(self.active_len))?;
        }
        Ok(())
    }

    /// Nothing more is acknowledged: the file's state is not known any more.
    fn fail(&self, why: &str) {
        tracing::error!(
            why,
            "the embedded log stopped taking events; restart to recover it"
        );
        self.shared.failed.store(true, Ordering::Release);
    }

    /// Starts a new segment at the current end, from the prepared spare when it is ready
    /// (a rename), else as an empty file that grows. On failure the current segment keeps
    /// growing and the next batch tries again.
    fn roll(&mut self) {
        let next = Segment::new(&self.shared.dir, self.next);
        let spare = match self.spare.take() {
            Some(preparing) if preparing.is_finished() => match preparing.join() {
                Ok(Ok(path)) => Some(path),
                Ok(Err(error)) => {
                    tracing::warn!(%error, "cannot prepare the next log segment");
                    None
                }
                Err(_) => None,
            },
            still_preparing => {
                self.spare = still_preparing;
                None
            }
        };
        if spare.is_none() {
            metrics::counter!("referral_log_unprepared_segments_total").increment(1);
        }
        let created = match &spare {
            Some(path) => std::fs::rename(path, &next.path)
                .and_then(|()| OpenOptions::new().write(true).open(&next.path)),
            None => File::create_new(&next.path),
        }
        .map_err(|error| LogError::io(&next.path, error))
        .and_then(|file| segment::sync_dir(&self.shared.dir).map(|()| file));
        match created {
            Ok(file) => {
                self.file = file;
                self.active_base = next.base;
                self.active_len = 0;
                self.shared.segments().push(next);
                if self.spare.is_none() {
                    self.spare = Some(prepare_spare(&self.shared.dir, self.segment_bytes));
                }
                metrics::gauge!("referral_log_segments").set(self.shared.segments().len() as f64);
            }
            Err(error) => {
                // Nothing was written to it: take it away, or the next start would find a
                // segment whose offsets the current one goes on to hold (a gap).
                if let Err(remove) = std::fs::remove_file(&next.path)
                    && remove.kind() != std::io::ErrorKind::NotFound
                {
                    self.fail(&format!(
                        "cannot start a new log segment ({error}) nor remove it ({remove})"
                    ));
                    return;
                }
                // The removal must reach the disk too (the rename may have).
                if let Err(sync) = segment::sync_dir(&self.shared.dir) {
                    self.fail(&format!(
                        "cannot start a new log segment ({error}) nor sync its removal ({sync})"
                    ));
                    return;
                }
                tracing::warn!(%error, "cannot start a new log segment; retried later");
                if self.spare.is_none() {
                    self.spare = Some(prepare_spare(&self.shared.dir, self.segment_bytes));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A batch of `publishers` answered with the first offset `first`, and their receivers.
    fn batch(
        publishers: usize,
        first: u64,
    ) -> (AckBatch, Vec<oneshot::Receiver<Result<u64, PublishError>>>) {
        let (senders, receivers) = (0..publishers).map(|_| oneshot::channel()).unzip();
        let batch = AckBatch {
            outcome: Ok(first),
            publishers: senders,
        };
        (batch, receivers)
    }

    fn offsets(receivers: Vec<oneshot::Receiver<Result<u64, PublishError>>>) -> Vec<u64> {
        receivers
            .into_iter()
            .map(|mut receiver| receiver.try_recv().unwrap().unwrap())
            .collect()
    }

    #[test]
    fn outside_a_runtime_the_appender_answers_itself() {
        let answerer = Answerer::start();
        assert!(matches!(answerer, Answerer::Direct));
        let (batch, receivers) = batch(3, 7);
        answerer.answer(batch);
        assert_eq!(offsets(receivers), vec![7, 8, 9]);
    }

    #[test]
    fn in_a_runtime_the_task_answers_each_publisher_its_offset() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let answerer = runtime.block_on(async { Answerer::start() });
        assert!(matches!(answerer, Answerer::Task(_)));
        let (batch, receivers) = batch(3, 0);
        answerer.answer(batch);
        let answered = runtime.block_on(async {
            let mut offsets = Vec::new();
            for receiver in receivers {
                let answer = tokio::time::timeout(Duration::from_secs(5), receiver).await;
                offsets.push(answer.unwrap().unwrap().unwrap());
            }
            offsets
        });
        assert_eq!(answered, vec![0, 1, 2]);
    }

    /// A batch queued for the task when its runtime shuts down is answered all the same, and
    /// so is every batch after it: a written record is never reported lost.
    #[test]
    fn batches_are_answered_when_the_runtime_of_the_task_is_gone() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        // Started but never polled: the batch waits in the task's inbox.
        let answerer = runtime.block_on(async { Answerer::start() });
        let (queued, queued_receivers) = batch(2, 10);
        answerer.answer(queued);
        drop(runtime);
        assert_eq!(offsets(queued_receivers), vec![10, 11]);
        let (later, later_receivers) = batch(2, 12);
        answerer.answer(later);
        assert_eq!(offsets(later_receivers), vec![12, 13]);
    }
}
