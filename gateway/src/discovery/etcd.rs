//! Instances registered in etcd under a key prefix, read once and then
//! watched.
//!
//! Speaks etcd's own HTTP/JSON gateway of the v3 API
//! (<https://etcd.io/docs/v3.4/dev-guide/api_grpc_gateway/>), which every
//! etcd since 3.4 serves on its client port:
//!
//! - `POST /v3/kv/range` with the base64 `key` (the prefix) and `range_end`
//!   (the prefix with its last byte incremented: every key under it) gives
//!   the instances and the store's revision;
//! - `POST /v3/watch` with a `create_request` from that revision + 1 streams
//!   newline-delimited JSON results: the PUT and DELETE events after the
//!   read, so nothing between the read and the watch is missed. A lease
//!   that expires deletes its keys, which the watch sees as DELETEs;
//! - a watch cancelled because its revision was compacted away, a stream
//!   that ends or breaks (etcd restarted, a proxy cut it), or a watch error
//!   starts over with a new read (after a backoff when it keeps happening);
//! - with a user, `POST /v3/auth/authenticate` gives a token sent as the
//!   `Authorization` header; it is asked for again before every read, so a
//!   token that expired (etcd's simple tokens live 5 minutes) costs one
//!   retry.
//!
//! The `etcd-client` crate is not used: it generates its gRPC code with
//! protoc at build time, which the project's one-command build cannot
//! assume. This is the project's reqwest client with its rustls stack:
//! `https://` endpoints are verified against the system roots plus the CA
//! file a backend names, with an optional client certificate.
//!
//! Two layouts of the values are understood (see [`Layout`]); a value that
//! does not fit is skipped with a warning naming its key, the rest of the
//! list is used. When etcd cannot be read the last list stays in force.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Deserializer};
use tokio::task::AbortHandle;

use super::{backoff, value, Sink, Source, SourceError, SourceKind, StateLog, Target};

pub const KIND: SourceKind = SourceKind::new("etcd");

/// A reachable etcd answers a TCP connect in milliseconds.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A range read of one service's keys is small and served from memory; a
/// read that takes longer means etcd is stuck (no leader, disk stalled).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Keepalive probes on the watch connection, so a peer that vanished
/// without closing it (a host that died, a dropped NAT entry) is noticed
/// in about a minute rather than never: the watch itself is silent while
/// nothing changes.
const TCP_KEEPALIVE: Duration = Duration::from_secs(30);
/// Retry schedule after a failed read, as for Consul: a restarting etcd is
/// back within seconds, and a long outage is still noticed within 10 s of
/// its end.
const BASE_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// One watch message holds the events of one revision range; etcd caps a
/// request at 1.5 MiB, so even a large batch of instance keys stays far
/// below this. A longer line is an answer this client will not buffer.
const MAX_LINE_BYTES: usize = 16 << 20;

/// How the values under the prefix describe an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// grpc-go's etcd naming (`go.etcd.io/etcd/client/v3/naming/endpoints`):
    /// keys `<prefix><anything>` (the manager writes `<target>/<addr>`) with
    /// JSON values `{"Op": 0, "Addr": "host:port", "Metadata": ...}`. `Op`
    /// must be 0 (add) or absent; `Metadata` is ignored.
    GrpcGo,
    /// Keys `<prefix><instance>` whose values are `host:port` or one of the
    /// JSON shapes in [`super::value`].
    Plain,
}

impl Layout {
    pub const NAMES: &'static str = "\"plain\" or \"grpc-go\"";

    pub fn parse(s: &str) -> Option<Layout> {
        match s {
            "grpc-go" => Some(Layout::GrpcGo),
            "plain" => Some(Layout::Plain),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Layout::GrpcGo => "grpc-go",
            Layout::Plain => "plain",
        }
    }
}

