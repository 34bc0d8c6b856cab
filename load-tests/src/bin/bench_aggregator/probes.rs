//! The probe clicks of the freshness phase: the 201s each probe mentor got, the probes not
//! yet visible in the totals, and the one poller that asks ClickHouse for all of them.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use referral_load_tests::services::ClickHouseServer;

use crate::DATABASE;

/// How long probes may stay invisible after the load ended before they count as lost.
const PROBE_DRAIN: Duration = Duration::from_secs(20);

pub fn probe_mentor(index: u64) -> String {
    format!("usr_probe_{index}")
}

pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the probes of the load have seen: 201s per probe mentor, and the probes whose
/// effect is not yet visible in the totals.
pub struct Probes {
    /// 201 answers per probe mentor so far (warm-up included).
    pub acked: Vec<u64>,
    /// Per probe mentor: (total that makes the probe visible, when its 201 arrived).
    pub outstanding: Vec<VecDeque<(u64, Instant)>>,
    pub recording: bool,
    pub recorded: u64,
    pub freshness: Vec<Duration>,
}

impl Probes {
    pub fn new(mentors: u64) -> Self {
        let mentors = usize::try_from(mentors).unwrap_or(usize::MAX);
        Self {
            acked: vec![0; mentors],
            outstanding: vec![VecDeque::new(); mentors],
            recording: false,
            recorded: 0,
            freshness: Vec::new(),
        }
    }

    pub fn acknowledged(&mut self, mentor: usize, at: Instant) {
        self.acked[mentor] += 1;
        if self.recording {
            self.recorded += 1;
            self.outstanding[mentor].push_back((self.acked[mentor], at));
        }
    }
}

#[derive(Debug, Default)]
pub struct PollerStats {
    pub queries: u64,
    pub query_time: Duration,
    pub errors: u64,
    pub last_error: Option<String>,
}

/// One thread, one query per tick for all probe mentors with outstanding probes.
pub fn poll_probes(
    clickhouse: &ClickHouseServer,
    probes: &Mutex<Probes>,
    load_done: &AtomicBool,
    interval: Duration,
    mentors: u64,
) -> PollerStats {
    let mut stats = PollerStats::default();
    let mut drain_deadline = None;
    loop {
        let tick = Instant::now();
        let waiting: Vec<usize> = lock(probes)
            .outstanding
            .iter()
            .enumerate()
            .filter(|(_, queue)| !queue.is_empty())
            .map(|(mentor, _)| mentor)
            .collect();
        if load_done.load(Ordering::Relaxed) {
            let deadline = *drain_deadline.get_or_insert_with(|| tick + PROBE_DRAIN);
            if waiting.is_empty() || tick > deadline {
                return stats;
            }
        }
        if !waiting.is_empty() {
            let list = waiting
                .iter()
                .map(|&mentor| format!("'{}'", probe_mentor(mentor as u64)))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "SELECT mentor_id, toInt64(sum(clicks)) FROM {DATABASE}.mentor_totals \
                 WHERE grain = 'day' AND mentor_id IN ({list}) GROUP BY mentor_id FORMAT TSV"
            );
            let answer = clickhouse.try_query(&sql);
            let received = Instant::now();
            stats.queries += 1;
            stats.query_time += received.duration_since(tick);
            match answer {
                Ok(text) => {
                    let totals: HashMap<usize, u64> = text
                        .lines()
                        .filter_map(|line| {
                            let (mentor, total) = line.split_once('\t')?;
                            let index = mentor.strip_prefix("usr_probe_")?.parse().ok()?;
                            Some((index, total.parse().ok()?))
                        })
                        .filter(|(index, _)| (*index as u64) < mentors)
                        .collect();
                    let mut probes = lock(probes);
                    let Probes {
                        outstanding,
                        freshness,
                        ..
                    } = &mut *probes;
                    for mentor in waiting {
                        let total = totals.get(&mentor).copied().unwrap_or(0);
                        let queue = &mut outstanding[mentor];
                        while let Some(&(expected, acked_at)) = queue.front() {
                            if expected > total {
                                break;
                            }
                            queue.pop_front();
                            freshness.push(received.saturating_duration_since(acked_at));
                        }
                    }
                }
                Err(error) => {
                    stats.errors += 1;
                    stats.last_error = Some(error);
                }
            }
        }
        thread::sleep(interval.saturating_sub(tick.elapsed()));
    }
}
