//! `google.api.HttpBody`: a message that stands for raw HTTP bytes and their
//! content type. As a reply (or `response_body` field) its bytes go out as
//! they are; as a request (`body: "*"` on an HttpBody, or a body field of that
//! type) the raw request body and its content type go in.
//!
//! It is not a well-known type, so prost-reflect's JSON mapping would render
//! it as `{"contentType", "data": base64}`; every use is special-cased here.

use bytes::Bytes;
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, Value};

pub const HTTP_BODY: &str = "google.api.HttpBody";

/// When a reply names no content type, what grpc-gateway answers.
pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

pub fn is_http_body(desc: &MessageDescriptor) -> bool {
    desc.full_name() == HTTP_BODY
}

/// Whether `field` holds one HttpBody (not a list or map of them).
pub fn is_http_body_field(field: &FieldDescriptor) -> bool {
    matches!(field.kind(), Kind::Message(m) if is_http_body(&m))
        && !field.is_list()
        && !field.is_map()
}

/// The HttpBody a reply carries: the reply itself, or its `response_body`
/// field; None when the reply is ordinary JSON.
pub fn reply_body(
    msg: &DynamicMessage,
    response_body: Option<&FieldDescriptor>,
) -> Option<HttpBodyParts> {
    use prost_reflect::ReflectMessage as _;
    match response_body {
        None if is_http_body(&msg.descriptor()) => Some(parts(msg)),
        Some(f) if is_http_body_field(f) => {
            let value = msg.get_field(f);
            value.as_message().map(parts)
        }
        _ => None,
    }
}

/// The two fields that matter on the wire.
#[derive(Debug, Clone)]
pub struct HttpBodyParts {
    /// Empty when the backend named none.
    pub content_type: String,
    pub data: Bytes,
}

fn parts(msg: &DynamicMessage) -> HttpBodyParts {
    let content_type = msg
        .get_field_by_name("content_type")
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let data = msg
        .get_field_by_name("data")
        .and_then(|v| v.as_bytes().cloned())
        .unwrap_or_default();
    HttpBodyParts { content_type, data }
}

/// A new HttpBody message of `desc` (the pool's own google.api.HttpBody).
pub fn message(desc: &MessageDescriptor, content_type: &str, data: Bytes) -> DynamicMessage {
    let mut msg = DynamicMessage::new(desc.clone());
    if !content_type.is_empty() {
        msg.set_field_by_name("content_type", Value::String(content_type.to_owned()));
    }
    msg.set_field_by_name("data", Value::Bytes(data));
    msg
}

/// Puts the raw body into the request: as the whole message (`body: "*"` on
/// an HttpBody request) or into the HttpBody body field.
pub fn fill_request(
    input: &MessageDescriptor,
    target: Option<&FieldDescriptor>,
    content_type: &str,
    data: Bytes,
) -> DynamicMessage {
    match target {
        None => message(input, content_type, data),
        Some(field) => {
            let Kind::Message(body_desc) = field.kind() else {
                unreachable!("checked at load: the body field is an HttpBody")
            };
            let mut msg = DynamicMessage::new(input.clone());
            msg.set_field(
                field,
                Value::Message(message(&body_desc, content_type, data)),
            );
            msg
        }
    }
}
