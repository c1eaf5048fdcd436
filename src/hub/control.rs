//! Server-API commands that act wherever a user's sessions are: the node that receives the
//! API call applies it to its own sessions and publishes it on the engine's control channel;
//! every other node applies it when it arrives (a node ignores its own messages).
//!
//! Message: JSON `{"node": <uid>, "op": "disconnect" | "unsubscribe" | "subscribe" |
//! "refresh" | "channels_survey" | "channels_answer", …the call's fields}`; anything else is
//! ignored. A `channels` call asks every node for its active channels (a survey, see
//! [`super::survey`]); each answers on the same channel, addressed to the asking node.

use std::collections::HashMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use wildmatch::WildMatch;

use super::Hub;
use super::api::MAX_CHANNELS_LISTED;
use super::survey::{ChannelCounts, merge_counts};
use crate::protocol::{Disconnect, ErrorCode};

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
    /// Every node: answer with your active channels matching `pattern`.
    ChannelsSurvey {
        /// The asking node's survey id.
        id: u64,
        /// Channel pattern (`*` wildcards), if any.
        pattern: Option<String>,
    },
    /// A node's answer to survey `id` of node `to`.
    ChannelsAnswer {
        /// The survey.
        id: u64,
        /// The asking node's uid.
        to: String,
        /// Active channels and their local subscriber counts.
        channels: super::survey::ChannelCounts,
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
            ControlOp::ChannelsSurvey { id, pattern } => {
                let channels = self.local_channels(pattern.as_deref());
                let answer = ControlOp::ChannelsAnswer {
                    id,
                    to: message.node,
                    channels,
                };
                if self.broadcast_control(answer).await.is_err() {
                    tracing::debug!("engine: channels survey answer not sent");
                }
            }
            ControlOp::ChannelsAnswer { id, to, channels } => {
                if to == self.with_state(|s| s.node_uid().to_owned()) {
                    self.inner.surveys.answer(id, channels);
                }
            }
        }
    }

    /// This node's active channels matching `pattern` (`*` wildcards; empty: all), at most
    /// [`MAX_CHANNELS_LISTED`].
    fn local_channels(&self, pattern: Option<&str>) -> ChannelCounts {
        let pattern = pattern.filter(|p| !p.is_empty()).map(WildMatch::new);
        self.with_state(|s| s.active_channels(pattern.as_ref(), MAX_CHANNELS_LISTED))
    }

    /// Active channels with their subscriber counts on every node, as the server API's
    /// `channels` answers them: this node's, and with a shared engine every other live
    /// node's, asked through the control channel and summed per channel (a node that does
    /// not answer within [`super::survey::SURVEY_TIMEOUT`] is left out and logged). At most
    /// [`MAX_CHANNELS_LISTED`] channels; 100 when too many surveys are already waiting.
    pub async fn channels(&self, pattern: Option<String>) -> Result<ChannelCounts, ErrorCode> {
        let local = self.local_channels(pattern.as_deref());
        let Some(_engine) = self.engine() else {
            return Ok(local);
        };
        let others = self.nodes().await?.len().saturating_sub(1);
        if others == 0 {
            return Ok(local);
        }
        let mut waiting = self.inner.surveys.open(others).ok_or(ErrorCode::Internal)?;
        self.broadcast_control(ControlOp::ChannelsSurvey {
            id: waiting.id,
            pattern,
        })
        .await?;
        let mut merged: HashMap<String, usize> = HashMap::new();
        merge_counts(&mut merged, local, MAX_CHANNELS_LISTED);
        for answer in waiting.collect(others).await {
            merge_counts(&mut merged, answer, MAX_CHANNELS_LISTED);
        }
        Ok(merged.into_iter().collect())
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
