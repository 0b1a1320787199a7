//! The generated OpenAPI 3.1 document: valid per a real validator
//! (openapi-spec-validator, installed by .ci/run), every route present with
//! its parameters, proto comments as descriptions, streaming described,
//! served on the listener and following the routes on reload.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use gateway::server::Gateway;
use gateway::snapshot::Snapshot;
use gateway_tests::streaming::{descriptors, start, CONFIG};
use gateway_tests::{
    echo_config, http_client, remove_temp_parent, render_config, testing_descriptors, toml_path,
    write_config, TestGateway,
};
use serde_json::{json, Value};

/// Validates `doc` with openapi-spec-validator; Err holds its complaint.
/// Ok(false) when the validator is not installed (only allowed outside CI).
fn validate(doc: &Value) -> Result<bool, String> {
    // On a fresh machine, fetch the validator from PyPI once (.ci/run
    // installs it too), so the README's test command really validates.
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let have = Command::new("python3")
            .args(["-c", "import openapi_spec_validator"])
            .status()
            .is_ok_and(|s| s.success());
        if !have {
            eprintln!("installing openapi-spec-validator with pip");
            let _ = Command::new("python3")
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "openapi-spec-validator",
                ])
                .status();
        }
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
        Ok(false) if std::env::var("CI").is_ok_and(|v| v == "true") => {
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
}

#[tokio::test]
async fn echo_routes_document_is_valid_too() {
    // Every field type, wildcards, verbs, nested path variables, maps.
    let gw = TestGateway::echo("").await;
    let snap = Snapshot::load(&gw.config_path).unwrap();
    let doc = gateway::openapi::document(&snap);
    assert_valid(&doc);
    let o = op(&doc, "/v1/deep/{inner.deeper.value}", "get");
    assert_eq!(param_names(o, "path"), ["inner.deeper.value"]);
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
        schema["int64Field"]["type"], "string",
        "int64 is a string in JSON"
    );
    assert_eq!(schema["timestamp"]["format"], "date-time");
    assert_eq!(schema["labels"]["additionalProperties"]["type"], "string");
    assert_eq!(
        schema["color"]["$ref"],
        "#/components/schemas/testing.v1.Color"
    );
    assert_eq!(
        doc["components"]["schemas"]["testing.v1.Color"]["enum"],
        json!(["COLOR_UNSPECIFIED", "RED", "GREEN", "BLUE"])
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
                    route.grpc_method.parent_service().full_name(),
                    route.grpc_method.name()
                )
                && param_names(&item[&method], "path")
                    == route
                        .template
                        .variables
                        .iter()
                        .map(|v| v.name())
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
