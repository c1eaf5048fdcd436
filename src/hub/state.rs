//! The hub's channel state: sessions, subscriptions, presence, history with offsets and epochs,
//! and the frames each operation sends back over the Links.
//!
//! Guarantee: every operation runs to completion under one lock and only queues frames with
//! `try_send`, so no Link and no client can stall the hub; a Link whose queue is full is
//! dropped (its sidecar reconnects).

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::auth::{TokenCheck, check_token};
use crate::config::{HubConfig, MAX_CHANNEL_LENGTH};
use crate::linkproto::{
    ChannelPush, Membership, SessionDisconnect, SessionOpen, SessionReply, UpstreamFrame,
    upstream_frame,
};
use crate::protocol::client::{
    ClientInfo, Command, ConnectResult, HistoryRequest, HistoryResult, Join, Leave, Message,
    PresenceResult, PresenceStatsResult, Publication, PublishResult, Push, RefreshResult, Reply,
    RpcResult, SubscribeRequest, SubscribeResult, UnsubscribeResult,
};
use crate::protocol::{Disconnect, ErrorCode};
use crate::session::handle::SERVER_VERSION;

/// A session as the hub knows it: Link id plus the sidecar's session id.
pub type SessionKey = (u64, u64);

#[derive(Debug)]
struct HubSession {
    client: String,
    user: String,
    /// False after a failed connect: any command then disconnects with 3501.
    usable: bool,
    /// Subscribed channels.
    channels: HashSet<String>,
    /// Unix seconds after which the connection expires (token `exp`).
    expires_at: Option<u64>,
}

#[derive(Debug)]
struct Stored {
    publication: Publication,
    at: Instant,
}

#[derive(Debug, Clone)]
struct Subscriber {
    info: ClientInfo,
    join_leave: bool,
}

#[derive(Debug)]
struct Channel {
    epoch: String,
    top: u64,
    history: VecDeque<Stored>,
    subscribers: HashMap<SessionKey, Subscriber>,
    /// Subscribers per Link, so a publication goes once to each Link that has any.
    links: HashMap<u64, usize>,
    join_leave_subscribers: usize,
}

impl Channel {
    fn new() -> Channel {
        Channel {
            epoch: new_epoch(),
            top: 0,
            history: VecDeque::new(),
            subscribers: HashMap::new(),
            links: HashMap::new(),
            join_leave_subscribers: 0,
        }
    }

    fn trim(&mut self, ttl: Duration) {
        let now = Instant::now();
        while self
            .history
            .front()
            .is_some_and(|stored| now.duration_since(stored.at) > ttl)
        {
            self.history.pop_front();
        }
    }
}

fn new_epoch() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    id[..8].to_owned()
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

/// All hub state.
#[derive(Debug)]
pub struct HubState {
    config: HubConfig,
    links: HashMap<u64, mpsc::Sender<UpstreamFrame>>,
    sessions: HashMap<SessionKey, HubSession>,
    channels: HashMap<String, Channel>,
    users: HashMap<String, HashSet<SessionKey>>,
    /// Links whose queue overflowed during the current operation.
    overloaded: Vec<u64>,
}

impl HubState {
    /// Empty state.
    pub fn new(config: HubConfig) -> HubState {
        HubState {
            config,
            links: HashMap::new(),
            sessions: HashMap::new(),
            channels: HashMap::new(),
            users: HashMap::new(),
            overloaded: Vec::new(),
        }
    }

    /// Replaces the config used by later operations.
    pub fn set_config(&mut self, config: HubConfig) {
        self.config = config;
    }

    /// Registers a Link's outbound queue.
    pub fn add_link(&mut self, link: u64, sender: mpsc::Sender<UpstreamFrame>) {
        self.links.insert(link, sender);
    }

    /// Forgets a Link and every session on it.
    pub fn remove_link(&mut self, link: u64) {
        self.links.remove(&link);
        let keys: Vec<SessionKey> = self
            .sessions
            .keys()
            .filter(|k| k.0 == link)
            .copied()
            .collect();
        for key in keys {
            self.remove_session(key);
        }
    }

