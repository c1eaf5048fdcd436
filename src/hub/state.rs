//! The hub's state: sessions (indexed by Link and by user), channels with subscribers and
//! history, Link queues; and the frames each operation sends back over the Links.
//!
//! Guarantees:
//! - every operation is bounded by its own inputs, never by the total number of sessions or
//!   channels: sessions are indexed by Link, expiries sit in a deadline heap, history expiry
//!   and eviction follow a global ledger, idle channels are forgotten as they become idle,
//!   and Link removal is done channel by channel in small batches ([`HubState::take_link`]);
//! - tokens are verified by the caller, outside the lock;
//! - frames are only queued with the byte-bounded [`LinkQueue`], so no Link and no client can
//!   stall the hub, and a full queue costs only the affected subscriptions or sessions;
//! - poison safety: no operation mutates across a fallible step (no `?`/panic between paired
//!   updates), so the state behind a poisoned lock is consistent and is used as is.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use prost::Message as _;
use tokio::time::Instant;

use super::auth::TokenCheck;
use super::channel::{Channel, Ledger, Oldest, Subscriber};
use super::counters::HubCounters;
use super::link_queue::{LinkQueue, Queued, Repairs};
use super::policy::{BinaryChannels, check_data, client_may_access, validate_channel};
use crate::config::HubConfig;
use crate::linkproto::{
    ChannelPush, Encoding, Membership, SessionDisconnect, SessionOpen, SessionReply, UpstreamFrame,
    upstream_frame,
};
use crate::protocol::client::{
    ClientInfo, Command, ConnectResult, HistoryRequest, HistoryResult, Join, Leave, Message,
    PresenceResult, PresenceStatsResult, Publication, PublishResult, Push, RefreshResult, Reply,
    RpcResult, SubscribeRequest, SubscribeResult, Unsubscribe, UnsubscribeResult,
};
use crate::protocol::{Disconnect, ErrorCode};
use crate::session::handle::SERVER_VERSION;

pub use super::channel::SessionKey;

/// Unsubscribe code telling SDKs to resubscribe and recover ("insufficient state").
pub const UNSUBSCRIBE_INSUFFICIENT_STATE: u32 = 2500;
/// Disconnect of a session whose frames were lost: the client reconnects.
pub const INSUFFICIENT_STATE: Disconnect = Disconnect {
    code: 3010,
    reason: std::borrow::Cow::Borrowed("insufficient state"),
};
/// Stale expiry entries tolerated before the deadline heap is rebuilt.
const EXPIRY_SLACK: usize = 1024;

#[derive(Debug)]
struct HubSession {
    client: String,
    user: String,
    /// False after a failed connect: any command then disconnects with 3501.
    usable: bool,
    /// Protobuf client (may receive binary-only channels).
    protobuf: bool,
    /// Subscribed channels (at most `hub.client_channel_limit`).
    channels: HashSet<Arc<str>>,
    /// Unix seconds after which the connection expires (token `exp`).
    expires_at: Option<u64>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Error of a server API call, with Centrifugo's code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiError(pub ErrorCode);

/// The subscriptions a removed Link left behind, to be dropped channel by channel with
/// [`HubState::drop_link_subscriptions`].
#[derive(Debug, Default)]
pub struct LinkLeftovers {
    /// Link id.
    pub link: u64,
    /// Channel → sessions of that Link subscribed to it.
    pub channels: Vec<(Arc<str>, Vec<u64>)>,
}

/// All hub state.
#[derive(Debug)]
pub struct HubState {
    config: Arc<HubConfig>,
    binary: BinaryChannels,
    links: HashMap<u64, Arc<LinkQueue>>,
    /// Sessions by Link, then by session id.
    sessions: HashMap<u64, HashMap<u64, HubSession>>,
    channels: HashMap<Arc<str>, Channel>,
    users: HashMap<String, HashSet<SessionKey>>,
    ledger: Ledger,
    /// Connection expiries (unix seconds), checked lazily against the session.
    expiries: BinaryHeap<Reverse<(u64, SessionKey)>>,
    session_count: usize,
    counters: Arc<HubCounters>,
}

impl HubState {
    /// Empty state.
    pub fn new(config: HubConfig, counters: Arc<HubCounters>) -> HubState {
        HubState {
            binary: BinaryChannels::new(&config.binary_channels),
            config: Arc::new(config),
            links: HashMap::new(),
            sessions: HashMap::new(),
            channels: HashMap::new(),
            users: HashMap::new(),
            ledger: Ledger::default(),
            expiries: BinaryHeap::new(),
            session_count: 0,
            counters,
        }
    }

