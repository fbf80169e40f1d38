//! The snapshot cache: for each node type, the current bundle encoded once
//! into the bytes every stream sends.
//!
//! It is written only by [`Cache::follow`], from the store's change feed, and
//! read by streams through a `watch` per node type: a stream that is busy
//! misses nothing but intermediate versions (updates coalesce).

use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hash, Hasher},
    sync::{Arc, Mutex, OnceLock, Weak},
    task::{ready, Context, Poll},
};

use bytes::Bytes;
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, ReusableBoxFuture};

use crate::{
    discovery::{Discovered, Served, ServedCatalog},
    node_type::NodeType,
    resource_type::{PerType, ResourceType},
    schema::{StoredBundle, StoredResource},
    wire,
};

/// One resource, encoded once for every protocol and every stream.
#[derive(Debug)]
pub struct Resource {
    name: Arc<str>,
    /// Field 2 holding the resource's `Any`: an entry of a SotW response's
    /// `resources` and the `resource` field of a delta `Resource` alike. A
    /// slice of its type's shared chunk.
    entry: Bytes,
    /// Where the `Any` starts in `entry`.
    any_at: u8,
    /// Of the encoded `Any`: tells a changed resource from an unchanged one
    /// across versions, and is its version on delta streams.
    digest: u64,
}

impl Resource {
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Field 2 around the resource's `Any`, as both SotW and delta responses carry it.
    pub fn entry(&self) -> &Bytes {
        &self.entry
    }

    /// The encoded `Any`.
    pub fn any(&self) -> Bytes {
        self.entry.slice(usize::from(self.any_at)..)
    }

    pub fn digest(&self) -> u64 {
        self.digest
    }
}

/// The resources of one type, sorted by name. A sorted slice rather than a
/// map: a bundle of 100,000 clusters costs 100,000 × 48 bytes here.
#[derive(Debug, Default)]
struct Resources(Box<[Resource]>);

impl Resources {
    fn get(&self, name: &str) -> Option<&Resource> {
        self.0.binary_search_by(|r| (*r.name).cmp(name)).ok().map(|i| &self.0[i])
    }
}

/// A bundle as served: every resource encoded once, shared by all streams.
#[derive(Debug)]
pub struct Snapshot {
    /// Unique within the process, to tell which snapshot came before which.
    id: u64,
    /// What changed since the snapshot this one replaced: a stream that
    /// holds the previous snapshot finds what to send without comparing
    /// every name it subscribes to.
    changed_since: Option<Changes>,
    version: Arc<str>,
    /// What EDS responses carry: the version, or with endpoint sources the
    /// version plus their revisions.
    eds_version: Arc<str>,
    types: PerType<Resources>,
    /// Per type, every resource entry concatenated: the body of a wildcard
    /// SotW response in one shared chunk.
    all: PerType<Bytes>,
    /// Per type, a digest of the whole set: tells whether a type changed.
    set_digests: PerType<u64>,
    /// The stored bundle this was built from, to skip rebuilding it.
    source: Arc<StoredBundle>,
    /// The endpoints of its sources, likewise.
    discovered: Option<Arc<Discovered>>,
    /// Per type, each resource's canonical JSON for REST polling, made on
    /// the first REST request for the type (see [`Self::json`]).
    json: PerType<OnceLock<Result<JsonResources, String>>>,
    /// Per type, the whole set as delta `Resource` entries, made on the
    /// first delta response that carries it all (see [`Self::delta_set`]).
    delta_set: PerType<OnceLock<Bytes>>,
    /// The domains of each virtual host (VHDS), index for index with its
    /// resources, decoded once on first use (see [`Self::domains`]).
    domains: OnceLock<Box<[Box<[String]>]>>,
}

/// The resources of one type as JSON, for REST (see [`Snapshot::make_json`]).
#[derive(Debug)]
pub struct JsonResources {
    /// Every resource's JSON, comma-separated, in name order: the body of a
    /// wildcard answer's `resources` array, in one shared chunk.
    pub all: Bytes,
    /// Each resource's JSON, index for index with [`Snapshot::resources`]:
    /// slices of `all`.
    pub each: Box<[Bytes]>,
}

/// What changed from one snapshot to the next, per type.
#[derive(Debug)]
struct Changes {
    /// The id of the snapshot replaced.
    since: u64,
    /// Names new or changed.
    changed: PerType<Vec<Arc<str>>>,
    /// Names gone.
    removed: PerType<Vec<Arc<str>>>,
    /// Names a client that applies these changes asks for afresh: those new
    /// or changed, and those new or changed resources of the types that warm
    /// them refer to (an updated cluster's endpoints, R21; an updated
    /// listener's routes, R22). In name order.
    rewarmed: PerType<Vec<Arc<str>>>,
}

