//! Backends from Nacos: the Nacos naming API test server (tests/src/nacos.rs)
//! on loopback, backends that are real tonic servers. Only healthy,
//! enabled instances serve; registrations and deregistrations are seen
//! within the refresh; the last list serves through an outage with no
//! failed request; login tokens are sent and renewed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gateway_tests::fleet::{eventually, steady_load, RegistryGateway, TestInstance};
use gateway_tests::nacos::{NacosInstance, NacosTestServer};

/// The `[backends.echo]` discovery line for `nacos` and service `echo`,
/// polled every 100 ms; `extra` goes inside the table.
fn source(nacos: &NacosTestServer, extra: &str) -> String {
    format!(
        r#"nacos = {{ servers = ["{}"], service = "echo", refresh = "100ms"{extra} }}"#,
        nacos.url()
    )
}

#[tokio::test]
async fn nacos_instances_share_the_traffic_and_unhealthy_or_disabled_ones_are_left_out() {
    let nacos = NacosTestServer::start().await;
    let a = TestInstance::start("a");
    let b = TestInstance::start("b");
    let sick = TestInstance::start("sick");
    let off = TestInstance::start("off");
    let light = TestInstance::start("light");
    for i in [&a, &b, &sick, &off, &light] {
        nacos.register("echo", NacosInstance::new(&i.addr));
    }
    nacos.set_status("echo", &sick.addr, false, true);
    nacos.set_status("echo", &off.addr, true, false);
    nacos.register("echo", NacosInstance::new(&light.addr).weight(0.0));
    // Another group's instance of the same name is another service.
    let other = TestInstance::start("other");
    nacos.register_in("public", "OTHER", "echo", NacosInstance::new(&other.addr));
    let gw = RegistryGateway::start(&source(&nacos, "")).await;

    let mut seen = BTreeMap::new();
    for _ in 0..20 {
        *seen.entry(gw.echo().await.expect("call")).or_insert(0) += 1;
    }
    assert_eq!(seen.get("a"), Some(&10), "{seen:?}");
    assert_eq!(seen.get("b"), Some(&10), "{seen:?}");
    let mut want = vec![a.addr.clone(), b.addr.clone()];
    want.sort();
    assert_eq!(gw.endpoints(), want);
    for i in [&sick, &off, &light, &other] {
        assert_eq!(i.calls(), 0, "{} got traffic", i.name);
    }

    let admin = gw.admin_backend().await;
    assert_eq!(admin["source"], "nacos", "{admin}");
    assert_eq!(admin["discovery"]["state"], "ok", "{admin}");
    assert_eq!(
        admin["discovery"]["source"],
        format!("Nacos service \"echo\" (DEFAULT_GROUP) at {}", nacos.url()),
        "{admin}"
    );

    // Healthy again: back in.
    nacos.set_status("echo", &sick.addr, true, true);
    gw.served_by_all(&["a", "b", "sick"], Duration::from_secs(3))
        .await;
}

#[tokio::test]
async fn group_namespace_and_cluster_select_the_instances() {
    let nacos = NacosTestServer::start().await;
    let a = TestInstance::start("a");
    let b = TestInstance::start("b");
    nacos.register_in(
        "dev",
        "SHOP",
        "echo",
        NacosInstance::new(&a.addr).cluster("east"),
    );
    nacos.register_in(
        "dev",
        "SHOP",
        "echo",
        NacosInstance::new(&b.addr).cluster("west"),
    );
    let gw = RegistryGateway::start(&source(
        &nacos,
        r#", namespace = "dev", group = "SHOP", cluster = "east""#,
    ))
    .await;
    assert_eq!(gw.endpoints(), Vec::<String>::new());
    eventually(
        "the east instance is listed",
        Duration::from_secs(3),
        async || gw.endpoints() == vec![a.addr.clone()],
    )
    .await;
    for _ in 0..5 {
        assert_eq!(gw.echo().await.unwrap(), "a");
    }
}

