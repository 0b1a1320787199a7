//! Streaming calls and raw bodies over HTTP.
//!
//! - Server streaming: each reply is written to the client as it arrives,
//!   framed as NDJSON, SSE or one JSON array ([`Framing`]), or as raw bytes
//!   for `google.api.HttpBody` replies.
//! - Client and bidirectional streaming: a newline-delimited JSON body is
//!   sent as a stream of messages, one per line; raw (HttpBody) and
//!   multipart bodies are streamed as chunks.
//!
//! Nothing is buffered whole. The reply body ([`ReplyBody`]) pulls the next
//! message from tonic's stream only when hyper polls it, i.e. when the client
//! has taken the previous bytes: a slow client slows the backend through
//! HTTP/2 flow control instead of growing memory. Dropping the body (the
//! client went away) drops the tonic stream, and the backend sees the call
//! cancelled (RST_STREAM CANCEL). Request bodies are likewise read only as
//! fast as tonic sends their messages on.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http::request::Parts;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode, Version};
use http_body::Frame;
use prost_reflect::{DescriptorPool, DynamicMessage, FieldDescriptor, SerializeOptions};
use tokio_stream::{Stream, StreamExt as _};
use tonic::metadata::MetadataMap;
use tonic::Code;

use super::framing::Framing;
use super::{httpbody, multipart, request, shape, BodyRule, RpcStatus, TranscodeError};
use crate::snapshot::{Route, Snapshot};
use crate::upstream::{
    Attempted, CallError, Outgoing, ReplyStream, RequestBody, StreamReply, StreamRequest,
};

/// Raw request bodies are sent on in messages of at most this size: large
/// enough that per-message overhead is noise, small enough that one message
/// never holds much of an upload.
pub const RAW_CHUNK_BYTES: usize = 64 * 1024;

/// What the streaming stage does with a request.
pub enum Intercepted<'a> {
    /// Answered here (a streaming call, a raw or multipart body): the
    /// answer, to be awaited.
    Answered(Pin<Box<dyn Future<Output = Response<Body>> + Send + 'a>>),
    /// An ordinary JSON request: the unary path goes on with the body and
    /// the request metadata.
    Pass(Body, MetadataMap),
}

/// Whether the request goes through [`intercept`] rather than the JSON
/// unary path: client or bidirectional streaming, raw HttpBody requests,
/// and multipart uploads.
fn takes_body(route: &Route, headers: &HeaderMap) -> bool {
    route.grpc_method.is_client_streaming()
        || route.shaping.raw_request
        || (route.shaping.multipart && multipart::is_multipart(headers))
}

/// The streaming stage of the request path, with the request metadata
/// (handed back when the request is not taken here).
///
/// The answer comes boxed, and only for the requests this stage takes:
/// awaited inline, its state machine (8 KiB: every streaming variant) made
/// the future of every request that large, and each move of it (into the
/// handler's box first) a copy of 8 KiB.
pub fn intercept<'a>(
    snap: &'a Arc<Snapshot>,
    route: &'a Arc<Route>,
    vars: &[Cow<'_, str>],
    parts: &'a Parts,
    body: Body,
    metadata: MetadataMap,
) -> Intercepted<'a> {
    if !takes_body(route, &parts.headers) {
        return Intercepted::Pass(body, metadata);
    }
    let builder = Builder {
        route: route.clone(),
        vars: vars.iter().map(|v| v.to_string()).collect(),
        query: parts.uri.query().map(str::to_owned),
        opts: snap.decode,
    };
    Intercepted::Answered(Box::pin(answer(
        snap, route, builder, parts, body, metadata,
    )))
}

/// A request [`intercept`] took, answered.
async fn answer(
    snap: &Arc<Snapshot>,
    route: &Arc<Route>,
    builder: Builder,
    parts: &Parts,
    body: Body,
    metadata: MetadataMap,
) -> Response<Body> {
    let builder = &builder;
    let method = &route.grpc_method;
    if route.shaping.multipart && multipart::is_multipart(&parts.headers) {
        if method.is_client_streaming() {
            multipart_stream(snap, route, builder, parts, body, metadata).await
        } else {
            let bounds = snap.edge.limits.multipart();
            match multipart::message(builder, &parts.headers, body, snap.max_body_bytes, bounds)
                .await
            {
                Ok(msg) => single_request(snap, route, msg, metadata, parts).await,
                Err(s) => error_response(s),
            }
        }
    } else if route.shaping.raw_request {
        if method.is_client_streaming() {
            raw_stream(snap, route, builder, parts, body, metadata).await
        } else {
            let limit = (snap.max_body_bytes, snap.edge.limits.min_body_rate);
            match raw_message(builder, &parts.headers, body, limit).await {
                Ok(msg) => single_request(snap, route, msg, metadata, parts).await,
                Err(s) => error_response(s),
            }
        }
    } else {
        lines_stream(snap, route, builder, parts, body, metadata).await
    }
}

