//! The HTTP/2 client of one endpoint: a connection per runtime worker
//! thread, driven straight through the `h2` crate. Every call to the
//! endpoint goes over it: unary calls, streaming calls (client, server and
//! bidirectional) and the active health checks, so a check probes the very
//! connections that carry the traffic.
//!
//! Why not tonic's `Channel`: a call on it passes a tower `Buffer` worker
//! task and hyper's client task before it reaches h2, and hyper spawns one
//! more task per request for the body. Here the calling task opens the
//! stream and reads the reply itself; the only hand-off is to the
//! connection task that owns the socket (and, for a streamed request, to
//! the task that sends its messages). On the load bench that removed about
//! a fifth of the gateway's CPU per small GET.
//!
//! Why a connection per worker: h2 keeps a connection's streams behind one
//! mutex, which every call on the connection and its I/O task take several
//! times. With a single connection, all requests to a backend on all workers
//! would share that lock; with one per worker, as Envoy keeps its pools,
//! a lock is shared only by the calls one thread runs. Connections open
//! lazily, so a worker that never calls an endpoint never connects to it.
//!
//! What it keeps from a tonic channel: lazy connection on first use and
//! reconnection after the connection ends, the connect timeout, TCP_NODELAY,
//! HTTP/2 keep-alive pings while calls are open (30 s, 10 s to answer), the
//! reply size limit, `grpc-timeout`, and failures classified the way
//! retries and outlier detection expect: a failure to connect never sent the
//! request (`sent: false`); a transport failure after that carries the error
//! as the status's source, with no metadata.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use base64::Engine as _;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderValue};
use tonic::metadata::MetadataMap;
use tonic::Code;

/// A failed attempt, and whether the request may have reached the backend.
#[derive(Debug)]
pub(crate) struct AttemptError {
    pub(crate) status: tonic::Status,
    /// False when the call provably never left the gateway (connect failure).
    pub(crate) sent: bool,
}

/// hyper's client defaults, which tonic's channel used: large replies
/// should not wait on window updates every 64 KiB.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

const USER_AGENT: &str = concat!("gateway/", env!("CARGO_PKG_VERSION"));

/// gRPC status-details headers may come with or without padding.
const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// The unary client of one endpoint.
#[derive(Debug)]
pub(crate) struct Client {
    addr: String,
    authority: Authority,
    connect_timeout: Duration,
    max_reply: usize,
    /// The backend's `compression = "gzip"`: request messages gzipped.
    gzip: bool,
    /// The backend's `tls`: connections are TLS (ALPN h2) when set.
    tls: Option<std::sync::Arc<super::tls::BackendTls>>,
    /// Ping interval while calls are open, and how long a ping may go
    /// unanswered before the connection counts as dead.
    keepalive: (Duration, Duration),
    /// One per serving thread (`crate::workers`), or per worker thread of
    /// the runtime that makes the first call (the endpoint is built before
    /// the runtime exists); a thread calls on lane `thread_slot() % lanes`.
    /// A lane's connection is opened, and its task spawned, by the first
    /// call on it, so on serving threads each thread's backend connections
    /// are driven by that thread alone.
    lanes: OnceLock<Box<[Lane]>>,
}

/// One connection of the client, and the lock for opening it.
#[derive(Debug)]
struct Lane {
    /// The live connection; `None` until the first call, and replaced when
    /// it ends. Calls load it without locking.
    conn: ArcSwapOption<Conn>,
    /// Held while connecting, so that calls arriving together open one
    /// connection, not one each.
    connecting: tokio::sync::Mutex<()>,
}

impl Lane {
    fn many(n: usize) -> Box<[Lane]> {
        (0..n.max(1))
            .map(|_| Lane {
                conn: ArcSwapOption::empty(),
                connecting: tokio::sync::Mutex::new(()),
            })
            .collect()
    }

    fn live(&self) -> Option<Arc<Conn>> {
        let guard = self.conn.load();
        match &*guard {
            Some(c) if !c.shared.closed.load(Ordering::Relaxed) => Some(c.clone()),
            _ => None,
        }
    }
}

/// A number per OS thread: a serving thread's own (`crate::workers`), so
/// each has its lane; else handed out in the order threads first ask, so
/// a multi-thread runtime's workers, which make the calls, get consecutive
/// ones and different lanes.
fn thread_slot() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SLOT: usize = crate::workers::index()
            .unwrap_or_else(|| NEXT.fetch_add(1, Ordering::Relaxed));
    }
    SLOT.with(|s| *s)
}

#[derive(Debug)]
struct Conn {
    send: h2::client::SendRequest<Bytes>,
    shared: Arc<ConnShared>,
}

/// What the connection task and the calls both see.
#[derive(Debug, Default)]
struct ConnShared {
    /// Set by the connection task when the connection has ended.
    closed: AtomicBool,
    /// Set on the first byte read from the backend. Every HTTP/2 server
    /// sends its SETTINGS first, before it reads a request (RFC 9113
    /// section 3.4; h2, grpc-go, grpc-core and Envoy all do so on accept),
    /// so a connection that failed before a byte came back carried no
    /// request the backend processed: an instance that accepts and closes
    /// at once, a socket that was dead when the request was written.
    heard: AtomicBool,
    /// Calls open on the connection; keep-alive pings only while non-zero,
    /// as hyper does by default (gRPC servers penalise pings on idle
    /// connections).
    open_calls: AtomicU32,
}

/// Counts a call as open on its connection until dropped.
struct OpenCall(Arc<ConnShared>);

