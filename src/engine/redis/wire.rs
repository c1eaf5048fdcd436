//! Key names and the pub/sub envelope of the Redis engine.
//!
//! Every key and pub/sub channel of one sidewire channel carries the hash tag `{channel}`, so
//! they live on one Redis Cluster slot (a channel name with a `}` cuts the tag short the same
//! way in every name, which keeps them together).
//!
//! Envelope (the bytes published on a channel's pub/sub):
//! - `p<offset>:<epoch>:<Publication protobuf>`: a publication kept in history;
//! - `q<offset>:<epoch>:<Publication protobuf>`: a publication not kept (skip_history);
//! - `j<ClientInfo protobuf>` / `l<ClientInfo protobuf>`: a join / leave.

use bytes::Bytes;
use fred::prelude::Value;
use prost::Message as _;

use super::StreamState;
use crate::protocol::client::{ClientInfo, Publication};

/// Key names under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Names under `prefix`.
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    /// The history stream (entry ids `<offset>-1`, field `d`: the publication).
    pub fn stream(&self, channel: &str) -> String {
        format!("{}.stream.{{{channel}}}", self.prefix)
    }

    /// The position hash (`e` epoch, `s` offset).
    pub fn meta(&self, channel: &str) -> String {
        format!("{}.meta.{{{channel}}}", self.prefix)
    }

    /// The saved result of a publication with an idempotency key (same hash slot as the
    /// channel's other keys).
    pub fn idempotency(&self, channel: &str, key: &str) -> String {
        format!("{}.idempotency.{{{channel}}}.{key}", self.prefix)
    }

    /// The pub/sub channel.
    pub fn pubsub(&self, channel: &str) -> String {
        format!("{}.pub.{{{channel}}}", self.prefix)
    }

    /// Presence hash (client → info) and expiry sorted set (client → unix seconds).
    pub fn presence(&self, channel: &str) -> Vec<String> {
        vec![
            format!("{}.presence.data.{{{channel}}}", self.prefix),
            format!("{}.presence.expire.{{{channel}}}", self.prefix),
        ]
    }

    /// The control pub/sub channel every node listens to.
    pub fn control(&self) -> String {
        format!("{}.control", self.prefix)
    }

    /// Node announcements: hash (uid → info JSON) and expiry sorted set, one slot.
    pub fn nodes(&self) -> Vec<String> {
        vec![
            format!("{}.nodes.data.{{nodes}}", self.prefix),
            format!("{}.nodes.expire.{{nodes}}", self.prefix),
        ]
    }

    /// The sidewire channel of a pub/sub channel name.
    pub fn channel_of_pubsub<'a>(&self, name: &'a str) -> Option<&'a str> {
        name.strip_prefix(self.prefix.as_str())?
            .strip_prefix(".pub.{")?
            .strip_suffix('}')
    }
}

/// A decoded pub/sub message (transient: moved straight into the channel, so the size of
/// the publication variant costs nothing worth an allocation).
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum Envelope {
    /// A publication with its offset set; `kept` when it is in history.
    Publication {
        /// Stream epoch.
        epoch: String,
        /// The publication.
        publication: Publication,
        /// Whether history keeps it.
        kept: bool,
    },
    /// A client joined.
    Join(ClientInfo),
    /// A client left.
    Leave(ClientInfo),
}

impl Envelope {
    /// Encodes a join (`join`) or leave.
    pub fn presence_event(join: bool, info: &ClientInfo) -> Bytes {
        let mut bytes = Vec::with_capacity(info.encoded_len() + 1);
        bytes.push(if join { b'j' } else { b'l' });
        // Encoding into a Vec cannot run out of room.
        let _ = info.encode(&mut bytes);
        Bytes::from(bytes)
    }

    /// Decodes a message; `None` for bytes this engine did not write.
    pub fn decode(bytes: &[u8]) -> Option<Envelope> {
        let (&kind, rest) = bytes.split_first()?;
        match kind {
            b'j' => ClientInfo::decode(rest).ok().map(Envelope::Join),
            b'l' => ClientInfo::decode(rest).ok().map(Envelope::Leave),
            b'p' | b'q' => {
                let colon = rest.iter().position(|b| *b == b':')?;
                let offset: u64 = std::str::from_utf8(&rest[..colon]).ok()?.parse().ok()?;
                let rest = &rest[colon + 1..];
                let colon = rest.iter().position(|b| *b == b':')?;
                let epoch = std::str::from_utf8(&rest[..colon]).ok()?.to_owned();
                let mut publication = Publication::decode(&rest[colon + 1..]).ok()?;
                publication.offset = offset;
                Some(Envelope::Publication {
                    epoch,
                    publication,
                    kept: kind == b'p',
                })
            }
            _ => None,
        }
    }
}

/// Parses the POSITION script's reply `{top, epoch, entries}`.
pub fn stream_state(reply: Value) -> Option<StreamState> {
    let mut items = reply.into_array().into_iter();
    let top = items.next()?.as_u64()?;
    let epoch = items.next()?.as_string()?;
    let entries = items.next().map(Value::into_array).unwrap_or_default();
    let mut publications = Vec::with_capacity(entries.len());
    for entry in entries {
        let mut parts = entry.into_array().into_iter();
        let id = parts.next()?.as_string()?;
        let offset: u64 = id.split('-').next()?.parse().ok()?;
        let fields = parts.next()?.into_array();
        let data = fields.get(1)?.as_bytes()?;
        let mut publication = Publication::decode(data).ok()?;
        publication.offset = offset;
        publications.push(publication);
    }
    Some(StreamState {
        top,
        epoch,
        publications,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_channel_hash_tag() {
        let keys = Keys::new("sw");
        assert_eq!(keys.stream("news"), "sw.stream.{news}");
        assert_eq!(keys.meta("news"), "sw.meta.{news}");
        assert_eq!(keys.pubsub("a:b"), "sw.pub.{a:b}");
        assert_eq!(keys.channel_of_pubsub("sw.pub.{a:b}"), Some("a:b"));
        assert_eq!(keys.channel_of_pubsub("other.pub.{a}"), None);
    }

    #[test]
    fn envelopes_round_trip_and_junk_is_refused() {
        let publication = Publication {
            data: Bytes::from_static(b"{\"x\":1}"),
            ..Default::default()
        };
        let mut bytes = b"p42:abcd:".to_vec();
        bytes.extend(publication.encode_to_vec());
        match Envelope::decode(&bytes) {
            Some(Envelope::Publication {
                epoch,
                publication,
                kept,
            }) => {
                assert_eq!(epoch, "abcd");
                assert_eq!(publication.offset, 42);
                assert!(kept);
            }
            other => panic!("{other:?}"),
        }
        let info = ClientInfo {
            client: "c1".into(),
            ..Default::default()
        };
        assert_eq!(
            Envelope::decode(&Envelope::presence_event(false, &info)),
            Some(Envelope::Leave(info))
        );
        for junk in [&b""[..], b"x", b"pzz:e:", b"p1", b"p1:e"] {
            assert_eq!(Envelope::decode(junk), None, "{junk:?}");
        }
    }
}
