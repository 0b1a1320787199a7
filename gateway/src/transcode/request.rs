//! HTTP request -> request message: path variables, query parameters and the
//! JSON body, following google/api/http.proto and grpc-gateway's rules.

use std::borrow::Cow;

use base64::Engine as _;
use prost_reflect::{
    DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor,
    ReflectMessage, Value,
};

use super::{strict, TranscodeError};

/// A chain of fields from the request message down to a leaf (`book.author.name`).
pub type FieldPath = Vec<FieldDescriptor>;

/// Where the HTTP body goes in the request message.
#[derive(Debug, Clone)]
pub enum BodyRule {
    /// No body is mapped; every field comes from the path and query.
    None,
    /// `body: "*"`: the body is the whole request message (and the query sets nothing).
    All,
    /// `body: "book"`: the body is that top-level field.
    Field(FieldDescriptor),
}

/// How strict request decoding is.
#[derive(Debug, Clone, Copy)]
pub struct DecodeOptions {
    pub reject_unknown: bool,
    /// Deepest JSON nesting accepted in a body (`limits.max_json_depth`).
    pub max_depth: usize,
}

/// Real APIs nest a handful of levels; 64 stops stack-eating documents
/// well before serde_json's own 128.
pub const DEFAULT_MAX_JSON_DEPTH: usize = 64;

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            reject_unknown: true,
            max_depth: DEFAULT_MAX_JSON_DEPTH,
        }
    }
}

/// Decodes the body according to `rule`; an empty body leaves the message empty,
/// as grpc-gateway treats EOF.
pub fn decode_body(
    input: &MessageDescriptor,
    rule: &BodyRule,
    body: &[u8],
    opts: DecodeOptions,
) -> Result<DynamicMessage, TranscodeError> {
    let de_opts = DeserializeOptions::new().deny_unknown_fields(opts.reject_unknown);
    match rule {
        BodyRule::None => Ok(DynamicMessage::new(input.clone())),
        _ if body.iter().all(u8::is_ascii_whitespace) => Ok(DynamicMessage::new(input.clone())),
        BodyRule::All => json_to_message(input, body, &de_opts, "", opts.max_depth),
        BodyRule::Field(field) => {
            let mut msg = DynamicMessage::new(input.clone());
            let value = match field.kind() {
                Kind::Message(m) if !field.is_list() && !field.is_map() => Value::Message(
                    json_to_message(&m, body, &de_opts, field.name(), opts.max_depth)?,
                ),
                _ => {
                    // A scalar, repeated or map body: let the message decoder
                    // handle the field's JSON form by wrapping it in an object.
                    let limits = strict::Limits::new(opts.max_depth);
                    let mut de = serde_json::Deserializer::from_slice(body);
                    let v: serde_json::Value = serde::Deserialize::deserialize(
                        strict::Strict::new(&mut de, strict::Ctx::field(field), &limits),
                    )
                    .and_then(|v| de.end().map(|()| v))
                    .map_err(|e| {
                        TranscodeError::new(format!(
                            "invalid JSON body (the request's \"{}\" field): {e}",
                            field.name()
                        ))
                    })?;
                    let wrapper = serde_json::json!({ field.json_name(): v });
                    let whole =
                        DynamicMessage::deserialize_with_options(input.clone(), wrapper, &de_opts)
                            .map_err(|e| {
                                TranscodeError::new(format!(
                                    "invalid value for body field \"{}\": {e}",
                                    field.name()
                                ))
                            })?;
                    whole.get_field(field).into_owned()
                }
            };
            msg.set_field(field, value);
            Ok(msg)
        }
    }
}

