//! The backend of the streaming, raw-body, shaping and OpenAPI tests
//! (`fixtures/streaming/streaming.proto`), on the gateway's own dynamic
//! codec, with a [`Probe`] that records what the backend did: messages
//! produced, bytes produced, calls cancelled by the client side.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use gateway::example::{BoxFuture, DynamicServer, MessageStream};
use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_stream::StreamExt as _;
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Response, Status};

use crate::{fixtures_dir, spawn_backend, TestGateway};

pub const SERVICES: [&str; 3] = [
    "streaming.v1.Streams",
    "streaming.v1.Files",
    "streaming.v1.Library",
];

pub fn descriptors() -> PathBuf {
    fixtures_dir().join("streaming")
}

pub fn pool() -> DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        gateway::descriptors::load_dir(&descriptors())
            .unwrap_or_else(|e| panic!("streaming descriptors do not load: {e}"))
            .pool
    })
    .clone()
}

/// What the backend did, for assertions.
#[derive(Default)]
pub struct Probe {
    /// Stream messages produced (pulled by tonic to send).
    pub sent: AtomicU64,
    pub sent_bytes: AtomicU64,
    /// Calls that ended because the client side went away or reset them.
    pub cancelled: AtomicU64,
    pub notify: tokio::sync::Notify,
}

impl Probe {
    /// Waits until `cancelled` reaches `n`; false after `within`.
    pub async fn wait_cancelled(&self, n: u64, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.notify.notified();
            if self.cancelled.load(Ordering::SeqCst) >= n {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.cancelled.load(Ordering::SeqCst) >= n;
            }
        }
    }

    fn cancel(&self) {
        self.cancelled.fetch_add(1, Ordering::SeqCst);
        self.notify.notify_waiters();
    }
}

/// Counts the call as cancelled if dropped before `finish`.
struct Guard(Arc<Probe>, bool);

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.1 {
            self.0.cancel();
        }
    }
}

/// FNV-1a 64 as hex, as the backend reports upload digests.
pub fn fnv_hex(data: &[u8]) -> String {
    format!("{:016x}", gateway::config::fnv1a(data))
}

fn int(m: &DynamicMessage, name: &str) -> i64 {
    match m.get_field_by_name(name).as_deref() {
        Some(Value::I32(v)) => i64::from(*v),
        Some(Value::I64(v)) => *v,
        _ => 0,
    }
}

