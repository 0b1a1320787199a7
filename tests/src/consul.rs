//! [`ConsulTestServer`]: Consul's HTTP API, the part the gateway uses, on
//! loopback, so discovery can be tested without a Consul binary.
//!
//! It follows Consul's documented behaviour for
//! `GET /v1/health/service/:service`
//! (<https://developer.hashicorp.com/consul/api-docs/health#list-service-instances-for-service>):
//!
//! - entries are `{"Node": {...}, "Service": {...}, "Checks": [...]}` with
//!   the node's `serfHealth` check and the service's own check, `Service.Address`
//!   (empty means "use `Node.Address`"), `Service.Port` and `Service.Weights`;
//! - `?passing` (or `passing=true`) keeps only instances whose checks all pass;
//! - `?tag=x` (repeatable) keeps instances carrying every tag given;
//! - `?dc=x` asks about another datacenter; an unknown one is
//!   `500 No path to datacenter`;
//! - blocking queries (<https://developer.hashicorp.com/consul/api-docs/features/blocking>):
//!   with `?index=N` the request waits until the index is greater than N,
//!   for at most `?wait` (default 5m, capped at 10m) plus up to `wait/16` of
//!   jitter; an index that went backwards is seen when the wait ends;
//!   every answer carries `X-Consul-Index`, `X-Consul-KnownLeader` and
//!   `X-Consul-LastContact`; `?stale` is accepted;
//! - ACLs (<https://developer.hashicorp.com/consul/docs/security/acl/tokens>):
//!   when a token is configured, a request with another token in
//!   `X-Consul-Token` (or `?token=`, or `Authorization: Bearer`) gets
//!   `403 ACL not found`, and one with no token runs as the anonymous token,
//!   which may not read the service: its list comes back empty with
//!   `X-Consul-Results-Filtered-By-ACLs: true`.
//!
//! It also serves Consul's KV store
//! (<https://developer.hashicorp.com/consul/api-docs/kv>), sharing the
//! catalog's index as Consul's Raft index is shared:
//!
//! - `PUT /v1/kv/<key>` stores the raw body (`?flags=` kept) and answers
//!   `true`; the value's `ModifyIndex` is the new index, `CreateIndex` the
//!   index it was first written at;
//! - `GET /v1/kv/<key>` answers `[{"Key","Value"(base64),"Flags",
//!   "CreateIndex","ModifyIndex","LockIndex","Session"}]`, with `?recurse`
//!   every key starting with `<key>` (sorted), with `?raw` the value's bytes
//!   alone; a missing key is a 404 with an empty body, still with
//!   `X-Consul-Index`; `X-Consul-Index` is the highest `ModifyIndex` among
//!   the keys answered (the KV store's last write when none), and blocking
//!   queries wait for it to pass `?index` as above;
//! - with ACLs on, another token is `403 ACL not found` and no token
//!   (the anonymous token, without KV rights) is `403 Permission denied`.
//!
//! The server can be stopped (every connection, including blocking queries
//! in progress, is cut, as when the agent dies) and started again on the
//! same port, also with an empty catalog and a lower index (as a dev agent
//! or a rebuilt cluster comes back), and its index can be moved backwards
//! (as after a snapshot restore) to exercise the client's reset rule. It
//! can answer every query with an error (`500 No cluster leader`, as
//! Consul does during an election), blocking queries in progress included.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::task::JoinSet;

/// The datacenter the server is in.
pub const DATACENTER: &str = "dc1";

/// A check's state, as Consul names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckStatus {
    Passing,
    Warning,
    Critical,
}

impl CheckStatus {
    fn as_str(self) -> &'static str {
        match self {
            CheckStatus::Passing => "passing",
            CheckStatus::Warning => "warning",
            CheckStatus::Critical => "critical",
        }
    }
}

/// One registered service instance.
#[derive(Debug, Clone)]
pub struct Instance {
    /// The service ID (unique per node).
    pub id: String,
    pub node: String,
    pub node_address: String,
    /// Empty: clients use the node's address.
    pub address: String,
    pub port: u16,
    pub tags: Vec<String>,
    pub datacenter: String,
    pub status: CheckStatus,
    pub weight_passing: u32,
    pub weight_warning: u32,
}

