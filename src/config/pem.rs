//! Just enough PEM and DER to read public keys: a `PUBLIC KEY` (SubjectPublicKeyInfo) yields
//! its key bytes (PKCS#1 for RSA, the uncompressed point for EC); an `RSA PUBLIC KEY` is
//! PKCS#1 already. [`rsa_der`] and [`ec_point`] check the shape a token key must have, so
//! that validation and the hub judge a configured key the same way.

use base64::Engine as _;

/// A configured public key is not a usable PEM key; carries the dotted section it is under
/// (`hub.client.token` or `hub.client.subscription_token`).
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// `<section>.rsa_public_key` does not parse.
    #[error("{0}.rsa_public_key: not an RSA public key in PEM")]
    Rsa(&'static str),
    /// `<section>.ecdsa_public_key` does not parse.
    #[error("{0}.ecdsa_public_key: not a P-256 EC public key in PEM")]
    Ecdsa(&'static str),
}

/// The PKCS#1 DER of an RSA public key in PEM (`PUBLIC KEY` or `RSA PUBLIC KEY`) under
/// `section`.
pub fn rsa_der(pem: &str, section: &'static str) -> Result<Vec<u8>, KeyError> {
    match public_key_bytes(pem) {
        Some((der, _)) if der.first() == Some(&0x30) => Ok(der),
        _ => Err(KeyError::Rsa(section)),
    }
}

/// The uncompressed P-256 point (65 bytes, `0x04` first) of an EC public key in PEM under
/// `section`.
pub fn ec_point(pem: &str, section: &'static str) -> Result<Vec<u8>, KeyError> {
    match public_key_bytes(pem) {
        Some((point, false)) if point.len() == 65 && point.first() == Some(&0x04) => Ok(point),
        _ => Err(KeyError::Ecdsa(section)),
    }
}

/// The key bytes of a PEM public key, with whether it was a bare PKCS#1 RSA key.
pub fn public_key_bytes(pem: &str) -> Option<(Vec<u8>, bool)> {
    let mut lines = pem
        .lines()
        .map(str::trim)
        .skip_while(|l| !l.starts_with("-----BEGIN "));
    let label = lines
        .next()?
        .strip_prefix("-----BEGIN ")?
        .strip_suffix("-----")?
        .to_owned();
    let body: String = lines.take_while(|l| !l.starts_with("-----END ")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .ok()?;
    match label.as_str() {
        "RSA PUBLIC KEY" => Some((der, true)),
        "PUBLIC KEY" => spki_key(&der).map(|key| (key.to_vec(), false)),
        _ => None,
    }
}

/// One DER element: (tag, content, rest).
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, input) = input.split_first()?;
    let (&first, mut input) = input.split_first()?;
    let length = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || input.len() < count {
            return None;
        }
        let (bytes, rest) = input.split_at(count);
        input = rest;
        bytes.iter().fold(0usize, |n, b| (n << 8) | usize::from(*b))
    };
    if input.len() < length {
        return None;
    }
    let (content, rest) = input.split_at(length);
    Some((tag, content, rest))
}

/// SubjectPublicKeyInfo ::= SEQUENCE { algorithm SEQUENCE, subjectPublicKey BIT STRING }.
fn spki_key(der: &[u8]) -> Option<&[u8]> {
    let (0x30, spki, _) = element(der)? else {
        return None;
    };
    let (0x30, _, rest) = element(spki)? else {
        return None;
    };
    let (0x03, bits, _) = element(rest)? else {
        return None;
    };
    match bits.split_first()? {
        (0, key) => Some(key),
        _ => None,
    }
}

/// [`element`] for the sibling tests.
#[cfg(test)]
pub fn tests_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    element(input)
}
