//! Where a backend's instances come from: a fixed list of addresses
//! ([`static_list`]), a list whose DNS names are resolved again
//! periodically ([`dns`]), Consul's health API ([`consul`]), keys under an
//! etcd prefix ([`etcd`]) or znodes under a ZooKeeper path ([`zookeeper`]),
//! the last two sharing what their values may hold ([`value`]). Sources
//! know nothing about connections or balancing: each hands complete,
//! current lists of addresses to a [`Sink`] (the backend's pool), which
//! swaps them in atomically.
//!
//! Every source keeps the last list it got when it fails (the AP choice: a
//! registry outage must not take traffic down) and logs once per change of
//! state, not once per retry.
//!
//! # Adding a source
//!
//! The backend sees only the [`Source`] trait; the configuration sees only
//! [`DiscoverySpec`]. A new registry (etcd, Kubernetes endpoints, ...) is:
//!
//! 1. one file here with its validated spec (`PartialEq`, so an unchanged
//!    reload is recognised), its [`SourceKind`] name, and a type
//!    implementing [`Source`] (the spec itself, or a client built from it,
//!    as [`consul::ConsulSource`]): `start` spawns the watch that feeds the
//!    sink, keeping the last list while the registry fails, and returns its
//!    abort handle; `same_source` says when a rebuilt backend may keep the
//!    endpoints;
//! 2. one variant of [`DiscoverySpec`] holding that spec;
//! 3. one arm in [`DiscoverySpec::source`].
//!
//! Its configuration table (a field of `config::BackendConfig`, checked in
//! `upstream::options::discovery_spec` with file:line errors) is the only
//! change outside this folder.

pub mod consul;
pub mod dns;
pub mod etcd;
pub mod eureka;
pub mod nacos;
pub mod static_list;
mod value;
pub mod zookeeper;

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::AbortHandle;

use consul::ConsulSpec;
use dns::DnsSpec;
use etcd::EtcdSpec;
use static_list::StaticSpec;

/// Where a backend's instances come from, as configured and validated.
/// Two equal specs describe the same source with the same settings, so a
/// reload that leaves a backend unchanged keeps it whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoverySpec {
    /// `ip:port` entries only: one instance each, for ever.
    Static(StaticSpec),
    /// Entries among which some are `name:port`, resolved again periodically.
    Dns(DnsSpec),
    /// A Consul service's healthy instances.
    Consul(ConsulSpec),
    /// Keys under an etcd prefix, watched.
    Etcd(EtcdSpec),
    /// Children of a ZooKeeper znode, watched.
    ZooKeeper(zookeeper::ZooKeeperSpec),
    /// A Nacos service's instance list, polled.
    Nacos(nacos::NacosSpec),
    /// A Eureka application, polled with delta fetches.
    Eureka(eureka::EurekaSpec),
}

impl Default for DiscoverySpec {
    /// No instance at all.
    fn default() -> Self {
        DiscoverySpec::Static(StaticSpec::default())
    }
}

impl DiscoverySpec {
    /// An `endpoints` list: static when every entry is an IP address, DNS
    /// (each name resolved again every `refresh`) otherwise.
    pub fn endpoints(entries: Vec<String>, refresh: Duration) -> DiscoverySpec {
        if entries.iter().any(|e| dns::is_name(e)) {
            DiscoverySpec::Dns(DnsSpec { entries, refresh })
        } else {
            DiscoverySpec::Static(StaticSpec { entries })
        }
    }

    /// The source this spec describes, ready to [`start`](Source::start).
    /// The one place that knows every kind of source.
    pub fn source(&self) -> Result<Box<dyn Source>, SourceError> {
        Ok(match self {
            DiscoverySpec::Static(spec) => Box::new(spec.clone()),
            DiscoverySpec::Dns(spec) => Box::new(spec.clone()),
            DiscoverySpec::Consul(spec) => Box::new(consul::ConsulSource::new(spec.clone())?),
            DiscoverySpec::Etcd(spec) => Box::new(etcd::EtcdSource::new(spec.clone())?),
            DiscoverySpec::ZooKeeper(spec) => Box::new(spec.clone()),
            DiscoverySpec::Nacos(spec) => Box::new(nacos::NacosSource::new(spec.clone())?),
            DiscoverySpec::Eureka(spec) => Box::new(eureka::EurekaSource::new(spec.clone())?),
        })
    }
}

/// A source that cannot be built from its spec (a client that will not
/// start); `address` is what it would have read.
#[derive(Debug, thiserror::Error)]
#[error("{address}: {reason}")]
pub struct SourceError {
    pub address: String,
    pub reason: String,
}

/// The name of a kind of source, for the admin view and metric labels
/// (`static`, `dns`, `consul`). A name rather than an enum, so a new
/// source brings its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceKind(&'static str);

impl SourceKind {
    pub const fn new(name: &'static str) -> SourceKind {
        SourceKind(name)
    }

    pub fn name(self) -> &'static str {
        self.0
    }
}