impl Instance {
    /// A passing instance on `127.0.0.1:port` in dc1, node `node-<id>`.
    pub fn new(id: &str, addr: &str) -> Instance {
        let (host, port) = addr.rsplit_once(':').expect("host:port");
        Instance {
            id: id.to_owned(),
            node: format!("node-{id}"),
            node_address: host.to_owned(),
            address: host.to_owned(),
            port: port.parse().expect("port"),
            tags: Vec::new(),
            datacenter: DATACENTER.to_owned(),
            status: CheckStatus::Passing,
            weight_passing: 1,
            weight_warning: 1,
        }
    }

    pub fn tags(mut self, tags: &[&str]) -> Instance {
        self.tags = tags.iter().map(|t| (*t).to_owned()).collect();
        self
    }

    pub fn datacenter(mut self, dc: &str) -> Instance {
        self.datacenter = dc.to_owned();
        self
    }

    pub fn weight(mut self, passing: u32) -> Instance {
        self.weight_passing = passing;
        self
    }

    /// Registers with an empty `Service.Address`: clients must use the node's.
    pub fn node_address_only(mut self) -> Instance {
        self.address = String::new();
        self
    }

    fn to_json(&self, service: &str, index: u64) -> serde_json::Value {
        serde_json::json!({
            "Node": {
                "ID": format!("00000000-0000-0000-0000-{:012}", self.port),
                "Node": self.node,
                "Address": self.node_address,
                "Datacenter": self.datacenter,
                "TaggedAddresses": {"lan": self.node_address, "wan": self.node_address},
                "Meta": {},
                "CreateIndex": 1,
                "ModifyIndex": index,
            },
            "Service": {
                "ID": self.id,
                "Service": service,
                "Tags": self.tags,
                "Address": self.address,
                "Meta": {},
                "Port": self.port,
                "Weights": {"Passing": self.weight_passing, "Warning": self.weight_warning},
                "EnableTagOverride": false,
                "CreateIndex": 1,
                "ModifyIndex": index,
            },
            "Checks": [
                {
                    "Node": self.node,
                    "CheckID": "serfHealth",
                    "Name": "Serf Health Status",
                    "Status": "passing",
                    "ServiceID": "",
                    "ServiceName": "",
                },
                {
                    "Node": self.node,
                    "CheckID": format!("service:{}", self.id),
                    "Name": format!("Service '{service}' check"),
                    "Status": self.status.as_str(),
                    "ServiceID": self.id,
                    "ServiceName": service,
                },
            ],
        })
    }
}

#[derive(Debug, Default)]
struct Catalog {
    index: u64,
    services: BTreeMap<String, Vec<Instance>>,
    kv: BTreeMap<String, KvEntry>,
    /// The index of the last KV write.
    kv_index: u64,
}

/// One stored KV pair.
#[derive(Debug, Clone)]
struct KvEntry {
    value: Vec<u8>,
    flags: u64,
    create_index: u64,
    modify_index: u64,
}

#[derive(Debug)]
struct Shared {
    catalog: Mutex<Catalog>,
    /// Carries the index: blocking queries wait on it.
    changed: tokio::sync::watch::Sender<u64>,
    token: Option<String>,
    /// Health queries answered (blocking or not).
    queries: AtomicUsize,
    /// Largest `wait` accepted; tests shorten it so a quiet watch still cycles.
    max_wait: Mutex<Duration>,
    /// While set, every health query is answered with this status and body.
    failing: Mutex<Option<(u16, String)>>,
}

/// Consul's health API on loopback; see the module documentation.
pub struct ConsulTestServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for ConsulTestServer {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

impl ConsulTestServer {
    /// Starts without ACLs.
    pub async fn start() -> ConsulTestServer {
        Self::start_inner(None).await
    }

    /// Starts with ACLs on: only `token` may read services.
    pub async fn start_with_token(token: &str) -> ConsulTestServer {
        Self::start_inner(Some(token.to_owned())).await
    }

