//! A fixed list of `ip:port` endpoints: known at once, never changing, so
//! there is nothing to run.

use std::sync::Arc;

use tokio::task::AbortHandle;

use super::{Sink, Source, SourceKind};

pub const KIND: SourceKind = SourceKind::new("static");

/// `endpoints` with no name among them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StaticSpec {
    pub entries: Vec<String>,
}

impl Source for StaticSpec {
    fn kind(&self) -> SourceKind {
        KIND
    }

    fn describe(&self) -> String {
        "static endpoints".to_owned()
    }

    fn initial(&self) -> Option<Vec<String>> {
        Some(self.entries.clone())
    }

    fn start(&self, _backend: &str, _sink: Arc<dyn Sink>) -> Vec<AbortHandle> {
        Vec::new()
    }

    fn same_source(&self, other: &dyn Source) -> bool {
        other
            .downcast_ref::<StaticSpec>()
            .is_some_and(|o| o.entries == self.entries)
    }
}
