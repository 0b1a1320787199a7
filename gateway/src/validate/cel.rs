//! CEL rules: `(buf.validate.field).cel`, `(buf.validate.message).cel`
//! and their `cel_expression` shorthand, compiled when the snapshot is
//! built, evaluated on the decoded message (the only part of validation
//! that decodes one).
//!
//! An expression sees `this`: the field's value (a list, a map, one
//! element for `items`/`keys`/`values` rules) or the message, as a CEL map
//! of its fields by proto name (scalars always, message and `optional`
//! fields only when set, so `has(this.x)` works for them). It returns a
//! bool (false: the rule's `message`) or a string (non-empty: the
//! violation's text). Besides CEL's standard functions, protovalidate's
//! extensions that rules commonly use are there: `isEmail`, `isHostname`,
//! `isIp` (with an optional version), `isUri`, `isUriRef`, `isNan`,
//! `isInf` and `unique`.

use std::sync::Arc;

use cel::extractors::{Arguments, This};
use cel::objects::{Key, Map};
use prost_reflect::{DynamicMessage, MapKey, Value};

use super::rules::{is_email, is_hostname, is_uri};
use super::{MessagePlan, Shape};

#[cfg(test)]
mod tests {
    #[test]
    fn field_reads_are_taken_only_from_this_dot_field() {
        let reads = |e: &str| super::field_reads(e);
        assert_eq!(
            reads("this.min <= this.max && this.min > 0"),
            Some(vec!["min".to_owned(), "max".to_owned()])
        );
        assert_eq!(
            reads("has(this.a) || thistle.b"),
            Some(vec!["a".to_owned()])
        );
        assert_eq!(reads("this.size() > 0"), None);
        assert_eq!(reads("this == 'x'"), None);
        assert_eq!(reads("'this is' + this.a"), None);
        assert_eq!(reads("this['a']"), None);
    }
}

/// One compiled CEL rule.
pub(super) struct Rule {
    id: String,
    message: String,
    program: cel::Program,
    /// The fields the expression reads when it only ever reads
    /// `this.<field>`: a message rule then converts those fields alone
    /// instead of the whole message (most rules compare two or three).
    reads: Option<Vec<String>>,
}

