//! No client can add Prometheus series: thousands of made-up methods, paths,
//! hosts, headers, preflights and backend error messages leave /metrics the
//! size it had after one request of each kind.
//!
//! Its own test binary, so its own process-wide registry: the series counted
//! are only the ones this test made.

use gateway_tests::running::RunningGateway;
use gateway_tests::{
    echo_server, http_client, spawn_backend, temp_dir, testing_descriptors, testing_pool, toml_path,
};

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
    let n = if i % 10 == 0 { 2000 } else { i % 64 };
    "A".repeat(n)
}

async fn send(gw: &RunningGateway, client: &reqwest::Client, kind: Kind, i: usize) {
    let p = pad(i);
    let req = match kind {
        Kind::Method => {
            let method = reqwest::Method::from_bytes(format!("HOSTILE{i}{p}").as_bytes()).unwrap();
            let path = if i % 2 == 0 {
                "/mb/echo/x".to_owned()
            } else {
                format!("/hostile-{i}")
            };
            client.request(method, gw.url(&path))
        }
        Kind::Path if i % 2 == 0 => client.get(gw.url(&format!("/mb/echo/hostile-{i}-{p}"))),
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
        Kind::Method if i % 2 == 0 => 405,
        Kind::Method => 404,
        Kind::Path if i % 2 == 0 => 200,
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
    let backend = spawn_backend(echo_server(&testing_pool())).await;
    let dir = temp_dir("metrics-bounds");
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

[cors]
allowed_origins = ["http://page.example"]
"#,
        descriptors = toml_path(&testing_descriptors()),
    );
    std::fs::write(&path, config).unwrap();
    let gw = std::sync::Arc::new(RunningGateway::start(&path).await);
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
    let methods = label_values(&after, "method");
    assert_eq!(
        methods,
        ["GET", "OPTIONS", "_OTHER"]
            .map(String::from)
            .into_iter()
            .collect(),
        "made-up methods are all `_OTHER`"
    );
    let routes = label_values(&after, "route");
    assert_eq!(
        routes,
        ["(none)", "/mb/echo/{string_field}", "/mb/fail"]
            .map(String::from)
            .into_iter()
            .collect(),
        "routes are the configured templates, or `(none)`"
    );
    assert_eq!(
        label_values(&after, "grpc_code"),
        ["Ok", "Unknown"].map(String::from).into_iter().collect(),
        "unknown gRPC codes are `Unknown`"
    );
}
