//! Every accepted version of a node type, newest last, bounded by
//! `--history`: what `GET /resources/{node_type}/history` lists and what a
//! rollback restores.
//!
//! Two tables share one key, node type, NUL, sequence number (big-endian,
//! so a node type's entries are one ordered range): `history` holds a small
//! [`HistoryEntry`] (version, time, counts), `history_records` the whole
//! checksummed record. Listing reads only the small one.

use prost::Message;
use redb::{ReadableTable, Table, TableDefinition};
use serde::Serialize;

use crate::{
    bundle::Counts,
    node_type::NodeType,
    schema::{v1::HistoryEntry, StoredBundle},
};

pub(super) const HISTORY: TableDefinition<&[u8], &[u8]> = TableDefinition::new("history");
pub(super) const HISTORY_RECORDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("history_records");

/// How many versions a node type keeps unless `--history` says otherwise.
pub const DEFAULT_LIMIT: usize = 50;

/// One version, as `GET /resources/{node_type}/history` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Version {
    pub version: String,
    pub at_unix_ms: u64,
    #[serde(flatten)]
    pub counts: Counts,
    /// The version a rollback restored.
    pub rollback_of: Option<String>,
}

impl From<HistoryEntry> for Version {
    fn from(entry: HistoryEntry) -> Self {
        let legacy = [("listeners", entry.listeners), ("clusters", entry.clusters), ("routes", entry.routes), ("endpoints", entry.endpoints)];
        let count = |name: &str| match entry.counts.get(name) {
            Some(n) => *n as usize,
            None if entry.counts.is_empty() => legacy.iter().find(|(key, _)| *key == name).map_or(0, |(_, n)| *n as usize),
            None => 0,
        };
        Self {
            counts: Counts::from_fn(|ty| count(ty.name())),
            rollback_of: Some(entry.rollback_of).filter(|v| !v.is_empty()),
            version: entry.version,
            at_unix_ms: entry.at_unix_ms,
        }
    }
}

fn prefix(node_type: &NodeType) -> Vec<u8> {
    [node_type.as_str().as_bytes(), b"\0"].concat()
}

fn key(node_type: &NodeType, seq: u64) -> Vec<u8> {
    [prefix(node_type).as_slice(), &seq.to_be_bytes()].concat()
}

/// The keys of one node type's entries: `prefix` up to (not including) the
/// prefix with NUL raised to 1.
fn range(node_type: &NodeType) -> (Vec<u8>, Vec<u8>) {
    let start = prefix(node_type);
    let mut end = start.clone();
    if let Some(last) = end.last_mut() {
        *last = 1;
    }
    (start, end)
}

/// The entries of `node_type`, oldest first, each with its key.
pub(super) fn entries(table: &impl ReadableTable<&'static [u8], &'static [u8]>, node_type: &NodeType) -> Result<Vec<(Vec<u8>, HistoryEntry)>, redb::Error> {
    let (start, end) = range(node_type);
    let mut found = Vec::new();
    for entry in table.range(start.as_slice()..end.as_slice())? {
        let (key, value) = entry?;
        // An entry that does not decode is skipped: history is for people,
        // and one bad entry must not hide the others.
        if let Ok(decoded) = HistoryEntry::decode(value.value()) {
            found.push((key.value().to_vec(), decoded));
        }
    }
    Ok(found)
}

/// Appends `bundle` (encoded as `record`) to the history of `node_type`
/// and drops the oldest entries beyond `limit`.
pub(super) fn append(
    history: &mut Table<&'static [u8], &'static [u8]>,
    records: &mut Table<&'static [u8], &'static [u8]>,
    node_type: &NodeType,
    bundle: &StoredBundle,
    record: &[u8],
    rollback_of: Option<&str>,
    limit: usize,
) -> Result<(), redb::Error> {
    let existing = entries(history, node_type)?;
    let next = existing.last().map_or(1, |(key, _)| seq_of(key) + 1);
    let counts = crate::bundle::counts(bundle);
    let entry = HistoryEntry {
        version: bundle.version.clone(),
        at_unix_ms: super::now_ms() as u64,
        rollback_of: rollback_of.unwrap_or_default().to_owned(),
        counts: counts.iter().map(|(ty, n)| (ty.name().to_owned(), u32::try_from(*n).unwrap_or(u32::MAX))).collect(),
        ..HistoryEntry::default()
    };
    let new_key = key(node_type, next);
    history.insert(new_key.as_slice(), entry.encode_to_vec().as_slice())?;
    records.insert(new_key.as_slice(), record)?;
    let excess = (existing.len() + 1).saturating_sub(limit.max(1));
    for (old_key, _) in existing.iter().take(excess) {
        history.remove(old_key.as_slice())?;
        records.remove(old_key.as_slice())?;
    }
    Ok(())
}

/// The key of the newest entry of `node_type` with `version`.
pub(super) fn find(table: &impl ReadableTable<&'static [u8], &'static [u8]>, node_type: &NodeType, version: &str) -> Result<Option<(Vec<u8>, HistoryEntry)>, redb::Error> {
    Ok(entries(table, node_type)?.into_iter().rev().find(|(_, entry)| entry.version == version))
}

/// The sequence number at the end of a key.
fn seq_of(key: &[u8]) -> u64 {
    let tail: [u8; 8] = key.get(key.len().saturating_sub(8)..).and_then(|t| t.try_into().ok()).unwrap_or_default();
    u64::from_be_bytes(tail)
}

/// The version a rollback to `target` is served under when the caller
/// names none: new (Envoy compares versions, R15) and telling where it came
/// from. `seq` is unique per node type; the target is shortened to keep the
/// whole within the version length limit.
pub(super) fn rollback_version(target: &str, seq: u64, max_len: usize) -> String {
    let suffix = format!("-rollback-{seq}");
    let room = max_len.saturating_sub(suffix.len());
    let head: String = target.chars().take(room).collect();
    format!("{head}{suffix}")
}

/// The sequence number the next entry of `node_type` will get.
pub(super) fn next_seq(table: &impl ReadableTable<&'static [u8], &'static [u8]>, node_type: &NodeType) -> Result<u64, redb::Error> {
    Ok(entries(table, node_type)?.last().map_or(1, |(key, _)| seq_of(key) + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_one_node_type_sort_by_sequence_and_stay_apart_from_others() {
        let (a, ab) = (NodeType::parse("a").unwrap(), NodeType::parse("ab").unwrap());
        assert!(key(&a, 2) < key(&a, 10) && key(&a, 255) < key(&a, 256));
        let (start, end) = range(&a);
        assert!(key(&a, u64::MAX).as_slice() < end.as_slice() && key(&a, 1).as_slice() >= start.as_slice());
        assert!(!(start.as_slice()..end.as_slice()).contains(&key(&ab, 1).as_slice()));
        assert_eq!(seq_of(&key(&a, 7_000_000_001)), 7_000_000_001);
    }

    #[test]
    fn a_rollback_version_is_new_and_within_the_limit() {
        assert_eq!(rollback_version("v1", 7, 128), "v1-rollback-7");
        let long = "x".repeat(128);
        let version = rollback_version(&long, 12, 128);
        assert_eq!(version.len(), 128);
        assert!(version.ends_with("-rollback-12"));
    }
}
