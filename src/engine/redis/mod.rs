//! The Redis engine: the hub's channel log (offsets, epochs, history), pub/sub fan-out between
//! replicas and presence, kept in Redis.
//!
//! - [`connect`]: opening the clients from `engine.redis`;
//! - [`scripts`]: the Lua scripts (publish, position + history, presence);
//! - [`wire`]: key names (hash-tagged per channel) and the pub/sub envelope.
//!
//! Guarantees: every command is sent with fail-fast options bounded by `io_timeout`, so a
//! Redis outage answers errors instead of hanging; the set of subscribed pub/sub channels
//! changes under one async lock, so a SUBSCRIBE and an UNSUBSCRIBE of one channel never
//! cross on the wire.

pub mod connect;
pub mod scripts;
pub mod wire;

use std::collections::HashSet;
use std::sync::Mutex;

use crate::sync::lock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use fred::interfaces::{ClientLike, KeysInterface, LuaInterface, PubsubInterface};
use fred::prelude::Value;
use prost::Message as _;

pub use connect::{ConnectError, RedisClients, Topology};
pub use wire::{Envelope, Keys};

use crate::config::engine::RedisConfig;
use crate::protocol::ErrorCode;
use crate::protocol::client::{ClientInfo, Publication};

/// Lifetime of a channel's epoch and offset counter after its last publication.
pub const META_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Pub/sub channels subscribed or unsubscribed per command.
const SUBSCRIBE_BATCH: usize = 512;

/// Why an engine operation failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Redis refused or did not answer in time (the client gets error 100).
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    /// The connection is down: refused at once instead of waiting for a reconnect.
    #[error("redis: not connected")]
    Disconnected,
    /// Redis answered something this engine did not write.
    #[error("redis: unexpected reply: {0}")]
    Reply(&'static str),
}

impl From<EngineError> for ErrorCode {
    fn from(_: EngineError) -> ErrorCode {
        ErrorCode::Internal
    }
}

/// Counters of the engine (exported as `sidewire_engine_*`).
#[derive(Debug, Default)]
pub struct EngineCounters {
    /// Commands sent to Redis.
    pub commands: AtomicU64,
    /// Commands that failed (refused, timed out, disconnected).
    pub errors: AtomicU64,
    /// Sum of command latencies, microseconds (with `commands`, the mean).
    pub latency_micros: AtomicU64,
    /// Pub/sub messages received.
    pub messages_in: AtomicU64,
    /// Pub/sub resynchronisations (reconnects, lagging listener).
    pub resyncs: AtomicU64,
}

/// A channel's position and, when asked, its kept publications (oldest first, unless read
/// newest first).
#[derive(Debug, Clone, Default)]
pub struct StreamState {
    /// Offset of the last publication.
    pub top: u64,
    /// Stream epoch.
    pub epoch: String,
    /// Kept publications with their offsets set.
    pub publications: Vec<Publication>,
}

/// What history to read with the position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryRead {
    /// Position only.
    None,
    /// Everything kept, oldest first.
    All,
    /// The newest `n`, newest first.
    Newest(usize),
    /// The oldest `n`, oldest first.
    Oldest(usize),
}

/// The Redis engine shared by the hub's tasks.
pub struct RedisEngine {
    clients: RedisClients,
    keys: Keys,
    presence_ttl: Duration,
    /// Pub/sub channels (sidewire channel names) this node is subscribed to.
    subscribed: Mutex<HashSet<String>>,
    /// Serialises SUBSCRIBE / UNSUBSCRIBE.
    changing: tokio::sync::Mutex<()>,
    /// True while the subscriptions are being restored after a reconnect.
    resubscribing: AtomicBool,
    /// True once the control channel and every channel are subscribed on the current
    /// pub/sub connection (readiness needs it).
    listening: AtomicBool,
    counters: EngineCounters,
}

impl std::fmt::Debug for RedisEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisEngine")
            .field("clients", &self.clients)
            .finish()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn new_epoch() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

/// A publication's idempotency key and how long its result is kept: a repeat within the TTL
/// returns the first result without publishing (Centrifugo's `idempotency_key`).
#[derive(Debug, Clone, Copy)]
pub struct Idempotency<'a> {
    /// The key the server API call carried.
    pub key: &'a str,
    /// How long the first result answers repeats.
    pub ttl: Duration,
}

impl RedisEngine {
    /// The engine over freshly opened clients (connecting in the background).
    pub fn open(redis: &RedisConfig) -> Result<RedisEngine, ConnectError> {
        let clients = RedisClients::open(redis)?;
        Ok(RedisEngine::with_clients(clients, redis))
    }

