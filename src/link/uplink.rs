//! The queue from sessions to the Link stream, bounded in frames and in bytes.
//!
//! Guarantee: at most `frames` frames and about `bytes` encoded bytes wait for the stream at
//! once (a single frame larger than the byte bound still passes, alone); a send either succeeds
//! at once, waits at most its deadline, or fails. A frame's bytes are released when the stream
//! takes it.

use std::sync::Arc;
use std::time::Duration;

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use prost::Message;
use thiserror::Error;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, mpsc};
use tokio::time::{Instant, timeout_at};

use crate::linkproto::SidecarFrame;

/// Why a frame was not queued.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum UplinkError {
    /// The stream is gone.
    #[error("the link stream is closed")]
    Closed,
    /// No room before the deadline.
    #[error("the link stream did not take the frame in time")]
    Timeout,
}

/// A frame with the byte budget it holds until the stream takes it.
struct Queued {
    frame: SidecarFrame,
    _bytes: Option<OwnedSemaphorePermit>,
}

/// The sending side; clones share the bounds.
#[derive(Debug, Clone)]
pub struct UplinkSender {
    frames: mpsc::Sender<Queued>,
    bytes: Arc<Semaphore>,
    byte_limit: u32,
}

impl std::fmt::Debug for Queued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queued").finish_non_exhaustive()
    }
}

/// The frames in order, as the stream consumes them; each frame's bytes are released as it
/// is taken.
#[derive(Debug)]
pub struct UplinkFrames {
    receiver: mpsc::Receiver<Queued>,
}

impl Stream for UplinkFrames {
    type Item = SidecarFrame;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<SidecarFrame>> {
        self.receiver
            .poll_recv(cx)
            .map(|queued| queued.map(|queued| queued.frame))
    }
}

/// A queue of at most `frames` frames and `bytes` bytes.
pub fn channel(frames: usize, bytes: u32) -> (UplinkSender, UplinkFrames) {
    let (sender, receiver) = mpsc::channel(frames);
    let stream = UplinkFrames { receiver };
    (
        UplinkSender {
            frames: sender,
            bytes: Arc::new(Semaphore::new(bytes as usize)),
            byte_limit: bytes.max(1),
        },
        stream,
    )
}

impl UplinkSender {
    fn cost(&self, frame: &SidecarFrame) -> u32 {
        u32::try_from(frame.encoded_len())
            .unwrap_or(u32::MAX)
            .clamp(1, self.byte_limit)
    }

    /// Queues `frame` if there is room now; gives it back otherwise (boxed: a refusal is the
    /// rare path, and the frame is large).
    pub fn try_send(&self, frame: SidecarFrame) -> Result<(), Box<(UplinkError, SidecarFrame)>> {
        let permit = match self.bytes.clone().try_acquire_many_owned(self.cost(&frame)) {
            Ok(permit) => permit,
            Err(TryAcquireError::NoPermits) => return Err(Box::new((UplinkError::Timeout, frame))),
            Err(TryAcquireError::Closed) => return Err(Box::new((UplinkError::Closed, frame))),
        };
        self.frames
            .try_send(Queued {
                frame,
                _bytes: Some(permit),
            })
            .map_err(|error| match error {
                TrySendError::Full(queued) => Box::new((UplinkError::Timeout, queued.frame)),
                TrySendError::Closed(queued) => Box::new((UplinkError::Closed, queued.frame)),
            })
    }

    /// Queues `frame`, at once when there is room (no timer is armed), else waiting at most
    /// `limit`.
    pub async fn send(&self, frame: SidecarFrame, limit: Duration) -> Result<(), UplinkError> {
        let frame = match self.try_send(frame) {
            Ok(()) => return Ok(()),
            Err(refused) => match *refused {
                (UplinkError::Closed, _) => return Err(UplinkError::Closed),
                (UplinkError::Timeout, frame) => frame,
            },
        };
        let deadline = Instant::now() + limit;
        let cost = self.cost(&frame);
        let permit = timeout_at(deadline, self.bytes.clone().acquire_many_owned(cost))
            .await
            .map_err(|_| UplinkError::Timeout)?
            .map_err(|_| UplinkError::Closed)?;
        let queued = Queued {
            frame,
            _bytes: Some(permit),
        };
        timeout_at(deadline, self.frames.send(queued))
            .await
            .map_err(|_| UplinkError::Timeout)?
            .map_err(|_| UplinkError::Closed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linkproto::{SessionClose, sidecar_frame};
    use futures_util::StreamExt;

    fn frame(reason_bytes: usize) -> SidecarFrame {
        SidecarFrame {
            frame: Some(sidecar_frame::Frame::Close(SessionClose {
                session: 1,
                code: 3000,
                reason: "x".repeat(reason_bytes),
            })),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_bound_the_queue_and_are_released_when_taken() {
        let (sender, mut frames) = channel(100, 1000);
        sender.try_send(frame(600)).unwrap();
        // 600 + 600 bytes is over the bound: refused now, and a bounded wait times out.
        assert!(matches!(
            sender.try_send(frame(600)).map_err(|refused| refused.0),
            Err(UplinkError::Timeout)
        ));
        assert_eq!(
            sender.send(frame(600), Duration::from_secs(1)).await,
            Err(UplinkError::Timeout)
        );
        // Once the stream takes the first frame, its bytes are free again.
        assert!(frames.next().await.is_some());
        sender.try_send(frame(600)).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_frame_larger_than_the_bound_passes_alone() {
        let (sender, mut frames) = channel(100, 100);
        sender.try_send(frame(5000)).unwrap();
        assert!(sender.try_send(frame(1)).is_err());
        assert!(frames.next().await.is_some());
        sender.try_send(frame(1)).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn frame_count_bounds_too_and_closed_is_reported() {
        let (sender, frames) = channel(1, 1 << 20);
        sender.try_send(frame(1)).unwrap();
        assert_eq!(
            sender.send(frame(1), Duration::from_millis(10)).await,
            Err(UplinkError::Timeout)
        );
        drop(frames);
        assert_eq!(
            sender.send(frame(1), Duration::from_millis(10)).await,
            Err(UplinkError::Closed)
        );
    }
}
