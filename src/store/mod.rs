//! Durable bundle storage and the change feed the cache follows.
//!
//! [`Store`] is one handle over one of two backends: the embedded redb
//! database (the default, [`redb`](self::redb)) or an etcd cluster shared
//! by replicas ([`etcd`]). Either way every committed change publishes the
//! whole catalog on a `watch` channel: readers always see the latest state,
//! bursts coalesce, and nothing is queued without bound. The cache follows
//! that feed and cannot tell the backends apart.
//!
//! What the store guarantees, on both backends:
//! - Each bundle is a checksummed [`record`]; one that fails its checksum or
//!   does not decode is quarantined at load (logged, listed by
//!   [`Store::quarantined`]) and every other node type is served.
//! - A version names one content forever: every (node type, version) ever
//!   stored is remembered, across deletes and restarts.
//! - Every accepted version is kept, up to `--history` per node type
//!   ([`history`]), so any of them can be made current again by a
//!   rollback, under a new version.
//! - Whether a write changes anything, conflicts (409) or misses its
//!   `If-Match` (412) is decided inside the backend's own transaction, never
//!   from this process's copy of the state: two writers, or two replicas,
//!   cannot both win.
//! - A write that fails (a full disk, etcd unreachable) changes nothing and
//!   is reported by [`Store::write_failure`] until writes work again;
//!   [`Store::heal`] retries by itself.

#[cfg(feature = "etcd")]
pub mod etcd;
pub mod history;
pub mod record;
mod redb;

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime},
};

use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use history::Version;

use crate::{
    node_type::NodeType,
    schema::{DiscoveredInstances, StoredBundle},
};

/// How often a failing store retries by itself.
pub const HEAL_INTERVAL: Duration = Duration::from_secs(2);

/// The records kept beside the bundles, each by its own key, outside the
/// change feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aux {
    /// What each Cloud Map query found last (see [`crate::discovery`]).
    Discovered,
    /// Canary rollouts, by node type (see [`crate::rollout`]).
    Rollouts,
    /// The bundle each rollout is trying, by node type.
    RolloutBundles,
}

impl Aux {
    /// Its redb table and etcd key prefix.
    fn name(self) -> &'static str {
        match self {
            Self::Discovered => "discovered",
            Self::Rollouts => "rollouts",
            Self::RolloutBundles => "rollout_bundles",
        }
    }
}

/// Every stored bundle by node type: what the change feed carries.
pub type Catalog = BTreeMap<NodeType, Arc<StoredBundle>>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The version was stored before with other content: Envoy would never
    /// see the change, since it compares versions.
    #[error("version {version:?} was already stored for {node_type} with different content; use a new version")]
    Conflict { node_type: NodeType, version: String },
    /// No such version in the node type's history.
    #[error("{node_type} has no version {version:?} in its history")]
    UnknownVersion { node_type: NodeType, version: String },
    /// `If-Match` named another version than the one stored.
    #[error("If-Match: {expected} does not match: {}", stored.as_deref().map_or_else(|| format!("{node_type} has no bundle"), |v| format!("{node_type} is at version {v:?}")))]
    PreconditionFailed { node_type: NodeType, expected: String, stored: Option<String> },
    /// The store cannot write now (an I/O error, a full disk, etcd out of
    /// reach); nothing was changed. Retrying later may work.
    #[error("store cannot write: {0}")]
    Unavailable(String),
    /// The store cannot be opened at all.
    #[error("store: {0}")]
    Open(String),
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// A write's precondition, from its `If-Match` header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum IfMatch {
    /// No `If-Match`: the write applies to whatever is stored.
    #[default]
    Any,
    /// `If-Match: *`: some bundle must be stored.
    Exists,
    /// `If-Match: <version>` (quotes allowed): that version must be stored.
    Version(String),
}

impl IfMatch {
    /// Reads an `If-Match` header value.
    pub fn parse(header: &str) -> Self {
        let value = header.trim();
        if value == "*" {
            return Self::Exists;
        }
        let value = value.strip_prefix("W/").unwrap_or(value);
        let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
        Self::Version(value.to_owned())
    }

