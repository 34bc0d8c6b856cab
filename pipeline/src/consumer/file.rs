//! The embedded file log as the consumer's source: one partition, read from the store's
//! checkpoint on.

use std::time::Duration;

use super::pace::{Pace, Pacer};
use super::{LogSource, Record, SharedWorker, lock};
use crate::log::file::reader::LogReader;
use crate::log::file::{self, TOPIC};
use crate::plan::PartitionKey;

/// How long a deferring consumer sleeps before it looks again: short enough that a waiting
/// client or the end of a burst is noticed at once.
const DEFER_PAUSE: Duration = Duration::from_millis(20);
/// How long the source rests after a read error (a corrupt record found while running)
/// before trying again: the error is logged and counted, and the lag it causes fails
/// readiness once it passes its bound.
const ERROR_PAUSE: Duration = Duration::from_secs(1);

pub struct FileSource {
    reader: LogReader,
    /// Records the worker holds at most before a flush.
    batch_max: usize,
    paused: bool,
    /// How hard to work (decided on the consumer thread: `new` runs elsewhere).
    pacer: Pacer,
}

impl FileSource {
    /// Reads from `reader`'s position (the store's checkpoint) on. The worker is told it
    /// owns the log's one partition.
    pub fn new(
        reader: LogReader,
        worker: &SharedWorker,
        batch_max: usize,
        max_apply_lag: u64,
        max_apply_delay: Duration,
    ) -> Self {
        lock(worker).assigned(vec![Self::partition()]);
        let checkpoint = reader.next_offset();
        file::report_applied(reader.shared(), checkpoint);
        Self {
            reader,
            batch_max: batch_max.max(1),
            paused: false,
            pacer: Pacer::new(max_apply_lag, max_apply_delay),
        }
    }

    fn partition() -> PartitionKey {
        (TOPIC.to_owned(), 0)
    }
}

impl LogSource for FileSource {
    fn poll(&mut self, timeout: Duration, worker: &SharedWorker) -> Result<usize, String> {
        if self.paused {
            std::thread::sleep(timeout);
            return Ok(0);
        }
        let shared = self.reader.shared();
        if self
            .pacer
            .pace(shared.lag(), shared.applied(), shared.is_awaited())
            == Pace::Defer
        {
            std::thread::sleep(timeout.min(DEFER_PAUSE));
            return Ok(0);
        }
        // No Kafka callbacks here: holding the worker while waiting for records blocks no one.
        let mut worker = lock(worker);
        let room = self.batch_max.saturating_sub(worker.pending_rows());
        if room == 0 {
            return Ok(0);
        }
        let read = self.reader.read(room, timeout, |offset, payload| {
            // Its offsets have no gaps (the reader stops at a missing one): never a seek.
            let _ = worker.add(&Record {
                topic: TOPIC,
                partition: 0,
                offset: offset as i64,
                key: None,
                payload: Some(payload),
            });
        });
        drop(worker);
        read.map_err(|error| {
            std::thread::sleep(ERROR_PAUSE);
            error.to_string()
        })
    }

    fn stored(&mut self, checkpoints: &[(PartitionKey, i64)], worker: &SharedWorker) {
        for ((topic, _), next) in checkpoints {
            if topic != TOPIC {
                continue;
            }
            let checkpoint = u64::try_from(*next).unwrap_or(0);
            let shared = self.reader.shared();
            file::report_applied(shared, checkpoint);
            if !file::has_applied_segments(shared, checkpoint) {
                continue;
            }
            // Rare (once a segment): the store makes its commits durable before the records
            // behind them are deleted.
            match lock(worker).make_store_durable() {
                Ok(()) => file::delete_applied_segments(shared, checkpoint),
                Err(error) => {
                    tracing::warn!(%error, "applied segments kept: the store could not make its commits durable");
                }
            }
        }
    }

    fn pause(&mut self, paused: bool) -> bool {
        self.paused = paused;
        true
    }

    fn leave(&mut self, _: &SharedWorker) {}
}
