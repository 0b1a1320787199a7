//! JSON request body -> protobuf wire bytes in one pass, for `body: "*"`.
//!
//! The reference path ([`request::decode_body`](super::request::decode_body))
//! builds a `DynamicMessage` through prost-reflect's serde support and the
//! strict adapter, then encodes it: two passes, an allocation per value and a
//! descriptor clone per message. This module scans the bytes itself, applies
//! the rules the reference applies (prost-reflect's visitors, `strict.rs`),
//! and writes wire bytes as it goes.
//!
//! The scanner reads JSON exactly as serde_json does where it decides alone
//! (structure, whitespace, literals, plain strings, integers of up to 18
//! digits), and hands serde_json the rest so the reference's own code judges
//! it: strings with escapes, and every other number (floats, so their
//! rounding and range errors are serde_json's). Driving serde_json through
//! serde's visitors cost about as much as the encoding itself. The values of
//! integer fields are the exception on both paths: they are read from their
//! text by [`json_int`](super::json_int), never through a float.
//!
//! It has no errors of its own: for anything it does not handle, and for
//! anything the reference refuses, it returns [`Fallback`] and the caller runs
//! the reference, which accepts the body or says precisely what is wrong.
//!
//! The bytes mean what the reference's message means on the wire: decoding
//! them and re-encoding gives what re-encoding the reference's message
//! gives. Every field the JSON sets is written, defaults included
//! (`"count": 0` becomes `10 00`; receivers read that as the default). An
//! empty array or map writes nothing, as the reference's message encodes to
//! nothing for it: a backend cannot tell "set to empty" from "unset".

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use prost_reflect::{EnumDescriptor, FieldDescriptor, Kind, MessageDescriptor};
use serde::de::{self, Visitor};

use super::json_int;
use super::request::DecodeOptions;
use super::wire::Scalar;

/// The fast path declined: the caller runs the existing DynamicMessage path,
/// which either accepts the body or produces the precise error message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fallback;

/// Everything needed to encode one message type from JSON, resolved once (at
/// config load) so the request path never touches the DescriptorPool.
///
/// Plain data (no descriptors): cloning a descriptor is an atomic refcount
/// increment on a counter every request thread shares.
pub struct BodyPlan {
    msgs: Vec<MsgPlan>,
    enums: Vec<Names<i32>>,
    /// `None` when the request message itself is a well-known type (its JSON
    /// form is not an object of fields): always the reference path.
    root: Option<u32>,
    reject_unknown: bool,
    max_depth: usize,
}

/// A fixed name -> value table, built at config load: open addressing on a
/// hash of a name's length and three of its bytes, then one comparison.
/// Cheaper than hashing every byte (key lookup was the largest cost of the
/// fast path with a `HashMap`), and safe against crafted keys: the table
/// never grows, and a probe for a name not in it stops at the first empty
/// slot, so no input makes a lookup walk more than the table's own clusters.
#[derive(Debug)]
struct Names<V> {
    slots: Vec<u32>,
    entries: Vec<(Box<[u8]>, V)>,
}

const EMPTY: u32 = u32::MAX;

fn quick_hash(b: &[u8]) -> u64 {
    let n = b.len();
    let (first, mid, last) = match n {
        0 => (0, 0, 0),
        _ => (b[0], b[n / 2], b[n - 1]),
    };
    let x =
        (n as u64) ^ (u64::from(first) << 16) ^ (u64::from(mid) << 32) ^ (u64::from(last) << 48);
    x.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32
}

impl<V: Copy> Names<V> {
    /// Later entries of one name win, so callers list proto names first
    /// and JSON names after them, as prost-reflect looks JSON names up first.
    fn new(pairs: impl IntoIterator<Item = (Box<[u8]>, V)>) -> Names<V> {
        let mut entries: Vec<(Box<[u8]>, V)> = Vec::new();
        let mut index: HashMap<Box<[u8]>, usize> = HashMap::new();
        for (name, v) in pairs {
            match index.get(&name) {
                Some(&i) => entries[i].1 = v,
                None => {
                    index.insert(name.clone(), entries.len());
                    entries.push((name, v));
                }
            }
        }
        // At most half full, so probes for absent names end quickly.
        let size = (entries.len() * 2).next_power_of_two().max(4);
        let mut slots = vec![EMPTY; size];
        for (i, (name, _)) in entries.iter().enumerate() {
            let mut at = quick_hash(name) as usize & (size - 1);
            while slots[at] != EMPTY {
                at = (at + 1) & (size - 1);
            }
            slots[at] = i as u32;
        }
        Names { slots, entries }
    }

    fn get(&self, name: &[u8]) -> Option<V> {
        let mask = self.slots.len() - 1;
        let mut at = quick_hash(name) as usize & mask;
        loop {
            let i = self.slots[at];
            if i == EMPTY {
                return None;
            }
            let (n, v) = &self.entries[i as usize];
            if same_bytes(n, name) {
                return Some(*v);
            }
            at = (at + 1) & mask;
        }
    }
}

/// Slice equality in word-sized loads: names are short, and `==` on slices
/// is a call to memcmp, which cost more than the whole lookup around it.
#[inline]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let word = |s: &[u8], at: usize| u64::from_le_bytes(s[at..at + 8].try_into().expect("8 bytes"));
    let half = |s: &[u8], at: usize| u32::from_le_bytes(s[at..at + 4].try_into().expect("4 bytes"));
    match n {
        0..=3 => a.iter().zip(b).all(|(x, y)| x == y),
        4..=8 => half(a, 0) == half(b, 0) && half(a, n - 4) == half(b, n - 4),
        _ => {
            // Whole words, then the last (overlapping) word.
            let mut at = 0;
            while at + 8 < n {
                if word(a, at) != word(b, at) {
                    return false;
                }
                at += 8;
            }
            word(a, n - 8) == word(b, n - 8)
        }
    }
}

impl<V: Copy> Default for Names<V> {
    fn default() -> Self {
        Names::new([])
    }
}

/// FNV-1a 64, for map keys' duplicate check: a collision only costs a
/// needless fallback.
fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// What one value (a singular field, a list element, a map value) is.
#[derive(Debug, Clone, Copy)]
enum ValueKind {
    Scalar(Scalar),
    /// Index into `BodyPlan::enums`.
    Enum(u32),
    /// Index into `BodyPlan::msgs`.
    Message(u32),
    Timestamp,
    Duration,
    /// `google.protobuf.*Value` wrappers: the scalar as field 1.
    Wrapper(Scalar),
    /// Any, Struct, Value, ListValue, FieldMask, Empty, NullValue, other
    /// `google.protobuf` messages, groups: left to the reference.
    Unsupported,
}

impl ValueKind {
    fn wire_type(self) -> u8 {
        match self {
            ValueKind::Scalar(s) => s.wire_type(),
            ValueKind::Enum(_) => 0,
            _ => 2,
        }
    }

    /// Whether a list of these can be written packed (and so empty).
    fn packable(self) -> bool {
        match self {
            ValueKind::Scalar(s) => !matches!(s, Scalar::String | Scalar::Bytes),
            ValueKind::Enum(_) => true,
            _ => false,
        }
    }
}

/// A field key as encoded: up to five varint bytes (field numbers are < 2^29).
#[derive(Debug, Clone, Copy)]
struct Tag {
    bytes: [u8; 5],
    len: u8,
}

impl Tag {
    fn new(number: u32, wire_type: u8) -> Tag {
        let mut bytes = [0; 5];
        let mut v = (number << 3) | u32::from(wire_type);
        let mut len = 0;
        while v >= 0x80 {
            bytes[len] = (v as u8) | 0x80;
            v >>= 7;
            len += 1;
        }
        bytes[len] = v as u8;
        Tag {
            bytes,
            len: len as u8 + 1,
        }
    }

    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.bytes[..usize::from(self.len)]);
    }
}

#[derive(Debug, Clone, Copy)]
enum Shape {
    Single,
    List { packed: bool },
    Map { key: Scalar },
}

#[derive(Debug)]
struct FieldPlan {
    /// The value's kind (for maps, the map value's).
    kind: ValueKind,
    shape: Shape,
    /// The key for one value (one element when not packed).
    tag: Tag,
    /// The length-delimited key: packed lists, map entries.
    len_tag: Tag,
    /// Index of its (real, not synthetic) oneof in the message.
    oneof: Option<u32>,
}

#[derive(Debug, Default)]
struct MsgPlan {
    fields: Vec<FieldPlan>,
    /// JSON names and proto names, JSON names winning as in prost-reflect.
    names: Names<u32>,
    /// Bits per object: one per field (given twice?), one per oneof (set twice?).
    seen_words: usize,
    /// Its unknown keys might be extensions (`[pkg.ext]`), which the
    /// reference accepts: those always fall back.
    has_extensions: bool,
}

struct Builder {
    msgs: Vec<MsgPlan>,
    msg_ids: HashMap<String, u32>,
    enums: Vec<Names<i32>>,
    enum_ids: HashMap<String, u32>,
}

impl Builder {
    fn message(&mut self, desc: &MessageDescriptor) -> u32 {
        if let Some(&id) = self.msg_ids.get(desc.full_name()) {
            return id;
        }
        // Registered before its fields, so recursive types end here.
        let id = self.msgs.len() as u32;
        self.msgs.push(MsgPlan::default());
        self.msg_ids.insert(desc.full_name().to_owned(), id);

        let fields: Vec<FieldDescriptor> = desc.fields().collect();
        let plans = fields.iter().map(|f| self.field(f)).collect::<Vec<_>>();
        let names = Names::new(
            (fields.iter().enumerate())
                .map(|(i, f)| (f.name().as_bytes().into(), i as u32))
                .chain(
                    (fields.iter().enumerate())
                        .map(|(i, f)| (f.json_name().as_bytes().into(), i as u32)),
                ),
        );
        let bits = plans.len() + desc.oneofs().len();
        self.msgs[id as usize] = MsgPlan {
            fields: plans,
            names,
            seen_words: bits.div_ceil(64),
            has_extensions: desc.extensions().next().is_some(),
        };
        id
    }

    fn enumeration(&mut self, desc: &EnumDescriptor) -> u32 {
        if let Some(&id) = self.enum_ids.get(desc.full_name()) {
            return id;
        }
        let table = Names::new(
            desc.values()
                .map(|v| (v.name().as_bytes().into(), v.number())),
        );
        let id = self.enums.len() as u32;
        self.enums.push(table);
        self.enum_ids.insert(desc.full_name().to_owned(), id);
        id
    }

