//! Reading request bodies under a byte limit (413 when over, before anything else happens).

use bytes::Bytes;
use http::{HeaderMap, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

/// Reads the whole body if it fits in `limit` bytes; 413 if it does not, 400 if reading fails.
pub async fn read_limited(
    body: Incoming,
    headers: &HeaderMap,
    limit: usize,
) -> Result<Bytes, StatusCode> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(StatusCode::PAYLOAD_TOO_LARGE);
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error)
            if error
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(StatusCode::PAYLOAD_TOO_LARGE)
        }
        Err(_) => Err(StatusCode::BAD_REQUEST),
    }
}

/// Whether the request asks for Protobuf: Content-Type exactly `application/octet-stream`
/// (no parameters), as centrifuge-js sends it.
pub fn is_protobuf(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes()) == Some(b"application/octet-stream")
}
