//! Endpoints from a service registry: a bundle's `endpoint_sources` name,
//! for some EDS clusters, the AWS Cloud Map service whose instances are
//! their endpoints.
//!
//! [`Discovery`] sits on the data path between the store and the cache. It
//! follows the store's catalog, polls each distinct Cloud Map query once
//! however many node types use it (`DiscoverInstancesRevision` every
//! interval, `DiscoverInstances` only when the revision moved), keeps what
//! it found in the store, and publishes, for every node type, its bundle
//! plus the `ClusterLoadAssignment` of each source ([`Served`]). The cache
//! follows that feed instead of the store's.
//!
//! Failures never empty a cluster: a poll that fails (throttled, Cloud Map
//! unreachable, a namespace that does not exist) changes nothing served;
//! the error shows per source until a poll works again. What was found last
//! is stored, so a restart serves it before its first poll. A cluster whose
//! source has never answered (and nothing stored) is not served at all,
//! rather than served empty.
//!
//! A canary rollout's bundle ([`Discovery::set_candidate`]) has its sources
//! polled too, so a source it adds has endpoints for the canaries before
//! the bundle is stored.

pub mod cloud_map;
mod render;

use std::{
    collections::BTreeMap,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime},
};

use serde::Serialize;
use tokio::{sync::watch, task::AbortHandle};
use tokio_util::sync::CancellationToken;

pub use render::{IPV4, IPV6, PORT, REGION, ZONE};

use crate::{
    metrics::Metrics,
    node_type::NodeType,
    resource_type::ResourceType,
    schema::{cloud_map_source::Health, CloudMapSource, DiscoveredInstance, DiscoveredInstances, StoredBundle, StoredResource},
    store::{Catalog, Store},
};

/// How often sources are polled.
#[derive(Debug, Clone, Copy)]
pub struct Polling {
    /// Between two `DiscoverInstancesRevision` calls of one query.
    pub interval: Duration,
    /// The longest time without a `DiscoverInstances`, even while the
    /// revision stays: Cloud Map does not move the revision when only an
    /// instance's health changes.
    pub refresh: Duration,
}

impl From<&crate::Config> for Polling {
    fn from(config: &crate::Config) -> Self {
        Self { interval: config.cloud_map_interval, refresh: config.cloud_map_refresh }
    }
}
/// The longest wait between polls of a failing source.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A service registry: Cloud Map, or a stand-in in tests.
pub trait Directory: Send + Sync + 'static {
    /// The revision of the query's instances: it moves whenever they change.
    fn revision<'a>(&'a self, query: &'a Query) -> BoxFuture<'a, Result<i64, DirectoryError>>;
    /// The instances the query selects, with their revision.
    fn instances<'a>(&'a self, query: &'a Query) -> BoxFuture<'a, Result<Found, DirectoryError>>;
}

/// Makes the directory on first use: no AWS configuration is read, and no
/// credential looked up, until a bundle names a source.
pub type DirectoryFactory = Box<dyn Fn() -> BoxFuture<'static, Arc<dyn Directory>> + Send + Sync>;

/// A failed call to the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryError {
    /// Throttled: back off harder.
    pub throttled: bool,
    pub message: String,
}

/// What one query found.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub revision: i64,
    pub instances: Vec<DiscoveredInstance>,
}

/// One `DiscoverInstances` query. Sources that ask the same of the same
/// service share it, whatever their cluster or port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Query {
    pub namespace: String,
    pub service: String,
    #[serde(serialize_with = "health_name")]
    pub health: Health,
    pub query_parameters: BTreeMap<String, String>,
    pub optional_parameters: BTreeMap<String, String>,
}

fn health_name<S: serde::Serializer>(health: &Health, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(health.as_str_name())
}

impl Query {
    fn of(source: &CloudMapSource) -> Self {
        Self {
            namespace: source.namespace.clone(),
            service: source.service.clone(),
            health: source.health(),
            query_parameters: source.query_parameters.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            optional_parameters: source.optional_parameters.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }
    }