fn text(m: &DynamicMessage, name: &str) -> String {
    m.get_field_by_name(name)
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn http_body_parts(m: &DynamicMessage) -> (String, Bytes) {
    let data = m
        .get_field_by_name("data")
        .and_then(|v| v.as_bytes().cloned())
        .unwrap_or_default();
    (text(m, "content_type"), data)
}

fn message(method: &MethodDescriptor, fields: &[(&str, Value)]) -> DynamicMessage {
    let mut m = DynamicMessage::new(method.output());
    for (k, v) in fields {
        m.set_field_by_name(k, v.clone());
    }
    m
}

fn http_body(pool: &DescriptorPool, ct: &str, data: &str) -> DynamicMessage {
    let mut m = DynamicMessage::new(pool.get_message_by_name("google.api.HttpBody").unwrap());
    if !ct.is_empty() {
        m.set_field_by_name("content_type", Value::String(ct.into()));
    }
    m.set_field_by_name(
        "data",
        Value::Bytes(Bytes::copy_from_slice(data.as_bytes())),
    );
    m
}

fn csv_row(i: i64) -> String {
    format!("{i},row {i}\n")
}

/// The backend for `streaming.proto`.
pub fn server(probe: Arc<Probe>) -> DynamicServer {
    let pool = pool();
    let streaming_probe = probe.clone();
    DynamicServer::new(
        &pool,
        &SERVICES,
        move |method: &MethodDescriptor, req: Request<DynamicMessage>| {
            let method = method.clone();
            Box::pin(async move { unary(method, req) }) as BoxFuture<_>
        },
    )
    .with_streaming(
        move |method: &MethodDescriptor, req: Request<MessageStream>| {
            let method = method.clone();
            let probe = streaming_probe.clone();
            Box::pin(async move { streaming(method, req, probe).await }) as BoxFuture<_>
        },
    )
}

fn unary(
    method: MethodDescriptor,
    req: Request<DynamicMessage>,
) -> Result<Response<DynamicMessage>, Status> {
    let pool = method.parent_pool().clone();
    let m = req.get_ref();
    let reply = match method.name() {
        "Report" => {
            let body: String = (1..=int(m, "rows")).map(csv_row).collect();
            http_body(&pool, "text/csv", &format!("id,name\n{body}"))
        }
        "Upload" => {
            let (ct, data) = http_body_parts(m);
            message(
                &method,
                &[
                    ("size", Value::I64(data.len() as i64)),
                    ("content_type", Value::String(ct)),
                    ("messages", Value::I32(1)),
                    ("digest", Value::String(fnv_hex(&data))),
                ],
            )
        }
        "UploadNamed" => {
            let file = m
                .get_field_by_name("file")
                .and_then(|v| v.as_message().cloned());
            let (ct, data) = file.as_ref().map(http_body_parts).unwrap_or_default();
            message(
                &method,
                &[
                    ("size", Value::I64(data.len() as i64)),
                    ("content_type", Value::String(ct)),
                    ("name", Value::String(text(m, "name"))),
                    ("digest", Value::String(fnv_hex(&data))),
                ],
            )
        }
        "Form" => {
            let data = m
                .get_field_by_name("data")
                .and_then(|v| v.as_bytes().cloned())
                .unwrap_or_default();
            let att = m
                .get_field_by_name("attachment")
                .and_then(|v| v.as_message().cloned());
            let (att_ct, att_data) = att.as_ref().map(http_body_parts).unwrap_or_default();
            let tags = m
                .get_field_by_name("tags")
                .map(|v| v.into_owned())
                .unwrap_or(Value::List(vec![]));
            message(
                &method,
                &[
                    ("size", Value::I64((data.len() + att_data.len()) as i64)),
                    ("title", Value::String(text(m, "title"))),
                    ("digest", Value::String(fnv_hex(&data))),
                    ("attachment_type", Value::String(att_ct)),
                    ("tags", tags),
                ],
            )
        }
        "CreateBook" => {
            let mut book = m
                .get_field_by_name("book")
                .and_then(|v| v.as_message().cloned())
                .unwrap_or_else(|| DynamicMessage::new(method.output()));
            let id = text(m, "book_id");
            if !id.is_empty() {
                book.set_field_by_name(
                    "name",
                    Value::String(format!("shelves/{}/books/{id}", text(m, "shelf"))),
                );
            }
            let mut resp = Response::new(book);
            resp.metadata_mut()
                .insert("x-etag", MetadataValue::from_static("v1"));
            return Ok(resp);
        }
        "UpdateBook" => m.clone(),
        "GetBook" => message(&method, &[("name", Value::String(text(m, "name")))]),
        other => return Err(Status::unimplemented(format!("no unary method {other}"))),
    };
    Ok(Response::new(reply))
}

async fn streaming(
    method: MethodDescriptor,
    req: Request<MessageStream>,
    probe: Arc<Probe>,
) -> Result<Response<MessageStream>, Status> {
    let pool = method.parent_pool().clone();
    let mut input = req.into_inner();
    match method.name() {
        "Count" => {
            let r = input
                .next()
                .await
                .ok_or_else(|| Status::internal("no request"))??;
            let count = int(&r, "count");
            let interval = Duration::from_millis(int(&r, "interval_ms").max(0) as u64);
            let fail_after = int(&r, "fail_after");
            let fail_code = int(&r, "fail_code") as i32;
            if fail_code != 0 && fail_after == 0 {
                // Fails before the first message, as a handler that returns
                // its stream would: headers, then an error in the trailers.
                let err = Status::new(Code::from_i32(fail_code), "failed before any tick");
                return Ok(Response::new(
                    Box::pin(tokio_stream::once(Err(err))) as MessageStream
                ));
            }
            let payload = "x".repeat(int(&r, "payload_bytes").max(0) as usize);
            let label = text(&r, "label");
            let guard = Guard(probe.clone(), false);
            let stream = futures_unfold(1i64, move |i| {
                let payload = payload.clone();
                let label = label.clone();
                let method = method.clone();
                let probe = probe.clone();
                async move {
                    if i > count {
                        return None;
                    }
                    if !interval.is_zero() {
                        tokio::time::sleep(interval).await;
                    }
                    if fail_code != 0 && i > fail_after {
                        return Some((
                            Err(Status::new(
                                Code::from_i32(fail_code),
                                format!("failed after {fail_after} ticks"),
                            )),
                            count + 1,
                        ));
                    }
                    let tick = message(
                        &method,
                        &[
                            ("index", Value::I32(i as i32)),
                            ("label", Value::String(label)),
                            ("payload", Value::String(payload)),
                            ("big", Value::I64(i * 1_000_000_000_000)),
                        ],
                    );
                    probe.sent.fetch_add(1, Ordering::SeqCst);
                    probe
                        .sent_bytes
                        .fetch_add(prost::Message::encoded_len(&tick) as u64, Ordering::SeqCst);
                    Some((Ok(tick), i + 1))
                }
            });
            Ok(Response::new(with_guard(stream, guard)))
        }
        "Sum" => {
            let mut guard = Guard(probe, false);
            let (mut sum, mut n) = (0i64, 0i32);
            while let Some(item) = input.next().await {
                let m = item?;
                let v = int(&m, "value");
                if v < 0 {
                    guard.1 = true;
                    return Err(Status::invalid_argument(format!("negative number {v}")));
                }
                sum += v;
                n += 1;
            }
            guard.1 = true;
            let reply = message(
                &method,
                &[("sum", Value::I64(sum)), ("count", Value::I32(n))],
            );
            Ok(Response::new(
                Box::pin(tokio_stream::once(Ok(reply))) as MessageStream
            ))
        }
        "Chat" => {
            // "fail" ends the call with ABORTED; "flood N" answers with N
            // replies of 1 KiB, each counted in `probe.sent` as it is
            // produced (the WebSocket back-pressure test); anything else is
            // echoed.
            let guard = Guard(probe.clone(), false);
            let out = futures_unfold(
                (input, 0i32, 0i32, 0i32),
                move |(mut input, mut seq, mut left, mut flooded)| {
                    let method = method.clone();
                    let probe = probe.clone();
                    async move {
                        let flood = |probe: &Probe, i: i32| {
                            probe.sent.fetch_add(1, Ordering::SeqCst);
                            message(
                                &method,
                                &[
                                    ("text", Value::String("x".repeat(1024))),
                                    ("seq", Value::I32(i)),
                                ],
                            )
                        };
                        if left > 0 {
                            left -= 1;
                            flooded += 1;
                            let m = flood(&probe, flooded);
                            return Some((Ok(m), (input, seq, left, flooded)));
                        }
                        let m = match input.next().await? {
                            Ok(m) => m,
                            Err(e) => return Some((Err(e), (input, seq, 0, flooded))),
                        };
                        seq += 1;
                        let t = text(&m, "text");
                        if t == "fail" {
                            let e = Status::aborted(format!("message {seq} asked to fail"));
                            return Some((Err(e), (input, seq, 0, flooded)));
                        }
                        if let Some(n) =
                            t.strip_prefix("flood ").and_then(|n| n.parse::<i32>().ok())
                        {
                            if n > 0 {
                                flooded = 1;
                                let m = flood(&probe, 1);
                                return Some((Ok(m), (input, seq, n - 1, flooded)));
                            }
                        }
                        let reply = message(
                            &method,
                            &[
                                ("text", Value::String(format!("echo: {t}"))),
                                ("seq", Value::I32(seq)),
                            ],
                        );
                        Some((Ok(reply), (input, seq, left, flooded)))
                    }
                },
            );
            Ok(Response::new(with_guard(out, guard)))
        }
        "ReportStream" => {
            let r = input
                .next()
                .await
                .ok_or_else(|| Status::internal("no request"))??;
            let rows = int(&r, "rows");
            let mut msgs = vec![Ok(http_body(&pool, "text/csv", "id,name\n"))];
            msgs.extend((1..=rows).map(|i| Ok(http_body(&pool, "", &csv_row(i)))));
            Ok(Response::new(
                Box::pin(tokio_stream::iter(msgs)) as MessageStream
            ))
        }
        "UploadStream" | "FormStream" => {
            let (mut size, mut messages) = (0i64, 0i32);
            let mut all = Vec::new();
            let (mut ct, mut title) = (String::new(), String::new());
            let mut tags = Vec::new();
            while let Some(item) = input.next().await {
                let m = item?;
                messages += 1;
                let (c, data) = if method.name() == "UploadStream" {
                    http_body_parts(&m)
                } else {
                    if title.is_empty() {
                        title = text(&m, "title");
                    }
                    if let Some(Value::List(l)) = m.get_field_by_name("tags").as_deref() {
                        tags.extend(l.iter().cloned());
                    }
                    let mut d = m
                        .get_field_by_name("data")
                        .and_then(|v| v.as_bytes().cloned())
                        .unwrap_or_default();
                    let mut c = String::new();
                    let att = m
                        .has_field_by_name("attachment")
                        .then(|| {
                            m.get_field_by_name("attachment")
                                .and_then(|v| v.as_message().cloned())
                        })
                        .flatten();
                    if let Some(att) = att {
                        let (ac, ad) = http_body_parts(&att);
                        c = ac;
                        d = ad;
                    }
                    (c, d)
                };
                if ct.is_empty() {
                    ct = c;
                }
                size += data.len() as i64;
                all.extend_from_slice(&data);
            }
            let reply = message(
                &method,
                &[
                    ("size", Value::I64(size)),
                    ("messages", Value::I32(messages)),
                    ("content_type", Value::String(ct)),
                    ("title", Value::String(title)),
                    ("digest", Value::String(fnv_hex(&all))),
                    ("tags", Value::List(tags)),
                ],
            );
            Ok(Response::new(
                Box::pin(tokio_stream::once(Ok(reply))) as MessageStream
            ))
        }
        other => Err(Status::unimplemented(format!(
            "no streaming method {other}"
        ))),
    }
}

/// `futures::stream::unfold`, without the dependency.
fn futures_unfold<T, F, Fut>(
    init: T,
    f: F,
) -> impl tokio_stream::Stream<Item = Result<DynamicMessage, Status>> + Send
where
    T: Send + 'static,
    F: FnMut(T) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Option<(Result<DynamicMessage, Status>, T)>> + Send + 'static,
{
    Unfold {
        state: Some(init),
        f,
        fut: None,
    }
}

struct Unfold<T, F, Fut> {
    state: Option<T>,
    f: F,
    fut: Option<Pin<Box<Fut>>>,
}

impl<T, F, Fut> Unpin for Unfold<T, F, Fut> {}

impl<T, F, Fut> tokio_stream::Stream for Unfold<T, F, Fut>
where
    F: FnMut(T) -> Fut,
    Fut: std::future::Future<Output = Option<(Result<DynamicMessage, Status>, T)>>,
{
    type Item = Result<DynamicMessage, Status>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.fut.is_none() {
            let Some(state) = this.state.take() else {
                return std::task::Poll::Ready(None);
            };
            this.fut = Some(Box::pin((this.f)(state)));
        }
        let out = std::task::ready!(this.fut.as_mut().expect("set above").as_mut().poll(cx));
        this.fut = None;
        match out {
            Some((item, next)) => {
                this.state = Some(next);
                std::task::Poll::Ready(Some(item))
            }
            None => std::task::Poll::Ready(None),
        }
    }
}

