//! `Snapshot::load` on broken configurations: every problem is reported, at
//! once, with the file, the line and the key path.

use std::path::{Path, PathBuf};

use gateway::snapshot::Snapshot;
use gateway_tests::{line_of, nth_line_of, temp_dir, testing_descriptors, toml_path, write_config};

/// A backend serving `testing.v1.Echo`, no routes from annotations (shared
/// with the snapshot's unit tests).
const HEAD: &str = include_str!("../fixtures/echo_backend.toml");

/// The config text with the fixture descriptors filled in.
fn config(rest: &str) -> String {
    format!("{HEAD}\n{rest}").replace("{descriptors}", &toml_path(&testing_descriptors()))
}

/// Loads `text` and expects it to fail; returns (path, error lines).
async fn load_err(text: &str) -> (PathBuf, Vec<String>) {
    let path = write_config(text);
    let result = Snapshot::load(&path);
    gateway_tests::remove_temp_parent(&path);
    match result {
        Ok(s) => panic!("config loaded but should not have: {s:?}\n{text}"),
        Err(e) => {
            let lines = e.to_string().lines().map(str::to_owned).collect::<Vec<_>>();
            assert_eq!(lines.len(), e.0.len(), "one line per error: {e}");
            (path, lines)
        }
    }
}

/// Asserts that one error line starts with `file:line: field: ` and
/// contains `message`.
#[track_caller]
fn assert_has(errors: &[String], path: &Path, line: usize, field: &str, message: &str) {
    let prefix = format!("{}:{line}: {field}: ", path.display());
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with(&prefix) && e.contains(message)),
        "no error starting with {prefix:?} and containing {message:?} in:\n{}",
        errors.join("\n")
    );
}

#[tokio::test]
async fn valid_config_loads() {
    let text = config(
        r#"[[routes]]
method = "GET"
path = "/v1/{string_field}"
grpc = "testing.v1.Echo/Echo"
"#,
    );
    let path = write_config(&text);
    let s = Snapshot::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.routes.len(), 1);
    assert_eq!(
        s.routes[0].source.to_string(),
        format!("{}:{}", path.display(), line_of(&text, "[[routes]]"))
    );
}

#[tokio::test]
async fn unknown_grpc_method_names_the_grpc_key_and_lists_methods() {
    let text = config(
        r#"[[routes]]
method = "GET"
path = "/v1/x"
grpc = "testing.v1.Echo/Nope"
"#,
    );
    let (path, errors) = load_err(&text).await;
    assert_has(
        &errors,
        &path,
        line_of(&text, "Echo/Nope"),
        "routes[0].grpc",
        "no method \"Nope\"",
    );
    assert_has(
        &errors,
        &path,
        line_of(&text, "Echo/Nope"),
        "routes[0].grpc",
        "EchoAgain",
    );
}

#[tokio::test]
async fn unknown_service_names_the_grpc_key() {
    let text = config(
        r#"[[routes]]
method = "GET"
path = "/v1/x"
grpc = "testing.v1.Nope/Echo"
"#,
    );
    let (path, errors) = load_err(&text).await;
    assert_has(
        &errors,
        &path,
        line_of(&text, "Nope/Echo"),
        "routes[0].grpc",
        "testing.v1.Nope",
    );
}

#[tokio::test]
async fn grpc_without_a_method_is_rejected() {
    let text = config(
        r#"[[routes]]
method = "GET"
path = "/v1/x"
grpc = "Echo"
"#,
    );
    let (path, errors) = load_err(&text).await;
    assert_has(
        &errors,
        &path,
        line_of(&text, "grpc = \"Echo\""),
        "routes[0].grpc",
        "package.Service/Method",
    );
}

#[tokio::test]
async fn unknown_service_under_a_backend_names_the_services_key() {
    let text = config("").replace(
        "services = [\"testing.v1.Echo\"]",
        "services = [\"testing.v1.Echo\", \"testing.v1.Missing\"]",
    );
    let (path, errors) = load_err(&text).await;
    assert_has(
        &errors,
        &path,
        line_of(&text, "Missing"),
        "backends.echo.services",
        "testing.v1.Missing",
    );
}

#[tokio::test]
async fn path_variable_naming_a_missing_field_is_reported() {
    let text = config(
        r#"[[routes]]
method = "GET"
path = "/v1/{missing}"
grpc = "testing.v1.Echo/Echo"
"#,
    );
    let (path, errors) = load_err(&text).await;
    assert_has(
        &errors,
        &path,
        line_of(&text, "{missing}"),
        "routes[0].path",
        "\"missing\" does not exist",
    );
}

