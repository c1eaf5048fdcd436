//! Safety regressions: the Link and the session loop. A scripted upstream (a real gRPC Link
//! server written here) misbehaves on purpose; the sidecar must confine the damage to the
//! session that caused it and keep every other session and the Link working.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde_json::json;
use sidewire::linkproto::link_server::{Link, LinkServer};
use sidewire::linkproto::{
    ChannelPush, Membership, SessionReply, SidecarFrame, UpstreamFrame, Welcome, sidecar_frame,
    upstream_frame,
};
use sidewire::protocol::client::{
    Command, ConnectResult, Publication, Push, Reply, RpcRequest, RpcResult, SubscribeResult,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::support::*;

/// What the scripted upstream does, shared with the test.
#[derive(Default)]
struct Script {
    /// Stop reading the sidecar's frames (a stalled upstream).
    stalled: AtomicBool,
    /// Commands received, per session.
    commands: Mutex<HashMap<u64, usize>>,
    /// Subscribers per channel: (stream index, session).
    channels: Mutex<HashMap<String, Vec<(usize, u64)>>>,
    /// Downstream senders, one per stream.
    streams: Mutex<Vec<mpsc::Sender<Result<UpstreamFrame, Status>>>>,
    streams_opened: AtomicUsize,
}

impl Script {
    fn total_commands(&self) -> usize {
        self.commands.lock().unwrap().values().sum()
    }
}

/// A Link upstream that follows the contract except where a command asks it not to:
/// rpc `echo` answers, `hang` never answers, `twice` answers twice, `flood` pushes
/// `data` (a count) publications on channel `flood`; publish pushes the data as is (even
/// non-JSON bytes), with the inner push channel left empty.
#[derive(Clone)]
struct ScriptedUpstream {
    script: Arc<Script>,
}

fn frame(frame: upstream_frame::Frame) -> Result<UpstreamFrame, Status> {
    Ok(UpstreamFrame { frame: Some(frame) })
}

fn reply(session: u64, reply: Reply) -> Result<UpstreamFrame, Status> {
    frame(upstream_frame::Frame::Reply(SessionReply {
        session,
        reply: Some(reply),
    }))
}

type Frames = Pin<Box<dyn Stream<Item = Result<UpstreamFrame, Status>> + Send>>;

#[tonic::async_trait]
impl Link for ScriptedUpstream {
    type MultiplexStream = Frames;

    async fn multiplex(
        &self,
        request: Request<Streaming<SidecarFrame>>,
    ) -> Result<Response<Frames>, Status> {
        let (tx, rx) = mpsc::channel(1 << 16);
        let index = {
            let mut streams = self.script.streams.lock().unwrap();
            streams.push(tx.clone());
            streams.len() - 1
        };
        self.script.streams_opened.fetch_add(1, Ordering::SeqCst);
        tx.send(frame(upstream_frame::Frame::Welcome(Welcome {
            version: "scripted 1.0".into(),
            ..Default::default()
        })))
        .await
        .ok();
        let script = self.script.clone();
        let mut inbound = request.into_inner();
        tokio::spawn(async move {
            loop {
                while script.stalled.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let Ok(Some(message)) = inbound.message().await else {
                    return;
                };
                let Some(inner) = message.frame else { continue };
                match inner {
                    sidecar_frame::Frame::Open(open) => {
                        let id = open.connect.map_or(0, |c| c.id);
                        let _ = tx
                            .send(reply(
                                open.session,
                                Reply {
                                    id,
                                    connect: Some(ConnectResult::default()),
                                    ..Default::default()
                                },
                            ))
                            .await;
                    }
                    sidecar_frame::Frame::Command(command) => {
                        *script
                            .commands
                            .lock()
                            .unwrap()
                            .entry(command.session)
                            .or_default() += 1;
                        let Some(inner) = command.command else {
                            continue;
                        };
                        for out in answer(&script, index, command.session, inner) {
                            if tx.send(out).await.is_err() {
                                return;
                            }
                        }
                    }
                    _ => {}
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx).boxed()))
    }
}

fn answer(
    script: &Script,
    stream: usize,
    session: u64,
    command: Command,
) -> Vec<Result<UpstreamFrame, Status>> {
    let id = command.id;
    if let Some(subscribe) = command.subscribe {
        script
            .channels
            .lock()
            .unwrap()
            .entry(subscribe.channel.clone())
            .or_default()
            .push((stream, session));
        return vec![
            reply(
                session,
                Reply {
                    id,
                    subscribe: Some(SubscribeResult::default()),
                    ..Default::default()
                },
            ),
            frame(upstream_frame::Frame::Membership(Membership {
                session,
                channel: subscribe.channel,
                subscribed: true,
                join_leave: false,
            })),
        ];
    }
    if let Some(publish) = command.publish {
        return vec![
            push(&publish.channel, publish.data, 1),
            reply(
                session,
                Reply {
                    id,
                    publish: Some(Default::default()),
                    ..Default::default()
                },
            ),
        ];
    }
    let Some(RpcRequest { data, method }) = command.rpc else {
        return Vec::new();
    };
    let answered = reply(
        session,
        Reply {
            id,
            rpc: Some(RpcResult { data: data.clone() }),
            ..Default::default()
        },
    );
    match method.as_str() {
        "hang" => Vec::new(),
        "twice" => vec![answered.clone(), answered],
        "flood" => {
            let count: u64 = std::str::from_utf8(&data)
                .ok()
                .and_then(|text| text.parse().ok())
                .unwrap_or(0);
            let mut out: Vec<_> = (1..=count)
                .map(|n| push("flood", Bytes::from(format!("{{\"n\":{n}}}")), n))
                .collect();
            out.push(answered);
            out
        }
        _ => vec![answered],
    }
}

/// A publication push whose inner channel is left empty (the sidecar fills it).
fn push(channel: &str, data: Bytes, offset: u64) -> Result<UpstreamFrame, Status> {
    frame(upstream_frame::Frame::Push(ChannelPush {
        channel: channel.to_owned(),
        push: Some(Push {
            r#pub: Some(Publication {
                data,
                offset,
                ..Default::default()
            }),
            ..Default::default()
        }),
    }))
}

