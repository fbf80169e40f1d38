//! What each connected Envoy has accepted or rejected, per stream and type:
//! the visibility behind `GET /nodes` (R7: every NACK is visible).

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Instant, SystemTime},
};

use serde::Serialize;

use crate::{
    metrics::{Metrics, StreamMetrics},
    node_type::NodeType,
    resource_type::{PerType, ResourceType},
};

/// The latest word of one Envoy on one resource type.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TypeStatus {
    /// The last version it ACKed.
    pub acked_version: Option<Arc<str>>,
    /// The last version sent to it.
    pub sent_version: Option<Arc<str>>,
    /// Its last NACK, kept until a later ACK.
    pub rejected: Option<Box<Rejection>>,
    /// When `sent_version` went out, until its ACK: push-to-ACK latency.
    #[serde(skip)]
    pub sent_at: Option<Instant>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Rejection {
    /// The version rejected: the one sent last when the NACK came (a NACK
    /// names the latest nonce, R10). Later sends do not change it.
    pub version: Option<Arc<str>>,
    pub nonce: String,
    pub error: String,
    pub at_unix_ms: u128,
}

/// One connected stream.
#[derive(Debug, Clone, Serialize)]
pub struct StreamStatus {
    pub stream_id: u64,
    pub node_id: String,
    pub node_type: String,
    /// `ads`, or the single type of a per-type service.
    pub service: &'static str,
    /// `sotw` (state of the world) or `delta`.
    pub protocol: &'static str,
    pub connected_at_unix_ms: u128,
    /// By type name; types never requested are absent.
    #[serde(serialize_with = "by_type_name")]
    pub types: PerType<Option<Box<TypeStatus>>>,
}

fn by_type_name<S: serde::Serializer>(types: &PerType<Option<Box<TypeStatus>>>, serializer: S) -> Result<S::Ok, S::Error> {
    let named = types.iter().filter_map(|(ty, status)| Some((ty.name(), status.as_ref()?)));
    serializer.collect_map(named)
}

/// Every connected stream's status. Cheap to clone.
///
/// Each stream owns its entry and updates it under the entry's own lock, so
/// a send or an ACK never contends with other streams; the map is locked
/// only when a stream opens or closes, and briefly by readers to take the
/// list of entries.
#[derive(Clone, Default)]
pub struct Registry(Arc<Inner>);

#[derive(Default)]
struct Inner {
    next_id: AtomicU64,
    // A std Mutex: held for one insert, remove or walk over the keys, never across an await.
    streams: Mutex<BTreeMap<u64, Arc<Entry>>>,
    metrics: Metrics,
}

/// One stream's status: fixed at open, then its per-type state.
struct Entry {
    stream_id: u64,
    // Shared with the stream's snapshot watch: one copy per stream.
    node_id: Arc<str>,
    node_type: NodeType,
    service: &'static str,
    protocol: &'static str,
    connected_at_unix_ms: u128,
    // Only this stream writes it; readers copy it out.
    // Boxed: a stream uses a few of the types.
    types: Mutex<PerType<Option<Box<TypeStatus>>>>,
}

impl Entry {
    fn status(&self) -> StreamStatus {
        StreamStatus {
            stream_id: self.stream_id,
            node_id: self.node_id.to_string(),
            node_type: self.node_type.to_string(),
            service: self.service,
            protocol: self.protocol,
            connected_at_unix_ms: self.connected_at_unix_ms,
            types: lock(&self.types).clone(),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn now_ms() -> u128 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis())
}

impl Registry {
    /// Registers a stream; it is removed when the returned handle drops.
    pub fn open(&self, node_id: impl Into<Arc<str>>, node_type: &NodeType, service: &'static str, protocol: &'static str) -> StreamHandle {
        let stream_id = self.0.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let entry = Arc::new(Entry {
            stream_id,
            node_id: node_id.into(),
            node_type: node_type.clone(),
            service,
            protocol,
            connected_at_unix_ms: now_ms(),
            types: Mutex::default(),
        });
        lock(&self.0.streams).insert(stream_id, entry.clone());
        let metrics = self.0.metrics.stream(node_type, service);
        StreamHandle { registry: self.clone(), entry, metrics }
    }

    /// The metrics streams count into.
    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    /// A copy of every stream's status, oldest first. The map is locked
    /// only to take the entries; each is then copied under its own lock.
    pub fn list(&self) -> Vec<StreamStatus> {
        self.list_where(|_, _| true)
    }

    /// Like [`Self::list`], for the streams whose `(node type, node id)`
    /// `keep` keeps: only those are copied.
    pub fn list_where(&self, keep: impl Fn(&str, &str) -> bool) -> Vec<StreamStatus> {
        let entries: Vec<Arc<Entry>> = lock(&self.0.streams).values().filter(|e| keep(e.node_type.as_str(), &e.node_id)).cloned().collect();
        entries.iter().map(|entry| entry.status()).collect()
    }

}

/// A stream's entry in the registry, owned by the stream.
pub struct StreamHandle {
    registry: Registry,
    entry: Arc<Entry>,
    metrics: StreamMetrics,
}

impl StreamHandle {
    pub fn id(&self) -> u64 {
        self.entry.stream_id
    }