#[tokio::test]
async fn path_variable_with_a_missing_nested_field_is_reported() {
    let text = config(
        r#"[[routes]]
method = "GET"
path = "/v1/{inner.deeper.nope}"
grpc = "testing.v1.Echo/Echo"
"#,
    );
    let (path, errors) = load_err(&text).await;
    assert_has(
        &errors,
        &path,
        line_of(&text, "{inner.deeper.nope}"),
        "routes[0].path",
        "\"nope\" does not exist",
    );
}

#[tokio::test]
async fn path_variable_on_a_message_field_is_rejected() {
    let text = config(
        r#"[[routes]]
method = "GET"
path = "/v1/{inner}"
grpc = "testing.v1.Echo/Echo"
"#,
    );
    let (path, errors) = load_err(&text).await;
    assert_has(
        &errors,
        &path,
        line_of(&text, "{inner}"),
        "routes[0].path",
        "is a message",
    );
}

#[tokio::test]
async fn path_variable_on_a_repeated_field_is_rejected() {
    let text = config(
        r#"[[routes]]
method = "GET"
path = "/v1/{tags}"
grpc = "testing.v1.Echo/Echo"

[[routes]]
method = "GET"
path = "/v2/{labels}"
grpc = "testing.v1.Echo/Echo"
"#,
    );
    let (path, errors) = load_err(&text).await;
    assert_has(
        &errors,
        &path,
        line_of(&text, "{tags}"),
        "routes[0].path",
        "repeated",
    );
    assert_has(
        &errors,
        &path,
        line_of(&text, "{labels}"),
        "routes[1].path",
        "labels",
    );
}

#[tokio::test]
async fn path_variable_below_a_scalar_is_rejected() {
    let text = config(
        r#"[[routes]]
method = "GET"
path = "/v1/{string_field.x}"
grpc = "testing.v1.Echo/Echo"
"#,
    );
    let (path, errors) = load_err(&text).await;
    assert_has(
        &errors,
        &path,
        line_of(&text, "{string_field.x}"),
        "routes[0].path",
        "not a message",
    );
}

#[tokio::test]
async fn bad_path_template_is_reported_with_its_position() {
    let text = config(
        r#"[[routes]]
method = "GET"
path = "/v1//x"
grpc = "testing.v1.Echo/Echo"
"#,
    );
    let (path, errors) = load_err(&text).await;
    assert_has(
        &errors,
        &path,
        line_of(&text, "/v1//x"),
        "routes[0].path",
        "empty segment",
    );
}

#[tokio::test]
async fn body_field_missing_names_the_body_key() {
    let text = config(
        r#"[[routes]]
method = "POST"
path = "/v1/x"
grpc = "testing.v1.Echo/Echo"
body = "nope"
"#,
    );
    let (path, errors) = load_err(&text).await;
    assert_has(
        &errors,
        &path,
        line_of(&text, "body = \"nope\""),
        "routes[0].body",
        "\"nope\" does not exist",
    );
}

#[tokio::test]
async fn response_body_missing_names_the_response_body_key() {
    let text = config(
        r#"[[routes]]
method = "GET"
path = "/v1/x"
grpc = "testing.v1.Echo/Echo"
response_body = "nope"
"#,
    );
    let (path, errors) = load_err(&text).await;
    assert_has(
        &errors,
        &path,
        line_of(&text, "response_body = \"nope\""),
        "routes[0].response_body",
        "\"nope\" does not exist",
    );
}

#[tokio::test]
async fn colliding_routes_name_the_second_and_point_at_the_first() {
    let text = config(
        r#"[[routes]]
method = "GET"
path = "/v1/x/{string_field}"
grpc = "testing.v1.Echo/Echo"

[[routes]]
method = "GET"
path = "/v1/x/{name}"
grpc = "testing.v1.Echo/EchoAgain"
"#,
    );
    let (path, errors) = load_err(&text).await;
    let first = format!("{}:{}", path.display(), line_of(&text, "[[routes]]"));
    assert_has(
        &errors,
        &path,
        line_of(&text, "/v1/x/{name}"),
        "routes[1].path",
        "collides",
    );
    assert_has(
        &errors,
        &path,
        line_of(&text, "/v1/x/{name}"),
        "routes[1].path",
        &first,
    );
}

#[tokio::test]
async fn same_path_with_different_methods_does_not_collide() {
    let text = config(
        r#"[[routes]]
method = "GET"
path = "/v1/x/{string_field}"
grpc = "testing.v1.Echo/Echo"

[[routes]]
method = "DELETE"
path = "/v1/x/{name}"
grpc = "testing.v1.Echo/EchoAgain"
"#,
    );
    let path = write_config(&text);
    let s = Snapshot::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.routes.len(), 2);
}

