//! [`NacosTestServer`]: a Nacos naming API test server, the part of
//! Nacos' open API v1 (<https://nacos.io/docs/latest/guide/user/open-api/>)
//! the gateway uses, on loopback, so discovery can be tested without a
//! Nacos (a Java server) on the machine.
//!
//! - `GET /nacos/v1/ns/instance/list?serviceName=..&groupName=..&namespaceId=..&clusters=..&healthyOnly=..`
//!   answers as Nacos 2.x does: `{"name": "GROUP@@service", "groupName",
//!   "clusters", "cacheMillis", "hosts": [{"instanceId", "ip", "port",
//!   "weight" (a double), "healthy", "enabled", "ephemeral", "clusterName",
//!   "serviceName", "metadata", "instanceHeartBeatInterval",
//!   "instanceHeartBeatTimeOut", "ipDeleteTimeout", "instanceIdGenerator"}],
//!   "lastRefTime", "checksum", "allIPs", "reachProtectionThreshold",
//!   "valid"}`; `groupName` defaults to `DEFAULT_GROUP`, `namespaceId` to
//!   `public`; `healthyOnly=true` leaves unhealthy hosts out (disabled ones
//!   stay, with `enabled: false`, as Nacos lists them); an unknown service
//!   has no hosts; `serviceName` missing is a 400;
//! - `POST /nacos/v1/auth/login` with the form fields `username` and
//!   `password`: `{"accessToken", "tokenTtl", "globalAdmin", "username"}`,
//!   or `403 unknown user!`; with auth on, a list request without a valid
//!   `accessToken` parameter is a 403 (`token expired!` for one past its
//!   TTL, `user not found!` without one).
//!
//! It can be stopped (connections cut) and started again on the same port
//! with the same registry, and it can answer every request with a 500.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::task::JoinSet;

/// One registered instance.
#[derive(Debug, Clone)]
pub struct NacosInstance {
    pub ip: String,
    pub port: u16,
    pub weight: f64,
    pub healthy: bool,
    pub enabled: bool,
    pub cluster: String,
}

impl NacosInstance {
    /// A healthy, enabled instance of weight 1.0 in cluster `DEFAULT`, at
    /// `addr` (`ip:port`).
    pub fn new(addr: &str) -> NacosInstance {
        let (ip, port) = addr.rsplit_once(':').expect("ip:port");
        NacosInstance {
            ip: ip.to_owned(),
            port: port.parse().expect("port"),
            weight: 1.0,
            healthy: true,
            enabled: true,
            cluster: "DEFAULT".to_owned(),
        }
    }

    pub fn cluster(mut self, cluster: &str) -> NacosInstance {
        self.cluster = cluster.to_owned();
        self
    }

    pub fn weight(mut self, weight: f64) -> NacosInstance {
        self.weight = weight;
        self
    }

    fn id(&self, group: &str, service: &str) -> String {
        format!(
            "{}#{}#{}#{group}@@{service}",
            self.ip, self.port, self.cluster
        )
    }
}

/// (namespace, group, service).
type Key = (String, String, String);

#[derive(Debug, Default)]
struct Registry {
    services: BTreeMap<Key, Vec<NacosInstance>>,
    /// Milliseconds since the epoch of each service's last change.
    changed: BTreeMap<Key, u64>,
}

#[derive(Debug)]
struct Auth {
    user: String,
    password: String,
    ttl: Duration,
    tokens: BTreeMap<String, Instant>,
}

#[derive(Debug, Default)]
struct Shared {
    registry: Mutex<Registry>,
    auth: Mutex<Option<Auth>>,
    lists: AtomicUsize,
    logins: AtomicUsize,
    issued: AtomicUsize,
    failing: Mutex<bool>,
    /// The tokens sent with list requests, in order.
    tokens_seen: Mutex<Vec<String>>,
}

