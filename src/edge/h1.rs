//! The small part of HTTP/1.1 the edge speaks itself on an owned connection (see `owned`):
//! reading one request head with a bounded buffer, reading a `Content-Length` body, and
//! writing a response head, chunks and small whole responses the way hyper writes them.
//!
//! Guarantees: a head is parsed by `httparse` and never buffered past [`MAX_HEAD_BYTES`] (plus
//! one socket read); reads go through the worker thread's scratch buffer (no buffer is kept
//! between reads once the head is parsed); no input makes any of this panic.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::wsconn::poll_read_scratch;
use crate::http::Body;

/// Largest request head read: a longer one is answered 431 (hyper's own limit is ~400 KiB,
/// nginx's 32 KiB by default).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header fields in a request head (hyper's default): more is answered 431.
pub const MAX_HEADERS: usize = 100;
/// First allocation for a request head; it grows with what arrives, up to [`MAX_HEAD_BYTES`].
const HEAD_INITIAL_BYTES: usize = 1024;

/// What reading a request head produced.
#[derive(Debug)]
pub enum HeadRead {
    /// A whole head: the request (without body) and the head's length in the buffer.
    Complete(Box<http::request::Parts>, usize),
    /// Not HTTP/1.x, or a field the `http` types refuse: answer 400.
    Malformed,
    /// Over [`MAX_HEAD_BYTES`] or [`MAX_HEADERS`]: answer 431.
    TooLarge,
    /// The client closed (or the read failed) before a whole head arrived.
    Closed,
}

/// Reads into `buf` until it holds a whole request head (bytes after it stay in `buf`).
/// Cancel-safe: all progress is in `buf`.
pub async fn read_head<S: AsyncRead + Unpin>(io: &mut S, buf: &mut BytesMut) -> HeadRead {
    loop {
        match parse_head(buf) {
            Parsed::Complete(parts, len) => return HeadRead::Complete(parts, len),
            Parsed::Malformed => return HeadRead::Malformed,
            Parsed::TooLarge => return HeadRead::TooLarge,
            Parsed::Partial if buf.len() >= MAX_HEAD_BYTES => return HeadRead::TooLarge,
            Parsed::Partial => {}
        }
        if buf.capacity() == 0 {
            buf.reserve(HEAD_INITIAL_BYTES);
        }
        let room = MAX_HEAD_BYTES - buf.len();
        match poll_fn(|cx| poll_read_scratch(io, cx, buf, room)).await {
            Ok(0) | Err(_) => return HeadRead::Closed,
            Ok(_) => {}
        }
    }
}

enum Parsed {
    Complete(Box<http::request::Parts>, usize),
    Partial,
    Malformed,
    TooLarge,
}

/// Parses `buf` as a request head; builds the request only once it is complete.
fn parse_head(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => return Parsed::TooLarge,
        Err(_) => return Parsed::Malformed,
    };
    match build(&request) {
        Some(parts) => Parsed::Complete(parts, len),
        None => Parsed::Malformed,
    }
}

