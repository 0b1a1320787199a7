//! Bounds on one request and one connection: target length (414), header
//! count and size (431), declared body size (413, before a byte is read),
//! and the whole-request timeout (504). Connection-level bounds (count,
//! header-read and idle timeouts) are applied by `conn`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use http::{header, HeaderMap, Request, Response};
use tower::Service;

use super::layer::{Inner, OnResponse, Policed, RouteView};
use crate::error::Error;
use crate::telemetry::RequestContext;

/// Browsers and proxies commonly cap URLs near 8 KB; anything longer is a
/// mistake or an attack on parsers.
pub const DEFAULT_MAX_URL_BYTES: usize = 8192;
/// Browsers send 10-20 headers; 64 leaves room for proxies' additions.
/// Below 100, hyper's backstop (see `edge::conn`) stays at 100 and its
/// per-request header tables stay on the stack; at 100 or more hyper
/// allocates two tables of twice the limit on every request.
pub const DEFAULT_MAX_HEADERS: usize = 64;
/// 32 KiB of header names and values, as nginx's default
/// (4 buffers of 8k): room for big cookies and tokens, not for abuse.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 32 * 1024;
/// `limits.max_json_depth`'s default, the transcoder's (see there why).
pub use crate::transcode::request::DEFAULT_MAX_JSON_DEPTH;
/// Above the default backend deadline (15 s) with room for retries and a
/// slow upload, so only stuck requests hit it.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// A client has 10 s to send a request's headers (slowloris).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections with nothing moving for a minute are closed: about what
/// browsers keep idle connections for, and what cloud load balancers expect.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Enough for a busy replica; each connection costs a few KB plus buffers.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// hyper's and most servers' default.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 100;
/// A body read whole must arrive at 1 KiB/s or more: a phone on a poor
/// link manages far more, while a client sending a byte a second (slow
/// POST, the body's slowloris) would hold its connection for the whole
/// request timeout. Apache's mod_reqtimeout asks 500 bytes/s.
pub const DEFAULT_MIN_BODY_RATE: u64 = 1024;
/// Browsers send no multipart preamble; RFC 2046 allows one for a line
/// such as "This is a multi-part message in MIME format." 4 KiB is plenty
/// for that, and a body that shows no boundary by then uses another one.
pub const DEFAULT_MAX_MULTIPART_PREAMBLE_BYTES: usize = 4096;
/// A part's headers are a Content-Disposition (a file name of up to 255
/// bytes, maybe percent-encoded twice over in `filename*`) and a
/// Content-Type: 8 KiB, nginx's bound on one request header line.
pub const DEFAULT_MAX_MULTIPART_PART_HEADER_BYTES: usize = 8192;

/// `[limits]`, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_url_bytes: usize,
    pub max_headers: usize,
    pub max_header_bytes: usize,
    pub max_json_depth: usize,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_concurrent_streams: u32,
    pub max_multipart_preamble_bytes: usize,
    pub max_multipart_part_header_bytes: usize,
    /// Bytes/s; 0: no minimum.
    pub min_body_rate: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_url_bytes: DEFAULT_MAX_URL_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_json_depth: DEFAULT_MAX_JSON_DEPTH,
            max_body_bytes: crate::config::DEFAULT_MAX_BODY_BYTES,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            max_multipart_preamble_bytes: DEFAULT_MAX_MULTIPART_PREAMBLE_BYTES,
            max_multipart_part_header_bytes: DEFAULT_MAX_MULTIPART_PART_HEADER_BYTES,
            min_body_rate: DEFAULT_MIN_BODY_RATE,
        }
    }
}

/// The size of a request's head as the client sent it. The access layer
/// measures it before adding `x-request-id` and `traceparent`, so a client
/// is held to the limits it can see, not to headers the gateway added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientHead {
    pub headers: usize,
    /// Header names and values, without separators.
    pub bytes: usize,
}

impl ClientHead {
    pub fn measure(headers: &HeaderMap) -> ClientHead {
        ClientHead {
            headers: headers.len(),
            bytes: headers
                .iter()
                .map(|(k, v)| k.as_str().len() + v.len())
                .sum(),
        }
    }
}

impl Limits {
    pub fn multipart(&self) -> crate::transcode::multipart::Bounds {
        crate::transcode::multipart::Bounds {
            preamble: self.max_multipart_preamble_bytes,
            part_headers: self.max_multipart_part_header_bytes,
        }
    }

