//! `referral-ingest`: the click edge as its own process (plain hyper).
//!
//! With no `--kafka-brokers` it runs over the embedded log and store in `--data-dir`: clicks
//! only. `referral-api` serves the whole contract and is the usual embedded entry point.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use metrics_exporter_prometheus::PrometheusHandle;
use referral_aggregator::codes::CodeDirectory;
use referral_aggregator::config::PipelineArgs;
use referral_aggregator::embedded::EmbeddedPipeline;
use referral_aggregator::kafka::codes as kafka_codes;
use referral_aggregator::kafka::producer::KafkaLog;
use referral_aggregator::log::EventLog;
use referral_ingest::codes::CodeResolver;
use referral_ingest::config::{EdgeArgs, ServerArgs};
use referral_ingest::edge::{ClickEdge, error_response, json_response};
use referral_ingest::{
    ATTRIBUTIONS_DOUBLED_PREFIX, ATTRIBUTIONS_PREFIX, server, shutdown, telemetry,
};
use referral_schemas::{ApiError, ErrorKind};

/// mimalloc: every click allocates small buffers, often freed on another thread than the one
/// that allocated them. Against glibc malloc it cut the edge's CPU per click by about a tenth
/// (docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(name = "referral-ingest", version, about)]
struct Cli {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    edge: EdgeArgs,
    #[command(flatten)]
    pipeline: PipelineArgs,
}

struct Edge {
    clicks: ClickEdge,
    metrics: PrometheusHandle,
}

/// What stands behind the edge, to be shut down in its own way.
enum Backend {
    Kafka(Arc<KafkaLog>),
    Embedded(EmbeddedPipeline),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init_tracing();
    let cli = Cli::parse();
    cli.pipeline.validate()?;
    let edge_settings = cli.edge.settings()?;
    let server_settings = cli.server.settings()?;
    let metrics = telemetry::metrics_handle();
    let (trigger, shutdown) = shutdown::channel();
    tokio::spawn(async move {
        shutdown::os_signal().await;
        trigger.trigger();
    });
    telemetry::spawn_metrics_upkeep(metrics.clone(), shutdown.clone());
    let limits = Arc::new(cli.edge.limits());
    limits.spawn_housekeeping(shutdown.clone());

    let (log, codes, backend): (Arc<dyn EventLog>, CodeResolver, Backend) = match cli
        .pipeline
        .kafka_settings("referral-ingest")
    {
        Some(kafka) => {
            anyhow::ensure!(
                cli.edge.ack_timeout <= kafka.message_timeout,
                "--ack-timeout must not exceed --kafka-message-timeout"
            );
            let log = Arc::new(KafkaLog::connect(&kafka).await.with_context(|| {
                format!("cannot reach topic {} on {}", kafka.topic, kafka.brokers)
            })?);
            log.spawn_readiness_probe(shutdown.clone().stopped());
            let directory = CodeDirectory::default();
            let sync = kafka_codes::follow(&kafka, directory.clone(), shutdown.clone().stopped())
                .await
                .with_context(|| format!("cannot follow topic {}", kafka.codes_topic))?;
            tracing::info!(brokers = %kafka.brokers, topic = %kafka.topic, "publishing clicks to Kafka");
            (
                log.clone(),
                CodeResolver::following(directory, sync),
                Backend::Kafka(log),
            )
        }
        None => {
            let (pipeline, _reader, directory) =
                EmbeddedPipeline::open(&cli.pipeline).context("cannot open the embedded store")?;
            (
                pipeline.log(),
                CodeResolver::exact(directory),
                Backend::Embedded(pipeline),
            )
        }
    };
    let edge = Arc::new(Edge {
        clicks: ClickEdge::new(log, codes, limits, edge_settings),
        metrics,
    });
    let listener = tokio::net::TcpListener::bind(cli.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.server.listen))?;
    tracing::info!(address = %cli.server.listen, "referral-ingest listening");
    let make_service = |peer: SocketAddr| {
        let edge = edge.clone();
        hyper::service::service_fn(move |request| {
            let edge = edge.clone();
            async move { Ok::<_, Infallible>(route(&edge, peer, request).await) }
        })
    };
    server::serve(listener, make_service, server_settings, shutdown).await;
    match backend {
        // Every click answered 201 was acked already; this delivers what is still queued.
        Backend::Kafka(log) => log.flush(cli.server.drain_timeout).await,
        Backend::Embedded(pipeline) => pipeline.shutdown(cli.server.drain_timeout).await,
    }
    Ok(())
}

async fn route(edge: &Edge, peer: SocketAddr, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path();
    let (route, response) = if path == ATTRIBUTIONS_PREFIX || path == ATTRIBUTIONS_DOUBLED_PREFIX {
        let route = if path == ATTRIBUTIONS_PREFIX {
            ATTRIBUTIONS_PREFIX
        } else {
            ATTRIBUTIONS_DOUBLED_PREFIX
        };
        let response = if method == Method::POST {
            record_click(edge, peer, request).await
        } else {
            let mut response: Response<Full<Bytes>> = error_response(&ApiError::new(
                ErrorKind::MethodNotAllowed,
                "this route accepts POST only",
            ));
            response
                .headers_mut()
                .insert(http::header::ALLOW, http::HeaderValue::from_static("POST"));
            response
        };
        (route, response)
    } else {
        match (&method, path) {
            (&Method::GET, "/healthz") => (
                "/healthz",
                json_response(StatusCode::OK, br#"{"status":"ok"}"#.to_vec()),
            ),
            (&Method::GET, "/readyz") => ("/readyz", readiness(edge.clicks.is_ready())),
            (&Method::GET, "/metrics") => {
                let mut response = Response::new(Full::from(edge.metrics.render()));
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                ("/metrics", response)
            }
            _ => (
                "unmatched",
                error_response(&ApiError::new(ErrorKind::RouteNotFound, "no such route")),
            ),
        }
    };
    telemetry::record_request(route, &method, response.status(), started);
    response
}

async fn record_click(
    edge: &Edge,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (parts, incoming) = request.into_parts();
    edge.clicks
        .handle(peer.ip(), &parts.headers, incoming)
        .await
}

/// `/readyz`: 200 while new events can be accepted, else 503.
fn readiness(ready: bool) -> Response<Full<Bytes>> {
    if ready {
        json_response(StatusCode::OK, br#"{"status":"ready"}"#.to_vec())
    } else {
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            br#"{"status":"not_ready"}"#.to_vec(),
        )
    }
}
