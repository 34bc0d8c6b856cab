//! The router, the shared state, and the process's life cycle.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::StatusCode;
use metrics_exporter_prometheus::PrometheusHandle;
use referral_aggregator::codes::CodeDirectory;
use referral_aggregator::embedded::EmbeddedPipeline;
use referral_aggregator::kafka::codes as kafka_codes;
use referral_aggregator::kafka::producer::KafkaLog;
use referral_aggregator::log::EventLog;
use referral_aggregator::store::AttributionReader;
use referral_aggregator::store::clickhouse::reader::ClickHouseReader;
use referral_ingest::codes::CodeResolver;
use referral_ingest::edge::{ClickEdge, error_response};
use referral_ingest::shutdown::Shutdown;
use referral_ingest::{ATTRIBUTIONS_DOUBLED_PREFIX, ATTRIBUTIONS_PREFIX, server, telemetry};
use referral_schemas::{ApiError, ErrorKind};
use tokio::net::TcpListener;

use crate::auth::ApiTokens;
use crate::config::Config;
use crate::routes::{attributions, codes, ops};
use crate::verdicts::VerdictWaiter;

/// Everything a handler needs. Shared behind an `Arc`.
pub struct AppState {
    /// The click POST, shared with the ingest binary.
    pub edge: ClickEdge,
    /// Where commands go.
    pub log: Arc<dyn EventLog>,
    /// Where reads and verdicts come from.
    pub reader: Arc<dyn AttributionReader>,
    pub tokens: ApiTokens,
    pub metrics: PrometheusHandle,
    /// Longest wait for a command's verdict before 503.
    pub command_timeout: Duration,
    /// How long an id created moments ago may be waited for (zero in embedded mode).
    pub read_after_write_wait: Duration,
    /// Production: one look-up for every command waiting on a verdict. Embedded: `None`,
    /// the verdict is committed before publish returns and is read directly.
    pub verdicts: Option<Arc<VerdictWaiter>>,
}

/// How often the production API looks up the verdicts it waits for (one query for all):
/// a small share of the aggregator's flush time, which dominates a command's latency.
const VERDICT_POLL: Duration = Duration::from_millis(25);

/// An error as an axum response: the one rendering shared with the ingest edge.
pub struct HttpError(pub ApiError);

impl From<ApiError> for HttpError {
    fn from(error: ApiError) -> Self {
        Self(error)
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        error_response::<Body>(&self.0)
    }
}

/// The whole HTTP surface. Attribution routes are served under the canonical prefix and
/// under the doubled prefix the contract prints.
pub fn app(state: Arc<AppState>) -> Router {
    let mut router = Router::new();
    for prefix in [ATTRIBUTIONS_PREFIX, ATTRIBUTIONS_DOUBLED_PREFIX] {
        router = attributions::routes(router, prefix);
    }
    codes::routes(router)
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/api/v1/openapi.json", get(crate::routes::openapi::serve))
        .fallback(|| async { HttpError(ApiError::new(ErrorKind::RouteNotFound, "no such route")) })
        .layer(middleware::from_fn(json_method_not_allowed))
        .layer(middleware::from_fn(track_requests))
        .with_state(state)
}

/// axum answers a known path with an unknown method with a bare 405 (and adds `Allow`
/// outside this layer); give it the JSON error body every other error has.
async fn json_method_not_allowed(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    if response.status() != StatusCode::METHOD_NOT_ALLOWED
        || response.headers().contains_key(http::header::CONTENT_TYPE)
    {
        return response;
    }
    let (mut parts, _) = response.into_parts();
    let error = ApiError::new(
        ErrorKind::MethodNotAllowed,
        "this route does not accept this method; the Allow header lists those it does",
    );
    let json = HttpError(error).into_response();
    parts.headers.extend(json.headers().clone());
    Response::from_parts(parts, json.into_body())
}

/// Requests by matched route and status, and their latency.
async fn track_requests(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let response = next.run(request).await;
    telemetry::record_request(route, &method, response.status(), started);
    response
}

/// What stands behind the API, stopped in its own way.
enum Backend {
    /// The whole pipeline in this process.
    Embedded(EmbeddedPipeline),
    /// Kafka for writes, ClickHouse for reads; the aggregator runs elsewhere.
    Kafka(Arc<KafkaLog>),
}

/// A running API: the handlers' state and the backend behind them.
pub struct ApiService {
    pub state: Arc<AppState>,
    backend: Backend,
    drain_timeout: Duration,
}

/// The embedded default, under its old name.
pub type EmbeddedService = ApiService;

impl ApiService {
    /// Starts the API in the mode `config` asks for: Kafka + ClickHouse when both are set,
    /// else the embedded pipeline. `shutdown` stops background tasks (Kafka mode).
    pub async fn start_with(config: &Config, shutdown: Shutdown) -> anyhow::Result<Self> {
        if config.pipeline.kafka_brokers.is_some() {
            Self::start_production(config, shutdown).await
        } else {
            Self::start(config)
        }
    }

