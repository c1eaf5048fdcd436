//! The hub over a shared engine (Redis): the tasks that feed it and the Link's command path.
//!
//! - the listener applies pub/sub messages to local channels in arrival order and, after a
//!   pub/sub reconnect or a lagging listener, restores the subscriptions and ends every local
//!   subscription with 2500 so SDKs recover from the engine's history;
//! - the event worker writes presence entries and joins / leaves (bounded queue, in order);
//! - the upkeep refreshes this node's presence entries every third of `presence_ttl` and
//!   unsubscribes the pub/sub of channels without local subscribers;
//! - a Link's frames go to [`Lanes`] by session: within a lane frames are applied one after
//!   the other and a command that needs the engine (subscribe, publish, history, presence)
//!   is awaited before the next, so each session's commands keep their order (an engine that
//!   is down answers at once with error 100: commands are sent fail-fast, bounded by
//!   `io_timeout`).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

use super::Hub;
use super::idempotency::IDEMPOTENCY_TTL;
use super::proxy::{PublishGrant, Refusal};
use super::state::{HubState, Prepared, ProxyGrant, PublishOptions, SharedEvent, history_reply};
use crate::engine::redis::{Envelope, HistoryRead, Idempotency, RedisEngine, StreamState};
use crate::hub::namespace::Operation;
use crate::hub::policy::validate_channel;
use crate::lifecycle::{self, PhaseWatch};
use crate::linkproto::{SessionOpen, SidecarFrame, sidecar_frame};
use crate::protocol::ErrorCode;
use crate::protocol::client::{
    ClientInfo, Command, HistoryRequest, PresenceResult, PresenceStatsResult, PublishResult, Reply,
};
use fred::interfaces::EventInterface;

/// Presence / join / leave commands in flight at once from the event worker.
const EVENT_CONCURRENCY: usize = 64;
/// Period of the pub/sub sweep (unsubscribing channels nobody here listens to).
const SWEEP_PERIOD: Duration = Duration::from_secs(2);
/// Presence entries refreshed per batch.
const PRESENCE_BATCH: usize = 256;

/// Lanes of a Link's frames with a shared engine: frames of one session always take the same
/// lane and are applied one after the other (so its commands keep their order while engine
/// commands are awaited); sessions on different lanes proceed side by side.
const LINK_LANES: usize = 16;
/// Frames queued per lane; a full lane holds the Link's reader back (backpressure).
const LANE_FRAMES: usize = 64;

/// The lanes of one Link.
pub(super) struct Lanes {
    senders: Vec<mpsc::Sender<SidecarFrame>>,
    tasks: tokio::task::JoinSet<()>,
}

impl Lanes {
    /// Starts the lanes of `link`.
    pub(super) fn start(hub: &Hub, engine: Arc<RedisEngine>, link: u64) -> Lanes {
        let mut senders = Vec::with_capacity(LINK_LANES);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..LINK_LANES {
            let (sender, mut receiver) = mpsc::channel::<SidecarFrame>(LANE_FRAMES);
            let hub = hub.clone();
            let engine = engine.clone();
            tasks.spawn(async move {
                while let Some(frame) = receiver.recv().await {
                    hub.apply_shared(&engine, link, frame).await;
                }
            });
            senders.push(sender);
        }
        Lanes { senders, tasks }
    }

    /// Queues a frame on its session's lane (waits while that lane is full).
    pub(super) async fn send(&mut self, frame: SidecarFrame) {
        let session = match &frame.frame {
            Some(sidecar_frame::Frame::Open(open)) => open.session,
            Some(sidecar_frame::Frame::Command(command)) => command.session,
            Some(sidecar_frame::Frame::Close(close)) => close.session,
            _ => 0,
        };
        let lane = usize::try_from(session % LINK_LANES as u64).unwrap_or(0);
        if let Some(sender) = self.senders.get(lane) {
            // A lane ends only with the Link; nothing to do with the frame then.
            let _ = sender.send(frame).await;
        }
    }

