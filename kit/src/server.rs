//! The hyper 1.x accept loop every binary serves through.
//!
//! HTTP/1.1 with keep-alive, TCP_NODELAY (responses are small; Nagle would add delay), a
//! header-read timeout against slow clients, bounded request heads, a cap on open
//! connections and on one client's share of them, and a graceful drain bounded by a
//! timeout when shutdown begins.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::click::client_ip::TrustedProxies;
use crate::click::rate_limit::client_network;
use crate::idle_watch::{Activity, Counted, idle_for};
use crate::shutdown::Shutdown;

/// Limits of the server; see [`crate::config::ServerArgs`] for their defaults.
#[derive(Clone, Debug)]
pub struct ServerSettings {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    /// Open connections of one client network at most (0: no cap).
    pub max_connections_per_client: usize,
    /// Peers the per-client cap does not apply to: our proxies, which carry many clients.
    pub exempt: TrustedProxies,
    pub drain_timeout: Duration,
}

impl ServerSettings {
    /// The same, with `proxies` exempt from the per-client cap.
    pub fn exempting(mut self, proxies: TrustedProxies) -> Self {
        self.exempt = proxies;
        self
    }
}

/// Open connections per client network, so one client cannot take every connection slot
/// (and with them the probes' way in).
struct ClientConnections {
    cap: usize,
    exempt: TrustedProxies,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection of a capped client; gives its slot back when dropped.
struct ClientSlot {
    owner: Arc<ClientConnections>,
    network: IpAddr,
}

impl ClientConnections {
    /// `Err` when `peer`'s network already holds `cap` connections; `Ok(None)` when it is
    /// not counted (no cap, or one of our proxies).
    fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Option<ClientSlot>, ()> {
        if self.cap == 0 || self.exempt.contains(peer) {
            return Ok(None);
        }
        let network = client_network(peer);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(network).or_insert(0);
        if *count >= self.cap {
            return Err(());
        }
        *count += 1;
        Ok(Some(ClientSlot {
            owner: self.clone(),
            network,
        }))
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self
            .owner
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.network) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.network);
            }
        }
    }
}

/// Largest request head (request line and headers) read into memory per connection.
pub const MAX_REQUEST_HEAD_BYTES: usize = 32 * 1024;
/// A connection's read buffer at most (a head and the start of a body, which is at most
/// 16 KiB on every route).
const MAX_READ_BUFFER_BYTES: usize = 64 * 1024;
/// Most header lines a request may carry.
pub const MAX_REQUEST_HEADERS: usize = 64;

