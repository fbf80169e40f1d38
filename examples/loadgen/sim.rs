//! Simulated Envoys: a fleet of xDS clients that behave the way Envoy does,
//! and the record of what each one received and when.
//!
//! Each simulated Envoy holds one HTTP/2 connection (one tonic `Channel`)
//! with node id `<node_type>-<i>`. On ADS (or, as an option, the separate
//! CDS/LDS/EDS/RDS services on that same connection) it subscribes to CDS
//! and LDS by wildcard, then to EDS and RDS for the names found in the
//! clusters and listeners it received, and ACKs every response by nonce.
//! Like Envoy it puts `node` on every request and reconnects with backoff.
//! It speaks state of the world (this file) or delta (`delta.rs`); the
//! fleet, the records and the convergence arithmetic are the same for both.
//!
//! Shared by the `loadgen` example and the `loadgen_smoke` test, so there is
//! one implementation of the simulated Envoy.

#![allow(dead_code)] // each user takes a different part

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use envoy_types::pb::envoy::{
    config::{
        cluster::v3::{cluster::ClusterDiscoveryType, cluster::DiscoveryType, Cluster},
        core::v3::Node,
        listener::v3::{filter::ConfigType, Listener},
    },
    extensions::filters::network::http_connection_manager::v3::{http_connection_manager::RouteSpecifier, HttpConnectionManager},
    service::discovery::v3::{DiscoveryRequest, DiscoveryResponse},
};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use envoy_types::pb::google::protobuf::Any;
use futures::{stream::SelectAll, StreamExt};
use prost::{Message, Name};
use sxds::resource_type::{PerType, ResourceType};
use tokio::sync::{mpsc, Semaphore, SemaphorePermit};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    transport::{Channel, Endpoint},
    Status,
};

// A path relative to this file, so that the example (`mod sim;`) and the
// smoke test (`#[path] mod sim;`) find the same file.
#[path = "delta.rs"]
mod delta;

/// The types a simulated Envoy subscribes to, in ADS order.
pub const TYPES: [ResourceType; 4] = [ResourceType::Cluster, ResourceType::Endpoint, ResourceType::Listener, ResourceType::Route];

/// Largest response a simulated Envoy accepts (10,000 clusters fit easily).
const MAX_MESSAGE: usize = 256 << 20;
/// Requests queued per stream before the node waits for the connection.
const REQUEST_BUFFER: usize = 8;

/// Which gRPC services the simulated Envoys use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// One ADS stream carrying every type.
    Ads,
    /// One stream per type (CDS, LDS, EDS, RDS) on the same connection.
    Separate,
}

/// Which flavour of xDS the simulated Envoys speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Every response carries the whole subscribed set.
    StateOfTheWorld,
    /// Responses carry only changed resources and the names removed.
    Delta,
}

/// How to reach the daemon and how hard to knock.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// `http://127.0.0.1:PORT` of the xDS server.
    pub xds_url: String,
    pub node_type: String,
    pub service: Service,
    pub protocol: Protocol,
    /// Nodes connecting at once: 10,000 connects must not stampede.
    pub connect_concurrency: usize,
    /// Local addresses to connect from, node `i` from the `i % len`-th
    /// (one loopback address pair has ~28,000 ephemeral ports); empty: the
    /// OS picks.
    pub source_addrs: Vec<IpAddr>,
}

/// What one simulated Envoy saw of one resource type.
#[derive(Debug, Clone, Default)]
pub struct TypeRecord {
    pub responses: u32,
    pub acks: u32,
    /// Resources each response carried, in order (changed ones only, on delta).
    pub sizes: Vec<u32>,
    /// Resources of the type the node holds now; `None` where the node
    /// cannot tell without decoding them: a state-of-the-world response of
    /// a named type (EDS, RDS) may carry only part of the set (R19).
    pub held: Option<usize>,
    /// Each version the first time the node held it in full, in order, with
    /// the instant its ACK was queued.
    pub versions: Vec<(String, Instant)>,
}