impl Drop for OpenCall {
    fn drop(&mut self) {
        self.0.open_calls.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Client {
    /// `addr` is `host:port`, already checked by the endpoint.
    pub(crate) fn new(
        addr: &str,
        dial: super::dial::Dial,
        max_reply: usize,
    ) -> Result<Client, String> {
        let authority = Authority::try_from(addr).map_err(|e| e.to_string())?;
        Ok(Client {
            addr: addr.to_owned(),
            authority,
            connect_timeout: dial.connect_timeout,
            max_reply,
            gzip: dial.compression.is_some(),
            tls: dial.tls,
            keepalive: (KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT),
            lanes: OnceLock::new(),
        })
    }

    /// Every lane, made on first use.
    fn lanes(&self) -> &[Lane] {
        self.lanes.get_or_init(|| {
            let workers = crate::workers::count().unwrap_or_else(|| {
                tokio::runtime::Handle::try_current()
                    .map(|h| h.metrics().num_workers())
                    .unwrap_or(1)
            });
            Lane::many(workers)
        })
    }

    /// The calling thread's lane.
    fn lane(&self) -> &Lane {
        let lanes = self.lanes();
        &lanes[thread_slot() % lanes.len()]
    }

    /// One call with an encoded request message. `deadline` goes out as
    /// `grpc-timeout`; the caller bounds the wait (dropping this future
    /// resets the stream).
    pub(crate) async fn call(
        &self,
        path: PathAndQuery,
        message: Bytes,
        metadata: MetadataMap,
        deadline: Duration,
    ) -> Result<tonic::Response<Bytes>, AttemptError> {
        self.call_on(self.lane(), path, message, metadata, Some(deadline))
            .await
    }

    /// [`Client::call`] on one lane's connection.
    async fn call_on(
        &self,
        lane: &Lane,
        path: PathAndQuery,
        message: Bytes,
        metadata: MetadataMap,
        deadline: Option<Duration>,
    ) -> Result<tonic::Response<Bytes>, AttemptError> {
        let Opened {
            response,
            mut body,
            conn,
            open: _open,
        } = self.open_on(lane, path, metadata, deadline).await?;
        // One buffer for the 5-byte gRPC frame header and the message: the
        // copy costs less than h2 writing a separate DATA frame for 5 bytes.
        if let Err(e) = body.send_data(frame(&message, self.gzip), true) {
            return Err(self.after_send(e, &conn));
        }
        let response = response.await.map_err(|e| self.after_send(e, &conn))?;
        drop(body);
        read_reply(response, self.max_reply)
            .await
            .map_err(|status| AttemptError { status, sent: true })
    }

    /// Opens a streaming call on the calling thread's connection and waits
    /// for the backend's response headers; a streamed request's messages
    /// go out meanwhile (see [`pump`]). `deadline`, if any, goes out as
    /// `grpc-timeout`; the caller bounds the wait for the headers. A
    /// streamed request is taken from `body` only once the call is open, so
    /// a call that could not open may be tried again elsewhere.
    pub(crate) async fn stream(
        &self,
        path: PathAndQuery,
        metadata: MetadataMap,
        deadline: Option<Duration>,
        body: &mut RequestBody,
    ) -> Result<Streamed, AttemptError> {
        let Opened {
            response,
            body: mut send,
            conn,
            open,
        } = self.open_on(self.lane(), path, metadata, deadline).await?;
        let sender = match body {
            RequestBody::One(message) => {
                if let Err(e) = send.send_data(frame(message, self.gzip), true) {
                    return Err(self.after_send(e, &conn));
                }
                None
            }
            RequestBody::Many(messages) => {
                let messages = messages.take().expect("a streamed request is sent once");
                Some(AbortOnDrop(tokio::spawn(pump(send, messages, self.gzip))))
            }
        };
        let response = response.await.map_err(|e| self.after_send(e, &conn))?;
        let (parts, reply) = response.into_parts();
        let headers = parts.headers;
        // Trailers-only: the status is in the headers and there is no body.
        if headers.contains_key(&GRPC_STATUS) {
            return match status_from(&headers) {
                Some(s) if s.code() != Code::Ok => Err(AttemptError {
                    status: s,
                    sent: true,
                }),
                // OK without a message: an empty stream, with the
                // metadata the backend sent beside its status.
                Some(s) => Ok(Streamed {
                    headers: s.metadata().clone(),
                    messages: Messages::ended(self.max_reply),
                }),
                None => Ok(Streamed {
                    headers: MetadataMap::new(),
                    messages: Messages::ended(self.max_reply),
                }),
            };
        }
        check_grpc_answer(parts.status, &headers)
            .map_err(|status| AttemptError { status, sent: true })?;
        let encoding = ReplyEncoding::of(&headers);
        Ok(Streamed {
            headers: MetadataMap::from_headers(headers_metadata(headers)),
            messages: Messages {
                body: Some(reply),
                chunk: Bytes::new(),
                buf: BytesMut::new(),
                max_reply: self.max_reply,
                encoding,
                trailers: None,
                _open: Some(open),
                _sender: sender,
            },
        })
    }

    /// One unary call over every live connection of this client (a health
    /// check: each connection that carries traffic must answer), or over
    /// the calling thread's when none is open. A connection that fails is
    /// retired, so traffic moves to a new one.
    pub(crate) async fn call_each(
        &self,
        path: PathAndQuery,
        message: Bytes,
        timeout: Duration,
    ) -> Result<tonic::Response<Bytes>, tonic::Status> {
        let lanes = self.lanes();
        let live: Vec<&Lane> = lanes.iter().filter(|l| l.live().is_some()).collect();
        let lanes = if live.is_empty() {
            vec![self.lane()]
        } else {
            live
        };
        let mut last = None;
        for lane in lanes {
            let call = self.call_on(
                lane,
                path.clone(),
                message.clone(),
                MetadataMap::new(),
                Some(timeout),
            );
            let result = match tokio::time::timeout(timeout, call).await {
                Ok(Ok(reply)) => Ok(reply),
                Ok(Err(e)) => Err(e.status),
                Err(_) => Err(tonic::Status::deadline_exceeded(format!(
                    "no answer within {timeout:?}"
                ))),
            };
            match result {
                Ok(reply) => last = Some(reply),
                Err(status) => {
                    if let Some(conn) = lane.live() {
                        conn.shared.closed.store(true, Ordering::Relaxed);
                    }
                    return Err(status);
                }
            }
        }
        Ok(last.expect("at least one lane"))
    }

    /// Opens a stream on the lane's connection (connecting first if need
    /// be) and sends the request headers.
    async fn open_on(
        &self,
        lane: &Lane,
        path: PathAndQuery,
        metadata: MetadataMap,
        deadline: Option<Duration>,
    ) -> Result<Opened, AttemptError> {
        let request = self.request(path, metadata, deadline);
        let mut fresh = false;
        let (conn, mut send) = loop {
            let conn = self.connection(lane).await?;
            let mut send = conn.send.clone();
            match poll_fn(|cx| send.poll_ready(cx)).await {
                Ok(()) => break (conn, send),
                // The connection is closing (a GOAWAY, a socket the backend
                // closed while idle) and nothing was sent: once, on a new
                // connection, before it counts as a failure.
                Err(e) => {
                    conn.shared.closed.store(true, Ordering::Relaxed);
                    if fresh {
                        return Err(AttemptError {
                            status: transport_status(&self.addr, e),
                            sent: false,
                        });
                    }
                    fresh = true;
                }
            }
        };
        conn.shared.open_calls.fetch_add(1, Ordering::Relaxed);
        let open = OpenCall(conn.shared.clone());
        let (response, body) = match send.send_request(request, false) {
            Ok(pair) => pair,
            // Refused before a frame was written: the connection closed
            // between the check above and now, or (reason-less, not I/O)
            // h2 refused the request itself, which says nothing about the
            // connection.
            Err(e) => {
                if e.is_go_away() || e.is_io() || e.reason().is_some() {
                    conn.shared.closed.store(true, Ordering::Relaxed);
                }
                return Err(AttemptError {
                    status: transport_status(&self.addr, e),
                    sent: false,
                });
            }
        };
        Ok(Opened {
            response,
            body,
            conn: conn.shared.clone(),
            open,
        })
    }

    /// A stream that failed before its answer began: unsent when HTTP/2
    /// says the backend did not process it (RFC 9113 section 8.7):
    /// REFUSED_STREAM, or a GOAWAY whose last stream id is below this
    /// stream's (h2 fails exactly those streams with the peer's GOAWAY; the
    /// others run on, and fail as a broken connection if it then closes);
    /// or when the backend never sent a byte on the connection (see
    /// [`ConnShared::heard`]).
    fn after_send(&self, e: h2::Error, conn: &ConnShared) -> AttemptError {
        let refused = e.reason() == Some(h2::Reason::REFUSED_STREAM);
        let above_goaway = e.is_go_away() && e.is_remote();
        let sent = !(refused || above_goaway || !conn.heard.load(Ordering::Relaxed));
        AttemptError {
            status: transport_status(&self.addr, e),
            sent,
        }
    }

    fn request(
        &self,
        path: PathAndQuery,
        metadata: MetadataMap,
        deadline: Option<Duration>,
    ) -> http::Request<()> {
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(if self.tls.is_some() {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        });
        uri.authority = Some(self.authority.clone());
        uri.path_and_query = Some(path);
        let mut request = http::Request::new(());
        *request.version_mut() = http::Version::HTTP_2;
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = http::Uri::from_parts(uri).expect("scheme, authority and path");
        // The metadata was built from allow-listed headers without the
        // reserved ones (see `transcode::metadata`), so it becomes the
        // header map as it is.
        let headers = request.headers_mut();
        *headers = metadata.into_headers();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
        headers.insert(
            http::header::USER_AGENT,
            HeaderValue::from_static(USER_AGENT),
        );
        if let Some(deadline) = deadline {
            headers.insert(GRPC_TIMEOUT.clone(), grpc_timeout_value(deadline));
        }
        if self.gzip {
            let gzip = HeaderValue::from_static(crate::encoding::grpc::GZIP);
            headers.insert(GRPC_ENCODING.clone(), gzip.clone());
            headers.insert(GRPC_ACCEPT_ENCODING.clone(), gzip);
        }
        request
    }

    /// The lane's live connection, connecting first if there is none.
    async fn connection(&self, lane: &Lane) -> Result<Arc<Conn>, AttemptError> {
        match lane.live() {
            Some(conn) => Ok(conn),
            // Boxed: the connect and handshake state, inline, would make
            // every call's future larger (and every move of it a longer copy)
            // for what happens once per connection.
            None => Box::pin(self.reconnect(lane)).await,
        }
    }

    /// Connects the lane, unless another call did while this one waited.
    async fn reconnect(&self, lane: &Lane) -> Result<Arc<Conn>, AttemptError> {
        let _connecting = lane.connecting.lock().await;
        if let Some(conn) = lane.live() {
            return Ok(conn);
        }
        let conn = Arc::new(self.connect().await.map_err(|e| AttemptError {
            status: e,
            sent: false,
        })?);
        lane.conn.store(Some(conn.clone()));
        Ok(conn)
    }

    async fn connect(&self) -> Result<Conn, tonic::Status> {
        let shared = Arc::new(ConnShared::default());
        let handshake = async {
            let tcp = tokio::net::TcpStream::connect(self.addr.as_str()).await?;
            tcp.set_nodelay(true)?;
            let io = match &self.tls {
                Some(tls) => tls.connect(&self.addr, tcp).await?,
                None => super::tls::Io::Plain(tcp),
            };
            let tcp = Heard {
                io,
                shared: shared.clone(),
            };
            h2::client::Builder::new()
                .initial_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONNECTION_WINDOW)
                .enable_push(false)
                .handshake::<_, Bytes>(tcp)
                .await
                .map_err(std::io::Error::other)
        };
        let (send, mut connection) =
            match tokio::time::timeout(self.connect_timeout, handshake).await {
                Ok(Ok(pair)) => pair,
                Ok(Err(e)) => {
                    let mut status =
                        tonic::Status::unavailable(format!("connecting to {}: {e}", self.addr));
                    status.set_source(Arc::new(e));
                    return Err(status);
                }
                Err(_) => {
                    return Err(tonic::Status::unavailable(format!(
                        "connecting to {}: no connection within the connect timeout of {:?}",
                        self.addr, self.connect_timeout
                    )))
                }
            };
        let pings = connection.ping_pong();
        let task_shared = shared.clone();
        let addr = self.addr.clone();
        let keepalive = self.keepalive;
        tokio::spawn(async move {
            let why = drive(&mut connection, pings, &task_shared, keepalive).await;
            task_shared.closed.store(true, Ordering::Relaxed);
            tracing::debug!(upstream.addr = %addr, "backend connection ended: {why}");
        });
        Ok(Conn { send, shared })
    }
}

/// The backend's socket, noting in [`ConnShared::heard`] the first byte
/// read from it; a relaxed load per read after that.
struct Heard<T> {
    io: T,
    shared: Arc<ConnShared>,
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Heard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before && !self.shared.heard.load(Ordering::Relaxed) {
            self.shared.heard.store(true, Ordering::Relaxed);
        }
        read
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Heard<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Runs the connection (its reads and writes) until it ends, with
/// keep-alive pings while calls are open; says why it ended.
async fn drive<T>(
    connection: &mut h2::client::Connection<T, Bytes>,
    pings: Option<h2::PingPong>,
    shared: &ConnShared,
    (interval, timeout): (Duration, Duration),
) -> String
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Some(mut pings) = pings else {
        return match connection.await {
            Ok(()) => "closed".into(),
            Err(e) => e.to_string(),
        };
    };
    let mut next = tokio::time::Instant::now() + interval;
    let mut awaiting_pong = false;
    loop {
        tokio::select! {
            end = &mut *connection => {
                return match end {
                    Ok(()) => "closed".into(),
                    Err(e) => e.to_string(),
                };
            }
            () = tokio::time::sleep_until(next) => {
                if awaiting_pong {
                    return format!("no answer to a keep-alive ping within {timeout:?}");
                }
                if shared.open_calls.load(Ordering::Relaxed) == 0 {
                    next = tokio::time::Instant::now() + interval;
                    continue;
                }
                if let Err(e) = pings.send_ping(h2::Ping::opaque()) {
                    return e.to_string();
                }
                awaiting_pong = true;
                next = tokio::time::Instant::now() + timeout;
            }
            pong = poll_fn(|cx| pings.poll_pong(cx)), if awaiting_pong => {
                if let Err(e) = pong {
                    return e.to_string();
                }
                awaiting_pong = false;
                next = tokio::time::Instant::now() + interval;
            }
        }
    }
}

/// A transport failure as a status: tonic's code for the h2 error, the
/// error kept as the source (which is how retries and the error body tell
/// a transport failure from a status the backend sent).
fn transport_status(addr: &str, e: h2::Error) -> tonic::Status {
    let code = match e.reason() {
        Some(h2::Reason::REFUSED_STREAM) => Code::Unavailable,
        Some(h2::Reason::CANCEL) => Code::Cancelled,
        Some(h2::Reason::ENHANCE_YOUR_CALM) => Code::ResourceExhausted,
        Some(h2::Reason::INADEQUATE_SECURITY) => Code::PermissionDenied,
        Some(_) => Code::Internal,
        // Not a protocol error: the socket failed or closed.
        None => Code::Unavailable,
    };
    let mut status = tonic::Status::new(code, format!("the connection to {addr} failed"));
    status.set_source(Arc::new(e));
    status
}

/// Reads a unary reply: headers, exactly one message, trailers.
async fn read_reply(
    response: http::Response<h2::RecvStream>,
    max_reply: usize,
) -> Result<tonic::Response<Bytes>, tonic::Status> {
    let (parts, mut body) = response.into_parts();
    let mut headers = parts.headers;
    // Trailers-only: the status is in the headers and there is no body.
    if headers.contains_key(&GRPC_STATUS) {
        return Err(match status_from(&headers) {
            Some(s) if s.code() != Code::Ok => s,
            _ => tonic::Status::internal("the backend answered OK without a reply message"),
        });
    }
    check_grpc_answer(parts.status, &headers)?;
    let encoding = ReplyEncoding::of(&headers);
    let message = read_message(&mut body, max_reply, encoding).await?;
    let trailers = match body.trailers().await {
        Ok(Some(t)) => t,
        Ok(None) => {
            return Err(tonic::Status::internal(
                "the backend ended the reply without trailers (no grpc-status)",
            ))
        }
        Err(e) => return Err(reply_failed(e)),
    };
    // The common case, OK, without building a status from the trailers.
    let ok = trailers
        .get(&GRPC_STATUS)
        .map(|v| Code::from_bytes(v.as_bytes()) == Code::Ok);
    match ok {
        Some(true) => {}
        Some(false) => {
            // The header metadata the backend sent before failing goes back
            // with the error, as on success (grpc-go's SendHeader, say).
            let mut status = status_from(&trailers).expect("has grpc-status");
            status
                .metadata_mut()
                .as_mut()
                .extend(headers_metadata(headers));
            return Err(status);
        }
        None => {
            return Err(tonic::Status::internal(
                "the backend's trailers carry no grpc-status",
            ))
        }
    }
    let Some(message) = message else {
        return Err(tonic::Status::internal(
            "the backend answered OK without a reply message",
        ));
    };
    // Headers and trailers together, as tonic gives them for unary calls.
    for (name, value) in trailers {
        if let Some(name) = name {
            headers.append(name, value);
        }
    }
    Ok(tonic::Response::from_parts(
        MetadataMap::from_headers(headers),
        message,
        http::Extensions::new(),
    ))
}

/// Response headers as an error status's metadata: without the content
/// type, which is the framing's, not something the backend set.
fn headers_metadata(mut headers: HeaderMap) -> HeaderMap {
    headers.remove(http::header::CONTENT_TYPE);
    headers
}

/// A gRPC answer's head: HTTP 200 with a gRPC content type (a proxy or a
/// web server may answer otherwise).
fn check_grpc_answer(status: http::StatusCode, headers: &HeaderMap) -> Result<(), tonic::Status> {
    if status != http::StatusCode::OK {
        return Err(from_http_status(status));
    }
    let grpc = headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if !grpc {
        return Err(tonic::Status::internal(format!(
            "the backend answered with content-type {:?}, not application/grpc; is it a gRPC server?",
            headers.get(http::header::CONTENT_TYPE)
        )));
    }
    Ok(())
}

/// A message in gRPC framing: compressed flag, length, bytes; gzipped
/// when `gzip` (sent as it is should gzip fail, which writing to memory
/// does not).
fn frame(message: &[u8], gzip: bool) -> Bytes {
    if gzip {
        if let Ok(packed) = crate::encoding::grpc::gzip(message) {
            let mut frame = BytesMut::with_capacity(5 + packed.len());
            frame.put_u8(1);
            frame.put_u32(packed.len() as u32);
            frame.extend_from_slice(&packed);
            return frame.freeze();
        }
    }
    let mut frame = BytesMut::with_capacity(5 + message.len());
    frame.put_u8(0);
    frame.put_u32(message.len() as u32);
    frame.extend_from_slice(message);
    frame.freeze()
}

/// A call whose request headers went out: the answer to come, the request
/// body's send half, and the call's place among its connection's open calls.
struct Opened {
    response: h2::client::ResponseFuture,
    body: h2::SendStream<Bytes>,
    conn: Arc<ConnShared>,
    open: OpenCall,
}

/// A streaming call the backend answered: its response headers (as
/// metadata) and its messages.
pub(crate) struct Streamed {
    pub(crate) headers: MetadataMap,
    pub(crate) messages: Messages,
}

/// Aborts a task when dropped: the task sending a streamed request's
/// messages ends with the call, however the call ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The reply messages of a streaming call, read as the consumer asks for
/// them: HTTP/2 flow control then slows the backend to the consumer's pace.
/// Dropping it before the end resets the stream (the backend sees
/// CANCELLED) and stops the request's sender.
pub(crate) struct Messages {
    body: Option<h2::RecvStream>,
    /// The last DATA chunk received while `buf` was empty: the messages
    /// whole in it are sliced from it, not copied (a backend sends most
    /// messages whole in one chunk, often several in one); what is left
    /// of it, the start of a message, moves to `buf`.
    chunk: Bytes,
    /// The start of a message split across chunks, gathered.
    buf: BytesMut,
    max_reply: usize,
    /// The reply's `grpc-encoding`, for messages flagged compressed.
    encoding: ReplyEncoding,
    /// The trailers of a stream that ended OK, without `grpc-status`.
    trailers: Option<HeaderMap>,
    _open: Option<OpenCall>,
    _sender: Option<AbortOnDrop>,
}

impl std::fmt::Debug for Messages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Messages")
            .field("ended", &self.body.is_none())
            .finish()
    }
}

