//! A scripted xDS client (envoy-types' generated tonic client) for protocol
//! tests: send a request, read the next response, check for silence.

use std::time::Duration;

use envoy_types::pb::envoy::{
    config::core::v3::Node,
    service::discovery::v3::{
        aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DiscoveryRequest, DiscoveryResponse,
    },
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{transport::Channel, Streaming};

pub const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const RDS: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

/// How long a test waits for a response that must come.
const RESPONSE_BOUND: Duration = Duration::from_secs(10);

/// One open discovery stream.
pub struct XdsClient {
    requests: mpsc::Sender<DiscoveryRequest>,
    responses: Streaming<DiscoveryResponse>,
}

impl XdsClient {
    /// Opens a stream with `open` and sends `first` (which should carry node).
    pub async fn open<F, Fut>(url: &str, first: DiscoveryRequest, open: F) -> Result<Self, tonic::Status>
    where
        F: FnOnce(Channel, ReceiverStream<DiscoveryRequest>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<Streaming<DiscoveryResponse>>, tonic::Status>>,
    {
        let channel = Channel::from_shared(url.to_owned()).unwrap().connect().await.expect("connect to xDS");
        Self::open_on(channel, first, open).await
    }

    /// Like [`Self::open`] on a channel of the caller's (e.g. over TLS,
    /// see `support::tls::grpc_channel`).
    pub async fn open_on<F, Fut>(channel: Channel, first: DiscoveryRequest, open: F) -> Result<Self, tonic::Status>
    where
        F: FnOnce(Channel, ReceiverStream<DiscoveryRequest>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<Streaming<DiscoveryResponse>>, tonic::Status>>,
    {
        let (requests, rx) = mpsc::channel(16);
        requests.send(first).await.unwrap();
        let responses = open(channel, ReceiverStream::new(rx)).await?.into_inner();
        Ok(Self { requests, responses })
    }

    /// An ADS stream on `channel` whose first request is `first`; the
    /// status if the server refuses it.
    pub async fn ads_on(channel: Channel, first: DiscoveryRequest) -> Result<Self, tonic::Status> {
        Self::open_on(channel, first, |channel, requests| async move {
            AggregatedDiscoveryServiceClient::new(channel).stream_aggregated_resources(requests).await
        })
        .await
    }

    /// An ADS stream whose first request is `first`.
    pub async fn ads(url: &str, first: DiscoveryRequest) -> Self {
        Self::open(url, first, |channel, requests| async move {
            AggregatedDiscoveryServiceClient::new(channel).stream_aggregated_resources(requests).await
        })
        .await
        .expect("ADS stream opens")
    }

    pub async fn send(&self, request: DiscoveryRequest) {
        self.requests.send(request).await.expect("stream open");
    }

    /// The next response; panics if none comes within the bound.
    pub async fn recv(&mut self) -> DiscoveryResponse {
        match tokio::time::timeout(RESPONSE_BOUND, self.responses.message()).await {
            Ok(Ok(Some(response))) => response,
            Ok(other) => panic!("stream ended instead of a response: {other:?}"),
            Err(_) => panic!("no response within {RESPONSE_BOUND:?}"),
        }
    }

    /// Asserts that no response arrives within `quiet` (the server must stay silent).
    pub async fn expect_silence(&mut self, quiet: Duration) {
        if let Ok(message) = tokio::time::timeout(quiet, self.responses.message()).await {
            panic!("expected no response, got {message:?}");
        }
    }

    /// The status the stream ends with (`Code::Ok` for a clean end); panics
    /// if a response comes instead, or nothing within the bound.
    pub async fn expect_end(&mut self) -> tonic::Status {
        match tokio::time::timeout(RESPONSE_BOUND, self.responses.message()).await {
            Ok(Err(status)) => status,
            Ok(Ok(None)) => tonic::Status::ok(""),
            Ok(Ok(Some(response))) => panic!("expected the stream to end, got a response: {response:?}"),
            Err(_) => panic!("the stream did not end within {RESPONSE_BOUND:?}"),
        }
    }

    /// Takes the next response and ACKs it, keeping `names` subscribed.
    pub async fn recv_acked(&mut self, names: &[&str]) -> DiscoveryResponse {
        let response = self.recv().await;
        self.ack(&response, names).await;
        response
    }

    /// Asks for `names` of `type_url`, takes the response and ACKs it.
    pub async fn subscribe(&mut self, node_id: &str, type_url: &str, names: &[&str]) -> DiscoveryResponse {
        self.send(request(node_id, type_url, names)).await;
        self.recv_acked(names).await
    }

    /// ACKs `response` (R5): its nonce and version, no error.
    pub async fn ack(&self, response: &DiscoveryResponse, names: &[&str]) {
        self.send(ack(response, names)).await;
    }
}

pub fn node(id: &str) -> Node {
    Node { id: id.to_owned(), cluster: "test".to_owned(), ..Default::default() }
}

/// A request of `type_url` for `names`, carrying the node.
pub fn request(node_id: &str, type_url: &str, names: &[&str]) -> DiscoveryRequest {
    DiscoveryRequest {
        node: Some(node(node_id)),
        type_url: type_url.to_owned(),
        resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
        ..Default::default()
    }
}

pub fn ack(response: &DiscoveryResponse, names: &[&str]) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: response.type_url.clone(),
        version_info: response.version_info.clone(),
        response_nonce: response.nonce.clone(),
        resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
        ..Default::default()
    }
}

/// A NACK of `response` (R6): its nonce, the last accepted version, an error.
pub fn nack(response: &DiscoveryResponse, accepted_version: &str, error: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: response.type_url.clone(),
        version_info: accepted_version.to_owned(),
        response_nonce: response.nonce.clone(),
        error_detail: Some(RpcStatus { code: 3, message: error.to_owned(), details: vec![] }),
        ..Default::default()
    }
}

/// Names of the resources in a response, in order.
pub fn names(response: &DiscoveryResponse) -> Vec<String> {
    use prost::Message;
    use envoy_types::pb::envoy::config::{
        cluster::v3::Cluster, endpoint::v3::ClusterLoadAssignment, listener::v3::Listener, route::v3::RouteConfiguration,
    };
    response
        .resources
        .iter()
        .map(|any| {
            let bytes = any.value.as_slice();
            match any.type_url.as_str() {
                CDS => Cluster::decode(bytes).unwrap().name,
                EDS => ClusterLoadAssignment::decode(bytes).unwrap().cluster_name,
                LDS => Listener::decode(bytes).unwrap().name,
                RDS => RouteConfiguration::decode(bytes).unwrap().name,
                other => panic!("unexpected type {other}"),
            }
        })
        .collect()
}
