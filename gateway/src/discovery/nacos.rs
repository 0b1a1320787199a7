//! Instances of a Nacos service, polled through Nacos' open API v1
//! (<https://nacos.io/docs/latest/guide/user/open-api/>), which Nacos 1.x
//! and 2.x both serve on their HTTP port:
//!
//! - `GET /nacos/v1/ns/instance/list?serviceName=..&groupName=..&namespaceId=..&clusters=..&healthyOnly=true`
//!   gives the instances (`hosts`, each with `ip`, `port`, `weight`,
//!   `healthy`, `enabled`), the list's `checksum` and its `lastRefTime`;
//!   only instances that are healthy, enabled and of weight above 0 are
//!   used (the filter is applied here too: a server that reached its
//!   protection threshold answers every instance, healthy or not);
//! - Nacos' own clients poll that list (the server can push changes over
//!   UDP to a client that registered a `udpPort`, which a gateway behind
//!   NAT cannot receive), so it is asked again every `refresh`; an answer
//!   with the `checksum` and `lastRefTime` of the list in force changes
//!   nothing and is not handed on;
//! - with a user, `POST /nacos/v1/auth/login` gives an `accessToken`, sent
//!   as the `accessToken` query parameter, and its `tokenTtl`; it is
//!   renewed once 90% of that has passed (as Nacos' Java client does), and
//!   at once when the server refuses it (403).
//!
//! Weights are Nacos' decimal `weight` in hundredths (1.0 is 100), so the
//! `weighted` balancer shares traffic as Nacos' own client does. When no
//! server answers, the last list stays in force.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::task::AbortHandle;

use super::etcd::error_chain;
use super::{backoff, Sink, Source, SourceError, SourceKind, StateLog, Target};

pub const KIND: SourceKind = SourceKind::new("nacos");

/// Nacos' own default group.
pub const DEFAULT_GROUP: &str = "DEFAULT_GROUP";
/// Nacos' clients refresh a service they get no push for about this often;
/// a change is seen within it.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(5);
/// A reachable Nacos answers a TCP connect in milliseconds.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The list is served from memory; a slower answer means a stuck server.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Retry schedule after a failed poll: quick at first, and never slower
/// than the usual refresh by much.
const BASE_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// An instance list larger than this is not one service's list.
const MAX_BODY_BYTES: usize = 8 << 20;

/// What to poll, as configured; equal specs keep a live poll across reloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NacosSpec {
    /// `http(s)://host:port`, without a trailing slash; tried in turn.
    pub servers: Vec<String>,
    pub service: String,
    pub namespace: Option<String>,
    pub group: String,
    pub cluster: Option<String>,
    pub refresh: Duration,
    pub username: Option<String>,
    /// The environment variable holding the user's password.
    pub password_env: Option<String>,
}

impl NacosSpec {
    /// `Nacos service "bookstore" (DEFAULT_GROUP) at http://127.0.0.1:8848`.
    pub fn describe(&self) -> String {
        let mut s = format!("Nacos service \"{}\" ({}", self.service, self.group);
        if let Some(ns) = &self.namespace {
            s.push_str(&format!(", namespace {ns}"));
        }
        if let Some(c) = &self.cluster {
            s.push_str(&format!(", cluster {c}"));
        }
        s.push_str(&format!(") at {}", self.servers.join(",")));
        s
    }

    /// The same instances: everything but how often to ask.
    fn same_instances(&self, other: &NacosSpec) -> bool {
        NacosSpec {
            refresh: other.refresh,
            ..self.clone()
        } == *other
    }
}

/// Why Nacos gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum NacosError {
    #[error("cannot reach Nacos at {address}: {reason}")]
    Unreachable { address: String, reason: String },
    #[error("Nacos refused the credentials: {0}")]
    Auth(String),
    #[error("Nacos answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("Nacos' answer is not usable: {0}")]
    BadReply(String),
}

impl NacosError {
    fn kind(&self) -> &'static str {
        match self {
            NacosError::Unreachable { .. } => "unreachable",
            NacosError::Auth(_) => "auth",
            NacosError::Status { .. } => "status",
            NacosError::BadReply(_) => "bad reply",
        }
    }
}

