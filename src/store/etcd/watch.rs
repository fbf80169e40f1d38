//! The other half of the etcd backend: every replica's view of etcd. The
//! full listing at start (and again after a compaction), and the watch of
//! `current/` that publishes each change on the change feed, once.

use std::time::Duration;

use etcd_client::{EventType, GetOptions, WatchOptions};
use tokio_util::sync::CancellationToken;

use super::{key, Etcd, Unreadable};
use crate::{
    node_type::NodeType,
    schema::StoredBundle,
    store::{Backend, Decided, Quarantined, Store, Written},
};

/// Every node type listed: its bundle (or why it cannot be read) and the
/// mod revision of its manifest.
type Listed = Vec<(String, Result<StoredBundle, String>, i64)>;

impl Store {
    /// The watch of `current/`, reconnecting with back-off.
    pub(super) async fn follow(self, mut revision: i64, shutdown: CancellationToken) {
        let Backend::Etcd(etcd) = &self.0.backend else { return };
        let mut delay = Duration::from_millis(100);
        loop {
            let ended = tokio::select! {
                ended = etcd.watch(&self, &mut revision, &mut delay) => ended,
                () = shutdown.cancelled() => return,
            };
            match ended {
                Ok(()) => tracing::warn!(revision, "etcd ended the watch; watching again"),
                Err(Unreadable::Broken(reason)) => {
                    // The revision was compacted away: list everything again.
                    tracing::warn!(reason, "etcd watch cannot resume; loading the whole state again");
                    match etcd.list().await {
                        Ok((list, at)) => {
                            etcd.replace(&self, list);
                            revision = at;
                        }
                        Err(error) => tracing::warn!(%error, "cannot list etcd; retrying"),
                    }
                }
                Err(Unreadable::Etcd(error)) => {
                    tracing::warn!(%error, endpoints = etcd.endpoints, "etcd watch lost; serving the last state, retrying");
                    // /readyz on every replica says so, not only where a write failed.
                    self.failed(&format!("etcd {} cannot be reached: {error}", etcd.endpoints));
                }
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown.cancelled() => return,
            }
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }
}

impl Etcd {
    /// Every `current/` manifest and its bundle, at one revision.
    pub(super) async fn list(&self) -> Result<(Listed, i64), Unreadable> {
        let prefix = key(&["current", ""]);
        let response = self.get(prefix.as_str(), Some(GetOptions::new().with_prefix())).await.map_err(Unreadable::Etcd)?;
        let revision = response.header().map_or(0, |h| h.revision());
        let mut listed = Vec::new();
        for kv in response.kvs() {
            let name = String::from_utf8_lossy(kv.key().strip_prefix(prefix.as_bytes()).unwrap_or_default()).into_owned();
            let bundle = match self.bundle_of(kv.value()).await {
                Ok(bundle) => Ok(bundle),
                Err(Unreadable::Broken(reason)) => Err(reason),
                Err(etcd) => return Err(etcd),
            };
            listed.push((name, bundle, kv.mod_revision()));
        }
        Ok((listed, revision))
    }

    /// Publishes a fresh listing: every node type listed, and the removal
    /// of those no longer there.
    fn replace(&self, store: &Store, listed: Listed) {
        let mut gone: Vec<NodeType> = store.catalog().keys().cloned().collect();
        for (name, bundle, mod_revision) in listed {
            let Ok(node_type) = NodeType::parse(&name) else { continue };
            gone.retain(|n| *n != node_type);
            match bundle {
                Ok(bundle) => drop(self.apply(store, &node_type, mod_revision, Decided::Stored(bundle))),
                Err(reason) => drop(store.lock_quarantined().insert(name.clone(), Quarantined { node_type: name, reason })),
            }
        }
        for node_type in gone {
            let mut published = self.lock();
            published.remove(&node_type);
            store.publish(&node_type, Decided::Removed);
        }
    }

    /// Watches `current/` from `revision + 1`, publishing every change,
    /// until the stream ends or fails. `Broken` means the revision was
    /// compacted: the caller lists again.
    async fn watch(&self, store: &Store, revision: &mut i64, delay: &mut Duration) -> Result<(), Unreadable> {
        let prefix = key(&["current", ""]);
        let options = WatchOptions::new().with_prefix().with_start_revision(*revision + 1).with_progress_notify();
        let mut stream = self.watch_stream(prefix.as_str(), options).await.map_err(Unreadable::Etcd)?;
        while let Some(response) = stream.message().await.map_err(Unreadable::Etcd)? {
            if response.canceled() {
                if response.compact_revision() > 0 {
                    return Err(Unreadable::Broken(format!("revision {} was compacted (now {})", *revision + 1, response.compact_revision())));
                }
                return Err(Unreadable::Etcd(etcd_client::Error::WatchError(response.cancel_reason().to_owned())));
            }
            if response.created() {
                *delay = Duration::from_millis(100);
                tracing::info!(revision = *revision, "watching etcd");
            }
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                let name = String::from_utf8_lossy(kv.key().strip_prefix(prefix.as_bytes()).unwrap_or_default()).into_owned();
                let Ok(node_type) = NodeType::parse(&name) else { continue };
                match event.event_type() {
                    EventType::Put => match self.bundle_of(kv.value()).await {
                        Ok(bundle) => drop(self.apply(store, &node_type, kv.mod_revision(), Decided::Stored(bundle))),
                        Err(Unreadable::Broken(reason)) => {
                            tracing::error!(node_type = name, reason, "bundle in etcd cannot be read; serving the previous one");
                            store.lock_quarantined().insert(name.clone(), Quarantined { node_type: name, reason });
                        }
                        Err(etcd) => return Err(etcd),
                    },
                    EventType::Delete => drop(self.apply(store, &node_type, kv.mod_revision(), Decided::Removed)),
                }
            }
            // Only once every event of the response is published: a
            // failure above resumes from the first of them.
            if let Some(header) = response.header() {
                *revision = (*revision).max(header.revision());
            }
        }
        Ok(())
    }

    /// Publishes a change at `revision` unless one as new was already.
    pub(super) fn apply(&self, store: &Store, node_type: &NodeType, revision: i64, decided: Decided) -> Option<Written> {
        let mut published = self.lock();
        if published.get(node_type).is_some_and(|seen| *seen >= revision) {
            return None;
        }
        published.insert(node_type.clone(), revision);
        Some(store.publish(node_type, decided))
    }
}