    /// Links that overflowed since the last call; the caller drops them.
    pub fn take_overloaded(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.overloaded)
    }

    /// Number of live sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    fn emit(&mut self, link: u64, frame: upstream_frame::Frame) {
        if let Some(sender) = self.links.get(&link)
            && sender
                .try_send(UpstreamFrame { frame: Some(frame) })
                .is_err()
        {
            self.overloaded.push(link);
        }
    }

    fn reply(&mut self, key: SessionKey, reply: Reply) {
        self.emit(
            key.0,
            upstream_frame::Frame::Reply(SessionReply {
                session: key.1,
                reply: Some(reply),
            }),
        );
    }

    fn reply_error(&mut self, key: SessionKey, id: u32, code: ErrorCode) {
        self.reply(
            key,
            Reply {
                id,
                error: Some(code.to_error()),
                ..Default::default()
            },
        );
    }

    fn disconnect(&mut self, key: SessionKey, disconnect: &Disconnect) {
        self.emit(
            key.0,
            upstream_frame::Frame::Disconnect(SessionDisconnect {
                session: key.1,
                code: disconnect.code,
                reason: disconnect.reason.to_string(),
            }),
        );
    }

    fn membership(&mut self, key: SessionKey, channel: &str, subscribed: bool, join_leave: bool) {
        self.emit(
            key.0,
            upstream_frame::Frame::Membership(Membership {
                session: key.1,
                channel: channel.to_owned(),
                subscribed,
                join_leave,
            }),
        );
    }

    /// Sends `push` once to every Link with subscribers of `channel`.
    fn broadcast(&mut self, channel: &str, push: Push) {
        let Some(state) = self.channels.get(channel) else {
            return;
        };
        let links: Vec<u64> = state.links.keys().copied().collect();
        for link in links {
            self.emit(
                link,
                upstream_frame::Frame::Push(ChannelPush {
                    channel: channel.to_owned(),
                    push: Some(push.clone()),
                }),
            );
        }
    }

    fn check_token(&self, token: &str) -> TokenCheck {
        match &self.config.token_hmac_secret {
            None => TokenCheck::Valid {
                user: String::new(),
                expires_at: None,
            },
            Some(secret) => check_token(token, secret),
        }
    }

    /// A session opened on a sidecar with its connect command.
    pub fn open(&mut self, link: u64, open: SessionOpen) {
        let key = (link, open.session);
        let command = open.connect.unwrap_or_default();
        let request = command.connect.unwrap_or_default();
        let mut session = HubSession {
            client: open.client,
            user: String::new(),
            usable: false,
            channels: HashSet::new(),
            expires_at: None,
        };
        match self.check_token(&request.token) {
            TokenCheck::Invalid => {
                self.sessions.insert(key, session);
                self.disconnect(key, &Disconnect::INVALID_TOKEN);
            }
            TokenCheck::Expired => {
                self.sessions.insert(key, session);
                self.reply_error(key, command.id, ErrorCode::TokenExpired);
            }
            TokenCheck::Valid { user, expires_at } => {
                session.user = user.clone();
                session.usable = true;
                session.expires_at = expires_at;
                let result = ConnectResult {
                    client: session.client.clone(),
                    version: SERVER_VERSION.to_owned(),
                    expires: expires_at.is_some(),
                    ttl: ttl_of(expires_at),
                    ..Default::default()
                };
                self.users.entry(user).or_default().insert(key);
                self.sessions.insert(key, session);
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

    /// A session ended on its sidecar.
    pub fn close(&mut self, key: SessionKey) {
        self.remove_session(key);
    }

    fn remove_session(&mut self, key: SessionKey) {
        let Some(session) = self.sessions.remove(&key) else {
            return;
        };
        if let Some(keys) = self.users.get_mut(&session.user) {
            keys.remove(&key);
            if keys.is_empty() {
                self.users.remove(&session.user);
            }
        }
        for channel in session.channels {
            self.remove_subscriber(&channel, key);
        }
    }

    /// Removes a subscriber and tells the channel (leave push) if anyone listens for it.
    fn remove_subscriber(&mut self, channel: &str, key: SessionKey) {
        let Some(state) = self.channels.get_mut(channel) else {
            return;
        };
        let Some(subscriber) = state.subscribers.remove(&key) else {
            return;
        };
        if subscriber.join_leave {
            state.join_leave_subscribers -= 1;
        }
        if let Some(count) = state.links.get_mut(&key.0) {
            *count -= 1;
            if *count == 0 {
                state.links.remove(&key.0);
            }
        }
        if state.join_leave_subscribers > 0 {
            let push = Push {
                channel: channel.to_owned(),
                leave: Some(Leave {
                    info: Some(subscriber.info),
                }),
                ..Default::default()
            };
            self.broadcast(channel, push);
        }
    }

    /// A command of an open session.
    pub fn command(&mut self, key: SessionKey, command: Command) {
        let Some(session) = self.sessions.get(&key) else {
            return;
        };
        if !session.usable {
            self.disconnect(key, &Disconnect::BAD_REQUEST);
            self.remove_session(key);
            return;
        }
        let id = command.id;
        if let Some(request) = command.subscribe {
            self.subscribe(key, id, request);
        } else if let Some(request) = command.unsubscribe {
            let subscribed = self
                .sessions
                .get_mut(&key)
                .is_some_and(|s| s.channels.remove(&request.channel));
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
            if let Err(code) = validate_channel(&request.channel) {
                return self.reply_error(key, id, code);
            }
            let info = self.client_info(key);
            self.publish(&request.channel, request.data, info);
            self.reply(
                key,
                Reply {
                    id,
                    publish: Some(PublishResult {}),
                    ..Default::default()
                },
            );
        } else if let Some(request) = command.presence {
            let presence = self.presence(&request.channel);
            self.reply(
                key,
                Reply {
                    id,
                    presence: Some(presence),
                    ..Default::default()
                },
            );
        } else if let Some(request) = command.presence_stats {
            let stats = self.presence_stats(&request.channel);
            self.reply(
                key,
                Reply {
                    id,
                    presence_stats: Some(stats),
                    ..Default::default()
                },
            );
        } else if let Some(request) = command.history {
            match self.history(&request) {
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
        } else if let Some(request) = command.refresh {
            self.refresh(key, id, &request.token);
        } else if command.sub_refresh.is_some() {
            self.reply_error(key, id, ErrorCode::NotAvailable);
        } else {
            self.disconnect(key, &Disconnect::BAD_REQUEST);
            self.remove_session(key);
        }
    }

    fn client_info(&self, key: SessionKey) -> Option<ClientInfo> {
        self.sessions.get(&key).map(|s| ClientInfo {
            user: s.user.clone(),
            client: s.client.clone(),
            ..Default::default()
        })
    }

    fn subscribe(&mut self, key: SessionKey, id: u32, request: SubscribeRequest) {
        if let Err(code) = validate_channel(&request.channel) {
            return self.reply_error(key, id, code);
        }
        if request.channel.starts_with('$') {
            return self.reply_error(key, id, ErrorCode::PermissionDenied);
        }
        let Some(info) = self.client_info(key) else {
            return;
        };
        if let Some(session) = self.sessions.get_mut(&key)
            && !session.channels.insert(request.channel.clone())
        {
            return self.reply_error(key, id, ErrorCode::AlreadySubscribed);
        }
        let ttl = self.config.history_ttl;
        let channel = self
            .channels
            .entry(request.channel.clone())
            .or_insert_with(Channel::new);
        channel.trim(ttl);
        let recoverable = request.recoverable || request.recover;
        let mut result = SubscribeResult {
            recoverable,
            positioned: request.positioned || recoverable,
            epoch: channel.epoch.clone(),
            offset: channel.top,
            was_recovering: request.recover,
            ..Default::default()
        };
        if request.recover {
            let same_stream = request.epoch == channel.epoch && request.offset <= channel.top;
            let first_kept = channel
                .history
                .front()
                .map_or(channel.top + 1, |s| s.publication.offset);
            if same_stream && request.offset + 1 >= first_kept {
                result.publications = channel
                    .history
                    .iter()
                    .filter(|s| s.publication.offset > request.offset)
                    .map(|s| s.publication.clone())
                    .collect();
                result.recovered = true;
            }
        }
        channel.subscribers.insert(
            key,
            Subscriber {
                info: info.clone(),
                join_leave: request.join_leave,
            },
        );
        *channel.links.entry(key.0).or_default() += 1;
        if request.join_leave {
            channel.join_leave_subscribers += 1;
        }
        let announce = channel.join_leave_subscribers > 0;
        self.reply(
            key,
            Reply {
                id,
                subscribe: Some(result),
                ..Default::default()
            },
        );
        self.membership(key, &request.channel, true, request.join_leave);
        if announce {
            let push = Push {
                channel: request.channel.clone(),
                join: Some(Join { info: Some(info) }),
                ..Default::default()
            };
            self.broadcast(&request.channel, push);
        }
    }

    /// Publishes to a channel: next offset, history, one push per Link with subscribers.
    pub fn publish(
        &mut self,
        channel: &str,
        data: Bytes,
        info: Option<ClientInfo>,
    ) -> (u64, String) {
        let ttl = self.config.history_ttl;
        let history_size = self.config.history_size;
        let state = self
            .channels
            .entry(channel.to_owned())
            .or_insert_with(Channel::new);
        state.trim(ttl);
        state.top += 1;
        let publication = Publication {
            data,
            info,
            offset: state.top,
            ..Default::default()
        };
        if history_size > 0 {
            state.history.push_back(Stored {
                publication: publication.clone(),
                at: Instant::now(),
            });
            while state.history.len() > history_size {
                state.history.pop_front();
            }
        }
        let position = (state.top, state.epoch.clone());
        let push = Push {
            channel: channel.to_owned(),
            r#pub: Some(publication),
            ..Default::default()
        };
        self.broadcast(channel, push);
        position
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
    /// position (error 112 when it is gone), `reverse` newest first.
    pub fn history(&mut self, request: &HistoryRequest) -> Result<HistoryResult, ErrorCode> {
        validate_channel(&request.channel)?;
        let ttl = self.config.history_ttl;
        let state = self
            .channels
            .entry(request.channel.clone())
            .or_insert_with(Channel::new);
        state.trim(ttl);
        let mut publications: Vec<&Publication> =
            state.history.iter().map(|s| &s.publication).collect();
        if let Some(since) = &request.since {
            let first_kept = publications.first().map_or(state.top + 1, |p| p.offset);
            if since.epoch != state.epoch
                || since.offset > state.top
                || since.offset + 1 < first_kept
            {
                return Err(ErrorCode::UnrecoverablePosition);
            }
            publications.retain(|p| p.offset > since.offset);
        }
        if request.reverse {
            publications.reverse();
        }
        let limit = match request.limit {
            0 => 0,
            n if n < 0 => publications.len(),
            n => usize::try_from(n).unwrap_or(usize::MAX),
        };
        publications.truncate(limit);
        Ok(HistoryResult {
            publications: publications.into_iter().cloned().collect(),
            epoch: state.epoch.clone(),
            offset: state.top,
        })
    }

    fn refresh(&mut self, key: SessionKey, id: u32, token: &str) {
        let secret_set = self.config.token_hmac_secret.is_some();
        let check = self.check_token(token);
        let Some(session) = self.sessions.get_mut(&key) else {
            return;
        };
        match check {
            TokenCheck::Valid { expires_at, .. } => {
                if secret_set {
                    session.expires_at = expires_at;
                }
                let result = RefreshResult {
                    client: session.client.clone(),
                    version: SERVER_VERSION.to_owned(),
                    expires: session.expires_at.is_some(),
                    ttl: ttl_of(session.expires_at),
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
            TokenCheck::Invalid => {
                self.disconnect(key, &Disconnect::INVALID_TOKEN);
                self.remove_session(key);
            }
        }
    }

    /// Disconnects every session of `user`; returns how many.
    pub fn disconnect_user(&mut self, user: &str, disconnect: &Disconnect) -> usize {
        let keys: Vec<SessionKey> = self
            .users
            .get(user)
            .map(|keys| keys.iter().copied().collect())
            .unwrap_or_default();
        for key in &keys {
            self.disconnect(*key, disconnect);
            self.remove_session(*key);
        }
        keys.len()
    }

    /// Periodic upkeep: expires connections past their token `exp` (3005) and forgets
    /// channels with no subscribers and no history left.
    pub fn sweep(&mut self) {
        let now = unix_now();
        let expired: Vec<SessionKey> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.expires_at.is_some_and(|at| at <= now))
            .map(|(key, _)| *key)
            .collect();
        for key in expired {
            self.disconnect(key, &Disconnect::new(3005, "connection expired"));
            self.remove_session(key);
        }
        let ttl = self.config.history_ttl;
        self.channels.retain(|_, channel| {
            channel.trim(ttl);
            !channel.subscribers.is_empty() || !channel.history.is_empty()
        });
    }
}

fn ttl_of(expires_at: Option<u64>) -> u32 {
    expires_at
        .map(|at| u32::try_from(at.saturating_sub(unix_now())).unwrap_or(u32::MAX))
        .unwrap_or(0)
}

/// Channel names: 1 to 255 bytes.
pub fn validate_channel(channel: &str) -> Result<(), ErrorCode> {
    if channel.is_empty() {
        Err(ErrorCode::BadRequest)
    } else if channel.len() > MAX_CHANNEL_LENGTH {
        Err(ErrorCode::LimitExceeded)
    } else {
        Ok(())
    }
}
