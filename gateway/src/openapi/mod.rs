//! An OpenAPI 3.1 document generated from the descriptors and the live
//! route table, so third-party developers can read the API and generate
//! clients. It is built from a snapshot, so it follows the routes on every
//! reload; it is rendered once per snapshot, when first asked for.
//!
//! Served on the REST listener (not the admin one) when `[openapi] path`
//! is set: the people who need it are the API's clients, and the admin
//! listener is loopback-only by default. `gateway openapi` prints it.

mod paths;
mod rules;
mod schema;
pub mod settings;

pub use settings::Settings;

use std::collections::BTreeMap;

use axum::body::Body;
use bytes::Bytes;
use http::request::Parts;
use http::{header, HeaderValue, Method, Response, StatusCode};
use prost_reflect::{Kind, MessageDescriptor};
use serde_json::{json, Map, Value};

use crate::edge::jwt::AuthMode;
use crate::routing::Segment;
use crate::snapshot::{Route, Snapshot};
use crate::transcode::framing::Framing;
use crate::transcode::request::is_scalar_like;
use crate::transcode::{httpbody, shape, BodyRule};
use schema::{with_description, Schemas};

/// Query parameters are listed through nested messages down to this depth
/// (grpc-gateway flattens the same way); deeper fields still work, they are
/// just not listed, which keeps recursive messages finite.
const MAX_QUERY_DEPTH: usize = 4;

/// The document as JSON bytes, rendered once per snapshot.
pub fn rendered(snap: &Snapshot) -> Bytes {
    snap.openapi
        .rendered
        .get_or_init(|| {
            Bytes::from(serde_json::to_vec(&document(snap)).expect("JSON values always serialise"))
        })
        .clone()
}

/// Answers the document and the documentation page; None for any other request.
pub fn serve(snap: &Snapshot, parts: &Parts) -> Option<Response<Body>> {
    if parts.method != Method::GET && parts.method != Method::HEAD {
        return None;
    }
    let path = parts.uri.path();
    let s = &snap.openapi;
    let (body, content_type) = if s.path.as_deref() == Some(path) {
        (rendered(snap), "application/json")
    } else if s.docs_path.as_deref() == Some(path) {
        let page = DOCS_PAGE
            .replace("{{TITLE}}", &html_escape(&s.title))
            .replace("{{SPEC}}", &html_escape(s.path.as_deref().unwrap_or("")));
        (Bytes::from(page), "text/html; charset=utf-8")
    } else {
        return None;
    };
    // HEAD too: the pipeline's HEAD stage drops the body and keeps its length.
    let mut resp = Response::new(Body::from(body));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if content_type.starts_with("text/html") {
        // The page is self-contained: its own script and style, and fetches
        // only from this origin.
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'",
            ),
        );
    }
    Some(resp)
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const DOCS_PAGE: &str = include_str!("docs.html");

/// The security scheme of JWT routes.
const BEARER: &str = "bearerAuth";

