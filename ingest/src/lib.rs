//! `referral-ingest`: the click edge as its own process, on plain hyper (no framework on the
//! hot path).
//!
//! ```text
//!   TCP ─▶ kit::server ─▶ route: click POST ─▶ kit::click::ClickEdge ─▶ log ─▶ 201
//!                              /healthz /readyz /metrics ─▶ kit::ops
//! ```
//!
//! With `--kafka-brokers` it publishes clicks to Kafka; without, it runs the embedded
//! pipeline in `--data-dir` (clicks only; `referral-api` is the usual embedded entry point).
//!
//! * [`config`]: the binary's flags.
//! * [`router`]: the routes and their metrics.
//! * [`run`]: serves until shutdown, then drains and flushes the log.

pub mod config;
pub mod router;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use referral_kit::click::ClickEdge;
use referral_kit::shutdown::Shutdown;
use referral_kit::{server, telemetry};
use referral_pipeline::{Pipeline, Role};
use tokio::net::TcpListener;

pub use config::Config;
use router::Edge;

/// Serves the click edge on `listener` until `shutdown`, then drains in-flight requests and
/// flushes the log.
pub async fn run(listener: TcpListener, config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    let settings = config.validate()?;
    let pipeline = Pipeline::open(&config.pipeline, Role::Edge, "referral-ingest").await?;
    let metrics = telemetry::metrics_handle();
    telemetry::spawn_metrics_upkeep(metrics.clone(), shutdown.clone());
    let limits = Arc::new(config.edge.limits());
    limits.spawn_housekeeping(shutdown.clone());
    let edge = Arc::new(Edge {
        clicks: ClickEdge::new(
            pipeline.log.clone(),
            pipeline.codes.clone(),
            limits,
            settings.edge,
        ),
        pipeline: Arc::new(pipeline),
        metrics,
        click_metrics: telemetry::ClickRouteMetrics::new(),
    });
    let address = listener
        .local_addr()
        .context("the listener has no address")?;
    tracing::info!(%address, "referral-ingest listening");
    let make_service = |peer: SocketAddr| {
        let edge = edge.clone();
        hyper::service::service_fn(move |request| {
            let edge = edge.clone();
            async move { Ok::<_, Infallible>(router::route(&edge, peer, request).await) }
        })
    };
    server::serve(listener, make_service, settings.server, shutdown).await;
    // Every click answered 201 is in the log already; this writes or delivers what is
    // still queued.
    edge.pipeline.shutdown(config.server.drain_timeout).await;
    Ok(())
}