    /// Whether a write may go on when `stored` is the version stored now.
    fn check(&self, node_type: &NodeType, stored: Option<&str>) -> Result<(), StoreError> {
        let met = match self {
            Self::Any => true,
            Self::Exists => stored.is_some(),
            Self::Version(expected) => stored == Some(expected.as_str()),
        };
        if met {
            return Ok(());
        }
        let expected = match self {
            Self::Version(version) => format!("{version:?}"),
            _ => "*".to_owned(),
        };
        Err(StoreError::PreconditionFailed { node_type: node_type.clone(), expected, stored: stored.map(str::to_owned) })
    }
}

/// What a write did.
#[derive(Debug, Clone)]
pub struct Written {
    /// Durable and published. `false` when there was nothing to do: the
    /// same version with the same content was already stored (nothing
    /// pushed), or there was nothing to delete.
    pub changed: bool,
    /// The bundle it replaced or removed.
    pub previous: Option<Arc<StoredBundle>>,
    /// The bundle stored now.
    pub current: Option<Arc<StoredBundle>>,
}

/// What a backend's transaction decided, to be published.
enum Decided {
    Unchanged,
    Stored(StoredBundle),
    Removed,
}

/// A stored record that failed to load.
#[derive(Debug, Clone, Serialize)]
pub struct Quarantined {
    pub node_type: String,
    pub reason: String,
}

/// Why writes are failing, while they are.
#[derive(Debug, Clone, Serialize)]
pub struct WriteFailure {
    pub error: String,
    pub since_unix_ms: u128,
}

/// What loading found.
struct Loaded {
    catalog: Catalog,
    quarantined: BTreeMap<String, Quarantined>,
}

/// Where the bundles live.
enum Backend {
    Redb(redb::Redb),
    #[cfg(feature = "etcd")]
    Etcd(etcd::Etcd),
}

/// The bundle store. Cheap to clone.
#[derive(Clone)]
pub struct Store(Arc<Inner>);

struct Inner {
    backend: Backend,
    feed: watch::Sender<Arc<Catalog>>,
    quarantined: Mutex<BTreeMap<String, Quarantined>>,
    failure: Mutex<Option<WriteFailure>>,
}

