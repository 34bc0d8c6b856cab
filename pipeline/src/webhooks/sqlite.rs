//! [`WebhookStore`] on the embedded store: one read-write connection of its own to the
//! same database (WAL), so the consumer's transactions and these small writes take turns.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use referral_schemas::Timestamp;
use referral_schemas::webhook::{DeliveryAttempt, DeliveryOutcome, EventType};
use rusqlite::{Connection, OptionalExtension, params};

use super::store::{Cursor, Progress, StoredEndpoint, WebhookStore, partition_key, split_key};
use crate::plan::rows::EventRow;
use crate::store::StoreError;

#[derive(Clone)]
pub struct SqliteWebhooks {
    connection: Arc<Mutex<Connection>>,
}

const ENDPOINT_COLUMNS: &str = "e.id, e.url, e.events, e.secret, e.created_at, e.replay_since, \
     e.replay_requested_at, p.cursor, p.floor, p.failing_since, p.disabled_at, p.replay_applied, \
     p.retry_since, p.attempts, p.retry_event";
const ENDPOINT_JOIN: &str =
    "webhook_endpoints e LEFT JOIN webhook_progress p ON p.endpoint_id = e.id";

fn endpoint_from_row(
    row: &rusqlite::Row<'_>,
) -> rusqlite::Result<(StoredEndpoint, Option<Progress>)> {
    let events: String = row.get(2)?;
    let replay = match (row.get::<_, Option<i64>>(5)?, row.get::<_, Option<i64>>(6)?) {
        (Some(since), Some(at)) => Some((since, at)),
        _ => None,
    };
    let endpoint = StoredEndpoint {
        id: row.get(0)?,
        url: row.get(1)?,
        events: StoredEndpoint::parse_events(&events),
        secret: row.get(3)?,
        created_at: row.get(4)?,
        replay,
    };
    let progress = match row.get::<_, Option<String>>(7)? {
        None => None,
        Some(cursor) => Some(Progress {
            cursor: serde_json::from_str(&cursor).unwrap_or_default(),
            floor: row.get(8)?,
            failing_since: row.get(9)?,
            disabled_at: row.get(10)?,
            replay_applied: row.get(11)?,
            retry_since: row.get(12)?,
            attempts: row.get(13)?,
            retry_event: row.get(14)?,
        }),
    };
    Ok((endpoint, progress))
}

