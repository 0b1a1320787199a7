//! Backend instances for the discovery and resilience tests: each an Echo
//! server in its own runtime (so `kill` drops every connection at once, as a
//! crashed process would) that also answers grpc.health.v1 checks, and can
//! be told to fail or to report NOT_SERVING.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gateway::example::{BoxFuture, DynamicServer};
use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor, Value};
use tonic::{Code, Request, Response, Status};

use crate::consul::Instance;
use crate::running::KillableBackend;
use crate::{testing_descriptors, testing_pool, ECHO_SERVICE};

/// The health service the instances answer.
pub const HEALTH_SERVICE: &str = "grpc.health.v1.Health";

/// grpc.health.v1, as much of it as the gateway's checks use.
pub const HEALTH_PROTO: &str = r#"syntax = "proto3";
package grpc.health.v1;
message HealthCheckRequest { string service = 1; }
message HealthCheckResponse {
  enum ServingStatus { UNKNOWN = 0; SERVING = 1; NOT_SERVING = 2; SERVICE_UNKNOWN = 3; }
  ServingStatus status = 1;
}
service Health { rpc Check(HealthCheckRequest) returns (HealthCheckResponse); }
"#;

/// The testing descriptors plus grpc.health.v1.
pub fn pool_with_health() -> DescriptorPool {
    static POOL: std::sync::OnceLock<DescriptorPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        let dir = crate::temp_dir("health-proto");
        std::fs::write(dir.join("health.proto"), HEALTH_PROTO).unwrap();
        let health = gateway::descriptors::load_dir(&dir)
            .expect("health.proto")
            .pool;
        let mut pool = testing_pool();
        let file = health
            .files()
            .find(|f| f.name() == "health.proto")
            .expect("health.proto in the pool");
        pool.decode_file_descriptor_proto(file.encode_to_vec().as_slice())
            .expect("add health.proto");
        pool
    })
    .clone()
}

/// The testing descriptors and grpc.health.v1, in a folder of their own,
/// for a gateway whose backend lists the health service.
pub fn descriptors_with_health() -> std::path::PathBuf {
    let dir = crate::temp_dir("descriptors-health");
    for entry in std::fs::read_dir(testing_descriptors()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
    }
    std::fs::write(dir.join("health.proto"), HEALTH_PROTO).unwrap();
    dir
}

/// What one instance saw, and how it is told to behave.
struct Seen {
    /// Calls received, health checks left out.
    calls: AtomicUsize,
    last: Mutex<Option<Instant>>,
    /// Answer every call but health checks with UNAVAILABLE.
    failing: AtomicBool,
    /// Answer health checks with SERVING (else NOT_SERVING).
    serving: AtomicBool,
}

/// One backend instance (see the module comment).
pub struct TestInstance {
    pub name: String,
    pub addr: String,
    seen: Arc<Seen>,
    backend: KillableBackend,
}

impl TestInstance {
    pub fn start(name: &str) -> TestInstance {
        let seen = Arc::new(Seen {
            calls: AtomicUsize::new(0),
            last: Mutex::new(None),
            failing: AtomicBool::new(false),
            serving: AtomicBool::new(true),
        });
        let backend = KillableBackend::start({
            let (name, seen) = (name.to_owned(), seen.clone());
            move || instance_server(&name, seen.clone())
        });
        TestInstance {
            name: name.to_owned(),
            addr: backend.addr.clone(),
            seen,
            backend,
        }
    }

    /// Drops the instance's listener and every connection at once.
    pub fn kill(&mut self) {
        self.backend.kill();
    }

    /// Serves again on the same address.
    pub fn restart(&mut self) {
        self.backend.restart();
    }

    /// The instance as the Consul test server registers it.
    pub fn instance(&self) -> Instance {
        Instance::new(&self.name, &self.addr)
    }

    /// Calls received so far, health checks left out.
    pub fn calls(&self) -> usize {
        self.seen.calls.load(Ordering::Relaxed)
    }

