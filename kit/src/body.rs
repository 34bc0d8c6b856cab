//! Reading a request body under a size limit and a time limit, as the one [`ApiError`] on
//! failure.

use std::future::Future as _;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use referral_schemas::{ApiError, ErrorKind};

/// How long a client may take to send its body once its headers arrived. Bodies are at most
/// 16 KiB: anything slower is a broken or hostile client holding a connection and a slot.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads the whole body, refusing it with 413 past `limit` bytes (checked against
/// `Content-Length` first, so an honest oversized request is refused before it is read)
/// and with 408 when it takes longer than [`BODY_READ_TIMEOUT`].
pub async fn read_limited<B>(
    headers: &http::HeaderMap,
    body: B,
    limit: usize,
) -> Result<Bytes, ApiError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    read_limited_within(headers, body, limit, BODY_READ_TIMEOUT).await
}

async fn read_limited_within<B>(
    headers: &http::HeaderMap,
    body: B,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, ApiError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let too_large = || {
        ApiError::new(
            ErrorKind::PayloadTooLarge,
            format!("the body must be at most {limit} bytes"),
        )
    };
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(too_large());
    }
    let mut collect = std::pin::pin!(Limited::new(body, limit).collect());
    // A small body usually came with the headers: take it without a timer, and set one
    // (a registration in tokio's timer wheel) only when the body is still on its way.
    let ready = std::future::poll_fn(|context| {
        std::task::Poll::Ready(match collect.as_mut().poll(context) {
            std::task::Poll::Ready(collected) => Some(collected),
            std::task::Poll::Pending => None,
        })
    })
    .await;
    let collected = match ready {
        Some(collected) => collected,
        None => tokio::time::timeout(timeout, collect).await.map_err(|_| {
            ApiError::new(
                ErrorKind::RequestTimeout,
                format!("the body did not arrive within {} ms", timeout.as_millis()),
            )
        })?,
    };
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(_) => Err(ApiError::new(
            ErrorKind::MalformedJson,
            "the body could not be read",
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::*;

    /// A body that sends one chunk and then never another, nor its end.
    struct StalledBody(Option<Bytes>);

    impl http_body::Body for StalledBody {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
            match self.0.take() {
                Some(chunk) => Poll::Ready(Some(Ok(http_body::Frame::data(chunk)))),
                None => Poll::Pending,
            }
        }

        fn is_end_stream(&self) -> bool {
            false
        }
    }

    #[tokio::test]
    async fn a_body_that_never_finishes_is_refused_with_408() {
        let body = StalledBody(Some(Bytes::from_static(b"{\"code\":")));
        let limit = Duration::from_millis(100);
        let error = read_limited_within(&http::HeaderMap::new(), body, 1024, limit)
            .await
            .unwrap_err();
        assert_eq!(error.kind, ErrorKind::RequestTimeout);
        assert_eq!(error.status(), http::StatusCode::REQUEST_TIMEOUT);
    }

    #[tokio::test]
    async fn an_oversized_body_is_refused_with_413() {
        let body = http_body_util::Full::new(Bytes::from(vec![b'x'; 2048]));
        let error = read_limited(&http::HeaderMap::new(), body, 1024)
            .await
            .unwrap_err();
        assert_eq!(error.kind, ErrorKind::PayloadTooLarge);
    }
}