/// What to watch, as configured; equal specs keep a live watch across reloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdSpec {
    /// `http://host:port` or `https://host:port`, without a trailing slash;
    /// tried in turn until one answers.
    pub endpoints: Vec<String>,
    /// Every key starting with this is an instance; ends with `/`.
    pub prefix: String,
    pub layout: Layout,
    pub username: Option<String>,
    /// The environment variable holding the user's password.
    pub password_env: Option<String>,
    /// Extra CA certificates (PEM) to trust for `https://` endpoints.
    pub ca_pem: Option<Vec<u8>>,
    /// A client certificate chain and its key (PEM, concatenated).
    pub identity_pem: Option<Vec<u8>>,
}

impl EtcdSpec {
    /// `etcd prefix "/services/users/" (grpc-go) at http://127.0.0.1:2379`.
    pub fn describe(&self) -> String {
        format!(
            "etcd prefix \"{}\" ({}) at {}",
            self.prefix,
            self.layout.name(),
            self.endpoints.join(",")
        )
    }
}

/// The end of the range holding every key that starts with `prefix`: the
/// prefix with its last byte below 0xff incremented (etcd's own
/// `GetPrefixRangeEnd`); `\0` (every key) when there is none.
pub fn range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Why etcd gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("cannot reach etcd at {address}: {reason}")]
    Unreachable { address: String, reason: String },
    #[error("etcd refused the credentials: {0}")]
    Auth(String),
    #[error("etcd answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("etcd's answer is not usable: {0}")]
    BadReply(String),
    #[error("the watch was cancelled: {0}")]
    Cancelled(String),
}

impl EtcdError {
    /// Errors of one kind are one state for logging.
    fn kind(&self) -> &'static str {
        match self {
            EtcdError::Unreachable { .. } => "unreachable",
            EtcdError::Auth(_) => "auth",
            EtcdError::Status { .. } => "status",
            EtcdError::BadReply(_) => "bad reply",
            EtcdError::Cancelled(_) => "cancelled",
        }
    }
}

/// etcd's JSON writes 64-bit integers as strings; accept numbers too.
fn int64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum N {
        S(String),
        I(i64),
    }
    match Option::<N>::deserialize(d)? {
        None => Ok(0),
        Some(N::I(i)) => Ok(i),
        Some(N::S(s)) => s.parse().map_err(serde::de::Error::custom),
    }
}

#[derive(Deserialize, Default)]
struct Header {
    #[serde(default, deserialize_with = "int64")]
    revision: i64,
}

#[derive(Deserialize)]
struct Kv {
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: String,
}

#[derive(Deserialize)]
struct RangeReply {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    kvs: Vec<Kv>,
}

#[derive(Deserialize)]
struct Event {
    /// `PUT` is the default and left out of the JSON.
    #[serde(rename = "type", default)]
    kind: Option<String>,
    kv: Kv,
}

#[derive(Deserialize, Default)]
struct WatchResult {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    canceled: bool,
    #[serde(default, deserialize_with = "int64")]
    compact_revision: i64,
    #[serde(default)]
    cancel_reason: String,
    #[serde(default)]
    events: Vec<Event>,
}

#[derive(Deserialize)]
struct WatchLine {
    result: Option<WatchResult>,
    error: Option<serde_json::Value>,
}

/// The instances under the prefix, by key, as the last read and the watch
/// events since left them.
#[derive(Debug, Default)]
pub struct Listing {
    by_key: BTreeMap<Vec<u8>, Target>,
}

impl Listing {
    /// The current list: one target per address (two keys naming one
    /// address are one instance).
    pub fn targets(&self) -> Vec<Target> {
        let mut out: Vec<Target> = Vec::with_capacity(self.by_key.len());
        for t in self.by_key.values() {
            if !out.iter().any(|o| o.addr == t.addr) {
                out.push(t.clone());
            }
        }
        out
    }
}

