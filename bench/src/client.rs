//! One benchmark client connection: a WebSocket over a `TcpStream` we connect ourselves (4 KiB
//! read buffer), speaking either sidewire's client protocol (JSON or Protobuf, with pongs) or
//! the raw text protocol of the floor server (`sub <channel>`, then payload messages).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use sidewire::protocol::Encoding;
use sidewire::protocol::client::{Command, ConnectRequest, Reply, SubscribeRequest};
use sidewire::protocol::frame::encode_message;
use tokio::net::TcpSocket;
use tokio_tungstenite::WebSocketStream;

use crate::tls::{BenchStream, TlsTarget};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::frame::FrameSplitter;

/// Read buffer of every client WebSocket (tungstenite allocates it eagerly).
const READ_BUFFER_BYTES: usize = 4096;
/// Largest reply message the client accepts.
const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// Wire encoding chosen on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EncodingArg {
    /// Centrifugo JSON dialect (text frames).
    Json,
    /// Varint-delimited Protobuf (binary frames, subprotocol `centrifuge-protobuf`).
    Protobuf,
}

impl From<EncodingArg> for Encoding {
    fn from(value: EncodingArg) -> Encoding {
        match value {
            EncodingArg::Json => Encoding::Json,
            EncodingArg::Protobuf => Encoding::Protobuf,
        }
    }
}

/// What the client speaks on the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// sidewire / Centrifugo client protocol v2.
    Centrifugo(Encoding),
    /// Plain text: send `sub <channel>`, then receive payloads as text messages.
    Raw {
        /// Wait for one acknowledging message after `sub` (the floor server sends `ok`).
        ack: bool,
    },
}

impl Dialect {
    /// Short name for reports (`json`, `protobuf`, `raw`).
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Centrifugo(encoding) => encoding.as_str(),
            Dialect::Raw { .. } => "raw",
        }
    }
}

/// Where and how to connect: a loopback `ws://` URL split into address and request target.
#[derive(Debug, Clone)]
pub struct Target {
    /// The full URL as given.
    pub url: String,
    /// Resolved loopback address.
    pub addr: SocketAddr,
    /// Protocol spoken on the socket.
    pub dialect: Dialect,
    /// Bound on connect + handshake + subscribe of one client.
    pub setup_timeout: Duration,
    /// TLS for `wss://` URLs.
    pub tls: Option<TlsTarget>,
}

impl Target {
    /// Parses `ws://127.0.0.1:PORT/path` (or `wss://`, trusting `ca_file`); refuses anything
    /// but a loopback IP literal.
    pub fn new(
        url: &str,
        dialect: Dialect,
        setup_timeout: Duration,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Target> {
        let (addr, tls) = if url.starts_with("wss://") {
            let addr = loopback_addr(url, "wss://")?;
            let ca_file = ca_file.ok_or_else(|| anyhow!("wss:// needs --ca-file"))?;
            (addr, Some(TlsTarget::new(ca_file, &addr.ip().to_string())?))
        } else {
            (loopback_addr(url, "ws://")?, None)
        };
        Ok(Target {
            url: url.to_owned(),
            addr,
            dialect,
            setup_timeout,
            tls,
        })
    }
}

/// The loopback socket address of `scheme://IP:PORT/...`; errors for any non-loopback host.
pub fn loopback_addr(url: &str, scheme: &str) -> Result<SocketAddr> {
    let rest = url
        .strip_prefix(scheme)
        .ok_or_else(|| anyhow!("`{url}` must start with {scheme}"))?;
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let addr: SocketAddr = authority
        .parse()
        .with_context(|| format!("`{authority}` in `{url}` is not IP:PORT"))?;
    if !addr.ip().is_loopback() {
        bail!("`{url}`: only loopback targets are allowed");
    }
    Ok(addr)
}

/// Command-line options shared by every client scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnArgs {
    /// WebSocket URL of the server under test (loopback only), e.g.
    /// ws://127.0.0.1:8000/connection/websocket.
    #[arg(long)]
    pub url: String,
    /// Client protocol encoding (ignored with --raw).
    #[arg(long, value_enum, default_value = "json")]
    pub encoding: EncodingArg,
    /// Speak plain text WebSocket (`sub <channel>`, then payloads) instead of the client
    /// protocol: for the floor server and peers such as Pushpin.
    #[arg(long)]
    pub raw: bool,
    /// In --raw mode, do not wait for an acknowledging message after `sub`.
    #[arg(long)]
    pub raw_no_ack: bool,
    /// Bound on TCP connect + handshake + connect/subscribe of one client.
    #[arg(long, default_value = "10s", value_parser = crate::stats::parse_duration)]
    pub setup_timeout: Duration,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 200)]
    pub concurrency: usize,
    /// Name of the server under test in the output (sidewire, floor, pushpin, ...).
    #[arg(long, default_value = "sidewire")]
    pub label: String,
    /// PEM certificate(s) trusted for `wss://` URLs (e.g. a self-signed one for 127.0.0.1).
    #[arg(long)]
    pub ca_file: Option<std::path::PathBuf>,
}

