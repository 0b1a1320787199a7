//! Checking a message on its wire bytes: one pass over the fields, those
//! without rules skipped by their number, values decoded only where a rule
//! reads them. A message with CEL rules is also decoded into a
//! `DynamicMessage` for its CEL pass (`cel.rs`); the messages below it are
//! still walked here.

use prost_reflect::{DynamicMessage, Kind};

use super::rules::{check_float, Nanos, ValueRules};
use super::{Elem, FieldPlan, MessagePlan, Shape, Violation, MAX_VIOLATIONS};

/// Deeper than this the walk stops with a violation: a recursive message
/// type could otherwise be nested until the stack runs out (prost stops
/// decoding at the same depth).
const MAX_DEPTH: usize = 100;

/// One wire value.
#[derive(Clone, Copy, Debug)]
pub(super) enum Wire<'w> {
    Varint(u64),
    I64(u64),
    Len(&'w [u8]),
    I32(u32),
}

/// One step of a field path.
enum Seg<'p, 'w> {
    Field(&'p str),
    Index(usize),
    Key(&'p Kind, Wire<'w>),
    /// A map key written out (the CEL pass's keys).
    KeyText(String),
}

/// What is collected of one field while its message is read.
#[derive(Default, Clone)]
struct Slot<'w> {
    count: usize,
    last: Option<Wire<'w>>,
    /// The elements, for `unique`.
    seen: Vec<Wire<'w>>,
}

pub(super) struct Walk<'p, 'w> {
    plans: &'p [MessagePlan],
    path: Vec<Seg<'p, 'w>>,
    out: Vec<Violation>,
    dropped: usize,
    now: Option<Nanos>,
    /// Slot vectors of messages already walked, for the next ones.
    spare: Vec<Vec<Slot<'w>>>,
}

impl<'p, 'w> Walk<'p, 'w> {
    pub fn new(plans: &'p [MessagePlan]) -> Self {
        Walk {
            plans,
            path: Vec::new(),
            out: Vec::new(),
            dropped: 0,
            now: None,
            spare: Vec::new(),
        }
    }

    pub fn finish(mut self) -> Result<(), Vec<Violation>> {
        if self.out.is_empty() {
            return Ok(());
        }
        if self.dropped > 0 {
            self.out.push(Violation {
                field: String::new(),
                description: format!(
                    "{} more violations not listed (at most {MAX_VIOLATIONS} are)",
                    self.dropped
                ),
            });
        }
        Err(self.out)
    }

    /// One violation at the current path.
    pub(super) fn push(&mut self, description: String) {
        if self.out.len() >= MAX_VIOLATIONS {
            self.dropped += 1;
            return;
        }
        let field = self.path_text();
        self.out.push(Violation { field, description });
    }

    fn path_text(&self) -> String {
        let mut s = String::new();
        for seg in &self.path {
            match seg {
                Seg::Field(name) => {
                    if !s.is_empty() {
                        s.push('.');
                    }
                    s.push_str(name);
                }
                Seg::Index(i) => {
                    s.push('[');
                    s.push_str(&i.to_string());
                    s.push(']');
                }
                Seg::Key(kind, w) => {
                    s.push('[');
                    s.push_str(&key_text(kind, *w));
                    s.push(']');
                }
                Seg::KeyText(k) => {
                    s.push('[');
                    s.push_str(k);
                    s.push(']');
                }
            }
        }
        s
    }

    pub(super) fn now(&mut self) -> Nanos {
        *self.now.get_or_insert_with(|| {
            let d = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            Nanos::new(d.as_secs() as i64, d.subsec_nanos() as i32)
        })
    }

