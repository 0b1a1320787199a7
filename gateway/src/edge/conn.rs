//! The accept loop: HTTP/1.1 and HTTP/2 (hyper-util's auto builder) with a
//! cap on open connections, the slow-client and idle timeouts, the peer
//! address in every request, and graceful shutdown.
//!
//! axum::serve has none of the connection bounds, hence this loop.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use http::StatusCode;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt as _;

use super::client_cert::{ClientCert, PeerCert};
use super::limits::Limits;
use super::tls::Handshake;
use crate::error::Error;

/// What a listener serves: the gateway's layered handler.
pub trait HttpService:
    tower::Service<
        http::Request<Body>,
        Response = http::Response<Body>,
        Error = std::convert::Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S> HttpService for S where
    S: tower::Service<
            http::Request<Body>,
            Response = http::Response<Body>,
            Error = std::convert::Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// The first phase of a shutdown, while the listener still accepts: from
/// [`Drain::start`] on, HTTP/1.1 answers carry `Connection: close` and
/// HTTP/2 connections get a GOAWAY, so keep-alive clients reconnect (through
/// the load balancer, to another replica) while this one still answers.
/// Without it, a client's next request on a kept-alive connection raced the
/// close of the listener's connections and was lost.
#[derive(Debug, Clone, Default)]
pub struct Drain(Arc<DrainState>);

#[derive(Debug, Default)]
struct DrainState {
    /// Read on every answer: an atomic, not the channel's lock.
    started: AtomicBool,
    /// Wakes the connections that are idle when the drain starts.
    tx: tokio::sync::watch::Sender<bool>,
}

impl Drain {
    pub fn new() -> Drain {
        Drain::default()
    }

    /// Tells every connection, open or yet to be accepted, to wind down.
    pub fn start(&self) {
        self.0.started.store(true, Ordering::Relaxed);
        self.0.tx.send_replace(true);
    }

    fn is_started(&self) -> bool {
        self.0.started.load(Ordering::Relaxed)
    }
}

/// One connection's part in a drain.
#[derive(Default)]
struct ConnDrain {
    /// The connection speaks HTTP/2 (hyper-util's auto builder decides from
    /// the preface and does not say): set by its first request.
    h2: AtomicBool,
    /// An HTTP/2 request arrived while draining: send GOAWAY now.
    goaway: tokio::sync::Notify,
}

