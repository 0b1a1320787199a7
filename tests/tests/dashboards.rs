//! The Grafana dashboard (deploy/grafana/gateway.json) and the Prometheus
//! rules (deploy/prometheus/rules.yaml) against the gateway they watch:
//! every metric name and label they use must be one a running gateway
//! exports (read with the Prometheus project's own parser), every query
//! must parse (`promtool check rules`), and the alerts fire on the series
//! that should raise them (`promtool test rules`). A renamed metric fails
//! here instead of leaving a panel empty in production.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use gateway_tests::exposition::parse_exposition;
use gateway_tests::running::RunningGateway;
use gateway_tests::{
    echo_server, repo_root, spawn_backend, temp_dir, testing_descriptors, testing_pool, toml_path,
};
use serde_json::Value;

/// Labels Prometheus adds at scrape time, and the histogram bucket label.
const SCRAPE_LABELS: &[&str] = &["job", "instance", "le"];

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool is missing ({e}): apt-get install prometheus (.ci/run installs it)")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

/// The `expr` of every rule in a rules file (read by PyYAML, which
/// kubernetes-validate brings), and the names the recording rules define.
fn rule_exprs(path: &std::path::Path) -> (Vec<String>, BTreeSet<String>) {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys, json, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)",
        ])
        .arg(path)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "PyYAML: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut exprs = Vec::new();
    let mut recorded = BTreeSet::new();
    for group in doc["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            exprs.push(rule["expr"].as_str().expect("expr").to_owned());
            if let Some(r) = rule["record"].as_str() {
                recorded.insert(r.to_owned());
            }
        }
    }
    (exprs, recorded)
}

