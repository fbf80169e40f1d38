//! Durable bundle storage and the change feed the cache follows.
//!
//! Bundles live in a redb database (`sxds.redb` in the data directory): an
//! embedded, crash-safe B-tree with ACID transactions, so a PUT answered 200
//! has been fsynced and survives kill -9. Every committed change publishes
//! the whole catalog on a `watch` channel: readers always see the latest
//! state, bursts coalesce, and nothing is queued without bound. That feed is
//! the seam: a networked store (etcd) publishes the same catalog from its
//! watch stream, and the cache cannot tell the two apart.

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{Arc, Mutex},
};

use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::watch;

use crate::{node_type::NodeType, schema::StoredBundle};

/// Node type → encoded `sxds.v1.StoredBundle`.
const BUNDLES: TableDefinition<&str, &[u8]> = TableDefinition::new("bundles");

/// Every stored bundle by node type: what the change feed carries.
pub type Catalog = BTreeMap<NodeType, Arc<StoredBundle>>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The version is already stored with other content: Envoy would never
    /// see the change, since it compares versions.
    #[error("version {version:?} is already stored for {node_type} with different content; use a new version")]
    Conflict { node_type: NodeType, version: String },
    #[error("store: {0}")]
    Backend(String),
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// What a put did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// Durable and published.
    Stored,
    /// The same version with the same content was already stored: nothing
    /// written, nothing pushed.
    Unchanged,
}

/// The bundle store. Cheap to clone.
#[derive(Clone)]
pub struct Store(Arc<Inner>);

struct Inner {
    db: Database,
    // Serialises writers so the feed publishes changes in commit order. A std
    // Mutex: it is only taken on blocking threads, never across an await.
    write_lock: Mutex<()>,
    feed: watch::Sender<Arc<Catalog>>,
}

impl Store {
    /// Opens (or creates) the store in `data_dir` and loads every bundle.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| backend(format!("cannot create {}: {e}", data_dir.display())))?;
        let path = data_dir.join("sxds.redb");
        let db = Database::create(&path).map_err(|e| backend(format!("cannot open {}: {e}", path.display())))?;
        let catalog = load(&db)?;
        let (feed, _) = watch::channel(Arc::new(catalog));
        Ok(Self(Arc::new(Inner { db, write_lock: Mutex::new(()), feed })))
    }

    /// Stores `bundle` for `node_type`; answers once it is durable.
    pub async fn put(&self, node_type: NodeType, bundle: StoredBundle) -> Result<PutOutcome, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.put_blocking(node_type, bundle)).await.map_err(backend)?
    }

    fn put_blocking(&self, node_type: NodeType, bundle: StoredBundle) -> Result<PutOutcome, StoreError> {
        let _writer = self.0.write_lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(current) = self.0.feed.borrow().get(&node_type) {
            if version(current) == version(&bundle) {
                return if current.content_hash == bundle.content_hash {
                    Ok(PutOutcome::Unchanged)
                } else {
                    Err(StoreError::Conflict { node_type, version: version(&bundle).to_owned() })
                };
            }
        }
        let txn = self.0.db.begin_write().map_err(backend)?;
        {
            let mut table = txn.open_table(BUNDLES).map_err(backend)?;
            table.insert(node_type.as_str(), bundle.encode_to_vec().as_slice()).map_err(backend)?;
        }
        txn.commit().map_err(backend)?;
        let bundle = Arc::new(bundle);
        self.0.feed.send_modify(|catalog| {
            Arc::make_mut(catalog).insert(node_type, bundle);
        });
        Ok(PutOutcome::Stored)
    }

    /// Removes the bundle of `node_type`; `false` when there was none.
    pub async fn delete(&self, node_type: NodeType) -> Result<bool, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.delete_blocking(node_type)).await.map_err(backend)?
    }

    fn delete_blocking(&self, node_type: NodeType) -> Result<bool, StoreError> {
        let _writer = self.0.write_lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !self.0.feed.borrow().contains_key(&node_type) {
            return Ok(false);
        }
        let txn = self.0.db.begin_write().map_err(backend)?;
        {
            let mut table = txn.open_table(BUNDLES).map_err(backend)?;
            table.remove(node_type.as_str()).map_err(backend)?;
        }
        txn.commit().map_err(backend)?;
        self.0.feed.send_modify(|catalog| {
            Arc::make_mut(catalog).remove(&node_type);
        });
        Ok(true)
    }

    /// The current catalog.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.0.feed.borrow().clone()
    }

    /// The change feed: the catalog after every committed change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Catalog>> {
        self.0.feed.subscribe()
    }
}

fn version(stored: &StoredBundle) -> &str {
    &stored.contents().version
}

fn load(db: &Database) -> Result<Catalog, StoreError> {
    let txn = db.begin_write().map_err(backend)?;
    txn.open_table(BUNDLES).map_err(backend)?; // creates the table on first start
    txn.commit().map_err(backend)?;

    let txn = db.begin_read().map_err(backend)?;
    let table = txn.open_table(BUNDLES).map_err(backend)?;
    let mut catalog = Catalog::new();
    for entry in table.iter().map_err(backend)? {
        let (key, value) = entry.map_err(backend)?;
        let node_type = NodeType::parse(key.value()).map_err(backend)?;
        let bundle = StoredBundle::decode(value.value()).map_err(|e| backend(format!("bundle of {node_type} is corrupt: {e}")))?;
        catalog.insert(node_type, Arc::new(bundle));
    }
    Ok(catalog)
}
