//! The hub's input rules, shared by client commands and the server API: channel names,
//! private channels, publication data, binary-only channels, disconnect codes.

use serde::de::IgnoredAny;
use wildmatch::WildMatch;

use crate::protocol::ErrorCode;

/// Prefix of private channels: subscribing needs a subscription token for that channel and
/// user; history, presence and publish are refused to clients (103).
pub const PRIVATE_PREFIX: char = '$';

/// Channel names: 1 to `max_length` bytes (empty: 107, longer: 106, as Centrifugo answers).
pub fn validate_channel(channel: &str, max_length: usize) -> Result<(), ErrorCode> {
    if channel.is_empty() {
        Err(ErrorCode::BadRequest)
    } else if channel.len() > max_length {
        Err(ErrorCode::LimitExceeded)
    } else {
        Ok(())
    }
}

/// Binary-only channels, from `hub.binary_channels` glob patterns (case-sensitive).
#[derive(Debug, Default)]
pub struct BinaryChannels {
    patterns: Vec<WildMatch>,
}

impl BinaryChannels {
    /// Compiles the patterns.
    pub fn new(patterns: &[String]) -> BinaryChannels {
        BinaryChannels {
            patterns: patterns.iter().map(|p| WildMatch::new(p)).collect(),
        }
    }

    /// Whether `channel` is binary-only.
    pub fn matches(&self, channel: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(channel))
    }
}

/// Publication data check used by client publishes and the server API alike: data must be
/// one JSON value unless the channel is binary-only (else 107, so no JSON subscriber is ever
/// sent bytes it cannot receive).
pub fn check_data(data: &[u8], binary: bool) -> Result<(), ErrorCode> {
    if binary || serde_json::from_slice::<IgnoredAny>(data).is_ok() {
        Ok(())
    } else {
        Err(ErrorCode::BadRequest)
    }
}

/// Codes the server API may send in a disconnect: Centrifugo's custom range 3000-4999
/// (never the reserved 1005/1006/1015 nor any other transport code).
pub fn validate_disconnect_code(code: u32) -> Result<(), ErrorCode> {
    if (3000..=4999).contains(&code) {
        Ok(())
    } else {
        Err(ErrorCode::BadRequest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_and_private_channels() {
        assert_eq!(validate_channel("", 255), Err(ErrorCode::BadRequest));
        assert_eq!(validate_channel("abc", 3), Ok(()));
        assert_eq!(validate_channel("abcd", 3), Err(ErrorCode::LimitExceeded));
    }

    #[test]
    fn data_must_be_json_outside_binary_channels() {
        let binary = BinaryChannels::new(&["bin:*".to_owned()]);
        assert!(binary.matches("bin:x"));
        assert!(!binary.matches("BIN:x"));
        assert!(!binary.matches("news"));
        assert_eq!(check_data(br#"{"a":1}"#, false), Ok(()));
        assert_eq!(check_data(b" 12 ", false), Ok(()));
        assert_eq!(check_data(&[0xff, 0x00], false), Err(ErrorCode::BadRequest));
        assert_eq!(check_data(b"", false), Err(ErrorCode::BadRequest));
        assert_eq!(check_data(b"{} {}", false), Err(ErrorCode::BadRequest));
        assert_eq!(check_data(&[0xff, 0x00], true), Ok(()));
    }

    #[test]
    fn disconnect_codes_are_custom_range_only() {
        for code in [1000, 1005, 1006, 1015, 2999, 5000] {
            assert_eq!(validate_disconnect_code(code), Err(ErrorCode::BadRequest));
        }
        for code in [3000, 3503, 4000, 4999] {
            assert_eq!(validate_disconnect_code(code), Ok(()));
        }
    }
}
