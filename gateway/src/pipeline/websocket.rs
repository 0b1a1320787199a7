//! The WebSocket bridge: a route with `websocket = true` (a GET bound to a
//! client- or bidirectional-streaming method) upgrades, and the socket
//! carries the call (docs/streaming.md, "WebSocket").
//!
//! The upgrade request is an ordinary routed GET, so every edge layer has
//! run on it before it gets here: CORS, limits, rate limits, and auth (a
//! token from a header, a cookie or the `[auth] query_param`, as browsers
//! cannot set headers on a WebSocket). What is left here:
//!
//! - Origin: a browser sends `Origin` with every WebSocket and no preflight
//!   protects it, so the upgrade is refused (403) unless the route's CORS
//!   policy allows that origin, or, with no CORS policy, unless the origin
//!   is the gateway's own (its host is the request's `Host`). Clients
//!   that send no `Origin` (not browsers) are let through.
//! - The call: opened after the upgrade (a client-streaming backend
//!   answers only when the request ends, so it cannot be waited for
//!   before the 101), through the route's backend as every streamed call
//!   is (`pipeline::stream::open`).
//! - Frames: `transcode::websocket`. An empty text frame ends the request
//!   stream (the half-close); the last frame is the status, then the close.
//!
//! The socket keeps its connection's `max_connections` slot while it lives
//! (`edge::conn::Hold`), and a server shutdown waits for it: the call ends
//! UNAVAILABLE with close code 1001.
//!
//! Back-pressure, both ways: a frame is read from the socket only when the
//! request queue to the backend (at most [`REQUEST_QUEUE`] messages) has
//! room, and the next reply is pulled from the backend only once the last
//! one is written to the socket. Each message is at most
//! `server.max_body_bytes`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::FromRequestParts as _;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt as _, StreamExt as _};
use http::request::Parts;
use http::{header, HeaderMap, Response};
use tokio::sync::{mpsc, oneshot};
use tonic::metadata::MetadataMap;
use tonic::Code;

use crate::edge::conn::Hold;
use crate::error::Error;
use crate::snapshot::{Route, Snapshot};
use crate::transcode::websocket::{status_frame, Frames, OK_STATUS_FRAME};
use crate::upstream::{Outgoing, RequestBody, StreamReply};

/// Request messages read from the socket ahead of the backend. A few let
/// the socket and the backend work at once; more would only hold memory
/// (up to `max_body_bytes` each) that HTTP/2 flow control already bounds.
const REQUEST_QUEUE: usize = 4;

/// How long the gateway waits for the client's answering close frame
/// after its own, before it drops the connection: RFC 6455 asks the
/// server to wait for it, a vanished client must not hold the task.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Close codes (RFC 6455 section 7.4.1), chosen from the call's end.
pub mod close_code {
    /// The call ended OK.
    pub const NORMAL: u16 = 1000;
    /// The gateway is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// A binary frame: messages are JSON text.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// A frame that is not a valid request message (INVALID_ARGUMENT).
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// PERMISSION_DENIED or UNAUTHENTICATED.
    pub const POLICY: u16 = 1008;
    /// A message over `server.max_body_bytes`.
    pub const TOO_BIG: u16 = 1009;
    /// Every other failure: the backend's error, a deadline, the gateway's.
    pub const ERROR: u16 = 1011;
}

/// A GET on a WebSocket route: the 101 that upgrades it, or the error
/// answer refusing it.
pub(super) async fn answer(
    snap: &Arc<Snapshot>,
    route: &Arc<Route>,
    frames: Frames,
    parts: &mut Parts,
    metadata: MetadataMap,
) -> Response<Body> {
    if let Err(e) = check_origin(route, &parts.headers) {
        return e.into_response();
    }
    let upgrade = match WebSocketUpgrade::from_request_parts(parts, &()).await {
        Ok(u) => u,
        Err(rejection) => {
            return Error::BadRequest(format!(
                "{} is a WebSocket: open it with a GET carrying Upgrade: websocket ({})",
                route.template,
                rejection.body_text()
            ))
            .into_response()
        }
    };
    let limit = snap.transcode.max_body_bytes;
    // Half the idle timeout: proxies and load balancers in between close
    // connections idle for about as long as the gateway's own.
    let ping_every = (snap.edge.limits.idle_timeout / 2).max(Duration::from_millis(100));
    let call = Call {
        ping_every,
        snap: snap.clone(),
        route: route.clone(),
        frames: Arc::new(frames),
        hold: parts.extensions.get::<Hold>().cloned(),
        parts: owned(parts),
        metadata,
    };
    upgrade
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_failed_upgrade(|e| tracing::debug!(error = %e, "WebSocket upgrade failed"))
        .on_upgrade(move |socket| call.run(socket))
}