/// See [`Changes::rewarmed`]. Only the parents that changed are decoded, to
/// read the names they refer to; one that does not decode (never in a
/// validated bundle) counts as referring to every resource of `ty`.
fn rewarmed(source: &StoredBundle, types: &PerType<Resources>, changed: &PerType<Vec<Arc<str>>>, ty: ResourceType) -> Vec<Arc<str>> {
    if ty.info().warmed_by.is_empty() {
        return Vec::new(); // never asked for
    }
    let mut names = changed[ty].clone();
    for &parent in ty.info().warmed_by {
        let changed_parents = &changed[parent];
        if changed_parents.is_empty() {
            continue;
        }
        let updated = source.resources(parent).filter(|r| changed_parents.binary_search_by(|name| (**name).cmp(r.name.as_str())).is_ok());
        for resource in updated {
            match crate::bundle::referenced(parent, &resource.value, ty) {
                Some(referred) => names.extend(referred.iter().filter_map(|name| types[ty].get(name)).map(|r| r.name.clone())),
                None => names.extend(types[ty].0.iter().map(|r| r.name.clone())),
            }
        }
    }
    names.sort_unstable();
    names.dedup();
    names
}

/// The resources of `ty` in `source`, with the endpoints its sources found:
/// their entries written once, in name order, into one chunk (returned too:
/// the body of a wildcard response); each resource's entry is a slice of it.
/// A name of the `previous` snapshot's resources is taken over (its `Arc`),
/// so that subscriptions built from any snapshot of the chain share it and
/// are told equal by address, without comparing the strings.
fn encode_type(source: &StoredBundle, discovered: Option<&Discovered>, ty: ResourceType, previous: Option<&Snapshot>) -> (Resources, Bytes) {
    let found: &[StoredResource] = match discovered {
        Some(discovered) if ty == ResourceType::Endpoint => &discovered.assignments,
        _ => &[],
    };
    let mut listed: Vec<_> = source.resources(ty).chain(found).collect();
    listed.sort_by(|a, b| a.name.cmp(&b.name));
    listed.dedup_by(|a, b| a.name == b.name); // names are unique once validated
    let type_url = ty.type_url();
    let mut chunk = Vec::with_capacity(listed.iter().map(|r| r.value.len() + type_url.len() + 16).sum());
    let bounds: Vec<(usize, usize)> = listed
        .iter()
        .map(|r| {
            let start = chunk.len();
            let any_at = wire::put_any_field(&mut chunk, wire::discovery_response::RESOURCES, type_url, &r.value) - start;
            (start, any_at)
        })
        .collect();
    let ends = bounds.iter().skip(1).map(|(start, _)| *start).chain([chunk.len()]);
    let chunk = Bytes::from(chunk);
    // Both in name order: one pass.
    let mut earlier = previous.map_or(&[][..], |previous| previous.resources(ty));
    let mut name = |name: &str| {
        crate::sorted::take(&mut earlier, |held| &*held.name < name, |held| &*held.name == name)
            .map_or_else(|| name.into(), |held| held.name.clone())
    };
    let resources = listed
        .iter()
        .zip(bounds.iter().zip(ends))
        .map(|(r, (&(start, any_at), end))| {
            let entry = chunk.slice(start..end);
            let digest = wire::digest(&entry[any_at..]);
            // A field key and a length: a few bytes.
            let any_at = u8::try_from(any_at).expect("a field head is at most 15 bytes");
            Resource { name: name(&r.name), entry, any_at, digest }
        })
        .collect();
    (Resources(resources), chunk)
}

impl Snapshot {
    /// A snapshot of a bundle as stored (no endpoint sources looked up).
    pub fn build(id: u64, source: Arc<StoredBundle>, previous: Option<&Snapshot>) -> Self {
        Self::build_served(id, Served::stored(source), previous)
    }

    /// A snapshot of a bundle and the endpoints its sources found.
    pub fn build_served(id: u64, served: Served, previous: Option<&Snapshot>) -> Self {
        let Served { bundle: source, discovered, .. } = served;
        let encoded = PerType::from_fn(|ty| encode_type(&source, discovered.as_deref(), ty, previous));
        let all = PerType::from_fn(|ty| encoded[ty].1.clone());
        let types = encoded.map(|_, (resources, _)| resources);
        let changed_since = previous.map(|previous| {
            let changed = PerType::from_fn(|ty| {
                let resources = types[ty].0.iter();
                resources.filter(|r| previous.digest(ty, &r.name) != Some(r.digest)).map(|r| r.name.clone()).collect()
            });
            Changes {
                since: previous.id,
                removed: PerType::from_fn(|ty| {
                    let resources = previous.types[ty].0.iter();
                    resources.filter(|r| types[ty].get(&r.name).is_none()).map(|r| r.name.clone()).collect()
                }),
                rewarmed: PerType::from_fn(|ty| rewarmed(&source, &types, &changed, ty)),
                changed,
            }
        });
        let set_digests = PerType::from_fn(|ty| {
            let mut hasher = DefaultHasher::new();
            types[ty].0.iter().for_each(|r| (&r.name, r.digest).hash(&mut hasher));
            hasher.finish()
        });
        let version: Arc<str> = source.version.as_str().into();
        let eds_version = discovered.as_ref().map_or_else(|| version.clone(), |d| d.eds_version.as_str().into());
        Self {
            id,
            changed_since,
            version,
            eds_version,
            types,
            all,
            set_digests,
            source,
            discovered,
            json: PerType::default(),
            delta_set: PerType::default(),
            domains: OnceLock::new(),
        }
    }

