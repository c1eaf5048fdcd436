//! The one HTTP/1.1 client of the tests: requests with sized, chunked or no body
//! ([`request`], [`Payload`]), one connection for many requests ([`Conn`], over TCP or any
//! stream such as TLS), a response read in full ([`Fetched`]), and the text shortcuts the
//! WebSocket tests use ([`http`], [`try_http`], [`api_ok`]). Every exchange is bounded by
//! [`HTTP_TIMEOUT`]; the `try_` forms return transport errors instead of panicking.

use std::convert::Infallible;
use std::net::SocketAddr;

use ::http::{HeaderMap, Request, header};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Body, Frame, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::{HTTP_TIMEOUT, WAIT};

// === requests ===

/// Request body type of every request the tests send.
pub type ReqBody = BoxBody<Bytes, Infallible>;

/// How a request body is sent.
#[derive(Debug, Clone)]
pub enum Payload {
    /// No body.
    Empty,
    /// With `Content-Length`.
    Sized(Bytes),
    /// `Transfer-Encoding: chunked`, one chunk per element (no length announced).
    Chunked(Vec<Bytes>),
}

impl Payload {
    fn into_body(self) -> ReqBody {
        match self {
            Payload::Empty => Empty::new().boxed(),
            Payload::Sized(bytes) => Full::new(bytes).boxed(),
            Payload::Chunked(chunks) => StreamBody::new(futures_util::stream::iter(
                chunks
                    .into_iter()
                    .map(|chunk| Ok::<_, Infallible>(Frame::data(chunk))),
            ))
            .boxed(),
        }
    }

    /// `bytes` cut into chunks of at most `size` bytes, sent chunked.
    pub fn chunked(bytes: &[u8], size: usize) -> Payload {
        Payload::Chunked(bytes.chunks(size).map(Bytes::copy_from_slice).collect())
    }
}

/// A request to `addr` with `Host` set and the given headers.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
    payload: Payload,
) -> Request<ReqBody> {
    let mut builder = request_to(addr, method, path_and_query);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(payload.into_body()).expect("valid request")
}

/// A request builder with `Host` set to `addr`.
pub fn request_to(addr: SocketAddr, method: &str, path: &str) -> ::http::request::Builder {
    Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, addr.to_string())
}

/// Any complete request body the tests build (`Full`, `Empty`, [`ReqBody`]).
pub trait IntoReqBody:
    Body<Data = Bytes, Error = Infallible> + Send + Sync + Sized + 'static
{
}
impl<B> IntoReqBody for B where B: Body<Data = Bytes, Error = Infallible> + Send + Sync + 'static {}

fn boxed<B: IntoReqBody>(request: Request<B>) -> Request<ReqBody> {
    request.map(BodyExt::boxed)
}

// === responses ===

/// A response read in full.
#[derive(Debug)]
pub struct Fetched {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Fetched {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The value of a header, if present (as text).
    pub fn header(&self, name: &str) -> Option<String> {
        header_text(&self.headers, name)
    }
}

/// The value of a header, if present (as text).
pub fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .map(|v| v.to_str().unwrap_or("<non-ascii>").to_owned())
}

/// All values of a header, as text.
pub fn header_values(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap_or("<non-ascii>").to_owned())
        .collect()
}

/// The single value of a header (panics when absent).
pub fn header_value(headers: &HeaderMap, name: &str) -> String {
    header_text(headers, name).unwrap_or_else(|| panic!("no {name} header in {headers:?}"))
}

// === connections ===

/// One HTTP/1.1 client connection, kept alive across requests (sent one after the other).
pub struct Conn {
    sender: SendRequest<ReqBody>,
    driver: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Dropping the connection task closes the connection.
        self.driver.abort();
    }
}

