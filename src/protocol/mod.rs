//! Client protocol v2: the Protobuf types (generated from `proto/sidewire/v1/client.proto`),
//! Centrifugo's JSON dialect of them, batch framing and the error / disconnect code tables.
//!
//! Guarantee: what `encode_reply` writes and `decode_commands` reads is byte-compatible with
//! Centrifugo's client protocol in both encodings, so the official SDKs work unchanged.

pub mod codes;
pub mod frame;
pub mod json;

/// Prost types of the client protocol (package `sidewire.client.v2`).
pub use crate::pb::sidewire::client::v2 as client;

pub use codes::{Disconnect, ErrorCode};
pub use frame::{DecodeError, EncodeError, FrameSplitter, decode_commands, encode_reply};

/// Encoding of one client connection, chosen once when it opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// Newline-separated JSON objects; `bytes` fields are raw embedded JSON.
    Json,
    /// Varint-length-delimited Protobuf messages.
    Protobuf,
}

impl Encoding {
    /// Name used in logs, metrics and the Link (`json` / `protobuf`).
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Json => "json",
            Encoding::Protobuf => "protobuf",
        }
    }

    /// Index for per-encoding arrays (0 = JSON, 1 = Protobuf).
    pub fn index(self) -> usize {
        match self {
            Encoding::Json => 0,
            Encoding::Protobuf => 1,
        }
    }
}
