//! Reply wire bytes -> proto3 JSON, without building a `DynamicMessage`.
//!
//! Decoding a reply into a `DynamicMessage` and serialising that through
//! prost-reflect's serde support allocates for every string, list, map and
//! nested message, and walks every descriptor through shared (atomically
//! refcounted) handles. This module renders straight from the wire bytes with
//! a [`ReplyPlan`] resolved once per message type, so the request path only
//! appends to the output buffer.
//!
//! The output must be byte-for-byte what prost-reflect 0.16 produces with the
//! gateway's `SerializeOptions` (map entry order aside: prost-reflect keeps maps
//! in a `HashMap`, so its order is arbitrary anyway). Wherever matching it
//! exactly would take more than a straight walk over the bytes (merging a
//! message that occurs twice, two members of one oneof, duplicate map keys,
//! `Any`, `Struct`, proto2 types, malformed input...), [`ReplyPlan::write`]
//! returns [`Fallback`] and the caller takes the `DynamicMessage` path, which
//! is also the one that words the error for malformed input.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Write as _;

use base64::Engine as _;
use prost_reflect::{Cardinality, EnumDescriptor, FieldDescriptor, MessageDescriptor, Syntax};

use super::wire::{Scalar, WT_I32, WT_I64, WT_LEN, WT_VARINT};
use serde_json::ser::{CompactFormatter, Formatter as _};

/// How the JSON looks; mirrors the prost_reflect::SerializeOptions the gateway uses:
/// SerializeOptions::new().skip_default_fields(!emit_defaults).use_proto_field_name(proto_names)
/// (all other options at prost-reflect's defaults: 64-bit ints as strings, enums by name).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JsonStyle {
    pub emit_defaults: bool,
    pub proto_names: bool,
}

/// The fast path declined; the caller must use the DynamicMessage path,
/// which also produces the precise error for malformed input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the reply needs the DynamicMessage path to be rendered as JSON")]
pub struct Fallback;

type Res<T> = Result<T, Fallback>;

/// prost refuses to nest messages deeper than 100 (its `RECURSION_LIMIT`);
/// staying well below it means the fast path never accepts input the
/// reference path would reject for depth, without having to count exactly
/// the way prost does.
const MAX_DEPTH: u32 = 64;

/// Seconds bounds of a `Timestamp` (0001-01-01 to 9999-12-31), as checked by
/// prost-reflect before rendering one.
const MIN_TIMESTAMP_SECONDS: i64 = -62_135_596_800;
const MAX_TIMESTAMP_SECONDS: i64 = 253_402_300_799;
/// Bounds of a `Duration` (10,000 years), as checked by prost-reflect.
const MAX_DURATION_SECONDS: u64 = 315_576_000_000;
const MAX_DURATION_NANOS: u32 = 999_999_999;

/// Everything needed to render one message type, resolved once (at config
/// load) so the request path never touches the DescriptorPool.
#[derive(Debug)]
pub struct ReplyPlan {
    /// Arena of message plans; the plan's own type is at index 0. Fields
    /// refer to message types by index, which is how recursive types work.
    messages: Vec<MessagePlan>,
    enums: Vec<EnumPlan>,
    emit_defaults: bool,
}

#[derive(Debug)]
struct MessagePlan {
    shape: Shape,
    /// Sorted by field number, which is the order prost-reflect emits them in.
    fields: Vec<FieldPlan>,
    /// Field number -> index into `fields` (`u32::MAX` for none) when numbers
    /// are dense enough for a table; otherwise `fields` is binary searched.
    dense: Vec<u32>,
    oneofs: usize,
}

/// How a message type renders; the well-known types have their own JSON forms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Fields,
    Timestamp,
    Duration,
    Wrapper(Scalar),
    FieldMask,
    /// Any, Struct, Value, ListValue, proto2 and extended types: present on
    /// the wire means [`Fallback`].
    Unsupported,
}

#[derive(Debug)]
struct FieldPlan {
    number: u32,
    /// `,"name":`, JSON-escaped, with the name the style asks for; the
    /// comma is left out for the first field of an object.
    key: Box<[u8]>,
    kind: Kind,
    card: Card,
    /// proto3 `optional`, oneof members and message fields: rendered when
    /// present even if default, never rendered when absent.
    presence: bool,
    oneof: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Scalar(Scalar),
    /// Index into `ReplyPlan::enums`.
    Enum(usize),
    /// Index into `ReplyPlan::messages`.
    Message(usize),
}

