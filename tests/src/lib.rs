//! Shared fixtures for the end-to-end tests.
//!
//! Every test starts its own gRPC backend and its own gateway on ephemeral
//! loopback ports, from a routes.toml written into a fresh temporary folder,
//! and talks to the gateway over real HTTP.

pub mod binary;
pub mod consul;
pub mod etcd;
pub mod eureka;
pub mod fleet;
pub mod nacos;
pub mod zookeeper;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use gateway::example::{BoxFuture, DynamicServer};
use gateway::server::Gateway;
use gateway::snapshot::Snapshot;
use prost::Message as _;
use prost_reflect::{
    DescriptorPool, DynamicMessage, MapKey, MethodDescriptor, ReflectMessage as _, Value,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::metadata::{KeyAndValueRef, MetadataValue};
use tonic::{Code, Request, Response, Status};

/// The test service in `fixtures/descriptors/testing.proto`.
pub const ECHO_SERVICE: &str = "testing.v1.Echo";

/// `tests/` in the repository.
pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The repository root (the workspace).
pub fn repo_root() -> PathBuf {
    manifest_dir()
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `tests/fixtures`.
pub fn fixtures_dir() -> PathBuf {
    manifest_dir().join("fixtures")
}

/// The descriptors folder holding testing.proto.
pub fn testing_descriptors() -> PathBuf {
    fixtures_dir().join("descriptors")
}

/// A fresh, empty folder under the system temp dir, unique per call.
///
/// Folders live as long as the test process (a test may hand a path to a
/// gateway that outlives its own scope); the first call of each process
/// removes those of test processes that have exited.
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    static SWEPT: OnceLock<()> = OnceLock::new();
    SWEPT.get_or_init(remove_dead_processes_temp_dirs);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "gateway-tests-{}-{}-{nanos}-{tag}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// Removes the [`temp_dir`] folders of test processes no longer running
/// (`gateway-tests-<pid>-...`), so runs do not pile folders up in /tmp.
fn remove_dead_processes_temp_dirs() {
    let tmp = std::env::temp_dir();
    let Ok(entries) = std::fs::read_dir(&tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("gateway-tests-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Removes the folder holding `file` if [`temp_dir`] made it.
pub fn remove_temp_parent(file: &Path) {
    if let Some(dir) = file.parent() {
        let ours = dir
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("gateway-tests-"));
        if ours && dir.starts_with(std::env::temp_dir()) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Writes `text` as `routes.toml` into a fresh temp folder; returns its path.
pub fn write_config(text: &str) -> PathBuf {
    let path = temp_dir("cfg").join("routes.toml");
    std::fs::write(&path, text).expect("write routes.toml");
    path
}

/// The pool of the testing descriptors (compiled once per test binary).
pub fn testing_pool() -> DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        gateway::descriptors::load_dir(&testing_descriptors())
            .unwrap_or_else(|e| panic!("testing descriptors do not load: {e}"))
            .pool
    })
    .clone()
}

/// The pool of the repository's own descriptors (the bookstore).
pub fn bookstore_pool() -> DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        gateway::descriptors::load_dir(&repo_root().join("descriptors"))
            .unwrap_or_else(|e| panic!("repository descriptors do not load: {e}"))
            .pool
    })
    .clone()
}

// ---------------------------------------------------------------------------
// The Echo backend
// ---------------------------------------------------------------------------

/// The Echo service: see testing.proto for what each method does. Every reply
/// (and every error) carries the metadata `x-grpc-method: <method name>`.
pub fn echo_server(pool: &DescriptorPool) -> DynamicServer {
    DynamicServer::new(
        pool,
        &[ECHO_SERVICE],
        |method: &MethodDescriptor, req: Request<DynamicMessage>| {
            let method = method.clone();
            Box::pin(async move { echo_handle(method, req).await }) as BoxFuture<_>
        },
    )
}

fn with_method<T>(mut r: Response<T>, method: &MethodDescriptor) -> Response<T> {
    if let Ok(v) = MetadataValue::try_from(method.name()) {
        r.metadata_mut().insert("x-grpc-method", v);
    }
    r
}

