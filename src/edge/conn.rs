//! Client connections: the cap on open connections (total and per remote IP) taken at accept,
//! the IO wrapper that holds the permit for as long as the connection — or the WebSocket it
//! was upgraded to — lives, and the per-connection watchdog that closes a connection which
//! sends no request in time or sits idle.
//!
//! Guarantees: every accepted connection either holds a permit or is closed at once; the
//! permit is released however the connection ends (it is dropped with the IO); a connection
//! with no request in flight is closed after `client_handshake_timeout` (before its first
//! request: silent sockets, partial TLS handshakes or HTTP/2 prefaces) or
//! `client_idle_timeout` (afterwards: HTTP/1 keep-alive, HTTP/2 with no streams).

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{self, Config};
use crate::http::{Body, BoxError};
use crate::metrics::{Metrics, ReasonLabels};

/// Open connections per remote address (only addresses with at least one).
type IpCounts = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// Connections allowed on a listener that is not the client listener (admin, hub API).
pub const INTERNAL_MAX_CONNECTIONS: usize = 1024;

/// Timeouts applied to each connection of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionTimeouts {
    /// From accept to the first complete request head (TLS handshake included).
    pub handshake: Duration,
    /// With no request in flight, after the first one.
    pub idle: Duration,
    /// HTTP/2 PING period (`None`: off).
    pub keepalive_interval: Option<Duration>,
    /// HTTP/2 PING acknowledgement deadline.
    pub keepalive_timeout: Duration,
}

impl ConnectionTimeouts {
    /// The client listener's timeouts from `config`.
    pub fn from_config(config: &Config) -> ConnectionTimeouts {
        ConnectionTimeouts {
            handshake: *config.client_handshake_timeout,
            idle: *config.client_idle_timeout,
            keepalive_interval: (!config.http2_keepalive_interval.is_zero())
                .then_some(*config.http2_keepalive_interval),
            keepalive_timeout: *config.http2_keepalive_timeout,
        }
    }