impl Kind {
    fn wire_type(self) -> u8 {
        match self {
            Kind::Scalar(s) => s.wire_type(),
            Kind::Enum(_) => WT_VARINT,
            Kind::Message(_) => WT_LEN,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Card {
    Singular,
    List,
    Map { key: Scalar, value: Kind },
}

#[derive(Debug)]
struct EnumPlan {
    /// `google.protobuf.NullValue` renders as `null` whatever its number.
    null_value: bool,
    default: i32,
    /// One `"NAME"` per distinct number, sorted by number; the name is the
    /// one prost-reflect's `get_value` picks when aliases share a number.
    values: Vec<(i32, Box<[u8]>)>,
    /// `values[i].0 == i` for all i, so numbers index directly.
    dense: bool,
}

impl EnumPlan {
    fn name(&self, number: i32) -> Option<&[u8]> {
        if self.dense {
            return usize::try_from(number)
                .ok()
                .and_then(|i| self.values.get(i))
                .map(|(_, name)| &name[..]);
        }
        self.values
            .binary_search_by_key(&number, |(n, _)| *n)
            .ok()
            .map(|i| &self.values[i].1[..])
    }
}

impl MessagePlan {
    fn unsupported() -> MessagePlan {
        MessagePlan {
            shape: Shape::Unsupported,
            fields: Vec::new(),
            dense: Vec::new(),
            oneofs: 0,
        }
    }

    #[inline]
    fn lookup(&self, number: u32) -> Option<usize> {
        if !self.dense.is_empty() {
            return match self.dense.get(number as usize) {
                Some(&i) if i != u32::MAX => Some(i as usize),
                _ => None,
            };
        }
        self.fields.binary_search_by_key(&number, |f| f.number).ok()
    }
}

impl ReplyPlan {
    pub fn new(desc: &MessageDescriptor, style: JsonStyle) -> ReplyPlan {
        let mut builder = Builder {
            style,
            messages: Vec::new(),
            enums: Vec::new(),
            message_ids: HashMap::new(),
            enum_ids: HashMap::new(),
        };
        builder.message(desc);
        ReplyPlan {
            messages: builder.messages,
            enums: builder.enums,
            emit_defaults: style.emit_defaults,
        }
    }

    /// Appends the JSON for `wire` (an encoded message of the plan's type) to `out`.
    /// On Err, `out` is truncated back to its length at entry.
    pub fn write(&self, wire: &[u8], out: &mut Vec<u8>) -> Result<(), Fallback> {
        let start = out.len();
        // JSON is usually somewhat larger than the wire form; one reservation
        // up front saves most of the regrowth.
        out.reserve(wire.len() + wire.len() / 2 + 16);
        let render = |scratch: &mut Scratch, out: &mut Vec<u8>| {
            Writer {
                plan: self,
                scratch,
                out,
            }
            .message(0, wire, 0)
        };
        let pooled = SCRATCH.try_with(|cell| {
            let mut scratch = cell.try_borrow_mut().ok()?;
            scratch.clear();
            let result = render(&mut scratch, &mut *out);
            scratch.trim();
            Some(result)
        });
        let result = match pooled {
            Ok(Some(result)) => result,
            // Only while the thread is being torn down, or if rendering ever
            // re-entered itself on one thread: working memory of its own.
            _ => render(&mut Scratch::default(), &mut *out),
        };
        if result.is_err() {
            out.truncate(start);
        }
        result
    }
}

struct Builder {
    style: JsonStyle,
    messages: Vec<MessagePlan>,
    enums: Vec<EnumPlan>,
    message_ids: HashMap<String, usize>,
    enum_ids: HashMap<String, usize>,
}

impl Builder {
    fn message(&mut self, desc: &MessageDescriptor) -> usize {
        if let Some(&id) = self.message_ids.get(desc.full_name()) {
            return id;
        }
        let id = self.messages.len();
        // Registered before its fields are resolved, so a field of this very
        // type (directly or further down) finds the id.
        self.messages.push(MessagePlan::unsupported());
        self.message_ids.insert(desc.full_name().to_owned(), id);
        let plan = self.build(desc);
        self.messages[id] = plan;
        id
    }

    fn build(&mut self, desc: &MessageDescriptor) -> MessagePlan {
        let shape = match well_known_shape(desc) {
            Some(shape) => shape,
            // proto2 presence, defaults, groups and extensions all differ;
            // no reply type the gateway serves needs them on the fast path.
            None if desc.parent_file().syntax() != Syntax::Proto3
                || desc.extensions().len() > 0 =>
            {
                Shape::Unsupported
            }
            None => Shape::Fields,
        };
        if shape != Shape::Fields {
            return MessagePlan {
                shape,
                ..MessagePlan::unsupported()
            };
        }

        let mut fields = Vec::with_capacity(desc.fields().len());
        for field in desc.fields() {
            if field.is_group() {
                return MessagePlan::unsupported();
            }
            let (kind, card) = if field.is_map() {
                let prost_reflect::Kind::Message(entry) = field.kind() else {
                    return MessagePlan::unsupported();
                };
                let Kind::Scalar(key) = self.kind(&entry.map_entry_key_field()) else {
                    return MessagePlan::unsupported();
                };
                let value = self.kind(&entry.map_entry_value_field());
                // A map's kinds live in its `Card`; `kind` is the entry's
                // wire form, a length-delimited value.
                (Kind::Scalar(Scalar::Bytes), Card::Map { key, value })
            } else if field.cardinality() == Cardinality::Repeated {
                (self.kind(&field), Card::List)
            } else {
                (self.kind(&field), Card::Singular)
            };
            let name = if self.style.proto_names {
                field.name()
            } else {
                field.json_name()
            };
            let mut key = Vec::with_capacity(name.len() + 4);
            key.push(b',');
            write_str(&mut key, name);
            key.push(b':');
            fields.push(FieldPlan {
                number: field.number(),
                key: key.into_boxed_slice(),
                kind,
                card,
                presence: field.supports_presence(),
                oneof: field
                    .containing_oneof()
                    .and_then(|o| desc.oneofs().position(|x| x.name() == o.name())),
            });
        }
        // `fields()` already iterates in number order; sorting keeps lookup
        // correct even if that ever changed.
        fields.sort_by_key(|f| f.number);

        let max = fields.last().map_or(0, |f| f.number as usize);
        // A table is only worth it while it stays small next to the fields.
        let dense = if max <= 4 * fields.len() + 64 {
            let mut table = vec![u32::MAX; max + 1];
            for (i, f) in fields.iter().enumerate() {
                table[f.number as usize] = i as u32;
            }
            table
        } else {
            Vec::new()
        };
        MessagePlan {
            shape,
            fields,
            dense,
            oneofs: desc.oneofs().len(),
        }
    }

    fn kind(&mut self, field: &FieldDescriptor) -> Kind {
        let kind = field.kind();
        match &kind {
            prost_reflect::Kind::Enum(e) => Kind::Enum(self.enumeration(e)),
            prost_reflect::Kind::Message(m) => Kind::Message(self.message(m)),
            scalar => Kind::Scalar(Scalar::of(scalar).expect("every other kind is a scalar")),
        }
    }

    fn enumeration(&mut self, desc: &EnumDescriptor) -> usize {
        if let Some(&id) = self.enum_ids.get(desc.full_name()) {
            return id;
        }
        let mut numbers: Vec<i32> = desc.values().map(|v| v.number()).collect();
        numbers.sort_unstable();
        numbers.dedup();
        let values: Vec<(i32, Box<[u8]>)> = numbers
            .into_iter()
            .filter_map(|n| {
                let value = desc.get_value(n)?;
                let mut name = Vec::new();
                write_str(&mut name, value.name());
                Some((n, name.into_boxed_slice()))
            })
            .collect();
        let dense = values
            .iter()
            .enumerate()
            .all(|(i, (n, _))| *n as i64 == i as i64);
        let id = self.enums.len();
        self.enums.push(EnumPlan {
            null_value: desc.full_name() == "google.protobuf.NullValue",
            default: desc.default_value().number(),
            values,
            dense,
        });
        self.enum_ids.insert(desc.full_name().to_owned(), id);
        id
    }
}

/// The JSON form of a well-known type, if `desc` is one whose layout is the
/// standard one (a pool could carry a different file under the same name).
fn well_known_shape(desc: &MessageDescriptor) -> Option<Shape> {
    // (number, kind, repeated) of every field, in any order.
    let layout_is = |expected: &[(u32, Scalar, bool)]| {
        desc.fields().len() == expected.len()
            && expected.iter().all(|&(number, scalar, repeated)| {
                desc.get_field(number).is_some_and(|f| {
                    Scalar::of(&f.kind()) == Some(scalar)
                        && (f.cardinality() == Cardinality::Repeated) == repeated
                })
            })
    };
    let checked = |shape: Shape, layout: &[(u32, Scalar, bool)]| {
        Some(if layout_is(layout) {
            shape
        } else {
            Shape::Unsupported
        })
    };
    let wrapper = |scalar: Scalar| checked(Shape::Wrapper(scalar), &[(1, scalar, false)]);
    let seconds_nanos = [(1, Scalar::Int64, false), (2, Scalar::Int32, false)];
    match desc.full_name() {
        "google.protobuf.Timestamp" => checked(Shape::Timestamp, &seconds_nanos),
        "google.protobuf.Duration" => checked(Shape::Duration, &seconds_nanos),
        "google.protobuf.FieldMask" => checked(Shape::FieldMask, &[(1, Scalar::String, true)]),
        "google.protobuf.DoubleValue" => wrapper(Scalar::Double),
        "google.protobuf.FloatValue" => wrapper(Scalar::Float),
        "google.protobuf.Int64Value" => wrapper(Scalar::Int64),
        "google.protobuf.UInt64Value" => wrapper(Scalar::Uint64),
        "google.protobuf.Int32Value" => wrapper(Scalar::Int32),
        "google.protobuf.UInt32Value" => wrapper(Scalar::Uint32),
        "google.protobuf.BoolValue" => wrapper(Scalar::Bool),
        "google.protobuf.StringValue" => wrapper(Scalar::String),
        "google.protobuf.BytesValue" => wrapper(Scalar::Bytes),
        // Empty renders as `{}`, which is what a field-less message renders as.
        "google.protobuf.Empty" => (desc.fields().len() != 0).then_some(Shape::Unsupported),
        // Any needs a type lookup by URL; Struct, Value and ListValue have
        // map order and non-finite-number errors of their own. All are rare
        // in replies, so they stay on the reference path.
        "google.protobuf.Any"
        | "google.protobuf.Struct"
        | "google.protobuf.Value"
        | "google.protobuf.ListValue" => Some(Shape::Unsupported),
        _ => None,
    }
}

/// Per-message bookkeeping of one field's occurrences on the wire.
#[derive(Debug, Clone, Copy, Default)]
struct Occ {
    count: u32,
    /// Offsets of the first and last occurrence's tag in the message bytes.
    first: usize,
    last: usize,
}

/// Working memory of one render, kept per thread so a render allocates
/// nothing once the thread has seen a message of similar shape.
#[derive(Default)]
struct Scratch {
    /// One `Occ` per field of every message on the current nesting path.
    occ: Vec<Occ>,
    /// One slot per oneof on the nesting path: 1 + index of the member seen.
    oneofs: Vec<u32>,
    /// Byte ranges in `out` of the keys of the maps being rendered, to find
    /// duplicate keys.
    keys: Vec<(usize, usize)>,
    /// FieldMask text before escaping.
    text: String,
}

impl Scratch {
    fn clear(&mut self) {
        self.occ.clear();
        self.oneofs.clear();
        self.keys.clear();
        self.text.clear();
    }

    /// A thread that once rendered a huge map or mask should not keep that
    /// memory forever.
    fn trim(&mut self) {
        const KEEP: usize = 4096;
        if self.keys.capacity() > KEEP {
            self.keys = Vec::new();
        }
        if self.text.capacity() > KEEP * 16 {
            self.text = String::new();
        }
        if self.occ.capacity() > KEEP {
            self.occ = Vec::new();
        }
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// A cursor over protobuf wire bytes; every read checks bounds and fails
/// with [`Fallback`] where prost would fail with a `DecodeError`.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn at(buf: &'a [u8], pos: usize) -> Self {
        Reader { buf, pos }
    }

    #[inline]
    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    /// prost's rules: at most ten bytes, and the tenth may only carry the
    /// top bit of a u64.
    #[inline]
    fn varint(&mut self) -> Res<u64> {
        let first = *self.buf.get(self.pos).ok_or(Fallback)?;
        if first < 0x80 {
            self.pos += 1;
            return Ok(u64::from(first));
        }
        let mut value = u64::from(first & 0x7f);
        for i in 1..10 {
            let b = *self.buf.get(self.pos + i).ok_or(Fallback)?;
            if i == 9 && b >= 0x02 {
                return Err(Fallback);
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                self.pos += i + 1;
                return Ok(value);
            }
        }
        Err(Fallback)
    }

    /// A field key: (number, wire type). Groups are refused here, so every
    /// later skip only sees the four wire types prost accepts outside groups.
    #[inline]
    fn key(&mut self) -> Res<(u32, u8)> {
        let key = self.varint()?;
        let key = u32::try_from(key).map_err(|_| Fallback)?;
        let wire_type = (key & 7) as u8;
        let number = key >> 3;
        if number == 0 || !matches!(wire_type, WT_VARINT | WT_I64 | WT_LEN | WT_I32) {
            return Err(Fallback);
        }
        Ok((number, wire_type))
    }

    #[inline]
    fn fixed<const N: usize>(&mut self) -> Res<[u8; N]> {
        let end = self.pos.checked_add(N).ok_or(Fallback)?;
        let bytes = self.buf.get(self.pos..end).ok_or(Fallback)?;
        self.pos = end;
        bytes.try_into().map_err(|_| Fallback)
    }

    #[inline]
    fn len_delimited(&mut self) -> Res<&'a [u8]> {
        let len = usize::try_from(self.varint()?).map_err(|_| Fallback)?;
        let end = self.pos.checked_add(len).ok_or(Fallback)?;
        let bytes = self.buf.get(self.pos..end).ok_or(Fallback)?;
        self.pos = end;
        Ok(bytes)
    }

    #[inline]
    fn skip(&mut self, wire_type: u8) -> Res<()> {
        match wire_type {
            WT_VARINT => self.varint().map(drop),
            WT_I64 => self.fixed::<8>().map(drop),
            WT_LEN => self.len_delimited().map(drop),
            WT_I32 => self.fixed::<4>().map(drop),
            _ => Err(Fallback),
        }
    }

    /// One value of `scalar`, read the way prost's `merge` for that type does
    /// (32-bit varints are truncated, not rejected).
    #[inline]
    fn scalar(&mut self, scalar: Scalar) -> Res<Val<'a>> {
        Ok(match scalar {
            Scalar::Int32 => Val::I32(self.varint()? as i32),
            Scalar::Int64 => Val::I64(self.varint()? as i64),
            Scalar::Uint32 => Val::U32(self.varint()? as u32),
            Scalar::Uint64 => Val::U64(self.varint()?),
            Scalar::Sint32 => {
                let v = self.varint()? as u32;
                Val::I32(((v >> 1) as i32) ^ -((v & 1) as i32))
            }
            Scalar::Sint64 => {
                let v = self.varint()?;
                Val::I64(((v >> 1) as i64) ^ -((v & 1) as i64))
            }
            Scalar::Bool => Val::Bool(self.varint()? != 0),
            Scalar::Fixed32 => Val::U32(u32::from_le_bytes(self.fixed()?)),
            Scalar::Sfixed32 => Val::I32(i32::from_le_bytes(self.fixed()?)),
            Scalar::Float => Val::F32(f32::from_le_bytes(self.fixed()?)),
            Scalar::Fixed64 => Val::U64(u64::from_le_bytes(self.fixed()?)),
            Scalar::Sfixed64 => Val::I64(i64::from_le_bytes(self.fixed()?)),
            Scalar::Double => Val::F64(f64::from_le_bytes(self.fixed()?)),
            Scalar::String => {
                Val::Str(std::str::from_utf8(self.len_delimited()?).map_err(|_| Fallback)?)
            }
            Scalar::Bytes => Val::Bytes(self.len_delimited()?),
        })
    }
}

/// One decoded scalar (or enum number).
#[derive(Debug, Clone, Copy)]
enum Val<'a> {
    I32(i32),
    I64(i64),
    U32(u32),
    U64(u64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(&'a str),
    Bytes(&'a [u8]),
}

impl Val<'_> {
    fn default_of(scalar: Scalar) -> Val<'static> {
        match scalar {
            Scalar::Int32 | Scalar::Sint32 | Scalar::Sfixed32 => Val::I32(0),
            Scalar::Int64 | Scalar::Sint64 | Scalar::Sfixed64 => Val::I64(0),
            Scalar::Uint32 | Scalar::Fixed32 => Val::U32(0),
            Scalar::Uint64 | Scalar::Fixed64 => Val::U64(0),
            Scalar::Float => Val::F32(0.0),
            Scalar::Double => Val::F64(0.0),
            Scalar::Bool => Val::Bool(false),
            Scalar::String => Val::Str(""),
            Scalar::Bytes => Val::Bytes(b""),
        }
    }

    /// prost-reflect compares with `==`, so -0.0 counts as default and NaN
    /// does not.
    fn is_default(&self) -> bool {
        match *self {
            Val::I32(v) => v == 0,
            Val::I64(v) => v == 0,
            Val::U32(v) => v == 0,
            Val::U64(v) => v == 0,
            Val::F32(v) => v == 0.0,
            Val::F64(v) => v == 0.0,
            Val::Bool(v) => !v,
            Val::Str(v) => v.is_empty(),
            Val::Bytes(v) => v.is_empty(),
        }
    }
}

/// Whether prost-reflect would decode `wire_type` for `field` (anything
/// else is a decode error there).
#[inline]
fn accepts(field: &FieldPlan, wire_type: u8) -> bool {
    match field.card {
        Card::Singular => wire_type == field.kind.wire_type(),
        Card::List => match field.kind {
            Kind::Scalar(s) => wire_type == s.wire_type() || (s.packable() && wire_type == WT_LEN),
            Kind::Enum(_) => wire_type == WT_VARINT || wire_type == WT_LEN,
            Kind::Message(_) => wire_type == WT_LEN,
        },
        // prost-reflect does not check the wire type of map entries (it
        // reads any as a length), so anything else falls back.
        Card::Map { .. } => wire_type == WT_LEN,
    }
}

/// A list or map field being rendered.
struct Open {
    /// Index into the message's fields.
    field: usize,
    /// Where the field (its separator) starts in `out`, to take back an
    /// empty list.
    mark: usize,
    was_first: bool,
    /// Elements or entries written so far.
    n: usize,
    /// Where this map's keys start in `Scratch::keys`.
    keys_base: usize,
}

struct Writer<'p, 's, 'o> {
    plan: &'p ReplyPlan,
    scratch: &'s mut Scratch,
    out: &'o mut Vec<u8>,
}

