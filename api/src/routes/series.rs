//! `GET /mentor/{mentorId}/timeseries`: a mentor's clicks and conversions per local hour,
//! day, ISO week or month in any IANA zone, summed from the store's 15-minute slots; and
//! `GET /mentors/top`, the leaderboard over the same periods.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use http::StatusCode;
use referral_pipeline::store::span::SlotSpan;
use referral_pipeline::store::{MentorTotals, SlotCounts, TopWindow};
use referral_schemas::Timestamp;
use referral_schemas::calendar::{Bucket, SERIES_EPOCH_MS, SLOT_MS, buckets};
use referral_schemas::query::{conversion_rate, parse_series_query, parse_top_query};
use referral_schemas::timestamp::HOUR_MS;
use serde::Serialize;

use super::attributions::mentor_id;
use super::{HandlerResult, json, store_failure};
use crate::auth::Scope;
use crate::state::AppState;

#[derive(Serialize)]
struct SeriesBody {
    mentor_id: String,
    interval: &'static str,
    tz: String,
    period: &'static str,
    data: Vec<SeriesPoint>,
}

/// One bucket: counted clicks (by `occurred_at`), conversions (by `confirmed_at`), the
/// rate over counted clicks, and the other verdicts.
#[derive(Debug, PartialEq, Serialize)]
pub struct SeriesPoint {
    pub start: String,
    pub clicks: u64,
    pub conversions: u64,
    pub conversion_rate: f64,
    pub filtered_clicks: FilteredCounts,
}

#[derive(Debug, PartialEq, Serialize)]
pub struct FilteredCounts {
    pub duplicate: u64,
    pub bot: u64,
}

/// Every bucket with the slots that fall in it (slots and buckets sorted; a slot belongs
/// to the bucket its start is in); empty buckets are present with zeros.
pub fn points(buckets: &[Bucket], slots: &[SlotCounts]) -> Vec<SeriesPoint> {
    let mut slots = slots.iter().peekable();
    buckets
        .iter()
        .map(|bucket| {
            let mut sums = MentorTotals::default();
            while let Some(slot) = slots.peek() {
                let at = slot.slot.saturating_mul(SLOT_MS);
                if at >= bucket.end.as_millis() {
                    break;
                }
                if at >= bucket.start.as_millis() {
                    sums.add(slot.totals);
                }
                slots.next();
            }
            SeriesPoint {
                start: bucket.label.clone(),
                clicks: sums.clicks,
                conversions: sums.conversions,
                conversion_rate: conversion_rate(sums.clicks, sums.conversions),
                filtered_clicks: FilteredCounts {
                    duplicate: sums.duplicates,
                    bot: sums.bots,
                },
            }
        })
        .collect()
}

/// GET /mentor/:mentorId/timeseries.
pub async fn timeseries(
    State(state): State<Arc<AppState>>,
    headers: http::HeaderMap,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> HandlerResult {
    state.tokens.authorize(&headers, Scope::Read)?;
    let mentor_id = mentor_id(path)?;
    let request = parse_series_query(query.as_deref(), Timestamp::now())?;
    let reader = &state.reads.reader;
    let from = request.from.map(Timestamp::as_millis);
    let to = request.to.as_millis();
    let (slots, buckets) = match from {
        // A period that cannot be bucketed is refused before the store is read.
        Some(from) => {
            let buckets = buckets(
                &request.zone,
                request.interval,
                Timestamp::from_millis(from),
                request.to,
            )?;
            let span = SlotSpan::new(Some(from), to).cut_at(boundaries(&buckets));
            let slots = reader
                .mentor_slots(&mentor_id, &span)
                .await
                .map_err(store_failure)?;
            (slots, buckets)
        }
        // All time starts at the mentor's first slot (series start in 1972 at the
        // earliest): the first hour with counts is read per slot to find it, then the
        // whole span once the buckets say which hours they cut.
        None => {
            let slots = reader
                .mentor_slots(&mentor_id, &SlotSpan::new(None, to))
                .await
                .map_err(store_failure)?;
            let Some(first) = slots.first() else {
                return Ok(series_body(mentor_id, &request, Vec::new()));
            };
            let hour_start = first.slot.saturating_mul(SLOT_MS);
            let first_hour = SlotSpan::new(Some(hour_start), to.min(hour_start + HOUR_MS))
                .cut_at([hour_start + 1]);
            let first_slots = reader
                .mentor_slots(&mentor_id, &first_hour)
                .await
                .map_err(store_failure)?;
            let first_slot = first_slots.first().map_or(first.slot, |slot| slot.slot);
            let from = first_slot.saturating_mul(SLOT_MS).max(SERIES_EPOCH_MS);
            let buckets = buckets(
                &request.zone,
                request.interval,
                Timestamp::from_millis(from),
                request.to,
            )?;
            let span = SlotSpan::new(None, to).cut_at(boundaries(&buckets));
            let slots = if span.fine_hours.is_empty() {
                slots
            } else {
                reader
                    .mentor_slots(&mentor_id, &span)
                    .await
                    .map_err(store_failure)?
            };
            (slots, buckets)
        }
    };
    let data = points(&buckets, &slots);
    Ok(series_body(mentor_id, &request, data))
}

/// Where buckets start and the last one ends: the hours these cut are read per slot.
fn boundaries(buckets: &[Bucket]) -> impl Iterator<Item = i64> + '_ {
    buckets
        .iter()
        .map(|bucket| bucket.start.as_millis())
        .chain(buckets.last().map(|bucket| bucket.end.as_millis()))
}