impl Messages {
    /// A stream the backend ended without a message (trailers-only OK).
    fn ended(max_reply: usize) -> Messages {
        Messages {
            body: None,
            chunk: Bytes::new(),
            buf: BytesMut::new(),
            max_reply,
            encoding: ReplyEncoding::Identity,
            trailers: None,
            _open: None,
            _sender: None,
        }
    }

    /// The next message; `None` after an OK end; an error status (from the
    /// trailers, or a transport failure) ends the stream too.
    pub(crate) fn poll_message(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, tonic::Status>>> {
        loop {
            if self.body.is_none() {
                return Poll::Ready(None);
            }
            match self.take_frame() {
                Ok(Some(message)) => return Poll::Ready(Some(Ok(message))),
                Ok(None) => {}
                Err(status) => return self.end(Some(status)),
            }
            let body = self.body.as_mut().expect("checked above");
            match std::task::ready!(body.poll_data(cx)) {
                Some(Ok(chunk)) => {
                    let _ = body.flow_control().release_capacity(chunk.len());
                    self.received(chunk);
                }
                Some(Err(e)) => return self.end(Some(reply_failed(e))),
                None => {
                    if !self.buf.is_empty() || !self.chunk.is_empty() {
                        let status = tonic::Status::internal(
                            "the backend's stream ended inside a gRPC message",
                        );
                        return self.end(Some(status));
                    }
                    let status = match std::task::ready!(body.poll_trailers(cx)) {
                        Ok(Some(trailers)) => match status_from(&trailers) {
                            Some(s) if s.code() == Code::Ok => {
                                self.trailers = Some(s.metadata().clone().into_headers());
                                None
                            }
                            Some(s) => Some(s),
                            None => Some(tonic::Status::internal(
                                "the backend's trailers carry no grpc-status",
                            )),
                        },
                        Ok(None) => Some(tonic::Status::internal(
                            "the backend ended the stream without trailers (no grpc-status)",
                        )),
                        Err(e) => Some(reply_failed(e)),
                    };
                    return self.end(status);
                }
            }
        }
    }

    /// The trailers of a stream that ended OK (its trailing metadata).
    pub(crate) fn trailers(&mut self) -> Option<HeaderMap> {
        self.trailers.take()
    }

    /// Ends the stream: later polls give `None`.
    fn end(&mut self, status: Option<tonic::Status>) -> Poll<Option<Result<Bytes, tonic::Status>>> {
        self.body = None;
        self._open = None;
        self._sender = None;
        Poll::Ready(status.map(Err))
    }

    /// A DATA chunk, kept as it is when nothing is pending before it.
    fn received(&mut self, chunk: Bytes) {
        if self.buf.is_empty() && self.chunk.is_empty() {
            self.chunk = chunk;
        } else {
            self.buf.extend_from_slice(&chunk);
        }
    }

    /// A whole message from what has been received, if one is there.
    fn take_frame(&mut self) -> Result<Option<Bytes>, tonic::Status> {
        if !self.chunk.is_empty() {
            if let Some((compressed, len)) = self.frame_head(&self.chunk)? {
                if self.chunk.len() >= 5 + len {
                    self.chunk.advance(5);
                    let message = self.chunk.split_to(len);
                    return self.message(compressed, message);
                }
            }
            // A message that continues in the next chunk.
            self.buf.extend_from_slice(&self.chunk);
            self.chunk = Bytes::new();
        }
        let Some((compressed, len)) = self.frame_head(&self.buf)? else {
            return Ok(None);
        };
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        self.buf.advance(5);
        let message = self.buf.split_to(len).freeze();
        self.message(compressed, message)
    }

    /// A message's flag (compressed) and length, once its 5-byte prefix is
    /// in `data`; a length over the limit ends the stream.
    fn frame_head(&self, data: &[u8]) -> Result<Option<(bool, usize)>, tonic::Status> {
        if data.len() < 5 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
        if len > self.max_reply {
            return Err(tonic::Status::resource_exhausted(format!(
                "a message of the backend's stream is {len} bytes, over the gateway's limit of {}",
                self.max_reply
            )));
        }
        Ok(Some((data[0] != 0, len)))
    }

    /// A message taken whole, decompressed if it is flagged so.
    fn message(&self, compressed: bool, message: Bytes) -> Result<Option<Bytes>, tonic::Status> {
        if compressed {
            return self.encoding.decode(&message, self.max_reply).map(Some);
        }
        Ok(Some(message))
    }
}

/// A streaming call's request: one message (kept, so the call can be
/// retried), or messages as they come (sent once).
pub enum RequestBody {
    One(Bytes),
    Many(Option<futures_util::stream::BoxStream<'static, Outgoing>>),
}

/// One item of a streamed request: an encoded message, or the end of a
/// request that failed on the gateway's side (a malformed line, a body that
/// could not be read).
#[derive(Debug)]
pub enum Outgoing {
    Message(Bytes),
    Abort,
}

/// Sends a streamed request's messages as they come, each when HTTP/2 flow
/// control lets it go (h2 would otherwise buffer without bound), then ends
/// the request. An `Abort` resets the stream with INTERNAL_ERROR: a plain
/// cancel (CANCEL) would not do, as hyper-based servers read a request body
/// reset with CANCEL as a normal end and would act on a truncated request.
async fn pump(
    mut send: h2::SendStream<Bytes>,
    mut messages: futures_util::stream::BoxStream<'static, Outgoing>,
    gzip: bool,
) {
    use futures_util::StreamExt as _;
    while let Some(item) = messages.next().await {
        let mut data = match item {
            Outgoing::Message(m) => frame(&m, gzip),
            Outgoing::Abort => {
                send.send_reset(h2::Reason::INTERNAL_ERROR);
                return;
            }
        };
        while !data.is_empty() {
            send.reserve_capacity(data.len());
            match poll_fn(|cx| send.poll_capacity(cx)).await {
                Some(Ok(0)) => continue,
                Some(Ok(n)) => {
                    let chunk = data.split_to(n.min(data.len()));
                    if send.send_data(chunk, false).is_err() {
                        return;
                    }
                }
                // The stream was reset or the connection ended: the
                // reply side reports it.
                Some(Err(_)) | None => return,
            }
        }
    }
    let _ = send.send_data(Bytes::new(), true);
}

/// The reply's one message (`None` if the body has none), without copying
/// when it arrives in one DATA frame.
async fn read_message(
    body: &mut h2::RecvStream,
    max_reply: usize,
    encoding: ReplyEncoding,
) -> Result<Option<Bytes>, tonic::Status> {
    let mut buf = BytesMut::new();
    let mut whole: Option<Bytes> = None;
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(reply_failed)?;
        let _ = body.flow_control().release_capacity(chunk.len());
        if whole.is_none() && buf.is_empty() {
            whole = Some(chunk);
        } else {
            if let Some(first) = whole.take() {
                buf.extend_from_slice(&first);
            }
            buf.extend_from_slice(&chunk);
        }
        let have = whole.as_ref().map_or(buf.len(), Bytes::len);
        if have >= 5 {
            let head = whole.as_deref().unwrap_or(&buf[..]);
            let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
            if len > max_reply {
                return Err(tonic::Status::resource_exhausted(format!(
                    "the backend's reply is {len} bytes, over the gateway's limit of {max_reply}"
                )));
            }
            if have > 5 + len {
                return Err(tonic::Status::internal(
                    "the backend sent more than one message in reply to a unary call",
                ));
            }
        }
    }
    let mut frame = match whole {
        Some(b) => b,
        None if buf.is_empty() => return Ok(None),
        None => buf.freeze(),
    };
    if frame.len() < 5 {
        return Err(tonic::Status::internal(
            "the backend's reply ended inside a gRPC frame header",
        ));
    }
    let compressed = frame[0];
    let len = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
    if frame.len() != 5 + len {
        return Err(tonic::Status::internal(format!(
            "the backend's reply ended after {} of {len} message bytes",
            frame.len() - 5
        )));
    }
    frame.advance(5);
    if compressed != 0 {
        return encoding.decode(&frame, max_reply).map(Some);
    }
    Ok(Some(frame))
}

/// A reply's `grpc-encoding`: what a message flagged compressed is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReplyEncoding {
    /// None, or `identity`: a compressed message is a protocol error.
    Identity,
    Gzip,
    /// One the gateway does not read (it never announces one).
    Other,
}

