//! The edge's routes: the click POST on both prefixes, the tracking pixel and the redirect
//! link, and the ops endpoints.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use metrics_exporter_prometheus::PrometheusHandle;
use referral_kit::click::ClickEdge;
use referral_kit::click::links::{self, Link};
use referral_kit::error::error_response;
use referral_kit::ops::{self, OpsRoute};
use referral_kit::{ATTRIBUTIONS_DOUBLED_PREFIX, ATTRIBUTIONS_PREFIX, telemetry};
use referral_pipeline::Pipeline;
use referral_schemas::{ApiError, ErrorKind};

/// What the routes share.
pub struct Edge {
    pub clicks: ClickEdge,
    pub pipeline: Arc<Pipeline>,
    pub metrics: PrometheusHandle,
    /// The click POST's request series, registered once.
    pub click_metrics: telemetry::ClickRouteMetrics,
}

/// Answers one request; records it by route template and status.
pub async fn route(
    edge: &Edge,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path();
    // The click POST, the hot path: its series are registered once.
    if let Some(metrics) = edge.click_metrics.of(&method, path) {
        let (parts, body) = request.into_parts();
        let response = edge.clicks.handle(peer.ip(), &parts.headers, body).await;
        metrics.record(response.status(), started);
        return response;
    }
    if let Some((link, code)) = Link::of(path) {
        let response = links::answer(
            &edge.clicks,
            link,
            &method,
            peer.ip(),
            request.headers(),
            code,
            request.uri().query(),
        )
        .await;
        telemetry::record_request(link.route(), &method, response.status(), started);
        return response;
    }
    let (route, response) = if path == ATTRIBUTIONS_PREFIX || path == ATTRIBUTIONS_DOUBLED_PREFIX {
        let route = if path == ATTRIBUTIONS_PREFIX {
            ATTRIBUTIONS_PREFIX
        } else {
            ATTRIBUTIONS_DOUBLED_PREFIX
        };
        let mut response: Response<Full<Bytes>> = error_response(&ApiError::new(
            ErrorKind::MethodNotAllowed,
            "this route accepts POST only",
        ));
        response
            .headers_mut()
            .insert(http::header::ALLOW, http::HeaderValue::from_static("POST"));
        (route, response)
    } else if let Some(ops_route) = OpsRoute::of(path) {
        let response = ops::answer(
            ops_route,
            &method,
            || edge.pipeline.readiness(),
            &edge.metrics,
        );
        (ops_route.path(), response)
    } else {
        (
            "unmatched",
            error_response(&ApiError::new(ErrorKind::RouteNotFound, "no such route")),
        )
    };
    telemetry::record_request(route, &method, response.status(), started);
    response
}
