//! The `referral-ingest` binary: plain hyper serving the click POST over its own embedded
//! pipeline, with the same rules and error bodies as the API.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use referral_pipeline::config::{PipelineArgs, SqliteSynchronous};
use referral_pipeline::store::{AttributionReader, sqlite};
use referral_pipeline::{Pipeline, Role};
use referral_schemas::Timestamp;
use referral_schemas::messages::{AssignCode, LogEvent};
use referral_schemas::query::HourRange;
use serde_json::Value;
use support::{ChildGuard, free_address};

type HttpClient = Client<HttpConnector, Full<Bytes>>;

#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    pipeline: PipelineArgs,
}

/// Assigns a code through the embedded pipeline itself (the edge has no code routes), then
/// lets go of the data directory.
async fn seed_code(dir: &std::path::Path, code: &str, mentor: &str) {
    let data_dir = dir.to_str().unwrap();
    let args = Flags::try_parse_from([
        "seed",
        "--data-dir",
        data_dir,
        "--log-segment-bytes",
        "1048576",
    ])
    .unwrap()
    .pipeline;
    let pipeline = Pipeline::open(&args, Role::Api, "seed").await.unwrap();
    pipeline
        .log
        .publish(LogEvent::AssignCode(AssignCode {
            command_id: "cmd_seed".into(),
            code: code.into(),
            mentor_id: mentor.into(),
            destination_url: None,
            issued_at: Timestamp::now(),
        }))
        .await
        .unwrap();
    assert!(pipeline.caught_up(Duration::from_secs(10)).await);
    pipeline.shutdown(Duration::from_secs(10)).await;
}

