//! [`AttributionReader`] on ClickHouse: what the API reads in production.

use async_trait::async_trait;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clickhouse::Client;
use referral_schemas::messages::Verdict;
use referral_schemas::query::{AttributionFilter, HourRange, PageRequest};
use referral_schemas::timestamp::{DAY_MS, HOUR_MS};
use referral_schemas::{Attribution, ReferralCode, Timestamp};

use super::ClickHouseSettings;
use super::queries::{self, ListTotal};
use crate::plan::rows::{AttributionRow, CodeRow};
use referral_schemas::query::RankBy;

use crate::store::span::SlotSpan;
use crate::store::top_window_reads;
use crate::store::{
    AttributionPage, AttributionReader, CodePage, MentorTotals, SLOTS_PER_HOUR, SlotCounts,
    StoreError, TopWindow, rank,
};

/// Cheap to clone: the client shares one connection pool.
#[derive(Clone)]
pub struct ClickHouseReader {
    client: Client,
    /// Totals by time are complete (`mentor_totals_backfill` filled): leaderboards read
    /// only their days and hours. Until a writer of this release has connected, they scan
    /// the totals of every mentor instead.
    days_by_time: Arc<AtomicBool>,
}

impl ClickHouseReader {
    pub fn new(settings: &ClickHouseSettings) -> Self {
        let client = settings.client();
        let client = match settings.read_threads {
            0 => client,
            threads => client.with_setting("max_threads", threads.to_string()),
        };
        Self {
            client,
            days_by_time: Arc::new(AtomicBool::new(false)),
        }
    }

    async fn days_by_time(&self) -> Result<bool, StoreError> {
        if self.days_by_time.load(Ordering::Relaxed) {
            return Ok(true);
        }
        let filled: u64 = queries::backfill_filled()
            .to_clickhouse(&self.client)
            .fetch_one()
            .await?;
        self.days_by_time.store(filled > 0, Ordering::Relaxed);
        Ok(filled > 0)
    }
}

/// Rows a page query reads: the page and one more, which tells whether another page follows.
fn peek(page: PageRequest) -> u64 {
    u64::from(page.limit) + 1
}

/// A page of `limit` from `rows` read with one row past it (which says whether more follow).
fn page_of(
    mut rows: Vec<AttributionRow>,
    limit: u32,
    total: u64,
) -> Result<AttributionPage, StoreError> {
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let attributions = rows
        .iter()
        .map(AttributionRow::to_attribution)
        .collect::<Result<_, _>>()?;
    Ok(AttributionPage {
        attributions,
        total,
        more,
    })
}

/// Lower bounds tried for a page, newest first: an hour, a day, 30 days, a year, then all.
const PAGE_WINDOWS: &[i64] = &[HOUR_MS, DAY_MS, 30 * DAY_MS, 365 * DAY_MS];
/// Lists this small are read without windows.
const WINDOWLESS_MAX: u64 = 20_000;
/// Rows from a page's first day on past which the last hour is tried first. Measured at
/// 10M attributions (`bench-reads`): a uniform mentor's few hundred rows since its day are
/// read faster in one query than after an empty hour's; the unfiltered list's ~18,000 rows
/// of today took a p99 of 78 ms read whole against 29 ms with the hour first.
const HOUR_WINDOW_MIN: u64 = 1_000;

impl ClickHouseReader {
    /// One page, newest first, reading as little as the sort key allows.
    ///
    /// Lists are sorted by `occurred_at` (descending), so a page lies among the newest rows.
    /// `FINAL` over a whole table of millions of rows is slow; over the last hour it is
    /// not. The page is read within a growing window (`occurred_at >= now - window`) until
    /// the window holds the whole page: a window is the newest part of the list, so when it
    /// returns `limit` rows for `LIMIT offset, limit`, those are exactly the rows the whole
    /// list has at that place. Otherwise the next window is tried, the last one unbounded.
    ///
    /// A list of at most [`WINDOWLESS_MAX`] matches (`total` says so) is read in one go: its
    /// rows sit in a few granules whatever the window, so windows would only add queries.
    async fn newest_first(
        &self,
        filter: &AttributionFilter,
        page: PageRequest,
        total: u64,
    ) -> Result<Vec<AttributionRow>, StoreError> {
        // A cursor's page lies just before the cursor: the windows count back from it.
        let now = filter.after.as_ref().map_or_else(
            || Timestamp::now().as_millis(),
            |cursor| cursor.occurred_at.as_millis().saturating_add(1),
        );
        let windows = if total <= WINDOWLESS_MAX {
            &[][..]
        } else {
            PAGE_WINDOWS
        };
        for window in windows {
            let since = Timestamp::from_millis(now.saturating_sub(*window));
            if filter.from.is_some_and(|from| from >= since) {
                // The filter's own bound is narrower: the last query below uses it.
                break;
            }
            let windowed = AttributionFilter {
                from: Some(since),
                ..filter.clone()
            };
            let rows: Vec<AttributionRow> = queries::attribution_page(&windowed, page)
                .to_clickhouse(&self.client)
                .fetch_all()
                .await?;
            if rows.len() as u64 == peek(page) {
                return Ok(rows);
            }
        }
        Ok(queries::attribution_page(filter, page)
            .to_clickhouse(&self.client)
            .fetch_all()
            .await?)
    }
}

