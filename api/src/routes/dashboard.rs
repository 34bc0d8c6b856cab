//! `GET /dashboard`: a mentor's totals, time series and the leaderboard in a browser.
//!
//! Static files compiled into the binary (no build step, nothing to deploy beside it): the
//! page reads this API with a token the user pastes, kept in `sessionStorage`. Served with
//! a strict Content-Security-Policy: scripts, styles and requests from this origin only.

use axum::Router;
use axum::body::Body;
use axum::extract::Path;
use axum::response::Response;
use axum::routing::get;
use http::{HeaderValue, StatusCode, header};
use referral_schemas::{ApiError, ErrorKind};

use crate::router::HttpError;

/// (path under /dashboard/, content type, bytes).
const FILES: &[(&str, &str, &[u8])] = &[
    (
        "dashboard.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../dashboard/dashboard.js"),
    ),
    (
        "dashboard.css",
        "text/css; charset=utf-8",
        include_bytes!("../../dashboard/dashboard.css"),
    ),
    (
        "vendor/uplot/uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../dashboard/vendor/uplot/uPlot.iife.min.js"),
    ),
    (
        "vendor/uplot/uPlot.min.css",
        "text/css; charset=utf-8",
        include_bytes!("../../dashboard/vendor/uplot/uPlot.min.css"),
    ),
    (
        "vendor/uplot/LICENSE",
        "text/plain; charset=utf-8",
        include_bytes!("../../dashboard/vendor/uplot/LICENSE"),
    ),
];

const INDEX: &[u8] = include_bytes!("../../dashboard/index.html");

/// Same-origin everything; no inline script or style, no framing.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

pub fn routes<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    router
        .route("/dashboard", get(index))
        .route("/dashboard/{*file}", get(file))
}

async fn index() -> Response {
    page("text/html; charset=utf-8", INDEX)
}

async fn file(Path(path): Path<String>) -> Result<Response, HttpError> {
    FILES
        .iter()
        .find(|(name, _, _)| *name == path)
        .map(|(_, content_type, bytes)| page(content_type, bytes))
        .ok_or_else(|| HttpError(ApiError::new(ErrorKind::RouteNotFound, "no such file")))
}

fn page(content_type: &'static str, bytes: &'static [u8]) -> Response {
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