    fn value_kind(&mut self, kind: &Kind) -> ValueKind {
        match kind {
            Kind::Message(m) => match m.full_name() {
                "google.protobuf.Timestamp" => ValueKind::Timestamp,
                "google.protobuf.Duration" => ValueKind::Duration,
                "google.protobuf.DoubleValue" => ValueKind::Wrapper(Scalar::Double),
                "google.protobuf.FloatValue" => ValueKind::Wrapper(Scalar::Float),
                "google.protobuf.Int64Value" => ValueKind::Wrapper(Scalar::Int64),
                "google.protobuf.UInt64Value" => ValueKind::Wrapper(Scalar::Uint64),
                "google.protobuf.Int32Value" => ValueKind::Wrapper(Scalar::Int32),
                "google.protobuf.UInt32Value" => ValueKind::Wrapper(Scalar::Uint32),
                "google.protobuf.BoolValue" => ValueKind::Wrapper(Scalar::Bool),
                "google.protobuf.StringValue" => ValueKind::Wrapper(Scalar::String),
                "google.protobuf.BytesValue" => ValueKind::Wrapper(Scalar::Bytes),
                // The strict adapter treats every google.protobuf object as
                // opaque (no both-names check): not worth mirroring.
                n if n.starts_with("google.protobuf.") => ValueKind::Unsupported,
                _ => ValueKind::Message(self.message(m)),
            },
            Kind::Enum(e) if e.full_name() == "google.protobuf.NullValue" => ValueKind::Unsupported,
            Kind::Enum(e) => ValueKind::Enum(self.enumeration(e)),
            scalar => ValueKind::Scalar(Scalar::of(scalar).expect("non-message, non-enum kind")),
        }
    }

    fn field(&mut self, f: &FieldDescriptor) -> FieldPlan {
        let number = f.number();
        let len_tag = Tag::new(number, 2);
        let oneof = f
            .containing_oneof()
            .filter(|o| !o.is_synthetic())
            .and_then(|o| {
                f.parent_message()
                    .oneofs()
                    .position(|x| x.full_name() == o.full_name())
            })
            .map(|i| i as u32);
        let (kind, shape) = if f.is_map() {
            let Kind::Message(entry) = f.kind() else {
                unreachable!("map fields have entry messages")
            };
            let key = Scalar::of(&entry.map_entry_key_field().kind());
            let value = self.value_kind(&entry.map_entry_value_field().kind());
            match key {
                Some(key) => (value, Shape::Map { key }),
                None => (ValueKind::Unsupported, Shape::Single),
            }
        } else if f.is_group() {
            (ValueKind::Unsupported, Shape::Single)
        } else {
            let kind = self.value_kind(&f.kind());
            let shape = if f.is_list() {
                Shape::List {
                    packed: f.is_packed() && kind.packable(),
                }
            } else {
                Shape::Single
            };
            (kind, shape)
        };
        FieldPlan {
            kind,
            shape,
            tag: Tag::new(number, kind.wire_type()),
            len_tag,
            oneof,
        }
    }
}

impl BodyPlan {
    pub fn new(desc: &MessageDescriptor, opts: DecodeOptions) -> BodyPlan {
        let mut b = Builder {
            msgs: Vec::new(),
            msg_ids: HashMap::new(),
            enums: Vec::new(),
            enum_ids: HashMap::new(),
        };
        let root = match b.value_kind(&Kind::Message(desc.clone())) {
            ValueKind::Message(id) => Some(id),
            _ => None,
        };
        BodyPlan {
            msgs: b.msgs,
            enums: b.enums,
            root,
            reject_unknown: opts.reject_unknown,
            max_depth: opts.max_depth,
        }
    }

    /// Appends the wire encoding of the JSON object `json` to `out`. A body of only
    /// whitespace appends nothing and is Ok (an empty message, as decode_body does).
    /// On Err, `out` is truncated back to its length at entry.
    pub fn encode(&self, json: &[u8], out: &mut Vec<u8>) -> Result<(), Fallback> {
        // The same test as decode_body's (which also counts form feed).
        if json.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        let root = self.root.ok_or(Fallback)?;
        // One UTF-8 check of the whole body (fast on ASCII); invalid UTF-8
        // goes to the reference path, which words the error.
        let Ok(text) = std::str::from_utf8(json) else {
            return Err(Fallback);
        };
        let start = out.len();
        // Wire bytes are nearly always shorter than their JSON.
        out.reserve(json.len() / 2);
        let mut st = State {
            plan: self,
            out,
            seen: Vec::new(),
            keys: Vec::new(),
            depth: 0,
            text,
            b: json,
            at: 0,
        };
        if st.document(root).is_none() {
            st.out.truncate(start);
            return Err(Fallback);
        }
        Ok(())
    }
}

impl fmt::Debug for BodyPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BodyPlan")
            .field("messages", &self.msgs.len())
            .field("enums", &self.enums.len())
            .finish_non_exhaustive()
    }
}

/// One encode call's mutable state: the scanner's cursor and the output.
struct State<'p, 'o, 't> {
    plan: &'p BodyPlan,
    out: &'o mut Vec<u8>,
    /// A stack of per-object bitsets (`MsgPlan::seen_words` each).
    seen: Vec<u64>,
    /// A stack of map keys' hashes, per open map object.
    keys: Vec<u64>,
    /// Open objects and arrays, counted as strict.rs counts them.
    depth: usize,
    /// The body, as text (checked UTF-8) and as bytes.
    text: &'t str,
    b: &'t [u8],
    /// The scanner's position in `b`.
    at: usize,
}

impl State<'_, '_, '_> {
    /// Sets bit `bit` of the bitset at `base`; false if it was already set.
    fn mark(&mut self, base: usize, bit: usize) -> bool {
        let word = &mut self.seen[base + bit / 64];
        let mask = 1u64 << (bit % 64);
        let fresh = *word & mask == 0;
        *word |= mask;
        fresh
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reserves one byte for a length prefix; returns where the content starts.
fn begin_len(out: &mut Vec<u8>) -> usize {
    out.push(0);
    out.len()
}

/// Writes the length of the content since `start` into its prefix, moving
/// the content right when the length needs more than the one reserved byte
/// (only for content of 128 bytes and more, where the move is cheap next to
/// writing it).
fn end_len(out: &mut Vec<u8>, start: usize) {
    let len = out.len() - start;
    if len < 0x80 {
        out[start - 1] = len as u8;
        return;
    }
    let mut prefix = [0u8; 10];
    let mut n = 0;
    let mut v = len as u64;
    while v >= 0x80 {
        prefix[n] = (v as u8) | 0x80;
        v >>= 7;
        n += 1;
    }
    prefix[n] = v as u8;
    n += 1;
    out.resize(out.len() + n - 1, 0);
    out.copy_within(start..start + len, start + n - 1);
    out[start - 1..start - 1 + n].copy_from_slice(&prefix[..n]);
}

/// One JSON scalar, as serde_json's `deserialize_any` would report it.
#[derive(Clone, Copy)]
enum Tok<'a> {
    U64(u64),
    I64(i64),
    F64(f64),
    Str(&'a str),
    Bool(bool),
}

// The conversions below mirror prost-reflect 0.16's visitors
// (dynamic/serde/de/kind.rs) line for line: `None` wherever they fail. The
// exception: integers never come as floats (`Scanner::integer` reads them
// exactly, as strict.rs does for the reference), so a float is declined.

fn to_i32(t: Tok<'_>) -> Option<i32> {
    match t {
        Tok::Str(s) => s.parse().ok(),
        Tok::I64(v) => v.try_into().ok(),
        Tok::U64(v) => v.try_into().ok(),
        Tok::F64(_) => None,
        Tok::Bool(_) => None,
    }
}

fn to_u32(t: Tok<'_>) -> Option<u32> {
    match t {
        Tok::Str(s) => s.parse().ok(),
        Tok::I64(v) => v.try_into().ok(),
        Tok::U64(v) => v.try_into().ok(),
        Tok::F64(_) => None,
        Tok::Bool(_) => None,
    }
}

fn to_i64(t: Tok<'_>) -> Option<i64> {
    match t {
        Tok::Str(s) => s.parse().ok(),
        Tok::I64(v) => Some(v),
        Tok::U64(v) => v.try_into().ok(),
        Tok::F64(_) => None,
        Tok::Bool(_) => None,
    }
}

fn to_u64(t: Tok<'_>) -> Option<u64> {
    match t {
        Tok::Str(s) => s.parse().ok(),
        Tok::I64(v) => v.try_into().ok(),
        Tok::U64(v) => Some(v),
        Tok::F64(_) => None,
        Tok::Bool(_) => None,
    }
}

/// NaN is declined although the reference accepts it: NaN != NaN, so no
/// bytes could decode to a message equal to the reference's.
fn to_f64(t: Tok<'_>) -> Option<f64> {
    let v = match t {
        Tok::F64(v) => v,
        Tok::I64(v) => v as f64,
        Tok::U64(v) => v as f64,
        Tok::Str(s) => match s.parse::<f64>() {
            Ok(v) => v,
            Err(_) if s == "Infinity" => f64::INFINITY,
            Err(_) if s == "-Infinity" => f64::NEG_INFINITY,
            Err(_) => return None,
        },
        Tok::Bool(_) => return None,
    };
    (!v.is_nan()).then_some(v)
}

fn to_f32(t: Tok<'_>) -> Option<f32> {
    let v = match t {
        Tok::F64(v) => {
            if v < f32::MIN as f64 || v > f32::MAX as f64 {
                return None;
            }
            v as f32
        }
        Tok::I64(v) => v as f32,
        Tok::U64(v) => v as f32,
        Tok::Str(s) => match s.parse::<f32>() {
            Ok(v) => v,
            Err(_) if s == "Infinity" => f32::INFINITY,
            Err(_) if s == "-Infinity" => f32::NEG_INFINITY,
            Err(_) => return None,
        },
        Tok::Bool(_) => return None,
    };
    (!v.is_nan()).then_some(v)
}

/// Writes a scalar's value (no key); returns whether it is the type's default.
fn put_scalar(out: &mut Vec<u8>, s: Scalar, t: Tok<'_>) -> Option<bool> {
    Some(match s {
        Scalar::Int32 => {
            let v = to_i32(t)?;
            put_varint(out, i64::from(v) as u64);
            v == 0
        }
        Scalar::Sint32 => {
            let v = to_i32(t)?;
            put_varint(out, u64::from(((v << 1) ^ (v >> 31)) as u32));
            v == 0
        }
        Scalar::Sfixed32 => {
            let v = to_i32(t)?;
            out.extend_from_slice(&v.to_le_bytes());
            v == 0
        }
        Scalar::Int64 => {
            let v = to_i64(t)?;
            put_varint(out, v as u64);
            v == 0
        }
        Scalar::Sint64 => {
            let v = to_i64(t)?;
            put_varint(out, ((v << 1) ^ (v >> 63)) as u64);
            v == 0
        }
        Scalar::Sfixed64 => {
            let v = to_i64(t)?;
            out.extend_from_slice(&v.to_le_bytes());
            v == 0
        }
        Scalar::Uint32 => {
            let v = to_u32(t)?;
            put_varint(out, u64::from(v));
            v == 0
        }
        Scalar::Fixed32 => {
            let v = to_u32(t)?;
            out.extend_from_slice(&v.to_le_bytes());
            v == 0
        }
        Scalar::Uint64 => {
            let v = to_u64(t)?;
            put_varint(out, v);
            v == 0
        }
        Scalar::Fixed64 => {
            let v = to_u64(t)?;
            out.extend_from_slice(&v.to_le_bytes());
            v == 0
        }
        Scalar::Double => {
            let v = to_f64(t)?;
            out.extend_from_slice(&v.to_le_bytes());
            v == 0.0
        }
        Scalar::Float => {
            let v = to_f32(t)?;
            out.extend_from_slice(&v.to_le_bytes());
            v == 0.0
        }
        Scalar::Bool => {
            let Tok::Bool(v) = t else { return None };
            out.push(u8::from(v));
            !v
        }
        Scalar::String => {
            let Tok::Str(v) = t else { return None };
            put_varint(out, v.len() as u64);
            out.extend_from_slice(v.as_bytes());
            v.is_empty()
        }
        Scalar::Bytes => {
            let Tok::Str(v) = t else { return None };
            put_base64(out, v)?
        }
    })
}

/// Length-prefixed decoded base64, accepting exactly what prost-reflect's
/// `BytesVisitor` accepts (same crate and version, same configuration: either
/// alphabet, padding optional, trailing bits allowed). Returns whether empty.
fn put_base64(out: &mut Vec<u8>, v: &str) -> Option<bool> {
    use base64::alphabet;
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    use base64::{DecodeError, Engine as _};

    const CONFIG: GeneralPurposeConfig = GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent);
    const STANDARD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, CONFIG);
    const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, CONFIG);

    let start = begin_len(out);
    match STANDARD.decode_vec(v, out) {
        Ok(()) => {}
        Err(DecodeError::InvalidByte(_, b'-' | b'_')) => {
            out.truncate(start);
            URL_SAFE.decode_vec(v, out).ok()?;
        }
        Err(_) => return None,
    }
    let empty = out.len() == start;
    end_len(out, start);
    Some(empty)
}