/// A key and value as the layout reads them: the instance, or why not.
pub fn target(layout: Layout, prefix: &str, key: &[u8], value: &[u8]) -> Result<Target, String> {
    let addr = match layout {
        Layout::Plain => value::parse(value)?,
        Layout::GrpcGo => {
            #[derive(Deserialize)]
            struct Update {
                #[serde(rename = "Op", default)]
                op: u8,
                #[serde(rename = "Addr")]
                addr: String,
            }
            let u: Update = serde_json::from_slice(value).map_err(|e| {
                format!("not grpc-go's {{\"Op\": 0, \"Addr\": \"host:port\"}} JSON: {e}")
            })?;
            if u.op != 0 {
                return Err(format!("Op is {} (only 0, add, names an instance)", u.op));
            }
            value::host_port(&u.addr)?
        }
    };
    let key = String::from_utf8_lossy(key);
    let label = key.strip_prefix(prefix).unwrap_or(&key);
    Ok(Target {
        addr,
        weight: 1,
        label: Some(label.to_owned()),
    })
}

/// The v3 JSON gateway of an etcd cluster, over the project's HTTP client.
#[derive(Debug, Clone)]
pub struct EtcdClient {
    http: reqwest::Client,
    spec: EtcdSpec,
    /// Read once from the environment.
    password: Option<String>,
    /// The endpoint that answered last, tried first next time.
    current: usize,
}

/// How a watch ended; every end is followed by a new read.
enum WatchEnd {
    /// The revision was compacted away (or etcd cancelled the watch for
    /// another reason it states).
    Cancelled(String),
    /// The stream ended or broke.
    Lost(EtcdError),
}

