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

    /// The admin listener's `/metrics`, as text.
    pub async fn metrics_text(&self) -> String {
        crate::http_client()
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("the /metrics text")
    }
}

impl Drop for RunningGateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A gRPC backend in its own runtime: `kill` drops every connection at once,
/// as a crashed process would, and `restart` binds the same address again.
pub struct KillableBackend {
    /// `host:port`; the same across restarts.
    pub addr: String,
    make: Box<dyn Fn() -> gateway::example::DynamicServer + Send + Sync>,
    rt: Option<tokio::runtime::Runtime>,
}

impl KillableBackend {
    /// Starts `make()` on an ephemeral loopback port.
    pub fn start(
        make: impl Fn() -> gateway::example::DynamicServer + Send + Sync + 'static,
    ) -> KillableBackend {
        let mut me = KillableBackend {
            addr: String::new(),
            make: Box::new(make),
            rt: None,
        };
        me.run("127.0.0.1:0".parse().expect("loopback address"));
        me
    }

    fn run(&mut self, addr: std::net::SocketAddr) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = {
            let _in = rt.enter();
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            // Rebinding the port of a killed instance right away.
            socket.set_reuseaddr(true).expect("reuseaddr");
            socket.bind(addr).expect("bind instance");
            socket.listen(128).expect("listen")
        };
        self.addr = listener.local_addr().expect("local addr").to_string();
        rt.spawn((self.make)().serve(listener));
        self.rt = Some(rt);
    }

    pub fn kill(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        let addr = self.addr.parse().expect("own address");
        self.run(addr);
    }
}

impl Drop for KillableBackend {
    fn drop(&mut self) {
        self.kill();
    }
}