/// Decodes JSON straight from the bytes, through the strict adapter
/// (duplicate keys, a field under both its names, nesting depth) in the same
/// pass; only when that fails is it decoded a second time with path
/// tracking, so the happy path pays nothing for good error messages.
fn json_to_message(
    desc: &MessageDescriptor,
    body: &[u8],
    opts: &DeserializeOptions,
    prefix: &str,
    max_depth: usize,
) -> Result<DynamicMessage, TranscodeError> {
    let limits = strict::Limits::new(max_depth);
    let mut de = serde_json::Deserializer::from_slice(body);
    let result = DynamicMessage::deserialize_with_options(
        desc.clone(),
        strict::Strict::new(&mut de, strict::Ctx::message(desc), &limits),
        opts,
    )
    .and_then(|m| de.end().map(|()| m));
    result.map_err(|e| {
        let limits = strict::Limits::new(max_depth);
        let mut de = serde_json::Deserializer::from_slice(body);
        let mut track = serde_path_to_error::Track::new();
        let _ = DynamicMessage::deserialize_with_options(
            desc.clone(),
            serde_path_to_error::Deserializer::new(
                strict::Strict::new(&mut de, strict::Ctx::message(desc), &limits),
                &mut track,
            ),
            opts,
        );
        let path = track.path().to_string();
        // The tracker writes `?` for a key it could not read (EOF, bad syntax).
        let path = path.trim_end_matches(".?").trim_end_matches('?');
        let at = match (prefix.is_empty(), path.is_empty() || path == ".") {
            (true, true) => String::new(),
            (true, false) => format!(" at \"{path}\""),
            (false, true) => format!(
                " (the request's \"{prefix}\" field, a {})",
                desc.full_name()
            ),
            (false, false) => format!(" at \"{prefix}.{path}\""),
        };
        TranscodeError::new(format!("invalid JSON body{at}: {e}"))
    })
}

/// Sets a path variable's value on its field.
pub fn set_path_field(
    msg: &mut DynamicMessage,
    path: &[FieldDescriptor],
    raw: &str,
) -> Result<(), TranscodeError> {
    let (leaf, parents) = path.split_last().expect("field paths are never empty");
    let target = descend(msg, parents);
    let value = parse_value(leaf, raw).map_err(|e| {
        TranscodeError::new(format!("path variable \"{}\": {e}", display_path(path)))
    })?;
    target.set_field(leaf, value);
    Ok(())
}

/// Walks (creating as needed) the singular message fields of `parents`.
fn descend<'m>(msg: &'m mut DynamicMessage, parents: &[FieldDescriptor]) -> &'m mut DynamicMessage {
    let mut cur = msg;
    for f in parents {
        cur = cur
            .get_field_mut(f)
            .as_message_mut()
            .expect("intermediate fields are singular messages (checked at load)");
    }
    cur
}

pub fn display_path(path: &[FieldDescriptor]) -> String {
    let mut s = String::new();
    for (i, f) in path.iter().enumerate() {
        if i > 0 {
            s.push('.');
        }
        s.push_str(f.name());
    }
    s
}

/// Applies the query string. `bound` are the field paths (as field numbers)
/// already set by the path or the body; the query may not touch them.
pub fn apply_query(
    msg: &mut DynamicMessage,
    query: &str,
    body: &BodyRule,
    bound: &[Vec<u32>],
    opts: DecodeOptions,
) -> Result<(), TranscodeError> {
    // Singular fields already set by this query (as field-number paths, so a
    // field named once by its JSON name and once by its proto name counts
    // twice), to refuse a second value.
    let mut seen: Vec<Vec<u32>> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = query_decode(raw_key)
            .map_err(|e| TranscodeError::new(format!("query parameter \"{raw_key}\": {e}")))?;
        let value = query_decode(raw_value)
            .map_err(|e| TranscodeError::new(format!("query parameter \"{key}\": {e}")))?;
        if matches!(body, BodyRule::All) {
            if opts.reject_unknown {
                return Err(TranscodeError::new(format!(
                    "query parameter \"{key}\" is not allowed: this route takes every field from the body"
                )));
            }
            continue;
        }
        match resolve_query_key(msg.descriptor(), &key)? {
            None if opts.reject_unknown => {
                return Err(TranscodeError::new(format!(
                    "unknown query parameter \"{key}\": {} has no such field",
                    msg.descriptor().full_name()
                )))
            }
            None => continue,
            Some((path, map_key)) => {
                let numbers: Vec<u32> = path.iter().map(FieldDescriptor::number).collect();
                if bound
                    .iter()
                    .any(|b| b.starts_with(&numbers) || numbers.starts_with(b))
                {
                    return Err(TranscodeError::new(format!(
                        "query parameter \"{key}\" sets a field that the path or body already binds"
                    )));
                }
                let (leaf, parents) = path.split_last().expect("resolved paths are never empty");
                let target = descend(msg, parents);
                let err =
                    |e: String| TranscodeError::new(format!("query parameter \"{key}\": {e}"));
                if let Some(map_key) = map_key {
                    let Kind::Message(entry) = leaf.kind() else {
                        unreachable!("map fields have entry messages")
                    };
                    let k = parse_map_key(&entry.map_entry_key_field(), &map_key).map_err(err)?;
                    let v = parse_value(&entry.map_entry_value_field(), &value).map_err(err)?;
                    target
                        .get_field_mut(leaf)
                        .as_map_mut()
                        .expect("map field")
                        .insert(k, v);
                } else if leaf.is_list() {
                    let v = parse_value(leaf, &value).map_err(err)?;
                    target
                        .get_field_mut(leaf)
                        .as_list_mut()
                        .expect("repeated field")
                        .push(v);
                } else {
                    if seen.contains(&numbers) {
                        return Err(TranscodeError::new(format!(
                            "query parameter \"{key}\" is given more than once, but its field is not repeated"
                        )));
                    }
                    if let Some(oneof) = leaf.containing_oneof().filter(|o| !o.is_synthetic()) {
                        if let Some(other) = oneof
                            .fields()
                            .find(|f| f.number() != leaf.number() && target.has_field(f))
                        {
                            return Err(TranscodeError::new(format!(
                                "query parameter \"{key}\": field \"{}\" is already set, and both are in oneof \"{}\"",
                                other.name(),
                                oneof.name()
                            )));
                        }
                    }
                    let v = parse_value(leaf, &value).map_err(err)?;
                    target.set_field(leaf, v);
                    seen.push(numbers);
                }
            }
        }
    }
    Ok(())
}

