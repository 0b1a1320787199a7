//! The calls of requests the transcoder takes as streams (client and
//! bidirectional streaming, raw and multipart bodies) and of
//! server-streaming methods: transcode's request side, the call through the
//! route's backend (`upstream::Backend::stream`, or `call` for one message
//! to a unary method), then transcode's reply side.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt as _;
use http::request::Parts;
use http::{header, Response};
use tonic::metadata::MetadataMap;
use tonic::Code;

use crate::error::{BackendStatus, Error};
use crate::snapshot::{Route, Snapshot};
use crate::transcode::stream::{Abort, Streamed, StreamedReply};
use crate::upstream::{CallError, Outgoing, RequestBody, StreamReply, StreamRequest};

/// A request the transcoder takes as a stream (see
/// `transcode::stream::takes_body`), answered.
pub(super) async fn answer(
    snap: &Arc<Snapshot>,
    route: &Arc<Route>,
    vars: &[Cow<'_, str>],
    parts: &Parts,
    body: Body,
    metadata: MetadataMap,
) -> Response<Body> {
    let settings = &snap.transcode;
    match crate::transcode::stream::request(settings, &route.plan, vars, parts, body).await {
        Ok(Streamed::One(message)) => {
            let message = Bytes::from(prost::Message::encode_to_vec(&message));
            if let Err(e) = super::checks::validate(route, &message) {
                return error_response(e);
            }
            if route.plan.streams_reply() {
                server_stream(snap, route, message, metadata, parts).await
            } else {
                unary(snap, route, message, metadata, parts).await
            }
        }
        Ok(Streamed::Many(messages)) => {
            let messages = super::checks::validated(route, messages);
            call_streaming_with(snap, route, messages, metadata, parts).await
        }
        Err(s) => error_response(s),
    }
}

/// One message to a unary method, through the backend as on the JSON path.
async fn unary(
    snap: &Snapshot,
    route: &Route,
    message: Bytes,
    metadata: MetadataMap,
    parts: &Parts,
) -> Response<Body> {
    let result = route
        .backend
        .call(crate::upstream::CallRequest {
            path: route.grpc_path.clone(),
            body: message,
            metadata,
            timeout: crate::upstream::deadline::effective(route.timeout, &parts.headers),
            retry: crate::upstream::RouteRetry::for_route(&route.method, route.retry_on.as_deref()),
            headers: &parts.headers,
            client_ip: super::client_ip(parts),
            metrics: &route.metrics,
        })
        .await;
    match result {
        Ok(reply) => {
            let (md, raw, _) = reply.into_parts();
            crate::transcode::response::answer(&snap.transcode, &route.plan, &md, &raw)
        }
        Err(e) => call_error(snap, route, e),
    }
}

/// Calls a server-streaming method and streams its replies to the client.
///
/// Like grpc-gateway, the answer's headers wait for the first reply, so a
/// stream that fails before its first message gets an ordinary error answer
/// (its HTTP status and a google.rpc.Status body); a failure after that is
/// written in the framing (an `error` line or event).
pub(super) async fn server_stream(
    snap: &Snapshot,
    route: &Route,
    message: Bytes,
    metadata: MetadataMap,
    parts: &Parts,
) -> Response<Body> {
    let reply = match open(
        route,
        RequestBody::One(message),
        metadata,
        parts,
        route.timeout,
    )
    .await
    {
        Ok(r) => r,
        Err(e) => return call_error(snap, route, e),
    };
    // One deadline for the whole stream, first message included.
    let deadline = route
        .plan
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
    let reply = StreamedReply {
        metadata: md,
        first,
        messages: Box::pin(stream),
        deadline,
        request_error: None,
    };
    answered(snap, route, parts, reply, attempted)
}

/// The streamed answer, naming the endpoint that serves it for the access log.
fn answered(
    snap: &Snapshot,
    route: &Route,
    parts: &Parts,
    reply: StreamedReply,
    attempted: crate::upstream::Attempted,
) -> Response<Body> {
    match crate::transcode::stream::reply(&snap.transcode, &route.plan, &parts.headers, reply) {
        Ok(mut resp) => {
            resp.extensions_mut().insert(attempted);
            resp
        }
        Err(s) => error_response(s),
    }
}

/// The request stream as the backend call sends it: the transcoder's first
/// failure is recorded in `abort` (to be reported instead of the reset it
/// causes) and resets the call.
fn outgoing(
    messages: BoxStream<'static, Result<Bytes, Error>>,
    abort: Abort,
) -> BoxStream<'static, Outgoing> {
    Box::pin(messages.map(move |item| match item {
        Ok(message) => Outgoing::Message(message),
        Err(status) => {
            abort.record(status);
            Outgoing::Abort
        }
    }))
}