    /// Walks one message of plan `id`.
    pub fn message(&mut self, id: usize, bytes: &'w [u8]) {
        let plans = self.plans;
        let plan = &plans[id];
        if self.path.len() > MAX_DEPTH {
            self.push(format!("message nested deeper than {MAX_DEPTH} levels"));
            return;
        }
        // The slots of a message, from the spares of earlier messages:
        // siblings (a list's items) share one allocation.
        let mut slots = self.spare.pop().unwrap_or_default();
        slots.clear();
        slots.resize(plan.fields.len(), Slot::default());
        let mut i = 0;
        while i < bytes.len() {
            let Some((number, w)) = read_field(bytes, &mut i) else {
                self.push("the message is not valid protobuf".to_owned());
                return;
            };
            let Ok(at) = plan.numbers.binary_search(&number) else {
                continue;
            };
            let f = &plan.fields[at];
            let slot = &mut slots[at];
            match f.shape {
                Shape::Single { .. } => {
                    slot.count += 1;
                    slot.last = Some(w);
                }
                Shape::List => {
                    let packed = matches!(w, Wire::Len(_)) && packable(&f.kind);
                    if packed {
                        let Wire::Len(b) = w else { unreachable!() };
                        let mut j = 0;
                        while j < b.len() {
                            let Some(e) = read_packed(&f.kind, b, &mut j) else {
                                self.path.push(Seg::Field(&f.name));
                                self.push("the packed list is not valid protobuf".to_owned());
                                self.path.pop();
                                break;
                            };
                            let index = slots[at].count;
                            self.list_item(f, index, e, &mut slots[at]);
                        }
                    } else {
                        let index = slot.count;
                        self.list_item(f, index, w, &mut slots[at]);
                    }
                }
                Shape::Map => {
                    slot.count += 1;
                    if let Wire::Len(entry) = w {
                        self.map_entry(f, entry);
                    }
                }
            }
        }
        for (f, slot) in plan.fields.iter().zip(&slots) {
            self.path.push(Seg::Field(&f.name));
            self.finish_field(f, slot);
            self.path.pop();
        }
        self.check_oneofs(plan, &slots);
        slots.clear();
        self.spare.push(slots);
        if plan.dynamic {
            match DynamicMessage::decode(plan.desc.clone(), bytes) {
                Ok(msg) => super::cel::message_pass(self, plan, &msg),
                Err(e) => self.push(format!("the message cannot be decoded: {e}")),
            }
        }
    }

    /// Required oneofs and the message's oneof rules, once it is read.
    fn check_oneofs(&mut self, plan: &'p MessagePlan, slots: &[Slot<'w>]) {
        for (name, members) in &plan.required_oneofs {
            if !members.iter().any(|m| slots[*m].count > 0) {
                self.path.push(Seg::Field(name));
                self.push("exactly one field is required in oneof".to_owned());
                self.path.pop();
            }
        }
        for rule in &plan.message_oneofs {
            let set = rule
                .fields
                .iter()
                .filter(|m| {
                    let f = &plan.fields[**m];
                    let s = &slots[**m];
                    match (f.shape, s.last) {
                        (Shape::Single { presence: true }, _) => s.count > 0,
                        (Shape::Single { presence: false }, Some(w)) => !is_zero(&f.kind, w),
                        (Shape::Single { presence: false }, None) => false,
                        _ => s.count > 0,
                    }
                })
                .count();
            if set > 1 {
                self.push(format!("only one of {} can be set", rule.names.join(", ")));
            } else if set == 0 && rule.required {
                self.push(format!("one of {} must be set", rule.names.join(", ")));
            }
        }
    }

    fn list_item(&mut self, f: &'p FieldPlan, index: usize, w: Wire<'w>, slot: &mut Slot<'w>) {
        slot.count += 1;
        if f.unique {
            slot.seen.push(w);
        }
        if f.value.rules.is_none() && f.value.message.is_none() {
            return;
        }
        self.path.push(Seg::Field(&f.name));
        self.path.push(Seg::Index(index));
        self.value(&f.kind, &f.value, w);
        self.path.pop();
        self.path.pop();
    }

    fn map_entry(&mut self, f: &'p FieldPlan, entry: &'w [u8]) {
        if f.map_key.rules.is_none() && f.map_value.rules.is_none() && f.map_value.message.is_none()
        {
            return;
        }
        let (kk, vk) = (&f.key_kind, &f.value_kind);
        let mut key = zero(kk);
        let mut value = zero(vk);
        let mut i = 0;
        while i < entry.len() {
            let Some((n, w)) = read_field(entry, &mut i) else {
                self.path.push(Seg::Field(&f.name));
                self.push("the map entry is not valid protobuf".to_owned());
                self.path.pop();
                return;
            };
            match n {
                1 => key = w,
                2 => value = w,
                _ => {}
            }
        }
        self.path.push(Seg::Field(&f.name));
        self.path.push(Seg::Key(&f.key_kind, key));
        self.value(kk, &f.map_key, key);
        self.value(vk, &f.map_value, value);
        self.path.pop();
        self.path.pop();
    }

    /// `required`, the rules of a single value, the list's and map's own
    /// rules, once the message has been read.
    fn finish_field(&mut self, f: &'p FieldPlan, slot: &Slot<'w>) {
        match f.shape {
            Shape::Single { presence } => match slot.last {
                None => {
                    if f.required {
                        self.push("value is required".to_owned());
                    } else if !presence && !f.ignore_zero {
                        // An implicit field left out holds its zero value.
                        self.value(&f.kind, &f.value, zero(&f.kind));
                    }
                }
                Some(w) => {
                    let zero = !presence && is_zero(&f.kind, w);
                    if f.required && zero {
                        self.push("value is required".to_owned());
                        return;
                    }
                    if f.ignore_zero && zero {
                        return;
                    }
                    self.value(&f.kind, &f.value, w);
                }
            },
            Shape::List | Shape::Map => {
                let n = slot.count as u64;
                if f.required && n == 0 {
                    self.push("value is required".to_owned());
                    return;
                }
                if f.ignore_zero && n == 0 {
                    return;
                }
                let map = f.shape == Shape::Map;
                if let Some(min) = f.min_items {
                    if n < min {
                        self.push(if map {
                            format!("map must be at least {min} entries")
                        } else {
                            format!("value must contain at least {min} item(s)")
                        });
                    }
                }
                if let Some(max) = f.max_items {
                    if n > max {
                        self.push(if map {
                            format!("map must be at most {max} entries")
                        } else {
                            format!("value must contain no more than {max} item(s)")
                        });
                    }
                }
                if f.unique && has_duplicates(&slot.seen) {
                    self.push("repeated value must contain unique items".to_owned());
                }
            }
        }
    }

    /// One value's rules, then the message below it.
    fn value(&mut self, kind: &Kind, e: &'p Elem, w: Wire<'w>) {
        if e.ignore_zero && is_zero(kind, w) {
            return;
        }
        if let Some(rules) = &e.rules {
            let now = if matches!(**rules, ValueRules::Timestamp(_)) {
                self.now()
            } else {
                Nanos(0)
            };
            let mut found = Vec::new();
            check(rules, kind, w, now, &mut |d| found.push(d));
            for d in found {
                self.push(d);
            }
        }
        if let (Some(m), Wire::Len(b)) = (e.message, w) {
            self.message(m, b);
        }
    }
}

