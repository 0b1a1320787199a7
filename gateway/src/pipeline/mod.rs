//! The request pipeline: one request, stage by stage, from the listener's
//! connection to the answer (docs/layout.md draws it).
//!
//! 1. Access: request id, trace context, access log, HTTP metrics.
//! 2. HEAD answers lose their body.
//! 3. Route once ([`RouteStage`]): the snapshot is loaded once and the
//!    route matched once; [`Routed`] and the edge's view of it
//!    ([`crate::edge::EdgeContext`]) go on the request.
//! 4. Edge layers, each reading its own slice of the route stage's result
//!    (`edge::layer::RouteView`): the request timeout, CORS, request
//!    limits, the client's address, rate limits, authentication, rate
//!    limits by subject.
//! 5. The handler: 404/405/400 for requests no route takes, then the
//!    client's deadline and metadata, transcoding, the backend call (unary
//!    or streaming, through one `upstream::Backend`), and the reply
//!    transcoded back.
//!
//! Every refusal on the way is a `crate::error::Error`, rendered by
//! `Error::into_response`; [`handle`] re-renders it as problem+json when
//! the client asked for that.

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::body::Body;
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use tonic::Code;

mod cached;
mod checks;
mod compress;
pub mod rpc;
mod stream;
mod websocket;

use crate::edge::auth::Authenticate;
use crate::edge::client_ip::ResolveClient;
use crate::edge::cors::Cors;
use crate::edge::layer::{Annotate, OnResponse, Policed, PolicyLayer, RouteView};
use crate::edge::limits::{HeadLimits, RequestTimeout};
use crate::edge::overload::Shed;
use crate::edge::ratelimit::Phase;
use crate::error::Error;
use crate::routing::Lookup;
use crate::snapshot::{Route, Snapshot};
use crate::telemetry::RequestInfo;
use crate::transcode::metadata::request_metadata;
use checks::validate;

/// The pipeline, outermost stage first; the order of the edge layers is
/// fixed (docs/edge-security.md). A new edge policy is one file in `edge/`
/// and one line here. There is no axum
/// `Router` in between: with every request going to one fallback it only
/// added work (a path lookup, boxing, cloning a boxed service, URL-parameter
/// and content-length bookkeeping), 2 to 3% of the CPU of a small GET.
pub fn app(
    snapshots: Arc<ArcSwap<Snapshot>>,
    cut: tokio::sync::watch::Receiver<bool>,
    access: crate::telemetry::AccessLayer,
) -> App {
    tower::ServiceBuilder::new()
        // Outermost: request id, trace context, access log and HTTP metrics
        // see every answer, the edge's refusals included.
        .layer(access)
        // HEAD answers lose their body here, whichever layer made them, so
        // the access log counts the bytes actually sent.
        .layer(tower::layer::layer_fn(Head))
        // Route once: the snapshot loaded once, the route matched once; the
        // result goes on the request for every stage below.
        .layer(RouteLayer { snapshots })
        // The gateway-wide shed (`server.max_in_flight`): first of all the
        // work a request costs, after routing only so that the 503 is
        // written in the request's protocol.
        .layer(PolicyLayer::<_, Routed>::new(Shed))
        // Answers compressed per Accept-Encoding: inside the access log,
        // which counts the bytes sent, and the HEAD stage, which cuts them.
        .layer(compress::CompressLayer)
        // The whole request, from arrival to the answer's head: 504 beyond.
        .layer(PolicyLayer::<_, Routed>::new(RequestTimeout))
        // CORS: preflights answered here (no auth, no rate limit); CORS
        // headers on every answer below, errors included.
        .layer(PolicyLayer::<_, Routed>::new(Cors))
        // Target length, header count and size, declared body size.
        .layer(PolicyLayer::<_, Routed>::new(HeadLimits))
        // The client's address, trusted proxies applied.
        .layer(PolicyLayer::<_, Routed>::new(ResolveClient))
        // Rate limits keyed by address, header or route: before any token
        // is checked, so a flood of bad tokens costs no signature checks.
        .layer(PolicyLayer::<_, Routed>::new(Phase::BeforeAuth))
        // The route's token check, scopes and claims.
        .layer(PolicyLayer::<_, Routed>::new(Authenticate))
        // Rate limits keyed by the verified subject.
        .layer(PolicyLayer::<_, Routed>::new(Phase::AfterAuth))
        .service(Handler(cut))
}

/// The service [`app`] returns.
pub type App = crate::telemetry::Access<
    Head<RouteStage<Policed<compress::Compress<Edge<Handler>>, Shed, Routed>>>,