#[tokio::test]
async fn undefined_backend_is_reported_at_the_backend_key() {
    let text = config(
        r#"[[routes]]
method = "GET"
path = "/v1/x"
grpc = "testing.v1.Echo/Echo"
backend = "ghost"
"#,
    );
    let (path, errors) = load_err(&text).await;
    assert_has(
        &errors,
        &path,
        line_of(&text, "\"ghost\""),
        "routes[0].backend",
        "\"ghost\" is not defined",
    );
}

#[tokio::test]
async fn route_without_any_backend_for_its_service_is_reported() {
    let text = config(
        r#"[[routes]]
method = "GET"
path = "/v1/x"
grpc = "testing.v1.Echo/Echo"
"#,
    )
    .replace("services = [\"testing.v1.Echo\"]\n", "");
    let (path, errors) = load_err(&text).await;
    assert_has(
        &errors,
        &path,
        line_of(&text, "[[routes]]"),
        "routes[0].backend",
        "no backend",
    );
}

#[tokio::test]
async fn bad_durations_are_reported_per_key() {
    let text = config(
        r#"[[routes]]
method = "GET"
path = "/v1/x"
grpc = "testing.v1.Echo/Echo"
timeout = "5 parsecs"

[[routes]]
method = "GET"
path = "/v1/y"
grpc = "testing.v1.Echo/Echo"
timeout = "0s"
"#,
    )
    .replace("timeout = \"5s\"", "timeout = \"soon\"");
    let (path, errors) = load_err(&text).await;
    assert_has(
        &errors,
        &path,
        line_of(&text, "\"soon\""),
        "backends.echo.timeout",
        "soon",
    );
    assert_has(
        &errors,
        &path,
        line_of(&text, "5 parsecs"),
        "routes[0].timeout",
        "5 parsecs",
    );
    assert_has(
        &errors,
        &path,
        line_of(&text, "\"0s\""),
        "routes[1].timeout",
        "greater than zero",
    );
}

#[tokio::test]
async fn bad_listen_address_names_server_listen() {
    let text = config("").replace("listen = \"127.0.0.1:0\"", "listen = \"localhost\"");
    let (path, errors) = load_err(&text).await;
    assert_has(
        &errors,
        &path,
        line_of(&text, "localhost"),
        "server.listen",
        "localhost",
    );
}

#[tokio::test]
async fn out_of_range_worker_threads_names_server_worker_threads() {
    for bad in ["0", "100000"] {
        let text = config("").replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:0\"\nworker_threads = {bad}"),
        );
        let (path, errors) = load_err(&text).await;
        assert_has(
            &errors,
            &path,
            line_of(&text, "worker_threads"),
            "server.worker_threads",
            "must be between 1 and 1024",
        );
    }
}

#[tokio::test]
async fn bad_endpoint_names_the_endpoints_key() {
    let text = config("").replace(
        "endpoints = [\"127.0.0.1:1\"]",
        "endpoints = [\"http://127.0.0.1:1\"]",
    );
    let (path, errors) = load_err(&text).await;
    assert_has(
        &errors,
        &path,
        line_of(&text, "http://"),
        "backends.echo.endpoints",
        "host:port",
    );
}

#[tokio::test]
async fn bad_http_method_and_header_names_are_reported() {
    let text = config(
        r#"[[routes]]
method = "GE T"
path = "/v1/x"
grpc = "testing.v1.Echo/Echo"
forward_headers = ["bad header"]
"#,
    );
    let (path, errors) = load_err(&text).await;
    assert_has(
        &errors,
        &path,
        line_of(&text, "GE T"),
        "routes[0].method",
        "not an HTTP method",
    );
    assert_has(
        &errors,
        &path,
        line_of(&text, "bad header"),
        "routes[0].forward_headers",
        "bad header",
    );
}

#[tokio::test]
async fn toml_syntax_error_names_the_line() {
    let text = config("[[routes]]\nmethod = \"GET\npath = \"/v1/x\"\n");
    let (path, errors) = load_err(&text).await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    let line = line_of(&text, "method = \"GET");
    assert!(
        errors[0].starts_with(&format!("{}:{line}: ", path.display())),
        "{errors:?} should point at line {line}"
    );
}

