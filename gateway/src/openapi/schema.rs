//! JSON Schemas (OpenAPI 3.1 is JSON Schema 2020-12) for protobuf messages
//! as the gateway writes and reads them: proto3 JSON, lowerCamelCase names
//! (or proto names), 64-bit integers as strings, enums by name, well-known
//! types in their JSON forms. Descriptions come from .proto comments.
//!
//! One schema serves requests and replies, so each keyword holds for both:
//! - `additionalProperties: false` when the gateway refuses unknown fields
//!   (`unknown_fields = "reject"`); replies never carry fields outside the
//!   descriptor either. The gateway also reads the other spelling of a name
//!   (`page_count` for `pageCount`), which the schema does not list: it
//!   describes what replies use, and is stricter than reads, never looser.
//! - 64-bit integers are written as strings; the gateway reads a string or a
//!   number, so the type is both, with the range (numbers) and the pattern
//!   (strings) of the field's type.
//! - Enums are open in proto3: a name, or a number (a value without a name
//!   is written as its number). Floats may be "NaN" or "(-)Infinity".
//! - `google.api.field_behavior`: `REQUIRED` fields are `required`,
//!   `OUTPUT_ONLY` ones `readOnly`, `INPUT_ONLY` ones `writeOnly`. proto3
//!   JSON leaves out fields holding their default, so `required` holds for
//!   replies only as far as the backend keeps a required field non-empty, as
//!   the annotation's own definition (AIP-203) asks.
//! - protovalidate (`buf.validate`) rules become keywords where JSON Schema
//!   has one, else description lines (see [`super::rules`]).

use std::collections::{BTreeMap, HashMap};

use prost_reflect::{EnumDescriptor, FieldDescriptor, FileDescriptor, Kind, MessageDescriptor};
use serde_json::{json, Map, Value};

use super::rules;

/// Collects component schemas while operations refer to them.
pub struct Schemas {
    pub components: BTreeMap<String, Value>,
    comments: Comments,
    proto_names: bool,
    /// `unknown_fields = "reject"`: objects are closed.
    closed: bool,
}

/// `google.api.FieldBehavior` values this document uses.
const REQUIRED: i32 = 2;
const OUTPUT_ONLY: i32 = 3;
const INPUT_ONLY: i32 = 4;

impl Schemas {
    pub fn new(proto_names: bool, closed: bool) -> Schemas {
        Schemas {
            components: BTreeMap::new(),
            comments: Comments::default(),
            proto_names,
            closed,
        }
    }

    pub fn comments(&mut self) -> &mut Comments {
        &mut self.comments
    }

    /// The property name a field has in JSON replies.
    pub fn name_of(&self, f: &FieldDescriptor) -> String {
        if self.proto_names {
            f.name().to_owned()
        } else {
            f.json_name().to_owned()
        }
    }

    /// A reference to (or, for well-known types, the inline form of) a message.
    pub fn message(&mut self, m: &MessageDescriptor) -> Value {
        if let Some(wkt) = well_known(m) {
            return wkt;
        }
        let name = m.full_name().to_owned();
        if !self.components.contains_key(&name) {
            // Placeholder first: recursive messages refer to themselves.
            self.components.insert(name.clone(), Value::Null);
            let schema = self.message_schema(m, &[]);
            self.components.insert(name.clone(), schema);
        }
        json!({ "$ref": format!("#/components/schemas/{name}") })
    }

    /// The object schema of `m`, leaving out the top-level fields `skip`
    /// (path variables, bound elsewhere).
    pub fn message_schema(&mut self, m: &MessageDescriptor, skip: &[u32]) -> Value {
        let mut props = Map::new();
        let mut required = Vec::new();
        for f in m.fields() {
            if skip.contains(&f.number()) {
                continue;
            }
            let (mut schema, rules_required) = self.field_and_required(&f);
            if let Some(text) = self.comments.of_field(&f) {
                schema = prepend_description(schema, text);
            }
            let behavior = field_behavior(&f);
            if let Value::Object(o) = &mut schema {
                if behavior.contains(&OUTPUT_ONLY) {
                    o.insert("readOnly".into(), Value::Bool(true));
                }
                if behavior.contains(&INPUT_ONLY) {
                    o.insert("writeOnly".into(), Value::Bool(true));
                }
            }
            if rules_required {
                required.push(Value::String(self.name_of(&f)));
                // protovalidate's `required` on a field with presence
                // (`optional`, a message) asks for it to be set, which an
                // empty string is; without presence, for a non-zero value.
                if behavior.contains(&REQUIRED) || !f.supports_presence() {
                    non_empty(&f, &mut schema);
                }
            }
            props.insert(self.name_of(&f), schema);
        }
        let mut out = json!({ "type": "object", "properties": props });
        if !required.is_empty() {
            out["required"] = Value::Array(required);
        }
        if self.closed {
            out["additionalProperties"] = Value::Bool(false);
        }
        let mut description = self.comments.of_message(m).unwrap_or_default();
        let oneofs: Vec<String> = m
            .oneofs()
            .filter(|o| !o.is_synthetic())
            .map(|o| {
                let names: Vec<String> = o.fields().map(|f| self.name_of(&f)).collect();
                // protovalidate's `(buf.validate.oneof).required`.
                let how = if rules::oneof_required(&o) {
                    "exactly one"
                } else {
                    "at most one"
                };
                format!("`{}`: {how} of {}", o.name(), names.join(", "))
            })
            .collect();
        if !oneofs.is_empty() {
            if !description.is_empty() {
                description.push_str("\n\n");
            }
            description.push_str("Oneof groups: ");
            description.push_str(&oneofs.join("; "));
            description.push('.');
        }
        let notes = rules::message_notes(m, |f| self.name_of(f));
        if !notes.is_empty() {
            if !description.is_empty() {
                description.push_str("\n\n");
            }
            description.push_str(&notes.join("\n"));
        }
        if !description.is_empty() {
            out["description"] = Value::String(description);
        }
        out
    }