>;

/// The edge layers over `S`, outermost first.
type Edge<S> = Policed<
    Policed<
        Policed<
            Policed<
                Policed<Policed<Policed<S, Phase, Routed>, Authenticate, Routed>, Phase, Routed>,
                ResolveClient,
                Routed,
            >,
            HeadLimits,
            Routed,
        >,
        Cors,
        Routed,
    >,
    RequestTimeout,
    Routed,
>;

/// The route stage's result, on the request's extensions: the snapshot the
/// request keeps to its end, whatever reloads happen meanwhile, and what
/// the path matched. (`Clone` only because request extensions must be;
/// the handler takes it out, nothing copies it.)
#[derive(Clone)]
pub struct Routed {
    pub snap: Arc<Snapshot>,
    pub outcome: Outcome,
    /// The edge layers' view of it.
    pub edge: crate::edge::EdgeContext,
}

/// The edge layers read their slices of the route stage's result.
impl RouteView for Routed {
    fn context(&self) -> &crate::edge::EdgeContext {
        &self.edge
    }

    fn policy(&self) -> Option<&crate::edge::RouteEdge> {
        match &self.outcome {
            Outcome::Found { route, .. } => Some(&route.edge),
            _ => None,
        }
    }
}

/// What the request's method and path matched.
#[derive(Clone)]
pub enum Outcome {
    Found {
        route: Arc<Route>,
        /// The path variables, as places in the path (or decoded text).
        vars: Vec<Var>,
    },
    MethodNotAllowed(Vec<String>),
    NotFound,
    BadPath(crate::routing::PathError),
}

/// One path variable: a slice of the request's path, or its decoded text
/// when decoding changed it.
#[derive(Clone)]
pub enum Var {
    At(u32, u32),
    Decoded(String),
}

impl Routed {
    /// Loads nothing: matches `req` against `snap`.
    fn resolve(snap: Arc<Snapshot>, req: &http::Request<Body>) -> Routed {
        let path = req.uri().path();
        let outcome = match snap.matcher.lookup(req.method().as_str(), path) {
            Lookup::Found { value, vars } => Outcome::Found {
                route: value.clone(),
                vars: vars.into_iter().map(|v| Var::of(path, v)).collect(),
            },
            Lookup::MethodNotAllowed { allowed } => {
                Outcome::MethodNotAllowed(allowed.into_iter().map(str::to_owned).collect())
            }
            Lookup::NotFound => Outcome::NotFound,
            Lookup::BadPath(e) => Outcome::BadPath(e),
        };
        let edge = edge_context(&snap, &outcome, req);
        Routed {
            snap,
            outcome,
            edge,
        }
    }
}

/// The edge layers' view of the request.
fn edge_context(
    snap: &Snapshot,
    outcome: &Outcome,
    req: &http::Request<Body>,
) -> crate::edge::EdgeContext {
    let edge = snap.edge.clone();
    let (routed, cors, streams_request) = match outcome {
        Outcome::Found { route, .. } => {
            (true, route.edge.cors.clone(), route.plan.streams_request())
        }
        // 404, 405 and 400 answers: the default policy lets a browser
        // read why its call failed.
        _ => (false, edge.cors.clone(), false),
    };
    let preflight = if edge.cors_configured
        && req.method() == http::Method::OPTIONS
        && req.headers().contains_key(header::ORIGIN)
    {
        req.headers()
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .map(|wanted| preflight(snap, wanted.to_str().unwrap_or(""), req.uri().path()))
    } else {
        None
    };
    crate::edge::EdgeContext {
        edge,
        routed,
        cors,
        streams_request,
        preflight,
    }
}

/// What a CORS preflight for `wanted` on `path` is asking about: the
/// route of another method than the request's own, matched here.
fn preflight(snap: &Snapshot, wanted: &str, path: &str) -> crate::edge::Preflight {
    match snap.matcher.lookup(wanted, path) {
        Lookup::Found { value, .. } => crate::edge::Preflight::Route {
            cors: value.edge.cors.clone(),
            bound: snap
                .matcher
                .allowed_methods(path)
                .into_iter()
                .filter_map(|m| http::Method::from_bytes(m.as_bytes()).ok())
                .collect(),
        },
        _ => crate::edge::Preflight::NoRoute,
    }
}

