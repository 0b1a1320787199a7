//! Instances of a Eureka application, fetched through Eureka's REST API
//! (<https://github.com/Netflix/eureka/wiki/Eureka-REST-operations>) with
//! `Accept: application/json`, the way Eureka's own clients fetch:
//!
//! - a full fetch, `GET {server}/apps`: the whole registry, because the
//!   consistency check below is over every application; only this app's
//!   instances are used, the others are kept as their status only;
//! - then every `refresh`, `GET {server}/apps/delta`: the instances
//!   `ADDED`, `MODIFIED` or `DELETED` (its `actionType`) in the server's
//!   last few minutes, applied to the local copy; its `apps__hashcode`
//!   (`STATUS_COUNT_` pairs, statuses sorted, e.g. `DOWN_1_UP_2_`) must
//!   equal the local copy's, else the copy has drifted and a full fetch
//!   follows at once, as one does after any error;
//! - an instance is used when its `status` is `UP` (not `DOWN`,
//!   `STARTING`, `OUT_OF_SERVICE` or `UNKNOWN`), at `ipAddr` (or
//!   `hostName`) and `port.$` when `port.@enabled` is "true", or
//!   `securePort.$` when only that is enabled.
//!
//! Servers are tried in turn; when none answers the last list stays in
//! force.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::task::AbortHandle;

use super::etcd::error_chain;
use super::{backoff, Sink, Source, SourceError, SourceKind, StateLog, Target};

pub const KIND: SourceKind = SourceKind::new("eureka");

/// Eureka's clients fetch every 30 s (`registryFetchIntervalSeconds`), and
/// its servers refresh their cached answers every 30 s, so asking more
/// often mostly gets the same answer.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Answers come from the server's response cache.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const BASE_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A registry larger than this is not one this client will buffer.
const MAX_BODY_BYTES: usize = 32 << 20;

/// What to fetch, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EurekaSpec {
    /// REST base URLs (`http://host:8761/eureka`), no trailing slash.
    pub servers: Vec<String>,
    /// Upper case, as Eureka stores it.
    pub app: String,
    pub refresh: Duration,
}

impl EurekaSpec {
    /// `Eureka app "BOOKSTORE" at http://127.0.0.1:8761/eureka`.
    pub fn describe(&self) -> String {
        format!("Eureka app \"{}\" at {}", self.app, self.servers.join(","))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EurekaError {
    #[error("cannot reach Eureka at {address}: {reason}")]
    Unreachable { address: String, reason: String },
    #[error("Eureka answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("Eureka's answer is not usable: {0}")]
    BadReply(String),
}

impl EurekaError {
    fn kind(&self) -> &'static str {
        match self {
            EurekaError::Unreachable { .. } => "unreachable",
            EurekaError::Status { .. } => "status",
            EurekaError::BadReply(_) => "bad reply",
        }
    }
}

/// Eureka's JSON writes a one-element list as the element itself in some
/// versions (its XStream codec); accept both.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany<T> {
    Many(Vec<T>),
    One(T),
}

impl<T> Default for OneOrMany<T> {
    fn default() -> Self {
        OneOrMany::Many(Vec::new())
    }
}

impl<T> OneOrMany<T> {
    fn into_vec(self) -> Vec<T> {
        match self {
            OneOrMany::Many(v) => v,
            OneOrMany::One(t) => vec![t],
        }
    }
}

/// `{"$": 8080, "@enabled": "true"}`.
#[derive(Debug, Deserialize)]
struct Port {
    #[serde(rename = "$")]
    port: serde_json::Value,
    #[serde(rename = "@enabled", default)]
    enabled: serde_json::Value,
}

impl Port {
    fn enabled(&self) -> bool {
        matches!(&self.enabled, serde_json::Value::String(s) if s == "true")
            || self.enabled == serde_json::Value::Bool(true)
    }

