//! Static endpoints, with DNS names resolved again periodically.
//!
//! An `ip:port` entry is one instance forever. A `name:port` entry stands
//! for every address the name resolves to, as Envoy's STRICT_DNS does: a
//! Kubernetes headless service returns one A record per ready pod, so
//! re-resolving follows pods as they come and go. A name that fails to
//! resolve keeps its last addresses.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::AbortHandle;

use super::{Sink, Source, SourceKind, StateLog, Target};

/// CoreDNS serves Kubernetes records with a 5 s TTL; asking more often
/// would only return cached answers.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(5);

pub const KIND: SourceKind = SourceKind::new("dns");

/// `endpoints` with at least one name among them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSpec {
    /// `ip:port` and `name:port` entries, in configured order.
    pub entries: Vec<String>,
    /// How often the names are resolved again (`dns_refresh`).
    pub refresh: Duration,
}

impl Source for DnsSpec {
    fn kind(&self) -> SourceKind {
        KIND
    }

    fn describe(&self) -> String {
        format!("DNS ({})", self.entries.join(", "))
    }

    /// Names start as one endpoint each (resolved when connecting), so
    /// calls need not wait for the first DNS answer.
    fn initial(&self) -> Option<Vec<String>> {
        Some(self.entries.clone())
    }

    fn start(&self, backend: &str, sink: Arc<dyn Sink>) -> Vec<AbortHandle> {
        let task = tokio::spawn(watch(
            self.entries.clone(),
            self.refresh,
            sink,
            backend.to_owned(),
        ));
        vec![task.abort_handle()]
    }

    /// The same names list the same instances, however often they are asked.
    fn same_source(&self, other: &dyn Source) -> bool {
        other
            .downcast_ref::<DnsSpec>()
            .is_some_and(|o| o.entries == self.entries)
    }
}

/// Whether `entry` (`host:port`) names a host rather than an IP address.
pub fn is_name(entry: &str) -> bool {
    entry.parse::<SocketAddr>().is_err()
}

/// Resolves the names in `entries` every `refresh` until the task is
/// aborted; IP entries are passed through unchanged.
pub async fn watch(entries: Vec<String>, refresh: Duration, sink: Arc<dyn Sink>, backend: String) {
    let names: Vec<&String> = entries.iter().filter(|e| is_name(e)).collect();
    let mut log = StateLog::new(
        &backend,
        format!(
            "DNS {}",
            names
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    let mut last: BTreeMap<String, Vec<String>> = BTreeMap::new();
    loop {
        let mut errors = Vec::new();
        for name in &names {
            match tokio::net::lookup_host(name.as_str()).await {
                Ok(addrs) => {
                    let mut list: Vec<String> = addrs.map(|a| a.to_string()).collect();
                    list.sort();
                    list.dedup();
                    if list.is_empty() {
                        errors.push(format!("{name}: no addresses"));
                    } else {
                        last.insert((*name).clone(), list);
                    }
                }
                Err(e) => errors.push(format!("{name}: {e}")),
            }
        }
        let mut targets: Vec<Target> = Vec::new();
        for entry in &entries {
            let addrs = if is_name(entry) {
                match last.get(entry) {
                    Some(a) => a.clone(),
                    // Never resolved yet: let the connection resolve it.
                    None => vec![entry.clone()],
                }
            } else {
                vec![entry.clone()]
            };
            for addr in addrs {
                if !targets.iter().any(|t| t.addr == addr) {
                    targets.push(Target {
                        addr,
                        weight: 1,
                        label: is_name(entry).then(|| entry.clone()),
                    });
                }
            }
        }
        let count = targets.len();
        sink.update(targets, None);
        if errors.is_empty() {
            log.ok(count);
        } else {
            let text = errors.join("; ");
            log.failed("resolve", &text, count);
            sink.failed(text);
        }
        tokio::time::sleep(refresh).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_entries_are_not_names() {
        assert!(!is_name("10.0.0.1:50051"));
        assert!(!is_name("[::1]:50051"));
        assert!(is_name("users.default.svc.cluster.local:50051"));
        assert!(is_name("localhost:50051"));
    }
}