    /// When the last call (not a health check) arrived.
    pub fn last_call(&self) -> Option<Instant> {
        *self.seen.last.lock().unwrap()
    }

    /// Answer every call with UNAVAILABLE while `failing`.
    pub fn fail(&self, failing: bool) {
        self.seen.failing.store(failing, Ordering::Relaxed);
    }

    /// Report SERVING (or NOT_SERVING) to health checks.
    pub fn serve_health(&self, serving: bool) {
        self.seen.serving.store(serving, Ordering::Relaxed);
    }
}

/// An instance's behaviour without a listener of its own, for a test that
/// serves [`InstanceServer::server`] itself (behind TLS, say).
pub struct InstanceServer {
    name: String,
    seen: Arc<Seen>,
}

impl InstanceServer {
    pub fn new(name: &str) -> InstanceServer {
        InstanceServer {
            name: name.to_owned(),
            seen: Arc::new(Seen {
                calls: AtomicUsize::new(0),
                last: Mutex::new(None),
                failing: AtomicBool::new(false),
                serving: AtomicBool::new(true),
            }),
        }
    }

    /// The server, as [`TestInstance`] serves it.
    pub fn server(&self) -> DynamicServer {
        instance_server(&self.name, self.seen.clone())
    }

    /// Calls received so far, health checks left out.
    pub fn calls(&self) -> usize {
        self.seen.calls.load(Ordering::Relaxed)
    }

    /// Report SERVING (or NOT_SERVING) to health checks.
    pub fn serve_health(&self, serving: bool) {
        self.seen.serving.store(serving, Ordering::Relaxed);
    }
}

/// Health/Check follows `serving`; every other call fails with UNAVAILABLE
/// while `failing`; Echo replies with the request and `name` set to the
/// instance's name; Sleep sleeps `millis`; Fail answers with `code`.
fn instance_server(name: &str, seen: Arc<Seen>) -> DynamicServer {
    let name = name.to_owned();
    DynamicServer::new(
        &pool_with_health(),
        &[ECHO_SERVICE, HEALTH_SERVICE],
        move |method: &MethodDescriptor, req: Request<DynamicMessage>| {
            let (name, seen, method) = (name.clone(), seen.clone(), method.clone());
            Box::pin(async move {
                if method.name() == "Check" {
                    let mut reply = DynamicMessage::new(method.output());
                    let status = if seen.serving.load(Ordering::Relaxed) {
                        1
                    } else {
                        2
                    };
                    reply.set_field_by_name("status", Value::EnumNumber(status));
                    return Ok(Response::new(reply));
                }
                seen.calls.fetch_add(1, Ordering::Relaxed);
                *seen.last.lock().unwrap() = Some(Instant::now());
                if seen.failing.load(Ordering::Relaxed) {
                    return Err(Status::unavailable(format!("{name} is down for the test")));
                }
                let mut msg = req.into_inner();
                match method.name() {
                    "Sleep" => {
                        let ms = msg
                            .get_field_by_name("millis")
                            .and_then(|v| v.as_i64())
                            .unwrap_or(0);
                        tokio::time::sleep(Duration::from_millis(ms as u64)).await;
                        Ok(Response::new(DynamicMessage::new(method.output())))
                    }
                    "Fail" => {
                        let code = msg
                            .get_field_by_name("code")
                            .and_then(|v| v.as_i32())
                            .unwrap_or(2);
                        Err(Status::new(
                            Code::from_i32(code),
                            format!("{name} failed as asked"),
                        ))
                    }
                    _ => {
                        msg.set_field_by_name("name", Value::String(name));
                        Ok(Response::new(msg))
                    }
                }
            }) as BoxFuture<Result<Response<DynamicMessage>, Status>>
        },
    )
}

