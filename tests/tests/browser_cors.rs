//! CORS as a real browser sees it: headless Chromium loads a page from one
//! loopback origin that calls the gateway on another with `fetch` (a JSON
//! POST with a custom header, so the browser sends a preflight), and a page
//! from a third origin, which the gateway does not allow, tries the same.
//! The pages post what the browser allowed and refused back to their server.
//!
//! Chromium comes from Debian (`.ci/run` installs it; see
//! `gateway_tests::browser` for what happens when it is missing).

use std::sync::atomic::Ordering;
use std::time::Duration;

use gateway_tests::browser::{self, chromium};
use gateway_tests::edge::{counting_backend, edge_config, serve_pages, Pages};
use gateway_tests::{testing_descriptors, TestGateway};

const SCRIPT: &str = r#"
async function attempt(name, url, opts) {
  try {
    const r = await fetch(url, opts);
    const body = await r.text();
    return {name, ok: true, status: r.status, body, ratelimit: r.headers.get("ratelimit")};
  } catch (e) {
    return {name, ok: false, error: String(e)};
  }
}
async function run(calls) {
  const results = [];
  for (const [name, url, opts] of calls) results.push(await attempt(name, url, opts));
  await fetch("/report", {method: "POST", body: JSON.stringify(results)});
  document.body.textContent = "done";
}
"#;

