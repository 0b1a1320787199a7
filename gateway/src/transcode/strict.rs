//! Strict JSON for request bodies: a serde `Deserializer` adapter that sits
//! between serde_json and prost-reflect and, in the same single pass,
//!
//! - refuses a key given twice in one object (serde_json and prost-reflect
//!   keep the last one, so two parsers of one body could disagree);
//! - in objects that are messages, refuses one field given under both its
//!   JSON and its proto name (`stringField` and `string_field`), as the
//!   proto3 JSON conformance tests require;
//! - refuses nesting deeper than a limit;
//! - reads the values of integer fields from their text, exactly
//!   ([`json_int`](super::json_int)): serde_json would hand prost-reflect a
//!   rounded `f64` for `9223372036854775808.0`, which it saturates to the
//!   int64 maximum instead of refusing.
//!
//! The adapter follows the message descriptor down the document (fields,
//! repeated fields, map values), so it knows which objects are messages and
//! which are maps or `google.protobuf.Struct`s, where only exact duplicates
//! count (`"a_b"` and `"aB"` are two map keys).

use std::cell::Cell;
use std::collections::HashSet;
use std::fmt;

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Unexpected, Visitor};
use serde_json::value::RawValue;

use super::json_int::{quoted, IntType};

/// What the value being read is, per the descriptor.
#[derive(Clone)]
pub enum Ctx {
    /// A single value of this kind.
    Kind(Kind),
    /// A repeated field's array of this kind.
    List(Kind),
    /// A map field's object: its values' kind, then its keys'.
    Map(Kind, Kind),
    /// Not described by a message (Struct, Value, Any's contents): only
    /// exact duplicate keys are refused.
    Opaque,
}

impl Ctx {
    pub fn message(desc: &MessageDescriptor) -> Ctx {
        Ctx::Kind(Kind::Message(desc.clone()))
    }

    pub fn field(f: &FieldDescriptor) -> Ctx {
        if f.is_map() {
            match f.kind() {
                Kind::Message(entry) => Ctx::Map(
                    entry.map_entry_value_field().kind(),
                    entry.map_entry_key_field().kind(),
                ),
                _ => Ctx::Opaque,
            }
        } else if f.is_list() {
            Ctx::List(f.kind())
        } else {
            Ctx::Kind(f.kind())
        }
    }

    fn object_message(&self) -> Option<&MessageDescriptor> {
        match self {
            // Well-known types have their own JSON forms (Any's "@type",
            // Struct's free keys): treat their objects as opaque.
            Ctx::Kind(Kind::Message(m)) if !m.full_name().starts_with("google.protobuf.") => {
                Some(m)
            }
            _ => None,
        }
    }
}

/// Depth shared by the whole document.
pub struct Limits {
    depth: Cell<usize>,
    max_depth: usize,
}

impl Limits {
    pub fn new(max_depth: usize) -> Limits {
        Limits {
            depth: Cell::new(0),
            max_depth,
        }
    }
}

/// The adapter around a deserializer.
pub struct Strict<'s, D> {
    de: D,
    ctx: Ctx,
    limits: &'s Limits,
}

impl<'s, D> Strict<'s, D> {
    pub fn new(de: D, ctx: Ctx, limits: &'s Limits) -> Self {
        Strict { de, ctx, limits }
    }
}

struct Visit<'s, V> {
    v: V,
    ctx: Ctx,
    limits: &'s Limits,
}

