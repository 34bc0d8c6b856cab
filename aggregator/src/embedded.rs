//! The embedded log: a bounded in-process queue drained by one writer thread.
//!
//! Group commit: the writer takes every event waiting in the queue (up to
//! `commit_batch_max`), applies them in one transaction, commits, mirrors code changes in
//! the [`CodeDirectory`], and only then acknowledges each publisher. While one batch
//! commits, the next one gathers in the queue, so batches grow with load and an idle
//! pipeline adds no waiting.
//!
//! Invariants:
//! * an event is acknowledged `Ok` only after the transaction that applied it committed;
//! * a failed transaction acknowledges every event of its batch with an error (the batch
//!   is all-or-nothing, see [`StateWriter`]);
//! * the queue is bounded: a full queue is refused at once ([`PublishError::QueueFull`]).

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use referral_schemas::messages::LogEvent;
use tokio::sync::{mpsc, oneshot};

use crate::codes::CodeDirectory;
use crate::config::PipelineArgs;
use crate::log::{EventLog, PublishError};
use crate::store::sqlite::{self, SqliteReader};
use crate::store::{StateWriter, StoreError};

/// One published event and the publisher waiting for it.
struct Envelope {
    event: LogEvent,
    acknowledge: oneshot::Sender<Result<(), PublishError>>,
}

enum WriterInput {
    Event(Envelope),
    /// Stop accepting, apply what is queued, exit.
    Shutdown,
}

/// The publishing side, shared by the edge and the API.
pub struct EmbeddedLog {
    queue: mpsc::Sender<WriterInput>,
}

#[async_trait]
impl EventLog for EmbeddedLog {
    async fn publish(&self, event: LogEvent) -> Result<(), PublishError> {
        let (acknowledge, acknowledged) = oneshot::channel();
        self.queue
            .try_send(WriterInput::Event(Envelope { event, acknowledge }))
            .map_err(|error| match error {
                mpsc::error::TrySendError::Full(_) => PublishError::QueueFull,
                mpsc::error::TrySendError::Closed(_) => PublishError::Closed,
            })?;
        // The writer dropping the sender without answering means it stopped.
        acknowledged.await.unwrap_or(Err(PublishError::Closed))
    }

    fn is_ready(&self) -> bool {
        !self.queue.is_closed()
    }
}

/// A running embedded pipeline: the log to publish to and the writer thread behind it.
pub struct EmbeddedPipeline {
    log: std::sync::Arc<EmbeddedLog>,
    writer: Option<JoinHandle<()>>,
}

impl EmbeddedPipeline {
    /// Starts the writer thread over `writer`.
    pub fn start<W: StateWriter + 'static>(
        writer: W,
        directory: CodeDirectory,
        queue_capacity: usize,
        batch_max: usize,
    ) -> std::io::Result<Self> {
        let (queue, inbox) = mpsc::channel(queue_capacity.max(1));
        let thread = std::thread::Builder::new()
            .name("referral-writer".into())
            .spawn(move || run_writer(inbox, writer, directory, batch_max.max(1)))?;
        Ok(Self {
            log: std::sync::Arc::new(EmbeddedLog { queue }),
            writer: Some(thread),
        })
    }

    /// Opens the SQLite store under `--data-dir`, fills the code directory from it and starts
    /// the writer: everything the embedded mode needs, in one call.
    pub fn open(args: &PipelineArgs) -> Result<(Self, SqliteReader, CodeDirectory), StoreError> {
        let (writer, reader) = sqlite::open(
            &args.data_dir,
            args.sqlite_synchronous,
            args.attribution_window_ms(),
        )?;
        let directory = CodeDirectory::from_assignments(writer.code_assignments()?);
        tracing::info!(
            data_dir = %args.data_dir.display(),
            codes = directory.len(),
            "embedded store open"
        );
        let pipeline = Self::start(
            writer,
            directory.clone(),
            args.log_queue_capacity,
            args.commit_batch_max,
        )
        .map_err(|error| StoreError::Open(format!("cannot start the writer thread: {error}")))?;
        Ok((pipeline, reader, directory))
    }

    pub fn log(&self) -> std::sync::Arc<EmbeddedLog> {
        self.log.clone()
    }

    /// Stops accepting events, lets the writer apply what is queued, and waits for it
    /// (at most `timeout`). Publishers still waiting get their answer before this returns.
    pub async fn shutdown(mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        if tokio::time::timeout(timeout, self.log.queue.send(WriterInput::Shutdown))
            .await
            .is_err()
        {
            tracing::warn!("writer queue did not take the shutdown request in time");
        }
        let Some(thread) = self.writer.take() else {
            return;
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        let joined = tokio::time::timeout(
            remaining,
            tokio::task::spawn_blocking(move || thread.join()),
        )
        .await;
        match joined {
            Ok(Ok(Ok(()))) => tracing::info!("writer stopped"),
            Ok(_) => tracing::error!("writer thread panicked"),
            Err(_) => tracing::warn!("writer did not stop within the drain timeout"),
        }
    }
}