impl ConnArgs {
    /// The parsed target.
    pub fn target(&self) -> Result<Target> {
        let dialect = if self.raw {
            Dialect::Raw {
                ack: !self.raw_no_ack,
            }
        } else {
            Dialect::Centrifugo(self.encoding.into())
        };
        Target::new(
            &self.url,
            dialect,
            self.setup_timeout,
            self.ca_file.as_deref(),
        )
    }
}

/// An open client connection.
pub struct Client {
    ws: WebSocketStream<BenchStream>,
    dialect: Dialect,
    /// Answer server pings (the connect reply said `pong: true`).
    pong: bool,
    next_id: u32,
    /// Pushes read while waiting for a reply, handed out before reading more.
    pending: Vec<Reply>,
}

/// One unit read from the server.
pub enum Incoming {
    /// Client-protocol replies and pushes (pings already answered and removed).
    Replies(Vec<Reply>),
    /// JSON publication pushes read without serde, as `(channel, data)` in order: the
    /// fan-out's hot path (a message made only of such pushes).
    Publications(Vec<(Bytes, Bytes)>),
    /// A raw-dialect text or binary payload.
    Raw(Bytes),
    /// The server closed the connection (or the stream ended).
    Closed,
}

/// Opens one subscribed client under the handshake gate, reporting success or the error on
/// `ready`; `None` when it failed or the run is shutting down.
pub async fn open_gated(
    target: &Target,
    channel: &str,
    gate: &tokio::sync::Semaphore,
    ready: tokio::sync::mpsc::Sender<Result<(), String>>,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> Option<Client> {
    let setup = async {
        let _permit = gate.acquire().await?;
        Client::open_subscribed(target, channel).await
    };
    tokio::select! {
        result = setup => match result {
            Ok(client) => {
                let _ = ready.send(Ok(())).await;
                Some(client)
            }
            Err(error) => {
                let _ = ready.send(Err(format!("{error:#}"))).await;
                None
            }
        },
        _ = shutdown.changed() => None,
    }
}

impl Client {
    /// TCP connect + WebSocket handshake (no protocol commands yet).
    pub async fn open(target: &Target) -> Result<Client> {
        let mut request = target.url.as_str().into_client_request()?;
        if target.dialect == Dialect::Centrifugo(Encoding::Protobuf) {
            request.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_static("centrifuge-protobuf"),
            );
        }
        let socket = if target.addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        let tcp = socket.connect(target.addr).await.context("tcp connect")?;
        tcp.set_nodelay(true)?;
        let stream = match &target.tls {
            Some(tls) => tls.connect(tcp).await?,
            None => BenchStream::Plain(tcp),
        };
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER_BYTES)
            .write_buffer_size(0)
            .max_message_size(Some(MAX_MESSAGE_BYTES))
            .max_frame_size(Some(MAX_MESSAGE_BYTES));
        let (ws, _response) =
            tokio_tungstenite::client_async_with_config(request, stream, Some(config))
                .await
                .context("websocket handshake")?;
        Ok(Client {
            ws,
            dialect: target.dialect,
            pong: false,
            next_id: 1,
            pending: Vec::new(),
        })
    }

    /// Opens the connection and subscribes to `channel`, all within the target's setup timeout:
    /// connect + subscribe (waiting for both replies), or `sub <channel>` in the raw dialect.
    pub async fn open_subscribed(target: &Target, channel: &str) -> Result<Client> {
        let setup = async {
            let mut client = Client::open(target).await?;
            match client.dialect {
                Dialect::Centrifugo(_) => {
                    client.connect().await?;
                    client
                        .request(Command {
                            subscribe: Some(SubscribeRequest {
                                channel: channel.to_owned(),
                                ..Default::default()
                            }),
                            ..Default::default()
                        })
                        .await
                        .context("subscribe")?;
                }
                Dialect::Raw { ack } => {
                    client
                        .ws
                        .send(Message::Text(Utf8Bytes::from(format!("sub {channel}"))))
                        .await?;
                    if ack {
                        match client.next().await? {
                            Incoming::Raw(_) => {}
                            Incoming::Replies(_) | Incoming::Publications(_) => {
                                bail!("replies in the raw dialect")
                            }
                            Incoming::Closed => bail!("closed before the sub ack"),
                        }
                    }
                }
            }
            Ok(client)
        };
        tokio::time::timeout(target.setup_timeout, setup)
            .await
            .map_err(|_| anyhow!("setup timed out after {:?}", target.setup_timeout))?
    }

    /// Opens the connection and sends `connect`, within the target's setup timeout.
    pub async fn open_connected(target: &Target) -> Result<Client> {
        let setup = async {
            let mut client = Client::open(target).await?;
            client.connect().await?;
            Ok(client)
        };
        tokio::time::timeout(target.setup_timeout, setup)
            .await
            .map_err(|_| anyhow!("setup timed out after {:?}", target.setup_timeout))?
    }

    /// Sends `connect` and waits for its reply; remembers whether pongs are expected.
    async fn connect(&mut self) -> Result<()> {
        let reply = self
            .request(Command {
                connect: Some(ConnectRequest {
                    name: "sidewire-bench".into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .context("connect")?;
        let result = reply
            .connect
            .ok_or_else(|| anyhow!("connect reply without a result"))?;
        self.pong = result.pong;
        Ok(())
    }

    /// Assigns the next command id, sends the command and waits for the reply with that id.
    /// Pushes read meanwhile are kept for [`Client::next`].
    pub async fn request(&mut self, mut command: Command) -> Result<Reply> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        command.id = id;
        self.send_command(&command).await?;
        let mut stash = Vec::new();
        let found = loop {
            match self.read_message().await? {
                Incoming::Replies(replies) => {
                    let mut found = None;
                    for reply in replies {
                        if reply.id == id && found.is_none() {
                            found = Some(reply);
                        } else {
                            stash.push(reply);
                        }
                    }
                    if let Some(reply) = found {
                        break reply;
                    }
                }
                Incoming::Publications(publications) => stash.extend(
                    publications
                        .into_iter()
                        .map(|(channel, data)| publication_reply(&channel, data)),
                ),
                Incoming::Raw(_) => bail!("raw payload in the centrifugo dialect"),
                Incoming::Closed => bail!("connection closed while waiting for reply {id}"),
            }
        };
        self.pending.extend(stash);
        if let Some(error) = &found.error {
            bail!("reply {id}: error {} {}", error.code, error.message);
        }
        Ok(found)
    }

    /// Sends several commands as one WebSocket message (a batch: JSON lines, or Protobuf
    /// length-delimited messages back to back). Ids are left as given.
    pub async fn send_batch(&mut self, commands: &[Command]) -> Result<()> {
        let Dialect::Centrifugo(encoding) = self.dialect else {
            bail!("commands need the centrifugo dialect");
        };
        let mut bytes = Vec::new();
        for command in commands {
            if encoding == Encoding::Json && !bytes.is_empty() {
                bytes.push(b'\n');
            }
            let encoded = encode_message(encoding, command).map_err(|e| anyhow!("encode: {e}"))?;
            bytes.extend_from_slice(&encoded);
        }
        let message = match encoding {
            Encoding::Json => Message::Text(Utf8Bytes::try_from(Bytes::from(bytes))?),
            Encoding::Protobuf => Message::Binary(Bytes::from(bytes)),
        };
        self.ws.send(message).await?;
        Ok(())
    }

    /// Sends one command as its own WebSocket message.
    pub async fn send_command(&mut self, command: &Command) -> Result<()> {
        let Dialect::Centrifugo(encoding) = self.dialect else {
            bail!("commands need the centrifugo dialect");
        };
        let bytes = encode_message(encoding, command).map_err(|e| anyhow!("encode: {e}"))?;
        let message = match encoding {
            Encoding::Json => Message::Text(Utf8Bytes::try_from(bytes)?),
            Encoding::Protobuf => Message::Binary(bytes),
        };
        self.ws.send(message).await?;
        Ok(())
    }

    /// The next batch of replies / raw payload, answering pings on the way.
    pub async fn next(&mut self) -> Result<Incoming> {
        if !self.pending.is_empty() {
            return Ok(Incoming::Replies(std::mem::take(&mut self.pending)));
        }
        self.read_message().await
    }

    async fn read_message(&mut self) -> Result<Incoming> {
        loop {
            let Some(message) = self.ws.next().await else {
                return Ok(Incoming::Closed);
            };
            let payload = match message? {
                Message::Text(text) => Bytes::from(text),
                Message::Binary(bytes) => bytes,
                Message::Close(_) => return Ok(Incoming::Closed),
                // tungstenite answers WebSocket pings itself.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            };
            let Dialect::Centrifugo(encoding) = self.dialect else {
                return Ok(Incoming::Raw(payload));
            };
            if encoding == Encoding::Json
                && let Some(publications) = only_publications(&payload)
            {
                return Ok(Incoming::Publications(publications));
            }
            let mut replies = decode_replies(encoding, &payload)?;
            let before = replies.len();
            replies.retain(|reply| *reply != Reply::default());
            let pings = before - replies.len();
            if pings > 0 && self.pong {
                for _ in 0..pings {
                    self.send_command(&Command::default()).await?;
                }
            }
            if !replies.is_empty() {
                return Ok(Incoming::Replies(replies));
            }
        }
    }

    /// Sends a close frame and waits (bounded) for the server's close.
    pub async fn close(mut self, timeout: Duration) {
        let closing = async {
            if self.ws.close(None).await.is_err() {
                return;
            }
            while let Some(Ok(_)) = self.ws.next().await {}
        };
        let _ = tokio::time::timeout(timeout, closing).await;
    }
}

/// Splits one server WebSocket message into replies (JSON lines or varint-delimited Protobuf).
///
/// JSON lines are sliced out of `payload` without copying. (A message made only of
/// publication pushes does not come here: [`Client::next`] reads it with [`fast_publication`],
/// since at 10 000 subscribers the generator's parser, not the server, bounded the saturating
/// fan-out; bench/RESULTS.md.)
pub fn decode_replies(encoding: Encoding, payload: &Bytes) -> Result<Vec<Reply>> {
    let mut replies = Vec::new();
    if encoding == Encoding::Json {
        for line in json_lines(payload) {
            if line.len() > MAX_MESSAGE_BYTES {
                bail!("bad server message: line of {} bytes", line.len());
            }
            replies
                .push(serde_json::from_slice(&line).map_err(|e| anyhow!("bad JSON reply: {e}"))?);
        }
        return Ok(replies);
    }
    let mut splitter = FrameSplitter::new(encoding, MAX_MESSAGE_BYTES);
    splitter.push(payload);
    while let Some(message) = splitter
        .next_message()
        .map_err(|e| anyhow!("bad server message: {e}"))?
    {
        replies.push(Reply::decode(message).map_err(|e| anyhow!("bad reply: {e}"))?);
    }
    Ok(replies)
}

/// A publication push `{"push":{"channel":"C","pub":{"data":D[,"info":{..}],"offset":N}}}`
/// read without serde, as `(C, D)`: `C` without escapes, `D` a JSON object or array whose end
/// is found by bracket depth outside strings. `None` for any other shape (serde then reads the
/// line), so a line is never misread: every byte outside `D` and `info` is checked. The offset
/// is checked for shape only (the generator orders by the payload's own `seq`).
fn fast_publication(line: &Bytes) -> Option<(Bytes, Bytes)> {
    let rest = line.strip_prefix(b"{\"push\":{\"channel\":\"")?;
    let channel_start = line.len() - rest.len();
    let quote = rest.iter().position(|b| *b == b'"')?;
    if rest[..quote].contains(&b'\\') {
        return None;
    }
    let rest = rest[quote..].strip_prefix(b"\",\"pub\":{\"data\":")?;
    let data_start = line.len() - rest.len();
    let data_len = json_container_len(rest)?;
    let mut rest = &rest[data_len..];
    if let Some(after) = rest.strip_prefix(b",\"info\":") {
        rest = &after[json_container_len(after)?..];
    }
    if let Some(after) = rest.strip_prefix(b",\"offset\":") {
        let digits = after.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || digits > 20 {
            return None;
        }
        rest = &after[digits..];
    }
    (rest == b"}}}").then(|| {
        (
            line.slice(channel_start..channel_start + quote),
            line.slice(data_start..data_start + data_len),
        )
    })
}

/// Every line of a JSON message as a fast publication, or `None` if any line is something
/// else (a ping, a reply, another push shape), so the caller decodes the whole message.
fn only_publications(payload: &Bytes) -> Option<Vec<(Bytes, Bytes)>> {
    let mut publications = Vec::new();
    for line in json_lines(payload) {
        publications.push(fast_publication(&line)?);
    }
    (!publications.is_empty()).then_some(publications)
}

/// The non-empty `\n`-separated lines of `payload`, sliced without copying.
fn json_lines(payload: &Bytes) -> impl Iterator<Item = Bytes> + '_ {
    payload
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| payload.slice_ref(line))
}

/// The reply serde would read from a fast publication (offset left at 0).
fn publication_reply(channel: &[u8], data: Bytes) -> Reply {
    use sidewire::protocol::client::{Publication, Push};
    Reply {
        push: Some(Push {
            channel: String::from_utf8_lossy(channel).into_owned(),
            r#pub: Some(Publication {
                data,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Length of the JSON object or array at the start of `text`, found by bracket depth with
/// strings (and their escapes) skipped; `None` if `text` does not start with one or it does
/// not end.
fn json_container_len(text: &[u8]) -> Option<usize> {
    if !matches!(text.first(), Some(b'{' | b'[')) {
        return None;
    }
    let mut depth = 0usize;
    let mut at = 0;
    while at < text.len() {
        match text[at] {
            b'"' => {
                // Jump to the closing quote: the next `"` not escaped by a `\`.
                at += 1;
                loop {
                    at += text
                        .get(at..)?
                        .iter()
                        .position(|b| matches!(b, b'"' | b'\\'))?;
                    if text[at] == b'"' {
                        break;
                    }
                    at += 2;
                }
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(at + 1);
                }
            }
            _ => {}
        }
        at += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_batches_and_pings_split() {
        let replies = decode_replies(
            Encoding::Json,
            &Bytes::from_static(b"{}\n{\"id\":3,\"rpc\":{}}\n"),
        )
        .unwrap();
        assert_eq!(replies.len(), 2);
        assert_eq!(replies[0], Reply::default());
        assert_eq!(replies[1].id, 3);
    }

    #[test]
    fn protobuf_batches_split() {
        let reply = Reply {
            id: 7,
            ..Default::default()
        };
        let mut frame = vec![0u8];
        frame.extend(reply.encode_length_delimited_to_vec());
        let replies = decode_replies(Encoding::Protobuf, &Bytes::from(frame)).unwrap();
        assert_eq!(replies, vec![Reply::default(), reply]);
    }

    /// The fast reader and serde agree on every push shape the servers write, and the fast
    /// reader declines (serde decides) whatever it does not fully check.
    #[test]
    fn publication_pushes_read_fast_agree_with_serde() {
        let lines: [&[u8]; 6] = [
            br#"{"push":{"channel":"c","pub":{"data":{"ts":1,"seq":2,"pad":"x}{"},"offset":7}}}"#,
            br#"{"push":{"channel":"chat","pub":{"data":{"x":[1,{"y":"\"}"}]},"info":{"user":"u","client":"c"},"offset":18446744073709551615}}}"#,
            br#"{"push":{"channel":"c","pub":{"data":[1,2]}}}"#,
            br#"{"push":{"channel":"c","pub":{"data":{"a":1},"tags":{"k":"v"},"offset":1}}}"#,
            br#"{"push":{"channel":"c\"d","pub":{"data":{"a":1}}}}"#,
            br#"{"push":{"channel":"c","join":{"info":{"user":"u","client":"c"}}}}"#,
        ];
        for (index, line) in lines.iter().enumerate() {
            let line = Bytes::copy_from_slice(line);
            let by_serde: Reply = serde_json::from_slice(&line).unwrap();
            match fast_publication(&line) {
                Some((channel, data)) => {
                    assert!(index < 3, "line {index} must be left to serde");
                    let serde = by_serde.push.unwrap();
                    assert_eq!(&channel[..], serde.channel.as_bytes());
                    assert_eq!(data, serde.r#pub.unwrap().data);
                }
                None => assert!(index >= 3, "line {index} should be read fast"),
            }
        }
        let batch = Bytes::copy_from_slice(&[lines[0], b"\n{}\n", lines[5]].concat());
        assert_eq!(decode_replies(Encoding::Json, &batch).unwrap().len(), 3);
        assert!(
            only_publications(&batch).is_none(),
            "a ping in the batch: serde decides"
        );
        let two = Bytes::copy_from_slice(&[lines[0], b"\n", lines[1]].concat());
        assert_eq!(only_publications(&two).map(|p| p.len()), Some(2));
        assert_eq!(json_container_len(br#"{"a":"b\\"}x"#), Some(11));
        assert_eq!(json_container_len(br#"["\"]"]"#), Some(7));
        assert_eq!(json_container_len(br#"{"a":"b\"}"#), None);
        assert!(decode_replies(Encoding::Json, &Bytes::from_static(b"{\"push\":{")).is_err());
    }

    #[test]
    fn only_loopback() {
        assert!(loopback_addr("ws://127.0.0.1:80/x", "ws://").is_ok());
        assert!(loopback_addr("ws://10.0.0.1:80/x", "ws://").is_err());
        assert!(loopback_addr("http://127.0.0.1:80/x", "ws://").is_err());
    }
}
