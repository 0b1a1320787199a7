//! Instances registered as znodes under a ZooKeeper path, watched.
//!
//! Each child of the path is one instance (normally an ephemeral znode, so
//! it disappears when the instance's session ends), and its data says where
//! it listens in one of the shapes of [`super::value`]: `host:port`,
//! `{"host": ..., "port": N}`, Apache Curator's `ServiceInstance` JSON
//! (`{"address": ..., "port": N, ...}`) or `{"Addr": "host:port"}`.
//!
//! The cycle follows ZooKeeper's watch semantics
//! (<https://zookeeper.apache.org/doc/r3.8.0/zookeeperProgrammers.html#ch_zkWatches>):
//! a children watch fires once, so every change is followed by a new read
//! that sets the watch again; the children's data is read at the same time.
//! A path that does not exist (yet) lists no instance, and an exists-watch
//! notices its creation. While the connection is lost the last list stays
//! in force (reported as a failure); once the client reconnects within the
//! session the path is read again. A session that expired (ZooKeeper was
//! away longer than `session_timeout`) or closed is replaced by a new one,
//! with backoff, and the path read again.
//!
//! The client is the `zookeeper-client` crate, pure Rust and async, built
//! without its `tls` and `sasl` features so that it brings no second TLS
//! or crypto stack; it runs its tasks on tokio (its sockets use
//! `async-io`'s reactor thread).

use std::sync::Arc;
use std::time::Duration;

use tokio::task::AbortHandle;
use zookeeper_client as zk;

use super::{backoff, value, Sink, Source, SourceKind, StateLog, Target};

pub const KIND: SourceKind = SourceKind::new("zookeeper");

/// Curator's and ZooKeeper's usual value: short enough that a crashed
/// instance's ephemeral znode goes away quickly, long enough to ride out a
/// leader election.
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(10);
/// Reconnect schedule after a failed or expired session, as for Consul and
/// etcd: a restarting server is back within seconds, and a long outage is
/// still noticed within 10 s of its end.
const BASE_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// What to watch, as configured; equal specs keep a live watch across reloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZooKeeperSpec {
    /// `host:port` of each server of the ensemble.
    pub servers: Vec<String>,
    /// The parent znode, absolute, without a trailing slash.
    pub path: String,
    pub session_timeout: Duration,
}

impl ZooKeeperSpec {
    /// `ZooKeeper path "/services/users" at 127.0.0.1:2181`.
    pub fn describe(&self) -> String {
        format!(
            "ZooKeeper path \"{}\" at {}",
            self.path,
            self.servers.join(",")
        )
    }
}

/// Why the path gave no usable list.
#[derive(Debug, thiserror::Error)]
enum ZkError {
    #[error("cannot reach ZooKeeper at {servers}: {reason}")]
    Unreachable { servers: String, reason: String },
    #[error("ZooKeeper session ended ({0}); starting a new one")]
    Session(String),
    #[error("ZooKeeper answered an error reading {path}: {reason}")]
    Read { path: String, reason: String },
}

impl ZkError {
    fn kind(&self) -> &'static str {
        match self {
            ZkError::Unreachable { .. } => "unreachable",
            ZkError::Session(_) => "session",
            ZkError::Read { .. } => "read",
        }
    }
}

/// A child and its data as an instance, or why not.
fn target(child: &str, data: &[u8]) -> Result<Target, String> {
    Ok(Target {
        addr: value::parse(data)?,
        weight: 1,
        label: Some(child.to_owned()),
    })
}

/// How waiting on a read's watch ended.
enum Wake {
    /// Something under the path changed, or the connection came back: read again.
    Read,
    /// The session is over: start a new one.
    NewSession(String),
}

struct Watcher {
    spec: ZooKeeperSpec,
    sink: Arc<dyn Sink>,
    backend: String,
    log: StateLog,
    known: usize,
    failures: u32,
}

impl Watcher {
    fn failed(&mut self, e: &ZkError) {
        let text = e.to_string();
        self.log.failed(e.kind(), &text, self.known);
        self.sink.failed(text);
    }

