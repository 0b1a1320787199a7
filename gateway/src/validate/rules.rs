//! The rules on one value, compiled: numbers, strings, bytes, bools,
//! enums, durations and timestamps, each checked against a decoded value
//! with protovalidate's semantics and (close to) its messages.
//!
//! A check pushes one description per broken rule to `out`; the caller
//! adds the field path.

use std::fmt::{self, Display};

/// The rules of one scalar (or Duration/Timestamp) value.
pub(super) enum ValueRules {
    String(StringRules),
    Bytes(BytesRules),
    /// int32, int64, sint32, sint64, sfixed32, sfixed64.
    Int(NumRules<i64>),
    /// uint32, uint64, fixed32, fixed64.
    UInt(NumRules<u64>),
    /// float and double (float values widened, as are its rules).
    Float(NumRules<f64>, /* finite */ bool),
    Bool(Option<bool>),
    Enum(EnumRules),
    Duration(NumRules<Nanos>),
    Timestamp(TimestampRules),
}

/// An upper or lower bound, exclusive (`lt`, `gt`) or not (`lte`, `gte`).
#[derive(Clone, Copy)]
pub(super) enum Bound<T> {
    Exclusive(T),
    Inclusive(T),
}

impl<T: Copy> Bound<T> {
    fn value(&self) -> T {
        match self {
            Bound::Exclusive(v) | Bound::Inclusive(v) => *v,
        }
    }
}

/// `const`, the range (`lt`/`lte`, `gt`/`gte`), `in`, `not_in`.
pub(super) struct NumRules<T> {
    pub konst: Option<T>,
    pub upper: Option<Bound<T>>,
    pub lower: Option<Bound<T>>,
    pub in_: Vec<T>,
    pub not_in: Vec<T>,
}

impl<T> Default for NumRules<T> {
    fn default() -> Self {
        NumRules {
            konst: None,
            upper: None,
            lower: None,
            in_: Vec::new(),
            not_in: Vec::new(),
        }
    }
}

impl<T: Copy + PartialOrd + Display> NumRules<T> {
    pub fn check(&self, v: T, out: &mut dyn FnMut(String)) {
        if let Some(c) = self.konst {
            if v != c {
                out(format!("value must equal {c}"));
            }
        }
        self.check_range(v, out);
        if !self.in_.is_empty() && !self.in_.contains(&v) {
            out(format!("value must be in list {}", list(&self.in_)));
        }
        if self.not_in.contains(&v) {
            out(format!("value must not be in list {}", list(&self.not_in)));
        }
    }

    /// protovalidate's ranges: with both bounds, `lt` above `gt` is the
    /// range between them, `lt` at or below `gt` the values outside it
    /// (`gt: 10, lt: 5`: above 10 or below 5). NaN is in no range.
    fn check_range(&self, v: T, out: &mut dyn FnMut(String)) {
        let upper_ok = |b: &Bound<T>| match b {
            Bound::Exclusive(x) => v < *x,
            Bound::Inclusive(x) => v <= *x,
        };
        let lower_ok = |b: &Bound<T>| match b {
            Bound::Exclusive(x) => v > *x,
            Bound::Inclusive(x) => v >= *x,
        };
        let upper_text = |b: &Bound<T>| match b {
            Bound::Exclusive(x) => format!("less than {x}"),
            Bound::Inclusive(x) => format!("less than or equal to {x}"),
        };
        let lower_text = |b: &Bound<T>| match b {
            Bound::Exclusive(x) => format!("greater than {x}"),
            Bound::Inclusive(x) => format!("greater than or equal to {x}"),
        };
        match (&self.lower, &self.upper) {
            (None, None) => {}
            (Some(l), None) => {
                if !lower_ok(l) {
                    out(format!("value must be {}", lower_text(l)));
                }
            }
            (None, Some(u)) => {
                if !upper_ok(u) {
                    out(format!("value must be {}", upper_text(u)));
                }
            }
            (Some(l), Some(u)) => {
                let between = u.value() > l.value()
                    || (u.value() == l.value() && matches!(u, Bound::Inclusive(_)));
                if between {
                    if !(lower_ok(l) && upper_ok(u)) {
                        out(format!(
                            "value must be {} and {}",
                            lower_text(l),
                            upper_text(u)
                        ));
                    }
                } else if !(lower_ok(l) || upper_ok(u)) {
                    out(format!(
                        "value must be {} or {}",
                        lower_text(l),
                        upper_text(u)
                    ));
                }
            }
        }
    }
}

