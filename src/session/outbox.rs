//! A session's bounded outbound queue of encoded messages.
//!
//! Guarantee: pushing never blocks and never waits on the client. When the queued bytes
//! would exceed the bound, the queue is dropped and the session ends with 3008 slow; the
//! producer (usually the Link router) keeps flowing. An idle outbox allocates nothing.
//! The writer is woken once per burst (when the queue stops being empty, and when the
//! session ends), not once per message; it drains until [`Drain::Idle`] before it waits
//! again.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::Notify;

use crate::protocol::Disconnect;

/// Most messages written to the client in one transport frame (as Centrifugo does).
pub const MAX_MESSAGES_PER_FRAME: usize = 16;

/// Queue slots an emptied outbox keeps (16 × 32 bytes at most); bigger ones are released.
const KEPT_QUEUE_CAPACITY: usize = 16;

/// Result of [`Outbox::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// Queued.
    Queued,
    /// The bound was exceeded; the session now ends with 3008 slow.
    Overflow,
    /// The session had already ended; the message was dropped.
    Ended,
}

/// What the writer should do next.
#[derive(Debug)]
pub enum Drain {
    /// Write these messages (at most [`MAX_MESSAGES_PER_FRAME`]) as one frame.
    Messages(Vec<Bytes>),
    /// Nothing queued; the session goes on.
    Idle,
    /// Everything queued was taken; close with this disconnect.
    End(Disconnect),
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Bytes>,
    bytes: usize,
    end: Option<Disconnect>,
}

/// Bounded, byte-counted queue between producers (Link router, session) and one writer.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    notify: Notify,
    limit: usize,
}

