//! [`WebhookStore`] on ClickHouse. Endpoints and progress are ReplacingMergeTree rows read
//! with `FINAL` (a handful of rows); each change is a new version. Events are read only
//! below their partition's stored checkpoint: an event is visible to the deliverer once its
//! flush is stored, as a verdict is to the API.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use clickhouse::{Client, Row};
use referral_schemas::Timestamp;
use referral_schemas::webhook::{DeliveryAttempt, DeliveryOutcome, EventType};
use serde::{Deserialize, Serialize};

use super::store::{Cursor, Progress, StoredEndpoint, WebhookStore, partition_key, split_key};
use crate::plan::rows::EventRow;
use crate::store::StoreError;
use crate::store::clickhouse::ClickHouseSettings;

#[derive(Clone)]
pub struct ClickHouseWebhooks {
    client: Client,
    /// The last `webhook_progress` version written per endpoint: a new one is always
    /// higher, whatever this machine's clock does.
    progress_versions: Arc<Mutex<HashMap<String, u64>>>,
}

/// A `webhook_endpoints` row, in column order.
#[derive(Clone, Debug, Row, Serialize, Deserialize)]
struct EndpointRow {
    id: String,
    url: String,
    events: String,
    secret: String,
    created_at: i64,
    deleted_at: Option<i64>,
    replay_since: Option<i64>,
    replay_requested_at: Option<i64>,
    version: u64,
}

/// A `webhook_progress` row, in column order.
#[derive(Clone, Debug, Row, Serialize, Deserialize)]
struct ProgressRow {
    endpoint_id: String,
    cursor: String,
    floor: i64,
    failing_since: Option<i64>,
    disabled_at: Option<i64>,
    replay_applied: i64,
    retry_since: Option<i64>,
    attempts: u32,
    retry_event: Option<String>,
    version: u64,
}

/// A `webhook_deliveries` row, in column order.
#[derive(Clone, Debug, Row, Serialize, Deserialize)]
struct AttemptRow {
    endpoint_id: String,
    attempted_at: i64,
    event_id: String,
    event_type: String,
    attempt: u32,
    status_code: Option<u16>,
    error: Option<String>,
    outcome: String,
}

/// A row version after `previous`: the clock in microseconds, always increasing.
fn next_version(previous: u64) -> u64 {
    let now = u64::try_from(Timestamp::now().as_millis()).unwrap_or(0) * 1_000;
    now.max(previous + 1)
}

impl EndpointRow {
    fn endpoint(&self) -> StoredEndpoint {
        StoredEndpoint {
            id: self.id.clone(),
            url: self.url.clone(),
            events: StoredEndpoint::parse_events(&self.events),
            secret: self.secret.clone(),
            created_at: self.created_at,
            replay: self.replay_since.zip(self.replay_requested_at),
        }
    }
}

impl ProgressRow {
    fn progress(&self) -> Progress {
        Progress {
            cursor: serde_json::from_str(&self.cursor).unwrap_or_default(),
            floor: self.floor,
            failing_since: self.failing_since,
            disabled_at: self.disabled_at,
            replay_applied: self.replay_applied,
            retry_since: self.retry_since,
            attempts: self.attempts,
            retry_event: self.retry_event.clone(),
        }
    }
}

const ENDPOINT_COLUMNS: &str = "id, url, events, secret, created_at, deleted_at, replay_since, \
     replay_requested_at, version";
const PROGRESS_COLUMNS: &str = "endpoint_id, cursor, floor, failing_since, disabled_at, \
     replay_applied, retry_since, attempts, retry_event, version";
/// Endpoints with a deleted version are deleted, whatever a later version says: a replay
/// request written from a read made before a concurrent deletion must not bring it back.
const NOT_DELETED: &str =
    "id NOT IN (SELECT id FROM webhook_endpoints WHERE isNotNull(deleted_at))";

impl ClickHouseWebhooks {
    /// For the API: endpoints, attempts and replays.
    pub fn new(settings: &ClickHouseSettings) -> Self {
        Self::with_client(settings.client())
    }

    /// For the deliverer: on a cluster its reads are sequentially consistent, as the
    /// writer's are, so that a replica that has fetched a flush's checkpoint but not yet
    /// its events cannot move a cursor past events it has not seen.
    pub fn for_deliverer(settings: &ClickHouseSettings) -> Self {
        let client = settings.client();
        Self::with_client(if settings.sequential_reads {
            client.with_setting("select_sequential_consistency", "1")
        } else {
            client
        })
    }

    fn with_client(client: Client) -> Self {
        Self {
            client,
            progress_versions: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    async fn insert<T: clickhouse::RowOwned + clickhouse::RowWrite>(
        &self,
        table: &str,
        rows: &[T],
    ) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut insert = self.client.insert::<T>(table).await?;
        for row in rows {
            insert.write(row).await?;
        }
        insert.end().await?;
        Ok(())
    }

    async fn endpoint_row(&self, id: &str) -> Result<Option<EndpointRow>, StoreError> {
        let sql = format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints FINAL WHERE id = ? AND {NOT_DELETED}"
        );
        let row: Option<EndpointRow> = self.client.query(&sql).bind(id).fetch_optional().await?;
        Ok(row.filter(|row| row.deleted_at.is_none()))
    }

