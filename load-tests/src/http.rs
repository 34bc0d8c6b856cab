//! A small blocking HTTP/1.1 client for the service launchers and the benchmark drivers:
//! hyper's client (hyper-util's legacy `Client`) on a current-thread tokio runtime that runs
//! on a thread of its own. Callers block on a reply channel, never on a runtime, so it works
//! from plain code and from inside `#[tokio::test]`s alike (blocking on a runtime from a
//! thread that already drives one panics).
//!
//! Every request goes on a fresh connection (no idle pool), as `Connection: close` would:
//! tests kill and restart ClickHouse on the same port, and a pooled connection to the old
//! process would fail the first request after it. Requests run concurrently on the runtime.

use std::sync::OnceLock;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Uri, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

/// How long a connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A whole answer: the status and the body (lossily decoded as UTF-8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

/// `GET url`, the whole answer within `timeout` (connecting included).
pub fn get(url: &str, timeout: Duration) -> Result<Response, String> {
    send(Method::GET, url, None, timeout)
}

/// `POST url` with `body` of `content_type`, the whole answer within `timeout`.
pub fn post(
    url: &str,
    body: impl Into<Bytes>,
    content_type: &str,
    timeout: Duration,
) -> Result<Response, String> {
    send(
        Method::POST,
        url,
        Some((body.into(), content_type)),
        timeout,
    )
}

/// One request on a fresh connection; `Err` when it could not be sent or was not answered
/// in time (with why).
pub fn send(
    method: Method,
    url: &str,
    body: Option<(Bytes, &str)>,
    timeout: Duration,
) -> Result<Response, String> {
    let uri: Uri = url
        .parse()
        .map_err(|error| format!("bad URL {url}: {error}"))?;
    let mut builder = Request::builder().method(method).uri(uri);
    let body = match body {
        Some((bytes, content_type)) => {
            builder = builder.header(header::CONTENT_TYPE, content_type);
            bytes
        }
        None => Bytes::new(),
    };
    let request = builder
        .body(Full::new(body))
        .map_err(|error| format!("bad request to {url}: {error}"))?;
    let (reply, answer) = mpsc::sync_channel(1);
    client()?
        .send(Job {
            request,
            timeout,
            reply,
        })
        .map_err(|_| "the HTTP client thread has stopped".to_owned())?;
    answer
        .recv()
        .map_err(|_| "the HTTP client thread has stopped".to_owned())?
}

/// One request for the client thread, and where its outcome goes.
struct Job {
    request: Request<Full<Bytes>>,
    timeout: Duration,
    reply: mpsc::SyncSender<Result<Response, String>>,
}

/// The client thread's queue, started on first use.
fn client() -> Result<&'static UnboundedSender<Job>, String> {
    static CLIENT: OnceLock<Result<UnboundedSender<Job>, String>> = OnceLock::new();
    CLIENT.get_or_init(start).as_ref().map_err(Clone::clone)
}

fn start() -> Result<UnboundedSender<Job>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| format!("cannot start the HTTP client's runtime: {error}"))?;
    let (jobs, mut queue) = unbounded_channel::<Job>();
    thread::Builder::new()
        .name("blocking-http".to_owned())
        .spawn(move || {
            runtime.block_on(async move {
                let mut connector = HttpConnector::new();
                connector.set_nodelay(true);
                connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
                let client: Client<HttpConnector, Full<Bytes>> =
                    Client::builder(TokioExecutor::new())
                        .pool_max_idle_per_host(0)
                        .build(connector);
                while let Some(job) = queue.recv().await {
                    let client = client.clone();
                    tokio::spawn(async move {
                        let exchange = async {
                            let response = client
                                .request(job.request)
                                .await
                                .map_err(|error| describe(&error))?;
                            let status = response.status().as_u16();
                            let body = response
                                .into_body()
                                .collect()
                                .await
                                .map_err(|error| format!("reading the answer: {error}"))?
                                .to_bytes();
                            Ok(Response {
                                status,
                                body: String::from_utf8_lossy(&body).into_owned(),
                            })
                        };
                        let outcome = tokio::time::timeout(job.timeout, exchange)
                            .await
                            .unwrap_or_else(|_| Err(format!("no answer within {:?}", job.timeout)));
                        let _ = job.reply.send(outcome);
                    });
                }
            });
        })
        .map_err(|error| format!("cannot start the HTTP client thread: {error}"))?;
    Ok(jobs)
}

/// A client error with its causes (hyper-util's own message is only "client error (Connect)").
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;

    use super::*;

    /// Serves one request with `answer` and returns what it received (head and body).
    fn serve_once(answer: &'static [u8]) -> (u16, thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream);
            let mut head = String::new();
            let mut length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = value.trim().parse().unwrap();
                }
                head.push_str(&line);
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            reader.get_mut().write_all(answer).unwrap();
            head + &String::from_utf8(body).unwrap()
        });
        (port, server)
    }

    #[test]
    fn posts_and_reads_a_chunked_answer() {
        let (port, server) = serve_once(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
              3\r\nabc\r\n2;ext=1\r\nd\xc3\r\n1\r\n\xa9\r\n0\r\n\r\n",
        );
        let url = format!("http://127.0.0.1:{port}/?x=1");
        let answer = post(&url, "SELECT 'é'", "text/plain", Duration::from_secs(10)).unwrap();
        assert_eq!(
            answer,
            Response {
                status: 200,
                body: "abcdé".to_owned()
            }
        );
        let request = server.join().unwrap();
        assert!(request.starts_with("POST /?x=1 HTTP/1.1\r\n"), "{request}");
        assert!(
            request.contains("content-type: text/plain\r\n"),
            "{request}"
        );
        assert!(request.ends_with("\r\n\r\nSELECT 'é'"), "{request}");
    }

    /// The drivers and the tests call it from inside a runtime too.
    #[tokio::test]
    async fn works_from_inside_a_runtime_and_reports_failures() {
        let (port, server) = serve_once(b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\ngone");
        let answer = get(
            &format!("http://127.0.0.1:{port}/missing"),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!((answer.status, answer.body.as_str()), (404, "gone"));
        server.join().unwrap();

        let closed = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let error = get(
            &format!("http://127.0.0.1:{port}/"),
            Duration::from_secs(10),
        );
        assert!(error.is_err(), "{error:?}");
        assert!(get("not a url", Duration::from_secs(1)).is_err());
    }

    #[test]
    fn times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let error = get(
            &format!("http://127.0.0.1:{port}/"),
            Duration::from_millis(200),
        )
        .unwrap_err();
        assert!(error.contains("no answer within"), "{error}");
        drop(listener);
    }
}