/// The upgrade's `Origin` against the route's CORS policy, or against the
/// request's own host when the route has none.
fn check_origin(route: &Route, headers: &HeaderMap) -> Result<(), Error> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let allowed = match &route.edge.cors {
        Some(policy) => policy.origin_allowed(origin),
        None => same_origin(origin.to_str().unwrap_or(""), headers.get(header::HOST)),
    };
    if allowed {
        Ok(())
    } else {
        Err(Error::CorsRefused(format!(
            "WebSocket refused: origin {} may not open {}",
            origin.to_str().unwrap_or("(not text)"),
            route.template
        )))
    }
}

/// Whether `origin` (`scheme://host[:port]`) names the host the request
/// was sent to.
fn same_origin(origin: &str, host: Option<&http::HeaderValue>) -> bool {
    let Some(host) = host.and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let authority = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"));
    authority.is_some_and(|a| a.eq_ignore_ascii_case(host))
}

/// The request's head, kept for the call that starts after the upgrade:
/// its headers (deadline, hashing) and the edge's findings (client address).
fn owned(parts: &Parts) -> Parts {
    let mut req = http::Request::new(());
    *req.uri_mut() = parts.uri.clone();
    *req.headers_mut() = parts.headers.clone();
    *req.extensions_mut() = parts.extensions.clone();
    req.into_parts().0
}

/// Why the reading side stopped before the call ended.
enum ReadEnd {
    /// The client closed the socket or it broke: the call is cancelled.
    Gone,
    /// A frame the gateway refuses: the call ends with this status.
    Failed(Error),
}

/// How a call ended.
enum Ended {
    Ok,
    Failed(Error),
    /// Nobody to tell.
    Gone,
}

struct Call {
    snap: Arc<Snapshot>,
    route: Arc<Route>,
    frames: Arc<Frames>,
    parts: Parts,
    metadata: MetadataMap,
    /// The connection's slot and shutdown signal, held while the socket lives.
    hold: Option<Hold>,
    /// A socket the gateway has sent nothing on for this long gets a ping.
    ping_every: Duration,
}

type Sink = SplitSink<WebSocket, Message>;

impl Call {
    async fn run(self, socket: WebSocket) {
        let (mut sink, source) = socket.split();
        let (tx, rx) = mpsc::channel(REQUEST_QUEUE);
        let (end_tx, mut end_rx) = oneshot::channel();
        let checks = super::checks::RouteChecks::of(&self.route);
        let mut reader = tokio::spawn(read(source, tx, self.frames.clone(), checks, end_tx));
        let ended = self.call(rx, &mut end_rx, &mut sink).await;
        let last = match ended {
            Ended::Ok => Some((OK_STATUS_FRAME.to_owned(), close_code::NORMAL, "OK")),
            Ended::Failed(e) => {
                tracing::debug!(
                    route = %self.route.template,
                    grpc.code = ?e.code(),
                    error = %e,
                    "WebSocket call failed"
                );
                Some((status_frame(&e), close_code_of(&e), code_name(e.code())))
            }
            Ended::Gone => None,
        };
        if let Some((frame, code, reason)) = last {
            let close = CloseFrame {
                code,
                reason: reason.into(),
            };
            if sink.send(Message::Text(frame.into())).await.is_ok() {
                let _ = sink.send(Message::Close(Some(close))).await;
            }
        }
        // The reader sees the client's answering close and ends.
        if tokio::time::timeout(CLOSE_WAIT, &mut reader).await.is_err() {
            reader.abort();
        }
    }

