//! Reply message -> JSON bytes, and a unary reply -> the HTTP answer.

use axum::body::Body;
use http::{header, HeaderValue, Response};
use prost_reflect::ReflectMessage;
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, SerializeOptions};
use tonic::metadata::MetadataMap;

use super::{metadata, shape, Plan, Settings, TranscodeError};

/// A unary call's successful reply, from its wire bytes to the HTTP answer:
/// the JSON body (or an HttpBody's raw bytes), the reply metadata as
/// headers, and the route's shaping (status, headers from reply fields).
pub fn answer(settings: &Settings, plan: &Plan, md: &MetadataMap, raw: &[u8]) -> Response<Body> {
    if let Some(direct) = &plan.fast.reply {
        // JSON is a little under twice the wire size for typical replies.
        let mut json = Vec::with_capacity(raw.len() * 2 + 64);
        if direct.write(raw, &mut json).is_ok() {
            let mut resp = json_response(json, md);
            shape::finish(&plan.shaping, None, None, md, &mut resp);
            return resp;
        }
    }
    // The reference path: decode, then render (and word any error).
    let msg = match DynamicMessage::decode(plan.output.clone(), raw) {
        Ok(m) => m,
        Err(e) => {
            return internal_error(format!(
                "the backend's reply is not a valid {}: {e}",
                plan.output.full_name()
            ))
        }
    };
    answer_message(settings, plan, md, &msg)
}

/// A reply message's JSON, without the route's shaping: straight from the
/// wire bytes where the route's fast path takes the type, else through a
/// `DynamicMessage` (for gRPC-Web and Connect clients, whose messages are
/// the method's own).
pub fn message_json(
    settings: &Settings,
    plan: &Plan,
    raw: &[u8],
) -> Result<Vec<u8>, TranscodeError> {
    if let Some(direct) = &plan.fast.reply {
        let mut json = Vec::with_capacity(raw.len() * 2 + 64);
        if direct.write(raw, &mut json).is_ok() {
            return Ok(json);
        }
    }
    let msg = DynamicMessage::decode(plan.output.clone(), raw).map_err(|e| {
        TranscodeError::new(format!(
            "the backend's reply is not a valid {}: {e}",
            plan.output.full_name()
        ))
    })?;
    encode_reply(&msg, None, &settings.encode)
}

fn json_response(body: impl Into<Body>, md: &MetadataMap) -> Response<Body> {
    let mut resp = Response::new(body.into());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    metadata::response_metadata(md, resp.headers_mut());
    resp
}

fn internal_error(message: String) -> Response<Body> {
    crate::error::Error::Internal(message).into_response()
}

/// [`answer`]'s reference path, once the reply is decoded.
fn answer_message(
    settings: &Settings,
    plan: &Plan,
    md: &MetadataMap,
    msg: &DynamicMessage,
) -> Response<Body> {
    match shape::render_reply(msg, plan.response_body.as_ref(), &settings.encode) {
        Ok(bytes) => {
            let mut resp = json_response(bytes, md);
            shape::finish(
                &plan.shaping,
                plan.response_body.as_ref(),
                Some(msg),
                md,
                &mut resp,
            );
            resp
        }
        Err(e) => internal_error(e.message),
    }
}

/// Serialises the reply (or its `response_body` field) straight into a buffer.
pub fn encode_reply(
    msg: &DynamicMessage,
    response_body: Option<&FieldDescriptor>,
    opts: &SerializeOptions,
) -> Result<Vec<u8>, TranscodeError> {
    let mut buf = Vec::with_capacity(256);
    let fail =
        |e: serde_json::Error| TranscodeError::new(format!("rendering the reply as JSON: {e}"));
    match response_body {
        None => {
            let mut ser = serde_json::Serializer::new(&mut buf);
            msg.serialize_with_options(&mut ser, opts).map_err(fail)?;
        }
        Some(field) => match field.kind() {
            Kind::Message(_) if !field.is_list() && !field.is_map() => {
                let value = msg.get_field(field);
                let sub = value.as_message().expect("message field holds a message");
                let mut ser = serde_json::Serializer::new(&mut buf);
                sub.serialize_with_options(&mut ser, opts).map_err(fail)?;
            }
            _ => {
                // Scalars, lists and maps have no standalone serialiser in
                // prost-reflect: render the whole reply with defaults kept
                // (the field must appear even when empty) and pick the field out.
                let full = opts.clone().skip_default_fields(false);
                let mut only = DynamicMessage::new(msg.descriptor());
                only.set_field(field, msg.get_field(field).into_owned());
                let value = only
                    .serialize_with_options(serde_json::value::Serializer, &full)
                    .map_err(fail)?;
                let picked = value
                    .get(field.json_name())
                    .or_else(|| value.get(field.name()))
                    .cloned()
                    .unwrap_or(serde_json::Value::Null);
                serde_json::to_writer(&mut buf, &picked).map_err(fail)?;
            }
        },
    }
    Ok(buf)
}