    /// The resources of `ty` as JSON, once [`Self::make_json`] made them.
    pub fn json(&self, ty: ResourceType) -> Option<Result<&JsonResources, &str>> {
        self.json[ty].get().map(|made| made.as_ref().map_err(String::as_str))
    }

    /// The resources of `ty` as JSON, made by `encode` on the first call and
    /// kept with the snapshot: REST clients share one encoding per version.
    /// Blocks while another caller encodes: call it off the async workers.
    pub fn make_json(&self, ty: ResourceType, encode: impl FnOnce(&[Resource]) -> Result<JsonResources, String>) -> Result<&JsonResources, &str> {
        let made = self.json[ty].get_or_init(|| encode(self.resources(ty)));
        made.as_ref().map_err(String::as_str)
    }

    /// Every resource of `ty` as delta entries, made by `frame` on the first
    /// call and kept with the snapshot: a delta stream's first response,
    /// which carries them all, is then one shared chunk, like SotW's.
    pub fn delta_set(&self, ty: ResourceType, frame: impl FnOnce(&[Resource]) -> Bytes) -> &Bytes {
        self.delta_set[ty].get_or_init(|| frame(self.resources(ty)))
    }

    /// The domains of every virtual host, index for index with
    /// `resources(VirtualHost)`, decoded by `decode` on the first call and
    /// kept: every on-demand lookup of this snapshot shares them.
    pub fn domains(&self, decode: impl FnOnce(&[Resource]) -> Box<[Box<[String]>]>) -> &[Box<[String]>] {
        self.domains.get_or_init(|| decode(self.resources(ResourceType::VirtualHost)))
    }

    /// Whether the resources of `ty` differ from those of `other`.
    pub fn type_differs(&self, other: &Snapshot, ty: ResourceType) -> bool {
        self.set_digests[ty] != other.set_digests[ty]
    }

    /// Whether only the version differs from `other`: no resource changed.
    pub fn same_resources(&self, other: &Snapshot) -> bool {
        self.set_digests == other.set_digests
    }

    /// The names of `ty` that are new or changed relative to `earlier`, when
    /// `earlier` is the snapshot this one replaced; `None` otherwise.
    pub fn changed_since(&self, earlier: &Snapshot, ty: ResourceType) -> Option<&[Arc<str>]> {
        self.changes_since(earlier).map(|changes| &changes.changed[ty][..])
    }

    /// The names of `ty` a client that applies this snapshot's changes
    /// (relative to the one it replaced) asks for afresh, as its warming
    /// resources' fresh answer: see [`Changes::rewarmed`]. `None` for a
    /// first snapshot.
    pub fn rewarmed(&self, ty: ResourceType) -> Option<&[Arc<str>]> {
        self.changed_since.as_ref().map(|changes| &changes.rewarmed[ty][..])
    }

    /// Whether `weak` refers to this snapshot: how streams, which hold
    /// snapshots weakly so as not to keep old bundles alive, recognise one.
    /// (A weak reference keeps its allocation, so no later snapshot can
    /// take its address.)
    pub fn is(&self, weak: &Weak<Snapshot>) -> bool {
        std::ptr::eq(weak.as_ptr(), self)
    }

    /// Whether `earlier` is the snapshot this one replaced.
    pub fn replaced(&self, earlier: &Snapshot) -> bool {
        self.changes_since(earlier).is_some()
    }

    /// The names of `ty` that `earlier` had and this one has not, when
    /// `earlier` is the snapshot this one replaced; `None` otherwise.
    pub fn removed_since(&self, earlier: &Snapshot, ty: ResourceType) -> Option<&[Arc<str>]> {
        self.changes_since(earlier).map(|changes| &changes.removed[ty][..])
    }

    fn changes_since(&self, earlier: &Snapshot) -> Option<&Changes> {
        self.changed_since.as_ref().filter(|changes| changes.since == earlier.id)
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    /// The version responses of `ty` carry: the bundle's, but for EDS with
    /// endpoint sources, which adds their revisions.
    pub fn type_version(&self, ty: ResourceType) -> &Arc<str> {
        if ty == ResourceType::Endpoint {
            &self.eds_version
        } else {
            &self.version
        }
    }

    /// Every resource of `ty`, in name order.
    pub fn resources(&self, ty: ResourceType) -> &[Resource] {
        &self.types[ty].0
    }

    /// One resource of `ty`, if the snapshot has it.
    pub fn resource(&self, ty: ResourceType, name: &str) -> Option<&Resource> {
        self.types[ty].get(name)
    }

    /// Every resource entry of `ty` in name order, as one shared chunk.
    pub fn all_entries(&self, ty: ResourceType) -> &Bytes {
        &self.all[ty]
    }

    /// Names of every resource of `ty`, in order.
    pub fn names(&self, ty: ResourceType) -> impl ExactSizeIterator<Item = &str> {
        self.types[ty].0.iter().map(|r| &*r.name)
    }

    /// The snapshot's own copies of the names of `ty`, in order.
    pub fn shared_names(&self, ty: ResourceType) -> impl ExactSizeIterator<Item = &Arc<str>> {
        self.types[ty].0.iter().map(|r| &r.name)
    }

    /// The snapshot's own copy of a name, for subscriptions to share.
    pub fn shared_name(&self, ty: ResourceType, name: &str) -> Option<Arc<str>> {
        self.types[ty].get(name).map(|r| r.name.clone())
    }

    /// The resources of `ty` with these names (in name order, without
    /// repeats), in order: one gallop through the type's resources rather
    /// than a lookup per name (see [`crate::sorted`]).
    pub fn resources_named<'n>(&self, ty: ResourceType, names: impl IntoIterator<Item = &'n Arc<str>>) -> Vec<&Resource> {
        crate::sorted::named(&self.types[ty].0, names, |r| &r.name)
    }

