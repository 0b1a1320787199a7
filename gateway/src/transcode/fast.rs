//! The direct path between JSON and protobuf wire bytes: the request body
//! (of a unary or server-streaming call, or one NDJSON line or WebSocket
//! frame of a client or bidirectional stream) goes through
//! [`json_wire`](super::json_wire) and path variables are appended as
//! encoded fields, so no `DynamicMessage` is built.
//!
//! It relies on protobuf's merge rule: when a field appears twice on the
//! wire, the last singular value wins and messages merge. Writing the body
//! first and the path variables after it gives exactly "path variables win
//! over the body" (grpc-gateway's rule) that the reference path implements
//! by setting fields on a message.
//!
//! Whenever the direct path declines (a body it does not handle, any error),
//! the caller runs the reference path, which is also what words the 400.

use std::collections::HashMap;
use std::sync::Arc;

use prost::encoding::{encode_key, encode_varint, WireType};
use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor, Value,
};

use super::json_wire::BodyPlan;
use super::request::{self, BodyRule, DecodeOptions};
use super::shape::Shaping;
use super::wire_json::{JsonStyle, ReplyPlan};

/// What a route can do without a `DynamicMessage`, resolved at config load.
#[derive(Default)]
pub struct FastRoute {
    /// The plan for the JSON body (the request, or its `body` field's
    /// message); `None` when the route has no body or the body's type is
    /// not one the direct encoder handles.
    body: Option<Arc<BodyPlan>>,
    /// Whether the route can use the direct request path at all.
    request: bool,
    /// The query may set a field in the same oneof as the body field; the
    /// reference path refuses that, and appending would let the last win.
    query_in_body_oneof: bool,
    /// The plan that renders the reply straight from its wire bytes; `None`
    /// when the answer needs the decoded message (`response_body`, an
    /// HttpBody reply, headers taken from reply fields).
    pub reply: Option<Arc<ReplyPlan>>,
}

impl std::fmt::Debug for FastRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastRoute")
            .field("request", &self.request)
            .field("body", &self.body.is_some())
            .field("reply", &self.reply.is_some())
            .finish()
    }
}

/// Builds [`FastRoute`]s for one snapshot, sharing a plan between routes of
/// the same message type (10,000 routes of one method hold one plan).
pub struct Planner {
    decode: DecodeOptions,
    style: JsonStyle,
    bodies: HashMap<String, Arc<BodyPlan>>,
    replies: HashMap<String, Arc<ReplyPlan>>,
}

impl Planner {
    pub fn new(decode: DecodeOptions, style: JsonStyle) -> Self {
        Planner {
            decode,
            style,
            bodies: HashMap::new(),
            replies: HashMap::new(),
        }
    }

    fn reply_plan(&mut self, desc: &MessageDescriptor) -> Arc<ReplyPlan> {
        let style = self.style;
        self.replies
            .entry(desc.full_name().to_owned())
            .or_insert_with(|| Arc::new(ReplyPlan::new(desc, style)))
            .clone()
    }

    fn body_plan(&mut self, desc: &MessageDescriptor) -> Arc<BodyPlan> {
        let decode = self.decode;
        self.bodies
            .entry(desc.full_name().to_owned())
            .or_insert_with(|| Arc::new(BodyPlan::new(desc, decode)))
            .clone()
    }

    /// The direct paths of a route calling `method`: the request for
    /// every kind of method (a unary or server-streaming call's one
    /// message, each NDJSON line or WebSocket frame of a client or
    /// bidirectional stream) unless the body is raw or multipart; the
    /// reply (a unary answer, each message of a streamed one) unless the
    /// answer needs the decoded message (`response_body`, an HttpBody
    /// reply, headers taken from reply fields).
    pub fn for_route(
        &mut self,
        method: &MethodDescriptor,
        body: &BodyRule,
        shaping: &Shaping,
        response_body: Option<&FieldDescriptor>,
    ) -> FastRoute {
        self.route(
            &method.input(),
            body,
            !shaping.raw_request && !shaping.multipart,
            &method.output(),
            response_body.is_none() && !shaping.needs_reply_message(),
        )
    }

