//! The generated history and what it implies: N clicks oldest first (`occurred_at` evenly
//! over the last `--days` days), mentors drawn from a Zipf law (rand_distr's `Zipf`),
//! `--confirmed-pct` confirmed and `--deleted-pct` deleted, ids made as the edge makes them;
//! written through [`Writer`] in flushes of `--flush-rows` clicks, each followed by the
//! flushes of those clicks' commands. Everything is drawn from a `SmallRng` seeded with
//! `--seed`, so a seed replays the same data.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use rand::distr::Distribution;
use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng};
use rand_distr::Zipf;
use referral_load_tests::bench::thousands;
use referral_schemas::Timestamp;
use referral_schemas::messages::{
    AssignCode, ClickEvent, ConfirmConversion, DeleteAttribution, LogEvent,
};
use referral_schemas::timestamp::{DAY_MS, HOUR_MS};
use ulid::Ulid;

use crate::Result;
use crate::options::Options;
use crate::writer::{LoadStats, Writer};

/// How many ids of the generated clicks are kept as get-by-id targets (at most).
const SAMPLED_IDS: u64 = 100_000;

/// The clicks' user agents, in turn: browsers only. Since click verdicts (issue 14), a
/// click without a user agent or with a bot's is not counted (and its confirmation is
/// refused as not_a_visitor), and the truth here counts every live click.
const USER_AGENTS: [&str; 4] = [
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X)",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/126.0",
    "Mozilla/5.0 (Linux; Android 14) Mobile Safari/537.36",
];

/// Days of the history's end whose instants are kept per mentor ([`Recent`]): the 90-day
/// series, measured within a day of the data's end, and `--export-days` up to 90.
pub const RECENT_DAYS: i64 = 91;

/// The benchmark's randomness: a `SmallRng` seeded from `--seed` (deterministic for a seed).
pub struct Rng(SmallRng);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(SmallRng::seed_from_u64(seed))
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.0.random_range(0..n) }
    }

    /// Uniform in `0..len` (0 when `len` is 0).
    pub fn index(&mut self, len: usize) -> usize {
        if len == 0 {
            0
        } else {
            self.0.random_range(0..len)
        }
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.0.random::<f64>() < p
    }

    /// An id as the edge makes it: a ULID with the given creation time.
    pub fn id(&mut self, prefix: &str, at_ms: i64) -> String {
        let random = self.0.random::<u128>() & ((1_u128 << 80) - 1);
        let ulid = Ulid::from_parts(u64::try_from(at_ms).unwrap_or(0), random);
        format!("{prefix}{ulid}")
    }
}

/// Mentor ranks `0..n` drawn with probability proportional to `1 / (rank + 1)^s`:
/// rand_distr's `Zipf`, which draws `k` in `1..=n` with P(k) ~ 1 / k^s, shifted to 0-based.
pub struct MentorZipf {
    zipf: Zipf<f64>,
    n: usize,
}

impl MentorZipf {
    /// `n` >= 1 mentors, exponent `s` >= 0.
    pub fn new(n: usize, s: f64) -> Result<Self> {
        let zipf = Zipf::new(n as f64, s)
            .map_err(|error| format!("no Zipf law over {n} mentors with s = {s}: {error}"))?;
        Ok(Self { zipf, n })
    }

    pub fn sample(&self, rng: &mut Rng) -> usize {
        // A float holding an integer in 1..=n; `as` saturates, and the bounds keep it a rank.
        let k = self.zipf.sample(&mut rng.0) as usize;
        k.clamp(1, self.n) - 1
    }
}

pub fn mentor_id(rank: usize) -> String {
    format!("usr_bench_{rank:05}")
}

pub fn mentor_code(rank: usize) -> String {
    format!("BENCH-{rank:05}")
}

/// What was generated: the truth the answers are checked against.
#[derive(Debug, Default)]
pub struct Dataset {
    pub clicks: u64,
    pub confirmed: u64,
    pub deleted: u64,
    /// Live clicks and live conversions per mentor rank.
    pub mentor_clicks: Vec<u64>,
    pub mentor_conversions: Vec<u64>,
    pub live: u64,
    /// The first attribution of the unfiltered list: (occurred_at, id) of the newest live.
    pub newest_live: (i64, String),
    /// Every k-th click: (id, mentor rank, deleted).
    pub sampled: Vec<(String, usize, bool)>,
    /// The live instants of the last [`RECENT_DAYS`] days, per mentor.
    pub recent: Arc<Recent>,
    pub load: LoadStats,
}

/// A leaderboard row as the generated data has it: (mentor id, clicks, conversions).
pub type Ranked = (String, u64, u64);