impl EtcdClient {
    pub fn new(spec: EtcdSpec) -> Result<EtcdClient, EtcdError> {
        let unusable = |reason: String| EtcdError::Unreachable {
            address: spec.endpoints.join(","),
            reason,
        };
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_keepalive(TCP_KEEPALIVE);
        if let Some(pem) = &spec.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| unusable(format!("bad CA file: {e}")))?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let Some(pem) = &spec.identity_pem {
            let id = reqwest::Identity::from_pem(pem)
                .map_err(|e| unusable(format!("bad client certificate or key: {e}")))?;
            builder = builder.identity(id);
        }
        let http = builder.build().map_err(|e| unusable(e.to_string()))?;
        let password = spec
            .password_env
            .as_ref()
            .and_then(|v| std::env::var(v).ok());
        Ok(EtcdClient {
            http,
            spec,
            password,
            current: 0,
        })
    }

    pub fn spec(&self) -> &EtcdSpec {
        &self.spec
    }

    /// POSTs `body` to `path` on the first endpoint that answers, starting
    /// with the one that answered last. `timeout` bounds the whole request
    /// (none for a watch).
    async fn post(
        &mut self,
        path: &str,
        body: &serde_json::Value,
        token: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, EtcdError> {
        let n = self.spec.endpoints.len();
        let mut last = None;
        for i in 0..n {
            let at = (self.current + i) % n;
            let endpoint = &self.spec.endpoints[at];
            let mut req = self.http.post(format!("{endpoint}{path}")).json(body);
            if let Some(t) = timeout {
                req = req.timeout(t);
            }
            if let Some(token) = token {
                req = req.header("Authorization", token);
            }
            match req.send().await {
                Ok(resp) => {
                    self.current = at;
                    return check(resp).await;
                }
                Err(e) => {
                    last = Some(EtcdError::Unreachable {
                        address: endpoint.clone(),
                        reason: error_chain(&e),
                    })
                }
            }
        }
        Err(last.unwrap_or_else(|| EtcdError::BadReply("no endpoint configured".into())))
    }

    /// A token for the configured user (none without one).
    async fn authenticate(&mut self) -> Result<Option<String>, EtcdError> {
        let Some(user) = self.spec.username.clone() else {
            return Ok(None);
        };
        let Some(password) = self.password.clone() else {
            return Err(EtcdError::Auth(format!(
                "the environment variable {} holding {user}'s password is not set",
                self.spec
                    .password_env
                    .as_deref()
                    .unwrap_or("(password_env)")
            )));
        };
        let body = serde_json::json!({"name": user, "password": password});
        let resp = self
            .post("/v3/auth/authenticate", &body, None, Some(REQUEST_TIMEOUT))
            .await
            .map_err(|e| match e {
                EtcdError::Status { message, .. } => EtcdError::Auth(message),
                other => other,
            })?;
        #[derive(Deserialize)]
        struct Token {
            #[serde(default)]
            token: String,
        }
        let t: Token = read_json(resp).await?;
        if t.token.is_empty() {
            return Err(EtcdError::Auth(
                "authenticate gave no token (is auth enabled?)".into(),
            ));
        }
        Ok(Some(t.token))
    }

    /// Every key under the prefix, and the revision of that view.
    async fn range(&mut self, token: Option<&str>, log: &str) -> Result<(Listing, i64), EtcdError> {
        let prefix = self.spec.prefix.as_bytes();
        let body = serde_json::json!({
            "key": B64.encode(prefix),
            "range_end": B64.encode(range_end(prefix)),
        });
        let resp = self
            .post("/v3/kv/range", &body, token, Some(REQUEST_TIMEOUT))
            .await?;
        let reply: RangeReply = read_json(resp).await?;
        let mut listing = Listing::default();
        for kv in reply.kvs {
            self.apply(&mut listing, &kv, false, log)?;
        }
        Ok((listing, reply.header.revision))
    }

    /// One key's PUT (or DELETE) applied to `listing`; a value the layout
    /// cannot read is logged and leaves the key out.
    fn apply(
        &self,
        listing: &mut Listing,
        kv: &Kv,
        delete: bool,
        backend: &str,
    ) -> Result<(), EtcdError> {
        let key = B64
            .decode(&kv.key)
            .map_err(|e| EtcdError::BadReply(format!("a key is not base64: {e}")))?;
        if delete {
            listing.by_key.remove(&key);
            return Ok(());
        }
        let value = B64
            .decode(&kv.value)
            .map_err(|e| EtcdError::BadReply(format!("a value is not base64: {e}")))?;
        match target(self.spec.layout, &self.spec.prefix, &key, &value) {
            Ok(t) => {
                listing.by_key.insert(key, t);
            }
            Err(reason) => {
                listing.by_key.remove(&key);
                tracing::warn!(
                    backend,
                    key = %String::from_utf8_lossy(&key),
                    layout = self.spec.layout.name(),
                    reason,
                    "skipping an etcd key that does not name an instance"
                );
            }
        }
        Ok(())
    }

    /// Watches from `start`, applying events to `listing` and handing each
    /// new list to `sink`, until the watch ends.
    async fn watch(
        &mut self,
        token: Option<&str>,
        start: i64,
        listing: &mut Listing,
        sink: &dyn Sink,
        backend: &str,
    ) -> WatchEnd {
        let prefix = self.spec.prefix.as_bytes();
        let body = serde_json::json!({"create_request": {
            "key": B64.encode(prefix),
            "range_end": B64.encode(range_end(prefix)),
            "start_revision": start.to_string(),
        }});
        let mut resp = match self.post("/v3/watch", &body, token, None).await {
            Ok(r) => r,
            Err(e) => return WatchEnd::Lost(e),
        };
        let address = self.spec.endpoints[self.current].clone();
        let mut buf: Vec<u8> = Vec::new();
        loop {
            let chunk = match resp.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) => {
                    return WatchEnd::Lost(EtcdError::Unreachable {
                        address,
                        reason: "the watch stream ended".into(),
                    })
                }
                Err(e) => {
                    return WatchEnd::Lost(EtcdError::Unreachable {
                        address,
                        reason: error_chain(&e),
                    })
                }
            };
            buf.extend_from_slice(&chunk);
            while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                if let Some(end) = self.watch_line(&line, listing, sink, backend) {
                    return end;
                }
            }
            if buf.len() > MAX_LINE_BYTES {
                return WatchEnd::Lost(EtcdError::BadReply(format!(
                    "a watch message is longer than {MAX_LINE_BYTES} bytes"
                )));
            }
        }
    }

    /// One message of the watch stream; `Some` when it ends the watch.
    fn watch_line(
        &self,
        line: &[u8],
        listing: &mut Listing,
        sink: &dyn Sink,
        backend: &str,
    ) -> Option<WatchEnd> {
        let msg: WatchLine = match serde_json::from_slice(line) {
            Ok(m) => m,
            Err(e) => {
                return Some(WatchEnd::Lost(EtcdError::BadReply(format!(
                    "a watch message does not parse: {e}"
                ))))
            }
        };
        if let Some(err) = msg.error {
            let message = err
                .get("message")
                .and_then(|m| m.as_str())
                .map_or_else(|| err.to_string(), str::to_owned);
            return Some(WatchEnd::Lost(EtcdError::Cancelled(message)));
        }
        let result = msg.result.unwrap_or_default();
        if result.canceled || result.compact_revision > 0 {
            let reason = if result.compact_revision > 0 {
                format!(
                    "revision compacted (etcd keeps revisions from {})",
                    result.compact_revision
                )
            } else if result.cancel_reason.is_empty() {
                "cancelled by etcd".to_owned()
            } else {
                result.cancel_reason
            };
            return Some(WatchEnd::Cancelled(reason));
        }
        if result.events.is_empty() {
            return None;
        }
        for ev in &result.events {
            let delete = ev.kind.as_deref() == Some("DELETE");
            if let Err(e) = self.apply(listing, &ev.kv, delete, backend) {
                return Some(WatchEnd::Lost(e));
            }
        }
        let revision = result.header.revision;
        sink.update(listing.targets(), u64::try_from(revision).ok());
        None
    }
}