    /// The key the store keeps this query's instances under: a digest of
    /// its canonical JSON, stable across versions and replicas.
    fn key(&self) -> String {
        let json = serde_json::to_vec(self).expect("a query serializes");
        format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&json))
    }
}

/// What the cache serves one node type: its bundle and, when it has
/// endpoint sources, their endpoints.
#[derive(Debug, Clone)]
pub struct Served {
    pub bundle: Arc<StoredBundle>,
    pub discovered: Option<Arc<Discovered>>,
    /// During a canary rollout, the bundle it tries, with its own sources'
    /// endpoints.
    pub candidate: Option<Arc<Served>>,
}

impl Served {
    /// A bundle served as stored: no sources looked up, no rollout.
    pub fn stored(bundle: Arc<StoredBundle>) -> Self {
        Self { bundle, discovered: None, candidate: None }
    }
}

/// Every node type's [`Served`]: the feed the cache follows.
pub type ServedCatalog = BTreeMap<NodeType, Served>;

/// The endpoints of one node type's sources, as the cache adds them to its bundle.
#[derive(Debug, PartialEq)]
pub struct Discovered {
    /// The version EDS responses carry: the bundle's version plus the sum
    /// of its sources' revisions (each only grows), so it says where the
    /// endpoints came from and is the same on every replica.
    pub eds_version: String,
    /// One `ClusterLoadAssignment` per source that has answered, as the
    /// bundle would list it under `endpoints`.
    pub assignments: Vec<StoredResource>,
    /// Per cluster: how many endpoints its assignment has, and the
    /// instances left out with why, for the sources' status (made with
    /// the assignments, so reading the status renders nothing).
    pub rendered: BTreeMap<String, (usize, Vec<String>)>,
}

/// A catalog with no sources looked up: each bundle served as stored.
pub fn as_stored(catalog: &Catalog) -> ServedCatalog {
    catalog.iter().map(|(node_type, bundle)| (node_type.clone(), Served::stored(bundle.clone()))).collect()
}

/// How one source is doing, for `GET /resources/{node_type}/sources`.
#[derive(Debug, Clone, Serialize)]
pub struct SourceStatus {
    pub cluster_name: String,
    pub query: Query,
    /// `pending` (never answered, nothing stored: not served), `stored`
    /// (served from the store, not polled yet), `ok` or `failing` (the last
    /// endpoints found stay served).
    pub state: &'static str,
    pub revision: Option<i64>,
    pub instances: usize,
    pub endpoints: usize,
    /// Instances that could not be endpoints, and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
    #[serde(flatten)]
    pub poll: PollStatus,
}

/// How the polls of one query went.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PollStatus {
    pub last_success_unix_ms: Option<u128>,
    pub last_change_unix_ms: Option<u128>,
    pub error: Option<String>,
    pub failing_since_unix_ms: Option<u128>,
    pub consecutive_failures: u32,
}

/// Follows the store, polls the directory, feeds the cache. Cheap to clone.
#[derive(Clone)]
pub struct Discovery(Arc<Inner>);

struct Inner {
    factory: DirectoryFactory,
    directory: tokio::sync::OnceCell<Arc<dyn Directory>>,
    store: Store,
    polling: Polling,
    metrics: Metrics,
    shutdown: CancellationToken,
    state: Mutex<State>,
    feed: watch::Sender<Arc<ServedCatalog>>,
}

#[derive(Default)]
struct State {
    catalog: Arc<Catalog>,
    /// The bundles canary rollouts try, until stored or given up.
    candidates: BTreeMap<NodeType, Arc<StoredBundle>>,
    queries: BTreeMap<Query, Polled>,
}

/// One query's poller and what it found.
struct Polled {
    found: Option<Arc<Found>>,
    /// When `DiscoverInstances` last answered.
    fetched: Option<tokio::time::Instant>,
    /// Found loaded from the store, not confirmed by a poll yet.
    from_store: bool,
    status: PollStatus,
    poller: Option<AbortHandle>,
}

