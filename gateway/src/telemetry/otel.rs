//! OpenTelemetry traces: a span for each request, its authentication, its
//! transcoding and every upstream attempt, exported over OTLP (gRPC or
//! HTTP/protobuf) when `telemetry.otlp_endpoint` is set.
//!
//! Export is off by default, and then every function here returns after one
//! load of [`TRACER`]: no span, no context, no allocation. The ids the
//! gateway hands on (`traceparent`, `traceresponse`) still come from
//! [`super::trace`], as they always have.
//!
//! With export on, the request span is the current OpenTelemetry context
//! while the request is served (the access layer attaches it), so the spans
//! below find their parent without it being passed around. Child spans are
//! made only for sampled requests: an unsampled request costs one
//! non-recording span, and its backend sees the request span as parent.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use http::{HeaderMap, Method};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};

use super::trace::TraceParent;
use super::RequestInfo;
use crate::config::{OtlpProtocol, TelemetryConfig};

/// Set once, by [`init`], when export is configured.
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// A collector that does not answer within this is down or overloaded; the
/// batch is dropped rather than held (spans are diagnostics, not data).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where OTLP/HTTP receivers take traces (the spec's signal path), added
/// when the configured endpoint has no path of its own.
const HTTP_TRACES_PATH: &str = "/v1/traces";

/// The `service.name` of exported spans unless `telemetry.service_name` says otherwise.
pub const DEFAULT_SERVICE_NAME: &str = "gateway";

/// Whether spans are being made (export configured and set up).
pub fn enabled() -> bool {
    TRACER.get().is_some()
}

/// The running exporter; [`Exporting::shutdown`] flushes what is queued.
#[derive(Debug)]
pub struct Exporting {
    provider: SdkTracerProvider,
}

impl Exporting {
    /// Sends the spans still queued and stops the exporter. Blocks until the
    /// collector answered or the export timed out: call it off the runtime's
    /// worker threads (`spawn_blocking`).
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown_with_timeout(EXPORT_TIMEOUT) {
            tracing::warn!(error = %e, "flushing traces at shutdown failed");
        }
    }

    /// Sends the spans queued so far (tests, and operators' flush points).
    pub fn flush(&self) {
        if let Err(e) = self.provider.force_flush() {
            tracing::warn!(error = %e, "flushing traces failed");
        }
    }
}

/// The endpoint the exporter is given: for OTLP/HTTP, a bare
/// `http://host:4318` gets the standard `/v1/traces` path.
fn endpoint_url(endpoint: &str, protocol: OtlpProtocol) -> String {
    let endpoint = endpoint.trim();
    match protocol {
        OtlpProtocol::Grpc => endpoint.to_owned(),
        OtlpProtocol::Http => match endpoint.parse::<http::Uri>() {
            Ok(uri) if matches!(uri.path(), "" | "/") => {
                format!("{}{HTTP_TRACES_PATH}", endpoint.trim_end_matches('/'))
            }
            _ => endpoint.to_owned(),
        },
    }
}

/// Sets up export as `cfg` says: `Ok(None)` when no endpoint is configured.
/// Once per process, inside the tokio runtime (the gRPC exporter's channel
/// lives there); spans go out in batches from the SDK's own thread.
pub fn init(cfg: &TelemetryConfig) -> Result<Option<Exporting>, String> {
    let Some(endpoint) = &cfg.otlp_endpoint else {
        return Ok(None);
    };
    let url = endpoint_url(endpoint.get_ref(), cfg.otlp_protocol);
    let exporter = match cfg.otlp_protocol {
        OtlpProtocol::Grpc => {
            use opentelemetry_otlp::WithExportConfig as _;
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(url.clone())
                .with_timeout(EXPORT_TIMEOUT)
                .build()
        }
        OtlpProtocol::Http => {
            use opentelemetry_otlp::WithExportConfig as _;
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(url.clone())
                .with_timeout(EXPORT_TIMEOUT)
                .build()
        }
    }
    .map_err(|e| format!("cannot set up trace export to {url}: {e}"))?;
    let ratio = cfg.sampling_ratio.as_ref().map_or(1.0, |r| *r.get_ref());
    let service = cfg
        .service_name
        .as_ref()
        .map_or(DEFAULT_SERVICE_NAME, |s| s.get_ref().as_str())
        .to_owned();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        // A client's decision wins (its sampled traceparent is recorded, its
        // unsampled one is not); new traces are kept at `ratio`.
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            ratio,
        ))))
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service.clone())
                .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                .build(),
        )
        .build();
    let tracer = provider.tracer_with_scope(
        InstrumentationScope::builder("gateway")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build(),
    );
    if TRACER.set(tracer).is_err() {
        let _ = provider.shutdown();
        return Err("trace export is already set up in this process".to_owned());
    }
    tracing::info!(
        endpoint = %url,
        protocol = cfg.otlp_protocol.name(),
        sampling_ratio = ratio,
        service.name = %service,
        "exporting traces over OTLP"
    );
    Ok(Some(Exporting { provider }))
}