/// The whole document.
pub fn document(snap: &Snapshot) -> Value {
    let settings = &snap.openapi;
    let mut schemas = Schemas::new(
        settings.proto_field_names,
        snap.transcode.decode.reject_unknown,
    );
    let mut paths_out: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let mut op_ids: BTreeMap<String, usize> = BTreeMap::new();
    let mut tags: BTreeMap<String, Option<String>> = BTreeMap::new();

    // Methods exposed to gRPC-Web and Connect clients are not REST
    // operations (their requests and errors are those protocols' own); the
    // document lists them under `x-grpc-protocols` instead. OpenAPI has no
    // words for a WebSocket (docs/streaming.md documents them).
    let rest: Vec<std::sync::Arc<crate::snapshot::Route>> = snap
        .routes
        .iter()
        .filter(|r| !r.rpc.any() && !r.plan.shaping.websocket)
        .cloned()
        .collect();
    for group in paths::group(&rest) {
        let path = group.layout.path();
        let item = paths_out.entry(path).or_default();
        for route in &group.routes {
            let service = route.plan.grpc_method.parent_service();
            let service_doc = schemas
                .comments()
                .of(&service.parent_file(), service.path());
            tags.entry(service.full_name().to_owned())
                .or_insert(service_doc);
            let path_params = path_params(&group.layout, route, &mut schemas);
            let base_id = format!("{}_{}", service.name(), route.plan.grpc_method.name());
            let n = op_ids.entry(base_id.clone()).or_insert(0);
            *n += 1;
            let op_id = if *n == 1 {
                base_id
            } else {
                format!("{base_id}_{n}")
            };
            let op = operation(route, op_id, path_params, &mut schemas);
            item.insert(operation_key(&route.method), op);
        }
    }

    // The error body every failure uses, and its RFC 9457 alternative.
    let status_schema = match snap.pool.get_message_by_name("google.rpc.Status") {
        Some(m) => {
            let s = schemas.message_schema(&m, &[]);
            with_description(
                s,
                "The error body of every failure (google.rpc.Status): `code` is the gRPC code, `details` typed google.protobuf.Any values.".into(),
            )
        }
        None => json!({"type": "object", "properties": {
            "code": {"type": "integer", "format": "int32"},
            "message": {"type": "string"},
            "details": {"type": "array", "items": {"type": "object"}}}}),
    };
    schemas
        .components
        .insert("google.rpc.Status".into(), status_schema);
    schemas.components.insert(
        "Problem".into(),
        json!({
            "type": "object",
            "description": "RFC 9457 problem details, sent instead of google.rpc.Status when the client accepts application/problem+json.",
            "properties": {
                "type": {"type": "string"},
                "title": {"type": "string"},
                "status": {"type": "integer"},
                "detail": {"type": "string"},
                "code": {"type": "integer", "description": "The gRPC status code"},
                "details": {"type": "array", "items": {"type": "object"}}
            },
            "required": ["type", "title", "status"]
        }),
    );

    let mut info = json!({ "title": settings.title, "version": settings.version });
    if let Some(d) = &settings.description {
        info["description"] = Value::String(d.clone());
    }
    let tags: Vec<Value> = tags
        .into_iter()
        .map(|(name, doc)| match doc {
            Some(d) => json!({"name": name, "description": d}),
            None => json!({"name": name}),
        })
        .collect();
    let mut components = json!({ "schemas": schemas.components });
    let uses_auth = snap
        .routes
        .iter()
        .any(|r| r.edge.auth.mode != AuthMode::None);
    if uses_auth {
        components["securitySchemes"] = json!({
            BEARER: {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": "A JWT from one of the configured issuers, in `Authorization: Bearer <token>`."
            }
        });
    }
    components["responses"] = json!({
        "Error": {
            "description": "An error: google.rpc.Status, or problem+json when asked for.",
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/google.rpc.Status"}},
                "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
            }
        }
    });
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": info,
        "tags": tags,
        "paths": paths_out,
        "components": components,
    });
    let rpc: Vec<Value> = snap
        .routes
        .iter()
        .filter(|r| r.rpc.any() && r.method == "POST")
        .map(|r| {
            let get = snap.matcher.allowed_methods(&r.label).contains(&"GET");
            json!({
                "method": &*r.grpc_label,
                "path": &*r.label,
                "protocols": r.rpc.names(),
                "connect_get": get,
            })
        })
        .collect();
    if !rpc.is_empty() {
        doc["x-grpc-protocols"] = Value::Array(rpc);
    }
    doc
}

/// The key of an operation in its path item. Custom HTTP methods have no
/// slot there; they become `x-method-<name>` so the document still lists
/// every method the `Allow` header of a 405 names.
fn operation_key(method: &str) -> String {
    let m = method.to_ascii_lowercase();
    if matches!(
        m.as_str(),
        "get" | "put" | "post" | "delete" | "options" | "head" | "patch" | "trace"
    ) {
        m
    } else {
        format!("x-method-{m}")
    }
}