/// `[a, b, c]`, for messages.
fn list<T: Display>(items: &[T]) -> String {
    let mut s = String::from("[");
    for (i, x) in items.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        s.push_str(&x.to_string());
    }
    s.push(']');
    s
}

/// A float rule's check, with `finite`.
pub(super) fn check_float(
    rules: &NumRules<f64>,
    finite: bool,
    v: f64,
    out: &mut dyn FnMut(String),
) {
    if finite && !v.is_finite() {
        out("value must be finite".to_owned());
    }
    rules.check(v, out);
}

/// The well-known string formats (`(buf.validate.field).string.email` and
/// its siblings).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Format {
    Email,
    Hostname,
    Ip,
    Ipv4,
    Ipv6,
    Uri,
    UriRef,
    Address,
    Uuid,
    Tuuid,
    Ulid,
    HostAndPort,
}

impl Format {
    pub fn by_name(name: &str) -> Option<Format> {
        Some(match name {
            "email" => Format::Email,
            "hostname" => Format::Hostname,
            "ip" => Format::Ip,
            "ipv4" => Format::Ipv4,
            "ipv6" => Format::Ipv6,
            "uri" => Format::Uri,
            "uri_ref" => Format::UriRef,
            "address" => Format::Address,
            "uuid" => Format::Uuid,
            "tuuid" => Format::Tuuid,
            "ulid" => Format::Ulid,
            "host_and_port" => Format::HostAndPort,
            _ => return None,
        })
    }

    fn check(self, s: &str) -> bool {
        match self {
            Format::Email => is_email(s),
            Format::Hostname => is_hostname(s),
            Format::Ip => s.parse::<std::net::IpAddr>().is_ok(),
            Format::Ipv4 => s.parse::<std::net::Ipv4Addr>().is_ok(),
            Format::Ipv6 => s.parse::<std::net::Ipv6Addr>().is_ok(),
            Format::Uri => is_uri(s, false),
            Format::UriRef => is_uri(s, true),
            Format::Address => is_hostname(s) || s.parse::<std::net::IpAddr>().is_ok(),
            Format::Uuid => is_uuid(s),
            Format::Tuuid => s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()),
            Format::Ulid => is_ulid(s),
            Format::HostAndPort => is_host_and_port(s),
        }
    }

    fn message(self) -> &'static str {
        match self {
            Format::Email => "value must be a valid email address",
            Format::Hostname => "value must be a valid hostname",
            Format::Ip => "value must be a valid IP address",
            Format::Ipv4 => "value must be a valid IPv4 address",
            Format::Ipv6 => "value must be a valid IPv6 address",
            Format::Uri => "value must be a valid URI",
            Format::UriRef => "value must be a valid URI Reference",
            Format::Address => "value must be a valid hostname, or ip address",
            Format::Uuid => "value must be a valid UUID",
            Format::Tuuid => "value must be a valid trimmed UUID",
            Format::Ulid => "value must be a valid ULID",
            Format::HostAndPort => {
                "value must be a valid host (hostname or IP address) and port pair"
            }
        }
    }
}

/// The string rules; lengths in characters (Unicode scalar values) or, for
/// the `*_bytes` rules, in UTF-8 bytes.
#[derive(Default)]
pub(super) struct StringRules {
    pub konst: Option<String>,
    pub len: Option<u64>,
    pub min_len: Option<u64>,
    pub max_len: Option<u64>,
    pub len_bytes: Option<u64>,
    pub min_bytes: Option<u64>,
    pub max_bytes: Option<u64>,
    pub pattern: Option<regex::Regex>,
    pub prefix: Option<String>,
    pub suffix: Option<String>,
    pub contains: Option<String>,
    pub not_contains: Option<String>,
    pub in_: Vec<String>,
    pub not_in: Vec<String>,
    pub format: Option<Format>,
}

