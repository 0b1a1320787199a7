//! Trace headers besides W3C Trace Context: Zipkin's B3 (the single `b3`
//! header and the `X-B3-*` set) and Jaeger's `uber-trace-id`, so the
//! gateway joins traces that clients of either system start, and hands
//! its span to backends in the formats they read.
//!
//! W3C `traceparent` is always read first and always written; the formats
//! here are opt-in (`telemetry.propagators`). When one is on, the gateway
//! owns its headers: a client's values are read, then replaced by the
//! gateway's span before the call, as it does with `traceparent`. When none
//! is on, these headers are ordinary client headers (forwarded only if the
//! route's allow-list names them).
//!
//! Formats as their projects define them: B3 from openzipkin/b3-propagation
//! (64- or 128-bit trace ids, `1`/`0`/`d` sampling, `b3: 0` alone meaning
//! "do not sample"), Jaeger from its client propagation format
//! (`{trace-id}:{span-id}:{parent-span-id}:{flags}`, hex without leading
//! zeros, flags bit 0 = sampled, URL-encoded colons accepted).

use http::{HeaderMap, HeaderName, HeaderValue};

use super::trace::{hex_into_buf, TraceParent};

pub static B3: HeaderName = HeaderName::from_static("b3");
pub static X_B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
pub static X_B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
pub static X_B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
pub static X_B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
pub static X_B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");
pub static UBER_TRACE_ID: HeaderName = HeaderName::from_static("uber-trace-id");

/// Every header of the formats here: taken off a client's request when any
/// format is on (the gateway writes its own), and forwarded to backends as
/// metadata when present (only the gateway's values are, then).
pub static HEADERS: [HeaderName; 7] = [
    HeaderName::from_static("b3"),
    HeaderName::from_static("x-b3-traceid"),
    HeaderName::from_static("x-b3-spanid"),
    HeaderName::from_static("x-b3-parentspanid"),
    HeaderName::from_static("x-b3-sampled"),
    HeaderName::from_static("x-b3-flags"),
    HeaderName::from_static("uber-trace-id"),
];

/// The trace formats read from clients and written to backends besides
/// W3C Trace Context. Copy and three bits: it travels with every request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Propagators {
    /// The single `b3` header.
    pub b3: bool,
    /// `X-B3-TraceId`, `X-B3-SpanId`, `X-B3-Sampled`.
    pub b3multi: bool,
    /// `uber-trace-id`.
    pub jaeger: bool,
}

/// The names `telemetry.propagators` takes, as OpenTelemetry's
/// `OTEL_PROPAGATORS` spells them.
pub const NAMES: &[&str] = &["tracecontext", "b3", "b3multi", "jaeger"];

impl Propagators {
    /// From `telemetry.propagators`; `Err` names the unknown entry.
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Propagators, String> {
        let mut p = Propagators::default();
        for n in names {
            match n.trim() {
                "tracecontext" => {}
                "b3" => p.b3 = true,
                "b3multi" => p.b3multi = true,
                "jaeger" => p.jaeger = true,
                other => {
                    return Err(format!(
                        "unknown propagator \"{other}\"; use one of {}",
                        NAMES.join(", ")
                    ))
                }
            }
        }
        Ok(p)
    }

    pub fn any(self) -> bool {
        self.b3 || self.b3multi || self.jaeger
    }