/// A running or startable discovery source: what a backend's pool knows of
/// where its instances come from.
pub trait Source: Any + fmt::Debug + Send + Sync {
    /// The kind, for the admin view and metric labels.
    fn kind(&self) -> SourceKind;

    /// What it reads, for the admin view and error messages, e.g.
    /// `Consul service "users" at http://127.0.0.1:8500`.
    fn describe(&self) -> String;

    /// Addresses known without asking anyone (a static list), one instance
    /// of weight 1 each: the pool starts with them and counts as resolved.
    /// `None` (the default): calls wait for the first list the running
    /// source hands to the sink.
    fn initial(&self) -> Option<Vec<String>> {
        None
    }

    /// Starts what keeps the list current, feeding `sink` until aborted,
    /// and returns the handles of the tasks it spawned (none for a list
    /// that never changes); the pool aborts them when it is dropped. Runs
    /// inside a tokio runtime. `backend` names the backend in logs.
    fn start(&self, backend: &str, sink: Arc<dyn Sink>) -> Vec<AbortHandle>;

    /// What it lists, for the message of a call that found the set empty:
    /// "`<describe>` lists no `<listed>`".
    fn listed(&self) -> &'static str {
        "instances"
    }

    /// Whether `other` reads the same instances as this one, so that a
    /// backend rebuilt by a reload keeps the endpoints (and their health)
    /// its predecessor knows instead of starting empty. Settings that do
    /// not change which instances are listed (how often to ask) may differ.
    fn same_source(&self, other: &dyn Source) -> bool;
}

impl dyn Source {
    /// This source as a `T`, if it is one: how [`Source::same_source`]
    /// compares with a source of its own type.
    pub fn downcast_ref<T: Source>(&self) -> Option<&T> {
        (self as &dyn Any).downcast_ref::<T>()
    }
}

/// One instance as the registry describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `ip:port` (or `host:port`, resolved when connecting).
    pub addr: String,
    /// Relative share of traffic for the `weighted` balancer (at least 1).
    pub weight: u32,
    /// What the registry calls it (Consul: `node/service-id`), for the admin view.
    pub label: Option<String>,
}

/// Receives a source's results.
pub trait Sink: Send + Sync + 'static {
    /// A complete list of the instances to use now, replacing the previous
    /// one (an empty list is applied: the service really has no instance).
    /// `version` is the registry's index when it has one.
    fn update(&self, targets: Vec<Target>, version: Option<u64>);
    /// The source could not be read; the last list stays in force.
    fn failed(&self, error: String);
}

/// Exponential backoff with jitter for a failing source: `base * 2^(n-1)`
/// capped at `max`, then a random 50-100% of that, so many gateways that
/// lost the same registry do not retry in step.
pub(crate) fn backoff(failures: u32, base: Duration, max: Duration) -> Duration {
    let exp = base.saturating_mul(1 << failures.saturating_sub(1).min(16));
    let capped = exp.min(max);
    capped.mul_f64(0.5 + 0.5 * jitter())
}

/// Uniform-ish in `[0, 1)`, for jitter only: std's `RandomState` is seeded
/// randomly and changes keys on every `new()`, which is all jitter needs.
pub(crate) fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let bits = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// Logs a source's health once per change: the first failure (and a change
/// in the kind of failure) as a warning, the recovery as info, and the
/// retries in between at debug level only.
#[derive(Debug)]
pub(crate) struct StateLog {
    backend: String,
    source: String,
    failing: Option<(Instant, String)>,
}

impl StateLog {
    pub(crate) fn new(backend: &str, source: String) -> StateLog {
        StateLog {
            backend: backend.to_owned(),
            source,
            failing: None,
        }
    }

    pub(crate) fn ok(&mut self, endpoints: usize) {
        if let Some((since, _)) = self.failing.take() {
            tracing::info!(
                backend = %self.backend,
                source = %self.source,
                endpoints,
                failing_for_ms = since.elapsed().as_millis() as u64,
                "service discovery is answering again"
            );
        }
    }