    pub fn contains(&self, ty: ResourceType, name: &str) -> bool {
        self.types[ty].get(name).is_some()
    }

    /// Content digest of one resource, `None` when absent.
    pub fn digest(&self, ty: ResourceType, name: &str) -> Option<u64> {
        self.types[ty].get(name).map(|r| r.digest)
    }
}

/// What the streams of one node type are served: the snapshot of its
/// bundle and, during a canary rollout, another one for the streams whose
/// node id matches the rollout's glob.
#[derive(Debug)]
pub struct Published {
    stable: Arc<Snapshot>,
    canary: Option<(Arc<Canary>, Arc<Snapshot>)>,
}

impl Published {
    /// The snapshot a stream of `node_id` is served.
    pub fn for_node(&self, node_id: &str) -> &Arc<Snapshot> {
        match &self.canary {
            Some((canary, snapshot)) if glob_match(&canary.glob, node_id) => snapshot,
            _ => &self.stable,
        }
    }
}

/// A canary rollout as the cache serves it (see [`crate::rollout`]).
#[derive(Debug, Clone)]
pub struct Canary {
    /// Node ids served the canary snapshot: `*` any run of characters, `?` one.
    pub glob: String,
    pub serve: CanaryServe,
}

#[derive(Debug, Clone)]
pub enum CanaryServe {
    /// The new bundle, under its own version.
    Candidate(Arc<StoredBundle>),
    /// The stable content under this other version: a halted rollout's
    /// canaries get the previous config back, as a change Envoy applies.
    Previous { version: String },
}

/// Whether `text` matches `glob`: `*` stands for any run of characters,
/// `?` for one, anything else for itself.
pub fn glob_match(glob: &str, text: &str) -> bool {
    let (glob, text): (Vec<char>, Vec<char>) = (glob.chars().collect(), text.chars().collect());
    let (mut g, mut t, mut star, mut resume) = (0, 0, None, 0);
    while t < text.len() {
        match glob.get(g) {
            Some('*') => {
                star = Some(g);
                resume = t;
                g += 1;
            }
            Some(&c) if c == '?' || c == text[t] => {
                g += 1;
                t += 1;
            }
            _ => match star {
                Some(at) => {
                    g = at + 1;
                    resume += 1;
                    t = resume;
                }
                None => return false,
            },
        }
    }
    glob[g..].iter().all(|&c| c == '*')
}

/// What one stream watches: its node type's [`Published`], seen through its
/// own node id. Dropping the last watch of a node type no bundle names
/// forgets that node type, however the stream ended.
pub struct SnapshotWatch {
    /// The receiver, inside the future that waits for its next change: a
    /// stream polls the watch from its response body, with no task to await
    /// it in, and the future is made once, then reused.
    changes: ReusableBoxFuture<'static, (Result<(), watch::error::RecvError>, Receiver)>,
    /// What was published as of the last change seen.
    latest: Option<Arc<Published>>,
    node_id: Arc<str>,
    cache: Cache,
    node_type: NodeType,
}

type Receiver = watch::Receiver<Option<Arc<Published>>>;

async fn next_change(mut receiver: Receiver) -> (Result<(), watch::error::RecvError>, Receiver) {
    let changed = receiver.changed().await;
    (changed, receiver)
}

impl Drop for SnapshotWatch {
    fn drop(&mut self) {
        let mut map = self.cache.0.by_node_type.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(sender) = map.get(&self.node_type) {
            // This receiver (in `changes`) still counts while it drops.
            if sender.receiver_count() == 1 && sender.borrow().is_none() {
                map.remove(&self.node_type);
            }
        }
    }
}

impl SnapshotWatch {
    /// The node it watches for: a stream's logs name it.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn node_type(&self) -> &NodeType {
        &self.node_type
    }

    /// The snapshot this stream is served, as of the last change seen.
    pub fn current(&self) -> Option<Arc<Snapshot>> {
        self.latest.as_ref().map(|published| published.for_node(&self.node_id).clone())
    }

    /// Ready once what the node type is served changed since the last
    /// change seen; [`Self::current`] then has it.
    pub fn poll_changed(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), watch::error::RecvError>> {
        let (changed, mut receiver) = ready!(self.changes.poll(cx));
        if changed.is_ok() {
            self.latest = receiver.borrow_and_update().clone();
        }
        self.changes.set(next_change(receiver));
        Poll::Ready(changed)
    }

    /// Waits until what the node type is served changes.
    pub async fn changed(&mut self) -> Result<(), watch::error::RecvError> {
        std::future::poll_fn(|cx| self.poll_changed(cx)).await
    }
}

type Sender = watch::Sender<Option<Arc<Published>>>;

/// Snapshots by node type. Cheap to clone.
#[derive(Clone, Default)]
pub struct Cache(Arc<Inner>);