    async fn start_inner(token: Option<String>) -> ConsulTestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind consul test server");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Shared {
            catalog: Mutex::new(Catalog {
                // A fresh Consul cluster's index is already well above 1.
                index: 10,
                services: BTreeMap::new(),
                kv: BTreeMap::new(),
                kv_index: 10,
            }),
            changed: tokio::sync::watch::channel(10).0,
            token,
            queries: AtomicUsize::new(0),
            max_wait: Mutex::new(Duration::from_secs(600)),
            failing: Mutex::new(None),
        });
        let task = tokio::spawn(serve(listener, shared.clone()));
        ConsulTestServer {
            addr,
            shared,
            task: Some(task),
        }
    }

    /// `http://127.0.0.1:<port>`, for `consul.address`.
    pub fn address(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The current `X-Consul-Index`.
    pub fn index(&self) -> u64 {
        self.shared.catalog.lock().unwrap().index
    }

    /// Health queries answered so far.
    pub fn queries(&self) -> usize {
        self.shared.queries.load(Ordering::Relaxed)
    }

    /// Caps every blocking query's wait (Consul caps at 10 minutes).
    pub fn set_max_wait(&self, wait: Duration) {
        *self.shared.max_wait.lock().unwrap() = wait;
    }

    fn change(&self, f: impl FnOnce(&mut Catalog)) {
        let index = {
            let mut c = self.shared.catalog.lock().unwrap();
            f(&mut c);
            c.index += 1;
            c.index
        };
        self.shared.changed.send_replace(index);
    }

    /// Registers (or replaces, by ID) an instance of `service`.
    pub fn register(&self, service: &str, instance: Instance) {
        self.change(|c| {
            let list = c.services.entry(service.to_owned()).or_default();
            list.retain(|i| i.id != instance.id);
            list.push(instance);
        });
    }

    pub fn deregister(&self, service: &str, id: &str) {
        self.change(|c| {
            if let Some(list) = c.services.get_mut(service) {
                list.retain(|i| i.id != id);
            }
        });
    }

    /// Writes a KV pair, as `consul kv put <key> <value>` does.
    pub fn kv_put(&self, key: &str, value: &[u8]) {
        kv_put(&self.shared, key, value.to_vec(), 0);
    }

    /// The stored value of `key`, if any.
    pub fn kv_get(&self, key: &str) -> Option<Vec<u8>> {
        let c = self.shared.catalog.lock().unwrap();
        c.kv.get(key).map(|e| e.value.clone())
    }

    /// The `ModifyIndex` of `key`, if it exists.
    pub fn kv_modify_index(&self, key: &str) -> Option<u64> {
        let c = self.shared.catalog.lock().unwrap();
        c.kv.get(key).map(|e| e.modify_index)
    }

    /// Sets the service check of one instance.
    pub fn set_status(&self, service: &str, id: &str, status: CheckStatus) {
        self.change(|c| {
            for i in c.services.get_mut(service).into_iter().flatten() {
                if i.id == id {
                    i.status = status;
                }
            }
        });
    }

    /// Moves the index to `index` (lower: as after a snapshot restore) and
    /// wakes every blocking query.
    pub fn reset_index(&self, index: u64) {
        self.shared.catalog.lock().unwrap().index = index;
        self.shared.changed.send_replace(index);
    }

    /// Answers every health query with `status` and `body` until
    /// [`heal`](Self::heal), ending blocking queries in progress with it too.
    pub fn fail_with(&self, status: u16, body: &str) {
        *self.shared.failing.lock().unwrap() = Some((status, body.to_owned()));
        self.shared.changed.send_modify(|_| {});
    }

    /// Answers normally again.
    pub fn heal(&self) {
        *self.shared.failing.lock().unwrap() = None;
    }

    /// Forgets every registration and sets the index to `index` (lower than
    /// before), as a dev agent or a rebuilt cluster comes back: call while
    /// stopped, register what the agents register again, then
    /// [`restart`](Self::restart).
    pub fn forget_all(&self, index: u64) {
        {
            let mut c = self.shared.catalog.lock().unwrap();
            c.services.clear();
            c.index = index;
        }
        self.shared.changed.send_replace(index);
    }

    /// Kills the server: the listener closes and every connection, blocking
    /// queries included, is cut.
    pub fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    /// Starts again on the same port, with the same catalog.
    pub async fn restart(&mut self) {
        self.stop();
        let listener = crate::bind_again(self.addr).await;
        self.task = Some(tokio::spawn(serve(listener, self.shared.clone())));
    }
}

/// Accepts until aborted; connections live in the JoinSet, so aborting this
/// task cuts them all.
async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        connections.spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(&shared, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
        // Reap finished connections so the set does not grow.
        while connections.try_join_next().is_some() {}
    }
}

type Resp = http::Response<Full<Bytes>>;

fn text(status: u16, body: &str) -> Resp {
    let mut r = http::Response::new(Full::new(Bytes::from(body.to_owned())));
    *r.status_mut() = http::StatusCode::from_u16(status).expect("status");
    r.headers_mut()
        .insert("content-type", "text/plain; charset=utf-8".parse().unwrap());
    r
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A Go duration as Consul reads `wait`: "10s", "5m", "300ms", "1h".
fn parse_wait(v: &str) -> Option<Duration> {
    let split = v.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = v.split_at(split);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return None,
    })
}

