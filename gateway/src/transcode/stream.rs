//! Streaming requests and replies, and raw and multipart bodies, between
//! HTTP and messages. The call itself is the pipeline's (and upstream's).
//!
//! - Request side ([`request`]): a client or bidirectional method's
//!   newline-delimited JSON body becomes a stream of messages, one per line;
//!   raw (HttpBody) and multipart bodies become messages of chunks, or one
//!   message for a method that takes one.
//! - Reply side ([`reply`]): each message of a streamed reply is written to
//!   the client as it arrives, framed as NDJSON, SSE or one JSON array
//!   ([`Framing`]), or as raw bytes for `google.api.HttpBody` replies.
//!
//! Nothing is buffered whole. The reply body ([`ReplyBody`]) pulls the next
//! message only when hyper polls it (with any others already received, in
//! one frame of at most [`FRAME_BYTES`]), i.e. when the client has taken the
//! previous bytes: a slow client slows the backend through HTTP/2 flow
//! control instead of growing memory. Dropping the body (the client went
//! away) drops the reply stream, and the backend sees the call cancelled.
//! Request bodies are likewise read only as fast as their messages are sent.

use std::borrow::Cow;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use futures_util::stream::BoxStream;
use http::request::Parts;
use http::{header, HeaderMap, HeaderValue, Response, Version};
use http_body::Frame;
use prost_reflect::{DescriptorPool, DynamicMessage, FieldDescriptor, SerializeOptions};
use tokio_stream::StreamExt as _;
use tonic::metadata::MetadataMap;

use super::builder::{content_type, Builder, RAW_CHUNK_BYTES};
use super::framing::Framing;
use super::{httpbody, multipart, shape, BodyRule, Plan, Settings, TranscodeError};
use crate::error::Error;

/// Whether the request is transcoded here rather than as one JSON message:
/// client or bidirectional streaming, raw HttpBody requests, and multipart
/// uploads.
pub fn takes_body(plan: &Plan, headers: &HeaderMap) -> bool {
    plan.streams_request()
        || plan.shaping.raw_request
        || (plan.shaping.multipart && multipart::is_multipart(headers))
}