/// Serves the scripted upstream on an ephemeral loopback port.
async fn scripted_upstream() -> (SocketAddr, Arc<Script>) {
    let script = Arc::new(Script::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = LinkServer::new(ScriptedUpstream {
        script: script.clone(),
    });
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = hyper_util::service::TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .http2_only()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
            });
        }
    });
    (addr, script)
}

/// A sidecar linked to `upstream`, returned once its Link is up.
async fn sidecar(upstream: SocketAddr, extra: &str) -> Server {
    let server = Server::start(&format!(
        "upstream:\n  endpoint: \"http://{upstream}\"\n  reconnect_backoff_min: \"50ms\"\n  reconnect_backoff_max: \"200ms\"\n{extra}"
    ))
    .await;
    server.wait_ready(WAIT).await;
    server
}

fn rpc_command(method: &str, data: &[u8]) -> Command {
    Command {
        rpc: Some(RpcRequest {
            method: method.into(),
            data: Bytes::copy_from_slice(data),
        }),
        ..Default::default()
    }
}

/// The client gets an echo answer through the Link.
async fn assert_echo(client: &mut WsClient, what: &str) {
    let reply = client.request(rpc("echo", &json!({"alive": true}))).await;
    assert_eq!(reply.error, None, "{what}: {reply:?}");
    assert_eq!(
        reply.rpc.map(|r| r.data),
        Some(Bytes::from_static(br#"{"alive":true}"#)),
        "{what}"
    );
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
    let reply = client.request(rpc_command("twice", b"1")).await;
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
        let mut command = rpc_command("hang", b"0");
        command.id = greedy.next_id();
        greedy.send_commands(&[command]).await;
    }
    let expected = sidewire::session::driver::MAX_IN_FLIGHT;
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
    let server = sidecar(upstream, "message_size_limit: 4194304\n").await;
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
                let mut command = rpc_command("hang", b"0");
                command.id = client.next_id();
                command
            })
            .collect();
        client.send_commands(&commands).await;
    }
    // The sessions stuck on the full uplink are ended (3004) within the send deadline, with
    // a generous margin; none hangs forever.
    let limit = sidewire::link::UPLINK_SEND_TIMEOUT + Duration::from_secs(10);
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
    let server = sidecar(upstream, "queue_max_size: 67108864\n").await;
    let mut flooder = server.ws(WsOptions::json()).await;
    let mut victim = server.ws(WsOptions::json()).await;
    flooder.handshake().await;
    victim.handshake().await;
    assert_eq!(victim.request(subscribe("flood")).await.error, None);
    // 30 000 publications to the victim, then while they stream the victim asks for an echo:
    // its command is read and answered, it is not starved by its own outbox.
    let mut flood = rpc_command("flood", b"30000");
    flood.id = flooder.next_id();
    flooder.send_commands(&[flood]).await;
    assert_echo(&mut victim, "victim during a sustained fan-out").await;
    let _ = flooder.next_reply(Duration::from_secs(20)).await;
}
