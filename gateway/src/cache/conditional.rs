//! Validators and cache directives: the `ETag` of an answer, `If-None-Match`
//! (RFC 9110 section 13.1.2), and what a client's `Cache-Control` asks
//! (RFC 9111 section 5.2.1).

use http::{header, HeaderMap, HeaderValue};

/// A strong entity tag of `body`: the first 128 bits of its SHA-256, in
/// unpadded base64url, quoted. Strong because equal tags mean equal bytes
/// (a 128-bit collision is out of reach by accident).
pub fn etag(body: &[u8]) -> HeaderValue {
    use base64::Engine as _;
    let digest = crate::config::sha256(body);
    let text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..16]);
    HeaderValue::try_from(format!("\"{text}\"")).expect("base64url is a valid header value")
}

/// Whether the request's `If-None-Match` matches `etag`: `*`, or any tag in
/// the list by the weak comparison (`W/"x"` matches `"x"`), as RFC 9110
/// asks of If-None-Match. A value that is not a list of entity tags
/// matches nothing.
pub fn none_match(headers: &HeaderMap, etag: &HeaderValue) -> bool {
    let ours = opaque(etag.as_bytes());
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .any(|v| matches(v.as_bytes(), ours))
}

/// `"x"` or `W/"x"` without the weakness mark.
fn opaque(tag: &[u8]) -> &[u8] {
    tag.strip_prefix(b"W/").unwrap_or(tag)
}

/// One `If-None-Match` field value against our tag.
fn matches(value: &[u8], ours: &[u8]) -> bool {
    let mut rest = value;
    loop {
        rest = trim_start(rest);
        while let Some(r) = rest.strip_prefix(b",") {
            rest = trim_start(r);
        }
        if rest.is_empty() {
            return false;
        }
        if rest[0] == b'*' {
            return true;
        }
        let tag_start = rest;
        let quoted = rest.strip_prefix(b"W/").unwrap_or(rest);
        if quoted.first() != Some(&b'"') {
            return false;
        }
        let Some(close) = quoted[1..].iter().position(|&b| b == b'"') else {
            return false;
        };
        let tag = &quoted[..close + 2];
        if tag == ours {
            return true;
        }
        let used = tag_start.len() - quoted.len() + tag.len();
        rest = &tag_start[used..];
    }
}

fn trim_start(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|c| **c == b' ' || **c == b'\t').count();
    &b[n..]
}

/// Whether the client asks for an answer from the backend rather than the
/// cache: `Cache-Control: no-cache`, `no-store` or `max-age=0`, or, without
/// `Cache-Control`, `Pragma: no-cache` (RFC 9111 section 5.4).
pub fn client_refuses_cached(headers: &HeaderMap) -> bool {
    let mut cache_control = headers.get_all(header::CACHE_CONTROL).iter().peekable();
    if cache_control.peek().is_none() {
        return headers
            .get_all(header::PRAGMA)
            .iter()
            .any(|v| directives(v).any(|(name, _)| name.eq_ignore_ascii_case("no-cache")));
    }
    cache_control.any(|v| {
        directives(v).any(|(name, value)| {
            name.eq_ignore_ascii_case("no-cache")
                || name.eq_ignore_ascii_case("no-store")
                || (name.eq_ignore_ascii_case("max-age")
                    && value.is_some_and(|v| v.trim_matches('"') == "0"))
        })
    })
}

/// The comma-separated directives of a header value, as `(name, value)`.
fn directives(v: &HeaderValue) -> impl Iterator<Item = (&str, Option<&str>)> {
    v.to_str().unwrap_or("").split(',').filter_map(|d| {
        let d = d.trim();
        if d.is_empty() {
            return None;
        }
        Some(match d.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim())),
            None => (d, None),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(name: &'static str, values: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(name, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn etags_are_strong_quoted_and_follow_the_body() {
        let a = etag(b"{\"a\":1}");
        assert!(a.as_bytes().starts_with(b"\"") && a.as_bytes().ends_with(b"\""));
        assert_eq!(a.len(), 24);
        assert_eq!(a, etag(b"{\"a\":1}"));
        assert_ne!(a, etag(b"{\"a\":2}"));
    }

    #[test]
    fn if_none_match_takes_lists_stars_and_weak_tags() {
        let ours = HeaderValue::from_static("\"abc\"");
        let m = |values: &[&'static str]| none_match(&with("if-none-match", values), &ours);
        assert!(m(&["\"abc\""]));
        assert!(m(&["W/\"abc\""]));
        assert!(m(&["*"]));
        assert!(m(&["\"x\", \"abc\""]));
        assert!(m(&["\"x\",W/\"abc\""]));
        assert!(m(&["\"x\"", "\"abc\""]));
        // A comma inside a tag is part of it.
        assert!(!m(&["\"x,\"abc\"\""]));
        assert!(!m(&["\"abcd\""]));
        assert!(!m(&["abc"]));
        assert!(!m(&["\"abc"]));
        assert!(!m(&[""]));
        assert!(!m(&[]));
    }

    #[test]
    fn no_cache_no_store_and_max_age_zero_refuse_the_cached_answer() {
        let cc = |v: &'static str| client_refuses_cached(&with("cache-control", &[v]));
        assert!(cc("no-cache"));
        assert!(cc("No-Cache"));
        assert!(cc("max-age=0"));
        assert!(cc("no-store, max-age=10"));
        assert!(cc("max-stale, no-cache=\"set-cookie\""));
        assert!(!cc("max-age=10"));
        assert!(!cc("only-if-cached"));
        assert!(client_refuses_cached(&with("pragma", &["no-cache"])));
        let mut both = with("pragma", &["no-cache"]);
        both.insert("cache-control", HeaderValue::from_static("max-age=5"));
        assert!(!client_refuses_cached(&both));
        assert!(!client_refuses_cached(&HeaderMap::new()));
    }
}
