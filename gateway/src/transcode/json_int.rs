//! JSON values of integer fields, read exactly.
//!
//! proto3 JSON takes an integer field's value as a number, in any of JSON's
//! number forms (`100`, `1e2`, `100.0`), or as a decimal string. serde_json
//! reads every number that is not a plain 64-bit integer as an `f64`, and
//! prost-reflect then checks that float's range and casts it: past 2^53 the
//! float is no longer the number sent, and the cast saturates, so
//! `9223372036854775808.0` became the int64 maximum, `18446744073709551616`
//! the uint64 maximum and `1.0000000000000000001` the integer 1.
//!
//! Here a number's text is read as the decimal it is: a whole number is
//! checked against the field's range exactly, anything else is refused. Both
//! request paths use it (the direct encoder in `json_wire.rs` and the strict
//! adapter in front of prost-reflect), so they accept exactly the same
//! values. It only compares and multiplies: no allocation.

use std::fmt;

use prost_reflect::Kind;

/// The range of an integer field, named by its proto type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IntType {
    name: &'static str,
    /// The largest magnitude of a negative value (0 for unsigned types).
    neg_max: u64,
    max: u64,
}

impl IntType {
    const fn new(name: &'static str, signed: bool, bits: u32) -> IntType {
        let max = if signed {
            (1u64 << (bits - 1)) - 1
        } else if bits == 64 {
            u64::MAX
        } else {
            (1u64 << bits) - 1
        };
        IntType {
            name,
            neg_max: if signed { max + 1 } else { 0 },
            max,
        }
    }

    /// The integer type of a field kind: a scalar, or a wrapper message
    /// (`google.protobuf.Int64Value`), whose JSON form is its value's.
    pub(crate) fn of(kind: &Kind) -> Option<IntType> {
        Some(match kind {
            Kind::Int32 => IntType::new("int32", true, 32),
            Kind::Sint32 => IntType::new("sint32", true, 32),
            Kind::Sfixed32 => IntType::new("sfixed32", true, 32),
            Kind::Uint32 => IntType::new("uint32", false, 32),
            Kind::Fixed32 => IntType::new("fixed32", false, 32),
            Kind::Int64 => IntType::new("int64", true, 64),
            Kind::Sint64 => IntType::new("sint64", true, 64),
            Kind::Sfixed64 => IntType::new("sfixed64", true, 64),
            Kind::Uint64 => IntType::new("uint64", false, 64),
            Kind::Fixed64 => IntType::new("fixed64", false, 64),
            Kind::Message(m) => match m.full_name() {
                "google.protobuf.Int32Value" => IntType::new("int32", true, 32),
                "google.protobuf.UInt32Value" => IntType::new("uint32", false, 32),
                "google.protobuf.Int64Value" => IntType::new("int64", true, 64),
                "google.protobuf.UInt64Value" => IntType::new("uint64", false, 64),
                _ => return None,
            },
            _ => return None,
        })
    }

    /// A JSON number's text (already valid by JSON's grammar) as a value of
    /// this type.
    pub(crate) fn number(self, text: &[u8]) -> Result<Int, IntError> {
        let v = exact_or(text).map_err(|e| e.of(self))?;
        self.check(v)
    }

    /// A JSON string's content, read as prost-reflect reads it (Rust's
    /// integer `FromStr`: optional sign, decimal digits).
    pub(crate) fn string(self, s: &str) -> Result<Int, IntError> {
        let (negative, digits) = match s.as_bytes() {
            [b'-', rest @ ..] => (true, rest),
            [b'+', rest @ ..] => (false, rest),
            _ => (false, s.as_bytes()),
        };
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return Err(IntError {
                ty: self,
                kind: IntErrorKind::NotDecimal,
            });
        }
        let magnitude = digits
            .iter()
            .try_fold(0u64, |v, &c| {
                v.checked_mul(10)?.checked_add(u64::from(c - b'0'))
            })
            .ok_or(IntError {
                ty: self,
                kind: IntErrorKind::OutOfRange,
            })?;
        // Unsigned types take no sign but "+": "-0" is not a u64 to Rust.
        if negative && self.neg_max == 0 {
            return Err(IntError {
                ty: self,
                kind: if magnitude == 0 {
                    IntErrorKind::NotDecimal
                } else {
                    IntErrorKind::OutOfRange
                },
            });
        }
        self.check(Int {
            negative,
            magnitude,
        })
    }

    fn check(self, v: Int) -> Result<Int, IntError> {
        let limit = if v.negative { self.neg_max } else { self.max };
        if v.magnitude > limit {
            return Err(IntError {
                ty: self,
                kind: IntErrorKind::OutOfRange,
            });
        }
        Ok(v)
    }

    fn min(self) -> i128 {
        -i128::from(self.neg_max)
    }
}

/// A whole number within a 64-bit magnitude.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Int {
    pub(crate) negative: bool,
    pub(crate) magnitude: u64,
}

