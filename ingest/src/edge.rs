//! The click POST (recordReferralClick), independent of any HTTP framework.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, REFERER, USER_AGENT};
use http::{HeaderMap, Response, StatusCode};
use referral_aggregator::codes::CodeDirectory;
use referral_aggregator::log::{EventLog, PublishError};
use referral_schemas::id::new_attribution_id;
use referral_schemas::messages::{ClickEvent, LogEvent};
use referral_schemas::validation::{
    ClickRequest, MAX_USER_AGENT_BYTES, require_json_content_type, validate_referrer_url,
    validate_user_agent,
};
use referral_schemas::{ApiError, Attribution, ErrorKind, Timestamp, state};

use crate::client_ip::TrustedProxies;

/// Validates clicks, resolves their code, publishes them and waits for the log's ack.
pub struct ClickEdge {
    log: Arc<dyn EventLog>,
    /// Code -> mentor, kept current by the writer.
    codes: CodeDirectory,
    proxies: TrustedProxies,
    /// Longest wait for the log's acknowledgement before answering 503.
    ack_timeout: Duration,
}

impl ClickEdge {
    pub fn new(
        log: Arc<dyn EventLog>,
        codes: CodeDirectory,
        proxies: TrustedProxies,
        ack_timeout: Duration,
    ) -> Self {
        Self {
            log,
            codes,
            proxies,
            ack_timeout,
        }
    }

    /// Whether clicks can be accepted now.
    pub fn is_ready(&self) -> bool {
        self.log.is_ready()
    }

    /// Records one click and answers with the stored attribution. `Ok` only once the log
    /// acknowledged the click as durable.
    pub async fn record_click(
        &self,
        peer: IpAddr,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Attribution, ApiError> {
        let result = self.try_record(peer, headers, body).await;
        match &result {
            Ok(_) => metrics::counter!("referral_clicks_accepted_total").increment(1),
            Err(error) => {
                metrics::counter!("referral_clicks_rejected_total", "cause" => error.kind.code())
                    .increment(1)
            }
        }
        result
    }

    async fn try_record(
        &self,
        peer: IpAddr,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Attribution, ApiError> {
        require_json_content_type(headers.get(CONTENT_TYPE))?;
        let received_at = Timestamp::now();
        // simd-json parses in place; the copy is bounded by the body limit.
        let mut body = body.to_vec();
        let request = ClickRequest::parse(&mut body, received_at)?;
        let mentor_id = self.codes.mentor_for(&request.code).ok_or_else(|| {
            ApiError::new(ErrorKind::UnknownCode, "no mentor has this referral code")
                .on_field("code")
        })?;
        let click = ClickEvent {
            attribution_id: new_attribution_id(),
            code: request.code,
            mentor_id: mentor_id.to_string(),
            ip_address: request
                .ip_address
                .unwrap_or_else(|| self.proxies.client_ip(peer, headers).to_string()),
            user_agent: request.user_agent.or_else(|| user_agent_header(headers)),
            referrer_url: request.referrer_url.or_else(|| referer_header(headers)),
            occurred_at: request.occurred_at.unwrap_or(received_at),
            received_at,
        };
        let (attribution, _) = state::record_click(&click);
        match tokio::time::timeout(self.ack_timeout, self.log.publish(LogEvent::Click(click))).await
        {
            Ok(Ok(())) => Ok(attribution),
            Ok(Err(error)) => Err(publish_error(error)),
            Err(_) => {
                metrics::counter!("referral_ack_timeouts_total").increment(1);
                Err(ApiError::overloaded(
                    "the click was not acknowledged in time; retry",
                ))
            }
        }
    }
}

/// The `User-Agent` header, cut to the stored limit at a character boundary; dropped when it
/// is not text. A header is not the client's JSON, so it is trimmed rather than refused.
fn user_agent_header(headers: &HeaderMap) -> Option<String> {
    let text = headers.get(USER_AGENT)?.to_str().ok()?;
    let mut end = text.len().min(MAX_USER_AGENT_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let text = &text[..end];
    validate_user_agent("user_agent", text).ok()?;
    (!text.is_empty()).then(|| text.to_owned())
}

/// The `Referer` header when it is an acceptable referrer URL.
fn referer_header(headers: &HeaderMap) -> Option<String> {
    let text = headers.get(REFERER)?.to_str().ok()?;
    validate_referrer_url("referrer_url", text).ok()?;
    Some(text.to_owned())
}

/// Maps a log failure to the client's answer: always 503, the request may be retried.
pub fn publish_error(error: PublishError) -> ApiError {
    match error {
        PublishError::QueueFull => {
            metrics::counter!("referral_log_queue_full_total").increment(1);
            ApiError::overloaded("the pipeline is at capacity; retry")
        }
        PublishError::Closed => ApiError::overloaded("the service is shutting down; retry"),
        PublishError::Failed(cause) => {
            tracing::error!(%cause, "event not stored");
            ApiError::overloaded("the event could not be stored; retry")
        }
    }
}

/// A JSON response.
pub fn json_response<B: From<Vec<u8>>>(status: StatusCode, body: Vec<u8>) -> Response<B> {
    let mut response = Response::new(B::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// Serializes `value` as a JSON response; a failure (a bug) becomes a logged 500.
pub fn serialize_response<B: From<Vec<u8>>, T: serde::Serialize>(
    status: StatusCode,
    value: &T,
) -> Response<B> {
    match serde_json::to_vec(value) {
        Ok(body) => json_response(status, body),
        Err(error) => {
            tracing::error!(%error, "cannot serialize a response");
            error_response(&ApiError::internal())
        }
    }
}

/// The one rendering of an [`ApiError`]: its status, its JSON body, and the headers its kind
/// calls for (`Retry-After`, `WWW-Authenticate`).
pub fn error_response<B: From<Vec<u8>>>(error: &ApiError) -> Response<B> {
    let mut response = json_response(error.status(), error.to_json());
    if let Some(seconds) = error.retry_after_secs {
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, seconds.into());
    }
    if error.kind == ErrorKind::Unauthorized {
        response.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer realm=\"referral-attributions\""),
        );
    }
    response
}