/// The response when it is a success; else etcd's error message.
async fn check(resp: reqwest::Response) -> Result<reqwest::Response, EtcdError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = resp.bytes().await.unwrap_or_default();
    // {"error": "...", "code": 16, "message": "etcdserver: invalid auth token"}
    let parsed: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
    let message = parsed
        .as_ref()
        .and_then(|v| v.get("message").or_else(|| v.get("error")))
        .and_then(|m| m.as_str())
        .map_or_else(|| short(&body), str::to_owned);
    let code = parsed
        .as_ref()
        .and_then(|v| v.get("code"))
        .and_then(serde_json::Value::as_u64);
    // gRPC's UNAUTHENTICATED and PERMISSION_DENIED; etcd answers a missing
    // or bad user with INVALID_ARGUMENT and says so in the message.
    let auth_message = [
        "user name is empty",
        "authentication failed",
        "invalid auth token",
    ]
    .iter()
    .any(|m| message.contains(m));
    if matches!(code, Some(16) | Some(7)) || auth_message {
        return Err(EtcdError::Auth(message));
    }
    Err(EtcdError::Status {
        status: status.as_u16(),
        message,
    })
}

async fn read_json<T: serde::de::DeserializeOwned>(
    resp: reqwest::Response,
) -> Result<T, EtcdError> {
    let body = resp
        .bytes()
        .await
        .map_err(|e| EtcdError::BadReply(error_chain(&e)))?;
    serde_json::from_slice(&body)
        .map_err(|e| EtcdError::BadReply(format!("the JSON does not parse: {e}")))
}

