//! The production writer driven as a library, as the consumer drives it, flush by flush:
//! `plan::plan` over the batch, then the `StoreWriter` calls `write_state` and `commit` of
//! the ClickHouse sink, so the rows, the materialized totals and the sorted copies are what
//! `referral-aggregator run` would store.

use std::time::{Duration, Instant};

use referral_pipeline::plan::{self, PartitionBatch, References};
use referral_pipeline::store::StoreWriter;
use referral_pipeline::store::clickhouse::ClickHouseSettings;
use referral_pipeline::store::clickhouse::sink::ClickHouseSink;
use referral_schemas::Timestamp;
use referral_schemas::messages::LogEvent;

use crate::{DATABASE, Result, WINDOW_MS};

const TOPIC: &str = "referral-events";

/// How the data was written.
#[derive(Debug, Default)]
pub struct LoadStats {
    pub total: Duration,
    pub click_flushes: u64,
    pub click_time: Duration,
    pub command_flushes: u64,
    pub commands: u64,
    pub command_time: Duration,
    /// Commands the writer rejected (none expected: the generator only issues valid ones).
    pub rejected: u64,
}

/// The production writer, driven as the consumer drives it, flush by flush.
pub struct Writer {
    sink: ClickHouseSink,
    /// The next offset of each partition.
    next: Vec<i64>,
    flushes: u64,
}

impl Writer {
    /// A writer to the database at `clickhouse_url`, offsets from 0 on `partitions`.
    pub async fn connect(clickhouse_url: &str, partitions: i32) -> Result<Self> {
        let settings = ClickHouseSettings {
            url: clickhouse_url.to_owned(),
            database: DATABASE.to_owned(),
            user: "default".to_owned(),
            password: None,
            insert_timeout: Duration::from_secs(300),
            read_threads: 0,
            cluster: None,
            insert_quorum: 0,
            sequential_reads: false,
        };
        let sink = ClickHouseSink::connect(&settings)
            .await
            .map_err(|error| format!("cannot connect to ClickHouse: {error}"))?;
        Ok(Self {
            sink,
            next: vec![0; usize::try_from(partitions).unwrap_or(1)],
            flushes: 0,
        })
    }

    /// One flush: `events` per partition, in log order. Returns the rejected commands.
    pub async fn flush(&mut self, events: Vec<(i32, Vec<LogEvent>)>) -> Result<u64> {
        let mut batches = Vec::with_capacity(events.len());
        for (partition, events) in events {
            if events.is_empty() {
                continue;
            }
            let slot = usize::try_from(partition).unwrap_or(0);
            let first = self.next[slot];
            let end = first + events.len() as i64;
            self.next[slot] = end;
            batches.push(PartitionBatch {
                topic: TOPIC.to_owned(),
                partition,
                events: (first..).zip(events).collect(),
                end,
            });
        }
        let keys: Vec<(String, i32)> = batches
            .iter()
            .map(|batch| (batch.topic.clone(), batch.partition))
            .collect();
        let store = |error: referral_pipeline::store::StoreError| error.to_string();
        let checkpoints = self.sink.checkpoints(&keys).await.map_err(store)?;
        let known = self
            .sink
            .load(&References::of(batches.iter().flat_map(|batch| {
                batch.events.iter().map(|(_, event)| event)
            })))
            .await
            .map_err(store)?;
        // No dedup window: the bench measures reads of what it wrote, verdicts aside.
        let mut dedup = plan::DedupWindows::new(0);
        let plan = plan::plan(
            &batches,
            &checkpoints,
            known,
            WINDOW_MS,
            &mut dedup,
            Timestamp::now(),
        );
        self.sink.write_state(&plan).await.map_err(store)?;
        self.flushes += 1;
        self.sink
            .commit(&plan, &format!("bench-reads-{}", self.flushes))
            .await
            .map_err(store)?;
        Ok(plan
            .outcomes
            .iter()
            .filter(|outcome| **outcome != "applied")
            .count() as u64)
    }

    /// Commands in flushes of at most `per_flush`, on partition 0 (commands share one key).
    pub async fn flush_commands(
        &mut self,
        commands: Vec<LogEvent>,
        per_flush: usize,
        stats: &mut LoadStats,
    ) -> Result<()> {
        let mut commands = commands.into_iter().peekable();
        while commands.peek().is_some() {
            let chunk: Vec<LogEvent> = commands.by_ref().take(per_flush).collect();
            let started = Instant::now();
            stats.commands += chunk.len() as u64;
            stats.rejected += self.flush(vec![(0, chunk)]).await?;
            stats.command_flushes += 1;
            stats.command_time += started.elapsed();
        }
        Ok(())
    }
}
