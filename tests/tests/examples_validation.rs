//! examples/validation as its README runs it: `gateway demo` on the
//! example's routes.toml starts the sign-up backend; accounts are created
//! and read over REST, and the OpenAPI document carries the request rules
//! (protovalidate annotations) as JSON Schema keywords.
//!
//! The README's request breaking the rules is refused naming each field;
//! every rule kind is tested in validation.rs, here the example's wiring,
//! its cache, its fallback and its document are.

use std::path::PathBuf;

use gateway_tests::binary::spawn_listening;
use gateway_tests::{dead_addr, http_client, repo_root, toml_path, write_config};
use serde_json::{json, Value};

fn example_dir() -> PathBuf {
    repo_root().join("examples/validation")
}

/// The example's routes.toml on free ports, its descriptors named by
/// absolute path (the copy lives in a temp folder).
async fn example_config() -> PathBuf {
    let text = std::fs::read_to_string(example_dir().join("routes.toml")).unwrap();
    let backend = dead_addr().await;
    let admin = dead_addr().await;
    let replacements = [
        (
            "listen = \"127.0.0.1:8084\"",
            "listen = \"127.0.0.1:0\"".to_owned(),
        ),
        (
            "listen = \"127.0.0.1:9084\"",
            format!("listen = \"{admin}\""),
        ),
        ("\"127.0.0.1:50054\"", format!("\"{backend}\"")),
        (
            "descriptors = \"descriptors\"",
            format!(
                "descriptors = \"{}\"",
                toml_path(&example_dir().join("descriptors"))
            ),
        ),
    ];
    let mut text = text;
    for (needle, with) in replacements {
        assert!(
            text.contains(needle),
            "examples/validation/routes.toml no longer has {needle}"
        );
        text = text.replace(needle, &with);
    }
    write_config(&text)
}

#[test]
fn the_readme_runs_the_example_as_configured() {
    let readme = std::fs::read_to_string(example_dir().join("README.md")).unwrap();
    for needle in [
        "cargo run -p gateway -- demo --config examples/validation/routes.toml",
        "localhost:8084/v1/accounts",
        "localhost:8084/openapi.json",
    ] {
        assert!(
            readme.contains(needle),
            "examples/validation/README.md no longer has {needle}"
        );
    }
    let root = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    assert!(
        root.contains("(examples/validation/)") || root.contains("(examples/validation)"),
        "README.md does not link examples/validation"
    );
}