// prost-reflect's ranges for Timestamp and Duration (dynamic/serde/mod.rs).
const MIN_TIMESTAMP_SECONDS: i64 = -62_135_596_800;
const MAX_TIMESTAMP_SECONDS: i64 = 253_402_300_799;
const MAX_DURATION_SECONDS: u64 = 315_576_000_000;
const MAX_DURATION_NANOS: u32 = 999_999_999;

/// prost-reflect's `validate_strict_rfc3339`, as a predicate: prost-types'
/// parser alone accepts more (lowercase `t`, no seconds, ...).
fn strict_rfc3339(v: &str) -> bool {
    let b = v.as_bytes();
    let mut i = 0;
    let digits = |i: &mut usize, n: usize| {
        let ok = b.len() >= *i + n && b[*i..*i + n].iter().all(u8::is_ascii_digit);
        if ok {
            *i += n;
        }
        ok
    };
    let byte = |i: &mut usize, c: u8| {
        let ok = b.get(*i) == Some(&c);
        if ok {
            *i += 1;
        }
        ok
    };
    if !(digits(&mut i, 4)
        && byte(&mut i, b'-')
        && digits(&mut i, 2)
        && byte(&mut i, b'-')
        && digits(&mut i, 2)
        && byte(&mut i, b'T')
        && digits(&mut i, 2)
        && byte(&mut i, b':')
        && digits(&mut i, 2)
        && byte(&mut i, b':')
        && digits(&mut i, 2))
    {
        return false;
    }
    if byte(&mut i, b'.') {
        if !digits(&mut i, 1) {
            return false;
        }
        while digits(&mut i, 1) {}
    }
    if byte(&mut i, b'+') || byte(&mut i, b'-') {
        if !(digits(&mut i, 2) && byte(&mut i, b':') && digits(&mut i, 2)) {
            return false;
        }
    } else if !byte(&mut i, b'Z') {
        return false;
    }
    i == b.len()
}

/// The common timestamp, `YYYY-MM-DDTHH:MM:SS[.f]Z` with 1 to 9 fraction
/// digits and a real calendar date, as seconds and nanos since the epoch;
/// `None` for anything else, which prost-types' parser then judges (offsets,
/// a leap second, long fractions, invalid dates). Parsing with prost-types
/// plus the strict-format check was 6% of a body of items with timestamps.
/// A property test checks it against prost-types.
fn utc_timestamp(s: &str) -> Option<(i64, i32)> {
    let b = s.as_bytes();
    if b.len() < 20 || b[b.len() - 1] != b'Z' {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<i64> {
        b[from..to].iter().try_fold(0i64, |v, &c| {
            c.is_ascii_digit().then(|| v * 10 + i64::from(c - b'0'))
        })
    };
    let punct = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
    if punct.iter().any(|&(i, c)| b[i] != c) {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    let nanos = match b.len() - 20 {
        0 => 0,
        n @ 2..=10 if b[19] == b'.' => num(20, 19 + n)? * 10i64.pow(10 - n as u32),
        _ => return None,
    };
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if !(1..=days_in_month).contains(&day) || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    // Days from 1970-01-01 to the civil date (H. Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    Some((
        days * 86_400 + hour * 3600 + minute * 60 + second,
        nanos as i32,
    ))
}

/// Timestamp and Duration bodies as prost encodes `prost_types`' structs
/// (zero fields left out), which is what the reference decodes from.
fn put_seconds_nanos(out: &mut Vec<u8>, seconds: i64, nanos: i32) {
    let start = begin_len(out);
    if seconds != 0 {
        out.push(0x08);
        put_varint(out, seconds as u64);
    }
    if nanos != 0 {
        out.push(0x10);
        put_varint(out, i64::from(nanos) as u64);
    }
    end_len(out, start);
}

/// Writes one non-null JSON scalar as a value of `kind`, keyed by `tag`
/// (none inside a packed list). `Some(false)`: the reference leaves it unset
/// (an enum name it does not know, when unknown names are allowed).
fn put_token(
    st: &mut State<'_, '_, '_>,
    kind: ValueKind,
    tag: Option<&Tag>,
    t: Tok<'_>,
) -> Option<bool> {
    let out = &mut *st.out;
    match kind {
        ValueKind::Scalar(s) => {
            if let Some(tag) = tag {
                tag.put(out);
            }
            put_scalar(out, s, t)?;
        }
        ValueKind::Enum(e) => {
            let n = match t {
                Tok::Str(s) => match st.plan.enums[e as usize].get(s.as_bytes()) {
                    Some(n) => n,
                    None if st.plan.reject_unknown => return None,
                    None => return Some(false),
                },
                Tok::I64(v) => i32::try_from(v).ok()?,
                Tok::U64(v) => i32::try_from(v).ok()?,
                Tok::F64(_) | Tok::Bool(_) => return None,
            };
            if let Some(tag) = tag {
                tag.put(out);
            }
            put_varint(out, i64::from(n) as u64);
        }
        ValueKind::Timestamp => {
            let Tok::Str(s) = t else { return None };
            let (seconds, nanos) = match utc_timestamp(s) {
                Some(v) => v,
                None if strict_rfc3339(s) => {
                    let ts: prost_types::Timestamp = s.parse().ok()?;
                    (ts.seconds, ts.nanos)
                }
                None => return None,
            };
            if !(MIN_TIMESTAMP_SECONDS..=MAX_TIMESTAMP_SECONDS).contains(&seconds) {
                return None;
            }
            tag?.put(out);
            put_seconds_nanos(out, seconds, nanos);
        }
        ValueKind::Duration => {
            let Tok::Str(s) = t else { return None };
            let d: prost_types::Duration = s.parse().ok()?;
            if d.seconds.unsigned_abs() > MAX_DURATION_SECONDS
                || d.nanos.unsigned_abs() > MAX_DURATION_NANOS
            {
                return None;
            }
            tag?.put(out);
            put_seconds_nanos(out, d.seconds, d.nanos);
        }
        ValueKind::Wrapper(s) => {
            tag?.put(out);
            let start = begin_len(out);
            out.push(0x08 | s.wire_type());
            // prost's impls for the wrapped primitives leave out a default
            // value (`-0.0 == 0.0` included), and the reference decodes that.
            if put_scalar(out, s, t)? {
                out.truncate(start);
            }
            end_len(out, start);
        }
        ValueKind::Message(_) | ValueKind::Unsupported => return None,
    }
    Some(true)
}

