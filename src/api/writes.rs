//! The record of accepted writes: one log line each (who, node type, old
//! and new version, resources added/changed/removed) and the last
//! [`KEPT`] of them in memory for `GET /writes` and the status page.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use serde::Serialize;

use super::auth::Who;
use crate::{bundle::Changes, node_type::NodeType, store::Written};

/// How many writes `GET /writes` remembers.
pub const KEPT: usize = 100;

/// One accepted write.
#[derive(Debug, Clone, Serialize)]
pub struct WriteRecord {
    pub at_unix_ms: u128,
    pub who: String,
    /// `put`, `delete` or `rollback`.
    pub action: &'static str,
    pub node_type: String,
    pub old_version: Option<String>,
    pub new_version: Option<String>,
    /// All zero for a PUT of what was already stored.
    #[serde(flatten)]
    pub changes: Changes,
}

/// Recent writes, newest last. Cheap to clone.
#[derive(Clone, Default)]
pub struct WriteLog(Arc<Mutex<VecDeque<WriteRecord>>>);

impl WriteLog {
    /// Logs an accepted write and remembers it.
    pub fn record(&self, who: &Who, action: &'static str, node_type: &NodeType, written: &Written) {
        let changes = if written.changed { Changes::between(written.previous.as_deref(), written.current.as_deref()) } else { Changes::default() };
        let old_version = written.previous.as_ref().map(|b| b.version.clone());
        let new_version = written.current.as_ref().map(|b| b.version.clone());
        tracing::info!(
            who = %who, action, %node_type, old_version, new_version, changed = written.changed,
            added = changes.added, changed_resources = changes.changed, removed = changes.removed,
            "write accepted"
        );
        let record = WriteRecord {
            at_unix_ms: crate::xds::status::now_ms(),
            who: who.to_string(),
            action,
            node_type: node_type.to_string(),
            old_version,
            new_version,
            changes,
        };
        let mut writes = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if writes.len() == KEPT {
            writes.pop_front();
        }
        writes.push_back(record);
    }

    /// The remembered writes, newest first.
    pub fn recent(&self) -> Vec<WriteRecord> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).iter().rev().cloned().collect()
    }
}