impl ReplyEncoding {
    fn of(headers: &HeaderMap) -> ReplyEncoding {
        match headers.get(&GRPC_ENCODING).map(HeaderValue::as_bytes) {
            None => ReplyEncoding::Identity,
            Some(b) if b.eq_ignore_ascii_case(b"identity") => ReplyEncoding::Identity,
            Some(b) if b.eq_ignore_ascii_case(b"gzip") => ReplyEncoding::Gzip,
            Some(_) => ReplyEncoding::Other,
        }
    }

    /// A message flagged compressed, decoded (up to `max_reply` bytes).
    fn decode(self, message: &[u8], max_reply: usize) -> Result<Bytes, tonic::Status> {
        match self {
            ReplyEncoding::Gzip => crate::encoding::grpc::gunzip(message, max_reply)
                .map(Bytes::from)
                .map_err(tonic::Status::internal),
            ReplyEncoding::Identity => Err(tonic::Status::internal(
                "the backend compressed its reply without naming the compression (no grpc-encoding)",
            )),
            ReplyEncoding::Other => Err(tonic::Status::internal(
                "the backend compressed its reply with a grpc-encoding the gateway does not read (it reads gzip)",
            )),
        }
    }
}

fn reply_failed(e: h2::Error) -> tonic::Status {
    let mut status = tonic::Status::new(
        if e.reason() == Some(h2::Reason::CANCEL) {
            Code::Cancelled
        } else {
            Code::Unavailable
        },
        "the backend's reply was cut off",
    );
    status.set_source(Arc::new(e));
    status
}

