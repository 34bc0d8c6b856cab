//! Each owned partition's read position, and the one rule that judges a record read against
//! it: taken, a repeat (dropped), behind a checkpoint or a seek back (dropped quietly), or
//! past a gap (dropped, and the partition read again from the missing offset).
//!
//! Why: the store's checkpoint guards what is stored, not what is pending, and a broker can
//! answer wrongly. tansu 0.6.0's memory engine advances a partition's high watermark before
//! it stores the batch, so a fetch racing two producers gets a later batch while an earlier
//! one is missing, then that later batch again; and a fetch from inside a stored batch skips
//! to the next one (docs/BENCHMARKS.md, "Exactness on tansu"). Apache Kafka does neither on
//! these topics (no compaction, no transactions), so a gap is read again before it is taken.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::plan::PartitionKey;

/// How long a gap is read again before it is taken as the log's own (compaction,
/// transaction markers). tansu's missing batch is stored microseconds later.
pub const GAP_PATIENCE: Duration = Duration::from_secs(2);
/// Seeks back, carried out, that a gap must also have survived before it is taken.
pub const GAP_MIN_SEEKS: u32 = 4;
/// Least time between two attempts at a seek back that failed.
pub const GAP_RESEEK: Duration = Duration::from_millis(50);

/// How far before the missing offset a seek back starts, after `seeks` carried out. The
/// first two start at the missing offset (tansu's race is over by then); later ones start
/// further back, since tansu answers a fetch from inside a batch from the next batch.
fn seek_span(seeks: u32) -> i64 {
    match seeks {
        0 | 1 => 0,
        2 => 64,
        3 => 1024,
        _ => 16_384,
    }
}

#[derive(Clone, Copy, Debug)]
struct Position {
    /// The offset after the last record taken (or the stored checkpoint).
    next: i64,
    /// `next` is the stored checkpoint and nothing was taken since: a record below it is
    /// one the store holds (a Kafka commit lags the checkpoint after a crash).
    at_checkpoint: bool,
    /// A gap after `next` being read again.
    gap: Option<Gap>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Gap {
    since: Instant,
    /// When the last seek back was asked for, and whether the source carried it out: a
    /// record read after a seek carried out comes from reading again (librdkafka drops
    /// what it fetched before), so the gap is still there and is sought again at once.
    last_seek: Instant,
    carried_out: bool,
    /// Seeks back the source carried out.
    seeks: u32,
}

/// What a record read is, against its partition's position.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadStep {
    /// The next record (or the first of a partition without a position): taken.
    Take,
    /// Read already since the assignment: dropped, so that a batch never holds it twice.
    Repeat { next: i64 },
    /// Below the position while that is expected: the store's checkpoint (`stored`), or a
    /// seek back that starts early. Dropped quietly.
    Behind { stored: bool },
    /// Records are missing before it: dropped; read the partition again from `from`.
    SeekBack { next: i64, from: i64 },
    /// Records are missing and the last seek back failed moments ago: dropped.
    AwaitSeek,
    /// The gap outlasted [`GAP_PATIENCE`] and [`GAP_MIN_SEEKS`]: the log has no such
    /// records; taken.
    TakeOverGap { next: i64 },
}

/// The read positions of the partitions a consumer owns.
#[derive(Debug, Default)]
pub struct Positions {
    positions: HashMap<PartitionKey, Position>,
}

impl Positions {
    pub fn has(&self, key: &PartitionKey) -> bool {
        self.positions.contains_key(key)
    }

    /// Starts a partition at its stored checkpoint.
    pub fn start_at_checkpoint(&mut self, key: PartitionKey, next: i64) {
        self.positions.insert(
            key,
            Position {
                next,
                at_checkpoint: true,
                gap: None,
            },
        );
    }

    pub fn forget(&mut self, key: &PartitionKey) {
        self.positions.remove(key);
    }

    /// Judges a record at `offset` and moves the position accordingly. `seek_gaps`: the
    /// source can read a partition again (Kafka); otherwise a gap is taken at once.
    pub fn read(
        &mut self,
        key: &PartitionKey,
        offset: i64,
        now: Instant,
        seek_gaps: bool,
    ) -> ReadStep {
        let step = judge(self.positions.get(key), offset, now, seek_gaps);
        match step {
            ReadStep::Take | ReadStep::TakeOverGap { .. } => {
                self.positions.insert(
                    key.clone(),
                    Position {
                        next: offset + 1,
                        at_checkpoint: false,
                        gap: None,
                    },
                );
            }
            ReadStep::SeekBack { .. } => {
                if let Some(position) = self.positions.get_mut(key) {
                    let gap = position.gap.get_or_insert(Gap {
                        since: now,
                        last_seek: now,
                        carried_out: false,
                        seeks: 0,
                    });
                    gap.last_seek = now;
                    gap.carried_out = false;
                }
            }
            ReadStep::Repeat { .. } | ReadStep::Behind { .. } | ReadStep::AwaitSeek => {}
        }
        step
    }

