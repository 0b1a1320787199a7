//! Building a new snapshot and swapping it in: at startup, on a file change,
//! on a Consul KV change, on SIGHUP and on `POST /admin/reload`. One path for
//! all of them (and for `gateway check`), so what is checked is what runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use notify::{EventKind, RecursiveMode, Watcher};

use crate::config::{ConfigError, ConfigErrors, LoadedFile, Origin, DEFAULT_CONNECT_TIMEOUT};
use crate::snapshot::{BuildContext, Snapshot};
use crate::state::Gateway;
use crate::upstream::reflection::{self, Reflected};
use crate::upstream::{Backend, BackendDefinition};

/// Editors and `kubectl cp` write a file in several steps (truncate, write,
/// rename); waiting for 200 ms of quiet turns them into one reload, and is
/// still well inside the 2 s operators expect a change to take.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// After the quiet period, routes.toml must read the same twice this far
/// apart before it is loaded: a writer pausing between two chunks for longer
/// than [`DEBOUNCE`] (a script appending in steps, a slow copy) would
/// otherwise have its first half loaded whenever that half is valid TOML.
/// Together with the debounce this covers pauses of up to 700 ms, and keeps
/// a reload within about a second of the last write.
const SETTLE: Duration = Duration::from_millis(500);

/// A write to routes.toml whose close has not been seen (the writer still
/// holds the file open) is waited for this long before the file is read
/// anyway: a writer that keeps its file open between chunks is covered
/// whatever its pauses, and a stuck one does not stop reloads for good.
const MAX_OPEN_WRITE_WAIT: Duration = Duration::from_secs(10);

/// Reflection runs at reload time against a live backend; a backend that
/// cannot list its services in 5 s is treated as failing, and the cached copy
/// (if any) is used.
const REFLECTION_TIMEOUT: Duration = Duration::from_secs(5);

pub use crate::state::{ReloadState, ReloadStatus};

pub use crate::config::TextInput;

/// Reads the config, fetches reflection descriptors, and builds a snapshot
/// off the async workers (descriptor compilation is CPU work).
pub async fn load(
    path: &Path,
    previous: Option<Arc<Snapshot>>,
    state: &ReloadState,
) -> Result<Snapshot, ConfigErrors> {
    load_file(LoadedFile::read(path)?, previous, state).await
}

/// As [`load`], from routes.toml already parsed.
pub async fn load_file(
    file: LoadedFile,
    previous: Option<Arc<Snapshot>>,
    state: &ReloadState,
) -> Result<Snapshot, ConfigErrors> {
    let path = file.path.clone();
    let reflected = fetch_reflection(&file, previous.as_deref(), state).await;
    let version = previous.as_ref().map_or(1, |p| p.version + 1);
    let handle = tokio::runtime::Handle::current();
    let allow_empty = state.allow_empty.load(Ordering::Relaxed);
    let snapshot = tokio::task::spawn_blocking(move || {
        let _rt = handle.enter();
        Snapshot::build(
            &file,
            BuildContext {
                reflected,
                previous: previous.as_deref(),
                version,
            },
        )
    })
    .await
    .map_err(|e| {
        ConfigErrors::one(ConfigError::new(
            &path,
            None,
            "",
            format!("building the configuration failed: {e}"),
        ))
    })??;
    if snapshot.routes.is_empty() && !allow_empty {
        return Err(ConfigErrors::one(ConfigError::new(
            &path,
            None,
            "routes",
            "the configuration has no route (an empty or half-written file?); add [[routes]] or \
             backends whose services carry google.api.http annotations, or start the gateway \
             with --allow-empty to serve none on purpose"
                .to_owned(),
        )));
    }
    Ok(snapshot)
}

