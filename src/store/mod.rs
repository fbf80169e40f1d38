//! Durable bundle storage and the change feed the cache follows.
//!
//! Bundles live in a redb database (`sxds.redb` in the data directory): an
//! embedded, crash-safe B-tree with ACID transactions, so a PUT answered 200
//! has been fsynced and survives kill -9. Every committed change publishes
//! the whole catalog on a `watch` channel: readers always see the latest
//! state, bursts coalesce, and nothing is queued without bound. That feed is
//! the seam: a networked store (etcd) publishes the same catalog from its
//! watch stream, and the cache cannot tell the two apart.
//!
//! What the store guarantees:
//! - Each bundle is a checksummed [`record`]; one that fails its checksum or
//!   does not decode is quarantined at load (kept aside in its own table,
//!   logged, listed by [`Store::quarantined`]) and every other node type is
//!   served.
//! - A version names one content forever: the `versions` table remembers
//!   every (node type, version) ever stored, across deletes and restarts.
//! - Every accepted version is kept, up to `--history` per node type
//!   ([`history`]), so any of them can be made current again by a
//!   rollback, under a new version.
//! - A marker file says the directory holds a store; a data file that is
//!   missing or empty beside it is an error, never a silent empty start.
//! - An I/O error (a full disk) fails the write that met it and nothing
//!   else: the database is reopened on the next write, and [`Store::heal`]
//!   retries by itself, so writes work again once the cause is gone.

pub mod history;
pub mod record;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime},
};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableError};
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use history::Version;

use crate::{bundle::MAX_VERSION_LEN, node_type::NodeType, schema::StoredBundle};
use history::{HISTORY, HISTORY_RECORDS};

/// Node type → checksummed record (see [`record`]).
const RECORDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("records");
/// Node type, NUL, version → content hash: every version ever stored.
const VERSIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("versions");
/// Node type → the record that failed to load, kept for inspection.
const QUARANTINE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("quarantine");
/// Small facts about the store; the healer's probe writes here.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// The table of sxds before 0.2 (node type → legacy record), upgraded once.
const LEGACY_BUNDLES: TableDefinition<&str, &[u8]> = TableDefinition::new("bundles");

const DATA_FILE: &str = "sxds.redb";
/// Written once the data file exists: from then on the file must be there.
const MARKER_FILE: &str = "sxds.store";
/// redb caches pages it reads and writes; sxds reads the file only at start,
/// so a large cache would only hold copies of bundles already in memory.
const CACHE_BYTES: usize = 16 << 20;
/// How often a failing store retries by itself.
pub const HEAL_INTERVAL: Duration = Duration::from_secs(2);

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
    /// The store cannot write now (an I/O error, a full disk); nothing was
    /// changed. Retrying later may work.
    #[error("store cannot write: {0}")]
    Unavailable(String),
    /// The store cannot be opened at all.
    #[error("store: {0}")]
    Open(String),
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
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

/// The bundle store. Cheap to clone.
#[derive(Clone)]
pub struct Store(Arc<Inner>);

struct Inner {
    path: PathBuf,
    // Serialises writers, so the feed publishes changes in commit order, and
    // owns the database handle, which an I/O error discards. A std Mutex: it
    // is only taken on blocking threads, never across an await.
    writer: Mutex<Writer>,
    feed: watch::Sender<Arc<Catalog>>,
    quarantined: Mutex<BTreeMap<String, Quarantined>>,
    history_limit: usize,
}

struct Writer {
    /// `None` after an I/O error: reopened by the next write.
    db: Option<Database>,
    failure: Option<WriteFailure>,
}