    /// A field's schema: its value schema, as an array or map when
    /// repeated, with the keywords of its protovalidate rules.
    pub fn field(&mut self, f: &FieldDescriptor) -> Value {
        self.field_and_required(f).0
    }

    /// [`Schemas::field`], and whether the field must be set: REQUIRED by
    /// `google.api.field_behavior` or `(buf.validate.field).required`.
    pub fn field_and_required(&mut self, f: &FieldDescriptor) -> (Value, bool) {
        let mut schema = self.bare_field(f);
        let rules = rules::apply_field(f, &mut schema);
        let required = rules.required || field_behavior(f).contains(&REQUIRED);
        (schema, required)
    }

    /// A field's schema without its rules.
    fn bare_field(&mut self, f: &FieldDescriptor) -> Value {
        if f.is_map() {
            let Kind::Message(entry) = f.kind() else {
                return json!({});
            };
            let value = self.kind(&entry.map_entry_value_field().kind());
            return json!({ "type": "object", "additionalProperties": value });
        }
        let one = self.kind(&f.kind());
        if f.is_list() {
            json!({ "type": "array", "items": one })
        } else {
            one
        }
    }

    pub fn kind(&mut self, kind: &Kind) -> Value {
        match kind {
            Kind::Double => float("double"),
            Kind::Float => float("float"),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
                json!({"type": "integer", "format": "int32"})
            }
            Kind::Uint32 | Kind::Fixed32 => {
                json!({"type": "integer", "format": "int64", "minimum": 0, "maximum": 4294967295u64})
            }
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => int64(),
            Kind::Uint64 | Kind::Fixed64 => uint64(),
            Kind::Bool => json!({"type": "boolean"}),
            Kind::String => json!({"type": "string"}),
            Kind::Bytes => json!({"type": "string", "contentEncoding": "base64"}),
            Kind::Enum(e) => self.enumeration(e),
            Kind::Message(m) => self.message(m),
        }
    }

    fn enumeration(&mut self, e: &EnumDescriptor) -> Value {
        if e.full_name() == "google.protobuf.NullValue" {
            return json!({"type": "null"});
        }
        let name = e.full_name().to_owned();
        if !self.components.contains_key(&name) {
            let names: Vec<String> = e.values().map(|v| v.name().to_owned()).collect();
            // proto3 enums are open: a number the enum does not name is
            // kept, and written as that number; numbers are read too.
            let mut schema = json!({ "anyOf": [
                { "type": "string", "enum": names },
                { "type": "integer", "format": "int32" }
            ]});
            let mut lines: Vec<String> = Vec::new();
            if let Some(c) = self.comments.of(&e.parent_file(), e.path()) {
                lines.push(c);
            }
            lines.push("By name; a value without a name is written as its number.".to_owned());
            for v in e.values() {
                if let Some(c) = self.comments.of(&v.parent_file(), v.path()) {
                    lines.push(format!("- `{}`: {}", v.name(), c.replace('\n', " ")));
                }
            }
            schema["description"] = Value::String(lines.join("\n"));
            self.components.insert(name.clone(), schema);
        }
        json!({ "$ref": format!("#/components/schemas/{name}") })
    }
}

/// proto3 JSON writes the non-finite values as strings, and reads them so.
fn float(format: &str) -> Value {
    json!({
        "anyOf": [
            { "type": "number" },
            { "type": "string", "enum": ["NaN", "Infinity", "-Infinity"] }
        ],
        "format": format
    })
}

/// proto3 JSON writes 64-bit integers as strings (JavaScript numbers lose
/// precision past 2^53) and reads either form. `pattern` constrains only the
/// string form, `minimum`/`maximum` only the number form.
fn int64() -> Value {
    json!({
        "type": ["string", "integer"],
        "format": "int64",
        "pattern": "^-?[0-9]+$",
        "minimum": i64::MIN,
        "maximum": i64::MAX
    })
}

fn uint64() -> Value {
    json!({
        "type": ["string", "integer"],
        "format": "uint64",
        "pattern": "^[0-9]+$",
        "minimum": 0,
        "maximum": u64::MAX
    })
}