/// A request [`request`] transcoded.
pub enum Streamed {
    /// One message (a raw or multipart body for a method that takes one).
    One(DynamicMessage),
    /// Messages, encoded, as the body arrives; an `Err` is the first failure
    /// on the gateway's side (a malformed line, a body that could not be
    /// read), after which the stream ends: the call must be reset, not ended.
    Many(BoxStream<'static, Result<Bytes, Error>>),
}

/// The request side of a route [`takes_body`] says is taken here.
pub async fn request(
    settings: &Settings,
    plan: &Arc<Plan>,
    vars: &[Cow<'_, str>],
    parts: &Parts,
    body: Body,
) -> Result<Streamed, Error> {
    let builder = Builder {
        plan: plan.clone(),
        vars: vars.iter().map(|v| v.to_string()).collect(),
        query: parts.uri.query().map(str::to_owned),
        opts: settings.decode,
    };
    let headers = &parts.headers;
    if plan.shaping.multipart && multipart::is_multipart(headers) {
        if plan.streams_request() {
            let stream = multipart::PartStream::new(&builder, headers, body, settings.multipart)?;
            Ok(Streamed::Many(request_stream(
                stream,
                |mut parts| async move { Ok(parts.next_message().await?.map(|m| (encoded(&m), parts))) },
            )))
        } else {
            let limit = settings.max_body_bytes;
            let msg =
                multipart::message(&builder, headers, body, limit, settings.multipart).await?;
            Ok(Streamed::One(msg))
        }
    } else if plan.shaping.raw_request {
        if plan.streams_request() {
            raw_stream(&builder, headers, body)
        } else {
            let limit = (settings.max_body_bytes, settings.min_body_rate);
            Ok(Streamed::One(
                raw_message(&builder, headers, body, limit).await?,
            ))
        }
    } else {
        lines(settings, builder, parts, body).await
    }
}

/// A streamed reply, as the backend began it.
pub struct StreamedReply {
    /// The backend's response headers.
    pub metadata: MetadataMap,
    /// A message already received (server streaming waits for the first
    /// before answering, so that a stream failing at once gets an ordinary
    /// error answer).
    pub first: Option<Bytes>,
    pub messages: BoxStream<'static, Result<Bytes, tonic::Status>>,
    /// When the whole stream must have ended (`stream_timeout`).
    pub deadline: Option<tokio::time::Instant>,
    /// Where the request side records why it failed, to be reported
    /// instead of the reset that failure causes.
    pub request_error: Option<RequestError>,
}

/// The HTTP answer that streams `reply` to the client, in the framing the
/// route and the client's `Accept` choose.
pub fn reply(
    settings: &Settings,
    plan: &Plan,
    request_headers: &HeaderMap,
    reply: StreamedReply,
) -> Result<Response<Body>, Error> {
    let output = if plan.shaping.raw_response {
        Output::Raw
    } else {
        Output::Framed(Framing::negotiate(plan.shaping.framing, request_headers))
    };
    let content_type = match (&output, &reply.first) {
        (Output::Framed(f), _) => HeaderValue::from_static(f.content_type()),
        (Output::Raw, Some(raw)) => match DynamicMessage::decode(plan.output.clone(), raw.as_ref())
        {
            Ok(m) => raw_content_type(&m, plan.response_body.as_ref()),
            Err(e) => return Err(internal(not_valid(&plan.output, e))),
        },
        // The first message is not here yet; a route answering raw bytes
        // from a bidirectional method names its type in a response header rule.
        (Output::Raw, None) => HeaderValue::from_static(httpbody::DEFAULT_CONTENT_TYPE),
    };
    let body = ReplyBody {
        stream: Some(reply.messages),
        first: reply.first,
        started: false,
        output,
        index: 0,
        render: Render::new(settings, plan),
        deadline: reply
            .deadline
            .map(|d| Box::pin(tokio::time::sleep_until(d))),
        request_error: reply.request_error,
        done: false,
    };
    Ok(stream_response(plan, &reply.metadata, content_type, body))
}

fn stream_response(
    plan: &Plan,
    md: &MetadataMap,
    content_type: HeaderValue,
    body: ReplyBody,
) -> Response<Body> {
    let mut resp = Response::new(Body::new(body));
    *resp.status_mut() = plan.shaping.success_status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, content_type);
    // Proxies must pass each message on as it comes.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    super::metadata::response_metadata(md, h);
    shape::apply_headers(&plan.shaping.response_headers, None, md, h);
    resp
}

fn raw_content_type(msg: &DynamicMessage, response_body: Option<&FieldDescriptor>) -> HeaderValue {
    httpbody::reply_body(msg, response_body)
        .filter(|b| !b.content_type.is_empty())
        .and_then(|b| HeaderValue::from_str(&b.content_type).ok())
        .unwrap_or(HeaderValue::from_static(httpbody::DEFAULT_CONTENT_TYPE))
}

/// How replies become body bytes.
enum Output {
    Framed(Framing),
    /// HttpBody replies: each message's `data`, as is.
    Raw,
}

/// What rendering a reply needs, owned so the body can outlive the handler.
struct Render {
    response_body: Option<FieldDescriptor>,
    opts: SerializeOptions,
    pool: DescriptorPool,
    output: prost_reflect::MessageDescriptor,
    /// The route's direct wire -> JSON plan, when it has one.
    plan: Option<Arc<super::wire_json::ReplyPlan>>,
}

impl Render {
    fn new(settings: &Settings, plan: &Plan) -> Render {
        Render {
            response_body: plan.response_body.clone(),
            opts: settings.encode.clone(),
            pool: settings.pool.clone(),
            output: plan.output.clone(),
            plan: plan.fast.reply.clone(),
        }
    }
}

/// A reply the backend sent that does not decode as the method's output.
fn not_valid(output: &prost_reflect::MessageDescriptor, e: prost::DecodeError) -> TranscodeError {
    TranscodeError::new(format!(
        "the backend's reply is not a valid {}: {e}",
        output.full_name()
    ))
}

/// The first request-side failure of a streaming call (a malformed line, a
/// body that could not be read), reported instead of the cancellation it causes.
pub type RequestError = Arc<Mutex<Option<Error>>>;

/// The streamed reply body; see the module doc for why it polls the reply stream directly.
struct ReplyBody {
    /// Replies as wire bytes: rendered straight to JSON by the route's
    /// reply plan, decoded only when the plan declines or for HttpBody.
    stream: Option<BoxStream<'static, Result<Bytes, tonic::Status>>>,
    /// A reply already received (server streaming waits for it before the headers).
    first: Option<Bytes>,
    started: bool,
    output: Output,
    index: u64,
    render: Render,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    request_error: Option<RequestError>,
    done: bool,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How many bytes of replies one body frame gathers: replies that have
/// already arrived when the body is polled go out together, one write for a
/// burst of small replies instead of one each (a reply that is not here yet
/// is never waited for). The bound keeps a frame to about one TLS record;
/// a larger reply still goes out whole.
const FRAME_BYTES: usize = 16 * 1024;

/// A frame's buffer starts with room for a burst of typical replies (a
/// few hundred bytes of JSON each), so gathering them seldom regrows it.
const FRAME_START_BYTES: usize = 4 * 1024;

impl ReplyBody {
    /// Appends one reply to `out`, in the framing: rendered straight from
    /// the wire into `out` where the route's reply plan takes it.
    fn write(&mut self, raw: &[u8], out: &mut Vec<u8>) -> Result<(), TranscodeError> {
        if out.capacity() < FRAME_START_BYTES {
            out.reserve(FRAME_START_BYTES.max(raw.len() + raw.len() / 2 + 32));
        }
        if let (Output::Framed(f), Some(plan)) = (&self.output, &self.render.plan) {
            let mark = out.len();
            f.item_start(self.index, out);
            if plan.write(raw, out).is_ok() {
                f.item_end(out);
                self.index += 1;
                return Ok(());
            }
            out.truncate(mark);
        }
        let msg = DynamicMessage::decode(self.render.output.clone(), raw)
            .map_err(|e| not_valid(&self.render.output, e))?;
        let msg = &msg;
        match &self.output {
            Output::Raw => {
                if let Some(b) = httpbody::reply_body(msg, self.render.response_body.as_ref()) {
                    out.extend_from_slice(&b.data);
                }
            }
            Output::Framed(f) => {
                let json = super::encode_reply(
                    msg,
                    self.render.response_body.as_ref(),
                    &self.render.opts,
                )?;
                f.item(&json, self.index, out);
            }
        }
        self.index += 1;
        Ok(())
    }

