//! Liveness, readiness and metrics: the kit's one answer, as axum handlers.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use http::Method;
use referral_kit::ops::{self, OpsRoute};

use crate::state::AppState;

fn answer(state: &AppState, route: OpsRoute) -> Response {
    ops::answer::<Body>(
        route,
        &Method::GET,
        || state.pipeline.readiness(),
        &state.metrics,
    )
}

/// Alive: the process answers.
pub async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    answer(&state, OpsRoute::Health)
}

/// Ready: the pipeline accepts events (and why not, when it does not).
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    answer(&state, OpsRoute::Ready)
}

/// Prometheus text format.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    answer(&state, OpsRoute::Metrics)
}