    /// The engine over given clients.
    pub fn with_clients(clients: RedisClients, redis: &RedisConfig) -> RedisEngine {
        RedisEngine {
            keys: Keys::new(&redis.prefix),
            clients,
            presence_ttl: *redis.presence_ttl,
            subscribed: Mutex::new(HashSet::new()),
            changing: tokio::sync::Mutex::new(()),
            resubscribing: AtomicBool::new(false),
            listening: AtomicBool::new(false),
            counters: EngineCounters::default(),
        }
    }

    /// The clients (shared with other Redis users, such as emulation routing).
    pub fn clients(&self) -> &RedisClients {
        &self.clients
    }

    /// The engine's counters.
    pub fn counters(&self) -> &EngineCounters {
        &self.counters
    }

    /// Whether both connections are up and the pub/sub subscriptions are in place
    /// (readiness).
    pub fn connected(&self) -> bool {
        self.clients.connected() && self.listening.load(Ordering::Acquire)
    }

    /// The pub/sub connection failed: not ready until [`RedisEngine::resubscribe_all`]
    /// succeeds again.
    pub fn mark_lost(&self) {
        self.listening.store(false, Ordering::Release);
    }

    /// Lifetime of presence entries.
    pub fn presence_ttl(&self) -> Duration {
        self.presence_ttl
    }

    /// Number of pub/sub channels this node is subscribed to.
    pub fn subscribed_count(&self) -> usize {
        lock(&self.subscribed).len()
    }