    /// Ends the body after a failure: an error frame where the framing has
    /// one, else an aborted body (the client sees a truncated answer).
    fn fail(
        &mut self,
        status: Error,
        mut out: Vec<u8>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.done = true;
        self.stream = None;
        let status = self
            .request_error
            .as_ref()
            .and_then(|e| e.lock().ok().and_then(|mut e| e.take()))
            .unwrap_or(status);
        tracing::debug!(grpc.code = ?status.code(), message = %status, "stream failed after its first reply");
        let framed = match &self.output {
            Output::Framed(f) => f.error(&status.to_json(), &mut out),
            Output::Raw => false,
        };
        if framed {
            Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))))
        } else {
            Poll::Ready(Some(Err(format!("stream failed: {status}").into())))
        }
    }
}

impl http_body::Body for ReplyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let mut out = Vec::new();
        if !this.started {
            this.started = true;
            if let Output::Framed(f) = &this.output {
                f.start(&mut out);
            }
        }
        if let Some(first) = this.first.take() {
            if let Err(e) = this.write(&first, &mut out) {
                return this.fail(internal(e), out);
            }
        }
        if let Some(d) = this.deadline.as_mut() {
            if std::future::Future::poll(d.as_mut(), cx).is_ready() {
                let s = Error::DeadlineExceeded(
                    "the stream did not end within its stream_timeout".to_owned(),
                );
                return this.fail(s, out);
            }
        }
        // The replies already here, up to FRAME_BYTES, in one frame.
        while out.len() < FRAME_BYTES {
            let next = match this.stream.as_mut() {
                Some(s) => s.as_mut().poll_next(cx),
                None => Poll::Ready(None),
            };
            match next {
                Poll::Pending if out.is_empty() => return Poll::Pending,
                Poll::Pending => break,
                Poll::Ready(Some(Ok(msg))) => {
                    if let Err(e) = this.write(&msg, &mut out) {
                        return this.fail(internal(e), out);
                    }
                }
                Poll::Ready(Some(Err(status))) => {
                    let s = Error::from_grpc(&status, &this.render.pool);
                    return this.fail(s, out);
                }
                Poll::Ready(None) => {
                    this.done = true;
                    this.stream = None;
                    if let Output::Framed(f) = &this.output {
                        f.end(&mut out);
                    }
                    if out.is_empty() {
                        return Poll::Ready(None);
                    }
                    break;
                }
            }
        }
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