/// The query parameters, decoded, in order.
fn query_params(req: &http::Request<Incoming>) -> Vec<(String, String)> {
    let mut params: Vec<(String, String)> = Vec::new();
    for pair in req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        params.push((decode(k), decode(v)));
    }
    params
}

/// The ACL token from the header, the query or a bearer token.
fn request_token(req: &http::Request<Incoming>, params: &[(String, String)]) -> Option<String> {
    req.headers()
        .get("x-consul-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| {
            params
                .iter()
                .find(|(k, _)| k == "token")
                .map(|(_, v)| v.clone())
        })
        .or_else(|| {
            req.headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::to_owned)
        })
        .filter(|t| !t.is_empty())
}

/// Waits while `current()` is not above `index`, for at most `wait` (capped)
/// plus Consul's jitter, or until the server fails.
async fn block(shared: &Shared, index: u64, wait: Duration, current: impl Fn() -> u64) {
    let max = *shared.max_wait.lock().unwrap();
    let wait = wait.min(max);
    // Consul adds up to wait/16 so that many clients do not wake together.
    let jitter = wait.mul_f64(pseudo_random() / 16.0);
    let mut rx = shared.changed.subscribe();
    let deadline = tokio::time::Instant::now() + wait + jitter;
    // As Consul does, an index that went backwards does not end the
    // wait early: the client sees it when the wait is over.
    loop {
        rx.borrow_and_update();
        if current() > index || shared.failing.lock().unwrap().is_some() {
            return;
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => continue,
            _ => return,
        }
    }
}

fn kv_put(shared: &Shared, key: &str, value: Vec<u8>, flags: u64) {
    let index = {
        let mut c = shared.catalog.lock().unwrap();
        c.index += 1;
        let index = c.index;
        c.kv_index = index;
        let create_index = c.kv.get(key).map_or(index, |e| e.create_index);
        c.kv.insert(
            key.to_owned(),
            KvEntry {
                value,
                flags,
                create_index,
                modify_index: index,
            },
        );
        index
    };
    shared.changed.send_replace(index);
}

/// `/v1/kv/<key>`: see the module documentation.
async fn handle_kv(shared: &Shared, req: http::Request<Incoming>, key: String) -> Resp {
    let params = query_params(&req);
    let has = |k: &str| params.iter().any(|(p, _)| p == k);
    let get = |k: &str| params.iter().find(|(p, _)| p == k).map(|(_, v)| v.as_str());
    if let Some(required) = &shared.token {
        match request_token(&req, &params) {
            Some(t) if t == *required => {}
            Some(_) => return text(403, "ACL not found"),
            None => return text(403, "Permission denied"),
        }
    }
    if let Some((status, body)) = shared.failing.lock().unwrap().clone() {
        return text(status, &body);
    }
    if req.method() == http::Method::PUT {
        let flags = get("flags").and_then(|f| f.parse().ok()).unwrap_or(0);
        let body = match http_body_util::BodyExt::collect(req.into_body()).await {
            Ok(b) => b.to_bytes().to_vec(),
            Err(_) => return text(400, "cannot read the body"),
        };
        kv_put(shared, &key, body, flags);
        return json_response(200, b"true".to_vec(), None);
    }
    if req.method() != http::Method::GET {
        return text(405, "method not allowed");
    }
    let recurse = has("recurse");
    let matching = |c: &Catalog| -> Vec<(String, KvEntry)> {
        c.kv.iter()
            .filter(|(k, _)| {
                if recurse {
                    k.starts_with(&key)
                } else {
                    **k == key
                }
            })
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect()
    };
    let index_of = |c: &Catalog| {
        matching(c)
            .iter()
            .map(|(_, e)| e.modify_index)
            .max()
            .unwrap_or(c.kv_index)
    };
    if let Some(index) = get("index")
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|i| *i > 0)
    {
        let wait = get("wait")
            .and_then(parse_wait)
            .unwrap_or(Duration::from_secs(300));
        block(shared, index, wait, || {
            index_of(&shared.catalog.lock().unwrap())
        })
        .await;
        if let Some((status, body)) = shared.failing.lock().unwrap().clone() {
            return text(status, &body);
        }
    }
    shared.queries.fetch_add(1, Ordering::Relaxed);
    let (index, found) = {
        let c = shared.catalog.lock().unwrap();
        (index_of(&c), matching(&c))
    };
    if found.is_empty() {
        return json_response(404, Vec::new(), Some(index));
    }
    if has("raw") {
        return json_response(200, found[0].1.value.clone(), Some(index));
    }
    use base64::Engine as _;
    let list: Vec<serde_json::Value> = found
        .iter()
        .map(|(k, e)| {
            serde_json::json!({
                "Key": k,
                "Value": base64::engine::general_purpose::STANDARD.encode(&e.value),
                "Flags": e.flags,
                "CreateIndex": e.create_index,
                "ModifyIndex": e.modify_index,
                "LockIndex": 0,
                "Session": "",
            })
        })
        .collect();
    json_response(200, serde_json::to_vec(&list).expect("json"), Some(index))
}

