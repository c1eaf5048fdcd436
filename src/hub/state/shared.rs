//! The hub's side of a shared engine (Redis): local channels mirror the engine's stream.
//!
//! With a shared engine a local [`Channel`] is this node's view of the stream: `epoch` and
//! `top` are the last publication this node delivered (every publication arrives through the
//! engine's pub/sub, the publisher's own included), `history` a local cache of the newest
//! kept publications (bounded like the memory engine's history) that fills the gap between a
//! history read and the commit of a recovering subscription. Invariant: a local subscriber
//! was answered `offset = top` at its commit and then receives every later publication, in
//! order; a gap or an epoch change in what arrives ends every local subscription with 2500
//! ("insufficient state"), so SDKs recover from the engine's history.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Channel, HubState, UNSUBSCRIBE_INSUFFICIENT_STATE, lock};
use crate::engine::redis::{Envelope, RedisEngine, StreamState};
use crate::hub::counters::HubCounters;
use crate::hub::namespace::history_enabled;
use crate::linkproto::{SessionReply, upstream_frame};
use crate::protocol::ErrorCode;
use crate::protocol::client::{
    ClientInfo, HistoryResult, Join, Leave, Publication, Push, Reply, Unsubscribe,
};

/// Presence and join/leave work queued for the engine, at most this many at once; beyond it
/// events are dropped (a lost add is restored by the periodic presence refresh, a lost remove
/// expires after `presence_ttl`).
pub const SHARED_EVENT_QUEUE: usize = 65_536;

/// Presence / join / leave work for the engine.
#[derive(Debug, Clone)]
pub enum SharedEvent {
    /// A local subscriber was added: its presence entry (unless already written), and a join
    /// when `join`.
    Added {
        /// Channel.
        channel: Arc<str>,
        /// The subscriber.
        info: ClientInfo,
        /// Whether to publish a join.
        join: bool,
        /// Whether to write the presence entry (false: the subscribe path wrote it already).
        presence: bool,
    },
    /// A local subscriber left: presence entry removed, and a leave when `leave`.
    Removed {
        /// Channel.
        channel: Arc<str>,
        /// The subscriber.
        info: ClientInfo,
        /// Whether to publish a leave.
        leave: bool,
    },
}

/// A shared engine as the hub state holds it.
#[derive(Debug)]
pub struct Shared {
    /// The engine.
    pub engine: Arc<RedisEngine>,
    /// Presence / join / leave work (bounded).
    pub events: mpsc::Sender<SharedEvent>,
}

impl HubState {
    /// The shared engine, when there is one.
    pub fn engine(&self) -> Option<&Arc<RedisEngine>> {
        self.shared.as_ref().map(|s| &s.engine)
    }

    pub(super) fn shared_event(&self, event: SharedEvent) {
        if let Some(shared) = &self.shared
            && shared.events.try_send(event).is_err()
        {
            HubCounters::bump(&self.counters.engine_events_dropped);
        }
    }

    /// Marks a subscription under way on `channel` (creating the local channel, 106 at
    /// `hub.max_channels`): the channel and its pub/sub stay until [`HubState::release_interest`].
    pub fn mark_interest(&self, channel: &str) -> Result<(), ErrorCode> {
        let settings = self.settings();
        let mut shard = self.shard(channel);
        let name: Arc<str> = match shard.get_key_value(channel) {
            Some((name, _)) => name.clone(),
            None => {
                self.reserve_channel(&settings)?;
                Arc::from(channel)
            }
        };
        shard.entry(name).or_default().pending += 1;
        Ok(())
    }

    /// Ends what [`HubState::mark_interest`] started.
    pub fn release_interest(&self, channel: &str) {
        let mut shard = self.shard(channel);
        if let Some(state) = shard.get_mut(channel) {
            state.pending = state.pending.saturating_sub(1);
        }
        self.forget_if_idle(&mut shard, channel);
    }

    /// Whether this node still needs the channel's pub/sub (local subscribers or
    /// subscriptions under way).
    pub fn channel_wanted(&self, channel: &str) -> bool {
        self.shard(channel)
            .get(channel)
            .is_some_and(|c| !c.subscribers.is_empty() || c.pending > 0)
    }

