//! A backend and its discovery source, through the [`Source`] trait only:
//! a fake registry fills the pool, and a rebuild that keeps the source
//! keeps the endpoints.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::*;
use crate::discovery::dns::DnsSpec;
use crate::discovery::static_list::StaticSpec;
use crate::discovery::{Sink, SourceKind, Target};

/// A registry the test feeds by hand: `start` spawns a task that hands
/// every list sent on the channel to the sink.
#[derive(Debug)]
struct FakeRegistry {
    /// Which registry: two fakes with the same id are the same source.
    id: &'static str,
    feed: Mutex<Option<mpsc::UnboundedReceiver<Vec<Target>>>>,
}

impl FakeRegistry {
    fn with_feed(id: &'static str) -> (Box<dyn Source>, mpsc::UnboundedSender<Vec<Target>>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let source = FakeRegistry {
            id,
            feed: Mutex::new(Some(rx)),
        };
        (Box::new(source), tx)
    }
}

impl Source for FakeRegistry {
    fn kind(&self) -> SourceKind {
        SourceKind::new("fake")
    }

    fn describe(&self) -> String {
        format!("fake registry {}", self.id)
    }

    fn start(&self, _backend: &str, sink: Arc<dyn Sink>) -> Vec<AbortHandle> {
        let mut rx = self.feed.lock().unwrap().take().expect("started once");
        let task = tokio::spawn(async move {
            let mut version = 0;
            while let Some(list) = rx.recv().await {
                version += 1;
                sink.update(list, Some(version));
            }
        });
        vec![task.abort_handle()]
    }

    fn listed(&self) -> &'static str {
        "registered instances"
    }

    fn same_source(&self, other: &dyn Source) -> bool {
        other
            .downcast_ref::<FakeRegistry>()
            .is_some_and(|o| o.id == self.id)
    }
}

/// Backend "users" on a fake registry `id`, replacing `previous`.
fn on_registry(
    id: &'static str,
    options: BackendOptions,
    previous: Option<&Backend>,
) -> (Backend, mpsc::UnboundedSender<Vec<Target>>) {
    let (source, feed) = FakeRegistry::with_feed(id);
    let backend =
        Backend::from_source("users", definition(&[]), options, source, previous).unwrap();
    (backend, feed)
}

fn definition(endpoints: &[&str]) -> BackendDefinition {
    BackendDefinition {
        endpoints: endpoints.iter().map(|e| (*e).to_owned()).collect(),
        timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_secs(1),
        compression: None,
        tls: None,
    }
}

fn targets(addrs: &[&str]) -> Vec<Target> {
    addrs
        .iter()
        .map(|a| Target {
            addr: (*a).to_owned(),
            weight: 2,
            label: Some(format!("node/{a}")),
        })
        .collect()
}

fn addrs(backend: &Backend) -> Vec<String> {
    backend
        .endpoints
        .into_iter()
        .map(|e| e.addr.clone())
        .collect()
}

/// Waits (a second at most) for the source's task to have run.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn a_fake_source_fills_the_pool_through_its_sink() {
    let (backend, feed) = on_registry("a", BackendOptions::default(), None);
    let st = backend.endpoints.status();
    assert_eq!(st.kind.name(), "fake");
    assert_eq!(st.source, "fake registry a");
    assert!(!st.resolved, "no list yet: calls wait for the first one");

    feed.send(targets(&["127.0.0.1:1", "127.0.0.1:2"])).unwrap();
    eventually("the first list", || backend.endpoints.status().resolved).await;
    assert_eq!(addrs(&backend), ["127.0.0.1:1", "127.0.0.1:2"]);
    assert_eq!(backend.endpoints.current().weights, [2, 2]);
    assert_eq!(backend.endpoints.status().version, Some(1));

    feed.send(Vec::new()).unwrap();
    eventually("the empty list", || backend.endpoints.current().is_empty()).await;
    assert_eq!(
        backend.no_endpoint_message(),
        "backend \"users\" has no endpoints: fake registry a lists no registered instances"
    );

    // The pool owns the source's task: dropping the backend stops it.
    drop(backend);
    eventually("the task to stop", || feed.is_closed()).await;
}

