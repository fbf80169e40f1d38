//! The simulated Envoy over delta xDS (`DeltaAggregatedResources`, or the
//! per-type `Delta*` methods).
//!
//! It subscribes to CDS and LDS with an empty first request (the legacy
//! wildcard), then to EDS and RDS by the names the clusters and listeners
//! it holds refer to (`resource_names_subscribe`, and `_unsubscribe` for
//! names no longer referred to, sent before the ACK as Envoy does). Like
//! Envoy, it asks nothing more for the endpoints (routes) of a cluster
//! (listener) a response changed, and on ADS waits for them: the server
//! sends them unasked (R21, R22). It keeps
//! what it holds, name → version, applying `removed_resources`, and ACKs
//! each response by nonce. A type is at version V (the response's
//! `system_version_info`, the bundle version in sxds) once a response at V
//! has arrived and every name it subscribed to has been answered.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Instant,
};

use envoy_types::pb::envoy::{
    config::core::v3::Node,
    service::{
        cluster::v3::cluster_discovery_service_client::ClusterDiscoveryServiceClient,
        discovery::v3::{
            aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DeltaDiscoveryRequest, DeltaDiscoveryResponse,
            Resource,
        },
        endpoint::v3::endpoint_discovery_service_client::EndpointDiscoveryServiceClient,
        listener::v3::listener_discovery_service_client::ListenerDiscoveryServiceClient,
        route::v3::route_discovery_service_client::RouteDiscoveryServiceClient,
    },
};
use futures::{stream::SelectAll, StreamExt};
use sxds::resource_type::{PerType, ResourceType};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::{child, connected, eds_name, lock, rds_names, NodeRecord, Service, Shared, MAX_MESSAGE, REQUEST_BUFFER, TYPES};

/// One resource at one version, as every node that holds it shares it.
#[derive(Debug)]
pub struct Held {
    version: Arc<str>,
    /// The EDS (of a cluster) or RDS (of a listener) names it refers to.
    children: Vec<Arc<str>>,
}

/// What a node keeps of one type.
#[derive(Default)]
struct TypeState {
    /// Requests of this type go here (the ADS sender, or the type's own stream).
    sender: Option<mpsc::Sender<DeltaDiscoveryRequest>>,
    /// The names subscribed to (EDS, RDS); CDS and LDS are wildcards.
    names: HashSet<Arc<str>>,
    /// Subscribed names no response has answered yet.
    awaiting: HashSet<Arc<str>>,
    held: HashMap<Arc<str>, Arc<Held>>,
}

type Responses = SelectAll<futures::stream::BoxStream<'static, Result<DeltaDiscoveryResponse, tonic::Status>>>;

/// Open, subscribe, ACK until the stream ends: delta.
pub(super) async fn session(shared: &Shared, record: &Mutex<NodeRecord>, node: &Node, index: usize) -> Result<(), String> {
    let mut types: PerType<TypeState> = PerType::default();
    let mut responses = Responses::new();
    let channel = {
        let (channel, _permit) = shared.connect(index).await?;
        match shared.config.service {
            Service::Ads => {
                let (tx, rx) = mpsc::channel(REQUEST_BUFFER);
                for ty in [ResourceType::Cluster, ResourceType::Listener] {
                    let _ = tx.send(request(node, ty, Vec::new(), Vec::new(), String::new())).await;
                }
                let mut client = AggregatedDiscoveryServiceClient::new(channel.clone()).max_decoding_message_size(MAX_MESSAGE);
                let inbound = client.delta_aggregated_resources(ReceiverStream::new(rx)).await.map_err(|s| format!("delta ADS: {s}"))?;
                responses.push(inbound.into_inner().boxed());
                for ty in TYPES {
                    types[ty].sender = Some(tx.clone());
                }
            }
            Service::Separate => {
                for ty in [ResourceType::Cluster, ResourceType::Listener] {
                    let first = request(node, ty, Vec::new(), Vec::new(), String::new());
                    types[ty].sender = Some(open_single(&channel, ty, first, &mut responses).await?);
                }
            }
        }
        channel
    };
    connected(record);

    while let Some(message) = responses.next().await {
        let response = message.map_err(|s| format!("stream: {s}"))?;
        let Some(ty) = ResourceType::from_type_url(&response.type_url).filter(|ty| TYPES.contains(ty)) else { continue };
        let received_at = Instant::now();
        apply(shared, ty, &mut types[ty], &response);

        if let Some(child) = child(ty) {
            let wanted: HashSet<Arc<str>> = types[ty].held.values().flat_map(|held| held.children.iter().cloned()).collect();
            // The clusters (listeners) this response changed warm until
            // fresh endpoints (routes) arrive; subscribed already, Envoy asks
            // nothing, and on ADS the server follows up unasked (R21, R22).
            let changed: HashSet<Arc<str>> = response
                .resources
                .iter()
                .filter_map(|resource| types[ty].held.get(resource.name.as_str()))
                .flat_map(|held| held.children.iter().cloned())
                .collect();
            let sub = &mut types[child];
            let rewarmed: Vec<Arc<str>> = changed.intersection(&sub.names).cloned().collect();
            let added: Vec<Arc<str>> = wanted.difference(&sub.names).cloned().collect();
            let dropped: Vec<Arc<str>> = sub.names.difference(&wanted).cloned().collect();
            if shared.config.service == Service::Ads {
                sub.awaiting.extend(rewarmed);
            }
            if !added.is_empty() || !dropped.is_empty() {
                // What is unsubscribed is forgotten: the server says nothing more of it.
                for name in &dropped {
                    sub.names.remove(name);
                    sub.awaiting.remove(name);
                    sub.held.remove(name);
                }
                lock(record).types[child].held = Some(sub.held.len());
                sub.names.extend(added.iter().cloned());
                sub.awaiting.extend(added.iter().cloned());
                let update = request(node, child, strings(&added), strings(&dropped), String::new());
                match &sub.sender {
                    Some(tx) => tx.send(update).await.map_err(|_| "request stream closed".to_owned())?,
                    None => sub.sender = Some(open_single(&channel, child, update, &mut responses).await?),
                }
            }
        }

        let state = &types[ty];
        let ack = request(node, ty, Vec::new(), Vec::new(), response.nonce);
        let tx = state.sender.as_ref().ok_or("response on a type never requested")?;
        tx.send(ack).await.map_err(|_| "request stream closed".to_owned())?;

        let complete = state.awaiting.is_empty().then_some(response.system_version_info.as_str());
        lock(record).types[ty].took(response.resources.len(), Some(state.held.len()), complete, received_at);
    }
    Err("stream closed by the server".to_owned())
}