impl<'p> Writer<'p, '_, '_> {
    fn message(&mut self, id: usize, wire: &[u8], depth: u32) -> Res<()> {
        if depth > MAX_DEPTH {
            return Err(Fallback);
        }
        let plan: &'p ReplyPlan = self.plan;
        let message = &plan.messages[id];
        match message.shape {
            Shape::Fields => self.fields(message, wire, depth),
            Shape::Timestamp => self.timestamp_or_duration(wire, false),
            Shape::Duration => self.timestamp_or_duration(wire, true),
            Shape::Wrapper(scalar) => self.wrapper(scalar, wire),
            Shape::FieldMask => self.field_mask(wire),
            Shape::Unsupported => Err(Fallback),
        }
    }

    /// An ordinary message, rendered in field-number order as prost-reflect
    /// does. Encoders write fields in that order, each once, so the first
    /// try renders while reading. Wire bytes in any other order (a field
    /// again, or a lower number after a higher one) make it give up and take
    /// two passes: one to find every field's occurrences, one to render them.
    fn fields(&mut self, message: &'p MessagePlan, wire: &[u8], depth: u32) -> Res<()> {
        let mark = self.out.len();
        let keys_base = self.scratch.keys.len();
        if self.stream(message, wire, depth)? {
            return Ok(());
        }
        self.out.truncate(mark);
        self.scratch.keys.truncate(keys_base);
        self.two_pass(message, wire, depth)
    }

    /// Renders while reading; `Ok(false)` when the wire order is not the
    /// rendering order. Every `Err` here is one the two-pass path would
    /// reach as well (it validates every occurrence too).
    fn stream(&mut self, message: &'p MessagePlan, wire: &[u8], depth: u32) -> Res<bool> {
        if message.oneofs > 64 {
            return Ok(false);
        }
        let mut oneofs_seen = 0u64;
        self.out.push(b'{');
        let mut first = true;
        // Fields before `next` are done: seen, or absent and defaulted.
        let mut next = 0usize;
        let mut open: Option<Open> = None;
        let mut r = Reader::new(wire);
        while !r.done() {
            let (number, wire_type) = r.key()?;
            let Some(i) = message.lookup(number) else {
                r.skip(wire_type)?;
                continue;
            };
            let field = &message.fields[i];
            if !accepts(field, wire_type) {
                return Err(Fallback);
            }
            if let Some(o) = &mut open {
                if o.field == i {
                    // Packed and unpacked runs of one list, or more entries
                    // of one map.
                    self.occurrence(field, wire_type, &mut r, &mut o.n, depth)?;
                    continue;
                }
            }
            if let Some(o) = open.take() {
                self.close(message, o, &mut first)?;
            }
            if i < next {
                return Ok(false);
            }
            self.defaults(&message.fields[next..i], &mut first)?;
            next = i + 1;
            if let Some(o) = field.oneof {
                // Two members of one oneof: see `scan`.
                if oneofs_seen & (1 << o) != 0 {
                    return Err(Fallback);
                }
                oneofs_seen |= 1 << o;
            }
            if field.card == Card::Singular {
                self.singular(field, &mut r, &mut first, depth)?;
            } else {
                let mut o = self.open(i, field, &mut first);
                self.occurrence(field, wire_type, &mut r, &mut o.n, depth)?;
                open = Some(o);
            }
        }
        if let Some(o) = open.take() {
            self.close(message, o, &mut first)?;
        }
        self.defaults(&message.fields[next..], &mut first)?;
        self.out.push(b'}');
        Ok(true)
    }

    /// The general case: find every field's occurrences (validating all of
    /// them), then render the fields in number order.
    fn two_pass(&mut self, message: &'p MessagePlan, wire: &[u8], depth: u32) -> Res<()> {
        let base = self.scratch.occ.len();
        self.scratch
            .occ
            .resize(base + message.fields.len(), Occ::default());
        let oneof_base = self.scratch.oneofs.len();
        self.scratch.oneofs.resize(oneof_base + message.oneofs, 0);
        self.scan(message, wire, base, oneof_base)?;
        self.scratch.oneofs.truncate(oneof_base);

        self.out.push(b'{');
        let mut first = true;
        for (i, field) in message.fields.iter().enumerate() {
            let occ = self.scratch.occ[base + i];
            if occ.count == 0 {
                self.defaults(std::slice::from_ref(field), &mut first)?;
                continue;
            }
            if field.card == Card::Singular {
                // The last occurrence wins.
                let mut r = Reader::at(wire, occ.last);
                r.key()?;
                self.singular(field, &mut r, &mut first, depth)?;
                continue;
            }
            let mut o = self.open(i, field, &mut first);
            let mut r = Reader::at(wire, occ.first);
            loop {
                let tag_at = r.pos;
                let (number, wire_type) = r.key()?;
                if number != field.number {
                    r.skip(wire_type)?;
                    continue;
                }
                self.occurrence(field, wire_type, &mut r, &mut o.n, depth)?;
                if tag_at == occ.last {
                    break;
                }
            }
            self.close(message, o, &mut first)?;
        }
        self.out.push(b'}');
        self.scratch.occ.truncate(base);
        Ok(())
    }

    /// Records where each known field occurs and checks everything prost
    /// would check while decoding: keys, wire types, lengths, the UTF-8 of
    /// string values that a later occurrence overrides.
    fn scan(
        &mut self,
        message: &MessagePlan,
        wire: &[u8],
        base: usize,
        oneof_base: usize,
    ) -> Res<()> {
        let mut r = Reader::new(wire);
        while !r.done() {
            let tag_at = r.pos;
            let (number, wire_type) = r.key()?;
            let Some(i) = message.lookup(number) else {
                r.skip(wire_type)?;
                continue;
            };
            let field = &message.fields[i];
            if !accepts(field, wire_type) {
                return Err(Fallback);
            }
            if let Some(o) = field.oneof {
                // A later member clears an earlier one, and an earlier
                // message member would still have had to decode; rare enough
                // to leave to the reference path.
                let slot = &mut self.scratch.oneofs[oneof_base + o];
                let me = i as u32 + 1;
                if *slot == 0 {
                    *slot = me;
                } else if *slot != me {
                    return Err(Fallback);
                }
            }
            let occ = self.scratch.occ[base + i];
            if occ.count > 0 && field.card == Card::Singular {
                match field.kind {
                    // A repeated singular message is merged; leave that to
                    // the reference path.
                    Kind::Message(_) => return Err(Fallback),
                    Kind::Scalar(Scalar::String) => {
                        let mut prev = Reader::at(wire, occ.last);
                        prev.key()?;
                        prev.scalar(Scalar::String)?;
                    }
                    _ => {}
                }
            }
            r.skip(wire_type)?;
            let occ = &mut self.scratch.occ[base + i];
            if occ.count == 0 {
                occ.first = tag_at;
            }
            occ.last = tag_at;
            occ.count += 1;
        }
        Ok(())
    }

    /// A singular field's value; `r` is just past its key.
    fn singular(
        &mut self,
        field: &FieldPlan,
        r: &mut Reader<'_>,
        first: &mut bool,
        depth: u32,
    ) -> Res<()> {
        let skip_defaults = !field.presence && !self.plan.emit_defaults;
        match field.kind {
            Kind::Message(id) => {
                let payload = r.len_delimited()?;
                write_key(self.out, &field.key, first);
                self.message(id, payload, depth + 1)?;
            }
            Kind::Enum(e) => {
                let number = r.varint()? as i32;
                if skip_defaults && number == self.plan.enums[e].default {
                    return Ok(());
                }
                write_key(self.out, &field.key, first);
                self.enum_value(e, number);
            }
            Kind::Scalar(scalar) => {
                let value = r.scalar(scalar)?;
                if skip_defaults && value.is_default() {
                    return Ok(());
                }
                write_key(self.out, &field.key, first);
                write_val(self.out, value);
            }
        }
        Ok(())
    }

    /// Starts rendering a list or map field.
    fn open(&mut self, i: usize, field: &FieldPlan, first: &mut bool) -> Open {
        let open = Open {
            field: i,
            mark: self.out.len(),
            was_first: *first,
            n: 0,
            keys_base: self.scratch.keys.len(),
        };
        write_key(self.out, &field.key, first);
        self.out
            .push(if field.card == Card::List { b'[' } else { b'{' });
        open
    }

    /// Finishes a list or map field.
    fn close(&mut self, message: &MessagePlan, open: Open, first: &mut bool) -> Res<()> {
        let field = &message.fields[open.field];
        if field.card != Card::List {
            self.out.push(b'}');
            return self.check_map_keys(open.keys_base);
        }
        if open.n == 0 && !self.plan.emit_defaults {
            // Only empty packed runs: an empty list, which is a default.
            self.out.truncate(open.mark);
            *first = open.was_first;
        } else {
            self.out.push(b']');
        }
        Ok(())
    }

    /// One occurrence of a list or map field (a packed run, one element or
    /// one map entry); `r` is just past its key.
    fn occurrence(
        &mut self,
        field: &FieldPlan,
        wire_type: u8,
        r: &mut Reader<'_>,
        n: &mut usize,
        depth: u32,
    ) -> Res<()> {
        match (field.card, field.kind) {
            (Card::Map { key, value }, _) => {
                let entry = r.len_delimited()?;
                list_sep(self.out, *n);
                self.map_entry(key, value, entry, depth)?;
                *n += 1;
            }
            (_, Kind::Message(id)) => {
                let payload = r.len_delimited()?;
                list_sep(self.out, *n);
                self.message(id, payload, depth + 1)?;
                *n += 1;
            }
            (_, Kind::Enum(e)) if wire_type == WT_LEN => {
                let mut packed = Reader::new(r.len_delimited()?);
                while !packed.done() {
                    let number = packed.varint()? as i32;
                    list_sep(self.out, *n);
                    self.enum_value(e, number);
                    *n += 1;
                }
            }
            (_, Kind::Enum(e)) => {
                let number = r.varint()? as i32;
                list_sep(self.out, *n);
                self.enum_value(e, number);
                *n += 1;
            }
            (_, Kind::Scalar(s)) if wire_type == WT_LEN && s.packable() => {
                let mut packed = Reader::new(r.len_delimited()?);
                while !packed.done() {
                    let value = packed.scalar(s)?;
                    list_sep(self.out, *n);
                    write_val(self.out, value);
                    *n += 1;
                }
            }
            (_, Kind::Scalar(s)) => {
                let value = r.scalar(s)?;
                list_sep(self.out, *n);
                write_val(self.out, value);
                *n += 1;
            }
        }
        Ok(())
    }

