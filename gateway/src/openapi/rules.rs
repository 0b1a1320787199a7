//! protovalidate (`buf.validate`) rules as JSON Schema keywords, so the
//! document states what a request must satisfy before a client sends it.
//!
//! The rules are read from the descriptors' options (the `buf.validate.field`,
//! `.message` and `.oneof` extensions, in the pool when a file imports
//! `buf/validate/validate.proto`); this module only documents them, it
//! enforces nothing. What JSON Schema can say becomes a keyword:
//! - strings: `min_len`/`max_len`/`len` -> `minLength`/`maxLength` (both
//!   count characters, as protovalidate does), `pattern`, `const`, `in` ->
//!   `enum`, `not_in` -> `not: {enum}`, `email`, `hostname`, `ipv4`,
//!   `ipv6`, `uri`, `uri_ref` (`uri-reference`), `uuid` -> `format`; `ip`
//!   and `address` -> `anyOf` of formats. `prefix` becomes the pattern
//!   `^<prefix>` only when the field has no `pattern` of its own (one
//!   pattern slot; the other case is a description line). protovalidate's
//!   patterns are RE2, JSON Schema's ECMA-262: they agree on the usual
//!   syntax, and the pattern is passed on as written.
//! - numbers: `gt`/`gte`/`lt`/`lte` -> `exclusiveMinimum`/`minimum`/
//!   `exclusiveMaximum`/`maximum`, `const`, `in` -> `enum`, `finite` drops
//!   the "NaN"/"Infinity" strings. A lower bound above the upper one means
//!   "outside the range" in protovalidate; that becomes an `anyOf` of the
//!   two sides. 64-bit integers are JSON strings (they read either form):
//!   the bounds sit on the number form, where JSON Schema can check them,
//!   and a description line repeats them for the string form; `const` and
//!   `in` list both spellings (`5` and `"5"`).
//! - enums: `const`, `in`, `defined_only` -> `enum` of the names and the
//!   numbers (both are read).
//! - repeated: `min_items`/`max_items`/`unique` -> `minItems`/`maxItems`/
//!   `uniqueItems`, `items` rules on `items`; maps: `min_pairs`/`max_pairs`
//!   -> `minProperties`/`maxProperties`, string `keys` rules on
//!   `propertyNames`, `values` rules on `additionalProperties`.
//! - `required` -> the property is listed in `required` (and a string, list
//!   or map without presence must be non-empty, as for field_behavior).
//! - everything else (CEL rules, oneof rules, byte lengths, timestamps,
//!   durations, suffixes): a line `Rule: ...` in the description, CEL rules
//!   by their message, else their expression.
//!
//! `ignore = IGNORE_ALWAYS` turns a field's rules off, so none are
//! written; `IGNORE_IF_ZERO_VALUE` keeps them, with a line saying the zero
//! value is accepted too (the keywords are then stricter than the check
//! for that one value).

use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, OneofDescriptor,
    ReflectMessage, Value as Pv,
};
use serde_json::{json, Map, Value};

/// `buf.validate.Ignore` values this module reads.
const IGNORE_IF_ZERO_VALUE: i32 = 1;
const IGNORE_ALWAYS: i32 = 3;

/// The `(buf.validate.field)` rules of `f`, when it has any.
pub fn field_rules(f: &FieldDescriptor) -> Option<DynamicMessage> {
    extension(f.parent_pool(), &f.options(), "buf.validate.field")
}

/// The `(buf.validate.message)` rules of `m`, when it has any.
pub fn message_rules(m: &MessageDescriptor) -> Option<DynamicMessage> {
    extension(m.parent_pool(), &m.options(), "buf.validate.message")
}

/// The `(buf.validate.oneof)` rules of `o`, when it has any.
pub fn oneof_rules(o: &OneofDescriptor) -> Option<DynamicMessage> {
    extension(o.parent_pool(), &o.options(), "buf.validate.oneof")
}

/// The message value of the extension `name` on `options`. None when the
/// pool lacks the extension (no file imports validate.proto) or the
/// options do not set it.
fn extension(
    pool: &DescriptorPool,
    options: &DynamicMessage,
    name: &str,
) -> Option<DynamicMessage> {
    let ext = pool.get_extension_by_name(name)?;
    if !options.has_extension(&ext) {
        return None;
    }
    options.get_extension(&ext).as_message().cloned()
}

/// What a field's rules add besides keywords on its own schema.
#[derive(Debug, Default)]
pub struct FieldOutcome {
    /// `required = true`: list the property in the object's `required`.
    pub required: bool,
}

