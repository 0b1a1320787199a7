//! Content codings: compressed request bodies read as they arrive
//! ([`decode`]), answers compressed as the client's `Accept-Encoding` asks
//! ([`compress`]), and gzip for gRPC messages to and from backends
//! ([`grpc`]).
//!
//! Nothing here runs for a request that names no coding: a request without
//! `Content-Encoding` keeps its body as it is, and an answer is only looked
//! at when the client sent `Accept-Encoding`.

pub mod compress;
pub mod decode;
pub mod grpc;

use serde::{Deserialize, Serialize};

/// A content coding the gateway reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Coding {
    /// gzip (RFC 1952): every client has it.
    Gzip,
    /// Brotli (RFC 7932): smaller than gzip for text; browsers send it over
    /// HTTPS.
    Br,
    /// Zstandard (RFC 8878): gzip's ratio and better at a fraction of its
    /// CPU; recent browsers and curl.
    Zstd,
    /// zlib-wrapped deflate (RFC 9110's "deflate"): read in requests,
    /// written only when named.
    Deflate,
}

impl Coding {
    /// Its name in `Content-Encoding` and `Accept-Encoding`.
    pub fn name(self) -> &'static str {
        match self {
            Coding::Gzip => "gzip",
            Coding::Br => "br",
            Coding::Zstd => "zstd",
            Coding::Deflate => "deflate",
        }
    }

    /// The coding a `Content-Encoding` token names (`x-gzip` is gzip, RFC
    /// 9110 section 8.4.1.3).
    pub fn parse(token: &str) -> Option<Coding> {
        let t = token.trim();
        if t.eq_ignore_ascii_case("gzip") || t.eq_ignore_ascii_case("x-gzip") {
            Some(Coding::Gzip)
        } else if t.eq_ignore_ascii_case("br") {
            Some(Coding::Br)
        } else if t.eq_ignore_ascii_case("zstd") {
            Some(Coding::Zstd)
        } else if t.eq_ignore_ascii_case("deflate") {
            Some(Coding::Deflate)
        } else {
            None
        }
    }
}

/// The codings request bodies may come in, as a 415 names them.
pub const READABLE: &str = "gzip, br, zstd, deflate (or identity)";

/// The same, as the `Accept-Encoding` of a 415.
pub const ACCEPTED: &str = "gzip, br, zstd, deflate";

/// Of `offered` (the server's preference order), the coding
/// `accept_encoding` rates highest, ties going to the earlier one; `None`
/// when it rates none above zero. Allocates nothing.
pub fn negotiate(accept_encoding: &[u8], offered: &[Coding]) -> Option<Coding> {
    let text = std::str::from_utf8(accept_encoding).ok()?;
    let mut best: Option<(Coding, u32)> = None;
    for coding in offered {
        let q = quality(text, coding.name());
        if q > 0 && best.is_none_or(|(_, b)| q > b) {
            best = Some((*coding, q));
        }
    }
    best.map(|(c, _)| c)
}

/// The weight (0 to 1000) `accept_encoding` gives `name`: its own entry,
/// else `*`'s, else 0.
fn quality(accept_encoding: &str, name: &str) -> u32 {
    let mut star = None;
    for item in accept_encoding.split(',') {
        let mut params = item.split(';');
        let token = params.next().unwrap_or("").trim();
        let q = params
            .find_map(|p| {
                let (k, v) = p.split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("q")
                    .then(|| parse_q(v.trim()))
            })
            .unwrap_or(1000);
        if token.eq_ignore_ascii_case(name)
            || (name == "gzip" && token.eq_ignore_ascii_case("x-gzip"))
        {
            return q;
        }
        if token == "*" {
            star = Some(q);
        }
    }
    star.unwrap_or(0)
}

/// A qvalue (RFC 9110 section 12.4.2) in thousandths; malformed is 0.
fn parse_q(v: &str) -> u32 {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    let whole = match int {
        "0" => 0,
        "1" => 1000,
        _ => return 0,
    };
    let mut thousandths = 0;
    let mut scale = 100;
    for b in frac.bytes().take(3) {
        if !b.is_ascii_digit() {
            return 0;
        }
        thousandths += u32::from(b - b'0') * scale;
        scale /= 10;
    }
    (whole + thousandths).min(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: &[Coding] = &[Coding::Zstd, Coding::Br, Coding::Gzip];

    #[test]
    fn the_clients_highest_weight_wins_and_ties_go_to_the_servers_order() {
        assert_eq!(negotiate(b"gzip", ALL), Some(Coding::Gzip));
        assert_eq!(negotiate(b"gzip, br", ALL), Some(Coding::Br));
        assert_eq!(
            negotiate(b"gzip;q=1.0, br;q=0.5, zstd;q=0", ALL),
            Some(Coding::Gzip)
        );
        assert_eq!(
            negotiate(b"deflate, gzip, br, zstd", ALL),
            Some(Coding::Zstd)
        );
        assert_eq!(negotiate(b"*", ALL), Some(Coding::Zstd));
        assert_eq!(negotiate(b"*;q=0.1, br;q=0", ALL), Some(Coding::Zstd));
        assert_eq!(negotiate(b"x-gzip", ALL), Some(Coding::Gzip));
    }

    #[test]
    fn identity_or_refused_codings_choose_none() {
        assert_eq!(negotiate(b"identity", ALL), None);
        assert_eq!(negotiate(b"", ALL), None);
        assert_eq!(negotiate(b"gzip;q=0", ALL), None);
        assert_eq!(negotiate(b"gzip;q=bogus", ALL), None);
        assert_eq!(negotiate(b"br", &[Coding::Gzip]), None);
    }

    #[test]
    fn content_encoding_tokens_parse_case_insensitively() {
        assert_eq!(Coding::parse(" GZip "), Some(Coding::Gzip));
        assert_eq!(Coding::parse("x-gzip"), Some(Coding::Gzip));
        assert_eq!(Coding::parse("compress"), None);
    }
}
