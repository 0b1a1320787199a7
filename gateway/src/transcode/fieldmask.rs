//! Filling `update_mask` from the body of a PATCH, as grpc-gateway does:
//! when the client sent no mask, the mask is the set of JSON keys present in
//! the body, so a partial update touches only what the client wrote.

use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, Value};

/// Whether a route fills its mask: PATCH, `body` naming a message field, and
/// a `google.protobuf.FieldMask update_mask` on the request.
pub fn mask_field(
    method: &str,
    input: &MessageDescriptor,
    body: Option<&FieldDescriptor>,
) -> Option<FieldDescriptor> {
    if method != "PATCH" {
        return None;
    }
    let body = body?;
    match body.kind() {
        Kind::Message(m)
            if !body.is_list() && !body.is_map() && !super::httpbody::is_http_body(&m) => {}
        _ => return None,
    }
    let mask = input.get_field_by_name("update_mask")?;
    match mask.kind() {
        Kind::Message(m) if m.full_name() == "google.protobuf.FieldMask" && !mask.is_list() => {
            Some(mask)
        }
        _ => None,
    }
}

/// Sets `mask` on `msg` from the keys of `body` (the JSON of `body_field`),
/// unless the path or query already gave it paths.
pub fn fill(
    msg: &mut DynamicMessage,
    mask: &FieldDescriptor,
    body_field: &FieldDescriptor,
    body: &[u8],
) {
    let given = msg
        .get_field(mask)
        .as_message()
        .and_then(|m| m.get_field_by_name("paths"))
        .and_then(|p| p.as_list().map(|l| !l.is_empty()))
        .unwrap_or(false);
    if given || body.iter().all(u8::is_ascii_whitespace) {
        return;
    }
    let Kind::Message(desc) = body_field.kind() else {
        return;
    };
    // The body already decoded into the message, so it is valid JSON.
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(body) else {
        return;
    };
    let mut paths = Vec::new();
    collect(&json, Some(&desc), "", &mut paths);
    if paths.is_empty() {
        return;
    }
    paths.sort();
    paths.dedup();
    let Kind::Message(mask_desc) = mask.kind() else {
        return;
    };
    let mut value = DynamicMessage::new(mask_desc);
    value.set_field_by_name(
        "paths",
        Value::List(paths.into_iter().map(Value::String).collect()),
    );
    msg.set_field(mask, Value::Message(value));
}

/// grpc-gateway's walk: objects of message fields are descended, lists and
/// maps end the path, anything else is a leaf. `desc` is None below a
/// `google.protobuf.Struct`, whose keys are followed blindly.
fn collect(
    node: &serde_json::Value,
    desc: Option<&MessageDescriptor>,
    path: &str,
    out: &mut Vec<String>,
) {
    let obj = match node.as_object() {
        Some(o) if !o.is_empty() => o,
        _ => {
            if !path.is_empty() {
                out.push(path.to_owned());
            }
            return;
        }
    };
    let join = |name: &str| {
        if path.is_empty() {
            name.to_owned()
        } else {
            format!("{path}.{name}")
        }
    };
    let Some(desc) = desc else {
        for (k, v) in obj {
            collect(v, None, &join(k), out);
        }
        return;
    };
    for (key, value) in obj {
        let Some(field) = desc
            .get_field_by_json_name(key)
            .or_else(|| desc.get_field_by_name(key))
        else {
            // Only reachable with unknown_fields = "ignore": nothing to update.
            continue;
        };
        let child = join(field.name());
        if field.is_list() || field.is_map() {
            out.push(child);
            continue;
        }
        match field.kind() {
            Kind::Message(m) if m.full_name() == "google.protobuf.Struct" => {
                collect(value, None, &child, out)
            }
            Kind::Message(m) if m.full_name().starts_with("google.protobuf.") => out.push(child),
            Kind::Message(m) => collect(value, Some(&m), &child, out),
            _ => out.push(child),
        }
    }
}