/// A map key as protovalidate writes it in a path: `"k"`, `5`, `true`.
fn key_text(kind: &Kind, w: Wire<'_>) -> String {
    match (kind, w) {
        (Kind::String, Wire::Len(b)) => {
            serde_json::to_string(&String::from_utf8_lossy(b)).unwrap_or_default()
        }
        (Kind::Bool, Wire::Varint(v)) => (v != 0).to_string(),
        (_, w) => match int_of(kind, w) {
            Some(i) => i.to_string(),
            None => uint_of(kind, w).map(|u| u.to_string()).unwrap_or_default(),
        },
    }
}

/// Checks one decoded value against its rules; a wire type that does not
/// fit the field is left to the backend's decoder to refuse.
pub(super) fn check(
    rules: &ValueRules,
    kind: &Kind,
    w: Wire<'_>,
    now: Nanos,
    out: &mut dyn FnMut(String),
) {
    match rules {
        ValueRules::String(r) => {
            if let Wire::Len(b) = w {
                match std::str::from_utf8(b) {
                    Ok(s) => r.check(s, out),
                    Err(_) => out("value must be valid UTF-8".to_owned()),
                }
            }
        }
        ValueRules::Bytes(r) => {
            if let Wire::Len(b) = w {
                r.check(b, out);
            }
        }
        ValueRules::Int(r) => {
            if let Some(v) = int_of(kind, w) {
                r.check(v, out);
            }
        }
        ValueRules::UInt(r) => {
            if let Some(v) = uint_of(kind, w) {
                r.check(v, out);
            }
        }
        ValueRules::Float(r, finite) => {
            let v = match (kind, w) {
                (Kind::Float, Wire::I32(b)) => f32::from_bits(b) as f64,
                (Kind::Double, Wire::I64(b)) => f64::from_bits(b),
                _ => return,
            };
            check_float(r, *finite, v, out);
        }
        ValueRules::Bool(konst) => {
            if let (Some(c), Wire::Varint(v)) = (konst, w) {
                if (v != 0) != *c {
                    out(format!("value must equal {c}"));
                }
            }
        }
        ValueRules::Enum(r) => {
            if let Wire::Varint(v) = w {
                r.check(v as i32, out);
            }
        }
        ValueRules::Duration(r) => {
            if let Wire::Len(b) = w {
                if let Some(d) = seconds_nanos(b) {
                    r.check(d, out);
                }
            }
        }
        ValueRules::Timestamp(r) => {
            if let Wire::Len(b) = w {
                if let Some(t) = seconds_nanos(b) {
                    r.check(t, now, out);
                }
            }
        }
    }
}