macro_rules! forward_deserialize {
    ($($method:ident),* $(,)?) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
                self.de.$method(Visit { v: visitor, ctx: self.ctx, limits: self.limits })
            }
        )*
    };
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Strict<'_, D> {
    type Error = D::Error;

    /// prost-reflect reads every integer field (and integer wrapper) with
    /// `deserialize_any`; serde_json's own Value does too.
    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        match &self.ctx {
            Ctx::Kind(Kind::Message(m)) if m.full_name() == ANY => {
                any_type_first(self.de, self.ctx, self.limits, visitor)
            }
            Ctx::Kind(kind) => match IntType::of(kind) {
                Some(ty) => integer(self.de, ty, visitor),
                None => self.de.deserialize_any(Visit {
                    v: visitor,
                    ctx: self.ctx,
                    limits: self.limits,
                }),
            },
            _ => self.de.deserialize_any(Visit {
                v: visitor,
                ctx: self.ctx,
                limits: self.limits,
            }),
        }
    }

    forward_deserialize!(
        deserialize_bool,
        deserialize_i8,
        deserialize_i16,
        deserialize_i32,
        deserialize_i64,
        deserialize_i128,
        deserialize_u8,
        deserialize_u16,
        deserialize_u32,
        deserialize_u64,
        deserialize_u128,
        deserialize_f32,
        deserialize_f64,
        deserialize_char,
        deserialize_str,
        deserialize_string,
        deserialize_bytes,
        deserialize_byte_buf,
        deserialize_option,
        deserialize_unit,
        deserialize_seq,
        deserialize_identifier,
        deserialize_ignored_any,
    );

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        match &self.ctx {
            Ctx::Kind(Kind::Message(m)) if m.full_name() == ANY => {
                any_type_first(self.de, self.ctx, self.limits, visitor)
            }
            _ => self.de.deserialize_map(Visit {
                v: visitor,
                ctx: self.ctx,
                limits: self.limits,
            }),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.de.deserialize_unit_struct(
            name,
            Visit {
                v: visitor,
                ctx: self.ctx,
                limits: self.limits,
            },
        )
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.de.deserialize_newtype_struct(
            name,
            Visit {
                v: visitor,
                ctx: self.ctx,
                limits: self.limits,
            },
        )
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.de.deserialize_tuple(
            len,
            Visit {
                v: visitor,
                ctx: self.ctx,
                limits: self.limits,
            },
        )
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.de.deserialize_tuple_struct(
            name,
            len,
            Visit {
                v: visitor,
                ctx: self.ctx,
                limits: self.limits,
            },
        )
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.de.deserialize_struct(
            name,
            fields,
            Visit {
                v: visitor,
                ctx: self.ctx,
                limits: self.limits,
            },
        )
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.de.deserialize_enum(
            name,
            variants,
            Visit {
                v: visitor,
                ctx: self.ctx,
                limits: self.limits,
            },
        )
    }

    fn is_human_readable(&self) -> bool {
        self.de.is_human_readable()
    }
}

const ANY: &str = "google.protobuf.Any";

/// A `google.protobuf.Any` object, handed to the visitor with its `@type`
/// member first. prost-reflect keeps the members it meets before `@type` as
/// untyped JSON values, whose numbers are `f64`s: an int64 field sent before
/// `@type` would be rounded and clamped unseen. Read in this order, every
/// member gets its field's context ([`AnyPayload`]) and its integers the
/// exact check. The members stay borrowed from the body; only their list is
/// allocated, and only for Any objects.
///
/// Like [`integer`], this needs `D` to be a serde_json deserializer (for
/// `RawValue`). Errors inside the object are worded as elsewhere, but their
/// line and column count from the object's start.
fn any_type_first<'de, D: Deserializer<'de>, V: Visitor<'de>>(
    de: D,
    ctx: Ctx,
    limits: &Limits,
    v: V,
) -> Result<V::Value, D::Error> {
    let raw: &'de RawValue = serde::Deserialize::deserialize(de)?;
    let visit = Visit { v, ctx, limits };
    let reply = if raw.get().starts_with('{') {
        serde_json::from_str::<Members<'de>>(raw.get()).and_then(|Members(mut members)| {
            if let Some(at) = members.iter().position(|(k, _)| k == "@type") {
                let ty = members.remove(at);
                members.insert(0, ty);
            }
            visit.visit_map(TypeFirst {
                members: members.into_iter(),
                value: None,
            })
        })
    } else {
        // null, or a value of the wrong type: the visitor words it.
        serde_json::Deserializer::from_str(raw.get()).deserialize_any(visit)
    };
    reply.map_err(de::Error::custom)
}

/// An object's members in order, keys unescaped, values as raw JSON.
struct Members<'de>(Vec<(String, &'de RawValue)>);