/// Leaderboards already computed, by (start in ms, limit).
type Leaderboards = HashMap<(i64, usize), Arc<Vec<Ranked>>>;

/// The live history's instants of the last [`RECENT_DAYS`] days, per mentor rank: what a
/// time series, the leaderboard and a windowed export are checked against (exactly, to
/// the millisecond).
#[derive(Default)]
pub struct Recent {
    /// Instants before this (ms) are not kept: a window starting earlier cannot be checked.
    pub since: i64,
    /// `occurred_at` of every live click, per mentor rank, sorted.
    clicks: Vec<Vec<i64>>,
    /// `confirmed_at` of every live conversion, per mentor rank, sorted.
    conversions: Vec<Vec<i64>>,
    /// Leaderboards by conversions already computed.
    top: Mutex<Leaderboards>,
}

impl fmt::Debug for Recent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recent")
            .field("since", &self.since)
            .field("mentors", &self.clicks.len())
            .field("clicks", &self.clicks.iter().map(Vec::len).sum::<usize>())
            .finish_non_exhaustive()
    }
}

/// How many of `sorted` fall in `[from, to)`.
fn within(sorted: &[i64], from: i64, to: i64) -> u64 {
    let below = |bound: i64| sorted.partition_point(|at| *at < bound);
    below(to).saturating_sub(below(from)) as u64
}

impl Recent {
    fn new(mentors: usize, since: i64) -> Self {
        Self {
            since,
            clicks: vec![Vec::new(); mentors],
            conversions: vec![Vec::new(); mentors],
            top: Mutex::default(),
        }
    }

    /// Given instants (sorted per mentor), for tests.
    #[cfg(test)]
    pub fn of(since: i64, clicks: Vec<Vec<i64>>, conversions: Vec<Vec<i64>>) -> Self {
        Self {
            since,
            clicks,
            conversions,
            top: Mutex::default(),
        }
    }

    /// Live clicks of mentor `rank` with `occurred_at` in `[from, to)`.
    pub fn clicks(&self, rank: usize, from: i64, to: i64) -> u64 {
        self.clicks.get(rank).map_or(0, |at| within(at, from, to))
    }

    /// Live conversions of mentor `rank` with `confirmed_at` in `[from, to)`.
    pub fn conversions(&self, rank: usize, from: i64, to: i64) -> u64 {
        self.conversions
            .get(rank)
            .map_or(0, |at| within(at, from, to))
    }

    /// Live clicks of every mentor with `occurred_at` at or after `from`.
    pub fn live_since(&self, from: i64) -> u64 {
        self.clicks
            .iter()
            .map(|at| within(at, from, i64::MAX))
            .sum()
    }

    /// The leaderboard by conversions from `from` on (clicks by `occurred_at`, conversions
    /// by `confirmed_at`): the `limit` mentors with the most conversions, then by mentor
    /// id, mentors with neither left out.
    pub fn top_by_conversions(&self, from: i64, limit: usize) -> Arc<Vec<Ranked>> {
        let mut cache = self.top.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(top) = cache.get(&(from, limit)) {
            return top.clone();
        }
        let mut ranked: Vec<Ranked> = (0..self.clicks.len())
            .map(|rank| {
                (
                    mentor_id(rank),
                    self.clicks(rank, from, i64::MAX),
                    self.conversions(rank, from, i64::MAX),
                )
            })
            .filter(|(_, clicks, conversions)| *clicks != 0 || *conversions != 0)
            .collect();
        ranked.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
        ranked.truncate(limit);
        let top = Arc::new(ranked);
        cache.insert((from, limit), top.clone());
        top
    }
}

/// The start of the hour `at` (ms) falls in.
pub fn hour_floor(at: i64) -> i64 {
    at.div_euclid(HOUR_MS) * HOUR_MS
}