    /// Replaces the config used by later operations.
    pub fn set_config(&mut self, config: HubConfig) {
        self.binary = BinaryChannels::new(&config.binary_channels);
        self.config = Arc::new(config);
        self.enforce_history();
    }

    /// Registers a Link's outbound queue.
    pub fn add_link(&mut self, link: u64, queue: Arc<LinkQueue>) {
        self.links.insert(link, queue);
    }

    /// Whether the Link is registered (a removed Link's frames are ignored).
    pub fn has_link(&self, link: u64) -> bool {
        self.links.contains_key(&link)
    }

    /// Forgets a Link and its sessions (O(its sessions)); its queue is closed. The
    /// subscriptions it leaves are returned, to be dropped in batches outside this call.
    pub fn take_link(&mut self, link: u64) -> LinkLeftovers {
        if let Some(queue) = self.links.remove(&link) {
            queue.close();
        }
        let sessions = self.sessions.remove(&link).unwrap_or_default();
        self.session_count = self.session_count.saturating_sub(sessions.len());
        let mut by_channel: HashMap<Arc<str>, Vec<u64>> = HashMap::new();
        for (id, session) in sessions {
            self.forget_user((link, id), &session.user);
            for channel in session.channels {
                by_channel.entry(channel).or_default().push(id);
            }
        }
        LinkLeftovers {
            link,
            channels: by_channel.into_iter().collect(),
        }
    }

    /// Drops a removed Link's subscriptions of the given channels: one pass per channel, and
    /// one leave push per removed subscriber to the Links still subscribed.
    pub fn drop_link_subscriptions(&mut self, link: u64, channels: Vec<(Arc<str>, Vec<u64>)>) {
        for (name, sessions) in channels {
            let Some(channel) = self.channels.get_mut(&name) else {
                continue;
            };
            let mut leaves = Vec::new();
            for id in sessions {
                if let Some(subscriber) = channel.remove_subscriber((link, id)) {
                    leaves.push(subscriber.info);
                }
            }
            if channel.join_leave_subscribers > 0 {
                for info in leaves {
                    self.broadcast(&name, leave_push(&name, info));
                }
            }
            self.forget_if_idle(&name);
        }
    }

    /// Counters shared with the hub handle.
    pub fn counters(&self) -> &Arc<HubCounters> {
        &self.counters
    }

    /// Number of live sessions.
    pub fn session_count(&self) -> usize {
        self.session_count
    }

    /// Number of channels known.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Bytes of history held across channels.
    pub fn history_bytes(&self) -> usize {
        self.ledger.held_bytes()
    }

    fn session(&self, key: SessionKey) -> Option<&HubSession> {
        self.sessions.get(&key.0)?.get(&key.1)
    }

    fn session_mut(&mut self, key: SessionKey) -> Option<&mut HubSession> {
        self.sessions.get_mut(&key.0)?.get_mut(&key.1)
    }