impl Drop for Polled {
    fn drop(&mut self) {
        if let Some(poller) = &self.poller {
            poller.abort();
        }
    }
}

fn now_ms() -> u128 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis())
}

impl Discovery {
    /// Loads what the store kept from earlier polls and publishes every
    /// node type's bundle with it, then follows the store and polls every
    /// `interval`, until `shutdown`.
    pub async fn start(store: Store, factory: DirectoryFactory, polling: Polling, metrics: Metrics, shutdown: CancellationToken) -> Self {
        let kept = match store.discovered().await {
            Ok(kept) => kept,
            Err(error) => {
                tracing::error!(%error, "cannot read the stored Cloud Map instances; sources wait for their first poll");
                BTreeMap::new()
            }
        };
        let (feed, _) = watch::channel(Arc::new(ServedCatalog::new()));
        let discovery = Self(Arc::new(Inner {
            factory,
            directory: tokio::sync::OnceCell::new(),
            store: store.clone(),
            polling,
            metrics,
            shutdown: shutdown.clone(),
            state: Mutex::new(State::default()),
            feed,
        }));
        discovery.sync(store.catalog(), &kept);
        tokio::spawn(discovery.clone().follow(store.subscribe(), shutdown));
        discovery
    }

    /// The feed the cache follows.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ServedCatalog>> {
        self.0.feed.subscribe()
    }

    /// What every node type is served now.
    pub fn served(&self) -> Arc<ServedCatalog> {
        self.0.feed.borrow().clone()
    }

    /// The sources of `node_type`'s bundle and how each is doing; `None`
    /// when it has no bundle.
    pub fn sources(&self, node_type: &NodeType) -> Option<Vec<SourceStatus>> {
        let served = self.served();
        let rendered = served.get(node_type).and_then(|s| s.discovered.as_ref()).map(|d| &d.rendered);
        let state = self.lock();
        let bundle = state.catalog.get(node_type)?;
        let statuses = bundle
            .endpoint_sources()
            .filter_map(|source| {
                let cloud_map = source.cloud_map.as_ref()?;
                let query = Query::of(cloud_map);
                let polled = state.queries.get(&query)?;
                let rendered = rendered.and_then(|r| r.get(&source.cluster_name));
                let state = match (&polled.found, &polled.status.error) {
                    (None, _) => "pending",
                    (Some(_), Some(_)) => "failing",
                    (Some(_), None) if polled.from_store => "stored",
                    (Some(_), None) => "ok",
                };
                Some(SourceStatus {
                    cluster_name: source.cluster_name.clone(),
                    query,
                    state,
                    revision: polled.found.as_ref().map(|found| found.revision),
                    instances: polled.found.as_ref().map_or(0, |found| found.instances.len()),
                    endpoints: rendered.map_or(0, |(endpoints, _)| *endpoints),
                    skipped: rendered.map(|(_, skipped)| skipped.clone()).unwrap_or_default(),
                    poll: polled.status.clone(),
                })
            })
            .collect();
        Some(statuses)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn follow(self, mut feed: watch::Receiver<Arc<Catalog>>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                changed = feed.changed() => if changed.is_err() { return },
                () = shutdown.cancelled() => return,
            }
            let catalog = feed.borrow_and_update().clone();
            self.sync(catalog, &BTreeMap::new());
        }
    }

    /// Starts a poller for each query `catalog` has that none polls yet
    /// (seeded from `kept`, by store key), stops those no bundle names any
    /// more, and publishes.
    fn sync(&self, catalog: Arc<Catalog>, kept: &BTreeMap<String, DiscoveredInstances>) {
        let mut state = self.lock();
        // A candidate now stored is the bundle: its rollout is done.
        state.candidates.retain(|node_type, candidate| catalog.get(node_type).is_none_or(|bundle| bundle.version != candidate.version));
        state.catalog = catalog;
        self.poll_wanted(&mut state, kept);
        self.publish(&mut state, None);
    }

    /// Has the sources of the canary rollout of `node_type` (or, with
    /// `None`, of none any more) polled, and serves them to its canaries.
    pub fn set_candidate(&self, node_type: &NodeType, bundle: Option<Arc<StoredBundle>>) {
        let mut state = self.lock();
        match bundle {
            Some(bundle) => state.candidates.insert(node_type.clone(), bundle),
            None => state.candidates.remove(node_type),
        };
        self.poll_wanted(&mut state, &BTreeMap::new());
        self.publish(&mut state, None);
    }

    /// The sources of `node_type`'s candidate that have never answered
    /// (nothing found, nothing stored), each with why: its canaries cannot
    /// have tried those clusters' endpoints.
    pub fn candidate_unanswered(&self, node_type: &NodeType) -> Vec<String> {
        let state = self.lock();
        let Some(candidate) = state.candidates.get(node_type) else { return Vec::new() };
        let unanswered = candidate.endpoint_sources().filter_map(|source| {
            let query = Query::of(source.cloud_map.as_ref()?);
            let polled = state.queries.get(&query);
            if polled.is_some_and(|polled| polled.found.is_some()) {
                return None;
            }
            let why = polled.and_then(|polled| polled.status.error.clone()).unwrap_or_else(|| "no answer yet".into());
            Some(format!("cluster {} (Cloud Map {}/{}): {why}", source.cluster_name, query.namespace, query.service))
        });
        unanswered.collect()
    }

    /// Starts a poller for each query a bundle or candidate has that none
    /// polls yet (seeded from `kept`), and stops those nothing names any more.
    fn poll_wanted(&self, state: &mut State, kept: &BTreeMap<String, DiscoveredInstances>) {
        let bundles = state.catalog.values().chain(state.candidates.values());
        let wanted: std::collections::BTreeSet<Query> =
            bundles.flat_map(|bundle| bundle.endpoint_sources()).filter_map(|source| source.cloud_map.as_ref().map(Query::of)).collect();
        let gone: Vec<Query> = state.queries.keys().filter(|query| !wanted.contains(*query)).cloned().collect();
        for query in gone {
            state.queries.remove(&query);
            tracing::info!(namespace = query.namespace, service = query.service, "no bundle uses this Cloud Map service any more; it is no longer polled");
            let store = self.0.store.clone();
            tokio::spawn(async move {
                if let Err(error) = store.forget_discovered(query.key()).await {
                    tracing::warn!(%error, "cannot remove the stored instances of a Cloud Map service no longer used");
                }
            });
        }
        for query in wanted {
            if state.queries.contains_key(&query) {
                continue;
            }
            let found = kept.get(&query.key()).map(|kept| Arc::new(Found { revision: kept.revision, instances: kept.instances.clone() }));
            if let Some(found) = &found {
                tracing::info!(namespace = query.namespace, service = query.service, revision = found.revision, instances = found.instances.len(), "serving the stored Cloud Map instances until the first poll");
            }
            let poller = tokio::spawn(self.clone().poll(query.clone())).abort_handle();
            let from_store = found.is_some();
            state.queries.insert(query, Polled { found, fetched: None, from_store, status: PollStatus::default(), poller: Some(poller) });
        }
    }

    /// Publishes every node type's bundle with its sources' endpoints,
    /// made afresh for the node types that use `changed` (all of them when
    /// `None`); the others keep what they were served, and the cache skips
    /// them.
    fn publish(&self, state: &mut State, changed: Option<&Query>) {
        let previous = self.0.feed.borrow().clone();
        let mut served = ServedCatalog::new();
        for (node_type, bundle) in state.catalog.iter() {
            let previous = previous.get(node_type);
            let candidate = state.candidates.get(node_type).map(|candidate| {
                let before = previous.and_then(|p| p.candidate.as_ref()).filter(|p| Arc::ptr_eq(&p.bundle, candidate));
                match before {
                    Some(before) if changed.is_some_and(|query| !uses(candidate, query)) => before.clone(),
                    _ => Arc::new(Served { discovered: discovered(candidate, &state.queries, before.map(|b| &**b)), ..Served::stored(candidate.clone()) }),
                }
            });
            let kept = previous.filter(|kept| Arc::ptr_eq(&kept.bundle, bundle) && changed.is_some_and(|query| !uses(bundle, query)));
            let discovered = match kept {
                Some(kept) => kept.discovered.clone(),
                None => discovered(bundle, &state.queries, previous),
            };
            served.insert(node_type.clone(), Served { bundle: bundle.clone(), discovered, candidate });
        }
        self.0.feed.send_replace(Arc::new(served));
        self.count_failing(state);
    }

    fn count_failing(&self, state: &State) {
        self.0.metrics.sources_failing(state.queries.values().filter(|polled| polled.status.error.is_some()).count());
    }

    async fn directory(&self) -> Arc<dyn Directory> {
        self.0.directory.get_or_init(|| (self.0.factory)()).await.clone()
    }

    /// Polls `query` until it is stopped or shutdown: every interval
    /// (jittered, so many sources spread out), backing off on failures.
    async fn poll(self, query: Query) {
        let directory = self.directory().await;
        let mut failures: u32 = 0;
        loop {
            let wait = match self.poll_once(&*directory, &query).await {
                Ok(()) => {
                    failures = 0;
                    jitter(self.0.polling.interval)
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let backoff = backoff(self.0.polling.interval, failures, error.throttled);
                    tracing::warn!(namespace = query.namespace, service = query.service, error = error.message, failures, retry_in_ms = backoff.as_millis() as u64, "Cloud Map poll failed; the last endpoints found stay served");
                    self.failed(&query, error.message);
                    jitter(backoff)
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.0.shutdown.cancelled() => return,
            }
        }
    }

    /// One poll: the revision, then the instances if it moved (or the last
    /// ones are older than the refresh time).
    async fn poll_once(&self, directory: &dyn Directory, query: &Query) -> Result<(), DirectoryError> {
        let metrics = &self.0.metrics;
        let revision = directory.revision(query).await;
        metrics.cloud_map_request("DiscoverInstancesRevision", Self::outcome(&revision));
        let revision = revision?;
        let current = self.lock().queries.get(query).is_some_and(|polled| {
            let recent = polled.fetched.is_some_and(|at| at.elapsed() < self.0.polling.refresh);
            recent && polled.found.as_ref().is_some_and(|found| found.revision == revision)
        });
        if current {
            self.succeeded(query, None);
            return Ok(());
        }
        let found = directory.instances(query).await;
        metrics.cloud_map_request("DiscoverInstances", Self::outcome(&found));
        let mut found = found?;
        // `DiscoverInstances` counts only the instances it returns; the
        // query's revision is the one that moves.
        found.revision = revision;
        self.succeeded(query, Some(found));
        Ok(())
    }

    fn outcome<T>(result: &Result<T, DirectoryError>) -> &'static str {
        match result {
            Ok(_) => "ok",
            Err(error) if error.throttled => "throttled",
            Err(_) => "error",
        }
    }

    fn succeeded(&self, query: &Query, found: Option<Found>) {
        let mut state = self.lock();
        let Some(polled) = state.queries.get_mut(query) else { return };
        let now = now_ms();
        if polled.status.error.take().is_some() {
            tracing::info!(namespace = query.namespace, service = query.service, "Cloud Map answers again");
        }
        polled.status.failing_since_unix_ms = None;
        polled.status.consecutive_failures = 0;
        polled.status.last_success_unix_ms = Some(now);
        polled.from_store = false;
        if found.is_some() {
            polled.fetched = Some(tokio::time::Instant::now());
        }
        let changed = found.filter(|found| polled.found.as_deref() != Some(found));
        let Some(found) = changed else {
            self.count_failing(&state);
            return;
        };
        polled.status.last_change_unix_ms = Some(now);
        if found.instances.is_empty() {
            tracing::warn!(namespace = query.namespace, service = query.service, revision = found.revision, "Cloud Map has no instances for this service: its clusters are served with zero endpoints");
        } else {
            tracing::info!(namespace = query.namespace, service = query.service, revision = found.revision, instances = found.instances.len(), "Cloud Map instances changed");
        }
        let record = DiscoveredInstances { revision: found.revision, instances: found.instances.clone(), at_unix_ms: now as u64 };
        polled.found = Some(Arc::new(found));
        self.publish(&mut state, Some(query));
        drop(state);
        // Served first, kept second: a store that cannot write (a full
        // disk) must not hold back endpoints Cloud Map has.
        let (store, key) = (self.0.store.clone(), query.key());
        tokio::spawn(async move {
            if let Err(error) = store.save_discovered(key, record).await {
                tracing::warn!(%error, "cannot store the Cloud Map instances found; a restart would serve older ones until its first poll");
            }
        });
    }

    fn failed(&self, query: &Query, message: String) {
        let mut state = self.lock();
        let Some(polled) = state.queries.get_mut(query) else { return };
        polled.status.failing_since_unix_ms.get_or_insert_with(now_ms);
        polled.status.consecutive_failures = polled.status.consecutive_failures.saturating_add(1);
        polled.status.error = Some(message);
        self.count_failing(&state);
    }
}

