//! The on-disk format of the embedded log: batches of framed records.
//!
//! A batch is what one fsync made durable (a group commit):
//!
//! ```text
//!   batch  = header(32 bytes) record*
//!   header = magic u32 | header_crc u32 | base_offset u64 | count u32 | payload_len u32 | reserved u64
//!   record = len u32 | crc u32 | payload (len bytes)
//! ```
//!
//! Little-endian. `header_crc` covers bytes 8..32 of the header; each record's `crc` covers
//! its payload (CRC-32, IEEE). `payload_len` is the size of the records that follow.
//!
//! Why batches and not only records: the appender writes a batch with one write and then
//! fsyncs it, and writes the next batch only after that fsync returned. So a crash can leave
//! only the *last* batch of the log incomplete or garbled (its pages may reach the disk in
//! any order), and any invalid batch followed by a valid one is corruption of data that was
//! durable. That is how recovery tells a torn tail (cut off) from corruption (refused).

use std::fmt;

/// Marks the start of a batch ("RFL1").
pub const MAGIC: u32 = u32::from_le_bytes(*b"RFL1");
/// Size of a batch header.
pub const HEADER_BYTES: usize = 32;
/// Size of a record's frame before its payload.
pub const RECORD_HEADER_BYTES: usize = 8;
/// A batch larger than this is refused as corrupt (a sane length guards allocations).
pub const MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;

/// Bytes a record takes in a batch, its frame included.
pub fn framed_len(record: &[u8]) -> usize {
    RECORD_HEADER_BYTES + record.len()
}

/// Encodes one batch of `records` starting at `base_offset` into `out` (cleared first).
pub fn encode_batch<P: AsRef<[u8]>>(base_offset: u64, records: &[P], out: &mut Vec<u8>) {
    out.clear();
    let payload_len: usize = records
        .iter()
        .map(|record| RECORD_HEADER_BYTES + record.as_ref().len())
        .sum();
    out.reserve(HEADER_BYTES + payload_len);
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes()); // header crc, set below
    out.extend_from_slice(&base_offset.to_le_bytes());
    out.extend_from_slice(&(records.len() as u32).to_le_bytes());
    out.extend_from_slice(&(payload_len as u32).to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes());
    let header_crc = crc32fast::hash(&out[8..HEADER_BYTES]);
    out[4..8].copy_from_slice(&header_crc.to_le_bytes());
    for record in records {
        let record = record.as_ref();
        out.extend_from_slice(&(record.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(record).to_le_bytes());
        out.extend_from_slice(record);
    }
}

/// A decoded batch header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub base_offset: u64,
    pub count: u32,
    pub payload_len: u32,
}

impl Header {
    /// Bytes of the whole batch, header included.
    pub fn batch_len(&self) -> usize {
        HEADER_BYTES + self.payload_len as usize
    }

    /// The offset after the batch's last record.
    pub fn end_offset(&self) -> u64 {
        self.base_offset + u64::from(self.count)
    }
}

/// Why bytes are not a valid batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The bytes end before the batch does (`needed` bytes in all).
    Incomplete { needed: usize },
    /// The bytes are not a valid batch.
    Invalid(String),
}

impl fmt::Display for FrameError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Incomplete { needed } => write!(formatter, "incomplete batch ({needed} bytes)"),
            Self::Invalid(reason) => formatter.write_str(reason),
        }
    }
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// Decodes and checks the header at the start of `bytes`.
pub fn parse_header(bytes: &[u8]) -> Result<Header, FrameError> {
    if bytes.len() < HEADER_BYTES {
        return Err(FrameError::Incomplete {
            needed: HEADER_BYTES,
        });
    }
    if u32_at(bytes, 0) != MAGIC {
        return Err(FrameError::Invalid(
            "no batch starts here (bad magic)".into(),
        ));
    }
    if u32_at(bytes, 4) != crc32fast::hash(&bytes[8..HEADER_BYTES]) {
        return Err(FrameError::Invalid("batch header checksum mismatch".into()));
    }
    let header = Header {
        base_offset: u64_at(bytes, 8),
        count: u32_at(bytes, 16),
        payload_len: u32_at(bytes, 20),
    };
    if header.batch_len() > MAX_BATCH_BYTES {
        return Err(FrameError::Invalid(format!(
            "batch of {} bytes is larger than any this log writes",
            header.batch_len()
        )));
    }
    Ok(header)
}

/// A whole, checked batch.
#[derive(Clone, Debug)]
pub struct Batch<'a> {
    pub header: Header,
    /// The records' frames (the bytes after the header).
    payload: &'a [u8],
}