    fn update(&self, ty: ResourceType, f: impl FnOnce(&mut TypeStatus)) {
        f(lock(&self.entry.types)[ty].get_or_insert_with(Box::default));
    }

    pub fn sent(&self, ty: ResourceType, version: &Arc<str>) {
        self.metrics.sent(ty);
        let now = Instant::now();
        self.update(ty, |s| {
            s.sent_version = Some(version.clone());
            s.sent_at = Some(now);
        });
    }

    /// The client ACKed `version`, or (`None`, as delta ACKs name no
    /// version) the one last sent.
    pub fn acked(&self, ty: ResourceType, version: Option<&str>) {
        let mut push_to_ack = None;
        self.update(ty, |s| {
            let Some(version) = version.or(s.sent_version.as_deref()) else { return };
            let sent = s.sent_version.as_ref().filter(|sent| &***sent == version);
            if sent.is_some() {
                push_to_ack = s.sent_at.take().map(|at| at.elapsed());
            }
            if s.acked_version.as_deref() != Some(version) {
                // Usually the version just sent: share it rather than copy it.
                s.acked_version = Some(sent.cloned().unwrap_or_else(|| version.into()));
            }
            s.rejected = None;
        });
        self.metrics.acked(ty, push_to_ack);
    }

    /// The client holds `version` in full, by its own account, though
    /// nothing was sent (a delta reconnect, R33).
    pub fn in_sync(&self, ty: ResourceType, version: &Arc<str>) {
        self.update(ty, |s| {
            s.sent_version = Some(version.clone());
            s.acked_version = Some(version.clone());
            s.sent_at = None;
        });
    }

    pub fn rejected(&self, ty: ResourceType, nonce: &str, error: &str) {
        self.metrics.rejected(ty);
        let (nonce, error, at_unix_ms) = (nonce.to_owned(), error.to_owned(), now_ms());
        self.update(ty, |s| {
            s.sent_at = None;
            s.rejected = Some(Box::new(Rejection { version: s.sent_version.clone(), nonce, error, at_unix_ms }));
        });
    }
}

impl Drop for StreamHandle {
    fn drop(&mut self) {
        lock(&self.registry.0.streams).remove(&self.entry.stream_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_updates_its_own_entry_and_leaves_on_drop() {
        let registry = Registry::default();
        let node_type = NodeType::of_node_id("sidecar-a");
        let first = registry.open("sidecar-a", &node_type, "ads", "sotw");
        let second = registry.open("sidecar-b", &node_type, "ads", "sotw");
        first.sent(ResourceType::Cluster, &Arc::from("v1"));
        first.acked(ResourceType::Cluster, Some("v1"));
        second.sent(ResourceType::Listener, &Arc::from("v2"));
        second.rejected(ResourceType::Listener, "n1", "bad listener");
        // A later version goes out before the client answers it: the rejection still names v2.
        second.sent(ResourceType::Listener, &Arc::from("v3"));

        let list = registry.list();
        assert_eq!(list.iter().map(|s| s.node_id.as_str()).collect::<Vec<_>>(), ["sidecar-a", "sidecar-b"]);
        let clusters = list[0].types[ResourceType::Cluster].as_ref().unwrap();
        assert_eq!(clusters.acked_version.as_deref(), Some("v1"));
        assert!(list[1].types[ResourceType::Cluster].is_none());
        let listeners = list[1].types[ResourceType::Listener].as_ref().unwrap();
        let rejected = listeners.rejected.as_ref().unwrap();
        assert_eq!((rejected.error.as_str(), rejected.version.as_deref()), ("bad listener", Some("v2")));
        assert_eq!(listeners.sent_version.as_deref(), Some("v3"));

        drop(first);
        assert_eq!(registry.list().len(), 1);
        assert_eq!(registry.list()[0].node_id, "sidecar-b");
    }

    #[test]
    fn updates_take_no_registry_lock() {
        let registry = Registry::default();
        let handle = registry.open("sidecar-a", &NodeType::of_node_id("sidecar-a"), "ads", "sotw");
        // With the map held (a reader walking it, a stream opening), the
        // stream still records what it sent and what came back.
        let held = lock(&registry.0.streams);
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                handle.sent(ResourceType::Endpoint, &Arc::from("v2"));
                handle.acked(ResourceType::Endpoint, Some("v2"));
                done.send(()).unwrap();
            });
            let updated = finished.recv_timeout(std::time::Duration::from_secs(10));
            drop(held);
            assert!(updated.is_ok(), "a stream's update waited for the registry lock");
        });
        let status = registry.list().remove(0);
        assert_eq!(status.types[ResourceType::Endpoint].as_ref().unwrap().acked_version.as_deref(), Some("v2"));
    }
}
