//! Referral codes: `PUT/GET/DELETE /api/v1/referral-codes/{code}`, `GET /api/v1/referral-codes`.
//!
//! The contract needs codes (a click is resolved through one) but does not list them.
//! Changes go through the log like every other change of state.

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, Request, State};
use axum::routing::get;
use http::StatusCode;
use referral_pipeline::codes::CodeTarget;
use referral_schemas::id::new_command_id;
use referral_schemas::messages::{AssignCode, LogEvent, RetireCode, Verdict};
use referral_schemas::query::parse_code_list_query;
use referral_schemas::validation::{CodeAssignmentRequest, normalize_code};
use referral_schemas::{ApiError, ErrorKind, Timestamp};

use super::attributions::unexpected;
use super::{HandlerResult, ListBody, json, json_body, store_failure};
use crate::auth::Scope;
use crate::commands::{rejection_error, submit};
use crate::router::HttpError;
use crate::state::AppState;

pub const CODES_PREFIX: &str = "/api/v1/referral-codes";

pub fn routes(router: Router<Arc<AppState>>) -> Router<Arc<AppState>> {
    router.route(CODES_PREFIX, get(list)).route(
        &format!("{CODES_PREFIX}/{{code}}"),
        get(get_one).put(assign).delete(retire),
    )
}

fn code_from_path(path: Result<Path<String>, PathRejection>) -> Result<String, HttpError> {
    let Ok(Path(code)) = path else {
        return Err(HttpError(ApiError::invalid("code", "must be valid UTF-8")));
    };
    Ok(normalize_code("code", &code)?)
}

async fn get_one(
    State(state): State<Arc<AppState>>,
    headers: http::HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> HandlerResult {
    state.tokens.authorize(&headers, Scope::Read)?;
    let code = code_from_path(path)?;
    match state
        .reads
        .reader
        .referral_code(&code)
        .await
        .map_err(store_failure)?
    {
        Some(code) => Ok(json(StatusCode::OK, &code)),
        None => Err(HttpError(
            ApiError::new(ErrorKind::CodeNotFound, "no such referral code").on_field("code"),
        )),
    }
}

async fn list(
    State(state): State<Arc<AppState>>,
    headers: http::HeaderMap,
    RawQuery(query): RawQuery,
) -> HandlerResult {
    state.tokens.authorize(&headers, Scope::Read)?;
    let (mentor_id, page) = parse_code_list_query(query.as_deref())?;
    let found = state
        .reads
        .reader
        .referral_codes(mentor_id.as_deref(), page)
        .await
        .map_err(store_failure)?;
    Ok(ListBody::response(found.codes, page, found.total))
}

/// 201 when the code is new, 200 when it existed (reassigned, or already this mentor's).
async fn assign(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
    request: Request,
) -> HandlerResult {
    let caller = state.tokens.authorize(request.headers(), Scope::Admin)?;
    let code = code_from_path(path)?;
    let mut body = json_body(request).await?;
    let assignment = CodeAssignmentRequest::parse(&mut body)?;
    let command = LogEvent::AssignCode(AssignCode {
        command_id: new_command_id(),
        code,
        mentor_id: assignment.mentor_id,
        destination_url: assignment.destination_url,
        issued_at: Timestamp::now(),
    });
    match submit(&state, &caller, command).await? {
        Verdict::CodeAssigned { code, created } => {
            let target = CodeTarget::new(&code.mentor_id, code.destination_url.as_deref());
            honoured_here(&state, &code.code, Some(&target)).await;
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(json(status, &code))
        }
        Verdict::Rejected { reason } => Err(rejection_error(reason).into()),
        other => Err(unexpected(other)),
    }
}

async fn retire(
    State(state): State<Arc<AppState>>,
    headers: http::HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> HandlerResult {
    let caller = state.tokens.authorize(&headers, Scope::Admin)?;
    let code = code_from_path(path)?;
    let command = LogEvent::RetireCode(RetireCode {
        command_id: new_command_id(),
        code,
        issued_at: Timestamp::now(),
    });
    match submit(&state, &caller, command).await? {
        Verdict::CodeRetired { retirement } => {
            honoured_here(&state, &retirement.code, None).await;
            Ok(json(StatusCode::OK, &retirement))
        }
        Verdict::Rejected { reason } => Err(rejection_error(reason).into()),
        other => Err(unexpected(other)),
    }
}

/// Longest wait for this process's click edge to see a code change it just answered.
const CODE_PROPAGATION_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Waits until this process's own click POST resolves `code` as the command left it, so a
/// client that changes a code and then clicks here sees the change (other edges follow the
/// codes topic within seconds). Embedded mode: already true. Never fails the command, which
/// is decided and stored either way.
async fn honoured_here(state: &AppState, code: &str, target: Option<&CodeTarget>) {
    if !state
        .pipeline
        .codes
        .wait_for(code, target, CODE_PROPAGATION_WAIT)
        .await
    {
        tracing::warn!(%code, "code change not yet seen by this edge's directory");
    }
}
