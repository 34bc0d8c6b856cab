//! Webhook endpoints, admin scope: register, list, read, delete, their delivery attempts,
//! and replays.
//!
//! Registrations are configuration, not attribution state: the API writes them to the
//! store directly (the deliverer follows the table), and never decides an attribution.

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, Request, State};
use axum::routing::{get, post};
use http::StatusCode;
use referral_pipeline::webhooks::{StoredEndpoint, guard, new_endpoint_credentials};
use referral_schemas::webhook::{ENDPOINT_PREFIX, ReplayRequest, WebhookRequest};
use referral_schemas::{ApiError, ErrorKind, Timestamp};
use serde::Serialize;

use super::{HandlerResult, json, json_body, store_failure};
use crate::auth::Scope;
use crate::router::HttpError;
use crate::state::AppState;

pub const WEBHOOKS_PREFIX: &str = "/api/v1/webhooks";
/// Attempts listed by default, and at most.
const DEFAULT_DELIVERIES: u32 = 100;
const MAX_DELIVERIES: u32 = 1_000;

pub fn routes(router: Router<Arc<AppState>>) -> Router<Arc<AppState>> {
    router
        .route(WEBHOOKS_PREFIX, get(list).post(create))
        .route(
            &format!("{WEBHOOKS_PREFIX}/{{id}}"),
            get(get_one).delete(delete),
        )
        .route(
            &format!("{WEBHOOKS_PREFIX}/{{id}}/deliveries"),
            get(deliveries),
        )
        .route(&format!("{WEBHOOKS_PREFIX}/{{id}}/replay"), post(replay))
}

#[derive(Serialize)]
struct Listed<T> {
    data: Vec<T>,
}

#[derive(Serialize)]
struct Deleted {
    id: String,
    deleted: bool,
    deleted_at: Timestamp,
}

#[derive(Serialize)]
struct ReplayAccepted {
    id: String,
    replay_since: Timestamp,
    requested_at: Timestamp,
}

fn not_found() -> HttpError {
    HttpError(ApiError::new(ErrorKind::WebhookNotFound, "no such webhook endpoint").on_field("id"))
}

/// An id as this API makes them (`wh_` and 20 hex digits); anything else is unknown.
fn id_from_path(path: Result<Path<String>, PathRejection>) -> Result<String, HttpError> {
    let Ok(Path(id)) = path else {
        return Err(not_found());
    };
    let well_formed = id.strip_prefix(ENDPOINT_PREFIX).is_some_and(|hex| {
        hex.len() == 20
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    });
    if well_formed {
        Ok(id)
    } else {
        Err(not_found())
    }
}

async fn create(State(state): State<Arc<AppState>>, request: Request) -> HandlerResult {
    let caller = state.tokens.authorize(request.headers(), Scope::Admin)?;
    let mut body = json_body(request).await?;
    let registration = WebhookRequest::parse(&mut body)?;
    guard::check_url(&registration.url, state.webhook_allow_private)
        .await
        .map_err(|why| HttpError(ApiError::invalid("url", why)))?;
    let (id, secret) = new_endpoint_credentials();
    let endpoint = StoredEndpoint {
        id,
        url: registration.url,
        events: registration.events,
        secret,
        created_at: Timestamp::now().as_millis(),
        replay: None,
    };
    state
        .webhooks
        .create_endpoint(&endpoint)
        .await
        .map_err(store_failure)?;
    tracing::info!(target: "referral::audit", token = %caller.name(), endpoint = %endpoint.id, url = %endpoint.url, "webhook created");
    Ok(json(StatusCode::CREATED, &endpoint.view(None, true)))
}

async fn list(State(state): State<Arc<AppState>>, headers: http::HeaderMap) -> HandlerResult {
    state.tokens.authorize(&headers, Scope::Admin)?;
    let endpoints = state.webhooks.endpoints().await.map_err(store_failure)?;
    let data = endpoints
        .iter()
        .map(|(endpoint, progress)| endpoint.view(progress.as_ref(), false))
        .collect();
    Ok(json(StatusCode::OK, &Listed { data }))
}

