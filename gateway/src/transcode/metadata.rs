//! gRPC metadata <-> HTTP headers.

use http::{HeaderMap, HeaderValue};
use tonic::metadata::{KeyAndValueRef, MetadataMap};

use crate::snapshot::Route;

/// Headers that describe the HTTP hop itself or belong to gRPC's framing;
/// forwarding them would confuse the backend.
pub fn reserved(name: &str) -> bool {
    name.starts_with("grpc-")
        || matches!(
            name,
            "content-type"
                | "content-length"
                | "te"
                | "connection"
                | "host"
                | "transfer-encoding"
                | "keep-alive"
                | "upgrade"
                | "proxy-connection"
        )
}

/// The correlation headers, as names made once (a lookup by `&str` parses
/// the name on every call).
static CORRELATION: [http::HeaderName; 3] = [
    http::HeaderName::from_static("x-request-id"),
    http::HeaderName::from_static("traceparent"),
    http::HeaderName::from_static("tracestate"),
];

/// Request headers to gRPC metadata for `route`.
pub fn request_metadata(headers: &HeaderMap, route: &Route) -> MetadataMap {
    metadata_from_headers(headers, &route.forward_headers)
}

/// Request headers to gRPC metadata: the allow-list under their own names,
/// and every `Grpc-Metadata-Foo` as `foo` (grpc-gateway's convention).
///
/// Built as a header map and wrapped: a request header's value is already
/// a valid ASCII metadata value (tonic checks the same thing), so values
/// are shared rather than copied into new buffers. Keys ending in `-bin`
/// are left out, as tonic's ASCII keys refuse them: a binary value needs
/// base64 the client did not give.
pub fn metadata_from_headers(headers: &HeaderMap, forward: &[http::HeaderName]) -> MetadataMap {
    // Room for the four headers the backend call adds (content-type, te,
    // user-agent, grpc-timeout) without growing.
    let mut md = HeaderMap::with_capacity(CORRELATION.len() + forward.len() + 4);
    // Correlation headers always travel, whatever the allow-list: the
    // request id and the trace context (already continued by the access layer).
    for name in CORRELATION.iter() {
        if forward.contains(name) {
            continue;
        }
        if let Some(v) = headers.get(name) {
            let mut v = v.clone();
            // The request id and the gateway's span differ on every call;
            // a client's tracestate tends to repeat, so it stays indexable.
            if *name != CORRELATION[2] {
                crate::telemetry::trace::unique_per_call(&mut v);
            }
            md.insert(name.clone(), v);
        }
    }
    for name in forward {
        if reserved(name.as_str()) || name.as_str().ends_with("-bin") {
            continue;
        }
        for v in headers.get_all(name) {
            md.append(name.clone(), v.clone());
        }
    }
    for (name, v) in headers {
        let Some(rest) = name.as_str().strip_prefix("grpc-metadata-") else {
            continue;
        };
        if rest.is_empty() || reserved(rest) || rest.ends_with("-bin") {
            continue;
        }
        if let Ok(k) = http::HeaderName::from_bytes(rest.as_bytes()) {
            md.append(k, v.clone());
        }
    }
    MetadataMap::from_headers(md)
}

/// Backend metadata (headers and trailers; tonic merges them for unary calls)
/// goes back as `Grpc-Metadata-<key>`, as grpc-gateway does.
pub fn response_metadata(md: &MetadataMap, out: &mut HeaderMap) {
    for kv in md.iter() {
        let KeyAndValueRef::Ascii(k, v) = kv else {
            continue;
        };
        let key = k.as_str();
        if reserved(key) || key == "date" || key == "server" {
            continue;
        }
        let Ok(name) = http::HeaderName::from_bytes(format!("grpc-metadata-{key}").as_bytes())
        else {
            continue;
        };
        if let Ok(value) = HeaderValue::from_bytes(v.as_encoded_bytes()) {
            out.append(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The request id and trace parent, new on every call, go to HPACK as
    /// never-indexed literals (see `unique_per_call`); tracestate and
    /// allow-listed headers, which tend to repeat, stay indexable. All of
    /// them arrive with their values unchanged.
    #[test]
    fn correlation_values_are_not_indexed_and_forwarded_ones_are() {
        let mut headers = HeaderMap::new();
        headers.insert("x-request-id", HeaderValue::from_static("0123abcd"));
        headers.insert(
            "traceparent",
            HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        );
        headers.insert("tracestate", HeaderValue::from_static("vendor=1"));
        headers.insert("x-tenant", HeaderValue::from_static("acme"));
        headers.insert("grpc-metadata-shelf", HeaderValue::from_static("7"));
        // Binary keys need base64 the client did not give: left out.
        headers.insert("x-blob-bin", HeaderValue::from_static("AAEC"));
        headers.insert("grpc-metadata-raw-bin", HeaderValue::from_static("AAEC"));
        let md = metadata_from_headers(
            &headers,
            &[
                http::HeaderName::from_static("x-tenant"),
                http::HeaderName::from_static("x-blob-bin"),
            ],
        );
        assert_eq!(md.len(), 5, "{md:?}");
        let get = |k: &str| md.get(k).unwrap_or_else(|| panic!("{k} forwarded"));
        assert_eq!(get("x-request-id"), "0123abcd");
        assert!(get("x-request-id").is_sensitive());
        assert!(get("traceparent").is_sensitive());
        assert_eq!(get("tracestate"), "vendor=1");
        assert!(!get("tracestate").is_sensitive());
        assert_eq!(get("x-tenant"), "acme");
        assert!(!get("x-tenant").is_sensitive());
        assert!(!get("shelf").is_sensitive());
    }
}
