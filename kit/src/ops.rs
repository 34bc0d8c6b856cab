//! The operational endpoints every binary serves, answered the same way by each:
//!
//! * `GET /healthz`: the process is alive (200 `{"status":"ok"}`);
//! * `GET /readyz`: 200 `{"status":"ready"}` while the process does its job, else 503
//!   `{"status":"not_ready","reason":"..."}`;
//! * `GET /metrics`: Prometheus text.
//!
//! [`answer`] is framework-free: the plain-hyper binaries call it from their routers, the
//! API from axum handlers.

use http::{Method, Response, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;

use crate::error::{error_response, json_response, serialize_response};

/// One of the operational routes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpsRoute {
    Health,
    Ready,
    Metrics,
}

impl OpsRoute {
    /// The route a path names, if any.
    pub fn of(path: &str) -> Option<Self> {
        match path {
            "/healthz" => Some(Self::Health),
            "/readyz" => Some(Self::Ready),
            "/metrics" => Some(Self::Metrics),
            _ => None,
        }
    }

    /// The route's template, for metric labels.
    pub fn path(self) -> &'static str {
        match self {
            Self::Health => "/healthz",
            Self::Ready => "/readyz",
            Self::Metrics => "/metrics",
        }
    }
}

#[derive(Serialize)]
struct Readiness<'a> {
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

/// The answer to an operational route. `readiness` is asked only for `/readyz`.
pub fn answer<B: From<Vec<u8>>>(
    route: OpsRoute,
    method: &Method,
    readiness: impl FnOnce() -> Result<(), String>,
    metrics: &PrometheusHandle,
) -> Response<B> {
    if method != Method::GET {
        let mut response: Response<B> = error_response(&referral_schemas::ApiError::new(
            referral_schemas::ErrorKind::MethodNotAllowed,
            "this route accepts GET only",
        ));
        response
            .headers_mut()
            .insert(http::header::ALLOW, http::HeaderValue::from_static("GET"));
        return response;
    }
    match route {
        OpsRoute::Health => json_response(StatusCode::OK, br#"{"status":"ok"}"#.to_vec()),
        OpsRoute::Ready => match readiness() {
            Ok(()) => serialize_response(
                StatusCode::OK,
                &Readiness {
                    status: "ready",
                    reason: None,
                },
            ),
            Err(reason) => serialize_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &Readiness {
                    status: "not_ready",
                    reason: Some(&reason),
                },
            ),
        },
        OpsRoute::Metrics => {
            let mut response = Response::new(B::from(metrics.render().into_bytes()));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(response: Response<Vec<u8>>) -> (StatusCode, String) {
        let status = response.status();
        (status, String::from_utf8(response.into_body()).unwrap())
    }

    #[test]
    fn readiness_says_why_it_is_not_ready() {
        let metrics = crate::telemetry::metrics_handle();
        let ready = answer(OpsRoute::Ready, &Method::GET, || Ok(()), &metrics);
        assert_eq!(
            body(ready),
            (StatusCode::OK, r#"{"status":"ready"}"#.to_owned())
        );
        let not_ready = answer(
            OpsRoute::Ready,
            &Method::GET,
            || Err("the store is far behind".into()),
            &metrics,
        );
        assert_eq!(
            body(not_ready),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"status":"not_ready","reason":"the store is far behind"}"#.to_owned()
            )
        );
        let post: Response<Vec<u8>> = answer(OpsRoute::Health, &Method::POST, || Ok(()), &metrics);
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(OpsRoute::of("/metrics"), Some(OpsRoute::Metrics));
        assert_eq!(OpsRoute::of("/nope"), None);
    }
}