fn int_of(kind: &Kind, w: Wire<'_>) -> Option<i64> {
    Some(match (kind, w) {
        (Kind::Int32 | Kind::Enum(_), Wire::Varint(v)) => v as i32 as i64,
        (Kind::Int64, Wire::Varint(v)) => v as i64,
        (Kind::Sint32, Wire::Varint(v)) => {
            let v = v as u32;
            ((v >> 1) as i32 ^ -((v & 1) as i32)) as i64
        }
        (Kind::Sint64, Wire::Varint(v)) => (v >> 1) as i64 ^ -((v & 1) as i64),
        (Kind::Sfixed32, Wire::I32(v)) => v as i32 as i64,
        (Kind::Sfixed64, Wire::I64(v)) => v as i64,
        _ => return None,
    })
}

fn uint_of(kind: &Kind, w: Wire<'_>) -> Option<u64> {
    Some(match (kind, w) {
        (Kind::Uint32, Wire::Varint(v)) => v as u32 as u64,
        (Kind::Uint64, Wire::Varint(v)) => v,
        (Kind::Fixed32, Wire::I32(v)) => v as u64,
        (Kind::Fixed64, Wire::I64(v)) => v,
        _ => return None,
    })
}

/// A Duration's or Timestamp's seconds and nanos.
fn seconds_nanos(b: &[u8]) -> Option<Nanos> {
    let (mut seconds, mut nanos) = (0i64, 0i32);
    let mut i = 0;
    while i < b.len() {
        match read_field(b, &mut i)? {
            (1, Wire::Varint(v)) => seconds = v as i64,
            (2, Wire::Varint(v)) => nanos = v as i32,
            _ => {}
        }
    }
    Some(Nanos::new(seconds, nanos))
}

/// The zero value of a field of `kind` as it would be on the wire.
fn zero(kind: &Kind) -> Wire<'static> {
    match kind {
        Kind::Fixed32 | Kind::Sfixed32 | Kind::Float => Wire::I32(0),
        Kind::Fixed64 | Kind::Sfixed64 | Kind::Double => Wire::I64(0),
        Kind::String | Kind::Bytes | Kind::Message(_) => Wire::Len(&[]),
        _ => Wire::Varint(0),
    }
}

/// Whether a value is its type's zero (a message that is there never is).
pub(super) fn is_zero(kind: &Kind, w: Wire<'_>) -> bool {
    match (kind, w) {
        (Kind::Message(_), _) => false,
        (Kind::Float, Wire::I32(b)) => f32::from_bits(b) == 0.0,
        (Kind::Double, Wire::I64(b)) => f64::from_bits(b) == 0.0,
        (_, Wire::Varint(v)) => v == 0,
        (_, Wire::I32(v)) => v == 0,
        (_, Wire::I64(v)) => v == 0,
        (_, Wire::Len(b)) => b.is_empty(),
    }
}

fn has_duplicates<'w>(seen: &[Wire<'w>]) -> bool {
    let key = |w: &Wire<'w>| -> (u64, &'w [u8]) {
        match *w {
            Wire::Varint(v) | Wire::I64(v) => (v, &[][..]),
            Wire::I32(v) => (v as u64, &[][..]),
            Wire::Len(b) => (0, b),
        }
    };
    if seen.len() <= 16 {
        return seen
            .iter()
            .enumerate()
            .any(|(i, a)| seen[..i].iter().any(|b| key(a) == key(b)));
    }
    let mut set = std::collections::HashSet::with_capacity(seen.len());
    !seen.iter().all(|w| set.insert(key(w)))
}