    /// Lets the lanes apply what they hold, then ends them.
    pub(super) async fn finish(mut self) {
        self.senders.clear();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Keeps a channel (and its pub/sub) alive while a subscription is under way.
pub(crate) struct Interest {
    hub: Hub,
    channel: String,
}

impl Drop for Interest {
    fn drop(&mut self) {
        self.hub.with_state(|s| s.release_interest(&self.channel));
    }
}

impl Hub {
    /// The shared engine, if any.
    pub fn engine(&self) -> Option<Arc<RedisEngine>> {
        self.with_state(|s| s.engine().cloned())
    }

    /// Starts the tasks that serve a shared engine (listener, event worker, upkeep); they
    /// stop when the process is closing.
    pub(super) fn start_shared(
        &self,
        engine: Arc<RedisEngine>,
        events: mpsc::Receiver<SharedEvent>,
        phase: PhaseWatch,
    ) {
        tokio::spawn(listen(self.clone(), engine.clone(), phase.clone()));
        tokio::spawn(work_events(engine.clone(), events, phase.clone()));
        tokio::spawn(upkeep(self.clone(), engine, phase));
    }

    /// Interest in `channel`, its pub/sub subscribed, and its position read (with the history
    /// `read` asks for); the local channel's baseline is set from it.
    async fn prepare_channel(
        &self,
        engine: &RedisEngine,
        channel: &str,
        read: HistoryRead,
    ) -> Result<(Interest, StreamState), ErrorCode> {
        self.with_state(|s| s.mark_interest(channel))?;
        let interest = Interest {
            hub: self.clone(),
            channel: channel.to_owned(),
        };
        engine.ensure_subscribed(channel).await?;
        let stream = engine.stream(channel, read).await?;
        self.with_state(|s| s.baseline(channel, &stream));
        Ok((interest, stream))
    }

    /// Applies one Link frame with a shared engine (see the module doc and [`Lanes`]).
    pub(super) async fn apply_shared(&self, engine: &RedisEngine, link: u64, frame: SidecarFrame) {
        match frame.frame {
            Some(sidecar_frame::Frame::Open(open)) => self.open_shared(engine, link, open).await,
            Some(sidecar_frame::Frame::Command(command)) => {
                let key = (link, command.session);
                if let Some(inner) = command.command {
                    self.command_shared(engine, key, inner).await;
                }
            }
            other => self.apply(link, SidecarFrame { frame: other }),
        }
    }

    async fn open_shared(&self, engine: &RedisEngine, link: u64, open: SessionOpen) {
        let token = open
            .connect
            .as_ref()
            .and_then(|c| c.connect.as_ref())
            .map(|c| c.token.as_str())
            .unwrap_or_default();
        let proxies = self.proxies();
        if token.is_empty() && proxies.connect_enabled() {
            return self.open_through_hook(link, open, proxies);
        }
        let check = self.with_state(|state| state.verify_connection(token));
        let interests = match &check {
            super::auth::TokenCheck::Valid(claims) => {
                self.prepare_channels(engine, &claims.channels).await
            }
            _ => Vec::new(),
        };
        let headers = proxies.keep_headers(&open.headers);
        self.with_state(|state| state.open(link, open, check, headers));
        drop(interests);
    }

    /// Prepares the server-side `channels` of a connect (token claims or the connect hook's
    /// answer); the interests keep them listened to until the subscriptions exist.
    pub(crate) async fn prepare_channels(
        &self,
        engine: &RedisEngine,
        channels: &[String],
    ) -> Vec<Interest> {
        let max = self.config().channel.max_length;
        let mut interests = Vec::new();
        for channel in channels {
            if validate_channel(channel, max).is_err() {
                continue;
            }
            match self
                .prepare_channel(engine, channel, HistoryRead::None)
                .await
            {
                Ok((interest, _)) => interests.push(interest),
                Err(_) => tracing::debug!(channel, "engine: server-side channel not prepared"),
            }
        }
        interests
    }

    /// Applies what a hook decided with a shared engine: a granted subscribe reads the
    /// stream first, a granted publish goes through the engine to every replica.
    pub(crate) async fn apply_grant_shared(
        &self,
        engine: &RedisEngine,
        key: (u64, u64),
        id: u32,
        outcome: Result<ProxyGrant, Refusal>,
    ) {
        match outcome {
            Ok(ProxyGrant::Subscribe(request, grant)) => {
                let read = if request.recover {
                    HistoryRead::All
                } else {
                    HistoryRead::None
                };
                let channel = request.channel.clone();
                match self.prepare_channel(engine, &channel, read).await {
                    Ok((interest, stream)) => {
                        let entry = self.with_state(|s| {
                            s.subscribe_presence_entry(key, &request, None, Some(&grant))
                        });
                        let (prepared, written) = self
                            .presence_before_reply(engine, &channel, entry, stream)
                            .await;
                        let outcome = Ok(ProxyGrant::Subscribe(request, grant));
                        self.with_state(|s| s.proxied_command(key, id, outcome, Some(prepared)));
                        self.undo_unused_presence(engine, key, &channel, written)
                            .await;
                        drop(interest);
                    }
                    Err(code) => self.with_state(|s| s.answer(key, id, Err(code))),
                }
            }
            Ok(ProxyGrant::Publish(channel, grant)) => {
                let reply = self.granted_publish(engine, key, &channel, grant).await;
                self.with_state(|s| {
                    if s.has_session(key) {
                        s.answer(key, id, reply);
                    }
                });
            }
            other => self.with_state(|s| s.proxied_command(key, id, other, None)),
        }
    }

    /// Writes a subscriber's presence entry before its subscribe is applied and answered, as
    /// Centrifugo does, so a presence read on any node right after the reply lists it. A
    /// failed write (bounded by `io_timeout`) is left to the event worker and the periodic
    /// refresh, which write it again: the subscribe itself does not fail for it. Returns the
    /// client id whose entry was written.
    async fn presence_before_reply(
        &self,
        engine: &RedisEngine,
        channel: &str,
        entry: Option<ClientInfo>,
        stream: StreamState,
    ) -> (Prepared, Option<String>) {
        let written = match entry {
            Some(info) => match engine.presence_add(channel, &info).await {
                Ok(()) => Some(info.client),
                Err(error) => {
                    tracing::debug!(%error, channel, "engine: presence before the reply failed");
                    None
                }
            },
            None => None,
        };
        let prepared = Prepared {
            stream,
            presence_written: written.is_some(),
        };
        (prepared, written)
    }

    /// Removes a presence entry written before a subscribe that did not take effect after
    /// all (the session went away meanwhile, or a concurrent change refused it).
    async fn undo_unused_presence(
        &self,
        engine: &RedisEngine,
        key: (u64, u64),
        channel: &str,
        written: Option<String>,
    ) {
        let Some(client) = written else { return };
        if self.with_state(|s| s.is_subscribed(key, channel)) {
            return;
        }
        if let Err(error) = engine.presence_remove(channel, &client).await {
            tracing::debug!(%error, channel, "engine: presence undo failed");
        }
    }

    async fn granted_publish(
        &self,
        engine: &RedisEngine,
        key: (u64, u64),
        channel: &str,
        grant: PublishGrant,
    ) -> Result<Reply, ErrorCode> {
        let info = self
            .with_state(|s| s.session_info(key))
            .ok_or(ErrorCode::Internal)?;
        let options = PublishOptions {
            skip_history: grant.skip_history,
            ..Default::default()
        };
        self.publish_through(engine, channel, grant.data, info, options)
            .await
    }

    async fn command_shared(&self, engine: &RedisEngine, key: (u64, u64), command: Command) {
        let usable = self.with_state(|s| s.session_usable(key));
        // A hook decides subscribe / publish / rpc where one is on (answered when it ends).
        let command = match usable {
            true => match self.command_through_hook(key, command) {
                Some(command) => command,
                None => return,
            },
            false => command,
        };
        let token = self.with_state(|state| super::verify_command_token(state, &command));
        if !usable {
            // Unknown or refused sessions: the in-process path answers (disconnect 3501).
            return self.with_state(|s| s.command(key, command, token));
        }
        let id = command.id;
        if let Some(request) = &command.subscribe {
            let max = self.config().channel.max_length;
            if validate_channel(&request.channel, max).is_err() {
                return self.with_state(|s| s.command(key, command, token));
            }
            let read = if request.recover {
                HistoryRead::All
            } else {
                HistoryRead::None
            };
            let channel = request.channel.clone();
            match self.prepare_channel(engine, &channel, read).await {
                Ok((interest, stream)) => {
                    let entry = self.with_state(|s| {
                        s.subscribe_presence_entry(key, request, token.as_ref(), None)
                    });
                    let (prepared, written) = self
                        .presence_before_reply(engine, &channel, entry, stream)
                        .await;
                    self.with_state(|s| s.command_prepared(key, command, token, Some(prepared)));
                    self.undo_unused_presence(engine, key, &channel, written)
                        .await;
                    drop(interest);
                }
                Err(code) => self.with_state(|s| s.answer(key, id, Err(code))),
            }
            return;
        }
        let reply = if let Some(request) = &command.publish {
            self.client_publish(engine, key, &request.channel, request.data.clone())
                .await
        } else if let Some(request) = &command.history {
            match self.with_state(|s| s.client_check(key, &request.channel, Operation::History)) {
                Ok(_) => self.history(request).await.map(|result| Reply {
                    history: Some(result),
                    ..Default::default()
                }),
                Err(code) => Err(code),
            }
        } else if let Some(request) = &command.presence {
            match self.with_state(|s| s.client_check(key, &request.channel, Operation::Presence)) {
                Ok(_) => self.presence(&request.channel).await.map(|result| Reply {
                    presence: Some(result),
                    ..Default::default()
                }),
                Err(code) => Err(code),
            }
        } else if let Some(request) = &command.presence_stats {
            match self.with_state(|s| s.client_check(key, &request.channel, Operation::Presence)) {
                Ok(_) => self
                    .presence_stats(&request.channel)
                    .await
                    .map(|result| Reply {
                        presence_stats: Some(result),
                        ..Default::default()
                    }),
                Err(code) => Err(code),
            }
        } else {
            return self.with_state(|s| s.command(key, command, token));
        };
        // A session gone meanwhile gets nothing: `answer` only reaches live sessions' Links.
        self.with_state(|s| {
            if s.has_session(key) {
                s.answer(key, id, reply);
            }
        });
    }

    async fn client_publish(
        &self,
        engine: &RedisEngine,
        key: (u64, u64),
        channel: &str,
        data: bytes::Bytes,
    ) -> Result<Reply, ErrorCode> {
        let info = self.with_state(|s| s.client_check(key, channel, Operation::Publish))?;
        self.publish_through(engine, channel, data, info, PublishOptions::default())
            .await
    }

    /// A client's publication (already allowed) through the engine, answered as `publish`.
    async fn publish_through(
        &self,
        engine: &RedisEngine,
        channel: &str,
        data: bytes::Bytes,
        info: ClientInfo,
        options: PublishOptions,
    ) -> Result<Reply, ErrorCode> {
        let (publication, size, ttl) =
            self.with_state(|s| s.shared_publication(channel, data, Some(info), options))?;
        engine
            .publish(channel, &publication, size, ttl, None)
            .await?;
        Ok(Reply {
            publish: Some(PublishResult {}),
            ..Default::default()
        })
    }

    /// Publishes from the server API: through the engine when shared, else in process. With
    /// a shared engine and an `idempotency_key` (non-empty), a repeat within
    /// [`IDEMPOTENCY_TTL`] on any node returns the first result without publishing: the key
    /// and its result live in Redis (the caller keeps the memory engine's own cache).
    pub async fn publish_api(
        &self,
        channel: &str,
        data: bytes::Bytes,
        options: PublishOptions,
        idempotency_key: &str,
    ) -> Result<(u64, String), ErrorCode> {
        let Some(engine) = self.engine() else {
            return self.with_state(|s| s.publish_api(channel, data, options));
        };
        let (publication, size, ttl) =
            self.with_state(|s| s.shared_publication(channel, data, None, options))?;
        let idempotency = (!idempotency_key.is_empty()).then_some(Idempotency {
            key: idempotency_key,
            ttl: IDEMPOTENCY_TTL,
        });
        Ok(engine
            .publish(channel, &publication, size, ttl, idempotency)
            .await?)
    }

    /// History of a channel (see [`HubState::history`]), from the engine when shared.
    pub async fn history(
        &self,
        request: &HistoryRequest,
    ) -> Result<crate::protocol::client::HistoryResult, ErrorCode> {
        let Some(engine) = self.engine() else {
            return self.with_state(|s| s.history(request));
        };
        validate_channel(&request.channel, self.config().channel.max_length)?;
        let read = match (request.since.is_some(), request.limit, request.reverse) {
            (true, _, _) => HistoryRead::All,
            (false, 0, _) => HistoryRead::None,
            (false, n, _) if n < 0 => HistoryRead::All,
            (false, n, true) => HistoryRead::Newest(usize::try_from(n).unwrap_or(usize::MAX)),
            (false, n, false) => HistoryRead::Oldest(usize::try_from(n).unwrap_or(usize::MAX)),
        };
        let mut stream = engine.stream(&request.channel, read).await?;
        if matches!(read, HistoryRead::Newest(_)) {
            stream.publications.reverse();
        }
        let since = request.since.as_ref().map(|p| (p.epoch.as_str(), p.offset));
        let result = history_reply(stream, request.limit, since, request.reverse)?;
        let max = self.config().max_frame_bytes;
        if prost::Message::encoded_len(&result) + 64 > max {
            return Err(ErrorCode::LimitExceeded);
        }
        Ok(result)
    }

    /// Deletes a channel's history (in the engine when shared).
    pub async fn history_remove(&self, channel: &str) -> Result<(), ErrorCode> {
        self.with_state(|s| s.history_remove(channel))?;
        if let Some(engine) = self.engine() {
            engine.history_remove(channel).await?;
        }
        Ok(())
    }

    /// Presence of a channel: every node's clients when shared.
    pub async fn presence(&self, channel: &str) -> Result<PresenceResult, ErrorCode> {
        let Some(engine) = self.engine() else {
            return Ok(self.with_state(|s| s.presence(channel)));
        };
        let entries = engine.presence(channel).await?;
        Ok(PresenceResult {
            presence: entries
                .into_iter()
                .map(|info| (info.client.clone(), info))
                .collect(),
        })
    }

    /// Presence counts of a channel: every node's clients when shared.
    pub async fn presence_stats(&self, channel: &str) -> Result<PresenceStatsResult, ErrorCode> {
        let Some(engine) = self.engine() else {
            return Ok(self.with_state(|s| s.presence_stats(channel)));
        };
        let entries = engine.presence(channel).await?;
        let users: std::collections::HashSet<&str> =
            entries.iter().map(|i| i.user.as_str()).collect();
        Ok(PresenceStatsResult {
            num_clients: u32::try_from(entries.len()).unwrap_or(u32::MAX),
            num_users: u32::try_from(users.len()).unwrap_or(u32::MAX),
        })
    }

    /// Every live node's `info` entry (this node's first, read fresh).
    pub async fn nodes(&self) -> Result<Vec<serde_json::Value>, ErrorCode> {
        let (uid, own) = self.with_state(|s| (s.node_uid().to_owned(), node_info(s)));
        let mut nodes: Vec<serde_json::Value> =
            vec![serde_json::from_slice(&own).map_err(|_| ErrorCode::Internal)?];
        if let Some(engine) = self.engine() {
            for info in engine.nodes().await? {
                let Ok(value) = serde_json::from_slice::<serde_json::Value>(&info) else {
                    continue;
                };
                if value["uid"].as_str() != Some(uid.as_str()) {
                    nodes.push(value);
                }
            }
        }
        Ok(nodes)
    }

    /// Server-side subscribe (see [`HubState::server_subscribe`]); with a shared engine the
    /// channel's pub/sub and position are prepared first.
    pub async fn server_subscribe(
        &self,
        user: &str,
        client: Option<&str>,
        channel: &str,
        data: bytes::Bytes,
    ) -> Result<usize, ErrorCode> {
        let interest = match self.engine() {
            Some(engine) => Some(
                self.prepare_channel(&engine, channel, HistoryRead::None)
                    .await?
                    .0,
            ),
            None => None,
        };
        let result = self.with_state(|s| s.server_subscribe(user, client, channel, data));
        drop(interest);
        result
    }
}

/// Applies pub/sub messages in order; resynchronises after a reconnect or a lag.
async fn listen(hub: Hub, engine: Arc<RedisEngine>, mut phase: PhaseWatch) {
    let subscriber = engine.clients().subscriber.clone();
    let mut messages = subscriber.message_rx();
    let mut reconnects = subscriber.reconnect_rx();
    let mut errors = subscriber.error_rx();
    // Set when the pub/sub connection failed: the next (re)connect may have missed
    // publications. The first connection of the process has nothing to repair.
    let mut lost = false;
    let control = engine.control_name();
    resubscribe(&engine).await;
    let closing = lifecycle::closing(&mut phase);
    tokio::pin!(closing);
    loop {
        tokio::select! {
            message = messages.recv() => match message {
                Ok(message) => {
                    engine.count_message();
                    let name: &str = &message.channel;
                    if name == control {
                        if let Some(bytes) = message.value.as_bytes() {
                            let hub = hub.clone();
                            let bytes = bytes.to_vec();
                            tokio::spawn(async move { hub.apply_control(&bytes).await });
                        }
                        continue;
                    }
                    let Some(channel) = engine.channel_of(name).map(str::to_owned) else {
                        continue;
                    };
                    let Some(envelope) = message.value.as_bytes().and_then(Envelope::decode) else {
                        tracing::debug!(channel, "engine: unreadable pub/sub message");
                        continue;
                    };
                    hub.with_state(|s| s.deliver(&channel, envelope));
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "engine: pub/sub listener lagged, subscribers recover");
                    hub.with_state(HubState::resync_all);
                }
                Err(RecvError::Closed) => break,
            },
            error = errors.recv() => match error {
                Err(RecvError::Closed) => break,
                Ok((error, _)) => {
                    tracing::warn!(%error, "engine: pub/sub connection lost");
                    engine.mark_lost();
                    lost = true;
                }
                Err(RecvError::Lagged(_)) => {
                    engine.mark_lost();
                    lost = true;
                }
            },
            reconnect = reconnects.recv() => {
                if matches!(reconnect, Err(RecvError::Closed)) {
                    break;
                }
                tracing::info!("engine: pub/sub connected, restoring subscriptions");
                resubscribe(&engine).await;
                if std::mem::take(&mut lost) {
                    hub.with_state(HubState::resync_all);
                }
            }
            _ = &mut closing => break,
        }
    }
}

/// Restores the pub/sub subscriptions, retrying until it works (bounded by the process).
async fn resubscribe(engine: &RedisEngine) {
    let mut delay = Duration::from_millis(50);
    while let Err(error) = engine.resubscribe_all().await {
        // Expected while connecting; the connection's own errors are logged as they happen.
        tracing::debug!(%error, "engine: resubscribe failed, retrying");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}

async fn work_events(
    engine: Arc<RedisEngine>,
    events: mpsc::Receiver<SharedEvent>,
    mut phase: PhaseWatch,
) {
    let work = tokio_stream_from(events)
        .map(|event| {
            let engine = engine.clone();
            async move {
                let result = match &event {
                    SharedEvent::Added {
                        channel,
                        info,
                        join,
                        presence,
                    } => {
                        let added = match presence {
                            true => engine.presence_add(channel, info).await,
                            false => Ok(()),
                        };
                        if *join {
                            let _ = engine.publish_presence_event(channel, true, info).await;
                        }
                        added
                    }
                    SharedEvent::Removed {
                        channel,
                        info,
                        leave,
                    } => {
                        let removed = engine.presence_remove(channel, &info.client).await;
                        if *leave {
                            let _ = engine.publish_presence_event(channel, false, info).await;
                        }
                        removed
                    }
                };
                if let Err(error) = result {
                    tracing::debug!(%error, "engine: presence update failed");
                }
            }
        })
        .buffered(EVENT_CONCURRENCY)
        .for_each(|()| async {});
    let closing = lifecycle::closing(&mut phase);
    tokio::select! {
        () = work => {}
        _ = closing => {}
    }
}

fn tokio_stream_from<T: Send + 'static>(
    mut receiver: mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx))
}

