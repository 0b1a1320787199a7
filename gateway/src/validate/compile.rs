//! Reading `buf.validate` options into [`MessagePlan`]s: once per request
//! message type, when the snapshot is built.
//!
//! The options are read by name through prost-reflect, so the gateway
//! follows whichever validate.proto the descriptors were compiled with.
//! A rule that cannot be compiled (a bad regex or CEL expression, rules
//! of one type on a field of another) is an error naming the message, the
//! field and the rule; a rule the gateway does not check is a warning.

use std::collections::HashMap;

use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, Value};

use super::rules::{
    Bound, BytesRules, EnumRules, Format, Nanos, NumRules, StringRules, TimestampRules, ValueRules,
};
use super::{cel, Elem, Ext, FieldPlan, MessageOneof, MessagePlan, Shape, Validator};

#[derive(Default)]
pub(super) struct Problems {
    /// (the .proto file of the message, the problem)
    pub errors: Vec<(String, String)>,
    pub warnings: Vec<(String, String)>,
}

/// `Ignore` values (validate.proto).
const IGNORE_IF_ZERO_VALUE: i32 = 1;
const IGNORE_ALWAYS: i32 = 3;

/// The validator of `desc`, `None` when its tree has no rules or a rule
/// did not compile.
pub(super) fn build(
    ext: &Ext,
    desc: &MessageDescriptor,
    problems: &mut Problems,
) -> Option<Validator> {
    let mut b = Builder {
        ext,
        plans: Vec::new(),
        ids: HashMap::new(),
        own: Vec::new(),
        oneof_numbers: Vec::new(),
        problems,
        failed: false,
    };
    let root = b.message(desc);
    if b.failed {
        return None;
    }
    let Builder {
        mut plans,
        own,
        oneof_numbers,
        ..
    } = b;
    // A message has rules when it or a message below it does; cycles
    // settle in as many rounds as the longest chain.
    let mut live = own;
    loop {
        let mut changed = false;
        for i in 0..plans.len() {
            if live[i] {
                continue;
            }
            let below = plans[i].fields.iter().any(|f| {
                [&f.value, &f.map_value]
                    .iter()
                    .any(|e| e.message.is_some_and(|m| live[m]))
            });
            if below {
                live[i] = true;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    if !live[root] {
        return None;
    }
    for (plan, tracked) in plans.iter_mut().zip(oneof_numbers) {
        for f in &mut plan.fields {
            for e in [&mut f.value, &mut f.map_value] {
                if e.message.is_some_and(|m| !live[m]) {
                    e.message = None;
                }
            }
        }
        plan.fields
            .retain(|f| has_checks(f) || tracked.contains(&f.number));
        plan.fields.sort_by_key(|f| f.number);
        plan.numbers = plan.fields.iter().map(|f| f.number).collect();
        let index = |n: u32| plan.fields.iter().position(|f| f.number == n);
        let mut required = Vec::new();
        for (name, numbers) in std::mem::take(&mut plan.required_oneofs_numbers) {
            required.push((name, numbers.iter().filter_map(|n| index(*n)).collect()));
        }
        plan.required_oneofs = required;
        for o in &mut plan.message_oneofs {
            o.fields = o.numbers.iter().filter_map(|n| index(*n)).collect();
        }
        plan.dynamic = !plan.cel.is_empty() || plan.fields.iter().any(FieldPlan::has_cel);
    }
    Some(Validator { plans, root })
}

fn has_checks(f: &FieldPlan) -> bool {
    f.required
        || f.min_items.is_some()
        || f.max_items.is_some()
        || f.unique
        || !f.cel.is_empty()
        || !f.value.is_empty()
        || !f.map_key.is_empty()
        || !f.map_value.is_empty()
}

struct Builder<'a> {
    ext: &'a Ext,
    plans: Vec<MessagePlan>,
    ids: HashMap<String, usize>,
    /// Whether each plan carries rules of its own.
    own: Vec<bool>,
    /// Per plan, the field numbers oneof rules refer to (kept even
    /// without rules of their own).
    oneof_numbers: Vec<Vec<u32>>,
    problems: &'a mut Problems,
    failed: bool,
}

/// Where a rule is, for errors: the message, the field, the rule's path.
struct At<'a> {
    file: &'a str,
    message: &'a str,
    field: &'a str,
    rule: String,
}

impl At<'_> {
    fn text(&self, what: &str) -> String {
        if self.field.is_empty() {
            format!("{}: {}: {what}", self.message, self.rule)
        } else {
            format!(
                "{} field {}: {}: {what}",
                self.message, self.field, self.rule
            )
        }
    }

    fn sub(&self, name: &str) -> At<'_> {
        At {
            file: self.file,
            message: self.message,
            field: self.field,
            rule: format!("{}.{name}", self.rule),
        }
    }
}

