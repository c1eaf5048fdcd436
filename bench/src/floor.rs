//! `floor-server`: the cheapest comparable WebSocket server, to put sidewire's numbers in
//! context. tokio-tungstenite with a 4 KiB read buffer (by default) and no protocol: a text message
//! `sub [channel]` remembers the connection (answered with `ok`); `POST /publish?channel=C`
//! on the HTTP port sends the body to every connection remembered for C.
//!
//! The HTTP port also serves `POST /grip`, a Pushpin WebSocket-over-HTTP backend with the same
//! behaviour: `OPEN` is accepted, a text `sub <channel>` is answered with a GRIP subscribe
//! control message and `ok` (sent as `m:ok`), so Pushpin holds the subscription and publishes fan out inside
//! Pushpin (the sidecar-like mode to compare sidewire with).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming as HyperBody;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::stats::parse_duration;

/// Largest client message and publish body.
const MAX_MESSAGE_BYTES: usize = 1 << 20;
/// Messages written per flush.
const WRITE_BATCH: usize = 16;
/// Frames are buffered up to this size and written with one flush per batch (the buffer only
/// grows when messages are queued, so idle connections do not pay for it).
const WRITE_BUFFER_BYTES: usize = 64 * 1024;
/// Bound on the WebSocket handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Options of the floor server.
#[derive(Debug, clap::Args)]
pub struct FloorArgs {
    /// WebSocket listen address (loopback).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// HTTP publish listen address (loopback).
    #[arg(long, default_value = "127.0.0.1:0")]
    http_listen: SocketAddr,
    /// WebSocket read buffer per connection, bytes (tungstenite allocates it eagerly).
    #[arg(long, default_value_t = 4096)]
    read_buffer_bytes: usize,
    /// Exit after this long (a bound for forgotten processes).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    max_lifetime: Duration,
}

/// Channel name -> connection id -> outbound queue.
type Members = HashMap<String, HashMap<u64, mpsc::UnboundedSender<Message>>>;

/// Shared server state: who subscribed to which channel.
#[derive(Default)]
struct Floor {
    members: Mutex<Members>,
}

