//! The outermost layer: request ids, trace context, the access log line and
//! the HTTP metrics, for every request whatever answers it.

use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{HeaderName, HeaderValue, Request, Response};
use tower::{Layer, Service};

use super::trace::TraceParent;
use super::RequestInfo;

/// The `tracing` target of access-log lines (the events below are
/// written with the same literal, which the macro needs).
pub const TARGET: &str = "access";

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACERESPONSE: HeaderName = HeaderName::from_static("traceresponse");

/// What the access layer knows about the request, for handlers that want it
/// (the request id goes to the backend as metadata).
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub request_id: HeaderValue,
    pub trace: TraceParent,
    /// The head as the client sent it, measured before this layer added
    /// `x-request-id` and `traceparent`: the header limits count this.
    pub client_head: crate::edge::limits::ClientHead,
    /// `telemetry.propagators`: which trace headers besides `traceparent`
    /// the gateway wrote, for the backend call.
    pub propagators: super::propagation::Propagators,
}

/// Requests being served right now, for the in-flight gauge.
static IN_FLIGHT: AtomicI64 = AtomicI64::new(0);

/// Requests being served right now (the shutdown log says how many it cuts).
pub fn in_flight() -> i64 {
    IN_FLIGHT.load(Ordering::Relaxed)
}

#[derive(Debug, Clone, Default)]
pub struct AccessLayer {
    pub log: bool,
    pub propagators: super::propagation::Propagators,
}

impl<S> Layer<S> for AccessLayer {
    type Service = Access<S>;
    fn layer(&self, inner: S) -> Access<S> {
        Access {
            inner,
            log: self.log,
            propagators: self.propagators,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Access<S> {
    inner: S,
    log: bool,
    propagators: super::propagation::Propagators,
}

/// A client's id is kept when it is short and plain (so it cannot inject
/// into logs or headers); otherwise the gateway makes its own.
fn well_formed(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':'))
}

fn new_request_id() -> HeaderValue {
    let mut buf = [0u8; 32];
    super::trace::hex_into_buf(&super::trace::random_u64().to_be_bytes(), &mut buf[..16]);
    super::trace::hex_into_buf(&super::trace::random_u64().to_be_bytes(), &mut buf[16..]);
    HeaderValue::from_bytes(&buf).expect("hex is a valid header value")
}

/// A logged value with what could forge or garble a log line escaped:
/// control characters (C0, DEL, C1) and Unicode line separators as `\n`,
/// `\r`, `\t` or `\u{..}`, and `\` itself, so the escaped text reads back
/// unambiguously. In the text format a value holding a space, `"`, `=` or an
/// escape is also quoted (logfmt's convention), so a token's `sub` cannot
/// add a `key=value` or a line of its own; JSON quotes values itself.
/// Written straight into the formatter: nothing is allocated, and a plain
/// value is one `write_str`.
struct LogValue<'a> {
    text: &'a str,
    quote: bool,
}

fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\\' | '\u{2028}' | '\u{2029}')
}

impl fmt::Display for LogValue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let special = |c: char| needs_escape(c) || (self.quote && matches!(c, ' ' | '"' | '='));
        if !self.text.chars().any(special) {
            return f.write_str(self.text);
        }
        if self.quote {
            f.write_char('"')?;
        }
        for c in self.text.chars() {
            match c {
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                '\\' => f.write_str("\\\\")?,
                '"' if self.quote => f.write_str("\\\"")?,
                c if needs_escape(c) => write!(f, "\\u{{{:x}}}", u32::from(c))?,
                c => f.write_char(c)?,
            }
        }
        if self.quote {
            f.write_char('"')?;
        }
        Ok(())
    }
}

struct InFlightGuard;
impl InFlightGuard {
    fn new() -> Self {
        let n = IN_FLIGHT.fetch_add(1, Ordering::Relaxed) + 1;
        in_flight_gauge().set(n as f64);
        InFlightGuard
    }
}
impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let n = IN_FLIGHT.fetch_sub(1, Ordering::Relaxed) - 1;
        in_flight_gauge().set(n as f64);
    }
}

/// The gauge's handle, looked up once rather than twice per request (see
/// `metrics::RouteMetrics`). Registered after the recorder: the app installs
/// it before serving.
fn in_flight_gauge() -> &'static metrics::Gauge {
    static GAUGE: std::sync::OnceLock<metrics::Gauge> = std::sync::OnceLock::new();
    GAUGE.get_or_init(|| {
        super::metrics::handle();
        metrics::gauge!(super::metrics::IN_FLIGHT)
    })
}

