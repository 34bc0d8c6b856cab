//! `GET /export`: every attribution a list filter matches, streamed as CSV or NDJSON, for
//! payouts and spreadsheets.
//!
//! The list is walked with keyset pages ([`AttributionReader::attributions_after`]), so
//! memory stays flat whatever the export's size, and each attribution is written exactly
//! once while clicks keep arriving. A store failure mid-stream ends the body without its
//! last chunk: the client sees a cut download, never a silently short file.

use std::borrow::Cow;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use bytes::Bytes;
use http::{StatusCode, header};
use referral_pipeline::store::AttributionReader;
use referral_schemas::query::{AttributionFilter, ExportFormat, ListCursor, parse_export_query};
use referral_schemas::{Attribution, Timestamp};

use super::{HandlerResult, store_failure};
use crate::auth::Scope;
use crate::state::AppState;

/// Attributions read per store query (and written per chunk): ~5 MB of rows at most, and
/// few enough queries that the store's per-query cost does not bound the export.
const EXPORT_PAGE: u32 = 10_000;

/// The CSV columns, in order.
const CSV_HEADER: [&str; 16] = [
    "id",
    "code",
    "mentor_id",
    "type",
    "status",
    "verdict",
    "duplicate_of",
    "new_member_id",
    "ip_address",
    "user_agent",
    "referrer_url",
    "occurred_at",
    "confirmed_at",
    "created_at",
    "reversed_at",
    "reversal_reason",
];

/// GET /export?format=csv|ndjson&<list filters>.
pub async fn export(
    State(state): State<Arc<AppState>>,
    headers: http::HeaderMap,
    RawQuery(query): RawQuery,
) -> HandlerResult {
    state.tokens.authorize(&headers, Scope::Read)?;
    let (format, filter) = parse_export_query(query.as_deref())?;
    let (content_type, file) = match format {
        ExportFormat::Csv => ("text/csv; charset=utf-8", "attributions.csv"),
        ExportFormat::Ndjson => ("application/x-ndjson", "attributions.ndjson"),
    };
    let mut walk = Walk {
        reader: state.reads.reader.clone(),
        floor: filter.from.map_or(0, Timestamp::as_millis),
        filter,
        format,
        first: true,
        window_ms: FIRST_WINDOW_MS,
    };
    // The first page before the 200: a store that fails at once answers 503/500, not a
    // cut download.
    let (first, more) = walk.next_chunk().await.map_err(store_failure)?;
    let head = futures_util::stream::iter([Ok::<Bytes, std::io::Error>(first)]);
    let rest = futures_util::stream::unfold(more.then_some(walk), |walk| async move {
        let mut walk = walk?;
        match walk.next_chunk().await {
            Ok((chunk, more)) => Some((Ok::<Bytes, std::io::Error>(chunk), more.then_some(walk))),
            Err(error) => {
                tracing::error!(%error, "export cut short: a store read failed");
                Some((Err(std::io::Error::other(error.to_string())), None))
            }
        }
    });
    let disposition = format!("attachment; filename=\"{file}\"");
    let response = http::Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_DISPOSITION, disposition)
        .header(header::CACHE_CONTROL, "no-store")
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .body(Body::from_stream(futures_util::StreamExt::chain(
            head, rest,
        )))
        .map_err(|error| {
            crate::router::HttpError(referral_schemas::ApiError::new(
                referral_schemas::ErrorKind::Internal,
                format!("cannot build the export response: {error}"),
            ))
        })?;
    Ok(response)
}

/// The first time window a page is looked for in, newest first (then 4x wider each time
/// one comes back short).
const FIRST_WINDOW_MS: i64 = 3_600_000;
/// Clicks may be dated this far ahead of now (validation allows 5 minutes).
const FUTURE_SLACK_MS: i64 = 600_000;

/// Where an export is in its list.
///
/// Each page is read within a time window just below the position reached (so a sparse
/// filter never makes every page scan the whole past); a window that holds less than a
/// page is exhausted, and the next one, four times wider, starts below it. The walk ends
/// at the filter's `from` (or 1970, before which no click exists).
struct Walk {
    reader: Arc<dyn AttributionReader>,
    filter: AttributionFilter,
    format: ExportFormat,
    first: bool,
    /// The walk's lower end (ms).
    floor: i64,
    window_ms: i64,
}

impl Walk {
    /// The next page as one chunk (the CSV header first), and whether more follow.
    async fn next_chunk(&mut self) -> Result<(Bytes, bool), referral_pipeline::store::StoreError> {
        loop {
            let upper = self.filter.after.as_ref().map_or_else(
                || Timestamp::now().as_millis().saturating_add(FUTURE_SLACK_MS),
                |cursor| cursor.occurred_at.as_millis(),
            );
            let lower = upper.saturating_sub(self.window_ms).max(self.floor);
            let window = AttributionFilter {
                from: Some(Timestamp::from_millis(lower)),
                ..self.filter.clone()
            };
            let page = self.reader.attributions_after(&window, EXPORT_PAGE).await?;
            let exhausted = !page.more;
            let done = exhausted && lower <= self.floor;
            if let Some(last) = page.attributions.last().filter(|_| !exhausted) {
                self.filter.after = Some(ListCursor {
                    occurred_at: last.occurred_at,
                    id: last.id.clone(),
                });
            } else if exhausted {
                // Everything at or after `lower` is out: go on below it, wider.
                self.filter.after = Some(ListCursor {
                    occurred_at: Timestamp::from_millis(lower),
                    id: String::new(),
                });
                self.window_ms = self.window_ms.saturating_mul(4);
            }
            if page.attributions.is_empty() && !done && !self.first {
                continue;
            }
            let mut chunk = Vec::with_capacity(page.attributions.len() * 256 + 256);
            match self.format {
                ExportFormat::Csv => write_csv(&mut chunk, &page.attributions, self.first),
                ExportFormat::Ndjson => write_ndjson(&mut chunk, &page.attributions),
            }
            self.first = false;
            metrics::counter!("referral_exported_attributions_total")
                .increment(page.attributions.len() as u64);
            return Ok((Bytes::from(chunk), !done));
        }
    }
}

