//! `referral-aggregator`: parses its flags and runs `migrate`, `run` or `deliver`.

use anyhow::Context;
use clap::Parser;
use referral_aggregator::config::{Cli, Command};
use referral_kit::{shutdown, telemetry};

/// mimalloc: a flush allocates and frees hundreds of thousands of small buffers (decoded
/// events, planned rows, encoded inserts) in bursts; with glibc malloc half of the
/// consumer's samples were in `malloc`, `free` and `malloc_consolidate`
/// (docs/BENCHMARKS.md, "Aggregator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init_tracing();
    match Cli::parse().command {
        Command::Migrate(args) => referral_aggregator::migrate(args).await,
        Command::Run(args) => {
            // Listen for SIGTERM from the start: one arriving during start-up still drains.
            let shutdown = shutdown::on_signal();
            let listener = tokio::net::TcpListener::bind(args.consumer.listen)
                .await
                .with_context(|| format!("cannot listen on {}", args.consumer.listen))?;
            referral_aggregator::run(listener, args, shutdown).await
        }
        Command::Deliver(args) => {
            let shutdown = shutdown::on_signal();
            let listener = tokio::net::TcpListener::bind(args.listen)
                .await
                .with_context(|| format!("cannot listen on {}", args.listen))?;
            referral_aggregator::deliver(listener, args, shutdown).await
        }
    }
}
