//! Backends from Eureka: the Eureka REST API test server
//! (tests/src/eureka.rs) on loopback, backends that are real tonic
//! servers. Only UP instances serve; changes arrive through delta fetches,
//! and a delta whose hash code does not match the local copy brings a
//! full fetch; the last list serves through an outage with no failed
//! request; several servers are tried in turn.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gateway_tests::eureka::{EurekaInstance, EurekaTestServer};
use gateway_tests::fleet::{eventually, steady_load, RegistryGateway, TestInstance};

/// The `[backends.echo]` discovery line for app `ECHO` on `servers`,
/// refreshed every 100 ms.
fn source(servers: &[String]) -> String {
    let servers: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        r#"eureka = {{ servers = [{}], app = "echo", refresh = "100ms" }}"#,
        servers.join(", ")
    )
}

fn register(eureka: &EurekaTestServer, i: &TestInstance) {
    eureka.register(EurekaInstance::new("ECHO", &i.name, &i.addr));
}

#[tokio::test]
async fn eureka_up_instances_share_the_traffic_and_others_are_left_out() {
    let eureka = EurekaTestServer::start().await;
    let a = TestInstance::start("a");
    let b = TestInstance::start("b");
    let mut others = Vec::new();
    for status in ["DOWN", "STARTING", "OUT_OF_SERVICE", "UNKNOWN"] {
        let i = TestInstance::start(status);
        register(&eureka, &i);
        eureka.set_status(status, status);
        others.push(i);
    }
    register(&eureka, &a);
    // Only the secure port is enabled: that one is used.
    let (ip, port) = b.addr.rsplit_once(':').unwrap();
    let mut secure = EurekaInstance::new("ECHO", "b", &format!("{ip}:1"));
    secure.port_enabled = false;
    secure.secure_port = port.parse().unwrap();
    eureka.register(secure);
    // Another app's instance.
    let other = TestInstance::start("other");
    eureka.register(EurekaInstance::new("OTHER", "other", &other.addr));
    let gw = RegistryGateway::start(&source(&[eureka.url()])).await;

    let mut seen = BTreeMap::new();
    for _ in 0..20 {
        *seen.entry(gw.echo().await.expect("call")).or_insert(0) += 1;
    }
    assert_eq!(seen.get("a"), Some(&10), "{seen:?}");
    assert_eq!(seen.get("b"), Some(&10), "{seen:?}");
    let mut want = vec![a.addr.clone(), b.addr.clone()];
    want.sort();
    assert_eq!(gw.endpoints(), want);
    for i in others.iter().chain([&other]) {
        assert_eq!(i.calls(), 0, "{} got traffic", i.name);
    }
    let admin = gw.admin_backend().await;
    assert_eq!(admin["source"], "eureka", "{admin}");
    assert_eq!(
        admin["discovery"]["source"],
        format!("Eureka app \"ECHO\" at {}", eureka.url()),
        "{admin}"
    );

    // UP again (a MODIFIED delta): back in.
    eureka.set_status("DOWN", "UP");
    gw.served_by_all(&["a", "b", "DOWN"], Duration::from_secs(3))
        .await;
}

#[tokio::test]
async fn changes_arrive_by_delta_and_a_hashcode_mismatch_fetches_the_registry_whole() {
    let eureka = EurekaTestServer::start().await;
    let a = TestInstance::start("a");
    register(&eureka, &a);
    let gw = RegistryGateway::start(&source(&[eureka.url()])).await;
    assert_eq!(gw.echo().await.unwrap(), "a");
    eventually("deltas are asked for", Duration::from_secs(3), async || {
        eureka.delta_fetches() >= 2
    })
    .await;
    let full = eureka.full_fetches();
    assert_eq!(full, 1, "full fetches while the deltas match");

    let b = TestInstance::start("b");
    register(&eureka, &b);
    gw.served_by_all(&["a", "b"], Duration::from_secs(3)).await;
    eureka.deregister("a");
    eventually("a leaves", Duration::from_secs(3), async || {
        gw.endpoints() == vec![b.addr.clone()]
    })
    .await;
    // Joins and leaves came by delta alone.
    assert_eq!(eureka.full_fetches(), 1);

    // A delta that does not add up: the registry is fetched whole.
    eureka.wrong_delta_hashcode(true);
    eventually("a full fetch follows", Duration::from_secs(3), async || {
        eureka.full_fetches() > 1
    })
    .await;
    eureka.wrong_delta_hashcode(false);
    let c = TestInstance::start("c");
    register(&eureka, &c);
    gw.served_by_all(&["b", "c"], Duration::from_secs(3)).await;
    assert_eq!(gw.admin_backend().await["discovery"]["state"], "ok");
}