fn series_body(
    mentor_id: String,
    request: &referral_schemas::query::SeriesRequest,
    data: Vec<SeriesPoint>,
) -> axum::response::Response {
    json(
        StatusCode::OK,
        &SeriesBody {
            mentor_id,
            interval: request.interval.as_str(),
            tz: request.zone.name.clone(),
            period: request.period.as_str(),
            data,
        },
    )
}

#[derive(Serialize)]
struct LeaderboardBody {
    period: &'static str,
    tz: String,
    by: &'static str,
    data: Vec<LeaderboardRow>,
}

#[derive(Serialize)]
struct LeaderboardRow {
    mentor_id: String,
    total_clicks: u64,
    total_conversions: u64,
    conversion_rate: f64,
}

/// GET /mentors/top: the mentors with the most counted clicks or conversions over a
/// period in a zone, then by mentor id.
pub async fn leaderboard(
    State(state): State<Arc<AppState>>,
    headers: http::HeaderMap,
    RawQuery(query): RawQuery,
) -> HandlerResult {
    state.tokens.authorize(&headers, Scope::Read)?;
    let request = parse_top_query(query.as_deref(), Timestamp::now())?;
    let window = match request.window.exact {
        Some(range) => TopWindow::Exact {
            from: range.from.map(Timestamp::as_millis),
            to: range.to.unwrap_or_else(Timestamp::now).as_millis(),
        },
        None => TopWindow::Hours(request.window.hours),
    };
    let ranked = state
        .reads
        .reader
        .top_mentors(window, request.by, request.limit)
        .await
        .map_err(store_failure)?;
    let data = ranked
        .into_iter()
        .map(|(mentor_id, totals)| LeaderboardRow {
            mentor_id,
            total_clicks: totals.clicks,
            total_conversions: totals.conversions,
            conversion_rate: conversion_rate(totals.clicks, totals.conversions),
        })
        .collect();
    Ok(json(
        StatusCode::OK,
        &LeaderboardBody {
            period: request.window.period.as_str(),
            tz: request.window.zone.name.clone(),
            by: request.by.as_str(),
            data,
        },
    ))
}

/// Totals over `[from, to)` from slots: calendar periods whose bounds are not whole UTC
/// hours.
pub fn sum_slots(slots: &[SlotCounts]) -> MentorTotals {
    slots
        .iter()
        .fold(MentorTotals::default(), |mut sums, slot| {
            sums.add(slot.totals);
            sums
        })
}

#[cfg(test)]
mod tests {
    use referral_schemas::calendar::{Interval, Zone};

    use super::*;

    fn slot(at: &str, clicks: u64, conversions: u64) -> SlotCounts {
        let millis = Timestamp::parse_rfc3339(at).unwrap().as_millis();
        SlotCounts {
            slot: millis.div_euclid(SLOT_MS),
            totals: MentorTotals {
                clicks,
                conversions,
                ..MentorTotals::default()
            },
        }
    }

    #[test]
    fn slots_fall_in_the_local_bucket_of_their_start_and_empty_buckets_stay() {
        let kolkata = Zone::parse(Some("Asia/Kolkata")).unwrap();
        let at = |text| Timestamp::parse_rfc3339(text).unwrap();
        let days = buckets(
            &kolkata,
            Interval::Day,
            at("2026-03-19T18:30:00Z"),
            at("2026-03-22T18:30:00Z"),
        )
        .unwrap();
        let slots = [
            slot("2026-03-19T18:15:00Z", 5, 0), // 23:45 on the 19th: before the series
            slot("2026-03-19T18:30:00Z", 1, 0), // local midnight of the 20th
            slot("2026-03-20T18:15:00Z", 2, 1), // 23:45 on the 20th
            slot("2026-03-21T18:30:00Z", 4, 2), // midnight of the 22nd
        ];
        let points = points(&days, &slots);
        let got: Vec<(&str, u64, u64)> = points
            .iter()
            .map(|p| (p.start.as_str(), p.clicks, p.conversions))
            .collect();
        assert_eq!(
            got,
            [
                ("2026-03-20T00:00:00+05:30", 3, 1),
                ("2026-03-21T00:00:00+05:30", 0, 0),
                ("2026-03-22T00:00:00+05:30", 4, 2),
            ]
        );
        assert_eq!(points[0].conversion_rate, 0.333);
    }
}