impl Var {
    fn of(path: &str, v: Cow<'_, str>) -> Var {
        match v {
            Cow::Borrowed(s) => {
                let start = (s.as_ptr() as usize).wrapping_sub(path.as_ptr() as usize);
                match path.get(start..start + s.len()) {
                    // The matcher's slices are of the path itself.
                    Some(same) if same.as_ptr() == s.as_ptr() => {
                        Var::At(start as u32, (start + s.len()) as u32)
                    }
                    _ => Var::Decoded(s.to_owned()),
                }
            }
            Cow::Owned(s) => Var::Decoded(s),
        }
    }

    /// The variable's text, borrowed from `path` where it is a slice of it.
    fn into_text(self, path: &str) -> Cow<'_, str> {
        match self {
            Var::At(a, b) => Cow::Borrowed(path.get(a as usize..b as usize).unwrap_or("")),
            Var::Decoded(s) => Cow::Owned(s),
        }
    }
}

/// Layer of [`RouteStage`].
#[derive(Clone)]
pub struct RouteLayer {
    snapshots: Arc<ArcSwap<Snapshot>>,
}

impl<S> tower::Layer<S> for RouteLayer {
    type Service = RouteStage<S>;
    fn layer(&self, inner: S) -> RouteStage<S> {
        RouteStage {
            snapshots: self.snapshots.clone(),
            inner,
        }
    }
}

/// Route once: loads the snapshot, matches the route, and puts [`Routed`]
/// and the edge's [`crate::edge::EdgeContext`] on the request.
#[derive(Clone)]
pub struct RouteStage<S> {
    snapshots: Arc<ArcSwap<Snapshot>>,
    inner: S,
}

impl<S> tower::Service<http::Request<Body>> for RouteStage<S>
where
    S: crate::edge::layer::Inner,
{
    type Response = Response<Body>;
    type Error = std::convert::Infallible;
    type Future = OnResponse<S::Future, Finish>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        let routed = Routed::resolve(self.snapshots.load_full(), &req);
        let (route, protocol) = match &routed.outcome {
            Outcome::Found { route, .. } => (
                Some(route.clone()),
                route
                    .rpc
                    .any()
                    .then(|| rpc::Protocol::of(&req, route.rpc))
                    .flatten(),
            ),
            _ => (None, None),
        };
        // How this request's errors are written, whichever stage fails it.
        let format = match protocol {
            Some(p) => {
                req.extensions_mut().insert(p);
                p.format()
            }
            None if crate::error::wants_problem(req.headers()) => crate::error::Format::Problem,
            None => crate::error::Format::Json,
        };
        // A cached route's `vary` values, before authentication takes the
        // credentials out of the request.
        if let Some(policy) = route.as_ref().and_then(|r| r.cache.as_ref()) {
            let varied = crate::cache::Varied::of(&policy.vary, req.headers());
            req.extensions_mut().insert(varied);
        }
        req.extensions_mut().insert(routed);
        OnResponse::inner(self.inner.call(req), Finish { route, format })
    }
}

/// What the route stage adds to whatever answer the request gets,
/// refusals included: the matched route's names and metric handles for the
/// access log and metrics, and errors written in the request's format
/// (problem+json, gRPC-Web, Connect), the one place that decides it.
pub struct Finish {
    route: Option<Arc<Route>>,
    format: crate::error::Format,
}

impl Annotate for Finish {
    fn annotate(self, resp: &mut Response<Body>) {
        if self.format != crate::error::Format::Json && resp.extensions().get::<Error>().is_some() {
            let taken = std::mem::take(resp);
            *resp = crate::error::render(self.format, taken);
        }
        let Some(route) = &self.route else { return };
        let info = crate::edge::layer::info(resp);
        info.route = Some(route.label.clone());
        info.grpc_method = Some(route.grpc_label.clone());
        info.backend = Some(route.backend_label.clone());
        info.metrics = Some(route.metrics.clone());
    }
}

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

/// [`handle`] as a tower service, innermost of [`app`]; it watches for the
/// end of the drain (see `server::run`).
#[derive(Clone)]
pub struct Handler(tokio::sync::watch::Receiver<bool>);

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
        let cut = self.0.clone();
        Box::pin(async move { Ok(handle(cut, req).await) })
    }
}

/// Every REST request: [`handle_route`], then errors in the format the
/// client asked for (`Accept: application/problem+json`, RFC 9457).
async fn handle(
    mut cut: tokio::sync::watch::Receiver<bool>,
    req: http::Request<Body>,
) -> Response<Body> {
    // What the access log and metrics need to know, filled in as we go.
    let mut info = RequestInfo::default();
    // Every request watches for the end of the drain, so that one cut there
    // still gets an answer, an access-log line and a count.
    let resp = tokio::select! {
        biased;
        resp = handle_route(req, &mut info) => Some(resp),
        Ok(_) = cut.wait_for(|cut| *cut) => None,
    };
    let resp = resp.unwrap_or_else(|| {
        info.drain_aborted = true;
        Error::ShuttingDown.into_response()
    });
    let mut resp = resp;
    // A streamed answer names the endpoint that serves it.
    if let Some(u) = resp.extensions().get::<crate::upstream::Attempted>() {
        info.endpoint = Some(u.addr.clone());
        info.retries = u.attempts.saturating_sub(1);
    }
    resp.extensions_mut().insert(info);
    resp
}

