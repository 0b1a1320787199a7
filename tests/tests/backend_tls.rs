//! TLS and mTLS to backends (`[backends.NAME.tls]`): tonic-served test
//! backends behind rustls with certificates made at test time (rcgen); the
//! gateway's calls verify the backend's certificate, present a client
//! certificate where the backend requires one, and are refused (503, naming
//! the cause) when the certificate does not verify. Bad files are refused
//! at their key.
//!
//! Renewal: the files are watched, so a new client certificate or CA on
//! disk (written by rename, or by a Secret volume's `..data` swap) is used
//! without a restart, and a broken one keeps the old settings serving.
//! Everything else that connects to instances goes over the same TLS:
//! health checks, server reflection (over mTLS here), streaming calls, and
//! instances found through Consul, checked against `server_name`.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use gateway::snapshot::Snapshot;
use gateway_tests::consul::{ConsulTestServer, Instance};
use gateway_tests::fleet::{eventually, InstanceServer};
use gateway_tests::running::RunningGateway;
use gateway_tests::streaming::H2Call;
use gateway_tests::tls::{write_atomically, Pki, TlsBackend};
use gateway_tests::{echo_server, http_client, testing_descriptors, testing_pool, TestGateway};

/// The Echo backend behind TLS with a certificate from `pki`; with
/// `clients`, it requires a client certificate that CA signed.
async fn tls_backend(pki: &Pki, clients: Option<&Pki>) -> TlsBackend {
    TlsBackend::start(echo_server(&testing_pool()), pki, clients).await
}

fn tempdir() -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "gateway-backend-tls-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// routes.toml for the Echo backend at `{backend}` with `tls`, the files
/// it names written into `dir` first.
fn config(tls: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"
descriptors = "{{descriptors}}"
routes_from_annotations = false

[backends.echo]
endpoints = ["{{backend}}"]
services = ["testing.v1.Echo"]
timeout = "5s"
health_check = {{ interval = "200ms" }}
tls = {tls}

[[routes]]
method = "GET"
path = "/v1/echo"
grpc = "testing.v1.Echo/Echo"
"#
    )
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    gateway_tests::toml_path(&path)
}

