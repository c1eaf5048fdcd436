//! Centrifugo's JSON dialect of the client protocol: field names are the proto names, zero
//! values are omitted, 64-bit integers are JSON numbers and `bytes` fields are raw embedded
//! JSON (never base64). Encoding strips `\n` and `\r` from embedded payloads so newline and SSE
//! framing hold.

/// `skip_serializing_if` helper: true for a field holding its type's default value.
pub fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// Serde adapter for `bytes` fields: the bytes are a JSON document embedded as-is.
pub mod raw {
    use std::borrow::Cow;

    use bytes::Bytes;
    use serde::de::Error as _;
    use serde::ser::Error as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::value::RawValue;

    /// Error text used when a payload is not JSON; `frame` maps it to 3506.
    pub const NOT_JSON: &str = "payload is not valid JSON";

    /// Writes the bytes as raw JSON; fails for bytes that are not a JSON document.
    pub fn serialize<S: Serializer>(bytes: &Bytes, serializer: S) -> Result<S::Ok, S::Error> {
        let text = std::str::from_utf8(bytes).map_err(|_| S::Error::custom(NOT_JSON))?;
        // Line breaks would split newline framing (and SSE events, where a lone CR ends a
        // line too); in valid JSON they can only be whitespace, so dropping them is safe.
        let text: Cow<'_, str> = if text.contains(['\n', '\r']) {
            Cow::Owned(text.replace(['\n', '\r'], ""))
        } else {
            Cow::Borrowed(text)
        };
        let raw: &RawValue = serde_json::from_str(&text).map_err(|_| S::Error::custom(NOT_JSON))?;
        raw.serialize(serializer)
    }

    /// Reads any JSON value and keeps its exact text as the bytes.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer).map_err(D::Error::custom)?;
        Ok(Bytes::from(raw.get().to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use crate::protocol::client::{
        ClientInfo, Command, HistoryResult, PresenceStatsResult, Publication, PublishRequest, Push,
        Reply,
    };

    #[test]
    fn bytes_are_raw_json_and_zero_values_omitted() {
        let reply = Reply {
            push: Some(Push {
                channel: "chat".into(),
                r#pub: Some(Publication {
                    data: Bytes::from_static(br#"{"x":1}"#),
                    offset: 7,
                    info: Some(ClientInfo::default()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let text = serde_json::to_string(&reply).unwrap();
        assert_eq!(
            text,
            r#"{"push":{"channel":"chat","pub":{"data":{"x":1},"info":{"user":"","client":""},"offset":7}}}"#
        );
    }

    #[test]
    fn always_written_fields_stay() {
        let reply = Reply {
            id: 3,
            presence_stats: Some(PresenceStatsResult::default()),
            history: Some(HistoryResult::default()),
            ..Default::default()
        };
        let text = serde_json::to_string(&reply).unwrap();
        assert_eq!(
            text,
            r#"{"id":3,"presence_stats":{"num_clients":0,"num_users":0},"history":{"publications":[],"epoch":"","offset":0}}"#
        );
    }

    #[test]
    fn empty_reply_is_ping() {
        assert_eq!(serde_json::to_string(&Reply::default()).unwrap(), "{}");
    }

    #[test]
    fn newlines_in_payload_are_stripped() {
        let request = PublishRequest {
            channel: "c".into(),
            data: Bytes::from_static(b"{\n\"a\": [1,\r\n2]\r}"),
            ..Default::default()
        };
        let text = serde_json::to_string(&request).unwrap();
        assert!(!text.contains('\n'));
        assert_eq!(text, r#"{"channel":"c","data":{"a": [1,2]}}"#);
    }

    #[test]
    fn binary_payload_is_an_error() {
        let request = PublishRequest {
            data: Bytes::from_static(&[0xff, 0x00]),
            ..Default::default()
        };
        assert!(serde_json::to_string(&request).is_err());
    }

    #[test]
    fn commands_parse_with_spaces_unknown_fields_and_big_numbers() {
        let command: Command = serde_json::from_str(
            r#"{"id": 1, "connect": {"token": "t", "data": {"hello": "py"}, "name": "python", "dict": "x"}}"#,
        )
        .unwrap();
        assert_eq!(command.id, 1);
        let connect = command.connect.unwrap();
        assert_eq!(&connect.data[..], br#"{"hello": "py"}"#);
        assert_eq!(connect.name, "python");

        let command: Command = serde_json::from_str(
            r#"{"id":2,"subscribe":{"channel":"c","recover":true,"offset":18446744073709551615,"epoch":"e"}}"#,
        )
        .unwrap();
        assert_eq!(command.subscribe.unwrap().offset, u64::MAX);
    }
}
