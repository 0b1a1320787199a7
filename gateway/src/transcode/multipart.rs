//! `multipart/form-data` uploads (opt-in per route: a browser may send this
//! type cross-site without a CORS preflight). Each part fills the request
//! field of its name: `bytes` and `google.api.HttpBody` fields take the raw
//! part (an HttpBody also its content type), other fields parse the part's
//! text as a path or query value would be parsed (message fields as JSON).
//!
//! On a client-streaming method the upload is streamed instead: each chunk
//! of a file part goes out as one message with that field set, and text
//! parts go on the next message sent (or a final one).

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt as _;
use http::{header, HeaderMap};
use memchr::memmem::Finder;
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, Value};

use super::builder::Builder;
use super::{httpbody, request, shape};
use crate::error::Error;

pub fn is_multipart(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("multipart/form-data"))
}

fn bad(message: impl Into<String>) -> Error {
    Error::BadRequest(message.into())
}

fn multer_error(e: multer::Error) -> Error {
    match e {
        multer::Error::StreamReadFailed(e) if e.is::<Unframed>() => e
            .downcast::<Unframed>()
            .map_or_else(|e| bad(format!("malformed multipart body: {e}")), |u| u.0),
        multer::Error::StreamSizeExceeded { limit }
        | multer::Error::FieldSizeExceeded { limit, .. } => {
            Error::body_too_large(usize::try_from(limit).unwrap_or(usize::MAX))
        }
        other => bad(format!("malformed multipart body: {other}")),
    }
}

fn open(
    headers: &HeaderMap,
    body: axum::body::Body,
    limit: Option<u64>,
    bounds: Bounds,
) -> Result<multer::Multipart<'static>, Error> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let boundary = multer::parse_boundary(ct).map_err(|e| {
        bad(format!(
            "multipart/form-data without a usable boundary: {e}"
        ))
    })?;
    let mut size = multer::SizeLimit::new();
    if let Some(l) = limit {
        size = size.whole_stream(l);
    }
    let mut framing = Framing::new(&boundary, bounds);
    let data = body.into_data_stream().map(move |chunk| match chunk {
        Ok(c) => framing.feed(&c).map(|()| c).map_err(BodyError::Unframed),
        Err(e) => Err(BodyError::Read(e)),
    });
    Ok(multer::Multipart::with_constraints(
        data,
        boundary,
        multer::Constraints::new().size_limit(size),
    ))
}

/// How much multipart framing may take before the parts it frames:
/// `[limits]`'s `max_multipart_preamble_bytes` and
/// `max_multipart_part_header_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Bytes before the first boundary.
    pub preamble: usize,
    /// One part's header block, from its boundary line to the blank line.
    pub part_headers: usize,
}

/// A refusal made while the body streams in, carried through multer as a
/// read error and turned back into its answer by `multer_error`.
#[derive(Debug)]
struct Unframed(Error);

impl std::fmt::Display for Unframed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for Unframed {}

#[derive(Debug)]
enum BodyError {
    Read(axum::Error),
    Unframed(Unframed),
}

impl From<BodyError> for Box<dyn std::error::Error + Send + Sync> {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::Read(e) => Box::new(e),
            BodyError::Unframed(u) => Box::new(u),
        }
    }
}

/// Where the body is in its framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Before the first `--boundary`.
    Preamble,
    /// Just past a boundary: `--` next ends the body, anything else starts
    /// a part's headers. The count is the dashes seen.
    AfterBoundary(u8),
    /// A part's headers, up to the blank line.
    Headers,
    /// A part's content, up to `\r\n--boundary`.
    Content,
    /// Past the closing boundary: the rest is not read.
    Done,
}

/// Follows the framing of the bytes on their way into multer, which keeps
/// everything it has not yet matched: a body that never shows a boundary,
/// or a part header that never ends, would otherwise be buffered whole
/// (256 MiB of it, 256 MiB of memory). Part contents pass through, as
/// multer hands them out in chunks. The scan is memchr's, as multer's own.
struct Framing {
    stage: Stage,
    /// Bytes of the current preamble or header block so far.
    seen: usize,
    /// The last bytes of the stage's data, shorter than its pattern: a
    /// pattern may straddle two chunks.
    carry: Vec<u8>,
    scratch: Vec<u8>,
    first: Finder<'static>,
    next: Finder<'static>,
    blank_line: Finder<'static>,
    bounds: Bounds,
}

