//! gRPC metadata <-> HTTP headers.

use base64::alphabet;
use base64::engine::general_purpose::{
    GeneralPurpose, GeneralPurposeConfig, STANDARD, STANDARD_NO_PAD,
};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use http::{HeaderMap, HeaderName, HeaderValue};
use tonic::metadata::{KeyAndValueRef, MetadataMap};

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
/// `propagated`: the trace headers of formats besides W3C that the access
/// layer wrote (`telemetry.propagators`), sent on like `traceparent`.
pub fn request_metadata(
    headers: &HeaderMap,
    forward_headers: &[HeaderName],
    propagated: &[HeaderName],
) -> Result<MetadataMap, BadMetadata> {
    let md = metadata_from_headers(headers, forward_headers)?;
    if propagated.is_empty() {
        return Ok(md);
    }
    let mut md = md.into_headers();
    for name in propagated {
        if let Some(v) = headers.get(name) {
            md.insert(name.clone(), v.clone());
        }
    }
    Ok(MetadataMap::from_headers(md))
}

/// A binary (`-bin`) header whose value is not base64: refused with a 400
/// naming it, since dropping it would hide a value the client meant to send.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "header {header} carries binary metadata and must be base64 \
     (standard or URL-safe alphabet, padding optional)"
)]
pub struct BadMetadata {
    pub header: http::HeaderName,
}

/// Request headers to gRPC metadata: the allow-list under their own names,
/// and every `Grpc-Metadata-Foo` as `foo` (grpc-gateway's convention).
///
/// Built as a header map and wrapped: a request header's value is already
/// a valid ASCII metadata value (tonic checks the same thing), so values
/// are shared rather than copied into new buffers. Keys ending in `-bin`
/// carry binary values in base64: any common spelling is accepted and sent
/// on as gRPC's own (standard alphabet, unpadded), see [`binary_value`].
pub fn metadata_from_headers(
    headers: &HeaderMap,
    forward: &[http::HeaderName],
) -> Result<MetadataMap, BadMetadata> {
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
        if reserved(name.as_str()) {
            continue;
        }
        let binary = name.as_str().ends_with("-bin");
        for v in headers.get_all(name) {
            let v = if binary {
                binary_value(v).ok_or_else(|| BadMetadata {
                    header: name.clone(),
                })?
            } else {
                v.clone()
            };
            md.append(name.clone(), v);
        }
    }
    for (name, v) in headers {
        let Some(rest) = name.as_str().strip_prefix("grpc-metadata-") else {
            continue;
        };
        if rest.is_empty() || reserved(rest) {
            continue;
        }
        let Ok(k) = http::HeaderName::from_bytes(rest.as_bytes()) else {
            continue;
        };
        let v = if rest.ends_with("-bin") {
            binary_value(v).ok_or_else(|| BadMetadata {
                header: name.clone(),
            })?
        } else {
            v.clone()
        };
        md.append(k, v);
    }
    Ok(MetadataMap::from_headers(md))
}

/// Decoding engines for client-sent binary values: HTTP clients write
/// base64 either way, with or without padding (RFC 4648 sections 4 and 5).
const STANDARD_ANY_PADDING: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);
const URL_SAFE_ANY_PADDING: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A binary metadata value as gRPC sends it (PROTOCOL-HTTP2.md: standard
/// base64; implementations "should emit un-padded values"); `None` when
/// `v` is not base64 in either alphabet.
fn binary_value(v: &HeaderValue) -> Option<HeaderValue> {
    let bytes = STANDARD_ANY_PADDING
        .decode(v.as_bytes())
        .or_else(|_| URL_SAFE_ANY_PADDING.decode(v.as_bytes()))
        .ok()?;
    let encoded = STANDARD_NO_PAD.encode(bytes);
    Some(HeaderValue::try_from(encoded).expect("base64 is a valid header value"))
}

/// Backend metadata (headers and trailers; tonic merges them for unary calls)
/// goes back as `Grpc-Metadata-<key>`, as grpc-gateway does. Binary
/// (`-bin`) values go back in standard padded base64, the spelling every
/// decoder accepts, whatever padding the backend used.
pub fn response_metadata(md: &MetadataMap, out: &mut HeaderMap) {
    for kv in md.iter() {
        let key = match kv {
            KeyAndValueRef::Ascii(k, _) => k.as_str(),
            KeyAndValueRef::Binary(k, _) => k.as_str(),
        };
        if reserved(key) || key == "date" || key == "server" {
            continue;
        }
        let Ok(name) = http::HeaderName::from_bytes(format!("grpc-metadata-{key}").as_bytes())
        else {
            continue;
        };
        let value = match kv {
            KeyAndValueRef::Ascii(_, v) => HeaderValue::from_bytes(v.as_encoded_bytes()).ok(),
            // Undecodable values (a backend's bad base64) are left out:
            // passing them on would hand the client the same puzzle.
            KeyAndValueRef::Binary(_, v) => v
                .to_bytes()
                .ok()
                .and_then(|b| HeaderValue::try_from(STANDARD.encode(b)).ok()),
        };
        if let Some(value) = value {
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
        let md = metadata_from_headers(&headers, &[http::HeaderName::from_static("x-tenant")])
            .expect("no binary values to refuse");
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

    /// Binary values arrive in any base64 spelling and leave in gRPC's:
    /// standard alphabet, no padding. The bytes 0xfb 0xff need `+`/`/` in
    /// the standard alphabet and `-`/`_` in the URL-safe one.
    #[test]
    fn binary_values_are_decoded_from_either_alphabet_and_sent_unpadded() {
        for sent in ["+/8=", "+/8", "-_8=", "-_8"] {
            let mut headers = HeaderMap::new();
            headers.insert("grpc-metadata-blob-bin", HeaderValue::from_static(sent));
            headers.insert("x-raw-bin", HeaderValue::from_static(sent));
            let md = metadata_from_headers(&headers, &[http::HeaderName::from_static("x-raw-bin")])
                .unwrap_or_else(|e| panic!("{sent}: {e}"));
            for key in ["blob-bin", "x-raw-bin"] {
                let v = md.get_bin(key).unwrap_or_else(|| panic!("{sent}: {key}"));
                assert_eq!(v.as_encoded_bytes(), b"+/8", "{sent}: {key}");
                assert_eq!(v.to_bytes().unwrap().as_ref(), [0xfb, 0xff], "{sent}");
            }
        }
    }

    #[test]
    fn a_binary_value_that_is_not_base64_is_refused_by_its_header_name() {
        for bad in ["not base64!", "+/8==x", "a", "+_8"] {
            let mut headers = HeaderMap::new();
            headers.insert(
                "grpc-metadata-blob-bin",
                HeaderValue::from_str(bad).unwrap(),
            );
            let e = metadata_from_headers(&headers, &[]).expect_err(bad);
            assert_eq!(e.header, "grpc-metadata-blob-bin", "{bad}");
            assert!(e.to_string().contains("base64"), "{e}");
        }
    }

    #[test]
    fn binary_backend_metadata_goes_back_as_padded_standard_base64() {
        let mut md = MetadataMap::new();
        md.insert_bin(
            "x-blob-bin",
            tonic::metadata::MetadataValue::from_bytes(&[0xfb, 0xff]),
        );
        md.insert("x-text", tonic::metadata::MetadataValue::from_static("t"));
        let mut out = HeaderMap::new();
        response_metadata(&md, &mut out);
        assert_eq!(out["grpc-metadata-x-blob-bin"], "+/8=");
        assert_eq!(out["grpc-metadata-x-text"], "t");
    }
}