impl Builder<'_> {
    fn error(&mut self, at: &At<'_>, what: &str) {
        self.failed = true;
        self.problems
            .errors
            .push((at.file.to_owned(), at.text(what)));
    }

    fn warn(&mut self, at: &At<'_>, what: &str) {
        self.problems
            .warnings
            .push((at.file.to_owned(), at.text(what)));
    }

    /// The plan of `desc`, compiled once (a cycle finds the placeholder).
    fn message(&mut self, desc: &MessageDescriptor) -> usize {
        if let Some(id) = self.ids.get(desc.full_name()) {
            return *id;
        }
        let id = self.plans.len();
        self.ids.insert(desc.full_name().to_owned(), id);
        self.plans.push(MessagePlan {
            desc: desc.clone(),
            fields: Vec::new(),
            numbers: Vec::new(),
            required_oneofs: Vec::new(),
            required_oneofs_numbers: Vec::new(),
            message_oneofs: Vec::new(),
            cel: Vec::new(),
            dynamic: false,
        });
        self.own.push(false);
        self.oneof_numbers.push(Vec::new());
        let name = desc.full_name().to_owned();
        let file = desc.parent_file().name().to_owned();
        let mut own = false;
        let mut fields = Vec::new();
        for f in desc.fields() {
            let plan = self.field(&file, &name, &f);
            own |= has_own_checks(&plan);
            fields.push(plan);
        }
        let required_oneofs = self.required_oneofs(desc);
        let at = At {
            file: &file,
            message: &name,
            field: "",
            rule: "(buf.validate.message)".to_owned(),
        };
        let (message_cel, message_oneofs) = self.message_rules(&at, desc);
        let tracked: Vec<u32> = required_oneofs
            .iter()
            .flat_map(|(_, n)| n)
            .chain(message_oneofs.iter().flat_map(|o| &o.numbers))
            .copied()
            .collect();
        own |= !required_oneofs.is_empty();
        own |= !message_cel.is_empty() || !message_oneofs.is_empty();
        let plan = &mut self.plans[id];
        plan.fields = fields;
        plan.required_oneofs_numbers = required_oneofs;
        plan.message_oneofs = message_oneofs;
        plan.cel = message_cel;
        self.own[id] = own;
        self.oneof_numbers[id] = tracked;
        id
    }

    /// The oneofs with `(buf.validate.oneof).required`: name, field numbers.
    fn required_oneofs(&self, desc: &MessageDescriptor) -> Vec<(String, Vec<u32>)> {
        let Some(ext) = &self.ext.oneof else {
            return Vec::new();
        };
        desc.oneofs()
            .filter(|o| !o.is_synthetic() && o.options().has_extension(ext))
            .filter(|o| {
                o.options()
                    .get_extension(ext)
                    .as_message()
                    .is_some_and(|r| bool_field(r, "required"))
            })
            .map(|o| {
                (
                    o.name().to_owned(),
                    o.fields().map(|f| f.number()).collect(),
                )
            })
            .collect()
    }

    /// `(buf.validate.message)`: its CEL rules and its oneof rules.
    fn message_rules(
        &mut self,
        at: &At<'_>,
        desc: &MessageDescriptor,
    ) -> (Vec<cel::Rule>, Vec<MessageOneof>) {
        let Some(ext) = self.ext.message.clone() else {
            return Default::default();
        };
        let opts = desc.options();
        if !opts.has_extension(&ext) {
            return Default::default();
        }
        let rules = opts.get_extension(&ext).into_owned();
        let Some(r) = rules.as_message() else {
            return Default::default();
        };
        let cel = self.cel_rules(at, r);
        let mut oneofs = Vec::new();
        for rule in list_field(r, "oneof") {
            let Some(rule) = rule.as_message() else {
                continue;
            };
            let names: Vec<String> = list_field(rule, "fields")
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            if names.is_empty() {
                self.error(&at.sub("oneof"), "names no fields");
            }
            let mut numbers = Vec::new();
            for n in &names {
                match desc.get_field_by_name(n) {
                    Some(f) => numbers.push(f.number()),
                    None => self.error(&at.sub("oneof"), &format!("field \"{n}\" does not exist")),
                }
            }
            oneofs.push(MessageOneof {
                fields: Vec::new(),
                numbers,
                names,
                required: bool_field(rule, "required"),
            });
        }
        (cel, oneofs)
    }

    fn field(&mut self, file: &str, message: &str, f: &FieldDescriptor) -> FieldPlan {
        let shape = if f.is_map() {
            Shape::Map
        } else if f.is_list() {
            Shape::List
        } else {
            Shape::Single {
                presence: f.supports_presence(),
            }
        };
        let mut plan = FieldPlan {
            number: f.number(),
            name: f.name().to_owned(),
            kind: f.kind(),
            key_kind: match f.kind() {
                Kind::Message(m) if f.is_map() => m.map_entry_key_field().kind(),
                _ => Kind::String,
            },
            value_kind: match f.kind() {
                Kind::Message(m) if f.is_map() => m.map_entry_value_field().kind(),
                _ => Kind::String,
            },
            shape,
            field: f.clone(),
            required: false,
            ignore_zero: false,
            value: Elem::default(),
            map_key: Elem::default(),
            map_value: Elem::default(),
            min_items: None,
            max_items: None,
            unique: false,
            cel: Vec::new(),
        };
        let at = At {
            file,
            message,
            field: f.name(),
            rule: "(buf.validate.field)".to_owned(),
        };
        let opts = f.options();
        let rules = opts
            .has_extension(&self.ext.field)
            .then(|| opts.get_extension(&self.ext.field).into_owned());
        let mut ignore_always = false;
        if let Some(r) = rules.as_ref().and_then(Value::as_message) {
            plan.required = bool_field(r, "required");
            match enum_field(r, "ignore") {
                IGNORE_ALWAYS => ignore_always = true,
                IGNORE_IF_ZERO_VALUE => plan.ignore_zero = true,
                _ => {}
            }
            if ignore_always {
                plan.required = false;
            } else {
                plan.cel = self.cel_rules(&at, r);
                match shape {
                    Shape::Single { .. } => {
                        plan.value.rules = self.value_rules(&at, &f.kind(), r).map(Box::new)
                    }
                    Shape::List => self.list_rules(&at, f, r, &mut plan),
                    Shape::Map => self.map_rules(&at, f, r, &mut plan),
                }
            }
        }
        if !ignore_always {
            // The messages below: each element's, each map value's.
            match shape {
                Shape::Map => {
                    if let Kind::Message(entry) = f.kind() {
                        if let Some(value) = entry.map_entry_value_field().kind().as_message() {
                            plan.map_value.message = self.nested(value);
                        }
                    }
                }
                _ => {
                    if let Kind::Message(m) = f.kind() {
                        plan.value.message = self.nested(&m);
                    }
                }
            }
        }
        plan
    }

    /// The plan of a message below, except the well-known types, which
    /// carry no rules.
    fn nested(&mut self, m: &MessageDescriptor) -> Option<usize> {
        (m.package_name() != "google.protobuf").then(|| self.message(m))
    }

    fn list_rules(
        &mut self,
        at: &At<'_>,
        f: &FieldDescriptor,
        r: &DynamicMessage,
        plan: &mut FieldPlan,
    ) {
        if let Some(rep) = message_field(r, "repeated") {
            let at = at.sub("repeated");
            plan.min_items = u64_field(&rep, "min_items");
            plan.max_items = u64_field(&rep, "max_items");
            plan.unique = bool_field(&rep, "unique");
            if plan.unique && matches!(f.kind(), Kind::Message(_)) {
                self.error(&at.sub("unique"), "applies to scalar and enum lists only");
            }
            if let Some(items) = message_field(&rep, "items") {
                plan.value = self.elem(&at.sub("items"), &f.kind(), &items);
            }
        } else if let Some(name) = type_rule(r) {
            self.error(
                &at.sub(name),
                "rules of a single value on a repeated field: put them under repeated.items",
            );
        }
    }

    fn map_rules(
        &mut self,
        at: &At<'_>,
        f: &FieldDescriptor,
        r: &DynamicMessage,
        plan: &mut FieldPlan,
    ) {
        let Kind::Message(entry) = f.kind() else {
            return;
        };
        if let Some(map) = message_field(r, "map") {
            let at = at.sub("map");
            plan.min_items = u64_field(&map, "min_pairs");
            plan.max_items = u64_field(&map, "max_pairs");
            if let Some(keys) = message_field(&map, "keys") {
                plan.map_key =
                    self.elem(&at.sub("keys"), &entry.map_entry_key_field().kind(), &keys);
            }
            if let Some(values) = message_field(&map, "values") {
                plan.map_value = self.elem(
                    &at.sub("values"),
                    &entry.map_entry_value_field().kind(),
                    &values,
                );
            }
        } else if let Some(name) = type_rule(r) {
            self.error(
                &at.sub(name),
                "rules of a single value on a map field: use map.keys and map.values",
            );
        }
    }

    /// The rules of a list element, a map key or a map value.
    fn elem(&mut self, at: &At<'_>, kind: &Kind, r: &DynamicMessage) -> Elem {
        let mut elem = Elem::default();
        match enum_field(r, "ignore") {
            IGNORE_ALWAYS => return elem,
            IGNORE_IF_ZERO_VALUE => elem.ignore_zero = true,
            _ => {}
        }
        if bool_field(r, "required") {
            self.warn(
                &at.sub("required"),
                "has no meaning on an element; not checked",
            );
        }
        elem.rules = self.value_rules(at, kind, r).map(Box::new);
        elem.cel = self.cel_rules(at, r);
        elem
    }

    /// `cel` and `cel_expression` of field, element or message rules.
    fn cel_rules(&mut self, at: &At<'_>, r: &DynamicMessage) -> Vec<cel::Rule> {
        let mut out = Vec::new();
        for rule in list_field(r, "cel") {
            let Some(rule) = rule.as_message() else {
                continue;
            };
            let id = string_field(rule, "id").unwrap_or_default();
            let message = string_field(rule, "message").unwrap_or_default();
            let expression = string_field(rule, "expression").unwrap_or_default();
            let where_ = at.sub(&format!("cel[id \"{id}\"]"));
            match cel::Rule::compile(id, message, &expression) {
                Ok(r) => out.push(r),
                Err(e) => self.error(
                    &where_,
                    &format!("expression {expression:?} does not compile: {e}"),
                ),
            }
        }
        for expr in list_field(r, "cel_expression") {
            let Some(expression) = expr.as_str() else {
                continue;
            };
            match cel::Rule::compile(expression.to_owned(), String::new(), expression) {
                Ok(r) => out.push(r),
                Err(e) => self.error(
                    &at.sub("cel_expression"),
                    &format!("expression {expression:?} does not compile: {e}"),
                ),
            }
        }
        out
    }

    /// The type rules (`string`, `int32`, ...) of a single value of `kind`.
    fn value_rules(&mut self, at: &At<'_>, kind: &Kind, r: &DynamicMessage) -> Option<ValueRules> {
        let name = type_rule(r)?;
        let rules = message_field(r, name)?;
        let at = at.sub(name);
        let fits = match (name, kind) {
            ("string", Kind::String)
            | ("bytes", Kind::Bytes)
            | ("bool", Kind::Bool)
            | ("enum", Kind::Enum(_))
            | ("int32", Kind::Int32)
            | ("int64", Kind::Int64)
            | ("sint32", Kind::Sint32)
            | ("sint64", Kind::Sint64)
            | ("sfixed32", Kind::Sfixed32)
            | ("sfixed64", Kind::Sfixed64)
            | ("uint32", Kind::Uint32)
            | ("uint64", Kind::Uint64)
            | ("fixed32", Kind::Fixed32)
            | ("fixed64", Kind::Fixed64)
            | ("float", Kind::Float)
            | ("double", Kind::Double) => true,
            ("duration", Kind::Message(m)) => m.full_name() == "google.protobuf.Duration",
            ("timestamp", Kind::Message(m)) => m.full_name() == "google.protobuf.Timestamp",
            ("any", Kind::Message(m)) | ("field_mask", Kind::Message(m)) => {
                self.warn(
                    &at,
                    &format!("rules on {} are not checked by the gateway", m.full_name()),
                );
                return None;
            }
            // protovalidate's rules on wrapper types (Int32Value...).
            (_, Kind::Message(m)) if m.package_name() == "google.protobuf" => {
                self.warn(
                    &at,
                    &format!("rules on {} are not checked by the gateway", m.full_name()),
                );
                return None;
            }
            _ => false,
        };
        if !fits {
            self.error(
                &at,
                &format!("{name} rules on a field of type {}", kind_name(kind)),
            );
            return None;
        }
        // Predefined rules: extensions of the rule messages, each with CEL
        // of its own that reads `rules`.
        for (ext, _) in rules.extensions() {
            self.warn(
                &at.sub(&format!("({})", ext.full_name())),
                "predefined rules are not checked by the gateway",
            );
        }
        Some(match name {
            "string" => ValueRules::String(self.string_rules(&at, &rules)),
            "bytes" => ValueRules::Bytes(self.bytes_rules(&at, &rules)),
            "bool" => ValueRules::Bool(
                rules
                    .get_field_by_name("const")
                    .filter(|_| rules.has_field_by_name("const"))
                    .and_then(|v| v.as_bool()),
            ),
            "enum" => ValueRules::Enum(self.enum_rules(&at, kind, &rules)),
            "int32" | "int64" | "sint32" | "sint64" | "sfixed32" | "sfixed64" => {
                ValueRules::Int(self.num_rules(&at, &rules, as_i64))
            }
            "uint32" | "uint64" | "fixed32" | "fixed64" => {
                ValueRules::UInt(self.num_rules(&at, &rules, as_u64))
            }
            "float" | "double" => {
                let finite = bool_field(&rules, "finite");
                ValueRules::Float(self.num_rules(&at, &rules, as_f64), finite)
            }
            "duration" => ValueRules::Duration(self.num_rules(&at, &rules, as_nanos)),
            "timestamp" => {
                let mut t = TimestampRules {
                    fixed: self.num_rules(&at, &rules, |v| as_nanos(v).map(super::rules::Instant)),
                    lt_now: bool_field(&rules, "lt_now"),
                    gt_now: bool_field(&rules, "gt_now"),
                    within: None,
                };
                if let Some(w) = message_field(&rules, "within") {
                    t.within = as_nanos(&Value::Message(w));
                }
                ValueRules::Timestamp(t)
            }
            _ => return None,
        })
    }

    fn num_rules<T: Copy>(
        &mut self,
        at: &At<'_>,
        r: &DynamicMessage,
        conv: impl Fn(&Value) -> Option<T>,
    ) -> NumRules<T> {
        let mut out = NumRules::default();
        for (f, v) in r.fields() {
            match f.name() {
                "const" => out.konst = conv(v),
                "lt" => out.upper = conv(v).map(Bound::Exclusive),
                "lte" => out.upper = conv(v).map(Bound::Inclusive),
                "gt" => out.lower = conv(v).map(Bound::Exclusive),
                "gte" => out.lower = conv(v).map(Bound::Inclusive),
                "in" => out.in_ = list(v).iter().filter_map(&conv).collect(),
                "not_in" => out.not_in = list(v).iter().filter_map(&conv).collect(),
                "finite" | "example" | "lt_now" | "gt_now" | "within" => {}
                other => self.warn(&at.sub(other), "is not checked by the gateway"),
            }
        }
        out
    }

    fn string_rules(&mut self, at: &At<'_>, r: &DynamicMessage) -> StringRules {
        let mut out = StringRules::default();
        for (f, v) in r.fields() {
            let name = f.name();
            let s = || v.as_str().map(str::to_owned);
            let n = || v.as_u64();
            match name {
                "const" => out.konst = s(),
                "len" => out.len = n(),
                "min_len" => out.min_len = n(),
                "max_len" => out.max_len = n(),
                "len_bytes" => out.len_bytes = n(),
                "min_bytes" => out.min_bytes = n(),
                "max_bytes" => out.max_bytes = n(),
                "pattern" => out.pattern = self.regex(&at.sub(name), v.as_str().unwrap_or("")),
                "prefix" => out.prefix = s(),
                "suffix" => out.suffix = s(),
                "contains" => out.contains = s(),
                "not_contains" => out.not_contains = s(),
                "in" => out.in_ = strings(v),
                "not_in" => out.not_in = strings(v),
                "example" | "strict" => {}
                _ => match Format::by_name(name) {
                    Some(format) => {
                        if v.as_bool() == Some(true) {
                            out.format = Some(format);
                        }
                    }
                    None => self.warn(&at.sub(name), "is not checked by the gateway"),
                },
            }
        }
        out
    }

    fn bytes_rules(&mut self, at: &At<'_>, r: &DynamicMessage) -> BytesRules {
        let mut out = BytesRules::default();
        for (f, v) in r.fields() {
            let name = f.name();
            let b = || v.as_bytes().map(|b| b.to_vec());
            let on = v.as_bool() == Some(true);
            match name {
                "const" => out.konst = b(),
                "len" => out.len = v.as_u64(),
                "min_len" => out.min_len = v.as_u64(),
                "max_len" => out.max_len = v.as_u64(),
                "pattern" => out.pattern = self.regex(&at.sub(name), v.as_str().unwrap_or("")),
                "prefix" => out.prefix = b(),
                "suffix" => out.suffix = b(),
                "contains" => out.contains = b(),
                "in" => {
                    out.in_ = list(v)
                        .iter()
                        .filter_map(|x| x.as_bytes().map(|b| b.to_vec()))
                        .collect()
                }
                "not_in" => {
                    out.not_in = list(v)
                        .iter()
                        .filter_map(|x| x.as_bytes().map(|b| b.to_vec()))
                        .collect()
                }
                "ip" if on => out.format = Some(("IP address", &[4, 16])),
                "ipv4" if on => out.format = Some(("IPv4 address", &[4])),
                "ipv6" if on => out.format = Some(("IPv6 address", &[16])),
                "uuid" if on => out.format = Some(("UUID", &[16])),
                "ip" | "ipv4" | "ipv6" | "uuid" | "example" => {}
                _ => self.warn(&at.sub(name), "is not checked by the gateway"),
            }
        }
        out
    }

    fn enum_rules(&mut self, at: &At<'_>, kind: &Kind, r: &DynamicMessage) -> EnumRules {
        let mut out = EnumRules::default();
        for (f, v) in r.fields() {
            let ints = || list(v).iter().filter_map(Value::as_i32).collect::<Vec<_>>();
            match f.name() {
                "const" => out.konst = v.as_i32(),
                "defined_only" => {
                    if v.as_bool() == Some(true) {
                        if let Kind::Enum(e) = kind {
                            out.defined = Some(e.values().map(|v| v.number()).collect());
                        }
                    }
                }
                "in" => out.in_ = ints(),
                "not_in" => out.not_in = ints(),
                "example" => {}
                other => self.warn(&at.sub(other), "is not checked by the gateway"),
            }
        }
        out
    }

    fn regex(&mut self, at: &At<'_>, pattern: &str) -> Option<regex::Regex> {
        // The size limit keeps a pathological pattern from taking the
        // gateway's memory; 1 MiB compiled is far above any field pattern.
        match regex::RegexBuilder::new(pattern)
            .size_limit(1 << 20)
            .build()
        {
            Ok(r) => Some(r),
            Err(e) => {
                let first = e.to_string().lines().last().unwrap_or("").trim().to_owned();
                self.error(at, &format!("regex {pattern:?} does not compile: {first}"));
                None
            }
        }
    }
}