pub async fn generate(options: &Options, clickhouse_url: &str) -> Result<Dataset> {
    let mut writer = Writer::connect(clickhouse_url, options.common.partitions).await?;
    let started = Instant::now();
    let mut rng = Rng::new(options.seed);
    let zipf = MentorZipf::new(options.mentors, options.zipf)?;
    let now = Timestamp::now().as_millis() - 60_000;
    let span = options.days * DAY_MS;
    let first = now - span;
    let n = options.attributions;
    let spacing = (span / i64::try_from(n).unwrap_or(i64::MAX)).max(1);
    let sample_every = (n / SAMPLED_IDS).max(1);
    let mut data = Dataset {
        mentor_clicks: vec![0; options.mentors],
        mentor_conversions: vec![0; options.mentors],
        ..Dataset::default()
    };
    let mut stats = LoadStats::default();
    let mut recent = Recent::new(options.mentors, now - RECENT_DAYS * DAY_MS);

    // The codes the clicks use, assigned before the history starts (as the API would).
    let codes: Vec<LogEvent> = (0..options.mentors)
        .map(|rank| {
            LogEvent::AssignCode(AssignCode {
                command_id: rng.id("cmd_", first - DAY_MS),
                code: mentor_code(rank),
                mentor_id: mentor_id(rank),
                destination_url: None,
                issued_at: Timestamp::from_millis(first - DAY_MS),
            })
        })
        .collect();
    writer
        .flush_commands(codes, options.commands_per_flush, &mut stats)
        .await?;

    let mut members = 0_u64;
    let mut index = 0_u64;
    let partitions = usize::try_from(options.common.partitions).unwrap_or(1);
    while index < n {
        let count = options.flush_rows.min(n - index);
        let mut per_partition: Vec<Vec<LogEvent>> = vec![Vec::new(); partitions];
        let mut commands = Vec::new();
        for i in index..index + count {
            let step =
                i64::try_from(i128::from(i) * i128::from(span) / i128::from(n)).unwrap_or(span);
            let occurred = (first + step + rng.below(spacing as u64) as i64).min(now);
            let received = (occurred + rng.below(2_000) as i64).min(now);
            let rank = zipf.sample(&mut rng);
            let id = rng.id("attr_", received);
            let confirmed = rng.chance(options.confirmed());
            let deleted = rng.chance(options.deleted());
            let mut conversion = None;
            if confirmed {
                let confirmed_at =
                    (occurred + 60_000 + rng.below(7 * DAY_MS as u64) as i64).min(now);
                conversion = Some(confirmed_at);
                members += 1;
                commands.push(LogEvent::ConfirmConversion(ConfirmConversion {
                    command_id: rng.id("cmd_", confirmed_at),
                    attribution_id: id.clone(),
                    code: mentor_code(rank),
                    new_member_id: format!("usr_member_{members:09}"),
                    confirmed_at: Timestamp::from_millis(confirmed_at),
                    issued_at: Timestamp::from_millis(confirmed_at),
                }));
                data.confirmed += 1;
            }
            if deleted {
                let issued = (occurred + 60_000 + rng.below(30 * DAY_MS as u64) as i64).min(now);
                commands.push(LogEvent::DeleteAttribution(DeleteAttribution {
                    command_id: rng.id("cmd_", issued),
                    attribution_id: id.clone(),
                    issued_at: Timestamp::from_millis(issued),
                }));
                data.deleted += 1;
            } else {
                data.live += 1;
                data.mentor_clicks[rank] += 1;
                if confirmed {
                    data.mentor_conversions[rank] += 1;
                }
                if occurred >= recent.since {
                    recent.clicks[rank].push(occurred);
                }
                if let Some(confirmed_at) = conversion.filter(|at| *at >= recent.since) {
                    recent.conversions[rank].push(confirmed_at);
                }
                if (occurred, id.as_str()) > (data.newest_live.0, data.newest_live.1.as_str()) {
                    data.newest_live = (occurred, id.clone());
                }
            }
            if i % sample_every == 0 {
                data.sampled.push((id.clone(), rank, deleted));
            }
            let user_agent = Some(USER_AGENTS[(i % 4) as usize].to_owned());
            per_partition[rank % partitions].push(LogEvent::Click(ClickEvent {
                attribution_id: id,
                code: mentor_code(rank),
                mentor_id: mentor_id(rank),
                ip_address: format!("198.51.{}.{}", i % 256, (i / 256) % 256),
                user_agent,
                referrer_url: (i % 3 == 0).then(|| "https://instagram.com".to_owned()),
                occurred_at: Timestamp::from_millis(occurred),
                received_at: Timestamp::from_millis(received),
            }));
        }
        data.clicks += count;
        let flush_started = Instant::now();
        stats.rejected += writer
            .flush(
                per_partition
                    .into_iter()
                    .enumerate()
                    .map(|(partition, events)| (i32::try_from(partition).unwrap_or(0), events))
                    .collect(),
            )
            .await?;
        stats.click_flushes += 1;
        stats.click_time += flush_started.elapsed();
        writer
            .flush_commands(commands, options.commands_per_flush, &mut stats)
            .await?;
        index += count;
        if stats.click_flushes.is_multiple_of(10) || index == n {
            eprintln!(
                "  {} of {} clicks, {} commands written ({:.0} s)",
                thousands(index),
                thousands(n),
                thousands(stats.commands),
                started.elapsed().as_secs_f64()
            );
        }
    }
    stats.total = started.elapsed();
    if stats.rejected > 0 {
        return Err(format!(
            "the writer rejected {} generated commands: the expected answers would be wrong",
            stats.rejected
        ));
    }
    data.load = stats;
    for instants in recent
        .clicks
        .iter_mut()
        .chain(recent.conversions.iter_mut())
    {
        instants.sort_unstable();
    }
    data.recent = Arc::new(recent);
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(n: usize, s: f64, draws: u32, seed: u64) -> Vec<u32> {
        let zipf = MentorZipf::new(n, s).unwrap();
        let mut rng = Rng::new(seed);
        let mut counts = vec![0_u32; n];
        for _ in 0..draws {
            counts[zipf.sample(&mut rng)] += 1;
        }
        counts
    }

    #[test]
    fn zipf_favours_the_head_and_covers_the_tail() {
        let counts = counts(1_000, 1.0, 200_000, 1);
        // P(rank 0) = 1 / H(1000) ~ 0.134.
        assert!((24_000..30_000).contains(&counts[0]), "{}", counts[0]);
        // P(rank 1) = P(rank 0) / 2, P(rank 9) = P(rank 0) / 10.
        assert!((11_500..15_500).contains(&counts[1]), "{}", counts[1]);
        assert!(counts[0] > counts[1] && counts[1] > counts[9]);
        assert!(counts[999] > 0);
        // Seeded: the same seed draws the same ranks.
        assert_eq!(counts, self::counts(1_000, 1.0, 200_000, 1));
    }

    #[test]
    fn zipf_skew_follows_the_exponent() {
        let head = |s: f64| counts(100, s, 50_000, 3)[..10].iter().sum::<u32>();
        let (flat, one, steep) = (head(0.0), head(1.0), head(2.0));
        // s = 0 is uniform: the top 10 of 100 ranks get ~10%.
        assert!((4_500..5_500).contains(&flat), "{flat}");
        assert!(flat < one && one < steep, "{flat} {one} {steep}");
        // s = 2: P(top 10) = H(10, 2) / H(100, 2) ~ 0.94.
        assert!(steep > 45_000, "{steep}");
        assert!(MentorZipf::new(0, 1.0).is_err());
        assert!(MentorZipf::new(10, -1.0).is_err());
        assert_eq!(counts(1, 1.0, 100, 4), vec![100]);
    }

    #[test]
    fn every_click_is_a_visitor() {
        for agent in USER_AGENTS {
            assert!(!referral_schemas::verdict::is_bot(Some(agent)), "{agent}");
        }
    }

    #[test]
    fn recent_instants_count_windows_and_rank_the_leaderboard() {
        let mut recent = Recent::new(3, 100);
        recent.clicks = vec![vec![100, 150, 200], vec![120, 300], vec![]];
        recent.conversions = vec![vec![160], vec![130, 310], vec![400]];
        assert_eq!(within(&[1, 2, 2, 5], 2, 5), 2);
        assert_eq!(within(&[1, 2], 3, 1), 0);
        assert_eq!(
            (recent.clicks(0, 100, 200), recent.clicks(0, 101, 201)),
            (2, 2)
        );
        assert_eq!(
            (recent.clicks(7, 0, i64::MAX), recent.conversions(1, 0, 310)),
            (0, 1)
        );
        assert_eq!((recent.live_since(0), recent.live_since(150)), (5, 3));
        let top = recent.top_by_conversions(0, 10);
        assert_eq!(
            *top,
            vec![
                (mentor_id(1), 2, 2),
                (mentor_id(0), 3, 1),
                (mentor_id(2), 0, 1)
            ]
        );
        // Ties by mentor id; mentors with nothing left out; the limit kept.
        let top = recent.top_by_conversions(305, 2);
        assert_eq!(*top, vec![(mentor_id(1), 0, 1), (mentor_id(2), 0, 1)]);
        assert_eq!(recent.top_by_conversions(1_000, 10).len(), 0);
        assert_eq!(hour_floor(HOUR_MS + 5), HOUR_MS);
    }

    #[test]
    fn ids_carry_their_time_and_draws_stay_in_range() {
        let mut rng = Rng::new(2);
        let id = rng.id("attr_", 1_773_997_200_000);
        assert!(referral_schemas::id::is_attribution_id(&id), "{id}");
        assert_eq!(
            referral_schemas::id::attribution_created_at(&id).map(Timestamp::as_millis),
            Some(1_773_997_200_000)
        );
        assert_ne!(id, rng.id("attr_", 1_773_997_200_000));
        assert_eq!((rng.below(0), rng.index(0)), (0, 0));
        assert!((0..1_000).all(|_| rng.below(7) < 7 && rng.index(3) < 3));
        assert!(!rng.chance(0.0) && rng.chance(1.0));
    }
}