impl Rule {
    pub fn compile(id: String, message: String, expression: &str) -> Result<Rule, String> {
        let program = cel::Program::compile(expression).map_err(|e| {
            e.errors
                .iter()
                .map(|e| e.msg.clone())
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        Ok(Rule {
            id,
            message,
            program,
            reads: field_reads(expression),
        })
    }

    /// The violation's text when the expression returned false.
    fn describe(&self) -> String {
        if !self.message.is_empty() {
            self.message.clone()
        } else {
            format!("rule \"{}\" is not met", self.id)
        }
    }
}

/// The `<field>` of every `this.<field>` in `expression`, or `None` when
/// `this` also appears otherwise (alone, in a string, as `this[...]`, in
/// a call `this.f()`):
/// a conservative reading of the text, so a miss only costs speed.
fn field_reads(expression: &str) -> Option<Vec<String>> {
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let b = expression.as_bytes();
    let mut reads = Vec::new();
    let mut from = 0;
    while let Some(at) = expression[from..].find("this") {
        let start = from + at;
        let end = start + 4;
        from = end;
        if (start > 0 && (ident(b[start - 1]) || b[start - 1] == b'.'))
            || b.get(end).is_some_and(|c| ident(*c))
        {
            // Part of another name (`thistle`, `x.this`).
            continue;
        }
        if b.get(end) != Some(&b'.') {
            return None;
        }
        let name_end = b[end + 1..]
            .iter()
            .position(|c| !ident(*c))
            .map_or(b.len(), |n| end + 1 + n);
        let name = &expression[end + 1..name_end];
        // `this.size()` is a call on the message, not a field read.
        if name.is_empty() || expression[name_end..].trim_start().starts_with('(') {
            return None;
        }
        if !reads.iter().any(|r| r == name) {
            reads.push(name.to_owned());
        }
    }
    Some(reads)
}

thread_local! {
    /// The functions every evaluation sees, registered once per thread
    /// (the standard library's setup is not free); each evaluation adds
    /// `this` in a scope of its own.
    static ROOT: cel::Context<'static, 'static> = root();
}

fn root() -> cel::Context<'static, 'static> {
    let mut c = cel::Context::default();
    // Names the standard library already declares are refused; none of
    // these is one, and a later crate version that adds one keeps its own.
    let _ = c.add_function("isEmail", |This(s): This<Arc<String>>| is_email(&s));
    let _ = c.add_function("isHostname", |This(s): This<Arc<String>>| is_hostname(&s));
    let _ = c.add_function(
        "isIp",
        |This(s): This<Arc<String>>, Arguments(args): Arguments| match args.first() {
            Some(cel::Value::Int(4)) => s.parse::<std::net::Ipv4Addr>().is_ok(),
            Some(cel::Value::Int(6)) => s.parse::<std::net::Ipv6Addr>().is_ok(),
            Some(cel::Value::Int(0)) | None => s.parse::<std::net::IpAddr>().is_ok(),
            Some(_) => false,
        },
    );
    let _ = c.add_function("isUri", |This(s): This<Arc<String>>| is_uri(&s, false));
    let _ = c.add_function("isUriRef", |This(s): This<Arc<String>>| is_uri(&s, true));
    let _ = c.add_function("isNan", |This(x): This<f64>| x.is_nan());
    let _ = c.add_function("isInf", |This(x): This<f64>| x.is_infinite());
    let _ = c.add_function("unique", |This(list): This<Arc<Vec<cel::Value>>>| {
        list.iter()
            .enumerate()
            .all(|(i, a)| !list[..i].iter().any(|b| a == b))
    });
    c
}

/// Where the CEL pass reports: the path it is at and what it finds (the
/// wire walk, which holds the violations of the whole request).
pub(super) trait Report<'p> {
    fn push(&mut self, description: String);
    fn enter_field(&mut self, name: &'p str);
    fn enter_index(&mut self, i: usize);
    fn enter_key(&mut self, key: String);
    fn leave(&mut self);
}

/// Evaluates `rule` on `this`; a violation goes to `walk`.
fn eval<'p>(walk: &mut impl Report<'p>, rule: &Rule, this: cel::Value) {
    let result = ROOT.with(|root| {
        let mut scope = root.new_inner_scope();
        scope.add_variable_from_value("this", this);
        rule.program.execute(&scope)
    });
    match result {
        Ok(cel::Value::Bool(true)) => {}
        Ok(cel::Value::Bool(false)) => walk.push(rule.describe()),
        Ok(cel::Value::String(s)) if s.is_empty() => {}
        Ok(cel::Value::String(s)) => walk.push(s.to_string()),
        Ok(other) => walk.push(format!(
            "rule \"{}\" returned {other:?}; a rule returns a bool or a string",
            rule.id
        )),
        Err(e) => walk.push(format!("rule \"{}\" could not be evaluated: {e}", rule.id)),
    }
}

/// The CEL rules of one message: its fields', their elements', its own.
pub(super) fn message_pass<'p>(
    walk: &mut impl Report<'p>,
    plan: &'p MessagePlan,
    msg: &DynamicMessage,
) {
    for f in plan.fields.iter().filter(|f| f.has_cel()) {
        let set = msg.has_field(&f.field);
        // Unset fields with presence, and zero values the field ignores,
        // are not checked (as by the wire walk).
        if !set && (f.ignore_zero || matches!(f.shape, Shape::Single { presence: true })) {
            continue;
        }
        let value = msg.get_field(&f.field);
        walk.enter_field(&f.name);
        if !f.cel.is_empty() {
            let this = to_cel(&value);
            for rule in &f.cel {
                eval(walk, rule, this.clone());
            }
        }
        match (&*value, f.shape) {
            (Value::List(items), Shape::List) if !f.value.cel.is_empty() => {
                for (i, item) in items.iter().enumerate() {
                    if f.value.ignore_zero && is_default(item) {
                        continue;
                    }
                    walk.enter_index(i);
                    let this = to_cel(item);
                    for rule in &f.value.cel {
                        eval(walk, rule, this.clone());
                    }
                    walk.leave();
                }
            }
            (Value::Map(entries), Shape::Map)
                if !f.map_key.cel.is_empty() || !f.map_value.cel.is_empty() =>
            {
                for (k, v) in entries {
                    walk.enter_key(key_text(k));
                    if !(f.map_key.ignore_zero && is_default_key(k)) {
                        let this = key_to_cel(k);
                        for rule in &f.map_key.cel {
                            eval(walk, rule, this.clone());
                        }
                    }
                    if !(f.map_value.ignore_zero && is_default(v)) {
                        let this = to_cel(v);
                        for rule in &f.map_value.cel {
                            eval(walk, rule, this.clone());
                        }
                    }
                    walk.leave();
                }
            }
            _ => {}
        }
        walk.leave();
    }
    if !plan.cel.is_empty() {
        let mut whole = None;
        for rule in &plan.cel {
            let this = match &rule.reads {
                Some(fields) => message_fields_to_cel(msg, fields),
                None => whole.get_or_insert_with(|| message_to_cel(msg)).clone(),
            };
            eval(walk, rule, this);
        }
    }
}

