//! `referral-ingest`: parses its flags and runs the click edge until SIGTERM/SIGINT.

use anyhow::Context;
use clap::Parser;
use referral_ingest::Config;
use referral_kit::{shutdown, telemetry};

/// mimalloc: every click allocates small buffers, often freed on another thread than the one
/// that allocated them. Against glibc malloc it cut the edge's CPU per click by about a tenth
/// (docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    telemetry::init_tracing();
    let config = Config::parse();
    let runtime = config
        .server
        .runtime()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.server.listen))?;
        referral_ingest::run(listener, config, shutdown::on_signal()).await
    })
}
