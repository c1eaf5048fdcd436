//! Server-API commands that act wherever a user's sessions are: the node that receives the
//! API call applies it to its own sessions and publishes it on the engine's control channel;
//! every other node applies it when it arrives (a node ignores its own messages).
//!
//! Message: JSON `{"node": <uid>, "op": "disconnect" | "unsubscribe" | "subscribe" |
//! "refresh", …the call's fields}`; anything else is ignored.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::Hub;
use crate::protocol::Disconnect;

/// One control operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControlOp {
    /// Disconnect a user's sessions (or one client), except `keep`.
    Disconnect {
        /// User.
        user: String,
        /// One connection only.
        client: Option<String>,
        /// Connections left alone.
        keep: Vec<String>,
        /// Disconnect code.
        code: u32,
        /// Disconnect reason.
        reason: String,
    },
    /// Unsubscribe a user's sessions (or one client) from a channel.
    Unsubscribe {
        /// User.
        user: String,
        /// One connection only.
        client: Option<String>,
        /// Channel.
        channel: String,
    },
    /// Subscribe a user's sessions (or one client) to a channel.
    Subscribe {
        /// User.
        user: String,
        /// One connection only.
        client: Option<String>,
        /// Channel.
        channel: String,
        /// Subscribe push data (JSON text), may be empty.
        data: String,
    },
    /// Refresh (or expire) a user's sessions.
    Refresh {
        /// User.
        user: String,
        /// One connection only.
        client: Option<String>,
        /// Expire now.
        expired: bool,
        /// New expiry (unix seconds).
        expire_at: Option<u64>,
    },
}

/// A control message: the sending node and its operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlMessage {
    /// Sender's node uid.
    pub node: String,
    /// The operation.
    #[serde(flatten)]
    pub op: ControlOp,
}

impl Hub {
    /// Publishes `op` to the other nodes (no-op with the memory engine). Errors are logged:
    /// the local part of the call already happened.
    pub async fn broadcast_control(&self, op: ControlOp) -> Result<(), crate::protocol::ErrorCode> {
        let Some(engine) = self.engine() else {
            return Ok(());
        };
        let node = self.with_state(|s| s.node_uid().to_owned());
        let message = ControlMessage { node, op };
        let bytes =
            serde_json::to_vec(&message).map_err(|_| crate::protocol::ErrorCode::Internal)?;
        engine.publish_control(Bytes::from(bytes)).await?;
        Ok(())
    }

    /// Applies a control message from another node.
    pub(super) async fn apply_control(&self, bytes: &[u8]) {
        let Ok(message) = serde_json::from_slice::<ControlMessage>(bytes) else {
            tracing::debug!("engine: unreadable control message");
            return;
        };
        if message.node == self.with_state(|s| s.node_uid().to_owned()) {
            return;
        }
        match message.op {
            ControlOp::Disconnect {
                user,
                client,
                keep,
                code,
                reason,
            } => {
                let disconnect = Disconnect::new(code, reason);
                self.with_state(|s| {
                    s.disconnect_user(&user, client.as_deref(), &keep, &disconnect)
                });
            }
            ControlOp::Unsubscribe {
                user,
                client,
                channel,
            } => {
                let _ =
                    self.with_state(|s| s.server_unsubscribe(&user, client.as_deref(), &channel));
            }
            ControlOp::Subscribe {
                user,
                client,
                channel,
                data,
            } => {
                // Only if one of the user's sessions lives here: no pub/sub work otherwise.
                if self.with_state(|s| s.has_user(&user)) {
                    let data = Bytes::from(data.into_bytes());
                    let _ = self
                        .server_subscribe(&user, client.as_deref(), &channel, data)
                        .await;
                }
            }
            ControlOp::Refresh {
                user,
                client,
                expired,
                expire_at,
            } => {
                self.with_state(|s| {
                    s.refresh_sessions(&user, client.as_deref(), expired, expire_at)
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_as_json() {
        let message = ControlMessage {
            node: "n1".into(),
            op: ControlOp::Unsubscribe {
                user: "u".into(),
                client: None,
                channel: "news".into(),
            },
        };
        let text = serde_json::to_string(&message).expect("json");
        assert!(text.contains("\"op\":\"unsubscribe\""), "{text}");
        let back: ControlMessage = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, message);
        assert!(
            serde_json::from_str::<ControlMessage>("{\"node\":\"x\",\"op\":\"boom\"}").is_err()
        );
    }
}
