//! [`EurekaTestServer`]: a Eureka REST API test server, the reads of
//! Eureka's REST operations
//! (<https://github.com/Netflix/eureka/wiki/Eureka-REST-operations>) the
//! gateway uses, under `/eureka` on loopback, answered in Eureka's JSON
//! (`Accept: application/json`):
//!
//! - `GET /eureka/apps`: `{"applications": {"versions__delta": "N",
//!   "apps__hashcode": "UP_2_", "application": [{"name": "APP",
//!   "instance": [...]}]}}`, each instance with `instanceId`, `hostName`,
//!   `app`, `ipAddr`, `status`, `overriddenStatus`, `port` and
//!   `securePort` as `{"$": N, "@enabled": "true"|"false"}`, `countryId`,
//!   `dataCenterInfo`, `leaseInfo`, `metadata`, `vipAddress`,
//!   `lastUpdatedTimestamp`, `lastDirtyTimestamp` and `actionType`;
//! - `GET /eureka/apps/APP`: `{"application": {...}}`, 404 for an unknown app;
//! - `GET /eureka/apps/delta`: the instances changed since the server
//!   started (Eureka keeps three minutes of them), each with its last
//!   `actionType` (`ADDED`, `MODIFIED`, `DELETED`), and the
//!   `apps__hashcode` of the whole registry now (`STATUS_COUNT_` pairs,
//!   statuses sorted).
//!
//! Registration, deregistration and status changes are helpers rather
//! than the REST writes. The server can be stopped and restarted on the
//! same port, fail every request with a 500, and answer deltas with a
//! wrong hash code (as a delta that missed a change would leave the
//! client's copy), to exercise the client's return to a full fetch.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::task::JoinSet;

/// One instance as registered.
#[derive(Debug, Clone)]
pub struct EurekaInstance {
    pub id: String,
    pub app: String,
    pub ip: String,
    pub port: u16,
    pub status: String,
    /// `port.@enabled`; with false, `secure_port` is the one enabled.
    pub port_enabled: bool,
    pub secure_port: u16,
}

impl EurekaInstance {
    /// An `UP` instance of `app` at `addr` (`ip:port`), `id` its instanceId.
    pub fn new(app: &str, id: &str, addr: &str) -> EurekaInstance {
        let (ip, port) = addr.rsplit_once(':').expect("ip:port");
        EurekaInstance {
            id: id.to_owned(),
            app: app.to_ascii_uppercase(),
            ip: ip.to_owned(),
            port: port.parse().expect("port"),
            status: "UP".to_owned(),
            port_enabled: true,
            secure_port: 443,
        }
    }

    fn to_json(&self, action: &str) -> serde_json::Value {
        serde_json::json!({
            "instanceId": self.id,
            "hostName": "localhost",
            "app": self.app,
            "ipAddr": self.ip,
            "status": self.status,
            "overriddenStatus": "UNKNOWN",
            "port": {"$": self.port, "@enabled": self.port_enabled.to_string()},
            "securePort": {"$": self.secure_port, "@enabled": (!self.port_enabled).to_string()},
            "countryId": 1,
            "dataCenterInfo": {"@class": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo", "name": "MyOwn"},
            "leaseInfo": {"renewalIntervalInSecs": 30, "durationInSecs": 90, "registrationTimestamp": 1,
                "lastRenewalTimestamp": 1, "evictionTimestamp": 0, "serviceUpTimestamp": 1},
            "metadata": {"@class": "java.util.Collections$EmptyMap"},
            "homePageUrl": format!("http://{}:{}/", self.ip, self.port),
            "vipAddress": self.app.to_ascii_lowercase(),
            "secureVipAddress": self.app.to_ascii_lowercase(),
            "isCoordinatingDiscoveryServer": "false",
            "lastUpdatedTimestamp": "1",
            "lastDirtyTimestamp": "1",
            "actionType": action,
        })
    }
}

#[derive(Debug, Default)]
struct Registry {
    /// By instance id.
    instances: BTreeMap<String, EurekaInstance>,
    /// Changed instances by id: the last action and the instance then.
    changes: BTreeMap<String, (String, EurekaInstance)>,
    version: u64,
}

impl Registry {
    fn hashcode(&self) -> String {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for i in self.instances.values() {
            *counts.entry(i.status.as_str()).or_default() += 1;
        }
        counts.iter().map(|(s, n)| format!("{s}_{n}_")).collect()
    }