/// Takes in a response's resources and removals.
fn apply(shared: &Shared, ty: ResourceType, state: &mut TypeState, response: &DeltaDiscoveryResponse) {
    if !response.resources.is_empty() {
        let mut fleet = shared.held.lock().unwrap_or_else(|p| p.into_inner());
        for resource in &response.resources {
            let (name, held) = intern(&mut fleet[ty], ty, resource);
            state.awaiting.remove(&name);
            state.held.insert(name, held);
        }
    }
    for name in &response.removed_resources {
        state.held.remove(name.as_str());
        state.awaiting.remove(name.as_str());
    }
}

/// The fleet's shared copy of `resource`: its name, version and the names it
/// refers to, decoded by the first node that receives this version of it.
fn intern(known: &mut HashMap<Arc<str>, Arc<Held>>, ty: ResourceType, resource: &Resource) -> (Arc<str>, Arc<Held>) {
    if let Some((name, held)) = known.get_key_value(resource.name.as_str()) {
        if *held.version == *resource.version {
            return (name.clone(), held.clone());
        }
    }
    let children = match (ty, &resource.resource) {
        (ResourceType::Cluster, Some(any)) => eds_name(any).into_iter().collect(),
        (ResourceType::Listener, Some(any)) => rds_names(any),
        _ => Vec::new(),
    };
    let held = Arc::new(Held { version: resource.version.as_str().into(), children: children.into_iter().map(Arc::from).collect() });
    let name: Arc<str> = resource.name.as_str().into();
    known.insert(name.clone(), held.clone());
    (name, held)
}

fn strings(names: &[Arc<str>]) -> Vec<String> {
    names.iter().map(|name| name.to_string()).collect()
}

/// A delta request of `ty`: subscription changes, or the ACK of `nonce`.
fn request(node: &Node, ty: ResourceType, subscribe: Vec<String>, unsubscribe: Vec<String>, nonce: String) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        node: Some(node.clone()),
        type_url: ty.type_url().to_owned(),
        resource_names_subscribe: subscribe,
        resource_names_unsubscribe: unsubscribe,
        response_nonce: nonce,
        ..DeltaDiscoveryRequest::default()
    }
}

/// Opens the per-type delta stream of `ty` (separate services) with its first request.
async fn open_single(
    channel: &Channel,
    ty: ResourceType,
    first: DeltaDiscoveryRequest,
    responses: &mut Responses,
) -> Result<mpsc::Sender<DeltaDiscoveryRequest>, String> {
    let (tx, rx) = mpsc::channel(REQUEST_BUFFER);
    tx.send(first).await.map_err(|e| e.to_string())?;
    let rx = ReceiverStream::new(rx);
    let channel = channel.clone();
    let opened = match ty {
        ResourceType::Cluster => ClusterDiscoveryServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE).delta_clusters(rx).await,
        ResourceType::Listener => ListenerDiscoveryServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE).delta_listeners(rx).await,
        ResourceType::Endpoint => EndpointDiscoveryServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE).delta_endpoints(rx).await,
        ResourceType::Route => RouteDiscoveryServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE).delta_routes(rx).await,
        other => return Err(format!("the load generator simulates no {other} stream")),
    };
    let inbound = opened.map_err(|s| format!("delta {ty}: {s}"))?;
    responses.push(inbound.into_inner().boxed());
    Ok(tx)
}
