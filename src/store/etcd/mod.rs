//! The etcd backend (`--store etcd://host:port[,host:port...]`): one etcd
//! cluster shared by every sxds replica, so a PUT on any replica reaches
//! the Envoys of all of them.
//!
//! Keys, under `/sxds/v1/`:
//! - `chunks/<sha256>`: a piece (at most 1 MiB) of a checksummed
//!   [`record`], named by its own hash. Written before anything points at
//!   it, each in its own small request, so a 10 MB bundle passes etcd's
//!   default limits (1.5 MiB a request, 128 operations a transaction).
//! - `current/<node_type>`: a small JSON [`Manifest`]: version, content
//!   hash, the chunk hashes in order, time, counts, what a rollback restored.
//! - `versions/<node_type>/<version>`: the content hash a version names,
//!   forever (across deletes).
//! - `history/<node_type>/<seq>`: the manifest of every accepted version,
//!   the last `--history` kept.
//!
//! A write reads the node type's current manifest, its version key and its
//! history keys in one read-only transaction (one revision), decides there
//! (no-op, 409, 412, unknown version), writes the chunks it needs, then
//! commits ONE small transaction that compares what it read (the current
//! key's mod revision or absence, the version key, the new history key's
//! absence) and puts manifest, version and history entry. If another
//! writer got in between, the compare fails and the write decides again
//! from the new state; so two replicas never both win, and readers never
//! see half a bundle (the manifest switches only once every chunk is there).
//!
//! Every replica lists `current/` at start ([`Store::open_etcd`] returns
//! only after the whole state is loaded, so nothing is served before) and
//! then watches `current/` from the listed revision. A change, local or
//! from another replica, is published on the same change feed as the
//! embedded store's, decoded from the very record bytes in etcd: identical
//! content gives identical versions and identical xDS bytes everywhere.
//!
//! sxds keeps a client per etcd member; a request that cannot reach one
//! goes to the next, and later ones stay where the last answer came from.
//! While etcd is unreachable, replicas keep serving the last state; writes
//! answer 503 and change nothing (at worst a chunk no manifest names); the
//! watch retries with back-off and goes on from the last revision it saw,
//! or lists again from scratch if that revision was compacted away.
//!
//! Chunks no manifest names (from a refused or failed write, or from a
//! version that left the history) are deleted by [`Store::collect_chunks`],
//! which every replica runs every [`COLLECT_INTERVAL`]: it deletes only if
//! no manifest was written since it listed them (a range compare), and a
//! write's compare-and-swap checks its chunks still exist, so a collector
//! and a writer on different replicas cannot leave a manifest without its
//! chunks.

mod collect;
mod watch;

use std::{
    collections::{BTreeMap, HashMap},
    future::Future,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, GetResponse, Identity, TlsOptions, Txn, TxnOp, TxnOpResponse, TxnResponse, WatchOptions, WatchStream,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::{history::rollback_version, read_back, record, Backend, Catalog, Decided, IfMatch, Loaded, Quarantined, Store, StoreError, Version, Written};
use crate::{
    bundle::{Counts, MAX_VERSION_LEN},
    node_type::NodeType,
    schema::StoredBundle,
};

const PREFIX: &str = "/sxds/v1/";
/// Largest piece of a record in one key: well under etcd's default 1.5 MiB
/// request limit.
pub const CHUNK_BYTES: usize = 1 << 20;
/// How often a write decides again after another writer changed the node
/// type between its read and its compare-and-swap.
const ATTEMPTS: usize = 16;
/// How long the start waits for etcd before giving up.
const START_WAIT: Duration = Duration::from_secs(30);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How often each replica deletes unreferenced chunks.
pub const COLLECT_INTERVAL: Duration = Duration::from_secs(300);

/// How to reach etcd.
#[derive(Debug, Clone, Default)]
pub struct EtcdConfig {
    /// `host:port` of each member.
    pub endpoints: Vec<String>,
    pub user: Option<(String, String)>,
    /// PEM CA certificate: etcd is reached over TLS.
    pub ca: Option<Vec<u8>>,
    /// PEM client certificate and key, for etcd's `--client-cert-auth`.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    pub history_limit: usize,
}

/// What `current/` and `history/` keys hold: a bundle by its chunks.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Manifest {
    version: String,
    content_hash: String,
    /// SHA-256 (hex) of each piece of the record, in order.
    chunks: Vec<String>,
    /// Length of the whole record.
    bytes: usize,
    at_unix_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rollback_of: Option<String>,
    /// Resources per type, by bundle key, beside the fields above.
    #[serde(flatten)]
    counts: BTreeMap<String, usize>,
}