impl Store {
    /// Opens (or creates) the store in `data_dir`, keeping the default
    /// number of versions per node type.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(data_dir, history::DEFAULT_LIMIT)
    }

    /// Opens (or creates) the store in `data_dir` and loads every bundle;
    /// each node type keeps its last `history_limit` versions.
    pub fn open_with(data_dir: &Path, history_limit: usize) -> Result<Self, StoreError> {
        let open_error = |what: &str, path: &Path, e: &dyn std::fmt::Display| StoreError::Open(format!("cannot {what} {}: {e}", path.display()));
        std::fs::create_dir_all(data_dir).map_err(|e| open_error("create", data_dir, &e))?;
        let path = data_dir.join(DATA_FILE);
        let marker = data_dir.join(MARKER_FILE);
        let held_data = marker.exists();
        let size = std::fs::metadata(&path).map(|m| m.len()).ok();
        if held_data && size.unwrap_or(0) == 0 {
            let state = if size.is_none() { "missing" } else { "empty" };
            return Err(StoreError::Open(format!(
                "{} is {state}, but {} says this directory holds a store: restore the file from a backup, \
                 or remove {} to start with an empty store",
                path.display(),
                marker.display(),
                marker.display()
            )));
        }
        let db = open_database(&path).map_err(|e| open_error("open", &path, &e))?;
        if !held_data {
            write_marker(&marker).map_err(|e| open_error("write", &marker, &e))?;
        }
        let loaded = load(&db, history_limit).map_err(|e| open_error("load", &path, &e))?;
        let (feed, _) = watch::channel(Arc::new(loaded.catalog));
        Ok(Self(Arc::new(Inner {
            path,
            writer: Mutex::new(Writer { db: Some(db), failure: None }),
            feed,
            quarantined: Mutex::new(loaded.quarantined),
            history_limit,
        })))
    }

    /// Stores `bundle` for `node_type`; answers once it is durable.
    pub async fn put(&self, node_type: NodeType, bundle: StoredBundle) -> Result<Written, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.put_blocking(node_type, bundle)).await.map_err(unavailable)?
    }

    fn put_blocking(&self, node_type: NodeType, bundle: StoredBundle) -> Result<Written, StoreError> {
        let mut writer = self.writer();
        let previous = self.0.feed.borrow().get(&node_type).cloned();
        if let Some(current) = &previous {
            if current.version == bundle.version && current.content_hash == bundle.content_hash {
                return Ok(Written { changed: false, current: previous.clone(), previous });
            }
        }
        let record = record::encode(&bundle);
        let bundle = read_back(&record)?;
        self.write(&mut writer, |txn| self.commit(txn, &node_type, &bundle, &record, None))?;
        Ok(self.publish(node_type, bundle, previous))
    }

    /// Makes the content of `target`, a version in the history of
    /// `node_type`, current again under `new_version` (by default
    /// `<target>-rollback-<n>`): a new version, since Envoy ignores a
    /// version it has seen (R15).
    pub async fn rollback(&self, node_type: NodeType, target: String, new_version: Option<String>) -> Result<Written, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.rollback_blocking(node_type, &target, new_version)).await.map_err(unavailable)?
    }

    fn rollback_blocking(&self, node_type: NodeType, target: &str, new_version: Option<String>) -> Result<Written, StoreError> {
        let mut writer = self.writer();
        let previous = self.0.feed.borrow().get(&node_type).cloned();
        let bundle = self.write(&mut writer, |txn| {
            let history = txn.open_table(HISTORY)?;
            let Some((key, _)) = history::find(&history, &node_type, target)? else {
                return Ok(Err(StoreError::UnknownVersion { node_type: node_type.clone(), version: target.to_owned() }));
            };
            let raw = txn.open_table(HISTORY_RECORDS)?.get(key.as_slice())?.map(|v| v.value().to_vec());
            let mut bundle = match raw.as_deref().map(record::decode) {
                Some(Ok(record::Decoded::Current(bundle) | record::Decoded::Legacy(bundle))) => bundle,
                _ => return Ok(Err(StoreError::Unavailable(format!("the stored record of {node_type} {target:?} does not read back")))),
            };
            let seq = history::next_seq(&history, &node_type)?;
            drop(history);
            bundle.version = new_version.clone().unwrap_or_else(|| history::rollback_version(target, seq, MAX_VERSION_LEN));
            let record = record::encode(&bundle);
            let bundle = match read_back(&record) {
                Ok(bundle) => bundle,
                Err(error) => return Ok(Err(error)),
            };
            Ok(self.commit(txn, &node_type, &bundle, &record, Some(target))?.map(|()| bundle))
        })?;
        Ok(self.publish(node_type, bundle, previous))
    }

    /// Writes `bundle` (encoded as `record`) as the current one of
    /// `node_type` and appends it to the history, unless its version was
    /// stored before with other content.
    fn commit(
        &self,
        txn: &redb::WriteTransaction,
        node_type: &NodeType,
        bundle: &StoredBundle,
        record: &[u8],
        rollback_of: Option<&str>,
    ) -> Result<Result<(), StoreError>, redb::Error> {
        let version_key = version_key(node_type, &bundle.version);
        let mut versions = txn.open_table(VERSIONS)?;
        if let Some(stored) = versions.get(version_key.as_slice())? {
            if stored.value() != bundle.content_hash.as_bytes() {
                return Ok(Err(StoreError::Conflict { node_type: node_type.clone(), version: bundle.version.clone() }));
            }
        }
        versions.insert(version_key.as_slice(), bundle.content_hash.as_bytes())?;
        let key = node_type.as_str().as_bytes();
        txn.open_table(RECORDS)?.insert(key, record)?;
        txn.open_table(QUARANTINE)?.remove(key)?;
        let (mut history, mut records) = (txn.open_table(HISTORY)?, txn.open_table(HISTORY_RECORDS)?);
        history::append(&mut history, &mut records, node_type, bundle, record, rollback_of, self.0.history_limit)?;
        Ok(Ok(()))
    }

    /// Publishes a committed bundle on the change feed.
    fn publish(&self, node_type: NodeType, bundle: StoredBundle, previous: Option<Arc<StoredBundle>>) -> Written {
        self.lock_quarantined().remove(node_type.as_str());
        let bundle = Arc::new(bundle);
        self.0.feed.send_modify(|catalog| {
            Arc::make_mut(catalog).insert(node_type, bundle.clone());
        });
        Written { changed: true, previous, current: Some(bundle) }
    }

    /// The versions of `node_type` still kept, oldest first. Kept after a
    /// delete, so a deleted node type can be rolled back.
    pub async fn history(&self, node_type: NodeType) -> Result<Vec<Version>, StoreError> {
        self.read(move |txn| {
            let table = match txn.open_table(HISTORY) {
                Ok(table) => table,
                Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(e.into()),
            };
            Ok(history::entries(&table, &node_type)?.into_iter().map(|(_, entry)| entry.into()).collect())
        })
        .await
    }

    /// The bundle `node_type` had at `version`, if its history still has it.
    pub async fn version(&self, node_type: NodeType, version: String) -> Result<Option<StoredBundle>, StoreError> {
        self.read(move |txn| {
            let table = match txn.open_table(HISTORY) {
                Ok(table) => table,
                Err(TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            let Some((key, _)) = history::find(&table, &node_type, &version)? else { return Ok(None) };
            let raw = txn.open_table(HISTORY_RECORDS)?.get(key.as_slice())?.map(|v| v.value().to_vec());
            Ok(raw.and_then(|raw| match record::decode(&raw) {
                Ok(record::Decoded::Current(bundle) | record::Decoded::Legacy(bundle)) => Some(bundle),
                Err(_) => None,
            }))
        })
        .await
    }

    /// Runs `f` in a read transaction on a blocking thread.
    async fn read<T: Send + 'static>(&self, f: impl FnOnce(&redb::ReadTransaction) -> Result<T, redb::Error> + Send + 'static) -> Result<T, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut writer = store.writer();
            let db = match &mut writer.db {
                Some(db) => db,
                None => writer.db.insert(open_database(&store.0.path).map_err(unavailable)?),
            };
            let txn = db.begin_read().map_err(unavailable)?;
            drop(writer);
            f(&txn).map_err(unavailable)
        })
        .await
        .map_err(unavailable)?
    }

    /// Removes the bundle of `node_type` (and any quarantined record of it);
    /// unchanged when there was neither. Its versions stay taken and its
    /// history stays.
    pub async fn delete(&self, node_type: NodeType) -> Result<Written, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.delete_blocking(node_type)).await.map_err(unavailable)?
    }

    fn delete_blocking(&self, node_type: NodeType) -> Result<Written, StoreError> {
        let mut writer = self.writer();
        let previous = self.0.feed.borrow().get(&node_type).cloned();
        let quarantined = self.lock_quarantined().contains_key(node_type.as_str());
        if previous.is_none() && !quarantined {
            return Ok(Written { changed: false, previous: None, current: None });
        }
        let key = node_type.as_str().as_bytes();
        self.write(&mut writer, |txn| {
            txn.open_table(RECORDS)?.remove(key)?;
            txn.open_table(QUARANTINE)?.remove(key)?;
            Ok(Ok(()))
        })?;
        self.lock_quarantined().remove(node_type.as_str());
        self.0.feed.send_modify(|catalog| {
            Arc::make_mut(catalog).remove(&node_type);
        });
        Ok(Written { changed: true, previous, current: None })
    }

    /// Runs `f` in a write transaction, committed when `f` decides so
    /// (`Ok(Ok(_))`). An I/O error drops the database handle (redb refuses
    /// every later write on a handle that met one) and is remembered until
    /// a write succeeds.
    fn write<T>(
        &self,
        writer: &mut Writer,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<Result<T, StoreError>, redb::Error>,
    ) -> Result<T, StoreError> {
        let result = (|| {
            let db = match &mut writer.db {
                Some(db) => db,
                None => {
                    let db = writer.db.insert(open_database(&self.0.path)?);
                    tracing::info!(path = %self.0.path.display(), "store reopened");
                    db
                }
            };
            let txn = db.begin_write()?;
            let decided = f(&txn)?;
            if decided.is_ok() {
                txn.commit()?;
            } else {
                txn.abort()?;
            }
            Ok::<_, redb::Error>(decided)
        })();
        match result {
            Ok(decided) => {
                if writer.failure.take().is_some() {
                    tracing::info!(path = %self.0.path.display(), "store writes work again");
                }
                decided
            }
            Err(error) => {
                writer.db = None;
                let message = error.to_string();
                tracing::error!(path = %self.0.path.display(), error = message, "store write failed; nothing was changed");
                let since_unix_ms = writer.failure.as_ref().map_or_else(now_ms, |f| f.since_unix_ms);
                writer.failure = Some(WriteFailure { error: message.clone(), since_unix_ms });
                Err(StoreError::Unavailable(message))
            }
        }
    }

    /// While writes fail, retries a small probe write every
    /// [`HEAL_INTERVAL`], so the store reports healthy again as soon as the
    /// cause is gone, without waiting for a user's write.
    pub async fn heal(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(HEAL_INTERVAL) => {}
                () = shutdown.cancelled() => return,
            }
            if self.write_failure().is_none() {
                continue;
            }
            let store = self.clone();
            let probe = tokio::task::spawn_blocking(move || {
                let mut writer = store.writer();
                store.write(&mut writer, |txn| {
                    txn.open_table(META)?.insert("probe", now_ms().to_le_bytes().as_slice())?;
                    Ok(Ok(()))
                })
            });
            if let Ok(Err(error)) = probe.await {
                tracing::debug!(%error, "store probe write failed");
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
        self.writer().failure.clone()
    }

    fn writer(&self) -> MutexGuard<'_, Writer> {
        self.0.writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_quarantined(&self) -> MutexGuard<'_, BTreeMap<String, Quarantined>> {
        self.0.quarantined.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn now_ms() -> u128 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis())
}