    fn emit_session(&self, key: SessionKey, frame: upstream_frame::Frame) {
        let Some(queue) = self.links.get(&key.0) else {
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

    fn reply(&self, key: SessionKey, reply: Reply) {
        let frame = upstream_frame::Frame::Reply(SessionReply {
            session: key.1,
            reply: Some(reply),
        });
        if frame.encoded_len() > self.config.max_frame_bytes {
            let id = match &frame {
                upstream_frame::Frame::Reply(r) => r.reply.as_ref().map_or(0, |r| r.id),
                _ => 0,
            };
            HubCounters::bump(&self.counters.oversized_replies);
            return self.reply_error(key, id, ErrorCode::LimitExceeded);
        }
        self.emit_session(key, frame);
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

    /// Sends `push` once to every Link with subscribers of `channel`.
    fn broadcast(&self, channel: &str, push: Push) {
        let Some(state) = self.channels.get(channel) else {
            return;
        };
        let frame = UpstreamFrame {
            frame: Some(upstream_frame::Frame::Push(ChannelPush {
                channel: channel.to_owned(),
                push: Some(push),
            })),
        };
        for link in state.links.keys() {
            let Some(queue) = self.links.get(link) else {
                continue;
            };
            if queue.push_channel(channel, frame.clone()) == Queued::Overflowed {
                HubCounters::bump(&self.counters.link_channel_overflows);
                tracing::debug!(link, channel, "hub: link queue full, channel lagging");
            }
        }
    }

    /// A session opened on a sidecar with its connect command; `check` is the outcome of
    /// verifying its token (done outside the lock).
    pub fn open(&mut self, link: u64, open: SessionOpen, check: TokenCheck) {
        if !self.has_link(link) {
            return;
        }
        let key = (link, open.session);
        let command = open.connect.unwrap_or_default();
        let mut session = HubSession {
            client: open.client,
            user: String::new(),
            usable: false,
            protobuf: open.encoding == Encoding::Protobuf as i32,
            channels: HashSet::new(),
            expires_at: None,
        };
        let valid = match check {
            TokenCheck::Invalid => Err(None),
            TokenCheck::Expired => Err(Some(ErrorCode::TokenExpired)),
            TokenCheck::Valid { user, expires_at } => Ok((user, expires_at)),
        };
        if let Ok((user, expires_at)) = &valid {
            session.user = user.clone();
            session.usable = true;
            session.expires_at = *expires_at;
        }
        let client = session.client.clone();
        self.insert_session(key, session);
        match valid {
            Err(None) => self.disconnect(key, &Disconnect::INVALID_TOKEN),
            Err(Some(code)) => self.reply_error(key, command.id, code),
            Ok((user, expires_at)) => {
                self.users.entry(user).or_default().insert(key);
                if let Some(at) = expires_at {
                    self.schedule_expiry(at, key);
                }
                let result = ConnectResult {
                    client,
                    version: SERVER_VERSION.to_owned(),
                    expires: expires_at.is_some(),
                    ttl: ttl_of(expires_at),
                    ..Default::default()
                };
                self.reply(
                    key,
                    Reply {
                        id: command.id,
                        connect: Some(result),
                        ..Default::default()
                    },
                );
            }
        }
    }

    fn insert_session(&mut self, key: SessionKey, session: HubSession) {
        let previous = self
            .sessions
            .entry(key.0)
            .or_default()
            .insert(key.1, session);
        if let Some(previous) = previous {
            // A reused session id: forget the old one's subscriptions first.
            self.release_session(key, previous);
        } else {
            self.session_count += 1;
        }
    }

    fn schedule_expiry(&mut self, at: u64, key: SessionKey) {
        self.expiries.push(Reverse((at, key)));
        if self.expiries.len() > 2 * self.session_count + EXPIRY_SLACK {
            let live: Vec<Reverse<(u64, SessionKey)>> = self
                .sessions
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

    /// A session ended on its sidecar.
    pub fn close(&mut self, key: SessionKey) {
        self.remove_session(key);
    }

    fn remove_session(&mut self, key: SessionKey) {
        let Some(sessions) = self.sessions.get_mut(&key.0) else {
            return;
        };
        let Some(session) = sessions.remove(&key.1) else {
            return;
        };
        if sessions.is_empty() && !self.links.contains_key(&key.0) {
            self.sessions.remove(&key.0);
        }
        self.session_count = self.session_count.saturating_sub(1);
        self.release_session(key, session);
    }

    fn release_session(&mut self, key: SessionKey, session: HubSession) {
        self.forget_user(key, &session.user);
        if let Some(queue) = self.links.get(&key.0) {
            queue.forget_session(key.1);
        }
        for channel in session.channels {
            self.remove_subscriber(&channel, key);
        }
    }

    fn forget_user(&mut self, key: SessionKey, user: &str) {
        if let Some(keys) = self.users.get_mut(user) {
            keys.remove(&key);
            if keys.is_empty() {
                self.users.remove(user);
            }
        }
    }

    /// Removes a subscriber and tells the channel (leave push) if anyone listens for it.
    fn remove_subscriber(&mut self, channel: &str, key: SessionKey) {
        let Some(state) = self.channels.get_mut(channel) else {
            return;
        };
        let Some(subscriber) = state.remove_subscriber(key) else {
            return;
        };
        if state.join_leave_subscribers > 0 {
            self.broadcast(channel, leave_push(channel, subscriber.info));
        }
        self.forget_if_idle(channel);
    }

    fn forget_if_idle(&mut self, channel: &str) {
        if self.channels.get(channel).is_some_and(Channel::is_idle) {
            self.channels.remove(channel);
            self.publish_gauges();
        }
    }

    fn publish_gauges(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let count = u64::try_from(self.channels.len()).unwrap_or(u64::MAX);
        self.counters.channels.store(count, Relaxed);
        let bytes = u64::try_from(self.ledger.held_bytes()).unwrap_or(u64::MAX);
        self.counters.history_bytes.store(bytes, Relaxed);
    }

    /// A command of an open session; `refresh` is the verified token of a refresh command.
    pub fn command(&mut self, key: SessionKey, command: Command, refresh: Option<TokenCheck>) {
        let Some(session) = self.session(key) else {
            return;
        };
        if !session.usable {
            self.disconnect(key, &Disconnect::BAD_REQUEST);
            self.remove_session(key);
            return;
        }
        let id = command.id;
        if let Some(request) = command.subscribe {
            if let Err(code) = self.subscribe(key, id, request) {
                self.reply_error(key, id, code);
            }
        } else if let Some(request) = command.unsubscribe {
            let subscribed = self
                .session_mut(key)
                .is_some_and(|s| s.channels.remove(request.channel.as_str()));
            if subscribed {
                self.membership(key, &request.channel, false, false);
                self.remove_subscriber(&request.channel, key);
            }
            self.reply(
                key,
                Reply {
                    id,
                    unsubscribe: Some(UnsubscribeResult {}),
                    ..Default::default()
                },
            );
        } else if let Some(request) = command.publish {
            let info = self.client_info(key);
            let result = self
                .client_access(key, &request.channel)
                .and_then(|()| self.publish(&request.channel, request.data, info));
            match result {
                Ok(_) => self.reply(
                    key,
                    Reply {
                        id,
                        publish: Some(PublishResult {}),
                        ..Default::default()
                    },
                ),
                Err(code) => self.reply_error(key, id, code),
            }
        } else if let Some(request) = command.presence {
            match self.client_access(key, &request.channel) {
                Ok(()) => {
                    let presence = self.presence(&request.channel);
                    self.reply(
                        key,
                        Reply {
                            id,
                            presence: Some(presence),
                            ..Default::default()
                        },
                    );
                }
                Err(code) => self.reply_error(key, id, code),
            }
        } else if let Some(request) = command.presence_stats {
            match self.client_access(key, &request.channel) {
                Ok(()) => {
                    let stats = self.presence_stats(&request.channel);
                    self.reply(
                        key,
                        Reply {
                            id,
                            presence_stats: Some(stats),
                            ..Default::default()
                        },
                    );
                }
                Err(code) => self.reply_error(key, id, code),
            }
        } else if let Some(request) = command.history {
            let result = self
                .client_access(key, &request.channel)
                .and_then(|()| self.client_readable(key, &request.channel))
                .and_then(|()| self.history(&request));
            match result {
                Ok(result) => self.reply(
                    key,
                    Reply {
                        id,
                        history: Some(result),
                        ..Default::default()
                    },
                ),
                Err(code) => self.reply_error(key, id, code),
            }
        } else if let Some(request) = command.rpc {
            if request.method == "echo" {
                self.reply(
                    key,
                    Reply {
                        id,
                        rpc: Some(RpcResult { data: request.data }),
                        ..Default::default()
                    },
                );
            } else {
                self.reply_error(key, id, ErrorCode::MethodNotFound);
            }
        } else if let Some(request) = command.send {
            let push = Push {
                message: Some(Message { data: request.data }),
                ..Default::default()
            };
            self.reply(
                key,
                Reply {
                    push: Some(push),
                    ..Default::default()
                },
            );
        } else if command.refresh.is_some() {
            self.refresh(key, id, refresh.unwrap_or(TokenCheck::Invalid));
        } else if command.sub_refresh.is_some() {
            self.reply_error(key, id, ErrorCode::NotAvailable);
        } else {
            self.disconnect(key, &Disconnect::BAD_REQUEST);
            self.remove_session(key);
        }
    }

    /// Channel name and private-channel rule for a client operation.
    fn client_access(&self, _key: SessionKey, channel: &str) -> Result<(), ErrorCode> {
        validate_channel(channel, self.config.channel_max_length)?;
        client_may_access(channel)
    }

    /// JSON clients cannot receive a binary-only channel (107).
    fn client_readable(&self, key: SessionKey, channel: &str) -> Result<(), ErrorCode> {
        let protobuf = self.session(key).is_some_and(|s| s.protobuf);
        if !protobuf && self.binary.matches(channel) {
            return Err(ErrorCode::BadRequest);
        }
        Ok(())
    }

    fn client_info(&self, key: SessionKey) -> Option<ClientInfo> {
        self.session(key).map(|s| ClientInfo {
            user: s.user.clone(),
            client: s.client.clone(),
            ..Default::default()
        })
    }

    /// Room for one more channel named `channel` (106 at `hub.max_channels`).
    fn channel_room(&self, channel: &str) -> Result<(), ErrorCode> {
        if !self.channels.contains_key(channel) && self.channels.len() >= self.config.max_channels {
            return Err(ErrorCode::LimitExceeded);
        }
        Ok(())
    }

    fn subscribe(
        &mut self,
        key: SessionKey,
        id: u32,
        request: SubscribeRequest,
    ) -> Result<(), ErrorCode> {
        self.client_access(key, &request.channel)?;
        self.client_readable(key, &request.channel)?;
        let info = self.client_info(key).ok_or(ErrorCode::Internal)?;
        let limit = self.config.client_channel_limit;
        let session = self.session(key).ok_or(ErrorCode::Internal)?;
        if session.channels.contains(request.channel.as_str()) {
            return Err(ErrorCode::AlreadySubscribed);
        }
        if session.channels.len() >= limit {
            return Err(ErrorCode::LimitExceeded);
        }
        self.channel_room(&request.channel)?;
        self.enforce_history();
        let name: Arc<str> = match self.channels.get_key_value(request.channel.as_str()) {
            Some((name, _)) => name.clone(),
            None => Arc::from(request.channel.as_str()),
        };
        // From here on nothing fails: the session and the channel are updated together.
        if let Some(session) = self.session_mut(key) {
            session.channels.insert(name.clone());
        }
        let channel = self.channels.entry(name.clone()).or_default();
        let recoverable = request.recoverable || request.recover;
        let mut result = SubscribeResult {
            recoverable,
            positioned: request.positioned || recoverable,
            epoch: channel.epoch.clone(),
            offset: channel.top,
            was_recovering: request.recover,
            ..Default::default()
        };
        if request.recover
            && let Some(publications) = channel.since(&request.epoch, request.offset)
        {
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
        let announce = channel.join_leave_subscribers > 0;
        self.publish_gauges();
        let reply = Reply {
            id,
            subscribe: Some(result),
            ..Default::default()
        };
        if reply.encoded_len() > self.config.max_frame_bytes {
            // Recovery too large for one frame: subscribe without it; the client sees
            // recovered=false and reloads state.
            HubCounters::bump(&self.counters.oversized_replies);
            let mut reply = reply;
            if let Some(result) = reply.subscribe.as_mut() {
                result.publications.clear();
                result.recovered = false;
            }
            self.reply(key, reply);
        } else {
            self.reply(key, reply);
        }
        self.membership(key, &request.channel, true, request.join_leave);
        if announce {
            let push = Push {
                channel: request.channel.clone(),
                join: Some(Join { info: Some(info) }),
                ..Default::default()
            };
            self.broadcast(&request.channel, push);
        }
        Ok(())
    }

    /// Publishes to a channel after the shared checks (name, data, channel cap, frame size):
    /// next offset, history, one push per Link with subscribers. Used by client publishes and
    /// the server API alike.
    pub fn publish(
        &mut self,
        channel: &str,
        data: Bytes,
        info: Option<ClientInfo>,
    ) -> Result<(u64, String), ErrorCode> {
        validate_channel(channel, self.config.channel_max_length)?;
        check_data(&data, self.binary.matches(channel))?;
        self.channel_room(channel)?;
        let mut publication = Publication {
            data,
            info,
            ..Default::default()
        };
        // Offset not yet known: count its varint at the widest.
        let push_len = publication.encoded_len() + channel.len() * 2 + 32;
        if push_len > self.config.max_frame_bytes {
            return Err(ErrorCode::LimitExceeded);
        }
        let history_size = self.config.history_size;
        let name: Arc<str> = match self.channels.get_key_value(channel) {
            Some((name, _)) => name.clone(),
            None => Arc::from(channel),
        };
        let state = self.channels.entry(name.clone()).or_default();
        state.top += 1;
        publication.offset = state.top;
        let position = (state.top, state.epoch.clone());
        if history_size > 0 {
            self.ledger
                .store(&name, state, publication.clone(), Instant::now());
            while state.history.len() > history_size {
                state.pop_front(&mut self.ledger);
            }
        }
        let push = Push {
            channel: channel.to_owned(),
            r#pub: Some(publication),
            ..Default::default()
        };
        self.broadcast(channel, push);
        self.enforce_history();
        self.forget_if_idle(channel);
        self.publish_gauges();
        Ok(position)
    }

    /// Drops history past its TTL or beyond `hub.history_max_bytes`, oldest first across
    /// channels; O(dropped) plus an amortised compaction of the ledger.
    fn enforce_history(&mut self) {
        let max_bytes = self.config.history_max_bytes;
        let ttl = self.config.history_ttl;
        let now = Instant::now();
        let mut emptied: Vec<Arc<str>> = Vec::new();
        while let Oldest::Drop {
            channel,
            seq,
            evicted,
        } = self.ledger.next_to_drop(max_bytes, ttl, now)
        {
            let Some(state) = self.channels.get_mut(&channel) else {
                continue;
            };
            if state.history.front().is_some_and(|s| s.seq == seq) {
                state.pop_front(&mut self.ledger);
                if evicted {
                    self.ledger.count_eviction();
                    HubCounters::bump(&self.counters.history_evictions);
                }
                if state.is_idle() {
                    emptied.push(channel);
                }
            }
        }
        if self.ledger.needs_compaction() {
            self.ledger.compact(&self.channels);
        }
        for channel in emptied {
            self.forget_if_idle(&channel);
        }
        self.publish_gauges();
    }

    /// Presence of a channel: client id → info.
    pub fn presence(&self, channel: &str) -> PresenceResult {
        let presence = self
            .channels
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

    fn presence_stats(&self, channel: &str) -> PresenceStatsResult {
        let Some(state) = self.channels.get(channel) else {
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

    /// History of a channel: `limit` (> 0 at most that many, < 0 all, 0 none), `since` a
    /// position (error 112 when it is gone), `reverse` newest first. A channel the hub does
    /// not know answers an empty history with a fresh epoch (nothing is created).
    pub fn history(&mut self, request: &HistoryRequest) -> Result<HistoryResult, ErrorCode> {
        validate_channel(&request.channel, self.config.channel_max_length)?;
        self.enforce_history();
        let since = request.since.as_ref().map(|p| (p.epoch.as_str(), p.offset));
        let result = match self.channels.get(request.channel.as_str()) {
            Some(channel) => channel.history(request.limit, since, request.reverse),
            None => Channel::new().history(request.limit, since, request.reverse),
        }?;
        if result.encoded_len() + 64 > self.config.max_frame_bytes {
            HubCounters::bump(&self.counters.oversized_replies);
            return Err(ErrorCode::LimitExceeded);
        }
        Ok(result)
    }

    fn refresh(&mut self, key: SessionKey, id: u32, check: TokenCheck) {
        let secret_set = self.config.token_hmac_secret.is_some();
        let Some(session) = self.session(key) else {
            return;
        };
        match check {
            TokenCheck::Valid { user, expires_at } if user == session.user => {
                let client = session.client.clone();
                if secret_set {
                    if let Some(session) = self.session_mut(key) {
                        session.expires_at = expires_at;
                    }
                    if let Some(at) = expires_at {
                        self.schedule_expiry(at, key);
                    }
                }
                let expires_at = self.session(key).and_then(|s| s.expires_at);
                let result = RefreshResult {
                    client,
                    version: SERVER_VERSION.to_owned(),
                    expires: expires_at.is_some(),
                    ttl: ttl_of(expires_at),
                };
                self.reply(
                    key,
                    Reply {
                        id,
                        refresh: Some(result),
                        ..Default::default()
                    },
                );
            }
            TokenCheck::Expired => self.reply_error(key, id, ErrorCode::TokenExpired),
            TokenCheck::Valid { .. } | TokenCheck::Invalid => {
                self.disconnect(key, &Disconnect::INVALID_TOKEN);
                self.remove_session(key);
            }
        }
    }

    /// Disconnects every session of `user`, or only its connection `client` when given;
    /// returns how many.
    pub fn disconnect_user(
        &mut self,
        user: &str,
        client: Option<&str>,
        disconnect: &Disconnect,
    ) -> usize {
        let keys: Vec<SessionKey> = self
            .users
            .get(user)
            .map(|keys| {
                keys.iter()
                    .copied()
                    .filter(|key| {
                        client.is_none_or(|c| self.session(*key).is_some_and(|s| s.client == c))
                    })
                    .collect()
            })
            .unwrap_or_default();
        for key in &keys {
            self.disconnect(*key, disconnect);
            self.remove_session(*key);
        }
        keys.len()
    }

    /// Repairs a Link after its queue overflowed and drained: sessions of lagging channels are
    /// unsubscribed with 2500 (they resubscribe and recover), stalled sessions are
    /// disconnected with 3010.
    pub fn repair(&mut self, link: u64, repairs: Repairs) {
        if !self.has_link(link) {
            return;
        }
        for name in repairs.channels {
            let sessions: Vec<u64> = self
                .channels
                .get(name.as_str())
                .and_then(|c| c.links.get(&link))
                .map(|s| s.iter().copied().collect())
                .unwrap_or_default();
            for id in sessions {
                let key = (link, id);
                if let Some(session) = self.session_mut(key) {
                    session.channels.remove(name.as_str());
                }
                self.membership(key, &name, false, false);
                self.reply(
                    key,
                    Reply {
                        push: Some(Push {
                            channel: name.clone(),
                            unsubscribe: Some(Unsubscribe {
                                code: UNSUBSCRIBE_INSUFFICIENT_STATE,
                                reason: "insufficient state".to_owned(),
                            }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                );
                self.remove_subscriber(&name, key);
                HubCounters::bump(&self.counters.insufficient_state_unsubscribes);
            }
        }
        for id in repairs.sessions {
            let key = (link, id);
            if self.session(key).is_some() {
                self.disconnect(key, &INSUFFICIENT_STATE);
                self.remove_session(key);
                HubCounters::bump(&self.counters.insufficient_state_disconnects);
            }
        }
    }

    /// Periodic upkeep, O(expired): connections past their token `exp` get 3005, history past
    /// its TTL goes.
    pub fn sweep(&mut self) {
        let now = unix_now();
        while let Some(Reverse((at, key))) = self.expiries.peek().copied() {
            if at > now {
                break;
            }
            self.expiries.pop();
            if self.session(key).is_some_and(|s| s.expires_at == Some(at)) {
                self.disconnect(key, &Disconnect::new(3005, "connection expired"));
                self.remove_session(key);
            }
        }
        self.enforce_history();
    }
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
    use crate::protocol::client::{PublishRequest, SubscribeRequest};

    fn state(link_queue_max_bytes: usize) -> (HubState, Arc<LinkQueue>) {
        let config = HubConfig {
            link_queue_max_bytes,
            ..HubConfig::default()
        };
        let mut state = HubState::new(config, Arc::new(HubCounters::default()));
        let queue = Arc::new(LinkQueue::new(link_queue_max_bytes));
        state.add_link(1, queue.clone());
        (state, queue)
    }

    fn open(state: &mut HubState, session: u64) {
        let open = SessionOpen {
            session,
            client: format!("c{session}"),
            ..Default::default()
        };
        state.open(
            1,
            open,
            TokenCheck::Valid {
                user: String::new(),
                expires_at: None,
            },
        );
    }

    fn command(state: &mut HubState, session: u64, command: Command) {
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

    async fn drain(queue: &LinkQueue) -> Vec<upstream_frame::Frame> {
        let mut frames = Vec::new();
        while queue.queued_bytes() > 0 {
            if let Some(frame) = queue.pop().await.and_then(|f| f.frame) {
                frames.push(frame);
            }
        }
        frames
    }

    #[tokio::test]
    async fn overflowing_channel_is_unsubscribed_with_2500_once_room_returns() {
        let (mut state, queue) = state(20_000);
        open(&mut state, 1);
        open(&mut state, 2);
        command(&mut state, 1, subscribe("busy"));
        command(&mut state, 2, subscribe("quiet"));
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
        command(&mut state, 1, subscribe("busy"));
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
        let (mut state, queue) = state(20_000);
        open(&mut state, 1);
        open(&mut state, 2);
        command(&mut state, 1, subscribe("room"));
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
        command(&mut state, 2, rpc);
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

    #[test]
    fn channel_limit_and_channel_cap_answer_106() {
        let (mut state, _queue) = state(1 << 20);
        state.set_config(HubConfig {
            client_channel_limit: 2,
            max_channels: 3,
            ..HubConfig::default()
        });
        open(&mut state, 1);
        open(&mut state, 2);
        for channel in ["a", "b"] {
            assert_eq!(state.subscribe((1, 1), 1, request(channel)), Ok(()));
        }
        assert_eq!(
            state.subscribe((1, 1), 1, request("c")),
            Err(ErrorCode::LimitExceeded)
        );
        assert_eq!(state.subscribe((1, 2), 1, request("c")), Ok(()));
        assert_eq!(
            state.subscribe((1, 2), 1, request("d")),
            Err(ErrorCode::LimitExceeded),
            "max_channels"
        );
        assert_eq!(
            state.publish("e", Bytes::from_static(b"1"), None),
            Err(ErrorCode::LimitExceeded)
        );
        assert!(state.publish("a", Bytes::from_static(b"1"), None).is_ok());
    }

    fn request(channel: &str) -> SubscribeRequest {
        SubscribeRequest {
            channel: channel.to_owned(),
            ..Default::default()
        }
    }

    #[test]
    fn removing_a_link_forgets_its_sessions_and_subscriptions() {
        let (mut state, queue) = state(1 << 20);
        open(&mut state, 1);
        command(&mut state, 1, subscribe("a"));
        let leftovers = state.take_link(1);
        assert!(queue.is_dead());
        assert_eq!(state.session_count(), 0);
        state.drop_link_subscriptions(1, leftovers.channels);
        assert_eq!(state.channel_count(), 0);
        // Frames of the removed Link are not applied.
        open(&mut state, 2);
        assert_eq!(state.session_count(), 0);
    }
}
