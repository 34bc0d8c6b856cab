//! The store: one write interface for the consumer ([`StoreWriter`]) and one read
//! interface for the API ([`AttributionReader`]), each implemented by SQLite (the embedded
//! mode, [`sqlite`]) and ClickHouse (production, [`clickhouse`]). A store writes what the
//! planner decided and reads; it decides nothing.

pub mod clickhouse;
pub mod span;
pub mod sqlite;

use std::collections::HashMap;

use async_trait::async_trait;
use referral_schemas::messages::Verdict;
use referral_schemas::query::{AttributionFilter, HourRange, PageRequest};
use referral_schemas::{Attribution, ReferralCode};

use crate::plan::{Known, PartitionKey, Plan, References};

/// A store failure. Always a 5xx for the client: the cause is logged, not shown.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] ::clickhouse::error::Error),
    #[error("stored data is not valid: {0}")]
    Corrupt(String),
    #[error("store task failed: {0}")]
    Task(String),
    #[error("cannot open the store: {0}")]
    Open(String),
}

impl StoreError {
    /// The store could not be reached or did not answer in time (a restart, a network cut,
    /// a busy database): the request is worth retrying, it is not a bug.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::ClickHouse(error) => matches!(
                error,
                ::clickhouse::error::Error::Network(_) | ::clickhouse::error::Error::TimedOut
            ),
            Self::Sqlite(rusqlite::Error::SqliteFailure(error, _)) => matches!(
                error.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ),
            _ => false,
        }
    }
}

/// One page of attributions and how many match in all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttributionPage {
    pub attributions: Vec<Attribution>,
    pub total: u64,
    /// Another page follows this one.
    pub more: bool,
}

/// One page of referral codes and how many match in all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodePage {
    pub codes: Vec<ReferralCode>,
    pub total: u64,
}

/// A mentor's totals over a range of hours.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MentorTotals {
    /// Counted clicks: what a mentor is paid on.
    pub clicks: u64,
    /// Clicks recorded with the verdict `duplicate` and `bot`.
    pub duplicates: u64,
    pub bots: u64,
    /// Confirmed conversions that count (not reversed).
    pub conversions: u64,
    /// Reversed conversions, by their `confirmed_at` (read by mentor totals only).
    pub reversals: u64,
}

impl MentorTotals {
    pub fn add(&mut self, other: MentorTotals) {
        self.clicks += other.clicks;
        self.duplicates += other.duplicates;
        self.bots += other.bots;
        self.conversions += other.conversions;
        self.reversals += other.reversals;
    }

    /// With `reversals` reversed conversions, a signed sum never negative in a consistent
    /// store.
    pub fn with_reversals(mut self, reversals: i64, mentor_id: &str) -> Result<Self, StoreError> {
        self.reversals = u64::try_from(reversals)
            .map_err(|_| StoreError::Corrupt(format!("negative reversal total for {mentor_id}")))?;
        Ok(self)
    }

    /// Adds `count` clicks of the stored verdict `verdict` (`counted` for anything else:
    /// rows from before verdicts).
    pub fn add_clicks(&mut self, verdict: &str, count: u64) {
        match referral_schemas::verdict::ClickVerdict::parse(verdict) {
            Some(referral_schemas::verdict::ClickVerdict::Duplicate) => self.duplicates += count,
            Some(referral_schemas::verdict::ClickVerdict::Bot) => self.bots += count,
            _ => self.clicks += count,
        }
    }

    /// From signed sums, which are never negative in a consistent store.
    pub fn from_sums(sums: [i64; 4], mentor_id: &str) -> Result<Self, StoreError> {
        let non_negative = |value: i64, what: &str| {
            u64::try_from(value)
                .map_err(|_| StoreError::Corrupt(format!("negative {what} total for {mentor_id}")))
        };
        Ok(Self {
            clicks: non_negative(sums[0], "click")?,
            duplicates: non_negative(sums[1], "duplicate")?,
            bots: non_negative(sums[2], "bot")?,
            conversions: non_negative(sums[3], "conversion")?,
            reversals: 0,
        })
    }
}

/// 15-minute slots in an hour: a whole hour's counts are keyed by its first slot.
pub const SLOTS_PER_HOUR: i64 =
    referral_schemas::timestamp::HOUR_MS / referral_schemas::calendar::SLOT_MS;