    async fn measured<T, F>(&self, future: F) -> Result<T, EngineError>
    where
        F: std::future::Future<Output = Result<T, fred::error::Error>>,
    {
        self.counters.commands.fetch_add(1, Ordering::Relaxed);
        if !self.clients.commands.is_connected() || !self.clients.subscriber.is_connected() {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
            return Err(EngineError::Disconnected);
        }
        let started = Instant::now();
        let result = future.await;
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.counters
            .latency_micros
            .fetch_add(micros, Ordering::Relaxed);
        if let Err(error) = &result {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%error, "engine: redis command failed");
        }
        result.map_err(EngineError::from)
    }

    async fn script(
        &self,
        lua: &'static str,
        keys: Vec<String>,
        args: Vec<Value>,
    ) -> Result<Value, EngineError> {
        let client = self.clients.commands.with_options(&self.clients.options);
        self.measured(client.eval::<Value, _, _, _>(lua, keys, args))
            .await
    }

    /// Publishes: next offset and epoch assigned in Redis, history appended (when
    /// `history_size` > 0: trimmed to it, expiring after `history_ttl`), the envelope
    /// published on the channel's pub/sub. Returns `(offset, epoch)`. With `idempotency`, a
    /// result saved under its key is returned instead (nothing published), and a new result
    /// is saved for its TTL; check and save are atomic with the publication.
    pub async fn publish(
        &self,
        channel: &str,
        publication: &Publication,
        history_size: usize,
        history_ttl: Duration,
        idempotency: Option<Idempotency<'_>>,
    ) -> Result<(u64, String), EngineError> {
        let (result_key, result_ttl) = match idempotency {
            Some(Idempotency { key, ttl }) => (self.keys.idempotency(channel, key), ttl_secs(ttl)),
            None => (self.keys.idempotency(channel, ""), 0),
        };
        let keys = vec![
            self.keys.stream(channel),
            self.keys.meta(channel),
            result_key,
        ];
        let sharded = self.clients.topology == Topology::Cluster;
        let args: Vec<Value> = vec![
            Value::Bytes(Bytes::from(publication.encode_to_vec())),
            Value::from(i64::try_from(history_size).unwrap_or(i64::MAX)),
            Value::from(ttl_secs(history_ttl)),
            Value::from(ttl_secs(META_TTL)),
            Value::from(new_epoch()),
            Value::from(self.keys.pubsub(channel)),
            Value::from(if sharded { "1" } else { "0" }),
            Value::from(result_ttl.to_string()),
        ];
        let reply = self.script(scripts::PUBLISH, keys, args).await?;
        let mut items = reply.into_array().into_iter();
        let offset = items
            .next()
            .and_then(|v| v.as_u64())
            .ok_or(EngineError::Reply("publish offset"))?;
        let epoch = items
            .next()
            .and_then(|v| v.as_string())
            .ok_or(EngineError::Reply("publish epoch"))?;
        Ok((offset, epoch))
    }

    /// Publishes a join or leave (no offset, no history) on the channel's pub/sub.
    pub async fn publish_presence_event(
        &self,
        channel: &str,
        join: bool,
        info: &ClientInfo,
    ) -> Result<(), EngineError> {
        let message = Envelope::presence_event(join, info);
        let name = self.keys.pubsub(channel);
        let client = self.clients.commands.with_options(&self.clients.options);
        if self.clients.topology == Topology::Cluster {
            self.measured(client.spublish::<(), _, _>(name, message))
                .await
        } else {
            self.measured(client.publish::<(), _, _>(name, message))
                .await
        }
    }

    /// Reads the channel's position (creating its epoch when new) and the history `read`
    /// asks for.
    pub async fn stream(
        &self,
        channel: &str,
        read: HistoryRead,
    ) -> Result<StreamState, EngineError> {
        let keys = vec![self.keys.stream(channel), self.keys.meta(channel)];
        let (mode, count) = match read {
            HistoryRead::None => ("0", 0),
            HistoryRead::All => ("1", 0),
            HistoryRead::Newest(n) => ("2", n),
            HistoryRead::Oldest(n) => ("3", n),
        };
        let args: Vec<Value> = vec![
            Value::from(new_epoch()),
            Value::from(ttl_secs(META_TTL)),
            Value::from(mode),
            Value::from(i64::try_from(count).unwrap_or(i64::MAX)),
        ];
        let reply = self.script(scripts::POSITION, keys, args).await?;
        wire::stream_state(reply).ok_or(EngineError::Reply("stream position"))
    }

    /// Deletes the channel's kept publications (the position stays).
    pub async fn history_remove(&self, channel: &str) -> Result<(), EngineError> {
        let client = self.clients.commands.with_options(&self.clients.options);
        self.measured(client.del::<(), _>(self.keys.stream(channel)))
            .await
    }

    /// Adds or refreshes one presence entry (expires `presence_ttl` from now).
    pub async fn presence_add(&self, channel: &str, info: &ClientInfo) -> Result<(), EngineError> {
        let ttl = self.presence_ttl.as_secs().max(1);
        let args: Vec<Value> = vec![
            Value::from(info.client.as_str()),
            Value::Bytes(Bytes::from(info.encode_to_vec())),
            Value::from(i64::try_from(unix_now() + ttl).unwrap_or(i64::MAX)),
            Value::from(ttl_secs(self.presence_ttl)),
        ];
        self.script(scripts::PRESENCE_ADD, self.keys.presence(channel), args)
            .await
            .map(drop)
    }

    /// Removes one presence entry.
    pub async fn presence_remove(&self, channel: &str, client: &str) -> Result<(), EngineError> {
        let args: Vec<Value> = vec![Value::from(client)];
        self.script(scripts::PRESENCE_REMOVE, self.keys.presence(channel), args)
            .await
            .map(drop)
    }

    /// Live presence entries of a channel (expired ones are dropped on the way).
    pub async fn presence(&self, channel: &str) -> Result<Vec<ClientInfo>, EngineError> {
        let args: Vec<Value> = vec![Value::from(i64::try_from(unix_now()).unwrap_or(0))];
        let reply = self
            .script(scripts::PRESENCE_GET, self.keys.presence(channel), args)
            .await?;
        let items = reply.into_array();
        Ok(items
            .chunks(2)
            .filter_map(|pair| {
                let bytes = pair.get(1)?.as_bytes()?;
                ClientInfo::decode(bytes).ok()
            })
            .collect())
    }

    /// Makes sure this node receives the channel's pub/sub. The caller marks its interest
    /// in the channel (visible to [`RedisEngine::unsubscribe_unwanted`]) before calling.
    pub async fn ensure_subscribed(&self, channel: &str) -> Result<(), EngineError> {
        if !self.resubscribing.load(Ordering::Acquire) && lock(&self.subscribed).contains(channel) {
            return Ok(());
        }
        let _changing = self.changing.lock().await;
        if lock(&self.subscribed).contains(channel) {
            return Ok(());
        }
        self.subscribe_names(vec![self.keys.pubsub(channel)])
            .await?;
        lock(&self.subscribed).insert(channel.to_owned());
        Ok(())
    }

    async fn subscribe_names(&self, names: Vec<String>) -> Result<(), EngineError> {
        let subscriber = &self.clients.subscriber;
        let options = &self.clients.options;
        if self.clients.topology == Topology::Cluster {
            for name in names {
                self.measured(subscriber.with_options(options).ssubscribe(name))
                    .await?;
            }
            Ok(())
        } else {
            self.measured(subscriber.with_options(options).subscribe(names))
                .await
        }
    }

    async fn unsubscribe_names(&self, names: Vec<String>) -> Result<(), EngineError> {
        let subscriber = &self.clients.subscriber;
        let options = &self.clients.options;
        if self.clients.topology == Topology::Cluster {
            for name in names {
                self.measured(subscriber.with_options(options).sunsubscribe(name))
                    .await?;
            }
            Ok(())
        } else {
            self.measured(subscriber.with_options(options).unsubscribe(names))
                .await
        }
    }

    /// Unsubscribes the pub/sub of every channel `wanted` says no to (checked under the
    /// set's lock, so a subscription that marked its interest first is kept).
    pub async fn unsubscribe_unwanted(&self, wanted: impl Fn(&str) -> bool) {
        let _changing = self.changing.lock().await;
        let gone: Vec<String> = {
            let mut subscribed = lock(&self.subscribed);
            let gone: Vec<String> = subscribed.iter().filter(|c| !wanted(c)).cloned().collect();
            for channel in &gone {
                subscribed.remove(channel);
            }
            gone
        };
        for chunk in gone.chunks(SUBSCRIBE_BATCH) {
            let names = chunk.iter().map(|c| self.keys.pubsub(c)).collect();
            if let Err(error) = self.unsubscribe_names(names).await {
                // Left subscribed on Redis: its messages are ignored (no local channel), and
                // a reconnect drops the subscription anyway.
                tracing::debug!(%error, "engine: unsubscribe failed");
            }
        }
    }

    /// Restores every pub/sub subscription on a (re)connected subscriber connection. Until
    /// it returns, new subscriptions wait for it.
    pub async fn resubscribe_all(&self) -> Result<(), EngineError> {
        self.resubscribing.store(true, Ordering::Release);
        let _changing = self.changing.lock().await;
        self.counters.resyncs.fetch_add(1, Ordering::Relaxed);
        let all: Vec<String> = lock(&self.subscribed).iter().cloned().collect();
        let subscriber = self.clients.subscriber.with_options(&self.clients.options);
        self.measured(subscriber.subscribe(self.keys.control()))
            .await?;
        let mut result = Ok(());
        for chunk in all.chunks(SUBSCRIBE_BATCH) {
            let names = chunk.iter().map(|c| self.keys.pubsub(c)).collect();
            if let Err(error) = self.subscribe_names(names).await {
                result = Err(error);
                break;
            }
        }
        if result.is_ok() {
            self.resubscribing.store(false, Ordering::Release);
            self.listening.store(true, Ordering::Release);
        }
        result
    }

    /// Name of the control pub/sub channel.
    pub fn control_name(&self) -> String {
        self.keys.control()
    }

    /// Publishes a control message to every node.
    pub async fn publish_control(&self, message: Bytes) -> Result<(), EngineError> {
        let client = self.clients.commands.with_options(&self.clients.options);
        self.measured(client.publish::<(), _, _>(self.keys.control(), message))
            .await
    }

    /// Subscribes the control channel (also restored by [`RedisEngine::resubscribe_all`]).
    pub async fn subscribe_control(&self) -> Result<(), EngineError> {
        let _changing = self.changing.lock().await;
        let subscriber = self.clients.subscriber.with_options(&self.clients.options);
        self.measured(subscriber.subscribe(self.keys.control()))
            .await
    }

    /// Announces this node (its info JSON) for `ttl`.
    pub async fn announce(&self, uid: &str, info: Bytes, ttl: Duration) -> Result<(), EngineError> {
        let args: Vec<Value> = vec![
            Value::from(uid),
            Value::Bytes(info),
            Value::from(i64::try_from(unix_now() + ttl.as_secs().max(1)).unwrap_or(i64::MAX)),
            Value::from(ttl_secs(ttl * 2)),
        ];
        self.script(scripts::PRESENCE_ADD, self.keys.nodes(), args)
            .await
            .map(drop)
    }

    /// Info JSON of every live node.
    pub async fn nodes(&self) -> Result<Vec<Bytes>, EngineError> {
        let args: Vec<Value> = vec![Value::from(i64::try_from(unix_now()).unwrap_or(0))];
        let reply = self
            .script(scripts::PRESENCE_GET, self.keys.nodes(), args)
            .await?;
        Ok(reply
            .into_array()
            .chunks(2)
            .filter_map(|pair| pair.get(1)?.as_bytes().map(Bytes::copy_from_slice))
            .collect())
    }

    /// The sidewire channel a pub/sub channel name belongs to.
    pub fn channel_of<'a>(&self, pubsub: &'a str) -> Option<&'a str> {
        self.keys.channel_of_pubsub(pubsub)
    }

    /// Counts one pub/sub message in.
    pub fn count_message(&self) {
        self.counters.messages_in.fetch_add(1, Ordering::Relaxed);
    }

    /// Closes the clients.
    pub async fn quit(&self) {
        self.clients.quit().await;
    }

    /// Whether the subscriber connection is up.
    pub fn subscriber_connected(&self) -> bool {
        self.clients.subscriber.is_connected()
    }
}

fn ttl_secs(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX)
}