impl Int {
    /// Below zero (`-0` is zero).
    pub(crate) fn is_negative(self) -> bool {
        self.negative && self.magnitude != 0
    }

    /// The value when it is below zero and fits an i64; `None` otherwise.
    pub(crate) fn negative_value(self) -> Option<i64> {
        // 2^63 wraps to i64::MIN, which is its negation.
        (self.is_negative() && self.magnitude <= 1 << 63)
            .then(|| (self.magnitude as i64).wrapping_neg())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IntErrorKind {
    OutOfRange,
    /// A number with a fractional part.
    NotWhole,
    /// A string that is not an optional sign and decimal digits.
    NotDecimal,
}

/// Why a value is not one of an integer field's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IntError {
    ty: IntType,
    pub(crate) kind: IntErrorKind,
}

impl fmt::Display for IntError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ty = self.ty;
        match self.kind {
            IntErrorKind::OutOfRange => write!(
                f,
                "is out of range for {} ({} to {})",
                ty.name,
                ty.min(),
                ty.max
            ),
            IntErrorKind::NotWhole => write!(f, "is not a valid {}: not a whole number", ty.name),
            IntErrorKind::NotDecimal => {
                write!(f, "is not a valid {}: not a decimal integer", ty.name)
            }
        }
    }
}

/// How a number fails to be a 64-bit magnitude, before its type is known.
enum Inexact {
    Fraction,
    TooBig,
}

impl Inexact {
    fn of(self, ty: IntType) -> IntError {
        IntError {
            ty,
            kind: match self {
                Inexact::Fraction => IntErrorKind::NotWhole,
                Inexact::TooBig => IntErrorKind::OutOfRange,
            },
        }
    }
}

/// Past any body's length: an exponent beyond it shifts every digit out of
/// (or far past) 64 bits, so its exact size no longer matters.
const EXPONENT_CAP: i64 = 1 << 48;

/// A JSON number's text (valid by JSON's grammar) as a whole number within
/// a 64-bit magnitude, or `None`; the caller checks its type's range.
pub(crate) fn exact(text: &[u8]) -> Option<Int> {
    exact_or(text).ok()
}

/// The exact value of a JSON number: its digits times a power of ten.
/// Trailing zeros move into the exponent, leading zeros drop; what is left
/// must end at or before the decimal point (a whole number) and fit 64 bits.
fn exact_or(text: &[u8]) -> Result<Int, Inexact> {
    let (negative, rest) = match text {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, text),
    };
    let (mantissa, exponent) = match rest.iter().position(|&c| c == b'e' || c == b'E') {
        Some(i) => (&rest[..i], exponent_of(&rest[i + 1..])),
        None => (rest, 0),
    };
    let (int, frac) = match mantissa.iter().position(|&c| c == b'.') {
        Some(i) => (&mantissa[..i], &mantissa[i + 1..]),
        None => (mantissa, &[][..]),
    };
    let digit = |i: usize| {
        if i < int.len() {
            int[i]
        } else {
            frac[i - int.len()]
        }
    };
    let n = int.len() + frac.len();
    let Some(first) = (0..n).find(|&i| digit(i) != b'0') else {
        return Ok(Int {
            negative,
            magnitude: 0,
        });
    };
    let last = (first..n).rfind(|&i| digit(i) != b'0').unwrap_or(first);
    // The value is digits[first..=last] * 10^shift.
    let shift = exponent - frac.len() as i64 + (n - 1 - last) as i64;
    if shift < 0 {
        return Err(Inexact::Fraction);
    }
    // u64::MAX has 20 digits.
    if (last - first + 1) as i64 + shift > 20 {
        return Err(Inexact::TooBig);
    }
    let mut magnitude = 0u64;
    for i in first..=last {
        magnitude = magnitude
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(digit(i) - b'0')))
            .ok_or(Inexact::TooBig)?;
    }
    for _ in 0..shift {
        magnitude = magnitude.checked_mul(10).ok_or(Inexact::TooBig)?;
    }
    Ok(Int {
        negative,
        magnitude,
    })
}

fn exponent_of(text: &[u8]) -> i64 {
    let (negative, digits) = match text {
        [b'-', rest @ ..] => (true, rest),
        [b'+', rest @ ..] => (false, rest),
        _ => (false, text),
    };
    let e = digits.iter().fold(0i64, |e, &c| {
        (e * 10 + i64::from(c - b'0')).min(EXPONENT_CAP)
    });
    if negative {
        -e
    } else {
        e
    }
}