async fn echo_handle(
    method: MethodDescriptor,
    req: Request<DynamicMessage>,
) -> Result<Response<DynamicMessage>, Status> {
    match method.name() {
        "Fail" => {
            let msg = req.get_ref();
            let code = msg
                .get_field_by_name("code")
                .and_then(|v| v.as_i32())
                .unwrap_or(2);
            let message = msg
                .get_field_by_name("message")
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            let details = msg
                .get_field_by_name("with_details")
                .and_then(|v| v.as_bool())
                .unwrap_or(false);
            let unknown = msg
                .get_field_by_name("unknown_detail")
                .and_then(|v| v.as_bool())
                .unwrap_or(false);
            let code = Code::from_i32(code);
            let mut status = if unknown {
                Status::with_details(
                    code,
                    message.clone(),
                    unknown_detail_status_bytes(method.parent_pool(), code as i32, &message).into(),
                )
            } else if details {
                let pool = method.parent_pool();
                Status::with_details(
                    code,
                    message.clone(),
                    rpc_status_bytes(pool, code as i32, &message).into(),
                )
            } else {
                Status::new(code, message)
            };
            status
                .metadata_mut()
                .insert("x-grpc-method", MetadataValue::from_static("Fail"));
            status
                .metadata_mut()
                .insert("x-fail", MetadataValue::from_static("yes"));
            Err(status)
        }
        "Sleep" => {
            let millis = req
                .get_ref()
                .get_field_by_name("millis")
                .and_then(|v| v.as_i64())
                .unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(millis.max(0) as u64)).await;
            Ok(with_method(
                Response::new(DynamicMessage::new(method.output())),
                &method,
            ))
        }
        "Meta" => {
            let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for kv in req.metadata().iter() {
                if let KeyAndValueRef::Ascii(k, v) = kv {
                    seen.entry(k.as_str().to_owned())
                        .or_default()
                        .push(v.to_str().unwrap_or("<not ascii>").to_owned());
                }
            }
            let mut reply = DynamicMessage::new(method.output());
            let map = seen
                .into_iter()
                .map(|(k, v)| (MapKey::String(k), Value::String(v.join(","))))
                .collect();
            reply.set_field_by_name("metadata", Value::Map(map));
            let mut resp = with_method(Response::new(reply), &method);
            resp.metadata_mut()
                .insert("x-backend", MetadataValue::from_static("yes"));
            Ok(resp)
        }
        // Echo, EchoAgain, Archive, Annotated: the request is the reply.
        _ => Ok(with_method(Response::new(req.into_inner()), &method)),
    }
}

/// An encoded `google.rpc.Status` with a BadRequest and an ErrorInfo detail,
/// built with the gateway's built-in google/rpc descriptors.
pub fn rpc_status_bytes(pool: &DescriptorPool, code: i32, message: &str) -> Vec<u8> {
    let get = |name: &str| {
        pool.get_message_by_name(name)
            .unwrap_or_else(|| panic!("{name} is not in the pool"))
    };
    let any = |m: &DynamicMessage| {
        let mut a = DynamicMessage::new(get("google.protobuf.Any"));
        a.set_field_by_name(
            "type_url",
            Value::String(format!(
                "type.googleapis.com/{}",
                m.descriptor().full_name()
            )),
        );
        a.set_field_by_name("value", Value::Bytes(m.encode_to_vec().into()));
        Value::Message(a)
    };
    let mut violation = DynamicMessage::new(get("google.rpc.BadRequest.FieldViolation"));
    violation.set_field_by_name("field", Value::String("string_field".into()));
    violation.set_field_by_name("description", Value::String("must not be empty".into()));
    let mut bad = DynamicMessage::new(get("google.rpc.BadRequest"));
    bad.set_field_by_name(
        "field_violations",
        Value::List(vec![Value::Message(violation)]),
    );
    let mut info = DynamicMessage::new(get("google.rpc.ErrorInfo"));
    info.set_field_by_name("reason", Value::String("TEST_REASON".into()));
    info.set_field_by_name("domain", Value::String("testing.v1".into()));
    info.set_field_by_name(
        "metadata",
        Value::Map(
            [(MapKey::String("k".into()), Value::String("v".into()))]
                .into_iter()
                .collect(),
        ),
    );
    let mut status = DynamicMessage::new(get("google.rpc.Status"));
    status.set_field_by_name("code", Value::I32(code));
    status.set_field_by_name("message", Value::String(message.into()));
    status.set_field_by_name("details", Value::List(vec![any(&bad), any(&info)]));
    status.encode_to_vec()
}