impl SqliteWebhooks {
    /// A connection to the store under `data_dir` (already opened and migrated).
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let connection = Connection::open(data_dir.join(crate::store::sqlite::DATABASE_FILE))?;
        connection.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(Self {
            connection: Arc::new(Mutex::new(connection)),
        })
    }

    async fn with<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let connection = self.connection.clone();
        tokio::task::spawn_blocking(move || {
            let mut connection = connection.lock().unwrap_or_else(PoisonError::into_inner);
            work(&mut connection)
        })
        .await
        .map_err(|error| StoreError::Open(format!("a webhook store task failed: {error}")))?
    }

    /// Every partition with a stored checkpoint, and its next offset.
    fn stored_checkpoints(connection: &Connection) -> Result<Cursor, StoreError> {
        let mut statement = connection
            .prepare_cached("SELECT topic, partition, next_offset FROM consumer_checkpoints")?;
        let rows = statement.query_map([], |row| {
            Ok((
                partition_key(&row.get::<_, String>(0)?, row.get(1)?),
                row.get(2)?,
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[async_trait]
impl WebhookStore for SqliteWebhooks {
    async fn create_endpoint(&self, endpoint: &StoredEndpoint) -> Result<(), StoreError> {
        let endpoint = endpoint.clone();
        self.with(move |connection| {
            connection.execute(
                "INSERT INTO webhook_endpoints (id, url, events, secret, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    endpoint.id,
                    endpoint.url,
                    endpoint.events_text(),
                    endpoint.secret,
                    endpoint.created_at
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn endpoint(
        &self,
        id: &str,
    ) -> Result<Option<(StoredEndpoint, Option<Progress>)>, StoreError> {
        let id = id.to_owned();
        self.with(move |connection| {
            let sql = format!(
                "SELECT {ENDPOINT_COLUMNS} FROM {ENDPOINT_JOIN} \
                 WHERE e.id = ?1 AND e.deleted_at IS NULL"
            );
            Ok(connection
                .prepare_cached(&sql)?
                .query_row([id], endpoint_from_row)
                .optional()?)
        })
        .await
    }

    async fn endpoints(&self) -> Result<Vec<(StoredEndpoint, Option<Progress>)>, StoreError> {
        self.with(|connection| {
            let sql = format!(
                "SELECT {ENDPOINT_COLUMNS} FROM {ENDPOINT_JOIN} \
                 WHERE e.deleted_at IS NULL ORDER BY e.created_at, e.id"
            );
            let mut statement = connection.prepare_cached(&sql)?;
            let rows = statement.query_map([], endpoint_from_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn delete_endpoint(&self, id: &str, at: i64) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.with(move |connection| {
            let changed = connection.execute(
                "UPDATE webhook_endpoints SET deleted_at = ?2 WHERE id = ?1 AND deleted_at IS NULL",
                params![id, at],
            )?;
            Ok(changed == 1)
        })
        .await
    }

    async fn request_replay(&self, id: &str, since: i64, at: i64) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.with(move |connection| {
            let changed = connection.execute(
                "UPDATE webhook_endpoints SET replay_since = ?2, replay_requested_at = ?3 \
                 WHERE id = ?1 AND deleted_at IS NULL",
                params![id, since, at],
            )?;
            Ok(changed == 1)
        })
        .await
    }

    async fn deliveries(&self, id: &str, limit: u32) -> Result<Vec<DeliveryAttempt>, StoreError> {
        let id = id.to_owned();
        self.with(move |connection| {
            let mut statement = connection.prepare_cached(
                "SELECT event_id, event_type, attempt, status_code, error, outcome, attempted_at \
                 FROM webhook_deliveries WHERE endpoint_id = ?1 \
                 ORDER BY attempted_at DESC, rowid DESC LIMIT ?2",
            )?;
            let rows = statement.query_map(params![id, limit], |row| {
                let kind: String = row.get(1)?;
                let outcome: String = row.get(5)?;
                Ok((
                    kind,
                    outcome,
                    row.get(0)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                    row.get(6)?,
                ))
            })?;
            let mut attempts = Vec::new();
            for row in rows {
                let (kind, outcome, event_id, attempt, status_code, error, at): (
                    String,
                    String,
                    String,
                    u32,
                    Option<u16>,
                    Option<String>,
                    i64,
                ) = row?;
                let (Some(kind), Some(outcome)) =
                    (EventType::parse(&kind), DeliveryOutcome::parse(&outcome))
                else {
                    return Err(StoreError::Corrupt(format!(
                        "delivery of {event_id}: {kind} {outcome}"
                    )));
                };
                attempts.push(DeliveryAttempt {
                    event_id,
                    kind,
                    attempt,
                    status_code,
                    error,
                    outcome,
                    attempted_at: Timestamp::from_millis(at),
                });
            }
            Ok(attempts)
        })
        .await
    }

    async fn checkpoints(&self) -> Result<Cursor, StoreError> {
        self.with(|connection| Self::stored_checkpoints(connection))
            .await
    }

    async fn cursor_from(&self, floor: i64, until: &Cursor) -> Result<Cursor, StoreError> {
        let until = until.clone();
        self.with(move |connection| {
            let mut cursor = Cursor::new();
            for (key, next) in until {
                let Some((topic, partition)) = split_key(&key) else {
                    continue;
                };
                let first: Option<i64> = connection
                    .prepare_cached(
                        "SELECT MIN(source_offset) FROM webhook_events WHERE source_topic = ?1 \
                         AND source_partition = ?2 AND created_at >= ?3 AND source_offset < ?4",
                    )?
                    .query_row(params![topic, partition, floor, next], |row| row.get(0))?;
                cursor.insert(key, first.unwrap_or(next));
            }
            Ok(cursor)
        })
        .await
    }

    async fn events_after(
        &self,
        cursor: &Cursor,
        until: &Cursor,
        limit: u32,
    ) -> Result<Vec<EventRow>, StoreError> {
        let cursor = cursor.clone();
        let until = until.clone();
        self.with(move |connection| {
            let mut events = Vec::new();
            for (key, next) in until {
                let from = cursor.get(&key).copied().unwrap_or(0);
                let Some((topic, partition)) = split_key(&key).filter(|_| from < next) else {
                    continue;
                };
                let mut statement = connection.prepare_cached(
                    "SELECT event_id, event_type, attribution_id, data, created_at, source_topic, \
                     source_partition, source_offset FROM webhook_events \
                     WHERE source_topic = ?1 AND source_partition = ?2 AND source_offset >= ?3 \
                     AND source_offset < ?4 ORDER BY source_offset LIMIT ?5",
                )?;
                let rows =
                    statement.query_map(params![topic, partition, from, next, limit], |row| {
                        Ok(EventRow {
                            event_id: row.get(0)?,
                            event_type: row.get(1)?,
                            attribution_id: row.get(2)?,
                            data: row.get(3)?,
                            created_at: row.get(4)?,
                            source_topic: row.get(5)?,
                            source_partition: row.get(6)?,
                            source_offset: row.get(7)?,
                        })
                    })?;
                for row in rows {
                    events.push(row?);
                }
            }
            Ok(events)
        })
        .await
    }

    async fn save_progress(
        &self,
        endpoint_id: &str,
        progress: &Progress,
    ) -> Result<(), StoreError> {
        let endpoint_id = endpoint_id.to_owned();
        let progress = progress.clone();
        self.with(move |connection| {
            let cursor = serde_json::to_string(&progress.cursor)
                .map_err(|error| StoreError::Corrupt(error.to_string()))?;
            connection.execute(
                "INSERT INTO webhook_progress (endpoint_id, cursor, floor, failing_since, \
                 disabled_at, replay_applied, retry_since, attempts, retry_event, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
                 ON CONFLICT (endpoint_id) DO UPDATE SET cursor = excluded.cursor, \
                 floor = excluded.floor, failing_since = excluded.failing_since, \
                 disabled_at = excluded.disabled_at, replay_applied = excluded.replay_applied, \
                 retry_since = excluded.retry_since, attempts = excluded.attempts, \
                 retry_event = excluded.retry_event, \
                 updated_at = excluded.updated_at",
                params![
                    endpoint_id,
                    cursor,
                    progress.floor,
                    progress.failing_since,
                    progress.disabled_at,
                    progress.replay_applied,
                    progress.retry_since,
                    progress.attempts,
                    progress.retry_event,
                    Timestamp::now().as_millis()
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn record_attempts(
        &self,
        attempts: &[(String, DeliveryAttempt)],
    ) -> Result<(), StoreError> {
        let attempts = attempts.to_vec();
        self.with(move |connection| {
            let transaction = connection.transaction()?;
            {
                let mut insert = transaction.prepare_cached(
                    "INSERT INTO webhook_deliveries (endpoint_id, attempted_at, event_id, \
                     event_type, attempt, status_code, error, outcome) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )?;
                for (endpoint_id, attempt) in &attempts {
                    insert.execute(params![
                        endpoint_id,
                        attempt.attempted_at.as_millis(),
                        attempt.event_id,
                        attempt.kind.as_str(),
                        attempt.attempt,
                        attempt.status_code,
                        attempt.error,
                        attempt.outcome.as_str(),
                    ])?;
                }
            }
            transaction.commit()?;
            Ok(())
        })
        .await
    }

    async fn prune_attempts(&self, before: i64) -> Result<(), StoreError> {
        self.with(move |connection| {
            connection.execute(
                "DELETE FROM webhook_deliveries WHERE attempted_at < ?1",
                [before],
            )?;
            Ok(())
        })
        .await
    }
}