/// One entry of `hosts`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Host {
    #[serde(default)]
    instance_id: Option<String>,
    ip: String,
    port: u32,
    #[serde(default = "one")]
    weight: f64,
    #[serde(default = "yes")]
    healthy: bool,
    #[serde(default = "yes")]
    enabled: bool,
}

fn one() -> f64 {
    1.0
}

fn yes() -> bool {
    true
}

/// The answer of `instance/list`, the fields used.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct InstanceList {
    #[serde(default)]
    hosts: Vec<Host>,
    #[serde(default)]
    checksum: String,
    #[serde(default)]
    last_ref_time: u64,
}

/// The usable instances of an `instance/list` answer, with what tells one
/// version of the list from another.
fn parse_list(body: &[u8]) -> Result<(Vec<Target>, (String, u64)), NacosError> {
    let list: InstanceList = serde_json::from_slice(body)
        .map_err(|e| NacosError::BadReply(format!("the instance list does not parse: {e}")))?;
    let mut targets: Vec<Target> = Vec::new();
    for h in list.hosts {
        if !h.healthy
            || !h.enabled
            || h.weight.is_nan()
            || h.weight <= 0.0
            || h.port == 0
            || h.port > 65535
        {
            continue;
        }
        let addr = if h.ip.contains(':') {
            format!("[{}]:{}", h.ip, h.port)
        } else {
            format!("{}:{}", h.ip, h.port)
        };
        if targets.iter().any(|t| t.addr == addr) {
            continue;
        }
        let weight = (h.weight * 100.0).round().clamp(1.0, f64::from(u32::MAX)) as u32;
        targets.push(Target {
            addr,
            weight,
            label: h.instance_id,
        });
    }
    Ok((targets, (list.checksum, list.last_ref_time)))
}

/// An access token and when to ask for a new one.
#[derive(Debug, Clone)]
struct Token {
    value: String,
    renew_at: Instant,
}

/// Nacos' open API over the project's HTTP client.
#[derive(Debug, Clone)]
pub struct NacosClient {
    http: reqwest::Client,
    spec: NacosSpec,
    password: Option<String>,
    /// The server that answered last, tried first next time.
    current: usize,
    token: Option<Token>,
}