impl From<Manifest> for Version {
    fn from(m: Manifest) -> Self {
        Self {
            version: m.version,
            at_unix_ms: m.at_unix_ms,
            counts: Counts::from_fn(|ty| m.counts.get(ty.name()).copied().unwrap_or(0)),
            rollback_of: m.rollback_of,
        }
    }
}

/// Why a manifest's bundle cannot be read.
#[derive(Debug, thiserror::Error)]
enum Unreadable {
    /// etcd did not answer: try again later.
    #[error("etcd: {0}")]
    Etcd(etcd_client::Error),
    /// The stored data is wrong (a missing or altered chunk, a bad record).
    #[error("{0}")]
    Broken(String),
}

pub(super) struct Etcd {
    /// One client per member. A request goes to the member that answered
    /// last and moves on to the next when one cannot be reached: a dead
    /// member costs one refused connection, not a share of every request.
    clients: Vec<Client>,
    preferred: AtomicUsize,
    /// For messages: which etcd this is.
    endpoints: String,
    history_limit: usize,
    /// The mod revision of each node type's `current/` key as published
    /// here (a delete's revision too), so a change seen twice (by the write
    /// that made it and by the watch) is published once, and an older one
    /// never replaces a newer one.
    published: Mutex<HashMap<NodeType, i64>>,
}

fn key(parts: &[&str]) -> String {
    let mut key = PREFIX.to_owned();
    key.push_str(&parts.join("/"));
    key
}

fn seq_key(node_type: &NodeType, seq: u64) -> String {
    key(&["history", node_type.as_str(), &format!("{seq:020}")])
}

impl Store {
    /// Connects to etcd, loads every bundle (returning only once all are
    /// loaded) and follows later changes until `shutdown`.
    pub async fn open_etcd(config: EtcdConfig, shutdown: CancellationToken) -> Result<Self, StoreError> {
        let (etcd, loaded, revision) = Etcd::open(config).await?;
        let store = Store::new(Backend::Etcd(etcd), loaded);
        tokio::spawn(store.clone().follow(revision, shutdown.clone()));
        tokio::spawn(store.clone().collect_every(COLLECT_INTERVAL, shutdown));
        Ok(store)
    }
}

impl Etcd {
    /// Connects and lists every bundle, retrying for [`START_WAIT`].
    async fn open(config: EtcdConfig) -> Result<(Self, Loaded, i64), StoreError> {
        let tls = config.ca.is_some() || config.identity.is_some();
        let scheme = if tls { "https" } else { "http" };
        let urls: Vec<String> = config.endpoints.iter().map(|e| format!("{scheme}://{e}")).collect();
        let endpoints = config.endpoints.join(",");
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
            .with_keep_alive_while_idle(true);
        if let Some((user, password)) = &config.user {
            options = options.with_user(user, password);
        }
        if tls {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &config.ca {
                tls = tls.ca_certificate(Certificate::from_pem(ca));
            }
            if let Some((cert, key)) = &config.identity {
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            options = options.with_tls(tls);
        }
        let deadline = tokio::time::Instant::now() + START_WAIT;
        loop {
            let attempt = async {
                let mut clients = Vec::new();
                for url in &urls {
                    // Lazy without a user; with one, a member that is down now is left out.
                    match Client::connect([url], Some(options.clone())).await {
                        Ok(client) => clients.push(client),
                        Err(error) if unreachable(&error) => tracing::warn!(%error, url, "etcd member not reached at start"),
                        // Refused credentials do not get better by waiting.
                        Err(error) => return Err(Unreadable::Broken(format!("{url} refused: {error}"))),
                    }
                }
                if clients.is_empty() {
                    return Err(Unreadable::Etcd(etcd_client::Error::InvalidArgs(format!("no etcd member of {endpoints} answered"))));
                }
                let etcd = Self { clients, preferred: AtomicUsize::new(0), endpoints: endpoints.clone(), history_limit: config.history_limit, published: Mutex::default() };
                let (list, revision) = etcd.list().await?;
                Ok::<_, Unreadable>((etcd, list, revision))
            };
            match attempt.await {
                Ok((etcd, list, revision)) => {
                    let mut loaded = Loaded { catalog: Catalog::new(), quarantined: BTreeMap::new() };
                    let mut published = HashMap::new();
                    for (name, bundle, mod_revision) in list {
                        match (NodeType::parse(&name), bundle) {
                            (Ok(node_type), Ok(bundle)) => {
                                published.insert(node_type.clone(), mod_revision);
                                loaded.catalog.insert(node_type, Arc::new(bundle));
                            }
                            (node_type, bundle) => {
                                let reason = bundle.err().or(node_type.err().map(|e| e.to_string())).unwrap_or_default();
                                tracing::error!(node_type = name, reason, "bundle in etcd cannot be read: quarantined; every other node type is served");
                                loaded.quarantined.insert(name.clone(), Quarantined { node_type: name, reason });
                            }
                        }
                    }
                    tracing::info!(endpoints, revision, node_types = loaded.catalog.len(), "etcd store loaded");
                    *etcd.lock() = published;
                    return Ok((etcd, loaded, revision));
                }
                Err(Unreadable::Broken(reason)) => return Err(StoreError::Open(format!("etcd {endpoints}: {reason}"))),
                Err(Unreadable::Etcd(error)) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!(%error, endpoints, "waiting for etcd before serving");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(Unreadable::Etcd(error)) => return Err(StoreError::Open(format!("cannot load from etcd {endpoints} within {START_WAIT:?}: {error}"))),
            }
        }
    }

    /// Runs `request` on the preferred member, then on each other one
    /// while members cannot be reached.
    async fn on_members<T, F: Future<Output = Result<T, etcd_client::Error>>>(&self, request: impl Fn(Client) -> F) -> Result<T, etcd_client::Error> {
        let first = self.preferred.load(Ordering::Relaxed);
        let mut last = None;
        for n in 0..self.clients.len() {
            let i = (first + n) % self.clients.len();
            match request(self.clients[i].clone()).await {
                Err(error) if unreachable(&error) => last = Some(error),
                answered => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return answered;
                }
            }
        }
        Err(last.unwrap_or_else(|| etcd_client::Error::InvalidArgs("no etcd member".into())))
    }

