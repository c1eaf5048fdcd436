//! Replicas behind a balancer with no affinity: with `engine.type: redis`, an `/emulation`
//! POST that names another node's session is carried through Redis to that node (a per-node
//! control channel, as Centrifugo's survey), which hands the commands to the session and
//! answers; the POST is answered only then. Works the same with the embedded hub and with an
//! external upstream: routing is the sidecar's job.
//!
//! Channels (`<prefix>` is `engine.redis.prefix`): `<prefix>.cluster.nodes` carries every
//! node's announcement (every `ANNOUNCE_INTERVAL`); `<prefix>.cluster.node.<id>` carries the
//! requests to node `<id>` and the answers to it.
//!
//! Guarantees: a routed POST waits at most `ROUTE_TIMEOUT` (then 500) and fails at once while
//! Redis is unreachable; at most `MAX_ROUTED_IN_FLIGHT` routed POSTs wait at once (then 503);
//! a node delivers requests in the order Redis hands them over, and at most
//! `MAX_WAITING_DELIVERIES` wait for room in full session queues (then "busy"); no lock is
//! held across an await.

pub mod nodes;
pub mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use thiserror::Error;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use crate::config::engine::RedisConfig;
pub use crate::engine::redis::ConnectError;
use crate::engine::redis::{RedisClients, Topology};
use crate::session::emulation::{EmulationRegistry, TryDeliverError};
use nodes::{ANNOUNCE_INTERVAL, KnownNodes};
pub use wire::Outcome;
use wire::{Control, MAX_ID_LEN};

/// Longest a routed POST waits for the owning node's answer (then 500).
pub const ROUTE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest the owning node waits for room in a full session queue before answering "busy"
/// (shorter than `ROUTE_TIMEOUT`, so the answer still arrives).
pub const ROUTED_DELIVER_TIMEOUT: Duration = Duration::from_secs(3);
/// Routed POSTs that may wait for answers at once on one node (then 503).
pub const MAX_ROUTED_IN_FLIGHT: usize = 4_096;
/// Requests from other nodes that may wait for room in full session queues at once.
pub const MAX_WAITING_DELIVERIES: usize = 1_024;
/// Answers queued for publishing; past it an answer is dropped (its POST times out).
const ANSWER_QUEUE: usize = 4_096;
/// Most answers published concurrently.
const ANSWER_BATCH: usize = 64;
/// Pause before retrying a failed subscribe.
const SUBSCRIBE_RETRY: Duration = Duration::from_millis(500);
/// Shortest gap between two announcements asked for by `hello`s (a burst of joining nodes
/// costs one announcement).
const HELLO_ANSWER_GAP: Duration = Duration::from_millis(200);

/// Why a routed POST got no answer from the owning node.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum RouteError {
    /// The node is not known (never announced, or silent for longer than the node TTL): 404.
    #[error("unknown node")]
    UnknownNode,
    /// Redis is unreachable or refused the publish: 500.
    #[error("engine unavailable")]
    Unavailable,
    /// No answer within `ROUTE_TIMEOUT`: 500.
    #[error("no answer from the owning node in time")]
    Timeout,
    /// Too many routed POSTs already wait on this node: 503.
    #[error("too many routed requests in flight")]
    Overloaded,
}

/// This node's end of the control channel.
pub struct Cluster {
    node: Arc<str>,
    prefix: String,
    nodes_channel: String,
    own_channel: String,
    /// PUBLISH's receiver count is exact only on a single server (not on Redis Cluster).
    exact_receivers: bool,
    /// Its own connections (from the engine's connect module), so the hub's pub/sub traffic
    /// never queues in front of control messages.
    redis: RedisClients,
    subscribed: AtomicBool,
    known: Mutex<KnownNodes>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Outcome>>>,
    next_id: AtomicU64,
    routed: Semaphore,
    waiting: Arc<Semaphore>,
    answers: mpsc::Sender<(Box<str>, Control)>,
    announce_now: Notify,
    hello: AtomicBool,
    emulation: EmulationRegistry,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.node)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Removes a routed request's pending entry however the POST ends (answer, timeout, client
