//! The service kit: what every binary (`referral-ingest`, `referral-api`,
//! `referral-aggregator`) is built from, so that they serve, stop, log and report alike.
//!
//! ```text
//!   TCP ─▶ server (keep-alive, header timeout, connection limit, graceful drain)
//!       ─▶ the binary's routes ─▶ ops (/healthz, /readyz, /metrics) | click POST | ...
//!   errors ─▶ error (one JSON rendering of every ApiError)
//! ```
//!
//! * [`server`]: the hyper 1.x accept loop, with graceful drain.
//! * [`idle_watch`]: the header-read timeout, kept per connection (not a timer per request).
//! * [`shutdown`]: the one shutdown signal every task watches.
//! * [`telemetry`]: logs and the Prometheus recorder.
//! * [`ops`]: `/healthz`, `/readyz` and `/metrics`, answered the same way by every binary.
//! * [`error`]: JSON responses and the one rendering of an [`referral_schemas::ApiError`].
//! * [`body`]: reading a request body under a size and a time limit.
//! * [`click`]: the click POST (validate, limit, resolve the code, publish, answer), served
//!   by the edge and by the embedded API with the same code.
//! * [`config`]: the server's and the click edge's flags.

pub mod body;
pub mod click;
pub mod config;
pub mod error;
pub mod idle_watch;
pub mod ops;
pub mod server;
pub mod shutdown;
pub mod telemetry;

/// The canonical prefix of the attribution routes.
pub const ATTRIBUTIONS_PREFIX: &str = "/api/v1/referral-attributions";
/// The prefix as the contract prints it (twice); served as an alias so clients written from
/// the contract verbatim work.
pub const ATTRIBUTIONS_DOUBLED_PREFIX: &str =
    "/api/v1/referral-attributions/api/v1/referral-attributions";
