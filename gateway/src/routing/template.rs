//! `google.api.http` path templates (see `google/api/http.proto`):
//!
//! ```text
//! Template = "/" Segments [ Verb ] ;
//! Segments = Segment { "/" Segment } ;
//! Segment  = "*" | "**" | LITERAL | Variable ;
//! Variable = "{" FieldPath [ "=" Segments ] "}" ;
//! FieldPath = IDENT { "." IDENT } ;
//! Verb     = ":" LITERAL ;
//! ```
//!
//! Variables are flattened into the segment list and recorded as index
//! ranges, so the matcher deals with one uniform segment sequence and the
//! shape of a template (what decides route conflicts) is just its segments
//! plus its verb.

use std::fmt::{self, Write as _};
use std::str::FromStr;
use std::sync::Arc;

use super::escape::{self, EscapeError};

/// A parsed path template. Every compiled route keeps one, so its parts
/// are exact-size boxes rather than growable vectors, and the segments are
/// shared with the route table, which re-matches them to find variables
/// (issue 24: memory per route).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// All segments, with variables expanded in place.
    pub segments: Arc<[Segment]>,
    /// The custom verb after the final `:`, percent-decoded.
    pub verb: Option<Box<str>>,
    /// Variables in the order they appear in the template.
    pub variables: Box<[Variable]>,
}

/// One path segment of a template.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Segment {
    /// A literal, stored percent-decoded so it can be compared against
    /// decoded request segments regardless of how either side escaped it.
    Literal(Box<str>),
    /// `*`: exactly one non-empty segment.
    Single,
    /// `**`: zero or more non-empty segments.
    Multi,
}

/// A `{field.path=...}` binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    /// The field path, one element per `.`-separated identifier.
    pub field_path: Box<[Box<str>]>,
    /// First segment index (inclusive) in [`Template::segments`].
    pub start: usize,
    /// Last segment index (exclusive) in [`Template::segments`].
    pub end: usize,
}

impl Variable {
    /// The field path joined with `.`, as written in the template.
    pub fn name(&self) -> String {
        self.field_path.join(".")
    }
}

/// Why a template was rejected. `position` is a byte offset into the template
/// so configuration errors can point at the exact spot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at byte {position}: {message}")]
pub struct TemplateError {
    /// Byte offset of the problem in the template text.
    pub position: usize,
    /// What is wrong.
    pub message: String,
}

impl Template {
    /// Parses a template.
    ///
    /// Besides the grammar, this rejects what would make routing ambiguous or
    /// a binding meaningless: empty segments (except the bare root `/`), a
    /// field path bound twice, and two `**` in a row.
    pub fn parse(s: &str) -> Result<Template, TemplateError> {
        Parser {
            src: s,
            pos: 0,
            segments: Vec::new(),
            variables: Vec::new(),
            open_brace: None,
        }
        .template()
    }
}

impl FromStr for Template {
    type Err = TemplateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Template::parse(s)
    }
}

/// Characters a literal may contain unescaped. Everything else is printed as
/// a `%XX` escape by `Display`, which keeps the canonical form parseable.
fn is_literal_char(c: char) -> bool {
    !(matches!(c, '{' | '}' | '/' | '*' | '?' | '#' | ':' | '%')
        || c.is_whitespace()
        || c.is_control())
}

fn write_escaped(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    for c in text.chars() {
        if is_literal_char(c) {
            f.write_char(c)?;
        } else {
            let mut buf = [0; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                write!(f, "%{b:02X}")?;
            }
        }
    }
    Ok(())
}

fn write_segment(f: &mut fmt::Formatter<'_>, segment: &Segment) -> fmt::Result {
    match segment {
        Segment::Literal(text) => write_escaped(f, text),
        Segment::Single => f.write_char('*'),
        Segment::Multi => f.write_str("**"),
    }
}