    /// Opens the embedded store, starts the writer and builds the handlers' state.
    pub fn start(config: &Config) -> anyhow::Result<Self> {
        let tokens = Self::tokens(config)?;
        anyhow::ensure!(
            config.pipeline.kafka_brokers.is_none(),
            "--kafka-brokers is set: start the API with start_with (production mode)"
        );
        let (pipeline, reader, directory) =
            EmbeddedPipeline::open(&config.pipeline).context("cannot open the embedded store")?;
        let log: Arc<dyn EventLog> = pipeline.log();
        let edge = ClickEdge::new(
            log.clone(),
            CodeResolver::exact(directory),
            Arc::new(config.edge.limits()),
            config.edge.settings()?,
        );
        let state = Arc::new(AppState {
            edge,
            log,
            reader: Arc::new(reader),
            tokens,
            metrics: telemetry::metrics_handle(),
            command_timeout: config.edge.ack_timeout,
            // Embedded reads see every acknowledged write at once.
            read_after_write_wait: Duration::ZERO,
            verdicts: None,
        });
        Ok(Self {
            state,
            backend: Backend::Embedded(pipeline),
            drain_timeout: config.server.drain_timeout,
        })
    }

    /// Kafka for clicks and commands, ClickHouse for reads and verdicts, the codes topic for
    /// the click edge's directory (written by the aggregator after code commands).
    async fn start_production(config: &Config, shutdown: Shutdown) -> anyhow::Result<Self> {
        let tokens = Self::tokens(config)?;
        let kafka = config
            .pipeline
            .kafka_settings("referral-api")
            .context("--kafka-brokers is required in production mode")?;
        let clickhouse = config
            .pipeline
            .clickhouse_settings(Duration::from_secs(30))
            .context("--clickhouse-url is required in production mode")?;
        let log =
            Arc::new(KafkaLog::connect(&kafka).await.with_context(|| {
                format!("cannot reach topic {} on {}", kafka.topic, kafka.brokers)
            })?);
        log.spawn_readiness_probe(shutdown.clone().stopped());
        let directory = CodeDirectory::default();
        let sync = kafka_codes::follow(&kafka, directory.clone(), shutdown.clone().stopped())
            .await
            .with_context(|| format!("cannot follow topic {}", kafka.codes_topic))?;
        let events: Arc<dyn EventLog> = log.clone();
        let edge = ClickEdge::new(
            events.clone(),
            CodeResolver::following(directory, sync),
            Arc::new(config.edge.limits()),
            config.edge.settings()?,
        );
        let reader: Arc<dyn AttributionReader> = Arc::new(ClickHouseReader::new(&clickhouse));
        let verdicts =
            VerdictWaiter::spawn(reader.clone(), VERDICT_POLL, shutdown.clone().stopped());
        let state = Arc::new(AppState {
            edge,
            log: events,
            reader,
            tokens,
            metrics: telemetry::metrics_handle(),
            command_timeout: config.edge.ack_timeout,
            read_after_write_wait: config.read_after_write_wait,
            verdicts: Some(verdicts),
        });
        tracing::info!(brokers = %kafka.brokers, clickhouse = %clickhouse.url, "production mode: Kafka + ClickHouse");
        Ok(Self {
            state,
            backend: Backend::Kafka(log),
            drain_timeout: config.server.drain_timeout,
        })
    }

    fn tokens(config: &Config) -> anyhow::Result<ApiTokens> {
        let tokens = config.validate()?;
        if tokens.is_open() {
            tracing::warn!(
                "no --api-tokens configured: every endpoint is open to anyone who can reach it"
            );
        }
        Ok(tokens)
    }

    pub fn router(&self) -> Router {
        app(self.state.clone())
    }

    /// Embedded: lets the writer apply what is queued. Kafka: delivers what is queued.
    pub async fn shutdown(self) {
        match self.backend {
            Backend::Embedded(pipeline) => pipeline.shutdown(self.drain_timeout).await,
            Backend::Kafka(log) => log.flush(self.drain_timeout).await,
        }
    }
}

/// Serves `config` on `listener` until `shutdown`, then drains requests and the writer.
pub async fn run(listener: TcpListener, config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    let settings = config.server.settings()?;
    let service = ApiService::start_with(&config, shutdown.clone()).await?;
    telemetry::spawn_metrics_upkeep(service.state.metrics.clone(), shutdown.clone());
    service
        .state
        .edge
        .limits()
        .spawn_housekeeping(shutdown.clone());
    let router = service.router();
    tracing::info!(address = %listener.local_addr()?, "referral-api listening");
    let make_service = |peer: SocketAddr| {
        let router = router.clone();
        hyper::service::service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
            request
                .extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            let router = router.clone();
            async move {
                use tower::ServiceExt;
                router.oneshot(request.map(Body::new)).await
            }
        })
    };
    server::serve(listener, make_service, settings, shutdown).await;
    service.shutdown().await;
    Ok(())
}
