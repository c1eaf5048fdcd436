//! `backend.trusted_proxies`: CIDR ranges whose `X-Forwarded-Host` / `X-Forwarded-Proto` are
//! believed.
//!
//! Guarantee: [`Cidr::contains`] compares IPv4-mapped IPv6 peers (`::ffff:a.b.c.d`) as IPv4, so
//! a dual-stack listener cannot make a trusted IPv4 proxy look untrusted or the reverse.

use std::net::IpAddr;
use std::str::FromStr;

use thiserror::Error;

/// Why a trusted-proxy entry is not a CIDR.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CidrError {
    /// The address part is not an IPv4 or IPv6 address.
    #[error("{0:?} is not an IP address or CIDR (e.g. 10.0.0.0/8, fd00::/8)")]
    Address(String),
    /// The prefix length is not a number within the address family's width.
    #[error("prefix length in {0:?} must be 0..=32 (IPv4) or 0..=128 (IPv6)")]
    Prefix(String),
}

/// One address range: an address and a prefix length (a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Cidr, CidrError> {
        let text = text.trim();
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = address
            .parse()
            .map_err(|_| CidrError::Address(text.to_owned()))?;
        let network = network.to_canonical();
        let width = match network {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        let prefix = match prefix {
            None => width,
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|prefix| *prefix <= width)
                .ok_or_else(|| CidrError::Prefix(text.to_owned()))?,
        };
        Ok(Cidr { network, prefix })
    }
}

impl Cidr {
    /// Whether `ip` lies in this range (host bits of the configured address are ignored).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(network), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(network) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(network), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(network) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Parses every entry of `backend.trusted_proxies`.
pub fn parse_all(entries: &[String]) -> Result<Vec<Cidr>, (usize, CidrError)> {
    entries
        .iter()
        .enumerate()
        .map(|(index, entry)| entry.parse().map_err(|error| (index, error)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(text: &str) -> Cidr {
        text.parse().unwrap()
    }

    #[test]
    fn ranges_match_their_members_only() {
        let private = cidr("10.0.0.0/8");
        assert!(private.contains("10.200.1.2".parse().unwrap()));
        assert!(!private.contains("11.0.0.1".parse().unwrap()));
        assert!(private.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!private.contains("fd00::1".parse().unwrap()));
        let single = cidr("192.0.2.7");
        assert!(single.contains("192.0.2.7".parse().unwrap()));
        assert!(!single.contains("192.0.2.8".parse().unwrap()));
        let v6 = cidr("fd00::/8");
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
        assert!(cidr("0.0.0.0/0").contains("203.0.113.9".parse().unwrap()));
        assert!(cidr("::/0").contains("2001:db8::1".parse().unwrap()));
        // Host bits in the configured address do not matter.
        assert!(cidr("10.1.2.3/8").contains("10.9.9.9".parse().unwrap()));
    }

    #[test]
    fn bad_entries_are_refused() {
        assert!(matches!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err(CidrError::Prefix(_))
        ));
        assert!(matches!(
            "::/129".parse::<Cidr>(),
            Err(CidrError::Prefix(_))
        ));
        assert!(matches!(
            "10.0.0.0/x".parse::<Cidr>(),
            Err(CidrError::Prefix(_))
        ));
        assert!(matches!(
            "example.com".parse::<Cidr>(),
            Err(CidrError::Address(_))
        ));
        assert!(matches!("".parse::<Cidr>(), Err(CidrError::Address(_))));
        assert_eq!(
            parse_all(&["10.0.0.0/8".into(), "nope".into()])
                .unwrap_err()
                .0,
            1
        );
    }
}
