//! What every handler shares.

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use referral_kit::click::ClickEdge;
use referral_pipeline::webhooks::WebhookStore;
use referral_pipeline::{Pipeline, Reads};

use crate::auth::ApiTokens;

/// Everything a handler needs. Shared behind an `Arc`.
pub struct AppState {
    /// The click POST, the same code as the ingest binary's.
    pub edge: ClickEdge,
    /// Where commands go; readiness.
    pub pipeline: Arc<Pipeline>,
    /// Reads and verdicts.
    pub reads: Reads,
    pub tokens: ApiTokens,
    pub metrics: PrometheusHandle,
    /// Longest wait for a command's verdict before 503.
    pub command_timeout: Duration,
    /// How long a read of, or a command on, something written moments ago may wait for
    /// the store.
    pub read_after_write_wait: Duration,
    /// Webhook endpoints and their deliveries.
    pub webhooks: Arc<dyn WebhookStore>,
    /// `--webhook-allow-private`: registrations may use http and private addresses.
    pub webhook_allow_private: bool,
}
