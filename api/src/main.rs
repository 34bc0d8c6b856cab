//! `referral-api`: parses its flags and serves the whole contract until SIGTERM/SIGINT; the
//! embedded pipeline by default.

use anyhow::Context;
use clap::Parser;
use referral_api::config::Config;
use referral_kit::{shutdown, telemetry};

/// mimalloc, as in `referral-ingest`: this binary serves the same click path in embedded mode.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    telemetry::init_tracing();
    let config = Config::parse();
    config.validate()?;
    let runtime = config
        .server
        .runtime()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let shutdown = shutdown::on_signal();
        let listener = tokio::net::TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.server.listen))?;
        referral_api::run(listener, config, shutdown).await
    })
}