impl Conn {
    /// Connects to `addr` (TCP, no delay) within [`WAIT`].
    pub async fn try_open(addr: SocketAddr) -> Result<Conn, String> {
        let tcp = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("no connection to {addr} within {WAIT:?}"))?
            .map_err(|e| format!("connect: {e}"))?;
        tcp.set_nodelay(true).ok();
        Conn::try_over(tcp).await
    }

    /// [`Conn::try_open`] that panics on failure.
    pub async fn open(addr: SocketAddr) -> Conn {
        Conn::try_open(addr)
            .await
            .unwrap_or_else(|e| panic!("HTTP connection to {addr}: {e}"))
    }

    /// The HTTP/1.1 handshake over `io` (e.g. a TLS stream), within [`WAIT`].
    pub async fn try_over<S>(io: S) -> Result<Conn, String>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let handshake = hyper::client::conn::http1::handshake(TokioIo::new(io));
        let (sender, connection) = tokio::time::timeout(WAIT, handshake)
            .await
            .map_err(|_| format!("no HTTP/1.1 handshake within {WAIT:?}"))?
            .map_err(|e| format!("handshake: {e}"))?;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Conn { sender, driver })
    }

    /// Sends `request` and returns the response head with its unread body, within
    /// [`HTTP_TIMEOUT`].
    pub async fn try_send(
        &mut self,
        request: Request<impl IntoReqBody>,
    ) -> Result<hyper::Response<Incoming>, String> {
        let send = async {
            self.sender
                .ready()
                .await
                .map_err(|e| format!("connection unusable: {e}"))?;
            self.sender
                .send_request(boxed(request))
                .await
                .map_err(|e| format!("send: {e}"))
        };
        tokio::time::timeout(HTTP_TIMEOUT, send)
            .await
            .map_err(|_| format!("no response head within {HTTP_TIMEOUT:?}"))?
    }

    /// [`Conn::try_send`] that panics (naming the request) on failure.
    pub async fn send(&mut self, request: Request<impl IntoReqBody>) -> hyper::Response<Incoming> {
        let what = format!("{} {}", request.method(), request.uri());
        self.try_send(request)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"))
    }

    /// Sends `request` and reads the whole response (each within [`HTTP_TIMEOUT`]).
    pub async fn try_fetch(
        &mut self,
        request: Request<impl IntoReqBody>,
    ) -> Result<Fetched, String> {
        let response = self.try_send(request).await?;
        let (parts, body) = response.into_parts();
        let body = tokio::time::timeout(HTTP_TIMEOUT, body.collect())
            .await
            .map_err(|_| format!("body not complete within {HTTP_TIMEOUT:?}"))?
            .map_err(|e| format!("reading the body: {e}"))?
            .to_bytes();
        Ok(Fetched {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    }

    /// [`Conn::try_fetch`] that panics (naming the request) on failure.
    pub async fn fetch(&mut self, request: Request<impl IntoReqBody>) -> Fetched {
        let what = format!("{} {}", request.method(), request.uri());
        self.try_fetch(request)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"))
    }
}

/// `request` on a new connection to `addr`, read in full.
pub async fn fetch(addr: SocketAddr, request: Request<impl IntoReqBody>) -> Fetched {
    Conn::open(addr).await.fetch(request).await
}

/// `request` on a new HTTP/1.1 connection over `io` (e.g. TLS), read in full.
pub async fn exchange<S>(io: S, request: Request<impl IntoReqBody>) -> Fetched
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let what = format!("{} {}", request.method(), request.uri());
    match Conn::try_over(io).await {
        Ok(mut conn) => conn.fetch(request).await,
        Err(e) => panic!("{what}: {e}"),
    }
}

// === text shortcuts ===

/// One HTTP/1.1 exchange; `(status, body)`. Panics on transport errors or timeout.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, String) {
    match try_http(addr, method, path, headers, body).await {
        Ok(result) => result,
        Err(e) => panic!("HTTP {method} http://{addr}{path} failed: {e}"),
    }
}

/// `GET path`.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(addr, "GET", path, &[], None).await
}

/// One HTTP/1.1 exchange on a new connection, returning transport errors (refused
/// connection, timeout) as `Err`. A body is sent as `application/json`.
pub async fn try_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Result<(u16, String), String> {
    let mut all = Vec::with_capacity(headers.len() + 1);
    if body.is_some() {
        all.push(("content-type", "application/json"));
    }
    all.extend_from_slice(headers);
    let payload = Payload::Sized(Bytes::from(body.unwrap_or("").to_owned()));
    let request = request(addr, method, path, &all, payload);
    let fetched = Conn::try_open(addr).await?.try_fetch(request).await?;
    Ok((fetched.status, fetched.text()))
}

// === the server API ===

/// `POST /api/<method>` with a JSON body; returns (status, parsed body or `Value::Null` when
/// the body is not JSON).
pub async fn api(
    addr: SocketAddr,
    method: &str,
    body: &Value,
    api_key: Option<&str>,
) -> (u16, Value) {
    let mut headers = Vec::new();
    if let Some(key) = api_key {
        headers.push(("X-API-Key", key));
    }
    let (status, text) = http(
        addr,
        "POST",
        &format!("/api/{method}"),
        &headers,
        Some(&body.to_string()),
    )
    .await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// `POST /api/<method>` that must succeed: 200 and a body with `result` and no `error`;
/// returns `result`.
pub async fn api_ok(addr: SocketAddr, method: &str, body: &Value, api_key: Option<&str>) -> Value {
    let (status, response) = api(addr, method, body, api_key).await;
    assert_eq!(status, 200, "/api/{method} {body}: {response}");
    assert!(
        response.get("error").is_none(),
        "/api/{method} {body} answered an error: {response}"
    );
    response
        .get("result")
        .cloned()
        .unwrap_or_else(|| panic!("/api/{method} {body}: no result in {response}"))
}

/// `POST /api/publish` of `data` to `channel` (no API key) that must succeed; returns
/// `result`.
pub async fn api_publish(api: SocketAddr, channel: &str, data: &Value) -> Value {
    api_ok(
        api,
        "publish",
        &json!({ "channel": channel, "data": data }),
        None,
    )
    .await
}

/// Client ids present in `channel` according to the hub's server API.
pub async fn presence_clients(api: SocketAddr, channel: &str) -> Vec<String> {
    let result = api_ok(api, "presence", &json!({ "channel": channel }), None).await;
    result["presence"]
        .as_object()
        .unwrap_or_else(|| panic!("presence result without a presence map: {result}"))
        .keys()
        .cloned()
        .collect()
}
