//! The trace tests' helpers: an in-process OTLP collector (the real
//! `opentelemetry.proto.collector.trace.v1.TraceService` over gRPC, or
//! `POST /v1/traces` with protobuf over HTTP), span lookups, and trace
//! export set up once for the in-process gateways of a test binary.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

/// One received span, flattened out of its resource and scope.
#[derive(Debug, Clone)]
pub struct Span {
    pub service: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    pub kind: SpanKind,
    pub attributes: HashMap<String, String>,
    /// True when the span's status is ERROR.
    pub error: bool,
}

impl Span {
    /// An attribute as text (numbers and booleans printed), if present.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

fn text(v: Option<&AnyValue>) -> String {
    match v {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn attributes(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| {
            (
                kv.key.clone(),
                text(kv.value.as_ref().and_then(|v| v.value.as_ref())),
            )
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a collector has received so far.
#[derive(Debug, Clone, Default)]
pub struct Received(Arc<Mutex<Vec<Span>>>);

impl Received {
    fn add(&self, req: ExportTraceServiceRequest) {
        let mut spans = self.0.lock().unwrap();
        for rs in req.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .map(|r| attributes(&r.attributes))
                .and_then(|a| a.get("service.name").cloned())
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    spans.push(Span {
                        service: service.clone(),
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent_span_id: hex(&s.parent_span_id),
                        name: s.name.clone(),
                        kind: SpanKind::try_from(s.kind).unwrap_or(SpanKind::Unspecified),
                        attributes: attributes(&s.attributes),
                        error: s.status.as_ref().is_some_and(|st| st.code == 2),
                    });
                }
            }
        }
    }

    /// Every span received in trace `trace_id` (hex).
    pub fn trace(&self, trace_id: &str) -> Vec<Span> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect()
    }

    pub fn all(&self) -> Vec<Span> {
        self.0.lock().unwrap().clone()
    }

    /// Waits (bounded) until `done` holds for the spans received so far.
    pub async fn wait_until(&self, within: Duration, done: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        let start = Instant::now();
        loop {
            let spans = self.all();
            if done(&spans) || start.elapsed() > within {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

struct GrpcCollector(Received);

#[tonic::async_trait]
impl TraceService for GrpcCollector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.add(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An OTLP/gRPC collector on loopback; returns its `host:port` and what it receives.
pub async fn grpc_collector() -> (String, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind collector");
    let addr = listener.local_addr().expect("collector addr").to_string();
    let received = Received::default();
    let svc = TraceServiceServer::new(GrpcCollector(received.clone()));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    (addr, received)
}

/// An OTLP/HTTP collector on loopback (`POST /v1/traces`, protobuf bodies).
pub async fn http_collector() -> (String, Received) {
    use http_body_util::BodyExt as _;
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind collector");
    let addr = listener.local_addr().expect("collector addr").to_string();
    let received = Received::default();
    let sink = received.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let sink = sink.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let sink = sink.clone();
                        async move {
                            let ok = req.method() == http::Method::POST
                                && req.uri().path() == "/v1/traces"
                                && req
                                    .headers()
                                    .get("content-type")
                                    .and_then(|v| v.to_str().ok())
                                    == Some("application/x-protobuf");
                            let body = req.into_body().collect().await.map(|b| b.to_bytes());
                            let decoded = body.ok().and_then(|b| {
                                <ExportTraceServiceRequest as prost::Message>::decode(b).ok()
                            });
                            let status = match decoded {
                                Some(r) if ok => {
                                    sink.add(r);
                                    200
                                }
                                _ => 400,
                            };
                            let reply = prost::Message::encode_to_vec(
                                &ExportTraceServiceResponse::default(),
                            );
                            Ok::<_, Infallible>(
                                http::Response::builder()
                                    .status(status)
                                    .header("content-type", "application/x-protobuf")
                                    .body(http_body_util::Full::new(bytes::Bytes::from(reply)))
                                    .expect("static response"),
                            )
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, received)
}

/// Trace export for the in-process gateways of this test binary: one per
/// process, as in the binary. The collector and the exporter's channel live
/// on a runtime of their own, so they outlive any one test's runtime.
pub struct SharedExport {
    pub received: Received,
    exporting: gateway::telemetry::otel::Exporting,
}

impl SharedExport {
    /// Sends what the gateway has queued now (the batch delay is 5 s).
    pub async fn flush(&'static self) {
        tokio::task::spawn_blocking(move || self.exporting.flush())
            .await
            .expect("flush");
    }
}

/// Sets up export over gRPC to an in-process collector, with
/// `sampling_ratio = 0.0`: only traces whose client sent a sampled
/// `traceparent` are recorded.
pub fn shared_export() -> &'static SharedExport {
    static SHARED: OnceLock<SharedExport> = OnceLock::new();
    SHARED.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("collector runtime");
            rt.block_on(async move {
                let (addr, received) = grpc_collector().await;
                let text = format!(
                    "[telemetry]\notlp_endpoint = \"http://{addr}\"\nsampling_ratio = 0.0\nservice_name = \"gateway-under-test\"\n"
                );
                let file = gateway::config::LoadedFile::parse(std::path::Path::new("t.toml"), &text)
                    .expect("telemetry config parses");
                let exporting = gateway::telemetry::otel::init(&file.config.telemetry)
                    .expect("export set up")
                    .expect("an endpoint is configured");
                tx.send(SharedExport {
                    received,
                    exporting,
                })
                .ok();
                std::future::pending::<()>().await;
            });
        });
        rx.recv().expect("export set up on its own runtime")
    })
}

/// The `gateway` binary (for tests of `gateway serve` itself).
pub use crate::gateway_bin;