/// Marks the call finished when the stream ends by itself; dropped early,
/// the guard counts a cancellation.
fn with_guard<S>(stream: S, guard: Guard) -> MessageStream
where
    S: tokio_stream::Stream<Item = Result<DynamicMessage, Status>> + Send + 'static,
{
    let mut guard = Some(guard);
    let mut stream = Box::pin(stream);
    Box::pin(PollFn(move |cx: &mut std::task::Context<'_>| {
        let r = stream.as_mut().poll_next(cx);
        if let std::task::Poll::Ready(None) = r {
            if let Some(mut g) = guard.take() {
                g.1 = true;
            }
        }
        r
    }))
}

struct PollFn<F>(F);

impl<F> Unpin for PollFn<F> {}

impl<F> tokio_stream::Stream for PollFn<F>
where
    F: FnMut(
        &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<DynamicMessage, Status>>>,
{
    type Item = Result<DynamicMessage, Status>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        (self.0)(cx)
    }
}

/// The routes of the streaming tests; `{extra}` goes under `[server]`.
pub const CONFIG: &str = r#"[server]
listen = "127.0.0.1:0"
descriptors = "{descriptors}"
{extra}

[openapi]
path = "/openapi.json"
docs_path = "/docs"
title = "Streaming test API"
version = "0.1.0"