/// Writes the rules of `f` into `schema` (the field's schema, as
/// [`super::schema::Schemas::field`] builds it: an array for a list, an
/// object for a map).
pub fn apply_field(f: &FieldDescriptor, schema: &mut Value) -> FieldOutcome {
    let mut out = FieldOutcome::default();
    let Some(rules) = field_rules(f) else {
        return out;
    };
    let ignore = enum_of(&rules, "ignore");
    if ignore == Some(IGNORE_ALWAYS) {
        return out;
    }
    out.required = bool_of(&rules, "required");
    let mut notes = Vec::new();
    if ignore == Some(IGNORE_IF_ZERO_VALUE) {
        notes.push(
            "Rule: the zero value (empty, 0, false) is accepted; the other rules hold for any other value."
                .to_owned(),
        );
    }
    if f.is_map() {
        let entry = f.kind();
        let entry = entry.as_message();
        let key = entry.map(|e| e.map_entry_key_field().kind());
        let value = entry.map(|e| e.map_entry_value_field().kind());
        apply_collection(
            &rules,
            key.as_ref(),
            value.as_ref(),
            true,
            schema,
            &mut notes,
        );
    } else if f.is_list() {
        apply_collection(&rules, None, Some(&f.kind()), false, schema, &mut notes);
    } else {
        apply_value(&rules, &f.kind(), schema, &mut notes, "");
    }
    append_notes(schema, notes);
    out
}

/// The lines a message's rules (CEL, `oneof` groups) add to its
/// description; `name_of` spells a field as the schema does.
pub fn message_notes(
    m: &MessageDescriptor,
    name_of: impl Fn(&FieldDescriptor) -> String,
) -> Vec<String> {
    let mut notes = Vec::new();
    if let Some(rules) = message_rules(m) {
        cel_notes(&rules, "", &mut notes);
        for group in list_of(&rules, "oneof") {
            let Some(group) = group.as_message() else {
                continue;
            };
            let fields: Vec<String> = list_of(group, "fields")
                .iter()
                .filter_map(|v| v.as_str())
                .map(|n| match m.get_field_by_name(n) {
                    Some(f) => name_of(&f),
                    None => n.to_owned(),
                })
                .collect();
            let how = if bool_of(group, "required") {
                "exactly one"
            } else {
                "at most one"
            };
            notes.push(format!("Rule: {how} of {} is set.", fields.join(", ")));
        }
    }
    notes
}

/// `(buf.validate.oneof).required`: one of the oneof's fields must be set.
pub fn oneof_required(o: &OneofDescriptor) -> bool {
    oneof_rules(o).is_some_and(|r| bool_of(&r, "required"))
}

/// Rules of a list (`repeated`) or a map (`map`), with the `items`, `keys`
/// and `values` rules on the nested schemas.
fn apply_collection(
    rules: &DynamicMessage,
    key: Option<&Kind>,
    value: Option<&Kind>,
    is_map: bool,
    schema: &mut Value,
    notes: &mut Vec<String>,
) {
    cel_notes(rules, "", notes);
    let (kind_name, min, max) = if is_map {
        ("map", "minProperties", "maxProperties")
    } else {
        ("repeated", "minItems", "maxItems")
    };
    let Some(coll) = set_message(rules, kind_name) else {
        return;
    };
    let Value::Object(o) = schema else { return };
    for (field, v) in coll.fields() {
        match field.name() {
            "min_items" | "min_pairs" => {
                o.insert(min.into(), number(v));
            }
            "max_items" | "max_pairs" => {
                o.insert(max.into(), number(v));
            }
            "unique" if v.as_bool() == Some(true) => {
                o.insert("uniqueItems".into(), Value::Bool(true));
            }
            "items" | "values" => {
                let (Some(nested), Some(kind)) = (v.as_message(), value) else {
                    continue;
                };
                let slot = if is_map {
                    "additionalProperties"
                } else {
                    "items"
                };
                if let Some(inner) = o.get_mut(slot) {
                    let prefix = if is_map {
                        "each value: "
                    } else {
                        "each item: "
                    };
                    apply_value(nested, kind, inner, notes, prefix);
                }
            }
            "keys" => {
                let (Some(nested), Some(kind)) = (v.as_message(), key) else {
                    continue;
                };
                // JSON object keys are strings: string rules are keywords
                // on propertyNames; an integer or bool key's rules are
                // described (a number's bounds cannot hold for its digits).
                if matches!(kind, Kind::String) {
                    let mut names = json!({});
                    apply_value(nested, kind, &mut names, notes, "each key: ");
                    if names.as_object().is_some_and(|n| !n.is_empty()) {
                        o.insert("propertyNames".into(), names);
                    }
                } else {
                    describe(nested, "each key: ", notes);
                }
            }
            other => notes.push(format!("Rule: {kind_name}.{other} = {}", show(v))),
        }
    }
}

