//! Kafka: the attribution log in production, and the compacted topic of referral codes.
//!
//! * [`producer`]: [`producer::KafkaLog`], the [`crate::log::EventLog`] on a real broker.
//! * [`codes`]: the `referral-codes` compacted topic (key = code, value = the code record,
//!   a tombstone when retired) and the follower that mirrors it into a
//!   [`crate::codes::CodeDirectory`] at the edge.
//! * [`admin`]: creating the topics (tests, `referral-aggregator migrate`).

pub mod admin;
pub mod codes;
pub mod producer;

use std::time::Duration;

/// Header carrying the event kind, so consumers can route without parsing the body.
pub const KIND_HEADER: &str = "kind";
/// Header carrying the message schema version.
pub const SCHEMA_VERSION_HEADER: &str = "schema_version";

/// How long start-up checks and metadata probes wait for a broker.
pub const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

/// Settings of every Kafka client of this project.
#[derive(Clone, Debug)]
pub struct KafkaSettings {
    pub brokers: String,
    /// The attribution log.
    pub topic: String,
    /// The compacted topic of referral codes.
    pub codes_topic: String,
    /// librdkafka's `message.timeout.ms`: how long it retries a message before failing it.
    pub message_timeout: Duration,
    /// librdkafka's `linger.ms`: how long it gathers a batch.
    pub linger: Duration,
    /// librdkafka's `queue.buffering.max.messages`: the bounded local queue.
    pub queue_max_messages: usize,
    /// `client.id`, for the broker's logs and quotas.
    pub client_id: String,
}