    fn number(&self) -> Option<u16> {
        match &self.port {
            serde_json::Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
            serde_json::Value::String(s) => s.parse().ok(),
            _ => None,
        }
        .filter(|p| *p > 0)
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Instance {
    #[serde(default)]
    instance_id: Option<String>,
    #[serde(default)]
    host_name: String,
    #[serde(default)]
    ip_addr: String,
    #[serde(default)]
    status: String,
    port: Option<Port>,
    secure_port: Option<Port>,
    #[serde(default)]
    action_type: Option<String>,
}

impl Instance {
    fn id(&self) -> String {
        self.instance_id
            .clone()
            .filter(|i| !i.is_empty())
            .unwrap_or_else(|| self.host_name.clone())
    }

    /// The address to call, when it is `UP` and has an enabled port.
    fn target(&self) -> Option<Target> {
        if self.status != "UP" {
            return None;
        }
        let port = match (&self.port, &self.secure_port) {
            (Some(p), _) if p.enabled() => p.number()?,
            (_, Some(p)) if p.enabled() => p.number()?,
            _ => return None,
        };
        let host = if self.ip_addr.is_empty() {
            &self.host_name
        } else {
            &self.ip_addr
        };
        if host.is_empty() {
            return None;
        }
        let addr = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Some(Target {
            addr,
            weight: 1,
            label: Some(self.id()),
        })
    }
}

#[derive(Debug, Deserialize)]
struct Application {
    name: String,
    #[serde(default)]
    instance: OneOrMany<Instance>,
}

#[derive(Debug, Deserialize)]
struct Applications {
    #[serde(default)]
    #[serde(rename = "apps__hashcode")]
    hashcode: String,
    #[serde(default)]
    application: OneOrMany<Application>,
}

#[derive(Debug, Deserialize)]
struct Registry {
    applications: Applications,
}

/// One instance as kept locally: its status for the hashcode, its address
/// when it is this app's and usable.
#[derive(Debug, Clone)]
struct Kept {
    status: String,
    target: Option<Target>,
}

/// The local copy of the registry.
#[derive(Debug, Default)]
struct LocalCopy {
    /// By (app, instance id).
    instances: HashMap<(String, String), Kept>,
}

impl LocalCopy {
    fn put(&mut self, app: &str, ours: bool, i: &Instance) {
        self.instances.insert(
            (app.to_ascii_uppercase(), i.id()),
            Kept {
                status: i.status.clone(),
                target: if ours { i.target() } else { None },
            },
        );
    }

    /// Eureka's reconcile hash code: `STATUS_COUNT_` per status, sorted.
    pub fn hashcode(&self) -> String {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for k in self.instances.values() {
            *counts.entry(k.status.as_str()).or_default() += 1;
        }
        counts.iter().map(|(s, n)| format!("{s}_{n}_")).collect()
    }

    /// This app's usable instances, sorted by address.
    fn targets(&self, app: &str) -> Vec<Target> {
        let mut out: Vec<Target> = self
            .instances
            .iter()
            .filter(|((a, _), _)| a == app)
            .filter_map(|(_, k)| k.target.clone())
            .collect();
        out.sort_by(|a, b| a.addr.cmp(&b.addr));
        out.dedup_by(|a, b| a.addr == b.addr);
        out
    }
}

fn parse(body: &[u8]) -> Result<Applications, EurekaError> {
    serde_json::from_slice::<Registry>(body)
        .map(|r| r.applications)
        .map_err(|e| EurekaError::BadReply(format!("the applications JSON does not parse: {e}")))
}

/// A full fetch's answer as a new copy.
fn full_copy(app: &str, body: &[u8]) -> Result<LocalCopy, EurekaError> {
    let apps = parse(body)?;
    let mut copy = LocalCopy::default();
    for a in apps.application.into_vec() {
        let ours = a.name.eq_ignore_ascii_case(app);
        for i in a.instance.into_vec() {
            copy.put(&a.name, ours, &i);
        }
    }
    Ok(copy)
}

/// Applies a delta to `copy`; `false` when the result's hash code differs
/// from the server's (the copy must be fetched whole again).
fn apply_delta(copy: &mut LocalCopy, app: &str, body: &[u8]) -> Result<bool, EurekaError> {
    let apps = parse(body)?;
    for a in apps.application.into_vec() {
        let ours = a.name.eq_ignore_ascii_case(app);
        for i in a.instance.into_vec() {
            match i.action_type.as_deref() {
                Some("DELETED") => {
                    copy.instances
                        .remove(&(a.name.to_ascii_uppercase(), i.id()));
                }
                _ => copy.put(&a.name, ours, &i),
            }
        }
    }
    Ok(copy.hashcode() == apps.hashcode)
}

/// Eureka's REST API over the project's HTTP client.
#[derive(Debug, Clone)]
pub struct EurekaClient {
    http: reqwest::Client,
    spec: EurekaSpec,
    current: usize,
}

impl EurekaClient {
    pub fn new(spec: EurekaSpec) -> Result<EurekaClient, EurekaError> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| EurekaError::Unreachable {
                address: spec.servers.join(","),
                reason: e.to_string(),
            })?;
        Ok(EurekaClient {
            http,
            spec,
            current: 0,
        })
    }

    pub fn spec(&self) -> &EurekaSpec {
        &self.spec
    }