fn page(gateway: &str, calls: &str, iframe: Option<&str>) -> String {
    let frame = iframe
        .map(|src| format!("<iframe src=\"{src}\"></iframe>"))
        .unwrap_or_default();
    format!(
        "<!doctype html><html><body>running{frame}<script>const gw = \"{gateway}\";{SCRIPT}run({calls});</script></body></html>"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_calls_across_origins_only_where_cors_allows() {
    let Some(browser) = chromium() else {
        eprintln!("SKIPPED: GATEWAY_TESTS_SKIP_BROWSER=1");
        return;
    };

    // The app's origin and an origin the gateway does not know.
    let app = Pages::default();
    let app_base = serve_pages(app.clone()).await;
    let evil = Pages::default();
    let evil_base = serve_pages(evil.clone()).await;

    let (backend, calls) = counting_backend().await;
    let sections = format!(
        r#"[cors]
allowed_origins = ["{app_base}"]
allowed_headers = ["content-type", "x-custom"]

[rate_limits]
default = ["generous"]

[rate_limits.policies.generous]
key = "ip"
rate = 1000
burst = 1000
"#
    );
    // The first line belongs to [backends.echo]: its methods are served to
    // gRPC-Web and Connect clients too, under the same [cors].
    let routes = r#"expose = ["grpc-web", "connect"]

[[routes]]
method = "GET"
path = "/v1/echo"
grpc = "testing.v1.Echo/Echo"

[[routes]]
method = "POST"
path = "/v1/echo"
grpc = "testing.v1.Echo/Echo"
body = "*"

[[routes]]
method = "GET"
path = "/v1/private"
grpc = "testing.v1.Echo/Echo"
cors = { enabled = false }
"#;
    let config = edge_config(&sections, routes);
    let gw = TestGateway::start_with(&config, &backend, &testing_descriptors()).await;
    let gw_base = format!("http://{}", gw.addr);

    let app_calls = r#"[
      ["post_with_custom_header", gw + "/v1/echo", {method: "POST", headers: {"content-type": "application/json", "x-custom": "1"}, body: JSON.stringify({stringField: "from-browser"})}],
      ["simple_get", gw + "/v1/echo?stringField=simple", {}],
      ["header_not_allowed", gw + "/v1/echo", {method: "POST", headers: {"content-type": "application/json", "x-not-allowed": "1"}, body: "{}"}],
      ["method_not_bound", gw + "/v1/echo", {method: "PUT", headers: {"content-type": "application/json"}, body: "{}"}],
      ["route_without_cors", gw + "/v1/private", {}],
      ["connect_unary", gw + "/testing.v1.Echo/Echo", {method: "POST", headers: {"content-type": "application/json", "connect-protocol-version": "1", "connect-timeout-ms": "5000"}, body: JSON.stringify({stringField: "over-connect"})}],
      ["grpc_web_unary", gw + "/testing.v1.Echo/Echo", {method: "POST", headers: {"content-type": "application/grpc-web+proto", "x-grpc-web": "1", "x-user-agent": "grpc-web-javascript/0.1"}, body: new Uint8Array([0, 0, 0, 0, 4, 0x52, 2, 104, 105])}]
    ]"#;
    let evil_calls = r#"[
      ["post_with_custom_header", gw + "/v1/echo", {method: "POST", headers: {"content-type": "application/json", "x-custom": "1"}, body: "{}"}],
      ["simple_get", gw + "/v1/echo?stringField=evil", {}],
      ["connect_unary", gw + "/testing.v1.Echo/Echo", {method: "POST", headers: {"content-type": "application/json", "connect-protocol-version": "1"}, body: "{}"}]
    ]"#;
    app.set(
        "/index.html",
        "text/html",
        &[],
        page(&gw_base, app_calls, Some(&format!("{evil_base}/evil.html"))).as_bytes(),
    );
    evil.set(
        "/evil.html",
        "text/html",
        &[],
        page(&gw_base, evil_calls, None).as_bytes(),
    );

    let (mut child, profile) = browser::open(&browser, &format!("{app_base}/index.html"));
    let app_report = app.wait_post("/report", Duration::from_secs(25)).await;
    let evil_report = evil.wait_post("/report", Duration::from_secs(25)).await;
    let _ = child.kill().await;
    let _ = std::fs::remove_dir_all(&profile);
    let app_report: serde_json::Value =
        serde_json::from_slice(&app_report.expect("the app page reported its results"))
            .expect("JSON report");
    let evil_report: serde_json::Value =
        serde_json::from_slice(&evil_report.expect("the other origin's page reported"))
            .expect("JSON report");
    let get = |report: &serde_json::Value, name: &str| {
        report
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no result {name} in {report}"))
    };

    // Allowed: the preflighted POST with a custom header, and the simple GET;
    // the script can read the answer and the exposed RateLimit field.
    let post = get(&app_report, "post_with_custom_header");
    assert_eq!(post["ok"], true, "{post}");
    assert_eq!(post["status"], 200);
    assert!(
        post["body"].as_str().unwrap().contains("from-browser"),
        "{post}"
    );
    assert!(
        post["ratelimit"]
            .as_str()
            .is_some_and(|v| v.starts_with("\"generous\";r=")),
        "{post}"
    );
    assert_eq!(get(&app_report, "simple_get")["status"], 200);
    // gRPC-Web and Connect from the page: their protocol headers are
    // allowed though [cors] lists only content-type and x-custom.
    let connect = get(&app_report, "connect_unary");
    assert_eq!(connect["status"], 200, "{connect}");
    assert!(
        connect["body"].as_str().unwrap().contains("over-connect"),
        "{connect}"
    );
    let grpc_web = get(&app_report, "grpc_web_unary");
    assert_eq!(grpc_web["status"], 200, "{grpc_web}");
    assert!(
        grpc_web["body"].as_str().unwrap().contains("grpc-status:0"),
        "{grpc_web}"
    );
    // Refused by the browser: a header the preflight did not allow, a
    // method no route binds (no grant), a route with CORS off.
    for name in [
        "header_not_allowed",
        "method_not_bound",
        "route_without_cors",
    ] {
        let r = get(&app_report, name);
        assert_eq!(r["ok"], false, "the browser allowed {name}: {r}");
    }
    // The other origin gets nothing it can read.
    for name in ["post_with_custom_header", "simple_get", "connect_unary"] {
        let r = get(&evil_report, name);
        assert_eq!(
            r["ok"], false,
            "the browser allowed {name} from a foreign origin: {r}"
        );
    }
    // What reached the backend: the two allowed calls, plus the simple GETs
    // (a browser sends those without asking, and hides the answer); never a
    // call whose preflight was refused.
    assert_eq!(calls.load(Ordering::SeqCst), 6);
}