/// `grpc-status`, `grpc-message` (percent-encoded) and
/// `grpc-status-details-bin` (base64) as a status whose metadata is the
/// rest of the map; `None` without `grpc-status`. Never panics on bad
/// values (tonic's `from_header_map` does on bad base64).
fn status_from(map: &HeaderMap) -> Option<tonic::Status> {
    let code = Code::from_bytes(map.get(&GRPC_STATUS)?.as_bytes());
    let message = map
        .get(&GRPC_MESSAGE)
        .map(|v| {
            percent_encoding::percent_decode(v.as_bytes())
                .decode_utf8_lossy()
                .into_owned()
        })
        .unwrap_or_default();
    let details = map
        .get(&GRPC_STATUS_DETAILS)
        .and_then(|v| BASE64.decode(v.as_bytes()).ok())
        .map(Bytes::from)
        .unwrap_or_default();
    let mut rest = map.clone();
    rest.remove(&GRPC_STATUS);
    rest.remove(&GRPC_MESSAGE);
    rest.remove(&GRPC_STATUS_DETAILS);
    Some(tonic::Status::with_details_and_metadata(
        code,
        message,
        details,
        MetadataMap::from_headers(rest),
    ))
}

/// The gRPC spec's mapping for an HTTP status without a gRPC status
/// (a proxy in front of the backend answered, say).
fn from_http_status(status: http::StatusCode) -> tonic::Status {
    let code = match status.as_u16() {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502 | 503 | 504 => Code::Unavailable,
        _ => Code::Unknown,
    };
    tonic::Status::new(
        code,
        format!("the backend answered HTTP {status} without a gRPC status"),
    )
}

