//! The real `referral-api` binary: killed with SIGKILL under load and restarted on the same
//! data directory, every acknowledged click is there and the totals are exact; SIGTERM
//! drains and exits 0; a client that sends its headers slowly is cut off.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

const PREFIX: &str = "/api/v1/referral-attributions";

struct Server {
    child: Child,
    base: String,
}

/// A failed assertion must not leave a server running (it would hold the test's pipes).
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start(data_dir: &std::path::Path, client: &HttpClient) -> Server {
    start_with(data_dir, client, &[]).await
}

async fn start_with(
    data_dir: &std::path::Path,
    client: &HttpClient,
    env: &[(&str, &str)],
) -> Server {
    let address = format!("127.0.0.1:{}", free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_referral-api"))
        .envs(env.iter().copied())
        .env("REFERRAL_DATA_DIR", data_dir)
        .env("REFERRAL_RATE_LIMIT_PER_IP", "0")
        .env("REFERRAL_RATE_LIMIT_PER_CODE", "0")
        .env("REFERRAL_LISTEN", &address)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let server = Server {
        child,
        base: format!("http://{address}"),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok((StatusCode::OK, _)) = call(
            client,
            Method::GET,
            &format!("{}/readyz", server.base),
            None,
        )
        .await
        {
            return server;
        }
        assert!(
            Instant::now() < deadline,
            "referral-api did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn call(
    client: &HttpClient,
    method: Method,
    uri: &str,
    body: Option<&str>,
) -> Result<(StatusCode, Value), String> {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or("").to_owned())))
        .map_err(|error| error.to_string())?;
    let response = client
        .request(request)
        .await
        .map_err(|error| error.to_string())?;
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|error| error.to_string())?
        .to_bytes();
    Ok((
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_loses_no_acknowledged_click_and_counts_none_twice() {
    let dir = tempfile::tempdir().unwrap();
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let mut server = start(dir.path(), &client).await;
    let (status, _) = call(
        &client,
        Method::PUT,
        &format!("{}/api/v1/referral-codes/JAN-1", server.base),
        Some(r#"{"mentor_id":"usr_4491"}"#),
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::CREATED);

    // Clicks from 16 concurrent clients until the process dies under them.
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let attempted = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..16)
        .map(|_| {
            let (client, acked, attempted, stop) = (
                client.clone(),
                acked.clone(),
                attempted.clone(),
                stop.clone(),
            );
            let uri = format!("{}{PREFIX}", server.base);
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    attempted.fetch_add(1, Ordering::Relaxed);
                    match call(&client, Method::POST, &uri, Some(r#"{"code":"JAN-1"}"#)).await {
                        Ok((StatusCode::CREATED, body)) => {
                            acked
                                .lock()
                                .unwrap()
                                .push(body["id"].as_str().unwrap().to_owned());
                        }
                        Ok((status, body)) => panic!("unexpected answer {status}: {body}"),
                        Err(_) => break, // the server is gone
                    }
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < 500 {
        assert!(Instant::now() < deadline, "too few clicks acknowledged");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.child.kill().unwrap(); // SIGKILL, with requests in flight
    server.child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let attempted = attempted.load(Ordering::Relaxed);

    let mut server = start(dir.path(), &client).await;
    for id in &acked {
        let (status, body) = call(
            &client,
            Method::GET,
            &format!("{}{PREFIX}/{id}", server.base),
            None,
        )
        .await
        .unwrap();
        assert_eq!(
            status,
            StatusCode::OK,
            "acknowledged click {id} was lost: {body}"
        );
    }
    let (_, list) = call(
        &client,
        Method::GET,
        &format!("{}{PREFIX}/mentor/usr_4491?limit=1", server.base),
        None,
    )
    .await
    .unwrap();
    let stored = list["pagination"]["total"].as_u64().unwrap() as usize;
    let (_, totals) = call(
        &client,
        Method::GET,
        &format!("{}{PREFIX}/mentor/usr_4491/total", server.base),
        None,
    )
    .await
    .unwrap();
    let counted = totals["total_clicks"].as_u64().unwrap() as usize;
    assert_eq!(
        counted, stored,
        "totals must equal the stored attributions exactly"
    );
    assert!(
        stored >= acked.len(),
        "stored {stored} < acknowledged {}",
        acked.len()
    );
    // At most the requests in flight at the kill were stored without an answer.
    assert!(
        stored <= attempted,
        "stored {stored} > attempted {attempted}"
    );
    eprintln!(
        "acked={} stored={stored} attempted={attempted} lost=0 duplicated=0",
        acked.len()
    );

    // SIGTERM: drain and exit 0.
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(server.child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(exit) = server.child.try_wait().unwrap() {
            assert!(exit.success(), "graceful shutdown must exit 0, got {exit}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "referral-api did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_client_sending_headers_slowly_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let mut server = start_with(
        dir.path(),
        &client,
        &[("REFERRAL_HEADER_READ_TIMEOUT", "1s")],
    )
    .await;
    let address = server.base.trim_start_matches("http://").to_owned();
    let mut slow = tokio::net::TcpStream::connect(&address).await.unwrap();
    slow.write_all(b"POST /api/v1/referral-attributions HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buffer = [0u8; 512];
    // The server must close the connection (EOF, possibly after a 408) well before 5 s.
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
    // Other clients are still served. A new client: the header-read timeout also closes
    // idle keep-alive connections, so the pooled one from the readiness poll is gone.
    let fresh: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let (status, _) = call(
        &fresh,
        Method::GET,
        &format!("{}/healthz", server.base),
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::OK);
    server.child.kill().unwrap();
    server.child.wait().unwrap();
}
