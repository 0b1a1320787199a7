//! [`EtcdServer`]: a real etcd (Debian's `etcd-server`, `/usr/bin/etcd`)
//! on free loopback ports with its own data directory, killed on drop and
//! restartable on the same ports and data. Keys are written through the
//! same v3 JSON gateway the gateway reads (`etcdctl` is not packaged with
//! Debian's etcd-server), so a test needs nothing else.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

/// The etcd binary: `ETCD_BIN`, else Debian's.
pub fn etcd_bin() -> PathBuf {
    std::env::var_os("ETCD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"))
}

/// PEM files for an etcd that serves its client port over TLS.
pub struct EtcdTls {
    /// The CA that signed the server's (and the client's) certificate.
    pub ca_pem: String,
    /// A certificate for `127.0.0.1` and its key.
    pub server: (String, String),
    /// With a client certificate and its key: etcd requires one signed by
    /// the CA (`--client-cert-auth`).
    pub client: Option<(String, String)>,
}

/// A single-member etcd cluster (see the module comment).
pub struct EtcdServer {
    pub client_port: u16,
    peer_port: u16,
    dir: PathBuf,
    tls: bool,
    child: Option<Child>,
    http: reqwest::Client,
    /// Sent as `Authorization` once auth is enabled.
    token: Option<String>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl EtcdServer {
    /// Starts etcd and waits until it answers.
    pub async fn start() -> EtcdServer {
        let mut s = EtcdServer {
            client_port: free_port(),
            peer_port: free_port(),
            dir: crate::temp_dir("etcd"),
            tls: false,
            child: None,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            token: None,
        };
        s.spawn().await;
        s
    }

    /// Starts etcd serving `https://` with `tls`; the helper's own client
    /// trusts the CA and presents the client certificate.
    pub async fn start_tls(tls: &EtcdTls) -> EtcdServer {
        let dir = crate::temp_dir("etcd");
        std::fs::write(dir.join("ca.pem"), &tls.ca_pem).unwrap();
        std::fs::write(dir.join("server.pem"), &tls.server.0).unwrap();
        std::fs::write(dir.join("server-key.pem"), &tls.server.1).unwrap();
        let mut http = reqwest::Client::builder()
            .no_proxy()
            .add_root_certificate(reqwest::Certificate::from_pem(tls.ca_pem.as_bytes()).unwrap());
        if let Some((cert, key)) = &tls.client {
            std::fs::write(dir.join("client-required"), "").unwrap();
            let id = reqwest::Identity::from_pem(format!("{cert}\n{key}").as_bytes()).unwrap();
            http = http.identity(id);
        }
        let mut s = EtcdServer {
            client_port: free_port(),
            peer_port: free_port(),
            dir,
            tls: true,
            child: None,
            http: http.build().unwrap(),
            token: None,
        };
        s.spawn().await;
        s
    }

    /// `http://127.0.0.1:<port>` (`https://` with TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    async fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.join("etcd.log")).unwrap();
        let client = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = Command::new(etcd_bin());
        if self.tls {
            cmd.arg("--cert-file")
                .arg(self.dir.join("server.pem"))
                .arg("--key-file")
                .arg(self.dir.join("server-key.pem"));
            if self.dir.join("client-required").exists() {
                cmd.arg("--client-cert-auth")
                    .arg("--trusted-ca-file")
                    .arg(self.dir.join("ca.pem"));
            }
        }
        let child = cmd
            .args(["--name", "test"])
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("test={peer}")])
            .args(["--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {}: {e} (apt-get install etcd-server)",
                    etcd_bin().display()
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let up = self
                .http
                .post(format!("{}/v3/maintenance/status", self.url()))
                .body("{}")
                .timeout(Duration::from_secs(1))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if up {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                let log = std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default();
                panic!("etcd exited with {status}:\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not answer within 20s on {}",
                self.url()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills etcd (as a crash would: every watch stream is cut).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same ports with the same data.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    /// POSTs to the v3 JSON gateway; panics unless it answers 200.
    pub async fn call(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        let mut req = self.http.post(format!("{}{path}", self.url())).json(&body);
        if let Some(t) = &self.token {
            req = req.header("Authorization", t);
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = resp.status();
        let value: serde_json::Value = resp.json().await.unwrap_or_default();
        assert!(status.is_success(), "{path} {body}: {status} {value}");
        value
    }

    /// Writes `key` = `value`; returns the revision of the write.
    pub async fn put(&self, key: &str, value: &str) -> i64 {
        self.put_with(key, value, None).await
    }

    async fn put_with(&self, key: &str, value: &str, lease: Option<i64>) -> i64 {
        let mut body = serde_json::json!({"key": B64.encode(key), "value": B64.encode(value)});
        if let Some(l) = lease {
            body["lease"] = l.to_string().into();
        }
        let reply = self.call("/v3/kv/put", body).await;
        revision(&reply)
    }

    /// A lease of `ttl_s` seconds (`etcdctl lease grant`); returns its ID.
    pub async fn grant_lease(&self, ttl_s: u64) -> i64 {
        let reply = self
            .call(
                "/v3/lease/grant",
                serde_json::json!({"TTL": ttl_s.to_string()}),
            )
            .await;
        reply["ID"].as_str().unwrap().parse().unwrap()
    }

    /// Writes `key` = `value` attached to `lease` (`etcdctl put --lease`).
    pub async fn put_leased(&self, key: &str, value: &str, lease: i64) -> i64 {
        self.put_with(key, value, Some(lease)).await
    }

    /// Deletes `key`.
    pub async fn delete(&self, key: &str) {
        self.call(
            "/v3/kv/deleterange",
            serde_json::json!({"key": B64.encode(key)}),
        )
        .await;
    }

    /// Compacts the history up to `revision`: watches from older
    /// revisions are cancelled.
    pub async fn compact(&self, revision: i64) {
        self.call(
            "/v3/kv/compaction",
            serde_json::json!({"revision": revision.to_string(), "physical": true}),
        )
        .await;
    }

    /// Creates `root` with `password`, grants it the root role and turns
    /// authentication on; later calls of this helper authenticate as root.
    pub async fn enable_auth(&mut self, password: &str) {
        self.call(
            "/v3/auth/user/add",
            serde_json::json!({"name": "root", "password": password}),
        )
        .await;
        self.call("/v3/auth/role/add", serde_json::json!({"name": "root"}))
            .await;
        self.call(
            "/v3/auth/user/grant",
            serde_json::json!({"user": "root", "role": "root"}),
        )
        .await;
        self.call("/v3/auth/enable", serde_json::json!({})).await;
        let reply = self
            .call(
                "/v3/auth/authenticate",
                serde_json::json!({"name": "root", "password": password}),
            )
            .await;
        self.token = Some(reply["token"].as_str().unwrap().to_owned());
    }
}

fn revision(reply: &serde_json::Value) -> i64 {
    reply["header"]["revision"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no revision in {reply}"))
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
