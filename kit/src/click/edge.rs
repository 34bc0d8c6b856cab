//! The click POST (recordReferralClick): the hot path from a tracking pixel's POST to an
//! acknowledged click.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use super::client_ip::TrustedProxies;
use super::in_flight::InFlight;
use super::rate_limit::{ClickLimits, Limited, Limiter};
use crate::body::read_limited;
use crate::error::{error_response, publish_error, serialize_response};
use bytes::Bytes;
use http::header::{CONTENT_TYPE, REFERER, USER_AGENT};
use http::{HeaderMap, Response, StatusCode};
use referral_pipeline::codes::{CodeResolver, CodeTarget};
use referral_pipeline::log::EventLog;
use referral_schemas::id::new_attribution_id;
use referral_schemas::messages::{ClickEvent, LogEvent};
use referral_schemas::validation::{
    ClickRequest, MAX_BODY_BYTES, MAX_USER_AGENT_BYTES, normalize_code, require_json_content_type,
    validate_http_url, validate_user_agent,
};
use referral_schemas::{ApiError, Attribution, ErrorKind, Timestamp, state};

/// Settings of the edge; see [`crate::config::EdgeArgs`].
#[derive(Clone, Debug)]
pub struct EdgeSettings {
    pub proxies: TrustedProxies,
    /// Longest wait for the log's acknowledgement before answering 503.
    pub ack_timeout: Duration,
    /// Clicks handled at once at most; past this, 503 at once.
    pub max_in_flight: usize,
    /// Where a redirect link goes when its code has no destination.
    pub fallback_url: Option<Arc<str>>,
}

/// Why a click was not recorded.
enum Refusal {
    Invalid(ApiError),
    Limited(Limited),
}

impl From<ApiError> for Refusal {
    fn from(error: ApiError) -> Self {
        Self::Invalid(error)
    }
}

/// The click POST: limits the client, reads the body, validates, resolves the code, limits
/// the code and the process, publishes, waits for the ack.
pub struct ClickEdge {
    log: Arc<dyn EventLog>,
    codes: Arc<CodeResolver>,
    limits: Arc<ClickLimits>,
    settings: EdgeSettings,
    /// Slots for clicks being handled now.
    in_flight: InFlight,
    /// `referral_clicks_accepted_total`, registered once (see [`crate::telemetry::RouteMetrics`]).
    accepted: metrics::Counter,
}

impl ClickEdge {
    pub fn new(
        log: Arc<dyn EventLog>,
        codes: Arc<CodeResolver>,
        limits: Arc<ClickLimits>,
        settings: EdgeSettings,
    ) -> Self {
        let in_flight = InFlight::new(settings.max_in_flight);
        let _ = crate::telemetry::metrics_handle();
        Self {
            log,
            codes,
            limits,
            settings,
            in_flight,
            accepted: metrics::counter!("referral_clicks_accepted_total"),
        }
    }

    pub fn limits(&self) -> &Arc<ClickLimits> {
        &self.limits
    }

    /// Where a redirect link goes when its code has no destination (`--fallback-url`).
    pub fn fallback_url(&self) -> Option<&str> {
        self.settings.fallback_url.as_deref()
    }

