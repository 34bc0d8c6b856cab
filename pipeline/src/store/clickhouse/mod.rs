//! The production store: ClickHouse, written by the aggregator alone.
//!
//! # Exactly-once from Kafka into ClickHouse
//!
//! ClickHouse has no transaction across tables, and 18.16 (the server the tests run) has no
//! insert deduplication for plain MergeTree tables. The design therefore does not rely on
//! either. It rests on three facts:
//!
//! 1. **One insert of one block into one MergeTree table is atomic** (one part). The totals
//!    table has no partition key and a flush writes a few hundred rows to it, so each flush's
//!    totals insert lands whole or not at all.
//! 2. **The checkpoint lives in that same insert.** Next to the signed deltas, the insert
//!    carries one `checkpoint` row per Kafka partition whose `next_offset` is the distance
//!    the flush moved that partition (summed by the SummingMergeTree, the rows add up to
//!    the next offset to apply). Totals and checkpoint can never disagree: either the
//!    batch's deltas and its checkpoint move are both stored, or neither is.
//! 3. **Every other row is idempotent.** Attributions, members and codes are
//!    ReplacingMergeTree rows with a version: writing one twice changes nothing, and a stale
//!    re-write (a replayed click, version 1) loses to the newer state. Command decisions are
//!    recorded *before* their effects and keyed by command id, so a replayed command is
//!    never decided again (see [`crate::plan`]).
//!
//! A flush writes, in this order: decisions, then the attribution/member/code/webhook-event
//! rows (at once), code publications and dead letters (Kafka), then the
//! totals-and-checkpoint insert (the commit point), and only then commits the Kafka
//! offsets. A consumer that gets a partition reads its checkpoint
//! from ClickHouse and skips every message below it, whatever Kafka's committed offset says.
//!
//! Why each failure is safe:
//! * crash before or during the state inserts, or before the totals insert: the checkpoint
//!   did not move; the messages are read again; state rows are re-written (idempotent),
//!   recorded decisions are re-applied as recorded, totals are counted for the first time;
//! * crash after the totals insert, before the Kafka commit: the checkpoint moved; the
//!   messages are read again and skipped;
//! * an insert that timed out but succeeded: every failed flush forgets its cached
//!   checkpoints and re-reads them before retrying, so a landed totals insert is seen and
//!   its messages skipped. On servers with insert tokens (22.2+), the retry also carries the
//!   same `insert_deduplication_token`, a second guard;
//! * redelivery and rebalance: the new owner starts from the stored checkpoint; a revoked
//!   partition's pending batch is flushed or dropped inside the revocation callback, before
//!   another consumer can own it.
//!
//! With replicas (`--clickhouse-cluster`), fact 2 needs the checkpoint read back to be the
//! one stored, on whichever replica answers: every insert of the writer waits for
//! `insert_quorum` replicas and its reads are sequentially consistent (a replica lacking
//! a quorum-acknowledged part refuses them), and each commit insert carries a 'flush' row
//! naming its offset ranges, so replicated block deduplication drops a retried flush, never
//! a different one with equal totals. A commit stranded on a dead replica (quorum pending,
//! rows hidden) blocks every other quorum insert, and before a checkpoint is read the
//! writer makes a quorum insert of its own (`ClickHouseSink::quorum_barrier`), so the read
//! includes it (README, "ClickHouse with replicas").
//!
//! What it does not cover: two live consumers writing the same partition at once (a zombie
//! that lost its group session but still reaches ClickHouse). librdkafka detects a lost
//! session locally (`assignment_lost`), and the consumer stops writing a partition it no
//! longer owns, but a process paused for longer than the session timeout could still
//! finish one in-flight flush.

pub mod migrate;
pub mod queries;
pub mod reader;
pub mod sink;
pub mod totals;

use std::time::Duration;

use clickhouse::Client;
use clickhouse::Compression;

use super::StoreError;

/// Where the store is and how to log in.
#[derive(Clone, Debug)]
pub struct ClickHouseSettings {
    pub url: String,
    pub database: String,
    pub user: String,
    pub password: Option<String>,
    /// How long one insert may take before it is treated as failed (and retried).
    pub insert_timeout: Duration,
    /// `max_threads` of the reader's queries (0: the server's default).
    pub read_threads: u64,
    /// The cluster whose replicas hold the store (`ON CLUSTER`, Replicated engines).
    pub cluster: Option<String>,
    /// `insert_quorum` of the writer's inserts (0: off).
    pub insert_quorum: u32,
    /// The writer's reads with `select_sequential_consistency` (a cluster, or Cloud).
    pub sequential_reads: bool,
}

impl ClickHouseSettings {
    /// A client bound to the database.
    pub fn client(&self) -> Client {
        self.server_client().with_database(&self.database)
    }

    /// A client with no database (to create it).
    pub fn server_client(&self) -> Client {
        let client = Client::default()
            .with_url(&self.url)
            .with_user(&self.user)
            // RowBinary without names: 18.16 has no RowBinaryWithNamesAndTypes. Row structs
            // list columns in table order (see `rows`).
            .with_validation(false)
            // 18.16 answers compressed requests with an empty body.
            .with_compression(Compression::None);
        match &self.password {
            Some(password) => client.with_password(password),
            None => client,
        }
    }
}

/// The server's version, and what it allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerVersion {
    pub major: u32,
    pub minor: u32,
    pub text: String,
}

impl ServerVersion {
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.trim().split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(Self {
            major,
            minor,
            text: text.trim().to_owned(),
        })
    }

    pub fn at_least(&self, (major, minor): (u32, u32)) -> bool {
        (self.major, self.minor) >= (major, minor)
    }

    /// `insert_deduplication_token` (and the non-replicated deduplication window with it).
    pub fn has_insert_tokens(&self) -> bool {
        self.at_least((22, 2))
    }
}

/// Asks the server for its version.
pub async fn server_version(client: &Client) -> Result<ServerVersion, StoreError> {
    let text: String = client.query("SELECT version()").fetch_one().await?;
    ServerVersion::parse(&text)
        .ok_or_else(|| StoreError::Corrupt(format!("unexpected server version {text:?}")))
}

/// `IN (?, ?, ...)` with one placeholder per value (bound, never spliced into the SQL).
pub(crate) fn placeholders(count: usize) -> String {
    let mut list = String::from("(");
    for index in 0..count {
        if index > 0 {
            list.push_str(", ");
        }
        list.push('?');
    }
    list.push(')');
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_compare() {
        let old = ServerVersion::parse("18.16.1").unwrap();
        assert!(!old.has_insert_tokens());
        let current = ServerVersion::parse("25.8.2.29").unwrap();
        assert!(current.has_insert_tokens());
        assert!(ServerVersion::parse("22.2.1").unwrap().has_insert_tokens());
        assert_eq!(ServerVersion::parse("nonsense"), None);
        assert_eq!(placeholders(3), "(?, ?, ?)");
    }
}