/// An encoded `google.rpc.Status` whose one detail has a type that no
/// descriptor defines (`testing.v1.NotInAnyPool`), holding bytes 1, 2, 3.
pub fn unknown_detail_status_bytes(pool: &DescriptorPool, code: i32, message: &str) -> Vec<u8> {
    let get = |name: &str| {
        pool.get_message_by_name(name)
            .unwrap_or_else(|| panic!("{name} is not in the pool"))
    };
    let mut any = DynamicMessage::new(get("google.protobuf.Any"));
    any.set_field_by_name(
        "type_url",
        Value::String("type.googleapis.com/testing.v1.NotInAnyPool".into()),
    );
    any.set_field_by_name("value", Value::Bytes(vec![1u8, 2, 3].into()));
    let mut status = DynamicMessage::new(get("google.rpc.Status"));
    status.set_field_by_name("code", Value::I32(code));
    status.set_field_by_name("message", Value::String(message.into()));
    status.set_field_by_name("details", Value::List(vec![Value::Message(any)]));
    status.encode_to_vec()
}

/// Binds `server` on an ephemeral loopback port; returns `host:port`.
pub async fn spawn_backend(server: DynamicServer) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let addr = listener.local_addr().expect("backend addr");
    tokio::spawn(server.serve(listener));
    addr.to_string()
}

/// A loopback address where nothing listens (bound, then released).
pub async fn dead_addr() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    drop(l);
    addr
}

// ---------------------------------------------------------------------------
// Configs
// ---------------------------------------------------------------------------

/// Everything after the `[server]` header of the standard test config. Use
/// [`echo_config`] to add server options.
pub const ECHO_CONFIG_BODY: &str = r#"listen = "127.0.0.1:0"
descriptors = "{descriptors}"
forward_headers = ["x-request-id"]

[backends.echo]
endpoints = ["{backend}"]
services = ["testing.v1.Echo"]
timeout = "5s"
connect_timeout = "1s"

[[routes]]
method = "GET"
path = "/v1/echo"
grpc = "testing.v1.Echo/Echo"

[[routes]]
method = "POST"
path = "/v1/echo"
grpc = "testing.v1.Echo/Echo"
body = "*"

[[routes]]
method = "PUT"
path = "/v1/echo/{string_field}"
grpc = "testing.v1.Echo/Echo"
body = "*"

[[routes]]
method = "GET"
path = "/v1/single/{string_field}"
grpc = "testing.v1.Echo/Echo"

[[routes]]
method = "GET"
path = "/v1/multi/{string_field=**}"
grpc = "testing.v1.Echo/Echo"

[[routes]]
method = "GET"
path = "/v1/deep/{inner.deeper.value}"
grpc = "testing.v1.Echo/Echo"

[[routes]]
method = "GET"
path = "/v1/resources/{name=shelves/*/books/*}"
grpc = "testing.v1.Echo/Echo"

[[routes]]
method = "GET"
path = "/v1/wild/**/tail"
grpc = "testing.v1.Echo/Echo"

[[routes]]
method = "GET"
path = "/v1/int32/{int32_field}"
grpc = "testing.v1.Echo/Echo"

[[routes]]
method = "GET"
path = "/v1/int64/{int64_field}"
grpc = "testing.v1.Echo/Echo"

[[routes]]
method = "GET"
path = "/v1/uint32/{uint32_field}"
grpc = "testing.v1.Echo/Echo"

[[routes]]
method = "GET"
path = "/v1/uint64/{uint64_field}"
grpc = "testing.v1.Echo/Echo"

[[routes]]
method = "GET"
path = "/v1/bool/{bool_field}"
grpc = "testing.v1.Echo/Echo"

[[routes]]
method = "GET"
path = "/v1/color/{color}"
grpc = "testing.v1.Echo/Echo"

[[routes]]
method = "GET"
path = "/v1/timestamp/{timestamp}"
grpc = "testing.v1.Echo/Echo"

[[routes]]
method = "GET"
path = "/v1/wrapper/{int64_wrapper}"
grpc = "testing.v1.Echo/Echo"

[[routes]]
method = "POST"
path = "/v1/items/{string_field}:activate"
grpc = "testing.v1.Echo/EchoAgain"
body = "*"

