//! The click edge: the hot path from a tracking pixel's POST to an acknowledged click.
//!
//! ```text
//!   TCP ─▶ server (keep-alive, header timeout, connection limit)
//!       ─▶ body (16 KiB limit) ─▶ edge (validate, resolve code, default from headers)
//!       ─▶ EventLog::publish ─▶ 201 only once the log made the click durable
//! ```
//!
//! * [`server`]: the hyper 1.x accept loop shared by every binary, with graceful drain.
//! * [`edge`]: [`edge::ClickEdge`], framework-free so the ingest binary (plain hyper) and the
//!   API (axum) serve the click POST with the same code.
//! * [`rate_limit`]: per-IP, per-code and global limits (governor).
//! * [`codes`]: code -> mentor, with a bounded wait and negative caching on misses.
//! * [`client_ip`]: the client address, trusting `X-Forwarded-For` only from known proxies.
//! * [`body`]: reading a request body under a size limit.
//! * [`shutdown`]: the one shutdown signal every task watches.
//! * [`telemetry`]: logs and the Prometheus recorder.
//! * [`config`]: the edge's and the server's flags.

pub mod body;
pub mod client_ip;
pub mod codes;
pub mod config;
pub mod edge;
pub mod rate_limit;
pub mod server;
pub mod shutdown;
pub mod telemetry;

/// The canonical prefix of the attribution routes.
pub const ATTRIBUTIONS_PREFIX: &str = "/api/v1/referral-attributions";
/// The prefix as the contract prints it (twice); served as an alias so clients written from
/// the contract verbatim work.
pub const ATTRIBUTIONS_DOUBLED_PREFIX: &str =
    "/api/v1/referral-attributions/api/v1/referral-attributions";
