//! The REST listener: one request from route match to JSON reply.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::body::Body;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use tonic::Code;

use crate::reload::ReloadState;
use crate::routing::Lookup;
use crate::snapshot::{Route, Snapshot};
use crate::telemetry::RequestInfo;
use crate::transcode::metadata::{request_metadata, response_metadata};
use crate::transcode::{request, RpcStatus};

/// Shared by every connection: the current snapshot, swapped whole on reload.
#[derive(Debug)]
pub struct Gateway {
    snapshot: ArcSwap<Snapshot>,
    /// False while starting and while draining; /readyz reports it.
    ready: AtomicBool,
    /// Set when `server.drain_timeout` has passed: requests still running
    /// are answered 503 and logged (see [`handle`]).
    cut: tokio::sync::watch::Sender<bool>,
    pub reload: ReloadState,
}

impl Gateway {
    pub fn new(snapshot: Snapshot) -> Arc<Gateway> {
        // The metrics recorder exists before the first request is counted.
        crate::telemetry::metrics::handle();
        crate::telemetry::metrics::start_upkeep();
        metrics::gauge!(crate::telemetry::metrics::CONFIG_VERSION).set(snapshot.version as f64);
        Arc::new(Gateway {
            snapshot: ArcSwap::from_pointee(snapshot),
            ready: AtomicBool::new(false),
            cut: tokio::sync::watch::Sender::new(false),
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

    /// Ends every request still waiting for its answer with a 503, each
    /// logged and counted as cut at drain; the end of a graceful shutdown.
    pub fn cut_in_flight(&self) {
        self.cut.send_replace(true);
    }
}

/// After the drain timeout, how long the 503s of the requests cut get to be
/// written before the process exits: they are ready at once, so this only
/// bounds a client that stopped reading (and streamed answers, whose head
/// is already sent and which are cut without an answer).
const CUT_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// The REST listener's service: the edge layers around [`handle`], whose
/// routing is ours because axum's matcher cannot express google.api.http
/// templates.
///
/// The edge layers, outermost first; the order of checks is fixed (README:
/// Edge security) and rate limits and auth follow in `handle` once the route
/// is known. There is no axum `Router` in between: with every request going
/// to one fallback it only added work (a path lookup, boxing, cloning a
/// boxed service, URL-parameter and content-length bookkeeping), 2 to 3% of
/// the CPU of a small GET.
pub fn app(gateway: Arc<Gateway>) -> App {
    tower::ServiceBuilder::new()
        // Outermost: request id, trace context, access log and HTTP metrics
        // see every answer, the edge's refusals included.
        .layer(crate::telemetry::AccessLayer {
            log: gateway.snapshot().access_log,
        })
        // HEAD answers lose their body here, whichever layer made them, so
        // the access log counts the bytes actually sent.
        .layer(tower::layer::layer_fn(Head))
        // The whole request, from arrival to the answer's head: 504 beyond.
        .layer(crate::edge::limits::TimeoutLayer::new(gateway.clone()))
        // CORS: preflights answered here (no auth, no rate limit); CORS
        // headers on every answer below, errors included.
        .layer(crate::edge::cors::CorsLayer::new(gateway.clone()))
        // Target length, header count and size, declared body size.
        .layer(crate::edge::limits::LimitsLayer::new(gateway.clone()))
        .service(Handler(gateway))
}

/// The service [`app`] returns.
pub type App = crate::telemetry::Access<
    Head<
        crate::edge::limits::TimeoutService<
            crate::edge::cors::Cors<crate::edge::limits::LimitsService<Handler>>,
        >,
    >,
>;

/// HEAD answers: the status and headers the GET would have, without the
/// body (RFC 9110 section 9.3.2); the router sends HEAD to the GET route
/// where no route claims HEAD. hyper leaves the body out over HTTP/1.1 but
/// not over HTTP/2, so it is dropped here for both, with the length it
/// would have had. Dropping a streaming body cancels its backend call.
#[derive(Clone)]
pub struct Head<S>(S);

impl<S> tower::Service<http::Request<Body>> for Head<S>
where
    S: tower::Service<http::Request<Body>, Response = Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = futures_util::future::Either<
        S::Future,
        futures_util::future::MapOk<S::Future, fn(Response<Body>) -> Response<Body>>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        use futures_util::TryFutureExt as _;
        if req.method() == http::Method::HEAD {
            futures_util::future::Either::Right(self.0.call(req).map_ok(without_body as fn(_) -> _))
        } else {
            futures_util::future::Either::Left(self.0.call(req))
        }
    }
}

/// `resp` with an empty body and the `Content-Length` the body had.
fn without_body(resp: Response<Body>) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    // Statuses that never carry a length (RFC 9110 section 8.6).
    let lengthless = parts.status.is_informational()
        || parts.status == StatusCode::NO_CONTENT
        || parts.status == StatusCode::NOT_MODIFIED;
    if let Some(len) = http_body::Body::size_hint(&body).exact() {
        if !lengthless && !parts.headers.contains_key(header::CONTENT_LENGTH) {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
    }
    Response::from_parts(parts, Body::empty())
}

/// [`handle`] as a tower service, innermost of [`app`].
#[derive(Clone)]
pub struct Handler(Arc<Gateway>);

impl tower::Service<http::Request<Body>> for Handler {
    type Response = Response<Body>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<Response<Body>, std::convert::Infallible>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let gw = self.0.clone();
        Box::pin(async move { Ok(handle(gw, req).await) })
    }
}