    fn applications(
        &self,
        list: Vec<(String, serde_json::Value)>,
        hashcode: String,
    ) -> serde_json::Value {
        let mut apps: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
        for (app, i) in list {
            apps.entry(app).or_default().push(i);
        }
        let application: Vec<serde_json::Value> = apps
            .into_iter()
            .map(|(name, instance)| serde_json::json!({"name": name, "instance": instance}))
            .collect();
        serde_json::json!({"applications": {
            "versions__delta": self.version.to_string(),
            "apps__hashcode": hashcode,
            "application": application,
        }})
    }
}

#[derive(Debug, Default)]
struct Shared {
    registry: Mutex<Registry>,
    full: AtomicUsize,
    deltas: AtomicUsize,
    failing: AtomicBool,
    wrong_hashcode: AtomicBool,
}

/// The server; see the module documentation.
pub struct EurekaTestServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for EurekaTestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl EurekaTestServer {
    pub async fn start() -> EurekaTestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind eureka test server");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Shared::default());
        let task = tokio::spawn(serve(listener, shared.clone()));
        EurekaTestServer {
            addr,
            shared,
            task: Some(task),
        }
    }

    /// `http://127.0.0.1:<port>/eureka`, for `eureka.servers`.
    pub fn url(&self) -> String {
        format!("http://{}/eureka", self.addr)
    }

    /// Full fetches (`GET /eureka/apps`) answered.
    pub fn full_fetches(&self) -> usize {
        self.shared.full.load(Ordering::Relaxed)
    }

    /// Delta fetches (`GET /eureka/apps/delta`) answered.
    pub fn delta_fetches(&self) -> usize {
        self.shared.deltas.load(Ordering::Relaxed)
    }

    fn change(
        &self,
        id: &str,
        action: &str,
        f: impl FnOnce(&mut Registry) -> Option<EurekaInstance>,
    ) {
        let mut r = self.shared.registry.lock().unwrap();
        if let Some(i) = f(&mut r) {
            r.changes.insert(id.to_owned(), (action.to_owned(), i));
        }
        r.version += 1;
    }

    /// Registers (or replaces) an instance.
    pub fn register(&self, instance: EurekaInstance) {
        let id = instance.id.clone();
        self.change(&id, "ADDED", |r| {
            r.instances.insert(id.clone(), instance.clone());
            Some(instance)
        });
    }

    /// Removes the instance `id`.
    pub fn deregister(&self, id: &str) {
        self.change(id, "DELETED", |r| r.instances.remove(id));
    }

    /// Sets the status (`UP`, `DOWN`, `OUT_OF_SERVICE`, ...) of `id`.
    pub fn set_status(&self, id: &str, status: &str) {
        self.change(id, "MODIFIED", |r| {
            let i = r.instances.get_mut(id)?;
            i.status = status.to_owned();
            Some(i.clone())
        });
    }

    /// While on, every request is answered `500`.
    pub fn fail(&self, failing: bool) {
        self.shared.failing.store(failing, Ordering::Relaxed);
    }

    /// While on, deltas carry a hash code that matches no copy.
    pub fn wrong_delta_hashcode(&self, wrong: bool) {
        self.shared.wrong_hashcode.store(wrong, Ordering::Relaxed);
    }

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
                async move { Ok::<_, Infallible>(handle(&shared, req)) }
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

fn handle(shared: &Shared, req: http::Request<Incoming>) -> Resp {
    if shared.failing.load(Ordering::Relaxed) {
        return respond(500, "text/plain", "Internal Server Error".into());
    }
    let json = req
        .headers()
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json"));
    if !json {
        // Eureka answers XML by default; this server speaks JSON only.
        return respond(
            406,
            "text/plain",
            "ask with Accept: application/json".into(),
        );
    }
    if req.method() != http::Method::GET {
        return respond(405, "text/plain", "read-only test server".into());
    }
    let r = shared.registry.lock().unwrap();
    let path = req.uri().path().trim_end_matches('/');
    match path {
        "/eureka/apps" => {
            shared.full.fetch_add(1, Ordering::Relaxed);
            let list = r
                .instances
                .values()
                .map(|i| (i.app.clone(), i.to_json("ADDED")))
                .collect();
            respond(
                200,
                "application/json",
                r.applications(list, r.hashcode()).to_string(),
            )
        }
        "/eureka/apps/delta" => {
            shared.deltas.fetch_add(1, Ordering::Relaxed);
            let list = r
                .changes
                .values()
                .map(|(action, i)| (i.app.clone(), i.to_json(action)))
                .collect();
            let hashcode = if shared.wrong_hashcode.load(Ordering::Relaxed) {
                "UP_999_".to_owned()
            } else {
                r.hashcode()
            };
            respond(
                200,
                "application/json",
                r.applications(list, hashcode).to_string(),
            )
        }
        p => match p.strip_prefix("/eureka/apps/") {
            Some(app) if !app.contains('/') => {
                let app = app.to_ascii_uppercase();
                let instance: Vec<serde_json::Value> = r
                    .instances
                    .values()
                    .filter(|i| i.app == app)
                    .map(|i| i.to_json("ADDED"))
                    .collect();
                if instance.is_empty() {
                    return respond(404, "application/json", String::new());
                }
                let body = serde_json::json!({"application": {"name": app, "instance": instance}});
                respond(200, "application/json", body.to_string())
            }
            _ => respond(404, "text/plain", format!("no handler for {p}")),
        },
    }
}