fn open_database(path: &Path) -> Result<Database, redb::DatabaseError> {
    Database::builder().set_cache_size(CACHE_BYTES).create(path)
}

fn write_marker(marker: &Path) -> std::io::Result<()> {
    std::fs::write(marker, "This directory holds an sxds store; sxds.redb must be beside this file.\n")?;
    std::fs::File::open(marker)?.sync_all()?;
    if let Some(dir) = marker.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// What is published is read back from the very bytes written, as a
/// restart would read them (and its resources share one buffer).
fn read_back(record: &[u8]) -> Result<StoredBundle, StoreError> {
    match record::decode(record) {
        Ok(record::Decoded::Current(bundle)) => Ok(bundle),
        other => Err(StoreError::Unavailable(format!("a record does not read back: {other:?}"))),
    }
}

fn version_key(node_type: &NodeType, version: &str) -> Vec<u8> {
    [node_type.as_str().as_bytes(), b"\0", version.as_bytes()].concat()
}

/// What loading found.
struct Loaded {
    catalog: Catalog,
    quarantined: BTreeMap<String, Quarantined>,
}

/// What a record on disk needs done at load.
enum Fix {
    Quarantine { key: Vec<u8>, raw: Vec<u8> },
    Rewrite { node_type: NodeType, bundle: Arc<StoredBundle> },
}

/// Reads every record. Records that fail are quarantined, pre-0.2 records
/// are rewritten in the current form; if those fixes cannot be written (a
/// full disk), the store still starts and retries them at the next start.
fn load(db: &Database, history_limit: usize) -> Result<Loaded, redb::Error> {
    let mut loaded = Loaded { catalog: Catalog::new(), quarantined: BTreeMap::new() };
    let mut fixes = Vec::new();
    let txn = db.begin_read()?;
    let mut take = |key: &[u8], raw: &[u8], legacy_table: bool| {
        let name = String::from_utf8_lossy(key).into_owned();
        let decoded = NodeType::parse(&name).map_err(|e| e.to_string()).and_then(|node_type| {
            let decoded = record::decode(raw).map_err(|e| e.to_string())?;
            Ok((node_type, decoded))
        });
        match decoded {
            Ok((node_type, record::Decoded::Current(bundle))) if !legacy_table => {
                loaded.catalog.insert(node_type, Arc::new(bundle));
            }
            Ok((node_type, record::Decoded::Current(bundle) | record::Decoded::Legacy(bundle))) => {
                let bundle = Arc::new(bundle);
                loaded.catalog.insert(node_type.clone(), bundle.clone());
                fixes.push(Fix::Rewrite { node_type, bundle });
            }
            Err(reason) => {
                tracing::error!(node_type = name, reason, "stored bundle is corrupt: quarantined; every other node type is served");
                loaded.quarantined.insert(name.clone(), Quarantined { node_type: name, reason });
                fixes.push(Fix::Quarantine { key: key.to_vec(), raw: raw.to_vec() });
            }
        }
    };
    match txn.open_table(RECORDS) {
        Ok(table) => {
            for entry in table.iter()? {
                let (key, value) = entry?;
                take(key.value(), value.value(), false);
            }
        }
        Err(TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(e.into()),
    }
    match txn.open_table(LEGACY_BUNDLES) {
        Ok(table) => {
            for entry in table.iter()? {
                let (key, value) = entry?;
                take(key.value().as_bytes(), value.value(), true);
            }
        }
        Err(TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(e.into()),
    }
    match txn.open_table(QUARANTINE) {
        Ok(table) => {
            for entry in table.iter()? {
                let (key, _) = entry?;
                let name = String::from_utf8_lossy(key.value()).into_owned();
                let reason = "quarantined at an earlier start".to_owned();
                loaded.quarantined.entry(name.clone()).or_insert(Quarantined { node_type: name, reason });
            }
        }
        Err(TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(e.into()),
    }
    drop(txn);

    let fixed = (|| {
        let txn = db.begin_write()?;
        {
            let (mut records, mut quarantine, mut versions) =
                (txn.open_table(RECORDS)?, txn.open_table(QUARANTINE)?, txn.open_table(VERSIONS)?);
            txn.open_table(META)?;
            for fix in &fixes {
                match fix {
                    Fix::Quarantine { key, raw } => {
                        quarantine.insert(key.as_slice(), raw.as_slice())?;
                        records.remove(key.as_slice())?;
                    }
                    Fix::Rewrite { node_type, bundle } => {
                        records.insert(node_type.as_str().as_bytes(), record::encode(bundle).as_slice())?;
                    }
                }
            }
            // Every loaded version is taken and in the history (stores
            // before 0.2 kept no versions, before 0.3 no history).
            let (mut history, mut history_records) = (txn.open_table(HISTORY)?, txn.open_table(HISTORY_RECORDS)?);
            for (node_type, bundle) in &loaded.catalog {
                let key = version_key(node_type, &bundle.version);
                if versions.get(key.as_slice())?.is_none() {
                    versions.insert(key.as_slice(), bundle.content_hash.as_bytes())?;
                }
                if history::entries(&history, node_type)?.is_empty() {
                    history::append(&mut history, &mut history_records, node_type, bundle, &record::encode(bundle), None, history_limit)?;
                }
            }
        }
        txn.delete_table(LEGACY_BUNDLES)?;
        txn.commit()?;
        Ok::<(), redb::Error>(())
    })();
    if let Err(error) = fixed {
        tracing::error!(%error, "cannot record the load's fixes (quarantine, upgrade); serving what loaded, will retry at the next start");
    }
    Ok(loaded)
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

    #[test]
    fn a_version_names_one_content_forever() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.put_blocking(sidecar(), bundle("v1", "a")).unwrap().changed);
        assert!(store.put_blocking(sidecar(), bundle("v2", "b")).unwrap().changed);
        let reused = store.put_blocking(sidecar(), bundle("v1", "c"));
        assert!(matches!(reused, Err(StoreError::Conflict { .. })), "{:?}", reused.err());
        // Going back to v1 with its own content is a rollback, not a conflict.
        assert!(store.put_blocking(sidecar(), bundle("v1", "a")).unwrap().changed);
        assert!(store.delete_blocking(sidecar()).unwrap().changed);
        drop(store);

        let store = Store::open(dir.path()).unwrap();
        assert!(matches!(store.put_blocking(sidecar(), bundle("v2", "c")), Err(StoreError::Conflict { .. })), "across delete and restart");
        assert_eq!(store.catalog().len(), 0);
    }

    #[test]
    fn an_empty_or_missing_data_file_beside_the_marker_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.put_blocking(sidecar(), bundle("v1", "a")).unwrap();
        drop(store);
        let data = dir.path().join(DATA_FILE);
        std::fs::File::create(&data).unwrap(); // truncated to 0 bytes
        let error = Store::open(dir.path()).err().expect("refused").to_string();
        assert!(error.contains(&data.display().to_string()) && error.contains("empty"), "{error}");
        std::fs::remove_file(&data).unwrap();
        let error = Store::open(dir.path()).err().expect("refused").to_string();
        assert!(error.contains("missing"), "{error}");
        // A directory that never held a store starts empty.
        let fresh = tempfile::tempdir().unwrap();
        assert!(Store::open(fresh.path()).unwrap().catalog().is_empty());
    }

    fn cluster_names(bundle: &StoredBundle) -> Vec<&str> {
        bundle.resources(crate::resource_type::ResourceType::Cluster).map(|r| r.name.as_str()).collect()
    }

    #[tokio::test]
    async fn history_keeps_the_last_versions_and_a_rollback_restores_one_under_a_new_version() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with(dir.path(), 3).unwrap();
        for (version, cluster) in [("v1", "a"), ("v2", "b"), ("v3", "c"), ("v4", "d")] {
            let written = store.put(sidecar(), bundle(version, cluster)).await.unwrap();
            assert!(written.changed);
        }
        let listed: Vec<String> = store.history(sidecar()).await.unwrap().into_iter().map(|v| v.version).collect();
        assert_eq!(listed, ["v2", "v3", "v4"], "bounded by the limit, oldest dropped");
        assert!(store.version(sidecar(), "v1".into()).await.unwrap().is_none());
        assert_eq!(cluster_names(&store.version(sidecar(), "v2".into()).await.unwrap().unwrap()), ["b"]);

        let written = store.rollback(sidecar(), "v2".into(), None).await.unwrap();
        let current = written.current.unwrap();
        assert_eq!((current.version.as_str(), cluster_names(&current)), ("v2-rollback-5", vec!["b"]));
        assert_eq!(written.previous.unwrap().version, "v4");
        assert_eq!(store.catalog()[&sidecar()].version, "v2-rollback-5", "published");
        let unknown = store.rollback(sidecar(), "v1".into(), None).await;
        assert!(matches!(unknown, Err(StoreError::UnknownVersion { .. })), "{unknown:?}");
        // A named new version must be new too.
        let reused = store.rollback(sidecar(), "v3".into(), Some("v4".into())).await;
        assert!(matches!(reused, Err(StoreError::Conflict { .. })), "{reused:?}");

        // History outlives a delete and a restart; a deleted node type can be rolled back.
        assert!(store.delete(sidecar()).await.unwrap().changed);
        drop(store);
        let store = Store::open_with(dir.path(), 3).unwrap();
        let last = store.history(sidecar()).await.unwrap().pop().unwrap();
        assert_eq!((last.version.as_str(), last.rollback_of.as_deref(), last.counts.clusters), ("v2-rollback-5", Some("v2"), 1));
        store.rollback(sidecar(), "v4".into(), Some("v6".into())).await.unwrap();
        assert_eq!(cluster_names(&store.catalog()[&sidecar()]), ["d"]);
    }
}