    /// The direct paths of a route: the request when its body is JSON
    /// (`request_ok`), the reply when the answer is the whole reply as
    /// JSON (`reply_ok`).
    fn route(
        &mut self,
        input: &MessageDescriptor,
        body: &BodyRule,
        request_ok: bool,
        output: &MessageDescriptor,
        reply_ok: bool,
    ) -> FastRoute {
        let reply = reply_ok.then(|| self.reply_plan(output));
        let mut fast = self.request(input, body, request_ok);
        fast.reply = reply;
        fast
    }

    fn request(&mut self, input: &MessageDescriptor, body: &BodyRule, eligible: bool) -> FastRoute {
        if !eligible {
            return FastRoute::default();
        }
        match body {
            BodyRule::None => FastRoute {
                request: true,
                ..FastRoute::default()
            },
            BodyRule::All => FastRoute {
                body: Some(self.body_plan(input)),
                request: true,
                ..FastRoute::default()
            },
            BodyRule::Field(f) => match f.kind() {
                Kind::Message(m) if !f.is_list() && !f.is_map() => FastRoute {
                    body: Some(self.body_plan(&m)),
                    request: true,
                    query_in_body_oneof: f.containing_oneof().is_some_and(|o| !o.is_synthetic()),
                    ..FastRoute::default()
                },
                // Scalar, repeated and map bodies: the reference path.
                _ => FastRoute::default(),
            },
        }
    }
}

/// The request message's wire bytes built directly, or `None` to take the
/// reference path (which also words any error). `mask` is the route's
/// `update_mask` field, filled from the body's keys; `None` for messages
/// that do not fill it (the lines of a stream).
#[allow(clippy::too_many_arguments)]
pub fn encode_request<S: AsRef<str>>(
    fast: &FastRoute,
    input: &MessageDescriptor,
    rule: &BodyRule,
    path_fields: &[request::FieldPath],
    bound: &[Vec<u32>],
    mask: Option<&FieldDescriptor>,
    vars: &[S],
    query: Option<&str>,
    body: &[u8],
    decode: DecodeOptions,
) -> Option<Vec<u8>> {
    if !fast.request || (fast.query_in_body_oneof && query.is_some_and(|q| !q.is_empty())) {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() / 2 + 32);
    match (rule, &fast.body) {
        (BodyRule::None, _) => {}
        (BodyRule::All, Some(plan)) => plan.encode(body, &mut out).ok()?,
        (BodyRule::Field(f), Some(plan)) => {
            if !body.iter().all(u8::is_ascii_whitespace) {
                let mut inner = Vec::with_capacity(body.len() / 2 + 16);
                plan.encode(body, &mut inner).ok()?;
                encode_key(f.number(), WireType::LengthDelimited, &mut out);
                encode_varint(inner.len() as u64, &mut out);
                out.extend_from_slice(&inner);
            }
        }
        _ => return None,
    }
    for (path, raw) in path_fields.iter().zip(vars) {
        encode_path_var(path, raw.as_ref(), &mut out)?;
    }
    let query = query.filter(|q| !q.is_empty());
    let mask = match (mask, rule) {
        (Some(m), BodyRule::Field(f)) => Some((m, f)),
        _ => None,
    };
    let mark = out.len();
    let direct_query = mask.is_none()
        && query.is_none_or(|q| encode_query(input, q, rule, bound, &mut out).is_some());
    if !direct_query {
        out.truncate(mark);
        // The query (and a filled update_mask) set fields the body and path
        // do not bind, so they go in a message of their own, appended.
        let mut rest = DynamicMessage::new(input.clone());
        if let Some(q) = query {
            request::apply_query(&mut rest, q, rule, bound, decode).ok()?;
        }
        if let Some((m, f)) = mask {
            super::fieldmask::fill(&mut rest, m, f, body);
        }
        prost::Message::encode(&rest, &mut out).ok()?;
    }
    Some(out)
}

