//! The one error type every HTTP-facing part returns, and its mapping to statuses.
//!
//! Bodies are always `{"error": {"code", "message", "field"}}`. 4xx errors are the client's
//! and go back as they are; 5xx errors carry a generic message (the cause is logged where it
//! happened).

use http::StatusCode;
use serde::Serialize;

/// Every way a request can fail, in the product's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// 400: the body is not JSON, or not a JSON object.
    MalformedJson,
    /// 401: no or unknown bearer token.
    Unauthorized,
    /// 403: the token lacks the scope.
    Forbidden,
    /// 404: no such route.
    RouteNotFound,
    /// 404: no such attribution (or it was deleted).
    AttributionNotFound,
    /// 404: no such referral code.
    CodeNotFound,
    /// 404: no such webhook endpoint (or it was deleted).
    WebhookNotFound,
    /// 405: the route exists for other methods.
    MethodNotAllowed,
    /// 408: the body did not arrive in time.
    RequestTimeout,
    /// 409: the confirmation names another code than the attribution's.
    CodeMismatch,
    /// 409: already confirmed with another member.
    AlreadyConfirmed,
    /// 409: confirmed after the attribution window closed.
    AttributionExpired,
    /// 409: the member is already attributed to another click.
    MemberAlreadyAttributed,
    /// 409: the click's verdict is `bot`; no person visited.
    NotAVisitor,
    /// 409: a reversal of an attribution that is not a confirmed conversion.
    NotConfirmed,
    /// 409: already reversed for another reason.
    AlreadyReversed,
    /// 413: the body is larger than allowed.
    PayloadTooLarge,
    /// 415: the body is not declared as JSON.
    UnsupportedMediaType,
    /// 422: a field is missing, of the wrong type, or breaks a rule.
    InvalidField,
    /// 422: the field is not allowed in this body.
    UnknownField,
    /// 422: the referral code is not assigned to any mentor.
    UnknownCode,
    /// 429: a rate limit was hit.
    RateLimited,
    /// 503: the pipeline cannot take more right now; retry later.
    Overloaded,
    /// 500: a bug or a broken store; the cause is in the logs.
    Internal,
}

impl ErrorKind {
    pub fn status(self) -> StatusCode {
        match self {
            Self::MalformedJson => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::RouteNotFound
            | Self::AttributionNotFound
            | Self::CodeNotFound
            | Self::WebhookNotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::CodeMismatch
            | Self::AlreadyConfirmed
            | Self::AttributionExpired
            | Self::MemberAlreadyAttributed
            | Self::NotAVisitor
            | Self::NotConfirmed
            | Self::AlreadyReversed => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::InvalidField | Self::UnknownField | Self::UnknownCode => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The machine-readable `error.code`.
    pub fn code(self) -> &'static str {
        match self {
            Self::MalformedJson => "malformed_json",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::RouteNotFound => "not_found",
            Self::AttributionNotFound => "attribution_not_found",
            Self::CodeNotFound => "code_not_found",
            Self::WebhookNotFound => "webhook_not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::RequestTimeout => "request_timeout",
            Self::CodeMismatch => "code_mismatch",
            Self::AlreadyConfirmed => "already_confirmed",
            Self::AttributionExpired => "attribution_expired",
            Self::MemberAlreadyAttributed => "member_already_attributed",
            Self::NotAVisitor => "not_a_visitor",
            Self::NotConfirmed => "not_confirmed",
            Self::AlreadyReversed => "already_reversed",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::InvalidField => "invalid_field",
            Self::UnknownField => "unknown_field",
            Self::UnknownCode => "unknown_code",
            Self::RateLimited => "rate_limited",
            Self::Overloaded => "overloaded",
            Self::Internal => "internal",
        }
    }
}

/// A request failure: what went wrong, for people and for programs, and on which field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", kind.code())]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
    pub field: Option<String>,
    /// Seconds for `Retry-After` (429 and 503).
    pub retry_after_secs: Option<u64>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'static str,
    message: &'a str,
    field: Option<&'a str>,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            field: None,
            retry_after_secs: None,
        }
    }

    /// A 422 on one field.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidField, message).on_field(field)
    }

    pub fn on_field(mut self, field: &str) -> Self {
        self.field = Some(field.to_owned());
        self
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    /// A 503 that tells the client when to come back.
    pub fn overloaded(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Overloaded, message).retry_after(1)
    }

    /// A 500 whose cause the caller has logged; the client sees nothing internal.
    pub fn internal() -> Self {
        Self::new(ErrorKind::Internal, "internal error; see the service logs")
    }

    pub fn status(&self) -> StatusCode {
        self.kind.status()
    }

    /// The JSON body.
    pub fn to_json(&self) -> Vec<u8> {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.kind.code(),
                message: &self.message,
                field: self.field.as_deref(),
            },
        };
        // Serializing plain strings into a Vec cannot fail.
        serde_json::to_vec(&body).unwrap_or_default()
    }
}
