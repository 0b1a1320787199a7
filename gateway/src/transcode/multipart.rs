//! `multipart/form-data` uploads (opt-in per route: a browser may send this
//! type cross-site without a CORS preflight). Each part fills the request
//! field of its name: `bytes` and `google.api.HttpBody` fields take the raw
//! part (an HttpBody also its content type), other fields parse the part's
//! text as a path or query value would be parsed (message fields as JSON).
//!
//! On a client-streaming method the upload is streamed instead: each chunk
//! of a file part goes out as one message with that field set, and text
//! parts go on the next message sent (or a final one).

use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, StatusCode};
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, Value};
use tonic::Code;

use super::stream::Builder;
use super::{httpbody, request, shape, RpcStatus};

pub fn is_multipart(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("multipart/form-data"))
}

fn bad(message: impl Into<String>) -> RpcStatus {
    RpcStatus::new(StatusCode::BAD_REQUEST, Code::InvalidArgument, message)
}

fn multer_error(e: multer::Error) -> RpcStatus {
    match e {
        multer::Error::StreamSizeExceeded { limit }
        | multer::Error::FieldSizeExceeded { limit, .. } => RpcStatus::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            Code::InvalidArgument,
            format!("request body is larger than the limit of {limit} bytes"),
        ),
        other => bad(format!("malformed multipart body: {other}")),
    }
}

fn open(
    headers: &HeaderMap,
    body: axum::body::Body,
    limit: Option<u64>,
) -> Result<multer::Multipart<'static>, RpcStatus> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let boundary = multer::parse_boundary(ct).map_err(|e| {
        bad(format!(
            "multipart/form-data without a usable boundary: {e}"
        ))
    })?;
    let mut size = multer::SizeLimit::new();
    if let Some(l) = limit {
        size = size.whole_stream(l);
    }
    Ok(multer::Multipart::with_constraints(
        body.into_data_stream(),
        boundary,
        multer::Constraints::new().size_limit(size),
    ))
}

/// The request field a part fills; None for a part to skip.
fn part_field(builder: &Builder, name: Option<&str>) -> Result<Option<FieldDescriptor>, RpcStatus> {
    let input = &builder.route.input;
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        return Err(bad(
            "a multipart part has no name; name each part after a request field",
        ));
    };
    match input
        .get_field_by_name(name)
        .or_else(|| input.get_field_by_json_name(name))
    {
        Some(f) => Ok(Some(f)),
        None if builder.opts.reject_unknown => Err(bad(format!(
            "multipart part \"{name}\": {} has no such field",
            input.full_name()
        ))),
        None => Ok(None),
    }
}

/// Sets (or appends, for repeated fields) a file part's bytes.
fn set_upload(msg: &mut DynamicMessage, field: &FieldDescriptor, content_type: &str, data: Bytes) {
    let value = match field.kind() {
        Kind::Message(m) => Value::Message(httpbody::message(
            &m,
            if content_type.is_empty() {
                httpbody::DEFAULT_CONTENT_TYPE
            } else {
                content_type
            },
            data,
        )),
        _ => Value::Bytes(data),
    };
    if field.is_list() {
        if let Some(list) = msg.get_field_mut(field).as_list_mut() {
            list.push(value);
        }
    } else {
        msg.set_field(field, value);
    }
}

/// Sets a text part on its field.
fn set_text(
    msg: &mut DynamicMessage,
    field: &FieldDescriptor,
    data: &[u8],
    opts: super::DecodeOptions,
) -> Result<(), RpcStatus> {
    let name = field.name();
    let value = match field.kind() {
        Kind::Bytes => Value::Bytes(Bytes::copy_from_slice(data)),
        Kind::Message(m) if httpbody::is_http_body(&m) => Value::Message(httpbody::message(
            &m,
            "text/plain",
            Bytes::copy_from_slice(data),
        )),
        Kind::Message(m) if !request::is_scalar_like(&m) => {
            let de =
                prost_reflect::DeserializeOptions::new().deny_unknown_fields(opts.reject_unknown);
            let mut json = serde_json::Deserializer::from_slice(data);
            let m = DynamicMessage::deserialize_with_options(m, &mut json, &de)
                .map_err(|e| bad(format!("multipart part \"{name}\": invalid JSON: {e}")))?;
            Value::Message(m)
        }
        _ => {
            let text = std::str::from_utf8(data)
                .map_err(|_| bad(format!("multipart part \"{name}\" is not UTF-8 text")))?;
            request::parse_value(field, text)
                .map_err(|e| bad(format!("multipart part \"{name}\": {e}")))?
        }
    };
    if field.is_map() {
        return Err(bad(format!(
            "multipart part \"{name}\": map fields cannot be set from a part"
        )));
    }
    if field.is_list() {
        if let Some(list) = msg.get_field_mut(field).as_list_mut() {
            list.push(value);
        }
    } else {
        msg.set_field(field, value);
    }
    Ok(())
}

