//! The gateway run as `gateway serve` runs it: the shared load path, the
//! file watcher, the admin listener and `server::run`, on ephemeral ports.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use gateway::reload::{self, ReloadState};
use gateway::server::{self, Gateway};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub struct RunningGateway {
    /// `host:port` of the REST listener.
    pub rest: String,
    /// `host:port` of the admin listener.
    pub admin: String,
    pub gw: Arc<Gateway>,
    pub stop: Option<oneshot::Sender<()>>,
    pub done: tokio::task::JoinHandle<std::io::Result<()>>,
    pub dir: PathBuf,
}

impl RunningGateway {
    /// Loads `config` (panicking with every error if it is rejected), starts
    /// the watcher and serves REST and admin on loopback.
    pub async fn start(config: &Path) -> RunningGateway {
        let state = ReloadState::default();
        let snapshot = reload::load(config, None, &state)
            .await
            .unwrap_or_else(|e| panic!("initial config rejected:\n{e}"));
        let gw = Gateway::new(snapshot);
        reload::spawn_watcher(gw.clone());
        let rest = TcpListener::bind("127.0.0.1:0").await.expect("bind rest");
        let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
        let rest_addr = rest.local_addr().expect("rest addr").to_string();
        let admin_addr = admin.local_addr().expect("admin addr").to_string();
        let (stop, stopped) = oneshot::channel::<()>();
        let done = tokio::spawn(server::run(rest, Some(admin), gw.clone(), async {
            let _ = stopped.await;
        }));
        RunningGateway {
            rest: rest_addr,
            admin: admin_addr,
            gw,
            stop: Some(stop),
            done,
            dir: config.parent().expect("config has a folder").to_owned(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.rest)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }
}

impl Drop for RunningGateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