impl<'de> serde::Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Collect;
        impl<'de> Visitor<'de> for Collect {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
                let mut out = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    out.push((key, map.next_value::<&'de RawValue>()?));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(Collect)
    }
}

/// [`Members`] as a map, each value read from its own text.
struct TypeFirst<'de> {
    members: std::vec::IntoIter<(String, &'de RawValue)>,
    value: Option<&'de RawValue>,
}

impl<'de> MapAccess<'de> for TypeFirst<'de> {
    type Error = serde_json::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        use serde::de::IntoDeserializer as _;
        match self.members.next() {
            None => Ok(None),
            Some((key, value)) => {
                self.value = Some(value);
                seed.deserialize(key.into_deserializer()).map(Some)
            }
        }
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<S::Value, Self::Error> {
        let raw = self
            .value
            .take()
            .ok_or_else(|| de::Error::custom("a value without its key"))?;
        let mut de = serde_json::Deserializer::from_str(raw.get());
        let value = seed.deserialize(&mut de)?;
        de.end()?;
        Ok(value)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.members.len())
    }
}

/// An integer field's value, read from its JSON text: a number or decimal
/// string within the type's range reaches the visitor as an exact `u64` or
/// `i64`; anything else out of range or not whole is refused here, worded
/// once for both request paths. Other JSON values get the visitor's own
/// "invalid type" answer, as from serde_json.
///
/// The text comes from serde_json's `RawValue` (borrowed from the body, no
/// copy), so `D` must be a serde_json deserializer over a slice, as every
/// `Strict` in `request.rs` is.
fn integer<'de, D: Deserializer<'de>, V: Visitor<'de>>(
    de: D,
    ty: IntType,
    v: V,
) -> Result<V::Value, D::Error> {
    let raw: &'de RawValue = serde::Deserialize::deserialize(de)?;
    let text = raw.get();
    let int = match text.as_bytes().first() {
        Some(b'"') => {
            let s = match text.contains('\\') {
                false => std::borrow::Cow::Borrowed(&text[1..text.len() - 1]),
                true => serde_json::from_str::<String>(text)
                    .map_err(de::Error::custom)?
                    .into(),
            };
            ty.string(&s)
                .map_err(|e| de::Error::custom(format_args!("\"{}\" {e}", quoted(&s))))?
        }
        Some(b'-' | b'0'..=b'9') => ty
            .number(text.as_bytes())
            .map_err(|e| de::Error::custom(format_args!("{} {e}", quoted(text))))?,
        Some(b't') => return v.visit_bool(true),
        Some(b'f') => return v.visit_bool(false),
        Some(b'n') => return v.visit_unit(),
        Some(b'{') => return Err(de::Error::invalid_type(Unexpected::Map, &v)),
        _ => return Err(de::Error::invalid_type(Unexpected::Seq, &v)),
    };
    match int.negative_value() {
        Some(n) => v.visit_i64(n),
        None => v.visit_u64(int.magnitude),
    }
}

