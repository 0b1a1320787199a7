//! The generated OpenAPI 3.1 document: valid per a real validator
//! (openapi-spec-validator, installed by .ci/run), every route present with
//! its parameters, proto comments as descriptions, streaming described,
//! served on the listener and following the routes on reload; one path item
//! per URL shape agreeing with the Allow header; schemas that replies match,
//! checked by a property-based client (schemathesis) against the demo.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use gateway::example::bookstore;
use gateway::server::Gateway;
use gateway::snapshot::Snapshot;
use gateway_tests::streaming::{descriptors, start, CONFIG};
use gateway_tests::{
    bookstore_pool, dead_addr, echo_config, http_client, remove_temp_parent, render_config,
    repo_root, spawn_backend, testing_descriptors, toml_path, write_config, TestGateway,
};
use serde_json::{json, Value};

/// Whether `python3` can import `module`; if not, installs `spec` from
/// PyPI once (.ci/run installs it too), so the README's test command really
/// runs the tool on a fresh machine.
fn have_python_module(module: &str, spec: &str) -> bool {
    let have = || {
        Command::new("python3")
            .args(["-c", &format!("import {module}")])
            .status()
            .is_ok_and(|s| s.success())
    };
    if have() {
        return true;
    }
    eprintln!("installing {spec} with pip");
    let _ = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            spec,
        ])
        .status();
    have()
}

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Validates `doc` with openapi-spec-validator; Err holds its complaint.
/// Ok(false) when the validator is not installed (only allowed outside CI).
fn validate(doc: &Value) -> Result<bool, String> {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        have_python_module("openapi_spec_validator", "openapi-spec-validator");
    });
    let dir = gateway_tests::temp_dir("openapi");
    let file = dir.join("openapi.json");
    std::fs::write(&file, serde_json::to_vec_pretty(doc).unwrap()).unwrap();
    let script = "import json, sys\n\
        try:\n    from openapi_spec_validator import validate\n\
        except ImportError:\n    sys.exit(3)\n\
        validate(json.load(open(sys.argv[1])))\nprint('valid')\n";
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&file)
        .output();
    let _ = std::fs::remove_dir_all(&dir);
    let out = match out {
        Ok(o) => o,
        Err(e) => return Err(format!("cannot run python3: {e}")),
    };
    if out.status.code() == Some(3) {
        return Ok(false);
    }
    if !out.status.success() {
        return Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(true)
}

fn assert_valid(doc: &Value) {
    match validate(doc) {
        Ok(true) => {}
        Ok(false) if under_ci() => {
            panic!("openapi-spec-validator is not installed; .ci/run installs it with pip")
        }
        Ok(false) => eprintln!(
            "SKIPPED validation: openapi-spec-validator is not installed (pip install openapi-spec-validator)"
        ),
        Err(e) => panic!(
            "the document is not valid OpenAPI 3.1:\n{e}\n{}",
            serde_json::to_string_pretty(doc).unwrap()
        ),
    }
}

/// `(path, method)` -> operation.
fn op<'a>(doc: &'a Value, path: &str, method: &str) -> &'a Value {
    let o = &doc["paths"][path][method];
    assert!(o.is_object(), "no {method} {path} in {}", doc["paths"]);
    o
}

fn param_names(op: &Value, place: &str) -> Vec<String> {
    op["parameters"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|p| p["in"] == place)
                .map(|p| p["name"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn served_document_is_valid_openapi_3_1() {
    let (gw, _) = start("").await;
    let r = gw.get("/openapi.json").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), "application/json");
    assert_eq!(r.json["openapi"], "3.1.0");
    assert_eq!(
        r.json["info"],
        json!({"title": "Streaming test API", "version": "0.1.0"})
    );
    assert_valid(&r.json);
    // HEAD: the GET's status and length, no body.
    let head = gw.request("HEAD", "/openapi.json", &[], None).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), r.text.len().to_string());
    assert!(head.text.is_empty());
}

