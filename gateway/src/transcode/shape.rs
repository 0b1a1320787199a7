//! Response shaping from routes.toml, with no backend change: the success
//! status, response headers taken from reply fields or response metadata,
//! raw `google.api.HttpBody` replies; and the per-route transcoding options
//! of streaming, raw and multipart routes, compiled once at load.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Response, StatusCode};
use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor, SerializeOptions,
};
use tonic::metadata::MetadataMap;

use super::framing::Framing;
use super::request::{display_path, is_scalar_like};
use super::{httpbody, BodyRule, FieldPath, TranscodeError};

/// The route's shaping keys as written in routes.toml (durations parsed).
#[derive(Debug, Clone, Default)]
pub struct ShapeConfig {
    pub success_status: Option<u16>,
    /// (header name, template), in file order.
    pub response_headers: Vec<(String, String)>,
    pub stream_framing: Option<String>,
    pub stream_timeout: Option<Duration>,
    pub multipart: bool,
    pub websocket: bool,
}

impl ShapeConfig {
    /// Whether the route sets none of these keys, so that its shaping
    /// follows from its methods and bindings alone.
    pub fn is_empty(&self) -> bool {
        // Taken apart so that a new key cannot be left out here.
        let ShapeConfig {
            success_status,
            response_headers,
            stream_framing,
            stream_timeout,
            multipart,
            websocket,
        } = self;
        success_status.is_none()
            && response_headers.is_empty()
            && stream_framing.is_none()
            && stream_timeout.is_none()
            && !multipart
            && !websocket
    }
}

/// What a route does beyond plain JSON in, JSON out; compiled at load.
#[derive(Debug, Clone)]
pub struct Shaping {
    pub success_status: StatusCode,
    pub response_headers: Vec<HeaderRule>,
    /// Server-streaming framing when `Accept` chooses none.
    pub framing: Framing,
    /// Deadline of a whole streaming call.
    pub stream_timeout: Option<Duration>,
    /// `multipart/form-data` bodies are accepted.
    pub multipart: bool,
    /// The route is served as a WebSocket (`pipeline::websocket`).
    pub websocket: bool,
    /// The request (or its body field) is a google.api.HttpBody: the raw
    /// body and its content type go in.
    pub raw_request: bool,
    /// The reply (or `response_body`) is a google.api.HttpBody: its bytes go out raw.
    pub raw_response: bool,
    /// PATCH with a message body and `update_mask`: the mask is filled from
    /// the body's keys when the client sent none.
    pub update_mask: Option<FieldDescriptor>,
}

impl Shaping {
    /// Whether answering needs the decoded reply, not only its JSON: an
    /// HttpBody reply, or a header taken from a reply field.
    pub fn needs_reply_message(&self) -> bool {
        self.raw_response
            || self
                .response_headers
                .iter()
                .any(|r| r.parts.iter().any(|p| matches!(p, Part::Field(_))))
    }
}

impl Default for Shaping {
    fn default() -> Self {
        Shaping {
            success_status: StatusCode::OK,
            response_headers: Vec::new(),
            framing: Framing::default(),
            stream_timeout: None,
            multipart: false,
            websocket: false,
            raw_request: false,
            raw_response: false,
            update_mask: None,
        }
    }
}

/// One configured response header.
#[derive(Debug, Clone)]
pub struct HeaderRule {
    pub name: HeaderName,
    pub parts: Vec<Part>,
}

#[derive(Debug, Clone)]
pub enum Part {
    Text(String),
    /// A reply field (scalar, enum or a well-known type with a string form).
    Field(FieldPath),
    /// A response metadata entry (initial metadata or trailers).
    Metadata(String),
}

impl HeaderRule {
    /// Whether the rule reads the reply message (streams have none at header time).
    pub fn reads_fields(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Field(_)))
    }
}

/// Headers the gateway writes itself; a rule may not set them.
const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "trailer",
    "te",
];

