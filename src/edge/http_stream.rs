//! HTTP-streaming transport: `POST` with the connect command as body (JSON, or Protobuf when
//! Content-Type is exactly `application/octet-stream`), answered by a streaming response.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::body::{is_protobuf, read_limited};
use super::stream::{self, Framing, StreamStart};
use super::{Edge, Settings};
use crate::http::{Body, status};
use crate::protocol::Encoding;

/// Answers a request to `http_stream_path`.
pub async fn handle(
    edge: &Arc<Edge>,
    settings: &Settings,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    if request.method() != Method::POST {
        return status(StatusCode::METHOD_NOT_ALLOWED);
    }
    let encoding = if is_protobuf(request.headers()) {
        Encoding::Protobuf
    } else {
        Encoding::Json
    };
    let limit = settings.config.http_stream_max_request_body_size;
    let (parts, body) = request.into_parts();
    let timeout = settings.config.request_body_timeout;
    let initial = match read_limited(body, &parts.headers, limit, *timeout).await {
        // Copied: the body is a slice of hyper's read buffer, and holding it while the
        // response streams makes hyper allocate a second read buffer for the connection.
        Ok(initial) => Bytes::copy_from_slice(&initial),
        Err(code) => return edge.body_refused(code),
    };
    stream::start(
        edge,
        settings,
        StreamStart {
            framing: Framing::HttpStream,
            encoding,
            initial,
            command_size_limit: limit,
        },
        &parts,
        peer,
    )
}