macro_rules! forward_visit {
    ($($method:ident($ty:ty)),* $(,)?) => {
        $(
            fn $method<E: de::Error>(self, v: $ty) -> Result<Self::Value, E> {
                self.v.$method(v)
            }
        )*
    };
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Visit<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.v.expecting(f)
    }

    forward_visit!(
        visit_bool(bool),
        visit_i8(i8),
        visit_i16(i16),
        visit_i32(i32),
        visit_i64(i64),
        visit_i128(i128),
        visit_u8(u8),
        visit_u16(u16),
        visit_u32(u32),
        visit_u64(u64),
        visit_u128(u128),
        visit_f32(f32),
        visit_f64(f64),
        visit_char(char),
        visit_str(&str),
        visit_borrowed_str(&'de str),
        visit_string(String),
        visit_bytes(&[u8]),
        visit_borrowed_bytes(&'de [u8]),
        visit_byte_buf(Vec<u8>),
    );

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        self.v.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.v.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.v.visit_some(Strict::new(d, self.ctx, self.limits))
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.v
            .visit_newtype_struct(Strict::new(d, self.ctx, self.limits))
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        self.v.visit_enum(data)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        enter::<A::Error>(self.limits)?;
        let elem = match &self.ctx {
            Ctx::List(k) => Ctx::Kind(k.clone()),
            _ => Ctx::Opaque,
        };
        let r = self.v.visit_seq(Seq {
            seq,
            elem,
            limits: self.limits,
        });
        leave(self.limits);
        r
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        enter::<A::Error>(self.limits)?;
        let keys = match (&self.ctx, self.ctx.object_message()) {
            (_, Some(m)) => Keys::Fields {
                desc: m.clone(),
                seen: Vec::new(),
            },
            (Ctx::Map(..), None) | (_, None) => Keys::Exact(ExactKeys::default()),
        };
        let values = match &self.ctx {
            Ctx::Map(k, _) => Some(Ctx::Kind(k.clone())),
            _ => None,
        };
        let int_keys = match &self.ctx {
            Ctx::Map(_, keys) => IntType::of(keys),
            _ => None,
        };
        let any = match &self.ctx {
            Ctx::Kind(Kind::Message(m)) if m.full_name() == "google.protobuf.Any" => {
                Some(AnyPayload {
                    any: m.clone(),
                    payload: None,
                    reading_type: false,
                })
            }
            _ => None,
        };
        let r = self.v.visit_map(Map {
            map,
            keys,
            values,
            int_keys,
            any,
            key: String::new(),
            next: Ctx::Opaque,
            limits: self.limits,
        });
        leave(self.limits);
        r
    }
}

fn enter<E: de::Error>(limits: &Limits) -> Result<(), E> {
    let d = limits.depth.get() + 1;
    if d > limits.max_depth {
        return Err(E::custom(format_args!(
            "JSON nesting is deeper than the limit of {} levels (limits.max_json_depth)",
            limits.max_depth
        )));
    }
    limits.depth.set(d);
    Ok(())
}

fn leave(limits: &Limits) {
    limits.depth.set(limits.depth.get().saturating_sub(1));
}

struct Seq<'s, A> {
    seq: A,
    elem: Ctx,
    limits: &'s Limits,
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Seq<'_, A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        self.seq.next_element_seed(Seeded {
            seed,
            ctx: self.elem.clone(),
            limits: self.limits,
        })
    }

    fn size_hint(&self) -> Option<usize> {
        self.seq.size_hint()
    }
}

/// A seed whose value is read through the adapter.
struct Seeded<'s, T> {
    seed: T,
    ctx: Ctx,
    limits: &'s Limits,
}

impl<'de, T: DeserializeSeed<'de>> DeserializeSeed<'de> for Seeded<'_, T> {
    type Value = T::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<T::Value, D::Error> {
        self.seed.deserialize(Strict::new(d, self.ctx, self.limits))
    }
}

/// Keys seen in one object.
enum Keys {
    /// A message: field numbers, whatever name each was given under.
    Fields {
        desc: MessageDescriptor,
        /// Field number, and whether it came under its JSON name.
        seen: Vec<(u32, bool)>,
    },
    Exact(ExactKeys),
}

/// Keys are kept as 64-bit hashes (no copy of each key): a false "given
/// twice" needs two keys of one object to collide, about 2^-64 per pair.
/// Small objects are scanned; big ones (maps, Structs) get a hash set, so a
/// hostile object of many keys costs linear time.
#[derive(Default)]
struct ExactKeys {
    few: Vec<u64>,
    many: Option<HashSet<u64>>,
}

const SCAN_UP_TO: usize = 16;

fn key_hash(key: &str) -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    // A per-process random seed: clients cannot aim for collisions.
    static SEED: std::sync::OnceLock<std::hash::RandomState> = std::sync::OnceLock::new();
    let mut h = SEED.get_or_init(std::hash::RandomState::new).build_hasher();
    h.write(key.as_bytes());
    h.finish()
}

impl ExactKeys {
    /// False when `key` was seen before.
    fn insert(&mut self, key: &str) -> bool {
        let k = key_hash(key);
        if let Some(set) = &mut self.many {
            return set.insert(k);
        }
        if self.few.contains(&k) {
            return false;
        }
        self.few.push(k);
        if self.few.len() > SCAN_UP_TO {
            self.many = Some(self.few.drain(..).collect());
        }
        true
    }
}

