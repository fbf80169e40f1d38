//! What each connected Envoy has accepted or rejected, per stream and type:
//! the visibility behind `GET /nodes` (R7: every NACK is visible).

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::SystemTime,
};

use serde::Serialize;

use crate::{node_type::NodeType, resource_type::ResourceType};

/// The latest word of one Envoy on one resource type.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TypeStatus {
    /// The last version it ACKed.
    pub acked_version: Option<Arc<str>>,
    /// The last version sent to it.
    pub sent_version: Option<Arc<str>>,
    /// Its last NACK, kept until a later ACK.
    pub rejected: Option<Box<Rejection>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Rejection {
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
    pub connected_at_unix_ms: u128,
    /// By type name; types never requested are absent.
    #[serde(serialize_with = "by_type_name")]
    pub types: [Option<TypeStatus>; 4],
}

fn by_type_name<S: serde::Serializer>(types: &[Option<TypeStatus>; 4], serializer: S) -> Result<S::Ok, S::Error> {
    let named = ResourceType::ALL.iter().zip(types).filter_map(|(ty, status)| Some((ty.name(), status.as_ref()?)));
    serializer.collect_map(named)
}

/// Every connected stream's status. Cheap to clone.
#[derive(Clone, Default)]
pub struct Registry(Arc<Inner>);

#[derive(Default)]
struct Inner {
    next_id: AtomicU64,
    // A std Mutex: each update is a map lookup, never held across an await.
    streams: Mutex<BTreeMap<u64, StreamStatus>>,
}

fn now_ms() -> u128 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis())
}

impl Registry {
    /// Registers a stream; it is removed when the returned handle drops.
    pub fn open(&self, node_id: &str, node_type: &NodeType, service: &'static str) -> StreamHandle {
        let stream_id = self.0.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let status = StreamStatus {
            stream_id,
            node_id: node_id.to_owned(),
            node_type: node_type.to_string(),
            service,
            connected_at_unix_ms: now_ms(),
            types: Default::default(),
        };
        self.lock().insert(stream_id, status);
        StreamHandle { registry: self.clone(), stream_id }
    }

    /// A copy of every stream's status, oldest first.
    pub fn list(&self) -> Vec<StreamStatus> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, StreamStatus>> {
        self.0.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, stream_id: u64, ty: ResourceType, f: impl FnOnce(&mut TypeStatus)) {
        if let Some(stream) = self.lock().get_mut(&stream_id) {
            f(stream.types[ty.index()].get_or_insert_with(TypeStatus::default));
        }
    }
}

/// A stream's entry in the registry.
pub struct StreamHandle {
    registry: Registry,
    stream_id: u64,
}

impl StreamHandle {
    pub fn id(&self) -> u64 {
        self.stream_id
    }

    pub fn sent(&self, ty: ResourceType, version: &Arc<str>) {
        self.registry.update(self.stream_id, ty, |s| s.sent_version = Some(version.clone()));
    }

    pub fn acked(&self, ty: ResourceType, version: &str) {
        self.registry.update(self.stream_id, ty, |s| {
            if s.acked_version.as_deref() != Some(version) {
                // Usually the version just sent: share it rather than copy it.
                let sent = s.sent_version.as_ref().filter(|sent| &***sent == version);
                s.acked_version = Some(sent.cloned().unwrap_or_else(|| version.into()));
            }
            s.rejected = None;
        });
    }

    pub fn rejected(&self, ty: ResourceType, nonce: &str, error: &str) {
        let rejection = Rejection { nonce: nonce.to_owned(), error: error.to_owned(), at_unix_ms: now_ms() };
        self.registry.update(self.stream_id, ty, |s| s.rejected = Some(Box::new(rejection)));
    }
}

impl Drop for StreamHandle {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.stream_id);
    }
}