impl Outbox {
    /// An empty outbox bounded to `limit` queued bytes.
    pub fn new(limit: usize) -> Outbox {
        Outbox {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            limit,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere while holding it; the queue itself
        // is still consistent (every mutation is a single push/pop).
        crate::sync::lock(&self.state)
    }

    /// Queues one encoded message.
    pub fn push(&self, message: Bytes) -> PushOutcome {
        let mut state = self.lock();
        if state.end.is_some() {
            return PushOutcome::Ended;
        }
        if state.bytes + message.len() > self.limit {
            state.queue = VecDeque::new();
            state.bytes = 0;
            state.end = Some(Disconnect::SLOW);
            drop(state);
            self.notify.notify_one();
            return PushOutcome::Overflow;
        }
        // One wake-up per burst: a queue that already held messages has a wake-up pending
        // (or a writer still draining, which takes everything before it reports idle).
        let first = state.queue.is_empty();
        state.bytes += message.len();
        state.queue.push_back(message);
        drop(state);
        if first {
            self.notify.notify_one();
        }
        PushOutcome::Queued
    }

    /// Ends the session after what is already queued; the first end wins. Returns whether
    /// this call set it.
    pub fn end(&self, disconnect: Disconnect) -> bool {
        let mut state = self.lock();
        if state.end.is_some() {
            return false;
        }
        state.end = Some(disconnect);
        drop(state);
        self.notify.notify_one();
        true
    }

    /// Whether the session has ended (no more messages are accepted).
    pub fn is_ended(&self) -> bool {
        self.lock().end.is_some()
    }

    /// Takes the next batch, or the end once the queue is empty.
    pub fn drain(&self) -> Drain {
        let mut state = self.lock();
        if state.queue.is_empty() {
            if state.queue.capacity() > KEPT_QUEUE_CAPACITY {
                // Give the memory of a burst back; a small queue is kept so that steady
                // traffic does not allocate per message.
                state.queue = VecDeque::new();
            }
            return match &state.end {
                Some(end) => Drain::End(end.clone()),
                None => Drain::Idle,
            };
        }
        let count = state.queue.len().min(MAX_MESSAGES_PER_FRAME);
        let batch: Vec<Bytes> = state.queue.drain(..count).collect();
        state.bytes -= batch.iter().map(Bytes::len).sum::<usize>();
        Drain::Messages(batch)
    }

    /// Makes the next [`Outbox::changed`] return at once (the writer has more to do).
    pub fn wake(&self) {
        self.notify.notify_one();
    }

    /// Waits until the queue stopped being empty or the session ended since the last wait.
    /// The writer must drain until [`Drain::Idle`] (or [`Outbox::wake`] itself) before it
    /// waits again: messages pushed behind others do not wake it.
    pub async fn changed(&self) {
        self.notify.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_then_end() {
        let outbox = Outbox::new(1024);
        for i in 0..20u8 {
            assert_eq!(outbox.push(Bytes::from(vec![i])), PushOutcome::Queued);
        }
        assert!(outbox.end(Disconnect::SHUTDOWN));
        assert!(!outbox.end(Disconnect::BAD_REQUEST));
        assert_eq!(outbox.push(Bytes::from_static(b"x")), PushOutcome::Ended);
        match outbox.drain() {
            Drain::Messages(batch) => assert_eq!(batch.len(), MAX_MESSAGES_PER_FRAME),
            other => panic!("{other:?}"),
        }
        match outbox.drain() {
            Drain::Messages(batch) => assert_eq!(batch.len(), 4),
            other => panic!("{other:?}"),
        }
        assert!(matches!(outbox.drain(), Drain::End(d) if d == Disconnect::SHUTDOWN));
    }

    #[test]
    fn overflow_drops_queue_and_ends_slow() {
        let outbox = Outbox::new(10);
        assert_eq!(
            outbox.push(Bytes::from_static(b"123456")),
            PushOutcome::Queued
        );
        assert_eq!(
            outbox.push(Bytes::from_static(b"123456")),
            PushOutcome::Overflow
        );
        assert!(matches!(outbox.drain(), Drain::End(d) if d == Disconnect::SLOW));
    }

    fn woken(outbox: &Outbox) -> bool {
        use futures_util::FutureExt;
        outbox.changed().now_or_never().is_some()
    }

    #[test]
    fn one_wake_per_burst() {
        let outbox = Outbox::new(1024);
        assert!(!woken(&outbox));
        outbox.push(Bytes::from_static(b"a"));
        outbox.push(Bytes::from_static(b"b"));
        assert!(woken(&outbox), "the first message wakes the writer");
        outbox.push(Bytes::from_static(b"c"));
        assert!(
            !woken(&outbox),
            "messages behind others do not wake it again"
        );
        match outbox.drain() {
            Drain::Messages(batch) => assert_eq!(batch.len(), 3),
            other => panic!("{other:?}"),
        }
        // Drained but not yet seen idle: a push into the empty queue wakes again.
        outbox.push(Bytes::from_static(b"d"));
        assert!(woken(&outbox));
        while let Drain::Messages(_) = outbox.drain() {}
        assert!(!woken(&outbox));
        assert!(outbox.end(Disconnect::SHUTDOWN));
        assert!(woken(&outbox), "the end always wakes");
    }

    #[test]
    fn overflow_wakes_a_writer_with_a_full_queue() {
        let outbox = Outbox::new(4);
        outbox.push(Bytes::from_static(b"ab"));
        assert!(woken(&outbox));
        assert_eq!(
            outbox.push(Bytes::from_static(b"cde")),
            PushOutcome::Overflow
        );
        assert!(woken(&outbox));
        assert!(matches!(outbox.drain(), Drain::End(d) if d == Disconnect::SLOW));
    }

    #[test]
    fn idle_outbox_releases_memory() {
        let outbox = Outbox::new(1 << 20);
        for _ in 0..100 {
            outbox.push(Bytes::from_static(b"x"));
        }
        while let Drain::Messages(_) = outbox.drain() {}
        assert!(matches!(outbox.drain(), Drain::Idle));
        assert_eq!(outbox.lock().queue.capacity(), 0);
        outbox.push(Bytes::from_static(b"x"));
        while let Drain::Messages(_) = outbox.drain() {}
        assert!(matches!(outbox.drain(), Drain::Idle));
        assert!(outbox.lock().queue.capacity() <= KEPT_QUEUE_CAPACITY);
    }
}