/// The wait after the `failures`-th failed poll in a row: doubling from
/// the interval (from four times it when throttled), at most [`MAX_BACKOFF`].
fn backoff(interval: Duration, failures: u32, throttled: bool) -> Duration {
    let base = if throttled { interval * 4 } else { interval };
    base.saturating_mul(1 << failures.min(8)).min(MAX_BACKOFF)
}

/// Between 80 % and 100 % of `wait`: pollers started together drift apart.
fn jitter(wait: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
    wait.mul_f64(0.8 + 0.2 * (random as f64 / u64::MAX as f64))
}

/// Whether one of `bundle`'s sources asks `query`.
fn uses(bundle: &StoredBundle, query: &Query) -> bool {
    bundle.endpoint_sources().any(|source| source.cloud_map.as_ref().is_some_and(|c| Query::of(c) == *query))
}

/// [`discover`], keeping `previous`'s endpoints when they are the same (the
/// cache then sees nothing changed).
fn discovered(bundle: &StoredBundle, queries: &BTreeMap<Query, Polled>, previous: Option<&Served>) -> Option<Arc<Discovered>> {
    let made = discover(bundle, queries)?;
    match previous.and_then(|p| p.discovered.as_ref()) {
        Some(previous) if **previous == made => Some(previous.clone()),
        _ => Some(Arc::new(made)),
    }
}

