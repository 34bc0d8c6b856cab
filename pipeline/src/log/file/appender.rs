//! The appender: the one thread that writes the log.
//!
//! Group commit: it takes every event waiting in the queue (up to `batch_max_events`),
//! writes them as one batch with one write, fsyncs, and only then acknowledges each
//! publisher. While one batch is being fsynced the next gathers in the queue, so batches
//! grow with load and an idle log adds no waiting.
//!
//! Failures: a write that fails (a full disk) is cut off the file again and refused to every
//! publisher of its batch; the log stays usable. An fsync that fails leaves the file's state
//! unknown (the kernel may have dropped the dirty pages), so the log refuses everything from
//! then on and readiness fails: a restart recovers the log from what is on disk.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
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
    /// Reused for each batch.
    buffer: Vec<u8>,
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
        Ok(Self {
            shared,
            file,
            active_base,
            active_len,
            next: end,
            segment_bytes: settings.segment_bytes.max(1),
            batch_max_events: settings.batch_max_events.max(1),
            buffer: Vec::new(),
        })
    }

    pub(crate) fn run(mut self, mut inbox: mpsc::Receiver<Envelope>) {
        let mut payloads: Vec<Vec<u8>> = Vec::with_capacity(self.batch_max_events);
        let mut acknowledgements: Vec<Acknowledgement> = Vec::with_capacity(self.batch_max_events);
        let mut closing = false;
        loop {
            if !closing {
                // Sleep until there is work; `None` means every publisher is gone.
                match inbox.blocking_recv() {
                    Some(Envelope::Append {
                        payload,
                        acknowledge,
                    }) => {
                        payloads.push(payload);
                        acknowledgements.push(acknowledge);
                    }
                    Some(Envelope::Close) | None => {
                        closing = true;
                        inbox.close();
                    }
                }
            }
            while payloads.len() < self.batch_max_events {
                match inbox.try_recv() {
                    Ok(Envelope::Append {
                        payload,
                        acknowledge,
                    }) => {
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
                if closing {
                    break;
                }
                continue;
            }
            let outcome = self.append(&payloads);
            payloads.clear();
            for (index, acknowledge) in acknowledgements.drain(..).enumerate() {
                // A publisher that gave up waiting dropped its receiver; nothing to tell it.
                let _ = acknowledge.send(outcome.clone().map(|first| first + index as u64));
            }
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
            // Cut what part of the batch reached the file, so nothing follows a torn batch.
            if let Err(undo) = self.file.set_len(self.active_len) {
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

    /// Nothing more is acknowledged: the file's state is not known any more.
    fn fail(&self, why: &str) {
        tracing::error!(
            why,
            "the embedded log stopped taking events; restart to recover it"
        );
        self.shared.failed.store(true, Ordering::Release);
    }

    /// Starts a new segment at the current end. On failure the current segment keeps
    /// growing and the next batch tries again.
    fn roll(&mut self) {
        let next = Segment::new(&self.shared.dir, self.next);
        let created = File::create_new(&next.path)
            .map_err(|error| LogError::io(&next.path, error))
            .and_then(|file| segment::sync_dir(&self.shared.dir).map(|()| file));
        match created {
            Ok(file) => {
                self.file = file;
                self.active_base = next.base;
                self.active_len = 0;
                self.shared.segments().push(next);
                metrics::gauge!("referral_log_segments").set(self.shared.segments().len() as f64);
            }
            Err(error) => tracing::warn!(%error, "cannot start a new log segment; retried later"),
        }
    }
}