    /// Sets the local channel's position from a read of the engine when no local subscriber
    /// depends on it yet (publications delivered since the read are kept: the newer wins
    /// within one epoch).
    pub fn baseline(&self, channel: &str, stream: &StreamState) {
        let mut shard = self.shard(channel);
        let Some(state) = shard.get_mut(channel) else {
            return;
        };
        if !state.subscribers.is_empty() {
            return;
        }
        if state.epoch == stream.epoch && state.top >= stream.top {
            return;
        }
        // The local cache no longer joins up with the stream: drop it.
        state.epoch = stream.epoch.clone();
        state.top = stream.top;
        let mut ledger = self.ledger();
        while state.pop_front(&mut ledger).is_some() {}
    }

    /// Recovery for a subscription with a shared engine: the local cache when it covers the
    /// client's position, else the engine's history (read before the commit) completed by
    /// the local cache up to `top`. `None` when the position cannot be recovered.
    pub(super) fn shared_recovery(
        state: &Channel,
        stream: Option<&StreamState>,
        epoch: &str,
        offset: u64,
    ) -> Option<Vec<Publication>> {
        if epoch != state.epoch || offset > state.top {
            return None;
        }
        if let Some(publications) = state.since(epoch, offset) {
            return Some(publications);
        }
        let stream = stream?;
        if stream.epoch != state.epoch || offset > stream.top {
            return None;
        }
        let first_kept = stream
            .publications
            .first()
            .map_or(stream.top + 1, |p| p.offset);
        if offset + 1 < first_kept {
            return None;
        }
        let mut publications: Vec<Publication> = stream
            .publications
            .iter()
            .filter(|p| p.offset > offset && p.offset <= state.top)
            .cloned()
            .collect();
        if stream.top < state.top {
            let local_first = state
                .history
                .front()
                .map_or(state.top + 1, |s| s.publication.offset);
            if local_first > stream.top + 1 {
                return None;
            }
            publications.extend(
                state
                    .history
                    .iter()
                    .filter(|s| s.publication.offset > stream.top)
                    .map(|s| s.publication.clone()),
            );
        }
        Some(publications)
    }

    /// Applies one pub/sub message of `channel` (ignored when this node has no local
    /// channel): a publication in order is cached and pushed to local subscribers; an
    /// earlier one is dropped; a gap or a new epoch ends local subscriptions with 2500; joins
    /// and leaves reach local subscribers that asked for them.
    pub fn deliver(&self, channel: &str, envelope: Envelope) {
        let settings = self.settings();
        let mut shard = self.shard(channel);
        let Some(name) = shard.get_key_value(channel).map(|(n, _)| n.clone()) else {
            return;
        };
        let Some(state) = shard.get_mut(channel) else {
            return;
        };
        match envelope {
            Envelope::Join(info) => {
                if state.join_leave_subscribers > 0 {
                    let push = Push {
                        channel: channel.to_owned(),
                        join: Some(Join { info: Some(info) }),
                        ..Default::default()
                    };
                    self.broadcast(state, channel, push);
                }
            }
            Envelope::Leave(info) => {
                if state.join_leave_subscribers > 0 {
                    let push = Push {
                        channel: channel.to_owned(),
                        leave: Some(Leave { info: Some(info) }),
                        ..Default::default()
                    };
                    self.broadcast(state, channel, push);
                }
            }
            Envelope::Publication {
                epoch,
                publication,
                kept,
            } => {
                let offset = publication.offset;
                if epoch == state.epoch && offset <= state.top {
                    return;
                }
                let in_order = epoch == state.epoch && offset == state.top + 1;
                let mut stranded = Vec::new();
                if !in_order {
                    // A gap or a new epoch: the cache starts again from this publication,
                    // and local subscribers recover.
                    stranded = state.subscribers.keys().copied().collect();
                    state.epoch = epoch;
                    let mut ledger = self.ledger();
                    while state.pop_front(&mut ledger).is_some() {}
                }
                state.top = offset;
                let history_size = match settings.namespaces.resolve(channel) {
                    Ok(options) if history_enabled(options) => {
                        options.history_size.min(settings.config.history_size)
                    }
                    _ => 0,
                };
                if kept && history_size > 0 {
                    let mut ledger = self.ledger();
                    ledger.store(&name, state, publication.clone(), Instant::now());
                    while state.history.len() > history_size {
                        state.pop_front(&mut ledger);
                    }
                }
                if !stranded.is_empty() {
                    drop(shard);
                    tracing::debug!(channel, "engine: stream gap, subscribers recover");
                    self.unsubscribe_insufficient(&name, stranded);
                    return;
                }
                let push = Push {
                    channel: channel.to_owned(),
                    r#pub: Some(publication),
                    ..Default::default()
                };
                self.broadcast(state, channel, push);
            }
        }
    }

