//! The click POST (recordReferralClick), independent of any HTTP framework: the edge
//! (`referral-ingest`, plain hyper) and the embedded API (axum) serve it with this code.
//!
//! * [`edge`]: [`edge::ClickEdge`]: limits the client, reads the body, validates, resolves
//!   the code, limits the code and the process, publishes, waits for the log's
//!   acknowledgement, answers.
//! * [`links`]: the tracking pixel and the redirect link: a click recorded from a GET,
//!   and an answer that always works for the visitor.
//! * [`rate_limit`]: per-IP (per IPv4 address, per IPv6 /64), per-code and global limits
//!   (governor).
//! * [`in_flight`]: the bound on clicks handled at once (503 past it).
//! * [`client_ip`]: the client address, trusting `X-Forwarded-For` only from known proxies
//!   and only as far as their own hops (read from right to left).

pub mod client_ip;
pub mod edge;
pub mod in_flight;
pub mod links;
pub mod rate_limit;

pub use edge::{ClickEdge, EdgeSettings};