#[tokio::test]
async fn echo_routes_document_is_valid_too() {
    // Every field type, wildcards, verbs, nested path variables, maps.
    let gw = TestGateway::echo("").await;
    let snap = Snapshot::load(&gw.config_path).unwrap();
    let doc = gateway::openapi::document(&snap);
    assert_valid(&doc);
    let o = op(&doc, "/v1/deep/{inner_deeper_value}", "get");
    assert_eq!(param_names(o, "path"), ["inner_deeper_value"]);
    let q = param_names(o, "query");
    assert!(
        q.contains(&"int64Field".to_owned()) && q.contains(&"inner.name".to_owned()),
        "{q:?}"
    );
    assert!(
        !q.iter().any(|n| n.starts_with("inner.deeper.value")),
        "{q:?}"
    );
    let o = op(&doc, "/v1/items/{string_field}:activate", "post");
    assert!(
        param_names(o, "query").is_empty(),
        "body \"*\" leaves nothing for the query"
    );
    let schema = &doc["components"]["schemas"]["testing.v1.Everything"]["properties"];
    assert_eq!(
        schema["int64Field"]["type"],
        json!(["string", "integer"]),
        "int64 is written as a string, read as either"
    );
    assert_eq!(schema["timestamp"]["format"], "date-time");
    assert_eq!(schema["labels"]["additionalProperties"]["type"], "string");
    assert_eq!(
        schema["color"]["$ref"],
        "#/components/schemas/testing.v1.Color"
    );
    assert_eq!(
        doc["components"]["schemas"]["testing.v1.Color"]["anyOf"],
        json!([{"type": "string", "enum": ["COLOR_UNSPECIFIED", "RED", "GREEN", "BLUE"]},
               {"type": "integer", "format": "int32"}])
    );
    remove_temp_parent(&gw.config_path);
}

#[tokio::test]
async fn every_route_appears_with_its_path_and_query_parameters() {
    let (gw, _) = start("").await;
    let doc = gw.get("/openapi.json").await.json;
    let snap = Snapshot::load(&gw.config_path).unwrap();
    let mut count = 0;
    for route in &snap.routes {
        let method = route.method.to_ascii_lowercase();
        let found = doc["paths"].as_object().unwrap().iter().find(|(_, item)| {
            item[&method]["x-grpc-method"]
                == format!(
                    "{}/{}",
                    route.plan.grpc_method.parent_service().full_name(),
                    route.plan.grpc_method.name()
                )
                && param_names(&item[&method], "path")
                    == route
                        .template
                        .variables
                        .iter()
                        .map(|v| v.field_path.join("_"))
                        .collect::<Vec<_>>()
        });
        assert!(
            found.is_some(),
            "{} {} is missing",
            route.method,
            route.template
        );
        count += 1;
    }
    // CreateBook's annotation has the same method and path as a route in
    // routes.toml, which wins: 14 routes.
    assert_eq!(count, 14);

    let o = op(&doc, "/v1/count", "get");
    assert_eq!(
        param_names(o, "query"),
        [
            "count",
            "intervalMs",
            "failAfter",
            "failCode",
            "payloadBytes",
            "label"
        ]
    );
    let o = op(&doc, "/v1/{name}", "get");
    let p = &o["parameters"][0];
    assert_eq!(p["name"], "name");
    assert_eq!(p["schema"]["pattern"], "^shelves/[^/]+/books/[^/]+$");
    let o = op(&doc, "/v1/reports/{rows}", "get");
    assert_eq!(
        o["parameters"][0]["schema"],
        json!({"type": "integer", "format": "int32"})
    );
}

#[tokio::test]
async fn streaming_raw_and_shaped_operations_are_described() {
    let (gw, _) = start("").await;
    let doc = gw.get("/openapi.json").await.json;
    let count = op(&doc, "/v1/count", "get");
    assert_eq!(count["x-grpc-streaming"], "server");
    let content = &count["responses"]["200"]["content"];
    assert_eq!(
        content["application/x-ndjson"]["schema"]["properties"]["result"]["$ref"],
        "#/components/schemas/streaming.v1.Tick"
    );
    assert!(content["text/event-stream"].is_object());
    assert!(
        content["application/json"].is_null(),
        "array only where the route asks for it"
    );
    let array = op(&doc, "/v1/count:array", "get");
    assert_eq!(
        array["responses"]["200"]["content"]["application/json"]["schema"]["type"],
        "array"
    );
    let sum = op(&doc, "/v1/sum", "post");
    assert_eq!(sum["x-grpc-streaming"], "client");
    assert!(sum["requestBody"]["content"]["application/x-ndjson"].is_object());
    let report = op(&doc, "/v1/reports/{rows}", "get");
    assert!(report["responses"]["200"]["content"]["*/*"].is_object());
    let upload = op(&doc, "/v1/uploads", "post");
    assert!(upload["requestBody"]["content"]["*/*"].is_object());
    let form = op(&doc, "/v1/forms", "post");
    let props = &form["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"];
    assert_eq!(
        props["data"]["contentMediaType"],
        "application/octet-stream"
    );
    let create = op(&doc, "/v1/shelves/{shelf}/books", "post");
    assert!(create["responses"]["201"]["headers"]["Location"].is_object());
    assert_eq!(
        create["responses"]["default"]["$ref"],
        "#/components/responses/Error"
    );
    assert_eq!(
        doc["components"]["responses"]["Error"]["content"]["application/problem+json"]["schema"]
            ["$ref"],
        "#/components/schemas/Problem"
    );
}