/// A number as serde_json's `deserialize_any` hands it to a visitor: the
/// numbers the scanner does not convert itself go through this, so their
/// value (float rounding, range errors) is decided by the reference's parser.
struct Num(Tok<'static>);

impl<'de> serde::Deserialize<'de> for Num {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Num, D::Error> {
        d.deserialize_any(NumVisitor)
    }
}

struct NumVisitor;

impl Visitor<'_> for NumVisitor {
    type Value = Num;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Num, E> {
        Ok(Num(Tok::U64(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Num, E> {
        Ok(Num(Tok::I64(v)))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Num, E> {
        Ok(Num(Tok::F64(v)))
    }
}

/// serde_json's own limit on nested arrays and objects is 128; the scanner
/// declines well before it, so it never accepts what serde_json refuses.
const SCAN_DEPTH_LIMIT: usize = 100;

/// Where a number's text is, and whether it is a plain integer.
struct NumSpan {
    start: usize,
    end: usize,
    negative: bool,
    /// Digits of a number without fraction or exponent (`None` otherwise).
    int_digits: Option<(usize, usize)>,
}

// The scanner: RFC 8259 JSON as serde_json reads it (only space, tab, CR and
// LF as whitespace; no trailing commas, comments, leading zeros or bare
// control characters), checked byte by byte. Every `None` is a fallback.
impl<'t> State<'_, '_, 't> {
    fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.at) {
            if !matches!(c, b' ' | b'\n' | b'\r' | b'\t') {
                break;
            }
            self.at += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.at).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        let hit = self.peek() == Some(c);
        self.at += usize::from(hit);
        hit
    }

    /// After a member or element: whitespace, then `,` (and whitespace) or
    /// `close`. Returns true at `close`.
    fn after_item(&mut self, close: u8) -> Option<bool> {
        self.ws();
        let c = self.peek()?;
        self.at += 1;
        if c == close {
            return Some(true);
        }
        if c != b',' {
            return None;
        }
        self.ws();
        Some(false)
    }

    /// An object's key: a string, at the cursor.
    fn key(&mut self) -> Option<Cow<'t, str>> {
        if self.peek() != Some(b'"') {
            return None;
        }
        self.string()
    }

    /// The colon after a key, and the whitespace around it.
    fn colon(&mut self) -> Option<()> {
        self.ws();
        self.eat(b':').then_some(())?;
        self.ws();
        Some(())
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        if !self.b[self.at..].starts_with(word) {
            return None;
        }
        self.at += word.len();
        Some(())
    }

    /// A string at the cursor (its opening quote). Borrowed from the body
    /// unless it has escapes, which serde_json decodes (and judges).
    fn string(&mut self) -> Option<Cow<'t, str>> {
        let b = self.b;
        let start = self.at + 1;
        let mut i = start;
        // Eight bytes at a time while none is a quote, a backslash or a
        // control character (the classic SWAR zero-byte test on each).
        while let Some(chunk) = b.get(i..i + 8) {
            let w = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
            const ONES: u64 = 0x0101_0101_0101_0101;
            const HIGH: u64 = 0x8080_8080_8080_8080;
            let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
            let special = has_zero(w ^ (ONES * u64::from(b'"')))
                | has_zero(w ^ (ONES * u64::from(b'\\')))
                | (w.wrapping_sub(ONES * 0x20) & !w & HIGH);
            if special != 0 {
                // The lowest flagged byte is exact (the test's false
                // positives only sit above a true one).
                i += (special.trailing_zeros() / 8) as usize;
                break;
            }
            i += 8;
        }
        loop {
            match *b.get(i)? {
                b'"' => {
                    self.at = i + 1;
                    return Some(Cow::Borrowed(&self.text[start..i]));
                }
                b'\\' => return self.escaped(start),
                c if c < 0x20 => return None,
                _ => i += 1,
            }
        }
    }

    fn escaped(&mut self, start: usize) -> Option<Cow<'t, str>> {
        let b = self.b;
        let mut i = start;
        loop {
            match *b.get(i)? {
                b'"' => break,
                // The escaped byte is ASCII in valid JSON; serde_json below
                // refuses it otherwise.
                b'\\' => i += 2,
                c if c < 0x20 => return None,
                _ => i += 1,
            }
        }
        let s: String = serde_json::from_str(self.text.get(start - 1..=i)?).ok()?;
        self.at = i + 1;
        Some(Cow::Owned(s))
    }

    /// A number's extent, by JSON's grammar.
    fn number_span(&mut self) -> Option<NumSpan> {
        let b = self.b;
        let start = self.at;
        let digits = |mut i: usize| {
            while matches!(b.get(i), Some(b'0'..=b'9')) {
                i += 1;
            }
            i
        };
        let negative = b.get(start) == Some(&b'-');
        let first = start + usize::from(negative);
        let mut i = match b.get(first) {
            Some(b'0') => first + 1,
            Some(b'1'..=b'9') => digits(first + 1),
            _ => return None,
        };
        let int_end = i;
        if b.get(i) == Some(&b'.') {
            let end = digits(i + 1);
            if end == i + 1 {
                return None;
            }
            i = end;
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            let end = digits(i);
            if end == i {
                return None;
            }
            i = end;
        }
        self.at = i;
        Some(NumSpan {
            start,
            end: i,
            negative,
            int_digits: (i == int_end).then_some((first, int_end)),
        })
    }

    /// The magnitude of a plain integer (no fraction or exponent) of at
    /// most 18 digits: no overflow, and the same value serde_json
    /// accumulates. `None` for every other number.
    fn short_integer(&self, n: &NumSpan) -> Option<u64> {
        let (from, to) = n.int_digits?;
        (to - from <= 18).then(|| {
            self.b[from..to]
                .iter()
                .fold(0u64, |v, &c| v * 10 + u64::from(c - b'0'))
        })
    }

    /// A number as serde_json would report it: u64 for a non-negative
    /// integer, i64 for a negative one, f64 for the rest (`-0` included).
    fn number(&mut self) -> Option<Tok<'static>> {
        let n = self.number_span()?;
        if let Some(v) = self.short_integer(&n) {
            return Some(match (n.negative, v) {
                (false, v) => Tok::U64(v),
                (true, 0) => Tok::F64(-0.0),
                (true, v) => Tok::I64(-(v as i64)),
            });
        }
        let Num(t) = serde_json::from_str(&self.text[n.start..n.end]).ok()?;
        Some(t)
    }

    /// A number for an integer field, exactly: u64 when not negative, i64
    /// when negative; `None` (the reference refuses it) when it is not a
    /// whole number or needs more than 64 bits. A plain integer of up to 18
    /// digits takes the same quick sum as in [`Scanner::number`]
    /// ([`Scanner::short_integer`]).
    fn integer(&mut self) -> Option<Tok<'static>> {
        let n = self.number_span()?;
        if let Some(v) = self.short_integer(&n) {
            return Some(match n.negative {
                true if v != 0 => Tok::I64(-(v as i64)),
                _ => Tok::U64(v),
            });
        }
        let v = json_int::exact(&self.b[n.start..n.end])?;
        Some(match v.negative_value() {
            Some(i) => Tok::I64(i),
            None if v.is_negative() => return None,
            None => Tok::U64(v.magnitude),
        })
    }

    fn enter(&mut self) -> Option<()> {
        self.depth += 1;
        (self.depth <= self.plan.max_depth && self.depth <= SCAN_DEPTH_LIMIT).then_some(())
    }

    fn leave(&mut self) {
        self.depth -= 1;
    }

    /// The whole body: one object, then only whitespace.
    fn document(&mut self, msg: u32) -> Option<()> {
        self.ws();
        if !self.eat(b'{') {
            return None;
        }
        self.message_body(msg)?;
        self.ws();
        (self.at == self.b.len()).then_some(())
    }

    /// A nested message (cursor after its `{`): key, length, fields.
    fn message(&mut self, msg: u32, tag: Option<&Tag>) -> Option<bool> {
        // Messages never sit in packed lists, so there is always a key.
        tag?.put(self.out);
        let start = begin_len(self.out);
        self.message_body(msg)?;
        end_len(self.out, start);
        Some(true)
    }

    /// A message object's fields (cursor after its `{`), with strict.rs's
    /// rules: a known field once (under either name), at most one member of
    /// a oneof set, bounded nesting.
    fn message_body(&mut self, msg: u32) -> Option<()> {
        self.enter()?;
        let plan = self.plan;
        let m = &plan.msgs[msg as usize];
        let base = self.seen.len();
        self.seen.resize(base + m.seen_words, 0);
        self.ws();
        if !self.eat(b'}') {
            loop {
                let key = self.key()?;
                let index = m.names.get(key.as_bytes());
                self.colon()?;
                match index {
                    // strict.rs does not check unknown keys for duplicates.
                    None if plan.reject_unknown || m.has_extensions => return None,
                    None => self.skip()?,
                    Some(i) => {
                        let f = &m.fields[i as usize];
                        if matches!(f.kind, ValueKind::Unsupported) || !self.mark(base, i as usize)
                        {
                            return None;
                        }
                        let set = self.field_value(f)?;
                        // prost-reflect refuses a second oneof member only
                        // once it has a value (a `null` member sets nothing).
                        if let (true, Some(o)) = (set, f.oneof) {
                            if !self.mark(base, m.fields.len() + o as usize) {
                                return None;
                            }
                        }
                    }
                }
                if self.after_item(b'}')? {
                    break;
                }
            }
        }
        self.seen.truncate(base);
        self.leave();
        Some(())
    }

    /// A field's value; `Some(false)` when it sets nothing (`null`).
    fn field_value(&mut self, f: &FieldPlan) -> Option<bool> {
        match self.peek()? {
            b'{' => {
                self.at += 1;
                match (f.shape, f.kind) {
                    (Shape::Single, ValueKind::Message(m)) => self.message(m, Some(&f.tag)),
                    (Shape::Map { key }, _) => self.map_field(f, key),
                    _ => None,
                }
            }
            b'[' => {
                self.at += 1;
                match f.shape {
                    Shape::List { packed } => self.list(f, packed),
                    _ => None,
                }
            }
            b'n' => {
                // prost-reflect leaves the field unset (Value and NullValue,
                // where null means something, are Unsupported).
                self.literal(b"null")?;
                Some(false)
            }
            _ => match f.shape {
                Shape::Single => self.scalar(f.kind, Some(&f.tag)),
                _ => None,
            },
        }
    }

    /// A string, number or boolean written as a value of `kind`.
    fn scalar(&mut self, kind: ValueKind, tag: Option<&Tag>) -> Option<bool> {
        match self.peek()? {
            b'"' => {
                let s = self.string()?;
                put_token(self, kind, tag, Tok::Str(&s))
            }
            b't' => {
                self.literal(b"true")?;
                put_token(self, kind, tag, Tok::Bool(true))
            }
            b'f' => {
                self.literal(b"false")?;
                put_token(self, kind, tag, Tok::Bool(false))
            }
            _ => {
                let t = match kind {
                    ValueKind::Scalar(s) | ValueKind::Wrapper(s) if s.is_integer() => {
                        self.integer()?
                    }
                    _ => self.number()?,
                };
                put_token(self, kind, tag, t)
            }
        }
    }

    /// A list element or a map value: never `null`, never an array.
    fn elem(&mut self, kind: ValueKind, tag: Option<&Tag>) -> Option<bool> {
        match self.peek()? {
            b'{' => {
                self.at += 1;
                match kind {
                    ValueKind::Message(m) => self.message(m, tag),
                    _ => None,
                }
            }
            b'[' | b'n' => None,
            _ => self.scalar(kind, tag),
        }
    }

    /// A repeated field's array (cursor after its `[`). An empty one of a
    /// packable kind is written as an empty packed run; of strings, bytes or
    /// messages it writes nothing (the reference's encoding of its empty list).
    fn list(&mut self, f: &FieldPlan, packed: bool) -> Option<bool> {
        self.enter()?;
        self.ws();
        let empty = self.eat(b']');
        if packed {
            f.len_tag.put(self.out);
            let start = begin_len(self.out);
            if !empty {
                loop {
                    self.elem(f.kind, None)?;
                    if self.after_item(b']')? {
                        break;
                    }
                }
            }
            end_len(self.out, start);
        } else {
            let mut any = false;
            if !empty {
                loop {
                    any |= self.elem(f.kind, Some(&f.tag))?;
                    if self.after_item(b']')? {
                        break;
                    }
                }
            }
            if !any && f.kind.packable() {
                f.len_tag.put(self.out);
                self.out.push(0);
            }
        }
        self.leave();
        Some(true)
    }

    /// A map field's object (cursor after its `{`): one entry message (key 1,
    /// value 2) per key. Keys must differ as strings (strict.rs); keys equal
    /// as numbers ("1", "01") both go out, and the later wins on decode as it
    /// does in the reference.
    fn map_field(&mut self, f: &FieldPlan, key: Scalar) -> Option<bool> {
        self.enter()?;
        let keys_base = self.keys.len();
        let value_tag = Tag::new(2, f.kind.wire_type());
        self.ws();
        if !self.eat(b'}') {
            loop {
                let k = self.key()?;
                let (entry, content) = self.map_key(f, key, &k)?;
                self.colon()?;
                if self.elem(f.kind, Some(&value_tag))? {
                    end_len(self.out, content);
                } else {
                    self.out.truncate(entry);
                }
                if self.after_item(b'}')? {
                    break;
                }
            }
        }
        // An empty map has written nothing, as the reference's empty map
        // encodes. Hashes, not keys, so no key is copied: a collision only
        // costs a needless fallback, never a wrong answer.
        let keys = &mut self.keys[keys_base..];
        keys.sort_unstable();
        if keys.windows(2).any(|w| w[0] == w[1]) {
            return None;
        }
        self.keys.truncate(keys_base);
        self.leave();
        Some(true)
    }

    /// Notes a map key, opens the entry and writes field 1; returns where the
    /// entry and its content start.
    fn map_key(&mut self, f: &FieldPlan, key: Scalar, v: &str) -> Option<(usize, usize)> {
        self.keys.push(fnv(v.as_bytes()));
        let out = &mut *self.out;
        let entry = out.len();
        f.len_tag.put(out);
        let content = begin_len(out);
        out.push(0x08 | key.wire_type());
        // prost-reflect parses keys with `FromStr`, as `Tok::Str` does,
        // except bools, which its visitor takes only as JSON booleans.
        match key {
            Scalar::Bool => out.push(u8::from(v.parse::<bool>().ok()?)),
            s => {
                put_scalar(out, s, Tok::Str(v))?;
            }
        }
        Some((entry, content))
    }

    /// An unknown field's value, checked as serde_json's `IgnoredAny` checks
    /// it or more strictly (escapes decoded, numbers in range). Like
    /// serde_json's skipping, a loop with its own stack, not recursion: the
    /// reference accepts any nesting there, and so does this.
    fn skip(&mut self) -> Option<()> {
        let mut open: Vec<u8> = Vec::new();
        loop {
            match self.peek()? {
                b'{' => {
                    self.at += 1;
                    self.ws();
                    if !self.eat(b'}') {
                        open.push(b'}');
                        self.member_key()?;
                        continue;
                    }
                }
                b'[' => {
                    self.at += 1;
                    self.ws();
                    if !self.eat(b']') {
                        open.push(b']');
                        continue;
                    }
                }
                b'"' => {
                    self.string()?;
                }
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'n' => self.literal(b"null")?,
                _ => {
                    self.number()?;
                }
            }
            // A value is complete: close what it completes, up to the next item.
            loop {
                let Some(&close) = open.last() else {
                    return Some(());
                };
                if !self.after_item(close)? {
                    if close == b'}' {
                        self.member_key()?;
                    }
                    break;
                }
                open.pop();
            }
        }
    }

    /// A skipped object's key and colon.
    fn member_key(&mut self) -> Option<()> {
        self.key()?;
        self.colon()
    }
}

