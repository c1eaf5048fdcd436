//! A minimal keep-alive HTTP/1.1 POST client over one loopback connection (hyper's
//! connection-level API); reconnects once after a broken connection.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::client::loopback_addr;

/// Bound on one request (connect, send, whole response).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest response body read.
const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// A keep-alive connection posting to one `http://IP:PORT/path` URL.
pub struct Poster {
    addr: SocketAddr,
    path: String,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Poster {
    /// Parses the loopback URL; connects lazily on the first request.
    pub fn new(url: &str) -> Result<Poster> {
        let addr = loopback_addr(url, "http://")?;
        let rest = &url["http://".len()..];
        let path = rest.find('/').map_or("/", |at| &rest[at..]).to_owned();
        Ok(Poster {
            addr,
            path,
            sender: None,
        })
    }

    /// The URL's path (and query).
    pub fn path(&self) -> &str {
        &self.path
    }

    async fn connect(&mut self) -> Result<&mut SendRequest<Full<Bytes>>> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("connecting to {}", self.addr))?;
        tcp.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(self.sender.insert(sender))
    }

    /// POSTs `body` to `path_and_query` (JSON content type); returns status and body.
    pub async fn post(&mut self, path_and_query: &str, body: Bytes) -> Result<(StatusCode, Bytes)> {
        tokio::time::timeout(REQUEST_TIMEOUT, self.post_inner(path_and_query, body))
            .await
            .map_err(|_| anyhow!("request timed out after {REQUEST_TIMEOUT:?}"))?
    }

    async fn post_inner(
        &mut self,
        path_and_query: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes)> {
        let host = self.addr.to_string();
        let reuse = self.sender.as_ref().is_some_and(|s| !s.is_closed());
        let sender = match self.sender.as_mut() {
            Some(sender) if reuse => sender,
            _ => self.connect().await?,
        };
        sender.ready().await?;
        let request = Request::post(path_and_query)
            .header(header::HOST, host)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))?;
        let response = match sender.send_request(request).await {
            Ok(response) => response,
            Err(error) => {
                self.sender = None;
                bail!("request failed: {error}");
            }
        };
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| anyhow!("reading response: {e}"))?
            .to_bytes();
        Ok((status, body))
    }
}