impl Store {
    /// Opens (or creates) the embedded store in `data_dir`, keeping the
    /// default number of versions per node type.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(data_dir, history::DEFAULT_LIMIT)
    }

    /// Opens (or creates) the embedded store in `data_dir` and loads every
    /// bundle; each node type keeps its last `history_limit` versions.
    pub fn open_with(data_dir: &Path, history_limit: usize) -> Result<Self, StoreError> {
        let (backend, loaded) = redb::Redb::open(data_dir, history_limit)?;
        Ok(Self::new(Backend::Redb(backend), loaded))
    }

    fn new(backend: Backend, loaded: Loaded) -> Self {
        let (feed, _) = watch::channel(Arc::new(loaded.catalog));
        Self(Arc::new(Inner { backend, feed, quarantined: Mutex::new(loaded.quarantined), failure: Mutex::new(None) }))
    }

    /// Stores `bundle` for `node_type`; answers once it is durable.
    pub async fn put(&self, node_type: NodeType, bundle: StoredBundle, if_match: IfMatch) -> Result<Written, StoreError> {
        let result = match &self.0.backend {
            Backend::Redb(_) => self.blocking(move |store, redb| redb.put(&node_type, bundle, &if_match, |d| store.publish(&node_type, d))).await,
            #[cfg(feature = "etcd")]
            Backend::Etcd(etcd) => etcd.put(self, &node_type, bundle, &if_match).await,
        };
        self.note(result)
    }

    /// Makes the content of `target`, a version in the history of
    /// `node_type`, current again under `new_version` (by default
    /// `<target>-rollback-<n>`): a new version, since Envoy ignores a
    /// version it has seen (R15).
    pub async fn rollback(&self, node_type: NodeType, target: String, new_version: Option<String>, if_match: IfMatch) -> Result<Written, StoreError> {
        let result = match &self.0.backend {
            Backend::Redb(_) => {
                self.blocking(move |store, redb| redb.rollback(&node_type, &target, new_version, &if_match, |d| store.publish(&node_type, d))).await
            }
            #[cfg(feature = "etcd")]
            Backend::Etcd(etcd) => etcd.rollback(self, &node_type, &target, new_version, &if_match).await,
        };
        self.note(result)
    }

    /// Removes the bundle of `node_type` (and any quarantined record of it);
    /// unchanged when there was neither. Its versions stay taken and its
    /// history stays.
    pub async fn delete(&self, node_type: NodeType, if_match: IfMatch) -> Result<Written, StoreError> {
        let result = match &self.0.backend {
            Backend::Redb(_) => self.blocking(move |store, redb| redb.delete(&node_type, &if_match, |d| store.publish(&node_type, d))).await,
            #[cfg(feature = "etcd")]
            Backend::Etcd(etcd) => etcd.delete(self, &node_type, &if_match).await,
        };
        self.note(result)
    }

    /// The versions of `node_type` still kept, oldest first. Kept after a
    /// delete, so a deleted node type can be rolled back.
    pub async fn history(&self, node_type: NodeType) -> Result<Vec<Version>, StoreError> {
        match &self.0.backend {
            Backend::Redb(_) => self.blocking(move |_, redb| redb.history(&node_type)).await,
            #[cfg(feature = "etcd")]
            Backend::Etcd(etcd) => etcd.history(&node_type).await,
        }
    }

    /// The bundle `node_type` had at `version`, if its history still has it.
    pub async fn version(&self, node_type: NodeType, version: String) -> Result<Option<StoredBundle>, StoreError> {
        match &self.0.backend {
            Backend::Redb(_) => self.blocking(move |_, redb| redb.version(&node_type, &version)).await,
            #[cfg(feature = "etcd")]
            Backend::Etcd(etcd) => etcd.version(&node_type, &version).await,
        }
    }

    /// The instances each Cloud Map query found last, by query key (see
    /// [`crate::discovery`]). A record that does not decode is skipped: that
    /// query waits for its first poll.
    pub async fn discovered(&self) -> Result<BTreeMap<String, DiscoveredInstances>, StoreError> {
        let decoded = self.aux(Aux::Discovered).await?.into_iter().filter_map(|(key, value)| match prost::Message::decode(value.as_slice()) {
            Ok(found) => Some((key, found)),
            Err(error) => {
                tracing::warn!(key, %error, "a stored Cloud Map record does not decode; its source waits for its first poll");
                None
            }
        });
        Ok(decoded.collect())
    }

    /// Keeps what a Cloud Map query found, for the next start.
    pub async fn save_discovered(&self, key: String, found: DiscoveredInstances) -> Result<(), StoreError> {
        self.save_aux(Aux::Discovered, key, Some(prost::Message::encode_to_vec(&found))).await
    }

    /// Forgets a query no bundle uses any more.
    pub async fn forget_discovered(&self, key: String) -> Result<(), StoreError> {
        self.save_aux(Aux::Discovered, key, None).await
    }

    /// Every record of `kind`, by key, undecoded.
    pub async fn aux(&self, kind: Aux) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        match &self.0.backend {
            Backend::Redb(_) => self.blocking(move |_, redb| redb.aux(kind.name())).await,
            #[cfg(feature = "etcd")]
            Backend::Etcd(etcd) => etcd.aux(kind.name()).await,
        }
    }

    /// Keeps (or, given `None`, forgets) the record of `kind` under `key`.
    /// Not published on the change feed: its owner holds what it stores.
    pub async fn save_aux(&self, kind: Aux, key: String, value: Option<Vec<u8>>) -> Result<(), StoreError> {
        match &self.0.backend {
            Backend::Redb(_) => self.blocking(move |_, redb| redb.save_aux(kind.name(), &key, value.as_deref())).await,
            #[cfg(feature = "etcd")]
            Backend::Etcd(etcd) => etcd.save_aux(kind.name(), &key, value).await,
        }
    }

    /// Runs `f` with the embedded backend on a blocking thread.
    async fn blocking<T: Send + 'static>(&self, f: impl FnOnce(&Store, &redb::Redb) -> Result<T, StoreError> + Send + 'static) -> Result<T, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || match &store.0.backend {
            Backend::Redb(redb) => f(&store, redb),
            #[cfg(feature = "etcd")]
            Backend::Etcd(_) => Err(StoreError::Unavailable("not the embedded store".into())),
        })
        .await
        .map_err(unavailable)?
    }

    /// Publishes what a transaction decided on the change feed. Backends
    /// call it before the next write of theirs is decided, so the feed
    /// follows commit order.
    fn publish(&self, node_type: &NodeType, decided: Decided) -> Written {
        let previous = self.0.feed.borrow().get(node_type).cloned();
        let current = match decided {
            Decided::Unchanged => return Written { changed: false, current: previous.clone(), previous },
            Decided::Stored(bundle) => Some(Arc::new(bundle)),
            Decided::Removed => None,
        };
        self.lock_quarantined().remove(node_type.as_str());
        self.0.feed.send_modify(|catalog| {
            let catalog = Arc::make_mut(catalog);
            match &current {
                Some(bundle) => catalog.insert(node_type.clone(), bundle.clone()),
                None => catalog.remove(node_type),
            };
        });
        Written { changed: true, previous, current }
    }

    /// Remembers whether the store could write: a failure until a write
    /// (or probe) succeeds again.
    fn note<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        match &result {
            Err(StoreError::Unavailable(message)) => {
                tracing::error!(error = message, "store write failed; nothing was changed");
                self.failed(message);
            }
            _ => {
                if self.lock_failure().take().is_some() {
                    tracing::info!("store writes work again");
                }
            }
        }
        result
    }

    /// Records that the store cannot write now (kept until a write works).
    fn failed(&self, message: &str) {
        let mut failure = self.lock_failure();
        let since_unix_ms = failure.as_ref().map_or_else(now_ms, |f| f.since_unix_ms);
        *failure = Some(WriteFailure { error: message.to_owned(), since_unix_ms });
    }

    fn lock_failure(&self) -> MutexGuard<'_, Option<WriteFailure>> {
        self.0.failure.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// While writes fail, retries a small probe every [`HEAL_INTERVAL`], so
    /// the store reports healthy again as soon as the cause is gone, without
    /// waiting for a user's write.
    pub async fn heal(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(HEAL_INTERVAL) => {}
                () = shutdown.cancelled() => return,
            }
            if self.write_failure().is_none() {
                continue;
            }
            let probed = match &self.0.backend {
                Backend::Redb(_) => self.blocking(|_, redb| redb.probe()).await,
                #[cfg(feature = "etcd")]
                Backend::Etcd(etcd) => etcd.probe().await,
            };
            if let Err(error) = self.note(probed) {
                tracing::debug!(%error, "store probe failed");
            }
        }
    }

    /// The current catalog.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.0.feed.borrow().clone()
    }

    /// The change feed: the catalog after every committed change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Catalog>> {
        self.0.feed.subscribe()
    }

    /// Records that failed to load, by node type.
    pub fn quarantined(&self) -> Vec<Quarantined> {
        self.lock_quarantined().values().cloned().collect()
    }

    /// Why writes fail, while they do.
    pub fn write_failure(&self) -> Option<WriteFailure> {
        self.lock_failure().clone()
    }

    fn lock_quarantined(&self) -> MutexGuard<'_, BTreeMap<String, Quarantined>> {
        self.0.quarantined.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn now_ms() -> u128 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis())
}

