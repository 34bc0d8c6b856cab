//! [`AttributionReader`] on ClickHouse: what the API reads in production.

use async_trait::async_trait;
use clickhouse::Client;
use referral_schemas::messages::Verdict;
use referral_schemas::query::{AttributionFilter, HourRange, PageRequest};
use referral_schemas::{Attribution, ReferralCode};

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
        let rows: Vec<AttributionRow> = queries::attribution_page(filter, page)
            .to_clickhouse(&self.client)
            .fetch_all()
            .await?;
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
