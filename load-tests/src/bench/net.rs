//! HTTP helpers of the drivers: a plain GET to a service on this machine, waiting until a
//! service answers, and the keep-alive HTTP/1.1 connections their load runs on.

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use hyper::body::Body;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

use super::Result;
use super::process::Service;
use crate::http;

/// How long a GET of [`http_get`] may take, connecting included.
const GET_TIMEOUT: Duration = Duration::from_secs(30);

/// A GET to `127.0.0.1:port`: (status, body). `None` when the service does not answer
/// (within 2 s to connect, 30 s in all).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http::get(&format!("http://127.0.0.1:{port}{path}"), GET_TIMEOUT)
        .ok()
        .map(|answer| (answer.status, answer.body))
}

/// Waits until `service` answers 200 on `path`; fails with its log when it dies or when
/// `within` runs out.
pub fn wait_http_ok(service: &mut Service, port: u16, path: &str, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        service.check_alive()?;
        if http_get(port, path).is_some_and(|(status, _)| status == 200) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{} did not answer 200 on {path} within {within:?}; its log:\n{}",
                service.name,
                service.log_tail()
            ));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// One keep-alive HTTP/1.1 connection to `address` (no delay), its connection task spawned
/// on the current runtime: requests go one at a time, as a client's would.
pub async fn connect<B>(address: SocketAddr) -> Result<SendRequest<B>>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|error| format!("connect: {error}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| format!("handshake: {error}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}