/// What is published is read back from the very bytes written, as a
/// restart (or another replica) would read them, and its resources share
/// one buffer.
fn read_back(record: &[u8]) -> Result<StoredBundle, StoreError> {
    match record::decode(record) {
        Ok(record::Decoded::Current(bundle)) => Ok(bundle),
        other => Err(StoreError::Unavailable(format!("a record does not read back: {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::{accept, Format};

    fn bundle(version: &str, cluster: &str) -> StoredBundle {
        let body = serde_json::json!({"version": version, "clusters": [{"name": cluster}]});
        accept(body.to_string().as_bytes(), Format::Json).unwrap()
    }

    fn sidecar() -> NodeType {
        NodeType::parse("sidecar").unwrap()
    }

    #[tokio::test]
    async fn a_version_names_one_content_forever() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.put(sidecar(), bundle("v1", "a"), IfMatch::Any).await.unwrap().changed);
        assert!(store.put(sidecar(), bundle("v2", "b"), IfMatch::Any).await.unwrap().changed);
        let reused = store.put(sidecar(), bundle("v1", "c"), IfMatch::Any).await;
        assert!(matches!(reused, Err(StoreError::Conflict { .. })), "{:?}", reused.err());
        // Going back to v1 with its own content is a rollback, not a conflict.
        assert!(store.put(sidecar(), bundle("v1", "a"), IfMatch::Any).await.unwrap().changed);
        assert!(!store.put(sidecar(), bundle("v1", "a"), IfMatch::Any).await.unwrap().changed, "the same again is a no-op");
        assert!(store.delete(sidecar(), IfMatch::Any).await.unwrap().changed);
        assert!(!store.delete(sidecar(), IfMatch::Any).await.unwrap().changed, "nothing left to delete");
        drop(store);

        let store = Store::open(dir.path()).unwrap();
        assert!(matches!(store.put(sidecar(), bundle("v2", "c"), IfMatch::Any).await, Err(StoreError::Conflict { .. })), "across delete and restart");
        assert_eq!(store.catalog().len(), 0);
    }

    #[tokio::test]
    async fn if_match_is_checked_in_the_transaction_and_names_the_stored_version() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let missing = store.put(sidecar(), bundle("v1", "a"), IfMatch::Exists).await;
        assert!(matches!(missing, Err(StoreError::PreconditionFailed { stored: None, .. })), "{missing:?}");
        store.put(sidecar(), bundle("v1", "a"), IfMatch::Any).await.unwrap();
        let stale = store.put(sidecar(), bundle("v2", "b"), IfMatch::parse("\"v0\"")).await;
        assert!(matches!(&stale, Err(StoreError::PreconditionFailed { stored: Some(v), .. }) if v == "v1"), "{stale:?}");
        assert!(store.put(sidecar(), bundle("v2", "b"), IfMatch::parse("v1")).await.unwrap().changed);
        assert!(store.rollback(sidecar(), "v1".into(), None, IfMatch::parse("v1")).await.is_err(), "stale rollback refused");
        assert!(store.delete(sidecar(), IfMatch::parse("v1")).await.is_err(), "stale delete refused");
        assert_eq!(store.catalog()[&sidecar()].version, "v2", "refusals changed nothing");
        assert!(store.delete(sidecar(), IfMatch::parse("v2")).await.unwrap().changed);
    }

    fn cluster_names(bundle: &StoredBundle) -> Vec<&str> {
        bundle.resources(crate::resource_type::ResourceType::Cluster).map(|r| r.name.as_str()).collect()
    }

    #[tokio::test]
    async fn history_keeps_the_last_versions_and_a_rollback_restores_one_under_a_new_version() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with(dir.path(), 3).unwrap();
        for (version, cluster) in [("v1", "a"), ("v2", "b"), ("v3", "c"), ("v4", "d")] {
            let written = store.put(sidecar(), bundle(version, cluster), IfMatch::Any).await.unwrap();
            assert!(written.changed);
        }
        let listed: Vec<String> = store.history(sidecar()).await.unwrap().into_iter().map(|v| v.version).collect();
        assert_eq!(listed, ["v2", "v3", "v4"], "bounded by the limit, oldest dropped");
        assert!(store.version(sidecar(), "v1".into()).await.unwrap().is_none());
        assert_eq!(cluster_names(&store.version(sidecar(), "v2".into()).await.unwrap().unwrap()), ["b"]);

        let written = store.rollback(sidecar(), "v2".into(), None, IfMatch::Any).await.unwrap();
        let current = written.current.unwrap();
        assert_eq!((current.version.as_str(), cluster_names(&current)), ("v2-rollback-5", vec!["b"]));
        assert_eq!(written.previous.unwrap().version, "v4");
        assert_eq!(store.catalog()[&sidecar()].version, "v2-rollback-5", "published");
        let unknown = store.rollback(sidecar(), "v1".into(), None, IfMatch::Any).await;
        assert!(matches!(unknown, Err(StoreError::UnknownVersion { .. })), "{unknown:?}");
        // A named new version must be new too.
        let reused = store.rollback(sidecar(), "v3".into(), Some("v4".into()), IfMatch::Any).await;
        assert!(matches!(reused, Err(StoreError::Conflict { .. })), "{reused:?}");

        // History outlives a delete and a restart; a deleted node type can be rolled back.
        assert!(store.delete(sidecar(), IfMatch::Any).await.unwrap().changed);
        drop(store);
        let store = Store::open_with(dir.path(), 3).unwrap();
        let last = store.history(sidecar()).await.unwrap().pop().unwrap();
        assert_eq!((last.version.as_str(), last.rollback_of.as_deref(), last.counts[crate::resource_type::ResourceType::Cluster]), ("v2-rollback-5", Some("v2"), 1));
        store.rollback(sidecar(), "v4".into(), Some("v6".into()), IfMatch::Any).await.unwrap();
        assert_eq!(cluster_names(&store.catalog()[&sidecar()]), ["d"]);
    }
}
