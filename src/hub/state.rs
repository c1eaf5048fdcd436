//! The hub's state, split so that no lock is held across work that grows with the number of
//! sessions, channels or Links:
//! - channels live in [`SHARDS`] shards (`Mutex<HashMap<channel, Channel>>` by hash); offset
//!   assignment and the push of a publication happen under that channel's shard lock, which
//!   keeps per-channel order;
//! - sessions live in one table indexed by Link and by user, with a deadline heap for token
//!   expiries; operations on it are bounded by one session's channels (`hub.client.channel_limit`);
//! - the history ledger (global order and bytes, for TTL and the byte cap) has its own lock;
//! - Link queues sit in a read-mostly map.
//!
//! Lock order (never the other way): sessions → shard → ledger; the Link map and the queues
//! are leaves. The server API's idempotency cache is taken before any of them, around one
//! publication. Tokens are verified by the caller, outside every lock. Poison safety: no
//! operation mutates across a fallible step, so state behind a poisoned lock is consistent and
//! used as is.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::hash_map::RandomState;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use prost::Message as _;
use tokio::time::Instant;

use super::auth::{ConnectionClaims, SubTokenCheck, TokenCheck, TokenKeys};
use super::channel::{Channel, Ledger, Oldest, Subscriber};
use super::counters::HubCounters;
use super::idempotency::IdempotencyCache;
use super::link_queue::{LinkQueue, Queued, Repairs};
use super::namespace::{Asker, Namespaces, Operation, USER_BOUNDARY, history_enabled};
use super::policy::{BinaryChannels, PRIVATE_PREFIX, check_data, validate_channel};
use super::proxy::{
    ConnectGrant, PublishGrant, RefreshGrant, Refusal, SubRefreshGrant, Subject, SubscribeGrant,
};
use crate::config::HubConfig;
use crate::linkproto::{
    ChannelPush, Encoding, Membership, SessionDisconnect, SessionOpen, SessionReply, UpstreamFrame,
    upstream_frame,
};
use crate::protocol::SERVER_VERSION;
use crate::protocol::client::{
    ClientInfo, Command, ConnectRequest, ConnectResult, HistoryRequest, HistoryResult, Join, Leave,
    Message, PresenceResult, PresenceStatsResult, Publication, PublishResult, Push, RefreshResult,
    Reply, RpcResult, SubRefreshResult, SubscribeRequest, SubscribeResult, Unsubscribe,
    UnsubscribeResult,
};
use crate::protocol::{Disconnect, ErrorCode};

pub use super::channel::SessionKey;

mod server;
mod shared;
#[cfg(test)]
mod unit;

pub use shared::{SHARED_EVENT_QUEUE, Shared, SharedEvent, history_reply};

/// Number of channel shards.
pub const SHARDS: usize = 64;
/// Unsubscribe code telling SDKs to resubscribe and recover ("insufficient state").
pub const UNSUBSCRIBE_INSUFFICIENT_STATE: u32 = 2500;
/// Disconnect of a session whose frames were lost: the client reconnects.
pub const INSUFFICIENT_STATE: Disconnect = Disconnect::INSUFFICIENT_STATE;
/// Unsubscribe code of a subscription whose token expired (Centrifugo's
/// `UnsubscribeCodeExpired`): the SDK resubscribes with a fresh subscription token.
pub const UNSUBSCRIBE_EXPIRED: u32 = 2501;
/// Stale expiry entries tolerated before the deadline heap is rebuilt.
const EXPIRY_SLACK: usize = 1024;

#[derive(Debug)]
struct HubSession {
    client: String,
    user: String,
    /// False after a failed connect: any command then disconnects with 3501.
    usable: bool,
    /// The connect is still being decided (by the connect hook).
    pending: bool,
    /// Protobuf client (may receive binary-only channels).
    protobuf: bool,
    /// Transport name (for hook requests); no allocation for the known ones.
    transport: Cow<'static, str>,
    /// Connection-request headers kept for hooks (empty when no hook forwards any).
    headers: Arc<[(String, String)]>,
    /// Subscribed channels (at most `hub.client.channel_limit`).
    channels: HashSet<Arc<str>>,
    /// Unix seconds after which the connection expires (token `exp`).
    expires_at: Option<u64>,
    /// `info` / `b64info` of the connection token (the client's `conn_info`).
    conn_info: Bytes,
    /// `meta` of the connection token or connect hook: sent to hooks, never to clients.
    meta: Option<serde_json::Value>,
    /// Subscription-token expiry (unix seconds) per channel subscribed with one.
    sub_expiries: HashMap<Arc<str>, u64>,
    /// Subscribes waiting for the subscribe hook: channel and command id (at most the
    /// sidecar's unanswered-command bound).
    hook_subscribes: Vec<(String, u32)>,
}

impl HubSession {
    fn subject(&self) -> Subject {
        Subject {
            client: self.client.clone(),
            transport: self.transport.clone(),
            protobuf: self.protobuf,
            user: self.user.clone(),
            meta: self.meta.clone(),
            headers: self.headers.clone(),
        }
    }

    fn info(&self) -> ClientInfo {
        ClientInfo {
            user: self.user.clone(),
            client: self.client.clone(),
            conn_info: self.conn_info.clone(),
            ..Default::default()
        }
    }
}

/// A subscribe command with the outcome of verifying its subscription token, if it had one,
/// or the subscribe hook's grant.
struct SubscribeCommand {
    id: u32,
    request: SubscribeRequest,
    token: Option<SubTokenCheck>,
    proxy: Option<SubscribeGrant>,
    /// With a shared engine: what was read and written before commit.
    prepared: Option<Prepared>,
}

/// What a shared engine did for a subscribe before the hub applies it.
#[derive(Debug)]
pub struct Prepared {
    /// The channel's stream position (and history when recovering), read from the engine.
    pub stream: crate::engine::redis::StreamState,
    /// The subscriber's presence entry is already in the engine (written before the reply,
    /// so a presence read on any node right after the reply lists it).
    pub presence_written: bool,
}

/// Which expiries the hub hands to hooks (see [`HubState::sweep`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepHooks {
    /// The refresh hook is on.
    pub refresh: bool,
    /// The sub_refresh hook is configured.
    pub sub_refresh: bool,
}

/// A connection (or, with `channel`, a subscription) past its expiry, for a hook.
#[derive(Debug, Clone)]
pub struct Expiring {
    /// The session.
    pub key: SessionKey,
    /// The expiry that passed (unix seconds); a later one makes the hook's answer moot.
    pub at: u64,
    /// The subscription's channel (sub_refresh), or `None` (refresh).
    pub channel: Option<Arc<str>>,
    /// The connection.
    pub subject: Subject,
}

/// Expiries handed to hooks by one sweep.
#[derive(Debug, Default)]
pub struct Due {
    /// Connections for the refresh hook.
    pub refresh: Vec<Expiring>,
    /// Subscriptions for the sub_refresh hook.
    pub sub_refresh: Vec<Expiring>,
}

/// A session registered by [`HubState::open_pending`] whose connect awaits a decision.
#[derive(Debug, Clone)]
pub struct PendingOpen {
    /// The session.
    pub key: SessionKey,
    /// Its client id (a reused session id has another).
    pub client: String,
    /// Id of the connect command.
    pub command_id: u32,
    /// The connection, for the connect hook.
    pub subject: Subject,
    /// The client's connect request.
    pub request: ConnectRequest,
}

/// Who decided a connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectVia {
    /// A connection token (or none, anonymous).
    Token,
    /// The connect hook.
    Hook,
}

/// What a hook decided for a client command (see [`HubState::proxied_command`]).
#[derive(Debug, Clone, PartialEq)]
pub enum ProxyGrant {
    /// Subscribe as the subscribe hook granted.
    Subscribe(Box<SubscribeRequest>, SubscribeGrant),
    /// Publish to `channel` what the publish hook granted.
    Publish(String, PublishGrant),
    /// Answer the RPC with this data.
    Rpc(Bytes),
}

/// A token a command carried, verified by the caller outside every lock.
#[derive(Debug, Clone, PartialEq)]
pub enum Verified {
    /// The connection token of a `refresh` command.
    Connection(TokenCheck),
    /// The subscription token of a `subscribe` (with a token) or `sub_refresh` command.
    Subscription(SubTokenCheck),
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Options of a server-API publication.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishOptions {
    /// Not kept in history (the offset still advances).
    pub skip_history: bool,
    /// Carried on the publication as `tags`.
    pub tags: HashMap<String, String>,
}

/// The subscriptions a removed Link left behind, to be dropped channel by channel with
/// [`HubState::drop_link_subscriptions`].
#[derive(Debug, Default)]
pub struct LinkLeftovers {
    /// Link id.
    pub link: u64,
    /// Channel → sessions of that Link subscribed to it.
    pub channels: Vec<(Arc<str>, Vec<u64>)>,
}

#[derive(Debug)]
struct Settings {
    config: HubConfig,
    binary: BinaryChannels,
    namespaces: Namespaces,
    keys: TokenKeys,
    /// Subscription-token keys (`hub.client.subscription_token` when enabled, else `keys`).
    sub_keys: TokenKeys,
}

impl Settings {
    fn new(config: HubConfig) -> Settings {
        // `sidewire check` refuses an unusable key; a hub given one anyway accepts no token
        // of that section.
        let usable = |keys: Result<TokenKeys, _>| {
            keys.unwrap_or_else(|error| {
                tracing::warn!(%error, "hub: token key unusable");
                TokenKeys::default()
            })
        };
        let keys = usable(TokenKeys::from_config(&config.client));
        // One JWKS fetcher when subscription tokens share the connection keys.
        let sub_keys = if config.client.subscription_token.enabled {
            usable(TokenKeys::for_subscriptions(&config.client))
        } else {
            keys.clone()
        };
        keys.start();
        if config.client.subscription_token.enabled {
            sub_keys.start();
        }
        Settings {
            binary: BinaryChannels::new(&config.binary_channels),
            namespaces: Namespaces::new(&config.channel, config.client.insecure),
            keys,
            sub_keys,
            config,
        }
    }