/// The listener's settings from the current snapshot, read per connection.
fn listener_limits(
    gw: &Arc<Gateway>,
) -> impl Fn() -> crate::edge::limits::Limits + Send + Sync + 'static {
    let gw = gw.clone();
    move || gw.snapshot().edge.limits.clone()
}

/// Serves until `shutdown` resolves, then lets in-flight requests finish.
/// For tests and embedding; the binary uses [`run`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    gateway.set_ready(true);
    let limits = listener_limits(&gateway);
    let drain = crate::edge::conn::Drain::new();
    crate::edge::conn::serve(listener, app(gateway), limits, drain, shutdown).await
}

/// The whole lifecycle: serve REST (and admin, if given) until `signal`,
/// then drain in the order load balancers need: readiness goes false, the
/// listener keeps accepting for `shutdown_delay` while telling keep-alive
/// clients to reconnect elsewhere (`Connection: close`, GOAWAY), then
/// closes, and in-flight requests get `drain_timeout` to finish; those still
/// running are answered 503, logged and counted.
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
    let drain = crate::edge::conn::Drain::new();
    let mut server = tokio::spawn(crate::edge::conn::serve(
        listener,
        app(gateway.clone()),
        listener_limits(&gateway),
        drain.clone(),
        async {
            let _ = stop_rx.await;
        },
    ));
    gateway.set_ready(true);
    signal.await;
    let snap = gateway.snapshot();
    gateway.set_ready(false);
    drain.start();
    tracing::info!(
        delay_ms = snap.shutdown_delay.as_millis() as u64,
        drain_ms = snap.drain_timeout.as_millis() as u64,
        "shutting down: readiness is false; still accepting during the delay"
    );
    tokio::time::sleep(snap.shutdown_delay).await;
    let _ = stop_tx.send(());
    match tokio::time::timeout(snap.drain_timeout, &mut server).await {
        Ok(Ok(result)) => {
            tracing::info!("drained; exiting");
            result
        }
        Ok(Err(join)) => Err(std::io::Error::other(join)),
        Err(_) => {
            tracing::warn!(
                requests = crate::telemetry::access::in_flight(),
                "drain timeout passed; answering the requests still running with 503 and closing"
            );
            gateway.cut_in_flight();
            let _ = tokio::time::timeout(CUT_GRACE, &mut server).await;
            Ok(())
        }
    }
}

fn error(http: StatusCode, code: Code, message: impl Into<String>) -> Response<Body> {
    RpcStatus::new(http, code, message)
        .into_response()
        .map(Body::from)
}

