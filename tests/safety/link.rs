//! Safety regressions: the Link and the session loop. A scripted upstream (a real gRPC Link
//! server, tests/support/scripted_upstream.rs) misbehaves on purpose; the sidecar must confine the damage to the
//! session that caused it and keep every other session and the Link working.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use sidewire::protocol::client::Command;

use crate::support::scripted_upstream::{
    self, Script, ScriptOptions, assert_echo, sidecar, sidecar_with,
};
use crate::support::*;

/// The shared scripted upstream (tests/support/scripted_upstream.rs) with default options.
async fn scripted_upstream() -> (SocketAddr, std::sync::Arc<Script>) {
    scripted_upstream::start(ScriptOptions::default()).await
}

#[tokio::test]
async fn welcome_version_becomes_connect_version() {
    let (upstream, _script) = scripted_upstream().await;
    let server = sidecar(upstream, "").await;
    let mut client = server.ws(WsOptions::json()).await;
    let reply = client.connect_with(Default::default()).await;
    assert_eq!(
        reply.connect.map(|c| c.version),
        Some("scripted 1.0".to_owned()),
        "an upstream that leaves ConnectResult.version empty is represented by Welcome.version"
    );
}

#[tokio::test]
async fn second_reply_to_one_command_is_dropped() {
    let (upstream, _script) = scripted_upstream().await;
    let server = sidecar(upstream, "").await;
    let mut client = server.ws(WsOptions::json()).await;
    client.handshake().await;
    let reply = client.request(rpc_raw("twice", b"1")).await;
    assert_eq!(reply.error, None);
    // The next command's reply is the next reply: the duplicate never reached the client.
    assert_echo(&mut client, "after a double reply").await;
    let duplicates = client.take_pushes(|_| true);
    assert!(duplicates.is_empty(), "{duplicates:?}");
    assert!(
        client.unconsumed().iter().all(|r| r.id == 0),
        "no second reply with an id: {:?}",
        client.unconsumed()
    );
    let metrics = http_get(server.admin_addr, "/metrics").await.1;
    assert!(
        metrics.contains("sidewire_link_frames_dropped_total{reason=\"unsolicited_reply\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn push_without_inner_channel_reaches_clients_with_the_channel() {
    let (upstream, _script) = scripted_upstream().await;
    let server = sidecar(upstream, "").await;
    let mut client = server.ws(WsOptions::json()).await;
    client.handshake().await;
    assert_eq!(client.request(subscribe("news")).await.error, None);
    assert_eq!(
        client
            .request(publish("news", &json!({"a": 1})))
            .await
            .error,
        None
    );
    let publication = client.expect_publication("news", 1).await;
    assert_eq!(publication.data, Bytes::from_static(br#"{"a":1}"#));
}

#[tokio::test]
async fn non_json_push_does_not_disconnect_json_subscribers() {
    let (upstream, _script) = scripted_upstream().await;
    let server = sidecar(upstream, "").await;
    let mut json_client = server.ws(WsOptions::json()).await;
    let mut proto_client = server.ws(WsOptions::protobuf()).await;
    json_client.handshake().await;
    proto_client.handshake().await;
    assert_eq!(json_client.request(subscribe("bin")).await.error, None);
    assert_eq!(proto_client.request(subscribe("bin")).await.error, None);
    let binary = Bytes::from_static(&[0xff, 0x00, 0xfe]);
    let reply = proto_client
        .request(Command {
            publish: Some(sidewire::protocol::client::PublishRequest {
                channel: "bin".into(),
                data: binary.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    assert_eq!(reply.error, None);
    assert_eq!(proto_client.expect_publication("bin", 1).await.data, binary);
    // The JSON subscriber was skipped, not disconnected: it still works.
    assert_echo(&mut json_client, "JSON subscriber after a binary push").await;
    let metrics = http_get(server.admin_addr, "/metrics").await.1;
    assert!(
        metrics.contains("sidewire_link_frames_dropped_total{reason=\"not_json\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn unanswered_commands_stop_the_session_reading_not_the_link() {
    let (upstream, script) = scripted_upstream().await;
    let server = sidecar(upstream, "").await;
    let mut greedy = server.ws(WsOptions::json()).await;
    greedy.handshake().await;
    // 400 commands that are never answered, one WebSocket message each.
    for _ in 0..400 {
        let mut command = rpc_raw("hang", b"0");
        command.id = greedy.next_id();
        greedy.send_commands(&[command]).await;
    }
    let expected = sidewire::MAX_IN_FLIGHT;
    eventually(
        WAIT,
        &format!("upstream saw {expected} commands"),
        || async { script.total_commands() >= expected },
    )
    .await;
    // Give the sidecar every chance to forward more than it should.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        script.total_commands(),
        expected,
        "a session forwards at most MAX_IN_FLIGHT unanswered commands"
    );
    // Everyone else is fine.
    let mut other = server.ws(WsOptions::json()).await;
    other.handshake().await;
    assert_echo(&mut other, "another session").await;
}

#[tokio::test]
async fn stalled_upstream_ends_waiting_sessions_instead_of_freezing_them() {
    let (upstream, script) = scripted_upstream().await;
    let server = sidecar_with(upstream, "", "message_size_limit: 4194304\n").await;
    let mut writers = Vec::new();
    for _ in 0..3 {
        let mut client = server.ws(WsOptions::protobuf()).await;
        client.handshake().await;
        writers.push(client);
    }
    script.stalled.store(true, Ordering::SeqCst);
    // Each writer sends one frame of 100 000 commands: far more than the uplink queue and the
    // HTTP/2 window hold while the upstream reads nothing.
    for client in &mut writers {
        let commands: Vec<Command> = (0..100_000)
            .map(|_| {
                let mut command = rpc_raw("hang", b"0");
                command.id = client.next_id();
                command
            })
            .collect();
        client.send_commands(&commands).await;
    }
    // The sessions stuck on the full uplink are ended (3004) within the send deadline, with
    // a generous margin; none hangs forever.
    let limit = sidewire::UPLINK_SEND_TIMEOUT + Duration::from_secs(10);
    let mut ended = 0;
    for client in &mut writers {
        let (code, _) = client.expect_close(limit).await;
        assert_eq!(code, 3004);
        ended += 1;
    }
    assert_eq!(ended, 3);
    // The sidecar itself is responsive meanwhile.
    let (status, metrics) = http_get(server.admin_addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        !metrics.contains("sidewire_uplink_send_timeouts_total 0"),
        "{metrics}"
    );
    script.stalled.store(false, Ordering::SeqCst);
}

#[tokio::test]
async fn reads_and_replies_progress_under_sustained_fan_out() {
    let (upstream, _script) = scripted_upstream().await;
    let server = sidecar_with(upstream, "", "queue_max_size: 67108864\n").await;
    let mut streamer = server.ws(WsOptions::json()).await;
    let mut victim = server.ws(WsOptions::json()).await;
    streamer.handshake().await;
    victim.handshake().await;
    assert_eq!(victim.request(subscribe("flood")).await.error, None);
    // A sustained stream of publications to the victim (100 every millisecond for a few
    // seconds); meanwhile the victim's own commands are still read and answered: its reply is
    // queued behind at most a few milliseconds of publications.
    let mut stream = rpc_raw("stream", b"200000");
    stream.id = streamer.next_id();
    streamer.send_commands(&[stream]).await;
    let _ = streamer.next_reply(WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for round in 0..3 {
        assert_echo(
            &mut victim,
            &format!("victim during a sustained fan-out, round {round}"),
        )
        .await;
        let _ = victim.take_pushes(|_| true);
    }
}