    async fn progress_rows(&self) -> Result<Vec<ProgressRow>, StoreError> {
        let sql = format!("SELECT {PROGRESS_COLUMNS} FROM webhook_progress FINAL");
        Ok(self.client.query(&sql).fetch_all().await?)
    }

    /// Up to `limit` events of each (topic, partition, from, below) range, in log order.
    async fn events_in(
        &self,
        ranges: &[(&str, i32, i64, i64)],
        limit: u32,
    ) -> Result<Vec<EventRow>, StoreError> {
        let one = "SELECT event_id, event_type, attribution_id, data, created_at, source_topic, \
                   source_partition, source_offset FROM webhook_events \
                   WHERE source_topic = ? AND source_partition = ? AND source_offset >= ? \
                   AND source_offset < ? ORDER BY source_offset LIMIT 1 BY source_offset LIMIT ?";
        let sql = format!(
            "SELECT * FROM ({}) ORDER BY source_topic, source_partition, source_offset",
            vec![one; ranges.len()].join(" UNION ALL ")
        );
        let mut query = self.client.query(&sql);
        for (topic, partition, from, next) in ranges {
            query = query
                .bind(topic)
                .bind(partition)
                .bind(from)
                .bind(next)
                .bind(limit);
        }
        Ok(query.fetch_all().await?)
    }

    /// The next version of an endpoint's progress row.
    async fn progress_version(&self, endpoint_id: &str) -> Result<u64, StoreError> {
        let known = self
            .progress_versions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(endpoint_id)
            .copied();
        let last = match known {
            Some(last) => last,
            None => {
                self.client
                    .query("SELECT max(version) FROM webhook_progress WHERE endpoint_id = ?")
                    .bind(endpoint_id)
                    .fetch_one::<u64>()
                    .await?
            }
        };
        Ok(next_version(last))
    }
}

/// Partitions read in one outbox query at most.
const RANGES_PER_QUERY: usize = 64;

#[async_trait]
impl WebhookStore for ClickHouseWebhooks {
    async fn create_endpoint(&self, endpoint: &StoredEndpoint) -> Result<(), StoreError> {
        let row = EndpointRow {
            id: endpoint.id.clone(),
            url: endpoint.url.clone(),
            events: endpoint.events_text(),
            secret: endpoint.secret.clone(),
            created_at: endpoint.created_at,
            deleted_at: None,
            replay_since: None,
            replay_requested_at: None,
            version: next_version(0),
        };
        self.insert("webhook_endpoints", &[row]).await
    }

    async fn endpoint(
        &self,
        id: &str,
    ) -> Result<Option<(StoredEndpoint, Option<Progress>)>, StoreError> {
        let Some(row) = self.endpoint_row(id).await? else {
            return Ok(None);
        };
        let sql =
            format!("SELECT {PROGRESS_COLUMNS} FROM webhook_progress FINAL WHERE endpoint_id = ?");
        let progress: Option<ProgressRow> =
            self.client.query(&sql).bind(id).fetch_optional().await?;
        Ok(Some((row.endpoint(), progress.map(|row| row.progress()))))
    }