/// Canonical form: `{x=*}` prints as `{x}` and literals are printed decoded
/// where that stays parseable, so equal templates print equally.
impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.segments.is_empty() {
            f.write_char('/')?;
        }
        let mut i = 0;
        while i < self.segments.len() {
            f.write_char('/')?;
            let var = self
                .variables
                .iter()
                .find(|v| v.start == i && v.end > i && v.end <= self.segments.len());
            match var {
                Some(var) => {
                    write!(f, "{{{}", var.name())?;
                    let body = &self.segments[var.start..var.end];
                    if body != [Segment::Single] {
                        f.write_char('=')?;
                        for (k, segment) in body.iter().enumerate() {
                            if k > 0 {
                                f.write_char('/')?;
                            }
                            write_segment(f, segment)?;
                        }
                    }
                    f.write_char('}')?;
                    i = var.end;
                }
                None => {
                    write_segment(f, &self.segments[i])?;
                    i += 1;
                }
            }
        }
        if let Some(verb) = &self.verb {
            f.write_char(':')?;
            write_escaped(f, verb)?;
        }
        Ok(())
    }
}

type Result<T, E = TemplateError> = std::result::Result<T, E>;

struct Parser<'s> {
    src: &'s str,
    pos: usize,
    segments: Vec<Segment>,
    variables: Vec<Variable>,
    /// Byte offset of the `{` of the variable being parsed, if any.
    open_brace: Option<usize>,
}

fn fail<T>(position: usize, message: impl Into<String>) -> Result<T> {
    Err(TemplateError {
        position,
        message: message.into(),
    })
}

impl<'s> Parser<'s> {
    fn peek(&self) -> Option<char> {
        self.src[self.pos..].chars().next()
    }

    fn template(mut self) -> Result<Template> {
        if !self.src.starts_with('/') {
            return fail(0, "expected '/' at start");
        }
        self.pos = 1;
        if self.src.len() == 1 {
            // The root path: one empty segment, which only an empty request
            // segment (the path "/") matches.
            return Ok(Template {
                segments: Arc::new([Segment::Literal(Box::default())]),
                verb: None,
                variables: Box::default(),
            });
        }
        self.segments()?;
        let verb = match self.peek() {
            Some(':') => Some(self.verb()?),
            _ => None,
        };
        match self.peek() {
            None => {}
            Some('}') => return fail(self.pos, "unmatched '}'"),
            Some(c) => return fail(self.pos, format!("unexpected character {c:?}")),
        }
        Ok(Template {
            segments: self.segments.into(),
            verb,
            variables: self.variables.into_boxed_slice(),
        })
    }

    fn segments(&mut self) -> Result<()> {
        loop {
            self.segment()?;
            if self.peek() != Some('/') {
                return Ok(());
            }
            self.pos += 1;
        }
    }

    fn segment(&mut self) -> Result<()> {
        match (self.peek(), self.open_brace) {
            (None, Some(brace)) => fail(brace, "unclosed '{'"),
            (None | Some('/' | ':'), _) | (Some('}'), Some(_)) => fail(self.pos, "empty segment"),
            (Some('}'), None) => fail(self.pos, "unmatched '}'"),
            (Some('{'), Some(_)) => fail(self.pos, "nested variable"),
            (Some('{'), None) => self.variable(),
            (Some('*'), _) => self.star(),
            (Some(_), _) => self.literal(),
        }
    }

    fn push(&mut self, segment: Segment, position: usize) -> Result<()> {
        // `**/**` can only ever split the same segments two ways; rejecting it
        // keeps matching unambiguous and the backtracking small.
        if segment == Segment::Multi && self.segments.last() == Some(&Segment::Multi) {
            return fail(position, "'**' cannot directly follow another '**'");
        }
        self.segments.push(segment);
        Ok(())
    }

    fn star(&mut self) -> Result<()> {
        let start = self.pos;
        let (segment, message) = if self.src[start..].starts_with("**") {
            (Segment::Multi, "'**' must be a whole segment")
        } else {
            (Segment::Single, "'*' must be a whole segment")
        };
        self.pos += if segment == Segment::Multi { 2 } else { 1 };
        match self.peek() {
            None | Some('/' | ':' | '}') => self.push(segment, start),
            Some(_) => fail(start, message),
        }
    }

