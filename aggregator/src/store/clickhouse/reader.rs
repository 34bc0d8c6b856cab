//! [`AttributionReader`] on ClickHouse: what the API reads in production.

use async_trait::async_trait;
use clickhouse::Client;
use referral_schemas::messages::Verdict;
use referral_schemas::query::{AttributionFilter, HourRange, PageRequest};
use referral_schemas::timestamp::{DAY_MS, HOUR_MS};
use referral_schemas::{Attribution, ReferralCode, Timestamp};

use super::ClickHouseSettings;
use super::queries::{self, ListTotal};
use super::rows::{AttributionRow, CodeRow};
use crate::store::{AttributionPage, AttributionReader, CodePage, MentorTotals, StoreError};

/// Cheap to clone: the client shares one connection pool.
#[derive(Clone)]
pub struct ClickHouseReader {
    client: Client,
}

impl ClickHouseReader {
    pub fn new(settings: &ClickHouseSettings) -> Self {
        Self {
            client: settings.client(),
        }
    }
}

/// Lower bounds tried for a page, newest first: an hour, a day, 30 days, a year, then all.
const PAGE_WINDOWS: &[i64] = &[HOUR_MS, DAY_MS, 30 * DAY_MS, 365 * DAY_MS];
/// Lists this small are read without windows.
const WINDOWLESS_MAX: u64 = 20_000;

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
        let now = Timestamp::now().as_millis();
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
            if rows.len() as u64 == u64::from(page.limit) {
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
        let total = match queries::list_total(filter) {
            ListTotal::Everything(query) => {
                let clicks: i64 = query.to_clickhouse(&self.client).fetch_one().await?;
                u64::try_from(clicks).unwrap_or(0)
            }
            ListTotal::Mentor(query) => {
                let (clicks, _): (i64, i64) = query.to_clickhouse(&self.client).fetch_one().await?;
                u64::try_from(clicks).unwrap_or(0)
            }
            ListTotal::Bounded(query) => query.to_clickhouse(&self.client).fetch_one().await?,
        };
        let rows = self.newest_first(filter, page, total).await?;
        let attributions = rows
            .iter()
            .map(AttributionRow::to_attribution)
            .collect::<Result<_, _>>()?;
        Ok(AttributionPage {
            attributions,
            total,
        })
    }

    async fn mentor_totals(
        &self,
        mentor_id: &str,
        hours: HourRange,
    ) -> Result<MentorTotals, StoreError> {
        let (clicks, conversions): (i64, i64) = queries::mentor_totals(mentor_id, hours)
            .to_clickhouse(&self.client)
            .fetch_one()
            .await?;
        let non_negative = |value: i64, what: &str| {
            u64::try_from(value)
                .map_err(|_| StoreError::Corrupt(format!("negative {what} total for {mentor_id}")))
        };
        Ok(MentorTotals {
            clicks: non_negative(clicks, "click")?,
            conversions: non_negative(conversions, "conversion")?,
        })
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
}
