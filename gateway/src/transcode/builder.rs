//! Request messages built from pieces of a body (an NDJSON line, a chunk
//! of raw bytes, a multipart part) plus the path variables and query, for
//! the streaming and multipart request paths.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap};
use prost_reflect::DynamicMessage;

use super::{httpbody, request, BodyRule, Plan, TranscodeError};

/// Raw request bodies are sent on in messages of at most this size: large
/// enough that per-message overhead is noise, small enough that one message
/// never holds much of an upload.
pub const RAW_CHUNK_BYTES: usize = 64 * 1024;

/// Builds request messages from pieces of the body plus the path and query.
#[derive(Clone)]
pub struct Builder {
    pub(crate) plan: Arc<Plan>,
    pub(crate) vars: Vec<String>,
    pub(crate) query: Option<String>,
    pub(crate) opts: super::DecodeOptions,
}

impl Builder {
    /// Path variables win over the body, as in grpc-gateway.
    pub(crate) fn path_and_query(&self, msg: &mut DynamicMessage) -> Result<(), TranscodeError> {
        for (fields, value) in self.plan.path_fields.iter().zip(&self.vars) {
            request::set_path_field(msg, fields, value)?;
        }
        if let Some(q) = &self.query {
            request::apply_query(msg, q, &self.plan.body, &self.plan.bound, self.opts)?;
        }
        Ok(())
    }

    /// One NDJSON line (or WebSocket frame), encoded: straight from JSON to
    /// wire bytes where the route's fast path takes it, as a unary call's
    /// body is, else through [`line_message`](Self::line_message), which
    /// also words every error.
    pub(crate) fn line(&self, json: &[u8]) -> Result<Bytes, TranscodeError> {
        let plan = &self.plan;
        let direct = super::fast::encode_request(
            &plan.fast,
            &plan.input,
            &plan.body,
            &plan.path_fields,
            &plan.bound,
            None,
            &self.vars,
            self.query.as_deref(),
            json,
            self.opts,
        );
        if let Some(wire) = direct {
            return Ok(Bytes::from(wire));
        }
        let msg = self.line_message(json)?;
        Ok(Bytes::from(prost::Message::encode_to_vec(&msg)))
    }

    /// One NDJSON line as a `DynamicMessage`: the body, then the path
    /// variables and the query (the reference for [`line`](Self::line)).
    pub(crate) fn line_message(&self, json: &[u8]) -> Result<DynamicMessage, TranscodeError> {
        let mut msg = request::decode_body(&self.plan.input, &self.plan.body, json, self.opts)?;
        self.path_and_query(&mut msg)?;
        Ok(msg)
    }

    /// Raw bytes into the HttpBody request or body field.
    pub(crate) fn raw_body_message(
        &self,
        content_type: &str,
        data: Bytes,
    ) -> Result<DynamicMessage, TranscodeError> {
        let target = match &self.plan.body {
            BodyRule::Field(f) => Some(f),
            _ => None,
        };
        let mut msg = httpbody::fill_request(&self.plan.input, target, content_type, data);
        if target.is_some() {
            self.path_and_query(&mut msg)?;
        }
        Ok(msg)
    }
}

/// The request's content type, or empty.
pub(crate) fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

#[cfg(test)]
mod tests {
    use prost_reflect::SerializeOptions;

    use super::*;

    fn builder(method: &str, body: &str, paths: &[&str], vars: &[&str], query: &str) -> Builder {
        Builder {
            plan: Arc::new(Plan::for_test(method, body, paths)),
            vars: vars.iter().map(|v| v.to_string()).collect(),
            query: (!query.is_empty()).then(|| query.to_owned()),
            opts: super::super::DecodeOptions::default(),
        }
    }

    fn json_of(b: &Builder, wire: &[u8]) -> serde_json::Value {
        DynamicMessage::decode(b.plan.input.clone(), wire)
            .unwrap()
            .serialize_with_options(serde_json::value::Serializer, &SerializeOptions::new())
            .unwrap()
    }

    fn direct(b: &Builder, json: &[u8]) -> Option<Vec<u8>> {
        let p = &b.plan;
        crate::transcode::fast::encode_request(
            &p.fast,
            &p.input,
            &p.body,
            &p.path_fields,
            &p.bound,
            None,
            &b.vars,
            b.query.as_deref(),
            json,
            b.opts,
        )
    }

    #[test]
    fn stream_lines_take_the_direct_path_with_path_and_query() {
        let lines = [
            r#"{"name":"a","deeper":{"value":"old"}}"#,
            r#"{"number":3}"#,
            "{}",
        ];
        for method in ["testing.v1.Streams.Upload", "testing.v1.Streams.Chat"] {
            let b = builder(
                method,
                "inner",
                &["string_field", "inner.deeper.value"],
                &["s", "from-path"],
                "tags=x&tags=y&int32Field=-3&labels[k]=v",
            );
            for line in lines {
                let wire = direct(&b, line.as_bytes())
                    .unwrap_or_else(|| panic!("{method}: the direct path declined {line}"));
                assert_eq!(b.line(line.as_bytes()).unwrap(), wire);
                let reference = b.line_message(line.as_bytes()).unwrap();
                let reference = prost::Message::encode_to_vec(&reference);
                let got = json_of(&b, &wire);
                assert_eq!(got, json_of(&b, &reference), "{method}: {line}");
                assert_eq!(got["inner"]["deeper"]["value"], "from-path");
                assert_eq!(got["tags"], serde_json::json!(["x", "y"]));
            }
        }
    }

    #[test]
    fn a_bad_line_is_refused_in_the_reference_words() {
        let chat = "testing.v1.Streams.Chat";
        // (the route's builder, a line)
        let cases = [
            (builder(chat, "*", &[], &[], ""), r#"{"int32Field":"x"}"#),
            (builder(chat, "*", &[], &[], ""), r#"{"int32Field":"#),
            (
                builder(chat, "inner", &["int32_field"], &["x"], ""),
                r#"{"name":"n"}"#,
            ),
            (
                builder(chat, "inner", &[], &[], "nope=1"),
                r#"{"name":"n"}"#,
            ),
        ];
        for (b, line) in cases {
            assert!(direct(&b, line.as_bytes()).is_none(), "{line}");
            let got = b.line(line.as_bytes()).unwrap_err();
            let reference = b.line_message(line.as_bytes()).unwrap_err();
            assert_eq!(got.message, reference.message);
        }
    }
}
