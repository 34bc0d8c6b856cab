//! `GET /api/v1/openapi.json`: the OpenAPI 3.1 document of this API, as written in
//! `schemas/openapi.json` (public: it describes the API, it holds no data).

use axum::response::{IntoResponse, Response};
use referral_schemas::OPENAPI;

/// The document, byte for byte.
pub async fn serve() -> Response {
    ([(http::header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}
