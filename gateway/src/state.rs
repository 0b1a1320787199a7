//! The gateway's shared state: the current snapshot (swapped whole on
//! reload), readiness, the drain cut, and the reload bookkeeping. The
//! listener, the admin API and the reload triggers all hold it; it depends
//! on none of them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::snapshot::Snapshot;
use crate::upstream::reflection::Reflected;

/// Shared by every connection: the current snapshot, swapped whole on reload.
#[derive(Debug)]
pub struct Gateway {
    /// Shared with the pipeline's route stage, which loads it once per request.
    snapshot: Arc<ArcSwap<Snapshot>>,
    /// False while starting and while draining; /readyz reports it.
    ready: AtomicBool,
    /// Set when `server.drain_timeout` has passed: requests still running
    /// are answered 503 and logged (see the pipeline's handler).
    cut: tokio::sync::watch::Sender<bool>,
    pub reload: ReloadState,
}

impl Gateway {
    pub fn new(snapshot: Snapshot) -> Arc<Gateway> {
        // The metrics recorder exists before the first request is counted.
        crate::telemetry::metrics::handle();
        crate::telemetry::metrics::start_upkeep();
        metrics::gauge!(crate::telemetry::metrics::CONFIG_VERSION).set(snapshot.version as f64);
        Arc::new(Gateway {
            snapshot: Arc::new(ArcSwap::from_pointee(snapshot)),
            ready: AtomicBool::new(false),
            cut: tokio::sync::watch::Sender::new(false),
            reload: ReloadState::default(),
        })
    }

    /// The snapshot cell itself, for the pipeline's route stage.
    pub(crate) fn snapshots(&self) -> Arc<ArcSwap<Snapshot>> {
        self.snapshot.clone()
    }

    /// Becomes true when the drain timeout has passed (see [`Gateway::cut_in_flight`]).
    pub(crate) fn drain_cut(&self) -> tokio::sync::watch::Receiver<bool> {
        self.cut.subscribe()
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Replaces the snapshot in one step; requests already running keep the
    /// one they started with.
    pub fn swap(&self, snapshot: Snapshot) {
        self.snapshot.store(Arc::new(snapshot));
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Ends every request still waiting for its answer with a 503, each
    /// logged and counted as cut at drain; the end of a graceful shutdown.
    pub fn cut_in_flight(&self) {
        self.cut.send_replace(true);
    }
}

/// The outcome of the last reload attempt, for /admin/config.
#[derive(Debug, Clone)]
pub struct ReloadStatus {
    pub at: SystemTime,
    pub trigger: String,
    /// `file` or `consul`: where the candidate came from.
    pub source: &'static str,
    /// The `ModifyIndex` of the KV key tried, for a candidate from Consul.
    pub consul_index: Option<u64>,
    /// `None` when it succeeded.
    pub error: Option<String>,
}

/// Reload bookkeeping shared by every trigger.
#[derive(Debug)]
pub struct ReloadState {
    /// One reload at a time; a trigger that arrives meanwhile waits and then
    /// reads the files as they are by then.
    pub(crate) lock: tokio::sync::Mutex<()>,
    pub last: ArcSwap<Option<ReloadStatus>>,
    /// The last refused attempt, kept after later successes so that a bad
    /// write and why it was refused stay visible in /admin/config.
    pub last_refused: ArcSwap<Option<ReloadStatus>>,
    /// routes.toml as text when the running configuration did not come
    /// from `--config` (Consul KV, or its cache): SIGHUP and
    /// `POST /admin/reload` rebuild from it instead of reading a file.
    pub input: ArcSwap<Option<Arc<crate::config::TextInput>>>,
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    /// Last good reflection answer per backend, served when the backend is
    /// briefly unreachable during a reload.
    pub(crate) reflection_cache: Mutex<BTreeMap<String, Reflected>>,
    /// `--allow-empty`: a configuration with no route is accepted. Without
    /// it an empty or route-less file is refused (at start, in `check` and
    /// on reload), since it is far more often a truncated write than intent.
    pub allow_empty: AtomicBool,
}

impl Default for ReloadState {
    fn default() -> Self {
        ReloadState {
            lock: tokio::sync::Mutex::new(()),
            last: ArcSwap::from_pointee(None),
            last_refused: ArcSwap::from_pointee(None),
            input: ArcSwap::from_pointee(None),
            succeeded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            reflection_cache: Mutex::new(BTreeMap::new()),
            allow_empty: AtomicBool::new(false),
        }
    }
}