    /// Duplicate map keys fall back: the last one wins in prost-reflect, and
    /// undoing an entry already written is not worth it for what no encoder
    /// produces.
    fn check_map_keys(&mut self, keys_base: usize) -> Res<()> {
        let out: &[u8] = self.out;
        let keys = &mut self.scratch.keys[keys_base..];
        let text = |k: &(usize, usize)| &out[k.0..k.1];
        let duplicate = if keys.len() <= 16 {
            keys.iter()
                .enumerate()
                .any(|(i, a)| keys[..i].iter().any(|b| text(a) == text(b)))
        } else {
            keys.sort_unstable_by(|a, b| text(a).cmp(text(b)));
            keys.windows(2).any(|w| text(&w[0]) == text(&w[1]))
        };
        self.scratch.keys.truncate(keys_base);
        if duplicate {
            return Err(Fallback);
        }
        Ok(())
    }

    /// Absent fields: without presence they are rendered as defaults when
    /// asked for; with presence, never.
    #[inline]
    fn defaults(&mut self, absent: &[FieldPlan], first: &mut bool) -> Res<()> {
        if !self.plan.emit_defaults {
            return Ok(());
        }
        for field in absent.iter().filter(|f| !f.presence) {
            write_key(self.out, &field.key, first);
            self.default_value(field)?;
        }
        Ok(())
    }

    fn map_entry(
        &mut self,
        key_kind: Scalar,
        value_kind: Kind,
        entry: &[u8],
        depth: u32,
    ) -> Res<()> {
        let mut key_at = None;
        let mut value_at = None;
        let mut r = Reader::new(entry);
        while !r.done() {
            let (number, wire_type) = r.key()?;
            match number {
                1 => {
                    if wire_type != key_kind.wire_type() {
                        return Err(Fallback);
                    }
                    key_at = Some(r.pos);
                    // Decoding validates (UTF-8 of every occurrence, too).
                    r.scalar(key_kind)?;
                }
                2 => {
                    if wire_type != value_kind.wire_type() {
                        return Err(Fallback);
                    }
                    match value_kind {
                        // A second message value would be merged into the first.
                        Kind::Message(_) if value_at.is_some() => return Err(Fallback),
                        Kind::Scalar(Scalar::String) => {
                            value_at = Some(r.pos);
                            r.scalar(Scalar::String)?;
                            continue;
                        }
                        _ => {}
                    }
                    value_at = Some(r.pos);
                    r.skip(wire_type)?;
                }
                _ => r.skip(wire_type)?,
            }
        }

        let key = match key_at {
            Some(at) => Reader::at(entry, at).scalar(key_kind)?,
            None => Val::default_of(key_kind),
        };
        let key_start = self.out.len();
        match key {
            Val::Str(s) => write_str(self.out, s),
            Val::Bool(b) => self
                .out
                .extend_from_slice(if b { b"\"true\"" } else { b"\"false\"" }),
            other => {
                self.out.push(b'"');
                write_val_bare(self.out, other);
                self.out.push(b'"');
            }
        }
        self.scratch.keys.push((key_start, self.out.len()));
        self.out.push(b':');

        match (value_kind, value_at) {
            (Kind::Message(id), Some(at)) => {
                let payload = Reader::at(entry, at).len_delimited()?;
                self.message(id, payload, depth + 1)
            }
            // A missing message value is an empty message, rendered as such
            // (so a missing Timestamp value is the epoch).
            (Kind::Message(id), None) => self.message(id, &[], depth + 1),
            (Kind::Enum(e), at) => {
                let number = match at {
                    Some(at) => Reader::at(entry, at).varint()? as i32,
                    None => self.plan.enums[e].default,
                };
                self.enum_value(e, number);
                Ok(())
            }
            (Kind::Scalar(s), at) => {
                let value = match at {
                    Some(at) => Reader::at(entry, at).scalar(s)?,
                    None => Val::default_of(s),
                };
                write_val(self.out, value);
                Ok(())
            }
        }
    }

    /// What prost-reflect renders for an absent field without presence when
    /// defaults are emitted.
    fn default_value(&mut self, field: &FieldPlan) -> Res<()> {
        match (field.card, field.kind) {
            (Card::List, _) => self.out.extend_from_slice(b"[]"),
            (Card::Map { .. }, _) => self.out.extend_from_slice(b"{}"),
            (Card::Singular, Kind::Scalar(s)) => write_val(self.out, Val::default_of(s)),
            (Card::Singular, Kind::Enum(e)) => self.enum_value(e, self.plan.enums[e].default),
            // proto3 message fields always have presence.
            (Card::Singular, Kind::Message(_)) => return Err(Fallback),
        }
        Ok(())
    }

    fn enum_value(&mut self, e: usize, number: i32) {
        let plan: &'p ReplyPlan = self.plan;
        let enumeration = &plan.enums[e];
        if enumeration.null_value {
            self.out.extend_from_slice(b"null");
        } else if let Some(name) = enumeration.name(number) {
            self.out.extend_from_slice(name);
        } else {
            write_val_bare(self.out, Val::I32(number));
        }
    }

    /// Timestamp and Duration: `seconds` (1) and `nanos` (2), last occurrence
    /// wins; rendered by prost-types' own `Display`, exactly as prost-reflect
    /// does, after the same range checks (out of range is an error there).
    fn timestamp_or_duration(&mut self, wire: &[u8], duration: bool) -> Res<()> {
        let mut seconds = 0i64;
        let mut nanos = 0i32;
        let mut r = Reader::new(wire);
        while !r.done() {
            let (number, wire_type) = r.key()?;
            match number {
                1 | 2 if wire_type != WT_VARINT => return Err(Fallback),
                1 => seconds = r.varint()? as i64,
                2 => nanos = r.varint()? as i32,
                _ => r.skip(wire_type)?,
            }
        }
        let written = if duration {
            if seconds.unsigned_abs() > MAX_DURATION_SECONDS
                || nanos.unsigned_abs() > MAX_DURATION_NANOS
            {
                return Err(Fallback);
            }
            write!(self.out, "\"{}\"", prost_types::Duration { seconds, nanos })
        } else {
            if !(MIN_TIMESTAMP_SECONDS..=MAX_TIMESTAMP_SECONDS).contains(&seconds) {
                return Err(Fallback);
            }
            if (0..1_000_000_000).contains(&nanos) {
                write_utc_timestamp(self.out, seconds, nanos as u32);
                return Ok(());
            }
            // Nanos out of range: prost-types normalises them first.
            write!(
                self.out,
                "\"{}\"",
                prost_types::Timestamp { seconds, nanos }
            )
        };
        written.map_err(|_| Fallback)
    }

    /// The wrapper types render as their bare value. prost-reflect gets the
    /// value by re-encoding the message, which drops a default `value`: so
    /// -0.0 comes out as 0.0. Non-finite floats come out as `null` (plain
    /// `serialize_f64`, not the "NaN" strings of ordinary fields).
    fn wrapper(&mut self, scalar: Scalar, wire: &[u8]) -> Res<()> {
        let mut value = Val::default_of(scalar);
        let mut r = Reader::new(wire);
        while !r.done() {
            let (number, wire_type) = r.key()?;
            if number == 1 {
                if wire_type != scalar.wire_type() {
                    return Err(Fallback);
                }
                value = r.scalar(scalar)?;
            } else {
                r.skip(wire_type)?;
            }
        }
        match value {
            Val::F32(v) if v.is_finite() => write_val_bare(self.out, Val::F32(v + 0.0)),
            Val::F64(v) if v.is_finite() => write_val_bare(self.out, Val::F64(v + 0.0)),
            Val::F32(_) | Val::F64(_) => self.out.extend_from_slice(b"null"),
            other => write_val(self.out, other),
        }
        Ok(())
    }

    /// FieldMask: the paths camel-cased and comma-joined, with prost-reflect's
    /// quirks (an empty path adds no comma while nothing precedes it) and its
    /// refusal of paths that would not round-trip.
    fn field_mask(&mut self, wire: &[u8]) -> Res<()> {
        let mut text = std::mem::take(&mut self.scratch.text);
        text.clear();
        let result = field_mask_text(wire, &mut text);
        if result.is_ok() {
            write_str(self.out, &text);
        }
        self.scratch.text = text;
        result
    }
}

fn field_mask_text(wire: &[u8], text: &mut String) -> Res<()> {
    let mut r = Reader::new(wire);
    while !r.done() {
        let (number, wire_type) = r.key()?;
        if number != 1 {
            r.skip(wire_type)?;
            continue;
        }
        if wire_type != WT_LEN {
            return Err(Fallback);
        }
        let Val::Str(path) = r.scalar(Scalar::String)? else {
            return Err(Fallback);
        };
        if !text.is_empty() {
            text.push(',');
        }
        for (i, part) in path.split('.').enumerate() {
            if i > 0 {
                text.push('.');
            }
            snake_to_camel(text, part)?;
        }
    }
    Ok(())
}

/// prost-reflect's `snake_case_to_camel_case`, failing where it fails.
fn snake_to_camel(dst: &mut String, src: &str) -> Res<()> {
    let mut upper_next = false;
    for ch in src.chars() {
        if ch.is_ascii_uppercase() {
            return Err(Fallback);
        }
        if upper_next {
            let upper = ch.to_ascii_uppercase();
            if upper == ch {
                return Err(Fallback);
            }
            dst.push(upper);
            upper_next = false;
        } else if ch == '_' {
            upper_next = true;
        } else {
            dst.push(ch);
        }
    }
    Ok(())
}

/// A field's key, and the comma before it unless it is the object's first.
#[inline]
fn write_key(out: &mut Vec<u8>, key: &[u8], first: &mut bool) {
    out.extend_from_slice(if *first { &key[1..] } else { key });
    *first = false;
}

#[inline]
fn list_sep(out: &mut Vec<u8>, n: usize) {
    if n > 0 {
        out.push(b',');
    }
}

/// A JSON string exactly as serde_json writes it: its escape table covers
/// only control characters, `"` and `\`, so text without those is copied as
/// is and anything else goes through serde_json itself.
#[inline]
fn write_str(out: &mut Vec<u8>, s: &str) {
    if !needs_escape(s.as_bytes()) {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writing to a Vec cannot fail, and a &str always serialises.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

/// Whether any byte is one serde_json escapes (a control character, `"` or
/// `\\`), eight bytes at a time: strings are most of a typical reply.
#[inline]
fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // The classic "has a byte less than n" test (exact for n <= 128);
    // a byte equal to c is a zero byte of x ^ c.
    let less_than = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let Ok(chunk) = <[u8; 8]>::try_from(chunk) else {
            return true;
        };
        let x = u64::from_le_bytes(chunk);
        let found = less_than(x, 0x20)
            | less_than(x ^ (ONES * u64::from(b'"')), 1)
            | less_than(x ^ (ONES * u64::from(b'\\')), 1);
        if found != 0 {
            return true;
        }
    }
    chunks
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

/// A field value as prost-reflect renders it: 64-bit integers as strings,
/// non-finite floats as "NaN"/"Infinity"/"-Infinity", bytes as padded
/// standard base64.
#[inline]
fn write_val(out: &mut Vec<u8>, value: Val<'_>) {
    match value {
        Val::I64(_) | Val::U64(_) => {
            out.push(b'"');
            write_val_bare(out, value);
            out.push(b'"');
        }
        Val::F32(v) if !v.is_finite() => out.extend_from_slice(non_finite(v.is_nan(), v > 0.0)),
        Val::F64(v) if !v.is_finite() => out.extend_from_slice(non_finite(v.is_nan(), v > 0.0)),
        Val::Str(s) => write_str(out, s),
        Val::Bytes(b) => {
            let engine = &base64::engine::general_purpose::STANDARD;
            let start = out.len();
            let len = base64::encoded_len(b.len(), true).unwrap_or(0);
            out.resize(start + len + 2, b'"');
            // The slice is exactly the encoded length, so this cannot fail.
            let _ = engine.encode_slice(b, &mut out[start + 1..start + 1 + len]);
        }
        other => write_val_bare(out, other),
    }
}

fn non_finite(nan: bool, positive: bool) -> &'static [u8] {
    if nan {
        b"\"NaN\""
    } else if positive {
        b"\"Infinity\""
    } else {
        b"\"-Infinity\""
    }
}

