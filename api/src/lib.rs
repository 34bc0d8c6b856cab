//! `referral-api`: reads, conversions, deletes and referral codes, over the pipeline the
//! configuration picks. With no Kafka and no ClickHouse configured it runs the whole
//! pipeline in one process (the embedded default): the embedded log, the consumer and the
//! SQLite store.
//!
//! ```text
//!   GET ───────────────▶ AttributionReader (store)
//!   POST click ────────▶ ClickEdge ─▶ EventLog ─▶ consumer ─▶ store
//!   PUT / DELETE ──────▶ command ──▶ EventLog ─▶ consumer ─▶ verdict ─▶ answer
//! ```
//!
//! * [`service`]: [`service::ApiService`] and [`service::run`]: start, serve, drain.
//! * [`router`]: the routes, the JSON 405, request metrics.
//! * [`routes`]: one module per resource.
//! * [`state`]: what every handler shares.
//! * [`commands`]: publishing a command and waiting for the single writer's verdict.
//! * [`auth`]: bearer tokens and scopes.
//! * [`config`]: flags, validated at start-up.

pub mod auth;
pub mod commands;
pub mod config;
pub mod router;
pub mod routes;
pub mod service;
pub mod state;

pub use router::app;
pub use service::{ApiService, run};
pub use state::AppState;
