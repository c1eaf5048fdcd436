//! Registry of sessions reachable through bidirectional emulation (HTTP-stream, SSE): the
//! emulation session id from the connect reply → the channel that feeds the session's loop.
//!
//! Guarantee: frames for one session are handed over in the order their POSTs were read, and
//! a registration disappears when its guard drops, whatever ends the session.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use thiserror::Error;
use tokio::sync::mpsc;

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

/// Shared registry; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct EmulationRegistry {
    sessions: Arc<Mutex<HashMap<Box<str>, mpsc::Sender<Bytes>>>>,
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
    fn lock(&self) -> MutexGuard<'_, HashMap<Box<str>, mpsc::Sender<Bytes>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new emulation session id; returns the guard and the receiving end.
    pub fn register(&self, id: Box<str>) -> (Registration, mpsc::Receiver<Bytes>) {
        let (sender, receiver) = mpsc::channel(EMULATION_QUEUE_FRAMES);
        self.lock().insert(id.clone(), sender);
        (
            Registration {
                registry: self.clone(),
                id,
            },
            receiver,
        )
    }

    /// Hands one frame (the POST's inner data) to the session.
    pub async fn deliver(&self, id: &str, frame: Bytes) -> Result<(), DeliverError> {
        let sender = self
            .lock()
            .get(id)
            .cloned()
            .ok_or(DeliverError::UnknownSession)?;
        match tokio::time::timeout(DELIVER_TIMEOUT, sender.send(frame)).await {
            Ok(Ok(())) => Ok(()),
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
        assert_eq!(frames.recv().await.unwrap(), Bytes::from_static(b"1"));
        assert_eq!(frames.recv().await.unwrap(), Bytes::from_static(b"2"));
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
}