#[tokio::test]
async fn eureka_outage_keeps_the_last_endpoints_with_no_failed_request_then_changes_are_seen_again()
{
    let mut eureka = EurekaTestServer::start().await;
    let a = TestInstance::start("a");
    let b = TestInstance::start("b");
    register(&eureka, &a);
    register(&eureka, &b);
    let gw = Arc::new(RegistryGateway::start(&source(&[eureka.url()])).await);
    gw.served_by_all(&["a", "b"], Duration::from_secs(3)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let load = steady_load(&gw, &stop);
    eureka.fail(true);
    eventually(
        "the failure is noticed",
        Duration::from_secs(5),
        async || gw.admin_backend().await["discovery"]["error"].is_string(),
    )
    .await;
    let d = gw.admin_backend().await["discovery"].clone();
    assert_eq!(d["state"], "failing (serving last known endpoints)", "{d}");
    assert!(
        d["error"].as_str().unwrap().contains("Eureka answered 500"),
        "{d}"
    );
    eureka.stop();
    eventually(
        "the outage is noticed",
        Duration::from_secs(5),
        async || {
            gw.admin_backend().await["discovery"]["error"]
                .as_str()
                .is_some_and(|e| e.contains("cannot reach Eureka"))
        },
    )
    .await;
    let exposition = gateway::telemetry::metrics::handle().render();
    assert!(
        exposition
            .lines()
            .any(|l| l.starts_with("gateway_discovery_errors_total{")
                && l.contains("source=\"eureka\"")),
        "no discovery error counter in:\n{exposition}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut want = vec![a.addr.clone(), b.addr.clone()];
    want.sort();
    assert_eq!(gw.endpoints(), want);
    // Back, with a change made meanwhile: a full fetch sees it.
    let full = eureka.full_fetches();
    eureka.fail(false);
    eureka.deregister("a");
    eureka.restart().await;
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
    assert!(
        eureka.full_fetches() > full,
        "no full fetch after the errors"
    );
}

#[tokio::test]
async fn a_second_eureka_server_answers_when_the_first_is_down() {
    let mut down = EurekaTestServer::start().await;
    let first = down.url();
    down.stop();
    let eureka = EurekaTestServer::start().await;
    let a = TestInstance::start("a");
    register(&eureka, &a);
    let gw = RegistryGateway::start(&source(&[first, eureka.url()])).await;
    assert_eq!(gw.echo().await.unwrap(), "a");
    assert_eq!(gw.admin_backend().await["discovery"]["state"], "ok");
}

#[tokio::test]
async fn eureka_config_errors_name_file_line_and_key() {
    use gateway::snapshot::Snapshot;
    use gateway_tests::{testing_descriptors, toml_path, write_config};
    let text = format!(
        r#"[server]
listen = "127.0.0.1:0"
descriptors = "{}"

[backends.echo]
eureka = {{ servers = ["127.0.0.1:8761/eureka"], app = "", refresh = "0s" }}
services = ["testing.v1.Echo"]

[backends.other]
eureka = {{ servers = [], app = "ECHO" }}
nacos = {{ servers = ["http://127.0.0.1:8848"], service = "s" }}
"#,
        toml_path(&testing_descriptors())
    );
    let path = write_config(&text);
    let errors = Snapshot::load(&path).unwrap_err().to_string();
    for (line, field, words) in [
        (
            6,
            "backends.echo.eureka.servers",
            "\"127.0.0.1:8761/eureka\" is not a URL; write e.g. \"http://127.0.0.1:8761/eureka\"",
        ),
        (6, "backends.echo.eureka.app", "\"\" is not a name"),
        (
            6,
            "backends.echo.eureka.refresh",
            "must be greater than zero",
        ),
        (
            10,
            "backends.other.eureka.servers",
            "list the Eureka servers",
        ),
        (
            10,
            "backends.other.eureka",
            "set one registry, not both nacos and eureka",
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
