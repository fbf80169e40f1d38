//! The embedded backend (the default): a redb database, `sxds.redb` in the
//! data directory. An embedded, crash-safe B-tree with ACID transactions, so
//! a PUT answered 200 has been fsynced and survives kill -9.
//!
//! Every decision a write makes (no-op, 409, 412, unknown version) is taken
//! inside its write transaction, from what the transaction reads: the
//! `current` table holds each node type's version and content hash, so the
//! check does not decode the whole record. redb allows one write
//! transaction at a time; the mutex here only owns the database handle
//! (dropped after an I/O error) and keeps the feed in commit order.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
};

use ::redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableError, WriteTransaction};

use super::{
    history::{self, HISTORY, HISTORY_RECORDS},
    read_back, record, Catalog, Decided, IfMatch, Loaded, Quarantined, StoreError, Version, Written,
};
use crate::{bundle::MAX_VERSION_LEN, node_type::NodeType, schema::StoredBundle};

/// Node type → checksummed record (see [`record`]).
const RECORDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("records");
/// Node type → version, NUL, content hash of its record: what a write
/// compares with, without decoding the record.
const CURRENT: TableDefinition<&[u8], &[u8]> = TableDefinition::new("current");
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

pub(super) struct Redb {
    path: PathBuf,
    // Owns the database handle, which an I/O error discards, and is held
    // until the change is published, so the feed follows commit order. A
    // std Mutex: only taken on blocking threads, never across an await.
    db: Mutex<Option<Database>>,
    history_limit: usize,
}

impl Redb {
    /// Opens (or creates) the store in `data_dir` and loads every bundle.
    pub(super) fn open(data_dir: &Path, history_limit: usize) -> Result<(Self, Loaded), StoreError> {
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
        Ok((Self { path, db: Mutex::new(Some(db)), history_limit }, loaded))
    }

    /// Stores `bundle` unless the transaction finds it already current
    /// (unchanged), its version taken by other content (409) or `if_match`
    /// unmet (412). `publish` runs before the next writer may start.
    pub(super) fn put(&self, node_type: &NodeType, bundle: StoredBundle, if_match: &IfMatch, publish: impl FnOnce(Decided) -> Written) -> Result<Written, StoreError> {
        let record = record::encode(&bundle);
        let bundle = read_back(&record)?;
        let mut db = self.lock();
        let decided = self.write(&mut db, |txn| {
            let current = current(txn, node_type)?;
            if let Err(error) = if_match.check(node_type, current.as_ref().map(|(v, _)| v.as_str())) {
                return Ok(Err(error));
            }
            if current.is_some_and(|(version, hash)| version == bundle.version && hash == bundle.content_hash) {
                return Ok(Ok(Decided::Unchanged));
            }
            Ok(self.commit(txn, node_type, &bundle, &record, None)?.map(|()| Decided::Stored(bundle)))
        })?;
        Ok(publish(decided))
    }

    /// Makes the content of `target` current again under a new version.
    pub(super) fn rollback(
        &self,
        node_type: &NodeType,
        target: &str,
        new_version: Option<String>,
        if_match: &IfMatch,
        publish: impl FnOnce(Decided) -> Written,
    ) -> Result<Written, StoreError> {
        let mut db = self.lock();
        let decided = self.write(&mut db, |txn| {
            let current = current(txn, node_type)?;
            if let Err(error) = if_match.check(node_type, current.as_ref().map(|(v, _)| v.as_str())) {
                return Ok(Err(error));
            }
            let history = txn.open_table(HISTORY)?;
            let Some((key, _)) = history::find(&history, node_type, target)? else {
                return Ok(Err(StoreError::UnknownVersion { node_type: node_type.clone(), version: target.to_owned() }));
            };
            let raw = txn.open_table(HISTORY_RECORDS)?.get(key.as_slice())?.map(|v| v.value().to_vec());
            let mut bundle = match raw.as_deref().map(record::decode) {
                Some(Ok(record::Decoded::Current(bundle) | record::Decoded::Legacy(bundle))) => bundle,
                _ => return Ok(Err(StoreError::Unavailable(format!("the stored record of {node_type} {target:?} does not read back")))),
            };
            let seq = history::next_seq(&history, node_type)?;
            drop(history);
            bundle.version = new_version.clone().unwrap_or_else(|| history::rollback_version(target, seq, MAX_VERSION_LEN));
            let record = record::encode(&bundle);
            let bundle = match read_back(&record) {
                Ok(bundle) => bundle,
                Err(error) => return Ok(Err(error)),
            };
            Ok(self.commit(txn, node_type, &bundle, &record, Some(target))?.map(|()| Decided::Stored(bundle)))
        })?;
        Ok(publish(decided))
    }

