//! Configuration from Consul KV: `--consul-kv`, `--consul-kv-descriptors`,
//! `--config-cache`, against the Consul test server's KV store, with real
//! `gateway` processes as replicas.

use std::time::Duration;

use gateway_tests::binary::{spawn_with, Spawned, CONSUL_ENV};
use gateway_tests::consul::ConsulTestServer;
use gateway_tests::exposition::{parse_exposition, value};
use gateway_tests::{
    echo_server, gateway_bin, http_client, spawn_backend, temp_dir, testing_descriptors,
    testing_pool,
};
use serde_json::Value;

const KEY: &str = "gateway/routes.toml";
const PREFIX: &str = "gateway/descriptors/";
const TOKEN: &str = "kv-reader-token";

/// routes.toml as written to KV: the echo backend, descriptors from the KV
/// prefix (so no `server.descriptors`), both listeners on ephemeral ports so
/// several replicas can run on one machine. `extra` is appended.
fn kv_config(backend: &str, extra: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"

[admin]
listen = "127.0.0.1:0"

[backends.echo]
endpoints = ["{backend}"]
services = ["testing.v1.Echo"]
timeout = "5s"
connect_timeout = "1s"

[[routes]]
method = "GET"
path = "/v1/echo"
grpc = "testing.v1.Echo/Echo"
{extra}"#
    )
}

const META_ROUTE: &str = r#"
[[routes]]
method = "GET"
path = "/v1/meta"
grpc = "testing.v1.Echo/Meta"
"#;

/// The Consul test server with ACLs on, the testing descriptors under
/// [`PREFIX`] and `routes` at [`KEY`].
async fn consul_with(routes: &str) -> ConsulTestServer {
    let consul = ConsulTestServer::start_with_token(TOKEN).await;
    let proto = std::fs::read(testing_descriptors().join("testing.proto")).expect("testing.proto");
    consul.kv_put(&format!("{PREFIX}testing.proto"), &proto);
    consul.kv_put(KEY, routes.as_bytes());
    consul
}

/// `gateway serve` on KV with its own cache folder.
async fn replica(consul: &ConsulTestServer, cache: &std::path::Path) -> Spawned {
    let address = consul.address();
    // `host:port` without a scheme, as CONSUL_HTTP_ADDR is often written.
    let address = address.trim_start_matches("http://");
    spawn_with(
        &["serve", "--consul-kv-descriptors", PREFIX],
        &[
            ("GATEWAY_CONSUL_KV", KEY),
            ("CONSUL_HTTP_ADDR", address),
            ("CONSUL_HTTP_TOKEN", TOKEN),
            ("GATEWAY_CONFIG_CACHE", cache.to_str().expect("utf-8 path")),
        ],
    )
    .await
}

async fn admin_config(r: &Spawned) -> Value {
    let admin = r.admin.as_ref().expect("admin listener");
    http_client()
        .get(format!("http://{admin}/admin/config"))
        .send()
        .await
        .expect("GET /admin/config")
        .json()
        .await
        .expect("admin/config JSON")
}

async fn metrics(r: &Spawned) -> String {
    let admin = r.admin.as_ref().expect("admin listener");
    http_client()
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text")
}

async fn status_of(r: &Spawned, path: &str) -> u16 {
    match http_client()
        .get(format!("http://{}{path}", r.rest))
        .send()
        .await
    {
        Ok(resp) => resp.status().as_u16(),
        Err(_) => 0,
    }
}

/// Polls `f` until it returns `Some`, for at most 15 s.
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after 15 s waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn hash_of(config: &Value) -> String {
    let h = config["hash"].as_str().expect("hash in /admin/config");
    assert_eq!(h.len(), 16, "hash is 16 hex digits: {h}");
    assert!(h.bytes().all(|b| b.is_ascii_hexdigit()), "{h}");
    h.to_owned()
}

