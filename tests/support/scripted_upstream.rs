//! A scripted Link upstream (a real gRPC `sidewire.v1.Link` server on an ephemeral loopback
//! port) for conformance tests. It follows docs/link.md except where a command asks it to
//! misbehave, and records every frame the sidecar sends.
//!
//! Client commands drive it:
//! - `connect` with `token: "refuse"`: error reply 101 "unauthorized" (a refusal); with
//!   `token: "hang"`: no reply at all;
//! - `subscribe`: SubscribeResult, then Membership;
//! - `publish`: one ChannelPush (inner channel empty), then the reply;
//! - rpc `echo`: answered with its data; `hang`: never answered; `twice`: answered twice;
//!   `unknown_frame`: an UpstreamFrame with no frame set, then the answer; `unknown_session`:
//!   a reply, a membership and a disconnect for a session that does not exist, then the
//!   answer; `mismatch`: a ChannelPush on `news` whose inner push names `other`, then the
//!   answer; `flood` with data N (a decimal count): N publications `{"n":i}` on channel
//!   `flood`, then the answer; `stream` with data N: the answer, then N publications on
//!   `flood` paced at 100 per millisecond (a sustained fan-out).
//!
//! `Script::stalled` makes it stop reading the sidecar's frames (a stalled upstream).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use sidewire::linkproto::link_server::{Link, LinkServer};
use sidewire::linkproto::{
    ChannelPush, Membership, SessionDisconnect, SessionReply, SidecarFrame, UpstreamFrame, Welcome,
    sidecar_frame, upstream_frame,
};
use sidewire::protocol::client::{
    Command, ConnectResult, Error, Publication, Push, Reply, RpcRequest, RpcResult, SubscribeResult,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{Server, WAIT, WsClient, rpc};
use serde_json::json;

/// A session id no sidecar hands out in a test.
pub const UNKNOWN_SESSION: u64 = 987_654_321;

/// How the scripted upstream behaves on a new stream.
#[derive(Debug, Clone, Default)]
pub struct ScriptOptions {
    /// Capabilities declared in `Welcome`.
    pub capabilities: Vec<String>,
    /// Bearer token required in the `authorization` metadata (else UNAUTHENTICATED).
    pub token: Option<String>,
}

/// What the scripted upstream saw, shared with the test.
#[derive(Default)]
pub struct Script {
    options: ScriptOptions,
    /// Every frame received from sidecars but `SessionCommand`s (counted in `commands`), in
    /// order.
    pub received: Mutex<Vec<SidecarFrame>>,
    /// Streams welcomed.
    pub streams_opened: AtomicUsize,
    /// Streams refused for a missing or wrong token.
    pub refused: AtomicUsize,
    /// `SessionCommand` frames received.
    pub commands: AtomicUsize,
    /// While set, the upstream reads nothing from the sidecar.
    pub stalled: AtomicBool,
}

impl Script {
    /// `SessionCommand` frames received so far.
    pub fn total_commands(&self) -> usize {
        self.commands.load(Ordering::SeqCst)
    }

    /// Frames received so far that match `select`.
    pub fn frames<T>(&self, select: impl Fn(&sidecar_frame::Frame) -> Option<T>) -> Vec<T> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter_map(|f| f.frame.as_ref().and_then(&select))
            .collect()
    }
}

type Frames = Pin<Box<dyn Stream<Item = Result<UpstreamFrame, Status>> + Send>>;

#[derive(Clone)]
struct Service {
    script: Arc<Script>,
}

fn frame(frame: upstream_frame::Frame) -> UpstreamFrame {
    UpstreamFrame { frame: Some(frame) }
}

fn reply(session: u64, reply: Reply) -> UpstreamFrame {
    frame(upstream_frame::Frame::Reply(SessionReply {
        session,
        reply: Some(reply),
    }))
}

fn push(channel: &str, inner_channel: &str, data: Bytes) -> UpstreamFrame {
    frame(upstream_frame::Frame::Push(ChannelPush {
        channel: channel.to_owned(),
        push: Some(Push {
            channel: inner_channel.to_owned(),
            r#pub: Some(Publication {
                data,
                offset: 1,
                ..Default::default()
            }),
            ..Default::default()
        }),
    }))
}

#[tonic::async_trait]
impl Link for Service {
    type MultiplexStream = Frames;

    async fn multiplex(
        &self,
        request: Request<Streaming<SidecarFrame>>,
    ) -> Result<Response<Frames>, Status> {
        if let Some(token) = &self.script.options.token {
            let presented = request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            if presented != Some(token.as_str()) {
                self.script.refused.fetch_add(1, Ordering::SeqCst);
                return Err(Status::unauthenticated("invalid link token"));
            }
        }
        let (tx, rx) = mpsc::channel::<UpstreamFrame>(1 << 16);
        self.script.streams_opened.fetch_add(1, Ordering::SeqCst);
        let _ = tx
            .send(frame(upstream_frame::Frame::Welcome(Welcome {
                version: "scripted 1.0".into(),
                protocol_version: 1,
                capabilities: self.script.options.capabilities.clone(),
            })))
            .await;
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
                if matches!(message.frame, Some(sidecar_frame::Frame::Command(_))) {
                    // Counted, not kept: some tests send hundreds of thousands.
                    script.commands.fetch_add(1, Ordering::SeqCst);
                } else {
                    script.received.lock().unwrap().push(message.clone());
                }
                let out = match message.frame {
                    Some(sidecar_frame::Frame::Open(open)) => {
                        let connect = open.connect.unwrap_or_default();
                        let token = connect.connect.as_ref().map(|c| c.token.as_str());
                        if token == Some("hang") {
                            continue;
                        }
                        let refused = token == Some("refuse");
                        let answer = if refused {
                            Reply {
                                id: connect.id,
                                error: Some(Error {
                                    code: 101,
                                    message: "unauthorized".into(),
                                    temporary: false,
                                }),
                                ..Default::default()
                            }
                        } else {
                            Reply {
                                id: connect.id,
                                connect: Some(ConnectResult::default()),
                                ..Default::default()
                            }
                        };
                        vec![reply(open.session, answer)]
                    }
                    Some(sidecar_frame::Frame::Command(command)) => match command.command {
                        Some(inner) => {
                            if let Some(count) = stream_count(&inner) {
                                spawn_stream(tx.clone(), count);
                            }
                            answer(command.session, inner)
                        }
                        None => Vec::new(),
                    },
                    _ => Vec::new(),
                };
                for frame in out {
                    if tx.send(frame).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx).map(Ok).boxed()))
    }
}