fn part_type(field: &multer::Field<'_>) -> String {
    field
        .content_type()
        .map(|m| m.to_string())
        .unwrap_or_default()
}

/// A whole multipart body (up to `limit` bytes) as one request message.
pub async fn message(
    builder: &Builder,
    headers: &HeaderMap,
    body: axum::body::Body,
    limit: usize,
) -> Result<DynamicMessage, RpcStatus> {
    let mut mp = open(headers, body, Some(limit as u64))?;
    let mut msg = DynamicMessage::new(builder.route.input.clone());
    while let Some(field) = mp.next_field().await.map_err(multer_error)? {
        let Some(fd) = part_field(builder, field.name())? else {
            continue;
        };
        let ct = part_type(&field);
        let data = field.bytes().await.map_err(multer_error)?;
        if shape::is_upload_field(&fd) || (fd.is_list() && fd.kind() == Kind::Bytes) {
            set_upload(&mut msg, &fd, &ct, data);
        } else {
            set_text(&mut msg, &fd, &data, builder.opts)?;
        }
    }
    // Path variables win over the parts, as over a JSON body.
    builder
        .path_and_query(&mut msg)
        .map_err(|e| bad(e.message))?;
    Ok(msg)
}

/// A multipart body as a stream of messages for a client-streaming method.
pub struct PartStream {
    mp: multer::Multipart<'static>,
    builder: Builder,
    /// The file part being streamed: its field and content type.
    current: Option<(multer::Field<'static>, FieldDescriptor, String)>,
    /// Path and query fields, set on every message.
    base: DynamicMessage,
    /// Text parts waiting for the next message.
    pending: Option<DynamicMessage>,
    /// Text parts are read whole; this bounds each.
    text_limit: usize,
}

impl PartStream {
    pub fn new(
        builder: &Builder,
        headers: &HeaderMap,
        body: axum::body::Body,
    ) -> Result<PartStream, RpcStatus> {
        let mut base = DynamicMessage::new(builder.route.input.clone());
        builder
            .path_and_query(&mut base)
            .map_err(|e| bad(e.message))?;
        Ok(PartStream {
            mp: open(headers, body, None)?,
            builder: builder.clone(),
            current: None,
            base,
            pending: None,
            text_limit: super::stream::RAW_CHUNK_BYTES,
        })
    }

    pub async fn next_message(&mut self) -> Result<Option<DynamicMessage>, RpcStatus> {
        loop {
            if let Some((field, fd, ct)) = &mut self.current {
                match field.chunk().await.map_err(multer_error)? {
                    Some(chunk) if chunk.is_empty() => continue,
                    Some(chunk) => {
                        let mut msg = self.pending.take().unwrap_or_else(|| self.base.clone());
                        set_upload(&mut msg, fd, ct, chunk);
                        return Ok(Some(msg));
                    }
                    None => {
                        self.current = None;
                        continue;
                    }
                }
            }
            let Some(mut field) = self.mp.next_field().await.map_err(multer_error)? else {
                return Ok(self.pending.take());
            };
            let Some(fd) = part_field(&self.builder, field.name())? else {
                continue;
            };
            if shape::is_upload_field(&fd) {
                let ct = part_type(&field);
                self.current = Some((field, fd, ct));
                continue;
            }
            let mut text = BytesMut::new();
            while let Some(chunk) = field.chunk().await.map_err(multer_error)? {
                text.extend_from_slice(&chunk);
                if text.len() > self.text_limit {
                    return Err(RpcStatus::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        Code::InvalidArgument,
                        format!(
                            "multipart part \"{}\" is larger than {} bytes; only file parts (bytes or HttpBody fields) are streamed",
                            fd.name(),
                            self.text_limit
                        ),
                    ));
                }
            }
            let msg = self.pending.get_or_insert_with(|| self.base.clone());
            set_text(msg, &fd, &text, self.builder.opts)?;
        }
    }
}
