//! Segment files and recovery at start.
//!
//! The log is a directory of segment files named by the offset of their first record
//! (`00000000000000000000.log`), written in order; only the last one (the active segment)
//! grows. At start every segment is read and checked ([`recover`]):
//!
//! * zeros after the last batch are free space (segments are preallocated, see
//!   [`super::appender`]), in any segment;
//! * an invalid or incomplete batch at the end of the last segment, with no valid batch
//!   after it, is a torn tail (a crash during a write that was never acknowledged): the file
//!   is cut there;
//! * anything else invalid (in an earlier segment, or followed by a valid batch) is
//!   corruption of data that was acknowledged: the start stops with the file and byte
//!   offset, rather than lose or skip it silently;
//! * the segments must follow each other without a gap.

use std::fs::{File, OpenOptions};
use std::io::Read as _;
use std::path::{Path, PathBuf};

use super::LogError;
use super::frame::{self, FrameError};

/// File name suffix of segments.
const SUFFIX: &str = ".log";

/// A segment file and the offsets it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Offset of its first record.
    pub base: u64,
    pub path: PathBuf,
}

impl Segment {
    pub fn new(dir: &Path, base: u64) -> Self {
        Self {
            base,
            path: dir.join(format!("{base:020}{SUFFIX}")),
        }
    }
}

/// The segments of `dir`, oldest first. Files that are not segments are left alone.
pub fn list(dir: &Path) -> Result<Vec<Segment>, LogError> {
    let entries = std::fs::read_dir(dir).map_err(|error| LogError::io(dir, error))?;
    let mut segments = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|error| LogError::io(dir, error))?;
        let name = entry.file_name();
        let Some(base) = name
            .to_str()
            .and_then(|name| name.strip_suffix(SUFFIX))
            .filter(|digits| digits.len() == 20)
            .and_then(|digits| digits.parse::<u64>().ok())
        else {
            continue;
        };
        segments.push(Segment {
            base,
            path: entry.path(),
        });
    }
    segments.sort_by_key(|segment| segment.base);
    Ok(segments)
}

/// What recovery found.
#[derive(Debug)]
pub struct Recovered {
    /// Every segment, oldest first; the last is the active one.
    pub segments: Vec<Segment>,
    /// The offset after the last record.
    pub end: u64,
    /// The active segment's length in bytes (without a torn tail).
    pub active_len: u64,
    /// A torn tail found at the end of the active segment, not cut yet.
    pub torn: Option<Torn>,
}

/// The bytes of a write that was never acknowledged, at the end of the log.
#[derive(Debug)]
pub struct Torn {
    pub path: PathBuf,
    /// Where the torn batch starts.
    pub at: u64,
    /// Bytes from there to the end of the file.
    pub removed: u64,
}

impl Torn {
    /// Cuts the torn bytes off the file, durably.
    pub fn cut(&self) -> Result<(), LogError> {
        tracing::warn!(
            segment = %self.path.display(),
            byte = self.at,
            removed = self.removed,
            "torn tail cut off the log (a write that was never acknowledged)"
        );
        truncate(&self.path, self.at)
    }
}

/// Checks the segments of `dir` that hold records at or past `checkpoint` and finds a torn
/// tail (without cutting it: the caller first checks the log against the store). Segments
/// wholly below the checkpoint are applied: a crash may have left them between the store's
/// commit and their deletion. They are listed but not read (whatever they hold, the store
/// has it), and not deleted here either: the consumer deletes them once the store made its
/// commits durable, and a log that does not match the store is left as it is. `None` when
/// there is no segment.
pub fn recover(dir: &Path, checkpoint: u64) -> Result<Option<Recovered>, LogError> {
    let segments = list(dir)?;
    let Some(last_index) = segments.len().checked_sub(1) else {
        return Ok(None);
    };
    let applied = segments
        .windows(2)
        .take_while(|pair| pair[1].base <= checkpoint)
        .count();
    let mut end = segments[applied].base;
    let mut active_len = 0;
    let mut torn_tail = None;
    for (index, segment) in segments.iter().enumerate().skip(applied) {
        if segment.base != end {
            return Err(LogError::Gap {
                path: segment.path.clone(),
                expected: end,
                found: segment.base,
            });
        }
        let bytes = read_all(&segment.path)?;
        let checked = check(&bytes, segment.base);
        end = checked.end;
        active_len = checked.valid_len as u64;
        if let Some((at, error)) = checked.failure
            && !is_free_space(&bytes[at..])
        {
            let torn = index == last_index && frame::next_valid_header(&bytes, at + 1).is_none();
            if !torn {
                return Err(LogError::Corrupt {
                    path: segment.path.clone(),
                    byte: at as u64,
                    reason: error.to_string(),
                });
            }
            tracing::debug!(%error, "the last batch of the log is torn");
            torn_tail = Some(Torn {
                path: segment.path.clone(),
                at: at as u64,
                removed: (bytes.len() - at) as u64,
            });
        }
    }
    Ok(Some(Recovered {
        segments,
        end,
        active_len,
        torn: torn_tail,
    }))
}