    fn literal(&mut self) -> Result<()> {
        let start = self.pos;
        let text = self.scan("literal", &['/', ':', '}'])?;
        let decoded = decode_literal(text, start, "literal")?;
        self.push(Segment::Literal(decoded), start)
    }

    /// Consumes characters up to one of `stops` (or the end), rejecting
    /// characters that cannot appear unescaped in a literal.
    fn scan(&mut self, what: &str, stops: &[char]) -> Result<&'s str> {
        let start = self.pos;
        let rest = &self.src[start..];
        let len = rest.find(|c| stops.contains(&c)).unwrap_or(rest.len());
        let text = &rest[..len];
        if let Some((i, c)) = text
            .char_indices()
            .find(|&(_, c)| c != '%' && !is_literal_char(c))
        {
            return fail(start + i, format!("invalid character {c:?} in {what}"));
        }
        self.pos += len;
        Ok(text)
    }

    fn variable(&mut self) -> Result<()> {
        let brace = self.pos;
        self.pos += 1;
        self.open_brace = Some(brace);
        let field_path = self.field_path(brace)?;
        let start = self.segments.len();
        match self.peek() {
            Some('}') => self.push(Segment::Single, self.pos)?,
            Some('=') => {
                self.pos += 1;
                self.segments()?;
            }
            None => return fail(brace, "unclosed '{'"),
            Some(c) => return fail(self.pos, format!("invalid character {c:?} in field path")),
        }
        match self.peek() {
            Some('}') => self.pos += 1,
            None => return fail(brace, "unclosed '{'"),
            Some(':') => return fail(self.pos, "':' is not allowed inside a variable"),
            Some(c) => return fail(self.pos, format!("unexpected character {c:?} in variable")),
        }
        self.open_brace = None;
        let variable = Variable {
            field_path,
            start,
            end: self.segments.len(),
        };
        if self
            .variables
            .iter()
            .any(|v| v.field_path == variable.field_path)
        {
            return fail(brace, format!("duplicate variable {:?}", variable.name()));
        }
        self.variables.push(variable);
        match self.peek() {
            None | Some('/' | ':') => Ok(()),
            Some('}') => fail(self.pos, "unmatched '}'"),
            Some(c) => fail(
                self.pos,
                format!("expected '/' after variable, found {c:?}"),
            ),
        }
    }

    fn field_path(&mut self, brace: usize) -> Result<Box<[Box<str>]>> {
        let mut path = Vec::new();
        loop {
            let start = self.pos;
            let rest = &self.src[start..];
            let len = match rest.chars().next() {
                Some(c) if c.is_ascii_alphabetic() || c == '_' => rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len()),
                _ => 0,
            };
            if len == 0 {
                return match rest.chars().next() {
                    None => fail(brace, "unclosed '{'"),
                    Some('}' | '=') if path.is_empty() => fail(start, "empty field path"),
                    Some('}' | '=' | '.') => fail(start, "empty field name in field path"),
                    Some(c) => fail(start, format!("invalid character {c:?} in field path")),
                };
            }
            path.push(rest[..len].into());
            self.pos += len;
            if self.peek() != Some('.') {
                return Ok(path.into_boxed_slice());
            }
            self.pos += 1;
        }
    }

    fn verb(&mut self) -> Result<Box<str>> {
        let colon = self.pos;
        self.pos += 1;
        let start = self.pos;
        let text = self.scan("verb", &['/'])?;
        if self.peek() == Some('/') {
            return fail(
                self.pos,
                "'/' after the verb: the verb must end the template",
            );
        }
        if text.is_empty() {
            return fail(colon, "empty verb");
        }
        decode_literal(text, start, "verb")
    }
}