fn internal(e: TranscodeError) -> Error {
    Error::Internal(e.message)
}

/// Where a request stream records why it failed, for the answer to report
/// instead of the reset the failure causes.
#[derive(Clone, Default)]
pub struct Abort {
    error: RequestError,
}

impl Abort {
    pub fn record(&self, status: Error) {
        if let Ok(mut e) = self.error.lock() {
            e.get_or_insert(status);
        }
    }

    /// The slot, for the reply body to report from.
    pub fn error(&self) -> RequestError {
        self.error.clone()
    }

    pub fn take(&self) -> Option<Error> {
        self.error.lock().ok().and_then(|mut e| e.take())
    }
}

/// A request stream: encoded messages from `next` as they come; its first
/// failure is its last item.
fn request_stream<St, F, Fut>(init: St, next: F) -> BoxStream<'static, Result<Bytes, Error>>
where
    St: Send + 'static,
    F: FnMut(St) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<Option<(Bytes, St)>, Error>> + Send + 'static,
{
    let messages = futures_util::stream::unfold(Some((init, next)), |state| async move {
        let (st, mut next) = state?;
        match next(st).await {
            Ok(Some((m, st))) => Some((Ok(m), Some((st, next)))),
            Ok(None) => None,
            Err(status) => Some((Err(status), None)),
        }
    });
    Box::pin(messages)
}

/// A request message, encoded for the backend.
fn encoded(message: &DynamicMessage) -> Bytes {
    Bytes::from(prost::Message::encode_to_vec(message))
}

/// Splits a body into lines without holding more than one line (at most
/// `limit` bytes) plus one read.
struct LineReader {
    body: axum::body::BodyDataStream,
    buf: BytesMut,
    line: usize,
    eof: bool,
    limit: usize,
}

impl LineReader {
    fn new(body: Body, limit: usize) -> LineReader {
        LineReader {
            body: body.into_data_stream(),
            buf: BytesMut::new(),
            line: 0,
            eof: false,
            limit,
        }
    }

    /// The next non-blank line and its 1-based number.
    async fn next_line(&mut self) -> Result<Option<(usize, Bytes)>, Error> {
        let mut scanned = 0;
        loop {
            if let Some(pos) = self.buf[scanned..].iter().position(|&b| b == b'\n') {
                let mut line = self.buf.split_to(scanned + pos + 1).freeze();
                scanned = 0;
                self.line += 1;
                line.truncate(line.len() - 1);
                if line.last() == Some(&b'\r') {
                    line.truncate(line.len() - 1);
                }
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Ok(Some((self.line, line)));
            }
            scanned = self.buf.len();
            if self.eof {
                if self.buf.iter().all(u8::is_ascii_whitespace) {
                    return Ok(None);
                }
                self.line += 1;
                let line = self.buf.split().freeze();
                return Ok(Some((self.line, line)));
            }
            if self.buf.len() > self.limit {
                return Err(Error::TooLarge(format!(
                    "line {} of the request body is larger than the limit of {} bytes",
                    self.line + 1,
                    self.limit
                )));
            }
            match self.body.next().await {
                Some(Ok(data)) => self.buf.extend_from_slice(&data),
                Some(Err(e)) => return Err(read_failed(e)),
                None => self.eof = true,
            }
        }
    }
}

fn read_failed(e: impl std::fmt::Display) -> Error {
    Error::BadRequest(format!("reading the request body failed: {e}"))
}

fn bad_line(line: usize, e: TranscodeError) -> Error {
    Error::BadRequest(format!("line {line} of the request body: {}", e.message))
}