/// The single `gateway_config_info` series: its hash and source.
fn config_info(metrics: &str) -> (String, String) {
    let samples: Vec<_> = parse_exposition(metrics)
        .into_iter()
        .filter(|s| s.name == "gateway_config_info")
        .collect();
    assert_eq!(samples.len(), 1, "exactly one gateway_config_info series");
    assert_eq!(samples[0].value, 1.0);
    (
        samples[0].labels["hash"].clone(),
        samples[0].labels["source"].clone(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_config_reaches_two_replicas_refuses_a_bad_write_and_takes_the_fix() {
    let backend = spawn_backend(echo_server(&testing_pool())).await;
    let consul = consul_with(&kv_config(&backend, "")).await;
    let (cache_a, cache_b) = (temp_dir("kv-cache-a"), temp_dir("kv-cache-b"));
    let a = replica(&consul, &cache_a).await;
    let b = replica(&consul, &cache_b).await;
    let first_index = consul.kv_modify_index(KEY).unwrap();

    let mut hashes = Vec::new();
    for r in [&a, &b] {
        assert_eq!(status_of(r, "/v1/echo").await, 200);
        assert_eq!(status_of(r, "/v1/meta").await, 404);
        let c = admin_config(r).await;
        assert_eq!(c["source"], "consul", "{c}");
        assert_eq!(c["consul_index"], first_index, "{c}");
        let (hash, source) = config_info(&metrics(r).await);
        assert_eq!(
            (hash.as_str(), source.as_str()),
            (hash_of(&c).as_str(), "consul")
        );
        hashes.push(hash_of(&c));
    }
    assert_eq!(hashes[0], hashes[1], "both replicas serve the same config");
    assert!(
        cache_a.join("current").join("routes.toml").exists(),
        "the accepted version is in the cache"
    );

    // A route naming a method the descriptors lack: parses, fails validation.
    let broken = kv_config(
        &backend,
        "\n[[routes]]\nmethod = \"GET\"\npath = \"/v1/nope\"\ngrpc = \"testing.v1.Echo/NoSuchMethod\"\n",
    );
    consul.kv_put(KEY, broken.as_bytes());
    let bad_index = consul.kv_modify_index(KEY).unwrap();
    for r in [&a, &b] {
        let refused = eventually("the bad write to be refused", || async {
            let c = admin_config(r).await;
            (c["last_refused"]["consul_index"] == bad_index).then_some(c)
        })
        .await;
        let why = refused["last_refused"]["error"].as_str().unwrap_or("");
        assert!(
            why.contains("consul:gateway/routes.toml:") && why.contains("NoSuchMethod"),
            "the refusal names the key, the line and the problem: {why}"
        );
        assert_eq!(refused["last_refused"]["source"], "consul");
        assert_eq!(
            refused["consul_index"], first_index,
            "the old version serves"
        );
        assert_eq!(hash_of(&refused), hashes[0]);
        assert_eq!(status_of(r, "/v1/echo").await, 200, "the old config serves");
        let m = metrics(r).await;
        let refusals = value(
            &parse_exposition(&m),
            "gateway_config_reloads_total",
            &[("source", "consul"), ("result", "error")],
        );
        assert!(refusals >= 1.0, "refusal counted: {m}");
    }

    // A TOML syntax error is refused too.
    consul.kv_put(KEY, b"[server\nlisten = ");
    let syntax_index = consul.kv_modify_index(KEY).unwrap();
    for r in [&a, &b] {
        eventually("the syntax error to be refused", || async {
            let c = admin_config(r).await;
            (c["last_refused"]["consul_index"] == syntax_index).then_some(())
        })
        .await;
        assert_eq!(status_of(r, "/v1/echo").await, 200);
    }

    consul.kv_put(KEY, kv_config(&backend, META_ROUTE).as_bytes());
    let written = std::time::Instant::now();
    let fixed_index = consul.kv_modify_index(KEY).unwrap();
    let mut new_hashes = Vec::new();
    for r in [&a, &b] {
        let c = eventually("the fixed config to be taken", || async {
            let c = admin_config(r).await;
            (c["consul_index"] == fixed_index).then_some(c)
        })
        .await;
        assert_eq!(c["last_reload"]["ok"], true, "{c}");
        assert_eq!(status_of(r, "/v1/meta").await, 200);
        let (hash, _) = config_info(&metrics(r).await);
        assert_eq!(hash, hash_of(&c), "the metric follows the config");
        new_hashes.push(hash);
    }
    eprintln!(
        "both replicas serve the new config {} ms after the write",
        written.elapsed().as_millis()
    );
    assert_eq!(new_hashes[0], new_hashes[1], "the replicas converge");
    assert_ne!(new_hashes[0], hashes[0], "the hash changes with the config");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_descriptor_change_alone_is_taken() {
    let backend = spawn_backend(echo_server(&testing_pool())).await;
    let consul = consul_with(&kv_config(&backend, "")).await;
    let cache = temp_dir("kv-cache-desc");
    let r = replica(&consul, &cache).await;
    let before = hash_of(&admin_config(&r).await);
    // POST /admin/reload (as SIGHUP) rebuilds from the KV version in force.
    let admin = r.admin.as_ref().unwrap();
    let reloaded = http_client()
        .post(format!("http://{admin}/admin/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(reloaded.status().as_u16(), 200);
    let c = admin_config(&r).await;
    assert_eq!(c["version"], 2, "{c}");
    assert_eq!(c["source"], "consul", "{c}");
    assert_eq!(hash_of(&c), before);
    // Same service, one more (unused) file: the hash covers descriptors.
    consul.kv_put(
        &format!("{PREFIX}extra/more.proto"),
        b"syntax = \"proto3\";\npackage extra.v1;\nmessage Extra { string a = 1; }\n",
    );
    let after = eventually("the new descriptor to be taken", || async {
        let h = hash_of(&admin_config(&r).await);
        (h != before).then_some(h)
    })
    .await;
    assert_ne!(before, after);
    assert_eq!(status_of(&r, "/v1/echo").await, 200);
    // A broken descriptor is refused and the old one keeps serving.
    consul.kv_put(&format!("{PREFIX}broken.binpb"), b"\xff\xff not a set");
    let c = eventually("the broken descriptor to be refused", || async {
        let c = admin_config(&r).await;
        c["last_refused"]["error"].is_string().then_some(c)
    })
    .await;
    assert!(
        c["last_refused"]["error"]
            .as_str()
            .unwrap()
            .contains("broken.binpb"),
        "{c}"
    );
    assert_eq!(hash_of(&c), after);
    assert_eq!(status_of(&r, "/v1/echo").await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_from_the_cache_when_consul_is_down_and_converges_when_it_returns() {
    let backend = spawn_backend(echo_server(&testing_pool())).await;
    let mut consul = consul_with(&kv_config(&backend, "")).await;
    let cache = temp_dir("kv-cache-restart");
    let first = replica(&consul, &cache).await;
    let first_hash = hash_of(&admin_config(&first).await);
    drop(first);

    consul.stop();
    // Written while the replica is down and Consul unreachable.
    consul.kv_put(KEY, kv_config(&backend, META_ROUTE).as_bytes());
    let r = replica(&consul, &cache).await;
    assert!(
        r.log
            .iter()
            .any(|l| l.contains("Consul is unreachable; starting from the cached configuration")),
        "the start from cache is logged: {:#?}",
        r.log
    );
    let c = admin_config(&r).await;
    assert_eq!(hash_of(&c), first_hash, "serves the cached version");
    assert_eq!(status_of(&r, "/v1/echo").await, 200);
    assert_eq!(status_of(&r, "/v1/meta").await, 404);

    consul.restart().await;
    let c = eventually("the replica to take Consul's version", || async {
        let c = admin_config(&r).await;
        (hash_of(&c) != first_hash).then_some(c)
    })
    .await;
    assert_eq!(c["consul_index"], consul.kv_modify_index(KEY).unwrap());
    assert_eq!(status_of(&r, "/v1/meta").await, 200);
}

/// `gateway check` on KV with `env`; returns (success, stdout + stderr).
fn check(consul: &ConsulTestServer, env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = std::process::Command::new(gateway_bin());
    cmd.args([
        "check",
        "--consul-kv",
        KEY,
        "--consul-kv-descriptors",
        PREFIX,
        "--consul-address",
        &consul.address(),
    ]);
    for var in CONSUL_ENV {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run gateway check");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_acl_token_is_sent_and_a_wrong_one_is_a_clear_error() {
    let backend = spawn_backend(echo_server(&testing_pool())).await;
    let consul = consul_with(&kv_config(&backend, "")).await;

    let (ok, out) = check(&consul, &[("CONSUL_HTTP_TOKEN", "wrong")]);
    assert!(!ok, "a wrong token fails: {out}");
    assert!(
        out.contains("Consul refused the ACL token (403 ACL not found)")
            && out.contains("CONSUL_HTTP_TOKEN or --consul-token-file"),
        "{out}"
    );

    let (ok, out) = check(&consul, &[]);
    assert!(!ok, "no token fails: {out}");
    assert!(out.contains("403 Permission denied"), "{out}");

    let dir = temp_dir("kv-token");
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let (ok, out) = check(
        &consul,
        &[("CONSUL_HTTP_TOKEN_FILE", token_file.to_str().unwrap())],
    );
    assert!(ok, "the token file's token is accepted: {out}");
    assert!(out.contains("consul:gateway/routes.toml: ok ("), "{out}");
    // `check` prints the hash a replica serving this config reports.
    let replica = replica(&consul, &temp_dir("kv-cache-check")).await;
    let hash = hash_of(&admin_config(&replica).await);
    assert!(out.contains(&format!("), hash {hash}")), "{hash}: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_key_is_named_with_the_command_that_writes_it() {
    let consul = ConsulTestServer::start().await;
    let (ok, out) = check(&consul, &[]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("the key \"gateway/routes.toml\" does not exist in Consul KV")
            && out.contains("consul kv put gateway/routes.toml @routes.toml"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_config_reports_its_hash_too_and_check_prints_the_same() {
    let backend = spawn_backend(echo_server(&testing_pool())).await;
    let with_folder = |extra: &str| {
        kv_config(&backend, extra).replacen(
            "[server]\n",
            &format!(
                "[server]\ndescriptors = \"{}\"\n",
                gateway_tests::toml_path(&testing_descriptors())
            ),
            1,
        )
    };
    let path = gateway_tests::write_config(&with_folder(""));
    let path_str = path.to_str().unwrap();
    let r = spawn_with(&["serve", "--config", path_str], &[]).await;
    let c = admin_config(&r).await;
    assert_eq!(c["source"], "file", "{c}");
    assert_eq!(c["consul_index"], Value::Null, "{c}");
    let hash = hash_of(&c);
    assert_eq!(
        config_info(&metrics(&r).await),
        (hash.clone(), "file".to_owned())
    );

    let out = std::process::Command::new(gateway_bin())
        .args(["check", "--config", path_str])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("), hash {hash}")),
        "{hash}: {stdout}"
    );

    // Written by rename, as editors do: the watcher reloads it.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, with_folder(META_ROUTE)).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    let new = eventually("the edited file to be taken", || async {
        let h = hash_of(&admin_config(&r).await);
        (h != hash).then_some(h)
    })
    .await;
    // One series, the new hash: the old one is gone.
    assert_eq!(config_info(&metrics(&r).await), (new, "file".to_owned()));
    let m = parse_exposition(&metrics(&r).await);
    assert!(
        value(
            &m,
            "gateway_config_reloads_total",
            &[("source", "file"), ("result", "ok")]
        ) >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_server_follows_consuls_kv_api() {
    use base64::Engine as _;
    let consul = ConsulTestServer::start_with_token(TOKEN).await;
    let client = http_client();
    let url = |rest: &str| format!("{}/v1/kv/{rest}", consul.address());
    let get = |rest: &str, token: Option<&str>| {
        let mut req = client.get(url(rest));
        if let Some(t) = token {
            req = req.header("X-Consul-Token", t);
        }
        req.send()
    };
    let missing = get("a/b", Some(TOKEN)).await.unwrap();
    assert_eq!(missing.status().as_u16(), 404);
    assert!(missing.headers().contains_key("x-consul-index"));
    assert_eq!(
        get("a/b", Some("nope")).await.unwrap().status().as_u16(),
        403
    );
    assert_eq!(get("a/b", None).await.unwrap().status().as_u16(), 403);

    let put = client
        .put(url("a/b"))
        .header("X-Consul-Token", TOKEN)
        .body("one")
        .send()
        .await
        .unwrap();
    assert_eq!(put.text().await.unwrap(), "true");
    consul.kv_put("a/c", b"two");
    let index_b = consul.kv_modify_index("a/b").unwrap();

    let one = get("a/b", Some(TOKEN)).await.unwrap();
    assert_eq!(
        one.headers()["x-consul-index"],
        index_b.to_string().as_str()
    );
    let list: Value = one.json().await.unwrap();
    assert_eq!(list[0]["Key"], "a/b");
    assert_eq!(list[0]["ModifyIndex"], index_b);
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(list[0]["Value"].as_str().unwrap())
            .unwrap(),
        b"one"
    );
    for field in ["Flags", "CreateIndex", "LockIndex", "Session"] {
        assert!(list[0].get(field).is_some(), "{field} in {list}");
    }
    let raw = get("a/b?raw", Some(TOKEN)).await.unwrap();
    assert_eq!(raw.bytes().await.unwrap().as_ref(), b"one");
    let all: Value = get("a/?recurse", Some(TOKEN))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let keys: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["a/b", "a/c"]);

    // A blocking query returns when the key changes, not before.
    let index = consul.kv_modify_index("a/c").unwrap();
    let waiting = tokio::spawn(get(&format!("a/b?index={index}&wait=10s"), Some(TOKEN)));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !waiting.is_finished(),
        "a blocking query waits for a change"
    );
    consul.kv_put("a/b", b"three");
    let answered = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the blocking query ends on the write")
        .unwrap()
        .unwrap();
    let list: Value = answered.json().await.unwrap();
    assert_eq!(
        list[0]["ModifyIndex"],
        consul.kv_modify_index("a/b").unwrap()
    );
    assert_eq!(consul.kv_get("a/b").unwrap(), b"three");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_starting_on_a_refused_kv_value_serves_the_cache() {
    let backend = spawn_backend(echo_server(&testing_pool())).await;
    let consul = consul_with(&kv_config(&backend, "")).await;
    let cache = temp_dir("kv-cache-refused-start");
    let first = replica(&consul, &cache).await;
    let good = hash_of(&admin_config(&first).await);
    drop(first);

    consul.kv_put(
        KEY,
        b"[server]\nlisten = \"127.0.0.1:0\"\nno_such_key = 1\n",
    );
    let bad_index = consul.kv_modify_index(KEY).unwrap();
    let r = replica(&consul, &cache).await;
    assert!(
        r.log.iter().any(|l| l
            .contains("the configuration in Consul KV is refused; starting from the cached one")
            && l.contains("no_such_key")),
        "the refusal at start is logged with its error: {:#?}",
        r.log
    );
    assert_eq!(status_of(&r, "/v1/echo").await, 200);
    let c = eventually("the refused version to show in /admin/config", || async {
        let c = admin_config(&r).await;
        (c["last_refused"]["consul_index"] == bad_index).then_some(c)
    })
    .await;
    assert_eq!(hash_of(&c), good, "the cached version serves");
    assert!(
        cache.join("current").join("routes.toml").exists(),
        "the cache still holds the good version"
    );
    let cached = std::fs::read_to_string(cache.join("current").join("routes.toml")).unwrap();
    assert!(!cached.contains("no_such_key"), "{cached}");
}