#[derive(Default)]
struct Inner {
    next_snapshot_id: std::sync::atomic::AtomicU64,
    // A std Mutex: held only to find or create a channel, never across an await.
    by_node_type: Mutex<HashMap<NodeType, Sender>>,
    /// Canary rollouts in progress (or halted), by node type.
    canaries: Mutex<HashMap<NodeType, Arc<Canary>>>,
    /// The rollouts' bundles with their own sources' endpoints, as the feed
    /// last carried them.
    candidates: Mutex<HashMap<NodeType, Arc<Served>>>,
}

impl Cache {
    /// Watches what the streams of `node_type` are served, as `node_id` sees it.
    pub fn subscribe(&self, node_type: &NodeType, node_id: impl Into<Arc<str>>) -> SnapshotWatch {
        let mut map = self.0.by_node_type.lock().unwrap_or_else(|p| p.into_inner());
        let mut receiver = map.entry(node_type.clone()).or_insert_with(|| watch::channel(None).0).subscribe();
        let latest = receiver.borrow_and_update().clone();
        let changes = ReusableBoxFuture::new(next_change(receiver));
        SnapshotWatch { changes, latest, node_id: node_id.into(), cache: self.clone(), node_type: node_type.clone() }
    }

    /// The snapshot every stream of `node_type` not in a canary is served.
    pub fn stable(&self, node_type: &NodeType) -> Option<Arc<Snapshot>> {
        let map = self.0.by_node_type.lock().unwrap_or_else(|p| p.into_inner());
        map.get(node_type).and_then(|sender| sender.borrow().as_ref().map(|p| p.stable.clone()))
    }

    /// The snapshot the canaries of `node_type` are served, during a rollout.
    pub fn canary(&self, node_type: &NodeType) -> Option<Arc<Snapshot>> {
        let map = self.0.by_node_type.lock().unwrap_or_else(|p| p.into_inner());
        map.get(node_type).and_then(|sender| sender.borrow().as_ref().and_then(|p| p.canary.as_ref().map(|(_, s)| s.clone())))
    }

    /// Serves `canary` (or, with `None`, no canary any more) to the matching
    /// streams of `node_type`, beside its bundle.
    pub fn set_canary(&self, node_type: &NodeType, canary: Option<Canary>) {
        {
            let mut canaries = self.0.canaries.lock().unwrap_or_else(|p| p.into_inner());
            match canary {
                Some(canary) => canaries.insert(node_type.clone(), Arc::new(canary)),
                None => canaries.remove(node_type),
            };
        }
        self.republish(node_type);
    }

    /// Publishes `node_type`'s snapshot again, with its canary as it is now.
    fn republish(&self, node_type: &NodeType) {
        let mut map = self.0.by_node_type.lock().unwrap_or_else(|p| p.into_inner());
        let Some(sender) = map.get_mut(node_type) else { return };
        let stable = sender.borrow().as_ref().map(|p| p.stable.clone());
        if let Some(stable) = stable {
            let published = self.publish(node_type, stable);
            sender.send_replace(Some(published));
        }
    }

    /// `stable` with the canary of `node_type`, if there is one.
    fn publish(&self, node_type: &NodeType, stable: Arc<Snapshot>) -> Arc<Published> {
        let canary = self.0.canaries.lock().unwrap_or_else(|p| p.into_inner()).get(node_type).cloned();
        let canary = canary.map(|canary| {
            let bundle = match &canary.serve {
                CanaryServe::Candidate(bundle) => bundle.clone(),
                CanaryServe::Previous { version } => Arc::new(StoredBundle { version: version.clone(), ..(*stable.source).clone() }),
            };
            let candidate = match &canary.serve {
                CanaryServe::Candidate(bundle) => self.candidate(node_type).filter(|candidate| Arc::ptr_eq(&candidate.bundle, bundle)),
                CanaryServe::Previous { .. } => None,
            };
            let discovered = match candidate {
                // What the candidate's own sources found.
                Some(candidate) => candidate.discovered.clone(),
                // The endpoints of the bundle's sources, under the canary's version.
                None => stable.discovered.as_ref().map(|d| {
                    let suffix = d.eds_version.strip_prefix(stable.version()).unwrap_or_default();
                    Arc::new(Discovered { eds_version: format!("{}{suffix}", bundle.version), assignments: d.assignments.clone(), rendered: d.rendered.clone() })
                }),
            };
            let id = self.0.next_snapshot_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let snapshot = Arc::new(Snapshot::build_served(id, Served { bundle, discovered, candidate: None }, Some(&stable)));
            (canary, snapshot)
        });
        Arc::new(Published { stable, canary })
    }

    fn candidate(&self, node_type: &NodeType) -> Option<Arc<Served>> {
        self.0.candidates.lock().unwrap_or_else(|p| p.into_inner()).get(node_type).cloned()
    }