fn build(parsed: &httparse::Request<'_, '_>) -> Option<Box<http::request::Parts>> {
    let method = Method::from_bytes(parsed.method?.as_bytes()).ok()?;
    let uri: Uri = parsed.path?.parse().ok()?;
    let version = match parsed.version? {
        1 => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    let headers = request.headers_mut();
    headers.reserve(parsed.headers.len());
    for header in parsed.headers.iter() {
        let name = HeaderName::from_bytes(header.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(header.value).ok()?;
        headers.append(name, value);
    }
    Some(Box::new(request.into_parts().0))
}

/// The body of a request on an owned connection: the `Content-Length` bytes, starting with
/// those that arrived with the head. Bytes past the declared length are dropped (pipelined
/// requests are not served on a streaming connection); the end of the stream before the
/// declared length is an error.
pub struct SocketBody<'a, S> {
    io: &'a mut S,
    early: Bytes,
    remaining: u64,
}

impl<'a, S> SocketBody<'a, S> {
    /// A body of `length` bytes: `early` (bytes read after the head) first, then `io`.
    pub fn new(io: &'a mut S, early: &[u8], length: u64) -> SocketBody<'a, S> {
        let take = usize::try_from(length)
            .unwrap_or(usize::MAX)
            .min(early.len());
        SocketBody {
            io,
            early: Bytes::copy_from_slice(&early[..take]),
            remaining: length,
        }
    }
}

impl<S: AsyncRead + Unpin> HttpBody for SocketBody<'_, S> {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        if !this.early.is_empty() {
            let chunk = std::mem::take(&mut this.early);
            this.remaining -= chunk.len() as u64;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        let mut chunk = BytesMut::new();
        let max = usize::try_from(this.remaining).unwrap_or(usize::MAX);
        match ready!(poll_read_scratch(this.io, cx, &mut chunk, max)) {
            Ok(0) => Poll::Ready(Some(Err(io::ErrorKind::UnexpectedEof.into()))),
            Ok(_) => {
                this.remaining -= chunk.len() as u64;
                Poll::Ready(Some(Ok(Frame::data(chunk.freeze()))))
            }
            Err(error) => Poll::Ready(Some(Err(error))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Length {
    /// `content-length: n`.
    Known(usize),
    /// `transfer-encoding: chunked`.
    Chunked,
}

/// Appends an HTTP/1.1 response head to `out` as hyper writes it: the status line, `headers`
/// in order, the length header, `date`, the blank line.
pub fn write_head(out: &mut BytesMut, status: StatusCode, headers: &HeaderMap, length: Length) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match length {
        Length::Known(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(n.to_string().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Length::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    if !headers.contains_key(http::header::DATE) {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(httpdate::fmt_http_date(SystemTime::now()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends `data` as one chunk of a chunked body (nothing for empty data: an empty chunk
/// would end the body).
pub fn write_chunk(out: &mut BytesMut, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    out.extend_from_slice(format!("{:X}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk of a chunked body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Writes a whole small response (an error or refusal) with `connection: close` within
/// `write_timeout`, then shuts the write side down. Failures are ignored: the connection ends
/// either way.
pub async fn respond_and_close<S: AsyncWrite + Unpin>(
    io: &mut S,
    response: http::Response<Body>,
    write_timeout: Duration,
) {
    let (mut parts, body) = response.into_parts();
    parts
        .headers
        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    let _ = tokio::time::timeout(write_timeout, async {
        // Whole bodies built in memory (`crate::http::status`, `full`, `empty`): ready at once.
        let body = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let mut out = BytesMut::with_capacity(256 + body.len());
        write_head(
            &mut out,
            parts.status,
            &parts.headers,
            Length::Known(body.len()),
        );
        out.extend_from_slice(&body);
        io.write_all(&out).await?;
        io.shutdown().await
    })
    .await;
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, duplex};

    use super::*;

    fn complete(head: &[u8]) -> (Box<http::request::Parts>, usize) {
        match parse_head(head) {
            Parsed::Complete(parts, len) => (parts, len),
            _ => panic!("not complete"),
        }
    }

    #[test]
    fn heads_are_parsed_or_refused() {
        let head: &[u8] =
            b"POST /connection/sse?cf_connect=1 HTTP/1.1\r\nHost: a\r\nX: 1\r\nX: 2\r\n\r\nbody";
        let (parts, len) = complete(head);
        assert_eq!(len, head.len() - b"body".len());
        assert_eq!(parts.method, Method::POST);
        assert_eq!(parts.uri.path(), "/connection/sse");
        assert_eq!(parts.uri.query(), Some("cf_connect=1"));
        assert_eq!(parts.version, Version::HTTP_11);
        assert_eq!(parts.headers.get_all("x").iter().count(), 2);
        let (parts, _) = complete(b"GET / HTTP/1.0\r\n\r\n");
        assert_eq!(parts.version, Version::HTTP_10);
        assert!(matches!(
            parse_head(b"GET / HTTP/1.1\r\nHost: a\r\n"),
            Parsed::Partial
        ));
        assert!(matches!(
            parse_head(b"GET / HTTP/2.0\r\n\r\n"),
            Parsed::Malformed
        ));
        assert!(matches!(
            parse_head(b"\x00\x01garbage\r\n\r\n"),
            Parsed::Malformed
        ));
        assert!(matches!(
            parse_head(b"GET / HTTP/1.1\r\nBad Name: 1\r\n\r\n"),
            Parsed::Malformed
        ));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("h{i}: v\r\n")).collect();
        let head = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert!(matches!(parse_head(head.as_bytes()), Parsed::TooLarge));
    }

    #[tokio::test]
    async fn a_head_is_read_across_reads_and_bounded() {
        let (mut client, mut server) = duplex(1 << 20);
        client.write_all(b"GET / HT").await.unwrap();
        let reading = tokio::spawn(async move {
            let mut buf = BytesMut::new();
            let head = read_head(&mut server, &mut buf).await;
            (head, buf)
        });
        client.write_all(b"TP/1.1\r\n\r\nextra").await.unwrap();
        let (head, buf) = reading.await.unwrap();
        let HeadRead::Complete(_, len) = head else {
            panic!("{head:?}")
        };
        assert_eq!(&buf[len..], b"extra");

        let (mut client, mut server) = duplex(1 << 20);
        let long = format!("GET / HTTP/1.1\r\nx: {}", "a".repeat(MAX_HEAD_BYTES));
        client.write_all(long.as_bytes()).await.unwrap();
        let mut buf = BytesMut::new();
        assert!(matches!(
            read_head(&mut server, &mut buf).await,
            HeadRead::TooLarge
        ));
        assert!(buf.len() < MAX_HEAD_BYTES + 1);
        drop(client);
        let mut buf = BytesMut::new();
        assert!(matches!(
            read_head(&mut server, &mut buf).await,
            HeadRead::Closed
        ));
    }

    #[tokio::test]
    async fn a_body_takes_early_bytes_then_the_socket_and_drops_the_excess() {
        let (mut client, mut server) = duplex(1024);
        client.write_all(b"defgh-pipelined").await.unwrap();
        let body = SocketBody::new(&mut server, b"abc", 8);
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(&collected[..], b"abcdefgh");
        // Early bytes past the length are dropped too.
        let body = SocketBody::new(&mut server, b"xyz", 2);
        assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"xy");
        // The stream ending first is an error.
        drop(client);
        let body = SocketBody::new(&mut server, b"", 4);
        assert!(body.collect().await.is_err());
    }

    #[tokio::test]
    async fn heads_chunks_and_small_responses() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        headers.insert("date", HeaderValue::from_static("x"));
        let mut out = BytesMut::new();
        write_head(&mut out, StatusCode::OK, &headers, Length::Chunked);
        write_chunk(&mut out, b"");
        write_chunk(&mut out, &[b'a'; 26]);
        assert_eq!(
            &out[..],
            &b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ndate: x\r\n\
               transfer-encoding: chunked\r\n\r\n1A\r\naaaaaaaaaaaaaaaaaaaaaaaaaa\r\n"[..]
        );
        let (mut client, mut server) = duplex(1024);
        respond_and_close(
            &mut server,
            crate::http::status(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
            Duration::from_secs(1),
        )
        .await;
        let mut text = String::new();
        client.read_to_string(&mut text).await.unwrap();
        assert!(text.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(text.contains("\r\nconnection: close\r\ncontent-length: 32\r\ndate: "));
        assert!(text.ends_with("\r\n\r\nRequest Header Fields Too Large\n"));
    }
}
