//! Protobuf descriptors loaded at runtime from a folder.
//!
//! The gateway transcodes for services it was not compiled against, so it
//! builds its [`DescriptorPool`] from whatever the operator drops into the
//! descriptors folder: `.proto` sources (compiled in-process with protox, no
//! protoc needed) and pre-built FileDescriptorSets (`.binpb`, `.pb`, `.desc`).
//!
//! Descriptor files are only ever decoded by prost-reflect, never through
//! prost-types: the latter drops extension options, and with them every
//! `google.api.http` annotation.

mod embedded;
mod error;
mod http;
mod load;

use std::path::{Path, PathBuf};

use prost_reflect::DescriptorPool;

pub use error::DescriptorError;
pub use http::{http_rule, HttpRule};

/// Everything loaded from the descriptors folder.
#[derive(Debug, Clone)]
pub struct LoadedDescriptors {
    /// Always also holds the built-in googleapis files and well-known types.
    pub pool: DescriptorPool,
    /// Inputs in the (sorted) order they were read, for reload diffing and logs.
    pub files: Vec<SourceFile>,
}

/// One input file of the descriptors folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    pub path: PathBuf,
    pub kind: SourceKind,
    /// FNV-1a 64 of the raw bytes; stable across runs, so reloads can tell
    /// which inputs changed.
    pub content_hash: u64,
    /// SHA-256 of the raw bytes: this file's share of the config hash
    /// replicas report.
    pub sha256: [u8; 32],
    /// Descriptor file names it defined (a set lists all files it carries).
    pub proto_files: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKind {
    /// A `.proto` source, compiled with the folder as include root.
    Proto,
    /// A FileDescriptorSet from `protoc --include_imports --descriptor_set_out`
    /// or `buf build -o`.
    DescriptorSet,
}

/// Loads every descriptor in `dir` (recursively, hidden entries skipped)
/// into one pool.
///
/// Files are read in sorted path order so the outcome, including which copy
/// of a duplicated Google file wins, does not depend on the filesystem.
pub fn load_dir(dir: &Path) -> Result<LoadedDescriptors, DescriptorError> {
    load::load_dir(dir)
}

/// The pool with only the embedded googleapis files and well-known types;
/// used when a config has no descriptors and by tests.
pub fn base_pool() -> DescriptorPool {
    embedded::base_pool()
}

#[cfg(test)]
mod tests {
    use std::{
        fs,
        sync::atomic::{AtomicUsize, Ordering},
    };

    use protox::{
        file::{ChainFileResolver, GoogleFileResolver, IncludeFileResolver},
        Compiler,
    };

    use super::*;

    /// A scratch folder under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(label: &str) -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "gateway-descriptors-{}-{label}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }

        fn write(&self, rel: &str, contents: impl AsRef<[u8]>) -> PathBuf {
            let path = self.0.join(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, contents).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// Builds a FileDescriptorSet the way protoc would, from sources in a scratch folder.
    fn build_set(files: &[(&str, &str)], open: &[&str], include_imports: bool) -> Vec<u8> {
        let src = TempDir::new("src");
        for (name, source) in files {
            src.write(name, source);
        }
        let mut chain = ChainFileResolver::new();
        chain.add(IncludeFileResolver::new(src.0.clone()));
        chain.add(embedded::EmbeddedFiles);
        chain.add(GoogleFileResolver::new());
        let mut compiler = Compiler::with_file_resolver(chain);
        compiler.include_imports(include_imports);
        compiler.include_source_info(true);
        compiler.open_files(open).unwrap();
        compiler.encode_file_descriptor_set()
    }

    fn method(pool: &DescriptorPool, service: &str, name: &str) -> prost_reflect::MethodDescriptor {
        pool.get_service_by_name(service)
            .unwrap_or_else(|| panic!("service {service} missing"))
            .methods()
            .find(|m| m.name() == name)
            .unwrap_or_else(|| panic!("method {name} missing"))
    }

    fn rule(method: &str, path: &str) -> HttpRule {
        HttpRule {
            method: method.into(),
            path: path.into(),
            body: String::new(),
            response_body: String::new(),
            additional_bindings: Vec::new(),
        }
    }

    const THINGS: &str = r#"syntax = "proto3";
package example.v1;

import "google/api/annotations.proto";
import "google/api/httpbody.proto";

service Things {
  rpc GetThing(GetThingRequest) returns (Thing) {
    option (google.api.http) = {
      get: "/v1/things/{id}"
      additional_bindings { get: "/v1/shelves/{shelf}/things/{id}" }
      additional_bindings { post: "/v1/things:get" body: "*" }
    };
  }
  rpc UpdateThing(Thing) returns (Thing) {
    option (google.api.http) = {
      patch: "/v1/things/{id}"
      body: "*"
      response_body: "name"
    };
  }
  rpc HeadThing(GetThingRequest) returns (google.api.HttpBody) {
    option (google.api.http) = {
      custom { kind: "HEAD" path: "/v1/things/{id}" }
    };
  }
  rpc Plain(GetThingRequest) returns (Thing);
}

message GetThingRequest {
  string id = 1;
  string shelf = 2;
}

message Thing {
  string id = 1;
  string name = 2;
}
"#;

    fn assert_things_rules(pool: &DescriptorPool) {
        let get = http_rule(&method(pool, "example.v1.Things", "GetThing")).unwrap();
        let mut expected = rule("GET", "/v1/things/{id}");
        expected.additional_bindings = vec![rule("GET", "/v1/shelves/{shelf}/things/{id}"), {
            let mut post = rule("POST", "/v1/things:get");
            post.body = "*".into();
            post
        }];
        assert_eq!(get, expected);

        let patch = http_rule(&method(pool, "example.v1.Things", "UpdateThing")).unwrap();
        assert_eq!((patch.method.as_str(), patch.body.as_str()), ("PATCH", "*"));
        assert_eq!(patch.response_body, "name");

        let head = http_rule(&method(pool, "example.v1.Things", "HeadThing")).unwrap();
        assert_eq!(head, rule("HEAD", "/v1/things/{id}"));

        assert_eq!(http_rule(&method(pool, "example.v1.Things", "Plain")), None);
    }

    #[test]
    fn proto_source_keeps_http_annotations_with_additional_bindings_and_custom() {
        let dir = TempDir::new("proto");
        dir.write("example/v1/things.proto", THINGS);
        let loaded = load_dir(&dir.0).unwrap();
        assert_things_rules(&loaded.pool);
        assert_eq!(loaded.files.len(), 1);
        assert_eq!(loaded.files[0].kind, SourceKind::Proto);
        assert_eq!(loaded.files[0].proto_files, ["example/v1/things.proto"]);
        assert_eq!(
            loaded.files[0].content_hash,
            load::fnv1a64(THINGS.as_bytes())
        );
    }

    #[test]
    fn prebuilt_set_keeps_http_annotations() {
        let set = build_set(
            &[("example/v1/things.proto", THINGS)],
            &["example/v1/things.proto"],
            true,
        );
        let dir = TempDir::new("set");
        dir.write("things.binpb", &set);
        let loaded = load_dir(&dir.0).unwrap();
        assert_things_rules(&loaded.pool);
        assert_eq!(loaded.files[0].kind, SourceKind::DescriptorSet);
        assert!(loaded.files[0]
            .proto_files
            .contains(&"google/api/http.proto".to_owned()));
    }

    #[test]
    fn set_without_imports_uses_built_in_googleapis() {
        let set = build_set(
            &[("example/v1/things.proto", THINGS)],
            &["example/v1/things.proto"],
            false,
        );
        let dir = TempDir::new("noimports");
        dir.write("things.pb", &set);
        let loaded = load_dir(&dir.0).unwrap();
        assert_eq!(loaded.files[0].proto_files, ["example/v1/things.proto"]);
        assert_things_rules(&loaded.pool);
    }

    #[test]
    fn set_missing_a_non_google_import_is_an_error() {
        let set = build_set(
            &[
                ("common/id.proto", "syntax = \"proto3\"; package common; message Id { string v = 1; }"),
                (
                    "svc.proto",
                    "syntax = \"proto3\"; package svc; import \"common/id.proto\"; message M { common.Id id = 1; }",
                ),
            ],
            &["svc.proto"],
            false,
        );
        let dir = TempDir::new("missingdep");
        dir.write("svc.desc", &set);
        let err = load_dir(&dir.0).unwrap_err().to_string();
        assert!(
            err.contains("svc.desc: svc.proto imports common/id.proto"),
            "{err}"
        );
        assert!(err.contains("--include_imports"), "{err}");
    }

    #[test]
    fn proto_and_set_in_one_folder() {
        let set = build_set(
            &[
                ("example/v1/things.proto", THINGS),
                (
                    "shared/v1/id.proto",
                    "syntax = \"proto3\";\npackage shared.v1;\nmessage Id { string value = 1; }\n",
                ),
            ],
            &["example/v1/things.proto", "shared/v1/id.proto"],
            true,
        );
        let dir = TempDir::new("both");
        dir.write("a/things.binpb", &set);
        // Imports a file only the set provides.
        dir.write(
            "b/other.proto",
            r#"syntax = "proto3";
package other.v1;
import "google/api/annotations.proto";
import "shared/v1/id.proto";
service Other {
  rpc Get(shared.v1.Id) returns (shared.v1.Id) {
    option (google.api.http) = { get: "/v1/other/{value}" };
  }
}
"#,
        );
        dir.write("README.md", "ignored");
        let loaded = load_dir(&dir.0).unwrap();
        assert_things_rules(&loaded.pool);
        let other = http_rule(&method(&loaded.pool, "other.v1.Other", "Get")).unwrap();
        assert_eq!(other, rule("GET", "/v1/other/{value}"));
        let kinds: Vec<_> = loaded.files.iter().map(|f| f.kind).collect();
        assert_eq!(kinds, [SourceKind::DescriptorSet, SourceKind::Proto]);
    }

    #[test]
    fn missing_import_names_the_file() {
        let dir = TempDir::new("missingimport");
        dir.write(
            "svc/a.proto",
            "syntax = \"proto3\";\npackage a;\nimport \"nope/missing.proto\";\nmessage A {}\n",
        );
        let err = load_dir(&dir.0).unwrap_err().to_string();
        let shown = dir.0.join("svc/a.proto").display().to_string();
        assert!(err.contains(&format!("{shown}:3:")), "{err}");
        assert!(err.contains("nope/missing.proto"), "{err}");
    }

    #[test]
    fn syntax_error_names_file_and_line() {
        let dir = TempDir::new("syntax");
        dir.write(
            "bad.proto",
            "syntax = \"proto3\";\npackage bad;\n\nmessage Bad {\n  string x = ;\n}\n",
        );
        let err = load_dir(&dir.0).unwrap_err();
        assert!(matches!(err, DescriptorError::Compile { .. }), "{err:?}");
        let text = err.to_string();
        let shown = dir.0.join("bad.proto").display().to_string();
        assert!(text.starts_with(&format!("{shown}:5:")), "{text}");
    }

    #[test]
    fn corrupt_set_names_the_file_and_how_to_fix_it() {
        let dir = TempDir::new("corrupt");
        dir.write("a.binpb", [0x0a, 0xff, 0xff, 0xff]);
        dir.write("b.pb", "this is not protobuf");
        let err = load_dir(&dir.0).unwrap_err();
        let DescriptorError::Many(all) = &err else {
            panic!("expected both files reported, got {err:?}");
        };
        assert_eq!(all.len(), 2);
        let text = err.to_string();
        assert_eq!(text.lines().count(), 2, "{text}");
        let a = dir.0.join("a.binpb").display().to_string();
        assert!(
            text.contains(&format!("{a}: not a valid FileDescriptorSet")),
            "{text}"
        );
        assert!(
            text.contains("regenerate it with protoc --include_imports --descriptor_set_out"),
            "{text}"
        );
    }

    #[test]
    fn conflicting_redefinition_of_the_same_file_is_an_error() {
        let old = "syntax = \"proto3\";\npackage example.v1;\nmessage Foo { string a = 1; }\nmessage Bar {}\n";
        let new = "syntax = \"proto3\";\npackage example.v1;\nmessage Foo { int64 a = 1; }\nmessage Bar {}\n";
        let set = build_set(
            &[("example/v1/foo.proto", old)],
            &["example/v1/foo.proto"],
            true,
        );
        let dir = TempDir::new("conflict-file");
        dir.write("a.binpb", &set);
        dir.write("example/v1/foo.proto", new);
        let err = load_dir(&dir.0).unwrap_err().to_string();
        let a = dir.0.join("a.binpb").display().to_string();
        let b = dir.0.join("example/v1/foo.proto").display().to_string();
        assert!(
            err.contains(&format!(
                "conflicting definition of example.v1.Foo in {a} and {b}"
            )),
            "{err}"
        );
    }

    #[test]
    fn conflicting_definition_across_file_names_is_an_error() {
        let set = build_set(
            &[(
                "foo.proto",
                "syntax = \"proto3\";\npackage example.v1;\nmessage Foo { string a = 1; }\n",
            )],
            &["foo.proto"],
            true,
        );
        let dir = TempDir::new("conflict-symbol");
        dir.write("a.binpb", &set);
        dir.write(
            "b.proto",
            "syntax = \"proto3\";\npackage example.v1;\nmessage Foo { string a = 1; }\n",
        );
        let err = load_dir(&dir.0).unwrap_err().to_string();
        let a = dir.0.join("a.binpb").display().to_string();
        let b = dir.0.join("b.proto").display().to_string();
        assert!(
            err.contains(&format!(
                "conflicting definition of example.v1.Foo in {a} and {b}"
            )),
            "{err}"
        );
    }

    #[test]
    fn identical_duplicates_are_fine() {
        let set = build_set(
            &[("example/v1/things.proto", THINGS)],
            &["example/v1/things.proto"],
            true,
        );
        let dir = TempDir::new("dups");
        dir.write("a.binpb", &set);
        dir.write("b.binpb", &set);
        dir.write("example/v1/things.proto", THINGS);
        let loaded = load_dir(&dir.0).unwrap();
        assert_eq!(loaded.files.len(), 3);
        assert_eq!(loaded.files[0].content_hash, loaded.files[1].content_hash);
        assert_things_rules(&loaded.pool);
    }

    #[test]
    fn differing_google_copy_keeps_the_first() {
        // An older http.proto without response_body, as vendored by many projects.
        let old_http = "syntax = \"proto3\";\npackage google.api;\n\
            message Http { repeated HttpRule rules = 1; }\n\
            message HttpRule {\n  string selector = 1;\n  oneof pattern {\n    string get = 2;\n    string put = 3;\n    \
            string post = 4;\n    string delete = 5;\n    string patch = 6;\n    CustomHttpPattern custom = 8;\n  }\n  \
            string body = 7;\n  repeated HttpRule additional_bindings = 11;\n}\n\
            message CustomHttpPattern { string kind = 1; string path = 2; }\n";
        let svc = "syntax = \"proto3\";\npackage s;\nimport \"google/api/annotations.proto\";\n\
            message M {}\nservice S { rpc Get(M) returns (M) { option (google.api.http).get = \"/m\"; } }\n";
        let set = build_set(
            &[("google/api/http.proto", old_http), ("s.proto", svc)],
            &["s.proto"],
            true,
        );
        let dir = TempDir::new("google-dup");
        dir.write("a.binpb", &set);
        dir.write("b.proto", THINGS.replace("response_body: \"name\"", ""));
        let loaded = load_dir(&dir.0).unwrap();
        let http_rule_msg = loaded
            .pool
            .get_message_by_name("google.api.HttpRule")
            .unwrap();
        assert!(http_rule_msg.get_field_by_name("response_body").is_none());
        assert_eq!(
            http_rule(&method(&loaded.pool, "s.S", "Get")),
            Some(rule("GET", "/m"))
        );
        assert_eq!(
            http_rule(&method(&loaded.pool, "example.v1.Things", "HeadThing")),
            Some(rule("HEAD", "/v1/things/{id}"))
        );
    }

    #[test]
    fn hidden_dirs_are_skipped_and_symlinks_followed() {
        let dir = TempDir::new("hidden");
        let real = dir.write("..2024_01_01/things.proto", THINGS);
        dir.write("..data/broken.proto", "this does not parse");
        dir.write(".git/garbage.binpb", "not a set");
        #[cfg(unix)]
        std::os::unix::fs::symlink(&real, dir.0.join("things.proto")).unwrap();
        #[cfg(not(unix))]
        fs::copy(&real, dir.0.join("things.proto")).unwrap();
        let loaded = load_dir(&dir.0).unwrap();
        assert_eq!(loaded.files.len(), 1);
        assert_eq!(loaded.files[0].path, dir.0.join("things.proto"));
        assert_things_rules(&loaded.pool);
    }

    #[test]
    fn buf_validate_resolves_on_import_and_keeps_its_rules() {
        let dir = TempDir::new("buf-validate");
        dir.write(
            "v.proto",
            "syntax = \"proto3\";\npackage v;\nimport \"buf/validate/validate.proto\";\n\
             message User { string name = 1 [(buf.validate.field).string.min_len = 3]; }\n",
        );
        let loaded = load_dir(&dir.0).unwrap();
        let name = loaded
            .pool
            .get_message_by_name("v.User")
            .unwrap()
            .get_field_by_name("name")
            .unwrap();
        let ext = loaded
            .pool
            .get_extension_by_name("buf.validate.field")
            .expect("the rules' extension is in the pool");
        let rules = name.options().get_extension(&ext).into_owned();
        let string = rules
            .as_message()
            .and_then(|r| r.get_field_by_name("string"))
            .map(|s| s.into_owned());
        let min_len = string
            .as_ref()
            .and_then(|s| s.as_message())
            .and_then(|s| s.get_field_by_name("min_len"))
            .map(|v| v.into_owned());
        assert_eq!(min_len, Some(prost_reflect::Value::U64(3)));
        // Not imported, not compiled: the base pool stays small.
        assert!(base_pool()
            .get_extension_by_name("buf.validate.field")
            .is_none());
    }

    #[test]
    fn subfolder_imports_resolve_from_the_folder_root() {
        let dir = TempDir::new("subfolders");
        dir.write(
            "example/common/v1/money.proto",
            "syntax = \"proto3\";\npackage example.common.v1;\nmessage Money { int64 cents = 1; }\n",
        );
        dir.write(
            "example/shop/v1/shop.proto",
            "syntax = \"proto3\";\npackage example.shop.v1;\nimport \"example/common/v1/money.proto\";\n\
             message Item { example.common.v1.Money price = 1; }\n",
        );
        let loaded = load_dir(&dir.0).unwrap();
        let item = loaded
            .pool
            .get_message_by_name("example.shop.v1.Item")
            .unwrap();
        let price = item.get_field_by_name("price").unwrap();
        assert_eq!(
            price.kind().as_message().unwrap().full_name(),
            "example.common.v1.Money"
        );
        let names: Vec<_> = loaded
            .files
            .iter()
            .map(|f| f.proto_files[0].as_str())
            .collect();
        assert_eq!(
            names,
            [
                "example/common/v1/money.proto",
                "example/shop/v1/shop.proto"
            ]
        );
    }

    #[test]
    fn every_bad_file_is_reported() {
        let dir = TempDir::new("many");
        dir.write("a.proto", "syntax = \"proto3\";\nmessage {\n");
        dir.write("b.proto", "syntax = \"proto3\";\nimport \"gone.proto\";\n");
        let err = load_dir(&dir.0).unwrap_err();
        assert!(
            matches!(&err, DescriptorError::Many(all) if all.len() == 2),
            "{err:?}"
        );
        let text = err.to_string();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].contains("a.proto:2:"), "{text}");
        assert!(
            lines[1].contains("b.proto:2:") && lines[1].contains("gone.proto"),
            "{text}"
        );
    }

    #[test]
    fn missing_folder_says_what_to_do() {
        let err = load_dir(Path::new("./no-such-descriptors-folder")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "descriptors folder ./no-such-descriptors-folder does not exist; \
             set server.descriptors in routes.toml"
        );
    }

    #[test]
    fn empty_folder_yields_the_base_pool() {
        let dir = TempDir::new("empty");
        let loaded = load_dir(&dir.0).unwrap();
        assert!(loaded.files.is_empty());
        assert!(loaded
            .pool
            .get_message_by_name("google.rpc.Status")
            .is_some());
        assert!(loaded
            .pool
            .get_extension_by_name("google.api.http")
            .is_some());
    }

    #[test]
    fn base_pool_resolves_googleapis_and_well_known_types() {
        let pool = base_pool();
        let number = |msg: &str, field: &str| {
            pool.get_message_by_name(msg)
                .unwrap_or_else(|| panic!("{msg} missing"))
                .get_field_by_name(field)
                .unwrap_or_else(|| panic!("{msg}.{field} missing"))
                .number()
        };
        assert_eq!(number("google.api.HttpBody", "content_type"), 1);
        assert_eq!(number("google.api.HttpBody", "data"), 2);
        assert_eq!(number("google.api.HttpBody", "extensions"), 3);
        assert_eq!(number("google.rpc.Status", "code"), 1);
        assert_eq!(number("google.rpc.Status", "message"), 2);
        assert_eq!(number("google.rpc.Status", "details"), 3);
        assert_eq!(number("google.api.HttpRule", "custom"), 8);
        assert_eq!(number("google.api.HttpRule", "response_body"), 12);
        assert_eq!(number("google.api.HttpRule", "additional_bindings"), 11);
        assert_eq!(
            number("google.rpc.BadRequest.FieldViolation", "localized_message"),
            4
        );
        assert_eq!(number("google.rpc.RetryInfo", "retry_delay"), 1);
        for msg in [
            "google.rpc.ErrorInfo",
            "google.rpc.DebugInfo",
            "google.rpc.QuotaFailure",
            "google.rpc.PreconditionFailure",
            "google.rpc.RequestInfo",
            "google.rpc.ResourceInfo",
            "google.rpc.Help",
            "google.rpc.LocalizedMessage",
            "google.protobuf.Timestamp",
            "google.protobuf.Duration",
            "google.protobuf.Struct",
            "google.protobuf.FieldMask",
            "google.protobuf.Empty",
        ] {
            assert!(pool.get_message_by_name(msg).is_some(), "{msg} missing");
        }
        let http = pool.get_extension_by_name("google.api.http").unwrap();
        assert_eq!(http.number(), 72295728);
        assert_eq!(
            http.containing_message().full_name(),
            "google.protobuf.MethodOptions"
        );
    }

    #[test]
    fn fnv1a64_matches_reference_vectors() {
        assert_eq!(load::fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(load::fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(load::fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    /// The repository's descriptors folder, from either the gateway crate or
    /// a scratch crate that includes this module by absolute path.
    fn repo_descriptors() -> PathBuf {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../descriptors");
        if manifest.join("bookstore.proto").exists() {
            return manifest;
        }
        let from_source = Path::new(file!())
            .ancestors()
            .nth(4)
            .unwrap()
            .join("descriptors");
        assert!(
            from_source.join("bookstore.proto").exists(),
            "descriptors folder not found"
        );
        from_source
    }

    #[test]
    fn repository_bookstore_loads_with_its_annotation() {
        let loaded = load_dir(&repo_descriptors()).unwrap();
        let list = method(
            &loaded.pool,
            "example.bookstore.v1.Bookstore",
            "ListShelves",
        );
        assert_eq!(http_rule(&list), Some(rule("GET", "/v1/shelves")));
        let create = method(
            &loaded.pool,
            "example.bookstore.v1.Bookstore",
            "CreateShelf",
        );
        assert_eq!(http_rule(&create), None);
    }
}
