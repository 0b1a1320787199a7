//! A small Consul client: the one endpoint the gateway needs, watched with
//! blocking queries.
//!
//! Follows Consul's documented HTTP API
//! (<https://developer.hashicorp.com/consul/api-docs/health#list-service-instances-for-service>
//! and <https://developer.hashicorp.com/consul/api-docs/features/blocking>):
//!
//! - `GET /v1/health/service/<service>` with `passing`, `tag` (repeated: an
//!   instance must carry all of them), `dc`, and `stale` when allowed;
//! - blocking: `index` from the previous answer's `X-Consul-Index` and a
//!   `wait` (Consul caps it at 10 minutes and adds up to `wait/16` of jitter,
//!   so the HTTP timeout is longer than both); the index is reset to 0 when
//!   it goes backwards (a restored snapshot, a new cluster) and never sent
//!   below 1 otherwise; queries are rate limited in case the index moves fast;
//! - after a failed query the next one is not blocking (index 0): an agent
//!   that restarted empty has a lower index, and a blocking query on the
//!   old one would wait the whole `wait` before saying so; a recovered agent
//!   answers at once, which ends the failing state on its first answer;
//! - the ACL token in `X-Consul-Token`; a 403 ("ACL not found", "Permission
//!   denied") is an error that keeps the last list, and so is an empty answer
//!   marked `X-Consul-Results-Filtered-By-ACLs` (the token cannot see the
//!   service, which is not the same as the service having no instance);
//! - the address is `Service.Address`, or `Node.Address` when that is empty,
//!   with `Service.Port`; the weight is `Service.Weights.Passing` (or
//!   `.Warning` for an instance in warning, when warnings are allowed).
//!
//! The HTTP client, token handling and index rules are [`crate::consul`]'s,
//! shared with the configuration source on Consul KV; `https://` agents are
//! verified against the system roots plus the extra CA certificates a
//! backend names (`ca_file`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Deserialize;

use tokio::task::AbortHandle;

use super::{backoff, Sink, Source, SourceError, SourceKind, StateLog, Target};
use crate::consul::Agent;
pub use crate::consul::{
    default_address, next_index, ConsulError, TokenSource, ADDRESS_ENV, DEFAULT_ADDRESS,
    DEFAULT_TOKEN_ENV,
};

pub const KIND: SourceKind = SourceKind::new("consul");

/// Consul's own default wait; a change still arrives at once, the wait only
/// bounds how long a quiet service holds the connection.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(300);
/// Consul refuses longer waits (it caps them at 10 minutes).
pub const MAX_WAIT: Duration = Duration::from_secs(600);
/// Consul's documentation asks blocking clients to rate limit: an index
/// that changes constantly would otherwise turn the watch into a busy loop.
/// 100 ms keeps an instance's removal well under a second.
const MIN_QUERY_INTERVAL: Duration = Duration::from_millis(100);
/// First retry after a failure, doubled each time up to [`MAX_BACKOFF`]: a
/// restarting agent is back within seconds, and a long outage is still
/// noticed within 10 s of its end.
const BASE_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Characters escaped in the service name path segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.');

/// What to watch, as configured; equal specs keep a live watch across reloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsulSpec {
    /// `http://host:port` or `https://host:port`, without a trailing slash.
    pub address: String,
    /// Extra CA certificates (PEM) to trust for an https:// agent.
    pub ca_pem: Option<Vec<u8>>,
    pub service: String,
    pub tags: Vec<String>,
    pub datacenter: Option<String>,
    pub passing_only: bool,
    pub token: TokenSource,
    pub stale: bool,
    pub wait: Duration,
}

