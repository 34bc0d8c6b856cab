//! The bound on clicks handled at once: past it a click is refused at once (503), never
//! queued, so a slow log shows as refusals rather than as a growing backlog of waiting
//! requests.
//!
//! A counter rather than tokio's `Semaphore`: the edge only ever tries to take a slot and
//! never waits for one, and a `Semaphore` permit takes the semaphore's waiter lock when it
//! is dropped (2% of the edge's samples at 256 connections; docs/BENCHMARKS.md).

use std::sync::atomic::{AtomicUsize, Ordering};

/// Slots for clicks in progress.
#[derive(Debug)]
pub struct InFlight {
    taken: AtomicUsize,
    limit: usize,
}

/// One click's slot, given back when dropped.
#[derive(Debug)]
pub struct Slot<'a>(&'a AtomicUsize);

impl InFlight {
    /// At most `limit` slots (at least one).
    pub fn new(limit: usize) -> Self {
        Self {
            taken: AtomicUsize::new(0),
            limit: limit.max(1),
        }
    }

    /// A slot, or `None` when all are taken.
    pub fn try_take(&self) -> Option<Slot<'_>> {
        self.taken
            .fetch_update(Ordering::Acquire, Ordering::Relaxed, |taken| {
                (taken < self.limit).then_some(taken + 1)
            })
            .ok()
            .map(|_| Slot(&self.taken))
    }

    /// Slots taken now.
    pub fn taken(&self) -> usize {
        self.taken.load(Ordering::Relaxed)
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_past_the_limit_and_gives_slots_back() {
        let in_flight = InFlight::new(2);
        let first = in_flight.try_take();
        let second = in_flight.try_take();
        assert!(first.is_some() && second.is_some());
        assert!(
            in_flight.try_take().is_none(),
            "a third slot past a limit of 2"
        );
        drop(first);
        assert_eq!(in_flight.taken(), 1);
        let third = in_flight.try_take();
        assert!(third.is_some(), "a slot given back is taken again");
        drop((second, third));
        assert_eq!(in_flight.taken(), 0);
    }

    #[test]
    fn a_limit_of_zero_still_lets_one_click_through() {
        let in_flight = InFlight::new(0);
        let slot = in_flight.try_take();
        assert!(slot.is_some());
        assert!(in_flight.try_take().is_none());
    }

    #[test]
    fn concurrent_takers_never_exceed_the_limit() {
        let in_flight = std::sync::Arc::new(InFlight::new(3));
        let peak = std::sync::Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let in_flight = in_flight.clone();
                let peak = peak.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        if let Some(_slot) = in_flight.try_take() {
                            peak.fetch_max(in_flight.taken(), Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert!(peak.load(Ordering::Relaxed) <= 3);
        assert_eq!(in_flight.taken(), 0);
    }
}