#[tokio::test]
async fn a_rebuild_on_the_same_source_keeps_its_endpoints() {
    let (old, feed) = on_registry("a", BackendOptions::default(), None);
    feed.send(targets(&["127.0.0.1:1"])).unwrap();
    eventually("the first list", || old.endpoints.status().resolved).await;

    // Another balancer, the same registry: the same endpoint objects, and
    // resolved at once although the new source has said nothing yet.
    let options = BackendOptions {
        policy: Policy::Random,
        ..BackendOptions::default()
    };
    let (rebuilt, _feed) = on_registry("a", options, Some(&old));
    assert!(Arc::ptr_eq(
        &old.endpoints.current().endpoints[0],
        &rebuilt.endpoints.current().endpoints[0]
    ));
    assert!(rebuilt.endpoints.status().resolved);
    assert_eq!(rebuilt.endpoints.status().version, Some(1));

    // Another registry starts over.
    let (moved, _feed) = on_registry("b", BackendOptions::default(), Some(&old));
    assert!(moved.endpoints.current().is_empty());
    assert!(!moved.endpoints.status().resolved);
}

#[tokio::test]
async fn an_unchanged_endpoint_list_keeps_its_endpoints_across_a_rebuild() {
    let list = ["127.0.0.1:1", "127.0.0.1:2"];
    let spec = DiscoverySpec::endpoints(list.map(String::from).to_vec(), Duration::from_secs(5));
    assert!(matches!(spec, DiscoverySpec::Static(StaticSpec { .. })));
    let options = |policy| BackendOptions {
        discovery: spec.clone(),
        policy,
        ..BackendOptions::default()
    };
    let old = Backend::with_options("b", definition(&list), options(Policy::RoundRobin)).unwrap();
    assert_eq!(old.endpoints.status().kind.name(), "static");
    assert_eq!(old.endpoints.status().source, "static endpoints");

    let rebuilt = Backend::replacing(
        "b",
        definition(&list),
        options(Policy::LeastRequest),
        Some(&old),
    )
    .unwrap();
    let (before, after) = (old.endpoints.current(), rebuilt.endpoints.current());
    assert!(before
        .endpoints
        .iter()
        .zip(&after.endpoints)
        .all(|(a, b)| Arc::ptr_eq(a, b)));

    // One more address is another source: new endpoint objects throughout.
    let longer = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"];
    let changed = BackendOptions {
        discovery: DiscoverySpec::endpoints(
            longer.map(String::from).to_vec(),
            Duration::from_secs(5),
        ),
        ..BackendOptions::default()
    };
    let replaced = Backend::replacing("b", definition(&longer), changed, Some(&old)).unwrap();
    assert_eq!(addrs(&replaced), longer);
    assert!(!Arc::ptr_eq(
        &before.endpoints[0],
        &replaced.endpoints.current().endpoints[0]
    ));
}

#[tokio::test]
async fn a_new_dns_refresh_keeps_the_resolved_endpoints() {
    let dns = |refresh| BackendOptions {
        discovery: DiscoverySpec::Dns(DnsSpec {
            entries: vec!["localhost:1".to_owned()],
            refresh,
        }),
        ..BackendOptions::default()
    };
    let old = Backend::with_options(
        "b",
        definition(&["localhost:1"]),
        dns(Duration::from_secs(5)),
    )
    .unwrap();
    assert_eq!(old.endpoints.status().kind.name(), "dns");
    assert_eq!(old.endpoints.status().source, "DNS (localhost:1)");
    let rebuilt = Backend::replacing(
        "b",
        definition(&["localhost:1"]),
        dns(Duration::from_secs(1)),
        Some(&old),
    )
    .unwrap();
    assert!(!rebuilt.same_as(&old.definition, &old.options));
    assert!(Arc::ptr_eq(
        &old.endpoints.current().endpoints[0],
        &rebuilt.endpoints.current().endpoints[0]
    ));
}

#[tokio::test]
async fn new_takes_the_definitions_endpoints() {
    let b = Backend::new("b", definition(&["127.0.0.1:7", "localhost:8"])).unwrap();
    assert_eq!(addrs(&b), ["127.0.0.1:7", "localhost:8"]);
    assert_eq!(b.endpoints.status().kind.name(), "dns");
    assert!(
        matches!(&b.options.discovery, DiscoverySpec::Dns(d) if d.refresh == crate::discovery::dns::DEFAULT_REFRESH)
    );
}
