//! Configuration from Consul KV: routes.toml is the value of one key
//! (`--consul-kv`), descriptors optionally every key under a prefix
//! (`--consul-kv-descriptors`), both watched with blocking queries
//! (<https://developer.hashicorp.com/consul/api-docs/kv>) through the agent
//! client discovery uses ([`crate::consul`]).
//!
//! Every change goes through [`crate::reload::apply`], the path a file change
//! takes: a bad write is refused, logged, counted and shown in
//! /admin/config, and the last good configuration keeps serving.
//!
//! What is read is written out as one version folder,
//! `<root>/v-<ModifyIndex>-<descriptors id>/` holding `routes.toml` and
//! `descriptors/` (each key below the prefix a file: a `.proto` source when
//! the key ends in `.proto`, otherwise a binary FileDescriptorSet, named
//! `.binpb` unless it already ends in `.binpb`, `.pb` or `.desc`). The
//! descriptor compiler works on folders (protox resolves imports by path),
//! so the version is built from there. When the version is accepted,
//! `<root>/current` is pointed at it by renaming a new symlink over the old
//! one (one atomic step, as Kubernetes swaps `..data`) and older versions
//! are removed; a refused one is removed at once. With `--config-cache` the
//! root is that folder and survives restarts: a gateway that cannot reach
//! Consul at start serves `current` (and says so) until Consul answers.
//! Without it the root is a private folder under the system temp directory.
//!
//! Relative paths inside a KV routes.toml (TLS files, a local descriptors
//! folder when no prefix is given) resolve against the gateway's current
//! directory: a KV value has no folder of its own, and the cache folder
//! holds only what came from KV.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Deserialize;

use crate::config::{ConfigError, ConfigErrors, Origin};
use crate::consul::{next_index, Agent, ConsulError, TokenSource};
use crate::reload::TextInput;
use crate::state::Gateway;

/// Consul's default wait: a change still arrives at once, the wait only
/// bounds how long a quiet key holds the connection.
const WAIT: Duration = Duration::from_secs(300);
/// Consul asks blocking clients to rate limit; a key rewritten in a loop
/// would otherwise rebuild the configuration in a busy loop.
const MIN_QUERY_INTERVAL: Duration = Duration::from_millis(100);
/// As discovery's: a restarting agent is back within seconds, and a long
/// outage is still noticed within 10 s of its end.
const BASE_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// The version folder `current` points at.
const CURRENT: &str = "current";

/// Characters escaped in a key: everything but the unreserved ones and `/`,
/// which separates a key's segments in the URL as in the key.
const KEY: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

/// The command line's KV settings.
#[derive(Debug, Clone)]
pub struct KvOptions {
    /// `--consul-address`, normalised (scheme added).
    pub address: String,
    /// `--consul-kv`: the key whose value is routes.toml.
    pub key: String,
    /// `--consul-kv-descriptors`: the prefix whose keys are descriptors.
    pub descriptors: Option<String>,
    /// `--consul-token-file`, else `CONSUL_HTTP_TOKEN`.
    pub token: TokenSource,
    /// `--config-cache`.
    pub cache: Option<PathBuf>,
}

/// One KV pair as read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pair {
    key: String,
    value: Vec<u8>,
    modify_index: u64,
}

/// An entry of Consul's JSON answer; `Value` is base64, `null` for a key
/// written with no value (as the UI's folders are).
#[derive(Deserialize)]
struct RawPair {
    #[serde(rename = "Key")]
    key: String,
    #[serde(rename = "Value", default)]
    value: Option<String>,
    #[serde(rename = "ModifyIndex", default)]
    modify_index: u64,
}

/// One answer: the pairs (`None`: 404, no such key) and `X-Consul-Index`.
struct Answer {
    pairs: Option<Vec<Pair>>,
    index: u64,
}

/// Why the configuration could not be read from Consul.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error(transparent)]
    Consul(#[from] ConsulError),
    #[error("the key \"{key}\" does not exist in Consul KV at {address}; write routes.toml there with `consul kv put {key} @routes.toml`")]
    Missing { key: String, address: String },
    #[error("cannot write the configuration to {path}: {reason}")]
    Write { path: PathBuf, reason: String },
}

