//! W3C Trace Context (`traceparent`, `tracestate`): taken from the client,
//! continued by the gateway, and handed to the backend so its spans join
//! the same trace.

/// A parsed `traceparent`: version 00, trace id, parent span id, flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

fn hex_into(s: &str, out: &mut [u8]) -> Option<()> {
    if s.len() != out.len() * 2 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    // Upper-case hex is invalid per the spec.
    s.bytes().all(|b| !b.is_ascii_uppercase()).then_some(())
}

impl TraceParent {
    /// Parses a `traceparent` header; `None` when malformed or all-zero ids,
    /// in which case the spec says to start a new trace.
    pub fn parse(header: &str) -> Option<TraceParent> {
        let mut parts = header.trim().split('-');
        let version = parts.next()?;
        if version.len() != 2 || version == "ff" {
            return None;
        }
        let mut trace_id = [0u8; 16];
        hex_into(parts.next()?, &mut trace_id)?;
        let mut span_id = [0u8; 8];
        hex_into(parts.next()?, &mut span_id)?;
        let mut flags = [0u8; 1];
        hex_into(parts.next()?, &mut flags)?;
        // Version 00 has exactly four fields; later versions may add more.
        if version == "00" && parts.next().is_some() {
            return None;
        }
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(TraceParent {
            trace_id,
            span_id,
            sampled: flags[0] & 1 == 1,
        })
    }

    /// A new trace started by the gateway.
    pub fn new_root(sampled: bool) -> TraceParent {
        let mut trace_id = [0u8; 16];
        trace_id[..8].copy_from_slice(&random_u64().to_be_bytes());
        trace_id[8..].copy_from_slice(&random_u64().to_be_bytes());
        TraceParent {
            trace_id,
            span_id: random_span_id(),
            sampled,
        }
    }

    /// The same trace with a new span id: the gateway's span, parent of the
    /// backend's.
    pub fn child(&self) -> TraceParent {
        TraceParent {
            span_id: random_span_id(),
            ..*self
        }
    }

    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    pub fn span_id_hex(&self) -> String {
        hex(&self.span_id)
    }

    pub fn header_value(&self) -> String {
        // 00-<32 hex>-<16 hex>-<2 hex>
        let mut buf = [0u8; 55];
        buf[..3].copy_from_slice(b"00-");
        hex_into_buf(&self.trace_id, &mut buf[3..35]);
        buf[35] = b'-';
        hex_into_buf(&self.span_id, &mut buf[36..52]);
        buf[52] = b'-';
        hex_into_buf(&[u8::from(self.sampled)], &mut buf[53..55]);
        String::from_utf8(buf.to_vec()).expect("ASCII")
    }
}

/// Lower-case hex of `bytes` into `out` (twice as long), without the
/// formatting machinery: ids are written on every request.
pub fn hex_into_buf(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[i * 2] = DIGITS[usize::from(b >> 4)];
        out[i * 2 + 1] = DIGITS[usize::from(b & 0x0f)];
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut buf = vec![0u8; bytes.len() * 2];
    hex_into_buf(bytes, &mut buf);
    String::from_utf8(buf).expect("hex digits are ASCII")
}

fn random_span_id() -> [u8; 8] {
    loop {
        let v = random_u64();
        if v != 0 {
            return v.to_be_bytes();
        }
    }
}

/// Ids need to be unique, not secret: a per-thread xorshift seeded from the
/// std hasher's random keys and the clock is enough and costs nanoseconds.
pub fn random_u64() -> u64 {
    use std::cell::Cell;
    use std::hash::{BuildHasher, Hasher};
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0),
            );
            h.finish() | 1
        });
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x
    })
}

/// Marks a value that differs on every call (a request id, a span id) so
/// HPACK sends it as a literal instead of adding it to the connection's
/// header table. Indexed, each call's value pushed out of the table the
/// headers that do repeat (`:authority`, `content-type`, `user-agent`),
/// which then went out as Huffman-coded literals again, and lookups walked
/// a chain of dead request ids. The flag only selects HPACK's "never
/// indexed" form; the value reaches the backend unchanged.
pub fn unique_per_call(v: &mut impl NeverIndexed) {
    v.never_indexed();
}

/// The two value types [`unique_per_call`] marks.
pub trait NeverIndexed {
    fn never_indexed(&mut self);
}

impl NeverIndexed for http::HeaderValue {
    fn never_indexed(&mut self) {
        self.set_sensitive(true);
    }
}

impl NeverIndexed for tonic::metadata::MetadataValue<tonic::metadata::Ascii> {
    fn never_indexed(&mut self) {
        self.set_sensitive(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_spec_example_and_keeps_the_trace_in_children() {
        let tp =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(tp.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(tp.span_id_hex(), "00f067aa0ba902b7");
        assert!(tp.sampled);
        let child = tp.child();
        assert_eq!(child.trace_id, tp.trace_id);
        assert_ne!(child.span_id, tp.span_id);
        assert!(child
            .header_value()
            .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(child.header_value().ends_with("-01"));
    }

    #[test]
    fn rejects_malformed_headers() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-xyz-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn new_roots_differ() {
        let a = TraceParent::new_root(false);
        let b = TraceParent::new_root(false);
        assert_ne!(a.trace_id, b.trace_id);
        assert!(a.header_value().ends_with("-00"));
    }
}
