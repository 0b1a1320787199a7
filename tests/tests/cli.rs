//! The real `gateway` binary: `--help`, `check`, `routes`, `serve` and `demo`.
//!
//! The binary comes from [`gateway_tests::gateway_bin`], which builds it
//! with the same feature resolution as the test build.

use std::process::{Command, Output};
use std::time::Duration;

use gateway_tests::binary::{spawn_demo, spawn_listening, without_admin};
use gateway_tests::{
    echo_config, echo_server, gateway_bin, http_client, line_of, render_config, repo_root,
    spawn_backend, testing_descriptors, testing_pool, toml_path, write_config,
};

fn run(args: &[&str]) -> Output {
    Command::new(gateway_bin())
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run gateway")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn help_lists_the_subcommands() {
    let out = run(&["--help"]);
    assert!(out.status.success(), "{out:?}");
    let help = text(&out.stdout);
    for sub in [
        "serve",
        "demo",
        "check",
        "routes",
        "config-reference",
        "--config",
    ] {
        assert!(help.contains(sub), "--help does not mention {sub}:\n{help}");
    }
}

#[test]
fn check_accepts_the_repository_config() {
    let config = repo_root().join("routes.toml");
    let out = run(&["check", "--config", config.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "check failed:\nstdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    // 11 routes in the file, 1 from an annotation, 11 exposed to gRPC-Web
    // and Connect clients (10 methods over POST, GetShelf also over GET).
    assert!(stdout.contains("ok (23 routes, 1 backends"), "{stdout}");
}

#[test]
fn check_lists_every_error_and_exits_nonzero() {
    let cfg = format!(
        r#"[server]
listen = "nowhere"
descriptors = "{}"

[backends.echo]
endpoints = ["127.0.0.1:1"]
services = ["testing.v1.Echo"]

[[routes]]
method = "GET"
path = "/v1/a"
grpc = "testing.v1.Echo/Nope"

[[routes]]
method = "POST"
path = "/v1/{{missing}}"
grpc = "testing.v1.Echo/Echo"
body = "nothere"
"#,
        toml_path(&testing_descriptors())
    );
    let path = write_config(&cfg);
    let out = run(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = text(&out.stderr);
    let p = path.display().to_string();
    for (needle, field) in [
        ("nowhere", "server.listen"),
        ("Echo/Nope", "routes[0].grpc"),
        ("{missing}", "routes[1].path"),
        ("nothere", "routes[1].body"),
    ] {
        let want = format!("{p}:{}: {field}: ", line_of(&cfg, needle));
        assert!(stderr.contains(&want), "stderr lacks {want:?}:\n{stderr}");
    }
    assert!(stderr.contains("4 error(s)"), "{stderr}");
    assert!(
        text(&out.stdout).is_empty(),
        "nothing on stdout: {}",
        text(&out.stdout)
    );
}

/// One typo used to stop the parse and hide every other problem: two
/// unknown keys and an unknown backend now come out together, each with its
/// line, the typos with the key they were meant to be.
#[test]
fn check_reports_unknown_keys_with_every_other_error() {
    let cfg = format!(
        r#"[server]
descriptors = "{}"
wacth = false

[backends.echo]
endpoints = ["127.0.0.1:1"]
services = ["testing.v1.Echo"]

[[routes]]
method = "GET"
path = "/v1/a"
grpc = "testing.v1.Echo/Echo"
backend = "nosuch"
timout = "1s"
"#,
        toml_path(&testing_descriptors())
    );
    let path = write_config(&cfg);
    let out = run(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = text(&out.stderr);
    let p = path.display().to_string();
    for (needle, want) in [
        (
            "wacth",
            "server.wacth: unknown key \"wacth\"; did you mean \"watch\"?",
        ),
        (
            "timout",
            "routes[0].timout: unknown key \"timout\"; did you mean \"timeout\"?",
        ),
        ("nosuch", "routes[0].backend: "),
    ] {
        let want = format!("{p}:{}: {want}", line_of(&cfg, needle));
        assert!(stderr.contains(&want), "stderr lacks {want:?}:\n{stderr}");
    }
    assert!(stderr.contains("3 error(s)"), "{stderr}");
}

/// etcd's own rpc.proto binds Hash and HashKV to one path: a team dropping
/// in its descriptor set gets a warning, not a refused configuration.
#[test]
fn check_warns_about_conflicting_annotations_and_exits_zero() {
    let cfg = format!(
        r#"[server]
descriptors = "{}"

[backends.etcd]
endpoints = ["127.0.0.1:1"]
services = ["etcdserverpb.KV", "etcdserverpb.Maintenance"]
"#,
        toml_path(&gateway_tests::fixtures_dir().join("etcd/descriptors"))
    );
    let path = write_config(&cfg);
    let out = run(&["check", "--config", path.to_str().unwrap()]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(
            "warning: etcd/etcdserver/etcdserverpb/rpc.proto: etcdserverpb.Maintenance.HashKV \
             (google.api.http): POST /v3/maintenance/hash is also bound by google.api.http on \
             etcdserverpb.Maintenance.Hash (POST /v3/maintenance/hash), which wins"
        ),
        "{stderr}"
    );
    assert!(stdout.contains(": ok ("), "{stdout}");
    assert!(stdout.contains(", 1 warning(s))"), "{stdout}");
}

#[test]
fn check_with_a_missing_config_file_fails_clearly() {
    let out = run(&["check", "--config", "/nonexistent/routes.toml"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("/nonexistent/routes.toml"), "{stderr}");
    assert!(stderr.contains("cannot read"), "{stderr}");
}

/// Lines (1-based) of the `[[routes]]` headers of a routes.toml.
fn route_headers(text: &str) -> Vec<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.trim() == "[[routes]]")
        .map(|(i, _)| i + 1)
        .collect()
}

#[test]
fn routes_prints_each_route_with_its_source() {
    let config = repo_root().join("routes.toml");
    let cfg = std::fs::read_to_string(&config).unwrap();
    let out = run(&["routes", "--config", config.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("METHOD"), "{stdout}");
    assert!(lines[0].contains("SOURCE"), "{stdout}");

    let headers = route_headers(&cfg);
    assert_eq!(headers.len(), 11);
    let grpc_lines: Vec<usize> = cfg
        .lines()
        .enumerate()
        .filter(|(_, l)| l.starts_with("grpc = "))
        .map(|(i, _)| i + 1)
        .collect();
    for (i, header) in headers.iter().enumerate() {
        // A route points at its table: the `[[routes]]` line or its first key.
        let grpc = cfg.lines().nth(grpc_lines[i] - 1).unwrap();
        let method = grpc.trim_start_matches("grpc = ").trim_matches('"');
        let row = lines
            .iter()
            .find(|l| {
                l.contains(method)
                    && (l.contains(&format!("routes.toml:{header}"))
                        || l.contains(&format!("routes.toml:{}", header + 1)))
            })
            .unwrap_or_else(|| panic!("no row for {method} at routes.toml:{header}:\n{stdout}"));
        assert!(row.contains("bookstore"), "backend column: {row}");
    }
    let ann = lines
        .iter()
        .find(|l| l.contains("ListShelves"))
        .unwrap_or_else(|| panic!("no ListShelves row:\n{stdout}"));
    assert!(ann.starts_with("GET"), "{ann}");
    assert!(ann.contains("/v1/shelves"), "{ann}");
    assert!(
        ann.contains("google.api.http on example.bookstore.v1.Bookstore.ListShelves"),
        "{ann}"
    );
    // The methods the backend exposes, with their protocols: every unary
    // and server-streaming one over POST, GetShelf (no side effects) also
    // over Connect's GET; ImportBooks (client streaming) not at all.
    let exposed: Vec<&&str> = lines
        .iter()
        .filter(|l| l.contains("backends.bookstore.expose"))
        .collect();
    assert_eq!(exposed.len(), 11, "{stdout}");
    assert!(exposed
        .iter()
        .all(|l| l.contains("/example.bookstore.v1.Bookstore/")));
    assert!(exposed
        .iter()
        .any(|l| l.starts_with("GET") && l.contains("GetShelf") && l.contains(" connect ")));
    assert!(exposed.iter().any(|l| l.starts_with("POST")
        && l.contains("StreamBooks")
        && l.contains("grpc-web,connect")));
    assert!(!exposed.iter().any(|l| l.contains("ImportBooks")));
    assert_eq!(lines.len(), 1 + 11 + 1 + 11, "{stdout}");
}

fn sigterm(child: &tokio::process::Child) {
    let pid = child.id().expect("child is running");
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
}

#[tokio::test]
async fn serve_answers_requests_and_stops_on_sigterm() {
    // No delay between readiness going false and closing the listener.
    serve_and_stop("shutdown_delay = \"0s\"", |_| |_| {}).await;
}

#[tokio::test]
async fn serve_on_one_thread_answers_concurrent_requests_and_stops_on_sigterm() {
    // worker_threads = 1 selects tokio's current-thread scheduler.
    serve_and_stop("shutdown_delay = \"0s\"\nworker_threads = 1", |_| |_| {}).await;
}

#[tokio::test]
async fn serve_on_two_serving_threads_hands_connections_to_both_and_stops_on_sigterm() {
    serve_and_stop("shutdown_delay = \"0s\"\nworker_threads = 2", |pid| {
        let before = serving_threads(pid);
        let names: Vec<&str> = before.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["gw-worker-0", "gw-worker-1"], "{before:?}");
        move |pid| {
            // An idle serving thread sleeps until it is handed work (no
            // timers run there without connections), so one that was handed
            // none has not woken since the requests began. How many times
            // one that was handed some woke depends on how the connections
            // bunched up, so only "at all" is asserted.
            let after = serving_threads(pid);
            for ((name, was), (_, now)) in before.iter().zip(&after) {
                assert!(
                    now > was,
                    "{name} did not wake for the requests: the accept loop did not hand it connections (before {before:?}, after {after:?})"
                );
            }
        }
    })
    .await;
}

fn serving_threads(pid: u32) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc/PID/task") {
        let dir = task.expect("task entry").path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let name = name.trim();
        if !name.starts_with("gw-worker-") {
            continue;
        }
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        let switches = status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        out.push((name.to_owned(), switches));
    }
    out.sort();
    out
}

/// Serves 32 concurrent requests and a 404 from the binary with these
/// `[server]` settings, then stops it with SIGTERM. `inspect` gets its pid
/// before the requests, and what it returns gets the pid after them, while
/// the gateway still runs.
async fn serve_and_stop<After: FnOnce(u32)>(
    server_settings: &str,
    inspect: impl FnOnce(u32) -> After,
) {
    let backend = spawn_backend(echo_server(&testing_pool())).await;
    let path = write_config(&without_admin(&render_config(
        &echo_config(server_settings),
        &backend,
        &testing_descriptors(),
    )));
    let (mut child, addr) = spawn_listening(&["serve", "--config", path.to_str().unwrap()]).await;
    let pid = child.id().expect("the gateway runs");
    let after = inspect(pid);
    // A connection per request: the accept loop hands out connections, so
    // with two serving threads each gets about half of them.
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let mut calls = tokio::task::JoinSet::new();
    for i in 1..=32 {
        let client = client.clone();
        let url = format!("http://{addr}/v1/single/from-binary-{i}?int32Field={i}");
        calls.spawn(async move {
            let r = client.get(url).send().await.expect("request to the binary");
            assert_eq!(r.status(), 200);
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(
                body,
                serde_json::json!({"stringField": format!("from-binary-{i}"), "int32Field": i})
            );
        });
    }
    while let Some(done) = calls.join_next().await {
        done.expect("call task");
    }
    let r = client
        .get(format!("http://{addr}/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    after(pid);

    sigterm(&child);
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("gateway did not exit within 10s of SIGTERM")
        .unwrap();
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
}

#[tokio::test]
async fn serve_with_a_broken_config_exits_nonzero_without_listening() {
    let path = write_config("[server]\nlisten = \"bad\"\n");
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new(gateway_bin())
            .args(["serve", "--config", path.to_str().unwrap()])
            .output(),
    )
    .await
    .expect("serve with a broken config should exit")
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("server.listen"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn demo_serves_the_bookstore_on_the_configured_backend_endpoint() {
    let (mut child, addr) = spawn_demo().await;
    let r = http_client()
        .get(format!("http://{addr}/v1/shelves/1/books/3"))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body: serde_json::Value = r.json().await.unwrap();
    // Book 3 is on shelf 2, not shelf 1.
    assert_eq!(status, 404, "{body}");
    let r = http_client()
        .get(format!("http://{addr}/v1/shelves/2/books/3"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["title"], "The Elements of Style");
    // Graceful shutdown is covered above; stop this one at once.
    child.start_kill().expect("kill the demo gateway");
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
}

#[tokio::test]
async fn demo_without_a_route_to_an_example_service_names_the_ones_it_can_start() {
    let config = render_config(
        &without_admin(&echo_config("")),
        "127.0.0.1:1",
        &testing_descriptors(),
    );
    let path = write_config(&config);
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new(gateway_bin())
            .args(["demo", "--config", path.to_str().unwrap()])
            .output(),
    )
    .await
    .expect("demo without an example service should exit")
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(
            "reaches example.bookstore.v1.Bookstore or example.signup.v1.Signup; `demo` needs one"
        ),
        "{}",
        text(&out.stderr)
    );
    gateway_tests::remove_temp_parent(&path);
}