async fn upkeep(hub: Hub, engine: Arc<RedisEngine>, mut phase: PhaseWatch) {
    let refresh_every = (engine.presence_ttl() / 3).max(Duration::from_millis(200));
    let mut refresh = tokio::time::interval(refresh_every);
    let mut sweep = tokio::time::interval(SWEEP_PERIOD);
    let closing = lifecycle::closing(&mut phase);
    tokio::pin!(closing);
    loop {
        tokio::select! {
            _ = refresh.tick() => {
                let (uid, info) = hub.with_state(|s| (s.node_uid().to_owned(), node_info(s)));
                if let Err(error) = engine.announce(&uid, info, engine.presence_ttl()).await {
                    tracing::debug!(%error, "engine: node announcement failed");
                }
                let entries = hub.with_state(HubState::local_presence);
                for batch in entries.chunks(PRESENCE_BATCH) {
                    let writes = batch.iter().map(|(channel, info)| engine.presence_add(channel, info));
                    for result in futures_util::future::join_all(writes).await {
                        if let Err(error) = result {
                            tracing::debug!(%error, "engine: presence refresh failed");
                        }
                    }
                }
            }
            _ = sweep.tick() => {
                let state = hub.clone();
                engine.unsubscribe_unwanted(|channel| state.with_state(|s| s.channel_wanted(channel))).await;
            }
            _ = &mut closing => break,
        }
    }
}

/// This node's entry of the `info` method, as JSON.
pub(super) fn node_info(state: &HubState) -> bytes::Bytes {
    let counts = state.node_counts();
    let value = serde_json::json!({
        "uid": state.node_uid(),
        "name": super::api::NODE_NAME,
        "version": crate::protocol::SERVER_VERSION,
        "num_clients": counts.num_clients,
        "num_users": counts.num_users,
        "num_channels": counts.num_channels,
        "num_subs": counts.num_subs,
        "uptime": state.uptime_secs(),
    });
    bytes::Bytes::from(value.to_string())
}