[backends.streams]
endpoints = ["{backend}"]
services = ["streaming.v1.Streams", "streaming.v1.Files", "streaming.v1.Library"]
timeout = "5s"
connect_timeout = "1s"

[[routes]]
method = "GET"
path = "/v1/count"
grpc = "streaming.v1.Streams/Count"

[[routes]]
method = "GET"
path = "/v1/count:array"
grpc = "streaming.v1.Streams/Count"
stream_framing = "json_array"

[[routes]]
method = "POST"
path = "/v1/sum"
grpc = "streaming.v1.Streams/Sum"
body = "*"

[[routes]]
method = "POST"
path = "/v1/chat"
grpc = "streaming.v1.Streams/Chat"
body = "*"

[[routes]]
method = "GET"
path = "/v1/reports/{rows}"
grpc = "streaming.v1.Files/Report"

[[routes]]
method = "GET"
path = "/v1/reports/{rows}:stream"
grpc = "streaming.v1.Files/ReportStream"

[[routes]]
method = "POST"
path = "/v1/uploads"
grpc = "streaming.v1.Files/Upload"
body = "*"

[[routes]]
method = "POST"
path = "/v1/files/{name}"
grpc = "streaming.v1.Files/UploadNamed"
body = "file"

[[routes]]
method = "POST"
path = "/v1/uploads:stream"
grpc = "streaming.v1.Files/UploadStream"
body = "*"