fn span_context(tp: &TraceParent, remote: bool, state: TraceState) -> SpanContext {
    SpanContext::new(
        TraceId::from_bytes(tp.trace_id),
        SpanId::from_bytes(tp.span_id),
        if tp.sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        },
        remote,
        state,
    )
}

fn trace_parent(sc: &SpanContext) -> TraceParent {
    TraceParent {
        trace_id: sc.trace_id().to_bytes(),
        span_id: sc.span_id().to_bytes(),
        sampled: sc.is_sampled(),
    }
}

/// Starts the request (server) span, a child of the client's `traceparent`
/// when it sent a valid one. `None` when export is off: the caller then
/// continues the trace with [`TraceParent::child`] as before. The returned
/// ids are the span's, for `traceparent` towards the backend and
/// `traceresponse` towards the client.
pub fn start_request(
    client: Option<TraceParent>,
    headers: &HeaderMap,
    method: &Method,
    path: &str,
) -> Option<(TraceParent, Context)> {
    let tracer = TRACER.get()?;
    let parent = match client {
        Some(tp) => {
            let state = headers
                .get("tracestate")
                .and_then(|v| v.to_str().ok())
                .and_then(|s| s.parse().ok())
                .unwrap_or_default();
            Context::new().with_remote_span_context(span_context(&tp, true, state))
        }
        None => Context::new(),
    };
    // Named `METHOD route` once the route is known (at the end). Until then
    // a made-up method is `HTTP` in the name and `_OTHER` in the method
    // attribute, as the HTTP semantic conventions ask, so span names stay a
    // small set whatever clients send; the raw method goes in its own
    // attribute.
    let known = super::metrics::known_method(method.as_str());
    let mut span = tracer
        .span_builder(known.unwrap_or("HTTP"))
        .with_kind(SpanKind::Server)
        .start_with_context(tracer, &parent);
    if span.span_context().is_sampled() {
        span.set_attributes([
            KeyValue::new(
                "http.request.method",
                known.unwrap_or(super::metrics::OTHER_METHOD),
            ),
            KeyValue::new("url.path", path.to_owned()),
        ]);
        if known.is_none() {
            span.set_attribute(KeyValue::new(
                "http.request.method_original",
                method.as_str().to_owned(),
            ));
        }
    }
    let ids = trace_parent(span.span_context());
    Some((ids, parent.with_span(span)))
}

/// Ends the request span with what the handler learnt (route template, gRPC
/// method and code, retries) and the status sent.
pub fn end_request(cx: &Context, method: &Method, route: &str, info: &RequestInfo, status: u16) {
    let span = cx.span();
    if span.span_context().is_sampled() {
        if info.route.is_some() {
            span.update_name(format!("{method} {route}"));
            span.set_attribute(KeyValue::new("http.route", route.to_owned()));
        }
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        if let Some(m) = &info.grpc_method {
            span.set_attribute(KeyValue::new("rpc.method", m.to_string()));
        }
        if let Some(b) = &info.backend {
            span.set_attribute(KeyValue::new("gateway.backend", b.to_string()));
        }
        if let Some(code) = info.grpc_code {
            span.set_attribute(KeyValue::new("rpc.grpc.status_code", i64::from(code)));
        }
        if info.retries > 0 {
            span.set_attribute(KeyValue::new("gateway.retries", i64::from(info.retries)));
        }
        if let Some(ip) = info.client {
            span.set_attribute(KeyValue::new("client.address", ip.to_string()));
        }
        // Semantic conventions: a server span is an error only for 5xx; a
        // 4xx is the client's mistake, not the gateway's.
        if status >= 500 {
            span.set_attribute(KeyValue::new("error.type", status.to_string()));
            span.set_status(Status::error(""));
        }
    }
    span.end();
}

/// A child span of the current request; nothing when export is off or the
/// request is not sampled. Ends when dropped; [`ChildSpan::fail`] marks it failed.
pub struct ChildSpan(Option<opentelemetry_sdk::trace::Span>);

impl ChildSpan {
    fn start(name: &'static str, kind: SpanKind) -> ChildSpan {
        let Some(tracer) = TRACER.get() else {
            return ChildSpan(None);
        };
        ChildSpan(Context::map_current(|cx| {
            cx.span().span_context().is_sampled().then(|| {
                tracer
                    .span_builder(name)
                    .with_kind(kind)
                    .start_with_context(tracer, cx)
            })
        }))
    }