/// Waits until `f` holds, or panics after `within`.
pub async fn eventually(what: &str, within: Duration, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f().await {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A gateway (REST and admin listeners) in this process, for the registry
/// tests (etcd, ZooKeeper): the backend named `echo` serves
/// `GET /v1/echo` from the instances its source lists.
pub struct RegistryGateway {
    pub rest: std::net::SocketAddr,
    pub admin: std::net::SocketAddr,
    pub gw: Arc<gateway::server::Gateway>,
    pub client: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for RegistryGateway {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl RegistryGateway {
    /// `source` is the discovery line of `[backends.echo]`, e.g.
    /// `etcd = { endpoints = [...], prefix = "/s/" }`.
    pub async fn start(source: &str) -> RegistryGateway {
        let config = format!(
            r#"[server]
listen = "127.0.0.1:0"
descriptors = "{descriptors}"

[backends.echo]
{source}
services = ["testing.v1.Echo"]
timeout = "2s"
connect_timeout = "500ms"

[[routes]]
method = "GET"
path = "/v1/echo"
grpc = "testing.v1.Echo/Echo"
"#,
            descriptors = crate::toml_path(&crate::testing_descriptors()),
        );
        let path = crate::write_config(&config);
        let snapshot = gateway::snapshot::Snapshot::load(&path)
            .unwrap_or_else(|e| panic!("config does not load:\n{e}\n---\n{config}"));
        let gw = gateway::server::Gateway::new(snapshot);
        let rest = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (rest_addr, admin_addr) = (rest.local_addr().unwrap(), admin.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(gateway::server::run(
            rest,
            Some(admin),
            gw.clone(),
            async move {
                let _ = rx.await;
            },
        ));
        RegistryGateway {
            rest: rest_addr,
            admin: admin_addr,
            gw,
            client: crate::http_client(),
            stop: Some(tx),
        }
    }

    /// Which instance served GET /v1/echo, or the status and body.
    pub async fn echo(&self) -> Result<String, (u16, serde_json::Value)> {
        let resp = self
            .client
            .get(format!("http://{}/v1/echo", self.rest))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET /v1/echo: {e}"));
        let status = resp.status().as_u16();
        let body: serde_json::Value = resp.json().await.unwrap_or(serde_json::Value::Null);
        match status {
            200 => Ok(body["name"].as_str().unwrap_or("").to_owned()),
            _ => Err((status, body)),
        }
    }

    /// The instances the backend uses now, sorted.
    pub fn endpoints(&self) -> Vec<String> {
        let mut addrs: Vec<String> = self.gw.snapshot().backends["echo"]
            .endpoints
            .current()
            .endpoints
            .iter()
            .map(|e| e.addr.clone())
            .collect();
        addrs.sort();
        addrs
    }

    /// `/admin/backends`' entry for `echo`.
    pub async fn admin_backend(&self) -> serde_json::Value {
        let all: serde_json::Value = self
            .client
            .get(format!("http://{}/admin/backends", self.admin))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        all["backends"][0].clone()
    }

    /// Calls until each of `names` has served one, within `within`.
    pub async fn served_by_all(&self, names: &[&str], within: Duration) {
        let mut seen = std::collections::BTreeSet::new();
        eventually(
            &format!("every one of {names:?} serves"),
            within,
            async || {
                if let Ok(n) = self.echo().await {
                    seen.insert(n);
                }
                names.iter().all(|n| seen.contains(*n))
            },
        )
        .await;
    }
}

/// Four concurrent callers of `GET /v1/echo` until `stop` is set; returns
/// how many calls were made and every answer that was not 200.
pub fn steady_load(
    gw: &Arc<RegistryGateway>,
    stop: &Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(usize, Vec<String>)> {
    let (gw, stop) = (gw.clone(), stop.clone());
    tokio::spawn(async move {
        let done = Arc::new(AtomicUsize::new(0));
        let mut workers = Vec::new();
        for _ in 0..4 {
            let (gw, stop, done) = (gw.clone(), stop.clone(), done.clone());
            workers.push(tokio::spawn(async move {
                let mut failed = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    if let Err((status, body)) = gw.echo().await {
                        failed.push(format!("{status}: {body}"));
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
                failed
            }));
        }
        let mut failed = Vec::new();
        for w in workers {
            failed.extend(w.await.unwrap());
        }
        (done.load(Ordering::Relaxed), failed)
    })
}