/// The server; see the module documentation.
pub struct NacosTestServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for NacosTestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl NacosTestServer {
    /// Starts with auth off.
    pub async fn start() -> NacosTestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind nacos test server");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Shared::default());
        let task = tokio::spawn(serve(listener, shared.clone()));
        NacosTestServer {
            addr,
            shared,
            task: Some(task),
        }
    }

    /// Starts with auth on: `user` logs in with `password` and gets tokens
    /// that live `ttl`.
    pub async fn start_with_auth(user: &str, password: &str, ttl: Duration) -> NacosTestServer {
        let s = Self::start().await;
        *s.shared.auth.lock().unwrap() = Some(Auth {
            user: user.to_owned(),
            password: password.to_owned(),
            ttl,
            tokens: BTreeMap::new(),
        });
        s
    }

    /// `http://127.0.0.1:<port>`, for `nacos.servers`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Instance list requests answered (any status).
    pub fn lists(&self) -> usize {
        self.shared.lists.load(Ordering::Relaxed)
    }

    /// Login requests answered with a token.
    pub fn logins(&self) -> usize {
        self.shared.logins.load(Ordering::Relaxed)
    }

    /// The `accessToken` of every list request so far (empty: none sent).
    pub fn tokens_seen(&self) -> Vec<String> {
        self.shared.tokens_seen.lock().unwrap().clone()
    }

    fn change(
        &self,
        namespace: &str,
        group: &str,
        service: &str,
        f: impl FnOnce(&mut Vec<NacosInstance>),
    ) {
        let key = (namespace.to_owned(), group.to_owned(), service.to_owned());
        let mut r = self.shared.registry.lock().unwrap();
        f(r.services.entry(key.clone()).or_default());
        r.changed.insert(key, now_ms());
    }

    /// Registers (or replaces, by ip and port) an instance of `service` in
    /// `DEFAULT_GROUP` of the `public` namespace.
    pub fn register(&self, service: &str, instance: NacosInstance) {
        self.register_in("public", "DEFAULT_GROUP", service, instance);
    }

    pub fn register_in(
        &self,
        namespace: &str,
        group: &str,
        service: &str,
        instance: NacosInstance,
    ) {
        self.change(namespace, group, service, |list| {
            list.retain(|i| (i.ip.as_str(), i.port) != (instance.ip.as_str(), instance.port));
            list.push(instance);
        });
    }

    /// Removes the instance at `addr` from `service`.
    pub fn deregister(&self, service: &str, addr: &str) {
        let probe = NacosInstance::new(addr);
        self.change("public", "DEFAULT_GROUP", service, |list| {
            list.retain(|i| (i.ip.as_str(), i.port) != (probe.ip.as_str(), probe.port));
        });
    }

    /// Sets `healthy` and `enabled` of the instance at `addr`.
    pub fn set_status(&self, service: &str, addr: &str, healthy: bool, enabled: bool) {
        let probe = NacosInstance::new(addr);
        self.change("public", "DEFAULT_GROUP", service, |list| {
            for i in list.iter_mut() {
                if (i.ip.as_str(), i.port) == (probe.ip.as_str(), probe.port) {
                    i.healthy = healthy;
                    i.enabled = enabled;
                }
            }
        });
    }

    /// While on, every request is answered `500` (a server that lost its
    /// cluster).
    pub fn fail(&self, failing: bool) {
        *self.shared.failing.lock().unwrap() = failing;
    }

    /// Forgets every token issued, as a restarted server with a new secret
    /// key would.
    pub fn revoke_tokens(&self) {
        if let Some(a) = self.shared.auth.lock().unwrap().as_mut() {
            a.tokens.clear();
        }
    }

    /// Kills the server: the listener closes and connections are cut.
    pub fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    /// Starts again on the same port, with the same registry.
    pub async fn restart(&mut self) {
        self.stop();
        let listener = crate::bind_again(self.addr).await;
        self.task = Some(tokio::spawn(serve(listener, self.shared.clone())));
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

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
        while connections.try_join_next().is_some() {}
    }
}

type Resp = http::Response<Full<Bytes>>;

fn respond(status: u16, content_type: &str, body: String) -> Resp {
    let mut r = http::Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = http::StatusCode::from_u16(status).expect("status");
    r.headers_mut()
        .insert("content-type", content_type.parse().unwrap());
    r
}

/// `a=1&b=2`, decoded.
fn pairs(encoded: &str) -> BTreeMap<String, String> {
    reqwest::Url::parse(&format!("http://x/?{encoded}"))
        .map(|u| u.query_pairs().into_owned().collect())
        .unwrap_or_default()
}

async fn handle(shared: &Shared, req: http::Request<Incoming>) -> Resp {
    if *shared.failing.lock().unwrap() {
        return respond(
            500,
            "text/plain",
            "server is DOWN now, please try again later!".into(),
        );
    }
    let path = req.uri().path().to_owned();
    let query = pairs(req.uri().query().unwrap_or(""));
    match (req.method().as_str(), path.as_str()) {
        ("POST", "/nacos/v1/auth/login") => {
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let mut form = pairs(&String::from_utf8_lossy(&body));
            form.extend(query);
            login(shared, &form)
        }
        ("GET", "/nacos/v1/ns/instance/list") => {
            shared.lists.fetch_add(1, Ordering::Relaxed);
            list(shared, &query)
        }
        _ => respond(404, "text/plain", format!("no handler for {path}")),
    }
}