    /// GETs `path` from the first server that answers 200.
    async fn get(&mut self, path: &str) -> Result<Vec<u8>, EurekaError> {
        let n = self.spec.servers.len();
        let mut last = None;
        for i in 0..n {
            let at = (self.current + i) % n;
            let server = self.spec.servers[at].clone();
            let result = async {
                let mut resp = self
                    .http
                    .get(format!("{server}{path}"))
                    .header("Accept", "application/json")
                    .send()
                    .await?;
                let status = resp.status().as_u16();
                let mut body = Vec::new();
                while let Some(chunk) = resp.chunk().await? {
                    if body.len() + chunk.len() > MAX_BODY_BYTES {
                        return Ok(None);
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok::<_, reqwest::Error>(Some((status, body)))
            }
            .await;
            match result {
                Ok(Some((200, body))) => {
                    self.current = at;
                    return Ok(body);
                }
                Ok(Some((status, body))) => {
                    let text = String::from_utf8_lossy(&body);
                    last = Some(EurekaError::Status {
                        status,
                        message: format!(
                            "{server}{path}: {}",
                            text.chars().take(200).collect::<String>()
                        ),
                    })
                }
                Ok(None) => {
                    last = Some(EurekaError::BadReply(format!(
                        "the answer is longer than {MAX_BODY_BYTES} bytes"
                    )))
                }
                Err(e) => {
                    last = Some(EurekaError::Unreachable {
                        address: server,
                        reason: error_chain(&e),
                    })
                }
            }
        }
        Err(last.unwrap_or_else(|| EurekaError::BadReply("no server configured".into())))
    }
}

/// Full fetch, then deltas every `refresh`, until the task is aborted.
pub async fn poll(mut client: EurekaClient, sink: Arc<dyn Sink>, backend: String) {
    let mut log = StateLog::new(&backend, client.spec().describe());
    let app = client.spec().app.clone();
    let refresh = client.spec().refresh;
    let mut failures = 0u32;
    let mut copy: Option<LocalCopy> = None;
    let mut last: Option<Vec<Target>> = None;
    loop {
        let step = match copy.as_mut() {
            None => client
                .get("/apps")
                .await
                .and_then(|b| full_copy(&app, &b))
                .map(|c| {
                    copy = Some(c);
                    true
                }),
            Some(c) => match client
                .get("/apps/delta")
                .await
                .and_then(|b| apply_delta(c, &app, &b))
            {
                Ok(true) => Ok(true),
                Ok(false) => {
                    tracing::debug!(backend = %backend, "Eureka's hash code differs from the local copy; fetching the registry whole");
                    copy = None;
                    Ok(false)
                }
                Err(e) => Err(e),
            },
        };
        match step {
            Ok(true) => {
                let targets = copy.as_ref().map(|c| c.targets(&app)).unwrap_or_default();
                log.ok(targets.len());
                if failures > 0 || last.as_ref() != Some(&targets) {
                    sink.update(targets.clone(), None);
                    last = Some(targets);
                }
                failures = 0;
                tokio::time::sleep(refresh).await;
            }
            // A drifted copy is fetched whole at once.
            Ok(false) => {}
            Err(e) => {
                copy = None;
                failures += 1;
                let text = e.to_string();
                log.failed(e.kind(), &text, last.as_ref().map_or(0, Vec::len));
                sink.failed(text);
                tokio::time::sleep(
                    backoff(failures, BASE_BACKOFF, MAX_BACKOFF).min(refresh.max(BASE_BACKOFF)),
                )
                .await;
            }
        }
    }
}

#[derive(Debug)]
pub struct EurekaSource {
    client: EurekaClient,
}

impl EurekaSource {
    pub fn new(spec: EurekaSpec) -> Result<EurekaSource, SourceError> {
        let address = spec.servers.join(",");
        let client = EurekaClient::new(spec).map_err(|e| SourceError {
            address,
            reason: e.to_string(),
        })?;
        Ok(EurekaSource { client })
    }
}

impl Source for EurekaSource {
    fn kind(&self) -> SourceKind {
        KIND
    }

    fn describe(&self) -> String {
        self.client.spec().describe()
    }

    fn listed(&self) -> &'static str {
        "UP instances"
    }

    fn start(&self, backend: &str, sink: Arc<dyn Sink>) -> Vec<AbortHandle> {
        let task = tokio::spawn(poll(self.client.clone(), sink, backend.to_owned()));
        vec![task.abort_handle()]
    }

    /// The same servers and app; how often to ask does not matter.
    fn same_source(&self, other: &dyn Source) -> bool {
        other.downcast_ref::<EurekaSource>().is_some_and(|o| {
            let (a, b) = (o.client.spec(), self.client.spec());
            a.servers == b.servers && a.app == b.app
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(
        id: &str,
        ip: &str,
        status: &str,
        port: u16,
        action: Option<&str>,
    ) -> serde_json::Value {
        let mut v = serde_json::json!({
            "instanceId": id, "hostName": id, "app": "BOOKSTORE", "ipAddr": ip,
            "status": status, "overriddenStatus": "UNKNOWN",
            "port": {"$": port, "@enabled": "true"},
            "securePort": {"$": 443, "@enabled": "false"},
            "dataCenterInfo": {"@class": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo", "name": "MyOwn"},
        });
        if let Some(a) = action {
            v["actionType"] = a.into();
        }
        v
    }

    #[test]
    fn only_up_instances_with_an_enabled_port_are_used() {
        let mut secure = instance("s", "10.0.0.9", "UP", 1, None);
        secure["port"]["@enabled"] = "false".into();
        secure["securePort"] = serde_json::json!({"$": 8443, "@enabled": "true"});
        let body = serde_json::json!({"applications": {"versions__delta": "1", "apps__hashcode": "", "application": [
            {"name": "BOOKSTORE", "instance": [
                instance("a", "10.0.0.1", "UP", 1, None),
                instance("b", "10.0.0.2", "DOWN", 2, None),
                instance("c", "10.0.0.3", "STARTING", 3, None),
                instance("d", "10.0.0.4", "OUT_OF_SERVICE", 4, None),
                secure,
            ]},
            {"name": "OTHER", "instance": instance("o", "10.0.0.8", "UP", 8, None)},
        ]}});
        let copy = full_copy("BOOKSTORE", &serde_json::to_vec(&body).unwrap()).unwrap();
        let addrs: Vec<String> = copy
            .targets("BOOKSTORE")
            .into_iter()
            .map(|t| t.addr)
            .collect();
        assert_eq!(addrs, ["10.0.0.1:1", "10.0.0.9:8443"]);
        assert_eq!(copy.hashcode(), "DOWN_1_OUT_OF_SERVICE_1_STARTING_1_UP_3_");
    }

    #[test]
    fn deltas_apply_and_a_hashcode_mismatch_is_seen() {
        let body = serde_json::json!({"applications": {"apps__hashcode": "UP_1_", "application": [
            {"name": "BOOKSTORE", "instance": [instance("a", "10.0.0.1", "UP", 1, None)]}]}});
        let mut copy = full_copy("BOOKSTORE", &serde_json::to_vec(&body).unwrap()).unwrap();
        let delta = serde_json::json!({"applications": {"apps__hashcode": "DOWN_1_UP_1_", "application": [
        {"name": "BOOKSTORE", "instance": [
            instance("b", "10.0.0.2", "UP", 2, Some("ADDED")),
            instance("a", "10.0.0.1", "DOWN", 1, Some("MODIFIED")),
        ]}]}});
        assert!(apply_delta(&mut copy, "BOOKSTORE", &serde_json::to_vec(&delta).unwrap()).unwrap());
        let addrs: Vec<String> = copy
            .targets("BOOKSTORE")
            .into_iter()
            .map(|t| t.addr)
            .collect();
        assert_eq!(addrs, ["10.0.0.2:2"]);
        let delta = serde_json::json!({"applications": {"apps__hashcode": "UP_7_", "application": [
            {"name": "BOOKSTORE", "instance": [instance("a", "10.0.0.1", "DOWN", 1, Some("DELETED"))]}]}});
        assert!(
            !apply_delta(&mut copy, "BOOKSTORE", &serde_json::to_vec(&delta).unwrap()).unwrap()
        );
        assert_eq!(copy.hashcode(), "UP_1_");
    }

    #[test]
    fn the_refresh_does_not_make_another_source() {
        let spec = EurekaSpec {
            servers: vec!["http://127.0.0.1:8761/eureka".into()],
            app: "BOOKSTORE".into(),
            refresh: DEFAULT_REFRESH,
        };
        let source = |s: &EurekaSpec| EurekaSource::new(s.clone()).unwrap();
        let faster = EurekaSpec {
            refresh: Duration::from_secs(1),
            ..spec.clone()
        };
        assert!(source(&spec).same_source(&source(&faster)));
        let other = EurekaSpec {
            app: "USERS".into(),
            ..spec.clone()
        };
        assert!(!source(&spec).same_source(&source(&other)));
        assert_eq!(
            source(&spec).describe(),
            "Eureka app \"BOOKSTORE\" at http://127.0.0.1:8761/eureka"
        );
    }
}