#[tokio::test]
async fn proto_comments_become_descriptions() {
    let (gw, _) = start("").await;
    let doc = gw.get("/openapi.json").await.json;
    let count = op(&doc, "/v1/count", "get");
    assert_eq!(
        count["summary"],
        "Sends `count` ticks, `interval_ms` apart."
    );
    assert!(count["description"]
        .as_str()
        .unwrap()
        .contains("fails with `fail_code`"));
    let tick = &doc["components"]["schemas"]["streaming.v1.Tick"];
    assert_eq!(tick["description"], "One message of a Count stream.");
    assert_eq!(
        tick["properties"]["index"]["description"],
        "1-based position in the stream."
    );
    let q = &count["parameters"][0];
    assert_eq!(q["description"], "How many ticks to send.");
    let tag = doc["tags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "streaming.v1.Streams")
        .unwrap();
    assert_eq!(
        tag["description"],
        "Server, client and bidirectional streams."
    );
}

#[tokio::test]
async fn documentation_page_is_served() {
    let (gw, _) = start("").await;
    let r = gw.get("/docs").await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").starts_with("text/html"));
    assert!(r.text.contains("fetch(\"/openapi.json\")"), "{}", r.text);
    assert!(r
        .header("content-security-policy")
        .contains("default-src 'none'"));
}

#[tokio::test]
async fn document_follows_the_routes_on_reload() {
    let backend =
        gateway_tests::spawn_backend(gateway_tests::echo_server(&gateway_tests::testing_pool()))
            .await;
    let with_openapi = |extra_route: &str| {
        let mut t = echo_config("");
        t.push_str("\n[openapi]\npath = \"/openapi.json\"\n");
        t.push_str(extra_route);
        render_config(&t, &backend, &testing_descriptors())
    };
    let path = write_config(&with_openapi(""));
    let gw = Gateway::new(Snapshot::load(&path).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(gateway::server::serve(
        listener,
        Arc::clone(&gw),
        async move {
            let _ = rx.await;
        },
    ));
    let client = http_client();
    let fetch = || async {
        let r = client
            .get(format!("http://{addr}/openapi.json"))
            .send()
            .await
            .unwrap();
        r.json::<Value>().await.unwrap()
    };
    let before = fetch().await;
    assert!(before["paths"]["/v1/brand-new"].is_null());
    std::fs::write(
        &path,
        with_openapi("\n[[routes]]\nmethod = \"GET\"\npath = \"/v1/brand-new\"\ngrpc = \"testing.v1.Echo/Echo\"\n"),
    )
    .unwrap();
    // The reload path: a new snapshot swapped in whole.
    gw.swap(Snapshot::load(&path).unwrap());
    tokio::time::sleep(Duration::from_millis(10)).await;
    let after = fetch().await;
    assert!(after["paths"]["/v1/brand-new"]["get"].is_object());
    let _ = tx.send(());
    remove_temp_parent(&path);
}

#[tokio::test]
async fn gateway_openapi_prints_the_document() {
    let text = CONFIG
        .replace("{extra}", "")
        .replace("{backend}", "127.0.0.1:1")
        .replace("{descriptors}", &toml_path(&descriptors()));
    let path = write_config(&text);
    let bin = gateway_tests::gateway_bin();
    let out = Command::new(bin)
        .arg("openapi")
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let snap = Snapshot::load(&path).unwrap();
    assert_eq!(printed, gateway::openapi::document(&snap));
    remove_temp_parent(&path);
}

#[tokio::test]
async fn jwt_routes_carry_a_bearer_security_requirement() {
    const SECRET_ENV: &str = "GATEWAY_OPENAPI_TEST_HMAC_SECRET";
    // Safe in edition 2021; only this test reads the variable.
    std::env::set_var(SECRET_ENV, "0123456789abcdef0123456789abcdef-openapi");
    let text = CONFIG
        .replace("{extra}", "")
        .replace("{backend}", "127.0.0.1:1")
        .replace("{descriptors}", &toml_path(&descriptors()))
        + &format!(
            r#"
[auth.issuers.hmac]
issuer = "https://hmac.test"
algorithms = ["HS256"]
hmac_secret_env = "{SECRET_ENV}"

[[routes]]
method = "GET"
path = "/v1/private/{{name=shelves/*/books/*}}"
grpc = "streaming.v1.Library/GetBook"
auth = "required"
scopes = ["books.read"]

[[routes]]
method = "GET"
path = "/v1/maybe/{{name=shelves/*/books/*}}"
grpc = "streaming.v1.Library/GetBook"
auth = "optional"
"#
        );
    let path = write_config(&text);
    let snap = Snapshot::load(&path).unwrap_or_else(|e| panic!("{e}"));
    remove_temp_parent(&path);
    let doc = gateway::openapi::document(&snap);
    assert_eq!(
        doc["components"]["securitySchemes"]["bearerAuth"],
        json!({"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
               "description": "A JWT from one of the configured issuers, in `Authorization: Bearer <token>`."})
    );
    assert_eq!(
        op(&doc, "/v1/private/{name}", "get")["security"],
        json!([{"bearerAuth": ["books.read"]}])
    );
    assert_eq!(
        op(&doc, "/v1/maybe/{name}", "get")["security"],
        json!([{"bearerAuth": []}, {}])
    );
    assert!(op(&doc, "/v1/count", "get")["security"].is_null());
    assert_valid(&doc);
}

// ---------------------------------------------------------------------------
// The demo (the repository's routes.toml and bookstore), path items, Allow,
// schemas, and a property-based client.
// ---------------------------------------------------------------------------

/// The repository's routes.toml pointed at `backend`, listening on an
/// ephemeral port, with the document served and without the per-client
/// rate limit (a property-based client sends hundreds of requests a second).
fn demo_config(backend: &str) -> String {
    let text = std::fs::read_to_string(repo_root().join("routes.toml")).expect("read routes.toml");
    let rate_limits = "[rate_limits]\ndefault = [\"per_ip\"]";
    for needle in [
        "listen = \"127.0.0.1:8080\"",
        "\"127.0.0.1:50051\"",
        "descriptors = \"descriptors\"",
        rate_limits,
    ] {
        assert!(
            text.contains(needle),
            "routes.toml no longer contains {needle}"
        );
    }
    let mut text = text
        .replace("listen = \"127.0.0.1:8080\"", "listen = \"127.0.0.1:0\"")
        .replace("\"127.0.0.1:50051\"", &format!("\"{backend}\""))
        .replace(
            "descriptors = \"descriptors\"",
            &format!(
                "descriptors = \"{}\"",
                toml_path(&repo_root().join("descriptors"))
            ),
        )
        .replace(rate_limits, "[rate_limits]\ndefault = []");
    if !text.contains("\n[openapi]") {
        text.push_str("\n[openapi]\npath = \"/openapi.json\"\n");
    }
    text
}

async fn start_demo() -> TestGateway {
    let backend = spawn_backend(bookstore::server(&bookstore_pool())).await;
    TestGateway::start_with(
        &demo_config(&backend),
        &backend,
        &repo_root().join("descriptors"),
    )
    .await
}

/// Methods of a path item as the `Allow` header spells them.
fn item_methods(item: &Value) -> Vec<String> {
    let mut m: Vec<String> = item
        .as_object()
        .unwrap()
        .keys()
        .map(|k| {
            k.strip_prefix("x-method-")
                .unwrap_or(k)
                .to_ascii_uppercase()
        })
        .collect();
    m.sort();
    m
}

/// A concrete request path for an OpenAPI path: each `{param}` replaced by
/// a value its schema accepts ("1", or a sample of a segments pattern).
fn sample_path(path: &str, item: &Value) -> String {
    let params: Vec<Value> = item
        .as_object()
        .unwrap()
        .values()
        .flat_map(|op| op["parameters"].as_array().cloned().unwrap_or_default())
        .collect();
    let mut out = path.to_owned();
    while let Some(open) = out.find('{') {
        let close = open + out[open..].find('}').unwrap();
        let name = &out[open + 1..close];
        let pattern = params
            .iter()
            .find(|p| p["name"] == name && p["in"] == "path")
            .and_then(|p| p["schema"]["pattern"].as_str())
            .filter(|p| p.contains('/'));
        let value = match pattern {
            Some(p) => p
                .trim_start_matches('^')
                .trim_end_matches('$')
                .replace("[^/]+", "1")
                .replace(".*", "1")
                .replace('\\', ""),
            None => "1".to_owned(),
        };
        out.replace_range(open..=close, &value);
    }
    out
}

/// For every path item: a method it does not list gets 405 with an `Allow`
/// header naming exactly its operations. A HEAD the gateway answers for a
/// GET route is not an operation of its own, so HEAD beside GET is ignored.
async fn assert_allow_matches_document(gw: &TestGateway, doc: &Value) {
    for (path, item) in doc["paths"].as_object().unwrap() {
        let methods = item_methods(item);
        let Some(probe) = ["PUT", "POST", "PATCH", "DELETE", "GET"]
            .into_iter()
            .find(|m| !methods.iter().any(|x| x == m))
        else {
            continue;
        };
        let url = sample_path(path, item);
        let r = gw.request(probe, &url, &[], None).await;
        r.assert_error(405, 12, "is not allowed");
        let mut allow: Vec<String> = r
            .header("allow")
            .split(',')
            .map(|m| m.trim().to_owned())
            .filter(|m| !(m == "HEAD" && methods.iter().any(|x| x == "GET")))
            .collect();
        allow.sort();
        assert_eq!(allow, methods, "{probe} {url} (path item {path})");
    }
}

/// No two path items differ only in parameter names, and every parameter
/// name is an identifier (no dots for generators to trip on).
fn assert_path_items_are_distinct_shapes(doc: &Value) {
    let mut shapes = std::collections::BTreeSet::new();
    for path in doc["paths"].as_object().unwrap().keys() {
        let mut shape = String::new();
        let mut rest = path.as_str();
        while let Some(open) = rest.find('{') {
            let close = open + rest[open..].find('}').unwrap();
            let name = &rest[open + 1..close];
            let ident = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            assert!(ident, "parameter {name:?} of {path}");
            shape.push_str(&rest[..open]);
            shape.push_str("{}");
            rest = &rest[close + 1..];
        }
        shape.push_str(rest);
        assert!(shapes.insert(shape), "{path} repeats a URL shape");
    }
}

#[tokio::test]
async fn one_path_item_per_url_shape_with_generator_safe_names() {
    let gw = start_demo().await;
    let doc = gw.get("/openapi.json").await.ok().clone();
    assert_valid(&doc);
    // GET and DELETE bind {book}, PATCH binds {book.id}: one URL shape.
    let paths: Vec<&String> = doc["paths"].as_object().unwrap().keys().collect();
    assert!(!paths.iter().any(|p| p.contains("{book.id}")), "{paths:?}");
    assert_path_items_are_distinct_shapes(&doc);
    let item = &doc["paths"]["/v1/shelves/{shelf}/books/{book}"];
    assert_eq!(item_methods(item), ["DELETE", "GET", "PATCH"]);
    for (method, o) in item.as_object().unwrap() {
        assert_eq!(param_names(o, "path"), ["shelf", "book"], "{method}");
    }
    let book = &item["patch"]["parameters"][1];
    assert_eq!(book["description"], "Sets the field `book.id`.");
    assert_eq!(book["schema"]["format"], "int64");
}

#[tokio::test]
async fn allow_header_lists_the_documented_operations() {
    let gw = start_demo().await;
    let doc = gw.get("/openapi.json").await.ok().clone();
    assert_allow_matches_document(&gw, &doc).await;
}

/// A self-contained API whose routes bind one URL shape three ways, with
/// every field behavior the document maps.
const SHAPES_PROTO: &str = r#"syntax = "proto3";
package shapes.v1;
import "google/api/field_behavior.proto";
service Library {
  rpc GetBook(GetBookRequest) returns (Book);
  rpc DeleteBook(DeleteBookRequest) returns (Book);
  rpc UpdateBook(UpdateBookRequest) returns (Book);
}
message Book {
  int64 id = 1;
  string title = 2 [(google.api.field_behavior) = REQUIRED];
  repeated string tags = 3 [(google.api.field_behavior) = REQUIRED];
  uint64 size = 4 [(google.api.field_behavior) = OUTPUT_ONLY];
  string secret = 5 [(google.api.field_behavior) = INPUT_ONLY];
  Book sequel = 6 [(google.api.field_behavior) = OUTPUT_ONLY];
}
message GetBookRequest { string name = 1; }
message DeleteBookRequest { string shelf = 1; int64 book = 2; }
message UpdateBookRequest { string shelf = 1; Book book = 2; }
"#;

const SHAPES_CONFIG: &str = r#"[server]
listen = "127.0.0.1:0"
descriptors = "{descriptors}"
{extra}

[openapi]
path = "/openapi.json"

[backends.library]
endpoints = ["{backend}"]
services = ["shapes.v1.Library"]

[[routes]]
method = "GET"
path = "/v1/{name=shelves/*/books/*}"
grpc = "shapes.v1.Library/GetBook"

[[routes]]
method = "DELETE"
path = "/v1/shelves/{shelf}/books/{book}"
grpc = "shapes.v1.Library/DeleteBook"

[[routes]]
method = "PATCH"
path = "/v1/shelves/{shelf}/books/{book.id}"
grpc = "shapes.v1.Library/UpdateBook"
body = "book"
"#;

/// The shapes API behind a gateway whose backend is never reached (the
/// document and 405s are answered before any backend call).
async fn start_shapes(extra: &str) -> TestGateway {
    let dir = gateway_tests::temp_dir("openapi-shapes");
    std::fs::write(dir.join("shapes.proto"), SHAPES_PROTO).unwrap();
    let config = SHAPES_CONFIG.replace("{extra}", extra);
    let gw = TestGateway::start_with(&config, &dead_addr().await, &dir).await;
    // The snapshot holds the compiled descriptors; the folder is not needed.
    let _ = std::fs::remove_dir_all(&dir);
    gw
}

#[tokio::test]
async fn mixed_variable_spans_share_one_path_item() {
    let gw = start_shapes("").await;
    let doc = gw.get("/openapi.json").await.ok().clone();
    assert_valid(&doc);
    let paths: Vec<&String> = doc["paths"].as_object().unwrap().keys().collect();
    assert_eq!(paths, ["/v1/shelves/{shelf}/books/{book}"]);
    let item = &doc["paths"]["/v1/shelves/{shelf}/books/{book}"];
    assert_eq!(item_methods(item), ["DELETE", "GET", "PATCH"]);
    for (method, o) in item.as_object().unwrap() {
        assert_eq!(param_names(o, "path"), ["shelf", "book"], "{method}");
    }
    // GET sets `name` from both segments.
    assert_eq!(
        item["get"]["parameters"][0]["description"],
        "Part of the field `name`, which is set to `shelves/{shelf}/books/{book}`."
    );
    assert_eq!(item["get"]["parameters"][1]["schema"]["pattern"], "^[^/]+$");
    assert_allow_matches_document(&gw, &doc).await;
}

#[tokio::test]
async fn schemas_close_objects_and_carry_field_behavior() {
    let gw = start_shapes("").await;
    let doc = gw.get("/openapi.json").await.ok().clone();
    assert_valid(&doc);
    let book = &doc["components"]["schemas"]["shapes.v1.Book"];
    assert_eq!(book["additionalProperties"], false, "{book}");
    assert_eq!(book["required"], json!(["title", "tags"]));
    let props = &book["properties"];
    assert_eq!(props["title"]["minLength"], 1);
    assert_eq!(props["tags"]["minItems"], 1);
    assert_eq!(props["size"]["readOnly"], true);
    assert_eq!(props["secret"]["writeOnly"], true);
    assert_eq!(
        props["sequel"],
        json!({"$ref": "#/components/schemas/shapes.v1.Book", "readOnly": true})
    );
    assert!(props["title"]["readOnly"].is_null() && props["id"]["readOnly"].is_null());
    // 64-bit integers: written as strings, read as strings or numbers.
    assert_eq!(
        props["id"],
        json!({"type": ["string", "integer"], "format": "int64", "pattern": "^-?[0-9]+$",
               "minimum": i64::MIN, "maximum": i64::MAX})
    );
    assert_eq!(
        props["size"]["type"],
        json!(["string", "integer"]),
        "{}",
        props["size"]
    );
    assert_eq!(props["size"]["pattern"], "^[0-9]+$");
    assert_eq!(props["size"]["maximum"], u64::MAX);

    // Where unknown fields are dropped, objects are open.
    let gw = start_shapes("unknown_fields = \"ignore\"").await;
    let doc = gw.get("/openapi.json").await.ok().clone();
    let book = &doc["components"]["schemas"]["shapes.v1.Book"];
    assert!(book["additionalProperties"].is_null(), "{book}");
}

/// Pinned as in .ci/run: a new release can add checks or change the CLI.
const SCHEMATHESIS: &str = "schemathesis==4.32.5";

/// Runs schemathesis against the document `gw` serves: generated requests
/// for every documented operation (valid and invalid ones), each answer
/// checked for a 5xx and against the document's schemas. A fixed seed and
/// example count keep the run short and repeatable. None when schemathesis
/// is missing (only allowed outside CI); else its success and output.
///
/// Only the demo runs it: the echo routes include ones that fail or time
/// out on request (/v1/fail, /v1/sleep), and 29 operations take over two
/// minutes.
async fn schemathesis(gw: &TestGateway, max_examples: u32) -> Option<(bool, String)> {
    let have = tokio::task::spawn_blocking(|| have_python_module("schemathesis", SCHEMATHESIS))
        .await
        .unwrap();
    if !have {
        assert!(
            !under_ci(),
            "schemathesis is not installed; .ci/run installs it with pip"
        );
        eprintln!("SKIPPED: schemathesis is not installed (pip install {SCHEMATHESIS})");
        return None;
    }
    let url = gw.url("/openapi.json");
    // Schemathesis keeps a cache in its working directory: not in the tree.
    let dir = gateway_tests::temp_dir("schemathesis");
    let cwd = dir.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .current_dir(cwd)
            .args(["-m", "schemathesis.cli", "run", &url])
            .args(["--checks", "not_a_server_error,response_schema_conformance"])
            .args(["--max-examples", &max_examples.to_string()])
            .args(["--seed", "1", "--workers", "1"])
            .args(["--generation-database", "none", "--no-color"])
            .args(["--request-timeout", "10"])
            // schemathesis cannot generate NDJSON request bodies (the demo's
            // client-streaming ImportBooks); tests/tests/streaming.rs and
            // the docs examples (tests/tests/readme.rs) cover that route.
            .args(["--exclude-path-regex", ":import$"])
            .output()
            .expect("run schemathesis")
    })
    .await
    .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success(), text))
}