/// How far the bytes of one segment are valid.
struct Checked {
    /// Bytes of whole, valid batches from the start.
    valid_len: usize,
    /// The offset after the last valid record.
    end: u64,
    /// Where the first invalid batch starts, and why.
    failure: Option<(usize, FrameError)>,
}

fn check(bytes: &[u8], base: u64) -> Checked {
    let mut at = 0;
    let mut end = base;
    while at < bytes.len() {
        match frame::parse_batch(&bytes[at..]) {
            Ok(batch) if batch.header.base_offset == end => {
                at += batch.header.batch_len();
                end = batch.header.end_offset();
            }
            Ok(batch) => {
                let reason = format!(
                    "batch at offset {} where offset {end} was expected",
                    batch.header.base_offset
                );
                return Checked {
                    valid_len: at,
                    end,
                    failure: Some((at, FrameError::Invalid(reason))),
                };
            }
            Err(error) => {
                return Checked {
                    valid_len: at,
                    end,
                    failure: Some((at, error)),
                };
            }
        }
    }
    Checked {
        valid_len: at,
        end,
        failure: None,
    }
}

/// Whether `bytes` are preallocated space that no batch reached: zeros only.
pub fn is_free_space(bytes: &[u8]) -> bool {
    bytes.iter().all(|&byte| byte == 0)
}

fn read_all(path: &Path) -> Result<Vec<u8>, LogError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut file| file.read_to_end(&mut bytes))
        .map_err(|error| LogError::io(path, error))?;
    Ok(bytes)
}

fn truncate(path: &Path, len: u64) -> Result<(), LogError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|error| LogError::io(path, error))?;
    file.set_len(len)
        .and_then(|()| file.sync_all())
        .map_err(|error| LogError::io(path, error))
}

