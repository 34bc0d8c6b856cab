//! Handlers, one module per resource, and the helpers they share.

pub mod attributions;
pub mod codes;
pub mod dashboard;
pub mod export;
pub mod links;
pub mod openapi;
pub mod ops;
pub mod series;
pub mod webhooks;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::StatusCode;
use referral_kit::body::read_limited;
use referral_kit::error::serialize_response;
use referral_schemas::ApiError;
use referral_schemas::query::{PageRequest, Pagination};
use referral_schemas::validation::{MAX_BODY_BYTES, require_json_content_type};
use serde::Serialize;

use crate::router::HttpError;

pub type HandlerResult = Result<Response, HttpError>;

/// The TCP peer of a request (the server puts it in the extensions); unspecified for an
/// in-process caller that did not.
pub fn peer_ip(request: &axum::extract::Request) -> std::net::IpAddr {
    request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map_or(
            std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            |axum::extract::ConnectInfo(peer)| peer.ip(),
        )
}

/// A list answer: `{"data": [...], "pagination": {...}}`.
#[derive(Serialize)]
pub struct ListBody<T> {
    pub data: Vec<T>,
    pub pagination: Pagination,
}

impl<T: Serialize> ListBody<T> {
    /// A 200 with one page of `data` out of `total` matches.
    pub fn response(data: Vec<T>, page: PageRequest, total: u64) -> Response {
        Self::respond(data, page, total, None)
    }

    /// The same, for a list with cursors: `next_cursor` is the next page's (null: none).
    pub fn with_cursor(
        data: Vec<T>,
        page: PageRequest,
        total: u64,
        next_cursor: Option<String>,
    ) -> Response {
        Self::respond(data, page, total, Some(next_cursor))
    }

    fn respond(
        data: Vec<T>,
        page: PageRequest,
        total: u64,
        next_cursor: Option<Option<String>>,
    ) -> Response {
        let pagination = Pagination {
            page: page.page,
            limit: page.limit,
            total,
            next_cursor,
        };
        json(StatusCode::OK, &Self { data, pagination })
    }
}

/// Reads a JSON body: 415 unless declared JSON, 413 past the limit.
pub async fn json_body(request: axum::extract::Request) -> Result<Vec<u8>, ApiError> {
    let (parts, body) = request.into_parts();
    require_json_content_type(parts.headers.get(http::header::CONTENT_TYPE))?;
    let bytes: Bytes = read_limited(&parts.headers, body, MAX_BODY_BYTES).await?;
    Ok(bytes.to_vec())
}

pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    serialize_response::<Body, T>(status, value)
}

/// Logs a store failure and hides it from the client.
pub fn store_failure(error: referral_pipeline::store::StoreError) -> HttpError {
    if error.is_unavailable() {
        // A store restart or a network cut: the client should come back, as after a 503
        // from a full queue. Counted, since a run of these is an outage.
        tracing::warn!(%error, "store unavailable");
        metrics::counter!("referral_store_unavailable_total").increment(1);
        return HttpError(ApiError::overloaded(
            "the store is unavailable right now; retry shortly",
        ));
    }
    tracing::error!(%error, "store read failed");
    HttpError(ApiError::internal())
}