/// A timestamp in years 1 to 9999 with nanos in range, quoted, as
/// prost-types writes it (`YYYY-MM-DDTHH:MM:SS`, then 0, 3, 6 or 9 fraction
/// digits, then `Z`), without the formatting machinery: through
/// `Display` it was a quarter of rendering a ten-field reply. A property
/// test checks it against prost-types.
fn write_utc_timestamp(out: &mut Vec<u8>, seconds: i64, nanos: u32) {
    let days = seconds.div_euclid(86_400);
    let secs = seconds.rem_euclid(86_400) as u32;
    // The civil date of a day count from 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as u32;

    let mut buf = *b"\"0000-00-00T00:00:00.000000000Z\"";
    let mut digits = |at: usize, width: usize, mut v: u32| {
        for i in (at..at + width).rev() {
            buf[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    digits(1, 4, year);
    digits(6, 2, month);
    digits(9, 2, day);
    digits(12, 2, secs / 3600);
    digits(15, 2, secs / 60 % 60);
    digits(18, 2, secs % 60);
    let fraction = match nanos {
        0 => 0,
        n if n % 1_000_000 == 0 => {
            digits(21, 3, n / 1_000_000);
            3
        }
        n if n % 1_000 == 0 => {
            digits(21, 6, n / 1_000);
            6
        }
        n => {
            digits(21, 9, n);
            9
        }
    };
    let end = if fraction == 0 { 20 } else { 21 + fraction };
    out.extend_from_slice(&buf[..end]);
    out.extend_from_slice(b"Z\"");
}

/// Numbers and bools through serde_json's own formatter, so the digits
/// (itoa, and its shortest-round-trip float printing) are the same.
#[inline]
fn write_val_bare(out: &mut Vec<u8>, value: Val<'_>) {
    let mut f = CompactFormatter;
    // Writing to a Vec cannot fail.
    let _ = match value {
        Val::I32(v) => f.write_i32(out, v),
        Val::I64(v) => f.write_i64(out, v),
        Val::U32(v) => f.write_u32(out, v),
        Val::U64(v) => f.write_u64(out, v),
        Val::F32(v) => f.write_f32(out, v),
        Val::F64(v) => f.write_f64(out, v),
        Val::Bool(v) => f.write_bool(out, v),
        Val::Str(s) => {
            write_str(out, s);
            Ok(())
        }
        Val::Bytes(_) => {
            write_val(out, value);
            Ok(())
        }
    };
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::OnceLock;

    use proptest::prelude::*;
    use prost::Message as _;
    use prost_reflect::{DescriptorPool, DynamicMessage, MapKey, SerializeOptions, Value};

    use super::*;

    /// Every kind, cardinality and well-known type the writer handles, plus
    /// the ones it declines; `Everything` (the end-to-end fixture) lacks some.
    const KINDS: &str = r#"
syntax = "proto3";
package wirejson.v1;

import "google/protobuf/any.proto";
import "google/protobuf/duration.proto";
import "google/protobuf/empty.proto";
import "google/protobuf/field_mask.proto";
import "google/protobuf/struct.proto";
import "google/protobuf/timestamp.proto";
import "google/protobuf/wrappers.proto";

enum Mood { MOOD_UNSPECIFIED = 0; HAPPY = 1; SAD = 2; }
enum Sparse {
  option allow_alias = true;
  SPARSE_ZERO = 0;
  BIG = 1000;
  HUGE = 1000;
  NEG = -5;
}

message Kinds {
  double d = 1;
  float f = 2;
  int32 i32 = 3;
  int64 i64 = 4;
  uint32 u32 = 5;
  uint64 u64 = 6;
  sint32 s32 = 7;
  sint64 s64 = 8;
  fixed32 fx32 = 9;
  fixed64 fx64 = 10;
  sfixed32 sf32 = 11;
  sfixed64 sf64 = 12;
  bool b = 13;
  string s = 14;
  bytes by = 15;
  Mood mood = 16;
  Sparse sparse = 17;
  optional int32 opt_i32 = 18;
  optional string opt_s = 19;
  optional Mood opt_mood = 20;
  repeated double r_d = 21;
  repeated float r_f = 22;
  repeated sint32 r_s32 = 23;
  repeated fixed64 r_fx64 = 24;
  repeated bool r_b = 25;
  repeated bytes r_by = 26;
  repeated Mood r_mood = 27;
  repeated int32 r_i32_unpacked = 28 [packed = false];
  repeated sfixed32 r_sf32_unpacked = 29 [packed = false];
  map<bool, int64> m_bool = 30;
  map<string, Kinds> m_msg = 31;
  map<int64, google.protobuf.Timestamp> m_ts = 32;
  map<uint32, Mood> m_enum = 33;
  map<sint64, bytes> m_bytes = 34;
  map<fixed32, double> m_fx = 35;
  Kinds child = 36;
  repeated Kinds children = 37;
  google.protobuf.Timestamp ts = 38;
  google.protobuf.Duration dur = 39;
  google.protobuf.FloatValue w_f = 40;
  google.protobuf.DoubleValue w_d = 41;
  google.protobuf.UInt64Value w_u64 = 42;
  google.protobuf.Int32Value w_i32 = 43;
  google.protobuf.UInt32Value w_u32 = 44;
  google.protobuf.BytesValue w_by = 45;
  google.protobuf.FieldMask mask = 46;
  google.protobuf.Empty empty = 47;
  google.protobuf.NullValue null = 48;
  repeated google.protobuf.Timestamp r_ts = 49;
  repeated google.protobuf.NullValue r_null = 50;
  oneof pick {
    Kinds pick_msg = 51;
    string pick_s = 52;
    google.protobuf.Duration pick_dur = 53;
  }
  int32 custom_json = 54 [json_name = "renamed"];
  google.protobuf.ListValue list_value = 56;
  map<string, google.protobuf.Value> m_value = 57;
  google.protobuf.Any any = 58;
  int32 far = 100000;
}

message Point {
  double lat = 1;
  double lng = 2;
}

message Row {
  string name = 1;
  int64 id = 2;
  double score = 3;
  int32 count = 4;
  bool active = 5;
  repeated string tags = 6;
  Point where = 7;
}

message Bench {
  repeated Row rows = 1;
}
"#;

    fn pool() -> &'static DescriptorPool {
        static POOL: OnceLock<DescriptorPool> = OnceLock::new();
        POOL.get_or_init(|| {
            let dir =
                std::env::temp_dir().join(format!("gateway-wire-json-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("testing/v1")).unwrap();
            std::fs::create_dir_all(dir.join("wirejson/v1")).unwrap();
            std::fs::write(
                dir.join("testing/v1/testing.proto"),
                include_str!("../../../tests/fixtures/descriptors/testing.proto"),
            )
            .unwrap();
            std::fs::write(dir.join("wirejson/v1/kinds.proto"), KINDS).unwrap();
            let loaded = crate::descriptors::load_dir(&dir).expect("test descriptors");
            let _ = std::fs::remove_dir_all(&dir);
            loaded.pool
        })
    }

    fn desc(name: &str) -> MessageDescriptor {
        pool().get_message_by_name(name).expect(name)
    }

    const STYLES: [JsonStyle; 4] = [
        JsonStyle {
            emit_defaults: false,
            proto_names: false,
        },
        JsonStyle {
            emit_defaults: true,
            proto_names: false,
        },
        JsonStyle {
            emit_defaults: false,
            proto_names: true,
        },
        JsonStyle {
            emit_defaults: true,
            proto_names: true,
        },
    ];

    /// Plans for the four styles, built once per message type.
    fn plans(name: &'static str) -> &'static [ReplyPlan; 4] {
        static PLANS: OnceLock<std::sync::Mutex<HashMap<&'static str, &'static [ReplyPlan; 4]>>> =
            OnceLock::new();
        let mut map = PLANS.get_or_init(Default::default).lock().unwrap();
        map.entry(name).or_insert_with(|| {
            let d = desc(name);
            Box::leak(Box::new(STYLES.map(|style| ReplyPlan::new(&d, style))))
        })
    }

    fn options(style: JsonStyle) -> SerializeOptions {
        SerializeOptions::new()
            .skip_default_fields(!style.emit_defaults)
            .use_proto_field_name(style.proto_names)
    }

    /// The DynamicMessage path: `None` where it fails to decode or render.
    fn reference(desc: &MessageDescriptor, style: JsonStyle, wire: &[u8]) -> Option<Vec<u8>> {
        let msg = DynamicMessage::decode(desc.clone(), wire).ok()?;
        let mut buf = Vec::new();
        let mut ser = serde_json::Serializer::new(&mut buf);
        msg.serialize_with_options(&mut ser, &options(style)).ok()?;
        Some(buf)
    }

    /// Whether some map in the message has two or more entries, so that
    /// prost-reflect's `HashMap` order makes only a parsed comparison fair.
    fn has_unordered_map(msg: &DynamicMessage) -> bool {
        fn value(v: &Value) -> bool {
            match v {
                Value::Message(m) => has_unordered_map(m),
                Value::List(items) => items.iter().any(value),
                Value::Map(entries) => entries.len() > 1 || entries.values().any(value),
                _ => false,
            }
        }
        msg.fields().any(|(_, v)| value(v))
    }

    /// Renders `wire` both ways; the fast path must either decline and leave
    /// `out` alone, or agree with the reference. Returns whether it declined.
    fn differential(name: &'static str, wire: &[u8]) -> Result<bool, TestCaseError> {
        let d = desc(name);
        let mut fell_back = false;
        for (style, plan) in STYLES.iter().zip(plans(name).iter()) {
            let mut out = b"prefix".to_vec();
            let expected = reference(&d, *style, wire);
            match plan.write(wire, &mut out) {
                Err(Fallback) => {
                    prop_assert_eq!(&out[..], b"prefix");
                    fell_back = true;
                }
                Ok(()) => {
                    let Some(expected) = expected else {
                        return Err(TestCaseError::fail(format!(
                            "fast path rendered what the reference refuses: {wire:02x?} -> {}",
                            String::from_utf8_lossy(&out)
                        )));
                    };
                    let got = &out[6..];
                    if got != &expected[..] {
                        let msg = DynamicMessage::decode(d.clone(), wire).unwrap();
                        prop_assert!(
                            has_unordered_map(&msg),
                            "{style:?}\n got {}\nwant {}",
                            String::from_utf8_lossy(got),
                            String::from_utf8_lossy(&expected)
                        );
                        let got: serde_json::Value = serde_json::from_slice(got).unwrap();
                        let want: serde_json::Value = serde_json::from_slice(&expected).unwrap();
                        prop_assert_eq!(got, want, "{:?}", style);
                    }
                }
            }
        }
        Ok(fell_back)
    }

    fn render(name: &'static str, style: usize, wire: &[u8]) -> Result<String, Fallback> {
        let mut out = Vec::new();
        plans(name)[style].write(wire, &mut out)?;
        Ok(String::from_utf8(out).unwrap())
    }

    /// Renders and checks against the reference in every style.
    fn check(name: &'static str, wire: &[u8]) {
        if let Err(e) = differential(name, wire) {
            panic!("{e}");
        }
    }

    fn check_ok(name: &'static str, wire: &[u8]) {
        match differential(name, wire) {
            Ok(false) => {}
            Ok(true) => panic!("fell back on {wire:02x?}"),
            Err(e) => panic!("{e}"),
        }
    }

    // Hand-made wire bytes.
    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    fn tag(number: u32, wire_type: u8) -> Vec<u8> {
        let mut out = Vec::new();
        varint(u64::from(number) << 3 | u64::from(wire_type), &mut out);
        out
    }
    fn vint(number: u32, v: u64) -> Vec<u8> {
        let mut out = tag(number, WT_VARINT);
        varint(v, &mut out);
        out
    }
    fn len(number: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = tag(number, WT_LEN);
        varint(payload.len() as u64, &mut out);
        out.extend_from_slice(payload);
        out
    }
    fn i64f(number: u32, v: [u8; 8]) -> Vec<u8> {
        let mut out = tag(number, WT_I64);
        out.extend_from_slice(&v);
        out
    }
    fn i32f(number: u32, v: [u8; 4]) -> Vec<u8> {
        let mut out = tag(number, WT_I32);
        out.extend_from_slice(&v);
        out
    }
    fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
        parts.concat()
    }

    const EVERYTHING: &str = "testing.v1.Everything";
    const KINDS_MSG: &str = "wirejson.v1.Kinds";

    #[test]
    fn escape_check_finds_every_byte_serde_json_escapes_anywhere() {
        for b in 0..=255u8 {
            let escaped = serde_json::to_string(&char::from(b).to_string()).unwrap();
            let must = b < 0x20 || b == b'"' || b == b'\\';
            assert_eq!(must, escaped.len() > 3 && b < 0x80, "{b:#x} {escaped}");
            for at in 0..19 {
                let mut text = vec![b'a'; 19];
                text[at] = b;
                assert_eq!(needs_escape(&text), must, "{b:#x} at {at}");
            }
        }
    }

    #[test]
    fn plan_is_send_and_sync() {
        fn assert<T: Send + Sync>() {}
        assert::<ReplyPlan>();
    }

    #[test]
    fn renders_every_scalar_kind_like_prost_reflect() {
        let wire = cat(&[
            i64f(1, 1.5f64.to_le_bytes()),
            i32f(2, 0.1f32.to_le_bytes()),
            vint(3, (-7i64) as u64),
            vint(4, (-9_007_199_254_740_993i64) as u64),
            vint(5, u64::from(u32::MAX)),
            vint(6, u64::MAX),
            vint(7, 3), // sint32 -2
            vint(8, 4), // sint64 2
            i32f(9, 7u32.to_le_bytes()),
            i64f(10, u64::MAX.to_le_bytes()),
            i32f(11, (-3i32).to_le_bytes()),
            i64f(12, i64::MIN.to_le_bytes()),
            vint(13, 1),
            len(14, "q\"\\\n\u{1}é😀\u{2028}\u{7f}".as_bytes()),
            len(15, &[0, 0xff, 0xfe, 1]),
            vint(16, 2),
            vint(17, 1000),
            vint(54, 5),
        ]);
        check_ok(KINDS_MSG, &wire);
        assert_eq!(
            render(KINDS_MSG, 0, &wire).unwrap(),
            r#"{"d":1.5,"f":0.1,"i32":-7,"i64":"-9007199254740993","u32":4294967295,"u64":"18446744073709551615","s32":-2,"s64":"2","fx32":7,"fx64":"18446744073709551615","sf32":-3,"sf64":"-9223372036854775808","b":true,"s":"q\"\\\n\u0001é😀\u{2028}\u{7f}","by":"AP/+AQ==","mood":"SAD","sparse":"BIG","renamed":5}"#
                .replace("\\u{2028}", "\u{2028}")
                .replace("\\u{7f}", "\u{7f}")
        );
    }

    #[test]
    fn non_finite_floats_and_unknown_enum_numbers() {
        let wire = cat(&[
            i64f(1, f64::NAN.to_le_bytes()),
            i32f(2, f32::NEG_INFINITY.to_le_bytes()),
            vint(16, 9),
            vint(17, (-5i64) as u64),
            len(
                21,
                &[f64::INFINITY.to_le_bytes(), (-0.0f64).to_le_bytes()].concat(),
            ),
        ]);
        check_ok(KINDS_MSG, &wire);
        assert_eq!(
            render(KINDS_MSG, 0, &wire).unwrap(),
            r#"{"d":"NaN","f":"-Infinity","mood":9,"sparse":"NEG","rD":["Infinity",-0.0]}"#
        );
    }

    #[test]
    fn defaults_are_skipped_unless_asked_for_and_presence_fields_kept() {
        // Zero values on the wire for plain fields, and for fields with presence.
        let wire = cat(&[
            vint(3, 0),
            len(14, b""),
            i64f(1, (-0.0f64).to_le_bytes()),
            vint(18, 0),
            len(19, b""),
            vint(20, 0),
            len(36, b""),
            len(52, b""),
            len(23, b""), // an empty packed run is an empty list
        ]);
        check_ok(KINDS_MSG, &wire);
        assert_eq!(
            render(KINDS_MSG, 0, &wire).unwrap(),
            r#"{"optI32":0,"optS":"","optMood":"MOOD_UNSPECIFIED","child":{},"pickS":""}"#
        );
        check_ok(KINDS_MSG, b"");
        check_ok(EVERYTHING, b"");
        let all = render(EVERYTHING, 1, b"").unwrap();
        assert!(
            all.starts_with(r#"{"int32Field":0,"int64Field":"0","uint32Field":0,"#),
            "{all}"
        );
        assert!(all.contains(r#""tags":[],"numbers":[],"colors":[],"labels":{},"codes":{}"#));
        // Message fields and oneofs without a value are left out even then.
        assert!(!all.contains("inner") && !all.contains("choice"), "{all}");
        assert_eq!(render(EVERYTHING, 0, b"").unwrap(), "{}");
    }

    #[test]
    fn proto_names_style_uses_field_names() {
        let wire = cat(&[vint(1, 1), vint(29, 2), len(31, b"n")]);
        check_ok(EVERYTHING, &wire);
        assert_eq!(
            render(EVERYTHING, 2, &wire).unwrap(),
            r#"{"int32_field":1,"choice_number":2,"name":"n"}"#
        );
        assert_eq!(
            render(EVERYTHING, 0, &wire).unwrap(),
            r#"{"int32Field":1,"choiceNumber":2,"name":"n"}"#
        );
    }

    #[test]
    fn out_of_order_and_repeated_fields_render_in_number_order_last_wins() {
        let wire = cat(&[
            len(10, b"first"),
            vint(14, 0), // not a wire type tags accepts: checked below separately
        ]);
        assert_eq!(render(EVERYTHING, 0, &wire), Err(Fallback));
        check(EVERYTHING, &wire);

        let wire = cat(&[
            len(10, b"first"),
            vint(1, 5),
            len(14, b"a"),
            len(31, b"name"),
            len(10, b"second"),
            len(14, b"b"),
            vint(1, 6),
            len(13, &len(1, b"inner")),
        ]);
        check_ok(EVERYTHING, &wire);
        assert_eq!(
            render(EVERYTHING, 0, &wire).unwrap(),
            r#"{"int32Field":6,"stringField":"second","inner":{"name":"inner"},"tags":["a","b"],"name":"name"}"#
        );
        // Last value wins even when it is the default.
        let wire = cat(&[vint(1, 5), vint(1, 0)]);
        check_ok(EVERYTHING, &wire);
        assert_eq!(render(EVERYTHING, 0, &wire).unwrap(), "{}");
    }

    #[test]
    fn packed_and_unpacked_runs_of_one_field_concatenate() {
        let mut packed = Vec::new();
        varint(1, &mut packed);
        varint((-2i64) as u64, &mut packed);
        let wire = cat(&[
            len(15, &packed),
            vint(15, 3),
            vint(1, 1),
            len(15, &packed),
            len(16, &[1, 2, 7]),
            vint(16, 3),
        ]);
        check_ok(EVERYTHING, &wire);
        assert_eq!(
            render(EVERYTHING, 0, &wire).unwrap(),
            r#"{"int32Field":1,"numbers":["1","-2","3","1","-2"],"colors":["RED","GREEN",7,"BLUE"]}"#
        );
        // Declared unpacked, sent both ways.
        let wire = cat(&[
            vint(28, 7),
            len(28, &[8, 9]),
            len(29, &[1, 0, 0, 0]),
            i32f(29, 2i32.to_le_bytes()),
        ]);
        check_ok(KINDS_MSG, &wire);
        assert_eq!(
            render(KINDS_MSG, 0, &wire).unwrap(),
            r#"{"rI32Unpacked":[7,8,9],"rSf32Unpacked":[1,2]}"#
        );
    }

    #[test]
    fn unknown_fields_are_skipped_and_groups_fall_back() {
        let wire = cat(&[
            vint(99, 1),
            i64f(98, [1; 8]),
            i32f(97, [2; 4]),
            len(96, b"\xff\xfe not utf-8"),
            vint(1, 4),
            vint(100_001, 3),
        ]);
        check_ok(EVERYTHING, &wire);
        assert_eq!(render(EVERYTHING, 0, &wire).unwrap(), r#"{"int32Field":4}"#);
        // Field 1 is a double there: a wire type clash, not an unknown field.
        assert_eq!(render(KINDS_MSG, 0, &wire), Err(Fallback));
        check(KINDS_MSG, &wire);
        let group = cat(&[tag(95, 3), vint(1, 1), tag(95, 4), vint(1, 4)]);
        assert_eq!(render(EVERYTHING, 0, &group), Err(Fallback));
        check(EVERYTHING, &group);
    }

    #[test]
    fn malformed_input_falls_back_and_leaves_out_untouched() {
        let cases: Vec<Vec<u8>> = vec![
            vec![0x08],       // value missing
            vec![0x08, 0x80], // truncated varint
            vec![
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
            ], // 10th byte too big
            vec![
                0x08, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00,
            ], // 11 bytes
            vec![0x00, 0x01], // field number 0
            vec![0x0c],       // end group
            vec![0x0e, 0x01], // wire type 6
            vec![0x52, 0x05, b'a'], // length past the end
            len(10, b"\xc3\x28"), // invalid UTF-8
            cat(&[len(10, b"\xff"), len(10, b"ok")]), // invalid UTF-8, overridden
            len(1, b"\x01"),  // wrong wire type for int32
            i64f(10, [0; 8]), // wrong wire type for string
            len(13, &[0x08]), // broken nested message
            cat(&[len(13, b""), len(13, b"")]), // message given twice (merged)
            cat(&[len(28, b"a"), vint(29, 1)]), // two members of one oneof
            cat(&[
                len(17, &cat(&[len(1, b"k"), len(2, b"a")])),
                len(17, &len(1, b"k")),
            ]), // duplicate map key
            vint(17, 0),      // map entry that is not length-delimited
            len(17, &vint(1, 1)), // map key with the wrong wire type
            len(15, &[0x80]), // truncated packed varint
            cat(&[tag(14, 2), vec![0xff, 0xff, 0xff, 0xff, 0x0f]]), // huge length
            vec![0x08, 0x01, 0xff, 0xff, 0xff, 0xff, 0x7f], // key beyond u32
        ];
        for wire in cases {
            let mut out = b"keep".to_vec();
            assert_eq!(
                plans(EVERYTHING)[0].write(&wire, &mut out),
                Err(Fallback),
                "{wire:02x?}"
            );
            assert_eq!(out, b"keep");
            check(EVERYTHING, &wire);
        }
        // Packed fixed-width values that do not fill the run.
        let wire = len(21, &[0; 7]);
        assert_eq!(render(KINDS_MSG, 0, &wire), Err(Fallback));
        check(KINDS_MSG, &wire);
    }

    #[test]
    fn deep_nesting_falls_back_before_prost_would_refuse() {
        let mut wire = Vec::new();
        for _ in 0..200 {
            wire = len(36, &wire);
        }
        assert_eq!(render(KINDS_MSG, 0, &wire), Err(Fallback));
        check(KINDS_MSG, &wire);
        let mut wire = Vec::new();
        for _ in 0..30 {
            wire = len(36, &wire);
        }
        check_ok(KINDS_MSG, &wire);
    }

    #[test]
    fn maps_render_every_key_kind_and_default_missing_parts() {
        let wire = cat(&[
            len(30, &cat(&[vint(1, 1), vint(2, 5)])),
            len(30, &vint(2, 6)), // key missing: false
            len(31, &cat(&[len(1, b"k\"ey"), len(2, &vint(3, 1))])),
            len(31, &len(1, b"empty")), // value missing: an empty message
            len(32, &vint(1, (-4i64) as u64)), // a missing Timestamp is the epoch
            len(33, &cat(&[vint(1, 3), vint(2, 2), vint(9, 9)])),
            len(33, &cat(&[vint(2, 1), vint(1, 4), vint(2, 77)])),
            len(34, &cat(&[vint(1, 1), len(2, b"\x01\x02")])),
            len(
                35,
                &cat(&[i32f(1, 8u32.to_le_bytes()), i64f(2, f64::NAN.to_le_bytes())]),
            ),
        ]);
        // An entry whose value is a google.protobuf.Value always falls back.
        let with_value = cat(&[wire.clone(), len(57, &len(1, b"v"))]);
        assert_eq!(render(KINDS_MSG, 0, &with_value), Err(Fallback));
        check(KINDS_MSG, &with_value);
        let wire = &wire[..];
        check_ok(KINDS_MSG, wire);
        let rendered: serde_json::Value =
            serde_json::from_str(&render(KINDS_MSG, 0, wire).unwrap()).unwrap();
        assert_eq!(
            rendered,
            serde_json::json!({
                "mBool": {"true": "5", "false": "6"},
                "mMsg": {"k\"ey": {"i32": 1}, "empty": {}},
                "mTs": {"-4": "1970-01-01T00:00:00Z"},
                "mEnum": {"3": "SAD", "4": 77},
                "mBytes": {"-1": "AQI="},
                "mFx": {"8": "NaN"},
            })
        );
    }

    #[test]
    fn timestamps_and_durations_print_0_3_6_or_9_fraction_digits() {
        let ts = |seconds: i64, nanos: i32| {
            let wire = len(
                38,
                &cat(&[vint(1, seconds as u64), vint(2, nanos as i64 as u64)]),
            );
            check(KINDS_MSG, &wire);
            render(KINDS_MSG, 0, &wire)
        };
        assert_eq!(ts(0, 0).unwrap(), r#"{"ts":"1970-01-01T00:00:00Z"}"#);
        assert_eq!(
            ts(1_700_000_000, 5_000_000).unwrap(),
            r#"{"ts":"2023-11-14T22:13:20.005Z"}"#
        );
        assert_eq!(
            ts(-1, 1_000).unwrap(),
            r#"{"ts":"1969-12-31T23:59:59.000001Z"}"#
        );
        assert_eq!(
            ts(253_402_300_799, 999_999_999).unwrap(),
            r#"{"ts":"9999-12-31T23:59:59.999999999Z"}"#
        );
        assert_eq!(ts(253_402_300_800, 0), Err(Fallback));
        assert_eq!(ts(-62_135_596_801, 0), Err(Fallback));
        ts(5, -7).unwrap();
        ts(5, 2_000_000_001).unwrap();

        let dur = |seconds: i64, nanos: i32| {
            let wire = len(
                39,
                &cat(&[vint(1, seconds as u64), vint(2, nanos as i64 as u64)]),
            );
            check(KINDS_MSG, &wire);
            render(KINDS_MSG, 0, &wire)
        };
        assert_eq!(dur(0, 0).unwrap(), r#"{"dur":"0s"}"#);
        assert_eq!(dur(-1, -500_000_000).unwrap(), r#"{"dur":"-1.500s"}"#);
        assert_eq!(dur(0, -5).unwrap(), r#"{"dur":"-0.000000005s"}"#);
        assert_eq!(dur(3, 120_000).unwrap(), r#"{"dur":"3.000120s"}"#);
        dur(1, -5).unwrap();
        assert_eq!(dur(315_576_000_001, 0), Err(Fallback));
        assert_eq!(dur(0, 1_000_000_000), Err(Fallback));
        // Wrong wire type inside a Timestamp.
        let wire = len(38, &len(1, b""));
        assert_eq!(render(KINDS_MSG, 0, &wire), Err(Fallback));
        check(KINDS_MSG, &wire);
    }

    #[test]
    fn wrappers_render_bare_values() {
        let wire = cat(&[
            len(40, &i32f(1, (-0.0f32).to_le_bytes())),
            len(41, &i64f(1, f64::INFINITY.to_le_bytes())),
            len(42, &vint(1, u64::MAX)),
            len(43, b""),
            len(44, &vint(1, 7)),
            len(45, &len(1, b"hi")),
        ]);
        check_ok(KINDS_MSG, &wire);
        assert_eq!(
            render(KINDS_MSG, 0, &wire).unwrap(),
            r#"{"wF":0.0,"wD":null,"wU64":"18446744073709551615","wI32":0,"wU32":7,"wBy":"aGk="}"#
        );
        let wire = cat(&[
            len(22, &vint(1, (-1i64) as u64)),
            len(23, &vint(1, 1)),
            len(24, &cat(&[len(1, b"x"), len(1, b"\"y\"")])),
        ]);
        check_ok(EVERYTHING, &wire);
        assert_eq!(
            render(EVERYTHING, 0, &wire).unwrap(),
            r#"{"int64Wrapper":"-1","boolWrapper":true,"stringWrapper":"\"y\""}"#
        );
    }

    #[test]
    fn field_masks_camel_case_and_refuse_what_does_not_round_trip() {
        let mask = |paths: &[&str]| {
            let wire = len(
                46,
                &paths
                    .iter()
                    .map(|p| len(1, p.as_bytes()))
                    .collect::<Vec<_>>()
                    .concat(),
            );
            check(KINDS_MSG, &wire);
            render(KINDS_MSG, 0, &wire)
        };
        assert_eq!(mask(&[]).unwrap(), r#"{"mask":""}"#);
        assert_eq!(
            mask(&["foo_bar.baz", "a"]).unwrap(),
            r#"{"mask":"fooBar.baz,a"}"#
        );
        assert_eq!(mask(&["", "a", ""]).unwrap(), r#"{"mask":"a,"}"#);
        assert_eq!(mask(&["x_", "_y"]).unwrap(), r#"{"mask":"x,Y"}"#);
        assert_eq!(mask(&["fooBar"]), Err(Fallback));
        assert_eq!(mask(&["a__b"]), Err(Fallback));
        assert_eq!(mask(&["a_1"]), Err(Fallback));
    }

    #[test]
    fn null_value_empty_and_unsupported_well_known_types() {
        let wire = cat(&[vint(48, 0), len(50, &[0, 0]), len(47, &vint(3, 3))]);
        check_ok(KINDS_MSG, &wire);
        assert_eq!(
            render(KINDS_MSG, 0, &wire).unwrap(),
            r#"{"empty":{},"rNull":[null,null]}"#
        );
        assert!(render(KINDS_MSG, 1, &wire)
            .unwrap()
            .contains(r#""null":null,"#));
        // ListValue, Any, Struct, Value, Any: present means fallback.
        for (name, number) in [
            (KINDS_MSG, 56),
            (KINDS_MSG, 58),
            (EVERYTHING, 25),
            (EVERYTHING, 26),
            (EVERYTHING, 27),
        ] {
            let wire = len(number, b"");
            assert_eq!(render(name, 0, &wire), Err(Fallback));
            check(name, &wire);
        }
        // A plan for a well-known type itself.
        let ts = ReplyPlan::new(&desc("google.protobuf.Timestamp"), JsonStyle::default());
        let mut out = Vec::new();
        ts.write(&vint(1, 60), &mut out).unwrap();
        assert_eq!(out, br#""1970-01-01T00:01:00Z""#);
        let any = ReplyPlan::new(&desc("google.protobuf.Any"), JsonStyle::default());
        assert_eq!(any.write(b"", &mut out), Err(Fallback));
    }

    #[test]
    fn a_oneof_message_member_and_repeated_well_known_types() {
        let wire = cat(&[
            len(53, &vint(1, 2)),
            len(49, &vint(1, 1)),
            len(49, b""),
            len(37, &len(37, &vint(3, 1))),
            len(37, b""),
        ]);
        check_ok(KINDS_MSG, &wire);
        assert_eq!(
            render(KINDS_MSG, 0, &wire).unwrap(),
            r#"{"children":[{"children":[{"i32":1}]},{}],"rTs":["1970-01-01T00:00:01Z","1970-01-01T00:00:00Z"],"pickDur":"2s"}"#
        );
    }

    /// A small deterministic generator (splitmix64), so one proptest seed
    /// describes a whole random message of any type.
    struct Rng {
        state: u64,
        /// Also values prost-reflect refuses to render (out-of-range
        /// timestamps, field masks that do not round-trip, Any and friends);
        /// off for most messages, or hardly any would render at all.
        wild: bool,
    }

    impl Rng {
        fn new(seed: u64) -> Rng {
            let mut rng = Rng {
                state: seed,
                wild: false,
            };
            rng.wild = rng.chance(4);
            rng
        }

        fn next(&mut self) -> u64 {
            self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn chance(&mut self, one_in: u64) -> bool {
            self.below(one_in) == 0
        }
        fn pick<T: Copy>(&mut self, items: &[T]) -> T {
            items[self.below(items.len() as u64) as usize]
        }
    }

    const UNSUPPORTED: [&str; 4] = [
        "google.protobuf.Any",
        "google.protobuf.Struct",
        "google.protobuf.Value",
        "google.protobuf.ListValue",
    ];

    /// A random message; `unsupported` records whether it contains a type
    /// the fast path always declines.
    fn random_message(
        d: &MessageDescriptor,
        rng: &mut Rng,
        depth: u32,
        unsupported: &mut bool,
    ) -> DynamicMessage {
        let mut msg = DynamicMessage::new(d.clone());
        match d.full_name() {
            "google.protobuf.Timestamp" | "google.protobuf.Duration" => {
                let seconds = match rng.below(6) {
                    0 => 0,
                    1 => rng.pick(&[-62_135_596_800, 253_402_300_799, -315_576_000_000]),
                    2 if rng.wild => rng.next() as i64,
                    _ => (rng.below(4_000_000_000) as i64) - 2_000_000_000,
                };
                let negative = seconds < 0 || d.full_name() == "google.protobuf.Timestamp";
                let nanos = match rng.below(6) {
                    0 => 0,
                    1 => (rng.below(1000) * 1_000_000) as i32,
                    2 => (rng.below(1_000_000) * 1000) as i32,
                    3 if negative => -(rng.below(1_000_000_000) as i32),
                    4 if rng.wild => rng.next() as i32,
                    _ => rng.below(1_000_000_000) as i32,
                };
                msg.set_field_by_number(1, Value::I64(seconds));
                msg.set_field_by_number(2, Value::I32(nanos));
                return msg;
            }
            "google.protobuf.FieldMask" => {
                let paths = (0..rng.below(4))
                    .map(|_| {
                        Value::String(
                            if rng.wild {
                                rng.pick(&["fooBar", "a__b", "é_a", "a_1", "a", "_x"])
                            } else {
                                rng.pick(&[
                                    "a",
                                    "foo_bar",
                                    "foo_bar.baz_qux",
                                    "",
                                    "x_",
                                    "a.b.c",
                                    "é\"\n",
                                ])
                            }
                            .to_owned(),
                        )
                    })
                    .collect();
                msg.set_field_by_number(1, Value::List(paths));
                return msg;
            }
            name if UNSUPPORTED.contains(&name) => {
                *unsupported = true;
                return msg;
            }
            _ => {}
        }
        for field in d.fields() {
            if !rng.chance(2) {
                continue;
            }
            if let prost_reflect::Kind::Message(m) = field.kind() {
                let inner = if field.is_map() {
                    m.map_entry_value_field().kind()
                } else {
                    field.kind()
                };
                if let prost_reflect::Kind::Message(m) = inner {
                    if depth >= 3
                        || (UNSUPPORTED.contains(&m.full_name()) && !(rng.wild && rng.chance(4)))
                    {
                        continue;
                    }
                }
            }
            let value = if field.is_map() {
                let prost_reflect::Kind::Message(entry) = field.kind() else {
                    unreachable!()
                };
                let key_kind = entry.map_entry_key_field().kind();
                let value_kind = entry.map_entry_value_field().kind();
                let mut map = HashMap::new();
                for _ in 0..rng.below(4) {
                    let key = match random_value(&key_kind, rng, depth, unsupported) {
                        Value::Bool(v) => MapKey::Bool(v),
                        Value::I32(v) => MapKey::I32(v),
                        Value::I64(v) => MapKey::I64(v),
                        Value::U32(v) => MapKey::U32(v),
                        Value::U64(v) => MapKey::U64(v),
                        Value::String(v) => MapKey::String(v),
                        other => unreachable!("{other:?}"),
                    };
                    map.insert(key, random_value(&value_kind, rng, depth, unsupported));
                }
                Value::Map(map)
            } else if field.is_list() {
                Value::List(
                    (0..rng.below(5))
                        .map(|_| random_value(&field.kind(), rng, depth, unsupported))
                        .collect(),
                )
            } else {
                random_value(&field.kind(), rng, depth, unsupported)
            };
            msg.set_field(&field, value);
        }
        msg
    }

    fn random_value(
        kind: &prost_reflect::Kind,
        rng: &mut Rng,
        depth: u32,
        unsupported: &mut bool,
    ) -> Value {
        use prost_reflect::Kind as K;
        let int = |rng: &mut Rng| -> u64 {
            match rng.below(5) {
                0 => 0,
                1 => rng.below(300),
                2 => rng.pick(&[
                    u64::MAX,
                    i64::MAX as u64,
                    i64::MIN as u64,
                    u64::from(u32::MAX),
                    i32::MIN as i64 as u64,
                ]),
                _ => rng.next() >> rng.below(64),
            }
        };
        match kind {
            K::Double => Value::F64(match rng.below(6) {
                0 => rng.pick(&[
                    0.0,
                    -0.0,
                    f64::NAN,
                    f64::INFINITY,
                    f64::NEG_INFINITY,
                    f64::MIN_POSITIVE,
                    1e300,
                    0.1,
                ]),
                1 => (rng.next() as i32) as f64,
                _ => f64::from_bits(rng.next()),
            }),
            K::Float => Value::F32(match rng.below(6) {
                0 => rng.pick(&[
                    0.0,
                    -0.0,
                    f32::NAN,
                    f32::INFINITY,
                    f32::NEG_INFINITY,
                    f32::MIN_POSITIVE,
                    1e30,
                    0.1,
                ]),
                1 => (rng.next() as i16) as f32,
                _ => f32::from_bits(rng.next() as u32),
            }),
            K::Int32 | K::Sint32 | K::Sfixed32 => Value::I32(int(rng) as i32),
            K::Int64 | K::Sint64 | K::Sfixed64 => Value::I64(int(rng) as i64),
            K::Uint32 | K::Fixed32 => Value::U32(int(rng) as u32),
            K::Uint64 | K::Fixed64 => Value::U64(int(rng)),
            K::Bool => Value::Bool(rng.chance(2)),
            K::String => Value::String(
                (0..rng.below(8))
                    .map(|_| {
                        rng.pick(&[
                            'a', 'Z', '_', '"', '\\', '\n', '\u{1}', '\u{1f}', '\u{7f}', 'é', '😀',
                            '\u{2028}', ' ', '/',
                        ])
                    })
                    .collect(),
            ),
            K::Bytes => Value::Bytes(
                (0..rng.below(8))
                    .map(|_| rng.next() as u8)
                    .collect::<Vec<u8>>()
                    .into(),
            ),
            K::Enum(e) => {
                let numbers: Vec<i32> = e
                    .values()
                    .map(|v| v.number())
                    .chain([7, -3, 1 << 20])
                    .collect();
                Value::EnumNumber(rng.pick(&numbers))
            }
            K::Message(m) => Value::Message(random_message(m, rng, depth + 1, unsupported)),
        }
    }

    /// Random byte-level damage: flips, insertions, deletions, truncation,
    /// and a copy of some slice appended (repeats fields, out of order).
    fn mutate(wire: &[u8], rng: &mut Rng) -> Vec<u8> {
        let mut w = wire.to_vec();
        for _ in 0..=rng.below(3) {
            let at = if w.is_empty() {
                0
            } else {
                rng.below(w.len() as u64) as usize
            };
            match rng.below(5) {
                0 if !w.is_empty() => w[at] ^= 1 << rng.below(8),
                1 => w.insert(at, rng.next() as u8),
                2 if !w.is_empty() => {
                    w.remove(at);
                }
                3 => w.truncate(at),
                _ => {
                    let end = at + rng.below((w.len() - at) as u64 + 1) as usize;
                    let chunk = w[at..end].to_vec();
                    w.extend_from_slice(&chunk);
                }
            }
        }
        w
    }

    proptest! {
        #![proptest_config(crate::transcode::proptest_config())]

        #[test]
        fn utc_timestamps_are_written_as_prost_types_writes_them(
            seconds in MIN_TIMESTAMP_SECONDS..=MAX_TIMESTAMP_SECONDS,
            nanos in 0u32..1_000_000_000,
            // Whole seconds, millis and micros take the shorter forms.
            step in prop::sample::select(vec![1_000_000_000u32, 1_000_000, 1_000, 1]),
        ) {
            let nanos = nanos / step * step;
            let mut out = Vec::new();
            write_utc_timestamp(&mut out, seconds, nanos);
            let expected = format!(
                "\"{}\"",
                prost_types::Timestamp { seconds, nanos: nanos as i32 }
            );
            prop_assert_eq!(String::from_utf8(out).unwrap(), expected);
        }

        #[test]
        fn matches_prost_reflect_on_random_messages(seed in any::<u64>()) {
            let mut rng = Rng::new(seed);
            for name in [EVERYTHING, KINDS_MSG] {
                let mut unsupported = false;
                let msg = random_message(&desc(name), &mut rng, 0, &mut unsupported);
                let wire = msg.encode_to_vec();
                let fell_back = differential(name, &wire)?;
                // A valid encoding the reference renders must not fall back,
                // unless it holds a type the fast path never renders.
                let renders = STYLES.iter().all(|s| reference(&desc(name), *s, &wire).is_some());
                prop_assert!(
                    !fell_back || unsupported || !renders,
                    "fell back on a valid {name}: {msg:?}"
                );

                // Byte damage, repeats and reordering: agree or decline.
                for _ in 0..4 {
                    differential(name, &mutate(&wire, &mut rng))?;
                }
                // A second message appended: scalars overridden, lists
                // extended, messages merged.
                let other = random_message(&desc(name), &mut rng, 0, &mut unsupported).encode_to_vec();
                differential(name, &[wire.as_slice(), &other].concat())?;
                // Read as the other type: unknown fields and wire type clashes.
                let cross = if name == EVERYTHING { KINDS_MSG } else { EVERYTHING };
                differential(cross, &wire)?;
            }
        }
    }

    /// ~1 MiB of rows with strings, ints and doubles renders on the direct
    /// path, byte for byte as prost-reflect would. Its speed is measured by
    /// `cargo bench -p gateway --bench hotpath -- wire_to_json`.
    #[test]
    fn a_one_mebibyte_reply_renders_exactly() {
        let bench = desc("wirejson.v1.Bench");
        let row = desc("wirejson.v1.Row");
        let point = desc("wirejson.v1.Point");
        let mut rows = Vec::new();
        let mut size = 0;
        let mut i = 0u32;
        while size < 1 << 20 {
            let mut p = DynamicMessage::new(point.clone());
            p.set_field_by_name("lat", Value::F64(f64::from(i) * 0.001 + 51.5));
            p.set_field_by_name("lng", Value::F64(-0.12 - f64::from(i) * 1e-4));
            let mut r = DynamicMessage::new(row.clone());
            r.set_field_by_name(
                "name",
                Value::String(format!("row number {i} of the bench reply")),
            );
            r.set_field_by_name("id", Value::I64(i64::from(i) * 7919 + 1_000_000_007));
            r.set_field_by_name("score", Value::F64(f64::from(i) / 7.0));
            r.set_field_by_name("count", Value::I32(i as i32 % 1000));
            r.set_field_by_name("active", Value::Bool(i.is_multiple_of(3)));
            r.set_field_by_name(
                "tags",
                Value::List(vec![
                    Value::String("alpha".into()),
                    Value::String(format!("t{}", i % 17)),
                ]),
            );
            r.set_field_by_name("where", Value::Message(p));
            size += r.encoded_len() + 3;
            rows.push(Value::Message(r));
            i += 1;
        }
        let mut msg = DynamicMessage::new(bench.clone());
        msg.set_field_by_name("rows", Value::List(rows));
        let wire = msg.encode_to_vec();

        let style = JsonStyle::default();
        let plan = ReplyPlan::new(&bench, style);
        let mut out = Vec::new();
        plan.write(&wire, &mut out).unwrap();
        let expected = reference(&bench, style, &wire).unwrap();
        assert_eq!(out, expected);
    }
}