fn login(shared: &Shared, form: &BTreeMap<String, String>) -> Resp {
    let mut auth = shared.auth.lock().unwrap();
    let Some(a) = auth.as_mut() else {
        // Auth off: Nacos still issues a token, which nothing checks.
        return respond(
            200,
            "application/json",
            r#"{"accessToken":"","tokenTtl":18000,"globalAdmin":false}"#.into(),
        );
    };
    let ok = form.get("username") == Some(&a.user) && form.get("password") == Some(&a.password);
    if !ok {
        return respond(403, "text/plain", "unknown user!".into());
    }
    let n = shared.issued.fetch_add(1, Ordering::Relaxed);
    let token = format!("token-{n}-{}", now_ms());
    a.tokens.insert(token.clone(), Instant::now() + a.ttl);
    shared.logins.fetch_add(1, Ordering::Relaxed);
    let body = serde_json::json!({
        "accessToken": token,
        "tokenTtl": a.ttl.as_secs(),
        "globalAdmin": false,
        "username": a.user,
    });
    respond(200, "application/json", body.to_string())
}

fn list(shared: &Shared, q: &BTreeMap<String, String>) -> Resp {
    let token = q.get("accessToken").cloned().unwrap_or_default();
    shared.tokens_seen.lock().unwrap().push(token.clone());
    if let Some(a) = shared.auth.lock().unwrap().as_ref() {
        let message = match a.tokens.get(&token) {
            Some(exp) if Instant::now() < *exp => None,
            Some(_) => Some("token expired!"),
            None if token.is_empty() => Some("user not found!"),
            None => Some("token invalid!"),
        };
        if let Some(m) = message {
            let body = serde_json::json!({"timestamp": now_ms(), "status": 403, "error": "Forbidden",
                "message": m, "path": "/nacos/v1/ns/instance/list"});
            return respond(403, "application/json", body.to_string());
        }
    }
    let Some(service) = q.get("serviceName").filter(|s| !s.is_empty()) else {
        return respond(
            400,
            "text/plain",
            "caused: Param 'serviceName' is required.;".into(),
        );
    };
    let group = q
        .get("groupName")
        .filter(|g| !g.is_empty())
        .map_or("DEFAULT_GROUP", String::as_str);
    let namespace = q
        .get("namespaceId")
        .filter(|n| !n.is_empty())
        .map_or("public", String::as_str);
    let clusters: Vec<&str> = q.get("clusters").map_or(Vec::new(), |c| {
        c.split(',').filter(|c| !c.is_empty()).collect()
    });
    let healthy_only = q.get("healthyOnly").is_some_and(|h| h == "true");
    let key = (namespace.to_owned(), group.to_owned(), service.clone());
    let r = shared.registry.lock().unwrap();
    let hosts: Vec<serde_json::Value> = r
        .services
        .get(&key)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|i| clusters.is_empty() || clusters.contains(&i.cluster.as_str()))
        .filter(|i| !healthy_only || i.healthy)
        .map(|i| {
            serde_json::json!({
                "instanceId": i.id(group, service),
                "ip": i.ip,
                "port": i.port,
                "weight": i.weight,
                "healthy": i.healthy,
                "enabled": i.enabled,
                "ephemeral": true,
                "clusterName": i.cluster,
                "serviceName": format!("{group}@@{service}"),
                "metadata": {},
                "instanceHeartBeatInterval": 5000,
                "instanceHeartBeatTimeOut": 15000,
                "ipDeleteTimeout": 30000,
                "instanceIdGenerator": "simple",
            })
        })
        .collect();
    let last_ref_time = r.changed.get(&key).copied().unwrap_or(0);
    // Nacos' checksum is an MD5 of the list; any digest that changes with
    // it does for a client.
    let checksum = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        serde_json::Value::Array(hosts.clone())
            .to_string()
            .hash(&mut h);
        format!("{:016x}", h.finish())
    };
    let body = serde_json::json!({
        "name": format!("{group}@@{service}"),
        "groupName": group,
        "clusters": clusters.join(","),
        "cacheMillis": 10000,
        "hosts": hosts,
        "lastRefTime": last_ref_time,
        "checksum": checksum,
        "allIPs": false,
        "reachProtectionThreshold": false,
        "valid": true,
    });
    respond(200, "application/json", body.to_string())
}