/// The path parameters of `route` under its shape's layout (see
/// [`paths`]): every operation of a path item has the same names. A
/// variable that spans several segments keeps its pattern in the
/// parameter's schema, as grpc-gateway's generator does.
fn path_params(layout: &paths::Layout, route: &Route, schemas: &mut Schemas) -> Vec<Value> {
    let t = &route.template;
    layout
        .slots
        .iter()
        .map(|slot| {
            let segs = &t.segments[slot.start..slot.end];
            let (schema, description) = match paths::binding(route, slot) {
                paths::Binding::Field(vi) => {
                    let field = route.plan.path_fields.get(vi).and_then(|p| p.last());
                    let mut description = field
                        .and_then(|f| schemas.comments().of_field(f))
                        .unwrap_or_default();
                    let mut note = |text: String| {
                        if !description.is_empty() {
                            description.push_str("\n\n");
                        }
                        description.push_str(&text);
                    };
                    let var = t.variables[vi].name();
                    if var != slot.name {
                        note(format!("Sets the field `{var}`."));
                    }
                    let schema = if matches!(segs, [Segment::Single]) {
                        match field {
                            Some(f) => schemas.field(f),
                            None => json!({"type": "string"}),
                        }
                    } else {
                        note(format!(
                            "Spans path segments: `{}` (its slashes are sent unescaped).",
                            segments_text(segs)
                        ));
                        json!({"type": "string", "pattern": segments_pattern(segs)})
                    };
                    (schema, description)
                }
                paths::Binding::Part(vi) => (
                    json!({"type": "string", "pattern": segments_pattern(segs)}),
                    format!(
                        "Part of the field `{}`, which is set to `{}`.",
                        t.variables[vi].name(),
                        layout.spelled(t, vi)
                    ),
                ),
                paths::Binding::Unbound => (
                    json!({"type": "string"}),
                    if matches!(segs, [Segment::Multi]) {
                        "Any path segments (not bound to a field)".to_owned()
                    } else {
                        "Any one path segment (not bound to a field)".to_owned()
                    },
                ),
            };
            let mut p =
                json!({"name": slot.name, "in": "path", "required": true, "schema": schema});
            if !description.is_empty() {
                p["description"] = Value::String(description);
            }
            p
        })
        .collect()
}

