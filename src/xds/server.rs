//! The xDS gRPC services. ADS and the four per-type services all feed one
//! stream loop; only the [`StreamKind`] differs.

use std::{pin::Pin, sync::Arc};

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::{
    codec::EncodedResponse,
    services,
    status::{Registry, StreamHandle},
    stream::{Received, StreamKind, StreamState},
};
use crate::{cache::Cache, node_type::NodeType, resource_type::ResourceType};

/// Responses in flight per stream. Each type holds at most one unanswered
/// response, so four never block a well-behaved stream.
const RESPONSE_BUFFER: usize = 4;

pub type ResponseStream = Pin<Box<dyn Stream<Item = Result<EncodedResponse, Status>> + Send>>;

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

    /// The gRPC routes of every discovery service sxds answers.
    pub fn routes(&self) -> tonic::service::Routes {
        use services::*;
        tonic::service::Routes::default()
            .add_service(aggregated_discovery_service_server::AggregatedDiscoveryServiceServer::new(self.clone()))
            .add_service(listener_discovery_service_server::ListenerDiscoveryServiceServer::new(self.clone()))
            .add_service(cluster_discovery_service_server::ClusterDiscoveryServiceServer::new(self.clone()))
            .add_service(route_discovery_service_server::RouteDiscoveryServiceServer::new(self.clone()))
            .add_service(endpoint_discovery_service_server::EndpointDiscoveryServiceServer::new(self.clone()))
    }

    /// Reads the first request (it must carry the node, R2) and starts the
    /// stream's loop.
    async fn open(
        &self,
        kind: StreamKind,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let mut inbound = request.into_inner();
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
        let stream = XdsStream {
            state: StreamState::new(kind),
            snapshots: self.cache.subscribe(&node_type),
            cache: self.cache.clone(),
            node_id,
            node_type,
            handle,
            tx,
        };
        tokio::spawn(stream.run(first, inbound, self.shutdown.clone()));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// One open stream: its protocol state and its channels.
struct XdsStream {
    state: StreamState,
    snapshots: crate::cache::SnapshotWatch,
    cache: Cache,
    node_id: String,
    node_type: NodeType,
    handle: StreamHandle,
    tx: mpsc::Sender<Result<EncodedResponse, Status>>,
}

impl XdsStream {
    async fn run(mut self, first: DiscoveryRequest, mut inbound: Streaming<DiscoveryRequest>, shutdown: CancellationToken) {
        self.receive(&first);
        let mut open = self.send_due().await;
        while open {
            open = tokio::select! {
                () = shutdown.cancelled() => false,
                () = self.tx.closed() => false,
                changed = self.snapshots.changed() => changed.is_ok() && self.send_due().await,
                message = inbound.message() => match message {
                    Ok(Some(request)) => {
                        self.receive(&request);
                        self.send_due().await
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
        let node_type = self.node_type.clone();
        let cache = self.cache.clone();
        drop(self);
        cache.release(&node_type);
    }

    fn receive(&mut self, request: &DiscoveryRequest) {
        let node_id = self.node_id.as_str();
        match self.state.on_request(request) {
            Received::Ack { ty, version } => {
                tracing::debug!(node_id, %ty, version, "ACK");
                self.handle.acked(ty, &version);
            }
            Received::Nack { ty, nonce, error } => {
                // R7: visible, and not resent until the bundle changes.
                tracing::warn!(node_id, node_type = %self.node_type, %ty, nonce, error, accepted_version = request.version_info, "NACK: Envoy rejected the config");
                self.handle.rejected(ty, &nonce, &error);
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

    /// Sends every response now due; `false` once the client is gone.
    async fn send_due(&mut self) -> bool {
        let snapshot: Option<Arc<crate::cache::Snapshot>> = self.snapshots.borrow_and_update().clone();
        for (ty, response) in self.state.due(snapshot.as_ref()) {
            if let Some(snapshot) = &snapshot {
                self.handle.sent(ty, snapshot.version());
                tracing::debug!(node_id = self.node_id, %ty, version = snapshot.version(), bytes = response.len(), "response sent");
            }
            if self.tx.send(Ok(response)).await.is_err() {
                return false;
            }
        }
        true
    }
}

macro_rules! discovery_service {
    ($service:ident, $method:ident, $stream:ident, $kind:expr) => {
        #[tonic::async_trait]
        impl services::$service for XdsServer {
            type $stream = ResponseStream;

            async fn $method(
                &self,
                request: Request<Streaming<DiscoveryRequest>>,
            ) -> Result<Response<Self::$stream>, Status> {
                self.open($kind, request).await
            }
        }
    };
}

discovery_service!(AggregatedDiscoveryService, stream_aggregated_resources, StreamAggregatedResourcesStream, StreamKind::Aggregated);
discovery_service!(ListenerDiscoveryService, stream_listeners, StreamListenersStream, StreamKind::Single(ResourceType::Listener));
discovery_service!(ClusterDiscoveryService, stream_clusters, StreamClustersStream, StreamKind::Single(ResourceType::Cluster));
discovery_service!(RouteDiscoveryService, stream_routes, StreamRoutesStream, StreamKind::Single(ResourceType::Route));
discovery_service!(EndpointDiscoveryService, stream_endpoints, StreamEndpointsStream, StreamKind::Single(ResourceType::Endpoint));