impl KvError {
    /// Whether a cached configuration may stand in: only when Consul could
    /// not be asked. A refused token or a missing key is an answer, and
    /// serving an old cache over it would hide the mistake.
    fn unreachable(&self) -> bool {
        matches!(
            self,
            KvError::Consul(ConsulError::Unreachable { .. } | ConsulError::Status { .. })
        )
    }
}

/// The KV contents one configuration is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Version {
    routes: Pair,
    /// Sorted by key; empty without a prefix.
    descriptors: Vec<Pair>,
}

impl Version {
    /// Names the version folder: the key's ModifyIndex and a short digest of
    /// the descriptor keys and their ModifyIndex (a deletion changes it too,
    /// which no remaining key's index would show).
    fn folder(&self) -> String {
        let mut input = Vec::new();
        for p in &self.descriptors {
            input.extend_from_slice(p.key.as_bytes());
            input.push(0);
            input.extend_from_slice(&p.modify_index.to_be_bytes());
        }
        let d = crate::config::sha256(&input);
        format!(
            "v-{}-{:02x}{:02x}{:02x}{:02x}",
            self.routes.modify_index, d[0], d[1], d[2], d[3]
        )
    }
}

/// The KV source: options, agent client and the folder versions go to.
#[derive(Debug)]
pub struct KvSource {
    opts: KvOptions,
    agent: Agent,
    root: PathBuf,
}

/// Where the first configuration came from, and what the watch starts from.
#[derive(Debug)]
pub struct Start {
    pub input: Arc<TextInput>,
    /// Read from Consul now (`None`: from the cache).
    fetched: Option<Version>,
}

impl Start {
    /// A start from the cache's copy.
    pub fn cached(input: Arc<TextInput>) -> Start {
        Start {
            input,
            fetched: None,
        }
    }

    /// Whether the configuration came from the cache (Consul unreachable).
    pub fn from_cache(&self) -> bool {
        self.fetched.is_none()
    }
}

impl KvSource {
    pub fn new(opts: KvOptions) -> Result<KvSource, KvError> {
        let agent = Agent::new(
            &opts.address,
            None,
            opts.token.clone(),
            "set it with CONSUL_HTTP_TOKEN or --consul-token-file",
        )?;
        let root = match &opts.cache {
            Some(dir) => dir.clone(),
            None => std::env::temp_dir().join(format!("gateway-consul-kv-{}", std::process::id())),
        };
        Ok(KvSource { opts, agent, root })
    }

    /// "consul:<key>", as errors in a KV routes.toml name it.
    fn name(&self) -> PathBuf {
        PathBuf::from(format!("consul:{}", self.opts.key))
    }

