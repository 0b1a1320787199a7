//! The JSON request path: one JSON body (plus path variables and query)
//! into one request message. The fast JSON -> wire path ([`super::fast`])
//! goes first; the `DynamicMessage` reference path ([`super::request`])
//! takes what it declines, under the fallback contract written there.

use std::borrow::Cow;

use axum::body::Body;
use bytes::Bytes;
use http::{header, HeaderMap};
use prost_reflect::DynamicMessage;

use super::{request, BodyRule, Plan, Settings, TranscodeError};
use crate::error::Error;

/// Reads a JSON request body up to `server.max_body_bytes`, at
/// `limits.min_body_rate`; a declared length over the limit is refused
/// before any byte is read. `route` (method, template) names the route in
/// the refusal of a body it does not take.
pub async fn read_body(
    settings: &Settings,
    plan: &Plan,
    route: (&str, &str),
    headers: &HeaderMap,
    body: Body,
) -> Result<Bytes, Error> {
    let bytes = super::read_limited(
        headers,
        body,
        settings.max_body_bytes,
        settings.min_body_rate,
    )
    .await?;
    if matches!(plan.body, BodyRule::None) {
        // grpc-gateway ignores a body the route does not bind; a stricter
        // answer helps clients that put fields in the wrong place.
        if !bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(Error::BadRequest(format!(
                "{} {} takes no request body; send fields in the path or query",
                route.0, route.1
            )));
        }
        return Ok(bytes);
    }
    if !bytes.is_empty() {
        if let Some(ct) = headers.get(header::CONTENT_TYPE) {
            let ok = ct
                .to_str()
                .ok()
                .and_then(|s| s.split(';').next())
                .map(|m| {
                    let m = m.trim().to_ascii_lowercase();
                    // Only JSON. text/plain and form types are what a
                    // browser may send cross-site without a CORS preflight;
                    // reading them as JSON would let any page call the API
                    // with a user's cookies (CSRF).
                    m == "application/json"
                        || (m.starts_with("application/") && m.ends_with("+json"))
                })
                .unwrap_or(false);
            if !ok {
                return Err(Error::UnsupportedMediaType(format!(
                    "content type {:?} is not supported; send application/json",
                    ct.to_str().unwrap_or("(not text)")
                )));
            }
        }
    }
    Ok(bytes)
}