#[tokio::test]
async fn unknown_key_is_rejected_with_its_line_and_name() {
    let text = config(
        r#"[[routes]]
method = "GET"
path = "/v1/x"
grpc = "testing.v1.Echo/Echo"
bodyy = "*"
"#,
    );
    let (path, errors) = load_err(&text).await;
    let line = line_of(&text, "bodyy");
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with(&format!("{}:{line}", path.display())) && e.contains("bodyy")),
        "{errors:?}"
    );
}

#[tokio::test]
async fn unknown_server_key_is_rejected() {
    let text = config("").replace(
        "routes_from_annotations = false",
        "routes_from_annotation = false",
    );
    let (path, errors) = load_err(&text).await;
    let line = line_of(&text, "routes_from_annotation =");
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with(&format!("{}:{line}", path.display()))
                && e.contains("routes_from_annotation")),
        "{errors:?}"
    );
}

#[tokio::test]
async fn wrong_value_type_is_rejected_with_its_line() {
    let text = config("").replace(
        "routes_from_annotations = false",
        "max_body_bytes = \"lots\"",
    );
    let (path, errors) = load_err(&text).await;
    let line = line_of(&text, "\"lots\"");
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with(&format!("{}:{line}", path.display()))),
        "{errors:?}"
    );
}

#[tokio::test]
async fn unknown_fields_option_rejects_other_values() {
    let text = config("").replace(
        "routes_from_annotations = false",
        "unknown_fields = \"drop\"",
    );
    let (path, errors) = load_err(&text).await;
    let line = line_of(&text, "\"drop\"");
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with(&format!("{}:{line}", path.display())) && e.contains("drop")),
        "{errors:?}"
    );
}

#[tokio::test]
async fn every_error_is_reported_at_once() {
    let text = config(
        r#"[[routes]]
method = "GET"
path = "/v1/a"
grpc = "testing.v1.Echo/Nope"

[[routes]]
method = "GET"
path = "/v1/{missing}"
grpc = "testing.v1.Echo/Echo"

[[routes]]
method = "POST"
path = "/v1/c"
grpc = "testing.v1.Echo/Echo"
body = "nothere"

[[routes]]
method = "GET"
path = "/v1/d"
grpc = "testing.v1.Echo/Echo"
backend = "ghost"
timeout = "forever"
"#,
    )
    .replace("listen = \"127.0.0.1:0\"", "listen = \"nowhere\"");
    let (path, errors) = load_err(&text).await;
    assert_has(
        &errors,
        &path,
        line_of(&text, "nowhere"),
        "server.listen",
        "nowhere",
    );
    assert_has(
        &errors,
        &path,
        line_of(&text, "Echo/Nope"),
        "routes[0].grpc",
        "Nope",
    );
    assert_has(
        &errors,
        &path,
        line_of(&text, "{missing}"),
        "routes[1].path",
        "missing",
    );
    assert_has(
        &errors,
        &path,
        line_of(&text, "nothere"),
        "routes[2].body",
        "nothere",
    );
    assert_has(
        &errors,
        &path,
        line_of(&text, "ghost"),
        "routes[3].backend",
        "ghost",
    );
    assert_has(
        &errors,
        &path,
        line_of(&text, "forever"),
        "routes[3].timeout",
        "forever",
    );
    assert!(errors.len() >= 6, "{errors:?}");
}

#[tokio::test]
async fn missing_descriptors_folder_names_server_descriptors() {
    let text = config("").replace(
        &toml_path(&testing_descriptors()),
        &toml_path(&temp_dir("nodesc").join("missing")),
    );
    let (path, errors) = load_err(&text).await;
    assert_has(
        &errors,
        &path,
        line_of(&text, "descriptors ="),
        "server.descriptors",
        "does not exist",
    );
}

#[tokio::test]
async fn descriptors_path_is_relative_to_the_config_file() {
    let dir = temp_dir("reldesc");
    std::fs::create_dir_all(dir.join("protos")).unwrap();
    std::fs::copy(
        testing_descriptors().join("testing.proto"),
        dir.join("protos").join("testing.proto"),
    )
    .unwrap();
    let text =
        config("[[routes]]\nmethod = \"GET\"\npath = \"/v1/x\"\ngrpc = \"testing.v1.Echo/Echo\"\n")
            .replace(&toml_path(&testing_descriptors()), "protos");
    let path = dir.join("routes.toml");
    std::fs::write(&path, &text).unwrap();
    let s = Snapshot::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.routes.len(), 1);
}

