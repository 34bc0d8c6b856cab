//! The benchmark's physical baseline: the least a hyper 1.x server can do for a click POST
//! (read the body, answer 201 with a small JSON body), on the same machine in the same run.
//! The edge's throughput is reported as a ratio to this.
//!
//! `cargo run --release -p referral-ingest --example baseline_server -- 127.0.0.1:18090`

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

const ANSWER: &[u8] =
    br#"{"id":"attr_01JQ3V8W6Y7Z8A9B0C1D2E3F4G","type":"click","status":"pending"}"#;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18090".into());
    let listener = tokio::net::TcpListener::bind(&address).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(|request: Request<hyper::body::Incoming>| async move {
                    let _body = request.into_body().collect().await;
                    let mut response = Response::new(Full::new(Bytes::from_static(ANSWER)));
                    *response.status_mut() = StatusCode::CREATED;
                    Ok::<_, Infallible>(response)
                });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