/// The rules of one value (a singular field, a list item, a map value)
/// of `kind`, on `schema`.
fn apply_value(
    rules: &DynamicMessage,
    kind: &Kind,
    schema: &mut Value,
    notes: &mut Vec<String>,
    prefix: &str,
) {
    cel_notes(rules, prefix, notes);
    let Some((type_field, typed)) = rules
        .fields()
        .find(|(f, _)| f.containing_oneof().is_some_and(|o| o.name() == "type"))
        .and_then(|(f, v)| v.as_message().map(|m| (f.name().to_owned(), m.clone())))
    else {
        return;
    };
    let Value::Object(o) = schema else { return };
    let mut note = |text: String| notes.push(format!("Rule: {prefix}{text}"));
    match type_field.as_str() {
        "string" => string_rules(&typed, o, &mut note),
        "bool" => {
            for (f, v) in typed.fields() {
                match f.name() {
                    "const" => {
                        o.insert("const".into(), Value::Bool(v.as_bool() == Some(true)));
                    }
                    "example" => examples(o, v, |x| Value::Bool(x.as_bool() == Some(true))),
                    other => note(format!("bool.{other} = {}", show(v))),
                }
            }
        }
        "enum" => {
            if let Kind::Enum(e) = kind {
                enum_rules(&typed, e, o, &mut note);
            }
        }
        "float" | "double" | "int32" | "int64" | "uint32" | "uint64" | "sint32" | "sint64"
        | "fixed32" | "fixed64" | "sfixed32" | "sfixed64" => {
            let wide = matches!(
                type_field.as_str(),
                "int64" | "uint64" | "sint64" | "fixed64" | "sfixed64"
            );
            number_rules(&typed, &type_field, wide, o, &mut note);
        }
        other => {
            // bytes, any, duration, timestamp, field_mask: their values
            // (byte counts, durations) have no keyword on the JSON form.
            for (f, v) in typed.fields() {
                note(format!("{other}.{} = {}", f.name(), show(v)));
            }
        }
    }
}

fn string_rules(r: &DynamicMessage, o: &mut Map<String, Value>, note: &mut impl FnMut(String)) {
    let has_pattern = r.fields().any(|(f, _)| f.name() == "pattern");
    for (f, v) in r.fields() {
        let text = || v.as_str().unwrap_or_default().to_owned();
        let on = v.as_bool() == Some(true);
        match f.name() {
            "const" => {
                o.insert("const".into(), Value::String(text()));
            }
            "len" => {
                o.insert("minLength".into(), number(v));
                o.insert("maxLength".into(), number(v));
            }
            "min_len" => {
                o.insert("minLength".into(), number(v));
            }
            "max_len" => {
                o.insert("maxLength".into(), number(v));
            }
            "pattern" => {
                o.insert("pattern".into(), Value::String(text()));
            }
            "prefix" if !has_pattern => {
                o.insert(
                    "pattern".into(),
                    Value::String(format!("^{}", super::regex_escape(&text()))),
                );
            }
            "in" => {
                o.insert(
                    "enum".into(),
                    list(v, |x| Value::String(x.as_str().unwrap_or_default().into())),
                );
            }
            "not_in" => {
                let all = list(v, |x| Value::String(x.as_str().unwrap_or_default().into()));
                o.insert("not".into(), json!({ "enum": all }));
            }
            "example" => examples(o, v, |x| {
                Value::String(x.as_str().unwrap_or_default().into())
            }),
            "email" if on => format(o, "email"),
            "hostname" if on => format(o, "hostname"),
            "ipv4" if on => format(o, "ipv4"),
            "ipv6" if on => format(o, "ipv6"),
            "uri" if on => format(o, "uri"),
            "uri_ref" if on => format(o, "uri-reference"),
            "uuid" if on => format(o, "uuid"),
            "ip" if on => {
                o.insert(
                    "anyOf".into(),
                    json!([{"format": "ipv4"}, {"format": "ipv6"}]),
                );
            }
            "address" if on => {
                o.insert(
                    "anyOf".into(),
                    json!([{"format": "hostname"}, {"format": "ipv4"}, {"format": "ipv6"}]),
                );
            }
            "strict" => {}
            "prefix" => note(format!("starts with \"{}\"", text())),
            "suffix" => note(format!("ends with \"{}\"", text())),
            "contains" => note(format!("contains \"{}\"", text())),
            "not_contains" => note(format!("does not contain \"{}\"", text())),
            "len_bytes" => note(format!("exactly {} bytes (UTF-8)", show(v))),
            "min_bytes" => note(format!("at least {} bytes (UTF-8)", show(v))),
            "max_bytes" => note(format!("at most {} bytes (UTF-8)", show(v))),
            other => note(format!("string.{other} = {}", show(v))),
        }
    }
}