impl ClickHouseReader {
    /// One page of a list whose live attributions per day are known (newest day first).
    ///
    /// Counting back from the newest day, the first day at which the count reaches
    /// `offset + limit` starts the page: every row of the page occurred on that day or
    /// later, so the page is read from that day on, two queries for any list and any depth.
    /// A page past the end is empty without a query.
    async fn page_from_days(
        &self,
        filter: &AttributionFilter,
        page: PageRequest,
        days: &[(i64, i64)],
        total: u64,
    ) -> Result<Vec<AttributionRow>, StoreError> {
        if page.offset() >= total {
            return Ok(Vec::new());
        }
        let needed = page.offset().saturating_add(peek(page));
        let mut seen: u64 = 0;
        let mut start = days.last().map(|(day, _)| *day);
        for (day, live) in days {
            seen = seen.saturating_add(u64::try_from(*live).unwrap_or(0));
            if seen >= needed {
                start = Some(*day);
                break;
            }
        }
        if let Some(day) = start {
            let day_start = day.saturating_mul(DAY_MS);
            // A page among today's newest rows usually lies within the last hour: read that
            // first when the rows from the day on are many (a busy day is millions of rows);
            // a few granules are read at once faster than with one query more. As in
            // `newest_first`, a window that returns a full page returns the list's page.
            let hour_ago = Timestamp::now().as_millis().saturating_sub(HOUR_MS);
            if seen > HOUR_WINDOW_MIN
                && hour_ago > day_start
                && filter.from.is_none_or(|from| from.as_millis() < hour_ago)
            {
                let recent = AttributionFilter {
                    from: Some(Timestamp::from_millis(hour_ago)),
                    ..filter.clone()
                };
                let rows: Vec<AttributionRow> = queries::attribution_page(&recent, page)
                    .to_clickhouse(&self.client)
                    .fetch_all()
                    .await?;
                if rows.len() as u64 == peek(page) {
                    return Ok(rows);
                }
            }
            let since = AttributionFilter {
                from: Some(Timestamp::from_millis(day_start)),
                ..filter.clone()
            };
            let rows: Vec<AttributionRow> = queries::attribution_page(&since, page)
                .to_clickhouse(&self.client)
                .fetch_all()
                .await?;
            // Totals and rows agree once the aggregator's flush is stored; a flush in
            // progress can leave the page short: then read without the bound.
            if rows.len() as u64 == peek(page) || seen < needed {
                return Ok(rows);
            }
        }
        Ok(queries::attribution_page(filter, page)
            .to_clickhouse(&self.client)
            .fetch_all()
            .await?)
    }
}

#[async_trait]
impl AttributionReader for ClickHouseReader {
    async fn attribution(&self, id: &str) -> Result<Option<Attribution>, StoreError> {
        let row: Option<AttributionRow> = queries::attribution(id)
            .to_clickhouse(&self.client)
            .fetch_optional()
            .await?;
        row.filter(AttributionRow::is_live)
            .map(|row| row.to_attribution())
            .transpose()
    }

    async fn attributions(
        &self,
        filter: &AttributionFilter,
        page: PageRequest,
    ) -> Result<AttributionPage, StoreError> {
        // `total` counts the whole list; a cursor only says where the page starts.
        let whole = AttributionFilter {
            after: None,
            ..filter.clone()
        };
        let (total, rows) = match (queries::list_total(&whole), filter.after.is_some()) {
            (ListTotal::Days(query), false) => {
                let days: Vec<(i64, i64)> = query.to_clickhouse(&self.client).fetch_all().await?;
                let total = days.iter().map(|(_, live)| *live).sum::<i64>();
                let total = u64::try_from(total).unwrap_or(0);
                (
                    total,
                    self.page_from_days(filter, page, &days, total).await?,
                )
            }
            (ListTotal::Days(query), true) => {
                let days: Vec<(i64, i64)> = query.to_clickhouse(&self.client).fetch_all().await?;
                let total = days.iter().map(|(_, live)| *live).sum::<i64>();
                let total = u64::try_from(total).unwrap_or(0);
                (total, self.newest_first(filter, page, total).await?)
            }
            (ListTotal::Bounded(query), _) => {
                let total = query.to_clickhouse(&self.client).fetch_one().await?;
                (total, self.newest_first(filter, page, total).await?)
            }
        };
        page_of(rows, page.limit, total)
    }