impl Framing {
    fn new(boundary: &str, bounds: Bounds) -> Framing {
        Framing {
            stage: Stage::Preamble,
            seen: 0,
            carry: Vec::new(),
            scratch: Vec::new(),
            first: Finder::new(format!("--{boundary}").as_bytes()).into_owned(),
            next: Finder::new(format!("\r\n--{boundary}").as_bytes()).into_owned(),
            blank_line: Finder::new(b"\r\n\r\n").into_owned(),
            bounds,
        }
    }

    /// Follows one chunk; Err as soon as a bound is passed.
    fn feed(&mut self, mut rest: &[u8]) -> Result<(), Unframed> {
        loop {
            let (finder, bound) = match self.stage {
                Stage::Done => return Ok(()),
                Stage::AfterBoundary(dashes) => {
                    let Some((&b, tail)) = rest.split_first() else {
                        return Ok(());
                    };
                    self.stage = match (b, dashes) {
                        (b'-', 1) => Stage::Done,
                        (b'-', _) => Stage::AfterBoundary(1),
                        _ => {
                            // This byte starts the header block.
                            self.seen = usize::from(dashes);
                            Stage::Headers
                        }
                    };
                    if b == b'-' {
                        rest = tail;
                    }
                    continue;
                }
                Stage::Preamble => (&self.first, Some(self.bounds.preamble)),
                Stage::Headers => (&self.blank_line, Some(self.bounds.part_headers)),
                Stage::Content => (&self.next, None),
            };
            let found = find(finder, &self.carry, &mut self.scratch, rest);
            let used = found.unwrap_or(rest.len());
            self.seen += used;
            if let Some(bound) = bound.filter(|&b| self.seen > b) {
                return Err(self.over(bound));
            }
            let Some(end) = found else {
                keep_tail(&mut self.carry, rest, finder.needle().len() - 1);
                return Ok(());
            };
            self.carry.clear();
            self.seen = 0;
            self.stage = match self.stage {
                Stage::Headers => Stage::Content,
                _ => Stage::AfterBoundary(0),
            };
            rest = &rest[end..];
        }
    }

    fn over(&self, bound: usize) -> Unframed {
        Unframed(if self.stage == Stage::Preamble {
            bad(format!(
                "the multipart body has more than {bound} bytes before its first boundary \
                 (limits.max_multipart_preamble_bytes); does the body use the boundary its \
                 Content-Type names?"
            ))
        } else {
            Error::TooLarge(format!(
                "a multipart part's headers are larger than {bound} bytes \
                 (limits.max_multipart_part_header_bytes)"
            ))
        })
    }
}

/// Where the first match of `finder` in `carry` + `rest` ends, as an offset
/// into `rest`. `carry` is shorter than the pattern, so a match that
/// begins there ends within `rest`'s first pattern-length bytes.
fn find(finder: &Finder<'_>, carry: &[u8], scratch: &mut Vec<u8>, rest: &[u8]) -> Option<usize> {
    let len = finder.needle().len();
    if !carry.is_empty() {
        scratch.clear();
        scratch.extend_from_slice(carry);
        scratch.extend_from_slice(&rest[..rest.len().min(len - 1)]);
        if let Some(at) = finder.find(scratch) {
            return Some(at + len - carry.len());
        }
    }
    finder.find(rest).map(|at| at + len)
}

/// Keeps the last `keep` bytes of `carry` + `rest` in `carry`.
fn keep_tail(carry: &mut Vec<u8>, rest: &[u8], keep: usize) {
    if rest.len() >= keep {
        carry.clear();
        carry.extend_from_slice(&rest[rest.len() - keep..]);
    } else {
        carry.extend_from_slice(rest);
        let extra = carry.len().saturating_sub(keep);
        carry.drain(..extra);
    }
}

/// The request field a part fills; None for a part to skip.
fn part_field(builder: &Builder, name: Option<&str>) -> Result<Option<FieldDescriptor>, Error> {
    let input = &builder.plan.input;
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        return Err(bad(
            "a multipart part has no name; name each part after a request field",
        ));
    };
    match input
        .get_field_by_name(name)
        .or_else(|| input.get_field_by_json_name(name))
    {
        Some(f) => Ok(Some(f)),
        None if builder.opts.reject_unknown => Err(bad(format!(
            "multipart part \"{name}\": {} has no such field",
            input.full_name()
        ))),
        None => Ok(None),
    }
}