/// The count N of an rpc `stream` command (data is a decimal count).
fn stream_count(command: &Command) -> Option<u64> {
    let rpc = command.rpc.as_ref().filter(|rpc| rpc.method == "stream")?;
    std::str::from_utf8(&rpc.data).ok()?.parse().ok()
}

/// Sends N publications `{"n":i}` on channel `flood`, 100 per millisecond, on the stream's own
/// downstream: a sustained fan-out rather than one burst.
fn spawn_stream(tx: mpsc::Sender<UpstreamFrame>, count: u64) {
    tokio::spawn(async move {
        for n in 1..=count {
            let data = Bytes::from(format!("{{\"n\":{n}}}"));
            if tx.send(push("flood", "", data)).await.is_err() {
                return;
            }
            if n % 100 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });
}

fn answer(session: u64, command: Command) -> Vec<UpstreamFrame> {
    let id = command.id;
    if let Some(subscribe) = command.subscribe {
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
            push(&publish.channel, "", publish.data),
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
        "unknown_frame" => vec![UpstreamFrame { frame: None }, answered],
        "unknown_session" => vec![
            reply(
                UNKNOWN_SESSION,
                Reply {
                    id: 1,
                    rpc: Some(RpcResult::default()),
                    ..Default::default()
                },
            ),
            frame(upstream_frame::Frame::Membership(Membership {
                session: UNKNOWN_SESSION,
                channel: "news".into(),
                subscribed: true,
                join_leave: false,
            })),
            frame(upstream_frame::Frame::Disconnect(SessionDisconnect {
                session: UNKNOWN_SESSION,
                code: 4000,
                reason: "nobody".into(),
            })),
            answered,
        ],
        "flood" => {
            let count: u64 = std::str::from_utf8(&data)
                .ok()
                .and_then(|text| text.parse().ok())
                .unwrap_or(0);
            let mut out: Vec<_> = (1..=count)
                .map(|n| push("flood", "", Bytes::from(format!("{{\"n\":{n}}}"))))
                .collect();
            out.push(answered);
            out
        }
        "mismatch" => vec![
            push("news", "other", Bytes::from_static(br#"{"wrong":true}"#)),
            answered,
        ],
        _ => vec![answered],
    }
}

/// Serves a scripted upstream on an ephemeral loopback port.
pub async fn start(options: ScriptOptions) -> (SocketAddr, Arc<Script>) {
    let script = Arc::new(Script {
        options,
        ..Script::default()
    });
    let addr = serve(Service {
        script: script.clone(),
    })
    .await;
    (addr, script)
}

/// Serves `link` (any Link implementation) over HTTP/2 on an ephemeral loopback port, until
/// the runtime ends.
pub async fn serve<L: Link>(link: L) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = LinkServer::new(link);
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
    addr
}

/// Sidecar config linked to `upstream` (reconnecting after 50 to 200 ms); `upstream_lines`
/// (`key: value` lines) go under `upstream:`.
pub fn upstream_yaml(upstream: SocketAddr, upstream_lines: &str) -> String {
    let mut yaml = format!(
        "upstream:\n  endpoint: \"http://{upstream}\"\n  reconnect_backoff_min: \"50ms\"\n  reconnect_backoff_max: \"200ms\"\n"
    );
    for line in upstream_lines.lines().filter(|l| !l.trim().is_empty()) {
        yaml.push_str("  ");
        yaml.push_str(line);
        yaml.push('\n');
    }
    yaml
}

/// A sidecar on [`upstream_yaml`], returned once its Link is up.
pub async fn sidecar(upstream: SocketAddr, upstream_lines: &str) -> Server {
    sidecar_with(upstream, upstream_lines, "").await
}

/// [`sidecar`] with `extra` top-level YAML after the `upstream:` section.
pub async fn sidecar_with(upstream: SocketAddr, upstream_lines: &str, extra: &str) -> Server {
    let yaml = format!("{}{extra}", upstream_yaml(upstream, upstream_lines));
    let server = Server::start(&yaml).await;
    server.wait_ready(WAIT).await;
    server
}

/// The client gets an echo answer through the Link.
pub async fn assert_echo(client: &mut WsClient, what: &str) {
    let reply = client.request(rpc("echo", &json!({"alive": true}))).await;
    assert_eq!(reply.error, None, "{what}: {reply:?}");
    assert_eq!(
        reply.rpc.map(|r| r.data),
        Some(Bytes::from_static(br#"{"alive":true}"#)),
        "{what}"
    );
}