fn json_response(status: u16, body: Vec<u8>, index: Option<u64>) -> Resp {
    let mut r = http::Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = http::StatusCode::from_u16(status).expect("status");
    let h = r.headers_mut();
    h.insert("content-type", "application/json".parse().unwrap());
    if let Some(index) = index {
        h.insert("x-consul-index", index.to_string().parse().unwrap());
        h.insert("x-consul-knownleader", "true".parse().unwrap());
        h.insert("x-consul-lastcontact", "0".parse().unwrap());
    }
    r
}

async fn handle(shared: &Shared, req: http::Request<Incoming>) -> Resp {
    let path = req.uri().path().to_owned();
    if let Some(key) = path.strip_prefix("/v1/kv/") {
        return handle_kv(shared, req, decode(key)).await;
    }
    let Some(service) = path.strip_prefix("/v1/health/service/") else {
        return text(404, "Not Found");
    };
    if req.method() != http::Method::GET {
        return text(405, "method not allowed");
    }
    let failing = || shared.failing.lock().unwrap().clone();
    if let Some((status, body)) = failing() {
        return text(status, &body);
    }
    let service = decode(service);
    let params = query_params(&req);
    let get = |k: &str| params.iter().find(|(p, _)| p == k).map(|(_, v)| v.as_str());
    let token = request_token(&req, &params);
    let mut filtered_by_acl = false;
    if let Some(required) = &shared.token {
        match &token {
            Some(t) if t == required => {}
            Some(_) => return text(403, "ACL not found"),
            None => filtered_by_acl = true,
        }
    }

    let dc = get("dc").unwrap_or(DATACENTER).to_owned();
    let known_dc = {
        let c = shared.catalog.lock().unwrap();
        dc == DATACENTER || c.services.values().flatten().any(|i| i.datacenter == dc)
    };
    if !known_dc {
        return text(500, "No path to datacenter");
    }
    let passing = match get("passing") {
        None => false,
        Some(v) => !matches!(v, "false" | "0"),
    };
    let tags: Vec<&str> = params
        .iter()
        .filter(|(k, _)| k == "tag")
        .map(|(_, v)| v.as_str())
        .collect();

    // Blocking: wait while our index is not greater than the client's.
    if let Some(index) = get("index")
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|i| *i > 0)
    {
        let wait = get("wait")
            .and_then(parse_wait)
            .unwrap_or(Duration::from_secs(300));
        block(shared, index, wait, || *shared.changed.borrow()).await;
        if let Some((status, body)) = failing() {
            return text(status, &body);
        }
    }

    shared.queries.fetch_add(1, Ordering::Relaxed);
    let (index, entries) = {
        let c = shared.catalog.lock().unwrap();
        let entries: Vec<serde_json::Value> = if filtered_by_acl {
            Vec::new()
        } else {
            c.services
                .get(&service)
                .into_iter()
                .flatten()
                .filter(|i| i.datacenter == dc)
                .filter(|i| !passing || i.status == CheckStatus::Passing)
                .filter(|i| tags.iter().all(|t| i.tags.iter().any(|it| it == t)))
                .map(|i| i.to_json(&service, c.index))
                .collect()
        };
        (c.index, entries)
    };
    let body = serde_json::to_vec(&entries).expect("json");
    let mut r = http::Response::new(Full::new(Bytes::from(body)));
    let h = r.headers_mut();
    h.insert("content-type", "application/json".parse().unwrap());
    h.insert("x-consul-index", index.to_string().parse().unwrap());
    h.insert("x-consul-knownleader", "true".parse().unwrap());
    h.insert("x-consul-lastcontact", "0".parse().unwrap());
    h.insert("x-consul-effective-consistency", "leader".parse().unwrap());
    if filtered_by_acl {
        h.insert("x-consul-results-filtered-by-acls", "true".parse().unwrap());
    }
    r
}

fn pseudo_random() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let bits = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (bits >> 11) as f64 / (1u64 << 53) as f64
}