/// A `grpc-timeout` value, rounded down to the coarsest unit that still
/// gives at least three digits (under 1% early, never late). The first
/// attempt of every call then sends the same value ("4999m" for a 5 s
/// deadline), which HPACK sends as a one-byte index; at nanosecond
/// precision each call sent a new value that went through Huffman coding
/// and into the connection's header table, evicting the headers that do
/// repeat. Sub-millisecond precision means nothing across a network hop.
fn grpc_timeout(d: Duration) -> String {
    let (value, unit) = grpc_timeout_parts(d);
    format!("{value}{unit}")
}

// Names made once: a lookup by `&str` parses and hashes the name each time.
static GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");
static GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
static GRPC_ENCODING: http::HeaderName = http::HeaderName::from_static("grpc-encoding");
static GRPC_ACCEPT_ENCODING: http::HeaderName =
    http::HeaderName::from_static("grpc-accept-encoding");
static GRPC_MESSAGE: http::HeaderName = http::HeaderName::from_static("grpc-message");
static GRPC_STATUS_DETAILS: http::HeaderName =
    http::HeaderName::from_static("grpc-status-details-bin");

/// [`grpc_timeout`] as a header value. Each thread keeps the last one it
/// made: the first attempts of the calls on a route all send the same value.
fn grpc_timeout_value(d: Duration) -> HeaderValue {
    thread_local! {
        static LAST: std::cell::RefCell<Option<((u128, char), HeaderValue)>> =
            const { std::cell::RefCell::new(None) };
    }
    let parts = grpc_timeout_parts(d);
    LAST.with_borrow_mut(|last| match last {
        Some((p, v)) if *p == parts => v.clone(),
        _ => {
            let v = HeaderValue::try_from(grpc_timeout(d)).expect("digits and a unit letter");
            *last = Some((parts, v.clone()));
            v
        }
    })
}

