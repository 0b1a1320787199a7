//! Protobuf wire-format facts shared by the direct JSON <-> wire paths
//! ([`json_wire`](super::json_wire) and [`wire_json`](super::wire_json)).

use prost_reflect::Kind;

pub(crate) const WT_VARINT: u8 = 0;
pub(crate) const WT_I64: u8 = 1;
pub(crate) const WT_LEN: u8 = 2;
pub(crate) const WT_I32: u8 = 5;

/// Scalar field types, as on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scalar {
    Double,
    Float,
    Int32,
    Int64,
    Uint32,
    Uint64,
    Sint32,
    Sint64,
    Fixed32,
    Fixed64,
    Sfixed32,
    Sfixed64,
    Bool,
    String,
    Bytes,
}

impl Scalar {
    /// `None` for messages and enums.
    pub(crate) fn of(kind: &Kind) -> Option<Scalar> {
        Some(match kind {
            Kind::Double => Scalar::Double,
            Kind::Float => Scalar::Float,
            Kind::Int32 => Scalar::Int32,
            Kind::Int64 => Scalar::Int64,
            Kind::Uint32 => Scalar::Uint32,
            Kind::Uint64 => Scalar::Uint64,
            Kind::Sint32 => Scalar::Sint32,
            Kind::Sint64 => Scalar::Sint64,
            Kind::Fixed32 => Scalar::Fixed32,
            Kind::Fixed64 => Scalar::Fixed64,
            Kind::Sfixed32 => Scalar::Sfixed32,
            Kind::Sfixed64 => Scalar::Sfixed64,
            Kind::Bool => Scalar::Bool,
            Kind::String => Scalar::String,
            Kind::Bytes => Scalar::Bytes,
            Kind::Message(_) | Kind::Enum(_) => return None,
        })
    }

    pub(crate) fn wire_type(self) -> u8 {
        match self {
            Scalar::Double | Scalar::Fixed64 | Scalar::Sfixed64 => WT_I64,
            Scalar::Float | Scalar::Fixed32 | Scalar::Sfixed32 => WT_I32,
            Scalar::String | Scalar::Bytes => WT_LEN,
            _ => WT_VARINT,
        }
    }

    /// The integer types, whose JSON values `json_int` reads exactly.
    pub(crate) fn is_integer(self) -> bool {
        !matches!(
            self,
            Scalar::Double | Scalar::Float | Scalar::Bool | Scalar::String | Scalar::Bytes
        )
    }

    /// Whether a repeated field of it may be packed.
    pub(crate) fn packable(self) -> bool {
        !matches!(self, Scalar::String | Scalar::Bytes)
    }
}