/// Serves connections from `listener` until `shutdown`, then drains in-flight requests.
///
/// `make_service` builds the service of one connection from the peer's address, so handlers
/// know who is calling without a framework.
pub async fn serve<F, S, B>(
    listener: TcpListener,
    make_service: F,
    settings: ServerSettings,
    mut shutdown: Shutdown,
) where
    F: Fn(SocketAddr) -> S,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(settings.max_connections));
    let clients = Arc::new(ClientConnections {
        cap: settings.max_connections_per_client,
        exempt: settings.exempt.clone(),
        open: Mutex::new(HashMap::new()),
    });
    let mut builder = http1::Builder::new();
    builder
        // The header-read timeout is kept per connection by `idle_watch`, not by a timer
        // hyper arms per request.
        .header_read_timeout(Option::<Duration>::None)
        // hyper's default read buffer allows ~408 KiB of request head per connection, which
        // times --max-connections is gigabytes a slow client can pin; real heads (a pixel
        // GET with its cookies, a click POST) fit well inside 32 KiB. Past it: 431.
        .max_header_size(MAX_REQUEST_HEAD_BYTES)
        .max_buf_size(MAX_READ_BUFFER_BYTES)
        .max_headers(MAX_REQUEST_HEADERS)
        .keep_alive(true);
    loop {
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break, // the semaphore is never closed
            },
            () = shutdown.wait() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.wait() => break,
        };
        let Ok(slot) = clients.admit(peer.ip()) else {
            metrics::counter!("referral_connections_refused_total", "cause" => "per_client_limit")
                .increment(1);
            tracing::debug!(%peer, "connection closed: its client holds too many");
            drop(stream);
            continue;
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        let activity = Arc::new(Activity::default());
        let service = Counted::new(make_service(peer), activity.clone());
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        let header_read_timeout = settings.header_read_timeout;
        tokio::spawn(async move {
            tokio::select! {
                biased;
                ended = connection => if let Err(error) = ended {
                    // Client resets land here; they are not our errors.
                    tracing::debug!(%error, %peer, "connection ended with an error");
                },
                () = idle_for(activity, header_read_timeout) => {
                    // No request for the header-read timeout: an idle kept-alive connection,
                    // or a client sending its head too slowly.
                    metrics::counter!("referral_connections_closed_total", "cause" => "idle")
                        .increment(1);
                    tracing::debug!(%peer, "connection closed: no request within the header-read timeout");
                }
            }
            drop(slot);
            drop(permit);
        });
    }
    drop(listener);
    tracing::info!("stopped accepting; draining in-flight requests");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(settings.drain_timeout) => {
            tracing::warn!(timeout = ?settings.drain_timeout, "drain timed out; closing remaining connections");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use std::time::Instant;

    use bytes::Bytes;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A body of `left` chunks, one every `every`: a download slower than the timeout. With
    /// `sized`, its length is known up front (hyper then sends `Content-Length`).
    struct Trickle {
        left: u32,
        every: tokio::time::Interval,
        sized: bool,
    }

    impl hyper::body::Body for Trickle {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            context: &mut Context<'_>,
        ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
            if self.left == 0 {
                return Poll::Ready(None);
            }
            std::task::ready!(self.every.poll_tick(context));
            self.left -= 1;
            Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::from_static(
                b"chunk;",
            )))))
        }

        fn size_hint(&self) -> hyper::body::SizeHint {
            if self.sized {
                hyper::body::SizeHint::with_exact(6 * u64::from(self.left))
            } else {
                hyper::body::SizeHint::default()
            }
        }
    }

    async fn start(
        header_read_timeout: Duration,
    ) -> (SocketAddr, crate::shutdown::ShutdownTrigger) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (trigger, shutdown) = crate::shutdown::channel();
        let settings = ServerSettings {
            header_read_timeout,
            max_connections: 16,
            max_connections_per_client: 0,
            exempt: TrustedProxies::default(),
            drain_timeout: Duration::from_secs(1),
        };
        let make_service = |_peer: SocketAddr| {
            hyper::service::service_fn(|request: Request<Incoming>| async move {
                // `/small`: two chunks at once, its length known; anything else: a download.
                let small = request.uri().path() == "/small";
                let period = Duration::from_millis(if small { 1 } else { 100 });
                let mut every = tokio::time::interval(period);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let left = if small { 2 } else { 12 };
                Ok::<_, Infallible>(Response::new(Trickle {
                    left,
                    every,
                    sized: small,
                }))
            })
        };
        tokio::spawn(serve(listener, make_service, settings, shutdown));
        (address, trigger)
    }

    /// Reads until the server closes the connection; what arrived.
    async fn read_to_close(stream: &mut tokio::net::TcpStream) -> String {
        let mut text = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut text)).await;
        String::from_utf8_lossy(&text).into_owned()
    }

    #[tokio::test]
    async fn a_download_longer_than_the_timeout_arrives_whole_then_the_idle_connection_closes() {
        let timeout = Duration::from_millis(300);
        let (address, _trigger) = start(timeout).await;
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        stream
            .write_all(b"GET /export HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let started = Instant::now();
        let text = read_to_close(&mut stream).await;
        // 12 chunks 100 ms apart (~1.1 s, almost four timeouts), all there, the chunked
        // body ended, and then the kept-alive connection closed as idle.
        assert_eq!(text.matches("chunk;").count(), 12, "{text}");
        assert!(text.ends_with("0\r\n\r\n"), "{text}");
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(1_100 + 300), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    }

    #[tokio::test]
    async fn a_kept_alive_connection_serves_request_after_request_then_closes_when_idle() {
        let timeout = Duration::from_millis(300);
        let (address, _trigger) = start(timeout).await;
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        // Four requests 150 ms apart: over two timeouts in all, never one idle.
        for _ in 0..4 {
            stream
                .write_all(b"GET /small HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let mut text = Vec::new();
            while !text.ends_with(b"chunk;chunk;") {
                let mut buffer = [0u8; 512];
                let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
                    .await
                    .expect("an answer")
                    .unwrap();
                let so_far = String::from_utf8_lossy(&text).into_owned();
                assert!(read > 0, "closed while in use: {so_far}");
                text.extend_from_slice(&buffer[..read]);
            }
            let text = String::from_utf8_lossy(&text).to_lowercase();
            assert!(text.contains("content-length: 12\r\n"), "{text}");
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        let idle_from = Instant::now();
        let rest = read_to_close(&mut stream).await;
        assert!(rest.is_empty(), "{rest}");
        let idle = idle_from.elapsed();
        assert!(idle >= Duration::from_millis(100), "{idle:?}");
        assert!(idle < Duration::from_secs(3), "{idle:?}");
    }

    #[tokio::test]
    async fn a_client_that_sends_half_a_head_is_cut_off_after_the_timeout() {
        let timeout = Duration::from_millis(300);
        let (address, _trigger) = start(timeout).await;
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let started = Instant::now();
        stream
            .write_all(b"GET /export HTTP/1.1\r\nHo")
            .await
            .unwrap();
        let text = read_to_close(&mut stream).await;
        assert!(!text.contains("chunk;"), "{text}");
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(280), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    }
}
