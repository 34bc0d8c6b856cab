//! The one rendering of errors and JSON answers, for every binary and framework: a status,
//! a JSON body, and the headers an error's kind calls for.

use http::header::CONTENT_TYPE;
use http::{Response, StatusCode};
use referral_pipeline::log::PublishError;
use referral_schemas::{ApiError, ErrorKind};

/// How long a client refused for back-pressure is told to wait: about what the store
/// needs to work off a burst, so clients do not come back into the same wall at once.
const BACKLOG_RETRY_AFTER_SECS: u64 = 5;

/// Maps a log failure to the client's answer: always 503, the request may be retried.
pub fn publish_error(error: PublishError) -> ApiError {
    match error {
        PublishError::QueueFull => {
            metrics::counter!("referral_log_queue_full_total").increment(1);
            ApiError::overloaded("the pipeline is at capacity; retry")
        }
        PublishError::Backlogged { lag, bound } => {
            metrics::counter!("referral_apply_lag_refusals_total").increment(1);
            tracing::debug!(lag, bound, "refused: the store is too far behind the log");
            ApiError::overloaded("the pipeline is catching up; retry shortly")
                .retry_after(BACKLOG_RETRY_AFTER_SECS)
        }
        PublishError::TimedOut => {
            metrics::counter!("referral_ack_timeouts_total").increment(1);
            ApiError::overloaded("the event was not acknowledged in time; retry")
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
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    // Answers carry visitors' IPs and user agents: no cache keeps them, and no browser
    // renders stored text as anything but JSON.
    headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    headers.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        http::HeaderValue::from_static("nosniff"),
    );
    response
}

/// Serializes `value` as a JSON response; a failure (a bug) becomes a logged 500.
pub fn serialize_response<B: From<Vec<u8>>, T: serde::Serialize>(
    status: StatusCode,
    value: &T,
) -> Response<B> {
    // Sized for an attribution (~350 bytes): one allocation instead of a few regrowths.
    let mut body = Vec::with_capacity(512);
    match serde_json::to_writer(&mut body, value) {
        Ok(()) => json_response(status, body),
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
