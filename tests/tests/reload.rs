//! Live reload, the admin listener, graceful shutdown and descriptors from
//! server reflection, end to end: the gateway runs through `server::run` with
//! its file watcher, as the binary does, and real clients drive it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway::example::{bookstore, BoxFuture, DynamicServer};
use gateway_tests::running::RunningGateway;
use gateway_tests::{bookstore_pool, http_client, spawn_backend, temp_dir, toml_path};
use prost_reflect::{DynamicMessage, MethodDescriptor, Value};
use serde_json::Value as Json;
use tonic::{Request, Response};

/// How long a change may take to be served; the issue's bound.
const PICKUP: Duration = Duration::from_secs(2);

/// Copies the repo's bookstore descriptors into `dir/descriptors`.
fn copy_descriptors(dir: &Path) -> PathBuf {
    let to = dir.join("descriptors");
    std::fs::create_dir_all(&to).unwrap();
    let from = gateway_tests::repo_root().join("descriptors/bookstore.proto");
    std::fs::copy(from, to.join("bookstore.proto")).unwrap();
    to
}

fn base_config(backend: &str, extra_server: &str, routes: &str) -> String {
    format!(
        r#"[server]
descriptors = "descriptors"
shutdown_delay = "300ms"
drain_timeout = "5s"
{extra_server}

[backends.bookstore]
endpoints = ["{backend}"]
services = ["example.bookstore.v1.Bookstore"]
timeout = "5s"

[[routes]]
method = "GET"
path = "/v1/shelves/{{shelf}}"
grpc = "example.bookstore.v1.Bookstore/GetShelf"
{routes}
"#
    )
}

/// Starts the gateway on `config` the way `gateway serve` does.
async fn start(config: &Path) -> RunningGateway {
    RunningGateway::start(config).await
}

async fn get(url: &str) -> (u16, Json) {
    let resp = http_client().get(url).send().await.expect("request");
    let status = resp.status().as_u16();
    let body = resp.bytes().await.unwrap_or_default();
    (status, serde_json::from_slice(&body).unwrap_or(Json::Null))
}