    /// The call, from opening it to its end, with every reply written to
    /// the socket as it comes.
    async fn call(
        &self,
        rx: mpsc::Receiver<Outgoing>,
        end: &mut oneshot::Receiver<ReadEnd>,
        sink: &mut Sink,
    ) -> Ended {
        let route = &self.route;
        let shaping = &route.plan.shaping;
        // As for NDJSON streams: a bidirectional backend answers as it
        // starts, within `timeout`; a client-streaming one only when the
        // request has ended, so the wait is the stream's own bound.
        let wait = match (route.plan.streams_reply(), shaping.stream_timeout) {
            (true, _) => route.timeout,
            (false, Some(t)) => t,
            (false, None) => super::stream::UNBOUNDED,
        };
        let deadline =
            tokio::time::sleep(shaping.stream_timeout.unwrap_or(super::stream::UNBOUNDED));
        tokio::pin!(deadline);
        // The server stops: the call ends UNAVAILABLE, the close is 1001.
        let stopping = async {
            match &self.hold {
                Some(h) => h.stopping().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(stopping);
        let start = tokio::time::Instant::now() + self.ping_every;
        let mut ping = tokio::time::interval_at(start, self.ping_every);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let messages = Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx));
        let opened = super::stream::open(
            route,
            RequestBody::Many(Some(messages)),
            self.metadata.clone(),
            &self.parts,
            wait,
        );
        tokio::pin!(opened);
        let reply = loop {
            tokio::select! {
                biased;
                r = &mut *end => return from_reader(r),
                () = &mut deadline => return Ended::Failed(self.deadline_exceeded()),
                () = &mut stopping => return Ended::Failed(Error::ShuttingDown),
                r = &mut opened => break r,
                _ = ping.tick() => {
                    if sink.send(Message::Ping(Default::default())).await.is_err() {
                        return Ended::Gone;
                    }
                }
            }
        };
        let StreamReply {
            messages: mut stream,
            attempted,
            ..
        } = match reply {
            Ok(r) => r,
            Err(e) => {
                return Ended::Failed(match end.try_recv() {
                    Ok(ReadEnd::Failed(e)) => e,
                    _ => super::stream::call_failure(&self.snap, route, e),
                })
            }
        };
        loop {
            let next = tokio::select! {
                biased;
                r = &mut *end => return from_reader(r),
                () = &mut deadline => return Ended::Failed(self.deadline_exceeded()),
                () = &mut stopping => return Ended::Failed(Error::ShuttingDown),
                m = stream.message() => m,
                _ = ping.tick() => {
                    if sink.send(Message::Ping(Default::default())).await.is_err() {
                        return Ended::Gone;
                    }
                    continue;
                }
            };
            match next {
                Ok(Some(raw)) => {
                    let frame = match self.frames.reply(&raw) {
                        Ok(f) => f,
                        Err(e) => return Ended::Failed(e),
                    };
                    // Awaited: the next reply is pulled once this one is
                    // on its way to the client.
                    if sink.send(Message::Text(frame.into())).await.is_err() {
                        return Ended::Gone;
                    }
                    ping.reset();
                }
                Ok(None) => return Ended::Ok,
                Err(status) => {
                    // A refused frame resets the call: report the frame.
                    if let Ok(ReadEnd::Failed(e)) = end.try_recv() {
                        return Ended::Failed(e);
                    }
                    return Ended::Failed(super::stream::backend_failure(
                        &self.snap,
                        route,
                        &attempted.addr,
                        &status,
                    ));
                }
            }
        }
    }

    fn deadline_exceeded(&self) -> Error {
        Error::DeadlineExceeded("the stream did not end within its stream_timeout".to_owned())
    }
}

fn from_reader(r: Result<ReadEnd, oneshot::error::RecvError>) -> Ended {
    match r {
        Ok(ReadEnd::Failed(e)) => Ended::Failed(e),
        // The reader ended without a word: it panicked.
        Ok(ReadEnd::Gone) | Err(_) => Ended::Gone,
    }
}

/// Where the request stream is.
enum Request {
    Open(mpsc::Sender<Outgoing>),
    /// The client sent the end-of-stream frame.
    HalfClosed,
    /// The call ended (the backend answered, or failed) before the request
    /// did: later frames are dropped, and the reply side says how it ended.
    CallOver,
}