/// The endpoints of `bundle`'s sources, from what their queries found;
/// `None` when it has no sources.
fn discover(bundle: &StoredBundle, queries: &BTreeMap<Query, Polled>) -> Option<Discovered> {
    let mut sources = bundle.endpoint_sources().peekable();
    sources.peek()?;
    let mut revisions: i64 = 0;
    let mut assignments = Vec::new();
    let mut rendered_counts = BTreeMap::new();
    let mut content = xxhash_rust::xxh3::Xxh3::new();
    for source in sources {
        let Some(cloud_map) = &source.cloud_map else { continue };
        let Some(found) = queries.get(&Query::of(cloud_map)).and_then(|polled| polled.found.as_ref()) else { continue };
        revisions = revisions.wrapping_add(found.revision);
        let rendered = render::assignment(&source.cluster_name, cloud_map, &found.instances);
        content.update(&rendered.assignment);
        rendered_counts.insert(source.cluster_name.clone(), (rendered.endpoints, rendered.skipped));
        let field = ResourceType::Endpoint.bundle_field();
        assignments.push(StoredResource { field, name: source.cluster_name.clone(), value: rendered.assignment.into() });
    }
    // The revision alone is not enough: a health change leaves it, and it
    // may come back to an earlier value. The digest of what is served
    // tells every state apart, and is the same on every replica.
    let eds_version = format!("{}+cloudmap.{revisions}.{:08x}", bundle.version, content.digest() as u32);
    Some(Discovered { eds_version, assignments, rendered: rendered_counts })
}

#[cfg(test)]
mod tests;
