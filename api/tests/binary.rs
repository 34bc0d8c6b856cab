//! The real `referral-api` binary on its embedded log and store: killed with SIGKILL under
//! load and restarted on the same data directory, every acknowledged click is there and
//! the totals are exact (the store catches up from the log); SIGTERM drains and exits 0; a
//! torn last record is cut off at start, a corrupt one stops the start naming the file and
//! byte; a full disk answers 503 and loses nothing; a client that sends its headers slowly
//! is cut off; every write leaves an audit line.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use referral_pipeline::log::file::{frame, segment};
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
    try_start(data_dir, client, env)
        .await
        .unwrap_or_else(|exit| panic!("referral-api exited at start: {exit}"))
}

/// Where a server started with `RUST_LOG` writes its log.
fn log_file(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.with_extension("log")
}

/// Starts the binary and waits until it is ready; `Err` with its exit status when it
/// stopped instead.
async fn try_start(
    data_dir: &std::path::Path,
    client: &HttpClient,
    env: &[(&str, &str)],
) -> Result<Server, std::process::ExitStatus> {
    let address = format!("127.0.0.1:{}", free_port());
    // With `RUST_LOG` given, the test reads the log (written to stdout): it goes to a file
    // beside the data directory.
    let stdout = if env.iter().any(|(name, _)| *name == "RUST_LOG") {
        Stdio::from(std::fs::File::create(log_file(data_dir)).unwrap())
    } else {
        Stdio::null()
    };
    let child = Command::new(env!("CARGO_BIN_EXE_referral-api"))
        .env("REFERRAL_DATA_DIR", data_dir)
        .env("REFERRAL_LOG_SEGMENT_BYTES", "1048576")
        .env("REFERRAL_RATE_LIMIT_PER_IP", "0")
        .env("REFERRAL_RATE_LIMIT_PER_CODE", "0")
        .env("REFERRAL_LISTEN", &address)
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(stdout)
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut server = Server {
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
            return Ok(server);
        }
        if let Some(exit) = server.child.try_wait().unwrap() {
            return Err(exit);
        }
        assert!(
            Instant::now() < deadline,
            "referral-api did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the store applied everything in the log (`referral_apply_lag_events 0`).
async fn caught_up(client: &HttpClient, server: &Server) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let request = Request::get(format!("{}/metrics", server.base))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = client.request(request).await.unwrap();
        let text = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&text);
        if text
            .lines()
            .any(|line| line == "referral_apply_lag_events 0")
        {
            return;
        }
        assert!(Instant::now() < deadline, "the store never caught up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGTERM, then waits for a clean exit.
async fn stop(mut server: Server) {
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
            return;
        }
        assert!(
            Instant::now() < deadline,
            "referral-api did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn assign_code(client: &HttpClient, server: &Server, code: &str, mentor: &str) {
    let (status, body) = call(
        client,
        Method::PUT,
        &format!("{}/api/v1/referral-codes/{code}", server.base),
        Some(&format!(r#"{{"mentor_id":"{mentor}"}}"#)),
    )
    .await
    .unwrap();
    assert!(status.is_success(), "{status}: {body}");
}

/// A click body for `code` by a visitor no other click of this process used (a fresh
/// address, a browser's user agent padded to `agent_bytes`): its verdict is `counted`, so
/// totals count every acknowledged click.
fn new_visitor_click(code: &str, agent_bytes: usize) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let agent = format!(
        "Mozilla/5.0 (X11; Linux x86_64) Firefox/125.0 {}",
        "a".repeat(agent_bytes)
    );
    format!(
        r#"{{"code":"{code}","ip_address":"10.{}.{}.{}","user_agent":"{}"}}"#,
        (n >> 16) & 255,
        (n >> 8) & 255,
        n & 255,
        agent.trim_end()
    )
}

/// Clicks for `code` one after another; their ids.
async fn clicks(client: &HttpClient, server: &Server, code: &str, count: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(count);
    for _ in 0..count {
        let (status, body) = call(
            client,
            Method::POST,
            &format!("{}{PREFIX}", server.base),
            Some(&new_visitor_click(code, 0)),
        )
        .await
        .unwrap();
        assert_eq!(status, StatusCode::CREATED, "{body}");
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    ids
}

/// Bytes of whole batches at the start of a segment file (its records; zeros follow).
fn data_len(bytes: &[u8]) -> usize {
    let mut at = 0;
    while at < bytes.len() && !segment::is_free_space(&bytes[at..]) {
        at += frame::parse_batch(&bytes[at..]).unwrap().header.batch_len();
    }
    at
}

/// The segment files of a data directory's log, oldest first.
fn segments(data_dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(data_dir.join("log"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
        .collect();
    files.sort();
    files
}

async fn call(
    client: &HttpClient,
    method: Method,
    uri: &str,
    body: Option<&str>,
) -> Result<(StatusCode, Value), String> {
    call_as(client, None, method, uri, body).await
}

/// [`call`] with a bearer token.
async fn call_as(
    client: &HttpClient,
    token: Option<&str>,
    method: Method,
    uri: &str,
    body: Option<&str>,
) -> Result<(StatusCode, Value), String> {
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request
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
                    let body = new_visitor_click("JAN-1", 0);
                    match call(&client, Method::POST, &uri, Some(&body)).await {
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

    let server = start(dir.path(), &client).await;
    // The store catches up from the log: what was acknowledged but not yet applied at the
    // kill is applied now, once.
    caught_up(&client, &server).await;
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
    self::stop(server).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_last_record_is_cut_off_and_a_corrupt_one_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let server = start(dir.path(), &client).await;
    assign_code(&client, &server, "JAN-1", "usr_1").await;
    let acked = clicks(&client, &server, "JAN-1", 20).await;
    stop(server).await;

    // A crash in the middle of writing a batch leaves its first bytes where the next batch
    // goes: a batch header that promises more than follows.
    let active = segments(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&active).unwrap();
    let end = data_len(&bytes);
    let first_batch = bytes[..64].to_vec();
    bytes[end..end + 40].copy_from_slice(&first_batch[..40]);
    std::fs::write(&active, &bytes).unwrap();
    let server = start(dir.path(), &client).await;
    let after = std::fs::read(&active).unwrap();
    assert!(
        after.len() == end || segment::is_free_space(&after[end..end + 40]),
        "the torn record was not cut off"
    );
    for id in &acked {
        let (status, _) = call(
            &client,
            Method::GET,
            &format!("{}{PREFIX}/{id}", server.base),
            None,
        )
        .await
        .unwrap();
        assert_eq!(status, StatusCode::OK, "{id} lost");
    }
    let more = clicks(&client, &server, "JAN-1", 5).await;
    caught_up(&client, &server).await;
    let (_, totals) = call(
        &client,
        Method::GET,
        &format!("{}{PREFIX}/mentor/usr_1/total", server.base),
        None,
    )
    .await
    .unwrap();
    assert_eq!(totals["total_clicks"], 25);
    assert_eq!(more.len(), 5);
    stop(server).await;

    // A flipped byte inside an early record, with valid records after it: acknowledged data
    // is damaged, and the start refuses to go on without it.
    let active = segments(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&active).unwrap();
    bytes[40] ^= 0x55;
    std::fs::write(&active, &bytes).unwrap();
    let address = format!("127.0.0.1:{}", free_port());
    let output = Command::new(env!("CARGO_BIN_EXE_referral-api"))
        .env("REFERRAL_DATA_DIR", dir.path())
        .env("REFERRAL_LOG_SEGMENT_BYTES", "1048576")
        .env("REFERRAL_LISTEN", &address)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(!output.status.success(), "it started on a corrupt log");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&active.display().to_string()) && stderr.contains("corrupt log at byte 0"),
        "the error must name the file and the byte: {stderr}"
    );
}

/// A tmpfs of `size` mounted on `dir` (unmounted on drop). Only root may mount; the test
/// that needs one says so and fails otherwise.
struct SmallDisk {
    dir: std::path::PathBuf,
}

impl SmallDisk {
    fn mount(dir: &std::path::Path, size: &str) -> Self {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "this test mounts a small tmpfs to fill a real disk, which needs root"
        );
        Self {
            dir: dir.to_owned(),
        }
    }

    fn grow(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.dir)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_503_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(dir.path(), "1m");
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let server = start(dir.path(), &client).await;
    assign_code(&client, &server, "JAN-1", "usr_1").await;
    let uri = format!("{}{PREFIX}", server.base);
    let mut acked = Vec::new();
    let refused = loop {
        let body = new_visitor_click("JAN-1", 500);
        let (status, answer) = call(&client, Method::POST, &uri, Some(&body))
            .await
            .unwrap();
        if status != StatusCode::CREATED {
            break (status, answer);
        }
        acked.push(answer["id"].as_str().unwrap().to_owned());
        assert!(acked.len() < 20_000, "the disk never filled");
    };
    assert_eq!(refused.0, StatusCode::SERVICE_UNAVAILABLE, "{}", refused.1);
    assert_eq!(refused.1["error"]["code"], "overloaded");
    assert!(!acked.is_empty());

    // Space comes back: the same process takes clicks again, and everything acknowledged
    // before and after is stored once.
    disk.grow("64m");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let body = new_visitor_click("JAN-1", 500);
        let (status, answer) = call(&client, Method::POST, &uri, Some(&body))
            .await
            .unwrap();
        if status == StatusCode::CREATED {
            acked.push(answer["id"].as_str().unwrap().to_owned());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "clicks never accepted again: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    caught_up(&client, &server).await;
    for id in &acked {
        let (status, _) = call(&client, Method::GET, &format!("{uri}/{id}"), None)
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK, "acknowledged click {id} lost");
    }
    let (_, totals) = call(
        &client,
        Method::GET,
        &format!("{uri}/mentor/usr_1/total"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(totals["total_clicks"], acked.len());
    stop(server).await;
    drop(disk);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_leaves_an_audit_line_naming_the_token_by_its_digest_never_itself() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let admin = "audit-admin-0123456789abcdef";
    let spec = format!("{admin}=admin");
    let server = start_with(
        &data_dir,
        &client,
        &[
            ("REFERRAL_API_TOKENS", spec.as_str()),
            ("RUST_LOG", "warn,referral::audit=info"),
        ],
    )
    .await;
    let code_uri = format!("{}/api/v1/referral-codes/AUDIT-1", server.base);
    let (status, _) = call_as(
        &client,
        Some(admin),
        Method::PUT,
        &code_uri,
        Some(r#"{"mentor_id":"usr_1"}"#),
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = call_as(&client, Some(admin), Method::DELETE, &code_uri, None)
        .await
        .unwrap();
    assert!(status.is_success(), "{status}");
    // A read is not a write: no audit line.
    let (status, _) = call_as(&client, Some(admin), Method::GET, &code_uri, None)
        .await
        .unwrap();
    assert!(status.is_client_error() || status.is_success());
    stop(server).await;
    let log = std::fs::read_to_string(log_file(&data_dir)).unwrap();
    let audit: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("referral::audit"))
        .collect();
    assert_eq!(audit.len(), 2, "one line per write:\n{log}");
    let name = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(admin.as_bytes()))[..12].to_owned()
    };
    for line in &audit {
        assert!(line.contains(&format!("sha256:{name}")), "{line}");
        assert!(line.contains("AUDIT-1"), "{line}");
        assert!(
            !line.contains(admin),
            "the token itself is never logged: {line}"
        );
    }
    assert!(audit[0].contains("assign_code"), "{}", audit[0]);
    assert!(audit[1].contains("retire_code"), "{}", audit[1]);
}

/// Sends `request` as raw bytes on a new connection; everything the server wrote until it
/// closed the connection (or 5 s passed).
async fn raw_exchange(address: &str, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn ambiguous_framing_and_oversized_heads_are_refused_and_nothing_is_smuggled() {
    let dir = tempfile::tempdir().unwrap();
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let server = start(dir.path(), &client).await;
    let address = server.base.trim_start_matches("http://").to_owned();
    let head = "POST /api/v1/referral-attributions HTTP/1.1\r\nHost: x\r\n\
                Content-Type: application/json\r\n";
    let body = r#"{"code":"JAN-1"}"#;
    let chunked = format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len());
    let smuggled = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";

    // Both Content-Length and Transfer-Encoding: the chunked framing wins, the connection
    // closes after the answer, and whatever followed is never served as a request.
    let answer = raw_exchange(
        &address,
        format!("{head}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n{chunked}{smuggled}")
            .as_bytes(),
    )
    .await;
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    assert!(!answer.starts_with("HTTP/1.1 400"), "{answer}");

    let refused: [(&str, String); 6] = [
        (
            "two different Content-Lengths",
            format!("{head}Content-Length: 16\r\nContent-Length: 17\r\n\r\n{body}"),
        ),
        (
            "a folded header line",
            format!("{head}X-Folded: a\r\n b\r\nContent-Length: 16\r\n\r\n{body}"),
        ),
        (
            "a space before the colon of Transfer-Encoding",
            format!("{head}Transfer-Encoding : chunked\r\n\r\n{chunked}"),
        ),
        (
            "Transfer-Encoding on HTTP/1.0",
            format!(
                "POST /api/v1/referral-attributions HTTP/1.0\r\nHost: x\r\n\
                 Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{chunked}"
            ),
        ),
        (
            "a transfer coding other than chunked last",
            format!("{head}Transfer-Encoding: chunked, identity\r\n\r\n{chunked}"),
        ),
        (
            "an unparsable chunk size",
            format!(
                "{head}Transfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n{body}\r\n0\r\n\r\n"
            ),
        ),
    ];
    for (case, request) in refused {
        let answer = raw_exchange(&address, format!("{request}{smuggled}").as_bytes()).await;
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "{case}: {}",
            answer.lines().next().unwrap_or("<nothing>")
        );
        assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{case}: {answer}");
    }

    // A request head past 32 KiB, or with more than 64 header lines, is 431: a slow client
    // cannot pin ~400 KiB of buffer per connection.
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(40_000)
    );
    let answer = raw_exchange(&address, big.as_bytes()).await;
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "{}",
        answer.lines().next().unwrap_or("")
    );
    let many: String = (0..80).map(|i| format!("X-Header-{i}: v\r\n")).collect();
    let answer = raw_exchange(
        &address,
        format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes(),
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "{}",
        answer.lines().next().unwrap_or("")
    );
    // A normal head is still served.
    let answer = raw_exchange(
        &address,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    stop(server).await;
}

#[tokio::test]
async fn one_client_cannot_hold_more_than_its_share_of_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let server = start_with(
        dir.path(),
        &client,
        &[("REFERRAL_MAX_CONNECTIONS_PER_CLIENT", "3")],
    )
    .await;
    // The readiness poll's pooled connection counts too: let it go first.
    drop(client);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let address = server.base.trim_start_matches("http://").to_owned();
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
        // A head never finished: the connection stays open and idle.
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\n")
            .await
            .unwrap();
        held.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The fourth is closed at once, without an answer.
    let mut fourth = tokio::net::TcpStream::connect(&address).await.unwrap();
    let _ = fourth
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), fourth.read_to_end(&mut answer)).await;
    assert!(
        read.is_ok(),
        "the fourth connection was neither served nor closed"
    );
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    // One gone: a new connection is served.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let answer = raw_exchange(
        &address,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(held);
    drop(server);
}