/// Compiles and checks the shaping of one route; `fail(key, message)`
/// reports each problem under its routes.toml key.
pub fn compile(
    cfg: &ShapeConfig,
    method: &str,
    grpc: &MethodDescriptor,
    body: &BodyRule,
    response_body: Option<&FieldDescriptor>,
    fail: &mut dyn FnMut(&str, String),
) -> Shaping {
    let input = grpc.input();
    let output = grpc.output();
    let client_streaming = grpc.is_client_streaming();
    let server_streaming = grpc.is_server_streaming();
    let mut s = Shaping::default();

    if let Some(code) = cfg.success_status {
        match StatusCode::from_u16(code) {
            Ok(c)
                if c.is_success()
                    && c != StatusCode::RESET_CONTENT
                    && c != StatusCode::PARTIAL_CONTENT =>
            {
                s.success_status = c
            }
            _ => fail(
                "success_status",
                format!("{code} is not a success status; use 200-299 (not 205 or 206)"),
            ),
        }
    }

    s.raw_request = match body {
        BodyRule::All => httpbody::is_http_body(&input),
        BodyRule::Field(f) => httpbody::is_http_body_field(f),
        BodyRule::None => false,
    };
    s.raw_response = match response_body {
        None => httpbody::is_http_body(&output),
        Some(f) => httpbody::is_http_body_field(f),
    };
    let body_field = match body {
        BodyRule::Field(f) => Some(f),
        _ => None,
    };
    s.update_mask = super::fieldmask::mask_field(method, &input, body_field);

    for (name, template) in &cfg.response_headers {
        let key = format!("response_headers.{name}");
        let header = match HeaderName::from_bytes(name.trim().to_ascii_lowercase().as_bytes()) {
            Ok(h) if !RESERVED_HEADERS.contains(&h.as_str()) => h,
            Ok(h) => {
                fail(&key, format!("\"{h}\" is set by the gateway itself"));
                continue;
            }
            Err(_) => {
                fail(&key, format!("\"{name}\" is not a header name"));
                continue;
            }
        };
        match parse_template(template, &output) {
            Ok(parts) => {
                let rule = HeaderRule {
                    name: header,
                    parts,
                };
                if server_streaming && rule.reads_fields() {
                    fail(
                        &key,
                        "a streaming reply has no message when its headers are sent; use {metadata:key} here".into(),
                    );
                    continue;
                }
                s.response_headers.push(rule);
            }
            Err(m) => fail(&key, m),
        }
    }

    if let Some(name) = &cfg.stream_framing {
        match Framing::parse(name) {
            Ok(_) if !server_streaming => fail(
                "stream_framing",
                format!(
                    "{} does not stream its replies; remove stream_framing",
                    grpc.full_name()
                ),
            ),
            Ok(f) => s.framing = f,
            Err(m) => fail("stream_framing", m),
        }
    }
    if cfg.stream_timeout.is_some() && !client_streaming && !server_streaming {
        fail(
            "stream_timeout",
            format!(
                "{} is not a streaming method; use timeout",
                grpc.full_name()
            ),
        );
    }
    s.stream_timeout = cfg.stream_timeout;

    if client_streaming && matches!(body, BodyRule::None) && !cfg.multipart {
        fail(
            "body",
            format!(
                "{} is client-streaming: set body = \"*\" (each line of the request body is one message)",
                grpc.full_name()
            ),
        );
    }
    if cfg.multipart {
        s.multipart = true;
        if !matches!(body, BodyRule::All) {
            fail("multipart", "a multipart route needs body = \"*\": each part fills the request field of its name".into());
        } else if s.raw_request {
            fail(
                "multipart",
                format!(
                    "{} is a google.api.HttpBody, which takes the raw body; remove multipart",
                    input.full_name()
                ),
            );
        } else if !input.fields().any(|f| is_upload_field(&f)) {
            fail(
                "multipart",
                format!(
                    "{} has no bytes or google.api.HttpBody field for an uploaded file",
                    input.full_name()
                ),
            );
        }
        if client_streaming && server_streaming {
            fail("multipart", format!("{} is bidirectional; multipart uploads go to unary or client-streaming methods", grpc.full_name()));
        }
    }
    if cfg.websocket {
        s.websocket = true;
        if method != "GET" {
            fail(
                "websocket",
                format!("a WebSocket is opened with a GET (the upgrade request), not {method}; set method = \"GET\""),
            );
        }
        if !client_streaming {
            fail(
                "websocket",
                format!(
                    "{} does not stream its requests; a WebSocket route serves client- or bidirectional-streaming methods",
                    grpc.full_name()
                ),
            );
        }
        if s.raw_request || s.raw_response || cfg.multipart {
            fail(
                "websocket",
                "each WebSocket frame is one JSON message; raw (google.api.HttpBody) and multipart bodies are not carried".into(),
            );
        }
    }
    s
}

