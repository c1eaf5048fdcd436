//! Connections to a plain-`http` HTTP/1.1 backend, owned by the passthrough rather than by a
//! general-purpose client: a request is written by hyper's `client::conn::http1` connection
//! task, and the connection goes back to the pool as soon as its response body has been read,
//! from the request's own task (no task spawned per request, no timer per connection).
//!
//! Guarantees: at most `max_idle` idle connections are kept, the most recently used first; an
//! idle connection older than `idle_timeout` is never reused and is closed by the pool's one
//! sweeper; a connection whose response body was not read to its end is closed, never reused;
//! a request that a reused connection could not even start writing (the backend closed it
//! while idle) is sent once more on a new connection; the pool's lock is held only to push or
//! pop one entry.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::client::legacy::connect::HttpConnector;
use thiserror::Error;
use tokio::time::Instant;
use tower_service::Service;

use crate::http::{Body, BoxError};

/// Why a request could not be exchanged with the backend.
#[derive(Debug, Error)]
pub enum PoolError {
    /// No TCP connection could be opened (refused, unresolvable, `connect_timeout`).
    #[error("connect to the backend: {0}")]
    Connect(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The HTTP/1.1 exchange failed (the request body's own errors are in its source chain).
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

/// Pool settings, from `backend.*`.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// `http://host:port` of the backend (path ignored).
    pub origin: Uri,
    /// Time allowed to open one TCP connection.
    pub connect_timeout: Duration,
    /// Idle connections are not reused (and are closed) after this long.
    pub idle_timeout: Duration,
    /// Idle connections kept at most.
    pub max_idle: usize,
}

/// A cloneable handle on one backend's HTTP/1.1 connections.
pub struct Http1Pool<B = Body> {
    shared: Arc<Shared<B>>,
}

impl<B> Clone for Http1Pool<B> {
    fn clone(&self) -> Self {
        Http1Pool {
            shared: self.shared.clone(),
        }
    }
}

struct Shared<B> {
    origin: Uri,
    connector: HttpConnector,
    idle_timeout: Duration,
    max_idle: usize,
    /// Idle connections, oldest at the front.
    idle: Mutex<VecDeque<Idle<B>>>,
    /// Connections the fast path keeps pinned (bounded by `max_idle` on their own).
    pinned: Arc<AtomicUsize>,
}

struct Idle<B> {
    sender: SendRequest<B>,
    since: Instant,
}

impl<B> Http1Pool<B>
where
    B: HttpBody + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// A pool that opens connections on demand; its sweeper task ends with the last handle.
    /// Must be called inside a Tokio runtime.
    pub fn new(config: PoolConfig) -> Http1Pool<B> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_keepalive(Some(TCP_KEEPALIVE));
        let shared = Arc::new(Shared {
            origin: config.origin,
            connector,
            idle_timeout: config.idle_timeout,
            max_idle: config.max_idle,
            idle: Mutex::new(VecDeque::new()),
            pinned: Arc::new(AtomicUsize::new(0)),
        });
        if !config.idle_timeout.is_zero() {
            tokio::spawn(sweep(Arc::downgrade(&shared), config.idle_timeout));
        }
        Http1Pool { shared }
    }

    /// Sends `request` (origin-form URI, `Host` set) on an idle connection or a new one and
    /// returns the response head. Its body must be read through [`PooledBody`] (done by
    /// [`Exchange::into_response`]) for the connection to be reused.
    pub async fn send(&self, mut request: Request<B>) -> Result<Exchange<B>, PoolError> {
        // Not ready: the connection closed while idle; the request is untouched.
        if let Some(mut sender) = self.shared.take_idle()
            && sender.ready().await.is_ok()
        {
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(Exchange::new(response, sender, &self.shared)),
                Err(mut error) => match error.take_message() {
                    // Never written: the backend had closed the connection. Once more, on a
                    // new connection.
                    Some(unsent) => request = unsent,
                    None => return Err(error.into_error().into()),
                },
            }
        }
        // Boxed: the rare path, whose futures would otherwise size every request's.
        Box::pin(self.send_on_new(request)).await
    }

    /// Sends `request` on a new connection.
    async fn send_on_new(&self, request: Request<B>) -> Result<Exchange<B>, PoolError> {
        let mut sender = self.shared.connect().await?;
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        Ok(Exchange::new(response, sender, &self.shared))
    }

    /// A new raw TCP connection to the backend (connect timeout, `TCP_NODELAY` and keepalive
    /// as for pooled connections), for the edge's owned HTTP/1.1 fast path, which speaks
    /// HTTP/1.1 on it itself.
    pub async fn connect_tcp(&self) -> Result<tokio::net::TcpStream, PoolError> {
        let io = self
            .shared
            .connector
            .clone()
            .call(self.shared.origin.clone())
            .await
            .map_err(|e| PoolError::Connect(Box::new(e)))?;
        Ok(io.into_inner())
    }

    /// This pool's identity (stable while any handle lives): a connection opened through one
    /// pool is never used for another after a reload.
    pub fn id(&self) -> usize {
        Arc::as_ptr(&self.shared) as *const () as usize
    }

    /// Settings the fast path applies to the connection it keeps: (idle timeout, max idle).
    pub fn limits(&self) -> (Duration, usize) {
        (self.shared.idle_timeout, self.shared.max_idle)
    }

    /// A slot for one connection the fast path keeps pinned to a client connection, counted
    /// against `max_idle` (`pool_max_idle_per_host`) together with the other pinned ones;
    /// `None` when they already use it all. Released on drop.
    pub fn try_pin(&self) -> Option<PinSlot> {
        let pinned = &self.shared.pinned;
        let mut current = pinned.load(Ordering::Relaxed);
        loop {
            if current >= self.shared.max_idle {
                return None;
            }
            match pinned.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Some(PinSlot {
                        count: pinned.clone(),
                    });
                }
                Err(now) => current = now,
            }
        }
    }

    /// Idle connections now (for tests).
    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.shared.lock().len()
    }
}