/// Appends the query's parameters as encoded fields, for the common query:
/// each parameter names a singular field of a scalar type (or one with a
/// string form, such as a Timestamp), once, outside any oneof, that the
/// path and body do not bind. `None` for anything else (lists, maps,
/// oneofs, unknown names, bad values, a `body: "*"` route), which
/// `request::apply_query` then takes, and words.
fn encode_query(
    input: &MessageDescriptor,
    query: &str,
    rule: &BodyRule,
    bound: &[Vec<u32>],
    out: &mut Vec<u8>,
) -> Option<()> {
    if matches!(rule, BodyRule::All) {
        return None;
    }
    // Field-number paths already set, to leave a second value to the
    // reference, which refuses it.
    let mut seen: Vec<Vec<u32>> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = request::query_decode(raw_key).ok()?;
        let value = request::query_decode(raw_value).ok()?;
        let (path, None) = request::resolve_query_key(input.clone(), &key).ok()?? else {
            return None;
        };
        let leaf = path.last()?;
        if leaf.is_list() || leaf.is_map() {
            return None;
        }
        if leaf.containing_oneof().is_some_and(|o| !o.is_synthetic()) {
            return None;
        }
        let numbers: Vec<u32> = path.iter().map(FieldDescriptor::number).collect();
        let clash = |b: &Vec<u32>| b.starts_with(&numbers) || numbers.starts_with(b);
        if bound.iter().any(clash) || seen.contains(&numbers) {
            return None;
        }
        let parsed = request::parse_value(leaf, &value).ok()?;
        if !leaf.supports_presence() && parsed.is_default_for_field(leaf) {
            // The reference leaves a default without presence off the
            // wire; the parent messages it creates on the way stay, so a
            // nested one is left to it.
            if path.len() > 1 {
                return None;
            }
        } else {
            encode_at(&path, &parsed, out)?;
        }
        seen.push(numbers);
    }
    Some(())
}

/// Appends one path variable as an encoded field (inside its parent
/// messages), even when it is the default value: on the wire an explicit 0
/// still overrides what the body said.
fn encode_path_var(path: &[FieldDescriptor], raw: &str, out: &mut Vec<u8>) -> Option<()> {
    let value = request::parse_value(path.last()?, raw).ok()?;
    encode_at(path, &value, out)
}

/// Appends `value` as the field at the end of `path`, inside its parent
/// messages.
fn encode_at(path: &[FieldDescriptor], value: &Value, out: &mut Vec<u8>) -> Option<()> {
    let (leaf, parents) = path.split_last()?;
    if parents.is_empty() {
        return encode_field(leaf, value, out);
    }
    let mut inner = Vec::with_capacity(24);
    encode_field(leaf, value, &mut inner)?;
    for parent in parents.iter().rev() {
        let mut wrapped = Vec::with_capacity(inner.len() + 6);
        encode_key(parent.number(), WireType::LengthDelimited, &mut wrapped);
        encode_varint(inner.len() as u64, &mut wrapped);
        wrapped.extend_from_slice(&inner);
        inner = wrapped;
    }
    out.extend_from_slice(&inner);
    Some(())
}