/// A field an uploaded part can fill with its raw bytes.
pub fn is_upload_field(f: &FieldDescriptor) -> bool {
    !f.is_list() && !f.is_map() && (f.kind() == Kind::Bytes || httpbody::is_http_body_field(f))
}

/// `/v1/{name}` or `{metadata:etag}`.
fn parse_template(template: &str, output: &MessageDescriptor) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(Part::Text(rest[..open].to_owned()));
        }
        let Some(close) = rest[open..].find('}') else {
            return Err(format!("\"{template}\": a '{{' is not closed"));
        };
        let inner = rest[open + 1..open + close].trim();
        if let Some(key) = inner.strip_prefix("metadata:") {
            let key = key.trim().to_ascii_lowercase();
            if key.is_empty() || HeaderName::from_bytes(key.as_bytes()).is_err() {
                return Err(format!("\"{template}\": \"{key}\" is not a metadata key"));
            }
            parts.push(Part::Metadata(key));
        } else {
            parts.push(Part::Field(reply_field(output, inner)?));
        }
        rest = &rest[open + close + 1..];
    }
    if rest.contains('}') {
        return Err(format!("\"{template}\": a '}}' has no '{{'"));
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_owned()));
    }
    for p in &parts {
        if let Part::Text(t) = p {
            if HeaderValue::from_str(t).is_err() {
                return Err(format!(
                    "\"{template}\" has characters a header value cannot hold"
                ));
            }
        }
    }
    Ok(parts)
}

fn reply_field(output: &MessageDescriptor, path: &str) -> Result<FieldPath, String> {
    let mut desc = output.clone();
    let mut out = Vec::new();
    let names: Vec<&str> = path.split('.').collect();
    for (i, name) in names.iter().enumerate() {
        let Some(f) = desc
            .get_field_by_name(name)
            .or_else(|| desc.get_field_by_json_name(name))
        else {
            let fields: Vec<String> = desc.fields().map(|f| f.name().to_owned()).collect();
            return Err(format!(
                "{{{path}}}: {} has no field \"{name}\" (fields: {})",
                desc.full_name(),
                fields.join(", ")
            ));
        };
        let last = i + 1 == names.len();
        if f.is_list() || f.is_map() {
            return Err(format!(
                "{{{path}}}: \"{name}\" is repeated; a header holds one value"
            ));
        }
        match f.kind() {
            Kind::Message(m) if !last => desc = m,
            Kind::Message(m) if !is_scalar_like(&m) => {
                return Err(format!(
                    "{{{path}}}: \"{name}\" is a message ({}); name a field inside it",
                    m.full_name()
                ))
            }
            _ if !last => return Err(format!("{{{path}}}: \"{name}\" is not a message")),
            _ => {}
        }
        out.push(f);
    }
    Ok(out)
}

/// The reply body: raw bytes for an HttpBody reply, JSON otherwise.
pub fn render_reply(
    msg: &DynamicMessage,
    response_body: Option<&FieldDescriptor>,
    opts: &SerializeOptions,
) -> Result<Bytes, TranscodeError> {
    if let Some(raw) = httpbody::reply_body(msg, response_body) {
        return Ok(raw.data);
    }
    super::encode_reply(msg, response_body, opts).map(Bytes::from)
}

