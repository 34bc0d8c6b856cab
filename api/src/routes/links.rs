//! The tracking pixel (`/p/{code}.gif`, `/p/{code}`) and the redirect link (`/r/{code}`):
//! public, the same code as `referral-ingest` (`referral_kit::click::links`).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, on};
use referral_kit::click::links::{self, Link};
use referral_schemas::{ApiError, ErrorKind};

use crate::router::HttpError;
use crate::state::AppState;

pub fn routes(router: Router<Arc<AppState>>) -> Router<Arc<AppState>> {
    // GET and HEAD only, explicitly: a HEAD (a link preview) must not run the GET's
    // recording, as axum's `get` would.
    let methods = MethodFilter::GET.or(MethodFilter::HEAD);
    router
        .route("/p/{code}", on(methods, visit))
        .route("/r/{code}", on(methods, visit))
}

async fn visit(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let peer = super::peer_ip(&request);
    // The route matched one non-empty segment, which is what `Link::of` accepts.
    let Some((link, code)) = Link::of(request.uri().path()) else {
        return HttpError(ApiError::new(ErrorKind::RouteNotFound, "no such route")).into_response();
    };
    links::answer(
        &state.edge,
        link,
        request.method(),
        peer,
        request.headers(),
        code,
        request.uri().query(),
    )
    .await
}