    /// Takes in the candidates `catalog` carries; answers the node types
    /// whose candidate changed (its bundle, or what its sources found).
    fn take_candidates(&self, catalog: &ServedCatalog) -> Vec<NodeType> {
        let mut candidates = self.0.candidates.lock().unwrap_or_else(|p| p.into_inner());
        let fresh: HashMap<NodeType, Arc<Served>> =
            catalog.iter().filter_map(|(node_type, served)| Some((node_type.clone(), served.candidate.clone()?))).collect();
        let same = |a: &Served, b: &Served| {
            Arc::ptr_eq(&a.bundle, &b.bundle) && a.discovered.as_ref().map(Arc::as_ptr) == b.discovered.as_ref().map(Arc::as_ptr)
        };
        let moved = fresh.iter().filter(|(node_type, new)| !candidates.get(*node_type).is_some_and(|old| same(old, new)));
        let mut changed: Vec<NodeType> = moved.map(|(node_type, _)| node_type.clone()).collect();
        changed.extend(candidates.keys().filter(|node_type| !fresh.contains_key(*node_type)).cloned());
        *candidates = fresh;
        changed
    }

    /// Brings every node type in line with `catalog`. Bundles that did not
    /// change (nor their sources' endpoints) are not re-encoded; node types
    /// that lost their bundle stop serving new streams, while connected
    /// Envoys keep what they have. Answers how many snapshots it built.
    pub fn apply(&self, catalog: &ServedCatalog) -> usize {
        let recanary = self.take_candidates(catalog);
        type Stale = (NodeType, Served, Option<Arc<Snapshot>>);
        let stale: Vec<Stale> = {
            let map = self.0.by_node_type.lock().unwrap_or_else(|p| p.into_inner());
            catalog
                .iter()
                .filter_map(|(node_type, served)| {
                    let current = map.get(node_type).and_then(|s| s.borrow().as_ref().map(|p| p.stable.clone()));
                    let fresh = current.as_ref().is_some_and(|snapshot| {
                        let same_discovered = match (&snapshot.discovered, &served.discovered) {
                            (None, None) => true,
                            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                            _ => false,
                        };
                        Arc::ptr_eq(&snapshot.source, &served.bundle) && same_discovered
                    });
                    (!fresh).then(|| (node_type.clone(), served.clone(), current))
                })
                .collect()
        };
        // Encode outside the lock: a large bundle takes milliseconds.
        let started = std::time::Instant::now();
        let built: Vec<(NodeType, Arc<Snapshot>)> = stale
            .into_iter()
            .map(|(node_type, served, current)| {
                let id = self.0.next_snapshot_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                (node_type, Arc::new(Snapshot::build_served(id, served, current.as_deref())))
            })
            .collect();

        let count = built.len();
        // A promoted candidate is the bundle now: its canary is done.
        {
            let mut canaries = self.0.canaries.lock().unwrap_or_else(|p| p.into_inner());
            for (node_type, snapshot) in &built {
                let promoted = canaries.get(node_type).is_some_and(|c| matches!(&c.serve, CanaryServe::Candidate(b) if b.version == snapshot.version()));
                if promoted {
                    canaries.remove(node_type);
                }
            }
        }
        let published: Vec<(NodeType, Arc<Published>)> = built.into_iter().map(|(node_type, snapshot)| {
            let published = self.publish(&node_type, snapshot);
            (node_type, published)
        }).collect();
        // A canary whose candidate's endpoints moved while the bundle did not.
        let recanary: Vec<NodeType> = recanary.into_iter().filter(|node_type| !published.iter().any(|(n, _)| n == node_type)).collect();
        for node_type in recanary {
            self.republish(&node_type);
        }
        let mut map = self.0.by_node_type.lock().unwrap_or_else(|p| p.into_inner());
        for (node_type, published) in published {
            let snapshot = &published.stable;
            tracing::info!(%node_type, version = snapshot.version(), eds_version = &**snapshot.type_version(ResourceType::Endpoint), build_ms = started.elapsed().as_millis() as u64, "snapshot updated");
            map.entry(node_type).or_insert_with(|| watch::channel(None).0).send_replace(Some(published));
        }
        for (node_type, sender) in map.iter() {
            if !catalog.contains_key(node_type) && sender.borrow().is_some() {
                tracing::info!(%node_type, "bundle deleted; connected Envoys keep their config");
                sender.send_replace(None);
            }
        }
        count
    }