    /// Whether `channel` takes any bytes: a `hub.binary_channels` pattern or its namespace's
    /// `allow_binary_data`.
    fn binary(&self, channel: &str) -> bool {
        self.binary.matches(channel)
            || self
                .namespaces
                .resolve(channel)
                .is_ok_and(|o| o.allow_binary_data)
    }
}

#[derive(Debug, Default)]
struct Sessions {
    by_link: HashMap<u64, HashMap<u64, HubSession>>,
    users: HashMap<String, HashSet<SessionKey>>,
    /// Connection expiries (unix seconds), checked lazily against the session.
    expiries: BinaryHeap<Reverse<(u64, SessionKey)>>,
    /// Subscription-token expiries, checked lazily against the session's `sub_expiries`.
    sub_expiries: BinaryHeap<Reverse<(u64, SessionKey, Arc<str>)>>,
    /// Live entries of `sub_expiries` at its last rebuild.
    sub_expiries_live: usize,
    count: usize,
}

impl Sessions {
    fn get(&self, key: SessionKey) -> Option<&HubSession> {
        self.by_link.get(&key.0)?.get(&key.1)
    }

    fn get_mut(&mut self, key: SessionKey) -> Option<&mut HubSession> {
        self.by_link.get_mut(&key.0)?.get_mut(&key.1)
    }

    fn forget_user(&mut self, key: SessionKey, user: &str) {
        if let Some(keys) = self.users.get_mut(user) {
            keys.remove(&key);
            if keys.is_empty() {
                self.users.remove(user);
            }
        }
    }

    fn schedule_expiry(&mut self, at: u64, key: SessionKey) {
        self.expiries.push(Reverse((at, key)));
        if self.expiries.len() > 2 * self.count + EXPIRY_SLACK {
            let live: Vec<Reverse<(u64, SessionKey)>> = self
                .by_link
                .iter()
                .flat_map(|(link, sessions)| {
                    sessions.iter().filter_map(move |(id, s)| {
                        s.expires_at.map(|at| Reverse((at, (*link, *id))))
                    })
                })
                .collect();
            self.expiries = BinaryHeap::from(live);
        }
    }