/// A mentor's live clicks and conversions in one 15-minute slot ([`SLOT_MS`]): clicks of
/// each verdict by `occurred_at`, conversions by `confirmed_at`. Any time zone's buckets are
/// sums of slots.
///
/// [`SLOT_MS`]: referral_schemas::calendar::SLOT_MS
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotCounts {
    /// Slots since the epoch.
    pub slot: i64,
    pub totals: MentorTotals,
}

/// The period a leaderboard ranks over: whole hours (the materialized totals) or exact
/// instants (a calendar period off the UTC hour, counted from the attributions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopWindow {
    Hours(referral_schemas::query::HourRange),
    /// `[from, to)` in ms; `from` None is unbounded.
    Exact {
        from: Option<i64>,
        to: i64,
    },
}

/// What a leaderboard reads: whole hours from the materialized totals (days and ragged
/// hours, [`HourRange::plan`]) and `[from, to)` ranges in ms from the attributions (the
/// ends of an exact window off the UTC hour).
pub fn top_window_reads(window: TopWindow) -> (Option<HourRange>, Vec<(i64, i64)>) {
    match window {
        TopWindow::Hours(hours) => (Some(hours), Vec::new()),
        TopWindow::Exact { from, to } => {
            let reads = span::SlotSpan::new(from, to).reads();
            let hours = reads.hours.map(|(from_hour, to_hour)| HourRange {
                from_hour,
                to_hour: Some(to_hour),
            });
            (hours, reads.slots)
        }
    }
}

/// The `limit` mentors with the most counted clicks or conversions, then by mentor id.
pub fn rank(
    totals: impl IntoIterator<Item = (String, MentorTotals)>,
    by: referral_schemas::query::RankBy,
    limit: u32,
) -> Vec<(String, MentorTotals)> {
    use referral_schemas::query::RankBy;
    let mut ranked: Vec<(String, MentorTotals)> = totals
        .into_iter()
        .filter(|(_, totals)| totals.clicks != 0 || totals.conversions != 0)
        .collect();
    let key = |totals: &MentorTotals| match by {
        RankBy::Clicks => totals.clicks,
        RankBy::Conversions => totals.conversions,
    };
    ranked.sort_by(|a, b| key(&b.1).cmp(&key(&a.1)).then_with(|| a.0.cmp(&b.0)));
    ranked.truncate(limit as usize);
    ranked
}

/// A counted click of a partition, read back to rebuild its dedup window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CountedClick {
    pub attribution_id: String,
    pub mentor_id: String,
    pub code: String,
    pub ip_address: String,
    pub user_agent: Option<String>,
    /// `received_at` (the row's `created_at`), ms.
    pub received_at: i64,
}

/// What the API reads. Every method sees only committed state.
#[async_trait]
pub trait AttributionReader: Send + Sync {
    /// A live attribution (`None` when unknown or deleted).
    async fn attribution(&self, id: &str) -> Result<Option<Attribution>, StoreError>;
    /// Live attributions matching `filter`, newest first.
    async fn attributions(
        &self,
        filter: &AttributionFilter,
        page: PageRequest,
    ) -> Result<AttributionPage, StoreError>;
    /// Up to `limit` attributions matching `filter`, newest first, from `filter.after` on,
    /// without counting the list (`total` is 0): an export walks a list page by page.
    async fn attributions_after(
        &self,
        filter: &AttributionFilter,
        limit: u32,
    ) -> Result<AttributionPage, StoreError>;
    /// A mentor's counts over `span`, by slot: a whole hour read from the hourly totals
    /// under its first slot, a fine hour or ragged end per 15-minute slot ([`span`]);
    /// empty slots absent.
    async fn mentor_slots(
        &self,
        mentor_id: &str,
        span: &span::SlotSpan,
    ) -> Result<Vec<SlotCounts>, StoreError>;
    /// The leaderboard: the `limit` mentors with the most counted clicks or conversions over
    /// `window`, then by mentor id.
    async fn top_mentors(
        &self,
        window: TopWindow,
        by: referral_schemas::query::RankBy,
        limit: u32,
    ) -> Result<Vec<(String, MentorTotals)>, StoreError>;
    /// A mentor's materialized totals over `hours`.
    async fn mentor_totals(
        &self,
        mentor_id: &str,
        hours: HourRange,
    ) -> Result<MentorTotals, StoreError>;
    async fn referral_code(&self, code: &str) -> Result<Option<ReferralCode>, StoreError>;
    async fn referral_codes(
        &self,
        mentor_id: Option<&str>,
        page: PageRequest,
    ) -> Result<CodePage, StoreError>;
    /// The verdict recorded for a command, once the writer decided it.
    async fn verdict(&self, command_id: &str) -> Result<Option<Verdict>, StoreError>;
    /// The decided ones among `command_ids`, with their verdicts: one look-up for every
    /// command an API process waits on, where the store can (one by one otherwise).
    async fn verdicts(&self, command_ids: &[String]) -> Result<Vec<(String, Verdict)>, StoreError> {
        let mut found = Vec::new();
        for command_id in command_ids {
            if let Some(verdict) = self.verdict(command_id).await? {
                found.push((command_id.clone(), verdict));
            }
        }
        Ok(found)
    }
    /// The ids among `ids` stored in any state, deleted included: whether a click has
    /// landed, asked for every waiting command at once and without merging row versions
    /// where the store can (one live read per id otherwise, so a deleted one never lands:
    /// its command then waits out its caller's bound).
    async fn stored_attribution_ids(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        let mut stored = Vec::new();
        for id in ids {
            if self.attribution(id).await?.is_some() {
                stored.push(id.clone());
            }
        }
        Ok(stored)
    }
}