/// Every panel query of the dashboard, including those inside rows.
fn dashboard_exprs(dashboard: &Value) -> Vec<String> {
    fn walk(panels: &Value, out: &mut Vec<String>) {
        for p in panels.as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                out.push(t["expr"].as_str().expect("target expr").to_owned());
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The metric names an expression reads, and the label names it uses
/// (in selectors and in `by`/`on`/`without`/`ignoring` lists).
fn names_and_labels(expr: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut metrics = BTreeSet::new();
    let mut labels = BTreeSet::new();
    // Selector contents: `{a="x", b=~"y"}`; string values are skipped.
    let mut rest = expr;
    while let Some(open) = rest.find('{') {
        let close = rest[open..]
            .find('}')
            .map(|c| open + c)
            .expect("closing brace");
        let inner = &rest[open + 1..close];
        let mut in_string = false;
        let mut word = String::new();
        for c in inner.chars() {
            match c {
                '"' => in_string = !in_string,
                c if !in_string && is_ident(c) => word.push(c),
                _ => {
                    if !in_string && !word.is_empty() && matches!(c, '=' | '!' | '~' | ' ') {
                        labels.insert(std::mem::take(&mut word));
                    }
                    word.clear();
                }
            }
        }
        rest = &rest[close + 1..];
    }
    // Grouping lists.
    for kw in ["by", "on", "without", "ignoring"] {
        let mut rest = expr;
        while let Some(at) = rest.find(&format!("{kw} (")) {
            let before = rest[..at].chars().last();
            let after = &rest[at + kw.len() + 2..];
            let end = after.find(')').expect("closing paren");
            if before.is_none_or(|c| !is_ident(c)) {
                for l in after[..end].split(',') {
                    labels.insert(l.trim().to_owned());
                }
            }
            rest = &after[end..];
        }
    }
    // Metric names: identifiers of the gateway's and the process' families
    // (functions and keywords never start with these prefixes), outside
    // strings.
    let mut in_string = false;
    let mut word = String::new();
    for c in expr.chars().chain([' ']) {
        if c == '"' {
            in_string = !in_string;
        }
        if !in_string && is_ident(c) {
            word.push(c);
        } else {
            if word.starts_with("gateway_") || word.starts_with("process_") || word.contains(':') {
                metrics.insert(std::mem::take(&mut word));
            }
            word.clear();
        }
    }
    labels.retain(|l| !l.is_empty());
    (metrics, labels)
}

#[test]
fn names_and_labels_are_found_in_promql() {
    let (m, l) = names_and_labels(
        r#"sum by (le, route) (rate(gateway_x_bucket{job=~"$job",code="5xx"}[5m])) / on (route) gateway:y:rate5m"#,
    );
    assert_eq!(
        m,
        BTreeSet::from(["gateway_x_bucket".to_owned(), "gateway:y:rate5m".to_owned()])
    );
    assert_eq!(
        l,
        BTreeSet::from(["code", "job", "le", "route"].map(str::to_owned))
    );
}

/// A gateway with every feature the dashboard watches turned on, driven
/// until each family has a sample: TLS, a JWT issuer whose JWKS is
/// unreachable, a local rate limit and one shared through a Redis that is
/// not there, CORS, a Consul backend whose agent is down, and a reload.
async fn scraped_gateway() -> BTreeMap<String, BTreeSet<String>> {
    let backend = spawn_backend(echo_server(&testing_pool())).await;
    let dir = temp_dir("dashboards");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(dir.join("tls.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.join("tls.key"), cert.signing_key.serialize_pem()).unwrap();
    let config = format!(
        r#"[server]
listen = "127.0.0.1:0"
descriptors = "{descriptors}"

[server.tls]
certificates = [{{ cert = "tls.pem", key = "tls.key" }}]

[cors]
allowed_origins = ["https://app.example"]

[auth.issuers.down]
issuer = "https://issuer.example"
algorithms = ["RS256"]
jwks_url = "http://127.0.0.1:1/jwks"
jwks_timeout = "200ms"

[rate_limits.policies.tight]
key = "route"
rate = 1
per = "1h"
burst = 1

[rate_limits.policies.shared]
key = "ip"
rate = 1000
store = "redis"

[redis]
url = "redis://127.0.0.1:1/0"
timeout = "20ms"

[backends.echo]
endpoints = ["{backend}"]
services = ["testing.v1.Echo"]

[backends.registry]
consul = {{ service = "elsewhere", address = "http://127.0.0.1:1" }}

[[routes]]
method = "GET"
path = "/v1/echo"
grpc = "testing.v1.Echo/Echo"
rate_limit = ["tight"]

[[routes]]
method = "GET"
path = "/v1/shared"
grpc = "testing.v1.Echo/Echo"
rate_limit = ["shared"]

[[routes]]
method = "GET"
path = "/v1/private"
grpc = "testing.v1.Echo/Echo"
auth = "required"
"#,
        descriptors = toml_path(&testing_descriptors()),
    );
    let file = dir.join("routes.toml");
    std::fs::write(&file, config).unwrap();
    let gw = RunningGateway::start(&file).await;
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let rest = |p: &str| format!("https://{}{p}", gw.rest);
    for _ in 0..2 {
        client.get(rest("/v1/echo")).send().await.unwrap();
    }
    client.get(rest("/v1/private")).send().await.unwrap();
    // Redis is not there: the decision falls back to the local limiter.
    client.get(rest("/v1/shared")).send().await.unwrap();
    client
        .request(reqwest::Method::OPTIONS, rest("/v1/echo"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    client
        .post(gw.admin_url("/admin/reload"))
        .send()
        .await
        .unwrap();

    // JWKS and discovery failures come from background tasks.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = client
            .get(gw.admin_url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let mut families: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for s in parse_exposition(&text) {
            families
                .entry(s.name.clone())
                .or_default()
                .extend(s.labels.keys().cloned());
        }
        let waiting: Vec<&str> = [
            "gateway_jwks_fetch_failures_total",
            "gateway_discovery_errors_total",
            "gateway_rate_limited_total",
            "gateway_auth_failures_total",
            "gateway_ratelimit_store_fallbacks_total",
        ]
        .into_iter()
        .filter(|f| !families.contains_key(*f))
        .collect();
        if waiting.is_empty() {
            return families;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no samples of {waiting:?} in /metrics:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_and_label_of_the_dashboard_and_rules_is_exported() {
    let rules_path = repo_root().join("deploy/prometheus/rules.yaml");
    let (rules, recorded) = rule_exprs(&rules_path);
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("deploy/grafana/gateway.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let panels = dashboard_exprs(&dashboard);
    assert!(panels.len() >= 20, "only {} panel queries", panels.len());

    let families = scraped_gateway().await;
    let mut problems = Vec::new();
    for (source, expr) in rules
        .iter()
        .map(|e| ("rules.yaml", e))
        .chain(panels.iter().map(|e| ("gateway.json", e)))
    {
        let (metrics, labels) = names_and_labels(expr);
        let mut known: BTreeSet<String> = SCRAPE_LABELS.iter().map(|l| (*l).to_owned()).collect();
        for m in &metrics {
            if recorded.contains(m) {
                // A recorded series keeps the labels of its `by` list,
                // checked where it is defined.
                known.insert("route".to_owned());
                continue;
            }
            match families.get(m) {
                Some(l) => known.extend(l.iter().cloned()),
                None => problems.push(format!("{source}: {m} is not exported, in {expr}")),
            }
        }
        for l in labels.difference(&known) {
            problems.push(format!(
                "{source}: label {l} is on none of {metrics:?}, in {expr}"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_rules_parse_and_their_alerts_fire_when_they_should() {
    let dir = repo_root().join("deploy/prometheus");
    let checked = promtool(&["check", "rules", dir.join("rules.yaml").to_str().unwrap()]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = promtool(&[
        "test",
        "rules",
        dir.join("rules_test.yaml").to_str().unwrap(),
    ]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

#[test]
fn every_dashboard_query_parses() {
    // promtool checks PromQL in rule files: the panel queries go into one,
    // with Grafana's variables given values.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("deploy/grafana/gateway.json")).unwrap(),
    )
    .unwrap();
    let mut file = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in dashboard_exprs(&dashboard).iter().enumerate() {
        let expr = expr.replace("$__rate_interval", "5m").replace("$job", ".*");
        file.push_str(&format!(
            "      - record: panel_{i}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    let path = temp_dir("dashboard-rules").join("panels.yaml");
    std::fs::write(&path, file).unwrap();
    promtool(&["check", "rules", path.to_str().unwrap()]);
}
