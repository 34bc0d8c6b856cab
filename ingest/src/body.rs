//! Reading a request body under a size limit, as the one [`ApiError`] on failure.

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use referral_schemas::{ApiError, ErrorKind};

/// Reads the whole body, refusing it with 413 past `limit` bytes (checked against
/// `Content-Length` first, so an honest oversized request is refused before it is read).
pub async fn read_limited<B>(
    headers: &http::HeaderMap,
    body: B,
    limit: usize,
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
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(_) => Err(ApiError::new(
            ErrorKind::MalformedJson,
            "the body could not be read",
        )),
    }
}
