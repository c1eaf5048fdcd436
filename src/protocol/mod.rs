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
pub use frame::{DecodeError, EncodeError, decode_commands, encode_reply};

/// Version this server reports: `ConnectResult.version` when the upstream leaves it empty, the
/// hub's own connect results and its `info` API.
pub const SERVER_VERSION: &str = concat!("sidewire ", env!("CARGO_PKG_VERSION"));

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

/// Name of a command's type for logs and metrics (`pong` for an empty command).
pub fn command_kind(command: &client::Command) -> &'static str {
    let kinds: [(bool, &'static str); 13] = [
        (command.connect.is_some(), "connect"),
        (command.subscribe.is_some(), "subscribe"),
        (command.unsubscribe.is_some(), "unsubscribe"),
        (command.publish.is_some(), "publish"),
        (command.presence.is_some(), "presence"),
        (command.presence_stats.is_some(), "presence_stats"),
        (command.history.is_some(), "history"),
        (command.ping.is_some(), "ping"),
        (command.send.is_some(), "send"),
        (command.rpc.is_some(), "rpc"),
        (command.refresh.is_some(), "refresh"),
        (command.sub_refresh.is_some(), "sub_refresh"),
        (command.id == 0, "pong"),
    ];
    kinds
        .iter()
        .find(|(present, _)| *present)
        .map_or("unknown", |(_, kind)| kind)
}