/// A call whose request is one message built here: unary, or server streaming.
async fn single_request(
    snap: &Arc<Snapshot>,
    route: &Arc<Route>,
    message: DynamicMessage,
    metadata: MetadataMap,
    parts: &Parts,
) -> Response<Body> {
    if route.grpc_method.is_server_streaming() {
        return server_stream(snap, route, message, metadata, parts).await;
    }
    // The unary path's call: balancing, retries, breaker and deadline.
    let result = route
        .backend
        .call(crate::upstream::CallRequest {
            path: route.grpc_path.clone(),
            body: Bytes::from(prost::Message::encode_to_vec(&message)),
            metadata,
            timeout: crate::upstream::deadline::effective(route.timeout, &parts.headers),
            retry: crate::upstream::RouteRetry::for_route(&route.method, route.retry_on.as_deref()),
            headers: &parts.headers,
            client_ip: crate::upstream::client_ip(&parts.headers, &parts.extensions),
            metrics: &route.metrics,
        })
        .await;
    match result {
        Ok(reply) => {
            let (md, raw, _) = reply.into_parts();
            super::response::answer(snap, route, &md, &raw)
        }
        Err(crate::upstream::CallError::Refused { code, message }) => {
            error_response(RpcStatus::new(super::http_status(code), code, message))
        }
        Err(crate::upstream::CallError::Upstream { status, addr, .. }) => {
            backend_error(snap, route, &addr, &status)
        }
    }
}

// ---------------------------------------------------------------------------
// Server streaming
// ---------------------------------------------------------------------------

/// Calls a server-streaming method and streams its replies to the client.
///
/// Like grpc-gateway, the answer's headers wait for the first reply, so a
/// stream that fails before its first message gets an ordinary error answer
/// (its HTTP status and a google.rpc.Status body); a failure after that is
/// written in the framing (an `error` line or event).
pub async fn server_stream(
    snap: &Arc<Snapshot>,
    route: &Arc<Route>,
    message: DynamicMessage,
    metadata: MetadataMap,
    parts: &Parts,
) -> Response<Body> {
    let body = RequestBody::One(Bytes::from(prost::Message::encode_to_vec(&message)));
    let reply = match open(route, body, metadata, parts, route.timeout).await {
        Ok(r) => r,
        Err(e) => return call_error(snap, route, e),
    };
    // One deadline for the whole stream, first message included.
    let deadline = route
        .shaping
        .stream_timeout
        .map(|t| tokio::time::Instant::now() + t);
    let StreamReply {
        metadata: md,
        messages: mut stream,
        attempted,
    } = reply;
    let first = match deadline {
        Some(d) => match tokio::time::timeout_at(d, stream.message()).await {
            Ok(r) => r,
            Err(_) => return deadline_error(route),
        },
        None => stream.message().await,
    };
    let first = match first {
        Ok(m) => m,
        Err(status) => {
            let status = with_header_metadata(status, md);
            return backend_error(snap, route, &attempted.addr, &status);
        }
    };
    let output = if route.shaping.raw_response {
        Output::Raw
    } else {
        Output::Framed(Framing::negotiate(route.shaping.framing, &parts.headers))
    };
    let content_type = match (&output, &first) {
        (Output::Framed(f), _) => HeaderValue::from_static(f.content_type()),
        (Output::Raw, Some(raw)) => {
            match DynamicMessage::decode(route.output.clone(), raw.as_ref()) {
                Ok(m) => raw_content_type(&m, route.response_body.as_ref()),
                Err(e) => return error_response(internal(not_valid(&route.output, e))),
            }
        }
        (Output::Raw, None) => HeaderValue::from_static(httpbody::DEFAULT_CONTENT_TYPE),
    };
    let body = ReplyBody {
        stream: Some(stream),
        first,
        started: false,
        output,
        index: 0,
        render: Render::new(snap, route),
        deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
        request_error: None,
        done: false,
    };
    stream_response(route, &md, content_type, body, attempted)
}