    /// Removes the bundle of `node_type` and any quarantined record of it;
    /// unchanged when the transaction finds neither.
    pub(super) fn delete(&self, node_type: &NodeType, if_match: &IfMatch, publish: impl FnOnce(Decided) -> Written) -> Result<Written, StoreError> {
        let key = node_type.as_str().as_bytes();
        let mut db = self.lock();
        let decided = self.write(&mut db, |txn| {
            let current = current(txn, node_type)?;
            if let Err(error) = if_match.check(node_type, current.as_ref().map(|(v, _)| v.as_str())) {
                return Ok(Err(error));
            }
            let removed = txn.open_table(RECORDS)?.remove(key)?.is_some();
            let removed = txn.open_table(QUARANTINE)?.remove(key)?.is_some() || removed;
            txn.open_table(CURRENT)?.remove(key)?;
            Ok(Ok(if removed { Decided::Removed } else { Decided::Unchanged }))
        })?;
        Ok(publish(decided))
    }

    /// Every record of the aux table `table` (see `super::Aux`), undecoded.
    pub(super) fn aux(&self, table: &'static str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.read(|txn| {
            let table = match txn.open_table(TableDefinition::<&str, &[u8]>::new(table)) {
                Ok(table) => table,
                Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(error) => return Err(error.into()),
            };
            let mut kept = Vec::new();
            for entry in table.iter()? {
                let (key, value) = entry?;
                kept.push((key.value().to_owned(), value.value().to_vec()));
            }
            Ok(kept)
        })
    }

    /// Keeps (or, given `None`, forgets) one record of the aux table `table`.
    pub(super) fn save_aux(&self, table: &'static str, key: &str, value: Option<&[u8]>) -> Result<(), StoreError> {
        let mut db = self.lock();
        self.write(&mut db, |txn| {
            let mut table = txn.open_table(TableDefinition::<&str, &[u8]>::new(table))?;
            match value {
                Some(value) => drop(table.insert(key, value)?),
                None => drop(table.remove(key)?),
            }
            // "Stored" only so that `write` commits it; nothing is published.
            Ok(Ok(Decided::Stored(StoredBundle::default())))
        })
        .map(drop)
    }

    /// A small write, to learn whether writes work again.
    pub(super) fn probe(&self) -> Result<(), StoreError> {
        let mut db = self.lock();
        self.write(&mut db, |txn| {
            txn.open_table(META)?.insert("probe", super::now_ms().to_le_bytes().as_slice())?;
            // "Stored" only so that `write` commits it; nothing is published.
            Ok(Ok(Decided::Stored(StoredBundle::default())))
        })
        .map(drop)
    }

    /// Writes `bundle` (encoded as `record`) as the current one of
    /// `node_type` and appends it to the history, unless its version was
    /// stored before with other content.
    fn commit(&self, txn: &WriteTransaction, node_type: &NodeType, bundle: &StoredBundle, record: &[u8], rollback_of: Option<&str>) -> Result<Result<(), StoreError>, ::redb::Error> {
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
        txn.open_table(CURRENT)?.insert(key, current_value(bundle).as_slice())?;
        txn.open_table(QUARANTINE)?.remove(key)?;
        let (mut history, mut records) = (txn.open_table(HISTORY)?, txn.open_table(HISTORY_RECORDS)?);
        history::append(&mut history, &mut records, node_type, bundle, record, rollback_of, self.history_limit)?;
        Ok(Ok(()))
    }

    /// Runs `f` in a write transaction, committed when `f` decided a change
    /// (aborted on a refusal or on nothing to do). An I/O error drops the
    /// database handle: redb refuses every later write on a handle that met
    /// one, so the next write reopens the file.
    fn write(&self, db: &mut Option<Database>, f: impl FnOnce(&WriteTransaction) -> Result<Result<Decided, StoreError>, ::redb::Error>) -> Result<Decided, StoreError> {
        let result = (|| {
            let handle = match db {
                Some(handle) => handle,
                None => {
                    let handle = db.insert(open_database(&self.path)?);
                    tracing::info!(path = %self.path.display(), "store reopened");
                    handle
                }
            };
            let txn = handle.begin_write()?;
            let decided = f(&txn)?;
            if matches!(decided, Ok(Decided::Stored(_) | Decided::Removed)) {
                txn.commit()?;
            } else {
                txn.abort()?;
            }
            Ok::<_, ::redb::Error>(decided)
        })();
        result.unwrap_or_else(|error| {
            *db = None;
            Err(StoreError::Unavailable(error.to_string()))
        })
    }

    /// The versions of `node_type` still kept, oldest first.
    pub(super) fn history(&self, node_type: &NodeType) -> Result<Vec<Version>, StoreError> {
        self.read(|txn| {
            let table = match txn.open_table(HISTORY) {
                Ok(table) => table,
                Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(e.into()),
            };
            Ok(history::entries(&table, node_type)?.into_iter().map(|(_, entry)| entry.into()).collect())
        })
    }

    /// The bundle `node_type` had at `version`, if its history still has it.
    pub(super) fn version(&self, node_type: &NodeType, version: &str) -> Result<Option<StoredBundle>, StoreError> {
        self.read(|txn| {
            let table = match txn.open_table(HISTORY) {
                Ok(table) => table,
                Err(TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            let Some((key, _)) = history::find(&table, node_type, version)? else { return Ok(None) };
            let raw = txn.open_table(HISTORY_RECORDS)?.get(key.as_slice())?.map(|v| v.value().to_vec());
            Ok(raw.and_then(|raw| match record::decode(&raw) {
                Ok(record::Decoded::Current(bundle) | record::Decoded::Legacy(bundle)) => Some(bundle),
                Err(_) => None,
            }))
        })
    }

    /// Runs `f` in a read transaction (the lock is released once it began).
    fn read<T>(&self, f: impl FnOnce(&::redb::ReadTransaction) -> Result<T, ::redb::Error>) -> Result<T, StoreError> {
        let unavailable = |e: &dyn std::fmt::Display| StoreError::Unavailable(e.to_string());
        let mut db = self.lock();
        let handle = match &mut *db {
            Some(handle) => handle,
            None => db.insert(open_database(&self.path).map_err(|e| unavailable(&e))?),
        };
        let txn = handle.begin_read().map_err(|e| unavailable(&e))?;
        drop(db);
        f(&txn).map_err(|e| unavailable(&e))
    }

    fn lock(&self) -> MutexGuard<'_, Option<Database>> {
        self.db.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The version and content hash `node_type` has now, as the transaction
/// sees it. A record without its `current` row (written before the table
/// existed, when the load could not add it) is decoded instead.
fn current(txn: &WriteTransaction, node_type: &NodeType) -> Result<Option<(String, String)>, ::redb::Error> {
    let key = node_type.as_str().as_bytes();
    if let Some(value) = txn.open_table(CURRENT)?.get(key)? {
        let text = String::from_utf8_lossy(value.value());
        if let Some((version, hash)) = text.split_once('\0') {
            return Ok(Some((version.to_owned(), hash.to_owned())));
        }
    }
    let raw = txn.open_table(RECORDS)?.get(key)?.map(|v| v.value().to_vec());
    Ok(raw.and_then(|raw| match record::decode(&raw) {
        Ok(record::Decoded::Current(bundle) | record::Decoded::Legacy(bundle)) => Some((bundle.version, bundle.content_hash)),
        Err(_) => None,
    }))
}

fn current_value(bundle: &StoredBundle) -> Vec<u8> {
    [bundle.version.as_bytes(), b"\0", bundle.content_hash.as_bytes()].concat()
}

fn open_database(path: &Path) -> Result<Database, ::redb::DatabaseError> {
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

fn version_key(node_type: &NodeType, version: &str) -> Vec<u8> {
    [node_type.as_str().as_bytes(), b"\0", version.as_bytes()].concat()
}

/// What a record on disk needs done at load.
enum Fix {
    Quarantine { key: Vec<u8>, raw: Vec<u8> },
    Rewrite { node_type: NodeType, bundle: Arc<StoredBundle> },
}

/// Reads every record. Records that fail are quarantined, pre-0.2 records
/// are rewritten in the current form; if those fixes cannot be written (a
/// full disk), the store still starts and retries them at the next start.
fn load(db: &Database, history_limit: usize) -> Result<Loaded, ::redb::Error> {
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
            let (mut records, mut quarantine, mut versions, mut current) =
                (txn.open_table(RECORDS)?, txn.open_table(QUARANTINE)?, txn.open_table(VERSIONS)?, txn.open_table(CURRENT)?);
            txn.open_table(META)?;
            for fix in &fixes {
                match fix {
                    Fix::Quarantine { key, raw } => {
                        quarantine.insert(key.as_slice(), raw.as_slice())?;
                        records.remove(key.as_slice())?;
                        current.remove(key.as_slice())?;
                    }
                    Fix::Rewrite { node_type, bundle } => {
                        records.insert(node_type.as_str().as_bytes(), record::encode(bundle).as_slice())?;
                    }
                }
            }
            // Every loaded version is taken, current and in the history
            // (stores before 0.2 kept no versions, before 0.3 no history).
            let (mut history, mut history_records) = (txn.open_table(HISTORY)?, txn.open_table(HISTORY_RECORDS)?);
            for (node_type, bundle) in &loaded.catalog {
                let key = version_key(node_type, &bundle.version);
                if versions.get(key.as_slice())?.is_none() {
                    versions.insert(key.as_slice(), bundle.content_hash.as_bytes())?;
                }
                let name = node_type.as_str().as_bytes();
                if current.get(name)?.is_none_or(|v| v.value() != current_value(bundle).as_slice()) {
                    current.insert(name, current_value(bundle).as_slice())?;
                }
                if history::entries(&history, node_type)?.is_empty() {
                    history::append(&mut history, &mut history_records, node_type, bundle, &record::encode(bundle), None, history_limit)?;
                }
            }
        }
        txn.delete_table(LEGACY_BUNDLES)?;
        txn.commit()?;
        Ok::<(), ::redb::Error>(())
    })();
    if let Err(error) = fixed {
        tracing::error!(%error, "cannot record the load's fixes (quarantine, upgrade); serving what loaded, will retry at the next start");
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_or_missing_data_file_beside_the_marker_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        drop(Redb::open(dir.path(), 3).unwrap());
        let data = dir.path().join(DATA_FILE);
        std::fs::File::create(&data).unwrap(); // truncated to 0 bytes
        let error = Redb::open(dir.path(), 3).err().expect("refused").to_string();
        assert!(error.contains(&data.display().to_string()) && error.contains("empty"), "{error}");
        std::fs::remove_file(&data).unwrap();
        let error = Redb::open(dir.path(), 3).err().expect("refused").to_string();
        assert!(error.contains("missing"), "{error}");
        // A directory that never held a store starts empty.
        let fresh = tempfile::tempdir().unwrap();
        assert!(Redb::open(fresh.path(), 3).unwrap().1.catalog.is_empty());
    }
}
