//! Unit tests of [`HubState`] through its own API: offsets and epochs, history size, byte cap
//! and TTL (on tokio's paused clock), recovery windows, presence, unsubscribe and close
//! removing memberships, and the sweep expiring connections.

use std::time::Duration;

use super::*;
use crate::protocol::client::{StreamPosition, SubscribeRequest, UnsubscribeRequest};

/// Session ids of the one Link these tests use.
const LINK: u64 = 1;

/// Every client operation allowed; history of `size` publications kept for `ttl`.
fn config(size: usize, ttl: Duration) -> HubConfig {
    let mut config = HubConfig::default();
    config.client.insecure = true;
    config.history_size = size;
    config.history_ttl = ttl.into();
    config.link_queue_max_bytes = 1 << 20;
    let options = &mut config.channel.without_namespace;
    options.presence = true;
    options.join_leave = true;
    options.history_size = size;
    options.history_ttl = ttl.into();
    config
}

fn hub(config: HubConfig) -> (HubState, Arc<LinkQueue>) {
    let queue = Arc::new(LinkQueue::new(config.link_queue_max_bytes));
    let state = HubState::new(config, Arc::new(HubCounters::default()));
    state.add_link(LINK, queue.clone());
    (state, queue)
}

fn open_as(state: &HubState, session: u64, check: TokenCheck) {
    let open = SessionOpen {
        session,
        client: format!("c{session}"),
        ..Default::default()
    };
    state.open(LINK, open, check, Arc::from(Vec::new()));
}

fn open(state: &HubState, session: u64) {
    open_as(state, session, TokenCheck::anonymous());
}

fn subscribe_with(state: &HubState, session: u64, request: SubscribeRequest) {
    let command = Command {
        id: 7,
        subscribe: Some(request),
        ..Default::default()
    };
    state.command((LINK, session), command, None);
}

fn subscribe(state: &HubState, session: u64, channel: &str) {
    subscribe_with(
        state,
        session,
        SubscribeRequest {
            channel: channel.to_owned(),
            ..Default::default()
        },
    );
}

fn unsubscribe(state: &HubState, session: u64, channel: &str) {
    let command = Command {
        id: 8,
        unsubscribe: Some(UnsubscribeRequest {
            channel: channel.to_owned(),
        }),
        ..Default::default()
    };
    state.command((LINK, session), command, None);
}

fn publish(state: &HubState, channel: &str, n: u32) -> (u64, String) {
    state
        .publish(channel, Bytes::from(n.to_string()), None)
        .expect("publish")
}

fn history(
    state: &HubState,
    channel: &str,
    since: Option<(u64, &str)>,
) -> Result<Vec<u64>, ErrorCode> {
    let request = HistoryRequest {
        channel: channel.to_owned(),
        limit: -1,
        since: since.map(|(offset, epoch)| StreamPosition {
            offset,
            epoch: epoch.to_owned(),
        }),
        ..Default::default()
    };
    state
        .history(&request)
        .map(|h| h.publications.iter().map(|p| p.offset).collect())
}

/// Every frame queued towards the sidecar so far (shared by the state's test modules).
pub(super) async fn drain(queue: &LinkQueue) -> Vec<upstream_frame::Frame> {
    let mut frames = Vec::new();
    while queue.queued_bytes() > 0 {
        if let Some(frame) = queue.pop().await.and_then(|f| f.frame) {
            frames.push(frame);
        }
    }
    frames
}

/// The subscribe result sent to `session`, if any frame carries one.
fn subscribe_result(frames: &[upstream_frame::Frame], session: u64) -> Option<SubscribeResult> {
    frames.iter().find_map(|f| match f {
        upstream_frame::Frame::Reply(r) if r.session == session => {
            r.reply.as_ref().and_then(|r| r.subscribe.clone())
        }
        _ => None,
    })
}

fn clients(state: &HubState, channel: &str) -> Vec<String> {
    let mut clients: Vec<String> = state.presence(channel).presence.into_keys().collect();
    clients.sort();
    clients
}