/// `a.b.c` or `labels[key]` -> the field chain and, for maps, the key.
/// `Ok(None)` when a name does not exist (the caller decides to reject or skip).
pub(crate) fn resolve_query_key(
    root: MessageDescriptor,
    key: &str,
) -> Result<Option<(FieldPath, Option<String>)>, TranscodeError> {
    let (fields, map_key) = match key.find('[') {
        Some(open) if key.ends_with(']') => {
            (&key[..open], Some(key[open + 1..key.len() - 1].to_owned()))
        }
        Some(_) => {
            return Err(TranscodeError::new(format!(
                "query parameter \"{key}\": a map key is written name[key]"
            )))
        }
        None => (key, None),
    };
    let mut desc = root;
    let mut path = Vec::new();
    let parts: Vec<&str> = fields.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let Some(field) = desc
            .get_field_by_name(part)
            .or_else(|| desc.get_field_by_json_name(part))
        else {
            return Ok(None);
        };
        let last = i + 1 == parts.len();
        if !last {
            match field.kind() {
                Kind::Message(m) if !field.is_list() && !field.is_map() && !is_scalar_like(&m) => {
                    desc = m;
                }
                _ => {
                    return Err(TranscodeError::new(format!(
                        "query parameter \"{key}\": \"{part}\" is not a message field, so it has no sub-fields"
                    )))
                }
            }
        } else if field.is_map() != map_key.is_some() {
            return Err(TranscodeError::new(if field.is_map() {
                format!("query parameter \"{key}\": \"{part}\" is a map; write {part}[key]=value")
            } else {
                format!("query parameter \"{key}\": \"{part}\" is not a map")
            }));
        }
        path.push(field);
    }
    Ok(Some((path, map_key)))
}

/// Decodes a query component: `+` is a space and `%XX` an escape, as in
/// `application/x-www-form-urlencoded`. Bad escapes are errors, not passed through.
pub fn query_decode(raw: &str) -> Result<Cow<'_, str>, String> {
    if !raw.bytes().any(|b| b == b'%' || b == b'+') {
        return Ok(Cow::Borrowed(raw));
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| {
                    let h = std::str::from_utf8(h).ok()?;
                    u8::from_str_radix(h, 16).ok()
                });
                let Some(b) = hex else {
                    let end = (i + 3).min(bytes.len());
                    return Err(format!(
                        "bad percent-escape \"{}\"",
                        String::from_utf8_lossy(&bytes[i..end])
                    ));
                };
                out.push(b);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| "percent-decoded value is not valid UTF-8".to_owned())
}

/// Message types that have a string form and may therefore be set from a path
/// or query value.
pub fn is_scalar_like(m: &MessageDescriptor) -> bool {
    matches!(
        m.full_name(),
        "google.protobuf.Timestamp"
            | "google.protobuf.Duration"
            | "google.protobuf.FieldMask"
            | "google.protobuf.DoubleValue"
            | "google.protobuf.FloatValue"
            | "google.protobuf.Int64Value"
            | "google.protobuf.UInt64Value"
            | "google.protobuf.Int32Value"
            | "google.protobuf.UInt32Value"
            | "google.protobuf.BoolValue"
            | "google.protobuf.StringValue"
            | "google.protobuf.BytesValue"
    )
}