    async fn connect(&self) -> Result<zk::Client, ZkError> {
        let servers = self.spec.servers.join(",");
        let connect = zk::Client::connector()
            .with_session_timeout(self.spec.session_timeout)
            .with_connection_timeout(self.spec.session_timeout.min(Duration::from_secs(5)))
            .with_fail_eagerly()
            .connect(&servers);
        // fail_eagerly gives up once every server refused; the timeout also
        // bounds a server that accepts and never answers.
        match tokio::time::timeout(self.spec.session_timeout, connect).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => Err(ZkError::Unreachable {
                servers,
                reason: e.to_string(),
            }),
            Err(_) => Err(ZkError::Unreachable {
                servers,
                reason: format!("no session within {:?}", self.spec.session_timeout),
            }),
        }
    }

    /// The children of the path with their data, and the watch that fires
    /// on the next change.
    async fn read(
        &self,
        client: &zk::Client,
    ) -> Result<(Vec<Target>, zk::OneshotWatcher), zk::Error> {
        let path = &self.spec.path;
        let (children, watcher) = match client.list_and_watch_children(path).await {
            Ok(r) => r,
            Err(zk::Error::NoNode) => {
                // Not created yet: no instance, and an exists-watch that
                // fires when it is (a race with its creation re-reads).
                let (stat, watcher) = client.check_and_watch_stat(path).await?;
                if stat.is_some() {
                    return Box::pin(self.read(client)).await;
                }
                return Ok((Vec::new(), watcher));
            }
            Err(e) => return Err(e),
        };
        let mut out: Vec<Target> = Vec::with_capacity(children.len());
        for child in children {
            let full = format!("{}/{child}", path.trim_end_matches('/'));
            let data = match client.get_data(&full).await {
                Ok((data, _)) => data,
                // Gone between the listing and the read: the watch fires.
                Err(zk::Error::NoNode) => continue,
                Err(e) => return Err(e),
            };
            match target(&child, &data) {
                Ok(t) if !out.iter().any(|o| o.addr == t.addr) => out.push(t),
                Ok(_) => {}
                Err(reason) => tracing::warn!(
                    backend = %self.backend,
                    znode = %full,
                    reason,
                    "skipping a znode that does not name an instance"
                ),
            }
        }
        Ok((out, watcher))
    }

    /// Waits for the read's watch, reporting a lost connection as a failure
    /// while it lasts.
    async fn wait(&mut self, watcher: zk::OneshotWatcher, state: &mut zk::StateWatcher) -> Wake {
        let changed = watcher.changed();
        tokio::pin!(changed);
        loop {
            tokio::select! {
                event = &mut changed => {
                    return match event.event_type {
                        zk::EventType::Session if event.session_state.is_terminated() => {
                            Wake::NewSession(format!("{:?}", event.session_state))
                        }
                        _ => Wake::Read,
                    };
                }
                s = state.changed() => match s {
                    zk::SessionState::Disconnected => {
                        let e = ZkError::Unreachable {
                            servers: self.spec.servers.join(","),
                            reason: "connection lost; the session lives on for now".into(),
                        };
                        self.failed(&e);
                    }
                    zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => {
                        return Wake::Read;
                    }
                    other => return Wake::NewSession(format!("{other:?}")),
                },
            }
        }
    }

    /// One session: reads and watches until it ends.
    async fn session(&mut self, client: zk::Client) -> String {
        let mut state = client.state_watcher();
        loop {
            match self.read(&client).await {
                Ok((targets, watcher)) => {
                    self.failures = 0;
                    self.known = targets.len();
                    self.log.ok(self.known);
                    self.sink.update(targets, None);
                    match self.wait(watcher, &mut state).await {
                        Wake::Read => {}
                        Wake::NewSession(why) => return why,
                    }
                }
                Err(
                    e @ (zk::Error::SessionExpired
                    | zk::Error::ClientClosed
                    | zk::Error::AuthFailed
                    | zk::Error::NoHosts),
                ) => {
                    return e.to_string();
                }
                Err(e) => {
                    self.failures += 1;
                    let err = ZkError::Read {
                        path: self.spec.path.clone(),
                        reason: e.to_string(),
                    };
                    self.failed(&err);
                    tokio::time::sleep(backoff(self.failures, BASE_BACKOFF, MAX_BACKOFF)).await;
                }
            }
        }
    }
}

/// Connects, reads and watches the path until the task is aborted (see
/// the module comment for the cycle).
pub async fn watch(spec: ZooKeeperSpec, sink: Arc<dyn Sink>, backend: String) {
    let mut w = Watcher {
        log: StateLog::new(&backend, spec.describe()),
        spec,
        sink,
        backend,
        known: 0,
        failures: 0,
    };
    loop {
        match w.connect().await {
            Ok(client) => {
                let why = w.session(client).await;
                w.failures += 1;
                w.failed(&ZkError::Session(why));
            }
            Err(e) => {
                w.failures += 1;
                w.failed(&e);
            }
        }
        tokio::time::sleep(backoff(w.failures, BASE_BACKOFF, MAX_BACKOFF)).await;
    }
}

impl Source for ZooKeeperSpec {
    fn kind(&self) -> SourceKind {
        KIND
    }

    fn describe(&self) -> String {
        ZooKeeperSpec::describe(self)
    }

    fn start(&self, backend: &str, sink: Arc<dyn Sink>) -> Vec<AbortHandle> {
        let task = tokio::spawn(watch(self.clone(), sink, backend.to_owned()));
        vec![task.abort_handle()]
    }

    /// The session timeout does not change which instances are listed.
    fn same_source(&self, other: &dyn Source) -> bool {
        other
            .downcast_ref::<ZooKeeperSpec>()
            .is_some_and(|o| o.servers == self.servers && o.path == self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_name_their_instances() {
        let t = target("a", br#"{"host": "10.0.0.1", "port": 5}"#).unwrap();
        assert_eq!(
            (t.addr.as_str(), t.label.as_deref()),
            ("10.0.0.1:5", Some("a"))
        );
        assert!(target("b", b"").is_err());
    }

    #[test]
    fn the_session_timeout_does_not_make_another_source() {
        let spec = |timeout_s, path: &str| ZooKeeperSpec {
            servers: vec!["127.0.0.1:2181".into()],
            path: path.into(),
            session_timeout: Duration::from_secs(timeout_s),
        };
        assert!(spec(10, "/s").same_source(&spec(20, "/s")));
        assert!(!spec(10, "/s").same_source(&spec(10, "/t")));
        assert_eq!(
            spec(10, "/s").describe(),
            "ZooKeeper path \"/s\" at 127.0.0.1:2181"
        );
    }
}