/// Reads the client's frames into request messages, one at a time, each
/// when the queue to the backend has room. It speaks up (`end`) only when
/// the client goes away or sends a frame the gateway refuses; otherwise it
/// reads on until the socket closes, so that the reply side's status is
/// what ends the call.
async fn read(
    mut source: SplitStream<WebSocket>,
    tx: mpsc::Sender<Outgoing>,
    frames: Arc<Frames>,
    checks: super::checks::RouteChecks,
    end: oneshot::Sender<ReadEnd>,
) {
    let mut request = Request::Open(tx);
    let mut n: u64 = 0;
    let fail = |end: oneshot::Sender<ReadEnd>, request: Request, e: Error| {
        // The reply side hears of it first, so that it reports this status
        // rather than the reset that follows; the reset keeps the backend
        // from taking a truncated request for a whole one.
        let _ = end.send(ReadEnd::Failed(e));
        if let Request::Open(tx) = request {
            let _ = tx.try_send(Outgoing::Abort);
        }
    };
    loop {
        let message = match source.next().await {
            None | Some(Ok(Message::Close(_))) => {
                let _ = end.send(ReadEnd::Gone);
                return;
            }
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                if too_long(&e) {
                    let limit = frames.max_bytes();
                    let e = Error::TooLarge(format!(
                        "frame {} of the request is larger than the limit of {limit} bytes",
                        n + 1
                    ));
                    return fail(end, request, e);
                }
                tracing::debug!(error = %e, "WebSocket read failed");
                let _ = end.send(ReadEnd::Gone);
                return;
            }
        };
        let text = match message {
            Message::Text(text) => text,
            Message::Binary(_) if !matches!(request, Request::CallOver) => {
                let e = Error::UnsupportedMediaType(format!(
                    "frame {} is binary; send each request message as a JSON text frame",
                    n + 1
                ));
                return fail(end, request, e);
            }
            // Pings are answered by the protocol layer.
            _ => continue,
        };
        let is_end = text.as_str().trim().is_empty();
        if !is_end {
            n += 1;
        }
        match (&request, is_end) {
            (Request::CallOver, _) => {}
            (Request::Open(_), true) => {
                // The half-close: the request stream ends here.
                request = Request::HalfClosed;
            }
            (Request::HalfClosed, true) => {
                let e = Error::BadRequest(
                    "a second end-of-stream frame: the request stream has ended".to_owned(),
                );
                return fail(end, request, e);
            }
            (Request::HalfClosed, false) => {
                let e = Error::BadRequest(format!(
                    "frame {n} came after the end-of-stream frame (an empty text frame)"
                ));
                return fail(end, request, e);
            }
            (Request::Open(sender), false) => match frames
                .request(n, text.as_str())
                .and_then(|m| checks.check(&m).map(|()| m))
            {
                Ok(m) => {
                    if sender.send(Outgoing::Message(m)).await.is_err() {
                        request = Request::CallOver;
                    }
                }
                Err(e) => return fail(end, request, e),
            },
        }
    }
}

/// Whether a read failed on a message over `max_message_size`.
fn too_long(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(tungstenite::Error::Capacity(_)) = s.downcast_ref::<tungstenite::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// The close code that goes with a failed call's status.
pub fn close_code_of(e: &Error) -> u16 {
    match e {
        Error::TooLarge(_) => close_code::TOO_BIG,
        Error::UnsupportedMediaType(_) => close_code::UNSUPPORTED_DATA,
        Error::ShuttingDown => close_code::GOING_AWAY,
        e => match e.code() {
            Code::InvalidArgument => close_code::INVALID_PAYLOAD,
            Code::PermissionDenied | Code::Unauthenticated => close_code::POLICY,
            _ => close_code::ERROR,
        },
    }
}

/// The close frame's reason: the status code's name (the status frame
/// before it has the message).
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_origin_compares_the_origin_host_with_the_host_header() {
        let host = http::HeaderValue::from_static("gw.example.com:8080");
        assert!(same_origin("http://gw.example.com:8080", Some(&host)));
        assert!(same_origin("https://GW.example.com:8080", Some(&host)));
        assert!(!same_origin("http://gw.example.com", Some(&host)));
        assert!(!same_origin("http://evil.example.com:8080", Some(&host)));
        assert!(!same_origin("null", Some(&host)));
        assert!(!same_origin("http://gw.example.com:8080", None));
    }

    #[test]
    fn close_codes_follow_the_status() {
        assert_eq!(close_code_of(&Error::TooLarge("x".into())), 1009);
        assert_eq!(close_code_of(&Error::BadRequest("x".into())), 1007);
        assert_eq!(
            close_code_of(&Error::UnsupportedMediaType("x".into())),
            1003
        );
        assert_eq!(close_code_of(&Error::CorsRefused("x".into())), 1008);
        assert_eq!(close_code_of(&Error::Internal("x".into())), 1011);
        let aborted = Error::Refused {
            code: Code::Aborted,
            message: "x".into(),
        };
        assert_eq!(close_code_of(&aborted), 1011);
    }
}