impl TypeRecord {
    /// One response taken and ACKed: `resources` in it, `held` after it,
    /// and `version` if the node now holds that version of the type in full.
    fn took(&mut self, resources: usize, held: Option<usize>, version: Option<&str>, at: Instant) {
        self.responses += 1;
        self.acks += 1;
        self.sizes.push(resources.try_into().unwrap_or(u32::MAX));
        self.held = held;
        if let Some(version) = version.filter(|v| self.last_version() != Some(*v)) {
            self.versions.push((version.to_owned(), at));
        }
    }

    pub fn last_version(&self) -> Option<&str> {
        self.versions.last().map(|(v, _)| v.as_str())
    }

    fn arrived(&self, version: &str) -> Option<Instant> {
        self.versions.iter().rev().find(|(v, _)| v == version).map(|(_, at)| *at)
    }
}

/// Everything one simulated Envoy saw.
#[derive(Debug, Clone, Default)]
pub struct NodeRecord {
    /// A stream is open now.
    pub connected: bool,
    pub connects: u32,
    pub errors: u32,
    pub last_error: Option<String>,
    /// The local address it connects from, if the fleet names one.
    pub source: Option<IpAddr>,
    /// Only the [`TYPES`] are ever filled in.
    pub types: PerType<TypeRecord>,
}

/// An update every node should reach: `version` on each of `types`,
/// counted from `since` (the moment the PUT was sent).
#[derive(Debug, Clone)]
pub struct Target {
    pub version: String,
    pub types: Vec<ResourceType>,
    pub since: Instant,
}

/// How a fleet reached a [`Target`].
#[derive(Debug, Clone, Default)]
pub struct Convergence {
    /// Per converged node, from `since` to its last ACK of the target; sorted.
    pub latencies: Vec<Duration>,
    /// Nodes that had not converged at the deadline.
    pub never: usize,
}

impl Convergence {
    pub fn converged(&self) -> usize {
        self.latencies.len()
    }

    /// Nearest-rank percentile over converged nodes; `None` when none did.
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        if self.latencies.is_empty() {
            return None;
        }
        let rank = ((p / 100.0) * self.latencies.len() as f64).ceil() as usize;
        Some(self.latencies[rank.clamp(1, self.latencies.len()) - 1])
    }

    pub fn first(&self) -> Option<Duration> {
        self.latencies.first().copied()
    }

    pub fn max(&self) -> Option<Duration> {
        self.latencies.last().copied()
    }
}

/// Sorted resource names, shared by every node that subscribes to them.
type Names = Arc<NameList>;

/// A list of names with its encoding as a request's `resource_names`: an
/// ACK repeats the list (hundreds of names on a large mesh), and copying
/// one piece instead of cloning and encoding each name keeps the load
/// generator, which shares the two cores with the daemon, from costing
/// more than the daemon it measures.
#[derive(Debug, Default)]
struct NameList {
    names: Vec<String>,
    wire: Bytes,
}

impl NameList {
    fn new(names: Vec<String>) -> Self {
        let wire = DiscoveryRequest { resource_names: names.clone(), ..DiscoveryRequest::default() }.encode_to_vec().into();
        Self { names, wire }
    }

    fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

impl PartialEq for NameList {
    fn eq(&self, other: &Self) -> bool {
        self.names == other.names
    }
}

/// What every node has in common: config, connect permits, parsed names.
struct Shared {
    config: FleetConfig,
    /// One per source address (one without, if none is given).
    endpoints: Vec<Endpoint>,
    connect_permits: Semaphore,
    /// EDS/RDS names found in a full-state CDS/LDS response, by type and
    /// version. sxds versions name content (a version is never reused for
    /// other content), so each version is decoded once for the whole fleet
    /// instead of once per node: the load generator must not be the
    /// bottleneck of a two-core benchmark.
    names: Mutex<HashMap<(ResourceType, String), Names>>,
    /// Delta: the resources nodes hold, by type and name, at the version
    /// last seen; decoded once for the fleet for the same reason.
    held: Mutex<PerType<HashMap<Arc<str>, Arc<delta::Held>>>>,
    shutdown: CancellationToken,
}

/// A fleet of simulated Envoys of one node type.
pub struct Fleet {
    shared: Arc<Shared>,
    nodes: Vec<Arc<Mutex<NodeRecord>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Fleet {
    pub fn new(config: FleetConfig) -> Result<Self, tonic::transport::Error> {
        let endpoint = Endpoint::from_shared(config.xds_url.clone())?
            .connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(true);
        let endpoints = match config.source_addrs.as_slice() {
            [] => vec![endpoint],
            sources => sources.iter().map(|&source| endpoint.clone().local_address(Some(source))).collect(),
        };
        let permits = config.connect_concurrency.max(1);
        let shared = Arc::new(Shared {
            config,
            endpoints,
            connect_permits: Semaphore::new(permits),
            names: Mutex::default(),
            held: Mutex::default(),
            shutdown: CancellationToken::new(),
        });
        Ok(Self { shared, nodes: Vec::new(), tasks: Vec::new() })
    }

    /// Starts `count` more simulated Envoys, numbered after the existing ones.
    pub fn add(&mut self, count: usize) {
        for _ in 0..count {
            let index = self.nodes.len();
            let sources = &self.shared.config.source_addrs;
            let source = (!sources.is_empty()).then(|| sources[index % sources.len()]);
            let record = Arc::new(Mutex::new(NodeRecord { source, ..NodeRecord::default() }));
            let node_id = format!("{}-{index}", self.shared.config.node_type);
            self.nodes.push(record.clone());
            self.tasks.push(tokio::spawn(run_node(self.shared.clone(), record, node_id, index)));
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// A copy of every node's record.
    pub fn records(&self) -> Vec<NodeRecord> {
        self.nodes.iter().map(|n| lock(n).clone()).collect()
    }

    pub fn connected(&self) -> usize {
        self.nodes.iter().filter(|n| lock(n).connected).count()
    }

    /// How many responses of `ty` each node has taken: a mark for
    /// [`Fleet::sizes_since`].
    pub fn marks(&self, ty: ResourceType) -> Vec<usize> {
        self.nodes.iter().map(|n| lock(n).types[ty].sizes.len()).collect()
    }

    /// Per node, the resources in each response of `ty` it took after its mark.
    pub fn sizes_since(&self, ty: ResourceType, marks: &[usize]) -> Vec<Vec<u32>> {
        self.nodes.iter().zip(marks).map(|(n, &mark)| lock(n).types[ty].sizes.get(mark..).unwrap_or_default().to_vec()).collect()
    }

    /// Waits until every node has ACKed `target`, or until `limit` has
    /// passed since `target.since`; nodes still behind are counted, not
    /// waited for. Latencies come from the instants the nodes recorded, so
    /// the polling interval does not blur them; only nodes still pending
    /// are polled again, to keep the load generator's own CPU low.
    pub async fn wait(&self, target: &Target, limit: Duration) -> Convergence {
        self.wait_from(0, target, limit).await
    }

    /// [`Fleet::wait`] for the nodes from index `first` on.
    pub async fn wait_from(&self, first: usize, target: &Target, limit: Duration) -> Convergence {
        let deadline = target.since + limit;
        let mut pending: Vec<usize> = (first..self.nodes.len()).collect();
        let mut latencies = Vec::with_capacity(pending.len());
        loop {
            pending.retain(|&i| match self.arrival(i, target) {
                Some(at) => {
                    latencies.push(at.saturating_duration_since(target.since));
                    false
                }
                None => true,
            });
            if pending.is_empty() || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        latencies.sort();
        Convergence { latencies, never: pending.len() }
    }

    /// Waits until no node has taken a response for `window`, or until
    /// `deadline`: the responses that follow an update are all in.
    pub async fn quiet(&self, window: Duration, deadline: Instant) {
        let mut last = self.responses();
        let mut since = Instant::now();
        while Instant::now() < deadline && since.elapsed() < window {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = self.responses();
            if now != last {
                (last, since) = (now, Instant::now());
            }
        }
    }

    /// Responses taken by every node, of every type.
    pub fn responses(&self) -> u64 {
        self.nodes.iter().map(|n| lock(n).types.values().map(|t| u64::from(t.responses)).sum::<u64>()).sum()
    }

    /// The version node `index` holds of each of the [`TYPES`] it has
    /// taken; `None` if there is no such node.
    pub fn versions(&self, index: usize) -> Option<Vec<(ResourceType, String)>> {
        let node = lock(self.nodes.get(index)?);
        Some(TYPES.iter().filter_map(|&ty| Some((ty, node.types[ty].last_version()?.to_owned()))).collect())
    }

    /// Where the fleet stands now against `target`.
    pub fn convergence(&self, target: &Target) -> Convergence {
        let mut result = Convergence::default();
        for i in 0..self.nodes.len() {
            match self.arrival(i, target) {
                Some(at) => result.latencies.push(at.saturating_duration_since(target.since)),
                None => result.never += 1,
            }
        }
        result.latencies.sort();
        result
    }

    /// When node `i` had ACKed the target version of every target type.
    fn arrival(&self, i: usize, target: &Target) -> Option<Instant> {
        let node = lock(&self.nodes[i]);
        let mut latest: Option<Instant> = None;
        for ty in &target.types {
            let at = node.types[*ty].arrived(&target.version)?;
            latest = Some(latest.map_or(at, |l| l.max(at)));
        }
        latest
    }

    /// The newest version of `ty` that some node holds beginning with
    /// `prefix`: for a version whose end the caller cannot compute (EDS
    /// from Cloud Map ends in a digest of the endpoints).
    pub fn version_starting(&self, ty: ResourceType, prefix: &str) -> Option<String> {
        self.nodes.iter().find_map(|n| lock(n).types[ty].versions.iter().rev().find(|(v, _)| v.starts_with(prefix)).map(|(v, _)| v.clone()))
    }

    /// How this fleet reaches its daemon.
    pub fn config(&self) -> &FleetConfig {
        &self.shared.config
    }

    /// Closes every stream and waits (bounded) for the node tasks to end.
    pub async fn shutdown(self) {
        self.shared.shutdown.cancel();
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

fn lock(node: &Mutex<NodeRecord>) -> std::sync::MutexGuard<'_, NodeRecord> {
    node.lock().unwrap_or_else(|p| p.into_inner())
}

/// One simulated Envoy: connects, runs a session, reconnects with jittered
/// backoff (0.5 s doubling to 8 s, R36) until the fleet shuts down.
async fn run_node(shared: Arc<Shared>, record: Arc<Mutex<NodeRecord>>, node_id: String, index: usize) {
    let mut backoff = Duration::from_millis(500);
    let mut attempt: u64 = 0;
    loop {
        let result = tokio::select! {
            () = shared.shutdown.cancelled() => return,
            result = session(&shared, &record, &node_id, index) => result,
        };
        {
            let mut node = lock(&record);
            node.connected = false;
            if let Err(error) = result {
                node.errors += 1;
                node.last_error = Some(error);
            }
        }
        // Cheap deterministic jitter: spread reconnects without a RNG.
        attempt += 1;
        let jitter = (index as u64).wrapping_mul(2_654_435_761).wrapping_add(attempt * 97) % 500;
        let pause = backoff + Duration::from_millis(jitter);
        backoff = (backoff * 2).min(Duration::from_secs(8));
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// The subscription and last accepted response of one type, as Envoy keeps them.
#[derive(Default)]
struct Subscription {
    /// Requests of this type go here, encoded (the ADS sender, or the type's own stream).
    sender: Option<mpsc::Sender<Bytes>>,
    /// Named subscription (EDS/RDS); empty means wildcard for CDS/LDS.
    names: Names,
    version: String,
    nonce: String,
}

type Responses = SelectAll<futures::stream::BoxStream<'static, Result<Received, tonic::Status>>>;

/// One connection's life, in the fleet's protocol.
async fn session(shared: &Shared, record: &Mutex<NodeRecord>, node_id: &str, index: usize) -> Result<(), String> {
    let node = Node { id: node_id.to_owned(), cluster: shared.config.node_type.clone(), user_agent_name: "envoy".into(), ..Node::default() };
    match shared.config.protocol {
        Protocol::StateOfTheWorld => sotw_session(shared, record, &node, index).await,
        Protocol::Delta => delta::session(shared, record, &node, index).await,
    }
}

/// The type whose names the resources of `ty` refer to: clusters load
/// their endpoints by EDS, listeners their routes by RDS.
fn child(ty: ResourceType) -> Option<ResourceType> {
    match ty {
        ResourceType::Cluster => Some(ResourceType::Endpoint),
        ResourceType::Listener => Some(ResourceType::Route),
        _ => None,
    }
}

/// Marks a node connected once its first streams are open.
fn connected(record: &Mutex<NodeRecord>) {
    let mut record = lock(record);
    record.connected = true;
    record.connects += 1;
}

/// Open, subscribe, ACK until the stream ends: state of the world.
async fn sotw_session(shared: &Shared, record: &Mutex<NodeRecord>, node: &Node, index: usize) -> Result<(), String> {
    // The same on every request of the session: encoded once.
    let node: Bytes = DiscoveryRequest { node: Some(node.clone()), ..DiscoveryRequest::default() }.encode_to_vec().into();
    let mut subs: PerType<Subscription> = PerType::default();
    let mut responses = Responses::new();

    // Connect and open the first streams under a permit, released once the
    // server has accepted them.
    let channel = {
        let (channel, _permit) = shared.connect(index).await?;
        match shared.config.service {
            Service::Ads => {
                let (tx, rx) = mpsc::channel(REQUEST_BUFFER);
                for ty in [ResourceType::Cluster, ResourceType::Listener] {
                    let _ = tx.send(request(&node, ty, &subs[ty])).await;
                }
                let inbound = open(&channel, ADS_PATH, rx).await.map_err(|s| format!("ADS: {s}"))?;
                responses.push(inbound.boxed());
                for ty in TYPES {
                    subs[ty].sender = Some(tx.clone());
                }
            }
            Service::Separate => {
                for ty in [ResourceType::Cluster, ResourceType::Listener] {
                    let first = request(&node, ty, &subs[ty]);
                    subs[ty].sender = Some(open_single(&channel, ty, first, &mut responses).await?);
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
        let previous = {
            let sub = &mut subs[ty];
            sub.nonce = response.nonce.clone();
            std::mem::replace(&mut sub.version, response.version_info.clone())
        };

        // Like Envoy: subscribe to the EDS/RDS names the new clusters and
        // listeners refer to before ACKing them.
        if let Some(child) = child(ty) {
            let names = shared.referenced_names(ty, &response)?;
            let sub = &mut subs[child];
            let changed = !Arc::ptr_eq(&names, &sub.names) && *names != *sub.names;
            // A new version of clusters (listeners) the node had changes some
            // of them (sxds resends a full-state type only when its content
            // changed): like Envoy, those warm and ask again for their
            // endpoints (routes), by the same names (R21, R22).
            let warming = !changed && !previous.is_empty() && previous != response.version_info && !sub.names.is_empty();
            if (changed && !(names.is_empty() && sub.sender.is_none())) || warming {
                sub.names = names;
                let update = request(&node, child, sub);
                match &sub.sender {
                    Some(tx) => tx.send(update).await.map_err(|_| "request stream closed".to_owned())?,
                    None => sub.sender = Some(open_single(&channel, child, update, &mut responses).await?),
                }
            }
        }

        let sub = &subs[ty];
        let ack = request(&node, ty, sub);
        let tx = sub.sender.as_ref().ok_or("response on a type never requested")?;
        tx.send(ack).await.map_err(|_| "request stream closed".to_owned())?;

        let size = response.resources;
        let held = ty.is_full_state().then_some(size);
        lock(record).types[ty].took(size, held, Some(&response.version_info), received_at);
    }
    Err("stream closed by the server".to_owned())
}

/// Opens the per-type stream of `ty` (separate services) with its first request.
async fn open_single(channel: &Channel, ty: ResourceType, first: Bytes, responses: &mut Responses) -> Result<mpsc::Sender<Bytes>, String> {
    let path = match ty {
        ResourceType::Cluster => "/envoy.service.cluster.v3.ClusterDiscoveryService/StreamClusters",
        ResourceType::Listener => "/envoy.service.listener.v3.ListenerDiscoveryService/StreamListeners",
        ResourceType::Endpoint => "/envoy.service.endpoint.v3.EndpointDiscoveryService/StreamEndpoints",
        ResourceType::Route => "/envoy.service.route.v3.RouteDiscoveryService/StreamRoutes",
        other => return Err(format!("the load generator simulates no {other} stream")),
    };
    let (tx, rx) = mpsc::channel(REQUEST_BUFFER);
    tx.send(first).await.map_err(|e| e.to_string())?;
    let inbound = open(channel, path, rx).await.map_err(|s| format!("{ty}: {s}"))?;
    responses.push(inbound.boxed());
    Ok(tx)
}

const ADS_PATH: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";

/// Opens a state-of-the-world stream at `path` that sends what `requests` yields.
async fn open(channel: &Channel, path: &'static str, requests: mpsc::Receiver<Bytes>) -> Result<tonic::Streaming<Received>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone()).max_decoding_message_size(MAX_MESSAGE);
    grpc.ready().await.map_err(|e| Status::unavailable(e.to_string()))?;
    let path = http::uri::PathAndQuery::from_static(path);
    Ok(grpc.streaming(tonic::Request::new(ReceiverStream::new(requests)), path, PreEncoded).await?.into_inner())
}

/// A request of `ty` carrying the subscription and, once something was
/// received, the ACK of the last response (version and nonce, R5), with
/// `node` (encoded) as Envoy sends it on every request. The bytes prost
/// would write for the same `DiscoveryRequest`: its fields in order.
fn request(node: &Bytes, ty: ResourceType, sub: &Subscription) -> Bytes {
    let type_url = ty.type_url();
    let mut buf = BytesMut::with_capacity(node.len() + sub.names.wire.len() + sub.version.len() + type_url.len() + sub.nonce.len() + 16);
    put_string(1, &sub.version, &mut buf);
    buf.put_slice(node);
    buf.put_slice(&sub.names.wire);
    put_string(4, type_url, &mut buf);
    put_string(5, &sub.nonce, &mut buf);
    buf.freeze()
}

/// A string field as prost writes it: nothing when empty (proto3).
fn put_string(tag: u32, value: &str, buf: &mut BytesMut) {
    use prost::encoding::{encode_key, encode_varint, WireType};
    if !value.is_empty() {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(value.len() as u64, buf);
        buf.put_slice(value.as_bytes());
    }
}

/// The codec of the simulated Envoys' streams: requests go out as encoded
/// by [`request`], responses come in as [`Received`].
#[derive(Debug, Clone, Copy, Default)]
struct PreEncoded;

impl Codec for PreEncoded {
    type Encode = Bytes;
    type Decode = Received;
    type Encoder = Self;
    type Decoder = Self;

    fn encoder(&mut self) -> Self {
        Self
    }

    fn decoder(&mut self) -> Self {
        Self
    }
}

impl Encoder for PreEncoded {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for PreEncoded {
    type Item = Received;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Received>, Status> {
        let encoded = src.copy_to_bytes(src.remaining());
        Received::decode(encoded).map(Some).map_err(|e| Status::internal(format!("decoding a response: {e}")))
    }
}

/// A `DiscoveryResponse` as a simulated Envoy reads it: the small fields,
/// the resources counted and left encoded. Every node takes every response,
/// but the resources are read only for a CDS/LDS version not seen before,
/// once for the fleet ([`Shared::referenced_names`]); decoding them whole on
/// every node cost the load generator more CPU than the daemon spent.
#[derive(Debug, Clone)]
pub struct Received {
    pub version_info: String,
    pub type_url: String,
    pub nonce: String,
    pub resources: usize,
    encoded: Bytes,
}

impl Received {
    fn decode(encoded: Bytes) -> Result<Self, String> {
        use prost::encoding::{decode_key, decode_varint, skip_field, DecodeContext, WireType};
        let mut received = Self { version_info: String::new(), type_url: String::new(), nonce: String::new(), resources: 0, encoded };
        let mut rest = &received.encoded[..];
        while !rest.is_empty() {
            let (number, wire_type) = decode_key(&mut rest).map_err(|e| e.to_string())?;
            let field = match (number, wire_type) {
                (1, WireType::LengthDelimited) => &mut received.version_info,
                (4, WireType::LengthDelimited) => &mut received.type_url,
                (5, WireType::LengthDelimited) => &mut received.nonce,
                (2, WireType::LengthDelimited) => {
                    received.resources += 1;
                    skip_field(wire_type, number, &mut rest, DecodeContext::default()).map_err(|e| e.to_string())?;
                    continue;
                }
                _ => {
                    skip_field(wire_type, number, &mut rest, DecodeContext::default()).map_err(|e| e.to_string())?;
                    continue;
                }
            };
            let len = usize::try_from(decode_varint(&mut rest).map_err(|e| e.to_string())?).unwrap_or(usize::MAX);
            let value = rest.get(..len).ok_or("a string runs past the message")?;
            *field = std::str::from_utf8(value).map_err(|_| "a string is not UTF-8")?.to_owned();
            rest = &rest[len..];
        }
        Ok(received)
    }

    /// The whole response, decoded now.
    fn response(&self) -> Result<DiscoveryResponse, prost::DecodeError> {
        DiscoveryResponse::decode(self.encoded.clone())
    }
}

impl Shared {
    /// Node `index`'s connection to the daemon (from its source address),
    /// and the permit to hold until its first streams are accepted.
    async fn connect(&self, index: usize) -> Result<(Channel, SemaphorePermit<'_>), String> {
        let permit = self.connect_permits.acquire().await.map_err(|e| e.to_string())?;
        let endpoint = &self.endpoints[index % self.endpoints.len()];
        let channel = endpoint.connect().await.map_err(|e| format!("connect: {e}"))?;
        Ok((channel, permit))
    }

    /// The EDS names (for CDS) or RDS names (for LDS) a full-state response
    /// refers to, sorted; decoded once per version for the fleet.
    fn referenced_names(&self, ty: ResourceType, received: &Received) -> Result<Names, String> {
        let key = (ty, received.version_info.clone());
        if let Some(names) = self.names.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(names.clone());
        }
        let response = received.response().map_err(|e| format!("decoding a response: {e}"))?;
        let mut names: Vec<String> = match ty {
            ResourceType::Cluster => response.resources.iter().filter_map(eds_name).collect(),
            ResourceType::Listener => response.resources.iter().flat_map(rds_names).collect(),
            _ => Vec::new(),
        };
        names.sort();
        names.dedup();
        let mut cache = self.names.lock().unwrap_or_else(|p| p.into_inner());
        // Reuse the Arc of an equal list, so nodes compare by pointer.
        let names = match cache.values().find(|known| known.names == names) {
            Some(known) => known.clone(),
            None => Arc::new(NameList::new(names)),
        };
        cache.insert(key, names.clone());
        Ok(names)
    }
}

/// The ClusterLoadAssignment an EDS cluster asks for.
fn eds_name(any: &Any) -> Option<String> {
    let cluster = Cluster::decode(any.value.as_slice()).ok()?;
    let is_eds = matches!(cluster.cluster_discovery_type, Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::Eds as i32);
    if !is_eds {
        return None;
    }
    match cluster.eds_cluster_config {
        Some(eds) if !eds.service_name.is_empty() => Some(eds.service_name),
        _ => Some(cluster.name),
    }
}

/// The route configurations a listener's HTTP connection managers load by RDS.
fn rds_names(any: &Any) -> Vec<String> {
    let Ok(listener) = Listener::decode(any.value.as_slice()) else { return Vec::new() };
    listener
        .filter_chains
        .iter()
        .chain(listener.default_filter_chain.as_ref())
        .flat_map(|chain| &chain.filters)
        .filter_map(|filter| match &filter.config_type {
            Some(ConfigType::TypedConfig(config)) if config.type_url == HttpConnectionManager::type_url() => {
                HttpConnectionManager::decode(config.value.as_slice()).ok()
            }
            _ => None,
        })
        .filter_map(|hcm| match hcm.route_specifier {
            Some(RouteSpecifier::Rds(rds)) => Some(rds.route_config_name),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_the_bytes_prost_writes_for_it() {
        let node = Node { id: "bench-7".into(), cluster: "bench".into(), user_agent_name: "envoy".into(), ..Node::default() };
        let encoded_node: Bytes = DiscoveryRequest { node: Some(node.clone()), ..DiscoveryRequest::default() }.encode_to_vec().into();
        let names = vec!["a".to_owned(), "é".to_owned(), "n".repeat(300)];
        let sub = Subscription { sender: None, names: Arc::new(NameList::new(names.clone())), version: "v3".into(), nonce: "12".into() };
        let expected = DiscoveryRequest {
            version_info: "v3".into(),
            node: Some(node.clone()),
            resource_names: names,
            type_url: ResourceType::Endpoint.type_url().into(),
            response_nonce: "12".into(),
            ..DiscoveryRequest::default()
        };
        assert_eq!(request(&encoded_node, ResourceType::Endpoint, &sub), expected.encode_to_vec());

        // A first request: no version, nonce or names.
        let first = DiscoveryRequest { node: Some(node), type_url: ResourceType::Cluster.type_url().into(), ..DiscoveryRequest::default() };
        assert_eq!(request(&encoded_node, ResourceType::Cluster, &Subscription::default()), first.encode_to_vec());
    }

    #[test]
    fn a_response_reads_as_prost_decodes_it() {
        let any = |name: &str| Any { type_url: "t".into(), value: name.as_bytes().to_vec() };
        let response = DiscoveryResponse {
            version_info: "v9".into(),
            resources: vec![any("a"), any("b"), any("c")],
            canary: true,
            type_url: ResourceType::Cluster.type_url().into(),
            nonce: "4".into(),
            ..DiscoveryResponse::default()
        };
        let received = Received::decode(response.encode_to_vec().into()).unwrap();
        assert_eq!((received.version_info.as_str(), received.type_url.as_str(), received.nonce.as_str()), ("v9", ResourceType::Cluster.type_url(), "4"));
        assert_eq!(received.resources, 3);
        assert_eq!(received.response().unwrap(), response);

        let empty = Received::decode(Bytes::new()).unwrap();
        assert_eq!((empty.resources, empty.version_info.as_str()), (0, ""));
        assert!(Received::decode(Bytes::from_static(&[0x0a, 0x05, b'v'])).is_err(), "a truncated version");
    }
}