    /// A step inside the gateway (`transcode request`, `transcode reply`).
    pub fn internal(name: &'static str) -> ChildSpan {
        Self::start(name, SpanKind::Internal)
    }

    /// Marks the step failed with `message`.
    pub fn fail(&mut self, message: impl Into<String>) {
        if let Some(span) = &mut self.0 {
            span.set_status(Status::error(message.into()));
        }
    }

    /// Ends the span now (dropping it does the same).
    pub fn end(self) {}
}

/// Runs `auth` (the edge's token check, for a route that checks tokens)
/// inside an `auth` span; a refusal marks the span failed with its HTTP
/// status.
pub async fn auth<T>(
    auth: impl Future<Output = Result<T, crate::error::Error>>,
) -> Result<T, crate::error::Error> {
    if !enabled() {
        return auth.await;
    }
    let mut span = ChildSpan::internal("auth");
    let result = auth.await;
    if let (Err(e), Some(s)) = (&result, &mut span.0) {
        let status = e.http_status();
        s.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status.as_u16()),
        ));
        s.set_status(Status::error(
            status.canonical_reason().unwrap_or("refused"),
        ));
    }
    result
}

/// One upstream attempt: a client span whose id the backend receives as
/// its parent, so retries show as sibling spans under the request.
pub struct Attempt(ChildSpan);

impl Attempt {
    /// Starts the span of attempt number `attempt` of `path` on `addr`.
    pub fn start(path: &http::uri::PathAndQuery, addr: &str, attempt: u32) -> Attempt {
        let mut span = ChildSpan::start("upstream", SpanKind::Client);
        if let Some(s) = &mut span.0 {
            let method = path.path().trim_start_matches('/');
            s.update_name(method.to_owned());
            let (service, rpc) = method.split_once('/').unwrap_or((method, ""));
            let (host, port) = addr.rsplit_once(':').unwrap_or((addr, ""));
            s.set_attributes([
                KeyValue::new("rpc.system", "grpc"),
                KeyValue::new("rpc.service", service.to_owned()),
                KeyValue::new("rpc.method", rpc.to_owned()),
                KeyValue::new("server.address", host.trim_matches(['[', ']']).to_owned()),
                KeyValue::new("server.port", port.parse::<i64>().unwrap_or(0)),
                KeyValue::new("gateway.attempt", i64::from(attempt)),
            ]);
        }
        Attempt(span)
    }

    /// The request's metadata for this attempt: with this span as the
    /// backend's parent when it is recorded, else as it is.
    pub fn metadata(&self, md: &MetadataMap) -> MetadataMap {
        let mut md = md.clone();
        if let Some(s) = &self.0 .0 {
            let tp = trace_parent(s.span_context());
            if let Ok(mut v) = MetadataValue::try_from(tp.header_value()) {
                super::trace::unique_per_call(&mut v);
                md.insert(MetadataKey::from_static("traceparent"), v);
            }
            super::propagation::rewrite(&mut md, &tp);
        }
        md
    }

    /// Ends the span with the attempt's gRPC code (every code but OK is an
    /// error for a client span).
    pub fn end(mut self, code: tonic::Code) {
        if let Some(s) = &mut self.0 .0 {
            s.set_attribute(KeyValue::new("rpc.grpc.status_code", code as i64));
            if code != tonic::Code::Ok {
                s.set_status(Status::error(format!("{code:?}")));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_endpoints_get_the_traces_path_when_they_have_none() {
        let http = |e| endpoint_url(e, OtlpProtocol::Http);
        assert_eq!(http("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(http("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(http("https://c/otlp/v1/traces"), "https://c/otlp/v1/traces");
        assert_eq!(
            endpoint_url("http://c:4317", OtlpProtocol::Grpc),
            "http://c:4317"
        );
    }

    #[test]
    fn ids_convert_both_ways() {
        let tp =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let sc = span_context(&tp, true, TraceState::default());
        assert_eq!(
            format!("{}", sc.trace_id()),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(sc.is_sampled() && sc.is_remote());
        assert_eq!(trace_parent(&sc), tp);
    }

    #[test]
    fn nothing_is_made_while_export_is_off() {
        // No test in this crate's unit tests sets up export.
        assert!(!enabled());
        assert!(start_request(None, &HeaderMap::new(), &Method::GET, "/").is_none());
        assert!(ChildSpan::internal("x").0.is_none());
        let md = MetadataMap::new();
        let a = Attempt::start(&"/a.B/C".parse().unwrap(), "127.0.0.1:1", 1);
        assert!(a.metadata(&md).is_empty());
    }
}