    /// Every local subscription of every channel ends with 2500 (after a pub/sub reconnect
    /// or a lagging listener: publications may have been missed). Channel by channel, one
    /// shard lock at a time.
    pub fn resync_all(&self) {
        for index in 0..self.shards.len() {
            let channels: Vec<(Arc<str>, Vec<super::SessionKey>)> = {
                let shard = lock(&self.shards[index]);
                shard
                    .iter()
                    .filter(|(_, c)| !c.subscribers.is_empty())
                    .map(|(n, c)| (n.clone(), c.subscribers.keys().copied().collect()))
                    .collect()
            };
            for (name, members) in channels {
                self.unsubscribe_insufficient(&name, members);
            }
        }
    }

    /// Ends the given local subscriptions of `name` with unsubscribe 2500.
    pub(super) fn unsubscribe_insufficient(&self, name: &str, members: Vec<super::SessionKey>) {
        for key in members {
            let mut sessions = self.sessions();
            let subscribed = sessions.get_mut(key).is_some_and(|s| {
                s.sub_expiries.remove(name);
                s.channels.remove(name)
            });
            if !subscribed {
                continue;
            }
            drop(sessions);
            self.membership(key, name, false, false);
            self.emit_session(
                key,
                upstream_frame::Frame::Reply(SessionReply {
                    session: key.1,
                    reply: Some(Reply {
                        push: Some(Push {
                            channel: name.to_owned(),
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
            self.remove_subscriber(name, key);
            HubCounters::bump(&self.counters.insufficient_state_unsubscribes);
        }
    }

    /// Every local subscriber with its channel (for the presence refresh), one shard lock at
    /// a time.
    pub fn local_presence(&self) -> Vec<(Arc<str>, ClientInfo)> {
        let mut all = Vec::new();
        for shard in self.shards.iter() {
            let shard = lock(shard);
            for (name, channel) in shard.iter() {
                for subscriber in channel.subscribers.values() {
                    all.push((name.clone(), subscriber.info.clone()));
                }
            }
        }
        all
    }

    /// Channels with local subscribers or subscriptions under way.
    pub fn wanted_channels(&self) -> Vec<Arc<str>> {
        let mut all = Vec::new();
        for shard in self.shards.iter() {
            let shard = lock(shard);
            all.extend(
                shard
                    .iter()
                    .filter(|(_, c)| !c.subscribers.is_empty() || c.pending > 0)
                    .map(|(n, _)| n.clone()),
            );
        }
        all
    }
}

/// A history reply from the engine's kept publications (oldest first): the memory engine's
/// rules (`limit` > 0 at most that many, < 0 all, 0 none; `since` a position, 112 when gone;
/// `reverse` newest first).
pub fn history_reply(
    stream: StreamState,
    limit: i32,
    since: Option<(&str, u64)>,
    reverse: bool,
) -> Result<HistoryResult, ErrorCode> {
    let StreamState {
        top,
        epoch,
        mut publications,
    } = stream;
    if let Some((since_epoch, offset)) = since {
        let first_kept = publications.first().map_or(top + 1, |p| p.offset);
        if since_epoch != epoch || offset > top || offset + 1 < first_kept {
            return Err(ErrorCode::UnrecoverablePosition);
        }
        publications.retain(|p| p.offset > offset);
    }
    if reverse {
        publications.reverse();
    }
    let limit = match limit {
        0 => 0,
        n if n < 0 => publications.len(),
        n => usize::try_from(n).unwrap_or(usize::MAX),
    };
    publications.truncate(limit);
    Ok(HistoryResult {
        publications,
        epoch,
        offset: top,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::channel::Ledger;
    use crate::hub::state::unit::drain;

    fn publication(offset: u64) -> Publication {
        Publication {
            offset,
            data: bytes::Bytes::from(format!("{{\"o\":{offset}}}")),
            ..Default::default()
        }
    }

    fn stream(top: u64, epoch: &str, kept: std::ops::RangeInclusive<u64>) -> StreamState {
        StreamState {
            top,
            epoch: epoch.to_owned(),
            publications: kept.map(publication).collect(),
        }
    }

    fn offsets(publications: &[Publication]) -> Vec<u64> {
        publications.iter().map(|p| p.offset).collect()
    }

    /// A local channel at `top` in epoch "e" caching `cached`.
    fn local(top: u64, cached: impl IntoIterator<Item = u64>, ledger: &mut Ledger) -> Channel {
        let mut channel = Channel::new();
        channel.epoch = "e".to_owned();
        for offset in cached {
            ledger.store(
                &Arc::from("c"),
                &mut channel,
                publication(offset),
                Instant::now(),
            );
        }
        channel.top = top;
        channel
    }

    #[test]
    fn recovery_joins_engine_history_and_the_local_cache() {
        let mut ledger = Ledger::default();
        // The engine read saw up to 8; the node has delivered up to 10 since (cached 9..=10).
        let channel = local(10, 9..=10, &mut ledger);
        let read = stream(8, "e", 1..=8);
        let got = HubState::shared_recovery(&channel, Some(&read), "e", 5).expect("recovered");
        assert_eq!(offsets(&got), vec![6, 7, 8, 9, 10]);
        // A cache that does not join up with the read is refused (lost publications).
        let channel = local(10, 10..=10, &mut ledger);
        assert!(HubState::shared_recovery(&channel, Some(&read), "e", 5).is_none());
    }

    #[test]
    fn recovery_stops_at_the_local_top_and_refuses_lost_positions() {
        let mut ledger = Ledger::default();
        // The read is ahead of what this node delivered: later ones arrive by pub/sub.
        let channel = local(6, std::iter::empty(), &mut ledger);
        let read = stream(9, "e", 3..=9);
        let got = HubState::shared_recovery(&channel, Some(&read), "e", 4).expect("recovered");
        assert_eq!(offsets(&got), vec![5, 6]);
        // Position trimmed away, another epoch, a future offset: not recoverable.
        assert!(HubState::shared_recovery(&channel, Some(&read), "e", 1).is_none());
        assert!(HubState::shared_recovery(&channel, Some(&read), "x", 4).is_none());
        assert!(HubState::shared_recovery(&channel, Some(&read), "e", 7).is_none());
        // Nothing missed: recovered with no publications.
        let got = HubState::shared_recovery(&channel, Some(&read), "e", 6).expect("recovered");
        assert!(got.is_empty());
    }

    /// Hub state over a Redis engine that never connects (nothing here reaches Redis), one
    /// Link, and session 1 subscribed to `c` at position (epoch "e", 3).
    async fn shared_state() -> (HubState, Arc<crate::hub::link_queue::LinkQueue>) {
        let (state, queue, _events) = shared_state_with(false).await;
        (state, queue)
    }

    /// [`shared_state`], saying whether the subscribe path wrote the presence entry, with the
    /// engine work it queued.
    async fn shared_state_with(
        presence_written: bool,
    ) -> (
        HubState,
        Arc<crate::hub::link_queue::LinkQueue>,
        tokio::sync::mpsc::Receiver<SharedEvent>,
    ) {
        use crate::config::engine::RedisConfig;
        let redis = RedisConfig {
            address: "redis://127.0.0.1:1".to_owned(),
            ..RedisConfig::default()
        };
        let engine = Arc::new(RedisEngine::open(&redis).expect("engine"));
        // Secure defaults refuse every subscribe: open channels to every client here.
        let mut config = crate::config::HubConfig::default();
        config.client.insecure = true;
        let (state, events) =
            HubState::new_shared(config, Arc::new(HubCounters::default()), engine);
        let queue = Arc::new(crate::hub::link_queue::LinkQueue::new(1 << 20));
        state.add_link(1, queue.clone());
        let open = crate::linkproto::SessionOpen {
            session: 1,
            client: "c1".to_owned(),
            ..Default::default()
        };
        state.open(
            1,
            open,
            crate::hub::auth::TokenCheck::anonymous(),
            Arc::from([]),
        );
        state.mark_interest("c").expect("interest");
        let read = stream(3, "e", 1..=3);
        state.baseline("c", &read);
        let subscribe = crate::protocol::client::Command {
            id: 1,
            subscribe: Some(crate::protocol::client::SubscribeRequest {
                channel: "c".to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        };
        state.command_prepared(
            (1, 1),
            subscribe,
            None,
            Some(crate::hub::state::Prepared {
                stream: read,
                presence_written,
            }),
        );
        state.release_interest("c");
        drain(&queue).await;
        (state, queue, events)
    }

    #[tokio::test]
    async fn presence_written_before_the_reply_is_not_written_again() {
        let (_state, _queue, mut events) = shared_state_with(false).await;
        match events.try_recv() {
            Ok(SharedEvent::Added { presence, join, .. }) => assert!(presence && !join),
            other => panic!("expected the presence write to be queued, got {other:?}"),
        }
        let (_state, _queue, mut events) = shared_state_with(true).await;
        assert!(events.try_recv().is_err(), "nothing left to write");
    }

    fn delivered(epoch: &str, offset: u64) -> Envelope {
        Envelope::Publication {
            epoch: epoch.to_owned(),
            publication: publication(offset),
            kept: true,
        }
    }

    fn pushed_offsets(frames: &[upstream_frame::Frame]) -> Vec<u64> {
        frames
            .iter()
            .filter_map(|f| match f {
                upstream_frame::Frame::Push(p) => p.push.as_ref()?.r#pub.as_ref().map(|p| p.offset),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn deliveries_go_out_once_in_order_and_a_gap_asks_for_recovery() {
        let (state, queue) = shared_state().await;
        // Already covered by the subscribe position, then new ones, then a duplicate.
        for offset in [2, 3, 4, 5, 5, 4] {
            state.deliver("c", delivered("e", offset));
        }
        assert_eq!(pushed_offsets(&drain(&queue).await), vec![4, 5]);
        // A gap (7 after 5): nothing is pushed, the subscription ends with 2500.
        state.deliver("c", delivered("e", 7));
        let frames = drain(&queue).await;
        assert!(pushed_offsets(&frames).is_empty(), "{frames:?}");
        assert!(frames.iter().any(|f| matches!(f,
            upstream_frame::Frame::Reply(r) if r.reply.as_ref()
                .and_then(|r| r.push.as_ref())
                .and_then(|p| p.unsubscribe.as_ref())
                .is_some_and(|u| u.code == UNSUBSCRIBE_INSUFFICIENT_STATE))));
        assert!(!state.channel_wanted("c"));
        // Channels this node does not hold are ignored.
        state.deliver("other", delivered("e", 1));
        assert!(drain(&queue).await.is_empty());
    }

    #[test]
    fn history_reply_follows_the_memory_engine_rules() {
        let read = || stream(10, "e", 6..=10);
        let all = history_reply(read(), -1, None, false).expect("history");
        assert_eq!(offsets(&all.publications), vec![6, 7, 8, 9, 10]);
        assert_eq!((all.offset, all.epoch.as_str()), (10, "e"));
        let newest = history_reply(read(), 2, None, true).expect("history");
        assert_eq!(offsets(&newest.publications), vec![10, 9]);
        let since = history_reply(read(), -1, Some(("e", 7)), false).expect("history");
        assert_eq!(offsets(&since.publications), vec![8, 9, 10]);
        assert_eq!(
            history_reply(read(), -1, Some(("e", 2)), false),
            Err(ErrorCode::UnrecoverablePosition)
        );
        assert_eq!(
            history_reply(read(), -1, Some(("other", 8)), false),
            Err(ErrorCode::UnrecoverablePosition)
        );
        assert!(
            history_reply(read(), 0, None, false)
                .expect("history")
                .publications
                .is_empty()
        );
    }
}
