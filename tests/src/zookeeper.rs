//! [`ZooKeeperServer`]: a real standalone ZooKeeper (Debian's `zookeeper`
//! jars, run with `java` directly) on a free loopback port with its own
//! data directory and a generated zoo.cfg, killed on drop and restartable;
//! [`Registration`]: an instance registered as an ephemeral znode by its own
//! session, through the same client crate the gateway uses.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use zookeeper_client as zk;

/// Debian's ZooKeeper jar; its manifest's Class-Path names its dependencies.
pub fn zookeeper_jar() -> PathBuf {
    std::env::var_os("ZOOKEEPER_JAR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/share/java/zookeeper.jar"))
}

/// A standalone ZooKeeper (see the module comment).
pub struct ZooKeeperServer {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl ZooKeeperServer {
    /// Starts ZooKeeper and waits until it accepts connections.
    pub async fn start() -> ZooKeeperServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = crate::temp_dir("zookeeper");
        // tickTime 500 ms: sessions may be as short as 1 s (2 ticks), so a
        // closed or expired session is seen quickly; the admin server (an
        // HTTP port of its own) is off.
        std::fs::write(
            dir.join("zoo.cfg"),
            format!(
                "tickTime=500\ndataDir={}\nclientPort={port}\nclientPortAddress=127.0.0.1\nadmin.enableServer=false\nmaxSessionTimeout=60000\n",
                dir.join("data").display()
            ),
        )
        .unwrap();
        let mut s = ZooKeeperServer {
            port,
            dir,
            child: None,
        };
        s.spawn().await;
        s
    }

    /// `127.0.0.1:<port>`, as the gateway's `servers` lists it.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.join("zookeeper.log")).unwrap();
        let child = Command::new("java")
            .arg("-Xmx256m")
            .arg("-cp")
            .arg(zookeeper_jar())
            .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
            .arg(self.dir.join("zoo.cfg"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start java: {e} (apt-get install zookeeper)"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // A session, not just a TCP accept: the server is serving.
            let connected = tokio::time::timeout(
                Duration::from_secs(2),
                zk::Client::connector()
                    .with_fail_eagerly()
                    .connect(&self.address()),
            )
            .await;
            if let Ok(Ok(client)) = connected {
                drop(client);
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                let log =
                    std::fs::read_to_string(self.dir.join("zookeeper.log")).unwrap_or_default();
                panic!("ZooKeeper exited with {status}:\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "ZooKeeper did not serve within 30s on {}",
                self.address()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills ZooKeeper (every connection is cut).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port with the same data.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    /// Starts it again on the same port with no data: every session the
    /// clients held is unknown to it, so they are told it expired.
    pub async fn restart_empty(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(self.dir.join("data"));
        self.spawn().await;
    }

    /// A session of the test's own, e.g. to create the parent path.
    pub async fn client(&self) -> zk::Client {
        zk::Client::connector()
            .with_session_timeout(Duration::from_secs(2))
            .connect(&self.address())
            .await
            .expect("a ZooKeeper session")
    }

    /// Registers `data` as the ephemeral znode `<parent>/<name>`, creating
    /// the parent (persistent) if needed, in a session of its own.
    pub async fn register(&self, parent: &str, name: &str, data: &str) -> Registration {
        let client = self.client().await;
        let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
        match client.mkdir(parent, &persistent).await {
            Ok(()) | Err(zk::Error::NodeExists) => {}
            Err(e) => panic!("mkdir {parent}: {e}"),
        }
        let ephemeral = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
        let path = format!("{parent}/{name}");
        client
            .create(&path, data.as_bytes(), &ephemeral)
            .await
            .unwrap_or_else(|e| panic!("create {path}: {e}"));
        Registration {
            client: Some(client),
        }
    }
}

/// An ephemeral registration: its znode lives as long as its session.
pub struct Registration {
    client: Option<zk::Client>,
}

impl Registration {
    /// Closes the session (the client sends CloseSession once its last
    /// handle is dropped): ZooKeeper deletes the znode at once.
    pub fn close(mut self) {
        drop(self.client.take());
    }
}

impl Drop for ZooKeeperServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
