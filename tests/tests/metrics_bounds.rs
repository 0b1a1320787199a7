//! What /metrics may hold. No client can add series: thousands of made-up
//! methods, paths, hosts, headers, preflights and backend error messages
//! leave it the size it had after one request of each kind. And every
//! metric says what it counts in a HELP text.
//!
//! Its own test binary, so its own process-wide registry: the series seen
//! are only the ones these tests made. They take turns ([`EXCLUSIVE`]), since
//! each looks at the whole registry.

use std::collections::HashMap;

use gateway_tests::exposition::parse_families;
use gateway_tests::running::RunningGateway;
use gateway_tests::{
    echo_server, http_client, spawn_backend, temp_dir, testing_descriptors, testing_pool, toml_path,
};

/// Held by each test for its whole run.
static EXCLUSIVE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Routes with nothing in front, one needing a token, one rate-limited, and
/// CORS, so that every counter can be made to move.
async fn start(tag: &str) -> RunningGateway {
    // The issuer's secret comes from the environment.
    std::env::set_var("METRICS_BOUNDS_SECRET", "0123456789abcdef0123456789abcdef");
    let backend = spawn_backend(echo_server(&testing_pool())).await;
    let dir = temp_dir(tag);
    let path = dir.join("routes.toml");
    let config = format!(
        r#"[server]
descriptors = "{descriptors}"
watch = false
shutdown_delay = "0s"

[backends.echo]
endpoints = ["{backend}"]
services = ["testing.v1.Echo"]

[[routes]]
method = "GET"
path = "/mb/echo/{{string_field}}"
grpc = "testing.v1.Echo/Echo"

[[routes]]
method = "GET"
path = "/mb/fail"
grpc = "testing.v1.Echo/Fail"

[[routes]]
method = "GET"
path = "/mb/private"
grpc = "testing.v1.Echo/Meta"
auth = "required"

[[routes]]
method = "GET"
path = "/mb/limited"
grpc = "testing.v1.Echo/Meta"
rate_limit = ["tight"]

[auth.issuers.mb]
issuer = "mb"
algorithms = ["HS256"]
hmac_secret_env = "METRICS_BOUNDS_SECRET"

[rate_limits.policies.tight]
key = "route"
rate = 1
per = "1m"
burst = 1

[cors]
allowed_origins = ["http://page.example"]
"#,
        descriptors = toml_path(&testing_descriptors()),
    );
    std::fs::write(&path, config).unwrap();
    RunningGateway::start(&path).await
}

/// One of the kinds of request a hostile client varies; `i` makes each
/// value distinct.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// A made-up method on a configured path (405) or on no route (404).
    Method,
    /// Distinct paths under a route's variable (200) and outside every route (404).
    Path,
    Host,
    /// Made-up header names and values, and hostile values in standard ones.
    Header,
    /// A preflight asking for a made-up method on a made-up path.
    Preflight,
    /// A backend error with an unknown gRPC code and a distinct message.
    BackendError,
}

const KINDS: [Kind; 6] = [
    Kind::Method,
    Kind::Path,
    Kind::Host,
    Kind::Header,
    Kind::Preflight,
    Kind::BackendError,
];

/// Mostly short values, every tenth one 2 KB: the length that grew /metrics
/// by 40 MB per thousand methods when methods were labels.
fn pad(i: usize) -> String {
    let n = if i.is_multiple_of(10) { 2000 } else { i % 64 };
    "A".repeat(n)
}

async fn send(gw: &RunningGateway, client: &reqwest::Client, kind: Kind, i: usize) {
    let p = pad(i);
    let req = match kind {
        Kind::Method => {
            let method = reqwest::Method::from_bytes(format!("HOSTILE{i}{p}").as_bytes()).unwrap();
            let path = if i.is_multiple_of(2) {
                "/mb/echo/x".to_owned()
            } else {
                format!("/hostile-{i}")
            };
            client.request(method, gw.url(&path))
        }
        Kind::Path if i.is_multiple_of(2) => {
            client.get(gw.url(&format!("/mb/echo/hostile-{i}-{p}")))
        }
        Kind::Path => client.get(gw.url(&format!("/hostile-{i}/{p}"))),
        Kind::Host => client
            .get(gw.url("/mb/echo/x"))
            .header("host", format!("hostile-{i}.{p}.example")),
        Kind::Header => client
            .get(gw.url("/mb/echo/x"))
            .header(format!("x-hostile-{i}-{p}"), format!("hostile {i} {p}"))
            .header(format!("grpc-metadata-hostile-{i}"), "hostile")
            .header("user-agent", format!("hostile/{i} {p}"))
            .header("referer", format!("http://hostile-{i}.example/{p}")),
        Kind::Preflight => client
            .request(
                reqwest::Method::OPTIONS,
                gw.url(&format!("/hostile-{i}/{p}")),
            )
            .header("origin", "http://page.example")
            .header("access-control-request-method", format!("HOSTILE{i}{p}")),
        Kind::BackendError => client.get(gw.url(&format!(
            "/mb/fail?code={}&message=hostile-{i}-{p}",
            100 + i
        ))),
    };
    let r = req.send().await.unwrap();
    let want = match kind {
        Kind::Method if i.is_multiple_of(2) => 405,
        Kind::Method => 404,
        Kind::Path if i.is_multiple_of(2) => 200,
        Kind::Path => 404,
        Kind::Host | Kind::Header => 200,
        Kind::Preflight => 403,
        Kind::BackendError => 500,
    };
    assert_eq!(r.status(), want, "{kind:?} {i}");
}