/// Every REST request: [`handle_route`], then errors in the format the
/// client asked for (`Accept: application/problem+json`, RFC 9457).
async fn handle(gw: Arc<Gateway>, req: http::Request<Body>) -> Response<Body> {
    let problem = crate::transcode::status::wants_problem(req.headers());
    // Rate-limit fields, set by the edge stage, go on whatever the answer.
    let mut edge_headers = HeaderMap::new();
    // What the access log and metrics need to know, filled in as we go.
    let mut info = RequestInfo::default();
    // Every request watches for the end of the drain, so that one cut there
    // still gets an answer, an access-log line and a count.
    let mut cut = gw.cut.subscribe();
    let resp = tokio::select! {
        biased;
        resp = handle_route(gw, req, &mut edge_headers, &mut info) => Some(resp),
        Ok(_) = cut.wait_for(|cut| *cut) => None,
    };
    let resp = resp.unwrap_or_else(|| {
        info.drain_aborted = true;
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            Code::Unavailable,
            "the gateway is shutting down and the request was still running when server.drain_timeout passed",
        )
    });
    let mut resp = crate::transcode::status::negotiate(problem, resp);
    // A streamed answer names the endpoint that serves it.
    if let Some(u) = resp.extensions().get::<crate::upstream::Attempted>() {
        info.endpoint = Some(u.addr.clone());
        info.retries = u.attempts.saturating_sub(1);
    }
    resp.headers_mut().extend(edge_headers);
    resp.extensions_mut().insert(info);
    resp
}

