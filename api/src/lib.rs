//! `referral-api`: reads, conversions, deletes and referral codes, over the same log and
//! store as the rest of the pipeline. With no Kafka and no ClickHouse configured it runs the
//! whole pipeline in one process (the embedded default).
//!
//! ```text
//!   GET ───────────────▶ AttributionReader (store)
//!   POST click ────────▶ ClickEdge ─▶ EventLog ─▶ writer ─▶ store
//!   PUT / DELETE ──────▶ command ──▶ EventLog ─▶ writer ─▶ verdict ─▶ answer
//! ```
//!
//! * [`app`]: the router, [`app::AppState`] and [`app::run`].
//! * [`routes`]: one module per resource.
//! * [`commands`]: publishing a command and waiting for the writer's verdict.
//! * [`auth`]: bearer tokens and scopes.
//! * [`config`]: flags, validated at start-up.

pub mod app;
pub mod auth;
pub mod commands;
pub mod config;
pub mod routes;
pub mod verdicts;

pub use app::{ApiService, AppState, EmbeddedService, app, run};
