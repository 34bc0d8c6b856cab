//! Webhooks: signed POSTs of conversion events, delivered at least once, in log order per
//! endpoint.
//!
//! ```text
//!   consumer (single writer) ──decision + its event, one flush──▶ webhook_events (outbox)
//!   API ──create / delete / replay──▶ webhook_endpoints
//!   deliverer ──reads events from each endpoint's cursor──▶ POST ──▶ receiver
//!            └──writes──▶ webhook_progress (cursor, failures), webhook_deliveries (attempts)
//! ```
//!
//! * [`store`]: [`WebhookStore`], what the API and the deliverer read and write, with its
//!   SQLite ([`sqlite`]) and ClickHouse ([`clickhouse`]) implementations.
//! * [`deliver`]: the deliverer (`referral-aggregator deliver`, or a task of the embedded
//!   `referral-api`).
//! * [`group`]: the deliverers' own consumer group on the log, which decides the endpoints
//!   each `referral-aggregator deliver` serves (one deliverer per endpoint, however many
//!   run).
//! * [`sign`]: the `Referral-Signature` header.
//! * [`guard`]: where a webhook may point (no SSRF).
//!
//! Why events come from an outbox the writer fills, not from the raw log: the log holds
//! commands, and only the single writer knows what each one did (a confirmation may be a
//! conflict, a retry, or a new conversion). The writer stores each new decision's event in
//! the same flush as the decision, keyed by the command's log position, so the outbox is
//! the log's decided half: same order, nothing more, nothing less, and replayable. Each
//! endpoint has its own cursor in it (its position, stored durably after the POSTs it
//! covers: a SIGKILL re-sends, never skips), so a failing endpoint holds back no other.

pub mod clickhouse;
pub mod deliver;
pub mod group;
pub mod guard;
pub mod sign;
pub mod sqlite;
pub mod store;

pub use store::{Cursor, Progress, StoredEndpoint, WebhookStore};

/// How long events are kept for deliveries and replays: longer than the longest retry
/// (`--webhook-retry-for`, 3 days by default).
pub const EVENT_RETENTION_MS: i64 = 7 * 24 * 3_600_000;
/// How long delivery attempts are listed.
pub const ATTEMPT_RETENTION_MS: i64 = 7 * 24 * 3_600_000;

/// A new endpoint's id and secret: 160 random bits each from the OS-seeded CSPRNG.
pub fn new_endpoint_credentials() -> (String, String) {
    use rand::RngCore;
    let mut rng = rand::rng();
    let mut id = [0u8; 10];
    let mut secret = [0u8; 24];
    rng.fill_bytes(&mut id);
    rng.fill_bytes(&mut secret);
    (
        format!(
            "{}{}",
            referral_schemas::webhook::ENDPOINT_PREFIX,
            hex::encode(id)
        ),
        format!(
            "{}{}",
            referral_schemas::webhook::SECRET_PREFIX,
            hex::encode(secret)
        ),
    )
}