impl ConsulSpec {
    /// "consul service \"users\" (tags grpc, dc dc1) at http://127.0.0.1:8500".
    pub fn describe(&self) -> String {
        let mut s = format!("Consul service \"{}\"", self.service);
        let mut extra = Vec::new();
        if !self.tags.is_empty() {
            extra.push(format!("tags {}", self.tags.join(",")));
        }
        if let Some(dc) = &self.datacenter {
            extra.push(format!("dc {dc}"));
        }
        if !extra.is_empty() {
            s.push_str(&format!(" ({})", extra.join(", ")));
        }
        s.push_str(&format!(" at {}", self.address));
        s
    }
}

/// One answer of the health endpoint.
#[derive(Debug)]
pub struct HealthAnswer {
    pub targets: Vec<Target>,
    /// `X-Consul-Index`.
    pub index: u64,
}

#[derive(Deserialize)]
struct Entry {
    #[serde(rename = "Node")]
    node: Node,
    #[serde(rename = "Service")]
    service: Service,
    #[serde(rename = "Checks", default)]
    checks: Vec<Check>,
}

#[derive(Deserialize)]
struct Node {
    #[serde(rename = "Node", default)]
    name: String,
    #[serde(rename = "Address", default)]
    address: String,
}

#[derive(Deserialize)]
struct Service {
    #[serde(rename = "ID", default)]
    id: String,
    #[serde(rename = "Address", default)]
    address: String,
    #[serde(rename = "Port")]
    port: u16,
    #[serde(rename = "Weights", default)]
    weights: Option<Weights>,
}

#[derive(Deserialize)]
struct Weights {
    #[serde(rename = "Passing", default)]
    passing: u32,
    #[serde(rename = "Warning", default)]
    warning: u32,
}

#[derive(Deserialize)]
struct Check {
    #[serde(rename = "Status", default)]
    status: String,
}

/// The health endpoint of one service, over the shared agent client.
#[derive(Debug, Clone)]
pub struct ConsulClient {
    agent: Agent,
    spec: ConsulSpec,
}

impl ConsulClient {
    pub fn new(spec: ConsulSpec) -> Result<ConsulClient, ConsulError> {
        let agent = Agent::new(
            &spec.address,
            spec.ca_pem.as_deref(),
            spec.token.clone(),
            "set it with token_file or token_env",
        )?;
        Ok(ConsulClient { agent, spec })
    }

    pub fn spec(&self) -> &ConsulSpec {
        &self.spec
    }

    /// The query URL for `index` (0: answer at once).
    pub fn url(&self, index: u64) -> String {
        let s = &self.spec;
        let mut url = format!(
            "{}/v1/health/service/{}",
            s.address,
            utf8_percent_encode(&s.service, SEGMENT)
        );
        let mut params: Vec<String> = Vec::new();
        if s.passing_only {
            params.push("passing=true".into());
        }
        for tag in &s.tags {
            params.push(format!(
                "tag={}",
                utf8_percent_encode(tag, NON_ALPHANUMERIC)
            ));
        }
        if let Some(dc) = &s.datacenter {
            params.push(format!("dc={}", utf8_percent_encode(dc, NON_ALPHANUMERIC)));
        }
        if s.stale {
            params.push("stale".into());
        }
        if index > 0 {
            params.push(format!("index={index}"));
            params.push(format!("wait={}ms", s.wait.as_millis()));
        }
        if !params.is_empty() {
            url.push('?');
            url.push_str(&params.join("&"));
        }
        url
    }

    /// One query; blocks up to `wait` (plus Consul's jitter) when `index` > 0.
    pub async fn health_service(&self, index: u64) -> Result<HealthAnswer, ConsulError> {
        let url = self.url(index);
        let path = &url[self.agent.address().len()..];
        let reply = self
            .agent
            .get(path, (index > 0).then_some(self.spec.wait))
            .await?;
        if reply.status == 404 {
            return Err(ConsulError::Status {
                status: 404,
                body: crate::consul::short(&reply.body),
            });
        }
        let index = reply
            .index
            .ok_or_else(|| ConsulError::BadReply("no X-Consul-Index header".into()))?;
        let filtered = reply.filtered_by_acl;
        let body = reply.body;
        let entries: Vec<Entry> = serde_json::from_slice(&body)
            .map_err(|e| ConsulError::BadReply(format!("the JSON does not parse: {e}")))?;
        if entries.is_empty() && filtered {
            return Err(ConsulError::FilteredByAcl {
                service: self.spec.service.clone(),
            });
        }
        Ok(HealthAnswer {
            targets: self.targets(entries),
            index,
        })
    }

