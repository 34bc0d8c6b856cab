//! The attribution log: where the edge and the API send every change of state.
//!
//! One trait, [`EventLog`], two implementations: [`file::FileLog`] (the embedded mode: an
//! append-only log of segment files under `--data-dir`) and
//! [`crate::kafka::producer::KafkaLog`] (production). In both, `publish` resolves once the
//! event is durable in the log (fsynced to disk, or acknowledged by every in-sync replica);
//! the store is applied from the log afterwards by the consumer ([`crate::consumer`]).

pub mod file;

use std::time::Duration;

use async_trait::async_trait;
use referral_schemas::messages::LogEvent;

/// Why an event was not accepted. None of these means the event is in the log; all of them
/// mean the caller must not acknowledge it to its client (503, retry).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum PublishError {
    /// The bounded queue is full: back-pressure, answered with 503 at once.
    #[error("the log queue is full")]
    QueueFull,
    /// The store is further behind the log than `--max-apply-lag` allows: back-pressure,
    /// answered with 503 at once until the consumer catches up.
    #[error("the store is {lag} events behind the log (bound {bound})")]
    Backlogged { lag: u64, bound: u64 },
    /// The log gave up on the event within its own bound ([`EventLog::own_wait_bound`]);
    /// it may still land, as after a caller's timeout.
    #[error("the log did not acknowledge the event in time")]
    TimedOut,
    /// The log is closing or its appender is gone.
    #[error("the log is shutting down")]
    Closed,
    /// The event could not be made durable (a failed write or fsync, a full disk, a broker
    /// error).
    #[error("the event could not be stored: {0}")]
    Failed(String),
}

/// Where the edge and the API send every change of state.
#[async_trait]
pub trait EventLog: Send + Sync {
    /// Appends one event and resolves once it is durable. Callers bound the wait with their
    /// own timeout; dropping the future abandons the wait, not necessarily the event.
    async fn publish(&self, event: LogEvent) -> Result<(), PublishError>;

    /// Whether new events can be accepted now (readiness), and if not, why.
    fn readiness(&self) -> Result<(), String>;

    /// The longest `publish` takes on its own before it fails with
    /// [`PublishError::TimedOut`], if the log bounds it (Kafka: the message timeout). A
    /// caller whose wait is no shorter needs no timer of its own: one timer per click is a
    /// measurable share of the edge's CPU.
    fn own_wait_bound(&self) -> Option<Duration> {
        None
    }
}