/// Asks each `reflection = true` backend for its descriptors.
async fn fetch_reflection(
    file: &LoadedFile,
    previous: Option<&Snapshot>,
    state: &ReloadState,
) -> BTreeMap<String, Reflected> {
    let mut out = BTreeMap::new();
    for (name, spanned) in &file.config.backends {
        let b = spanned.get_ref();
        if !b.reflection {
            continue;
        }
        let endpoints: Vec<String> = b.endpoints.iter().map(|e| e.get_ref().clone()).collect();
        let tls = match &b.tls {
            None => None,
            Some(t) => match crate::upstream::tls::BackendTls::load(file, name, t, &mut Vec::new())
            {
                Some(tls) => Some(tls),
                // The snapshot build reports why and refuses the
                // configuration; reflection must not try plaintext meanwhile.
                None => continue,
            },
        };
        // Reuse the live connection when the backend is unchanged; a renewed
        // certificate or CA must be used (and proven) by reflection too.
        let live = previous
            .and_then(|p| p.backends.get(name))
            .filter(|old| old.definition.endpoints == endpoints && old.definition.tls == tls)
            .cloned();
        let backend = match live {
            Some(b) => b,
            None => match Backend::new(
                name,
                BackendDefinition {
                    endpoints,
                    timeout: REFLECTION_TIMEOUT,
                    connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                    compression: None,
                    tls,
                },
            ) {
                Ok(b) => Arc::new(b),
                // The snapshot build reports the bad endpoint with its line.
                Err(_) => continue,
            },
        };
        let mut result = Err(tonic::Status::unavailable("the backend has no endpoints"));
        for ep in &backend.endpoints {
            result = match ep.channel() {
                Ok(channel) => reflection::fetch(channel, REFLECTION_TIMEOUT).await,
                Err(e) => Err(tonic::Status::unavailable(e.to_string())),
            };
            if result.is_ok() {
                break;
            }
        }
        let mut cache = state.reflection_cache.lock().expect("cache lock");
        match result {
            Ok(r) => {
                tracing::debug!(backend = %name, services = r.services.len(), files = r.files.len(), "descriptors from server reflection");
                cache.insert(name.clone(), r.clone());
                out.insert(name.clone(), r);
            }
            Err(e) => match cache.get(name) {
                Some(r) => {
                    tracing::warn!(backend = %name, error = %e.message(), "server reflection failed; using the descriptors it gave last time");
                    out.insert(name.clone(), r.clone());
                }
                None => {
                    tracing::warn!(backend = %name, error = %e.message(), "server reflection failed and nothing is cached; routes to its services will not resolve");
                }
            },
        }
    }
    out
}

/// Builds from the files as they are now (or from the KV text the running
/// configuration came from) and swaps the result in; on any error the
/// running snapshot stays. Returns the new version.
pub async fn reload(gw: &Gateway, trigger: &str) -> Result<u64, ConfigErrors> {
    apply(gw, trigger, None).await
}

/// [`reload`] from a new text (a KV change): on success it becomes what
/// later reloads rebuild from; on error the running snapshot and its text
/// stay.
pub async fn apply(
    gw: &Gateway,
    trigger: &str,
    candidate: Option<Arc<TextInput>>,
) -> Result<u64, ConfigErrors> {
    let state = &gw.reload;
    let _one_at_a_time = state.lock.lock().await;
    let current = gw.snapshot();
    let started = std::time::Instant::now();
    let input = candidate.clone().or_else(|| (**state.input.load()).clone());
    let origin = input.as_ref().map_or(Origin::File, |i| i.origin);
    let file = match &input {
        Some(text) => text.parse(),
        None => LoadedFile::read(&current.config_path),
    };
    let result = match file {
        Ok(file) => load_file(file, Some(current.clone()), state).await,
        Err(errors) => Err(errors),
    };
    match result {
        Ok(snapshot) => {
            state.last.store(Arc::new(Some(ReloadStatus {
                at: SystemTime::now(),
                trigger: trigger.to_owned(),
                source: origin.label(),
                consul_index: consul_index(origin),
                error: None,
            })));
            if candidate.is_some() {
                state.input.store(Arc::new(candidate));
            }
            let version = snapshot.version;
            let routes = snapshot.routes.len();
            if snapshot.listen != current.listen || snapshot.admin_listen != current.admin_listen {
                tracing::warn!("listener addresses changed in the config; they take effect at the next restart");
            }
            if snapshot.tls.is_some() != current.tls.is_some() {
                tracing::warn!("[server.tls] was added or removed in the config; the listener's TLS mode changes at the next restart");
            }
            if snapshot.worker_threads != current.worker_threads {
                tracing::warn!("server.worker_threads changed in the config; it takes effect at the next restart");
            }
            snapshot.log_warnings();
            let hash = snapshot.config_digest.clone();
            gw.swap(snapshot);
            state.succeeded.fetch_add(1, Ordering::Relaxed);
            crate::telemetry::metrics::record_reload(true, version, origin.label());
            tracing::info!(
                trigger,
                source = origin.label(),
                version,
                hash,
                routes,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "configuration reloaded"
            );
            Ok(version)
        }
        Err(errors) => {
            refuse(gw, trigger, origin, errors.clone());
            Err(errors)
        }
    }
}