    /// Serves one click POST, from the request's headers and body to the response.
    ///
    /// The cheap refusal comes first: the per-IP limit, before the body is read. The body
    /// is read (bounded in size and time) before an in-flight slot is taken, so a client
    /// trickling its body holds a connection, not one of the slots that guard the work
    /// (validation, publishing, the wait for the log's acknowledgement).
    pub async fn handle<In, Out>(
        &self,
        peer: IpAddr,
        headers: &HeaderMap,
        body: In,
    ) -> Response<Out>
    where
        In: http_body::Body<Data = Bytes>,
        In::Error: std::error::Error + Send + Sync + 'static,
        Out: From<Vec<u8>>,
    {
        let client_ip = self.settings.proxies.client_ip(peer, headers);
        let allowance = match self.limits.check_client(client_ip) {
            Ok(allowance) => allowance,
            Err(limited) => return limited_response(limited),
        };
        let outcome = match read_limited(headers, body, MAX_BODY_BYTES).await {
            Ok(bytes) => {
                let Some(_slot) = self.in_flight.try_take() else {
                    metrics::counter!(
                        "referral_clicks_rejected_total",
                        "cause" => "in_flight_limit"
                    )
                    .increment(1);
                    return error_response(&ApiError::overloaded(
                        "too many clicks in progress; retry",
                    ));
                };
                self.record(client_ip, headers, bytes).await
            }
            Err(error) => Err(Refusal::Invalid(error)),
        };
        let mut response = match outcome {
            Ok(attribution) => {
                self.accepted.increment(1);
                serialize_response(StatusCode::CREATED, &attribution)
            }
            Err(Refusal::Invalid(error)) => {
                metrics::counter!("referral_clicks_rejected_total", "cause" => error.kind.code())
                    .increment(1);
                error_response(&error)
            }
            Err(Refusal::Limited(limited)) => return limited_response(limited),
        };
        if let Some(allowance) = allowance {
            set_rate_headers(&mut response, allowance.limit, allowance.remaining);
        }
        response
    }

    async fn record(
        &self,
        client_ip: IpAddr,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Attribution, Refusal> {
        require_json_content_type(headers.get(CONTENT_TYPE))?;
        let received_at = Timestamp::now();
        // simd-json parses in place; the copy is bounded by the body limit.
        let mut body = body.to_vec();
        let request = ClickRequest::parse(&mut body, received_at)?;
        // The code is resolved before its limit and the global one are spent: an unknown
        // code (already counted against the client's per-IP limit) must not use up a real
        // code's bucket or the process's.
        let target = self.codes.resolve(&request.code).await.ok_or_else(|| {
            ApiError::new(ErrorKind::UnknownCode, "no mentor has this referral code")
                .on_field("code")
        })?;
        self.limits
            .check_code_and_global(&request.code)
            .map_err(Refusal::Limited)?;
        let click = ClickEvent {
            attribution_id: new_attribution_id(),
            code: request.code,
            mentor_id: target.mentor_id.to_string(),
            ip_address: request.ip_address.unwrap_or_else(|| client_ip.to_string()),
            user_agent: request.user_agent.or_else(|| user_agent_header(headers)),
            referrer_url: request.referrer_url.or_else(|| referer_header(headers)),
            occurred_at: request.occurred_at.unwrap_or(received_at),
            received_at,
        };
        self.publish(click, self.settings.ack_timeout)
            .await
            .map_err(Refusal::from)
    }

    /// Publishes a click and waits, at most `wait`, for the log's acknowledgement.
    async fn publish(&self, click: ClickEvent, wait: Duration) -> Result<Attribution, ApiError> {
        let attribution = state::new_attribution(&click);
        let publish = self.log.publish(LogEvent::Click(click));
        let published = match self.log.own_wait_bound() {
            // The log fails the event itself within the wait: no timer per click.
            Some(bound) if bound <= wait => Ok(publish.await),
            _ => tokio::time::timeout(wait, publish).await,
        };
        match published {
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

    /// A visit of a pixel or a redirect link (a GET with no body): recorded as a click from
    /// the request itself (client address, `User-Agent`, `Referer`, now). The visitor is
    /// answered whatever happens, so a click that cannot be recorded is only counted.
    pub async fn visit(&self, peer: IpAddr, headers: &HeaderMap, raw_code: &str) -> Visit {
        let Ok(code) = normalize_code("code", raw_code) else {
            return Visit::not_recorded(None, VisitLoss::UnknownCode);
        };
        let client_ip = self.settings.proxies.client_ip(peer, headers);
        let client_allowed = self.limits.check_client(client_ip).is_ok();
        let Some(target) = self.codes.resolve(&code).await else {
            return Visit::not_recorded(None, VisitLoss::UnknownCode);
        };
        if !client_allowed || self.limits.check_code_and_global(&code).is_err() {
            return Visit::not_recorded(Some(target), VisitLoss::RateLimited);
        }
        let Some(_slot) = self.in_flight.try_take() else {
            return Visit::not_recorded(Some(target), VisitLoss::Overloaded);
        };
        let received_at = Timestamp::now();
        let click = ClickEvent {
            attribution_id: new_attribution_id(),
            code,
            mentor_id: target.mentor_id.to_string(),
            ip_address: client_ip.to_string(),
            user_agent: user_agent_header(headers),
            referrer_url: referer_header(headers),
            occurred_at: received_at,
            received_at,
        };
        // A visitor waits for the redirect: past a second it goes without an id (the click
        // may still land; it is counted as overloaded here).
        let wait = self.settings.ack_timeout.min(LINK_ACK_WAIT);
        match self.publish(click, wait).await {
            Ok(attribution) => {
                self.accepted.increment(1);
                Visit {
                    target: Some(target),
                    recorded: Ok(attribution.id),
                }
            }
            Err(_) => Visit::not_recorded(Some(target), VisitLoss::Overloaded),
        }
    }

    /// What a code stands for, without recording anything (a HEAD of a link).
    pub async fn look_up(&self, raw_code: &str) -> Option<CodeTarget> {
        let code = normalize_code("code", raw_code).ok()?;
        self.codes.resolve(&code).await
    }
}

/// Longest a pixel or link visitor waits for the log's acknowledgement of their click.
const LINK_ACK_WAIT: Duration = Duration::from_secs(1);

/// What became of a visit of a link.
#[derive(Debug)]
pub struct Visit {
    /// The code's mentor and destination, when the code is live.
    pub target: Option<CodeTarget>,
    /// The new attribution's id, or why no click was recorded.
    pub recorded: Result<String, VisitLoss>,
}

impl Visit {
    fn not_recorded(target: Option<CodeTarget>, loss: VisitLoss) -> Self {
        Self {
            target,
            recorded: Err(loss),
        }
    }
}

/// Why a visit was answered without recording a click.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VisitLoss {
    /// Not a live code (or not a code at all).
    UnknownCode,
    /// A rate limit refused it.
    RateLimited,
    /// Too many clicks in flight, or the log did not acknowledge it in time.
    Overloaded,
}

impl VisitLoss {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::UnknownCode => "unknown_code",
            Self::RateLimited => "rate_limited",
            Self::Overloaded => "overloaded",
        }
    }
}