fn stream_response(
    route: &Route,
    md: &MetadataMap,
    content_type: HeaderValue,
    body: ReplyBody,
    attempted: Attempted,
) -> Response<Body> {
    let mut resp = Response::new(Body::new(body));
    // Which endpoint answered, for the access log.
    resp.extensions_mut().insert(attempted);
    *resp.status_mut() = route.shaping.success_status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, content_type);
    // Proxies must pass each message on as it comes.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    super::metadata::response_metadata(md, h);
    shape::apply_headers(&route.shaping.response_headers, None, md, h);
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
    fn new(snap: &Snapshot, route: &Route) -> Render {
        Render {
            response_body: route.response_body.clone(),
            opts: snap.encode.clone(),
            pool: snap.pool.clone(),
            output: route.output.clone(),
            plan: route.fast.reply.clone(),
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
type RequestError = Arc<Mutex<Option<RpcStatus>>>;

/// The streamed reply body; see the module doc for why it polls the reply stream directly.
struct ReplyBody {
    /// Replies as wire bytes: rendered straight to JSON by the route's
    /// reply plan, decoded only when the plan declines or for HttpBody.
    stream: Option<ReplyStream>,
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

impl ReplyBody {
    fn write(&mut self, raw: &[u8], out: &mut BytesMut) -> Result<(), TranscodeError> {
        if let (Output::Framed(f), Some(plan)) = (&self.output, &self.render.plan) {
            let mut json = Vec::with_capacity(raw.len() * 2 + 16);
            if plan.write(raw, &mut json).is_ok() {
                f.item(&json, self.index, out);
                self.index += 1;
                return Ok(());
            }
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
        status: RpcStatus,
        mut out: BytesMut,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.done = true;
        self.stream = None;
        let status = self
            .request_error
            .as_ref()
            .and_then(|e| e.lock().ok().and_then(|mut e| e.take()))
            .unwrap_or(status);
        tracing::debug!(grpc.code = ?status.code, message = %status.message, "stream failed after its first reply");
        let framed = match &self.output {
            Output::Framed(f) => f.error(&status.to_json(), &mut out),
            Output::Raw => false,
        };
        if framed {
            Poll::Ready(Some(Ok(Frame::data(out.freeze()))))
        } else {
            Poll::Ready(Some(Err(
                format!("stream failed: {}", status.message).into()
            )))
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
        let mut out = BytesMut::new();
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
            return Poll::Ready(Some(Ok(Frame::data(out.freeze()))));
        }
        if let Some(d) = this.deadline.as_mut() {
            if std::future::Future::poll(d.as_mut(), cx).is_ready() {
                let s = RpcStatus::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    Code::DeadlineExceeded,
                    "the stream did not end within its stream_timeout",
                );
                return this.fail(s, out);
            }
        }
        let next = match this.stream.as_mut() {
            Some(s) => Pin::new(s).poll_next(cx),
            None => Poll::Ready(None),
        };
        match next {
            Poll::Pending if out.is_empty() => Poll::Pending,
            Poll::Pending => Poll::Ready(Some(Ok(Frame::data(out.freeze())))),
            Poll::Ready(Some(Ok(msg))) => match this.write(&msg, &mut out) {
                Ok(()) => Poll::Ready(Some(Ok(Frame::data(out.freeze())))),
                Err(e) => this.fail(internal(e), out),
            },
            Poll::Ready(Some(Err(status))) => {
                let s = RpcStatus::from_grpc(&status, &this.render.pool);
                this.fail(s, out)
            }
            Poll::Ready(None) => {
                this.done = true;
                this.stream = None;
                if let Output::Framed(f) = &this.output {
                    f.end(&mut out);
                }
                if out.is_empty() {
                    Poll::Ready(None)
                } else {
                    Poll::Ready(Some(Ok(Frame::data(out.freeze()))))
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

fn internal(e: TranscodeError) -> RpcStatus {
    RpcStatus::new(StatusCode::INTERNAL_SERVER_ERROR, Code::Internal, e.message)
}

// ---------------------------------------------------------------------------
// Client and bidirectional streaming
// ---------------------------------------------------------------------------

/// Builds request messages from pieces of the body plus the path and query.
#[derive(Clone)]
pub struct Builder {
    pub(crate) route: Arc<Route>,
    vars: Vec<String>,
    query: Option<String>,
    pub(crate) opts: super::DecodeOptions,
}

impl Builder {
    /// Path variables win over the body, as in grpc-gateway.
    pub(crate) fn path_and_query(&self, msg: &mut DynamicMessage) -> Result<(), TranscodeError> {
        for (fields, value) in self.route.path_fields.iter().zip(&self.vars) {
            request::set_path_field(msg, fields, value)?;
        }
        if let Some(q) = &self.query {
            request::apply_query(msg, q, &self.route.body, &self.route.bound, self.opts)?;
        }
        Ok(())
    }

    /// One NDJSON line.
    fn line_message(&self, json: &[u8]) -> Result<DynamicMessage, TranscodeError> {
        let mut msg = request::decode_body(&self.route.input, &self.route.body, json, self.opts)?;
        self.path_and_query(&mut msg)?;
        Ok(msg)
    }

    /// Raw bytes into the HttpBody request or body field.
    fn raw_body_message(
        &self,
        content_type: &str,
        data: Bytes,
    ) -> Result<DynamicMessage, TranscodeError> {
        let target = match &self.route.body {
            BodyRule::Field(f) => Some(f),
            _ => None,
        };
        let mut msg = httpbody::fill_request(&self.route.input, target, content_type, data);
        if target.is_some() {
            self.path_and_query(&mut msg)?;
        }
        Ok(msg)
    }
}

/// Where a request stream records why it failed, for the answer to report
/// instead of the reset the failure causes.
#[derive(Clone, Default)]
struct Abort {
    error: RequestError,
}

impl Abort {
    fn record(&self, status: RpcStatus) {
        if let Ok(mut e) = self.error.lock() {
            e.get_or_insert(status);
        }
    }

    fn take(&self) -> Option<RpcStatus> {
        self.error.lock().ok().and_then(|mut e| e.take())
    }
}

/// The request stream of a call: messages from `next` as they come; on its
/// first failure, the failure is recorded and the call reset (see [`Outgoing`]).
fn request_stream<St, F, Fut>(
    init: St,
    abort: Abort,
    next: F,
) -> futures_util::stream::BoxStream<'static, Outgoing>
where
    St: Send + 'static,
    F: FnMut(St) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<Option<(DynamicMessage, St)>, RpcStatus>>
        + Send
        + 'static,
{
    let messages = futures_util::stream::unfold(Some((init, next, abort)), |state| async move {
        let (st, mut next, abort) = state?;
        match next(st).await {
            Ok(Some((m, st))) => Some((encoded(&m), Some((st, next, abort)))),
            Ok(None) => None,
            Err(status) => {
                abort.record(status);
                Some((Outgoing::Abort, None))
            }
        }
    });
    Box::pin(messages)
}

/// A request message, encoded for the backend.
fn encoded(message: &DynamicMessage) -> Outgoing {
    Outgoing::Message(Bytes::from(prost::Message::encode_to_vec(message)))
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
    async fn next_line(&mut self) -> Result<Option<(usize, Bytes)>, RpcStatus> {
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
                return Err(RpcStatus::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    Code::InvalidArgument,
                    format!(
                        "line {} of the request body is larger than the limit of {} bytes",
                        self.line + 1,
                        self.limit
                    ),
                ));
            }
            match self.body.next().await {
                Some(Ok(data)) => self.buf.extend_from_slice(&data),
                Some(Err(e)) => return Err(read_failed(e)),
                None => self.eof = true,
            }
        }
    }
}

fn read_failed(e: impl std::fmt::Display) -> RpcStatus {
    RpcStatus::new(
        StatusCode::BAD_REQUEST,
        Code::InvalidArgument,
        format!("reading the request body failed: {e}"),
    )
}

fn bad_line(line: usize, e: TranscodeError) -> RpcStatus {
    RpcStatus::new(
        StatusCode::BAD_REQUEST,
        Code::InvalidArgument,
        format!("line {line} of the request body: {}", e.message),
    )
}

/// Request bodies of streaming calls are NDJSON (one message per line);
/// plain JSON holds one message. Like the unary path, other types are
/// refused: a browser may send them cross-site without a CORS preflight.
fn check_ndjson(headers: &HeaderMap) -> Result<(), RpcStatus> {
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
        Err(RpcStatus::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Code::InvalidArgument,
            format!(
                "content type {:?} is not supported; send application/x-ndjson (one JSON message per line)",
                ct.to_str().unwrap_or("(not text)")
            ),
        ))
    }
}

/// Client or bidirectional streaming with an NDJSON body.
async fn lines_stream(
    snap: &Arc<Snapshot>,
    route: &Arc<Route>,
    builder: &Builder,
    parts: &Parts,
    body: Body,
    metadata: MetadataMap,
) -> Response<Body> {
    if let Err(s) = check_ndjson(&parts.headers) {
        return error_response(s);
    }
    let builder = builder.clone();
    let mut reader = LineReader::new(body, snap.max_body_bytes);
    let bidi = route.grpc_method.is_server_streaming();
    if bidi && parts.version < Version::HTTP_2 {
        // HTTP/1.1 clients send the whole request before they read the
        // answer; streaming replies back meanwhile could fill every buffer
        // between the client and a backend that answers each message, and
        // stall both. So the request is read first (up to the body limit),
        // and every line is checked before the call.
        let mut messages = Vec::new();
        let mut total = 0usize;
        loop {
            match reader.next_line().await {
                Ok(Some((n, line))) => {
                    total += line.len();
                    if total > snap.max_body_bytes {
                        return error_response(RpcStatus::new(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            Code::InvalidArgument,
                            format!(
                                "request body is larger than the limit of {} bytes; over HTTP/1.1 a bidirectional stream's request is read whole, so send it over HTTP/2 to stream it",
                                snap.max_body_bytes
                            ),
                        ));
                    }
                    match builder.line_message(&line) {
                        Ok(m) => messages.push(m),
                        Err(e) => return error_response(bad_line(n, e)),
                    }
                }
                Ok(None) => break,
                Err(s) => return error_response(s),
            }
        }
        let messages = tokio_stream::iter(messages.iter().map(encoded).collect::<Vec<_>>());
        return call_streaming_with(snap, route, Box::pin(messages), None, metadata, parts).await;
    }

    let abort = Abort::default();
    let messages = request_stream(
        (reader, builder),
        abort.clone(),
        |(mut reader, builder)| async move {
            match reader.next_line().await? {
                Some((n, line)) => match builder.line_message(&line) {
                    Ok(m) => Ok(Some((m, (reader, builder)))),
                    Err(e) => Err(bad_line(n, e)),
                },
                None => Ok(None),
            }
        },
    );
    call_streaming_with(snap, route, messages, Some(abort), metadata, parts).await
}

/// Sends `messages` on a client or bidirectional call and answers with its reply.
async fn call_streaming_with(
    snap: &Arc<Snapshot>,
    route: &Arc<Route>,
    messages: futures_util::stream::BoxStream<'static, Outgoing>,
    abort: Option<Abort>,
    metadata: MetadataMap,
    parts: &Parts,
) -> Response<Body> {
    let request_failed = |abort: &Option<Abort>| abort.as_ref().and_then(Abort::take);
    let bidi = route.grpc_method.is_server_streaming();
    // A client-streaming backend answers (headers included) only once the
    // request has ended, so the wait for its answer is the stream's own
    // bound; a bidirectional one answers as it starts, within `timeout`.
    let wait = match (bidi, route.shaping.stream_timeout) {
        (true, _) => route.timeout,
        (false, Some(t)) => t,
        (false, None) => UNBOUNDED,
    };
    let reply = match open(
        route,
        RequestBody::Many(Some(messages)),
        metadata,
        parts,
        wait,
    )
    .await
    {
        Ok(r) => r,
        Err(e) => {
            return match request_failed(&abort) {
                Some(s) => error_response(s),
                None => call_error(snap, route, e),
            }
        }
    };
    let StreamReply {
        metadata: md,
        messages: mut stream,
        attempted,
    } = reply;

    if !bidi {
        // Client streaming: one reply, after the request ends.
        let read = async {
            let message = stream.message().await?;
            match stream.message().await? {
                None => Ok(message),
                Some(_) => Err(tonic::Status::internal(
                    "the backend sent more than one message in reply to a client-streaming call",
                )),
            }
        };
        let result = match route.shaping.stream_timeout {
            Some(t) => match tokio::time::timeout(t, read).await {
                Ok(r) => r,
                Err(_) => return deadline_error(route),
            },
            None => read.await,
        };
        return match result {
            Ok(Some(raw)) => {
                let mut md = md.into_headers();
                md.extend(stream.trailers().unwrap_or_default());
                let md = MetadataMap::from_headers(md);
                let mut resp = super::response::answer(snap, route, &md, &raw);
                resp.extensions_mut().insert(attempted);
                resp
            }
            Ok(None) => error_response(RpcStatus::new(
                StatusCode::BAD_GATEWAY,
                Code::Internal,
                "the backend answered OK without a reply message",
            )),
            Err(status) => match request_failed(&abort) {
                Some(s) => error_response(s),
                None => backend_error(
                    snap,
                    route,
                    &attempted.addr,
                    &with_header_metadata(status, md),
                ),
            },
        };
    }

    // Bidirectional: the answer starts as soon as the backend answers, and
    // replies stream back while the request is still being sent.
    let output = if route.shaping.raw_response {
        Output::Raw
    } else {
        Output::Framed(Framing::negotiate(route.shaping.framing, &parts.headers))
    };
    let content_type = match &output {
        Output::Framed(f) => HeaderValue::from_static(f.content_type()),
        // The first message is not here yet; a route answering raw bytes
        // from a bidirectional method names its type in a response header rule.
        Output::Raw => HeaderValue::from_static(httpbody::DEFAULT_CONTENT_TYPE),
    };
    let body = ReplyBody {
        stream: Some(stream),
        first: None,
        started: false,
        output,
        index: 0,
        render: Render::new(snap, route),
        deadline: route
            .shaping
            .stream_timeout
            .map(|t| Box::pin(tokio::time::sleep(t))),
        request_error: abort.map(|a| a.error),
        done: false,
    };
    stream_response(route, &md, content_type, body, attempted)
}

// ---------------------------------------------------------------------------
// Raw (HttpBody) and multipart bodies
// ---------------------------------------------------------------------------

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// A raw body read whole (up to the limit) into one HttpBody request.
async fn raw_message(
    builder: &Builder,
    headers: &HeaderMap,
    body: Body,
    (limit, min_rate): (usize, u64),
) -> Result<DynamicMessage, RpcStatus> {
    let data = super::read_limited(headers, body, limit, min_rate).await?;
    builder
        .raw_body_message(&content_type(headers), data)
        .map_err(|e| RpcStatus::new(StatusCode::BAD_REQUEST, Code::InvalidArgument, e.message))
}

/// A raw body streamed to a client-streaming method, one HttpBody message
/// per chunk of at most [`RAW_CHUNK_BYTES`].
async fn raw_stream(
    snap: &Arc<Snapshot>,
    route: &Arc<Route>,
    builder: &Builder,
    parts: &Parts,
    body: Body,
    metadata: MetadataMap,
) -> Response<Body> {
    let ct = content_type(&parts.headers);
    // Path and query errors show before any byte is sent.
    let base = match builder.raw_body_message(&ct, Bytes::new()) {
        Ok(m) => m,
        Err(e) => {
            return error_response(RpcStatus::new(
                StatusCode::BAD_REQUEST,
                Code::InvalidArgument,
                e.message,
            ))
        }
    };
    let target = match &route.body {
        BodyRule::Field(f) => Some(f.clone()),
        _ => None,
    };
    let abort = Abort::default();
    let state = (body.into_data_stream(), Bytes::new());
    let messages = request_stream(state, abort.clone(), move |(mut data, mut pending)| {
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
            Ok(Some((msg, (data, pending))))
        }
    });
    call_streaming_with(snap, route, messages, Some(abort), metadata, parts).await
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

/// A multipart upload streamed to a client-streaming method.
async fn multipart_stream(
    snap: &Arc<Snapshot>,
    route: &Arc<Route>,
    builder: &Builder,
    parts: &Parts,
    body: Body,
    metadata: MetadataMap,
) -> Response<Body> {
    let bounds = snap.edge.limits.multipart();
    let parts_stream = match multipart::PartStream::new(builder, &parts.headers, body, bounds) {
        Ok(p) => p,
        Err(s) => return error_response(s),
    };
    let abort = Abort::default();
    let messages = request_stream(parts_stream, abort.clone(), |mut parts| async move {
        Ok(parts.next_message().await?.map(|m| (m, parts)))
    });
    call_streaming_with(snap, route, messages, Some(abort), metadata, parts).await
}

// ---------------------------------------------------------------------------
// Upstream and errors
// ---------------------------------------------------------------------------

/// Opens a streaming call through the route's backend: the same balancer,
/// breaker, concurrency limit, outlier detection, health and metrics as a
/// unary call (see `upstream::Backend::stream`). `wait` bounds the wait for
/// the backend's answer to begin.
async fn open(
    route: &Route,
    body: RequestBody,
    metadata: MetadataMap,
    parts: &Parts,
    wait: Duration,
) -> Result<StreamReply, CallError> {
    route
        .backend
        .stream(StreamRequest {
            path: route.grpc_path.clone(),
            body,
            metadata,
            timeout: wait,
            stream_timeout: route.shaping.stream_timeout,
            retry: crate::upstream::RouteRetry::for_route(&route.method, route.retry_on.as_deref()),
            headers: &parts.headers,
            client_ip: crate::upstream::client_ip(&parts.headers, &parts.extensions),
            metrics: route.metrics.clone(),
        })
        .await
}

/// A call that failed before its answer began (unary or streaming): its
/// status, details and `Grpc-Metadata-*`; transport failures name the
/// backend and the instance.
pub(crate) fn call_error(snap: &Snapshot, route: &Route, e: CallError) -> Response<Body> {
    match e {
        CallError::Refused { code, message } => {
            tracing::debug!(
                route = %route.template,
                grpc.method = route.grpc_method.full_name(),
                grpc.code = ?code,
                error = %message,
                "backend call refused"
            );
            error_response(RpcStatus::new(super::http_status(code), code, message))
        }
        CallError::Upstream { status, addr, .. } => backend_error(snap, route, &addr, &status),
    }
}

/// No bound: how long a client-streaming call without a `stream_timeout`
/// may run (an upload takes as long as the client takes to send it).
const UNBOUNDED: Duration = Duration::from_secs(365 * 24 * 3600);

fn deadline_error(route: &Route) -> Response<Body> {
    error_response(RpcStatus::new(
        StatusCode::GATEWAY_TIMEOUT,
        Code::DeadlineExceeded,
        crate::upstream::deadline::exceeded_message(&route.backend.name, route.timeout),
    ))
}

pub(crate) fn error_response(s: RpcStatus) -> Response<Body> {
    s.into_response().map(Body::from)
}

/// A stream that failed before its first message, with the header metadata
/// the backend sent before failing, so the error answer carries it as a
/// success would. A transport failure (it has a source) is kept as it is:
/// its empty metadata is how [`backend_error`] knows to name the backend.
fn with_header_metadata(mut status: tonic::Status, headers: MetadataMap) -> tonic::Status {
    if std::error::Error::source(&status).is_none() {
        let mut headers = headers.into_headers();
        headers.remove(header::CONTENT_TYPE);
        status.metadata_mut().as_mut().extend(headers);
    }
    status
}

/// A backend's failure as the unary path renders it: status, details, and
/// `Grpc-Metadata-*`; transport failures name the backend.
fn backend_error(
    snap: &Snapshot,
    route: &Route,
    addr: &str,
    status: &tonic::Status,
) -> Response<Body> {
    tracing::debug!(
        route = %route.template,
        grpc.method = route.grpc_method.full_name(),
        upstream.addr = %addr,
        grpc.code = ?status.code(),
        "backend call failed"
    );
    let mut s = RpcStatus::from_grpc(status, &snap.pool);
    // A deadline's message names the backend already (one text for every
    // 504, see `upstream::deadline::exceeded_message`). Errors made on the
    // gateway's side (connect failure, reset) carry no backend metadata;
    // they name the backend and instance so the operator knows where to
    // look, with the useful part of a transport error ("Connection
    // refused"), which is in its source chain.
    if status.code() == Code::Unavailable && status.metadata().is_empty() {
        let mut msg = format!("backend \"{}\" ({addr}): {}", route.backend.name, s.message);
        let mut source = std::error::Error::source(status);
        while let Some(e) = source {
            let text = e.to_string();
            if !msg.contains(&text) {
                msg.push_str(": ");
                msg.push_str(&text);
            }
            source = e.source();
        }
        s.message = msg;
    }
    let mut resp = error_response(s);
    super::metadata::response_metadata(status.metadata(), resp.headers_mut());
    resp
}
