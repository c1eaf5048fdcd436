//! SSE transport (JSON only): `GET ?cf_connect=<url-encoded connect command>` as EventSource
//! sends it, or `POST` with the command as body. One `data:` event per reply.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::body::read_limited;
use super::stream::{self, Framing, StreamStart};
use super::{Edge, Settings};
use crate::http::{Body, status};
use crate::protocol::Encoding;

/// The `cf_connect` value of a query string, URL-decoded; `None` when absent or empty.
pub fn connect_param(query: Option<&str>) -> Option<Bytes> {
    let query = query?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(name, _)| name == "cf_connect")
        .map(|(_, value)| value.into_owned())
        .filter(|value| !value.is_empty())
        .map(Bytes::from)
}

/// Answers a request to `sse_path`.
pub async fn handle(
    edge: &Arc<Edge>,
    settings: &Settings,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let limit = settings.config.sse_max_request_body_size;
    let (parts, body) = request.into_parts();
    let initial = match parts.method {
        Method::GET => match connect_param(parts.uri.query()) {
            Some(initial) => initial,
            None => return status(StatusCode::BAD_REQUEST),
        },
        Method::POST => {
            let timeout = settings.config.request_body_timeout;
            match read_limited(body, &parts.headers, limit, *timeout).await {
                // Copied, as in http_stream: a slice would pin hyper's read buffer.
                Ok(initial) => Bytes::copy_from_slice(&initial),
                Err(code) => return edge.body_refused(code),
            }
        }
        _ => return status(StatusCode::METHOD_NOT_ALLOWED),
    };
    stream::start(
        edge,
        settings,
        StreamStart {
            framing: Framing::Sse,
            encoding: Encoding::Json,
            initial,
            command_size_limit: limit,
        },
        &parts,
        peer,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cf_connect_is_decoded() {
        let query = "cf_connect=%7B%22id%22%3A1%2C%22connect%22%3A%7B%22name%22%3A%22a+b%22%7D%7D";
        assert_eq!(
            connect_param(Some(query)).unwrap(),
            Bytes::from_static(br#"{"id":1,"connect":{"name":"a b"}}"#)
        );
        assert_eq!(connect_param(Some("cf_connect=")), None);
        assert_eq!(connect_param(Some("other=1")), None);
        assert_eq!(connect_param(None), None);
    }
}