    async fn attributions_after(
        &self,
        filter: &AttributionFilter,
        limit: u32,
    ) -> Result<AttributionPage, StoreError> {
        let page = PageRequest { page: 1, limit };
        // Not counted: read through the windows, as a long list is.
        let rows = self.newest_first(filter, page, u64::MAX).await?;
        page_of(rows, limit, 0)
    }

    async fn top_mentors(
        &self,
        window: TopWindow,
        by: RankBy,
        limit: u32,
    ) -> Result<Vec<(String, MentorTotals)>, StoreError> {
        let (hours, ranges) = top_window_reads(window);
        // Ranked in the query when it reads everything; otherwise every mentor's sums.
        let limit_in_query = if ranges.is_empty() { limit } else { u32::MAX };
        let mut by_mentor: std::collections::HashMap<String, MentorTotals> = Default::default();
        if let Some(hours) = hours {
            if self.days_by_time().await? {
                let rows: Vec<(String, i64, i64)> = queries::top_by_time(hours, by, limit_in_query)
                    .to_clickhouse(&self.client)
                    .fetch_all()
                    .await?;
                for (mentor, clicks, conversions) in rows {
                    let sums = MentorTotals::from_sums([clicks, 0, 0, conversions], &mentor)?;
                    by_mentor.entry(mentor).or_default().add(sums);
                }
            } else {
                let rows: Vec<(String, i64, i64, i64, i64)> =
                    queries::top_mentors(hours, by, limit_in_query)
                        .to_clickhouse(&self.client)
                        .fetch_all()
                        .await?;
                for (mentor, clicks, duplicates, bots, conversions) in rows {
                    let sums =
                        MentorTotals::from_sums([clicks, duplicates, bots, conversions], &mentor)?;
                    by_mentor.entry(mentor).or_default().add(sums);
                }
            }
        }
        for (from, to) in ranges {
            let clicks: Vec<(String, i64, i64, i64)> = queries::clicks_by_mentor(Some(from), to)
                .to_clickhouse(&self.client)
                .fetch_all()
                .await?;
            let conversions: Vec<(String, i64)> = queries::conversions_by_mentor(Some(from), to)
                .to_clickhouse(&self.client)
                .fetch_all()
                .await?;
            for (mentor, counted, duplicates, bots) in clicks {
                let sums = MentorTotals::from_sums([counted, duplicates, bots, 0], &mentor)?;
                by_mentor.entry(mentor).or_default().add(sums);
            }
            for (mentor, count) in conversions {
                let sums = MentorTotals::from_sums([0, 0, 0, count], &mentor)?;
                by_mentor.entry(mentor).or_default().add(sums);
            }
        }
        let totals: Vec<(String, MentorTotals)> = by_mentor.into_iter().collect();
        Ok(rank(totals, by, limit))
    }

    async fn mentor_slots(
        &self,
        mentor_id: &str,
        span: &SlotSpan,
    ) -> Result<Vec<SlotCounts>, StoreError> {
        let reads = span.reads();
        let mut slots: std::collections::BTreeMap<i64, MentorTotals> = Default::default();
        // Fine hours whose totals hold no click, or no conversion: nothing to split there.
        let mut no_clicks = reads.fine.clone();
        let mut no_conversions = reads.fine.clone();
        if let Some((from, to)) = reads.hours {
            let hours: Vec<(i64, i64, i64, i64, i64, i64)> =
                queries::mentor_hours(mentor_id, from, to)
                    .to_clickhouse(&self.client)
                    .fetch_all()
                    .await?;
            for (hour, counted, duplicates, bots, conversions, reversals) in hours {
                // A fine hour is read per slot; an hour whose deltas cancel out is empty.
                if reads.fine.contains(&hour) {
                    if counted != 0 || duplicates != 0 || bots != 0 {
                        no_clicks.remove(&hour);
                    }
                    if conversions != 0 || reversals != 0 {
                        no_conversions.remove(&hour);
                    }
                    continue;
                }
                let sums =
                    MentorTotals::from_sums([counted, duplicates, bots, conversions], mentor_id)?
                        .with_reversals(reversals, mentor_id)?;
                if sums != MentorTotals::default() {
                    slots.entry(hour * SLOTS_PER_HOUR).or_default().add(sums);
                }
            }
        }
        let click_ranges = reads.slots_without(&no_clicks);
        if !click_ranges.is_empty() {
            let clicks: Vec<(i64, String, u64)> =
                queries::mentor_click_slots(mentor_id, &click_ranges)
                    .to_clickhouse(&self.client)
                    .fetch_all()
                    .await?;
            for (slot, verdict, count) in clicks {
                slots.entry(slot).or_default().add_clicks(&verdict, count);
            }
        }
        let conversion_ranges = reads.slots_without(&no_conversions);
        if !conversion_ranges.is_empty() {
            let conversions: Vec<(i64, u64, u64)> =
                queries::mentor_conversion_slots(mentor_id, &conversion_ranges)
                    .to_clickhouse(&self.client)
                    .fetch_all()
                    .await?;
            for (slot, count, reversals) in conversions {
                let sums = slots.entry(slot).or_default();
                sums.conversions += count;
                sums.reversals += reversals;
            }
        }
        Ok(slots
            .into_iter()
            .map(|(slot, totals)| SlotCounts { slot, totals })
            .collect())
    }