fn packable(kind: &Kind) -> bool {
    !matches!(kind, Kind::String | Kind::Bytes | Kind::Message(_))
}

fn read_packed<'w>(kind: &Kind, b: &'w [u8], i: &mut usize) -> Option<Wire<'w>> {
    match kind {
        Kind::Fixed32 | Kind::Sfixed32 | Kind::Float => {
            let v = b.get(*i..*i + 4)?;
            *i += 4;
            Some(Wire::I32(u32::from_le_bytes(v.try_into().ok()?)))
        }
        Kind::Fixed64 | Kind::Sfixed64 | Kind::Double => {
            let v = b.get(*i..*i + 8)?;
            *i += 8;
            Some(Wire::I64(u64::from_le_bytes(v.try_into().ok()?)))
        }
        _ => varint(b, i).map(Wire::Varint),
    }
}

#[inline]
fn varint(b: &[u8], i: &mut usize) -> Option<u64> {
    // One byte: most tags and small numbers.
    if let Some(&byte) = b.get(*i) {
        if byte < 0x80 {
            *i += 1;
            return Some(byte as u64);
        }
    }
    let mut v = 0u64;
    for shift in (0..70).step_by(7) {
        let byte = *b.get(*i)?;
        *i += 1;
        v |= ((byte & 0x7f) as u64) << shift;
        if byte < 0x80 {
            return Some(v);
        }
    }
    None
}

/// The next field of a message: its number and value; groups (proto2)
/// are skipped whole. `None` on bytes that are not protobuf.
#[inline]
pub(super) fn read_field<'w>(b: &'w [u8], i: &mut usize) -> Option<(u32, Wire<'w>)> {
    loop {
        let tag = varint(b, i)?;
        let number = u32::try_from(tag >> 3).ok()?;
        if number == 0 {
            return None;
        }
        let w = match tag & 7 {
            0 => Wire::Varint(varint(b, i)?),
            1 => {
                let v = b.get(*i..*i + 8)?;
                *i += 8;
                Wire::I64(u64::from_le_bytes(v.try_into().ok()?))
            }
            2 => {
                let len = usize::try_from(varint(b, i)?).ok()?;
                let end = i.checked_add(len)?;
                let v = b.get(*i..end)?;
                *i = end;
                Wire::Len(v)
            }
            3 => {
                skip_group(b, i, number)?;
                if *i >= b.len() {
                    // A group was the last field: number 0, which no
                    // field has, so nothing reads it.
                    return Some((0, Wire::Len(&[])));
                }
                continue;
            }
            5 => {
                let v = b.get(*i..*i + 4)?;
                *i += 4;
                Wire::I32(u32::from_le_bytes(v.try_into().ok()?))
            }
            _ => return None,
        };
        return Some((number, w));
    }
}

/// Past the end of the group `number` started.
fn skip_group(b: &[u8], i: &mut usize, number: u32) -> Option<()> {
    let mut depth = vec![number];
    while let Some(&open) = depth.last() {
        let tag = varint(b, i)?;
        let n = u32::try_from(tag >> 3).ok()?;
        match tag & 7 {
            0 => {
                varint(b, i)?;
            }
            1 => *i = i.checked_add(8).filter(|e| *e <= b.len())?,
            2 => {
                let len = usize::try_from(varint(b, i)?).ok()?;
                *i = i.checked_add(len).filter(|e| *e <= b.len())?;
            }
            3 => {
                if depth.len() >= MAX_DEPTH {
                    return None;
                }
                depth.push(n);
            }
            4 if n == open => {
                depth.pop();
            }
            5 => *i = i.checked_add(4).filter(|e| *e <= b.len())?,
            _ => return None,
        }
    }
    Some(())
}

/// For the CEL pass: the path, as the walk keeps it.
impl<'p> super::cel::Report<'p> for Walk<'p, '_> {
    fn push(&mut self, description: String) {
        Walk::push(self, description);
    }

    fn enter_field(&mut self, name: &'p str) {
        self.path.push(Seg::Field(name));
    }

    fn enter_index(&mut self, i: usize) {
        self.path.push(Seg::Index(i));
    }

    fn enter_key(&mut self, key: String) {
        self.path.push(Seg::KeyText(key));
    }

    fn leave(&mut self) {
        self.path.pop();
    }
}
