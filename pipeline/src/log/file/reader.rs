//! Reading the log from any offset on, for the consumer.
//!
//! The reader reads only batches whose first offset is below the durable end it saw
//! *before* reading: such a batch was written whole and fsynced before the end moved past
//! it. Bytes beyond (a batch being written, or one that a failed write left and that is
//! about to be cut off) are never parsed as records. Reads are positioned (`pread`) into a
//! reused buffer, so nothing is cached across a cut.

use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::sync::Arc;
use std::time::Duration;

use super::frame::{self, FrameError};
use super::segment::Segment;
use super::{LogError, Shared};

/// Bytes read at once: many batches per read at load, little memory.
const WINDOW: usize = 1024 * 1024;

/// The segment being read.
struct Open {
    segment: Segment,
    file: File,
    /// Byte position of the next batch to read.
    position: u64,
}

/// Reads durable records in offset order from a starting offset on.
pub struct LogReader {
    shared: Arc<Shared>,
    /// The offset of the next record to hand out.
    next: u64,
    open: Option<Open>,
    buffer: Vec<u8>,
}

impl LogReader {
    pub(crate) fn new(shared: Arc<Shared>, from: u64) -> Self {
        Self {
            shared,
            next: from,
            open: None,
            buffer: Vec::new(),
        }
    }

    /// The offset of the next record [`Self::read`] hands out.
    pub fn next_offset(&self) -> u64 {
        self.next
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Hands `deliver` the durable records from the next offset on (at least one whole
    /// batch when there is one, then whole batches while fewer than `max` records were
    /// handed out), waiting at most `timeout` for the first. Returns how many.
    pub fn read(
        &mut self,
        max: usize,
        timeout: Duration,
        mut deliver: impl FnMut(u64, &[u8]),
    ) -> Result<usize, LogError> {
        if !self.shared.wait_past(self.next, timeout) {
            return Ok(0);
        }
        let end = self.shared.end();
        let mut delivered = 0;
        while self.next < end && delivered < max {
            self.ensure_open()?;
            let Some(open) = self.open.as_mut() else {
                break;
            };
            let mut read = read_window(&open.file, open.position, &mut self.buffer, WINDOW)
                .map_err(|error| LogError::io(&open.segment.path, error))?;
            if read == 0 {
                return Err(corrupt(
                    open,
                    0,
                    format!(
                        "offset {} is missing: the segment ends before it",
                        self.next
                    ),
                ));
            }
            let mut at = 0;
            while self.next < end && delivered < max {
                match frame::parse_batch(&self.buffer[at..read]) {
                    Ok(batch) => {
                        let header = batch.header;
                        if header.base_offset >= end {
                            break;
                        }
                        if header.end_offset() <= self.next {
                            // Below the start offset (the first batch read after a seek).
                            at += header.batch_len();
                            continue;
                        }
                        if header.base_offset > self.next {
                            return Err(corrupt(
                                open,
                                at,
                                format!(
                                    "batch at offset {} where offset {} was expected",
                                    header.base_offset, self.next
                                ),
                            ));
                        }
                        for (offset, payload) in batch.records() {
                            if offset >= self.next {
                                deliver(offset, payload);
                                delivered += 1;
                            }
                        }
                        self.next = header.end_offset();
                        at += header.batch_len();
                    }
                    Err(FrameError::Incomplete { needed }) => {
                        if at == 0 && read < needed {
                            // A batch larger than the window: read it whole next time.
                            let whole =
                                read_window(&open.file, open.position, &mut self.buffer, needed)
                                    .map_err(|error| LogError::io(&open.segment.path, error))?;
                            if whole < needed {
                                return Err(corrupt(
                                    open,
                                    0,
                                    format!(
                                        "a durable batch of {needed} bytes ends the file after {whole}"
                                    ),
                                ));
                            }
                            read = whole;
                            continue;
                        }
                        break;
                    }
                    Err(FrameError::Invalid(reason)) => return Err(corrupt(open, at, reason)),
                }
            }
            open.position += at as u64;
            if at == 0 {
                // Nothing whole and durable at this position yet.
                break;
            }
        }
        Ok(delivered)
    }

    /// Opens the segment holding the next offset, unless it is the one open. A segment ends
    /// where the next one starts (after its last batch it holds only preallocated zeros).
    fn ensure_open(&mut self) -> Result<(), LogError> {
        let segment = {
            let segments = self.shared.segments();
            segments
                .iter()
                .rev()
                .find(|segment| segment.base <= self.next)
                .cloned()
        };
        if let (Some(open), Some(segment)) = (&self.open, &segment)
            && open.segment.base == segment.base
        {
            return Ok(());
        }
        let Some(segment) = segment else {
            return Err(LogError::Missing {
                dir: self.shared.dir.clone(),
                checkpoint: self.next,
                start: self.shared.segments().first().map_or(0, |s| s.base),
                end: self.shared.end(),
            });
        };
        let file = File::open(&segment.path).map_err(|error| LogError::io(&segment.path, error))?;
        self.open = Some(Open {
            segment,
            file,
            position: 0,
        });
        Ok(())
    }
}

fn corrupt(open: &Open, at: usize, reason: String) -> LogError {
    LogError::Corrupt {
        path: open.segment.path.clone(),
        byte: open.position + at as u64,
        reason,
    }
}

/// Reads up to `len` bytes at `position` into `buffer` (resized); the bytes read.
fn read_window(
    file: &File,
    position: u64,
    buffer: &mut Vec<u8>,
    len: usize,
) -> std::io::Result<usize> {
    buffer.resize(len, 0);
    let mut filled = 0;
    while filled < len {
        match file.read_at(&mut buffer[filled..], position + filled as u64) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}