async fn handle_route(req: http::Request<Body>, info: &mut RequestInfo) -> Response<Body> {
    let (mut parts, body) = req.into_parts();
    let Some(routed) = parts.extensions.remove::<Routed>() else {
        return Error::Internal(
            "the request reached the handler without passing the route stage".to_owned(),
        )
        .into_response();
    };
    let Routed { snap, outcome, .. } = routed;
    let snap = &snap;
    let path = parts.uri.path();
    // The OpenAPI document and its page, when configured, before any route.
    if let Some(resp) = crate::openapi::serve(snap, &parts) {
        return resp;
    }
    let (route, vars) = match outcome {
        // In place: `Var` and `Cow<str>` have one size, so this reuses the
        // route stage's vector instead of allocating another.
        Outcome::Found { route, vars } => (
            route,
            vars.into_iter()
                .map(|v| v.into_text(path))
                .collect::<Vec<_>>(),
        ),
        Outcome::MethodNotAllowed(allowed) => {
            return Error::MethodNotAllowed {
                method: parts.method.to_string(),
                path: path.to_owned(),
                allowed: allowed.join(", "),
            }
            .into_response()
        }
        Outcome::NotFound => {
            return Error::NoRoute {
                method: parts.method.to_string(),
                path: path.to_owned(),
            }
            .into_response()
        }
        Outcome::BadPath(e) => return Error::BadPath(e.to_string()).into_response(),
    };

    let route = &route;
    // A compressed body is decoded as it is read, whichever path reads it.
    let body = match crate::encoding::decode::request_body(&mut parts.headers, body) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    if route.rpc.any() {
        let Some(protocol) = parts.extensions.get::<rpc::Protocol>().copied() else {
            return Error::UnsupportedMediaType(format!(
                "{} {} is served over {}; send its content type (e.g. application/grpc-web+proto or application/json)",
                parts.method,
                route.label,
                route.rpc.names().join(" and ")
            ))
            .into_response();
        };
        info.subject = parts
            .extensions
            .get::<crate::edge::jwt::Verified>()
            .and_then(|v| v.subject().map(str::to_owned))
            .or_else(|| caller_name(&parts.extensions));
        let resp = Box::pin(rpc::answer(snap, route, protocol, &parts, body)).await;
        info.grpc_code = Some(
            resp.extensions()
                .get::<Error>()
                .map_or(0, |e| e.code() as i32),
        );
        return resp;
    }
    info.subject = parts
        .extensions
        .get::<crate::edge::jwt::Verified>()
        .and_then(|v| v.subject().map(str::to_owned))
        .or_else(|| caller_name(&parts.extensions));

    // STAGE headers: the client's deadline and metadata, read before any
    // body byte; a value the gateway cannot read is a 400 naming the header.
    let client_deadline = match crate::upstream::deadline::client_timeout(&parts.headers) {
        Ok(d) => d,
        Err(e) => return Error::BadRequest(e.to_string()).into_response(),
    };
    let propagated = parts
        .extensions
        .get::<crate::telemetry::RequestContext>()
        .map_or(&[][..], |c| c.propagators.forwarded());
    let metadata = match request_metadata(&parts.headers, &route.forward_headers, propagated) {
        Ok(md) => md,
        Err(e) => return Error::BadRequest(e.to_string()).into_response(),
    };

    // STAGE WebSocket: the route's stream is carried on an upgraded socket.
    if route.plan.shaping.websocket {
        let frames = crate::transcode::websocket::Frames::new(
            &snap.transcode,
            &route.plan,
            &vars,
            parts.uri.query(),
        );
        return Box::pin(websocket::answer(snap, route, frames, &mut parts, metadata)).await;
    }

    // STAGE streaming: requests the transcoder takes as streams (client and
    // bidirectional streaming, raw and multipart bodies) go their own way.
    // Boxed: inline, that state machine (every streaming variant) would make
    // every request's future larger, and each move of it a longer copy.
    let settings = &snap.transcode;
    let plan = &route.plan;
    if crate::transcode::stream::takes_body(plan, &parts.headers) {
        return Box::pin(stream::answer(snap, route, &vars, &parts, body, metadata)).await;
    }

    // A trace span (when exporting) from the first body byte to the message.
    let mut transcoding = crate::telemetry::otel::ChildSpan::internal("transcode request");
    let route_name = (route.method.as_str(), &*route.label);
    let read = crate::transcode::json::read_body(settings, plan, route_name, &parts.headers, body);
    let body = match read.await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };

    // One request message, unary or server-streaming alike.
    let request =
        match crate::transcode::json::encode(settings, plan, &vars, parts.uri.query(), &body) {
            Ok(m) => m,
            Err(e) => {
                transcoding.fail(&e.message);
                return Error::BadRequest(e.message).into_response();
            }
        };
    drop(body);
    transcoding.end();
    if let Err(e) = validate(route, &request) {
        return e.into_response();
    }
    if plan.streams_reply() {
        // Boxed: inline, its state would make every request's future larger.
        return Box::pin(stream::server_stream(
            snap, route, request, metadata, &parts,
        ))
        .await;
    }

    let timeout = client_deadline.map_or(route.timeout, |c| c.min(route.timeout));
    // STAGE cache: routes with `cache` ask it before calling. Boxed, so
    // routes without one keep their future's size.
    if let Some(policy) = &route.cache {
        let call = cached::Call {
            parts: &parts,
            request,
            metadata,
            timeout,
        };
        return Box::pin(cached::answer(snap, route, policy, call, info)).await;
    }

    // Balancing, retries, ejection, circuit breaker and deadline all happen
    // in the backend; the client's deadline headers and address go along.
    let result = route
        .backend
        .call(crate::upstream::CallRequest {
            path: route.grpc_path.clone(),
            body: request,
            metadata,
            timeout,
            retry: crate::upstream::RouteRetry::for_route(&route.method, route.retry_on.as_deref()),
            headers: &parts.headers,
            client_ip: client_ip(&parts),
            metrics: &route.metrics,
        })
        .await;
    note_call(info, &result);
    match result {
        Ok(reply) => {
            let _transcoding = crate::telemetry::otel::ChildSpan::internal("transcode reply");
            let (md, raw, _) = reply.into_parts();
            crate::transcode::response::answer(settings, plan, &md, &raw)
        }
        // A degraded answer for an unavailable backend, when the route has one.
        Err(e) if route.fallback.is_some() && crate::cache::fallback::unavailable(&e) => {
            Box::pin(cached::degrade(snap, route, e, &parts)).await
        }
        Err(e) => stream::call_error(snap, route, e),
    }
}