/// Sets (or appends, for repeated fields) a file part's bytes.
fn set_upload(msg: &mut DynamicMessage, field: &FieldDescriptor, content_type: &str, data: Bytes) {
    let value = match field.kind() {
        Kind::Message(m) => Value::Message(httpbody::message(
            &m,
            if content_type.is_empty() {
                httpbody::DEFAULT_CONTENT_TYPE
            } else {
                content_type
            },
            data,
        )),
        _ => Value::Bytes(data),
    };
    if field.is_list() {
        if let Some(list) = msg.get_field_mut(field).as_list_mut() {
            list.push(value);
        }
    } else {
        msg.set_field(field, value);
    }
}

/// Sets a text part on its field.
fn set_text(
    msg: &mut DynamicMessage,
    field: &FieldDescriptor,
    data: &[u8],
    opts: super::DecodeOptions,
) -> Result<(), Error> {
    let name = field.name();
    let value = match field.kind() {
        Kind::Bytes => Value::Bytes(Bytes::copy_from_slice(data)),
        Kind::Message(m) if httpbody::is_http_body(&m) => Value::Message(httpbody::message(
            &m,
            "text/plain",
            Bytes::copy_from_slice(data),
        )),
        Kind::Message(m) if !request::is_scalar_like(&m) => {
            let de =
                prost_reflect::DeserializeOptions::new().deny_unknown_fields(opts.reject_unknown);
            let mut json = serde_json::Deserializer::from_slice(data);
            let m = DynamicMessage::deserialize_with_options(m, &mut json, &de)
                .map_err(|e| bad(format!("multipart part \"{name}\": invalid JSON: {e}")))?;
            Value::Message(m)
        }
        _ => {
            let text = std::str::from_utf8(data)
                .map_err(|_| bad(format!("multipart part \"{name}\" is not UTF-8 text")))?;
            request::parse_value(field, text)
                .map_err(|e| bad(format!("multipart part \"{name}\": {e}")))?
        }
    };
    if field.is_map() {
        return Err(bad(format!(
            "multipart part \"{name}\": map fields cannot be set from a part"
        )));
    }
    if field.is_list() {
        if let Some(list) = msg.get_field_mut(field).as_list_mut() {
            list.push(value);
        }
    } else {
        msg.set_field(field, value);
    }
    Ok(())
}

fn part_type(field: &multer::Field<'_>) -> String {
    field
        .content_type()
        .map(|m| m.to_string())
        .unwrap_or_default()
}

/// A whole multipart body (up to `limit` bytes) as one request message.
pub async fn message(
    builder: &Builder,
    headers: &HeaderMap,
    body: axum::body::Body,
    limit: usize,
    bounds: Bounds,
) -> Result<DynamicMessage, Error> {
    let mut mp = open(headers, body, Some(limit as u64), bounds)?;
    let mut msg = DynamicMessage::new(builder.plan.input.clone());
    while let Some(field) = mp.next_field().await.map_err(multer_error)? {
        let Some(fd) = part_field(builder, field.name())? else {
            continue;
        };
        let ct = part_type(&field);
        let data = field.bytes().await.map_err(multer_error)?;
        if shape::is_upload_field(&fd) || (fd.is_list() && fd.kind() == Kind::Bytes) {
            set_upload(&mut msg, &fd, &ct, data);
        } else {
            set_text(&mut msg, &fd, &data, builder.opts)?;
        }
    }
    // Path variables win over the parts, as over a JSON body.
    builder
        .path_and_query(&mut msg)
        .map_err(|e| bad(e.message))?;
    Ok(msg)
}

/// A multipart body as a stream of messages for a client-streaming method.
pub struct PartStream {
    mp: multer::Multipart<'static>,
    builder: Builder,
    /// The file part being streamed: its field and content type.
    current: Option<(multer::Field<'static>, FieldDescriptor, String)>,
    /// Path and query fields, set on every message.
    base: DynamicMessage,
    /// Text parts waiting for the next message.
    pending: Option<DynamicMessage>,
    /// Text parts are read whole; this bounds each.
    text_limit: usize,
}

impl PartStream {
    pub fn new(
        builder: &Builder,
        headers: &HeaderMap,
        body: axum::body::Body,
        bounds: Bounds,
    ) -> Result<PartStream, Error> {
        let mut base = DynamicMessage::new(builder.plan.input.clone());
        builder
            .path_and_query(&mut base)
            .map_err(|e| bad(e.message))?;
        Ok(PartStream {
            mp: open(headers, body, None, bounds)?,
            builder: builder.clone(),
            current: None,
            base,
            pending: None,
            text_limit: super::builder::RAW_CHUNK_BYTES,
        })
    }