/// Request bodies of streaming calls are NDJSON (one message per line);
/// plain JSON holds one message. Like the unary path, other types are
/// refused: a browser may send them cross-site without a CORS preflight.
fn check_ndjson(headers: &HeaderMap) -> Result<(), Error> {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let media = ct
        .to_str()
        .ok()
        .and_then(|s| s.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let ok = matches!(
        media.as_str(),
        "application/json"
            | "application/x-ndjson"
            | "application/ndjson"
            | "application/jsonl"
            | "application/jsonlines"
    ) || (media.starts_with("application/") && media.ends_with("+json"));
    if ok {
        Ok(())
    } else {
        Err(Error::UnsupportedMediaType(format!(
            "content type {:?} is not supported; send application/x-ndjson (one JSON message per line)",
            ct.to_str().unwrap_or("(not text)")
        )))
    }
}

/// Client or bidirectional streaming with an NDJSON body.
async fn lines(
    settings: &Settings,
    builder: Builder,
    parts: &Parts,
    body: Body,
) -> Result<Streamed, Error> {
    check_ndjson(&parts.headers)?;
    let limit = settings.max_body_bytes;
    let mut reader = LineReader::new(body, limit);
    if builder.plan.streams_reply() && parts.version < Version::HTTP_2 {
        // HTTP/1.1 clients send the whole request before they read the
        // answer; streaming replies back meanwhile could fill every buffer
        // between the client and a backend that answers each message, and
        // stall both. So the request is read first (up to the body limit),
        // and every line is checked before the call.
        let mut messages = Vec::new();
        let mut total = 0usize;
        while let Some((n, line)) = reader.next_line().await? {
            total += line.len();
            if total > limit {
                return Err(Error::TooLarge(format!(
                    "request body is larger than the limit of {limit} bytes; over HTTP/1.1 a bidirectional stream's request is read whole, so send it over HTTP/2 to stream it"
                )));
            }
            let message = builder.line(&line).map_err(|e| bad_line(n, e))?;
            messages.push(Ok(message));
        }
        return Ok(Streamed::Many(Box::pin(tokio_stream::iter(messages))));
    }
    Ok(Streamed::Many(request_stream(
        (reader, builder),
        |(mut reader, builder)| async move {
            match reader.next_line().await? {
                Some((n, line)) => match builder.line(&line) {
                    Ok(m) => Ok(Some((m, (reader, builder)))),
                    Err(e) => Err(bad_line(n, e)),
                },
                None => Ok(None),
            }
        },
    )))
}

/// A raw body read whole (up to the limit) into one HttpBody request.
async fn raw_message(
    builder: &Builder,
    headers: &HeaderMap,
    body: Body,
    (limit, min_rate): (usize, u64),
) -> Result<DynamicMessage, Error> {
    let data = super::read_limited(headers, body, limit, min_rate).await?;
    builder
        .raw_body_message(&content_type(headers), data)
        .map_err(|e| Error::BadRequest(e.message))
}

/// A raw body streamed to a client-streaming method, one HttpBody message
/// per chunk of at most [`RAW_CHUNK_BYTES`].
fn raw_stream(builder: &Builder, headers: &HeaderMap, body: Body) -> Result<Streamed, Error> {
    let ct = content_type(headers);
    // Path and query errors show before any byte is sent.
    let base = builder
        .raw_body_message(&ct, Bytes::new())
        .map_err(|e| Error::BadRequest(e.message))?;
    let target = match &builder.plan.body {
        BodyRule::Field(f) => Some(f.clone()),
        _ => None,
    };
    let state = (body.into_data_stream(), Bytes::new());
    Ok(Streamed::Many(request_stream(
        state,
        move |(mut data, mut pending)| {
            let base = base.clone();
            let target = target.clone();
            let ct = ct.clone();
            async move {
                while pending.is_empty() {
                    match data.next().await {
                        Some(Ok(chunk)) => pending = chunk,
                        Some(Err(e)) => return Err(read_failed(e)),
                        None => return Ok(None),
                    }
                }
                let chunk = pending.split_to(pending.len().min(RAW_CHUNK_BYTES));
                let msg = with_raw_chunk(base, target.as_ref(), &ct, chunk);
                Ok(Some((encoded(&msg), (data, pending))))
            }
        },
    )))
}

fn with_raw_chunk(
    mut base: DynamicMessage,
    target: Option<&FieldDescriptor>,
    content_type: &str,
    chunk: Bytes,
) -> DynamicMessage {
    match target {
        None => {
            base.set_field_by_name("data", prost_reflect::Value::Bytes(chunk));
            base
        }
        Some(f) => {
            let Some(body) = base.get_field_mut(f).as_message_mut() else {
                return base;
            };
            body.set_field_by_name("data", prost_reflect::Value::Bytes(chunk));
            if !content_type.is_empty() {
                body.set_field_by_name(
                    "content_type",
                    prost_reflect::Value::String(content_type.to_owned()),
                );
            }
            base
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt as _;
    use http_body_util::BodyExt as _;

    use super::*;

    /// `testing.v1.Everything` with `string_field` set, on the wire.
    fn item(text: &str) -> Bytes {
        let desc = crate::transcode::test_pool()
            .get_message_by_name("testing.v1.Everything")
            .unwrap();
        let mut m = DynamicMessage::new(desc);
        m.set_field_by_name("string_field", prost_reflect::Value::String(text.into()));
        Bytes::from(prost::Message::encode_to_vec(&m))
    }

    fn line(text: &str) -> String {
        format!("{{\"result\":{{\"stringField\":\"{text}\"}}}}\n")
    }

    /// The NDJSON body of a server-streaming answer whose first reply is
    /// `a`, the rest coming from `rest`.
    fn body(rest: BoxStream<'static, Result<Bytes, tonic::Status>>) -> Body {
        let plan = Plan::for_test("testing.v1.Streams.List", "", &[]);
        let streamed = StreamedReply {
            metadata: MetadataMap::new(),
            first: Some(item("a")),
            messages: rest,
            deadline: None,
            request_error: None,
        };
        let settings = Settings::for_test();
        reply(&settings, &plan, &HeaderMap::new(), streamed)
            .unwrap()
            .into_body()
    }

    /// The next frame's bytes if one is ready now; `None` at the end.
    fn next_now(body: &mut Body) -> Option<Option<Bytes>> {
        body.frame()
            .now_or_never()
            .map(|f| f.map(|f| f.unwrap().into_data().unwrap()))
    }

    #[test]
    fn replies_already_received_go_out_in_one_frame() {
        let rest = tokio_stream::iter([Ok(item("b")), Ok(item("c"))]);
        let mut body = body(Box::pin(rest));
        let frame = next_now(&mut body).unwrap().unwrap();
        assert_eq!(frame, [line("a"), line("b"), line("c")].concat());
        assert_eq!(next_now(&mut body), Some(None));
    }

    #[test]
    fn a_reply_not_yet_received_is_not_waited_for() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tx.send(Ok(item("b"))).unwrap();
        let rest = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
        let mut body = body(Box::pin(rest));
        let frame = next_now(&mut body).unwrap().unwrap();
        assert_eq!(frame, [line("a"), line("b")].concat());
        assert_eq!(next_now(&mut body), None, "nothing more has arrived");
        tx.send(Ok(item("c"))).unwrap();
        drop(tx);
        let frame = next_now(&mut body).unwrap().unwrap();
        assert_eq!(frame, line("c"));
        assert_eq!(next_now(&mut body), Some(None));
    }

    #[test]
    fn a_failure_amid_a_burst_follows_the_replies_before_it() {
        let rest = tokio_stream::iter([
            Ok(item("b")),
            Err(tonic::Status::not_found("gone")),
            Ok(item("never")),
        ]);
        let mut body = body(Box::pin(rest));
        let frame = next_now(&mut body).unwrap().unwrap();
        let text = String::from_utf8(frame.to_vec()).unwrap();
        let expected = [line("a"), line("b")].concat();
        assert!(text.starts_with(&expected), "{text}");
        let error = &text[expected.len()..];
        assert!(
            error.starts_with("{\"error\":{\"code\":5,\"message\":\"gone\"")
                && error.ends_with("}\n"),
            "{error}"
        );
        assert_eq!(next_now(&mut body), Some(None));
    }

    #[test]
    fn a_burst_is_cut_at_the_frame_bound() {
        let big = "x".repeat(FRAME_BYTES / 3);
        let rest = tokio_stream::iter((0..6).map(move |_| Ok(item(&big))));
        let mut body = body(Box::pin(rest));
        let mut frames = Vec::new();
        while let Some(frame) = next_now(&mut body).unwrap() {
            frames.push(frame);
        }
        // The first reply and three big ones pass the bound, then the rest.
        assert_eq!(
            frames.len(),
            2,
            "{:?}",
            frames.iter().map(Bytes::len).collect::<Vec<_>>()
        );
        assert!(frames[0].len() >= FRAME_BYTES);
        let lines: usize = frames
            .iter()
            .map(|f| f.iter().filter(|&&b| b == b'\n').count())
            .sum();
        assert_eq!(lines, 7);
    }
}
