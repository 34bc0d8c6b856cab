//! The single writer of attribution state, and the log and store interfaces around it.
//!
//! ```text
//!   edge / API ──publish──▶ EventLog ──▶ writer (group commit) ──▶ store ──read──▶ API
//!                                           │
//!                                           └─ code changes ──▶ CodeDirectory ──▶ edge
//! ```
//!
//! * [`log`]: the producer interface ([`log::EventLog`]) that the edge and the API publish
//!   to. `publish` resolves once the event is durable: in embedded mode, once the writer
//!   committed it; with Kafka (a later issue), once the broker acknowledged it.
//! * [`embedded`]: the in-process log, a bounded queue drained by one writer thread that
//!   applies many events per transaction (group commit) and only then acknowledges them.
//! * [`store`]: the read interface ([`store::AttributionReader`]) and the write interface
//!   ([`store::StateWriter`]); [`store::sqlite`] implements both for the embedded mode.
//! * [`kafka`]: the log on Kafka (producer), the compacted codes topic and its follower.
//! * [`codes`]: the in-memory code -> mentor directory the edge resolves clicks with.
//! * [`consumer`]: `referral-aggregator run`, the consumer group member that batches the
//!   Kafka log into ClickHouse ([`store::clickhouse`] explains why exactly once).
//! * [`ops`]: the aggregator's /metrics, /healthz and /readyz.
//! * [`config`]: the pipeline settings shared by every binary.

pub mod codes;
pub mod config;
pub mod consumer;
pub mod embedded;
pub mod kafka;
pub mod log;
pub mod ops;
pub mod service;
pub mod store;