fn format(o: &mut Map<String, Value>, name: &str) {
    o.insert("format".into(), Value::String(name.into()));
}

fn enum_rules(
    r: &DynamicMessage,
    e: &prost_reflect::EnumDescriptor,
    o: &mut Map<String, Value>,
    note: &mut impl FnMut(String),
) {
    // An enum value is read by name or number: list both spellings.
    let spellings = |numbers: &[i32]| -> Value {
        let mut out = Vec::new();
        for n in numbers {
            if let Some(v) = e.get_value(*n) {
                out.push(Value::String(v.name().to_owned()));
            }
            out.push(json!(n));
        }
        Value::Array(out)
    };
    let numbers = |v: &Pv| -> Vec<i32> {
        match v {
            Pv::List(l) => l.iter().filter_map(|x| x.as_i32()).collect(),
            other => other.as_i32().into_iter().collect(),
        }
    };
    for (f, v) in r.fields() {
        match f.name() {
            "const" | "in" => {
                o.insert("enum".into(), spellings(&numbers(v)));
            }
            "not_in" => {
                o.insert("not".into(), json!({ "enum": spellings(&numbers(v)) }));
            }
            "defined_only" if v.as_bool() == Some(true) => {
                if !o.contains_key("enum") {
                    let all: Vec<i32> = e.values().map(|v| v.number()).collect();
                    o.insert("enum".into(), spellings(&all));
                }
            }
            "defined_only" => {}
            other => note(format!("enum.{other} = {}", show(v))),
        }
    }
}