/// Applies a unary route's shaping to its successful answer: the status,
/// the configured headers and, for HttpBody replies, their content type.
///
/// `msg` may be `None` only when [`Shaping::needs_reply_message`] is false.
pub fn finish<B: Default>(
    shaping: &Shaping,
    response_body: Option<&FieldDescriptor>,
    msg: Option<&DynamicMessage>,
    metadata: &MetadataMap,
    resp: &mut Response<B>,
) {
    if let (true, Some(msg)) = (shaping.raw_response, msg) {
        if let Some(raw) = httpbody::reply_body(msg, response_body) {
            let ct = HeaderValue::from_str(&raw.content_type)
                .ok()
                .filter(|_| !raw.content_type.is_empty())
                .unwrap_or(HeaderValue::from_static(httpbody::DEFAULT_CONTENT_TYPE));
            resp.headers_mut().insert(header::CONTENT_TYPE, ct);
        }
    }
    apply_headers(&shaping.response_headers, msg, metadata, resp.headers_mut());
    set_status(shaping.success_status, resp);
}

/// Sets the success status; 204 answers carry no body.
pub fn set_status<B: Default>(status: StatusCode, resp: &mut Response<B>) {
    *resp.status_mut() = status;
    if status == StatusCode::NO_CONTENT {
        *resp.body_mut() = B::default();
        resp.headers_mut().remove(header::CONTENT_TYPE);
    }
}

/// Writes each rule whose sources all have a value.
pub fn apply_headers(
    rules: &[HeaderRule],
    msg: Option<&DynamicMessage>,
    metadata: &MetadataMap,
    out: &mut http::HeaderMap,
) {
    'rules: for rule in rules {
        let mut value = String::new();
        for part in &rule.parts {
            match part {
                Part::Text(t) => value.push_str(t),
                Part::Metadata(key) => {
                    match metadata.get(key.as_str()).and_then(|v| v.to_str().ok()) {
                        Some(v) if !v.is_empty() => value.push_str(v),
                        _ => continue 'rules,
                    }
                }
                Part::Field(path) => match msg.and_then(|m| field_text(m, path)) {
                    Some(v) if !v.is_empty() => value.push_str(&v),
                    _ => continue 'rules,
                },
            }
        }
        match HeaderValue::from_str(&value) {
            Ok(v) => {
                out.insert(rule.name.clone(), v);
            }
            Err(_) => tracing::debug!(
                header = %rule.name,
                "response header left out: its value has characters a header cannot hold"
            ),
        }
    }
}

/// A reply field as header text; None when it is not set.
fn field_text(msg: &DynamicMessage, path: &[FieldDescriptor]) -> Option<String> {
    let (leaf, parents) = path.split_last()?;
    let mut cur = msg.clone();
    for f in parents {
        if !cur.has_field(f) {
            return None;
        }
        cur = cur.get_field(f).as_message()?.clone();
    }
    if !cur.has_field(leaf) {
        return None;
    }
    let value = cur.get_field(leaf);
    use prost_reflect::Value as V;
    Some(match value.as_ref() {
        V::String(s) => s.clone(),
        V::Bool(b) => b.to_string(),
        V::I32(n) => n.to_string(),
        V::I64(n) => n.to_string(),
        V::U32(n) => n.to_string(),
        V::U64(n) => n.to_string(),
        V::F32(n) => n.to_string(),
        V::F64(n) => n.to_string(),
        V::EnumNumber(n) => match leaf.kind() {
            Kind::Enum(e) => e
                .get_value(*n)
                .map(|v| v.name().to_owned())
                .unwrap_or_else(|| n.to_string()),
            _ => n.to_string(),
        },
        V::Bytes(b) => {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(b)
        }
        V::Message(m) => match serde_json::to_value(m).ok()? {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        },
        _ => return None,
    })
}

/// For error messages: `a.b.c`.
pub fn path_name(path: &[FieldDescriptor]) -> String {
    display_path(path)
}