impl StringRules {
    pub fn check(&self, s: &str, out: &mut dyn FnMut(String)) {
        if let Some(c) = &self.konst {
            if s != c {
                out(format!("value must equal `{c}`"));
            }
        }
        if self.len.is_some() || self.min_len.is_some() || self.max_len.is_some() {
            let n = s.chars().count() as u64;
            if let Some(l) = self.len {
                if n != l {
                    out(format!("value length must be {l} characters"));
                }
            }
            if let Some(l) = self.min_len {
                if n < l {
                    out(format!("value length must be at least {l} characters"));
                }
            }
            if let Some(l) = self.max_len {
                if n > l {
                    out(format!("value length must be at most {l} characters"));
                }
            }
        }
        let n = s.len() as u64;
        if let Some(l) = self.len_bytes {
            if n != l {
                out(format!("value length must be {l} bytes"));
            }
        }
        if let Some(l) = self.min_bytes {
            if n < l {
                out(format!("value length must be at least {l} bytes"));
            }
        }
        if let Some(l) = self.max_bytes {
            if n > l {
                out(format!("value length must be at most {l} bytes"));
            }
        }
        if let Some(p) = &self.pattern {
            if !p.is_match(s) {
                out(format!(
                    "value does not match regex pattern `{}`",
                    p.as_str()
                ));
            }
        }
        if let Some(p) = &self.prefix {
            if !s.starts_with(p.as_str()) {
                out(format!("value does not have prefix `{p}`"));
            }
        }
        if let Some(p) = &self.suffix {
            if !s.ends_with(p.as_str()) {
                out(format!("value does not have suffix `{p}`"));
            }
        }
        if let Some(p) = &self.contains {
            if !s.contains(p.as_str()) {
                out(format!("value does not contain substring `{p}`"));
            }
        }
        if let Some(p) = &self.not_contains {
            if s.contains(p.as_str()) {
                out(format!("value contains substring `{p}`"));
            }
        }
        if !self.in_.is_empty() && !self.in_.iter().any(|x| x == s) {
            out(format!("value must be in list {}", quoted(&self.in_)));
        }
        if self.not_in.iter().any(|x| x == s) {
            out(format!(
                "value must not be in list {}",
                quoted(&self.not_in)
            ));
        }
        if let Some(f) = self.format {
            // An empty string is no address of any kind.
            if s.is_empty() || !f.check(s) {
                out(f.message().to_owned());
            }
        }
    }
}

fn quoted(items: &[String]) -> String {
    let q: Vec<String> = items.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", q.join(", "))
}

/// The bytes rules; `pattern` matches the value read as UTF-8.
#[derive(Default)]
pub(super) struct BytesRules {
    pub konst: Option<Vec<u8>>,
    pub len: Option<u64>,
    pub min_len: Option<u64>,
    pub max_len: Option<u64>,
    pub pattern: Option<regex::Regex>,
    pub prefix: Option<Vec<u8>>,
    pub suffix: Option<Vec<u8>>,
    pub contains: Option<Vec<u8>>,
    pub in_: Vec<Vec<u8>>,
    pub not_in: Vec<Vec<u8>>,
    /// `ip`, `ipv4`, `ipv6`, `uuid`: a byte length.
    pub format: Option<(&'static str, &'static [usize])>,
}

impl BytesRules {
    pub fn check(&self, b: &[u8], out: &mut dyn FnMut(String)) {
        if let Some(c) = &self.konst {
            if b != c.as_slice() {
                out(format!("value must be {}", hex(c)));
            }
        }
        let n = b.len() as u64;
        if let Some(l) = self.len {
            if n != l {
                out(format!("value length must be {l} bytes"));
            }
        }
        if let Some(l) = self.min_len {
            if n < l {
                out(format!("value length must be at least {l} bytes"));
            }
        }
        if let Some(l) = self.max_len {
            if n > l {
                out(format!("value length must be at most {l} bytes"));
            }
        }
        if let Some(p) = &self.pattern {
            match std::str::from_utf8(b) {
                Ok(s) if p.is_match(s) => {}
                Ok(_) => out(format!("value must match regex pattern `{}`", p.as_str())),
                Err(_) => out("value must be valid UTF-8 to apply regexp".to_owned()),
            }
        }
        if let Some(p) = &self.prefix {
            if !b.starts_with(p) {
                out(format!("value does not have prefix {}", hex(p)));
            }
        }
        if let Some(p) = &self.suffix {
            if !b.ends_with(p) {
                out(format!("value does not have suffix {}", hex(p)));
            }
        }
        if let Some(p) = &self.contains {
            if !p.is_empty() && !b.windows(p.len()).any(|w| w == p.as_slice()) {
                out(format!("value does not contain {}", hex(p)));
            }
        }
        if !self.in_.is_empty() && !self.in_.iter().any(|x| x.as_slice() == b) {
            out("value must be in list".to_owned() + &hex_list(&self.in_));
        }
        if self.not_in.iter().any(|x| x.as_slice() == b) {
            out("value must not be in list".to_owned() + &hex_list(&self.not_in));
        }
        if let Some((what, lens)) = self.format {
            if !lens.contains(&b.len()) {
                out(format!("value must be a valid {what}"));
            }
        }
    }
}

fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(2 + b.len() * 2);
    s.push_str("0x");
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

fn hex_list(items: &[Vec<u8>]) -> String {
    let h: Vec<String> = items.iter().map(|b| hex(b)).collect();
    format!(" [{}]", h.join(", "))
}

/// The enum rules; `defined` holds the enum's numbers when `defined_only`.
#[derive(Default)]
pub(super) struct EnumRules {
    pub konst: Option<i32>,
    pub defined: Option<Vec<i32>>,
    pub in_: Vec<i32>,
    pub not_in: Vec<i32>,
}

impl EnumRules {
    pub fn check(&self, v: i32, out: &mut dyn FnMut(String)) {
        if let Some(c) = self.konst {
            if v != c {
                out(format!("value must equal {c}"));
            }
        }
        if let Some(defined) = &self.defined {
            if !defined.contains(&v) {
                out("value must be one of the defined enum values".to_owned());
            }
        }
        if !self.in_.is_empty() && !self.in_.contains(&v) {
            out(format!("value must be in list {}", list(&self.in_)));
        }
        if self.not_in.contains(&v) {
            out(format!("value must not be in list {}", list(&self.not_in)));
        }
    }
}

/// A Duration, or a Timestamp since the epoch, in nanoseconds.
#[derive(Clone, Copy, PartialEq, PartialOrd, Debug)]
pub(super) struct Nanos(pub i128);

impl Nanos {
    pub fn new(seconds: i64, nanos: i32) -> Nanos {
        Nanos(seconds as i128 * 1_000_000_000 + nanos as i128)
    }
}

/// As protobuf's JSON writes a Duration: `1.5s`.
impl Display for Nanos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let (s, n) = (abs / 1_000_000_000, abs % 1_000_000_000);
        if n == 0 {
            write!(f, "{sign}{s}s")
        } else {
            let frac = format!("{n:09}");
            write!(f, "{sign}{s}.{}s", frac.trim_end_matches('0'))
        }
    }
}

/// A Timestamp, written as RFC 3339 in messages.
#[derive(Clone, Copy, PartialEq, PartialOrd, Debug)]
pub(super) struct Instant(pub Nanos);

impl Display for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0 .0.div_euclid(1_000_000_000) as i64;
        let nanos = self.0 .0.rem_euclid(1_000_000_000) as u32;
        let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        let (y, m, d) = civil_from_days(days);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
            rem / 3600,
            rem / 60 % 60,
            rem % 60
        )?;
        if nanos != 0 {
            let frac = format!("{nanos:09}");
            write!(f, ".{}", frac.trim_end_matches('0'))?;
        }
        f.write_str("Z")
    }
}

/// Howard Hinnant's days-to-civil (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Timestamp rules: the fixed ones, and those relative to the time of the
/// request (`lt_now`, `gt_now`, `within`).
#[derive(Default)]
pub(super) struct TimestampRules {
    pub fixed: NumRules<Instant>,
    pub lt_now: bool,
    pub gt_now: bool,
    pub within: Option<Nanos>,
}

impl TimestampRules {
    pub fn check(&self, v: Nanos, now: Nanos, out: &mut dyn FnMut(String)) {
        self.fixed.check(Instant(v), out);
        if self.lt_now && v >= now {
            out("value must be less than now".to_owned());
        }
        if self.gt_now && v <= now {
            out("value must be greater than now".to_owned());
        }
        if let Some(w) = self.within {
            if (v.0 - now.0).abs() > w.0 {
                out(format!("value must be within {w} of now"));
            }
        }
    }
}

