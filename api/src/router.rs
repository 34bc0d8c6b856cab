//! The router: every route under its prefixes, the JSON 405, request metrics.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::StatusCode;
use referral_kit::error::error_response;
use referral_kit::{ATTRIBUTIONS_DOUBLED_PREFIX, ATTRIBUTIONS_PREFIX, telemetry};
use referral_schemas::{ApiError, ErrorKind};

use crate::routes::{attributions, codes, links, ops};
use crate::state::AppState;

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
    crate::routes::webhooks::routes(crate::routes::dashboard::routes(links::routes(
        codes::routes(router),
    )))
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