/// A number or string as quoted in an error message: long ones cut short,
/// so a megabyte of digits does not come back in the answer.
pub(crate) fn quoted(text: &str) -> impl fmt::Display + '_ {
    struct Quoted<'a>(&'a str);
    impl fmt::Display for Quoted<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            const SHOWN: usize = 40;
            match self.0.char_indices().nth(SHOWN) {
                Some((cut, _)) => write!(f, "{}...", &self.0[..cut]),
                None => f.write_str(self.0),
            }
        }
    }
    Quoted(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const I64: IntType = IntType::new("int64", true, 64);
    const U64: IntType = IntType::new("uint64", false, 64);
    const I32: IntType = IntType::new("int32", true, 32);
    const U32: IntType = IntType::new("uint32", false, 32);

    fn num(ty: IntType, text: &str) -> Result<i128, IntErrorKind> {
        ty.number(text.as_bytes())
            .map(|v| {
                let m = i128::from(v.magnitude);
                if v.negative {
                    -m
                } else {
                    m
                }
            })
            .map_err(|e| e.kind)
    }

    #[test]
    fn ranges_are_the_types() {
        assert_eq!((I64.min(), I64.max), (i64::MIN.into(), i64::MAX as u64));
        assert_eq!((U64.min(), U64.max), (0, u64::MAX));
        assert_eq!((I32.min(), I32.max), (i32::MIN.into(), i32::MAX as u64));
        assert_eq!((U32.min(), U32.max), (0, u32::MAX.into()));
    }

    #[test]
    fn whole_numbers_in_any_form_are_read_exactly() {
        use IntErrorKind::*;
        for (text, want) in [
            ("0", Ok(0)),
            ("-0", Ok(0)),
            ("0e999999999999999999999", Ok(0)),
            ("0.000e-5", Ok(0)),
            ("1e2", Ok(100)),
            ("1E+2", Ok(100)),
            ("100.0", Ok(100)),
            ("1000e-1", Ok(100)),
            ("0.01e4", Ok(100)),
            ("9223372036854775807", Ok(i64::MAX.into())),
            ("9223372036854775807.000", Ok(i64::MAX.into())),
            ("9.223372036854775807e18", Ok(i64::MAX.into())),
            ("-9223372036854775808.0", Ok(i64::MIN.into())),
            ("9223372036854775806.0", Ok(i64::MAX as i128 - 1)),
            ("9223372036854775808.0", Err(OutOfRange)),
            ("-9223372036854775809", Err(OutOfRange)),
            ("1e19", Err(OutOfRange)),
            ("1e999999999999999999999", Err(OutOfRange)),
            ("1.5", Err(NotWhole)),
            ("1.0000000000000000001", Err(NotWhole)),
            ("1e-1", Err(NotWhole)),
            ("1e-999999999999999999999", Err(NotWhole)),
        ] {
            assert_eq!(num(I64, text), want, "{text}");
        }
        assert_eq!(num(U64, "18446744073709551615"), Ok(u64::MAX.into()));
        assert_eq!(num(U64, "1.8446744073709551615e19"), Ok(u64::MAX.into()));
        assert_eq!(num(U64, "18446744073709551616"), Err(OutOfRange));
        assert_eq!(num(U64, "184467440737095516150e-1"), Ok(u64::MAX.into()));
        assert_eq!(num(U64, "-1"), Err(OutOfRange));
        assert_eq!(num(U64, "-0.0"), Ok(0));
        assert_eq!(num(I32, "-2147483648"), Ok(i32::MIN.into()));
        assert_eq!(num(I32, "2147483648e0"), Err(OutOfRange));
        assert_eq!(num(U32, "4294967295.0"), Ok(u32::MAX.into()));
    }

    #[test]
    fn strings_are_read_as_rust_reads_integers() {
        for s in ["", "-", "+", "1.0", "1e2", " 1", "0x10", "--1", "+-1"] {
            assert_eq!(
                I64.string(s).map_err(|e| e.kind),
                Err(IntErrorKind::NotDecimal),
                "{s:?}"
            );
            assert!(s.parse::<i64>().is_err());
        }
        for s in [
            "0",
            "-0",
            "+7",
            "-9223372036854775808",
            "9223372036854775807",
            "007",
        ] {
            let v = I64.string(s).unwrap();
            assert_eq!(
                v.negative_value().unwrap_or(v.magnitude as i64),
                s.parse::<i64>().unwrap()
            );
        }
        for s in [
            "9223372036854775808",
            "-9223372036854775809",
            "99999999999999999999999",
        ] {
            assert_eq!(
                I64.string(s).map_err(|e| e.kind),
                Err(IntErrorKind::OutOfRange)
            );
        }
        assert_eq!(
            U64.string("-0").map_err(|e| e.kind),
            Err(IntErrorKind::NotDecimal)
        );
        assert!("-0".parse::<u64>().is_err());
        assert_eq!(
            U64.string("-1").map_err(|e| e.kind),
            Err(IntErrorKind::OutOfRange)
        );
        assert_eq!(
            U64.string("+18446744073709551615").unwrap().magnitude,
            u64::MAX
        );
    }

    #[test]
    fn long_values_are_cut_short_in_messages() {
        assert_eq!(quoted("123").to_string(), "123");
        let long = "9".repeat(1000);
        assert_eq!(quoted(&long).to_string(), format!("{}...", "9".repeat(40)));
    }
}
