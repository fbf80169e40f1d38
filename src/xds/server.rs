//! The xDS gRPC endpoints. ADS and the four per-type services all run the
//! same stream loop; only the [`StreamKind`] differs.
//!
//! The endpoints are plain HTTP/2 handlers rather than generated tonic
//! services: a response is one gRPC frame assembled from shared pre-encoded
//! bytes (see `codec`), and no stream keeps an encode buffer of its own.

use std::sync::Arc;

use axum::{
    body::Body,
    extract::{Request, State},
    response::{IntoResponse, Response},
    routing::post,
    Router,
};
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use http::header::CONTENT_TYPE;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};

use super::{
    codec::{self, EncodedResponse, ResponseBody},
    status::{Registry, StreamHandle},
    stream::{Received, StreamKind, StreamState},
};
use crate::{
    cache::{Cache, Snapshot, SnapshotWatch},
    node_type::NodeType,
    resource_type::ResourceType,
};

/// Responses in flight per stream: one per type, since each type holds at
/// most one unanswered response.
const RESPONSE_BUFFER: usize = 4;

/// The gRPC methods served, by path.
const METHODS: [(&str, StreamKind); 5] = [
    ("/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources", StreamKind::Aggregated),
    ("/envoy.service.listener.v3.ListenerDiscoveryService/StreamListeners", StreamKind::Single(ResourceType::Listener)),
    ("/envoy.service.cluster.v3.ClusterDiscoveryService/StreamClusters", StreamKind::Single(ResourceType::Cluster)),
    ("/envoy.service.route.v3.RouteDiscoveryService/StreamRoutes", StreamKind::Single(ResourceType::Route)),
    ("/envoy.service.endpoint.v3.EndpointDiscoveryService/StreamEndpoints", StreamKind::Single(ResourceType::Endpoint)),
];

/// Serves discovery streams from the cache. Cheap to clone.
#[derive(Clone)]
pub struct XdsServer {
    cache: Cache,
    registry: Registry,
    shutdown: CancellationToken,
}

impl XdsServer {
    pub fn new(cache: Cache, registry: Registry, shutdown: CancellationToken) -> Self {
        Self { cache, registry, shutdown }
    }

    /// The gRPC routes of every discovery method sxds answers; any other
    /// method is answered `UNIMPLEMENTED`.
    pub fn routes(&self) -> tonic::service::Routes {
        let mut router = Router::new();
        for (path, kind) in METHODS {
            router = router.route(path, post(move |State(server): State<XdsServer>, request: Request| server.serve(kind, request)));
        }
        let router = router
            .fallback(|| async { Status::unimplemented("sxds serves state-of-the-world ADS, LDS, CDS, RDS and EDS").into_http::<Body>() })
            .with_state(self.clone());
        tonic::service::Routes::from(router)
    }

    async fn serve(self, kind: StreamKind, request: Request) -> Response {
        match self.open(kind, codec::requests(request.into_body())).await {
            Ok(responses) => {
                let headers = [(CONTENT_TYPE, "application/grpc")];
                (headers, Body::new(ResponseBody::new(responses))).into_response()
            }
            Err(status) => status.into_http::<Body>(),
        }
    }

    /// Reads the first request (it must carry the node, R2) and starts the
    /// stream's loop; its responses come out of the returned channel.
    async fn open(
        &self,
        kind: StreamKind,
        mut inbound: Streaming<DiscoveryRequest>,
    ) -> Result<mpsc::Receiver<EncodedResponse>, Status> {
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("stream closed before its first request"))?;
        let node_id = match &first.node {
            Some(node) if !node.id.is_empty() => node.id.clone(),
            _ => return Err(Status::invalid_argument("the first discovery request must carry node.id")),
        };
        let node_type = NodeType::of_node_id(&node_id);
        let handle = self.registry.open(&node_id, &node_type, kind.service_name());
        tracing::info!(node_id, %node_type, service = kind.service_name(), stream = handle.id(), "stream opened");

