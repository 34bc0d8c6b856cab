//! The seven contract endpoints under one prefix.

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, Request, State};
use axum::routing::get;
use http::StatusCode;
use referral_pipeline::store::AttributionPage;
use referral_schemas::id::{is_attribution_id, new_command_id};
use referral_schemas::messages::{
    ConfirmConversion, DeleteAttribution, LogEvent, ReverseConversion, Verdict,
};
use referral_schemas::query::{ListCursor, conversion_rate, parse_list_query, parse_totals_query};
use referral_schemas::validation::{ConfirmRequest, ReversalRequest, validate_party_id};
use referral_schemas::{ApiError, ErrorKind, Timestamp};
use serde::Serialize;

use super::{HandlerResult, ListBody, json, json_body, store_failure};
use crate::auth::Scope;
use crate::commands::{rejection_error, submit};
use crate::router::HttpError;
use crate::state::AppState;

/// Adds the attribution routes under `prefix`.
pub fn routes(router: Router<Arc<AppState>>, prefix: &str) -> Router<Arc<AppState>> {
    router
        .route(prefix, get(list).post(record_click))
        .route(&format!("{prefix}/export"), get(super::export::export))
        .route(
            &format!("{prefix}/{{id}}"),
            get(get_one).put(confirm).delete(remove),
        )
        .route(
            &format!("{prefix}/{{id}}/reversal"),
            axum::routing::post(reverse),
        )
        .route(&format!("{prefix}/mentor/{{mentor_id}}"), get(mentor_list))
        .route(
            &format!("{prefix}/mentor/{{mentor_id}}/total"),
            get(mentor_total),
        )
        .route(
            &format!("{prefix}/mentor/{{mentor_id}}/timeseries"),
            get(super::series::timeseries),
        )
        .route(
            &format!("{prefix}/mentors/top"),
            get(super::series::leaderboard),
        )
}

fn not_found() -> HttpError {
    HttpError(ApiError::new(ErrorKind::AttributionNotFound, "no such attribution").on_field("id"))
}

/// The path's attribution id; anything not shaped like one cannot exist.
fn attribution_id(path: Result<Path<String>, PathRejection>) -> Result<String, HttpError> {
    match path {
        Ok(Path(id)) if is_attribution_id(&id) => Ok(id),
        _ => Err(not_found()),
    }
}

pub(super) fn mentor_id(path: Result<Path<String>, PathRejection>) -> Result<String, HttpError> {
    let Ok(Path(mentor_id)) = path else {
        return Err(HttpError(ApiError::invalid(
            "mentor_id",
            "must be valid UTF-8",
        )));
    };
    validate_party_id("mentor_id", &mentor_id)?;
    Ok(mentor_id)
}

/// POST: record a click (public; the same edge code as `referral-ingest`).
async fn record_click(State(state): State<Arc<AppState>>, request: Request) -> HandlerResult {
    let peer = super::peer_ip(&request);
    let (parts, body) = request.into_parts();
    Ok(state.edge.handle(peer, &parts.headers, body).await)
}

/// GET: every live attribution, filtered, newest first.
async fn list(
    State(state): State<Arc<AppState>>,
    headers: http::HeaderMap,
    RawQuery(query): RawQuery,
) -> HandlerResult {
    state.tokens.authorize(&headers, Scope::Read)?;
    let (filter, page) = parse_list_query(query.as_deref(), false)?;
    let found = state
        .reads
        .reader
        .attributions(&filter, page)
        .await
        .map_err(store_failure)?;
    let next = next_cursor(&found);
    Ok(ListBody::with_cursor(
        found.attributions,
        page,
        found.total,
        next,
    ))
}