impl Floor {
    fn members(&self) -> std::sync::MutexGuard<'_, Members> {
        // A panic while holding the lock cannot leave the map inconsistent; keep serving.
        self.members
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Runs the floor server until SIGINT / SIGTERM or `--max-lifetime`.
pub async fn run(args: FloorArgs) -> Result<()> {
    if !args.listen.ip().is_loopback() || !args.http_listen.ip().is_loopback() {
        bail!("the floor server listens on loopback only");
    }
    let ws_listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let http_listener = TcpListener::bind(args.http_listen)
        .await
        .with_context(|| format!("binding {}", args.http_listen))?;
    println!(
        "floor listening ws={} http={}",
        ws_listener.local_addr()?,
        http_listener.local_addr()?
    );
    let floor = Arc::new(Floor::default());
    let ws_floor = Arc::clone(&floor);
    let read_buffer = args.read_buffer_bytes.max(256);
    let accept_ws = async move {
        let mut next_id = 0u64;
        loop {
            let Ok((tcp, _)) = ws_listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            next_id += 1;
            tokio::spawn(connection(Arc::clone(&ws_floor), next_id, tcp, read_buffer));
        }
    };
    let accept_http = async move {
        loop {
            let Ok((tcp, _)) = http_listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let floor = Arc::clone(&floor);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let floor = Arc::clone(&floor);
                    async move { Ok::<_, Infallible>(publish(&floor, request).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    };
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        () = accept_ws => {}
        () = accept_http => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
        () = tokio::time::sleep(args.max_lifetime) => {}
    }
    Ok(())
}

/// One WebSocket connection: handshake, then read `sub` messages and write queued payloads.
async fn connection(floor: Arc<Floor>, id: u64, tcp: TcpStream, read_buffer: usize) {
    let _ = tcp.set_nodelay(true);
    let config = WebSocketConfig::default()
        .read_buffer_size(read_buffer)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES));
    // Boxed: the handshake state is freed once the connection is up instead of sizing the task.
    let handshake = Box::pin(tokio_tungstenite::accept_async_with_config(
        tcp,
        Some(config),
    ));
    let Ok(Ok(mut ws)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await else {
        return;
    };
    let mut outbox: Option<mpsc::UnboundedReceiver<Message>> = None;
    let mut sender: Option<mpsc::UnboundedSender<Message>> = None;
    let mut channels: Vec<String> = Vec::new();
    loop {
        let next_out = async {
            match outbox.as_mut() {
                Some(outbox) => outbox.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            incoming = ws.next() => {
                let text = match incoming {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => continue,
                };
                let Some(rest) = text.as_str().strip_prefix("sub") else { continue };
                let channel = rest.trim().to_owned();
                let sender = match &sender {
                    Some(sender) => sender.clone(),
                    None => {
                        let (tx, rx) = mpsc::unbounded_channel();
                        outbox = Some(rx);
                        sender.insert(tx).clone()
                    }
                };
                floor
                    .members()
                    .entry(channel.clone())
                    .or_default()
                    .insert(id, sender);
                channels.push(channel);
                if ws.send(Message::Text(Utf8Bytes::from_static("ok"))).await.is_err() {
                    break;
                }
            }
            message = next_out => {
                let Some(message) = message else { break };
                if ws.feed(message).await.is_err() {
                    break;
                }
                let mut batch = 1;
                while batch < WRITE_BATCH {
                    let Some(Ok(message)) = outbox.as_mut().map(|o| o.try_recv()) else { break };
                    if ws.feed(message).await.is_err() {
                        break;
                    }
                    batch += 1;
                }
                if ws.flush().await.is_err() {
                    break;
                }
            }
        }
    }
    let mut members = floor.members();
    for channel in channels {
        if let Some(set) = members.get_mut(&channel) {
            set.remove(&id);
            if set.is_empty() {
                members.remove(&channel);
            }
        }
    }
}

/// `POST /publish?channel=C`: queue the body for every member of C.
async fn publish(floor: &Floor, request: Request<HyperBody>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response
    };
    if request.method() == Method::POST && request.uri().path() == "/grip" {
        return grip(request).await;
    }
    if request.method() != Method::POST || request.uri().path() != "/publish" {
        return reply(StatusCode::NOT_FOUND, "not found\n".into());
    }
    let channel = request
        .uri()
        .query()
        .and_then(|query| {
            query
                .split('&')
                .find_map(|pair| pair.strip_prefix("channel="))
        })
        .unwrap_or_default()
        .to_owned();
    let body = match Limited::new(request.into_body(), MAX_MESSAGE_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => return reply(StatusCode::BAD_REQUEST, "bad body\n".into()),
    };
    let message = match Utf8Bytes::try_from(body.clone()) {
        Ok(text) => Message::Text(text),
        Err(_) => Message::Binary(body),
    };
    let delivered = floor.members().get(&channel).map_or(0, |set| {
        set.values()
            .filter(|tx| tx.send(message.clone()).is_ok())
            .count()
    });
    reply(StatusCode::OK, format!("{{\"delivered\":{delivered}}}\n"))
}

/// One WebSocket-over-HTTP event: type and optional payload.
type Event = (String, Option<Bytes>);

/// Parses `TYPE[ <hex length>]\r\n[payload\r\n]` events; `None` if malformed.
fn parse_events(mut body: &[u8]) -> Option<Vec<Event>> {
    let mut events = Vec::new();
    // Bounded: every iteration consumes at least the `\r\n` of a header line.
    while !body.is_empty() {
        let end = body.windows(2).position(|w| w == b"\r\n")?;
        let header = std::str::from_utf8(&body[..end]).ok()?;
        body = &body[end + 2..];
        let (kind, length) = match header.split_once(' ') {
            Some((kind, hex)) => (kind, Some(usize::from_str_radix(hex, 16).ok()?)),
            None => (header, None),
        };
        let payload = match length {
            Some(length) => {
                let payload = body.get(..length)?;
                body = body.get(length..)?.strip_prefix(b"\r\n")?;
                Some(Bytes::copy_from_slice(payload))
            }
            None => None,
        };
        events.push((kind.to_owned(), payload));
    }
    Some(events)
}

fn push_event(out: &mut Vec<u8>, kind: &str, payload: Option<&[u8]>) {
    out.extend_from_slice(kind.as_bytes());
    if let Some(payload) = payload {
        out.extend_from_slice(format!(" {:x}\r\n", payload.len()).as_bytes());
        out.extend_from_slice(payload);
    }
    out.extend_from_slice(b"\r\n");
}

/// `POST /grip`: Pushpin WebSocket-over-HTTP backend (see the module doc).
async fn grip(request: Request<HyperBody>) -> Response<Full<Bytes>> {
    let body = match Limited::new(request.into_body(), MAX_MESSAGE_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => return grip_error(),
    };
    let Some(events) = parse_events(&body) else {
        return grip_error();
    };
    let mut out = Vec::new();
    for (kind, payload) in events {
        match kind.as_str() {
            "OPEN" => push_event(&mut out, "OPEN", None),
            "TEXT" => {
                let text = payload.unwrap_or_default();
                let Some(channel) = text.strip_prefix(b"sub") else {
                    continue;
                };
                let channel = String::from_utf8_lossy(channel).trim().to_owned();
                let control = format!(
                    "c:{}",
                    serde_json::json!({"type": "subscribe", "channel": channel})
                );
                push_event(&mut out, "TEXT", Some(control.as_bytes()));
                // With the grip extension, plain messages carry an `m:` prefix.
                push_event(&mut out, "TEXT", Some(b"m:ok"));
            }
            "CLOSE" => push_event(&mut out, "CLOSE", payload.as_deref()),
            _ => {}
        }
    }
    let mut response = Response::new(Full::new(Bytes::from(out)));
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/websocket-events"),
    );
    headers.insert(
        "sec-websocket-extensions",
        hyper::header::HeaderValue::from_static("grip"),
    );
    response
}

fn grip_error() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(b"bad events\n")));
    *response.status_mut() = StatusCode::BAD_REQUEST;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_events_round_trip() {
        let mut body = Vec::new();
        push_event(&mut body, "OPEN", None);
        push_event(&mut body, "TEXT", Some(b"sub fan-1"));
        let events = parse_events(&body).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0], ("OPEN".to_owned(), None));
        assert_eq!(events[1].1.as_deref(), Some(&b"sub fan-1"[..]));
        assert_eq!(parse_events(b"TEXT 5\r\nab"), None);
        assert_eq!(parse_events(b"TEXT zz\r\n"), None);
    }
}
