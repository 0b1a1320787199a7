//! How a stream of replies is written into one HTTP body, chosen by the
//! client's `Accept` and the route's default.

use bytes::BufMut as _;
use http::HeaderMap;

use crate::accept::ranges as accept_ranges;

/// The framings a server-streaming route can answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Framing {
    /// One `{"result": ...}` object per line and an `{"error": ...}` line if
    /// the stream fails: grpc-gateway's wire format.
    #[default]
    Ndjson,
    /// Server-Sent Events: one `data:` event per message, an `error` event on failure.
    Sse,
    /// One JSON array of the messages (Envoy's default). A failure after the
    /// first byte can only abort the body, which leaves the array unclosed.
    JsonArray,
}

impl Framing {
    /// The names routes.toml uses.
    pub const NAMES: &'static str = "ndjson, sse, json_array";

    pub fn parse(name: &str) -> Result<Framing, String> {
        match name.trim().to_ascii_lowercase().as_str() {
            "ndjson" => Ok(Framing::Ndjson),
            "sse" => Ok(Framing::Sse),
            "json_array" => Ok(Framing::JsonArray),
            other => Err(format!(
                "\"{other}\" is not a stream framing; use one of {}",
                Framing::NAMES
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Framing::Ndjson => "ndjson",
            Framing::Sse => "sse",
            Framing::JsonArray => "json_array",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Framing::Ndjson => "application/x-ndjson",
            Framing::Sse => "text/event-stream",
            Framing::JsonArray => "application/json",
        }
    }

    /// The framing for this request: the first media range in the client's
    /// preference order that names one, else the route's default.
    /// `application/json` means the array when the route defaults to it and
    /// NDJSON otherwise (what grpc-gateway sends under that type).
    pub fn negotiate(default: Framing, headers: &HeaderMap) -> Framing {
        for range in accept_ranges(headers) {
            match range.as_str() {
                "text/event-stream" => return Framing::Sse,
                "application/x-ndjson"
                | "application/ndjson"
                | "application/jsonl"
                | "application/jsonlines" => return Framing::Ndjson,
                "application/json" if default == Framing::JsonArray => return Framing::JsonArray,
                "application/json" => return Framing::Ndjson,
                "*/*" | "application/*" | "text/*" => return default,
                _ => {}
            }
        }
        default
    }

    /// Bytes written before the first message.
    pub fn start(self, out: &mut Vec<u8>) {
        if self == Framing::JsonArray {
            out.put_u8(b'[');
        }
    }

    /// One message, already rendered as JSON (`index` counts from 0).
    pub fn item(self, json: &[u8], index: u64, out: &mut Vec<u8>) {
        out.reserve(json.len() + 12);
        self.item_start(index, out);
        out.put_slice(json);
        self.item_end(out);
    }

    /// What goes before message `index`'s JSON, for a caller that renders
    /// the JSON straight into `out` (then [`item_end`](Self::item_end)).
    pub fn item_start(self, index: u64, out: &mut Vec<u8>) {
        match self {
            Framing::Ndjson => out.put_slice(b"{\"result\":"),
            // Compact JSON has no raw newlines, so one `data:` line holds it.
            Framing::Sse => out.put_slice(b"data: "),
            Framing::JsonArray if index > 0 => out.put_u8(b','),
            Framing::JsonArray => {}
        }
    }

    /// What goes after a message's JSON.
    pub fn item_end(self, out: &mut Vec<u8>) {
        match self {
            Framing::Ndjson => out.put_slice(b"}\n"),
            Framing::Sse => out.put_slice(b"\n\n"),
            Framing::JsonArray => {}
        }
    }

    /// Bytes after the last message of a stream that ended well.
    pub fn end(self, out: &mut Vec<u8>) {
        if self == Framing::JsonArray {
            out.put_u8(b']');
        }
    }

    /// The error frame for a stream that failed after its headers went out
    /// (`status` is a google.rpc.Status JSON object); false when the framing
    /// has no way to say it and the body must be aborted.
    pub fn error(self, status: &[u8], out: &mut Vec<u8>) -> bool {
        match self {
            Framing::Ndjson => {
                out.put_slice(b"{\"error\":");
                out.put_slice(status);
                out.put_slice(b"}\n");
                true
            }
            Framing::Sse => {
                out.put_slice(b"event: error\ndata: ");
                out.put_slice(status);
                out.put_slice(b"\n\n");
                true
            }
            Framing::JsonArray => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{header, HeaderValue};

    fn accept(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn accept_chooses_the_framing() {
        let d = Framing::Ndjson;
        assert_eq!(Framing::negotiate(d, &HeaderMap::new()), Framing::Ndjson);
        assert_eq!(
            Framing::negotiate(d, &accept("text/event-stream")),
            Framing::Sse
        );
        assert_eq!(
            Framing::negotiate(Framing::JsonArray, &accept("application/json")),
            Framing::JsonArray
        );
        assert_eq!(
            Framing::negotiate(Framing::JsonArray, &accept("application/x-ndjson")),
            Framing::Ndjson
        );
        assert_eq!(
            Framing::negotiate(Framing::Sse, &accept("*/*")),
            Framing::Sse
        );
    }

    #[test]
    fn accept_order_follows_q_values() {
        let h = accept("application/x-ndjson;q=0.5, text/event-stream, image/png;q=0");
        assert_eq!(
            accept_ranges(&h),
            ["text/event-stream", "application/x-ndjson"]
        );
        assert_eq!(Framing::negotiate(Framing::Ndjson, &h), Framing::Sse);
    }

    #[test]
    fn frames_look_like_grpc_gateways_and_sse() {
        let mut b = Vec::new();
        Framing::Ndjson.item(b"{\"a\":1}", 0, &mut b);
        assert!(Framing::Ndjson.error(b"{\"code\":2}", &mut b));
        assert_eq!(
            &b[..],
            b"{\"result\":{\"a\":1}}\n{\"error\":{\"code\":2}}\n"
        );
        let mut b = Vec::new();
        Framing::Sse.item(b"{}", 0, &mut b);
        assert!(Framing::Sse.error(b"{}", &mut b));
        assert_eq!(&b[..], b"data: {}\n\nevent: error\ndata: {}\n\n");
        let mut b = Vec::new();
        Framing::JsonArray.start(&mut b);
        Framing::JsonArray.item(b"1", 0, &mut b);
        Framing::JsonArray.item(b"2", 1, &mut b);
        Framing::JsonArray.end(&mut b);
        assert_eq!(&b[..], b"[1,2]");
        assert!(!Framing::JsonArray.error(b"{}", &mut b));
    }
}