impl<'a> Batch<'a> {
    /// The records, in offset order, each with its offset.
    pub fn records(&self) -> impl Iterator<Item = (u64, &'a [u8])> + use<'a> {
        let payload = self.payload;
        let base = self.header.base_offset;
        let mut at = 0;
        (0..u64::from(self.header.count)).map(move |index| {
            // Checked by `parse_batch`: every frame is in bounds.
            let len = u32_at(payload, at) as usize;
            let start = at + RECORD_HEADER_BYTES;
            at = start + len;
            (base + index, &payload[start..start + len])
        })
    }
}

/// Decodes and checks the batch at the start of `bytes`: header, every record's length and
/// checksum, and that the records fill the payload exactly.
pub fn parse_batch(bytes: &[u8]) -> Result<Batch<'_>, FrameError> {
    let header = parse_header(bytes)?;
    let len = header.batch_len();
    if bytes.len() < len {
        return Err(FrameError::Incomplete { needed: len });
    }
    let payload = &bytes[HEADER_BYTES..len];
    let mut at = 0;
    for index in 0..header.count {
        if payload.len() - at < RECORD_HEADER_BYTES {
            return Err(FrameError::Invalid(format!(
                "record {index} of the batch at offset {} overruns the batch",
                header.base_offset
            )));
        }
        let record_len = u32_at(payload, at) as usize;
        let crc = u32_at(payload, at + 4);
        let start = at + RECORD_HEADER_BYTES;
        if payload.len() - start < record_len {
            return Err(FrameError::Invalid(format!(
                "record {index} of the batch at offset {} overruns the batch",
                header.base_offset
            )));
        }
        if crc32fast::hash(&payload[start..start + record_len]) != crc {
            return Err(FrameError::Invalid(format!(
                "record at offset {} fails its checksum",
                header.base_offset + u64::from(index)
            )));
        }
        at = start + record_len;
    }
    if at != payload.len() {
        return Err(FrameError::Invalid(format!(
            "the batch at offset {} has {} bytes past its records",
            header.base_offset,
            payload.len() - at
        )));
    }
    Ok(Batch { header, payload })
}

/// The position of the first valid batch header in `bytes` after `from`, if any: used to
/// tell a torn tail (nothing valid follows) from corruption (a valid batch follows).
pub fn next_valid_header(bytes: &[u8], from: usize) -> Option<usize> {
    let magic = MAGIC.to_le_bytes();
    (from..bytes.len().saturating_sub(HEADER_BYTES - 1))
        .filter(|&at| bytes[at..at + 4] == magic)
        .find(|&at| parse_header(&bytes[at..]).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(base: u64, records: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_batch(base, records, &mut out);
        out
    }

    #[test]
    fn a_batch_round_trips_with_offsets() {
        let bytes = batch(41, &[b"one", b"", b"three"]);
        let parsed = parse_batch(&bytes).unwrap();
        assert_eq!(parsed.header.base_offset, 41);
        assert_eq!(parsed.header.end_offset(), 44);
        assert_eq!(parsed.header.batch_len(), bytes.len());
        let records: Vec<(u64, &[u8])> = parsed.records().collect();
        assert_eq!(
            records,
            vec![(41, &b"one"[..]), (42, &b""[..]), (43, &b"three"[..])]
        );
    }

    #[test]
    fn a_cut_batch_is_incomplete_and_a_flipped_byte_is_invalid() {
        let bytes = batch(0, &[b"hello", b"world"]);
        for cut in [0, 10, HEADER_BYTES, bytes.len() - 1] {
            assert!(
                matches!(
                    parse_batch(&bytes[..cut]),
                    Err(FrameError::Incomplete { .. })
                ),
                "cut at {cut}"
            );
        }
        for flip in 0..bytes.len() {
            let mut broken = bytes.clone();
            broken[flip] ^= 0x40;
            assert!(
                matches!(parse_batch(&broken), Err(FrameError::Invalid(_))),
                "flip at {flip} went unnoticed"
            );
        }
    }

    #[test]
    fn a_later_valid_batch_is_found_past_garbage() {
        let mut bytes = batch(0, &[b"a"]);
        let second_at = bytes.len() + 7;
        bytes.extend_from_slice(&[0xAB; 7]);
        bytes.extend_from_slice(&batch(1, &[b"b"]));
        assert_eq!(next_valid_header(&bytes, 1), Some(second_at));
        assert_eq!(next_valid_header(&bytes, second_at + 1), None);
        assert_eq!(next_valid_header(&[0u8; 100], 0), None);
    }
}
