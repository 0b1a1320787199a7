//! Percent-decoding of request path text, following the rules in
//! `google/api/http.proto`.
//!
//! A variable that binds exactly one segment is decoded completely, because a
//! client expanding it had to escape every reserved character, `/` included.
//! A variable that binds several segments keeps `%2F` as it is: the raw `/`
//! characters in its value are the segment separators, so an escaped slash is
//! the only way to tell "a slash inside a segment" apart, and decoding it
//! would lose that information.

use std::borrow::Cow;

/// Why a piece of path text could not be percent-decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EscapeError {
    /// A `%` not followed by two hex digits; `position` is the byte offset of
    /// the `%` so the caller can point at it.
    #[error("bad percent-escape {escape:?} at byte {position}")]
    BadEscape {
        /// Byte offset of the `%`.
        position: usize,
        /// The offending text: the `%` and up to two following characters.
        escape: String,
    },
    /// The escapes decoded to bytes that do not form UTF-8; the values end up
    /// in protobuf `string` fields, which must be UTF-8.
    #[error("percent-decoded value is not valid UTF-8")]
    InvalidUtf8,
}

/// Percent-decodes `raw`.
///
/// With `keep_slash_escapes`, `%2F`/`%2f` are left untouched (in their
/// original case) while every other escape is decoded; this is the rule for
/// variables that bind more than one segment. Borrows whenever nothing had to
/// change, so the common escape-free path never allocates.
pub fn decode(raw: &str, keep_slash_escapes: bool) -> Result<Cow<'_, str>, EscapeError> {
    decode_at(raw, keep_slash_escapes, 0)
}

/// [`decode`], reporting error positions shifted by `base` so that callers
/// decoding a slice of a larger string can report offsets into the whole.
pub(crate) fn decode_at(
    raw: &str,
    keep_slash_escapes: bool,
    base: usize,
) -> Result<Cow<'_, str>, EscapeError> {
    let Some(first) = raw.find('%') else {
        return Ok(Cow::Borrowed(raw));
    };
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(raw.len());
    out.extend_from_slice(&bytes[..first]);
    let mut changed = false;
    let mut i = first;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            out.push(b);
            i += 1;
            continue;
        }
        let hi = bytes.get(i + 1).copied().and_then(hex_value);
        let lo = bytes.get(i + 2).copied().and_then(hex_value);
        let (Some(hi), Some(lo)) = (hi, lo) else {
            return Err(EscapeError::BadEscape {
                position: base + i,
                escape: raw[i..].chars().take(3).collect(),
            });
        };
        let value = (hi << 4) | lo;
        if keep_slash_escapes && value == b'/' {
            out.extend_from_slice(&bytes[i..i + 3]);
        } else {
            out.push(value);
            changed = true;
        }
        i += 3;
    }
    if !changed {
        // Only kept `%2F` escapes: the input is already the answer.
        return Ok(Cow::Borrowed(raw));
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| EscapeError::InvalidUtf8)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad(position: usize, escape: &str) -> EscapeError {
        EscapeError::BadEscape {
            position,
            escape: escape.to_owned(),
        }
    }

    #[test]
    fn decodes_according_to_slash_rule() {
        // (raw, keep_slash_escapes, expected)
        let cases: &[(&str, bool, Result<&str, EscapeError>)] = &[
            ("plain", false, Ok("plain")),
            ("plain", true, Ok("plain")),
            ("", false, Ok("")),
            ("a%20b", false, Ok("a b")),
            ("a%2Fb", false, Ok("a/b")),
            ("a%2fb", false, Ok("a/b")),
            ("a%2Fb", true, Ok("a%2Fb")),
            ("a%2fb", true, Ok("a%2fb")),
            ("a%2Fb%20c", true, Ok("a%2Fb c")),
            ("%25", false, Ok("%")),
            ("%25", true, Ok("%")),
            ("caf%C3%A9", false, Ok("café")),
            ("café", false, Ok("café")),
            ("%", false, Err(bad(0, "%"))),
            ("ab%4", false, Err(bad(2, "%4"))),
            ("abcde%zz", false, Err(bad(5, "%zz"))),
            ("x%2Fy%g1", true, Err(bad(5, "%g1"))),
            ("%é", false, Err(bad(0, "%é"))),
            ("%FF", false, Err(EscapeError::InvalidUtf8)),
            ("%C3", true, Err(EscapeError::InvalidUtf8)),
        ];
        for (raw, keep, want) in cases {
            let got = decode(raw, *keep);
            assert_eq!(
                got.as_deref().map_err(Clone::clone),
                want.clone(),
                "decode({raw:?}, {keep})"
            );
        }
    }

    #[test]
    fn borrows_when_nothing_changes() {
        for (raw, keep) in [("abc", false), ("a%2Fb", true), ("", true)] {
            assert!(matches!(decode(raw, keep), Ok(Cow::Borrowed(_))), "{raw:?}");
        }
        assert!(matches!(decode("a%20b", true), Ok(Cow::Owned(_))));
    }

    #[test]
    fn error_messages_name_the_problem_and_offset() {
        assert_eq!(
            decode("abcde%zz", false).unwrap_err().to_string(),
            "bad percent-escape \"%zz\" at byte 5"
        );
        assert_eq!(
            decode("%FF", false).unwrap_err().to_string(),
            "percent-decoded value is not valid UTF-8"
        );
        assert_eq!(decode_at("a%x", false, 10).unwrap_err(), bad(11, "%x"));
    }
}