[[routes]]
method = "POST"
path = "/v1/forms"
grpc = "streaming.v1.Files/Form"
body = "*"
multipart = true

[[routes]]
method = "POST"
path = "/v1/forms:stream"
grpc = "streaming.v1.Files/FormStream"
body = "*"
multipart = true

[[routes]]
method = "POST"
path = "/v1/shelves/{shelf}/books"
grpc = "streaming.v1.Library/CreateBook"
body = "book"
success_status = 201
response_headers = { Location = "/v1/{name}", ETag = "{metadata:x-etag}" }

[[routes]]
method = "PATCH"
path = "/v1/books/{book.name=shelves/*/books/*}"
grpc = "streaming.v1.Library/UpdateBook"
body = "book"

[[routes]]
method = "GET"
path = "/v1/{name=shelves/*/books/*}"
grpc = "streaming.v1.Library/GetBook"
"#;

/// A gateway in front of a fresh streaming backend.
pub async fn start(extra_server: &str) -> (TestGateway, Arc<Probe>) {
    let probe = Arc::new(Probe::default());
    let backend = spawn_backend(server(probe.clone())).await;
    let config = CONFIG.replace("{extra}", extra_server);
    let gw = TestGateway::start_with(&config, &backend, &descriptors()).await;
    (gw, probe)
}

/// An HTTP/1.1 exchange over a raw socket whose answer is read as it
/// comes, for tests that watch timing, stop reading, or hang up.
pub struct RawStream {
    pub stream: tokio::net::TcpStream,
    pub status: u16,
    pub head: String,
    /// Body bytes read so far, de-chunked.
    pub body: Vec<u8>,
    raw: Vec<u8>,
    done: bool,
    /// The chunked terminator arrived: the answer was not cut off.
    terminated: bool,
}

impl RawStream {
    /// Sends `head` (request line and headers, without Host and the blank
    /// line) and `body`, and reads up to the end of the answer's headers.
    pub async fn open(
        gw: &TestGateway,
        head: &str,
        body: &[u8],
        recv_buffer: Option<u32>,
    ) -> RawStream {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
        }
        let mut stream = socket.connect(gw.addr).await.expect("connect to gateway");
        let req = format!(
            "{}\r\nHost: {}\r\n\r\n",
            head.trim_end_matches("\r\n"),
            gw.addr
        );
        stream.write_all(req.as_bytes()).await.expect("write head");
        stream.write_all(body).await.expect("write body");
        let mut raw = Vec::new();
        let split = loop {
            if let Some(p) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break p;
            }
            let mut buf = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
                .await
                .expect("answer headers within 10s")
                .expect("read");
            assert!(
                n > 0,
                "connection closed before the answer's headers: {:?}",
                String::from_utf8_lossy(&raw)
            );
            raw.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let raw = raw[split + 4..].to_vec();
        let mut s = RawStream {
            stream,
            status,
            head,
            body: Vec::new(),
            raw,
            done: false,
            terminated: false,
        };
        s.dechunk();
        s
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }

    fn dechunk(&mut self) {
        loop {
            let Some(eol) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                return;
            };
            let size = usize::from_str_radix(
                String::from_utf8_lossy(&self.raw[..eol])
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim(),
                16,
            )
            .unwrap_or(0);
            if size == 0 {
                self.done = true;
                self.terminated = true;
                self.raw.clear();
                return;
            }
            if self.raw.len() < eol + 2 + size + 2 {
                return;
            }
            self.body
                .extend_from_slice(&self.raw[eol + 2..eol + 2 + size]);
            self.raw.drain(..eol + 2 + size + 2);
        }
    }

    /// Reads once (up to `max` bytes); false at the end of the answer.
    pub async fn read_some(&mut self, max: usize) -> bool {
        if self.done {
            return false;
        }
        let mut buf = vec![0u8; max];
        let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut buf))
            .await
            .expect("read within 10s")
            .unwrap_or(0);
        if n == 0 {
            self.done = true;
            return false;
        }
        self.raw.extend_from_slice(&buf[..n]);
        self.dechunk();
        !self.done
    }

    /// Reads until `body` holds `n` complete lines (or the answer ends).
    pub async fn read_lines(&mut self, n: usize) -> Vec<String> {
        while self.body.iter().filter(|&&b| b == b'\n').count() < n {
            if !self.read_some(64 * 1024).await {
                break;
            }
        }
        String::from_utf8_lossy(&self.body)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Reads to the end of the answer.
    pub async fn read_to_end(&mut self) {
        while self.read_some(256 * 1024).await {}
    }

    /// Whether the answer ended with the chunked terminator (not cut off).
    pub fn complete(&self) -> bool {
        self.terminated
    }
}

