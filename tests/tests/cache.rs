//! The response cache of GET routes end to end, against a real backend that
//! counts its calls: hits after a miss, equivalent query strings in one
//! entry, `vary` splitting it (credentials included, which authentication
//! takes out of the request), ETag and If-None-Match, Cache-Control, a
//! client's no-cache, expiry, coalesced misses, the byte bound and a
//! reload emptying the cache.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use gateway::snapshot::Snapshot;
use gateway_tests::edge::{counting_backend, edge_config};
use gateway_tests::{render_config, testing_descriptors, write_config, TestGateway};

/// A counter or gauge of the process's metrics with these labels (0 when
/// the series is not there yet).
fn metric(name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = gateway::telemetry::metrics::handle().render();
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| {
            let rest = &l[name.len()..];
            rest.starts_with('{') || rest.starts_with(' ')
        })
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn route(method: &str, path: &str, grpc: &str, extra: &str) -> String {
    format!(
        "[[routes]]\nmethod = \"{method}\"\npath = \"{path}\"\ngrpc = \"testing.v1.Echo/{grpc}\"\n{extra}\n"
    )
}

async fn start(
    sections: &str,
    routes: &str,
) -> (TestGateway, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    gateway::telemetry::metrics::handle();
    let (backend, calls) = counting_backend().await;
    let gw = TestGateway::start_with(
        &edge_config(sections, routes),
        &backend,
        &testing_descriptors(),
    )
    .await;
    (gw, calls)
}

#[tokio::test]
async fn a_second_get_is_served_from_the_cache() {
    let (gw, calls) = start(
        "",
        &route(
            "GET",
            "/v1/hit/{string_field}",
            "Echo",
            "cache = { ttl = \"60s\" }",
        ),
    )
    .await;
    let first = gw.get("/v1/hit/a").await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.json["stringField"], "a");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let etag = first.header("etag");
    assert!(etag.starts_with('"') && etag.len() > 10, "{etag}");
    assert_eq!(first.header("cache-control"), "public, max-age=60");
    assert_eq!(first.header("age"), "", "a fresh answer has no Age");

    let second = gw.get("/v1/hit/a").await;
    assert_eq!(second.status, 200);
    assert_eq!(second.text, first.text);
    assert_eq!(second.header("etag"), etag);
    assert_eq!(second.header("content-type"), "application/json");
    assert_eq!(second.header("age"), "0");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the hit called the backend"
    );

    // Another message is another entry.
    assert_eq!(gw.get("/v1/hit/b").await.json["stringField"], "b");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let labels = [("route", "/v1/hit/{string_field}")];
    assert_eq!(metric("gateway_cache_hits_total", &labels), 1.0);
    assert_eq!(metric("gateway_cache_misses_total", &labels), 2.0);
}

