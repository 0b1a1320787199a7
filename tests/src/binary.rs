//! The real `gateway` binary as a child process: started, waited for until
//! it listens, and killed when its handle drops.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, BufReader};

use crate::{gateway_bin, repo_root, toml_path, write_config};

/// The variables through which the binary reads Consul settings: cleared
/// for every child, so the tests do not depend on the machine's.
pub const CONSUL_ENV: [&str; 6] = [
    "CONSUL_HTTP_ADDR",
    "CONSUL_HTTP_TOKEN",
    "CONSUL_HTTP_TOKEN_FILE",
    "GATEWAY_CONSUL_KV",
    "GATEWAY_CONSUL_KV_DESCRIPTORS",
    "GATEWAY_CONFIG_CACHE",
];

/// A gateway started by [`spawn_with`].
pub struct Spawned {
    pub child: tokio::process::Child,
    /// The REST listener, `host:port`.
    pub rest: String,
    /// The admin listener, `host:port`, when it is on.
    pub admin: Option<String>,
    /// stderr up to the "listening on" line.
    pub log: Vec<String>,
}

/// Starts the binary with `args` and the environment variables `env` (the
/// Consul ones of [`CONSUL_ENV`] removed first), waits for its "listening
/// on" line and the "admin on" line after it.
pub async fn spawn_with(args: &[&str], env: &[(&str, &str)]) -> Spawned {
    let mut cmd = tokio::process::Command::new(gateway_bin());
    cmd.args(args).env("RUST_LOG", "info");
    for var in CONSUL_ENV {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn gateway");
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let mut log = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        let mut rest: Option<String> = None;
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(r) = &rest {
                let admin = line
                    .split("admin on http://")
                    .nth(1)
                    .and_then(|a| a.split('/').next())
                    .map(str::to_owned);
                return Some((r.clone(), admin));
            }
            match line.split("listening on http://").nth(1) {
                Some(r) => rest = Some(r.split_whitespace().next().unwrap_or("").to_owned()),
                None => log.push(line),
            }
        }
        rest.map(|r| (r, None))
    })
    .await
    .ok()
    .flatten();
    let Some((rest, admin)) = found else {
        panic!(
            "gateway did not report its address; stderr so far:\n{}",
            log.join("\n")
        )
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Spawned {
        child,
        rest,
        admin,
        log,
    }
}

/// Starts the binary with `args`, waits for its "listening on" line and
/// returns the child and the address.
pub async fn spawn_listening(args: &[&str]) -> (tokio::process::Child, String) {
    spawn_listening_with_env(args, &[]).await
}

/// [`spawn_listening`] with extra environment variables.
pub async fn spawn_listening_with_env(
    args: &[&str],
    env: &[(&str, &str)],
) -> (tokio::process::Child, String) {
    let mut child = tokio::process::Command::new(gateway_bin())
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn gateway");
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    let addr = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(line)) = lines.next_line().await {
            let rest = line
                .split("listening on http://")
                .nth(1)
                .or_else(|| line.split("listening on https://").nth(1));
            if let Some(rest) = rest {
                return Some(rest.split_whitespace().next().unwrap_or("").to_owned());
            }
            seen.push(line);
        }
        None
    })
    .await
    .ok()
    .flatten()
    .unwrap_or_else(|| {
        panic!(
            "gateway did not report its address; stderr so far:\n{}",
            seen.join("\n")
        )
    });
    // Keep draining stderr so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}

/// Turns the admin listener off: its fixed default port would make
/// concurrently running binaries collide.
pub fn without_admin(config: &str) -> String {
    if config.contains("[admin]") {
        config.replacen("[admin]", "[admin]\nenabled = false", 1)
    } else {
        format!("{config}\n[admin]\nenabled = false\n")
    }
}

/// `gateway demo` on the repository's own routes.toml and descriptors, on
/// ephemeral ports (the file's fixed 8080 and 50051 would collide between
/// tests): the setup the examples of README.md and docs/ are written against.
pub async fn spawn_demo() -> (tokio::process::Child, String) {
    let (child, rest, _admin) = spawn_demo_with_admin().await;
    (child, rest)
}

/// [`spawn_demo`] with the admin listener on, on a free port of its own;
/// returns the child, the REST address and the admin address.
pub async fn spawn_demo_with_admin() -> (tokio::process::Child, String, String) {
    let backend_port = crate::dead_addr().await;
    let admin = crate::dead_addr().await;
    let cfg = std::fs::read_to_string(repo_root().join("routes.toml"))
        .expect("read routes.toml")
        .replace("listen = \"127.0.0.1:8080\"", "listen = \"127.0.0.1:0\"")
        .replace("127.0.0.1:50051", &backend_port)
        .replace(
            "descriptors = \"descriptors\"",
            &format!(
                "descriptors = \"{}\"",
                toml_path(&repo_root().join("descriptors"))
            ),
        );
    assert!(
        !cfg.contains("[admin]"),
        "routes.toml grew an [admin] table"
    );
    let path = write_config(&format!("{cfg}\n[admin]\nlisten = \"{admin}\"\n"));
    let (child, rest) =
        spawn_listening(&["demo", "--config", path.to_str().expect("utf-8 path")]).await;
    (child, rest, admin)
}