impl<S, B, RB> Service<Request<B>> for Access<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    RB: http_body::Body + Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response<RB>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let started = Instant::now();
        let guard = InFlightGuard::new();
        let client_head = crate::edge::limits::ClientHead::measure(req.headers());
        let request_id = match req.headers().get(&X_REQUEST_ID) {
            Some(v) if well_formed(v) => v.clone(),
            _ => new_request_id(),
        };
        req.headers_mut()
            .insert(X_REQUEST_ID.clone(), request_id.clone());
        // Continue the client's trace (or start one); the backend receives
        // the gateway's span as its parent (with export on, the span of the
        // upstream attempt: see `otel::Attempt`).
        let client_trace = req
            .headers()
            .get(&TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(TraceParent::parse)
            .or_else(|| self.propagators.extract(req.headers()));
        let (trace, otel) = match super::otel::start_request(
            client_trace,
            req.headers(),
            req.method(),
            req.uri().path(),
        ) {
            Some((trace, cx)) => (trace, Some(cx)),
            None => (
                client_trace
                    .map(|tp| tp.child())
                    .unwrap_or_else(|| TraceParent::new_root(false)),
                None,
            ),
        };
        // The same value answers as `traceresponse`: made once.
        let trace_value = HeaderValue::from_str(&trace.header_value()).ok();
        if let Some(v) = &trace_value {
            req.headers_mut().insert(TRACEPARENT.clone(), v.clone());
        }
        self.propagators.inject(req.headers_mut(), &trace);
        req.extensions_mut().insert(RequestContext {
            request_id: request_id.clone(),
            trace,
            client_head,
            propagators: self.propagators,
        });
        let method = req.method().clone();
        let bytes_in = req.body().size_hint().exact();
        let client = req
            .extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0);
        let log = self.log;
        // The path as the client sent it, for the log line (the route names
        // its template); a shared-buffer clone, made only when logging.
        let uri = log.then(|| req.uri().clone());
        // Take the service that was polled ready, leave a fresh clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            // The request span is the current context while the request
            // runs, so auth, transcoding and upstream spans find their parent.
            let result = match &otel {
                Some(cx) => {
                    use opentelemetry::context::FutureExt as _;
                    inner.call(req).with_context(cx.clone()).await
                }
                None => inner.call(req).await,
            };
            drop(guard);
            let mut resp = result?;
            resp.headers_mut()
                .insert(X_REQUEST_ID.clone(), request_id.clone());
            // W3C Trace Context level 2: tell the client which span was ours.
            if let Some(v) = trace_value {
                resp.headers_mut().insert(TRACERESPONSE.clone(), v);
            }
            let elapsed = started.elapsed();
            // Only this layer reads it: taken, not cloned.
            let info = resp
                .extensions_mut()
                .remove::<RequestInfo>()
                .unwrap_or_default();
            let status = resp.status().as_u16();
            let route: Arc<str> = info.route.clone().unwrap_or_else(|| Arc::from("(none)"));
            match &info.metrics {
                Some(m) => m.record_http(method.as_str(), status, elapsed),
                None => super::metrics::record_http(&route, method.as_str(), status, elapsed),
            }
            if info.drain_aborted {
                super::metrics::record_drain_aborted(&route);
            }
            if let Some(cx) = &otel {
                super::otel::end_request(cx, &method, &route, &info, status);
            }
            if log {
                let quote = !super::json_logs();
                let v = |text| LogValue { text, quote };
                tracing::info!(
                    target: "access",
                    request_id = %v(request_id.to_str().unwrap_or("")),
                    trace_id = %v(&trace.trace_id_hex()),
                    client.ip = %info.client.or(client.map(|c| c.ip())).map(|ip| ip.to_string()).unwrap_or_default(),
                    http.method = %v(method.as_str()),
                    url.path = %v(uri.as_ref().map_or("", |u| u.path())),
                    route = %v(&route),
                    http.status = status,
                    grpc.method = %v(info.grpc_method.as_deref().unwrap_or("")),
                    grpc.code = info.grpc_code.map(i64::from).unwrap_or(-1),
                    upstream.addr = %v(info.endpoint.as_deref().unwrap_or("")),
                    bytes_in = bytes_in.unwrap_or(0),
                    bytes_out = resp.body().size_hint().exact().unwrap_or(0),
                    duration_us = elapsed.as_micros() as u64,
                    retries = info.retries,
                    jwt.sub = %v(info.subject.as_deref().unwrap_or("")),
                    // One call site for both, so the fields stay the same.
                    message = if info.drain_aborted { "request cut at drain timeout" } else { "request" }
                );
            }
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_values_escape_controls_and_quote_in_text() {
        let text = |s| {
            LogValue {
                text: s,
                quote: true,
            }
            .to_string()
        };
        let json = |s| {
            LogValue {
                text: s,
                quote: false,
            }
            .to_string()
        };
        assert_eq!(text("/v1/shelves/{shelf}"), "/v1/shelves/{shelf}");
        assert_eq!(text(""), "");
        assert_eq!(
            text("a\nb c=\"d\"\\\r\t\u{1b}\u{7f}\u{85}\u{2028}é"),
            r#""a\nb c=\"d\"\\\r\t\u{1b}\u{7f}\u{85}\u{2028}é""#
        );
        assert_eq!(json("a b=\"c\""), "a b=\"c\"");
        assert_eq!(json("a\nb\u{7f}"), r"a\nb\u{7f}");
    }

    #[test]
    fn request_ids_are_kept_only_when_plain() {
        assert!(well_formed(&HeaderValue::from_static("abc-123_x.y:z")));
        assert!(!well_formed(&HeaderValue::from_static("")));
        assert!(!well_formed(&HeaderValue::from_static("has space")));
        assert!(!well_formed(&HeaderValue::from_static("quote\"d")));
        assert!(!well_formed(
            &HeaderValue::from_str(&"a".repeat(129)).unwrap()
        ));
        let id = new_request_id();
        assert!(well_formed(&id));
        assert_eq!(id.len(), 32);
    }
}