struct Map<'s, A> {
    map: A,
    keys: Keys,
    /// The context of every value (map fields), or `None`: per field.
    values: Option<Ctx>,
    /// A map field's integer key type: keys are checked as its values are.
    int_keys: Option<IntType>,
    /// Set in a `google.protobuf.Any`.
    any: Option<AnyPayload>,
    /// The last key read, reused between keys.
    key: String,
    /// The context of the value about to be read.
    next: Ctx,
    limits: &'s Limits,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Map<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        self.key.clear();
        let Some(k) = self.map.next_key_seed(KeySeed {
            seed,
            slot: &mut self.key,
        })?
        else {
            return Ok(None);
        };
        let key = self.key.as_str();
        match &mut self.keys {
            Keys::Fields { desc, seen } => {
                let (field, as_json) = match desc.get_field_by_json_name(key) {
                    Some(f) => (Some(f), true),
                    None => (desc.get_field_by_name(key), false),
                };
                match field {
                    Some(f) => {
                        if let Some((_, first_json)) = seen.iter().find(|(n, _)| *n == f.number()) {
                            let name = |json: bool| if json { f.json_name() } else { f.name() };
                            return Err(de::Error::custom(
                                if *first_json == as_json || f.json_name() == f.name() {
                                    format!("field \"{key}\" is given twice")
                                } else {
                                    format!(
                                        "field \"{}\" is given twice, as \"{}\" and as \"{key}\"",
                                        f.name(),
                                        name(*first_json)
                                    )
                                },
                            ));
                        }
                        seen.push((f.number(), as_json));
                        self.next = Ctx::field(&f);
                    }
                    // Unknown: the decoder refuses or skips it.
                    None => self.next = Ctx::Opaque,
                }
            }
            Keys::Exact(exact) => {
                if !exact.insert(key) {
                    return Err(de::Error::custom(format!("key \"{key}\" is given twice")));
                }
                if let Some(Err(e)) = self.int_keys.map(|ty| ty.string(key)) {
                    return Err(de::Error::custom(format!(
                        "map key \"{}\" {e}",
                        quoted(key)
                    )));
                }
                self.next = match &mut self.any {
                    Some(any) => any.value_ctx(key),
                    None => self.values.clone().unwrap_or(Ctx::Opaque),
                };
            }
        }
        Ok(Some(k))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        if let Some(any) = self.any.as_mut().filter(|a| a.reading_type) {
            any.reading_type = false;
            self.key.clear();
            let v = self.map.next_value_seed(KeySeed {
                seed,
                slot: &mut self.key,
            })?;
            any.payload = self
                .key
                .rsplit_once('/')
                .and_then(|(_, name)| any.any.parent_pool().get_message_by_name(name));
            return Ok(v);
        }
        let ctx = std::mem::replace(&mut self.next, Ctx::Opaque);
        self.map.next_value_seed(Seeded {
            seed,
            ctx,
            limits: self.limits,
        })
    }

    fn size_hint(&self) -> Option<usize> {
        self.map.size_hint()
    }
}

/// A `google.protobuf.Any` object. Once its `@type` is read, the members
/// after it are the payload's fields (or, for a well-known type, its JSON
/// form under `value`) and get their context like any message's, so their
/// integers are checked. [`any_type_first`] puts `@type` first, so no
/// member is read before the payload's type is known.
struct AnyPayload {
    /// The Any type, for its pool.
    any: MessageDescriptor,
    payload: Option<MessageDescriptor>,
    /// The value about to be read is `@type`'s.
    reading_type: bool,
}

impl AnyPayload {
    fn value_ctx(&mut self, key: &str) -> Ctx {
        if key == "@type" {
            self.reading_type = true;
            return Ctx::Opaque;
        }
        match &self.payload {
            Some(p) if p.full_name().starts_with("google.protobuf.") => match key {
                "value" => Ctx::message(p),
                _ => Ctx::Opaque,
            },
            Some(p) => p
                .get_field_by_json_name(key)
                .or_else(|| p.get_field_by_name(key))
                .map_or(Ctx::Opaque, |f| Ctx::field(&f)),
            None => Ctx::Opaque,
        }
    }
}

