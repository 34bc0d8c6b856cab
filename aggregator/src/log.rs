//! The producer side of the attribution log.

use async_trait::async_trait;
use referral_schemas::messages::LogEvent;

/// Why an event was not accepted. None of these means the event was applied; all of them
/// mean the caller must not acknowledge it to its client.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum PublishError {
    /// The bounded queue is full: back-pressure, answered with 503 at once.
    #[error("the log queue is full")]
    QueueFull,
    /// The log is closing or its writer is gone.
    #[error("the log is shutting down")]
    Closed,
    /// The event could not be made durable (the store or broker failed).
    #[error("the event could not be stored: {0}")]
    Failed(String),
}

/// Where the edge and the API send every change of state.
#[async_trait]
pub trait EventLog: Send + Sync {
    /// Appends one event and resolves once it is durable. Callers bound the wait with their
    /// own timeout; dropping the future abandons the wait, not necessarily the event.
    async fn publish(&self, event: LogEvent) -> Result<(), PublishError>;

    /// Whether new events can be accepted now (readiness).
    fn is_ready(&self) -> bool;
}