/// Polls until `url` answers `status`; returns how long that took.
async fn wait_for_status(url: &str, status: u16) -> Duration {
    let start = Instant::now();
    loop {
        let (s, _) = get(url).await;
        if s == status {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{url} never answered {status} (last {s})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes `text` to `config` and waits until the watcher's reload of it has
/// been refused.
async fn write_and_wait_for_refusal(gw: &RunningGateway, config: &Path, text: &str, what: &str) {
    let failed_before = gw.gw.reload.failed.load(Ordering::Relaxed);
    std::fs::write(config, text).unwrap();
    let start_wait = Instant::now();
    while gw.gw.reload.failed.load(Ordering::Relaxed) == failed_before {
        assert!(start_wait.elapsed() < PICKUP, "{what} was not refused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes a file the way editors and `kubectl cp` do: to a temp name, then rename.
fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A service that only exists in descriptors added while the gateway runs.
const GREETER_PROTO: &str = r#"syntax = "proto3";
package example.greeter.v1;
service Greeter {
  rpc Hello(HelloRequest) returns (HelloReply);
}
message HelloRequest { string name = 1; }
message HelloReply { string greeting = 1; }
"#;

fn greeter_server(pool: &prost_reflect::DescriptorPool) -> DynamicServer {
    DynamicServer::new(
        pool,
        &["example.greeter.v1.Greeter"],
        |m: &MethodDescriptor, req: Request<DynamicMessage>| {
            let name = req
                .get_ref()
                .get_field_by_name("name")
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            let mut reply = DynamicMessage::new(m.output());
            reply.set_field_by_name("greeting", Value::String(format!("hello, {name}")));
            Box::pin(async move { Ok(Response::new(reply)) }) as BoxFuture<_>
        },
    )
}

fn greeter_pool() -> prost_reflect::DescriptorPool {
    let dir = temp_dir("greeter");
    std::fs::write(dir.join("greeter.proto"), GREETER_PROTO).unwrap();
    gateway::descriptors::load_dir(&dir).unwrap().pool
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_loses_no_request_and_follows_every_change() {
    let backend_a = spawn_backend(bookstore::server(&bookstore_pool())).await;
    let backend_b = spawn_backend(bookstore::server(&bookstore_pool())).await;
    let greeter = spawn_backend(greeter_server(&greeter_pool())).await;
    let dir = temp_dir("reload-load");
    copy_descriptors(&dir);
    let config = dir.join("routes.toml");
    std::fs::write(&config, base_config(&backend_a, "", "")).unwrap();
    let gw = start(&config).await;

    // Steady load on a route that exists in every version of the config.
    let load = SteadyLoad::start(format!("http://{}/v1/shelves/1", gw.rest));
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 1. Add a route.
    let v2 = r#"
[[routes]]
method = "GET"
path = "/v2/shelves/{shelf}"
grpc = "example.bookstore.v1.Bookstore/GetShelf"
"#;
    write_atomically(&config, &base_config(&backend_a, "", v2));
    let took = wait_for_status(&format!("http://{}/v2/shelves/2", gw.rest), 200).await;
    assert!(took < PICKUP, "new route took {took:?}");

    // 2. Change the backend to another instance.
    write_atomically(&config, &base_config(&backend_b, "", v2));
    let start_wait = Instant::now();
    loop {
        let snap = gw.gw.snapshot();
        if snap.backends["bookstore"].definition.endpoints == vec![backend_b.clone()] {
            break;
        }
        assert!(start_wait.elapsed() < PICKUP, "backend change not applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // 3. Remove the route again: 404 after.
    write_atomically(&config, &base_config(&backend_b, "", ""));
    let took = wait_for_status(&format!("http://{}/v2/shelves/2", gw.rest), 404).await;
    assert!(took < PICKUP, "removed route still served after {took:?}");

    // 4. A new service: its descriptor dropped into descriptors/, plus routes.
    std::fs::write(dir.join("descriptors/greeter.proto"), GREETER_PROTO).unwrap();
    let greeter_routes = format!(
        r#"
[backends.greeter]
endpoints = ["{greeter}"]
services = ["example.greeter.v1.Greeter"]

[[routes]]
method = "GET"
path = "/v1/hello/{{name}}"
grpc = "example.greeter.v1.Greeter/Hello"
"#
    );
    write_atomically(&config, &base_config(&backend_b, "", &greeter_routes));
    let hello = format!("http://{}/v1/hello/ada", gw.rest);
    let took = wait_for_status(&hello, 200).await;
    assert!(took < PICKUP, "new service took {took:?}");
    let (_, body) = get(&hello).await;
    assert_eq!(body, serde_json::json!({"greeting": "hello, ada"}));

    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ok, failed) = load.stop().await;
    eprintln!("steady load during reloads: {ok} ok, {failed} failed");
    assert!(ok > 100, "the load barely ran: {ok} requests");
    assert_eq!(failed, 0, "requests failed during reloads");
    assert!(gw.gw.reload.succeeded.load(Ordering::Relaxed) >= 4);
}

/// Four clients sending GETs to one URL back to back, counting answers that
/// are not 200 (and transport errors) as failures.
struct SteadyLoad {
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    stop: tokio::sync::watch::Sender<bool>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl SteadyLoad {
    fn start(url: String) -> SteadyLoad {
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let clients = (0..4)
            .map(|_| {
                let (url, ok, failed, mut stopped) =
                    (url.clone(), ok.clone(), failed.clone(), stopped.clone());
                tokio::spawn(async move {
                    let client = http_client();
                    while !*stopped.borrow_and_update() {
                        match client.get(&url).send().await {
                            Ok(r) if r.status() == 200 => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(r) => {
                                eprintln!("failed: {}", r.status());
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                eprintln!("failed: {e}");
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        SteadyLoad {
            ok,
            failed,
            stop,
            clients,
        }
    }

    /// Stops the clients; returns (answered 200, failed).
    async fn stop(self) -> (u64, u64) {
        self.stop.send(true).unwrap();
        for c in self.clients {
            c.await.unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// A config whose stable route (`GET /v1/shelves/{shelf}`) comes last, after
/// `/v2/shelves/{shelf}`, and the byte offset where that last route starts:
/// cut there, the file is valid TOML that lacks the route under load.
fn two_route_config(backend: &str) -> (String, usize) {
    let v2 = r#"
[[routes]]
method = "GET"
path = "/v2/shelves/{shelf}"
grpc = "example.bookstore.v1.Bookstore/GetShelf"
"#;
    let text = base_config(backend, "", "");
    let cut = text.find("[[routes]]").unwrap();
    let full = format!("{}{v2}\n{}", &text[..cut], &text[cut..]);
    let cut = full.rfind("[[routes]]").unwrap();
    (full, cut)
}

/// A bookstore backend and a gateway on [`base_config`], with
/// [`SteadyLoad`] on its stable route: (backend, routes.toml, gateway, load).
async fn start_under_load(tag: &str) -> (String, PathBuf, RunningGateway, SteadyLoad) {
    let backend = spawn_backend(bookstore::server(&bookstore_pool())).await;
    let dir = temp_dir(tag);
    copy_descriptors(&dir);
    let config = dir.join("routes.toml");
    std::fs::write(&config, base_config(&backend, "", "")).unwrap();
    let gw = start(&config).await;
    let load = SteadyLoad::start(format!("http://{}/v1/shelves/1", gw.rest));
    (backend, config, gw, load)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routes_toml_written_in_pausing_chunks_is_never_loaded_half_done() {
    use std::io::Write as _;
    let (backend, config, gw, load) = start_under_load("reload-chunks").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (full, cut) = two_route_config(&backend);

    // One writer holding the file open across a long pause (a slow copy):
    // its first half is valid TOML and lacks the route under load.
    let mut f = std::fs::File::create(&config).unwrap();
    f.write_all(&full.as_bytes()[..cut]).unwrap();
    f.flush().unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    f.write_all(&full.as_bytes()[cut..]).unwrap();
    drop(f);
    let took = wait_for_status(&format!("http://{}/v2/shelves/2", gw.rest), 200).await;
    assert!(took < PICKUP, "the complete file took {took:?}");

    // Two writes with a pause longer than the debounce between them (a
    // script writing `>` then `>>`).
    std::fs::write(&config, &full.as_bytes()[..cut]).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&config)
        .unwrap();
    f.write_all(&full.as_bytes()[cut..]).unwrap();
    drop(f);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let (ok, failed) = load.stop().await;
    eprintln!("chunked writes under load: {ok} ok, {failed} failed");
    assert!(ok > 50, "the load barely ran: {ok} requests");
    assert_eq!(failed, 0, "a half-written routes.toml was served");
    assert_eq!(
        get(&format!("http://{}/v2/shelves/2", gw.rest)).await.0,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_routes_toml_is_refused_unless_allowed() {
    let (_backend, config, gw, load) = start_under_load("reload-empty").await;
    write_and_wait_for_refusal(&gw, &config, "", "the empty file").await;
    let (ok, failed) = load.stop().await;
    eprintln!("empty routes.toml under load: {ok} ok, {failed} failed");
    assert_eq!(failed, 0, "the empty file replaced the running config");
    let last = gw.gw.reload.last.load();
    let error = last
        .as_ref()
        .as_ref()
        .and_then(|s| s.error.clone())
        .unwrap();
    assert!(
        error.contains("no route") && error.contains("--allow-empty"),
        "{error}"
    );

    // `gateway check` says the same, and --allow-empty accepts the file.
    let check = |extra: &[&str]| {
        std::process::Command::new(gateway_tests::gateway_bin())
            .args(["check", "--config", config.to_str().unwrap()])
            .args(extra)
            .output()
            .unwrap()
    };
    let refused = check(&[]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("routes.toml: routes: the configuration has no route"),
        "{stderr}"
    );
    let allowed = check(&["--allow-empty"]);
    assert!(
        allowed.status.success(),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_config_keeps_old_snapshot_and_admin_shows_the_error() {
    let backend = spawn_backend(bookstore::server(&bookstore_pool())).await;
    let dir = temp_dir("reload-broken");
    copy_descriptors(&dir);
    let config = dir.join("routes.toml");
    let good = base_config(&backend, "", "");
    std::fs::write(&config, &good).unwrap();
    let gw = start(&config).await;
    let url = format!("http://{}/v1/shelves/1", gw.rest);
    assert_eq!(get(&url).await.0, 200);

    // A syntax error, an unknown method, a half-written file: each rejected.
    let broken = [
        (format!("{good}\n[[routes]]\nmethod = \"GET\"\npath = \"/x\n"), "routes.toml:"),
        (
            format!("{good}\n[[routes]]\nmethod = \"GET\"\npath = \"/x\"\ngrpc = \"example.bookstore.v1.Bookstore/Nope\"\n"),
            "routes[1].grpc",
        ),
        (good[..good.len() / 2].to_owned(), "routes.toml"),
    ];
    for (i, (text, expect)) in broken.iter().enumerate() {
        write_and_wait_for_refusal(&gw, &config, text, &format!("broken file {i}")).await;
        let (status, body) = get(&url).await;
        assert_eq!(
            status, 200,
            "old config stopped serving after broken file {i}: {body}"
        );
        let (_, cfg) = get(&format!("http://{}/admin/config", gw.admin)).await;
        let last = &cfg["last_reload"];
        assert_eq!(last["ok"], false, "{cfg}");
        let err = last["error"].as_str().unwrap_or_default();
        assert!(err.contains(expect), "admin error {err:?} lacks {expect:?}");
        assert_eq!(cfg["version"], 1, "the served version changed: {cfg}");
    }

    // A descriptor that no longer defines a routed method is rejected too.
    let proto = dir.join("descriptors/bookstore.proto");
    let original = std::fs::read_to_string(&proto).unwrap();
    let failed_before = gw.gw.reload.failed.load(Ordering::Relaxed);
    std::fs::write(&config, &good).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let get_shelf = "rpc GetShelf(GetShelfRequest) returns (Shelf) {\n    option idempotency_level = NO_SIDE_EFFECTS;\n  }";
    assert!(
        original.contains(get_shelf),
        "bookstore.proto changed its GetShelf"
    );
    write_atomically(&proto, &original.replace(get_shelf, ""));
    let start_wait = Instant::now();
    while gw.gw.reload.failed.load(Ordering::Relaxed) == failed_before {
        assert!(
            start_wait.elapsed() < PICKUP,
            "descriptor change not noticed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(get(&url).await.0, 200);
    let (_, cfg) = get(&format!("http://{}/admin/config", gw.admin)).await;
    let err = cfg["last_reload"]["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(err.contains("no method \"GetShelf\""), "{err}");

    // The next good write is picked up.
    write_atomically(&proto, &original);
    let start_wait = Instant::now();
    loop {
        let (_, cfg) = get(&format!("http://{}/admin/config", gw.admin)).await;
        if cfg["last_reload"]["ok"] == true {
            break;
        }
        assert!(
            start_wait.elapsed() < PICKUP,
            "good write not picked up: {cfg}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(get(&url).await.0, 200);
}

/// Kubernetes mounts a ConfigMap as `..2026_x/` folders, a `..data` symlink
/// to the current one, and file symlinks through `..data`; an update swaps
/// `..data` with one rename and never touches `routes.toml` itself.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_data_symlink_swap_is_followed() {
    use std::os::unix::fs::symlink;
    let backend = spawn_backend(bookstore::server(&bookstore_pool())).await;
    let dir = temp_dir("configmap");
    let descriptors = copy_descriptors(&temp_dir("configmap-descriptors"));
    let config_text = |extra: &str| {
        base_config(&backend, "", extra).replace(
            "descriptors = \"descriptors\"",
            &format!("descriptors = \"{}\"", toml_path(&descriptors)),
        )
    };
    std::fs::create_dir(dir.join("..2026_11_21_a")).unwrap();
    std::fs::write(dir.join("..2026_11_21_a/routes.toml"), config_text("")).unwrap();
    symlink("..2026_11_21_a", dir.join("..data")).unwrap();
    symlink("..data/routes.toml", dir.join("routes.toml")).unwrap();
    let gw = start(&dir.join("routes.toml")).await;
    assert_eq!(
        get(&format!("http://{}/v1/shelves/1", gw.rest)).await.0,
        200
    );

    let v2 = "[[routes]]\nmethod = \"GET\"\npath = \"/v2/shelves/{shelf}\"\ngrpc = \"example.bookstore.v1.Bookstore/GetShelf\"\n";
    std::fs::create_dir(dir.join("..2026_11_21_b")).unwrap();
    std::fs::write(dir.join("..2026_11_21_b/routes.toml"), config_text(v2)).unwrap();
    symlink("..2026_11_21_b", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    std::fs::remove_dir_all(dir.join("..2026_11_21_a")).unwrap();

    let took = wait_for_status(&format!("http://{}/v2/shelves/2", gw.rest), 200).await;
    assert!(took < PICKUP, "ConfigMap swap took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_describe_what_is_loaded() {
    let backend = spawn_backend(bookstore::server(&bookstore_pool())).await;
    let dir = temp_dir("admin");
    copy_descriptors(&dir);
    let config = dir.join("routes.toml");
    std::fs::write(&config, base_config(&backend, "watch = false", "")).unwrap();
    let gw = start(&config).await;
    let admin = |p: &str| format!("http://{}{p}", gw.admin);

    let (s, body) = get(&admin("/healthz")).await;
    assert_eq!((s, body["status"].as_str()), (200, Some("ok")));
    let (s, body) = get(&admin("/readyz")).await;
    assert_eq!((s, body["status"].as_str()), (200, Some("ready")));

    let (_, routes) = get(&admin("/admin/routes")).await;
    let list = routes["routes"].as_array().unwrap();
    let get_shelf = list
        .iter()
        .find(|r| r["grpc"] == "example.bookstore.v1.Bookstore/GetShelf")
        .expect("GetShelf route listed");
    assert_eq!(get_shelf["method"], "GET");
    assert_eq!(get_shelf["path"], "/v1/shelves/{shelf}");
    assert_eq!(get_shelf["backend"], "bookstore");
    assert!(
        get_shelf["source"]
            .as_str()
            .unwrap()
            .ends_with("routes.toml:12"),
        "{get_shelf}"
    );
    let annotated = list
        .iter()
        .find(|r| r["grpc"] == "example.bookstore.v1.Bookstore/ListShelves")
        .expect("annotated route listed");
    assert_eq!(
        annotated["source"],
        "google.api.http on example.bookstore.v1.Bookstore.ListShelves"
    );

    let (_, backends) = get(&admin("/admin/backends")).await;
    let b = &backends["backends"][0];
    assert_eq!(b["name"], "bookstore");
    assert_eq!(b["endpoints"][0]["address"], backend.as_str());

    let (_, cfg) = get(&admin("/admin/config")).await;
    assert_eq!(cfg["version"], 1);
    assert_eq!(cfg["descriptors"].as_array().unwrap().len(), 1);
    assert_eq!(cfg["config"]["fnv1a"].as_str().unwrap().len(), 16);

    // With the watcher off, POST /admin/reload is how a change gets in.
    std::fs::write(
        &config,
        base_config(&backend, "watch = false", "[[routes]]\nmethod = \"GET\"\npath = \"/v3/shelves/{shelf}\"\ngrpc = \"example.bookstore.v1.Bookstore/GetShelf\"\n"),
    )
    .unwrap();
    assert_eq!(
        get(&format!("http://{}/v3/shelves/1", gw.rest)).await.0,
        404
    );
    let before = gw.gw.snapshot().backends["bookstore"].clone();
    let resp = http_client()
        .post(admin("/admin/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Json = resp.json().await.unwrap();
    assert_eq!(body["version"], 2);
    assert_eq!(
        get(&format!("http://{}/v3/shelves/1", gw.rest)).await.0,
        200
    );
    // The backend's definition did not change: the reload kept the same
    // backend, and with it its connections.
    assert!(Arc::ptr_eq(
        &before,
        &gw.gw.snapshot().backends["bookstore"]
    ));

    // A rejected reload answers 400 with the errors as details.
    std::fs::write(&config, "[server]\nlisten = 5\n").unwrap();
    let resp = http_client()
        .post(admin("/admin/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Json = resp.json().await.unwrap();
    assert_eq!(body["code"], 3);
    let detail = body["details"][0]["fieldViolations"][0]["description"]
        .as_str()
        .unwrap();
    assert!(detail.contains("routes.toml:2"), "{detail}");
    assert_eq!(
        get(&format!("http://{}/v3/shelves/1", gw.rest)).await.0,
        200
    );

    let (s, _) = get(&admin("/nope")).await;
    assert_eq!(s, 404);
}

/// A backend whose GetShelf takes `delay`, to hold a request in flight.
fn slow_bookstore(delay: Duration) -> DynamicServer {
    let pool = bookstore_pool();
    DynamicServer::new(
        &pool,
        &[bookstore::SERVICE],
        move |m: &MethodDescriptor, _req: Request<DynamicMessage>| {
            let mut shelf = DynamicMessage::new(m.output());
            shelf.set_field_by_name("id", Value::I64(1));
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                Ok(Response::new(shelf))
            }) as BoxFuture<_>
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_turns_unready_then_drains_in_flight_requests() {
    let backend = spawn_backend(slow_bookstore(Duration::from_millis(1200))).await;
    let dir = temp_dir("shutdown");
    copy_descriptors(&dir);
    let config = dir.join("routes.toml");
    std::fs::write(&config, base_config(&backend, "watch = false", "")).unwrap();
    let mut gw = start(&config).await;
    let url = format!("http://{}/v1/shelves/1", gw.rest);
    let in_flight = tokio::spawn({
        let url = url.clone();
        async move { get(&url).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    let signalled = Instant::now();
    gw.stop.take().unwrap().send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (s, body) = get(&format!("http://{}/readyz", gw.admin)).await;
    assert_eq!((s, body["status"].as_str()), (503, Some("not ready")));
    assert!(!gw.gw.is_ready());

    let (status, body) = in_flight.await.unwrap();
    assert_eq!(status, 200, "in-flight request was cut: {body}");
    let result = tokio::time::timeout(Duration::from_secs(5), &mut gw.done)
        .await
        .expect("run() returns after draining")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
    assert!(
        signalled.elapsed() >= Duration::from_millis(300),
        "listener closed before the shutdown delay"
    );
    // The listener is closed now.
    assert!(http_client().get(&url).send().await.is_err());
}

/// Builds a backend that serves `proto` through the given reflection version
/// only; the gateway's descriptors folder does not have it.
async fn reflection_backend(v1: bool) -> String {
    let dir = temp_dir("reflected");
    std::fs::write(dir.join("greeter.proto"), GREETER_PROTO).unwrap();
    let pool = gateway::descriptors::load_dir(&dir).unwrap().pool;
    let mut compiler = protox::Compiler::new([&dir]).unwrap();
    compiler.include_imports(true);
    compiler.open_file("greeter.proto").unwrap();
    let set = compiler.encode_file_descriptor_set();
    let builder =
        tonic_reflection::server::Builder::configure().register_encoded_file_descriptor_set(&set);
    let fallback = if v1 {
        gateway::example::dynamic::Fallback::new(builder.build_v1().unwrap())
    } else {
        gateway::example::dynamic::Fallback::new(builder.build_v1alpha().unwrap())
    };
    spawn_backend(greeter_server(&pool).with_fallback(fallback)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_from_server_reflection_route_like_dropped_descriptors() {
    let v1 = reflection_backend(true).await;
    let v1alpha = reflection_backend(false).await;
    let bookstore_backend = spawn_backend(bookstore::server(&bookstore_pool())).await;
    let dir = temp_dir("reflection");
    copy_descriptors(&dir);
    let config = dir.join("routes.toml");
    let extra = format!(
        r#"
[backends.greeter_v1]
endpoints = ["{v1}"]
reflection = true

[backends.greeter_v1alpha]
endpoints = ["{v1alpha}"]
reflection = true

[[routes]]
method = "GET"
path = "/v1/hello/{{name}}"
grpc = "example.greeter.v1.Greeter/Hello"
backend = "greeter_v1"

[[routes]]
method = "GET"
path = "/v1alpha/hello/{{name}}"
grpc = "example.greeter.v1.Greeter/Hello"
backend = "greeter_v1alpha"
"#
    );
    // Neither backend lists services: each serves what reflection reports,
    // and the routes name their backend.
    std::fs::write(
        &config,
        base_config(&bookstore_backend, "watch = false", &extra),
    )
    .unwrap();
    let gw = start(&config).await;
    let (s, body) = get(&format!("http://{}/v1/hello/grace", gw.rest)).await;
    assert_eq!(
        (s, body["greeting"].as_str()),
        (200, Some("hello, grace")),
        "{body}"
    );
    let (s, body) = get(&format!("http://{}/v1alpha/hello/alan", gw.rest)).await;
    assert_eq!(
        (s, body["greeting"].as_str()),
        (200, Some("hello, alan")),
        "{body}"
    );
    assert!(gw
        .gw
        .snapshot()
        .pool
        .get_service_by_name("example.greeter.v1.Greeter")
        .is_some());

    // A reload refreshes reflection; the admin call triggers it.
    let resp = http_client()
        .post(format!("http://{}/admin/reload", gw.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let (s, _) = get(&format!("http://{}/v1/hello/grace", gw.rest)).await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptors_folder_wins_over_reflection_on_conflict() {
    let v1 = reflection_backend(true).await;
    let dir = temp_dir("reflection-conflict");
    copy_descriptors(&dir);
    // The folder defines the same file name with one more field.
    let local = GREETER_PROTO.replace("string name = 1; }", "string name = 1; string title = 2; }");
    std::fs::write(dir.join("descriptors/greeter.proto"), local).unwrap();
    let config = dir.join("routes.toml");
    let bookstore_backend = spawn_backend(bookstore::server(&bookstore_pool())).await;
    let extra = format!(
        "\n[backends.greeter]\nendpoints = [\"{v1}\"]\nreflection = true\nservices = [\"example.greeter.v1.Greeter\"]\n\n[[routes]]\nmethod = \"GET\"\npath = \"/v1/hello/{{name}}\"\ngrpc = \"example.greeter.v1.Greeter/Hello\"\n"
    );
    std::fs::write(
        &config,
        base_config(&bookstore_backend, "watch = false", &extra),
    )
    .unwrap();
    let gw = start(&config).await;
    let snap = gw.gw.snapshot();
    let req = snap
        .pool
        .get_message_by_name("example.greeter.v1.HelloRequest")
        .unwrap();
    assert!(
        req.get_field_by_name("title").is_some(),
        "the folder's copy must win"
    );
}