/// [`grpc_timeout`]'s number and unit.
fn grpc_timeout_parts(d: Duration) -> (u128, char) {
    const MAX: u128 = 99_999_999;
    const UNITS: [(u128, char); 6] = [
        (3_600_000_000_000, 'H'),
        (60_000_000_000, 'M'),
        (1_000_000_000, 'S'),
        (1_000_000, 'm'),
        (1_000, 'u'),
        (1, 'n'),
    ];
    let nanos = d.as_nanos();
    let (value, unit) = UNITS
        .iter()
        .map(|&(per, unit)| (nanos / per, unit))
        .find(|&(value, _)| value >= 100)
        .unwrap_or((nanos, 'n'));
    (value.min(MAX), unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the scripted backend does with each call.
    #[derive(Clone, Copy, Debug)]
    enum Reply {
        /// OK: the reply message split over two DATA frames, a header and
        /// a trailer of metadata.
        Ok,
        /// Trailers-only NOT_FOUND with a percent-encoded message.
        NotFound,
        TwoMessages,
        Compressed,
        /// OK, the message gzipped under `grpc-encoding: gzip`.
        Gzipped,
        /// A frame header that declares 1 MiB.
        Huge,
        Http503,
        Html,
        NoTrailers,
        /// Answers OK, then closes the connection.
        OkThenClose,
    }

    /// A real HTTP/2 server on loopback (the `h2` crate's server side) that
    /// answers every call as `reply` says, and records each request's
    /// headers and body.
    async fn backend(
        reply: Reply,
    ) -> (
        String,
        Arc<std::sync::Mutex<Vec<(http::request::Parts, Bytes)>>>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let log = log.clone();
                tokio::spawn(async move {
                    let mut conn = h2::server::handshake(tcp).await.unwrap();
                    while let Some(Ok((req, mut respond))) = conn.accept().await {
                        let log = log.clone();
                        let handle = async move {
                            let (parts, mut body) = req.into_parts();
                            let mut got = BytesMut::new();
                            while let Some(Ok(chunk)) = body.data().await {
                                let _ = body.flow_control().release_capacity(chunk.len());
                                got.extend_from_slice(&chunk);
                            }
                            log.lock().unwrap().push((parts, got.freeze()));
                            answer(reply, &mut respond);
                        };
                        // A body's frames arrive only while `accept` polls
                        // the connection: calls sharing it are served on
                        // tasks of their own.
                        if !matches!(reply, Reply::OkThenClose) {
                            tokio::spawn(handle);
                            continue;
                        }
                        handle.await;
                        // Let the frames go out, then drop the connection.
                        let _ = tokio::time::timeout(
                            Duration::from_millis(50),
                            poll_fn(|cx| conn.poll_closed(cx)),
                        )
                        .await;
                        return;
                    }
                });
            }
        });
        (addr, seen)
    }

    fn answer(reply: Reply, respond: &mut h2::server::SendResponse<Bytes>) {
        let head = |status: u16, ct: &'static str| {
            http::Response::builder()
                .status(status)
                .header("content-type", ct)
                .header("x-from-headers", "h")
                .body(())
                .unwrap()
        };
        let trailers = |code: &'static str| {
            let mut t = HeaderMap::new();
            t.insert("grpc-status", HeaderValue::from_static(code));
            t.insert("x-from-trailers", HeaderValue::from_static("t"));
            t
        };
        let frame = |flag: u8, msg: &[u8]| {
            let mut b = BytesMut::new();
            b.put_u8(flag);
            b.put_u32(msg.len() as u32);
            b.extend_from_slice(msg);
            b.freeze()
        };
        match reply {
            Reply::Ok | Reply::OkThenClose => {
                let mut s = respond
                    .send_response(head(200, "application/grpc"), false)
                    .unwrap();
                let f = frame(0, b"reply-bytes");
                s.send_data(f.slice(..3), false).unwrap();
                s.send_data(f.slice(3..), false).unwrap();
                s.send_trailers(trailers("0")).unwrap();
            }
            Reply::NotFound => {
                let r = http::Response::builder()
                    .status(200)
                    .header("content-type", "application/grpc")
                    .header("grpc-status", "5")
                    .header("grpc-message", "no%20such%20book")
                    .body(())
                    .unwrap();
                respond.send_response(r, true).unwrap();
            }
            Reply::TwoMessages => {
                let mut s = respond
                    .send_response(head(200, "application/grpc"), false)
                    .unwrap();
                s.send_data(frame(0, b"one"), false).unwrap();
                s.send_data(frame(0, b"two"), false).unwrap();
                s.send_trailers(trailers("0")).unwrap();
            }
            Reply::Compressed => {
                let mut s = respond
                    .send_response(head(200, "application/grpc"), false)
                    .unwrap();
                s.send_data(frame(1, b"zz"), false).unwrap();
                s.send_trailers(trailers("0")).unwrap();
            }
            Reply::Gzipped => {
                let mut r = head(200, "application/grpc");
                r.headers_mut()
                    .insert("grpc-encoding", HeaderValue::from_static("gzip"));
                let mut s = respond.send_response(r, false).unwrap();
                let packed = crate::encoding::grpc::gzip(b"reply-bytes").unwrap();
                s.send_data(frame(1, &packed), false).unwrap();
                s.send_trailers(trailers("0")).unwrap();
            }
            Reply::Huge => {
                let mut s = respond
                    .send_response(head(200, "application/grpc"), false)
                    .unwrap();
                let mut b = BytesMut::new();
                b.put_u8(0);
                b.put_u32(1 << 20);
                s.send_data(b.freeze(), false).unwrap();
                s.send_trailers(trailers("0")).unwrap();
            }
            Reply::Http503 => {
                respond
                    .send_response(head(503, "text/plain"), true)
                    .unwrap();
            }
            Reply::Html => {
                let mut s = respond
                    .send_response(head(200, "text/html"), false)
                    .unwrap();
                s.send_data(Bytes::from_static(b"<html>"), true).unwrap();
            }
            Reply::NoTrailers => {
                let mut s = respond
                    .send_response(head(200, "application/grpc"), false)
                    .unwrap();
                s.send_data(frame(0, b"x"), true).unwrap();
            }
        }
    }

    async fn call(client: &Client) -> Result<tonic::Response<Bytes>, AttemptError> {
        let mut md = MetadataMap::new();
        md.insert("x-request-id", "abc".parse().unwrap());
        client
            .call(
                PathAndQuery::from_static("/pkg.Svc/Get"),
                Bytes::from_static(b"request-bytes"),
                md,
                Duration::from_millis(1500),
            )
            .await
    }

    fn client(addr: &str, max_reply: usize) -> Client {
        Client::new(addr, Duration::from_secs(2).into(), max_reply).unwrap()
    }

    #[tokio::test]
    async fn a_gzip_backend_gets_compressed_messages_and_its_gzip_replies_decode() {
        let (addr, seen) = backend(Reply::Gzipped).await;
        let dial = super::super::dial::Dial {
            connect_timeout: Duration::from_secs(2),
            compression: Some(crate::encoding::grpc::MessageCompression::Gzip),
            tls: None,
        };
        let c = Client::new(&addr, dial, 1024).unwrap();
        let reply = call(&c).await.unwrap();
        assert_eq!(reply.get_ref().as_ref(), b"reply-bytes");
        let (parts, body) = seen.lock().unwrap()[0].clone();
        assert_eq!(parts.headers["grpc-encoding"], "gzip");
        assert_eq!(parts.headers["grpc-accept-encoding"], "gzip");
        assert_eq!(body[0], 1, "the compressed flag");
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        assert_eq!(len, body.len() - 5);
        let message = crate::encoding::grpc::gunzip(&body[5..], 1024).unwrap();
        assert_eq!(message, b"request-bytes");
        // Without the option, messages go as they are, and a gzip reply
        // still decodes.
        let (addr, seen) = backend(Reply::Gzipped).await;
        let reply = call(&client(&addr, 1024)).await.unwrap();
        assert_eq!(reply.get_ref().as_ref(), b"reply-bytes");
        let (parts, body) = seen.lock().unwrap()[0].clone();
        assert!(parts.headers.get("grpc-encoding").is_none());
        assert!(parts.headers.get("grpc-accept-encoding").is_none());
        assert_eq!(&body[..], &frame(b"request-bytes", false)[..]);
        // The reply limit holds for the compressed message (and for what it
        // decodes to: `encoding::grpc::gunzip`).
        let (addr, _) = backend(Reply::Gzipped).await;
        let e = call(&client(&addr, 5)).await.unwrap_err();
        assert!(
            e.status.message().contains("over the gateway's limit"),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn a_call_sends_grpc_framing_and_returns_the_message_with_headers_and_trailers() {
        let (addr, seen) = backend(Reply::Ok).await;
        let c = client(&addr, 1024);
        let reply = call(&c).await.unwrap();
        assert_eq!(reply.get_ref().as_ref(), b"reply-bytes");
        assert_eq!(reply.metadata().get("x-from-headers").unwrap(), "h");
        assert_eq!(reply.metadata().get("x-from-trailers").unwrap(), "t");

        let (parts, body) = seen.lock().unwrap().pop().unwrap();
        assert_eq!(parts.method, http::Method::POST);
        assert_eq!(parts.uri.path(), "/pkg.Svc/Get");
        assert_eq!(parts.uri.authority().unwrap().as_str(), addr);
        assert_eq!(parts.headers["content-type"], "application/grpc");
        assert_eq!(parts.headers["te"], "trailers");
        assert_eq!(parts.headers["grpc-timeout"], "1500m");
        assert_eq!(parts.headers["x-request-id"], "abc");
        assert_eq!(&body[..5], &[0, 0, 0, 0, 13]);
        assert_eq!(&body[5..], b"request-bytes");
    }

    #[tokio::test]
    async fn backend_statuses_and_protocol_faults_become_specific_statuses() {
        let cases = [
            (Reply::NotFound, Code::NotFound, "no such book"),
            (Reply::TwoMessages, Code::Internal, "more than one message"),
            (Reply::Compressed, Code::Internal, "compressed"),
            (
                Reply::Huge,
                Code::ResourceExhausted,
                "1048576 bytes, over the gateway's limit of 1024",
            ),
            (Reply::Http503, Code::Unavailable, "HTTP 503"),
            (Reply::Html, Code::Internal, "not application/grpc"),
            (Reply::NoTrailers, Code::Internal, "without trailers"),
        ];
        for (reply, code, text) in cases {
            let (addr, _) = backend(reply).await;
            let err = call(&client(&addr, 1024)).await.unwrap_err();
            assert_eq!(err.status.code(), code, "{reply:?}: {:?}", err.status);
            assert!(
                err.status.message().contains(text),
                "{reply:?}: {:?}",
                err.status
            );
            assert!(err.sent, "{reply:?}");
            // Answers from the backend are not transport failures.
            assert!(
                std::error::Error::source(&err.status).is_none(),
                "{reply:?}"
            );
        }
    }

    #[tokio::test]
    async fn an_unanswered_keepalive_ping_ends_a_call_to_a_silent_peer() {
        // A peer that accepts the connection and then says nothing (a
        // hung process, a dropped route): no reply, no pong.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                held.push(tcp);
            }
        });
        let mut c = client(&addr, 1024);
        c.keepalive = (Duration::from_millis(100), Duration::from_millis(100));
        let started = std::time::Instant::now();
        let err = tokio::time::timeout(Duration::from_secs(5), call(&c))
            .await
            .expect("the ping timeout ends the call, not the test's timeout")
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(err.status.code(), Code::Unavailable, "{:?}", err.status);
        // Not even its HTTP/2 SETTINGS came: it never read the request.
        assert!(!err.sent);
        assert!(std::error::Error::source(&err.status).is_some());
    }

    #[tokio::test]
    async fn a_refused_connection_is_unsent_and_a_closed_one_is_replaced() {
        // Nothing listens on a port just released.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = call(&client(&format!("127.0.0.1:{port}"), 1024))
            .await
            .unwrap_err();
        assert!(!err.sent);
        assert_eq!(err.status.code(), Code::Unavailable);
        assert!(
            err.status.message().starts_with("connecting to 127.0.0.1:"),
            "{:?}",
            err.status
        );

        // The backend closes the connection after each answer: every call
        // still succeeds, each on a new connection.
        let (addr, seen) = backend(Reply::OkThenClose).await;
        let c = client(&addr, 1024);
        for _ in 0..3 {
            call(&c).await.unwrap();
            // Let the connection task see the close.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(seen.lock().unwrap().len(), 3);

        // The race where a call picks the connection before its task has
        // marked it closed: h2 refuses the stream before anything is
        // written, and the call goes out on a new connection instead.
        let old = c.lane().conn.load_full().unwrap();
        old.shared.closed.store(false, Ordering::Relaxed);
        call(&c).await.unwrap();
        assert_eq!(seen.lock().unwrap().len(), 4);
        assert!(!Arc::ptr_eq(&old, &c.lane().conn.load_full().unwrap()));
    }

    /// Threads on different lanes call on different connections; threads
    /// on one lane share its connection.
    #[test]
    fn each_worker_thread_calls_on_its_own_connection() {
        const THREADS: usize = 8;
        let backend_rt = tokio::runtime::Runtime::new().unwrap();
        let (addr, seen) = backend_rt.block_on(backend(Reply::Ok));
        let c = Arc::new(client(&addr, 1024));
        c.lanes.set(Lane::many(2)).unwrap();
        // Every thread keeps its runtime (and so the connection tasks it
        // spawned) running until all have made their calls.
        let all_called = Arc::new(tokio::sync::Barrier::new(THREADS));
        let threads: Vec<_> = (0..THREADS)
            .map(|_| {
                let (c, all_called) = (c.clone(), all_called.clone());
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    rt.block_on(async {
                        call(&c).await.unwrap();
                        call(&c).await.unwrap();
                        let conn = c.lane().conn.load_full().unwrap();
                        // Bounded: a thread that failed never arrives.
                        tokio::time::timeout(Duration::from_secs(10), all_called.wait())
                            .await
                            .expect("every thread made its calls");
                        (thread_slot() % 2, conn)
                    })
                })
            })
            .collect();
        let got: Vec<(usize, Arc<Conn>)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(seen.lock().unwrap().len(), 2 * THREADS);
        // Slots are consecutive, so 8 threads land on both lanes unless other
        // tests' threads interleave in a most unlikely pattern.
        assert!(got.iter().any(|(l, _)| *l == 0) && got.iter().any(|(l, _)| *l == 1));
        for (lane_a, conn_a) in &got {
            for (lane_b, conn_b) in &got {
                assert_eq!(lane_a == lane_b, Arc::ptr_eq(conn_a, conn_b));
            }
        }
    }

    #[test]
    fn grpc_timeout_rounds_down_to_three_digits_of_the_coarsest_unit() {
        let ms = Duration::from_millis;
        assert_eq!(grpc_timeout(ms(50)), "50000u");
        assert_eq!(grpc_timeout(ms(500)), "500m");
        assert_eq!(grpc_timeout(Duration::from_secs(5)), "5000m");
        // What a first attempt sends: a hair under the deadline.
        assert_eq!(grpc_timeout(ms(5000) - Duration::from_nanos(1)), "4999m");
        assert_eq!(grpc_timeout(ms(99)), "99000u");
        assert_eq!(grpc_timeout(Duration::from_nanos(42)), "42n");
        assert_eq!(grpc_timeout(Duration::ZERO), "0n");
        assert_eq!(grpc_timeout(Duration::from_secs(1000)), "1000S");
        assert_eq!(grpc_timeout(Duration::from_secs(200_000)), "3333M");
        assert_eq!(grpc_timeout(Duration::from_secs(400_000_000)), "111111H");
        assert_eq!(grpc_timeout(Duration::MAX), "99999999H");
        // The cached header value follows the value.
        for d in [
            ms(5000),
            ms(5000),
            ms(50),
            ms(5000) - Duration::from_nanos(1),
        ] {
            assert_eq!(grpc_timeout_value(d), grpc_timeout(d).as_str());
        }
        // Never later than the deadline, never more than 1% early, and
        // always what the parser reads back.
        for n in [1u64, 99, 100, 12_345, 987_654_321, 3_599_999_999_999] {
            let d = Duration::from_nanos(n);
            let back =
                crate::upstream::deadline::parse_grpc_timeout(&grpc_timeout(d)).expect("parses");
            assert!(
                back <= d && back.as_nanos() * 100 >= d.as_nanos() * 99,
                "{n}: {back:?}"
            );
        }
    }

    #[test]
    fn status_headers_decode_without_panicking_on_bad_values() {
        let mut map = HeaderMap::new();
        map.insert("grpc-status", HeaderValue::from_static("5"));
        map.insert(
            "grpc-message",
            HeaderValue::from_static("book%20not%20found"),
        );
        map.insert("grpc-status-details-bin", HeaderValue::from_static("!!!"));
        map.insert("x-shelf", HeaderValue::from_static("7"));
        let s = status_from(&map).expect("has grpc-status");
        assert_eq!(s.code(), Code::NotFound);
        assert_eq!(s.message(), "book not found");
        assert!(s.details().is_empty());
        assert_eq!(s.metadata().get("x-shelf").unwrap(), "7");
        assert!(s.metadata().get("grpc-status").is_none());

        // Unpadded base64 details are accepted (gRPC allows both).
        map.insert("grpc-status-details-bin", HeaderValue::from_static("CAU"));
        assert_eq!(status_from(&map).unwrap().details(), &[8u8, 5][..]);
    }

    #[test]
    fn http_statuses_map_as_the_grpc_spec_says() {
        assert_eq!(
            from_http_status(http::StatusCode::SERVICE_UNAVAILABLE).code(),
            Code::Unavailable
        );
        assert_eq!(
            from_http_status(http::StatusCode::NOT_FOUND).code(),
            Code::Unimplemented
        );
        assert_eq!(
            from_http_status(http::StatusCode::IM_A_TEAPOT).code(),
            Code::Unknown
        );
    }

    /// Every message taken from `messages` as `chunks` deliver them.
    fn taken(messages: &mut Messages, chunks: &[&[u8]]) -> Result<Vec<Bytes>, tonic::Status> {
        let mut out = Vec::new();
        for chunk in chunks {
            messages.received(Bytes::copy_from_slice(chunk));
            while let Some(m) = messages.take_frame()? {
                out.push(m);
            }
        }
        Ok(out)
    }

    #[test]
    fn stream_messages_are_taken_however_the_chunks_cut_them() {
        let wire: Vec<u8> = [&b"one"[..], b"", b"three", b"fourteen bytes"]
            .iter()
            .flat_map(|m| frame(m, false).to_vec())
            .collect();
        let expected: Vec<Bytes> = ["one", "", "three", "fourteen bytes"]
            .iter()
            .map(|m| Bytes::copy_from_slice(m.as_bytes()))
            .collect();
        // Every cut into two chunks, and one chunk per byte.
        for cut in 0..=wire.len() {
            let mut m = Messages::ended(1024);
            let got = taken(&mut m, &[&wire[..cut], &wire[cut..]]).unwrap();
            assert_eq!(got, expected, "cut at {cut}");
            assert!(m.chunk.is_empty() && m.buf.is_empty());
        }
        let bytes: Vec<&[u8]> = wire.chunks(1).collect();
        let mut m = Messages::ended(1024);
        assert_eq!(taken(&mut m, &bytes).unwrap(), expected);
        // A message whole in its chunk is a slice of it, not a copy.
        let mut m = Messages::ended(1024);
        let chunk = Bytes::from(wire.clone());
        m.received(chunk.clone());
        let first = m.take_frame().unwrap().unwrap();
        assert_eq!(first.as_ptr(), chunk[5..].as_ptr());
    }

    #[test]
    fn a_stream_message_over_the_limit_is_refused_from_its_prefix() {
        let mut m = Messages::ended(8);
        let big = frame(b"nine bytes", false);
        let e = taken(&mut m, &[&big[..5]]).unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted);
        assert!(e.message().contains("over the gateway's limit of 8"));
    }
}
