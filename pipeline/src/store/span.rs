//! What a mentor's time series reads: whole UTC hours from the materialized hourly totals,
//! and only the hours a bucket boundary cuts (a zone such as Asia/Kolkata, the ragged ends
//! of a period) per 15-minute slot from the attributions. A 90-day daily series in
//! Kolkata then reads ~2,000 hourly rows and 90 hours of clicks, not 90 days of clicks.
//! The split is decided here, without I/O; both stores read what it says.

use std::collections::BTreeSet;

use referral_schemas::timestamp::HOUR_MS;

/// A mentor's counts wanted over `[from, to)` (ms; `from` `None`: unbounded).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlotSpan {
    pub from: Option<i64>,
    pub to: i64,
    /// Hours (since the epoch) that must be read per slot: those a bucket boundary falls
    /// inside. Hours outside the span are ignored.
    pub fine_hours: BTreeSet<i64>,
}

/// How a [`SlotSpan`] is read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpanReads {
    /// Whole hours `[from, to)` read from the hourly totals (`from` `None`: unbounded),
    /// except those in `fine`; `None` when the span holds no whole hour.
    pub hours: Option<(Option<i64>, i64)>,
    /// Hours inside `hours` read per slot instead.
    pub fine: BTreeSet<i64>,
    /// `[from, to)` ranges in ms read per slot from the attributions: sorted, disjoint and
    /// not adjacent (touching ranges are merged).
    pub slots: Vec<(i64, i64)>,
}

impl SlotSpan {
    /// The span over `[from, to)` with no bucket boundary off the hour.
    pub fn new(from: Option<i64>, to: i64) -> Self {
        Self {
            from,
            to,
            fine_hours: BTreeSet::new(),
        }
    }

    /// Names every hour that `boundaries` (instants in ms) fall strictly inside as fine.
    pub fn cut_at(mut self, boundaries: impl IntoIterator<Item = i64>) -> Self {
        self.fine_hours.extend(
            boundaries
                .into_iter()
                .filter(|at| at.rem_euclid(HOUR_MS) != 0)
                .map(|at| at.div_euclid(HOUR_MS)),
        );
        self
    }

    pub fn reads(&self) -> SpanReads {
        let mut reads = SpanReads::default();
        if let Some(from) = self.from
            && from >= self.to
        {
            return reads;
        }
        // Whole hours: from the first hour starting at or after `from` to the last one
        // ending at or before `to`.
        let first = self.from.map(|from| ceil_div(from, HOUR_MS));
        let end = self.to.div_euclid(HOUR_MS);
        let mut ranges = Vec::new();
        match (self.from, first) {
            (Some(from), Some(first)) if first >= end => ranges.push((from, self.to)),
            _ => {
                if let (Some(from), Some(first)) = (self.from, first)
                    && from < first * HOUR_MS
                {
                    ranges.push((from, first * HOUR_MS));
                }
                for &hour in self
                    .fine_hours
                    .range(first.unwrap_or(i64::MIN)..end.max(first.unwrap_or(i64::MIN)))
                {
                    reads.fine.insert(hour);
                    ranges.push((hour * HOUR_MS, (hour + 1) * HOUR_MS));
                }
                if end * HOUR_MS < self.to {
                    ranges.push((end * HOUR_MS, self.to));
                }
                reads.hours = Some((first, end));
            }
        }
        for (from, to) in ranges {
            match reads.slots.last_mut() {
                Some(last) if last.1 >= from => last.1 = last.1.max(to),
                _ => reads.slots.push((from, to)),
            }
        }
        reads
    }
}

impl SpanReads {
    /// The slot ranges without the fine hours in `empty`: hours whose hourly totals say
    /// nothing is there to split, so a per-slot read of them would find nothing (the
    /// ragged ends, not whole hours of the totals, always stay).
    pub fn slots_without(&self, empty: &BTreeSet<i64>) -> Vec<(i64, i64)> {
        let mut kept = Vec::new();
        for &(from, to) in &self.slots {
            let mut start = from;
            let first = ceil_div(from, HOUR_MS);
            let end = to.div_euclid(HOUR_MS);
            for &hour in empty.range(first..end.max(first)) {
                if !self.fine.contains(&hour) {
                    continue;
                }
                if start < hour * HOUR_MS {
                    kept.push((start, hour * HOUR_MS));
                }
                start = (hour + 1) * HOUR_MS;
            }
            if start < to {
                kept.push((start, to));
            }
        }
        kept
    }
}