        let (tx, rx) = mpsc::channel(RESPONSE_BUFFER);
        let mut stream = XdsStream {
            state: StreamState::new(kind),
            snapshots: self.cache.subscribe(&node_type),
            cache: self.cache.clone(),
            node_id,
            node_type,
            handle,
            tx,
        };
        stream.receive(&first);
        // The first request carries the node's metadata: it is not kept.
        drop(first);
        stream.send_due(); // were the client gone already, `run` ends at once
        tokio::spawn(stream.run(inbound, self.shutdown.clone()));
        Ok(rx)
    }
}

/// One open stream: its protocol state and its channels.
struct XdsStream {
    state: StreamState,
    snapshots: SnapshotWatch,
    cache: Cache,
    node_id: String,
    node_type: NodeType,
    handle: StreamHandle,
    tx: mpsc::Sender<EncodedResponse>,
}

impl XdsStream {
    async fn run(mut self, mut inbound: Streaming<DiscoveryRequest>, shutdown: CancellationToken) {
        let mut open = true;
        while open {
            open = tokio::select! {
                () = shutdown.cancelled() => false,
                () = self.tx.closed() => false,
                changed = self.snapshots.changed() => changed.is_ok() && self.send_due(),
                message = inbound.message() => match message {
                    Ok(Some(request)) => {
                        self.receive(&request);
                        self.send_due()
                    }
                    Ok(None) => false,
                    Err(status) => {
                        tracing::debug!(node_id = self.node_id, %status, "stream ended by the client");
                        false
                    }
                },
            };
        }
        tracing::info!(node_id = self.node_id, node_type = %self.node_type, stream = self.handle.id(), "stream closed");
        let (cache, node_type) = (self.cache.clone(), self.node_type.clone());
        drop(self);
        cache.release(&node_type);
    }

    fn receive(&mut self, request: &DiscoveryRequest) {
        let node_id = self.node_id.as_str();
        let snapshot = self.snapshots.borrow().clone();
        match self.state.on_request(request, snapshot.as_deref()) {
            Received::Ack { ty, version } => {
                tracing::debug!(node_id, %ty, version, "ACK");
                self.handle.acked(ty, version);
            }
            Received::Nack { ty, nonce, error } => {
                // R7: visible, and not resent until the bundle changes.
                tracing::warn!(node_id, node_type = %self.node_type, %ty, nonce, error, accepted_version = request.version_info, "NACK: Envoy rejected the config");
                self.handle.rejected(ty, nonce, error);
            }
            Received::Request { ty } => {
                tracing::debug!(node_id, %ty, names = request.resource_names.len(), "discovery request");
            }
            Received::Stale { ty } => {
                tracing::debug!(node_id, %ty, nonce = request.response_nonce, "stale nonce ignored");
            }
            Received::Unknown { type_url } => {
                tracing::debug!(node_id, type_url, "type not served by sxds; ignored");
            }
        }
    }

    /// Queues every response now due; `false` once the stream must end.
    /// Never waits: each type has at most one unanswered response, so the
    /// channel (one slot per type) always has room for a well-behaved client.
    fn send_due(&mut self) -> bool {
        let snapshot: Option<Arc<Snapshot>> = self.snapshots.borrow_and_update().clone();
        let Some(snapshot) = snapshot else { return true };
        for (ty, response) in self.state.due(&snapshot) {
            self.handle.sent(ty, snapshot.shared_version());
            tracing::debug!(node_id = self.node_id, %ty, version = snapshot.version(), bytes = response.len(), "response sent");
            if let Err(error) = self.tx.try_send(response) {
                if matches!(error, mpsc::error::TrySendError::Full(_)) {
                    tracing::warn!(node_id = self.node_id, "client is not reading its responses; closing the stream");
                }
                return false;
            }
        }
        true
    }
}