    async fn endpoints(&self) -> Result<Vec<(StoredEndpoint, Option<Progress>)>, StoreError> {
        let sql = format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints FINAL WHERE {NOT_DELETED} \
             ORDER BY created_at, id"
        );
        let rows: Vec<EndpointRow> = self.client.query(&sql).fetch_all().await?;
        let progress = self.progress_rows().await?;
        Ok(rows
            .into_iter()
            .filter(|row| row.deleted_at.is_none())
            .map(|row| {
                let state = progress
                    .iter()
                    .find(|progress| progress.endpoint_id == row.id)
                    .map(ProgressRow::progress);
                (row.endpoint(), state)
            })
            .collect())
    }

    async fn delete_endpoint(&self, id: &str, at: i64) -> Result<bool, StoreError> {
        let Some(row) = self.endpoint_row(id).await? else {
            return Ok(false);
        };
        let row = EndpointRow {
            deleted_at: Some(at),
            version: next_version(row.version),
            ..row
        };
        self.insert("webhook_endpoints", &[row]).await?;
        Ok(true)
    }

    async fn request_replay(&self, id: &str, since: i64, at: i64) -> Result<bool, StoreError> {
        let Some(row) = self.endpoint_row(id).await? else {
            return Ok(false);
        };
        let row = EndpointRow {
            replay_since: Some(since),
            replay_requested_at: Some(at),
            version: next_version(row.version),
            ..row
        };
        self.insert("webhook_endpoints", &[row]).await?;
        Ok(true)
    }

    async fn deliveries(&self, id: &str, limit: u32) -> Result<Vec<DeliveryAttempt>, StoreError> {
        let rows: Vec<AttemptRow> = self
            .client
            .query(
                "SELECT endpoint_id, attempted_at, event_id, event_type, attempt, status_code, \
                 error, outcome FROM webhook_deliveries WHERE endpoint_id = ? \
                 ORDER BY attempted_at DESC LIMIT ?",
            )
            .bind(id)
            .bind(limit)
            .fetch_all()
            .await?;
        rows.into_iter()
            .map(|row| {
                match (
                    EventType::parse(&row.event_type),
                    DeliveryOutcome::parse(&row.outcome),
                ) {
                    (Some(kind), Some(outcome)) => Ok(DeliveryAttempt {
                        event_id: row.event_id,
                        kind,
                        attempt: row.attempt,
                        status_code: row.status_code,
                        error: row.error,
                        outcome,
                        attempted_at: Timestamp::from_millis(row.attempted_at),
                    }),
                    _ => Err(StoreError::Corrupt(format!(
                        "delivery of {}: {} {}",
                        row.event_id, row.event_type, row.outcome
                    ))),
                }
            })
            .collect()
    }

    async fn checkpoints(&self) -> Result<Cursor, StoreError> {
        let stored: Vec<(String, i64, i64)> = crate::store::clickhouse::queries::checkpoints()
            .to_clickhouse(&self.client)
            .fetch_all()
            .await?;
        Ok(stored
            .into_iter()
            .filter_map(|(topic, partition, next)| {
                Some((partition_key(&topic, i32::try_from(partition).ok()?), next))
            })
            .collect())
    }

    async fn cursor_from(&self, floor: i64, until: &Cursor) -> Result<Cursor, StoreError> {
        let mut cursor = Cursor::new();
        for (key, next) in until {
            let Some((topic, partition)) = split_key(key) else {
                continue;
            };
            let first: Option<i64> = self
                .client
                .query(
                    "SELECT source_offset FROM webhook_events WHERE source_topic = ? \
                     AND source_partition = ? AND created_at >= ? AND source_offset < ? \
                     ORDER BY source_offset LIMIT 1",
                )
                .bind(topic)
                .bind(partition)
                .bind(floor)
                .bind(*next)
                .fetch_optional()
                .await?;
            cursor.insert(key.clone(), first.unwrap_or(*next));
        }
        Ok(cursor)
    }

    /// One query for every partition that has something to read (a primary-key range
    /// each), so an endpoint costs one round trip per poll however many partitions moved.
    async fn events_after(
        &self,
        cursor: &Cursor,
        until: &Cursor,
        limit: u32,
    ) -> Result<Vec<EventRow>, StoreError> {
        let ranges: Vec<(&str, i32, i64, i64)> = until
            .iter()
            .filter_map(|(key, next)| {
                let (topic, partition) = split_key(key)?;
                let from = cursor.get(key).copied().unwrap_or(0);
                (from < *next).then_some((topic, partition, from, *next))
            })
            .collect();
        let mut events = Vec::new();
        // A bounded query size (max_query_size is 256 KiB) however many partitions moved.
        for chunk in ranges.chunks(RANGES_PER_QUERY) {
            events.extend(self.events_in(chunk, limit).await?);
        }
        Ok(events)
    }

    async fn save_progress(
        &self,
        endpoint_id: &str,
        progress: &Progress,
    ) -> Result<(), StoreError> {
        let row = ProgressRow {
            endpoint_id: endpoint_id.to_owned(),
            cursor: serde_json::to_string(&progress.cursor)
                .map_err(|error| StoreError::Corrupt(error.to_string()))?,
            floor: progress.floor,
            failing_since: progress.failing_since,
            disabled_at: progress.disabled_at,
            replay_applied: progress.replay_applied,
            retry_since: progress.retry_since,
            attempts: progress.attempts,
            retry_event: progress.retry_event.clone(),
            version: self.progress_version(endpoint_id).await?,
        };
        // Remembered before the insert: one that fails may still have landed, and the next
        // version must pass it.
        self.progress_versions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(endpoint_id.to_owned(), row.version);
        self.insert("webhook_progress", &[row]).await
    }

    async fn record_attempts(
        &self,
        attempts: &[(String, DeliveryAttempt)],
    ) -> Result<(), StoreError> {
        let rows: Vec<AttemptRow> = attempts
            .iter()
            .map(|(endpoint_id, attempt)| AttemptRow {
                endpoint_id: endpoint_id.clone(),
                attempted_at: attempt.attempted_at.as_millis(),
                event_id: attempt.event_id.clone(),
                event_type: attempt.kind.as_str().to_owned(),
                attempt: attempt.attempt,
                status_code: attempt.status_code,
                error: attempt.error.clone(),
                outcome: attempt.outcome.as_str().to_owned(),
            })
            .collect();
        self.insert("webhook_deliveries", &rows).await
    }

    async fn prune_attempts(&self, before: i64) -> Result<(), StoreError> {
        // A mutation: rare (the deliverer prunes hourly) and cheap on a table of attempts.
        self.client
            .query("ALTER TABLE webhook_deliveries DELETE WHERE attempted_at < ?")
            .bind(before)
            .execute()
            .await?;
        Ok(())
    }
}
