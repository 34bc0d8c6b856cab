//! The API's life cycle: start the pipeline the configuration asks for, serve, drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use axum::Router;
use axum::body::Body;
use referral_kit::click::ClickEdge;
use referral_kit::shutdown::Shutdown;
use referral_kit::telemetry::ClickRouteMetrics;
use referral_kit::{server, telemetry};
use referral_pipeline::{Pipeline, Role};
use tokio::net::TcpListener;

use crate::auth::ApiTokens;
use crate::config::Config;
use crate::router::app;
use crate::state::AppState;

/// A running API: the handlers' state and the pipeline behind them.
pub struct ApiService {
    pub state: Arc<AppState>,
    drain_timeout: std::time::Duration,
}

impl ApiService {
    /// Opens the pipeline `config` asks for (embedded, or Kafka + ClickHouse) and builds the
    /// handlers' state. `shutdown` stops the rate limits' housekeeping.
    pub async fn start(config: &Config, shutdown: Shutdown) -> anyhow::Result<Self> {
        let tokens = Self::tokens(config)?;
        let pipeline = Arc::new(Pipeline::open(&config.pipeline, Role::Api, "referral-api").await?);
        let reads = pipeline
            .reads
            .clone()
            .context("the API's pipeline has no reads")?;
        let limits = Arc::new(config.edge.limits());
        limits.spawn_housekeeping(shutdown.clone());
        let edge = ClickEdge::new(
            pipeline.log.clone(),
            pipeline.codes.clone(),
            limits,
            config.edge.settings()?,
        );
        let webhooks = pipeline.webhooks(&config.webhooks)?;
        let state = Arc::new(AppState {
            edge,
            pipeline,
            reads,
            tokens,
            metrics: telemetry::metrics_handle(),
            command_timeout: config.edge.ack_timeout,
            read_after_write_wait: config.read_after_write_wait,
            webhooks,
            webhook_allow_private: config.webhooks.webhook_allow_private,
        });
        telemetry::spawn_metrics_upkeep(state.metrics.clone(), shutdown);
        Ok(Self {
            state,
            drain_timeout: config.server.drain_timeout,
        })
    }

    fn tokens(config: &Config) -> anyhow::Result<ApiTokens> {
        let tokens = config.validate()?;
        if tokens.is_open() {
            // Production reaches here only with --allow-anonymous; the embedded default is
            // meant for local use on 127.0.0.1.
            tracing::warn!(
                "no --api-tokens configured: every endpoint is open to anyone who can reach it"
            );
        }
        Ok(tokens)
    }

    pub fn router(&self) -> Router {
        app(self.state.clone())
    }

    /// The pipeline behind the API (tests wait on it).
    pub fn pipeline(&self) -> &Pipeline {
        &self.state.pipeline
    }

    /// Embedded: writes what is queued and lets the store catch up. Kafka: delivers what is
    /// queued. Waiting commands are answered.
    pub async fn shutdown(&self) {
        self.state.pipeline.shutdown(self.drain_timeout).await;
    }
}

/// Serves `config` on `listener` until `shutdown`, then drains requests and the pipeline.
pub async fn run(listener: TcpListener, config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    let settings = config
        .server
        .settings()?
        .exempting(config.edge.trusted_proxies()?);
    let service = ApiService::start(&config, shutdown.clone()).await?;
    let router = service.router();
    tracing::info!(address = %listener.local_addr()?, "referral-api listening");
    let click_metrics = Arc::new(ClickRouteMetrics::new());
    let make_service = |peer: SocketAddr| {
        let router = router.clone();
        let state = service.state.clone();
        let click_metrics = click_metrics.clone();
        hyper::service::service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
            let router = router.clone();
            let state = state.clone();
            let click_metrics = click_metrics.clone();
            async move {
                // The click POST, the hot path, goes straight to the edge as in
                // referral-ingest; the router serves it too (same code), for in-process
                // callers.
                if let Some(metrics) = click_metrics.of(request.method(), request.uri().path()) {
                    let started = Instant::now();
                    let (parts, body) = request.into_parts();
                    let response: http::Response<Body> =
                        state.edge.handle(peer.ip(), &parts.headers, body).await;
                    metrics.record(response.status(), started);
                    return Ok(response);
                }
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                use tower::ServiceExt;
                router.oneshot(request.map(Body::new)).await
            }
        })
    };
    server::serve(listener, make_service, settings, shutdown).await;
    service.shutdown().await;
    Ok(())
}