    /// The defaults (used by the admin and hub API listeners).
    pub fn defaults() -> ConnectionTimeouts {
        ConnectionTimeouts {
            handshake: config::DEFAULT_CLIENT_HANDSHAKE_TIMEOUT,
            idle: config::DEFAULT_CLIENT_IDLE_TIMEOUT,
            keepalive_interval: Some(config::DEFAULT_HTTP2_KEEPALIVE_INTERVAL),
            keepalive_timeout: config::DEFAULT_HTTP2_KEEPALIVE_TIMEOUT,
        }
    }
}

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections` reached.
    Total,
    /// `max_connections_per_ip` reached for the peer's address.
    PerIp,
}

impl Refusal {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Total => "max_connections",
            Refusal::PerIp => "max_connections_per_ip",
        }
    }
}

/// The cap on open connections of one listener. Counting is O(1) per accept and per close.
pub struct ConnectionGate {
    total: Option<Arc<Semaphore>>,
    per_ip: usize,
    by_ip: IpCounts,
    metrics: Option<Arc<Metrics>>,
}

impl ConnectionGate {
    /// A gate admitting at most `max` connections (0 = no cap) and `max_per_ip` per remote
    /// address (0 = no cap); `metrics` (client listener only) counts open and refused ones.
    pub fn new(max: usize, max_per_ip: usize, metrics: Option<Arc<Metrics>>) -> ConnectionGate {
        ConnectionGate {
            total: (max > 0).then(|| Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS)))),
            per_ip: max_per_ip,
            by_ip: Arc::new(Mutex::new(HashMap::new())),
            metrics,
        }
    }

    /// Takes a permit for a connection from `ip`, or says why not (and counts the refusal).
    pub fn admit(&self, ip: IpAddr) -> Result<ConnectionPermit, Refusal> {
        // One client is one key whether it arrives over IPv4 or IPv4-mapped IPv6.
        let ip = ip.to_canonical();
        let total = match &self.total {
            Some(semaphore) => match semaphore.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => return Err(self.refused(Refusal::Total)),
            },
            None => None,
        };
        let ip = if self.per_ip > 0 {
            let mut by_ip = crate::sync::lock(&self.by_ip);
            let count = by_ip.entry(ip).or_insert(0);
            if *count >= self.per_ip {
                drop(by_ip);
                return Err(self.refused(Refusal::PerIp));
            }
            *count += 1;
            Some((ip, self.by_ip.clone()))
        } else {
            None
        };
        if let Some(metrics) = &self.metrics {
            metrics.tcp_connections.inc();
        }
        Ok(ConnectionPermit {
            _total: total,
            ip,
            metrics: self.metrics.clone(),
        })
    }

    fn refused(&self, refusal: Refusal) -> Refusal {
        if let Some(metrics) = &self.metrics {
            metrics
                .connections_refused
                .get_or_create(&ReasonLabels {
                    reason: refusal.label(),
                })
                .inc();
        }
        refusal
    }
}

/// One admitted connection's share of the cap; released on drop.
pub struct ConnectionPermit {
    _total: Option<OwnedSemaphorePermit>,
    ip: Option<(IpAddr, IpCounts)>,
    metrics: Option<Arc<Metrics>>,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        if let Some((ip, by_ip)) = self.ip.take() {
            let mut by_ip = crate::sync::lock(&by_ip);
            if let Some(count) = by_ip.get_mut(&ip) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    by_ip.remove(&ip);
                }
            }
        }
        if let Some(metrics) = &self.metrics {
            metrics.tcp_connections.dec();
        }
    }
}

/// A connection's byte stream carrying its permit: the permit lives exactly as long as the
/// stream, including after an HTTP upgrade hands the stream to a WebSocket session.
pub struct PermittedIo<S> {
    inner: S,
    _permit: ConnectionPermit,
}

impl<S> PermittedIo<S> {
    /// Ties `permit` to `inner`.
    pub fn new(inner: S, permit: ConnectionPermit) -> PermittedIo<S> {
        PermittedIo {
            inner,
            _permit: permit,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PermittedIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PermittedIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What the watchdog of one connection knows: requests in flight (a request is in flight
/// from the moment its head is parsed until its response body is finished or dropped).
#[derive(Default)]
pub struct Activity {
    in_flight: AtomicUsize,
    served: AtomicBool,
    changed: tokio::sync::Notify,
}

impl Activity {
    /// Marks a request in flight until the returned guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.served.store(true, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_one();
        InFlight {
            activity: self.clone(),
        }
    }

    /// Whether any request has started on this connection.
    pub fn served(&self) -> bool {
        self.served.load(Ordering::Relaxed)
    }

    /// Whether no request is in flight.
    pub fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }

    /// Resolves at the next change of the in-flight count (or at once if one happened since
    /// the last call).
    pub async fn changed(&self) {
        self.changed.notified().await
    }
}

/// A request in flight; see [`Activity::begin`].
pub struct InFlight {
    activity: Arc<Activity>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.activity.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.activity.changed.notify_one();
    }
}

/// A response body that holds `guard` (its request's [`InFlight`], a drain token...) until it
/// ends or is dropped.
struct TrackedBody<G> {
    inner: Body,
    guard: Option<G>,
}

impl<G: Unpin> HttpBody for TrackedBody<G> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.guard = None;
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

/// Wraps a response body so that `guard` (the request's [`InFlight`], a drain token...) is
/// held until the body is done.
pub fn track<G: Send + Sync + Unpin + 'static>(body: Body, guard: G) -> Body {
    TrackedBody {
        inner: body,
        guard: Some(guard),
    }
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_counts_total_and_per_ip_and_releases_on_drop() {
        let metrics = Arc::new(Metrics::default());
        let gate = ConnectionGate::new(3, 2, Some(metrics.clone()));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = gate.admit(a).unwrap();
        let _second = gate.admit(a).unwrap();
        assert_eq!(gate.admit(a).err(), Some(Refusal::PerIp));
        let _third = gate.admit(b).unwrap();
        assert_eq!(gate.admit(b).err(), Some(Refusal::Total));
        assert_eq!(metrics.tcp_connections.get(), 3);
        drop(first);
        assert_eq!(metrics.tcp_connections.get(), 2);
        let _again = gate.admit(a).unwrap();
        assert_eq!(gate.admit(a).err(), Some(Refusal::Total));
    }

    #[test]
    fn unlimited_gate_admits() {
        let gate = ConnectionGate::new(0, 0, None);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let permits: Vec<_> = (0..100).map(|_| gate.admit(ip).unwrap()).collect();
        assert_eq!(permits.len(), 100);
        assert!(gate.by_ip.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn activity_tracks_in_flight_until_body_ends() {
        let activity = Arc::new(Activity::default());
        assert!(activity.is_idle() && !activity.served());
        let body = track(crate::http::full("x"), activity.begin());
        assert!(!activity.is_idle());
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(&collected[..], b"x");
        assert!(activity.is_idle() && activity.served());
    }
}