/// gone).
struct PendingGuard<'a> {
    cluster: &'a Cluster,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.cluster.pending().remove(&self.id);
    }
}

impl Cluster {
    /// Builds the clients and starts connecting in the background (Redis may be down: the
    /// clients keep retrying, `is_ready` says false meanwhile). Needs a tokio runtime.
    pub fn start(
        redis: &RedisConfig,
        node: Arc<str>,
        emulation: EmulationRegistry,
    ) -> Result<Arc<Cluster>, ConnectError> {
        let (cluster, answer_queue) = Cluster::build(redis, node, emulation)?;
        // A reconnection event also fires for the first connection, which `open` only
        // started: listening now misses none.
        let reconnects = cluster.redis.subscriber.reconnect_rx();
        let messages = cluster.redis.subscriber.message_rx();
        tokio::spawn(cluster.clone().subscribe_loop(reconnects));
        tokio::spawn(cluster.clone().message_loop(messages));
        tokio::spawn(cluster.clone().announce_loop());
        tokio::spawn(cluster.clone().answer_loop(answer_queue));
        tracing::info!(node = %cluster.node, prefix = %cluster.prefix, "cluster: emulation routing through redis");
        Ok(cluster)
    }

    /// The router without its tasks, and the queue of answers to publish.
    #[allow(clippy::type_complexity)]
    fn build(
        redis: &RedisConfig,
        node: Arc<str>,
        emulation: EmulationRegistry,
    ) -> Result<(Arc<Cluster>, mpsc::Receiver<(Box<str>, Control)>), ConnectError> {
        let clients = RedisClients::open(redis)?;
        let (answers, answer_queue) = mpsc::channel(ANSWER_QUEUE);
        let cluster = Arc::new(Cluster {
            nodes_channel: format!("{}.cluster.nodes", redis.prefix),
            own_channel: format!("{}.cluster.node.{node}", redis.prefix),
            prefix: redis.prefix.clone(),
            exact_receivers: clients.topology == Topology::Single,
            node,
            redis: clients,
            subscribed: AtomicBool::new(false),
            known: Mutex::new(KnownNodes::default()),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            routed: Semaphore::new(MAX_ROUTED_IN_FLIGHT),
            waiting: Arc::new(Semaphore::new(MAX_WAITING_DELIVERIES)),
            answers,
            announce_now: Notify::new(),
            hello: AtomicBool::new(true),
            emulation,
        });
        Ok((cluster, answer_queue))
    }

    /// Whether both Redis connections are up and the control channels are subscribed.
    pub fn is_ready(&self) -> bool {
        self.redis.connected() && self.subscribed.load(Ordering::Acquire)
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.node
    }