fn short(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

/// reqwest keeps the useful part ("Connection refused") in the source chain.
pub(crate) fn error_chain(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}

/// Reads and watches the prefix until the task is aborted (see the module
/// comment for the cycle).
pub async fn watch(mut client: EtcdClient, sink: Arc<dyn Sink>, backend: String) {
    let mut log = StateLog::new(&backend, client.spec().describe());
    let mut failures = 0u32;
    // Watches that ended soon after they started, in a row.
    let mut lost = 0u32;
    let mut known = 0usize;
    loop {
        let read = async {
            let token = client.authenticate().await?;
            let (listing, revision) = client.range(token.as_deref(), &backend).await?;
            Ok::<_, EtcdError>((token, listing, revision))
        }
        .await;
        let (token, mut listing, revision) = match read {
            Ok(r) => r,
            Err(e) => {
                failures += 1;
                let text = e.to_string();
                log.failed(e.kind(), &text, known);
                sink.failed(text);
                tokio::time::sleep(backoff(failures, BASE_BACKOFF, MAX_BACKOFF)).await;
                continue;
            }
        };
        failures = 0;
        let targets = listing.targets();
        known = targets.len();
        log.ok(known);
        sink.update(targets, u64::try_from(revision).ok());

        let started = Instant::now();
        let end = client
            .watch(
                token.as_deref(),
                revision + 1,
                &mut listing,
                &*sink,
                &backend,
            )
            .await;
        known = listing.targets().len();
        match end {
            WatchEnd::Cancelled(reason) => {
                tracing::info!(backend = %backend, reason, "etcd ended the watch; reading the prefix again");
            }
            WatchEnd::Lost(e) => {
                tracing::debug!(backend = %backend, error = %e, "etcd watch stream lost; reading the prefix again");
            }
        }
        // A watch that keeps ending at once (a proxy that cuts streams, a
        // revision compacted as fast as it is read) must not become a busy
        // loop; one that lived a while starts over at once.
        if started.elapsed() > MAX_BACKOFF {
            lost = 0;
        } else {
            lost += 1;
            tokio::time::sleep(backoff(lost, BASE_BACKOFF, MAX_BACKOFF)).await;
        }
    }
}

/// An etcd prefix as a discovery source: the client, built once.
#[derive(Debug)]
pub struct EtcdSource {
    client: EtcdClient,
}

impl EtcdSource {
    pub fn new(spec: EtcdSpec) -> Result<EtcdSource, SourceError> {
        let address = spec.endpoints.join(",");
        let client = EtcdClient::new(spec).map_err(|e| SourceError {
            address,
            reason: e.to_string(),
        })?;
        Ok(EtcdSource { client })
    }
}

impl Source for EtcdSource {
    fn kind(&self) -> SourceKind {
        KIND
    }

    fn describe(&self) -> String {
        self.client.spec().describe()
    }

    fn start(&self, backend: &str, sink: Arc<dyn Sink>) -> Vec<AbortHandle> {
        let task = tokio::spawn(watch(self.client.clone(), sink, backend.to_owned()));
        vec![task.abort_handle()]
    }

    /// Only an identical spec carries the endpoints over: another cluster,
    /// prefix, layout or user may list other instances.
    fn same_source(&self, other: &dyn Source) -> bool {
        other
            .downcast_ref::<EtcdSource>()
            .is_some_and(|o| o.client.spec() == self.client.spec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn the_range_end_covers_the_prefix() {
        assert_eq!(range_end(b"/services/users/"), b"/services/users0");
        assert_eq!(range_end(b"a\xff"), b"b");
        assert_eq!(range_end(b"\xff\xff"), b"\0");
    }

    #[test]
    fn layouts_read_their_values() {
        let p = "/svc/users/";
        let t = target(
            Layout::GrpcGo,
            p,
            b"/svc/users/10.0.0.1:5",
            br#"{"Op":0,"Addr":"10.0.0.1:5","Metadata":{"zone":"a"}}"#,
        )
        .unwrap();
        assert_eq!(t.addr, "10.0.0.1:5");
        assert_eq!(t.label.as_deref(), Some("10.0.0.1:5"));
        assert!(
            target(Layout::GrpcGo, p, b"k", br#"{"Op":1,"Addr":"10.0.0.1:5"}"#)
                .unwrap_err()
                .contains("Op is 1")
        );
        // grpc-go's layout is JSON only.
        assert!(target(Layout::GrpcGo, p, b"k", b"10.0.0.1:5").is_err());
        let t = target(Layout::Plain, p, b"/svc/users/a", b"10.0.0.2:6").unwrap();
        assert_eq!(
            (t.addr.as_str(), t.label.as_deref()),
            ("10.0.0.2:6", Some("a"))
        );
        assert!(target(Layout::Plain, p, b"k", b"nonsense").is_err());
    }

    /// A sink that records what it was given.
    #[derive(Default)]
    struct Seen(Mutex<Vec<Vec<String>>>);

    impl Sink for Seen {
        fn update(&self, targets: Vec<Target>, _version: Option<u64>) {
            self.0
                .lock()
                .unwrap()
                .push(targets.into_iter().map(|t| t.addr).collect());
        }
        fn failed(&self, _error: String) {}
    }

    fn client(layout: Layout) -> EtcdClient {
        EtcdClient::new(EtcdSpec {
            endpoints: vec!["http://127.0.0.1:1".into()],
            prefix: "/s/".into(),
            layout,
            username: None,
            password_env: None,
            ca_pem: None,
            identity_pem: None,
        })
        .unwrap()
    }

    fn kv(key: &str, value: &str) -> serde_json::Value {
        serde_json::json!({"key": B64.encode(key), "value": B64.encode(value), "mod_revision": "7"})
    }

    #[test]
    fn watch_events_put_and_delete_and_bad_values_are_skipped() {
        let c = client(Layout::Plain);
        let sink = Seen::default();
        let mut listing = Listing::default();
        let line = |events: serde_json::Value| {
            serde_json::to_vec(&serde_json::json!({"result": {
                "header": {"revision": "7"}, "events": events}}))
            .unwrap()
        };
        let puts = line(serde_json::json!([
            {"kv": kv("/s/a", "10.0.0.1:1")},
            {"type": "PUT", "kv": kv("/s/b", "{\"host\":\"10.0.0.2\",\"port\":2}")},
            {"kv": kv("/s/bad", "no port")},
            {"kv": kv("/s/dup", "10.0.0.1:1")},
        ]));
        assert!(c.watch_line(&puts, &mut listing, &sink, "b").is_none());
        let del = line(
            serde_json::json!([{"type": "DELETE", "kv": {"key": B64.encode("/s/a"), "mod_revision": "8"}}]),
        );
        assert!(c.watch_line(&del, &mut listing, &sink, "b").is_none());
        // The created message carries no events and changes nothing.
        let created = br#"{"result":{"header":{"revision":"8"},"created":true}}"#;
        assert!(c.watch_line(created, &mut listing, &sink, "b").is_none());
        assert_eq!(
            *sink.0.lock().unwrap(),
            vec![
                vec!["10.0.0.1:1".to_owned(), "10.0.0.2:2".to_owned()],
                // /s/dup still names 10.0.0.1:1 after /s/a left.
                vec!["10.0.0.2:2".to_owned(), "10.0.0.1:1".to_owned()],
            ]
        );
    }

    #[test]
    fn a_compacted_revision_ends_the_watch() {
        let c = client(Layout::GrpcGo);
        let sink = Seen::default();
        let mut listing = Listing::default();
        let compacted =
            br#"{"result":{"header":{"revision":"90"},"canceled":true,"compact_revision":"50"}}"#;
        assert!(matches!(
            c.watch_line(compacted, &mut listing, &sink, "b"),
            Some(WatchEnd::Cancelled(r)) if r.contains("compacted")
        ));
        let error = br#"{"error":{"grpc_code":16,"http_code":401,"message":"etcdserver: invalid auth token"}}"#;
        assert!(matches!(
            c.watch_line(error, &mut listing, &sink, "b"),
            Some(WatchEnd::Lost(EtcdError::Cancelled(m))) if m.contains("invalid auth token")
        ));
        assert!(sink.0.lock().unwrap().is_empty());
    }
}