async fn get_one(
    State(state): State<Arc<AppState>>,
    headers: http::HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> HandlerResult {
    state.tokens.authorize(&headers, Scope::Admin)?;
    let id = id_from_path(path)?;
    match state.webhooks.endpoint(&id).await.map_err(store_failure)? {
        Some((endpoint, progress)) => Ok(json(
            StatusCode::OK,
            &endpoint.view(progress.as_ref(), false),
        )),
        None => Err(not_found()),
    }
}

async fn delete(
    State(state): State<Arc<AppState>>,
    headers: http::HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> HandlerResult {
    let caller = state.tokens.authorize(&headers, Scope::Admin)?;
    let id = id_from_path(path)?;
    let now = Timestamp::now();
    if !state
        .webhooks
        .delete_endpoint(&id, now.as_millis())
        .await
        .map_err(store_failure)?
    {
        return Err(not_found());
    }
    tracing::info!(target: "referral::audit", token = %caller.name(), endpoint = %id, "webhook deleted");
    Ok(json(
        StatusCode::OK,
        &Deleted {
            id,
            deleted: true,
            deleted_at: now,
        },
    ))
}

/// `?limit=` (1 to 1000), and nothing else.
fn deliveries_limit(query: Option<&str>) -> Result<u32, ApiError> {
    let mut limit = DEFAULT_DELIVERIES;
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match key.as_ref() {
            "limit" => {
                limit = value
                    .parse::<u32>()
                    .ok()
                    .filter(|limit| (1..=MAX_DELIVERIES).contains(limit))
                    .ok_or_else(|| {
                        ApiError::invalid("limit", "must be an integer from 1 to 1000")
                    })?;
            }
            other => {
                return Err(ApiError::new(
                    ErrorKind::UnknownField,
                    "unknown query parameter; allowed: limit",
                )
                .on_field(other));
            }
        }
    }
    Ok(limit)
}

async fn deliveries(
    State(state): State<Arc<AppState>>,
    headers: http::HeaderMap,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> HandlerResult {
    state.tokens.authorize(&headers, Scope::Admin)?;
    let id = id_from_path(path)?;
    let limit = deliveries_limit(query.as_deref())?;
    if state
        .webhooks
        .endpoint(&id)
        .await
        .map_err(store_failure)?
        .is_none()
    {
        return Err(not_found());
    }
    let data = state
        .webhooks
        .deliveries(&id, limit)
        .await
        .map_err(store_failure)?;
    Ok(json(StatusCode::OK, &Listed { data }))
}

async fn replay(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
    request: Request,
) -> HandlerResult {
    let caller = state.tokens.authorize(request.headers(), Scope::Admin)?;
    let id = id_from_path(path)?;
    let mut body = json_body(request).await?;
    let now = Timestamp::now();
    let replay = ReplayRequest::parse(&mut body, now)?;
    if !state
        .webhooks
        .request_replay(&id, replay.since.as_millis(), now.as_millis())
        .await
        .map_err(store_failure)?
    {
        return Err(not_found());
    }
    tracing::info!(target: "referral::audit", token = %caller.name(), endpoint = %id, since = %replay.since, "webhook replay");
    Ok(json(
        StatusCode::ACCEPTED,
        &ReplayAccepted {
            id,
            replay_since: replay.since,
            requested_at: now,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::deliveries_limit;

    #[test]
    fn the_deliveries_limit_is_bounded_and_alone() {
        assert_eq!(deliveries_limit(None), Ok(100));
        assert_eq!(deliveries_limit(Some("limit=5")), Ok(5));
        for bad in ["limit=0", "limit=1001", "limit=x", "page=2"] {
            assert!(deliveries_limit(Some(bad)).is_err(), "{bad}");
        }
    }
}
