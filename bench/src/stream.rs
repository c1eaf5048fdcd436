//! Streaming clients for `idle --transport http-stream|sse`: one raw HTTP/1.1 request carrying
//! the JSON connect command (HTTP-stream: `POST` body; SSE: `GET ?cf_connect=`), the connect
//! reply read from the streaming response, then the response held open and drained.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::client::loopback_addr;

/// The connect command every streaming client sends.
const CONNECT_COMMAND: &str = r#"{"id":1,"connect":{"name":"sidewire-bench"}}"#;
/// Largest response head + connect reply the client accepts before giving up.
const MAX_SETUP_BYTES: usize = 64 << 10;
/// Read buffer while holding the stream (pings, pushes; discarded).
const HOLD_READ_BYTES: usize = 512;

/// Which streaming transport to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StreamKind {
    /// `POST /connection/http_stream`, newline-delimited JSON replies.
    HttpStream,
    /// `GET /connection/sse?cf_connect=...`, one `data:` event per reply.
    Sse,
}

impl StreamKind {
    /// Transport name for reports (`http_stream`, `sse`).
    pub fn name(self) -> &'static str {
        match self {
            StreamKind::HttpStream => "http_stream",
            StreamKind::Sse => "sse",
        }
    }
}

/// Where and how to open a streaming session: a loopback `http://` URL.
#[derive(Debug, Clone)]
pub struct StreamTarget {
    addr: SocketAddr,
    kind: StreamKind,
    /// The complete request bytes (identical for every client).
    request: Vec<u8>,
    setup_timeout: Duration,
}

impl StreamTarget {
    /// Parses `http://127.0.0.1:PORT/path`; refuses anything but a loopback IP literal.
    pub fn new(url: &str, kind: StreamKind, setup_timeout: Duration) -> Result<StreamTarget> {
        let addr = loopback_addr(url, "http://")?;
        let rest = &url["http://".len()..];
        let path = rest.find('/').map_or("/", |at| &rest[at..]);
        let request = match kind {
            StreamKind::HttpStream => format!(
                "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\n\r\n{CONNECT_COMMAND}",
                CONNECT_COMMAND.len()
            ),
            StreamKind::Sse => {
                let query: String =
                    form_urlencoded::byte_serialize(CONNECT_COMMAND.as_bytes()).collect();
                let separator = if path.contains('?') { '&' } else { '?' };
                format!(
                    "GET {path}{separator}cf_connect={query} HTTP/1.1\r\nHost: {addr}\r\n\
                     Accept: text/event-stream\r\n\r\n"
                )
            }
        };
        Ok(StreamTarget {
            addr,
            kind,
            request: request.into_bytes(),
            setup_timeout,
        })
    }

    /// The transport spoken.
    pub fn kind(&self) -> StreamKind {
        self.kind
    }
}

/// An open streaming session whose connect reply has been read.
pub struct StreamClient {
    tcp: TcpStream,
}

impl StreamClient {
    /// TCP connect, request, response head (must be 200) and the connect reply, all within
    /// the target's setup timeout.
    pub async fn open_connected(target: &StreamTarget) -> Result<StreamClient> {
        let setup = async {
            let socket = if target.addr.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            let mut tcp = socket.connect(target.addr).await.context("tcp connect")?;
            tcp.set_nodelay(true)?;
            tcp.write_all(&target.request).await.context("request")?;
            let mut seen = Vec::with_capacity(1024);
            let mut chunk = [0u8; 1024];
            loop {
                let n = tcp.read(&mut chunk).await.context("response")?;
                if n == 0 {
                    bail!(
                        "closed before the connect reply: {}",
                        String::from_utf8_lossy(&seen)
                    );
                }
                seen.extend_from_slice(&chunk[..n]);
                if let Some(head_end) = find(&seen, b"\r\n\r\n") {
                    if !seen.starts_with(b"HTTP/1.1 200") {
                        bail!(
                            "refused: {}",
                            String::from_utf8_lossy(&seen[..head_end])
                                .lines()
                                .next()
                                .unwrap_or("")
                        );
                    }
                    let body = &seen[head_end + 4..];
                    if find(body, b"\"error\"").is_some() {
                        bail!("connect error: {}", String::from_utf8_lossy(body));
                    }
                    if find(body, b"\"connect\"").is_some() {
                        break;
                    }
                }
                if seen.len() > MAX_SETUP_BYTES {
                    bail!("no connect reply in the first {MAX_SETUP_BYTES} bytes");
                }
            }
            Ok(StreamClient { tcp })
        };
        tokio::time::timeout(target.setup_timeout, setup)
            .await
            .map_err(|_| anyhow!("setup timed out after {:?}", target.setup_timeout))?
    }

    /// Waits for more of the response and discards it; `false` once the server closed it.
    pub async fn next(&mut self) -> Result<bool> {
        let mut chunk = [0u8; HOLD_READ_BYTES];
        Ok(self.tcp.read(&mut chunk).await? > 0)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests() {
        let timeout = Duration::from_secs(1);
        let target = StreamTarget::new(
            "http://127.0.0.1:9/connection/http_stream",
            StreamKind::HttpStream,
            timeout,
        )
        .unwrap();
        let request = String::from_utf8(target.request).unwrap();
        assert!(request.starts_with("POST /connection/http_stream HTTP/1.1\r\n"));
        assert!(request.ends_with(CONNECT_COMMAND));
        let target = StreamTarget::new(
            "http://127.0.0.1:9/connection/sse",
            StreamKind::Sse,
            timeout,
        )
        .unwrap();
        let request = String::from_utf8(target.request).unwrap();
        assert!(request.starts_with("GET /connection/sse?cf_connect=%7B%22id%22"));
        assert!(StreamTarget::new("http://10.0.0.1:9/x", StreamKind::Sse, timeout).is_err());
    }
}