/// The demo, as a new user runs it (about 20 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn property_based_client_finds_no_server_error_or_schema_mismatch() {
    let gw = start_demo().await;
    let Some((ok, text)) = schemathesis(&gw, 25).await else {
        return;
    };
    assert!(ok, "schemathesis failed:\n{text}");
    // Every documented operation was tested, but the excluded NDJSON upload.
    let doc = gw.get("/openapi.json").await.ok().clone();
    let n: usize = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(path, _)| !path.ends_with(":import"))
        .map(|(_, i)| i.as_object().unwrap().len())
        .sum();
    assert!(n >= 9, "{n} operations");
    assert!(text.contains(&format!("Tested: {n}\n")), "{text}");
}

/// Checks `value` against the document's schema at `pointer` (a JSON
/// pointer into `doc`) with openapi-schema-validator (installed with
/// openapi-spec-validator); Err holds its complaint.
fn conforms(doc: &Value, pointer: &str, value: &Value) -> Result<(), String> {
    if !have_python_module("openapi_schema_validator", "openapi-spec-validator") {
        assert!(!under_ci(), "openapi-schema-validator is not installed");
        eprintln!("SKIPPED schema check: openapi-schema-validator is not installed");
        return Ok(());
    }
    // The schema is the whole document plus a $ref, so $refs resolve.
    let mut root = doc.clone();
    root["$ref"] = Value::String(format!("#{pointer}"));
    let dir = gateway_tests::temp_dir("openapi-conforms");
    let file = dir.join("check.json");
    std::fs::write(&file, serde_json::to_vec(&json!([root, value])).unwrap()).unwrap();
    let script = "import json, sys\n\
        from openapi_schema_validator import OAS31Validator\n\
        schema, value = json.load(open(sys.argv[1]))\n\
        OAS31Validator(schema).validate(value)\n";
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&file)
        .output()
        .expect("run python3");
    let _ = std::fs::remove_dir_all(&dir);
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test]
async fn replies_with_unnamed_enum_numbers_and_non_finite_floats_match_the_document() {
    let backend = spawn_backend(gateway_tests::echo_server(&gateway_tests::testing_pool())).await;
    let mut config = echo_config("");
    config.push_str("\n[openapi]\npath = \"/openapi.json\"\n");
    let gw = TestGateway::start_with(&config, &backend, &testing_descriptors()).await;
    let doc = gw.get("/openapi.json").await.ok().clone();
    let schema = "/paths/~1v1~1echo/post/responses/200/content/application~1json/schema";
    // proto3 enums are open and floats may be non-finite: the gateway reads
    // and writes both, so the document must allow them.
    let sent = json!({
        "color": 7,
        "colors": ["RED", 9],
        "doubleField": "NaN",
        "floatField": "-Infinity",
        "int64Field": 5
    });
    let r = gw.post("/v1/echo", &sent).await;
    let reply = r.ok().clone();
    assert_eq!(reply["color"], 7, "{reply}");
    assert_eq!(reply["colors"], json!(["RED", 9]));
    assert_eq!(reply["doubleField"], "NaN");
    assert_eq!(reply["floatField"], "-Infinity");
    assert_eq!(reply["int64Field"], "5");
    if let Err(e) = conforms(&doc, schema, &reply) {
        panic!("the reply {reply} does not match its schema:\n{e}");
    }
    // And the check is real: a string where an integer belongs is refused.
    let mut wrong = reply.clone();
    wrong["int32Field"] = json!("x");
    assert!(conforms(&doc, schema, &wrong).is_err());
}