    /// The header names to forward to backends as metadata: none when no
    /// format is on, so a client's own B3 or Jaeger headers are not sent on
    /// unless the route's allow-list names them.
    pub fn forwarded(self) -> &'static [HeaderName] {
        if self.any() {
            &HEADERS
        } else {
            &[]
        }
    }

    /// The client's trace in the first format it sent, among those on.
    pub fn extract(self, headers: &HeaderMap) -> Option<TraceParent> {
        let text = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
        if self.b3 {
            if let Some(tp) = text(&B3).and_then(parse_b3_single) {
                return Some(tp);
            }
        }
        if self.b3multi {
            if let Some(tp) = parse_b3_multi(
                text(&X_B3_TRACE_ID),
                text(&X_B3_SPAN_ID),
                text(&X_B3_SAMPLED),
                text(&X_B3_FLAGS),
            ) {
                return Some(tp);
            }
        }
        if self.jaeger {
            if let Some(tp) = text(&UBER_TRACE_ID).and_then(parse_jaeger) {
                return Some(tp);
            }
        }
        None
    }

    /// Replaces the client's headers of every format here with the
    /// gateway's span `tp` in the formats that are on.
    pub fn inject(self, headers: &mut HeaderMap, tp: &TraceParent) {
        if !self.any() {
            return;
        }
        for name in HEADERS.iter() {
            headers.remove(name);
        }
        for (name, value) in self.values(tp) {
            headers.insert(name.clone(), value);
        }
    }

    /// The headers that carry `tp` in the formats that are on.
    pub fn values(
        self,
        tp: &TraceParent,
    ) -> impl Iterator<Item = (&'static HeaderName, HeaderValue)> {
        let mut out: [Option<(&'static HeaderName, HeaderValue)>; 5] = Default::default();
        if self.b3 {
            out[0] = Some((&B3, b3_single(tp)));
        }
        if self.b3multi {
            let mut trace = [0u8; 32];
            hex_into_buf(&tp.trace_id, &mut trace);
            let mut span = [0u8; 16];
            hex_into_buf(&tp.span_id, &mut span);
            out[1] = Some((&X_B3_TRACE_ID, value(&trace)));
            out[2] = Some((&X_B3_SPAN_ID, value(&span)));
            out[3] = Some((
                &X_B3_SAMPLED,
                HeaderValue::from_static(if tp.sampled { "1" } else { "0" }),
            ));
        }
        if self.jaeger {
            out[4] = Some((&UBER_TRACE_ID, jaeger(tp)));
        }
        out.into_iter().flatten()
    }
}

/// A value of hex digits (and `-`, `:`): always a valid header value.
fn value(bytes: &[u8]) -> HeaderValue {
    let mut v = HeaderValue::from_bytes(bytes).expect("hex digits are a valid header value");
    // Differs on every call: see `trace::unique_per_call`.
    v.set_sensitive(true);
    v
}

/// `{trace}-{span}-{1|0}`.
fn b3_single(tp: &TraceParent) -> HeaderValue {
    let mut buf = [0u8; 32 + 1 + 16 + 2];
    hex_into_buf(&tp.trace_id, &mut buf[..32]);
    buf[32] = b'-';
    hex_into_buf(&tp.span_id, &mut buf[33..49]);
    buf[49] = b'-';
    buf[50] = if tp.sampled { b'1' } else { b'0' };
    value(&buf)
}

/// `{trace}:{span}:0:{01|00}` (the parent field is deprecated; 0).
fn jaeger(tp: &TraceParent) -> HeaderValue {
    let mut buf = [0u8; 32 + 1 + 16 + 5];
    hex_into_buf(&tp.trace_id, &mut buf[..32]);
    buf[32] = b':';
    hex_into_buf(&tp.span_id, &mut buf[33..49]);
    buf[49..54].copy_from_slice(if tp.sampled { b":0:01" } else { b":0:00" });
    value(&buf)
}

/// Lower-case hex of up to `out.len() * 2` digits, right-aligned (a 64-bit
/// B3 trace id is the low half of a 128-bit one; Jaeger drops leading
/// zeros). All zeros is no id.
fn hex_id(s: &str, out: &mut [u8], exact: &[usize]) -> Option<()> {
    let digits = out.len() * 2;
    if s.is_empty() || s.len() > digits || !(exact.is_empty() || exact.contains(&s.len())) {
        return None;
    }
    let mut padded = [b'0'; 32];
    padded[digits - s.len()..digits].copy_from_slice(s.as_bytes());
    for (i, o) in out.iter_mut().enumerate() {
        let pair = std::str::from_utf8(&padded[i * 2..i * 2 + 2]).ok()?;
        if pair.bytes().any(|b| b.is_ascii_uppercase()) {
            return None;
        }
        *o = u8::from_str_radix(pair, 16).ok()?;
    }
    out.iter().any(|b| *b != 0).then_some(())
}

fn ids(trace: &str, span: &str, exact_lengths: bool) -> Option<([u8; 16], [u8; 8])> {
    let mut trace_id = [0u8; 16];
    let mut span_id = [0u8; 8];
    let (t, s): (&[usize], &[usize]) = if exact_lengths {
        (&[16, 32], &[16])
    } else {
        (&[], &[])
    };
    hex_id(trace, &mut trace_id, t)?;
    hex_id(span, &mut span_id, s)?;
    Some((trace_id, span_id))
}

/// `b3: {trace}-{span}[-{sampling}[-{parent}]]`; `b3: 0` (no ids) is a
/// decision without a trace, which starts a new unsampled one: `None`.
fn parse_b3_single(v: &str) -> Option<TraceParent> {
    let mut parts = v.trim().split('-');
    let (trace, span) = (parts.next()?, parts.next()?);
    let sampled = match parts.next() {
        None => false,
        Some("1" | "d") => true,
        Some("0") => false,
        Some(_) => return None,
    };
    if let Some(parent) = parts.next() {
        hex_id(parent, &mut [0u8; 8], &[16])?;
    }
    if parts.next().is_some() {
        return None;
    }
    let (trace_id, span_id) = ids(trace, span, true)?;
    Some(TraceParent {
        trace_id,
        span_id,
        sampled,
    })
}

fn parse_b3_multi(
    trace: Option<&str>,
    span: Option<&str>,
    sampled: Option<&str>,
    flags: Option<&str>,
) -> Option<TraceParent> {
    let (trace_id, span_id) = ids(trace?.trim(), span?.trim(), true)?;
    let debug = flags.is_some_and(|f| f.trim() == "1");
    let sampled = debug || matches!(sampled.map(str::trim), Some("1" | "true"));
    Some(TraceParent {
        trace_id,
        span_id,
        sampled,
    })
}

/// `{trace}:{span}:{parent}:{flags}`, colons possibly URL-encoded.
fn parse_jaeger(v: &str) -> Option<TraceParent> {
    let v = v.trim();
    let decoded;
    let v = if v.contains("%3A") || v.contains("%3a") {
        decoded = v.replace("%3A", ":").replace("%3a", ":");
        decoded.as_str()
    } else {
        v
    };
    let mut parts = v.split(':');
    let (trace, span, _parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let (trace_id, span_id) = ids(trace, span, false)?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(TraceParent {
        trace_id,
        span_id,
        sampled: flags & 1 == 1,
    })
}

/// Rewrites the B3 and Jaeger values of a call's metadata for a new span
/// (each upstream attempt's, when spans are exported), as `traceparent` is.
pub fn rewrite(md: &mut tonic::metadata::MetadataMap, tp: &TraceParent) {
    let on = Propagators {
        b3: md.contains_key(B3.as_str()),
        b3multi: md.contains_key(X_B3_SPAN_ID.as_str()),
        jaeger: md.contains_key(UBER_TRACE_ID.as_str()),
    };
    if !on.any() {
        return;
    }
    let mut headers = std::mem::take(md).into_headers();
    for (name, value) in on.values(tp) {
        headers.insert(name.clone(), value);
    }
    *md = tonic::metadata::MetadataMap::from_headers(headers);
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: Propagators = Propagators {
        b3: true,
        b3multi: true,
        jaeger: true,
    };

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn b3_single_with_64_and_128_bit_trace_ids() {
        let tp = ALL
            .extract(&headers(&[(
                "b3",
                "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
            )]))
            .unwrap();
        assert_eq!(tp.trace_id_hex(), "80f198ee56343ba864fe8b2a57d3eff7");
        assert_eq!(tp.span_id_hex(), "e457b5a2e4d86bd1");
        assert!(tp.sampled);
        let tp = ALL
            .extract(&headers(&[("b3", "a3ce929d0e0e4736-00f067aa0ba902b7-0")]))
            .unwrap();
        assert_eq!(tp.trace_id_hex(), "0000000000000000a3ce929d0e0e4736");
        assert!(!tp.sampled);
        let tp = ALL
            .extract(&headers(&[("b3", "a3ce929d0e0e4736-00f067aa0ba902b7-d")]))
            .unwrap();
        assert!(tp.sampled, "debug implies sampled");
    }

    #[test]
    fn b3_multi_and_jaeger() {
        let tp = ALL
            .extract(&headers(&[
                ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
                ("x-b3-spanid", "a2fb4a1d1a96d312"),
                ("x-b3-sampled", "1"),
            ]))
            .unwrap();
        assert_eq!(tp.trace_id_hex(), "463ac35c9f6413ad48485a3953bb6124");
        assert!(tp.sampled);
        let tp = ALL
            .extract(&headers(&[(
                "uber-trace-id",
                "5ff2d0b0b1f2a3c4:7c3a1e5b:0:1",
            )]))
            .unwrap();
        assert_eq!(tp.trace_id_hex(), "00000000000000005ff2d0b0b1f2a3c4");
        assert_eq!(tp.span_id_hex(), "000000007c3a1e5b");
        assert!(tp.sampled);
        let tp = ALL
            .extract(&headers(&[(
                "uber-trace-id",
                "5ff2d0b0b1f2a3c4%3A7c3a1e5b%3A0%3A0",
            )]))
            .unwrap();
        assert!(!tp.sampled);
    }

    #[test]
    fn malformed_or_zero_ids_are_no_trace() {
        for (k, v) in [
            ("b3", "0"),
            ("b3", "1"),
            ("b3", "80f198ee56343ba864fe8b2a57d3eff7"),
            ("b3", "80f198ee56343ba8-e457b5a2e4d86bd1-x"),
            ("b3", "80F198EE56343BA8-e457b5a2e4d86bd1-1"),
            ("b3", "80f198ee56343ba-e457b5a2e4d86bd1-1"),
            ("b3", "0000000000000000-e457b5a2e4d86bd1-1"),
            ("b3", "80f198ee56343ba8-e457b5a2e4d86bd1-1-05e3-x"),
            ("uber-trace-id", "abc:def:0"),
            ("uber-trace-id", "0:def:0:1"),
            ("uber-trace-id", "abc:def:0:zz"),
            ("uber-trace-id", "1234567890abcdef1234567890abcdef0:def:0:1"),
        ] {
            assert_eq!(ALL.extract(&headers(&[(k, v)])), None, "{k}: {v}");
        }
        // Only the formats that are on are read.
        let off = Propagators::default();
        assert_eq!(
            off.extract(&headers(&[("b3", "a3ce929d0e0e4736-00f067aa0ba902b7-1")])),
            None
        );
    }

    #[test]
    fn inject_replaces_the_clients_values_with_the_gateways_span() {
        let tp =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let mut h = headers(&[
            ("b3", "a3ce929d0e0e4736-00f067aa0ba902b7-0"),
            ("x-b3-flags", "1"),
            ("uber-trace-id", "1:2:0:1"),
        ]);
        Propagators {
            b3: false,
            b3multi: true,
            jaeger: true,
        }
        .inject(&mut h, &tp);
        assert!(h.get("b3").is_none() && h.get("x-b3-flags").is_none());
        assert_eq!(h["x-b3-traceid"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(h["x-b3-spanid"], "00f067aa0ba902b7");
        assert_eq!(h["x-b3-sampled"], "1");
        assert_eq!(
            h["uber-trace-id"],
            "4bf92f3577b34da6a3ce929d0e0e4736:00f067aa0ba902b7:0:01"
        );
        let mut h = HeaderMap::new();
        ALL.inject(&mut h, &tp);
        assert_eq!(
            h["b3"],
            "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1"
        );
        // What the gateway writes, it reads back.
        for only in [
            Propagators {
                b3: true,
                ..Default::default()
            },
            Propagators {
                b3multi: true,
                ..Default::default()
            },
            Propagators {
                jaeger: true,
                ..Default::default()
            },
        ] {
            assert_eq!(only.extract(&h), Some(tp), "{only:?}");
        }
    }

    #[test]
    fn unknown_propagators_are_named() {
        assert_eq!(
            Propagators::parse(["tracecontext", "b3multi"]),
            Ok(Propagators {
                b3multi: true,
                ..Default::default()
            })
        );
        let e = Propagators::parse(["xray"]).unwrap_err();
        assert!(e.contains("\"xray\"") && e.contains("b3multi"), "{e}");
    }
}