/// Sends `messages` on a client or bidirectional call and answers with its reply.
async fn call_streaming_with(
    snap: &Snapshot,
    route: &Route,
    messages: BoxStream<'static, Result<Bytes, Error>>,
    metadata: MetadataMap,
    parts: &Parts,
) -> Response<Body> {
    let abort = Abort::default();
    let messages = outgoing(messages, abort.clone());
    let bidi = route.plan.streams_reply();
    // A client-streaming backend answers (headers included) only once the
    // request has ended, so the wait for its answer is the stream's own
    // bound; a bidirectional one answers as it starts, within `timeout`.
    let wait = match (bidi, route.plan.shaping.stream_timeout) {
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
            return match abort.take() {
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
        let result = match route.plan.shaping.stream_timeout {
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
                let mut resp =
                    crate::transcode::response::answer(&snap.transcode, &route.plan, &md, &raw);
                resp.extensions_mut().insert(attempted);
                resp
            }
            Ok(None) => {
                Error::BadGateway("the backend answered OK without a reply message".to_owned())
                    .into_response()
            }
            Err(status) => match abort.take() {
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
    let reply = StreamedReply {
        metadata: md,
        first: None,
        messages: Box::pin(stream),
        deadline: route
            .plan
            .shaping
            .stream_timeout
            .map(|t| tokio::time::Instant::now() + t),
        request_error: Some(abort.error()),
    };
    answered(snap, route, parts, reply, attempted)
}

/// Opens a streaming call through the route's backend: the same balancer,
/// breaker, concurrency limit, outlier detection, health and metrics as a
/// unary call (see `upstream::Backend::stream`). `wait` bounds the wait for
/// the backend's answer to begin.
pub(super) async fn open(
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
            stream_timeout: route.plan.shaping.stream_timeout,
            retry: crate::upstream::RouteRetry::for_route(&route.method, route.retry_on.as_deref()),
            headers: &parts.headers,
            client_ip: super::client_ip(parts),
            metrics: route.metrics.clone(),
        })
        .await
}

/// A call that failed before its answer began (unary or streaming): its
/// status, details and `Grpc-Metadata-*`; transport failures name the
/// backend and the instance.
pub(crate) fn call_error(snap: &Snapshot, route: &Route, e: CallError) -> Response<Body> {
    call_failure(snap, route, e).into_response()
}

/// [`call_error`]'s error, for answers that are not HTTP responses (the
/// last frame of a WebSocket).
pub(super) fn call_failure(snap: &Snapshot, route: &Route, e: CallError) -> Error {
    match e {
        CallError::Refused { code, message } => {
            tracing::debug!(
                route = %route.template,
                grpc.method = route.plan.grpc_method.full_name(),
                grpc.code = ?code,
                error = %message,
                "backend call refused"
            );
            Error::Refused { code, message }
        }
        CallError::Upstream { status, addr, .. } => backend_failure(snap, route, &addr, &status),
    }
}

/// No bound: how long a client-streaming call without a `stream_timeout`
/// may run (an upload takes as long as the client takes to send it).
pub(super) const UNBOUNDED: Duration = Duration::from_secs(365 * 24 * 3600);

fn deadline_error(route: &Route) -> Response<Body> {
    Error::DeadlineExceeded(crate::upstream::deadline::exceeded_message(
        &route.backend.name,
        route.timeout,
    ))
    .into_response()
}

fn error_response(e: Error) -> Response<Body> {
    e.into_response()
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
    backend_failure(snap, route, addr, status).into_response()
}

/// [`backend_error`]'s error.
pub(super) fn backend_failure(
    snap: &Snapshot,
    route: &Route,
    addr: &str,
    status: &tonic::Status,
) -> Error {
    tracing::debug!(
        route = %route.template,
        grpc.method = route.plan.grpc_method.full_name(),
        upstream.addr = %addr,
        grpc.code = ?status.code(),
        "backend call failed"
    );
    let mut s = BackendStatus::from_grpc(status, &snap.transcode.pool);
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
    crate::transcode::metadata::response_metadata(status.metadata(), &mut s.headers);
    Error::Backend(Box::new(s))
}