/// One backend connection kept by the fast path (see [`Http1Pool::try_pin`]).
#[derive(Debug)]
pub struct PinSlot {
    count: Arc<AtomicUsize>,
}

impl Drop for PinSlot {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// TCP keepalive on backend connections (as hyper-util's connector was configured).
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

impl<B> Shared<B> {
    fn lock(&self) -> MutexGuard<'_, VecDeque<Idle<B>>> {
        crate::sync::lock(&self.idle)
    }

    /// The most recently returned usable connection, if any. Closed or expired ones met on
    /// the way are dropped (outside the lock).
    fn take_idle(&self) -> Option<SendRequest<B>> {
        let now = Instant::now();
        let mut dead = Vec::new();
        let found = {
            let mut idle = self.lock();
            loop {
                match idle.pop_back() {
                    None => break None,
                    Some(entry) if entry.sender.is_closed() => dead.push(entry),
                    Some(entry) if now.duration_since(entry.since) >= self.idle_timeout => {
                        // Everything older is expired too.
                        dead.push(entry);
                        dead.extend(idle.drain(..));
                        break None;
                    }
                    Some(entry) => break Some(entry.sender),
                }
            }
        };
        drop(dead);
        found
    }

    /// Returns a connection whose last response was read to its end.
    fn put(&self, sender: SendRequest<B>) {
        if sender.is_closed() || self.max_idle == 0 {
            return;
        }
        let entry = Idle {
            sender,
            since: Instant::now(),
        };
        let evicted = {
            let mut idle = self.lock();
            let evicted = if idle.len() >= self.max_idle {
                idle.pop_front()
            } else {
                None
            };
            idle.push_back(entry);
            evicted
        };
        drop(evicted);
    }
}

impl<B> Shared<B>
where
    B: HttpBody + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// A new connection, its connection task spawned.
    async fn connect(&self) -> Result<SendRequest<B>, PoolError> {
        let io = self
            .connector
            .clone()
            .call(self.origin.clone())
            .await
            .map_err(|e| PoolError::Connect(Box::new(e)))?;
        let (sender, connection) = http1::Builder::new().handshake(io).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(%error, "passthrough: backend connection ended");
            }
        });
        Ok(sender)
    }
}

/// Closes idle connections once they are older than `idle_timeout` (checked every
/// `idle_timeout / 2`), until the pool is gone.
async fn sweep<B>(shared: Weak<Shared<B>>, idle_timeout: Duration) {
    let mut tick = tokio::time::interval(idle_timeout / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let now = Instant::now();
        let expired: Vec<Idle<B>> = {
            let mut idle = shared.lock();
            let fresh = idle
                .iter()
                .position(|e| now.duration_since(e.since) < idle_timeout && !e.sender.is_closed())
                .unwrap_or(idle.len());
            idle.drain(..fresh).collect()
        };
        drop(expired);
    }
}

/// A response from the backend whose connection has not been returned yet.
pub struct Exchange<B = Body> {
    response: Response<Incoming>,
    sender: SendRequest<B>,
    pool: Weak<Shared<B>>,
}

impl<B> Exchange<B> {
    fn new(response: Response<Incoming>, sender: SendRequest<B>, pool: &Arc<Shared<B>>) -> Self {
        Exchange {
            response,
            sender,
            pool: Arc::downgrade(pool),
        }
    }

    /// The response head (status, headers) before the body is read.
    pub fn response(&self) -> &Response<Incoming> {
        &self.response
    }