    fn schedule_sub_expiry(&mut self, at: u64, key: SessionKey, channel: Arc<str>) {
        self.sub_expiries.push(Reverse((at, key, channel)));
        if self.sub_expiries.len() > 2 * self.sub_expiries_live + EXPIRY_SLACK {
            let live: Vec<Reverse<(u64, SessionKey, Arc<str>)>> = self
                .by_link
                .iter()
                .flat_map(|(link, sessions)| {
                    sessions.iter().flat_map(move |(id, s)| {
                        s.sub_expiries
                            .iter()
                            .map(move |(channel, at)| Reverse((*at, (*link, *id), channel.clone())))
                    })
                })
                .collect();
            self.sub_expiries_live = live.len();
            self.sub_expiries = BinaryHeap::from(live);
        }
    }
}

type Shard = HashMap<Arc<str>, Channel>;

/// All hub state; every method takes `&self` and locks only what it needs.
#[derive(Debug)]
pub struct HubState {
    settings: RwLock<Arc<Settings>>,
    links: RwLock<HashMap<u64, Arc<LinkQueue>>>,
    sessions: Mutex<Sessions>,
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    ledger: Mutex<Ledger>,
    channel_count: AtomicUsize,
    counters: Arc<HubCounters>,
    /// Recent server-API publish results by idempotency key.
    idempotency: Mutex<IdempotencyCache>,
    /// This hub's node id (the `uid` of the `info` method).
    node_uid: String,
    /// When this hub started (`uptime` of the `info` method).
    started: std::time::Instant,
    /// The shared engine (Redis); `None` is the memory engine: everything in this process.
    shared: Option<Shared>,
}

pub(crate) use crate::sync::lock;

impl HubState {
    /// Empty state.
    pub fn new(config: HubConfig, counters: Arc<HubCounters>) -> HubState {
        HubState {
            settings: RwLock::new(Arc::new(Settings::new(config))),
            links: RwLock::new(HashMap::new()),
            sessions: Mutex::new(Sessions::default()),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::new())).collect(),
            hasher: RandomState::new(),
            ledger: Mutex::new(Ledger::default()),
            channel_count: AtomicUsize::new(0),
            counters,
            idempotency: Mutex::new(IdempotencyCache::default()),
            node_uid: uuid::Uuid::new_v4().to_string(),
            started: std::time::Instant::now(),
            shared: None,
        }
    }

    /// Empty state over a shared engine; the receiver yields the presence / join / leave work
    /// to run against it (bounded by [`SHARED_EVENT_QUEUE`]).
    pub fn new_shared(
        config: HubConfig,
        counters: Arc<HubCounters>,
        engine: Arc<crate::engine::redis::RedisEngine>,
    ) -> (HubState, tokio::sync::mpsc::Receiver<SharedEvent>) {
        let (events, receiver) = tokio::sync::mpsc::channel(SHARED_EVENT_QUEUE);
        let mut state = HubState::new(config, counters);
        state.shared = Some(Shared { engine, events });
        (state, receiver)
    }

    /// A subscriber was added to `channel`: with the memory engine a join push to local
    /// subscribers that asked (when `join`); with a shared engine presence and join go
    /// through the engine.
    /// `presence_written`: the caller already wrote the presence entry to the shared engine.
    fn joined(
        &self,
        state: &Channel,
        channel: &Arc<str>,
        info: &ClientInfo,
        join: bool,
        presence_written: bool,
    ) {
        if self.shared.is_some() {
            let join = join && self.join_leave_possible(channel);
            if presence_written && !join {
                return;
            }
            return self.shared_event(SharedEvent::Added {
                channel: channel.clone(),
                info: info.clone(),
                join,
                presence: !presence_written,
            });
        }
        if join && state.join_leave_subscribers > 0 {
            let push = Push {
                channel: channel.to_string(),
                join: Some(Join {
                    info: Some(info.clone()),
                }),
                ..Default::default()
            };
            self.broadcast(state, channel, push);
        }
    }

    /// Whether any subscriber of `channel` may receive joins and leaves: its namespace
    /// allows them (or forces them). Only then does a shared engine carry them.
    fn join_leave_possible(&self, channel: &str) -> bool {
        match self.settings().namespaces.resolve(channel) {
            Ok(options) => options.join_leave || options.force_push_join_leave,
            Err(_) => false,
        }
    }

    /// A subscriber left `channel` (see [`HubState::joined`]).
    fn left(&self, state: &Channel, channel: &str, info: ClientInfo) {
        if self.shared.is_some() {
            return self.shared_event(SharedEvent::Removed {
                channel: Arc::from(channel),
                info,
                leave: self.join_leave_possible(channel),
            });
        }
        if state.join_leave_subscribers > 0 {
            self.broadcast(state, channel, leave_push(channel, info));
        }
    }

    /// The node id reported by the `info` method.
    pub fn node_uid(&self) -> &str {
        &self.node_uid
    }

    /// Whole seconds since this hub started.
    pub fn uptime_secs(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// Runs `operation` on the idempotency cache. Its lock comes first in the lock order: the
    /// operation may publish (taking shard, ledger and Link locks), and no other path takes it.
    pub fn with_idempotency<R>(&self, operation: impl FnOnce(&mut IdempotencyCache) -> R) -> R {
        operation(&mut lock(&self.idempotency))
    }

    fn settings(&self) -> Arc<Settings> {
        crate::sync::read(&self.settings).clone()
    }

    /// The config in force.
    pub fn config(&self) -> HubConfig {
        self.settings().config.clone()
    }

    /// Replaces the config used by later operations.
    pub fn set_config(&self, config: HubConfig) {
        let settings = Arc::new(Settings::new(config));
        *crate::sync::write(&self.settings) = settings;
        self.enforce_history();
    }

    /// Verifies a connect command's token against the keys in force (no lock held while
    /// verifying), as Centrifugo: no token is anonymous only with
    /// `hub.client.allow_anonymous_connect_without_token` or `insecure` (else
    /// [`TokenCheck::Missing`]); a token is always verified (no key: invalid); `insecure`
    /// drops its expiry.
    pub fn verify_connection(&self, token: &str) -> TokenCheck {
        let settings = self.settings();
        let client = &settings.config.client;
        if token.is_empty() {
            return if client.allow_anonymous_connect_without_token || client.insecure {
                TokenCheck::anonymous()
            } else {
                TokenCheck::Missing
            };
        }
        match settings.keys.check_connection(token) {
            TokenCheck::Valid(mut claims) if client.insecure => {
                claims.expires_at = None;
                TokenCheck::Valid(claims)
            }
            check => check,
        }
    }

    /// Verifies a refresh command's connection token (no token: invalid).
    pub fn verify_refresh(&self, token: &str) -> TokenCheck {
        let settings = self.settings();
        match settings.keys.check_connection(token) {
            TokenCheck::Valid(mut claims) if settings.config.client.insecure => {
                claims.expires_at = None;
                TokenCheck::Valid(claims)
            }
            check => check,
        }
    }

    /// Verifies a subscription token against the keys in force.
    pub fn verify_subscription(&self, token: &str) -> SubTokenCheck {
        self.settings().sub_keys.check_subscription(token)
    }

    fn sessions(&self) -> MutexGuard<'_, Sessions> {
        lock(&self.sessions)
    }

    fn shard(&self, channel: &str) -> MutexGuard<'_, Shard> {
        let index = (self.hasher.hash_one(channel) % SHARDS as u64) as usize;
        lock(&self.shards[index])
    }

    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        lock(&self.ledger)
    }

    /// Registers a Link's outbound queue.
    pub fn add_link(&self, link: u64, queue: Arc<LinkQueue>) {
        crate::sync::write(&self.links).insert(link, queue);
    }

    fn queue(&self, link: u64) -> Option<Arc<LinkQueue>> {
        crate::sync::read(&self.links).get(&link).cloned()
    }

    /// Whether the Link is registered (a removed Link's frames are ignored).
    pub fn has_link(&self, link: u64) -> bool {
        self.queue(link).is_some()
    }

    /// Forgets a Link and its sessions (O(its sessions)); its queue is closed. The
    /// subscriptions it leaves are returned, to be dropped in batches outside this call.
    pub fn take_link(&self, link: u64) -> LinkLeftovers {
        let queue = crate::sync::write(&self.links).remove(&link);
        if let Some(queue) = queue {
            queue.close();
        }
        let mut sessions = self.sessions();
        let removed = sessions.by_link.remove(&link).unwrap_or_default();
        sessions.count = sessions.count.saturating_sub(removed.len());
        let mut by_channel: HashMap<Arc<str>, Vec<u64>> = HashMap::new();
        for (id, session) in removed {
            sessions.forget_user((link, id), &session.user);
            for channel in session.channels {
                by_channel.entry(channel).or_default().push(id);
            }
        }
        LinkLeftovers {
            link,
            channels: by_channel.into_iter().collect(),
        }
    }

    /// Drops a removed Link's subscriptions of the given channels: one pass per channel under
    /// its shard lock, one leave push per removed subscriber to the Links still subscribed.
    pub fn drop_link_subscriptions(&self, link: u64, channels: Vec<(Arc<str>, Vec<u64>)>) {
        for (name, sessions) in channels {
            let mut shard = self.shard(&name);
            let Some(channel) = shard.get_mut(&name) else {
                continue;
            };
            let mut leaves = Vec::new();
            for id in sessions {
                if let Some(subscriber) = channel.remove_subscriber((link, id)) {
                    leaves.push(subscriber.info);
                }
            }
            for info in leaves {
                self.left(channel, &name, info);
            }
            self.forget_if_idle(&mut shard, &name);
        }
    }

    /// Counters shared with the hub handle.
    pub fn counters(&self) -> &Arc<HubCounters> {
        &self.counters
    }

    /// Whether session `key` is live and connected (its connect was accepted).
    pub fn session_usable(&self, key: SessionKey) -> bool {
        self.sessions().get(key).is_some_and(|s| s.usable)
    }

    /// Whether `user` has a session here.
    pub fn has_user(&self, user: &str) -> bool {
        self.sessions().users.contains_key(user)
    }

    /// Whether session `key` is live.
    pub fn has_session(&self, key: SessionKey) -> bool {
        self.sessions().get(key).is_some()
    }

    /// Number of live sessions.
    pub fn session_count(&self) -> usize {
        self.sessions().count
    }

    /// Number of channels known.
    pub fn channel_count(&self) -> usize {
        self.channel_count.load(Ordering::Relaxed)
    }

    /// Bytes of history held across channels.
    pub fn history_bytes(&self) -> usize {
        self.ledger().held_bytes()
    }

    fn emit_session(&self, key: SessionKey, frame: upstream_frame::Frame) {
        let Some(queue) = self.queue(key.0) else {
            return;
        };
        let frame = UpstreamFrame { frame: Some(frame) };
        if queue.push_session(key.1, frame) == Queued::Overflowed {
            HubCounters::bump(&self.counters.link_session_overflows);
            tracing::debug!(
                link = key.0,
                session = key.1,
                "hub: link queue full, session stalled"
            );
        }
    }

    fn reply_with(&self, settings: &Settings, key: SessionKey, reply: Reply) {
        if reply.encoded_len() + 16 > settings.config.max_frame_bytes {
            HubCounters::bump(&self.counters.oversized_replies);
            return self.reply_error(key, reply.id, ErrorCode::LimitExceeded);
        }
        self.emit_session(
            key,
            upstream_frame::Frame::Reply(SessionReply {
                session: key.1,
                reply: Some(reply),
            }),
        );
    }

    fn reply(&self, key: SessionKey, reply: Reply) {
        self.reply_with(&self.settings(), key, reply);
    }

    fn reply_error(&self, key: SessionKey, id: u32, code: ErrorCode) {
        self.emit_session(
            key,
            upstream_frame::Frame::Reply(SessionReply {
                session: key.1,
                reply: Some(Reply {
                    id,
                    error: Some(code.to_error()),
                    ..Default::default()
                }),
            }),
        );
    }

    fn disconnect(&self, key: SessionKey, disconnect: &Disconnect) {
        self.emit_session(
            key,
            upstream_frame::Frame::Disconnect(SessionDisconnect {
                session: key.1,
                code: disconnect.code,
                reason: disconnect.reason.to_string(),
            }),
        );
    }

    fn membership(&self, key: SessionKey, channel: &str, subscribed: bool, join_leave: bool) {
        self.emit_session(
            key,
            upstream_frame::Frame::Membership(Membership {
                session: key.1,
                channel: channel.to_owned(),
                subscribed,
                join_leave,
            }),
        );
    }

    /// Sends `push` once to every Link with subscribers of `channel` (called under its shard
    /// lock, which orders the channel's pushes).
    fn broadcast(&self, state: &Channel, channel: &str, push: Push) {
        let frame = UpstreamFrame {
            frame: Some(upstream_frame::Frame::Push(ChannelPush {
                channel: channel.to_owned(),
                push: Some(push),
            })),
        };
        let links = crate::sync::read(&self.links);
        for link in state.links.keys() {
            let Some(queue) = links.get(link) else {
                continue;
            };
            if queue.push_channel(channel, frame.clone()) == Queued::Overflowed {
                HubCounters::bump(&self.counters.link_channel_overflows);
                tracing::debug!(link, channel, "hub: link queue full, channel lagging");
            }
        }
    }

    /// A session opened on a sidecar with its connect command; `check` is the outcome of
    /// verifying its token (done outside the lock). The token's `channels` / `subs` become
    /// server-side subscriptions: listed in the connect result's `subs`, each followed by a
    /// membership right after the connect reply. `headers` are the connection-request
    /// headers kept for proxy hooks.
    pub fn open(
        &self,
        link: u64,
        open: SessionOpen,
        check: TokenCheck,
        headers: Arc<[(String, String)]>,
    ) {
        let decision = match check {
            TokenCheck::Invalid => Err(Refusal::Disconnect(Disconnect::INVALID_TOKEN)),
            TokenCheck::Missing => Err(Refusal::Disconnect(Disconnect::BAD_REQUEST)),
            TokenCheck::Expired => Err(Refusal::code(ErrorCode::TokenExpired)),
            TokenCheck::Valid(claims) => Ok(ConnectGrant {
                claims,
                data: Bytes::new(),
            }),
        };
        if let Some(pending) = self.open_pending(link, open, headers) {
            self.finish_open(&pending, decision, ConnectVia::Token);
        }
    }

    /// Registers a session whose connect is still being decided (by the connect hook): it
    /// is not usable (a command before the connect reply disconnects it with 3501) until
    /// [`HubState::finish_open`]. `None` when the Link is gone.
    pub fn open_pending(
        &self,
        link: u64,
        open: SessionOpen,
        headers: Arc<[(String, String)]>,
    ) -> Option<PendingOpen> {
        let key = (link, open.session);
        let command = open.connect.unwrap_or_default();
        let session = HubSession {
            client: open.client,
            user: String::new(),
            usable: false,
            pending: true,
            protobuf: open.encoding == Encoding::Protobuf as i32,
            transport: transport_name(open.transport),
            headers,
            channels: HashSet::new(),
            expires_at: None,
            conn_info: Bytes::new(),
            meta: None,
            sub_expiries: HashMap::new(),
            hook_subscribes: Vec::new(),
        };
        let pending = PendingOpen {
            key,
            client: session.client.clone(),
            command_id: command.id,
            subject: Subject {
                client: session.client.clone(),
                transport: session.transport.clone(),
                protobuf: session.protobuf,
                user: String::new(),
                meta: None,
                headers: session.headers.clone(),
            },
            request: command.connect.unwrap_or_default(),
        };
        let mut sessions = self.sessions();
        // Checked under the sessions lock: `take_link` removes the Link before it takes it.
        if !self.has_link(link) {
            return None;
        }
        let previous = sessions
            .by_link
            .entry(link)
            .or_default()
            .insert(key.1, session);
        match previous {
            // A reused session id: forget the old one's subscriptions first.
            Some(previous) => self.release_session(&mut sessions, key, previous),
            None => sessions.count += 1,
        }
        Some(pending)
    }

    /// Answers a pending connect: refused (error reply or disconnect; the session stays
    /// unusable until its sidecar closes it), or granted (user, expiry, info, meta,
    /// server-side subscriptions, connect reply). Ignored when the session is gone or was
    /// replaced meanwhile. Through the hook, a server-side channel of an unknown namespace
    /// refuses the connect with 102 (as Centrifugo); with the refresh hook on, the reply says
    /// `expires: false` (the hub refreshes at expiry through the hook, the client never does).
    pub fn finish_open(
        &self,
        pending: &PendingOpen,
        decision: Result<ConnectGrant, Refusal>,
        via: ConnectVia,
    ) {
        let settings = self.settings();
        let key = pending.key;
        let mut decision = decision;
        if let (ConnectVia::Hook, Ok(grant)) = (via, &decision)
            && grant
                .claims
                .channels
                .iter()
                .any(|c| settings.namespaces.resolve(c).is_err())
        {
            decision = Err(Refusal::code(ErrorCode::UnknownChannel));
        }
        let mut sessions = self.sessions();
        let Some(session) = sessions.get_mut(key) else {
            return;
        };
        if session.client != pending.client || !session.pending {
            return;
        }
        session.pending = false;
        let grant = match decision {
            Err(refusal) => {
                drop(sessions);
                return self.refuse(key, pending.command_id, refusal);
            }
            Ok(grant) => grant,
        };
        let ConnectGrant { claims, data } = grant;
        session.user = claims.user.clone();
        session.usable = true;
        session.expires_at = claims.expires_at;
        session.conn_info = claims.info.clone();
        session.meta = claims.meta.clone();
        let client = session.client.clone();
        let info = session.info();
        let protobuf = session.protobuf;
        let ConnectionClaims {
            user,
            expires_at,
            channels,
            ..
        } = claims;
        sessions.users.entry(user).or_default().insert(key);
        if let Some(at) = expires_at {
            sessions.schedule_expiry(at, key);
        }
        let subs =
            self.server_side_subscribe(&settings, &mut sessions, key, &channels, &info, protobuf);
        drop(sessions);
        // With the refresh hook on, the hub prolongs every connection at its expiry (as
        // Centrifugo, token connections included): the client is told it never expires.
        let refresh = &settings.config.client.proxy.refresh;
        let server_refresh = refresh.enabled && !refresh.endpoint.is_empty();
        let expires = expires_at.is_some() && !server_refresh;
        let result = ConnectResult {
            client,
            version: SERVER_VERSION.to_owned(),
            expires,
            ttl: if expires { ttl_of(expires_at) } else { 0 },
            data,
            subs: subs.iter().cloned().collect(),
            ..Default::default()
        };
        self.reply(
            key,
            Reply {
                id: pending.command_id,
                connect: Some(result),
                ..Default::default()
            },
        );
        for (channel, _) in &subs {
            self.membership(key, channel, true, false);
        }
    }

    /// Answers command `id` with a hook's refusal: an error reply, or a disconnect (the
    /// session is then forgotten).
    pub fn refuse(&self, key: SessionKey, id: u32, refusal: Refusal) {
        match refusal {
            Refusal::Error(error) => self.emit_session(
                key,
                upstream_frame::Frame::Reply(SessionReply {
                    session: key.1,
                    reply: Some(Reply {
                        id,
                        error: Some(error),
                        ..Default::default()
                    }),
                }),
            ),
            Refusal::Disconnect(disconnect) => {
                self.disconnect(key, &disconnect);
                let mut sessions = self.sessions();
                self.remove_session(&mut sessions, key);
            }
        }
    }

    /// Subscribes a just-opened session to its token's channels (no permission check: the
    /// token grants them, as in Centrifugo). Channels with a bad name, binary-only channels of
    /// a JSON client, and channels beyond `hub.client.channel_limit` or `max_channels` are
    /// skipped with a log line.
    fn server_side_subscribe(
        &self,
        settings: &Settings,
        sessions: &mut Sessions,
        key: SessionKey,
        channels: &[String],
        info: &ClientInfo,
        protobuf: bool,
    ) -> Vec<(String, SubscribeResult)> {
        let mut results = Vec::new();
        for channel in channels {
            let Some(session) = sessions.get_mut(key) else {
                break;
            };
            if session.channels.len() >= settings.config.client.channel_limit {
                tracing::debug!(channel, "hub: token channel over hub.client.channel_limit");
                break;
            }
            if validate_channel(channel, settings.config.channel.max_length).is_err()
                || client_readable(settings, protobuf, channel).is_err()
                || session.channels.contains(channel.as_str())
            {
                tracing::debug!(channel, "hub: token channel skipped");
                continue;
            }
            let mut shard = self.shard(channel);
            let name: Arc<str> = match shard.get_key_value(channel.as_str()) {
                Some((name, _)) => name.clone(),
                None => {
                    if self.reserve_channel(settings).is_err() {
                        tracing::debug!(channel, "hub: token channel over max_channels");
                        continue;
                    }
                    Arc::from(channel.as_str())
                }
            };
            session.channels.insert(name.clone());
            let state = shard.entry(name).or_default();
            results.push((
                channel.clone(),
                SubscribeResult {
                    epoch: state.epoch.clone(),
                    offset: state.top,
                    ..Default::default()
                },
            ));
            state.add_subscriber(
                key,
                Subscriber {
                    info: info.clone(),
                    join_leave: false,
                },
            );
            if self.shared.is_some() {
                let name: Arc<str> = Arc::from(channel.as_str());
                self.joined(state, &name, info, false, false);
            }
        }
        results
    }

    /// A session ended on its sidecar.
    pub fn close(&self, key: SessionKey) {
        let mut sessions = self.sessions();
        self.remove_session(&mut sessions, key);
    }

    fn remove_session(&self, sessions: &mut Sessions, key: SessionKey) {
        let Some(by_id) = sessions.by_link.get_mut(&key.0) else {
            return;
        };
        let Some(session) = by_id.remove(&key.1) else {
            return;
        };
        if by_id.is_empty() && !self.has_link(key.0) {
            sessions.by_link.remove(&key.0);
        }
        sessions.count = sessions.count.saturating_sub(1);
        self.release_session(sessions, key, session);
    }

    /// Forgets a removed session's user entry and subscriptions: O(its channels), bounded by
    /// `hub.client.channel_limit`.
    fn release_session(&self, sessions: &mut Sessions, key: SessionKey, session: HubSession) {
        sessions.forget_user(key, &session.user);
        if let Some(queue) = self.queue(key.0) {
            queue.forget_session(key.1);
        }
        for channel in session.channels {
            self.remove_subscriber(&channel, key);
        }
    }

    /// Removes a subscriber and tells the channel (leave push) if anyone listens for it.
    fn remove_subscriber(&self, channel: &str, key: SessionKey) {
        let mut shard = self.shard(channel);
        let Some(state) = shard.get_mut(channel) else {
            return;
        };
        let Some(subscriber) = state.remove_subscriber(key) else {
            return;
        };
        self.left(state, channel, subscriber.info);
        self.forget_if_idle(&mut shard, channel);
    }

    fn forget_if_idle(&self, shard: &mut Shard, channel: &str) {
        if shard.get(channel).is_some_and(Channel::is_idle) {
            shard.remove(channel);
            self.channel_count.fetch_sub(1, Ordering::Relaxed);
        }
        let count = u64::try_from(self.channel_count.load(Ordering::Relaxed)).unwrap_or(0);
        self.counters
            .channels
            .store(count, std::sync::atomic::Ordering::Relaxed);
    }

    /// Room for one more channel (106 at `hub.max_channels`); counts it when granted.
    fn reserve_channel(&self, settings: &Settings) -> Result<(), ErrorCode> {
        let max = settings.config.max_channels;
        self.channel_count
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |count| {
                (count < max).then_some(count + 1)
            })
            .map(|_| ())
            .map_err(|_| ErrorCode::LimitExceeded)
    }

    /// A command of an open session; `token` is the verified token it carried (refresh,
    /// subscribe, sub_refresh), if any.
    pub fn command(&self, key: SessionKey, command: Command, token: Option<Verified>) {
        self.command_prepared(key, command, token, None);
    }

    /// [`HubState::command`] with what a shared engine read for it beforehand (a subscribe's
    /// stream position and history).
    pub fn command_prepared(
        &self,
        key: SessionKey,
        command: Command,
        token: Option<Verified>,
        prepared: Option<Prepared>,
    ) {
        let settings = self.settings();
        let (info, protobuf) = {
            let mut sessions = self.sessions();
            let Some(session) = sessions.get(key) else {
                return;
            };
            if !session.usable {
                self.disconnect(key, &Disconnect::BAD_REQUEST);
                self.remove_session(&mut sessions, key);
                return;
            }
            (session.info(), session.protobuf)
        };
        let id = command.id;
        if let Some(request) = command.subscribe {
            // The reply goes out from `subscribe` itself, in order with the channel's pushes.
            let token = match token {
                Some(Verified::Subscription(check)) => Some(check),
                _ => None,
            };
            let command = SubscribeCommand {
                id,
                request,
                token,
                proxy: None,
                prepared,
            };
            if let Err(code) = self.subscribe(&settings, key, command, info, protobuf) {
                self.reply_error(key, id, code);
            }
            return;
        }
        let result = if let Some(request) = command.unsubscribe {
            self.unsubscribe(key, &request.channel);
            Ok(Reply {
                id,
                unsubscribe: Some(UnsubscribeResult {}),
                ..Default::default()
            })
        } else if let Some(request) = command.publish {
            self.client_access(&settings, key, &info, &request.channel, Operation::Publish)
                .and_then(|()| {
                    self.publish_with(
                        &settings,
                        &request.channel,
                        request.data,
                        Some(info),
                        PublishOptions::default(),
                    )
                })
                .map(|_| Reply {
                    id,
                    publish: Some(PublishResult {}),
                    ..Default::default()
                })
        } else if let Some(request) = command.presence {
            let operation = Operation::Presence;
            self.client_access(&settings, key, &info, &request.channel, operation)
                .map(|()| Reply {
                    id,
                    presence: Some(self.presence(&request.channel)),
                    ..Default::default()
                })
        } else if let Some(request) = command.presence_stats {
            let operation = Operation::Presence;
            self.client_access(&settings, key, &info, &request.channel, operation)
                .map(|()| Reply {
                    id,
                    presence_stats: Some(self.presence_stats(&request.channel)),
                    ..Default::default()
                })
        } else if let Some(request) = command.history {
            self.client_access(&settings, key, &info, &request.channel, Operation::History)
                .and_then(|()| client_readable(&settings, protobuf, &request.channel))
                .and_then(|()| self.history_with(&settings, &request))
                .map(|result| Reply {
                    id,
                    history: Some(result),
                    ..Default::default()
                })
        } else if let Some(request) = command.rpc {
            if request.method == "echo" {
                Ok(Reply {
                    id,
                    rpc: Some(RpcResult { data: request.data }),
                    ..Default::default()
                })
            } else {
                Err(ErrorCode::MethodNotFound)
            }
        } else if let Some(request) = command.send {
            Ok(Reply {
                push: Some(Push {
                    message: Some(Message { data: request.data }),
                    ..Default::default()
                }),
                ..Default::default()
            })
        } else if command.refresh.is_some() {
            let check = match token {
                Some(Verified::Connection(check)) => check,
                _ => TokenCheck::Invalid,
            };
            return self.refresh(&settings, key, id, check);
        } else if let Some(request) = command.sub_refresh {
            let check = match token {
                Some(Verified::Subscription(check)) => check,
                _ => SubTokenCheck::Invalid,
            };
            return self.sub_refresh(&settings, key, id, &request.channel, check);
        } else {
            self.disconnect(key, &Disconnect::BAD_REQUEST);
            let mut sessions = self.sessions();
            return self.remove_session(&mut sessions, key);
        };
        match result {
            Ok(reply) => self.reply_with(&settings, key, reply),
            Err(code) => self.reply_error(key, id, code),
        }
    }

    /// Subscribes under the sessions lock then the channel's shard lock, so the session's
    /// channel set and the channel's subscribers change together; the reply, membership and
    /// join push go out under the shard lock, in order with the channel's publications.
    fn subscribe(
        &self,
        settings: &Settings,
        key: SessionKey,
        command: SubscribeCommand,
        info: ClientInfo,
        protobuf: bool,
    ) -> Result<(), ErrorCode> {
        let SubscribeCommand {
            id,
            request,
            token,
            proxy,
            prepared,
        } = command;
        let presence_written = prepared.as_ref().is_some_and(|p| p.presence_written);
        let prepared = prepared.map(|p| p.stream);
        let namespaces = &settings.namespaces;
        let (info, token_expiry) = self.grant_subscribe(
            settings,
            key,
            &request,
            token,
            proxy.as_ref(),
            protobuf,
            info,
        )?;
        // Hook subscriptions of a namespace with `sub_refresh_proxy_enabled` are prolonged by
        // the hub (`expires: false` to the client).
        let server_refresh = proxy.is_some()
            && namespaces
                .resolve(&request.channel)?
                .sub_refresh_proxy_enabled;
        let mut request = request;
        let options = namespaces.resolve(&request.channel)?;
        // Namespace options replace what the client asked for.
        request.join_leave =
            options.force_push_join_leave || (options.join_leave && request.join_leave);
        if options.force_recovery && history_enabled(options) {
            request.recoverable = true;
        }
        self.enforce_history();
        let mut sessions = self.sessions();
        let session = sessions.get_mut(key).ok_or(ErrorCode::Internal)?;
        if session.channels.contains(request.channel.as_str()) {
            return Err(ErrorCode::AlreadySubscribed);
        }
        if session.channels.len() >= settings.config.client.channel_limit {
            return Err(ErrorCode::LimitExceeded);
        }
        let mut shard = self.shard(&request.channel);
        let name: Arc<str> = match shard.get_key_value(request.channel.as_str()) {
            Some((name, _)) => name.clone(),
            None => {
                self.reserve_channel(settings)?;
                Arc::from(request.channel.as_str())
            }
        };
        // From here on nothing fails: the session and the channel are updated together.
        session.channels.insert(name.clone());
        if let Some(at) = token_expiry {
            session.sub_expiries.insert(name.clone(), at);
            sessions.schedule_sub_expiry(at, key, name.clone());
        } else {
            session.sub_expiries.remove(&name);
        }
        let channel = shard.entry(name.clone()).or_default();
        let recoverable = request.recoverable || request.recover;
        let mut result = SubscribeResult {
            recoverable,
            positioned: request.positioned || recoverable,
            epoch: channel.epoch.clone(),
            offset: channel.top,
            was_recovering: request.recover,
            expires: token_expiry.is_some() && !server_refresh,
            ttl: if server_refresh {
                0
            } else {
                ttl_of(token_expiry)
            },
            data: proxy.map(|grant| grant.data).unwrap_or_default(),
            ..Default::default()
        };
        let recovered = if !request.recover {
            None
        } else if self.shared.is_some() {
            HubState::shared_recovery(channel, prepared.as_ref(), &request.epoch, request.offset)
        } else {
            channel.since(&request.epoch, request.offset)
        };
        if let Some(publications) = recovered {
            result.publications = publications;
            result.recovered = true;
        }
        channel.add_subscriber(
            key,
            Subscriber {
                info: info.clone(),
                join_leave: request.join_leave,
            },
        );
        let mut reply = Reply {
            id,
            subscribe: Some(result),
            ..Default::default()
        };
        if reply.encoded_len() + 16 > settings.config.max_frame_bytes {
            // Recovery too large for one frame: subscribe without it; the client sees
            // recovered=false and reloads state.
            HubCounters::bump(&self.counters.oversized_replies);
            if let Some(result) = reply.subscribe.as_mut() {
                result.publications.clear();
                result.recovered = false;
            }
        }
        self.reply_with(settings, key, reply);
        self.membership(key, &request.channel, true, request.join_leave);
        self.joined(channel, &name, &info, true, presence_written);
        Ok(())
    }

    /// The checks a subscribe passes before it is applied (name, already subscribed, channel
    /// limit, then the hook's grant, a subscription token or the namespace's permissions, and
    /// the encoding): the subscriber's info (with its channel info) and the expiry of the
    /// token or grant. Changes nothing.
    #[allow(clippy::too_many_arguments)]
    fn grant_subscribe(
        &self,
        settings: &Settings,
        key: SessionKey,
        request: &SubscribeRequest,
        token: Option<SubTokenCheck>,
        proxy: Option<&SubscribeGrant>,
        protobuf: bool,
        mut info: ClientInfo,
    ) -> Result<(ClientInfo, Option<u64>), ErrorCode> {
        let namespaces = &settings.namespaces;
        // As Centrifugo (the library validates before any permission): a second subscribe
        // answers 105 and one beyond the limit 106, whatever the grants. Checked again below
        // under the lock that adds the channel.
        validate_channel(&request.channel, settings.config.channel.max_length)?;
        if let Some(session) = self.sessions().get(key) {
            if session.channels.contains(request.channel.as_str()) {
                return Err(ErrorCode::AlreadySubscribed);
            }
            if session.channels.len() >= settings.config.client.channel_limit {
                return Err(ErrorCode::LimitExceeded);
            }
        }
        // The subscribe hook's grant, or a subscription token (required on `$` channels, its
        // `info` the channel info), grants the subscription; otherwise the namespace's
        // permissions decide.
        let token_expiry = if let Some(grant) = proxy {
            info.chan_info = grant.info.clone();
            grant.expires_at
        } else if token.is_some() || request.channel.starts_with(PRIVATE_PREFIX) {
            let (expiry, chan_info) = subscription_grant(
                token.unwrap_or(SubTokenCheck::Invalid),
                &info.user,
                &request.channel,
            )?;
            info.chan_info = chan_info;
            expiry
        } else {
            let asker = Asker {
                user: &info.user,
                subscribed: false,
            };
            validate_channel(&request.channel, settings.config.channel.max_length)?;
            namespaces.check(&request.channel, Operation::Subscribe, asker)?;
            None
        };
        client_readable(settings, protobuf, &request.channel)?;
        Ok((info, token_expiry))
    }

    /// With a shared engine: the presence entry a client's subscribe would add if it were
    /// applied now (its checks pass and the channel's namespace keeps presence), so that the
    /// caller writes it to the engine before the subscribe is applied and answered, as
    /// Centrifugo does. `None` when the subscribe would be refused or keeps no presence.
    pub fn subscribe_presence_entry(
        &self,
        key: SessionKey,
        request: &SubscribeRequest,
        token: Option<&Verified>,
        proxy: Option<&SubscribeGrant>,
    ) -> Option<ClientInfo> {
        self.shared.as_ref()?;
        let settings = self.settings();
        let (info, protobuf) = self
            .sessions()
            .get(key)
            .filter(|s| s.usable)
            .map(|s| (s.info(), s.protobuf))?;
        let token = match token {
            Some(Verified::Subscription(check)) => Some(check.clone()),
            _ => None,
        };
        let (info, _) = self
            .grant_subscribe(&settings, key, request, token, proxy, protobuf, info)
            .ok()?;
        let keeps_presence = settings
            .namespaces
            .resolve(&request.channel)
            .is_ok_and(|options| options.presence);
        keeps_presence.then_some(info)
    }

    /// Whether session `key` is subscribed to `channel` here.
    pub fn is_subscribed(&self, key: SessionKey, channel: &str) -> bool {
        self.sessions()
            .get(key)
            .is_some_and(|s| s.channels.contains(channel))
    }

    /// Channel name, namespace and permission rules for a client's publish, history or
    /// presence (see [`Namespaces::check`]).
    fn client_access(
        &self,
        settings: &Settings,
        key: SessionKey,
        info: &ClientInfo,
        channel: &str,
        operation: Operation,
    ) -> Result<(), ErrorCode> {
        validate_channel(channel, settings.config.channel.max_length)?;
        let subscribed = self
            .sessions()
            .get(key)
            .is_some_and(|s| s.channels.contains(channel));
        let asker = Asker {
            user: &info.user,
            subscribed,
        };
        settings.namespaces.check(channel, operation, asker)
    }

    fn unsubscribe(&self, key: SessionKey, channel: &str) {
        let mut sessions = self.sessions();
        let subscribed = sessions.get_mut(key).is_some_and(|s| {
            s.sub_expiries.remove(channel);
            // An unsubscribe cancels a subscribe still waiting for its hook.
            s.hook_subscribes.retain(|(pending, _)| pending != channel);
            s.channels.remove(channel)
        });
        if subscribed {
            self.membership(key, channel, false, false);
            self.remove_subscriber(channel, key);
        }
    }

    /// Publishes with default options: the same checks as a client publish.
    pub fn publish(
        &self,
        channel: &str,
        data: Bytes,
        info: Option<ClientInfo>,
    ) -> Result<(u64, String), ErrorCode> {
        self.publish_with(
            &self.settings(),
            channel,
            data,
            info,
            PublishOptions::default(),
        )
    }

    /// Publishes from the server API (no client info) with its options.
    pub fn publish_api(
        &self,
        channel: &str,
        data: Bytes,
        options: PublishOptions,
    ) -> Result<(u64, String), ErrorCode> {
        self.publish_with(&self.settings(), channel, data, None, options)
    }

    /// A publication that passed the checks every publish shares (name, namespace, data,
    /// frame size), with the history size its channel keeps.
    fn checked_publication(
        settings: &Settings,
        channel: &str,
        data: Bytes,
        info: Option<ClientInfo>,
        tags: HashMap<String, String>,
    ) -> Result<(Publication, usize), ErrorCode> {
        let config = &settings.config;
        validate_channel(channel, config.channel.max_length)?;
        let namespace = settings.namespaces.resolve(channel)?;
        // The namespace's size, under the hub-wide cap `hub.history_size`.
        let history_size = if history_enabled(namespace) {
            namespace.history_size.min(config.history_size)
        } else {
            0
        };
        check_data(&data, settings.binary(channel))?;
        let publication = Publication {
            data,
            info,
            tags,
            ..Default::default()
        };
        // Offset not yet known: count its varint at the widest.
        let push_len = publication.encoded_len() + channel.len() * 2 + 32;
        if push_len > config.max_frame_bytes {
            return Err(ErrorCode::LimitExceeded);
        }
        Ok((publication, history_size))
    }

    /// What a shared engine needs to publish: the checked publication, the history size
    /// (0 with `skip_history`) and TTL.
    pub fn shared_publication(
        &self,
        channel: &str,
        data: Bytes,
        info: Option<ClientInfo>,
        options: PublishOptions,
    ) -> Result<(Publication, usize, std::time::Duration), ErrorCode> {
        let settings = self.settings();
        let (publication, size) =
            Self::checked_publication(&settings, channel, data, info, options.tags)?;
        let size = if options.skip_history { 0 } else { size };
        Ok((publication, size, *settings.config.history_ttl))
    }

    /// The info of usable session `key` (for a hook-granted publish through a shared engine).
    pub fn session_info(&self, key: SessionKey) -> Option<ClientInfo> {
        self.sessions()
            .get(key)
            .filter(|s| s.usable)
            .map(|s| s.info())
    }

    /// The client-side checks of a publish, history or presence command of session `key`
    /// (with a shared engine, before the engine runs it): the session's info on success.
    pub fn client_check(
        &self,
        key: SessionKey,
        channel: &str,
        operation: Operation,
    ) -> Result<ClientInfo, ErrorCode> {
        let settings = self.settings();
        let (info, protobuf) = {
            let sessions = self.sessions();
            let session = sessions.get(key).ok_or(ErrorCode::Internal)?;
            if !session.usable {
                return Err(ErrorCode::PermissionDenied);
            }
            (session.info(), session.protobuf)
        };
        self.client_access(&settings, key, &info, channel, operation)?;
        if operation == Operation::History {
            client_readable(&settings, protobuf, channel)?;
        }
        Ok(info)
    }

    /// Sends a reply (or an error) to session `key` (used once a shared engine answered).
    pub fn answer(&self, key: SessionKey, id: u32, reply: Result<Reply, ErrorCode>) {
        match reply {
            Ok(mut reply) => {
                reply.id = id;
                self.reply(key, reply);
            }
            Err(code) => self.reply_error(key, id, code),
        }
    }

    /// Publishes after the shared checks (name, data, channel cap, frame size): next offset,
    /// history, one push per Link with subscribers, all under the channel's shard lock.
    fn publish_with(
        &self,
        settings: &Settings,
        channel: &str,
        data: Bytes,
        info: Option<ClientInfo>,
        options: PublishOptions,
    ) -> Result<(u64, String), ErrorCode> {
        let (mut publication, history_size) =
            Self::checked_publication(settings, channel, data, info, options.tags)?;
        let position = {
            let mut shard = self.shard(channel);
            let name: Arc<str> = match shard.get_key_value(channel) {
                Some((name, _)) => name.clone(),
                None => {
                    self.reserve_channel(settings)?;
                    Arc::from(channel)
                }
            };
            let state = shard.entry(name.clone()).or_default();
            state.top += 1;
            publication.offset = state.top;
            let position = (state.top, state.epoch.clone());
            if history_size > 0 && !options.skip_history {
                let mut ledger = self.ledger();
                ledger.store(&name, state, publication.clone(), Instant::now());
                while state.history.len() > history_size {
                    state.pop_front(&mut ledger);
                }
            }
            let push = Push {
                channel: channel.to_owned(),
                r#pub: Some(publication),
                ..Default::default()
            };
            self.broadcast(state, channel, push);
            self.forget_if_idle(&mut shard, channel);
            position
        };
        self.enforce_history();
        Ok(position)
    }

    /// Drops history past its TTL or beyond `hub.history_max_bytes`, oldest first across
    /// channels; O(dropped). Takes the ledger and one shard at a time, never both the other
    /// way round.
    fn enforce_history(&self) {
        let settings = self.settings();
        let max_bytes = settings.config.history_max_bytes;
        let ttl = settings.config.history_ttl;
        let now = Instant::now();
        loop {
            let next = self.ledger().next_to_drop(max_bytes, *ttl, now);
            let Oldest::Drop {
                channel,
                seq,
                evicted,
            } = next
            else {
                break;
            };
            let mut shard = self.shard(&channel);
            let Some(state) = shard.get_mut(&channel) else {
                continue;
            };
            if state.history.front().is_some_and(|s| s.seq == seq) {
                state.pop_evicted(&mut self.ledger());
                if evicted {
                    HubCounters::bump(&self.counters.history_evictions);
                }
                self.forget_if_idle(&mut shard, &channel);
            }
        }
        let bytes = u64::try_from(self.ledger().held_bytes()).unwrap_or(u64::MAX);
        self.counters
            .history_bytes
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// Presence of a channel: client id → info.
    pub fn presence(&self, channel: &str) -> PresenceResult {
        let shard = self.shard(channel);
        let presence = shard
            .get(channel)
            .map(|state| {
                state
                    .subscribers
                    .values()
                    .map(|s| (s.info.client.clone(), s.info.clone()))
                    .collect()
            })
            .unwrap_or_default();
        PresenceResult { presence }
    }

    /// Presence counts of a channel: clients and distinct users.
    pub fn presence_stats(&self, channel: &str) -> PresenceStatsResult {
        let shard = self.shard(channel);
        let Some(state) = shard.get(channel) else {
            return PresenceStatsResult::default();
        };
        let users: HashSet<&str> = state
            .subscribers
            .values()
            .map(|s| s.info.user.as_str())
            .collect();
        PresenceStatsResult {
            num_clients: u32::try_from(state.subscribers.len()).unwrap_or(u32::MAX),
            num_users: u32::try_from(users.len()).unwrap_or(u32::MAX),
        }
    }

    /// Whether the server API may run `operation` on `channel` under `hub.channel`: 102
    /// unknown namespace, 107 regex mismatch, 108 history or presence off (no grant needed).
    pub fn channel_available(&self, channel: &str, operation: Operation) -> Result<(), ErrorCode> {
        self.settings().namespaces.available(channel, operation)
    }

    /// History of a channel: `limit` (> 0 at most that many, < 0 all, 0 none), `since` a
    /// position (error 112 when it is gone), `reverse` newest first. A channel the hub does
    /// not know answers an empty history with a fresh epoch (nothing is created). A reply
    /// over `hub.max_frame_bytes` is error 106.
    pub fn history(&self, request: &HistoryRequest) -> Result<HistoryResult, ErrorCode> {
        self.history_with(&self.settings(), request)
    }

    fn history_with(
        &self,
        settings: &Settings,
        request: &HistoryRequest,
    ) -> Result<HistoryResult, ErrorCode> {
        validate_channel(&request.channel, settings.config.channel.max_length)?;
        self.enforce_history();
        let since = request.since.as_ref().map(|p| (p.epoch.as_str(), p.offset));
        let result = {
            let shard = self.shard(&request.channel);
            match shard.get(request.channel.as_str()) {
                Some(channel) => channel.history(request.limit, since, request.reverse),
                None => Channel::new().history(request.limit, since, request.reverse),
            }
        }?;
        if result.encoded_len() + 64 > settings.config.max_frame_bytes {
            HubCounters::bump(&self.counters.oversized_replies);
            return Err(ErrorCode::LimitExceeded);
        }
        Ok(result)
    }

    fn refresh(&self, settings: &Settings, key: SessionKey, id: u32, check: TokenCheck) {
        let mut sessions = self.sessions();
        let Some(session) = sessions.get_mut(key) else {
            return;
        };
        match check {
            TokenCheck::Valid(ConnectionClaims {
                user, expires_at, ..
            }) if user == session.user => {
                session.expires_at = expires_at;
                let client = session.client.clone();
                if let Some(at) = expires_at {
                    sessions.schedule_expiry(at, key);
                }
                drop(sessions);
                let result = RefreshResult {
                    client,
                    version: SERVER_VERSION.to_owned(),
                    expires: expires_at.is_some(),
                    ttl: ttl_of(expires_at),
                };
                self.reply_with(
                    settings,
                    key,
                    Reply {
                        id,
                        refresh: Some(result),
                        ..Default::default()
                    },
                );
            }
            TokenCheck::Expired => self.reply_error(key, id, ErrorCode::TokenExpired),
            TokenCheck::Valid { .. } | TokenCheck::Invalid | TokenCheck::Missing => {
                self.disconnect(key, &Disconnect::INVALID_TOKEN);
                self.remove_session(&mut sessions, key);
            }
        }
    }

    /// Disconnects every session of `user`, or only its connection `client` when given,
    /// except the connections named in `keep` (Centrifugo's `whitelist`); returns how many.
    pub fn disconnect_user(
        &self,
        user: &str,
        client: Option<&str>,
        keep: &[String],
        disconnect: &Disconnect,
    ) -> usize {
        let mut sessions = self.sessions();
        let keys = server::matching_sessions(&sessions, user, client, keep);
        for key in &keys {
            self.disconnect(*key, disconnect);
            self.remove_session(&mut sessions, *key);
        }
        keys.len()
    }

    /// Repairs a Link after its queue overflowed and drained: sessions of lagging channels are
    /// unsubscribed with 2500 (they resubscribe and recover), stalled sessions are
    /// disconnected with 3010.
    pub fn repair(&self, link: u64, repairs: Repairs) {
        if !self.has_link(link) {
            return;
        }
        for name in repairs.channels {
            let members: Vec<u64> = {
                let shard = self.shard(&name);
                shard
                    .get(name.as_str())
                    .and_then(|c| c.links.get(&link))
                    .map(|s| s.iter().copied().collect())
                    .unwrap_or_default()
            };
            for id in members {
                let key = (link, id);
                let mut sessions = self.sessions();
                let subscribed = sessions.get_mut(key).is_some_and(|s| {
                    s.sub_expiries.remove(name.as_str());
                    s.channels.remove(name.as_str())
                });
                if !subscribed {
                    continue;
                }
                self.membership(key, &name, false, false);
                self.emit_session(
                    key,
                    upstream_frame::Frame::Reply(SessionReply {
                        session: id,
                        reply: Some(Reply {
                            push: Some(Push {
                                channel: name.clone(),
                                unsubscribe: Some(Unsubscribe {
                                    code: UNSUBSCRIBE_INSUFFICIENT_STATE,
                                    reason: "insufficient state".to_owned(),
                                }),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }),
                    }),
                );
                self.remove_subscriber(&name, key);
                HubCounters::bump(&self.counters.insufficient_state_unsubscribes);
            }
        }
        for id in repairs.sessions {
            let key = (link, id);
            let mut sessions = self.sessions();
            if sessions.get(key).is_some() {
                self.disconnect(key, &INSUFFICIENT_STATE);
                self.remove_session(&mut sessions, key);
                HubCounters::bump(&self.counters.insufficient_state_disconnects);
            }
        }
    }

    /// Periodic upkeep, O(expired): connections past their `exp` get 3005 (or, with
    /// `hooks.refresh`, are returned for the refresh hook), subscriptions past their expiry
    /// get unsubscribe 2501 (or, with `hooks.sub_refresh` in a namespace with
    /// `sub_refresh_proxy_enabled`, are returned for the sub_refresh hook), history past its
    /// TTL goes.
    pub fn sweep(&self, hooks: SweepHooks) -> Due {
        let now = unix_now();
        let mut due = Due::default();
        loop {
            let mut sessions = self.sessions();
            let Some(Reverse((at, key))) = sessions.expiries.peek().copied() else {
                break;
            };
            if at > now {
                break;
            }
            sessions.expiries.pop();
            let Some(session) = sessions.get(key).filter(|s| s.expires_at == Some(at)) else {
                continue;
            };
            if hooks.refresh {
                due.refresh.push(Expiring {
                    key,
                    at,
                    channel: None,
                    subject: session.subject(),
                });
            } else {
                self.disconnect(key, &Disconnect::CONNECTION_EXPIRED);
                self.remove_session(&mut sessions, key);
            }
        }
        self.expire_subscriptions(now, hooks, &mut due);
        self.enforce_history();
        due
    }

    /// Applies the refresh hook's answer for a connection that expired at `at`: a later
    /// expiry (and new info/meta) keeps it; `expired`, no later expiry or a refusal close it
    /// (3005, the backend's disconnect, or 3004 on an error, as Centrifugo). Ignored when the
    /// session is gone or was refreshed meanwhile.
    pub fn finish_refresh(&self, expiring: &Expiring, outcome: Result<RefreshGrant, Refusal>) {
        let now = unix_now();
        let key = expiring.key;
        let mut sessions = self.sessions();
        let Some(session) = sessions.get_mut(key) else {
            return;
        };
        if session.client != expiring.subject.client || session.expires_at != Some(expiring.at) {
            return;
        }
        let disconnect = match outcome {
            Err(Refusal::Disconnect(disconnect)) => disconnect,
            Err(Refusal::Error(_)) => Disconnect::INTERNAL,
            Ok(grant) => match grant.expires_at.filter(|at| *at > now) {
                Some(at) if !grant.expired => {
                    session.expires_at = Some(at);
                    if let Some(info) = grant.info {
                        session.conn_info = info;
                    }
                    if grant.meta.is_some() {
                        session.meta = grant.meta;
                    }
                    sessions.schedule_expiry(at, key);
                    return;
                }
                _ => Disconnect::CONNECTION_EXPIRED,
            },
        };
        self.disconnect(key, &disconnect);
        self.remove_session(&mut sessions, key);
    }

    /// Applies the sub_refresh hook's answer for a subscription that expired at `at`: a later
    /// expiry keeps it; `expired` or no later expiry unsubscribe it (2501); a refusal closes
    /// the connection (the backend's disconnect, or 3004 on an error).
    pub fn finish_sub_refresh(
        &self,
        expiring: &Expiring,
        outcome: Result<SubRefreshGrant, Refusal>,
    ) {
        let now = unix_now();
        let key = expiring.key;
        let Some(channel) = expiring.channel.clone() else {
            return;
        };
        let mut sessions = self.sessions();
        let Some(session) = sessions.get_mut(key) else {
            return;
        };
        if session.client != expiring.subject.client
            || session.sub_expiries.get(&channel) != Some(&expiring.at)
        {
            return;
        }
        match outcome {
            Err(refusal) => {
                let disconnect = match refusal {
                    Refusal::Disconnect(disconnect) => disconnect,
                    Refusal::Error(_) => Disconnect::INTERNAL,
                };
                self.disconnect(key, &disconnect);
                self.remove_session(&mut sessions, key);
            }
            Ok(grant) => match grant.expires_at.filter(|at| *at > now) {
                Some(at) if !grant.expired => {
                    session.sub_expiries.insert(channel.clone(), at);
                    sessions.schedule_sub_expiry(at, key, channel);
                }
                _ => {
                    session.sub_expiries.remove(&channel);
                    let subscribed = session.channels.remove(&channel);
                    drop(sessions);
                    if subscribed {
                        self.unsubscribe_pushed(
                            key,
                            &channel,
                            UNSUBSCRIBE_EXPIRED,
                            "subscription expired",
                        );
                    }
                }
            },
        }
    }

    /// Tells the session it left `channel` (membership, unsubscribe push) and drops it from
    /// the channel; the caller already removed the channel from the session.
    fn unsubscribe_pushed(&self, key: SessionKey, channel: &str, code: u32, reason: &str) {
        self.membership(key, channel, false, false);
        self.emit_session(
            key,
            upstream_frame::Frame::Reply(SessionReply {
                session: key.1,
                reply: Some(Reply {
                    push: Some(Push {
                        channel: channel.to_owned(),
                        unsubscribe: Some(Unsubscribe {
                            code,
                            reason: reason.to_owned(),
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            }),
        );
        self.remove_subscriber(channel, key);
    }

    /// Unsubscribes (2501 "subscription expired") the subscriptions whose expiry is at or
    /// before `now`, or hands them to the sub_refresh hook (see [`HubState::sweep`]);
    /// O(expired).
    fn expire_subscriptions(&self, now: u64, hooks: SweepHooks, due: &mut Due) {
        let settings = self.settings();
        loop {
            let mut sessions = self.sessions();
            let Some(Reverse((at, key, channel))) = sessions.sub_expiries.peek().cloned() else {
                break;
            };
            if at > now {
                break;
            }
            sessions.sub_expiries.pop();
            let Some(session) = sessions.get_mut(key) else {
                continue;
            };
            if session.sub_expiries.get(&channel) != Some(&at) {
                continue;
            }
            let refreshed = hooks.sub_refresh
                && settings
                    .namespaces
                    .resolve(&channel)
                    .is_ok_and(|o| o.sub_refresh_proxy_enabled);
            if refreshed {
                due.sub_refresh.push(Expiring {
                    key,
                    at,
                    channel: Some(channel.clone()),
                    subject: session.subject(),
                });
                continue;
            }
            session.sub_expiries.remove(&channel);
            if !session.channels.remove(&channel) {
                continue;
            }
            drop(sessions);
            self.unsubscribe_pushed(key, &channel, UNSUBSCRIBE_EXPIRED, "subscription expired");
        }
    }

    /// The connection a hook call is about, when the session is open and usable.
    pub fn subject(&self, key: SessionKey) -> Option<Subject> {
        self.sessions()
            .get(key)
            .filter(|s| s.usable)
            .map(HubSession::subject)
    }

    /// Which channel hook a client command goes to under the namespace rules, if any:
    /// subscribe without a token, not private, not a user-limited channel, in a namespace
    /// with `subscribe_proxy_enabled`; publish in a namespace with `publish_proxy_enabled`.
    pub fn channel_hook(&self, command: &Command) -> Option<Operation> {
        let settings = self.settings();
        if let Some(request) = &command.subscribe {
            let channel = request.channel.as_str();
            let options = settings.namespaces.resolve(channel).ok()?;
            let user_limited =
                options.allow_user_limited_channels && channel.contains(USER_BOUNDARY);
            return (options.subscribe_proxy_enabled
                && request.token.is_empty()
                && !channel.starts_with(PRIVATE_PREFIX)
                && !user_limited)
                .then_some(Operation::Subscribe);
        }
        if let Some(request) = &command.publish {
            let options = settings.namespaces.resolve(&request.channel).ok()?;
            return options.publish_proxy_enabled.then_some(Operation::Publish);
        }
        None
    }

    /// Marks subscribe `id` to `channel` as waiting for the subscribe hook: 105 when the
    /// session is subscribed to it or already waiting for it, 100 when it is gone.
    pub fn begin_hook_subscribe(
        &self,
        key: SessionKey,
        channel: &str,
        id: u32,
    ) -> Result<(), ErrorCode> {
        let mut sessions = self.sessions();
        let session = sessions.get_mut(key).ok_or(ErrorCode::Internal)?;
        if session.channels.contains(channel)
            || session.hook_subscribes.iter().any(|(c, _)| c == channel)
        {
            return Err(ErrorCode::AlreadySubscribed);
        }
        session.hook_subscribes.push((channel.to_owned(), id));
        Ok(())
    }

    /// Ends the wait of subscribe `id` to `channel`; false when an unsubscribe (or the end of
    /// the session) cancelled it meanwhile.
    pub fn end_hook_subscribe(&self, key: SessionKey, channel: &str, id: u32) -> bool {
        let mut sessions = self.sessions();
        let Some(session) = sessions.get_mut(key) else {
            return false;
        };
        let before = session.hook_subscribes.len();
        session
            .hook_subscribes
            .retain(|(c, pending)| !(c == channel && *pending == id));
        session.hook_subscribes.len() < before
    }

    /// Completes a client command a hook decided: the refusal, or the subscribe, publish or
    /// RPC reply. Ignored when the session is gone or unusable.
    pub fn proxied_command(
        &self,
        key: SessionKey,
        id: u32,
        outcome: Result<ProxyGrant, Refusal>,
        prepared: Option<Prepared>,
    ) {
        let settings = self.settings();
        let Some((info, protobuf)) = self
            .sessions()
            .get(key)
            .filter(|s| s.usable)
            .map(|s| (s.info(), s.protobuf))
        else {
            return;
        };
        let result = match outcome {
            Err(refusal) => return self.refuse(key, id, refusal),
            Ok(ProxyGrant::Subscribe(request, grant)) => {
                let command = SubscribeCommand {
                    id,
                    request: *request,
                    token: None,
                    proxy: Some(grant),
                    prepared,
                };
                if let Err(code) = self.subscribe(&settings, key, command, info, protobuf) {
                    self.reply_error(key, id, code);
                }
                return;
            }
            Ok(ProxyGrant::Publish(channel, grant)) => {
                let options = PublishOptions {
                    skip_history: grant.skip_history,
                    ..Default::default()
                };
                validate_channel(&channel, settings.config.channel.max_length)
                    .and_then(|()| {
                        self.publish_with(&settings, &channel, grant.data, Some(info), options)
                    })
                    .map(|_| Reply {
                        id,
                        publish: Some(PublishResult {}),
                        ..Default::default()
                    })
            }
            Ok(ProxyGrant::Rpc(data)) => Ok(Reply {
                id,
                rpc: Some(RpcResult { data }),
                ..Default::default()
            }),
        };
        match result {
            Ok(reply) => self.reply_with(&settings, key, reply),
            Err(code) => self.reply_error(key, id, code),
        }
    }

    /// Prolongs a token subscription with a new subscription token: 109 when it has expired,
    /// 103 when the session is not subscribed, disconnect 3500 when it is invalid or for
    /// another user or channel (as Centrifugo).
    fn sub_refresh(
        &self,
        settings: &Settings,
        key: SessionKey,
        id: u32,
        channel: &str,
        check: SubTokenCheck,
    ) {
        let mut sessions = self.sessions();
        let Some(session) = sessions.get_mut(key) else {
            return;
        };
        let expires_at = match check {
            SubTokenCheck::Expired => {
                drop(sessions);
                return self.reply_error(key, id, ErrorCode::TokenExpired);
            }
            SubTokenCheck::Valid {
                user,
                channel: granted,
                expires_at,
                ..
            } if user == session.user && granted == channel => expires_at,
            SubTokenCheck::Valid { .. } | SubTokenCheck::Invalid => {
                self.disconnect(key, &Disconnect::INVALID_TOKEN);
                return self.remove_session(&mut sessions, key);
            }
        };
        let Some(name) = session.channels.get(channel).cloned() else {
            drop(sessions);
            return self.reply_error(key, id, ErrorCode::PermissionDenied);
        };
        match expires_at {
            Some(at) => {
                session.sub_expiries.insert(name.clone(), at);
                sessions.schedule_sub_expiry(at, key, name);
            }
            None => {
                session.sub_expiries.remove(&name);
            }
        }
        drop(sessions);
        self.reply_with(
            settings,
            key,
            Reply {
                id,
                sub_refresh: Some(SubRefreshResult {
                    expires: expires_at.is_some(),
                    ttl: ttl_of(expires_at),
                }),
                ..Default::default()
            },
        );
    }
}

/// The expiry and channel info a subscription token grants for `channel` to `user`: 109 when
/// expired, 103 when missing, invalid, or for another user or channel.
fn subscription_grant(
    check: SubTokenCheck,
    user: &str,
    channel: &str,
) -> Result<(Option<u64>, Bytes), ErrorCode> {
    match check {
        SubTokenCheck::Valid {
            user: granted_user,
            channel: granted,
            expires_at,
            info,
        } if granted_user == user && granted == channel => Ok((expires_at, info)),
        SubTokenCheck::Expired => Err(ErrorCode::TokenExpired),
        SubTokenCheck::Valid { .. } | SubTokenCheck::Invalid => Err(ErrorCode::PermissionDenied),
    }
}

/// The transport name of a SessionOpen, static for the sidecar's own transports.
fn transport_name(name: String) -> Cow<'static, str> {
    const KNOWN: [&str; 6] = [
        "websocket",
        "http_stream",
        "sse",
        "uni_websocket",
        "uni_http_stream",
        "uni_sse",
    ];
    match KNOWN.iter().find(|known| **known == name) {
        Some(known) => Cow::Borrowed(known),
        None => Cow::Owned(name),
    }
}

/// JSON clients cannot receive a binary-only channel (107).
fn client_readable(settings: &Settings, protobuf: bool, channel: &str) -> Result<(), ErrorCode> {
    if !protobuf && settings.binary(channel) {
        return Err(ErrorCode::BadRequest);
    }
    Ok(())
}

fn leave_push(channel: &str, info: ClientInfo) -> Push {
    Push {
        channel: channel.to_owned(),
        leave: Some(Leave { info: Some(info) }),
        ..Default::default()
    }
}

fn ttl_of(expires_at: Option<u64>) -> u32 {
    expires_at
        .map(|at| u32::try_from(at.saturating_sub(unix_now())).unwrap_or(u32::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::state::unit::drain;
    use crate::protocol::client::{PublishRequest, SubscribeRequest};

    /// A hub config where every client operation is allowed (Centrifugo's `client.insecure`
    /// plus presence, join/leave and history on channels without a namespace).
    fn permissive() -> HubConfig {
        let mut config = HubConfig::default();
        config.client.insecure = true;
        let options = &mut config.channel.without_namespace;
        options.presence = true;
        options.join_leave = true;
        options.history_size = 100;
        options.history_ttl = std::time::Duration::from_secs(300).into();
        config
    }

    fn state(link_queue_max_bytes: usize) -> (HubState, Arc<LinkQueue>) {
        let config = HubConfig {
            link_queue_max_bytes,
            ..permissive()
        };
        let state = HubState::new(config, Arc::new(HubCounters::default()));
        let queue = Arc::new(LinkQueue::new(link_queue_max_bytes));
        state.add_link(1, queue.clone());
        (state, queue)
    }

    fn open(state: &HubState, session: u64) {
        let open = SessionOpen {
            session,
            client: format!("c{session}"),
            ..Default::default()
        };
        state.open(1, open, TokenCheck::anonymous(), Arc::from(Vec::new()));
    }

    fn command(state: &HubState, session: u64, command: Command) {
        state.command((1, session), command, None);
    }

    fn subscribe(channel: &str) -> Command {
        Command {
            id: 1,
            subscribe: Some(SubscribeRequest {
                channel: channel.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn overflowing_channel_is_unsubscribed_with_2500_once_room_returns() {
        let (state, queue) = state(20_000);
        open(&state, 1);
        open(&state, 2);
        command(&state, 1, subscribe("busy"));
        command(&state, 2, subscribe("quiet"));
        drain(&queue).await;
        let data = Bytes::from(format!("\"{}\"", "x".repeat(6_000)));
        for _ in 0..5 {
            state.publish("busy", data.clone(), None).unwrap();
        }
        assert!(queue.is_lagging("busy"));
        assert_eq!(
            HubCounters::read(&state.counters().link_channel_overflows),
            1
        );
        // The other channel and the sessions still flow: the Link was not dropped.
        assert!(state.has_link(1));
        let frames = drain(&queue).await;
        assert_eq!(frames.len(), 3, "three pushes fitted");
        let repairs = queue.take_repairs();
        assert_eq!(repairs.channels, vec!["busy".to_owned()]);
        state.repair(1, repairs);
        let frames = drain(&queue).await;
        assert!(frames.iter().any(|f| matches!(f,
            upstream_frame::Frame::Membership(m) if m.session == 1 && m.channel == "busy" && !m.subscribed)));
        assert!(frames.iter().any(|f| matches!(f,
            upstream_frame::Frame::Reply(r) if r.session == 1 && r.reply.as_ref()
                .and_then(|r| r.push.as_ref())
                .and_then(|p| p.unsubscribe.as_ref())
                .is_some_and(|u| u.code == UNSUBSCRIBE_INSUFFICIENT_STATE))));
        assert!(state.presence("busy").presence.is_empty());
        assert_eq!(state.presence("quiet").presence.len(), 1);
        // The session resubscribes: accepted (not 105), and pushes flow again.
        command(&state, 1, subscribe("busy"));
        let frames = drain(&queue).await;
        assert!(frames.iter().any(|f| matches!(f,
            upstream_frame::Frame::Reply(r) if r.reply.as_ref().is_some_and(|r| r.subscribe.is_some()))));
        state
            .publish("busy", Bytes::from_static(b"1"), None)
            .unwrap();
        assert_eq!(drain(&queue).await.len(), 1);
    }

    #[tokio::test]
    async fn a_session_that_lost_a_reply_is_disconnected_with_3010() {
        let (state, queue) = state(20_000);
        open(&state, 1);
        open(&state, 2);
        command(&state, 1, subscribe("room"));
        drain(&queue).await;
        // A push that leaves 2 bytes of room: no reply fits after it.
        let push_len = |n: usize| {
            UpstreamFrame {
                frame: Some(upstream_frame::Frame::Push(ChannelPush {
                    channel: "room".to_owned(),
                    push: Some(Push {
                        channel: "room".to_owned(),
                        r#pub: Some(Publication {
                            data: Bytes::from(vec![b'x'; n]),
                            offset: 1,
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                })),
            }
            .encoded_len()
        };
        let n = (1..20_000).rev().find(|n| push_len(*n) <= 19_998).unwrap();
        let data = Bytes::from(format!("\"{}\"", "x".repeat(n - 2)));
        state.publish("room", data, None).unwrap();
        assert_eq!(queue.queued_bytes(), push_len(n));
        let rpc = Command {
            id: 9,
            publish: Some(PublishRequest {
                channel: "other".to_owned(),
                data: Bytes::from(format!("\"{}\"", "y".repeat(2_000))),
                ..Default::default()
            }),
            ..Default::default()
        };
        // Session 2's publish reply does not fit after the big push.
        command(&state, 2, rpc);
        assert_eq!(
            HubCounters::read(&state.counters().link_session_overflows),
            1
        );
        drain(&queue).await;
        let repairs = queue.take_repairs();
        assert_eq!(repairs.sessions, vec![2]);
        state.repair(1, repairs);
        let frames = drain(&queue).await;
        assert!(frames.iter().any(|f| matches!(f,
            upstream_frame::Frame::Disconnect(d) if d.session == 2 && d.code == 3010)));
        assert_eq!(state.session_count(), 1);
    }

    /// Subscribes and returns the reply's error code, if any.
    async fn subscribe_code(
        state: &HubState,
        queue: &LinkQueue,
        session: u64,
        channel: &str,
    ) -> Option<u32> {
        command(state, session, subscribe(channel));
        drain(queue).await.into_iter().find_map(|f| match f {
            upstream_frame::Frame::Reply(r) => r.reply.map(|r| r.error.map(|e| e.code)),
            _ => None,
        })?
    }

    #[tokio::test]
    async fn channel_limit_and_channel_cap_answer_106() {
        let (state, queue) = state(1 << 20);
        let mut config = HubConfig {
            max_channels: 3,
            ..permissive()
        };
        config.client.channel_limit = 2;
        state.set_config(config);
        open(&state, 1);
        open(&state, 2);
        drain(&queue).await;
        for channel in ["a", "b"] {
            assert_eq!(subscribe_code(&state, &queue, 1, channel).await, None);
        }
        assert_eq!(subscribe_code(&state, &queue, 1, "a").await, Some(105));
        assert_eq!(subscribe_code(&state, &queue, 1, "c").await, Some(106));
        assert_eq!(subscribe_code(&state, &queue, 2, "c").await, None);
        assert_eq!(
            subscribe_code(&state, &queue, 2, "d").await,
            Some(106),
            "max_channels"
        );
        assert_eq!(
            state.publish("e", Bytes::from_static(b"1"), None),
            Err(ErrorCode::LimitExceeded)
        );
        assert!(state.publish("a", Bytes::from_static(b"1"), None).is_ok());
        assert_eq!(state.channel_count(), 3);
    }

    #[test]
    fn removing_a_link_forgets_its_sessions_and_subscriptions() {
        let (state, queue) = state(1 << 20);
        open(&state, 1);
        command(&state, 1, subscribe("a"));
        let leftovers = state.take_link(1);
        assert!(queue.is_dead());
        assert_eq!(state.session_count(), 0);
        state.drop_link_subscriptions(1, leftovers.channels);
        assert_eq!(state.channel_count(), 0);
        // Frames of the removed Link are not applied.
        open(&state, 2);
        assert_eq!(state.session_count(), 0);
    }

    #[test]
    fn concurrent_operations_neither_deadlock_nor_leak() {
        let (state, queue) = state(1 << 30);
        let state = Arc::new(state);
        let (done, finished) = std::sync::mpsc::channel();
        let mut workers = Vec::new();
        for worker in 0..4u64 {
            let state = state.clone();
            let done = done.clone();
            workers.push(std::thread::spawn(move || {
                for round in 0..300u64 {
                    let session = worker * 1_000_000 + round;
                    open(&state, session);
                    for c in 0..5 {
                        let channel = format!("c{}", (round + c) % 7);
                        command(&state, session, subscribe(&channel));
                        let _ = state.publish(&channel, Bytes::from_static(b"1"), None);
                    }
                    let history = HistoryRequest {
                        channel: format!("c{}", round % 7),
                        limit: -1,
                        ..Default::default()
                    };
                    let _ = state.history(&history);
                    if round % 3 == 0 {
                        state.close((1, session));
                    }
                    if round % 50 == 0 {
                        state.sweep(SweepHooks::default());
                    }
                }
                let _ = done.send(());
            }));
        }
        for _ in 0..4 {
            finished
                .recv_timeout(std::time::Duration::from_secs(30))
                .expect("workers finish (no deadlock)");
        }
        for worker in workers {
            worker.join().unwrap();
        }
        assert_eq!(state.session_count(), 4 * 200);
        let leftovers = state.take_link(1);
        assert!(queue.is_dead());
        state.drop_link_subscriptions(1, leftovers.channels);
        assert_eq!(state.session_count(), 0);
        // Only history keeps channels now; presence is empty everywhere.
        for c in 0..7 {
            assert!(state.presence(&format!("c{c}")).presence.is_empty());
        }
        assert_eq!(state.channel_count(), 7);
    }
}
