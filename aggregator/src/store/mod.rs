//! The store interfaces: reads for the API, batch writes for the single writer.

pub mod clickhouse;
pub mod sqlite;

use async_trait::async_trait;
use referral_schemas::messages::{LogEvent, Verdict};
use referral_schemas::query::{AttributionFilter, HourRange, PageRequest};
use referral_schemas::{Attribution, ReferralCode};

use crate::codes::CodeChange;

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
    pub clicks: u64,
    pub conversions: u64,
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
}

/// What one committed batch changed beyond the store itself.
#[derive(Debug, Default)]
pub struct CommittedBatch {
    /// Code changes to mirror in the edge's directory.
    pub code_changes: Vec<CodeChange>,
}

/// The single writer's interface to a store.
///
/// Invariant: `apply_batch` is all-or-nothing. Either every event of the batch is applied
/// (and every command's verdict recorded) in one transaction, or none is and the error is
/// returned; so a failed batch can be retried or refused as a whole.
/// Re-applying an event that was already applied changes nothing (clicks are keyed by id,
/// commands by command id).
pub trait StateWriter: Send {
    fn apply_batch(&mut self, events: &[LogEvent]) -> Result<CommittedBatch, StoreError>;
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