/// The exposition text, and how many samples (series lines) it has.
async fn scrape(gw: &RunningGateway) -> (String, usize) {
    let resp = http_client()
        .get(gw.admin_url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    let samples = text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count();
    (text, samples)
}

/// The distinct values of `label` in the exposition.
fn label_values(text: &str, label: &str) -> std::collections::BTreeSet<String> {
    // After `{` or `,`: `method="` is also the end of `grpc_method="`.
    let keys = [format!("{{{label}=\""), format!(",{label}=\"")];
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let start = keys
                .iter()
                .find_map(|k| Some(l.find(k.as_str())? + k.len()))?;
            let len = l[start..].find('"')?;
            Some(l[start..start + len].to_owned())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_methods_paths_hosts_and_headers_add_no_metric_series() {
    let _turn = EXCLUSIVE.lock().await;
    let gw = std::sync::Arc::new(start("metrics-bounds").await);
    let client = http_client();

    // Warm-up: every outcome the hostile requests can have, once each, so
    // every series they may legitimately touch exists before measuring.
    for kind in KINDS {
        for i in 0..2 {
            send(&gw, &client, kind, i).await;
        }
    }
    let (before, series_before) = scrape(&gw).await;

    // Thousands of distinct values, a few requests at a time.
    const PER_KIND: usize = 600;
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..4 {
        let (gw, client) = (gw.clone(), client.clone());
        tasks.spawn(async move {
            for kind in KINDS {
                for i in (2 + worker..PER_KIND).step_by(4) {
                    send(&gw, &client, kind, i).await;
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let (after, series_after) = scrape(&gw).await;

    assert!(
        !after.to_ascii_lowercase().contains("hostile"),
        "a client's text became a label value:\n{}",
        after
            .lines()
            .filter(|l| l.to_ascii_lowercase().contains("hostile"))
            .take(5)
            .map(|l| &l[..l.len().min(200)])
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        series_after, series_before,
        "the number of series changed (was {series_before})"
    );
    // Only the values grow (a counter's digits, a histogram's sums).
    assert!(
        after.len() < before.len() + 2048,
        "/metrics grew from {} to {} bytes",
        before.len(),
        after.len()
    );
    // Label values from fixed sets and the configuration only (the other
    // test may have run first and counted the other routes).
    let within = |label: &str, allowed: &[&str]| {
        let values = label_values(&after, label);
        assert!(
            values.iter().all(|v| allowed.contains(&v.as_str())),
            "{label}: {values:?} not all in {allowed:?}"
        );
    };
    within("method", &["GET", "OPTIONS", "_OTHER"]);
    within(
        "route",
        &[
            "(none)",
            "/mb/echo/{string_field}",
            "/mb/fail",
            "/mb/private",
            "/mb/limited",
        ],
    );
    within("code", &["2xx", "4xx", "5xx"]);
    within("grpc_code", &["Ok", "Unknown", "NotFound"]);
}

/// A HELP text someone wrote for the metric, not a stand-in: a few words of
/// its own (no two metrics share one) that are not just its name.
fn placeholder_help(name: &str, help: &str, seen: &mut HashMap<String, String>) -> Option<String> {
    let words = help.split_whitespace().count();
    let lower = help.to_ascii_lowercase();
    let why = if help.is_empty() {
        "no HELP".to_owned()
    } else if words < 4 {
        format!("HELP \"{help}\" is too short to say anything")
    } else if ["todo", "fixme", "placeholder", "xxx"]
        .iter()
        .any(|w| lower.split(|c: char| !c.is_alphanumeric()).any(|x| x == *w))
    {
        format!("HELP \"{help}\" is a placeholder")
    } else if lower.replace(' ', "_").contains(name) {
        format!("HELP \"{help}\" only repeats the name")
    } else if let Some(other) = seen.insert(help.to_owned(), name.to_owned()) {
        format!("HELP \"{help}\" is also {other}'s")
    } else {
        return None;
    };
    Some(format!("{name}: {why}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_has_a_real_help_text() {
    let _turn = EXCLUSIVE.lock().await;
    let gw = start("metrics-help").await;
    let client = http_client();
    // Make every lazily registered series appear: a success, a backend
    // error, a refusal by auth and by a rate limit, a preflight, a reload.
    for path in [
        "/mb/echo/x",
        "/mb/fail?code=5",
        "/mb/private",
        "/mb/limited",
        "/mb/limited",
    ] {
        client.get(gw.url(path)).send().await.unwrap();
    }
    client
        .request(reqwest::Method::OPTIONS, gw.url("/mb/private"))
        .header("origin", "http://page.example")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    let reload = client
        .post(gw.admin_url("/admin/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(reload.status(), 200);

    let families = parse_families(&scrape(&gw).await.0);
    let names: Vec<&str> = families.iter().map(|f| f.0.as_str()).collect();
    // Counters are named without `_total` by the parser.
    for want in [
        "gateway_http_requests",
        "gateway_http_request_duration_seconds",
        "gateway_http_requests_in_flight",
        "gateway_upstream_requests",
        "gateway_upstream_request_duration_seconds",
        "gateway_auth_failures",
        "gateway_rate_limited",
        "gateway_cors_preflights",
        "gateway_config_reloads",
        "gateway_config_version",
        "gateway_build_info",
        "gateway_backend_endpoints",
        "gateway_backend_requests",
        "gateway_backend_deadline_exceeded",
        "gateway_circuit_breaker_state",
        "gateway_config_reload_failures",
        "process_cpu_seconds",
        "process_resident_memory_bytes",
        "process_start_time_seconds",
    ] {
        assert!(names.contains(&want), "no {want} in {names:?}");
    }
    let mut seen = HashMap::new();
    let bad: Vec<String> = families
        .iter()
        .filter_map(|(name, _, help)| placeholder_help(name, help, &mut seen))
        .collect();
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}
