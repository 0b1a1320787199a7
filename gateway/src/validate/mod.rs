//! Request validation at the edge from `buf.validate` (protovalidate)
//! annotations.
//!
//! A [`Validator`] is compiled once per request message type when the
//! snapshot is built ([`Compiler`]): the rules of the message, its fields,
//! oneofs and the messages below it (cycles included), regexes and CEL
//! programs compiled then, so a bad one refuses the descriptors instead of
//! failing requests. A message tree without rules gets no validator, and
//! its routes pay nothing.
//!
//! Checking walks the request's encoded wire bytes (what the transcoder
//! produced, or what a gRPC-Web/Connect client sent) with the rules indexed
//! by field number, decoding only the fields that carry rules
//! (`wire.rs`); only a message with CEL rules is decoded into a
//! `DynamicMessage`, for its CEL pass (`cel.rs`). Every violation is
//! collected, up to [`MAX_VIOLATIONS`], each with its field path
//! (`address.zip`, `items[2].name`, `labels["k"]`), in proto field names
//! as protovalidate writes them.
//!
//! Deviations from protovalidate, each rare on the wire: a message field
//! sent in several pieces (which protobuf merges) is checked piece by
//! piece; a map key sent twice counts twice for `min_pairs`/`max_pairs`.
//! Rules the gateway does not check (`any`, `field_mask`, predefined rules,
//! `well_known_regex`, `ip_prefix` and its siblings) are listed as warnings
//! when the snapshot is built: the backend still sees them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use prost_reflect::{DescriptorPool, Kind, MessageDescriptor};

mod cel;
mod compile;
mod rules;
mod wire;

/// At most this many violations are listed in one answer: a request with
/// thousands of bad items gets the first hundred, not an answer larger
/// than the request.
pub const MAX_VIOLATIONS: usize = 100;

/// One broken rule: the field path and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub field: String,
    pub description: String,
}

/// A rule that did not compile, or that the gateway does not check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The .proto file (as imported) of the message the rule is on.
    pub file: String,
    /// Names the message, the field and the rule.
    pub text: String,
}

/// The checks of one request message type (and the messages below it).
pub struct Validator {
    plans: Vec<MessagePlan>,
    root: usize,
}

impl std::fmt::Debug for Validator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validator")
            .field("message", &self.plans[self.root].desc.full_name())
            .finish()
    }
}

impl Validator {
    /// The message type this validator checks.
    pub fn message(&self) -> &MessageDescriptor {
        &self.plans[self.root].desc
    }

    /// Checks one encoded message; `Err` lists every violation (up to
    /// [`MAX_VIOLATIONS`]) in field order.
    pub fn check(&self, wire: &[u8]) -> Result<(), Vec<Violation>> {
        let mut walk = wire::Walk::new(&self.plans);
        walk.message(self.root, wire);
        walk.finish()
    }
}

/// Compiles validators for a snapshot, each message type once.
pub struct Compiler {
    pool: Option<Ext>,
    done: HashMap<String, Option<Arc<Validator>>>,
    /// Every problem once, however many routes share the message.
    reported: HashSet<String>,
    errors: Vec<Problem>,
    warnings: Vec<Problem>,
}

/// The `buf.validate` extensions of a pool that has them.
#[derive(Clone)]
struct Ext {
    field: prost_reflect::ExtensionDescriptor,
    message: Option<prost_reflect::ExtensionDescriptor>,
    oneof: Option<prost_reflect::ExtensionDescriptor>,
}