    pub async fn next_message(&mut self) -> Result<Option<DynamicMessage>, Error> {
        loop {
            if let Some((field, fd, ct)) = &mut self.current {
                match field.chunk().await.map_err(multer_error)? {
                    Some(chunk) if chunk.is_empty() => continue,
                    Some(chunk) => {
                        let mut msg = self.pending.take().unwrap_or_else(|| self.base.clone());
                        set_upload(&mut msg, fd, ct, chunk);
                        return Ok(Some(msg));
                    }
                    None => {
                        self.current = None;
                        continue;
                    }
                }
            }
            let Some(mut field) = self.mp.next_field().await.map_err(multer_error)? else {
                return Ok(self.pending.take());
            };
            let Some(fd) = part_field(&self.builder, field.name())? else {
                continue;
            };
            if shape::is_upload_field(&fd) {
                let ct = part_type(&field);
                self.current = Some((field, fd, ct));
                continue;
            }
            let mut text = BytesMut::new();
            while let Some(chunk) = field.chunk().await.map_err(multer_error)? {
                text.extend_from_slice(&chunk);
                if text.len() > self.text_limit {
                    return Err(Error::TooLarge(format!(
                        "multipart part \"{}\" is larger than {} bytes; only file parts (bytes or HttpBody fields) are streamed",
                        fd.name(),
                        self.text_limit
                    )));
                }
            }
            let msg = self.pending.get_or_insert_with(|| self.base.clone());
            set_text(msg, &fd, &text, self.builder.opts)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: Bounds = Bounds {
        preamble: 64,
        part_headers: 128,
    };

    const BODY: &[u8] =
        b"preamble line\r\n--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n\
        one\r\n--XyZ-not-a-boundary\r\n--XyZ\r\nContent-Disposition: form-data; name=\"b\"\r\n\
        Content-Type: text/plain\r\n\r\ntwo\r\n--XyZ--\r\nepilogue of any length";

    fn feed_in(size: usize, body: &[u8]) -> (Result<(), Unframed>, Stage) {
        let mut f = Framing::new("XyZ", BOUNDS);
        for chunk in body.chunks(size) {
            if let Err(e) = f.feed(chunk) {
                return (Err(e), f.stage);
            }
        }
        (Ok(()), f.stage)
    }

    #[test]
    fn a_well_framed_body_passes_in_chunks_of_any_size() {
        for size in 1..=BODY.len() {
            let (r, stage) = feed_in(size, BODY);
            assert!(r.is_ok(), "chunks of {size}: {:?}", r.err());
            assert_eq!(stage, Stage::Done, "chunks of {size}");
        }
    }

    #[test]
    fn part_content_of_any_length_passes() {
        let mut body = b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n".to_vec();
        body.extend(std::iter::repeat_n(b'x', 100_000));
        body.extend_from_slice(b"\r\n--XyZ--\r\n");
        for size in [1, 7, 4096, body.len()] {
            assert_eq!(feed_in(size, &body).1, Stage::Done);
        }
    }

    #[test]
    fn a_long_preamble_is_refused_once_past_the_bound() {
        let body = vec![b'x'; 1000];
        for size in [1, 10, 1000] {
            let (r, stage) = feed_in(size, &body);
            let e = r.expect_err("a 1000-byte preamble passed").0;
            assert!(matches!(e, Error::BadRequest(_)), "{e:?}");
            assert!(e
                .to_string()
                .contains("more than 64 bytes before its first boundary"));
            assert_eq!(stage, Stage::Preamble);
        }
        // Exactly at the bound, boundary included, passes.
        let mut body = vec![b'x'; 64 - 5];
        body.extend_from_slice(b"--XyZ");
        assert!(feed_in(3, &body).0.is_ok());
    }

    #[test]
    fn an_endless_part_header_is_refused_once_past_the_bound() {
        let mut body = b"--XyZ\r\nX-Long: ".to_vec();
        body.extend(std::iter::repeat_n(b'a', 1000));
        for size in [1, 13, 1000] {
            let e = feed_in(size, &body).0.expect_err("passed").0;
            assert_eq!(e.http_status(), http::StatusCode::PAYLOAD_TOO_LARGE);
            assert!(e.to_string().contains("larger than 128 bytes"), "{e}");
        }
    }
}
