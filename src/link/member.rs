//! What the Link needs from the things it serves, so it knows neither the session nor the hub:
//! a [`Member`] (a live session the registry delivers replies and pushes to, and ends) and a
//! [`Connector`] (an in-process upstream that opens a Link stream).
//!
//! Guarantee: a member is registered once, as one `Arc<dyn Member>` made when the session
//! opens; delivering a message costs one call through it and allocates nothing.

use bytes::Bytes;

use super::uplink::UplinkFrames;
use super::upstream::{ConnectError, Downstream};
use crate::protocol::client::Reply;
use crate::protocol::{Disconnect, Encoding};

/// What became of one message handed to a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Queued for the client.
    Queued,
    /// The member's bound was exceeded: it now ends (3008 slow).
    Overflow,
    /// The member had already ended; the message was dropped.
    Ended,
}

/// A live session as the Link's registry sees it. Every method returns at once (never waits
/// on the client), since the Link's owner task calls them.
pub trait Member: Send + Sync + 'static {
    /// Session id, unique on this Link.
    fn id(&self) -> u64;
    /// The client's encoding, fixed for the session's life.
    fn encoding(&self) -> Encoding;
    /// Client id sent up in `SessionOpen`.
    fn client_id(&self) -> &str;
    /// The connect command with id `connect_id` is going up the Link.
    fn mark_connecting(&self, connect_id: u32);
    /// Delivers the upstream's reply; false (nothing delivered) when it answers no command the
    /// member is waiting on.
    fn deliver_reply(&self, reply: Reply) -> bool;
    /// Delivers one encoded push (the same bytes every member of the encoding gets).
    fn deliver_push(&self, bytes: Bytes) -> Delivery;
    /// Ends the member with `disconnect`.
    fn end(&self, disconnect: Disconnect);
}

/// An upstream in this process (the embedded hub): opening a stream is a function call.
pub trait Connector: Send + Sync + 'static {
    /// Opens one Link stream whose request side is fed by `uplink`.
    fn open(&self, uplink: UplinkFrames) -> Result<Downstream, ConnectError>;
}

/// An upstream that is never reachable, for tests that build a Link only to measure or drive
/// what sits in front of it.
#[cfg(test)]
pub(crate) struct Unreachable;

#[cfg(test)]
impl Connector for Unreachable {
    fn open(&self, _uplink: UplinkFrames) -> Result<Downstream, ConnectError> {
        Err(ConnectError::Endpoint("unreachable (test)".to_owned()))
    }
}

/// A member for the Link's unit tests: records what it gets, bounded in bytes like an outbox.
#[cfg(test)]
pub(crate) mod fake {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    /// Keeps delivered bytes until more than `limit` are held (then ends, as 3008 would).
    pub(crate) struct FakeMember {
        pub(crate) id: u64,
        encoding: Encoding,
        limit: usize,
        received: Mutex<Vec<Bytes>>,
        ended: AtomicBool,
    }

    impl FakeMember {
        pub(crate) fn new(id: u64, encoding: Encoding, limit: usize) -> Self {
            FakeMember {
                id,
                encoding,
                limit,
                received: Mutex::new(Vec::new()),
                ended: AtomicBool::new(false),
            }
        }

        /// Takes what was delivered so far.
        pub(crate) fn take(&self) -> Vec<Bytes> {
            std::mem::take(&mut *self.received.lock().unwrap_or_else(|e| e.into_inner()))
        }

        pub(crate) fn is_ended(&self) -> bool {
            self.ended.load(Ordering::Acquire)
        }
    }

    impl Member for FakeMember {
        fn id(&self) -> u64 {
            self.id
        }
        fn encoding(&self) -> Encoding {
            self.encoding
        }
        fn client_id(&self) -> &str {
            "fake"
        }
        fn mark_connecting(&self, _connect_id: u32) {}
        fn deliver_reply(&self, _reply: Reply) -> bool {
            !self.is_ended()
        }
        fn deliver_push(&self, bytes: Bytes) -> Delivery {
            if self.is_ended() {
                return Delivery::Ended;
            }
            let mut received = self.received.lock().unwrap_or_else(|e| e.into_inner());
            let held: usize = received.iter().map(Bytes::len).sum();
            if held + bytes.len() > self.limit {
                received.clear();
                self.ended.store(true, Ordering::Release);
                return Delivery::Overflow;
            }
            received.push(bytes);
            Delivery::Queued
        }
        fn end(&self, _disconnect: Disconnect) {
            self.ended.store(true, Ordering::Release);
        }
    }
}