/// examples/validation's routes, answered from the document alone.
const SIGNUP_CONFIG: &str = r#"[server]
listen = "127.0.0.1:0"
descriptors = "{descriptors}"

[openapi]
path = "/openapi.json"

[backends.signup]
endpoints = ["{backend}"]
services = ["example.signup.v1.Signup"]

[[routes]]
method = "POST"
path = "/v1/accounts"
grpc = "example.signup.v1.Signup/CreateAccount"
body = "*"

[[routes]]
method = "GET"
path = "/v1/accounts/{id}"
grpc = "example.signup.v1.Signup/GetAccount"
"#;

#[tokio::test]
async fn protovalidate_rules_are_keywords_a_schema_validator_enforces() {
    let descriptors = repo_root().join("examples/validation/descriptors");
    let gw = TestGateway::start_with(SIGNUP_CONFIG, &dead_addr().await, &descriptors).await;
    let doc = gw.get("/openapi.json").await.ok().clone();
    assert_valid(&doc);
    let schema = "/paths/~1v1~1accounts/post/requestBody/content/application~1json/schema";
    let good = json!({
        "username": "ada.lovelace",
        "email": "ada@example.com",
        "password": "analytical engine",
        "age": 36,
        "interests": ["math", "engines"],
        "country": "GB"
    });
    if !have_python_module("openapi_schema_validator", "openapi-spec-validator") {
        assert!(!under_ci(), "openapi-schema-validator is not installed");
        eprintln!("SKIPPED schema checks: openapi-schema-validator is not installed");
        return;
    }
    if let Err(e) = conforms(&doc, schema, &good) {
        panic!("a request keeping every rule does not match its schema:\n{e}");
    }
    // Each request breaks one rule the document states as a keyword.
    let broken = [
        ("username", json!("al")),                            // minLength 3
        ("username", json!("Ada")),                           // pattern
        ("username", json!("a".repeat(33))),                  // maxLength 32
        ("password", json!("short")),                         // minLength 12
        ("age", json!(7)),                                    // minimum 13
        ("age", json!(151)),                                  // maximum 150
        ("interests", json!(["math", "math"])),               // uniqueItems
        ("interests", json!(["a", "b", "c", "d", "e", "f"])), // maxItems 5
        ("interests", json!([""])),                           // items' minLength 1
        ("country", json!("gb")),                             // pattern
    ];
    for (field, value) in broken {
        let mut bad = good.clone();
        bad[field] = value.clone();
        assert!(
            conforms(&doc, schema, &bad).is_err(),
            "{field} = {value} matches the schema"
        );
    }
    // `required`: email must be there.
    let mut no_email = good.clone();
    no_email.as_object_mut().unwrap().remove("email");
    assert!(
        conforms(&doc, schema, &no_email).is_err(),
        "a request without email matches the schema"
    );
}