/// Whether a plan's field carries rules itself (not only below it).
fn has_own_checks(f: &FieldPlan) -> bool {
    let own = |e: &Elem| e.rules.is_some() || !e.cel.is_empty();
    f.required
        || f.min_items.is_some()
        || f.max_items.is_some()
        || f.unique
        || !f.cel.is_empty()
        || own(&f.value)
        || own(&f.map_key)
        || own(&f.map_value)
}

/// The member of FieldRules' `type` oneof that is set.
fn type_rule(r: &DynamicMessage) -> Option<&'static str> {
    const TYPES: &[&str] = &[
        "float",
        "double",
        "int32",
        "int64",
        "uint32",
        "uint64",
        "sint32",
        "sint64",
        "fixed32",
        "fixed64",
        "sfixed32",
        "sfixed64",
        "bool",
        "string",
        "bytes",
        "enum",
        "repeated",
        "map",
        "any",
        "duration",
        "field_mask",
        "timestamp",
    ];
    TYPES.iter().copied().find(|n| r.has_field_by_name(n))
}

fn kind_name(kind: &Kind) -> String {
    match kind {
        Kind::Message(m) => m.full_name().to_owned(),
        Kind::Enum(e) => e.full_name().to_owned(),
        other => format!("{other:?}").to_ascii_lowercase(),
    }
}

