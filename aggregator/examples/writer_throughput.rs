//! Clicks per second the embedded writer applies, in batches like group commit makes them.
//!
//! `cargo run --release -p referral-aggregator --example writer_throughput -- [BATCH] [BATCHES] [full|normal]`

use std::time::Instant;

use referral_aggregator::config::SqliteSynchronous;
use referral_aggregator::store::StateWriter;
use referral_aggregator::store::sqlite;
use referral_schemas::Timestamp;
use referral_schemas::id::new_attribution_id;
use referral_schemas::messages::{ClickEvent, LogEvent};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let batch: usize = args.next().map_or(Ok(64), |a| a.parse())?;
    let batches: usize = args.next().map_or(Ok(500), |a| a.parse())?;
    let synchronous = match args.next().as_deref() {
        Some("normal") => SqliteSynchronous::Normal,
        _ => SqliteSynchronous::Full,
    };
    let dir = tempfile::tempdir()?;
    let (mut writer, _) = sqlite::open(dir.path(), synchronous, i64::MAX)?;
    let now = Timestamp::now();
    let started = Instant::now();
    for b in 0..batches {
        let events: Vec<LogEvent> = (0..batch)
            .map(|n| {
                LogEvent::Click(ClickEvent {
                    attribution_id: new_attribution_id(),
                    code: "BENCH-1".into(),
                    mentor_id: format!("usr_{}", (b * batch + n) % 1000),
                    ip_address: "185.12.34.56".into(),
                    user_agent: Some("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0)".into()),
                    referrer_url: Some("https://instagram.com".into()),
                    occurred_at: now,
                    received_at: now,
                })
            })
            .collect();
        writer.apply_batch(&events)?;
    }
    let elapsed = started.elapsed();
    let rows = batch * batches;
    println!(
        "{rows} clicks in {elapsed:?}: {:.0} clicks/s ({batch} per transaction, {synchronous:?})",
        rows as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}