fn consul_index(origin: Origin) -> Option<u64> {
    match origin {
        Origin::Consul { index } => Some(index),
        Origin::File => None,
    }
}

/// Records a refused candidate: /admin/config (`last_reload` and
/// `last_refused`), the reload counter and metric, one log line. The
/// running snapshot is not touched.
pub fn refuse(gw: &Gateway, trigger: &str, origin: Origin, errors: ConfigErrors) {
    let state = &gw.reload;
    let status = Arc::new(Some(ReloadStatus {
        at: SystemTime::now(),
        trigger: trigger.to_owned(),
        source: origin.label(),
        consul_index: consul_index(origin),
        error: Some(errors.to_string()),
    }));
    state.last_refused.store(status.clone());
    state.last.store(status);
    state.failed.fetch_add(1, Ordering::Relaxed);
    crate::telemetry::metrics::record_reload(false, gw.snapshot().version, origin.label());
    // Logged once here, where it is handled; the old snapshot keeps serving.
    tracing::error!(trigger, source = origin.label(), consul_index = consul_index(origin), errors = %errors, "reload rejected; the previous configuration keeps serving");
}

/// The folders to watch for a snapshot: the config file's folder (not
/// recursive), the descriptors folder (recursive), and the folders of the
/// TLS certificates, keys and CAs, the edge's and the backends' (not
/// recursive).
fn watch_targets(s: &Snapshot) -> Vec<(PathBuf, RecursiveMode)> {
    let config_dir = s
        .config_path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("."));
    let mut targets = vec![
        (config_dir, RecursiveMode::NonRecursive),
        (s.descriptors_dir.clone(), RecursiveMode::Recursive),
    ];
    for dir in tls_files(s).map(|f| folder_of(f)) {
        if !targets.iter().any(|(p, _)| *p == dir) {
            targets.push((dir, RecursiveMode::NonRecursive));
        }
    }
    targets
}

/// The folder a file is in, `.` for a bare file name.
fn folder_of(file: &Path) -> PathBuf {
    file.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The certificate and key files of `[server.tls]`, and the CA,
/// certificate and key files of every `[backends.NAME.tls]`: a renewed
/// client certificate or CA reloads like a renewed edge certificate.
fn tls_files(s: &Snapshot) -> impl Iterator<Item = &PathBuf> {
    let backends = s
        .backends
        .values()
        .filter_map(|b| b.definition.tls.as_deref())
        .flat_map(|t| t.files());
    s.tls.iter().flat_map(|t| t.files()).chain(backends)
}

/// Whether a change event concerns the gateway's inputs.
fn relevant(event: &notify::Event, s: &Snapshot) -> bool {
    if matches!(event.kind, EventKind::Access(_)) {
        return false;
    }
    let config_name = s.config_path.file_name();
    let descriptors = s
        .descriptors_dir
        .canonicalize()
        .unwrap_or_else(|_| s.descriptors_dir.clone());
    event.paths.iter().any(|p| {
        let name = p.file_name();
        // `..data` and `..2024_...` are how Kubernetes ConfigMap volumes swap
        // their content: one symlink rename, no event on the file itself.
        name == config_name
            || name.is_some_and(|n| n.to_string_lossy().starts_with(".."))
            || p.starts_with(&s.descriptors_dir)
            || p.starts_with(&descriptors)
            // A renewed certificate or key, written in place or renamed
            // onto (a Secret volume swaps `..data`, matched above). By name
            // only, as routes.toml is: the watched folders hold few files.
            || tls_files(s).any(|f| f.file_name() == name)
    })
}

/// Watches the config file and descriptors folder and reloads on change.
/// Watching folders rather than files survives editors that write by rename
/// and ConfigMap symlink swaps; the watches are re-armed after every reload
/// so a folder replaced wholesale is followed too. A watcher that cannot
/// start is logged and the gateway goes on (SIGHUP and the admin call still work).
pub fn spawn_watcher(gw: Arc<Gateway>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        let _ = tx.send(ev);
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch the config files; reload with SIGHUP or POST /admin/reload");
            return;
        }
    };
    let mut armed = Vec::new();
    arm(&mut watcher, &gw.snapshot(), &mut armed);
    tokio::spawn(async move {
        while let Some(ev) = rx.recv().await {
            let snapshot = gw.snapshot();
            let first = match ev {
                Ok(ev) if relevant(&ev, &snapshot) => ev,
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "file watcher error");
                    continue;
                }
            };
            if !settle(&mut rx, &snapshot.config_path, &first).await {
                return;
            }
            let _ = reload(&gw, "file change").await;
            if arm(&mut watcher, &gw.snapshot(), &mut armed) {
                // A watched folder was replaced: what changed in it before
                // the new watch existed was not seen, so read it all again.
                let _ = reload(&gw, "watched folder replaced").await;
            }
        }
    });
}