/// One singular field's tag and value, as protobuf encodes `kind`.
fn encode_field(field: &FieldDescriptor, value: &Value, out: &mut Vec<u8>) -> Option<()> {
    let n = field.number();
    let varint = |v: u64, out: &mut Vec<u8>| {
        encode_key(n, WireType::Varint, out);
        encode_varint(v, out);
    };
    match (field.kind(), value) {
        (Kind::Double, Value::F64(v)) => {
            encode_key(n, WireType::SixtyFourBit, out);
            out.extend_from_slice(&v.to_le_bytes());
        }
        (Kind::Float, Value::F32(v)) => {
            encode_key(n, WireType::ThirtyTwoBit, out);
            out.extend_from_slice(&v.to_le_bytes());
        }
        // Negative int32s are sign-extended to ten bytes, as protobuf does.
        (Kind::Int32, Value::I32(v)) => varint(i64::from(*v) as u64, out),
        (Kind::Int64, Value::I64(v)) => varint(*v as u64, out),
        (Kind::Uint32, Value::U32(v)) => varint(u64::from(*v), out),
        (Kind::Uint64, Value::U64(v)) => varint(*v, out),
        (Kind::Sint32, Value::I32(v)) => varint(u64::from(((v << 1) ^ (v >> 31)) as u32), out),
        (Kind::Sint64, Value::I64(v)) => varint(((v << 1) ^ (v >> 63)) as u64, out),
        (Kind::Bool, Value::Bool(v)) => varint(u64::from(*v), out),
        (Kind::Enum(_), Value::EnumNumber(v)) => varint(i64::from(*v) as u64, out),
        (Kind::Fixed32, Value::U32(v)) => {
            encode_key(n, WireType::ThirtyTwoBit, out);
            out.extend_from_slice(&v.to_le_bytes());
        }
        (Kind::Sfixed32, Value::I32(v)) => {
            encode_key(n, WireType::ThirtyTwoBit, out);
            out.extend_from_slice(&v.to_le_bytes());
        }
        (Kind::Fixed64, Value::U64(v)) => {
            encode_key(n, WireType::SixtyFourBit, out);
            out.extend_from_slice(&v.to_le_bytes());
        }
        (Kind::Sfixed64, Value::I64(v)) => {
            encode_key(n, WireType::SixtyFourBit, out);
            out.extend_from_slice(&v.to_le_bytes());
        }
        (Kind::String, Value::String(s)) => {
            encode_key(n, WireType::LengthDelimited, out);
            encode_varint(s.len() as u64, out);
            out.extend_from_slice(s.as_bytes());
        }
        (Kind::Bytes, Value::Bytes(b)) => {
            encode_key(n, WireType::LengthDelimited, out);
            encode_varint(b.len() as u64, out);
            out.extend_from_slice(b);
        }
        (Kind::Message(_), Value::Message(m)) => {
            let bytes = prost::Message::encode_to_vec(m);
            encode_key(n, WireType::LengthDelimited, out);
            encode_varint(bytes.len() as u64, out);
            out.extend_from_slice(&bytes);
        }
        _ => return None,
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use prost_reflect::{DynamicMessage, ReflectMessage as _, SerializeOptions};

    use super::*;

    fn everything() -> MessageDescriptor {
        crate::transcode::test_pool()
            .get_message_by_name("testing.v1.Everything")
            .unwrap()
    }

    fn field_path(names: &[&str]) -> request::FieldPath {
        let mut desc = everything();
        let mut out = Vec::new();
        for name in names {
            let f = desc.get_field_by_name(name).unwrap();
            if let Kind::Message(m) = f.kind() {
                desc = m;
            }
            out.push(f);
        }
        out
    }

    struct Case {
        rule: BodyRule,
        paths: Vec<request::FieldPath>,
        vars: Vec<&'static str>,
        query: Option<&'static str>,
        body: &'static str,
    }

    fn decode() -> DecodeOptions {
        DecodeOptions::default()
    }

    /// What the reference path (server::build_message) builds.
    fn reference(c: &Case, bound: &[Vec<u32>]) -> Result<DynamicMessage, String> {
        let input = everything();
        let mut msg = request::decode_body(&input, &c.rule, c.body.as_bytes(), decode())
            .map_err(|e| e.message)?;
        for (p, v) in c.paths.iter().zip(&c.vars) {
            request::set_path_field(&mut msg, p, v).map_err(|e| e.message)?;
        }
        if let Some(q) = c.query {
            request::apply_query(&mut msg, q, &c.rule, bound, decode()).map_err(|e| e.message)?;
        }
        Ok(msg)
    }

    fn bound(c: &Case) -> Vec<Vec<u32>> {
        let mut b: Vec<Vec<u32>> = c
            .paths
            .iter()
            .map(|p| p.iter().map(FieldDescriptor::number).collect())
            .collect();
        if let BodyRule::Field(f) = &c.rule {
            b.push(vec![f.number()]);
        }
        b
    }

    /// Runs the direct path; `Some` when it took the case.
    fn direct(c: &Case) -> Option<Vec<u8>> {
        let mut planner = Planner::new(decode(), JsonStyle::default());
        let fast = planner.route(&everything(), &c.rule, true, &everything(), false);
        let vars: Vec<Cow<'_, str>> = c.vars.iter().map(|v| Cow::Borrowed(*v)).collect();
        encode_request(
            &fast,
            &everything(),
            &c.rule,
            &c.paths,
            &bound(c),
            None,
            &vars,
            c.query,
            c.body.as_bytes(),
            decode(),
        )
    }

    /// Both paths give the same message (compared as the JSON the backend's
    /// reply would render, since explicit defaults differ only in presence).
    fn same(c: Case) {
        let expected = reference(&c, &bound(&c)).expect("the reference accepts the case");
        let wire = direct(&c).expect("the direct path takes the case");
        let got = DynamicMessage::decode(everything(), wire.as_slice()).unwrap();
        let json = |m: &DynamicMessage| {
            m.serialize_with_options(serde_json::value::Serializer, &SerializeOptions::new())
                .unwrap()
        };
        assert_eq!(json(&got), json(&expected), "{}", c.body);
        assert_eq!(got.descriptor().full_name(), "testing.v1.Everything");
    }

    fn inner_field() -> FieldDescriptor {
        everything().get_field_by_name("inner").unwrap()
    }

    #[test]
    fn path_variables_win_over_the_body() {
        same(Case {
            rule: BodyRule::All,
            paths: vec![field_path(&["string_field"]), field_path(&["int64_field"])],
            vars: vec!["from-path", "0"],
            query: None,
            body: r#"{"stringField":"from-body","int64Field":"7","tags":["a"]}"#,
        });
    }

    #[test]
    fn nested_path_variable_merges_into_the_body_field() {
        same(Case {
            rule: BodyRule::Field(inner_field()),
            paths: vec![field_path(&["inner", "deeper", "value"])],
            vars: vec!["v"],
            query: Some("tags=x&tags=y&int32Field=-3&labels[k]=v"),
            body: r#"{"name":"n","deeper":{"value":"old","count":"4"},"number":2}"#,
        });
    }

    #[test]
    fn every_scalar_kind_from_the_path() {
        let names = [
            ("int32_field", "-5"),
            ("uint64_field", "18446744073709551615"),
            ("sint64_field", "-9"),
            ("fixed64_field", "12"),
            ("double_field", "1.5"),
            ("float_field", "-2.25"),
            ("bool_field", "true"),
            ("bytes_field", "aGk="),
            ("color", "BLUE"),
            ("timestamp", "2026-11-21T10:00:00Z"),
            ("int64_wrapper", "9"),
        ];
        same(Case {
            rule: BodyRule::None,
            paths: names.iter().map(|(n, _)| field_path(&[n])).collect(),
            vars: names.iter().map(|(_, v)| *v).collect(),
            query: Some("stringField=q"),
            body: "",
        });
    }

    /// The query alone, encoded directly; `None` where it is left to
    /// `request::apply_query`.
    fn direct_query(query: &str) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        encode_query(&everything(), query, &BodyRule::None, &[], &mut out).map(|()| out)
    }

    fn query_case(query: &'static str) -> Case {
        Case {
            rule: BodyRule::None,
            paths: vec![],
            vars: vec![],
            query: Some(query),
            body: "",
        }
    }

    #[test]
    fn common_queries_are_encoded_directly() {
        for query in [
            "int32Field=5&string_field=a%20b+c&boolField=true&color=BLUE&uint64Field=18446744073709551615",
            "sint64Field=-9&doubleField=1.5&floatField=-2.25&bytesField=aGk%3D&fixed64Field=12",
            "timestamp=2026-11-21T10:00:00Z&duration=1.5s&int64Wrapper=9&boolWrapper=false",
            "inner.name=n&inner.deeper.value=v&inner.number=3&&name=",
            // Defaults without presence stay off the wire, as the reference leaves them.
            "int32Field=0&stringField=&color=COLOR_UNSPECIFIED&boolField=false",
        ] {
            assert!(direct_query(query).is_some(), "{query}");
            same(query_case(query));
        }
        assert_eq!(
            direct_query("int32Field=0&stringField=&boolField=false"),
            Some(vec![])
        );
        // Beside a path variable and a body field.
        same(Case {
            rule: BodyRule::Field(inner_field()),
            paths: vec![field_path(&["string_field"])],
            vars: vec!["p"],
            query: Some("int32Field=-3&timestamp=2026-11-21T10:00:00Z"),
            body: r#"{"name":"n"}"#,
        });
    }

    #[test]
    fn other_queries_are_left_to_the_reference() {
        for query in [
            // Lists, maps and oneofs: the reference merges or checks them.
            "tags=a",
            "labels[k]=v",
            "choiceText=t",
            // A default under a parent: the reference keeps the parent.
            "inner.number=0",
            // Errors the reference words.
            "int32Field=1&int32Field=2",
            "nope=1",
            "int32Field=x",
            "stringField=%zz",
            "inner=1",
        ] {
            assert!(direct_query(query).is_none(), "{query}");
        }
        // Still the same message, through the reference, where it takes it.
        for query in [
            "tags=a&tags=b&int32Field=1",
            "labels[k]=v",
            "inner.number=0",
        ] {
            same(query_case(query));
        }
        let mut out = Vec::new();
        let all = encode_query(&everything(), "int32Field=1", &BodyRule::All, &[], &mut out);
        assert!(all.is_none());
        let bound = [vec![1]];
        let clash = encode_query(
            &everything(),
            "int32Field=1",
            &BodyRule::None,
            &bound,
            &mut out,
        );
        assert!(clash.is_none());
    }

    #[test]
    fn declines_what_the_reference_must_word() {
        // A bad path value, a bad body, an unknown query parameter: the
        // reference path answers with the precise 400.
        for c in [
            Case {
                rule: BodyRule::None,
                paths: vec![field_path(&["int32_field"])],
                vars: vec!["x"],
                query: None,
                body: "",
            },
            Case {
                rule: BodyRule::All,
                paths: vec![],
                vars: vec![],
                query: None,
                body: r#"{"int32Field":"#,
            },
            Case {
                rule: BodyRule::Field(inner_field()),
                paths: vec![],
                vars: vec![],
                query: Some("nope=1"),
                body: r#"{"name":"n"}"#,
            },
        ] {
            assert!(reference(&c, &bound(&c)).is_err());
            assert!(direct(&c).is_none());
        }
    }

    #[test]
    fn every_kind_of_method_takes_json_requests_directly() {
        let pool = crate::transcode::test_pool();
        let service = |name: &str| pool.get_service_by_name(name).unwrap();
        let mut planner = Planner::new(decode(), JsonStyle::default());
        let json = Shaping::default();
        let raw = Shaping {
            raw_request: true,
            ..Shaping::default()
        };
        let multipart = Shaping {
            multipart: true,
            ..Shaping::default()
        };
        let (streams, echo) = (service("testing.v1.Streams"), service("testing.v1.Echo"));
        let methods = streams.methods().chain(echo.methods().take(1));
        for m in methods {
            let fast = planner.for_route(&m, &BodyRule::All, &json, None);
            assert!(fast.request && fast.body.is_some(), "{}", m.full_name());
            assert!(fast.reply.is_some(), "{}", m.full_name());
            for shaping in [&raw, &multipart] {
                let fast = planner.for_route(&m, &BodyRule::All, shaping, None);
                assert!(!fast.request, "{}", m.full_name());
            }
            let fast = planner.for_route(&m, &BodyRule::All, &json, Some(&inner_field()));
            assert!(fast.reply.is_none(), "{}", m.full_name());
        }
    }

    #[test]
    fn plans_are_shared_between_routes_of_one_type() {
        let mut planner = Planner::new(decode(), JsonStyle::default());
        let e = everything();
        let a = planner.route(&e, &BodyRule::All, true, &e, true);
        let b = planner.route(&e, &BodyRule::All, true, &e, true);
        assert!(Arc::ptr_eq(
            a.body.as_ref().unwrap(),
            b.body.as_ref().unwrap()
        ));
        assert!(Arc::ptr_eq(
            a.reply.as_ref().unwrap(),
            b.reply.as_ref().unwrap()
        ));
        let none = planner.route(&e, &BodyRule::All, false, &e, false);
        assert!(!none.request && none.reply.is_none());
    }
}
