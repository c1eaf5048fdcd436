//! Bounded request and response bodies: [`TimedBody`], a wrapper that fails a body making no
//! progress for a while, and [`read_bounded`], the one whole-body read under a byte limit (and
//! optionally a progress deadline) whose typed [`ReadError`] each caller maps to its own answer
//! (413 / 408 / 400 on the edge, a hook or JWKS failure in the hub).

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
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

/// Why [`read_bounded`] gave no body.
#[derive(Debug, Error)]
pub enum ReadError {
    /// More than the limit arrived (counted while streaming).
    #[error("body larger than {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// No frame arrived for the progress timeout.
    #[error("body made no progress for {0:?}")]
    Stalled(Duration),
    /// The body itself failed (the peer reset, bad chunking...): whose fault it is depends on
    /// whose body it was, which only the caller knows.
    #[error("body read failed: {}", crate::error::Chain(.0.as_ref()))]
    Failed(BoxError),
}

/// Reads all of `body` if it holds at most `limit` bytes and, with a `progress_timeout`, never
/// stalls that long between frames.
pub async fn read_bounded<B>(
    body: B,
    limit: usize,
    progress_timeout: Option<Duration>,
) -> Result<Bytes, ReadError>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    let collected = match progress_timeout {
        Some(timeout) => Limited::new(TimedBody::new(body, timeout), limit)
            .collect()
            .await
            .map(|c| c.to_bytes()),
        None => Limited::new(body, limit)
            .collect()
            .await
            .map(|c| c.to_bytes()),
    };
    collected.map_err(|error| {
        if error.is::<LengthLimitError>() {
            ReadError::TooLarge { limit }
        } else if let Some(stalled) = crate::error::find_in_chain::<BodyTimeout>(error.as_ref()) {
            ReadError::Stalled(stalled.0)
        } else {
            ReadError::Failed(error)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    #[test]
    fn timeout_is_found_in_a_source_chain() {
        #[derive(Debug, Error)]
        #[error("wrapped")]
        struct Wrapper(#[source] BodyTimeout);
        assert!(is_body_timeout(&Wrapper(BodyTimeout(Duration::ZERO))));
        assert!(!is_body_timeout(&std::io::Error::other("x")));
    }

    #[tokio::test]
    async fn read_bounded_tells_too_large_from_failed() {
        let fits = read_bounded(Full::new(Bytes::from_static(b"abcd")), 4, None).await;
        assert_eq!(fits.unwrap(), Bytes::from_static(b"abcd"));
        let over = read_bounded(Full::new(Bytes::from_static(b"abcde")), 4, None).await;
        assert!(
            matches!(over, Err(ReadError::TooLarge { limit: 4 })),
            "{over:?}"
        );
        let failing = http_body_util::StreamBody::new(futures_util::stream::iter([Err::<
            Frame<Bytes>,
            std::io::Error,
        >(
            std::io::Error::other("reset"),
        )]));
        let failed = read_bounded(failing, 4, Some(Duration::from_secs(1))).await;
        assert!(
            matches!(&failed, Err(ReadError::Failed(e)) if e.to_string() == "reset"),
            "{failed:?}"
        );
    }
}
