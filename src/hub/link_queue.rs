//! The hub's outbound queue towards one sidecar, bounded in bytes (prost `encoded_len`).
//!
//! Guarantee: a full queue never costs the whole Link. A channel push that does not fit marks
//! that channel *lagging* on this Link (later pushes of it are dropped until it is repaired);
//! a session frame (reply, membership, disconnect) that does not fit marks that session
//! *stalled* (its later frames are dropped). Once the queue has drained to half its bound,
//! [`LinkQueue::take_repairs`] hands both sets to the hub, which unsubscribes the lagging
//! channels' sessions with 2500 and disconnects the stalled sessions with 3010. Both sets are
//! bounded by the channels and sessions present on the Link.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use prost::Message;
use tokio::sync::Notify;

use crate::linkproto::UpstreamFrame;

/// What became of a frame handed to the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    /// Queued for the sidecar.
    Sent,
    /// Dropped: its channel or session was already marked for repair.
    Skipped,
    /// Dropped for lack of room: its channel or session is now marked for repair.
    Overflowed,
    /// Dropped: the Link is closed.
    Closed,
}

/// Ring capacity, in frames, kept once the queue is empty again; above it the ring is freed.
const KEEP_FRAMES_CAPACITY: usize = 64;

/// Channels and sessions to repair once the queue has room again.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Repairs {
    /// Channels whose pushes were lost on this Link: unsubscribe their sessions (2500).
    pub channels: Vec<String>,
    /// Sessions whose frames were lost: disconnect them (3010).
    pub sessions: Vec<u64>,
}

#[derive(Debug, Default)]
struct Inner {
    frames: VecDeque<(UpstreamFrame, usize)>,
    bytes: usize,
    lagging: HashSet<String>,
    stalled: HashSet<u64>,
    closed: bool,
}

/// Byte-bounded frame queue of one Link.
#[derive(Debug)]
pub struct LinkQueue {
    inner: Mutex<Inner>,
    ready: Notify,
    max_bytes: usize,
    dead: AtomicBool,
    ended: Notify,
}