/// Reads a key through the caller's seed while noting its text.
struct KeySeed<'k, K> {
    seed: K,
    slot: &'k mut String,
}

impl<'de, K: DeserializeSeed<'de>> DeserializeSeed<'de> for KeySeed<'_, K> {
    type Value = K::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<K::Value, D::Error> {
        self.seed.deserialize(KeyDe {
            de: d,
            slot: self.slot,
        })
    }
}

struct KeyDe<'k, D> {
    de: D,
    slot: &'k mut String,
}

macro_rules! forward_key_deserialize {
    ($($method:ident),* $(,)?) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
                self.de.$method(KeyVisit { v: visitor, slot: self.slot })
            }
        )*
    };
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for KeyDe<'_, D> {
    type Error = D::Error;

    forward_key_deserialize!(
        deserialize_any,
        deserialize_bool,
        deserialize_i8,
        deserialize_i16,
        deserialize_i32,
        deserialize_i64,
        deserialize_i128,
        deserialize_u8,
        deserialize_u16,
        deserialize_u32,
        deserialize_u64,
        deserialize_u128,
        deserialize_f32,
        deserialize_f64,
        deserialize_char,
        deserialize_str,
        deserialize_string,
        deserialize_bytes,
        deserialize_byte_buf,
        deserialize_option,
        deserialize_unit,
        deserialize_seq,
        deserialize_map,
        deserialize_identifier,
        deserialize_ignored_any,
    );

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.de.deserialize_unit_struct(
            name,
            KeyVisit {
                v: visitor,
                slot: self.slot,
            },
        )
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.de.deserialize_newtype_struct(
            name,
            KeyVisit {
                v: visitor,
                slot: self.slot,
            },
        )
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.de.deserialize_tuple(
            len,
            KeyVisit {
                v: visitor,
                slot: self.slot,
            },
        )
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.de.deserialize_tuple_struct(
            name,
            len,
            KeyVisit {
                v: visitor,
                slot: self.slot,
            },
        )
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.de.deserialize_struct(
            name,
            fields,
            KeyVisit {
                v: visitor,
                slot: self.slot,
            },
        )
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.de.deserialize_enum(
            name,
            variants,
            KeyVisit {
                v: visitor,
                slot: self.slot,
            },
        )
    }

    fn is_human_readable(&self) -> bool {
        self.de.is_human_readable()
    }
}

struct KeyVisit<'k, V> {
    v: V,
    slot: &'k mut String,
}

macro_rules! note_and_forward {
    ($($method:ident($ty:ty)),* $(,)?) => {
        $(
            fn $method<E: de::Error>(self, v: $ty) -> Result<Self::Value, E> {
                use std::fmt::Write as _;
                let _ = write!(self.slot, "{v}");
                self.v.$method(v)
            }
        )*
    };
}

impl<'de, V: Visitor<'de>> Visitor<'de> for KeyVisit<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.v.expecting(f)
    }

    note_and_forward!(
        visit_bool(bool),
        visit_i8(i8),
        visit_i16(i16),
        visit_i32(i32),
        visit_i64(i64),
        visit_i128(i128),
        visit_u8(u8),
        visit_u16(u16),
        visit_u32(u32),
        visit_u64(u64),
        visit_u128(u128),
        visit_f32(f32),
        visit_f64(f64),
        visit_char(char),
    );

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        self.slot.push_str(v);
        self.v.visit_str(v)
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        self.slot.push_str(v);
        self.v.visit_borrowed_str(v)
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        self.slot.push_str(&v);
        self.v.visit_string(v)
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
        self.slot.push_str(&String::from_utf8_lossy(v));
        self.v.visit_bytes(v)
    }

    fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Self::Value, E> {
        self.slot.push_str(&String::from_utf8_lossy(v));
        self.v.visit_borrowed_bytes(v)
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Self::Value, E> {
        self.slot.push_str(&String::from_utf8_lossy(&v));
        self.v.visit_byte_buf(v)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        self.v.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.v.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.v.visit_some(d)
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.v.visit_newtype_struct(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        self.v.visit_seq(seq)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        self.v.visit_map(map)
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        self.v.visit_enum(data)
    }
}