[[routes]]
method = "POST"
path = "/v1/inner"
grpc = "testing.v1.Echo/Echo"
body = "inner"

[[routes]]
method = "POST"
path = "/v1/inner/{inner.name}"
grpc = "testing.v1.Echo/Echo"
body = "inner"

[[routes]]
method = "POST"
path = "/v1/tags"
grpc = "testing.v1.Echo/Echo"
body = "tags"

[[routes]]
method = "GET"
path = "/v1/inner-only"
grpc = "testing.v1.Echo/Echo"
response_body = "inner"

[[routes]]
method = "GET"
path = "/v1/tags-only"
grpc = "testing.v1.Echo/Echo"
response_body = "tags"

[[routes]]
method = "GET"
path = "/v1/annotated/{string_field}"
grpc = "testing.v1.Echo/EchoAgain"

[[routes]]
method = "GET"
path = "/v1/fail"
grpc = "testing.v1.Echo/Fail"

[[routes]]
method = "GET"
path = "/v1/sleep"
grpc = "testing.v1.Echo/Sleep"
timeout = "300ms"

[[routes]]
method = "GET"
path = "/v1/meta"
grpc = "testing.v1.Echo/Meta"
forward_headers = ["x-route-header"]
"#;

/// The standard test config with extra `[server]` lines (e.g. `emit_defaults = true`).
pub fn echo_config(server_extra: &str) -> String {
    let mut s = String::from("[server]\n");
    s.push_str(server_extra);
    s.push('\n');
    s.push_str(ECHO_CONFIG_BODY);
    s
}

/// Replaces `{backend}` and `{descriptors}` in a config template.
pub fn render_config(template: &str, backend: &str, descriptors: &Path) -> String {
    template
        .replace("{backend}", backend)
        .replace("{descriptors}", &toml_path(descriptors))
}

/// A path as a TOML basic-string body.
pub fn toml_path(p: &Path) -> String {
    p.display().to_string().replace('\\', "\\\\")
}

// ---------------------------------------------------------------------------
// The gateway under test
// ---------------------------------------------------------------------------

/// A gateway serving on loopback, with the backend it talks to.
pub struct TestGateway {
    /// Where the gateway listens.
    pub addr: SocketAddr,
    /// The backend address substituted for `{backend}`.
    pub backend: String,
    /// The routes.toml the gateway was loaded from.
    pub config_path: PathBuf,
    pub client: reqwest::Client,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        remove_temp_parent(&self.config_path);
    }
}

/// A plain HTTP client: no proxy from the environment, no redirects.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("build reqwest client")
}

impl TestGateway {
    /// Starts the Echo backend and a gateway from `template` (`{backend}` and
    /// `{descriptors}` are replaced; descriptors default to the fixtures).
    pub async fn start(template: &str) -> TestGateway {
        let backend = spawn_backend(echo_server(&testing_pool())).await;
        Self::start_with(template, &backend, &testing_descriptors()).await
    }

    /// The standard Echo config with extra `[server]` lines.
    pub async fn echo(server_extra: &str) -> TestGateway {
        Self::start(&echo_config(server_extra)).await
    }

    /// Starts a gateway in front of an already running backend.
    pub async fn start_with(template: &str, backend: &str, descriptors: &Path) -> TestGateway {
        let text = render_config(template, backend, descriptors);
        let config_path = write_config(&text);
        let snapshot = Snapshot::load(&config_path)
            .unwrap_or_else(|e| panic!("test config does not load:\n{e}\n--- config ---\n{text}"));
        Self::serve(snapshot, backend, config_path).await
    }