    fn pending(&self) -> MutexGuard<'_, HashMap<u64, oneshot::Sender<Outcome>>> {
        crate::sync::lock(&self.pending)
    }

    fn known(&self) -> MutexGuard<'_, KnownNodes> {
        crate::sync::lock(&self.known)
    }

    fn channel_of(&self, node: &str) -> String {
        format!("{}.cluster.node.{node}", self.prefix)
    }

    /// Whether `node` announced itself recently.
    pub fn knows(&self, node: &str) -> bool {
        self.known().knows(node, Instant::now())
    }

    /// Sends an emulation POST's data to the node holding `session` and waits until that
    /// node has put it into the session's queue (or found no such session, or gave up).
    pub async fn route(
        &self,
        node: &str,
        session: &str,
        data: Bytes,
    ) -> Result<Outcome, RouteError> {
        if node.is_empty() || node.len() > MAX_ID_LEN || !self.knows(node) {
            return Err(RouteError::UnknownNode);
        }
        if session.is_empty() || session.len() > MAX_ID_LEN {
            // No node can hold such a session; Centrifugo answers 204.
            return Ok(Outcome::UnknownSession);
        }
        if !self.is_ready() {
            return Err(RouteError::Unavailable);
        }
        let Ok(_permit) = self.routed.try_acquire() else {
            return Err(RouteError::Overloaded);
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (sender, answer) = oneshot::channel();
        self.pending().insert(id, sender);
        let _guard = PendingGuard { cluster: self, id };
        let request = wire::encode(&Control::Emulate {
            id,
            from: self.node.as_ref().into(),
            session: session.into(),
            data,
        });
        let deadline = Instant::now() + ROUTE_TIMEOUT;
        let published = tokio::time::timeout_at(
            deadline,
            self.redis
                .commands
                .with_options(&self.redis.options)
                .publish::<i64, _, _>(self.channel_of(node), request),
        )
        .await;
        match published {
            Err(_) => return Err(RouteError::Timeout),
            Ok(Err(error)) => {
                tracing::debug!(%error, "cluster: publishing a routed emulation request failed");
                return Err(RouteError::Unavailable);
            }
            Ok(Ok(0)) if self.exact_receivers => return Err(RouteError::UnknownNode),
            Ok(Ok(_)) => {}
        }
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(_)) | Err(_) => Err(RouteError::Timeout),
        }
    }

    async fn subscribe_loop(
        self: Arc<Self>,
        mut reconnects: tokio::sync::broadcast::Receiver<fred::types::config::Server>,
    ) {
        use tokio::sync::broadcast::error::RecvError;
        let mut first = true;
        loop {
            if first {
                // The first connection may be up already; a failed attempt is retried below.
                first = false;
                let _ = self.redis.subscriber.wait_for_connect().await;
            } else {
                match reconnects.recv().await {
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return,
                }
            }
            self.subscribed.store(false, Ordering::Release);
            let channels = vec![self.nodes_channel.clone(), self.own_channel.clone()];
            loop {
                match self.redis.subscriber.subscribe(channels.clone()).await {
                    Ok(()) => break,
                    Err(error) => {
                        tracing::warn!(%error, "cluster: subscribing to the control channels failed; retrying");
                        tokio::time::sleep(SUBSCRIBE_RETRY).await;
                    }
                }
            }
            self.subscribed.store(true, Ordering::Release);
            tracing::info!("cluster: control channels subscribed");
            // Ask the others to announce themselves: after an outage they may have expired.
            self.hello.store(true, Ordering::Release);
            self.announce_now.notify_one();
        }
    }

    async fn message_loop(
        self: Arc<Self>,
        mut messages: tokio::sync::broadcast::Receiver<fred::types::Message>,
    ) {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            let message = match messages.recv().await {
                Ok(message) => message,
                Err(RecvError::Lagged(skipped)) => {
                    tracing::warn!(
                        skipped,
                        "cluster: control messages dropped (reader too slow)"
                    );
                    continue;
                }
                Err(RecvError::Closed) => return,
            };
            let Some(payload) = message.value.into_bytes() else {
                continue;
            };
            match wire::decode(payload) {
                Ok(control) => self.on_control(control),
                Err(error) => {
                    tracing::debug!(%error, channel = %&*message.channel, "cluster: ignoring a control message")
                }
            }
        }
    }

    fn on_control(self: &Arc<Self>, control: Control) {
        match control {
            Control::Announce { node, hello } => {
                if *node == *self.node {
                    return;
                }
                let new = self.known().see(&node, Instant::now());
                if new {
                    tracing::info!(%node, "cluster: node joined");
                }
                if hello {
                    self.announce_now.notify_one();
                }
            }
            Control::Emulate {
                id,
                from,
                session,
                data,
            } => self.on_emulate(id, from, &session, data),
            Control::Answer { id, outcome } => {
                let waiter = self.pending().remove(&id);
                if let Some(waiter) = waiter {
                    let _ = waiter.send(outcome);
                }
            }
        }
    }

    /// Hands a routed request to the session: at once when its queue has room (so requests
    /// keep the order Redis delivered them in), else in a bounded waiting task.
    fn on_emulate(self: &Arc<Self>, id: u64, from: Box<str>, session: &str, data: Bytes) {
        match self.emulation.try_deliver(session, data) {
            Ok(()) => self.answer(from, id, Outcome::Delivered),
            Err(TryDeliverError::UnknownSession) => self.answer(from, id, Outcome::UnknownSession),
            Err(TryDeliverError::Full(data)) => match self.waiting.clone().try_acquire_owned() {
                Ok(permit) => {
                    let cluster = self.clone();
                    let session: Box<str> = session.into();
                    tokio::spawn(async move {
                        let outcome = match cluster
                            .emulation
                            .deliver_within(&session, data, ROUTED_DELIVER_TIMEOUT)
                            .await
                        {
                            Ok(()) => Outcome::Delivered,
                            Err(crate::session::emulation::DeliverError::UnknownSession) => {
                                Outcome::UnknownSession
                            }
                            Err(crate::session::emulation::DeliverError::Busy) => Outcome::Busy,
                        };
                        drop(permit);
                        cluster.answer(from, id, outcome);
                    });
                }
                Err(_) => self.answer(from, id, Outcome::Busy),
            },
        }
    }

    fn answer(&self, to: Box<str>, id: u64, outcome: Outcome) {
        if self
            .answers
            .try_send((to, Control::Answer { id, outcome }))
            .is_err()
        {
            tracing::warn!("cluster: answer queue full; a routed emulation POST will time out");
        }
    }

    /// Publishes answers: whatever is queued goes out together (up to `ANSWER_BATCH` at once,
    /// pipelined on the connection), so one slow round trip does not hold the others back.
    async fn answer_loop(self: Arc<Self>, mut queue: mpsc::Receiver<(Box<str>, Control)>) {
        let mut batch = Vec::with_capacity(ANSWER_BATCH);
        while queue.recv_many(&mut batch, ANSWER_BATCH).await > 0 {
            let publishes = batch.drain(..).map(|(to, answer)| {
                let channel = self.channel_of(&to);
                let client = self.redis.commands.with_options(&self.redis.options);
                async move {
                    if let Err(error) = client
                        .publish::<i64, _, _>(channel, wire::encode(&answer))
                        .await
                    {
                        tracing::debug!(%error, "cluster: publishing an answer failed");
                    }
                }
            });
            futures_util::future::join_all(publishes).await;
        }
    }

    async fn announce_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(ANNOUNCE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.announce_now.notified() => {
                    tokio::time::sleep(HELLO_ANSWER_GAP).await;
                }
            }
            self.known().prune(Instant::now());
            if !self.is_ready() {
                continue;
            }
            let hello = self.hello.swap(false, Ordering::AcqRel);
            let message = wire::encode(&Control::Announce {
                node: self.node.as_ref().into(),
                hello,
            });
            match self
                .redis
                .commands
                .with_options(&self.redis.options)
                .publish::<i64, _, _>(self.nodes_channel.clone(), message)
                .await
            {
                Ok(_) => {}
                Err(error) => {
                    if hello {
                        self.hello.store(true, Ordering::Release);
                    }
                    tracing::debug!(%error, "cluster: announcing this node failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A router whose Redis is unreachable (nothing listens on port 1): routing decisions and
    /// the owner side can be driven without Redis.
    fn offline(
        registry: &EmulationRegistry,
    ) -> (Arc<Cluster>, mpsc::Receiver<(Box<str>, Control)>) {
        let redis = RedisConfig {
            address: "redis://127.0.0.1:1".into(),
            ..RedisConfig::default()
        };
        Cluster::build(&redis, Arc::from("self"), registry.clone()).expect("config builds")
    }

    fn emulate(id: u64, session: &str, data: &'static [u8]) -> Control {
        Control::Emulate {
            id,
            from: "origin".into(),
            session: session.into(),
            data: Bytes::from_static(data),
        }
    }

    async fn answer(queue: &mut mpsc::Receiver<(Box<str>, Control)>) -> (Box<str>, u64, Outcome) {
        match queue.recv().await {
            Some((to, Control::Answer { id, outcome })) => (to, id, outcome),
            other => panic!("expected an answer, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn routing_refuses_fast_without_redis_or_a_known_node() {
        let registry = EmulationRegistry::default();
        let (cluster, _answers) = offline(&registry);
        assert!(!cluster.is_ready());
        let route = |node: &'static str, session: &'static str| {
            let cluster = cluster.clone();
            async move { cluster.route(node, session, Bytes::new()).await }
        };
        assert_eq!(route("other", "s").await, Err(RouteError::UnknownNode));
        assert_eq!(route("", "s").await, Err(RouteError::UnknownNode));
        cluster.on_control(Control::Announce {
            node: "other".into(),
            hello: false,
        });
        assert!(cluster.knows("other"));
        // Known node, but Redis is down: 500 at once, nothing left pending.
        assert_eq!(route("other", "s").await, Err(RouteError::Unavailable));
        assert!(cluster.pending().is_empty());
        // No node can hold an empty session: 204 without a round trip.
        assert_eq!(route("other", "").await, Ok(Outcome::UnknownSession));
        // Its own announcements are not recorded.
        cluster.on_control(Control::Announce {
            node: "self".into(),
            hello: true,
        });
        assert!(!cluster.knows("self"));
    }

    #[tokio::test]
    async fn routed_requests_reach_the_session_in_order_and_are_answered() {
        let registry = EmulationRegistry::default();
        let (_guard, mut commands) = registry.register("s".into());
        let (cluster, mut answers) = offline(&registry);
        cluster.on_control(emulate(1, "s", b"first"));
        cluster.on_control(emulate(2, "s", b"second"));
        cluster.on_control(emulate(3, "gone", b"x"));
        assert_eq!(
            answer(&mut answers).await,
            ("origin".into(), 1, Outcome::Delivered)
        );
        assert_eq!(
            answer(&mut answers).await,
            ("origin".into(), 2, Outcome::Delivered)
        );
        assert_eq!(
            answer(&mut answers).await,
            ("origin".into(), 3, Outcome::UnknownSession)
        );
        assert_eq!(commands.recv().await, Bytes::from_static(b"first"));
        assert_eq!(commands.recv().await, Bytes::from_static(b"second"));
        // An answer for a request nobody waits for is dropped quietly.
        cluster.on_control(Control::Answer {
            id: 99,
            outcome: Outcome::Delivered,
        });
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_session_is_answered_busy_and_waiting_deliveries_are_bounded() {
        let registry = EmulationRegistry::default();
        let (_guard, mut commands) = registry.register("s".into());
        let (cluster, mut answers) = offline(&registry);
        for id in 0..crate::session::emulation::EMULATION_QUEUE_FRAMES as u64 {
            cluster.on_control(emulate(id, "s", b"fill"));
            assert_eq!(answer(&mut answers).await.2, Outcome::Delivered);
        }
        // Full queue: the request waits (bounded) and is answered busy when time runs out.
        cluster.on_control(emulate(100, "s", b"late"));
        let (_, id, outcome) = answer(&mut answers).await;
        assert_eq!((id, outcome), (100, Outcome::Busy));
        // All waiting slots taken: the next one is answered busy at once.
        let hold = cluster
            .waiting
            .clone()
            .acquire_many_owned(MAX_WAITING_DELIVERIES as u32)
            .await
            .unwrap();
        cluster.on_control(emulate(101, "s", b"refused"));
        let (_, id, outcome) = answer(&mut answers).await;
        assert_eq!((id, outcome), (101, Outcome::Busy));
        drop(hold);
        // A waiting request is delivered as soon as the session takes a frame.
        cluster.on_control(emulate(102, "s", b"waits"));
        assert_eq!(commands.recv().await, Bytes::from_static(b"fill"));
        let (_, id, outcome) = answer(&mut answers).await;
        assert_eq!((id, outcome), (102, Outcome::Delivered));
    }
}