#[tokio::test]
async fn a_new_nacos_instance_joins_and_a_deregistered_one_leaves() {
    let nacos = NacosTestServer::start().await;
    let a = TestInstance::start("a");
    nacos.register("echo", NacosInstance::new(&a.addr));
    let gw = RegistryGateway::start(&source(&nacos, "")).await;
    assert_eq!(gw.echo().await.unwrap(), "a");

    let b = TestInstance::start("b");
    nacos.register("echo", NacosInstance::new(&b.addr));
    gw.served_by_all(&["a", "b"], Duration::from_secs(3)).await;

    nacos.deregister("echo", &a.addr);
    eventually("a leaves", Duration::from_secs(3), async || {
        gw.endpoints() == vec![b.addr.clone()]
    })
    .await;
    let before = a.calls();
    for _ in 0..10 {
        assert_eq!(gw.echo().await.unwrap(), "b");
    }
    assert_eq!(a.calls(), before, "a still gets traffic");
    // Polled, not once: the server keeps being asked.
    let lists = nacos.lists();
    eventually(
        "the list is polled again",
        Duration::from_secs(3),
        async || nacos.lists() > lists + 2,
    )
    .await;
}

#[tokio::test]
async fn nacos_outage_keeps_the_last_endpoints_with_no_failed_request_then_changes_are_seen_again()
{
    let mut nacos = NacosTestServer::start().await;
    let a = TestInstance::start("a");
    let b = TestInstance::start("b");
    nacos.register("echo", NacosInstance::new(&a.addr));
    nacos.register("echo", NacosInstance::new(&b.addr));
    let gw = Arc::new(RegistryGateway::start(&source(&nacos, "")).await);
    gw.served_by_all(&["a", "b"], Duration::from_secs(3)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let load = steady_load(&gw, &stop);

    // First the server answers 500s, then it is gone altogether.
    nacos.fail(true);
    eventually(
        "the failure is noticed",
        Duration::from_secs(5),
        async || gw.admin_backend().await["discovery"]["error"].is_string(),
    )
    .await;
    let d = gw.admin_backend().await["discovery"].clone();
    assert_eq!(d["state"], "failing (serving last known endpoints)", "{d}");
    assert!(
        d["error"].as_str().unwrap().contains("Nacos answered 500"),
        "{d}"
    );
    nacos.stop();
    eventually(
        "the outage is noticed",
        Duration::from_secs(5),
        async || {
            gw.admin_backend().await["discovery"]["error"]
                .as_str()
                .is_some_and(|e| e.contains("cannot reach Nacos"))
        },
    )
    .await;
    let exposition = gateway::telemetry::metrics::handle().render();
    assert!(
        exposition
            .lines()
            .any(|l| l.starts_with("gateway_discovery_errors_total{")
                && l.contains("source=\"nacos\"")),
        "no discovery error counter in:\n{exposition}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut want = vec![a.addr.clone(), b.addr.clone()];
    want.sort();
    assert_eq!(gw.endpoints(), want);
    // Back, with a change made meanwhile: it is seen.
    nacos.fail(false);
    nacos.deregister("echo", &a.addr);
    nacos.restart().await;
    eventually("the failure clears", Duration::from_secs(12), async || {
        gw.admin_backend().await["discovery"]["state"] == "ok"
    })
    .await;
    eventually("a leaves", Duration::from_secs(3), async || {
        gw.endpoints() == vec![b.addr.clone()]
    })
    .await;
    // The load ran through the outage, the restart and a's leaving.
    stop.store(true, Ordering::Relaxed);
    let (calls, failed) = load.await.unwrap();
    assert!(calls > 20, "only {calls} calls under load");
    assert!(
        failed.is_empty(),
        "{} of {calls} calls failed: {failed:?}",
        failed.len()
    );
}

#[tokio::test]
async fn nacos_login_token_is_sent_and_renewed_and_a_wrong_password_is_an_error() {
    const GOOD: &str = "GATEWAY_TEST_NACOS_PASSWORD_GOOD";
    const BAD: &str = "GATEWAY_TEST_NACOS_PASSWORD_BAD";
    std::env::set_var(GOOD, "s3cret");
    std::env::set_var(BAD, "wrong");
    // Tokens that live 2 s: renewed after 1.8 s.
    let nacos = NacosTestServer::start_with_auth("nacos", "s3cret", Duration::from_secs(2)).await;
    let a = TestInstance::start("a");
    nacos.register("echo", NacosInstance::new(&a.addr));
    let auth = |var: &str| format!(r#", username = "nacos", password_env = "{var}""#);

    let gw = RegistryGateway::start(&source(&nacos, &auth(GOOD))).await;
    assert_eq!(gw.echo().await.unwrap(), "a");
    assert_eq!(nacos.logins(), 1);
    eventually(
        "the token is renewed before it expires",
        Duration::from_secs(5),
        async || nacos.logins() >= 2,
    )
    .await;
    assert_eq!(gw.admin_backend().await["discovery"]["state"], "ok");
    let seen = nacos.tokens_seen();
    assert!(seen.iter().all(|t| t.starts_with("token-")), "{seen:?}");

    // A token the server forgot: logged in again at once.
    let logins = nacos.logins();
    nacos.revoke_tokens();
    eventually(
        "a revoked token is replaced",
        Duration::from_secs(3),
        async || nacos.logins() > logins,
    )
    .await;
    let b = TestInstance::start("b");
    nacos.register("echo", NacosInstance::new(&b.addr));
    gw.served_by_all(&["a", "b"], Duration::from_secs(3)).await;
    assert_eq!(gw.admin_backend().await["discovery"]["state"], "ok");

    let wrong = RegistryGateway::start(&source(&nacos, &auth(BAD))).await;
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
            .contains("Nacos refused the credentials: login answered 403: unknown user!"),
        "{d}"
    );

    let none = RegistryGateway::start(&source(&nacos, "")).await;
    eventually(
        "the refusal is reported",
        Duration::from_secs(5),
        async || none.admin_backend().await["discovery"]["error"].is_string(),
    )
    .await;
    let d = none.admin_backend().await["discovery"].clone();
    assert!(
        d["error"].as_str().unwrap().contains("user not found!"),
        "{d}"
    );
}

#[tokio::test]
async fn nacos_config_errors_name_file_line_and_key() {
    use gateway::snapshot::Snapshot;
    use gateway_tests::{testing_descriptors, toml_path, write_config};
    let text = format!(
        r#"[server]
listen = "127.0.0.1:0"
descriptors = "{}"

[backends.echo]
nacos = {{ servers = ["127.0.0.1:8848"], service = "", refresh = "soon" }}
services = ["testing.v1.Echo"]

[backends.other]
nacos = {{ servers = ["http://127.0.0.1:8848"], service = "s", username = "nacos" }}

[backends.third]
nacos = {{ servers = ["http://127.0.0.1:8848"], service = "s" }}
etcd = {{ endpoints = ["http://127.0.0.1:2379"], prefix = "/s/" }}

[backends.fourth]
endpoints = ["127.0.0.1:1"]
nacos = {{ servers = [], service = "s", password_env = "P" }}
"#,
        toml_path(&testing_descriptors())
    );
    let path = write_config(&text);
    let errors = Snapshot::load(&path).unwrap_err().to_string();
    for (line, field, words) in [
        (
            6,
            "backends.echo.nacos.servers",
            "\"127.0.0.1:8848\" is not an address; write e.g. \"http://127.0.0.1:8848\"",
        ),
        (6, "backends.echo.nacos.service", "\"\" is not a name"),
        (6, "backends.echo.nacos.refresh", ""),
        (
            10,
            "backends.other.nacos.password_env",
            "a username needs password_env",
        ),
        (
            13,
            "backends.third.nacos",
            "set one registry, not both etcd and nacos",
        ),
        (
            18,
            "backends.fourth.nacos",
            "set either endpoints or nacos, not both",
        ),
        (
            18,
            "backends.fourth.nacos.servers",
            "list the Nacos servers",
        ),
        (
            18,
            "backends.fourth.nacos.username",
            "password_env needs the username",
        ),
    ] {
        let found = errors
            .lines()
            .any(|l| l.contains(&format!(":{line}:")) && l.contains(field) && l.contains(words));
        assert!(
            found,
            "no error at line {line} for {field} ({words}) in:\n{errors}"
        );
    }
}