    /// Serves an already loaded snapshot.
    pub async fn serve(snapshot: Snapshot, backend: &str, config_path: PathBuf) -> TestGateway {
        let gw = Gateway::new(snapshot);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind gateway");
        let addr = listener.local_addr().expect("gateway addr");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = gateway::server::serve(listener, gw, async move {
                let _ = rx.await;
            })
            .await;
        });
        TestGateway {
            addr,
            backend: backend.to_owned(),
            config_path,
            client: http_client(),
            shutdown: Some(tx),
        }
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{path_and_query}", self.addr)
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.request("GET", path, &[], None).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.request("DELETE", path, &[], None).await
    }

    /// Sends `body` as application/json.
    pub async fn post(&self, path: &str, body: &serde_json::Value) -> Reply {
        self.json("POST", path, body).await
    }

    pub async fn patch(&self, path: &str, body: &serde_json::Value) -> Reply {
        self.json("PATCH", path, body).await
    }

    pub async fn put(&self, path: &str, body: &serde_json::Value) -> Reply {
        self.json("PUT", path, body).await
    }

    pub async fn json(&self, method: &str, path: &str, body: &serde_json::Value) -> Reply {
        let bytes = serde_json::to_vec(body).expect("serialise body");
        self.request(
            method,
            path,
            &[("content-type", "application/json")],
            Some(bytes),
        )
        .await
    }

    /// Sends raw body bytes as application/json.
    pub async fn send_raw_json(&self, method: &str, path: &str, body: &[u8]) -> Reply {
        self.request(
            method,
            path,
            &[("content-type", "application/json")],
            Some(body.to_vec()),
        )
        .await
    }

    /// Any request through reqwest.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Reply {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut rb = self.client.request(method.clone(), self.url(path));
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        if let Some(b) = body {
            rb = rb.body(b);
        }
        let resp = rb
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: request failed: {e:?}"));
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.expect("read body");
        Reply::new(format!("{method} {path}"), status, headers, &bytes)
    }

    /// Writes `head` (request line and headers, without the final blank line;
    /// `Host` and `Connection: close` are added) and `body` on a fresh TCP
    /// connection, and parses the HTTP/1.1 answer. For requests an HTTP
    /// client library would refuse or normalise.
    pub async fn raw(&self, head: &str, body: &[u8]) -> Reply {
        let mut stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect to gateway");
        let mut req = head.trim_end_matches("\r\n").to_owned();
        req.push_str(&format!(
            "\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        ));
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        // The gateway may answer (413) and close before reading everything.
        let _ = stream.write_all(&bytes).await;
        let mut out = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
        if read.is_err() {
            panic!(
                "{head}: no complete answer within 10s; got so far: {:?}",
                String::from_utf8_lossy(&out)
            );
        }
        parse_http_response(head.lines().next().unwrap_or(head), &out)
    }
}

fn parse_http_response(what: &str, raw: &[u8]) -> Reply {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("{what}: no HTTP answer: {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{what}: bad status line {status_line:?}"));
    let mut headers = http::HeaderMap::new();
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            if let (Ok(k), Ok(v)) = (
                http::HeaderName::from_bytes(k.trim().as_bytes()),
                http::HeaderValue::from_str(v.trim()),
            ) {
                headers.append(k, v);
            }
        }
    }
    let chunked = headers
        .get(http::header::TRANSFER_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Reply::new(what.to_owned(), status, headers, &body)
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or(0);
        data = &data[eol + 2..];
        if size == 0 || data.len() < size {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[(size + 2).min(data.len())..];
    }
}

/// One HTTP answer.
#[derive(Debug, Clone)]
pub struct Reply {
    /// "METHOD path", for assertion messages.
    pub request: String,
    pub status: u16,
    pub headers: http::HeaderMap,
    /// The body as JSON, or `Null` when it is not JSON.
    pub json: serde_json::Value,
    pub text: String,
}

impl Reply {
    pub fn new(request: String, status: u16, headers: http::HeaderMap, body: &[u8]) -> Reply {
        Reply {
            request,
            status,
            headers,
            json: serde_json::from_slice(body).unwrap_or(serde_json::Value::Null),
            text: String::from_utf8_lossy(body).into_owned(),
        }
    }

    /// A header's value as text ("" when absent).
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or("<not text>"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Asserts 200 with a JSON body; returns the body.
    #[track_caller]
    pub fn ok(&self) -> &serde_json::Value {
        assert_eq!(
            self.status, 200,
            "{}: expected 200, got {} with body {}",
            self.request, self.status, self.text
        );
        assert!(
            self.header("content-type").starts_with("application/json"),
            "{}: content-type {:?}",
            self.request,
            self.header("content-type")
        );
        assert!(
            !self.json.is_null() || self.text.trim() == "null",
            "{}: body is not JSON: {:?}",
            self.request,
            self.text
        );
        &self.json
    }

    /// Asserts an error answer: HTTP `status`, JSON body
    /// `{"code": code, "message": <contains `contains`>, "details": [...]}`.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: i32, contains: &str) {
        assert_eq!(
            self.status, status,
            "{}: expected HTTP {status}, got {} with body {}",
            self.request, self.status, self.text
        );
        if let Err(e) = check_error_body(&self.json, code, contains) {
            panic!("{}: {e}; body: {}", self.request, self.text);
        }
    }

