//! An in-process embedded service on a throw-away data directory, called with `oneshot`.

#![allow(dead_code)]

use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use clap::Parser;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use referral_api::EmbeddedService;
use referral_api::config::Config;
use serde_json::Value;
use tower::ServiceExt;

pub const PREFIX: &str = "/api/v1/referral-attributions";
pub const DOUBLED: &str = "/api/v1/referral-attributions/api/v1/referral-attributions";
/// The TCP peer every request appears to come from.
pub const PEER: &str = "203.0.113.7:40000";

pub struct TestApp {
    pub service: Option<EmbeddedService>,
    pub router: Router,
    pub dir: tempfile::TempDir,
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Answer {
    /// `error.code` and `error.field` of an error answer.
    pub fn error(&self) -> (&str, Option<&str>) {
        (
            self.body["error"]["code"].as_str().unwrap_or("<none>"),
            self.body["error"]["field"].as_str(),
        )
    }
}

impl TestApp {
    pub async fn start(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, extra)
    }

    pub fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Self {
        let data_dir = dir.path().to_str().unwrap().to_owned();
        let mut args = vec![
            "referral-api",
            "--data-dir",
            &data_dir,
            "--sqlite-synchronous",
            "normal",
        ];
        // Many clicks come from one test peer: limits stay off unless a test sets them.
        if !extra.iter().any(|arg| arg.starts_with("--rate-limit")) {
            args.extend([
                "--rate-limit-per-ip",
                "0",
                "--rate-limit-per-code",
                "0",
                "--rate-limit-global",
                "0",
            ]);
        }
        args.extend_from_slice(extra);
        let config = Config::try_parse_from(args).unwrap();
        let service = EmbeddedService::start(&config).unwrap();
        let router = service.router();
        Self {
            service: Some(service),
            router,
            dir,
        }
    }

    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(service) = self.service.take() {
            service.shutdown().await;
        }
        self.dir
    }

    pub async fn call(
        &self,
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Answer {
        let mut request = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let mut request = request
            .body(body.map_or_else(Body::empty, |body| Body::from(body.to_owned())))
            .unwrap();
        let peer: SocketAddr = PEER.parse().unwrap();
        request.extensions_mut().insert(ConnectInfo(peer));
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Answer {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, uri: &str) -> Answer {
        self.call(Method::GET, uri, &[], None).await
    }

    pub async fn send_json(&self, method: Method, uri: &str, body: &str) -> Answer {
        self.call(
            method,
            uri,
            &[("content-type", "application/json")],
            Some(body),
        )
        .await
    }

    pub async fn assign_code(&self, code: &str, mentor: &str) -> Answer {
        self.send_json(
            Method::PUT,
            &format!("/api/v1/referral-codes/{code}"),
            &format!(r#"{{"mentor_id":"{mentor}"}}"#),
        )
        .await
    }

    pub async fn click(&self, body: &str) -> Answer {
        self.send_json(Method::POST, PREFIX, body).await
    }

    /// Records a click for `code` and returns its id.
    pub async fn click_id(&self, code: &str, occurred_at: &str) -> String {
        let answer = self
            .click(&format!(
                r#"{{"code":"{code}","occurred_at":"{occurred_at}"}}"#
            ))
            .await;
        assert_eq!(answer.status, StatusCode::CREATED, "{:?}", answer.body);
        answer.body["id"].as_str().unwrap().to_owned()
    }

    pub async fn confirm(&self, id: &str, body: &str) -> Answer {
        self.send_json(Method::PUT, &format!("{PREFIX}/{id}"), body)
            .await
    }

    pub async fn totals(&self, mentor: &str, query: &str) -> (u64, u64, f64, String) {
        let answer = self
            .get(&format!("{PREFIX}/mentor/{mentor}/total{query}"))
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
        (
            answer.body["total_clicks"].as_u64().unwrap(),
            answer.body["total_conversions"].as_u64().unwrap(),
            answer.body["conversion_rate"].as_f64().unwrap(),
            answer.body["period"].as_str().unwrap().to_owned(),
        )
    }
}

/// An RFC 3339 instant `seconds` from now (negative: in the past).
pub fn from_now(seconds: i64) -> String {
    let millis = referral_schemas::Timestamp::now().as_millis() + seconds * 1000;
    referral_schemas::Timestamp::from_millis(millis - millis.rem_euclid(1000)).to_string()
}