fn segments_text(segs: &[Segment]) -> String {
    segs.iter()
        .map(|s| match s {
            Segment::Literal(l) => l.clone(),
            Segment::Single => "*".into(),
            Segment::Multi => "**".into(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn segments_pattern(segs: &[Segment]) -> String {
    let parts: Vec<String> = segs
        .iter()
        .map(|s| match s {
            Segment::Literal(l) => regex_escape(l),
            Segment::Single => "[^/]+".into(),
            Segment::Multi => ".*".into(),
        })
        .collect();
    format!("^{}$", parts.join("/"))
}

fn regex_escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn operation(route: &Route, op_id: String, mut params: Vec<Value>, schemas: &mut Schemas) -> Value {
    let m = &route.plan.grpc_method;
    let mut op = Map::new();
    op.insert("operationId".into(), Value::String(op_id));
    op.insert("tags".into(), json!([m.parent_service().full_name()]));
    if let Some(doc) = schemas.comments().of(&m.parent_file(), m.path()) {
        let summary = doc.split("\n\n").next().unwrap_or(&doc).replace('\n', " ");
        op.insert("summary".into(), Value::String(summary));
        op.insert("description".into(), Value::String(doc));
    }
    let client_streaming = m.is_client_streaming();
    let server_streaming = m.is_server_streaming();

    // Query parameters: fields the path and body do not bind.
    if !matches!(route.plan.body, BodyRule::All) && !client_streaming {
        let mut prefix = Vec::new();
        query_params(
            &route.plan.input,
            &route.plan.bound,
            &mut prefix,
            "",
            0,
            schemas,
            &mut params,
        );
    }
    if !params.is_empty() {
        op.insert("parameters".into(), Value::Array(params));
    }

    if let Some(body) = request_body(route, schemas) {
        op.insert("requestBody".into(), body);
    }

    let mut responses = Map::new();
    let status = route.plan.shaping.success_status;
    let mut ok = json!({ "description": status.canonical_reason().unwrap_or("Success") });
    if status != StatusCode::NO_CONTENT {
        ok["content"] = reply_content(route, server_streaming, schemas);
    }
    if !route.plan.shaping.response_headers.is_empty() {
        let mut headers = Map::new();
        for rule in &route.plan.shaping.response_headers {
            let from: Vec<String> = rule
                .parts
                .iter()
                .map(|p| match p {
                    shape::Part::Text(t) => format!("\"{t}\""),
                    shape::Part::Field(f) => format!("reply field `{}`", shape::path_name(f)),
                    shape::Part::Metadata(k) => format!("response metadata `{k}`"),
                })
                .collect();
            headers.insert(
                canonical_header(rule.name.as_str()),
                json!({"schema": {"type": "string"}, "description": format!("From {}", from.join(" + "))}),
            );
        }
        ok["headers"] = Value::Object(headers);
    }
    responses.insert(status.as_u16().to_string(), ok);
    responses.insert(
        "default".into(),
        json!({"$ref": "#/components/responses/Error"}),
    );
    op.insert("responses".into(), Value::Object(responses));
    // JWT routes: required, or optional (anonymous allowed).
    let auth = &route.edge.auth;
    match auth.mode {
        AuthMode::None => {}
        AuthMode::Required => {
            op.insert("security".into(), json!([{ BEARER: auth.scopes }]));
        }
        AuthMode::Optional => {
            op.insert("security".into(), json!([{ BEARER: auth.scopes }, {}]));
        }
    }
    op.insert(
        "x-grpc-method".into(),
        Value::String(format!("{}/{}", m.parent_service().full_name(), m.name())),
    );
    if client_streaming || server_streaming {
        op.insert(
            "x-grpc-streaming".into(),
            Value::String(
                match (client_streaming, server_streaming) {
                    (true, true) => "bidirectional",
                    (true, false) => "client",
                    _ => "server",
                }
                .into(),
            ),
        );
    }
    Value::Object(op)
}

fn canonical_header(name: &str) -> String {
    name.split('-')
        .map(|p| {
            let mut c = p.chars();
            match c.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// Every field the path and body leave free, flattened through nested
/// messages as `a.b.c` (how the query names them).
fn query_params(
    desc: &MessageDescriptor,
    bound: &[Vec<u32>],
    prefix: &mut Vec<u32>,
    prefix_name: &str,
    depth: usize,
    schemas: &mut Schemas,
    out: &mut Vec<Value>,
) {
    for f in desc.fields() {
        prefix.push(f.number());
        // At or below a field the path or body binds: not for the query.
        // Above one (a message holding a path variable): its other fields are.
        let taken = bound.iter().any(|b| prefix.starts_with(b));
        let holds_bound = bound
            .iter()
            .any(|b| b.len() > prefix.len() && b.starts_with(prefix));
        if !taken && !f.is_map() {
            let name = if prefix_name.is_empty() {
                schemas.name_of(&f)
            } else {
                format!("{prefix_name}.{}", schemas.name_of(&f))
            };
            match f.kind() {
                Kind::Message(m) if !is_scalar_like(&m) => {
                    // Struct, Value, Any and the like have no query form.
                    let opaque =
                        m.full_name().starts_with("google.protobuf.") || httpbody::is_http_body(&m);
                    if !f.is_list() && depth + 1 < MAX_QUERY_DEPTH && !opaque {
                        query_params(&m, bound, prefix, &name, depth + 1, schemas, out);
                    }
                }
                _ if holds_bound => {}
                _ => {
                    // A required field nested in an optional message is
                    // required only when that message is sent.
                    let (schema, required) = schemas.field_and_required(&f);
                    let mut p = json!({
                        "name": name,
                        "in": "query",
                        "required": required && depth == 0,
                        "schema": schema,
                    });
                    if f.is_list() {
                        p["explode"] = Value::Bool(true);
                    }
                    if let Some(doc) = schemas.comments().of_field(&f) {
                        p["description"] = Value::String(doc);
                    }
                    out.push(p);
                }
            }
        }
        prefix.pop();
    }
}

fn request_body(route: &Route, schemas: &mut Schemas) -> Option<Value> {
    let m = &route.plan.grpc_method;
    let mut content = Map::new();
    let mut description: Option<&str> = None;
    if route.plan.shaping.raw_request {
        content.insert("*/*".into(), json!({"schema": {"description": "The raw request body; its content type is passed on"}}));
        if m.is_client_streaming() {
            description = Some("Streamed to the backend in chunks as it arrives.");
        }
    } else {
        let schema = match &route.plan.body {
            BodyRule::None => None,
            BodyRule::All => {
                // Fields bound by the path are not read from the body.
                let skip: Vec<u32> = route
                    .plan
                    .path_fields
                    .iter()
                    .filter(|p| p.len() == 1)
                    .map(|p| p[0].number())
                    .collect();
                if skip.is_empty() {
                    Some(schemas.message(&route.plan.input))
                } else {
                    Some(schemas.message_schema(&route.plan.input, &skip))
                }
            }
            BodyRule::Field(f) => Some(schemas.field(f)),
        };
        if let Some(schema) = schema {
            if m.is_client_streaming() {
                content.insert("application/x-ndjson".into(), json!({"schema": schema}));
                description = Some("Newline-delimited JSON: each line is one request message, sent on as it arrives.");
            } else {
                content.insert("application/json".into(), json!({"schema": schema}));
            }
        }
    }
    if route.plan.shaping.multipart {
        let mut props = Map::new();
        for f in route.plan.input.fields() {
            let s = if shape::is_upload_field(&f) || (f.is_list() && f.kind() == Kind::Bytes) {
                json!({"type": "string", "contentMediaType": "application/octet-stream"})
            } else {
                schemas.field(&f)
            };
            props.insert(f.name().to_owned(), s);
        }
        content.insert(
            "multipart/form-data".into(),
            json!({"schema": {"type": "object", "properties": props}}),
        );
    }
    if content.is_empty() {
        return None;
    }
    let mut body = json!({ "content": content });
    if let Some(d) = description {
        body["description"] = Value::String(d.into());
    }
    Some(body)
}

fn reply_content(route: &Route, server_streaming: bool, schemas: &mut Schemas) -> Value {
    if route.plan.shaping.raw_response {
        return json!({"*/*": {"schema": {"description": "Raw bytes, with the content type the backend names"}}});
    }
    let item = match &route.plan.response_body {
        None => schemas.message(&route.plan.output),
        Some(f) => schemas.field(f),
    };
    if !server_streaming {
        return json!({"application/json": {"schema": item}});
    }
    let mut content = json!({
        Framing::Ndjson.content_type(): {
            "schema": {
                "type": "object",
                "description": "One object per line: {\"result\": message}, or a last {\"error\": google.rpc.Status} if the stream fails.",
                "properties": {
                    "result": item.clone(),
                    "error": {"$ref": "#/components/schemas/google.rpc.Status"}
                }
            }
        },
        Framing::Sse.content_type(): {
            "schema": {
                "type": "string",
                "description": "Server-Sent Events: one `data:` event per message (JSON), an `error` event with a google.rpc.Status if the stream fails."
            }
        }
    });
    if route.plan.shaping.framing == Framing::JsonArray {
        content["application/json"] = json!({"schema": {"type": "array", "items": item, "description": "All messages in one array, streamed as they arrive."}});
    }
    content
}
