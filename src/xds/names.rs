//! Sets of resource names a stream subscribes to.

use std::sync::Arc;

/// A set of resource names: sorted, each shared with the snapshot that has
/// it. A stream subscribed to 100 clusters holds 100 pointers, not 100
/// strings.
#[derive(Debug, Default, Clone)]
pub struct Names(Box<[Arc<str>]>);

impl Names {
    pub fn new(names: impl Iterator<Item = Arc<str>>) -> Self {
        let mut names: Vec<Arc<str>> = names.collect();
        names.sort_unstable();
        names.dedup();
        Self(names.into_boxed_slice())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.0.binary_search_by(|n| (**n).cmp(name)).is_ok()
    }

    /// This set's copy of `name`, which must be in it.
    pub fn shared(&self, name: &str) -> Arc<str> {
        match self.0.binary_search_by(|n| (**n).cmp(name)) {
            Ok(i) => self.0[i].clone(),
            Err(_) => Arc::from(name),
        }
    }

    /// The set's own copies of its names, in order.
    pub fn shared_names(&self) -> impl Iterator<Item = &Arc<str>> {
        self.0.iter()
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|name| &**name)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
