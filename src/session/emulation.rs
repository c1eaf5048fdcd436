//! Registry of sessions reachable through bidirectional emulation (HTTP-stream, SSE): the
//! emulation session id from the connect reply → the channel that feeds the session's loop.
//!
//! Guarantee: frames for one session are handed over in the order their POSTs were read, and
//! a registration disappears when its guard drops, whatever ends the session. An idle
//! session's queue holds no frame storage: it is allocated on the first frame (a tokio mpsc
//! would allocate room for 32 frames up front, per session).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use thiserror::Error;
use tokio::sync::{Notify, Semaphore};

/// Frames an emulated session may have queued before POSTs wait.
pub const EMULATION_QUEUE_FRAMES: usize = 32;
/// How long a POST waits for room in a full session queue before giving up.
const DELIVER_TIMEOUT: Duration = Duration::from_secs(5);

/// Why an emulation frame was not delivered.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DeliverError {
    /// No live session with that id on this node.
    #[error("unknown session")]
    UnknownSession,
    /// The session did not take the frame in time.
    #[error("session busy")]
    Busy,
}

/// Why `try_deliver` did not hand a frame over.
#[derive(Debug, PartialEq, Eq)]
pub enum TryDeliverError {
    /// No live session with that id on this node.
    UnknownSession,
    /// The session's queue is full; the frame is given back.
    Full(Bytes),
}

/// Shared registry; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct EmulationRegistry {
    sessions: Arc<Mutex<HashMap<Box<str>, Arc<Queue>>>>,
}

/// One session's bounded frame queue: `room` holds a permit per free slot.
#[derive(Debug)]
struct Queue {
    frames: Mutex<VecDeque<Bytes>>,
    readable: Notify,
    room: Semaphore,
}

impl Queue {
    fn frames(&self) -> MutexGuard<'_, VecDeque<Bytes>> {
        crate::sync::lock(&self.frames)
    }
}

/// The receiving end of a session's queue; dropping it fails every waiting and later delivery.
#[derive(Debug)]
pub struct Commands {
    queue: Arc<Queue>,
}

impl Commands {
    /// The next frame, in delivery order (cancel-safe: a frame is taken only when returned).
    pub async fn recv(&mut self) -> Bytes {
        loop {
            let next = self.queue.frames().pop_front();
            if let Some(frame) = next {
                self.queue.room.add_permits(1);
                return frame;
            }
            self.queue.readable.notified().await;
        }
    }
}

impl Drop for Commands {
    fn drop(&mut self) {
        self.queue.room.close();
    }
}

/// Keeps a session registered; dropping it unregisters.
#[derive(Debug)]
pub struct Registration {
    registry: EmulationRegistry,
    id: Box<str>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

impl EmulationRegistry {
    fn lock(&self) -> MutexGuard<'_, HashMap<Box<str>, Arc<Queue>>> {
        crate::sync::lock(&self.sessions)
    }

    /// Registers a new emulation session id; returns the guard and the receiving end.
    pub fn register(&self, id: Box<str>) -> (Registration, Commands) {
        let queue = Arc::new(Queue {
            frames: Mutex::new(VecDeque::new()),
            readable: Notify::new(),
            room: Semaphore::new(EMULATION_QUEUE_FRAMES),
        });
        self.lock().insert(id.clone(), queue.clone());
        (
            Registration {
                registry: self.clone(),
                id,
            },
            Commands { queue },
        )
    }

    /// Hands one frame (the POST's inner data) to the session.
    pub async fn deliver(&self, id: &str, frame: Bytes) -> Result<(), DeliverError> {
        self.deliver_within(id, frame, DELIVER_TIMEOUT).await
    }

    /// Hands one frame to the session only if its queue has room now; never waits. A full
    /// queue gives the frame back.
    pub fn try_deliver(&self, id: &str, frame: Bytes) -> Result<(), TryDeliverError> {
        let queue = self
            .lock()
            .get(id)
            .cloned()
            .ok_or(TryDeliverError::UnknownSession)?;
        match queue.room.try_acquire() {
            Ok(permit) => {
                permit.forget();
                queue.frames().push_back(frame);
                queue.readable.notify_one();
                Ok(())
            }
            Err(tokio::sync::TryAcquireError::Closed) => Err(TryDeliverError::UnknownSession),
            Err(tokio::sync::TryAcquireError::NoPermits) => Err(TryDeliverError::Full(frame)),
        }
    }

