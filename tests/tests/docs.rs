//! docs/configuration.md is the output of `gateway config-reference`,
//! checked in: it must not drift from the config structs it is generated
//! from.

use std::process::Command;

use gateway_tests::{gateway_bin, repo_root};

#[test]
fn the_configuration_reference_is_the_generated_one() {
    let out = Command::new(gateway_bin())
        .arg("config-reference")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run gateway config-reference");
    assert!(
        out.status.success(),
        "gateway config-reference failed: {out:?}"
    );
    let generated = String::from_utf8(out.stdout).expect("utf-8 output");
    let path = repo_root().join("docs/configuration.md");
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    if generated != checked_in {
        let first = generated
            .lines()
            .zip(checked_in.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| generated.lines().count().min(checked_in.lines().count()));
        panic!(
            "docs/configuration.md:{}: differs from the output of `gateway config-reference` \
             (the config structs in gateway/src/config/ changed?):\n  generated:  {}\n  checked in: {}\n\
             Regenerate it with:\n  {}",
            first + 1,
            generated.lines().nth(first).unwrap_or("(end of output)"),
            checked_in.lines().nth(first).unwrap_or("(end of file)"),
            gateway::config::reference::REGENERATE,
        );
    }
}

#[test]
fn the_reference_needs_no_config_file() {
    // Run from a folder with no routes.toml: the reference describes the
    // schema, not a file.
    let dir = gateway_tests::temp_dir("config-reference");
    let out = Command::new(gateway_bin())
        .arg("config-reference")
        .current_dir(&dir)
        .output()
        .expect("run gateway config-reference");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    for key in [
        "`server.listen`",
        "`routes[].grpc`",
        "`backends.NAME.retry.attempts`",
    ] {
        assert!(text.contains(key), "{key} missing from the reference");
    }
}