    /// The first configuration: read from Consul, or from the cache when
    /// Consul cannot be reached, a cache exists and `use_cache` (not for
    /// `check`, which reports on what is in KV).
    pub async fn start(&self, use_cache: bool) -> Result<Start, KvError> {
        match self.read_version().await {
            Ok(version) => {
                let input = self.write_version(&version)?;
                Ok(Start {
                    input: Arc::new(input),
                    fetched: Some(version),
                })
            }
            Err(e) if e.unreachable() && use_cache => match self.cached() {
                Some(input) => {
                    tracing::warn!(
                        address = %self.opts.address,
                        error = %e,
                        cache = %input.name.display(),
                        "Consul is unreachable; starting from the cached configuration, and taking Consul's once it answers"
                    );
                    Ok(Start {
                        input: Arc::new(input),
                        fetched: None,
                    })
                }
                None => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// The cache's `current` version as text, if there is one.
    pub fn cached(&self) -> Option<TextInput> {
        let cache = self.opts.cache.as_ref()?;
        let folder = std::fs::read_link(cache.join(CURRENT)).ok()?;
        let dir = cache.join(&folder);
        let path = dir.join("routes.toml");
        let text = std::fs::read_to_string(&path).ok()?;
        let index = folder
            .to_str()
            .and_then(|f| f.strip_prefix("v-"))
            .and_then(|f| f.split('-').next())
            .and_then(|i| i.parse().ok())
            .unwrap_or(0);
        Some(TextInput {
            name: path,
            text,
            descriptors: self
                .opts
                .descriptors
                .as_ref()
                .map(|_| dir.join("descriptors")),
            origin: Origin::Consul { index },
        })
    }

    /// The cached routes.toml's path, for reading log settings before the
    /// runtime starts.
    pub fn cached_routes(cache: &Path) -> PathBuf {
        cache.join(CURRENT).join("routes.toml")
    }

    /// Marks the start's version as the last good one (nothing to do when
    /// it came from the cache).
    pub fn commit(&self, start: &Start) {
        if let Some(v) = &start.fetched {
            self.commit_folder(&v.folder());
        }
    }

    /// Points `current` at `folder` (a new symlink renamed over the old
    /// one) and removes older versions.
    fn commit_folder(&self, folder: &str) {
        let tmp = self.root.join(format!(".{CURRENT}.tmp"));
        let _ = std::fs::remove_file(&tmp);
        let swapped = symlink(Path::new(folder), &tmp)
            .and_then(|()| std::fs::rename(&tmp, self.root.join(CURRENT)));
        if let Err(e) = swapped {
            tracing::warn!(cache = %self.root.display(), error = %e, "cannot record the configuration in the cache; a start without Consul will use an older one");
            return;
        }
        self.remove_versions_but(folder);
    }

    /// Removes every version folder but `keep` (and the one `current`
    /// points at).
    fn remove_versions_but(&self, keep: &str) {
        let current = std::fs::read_link(self.root.join(CURRENT)).ok();
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("v-")
                && name != keep
                && current.as_deref() != Some(Path::new(&*name))
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    /// Forgets what a one-shot command (`check`, `routes`) wrote: the
    /// private folder used without `--config-cache`, or the version folder
    /// in the cache when it is not the one in force.
    pub fn discard(&self, start: &Start) {
        if self.opts.cache.is_none() {
            let _ = std::fs::remove_dir_all(&self.root);
        } else if let Some(v) = &start.fetched {
            self.remove_unless_current(&v.folder());
        }
    }

    fn remove_unless_current(&self, folder: &str) {
        if std::fs::read_link(self.root.join(CURRENT)).ok().as_deref() != Some(Path::new(folder)) {
            let _ = std::fs::remove_dir_all(self.root.join(folder));
        }
    }

    /// Reads the key and the prefix now (no blocking).
    async fn read_version(&self) -> Result<Version, KvError> {
        let routes = self.routes_pair(self.get(&self.opts.key, false, 0).await?)?;
        let descriptors = match &self.opts.descriptors {
            Some(prefix) => self.get(prefix, true, 0).await?.pairs.unwrap_or_default(),
            None => Vec::new(),
        };
        Ok(Version {
            routes,
            descriptors,
        })
    }

    fn routes_pair(&self, answer: Answer) -> Result<Pair, KvError> {
        answer
            .pairs
            .and_then(|p| p.into_iter().find(|p| p.key == self.opts.key))
            .ok_or_else(|| KvError::Missing {
                key: self.opts.key.clone(),
                address: self.opts.address.clone(),
            })
    }

    /// `GET /v1/kv/<key>` (with `recurse` for a prefix), blocking when
    /// `index` > 0.
    async fn get(&self, key: &str, recurse: bool, index: u64) -> Result<Answer, ConsulError> {
        let mut path = format!("/v1/kv/{}", utf8_percent_encode(key, KEY));
        let mut params = Vec::new();
        if recurse {
            params.push("recurse".to_owned());
        }
        if index > 0 {
            params.push(format!("index={index}"));
            params.push(format!("wait={}ms", WAIT.as_millis()));
        }
        if !params.is_empty() {
            path.push('?');
            path.push_str(&params.join("&"));
        }
        let reply = self.agent.get(&path, (index > 0).then_some(WAIT)).await?;
        let index = reply
            .index
            .ok_or_else(|| ConsulError::BadReply("no X-Consul-Index header".into()))?;
        if reply.status == 404 {
            return Ok(Answer { pairs: None, index });
        }
        Ok(Answer {
            pairs: Some(decode(&reply.body)?),
            index,
        })
    }

    /// Writes a version folder and returns the text to build from.
    fn write_version(&self, v: &Version) -> Result<TextInput, KvError> {
        let dir = self.root.join(v.folder());
        let write_err = |path: &Path, e: std::io::Error| KvError::Write {
            path: path.to_owned(),
            reason: e.to_string(),
        };
        let text = String::from_utf8_lossy(&v.routes.value).into_owned();
        let current = std::fs::read_link(self.root.join(CURRENT)).ok();
        // The folder in use is never rewritten: same name, same contents.
        if current.as_deref() != Some(Path::new(&v.folder())) {
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).map_err(|e| write_err(&dir, e))?;
            let descriptors = dir.join("descriptors");
            std::fs::create_dir_all(&descriptors).map_err(|e| write_err(&descriptors, e))?;
            for p in &v.descriptors {
                let Some(rel) = self.descriptor_path(&p.key) else {
                    continue;
                };
                let path = descriptors.join(rel);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| write_err(parent, e))?;
                }
                std::fs::write(&path, &p.value).map_err(|e| write_err(&path, e))?;
            }
            write_atomically(&dir.join("routes.toml"), &v.routes.value)
                .map_err(|e| write_err(&dir, e))?;
        }
        Ok(TextInput {
            name: self.name(),
            text,
            descriptors: self
                .opts
                .descriptors
                .as_ref()
                .map(|_| dir.join("descriptors")),
            origin: Origin::Consul {
                index: v.routes.modify_index,
            },
        })
    }

    /// The file a descriptor key becomes, relative to the descriptors
    /// folder; `None` for the prefix itself and folder keys (ending in
    /// `/`). Segments that would leave the folder or be skipped as hidden
    /// are replaced by `_`.
    fn descriptor_path(&self, key: &str) -> Option<PathBuf> {
        let prefix = self.opts.descriptors.as_deref().unwrap_or("");
        let rel = key.strip_prefix(prefix)?.trim_start_matches('/');
        if rel.is_empty() || rel.ends_with('/') {
            return None;
        }
        let mut path = PathBuf::new();
        for seg in rel.split('/').filter(|s| !s.is_empty()) {
            match seg.strip_prefix('.') {
                Some(rest) => path.push(format!("_{rest}")),
                None => path.push(seg),
            }
        }
        let known = ["proto", "binpb", "pb", "desc"];
        if !path
            .extension()
            .is_some_and(|e| known.iter().any(|k| e == *k))
        {
            let mut name = path.file_name()?.to_os_string();
            name.push(".binpb");
            path.set_file_name(name);
        }
        Some(path)
    }

    /// Watches the key and the prefix until the task ends, taking every new
    /// version through the reload path.
    pub fn spawn_watch(self: Arc<Self>, gw: Arc<Gateway>, start: &Start) {
        let applied = start.fetched.clone();
        tokio::spawn(async move { self.watch(gw, applied).await });
    }

    async fn watch(&self, gw: Arc<Gateway>, mut applied: Option<Version>) {
        let mut routes = applied.as_ref().map(|v| v.routes.clone());
        let mut descriptors = applied.as_ref().map(|v| v.descriptors.clone());
        let mut routes_cursor = Cursor::default();
        let mut desc_cursor = Cursor::default();
        let mut failing: Option<&'static str> = None;
        let mut failures = 0u32;
        let mut missing_reported = false;
        loop {
            let started = Instant::now();
            let answer = tokio::select! {
                a = self.get(&self.opts.key, false, routes_cursor.index) => (false, a),
                a = self.get(self.opts.descriptors.as_deref().unwrap_or(""), true, desc_cursor.index),
                    if self.opts.descriptors.is_some() => (true, a),
            };
            let (is_prefix, answer) = answer;
            let cursor = if is_prefix {
                &mut desc_cursor
            } else {
                &mut routes_cursor
            };
            let answer = match answer {
                Ok(a) => a,
                Err(e) => {
                    failures += 1;
                    if failing != Some(e.kind()) {
                        tracing::warn!(address = %self.opts.address, key = %self.opts.key, error = %e, "cannot read the configuration from Consul KV; the running configuration keeps serving");
                        failing = Some(e.kind());
                    }
                    cursor.index = 0;
                    tokio::time::sleep(crate::discovery::backoff(
                        failures,
                        BASE_BACKOFF,
                        MAX_BACKOFF,
                    ))
                    .await;
                    continue;
                }
            };
            if failing.take().is_some() {
                tracing::info!(address = %self.opts.address, key = %self.opts.key, "Consul KV is answering again");
            }
            failures = 0;
            cursor.index = next_index(cursor.applied, answer.index);
            cursor.applied = answer.index;
            if is_prefix {
                descriptors = Some(answer.pairs.unwrap_or_default());
            } else {
                match self.routes_pair(answer) {
                    Ok(p) => {
                        routes = Some(p);
                        missing_reported = false;
                    }
                    // A deleted key is refused once; what runs stays.
                    Err(e) => {
                        if !missing_reported {
                            missing_reported = true;
                            self.refuse(&gw, 0, e);
                        }
                        routes = None;
                    }
                }
            }
            let ready = self.ready(routes.as_ref(), descriptors.as_ref());
            if let Some(version) = ready.filter(|v| applied.as_ref() != Some(v)) {
                applied = Some(version.clone());
                self.take(&gw, &version).await;
            }
            let took = started.elapsed();
            if took < MIN_QUERY_INTERVAL {
                tokio::time::sleep(MIN_QUERY_INTERVAL - took).await;
            }
        }
    }

    /// The version to build once both the key and (when watched) the
    /// prefix have answered.
    fn ready(&self, routes: Option<&Pair>, descriptors: Option<&Vec<Pair>>) -> Option<Version> {
        let descriptors = match (&self.opts.descriptors, descriptors) {
            (None, _) => Vec::new(),
            (Some(_), Some(d)) => d.clone(),
            (Some(_), None) => return None,
        };
        Some(Version {
            routes: routes?.clone(),
            descriptors,
        })
    }

    /// Records a version that could not even be built (a deleted key, a
    /// cache that cannot be written) as refused.
    fn refuse(&self, gw: &Gateway, index: u64, e: KvError) {
        let error = ConfigError::new(&self.name(), None, "", e.to_string());
        crate::reload::refuse(
            gw,
            "consul",
            Origin::Consul { index },
            ConfigErrors::one(error),
        );
    }

    /// Builds a version through the reload path; records it in the cache
    /// when accepted, removes its folder when refused.
    async fn take(&self, gw: &Gateway, version: &Version) {
        let input = match self.write_version(version) {
            Ok(i) => Some(Arc::new(i)),
            Err(e) => return self.refuse(gw, version.routes.modify_index, e),
        };
        match crate::reload::apply(gw, "consul", input).await {
            Ok(_) => self.commit_folder(&version.folder()),
            // The folder in force (same version read again) stays.
            Err(_) => self.remove_unless_current(&version.folder()),
        }
    }
}

/// The blocking-query position of one watched key or prefix.
#[derive(Debug, Default)]
struct Cursor {
    /// Sent as `index`; 0 after a failure (answer at once).
    index: u64,
    /// The index of the answer in force.
    applied: u64,
}

/// Decodes Consul's JSON answer, base64 values included.
fn decode(body: &[u8]) -> Result<Vec<Pair>, ConsulError> {
    let raw: Vec<RawPair> = serde_json::from_slice(body)
        .map_err(|e| ConsulError::BadReply(format!("the JSON does not parse: {e}")))?;
    let mut pairs = Vec::with_capacity(raw.len());
    for r in raw {
        let value = match r.value {
            Some(v) => base64::engine::general_purpose::STANDARD
                .decode(v.as_bytes())
                .map_err(|e| {
                    ConsulError::BadReply(format!("the value of \"{}\" is not base64: {e}", r.key))
                })?,
            None => Vec::new(),
        };
        pairs.push(Pair {
            key: r.key,
            value,
            modify_index: r.modify_index,
        });
    }
    pairs.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(pairs)
}

/// Writes a temporary file beside `path` and renames it over `path`, so a
/// reader sees the old file or the new one, never half of one.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(not(unix))]
fn symlink(_target: &Path, _link: &Path) -> std::io::Result<()> {
    Err(std::io::Error::other(
        "the KV cache needs symlinks (Unix only)",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(cache: Option<PathBuf>) -> KvSource {
        KvSource::new(KvOptions {
            address: "http://127.0.0.1:1".into(),
            key: "gw/routes.toml".into(),
            descriptors: Some("gw/descriptors/".into()),
            token: TokenSource::Env("NO_SUCH_VAR_FOR_TESTS".into()),
            cache,
        })
        .unwrap()
    }

    fn pair(key: &str, value: &[u8], modify_index: u64) -> Pair {
        Pair {
            key: key.into(),
            value: value.to_vec(),
            modify_index,
        }
    }

    #[test]
    fn answers_decode_base64_values_and_null_folders() {
        let body = br#"[
          {"Key":"gw/descriptors/b.proto","Value":"c3ludGF4","Flags":0,"CreateIndex":3,"ModifyIndex":7,"LockIndex":0,"Session":""},
          {"Key":"gw/descriptors/","Value":null,"Flags":0,"CreateIndex":2,"ModifyIndex":2,"LockIndex":0}
        ]"#;
        let pairs = decode(body).unwrap();
        assert_eq!(
            pairs,
            vec![
                pair("gw/descriptors/", b"", 2),
                pair("gw/descriptors/b.proto", b"syntax", 7)
            ]
        );
        let err = decode(br#"[{"Key":"k","Value":"!!"}]"#).unwrap_err();
        assert!(err.to_string().contains("not base64"), "{err}");
    }

    #[test]
    fn descriptor_keys_become_files_inside_the_folder() {
        let s = source(None);
        let path = |k: &str| s.descriptor_path(k).map(|p| p.display().to_string());
        assert_eq!(
            path("gw/descriptors/a/b.proto").as_deref(),
            Some("a/b.proto")
        );
        assert_eq!(path("gw/descriptors/set.pb").as_deref(), Some("set.pb"));
        assert_eq!(
            path("gw/descriptors/bookstore").as_deref(),
            Some("bookstore.binpb")
        );
        assert_eq!(
            path("gw/descriptors/../../etc/x.proto").as_deref(),
            Some("_./_./etc/x.proto")
        );
        assert_eq!(
            path("gw/descriptors/.hidden").as_deref(),
            Some("_hidden.binpb")
        );
        assert_eq!(path("gw/descriptors/"), None);
        assert_eq!(path("gw/descriptors/folder/"), None);
    }

    #[test]
    fn the_version_folder_changes_with_any_descriptor_key() {
        let v = |descriptors: Vec<Pair>| Version {
            routes: pair("gw/routes.toml", b"x", 12),
            descriptors,
        };
        let one = v(vec![pair("gw/descriptors/a.proto", b"a", 5)]);
        let two = v(vec![
            pair("gw/descriptors/a.proto", b"a", 5),
            pair("gw/descriptors/b.proto", b"b", 6),
        ]);
        assert!(one.folder().starts_with("v-12-"));
        assert_ne!(one.folder(), two.folder());
        assert_eq!(one.folder(), one.clone().folder());
    }

    #[test]
    fn an_accepted_version_is_what_the_cache_gives_back() {
        let cache = std::env::temp_dir().join(format!(
            "gateway-kv-unit-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&cache);
        let s = source(Some(cache.clone()));
        assert!(s.cached().is_none(), "an empty cache gives nothing");
        let first = Version {
            routes: pair("gw/routes.toml", b"[server]\n", 12),
            descriptors: vec![pair("gw/descriptors/a.proto", b"syntax = \"proto3\";", 5)],
        };
        let input = s.write_version(&first).unwrap();
        assert_eq!(input.name, PathBuf::from("consul:gw/routes.toml"));
        assert_eq!(input.origin, Origin::Consul { index: 12 });
        s.commit_folder(&first.folder());
        let second = Version {
            routes: pair("gw/routes.toml", b"[server]\n# two\n", 13),
            descriptors: first.descriptors.clone(),
        };
        s.write_version(&second).unwrap();
        // Refused: the cache still gives the first version.
        s.remove_unless_current(&second.folder());
        let cached = s.cached().expect("cached version");
        assert_eq!(cached.text, "[server]\n");
        assert_eq!(cached.origin, Origin::Consul { index: 12 });
        let dir = cached.descriptors.unwrap();
        assert!(dir.join("a.proto").exists(), "{}", dir.display());
        assert!(!cache.join(second.folder()).exists());
        // Accepted: the first version's folder goes.
        s.write_version(&second).unwrap();
        s.commit_folder(&second.folder());
        assert_eq!(s.cached().unwrap().text, "[server]\n# two\n");
        assert!(!cache.join(first.folder()).exists());
        let _ = std::fs::remove_dir_all(&cache);
    }
}