/// Parses a path or query string into the field's value type.
pub fn parse_value(field: &FieldDescriptor, s: &str) -> Result<Value, String> {
    parse_kind(&field.kind(), s)
}

fn parse_kind(kind: &Kind, s: &str) -> Result<Value, String> {
    fn int<T: std::str::FromStr>(s: &str, ty: &str) -> Result<T, String> {
        s.parse::<T>().map_err(|_| {
            if !s.is_empty()
                && s.trim_start_matches(['-', '+'])
                    .bytes()
                    .all(|b| b.is_ascii_digit())
            {
                format!("{s} is out of range for {ty}")
            } else {
                format!("\"{s}\" is not a valid {ty}")
            }
        })
    }
    Ok(match kind {
        Kind::Double => Value::F64(parse_float(s)?),
        Kind::Float => {
            let f = parse_float(s)?;
            if f.is_finite() && f.abs() > f32::MAX as f64 {
                return Err(format!("{s} is out of range for float"));
            }
            Value::F32(f as f32)
        }
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(int(s, "int32")?),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(int(s, "int64")?),
        Kind::Uint32 | Kind::Fixed32 => Value::U32(int(s, "uint32")?),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(int(s, "uint64")?),
        Kind::Bool => Value::Bool(match s {
            "true" | "True" | "TRUE" | "t" | "T" | "1" => true,
            "false" | "False" | "FALSE" | "f" | "F" | "0" => false,
            _ => return Err(format!("\"{s}\" is not a bool; use true or false")),
        }),
        Kind::String => Value::String(s.to_owned()),
        Kind::Bytes => {
            use base64::engine::general_purpose::{
                STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD,
            };
            let b = STANDARD
                .decode(s)
                .or_else(|_| URL_SAFE.decode(s))
                .or_else(|_| STANDARD_NO_PAD.decode(s))
                .or_else(|_| URL_SAFE_NO_PAD.decode(s))
                .map_err(|_| format!("\"{s}\" is not valid base64"))?;
            Value::Bytes(b.into())
        }
        Kind::Enum(e) => {
            if let Some(v) = e.get_value_by_name(s) {
                Value::EnumNumber(v.number())
            } else if let Ok(n) = s.parse::<i32>() {
                Value::EnumNumber(n)
            } else {
                let names: Vec<String> = e.values().map(|v| v.name().to_owned()).collect();
                return Err(format!(
                    "\"{s}\" is not a value of {}; expected one of {}",
                    e.full_name(),
                    names.join(", ")
                ));
            }
        }
        Kind::Message(m) => {
            if m.full_name().ends_with("Value")
                && m.full_name().starts_with("google.protobuf.")
                && m.full_name() != "google.protobuf.Value"
                && m.full_name() != "google.protobuf.ListValue"
            {
                let inner = m
                    .get_field_by_name("value")
                    .ok_or("wrapper without value")?;
                let mut w = DynamicMessage::new(m.clone());
                w.set_field(&inner, parse_value(&inner, s)?);
                Value::Message(w)
            } else if is_scalar_like(m) {
                let msg =
                    DynamicMessage::deserialize(m.clone(), serde_json::Value::String(s.to_owned()))
                        .map_err(|e| format!("\"{s}\" is not a valid {}: {e}", m.full_name()))?;
                Value::Message(msg)
            } else {
                return Err(format!(
                    "{} is a message; it cannot be set from a single value",
                    m.full_name()
                ));
            }
        }
    })
}

fn parse_float(s: &str) -> Result<f64, String> {
    match s {
        "NaN" => Ok(f64::NAN),
        "Infinity" => Ok(f64::INFINITY),
        "-Infinity" => Ok(f64::NEG_INFINITY),
        // Rust also accepts "inf"/"nan" spellings proto3 JSON does not.
        _ if s
            .bytes()
            .any(|b| b.is_ascii_alphabetic() && b != b'e' && b != b'E') =>
        {
            Err(format!("\"{s}\" is not a number"))
        }
        _ => s.parse().map_err(|_| format!("\"{s}\" is not a number")),
    }
}

fn parse_map_key(field: &FieldDescriptor, s: &str) -> Result<MapKey, String> {
    Ok(match parse_value(field, s)? {
        Value::Bool(b) => MapKey::Bool(b),
        Value::I32(v) => MapKey::I32(v),
        Value::I64(v) => MapKey::I64(v),
        Value::U32(v) => MapKey::U32(v),
        Value::U64(v) => MapKey::U64(v),
        Value::String(v) => MapKey::String(v),
        _ => return Err("unsupported map key type".into()),
    })
}
