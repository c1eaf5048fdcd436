//! The one accept loop of every TCP listener (the client and admin listeners, the hub's API
//! and gRPC Link listeners), the [`Acceptor`]s that turn an accepted TCP stream into the byte
//! stream a protocol is served on (plain, or TLS in [`tls`]), the bounded handshake, and the
//! task tracker drain awaits.
//!
//! This module depends on nothing else in the crate: the caller decides what "closing" means
//! (a future), what to do with each accepted connection (a closure: cap, spawn, serve) and what
//! to count on an accept failure.
//!
//! Guarantees: an accept failure (EMFILE, ENFILE, ENOBUFS...) never ends the loop; it backs
//! off from [`ACCEPT_BACKOFF_MIN`] doubling to [`ACCEPT_BACKOFF_MAX`] and is logged once per
//! burst; the loop returns as soon as the shutdown future resolves, even mid-backoff; open
//! connections are never touched by the loop.

pub mod tls;
pub mod tls_keys;
pub mod tls_stream;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

pub use tokio_util::task::TaskTracker;

/// First pause after a failed accept.
pub const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest pause between failed accepts.
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Turns an accepted TCP stream into the byte stream a protocol is served on (TLS or not).
pub trait Acceptor: Clone + Send + Sync + 'static {
    /// The stream type after the handshake.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Performs the handshake (if any).
    fn accept(
        &self,
        stream: TcpStream,
    ) -> impl Future<Output = std::io::Result<Self::Stream>> + Send;

    /// Whether the client's first bytes arrive unchanged on the TCP stream (no TLS), so the
    /// HTTP version can be told by peeking at them.
    fn is_plain(&self) -> bool {
        false
    }

    /// Whether the handshake settled on HTTP/1.1 (TLS ALPN `http/1.1`), so the first request
    /// head can be read as HTTP/1 (the edge's owned streaming path).
    fn negotiated_http1(&self, _stream: &Self::Stream) -> bool {
        false
    }
}

/// Plain TCP: no handshake.
#[derive(Debug, Clone, Copy)]
pub struct PlainAcceptor;

impl Acceptor for PlainAcceptor {
    type Stream = TcpStream;
    async fn accept(&self, stream: TcpStream) -> std::io::Result<TcpStream> {
        Ok(stream)
    }

    fn is_plain(&self) -> bool {
        true
    }
}

/// Why [`handshake`] gave no stream.
#[derive(Debug, Error)]
pub enum HandshakeError {
    /// The acceptor failed (bad TLS, peer reset...).
    #[error("handshake failed: {0}")]
    Failed(#[from] std::io::Error),
    /// The deadline passed first.
    #[error("handshake timed out")]
    TimedOut,
}

/// Runs `acceptor`'s handshake on `stream`, giving up at `deadline`.
pub async fn handshake<A: Acceptor>(
    acceptor: &A,
    stream: TcpStream,
    deadline: Instant,
) -> Result<A::Stream, HandshakeError> {
    match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(error)) => Err(HandshakeError::Failed(error)),
        Err(_) => Err(HandshakeError::TimedOut),
    }
}

/// Accepts connections on `listener` until `shutdown` resolves, handing each to
/// `on_connection` with TCP_NODELAY set (the closure applies caps and spawns the connection's
/// task; it must not block). `on_accept_error` runs once per failed accept (a counter).
/// `name` labels the logs.
pub async fn accept_loop<S, C, E>(
    name: &'static str,
    listener: &TcpListener,
    shutdown: S,
    mut on_connection: C,
    on_accept_error: E,
) where
    S: Future<Output = ()>,
    C: FnMut(TcpStream, SocketAddr),
    E: Fn(),
{
    tokio::pin!(shutdown);
    let mut backoff = ACCEPT_BACKOFF_MIN;
    let mut failures: u64 = 0;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut shutdown => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                if failures > 0 {
                    tracing::info!(listener = name, failures, "accept recovered");
                    failures = 0;
                    backoff = ACCEPT_BACKOFF_MIN;
                }
                let _ = stream.set_nodelay(true);
                on_connection(stream, peer);
            }
            Err(error) => {
                if failures == 0 {
                    tracing::warn!(
                        listener = name,
                        %error,
                        "accept failed (out of file descriptors?): backing off; open \
                         connections are served as before, further failures of this burst \
                         are not logged"
                    );
                }
                failures += 1;
                on_accept_error();
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = &mut shutdown => return,
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn accept_loop_hands_over_connections_and_stops_on_shutdown() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let seen = Arc::new(AtomicUsize::new(0));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let counted = seen.clone();
        let serving = tokio::spawn(async move {
            accept_loop(
                "test",
                &listener,
                async move {
                    let _ = stopped.await;
                },
                move |stream, _peer| {
                    assert!(stream.nodelay().unwrap());
                    counted.fetch_add(1, Ordering::SeqCst);
                    let _ = tx.send(stream);
                },
                || {},
            )
            .await;
            listener
        });
        let _a = TcpStream::connect(addr).await.unwrap();
        let _b = TcpStream::connect(addr).await.unwrap();
        rx.recv().await.unwrap();
        rx.recv().await.unwrap();
        assert_eq!(seen.load(Ordering::SeqCst), 2);
        stop.send(()).unwrap();
        let listener = tokio::time::timeout(Duration::from_secs(5), serving)
            .await
            .expect("the loop ends on shutdown")
            .unwrap();
        // Still bound (the caller owns it), but nobody accepts any more.
        assert_eq!(listener.local_addr().unwrap(), addr);
    }

    #[tokio::test]
    async fn handshake_gives_up_at_the_deadline() {
        #[derive(Clone)]
        struct Stuck;
        impl Acceptor for Stuck {
            type Stream = TcpStream;
            async fn accept(&self, _stream: TcpStream) -> std::io::Result<TcpStream> {
                std::future::pending().await
            }
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        let deadline = Instant::now() + Duration::from_millis(50);
        let result = handshake(&Stuck, stream, deadline).await;
        assert!(matches!(result, Err(HandshakeError::TimedOut)));
    }
}
