//! Error codes (inside `Reply.error`) and disconnect codes (close frames, disconnect pushes),
//! as defined by Centrifugo, and the one RFC 6455 close code sidewire picks itself
//! ([`WS_CLOSE_INTERNAL_ERROR`]; the framing codes of `edge::wsframe` are RFC 6455's own).
//! No other module writes a close or disconnect code as a bare integer outside tests.

use std::borrow::Cow;

use super::client;

/// Client-protocol error codes sent in `Reply.error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ErrorCode {
    /// 100, temporary.
    Internal = 100,
    /// 101.
    Unauthorized = 101,
    /// 102.
    UnknownChannel = 102,
    /// 103.
    PermissionDenied = 103,
    /// 104.
    MethodNotFound = 104,
    /// 105.
    AlreadySubscribed = 105,
    /// 106.
    LimitExceeded = 106,
    /// 107.
    BadRequest = 107,
    /// 108.
    NotAvailable = 108,
    /// 109: the SDK refreshes its token and retries.
    TokenExpired = 109,
    /// 110.
    Expired = 110,
    /// 111, temporary.
    TooManyRequests = 111,
    /// 112.
    UnrecoverablePosition = 112,
}

impl ErrorCode {
    /// Numeric code on the wire.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// Centrifugo's message for the code.
    pub fn message(self) -> &'static str {
        match self {
            ErrorCode::Internal => "internal server error",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::UnknownChannel => "unknown channel",
            ErrorCode::PermissionDenied => "permission denied",
            ErrorCode::MethodNotFound => "method not found",
            ErrorCode::AlreadySubscribed => "already subscribed",
            ErrorCode::LimitExceeded => "limit exceeded",
            ErrorCode::BadRequest => "bad request",
            ErrorCode::NotAvailable => "not available",
            ErrorCode::TokenExpired => "token expired",
            ErrorCode::Expired => "expired",
            ErrorCode::TooManyRequests => "too many requests",
            ErrorCode::UnrecoverablePosition => "unrecoverable position",
        }
    }

    /// Whether clients may retry the same command.
    pub fn temporary(self) -> bool {
        matches!(self, ErrorCode::Internal | ErrorCode::TooManyRequests)
    }

    /// The protocol `Error` message for this code.
    pub fn to_error(self) -> client::Error {
        client::Error {
            code: self.code(),
            message: self.message().to_owned(),
            temporary: self.temporary(),
        }
    }
}

/// RFC 6455 "internal error": the WebSocket close code used when a disconnect code does not
/// fit the close frame's 16 bits.
pub const WS_CLOSE_INTERNAL_ERROR: u16 = 1011;

/// Longest close reason that fits a WebSocket close frame (125 bytes minus the 2-byte code).
pub const MAX_REASON_BYTES: usize = 123;

/// A disconnect: code plus short plain-text reason. Codes 3000-3499 and 4000-4499 make clients
/// reconnect; 3500-3999 and 4500-4999 are terminal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    /// Close code (3xxx library codes, 4xxx application codes).
    pub code: u32,
    /// Reason, at most [`MAX_REASON_BYTES`] once truncated by [`Disconnect::new`].
    pub reason: Cow<'static, str>,
}

macro_rules! disconnects {
    ($($(#[$doc:meta])* $name:ident = $code:literal, $reason:literal;)*) => {
        impl Disconnect {
            $($(#[$doc])* pub const $name: Disconnect = Disconnect { code: $code, reason: Cow::Borrowed($reason) };)*
        }
    };
}

disconnects! {
    /// The client simply went away; never sent on the wire.
    CONNECTION_CLOSED = 3000, "connection closed";
    /// A WebSocket message over message_size_limit (terminal in centrifuge-js).
    MESSAGE_TOO_BIG = 1009, "";
    /// The upstream answered `connect` with an error (written to the client just before):
    /// the connection ends. Reconnect-class, so that a client whose error was temporary
    /// retries; SDKs act on the error reply, not on this code.
    CONNECT_REFUSED = 3000, "connect refused";
    /// Server shutting down; clients reconnect.
    SHUTDOWN = 3001, "shutdown";
    /// Internal error; clients reconnect.
    INTERNAL = 3004, "internal server error";
    /// The upstream Link is unavailable or was lost; clients reconnect.
    UPSTREAM_UNAVAILABLE = 3004, "upstream unavailable";
    /// The connection's token expired (uni transports' refusal); clients reconnect with a
    /// fresh token.
    EXPIRED = 3005, "expired";
    /// The connection expired and was not refreshed (hub, server API); clients reconnect.
    CONNECTION_EXPIRED = 3005, "connection expired";
    /// Outbound queue overflow; clients reconnect.
    SLOW = 3008, "slow";
    /// Write to the client failed; clients reconnect.
    WRITE_ERROR = 3009, "write error";
    /// The session's frames were lost (Link queue overflow); clients reconnect and recover.
    INSUFFICIENT_STATE = 3010, "insufficient state";
    /// No pong within pong_timeout; clients reconnect.
    NO_PONG = 3012, "no pong";
    /// Too many requests (uni transports' refusal); clients reconnect.
    TOO_MANY_REQUESTS = 3013, "too many requests";
    /// Invalid connection token; terminal.
    INVALID_TOKEN = 3500, "invalid token";
    /// Protocol violation; terminal.
    BAD_REQUEST = 3501, "bad request";
    /// No connect within stale_close_delay; terminal.
    STALE = 3502, "stale";
    /// Disconnected by the server API; terminal.
    FORCE_DISCONNECT = 3503, "force disconnect";
    /// Binary data for a JSON client; terminal.
    INAPPROPRIATE_PROTOCOL = 3506, "inappropriate protocol";
    /// Permission denied (uni transports' refusal); terminal.
    PERMISSION_DENIED = 3507, "permission denied";
}

impl Disconnect {
    /// A disconnect with a reason cut to [`MAX_REASON_BYTES`] at a character boundary.
    pub fn new(code: u32, reason: impl Into<String>) -> Disconnect {
        let mut reason: String = reason.into();
        if reason.len() > MAX_REASON_BYTES {
            let mut cut = MAX_REASON_BYTES;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
        }
        Disconnect {
            code,
            reason: Cow::Owned(reason),
        }
    }

    /// Whether centrifuge SDKs reconnect after this code.
    pub fn reconnects(&self) -> bool {
        matches!(self.code, 3000..=3499 | 4000..=4499 | 5000..)
    }

    /// The disconnect push sent on streaming transports (HTTP-stream, SSE).
    pub fn to_push(&self) -> client::Push {
        client::Push {
            disconnect: Some(client::Disconnect {
                code: self.code,
                reason: self.reason.to_string(),
                reconnect: false,
            }),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_cut_at_char_boundary() {
        let d = Disconnect::new(4000, "é".repeat(100));
        assert!(d.reason.len() <= MAX_REASON_BYTES);
        assert_eq!(d.reason.len(), 122);
    }

    #[test]
    fn reconnect_classes() {
        assert!(Disconnect::SLOW.reconnects());
        assert!(Disconnect::UPSTREAM_UNAVAILABLE.reconnects());
        assert!(!Disconnect::BAD_REQUEST.reconnects());
        assert!(!Disconnect::new(4500, "x").reconnects());
        assert!(Disconnect::new(4000, "x").reconnects());
    }

    #[test]
    fn error_table() {
        let e = ErrorCode::Internal.to_error();
        assert_eq!((e.code, e.temporary), (100, true));
        assert_eq!(
            ErrorCode::MethodNotFound.to_error().message,
            "method not found"
        );
    }
}