async fn handle_route(
    gw: Arc<Gateway>,
    req: http::Request<Body>,
    edge_headers: &mut HeaderMap,
    info: &mut RequestInfo,
) -> Response<Body> {
    // The request keeps this snapshot to its end, whatever reloads happen meanwhile.
    let snap = gw.snapshot.load_full();
    let (mut parts, body) = req.into_parts();
    // A token in the query is a credential, not a message field.
    crate::edge::take_query_token(&snap.edge, &mut parts);
    let path = parts.uri.path();
    // The OpenAPI document and its page, when configured, before any route.
    if let Some(resp) = crate::openapi::serve(&snap, &parts) {
        return resp;
    }
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

    info.route = Some(route.label.clone());
    info.grpc_method = Some(route.grpc_label.clone());
    info.backend = Some(route.backend_label.clone());
    info.metrics = Some(route.metrics.clone());

    // STAGE edge: per-route authentication, policy and subject rate limits go
    // here, once the route is known and before any body byte is read.
    let admitted = crate::edge::admit(
        &snap.edge,
        route,
        &mut parts.headers,
        &mut parts.extensions,
        edge_headers,
    )
    .await;
    info.client = parts
        .extensions
        .get::<crate::edge::client_ip::ClientIp>()
        .map(|c| c.0);
    info.subject = parts
        .extensions
        .get::<crate::edge::jwt::Verified>()
        .and_then(|v| v.subject().map(str::to_owned));
    if let Err(resp) = admitted {
        return resp;
    }

    // STAGE headers: the client's deadline and metadata, read before any
    // body byte; a value the gateway cannot read is a 400 naming the header.
    let client_deadline = match crate::upstream::deadline::client_timeout(&parts.headers) {
        Ok(d) => d,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                Code::InvalidArgument,
                e.to_string(),
            )
        }
    };
    let metadata = match request_metadata(&parts.headers, route) {
        Ok(md) => md,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                Code::InvalidArgument,
                e.to_string(),
            )
        }
    };

    // STAGE streaming: streaming methods branch off here to their own handler.
    let (body, metadata) =
        match crate::transcode::stream::intercept(&snap, route, &vars, &parts, body, metadata) {
            crate::transcode::stream::Intercepted::Answered(answer) => return answer.await,
            crate::transcode::stream::Intercepted::Pass(body, metadata) => (body, metadata),
        };

    // A trace span (when exporting) from the first body byte to the message.
    let mut transcoding = crate::telemetry::otel::ChildSpan::internal("transcode request");
    let limit = (snap.max_body_bytes, snap.edge.limits.min_body_rate);
    let body = match read_body(&parts.headers, body, limit, route).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };

    if route.grpc_method.is_server_streaming() {
        let message = match build_message(&snap, route, &vars, parts.uri.query(), &body) {
            Ok(m) => m,
            Err(e) => {
                transcoding.fail(&e.message);
                return error(StatusCode::BAD_REQUEST, Code::InvalidArgument, e.message);
            }
        };
        drop(body);
        transcoding.end();
        // Boxed: inline, its state would make every request's future larger.
        return Box::pin(crate::transcode::stream::server_stream(
            &snap, route, message, metadata, &parts,
        ))
        .await;
    }
    let request = match encode_request(&snap, route, &vars, parts.uri.query(), &body) {
        Ok(m) => m,
        Err(e) => {
            transcoding.fail(&e.message);
            return error(StatusCode::BAD_REQUEST, Code::InvalidArgument, e.message);
        }
    };
    drop(body);
    transcoding.end();

    // Balancing, retries, ejection, circuit breaker and deadline all happen
    // in the backend; the client's deadline headers and address go along.
    let result = route
        .backend
        .call(crate::upstream::CallRequest {
            path: route.grpc_path.clone(),
            body: request,
            metadata,
            timeout: client_deadline.map_or(route.timeout, |c| c.min(route.timeout)),
            retry: crate::upstream::RouteRetry::for_route(&route.method, route.retry_on.as_deref()),
            headers: &parts.headers,
            // The edge's view (trusted proxies applied) when it ran.
            client_ip: parts
                .extensions
                .get::<crate::edge::client_ip::ClientIp>()
                .map(|c| c.0)
                .or_else(|| crate::upstream::client_ip(&parts.headers, &parts.extensions)),
            metrics: &route.metrics,
        })
        .await;
    let code = match &result {
        Ok(_) => Code::Ok,
        Err(crate::upstream::CallError::Refused { code, .. }) => *code,
        Err(crate::upstream::CallError::Upstream { status, .. }) => status.code(),
    };
    info.grpc_code = Some(code as i32);
    match &result {
        Ok(reply) => {
            if let Some(u) = reply.extensions().get::<crate::upstream::Attempted>() {
                info.endpoint = Some(u.addr.clone());
                info.retries = u.attempts.saturating_sub(1);
            }
        }
        Err(crate::upstream::CallError::Upstream { addr, attempts, .. }) => {
            info.endpoint = Some(addr.clone());
            info.retries = attempts.saturating_sub(1);
        }
        Err(crate::upstream::CallError::Refused { .. }) => {}
    }
    match result {
        Ok(reply) => {
            let _transcoding = crate::telemetry::otel::ChildSpan::internal("transcode reply");
            let (md, raw, _) = reply.into_parts();
            crate::transcode::response::answer(&snap, route, &md, &raw)
        }
        Err(crate::upstream::CallError::Refused { code, message }) => {
            tracing::debug!(
                route = %route.template,
                grpc.method = route.grpc_method.full_name(),
                grpc.code = ?code,
                error = %message,
                "backend call refused"
            );
            error(crate::transcode::http_status(code), code, message)
        }
        Err(crate::upstream::CallError::Upstream { status, addr, .. }) => {
            tracing::debug!(
                route = %route.template,
                grpc.method = route.grpc_method.full_name(),
                upstream.addr = %addr,
                grpc.code = ?status.code(),
                "backend call failed"
            );
            let mut s = RpcStatus::from_grpc(&status, &snap.pool);
            // A deadline's message names the backend already (one text for
            // every 504, see `upstream::deadline::exceeded_message`).
            if status.code() == Code::Unavailable && status.metadata().is_empty() {
                // Errors made by the client side (connect failure, reset)
                // carry no backend metadata; name the backend so the operator
                // knows where to look.
                let mut msg = format!(
                    "backend \"{}\" ({}): {}",
                    route.backend.name, addr, s.message
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

/// Reads the body up to the limit, at the minimum rate (`limit`: bytes,
/// bytes/s); a declared length over the limit is refused before any byte
/// is read.
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    (limit, min_rate): (usize, u64),
    route: &Route,
) -> Result<Bytes, Response<Body>> {
    let bytes = crate::transcode::read_limited(headers, body, limit, min_rate)
        .await
        .map_err(|s| s.into_response().map(Body::from))?;
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

/// The request message for a unary call, encoded.
fn encode_request(
    snap: &Snapshot,
    route: &Route,
    vars: &[std::borrow::Cow<'_, str>],
    query: Option<&str>,
    body: &[u8],
) -> Result<Bytes, crate::transcode::TranscodeError> {
    if let Some(wire) = crate::transcode::fast::encode_request(
        &route.fast,
        &route.input,
        &route.body,
        &route.path_fields,
        &route.bound,
        route.shaping.update_mask.as_ref(),
        vars,
        query,
        body,
        snap.decode,
    ) {
        return Ok(Bytes::from(wire));
    }
    let msg = build_message(snap, route, vars, query, body)?;
    Ok(Bytes::from(prost::Message::encode_to_vec(&msg)))
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
    let mask = (&route.shaping.update_mask, &route.body);
    if let (Some(mask), request::BodyRule::Field(field)) = mask {
        crate::transcode::fieldmask::fill(&mut msg, mask, field, body);
    }
    Ok(msg)
}