/// Waits until the change is complete: [`DEBOUNCE`] without events, no
/// write to routes.toml still open (up to [`MAX_OPEN_WRITE_WAIT`]), and the
/// file reading the same twice [`SETTLE`] apart. Returns false when the
/// watcher has stopped.
async fn settle(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<notify::Result<notify::Event>>,
    config: &Path,
    first: &notify::Event,
) -> bool {
    let started = tokio::time::Instant::now();
    let config_name = config.file_name();
    // Whether routes.toml has been written in place and not yet closed.
    let writing_after = |writing: bool, ev: &notify::Event| {
        if !ev.paths.iter().any(|p| p.file_name() == config_name) {
            return writing;
        }
        match ev.kind {
            EventKind::Access(notify::event::AccessKind::Close(
                notify::event::AccessMode::Write,
            )) => false,
            // Data written in place; a rename onto the file (editors,
            // ConfigMaps) brings it complete.
            EventKind::Modify(notify::event::ModifyKind::Data(_)) => true,
            _ => writing,
        }
    };
    let mut writing = writing_after(false, first);
    loop {
        match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
            Ok(None) => return false,
            Ok(Some(Ok(ev))) => writing = writing_after(writing, &ev),
            Ok(Some(Err(_))) => {}
            Err(_quiet) => {
                if writing && started.elapsed() < MAX_OPEN_WRITE_WAIT {
                    continue;
                }
                let before = std::fs::read(config).ok();
                tokio::time::sleep(SETTLE).await;
                if std::fs::read(config).ok() == before {
                    return true;
                }
            }
        }
    }
}

/// A watched folder and the inode it had when the watch was set.
struct Armed {
    path: PathBuf,
    inode: Option<u64>,
}

fn inode(path: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(path).ok().map(|m| m.ino())
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// Brings the watches in line with the snapshot's folders. Watches that are
/// still right are left alone (unwatching and watching again would lose the
/// events in between); a folder whose inode changed is watched anew.
/// Returns whether any existing watch had to be replaced.
fn arm(watcher: &mut notify::RecommendedWatcher, s: &Snapshot, armed: &mut Vec<Armed>) -> bool {
    let targets = watch_targets(s);
    let mut replaced = false;
    armed.retain(|a| {
        let keep = targets.iter().any(|(p, _)| *p == a.path);
        if !keep {
            let _ = watcher.unwatch(&a.path);
        }
        keep
    });
    for (path, mode) in targets {
        let now = inode(&path);
        if let Some(a) = armed.iter().find(|a| a.path == path) {
            if a.inode == now {
                continue;
            }
            let _ = watcher.unwatch(&path);
            replaced = true;
        }
        armed.retain(|a| a.path != path);
        match watcher.watch(&path, mode) {
            Ok(()) => armed.push(Armed { path, inode: now }),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot watch; changes there need SIGHUP or POST /admin/reload")
            }
        }
    }
    replaced
}

/// Reloads on SIGHUP, the Unix convention for "re-read your config".
pub fn spawn_sighup(gw: Arc<Gateway>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            tracing::warn!("cannot listen for SIGHUP");
            return;
        };
        while hup.recv().await.is_some() {
            let _ = reload(&gw, "SIGHUP").await;
        }
    });
    #[cfg(not(unix))]
    let _ = gw;
}