/// GET /:id.
async fn get_one(
    State(state): State<Arc<AppState>>,
    headers: http::HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> HandlerResult {
    state.tokens.authorize(&headers, Scope::Read)?;
    let id = attribution_id(path)?;
    match find_fresh(&state, &id).await? {
        Some(attribution) => Ok(json(StatusCode::OK, &attribution)),
        None => Err(not_found()),
    }
}

/// An attribution, waiting (at most `--read-after-write-wait`) when it may not be stored
/// yet: a client that reads, confirms or deletes its own click right after the 201 is
/// served, in both modes.
async fn find_fresh(
    state: &AppState,
    id: &str,
) -> Result<Option<referral_schemas::Attribution>, HttpError> {
    state
        .reads
        .fresh_attribution(id, state.read_after_write_wait)
        .await
        .map_err(store_failure)
}

/// See [`referral_pipeline::Reads::let_click_land`].
async fn let_click_land(state: &AppState, id: &str) -> Result<(), HttpError> {
    state
        .reads
        .let_click_land(id, state.read_after_write_wait)
        .await
        .map_err(store_failure)
}

/// PUT /:id (confirmRecruitment).
async fn confirm(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
    request: Request,
) -> HandlerResult {
    let caller = state.tokens.authorize(request.headers(), Scope::Write)?;
    let id = attribution_id(path)?;
    let now = Timestamp::now();
    let mut body = json_body(request).await?;
    let confirmation = ConfirmRequest::parse(&mut body, now)?;
    // The writer decides; this only lets a click acknowledged moments ago be stored first.
    let_click_land(&state, &id).await?;
    let command = LogEvent::ConfirmConversion(ConfirmConversion {
        command_id: new_command_id(),
        attribution_id: id,
        code: confirmation.code,
        new_member_id: confirmation.new_member_id,
        confirmed_at: confirmation.confirmed_at.unwrap_or(now),
        issued_at: now,
    });
    match submit(&state, &caller, command).await? {
        Verdict::Confirmed { attribution, .. } => {
            Ok(json(StatusCode::OK, &attribution.conversion_view()))
        }
        Verdict::Rejected { reason } => Err(rejection_error(reason).into()),
        other => Err(unexpected(other)),
    }
}

/// POST /:id/reversal: a confirmed conversion refunded or charged back. Answers the whole
/// attribution, 200 also when the same reversal comes again (the first one stands).
async fn reverse(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
    request: Request,
) -> HandlerResult {
    let caller = state.tokens.authorize(request.headers(), Scope::Write)?;
    let id = attribution_id(path)?;
    let now = Timestamp::now();
    let mut body = json_body(request).await?;
    let reversal = ReversalRequest::parse(&mut body, now)?;
    let_click_land(&state, &id).await?;
    let command = LogEvent::ReverseConversion(ReverseConversion {
        command_id: new_command_id(),
        attribution_id: id,
        reason: reversal.reason,
        reversed_at: reversal.reversed_at.unwrap_or(now),
        issued_at: now,
    });
    match submit(&state, &caller, command).await? {
        Verdict::Reversed { attribution, .. } => Ok(json(StatusCode::OK, &attribution)),
        Verdict::Rejected { reason } => Err(rejection_error(reason).into()),
        other => Err(unexpected(other)),
    }
}

/// DELETE /:id.
async fn remove(
    State(state): State<Arc<AppState>>,
    headers: http::HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> HandlerResult {
    let caller = state.tokens.authorize(&headers, Scope::Write)?;
    let id = attribution_id(path)?;
    let_click_land(&state, &id).await?;
    let command = LogEvent::DeleteAttribution(DeleteAttribution {
        command_id: new_command_id(),
        attribution_id: id,
        issued_at: Timestamp::now(),
    });
    match submit(&state, &caller, command).await? {
        Verdict::Deleted { deletion } => Ok(json(StatusCode::OK, &deletion)),
        Verdict::Rejected { reason } => Err(rejection_error(reason).into()),
        other => Err(unexpected(other)),
    }
}

/// A verdict of the wrong kind for its command: a bug in the writer.
pub(crate) fn unexpected(verdict: Verdict) -> HttpError {
    tracing::error!(?verdict, "verdict does not fit its command");
    HttpError(ApiError::internal())
}

/// GET /mentor/:mentorId (getAttributionsByMentor).
async fn mentor_list(
    State(state): State<Arc<AppState>>,
    headers: http::HeaderMap,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> HandlerResult {
    state.tokens.authorize(&headers, Scope::Read)?;
    let mentor_id = mentor_id(path)?;
    let (mut filter, page) = parse_list_query(query.as_deref(), true)?;
    filter.mentor_id = Some(mentor_id);
    let found = state
        .reads
        .reader
        .attributions(&filter, page)
        .await
        .map_err(store_failure)?;
    let next = next_cursor(&found);
    Ok(ListBody::with_cursor(
        found.attributions.iter().map(|a| a.summary()).collect(),
        page,
        found.total,
        next,
    ))
}

/// The cursor of the page after `found`: its last attribution's position, when more follow.
fn next_cursor(found: &AttributionPage) -> Option<String> {
    let last = found.attributions.last().filter(|_| found.more)?;
    let cursor = ListCursor {
        occurred_at: last.occurred_at,
        id: last.id.clone(),
    };
    Some(cursor.encode())
}

/// The totals answer (getTotalRecruitments). `total_clicks` counts only `counted` clicks
/// (what a mentor is paid on) and `conversion_rate` is over them; the other verdicts are
/// in `filtered_clicks`.
#[derive(Serialize)]
struct MentorTotalsBody {
    mentor_id: String,
    total_clicks: u64,
    total_conversions: u64,
    conversion_rate: f64,
    period: &'static str,
    filtered_clicks: FilteredClicks,
    /// Conversions confirmed in the period and reversed since (not in `total_conversions`).
    reversed_conversions: u64,
}

/// Recorded clicks that do not count, by verdict, for the same period.
#[derive(Serialize)]
struct FilteredClicks {
    duplicate: u64,
    bot: u64,
}

/// GET /mentor/:mentorId/total, from the materialized totals.
async fn mentor_total(
    State(state): State<Arc<AppState>>,
    headers: http::HeaderMap,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> HandlerResult {
    state.tokens.authorize(&headers, Scope::Read)?;
    let mentor_id = mentor_id(path)?;
    let request = parse_totals_query(query.as_deref(), Timestamp::now())?;
    let reader = &state.reads.reader;
    let totals = match request.exact {
        // A calendar period off the UTC hour (a zone such as Asia/Kolkata): from slots.
        Some(range) => {
            let to = range.to.unwrap_or_else(Timestamp::now).as_millis();
            let from = range.from.map(Timestamp::as_millis);
            let span = referral_pipeline::store::span::SlotSpan::new(from, to);
            let slots = reader
                .mentor_slots(&mentor_id, &span)
                .await
                .map_err(store_failure)?;
            super::series::sum_slots(&slots)
        }
        None => reader
            .mentor_totals(&mentor_id, request.hours)
            .await
            .map_err(store_failure)?,
    };
    Ok(json(
        StatusCode::OK,
        &MentorTotalsBody {
            mentor_id,
            total_clicks: totals.clicks,
            total_conversions: totals.conversions,
            conversion_rate: conversion_rate(totals.clicks, totals.conversions),
            period: request.period.as_str(),
            filtered_clicks: FilteredClicks {
                duplicate: totals.duplicates,
                bot: totals.bots,
            },
            reversed_conversions: totals.reversals,
        },
    ))
}
