//! Reading request bodies on the edge under a byte limit (413 when over, before anything else
//! happens) and a progress deadline (408 when the client stops sending): the edge's mapping of
//! [`crate::body::read_bounded`]'s typed error. `TimedBody` (the progress deadline on any
//! body, passthrough streams through it) lives in [`crate::body`].

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode, header};
use hyper::body::Body;

use crate::body::{ReadError, read_bounded};
use crate::http::BoxError;

/// Reads the whole body if it fits in `limit` bytes and never stalls for `timeout`: 413 when
/// it is (or is declared) larger, counted while streaming, whatever `Content-Length` says;
/// 408 when it stalls; 400 if reading fails otherwise.
pub async fn read_limited<B>(
    body: B,
    headers: &HeaderMap,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, StatusCode>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(StatusCode::PAYLOAD_TOO_LARGE);
    }
    read_bounded(body, limit, Some(timeout))
        .await
        .map_err(|error| match error {
            ReadError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ReadError::Stalled(_) => StatusCode::REQUEST_TIMEOUT,
            // The client's own body failed.
            ReadError::Failed(_) => StatusCode::BAD_REQUEST,
        })
}

/// Whether the request asks for Protobuf: Content-Type exactly `application/octet-stream`
/// (no parameters), as centrifuge-js sends it.
pub fn is_protobuf(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes()) == Some(b"application/octet-stream")
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    use std::convert::Infallible;
    use std::pin::Pin;

    type Chunks = StreamBody<
        Pin<Box<dyn futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send>>,
    >;

    fn stalling_after(first: &'static [u8]) -> Chunks {
        let chunks =
            stream::iter([Ok(Frame::data(Bytes::from_static(first)))]).chain(stream::pending());
        StreamBody::new(Box::pin(chunks))
    }

    use futures_util::StreamExt as _;

    #[tokio::test(start_paused = true)]
    async fn stalled_body_times_out_with_408() {
        let result = read_limited(
            stalling_after(b"abc"),
            &HeaderMap::new(),
            1024,
            Duration::from_secs(30),
        )
        .await;
        assert_eq!(result, Err(StatusCode::REQUEST_TIMEOUT));
    }

    #[tokio::test(start_paused = true)]
    async fn steady_body_passes_and_limit_is_counted_while_streaming() {
        let chunks = stream::iter((0..5).map(|_| Ok(Frame::data(Bytes::from_static(b"xx"))))).then(
            |chunk| async move {
                tokio::time::sleep(Duration::from_secs(20)).await;
                chunk
            },
        );
        let body: Chunks = StreamBody::new(Box::pin(chunks));
        let result = read_limited(body, &HeaderMap::new(), 1024, Duration::from_secs(30)).await;
        assert_eq!(result.as_deref(), Ok(&b"xxxxxxxxxx"[..]));
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, "1".parse().unwrap());
        let result = read_limited(
            stalling_after(b"abcdef"),
            &headers,
            4,
            Duration::from_secs(30),
        )
        .await;
        assert_eq!(result, Err(StatusCode::PAYLOAD_TOO_LARGE));
    }
}