    fn targets(&self, entries: Vec<Entry>) -> Vec<Target> {
        let mut out: Vec<Target> = Vec::with_capacity(entries.len());
        for e in entries {
            let worst =
                e.checks
                    .iter()
                    .fold("passing", |worst, c| match (worst, c.status.as_str()) {
                        (_, "critical") | ("critical", _) => "critical",
                        (_, "warning") | ("warning", _) => "warning",
                        _ => worst,
                    });
            // `passing` already filtered on the server; without it, an
            // instance in critical is still never used (as Consul's DNS does).
            if worst == "critical" || (self.spec.passing_only && worst != "passing") {
                continue;
            }
            let host = if e.service.address.is_empty() {
                e.node.address
            } else {
                e.service.address
            };
            if host.is_empty() || e.service.port == 0 {
                continue;
            }
            let addr = if host.contains(':') && !host.starts_with('[') {
                format!("[{host}]:{}", e.service.port)
            } else {
                format!("{host}:{}", e.service.port)
            };
            let weights = e.service.weights.unwrap_or(Weights {
                passing: 1,
                warning: 1,
            });
            let weight = if worst == "warning" {
                weights.warning
            } else {
                weights.passing
            };
            // Two registrations of one address are one instance.
            if out.iter().any(|t| t.addr == addr) {
                continue;
            }
            out.push(Target {
                addr,
                weight: weight.max(1),
                label: Some(format!("{}/{}", e.node.name, e.service.id)),
            });
        }
        out
    }
}

/// Watches the service until the task is aborted, handing every answer to `sink`.
pub async fn watch(client: ConsulClient, sink: Arc<dyn Sink>, backend: String) {
    let mut log = StateLog::new(&backend, client.spec().describe());
    let mut index = 0;
    // The index of the list in force; `index` is 0 after a failure.
    let mut applied = 0;
    let mut failures = 0u32;
    let mut known = 0usize;
    loop {
        let started = Instant::now();
        match client.health_service(index).await {
            Ok(answer) => {
                failures = 0;
                known = answer.targets.len();
                log.ok(known);
                if answer.index < applied {
                    tracing::info!(backend = %backend, previous = applied, index = answer.index, "Consul's index went backwards; starting over from its answer");
                }
                // Compared with the list in force, not with the 0 a failure
                // left: a lower index is a reset whichever query saw it.
                index = next_index(applied, answer.index);
                applied = answer.index;
                sink.update(answer.targets, Some(answer.index));
                let took = started.elapsed();
                if took < MIN_QUERY_INTERVAL {
                    tokio::time::sleep(MIN_QUERY_INTERVAL - took).await;
                }
            }
            Err(e) => {
                failures += 1;
                let text = e.to_string();
                log.failed(e.kind(), &text, known);
                sink.failed(text);
                // See the module documentation: the next query answers at once.
                index = 0;
                tokio::time::sleep(backoff(failures, BASE_BACKOFF, MAX_BACKOFF)).await;
            }
        }
    }
}

/// A Consul service as a discovery source: the client, built once.
#[derive(Debug)]
pub struct ConsulSource {
    client: ConsulClient,
}

impl ConsulSource {
    pub fn new(spec: ConsulSpec) -> Result<ConsulSource, SourceError> {
        let address = spec.address.clone();
        let client = ConsulClient::new(spec).map_err(|e| SourceError {
            address,
            reason: e.to_string(),
        })?;
        Ok(ConsulSource { client })
    }
}