/// protovalidate's `isEmail`: the HTML5 form of an address (RFC 5322's
/// addr-spec without quoted local parts or comments).
pub(super) fn is_email(s: &str) -> bool {
    let Some((local, domain)) = s.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && local.len() <= 64
        && local
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+/=?^_`{|}~.-".contains(&b))
        && is_hostname_labels(domain)
}

/// protovalidate's `isHostname`: dot-separated labels of letters, digits
/// and inner hyphens, at most 63 bytes each and 253 in all, the last not
/// all digits; one trailing dot allowed.
pub(super) fn is_hostname(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    is_hostname_labels(s)
        && !s
            .rsplit('.')
            .next()
            .is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit()))
}

fn is_hostname_labels(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// `host:port`, the host a hostname, an IPv4 address or a bracketed IPv6
/// address, the port 0 to 65535.
fn is_host_and_port(s: &str) -> bool {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((h, p)) = rest.split_once("]:") else {
            return false;
        };
        if h.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        (None, p)
    } else {
        let Some((h, p)) = s.rsplit_once(':') else {
            return false;
        };
        (Some(h), p)
    };
    let port_ok = !port.is_empty()
        && port.len() <= 5
        && port.bytes().all(|b| b.is_ascii_digit())
        && port.parse::<u32>().is_ok_and(|p| p <= 65_535)
        && (port == "0" || !port.starts_with('0'));
    port_ok && host.is_none_or(|h| h.parse::<std::net::Ipv4Addr>().is_ok() || is_hostname(h))
}

/// `8-4-4-4-12` hex digits.
pub(super) fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// 26 characters of Crockford's base32, the first at most `7`.
fn is_ulid(s: &str) -> bool {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZabcdefghjkmnpqrstvwxyz";
    let b = s.as_bytes();
    b.len() == 26 && (b'0'..=b'7').contains(&b[0]) && b.iter().all(|c| ALPHABET.contains(c))
}

/// An RFC 3986 URI (`reference`: or a relative reference): a scheme (for a
/// URI), then only characters the grammar allows, percent signs followed
/// by two hex digits, and a port of digits in an authority.
pub(super) fn is_uri(s: &str, reference: bool) -> bool {
    let rest = match s.split_once(':') {
        Some((scheme, rest))
            if !scheme.is_empty()
                && scheme.as_bytes()[0].is_ascii_alphabetic()
                && scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
                && !scheme.contains(['/', '?', '#']) =>
        {
            rest
        }
        _ if reference => {
            // A relative reference's first segment holds no colon.
            let first = s.split(['/', '?', '#']).next().unwrap_or("");
            if first.contains(':') {
                return false;
            }
            s
        }
        _ => return false,
    };
    let b = rest.as_bytes();
    let mut i = 0;
    let mut hashes = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%' {
            if i + 2 >= b.len() {
                return false;
            }
            if !(b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit()) {
                return false;
            }
            i += 3;
            continue;
        }
        if c == b'#' {
            hashes += 1;
        }
        let allowed = c.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?#[]".contains(&c);
        if !allowed || hashes > 1 {
            return false;
        }
        i += 1;
    }
    // An authority's port is digits.
    if let Some(auth) = rest.strip_prefix("//") {
        let auth = auth.split(['/', '?', '#']).next().unwrap_or("");
        let host_port = auth.rsplit_once('@').map_or(auth, |(_, h)| h);
        if let Some(h) = host_port.strip_prefix('[') {
            match h.split_once(']') {
                Some((_, tail)) => {
                    if !(tail.is_empty()
                        || tail
                            .strip_prefix(':')
                            .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit())))
                    {
                        return false;
                    }
                }
                None => return false,
            }
        } else if let Some((host, port)) = host_port.rsplit_once(':') {
            if host.contains(['[', ']']) || !port.bytes().all(|b| b.is_ascii_digit()) {
                return false;
            }
        } else if host_port.contains(['[', ']']) {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(f: impl FnOnce(&mut dyn FnMut(String))) -> Vec<String> {
        let mut out = Vec::new();
        f(&mut |m| out.push(m));
        out
    }

    #[test]
    fn number_ranges_follow_protovalidate_including_the_exclusive_form() {
        let between = NumRules {
            lower: Some(Bound::Inclusive(1i64)),
            upper: Some(Bound::Exclusive(10)),
            ..Default::default()
        };
        assert!(run(|o| between.check(1, o)).is_empty());
        assert!(run(|o| between.check(9, o)).is_empty());
        assert_eq!(
            run(|o| between.check(10, o)),
            ["value must be greater than or equal to 1 and less than 10"]
        );
        // gt above lt: the values outside.
        let outside = NumRules {
            lower: Some(Bound::Exclusive(10i64)),
            upper: Some(Bound::Exclusive(5)),
            ..Default::default()
        };
        assert!(run(|o| outside.check(11, o)).is_empty());
        assert!(run(|o| outside.check(4, o)).is_empty());
        assert_eq!(
            run(|o| outside.check(7, o)),
            ["value must be greater than 10 or less than 5"]
        );
        let gt = NumRules {
            lower: Some(Bound::Exclusive(0u64)),
            ..Default::default()
        };
        assert_eq!(run(|o| gt.check(0, o)), ["value must be greater than 0"]);
        let lte = NumRules {
            upper: Some(Bound::Inclusive(2.5f64)),
            ..Default::default()
        };
        assert!(run(|o| lte.check(2.5, o)).is_empty());
        assert_eq!(run(|o| lte.check(f64::NAN, o)).len(), 1);
    }

    #[test]
    fn const_in_and_not_in_name_the_allowed_values() {
        let r = NumRules {
            konst: None,
            in_: vec![1i64, 2],
            not_in: vec![3],
            ..Default::default()
        };
        assert_eq!(run(|o| r.check(5, o)), ["value must be in list [1, 2]"]);
        let r = NumRules {
            konst: Some(4i64),
            not_in: vec![3],
            ..Default::default()
        };
        assert_eq!(
            run(|o| r.check(3, o)),
            ["value must equal 4", "value must not be in list [3]"]
        );
    }

    #[test]
    fn floats_can_be_required_finite() {
        let r = NumRules::default();
        assert_eq!(
            run(|o| check_float(&r, true, f64::INFINITY, o)),
            ["value must be finite"]
        );
        assert!(run(|o| check_float(&r, true, 1.0, o)).is_empty());
    }

    #[test]
    fn string_lengths_count_characters_and_bytes_apart() {
        let r = StringRules {
            min_len: Some(2),
            max_bytes: Some(3),
            ..Default::default()
        };
        // Two characters, four bytes.
        assert_eq!(
            run(|o| r.check("éé", o)),
            ["value length must be at most 3 bytes"]
        );
        assert_eq!(
            run(|o| r.check("a", o)),
            ["value length must be at least 2 characters"]
        );
    }

    #[test]
    fn string_content_rules_each_report() {
        let r = StringRules {
            konst: None,
            pattern: Some(regex::Regex::new("^[a-z]+$").unwrap()),
            prefix: Some("ab".into()),
            suffix: Some("yz".into()),
            contains: Some("mm".into()),
            not_contains: Some("bad".into()),
            in_: vec!["abmmyz".into()],
            not_in: vec!["abbadyz".into()],
            ..Default::default()
        };
        assert!(run(|o| r.check("abmmyz", o)).is_empty());
        assert_eq!(
            run(|o| r.check("Xbad", o)),
            [
                "value does not match regex pattern `^[a-z]+$`",
                "value does not have prefix `ab`",
                "value does not have suffix `yz`",
                "value does not contain substring `mm`",
                "value contains substring `bad`",
                "value must be in list [\"abmmyz\"]",
            ]
        );
    }

    #[test]
    fn well_known_string_formats() {
        let ok = |f: Format, s: &str| f.check(s);
        assert!(ok(Format::Email, "a.b+c@example.com"));
        assert!(!ok(Format::Email, "a@b@c"));
        assert!(!ok(Format::Email, "@example.com"));
        assert!(!ok(Format::Email, "a@-example.com"));
        assert!(ok(Format::Hostname, "api.example.com"));
        assert!(ok(Format::Hostname, "example.com."));
        assert!(!ok(Format::Hostname, "a..b"));
        assert!(!ok(Format::Hostname, "1.2.3.4"));
        assert!(!ok(Format::Hostname, "a_b.com"));
        assert!(ok(Format::Ip, "::1"));
        assert!(ok(Format::Ipv4, "10.0.0.1"));
        assert!(!ok(Format::Ipv4, "::1"));
        assert!(ok(Format::Ipv6, "fe80::1"));
        assert!(!ok(Format::Ipv6, "10.0.0.1"));
        assert!(ok(Format::Uri, "https://example.com:8443/a/b?c=d#e"));
        assert!(ok(Format::Uri, "urn:isbn:0451450523"));
        assert!(!ok(Format::Uri, "/relative/path"));
        assert!(!ok(Format::Uri, "https://exa mple.com"));
        assert!(!ok(Format::Uri, "https://example.com/%zz"));
        assert!(!ok(Format::Uri, "https://example.com:port/"));
        assert!(ok(Format::UriRef, "/relative/path?x=1"));
        assert!(!ok(Format::UriRef, "a:b:c d"));
        assert!(ok(Format::Address, "example.com"));
        assert!(ok(Format::Address, "127.0.0.1"));
        assert!(ok(Format::Uuid, "123e4567-e89b-12d3-a456-426614174000"));
        assert!(!ok(Format::Uuid, "123e4567e89b12d3a456426614174000"));
        assert!(ok(Format::Tuuid, "123e4567e89b12d3a456426614174000"));
        assert!(ok(Format::Ulid, "01ARZ3NDEKTSV4RRFFQ69G5FAV"));
        assert!(!ok(Format::Ulid, "81ARZ3NDEKTSV4RRFFQ69G5FAV"));
        assert!(ok(Format::HostAndPort, "example.com:443"));
        assert!(ok(Format::HostAndPort, "[::1]:80"));
        assert!(!ok(Format::HostAndPort, "example.com:70000"));
        let r = StringRules {
            format: Some(Format::Email),
            ..Default::default()
        };
        assert_eq!(
            run(|o| r.check("", o)),
            ["value must be a valid email address"]
        );
    }

    #[test]
    fn bytes_rules() {
        let r = BytesRules {
            konst: None,
            min_len: Some(2),
            prefix: Some(vec![0xca]),
            contains: Some(vec![0xfe]),
            in_: vec![],
            not_in: vec![vec![0xca, 0xfe]],
            format: None,
            ..Default::default()
        };
        assert!(run(|o| r.check(&[0xca, 0x00, 0xfe], o)).is_empty());
        assert_eq!(
            run(|o| r.check(&[0xca, 0xfe], o)),
            ["value must not be in list [0xcafe]"]
        );
        assert_eq!(
            run(|o| r.check(&[0x01], o)),
            [
                "value length must be at least 2 bytes",
                "value does not have prefix 0xca",
                "value does not contain 0xfe",
            ]
        );
        let ip = BytesRules {
            format: Some(("IP address", &[4, 16])),
            ..Default::default()
        };
        assert!(run(|o| ip.check(&[10, 0, 0, 1], o)).is_empty());
        assert_eq!(
            run(|o| ip.check(&[1, 2, 3], o)),
            ["value must be a valid IP address"]
        );
    }

    #[test]
    fn enums_defined_only_and_lists() {
        let r = EnumRules {
            defined: Some(vec![0, 1, 2]),
            not_in: vec![0],
            ..Default::default()
        };
        assert!(run(|o| r.check(1, o)).is_empty());
        assert_eq!(
            run(|o| r.check(7, o)),
            ["value must be one of the defined enum values"]
        );
        assert_eq!(run(|o| r.check(0, o)), ["value must not be in list [0]"]);
    }

    #[test]
    fn durations_and_timestamps_print_as_protobuf_json_does() {
        assert_eq!(Nanos::new(1, 500_000_000).to_string(), "1.5s");
        assert_eq!(Nanos::new(-3, 0).to_string(), "-3s");
        assert_eq!(
            Instant(Nanos::new(1_700_000_000, 0)).to_string(),
            "2023-11-14T22:13:20Z"
        );
        let r = TimestampRules {
            gt_now: true,
            within: Some(Nanos::new(60, 0)),
            ..Default::default()
        };
        let now = Nanos::new(1000, 0);
        assert!(run(|o| r.check(Nanos::new(1030, 0), now, o)).is_empty());
        assert_eq!(
            run(|o| r.check(Nanos::new(900, 0), now, o)),
            [
                "value must be greater than now",
                "value must be within 60s of now"
            ]
        );
    }
}