/// This process's resident memory, in bytes (Linux).
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// One part of a multipart body: (name, filename, content type, bytes).
pub type Part<'a> = (&'a str, Option<&'a str>, Option<&'a str>, &'a [u8]);

/// A `multipart/form-data` body: (name, filename, content type, bytes) per part.
pub fn multipart_body(boundary: &str, parts: &[Part<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, filename, ct, data) in parts {
        out.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        let mut disp = format!("Content-Disposition: form-data; name=\"{name}\"");
        if let Some(f) = filename {
            disp.push_str(&format!("; filename=\"{f}\""));
        }
        out.extend_from_slice(disp.as_bytes());
        out.extend_from_slice(b"\r\n");
        if let Some(ct) = ct {
            out.extend_from_slice(format!("Content-Type: {ct}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    out
}

/// An HTTP/2 (prior knowledge, h2c) connection to the gateway whose request
/// body is sent frame by frame while the answer is read.
pub struct H2Call {
    pub tx: Option<
        tokio::sync::mpsc::Sender<Result<hyper::body::Frame<Bytes>, std::convert::Infallible>>,
    >,
    pub response: Option<http::Response<hyper::body::Incoming>>,
    pending: Option<tokio::task::JoinHandle<hyper::Result<http::Response<hyper::body::Incoming>>>>,
    pub body: Vec<u8>,
}

impl H2Call {
    pub async fn start(
        gw: &TestGateway,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> H2Call {
        use hyper_util::rt::{TokioExecutor, TokioIo};
        let stream = tokio::net::TcpStream::connect(gw.addr)
            .await
            .expect("connect");
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .expect("h2 handshake");
        tokio::spawn(conn);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let body = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", gw.addr));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(body).expect("request");
        let pending = tokio::spawn(async move { sender.send_request(req).await });
        H2Call {
            tx: Some(tx),
            response: None,
            pending: Some(pending),
            body: Vec::new(),
        }
    }

    pub async fn send(&mut self, data: &str) {
        let tx = self.tx.as_ref().expect("request still open");
        tx.send(Ok(hyper::body::Frame::data(Bytes::copy_from_slice(
            data.as_bytes(),
        ))))
        .await
        .expect("send frame");
    }

    /// Ends the request body.
    pub fn finish(&mut self) {
        self.tx = None;
    }

    /// Waits for the answer's headers.
    pub async fn response(&mut self) -> &http::Response<hyper::body::Incoming> {
        if self.response.is_none() {
            let pending = self.pending.take().expect("started");
            let resp = tokio::time::timeout(Duration::from_secs(10), pending)
                .await
                .expect("answer within 10s")
                .expect("task")
                .expect("h2 response");
            self.response = Some(resp);
        }
        self.response.as_ref().expect("set above")
    }

    /// Reads body frames until `body` holds `n` lines; false if it ended first.
    pub async fn read_lines(&mut self, n: usize) -> bool {
        use http_body_util::BodyExt as _;
        self.response().await;
        while self.body.iter().filter(|&&b| b == b'\n').count() < n {
            let resp = self.response.as_mut().expect("response");
            let frame = tokio::time::timeout(Duration::from_secs(10), resp.body_mut().frame())
                .await
                .expect("a frame within 10s");
            match frame {
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        self.body.extend_from_slice(&d);
                    }
                }
                _ => return false,
            }
        }
        true
    }

    pub fn lines(&self) -> Vec<serde_json::Value> {
        String::from_utf8_lossy(&self.body)
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("line {l:?} is not JSON: {e}"))
            })
            .collect()
    }
}