impl NacosClient {
    pub fn new(spec: NacosSpec) -> Result<NacosClient, NacosError> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| NacosError::Unreachable {
                address: spec.servers.join(","),
                reason: e.to_string(),
            })?;
        let password = spec
            .password_env
            .as_ref()
            .and_then(|v| std::env::var(v).ok());
        Ok(NacosClient {
            http,
            spec,
            password,
            current: 0,
            token: None,
        })
    }

    pub fn spec(&self) -> &NacosSpec {
        &self.spec
    }

    /// Sends what `build` makes for a server to the first that answers,
    /// starting with the one that answered last; the status and body.
    async fn send(
        &mut self,
        build: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Result<(u16, Vec<u8>), NacosError> {
        let n = self.spec.servers.len();
        let mut last = None;
        for i in 0..n {
            let at = (self.current + i) % n;
            let server = &self.spec.servers[at];
            let result = async {
                let mut resp = build(&self.http, server).send().await?;
                let status = resp.status().as_u16();
                let mut body = Vec::new();
                while let Some(chunk) = resp.chunk().await? {
                    if body.len() + chunk.len() > MAX_BODY_BYTES {
                        return Ok((0, Vec::new()));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok::<_, reqwest::Error>((status, body))
            }
            .await;
            match result {
                Ok((0, _)) => {
                    return Err(NacosError::BadReply(format!(
                        "the answer is longer than {MAX_BODY_BYTES} bytes"
                    )))
                }
                Ok(ok) => {
                    self.current = at;
                    return Ok(ok);
                }
                Err(e) => {
                    last = Some(NacosError::Unreachable {
                        address: server.clone(),
                        reason: error_chain(&e),
                    })
                }
            }
        }
        Err(last.unwrap_or_else(|| NacosError::BadReply("no server configured".into())))
    }

    /// A valid access token for the configured user (none without one),
    /// logging in when there is none or it is due for renewal.
    async fn token(&mut self) -> Result<Option<String>, NacosError> {
        let Some(user) = self.spec.username.clone() else {
            return Ok(None);
        };
        if let Some(t) = &self.token {
            if Instant::now() < t.renew_at {
                return Ok(Some(t.value.clone()));
            }
        }
        let Some(password) = self.password.clone() else {
            return Err(NacosError::Auth(format!(
                "the environment variable {} holding {user}'s password is not set",
                self.spec
                    .password_env
                    .as_deref()
                    .unwrap_or("(password_env)")
            )));
        };
        let (status, body) = self
            .send(|http, server| {
                http.post(format!("{server}/nacos/v1/auth/login"))
                    .header("Content-Type", "application/x-www-form-urlencoded")
                    .body(form(&[("username", &user), ("password", &password)]))
            })
            .await?;
        if status != 200 {
            return Err(NacosError::Auth(format!(
                "login answered {status}: {}",
                short(&body)
            )));
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Login {
            access_token: String,
            #[serde(default)]
            token_ttl: u64,
        }
        let login: Login = serde_json::from_slice(&body)
            .map_err(|e| NacosError::BadReply(format!("the login answer does not parse: {e}")))?;
        // Renew after 90% of the lifetime, as Nacos' Java client does
        // (its refresh window is a tenth of the TTL).
        let ttl = Duration::from_secs(login.token_ttl.max(1));
        self.token = Some(Token {
            value: login.access_token.clone(),
            renew_at: Instant::now() + ttl.mul_f64(0.9),
        });
        Ok(Some(login.access_token))
    }

    /// The usable instances now, and the list's version.
    pub async fn list(&mut self) -> Result<(Vec<Target>, (String, u64)), NacosError> {
        let mut retried = false;
        loop {
            let token = self.token().await?;
            let spec = self.spec.clone();
            let (status, body) = self
                .send(|http, server| {
                    let mut q: Vec<(&str, &str)> = vec![
                        ("serviceName", &spec.service),
                        ("groupName", &spec.group),
                        ("healthyOnly", "true"),
                    ];
                    if let Some(ns) = &spec.namespace {
                        q.push(("namespaceId", ns));
                    }
                    if let Some(c) = &spec.cluster {
                        q.push(("clusters", c));
                    }
                    if let Some(t) = &token {
                        q.push(("accessToken", t));
                    }
                    http.get(format!("{server}/nacos/v1/ns/instance/list?{}", form(&q)))
                })
                .await?;
            match status {
                200 => return parse_list(&body),
                // An expired or revoked token: log in again, once.
                403 if token.is_some() && !retried => {
                    self.token = None;
                    retried = true;
                }
                403 | 401 => return Err(NacosError::Auth(short(&body))),
                _ => {
                    return Err(NacosError::Status {
                        status,
                        message: short(&body),
                    })
                }
            }
        }
    }
}

/// `application/x-www-form-urlencoded` pairs (a query string or a form body).
fn form(pairs: &[(&str, &str)]) -> String {
    let mut url = reqwest::Url::parse("http://form.invalid/").expect("a valid URL");
    url.query_pairs_mut().extend_pairs(pairs);
    url.query().unwrap_or("").to_owned()
}

fn short(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Polls the list every `refresh` until the task is aborted, handing on
/// each new version and keeping the last one while Nacos fails.
pub async fn poll(mut client: NacosClient, sink: Arc<dyn Sink>, backend: String) {
    let mut log = StateLog::new(&backend, client.spec().describe());
    let mut failures = 0u32;
    let mut known: Option<(Vec<Target>, (String, u64))> = None;
    loop {
        match client.list().await {
            Ok((targets, version)) => {
                // The same checksum and lastRefTime as the list in force,
                // with nothing failing since: nothing to hand on.
                let unchanged = failures == 0
                    && known.as_ref().is_some_and(|(t, v)| {
                        *v == version && !version.0.is_empty() && *t == targets
                    });
                failures = 0;
                log.ok(targets.len());
                if !unchanged {
                    sink.update(targets.clone(), Some(version.1));
                    known = Some((targets, version));
                }
                tokio::time::sleep(client.spec().refresh).await;
            }
            Err(e) => {
                failures += 1;
                let text = e.to_string();
                let kept = known.as_ref().map_or(0, |(t, _)| t.len());
                log.failed(e.kind(), &text, kept);
                sink.failed(text);
                let wait = backoff(failures, BASE_BACKOFF, MAX_BACKOFF)
                    .min(client.spec().refresh.max(BASE_BACKOFF));
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// A Nacos service as a discovery source: the client, built once.
#[derive(Debug)]
pub struct NacosSource {
    client: NacosClient,
}

impl NacosSource {
    pub fn new(spec: NacosSpec) -> Result<NacosSource, SourceError> {
        let address = spec.servers.join(",");
        let client = NacosClient::new(spec).map_err(|e| SourceError {
            address,
            reason: e.to_string(),
        })?;
        Ok(NacosSource { client })
    }
}

impl Source for NacosSource {
    fn kind(&self) -> SourceKind {
        KIND
    }

    fn describe(&self) -> String {
        self.client.spec().describe()
    }

    fn listed(&self) -> &'static str {
        "healthy enabled instances"
    }

    fn start(&self, backend: &str, sink: Arc<dyn Sink>) -> Vec<AbortHandle> {
        let task = tokio::spawn(poll(self.client.clone(), sink, backend.to_owned()));
        vec![task.abort_handle()]
    }

    /// Another server set, namespace, group, cluster, service or user may
    /// list other instances; how often to ask does not.
    fn same_source(&self, other: &dyn Source) -> bool {
        other
            .downcast_ref::<NacosSource>()
            .is_some_and(|o| o.client.spec().same_instances(self.client.spec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_healthy_enabled_weighted_hosts_are_used() {
        let body = br#"{"name":"DEFAULT_GROUP@@users","groupName":"DEFAULT_GROUP","clusters":"",
            "cacheMillis":10000,"lastRefTime":1700000000000,"checksum":"abc","allIPs":false,
            "reachProtectionThreshold":true,"valid":true,"hosts":[
            {"instanceId":"a","ip":"10.0.0.1","port":1,"weight":1.0,"healthy":true,"enabled":true},
            {"instanceId":"b","ip":"10.0.0.2","port":2,"weight":0.5,"healthy":true,"enabled":true},
            {"instanceId":"c","ip":"10.0.0.3","port":3,"weight":1.0,"healthy":false,"enabled":true},
            {"instanceId":"d","ip":"10.0.0.4","port":4,"weight":1.0,"healthy":true,"enabled":false},
            {"instanceId":"e","ip":"10.0.0.5","port":5,"weight":0.0,"healthy":true,"enabled":true},
            {"instanceId":"f","ip":"::1","port":6,"weight":2.0,"healthy":true,"enabled":true}]}"#;
        let (targets, version) = parse_list(body).unwrap();
        let got: Vec<(&str, u32)> = targets
            .iter()
            .map(|t| (t.addr.as_str(), t.weight))
            .collect();
        assert_eq!(
            got,
            [("10.0.0.1:1", 100), ("10.0.0.2:2", 50), ("[::1]:6", 200)]
        );
        assert_eq!(version, ("abc".to_owned(), 1700000000000));
        assert!(parse_list(b"<html>").is_err());
    }

    #[test]
    fn the_refresh_interval_does_not_change_the_instances() {
        let spec = NacosSpec {
            servers: vec!["http://127.0.0.1:8848".into()],
            service: "users".into(),
            namespace: None,
            group: DEFAULT_GROUP.into(),
            cluster: None,
            refresh: DEFAULT_REFRESH,
            username: None,
            password_env: None,
        };
        let faster = NacosSpec {
            refresh: Duration::from_secs(1),
            ..spec.clone()
        };
        assert!(spec.same_instances(&faster));
        let other = NacosSpec {
            group: "G".into(),
            ..spec.clone()
        };
        assert!(!spec.same_instances(&other));
        assert_eq!(
            spec.describe(),
            "Nacos service \"users\" (DEFAULT_GROUP) at http://127.0.0.1:8848"
        );
    }

    #[test]
    fn query_and_form_values_are_encoded() {
        assert_eq!(
            form(&[("serviceName", "a b&c"), ("password", "p=1+2")]),
            "serviceName=a+b%26c&password=p%3D1%2B2"
        );
    }
}