/// The call's gRPC code, endpoint and retries, for the access log.
fn note_call(
    info: &mut RequestInfo,
    result: &Result<tonic::Response<Bytes>, crate::upstream::CallError>,
) {
    let code = match result {
        Ok(_) => Code::Ok,
        Err(crate::upstream::CallError::Refused { code, .. }) => *code,
        Err(crate::upstream::CallError::Upstream { status, .. }) => status.code(),
    };
    info.grpc_code = Some(code as i32);
    match result {
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
}

/// The consumer an API key named, for the access log when no token did.
fn caller_name(extensions: &http::Extensions) -> Option<String> {
    extensions
        .get::<crate::edge::consumers::Identified>()
        .map(|c| c.0.name.to_string())
}

/// The client's address for consistent hashing: the edge's view (trusted
/// proxies applied) when it ran.
fn client_ip(parts: &http::request::Parts) -> Option<std::net::IpAddr> {
    parts
        .extensions
        .get::<crate::edge::client_ip::ClientIp>()
        .map(|c| c.0)
        .or_else(|| crate::upstream::client_ip(&parts.headers, &parts.extensions))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_variables_are_kept_as_places_in_the_path_or_as_decoded_text() {
        let path = "/v1/shelves/12/books/a%2Fb";
        let shelf = Var::of(path, Cow::Borrowed(&path[12..14]));
        assert!(matches!(shelf, Var::At(12, 14)));
        assert!(matches!(shelf.into_text(path), Cow::Borrowed("12")));
        let book = Var::of(path, Cow::Owned("a/b".to_owned()));
        assert_eq!(book.into_text(path), "a/b");
        // Text that is not a slice of the path is kept as it is.
        let elsewhere = String::from("12");
        let copied = Var::of(path, Cow::Borrowed(elsewhere.as_str()));
        assert!(matches!(copied, Var::Decoded(_)));
        assert_eq!(copied.into_text(path), "12");
    }
}
