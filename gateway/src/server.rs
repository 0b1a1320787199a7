//! The REST listener: one request from route match to JSON reply.

use std::future::{Future, IntoFuture};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::body::Body;
use axum::extract::State;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tonic::metadata::{KeyAndValueRef, MetadataKey, MetadataMap, MetadataValue};
use tonic::Code;

use crate::reload::ReloadState;
use crate::routing::Lookup;
use crate::snapshot::{Route, Snapshot};
use crate::transcode::{request, RpcStatus};

/// Shared by every connection: the current snapshot, swapped whole on reload.
#[derive(Debug)]
pub struct Gateway {
    snapshot: ArcSwap<Snapshot>,
    /// False while starting and while draining; /readyz reports it.
    ready: AtomicBool,
    pub reload: ReloadState,
}

impl Gateway {
    pub fn new(snapshot: Snapshot) -> Arc<Gateway> {
        Arc::new(Gateway {
            snapshot: ArcSwap::from_pointee(snapshot),
            ready: AtomicBool::new(false),
            reload: ReloadState::default(),
        })
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Replaces the snapshot in one step; requests already running keep the
    /// one they started with.
    pub fn swap(&self, snapshot: Snapshot) {
        self.snapshot.store(Arc::new(snapshot));
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }
}

/// The axum app: every request goes to [`handle`]; routing is ours because
/// axum's matcher cannot express google.api.http templates.
pub fn app(gateway: Arc<Gateway>) -> axum::Router {
    axum::Router::new().fallback(handle).with_state(gateway)
}

/// Serves until `shutdown` resolves, then lets in-flight requests finish.
/// For tests and embedding; the binary uses [`run`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    gateway.set_ready(true);
    axum::serve(listener, app(gateway))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The whole lifecycle: serve REST (and admin, if given) until `signal`,
/// then drain in the order load balancers need: readiness goes false, the
/// listener keeps accepting for `shutdown_delay`, then closes, and in-flight
/// requests get `drain_timeout` to finish.
pub async fn run(
    listener: tokio::net::TcpListener,
    admin: Option<tokio::net::TcpListener>,
    gateway: Arc<Gateway>,
    signal: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Some(admin) = admin {
        let app = crate::admin::app(gateway.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(admin, app).await {
                tracing::error!(error = %e, "admin listener failed");
            }
        });
    }
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        axum::serve(listener, app(gateway.clone()))
            .with_graceful_shutdown(async {
                let _ = stop_rx.await;
            })
            .into_future(),
    );
    gateway.set_ready(true);
    signal.await;
    let snap = gateway.snapshot();
    gateway.set_ready(false);
    tracing::info!(
        delay_ms = snap.shutdown_delay.as_millis() as u64,
        drain_ms = snap.drain_timeout.as_millis() as u64,
        "shutting down: readiness is false; still accepting during the delay"
    );
    tokio::time::sleep(snap.shutdown_delay).await;
    let _ = stop_tx.send(());
    match tokio::time::timeout(snap.drain_timeout, server).await {
        Ok(Ok(result)) => {
            tracing::info!("drained; exiting");
            result
        }
        Ok(Err(join)) => Err(std::io::Error::other(join)),
        Err(_) => {
            tracing::warn!("drain timeout passed; closing the remaining connections");
            Ok(())
        }
    }
}

fn error(http: StatusCode, code: Code, message: impl Into<String>) -> Response<Body> {
    RpcStatus::new(http, code, message)
        .into_response()
        .map(Body::from)
}

async fn handle(State(gw): State<Arc<Gateway>>, req: http::Request<Body>) -> Response<Body> {
    // The request keeps this snapshot to its end, whatever reloads happen meanwhile.
    let snap = gw.snapshot.load_full();
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();
    let (route, vars) = match snap.matcher.lookup(parts.method.as_str(), path) {
        Lookup::Found { value, vars } => (value, vars),
        Lookup::MethodNotAllowed { allowed } => {
            let mut resp = error(
                StatusCode::METHOD_NOT_ALLOWED,
                Code::Unimplemented,
                format!(
                    "method {} is not allowed on {path}; allowed: {}",
                    parts.method,
                    allowed.join(", ")
                ),
            );
            if let Ok(v) = HeaderValue::from_str(&allowed.join(", ")) {
                resp.headers_mut().insert(header::ALLOW, v);
            }
            return resp;
        }
        Lookup::NotFound => {
            return error(
                StatusCode::NOT_FOUND,
                Code::NotFound,
                format!("no route for {} {path}", parts.method),
            )
        }
        Lookup::BadPath(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                Code::InvalidArgument,
                format!("bad request path: {e}"),
            )
        }
    };

    let body = match read_body(&parts.headers, body, snap.max_body_bytes, route).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };

    let message = match build_message(&snap, route, &vars, parts.uri.query(), &body) {
        Ok(m) => m,
        Err(e) => return error(StatusCode::BAD_REQUEST, Code::InvalidArgument, e.message),
    };
    drop(body);

    let metadata = request_metadata(&parts.headers, route);
    let Some(endpoint) = route.backend.pick() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            Code::Unavailable,
            format!("backend \"{}\" has no endpoints", route.backend.name),
        );
    };
    let result = endpoint
        .unary(
            route.grpc_path.clone(),
            message,
            metadata,
            route.output.clone(),
            route.timeout,
        )
        .await;
    match result {
        Ok(reply) => {
            let (md, msg, _) = reply.into_parts();
            match crate::transcode::encode_reply(&msg, route.response_body.as_ref(), &snap.encode) {
                Ok(json) => {
                    let mut resp = Response::new(Body::from(json));
                    resp.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                    response_metadata(&md, resp.headers_mut());
                    resp
                }
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, Code::Internal, e.message),
            }
        }
        Err(status) => {
            tracing::debug!(
                route = %route.template,
                grpc.method = route.grpc_method.full_name(),
                upstream.addr = %endpoint.addr,
                grpc.code = ?status.code(),
                "backend call failed"
            );
            let mut s = RpcStatus::from_grpc(&status, &snap.pool);
            if matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded)
                && status.metadata().is_empty()
            {
                // Errors made by the client side (connect failure, deadline)
                // carry no backend metadata; name the backend so the operator
                // knows where to look.
                let mut msg = format!(
                    "backend \"{}\" ({}): {}",
                    route.backend.name, endpoint.addr, s.message
                );
                // Transport errors keep the useful part ("Connection refused")
                // in their source chain, not in the status message.
                let mut source = std::error::Error::source(&status);
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
            let mut resp = s.into_response().map(Body::from);
            response_metadata(status.metadata(), resp.headers_mut());
            resp
        }
    }
}