/// A required field holding its default is indistinguishable from an unset
/// one in proto3 (and left out of replies), so a required string, list or
/// map must be non-empty.
fn non_empty(f: &FieldDescriptor, schema: &mut Value) {
    let Value::Object(o) = schema else { return };
    let key = if f.is_map() {
        "minProperties"
    } else if f.is_list() {
        "minItems"
    } else if matches!(f.kind(), Kind::String | Kind::Bytes) {
        "minLength"
    } else {
        return;
    };
    o.insert(key.into(), json!(1));
}

/// The field's `google.api.field_behavior` values (empty without one).
fn field_behavior(f: &FieldDescriptor) -> Vec<i32> {
    let Some(ext) = f
        .parent_pool()
        .get_extension_by_name("google.api.field_behavior")
    else {
        return Vec::new();
    };
    let options = f.options();
    if !options.has_extension(&ext) {
        return Vec::new();
    }
    match &*options.get_extension(&ext) {
        prost_reflect::Value::List(values) => {
            values.iter().filter_map(|v| v.as_enum_number()).collect()
        }
        _ => Vec::new(),
    }
}

/// Puts `text` (a field's comment) before the description the rules wrote.
fn prepend_description(schema: Value, text: String) -> Value {
    let rules = schema
        .get("description")
        .and_then(|d| d.as_str())
        .map(str::to_owned);
    match rules {
        Some(r) => with_description(schema, format!("{text}\n\n{r}")),
        None => with_description(schema, text),
    }
}

/// `$ref` may have sibling keywords in OpenAPI 3.1 (JSON Schema 2020-12).
pub fn with_description(mut schema: Value, text: String) -> Value {
    if let Value::Object(o) = &mut schema {
        o.insert("description".into(), Value::String(text));
    }
    schema
}

/// The JSON forms of the well-known types (protobuf's JSON mapping).
fn well_known(m: &MessageDescriptor) -> Option<Value> {
    let name = m.full_name();
    if !name.starts_with("google.protobuf.") {
        return None;
    }
    Some(match name {
        "google.protobuf.Timestamp" => {
            json!({"type": "string", "format": "date-time", "description": "RFC 3339, e.g. 2024-01-31T12:00:00Z"})
        }
        "google.protobuf.Duration" => {
            json!({"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$", "description": "Seconds with an `s` suffix, e.g. 1.5s"})
        }
        "google.protobuf.FieldMask" => {
            json!({"type": "string", "description": "Comma-separated field paths in lowerCamelCase, e.g. title,author.name"})
        }
        "google.protobuf.Struct" => json!({"type": "object", "additionalProperties": true}),
        "google.protobuf.Value" => json!({"description": "Any JSON value"}),
        "google.protobuf.ListValue" => json!({"type": "array", "items": {}}),
        "google.protobuf.Empty" => json!({"type": "object", "properties": {}}),
        "google.protobuf.Any" => json!({
            "type": "object",
            "properties": {"@type": {"type": "string", "description": "type.googleapis.com/<message full name>"}},
            "required": ["@type"],
            "additionalProperties": true
        }),
        "google.protobuf.DoubleValue" => float("double"),
        "google.protobuf.FloatValue" => float("float"),
        "google.protobuf.Int64Value" => int64(),
        "google.protobuf.UInt64Value" => uint64(),
        "google.protobuf.Int32Value" => json!({"type": "integer", "format": "int32"}),
        "google.protobuf.UInt32Value" => {
            json!({"type": "integer", "format": "int64", "minimum": 0, "maximum": 4294967295u64})
        }
        "google.protobuf.BoolValue" => json!({"type": "boolean"}),
        "google.protobuf.StringValue" => json!({"type": "string"}),
        "google.protobuf.BytesValue" => json!({"type": "string", "contentEncoding": "base64"}),
        _ => return None,
    })
}

/// Leading (else trailing) comments from each file's SourceCodeInfo,
/// indexed by descriptor path. Files compiled without source info have none.
#[derive(Default)]
pub struct Comments {
    files: HashMap<String, HashMap<Vec<i32>, String>>,
}

impl Comments {
    pub fn of(&mut self, file: &FileDescriptor, path: &[i32]) -> Option<String> {
        let index = self
            .files
            .entry(file.name().to_owned())
            .or_insert_with(|| index_file(file));
        index.get(path).cloned()
    }

    pub fn of_message(&mut self, m: &MessageDescriptor) -> Option<String> {
        self.of(&m.parent_file(), m.path())
    }

    pub fn of_field(&mut self, f: &FieldDescriptor) -> Option<String> {
        self.of(&f.parent_file(), f.path())
    }
}

fn index_file(file: &FileDescriptor) -> HashMap<Vec<i32>, String> {
    let mut out = HashMap::new();
    let Some(info) = &file.file_descriptor_proto().source_code_info else {
        return out;
    };
    for loc in &info.location {
        let raw = loc
            .leading_comments
            .as_deref()
            .filter(|c| !c.trim().is_empty())
            .or(loc.trailing_comments.as_deref());
        let Some(raw) = raw else { continue };
        let text = raw
            .lines()
            .map(str::trim)
            .collect::<Vec<_>>()
            .join("\n")
            .trim()
            .to_owned();
        if !text.is_empty() {
            out.insert(loc.path.clone(), text);
        }
    }
    out
}