    async fn get(&self, key: impl Into<Vec<u8>>, options: Option<GetOptions>) -> Result<GetResponse, etcd_client::Error> {
        let key = key.into();
        self.on_members(|mut client| {
            let (key, options) = (key.clone(), options.clone());
            async move { client.get(key, options).await }
        })
        .await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, etcd_client::Error> {
        self.on_members(|mut client| {
            let txn = txn.clone();
            async move { client.txn(txn).await }
        })
        .await
    }

    async fn watch_stream(&self, key: &str, options: WatchOptions) -> Result<WatchStream, etcd_client::Error> {
        self.on_members(|mut client| {
            let (key, options) = (key.to_owned(), options.clone());
            async move { client.watch(key, Some(options)).await }
        })
        .await
    }

    fn unavailable(&self, error: etcd_client::Error) -> StoreError {
        StoreError::Unavailable(format!("etcd {} cannot be reached: {error}", self.endpoints))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeType, i64>> {
        self.published.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reads the bundle a manifest names: its chunks, checked, joined and
    /// decoded (on a blocking thread: a large record takes milliseconds).
    async fn bundle_of(&self, manifest: &[u8]) -> Result<StoredBundle, Unreadable> {
        let manifest: Manifest = serde_json::from_slice(manifest).map_err(|e| Unreadable::Broken(format!("manifest does not parse: {e}")))?;
        let record = self.record_of(&manifest).await?;
        let decoded = tokio::task::spawn_blocking(move || read_back(&record)).await.map_err(|e| Unreadable::Broken(e.to_string()))?;
        let bundle = decoded.map_err(|e| Unreadable::Broken(e.to_string()))?;
        if bundle.version != manifest.version || bundle.content_hash != manifest.content_hash {
            return Err(Unreadable::Broken(format!("manifest says {:?}, its record {:?}", manifest.version, bundle.version)));
        }
        Ok(bundle)
    }

    async fn record_of(&self, manifest: &Manifest) -> Result<Vec<u8>, Unreadable> {
        let mut record = Vec::with_capacity(manifest.bytes);
        for hash in &manifest.chunks {
            let response = self.get(key(&["chunks", hash]), None).await.map_err(Unreadable::Etcd)?;
            let chunk = response.kvs().first().map(|kv| kv.value()).ok_or_else(|| Unreadable::Broken(format!("chunk {hash} is missing")))?;
            if hex(&Sha256::digest(chunk)) != *hash {
                return Err(Unreadable::Broken(format!("chunk {hash} was altered")));
            }
            record.extend_from_slice(chunk);
        }
        Ok(record)
    }

    /// Writes every chunk of `record` not in etcd yet; returns their hashes.
    async fn write_chunks(&self, record: &[u8]) -> Result<Vec<String>, StoreError> {
        let mut hashes = Vec::new();
        for chunk in record.chunks(CHUNK_BYTES) {
            let hash = hex(&Sha256::digest(chunk));
            let chunk_key = key(&["chunks", &hash]);
            // Content-addressed: a chunk already there is the same bytes.
            let txn = Txn::new().when([Compare::version(chunk_key.as_str(), CompareOp::Equal, 0)]).and_then([TxnOp::put(chunk_key.as_str(), chunk, None)]);
            self.txn(txn).await.map_err(|e| self.unavailable(e))?;
            hashes.push(hash);
        }
        Ok(hashes)
    }

    /// What a write of `node_type` decides from, read at one revision.
    async fn read_state(&self, node_type: &NodeType, version: Option<&str>) -> Result<State, StoreError> {
        let current_key = key(&["current", node_type.as_str()]);
        let history_prefix = key(&["history", node_type.as_str(), ""]);
        let version_key = key(&["versions", node_type.as_str(), version.unwrap_or_default()]);
        let txn = Txn::new().and_then([
            TxnOp::get(current_key.as_str(), None),
            TxnOp::get(history_prefix.as_str(), Some(GetOptions::new().with_prefix().with_keys_only())),
            TxnOp::get(version_key.as_str(), None),
        ]);
        let response = self.txn(txn).await.map_err(|e| self.unavailable(e))?;
        let mut gets = response.op_responses().into_iter().filter_map(|r| match r {
            TxnOpResponse::Get(get) => Some(get),
            _ => None,
        });
        let (Some(current), Some(history), Some(versions)) = (gets.next(), gets.next(), gets.next()) else {
            return Err(StoreError::Unavailable("etcd answered a read with missing parts".into()));
        };
        let current = match current.kvs().first() {
            Some(kv) => {
                let manifest = serde_json::from_slice::<Manifest>(kv.value()).ok();
                Some((manifest, kv.mod_revision()))
            }
            None => None,
        };
        let seqs: Vec<u64> = history
            .kvs()
            .iter()
            .filter_map(|kv| std::str::from_utf8(kv.key().strip_prefix(history_prefix.as_bytes())?).ok()?.parse().ok())
            .collect();
        let version_hash = versions.kvs().first().map(|kv| String::from_utf8_lossy(kv.value()).into_owned());
        Ok(State { current, seqs, version_hash })
    }

    /// Stores what `make` builds (given the next history sequence number)
    /// as the current bundle of `node_type`, through the compare-and-swap
    /// described in the module doc.
    async fn commit(
        &self,
        store: &Store,
        node_type: &NodeType,
        if_match: &IfMatch,
        rollback_of: Option<&str>,
        make: impl Fn(u64) -> Result<(StoredBundle, Vec<u8>), StoreError>,
    ) -> Result<Written, StoreError> {
        for _ in 0..ATTEMPTS {
            // The version to be written depends on the history (a rollback's
            // default name): read it first, then what that version needs.
            let state = self.read_state(node_type, None).await?;
            let next = state.seqs.last().map_or(1, |s| s + 1);
            let (bundle, record) = make(next)?;
            let state = self.read_state(node_type, Some(&bundle.version)).await?;
            if state.seqs.last().map_or(1, |s| s + 1) != next {
                continue;
            }
            let stored = state.current.as_ref().map(|(m, _)| m.as_ref().map_or("", |m| m.version.as_str()));
            if_match.check(node_type, stored)?;
            if let Some((Some(current), _)) = &state.current {
                if current.version == bundle.version && current.content_hash == bundle.content_hash {
                    return Ok(store.publish(node_type, Decided::Unchanged));
                }
            }
            if state.version_hash.as_ref().is_some_and(|hash| *hash != bundle.content_hash) {
                return Err(StoreError::Conflict { node_type: node_type.clone(), version: bundle.version.clone() });
            }
            // Every attempt: a collector may have removed an unreferenced
            // chunk since the last one (the compare below catches that).
            let hashes = self.write_chunks(&record).await?;
            let manifest = Manifest {
                version: bundle.version.clone(),
                content_hash: bundle.content_hash.clone(),
                chunks: hashes.clone(),
                bytes: record.len(),
                at_unix_ms: super::now_ms() as u64,
                rollback_of: rollback_of.map(str::to_owned),
                counts: crate::bundle::counts(&bundle).iter().map(|(ty, n)| (ty.name().to_owned(), *n)).collect(),
            };
            let manifest = serde_json::to_vec(&manifest).map_err(|e| StoreError::Unavailable(e.to_string()))?;
            let current_key = key(&["current", node_type.as_str()]);
            let version_key = key(&["versions", node_type.as_str(), &bundle.version]);
            let history_key = seq_key(node_type, next);
            let chunk_keys: Vec<String> = hashes.iter().map(|hash| key(&["chunks", hash])).collect();
            let mut compares = vec![
                match &state.current {
                    Some((_, mod_revision)) => Compare::mod_revision(current_key.as_str(), CompareOp::Equal, *mod_revision),
                    None => Compare::version(current_key.as_str(), CompareOp::Equal, 0),
                },
                Compare::version(history_key.as_str(), CompareOp::Equal, 0),
            ];
            // The chunks are still there (see `collect`).
            compares.extend(chunk_keys.iter().map(|k| Compare::version(k.as_str(), CompareOp::Greater, 0)));
            compares.push(match &state.version_hash {
                Some(hash) => Compare::value(version_key.as_str(), CompareOp::Equal, hash.as_bytes()),
                None => Compare::version(version_key.as_str(), CompareOp::Equal, 0),
            });
            let mut ops = vec![
                TxnOp::put(current_key.as_str(), manifest.clone(), None),
                TxnOp::put(version_key.as_str(), bundle.content_hash.as_bytes(), None),
                TxnOp::put(history_key.as_str(), manifest, None),
            ];
            // Drop the oldest entries beyond the limit (a handful at most).
            let excess = (state.seqs.len() + 1).saturating_sub(self.history_limit.max(1));
            ops.extend(state.seqs.iter().take(excess.min(100)).map(|seq| TxnOp::delete(seq_key(node_type, *seq), None)));
            let response = self.txn(Txn::new().when(compares).and_then(ops)).await.map_err(|e| self.unavailable(e))?;
            if !response.succeeded() {
                continue; // another writer got in first: decide again
            }
            let revision = response.header().map_or(0, |h| h.revision());
            return Ok(self.applied(store, node_type, revision, Decided::Stored(bundle)));
        }
        Err(StoreError::Unavailable(format!("{node_type} changed {ATTEMPTS} times during one write; try again")))
    }

    /// What a committed local write answers: published now, unless the
    /// watch was quicker.
    fn applied(&self, store: &Store, node_type: &NodeType, revision: i64, decided: Decided) -> Written {
        let previous = store.catalog().get(node_type).cloned();
        self.apply(store, node_type, revision, decided).unwrap_or_else(|| Written { changed: true, previous, current: store.catalog().get(node_type).cloned() })
    }

    pub(super) async fn put(&self, store: &Store, node_type: &NodeType, bundle: StoredBundle, if_match: &IfMatch) -> Result<Written, StoreError> {
        let record = record::encode(&bundle);
        let bundle = read_back(&record)?;
        self.commit(store, node_type, if_match, None, |_| Ok((bundle.clone(), record.clone()))).await
    }

    pub(super) async fn rollback(&self, store: &Store, node_type: &NodeType, target: &str, new_version: Option<String>, if_match: &IfMatch) -> Result<Written, StoreError> {
        let old = self.version(node_type, target).await?;
        let old = old.ok_or_else(|| StoreError::UnknownVersion { node_type: node_type.clone(), version: target.to_owned() })?;
        self.commit(store, node_type, if_match, Some(target), |seq| {
            let mut bundle = old.clone();
            bundle.version = new_version.clone().unwrap_or_else(|| rollback_version(target, seq, MAX_VERSION_LEN));
            let record = record::encode(&bundle);
            Ok((read_back(&record)?, record))
        })
        .await
    }

    pub(super) async fn delete(&self, store: &Store, node_type: &NodeType, if_match: &IfMatch) -> Result<Written, StoreError> {
        let current_key = key(&["current", node_type.as_str()]);
        for _ in 0..ATTEMPTS {
            let state = self.read_state(node_type, None).await?;
            let stored = state.current.as_ref().map(|(m, _)| m.as_ref().map_or("", |m| m.version.as_str()));
            if_match.check(node_type, stored)?;
            let Some((_, mod_revision)) = state.current else {
                return Ok(store.publish(node_type, Decided::Unchanged));
            };
            let txn = Txn::new()
                .when([Compare::mod_revision(current_key.as_str(), CompareOp::Equal, mod_revision)])
                .and_then([TxnOp::delete(current_key.as_str(), None)]);
            let response = self.txn(txn).await.map_err(|e| self.unavailable(e))?;
            if response.succeeded() {
                let revision = response.header().map_or(0, |h| h.revision());
                return Ok(self.applied(store, node_type, revision, Decided::Removed));
            }
        }
        Err(StoreError::Unavailable(format!("{node_type} changed {ATTEMPTS} times during one delete; try again")))
    }

    async fn manifests(&self, node_type: &NodeType) -> Result<Vec<Manifest>, StoreError> {
        let prefix = key(&["history", node_type.as_str(), ""]);
        let response = self.get(prefix, Some(GetOptions::new().with_prefix())).await.map_err(|e| self.unavailable(e))?;
        // An entry that does not parse is skipped: one bad entry must not hide the others.
        Ok(response.kvs().iter().filter_map(|kv| serde_json::from_slice(kv.value()).ok()).collect())
    }

    pub(super) async fn history(&self, node_type: &NodeType) -> Result<Vec<Version>, StoreError> {
        Ok(self.manifests(node_type).await?.into_iter().map(Version::from).collect())
    }

    pub(super) async fn version(&self, node_type: &NodeType, version: &str) -> Result<Option<StoredBundle>, StoreError> {
        let Some(manifest) = self.manifests(node_type).await?.into_iter().rev().find(|m| m.version == version) else { return Ok(None) };
        let manifest = serde_json::to_vec(&manifest).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        match self.bundle_of(&manifest).await {
            Ok(bundle) => Ok(Some(bundle)),
            Err(Unreadable::Broken(_)) => Ok(None),
            Err(Unreadable::Etcd(error)) => Err(self.unavailable(error)),
        }
    }

    /// Every record of the aux kind `table` (see `super::Aux`), undecoded.
    pub(super) async fn aux(&self, table: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let prefix = key(&[table, ""]);
        let response = self.get(prefix.as_str(), Some(GetOptions::new().with_prefix())).await.map_err(|e| self.unavailable(e))?;
        let entries = response.kvs().iter().filter_map(|kv| Some((std::str::from_utf8(kv.key().strip_prefix(prefix.as_bytes())?).ok()?.to_owned(), kv.value().to_vec())));
        Ok(entries.collect())
    }

    /// Keeps (or, given `None`, forgets) one aux record. Every replica
    /// polls Cloud Map for itself, so for those this is only what a restart
    /// starts from: the last writer wins.
    pub(super) async fn save_aux(&self, table: &str, name: &str, value: Option<Vec<u8>>) -> Result<(), StoreError> {
        let key = key(&[table, name]);
        let op = match value {
            Some(value) => TxnOp::put(key, value, None),
            None => TxnOp::delete(key, None),
        };
        self.txn(Txn::new().and_then([op])).await.map(drop).map_err(|e| self.unavailable(e))
    }

    /// A small read, to learn whether etcd answers again.
    pub(super) async fn probe(&self) -> Result<(), StoreError> {
        self.get(key(&["current", ""]), Some(GetOptions::new().with_prefix().with_count_only())).await.map(drop).map_err(|e| self.unavailable(e))
    }
}

/// A node type's state as one read saw it.
struct State {
    /// Its manifest (unless it does not parse) and the key's mod revision.
    current: Option<(Option<Manifest>, i64)>,
    /// The sequence numbers of its history entries, oldest first.
    seqs: Vec<u64>,
    /// The content hash the version being written names, if it was stored.
    version_hash: Option<String>,
}

/// Whether `error` means the member could not be reached (so another may
/// answer), rather than an answer.
fn unreachable(error: &etcd_client::Error) -> bool {
    match error {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(status) => matches!(status.code(), tonic::Code::Unavailable | tonic::Code::Unknown),
        _ => false,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_keys_sort_by_sequence() {
        let a = NodeType::parse("a").unwrap();
        assert!(seq_key(&a, 9) < seq_key(&a, 10) && seq_key(&a, 99_999) < seq_key(&a, 100_000));
        assert_eq!(key(&["current", "a"]), "/sxds/v1/current/a");
    }
}