fn run_writer<W: StateWriter>(
    mut inbox: mpsc::Receiver<WriterInput>,
    mut writer: W,
    directory: CodeDirectory,
    batch_max: usize,
) {
    let mut batch: Vec<Envelope> = Vec::with_capacity(batch_max);
    let mut closing = false;
    loop {
        if !closing {
            // Sleep until there is work; `None` means every publisher is gone.
            match inbox.blocking_recv() {
                Some(WriterInput::Event(envelope)) => batch.push(envelope),
                Some(WriterInput::Shutdown) | None => {
                    closing = true;
                    inbox.close();
                }
            }
        }
        while batch.len() < batch_max {
            match inbox.try_recv() {
                Ok(WriterInput::Event(envelope)) => batch.push(envelope),
                Ok(WriterInput::Shutdown) => {
                    closing = true;
                    inbox.close();
                }
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            if closing {
                return;
            }
            continue;
        }
        commit(&mut writer, &directory, &mut batch);
    }
}

fn commit<W: StateWriter>(writer: &mut W, directory: &CodeDirectory, batch: &mut Vec<Envelope>) {
    let (events, acknowledgements): (Vec<_>, Vec<_>) = batch
        .drain(..)
        .map(|envelope| (envelope.event, envelope.acknowledge))
        .unzip();
    let started = Instant::now();
    let result = writer.apply_batch(&events);
    metrics::histogram!("referral_commit_duration_seconds").record(started.elapsed().as_secs_f64());
    metrics::histogram!("referral_commit_batch_events").record(events.len() as f64);
    let outcome = match result {
        Ok(committed) => {
            // Before acknowledging: a code's PUT must not answer before clicks can use it.
            directory.apply(&committed.code_changes);
            metrics::counter!("referral_events_committed_total").increment(events.len() as u64);
            Ok(())
        }
        Err(error) => {
            tracing::error!(%error, events = events.len(), "commit failed; batch refused");
            metrics::counter!("referral_commit_failures_total").increment(1);
            Err(PublishError::Failed(error.to_string()))
        }
    };
    for acknowledge in acknowledgements {
        // A publisher that gave up waiting has dropped its receiver; nothing to tell it.
        let _ = acknowledge.send(outcome.clone());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use referral_schemas::Timestamp;
    use referral_schemas::messages::ClickEvent;

    use super::*;
    use crate::store::CommittedBatch;

    /// A writer that records batch sizes and can be told to fail: the fault injection a real
    /// SQLite cannot give on demand.
    #[derive(Clone, Default)]
    struct RecordingWriter {
        batches: Arc<Mutex<Vec<usize>>>,
        fail: Arc<Mutex<bool>>,
        delay: Duration,
    }

    impl StateWriter for RecordingWriter {
        fn apply_batch(&mut self, events: &[LogEvent]) -> Result<CommittedBatch, StoreError> {
            std::thread::sleep(self.delay);
            if *self.fail.lock().unwrap() {
                return Err(StoreError::Corrupt("injected".into()));
            }
            self.batches.lock().unwrap().push(events.len());
            Ok(CommittedBatch::default())
        }
    }

    fn click(n: usize) -> LogEvent {
        LogEvent::Click(ClickEvent {
            attribution_id: format!("attr_{n}"),
            code: "JAN-1".into(),
            mentor_id: "usr_1".into(),
            ip_address: "127.0.0.1".into(),
            user_agent: None,
            referrer_url: None,
            occurred_at: Timestamp::from_millis(0),
            received_at: Timestamp::from_millis(0),
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_publishes_are_committed_in_groups() {
        let writer = RecordingWriter {
            delay: Duration::from_millis(5),
            ..Default::default()
        };
        let pipeline =
            EmbeddedPipeline::start(writer.clone(), CodeDirectory::default(), 1000, 100).unwrap();
        let log = pipeline.log();
        let tasks: Vec<_> = (0..300)
            .map(|n| {
                let log = log.clone();
                tokio::spawn(async move { log.publish(click(n)).await })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap(), Ok(()));
        }
        pipeline.shutdown(Duration::from_secs(5)).await;
        let batches = writer.batches.lock().unwrap().clone();
        assert_eq!(batches.iter().sum::<usize>(), 300);
        assert!(
            batches.len() < 300,
            "expected group commits, got {} batches",
            batches.len()
        );
        assert!(batches.iter().all(|&size| size <= 100), "{batches:?}");
    }

    #[tokio::test]
    async fn a_failed_commit_is_refused_to_every_publisher_of_the_batch() {
        let writer = RecordingWriter::default();
        *writer.fail.lock().unwrap() = true;
        let pipeline =
            EmbeddedPipeline::start(writer.clone(), CodeDirectory::default(), 10, 10).unwrap();
        let result = pipeline.log().publish(click(1)).await;
        assert!(matches!(result, Err(PublishError::Failed(_))), "{result:?}");
        *writer.fail.lock().unwrap() = false;
        assert_eq!(pipeline.log().publish(click(2)).await, Ok(()));
        pipeline.shutdown(Duration::from_secs(5)).await;
    }

    /// A writer that blocks inside `apply_batch` until the gate opens.
    #[derive(Clone, Default)]
    struct GatedWriter {
        entered: Arc<std::sync::atomic::AtomicUsize>,
        open: Arc<(Mutex<bool>, std::sync::Condvar)>,
    }

    impl StateWriter for GatedWriter {
        fn apply_batch(&mut self, _: &[LogEvent]) -> Result<CommittedBatch, StoreError> {
            self.entered
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let (open, opened) = &*self.open;
            let mut is_open = open.lock().unwrap();
            while !*is_open {
                is_open = opened.wait(is_open).unwrap();
            }
            Ok(CommittedBatch::default())
        }
    }

    async fn until(condition: impl Fn() -> bool) {
        for _ in 0..5000 {
            if condition() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("condition not reached within 5 s");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_is_refused_at_once() {
        let writer = GatedWriter::default();
        let pipeline =
            EmbeddedPipeline::start(writer.clone(), CodeDirectory::default(), 1, 1).unwrap();
        let log = pipeline.log();
        // One event held inside the writer, one filling the queue: the next is refused.
        let first = tokio::spawn({
            let log = log.clone();
            async move { log.publish(click(1)).await }
        });
        until(|| writer.entered.load(std::sync::atomic::Ordering::SeqCst) == 1).await;
        let second = tokio::spawn({
            let log = log.clone();
            async move { log.publish(click(2)).await }
        });
        until(|| log.queue.capacity() == 0).await;
        assert_eq!(log.publish(click(3)).await, Err(PublishError::QueueFull));
        *writer.open.0.lock().unwrap() = true;
        writer.open.1.notify_all();
        assert_eq!(first.await.unwrap(), Ok(()));
        assert_eq!(second.await.unwrap(), Ok(()));
        pipeline.shutdown(Duration::from_secs(5)).await;
        assert!(!log.is_ready());
        assert_eq!(log.publish(click(4)).await, Err(PublishError::Closed));
    }
}