/// A cell a spreadsheet would not run as a formula: one that starts with `=`, `+`, `-`,
/// `@`, a tab or a carriage return gets a leading `'` (OWASP's CSV injection advice).
fn spreadsheet_safe(cell: &str) -> Cow<'_, str> {
    if cell.starts_with(['=', '+', '-', '@', '\t', '\r', '\0']) {
        Cow::Owned(format!("'{cell}"))
    } else {
        Cow::Borrowed(cell)
    }
}

fn instant(at: Option<Timestamp>) -> String {
    at.map(|at| at.to_string()).unwrap_or_default()
}

/// RFC 4180 rows (CRLF, quoted where needed), after the header row when `header`.
fn write_csv(out: &mut Vec<u8>, attributions: &[Attribution], header: bool) {
    // Every cell quoted: a `;` in a user agent cannot start a new cell in a spreadsheet set
    // to split on it.
    let mut writer = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .quote_style(csv::QuoteStyle::Always)
        .from_writer(out);
    // Writing to a Vec cannot fail; a failure would only drop rows, never panic.
    if header && let Err(error) = writer.write_record(CSV_HEADER) {
        tracing::error!(%error, "cannot write the CSV header");
    }
    for attribution in attributions {
        let cells = [
            attribution.id.clone(),
            attribution.code.clone(),
            attribution.mentor_id.clone(),
            attribution.kind.as_str().to_owned(),
            attribution.status.as_str().to_owned(),
            attribution
                .verdict
                .map(|verdict| verdict.as_str().to_owned())
                .unwrap_or_default(),
            attribution.duplicate_of.clone().unwrap_or_default(),
            attribution.new_member_id.clone().unwrap_or_default(),
            attribution.ip_address.clone(),
            attribution.user_agent.clone().unwrap_or_default(),
            attribution.referrer_url.clone().unwrap_or_default(),
            instant(Some(attribution.occurred_at)),
            instant(attribution.confirmed_at),
            instant(Some(attribution.created_at)),
            instant(attribution.reversed_at),
            attribution.reversal_reason.clone().unwrap_or_default(),
        ];
        let record = cells.iter().map(|cell| spreadsheet_safe(cell));
        if let Err(error) = writer.write_record(record.map(|cell| cell.into_owned())) {
            tracing::error!(%error, "cannot write a CSV row");
        }
    }
    if let Err(error) = writer.flush() {
        tracing::error!(%error, "cannot flush CSV rows");
    }
}

/// One JSON attribution (as `GET /{id}` prints it) per line.
fn write_ndjson(out: &mut Vec<u8>, attributions: &[Attribution]) {
    for attribution in attributions {
        if serde_json::to_writer(&mut *out, attribution).is_ok() {
            out.push(b'\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_cells_are_defused_and_others_kept() {
        for cell in ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"] {
            assert_eq!(spreadsheet_safe(cell), format!("'{cell}"));
        }
        for cell in ["attr_01", "Mozilla/5.0", "", "a=b", "185.12.34.56"] {
            assert_eq!(spreadsheet_safe(cell), cell);
        }
    }

    #[test]
    fn csv_rows_are_rfc_4180_with_a_header() {
        let attribution = Attribution {
            id: "attr_1".into(),
            code: "JAN-1".into(),
            mentor_id: "usr_1".into(),
            kind: referral_schemas::AttributionKind::Click,
            status: referral_schemas::AttributionStatus::Pending,
            new_member_id: None,
            ip_address: "185.12.34.56".into(),
            user_agent: Some("Agent, \"quoted\"\nnext".into()),
            referrer_url: Some("=HYPERLINK(\"http://x\")".into()),
            occurred_at: Timestamp::from_millis(0),
            confirmed_at: None,
            created_at: Timestamp::from_millis(1),
            verdict: Some(referral_schemas::verdict::ClickVerdict::Counted),
            duplicate_of: None,
            reversed_at: None,
            reversal_reason: Some("-refund".into()),
        };
        let mut out = Vec::new();
        write_csv(&mut out, std::slice::from_ref(&attribution), true);
        let text = String::from_utf8(out).unwrap();
        let mut lines = text.split("\r\n");
        let header: Vec<String> = CSV_HEADER
            .iter()
            .map(|name| format!("\"{name}\""))
            .collect();
        assert_eq!(lines.next().unwrap(), header.join(","));
        assert!(
            text.contains(
                r#""Agent, ""quoted""
next""#
            ),
            "{text}"
        );
        assert!(text.contains(r#""'=HYPERLINK(""http://x"")""#), "{text}");
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        let row = reader.records().next().unwrap().unwrap();
        assert_eq!(row.len(), CSV_HEADER.len());
        assert_eq!(&row[9], "Agent, \"quoted\"\nnext");
        assert_eq!(&row[11], "1970-01-01T00:00:00Z");
        assert_eq!(&row[14], "");
        assert_eq!(&row[15], "'-refund", "a reason is a cell like any other");
    }
}