fn is_default(v: &Value) -> bool {
    match v {
        Value::Bool(b) => !b,
        Value::I32(x) | Value::EnumNumber(x) => *x == 0,
        Value::I64(x) => *x == 0,
        Value::U32(x) => *x == 0,
        Value::U64(x) => *x == 0,
        Value::F32(x) => *x == 0.0,
        Value::F64(x) => *x == 0.0,
        Value::String(s) => s.is_empty(),
        Value::Bytes(b) => b.is_empty(),
        Value::List(l) => l.is_empty(),
        Value::Map(m) => m.is_empty(),
        Value::Message(_) => false,
    }
}

fn is_default_key(k: &MapKey) -> bool {
    match k {
        MapKey::Bool(b) => !b,
        MapKey::I32(x) => *x == 0,
        MapKey::I64(x) => *x == 0,
        MapKey::U32(x) => *x == 0,
        MapKey::U64(x) => *x == 0,
        MapKey::String(s) => s.is_empty(),
    }
}

fn key_text(k: &MapKey) -> String {
    match k {
        MapKey::String(s) => serde_json::to_string(s).unwrap_or_default(),
        MapKey::Bool(b) => b.to_string(),
        MapKey::I32(x) => x.to_string(),
        MapKey::I64(x) => x.to_string(),
        MapKey::U32(x) => x.to_string(),
        MapKey::U64(x) => x.to_string(),
    }
}

fn key_to_cel(k: &MapKey) -> cel::Value {
    match k {
        MapKey::Bool(b) => cel::Value::Bool(*b),
        MapKey::I32(x) => cel::Value::Int(*x as i64),
        MapKey::I64(x) => cel::Value::Int(*x),
        MapKey::U32(x) => cel::Value::UInt(*x as u64),
        MapKey::U64(x) => cel::Value::UInt(*x),
        MapKey::String(s) => cel::Value::String(Arc::new(s.clone())),
    }
}

fn key_of(k: &MapKey) -> Key {
    match k {
        MapKey::Bool(b) => Key::Bool(*b),
        MapKey::I32(x) => Key::Int(*x as i64),
        MapKey::I64(x) => Key::Int(*x),
        MapKey::U32(x) => Key::Uint(*x as u64),
        MapKey::U64(x) => Key::Uint(*x),
        MapKey::String(s) => Key::String(Arc::new(s.clone())),
    }
}

/// A protobuf value as CEL sees it; enums as their numbers.
pub(super) fn to_cel(v: &Value) -> cel::Value {
    match v {
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::I32(x) | Value::EnumNumber(x) => cel::Value::Int(*x as i64),
        Value::I64(x) => cel::Value::Int(*x),
        Value::U32(x) => cel::Value::UInt(*x as u64),
        Value::U64(x) => cel::Value::UInt(*x),
        Value::F32(x) => cel::Value::Float(*x as f64),
        Value::F64(x) => cel::Value::Float(*x),
        Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        Value::Bytes(b) => cel::Value::Bytes(Arc::new(b.to_vec())),
        Value::List(l) => cel::Value::List(Arc::new(l.iter().map(to_cel).collect())),
        Value::Map(m) => cel::Value::Map(Map {
            map: Arc::new(m.iter().map(|(k, v)| (key_of(k), to_cel(v))).collect()),
        }),
        Value::Message(m) => message_to_cel(m),
    }
}

/// The named fields of a message as a CEL map (see [`message_to_cel`]).
fn message_fields_to_cel(m: &DynamicMessage, names: &[String]) -> cel::Value {
    let desc = prost_reflect::ReflectMessage::descriptor(m);
    let mut out = std::collections::HashMap::with_capacity(names.len());
    for f in names.iter().filter_map(|n| desc.get_field_by_name(n)) {
        if f.supports_presence() && !m.has_field(&f) {
            continue;
        }
        out.insert(
            Key::String(Arc::new(f.name().to_owned())),
            to_cel(&m.get_field(&f)),
        );
    }
    cel::Value::Map(Map { map: Arc::new(out) })
}

/// A message as a CEL map of its fields by proto name.
pub(super) fn message_to_cel(m: &DynamicMessage) -> cel::Value {
    let desc = prost_reflect::ReflectMessage::descriptor(m);
    let mut out = std::collections::HashMap::new();
    for f in desc.fields() {
        if f.supports_presence() && !m.has_field(&f) {
            continue;
        }
        out.insert(
            Key::String(Arc::new(f.name().to_owned())),
            to_cel(&m.get_field(&f)),
        );
    }
    cel::Value::Map(Map { map: Arc::new(out) })
}