fn decode_literal(text: &str, start: usize, what: &str) -> Result<Box<str>> {
    match escape::decode_at(text, false, start) {
        Ok(decoded) => Ok(decoded.into()),
        Err(EscapeError::BadEscape { position, escape }) => {
            fail(position, format!("bad percent-escape {escape:?}"))
        }
        Err(EscapeError::InvalidUtf8) => {
            fail(start, format!("percent-decoded {what} is not valid UTF-8"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(s: &str) -> Segment {
        Segment::Literal(s.into())
    }

    fn var(path: &str, start: usize, end: usize) -> Variable {
        Variable {
            field_path: path.split('.').map(Box::from).collect(),
            start,
            end,
        }
    }

    /// (template, canonical form)
    const ACCEPTED: &[(&str, &str)] = &[
        ("/", "/"),
        ("/v1", "/v1"),
        ("/v1/shelves", "/v1/shelves"),
        ("/v1/*", "/v1/*"),
        ("/v1/**", "/v1/**"),
        ("/v1/*/**", "/v1/*/**"),
        ("/v1/{name}", "/v1/{name}"),
        ("/v1/{name=*}", "/v1/{name}"),
        ("/v1/{name=x}", "/v1/{name=x}"),
        ("/v1/{name=**}", "/v1/{name=**}"),
        (
            "/v1/{name=shelves/*}/books/{book}:publish",
            "/v1/{name=shelves/*}/books/{book}:publish",
        ),
        (
            "/v1/{name=shelves/*/books/*}",
            "/v1/{name=shelves/*/books/*}",
        ),
        ("/v1/{a.b.c}", "/v1/{a.b.c}"),
        ("/{_x1}/{Y_2.z}", "/{_x1}/{Y_2.z}"),
        ("/v1/**/meta", "/v1/**/meta"),
        ("/v1/{a=**}/x/{b=**}", "/v1/{a=**}/x/{b=**}"),
        ("/v1/**:get", "/v1/**:get"),
        ("/v1/x:batchGet", "/v1/x:batchGet"),
        ("/v1:x", "/v1:x"),
        ("/v1/a%41b", "/v1/aAb"),
        ("/v1/a%2Fb", "/v1/a%2Fb"),
        ("/v1/a%3ab", "/v1/a%3Ab"),
        ("/v1/caf%C3%A9", "/v1/café"),
        ("/v1/café", "/v1/café"),
        ("/v1/{x}:do%20it", "/v1/{x}:do%20it"),
        ("/v1/-_.~!$&'()+,;=@[]", "/v1/-_.~!$&'()+,;=@[]"),
    ];

    /// (template, byte offset, message)
    const REJECTED: &[(&str, usize, &str)] = &[
        ("", 0, "expected '/' at start"),
        ("v1/x", 0, "expected '/' at start"),
        ("/v1//x", 4, "empty segment"),
        ("/v1/", 4, "empty segment"),
        ("//", 1, "empty segment"),
        ("/:v", 1, "empty segment"),
        ("/v1/{x=}", 7, "empty segment"),
        ("/v1/{x=a//b}", 9, "empty segment"),
        ("/v1/{x", 4, "unclosed '{'"),
        ("/v1/{x=a/*", 4, "unclosed '{'"),
        ("/v1/{x=a/", 4, "unclosed '{'"),
        ("/v1/{", 4, "unclosed '{'"),
        ("/v1/}", 4, "unmatched '}'"),
        ("/v1/{a}}", 7, "unmatched '}'"),
        ("/v1/x}", 5, "unmatched '}'"),
        ("/v1/{a}b", 7, "expected '/' after variable, found 'b'"),
        ("/v1/{a={b}}", 7, "nested variable"),
        ("/v1/{a}/{a}", 8, "duplicate variable \"a\""),
        ("/v1/{a.b}/{a.b=**}", 10, "duplicate variable \"a.b\""),
        ("/v1/{}", 5, "empty field path"),
        ("/v1/{=*}", 5, "empty field path"),
        ("/v1/{a..b}", 7, "empty field name in field path"),
        ("/v1/{a.}", 7, "empty field name in field path"),
        ("/v1/{.a}", 5, "empty field name in field path"),
        ("/v1/{1a}", 5, "invalid character '1' in field path"),
        ("/v1/{a-b}", 6, "invalid character '-' in field path"),
        ("/v1/{a/b}", 6, "invalid character '/' in field path"),
        ("/v1/{x=a:b}", 8, "':' is not allowed inside a variable"),
        ("/v1/a?b", 5, "invalid character '?' in literal"),
        ("/v1/a#", 5, "invalid character '#' in literal"),
        ("/v1/a b", 5, "invalid character ' ' in literal"),
        ("/v1/a\tb", 5, "invalid character '\\t' in literal"),
        ("/v1/a{b}", 5, "invalid character '{' in literal"),
        ("/v1/a*", 5, "invalid character '*' in literal"),
        ("/v1/*a", 4, "'*' must be a whole segment"),
        ("/v1/**a", 4, "'**' must be a whole segment"),
        ("/v1/***", 4, "'**' must be a whole segment"),
        ("/**/**", 4, "'**' cannot directly follow another '**'"),
        ("/{a=**}/**", 8, "'**' cannot directly follow another '**'"),
        ("/v1/%zz", 4, "bad percent-escape \"%zz\""),
        ("/v1/ab%4", 6, "bad percent-escape \"%4\""),
        ("/v1/%", 4, "bad percent-escape \"%\""),
        ("/v1/%FF", 4, "percent-decoded literal is not valid UTF-8"),
        ("/v1/x:", 5, "empty verb"),
        (
            "/v1/x:a/b",
            7,
            "'/' after the verb: the verb must end the template",
        ),
        ("/v1/x:a:b", 7, "invalid character ':' in verb"),
        ("/v1/x:a?", 7, "invalid character '?' in verb"),
        ("/v1/x:%zz", 6, "bad percent-escape \"%zz\""),
        ("/v1/x:%C3", 6, "percent-decoded verb is not valid UTF-8"),
    ];

    #[test]
    fn accepts_every_grammar_production_and_prints_canonically() {
        for (input, canonical) in ACCEPTED {
            let template = Template::parse(input)
                .unwrap_or_else(|e| panic!("{input:?} should parse, got {e}"));
            assert_eq!(template.to_string(), *canonical, "display of {input:?}");
        }
    }

    #[test]
    fn display_round_trips_through_parse() {
        for (input, _) in ACCEPTED {
            let template = Template::parse(input).unwrap();
            let reparsed = Template::parse(&template.to_string()).unwrap();
            assert_eq!(reparsed, template, "round trip of {input:?}");
        }
    }

    #[test]
    fn rejects_with_position_and_specific_message() {
        for (input, position, message) in REJECTED {
            let err = Template::parse(input).expect_err(input);
            assert_eq!(
                (err.position, err.message.as_str()),
                (*position, *message),
                "error for {input:?}"
            );
        }
    }

    #[test]
    fn error_display_prefixes_byte_offset() {
        let err = Template::parse("/v1//x").unwrap_err();
        assert_eq!(err.to_string(), "at byte 4: empty segment");
    }

    #[test]
    fn flattens_variables_into_segment_ranges() {
        let t: Template = "/v1/{name=shelves/*}/books/{book}:publish".parse().unwrap();
        assert_eq!(
            *t.segments,
            vec![
                lit("v1"),
                lit("shelves"),
                Segment::Single,
                lit("books"),
                Segment::Single
            ]
        );
        assert_eq!(*t.variables, [var("name", 1, 3), var("book", 4, 5)]);
        assert_eq!(t.verb.as_deref(), Some("publish"));

        let t = Template::parse("/v1/{a.b.c}/{rest=**}").unwrap();
        assert_eq!(*t.segments, [lit("v1"), Segment::Single, Segment::Multi]);
        assert_eq!(*t.variables, [var("a.b.c", 1, 2), var("rest", 2, 3)]);
        assert_eq!(
            *t.variables[0].field_path,
            [Box::from("a"), "b".into(), "c".into()]
        );
        assert_eq!(t.variables[0].name(), "a.b.c");
    }

    #[test]
    fn root_is_a_single_empty_literal() {
        let t = Template::parse("/").unwrap();
        assert_eq!(*t.segments, [lit("")]);
        assert_eq!(t.verb, None);
    }

    #[test]
    fn literals_and_verbs_are_stored_decoded() {
        let t = Template::parse("/a%2Fb/c%41:x%20y").unwrap();
        assert_eq!(*t.segments, [lit("a/b"), lit("cA")]);
        assert_eq!(t.verb.as_deref(), Some("x y"));
    }
}
