//! The HTTP client of the load generator: one keep-alive pool per run, every request with
//! a deadline, answers read whole (bodies are small).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode, Uri, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// How a request ended.
#[derive(Debug)]
pub enum Outcome {
    Answered {
        status: StatusCode,
        body: Bytes,
    },
    /// No answer within the deadline (the request may still have been processed).
    TimedOut,
    /// The connection failed or was cut (the request may still have been processed).
    Transport(String),
}

impl Outcome {
    /// The answer's JSON, if it was answered with JSON.
    pub fn json(&self) -> Option<Value> {
        match self {
            Self::Answered { body, .. } => serde_json::from_slice(body).ok(),
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Answered { status, .. } => Some(status.as_u16()),
            _ => None,
        }
    }
}

#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
    token: Option<String>,
}

/// One request: method, URL, optional JSON body and extra headers.
pub struct Call<'a> {
    pub method: Method,
    pub url: String,
    pub body: Option<(Bytes, &'a str)>,
    pub headers: Vec<(header::HeaderName, &'a str)>,
}

impl<'a> Call<'a> {
    pub fn get(url: String) -> Self {
        Self {
            method: Method::GET,
            url,
            body: None,
            headers: Vec::new(),
        }
    }

    pub fn json(method: Method, url: String, body: String) -> Self {
        Self {
            method,
            url,
            body: Some((Bytes::from(body), "application/json")),
            headers: Vec::new(),
        }
    }
}

impl HttpClient {
    /// `token`: sent as a bearer token on API calls (`authorized`), never on click POSTs,
    /// which are public.
    pub fn new(max_idle_per_host: usize, timeout: Duration, token: Option<String>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(max_idle_per_host)
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Self {
            client,
            timeout,
            token,
        }
    }

    /// The same client (and connection pool) with another time limit per request.
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        Self {
            client: self.client.clone(),
            timeout,
            token: self.token.clone(),
        }
    }

    /// Sends `call` (with the bearer token when `authorized`) and waits for the whole answer.
    pub async fn send(&self, call: Call<'_>, authorized: bool) -> Outcome {
        let uri: Uri = match call.url.parse() {
            Ok(uri) => uri,
            Err(error) => return Outcome::Transport(format!("bad URL {}: {error}", call.url)),
        };
        let mut builder = Request::builder().method(call.method).uri(uri);
        if authorized && let Some(token) = &self.token {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        for (name, value) in call.headers {
            builder = builder.header(name, value);
        }
        let body = match call.body {
            Some((bytes, content_type)) => {
                builder = builder.header(header::CONTENT_TYPE, content_type);
                bytes
            }
            None => Bytes::new(),
        };
        let request = match builder.body(Full::new(body)) {
            Ok(request) => request,
            Err(error) => return Outcome::Transport(error.to_string()),
        };
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|error| error.to_string())?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|error| error.to_string())?
                .to_bytes();
            Ok::<_, String>(Outcome::Answered { status, body })
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(error)) => Outcome::Transport(error),
            Err(_) => Outcome::TimedOut,
        }
    }
}
