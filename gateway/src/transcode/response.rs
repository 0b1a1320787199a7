//! Reply message -> JSON bytes.

use prost_reflect::ReflectMessage;
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, SerializeOptions};

use super::TranscodeError;

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
