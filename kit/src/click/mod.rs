//! The click POST (recordReferralClick), independent of any HTTP framework: the edge
//! (`referral-ingest`, plain hyper) and the embedded API (axum) serve it with this code.
//!
//! * [`edge`]: [`edge::ClickEdge`]: limits, validates, resolves the code, publishes, waits
//!   for the log's acknowledgement, answers.
//! * [`rate_limit`]: per-IP, per-code and global limits (governor).
//! * [`client_ip`]: the client address, trusting `X-Forwarded-For` only from known proxies.

pub mod client_ip;
pub mod edge;
pub mod rate_limit;

pub use edge::{ClickEdge, EdgeSettings};