impl Source for ConsulSource {
    fn kind(&self) -> SourceKind {
        KIND
    }

    fn describe(&self) -> String {
        self.client.spec().describe()
    }

    fn start(&self, backend: &str, sink: Arc<dyn Sink>) -> Vec<AbortHandle> {
        let task = tokio::spawn(watch(self.client.clone(), sink, backend.to_owned()));
        vec![task.abort_handle()]
    }

    fn listed(&self) -> &'static str {
        if self.client.spec().passing_only {
            "passing instances"
        } else {
            "instances"
        }
    }

    /// Only an identical spec carries the endpoints over: another agent,
    /// service, filter or token may list other instances.
    fn same_source(&self, other: &dyn Source) -> bool {
        other
            .downcast_ref::<ConsulSource>()
            .is_some_and(|o| o.client.spec() == self.client.spec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ConsulSpec {
        ConsulSpec {
            address: "http://127.0.0.1:8500".into(),
            ca_pem: None,
            service: "users api".into(),
            tags: vec!["grpc".into(), "v1".into()],
            datacenter: Some("dc1".into()),
            passing_only: true,
            token: TokenSource::Env("NO_SUCH_VAR_FOR_TESTS".into()),
            stale: true,
            wait: Duration::from_secs(300),
        }
    }

    #[test]
    fn url_carries_filters_and_blocking_parameters() {
        let c = ConsulClient::new(spec()).unwrap();
        assert_eq!(
            c.url(0),
            "http://127.0.0.1:8500/v1/health/service/users%20api?passing=true&tag=grpc&tag=v1&dc=dc1&stale"
        );
        assert!(
            c.url(42).ends_with("&stale&index=42&wait=300000ms"),
            "{}",
            c.url(42)
        );
    }

    #[test]
    fn targets_use_service_then_node_address_and_weights() {
        let mut s = spec();
        s.passing_only = false;
        let c = ConsulClient::new(s).unwrap();
        let json = r#"[
          {"Node": {"Node": "n1", "Address": "10.0.0.1"},
           "Service": {"ID": "a", "Address": "", "Port": 5000, "Weights": {"Passing": 3, "Warning": 1}},
           "Checks": [{"Status": "passing"}]},
          {"Node": {"Node": "n2", "Address": "10.0.0.2"},
           "Service": {"ID": "b", "Address": "10.1.0.2", "Port": 5001, "Weights": {"Passing": 3, "Warning": 1}},
           "Checks": [{"Status": "passing"}, {"Status": "warning"}]},
          {"Node": {"Node": "n3", "Address": "10.0.0.3"},
           "Service": {"ID": "c", "Address": "", "Port": 5002},
           "Checks": [{"Status": "critical"}]},
          {"Node": {"Node": "n4", "Address": "fd00::4"},
           "Service": {"ID": "d", "Address": "", "Port": 5003},
           "Checks": []}
        ]"#;
        let entries: Vec<Entry> = serde_json::from_str(json).unwrap();
        let t = c.targets(entries);
        let got: Vec<(&str, u32)> = t.iter().map(|t| (t.addr.as_str(), t.weight)).collect();
        assert_eq!(
            got,
            vec![
                ("10.0.0.1:5000", 3),
                ("10.1.0.2:5001", 1),
                ("[fd00::4]:5003", 1)
            ]
        );
        assert_eq!(t[0].label.as_deref(), Some("n1/a"));
    }

    #[test]
    fn passing_only_drops_warnings_too() {
        let c = ConsulClient::new(spec()).unwrap();
        let json = r#"[{"Node": {"Node": "n", "Address": "10.0.0.1"},
            "Service": {"ID": "a", "Port": 1}, "Checks": [{"Status": "warning"}]}]"#;
        let entries: Vec<Entry> = serde_json::from_str(json).unwrap();
        assert!(c.targets(entries).is_empty());
    }
}