    /// `kind` groups errors that are the same problem (e.g. "unreachable").
    pub(crate) fn failed(&mut self, kind: &str, error: &str, kept: usize) {
        match &self.failing {
            Some((_, k)) if k == kind => {
                tracing::debug!(backend = %self.backend, source = %self.source, error, "service discovery still failing");
            }
            _ => {
                tracing::warn!(
                    backend = %self.backend,
                    source = %self.source,
                    error,
                    kept_endpoints = kept,
                    "service discovery failed; keeping the last known endpoints"
                );
                let since = self.failing.as_ref().map_or_else(Instant::now, |f| f.0);
                self.failing = Some((since, kind.to_owned()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consul(service: &str, passing_only: bool) -> DiscoverySpec {
        DiscoverySpec::Consul(ConsulSpec {
            address: consul::DEFAULT_ADDRESS.to_owned(),
            ca_pem: None,
            service: service.to_owned(),
            tags: Vec::new(),
            datacenter: None,
            passing_only,
            token: consul::TokenSource::Env("NO_SUCH_VAR_FOR_TESTS".into()),
            stale: false,
            wait: consul::DEFAULT_WAIT,
        })
    }

    fn list(entries: &[&str], refresh_s: u64) -> DiscoverySpec {
        DiscoverySpec::endpoints(
            entries.iter().map(|e| (*e).to_owned()).collect(),
            Duration::from_secs(refresh_s),
        )
    }

    #[test]
    fn an_endpoint_list_with_a_name_is_resolved_again() {
        assert!(matches!(
            list(&["10.0.0.1:1", "[::1]:2"], 5),
            DiscoverySpec::Static(_)
        ));
        assert!(matches!(
            list(&["10.0.0.1:1", "users.svc:2"], 5),
            DiscoverySpec::Dns(DnsSpec { refresh, .. }) if refresh == Duration::from_secs(5)
        ));
        assert_eq!(DiscoverySpec::default(), list(&[], 5));
    }

    #[test]
    fn sources_name_themselves_for_status() {
        let names = |spec: DiscoverySpec| {
            let s = spec.source().unwrap();
            (s.kind().name(), s.describe(), s.listed())
        };
        assert_eq!(
            names(list(&["10.0.0.1:1"], 5)),
            ("static", "static endpoints".to_owned(), "instances")
        );
        assert_eq!(
            names(list(&["a:1", "10.0.0.1:1"], 5)),
            ("dns", "DNS (a:1, 10.0.0.1:1)".to_owned(), "instances")
        );
        assert_eq!(
            names(consul("users", true)),
            (
                "consul",
                "Consul service \"users\" at http://127.0.0.1:8500".to_owned(),
                "passing instances"
            )
        );
        assert_eq!(names(consul("users", false)).2, "instances");
    }

    #[test]
    fn same_source_means_the_same_instances() {
        let same = |a: DiscoverySpec, b: DiscoverySpec| {
            a.source().unwrap().same_source(&*b.source().unwrap())
        };
        assert!(same(list(&["10.0.0.1:1"], 5), list(&["10.0.0.1:1"], 1)));
        assert!(!same(list(&["10.0.0.1:1"], 5), list(&["10.0.0.2:1"], 5)));
        // How often names are resolved does not change what they list.
        assert!(same(list(&["a:1"], 5), list(&["a:1"], 1)));
        assert_ne!(list(&["a:1"], 5), list(&["a:1"], 1));
        assert!(!same(list(&["a:1"], 5), list(&["b:1"], 5)));
        assert!(same(consul("users", true), consul("users", true)));
        assert!(!same(consul("users", true), consul("users", false)));
        assert!(!same(consul("users", true), consul("orders", true)));
        assert!(!same(consul("users", true), list(&["10.0.0.1:1"], 5)));
        assert!(!same(list(&["10.0.0.1:1"], 5), consul("users", true)));
    }

    fn etcd(prefix: &str, layout: etcd::Layout) -> DiscoverySpec {
        DiscoverySpec::Etcd(EtcdSpec {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: prefix.into(),
            layout,
            username: None,
            password_env: None,
            ca_pem: None,
            identity_pem: None,
        })
    }

    fn zookeeper(path: &str, timeout_s: u64) -> DiscoverySpec {
        DiscoverySpec::ZooKeeper(zookeeper::ZooKeeperSpec {
            servers: vec!["127.0.0.1:2181".into()],
            path: path.into(),
            session_timeout: Duration::from_secs(timeout_s),
        })
    }

    #[test]
    fn registries_name_themselves_and_keep_endpoints_only_for_the_same_keys() {
        let same = |a: DiscoverySpec, b: DiscoverySpec| {
            a.source().unwrap().same_source(&*b.source().unwrap())
        };
        let plain = etcd::Layout::Plain;
        let s = etcd("/s/", plain).source().unwrap();
        assert_eq!(
            (s.kind().name(), s.describe()),
            (
                "etcd",
                "etcd prefix \"/s/\" (plain) at http://127.0.0.1:2379".to_owned()
            )
        );
        assert!(same(etcd("/s/", plain), etcd("/s/", plain)));
        assert!(!same(etcd("/s/", plain), etcd("/t/", plain)));
        assert!(!same(etcd("/s/", plain), etcd("/s/", etcd::Layout::GrpcGo)));
        assert_eq!(
            zookeeper("/s", 10).source().unwrap().kind().name(),
            "zookeeper"
        );
        assert!(same(zookeeper("/s", 10), zookeeper("/s", 20)));
        assert!(!same(zookeeper("/s", 10), zookeeper("/t", 10)));
        assert!(!same(zookeeper("/s", 10), etcd("/s/", plain)));
        assert!(!same(etcd("/s/", plain), consul("s", true)));
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(2);
        for n in 1..20 {
            let d = backoff(n, base, max);
            let full = base.saturating_mul(1 << (n - 1).min(16)).min(max);
            assert!(d >= full / 2 && d <= full, "{n}: {d:?} vs {full:?}");
        }
    }
}