/// Reads the body up to the limit; a declared length over the limit is
/// refused before any byte is read.
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    route: &Route,
) -> Result<Bytes, Response<Body>> {
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            Code::InvalidArgument,
            format!("request body is larger than the limit of {limit} bytes"),
        )
    };
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > limit as u64 {
            return Err(too_large());
        }
    }
    let bytes = match Limited::new(body, limit).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => return Err(too_large()),
        Err(e) => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                Code::InvalidArgument,
                format!("reading the request body failed: {e}"),
            ))
        }
    };
    if matches!(route.body, request::BodyRule::None) {
        // grpc-gateway ignores a body the route does not bind; a stricter
        // answer helps clients that put fields in the wrong place.
        if !bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(error(
                StatusCode::BAD_REQUEST,
                Code::InvalidArgument,
                format!(
                    "{} {} takes no request body; send fields in the path or query",
                    route.method, route.template
                ),
            ));
        }
        return Ok(bytes);
    }
    if !bytes.is_empty() {
        if let Some(ct) = headers.get(header::CONTENT_TYPE) {
            let ok = ct
                .to_str()
                .ok()
                .and_then(|s| s.split(';').next())
                .map(|m| {
                    let m = m.trim().to_ascii_lowercase();
                    // Only JSON. text/plain and form types are what a
                    // browser may send cross-site without a CORS preflight;
                    // reading them as JSON would let any page call the API
                    // with a user's cookies (CSRF).
                    m == "application/json"
                        || (m.starts_with("application/") && m.ends_with("+json"))
                })
                .unwrap_or(false);
            if !ok {
                return Err(error(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    Code::InvalidArgument,
                    format!(
                        "content type {:?} is not supported; send application/json",
                        ct.to_str().unwrap_or("(not text)")
                    ),
                ));
            }
        }
    }
    Ok(bytes)
}

fn build_message(
    snap: &Snapshot,
    route: &Route,
    vars: &[std::borrow::Cow<'_, str>],
    query: Option<&str>,
    body: &[u8],
) -> Result<prost_reflect::DynamicMessage, crate::transcode::TranscodeError> {
    let mut msg = request::decode_body(&route.input, &route.body, body, snap.decode)?;
    // Path variables win over the body, as in grpc-gateway.
    for (fields, value) in route.path_fields.iter().zip(vars) {
        request::set_path_field(&mut msg, fields, value)?;
    }
    if let Some(q) = query {
        request::apply_query(&mut msg, q, &route.body, &route.bound, snap.decode)?;
    }
    Ok(msg)
}

/// Headers that describe the HTTP hop itself or belong to gRPC's framing;
/// forwarding them would confuse the backend.
fn reserved(name: &str) -> bool {
    name.starts_with("grpc-")
        || matches!(
            name,
            "content-type"
                | "content-length"
                | "te"
                | "connection"
                | "host"
                | "transfer-encoding"
                | "keep-alive"
                | "upgrade"
                | "proxy-connection"
        )
}

fn request_metadata(headers: &HeaderMap, route: &Route) -> MetadataMap {
    let mut md = MetadataMap::new();
    for name in &route.forward_headers {
        if reserved(name.as_str()) {
            continue;
        }
        for v in headers.get_all(name) {
            if let (Ok(k), Ok(v)) = (
                MetadataKey::from_bytes(name.as_str().as_bytes()),
                MetadataValue::try_from(v.as_bytes()),
            ) {
                md.append(k, v);
            }
        }
    }
    for (name, v) in headers {
        let Some(rest) = name.as_str().strip_prefix("grpc-metadata-") else {
            continue;
        };
        if rest.is_empty() || reserved(rest) {
            continue;
        }
        if let (Ok(k), Ok(v)) = (
            MetadataKey::from_bytes(rest.as_bytes()),
            MetadataValue::try_from(v.as_bytes()),
        ) {
            md.append(k, v);
        }
    }
    md
}

/// Backend metadata (headers and trailers; tonic merges them for unary calls)
/// goes back as `Grpc-Metadata-<key>`, as grpc-gateway does.
fn response_metadata(md: &MetadataMap, out: &mut HeaderMap) {
    for kv in md.iter() {
        let KeyAndValueRef::Ascii(k, v) = kv else {
            continue;
        };
        let key = k.as_str();
        if reserved(key) || key == "date" || key == "server" {
            continue;
        }
        let Ok(name) = http::HeaderName::from_bytes(format!("grpc-metadata-{key}").as_bytes())
        else {
            continue;
        };
        if let Ok(value) = HeaderValue::from_bytes(v.as_encoded_bytes()) {
            out.append(name, value);
        }
    }
}