/// A descriptors folder with testing.proto plus `extra` files.
fn descriptors_with(extra: &[(&str, &[u8])]) -> PathBuf {
    let dir = temp_dir("desc");
    std::fs::copy(
        testing_descriptors().join("testing.proto"),
        dir.join("testing.proto"),
    )
    .unwrap();
    for (name, bytes) in extra {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    dir
}

#[tokio::test]
async fn corrupt_descriptor_set_is_reported_by_file_name() {
    let dir = descriptors_with(&[("broken.binpb", b"\x0a\xff\xff\xff\xff\x0f garbage")]);
    let text = config("").replace(&toml_path(&testing_descriptors()), &toml_path(&dir));
    let (path, errors) = load_err(&text).await;
    let all = errors.join("\n");
    assert!(all.contains("broken.binpb"), "{all}");
    assert_has(
        &errors,
        &path,
        line_of(&text, "descriptors ="),
        "server.descriptors",
        "broken.binpb",
    );
}

#[tokio::test]
async fn proto_with_a_syntax_error_is_reported_by_file_name_and_line() {
    let dir = descriptors_with(&[(
        "bad.proto",
        b"syntax = \"proto3\";\npackage bad.v1;\n\nmessage Oops {\n  string name = ;\n}\n",
    )]);
    let text = config("").replace(&toml_path(&testing_descriptors()), &toml_path(&dir));
    let (_, errors) = load_err(&text).await;
    let all = errors.join("\n");
    assert!(
        all.contains("bad.proto:5"),
        "the error should name bad.proto line 5:\n{all}"
    );
}

#[tokio::test]
async fn proto_with_a_missing_import_is_reported() {
    let dir = descriptors_with(&[(
        "importer.proto",
        b"syntax = \"proto3\";\npackage imp.v1;\nimport \"not/there.proto\";\n",
    )]);
    let text = config("").replace(&toml_path(&testing_descriptors()), &toml_path(&dir));
    let (_, errors) = load_err(&text).await;
    let all = errors.join("\n");
    assert!(all.contains("not/there.proto"), "{all}");
    assert!(all.contains("importer.proto"), "{all}");
}

#[tokio::test]
async fn several_broken_descriptor_files_are_all_reported_one_error_each() {
    let dir = descriptors_with(&[
        ("a_broken.binpb", b"\xff\xff\xff"),
        ("b_bad.proto", b"syntax = \"proto3\";\nmessage {\n"),
    ]);
    let text = config("").replace(&toml_path(&testing_descriptors()), &toml_path(&dir));
    let path = write_config(&text);
    let err = Snapshot::load(&path).expect_err("broken descriptors must not load");
    let all = err.to_string();
    assert!(all.contains("a_broken.binpb"), "{all}");
    assert!(all.contains("b_bad.proto:2"), "{all}");
    // Two broken files are two errors, each on its own `file:line: field:` line.
    assert_eq!(
        err.0.len(),
        2,
        "expected one ConfigError per broken file, got:\n{all}"
    );
    for line in all.lines() {
        assert!(
            line.starts_with(&format!("{}:", path.display())),
            "every line names the config file: {line:?}\n{all}"
        );
    }
}

#[tokio::test]
async fn annotation_with_a_bad_path_variable_is_reported_by_method() {
    let dir = descriptors_with(&[(
        "annotated.proto",
        br#"syntax = "proto3";
package annotated.v1;
import "google/api/annotations.proto";
service Svc {
  rpc Get(Req) returns (Req) {
    option (google.api.http) = { get: "/v1/{nope}" };
  }
}
message Req { string name = 1; }
"#,
    )]);
    let text = config("")
        .replace(&toml_path(&testing_descriptors()), &toml_path(&dir))
        .replace(
            "routes_from_annotations = false",
            "routes_from_annotations = true",
        )
        .replace(
            "services = [\"testing.v1.Echo\"]",
            "services = [\"testing.v1.Echo\", \"annotated.v1.Svc\"]",
        );
    let (_, errors) = load_err(&text).await;
    let all = errors.join("\n");
    assert!(all.contains("annotated.v1.Svc.Get"), "{all}");
    assert!(all.contains("nope"), "{all}");
}

#[tokio::test]
async fn route_lines_point_at_each_routes_table() {
    let text = config(
        r#"[[routes]]
method = "GET"
path = "/v1/a"
grpc = "testing.v1.Echo/Echo"

[[routes]]
method = "GET"
path = "/v1/b"
grpc = "testing.v1.Echo/Echo"
"#,
    );
    let path = write_config(&text);
    let s = Snapshot::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let sources: Vec<String> = s.routes.iter().map(|r| r.source.to_string()).collect();
    assert_eq!(
        sources,
        [
            format!("{}:{}", path.display(), nth_line_of(&text, "[[routes]]", 0)),
            format!("{}:{}", path.display(), nth_line_of(&text, "[[routes]]", 1)),
        ]
    );
}