impl Compiler {
    /// A compiler for messages of `pool`; with no `buf/validate/validate.proto`
    /// in it, every message compiles to no validator at no cost.
    pub fn new(pool: &DescriptorPool) -> Compiler {
        let pool = pool
            .get_extension_by_name("buf.validate.field")
            .map(|field| Ext {
                field,
                message: pool.get_extension_by_name("buf.validate.message"),
                oneof: pool.get_extension_by_name("buf.validate.oneof"),
            });
        Compiler {
            pool,
            done: HashMap::new(),
            reported: HashSet::new(),
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// The validator of `desc`, `None` when its message tree carries no
    /// rules or a rule did not compile (see [`Compiler::take_errors`]).
    pub fn validator(&mut self, desc: &MessageDescriptor) -> Option<Arc<Validator>> {
        let ext = self.pool.clone()?;
        if let Some(v) = self.done.get(desc.full_name()) {
            return v.clone();
        }
        let mut problems = compile::Problems::default();
        let built = compile::build(&ext, desc, &mut problems);
        for (file, text) in problems.errors {
            if self.reported.insert(text.clone()) {
                self.errors.push(Problem { file, text });
            }
        }
        for (file, text) in problems.warnings {
            if self.reported.insert(text.clone()) {
                self.warnings.push(Problem { file, text });
            }
        }
        let v = built.map(Arc::new);
        self.done.insert(desc.full_name().to_owned(), v.clone());
        v
    }

    /// Rules that did not compile (a bad regex or CEL expression), each
    /// naming the message, the field and the rule; they refuse the
    /// descriptors.
    pub fn take_errors(&mut self) -> Vec<Problem> {
        std::mem::take(&mut self.errors)
    }

    /// Rules the gateway does not check, each once.
    pub fn take_warnings(&mut self) -> Vec<Problem> {
        std::mem::take(&mut self.warnings)
    }
}

/// The compiled checks of one message type.
struct MessagePlan {
    desc: MessageDescriptor,
    /// The fields that carry rules, lead to messages that do, or belong to
    /// a oneof with a rule; sorted by number.
    fields: Vec<FieldPlan>,
    /// Their numbers, in the same order: the walk's lookup, kept apart
    /// from the (large) plans so it stays in a cache line or two.
    numbers: Vec<u32>,
    /// Oneofs with `(buf.validate.oneof).required`: indexes into `fields`.
    required_oneofs: Vec<(String, Vec<usize>)>,
    /// The same by field number, while compiling.
    required_oneofs_numbers: Vec<(String, Vec<u32>)>,
    /// `(buf.validate.message).oneof` rules.
    message_oneofs: Vec<MessageOneof>,
    /// `(buf.validate.message).cel`.
    cel: Vec<cel::Rule>,
    /// Whether any CEL rule (message, field or element) needs the message
    /// decoded.
    dynamic: bool,
}

struct MessageOneof {
    /// Indexes into `fields`.
    fields: Vec<usize>,
    /// The same by field number, while compiling.
    numbers: Vec<u32>,
    names: Vec<String>,
    required: bool,
}

/// How a field holds values.
#[derive(Clone, Copy, PartialEq)]
enum Shape {
    Single { presence: bool },
    List,
    Map,
}

/// The compiled rules of one field.
struct FieldPlan {
    number: u32,
    name: String,
    kind: Kind,
    /// A map's key and value kinds; `String` otherwise.
    key_kind: Kind,
    value_kind: Kind,
    shape: Shape,
    field: prost_reflect::FieldDescriptor,
    required: bool,
    /// IGNORE_IF_ZERO_VALUE: no rule (but `required`) on a zero value.
    ignore_zero: bool,
    /// The value (single fields) or each element (lists, `items`).
    value: Elem,
    /// Map keys and values (`keys`, `values`).
    map_key: Elem,
    map_value: Elem,
    min_items: Option<u64>,
    max_items: Option<u64>,
    unique: bool,
    /// `(buf.validate.field).cel`: on the field's value (the list, the map).
    cel: Vec<cel::Rule>,
}

/// The checks of one value: its own rules, the message below it, CEL.
#[derive(Default)]
struct Elem {
    /// Boxed: most elements have none, and plans stay small to walk.
    rules: Option<Box<rules::ValueRules>>,
    ignore_zero: bool,
    /// The plan of the value's message type, when that tree has rules.
    message: Option<usize>,
    cel: Vec<cel::Rule>,
}

impl Elem {
    fn is_empty(&self) -> bool {
        self.rules.is_none() && self.message.is_none() && self.cel.is_empty()
    }
}

impl FieldPlan {
    fn has_cel(&self) -> bool {
        !self.cel.is_empty()
            || !self.value.cel.is_empty()
            || !self.map_key.cel.is_empty()
            || !self.map_value.cel.is_empty()
    }
}

#[cfg(test)]
mod tests;
