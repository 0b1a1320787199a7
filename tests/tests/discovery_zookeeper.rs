//! Backends from ZooKeeper: a real standalone ZooKeeper (Debian's jars) on
//! loopback, instances registered as ephemeral znodes by sessions of their
//! own, backends that are real tonic servers. Instances follow the children
//! of the path, a closed session takes its instance out, and the last list
//! serves through a ZooKeeper outage.

use std::collections::BTreeMap;
use std::time::Duration;

use gateway_tests::fleet::{eventually, RegistryGateway, TestInstance};
use gateway_tests::zookeeper::ZooKeeperServer;

fn source(zk: &ZooKeeperServer, path: &str) -> String {
    format!(
        r#"zookeeper = {{ servers = ["{}"], path = "{path}", session_timeout = "4s" }}"#,
        zk.address()
    )
}

fn host_port(addr: &str) -> (&str, &str) {
    addr.rsplit_once(':').unwrap()
}

#[tokio::test]
async fn ephemeral_znodes_share_the_traffic_in_every_accepted_shape() {
    let zk = ZooKeeperServer::start().await;
    let a = TestInstance::start("a");
    let b = TestInstance::start("b");
    let c = TestInstance::start("c");
    let _ra = zk.register("/services/echo", "a", &a.addr).await;
    let (host, port) = host_port(&b.addr);
    let _rb = zk
        .register(
            "/services/echo",
            "b",
            &format!(r#"{{"host": "{host}", "port": {port}}}"#),
        )
        .await;
    // Curator's ServiceInstance JSON, as its ServiceDiscovery writes it.
    let (host, port) = host_port(&c.addr);
    let _rc = zk
        .register(
            "/services/echo",
            "c",
            &format!(
                r#"{{"name":"echo","id":"c","address":"{host}","port":{port},"sslPort":null,"payload":null,"registrationTimeUTC":1,"serviceType":"DYNAMIC","uriSpec":null}}"#
            ),
        )
        .await;
    let _bad = zk
        .register("/services/echo", "broken", "no port here")
        .await;
    let gw = RegistryGateway::start(&source(&zk, "/services/echo/")).await;

    let mut seen = BTreeMap::new();
    for _ in 0..30 {
        *seen.entry(gw.echo().await.expect("call")).or_insert(0) += 1;
    }
    for name in ["a", "b", "c"] {
        assert_eq!(seen.get(name), Some(&10), "{seen:?}");
    }
    let admin = gw.admin_backend().await;
    assert_eq!(admin["source"], "zookeeper", "{admin}");
    assert_eq!(admin["discovery"]["state"], "ok", "{admin}");
    assert_eq!(
        admin["discovery"]["source"],
        format!("ZooKeeper path \"/services/echo\" at {}", zk.address()),
        "{admin}"
    );
}

#[tokio::test]
async fn a_new_znode_joins_and_a_closed_session_leaves() {
    let zk = ZooKeeperServer::start().await;
    let a = TestInstance::start("a");
    let ra = zk.register("/s/echo", "a", &a.addr).await;
    let gw = RegistryGateway::start(&source(&zk, "/s/echo")).await;
    assert_eq!(gw.echo().await.unwrap(), "a");

    let b = TestInstance::start("b");
    let _rb = zk.register("/s/echo", "b", &b.addr).await;
    gw.served_by_all(&["a", "b"], Duration::from_secs(3)).await;

    // a's session ends: ZooKeeper deletes its ephemeral znode, the children
    // watch fires, and a leaves.
    ra.close();
    eventually("a leaves", Duration::from_secs(5), async || {
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
async fn a_path_created_later_is_picked_up() {
    let zk = ZooKeeperServer::start().await;
    let gw = RegistryGateway::start(&source(&zk, "/later/echo")).await;
    eventually(
        "the empty path is read",
        Duration::from_secs(5),
        async || gw.admin_backend().await["discovery"]["state"] == "ok",
    )
    .await;
    assert!(gw.endpoints().is_empty());
    let a = TestInstance::start("a");
    let _ra = zk.register("/later/echo", "a", &a.addr).await;
    eventually("a joins", Duration::from_secs(5), async || {
        gw.echo().await.ok().as_deref() == Some("a")
    })
    .await;
}

#[tokio::test]
async fn zookeeper_outage_keeps_the_last_endpoints_then_zookeeper_returns() {
    let mut zk = ZooKeeperServer::start().await;
    let a = TestInstance::start("a");
    // Persistent, so it survives the outage however long it lasts.
    let client = zk.client().await;
    let persistent =
        zookeeper_client::CreateMode::Persistent.with_acls(zookeeper_client::Acls::anyone_all());
    client.mkdir("/s/echo", &persistent).await.unwrap();
    client
        .create("/s/echo/a", a.addr.as_bytes(), &persistent)
        .await
        .unwrap();
    drop(client);
    let gw = RegistryGateway::start(&source(&zk, "/s/echo")).await;
    assert_eq!(gw.echo().await.unwrap(), "a");

    zk.stop();
    eventually(
        "the outage is noticed",
        Duration::from_secs(10),
        async || gw.admin_backend().await["discovery"]["error"].is_string(),
    )
    .await;
    for _ in 0..10 {
        assert_eq!(gw.echo().await.unwrap(), "a");
    }
    let d = gw.admin_backend().await["discovery"].clone();
    assert_eq!(d["state"], "failing (serving last known endpoints)", "{d}");
    assert!(d["error"].as_str().unwrap().contains("ZooKeeper"), "{d}");
    assert_eq!(gw.endpoints(), vec![a.addr.clone()]);
    let exposition = gateway::telemetry::metrics::handle().render();
    assert!(
        exposition
            .lines()
            .any(|l| l.starts_with("gateway_discovery_errors_total{")
                && l.contains("source=\"zookeeper\"")),
        "no discovery error counter in:\n{exposition}"
    );

    // Back after longer than the session timeout: a new session reads the
    // path again and watches it.
    tokio::time::sleep(Duration::from_secs(5)).await;
    zk.restart().await;
    eventually("the failure clears", Duration::from_secs(20), async || {
        gw.admin_backend().await["discovery"]["state"] == "ok"
    })
    .await;
    let b = TestInstance::start("b");
    let _rb = zk.register("/s/echo", "b", &b.addr).await;
    gw.served_by_all(&["a", "b"], Duration::from_secs(5)).await;
}

#[tokio::test]
async fn zookeeper_config_errors_name_file_line_and_field() {
    use gateway::snapshot::Snapshot;
    use gateway_tests::{testing_descriptors, toml_path, write_config};
    let text = format!(
        r#"[server]
listen = "127.0.0.1:0"
descriptors = "{}"

[backends.echo]
zookeeper = {{ servers = ["zk1"], path = "services/users", session_timeout = "100ms" }}
services = ["testing.v1.Echo"]

[backends.other]
zookeeper = {{ servers = [], path = "/" }}
etcd = {{ endpoints = ["http://127.0.0.1:2379"], prefix = "/s/" }}
"#,
        toml_path(&testing_descriptors())
    );
    let path = write_config(&text);
    let errors = Snapshot::load(&path).unwrap_err().to_string();
    for (line, field, words) in [
        (
            6,
            "backends.echo.zookeeper.servers",
            "\"zk1\" is not host:port",
        ),
        (
            6,
            "backends.echo.zookeeper.path",
            "\"services/users\" is not a znode path",
        ),
        (6, "backends.echo.zookeeper.session_timeout", "at least 1s"),
        (
            10,
            "backends.other.zookeeper.servers",
            "list the ensemble's servers",
        ),
        (10, "backends.other.zookeeper.path", "is not a znode path"),
        (
            10,
            "backends.other.zookeeper",
            "set one registry, not both etcd and zookeeper",
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

#[tokio::test]
async fn an_expired_session_is_replaced_and_the_path_read_again() {
    let mut zk = ZooKeeperServer::start().await;
    let a = TestInstance::start("a");
    let ra = zk.register("/s/echo", "a", &a.addr).await;
    let gw = RegistryGateway::start(&source(&zk, "/s/echo")).await;
    assert_eq!(gw.echo().await.unwrap(), "a");

    // A ZooKeeper that lost its data knows none of the sessions: the
    // gateway's is expired, and a new one finds the path empty.
    drop(ra);
    zk.restart_empty().await;
    eventually(
        "the new session reads the empty path",
        Duration::from_secs(20),
        async || gw.endpoints().is_empty(),
    )
    .await;
    let b = TestInstance::start("b");
    let _rb = zk.register("/s/echo", "b", &b.addr).await;
    eventually("b joins", Duration::from_secs(5), async || {
        gw.echo().await.ok().as_deref() == Some("b")
    })
    .await;
    assert_eq!(gw.admin_backend().await["discovery"]["state"], "ok");
}

#[tokio::test]
async fn under_load_an_instance_leaving_and_a_zookeeper_outage_and_restart_fail_no_request() {
    let mut zk = ZooKeeperServer::start().await;
    let a = TestInstance::start("a");
    let mut b = TestInstance::start("b");
    // a persistent (it must outlive the outage), b ephemeral (it leaves
    // when its session closes).
    let client = zk.client().await;
    let persistent =
        zookeeper_client::CreateMode::Persistent.with_acls(zookeeper_client::Acls::anyone_all());
    client.mkdir("/s/echo", &persistent).await.unwrap();
    client
        .create("/s/echo/a", a.addr.as_bytes(), &persistent)
        .await
        .unwrap();
    drop(client);
    let rb = zk.register("/s/echo", "b", &b.addr).await;
    let gw = std::sync::Arc::new(RegistryGateway::start(&source(&zk, "/s/echo")).await);
    gw.served_by_all(&["a", "b"], Duration::from_secs(5)).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = gateway_tests::fleet::steady_load(&gw, &stop);

    drop(rb);
    eventually("b leaves", Duration::from_secs(10), async || {
        gw.endpoints() == vec![a.addr.clone()]
    })
    .await;
    b.kill();
    zk.stop();
    eventually(
        "the outage is noticed",
        Duration::from_secs(10),
        async || gw.admin_backend().await["discovery"]["error"].is_string(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    zk.restart().await;
    eventually("the failure clears", Duration::from_secs(20), async || {
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
