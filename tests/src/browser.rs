//! Headless Chromium for the browser tests (tests/browser_cors.rs,
//! tests/websocket.rs): Debian's package, installed by `.ci/run`.
//!
//! When it is missing, [`chromium`] installs it with apt-get, as the
//! Python-based tests install their parsers; where that is impossible (not
//! root, no network) the test fails with what to do, unless
//! `GATEWAY_TESTS_SKIP_BROWSER=1` says to skip it. A silent pass would hide
//! that the browser path went untested.

use std::path::PathBuf;
use std::process::Stdio;

fn find_chromium() -> Option<String> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .map(|name| format!("/usr/bin/{name}"))
        .find(|p| std::path::Path::new(p).exists())
}

/// The browser, installed from Debian's packages if missing. `None` only
/// when the operator asked to skip the test.
pub fn chromium() -> Option<String> {
    if let Some(found) = find_chromium() {
        return Some(found);
    }
    if std::env::var("GATEWAY_TESTS_SKIP_BROWSER").is_ok_and(|v| v == "1") {
        return None;
    }
    eprintln!("chromium is missing; installing it with apt-get (Debian's package)");
    let _ = std::process::Command::new("sh")
        .arg("-c")
        .arg("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium")
        .stdout(Stdio::null())
        .status();
    match find_chromium() {
        Some(found) => Some(found),
        None => panic!(
            "chromium is not installed and `apt-get install -y chromium` failed; install it \
             (as root: apt-get install -y chromium), or set GATEWAY_TESTS_SKIP_BROWSER=1 to \
             skip this browser test knowingly"
        ),
    }
}

/// Headless `browser` loading `url` with a fresh profile; the caller kills
/// the child (it is killed on drop too) and removes the profile.
pub fn open(browser: &str, url: &str) -> (tokio::process::Child, PathBuf) {
    let profile = crate::temp_dir("chromium");
    let child = tokio::process::Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start chromium");
    (child, profile)
}