fn message_field(r: &DynamicMessage, name: &str) -> Option<DynamicMessage> {
    if !r.has_field_by_name(name) {
        return None;
    }
    r.get_field_by_name(name)
        .and_then(|v| v.as_message().cloned())
}

fn bool_field(r: &DynamicMessage, name: &str) -> bool {
    r.has_field_by_name(name)
        && r.get_field_by_name(name)
            .and_then(|v| v.as_bool())
            .unwrap_or(false)
}

fn u64_field(r: &DynamicMessage, name: &str) -> Option<u64> {
    if !r.has_field_by_name(name) {
        return None;
    }
    r.get_field_by_name(name).and_then(|v| v.as_u64())
}

fn enum_field(r: &DynamicMessage, name: &str) -> i32 {
    r.get_field_by_name(name)
        .and_then(|v| v.as_enum_number())
        .unwrap_or(0)
}

fn string_field(r: &DynamicMessage, name: &str) -> Option<String> {
    r.get_field_by_name(name)
        .and_then(|v| v.as_str().map(str::to_owned))
}

fn list_field(r: &DynamicMessage, name: &str) -> Vec<Value> {
    r.get_field_by_name(name)
        .and_then(|v| v.as_list().map(<[Value]>::to_vec))
        .unwrap_or_default()
}

fn list(v: &Value) -> &[Value] {
    v.as_list().unwrap_or(&[])
}

fn strings(v: &Value) -> Vec<String> {
    list(v)
        .iter()
        .filter_map(|x| x.as_str().map(str::to_owned))
        .collect()
}

fn as_i64(v: &Value) -> Option<i64> {
    match v {
        Value::I32(x) => Some(*x as i64),
        Value::I64(x) => Some(*x),
        _ => None,
    }
}

fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::U32(x) => Some(*x as u64),
        Value::U64(x) => Some(*x),
        _ => None,
    }
}

fn as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::F32(x) => Some(*x as f64),
        Value::F64(x) => Some(*x),
        _ => None,
    }
}

/// A Duration or Timestamp option value.
fn as_nanos(v: &Value) -> Option<Nanos> {
    let m = v.as_message()?;
    let seconds = m.get_field_by_name("seconds")?.as_i64()?;
    let nanos = m.get_field_by_name("nanos")?.as_i32()?;
    Some(Nanos::new(seconds, nanos))
}
