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
use referral_aggregator::config::PipelineArgs;
use referral_aggregator::embedded::EmbeddedPipeline;
use referral_ingest::config::{EdgeArgs, ServerArgs};
use referral_ingest::edge::{ClickEdge, error_response, json_response, serialize_response};
use referral_ingest::{
    ATTRIBUTIONS_DOUBLED_PREFIX, ATTRIBUTIONS_PREFIX, body, server, shutdown, telemetry,
};
use referral_schemas::validation::MAX_BODY_BYTES;
use referral_schemas::{ApiError, ErrorKind};

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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init_tracing();
    let cli = Cli::parse();
    cli.pipeline.validate()?;
    cli.edge.validate()?;
    let settings = cli.server.settings()?;
    let metrics = telemetry::metrics_handle();
    let (pipeline, _reader, directory) =
        EmbeddedPipeline::open(&cli.pipeline).context("cannot open the embedded store")?;
    let edge = Arc::new(Edge {
        clicks: ClickEdge::new(
            pipeline.log(),
            directory,
            cli.edge.trusted_proxies()?,
            cli.edge.ack_timeout,
        ),
        metrics: metrics.clone(),
    });
    let listener = tokio::net::TcpListener::bind(cli.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.server.listen))?;
    tracing::info!(address = %cli.server.listen, "referral-ingest listening");
    let (trigger, shutdown) = shutdown::channel();
    telemetry::spawn_metrics_upkeep(metrics, shutdown.clone());
    tokio::spawn(async move {
        shutdown::os_signal().await;
        trigger.trigger();
    });
    let make_service = |peer: SocketAddr| {
        let edge = edge.clone();
        hyper::service::service_fn(move |request| {
            let edge = edge.clone();
            async move { Ok::<_, Infallible>(route(&edge, peer, request).await) }
        })
    };
    server::serve(listener, make_service, settings, shutdown).await;
    pipeline.shutdown(cli.server.drain_timeout).await;
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
    let outcome = match body::read_limited(&parts.headers, incoming, MAX_BODY_BYTES).await {
        Ok(bytes) => {
            edge.clicks
                .record_click(peer.ip(), &parts.headers, bytes)
                .await
        }
        Err(error) => Err(error),
    };
    match outcome {
        Ok(attribution) => serialize_response(StatusCode::CREATED, &attribution),
        Err(error) => error_response(&error),
    }
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