/// Makes a directory's entries (a created or deleted segment) durable.
pub fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|directory| directory.sync_all())
        .map_err(|error| LogError::io(dir, error))
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    fn write_segment(dir: &Path, base: u64, batches: &[(u64, &[&[u8]])]) -> PathBuf {
        let segment = Segment::new(dir, base);
        let mut file = File::create(&segment.path).unwrap();
        let mut buffer = Vec::new();
        for (batch_base, records) in batches {
            frame::encode_batch(*batch_base, records, &mut buffer);
            file.write_all(&buffer).unwrap();
        }
        segment.path
    }

    #[test]
    fn segments_follow_each_other_and_the_end_is_their_last_offset() {
        let dir = tempfile::tempdir().unwrap();
        write_segment(dir.path(), 0, &[(0, &[b"a", b"b"]), (2, &[b"c"])]);
        write_segment(dir.path(), 3, &[(3, &[b"d"])]);
        std::fs::write(dir.path().join("notes.txt"), "not a segment").unwrap();
        let recovered = recover(dir.path(), 0).unwrap().unwrap();
        assert_eq!(recovered.end, 4);
        assert_eq!(recovered.segments.len(), 2);
        assert!(recovered.torn.is_none());
        // The first segment wholly applied: listed, not read, not deleted (the consumer
        // deletes it once the store's commits are durable). Corrupt, it stops nothing.
        let first = &recovered.segments[0].path;
        let mut bytes = std::fs::read(first).unwrap();
        bytes[frame::HEADER_BYTES + frame::RECORD_HEADER_BYTES] ^= 0x01;
        std::fs::write(first, &bytes).unwrap();
        assert!(recover(dir.path(), 0).is_err(), "read when not applied");
        let recovered = recover(dir.path(), 3).unwrap().unwrap();
        assert_eq!(recovered.segments.len(), 2);
        assert_eq!(recovered.end, 4);
        assert_eq!(list(dir.path()).unwrap().len(), 2);
    }

    #[test]
    fn a_torn_tail_is_cut_and_nothing_else_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_segment(dir.path(), 0, &[(0, &[b"a", b"b"]), (2, &[b"c", b"d"])]);
        let whole = std::fs::metadata(&path).unwrap().len();
        // The last batch's write reached the disk in part.
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(whole - 3).unwrap();
        let recovered = recover(dir.path(), 0).unwrap().unwrap();
        assert_eq!(recovered.end, 2);
        let torn = recovered.torn.as_ref().unwrap();
        assert_eq!(torn.removed, whole - 3 - recovered.active_len);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            whole - 3,
            "not cut yet"
        );
        torn.cut().unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            recovered.active_len
        );
        // Garbage where the last batch was (its pages landed out of order).
        let mut garbage = OpenOptions::new().append(true).open(&path).unwrap();
        garbage.write_all(&[0xABu8; 300]).unwrap();
        let recovered = recover(dir.path(), 0).unwrap().unwrap();
        assert_eq!(recovered.end, 2);
        assert_eq!(recovered.torn.map(|torn| torn.removed), Some(300));
    }

    #[test]
    fn a_corrupt_record_before_valid_ones_stops_the_start_naming_file_and_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_segment(dir.path(), 0, &[(0, &[b"aaaa"]), (1, &[b"bbbb"])]);
        let mut bytes = std::fs::read(&path).unwrap();
        // A flipped byte inside the first batch's record: the second batch is valid.
        bytes[frame::HEADER_BYTES + frame::RECORD_HEADER_BYTES + 1] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let error = recover(dir.path(), 0).unwrap_err();
        match &error {
            LogError::Corrupt { path: at, byte, .. } => {
                assert_eq!(at, &path);
                assert_eq!(*byte, 0);
            }
            other => panic!("expected corruption, got {other}"),
        }
        assert!(error.to_string().contains(&path.display().to_string()));
        assert!(error.to_string().contains("byte 0"), "{error}");
    }

    #[test]
    fn corruption_in_an_earlier_segment_is_never_cut() {
        let dir = tempfile::tempdir().unwrap();
        let first = write_segment(dir.path(), 0, &[(0, &[b"a"]), (1, &[b"b"])]);
        write_segment(dir.path(), 2, &[(2, &[b"c"])]);
        let len = std::fs::metadata(&first).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&first)
            .unwrap()
            .set_len(len - 1)
            .unwrap();
        assert!(matches!(
            recover(dir.path(), 0),
            Err(LogError::Corrupt { .. })
        ));
    }

    #[test]
    fn preallocated_zeros_after_the_last_batch_are_free_space_in_any_segment() {
        let dir = tempfile::tempdir().unwrap();
        let first = write_segment(dir.path(), 0, &[(0, &[b"a", b"b"])]);
        let second = write_segment(dir.path(), 2, &[(2, &[b"c"])]);
        for path in [&first, &second] {
            let mut file = OpenOptions::new().append(true).open(path).unwrap();
            file.write_all(&[0u8; 4096]).unwrap();
        }
        let len = std::fs::metadata(&second).unwrap().len();
        let recovered = recover(dir.path(), 0).unwrap().unwrap();
        assert_eq!(recovered.end, 3);
        assert!(recovered.torn.is_none());
        assert_eq!(recovered.active_len, len - 4096);
        assert_eq!(std::fs::metadata(&second).unwrap().len(), len, "not cut");
    }

    #[test]
    fn a_missing_segment_is_a_gap() {
        let dir = tempfile::tempdir().unwrap();
        write_segment(dir.path(), 0, &[(0, &[b"a"])]);
        write_segment(dir.path(), 5, &[(5, &[b"f"])]);
        assert!(matches!(
            recover(dir.path(), 0),
            Err(LogError::Gap {
                expected: 1,
                found: 5,
                ..
            })
        ));
    }
}
