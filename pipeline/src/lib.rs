//! The pipeline: everything between an accepted request and the store, in both modes.
//!
//! ```text
//!   edge / API ──publish──▶ log ──▶ consumer ──plan──▶ store ──read──▶ API
//!                 (EventLog)  │   (one loop)  (rules)  (StoreWriter,   (AttributionReader)
//!                             │                          SQLite | ClickHouse)
//!                             └── file log (embedded) | Kafka (production)
//!   consumer ──▶ announcer: code changes to the edges' directories, verdicts to waiters
//! ```
//!
//! * [`open`]: [`open::Pipeline::open`] and [`open::Aggregator::start`], the one place where
//!   configuration picks the backends.
//! * [`log`]: the [`log::EventLog`] trait and the embedded file log ([`log::file`]); the
//!   Kafka producer is in [`kafka`].
//! * [`consumer`]: the single writer: one loop that reads either log, batches, plans and
//!   writes, and stores its checkpoint with the data.
//! * [`plan`]: the one implementation of every rule of the writer, pure and unit-tested.
//! * [`store`]: the write ([`store::StoreWriter`]) and read ([`store::AttributionReader`])
//!   interfaces, and their SQLite and ClickHouse implementations.
//! * [`codes`]: the code -> mentor directory and the edge's look-up in it.
//! * [`verdicts`]: waiting for the verdict of a command.
//! * [`webhooks`]: webhook endpoints, the deliverer, signatures and the SSRF rule.
//! * [`embedded`]: the embedded mode assembled under one data directory.
//! * [`kafka`]: Kafka clients (producer, codes topic, admin).
//! * [`config`]: the pipeline's flags, shared by every binary.

pub mod codes;
pub mod config;
pub mod consumer;
pub mod embedded;
pub mod kafka;
pub mod log;
pub mod open;
pub mod plan;
pub mod store;
pub mod verdicts;
pub mod webhooks;

pub use open::{Aggregator, Backends, Pipeline, Reads, Role};