impl LinkQueue {
    /// An empty open queue holding at most `max_bytes` of encoded frames.
    pub fn new(max_bytes: usize) -> LinkQueue {
        LinkQueue {
            inner: Mutex::new(Inner::default()),
            ready: Notify::new(),
            max_bytes,
            dead: AtomicBool::new(false),
            ended: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update below is a single infallible step, so a poisoned guard is consistent.
        crate::sync::lock(&self.inner)
    }

    fn admit(&self, inner: &mut Inner, frame: UpstreamFrame) -> bool {
        let size = frame.encoded_len();
        if inner.bytes + size > self.max_bytes {
            return false;
        }
        inner.bytes += size;
        inner.frames.push_back((frame, size));
        true
    }

    /// Queues a push of `channel`, unless that channel is lagging on this Link.
    pub fn push_channel(&self, channel: &str, frame: UpstreamFrame) -> Queued {
        let mut inner = self.lock();
        if inner.closed {
            return Queued::Closed;
        }
        if inner.lagging.contains(channel) {
            return Queued::Skipped;
        }
        if self.admit(&mut inner, frame) {
            drop(inner);
            self.ready.notify_one();
            Queued::Sent
        } else {
            inner.lagging.insert(channel.to_owned());
            Queued::Overflowed
        }
    }

    /// Queues a frame about one session, unless that session is stalled.
    pub fn push_session(&self, session: u64, frame: UpstreamFrame) -> Queued {
        let mut inner = self.lock();
        if inner.closed {
            return Queued::Closed;
        }
        if inner.stalled.contains(&session) {
            return Queued::Skipped;
        }
        if self.admit(&mut inner, frame) {
            drop(inner);
            self.ready.notify_one();
            Queued::Sent
        } else {
            inner.stalled.insert(session);
            Queued::Overflowed
        }
    }

    /// Queues a Link-level frame (the welcome) ignoring the bound: it is sent once, first.
    pub fn push_control(&self, frame: UpstreamFrame) {
        let mut inner = self.lock();
        if inner.closed {
            return;
        }
        let size = frame.encoded_len();
        inner.bytes += size;
        inner.frames.push_back((frame, size));
        drop(inner);
        self.ready.notify_one();
    }

    /// Whether pushes of `channel` are currently dropped on this Link.
    pub fn is_lagging(&self, channel: &str) -> bool {
        self.lock().lagging.contains(channel)
    }

    /// Forgets a session that is gone (it needs no repair any more).
    pub fn forget_session(&self, session: u64) {
        self.lock().stalled.remove(&session);
    }

    /// Takes the pending repairs once the queue holds at most half its bound; empty otherwise.
    /// The lagging marks are cleared: the caller unsubscribes those channels' sessions.
    pub fn take_repairs(&self) -> Repairs {
        let mut inner = self.lock();
        if inner.closed
            || (inner.lagging.is_empty() && inner.stalled.is_empty())
            || inner.bytes > self.max_bytes / 2
        {
            return Repairs::default();
        }
        Repairs {
            channels: inner.lagging.drain().collect(),
            sessions: inner.stalled.drain().collect(),
        }
    }

    /// Next frame for the sidecar; `None` once the queue is closed.
    pub async fn pop(&self) -> Option<UpstreamFrame> {
        loop {
            let notified = self.ready.notified();
            {
                let mut inner = self.lock();
                if inner.closed {
                    return None;
                }
                if let Some((frame, size)) = inner.frames.pop_front() {
                    inner.bytes -= size;
                    if inner.frames.is_empty() && inner.frames.capacity() > KEEP_FRAMES_CAPACITY {
                        // A burst (thousands of connects at once) grew the ring: give it back.
                        inner.frames = VecDeque::new();
                    }
                    return Some(frame);
                }
            }
            notified.await;
        }
    }

    /// Bytes currently queued.
    pub fn queued_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Closes the queue for good: frames are dropped, `pop` ends, the Link counts as dead.
    pub fn close(&self) {
        self.dead.store(true, Ordering::Release);
        {
            let mut inner = self.lock();
            inner.closed = true;
            inner.frames.clear();
            inner.bytes = 0;
            inner.lagging.clear();
            inner.stalled.clear();
        }
        self.ready.notify_waiters();
        self.ready.notify_one();
        self.ended.notify_waiters();
    }

    /// Resolves once the queue is closed.
    pub async fn closed(&self) {
        let ended = self.ended.notified();
        if self.is_dead() {
            return;
        }
        ended.await;
    }

    /// Whether the Link was closed: its inbound frames must no longer be applied.
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linkproto::{ChannelPush, SessionReply, upstream_frame};
    use crate::protocol::client::{Publication, Push, Reply};
    use bytes::Bytes;

    fn push(channel: &str, size: usize) -> UpstreamFrame {
        UpstreamFrame {
            frame: Some(upstream_frame::Frame::Push(ChannelPush {
                channel: channel.to_owned(),
                push: Some(Push {
                    channel: channel.to_owned(),
                    r#pub: Some(Publication {
                        data: Bytes::from(vec![b'1'; size]),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            })),
        }
    }

    fn reply(session: u64) -> UpstreamFrame {
        UpstreamFrame {
            frame: Some(upstream_frame::Frame::Reply(SessionReply {
                session,
                reply: Some(Reply {
                    id: 1,
                    ..Default::default()
                }),
            })),
        }
    }

    #[tokio::test]
    async fn overflow_marks_the_channel_lagging_then_repair_once_room_returns() {
        let queue = LinkQueue::new(1000);
        assert_eq!(queue.push_channel("a", push("a", 600)), Queued::Sent);
        // No room: only channel b pays; the Link stays open.
        assert_eq!(queue.push_channel("b", push("b", 600)), Queued::Overflowed);
        assert!(queue.is_lagging("b"));
        // Later pushes of b are skipped even when they would fit; a still flows.
        assert_eq!(queue.push_channel("b", push("b", 10)), Queued::Skipped);
        assert_eq!(queue.push_channel("a", push("a", 10)), Queued::Sent);
        // Still more than half full: no repair yet.
        assert_eq!(queue.take_repairs(), Repairs::default());
        assert!(queue.pop().await.is_some());
        // Drained below half: the repair names b once, and b flows again afterwards.
        let repairs = queue.take_repairs();
        assert_eq!(repairs.channels, vec!["b".to_owned()]);
        assert!(repairs.sessions.is_empty());
        assert_eq!(queue.take_repairs(), Repairs::default());
        assert!(!queue.is_lagging("b"));
        assert_eq!(queue.push_channel("b", push("b", 10)), Queued::Sent);
        assert!(!queue.is_dead());
    }

    #[tokio::test]
    async fn a_reply_that_does_not_fit_stalls_only_its_session() {
        // Room for the push and a few bytes, never for a reply as well.
        let queue = LinkQueue::new(push("a", 900).encoded_len() + 3);
        assert_eq!(queue.push_channel("a", push("a", 900)), Queued::Sent);
        assert_eq!(queue.push_session(7, reply(7)), Queued::Overflowed);
        assert_eq!(queue.push_session(7, reply(7)), Queued::Skipped);
        assert!(!queue.is_lagging("a"));
        assert!(queue.pop().await.is_some());
        assert_eq!(queue.push_session(8, reply(8)), Queued::Sent);
        let repairs = queue.take_repairs();
        assert_eq!(repairs.sessions, vec![7]);
        assert!(queue.pop().await.is_some());
        // A forgotten session needs no repair.
        assert_eq!(queue.push_channel("a", push("a", 900)), Queued::Sent);
        assert_eq!(queue.push_session(9, reply(9)), Queued::Overflowed);
        queue.forget_session(9);
        assert!(queue.pop().await.is_some());
        assert_eq!(queue.take_repairs(), Repairs::default());
    }

    #[tokio::test]
    async fn a_burst_ring_is_freed_once_drained() {
        let queue = LinkQueue::new(usize::MAX);
        for id in 0..1000 {
            assert_eq!(queue.push_session(id, reply(id)), Queued::Sent);
        }
        assert!(queue.lock().frames.capacity() >= 1000);
        for _ in 0..1000 {
            assert!(queue.pop().await.is_some());
        }
        assert_eq!(queue.lock().frames.capacity(), 0);
        // Small queues keep their ring.
        queue.push_session(1, reply(1));
        queue.push_session(1, reply(1));
        assert!(queue.pop().await.is_some());
        assert!(queue.pop().await.is_some());
        assert!(queue.lock().frames.capacity() > 0);
    }

    #[tokio::test]
    async fn pop_waits_for_a_frame_and_ends_when_closed() {
        let queue = std::sync::Arc::new(LinkQueue::new(1000));
        let waiter = {
            let queue = queue.clone();
            tokio::spawn(async move { queue.pop().await.is_some() })
        };
        tokio::task::yield_now().await;
        queue.push_session(1, reply(1));
        assert!(waiter.await.unwrap());
        let waiter = {
            let queue = queue.clone();
            tokio::spawn(async move { queue.pop().await })
        };
        tokio::task::yield_now().await;
        queue.close();
        assert!(waiter.await.unwrap().is_none());
        assert!(queue.is_dead());
        assert_eq!(queue.push_session(1, reply(1)), Queued::Closed);
        assert_eq!(queue.queued_bytes(), 0);
    }
}
