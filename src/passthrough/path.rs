//! Request-path normalisation before the path is joined to the backend's prefix.
//!
//! Guarantee: the path returned by [`normalize`] starts with `/` and has no segment that is,
//! or percent-decodes to, `.` or `..` (RFC 3986 §5.2.4 `remove_dot_segments`, applied to
//! decoded segments), so `prefix + path` always stays under the prefix. Other segments are
//! kept byte for byte (their percent-encoding included).

use std::borrow::Cow;

use thiserror::Error;

/// Why a request path is refused (answered 400).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PathError {
    /// Not an origin-form path (must start with `/`).
    #[error("request path must start with '/'")]
    NotAbsolute,
    /// A segment hides a dot segment behind an encoded `/` or `\` (e.g. `..%2f`); a backend
    /// that decodes it would climb out of the prefix.
    #[error("encoded separator next to a dot segment")]
    EncodedDotSegment,
}

/// The path with dot segments removed (see the module guarantee); borrowed when `path` needs
/// no change (no `%` escape and no segment starting with `.`: the common case).
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if path.is_empty() {
        return Ok(Cow::Borrowed("/"));
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(PathError::NotAbsolute);
    };
    if !path.contains('%') && !path.contains("/.") {
        return Ok(Cow::Borrowed(path));
    }
    let segments: Vec<&str> = rest.split('/').collect();
    let last = segments.len() - 1;
    let mut output: Vec<&str> = Vec::with_capacity(segments.len());
    for (index, segment) in segments.into_iter().enumerate() {
        let decoded = percent_decode(segment);
        if decoded.iter().any(|b| matches!(b, b'/' | b'\\')) {
            if decoded
                .split(|b| matches!(b, b'/' | b'\\'))
                .any(|piece| piece == b"." || piece == b"..")
            {
                return Err(PathError::EncodedDotSegment);
            }
            output.push(segment);
            continue;
        }
        match decoded.as_slice() {
            b"." => {}
            b".." => {
                output.pop();
            }
            _ => {
                output.push(segment);
                continue;
            }
        }
        // A trailing dot segment leaves a directory path: "/a/b/.." -> "/a/".
        if index == last {
            output.push("");
        }
    }
    Ok(Cow::Owned(format!("/{}", output.join("/"))))
}

/// Percent-decodes `segment` (malformed escapes stay literal).
fn percent_decode(segment: &str) -> Vec<u8> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%'
            && let Some(hex) = bytes.get(index + 1..index + 3)
            && let Ok(hex) = std::str::from_utf8(hex)
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            out.push(byte);
            index += 3;
            continue;
        }
        out.push(bytes[index]);
        index += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_are_removed() {
        for (input, expected) in [
            ("", "/"),
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a/b/", "/a/b/"),
            ("/../secret", "/secret"),
            ("/a/../../../secret", "/secret"),
            ("/a/./b/../c", "/a/c"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/..", "/"),
            ("/%2e%2e/secret", "/secret"),
            ("/%2E%2e/%2e/x", "/x"),
            ("/.%2e/x", "/x"),
            ("//x", "//x"),
            ("/a//../b", "/a/b"),
            ("/a%20b/c%2Fd", "/a%20b/c%2Fd"),
            ("/...", "/..."),
            ("/..a", "/..a"),
            ("/%zz/..", "/"),
            ("/.well-known/x", "/.well-known/x"),
            ("/a.b/c.", "/a.b/c."),
        ] {
            assert_eq!(normalize(input).as_deref(), Ok(expected), "{input}");
        }
    }

    #[test]
    fn clean_paths_are_borrowed_and_dotted_ones_rewritten() {
        assert!(matches!(
            normalize("/a/b.c/d"),
            Ok(Cow::Borrowed("/a/b.c/d"))
        ));
        assert!(matches!(normalize("/a/./b"), Ok(Cow::Owned(_))));
        assert!(matches!(normalize("/a%2e"), Ok(Cow::Owned(_))));
    }

    #[test]
    fn encoded_separators_around_dots_are_refused() {
        for input in [
            "/..%2fsecret",
            "/%2e%2e%2Fsecret",
            "/a/..%5csecret",
            "/x%2f..",
            "/.%2fa",
        ] {
            assert_eq!(
                normalize(input),
                Err(PathError::EncodedDotSegment),
                "{input}"
            );
        }
        assert_eq!(normalize("*"), Err(PathError::NotAbsolute));
    }
}
