//! An entry as an HTTP answer: the validators and directives of a cached
//! route's answers, 304s for a matching `If-None-Match`, and the marks of
//! degraded answers.

use axum::body::Body;
use http::{header, HeaderMap, HeaderName, HeaderValue, Response, StatusCode};

use super::{conditional, Entry};

/// Says a degraded answer is one, and which kind.
pub const DEGRADED: HeaderName = HeaderName::from_static("gateway-degraded");

/// The headers a cached route adds to its fresh answers, made once at load.
#[derive(Debug, Clone)]
pub struct Directives {
    /// `public` or `private`, and `max-age`.
    pub cache_control: HeaderValue,
    /// The route's `vary` headers, so caches downstream key on them too.
    pub vary: Option<HeaderValue>,
}

/// How an answer made from an entry came about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// A fresh entry, without a backend call.
    Hit,
    /// The backend's answer, just fetched (and cached when 2xx).
    Fetched,
    /// An entry past its ttl, for an unavailable backend.
    Stale,
    /// The route's static fallback, for an unavailable backend.
    Static,
}

/// The answer `entry` gives a request with `req` headers. `directives`
/// are the route's (`None` on routes without `cache`).
///
/// Fresh answers carry the `ETag` and the route's `Cache-Control` (and
/// `Age` on hits); a request whose `If-None-Match` matches gets a 304 with
/// them and no body. Degraded answers are sent whole, with `Cache-Control:
/// no-store` so no cache downstream keeps them as the real thing.
pub fn respond(
    entry: &Entry,
    directives: Option<&Directives>,
    req: &HeaderMap,
    served: Served,
    now: std::time::Instant,
) -> Response<Body> {
    let degraded = matches!(served, Served::Stale | Served::Static);
    let validated = directives.is_some() && !degraded && entry.status.is_success();
    let not_modified = validated && conditional::none_match(req, &entry.etag);
    let mut resp = if not_modified {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let mut r = Response::new(Body::from(entry.body.clone()));
        *r.status_mut() = entry.status;
        *r.headers_mut() = entry.headers.clone();
        r
    };
    let h = resp.headers_mut();
    if validated || served == Served::Stale {
        h.insert(header::ETAG, entry.etag.clone());
    }
    if matches!(served, Served::Hit | Served::Stale) {
        h.insert(header::AGE, HeaderValue::from(entry.age(now)));
    }
    match served {
        Served::Hit | Served::Fetched => {
            if let (true, Some(d)) = (validated, directives) {
                h.insert(header::CACHE_CONTROL, d.cache_control.clone());
                if let Some(v) = &d.vary {
                    h.append(header::VARY, v.clone());
                }
            }
        }
        Served::Stale => {
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            h.insert(DEGRADED, HeaderValue::from_static("stale"));
            h.insert(
                header::WARNING,
                HeaderValue::from_static("110 - \"Response is Stale\""),
            );
        }
        Served::Static => {
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            h.insert(DEGRADED, HeaderValue::from_static("static"));
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::time::{Duration, Instant};

    fn entry(status: StatusCode) -> Entry {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Entry {
            status,
            headers,
            body: Bytes::from_static(b"{}"),
            etag: conditional::etag(b"{}"),
            stored: Instant::now() - Duration::from_secs(3),
            fresh_for: Duration::from_secs(10),
            keep_for: Duration::from_secs(10),
        }
    }

    #[test]
    fn hits_carry_validators_and_age_and_a_matching_tag_gets_a_304() {
        let e = entry(StatusCode::OK);
        let cc = Directives {
            cache_control: HeaderValue::from_static("public, max-age=10"),
            vary: Some(HeaderValue::from_static("x-tenant")),
        };
        let r = respond(
            &e,
            Some(&cc),
            &HeaderMap::new(),
            Served::Hit,
            Instant::now(),
        );
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()[header::VARY], "x-tenant");
        assert_eq!(r.headers()[header::ETAG], e.etag);
        assert_eq!(r.headers()[header::CACHE_CONTROL], "public, max-age=10");
        assert_eq!(r.headers()[header::AGE], "3");
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        let mut req = HeaderMap::new();
        req.insert(header::IF_NONE_MATCH, e.etag.clone());
        let r = respond(&e, Some(&cc), &req, Served::Fetched, Instant::now());
        assert_eq!(r.status(), 304);
        assert_eq!(r.headers()[header::ETAG], e.etag);
        assert_eq!(r.headers()[header::VARY], "x-tenant");
        assert!(r.headers().get(header::AGE).is_none());
        assert!(r.headers().get(header::CONTENT_TYPE).is_none());
    }

    #[test]
    fn degraded_answers_are_marked_whole_and_not_for_keeping() {
        let e = entry(StatusCode::OK);
        let cc = Directives {
            cache_control: HeaderValue::from_static("public, max-age=10"),
            vary: None,
        };
        let mut req = HeaderMap::new();
        req.insert(header::IF_NONE_MATCH, e.etag.clone());
        let r = respond(&e, Some(&cc), &req, Served::Stale, Instant::now());
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()[DEGRADED], "stale");
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");
        assert!(r.headers().get(header::WARNING).is_some());
        let r = respond(&e, None, &req, Served::Static, Instant::now());
        assert_eq!(r.headers()[DEGRADED], "static");
        assert!(r.headers().get(header::ETAG).is_none());
    }
}