    /// Follows the feed of what to serve (the store's catalog, with the
    /// endpoints of its sources) until shutdown.
    pub async fn follow(self, mut feed: watch::Receiver<Arc<ServedCatalog>>, metrics: crate::metrics::Metrics, shutdown: CancellationToken) {
        loop {
            let catalog = feed.borrow_and_update().clone();
            let started = std::time::Instant::now();
            if self.apply(&catalog) > 0 {
                metrics.snapshot_build(started.elapsed());
            }
            tokio::select! {
                changed = feed.changed() => if changed.is_err() { return },
                () = shutdown.cancelled() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::{cluster::v3::Cluster, endpoint::v3::ClusterLoadAssignment};
    use envoy_types::pb::google::protobuf::Any;
    use prost::Message;

    use super::*;
    use crate::schema::StoredResource;

    fn stored(version: &str, clusters: &[&str]) -> Arc<StoredBundle> {
        let cluster = |name: &str| StoredResource {
            field: ResourceType::Cluster.bundle_field(),
            name: name.to_owned(),
            value: Cluster { name: name.to_owned(), ..Default::default() }.encode_to_vec().into(),
        };
        let endpoints = StoredResource {
            field: ResourceType::Endpoint.bundle_field(),
            name: "a".to_owned(),
            value: ClusterLoadAssignment { cluster_name: "a".into(), ..Default::default() }.encode_to_vec().into(),
        };
        let resources = clusters.iter().map(|name| cluster(name)).chain([endpoints]).collect();
        Arc::new(StoredBundle { version: version.to_owned(), content_hash: String::new(), resources })
    }

    #[test]
    fn each_entry_is_a_slice_of_its_types_one_chunk_around_the_resources_any() {
        let snapshot = Snapshot::build(1, stored("v1", &["b", "a", "c"]), None);
        let chunk = snapshot.all_entries(ResourceType::Cluster);
        let entries = snapshot.resources(ResourceType::Cluster);
        assert_eq!(entries.iter().map(|r| &**r.name()).collect::<Vec<_>>(), ["a", "b", "c"]);
        let mut at = chunk.as_ptr();
        for r in entries {
            assert_eq!(r.entry().as_ptr(), at, "{} is in the chunk, in order", r.name());
            at = at.wrapping_add(r.entry().len());
            let any = Any::decode(r.any()).unwrap();
            assert_eq!((any.type_url.as_str(), Cluster::decode(any.value.as_slice()).unwrap().name.as_str()), (ResourceType::Cluster.type_url(), &**r.name()));
            assert_eq!(r.entry(), &crate::wire::encode_bytes_field(crate::wire::discovery_response::RESOURCES, &r.any()));
            assert_eq!(r.digest(), crate::wire::digest(&r.any()));
        }
        assert_eq!(at, chunk.as_ptr().wrapping_add(chunk.len()));
    }

    #[test]
    fn unchanged_resources_keep_their_digest_across_versions() {
        let v1 = Snapshot::build(1, stored("v1", &["a", "b"]), None);
        let v2 = Snapshot::build(2, stored("v2", &["a"]), Some(&v1));
        assert_eq!(v1.digest(ResourceType::Cluster, "a"), v2.digest(ResourceType::Cluster, "a"));
        assert_eq!(v2.digest(ResourceType::Cluster, "b"), None);
        assert!(!v2.contains(ResourceType::Cluster, "b"));
        assert!(v2.type_differs(&v1, ResourceType::Cluster));
        assert!(!v2.type_differs(&v1, ResourceType::Endpoint));
        let v3 = Snapshot::build(3, stored("v3", &["a"]), Some(&v2));
        assert!(v3.same_resources(&v2) && !v3.same_resources(&v1));
    }

    #[test]
    fn a_snapshot_shares_the_names_of_the_one_before() {
        let v1 = Snapshot::build(1, stored("v1", &["a", "c", "d"]), None);
        let v2 = Snapshot::build(2, stored("v2", &["b", "c", "d", "e"]), Some(&v1));
        fn shared(earlier: &Snapshot, later: &Snapshot) -> Vec<String> {
            let earlier: Vec<&Arc<str>> = earlier.shared_names(ResourceType::Cluster).collect();
            let later = later.shared_names(ResourceType::Cluster);
            later.filter(|name| earlier.iter().any(|e| Arc::ptr_eq(e, name))).map(|name| name.to_string()).collect()
        }
        assert_eq!(shared(&v1, &v2), ["c", "d"], "kept names are the same allocation; new ones are new");
        assert_eq!(v2.names(ResourceType::Cluster).collect::<Vec<_>>(), ["b", "c", "d", "e"]);
        let v3 = Snapshot::build(3, stored("v3", &["c", "e"]), Some(&v2));
        assert_eq!(shared(&v1, &v3), ["c"], "down the chain");
        assert_eq!(shared(&v2, &v3), ["c", "e"]);
    }

    #[test]
    fn a_snapshot_knows_what_changed_since_the_one_it_replaced() {
        let v1 = Snapshot::build(1, stored("v1", &["a"]), None);
        let v2 = Snapshot::build(2, stored("v2", &["a", "b"]), Some(&v1));
        let v3 = Snapshot::build(3, stored("v3", &["a", "b"]), Some(&v2));
        assert_eq!(v2.changed_since(&v1, ResourceType::Cluster), Some(&[Arc::from("b")][..]));
        assert_eq!(v3.changed_since(&v2, ResourceType::Cluster), Some(&[][..]));
        assert_eq!(v3.changed_since(&v1, ResourceType::Cluster), None, "only relative to the one it replaced");
        let v4 = Snapshot::build(4, stored("v4", &["b"]), Some(&v3));
        assert_eq!(v4.removed_since(&v3, ResourceType::Cluster), Some(&[Arc::from("a")][..]));
        assert_eq!(v4.removed_since(&v2, ResourceType::Cluster), None);
    }

    #[test]
    fn apply_follows_the_catalog_and_skips_unchanged_bundles() {
        let cache = Cache::default();
        let node_type = NodeType::parse("sidecar").unwrap();
        let mut watch = cache.subscribe(&node_type, "sidecar-a");
        // Whether a change is ready now, without waiting.
        let changed = |watch: &mut SnapshotWatch| {
            watch.poll_changed(&mut Context::from_waker(std::task::Waker::noop())).map(|changed| changed.unwrap()).is_ready()
        };
        assert!(watch.current().is_none());
        assert!(!changed(&mut watch));

        let mut catalog = crate::store::Catalog::new();
        catalog.insert(node_type.clone(), stored("v1", &["a"]));
        cache.apply(&crate::discovery::as_stored(&catalog));
        assert!(changed(&mut watch));
        assert_eq!(watch.current().as_ref().unwrap().version(), "v1");

        cache.apply(&crate::discovery::as_stored(&catalog));
        assert!(!changed(&mut watch), "the same stored bundle must not be rebuilt or re-sent");

        catalog.clear();
        cache.apply(&crate::discovery::as_stored(&catalog));
        assert!(changed(&mut watch));
        assert!(watch.current().is_none(), "a deleted bundle stops serving new streams");
    }

    #[test]
    fn a_node_type_is_forgotten_with_its_last_watch_unless_a_bundle_names_it() {
        let cache = Cache::default();
        let known = |name: &str| cache.0.by_node_type.lock().unwrap().contains_key(&NodeType::parse(name).unwrap());
        let (sidecar, gateway) = (NodeType::parse("sidecar").unwrap(), NodeType::parse("gateway").unwrap());
        let (first, second) = (cache.subscribe(&sidecar, "sidecar-a"), cache.subscribe(&sidecar, "sidecar-b"));
        drop(first);
        assert!(known("sidecar"), "another stream still watches it");
        drop(second);
        assert!(!known("sidecar"), "dropped however the stream ended (REST polls are cancelled mid-wait)");

        let mut catalog = crate::store::Catalog::new();
        catalog.insert(gateway.clone(), stored("v1", &["a"]));
        cache.apply(&crate::discovery::as_stored(&catalog));
        drop(cache.subscribe(&gateway, "gateway-a"));
        assert!(known("gateway"), "a node type with a bundle stays");
    }

    /// Endpoints for `clusters`, as discovery renders them.
    fn discovered(eds_version: &str, clusters: &[&str]) -> Arc<Discovered> {
        let assignment = |name: &str| StoredResource {
            field: ResourceType::Endpoint.bundle_field(),
            name: name.to_owned(),
            value: ClusterLoadAssignment { cluster_name: name.into(), ..Default::default() }.encode_to_vec().into(),
        };
        let assignments = clusters.iter().map(|c| assignment(c)).collect();
        Arc::new(Discovered { eds_version: eds_version.into(), assignments, rendered: std::collections::BTreeMap::new() })
    }

    #[test]
    fn a_canary_is_served_its_candidates_own_discovered_endpoints_as_they_move() {
        let cache = Cache::default();
        let sidecar = NodeType::parse("sidecar").unwrap();
        let (v1, v2) = (stored("v1", &["backend"]), stored("v2", &["backend", "fresh"]));
        let stable = Served { discovered: Some(discovered("v1+cloudmap.1.0", &["backend"])), ..Served::stored(v1) };
        let feed = |candidate: Option<Arc<Discovered>>| {
            let candidate = candidate.map(|found| Arc::new(Served { discovered: Some(found), ..Served::stored(v2.clone()) }));
            ServedCatalog::from([(sidecar.clone(), Served { candidate, ..stable.clone() })])
        };
        cache.apply(&feed(None));
        let stable_snapshot = cache.stable(&sidecar).unwrap();

        // The rollout starts before discovery has the candidate: the stable endpoints, under v2.
        cache.set_canary(&sidecar, Some(Canary { glob: "sidecar-canary-*".into(), serve: CanaryServe::Candidate(v2.clone()) }));
        let canary = cache.canary(&sidecar).unwrap();
        assert_eq!(&**canary.type_version(ResourceType::Endpoint), "v2+cloudmap.1.0");
        assert!(!canary.contains(ResourceType::Endpoint, "fresh"));

        // Then the candidate's own sources answer: the canary has them; the others' snapshot is not rebuilt.
        cache.apply(&feed(Some(discovered("v2+cloudmap.6.1", &["backend", "fresh"]))));
        let canary = cache.canary(&sidecar).unwrap();
        assert_eq!(&**canary.type_version(ResourceType::Endpoint), "v2+cloudmap.6.1");
        assert!(canary.contains(ResourceType::Endpoint, "fresh"));
        assert!(Arc::ptr_eq(&cache.stable(&sidecar).unwrap(), &stable_snapshot));
        assert!(!stable_snapshot.contains(ResourceType::Endpoint, "fresh"));

        // They move again.
        cache.apply(&feed(Some(discovered("v2+cloudmap.7.2", &["backend", "fresh"]))));
        assert_eq!(&**cache.canary(&sidecar).unwrap().type_version(ResourceType::Endpoint), "v2+cloudmap.7.2");

        // A rollout started after discovery has the candidate is served it at once.
        cache.set_canary(&sidecar, None);
        assert!(cache.canary(&sidecar).is_none());
        cache.set_canary(&sidecar, Some(Canary { glob: "sidecar-canary-*".into(), serve: CanaryServe::Candidate(v2.clone()) }));
        assert_eq!(&**cache.canary(&sidecar).unwrap().type_version(ResourceType::Endpoint), "v2+cloudmap.7.2");
    }
}
