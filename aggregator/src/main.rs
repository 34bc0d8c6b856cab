//! `referral-aggregator`: the single writer as its own process.
//!
//! In this build the embedded pipeline runs inside `referral-api`; this binary applies the
//! store's migrations (`migrate`), which the Helm chart runs as a job before upgrades.

use clap::{Parser, Subcommand};
use referral_aggregator::config::PipelineArgs;
use referral_aggregator::store::sqlite;

#[derive(Parser, Debug)]
#[command(name = "referral-aggregator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Apply pending migrations to the store, then exit.
    Migrate(PipelineArgs),
    /// Consume the log and apply it to the store (needs --kafka-brokers).
    Run(PipelineArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match Cli::parse().command {
        Command::Migrate(pipeline) => {
            pipeline.validate()?;
            pipeline.require_embedded("referral-aggregator migrate")?;
            sqlite::open(
                &pipeline.data_dir,
                pipeline.sqlite_synchronous,
                pipeline.attribution_window_ms(),
            )?;
            tracing::info!(data_dir = %pipeline.data_dir.display(), "store is up to date");
            Ok(())
        }
        Command::Run(pipeline) => {
            pipeline.validate()?;
            anyhow::bail!(
                "with no --kafka-brokers there is no shared log to consume: the embedded \
                 pipeline runs inside referral-api (cargo run --release --bin referral-api)"
            )
        }
    }
}
