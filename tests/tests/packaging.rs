//! The container image and the Kubernetes manifests, checked where this
//! machine can check them (no Docker engine or cluster runs here): what the
//! files say, against what the gateway needs at run time.
//!
//! The ConfigMap hot reload itself (a `..data` symlink swap) is exercised
//! end to end by `reload::configmap_data_symlink_swap_is_followed`; this
//! file makes sure the Deployment mounts the ConfigMap so that the swap
//! reaches the pod at all.

use gateway_tests::repo_root;

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `(mountPath, subPath)` of each volumeMount in the Deployment, in the
/// flow style the file uses (`- {name: x, mountPath: /p, subPath: y}`).
fn mounts(yaml: &str) -> Vec<(String, Option<String>)> {
    let field = |line: &str, key: &str| {
        line.split(&format!("{key}: "))
            .nth(1)
            .map(|v| v.split([',', '}']).next().unwrap_or("").trim().to_owned())
    };
    yaml.lines()
        .filter(|l| l.contains("mountPath:"))
        .map(|l| (field(l, "mountPath").unwrap(), field(l, "subPath")))
        .collect()
}

#[test]
fn the_config_configmap_is_mounted_as_a_folder_so_updates_reach_the_pod() {
    let yaml = read("k8s/deployment.yaml");
    let mounts = mounts(&yaml);
    assert!(mounts.len() >= 2, "{mounts:?}");
    for (path, sub) in &mounts {
        assert!(
            sub.is_none(),
            "{path} is mounted with subPath {sub:?}: Kubernetes never updates such a mount"
        );
    }
    let config = yaml
        .split("\"--config\", \"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the container's --config argument");
    let parent = std::path::Path::new(config).parent().unwrap();
    assert!(
        mounts
            .iter()
            .any(|(p, _)| std::path::Path::new(p) == parent),
        "--config {config} is not directly inside a mounted ConfigMap folder ({mounts:?})"
    );
}

#[test]
fn the_image_build_context_leaves_out_build_output_and_history() {
    let ignore = read(".dockerignore");
    let lines: Vec<&str> = ignore.lines().map(str::trim).collect();
    for needed in ["target/", ".git/"] {
        assert!(lines.contains(&needed), ".dockerignore lacks {needed}");
    }
}

#[test]
fn the_image_is_stripped_and_trusts_the_system_certificate_roots() {
    let dockerfile = read("k8s/Dockerfile");
    let runtime = dockerfile
        .rsplit("\nFROM ")
        .next()
        .expect("a runtime stage");
    // https JWKS, Consul and OTLP endpoints are verified against the
    // system roots (reqwest with rustls' platform verifier).
    assert!(
        runtime.contains("ca-certificates"),
        "the runtime stage installs no CA certificates:\n{runtime}"
    );
    assert!(
        dockerfile.contains("CARGO_PROFILE_RELEASE_STRIP=symbols")
            && dockerfile.contains("CARGO_PROFILE_RELEASE_DEBUG=0"),
        "the image's binary keeps debug info or symbols"
    );
    // The build stage's toolchain must build the workspace.
    let msrv = read("Cargo.toml")
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = \""))
        .map(|v| v.trim_end_matches('"').to_owned())
        .expect("workspace rust-version");
    assert!(
        dockerfile.contains(&format!("FROM rust:{msrv}")),
        "the build stage's Rust is not the workspace's rust-version {msrv}"
    );
}