    /// Hands one frame to the session, waiting at most `wait` for room in its queue.
    pub async fn deliver_within(
        &self,
        id: &str,
        frame: Bytes,
        wait: Duration,
    ) -> Result<(), DeliverError> {
        let queue = self
            .lock()
            .get(id)
            .cloned()
            .ok_or(DeliverError::UnknownSession)?;
        match tokio::time::timeout(wait, queue.room.acquire()).await {
            Ok(Ok(permit)) => {
                // The slot is given back by `Commands::recv` when the frame is taken.
                permit.forget();
                queue.frames().push_back(frame);
                queue.readable.notify_one();
                Ok(())
            }
            Ok(Err(_)) => Err(DeliverError::UnknownSession),
            Err(_) => Err(DeliverError::Busy),
        }
    }

    /// Number of registered sessions.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no session is registered.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn deliver_in_order_and_unregister_on_drop() {
        let registry = EmulationRegistry::default();
        let (guard, mut frames) = registry.register("s1".into());
        registry
            .deliver("s1", Bytes::from_static(b"1"))
            .await
            .unwrap();
        registry
            .deliver("s1", Bytes::from_static(b"2"))
            .await
            .unwrap();
        assert_eq!(frames.recv().await, Bytes::from_static(b"1"));
        assert_eq!(frames.recv().await, Bytes::from_static(b"2"));
        assert_eq!(
            registry.deliver("s2", Bytes::new()).await,
            Err(DeliverError::UnknownSession)
        );
        drop(guard);
        assert!(registry.is_empty());
        assert_eq!(
            registry.deliver("s1", Bytes::new()).await,
            Err(DeliverError::UnknownSession)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn full_queue_is_busy_and_a_taken_frame_makes_room() {
        let registry = EmulationRegistry::default();
        let (_guard, mut frames) = registry.register("s".into());
        for i in 0..EMULATION_QUEUE_FRAMES {
            registry
                .deliver("s", Bytes::from(i.to_string()))
                .await
                .unwrap();
        }
        assert_eq!(
            registry.deliver("s", Bytes::new()).await,
            Err(DeliverError::Busy)
        );
        assert_eq!(frames.recv().await, Bytes::from_static(b"0"));
        registry
            .deliver("s", Bytes::from_static(b"last"))
            .await
            .unwrap();
        for i in 1..EMULATION_QUEUE_FRAMES {
            assert_eq!(frames.recv().await, Bytes::from(i.to_string()));
        }
        assert_eq!(frames.recv().await, Bytes::from_static(b"last"));
    }

    #[tokio::test]
    async fn try_deliver_never_waits_and_keeps_order() {
        let registry = EmulationRegistry::default();
        assert_eq!(
            registry.try_deliver("s", Bytes::new()),
            Err(TryDeliverError::UnknownSession)
        );
        let (guard, mut frames) = registry.register("s".into());
        for i in 0..EMULATION_QUEUE_FRAMES {
            registry
                .try_deliver("s", Bytes::from(i.to_string()))
                .unwrap();
        }
        assert_eq!(
            registry.try_deliver("s", Bytes::from_static(b"x")),
            Err(TryDeliverError::Full(Bytes::from_static(b"x")))
        );
        for i in 0..EMULATION_QUEUE_FRAMES {
            assert_eq!(frames.recv().await, Bytes::from(i.to_string()));
        }
        drop(frames);
        assert_eq!(
            registry.try_deliver("s", Bytes::new()),
            Err(TryDeliverError::UnknownSession)
        );
        drop(guard);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_delivery_fails_when_the_session_ends() {
        let registry = EmulationRegistry::default();
        let (guard, frames) = registry.register("s".into());
        for _ in 0..EMULATION_QUEUE_FRAMES {
            registry.deliver("s", Bytes::new()).await.unwrap();
        }
        let waiting = tokio::spawn({
            let registry = registry.clone();
            async move { registry.deliver("s", Bytes::new()).await }
        });
        tokio::task::yield_now().await;
        drop(frames);
        drop(guard);
        assert_eq!(waiting.await.unwrap(), Err(DeliverError::UnknownSession));
    }
}
