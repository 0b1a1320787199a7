//! Backends from etcd: a real etcd (Debian's etcd-server) on loopback,
//! keys written through its v3 JSON gateway, backends that are real tonic
//! servers. Instances follow the keys under the prefix (puts, deletes,
//! expired leases), the last list serves through an etcd outage, and both
//! layouts and user/password authentication are read.

use std::collections::BTreeMap;
use std::time::Duration;

use gateway_tests::etcd::EtcdServer;
use gateway_tests::fleet::{eventually, RegistryGateway, TestInstance};

/// The `[backends.echo]` discovery line for `etcd` and `prefix`; `extra`
/// goes inside the table.
fn source(etcd: &EtcdServer, prefix: &str, extra: &str) -> String {
    format!(
        r#"etcd = {{ endpoints = ["{}"], prefix = "{prefix}"{extra} }}"#,
        etcd.url()
    )
}

#[tokio::test]
async fn etcd_instances_share_the_traffic_and_a_bad_value_is_skipped() {
    let etcd = EtcdServer::start().await;
    let a = TestInstance::start("a");
    let b = TestInstance::start("b");
    etcd.put("/services/echo/a", &a.addr).await;
    let (host, port) = b.addr.rsplit_once(':').unwrap();
    etcd.put(
        "/services/echo/b",
        &format!(r#"{{"address": "{host}", "port": {port}}}"#),
    )
    .await;
    etcd.put("/services/echo/broken", "not an address").await;
    // Outside the prefix (no trailing slash in the config: one is added).
    etcd.put("/services/echo-old/c", "127.0.0.1:1").await;
    let gw = RegistryGateway::start(&source(&etcd, "/services/echo", "")).await;

    let mut seen = BTreeMap::new();
    for _ in 0..20 {
        *seen.entry(gw.echo().await.expect("call")).or_insert(0) += 1;
    }
    assert_eq!(seen.get("a"), Some(&10), "{seen:?}");
    assert_eq!(seen.get("b"), Some(&10), "{seen:?}");
    let mut want = vec![a.addr.clone(), b.addr.clone()];
    want.sort();
    assert_eq!(gw.endpoints(), want);

    let admin = gw.admin_backend().await;
    assert_eq!(admin["source"], "etcd", "{admin}");
    assert_eq!(admin["discovery"]["state"], "ok", "{admin}");
    assert_eq!(
        admin["discovery"]["source"],
        format!("etcd prefix \"/services/echo/\" (plain) at {}", etcd.url()),
        "{admin}"
    );
    assert!(
        admin["discovery"]["index"].as_u64().unwrap() >= 4,
        "{admin}"
    );
}

#[tokio::test]
async fn a_new_key_joins_and_a_deleted_key_leaves() {
    let etcd = EtcdServer::start().await;
    let a = TestInstance::start("a");
    etcd.put("/s/echo/a", &a.addr).await;
    let gw = RegistryGateway::start(&source(&etcd, "/s/echo/", "")).await;
    assert_eq!(gw.echo().await.unwrap(), "a");

    let b = TestInstance::start("b");
    etcd.put("/s/echo/b", &b.addr).await;
    gw.served_by_all(&["a", "b"], Duration::from_secs(3)).await;

    etcd.delete("/s/echo/a").await;
    eventually("a leaves", Duration::from_secs(3), async || {
        gw.endpoints() == vec![b.addr.clone()]
    })
    .await;
    let before = a.calls();
    for _ in 0..10 {
        assert_eq!(gw.echo().await.unwrap(), "b");
    }
    assert_eq!(a.calls(), before, "a still gets traffic");
}

#[tokio::test]
async fn an_expired_lease_removes_its_instance() {
    let etcd = EtcdServer::start().await;
    let a = TestInstance::start("a");
    let b = TestInstance::start("b");
    etcd.put("/s/echo/a", &a.addr).await;
    // etcd's shortest lease is about 2 s with its default election timeout.
    let lease = etcd.grant_lease(2).await;
    etcd.put_leased("/s/echo/b", &b.addr, lease).await;
    let gw = RegistryGateway::start(&source(&etcd, "/s/echo/", "")).await;
    gw.served_by_all(&["a", "b"], Duration::from_secs(3)).await;

    // Nobody keeps the lease alive: etcd deletes the key, the watch sees it.
    eventually(
        "b leaves when its lease expires",
        Duration::from_secs(10),
        async || gw.endpoints() == vec![a.addr.clone()],
    )
    .await;
    for _ in 0..5 {
        assert_eq!(gw.echo().await.unwrap(), "a");
    }
}

#[tokio::test]
async fn etcd_outage_keeps_the_last_endpoints_then_etcd_returns() {
    let mut etcd = EtcdServer::start().await;
    let a = TestInstance::start("a");
    etcd.put("/s/echo/a", &a.addr).await;
    let gw = RegistryGateway::start(&source(&etcd, "/s/echo/", "")).await;
    assert_eq!(gw.echo().await.unwrap(), "a");

    etcd.stop();
    eventually(
        "the outage is noticed",
        Duration::from_secs(5),
        async || gw.admin_backend().await["discovery"]["error"].is_string(),
    )
    .await;
    for _ in 0..10 {
        assert_eq!(gw.echo().await.unwrap(), "a");
    }
    let admin = gw.admin_backend().await;
    let d = &admin["discovery"];
    assert_eq!(d["state"], "failing (serving last known endpoints)", "{d}");
    assert!(
        d["error"].as_str().unwrap().contains("cannot reach etcd"),
        "{d}"
    );
    assert_eq!(gw.endpoints(), vec![a.addr.clone()]);
    let exposition = gateway::telemetry::metrics::handle().render();
    assert!(
        exposition
            .lines()
            .any(|l| l.starts_with("gateway_discovery_errors_total{")
                && l.contains("source=\"etcd\"")),
        "no discovery error counter in:\n{exposition}"
    );

    // etcd comes back with its data; the watch resumes and sees new keys.
    etcd.restart().await;
    eventually("the failure clears", Duration::from_secs(12), async || {
        gw.admin_backend().await["discovery"]["state"] == "ok"
    })
    .await;
    let b = TestInstance::start("b");
    etcd.put("/s/echo/b", &b.addr).await;
    gw.served_by_all(&["a", "b"], Duration::from_secs(3)).await;
}

#[tokio::test]
async fn grpc_go_naming_layout_is_read() {
    let etcd = EtcdServer::start().await;
    let a = TestInstance::start("a");
    let b = TestInstance::start("b");
    // What go.etcd.io/etcd/client/v3/naming/endpoints writes for
    // AddEndpoint("echo/<addr>", Endpoint{Addr: addr}).
    for inst in [&a, &b] {
        etcd.put(
            &format!("echo/{}", inst.addr),
            &format!(r#"{{"Op":0,"Addr":"{}","Metadata":null}}"#, inst.addr),
        )
        .await;
    }
    // The plain layout's `host:port` is not the grpc-go layout: skipped.
    etcd.put("echo/plain", "127.0.0.1:1").await;
    let gw = RegistryGateway::start(&source(&etcd, "echo", r#", layout = "grpc-go""#)).await;
    gw.served_by_all(&["a", "b"], Duration::from_secs(3)).await;
    let mut want = vec![a.addr.clone(), b.addr.clone()];
    want.sort();
    assert_eq!(gw.endpoints(), want);
    etcd.delete(&format!("echo/{}", a.addr)).await;
    eventually("a leaves", Duration::from_secs(3), async || {
        gw.endpoints() == vec![b.addr.clone()]
    })
    .await;
}

#[tokio::test]
async fn user_and_password_authenticate_and_a_wrong_password_is_an_error() {
    const GOOD: &str = "GATEWAY_TEST_ETCD_PASSWORD_GOOD";
    const BAD: &str = "GATEWAY_TEST_ETCD_PASSWORD_BAD";
    std::env::set_var(GOOD, "s3cret");
    std::env::set_var(BAD, "wrong");
    let mut etcd = EtcdServer::start().await;
    let a = TestInstance::start("a");
    etcd.put("/s/echo/a", &a.addr).await;
    etcd.enable_auth("s3cret").await;

    let auth = |var: &str| format!(r#", username = "root", password_env = "{var}""#);
    let gw = RegistryGateway::start(&source(&etcd, "/s/echo/", &auth(GOOD))).await;
    assert_eq!(gw.echo().await.unwrap(), "a");
    // The watch runs with the token too.
    let b = TestInstance::start("b");
    etcd.put("/s/echo/b", &b.addr).await;
    gw.served_by_all(&["a", "b"], Duration::from_secs(3)).await;

    let wrong = RegistryGateway::start(&source(&etcd, "/s/echo/", &auth(BAD))).await;
    eventually(
        "the refusal is reported",
        Duration::from_secs(5),
        async || wrong.admin_backend().await["discovery"]["error"].is_string(),
    )
    .await;
    let d = wrong.admin_backend().await["discovery"].clone();
    assert_eq!(d["state"], "failing (no endpoints yet)", "{d}");
    assert!(
        d["error"]
            .as_str()
            .unwrap()
            .contains("etcd refused the credentials: etcdserver: authentication failed"),
        "{d}"
    );

    // Without credentials etcd refuses the read.
    let none = RegistryGateway::start(&source(&etcd, "/s/echo/", "")).await;
    eventually(
        "the refusal is reported",
        Duration::from_secs(5),
        async || none.admin_backend().await["discovery"]["error"].is_string(),
    )
    .await;
    let d = none.admin_backend().await["discovery"].clone();
    assert!(
        d["error"].as_str().unwrap().contains("user name is empty"),
        "{d}"
    );
}

#[tokio::test]
async fn etcd_config_errors_name_file_line_and_field() {
    use gateway::snapshot::Snapshot;
    use gateway_tests::{testing_descriptors, toml_path, write_config};
    let text = format!(
        r#"[server]
listen = "127.0.0.1:0"
descriptors = "{}"

[backends.echo]
etcd = {{ endpoints = ["127.0.0.1:2379", "https://etcd:2379/v3"], prefix = "/", layout = "etcd" }}
services = ["testing.v1.Echo"]

[backends.other]
endpoints = ["127.0.0.1:1"]
etcd = {{ endpoints = ["http://127.0.0.1:2379"], prefix = "/s/", username = "root" }}

[backends.third]
etcd = {{ endpoints = ["http://127.0.0.1:2379"], prefix = "/s/", ca_file = "ca.pem", cert_file = "c.pem" }}
consul = {{ service = "third" }}

[backends.fourth]
etcd = {{ endpoints = ["https://127.0.0.1:2379"], prefix = "/s/", ca_file = "no-such-ca.pem", password_env = "P" }}
"#,
        toml_path(&testing_descriptors())
    );
    let path = write_config(&text);
    let errors = Snapshot::load(&path).unwrap_err().to_string();
    for (line, field, words) in [
        (
            6,
            "backends.echo.etcd.endpoints",
            "\"127.0.0.1:2379\" is not an address; write e.g. \"http://127.0.0.1:2379\"",
        ),
        (
            6,
            "backends.echo.etcd.endpoints",
            "\"https://etcd:2379/v3\" is not an address",
        ),
        (6, "backends.echo.etcd.prefix", "name the key prefix"),
        (
            6,
            "backends.echo.etcd.layout",
            "\"etcd\" is not a layout; use \"plain\" or \"grpc-go\"",
        ),
        (
            11,
            "backends.other.etcd",
            "set either endpoints or etcd, not both",
        ),
        (
            11,
            "backends.other.etcd.password_env",
            "a username needs password_env",
        ),
        (
            14,
            "backends.third.etcd.ca_file",
            "ca_file needs https:// endpoints",
        ),
        (
            14,
            "backends.third.etcd.key_file",
            "cert_file needs its key_file",
        ),
        (
            14,
            "backends.third.etcd",
            "set one registry, not both consul and etcd",
        ),
        (18, "backends.fourth.etcd.ca_file", "cannot read"),
        (
            18,
            "backends.fourth.etcd.username",
            "password_env needs the username",
        ),
    ] {
        let want = format!("{}:{line}: {field}: ", path.display());
        assert!(
            errors
                .lines()
                .any(|l| l.starts_with(&want) && l.contains(words)),
            "no `{want}...{words}` in:\n{errors}"
        );
    }
}

/// A CA and certificates it signed, as PEM (rcgen, made at test time).
struct Pki {
    ca_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        params
            .distinguished_name
            .push(DnType::CommonName, "etcd test CA");
        let cert = params.self_signed(&key).unwrap();
        Pki {
            ca_pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// (certificate, key) for `name` (an IP address becomes an IP SAN).
    fn issue(&self, name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

#[tokio::test]
async fn etcd_over_mutual_tls_is_read_with_the_ca_and_client_certificate() {
    let pki = Pki::new();
    let (cert, key) = pki.issue("gateway");
    let etcd = EtcdServer::start_tls(&gateway_tests::etcd::EtcdTls {
        ca_pem: pki.ca_pem.clone(),
        server: pki.issue("127.0.0.1"),
        client: Some((cert.clone(), key.clone())),
    })
    .await;
    let a = TestInstance::start("a");
    etcd.put("/s/echo/a", &a.addr).await;
    let dir = gateway_tests::temp_dir("etcd-client-tls");
    for (name, pem) in [
        ("ca.pem", &pki.ca_pem),
        ("cert.pem", &cert),
        ("key.pem", &key),
    ] {
        std::fs::write(dir.join(name), pem).unwrap();
    }
    let file = |n: &str| gateway_tests::toml_path(&dir.join(n));
    let tls = format!(
        r#", ca_file = "{}", cert_file = "{}", key_file = "{}""#,
        file("ca.pem"),
        file("cert.pem"),
        file("key.pem")
    );
    let gw = RegistryGateway::start(&source(&etcd, "/s/echo/", &tls)).await;
    assert_eq!(gw.echo().await.unwrap(), "a");
    let b = TestInstance::start("b");
    etcd.put("/s/echo/b", &b.addr).await;
    gw.served_by_all(&["a", "b"], Duration::from_secs(3)).await;

    // Without the client certificate etcd refuses the handshake.
    let ca_only = format!(r#", ca_file = "{}""#, file("ca.pem"));
    let refused = RegistryGateway::start(&source(&etcd, "/s/echo/", &ca_only)).await;
    eventually(
        "the refusal is reported",
        Duration::from_secs(5),
        async || refused.admin_backend().await["discovery"]["error"].is_string(),
    )
    .await;
    let d = refused.admin_backend().await["discovery"].clone();
    assert_eq!(d["state"], "failing (no endpoints yet)", "{d}");
    assert!(
        d["error"].as_str().unwrap().contains("cannot reach etcd"),
        "{d}"
    );
}

#[tokio::test]
async fn the_etcd_example_serves_the_instance_its_readme_registers() {
    let root = gateway_tests::repo_root();
    let text = std::fs::read_to_string(root.join("examples/etcd/routes.toml")).unwrap();
    let readme = std::fs::read_to_string(root.join("examples/etcd/README.md")).unwrap();
    // The key the README writes is under the prefix the config watches.
    let key = "/services/bookstore/demo";
    assert!(readme.contains(&format!("etcdctl put {key} 127.0.0.1:50051")));
    for needle in [
        "http://127.0.0.1:2379",
        "../../descriptors",
        "prefix = \"/services/bookstore/\"",
    ] {
        assert!(
            text.contains(needle),
            "examples/etcd/routes.toml no longer has {needle}"
        );
    }
    let etcd = EtcdServer::start().await;
    let backend = gateway_tests::spawn_backend(gateway::example::bookstore::server(
        &gateway_tests::bookstore_pool(),
    ))
    .await;
    etcd.put(key, &backend).await;
    let admin = gateway_tests::dead_addr().await;
    let config = gateway_tests::write_config(
        &text
            .replace("http://127.0.0.1:2379", &etcd.url())
            .replace(
                "../../descriptors",
                &gateway_tests::toml_path(&root.join("descriptors")),
            )
            .replace("127.0.0.1:8083", "127.0.0.1:0")
            .replace("127.0.0.1:9083", &admin),
    );
    let (_child, rest) =
        gateway_tests::binary::spawn_listening(&["serve", "--config", config.to_str().unwrap()])
            .await;
    let client = gateway_tests::http_client();
    let status = |path: &'static str| {
        let client = client.clone();
        let url = format!("http://{rest}{path}");
        async move {
            client
                .get(url)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    };
    eventually(
        "the example serves the instance in etcd",
        Duration::from_secs(10),
        async || status("/v1/shelves").await == 200,
    )
    .await;
    let backends: serde_json::Value = client
        .get(format!("http://{admin}/admin/backends"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(backends["backends"][0]["source"], "etcd", "{backends}");
    etcd.delete(key).await;
    eventually(
        "a deleted key takes the instance away",
        Duration::from_secs(10),
        async || status("/v1/shelves").await == 503,
    )
    .await;
}

#[tokio::test]
async fn under_load_an_instance_leaving_and_an_etcd_outage_and_restart_fail_no_request() {
    let mut etcd = EtcdServer::start().await;
    let a = TestInstance::start("a");
    let mut b = TestInstance::start("b");
    etcd.put("/s/echo/a", &a.addr).await;
    etcd.put("/s/echo/b", &b.addr).await;
    let gw = std::sync::Arc::new(RegistryGateway::start(&source(&etcd, "/s/echo/", "")).await);
    gw.served_by_all(&["a", "b"], Duration::from_secs(3)).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = gateway_tests::fleet::steady_load(&gw, &stop);

    // An instance deregisters, then stops: its calls finish, new ones go to a.
    etcd.delete("/s/echo/b").await;
    eventually("b leaves", Duration::from_secs(5), async || {
        gw.endpoints() == vec![a.addr.clone()]
    })
    .await;
    b.kill();
    // The registry goes away and comes back, with the data it had.
    etcd.stop();
    eventually(
        "the outage is noticed",
        Duration::from_secs(5),
        async || gw.admin_backend().await["discovery"]["error"].is_string(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    etcd.restart().await;
    eventually("the watch resumes", Duration::from_secs(12), async || {
        gw.admin_backend().await["discovery"]["state"] == "ok"
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (calls, failed) = load.await.unwrap();
    assert!(calls > 50, "only {calls} calls under load");
    assert!(
        failed.is_empty(),
        "{} of {calls} calls failed: {failed:?}",
        failed.len()
    );
    assert_eq!(gw.endpoints(), vec![a.addr.clone()]);
}