    /// The error message of an error body ("" when absent).
    pub fn message(&self) -> &str {
        self.json
            .get("message")
            .and_then(|m| m.as_str())
            .unwrap_or("")
    }
}

/// Checks the shape of an error body; Err describes the first mismatch.
pub fn check_error_body(body: &serde_json::Value, code: i32, contains: &str) -> Result<(), String> {
    let obj = body
        .as_object()
        .ok_or_else(|| "error body is not a JSON object".to_owned())?;
    if obj.get("code").and_then(|c| c.as_i64()) != Some(i64::from(code)) {
        return Err(format!(
            "expected \"code\": {code}, got {:?}",
            obj.get("code")
        ));
    }
    let message = obj
        .get("message")
        .and_then(|m| m.as_str())
        .ok_or_else(|| "no string \"message\"".to_owned())?;
    if !message.contains(contains) {
        return Err(format!("message {message:?} does not contain {contains:?}"));
    }
    if !obj.get("details").is_some_and(|d| d.is_array()) {
        return Err("no \"details\" array".to_owned());
    }
    if let Some(extra) = obj
        .keys()
        .find(|k| !matches!(k.as_str(), "code" | "message" | "details"))
    {
        return Err(format!("unexpected key {extra:?} in the error body"));
    }
    Ok(())
}

/// The 1-based line of the first line of `text` containing `needle`.
#[track_caller]
pub fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("{needle:?} is not in the text"))
}

/// The 1-based line of the n-th (0-based) line containing `needle`.
#[track_caller]
pub fn nth_line_of(text: &str, needle: &str, n: usize) -> usize {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .nth(n)
        .map(|(i, _)| i + 1)
        .unwrap_or_else(|| panic!("{needle:?} occurs fewer than {} times", n + 1))
}

// The streaming, raw-body, shaping and OpenAPI tests' backend and helpers.
pub mod streaming;

// Headless Chromium for the browser tests.
pub mod browser;

// The edge-security tests' keys, tokens, JWKS and page servers, counting backend.
pub mod edge;

// The gateway run with its admin listener and watcher, as `gateway serve` does.
pub mod running;

// The trace tests' in-process OTLP collectors and shared export.
pub mod otel;

// The metrics tests' reference parser for the Prometheus text format.
pub mod exposition;

// Certificates made at run time and gRPC backends behind TLS (the
// backend-TLS tests, the bench's HTTPS scenarios).
pub mod tls;
// A real redis-server on a free port, for the shared rate-limit tests.
pub mod redis;

/// Binds `addr` again for a test server restarted on its old port, waiting
/// up to a second for the old socket to let go of it.
pub async fn bind_again(addr: std::net::SocketAddr) -> tokio::net::TcpListener {
    let mut tries = 0;
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(_) if tries < 50 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => panic!("cannot bind {addr} again: {e}"),
        }
    }
}

/// The debug `gateway` binary, built once per test process.
///
/// The build asks for `--tests` as well so Cargo resolves features exactly as
/// `cargo test --workspace` did (resolver 2 unifies dev-dependency features
/// only when test targets are in the build). Without it, Cargo compiles a
/// second copy of the whole dependency tree for the binary, which doubled
/// the build time and once filled CI's disk. With it, the build is a no-op
/// apart from linking the binary.
pub fn gateway_bin() -> &'static std::path::Path {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "--workspace", "--tests", "--bin", "gateway"])
            .current_dir(repo_root())
            .status()
            .expect("run cargo build");
        assert!(
            status.success(),
            "cargo build --workspace --tests --bin gateway failed"
        );
        let bin = target_dir()
            .join("debug")
            .join(format!("gateway{}", std::env::consts::EXE_SUFFIX));
        assert!(bin.exists(), "no gateway binary at {}", bin.display());
        bin
    })
}

/// Cargo's target directory: `CARGO_TARGET_DIR` (relative to the repo root)
/// or `target/`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from) {
        Some(p) if p.is_absolute() => p,
        Some(p) => repo_root().join(p),
        None => repo_root().join("target"),
    }
}