async fn call(
    client: &HttpClient,
    method: Method,
    uri: &str,
    content_type: &str,
    body: &str,
) -> Result<(StatusCode, http::HeaderMap, Value), String> {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body.to_owned())))
        .map_err(|error| error.to_string())?;
    let response = client
        .request(request)
        .await
        .map_err(|error| error.to_string())?;
    let (parts, body) = response.into_parts();
    let bytes = body
        .collect()
        .await
        .map_err(|error| error.to_string())?
        .to_bytes();
    Ok((
        parts.status,
        parts.headers,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}

#[tokio::test]
async fn the_edge_binary_records_clicks_and_refuses_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    seed_code(dir.path(), "JAN-1", "usr_1").await;
    let address = free_address();
    let log_path = dir.path().join("ingest.log");
    let mut child = ChildGuard(
        Command::new(env!("CARGO_BIN_EXE_referral-ingest"))
            .env("REFERRAL_DATA_DIR", dir.path())
            .env("REFERRAL_LOG_SEGMENT_BYTES", "1048576")
            .env("REFERRAL_LISTEN", &address)
            .env("RUST_LOG", "warn")
            .stdout(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap(),
    );
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let base = format!("http://{address}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !matches!(
        call(&client, Method::GET, &format!("{base}/readyz"), "", "").await,
        Ok((StatusCode::OK, _, _))
    ) {
        assert!(
            Instant::now() < deadline,
            "referral-ingest did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let doubled = format!("{base}/api/v1/referral-attributions/api/v1/referral-attributions");
    let canonical = format!("{base}/api/v1/referral-attributions");
    for uri in [&canonical, &doubled] {
        let (status, _, body) = call(
            &client,
            Method::POST,
            uri,
            "application/json",
            r#"{"code":"jan-1"}"#,
        )
        .await
        .unwrap();
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["mentor_id"], "usr_1");
        assert_eq!(body["ip_address"], "127.0.0.1");
    }
    let refusals = [
        (
            "application/json",
            r#"{"code":"NOPE-1"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_code",
        ),
        (
            "application/json",
            r#"{"code":"JAN-1","ip_address":"x"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
        ),
        (
            "application/json",
            "{",
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            "text/plain",
            r#"{"code":"JAN-1"}"#,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
    ];
    for (content_type, body, status, code) in refusals {
        let answer = call(&client, Method::POST, &canonical, content_type, body)
            .await
            .unwrap();
        assert_eq!(
            (answer.0, answer.2["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}"
        );
    }
    let huge = format!(
        r#"{{"code":"JAN-1","user_agent":"{}"}}"#,
        "a".repeat(20_000)
    );
    let (status, _, _) = call(&client, Method::POST, &canonical, "application/json", &huge)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let (status, headers, body) = call(&client, Method::GET, &canonical, "", "")
        .await
        .unwrap();
    assert_eq!(
        (status, headers.get("allow").map(|v| v.to_str().unwrap())),
        (StatusCode::METHOD_NOT_ALLOWED, Some("POST"))
    );
    assert_eq!(body["error"]["code"], "method_not_allowed");
    let (status, _, _) = call(&client, Method::GET, &format!("{base}/nope"), "", "")
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The pixel and the redirect link on the plain-hyper edge: the pixel's GET is a click,
    // HEADs are not; the link of a code without a destination (and no --fallback-url)
    // records its click and shows the 404 page.
    for (method, path, status) in [
        (Method::GET, "/p/JAN-1.gif", StatusCode::OK),
        (Method::HEAD, "/p/JAN-1.gif", StatusCode::OK),
        (Method::HEAD, "/r/JAN-1", StatusCode::NOT_FOUND),
        (Method::GET, "/r/jan-1", StatusCode::NOT_FOUND),
        (Method::GET, "/r/NOPE-1", StatusCode::NOT_FOUND),
    ] {
        let request = Request::builder()
            .method(method.clone())
            .uri(format!("{base}{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let answer = client.request(request).await.unwrap();
        assert_eq!(answer.status(), status, "{method} {path}");
        if path.starts_with("/p/") {
            assert_eq!(answer.headers()["content-type"], "image/gif");
            assert_eq!(answer.headers()["cache-control"], "no-store, private");
        }
    }
    // X-Forwarded-For from a peer not in --trusted-proxies (none here): not believed,
    // counted, and one warning line for the process however many arrive.
    for _ in 0..3 {
        let request = Request::post(&canonical)
            .header("content-type", "application/json")
            .header("x-forwarded-for", "203.0.113.9")
            .body(Full::new(Bytes::from_static(b"{")))
            .unwrap();
        let answer = client.request(request).await.unwrap();
        assert_eq!(answer.status(), StatusCode::BAD_REQUEST);
    }
    let metrics = client
        .request(
            Request::get(format!("{base}/metrics"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    let text = String::from_utf8(
        metrics
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    assert!(text.contains("referral_clicks_accepted_total 4"), "{text}");
    assert!(
        text.contains(r#"referral_link_visits_total{link="pixel",outcome="head"} 1"#),
        "{text}"
    );
    assert!(
        text.contains("referral_untrusted_forwarded_for_total 3"),
        "{text}"
    );
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert_eq!(
        log.matches("X-Forwarded-For from a peer not in --trusted-proxies")
            .count(),
        1,
        "{log}"
    );
    assert!(
        text.contains(r#"referral_clicks_rejected_total{cause="unknown_code"} 1"#),
        "{text}"
    );

    // SIGTERM drains and exits 0, with the store caught up: exactly the four accepted
    // clicks are stored.
    assert!(
        Command::new("kill")
            .arg("-TERM")
            .arg(child.0.id().to_string())
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let exit = loop {
        if let Some(exit) = child.0.try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "referral-ingest did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "{exit}");
    let (_, reader) = sqlite::open(dir.path(), SqliteSynchronous::Normal).unwrap();
    let totals = reader
        .mentor_totals(
            "usr_1",
            HourRange {
                from_hour: None,
                to_hour: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        totals.clicks + totals.duplicates + totals.bots,
        4,
        "two POSTs, a pixel and a link"
    );
}

#[tokio::test]
async fn the_edge_binary_cuts_off_a_client_sending_headers_slowly() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let address = free_address();
    let _child = ChildGuard(
        Command::new(env!("CARGO_BIN_EXE_referral-ingest"))
            .env("REFERRAL_DATA_DIR", dir.path())
            .env("REFERRAL_LOG_SEGMENT_BYTES", "1048576")
            .env("REFERRAL_LISTEN", &address)
            .env("REFERRAL_HEADER_READ_TIMEOUT", "1s")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut slow = loop {
        match tokio::net::TcpStream::connect(&address).await {
            Ok(stream) => break stream,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(error) => panic!("referral-ingest did not start: {error}"),
        }
    };
    slow.write_all(b"POST /api/v1/referral-attributions HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buffer = [0u8; 512];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match slow.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the slow client was not cut off");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "cut off before the timeout"
    );
}