/// Serves `app` on `listener` until `shutdown` resolves; then stops
/// accepting, closes the listener, asks every connection to finish (HTTP/1.1:
/// after the response in flight; HTTP/2: GOAWAY) and returns once all are
/// closed. Before that, `drain` may tell the connections to wind down while
/// the listener still accepts (see [`Drain`]). `limits` is read at each
/// accept, except `max_connections`, read once here; so is `tls`, which
/// gives the TLS acceptor and handshake bounds of new connections (None:
/// plaintext; its `max_concurrent` is read once here).
pub async fn serve<S: HttpService>(
    listener: TcpListener,
    app: S,
    limits: impl Fn() -> Limits + Send + Sync + 'static,
    tls: impl Fn() -> Option<Handshake> + Send + Sync + 'static,
    drain: Drain,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits().max_connections));
    // Read at start, like max_connections.
    let handshakes = Arc::new(tokio::sync::Semaphore::new(
        tls().map_or(1, |h| h.max_concurrent.max(1)),
    ));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Each connection task holds a sender; when all are dropped, recv() ends.
    let (alive_tx, mut alive_rx) = tokio::sync::mpsc::channel::<()>(1);
    tokio::pin!(shutdown);
    loop {
        // A slot first: at the cap, new connections wait in the kernel's
        // backlog instead of being accepted and starved.
        let permit = tokio::select! {
            () = &mut shutdown => break,
            p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let hold = Hold(Arc::new(HoldInner {
            _permit: permit,
            _alive: alive_tx.clone(),
            stop: stop_rx.clone(),
        }));
        let tls = tls().map(|h| (h, handshakes.clone()));
        let (app, limits, stop, drain) = (app.clone(), limits(), stop_rx.clone(), drain.clone());
        let Some(worker) = crate::workers::next() else {
            let accepted = Accepted { stream, peer, tls };
            tokio::spawn(serve_one(accepted, app, limits, stop, drain, hold));
            continue;
        };
        // To a serving thread: the socket leaves this runtime's reactor
        // and joins that thread's, so its readiness never crosses threads.
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(client.addr = %peer, error = %e, "cannot hand the connection to a worker");
                continue;
            }
        };
        worker.spawn(async move {
            match TcpStream::from_std(stream) {
                Ok(stream) => {
                    let accepted = Accepted { stream, peer, tls };
                    serve_one(accepted, app, limits, stop, drain, hold).await;
                }
                Err(e) => {
                    tracing::warn!(client.addr = %peer, error = %e, "a worker cannot take the connection");
                }
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(alive_tx);
    let _ = alive_rx.recv().await;
    Ok(())
}

/// What a connection holds while it lasts: its `max_connections` slot and
/// its place among the connections a shutdown waits for. It is on every
/// request that asks for an upgrade, so that a connection hyper hands over
/// (a WebSocket, `pipeline::websocket`) keeps both until the socket closes,
/// and hears the shutdown ([`Hold::stopping`]) to close it.
#[derive(Clone)]
pub struct Hold(Arc<HoldInner>);

struct HoldInner {
    _permit: tokio::sync::OwnedSemaphorePermit,
    _alive: tokio::sync::mpsc::Sender<()>,
    stop: tokio::sync::watch::Receiver<bool>,
}

impl Hold {
    /// Resolves when the server stops: the upgraded socket should close.
    pub async fn stopping(&self) {
        let mut stop = self.0.stop.clone();
        let _ = stop.wait_for(|stopped| *stopped).await;
    }
}

/// Counts requests being handled (from arrival to the answer's head) on one
/// connection, and the times bytes moved.
///
/// Bytes moving is a count, not a timestamp: the connection's loop notes
/// when the count last changed at its idle tick. A timestamp cost a clock
/// read on every read and write (three per request), for a decision made a
/// few times a second.
struct Activity {
    io: AtomicU64,
    handling: AtomicUsize,
    /// A request's head has arrived on this connection.
    served: AtomicBool,
}

impl Activity {
    fn touch(&self) {
        // Relaxed load and store rather than an atomic add: the socket's
        // reads and writes happen on one task, so there is one writer but
        // for `Handling`, whose rare lost update only delays an idle close
        // by a tick.
        self.io.store(
            self.io.load(Ordering::Relaxed).wrapping_add(1),
            Ordering::Relaxed,
        );
    }
}

/// When bytes last moved on a connection, as its loop saw at each tick.
struct Quiet {
    seen: u64,
    since: Instant,
}

impl Quiet {
    /// How long no byte has moved, as of now (to tick precision).
    fn idle_for(&mut self, activity: &Activity) -> Duration {
        let seen = activity.io.load(Ordering::Relaxed);
        if seen != self.seen {
            self.seen = seen;
            self.since = Instant::now();
        }
        self.since.elapsed()
    }
}

struct Handling(Arc<Activity>);

impl Drop for Handling {
    fn drop(&mut self) {
        self.0.handling.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// A connection just accepted, and the TLS it is to be served with.
struct Accepted {
    stream: TcpStream,
    peer: SocketAddr,
    /// The current certificates' acceptor and bounds when the listener
    /// speaks TLS, and the listener's handshake slots.
    tls: Option<(Handshake, Arc<tokio::sync::Semaphore>)>,
}

/// Who is on the other end of a connection.
struct Peer {
    addr: SocketAddr,
    /// The client certificate rustls verified, read once for all the
    /// connection's requests.
    cert: Option<PeerCert>,
}

/// The TLS handshake, if any, then HTTP on the connection.
async fn serve_one<S: HttpService>(
    Accepted { stream, peer, tls }: Accepted,
    app: S,
    limits: Limits,
    stop: tokio::sync::watch::Receiver<bool>,
    drain: Drain,
    hold: Hold,
) {
    let Some((handshake, slots)) = tls else {
        let peer = Peer {
            addr: peer,
            cert: None,
        };
        return serve_http(stream, peer, app, limits, stop, drain, hold).await;
    };
    // The connection already holds its max_connections slot; a handshake
    // slot too while it shakes hands (the wait for one counts against the
    // handshake timeout, so a queue of them cannot hold connections long).
    let shake = async {
        let _slot = slots.acquire().await.expect("never closed");
        handshake.acceptor.accept(stream).await
    };
    match tokio::time::timeout(handshake.timeout, shake).await {
        Ok(Ok(stream)) => {
            let cert = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|leaf| match ClientCert::from_der(leaf) {
                    Ok(c) => Some(PeerCert(Arc::new(c))),
                    Err(e) => {
                        tracing::debug!(client.addr = %peer, error = e, "the client certificate does not parse; serving without it");
                        None
                    }
                });
            let peer = Peer { addr: peer, cert };
            serve_http(stream, peer, app, limits, stop, drain, hold).await;
        }
        Ok(Err(e)) => {
            tracing::debug!(client.addr = %peer, error = %e, "TLS handshake failed");
        }
        Err(_) => {
            tracing::debug!(client.addr = %peer, "no TLS handshake within server.tls.handshake_timeout; closing");
        }
    }
}

async fn serve_http<S: HttpService, I>(
    stream: I,
    Peer { addr: peer, cert }: Peer,
    app: S,
    limits: Limits,
    mut stop: tokio::sync::watch::Receiver<bool>,
    drain: Drain,
    hold: Hold,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let accepted = Instant::now();
    let mut draining = drain.0.tx.subscribe();
    let conn_drain = Arc::new(ConnDrain::default());
    let activity = Arc::new(Activity {
        io: AtomicU64::new(0),
        handling: AtomicUsize::new(0),
        served: AtomicBool::new(false),
    });
    let mut quiet = Quiet {
        seen: 0,
        since: Instant::now(),
    };
    let io = TokioIo::new(Tracked {
        io: stream,
        activity: activity.clone(),
        bounds: HeadBounds::of(&limits),
        replacement: None,
    });
    let service = {
        let activity = activity.clone();
        let conn_drain = conn_drain.clone();
        hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            activity.handling.fetch_add(1, Ordering::Relaxed);
            activity.served.store(true, Ordering::Relaxed);
            let guard = Handling(activity.clone());
            let h2 = req.version() == http::Version::HTTP_2;
            if h2 {
                note_h2(&conn_drain, &drain);
            }
            let drain = drain.clone();
            let mut req = req.map(Body::new);
            // Only a request that may take the connection over (a
            // WebSocket upgrade) needs it: an allocation the rest skip.
            if req.headers().contains_key(http::header::UPGRADE) {
                req.extensions_mut().insert(hold.clone());
            }
            // The TCP peer, as axum's connect-info service records it: the
            // access log, the client address (trusted proxies applied) and
            // consistent hashing read it.
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            if let Some(cert) = &cert {
                req.extensions_mut().insert(cert.clone());
            }
            let app = app.clone();
            async move {
                let mut resp = app.oneshot(req).await;
                drop(guard);
                // Checked at the answer, not the arrival: a request that was
                // running when the drain started closes its connection too.
                if !h2 && drain.is_started() {
                    if let Ok(r) = &mut resp {
                        r.headers_mut()
                            .insert(http::header::CONNECTION, CLOSE.clone());
                    }
                }
                resp
            }
        })
    };
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // hyper's own bound sits above the gateway's (which answers with
        // the JSON error body), as a backstop for what is far beyond it.
        // hyper keeps up to 100 header slots on the stack and allocates two
        // tables per request above that, so the backstop is 100 whenever
        // the gateway's limit leaves room below it.
        .max_headers(if limits.max_headers < 100 {
            100
        } else {
            limits.max_headers.saturating_mul(2)
        })
        .max_buf_size(
            (limits.max_url_bytes + limits.max_header_bytes)
                .saturating_mul(2)
                .max(8192 + 1),
        );
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(
            u32::try_from(limits.max_header_bytes.saturating_mul(2)).unwrap_or(u32::MAX),
        );
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);

    let idle = limits.idle_timeout;
    let first_head = limits.header_read_timeout;
    let tick = (idle.min(first_head) / 4).clamp(Duration::from_millis(25), Duration::from_secs(1));
    let mut closing_since: Option<Instant> = None;
    loop {
        tokio::select! {
            // The connection first, every time: it is what woke the task
            // nearly always (and `biased` skips select's random start).
            biased;
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(client.addr = %peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = stop.changed(), if closing_since.is_none() => {
                conn.as_mut().graceful_shutdown();
                closing_since = Some(Instant::now());
            }
            // HTTP/2 when the drain starts: GOAWAY at once. An HTTP/1.1
            // connection waits for its next answer (`Connection: close`):
            // closing it while idle would race a request already on its way.
            _ = draining.changed(), if closing_since.is_none() => {
                if conn_drain.h2.load(Ordering::Relaxed) {
                    conn.as_mut().graceful_shutdown();
                    closing_since = Some(Instant::now());
                }
            }
            () = conn_drain.goaway.notified(), if closing_since.is_none() => {
                conn.as_mut().graceful_shutdown();
                closing_since = Some(Instant::now());
            }
            () = tokio::time::sleep(tick) => {
                let handling = activity.handling.load(Ordering::Relaxed);
                match closing_since {
                    // hyper's header-read timer starts once the protocol is
                    // known, i.e. at the first byte: a connection that sends
                    // nothing would wait for the idle timeout and hold a
                    // slot. The first head is due header_read_timeout after
                    // accept, whatever the protocol.
                    None if !activity.served.load(Ordering::Relaxed) && accepted.elapsed() >= first_head => {
                        tracing::debug!(client.addr = %peer, "no request head within limits.header_read_timeout; closing");
                        return;
                    }
                    None => {
                        // Idle: nothing being handled and no byte moving
                        // (keep-alive waits, a client that stopped reading).
                        if handling == 0 && quiet.idle_for(&activity) >= idle {
                            tracing::debug!(client.addr = %peer, "closing an idle connection");
                            conn.as_mut().graceful_shutdown();
                            closing_since = Some(Instant::now());
                        }
                    }
                    // A graceful close is cut after another idle period
                    // when nothing is being handled (an HTTP/2 client that
                    // ignores the GOAWAY's PING, whatever else it sends), or
                    // when a request being handled makes no progress (a
                    // response the client does not read). During shutdown
                    // the drain timeout decides.
                    Some(since) if !*stop.borrow() && since.elapsed() >= idle && (handling == 0 || quiet.idle_for(&activity) >= idle) => {
                        return;
                    }
                    Some(_) => {}
                }
            }
        }
    }
}

static CLOSE: http::HeaderValue = http::HeaderValue::from_static("close");

/// An HTTP/2 request arrived on the connection: remember the protocol, and
/// during a drain have the connection's loop send GOAWAY (hyper's graceful
/// shutdown: GOAWAY with the highest stream id and a PING, then the real
/// last stream id, so streams already sent are served, not refused).
fn note_h2(conn: &ConnDrain, drain: &Drain) {
    if !conn.h2.load(Ordering::Relaxed) {
        conn.h2.store(true, Ordering::Relaxed);
    }
    if drain.is_started() {
        conn.goaway.notify_one();
    }
}

/// The limits named in the body of an answer hyper makes by itself.
#[derive(Clone, Copy)]
struct HeadBounds {
    max_url_bytes: usize,
    max_headers: usize,
    max_header_bytes: usize,
}

impl HeadBounds {
    fn of(limits: &Limits) -> HeadBounds {
        HeadBounds {
            max_url_bytes: limits.max_url_bytes,
            max_headers: limits.max_headers,
            max_header_bytes: limits.max_header_bytes,
        }
    }

    /// hyper answers a head it cannot parse (400), a target over its own
    /// 64 KiB bound (414) or a head past its buffer (431) by itself, with an
    /// empty body and no request reaching the gateway. Such an answer is
    /// recognised on its way out: its head holds nothing but
    /// `connection: close`, `content-length: 0` and `date`, while every answer of the gateway
    /// carries at least `x-request-id`. The same answer with the JSON error
    /// body is returned to be written instead.
    fn with_body(self, written: &[u8]) -> Option<Vec<u8>> {
        let status = match written.get(..12)? {
            b"HTTP/1.1 400" => StatusCode::BAD_REQUEST,
            b"HTTP/1.1 414" => StatusCode::URI_TOO_LONG,
            b"HTTP/1.1 431" => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            _ => return None,
        };
        let head = written.strip_suffix(b"\r\n\r\n")?;
        let mut date = None;
        for line in head.split(|&b| b == b'\n').skip(1) {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.eq_ignore_ascii_case(b"content-length: 0")
                || line.eq_ignore_ascii_case(b"connection: close")
            {
                continue;
            }
            match line.strip_prefix(b"date: ") {
                Some(d) if date.is_none() => date = Some(d),
                _ => return None,
            }
        }
        let error = match status {
            StatusCode::URI_TOO_LONG => Error::TargetTooLong(format!(
                "the request target is over the limit of {} bytes (limits.max_url_bytes)",
                self.max_url_bytes
            )),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => Error::HeadTooLarge(format!(
                "the request head is far over the limits of {} headers and {} bytes (limits.max_headers, limits.max_header_bytes)",
                self.max_headers, self.max_header_bytes
            )),
            _ => Error::BadRequest("the request head is not valid HTTP/1.1".to_owned()),
        };
        // Written by hand (hyper has already answered), but the body is the
        // one every error has.
        let body = error.to_json();
        let mut out = Vec::with_capacity(160 + body.len());
        out.extend_from_slice(&written[..12]);
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\ncontent-type: application/json\r\nconnection: close\r\n");
        out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
        if let Some(d) = date {
            out.extend_from_slice(b"date: ");
            out.extend_from_slice(d);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&body);
        Some(out)
    }
}

/// The socket (or the TLS stream over it), noting when bytes move; also
/// gives hyper's own refusals the JSON error body (see [`HeadBounds::with_body`]).
struct Tracked<I> {
    io: I,
    activity: Arc<Activity>,
    bounds: HeadBounds,
    /// A refusal being written in place of hyper's, and how much of it is out.
    replacement: Option<(Vec<u8>, usize)>,
}

impl<I: AsyncWrite + Unpin> Tracked<I> {
    /// Writes out the rest of a replacement answer, if any.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, done)) = &mut self.replacement {
            if *done == bytes.len() {
                self.replacement = None;
                break;
            }
            let n = std::task::ready!(Pin::new(&mut self.io).poll_write(cx, &bytes[*done..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *done += n;
            self.activity.touch();
        }
        Poll::Ready(Ok(()))
    }

    /// Takes `buf` as written when it is one of hyper's bodiless refusals.
    fn replace(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Option<Poll<io::Result<usize>>> {
        let replacement = self.bounds.with_body(buf)?;
        self.replacement = Some((replacement, 0));
        Some(match self.poll_replacement(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            // The rest goes out on flush, which hyper calls next.
            _ => Poll::Ready(Ok(buf.len())),
        })
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.poll_replacement(cx))?;
        if let Some(r) = self.replace(cx, buf) {
            return r;
        }
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.poll_replacement(cx))?;
        if let [one] = bufs {
            if let Some(r) = self.replace(cx, one) {
                return r;
            }
        }
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_replacement(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_replacement(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