/// The consumer's interface to a store: it loads what the planner needs and writes what
/// the planner decided.
///
/// A flush is written in two steps, in this order: [`Self::write_state`] (decisions first,
/// then the versioned rows), then [`Self::commit`] (the totals deltas with the checkpoint
/// moves: the flush's commit point). Between the two the consumer hands code changes and
/// dead letters to the world. A flush that fails at any step is retried whole, after
/// [`Self::abandon`]; the store must make that safe (SQLite: one transaction that is rolled
/// back; ClickHouse: idempotent rows, and a commit point that is one atomic insert).
#[async_trait]
pub trait StoreWriter: Send {
    /// The stored checkpoint (next offset to apply) of each of `partitions`; 0 for a
    /// partition with none stored yet.
    async fn checkpoints(
        &mut self,
        partitions: &[PartitionKey],
    ) -> Result<HashMap<PartitionKey, i64>, StoreError>;

    /// Forgets cached checkpoints: after a failed flush (its commit may have landed) and when
    /// partitions move to another consumer.
    fn forget_checkpoints(&mut self, partitions: &[PartitionKey]);

    /// The stored rows the events of a flush refer to.
    async fn load(&mut self, references: &References) -> Result<Known, StoreError>;

    /// The counted clicks of `partition` (topic and number) read below `checkpoint` and
    /// received at or after `window_ms * 2` before the newest of them (deleted ones
    /// included): what its dedup window holds after the flush that stored that checkpoint.
    /// Any superset of older clicks gives the same decisions.
    async fn counted_clicks(
        &mut self,
        partition: &PartitionKey,
        checkpoint: i64,
        window_ms: i64,
    ) -> Result<Vec<CountedClick>, StoreError>;

    /// Writes the plan's decisions, then its rows.
    async fn write_state(&mut self, plan: &Plan) -> Result<(), StoreError>;

    /// Writes the plan's totals deltas and checkpoint moves together: once this returns
    /// `Ok`, the flush is stored. `token` names the flush's offset ranges (the same flush
    /// retried has the same token), for stores that deduplicate inserts by it.
    async fn commit(&mut self, plan: &Plan, token: &str) -> Result<(), StoreError>;

    /// Drops what an uncommitted flush left behind, before it is retried.
    fn abandon(&mut self);

    /// Makes every committed flush durable, for a store whose commits may not be on their
    /// own (SQLite with `--sqlite-synchronous normal`). Called before the log deletes what
    /// those flushes applied.
    async fn make_durable(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Whether the store answers (readiness while flushes fail).
    async fn ping(&mut self) -> bool;
}

#[cfg(test)]
mod unavailable_tests {
    use super::StoreError;

    #[test]
    fn only_unreachable_or_busy_stores_are_unavailable() {
        assert!(StoreError::ClickHouse(::clickhouse::error::Error::TimedOut).is_unavailable());
        let busy = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        );
        assert!(StoreError::Sqlite(busy).is_unavailable());
        assert!(
            !StoreError::ClickHouse(::clickhouse::error::Error::BadResponse("Code: 60".into()))
                .is_unavailable()
        );
        assert!(!StoreError::Corrupt("negative total".into()).is_unavailable());
    }
}