    /// The response with a body that returns the connection to the pool once read to its end.
    pub fn into_response(self) -> Response<PooledBody<B>> {
        let Exchange {
            response,
            sender,
            pool,
        } = self;
        let (parts, body) = response.into_parts();
        let mut body = PooledBody {
            inner: body,
            sender: Some(sender),
            pool,
        };
        if body.inner.is_end_stream() {
            body.release();
        }
        Response::from_parts(parts, body)
    }

    /// The response for an upgrade: the connection is not reused.
    pub fn into_upgrade(self) -> Response<Incoming> {
        self.response
    }
}

/// A backend response body that hands its connection back to the pool when it ends.
pub struct PooledBody<B = Body> {
    inner: Incoming,
    sender: Option<SendRequest<B>>,
    pool: Weak<Shared<B>>,
}

impl<B> PooledBody<B> {
    /// Returns the connection if the body has been read to its end; else closes it.
    fn release(&mut self) {
        let Some(sender) = self.sender.take() else {
            return;
        };
        if self.inner.is_end_stream()
            && let Some(pool) = self.pool.upgrade()
        {
            pool.put(sender);
        }
    }
}

impl<B> HttpBody for PooledBody<B> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.release(),
            Poll::Ready(Some(Err(_))) => drop(this.sender.take()),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for PooledBody<B> {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A backend answering every request on a connection with `body`, counting connections.
    async fn backend(body: &'static str) -> (Uri, Arc<std::sync::atomic::AtomicUsize>) {
        serve(body, false).await
    }

    /// The same, closing each connection (without saying so) after its first response.
    async fn serve(
        body: &'static str,
        close_after_one: bool,
    ) -> (Uri, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    let mut chunk = [0u8; 1024];
                    loop {
                        let Ok(read) = stream.read(&mut chunk).await else {
                            return;
                        };
                        if read == 0 {
                            return;
                        }
                        buffer.extend_from_slice(&chunk[..read]);
                        while let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                            buffer.drain(..end + 4);
                            let response = format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                                body.len()
                            );
                            if stream.write_all(response.as_bytes()).await.is_err()
                                || close_after_one
                            {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (format!("http://{addr}").parse().unwrap(), accepted)
    }

    fn pool(origin: Uri, max_idle: usize) -> Http1Pool<Body> {
        Http1Pool::new(PoolConfig {
            origin,
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(90),
            max_idle,
        })
    }

    fn get(origin: &Uri) -> Request<Body> {
        Request::builder()
            .uri("/x")
            .header(http::header::HOST, origin.authority().unwrap().as_str())
            .body(crate::http::empty())
            .unwrap()
    }

    #[tokio::test]
    async fn a_connection_read_to_its_end_is_reused() {
        let (origin, accepted) = backend("hello").await;
        let pool = pool(origin.clone(), 8);
        for _ in 0..5 {
            let response = pool.send(get(&origin)).await.unwrap().into_response();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"hello");
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(pool.idle_count(), 1);
    }

    #[tokio::test]
    async fn connections_the_backend_closed_while_idle_are_replaced() {
        let (origin, accepted) = serve("bye", true).await;
        let pool = pool(origin.clone(), 8);
        for _ in 0..3 {
            let response = pool.send(get(&origin)).await.unwrap().into_response();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"bye");
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn an_unread_body_closes_its_connection() {
        let (origin, accepted) = backend("hello").await;
        let pool = pool(origin.clone(), 8);
        let first = pool.send(get(&origin)).await.unwrap();
        // The response head is here, its body has not been read: this connection is busy.
        let second = pool.send(get(&origin)).await.unwrap();
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
        drop(first.into_upgrade());
        drop(second);
        assert_eq!(pool.idle_count(), 0);
    }

    #[tokio::test]
    async fn idle_connections_are_capped() {
        let (origin, _) = backend("").await;
        let pool = pool(origin.clone(), 2);
        let exchanges: Vec<Exchange<Body>> =
            futures_util::future::join_all((0..4).map(|_| pool.send(get(&origin))))
                .await
                .into_iter()
                .map(Result::unwrap)
                .collect();
        // Empty bodies: each connection goes back as its response is taken.
        for exchange in exchanges {
            drop(exchange.into_response());
        }
        assert_eq!(pool.idle_count(), 2);
    }

    #[tokio::test]
    async fn pinned_connections_are_capped_by_max_idle() {
        let (origin, _) = backend("").await;
        let pool = pool(origin, 2);
        let first = pool.try_pin().unwrap();
        let _second = pool.try_pin().unwrap();
        assert!(pool.try_pin().is_none());
        drop(first);
        assert!(pool.try_pin().is_some());
        let (origin, _) = backend("").await;
        assert!(self::pool(origin, 0).try_pin().is_none());
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin: Uri = format!("http://{}", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        drop(listener);
        let pool = pool(origin.clone(), 8);
        assert!(matches!(
            pool.send(get(&origin)).await,
            Err(PoolError::Connect(_))
        ));
    }
}
