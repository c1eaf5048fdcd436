//! Reading request bodies under a byte limit (413 when over, before anything else happens)
//! and a progress deadline (408 when the client stops sending), and [`TimedBody`], the
//! reusable wrapper that enforces the deadline on any body (passthrough streams through it).

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body, Frame, SizeHint};
use thiserror::Error;
use tokio::time::{Instant, Sleep};

use crate::http::BoxError;

/// The error a [`TimedBody`] yields when its body made no progress in time.
#[derive(Debug, Clone, Copy, Error)]
#[error("request body made no progress for {0:?}")]
pub struct BodyTimeout(pub Duration);

/// Whether `error` (or any error in its source chain, as hyper's client wraps body errors)
/// is a [`BodyTimeout`].
pub fn is_body_timeout(error: &(dyn StdError + 'static)) -> bool {
    crate::error::in_chain::<BodyTimeout>(error)
}

/// A body that fails with [`BodyTimeout`] when no frame arrives for `timeout` while it is
/// being read. The deadline starts at the first poll and restarts with every frame, so a slow
/// but steady upload passes and a stalled one is abandoned. Errors are boxed (`BoxError`),
/// so the wrapper can be handed to hyper's client as a request body.
pub struct TimedBody<B> {
    inner: B,
    timeout: Duration,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<B> TimedBody<B> {
    /// Wraps `inner` with a progress deadline of `timeout`.
    pub fn new(inner: B, timeout: Duration) -> TimedBody<B> {
        TimedBody {
            inner,
            timeout,
            deadline: None,
        }
    }
}

impl<B> Body for TimedBody<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(deadline) = &mut this.deadline {
                    deadline.as_mut().reset(Instant::now() + this.timeout);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let timeout = this.timeout;
                let deadline = this
                    .deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimeout(timeout))))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

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
    match Limited::new(TimedBody::new(body, timeout), limit)
        .collect()
        .await
    {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error)
            if error
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(StatusCode::PAYLOAD_TOO_LARGE)
        }
        Err(error) if is_body_timeout(error.as_ref()) => Err(StatusCode::REQUEST_TIMEOUT),
        Err(_) => Err(StatusCode::BAD_REQUEST),
    }
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
    use std::convert::Infallible;

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

    #[test]
    fn timeout_is_found_in_a_source_chain() {
        #[derive(Debug, Error)]
        #[error("wrapped")]
        struct Wrapper(#[source] BodyTimeout);
        assert!(is_body_timeout(&Wrapper(BodyTimeout(Duration::ZERO))));
        assert!(!is_body_timeout(&std::io::Error::other("x")));
    }
}
