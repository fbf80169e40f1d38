//! Collecting the chunks no manifest names any more (see the module doc of
//! [`super`]).

use std::{collections::HashSet, time::Duration};

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
use tokio_util::sync::CancellationToken;

use super::{key, Etcd, Manifest};
use crate::store::{Backend, Store, StoreError};

impl Store {
    /// Deletes the etcd chunks no manifest names; returns how many (0 on
    /// the embedded store, whose records are deleted with their rows).
    pub async fn collect_chunks(&self) -> Result<usize, StoreError> {
        match &self.0.backend {
            Backend::Etcd(etcd) => etcd.collect().await,
            Backend::Redb(_) => Ok(0),
        }
    }

    pub(super) async fn collect_every(self, interval: Duration, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = shutdown.cancelled() => return,
            }
            if let Err(error) = self.collect_chunks().await {
                tracing::debug!(%error, "chunk collection skipped");
            }
        }
    }
}

impl Etcd {
    /// Deletes the chunks that no manifest in `current/` or `history/`
    /// names (left by refused or failed writes, and by versions that left
    /// the history); returns how many. Safe beside writers on any replica:
    /// each delete commits only if no manifest was written since the
    /// listing, and a write compares that its chunks still exist.
    pub(super) async fn collect(&self) -> Result<usize, StoreError> {
        let unavailable = |e| self.unavailable(e);
        let (current, history, chunks) = (key(&["current", ""]), key(&["history", ""]), key(&["chunks", ""]));
        let listed = self.get(current.as_str(), Some(GetOptions::new().with_prefix())).await.map_err(unavailable)?;
        let revision = listed.header().map_or(0, |h| h.revision());
        let at = |options: GetOptions| Some(options.with_prefix().with_revision(revision));
        let kept = self.get(history.as_str(), at(GetOptions::new())).await.map_err(unavailable)?;
        let mut named = HashSet::new();
        for kv in listed.kvs().iter().chain(kept.kvs()) {
            // A manifest that does not parse might name any chunk: collect nothing.
            let Ok(manifest) = serde_json::from_slice::<Manifest>(kv.value()) else { return Ok(0) };
            named.extend(manifest.chunks);
        }
        let stored = self.get(chunks.as_str(), at(GetOptions::new().with_keys_only())).await.map_err(unavailable)?;
        let unnamed: Vec<Vec<u8>> = stored
            .kvs()
            .iter()
            .filter(|kv| kv.key().strip_prefix(chunks.as_bytes()).is_some_and(|hash| !named.contains(String::from_utf8_lossy(hash).as_ref())))
            .map(|kv| kv.key().to_vec())
            .collect();
        let mut deleted = 0;
        for batch in unnamed.chunks(100) {
            let unchanged = [
                Compare::mod_revision(current.as_str(), CompareOp::Less, revision + 1).with_prefix(),
                Compare::mod_revision(history.as_str(), CompareOp::Less, revision + 1).with_prefix(),
            ];
            let deletes: Vec<TxnOp> = batch.iter().map(|k| TxnOp::delete(k.clone(), None)).collect();
            let response = self.txn(Txn::new().when(unchanged).and_then(deletes)).await.map_err(unavailable)?;
            if !response.succeeded() {
                break; // a manifest was written meanwhile: the next round decides again
            }
            deleted += batch.len();
        }
        if deleted > 0 {
            tracing::info!(deleted, "unreferenced etcd chunks collected");
        }
        Ok(deleted)
    }
}
