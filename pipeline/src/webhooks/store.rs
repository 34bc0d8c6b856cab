//! What the API and the deliverer keep about webhooks, in either store. Each table has one
//! writer: endpoints the API, progress and attempts the deliverer, events the consumer.

use std::collections::BTreeMap;

use async_trait::async_trait;
use referral_schemas::Timestamp;
use referral_schemas::webhook::{DeliveryAttempt, EventType, WebhookEndpoint};
use serde::{Deserialize, Serialize};

use crate::plan::rows::EventRow;
use crate::store::StoreError;

/// Per log partition (`<topic>/<partition>`), the offset of the next event to deliver.
pub type Cursor = BTreeMap<String, i64>;

/// The cursor key of an event's partition.
pub fn partition_key(topic: &str, partition: i32) -> String {
    format!("{topic}/{partition}")
}

/// The topic and partition of a cursor key.
pub fn split_key(key: &str) -> Option<(&str, i32)> {
    let (topic, partition) = key.rsplit_once('/')?;
    Some((topic, partition.parse().ok()?))
}

/// A registered endpoint as stored (with its secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEndpoint {
    pub id: String,
    pub url: String,
    pub events: Vec<EventType>,
    pub secret: String,
    pub created_at: i64,
    /// The last replay asked for: (since, asked at).
    pub replay: Option<(i64, i64)>,
}

impl StoredEndpoint {
    /// Events as stored: comma-separated names.
    pub fn events_text(&self) -> String {
        self.events
            .iter()
            .map(|kind| kind.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn parse_events(text: &str) -> Vec<EventType> {
        text.split(',').filter_map(EventType::parse).collect()
    }

    /// As the API prints it; the secret only when `with_secret` (the creation's answer).
    pub fn view(&self, progress: Option<&Progress>, with_secret: bool) -> WebhookEndpoint {
        let disabled_at = progress.and_then(|progress| progress.disabled_at);
        WebhookEndpoint {
            id: self.id.clone(),
            url: self.url.clone(),
            events: self.events.clone(),
            secret: with_secret.then(|| self.secret.clone()),
            created_at: Timestamp::from_millis(self.created_at),
            enabled: disabled_at.is_none(),
            disabled_at: disabled_at.map(Timestamp::from_millis),
        }
    }
}

/// The deliverer's state for one endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub cursor: Cursor,
    /// Events created before this (ms) are not sent: the endpoint's creation, or a replay's
    /// `since`.
    pub floor: i64,
    /// The first failure since the last 2xx.
    pub failing_since: Option<i64>,
    pub disabled_at: Option<i64>,
    /// The replay request (its time) this state applied.
    pub replay_applied: i64,
    /// The first attempt at the event at the cursor, while it has not succeeded: its
    /// `--webhook-retry-for` counts from here, across restarts.
    pub retry_since: Option<i64>,
    /// Attempts made at that event (the next one's number, and its backoff).
    pub attempts: u32,
    /// The event `retry_since` and `attempts` belong to.
    pub retry_event: Option<String>,
}

impl Progress {
    /// The event at the cursor is done: the next one starts its own retries.
    pub fn clear_retries(&mut self) {
        self.retry_event = None;
        self.retry_since = None;
        self.attempts = 0;
    }
}

/// What the API and the deliverer read and write.
#[async_trait]
pub trait WebhookStore: Send + Sync {
    // The API's side.
    async fn create_endpoint(&self, endpoint: &StoredEndpoint) -> Result<(), StoreError>;
    /// A live (not deleted) endpoint with the deliverer's state of it.
    async fn endpoint(
        &self,
        id: &str,
    ) -> Result<Option<(StoredEndpoint, Option<Progress>)>, StoreError>;
    /// Every live endpoint, oldest first.
    async fn endpoints(&self) -> Result<Vec<(StoredEndpoint, Option<Progress>)>, StoreError>;
    /// False when there was no such live endpoint.
    async fn delete_endpoint(&self, id: &str, at: i64) -> Result<bool, StoreError>;
    /// Asks the deliverer to send again every event from `since` on (and to enable the
    /// endpoint again). False when there was no such live endpoint.
    async fn request_replay(&self, id: &str, since: i64, at: i64) -> Result<bool, StoreError>;
    /// The endpoint's most recent attempts, newest first.
    async fn deliveries(&self, id: &str, limit: u32) -> Result<Vec<DeliveryAttempt>, StoreError>;

    // The deliverer's side.
    /// Per partition, the next offset the consumer will apply: every event below it is
    /// stored and visible (in production: its flush's checkpoint is stored).
    async fn checkpoints(&self) -> Result<Cursor, StoreError>;
    /// Per partition of `until`, the offset of the first event created at or after `floor`
    /// below `until` (`until`'s offset when there is none).
    async fn cursor_from(&self, floor: i64, until: &Cursor) -> Result<Cursor, StoreError>;
    /// Per partition of `until` where `cursor` (0 if absent) is below it: up to `limit`
    /// events from `cursor` to below `until`, in log order.
    async fn events_after(
        &self,
        cursor: &Cursor,
        until: &Cursor,
        limit: u32,
    ) -> Result<Vec<EventRow>, StoreError>;
    async fn save_progress(&self, endpoint_id: &str, progress: &Progress)
    -> Result<(), StoreError>;
    async fn record_attempts(
        &self,
        attempts: &[(String, DeliveryAttempt)],
    ) -> Result<(), StoreError>;
    /// Forgets attempts made before `before` (ms).
    async fn prune_attempts(&self, before: i64) -> Result<(), StoreError>;
}