#[tokio::test]
async fn calls_reach_a_backend_over_tls() {
    let pki = Pki::new("backend CA");
    let backend = tls_backend(&pki, None).await;
    let dir = tempdir();
    let ca = write(&dir, "ca.pem", &pki.ca_pem);
    let tls = format!(r#"{{ ca_file = "{ca}", server_name = "localhost" }}"#);
    let gw = TestGateway::start_with(&config(&tls), &backend.addr, &testing_descriptors()).await;
    for i in 0..3 {
        let r = gw.get(&format!("/v1/echo?stringField=tls{i}")).await;
        assert_eq!(r.ok()["stringField"], format!("tls{i}"));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_mtls_backend_takes_calls_only_with_the_client_certificate() {
    let servers = Pki::new("backend CA");
    let clients = Pki::new("gateway client CA");
    let backend = tls_backend(&servers, Some(&clients)).await;
    let dir = tempdir();
    let ca = write(&dir, "ca.pem", &servers.ca_pem);
    // Without a client certificate the backend refuses the handshake.
    let tls = format!(r#"{{ ca_file = "{ca}", server_name = "localhost" }}"#);
    let gw = TestGateway::start_with(&config(&tls), &backend.addr, &testing_descriptors()).await;
    gw.get("/v1/echo?stringField=x")
        .await
        .assert_error(503, 14, "");
    // With one its CA signed, the calls go through.
    let (cert, key) = clients.issue(&["gateway"]);
    let cert = write(&dir, "client.pem", &cert);
    let key = write(&dir, "client.key", &key);
    let tls = format!(
        r#"{{ ca_file = "{ca}", server_name = "localhost", cert_file = "{cert}", key_file = "{key}" }}"#
    );
    let gw = TestGateway::start_with(&config(&tls), &backend.addr, &testing_descriptors()).await;
    let r = gw.get("/v1/echo?stringField=mtls").await;
    assert_eq!(r.ok()["stringField"], "mtls");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_backend_whose_certificate_does_not_verify_is_unavailable_and_says_why() {
    let pki = Pki::new("backend CA");
    let other = Pki::new("some other CA");
    let backend = tls_backend(&pki, None).await;
    let dir = tempdir();
    let ca = write(&dir, "ca.pem", &other.ca_pem);
    let tls = format!(r#"{{ ca_file = "{ca}", server_name = "localhost" }}"#);
    let gw = TestGateway::start_with(&config(&tls), &backend.addr, &testing_descriptors()).await;
    let r = gw.get("/v1/echo?stringField=x").await;
    r.assert_error(503, 14, "certificate");
    // A plaintext gateway config against the TLS backend fails too.
    let plain = config("{}").replace("tls = {}\n", "");
    let gw = TestGateway::start_with(&plain, &backend.addr, &testing_descriptors()).await;
    gw.get("/v1/echo?stringField=x")
        .await
        .assert_error(503, 14, "");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn bad_tls_files_are_refused_at_their_keys() {
    let pki = Pki::new("CA");
    let (cert, _) = pki.issue(&["gateway"]);
    let (_, other_key) = pki.issue(&["someone else"]);
    let dir = tempdir();
    let missing = gateway_tests::toml_path(&dir.join("missing.pem"));
    let not_pem = write(&dir, "not.pem", "hello");
    let cert = write(&dir, "client.pem", &cert);
    let key = write(&dir, "other.key", &other_key);
    for (tls, expected) in [
        (
            format!(r#"{{ ca_file = "{missing}" }}"#),
            "backends.echo.tls.ca_file: cannot read",
        ),
        (
            format!(r#"{{ ca_file = "{not_pem}" }}"#),
            "backends.echo.tls.ca_file: holds no PEM certificate",
        ),
        (
            format!(r#"{{ cert_file = "{cert}", key_file = "{key}" }}"#),
            "backends.echo.tls.key_file: does not go with cert_file",
        ),
        (
            format!(r#"{{ cert_file = "{cert}" }}"#),
            "needs both cert_file and key_file",
        ),
    ] {
        let text = config(&tls).replace("{backend}", "127.0.0.1:1").replace(
            "{descriptors}",
            &gateway_tests::toml_path(&testing_descriptors()),
        );
        let path = gateway_tests::write_config(&text);
        let errors = match Snapshot::load(&path) {
            Ok(_) => panic!("{tls} loaded"),
            Err(e) => e.to_string(),
        };
        assert!(errors.contains(expected), "{expected:?} not in:\n{errors}");
        assert!(errors.contains("routes.toml:"), "{errors}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A gateway run as `gateway serve` runs it (file watcher included) from
/// `dir/routes.toml`, written from the [`config`] template with `tls`.
async fn watched_gateway(dir: &Path, tls: &str, backend: &str) -> RunningGateway {
    let text = gateway_tests::render_config(&config(tls), backend, &testing_descriptors());
    let path = dir.join("routes.toml");
    std::fs::write(&path, text).unwrap();
    RunningGateway::start(&path).await
}

/// GET /v1/echo on a running gateway: (status, body).
async fn echo(gw: &RunningGateway, field: &str) -> (u16, serde_json::Value) {
    let resp = http_client()
        .get(gw.url(&format!("/v1/echo?stringField={field}")))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_default())
}

/// Waits for the reload counters to pass `succeeded` or `failed` and
/// returns the last reload's error, if any.
async fn next_reload(gw: &RunningGateway, succeeded: u64, failed: u64) -> Option<String> {
    let state = &gw.gw.reload;
    eventually(
        "the file change is reloaded",
        Duration::from_secs(10),
        async || {
            state.succeeded.load(Ordering::Relaxed) > succeeded
                || state.failed.load(Ordering::Relaxed) > failed
        },
    )
    .await;
    state
        .last
        .load()
        .as_ref()
        .as_ref()
        .and_then(|s| s.error.clone())
}

fn reloads(gw: &RunningGateway) -> (u64, u64) {
    let state = &gw.gw.reload;
    (
        state.succeeded.load(Ordering::Relaxed),
        state.failed.load(Ordering::Relaxed),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_client_certificate_is_used_without_a_restart() {
    let servers = Pki::new("backend CA");
    let old_clients = Pki::new("client CA 2025");
    let new_clients = Pki::new("client CA 2026");
    let backend = tls_backend(&servers, Some(&old_clients)).await;
    let dir = gateway_tests::temp_dir("backend-tls-client-rotation");
    // The certificates in a folder of their own, as a mounted Secret is.
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let ca = write_atomically(&certs, "ca.pem", &servers.ca_pem);
    let (cert, key) = old_clients.issue(&["gateway"]);
    let cert_path = write_atomically(&certs, "client.pem", &cert);
    let key_path = write_atomically(&certs, "client.key", &key);
    let tls = format!(
        r#"{{ ca_file = "{ca}", server_name = "localhost", cert_file = "{cert_path}", key_file = "{key_path}" }}"#
    );
    let gw = watched_gateway(&dir, &tls, &backend.addr).await;
    assert_eq!(echo(&gw, "before").await.0, 200);

    // The backend now trusts only the new client CA (and its restart cut
    // the connections): the old certificate is refused.
    backend.reconfigure(&servers, Some(&new_clients));
    eventually(
        "calls fail with the old client certificate",
        Duration::from_secs(5),
        async || echo(&gw, "refused").await.0 == 503,
    )
    .await;

    // The renewed pair lands on disk; the gateway picks it up by itself.
    let (cert, key) = new_clients.issue(&["gateway"]);
    write_atomically(&certs, "client.key", &key);
    write_atomically(&certs, "client.pem", &cert);
    eventually(
        "calls succeed with the renewed client certificate",
        Duration::from_secs(10),
        async || echo(&gw, "renewed").await.0 == 200,
    )
    .await;
    let (status, body) = echo(&gw, "renewed").await;
    assert_eq!(
        (status, body["stringField"].as_str()),
        (200, Some("renewed"))
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_ca_is_used_and_a_broken_one_keeps_the_old_serving() {
    let old_servers = Pki::new("backend CA 2025");
    let new_servers = Pki::new("backend CA 2026");
    let backend = tls_backend(&old_servers, None).await;
    let dir = gateway_tests::temp_dir("backend-tls-ca-rotation");
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let ca = write_atomically(&certs, "ca.pem", &old_servers.ca_pem);
    let tls = format!(r#"{{ ca_file = "{ca}", server_name = "localhost" }}"#);
    let gw = watched_gateway(&dir, &tls, &backend.addr).await;
    assert_eq!(echo(&gw, "before").await.0, 200);

    // A broken CA file is refused at its key, naming the file...
    let (ok, failed) = reloads(&gw);
    write_atomically(&certs, "ca.pem", "-----BEGIN CERTIFICATE-----\ntruncated");
    let error = next_reload(&gw, ok, failed)
        .await
        .expect("the broken CA file was accepted");
    assert!(
        error.contains("backends.echo.tls.ca_file: holds no PEM certificate"),
        "{error}"
    );
    assert!(error.contains("routes.toml:"), "{error}");
    // ...and the old settings keep serving, new connections included.
    backend.reconfigure(&old_servers, None);
    let (status, body) = echo(&gw, "old").await;
    assert_eq!((status, body["stringField"].as_str()), (200, Some("old")));

    // The backend moves to a certificate from the new CA: refused until
    // the gateway trusts that CA.
    backend.reconfigure(&new_servers, None);
    let (status, body) = echo(&gw, "untrusted").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or("")
            .contains("certificate"),
        "{body}"
    );
    let (ok, failed) = reloads(&gw);
    write_atomically(&certs, "ca.pem", &new_servers.ca_pem);
    assert_eq!(next_reload(&gw, ok, failed).await, None);
    let (status, body) = echo(&gw, "new").await;
    assert_eq!((status, body["stringField"].as_str()), (200, Some("new")));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_volume_swap_of_the_backend_certificates_is_picked_up() {
    // A Kubernetes Secret volume: the files are symlinks through `..data`,
    // which the kubelet points at a new folder in one rename.
    let old_servers = Pki::new("backend CA 2025");
    let new_servers = Pki::new("backend CA 2026");
    let backend = tls_backend(&old_servers, None).await;
    let dir = gateway_tests::temp_dir("backend-tls-secret");
    let secret = dir.join("secret");
    let v1 = secret.join("..2026_01_01");
    std::fs::create_dir_all(&v1).unwrap();
    std::fs::write(v1.join("ca.crt"), &old_servers.ca_pem).unwrap();
    std::os::unix::fs::symlink("..2026_01_01", secret.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/ca.crt", secret.join("ca.crt")).unwrap();
    let ca = gateway_tests::toml_path(&secret.join("ca.crt"));
    let tls = format!(r#"{{ ca_file = "{ca}", server_name = "localhost" }}"#);
    let gw = watched_gateway(&dir, &tls, &backend.addr).await;
    assert_eq!(echo(&gw, "before").await.0, 200);

    backend.reconfigure(&new_servers, None);
    assert_eq!(echo(&gw, "untrusted").await.0, 503);
    let v2 = secret.join("..2026_02_01");
    std::fs::create_dir_all(&v2).unwrap();
    std::fs::write(v2.join("ca.crt"), &new_servers.ca_pem).unwrap();
    std::os::unix::fs::symlink("..2026_02_01", secret.join("..data_tmp")).unwrap();
    std::fs::rename(secret.join("..data_tmp"), secret.join("..data")).unwrap();
    eventually(
        "calls succeed once the Secret's new CA is read",
        Duration::from_secs(10),
        async || echo(&gw, "swapped").await.0 == 200,
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_go_over_tls_and_take_a_not_serving_instance_out() {
    let pki = Pki::new("backend CA");
    let (a, b) = (InstanceServer::new("a"), InstanceServer::new("b"));
    let backend_a = TlsBackend::start(a.server(), &pki, None).await;
    let backend_b = TlsBackend::start(b.server(), &pki, None).await;
    let dir = tempdir();
    let ca = write(&dir, "ca.pem", &pki.ca_pem);
    let tls = format!(r#"{{ ca_file = "{ca}", server_name = "localhost" }}"#);
    let text = config(&tls)
        .replace(
            r#"endpoints = ["{backend}"]"#,
            &format!(r#"endpoints = ["{}", "{}"]"#, backend_a.addr, backend_b.addr),
        )
        .replace(
            r#"health_check = { interval = "200ms" }"#,
            r#"health_check = { interval = "100ms", timeout = "100ms", healthy_threshold = 1, unhealthy_threshold = 2 }"#,
        );
    let gw = TestGateway::start_with(&text, "", &testing_descriptors()).await;
    let served_by = async || gw.get("/v1/echo").await.ok()["name"].clone();
    eventually("both instances serve", Duration::from_secs(5), async || {
        served_by().await;
        a.calls() > 0 && b.calls() > 0
    })
    .await;

    // b's checks answer NOT_SERVING over its TLS connection: it leaves.
    b.serve_health(false);
    eventually("b is out of rotation", Duration::from_secs(5), async || {
        let before = b.calls();
        for _ in 0..6 {
            served_by().await;
        }
        b.calls() == before
    })
    .await;
    for _ in 0..10 {
        assert_eq!(served_by().await, "a");
    }

    b.serve_health(true);
    eventually("b is back", Duration::from_secs(5), async || {
        served_by().await == "b"
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptors_come_from_server_reflection_over_tls() {
    let pki = Pki::new("backend CA");
    let clients = Pki::new("gateway client CA");
    let set = testing_pool().encode_to_vec();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(&set)
        .build_v1()
        .unwrap();
    let server = echo_server(&testing_pool())
        .with_fallback(gateway::example::dynamic::Fallback::new(reflection));
    // mTLS: reflection must present the client certificate too.
    let backend = TlsBackend::start(server, &pki, Some(&clients)).await;
    let dir = gateway_tests::temp_dir("backend-tls-reflection");
    // The gateway's own descriptors do not have testing.v1.Echo.
    std::fs::create_dir_all(dir.join("descriptors")).unwrap();
    let ca = write(&dir, "ca.pem", &pki.ca_pem);
    let (cert, key) = clients.issue(&["gateway"]);
    let cert = write(&dir, "client.pem", &cert);
    let key = write(&dir, "client.key", &key);
    let text = format!(
        r#"[server]
descriptors = "descriptors"
routes_from_annotations = false

[backends.echo]
endpoints = ["{}"]
reflection = true
timeout = "5s"
tls = {{ ca_file = "{ca}", server_name = "localhost", cert_file = "{cert}", key_file = "{key}" }}

[[routes]]
method = "GET"
path = "/v1/echo"
grpc = "testing.v1.Echo/Echo"
"#,
        backend.addr
    );
    let path = dir.join("routes.toml");
    std::fs::write(&path, text).unwrap();
    let gw = RunningGateway::start(&path).await;
    assert!(gw
        .gw
        .snapshot()
        .pool
        .get_service_by_name("testing.v1.Echo")
        .is_some());
    let (status, body) = echo(&gw, "reflected").await;
    assert_eq!(
        (status, body["stringField"].as_str()),
        (200, Some("reflected")),
        "{body}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_calls_go_over_tls() {
    let pki = Pki::new("backend CA");
    let probe = Arc::new(gateway_tests::streaming::Probe::default());
    let backend = TlsBackend::start(gateway_tests::streaming::server(probe), &pki, None).await;
    let dir = tempdir();
    let ca = write(&dir, "ca.pem", &pki.ca_pem);
    let template = gateway_tests::streaming::CONFIG
        .replace("{extra}", "")
        .replace(
            "connect_timeout = \"1s\"\n",
            &format!(
                "connect_timeout = \"1s\"\ntls = {{ ca_file = \"{ca}\", server_name = \"localhost\" }}\n"
            ),
        );
    assert!(
        template.contains("tls = "),
        "the streaming config changed shape"
    );
    let gw = TestGateway::start_with(
        &template,
        &backend.addr,
        &gateway_tests::streaming::descriptors(),
    )
    .await;
    // Server streaming: one NDJSON line per message.
    let r = gw.get("/v1/count?count=3&label=tls").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let labels: Vec<serde_json::Value> = r
        .text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["result"]["label"].clone())
        .collect();
    assert_eq!(labels, vec!["tls"; 3]);
    // Client streaming over HTTP/2: the messages reach the backend one by one.
    let mut call = H2Call::start(
        &gw,
        "POST",
        "/v1/sum",
        &[("content-type", "application/x-ndjson")],
    )
    .await;
    for v in 1..=4 {
        call.send(&format!("{{\"value\": {v}}}\n")).await;
    }
    call.finish();
    assert_eq!(call.response().await.status(), 200);
    let mut all = Vec::new();
    {
        use http_body_util::BodyExt as _;
        let resp = call.response.as_mut().unwrap();
        while let Some(Ok(f)) = resp.body_mut().frame().await {
            if let Ok(d) = f.into_data() {
                all.extend_from_slice(&d);
            }
        }
    }
    let v: serde_json::Value = serde_json::from_slice(&all).unwrap();
    assert_eq!(v, serde_json::json!({"sum": "10", "count": 4}));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_instances_use_the_backends_tls_and_its_server_name() {
    // Instances registered by IP that share one certificate name, as a
    // fleet behind one Secret does.
    let pki = Pki::new("backend CA");
    let (a, b) = (InstanceServer::new("a"), InstanceServer::new("b"));
    let shared = ["echo.service.internal"];
    let backend_a = TlsBackend::start_for(a.server(), &pki, None, &shared).await;
    let backend_b = TlsBackend::start_for(b.server(), &pki, None, &shared).await;
    let consul = ConsulTestServer::start().await;
    consul.register("echo", Instance::new("a", &backend_a.addr));
    consul.register("echo", Instance::new("b", &backend_b.addr));
    let dir = tempdir();
    let ca = write(&dir, "ca.pem", &pki.ca_pem);
    let consul_config = |tls: &str| {
        config(tls).replace(
            r#"endpoints = ["{backend}"]"#,
            &format!(
                r#"consul = {{ service = "echo", address = "{}" }}"#,
                consul.address()
            ),
        )
    };
    let tls = format!(r#"{{ ca_file = "{ca}", server_name = "echo.service.internal" }}"#);
    let gw = TestGateway::start_with(&consul_config(&tls), "", &testing_descriptors()).await;
    eventually(
        "both Consul instances answer over TLS",
        Duration::from_secs(5),
        async || {
            let r = gw.get("/v1/echo").await;
            r.status == 200 && a.calls() > 0 && b.calls() > 0
        },
    )
    .await;

    // Without server_name each instance's registered address (an IP here)
    // is checked, which the shared certificate does not name.
    let tls = format!(r#"{{ ca_file = "{ca}" }}"#);
    let gw = TestGateway::start_with(&consul_config(&tls), "", &testing_descriptors()).await;
    let r = gw.get("/v1/echo").await;
    r.assert_error(503, 14, "certificate");
    let _ = std::fs::remove_dir_all(&dir);
}