/// Numeric bounds, `const`, `in`: see the module comment for the 64-bit
/// integers' string form and the "outside the range" case.
fn number_rules(
    r: &DynamicMessage,
    type_name: &str,
    wide: bool,
    o: &mut Map<String, Value>,
    note: &mut impl FnMut(String),
) {
    // A 64-bit value is read as a number or a string: list both.
    let spell = |v: &Pv| -> Vec<Value> {
        let n = number(v);
        if wide {
            vec![n.clone(), Value::String(n.to_string())]
        } else {
            vec![n]
        }
    };
    let mut lower: Option<(&'static str, Value)> = None;
    let mut upper: Option<(&'static str, Value)> = None;
    for (f, v) in r.fields() {
        match f.name() {
            "gt" => lower = Some(("exclusiveMinimum", number(v))),
            "gte" => lower = Some(("minimum", number(v))),
            "lt" => upper = Some(("exclusiveMaximum", number(v))),
            "lte" => upper = Some(("maximum", number(v))),
            "const" => {
                let mut all = spell(v);
                if all.len() == 1 {
                    o.insert("const".into(), all.remove(0));
                } else {
                    o.insert("enum".into(), Value::Array(all));
                }
            }
            "in" => {
                let all = list_values(v).iter().flat_map(&spell).collect();
                o.insert("enum".into(), Value::Array(all));
            }
            "not_in" => {
                let all: Vec<Value> = list_values(v).iter().flat_map(&spell).collect();
                o.insert("not".into(), json!({ "enum": all }));
            }
            "finite" if v.as_bool() == Some(true) => {
                // Floats are `anyOf: [number, "NaN"/"Infinity" strings]`.
                o.remove("anyOf");
                o.insert("type".into(), Value::String("number".into()));
            }
            "finite" => {}
            "example" => examples(o, v, number),
            other => note(format!("{type_name}.{other} = {}", show(v))),
        }
    }
    let words = |(k, v): &(&str, Value)| -> String {
        let op = match *k {
            "exclusiveMinimum" => ">",
            "minimum" => ">=",
            "exclusiveMaximum" => "<",
            _ => "<=",
        };
        format!("{op} {v}")
    };
    let outside = match (&lower, &upper) {
        (Some((_, lo)), Some((_, hi))) => as_f64(lo) >= as_f64(hi),
        _ => false,
    };
    if outside {
        // protovalidate: `gt: 10, lt: 5` is "> 10 or < 5".
        let (lo, hi) = (lower.expect("both set"), upper.expect("both set"));
        note(format!("{} or {}", words(&lo), words(&hi)));
        let sides = json!([{ lo.0: lo.1 }, { hi.0: hi.1 }]);
        match o.get_mut("allOf") {
            Some(Value::Array(a)) => a.push(json!({ "anyOf": sides })),
            _ => {
                if o.contains_key("anyOf") {
                    o.insert("allOf".into(), json!([{ "anyOf": sides }]));
                } else {
                    o.insert("anyOf".into(), sides);
                }
            }
        }
        return;
    }
    let mut said = Vec::new();
    for bound in [lower, upper].into_iter().flatten() {
        said.push(words(&bound));
        tighten(o, bound.0, bound.1);
    }
    if wide && !said.is_empty() {
        note(format!("{} (the string form too)", said.join(" and ")));
    }
}

/// Sets a bound keyword, keeping an existing one (the type's own range)
/// when it is tighter.
fn tighten(o: &mut Map<String, Value>, key: &str, value: Value) {
    let lower = key.ends_with("inimum");
    let keep = o.get(key).is_some_and(|old| {
        if lower {
            as_f64(old) > as_f64(&value)
        } else {
            as_f64(old) < as_f64(&value)
        }
    });
    if !keep {
        o.insert(key.into(), value);
    }
}

fn as_f64(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// Every rule of `rules` (a FieldRules) as a description line.
fn describe(rules: &DynamicMessage, prefix: &str, notes: &mut Vec<String>) {
    cel_notes(rules, prefix, notes);
    for (f, v) in rules.fields() {
        if let Some(typed) = v.as_message() {
            for (rule, value) in typed.fields() {
                notes.push(format!(
                    "Rule: {prefix}{}.{} = {}",
                    f.name(),
                    rule.name(),
                    show(value)
                ));
            }
        }
    }
}

/// Lines for the `cel` and `cel_expression` rules of `rules`.
fn cel_notes(rules: &DynamicMessage, prefix: &str, notes: &mut Vec<String>) {
    for rule in list_of(rules, "cel") {
        let Some(rule) = rule.as_message() else {
            continue;
        };
        let message = text_of(rule, "message");
        let text = if message.is_empty() {
            text_of(rule, "expression")
        } else {
            message
        };
        if !text.is_empty() {
            notes.push(format!("Rule: {prefix}{text}"));
        }
    }
    for expr in list_of(rules, "cel_expression") {
        if let Some(e) = expr.as_str() {
            notes.push(format!("Rule: {prefix}{e}"));
        }
    }
}

/// Appends `notes` to the schema's description, one line each.
pub fn append_notes(schema: &mut Value, notes: Vec<String>) {
    if notes.is_empty() {
        return;
    }
    let Value::Object(o) = schema else { return };
    let mut text = o
        .get("description")
        .and_then(|d| d.as_str())
        .unwrap_or_default()
        .to_owned();
    for n in notes {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(&n);
    }
    o.insert("description".into(), Value::String(text));
}

fn examples(o: &mut Map<String, Value>, v: &Pv, each: impl Fn(&Pv) -> Value) {
    o.insert("examples".into(), list(v, each));
}

fn list(v: &Pv, each: impl Fn(&Pv) -> Value) -> Value {
    Value::Array(list_values(v).iter().map(each).collect())
}

fn list_values(v: &Pv) -> Vec<Pv> {
    match v {
        Pv::List(l) => l.clone(),
        other => vec![other.clone()],
    }
}

/// A set message-typed field of `m`.
fn set_message(m: &DynamicMessage, name: &str) -> Option<DynamicMessage> {
    if !m.has_field_by_name(name) {
        return None;
    }
    m.get_field_by_name(name)?.as_message().cloned()
}

fn list_of(m: &DynamicMessage, name: &str) -> Vec<Pv> {
    m.get_field_by_name(name)
        .and_then(|v| v.as_list().map(<[Pv]>::to_vec))
        .unwrap_or_default()
}

fn bool_of(m: &DynamicMessage, name: &str) -> bool {
    m.get_field_by_name(name).and_then(|v| v.as_bool()) == Some(true)
}

fn enum_of(m: &DynamicMessage, name: &str) -> Option<i32> {
    if !m.has_field_by_name(name) {
        return None;
    }
    m.get_field_by_name(name).and_then(|v| v.as_enum_number())
}

fn text_of(m: &DynamicMessage, name: &str) -> String {
    m.get_field_by_name(name)
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// A scalar rule value as a JSON number (0 for anything else).
fn number(v: &Pv) -> Value {
    match v {
        Pv::I32(n) => json!(n),
        Pv::I64(n) => json!(n),
        Pv::U32(n) => json!(n),
        Pv::U64(n) => json!(n),
        Pv::F32(n) => json!(n),
        Pv::F64(n) => json!(n),
        Pv::EnumNumber(n) => json!(n),
        _ => json!(0),
    }
}

/// A rule value as a description shows it; durations and timestamps as
/// their JSON forms' numbers.
fn show(v: &Pv) -> String {
    match v {
        Pv::Bool(b) => b.to_string(),
        Pv::String(s) => format!("\"{s}\""),
        Pv::Bytes(b) => format!("{} bytes", b.len()),
        Pv::List(l) => format!("[{}]", l.iter().map(show).collect::<Vec<_>>().join(", ")),
        Pv::Message(m) => match m.descriptor().full_name() {
            "google.protobuf.Duration" => {
                let secs = m
                    .get_field_by_name("seconds")
                    .and_then(|s| s.as_i64())
                    .unwrap_or(0);
                let nanos = m
                    .get_field_by_name("nanos")
                    .and_then(|s| s.as_i32())
                    .unwrap_or(0);
                if nanos == 0 {
                    format!("{secs}s")
                } else {
                    format!("{}s", secs as f64 + f64::from(nanos) / 1e9)
                }
            }
            "google.protobuf.Timestamp" => {
                let secs = m
                    .get_field_by_name("seconds")
                    .and_then(|s| s.as_i64())
                    .unwrap_or(0);
                format!("{secs} (Unix seconds)")
            }
            other => other.to_owned(),
        },
        other => number(other).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use prost_reflect::MessageDescriptor;
    use serde_json::{json, Value};

    use crate::descriptors::load_dir;
    use crate::openapi::schema::Schemas;

    const PROTO: &str = r#"
syntax = "proto3";
package v;
import "buf/validate/validate.proto";
import "google/api/field_behavior.proto";
import "google/protobuf/duration.proto";

enum Color { COLOR_UNSPECIFIED = 0; RED = 1; GREEN = 2; }

message Signup {
  option (buf.validate.message).cel = {
    id: "confirm", message: "confirm must equal password",
    expression: "this.confirm == this.password"
  };
  option (buf.validate.message).cel = { id: "x", expression: "this.age > 20 || this.plan == 'free'" };
  option (buf.validate.message).oneof = { fields: ["email", "slug"], required: true };

  string name = 1 [(buf.validate.field).string = {min_len: 3, max_len: 20}];
  string code = 2 [(buf.validate.field).string.len = 6];
  string slug = 3 [(buf.validate.field).string.pattern = "^[a-z]+$"];
  string kind = 4 [(buf.validate.field).string.const = "user"];
  string plan = 5 [(buf.validate.field).string = {in: ["free", "pro"], not_in: ["gold"]}];
  string email = 6 [(buf.validate.field).string.email = true];
  string uid = 7 [(buf.validate.field).string.uuid = true];
  string host = 8 [(buf.validate.field).string.hostname = true];
  string v4 = 9 [(buf.validate.field).string.ipv4 = true];
  string v6 = 10 [(buf.validate.field).string.ipv6 = true];
  string site = 11 [(buf.validate.field).string.uri = true];
  string link = 12 [(buf.validate.field).string.uri_ref = true];
  string ref = 13 [(buf.validate.field).string.prefix = "ref-"];
  string both = 14 [(buf.validate.field).string = {prefix: "a.", pattern: "^a[.]b", suffix: "z"}];
  int32 age = 15 [(buf.validate.field).int32 = {gte: 18, lt: 150}];
  double score = 16 [(buf.validate.field).double = {gt: 0, lte: 1, finite: true}];
  int64 big = 17 [(buf.validate.field).int64 = {gte: 1, lte: 1000}];
  uint32 level = 18 [(buf.validate.field).uint32 = {in: [1, 2, 3]}];
  int32 answer = 19 [(buf.validate.field).int32.const = 42];
  int64 ticket = 20 [(buf.validate.field).int64.const = 7];
  repeated string tags = 21 [(buf.validate.field).repeated = {
    min_items: 1, max_items: 5, unique: true, items: {string: {max_len: 10}}
  }];
  map<int32, string> by_number = 36 [(buf.validate.field).map.keys.int32.gt = 0];
  map<string, int32> counts = 22 [(buf.validate.field).map = {
    min_pairs: 1, max_pairs: 3, keys: {string: {min_len: 2}}, values: {int32: {gt: 0}}
  }];
  string nickname = 23 [(buf.validate.field).required = true];
  string note = 24 [(buf.validate.field).cel = {
    id: "note", message: "note must not shout", expression: "this.upperAscii() != this"
  }];
  Color color = 25 [(buf.validate.field).enum = {defined_only: true, not_in: [2]}];
  int32 outside = 26 [(buf.validate.field).int32 = {gt: 10, lt: 5}];
  string ignored = 27 [(buf.validate.field).string.min_len = 5, (buf.validate.field).ignore = IGNORE_ALWAYS];
  string server_id = 28 [(google.api.field_behavior) = OUTPUT_ONLY];
  string password = 29 [(google.api.field_behavior) = INPUT_ONLY, (buf.validate.field).string.min_len = 8];
  string confirm = 30 [(google.api.field_behavior) = REQUIRED];
  google.protobuf.Duration ttl = 31 [(buf.validate.field).duration.lte = {seconds: 60}];
  uint32 small = 32 [(buf.validate.field).uint32 = {gte: 0, lte: 9}];
  string maybe = 33 [(buf.validate.field).string.min_len = 2, (buf.validate.field).ignore = IGNORE_IF_ZERO_VALUE];
  repeated Color colors = 34 [(buf.validate.field).repeated.items.enum.in = 1];
  optional string opt = 35 [(buf.validate.field).required = true];
  oneof contact {
    option (buf.validate.oneof).required = true;
    string phone = 40;
    string mail = 41;
  }
  oneof extra {
    string a = 42;
    string b = 43;
  }
}

message Plain { string name = 1; }
"#;

    /// The folder a test's .proto is compiled from, removed on drop.
    struct TempDir(PathBuf);

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn message(name: &str) -> MessageDescriptor {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = TempDir(std::env::temp_dir().join(format!(
            "gateway-openapi-rules-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        )));
        std::fs::create_dir_all(&dir.0).unwrap();
        std::fs::write(dir.0.join("v.proto"), PROTO).unwrap();
        let loaded = load_dir(&dir.0).unwrap();
        loaded.pool.get_message_by_name(name).unwrap()
    }

    /// The Signup schema as the document writes it, with lowerCamelCase names.
    fn signup() -> Value {
        let mut schemas = Schemas::new(false, false);
        schemas.message_schema(&message("v.Signup"), &[])
    }

    fn prop<'a>(schema: &'a Value, name: &str) -> &'a Value {
        let p = &schema["properties"][name];
        assert!(!p.is_null(), "no property {name} in {schema:#}");
        p
    }

    #[test]
    fn string_lengths_pattern_const_and_in_are_keywords() {
        let s = signup();
        let name = prop(&s, "name");
        assert_eq!(
            (&name["minLength"], &name["maxLength"]),
            (&json!(3), &json!(20))
        );
        let code = prop(&s, "code");
        assert_eq!(
            (&code["minLength"], &code["maxLength"]),
            (&json!(6), &json!(6))
        );
        assert_eq!(prop(&s, "slug")["pattern"], "^[a-z]+$");
        assert_eq!(prop(&s, "kind")["const"], "user");
        let plan = prop(&s, "plan");
        assert_eq!(plan["enum"], json!(["free", "pro"]));
        assert_eq!(plan["not"], json!({"enum": ["gold"]}));
    }

    #[test]
    fn string_formats_are_keywords() {
        let s = signup();
        for (field, format) in [
            ("email", "email"),
            ("uid", "uuid"),
            ("host", "hostname"),
            ("v4", "ipv4"),
            ("v6", "ipv6"),
            ("site", "uri"),
            ("link", "uri-reference"),
        ] {
            assert_eq!(prop(&s, field)["format"], format, "{field}");
        }
    }

    #[test]
    fn prefix_is_a_pattern_only_without_one() {
        let s = signup();
        assert_eq!(prop(&s, "ref")["pattern"], "^ref-");
        let both = prop(&s, "both");
        assert_eq!(both["pattern"], "^a[.]b");
        let text = both["description"].as_str().unwrap();
        assert!(text.contains("Rule: starts with \"a.\""), "{text}");
        assert!(text.contains("Rule: ends with \"z\""), "{text}");
    }

    #[test]
    fn number_bounds_const_and_in_are_keywords() {
        let s = signup();
        let age = prop(&s, "age");
        assert_eq!(age["minimum"], 18);
        assert_eq!(age["exclusiveMaximum"], 150);
        let score = prop(&s, "score");
        assert_eq!(score["exclusiveMinimum"], 0.0);
        assert_eq!(score["maximum"], 1.0);
        // finite: the "NaN"/"Infinity" strings are no longer accepted.
        assert_eq!(score["type"], "number");
        assert!(score.get("anyOf").is_none(), "{score:#}");
        assert_eq!(prop(&s, "level")["enum"], json!([1, 2, 3]));
        assert_eq!(prop(&s, "answer")["const"], 42);
        // uint32's own minimum 0 stays; the rule's maximum replaces 2^32-1.
        let small = prop(&s, "small");
        assert_eq!(
            (&small["minimum"], &small["maximum"]),
            (&json!(0), &json!(9))
        );
    }

    #[test]
    fn int64_bounds_sit_on_the_number_form_and_are_described() {
        let s = signup();
        let big = prop(&s, "big");
        assert_eq!(big["type"], json!(["string", "integer"]));
        assert_eq!(
            (&big["minimum"], &big["maximum"]),
            (&json!(1), &json!(1000))
        );
        let text = big["description"].as_str().unwrap();
        assert!(
            text.contains("Rule: >= 1 and <= 1000 (the string form too)"),
            "{text}"
        );
        // Both spellings of a 64-bit const are accepted.
        assert_eq!(prop(&s, "ticket")["enum"], json!([7, "7"]));
    }

    #[test]
    fn a_range_with_lower_above_upper_means_outside() {
        let s = signup();
        let outside = prop(&s, "outside");
        assert_eq!(
            outside["anyOf"],
            json!([{"exclusiveMinimum": 10}, {"exclusiveMaximum": 5}])
        );
        assert!(outside.get("minimum").is_none() && outside.get("exclusiveMinimum").is_none());
        assert!(outside["description"]
            .as_str()
            .unwrap()
            .contains("Rule: > 10 or < 5"));
    }

    #[test]
    fn repeated_and_map_rules_are_keywords_with_item_rules_inside() {
        let s = signup();
        let tags = prop(&s, "tags");
        assert_eq!(tags["minItems"], 1);
        assert_eq!(tags["maxItems"], 5);
        assert_eq!(tags["uniqueItems"], true);
        assert_eq!(tags["items"]["maxLength"], 10);
        let counts = prop(&s, "counts");
        assert_eq!(counts["minProperties"], 1);
        assert_eq!(counts["maxProperties"], 3);
        assert_eq!(counts["propertyNames"], json!({"minLength": 2}));
        assert_eq!(counts["additionalProperties"]["exclusiveMinimum"], 0);
        // Integer keys are strings in JSON: their rules are described.
        let by_number = prop(&s, "byNumber");
        assert!(by_number.get("propertyNames").is_none(), "{by_number:#}");
        let text = by_number["description"].as_str().unwrap();
        assert!(text.contains("Rule: each key: int32.gt = 0"), "{text}");
        let colors = prop(&s, "colors");
        assert_eq!(colors["items"]["enum"], json!(["RED", 1]));
    }

    #[test]
    fn enum_rules_list_names_and_numbers() {
        let s = signup();
        let color = prop(&s, "color");
        assert_eq!(color["$ref"], "#/components/schemas/v.Color");
        assert_eq!(
            color["enum"],
            json!(["COLOR_UNSPECIFIED", 0, "RED", 1, "GREEN", 2])
        );
        assert_eq!(color["not"], json!({"enum": ["GREEN", 2]}));
    }

    #[test]
    fn required_rules_and_field_behavior_list_the_property() {
        let s = signup();
        let required = s["required"].as_array().unwrap();
        assert!(required.contains(&json!("nickname")), "{required:?}");
        assert!(required.contains(&json!("confirm")), "{required:?}");
        assert!(required.contains(&json!("opt")), "{required:?}");
        assert_eq!(required.len(), 3, "{required:?}");
        // Required strings without presence cannot be empty (proto3 cannot
        // tell empty from unset); an `optional` one set to "" is set.
        assert_eq!(prop(&s, "nickname")["minLength"], 1);
        assert_eq!(prop(&s, "confirm")["minLength"], 1);
        assert!(prop(&s, "opt").get("minLength").is_none());
        assert_eq!(prop(&s, "serverId")["readOnly"], true);
        let password = prop(&s, "password");
        assert_eq!(password["writeOnly"], true);
        assert_eq!(password["minLength"], 8);
        assert!(prop(&s, "name").get("readOnly").is_none());
    }

    #[test]
    fn cel_and_oneof_rules_are_description_lines() {
        let s = signup();
        let text = s["description"].as_str().unwrap();
        assert!(text.contains("Rule: confirm must equal password"), "{text}");
        assert!(
            text.contains("Rule: this.age > 20 || this.plan == 'free'"),
            "{text}"
        );
        assert!(
            text.contains("Rule: exactly one of email, slug is set."),
            "{text}"
        );
        assert!(
            text.contains("`contact`: exactly one of phone, mail"),
            "{text}"
        );
        assert!(text.contains("`extra`: at most one of a, b"), "{text}");
        let note = prop(&s, "note")["description"].as_str().unwrap();
        assert!(note.contains("Rule: note must not shout"), "{note}");
        let ttl = prop(&s, "ttl")["description"].as_str().unwrap();
        assert!(ttl.contains("Rule: duration.lte = 60s"), "{ttl}");
    }

    #[test]
    fn ignore_always_writes_nothing_and_if_zero_says_so() {
        let s = signup();
        let ignored = prop(&s, "ignored");
        assert_eq!(ignored, &json!({"type": "string"}));
        let maybe = prop(&s, "maybe");
        assert_eq!(maybe["minLength"], 2);
        assert!(maybe["description"]
            .as_str()
            .unwrap()
            .contains("the zero value (empty, 0, false) is accepted"));
    }

    #[test]
    fn a_message_without_rules_is_unchanged() {
        let mut schemas = Schemas::new(false, false);
        let plain = schemas.message_schema(&message("v.Plain"), &[]);
        assert_eq!(
            plain,
            json!({"type": "object", "properties": {"name": {"type": "string"}}})
        );
    }
}