/// A 429 with `Retry-After` and the refusing limit's `X-RateLimit-*` headers.
fn limited_response<Out: From<Vec<u8>>>(limited: Limited) -> Response<Out> {
    metrics::counter!("referral_clicks_rejected_total", "cause" => "rate_limited").increment(1);
    let seconds = limited.retry_after.as_secs_f64().ceil().max(1.0) as u64;
    let message = match limited.limiter {
        Limiter::ClientIp => "too many clicks from this client",
        Limiter::Code => "too many clicks for this code",
        Limiter::Global => "too many clicks right now",
    };
    let mut error = ApiError::new(
        ErrorKind::RateLimited,
        format!("{message}; retry in {seconds} s"),
    )
    .retry_after(seconds);
    if limited.limiter == Limiter::Code {
        error = error.on_field("code");
    }
    let mut response = error_response(&error);
    set_rate_headers(&mut response, limited.limit, 0);
    response
}

fn set_rate_headers<Out>(response: &mut Response<Out>, limit: u32, remaining: u32) {
    let headers = response.headers_mut();
    headers.insert("x-ratelimit-limit", limit.into());
    headers.insert("x-ratelimit-remaining", remaining.into());
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
    validate_http_url("referrer_url", text).ok()?;
    Some(text.to_owned())
}