    async fn mentor_totals(
        &self,
        mentor_id: &str,
        hours: HourRange,
    ) -> Result<MentorTotals, StoreError> {
        let (clicks, duplicates, bots, conversions, reversals): (i64, i64, i64, i64, i64) =
            queries::mentor_totals(mentor_id, hours)
                .to_clickhouse(&self.client)
                .fetch_one()
                .await?;
        MentorTotals::from_sums([clicks, duplicates, bots, conversions], mentor_id)?
            .with_reversals(reversals, mentor_id)
    }

    async fn referral_code(&self, code: &str) -> Result<Option<ReferralCode>, StoreError> {
        let row: Option<CodeRow> = queries::referral_code(code)
            .to_clickhouse(&self.client)
            .fetch_optional()
            .await?;
        Ok(row.and_then(|row| row.live_code()))
    }

    async fn referral_codes(
        &self,
        mentor_id: Option<&str>,
        page: PageRequest,
    ) -> Result<CodePage, StoreError> {
        let total: u64 = queries::code_count(mentor_id)
            .to_clickhouse(&self.client)
            .fetch_one()
            .await?;
        let rows: Vec<CodeRow> = queries::code_page(mentor_id, page)
            .to_clickhouse(&self.client)
            .fetch_all()
            .await?;
        Ok(CodePage {
            codes: rows.iter().filter_map(CodeRow::live_code).collect(),
            total,
        })
    }

    /// A verdict counts once its flush committed: its decision is written before its
    /// effects, so it is answered only when the partition's checkpoint passed its message.
    /// A client that reads after the answer then sees the totals and records it changed.
    async fn verdict(&self, command_id: &str) -> Result<Option<Verdict>, StoreError> {
        let decided: Option<(String, String, i32, i64)> = queries::verdict(command_id)
            .to_clickhouse(&self.client)
            .fetch_optional()
            .await?;
        let Some((json, topic, partition, offset)) = decided else {
            return Ok(None);
        };
        let checkpoint: i64 = queries::checkpoint(&topic, partition)
            .to_clickhouse(&self.client)
            .fetch_one()
            .await?;
        if checkpoint <= offset {
            return Ok(None);
        }
        serde_json::from_str(&json)
            .map(Some)
            .map_err(|error| StoreError::Corrupt(format!("verdict {command_id}: {error}")))
    }

    async fn stored_attribution_ids(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        Ok(queries::stored_attribution_ids(ids)
            .to_clickhouse(&self.client)
            .fetch_all()
            .await?)
    }

    /// Two queries for any number of commands: their recorded verdicts, then every
    /// partition's checkpoint; a verdict counts once its flush passed the checkpoint.
    async fn verdicts(&self, command_ids: &[String]) -> Result<Vec<(String, Verdict)>, StoreError> {
        if command_ids.is_empty() {
            return Ok(Vec::new());
        }
        let decided: Vec<(String, String, String, i32, i64)> = queries::verdicts(command_ids)
            .to_clickhouse(&self.client)
            .fetch_all()
            .await?;
        if decided.is_empty() {
            return Ok(Vec::new());
        }
        let checkpoints: Vec<(String, i64, i64)> = queries::checkpoints()
            .to_clickhouse(&self.client)
            .fetch_all()
            .await?;
        let mut found = Vec::with_capacity(decided.len());
        for (command_id, json, topic, partition, offset) in decided {
            let stored = checkpoints.iter().any(|(at_topic, at_partition, next)| {
                *at_topic == topic && *at_partition == i64::from(partition) && *next > offset
            });
            if !stored {
                continue;
            }
            let verdict = serde_json::from_str(&json)
                .map_err(|error| StoreError::Corrupt(format!("verdict {command_id}: {error}")))?;
            found.push((command_id, verdict));
        }
        Ok(found)
    }
}