#[test]
fn offsets_grow_by_one_per_channel_under_a_stable_epoch() {
    let (state, _queue) = hub(config(10, Duration::from_secs(300)));
    let (a1, epoch_a) = publish(&state, "a", 1);
    let (a2, epoch_a2) = publish(&state, "a", 2);
    let (b1, _) = publish(&state, "b", 3);
    assert_eq!((a1, a2, b1), (1, 2, 1));
    assert_eq!(epoch_a, epoch_a2);
    assert!(!epoch_a.is_empty());
    let result = state
        .history(&HistoryRequest {
            channel: "a".to_owned(),
            limit: 0,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        (result.offset, result.epoch.as_str()),
        (2, epoch_a.as_str())
    );
    assert!(result.publications.is_empty(), "limit 0 returns none");
}

#[test]
fn history_keeps_the_newest_history_size_publications() {
    let (state, _queue) = hub(config(3, Duration::from_secs(300)));
    for n in 1..=5 {
        publish(&state, "a", n);
    }
    assert_eq!(history(&state, "a", None).unwrap(), vec![3, 4, 5]);
}

#[test]
fn history_since_a_position_returns_newer_or_112_when_gone() {
    let (state, _queue) = hub(config(3, Duration::from_secs(300)));
    let mut epoch = String::new();
    for n in 1..=5 {
        epoch = publish(&state, "a", n).1;
    }
    // Kept: 3, 4, 5. From 2 on nothing is missing; from 1, publication 2 is gone.
    assert_eq!(
        history(&state, "a", Some((2, &epoch))).unwrap(),
        vec![3, 4, 5]
    );
    assert_eq!(history(&state, "a", Some((4, &epoch))).unwrap(), vec![5]);
    assert_eq!(
        history(&state, "a", Some((5, &epoch))).unwrap(),
        Vec::<u64>::new()
    );
    let gone = Err(ErrorCode::UnrecoverablePosition);
    assert_eq!(history(&state, "a", Some((1, &epoch))), gone);
    assert_eq!(
        history(&state, "a", Some((6, &epoch))),
        gone,
        "a future offset"
    );
    assert_eq!(
        history(&state, "a", Some((4, "other"))),
        gone,
        "another epoch"
    );
}

#[tokio::test(start_paused = true)]
async fn history_expires_after_its_ttl_on_the_paused_clock() {
    let (state, _queue) = hub(config(10, Duration::from_secs(60)));
    publish(&state, "a", 1);
    tokio::time::advance(Duration::from_secs(30)).await;
    publish(&state, "a", 2);
    tokio::time::advance(Duration::from_secs(29)).await;
    assert_eq!(history(&state, "a", None).unwrap(), vec![1, 2]);
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(
        history(&state, "a", None).unwrap(),
        vec![2],
        "61 s old: gone"
    );
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(history(&state, "a", None).unwrap(), Vec::<u64>::new());
    assert_eq!(state.history_bytes(), 0);
    // Nothing keeps the channel any more.
    assert_eq!(state.channel_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_sweep_drops_expired_history_without_a_read() {
    let (state, _queue) = hub(config(10, Duration::from_secs(5)));
    publish(&state, "a", 1);
    assert!(state.history_bytes() > 0);
    tokio::time::advance(Duration::from_secs(6)).await;
    state.sweep(SweepHooks::default());
    assert_eq!(state.history_bytes(), 0);
    assert_eq!(state.channel_count(), 0);
}

#[test]
fn history_byte_cap_evicts_the_oldest_across_channels() {
    let (state, _queue) = hub(config(100, Duration::from_secs(300)));
    publish(&state, "a", 1);
    let one = state.history_bytes();
    assert!(one > 0);
    let mut capped = config(100, Duration::from_secs(300));
    capped.history_max_bytes = one * 3;
    state.set_config(capped);
    publish(&state, "b", 2);
    publish(&state, "a", 3);
    assert_eq!(
        state.history_bytes(),
        one * 3,
        "three equal publications fit"
    );
    publish(&state, "b", 4);
    assert!(state.history_bytes() <= one * 3);
    // The oldest (a@1) went first, whatever its channel.
    assert_eq!(history(&state, "a", None).unwrap(), vec![2]);
    assert_eq!(history(&state, "b", None).unwrap(), vec![1, 2]);
    assert_eq!(HubCounters::read(&state.counters().history_evictions), 1);
}

#[tokio::test]
async fn recovery_returns_the_missed_publications_or_recovered_false() {
    let (state, queue) = hub(config(3, Duration::from_secs(300)));
    open(&state, 1);
    open(&state, 2);
    let mut epoch = String::new();
    for n in 1..=5 {
        epoch = publish(&state, "a", n).1;
    }
    drain(&queue).await;
    let recover = |offset: u64| SubscribeRequest {
        channel: "a".to_owned(),
        recover: true,
        offset,
        epoch: epoch.clone(),
        ..Default::default()
    };
    subscribe_with(&state, 1, recover(3));
    let result = subscribe_result(&drain(&queue).await, 1).expect("subscribe reply");
    assert!(result.recovered && result.was_recovering && result.recoverable);
    let offsets: Vec<u64> = result.publications.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, vec![4, 5]);
    assert_eq!((result.offset, result.epoch.as_str()), (5, epoch.as_str()));
    // Offset 1 is outside the window (only 3..=5 kept): subscribed, not recovered.
    subscribe_with(&state, 2, recover(1));
    let result = subscribe_result(&drain(&queue).await, 2).expect("subscribe reply");
    assert!(!result.recovered && result.publications.is_empty());
    assert_eq!(clients(&state, "a"), vec!["c1", "c2"]);
}

#[tokio::test]
async fn presence_follows_subscribe_unsubscribe_and_close() {
    let (state, queue) = hub(config(0, Duration::from_secs(300)));
    open(&state, 1);
    open(&state, 2);
    subscribe(&state, 1, "room");
    subscribe(&state, 2, "room");
    assert_eq!(clients(&state, "room"), vec!["c1", "c2"]);
    assert_eq!(state.presence_stats("room").num_clients, 2);
    unsubscribe(&state, 1, "room");
    assert_eq!(clients(&state, "room"), vec!["c2"]);
    assert!(
        state.has_session((LINK, 1)),
        "unsubscribe keeps the session"
    );
    state.close((LINK, 2));
    assert!(clients(&state, "room").is_empty());
    assert_eq!(state.presence_stats("room").num_clients, 0);
    assert_eq!(
        state.channel_count(),
        0,
        "no subscriber and no history: forgotten"
    );
    drain(&queue).await;
}

#[tokio::test]
async fn closing_a_session_removes_every_membership_and_keeps_others() {
    let (state, _queue) = hub(config(0, Duration::from_secs(300)));
    open(&state, 1);
    open(&state, 2);
    for channel in ["a", "b", "c"] {
        subscribe(&state, 1, channel);
    }
    subscribe(&state, 2, "b");
    assert_eq!(state.channel_count(), 3);
    state.close((LINK, 1));
    assert_eq!(state.session_count(), 1);
    for channel in ["a", "c"] {
        assert!(clients(&state, channel).is_empty(), "{channel}");
    }
    assert_eq!(clients(&state, "b"), vec!["c2"]);
    assert_eq!(state.channel_count(), 1);
    // The closed session can neither publish nor subscribe any more; a second close is a no-op.
    state.close((LINK, 1));
    subscribe(&state, 1, "a");
    assert!(clients(&state, "a").is_empty());
}

fn expiring(user: &str, expires_at: u64) -> TokenCheck {
    TokenCheck::Valid(ConnectionClaims {
        user: user.to_owned(),
        expires_at: Some(expires_at),
        ..Default::default()
    })
}

#[tokio::test]
async fn the_sweep_closes_expired_connections_with_3005() {
    let (state, queue) = hub(config(0, Duration::from_secs(300)));
    let now = unix_now();
    open_as(&state, 1, expiring("ann", now.saturating_sub(1)));
    open_as(&state, 2, expiring("bob", now + 3_600));
    open(&state, 3);
    subscribe(&state, 1, "room");
    drain(&queue).await;
    let due = state.sweep(SweepHooks::default());
    assert!(due.refresh.is_empty());
    assert_eq!(state.session_count(), 2);
    assert!(!state.has_session((LINK, 1)));
    assert!(clients(&state, "room").is_empty());
    let frames = drain(&queue).await;
    assert!(
        frames.iter().any(|f| matches!(f,
            upstream_frame::Frame::Disconnect(d) if d.session == 1 && d.code == 3005)),
        "{frames:?}"
    );
    // A second sweep finds nothing more.
    state.sweep(SweepHooks::default());
    assert_eq!(state.session_count(), 2);
}

#[tokio::test]
async fn with_the_refresh_hook_the_sweep_hands_expiries_over() {
    let (state, queue) = hub(config(0, Duration::from_secs(300)));
    open_as(&state, 1, expiring("ann", unix_now().saturating_sub(1)));
    drain(&queue).await;
    let hooks = SweepHooks {
        refresh: true,
        sub_refresh: false,
    };
    let due = state.sweep(hooks);
    assert_eq!(due.refresh.len(), 1);
    assert_eq!(due.refresh[0].key, (LINK, 1));
    assert!(
        state.has_session((LINK, 1)),
        "the hook decides, not the sweep"
    );
    // Handed over once: the next sweep does not repeat it.
    assert!(state.sweep(hooks).refresh.is_empty());
}

#[tokio::test]
async fn the_sweep_unsubscribes_expired_subscriptions_with_2501() {
    let (state, queue) = hub(config(0, Duration::from_secs(300)));
    let ann = TokenCheck::Valid(ConnectionClaims {
        user: "ann".to_owned(),
        ..Default::default()
    });
    open_as(&state, 1, ann);
    // The verifier passed the token a moment ago; its `exp` has passed since.
    let token = SubTokenCheck::Valid {
        user: "ann".to_owned(),
        channel: "$room".to_owned(),
        expires_at: Some(unix_now().saturating_sub(1)),
        info: Bytes::new(),
    };
    let command = Command {
        id: 7,
        subscribe: Some(SubscribeRequest {
            channel: "$room".to_owned(),
            token: "signed".to_owned(),
            ..Default::default()
        }),
        ..Default::default()
    };
    state.command((LINK, 1), command, Some(Verified::Subscription(token)));
    let frames = drain(&queue).await;
    let result = subscribe_result(&frames, 1).unwrap_or_else(|| panic!("{frames:?}"));
    assert!(result.expires, "{result:?}");
    assert_eq!(clients(&state, "$room"), vec!["c1"]);
    state.sweep(SweepHooks::default());
    assert!(clients(&state, "$room").is_empty());
    assert!(state.has_session((LINK, 1)), "only the subscription ends");
    let frames = drain(&queue).await;
    assert!(
        frames.iter().any(|f| matches!(f,
            upstream_frame::Frame::Reply(r) if r.session == 1 && r.reply.as_ref()
                .and_then(|r| r.push.as_ref())
                .and_then(|p| p.unsubscribe.as_ref())
                .is_some_and(|u| u.code == UNSUBSCRIBE_EXPIRED))),
        "{frames:?}"
    );
}