    /// The first limit the request's head breaks, as the answer to send.
    pub fn check_head<B>(&self, req: &Request<B>) -> Option<Error> {
        let target = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
        if target > self.max_url_bytes {
            return Some(Error::TargetTooLong(format!(
                "the request target is {target} bytes, over the limit of {} (limits.max_url_bytes)",
                self.max_url_bytes
            )));
        }
        let headers = req.headers();
        let client = req
            .extensions()
            .get::<RequestContext>()
            .map_or_else(|| ClientHead::measure(headers), |c| c.client_head);
        if client.headers > self.max_headers {
            return Some(Error::HeadTooLarge(format!(
                "the request has {} headers, over the limit of {} (limits.max_headers)",
                client.headers, self.max_headers
            )));
        }
        let bytes = client.bytes;
        if bytes > self.max_header_bytes {
            return Some(Error::HeadTooLarge(format!(
                "the request headers are {bytes} bytes, over the limit of {} (limits.max_header_bytes)",
                self.max_header_bytes
            )));
        }
        if let Some(problem) = framing_problem(req) {
            return Some(Error::BadRequest(problem));
        }
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > self.max_body_bytes as u64) {
            return Some(Error::body_too_large(self.max_body_bytes));
        }
        None
    }
}

/// What hyper's HTTP/1.1 parser lets through but RFC 9112 refuses: a
/// request without exactly one `Host` (section 3.2), and the chunked coding
/// applied more than once (section 6.1), which proxies in front may frame
/// differently from hyper (request smuggling).
fn framing_problem<B>(req: &Request<B>) -> Option<String> {
    let headers = req.headers();
    // HTTP/2 carries the authority in its own pseudo-header; HTTP/1.0 may
    // omit Host.
    if req.version() == http::Version::HTTP_11 {
        let hosts = headers.get_all(header::HOST).iter().count();
        if hosts != 1 {
            return Some(format!(
                "an HTTP/1.1 request must have exactly one Host header (RFC 9112, section 3.2); this one has {hosts}"
            ));
        }
    }
    let chunked = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .filter(|coding| coding.trim_ascii().eq_ignore_ascii_case(b"chunked"))
        .count();
    if chunked > 1 {
        return Some(
            "Transfer-Encoding names chunked more than once (RFC 9112, section 6.1)".to_owned(),
        );
    }
    None
}

/// The policy of the layer that refuses requests whose head breaks a limit.
#[derive(Debug, Clone, Copy, Default)]
pub struct HeadLimits;

impl<S, R> Service<Request<Body>> for Policed<S, HeadLimits, R>
where
    R: RouteView,
    S: Inner,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = OnResponse<S::Future, ()>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let refused = req.extensions().get::<R>().and_then(|view| {
            let ctx = view.context();
            ctx.edge.limits.check_head(&req).filter(|e| {
                // A client-streaming route reads its body message by
                // message, bounded per message, not as one buffer: a large
                // declared upload (curl -F) is what it is for.
                !matches!(e, Error::TooLarge(_)) || !ctx.streams_request
            })
        });
        match refused {
            Some(e) => {
                let mut resp = e.into_response();
                // The request's body was not read; keeping the connection
                // would mean reading (or misreading) it as the next request.
                resp.headers_mut()
                    .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
                OnResponse::answer(resp)
            }
            None => OnResponse::inner(self.inner.call(req), ()),
        }
    }
}

/// The policy of the layer that bounds the time from a request's arrival
/// to its answer's head (504, `limits.request_timeout`).
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestTimeout;

impl<S, R> Service<Request<Body>> for Policed<S, RequestTimeout, R>
where
    R: RouteView,
    S: Inner,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Timed<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let limit = req
            .extensions()
            .get::<R>()
            .map_or(DEFAULT_REQUEST_TIMEOUT, |view| {
                view.context().edge.limits.request_timeout
            });
        Timed {
            inner: tokio::time::timeout(limit, self.inner.call(req)),
            limit,
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner answer, or a 504 once `limit` passes. Dropping the inner
    /// future cancels the backend call with it.
    pub struct Timed<F> {
        #[pin]
        inner: tokio::time::Timeout<F>,
        limit: Duration,
    }
}

impl<F> Future for Timed<F>
where
    F: Future<Output = Result<Response<Body>, Infallible>>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match std::task::ready!(this.inner.poll(cx)) {
            Ok(r) => Poll::Ready(r),
            Err(_) => Poll::Ready(Ok(
                Error::RequestTimeout(this.limit.as_millis() as u64).into_response()
            )),
        }
    }
}