#[cfg(test)]
mod tests {

    use base64::Engine as _;
    use proptest::prelude::*;
    use prost::Message as _;
    use prost_reflect::{DescriptorPool, DynamicMessage};

    use super::*;
    use crate::transcode::request::{decode_body, BodyRule};

    fn pool() -> &'static DescriptorPool {
        crate::transcode::test_pool()
    }

    fn everything() -> MessageDescriptor {
        pool().get_message_by_name("testing.v1.Everything").unwrap()
    }

    fn opts(reject_unknown: bool, max_depth: usize) -> DecodeOptions {
        DecodeOptions {
            reject_unknown,
            max_depth,
        }
    }

    /// Both paths on one body: asserts the contract and returns whether the
    /// fast path answered (`Some(reference_ok)` otherwise).
    fn run(desc: &MessageDescriptor, json: &[u8], o: DecodeOptions) -> Result<(), bool> {
        let plan = BodyPlan::new(desc, o);
        // Something already in the buffer: encode appends, and truncates back on Err.
        let mut out = vec![0xAB];
        let fast = plan.encode(json, &mut out);
        let reference = decode_body(desc, &BodyRule::All, json, o);
        match fast {
            Ok(()) => {
                let want = reference.unwrap_or_else(|e| {
                    panic!(
                        "fast path accepted what the reference refuses ({e}): {}",
                        String::from_utf8_lossy(json)
                    )
                });
                assert_eq!(out[0], 0xAB);
                let got = DynamicMessage::decode(desc.clone(), &out[1..]).unwrap_or_else(|e| {
                    panic!(
                        "undecodable output ({e}) for {}",
                        String::from_utf8_lossy(json)
                    )
                });
                // Wire meaning: both re-encoded and decoded again, so "set
                // to empty/default" and "unset" compare equal, as a backend
                // reading the bytes sees them.
                let norm = |m: &DynamicMessage| {
                    DynamicMessage::decode(desc.clone(), m.encode_to_vec().as_slice()).unwrap()
                };
                assert_eq!(
                    norm(&got),
                    norm(&want),
                    "for {}",
                    String::from_utf8_lossy(json)
                );
                Ok(())
            }
            Err(Fallback) => {
                assert_eq!(out, [0xAB], "output not truncated on fallback");
                Err(reference.is_ok())
            }
        }
    }

    /// The fast path must take it, and agree.
    #[track_caller]
    fn fast(json: &str) {
        if let Err(reference_ok) = run(&everything(), json.as_bytes(), DecodeOptions::default()) {
            panic!("fell back (reference ok: {reference_ok}) on {json}");
        }
    }

    /// The reference refuses it, and so the fast path must fall back.
    #[track_caller]
    fn refused(json: &str, o: DecodeOptions) {
        assert_eq!(
            run(&everything(), json.as_bytes(), o),
            Err(false),
            "expected the reference to refuse {json}"
        );
    }

    /// Accepted by the reference, but left to it.
    #[track_caller]
    fn declined_but_valid(json: &str) {
        assert_eq!(
            run(&everything(), json.as_bytes(), DecodeOptions::default()),
            Err(true),
            "expected a fallback the reference accepts for {json}"
        );
    }

    #[test]
    fn the_scanner_reads_what_serde_json_reads() {
        let o = DecodeOptions::default();
        // The special byte of a string at every offset of the 8-byte stride.
        for n in 0..20 {
            let x = "x".repeat(n);
            fast(&format!(
                r#"{{"name": "{x}\"{x}", "stringField": "{x}é\n{x}"}}"#
            ));
            fast(&format!(
                r#"{{"name": "{x}\\", "stringField": "{x}\u00e9{x}"}}"#
            ));
            refused(&format!("{{\"name\": \"{x}\u{1f}{x}\"}}"), o);
            refused(&format!("{{\"name\": \"{x}\u{0}\"}}"), o);
            refused(&format!("{{\"name\": \"{x}"), o);
            refused(&format!("{{\"name\": \"{x}\\"), o);
        }
        // Escaped keys mean their text.
        fast(r#"{"n\u0061me": "a", "int\u0033\u0032Field": 1}"#);
        // Integers the scanner converts, and those it leaves to serde_json.
        fast(r#"{"doubleField": -0, "int32Field": -0, "floatField": 0}"#);
        fast(r#"{"uint64Field": 999999999999999999, "int64Field": -999999999999999999}"#);
        fast(r#"{"uint64Field": 9999999999999999999, "int64Field": -1000000000000000000}"#);
        fast(r#"{"int64Field": -9223372036854775808, "doubleField": 18446744073709551616}"#);
        fast(r#"{"doubleField": 1E+2, "floatField": 0.1e-2}"#);
        fast(r#"{"doubleField": -123456789012345678901234567890.5e-3}"#);
        for bad in [
            "1e400", "1.", ".5", "-", "1e", "1e+", "--1", "0x1", "01", "-01", "1.e3",
        ] {
            refused(&format!(r#"{{"doubleField": {bad}}}"#), o);
        }
        // Only the four whitespace bytes JSON allows.
        fast("\t\r\n {\t\r\n \"name\"\t\r\n :\t\r\n \"a\"\t\r\n }\t\r\n ");
        refused("{\"name\":\u{c}\"a\"}", o);
        refused("\u{c}{\"name\": \"a\"}", o);
        // Commas, colons and literals.
        for bad in [
            r#"{"tags": ["a",]}"#,
            r#"{"tags": [,"a"]}"#,
            r#"{"tags": ["a" "b"]}"#,
            r#"{"labels": {"a": "b",}}"#,
            r#"{"labels": {"a" "b"}}"#,
            r#"{"name" "a"}"#,
            r#"{,}"#,
            r#"{"boolField": tru}"#,
            r#"{"boolField": truex}"#,
            r#"{"boolField": True}"#,
            r#"{"name": nul}"#,
            r#"{"name": "a"]"#,
            r#"{"tags": ["a"}"#,
        ] {
            refused(bad, o);
        }
        // Skipped unknown values: any JSON, checked as strictly.
        let lax = opts(false, 64);
        let body = r#"{"nope": {"a\"b": ["\u00e9", {"c": [1, 2.5, -0, true, false, null, {}, []]}]}, "name": "a"}"#;
        assert_eq!(run(&everything(), body.as_bytes(), lax), Ok(()));
        for bad in [
            r#"{"nope": [1,], "name": "a"}"#,
            r#"{"nope": {"a": 1,}, "name": "a"}"#,
            r#"{"nope": {"a" 1}, "name": "a"}"#,
            r#"{"nope": {1: 1}, "name": "a"}"#,
            r#"{"nope": "\q", "name": "a"}"#,
            r#"{"nope": [[1], "name": "a"}"#,
            r#"{"nope": 01}"#,
        ] {
            assert_eq!(run(&everything(), bad.as_bytes(), lax), Err(false), "{bad}");
        }
    }

    #[test]
    fn every_scalar_kind_matches_the_reference() {
        fast(
            r#"{"int32Field": -5, "int64Field": "-9223372036854775808", "uint32Field": 4294967295,
                "uint64Field": 18446744073709551615, "sint64Field": -3, "fixed64Field": "12",
                "doubleField": 1.5e-7, "floatField": 3.25, "boolField": true,
                "stringField": "h\u00e9llo \ud83d\ude00 \"q\" \\ \/ \b\f\n\r\t", "bytesField": "AAEC/w==",
                "color": "GREEN", "name": "n"}"#,
        );
        fast(
            r#"{"int32Field": 2147483647, "int64Field": 9223372036854775807, "uint64Field": "0"}"#,
        );
        // Integral numbers in any form, exactly: as an f64 the first two
        // would be 2^63, and the last 1.
        fast(r#"{"int64Field": 9223372036854775807.0, "sint64Field": -9.223372036854775808e18}"#);
        fast(
            r#"{"uint64Field": 1.8446744073709551615e19, "fixed64Field": 18446744073709551615.0}"#,
        );
        fast(
            r#"{"int64Wrapper": 9223372036854775806.00, "numbers": [1e18, -1e2, 9223372036854775806e0]}"#,
        );
        fast(r#"{"uint32Field": 4294967295e0, "int32Field": -21474836.48e2, "codes": {"1": "a"}}"#);
        fast(r#"{"uint64Field": 0.0, "int64Field": -0.0e5, "inner": {"deeper": {"count": 1e3}}}"#);
        fast(r#"{"doubleField": "Infinity", "floatField": "-Infinity"}"#);
        fast(r#"{"doubleField": -0.0, "floatField": 1e38, "int32Field": 3.0, "int64Field": -0}"#);
        fast(r#"{"bytesField": "-_8", "color": 3}"#);
        fast(r#"{"bytesField": ""}"#);
    }

    #[test]
    fn explicit_defaults_are_written() {
        // The reference sets these fields, and DynamicMessage's equality sees that.
        fast(
            r#"{"int32Field": 0, "stringField": "", "boolField": false, "doubleField": 0, "color": "COLOR_UNSPECIFIED"}"#,
        );
        fast(r#"{"inner": {}, "numbers": [], "colors": []}"#);
    }

    #[test]
    fn json_and_proto_names_are_both_accepted() {
        fast(
            r#"{"int32_field": 1, "string_field": "x", "bool_wrapper": true, "choice_text": "c"}"#,
        );
        fast(r#"{"int32Field": 1, "stringField": "x", "boolWrapper": true, "choiceNumber": 0}"#);
    }

    #[test]
    fn nested_repeated_and_maps_match_the_reference() {
        fast(
            r#"{"inner": {"name": "a", "deeper": {"value": "v", "count": "7"}, "number": 3},
                "items": [{"name": "x"}, {}, {"deeper": {"count": 1}}],
                "tags": ["a", "", "c"], "numbers": [1, "-2", 3], "colors": ["RED", "BLUE", 0],
                "labels": {"k": "v", "": "", "k\u0041": "w"}, "codes": {"1": "one", "-7": "minus", "01": "again"}}"#,
        );
        // A long nested message: its length prefix takes two bytes.
        let long = "x".repeat(300);
        fast(&format!(
            r#"{{"inner": {{"name": "{long}", "deeper": {{"value": "{long}"}}}}}}"#
        ));
        let many: Vec<String> = (0..200).map(|i| i.to_string()).collect();
        fast(&format!(r#"{{"numbers": [{}]}}"#, many.join(",")));
    }

    #[test]
    fn well_known_types_match_the_reference() {
        fast(
            r#"{"timestamp": "2024-02-29T12:34:56.789Z", "duration": "-1.5s",
                "int64Wrapper": "42", "boolWrapper": false, "stringWrapper": "s"}"#,
        );
        fast(
            r#"{"timestamp": "1970-01-01T00:00:00Z", "duration": "0s", "int64Wrapper": 0, "stringWrapper": ""}"#,
        );
        fast(r#"{"timestamp": "0001-01-01T00:00:00-01:30", "duration": "315576000000s"}"#);
        fast(r#"{"timestamp": "9999-12-31T23:59:59.999999999Z", "duration": "0.000000001s"}"#);
    }

    #[test]
    fn null_sets_nothing() {
        fast(
            r#"{"int32Field": null, "inner": null, "tags": null, "labels": null, "timestamp": null}"#,
        );
        // A null oneof member does not count as set.
        fast(r#"{"choiceText": null, "choiceNumber": 5}"#);
    }

    #[test]
    fn whitespace_only_body_is_an_empty_message() {
        for body in ["", " ", "\n\t\r ", "\x0c"] {
            let plan = BodyPlan::new(&everything(), DecodeOptions::default());
            let mut out = vec![1, 2];
            assert_eq!(plan.encode(body.as_bytes(), &mut out), Ok(()));
            assert_eq!(out, [1, 2]);
            assert!(run(&everything(), body.as_bytes(), DecodeOptions::default()).is_ok());
        }
        fast("{}");
        fast(" \n{ }\n ");
    }

    #[test]
    fn everything_the_reference_refuses_falls_back() {
        let strict = DecodeOptions::default();
        let lax = opts(false, 64);
        for o in [strict, lax] {
            // Duplicates, and one field under both names.
            refused(r#"{"name": "a", "name": "b"}"#, o);
            refused(r#"{"int32Field": 1, "int32_field": 2}"#, o);
            refused(r#"{"inner": {"name": "a", "name": "b"}}"#, o);
            refused(r#"{"labels": {"a": "1", "a": "2"}}"#, o);
            refused(r#"{"items": [{"number": 1, "number": 1}]}"#, o);
            // Two members of one oneof.
            refused(r#"{"choiceText": "a", "choiceNumber": 1}"#, o);
            refused(r#"{"choice_number": 0, "choiceText": ""}"#, o);
            // Not UTF-8: in a string, and (where a per-string check would
            // not look) in the spaces between members.
            for bad in [
                &b"{\"name\": \"\xff\"}"[..],
                b"{\"name\": \"a\"\xff}",
                b"\xef\xbb\xbf{}",
            ] {
                assert_eq!(run(&everything(), bad, o), Err(false), "{bad:?}");
            }
            // Wrong types.
            refused(r#"{"boolField": "true"}"#, o);
            refused(r#"{"stringField": 1}"#, o);
            refused(r#"{"int32Field": true}"#, o);
            refused(r#"{"int32Field": {}}"#, o);
            refused(r#"{"inner": []}"#, o);
            refused(r#"{"inner": "x"}"#, o);
            refused(r#"{"tags": "a"}"#, o);
            refused(r#"{"tags": [1]}"#, o);
            refused(r#"{"tags": [null]}"#, o);
            refused(r#"{"labels": []}"#, o);
            refused(r#"{"labels": {"a": null}}"#, o);
            refused(r#"{"codes": {"x": "a"}}"#, o);
            refused(r#"{"color": 1.5}"#, o);
            refused(r#"{"timestamp": 5}"#, o);
            refused(r#"{"timestamp": "2024-01-01 00:00:00Z"}"#, o);
            refused(r#"{"timestamp": "2024-01-01T00:00Z"}"#, o);
            refused(r#"{"duration": "5"}"#, o);
            refused(r#"{"int64Wrapper": "x"}"#, o);
            refused(r#"{"bytesField": "a$=="}"#, o);
            refused(r#"{"bytesField": "a-+"}"#, o);
            refused("[]", o);
            refused("1", o);
            refused("null", o);
            // Out of range.
            refused(r#"{"int32Field": 2147483648}"#, o);
            refused(r#"{"int32Field": 1.5}"#, o);
            refused(r#"{"uint32Field": -1}"#, o);
            refused(r#"{"int64Field": 9223372036854775808}"#, o);
            refused(r#"{"uint64Field": 100000000000000000000}"#, o);
            // Past the range but equal to its limit as an f64, or whole as an
            // f64 but not as the number sent: refused, never saturated.
            refused(r#"{"uint64Field": 18446744073709551616}"#, o);
            refused(r#"{"int64Field": 9223372036854775808.0}"#, o);
            refused(r#"{"int64Field": -9223372036854775809}"#, o);
            refused(r#"{"sint64Field": 9.3e18}"#, o);
            refused(r#"{"int64Wrapper": 9223372036854775808.0}"#, o);
            refused(r#"{"numbers": [1, 9223372036854775808.0]}"#, o);
            refused(r#"{"inner": {"deeper": {"count": -1e19}}}"#, o);
            refused(r#"{"int32Field": 1.0000000000000000001}"#, o);
            refused(r#"{"uint64Field": 1e-400}"#, o);
            refused(r#"{"codes": {"2147483648": "a"}}"#, o);
            refused(
                r#"{"anyField": {"@type": "type.googleapis.com/testing.v1.Integers",
                    "uint32List": [4294967296.0]}}"#,
                o,
            );
            refused(
                r#"{"anyField": {"@type": "type.googleapis.com/google.protobuf.Int64Value",
                    "value": -9223372036854775809}}"#,
                o,
            );
            refused(r#"{"floatField": 1e39}"#, o);
            refused(r#"{"doubleField": 1e400}"#, o);
            refused(r#"{"color": 2147483648}"#, o);
            refused(r#"{"timestamp": "10000-01-01T00:00:00Z"}"#, o);
            refused(r#"{"duration": "315576000001s"}"#, o);
            // Syntax, UTF-8, trailing garbage.
            refused(r#"{"name": "a",}"#, o);
            refused(r#"{"name": "a"} x"#, o);
            refused(r#"{"name": "a"}{}"#, o);
            refused(r#"{"name": "a"#, o);
            refused(r#"{"name": "\ud800"}"#, o);
            refused(r#"{"name": "\x"}"#, o);
            refused("{\"name\": \"\u{1}\"}", o);
            refused(r#"{name: "a"}"#, o);
            refused(r#"{"int32Field": 01}"#, o);
            refused(r#"{"int32Field": +1}"#, o);
            assert_eq!(
                run(&everything(), b"{\"name\": \"\xff\"}", o),
                Err(false),
                "invalid UTF-8"
            );
        }
        // Unknown field and enum names: refused only when unknowns are.
        refused(r#"{"nope": 1}"#, strict);
        refused(r#"{"inner": {"nope": 1}}"#, strict);
        refused(r#"{"color": "PURPLE"}"#, strict);
        refused(r#"{"colors": ["RED", "PURPLE"]}"#, strict);
        let lax_ok = |json: &str| {
            assert_eq!(run(&everything(), json.as_bytes(), lax), Ok(()), "{json}");
        };
        lax_ok(r#"{"nope": {"deep": [1, {"x": null}]}, "name": "a"}"#);
        lax_ok(r#"{"nope": 1, "nope": 2}"#);
        lax_ok(r#"{"color": "PURPLE", "colors": ["RED", "PURPLE"], "inner": {"nope": []}}"#);
    }

    #[test]
    fn nesting_deeper_than_the_limit_falls_back() {
        // Depth counts objects and arrays, the top object being 1.
        let body = r#"{"items": [{"deeper": {"value": "v"}}]}"#;
        assert_eq!(run(&everything(), body.as_bytes(), opts(true, 4)), Ok(()));
        assert_eq!(
            run(&everything(), body.as_bytes(), opts(true, 3)),
            Err(false)
        );
        let body = r#"{"inner": {"deeper": {}}, "labels": {"a": "b"}}"#;
        assert_eq!(run(&everything(), body.as_bytes(), opts(true, 3)), Ok(()));
        assert_eq!(
            run(&everything(), body.as_bytes(), opts(true, 2)),
            Err(false)
        );
        assert_eq!(run(&everything(), b"{}", opts(true, 0)), Err(false));
        // Skipped unknown values are not counted (the reference skips them
        // without looking inside).
        let body = r#"{"x": [[[[[[[[{"a": 1}]]]]]]]]}"#;
        assert_eq!(run(&everything(), body.as_bytes(), opts(false, 1)), Ok(()));
        // Not even serde_json's recursion limit (128): it skips with a loop.
        let deep = format!("{{\"x\": {}1{}}}", "[".repeat(200), "]".repeat(200));
        assert_eq!(run(&everything(), deep.as_bytes(), opts(false, 1)), Ok(()));
    }

    #[test]
    fn rare_forms_are_left_to_the_reference() {
        declined_but_valid(
            r#"{"anyField": {"@type": "type.googleapis.com/testing.v1.Deeper", "value": "v"}}"#,
        );
        declined_but_valid(r#"{"structField": {"a": 1}}"#);
        declined_but_valid(r#"{"valueField": null}"#);
        declined_but_valid(r#"{"fieldMask": "a,b"}"#);
        declined_but_valid(r#"{"doubleField": "NaN"}"#);
    }

    #[test]
    fn empty_arrays_and_maps_write_nothing() {
        // The reference sets them to empty, which encodes to no bytes.
        fast(r#"{"tags": []}"#);
        fast(r#"{"items": []}"#);
        fast(r#"{"labels": {}, "numbers": []}"#);
        let plan = BodyPlan::new(&everything(), DecodeOptions::default());
        let mut out = Vec::new();
        plan.encode(br#"{"tags": [], "items": [], "labels": {}}"#, &mut out)
            .unwrap();
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn a_well_known_request_type_always_falls_back() {
        let empty = pool().get_message_by_name("google.protobuf.Empty").unwrap();
        let plan = BodyPlan::new(&empty, DecodeOptions::default());
        assert_eq!(plan.encode(b"{}", &mut Vec::new()), Err(Fallback));
        assert_eq!(plan.encode(b" ", &mut Vec::new()), Ok(()));
    }

    #[test]
    fn name_tables_find_every_name_and_only_those() {
        let names: Vec<String> = (0..300).map(|i| format!("field_{i}")).collect();
        let table = Names::new(
            (names.iter().enumerate())
                .map(|(i, n)| (n.as_bytes().into(), i))
                .chain([(b"field_7".as_slice().into(), 1000)]),
        );
        for (i, n) in names.iter().enumerate() {
            let want = if i == 7 { 1000 } else { i };
            assert_eq!(table.get(n.as_bytes()), Some(want));
        }
        for absent in ["", "f", "field_", "field_300", "Field_1", "field_1 "] {
            assert_eq!(table.get(absent.as_bytes()), None, "{absent:?}");
        }
        let empty: Names<u32> = Names::default();
        assert_eq!(empty.get(b"x"), None);
    }

    #[test]
    fn plans_are_shareable() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<BodyPlan>();
    }

    // ---- Differential property tests ----

    /// One field of a generated body: its key, its other name, its value.
    type Entry = (String, String, String);

    fn quoted(s: &str) -> String {
        serde_json::to_string(s).unwrap()
    }

    /// Strings, sometimes with every character as a `\u` escape (surrogate
    /// pairs for astral ones).
    fn json_string() -> impl Strategy<Value = String> {
        (any::<String>(), any::<bool>()).prop_map(|(s, escape_all)| {
            if !escape_all {
                return quoted(&s);
            }
            let mut out = String::from("\"");
            for unit in s.encode_utf16() {
                out.push_str(&format!("\\u{unit:04x}"));
            }
            out.push('"');
            out
        })
    }

    fn int_text<T: fmt::Display + Arbitrary>() -> impl Strategy<Value = String> {
        (any::<T>(), any::<bool>())
            .prop_map(|(v, q)| if q { format!("\"{v}\"") } else { v.to_string() })
    }

    fn double_text() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<f64>()
                .prop_filter("finite", |v| v.is_finite())
                .prop_map(|v| serde_json::to_string(&v).unwrap()),
            any::<i32>().prop_map(|v| v.to_string()),
            Just("\"Infinity\"".to_owned()),
            Just("\"-Infinity\"".to_owned()),
            any::<f32>()
                .prop_filter("not NaN", |v| !v.is_nan())
                .prop_map(|v| format!("\"{v}\"")),
        ]
    }

    fn float_text() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<f32>()
                .prop_filter("finite", |v| v.is_finite())
                .prop_map(|v| serde_json::to_string(&v).unwrap()),
            any::<i16>().prop_map(|v| v.to_string()),
            Just("\"-Infinity\"".to_owned()),
        ]
    }

    fn bytes_text() -> impl Strategy<Value = String> {
        (proptest::collection::vec(any::<u8>(), 0..24), 0..4u8).prop_map(|(b, engine)| {
            use base64::engine::general_purpose::{
                STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD,
            };
            let s = match engine {
                0 => STANDARD.encode(&b),
                1 => STANDARD_NO_PAD.encode(&b),
                2 => URL_SAFE.encode(&b),
                _ => URL_SAFE_NO_PAD.encode(&b),
            };
            quoted(&s)
        })
    }

    fn color_text() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec![
                "\"COLOR_UNSPECIFIED\"",
                "\"RED\"",
                "\"GREEN\"",
                "\"BLUE\""
            ])
            .prop_map(str::to_owned),
            (0..5i32).prop_map(|v| v.to_string()),
        ]
    }

    fn timestamp_text() -> impl Strategy<Value = String> {
        (
            MIN_TIMESTAMP_SECONDS..=MAX_TIMESTAMP_SECONDS,
            0..1_000_000_000i32,
        )
            .prop_map(|(seconds, nanos)| {
                quoted(&prost_types::Timestamp { seconds, nanos }.to_string())
            })
    }

    fn duration_text() -> impl Strategy<Value = String> {
        (
            any::<bool>(),
            0..=MAX_DURATION_SECONDS as i64,
            prop::option::of(0..1_000_000_000u32),
        )
            .prop_map(|(neg, s, nanos)| {
                let sign = if neg { "-" } else { "" };
                match nanos {
                    Some(n) => format!("\"{sign}{s}.{n:09}s\""),
                    None => format!("\"{sign}{s}s\""),
                }
            })
    }

    fn object(entries: Vec<Option<(String, String)>>) -> String {
        let body: Vec<String> = entries
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{}: {v}", quoted(&k)))
            .collect();
        format!("{{{}}}", body.join(", "))
    }

    fn names(json: &'static str, proto: &'static str) -> impl Strategy<Value = (String, String)> {
        any::<bool>().prop_map(move |j| {
            if j {
                (json.to_owned(), proto.to_owned())
            } else {
                (proto.to_owned(), json.to_owned())
            }
        })
    }

    fn deeper_text() -> impl Strategy<Value = String> {
        (
            prop::option::of(json_string().prop_map(|v| ("value".to_owned(), v))),
            prop::option::of(int_text::<i64>().prop_map(|v| ("count".to_owned(), v))),
        )
            .prop_map(|(a, b)| object(vec![a, b]))
    }

    fn inner_text() -> impl Strategy<Value = String> {
        (
            prop::option::of(json_string().prop_map(|v| ("name".to_owned(), v))),
            prop::option::of(deeper_text().prop_map(|v| ("deeper".to_owned(), v))),
            prop::option::of(int_text::<i32>().prop_map(|v| ("number".to_owned(), v))),
        )
            .prop_map(|(a, b, c)| object(vec![a, b, c]))
    }

    fn array<S: Strategy<Value = String>>(elem: S, min: usize) -> impl Strategy<Value = String> {
        proptest::collection::vec(elem, min..5).prop_map(|v| format!("[{}]", v.join(", ")))
    }

    fn field<S>(json: &'static str, proto: &'static str, value: S) -> BoxedStrategy<Option<Entry>>
    where
        S: Strategy<Value = String> + 'static,
    {
        prop::option::weighted(
            0.4,
            (names(json, proto), value).prop_map(|((k, alt), v)| (k, alt, v)),
        )
        .boxed()
    }

    /// Every field the fast path must take, each present or not.
    fn valid_fields() -> Vec<BoxedStrategy<Option<Entry>>> {
        vec![
            field("int32Field", "int32_field", int_text::<i32>()),
            field("int64Field", "int64_field", int_text::<i64>()),
            field("uint32Field", "uint32_field", int_text::<u32>()),
            field("uint64Field", "uint64_field", int_text::<u64>()),
            field("sint64Field", "sint64_field", int_text::<i64>()),
            field("fixed64Field", "fixed64_field", int_text::<u64>()),
            field("doubleField", "double_field", double_text()),
            field("floatField", "float_field", float_text()),
            field(
                "boolField",
                "bool_field",
                any::<bool>().prop_map(|b| b.to_string()),
            ),
            field("stringField", "string_field", json_string()),
            field("bytesField", "bytes_field", bytes_text()),
            field("color", "color", color_text()),
            field("inner", "inner", inner_text()),
            field("tags", "tags", array(json_string(), 1)),
            field("numbers", "numbers", array(int_text::<i64>(), 0)),
            field("colors", "colors", array(color_text(), 0)),
            field(
                "labels",
                "labels",
                proptest::collection::btree_map(any::<String>(), any::<String>(), 1..4)
                    .prop_map(|m| serde_json::to_string(&m).unwrap()),
            ),
            field(
                "codes",
                "codes",
                proptest::collection::btree_map(any::<i32>(), any::<String>(), 1..4)
                    .prop_map(|m| serde_json::to_string(&m).unwrap()),
            ),
            field("timestamp", "timestamp", timestamp_text()),
            field("duration", "duration", duration_text()),
            field("int64Wrapper", "int64_wrapper", int_text::<i64>()),
            field(
                "boolWrapper",
                "bool_wrapper",
                any::<bool>().prop_map(|b| b.to_string()),
            ),
            field("stringWrapper", "string_wrapper", json_string()),
            prop_oneof![
                field("choiceText", "choice_text", json_string()),
                field("choiceNumber", "choice_number", int_text::<i32>()),
            ]
            .boxed(),
            field("items", "items", array(inner_text(), 1)),
            field("name", "name", json_string()),
        ]
    }

    fn valid_body() -> impl Strategy<Value = Vec<Entry>> {
        valid_fields()
            .prop_map(|v| v.into_iter().flatten().collect::<Vec<_>>())
            .prop_shuffle()
    }

    fn render(entries: &[Entry], ws: &str) -> String {
        let body: Vec<String> = entries
            .iter()
            .map(|(k, _, v)| format!("{ws}{}{ws}:{ws}{v}", quoted(k)))
            .collect();
        format!("{ws}{{{}{ws}}}{ws}", body.join(","))
    }

    /// Values the reference refuses or the fast path declines, for any key.
    fn odd_value() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("null".to_owned()),
            Just("[]".to_owned()),
            Just("{}".to_owned()),
            Just("[null]".to_owned()),
            Just("\"NaN\"".to_owned()),
            Just("1.5".to_owned()),
            Just("1e3".to_owned()),
            Just("-1".to_owned()),
            Just("4294967296".to_owned()),
            Just("1e400".to_owned()),
            Just("\"PURPLE\"".to_owned()),
            Just("\"2024-01-01T00:00:00Z\"".to_owned()),
            Just("\"1s\"".to_owned()),
            Just("{\"a\": 1}".to_owned()),
            Just("{\"@type\": \"x\"}".to_owned()),
            Just("{\"name\": \"a\", \"name\": \"b\"}".to_owned()),
            Just("{\"deeper\": {\"value\": 1}}".to_owned()),
            Just("[{\"number\": \"x\"}]".to_owned()),
            Just("{\"1\": \"a\", \"01\": \"b\"}".to_owned()),
            Just("{\"a\": null}".to_owned()),
            json_string(),
            any::<bool>().prop_map(|b| b.to_string()),
            int_text::<i64>(),
            double_text(),
        ]
    }

    fn any_key() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => prop::sample::select(
                everything()
                    .fields()
                    .flat_map(|f| [f.name().to_owned(), f.json_name().to_owned()])
                    .collect::<Vec<_>>()
            ),
            1 => "[a-z_]{1,8}",
        ]
    }

    #[derive(Debug, Clone)]
    enum Mutation {
        /// Entry `i` again, under the same or its other name.
        Duplicate(prop::sample::Index, bool),
        /// A field (known or not) with an odd value.
        Insert(prop::sample::Index, String, String),
        /// The value of entry `i` replaced by an odd one.
        Replace(prop::sample::Index, String),
        /// A byte of the rendered text replaced, inserted or removed.
        Byte(prop::sample::Index, u8, u8),
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        let byte = prop_oneof![
            prop::sample::select(b"{}[]\",:.-+eE0123456789 \\nultrfa\x00\x7f\xff\xc3".to_vec()),
            any::<u8>(),
        ];
        prop_oneof![
            (any::<prop::sample::Index>(), any::<bool>())
                .prop_map(|(i, alt)| Mutation::Duplicate(i, alt)),
            (any::<prop::sample::Index>(), any_key(), odd_value())
                .prop_map(|(i, k, v)| Mutation::Insert(i, k, v)),
            (any::<prop::sample::Index>(), odd_value()).prop_map(|(i, v)| Mutation::Replace(i, v)),
            (any::<prop::sample::Index>(), 0..3u8, byte)
                .prop_map(|(i, op, b)| Mutation::Byte(i, op, b)),
        ]
    }

    fn apply(mut entries: Vec<Entry>, muts: &[Mutation], ws: &str) -> Vec<u8> {
        let mut bytes = None;
        for m in muts {
            match m {
                Mutation::Duplicate(i, alt) if !entries.is_empty() => {
                    let (k, a, v) = entries[i.index(entries.len())].clone();
                    let k = if *alt { a.clone() } else { k };
                    entries.push((k, a, v));
                }
                Mutation::Insert(i, k, v) => {
                    let at = i.index(entries.len() + 1);
                    entries.insert(at, (k.clone(), k.clone(), v.clone()));
                }
                Mutation::Replace(i, v) if !entries.is_empty() => {
                    let at = i.index(entries.len());
                    entries[at].2 = v.clone();
                }
                Mutation::Byte(i, op, b) => {
                    let mut text = bytes
                        .take()
                        .unwrap_or_else(|| render(&entries, ws).into_bytes());
                    let at = i.index(text.len());
                    match op {
                        0 => text[at] = *b,
                        1 => text.insert(at, *b),
                        _ => {
                            text.remove(at);
                        }
                    }
                    bytes = Some(text);
                }
                _ => {}
            }
        }
        bytes.unwrap_or_else(|| render(&entries, ws).into_bytes())
    }

    fn whitespace() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["", " ", "\n", " \t\r\n "]).prop_map(str::to_owned)
    }

    // ---- Integer ranges ----

    /// Each integer type of `testing.v1.Integers`, its range, and whether
    /// it has a `google.protobuf` wrapper.
    const INT_TYPES: [(&str, i128, i128, bool); 10] = [
        ("int32", i32::MIN as i128, i32::MAX as i128, true),
        ("sint32", i32::MIN as i128, i32::MAX as i128, false),
        ("sfixed32", i32::MIN as i128, i32::MAX as i128, false),
        ("uint32", 0, u32::MAX as i128, true),
        ("fixed32", 0, u32::MAX as i128, false),
        ("int64", i64::MIN as i128, i64::MAX as i128, true),
        ("sint64", i64::MIN as i128, i64::MAX as i128, false),
        ("sfixed64", i64::MIN as i128, i64::MAX as i128, false),
        ("uint64", 0, u64::MAX as i128, true),
        ("fixed64", 0, u64::MAX as i128, false),
    ];

    /// `n` in one of the JSON forms a client may send for an integer field;
    /// `false` when the form itself is refused (a string in exponent form).
    fn int_form(n: i128, form: u8) -> (String, bool) {
        let sign = if n < 0 { "-" } else { "" };
        let digits = n.unsigned_abs().to_string();
        let (head, tail) = digits.split_at(1);
        let point = if tail.is_empty() { "" } else { "." };
        let k = tail.len();
        let text = match form {
            0 => n.to_string(),
            1 => format!("\"{n}\""),
            2 => format!("{n}.0"),
            3 => format!("{n}.000"),
            4 => format!("{sign}{head}{point}{tail}e{k}"),
            5 => format!("{sign}{head}.{tail}00E+{k}"),
            6 if n == 0 => "0.0e-1".to_owned(),
            6 => format!("{n}0e-1"),
            7 => format!("{sign}0.{digits}e{}", digits.len()),
            _ => return (format!("\"{sign}{head}{point}{tail}e{k}\""), false),
        };
        (text, true)
    }

    /// Where in `Integers` a value goes: its field's JSON name and the body.
    fn int_body(ty: &str, wrapper: bool, position: u8, n: i128, text: &str) -> (String, String) {
        let (field, body) = match position {
            1 => (format!("{ty}List"), format!("[7, {text}]")),
            2 => (format!("{ty}Map"), format!("{{\"a\": {text}}}")),
            // Map keys are strings whatever the form.
            3 => (format!("{ty}Key"), format!("{{\"{n}\": \"x\"}}")),
            4 if wrapper => (format!("{ty}Wrapper"), text.to_owned()),
            5 if wrapper => (format!("{ty}Wrappers"), format!("[{text}]")),
            _ => (format!("{ty}Field"), text.to_owned()),
        };
        let json = format!("{{\"{field}\": {body}}}");
        (field, json)
    }

    /// The integer the reference decoded at that place.
    fn decoded_int(m: &DynamicMessage, field: &str, position: u8) -> Option<i128> {
        use prost_reflect::{MapKey, ReflectMessage as _, Value};
        let f = m.descriptor().get_field_by_json_name(field)?;
        let v = m.get_field(&f);
        let int = |v: &Value| match v {
            Value::I32(v) => Some(i128::from(*v)),
            Value::I64(v) => Some(i128::from(*v)),
            Value::U32(v) => Some(i128::from(*v)),
            Value::U64(v) => Some(i128::from(*v)),
            Value::Message(w) => Some(match w.get_field_by_number(1)?.as_ref() {
                Value::I32(v) => i128::from(*v),
                Value::I64(v) => i128::from(*v),
                Value::U32(v) => i128::from(*v),
                Value::U64(v) => i128::from(*v),
                _ => return None,
            }),
            _ => None,
        };
        let key = |k: &MapKey| match k {
            MapKey::I32(v) => Some(i128::from(*v)),
            MapKey::I64(v) => Some(i128::from(*v)),
            MapKey::U32(v) => Some(i128::from(*v)),
            MapKey::U64(v) => Some(i128::from(*v)),
            _ => None,
        };
        match (position, v.as_ref()) {
            (1, Value::List(l)) => int(l.get(1)?),
            (5, Value::List(l)) => int(l.first()?),
            (2, Value::Map(m)) => int(m.get(&MapKey::String("a".into()))?),
            (3, Value::Map(m)) => key(m.keys().next()?),
            (_, v) => int(v),
        }
    }

    /// Next to a limit of the type, or anywhere in (and just past) it.
    fn int_case() -> impl Strategy<Value = (usize, i128, u8, u8)> {
        (0..INT_TYPES.len(), 0u8..=8, 0u8..=5).prop_flat_map(|(t, form, position)| {
            let (_, min, max, _) = INT_TYPES[t];
            let n = prop_oneof![
                (-3i128..=3).prop_map(move |d| min + d),
                (-3i128..=3).prop_map(move |d| max + d),
                (min - 1..=max + 1),
            ];
            (Just(t), n, Just(form), Just(position))
        })
    }

    proptest! {
        #![proptest_config(crate::transcode::proptest_config())]

        /// The own timestamp parser agrees with prost-types wherever it
        /// answers, and answers for every plain UTC timestamp.
        #[test]
        fn utc_timestamps_agree_with_prost_types(
            (y, mo, d) in (0..=9999u32, 0..=13u32, 0..=32u32),
            (h, mi, s) in (0..=24u32, 0..=60u32, 0..=60u32),
            frac in "(\\.[0-9]{0,11})?",
        ) {
            let text = format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{frac}Z");
            let theirs = text.parse::<prost_types::Timestamp>().ok().map(|t| (t.seconds, t.nanos));
            match utc_timestamp(&text) {
                Some(ours) => prop_assert_eq!(Some(ours), theirs, "{}", text),
                None => {
                    let plain = (1..=12).contains(&mo) && (1..=28).contains(&d) && h < 24
                        && mi < 60 && s < 60 && frac.len() != 1 && frac.len() <= 10;
                    prop_assert!(!plain, "declined {}", text);
                }
            }
        }

        /// Every integer type at and past its limits, in every JSON form
        /// and position: a whole value in range takes the fast path and
        /// arrives exactly; anything else is refused by both paths, naming
        /// the field and the range. Never clamped, never rounded.
        #[test]
        fn integers_at_their_limits_are_exact_or_refused(
            (t, n, form, position) in int_case(),
        ) {
            let (ty, min, max, wrapper) = INT_TYPES[t];
            let (text, form_ok) = int_form(n, form);
            let (field, json) = int_body(ty, wrapper, position, n, &text);
            let desc = pool().get_message_by_name("testing.v1.Integers").unwrap();
            let o = DecodeOptions::default();
            let in_range = (min..=max).contains(&n);
            // A map key is always the plain decimal string.
            let accepted = in_range && (form_ok || position == 3);
            let r = run(&desc, json.as_bytes(), o);
            let reference = decode_body(&desc, &BodyRule::All, json.as_bytes(), o);
            if accepted {
                prop_assert_eq!(r, Ok(()), "fell back on {}", json);
                let m = reference.expect("accepted by the fast path");
                prop_assert_eq!(decoded_int(&m, &field, position), Some(n), "{}", json);
            } else {
                prop_assert_eq!(r, Err(false), "accepted {}", json);
                let e = reference.expect_err("refused").message;
                let why = if form_ok || position == 3 {
                    format!("out of range for {ty}")
                } else {
                    format!("is not a valid {ty}")
                };
                prop_assert!(e.contains(&field) && e.contains(&why), "{}: {}", json, e);
            }
        }

        #[test]
        fn valid_bodies_take_the_fast_path_and_match(
            entries in valid_body(),
            ws in whitespace(),
            reject_unknown in any::<bool>(),
        ) {
            let body = render(&entries, &ws);
            let r = run(&everything(), body.as_bytes(), opts(reject_unknown, 64));
            prop_assert_eq!(r, Ok(()), "fell back on {}", body);
        }

        #[test]
        fn mutated_bodies_never_disagree_with_the_reference(
            entries in valid_body(),
            muts in proptest::collection::vec(mutation(), 1..4),
            ws in whitespace(),
            reject_unknown in any::<bool>(),
            max_depth in prop_oneof![1 => 0..6usize, 3 => Just(64usize)],
        ) {
            let body = apply(entries, &muts, &ws);
            // `run` asserts the contract; either outcome is fine here.
            let _ = run(&everything(), &body, opts(reject_unknown, max_depth));
        }
    }

    // ---- Throughput ----

    /// About 1 MiB of `bench.v1.CreateItemRequest`: many items with strings,
    /// integers, doubles, enums, tags, timestamps and labels.
    fn big_body() -> String {
        let mut items = Vec::new();
        let mut len = 0;
        let mut i = 0u64;
        while len < (1 << 20) {
            let item = format!(
                r#"{{"id": {id}, "name": "item number {i}", "description": "a fairly ordinary description of item {i}, with some words", "quantity": {q}, "price": {p}, "active": {a}, "tags": ["red", "large", "t{t}"], "state": "{s}", "created": "2024-03-0{d}T12:34:56.{n:03}Z", "labels": {{"team": "core", "tier": "t{t}"}}}}"#,
                id = 1_000_000 + i * 7919,
                q = i % 1000,
                p = (i as f64) * 1.25 + 0.99,
                a = i.is_multiple_of(2),
                t = i % 5,
                s = if i.is_multiple_of(3) {
                    "ACTIVE"
                } else {
                    "RETIRED"
                },
                d = 1 + i % 9,
                n = i % 1000,
            );
            len += item.len() + 2;
            items.push(item);
            i += 1;
        }
        format!(
            r#"{{"item": {}, "extra": [{}]}}"#,
            items[0],
            items.join(", ")
        )
    }

    /// A 1 MiB body (the size the throughput target names) takes the
    /// direct path and agrees. Its speed is measured by
    /// `cargo bench -p gateway --bench hotpath -- json_to_wire`.
    #[test]
    fn a_one_mib_body_takes_the_direct_path_and_agrees() {
        let desc = pool()
            .get_message_by_name("bench.v1.CreateItemRequest")
            .unwrap();
        let body = big_body();
        assert!(body.len() >= 1 << 20);
        assert_eq!(
            run(&desc, body.as_bytes(), DecodeOptions::default()),
            Ok(())
        );
    }
}