/// The request message of a unary or server-streaming call, encoded:
/// straight from JSON to wire bytes where the route's fast path takes it,
/// else through the `DynamicMessage` reference path ([`message`]), which
/// also words every error.
pub fn encode(
    settings: &Settings,
    plan: &Plan,
    vars: &[Cow<'_, str>],
    query: Option<&str>,
    body: &[u8],
) -> Result<Bytes, TranscodeError> {
    if let Some(wire) = direct(settings, plan, vars, query, body) {
        return Ok(Bytes::from(wire));
    }
    let msg = message(settings, plan, vars, query, body)?;
    Ok(Bytes::from(prost::Message::encode_to_vec(&msg)))
}

/// [`encode`]'s fast path: `None` when it declines.
fn direct(
    settings: &Settings,
    plan: &Plan,
    vars: &[Cow<'_, str>],
    query: Option<&str>,
    body: &[u8],
) -> Option<Vec<u8>> {
    super::fast::encode_request(
        &plan.fast,
        &plan.input,
        &plan.body,
        &plan.path_fields,
        &plan.bound,
        plan.shaping.update_mask.as_ref(),
        vars,
        query,
        body,
        settings.decode,
    )
}

/// The request message as a `DynamicMessage`: the body, then the path
/// variables, the query and the update mask.
fn message(
    settings: &Settings,
    plan: &Plan,
    vars: &[Cow<'_, str>],
    query: Option<&str>,
    body: &[u8],
) -> Result<DynamicMessage, TranscodeError> {
    let mut msg = request::decode_body(&plan.input, &plan.body, body, settings.decode)?;
    // Path variables win over the body, as in grpc-gateway.
    for (fields, value) in plan.path_fields.iter().zip(vars) {
        request::set_path_field(&mut msg, fields, value)?;
    }
    if let Some(q) = query {
        request::apply_query(&mut msg, q, &plan.body, &plan.bound, settings.decode)?;
    }
    let mask = (&plan.shaping.update_mask, &plan.body);
    if let (Some(mask), BodyRule::Field(field)) = mask {
        super::fieldmask::fill(&mut msg, mask, field, body);
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use prost_reflect::SerializeOptions;

    use super::*;

    /// A request to a route: its body rule (`""`, `"*"` or a field), the
    /// fields its path variables set and their values, the query and body.
    struct Case {
        rule: &'static str,
        paths: &'static [&'static str],
        vars: &'static [&'static str],
        query: Option<&'static str>,
        body: &'static str,
    }

    impl Case {
        /// The case sent to a server-streaming method and to a unary one
        /// (both take `testing.v1.Everything`).
        fn plans(&self) -> (Plan, Plan) {
            (
                Plan::for_test("testing.v1.Streams.List", self.rule, self.paths),
                Plan::for_test("testing.v1.Echo.Echo", self.rule, self.paths),
            )
        }

        fn vars(&self) -> Vec<Cow<'static, str>> {
            self.vars.iter().map(|v| Cow::Borrowed(*v)).collect()
        }

        fn encode(&self, plan: &Plan) -> Result<Bytes, TranscodeError> {
            let settings = Settings::for_test();
            encode(
                &settings,
                plan,
                &self.vars(),
                self.query,
                self.body.as_bytes(),
            )
        }
    }

    /// A request message as JSON, to compare what two paths built.
    fn json_of(plan: &Plan, wire: &[u8]) -> serde_json::Value {
        DynamicMessage::decode(plan.input.clone(), wire)
            .unwrap()
            .serialize_with_options(serde_json::value::Serializer, &SerializeOptions::new())
            .unwrap()
    }

    #[test]
    fn server_streaming_requests_take_the_direct_path() {
        let settings = Settings::for_test();
        let cases = [
            // A GET with the stream's parameters in the query (the load
            // bench's `/v1/stream/items?count=10`).
            Case {
                rule: "",
                paths: &["string_field"],
                vars: &["shelf-1"],
                query: Some("int32Field=10&tags=a&tags=b&labels[k]=v&color=BLUE"),
                body: "",
            },
            // Path variables over the whole body.
            Case {
                rule: "*",
                paths: &["string_field", "int64_field"],
                vars: &["from-path", "0"],
                query: None,
                body: r#"{"stringField":"from-body","int64Field":"7","tags":["a"]}"#,
            },
            // A body field, a path variable inside it, the query beside it.
            Case {
                rule: "inner",
                paths: &["inner.deeper.value"],
                vars: &["v"],
                query: Some("tags=x&int32Field=-3&labels[k]=v"),
                body: r#"{"name":"n","deeper":{"value":"old","count":"4"},"number":2}"#,
            },
        ];
        for c in cases {
            let (stream, unary) = c.plans();
            let (vars, body) = (c.vars(), c.body.as_bytes());
            let wire = direct(&settings, &stream, &vars, c.query, body)
                .unwrap_or_else(|| panic!("the direct path declined {} {:?}", c.body, c.query));
            // The same bytes as the unary method's request ...
            assert_eq!(c.encode(&stream).unwrap(), wire);
            assert_eq!(c.encode(&unary).unwrap(), wire);
            // ... and the same message as the reference path's.
            let reference = message(&settings, &stream, &vars, c.query, body).unwrap();
            let reference = prost::Message::encode_to_vec(&reference);
            assert_eq!(json_of(&stream, &wire), json_of(&stream, &reference));
        }
    }

    #[test]
    fn server_streaming_bad_input_is_refused_in_the_unary_words() {
        let none = |paths, vars, query| Case {
            rule: "",
            paths,
            vars,
            query: Some(query),
            body: "",
        };
        let cases = [
            (
                none(&["int32_field"], &["x"], ""),
                r#"path variable "int32_field": "x" is not a valid int32"#,
            ),
            (
                none(&[], &[], "nope=1"),
                r#"unknown query parameter "nope": testing.v1.Everything has no such field"#,
            ),
            (
                none(&["string_field"], &["s"], "stringField=t"),
                r#"query parameter "stringField" sets a field that the path or body already binds"#,
            ),
            (
                none(&[], &[], "int32Field=1&int32Field=2"),
                r#"query parameter "int32Field" is given more than once, but its field is not repeated"#,
            ),
            (
                Case {
                    rule: "*",
                    paths: &[],
                    vars: &[],
                    query: None,
                    body: r#"{"int32Field":"#,
                },
                "invalid JSON body",
            ),
            (
                Case {
                    rule: "inner",
                    paths: &[],
                    vars: &[],
                    query: None,
                    body: r#"{"name":1}"#,
                },
                r#"invalid JSON body at "inner.name""#,
            ),
        ];
        for (c, expected) in cases {
            let (stream, unary) = c.plans();
            let got = c.encode(&stream).unwrap_err();
            assert_eq!(got.message, c.encode(&unary).unwrap_err().message);
            assert!(
                got.message.starts_with(expected),
                "{} {:?}: {}",
                c.body,
                c.query,
                got.message
            );
        }
    }
}
