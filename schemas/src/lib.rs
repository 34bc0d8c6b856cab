//! What every part of the referral attribution pipeline shares.
//!
//! Data flows through these modules in this order:
//!
//! * [`validation`] turns hostile request bodies and query strings into typed inputs, or a
//!   field-level [`error::ApiError`]. Every rule lives here once; the edge and the API call
//!   the same functions.
//! * [`messages`] defines the versioned events that travel on the log (clicks and commands)
//!   and the [`messages::Verdict`] the single writer records for each command.
//! * [`state`] is the attribution state machine as pure functions: a store loads the current
//!   state, calls these, and persists the result plus the per-mentor [`state::TotalsDelta`]s.
//! * [`verdict`] decides what a click counts as (counted, duplicate, bot), in log order.
//! * [`attribution`] holds the records and the views the public contract prints.
//! * [`query`] holds the read-side filters, pages and periods shared by every store.
//! * [`webhook`] holds webhook registrations, events, delivery attempts and their rules.
//! * [`timestamp`] and [`id`] are the small value types everything above uses.
//! * [`migrations`] holds the store schemas, applied by the aggregator (the only writer).
//! * [`OPENAPI`] is the OpenAPI 3.1 document of the HTTP API (`schemas/openapi.json`).

pub mod attribution;
pub mod calendar;
pub mod error;
pub mod id;
pub mod messages;
pub mod migrations;
pub mod query;
pub mod state;
pub mod timestamp;
pub mod validation;
pub mod verdict;
pub mod webhook;

pub use attribution::{Attribution, AttributionKind, AttributionStatus, ReferralCode};
pub use error::{ApiError, ErrorKind};
pub use timestamp::Timestamp;

/// The OpenAPI 3.1 document of everything the API serves (`schemas/openapi.json`): every
/// route, parameter, body, status and header. `referral-api` serves it as is at
/// `GET /api/v1/openapi.json`, and `api/tests/openapi.rs` keeps it and the handlers in step.
pub const OPENAPI: &str = include_str!("../openapi.json");