    /// The source carried out the seek back that the last [`ReadStep::SeekBack`] asked for.
    pub fn sought(&mut self, key: &PartitionKey) {
        if let Some(gap) = self
            .positions
            .get_mut(key)
            .and_then(|position| position.gap.as_mut())
        {
            gap.seeks += 1;
            gap.carried_out = true;
        }
    }

    /// Fetching resumed after a pause: librdkafka resumes after the last record it handed
    /// out, undoing a seek back, so gaps start their patience and seeks anew.
    pub fn resumed(&mut self, now: Instant) {
        for gap in self
            .positions
            .values_mut()
            .filter_map(|position| position.gap.as_mut())
        {
            *gap = Gap {
                since: now,
                last_seek: now,
                carried_out: true,
                seeks: 0,
            };
        }
    }
}

/// The rule, pure.
fn judge(position: Option<&Position>, offset: i64, now: Instant, seek_gaps: bool) -> ReadStep {
    let Some(position) = position else {
        return ReadStep::Take;
    };
    let next = position.next;
    if offset < next {
        return if position.at_checkpoint || position.gap.is_some() {
            ReadStep::Behind {
                stored: position.at_checkpoint,
            }
        } else {
            ReadStep::Repeat { next }
        };
    }
    if offset == next || !seek_gaps {
        return ReadStep::Take;
    }
    match position.gap {
        None => ReadStep::SeekBack { next, from: next },
        Some(gap)
            if now.duration_since(gap.since) >= GAP_PATIENCE && gap.seeks >= GAP_MIN_SEEKS =>
        {
            ReadStep::TakeOverGap { next }
        }
        Some(gap) if gap.carried_out || now.duration_since(gap.last_seek) >= GAP_RESEEK => {
            ReadStep::SeekBack {
                next,
                from: (next - seek_span(gap.seeks)).max(0),
            }
        }
        Some(_) => ReadStep::AwaitSeek,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(partition: i32) -> PartitionKey {
        ("referral-events".to_owned(), partition)
    }

    #[test]
    fn a_repeat_is_dropped_and_the_position_only_moves_forward() {
        let mut positions = Positions::default();
        let now = Instant::now();
        assert_eq!(positions.read(&key(0), 10, now, true), ReadStep::Take);
        assert_eq!(positions.read(&key(0), 11, now, true), ReadStep::Take);
        // A broker answering with records before the fetch position.
        assert_eq!(
            positions.read(&key(0), 5, now, true),
            ReadStep::Repeat { next: 12 }
        );
        assert_eq!(
            positions.read(&key(0), 11, now, true),
            ReadStep::Repeat { next: 12 }
        );
        assert_eq!(positions.read(&key(0), 12, now, true), ReadStep::Take);
        // Partitions are independent.
        assert_eq!(positions.read(&key(1), 3, now, true), ReadStep::Take);
        // A source that cannot seek (the file log) takes a gap at once.
        assert_eq!(positions.read(&key(0), 20, now, false), ReadStep::Take);
        assert_eq!(
            positions.read(&key(0), 20, now, false),
            ReadStep::Repeat { next: 21 }
        );
    }

    #[test]
    fn tansus_race_is_read_again_from_the_missing_offset() {
        let mut positions = Positions::default();
        let start = Instant::now();
        assert_eq!(positions.read(&key(0), 100, start, true), ReadStep::Take);
        // 101..=116 not stored yet, 117 answered: read again from 101.
        assert_eq!(
            positions.read(&key(0), 117, start, true),
            ReadStep::SeekBack {
                next: 101,
                from: 101
            }
        );
        positions.sought(&key(0));
        // Read again: the missing records come, in order, and the later ones after them.
        for offset in 101..=200 {
            assert_eq!(positions.read(&key(0), offset, start, true), ReadStep::Take);
        }
        // Taken past the gap: a record below the position is a repeat again.
        assert_eq!(
            positions.read(&key(0), 150, start, true),
            ReadStep::Repeat { next: 201 }
        );
    }

    #[test]
    fn a_gap_is_taken_only_after_the_patience_and_seeks_carried_out() {
        let mut positions = Positions::default();
        let start = Instant::now();
        assert_eq!(positions.read(&key(0), 2000, start, true), ReadStep::Take);
        let mut at = start;
        let mut froms = Vec::new();
        let last = loop {
            match positions.read(&key(0), 2100, at, true) {
                ReadStep::SeekBack { next, from } => {
                    assert_eq!(next, 2001);
                    froms.push(from);
                    positions.sought(&key(0));
                    // A seek that starts early: what was taken already is dropped quietly.
                    assert_eq!(
                        positions.read(&key(0), 1990, at + GAP_RESEEK, true),
                        ReadStep::Behind { stored: false }
                    );
                    at += GAP_RESEEK;
                }
                step => break step,
            }
        };
        assert_eq!(froms[..5], [2001, 2001, 2001 - 64, 2001 - 1024, 0]);
        assert!(at >= start + GAP_PATIENCE);
        assert_eq!(last, ReadStep::TakeOverGap { next: 2001 });
        assert_eq!(positions.read(&key(0), 2101, at, true), ReadStep::Take);
        // A later gap has its own patience.
        assert_eq!(
            positions.read(&key(0), 2200, at, true),
            ReadStep::SeekBack {
                next: 2102,
                from: 2102
            }
        );
    }

    #[test]
    fn a_gap_is_not_taken_while_seeks_back_fail_or_wait_for_a_paused_partition() {
        let mut positions = Positions::default();
        let start = Instant::now();
        assert_eq!(positions.read(&key(0), 10, start, true), ReadStep::Take);
        assert!(matches!(
            positions.read(&key(0), 20, start, true),
            ReadStep::SeekBack { .. }
        ));
        // That seek failed: not asked for again at once.
        assert_eq!(
            positions.read(&key(0), 21, start, true),
            ReadStep::AwaitSeek
        );
        // Long past the patience, but no seek was carried out: sought again, not taken.
        let late = start + GAP_PATIENCE * 10;
        assert_eq!(
            positions.read(&key(0), 21, late, true),
            ReadStep::SeekBack { next: 11, from: 11 }
        );
        for seek in 0..GAP_MIN_SEEKS {
            positions.sought(&key(0));
            let at = late + GAP_RESEEK * (seek + 1);
            let step = positions.read(&key(0), 21, at, true);
            if seek + 1 < GAP_MIN_SEEKS {
                assert!(matches!(step, ReadStep::SeekBack { .. }), "{step:?}");
            } else {
                assert_eq!(step, ReadStep::TakeOverGap { next: 11 });
            }
        }
    }

    #[test]
    fn fetching_resumed_after_a_pause_starts_a_gaps_patience_anew() {
        let mut positions = Positions::default();
        let start = Instant::now();
        assert_eq!(positions.read(&key(0), 10, start, true), ReadStep::Take);
        let mut at = start;
        for _ in 0..GAP_MIN_SEEKS {
            assert!(matches!(
                positions.read(&key(0), 20, at, true),
                ReadStep::SeekBack { .. }
            ));
            positions.sought(&key(0));
            at += GAP_RESEEK;
        }
        // Paused (the store failed) for longer than the patience: the seeks were undone.
        let resumed = start + GAP_PATIENCE * 3;
        positions.resumed(resumed);
        assert_eq!(
            positions.read(&key(0), 20, resumed, true),
            ReadStep::SeekBack { next: 11, from: 11 }
        );
    }

    #[test]
    fn a_partition_started_at_its_checkpoint_reads_a_skipped_batch_start_again() {
        let mut positions = Positions::default();
        positions.start_at_checkpoint(key(0), 500);
        let now = Instant::now();
        // tansu answers a fetch from 500, inside the batch 490..=509, from 510 on.
        let mut at = now;
        let mut froms = Vec::new();
        while froms.len() < 3 {
            match positions.read(&key(0), 510, at, true) {
                ReadStep::SeekBack { from, .. } => {
                    froms.push(from);
                    positions.sought(&key(0));
                }
                step => panic!("unexpected {step:?}"),
            }
            at += GAP_RESEEK;
        }
        assert_eq!(froms, [500, 500, 436]);
        // From 436: what the store holds is dropped quietly, the rest taken in order.
        for offset in 436..500 {
            assert_eq!(
                positions.read(&key(0), offset, at, true),
                ReadStep::Behind { stored: true }
            );
        }
        for offset in 500..520 {
            assert_eq!(positions.read(&key(0), offset, at, true), ReadStep::Take);
        }
        assert_eq!(
            positions.read(&key(0), 499, at, true),
            ReadStep::Repeat { next: 520 }
        );
        positions.forget(&key(0));
        assert!(!positions.has(&key(0)));
    }
}