#[tokio::test]
async fn the_validation_example_creates_gets_and_documents_its_rules() {
    let config = example_config().await;
    let (mut child, addr) =
        spawn_listening(&["demo", "--config", config.to_str().expect("utf-8 path")]).await;
    let client = http_client();

    // A valid account: 201, its address, an id the backend assigned.
    let sent = json!({
        "username": "ada.lovelace",
        "email": "ada@example.com",
        "password": "analytical engine",
        "age": 36,
        "interests": ["math", "engines"],
        "country": "GB"
    });
    let created = client
        .post(format!("http://{addr}/v1/accounts"))
        .json(&sent)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let location = created.headers()["location"].to_str().unwrap().to_owned();
    let account: Value = created.json().await.unwrap();
    let id = account["id"].as_str().expect("an id").to_owned();
    assert_eq!(location, format!("/v1/accounts/{id}"));
    for field in ["username", "email", "age", "interests", "country"] {
        assert_eq!(account[field], sent[field], "{field} in {account}");
    }
    // INPUT_ONLY: the password is never answered.
    assert!(account.get("password").is_none(), "{account}");

    // The README's request breaking several rules: a 400 naming each
    // field, and no account made (the next one created gets the next id).
    let bad = client
        .post(format!("http://{addr}/v1/accounts"))
        .json(&json!({
            "username": "Al", "password": "Al-Al-Al-Al-Al", "age": 7,
            "interests": ["math", "math"], "country": "gb"
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let status: Value = bad.json().await.unwrap();
    assert_eq!(status["code"], 3, "{status}");
    let violations: Vec<&str> = status["details"][0]["fieldViolations"]
        .as_array()
        .map(|v| v.iter().filter_map(|f| f["field"].as_str()).collect())
        .unwrap_or_default();
    for field in ["username", "email", "age", "interests", "country"] {
        assert!(violations.contains(&field), "{field} not in {status}");
    }

    // Read back through the path the Location header names.
    let got = client
        .get(format!("http://{addr}{location}"))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
    // The route's cache: a validator and the route's Cache-Control.
    let etag = got.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(got.headers()["cache-control"], "public, max-age=30");
    assert_eq!(got.json::<Value>().await.unwrap(), account);
    let again = client
        .get(format!("http://{addr}{location}"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    assert_eq!(again.headers()["etag"], etag.as_str());

    // The policy, from the backend while it is up: not degraded.
    let policy = client
        .get(format!("http://{addr}/v1/signup-policy"))
        .send()
        .await
        .unwrap();
    assert_eq!(policy.status(), 200);
    assert!(policy.headers().get("gateway-degraded").is_none());
    let policy: Value = policy.json().await.unwrap();
    assert_eq!(policy["open"], true, "{policy}");

    // An id nobody created: NOT_FOUND from the backend.
    let missing = client
        .get(format!(
            "http://{addr}/v1/accounts/00000000-0000-4000-8000-0000000000ff"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let status: Value = missing.json().await.unwrap();
    assert_eq!(status["code"], 5, "{status}");

    // The document states the rules.
    let doc: Value = client
        .get(format!("http://{addr}/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let schemas = &doc["components"]["schemas"];
    let req = &schemas["example.signup.v1.CreateAccountRequest"];
    let props = &req["properties"];
    assert_eq!(props["username"]["minLength"], 3, "{req:#}");
    assert_eq!(props["username"]["maxLength"], 32);
    assert_eq!(props["username"]["pattern"], "^[a-z][a-z0-9._]*$");
    assert_eq!(props["email"]["format"], "email");
    assert_eq!(req["required"], json!(["email"]));
    assert_eq!(props["password"]["minLength"], 12);
    assert_eq!(props["password"]["writeOnly"], true);
    assert_eq!(props["age"]["minimum"], 13);
    assert_eq!(props["age"]["maximum"], 150);
    assert_eq!(props["interests"]["maxItems"], 5);
    assert_eq!(props["interests"]["uniqueItems"], true);
    assert_eq!(props["interests"]["items"]["maxLength"], 20);
    assert_eq!(props["country"]["pattern"], "^[A-Z]{2}$");
    let description = req["description"].as_str().unwrap_or_default();
    assert!(
        description.contains("Rule: password must not contain the username"),
        "{description}"
    );
    let account_schema = &schemas["example.signup.v1.Account"]["properties"];
    assert_eq!(account_schema["id"]["readOnly"], true);
    assert_eq!(account_schema["createTime"]["readOnly"], true);
    let get = &doc["paths"]["/v1/accounts/{id}"]["get"];
    assert_eq!(get["parameters"][0]["schema"]["format"], "uuid", "{get:#}");

    child.start_kill().expect("kill the demo gateway");
    let _ = child.wait().await;
    gateway_tests::remove_temp_parent(&config);
}

#[tokio::test]
async fn without_its_backend_the_example_answers_its_fallback() {
    // `serve` starts no example backend: the signup endpoint refuses.
    let config = example_config().await;
    let (mut child, addr) =
        spawn_listening(&["serve", "--config", config.to_str().expect("utf-8 path")]).await;
    let client = http_client();

    let policy = client
        .get(format!("http://{addr}/v1/signup-policy"))
        .send()
        .await
        .unwrap();
    assert_eq!(policy.status(), 200);
    assert_eq!(policy.headers()["gateway-degraded"], "static");
    let body: Value = policy.json().await.unwrap();
    // `open = false`, the default: proto3 JSON leaves it out.
    assert!(!body["open"].as_bool().unwrap_or(false), "{body}");
    assert!(
        body["message"].as_str().unwrap_or("").contains("paused"),
        "{body}"
    );

    // No fallback and nothing cached for this one: the plain 503.
    let account = client
        .get(format!(
            "http://{addr}/v1/accounts/00000000-0000-4000-8000-000000000001"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(account.status(), 503);
    assert!(account.headers().get("gateway-degraded").is_none());

    child.start_kill().expect("kill the gateway");
    let _ = child.wait().await;
    gateway_tests::remove_temp_parent(&config);
}