#[tokio::test]
async fn equivalent_query_strings_share_an_entry() {
    let (gw, calls) = start(
        "",
        &route("GET", "/v1/query", "Echo", "cache = { ttl = \"60s\" }"),
    )
    .await;
    let a = gw.get("/v1/query?int32Field=1&stringField=x").await;
    assert_eq!(a.status, 200, "{}", a.text);
    for same in [
        "/v1/query?stringField=x&int32Field=1",
        "/v1/query?stringField=x&int32Field=01",
        "/v1/query?string_field=x&int32_field=1",
    ] {
        let r = gw.get(same).await;
        assert_eq!(r.text, a.text, "{same}");
        assert_eq!(r.header("age"), "0", "{same} was not a hit");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    gw.get("/v1/query?int32Field=2&stringField=x").await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn vary_headers_split_the_key() {
    let (gw, calls) = start(
        "",
        &route(
            "GET",
            "/v1/vary",
            "Meta",
            "forward_headers = [\"x-tenant\"]\ncache = { ttl = \"60s\", vary = [\"X-Tenant\"] }",
        ),
    )
    .await;
    let get = |tenant: &'static str| {
        let gw = &gw;
        async move {
            gw.request("GET", "/v1/vary", &[("x-tenant", tenant)], None)
                .await
        }
    };
    let a = get("a").await;
    assert_eq!(a.json["metadata"]["x-tenant"], "a", "{}", a.text);
    assert_eq!(
        a.header("vary"),
        "x-tenant",
        "caches downstream key on it too"
    );
    assert_eq!(get("a").await.text, a.text);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let b = get("b").await;
    assert_eq!(b.json["metadata"]["x-tenant"], "b", "{}", b.text);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // Without the header: its own entry too.
    gw.get("/v1/vary").await;
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn if_none_match_gets_a_304_with_the_etag() {
    let (gw, calls) = start(
        "",
        &route("GET", "/v1/etag", "Echo", "cache = { ttl = \"60s\" }"),
    )
    .await;
    let first = gw.get("/v1/etag?stringField=x").await;
    let etag = first.header("etag");
    let weak = format!("W/{etag}");
    let list = format!("\"other\", {etag}");
    for value in [etag.as_str(), weak.as_str(), list.as_str(), "*"] {
        let r = gw
            .request(
                "GET",
                "/v1/etag?stringField=x",
                &[("if-none-match", value)],
                None,
            )
            .await;
        assert_eq!(r.status, 304, "If-None-Match: {value}");
        assert_eq!(r.text, "", "a 304 has no body");
        assert_eq!(r.header("etag"), etag);
        assert_eq!(r.header("cache-control"), "public, max-age=60");
    }
    let r = gw
        .request(
            "GET",
            "/v1/etag?stringField=x",
            &[("if-none-match", "\"other\"")],
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text, first.text);
    // A refetch (the client's no-cache) is validated too.
    let r = gw
        .request(
            "GET",
            "/v1/etag?stringField=x",
            &[
                ("if-none-match", etag.as_str()),
                ("cache-control", "no-cache"),
            ],
            None,
        )
        .await;
    assert_eq!(r.status, 304);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_compressed_answer_has_a_weak_etag_that_still_validates() {
    let (gw, calls) = start(
        "",
        &route("GET", "/v1/gzip", "Echo", "cache = { ttl = \"60s\" }"),
    )
    .await;
    let path = format!("/v1/gzip?stringField={}", "x".repeat(1500));
    let plain = gw.get(&path).await;
    let strong = plain.header("etag");
    let gzip = gw
        .request("GET", &path, &[("accept-encoding", "gzip")], None)
        .await;
    assert_eq!(gzip.header("content-encoding"), "gzip");
    assert_eq!(gzip.header("etag"), format!("W/{strong}"));
    let again = gw
        .request(
            "GET",
            &path,
            &[
                ("accept-encoding", "gzip"),
                ("if-none-match", &gzip.header("etag")),
            ],
            None,
        )
        .await;
    assert_eq!(again.status, 304);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn routes_that_check_credentials_are_private_and_keyed_per_caller() {
    let digest = |key: &str| {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key.as_bytes());
        let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        format!("sha256:{hex}")
    };
    let sections = format!(
        "[consumers.a]\nkeys = [\"{}\"]\n\n[consumers.b]\nkeys = [\"{}\"]\n",
        digest("key-a"),
        digest("key-b")
    );
    let routes = route(
        "GET",
        "/v1/private",
        "Meta",
        "auth = \"required\"\ncredentials = [\"api_key\"]\nrate_limit = []\ncache = { ttl = \"30s\", vary = [\"x-api-key\"] }",
    );
    let (gw, calls) = start(&sections, &routes).await;
    let get = |key: &'static str| {
        let gw = &gw;
        async move {
            gw.request("GET", "/v1/private", &[("x-api-key", key)], None)
                .await
        }
    };
    let a = get("key-a").await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.header("cache-control"), "private, max-age=30");
    assert_eq!(a.json["metadata"]["x-consumer"], "a", "{}", a.text);
    assert_eq!(get("key-a").await.header("age"), "0");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // The key is taken out before the call; the cache key still has it.
    let b = get("key-b").await;
    assert_eq!(b.json["metadata"]["x-consumer"], "b", "{}", b.text);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // A refused caller is refused, not served from the cache.
    assert_eq!(get("key-c").await.status, 401);
    assert_eq!(gw.get("/v1/private").await.status, 401);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_clients_no_cache_refetches_only_where_the_route_allows_it() {
    let routes = format!(
        "{}{}",
        route(
            "GET",
            "/v1/nocache/yes",
            "Echo",
            "cache = { ttl = \"60s\" }"
        ),
        route(
            "GET",
            "/v1/nocache/no",
            "EchoAgain",
            "cache = { ttl = \"60s\", allow_no_cache = false }"
        )
    );
    let (gw, calls) = start("", &routes).await;
    gw.get("/v1/nocache/yes").await;
    for (name, value) in [
        ("cache-control", "no-cache"),
        ("cache-control", "max-age=0"),
        ("pragma", "no-cache"),
    ] {
        let before = calls.load(Ordering::SeqCst);
        let r = gw
            .request("GET", "/v1/nocache/yes", &[(name, value)], None)
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("age"),
            "",
            "{name}: {value} was served from the cache"
        );
        assert_eq!(calls.load(Ordering::SeqCst), before + 1, "{name}: {value}");
    }
    // The refetch refreshed the entry: the next plain request is a hit.
    let before = calls.load(Ordering::SeqCst);
    assert_eq!(gw.get("/v1/nocache/yes").await.header("age"), "0");
    assert_eq!(calls.load(Ordering::SeqCst), before);

    gw.get("/v1/nocache/no").await;
    let before = calls.load(Ordering::SeqCst);
    let r = gw
        .request(
            "GET",
            "/v1/nocache/no",
            &[("cache-control", "no-cache")],
            None,
        )
        .await;
    assert_eq!(r.header("age"), "0");
    assert_eq!(calls.load(Ordering::SeqCst), before);
}

#[tokio::test]
async fn entries_expire_after_their_ttl() {
    let (gw, calls) = start(
        "",
        &route(
            "GET",
            "/v1/ttl",
            "Echo",
            "cache = { ttl = \"300ms\", max_age = \"5s\" }",
        ),
    )
    .await;
    let started = Instant::now();
    let first = gw.get("/v1/ttl").await;
    assert_eq!(first.header("cache-control"), "public, max-age=5");
    gw.get("/v1/ttl").await;
    let cached_until = started.elapsed();
    if cached_until < Duration::from_millis(300) {
        assert_eq!(calls.load(Ordering::SeqCst), 1, "a hit within the ttl");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while calls.load(Ordering::SeqCst) < 2 {
        assert!(Instant::now() < deadline, "the entry never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
        gw.get("/v1/ttl").await;
    }
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "expired after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn concurrent_misses_make_one_backend_call() {
    let (gw, calls) = start(
        "",
        &route("GET", "/v1/slow", "Sleep", "cache = { ttl = \"60s\" }"),
    )
    .await;
    let gw = std::sync::Arc::new(gw);
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let gw = gw.clone();
        tasks.push(tokio::spawn(
            async move { gw.get("/v1/slow?millis=500").await },
        ));
    }
    let mut etags = std::collections::BTreeSet::new();
    for t in tasks {
        let r = t.await.expect("request task");
        assert_eq!(r.status, 200, "{}", r.text);
        etags.insert(r.header("etag"));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "100 misses of one key");
    assert_eq!(etags.len(), 1, "{etags:?}");
}

#[tokio::test]
async fn a_waiter_gives_up_at_its_own_deadline() {
    let (gw, calls) = start(
        "",
        &route("GET", "/v1/wait", "Sleep", "cache = { ttl = \"60s\" }"),
    )
    .await;
    let gw = std::sync::Arc::new(gw);
    let leader = {
        let gw = gw.clone();
        tokio::spawn(async move { gw.get("/v1/wait?millis=1500").await })
    };
    // The leader's call is in flight once the backend counted it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while calls.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the leader never called");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    let waiter = gw
        .request(
            "GET",
            "/v1/wait?millis=1500",
            &[("x-request-timeout", "200ms")],
            None,
        )
        .await;
    assert_eq!(waiter.status, 504, "{}", waiter.text);
    assert!(
        started.elapsed() < Duration::from_millis(1200),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(leader.await.unwrap().status, 200);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_leader_cut_short_by_its_own_deadline_does_not_fail_its_waiters() {
    let (gw, calls) = start(
        "",
        &route("GET", "/v1/cut", "Sleep", "cache = { ttl = \"60s\" }"),
    )
    .await;
    let gw = std::sync::Arc::new(gw);
    let leader = {
        let gw = gw.clone();
        tokio::spawn(async move {
            gw.request(
                "GET",
                "/v1/cut?millis=600",
                &[("x-request-timeout", "300ms")],
                None,
            )
            .await
        })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while calls.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the leader never called");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let waiter = gw.get("/v1/cut?millis=600").await;
    assert_eq!(leader.await.unwrap().status, 504);
    assert_eq!(waiter.status, 200, "{}", waiter.text);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the waiter made its own call"
    );
}

#[tokio::test]
async fn the_cache_stays_under_its_bound_and_counts_evictions() {
    gateway::telemetry::metrics::handle();
    let (backend, calls) = counting_backend().await;
    let text = render_config(
        &edge_config(
            "[cache]\nmax_bytes = 16384\n",
            &route(
                "GET",
                "/v1/bound/{string_field}",
                "Echo",
                "cache = { ttl = \"60s\" }",
            ),
        ),
        &backend,
        &testing_descriptors(),
    );
    let path = write_config(&text);
    let snapshot = Snapshot::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let store = snapshot.cache.clone().expect("a route caches");
    let gw = TestGateway::serve(snapshot, &backend, path).await;
    let evicted = metric("gateway_cache_evictions_total", &[]);
    let filler = "x".repeat(400);
    for i in 0..60 {
        let r = gw.get(&format!("/v1/bound/{i}-{filler}")).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 60);
    let size = store.weighted_size();
    assert!(size <= 16384, "{size} bytes held");
    assert!(size > 4096, "{size} bytes held: nothing kept?");
    assert!(
        metric("gateway_cache_evictions_total", &[]) > evicted,
        "no eviction counted"
    );
}

#[tokio::test]
async fn a_reload_starts_with_an_empty_cache() {
    let (backend, calls) = counting_backend().await;
    let text = render_config(
        &format!(
            "[server]\ndescriptors = \"{{descriptors}}\"\nwatch = false\n\n[backends.echo]\nendpoints = [\"{{backend}}\"]\nservices = [\"testing.v1.Echo\"]\n\n{}",
            route("GET", "/v1/reload", "Echo", "cache = { ttl = \"60s\" }")
        ),
        &backend,
        &testing_descriptors(),
    );
    let path = write_config(&text);
    let gw = gateway_tests::running::RunningGateway::start(&path).await;
    let client = gateway_tests::http_client();
    let get = || client.get(gw.url("/v1/reload")).send();
    assert_eq!(get().await.unwrap().status(), 200);
    assert_eq!(get().await.unwrap().status(), 200);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let entries = || async {
        let text = gw.metrics_text().await;
        text.lines()
            .find_map(|l| l.strip_prefix("gateway_cache_entries "))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| panic!("no gateway_cache_entries in\n{text}"))
    };
    assert_eq!(entries().await, "1");
    let routes: serde_json::Value = client
        .get(gw.admin_url("/admin/routes"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let cached = &routes["routes"][0]["cache"];
    assert_eq!(cached["ttl_ms"], 60000, "{routes}");
    assert_eq!(cached["cache_control"], "public, max-age=60", "{routes}");
    std::fs::write(&path, format!("{text}\n# touched\n")).unwrap();
    let reload = client
        .post(gw.admin_url("/admin/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(reload.status(), 200, "{:?}", reload.text().await);
    assert_eq!(entries().await, "0", "the reload's store is a new one");
    assert_eq!(get().await.unwrap().status(), 200);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the new snapshot's cache is empty"
    );
    assert_eq!(entries().await, "1", "the new store's own entry");
    assert_eq!(get().await.unwrap().status(), 200);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[test]
fn cache_on_a_route_that_is_not_a_unary_get_is_refused_naming_the_key() {
    let routes = format!(
        "{}{}",
        route(
            "POST",
            "/v1/post",
            "Echo",
            "body = \"*\"\ncache = { ttl = \"1s\" }"
        ),
        route(
            "GET",
            "/v1/get",
            "Echo",
            "cache = { ttl = \"0s\", vary = [\"bad header\"] }"
        )
    );
    let text = render_config(
        &edge_config("", &routes),
        "127.0.0.1:1",
        &testing_descriptors(),
    );
    let path = write_config(&text);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in = rt.enter();
    let errors = Snapshot::load(&path).unwrap_err().to_string();
    assert!(
        errors.contains(
            "routes[0].cache: only GET routes of unary methods are cached; this is POST /v1/post"
        ),
        "{errors}"
    );
    assert!(
        errors.contains("routes[1].cache.ttl: must be greater than zero"),
        "{errors}"
    );
    assert!(
        errors.contains("routes[1].cache.vary[0]: \"bad header\" is not a header name"),
        "{errors}"
    );
    // Each names its line in routes.toml.
    let line = text
        .lines()
        .position(|l| l.contains("ttl = \"1s\""))
        .unwrap()
        + 1;
    assert!(
        errors.contains(&format!("routes.toml:{line}: routes[0].cache")),
        "{errors}"
    );
}