fn ceil_div(value: i64, by: i64) -> i64 {
    let floor = value.div_euclid(by);
    if value.rem_euclid(by) == 0 {
        floor
    } else {
        floor + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = HOUR_MS;

    #[test]
    fn whole_hours_are_read_from_the_hourly_totals_alone() {
        let reads = SlotSpan::new(Some(2 * H), 50 * H).reads();
        assert_eq!(reads.hours, Some((Some(2), 50)));
        assert!(reads.slots.is_empty());
        assert!(reads.fine.is_empty());
    }

    #[test]
    fn fine_hours_with_nothing_in_them_are_left_out_of_the_slot_reads() {
        let half = H / 2;
        let reads = SlotSpan::new(Some(10 * H + half), 40 * H)
            .cut_at([12 * H + half, 13 * H + half, 20 * H + half, 30 * H + half])
            .reads();
        assert_eq!(
            reads.slots,
            vec![
                (10 * H + half, 11 * H),
                (12 * H, 14 * H),
                (20 * H, 21 * H),
                (30 * H, 31 * H)
            ]
        );
        // Hour 13 (inside a merged range), 20 and 30 are empty; hour 10 is the ragged start
        // and 25 is no fine hour: both stay whatever the totals say.
        let empty = BTreeSet::from([10, 13, 20, 25, 30]);
        assert_eq!(
            reads.slots_without(&empty),
            vec![(10 * H + half, 11 * H), (12 * H, 13 * H)]
        );
        assert_eq!(reads.slots_without(&BTreeSet::new()), reads.slots);
    }

    #[test]
    fn ragged_ends_are_read_per_slot() {
        let reads = SlotSpan::new(Some(2 * H + 1_800_000), 50 * H + 900_000).reads();
        assert_eq!(reads.hours, Some((Some(3), 50)));
        assert_eq!(
            reads.slots,
            vec![(2 * H + 1_800_000, 3 * H), (50 * H, 50 * H + 900_000)]
        );
    }

    /// Kolkata's local midnights fall at half past a UTC hour: only those hours are fine.
    #[test]
    fn hours_a_boundary_cuts_are_read_per_slot_and_merged_when_adjacent() {
        let half = H / 2;
        let span = SlotSpan::new(Some(10 * H + half), 60 * H + half).cut_at([
            10 * H + half,
            34 * H + half,
            35 * H + half,
            58 * H,
            60 * H + half,
        ]);
        let reads = span.reads();
        assert_eq!(reads.hours, Some((Some(11), 60)));
        assert_eq!(reads.fine, BTreeSet::from([34, 35]));
        assert_eq!(
            reads.slots,
            vec![
                (10 * H + half, 11 * H),
                (34 * H, 36 * H),
                (60 * H, 60 * H + half)
            ]
        );
    }

    #[test]
    fn a_span_inside_one_hour_is_read_per_slot() {
        let reads = SlotSpan::new(Some(5 * H + 100), 5 * H + 200).reads();
        assert_eq!(reads.hours, None);
        assert_eq!(reads.slots, vec![(5 * H + 100, 5 * H + 200)]);
        assert_eq!(
            SlotSpan::new(Some(5 * H), 5 * H).reads(),
            SpanReads::default()
        );
    }

    #[test]
    fn an_unbounded_start_reads_every_hour_before_the_end() {
        let reads = SlotSpan::new(None, 7 * H + 5).cut_at([3 * H + 1]).reads();
        assert_eq!(reads.hours, Some((None, 7)));
        assert_eq!(reads.fine, BTreeSet::from([3]));
        assert_eq!(reads.slots, vec![(3 * H, 4 * H), (7 * H, 7 * H + 5)]);
    }

    /// Every instant of the span is read exactly once: by a whole hour or by a slot range.
    #[test]
    fn whole_hours_and_slot_ranges_cover_the_span_once() {
        let cases = [
            (Some(0), 30 * H),
            (Some(H - 1), 3 * H + 1),
            (Some(7 * H + 9), 19 * H),
            (Some(-5 * H - 7), 2 * H + 3),
            (None, 13 * H + 11),
        ];
        for (from, to) in cases {
            let span = SlotSpan::new(from, to).cut_at([4 * H + 17, 5 * H + 1, 12 * H + 30]);
            let reads = span.reads();
            let step = 60_000;
            let mut at = from.unwrap_or(-2 * H);
            while at < to {
                let hour = at.div_euclid(H);
                let by_hour = reads.hours.is_some_and(|(first, end)| {
                    first.is_none_or(|first| hour >= first) && hour < end
                }) && !reads.fine.contains(&hour);
                let by_slot = reads.slots.iter().any(|(a, b)| *a <= at && at < *b);
                assert!(by_hour ^ by_slot, "{at} in {from:?}..{to}: {reads:?}");
                at += step;
            }
        }
    }
}
