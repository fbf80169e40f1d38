//! The xDS gRPC endpoints. ADS and every per-type service, state of the
//! world and delta, run the same stream loop over a [`Protocol`]'s state
//! machine; only that and the [`StreamKind`] differ.
//!
//! The endpoints are plain HTTP/2 handlers rather than generated tonic
//! services: a response is framed from shared pre-encoded bytes (see
//! `codec`), and no stream keeps an encode buffer of its own. The loop
//! also watches that its client takes what it is sent: one that stops
//! (grants no HTTP/2 window) is cut off after `--send-timeout`, its whole
//! connection closed through the [`ConnectionCloser`] the connection task
//! put in the request, since only that frees what h2 buffered for it.
//!
//! With `--xds-client-ca`, a stream whose connection's client certificate
//! does not name its node type ([`CertifiedNodeTypes`]) is refused with
//! PERMISSION_DENIED. gRPC health and reflection ([`super::introspection`])
//! and REST polling ([`super::rest`]) are routed beside the discovery methods.

use std::{sync::Arc, time::Duration};

use axum::{
    body::Body,
    extract::{Request, State},
    response::{IntoResponse, Response},
    routing::post,
    Router,
};
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use http::{header::CONTENT_TYPE, Uri};
use tokio::sync::mpsc::error::TrySendError;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};

use super::{
    codec::{self, EncodedResponse, Requests, ResponseBody, ResponseSender, WireRequest},
    delta::DeltaState,
    request::SotwRequest,
    rest::{self, RestXds},
    status::{Registry, StreamHandle},
    stream::{Received, StreamKind, StreamState},
};
use crate::{
    cache::{Cache, Snapshot, SnapshotWatch},
    net::{sleep_until, CertifiedNodeTypes, ConnectionCloser, ConnectionDrain},
    node_type::NodeType,
    resource_type::ResourceType,
};

/// Responses in flight per stream: one per type, since each type holds at
/// most one unanswered response, and one more for a make-before-break
/// removal.
const RESPONSE_BUFFER: usize = crate::resource_type::COUNT + 1;

/// The aggregated discovery service.
const ADS_SERVICE: &str = "envoy.service.discovery.v3.AggregatedDiscoveryService";

/// The two ways of speaking xDS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavour {
    StateOfTheWorld,
    Delta,
}

/// The gRPC methods served: service, method, and the stream each opens.
fn methods() -> impl Iterator<Item = (&'static str, &'static str, Flavour, StreamKind)> {
    let ads = [
        (ADS_SERVICE, "StreamAggregatedResources", Flavour::StateOfTheWorld, StreamKind::Aggregated),
        (ADS_SERVICE, "DeltaAggregatedResources", Flavour::Delta, StreamKind::Aggregated),
    ];
    let per_type = ResourceType::ALL.into_iter().flat_map(|ty| {
        let info = ty.info();
        let sotw = (!info.sotw_method.is_empty()).then_some((info.service, info.sotw_method, Flavour::StateOfTheWorld, StreamKind::Single(ty)));
        sotw.into_iter().chain([(info.service, info.delta_method, Flavour::Delta, StreamKind::Single(ty))])
    });
    ads.into_iter().chain(per_type)
}

/// What the stream loop needs of a protocol: its request message, where
/// the limits find names in it, and its state machine.
trait Protocol: Send + 'static {
    type Request: WireRequest;
    /// How `GET /nodes` and the logs call it.
    const NAME: &'static str;
    fn new(kind: StreamKind) -> Self;
    /// The node's id, if the request carries a node.
    fn node_id(request: &Self::Request) -> Result<Option<String>, Status>;
    /// What the client says it applied, for the log of a NACK.
    fn applied_version(request: &Self::Request) -> &str;
    fn on_request<'a>(&mut self, request: &'a Self::Request, snapshot: Option<&Snapshot>) -> Received<'a>;
    fn due(&mut self, snapshot: &Arc<Snapshot>) -> Vec<(ResourceType, EncodedResponse)>;
    /// Types the client was found to hold in full without a response.
    fn take_in_sync(&mut self) -> Vec<ResourceType> {
        Vec::new()
    }
}

impl Protocol for StreamState {
    type Request = SotwRequest;
    const NAME: &'static str = "sotw";
    fn new(kind: StreamKind) -> Self {
        StreamState::new(kind)
    }
    fn node_id(request: &SotwRequest) -> Result<Option<String>, Status> {
        Ok(request.node()?.map(|node| node.id))
    }
    fn applied_version(request: &SotwRequest) -> &str {
        &request.version_info
    }
    fn on_request<'a>(&mut self, request: &'a SotwRequest, snapshot: Option<&Snapshot>) -> Received<'a> {
        StreamState::on_request(self, request, snapshot)
    }
    fn due(&mut self, snapshot: &Arc<Snapshot>) -> Vec<(ResourceType, EncodedResponse)> {
        StreamState::due(self, snapshot)
    }
}

impl Protocol for DeltaState {
    type Request = DeltaDiscoveryRequest;
    const NAME: &'static str = "delta";
    fn new(kind: StreamKind) -> Self {
        DeltaState::new(kind)
    }
    fn node_id(request: &DeltaDiscoveryRequest) -> Result<Option<String>, Status> {
        Ok(request.node.as_ref().map(|node| node.id.clone()))
    }
    fn applied_version(_: &DeltaDiscoveryRequest) -> &str {
        ""
    }
    fn on_request<'a>(&mut self, request: &'a DeltaDiscoveryRequest, snapshot: Option<&Snapshot>) -> Received<'a> {
        DeltaState::on_request(self, request, snapshot)
    }
    fn due(&mut self, snapshot: &Arc<Snapshot>) -> Vec<(ResourceType, EncodedResponse)> {
        DeltaState::due(self, snapshot)
    }
    fn take_in_sync(&mut self) -> Vec<ResourceType> {
        DeltaState::take_in_sync(self)
    }
}

/// Serves discovery streams from the cache. Cheap to clone.
#[derive(Clone)]
pub struct XdsServer {
    cache: Cache,
    registry: Registry,
    shutdown: CancellationToken,
    send_timeout: Duration,
    rest_hold: Duration,
}

impl XdsServer {
    /// `send_timeout`: how long a client may take to take in one response;
    /// `rest_hold`: how long a REST poll that is current may be held open.
    pub fn new(cache: Cache, registry: Registry, shutdown: CancellationToken, send_timeout: Duration, rest_hold: Duration) -> Self {
        Self { cache, registry, shutdown, send_timeout, rest_hold }
    }

    /// The gRPC routes of every discovery method sxds answers, and of
    /// health and reflection; any other method is answered `UNIMPLEMENTED`.
    pub async fn router(&self) -> Router {
        let mut router = Router::new();
        for (service, method, flavour, kind) in methods() {
            let path = format!("/{service}/{method}");
            router = match flavour {
                Flavour::StateOfTheWorld => router.route(&path, post(move |State(server): State<XdsServer>, request: Request| server.serve::<StreamState>(kind, request))),
                Flavour::Delta => router.route(&path, post(move |State(server): State<XdsServer>, request: Request| server.serve::<DeltaState>(kind, request))),
            };
        }
        let mut services: Vec<&str> = methods().map(|(service, ..)| service).collect();
        services.dedup();
        let introspection = super::introspection::router(&services, self.shutdown.clone()).await;
        let rest = RestXds::new(self.cache.clone(), self.registry.clone(), self.rest_hold, self.shutdown.clone()).router();
        router.with_state(self.clone()).merge(introspection).merge(rest).fallback(|uri: Uri| async move {
            if rest::is_discovery_path(uri.path()) {
                return rest::unknown_type(uri.path());
            }
            Status::unimplemented("sxds serves ADS and the per-type discovery services, state of the world and delta").into_http::<Body>()
        })
    }

    async fn serve<P: Protocol>(self, kind: StreamKind, request: Request) -> Response {
        let closer = request.extensions().get::<ConnectionCloser>().cloned();
        // Ends with the connection (--max-stream-age) or at shutdown.
        let drain = request.extensions().get::<ConnectionDrain>().map_or_else(|| self.shutdown.clone(), |d| d.0.clone());
        let certified = request.extensions().get::<CertifiedNodeTypes>().cloned();
        match self.open::<P>(kind, codec::requests(request.into_body()), closer, certified, drain).await {
            Ok(body) => {
                let headers = [(CONTENT_TYPE, "application/grpc")];
                (headers, Body::new(body)).into_response()
            }
            Err(status) => {
                if is_refusal(&status) {
                    tracing::warn!(service = kind.service_name(), %status, "discovery stream refused");
                }
                status.into_http::<Body>()
            }
        }
    }

    /// Reads the first request (it must carry the node, R2) and starts the
    /// stream's loop; its responses come out of the returned body. With a
    /// client certificate (`certified`), the node type must be one it names.
    async fn open<P: Protocol>(
        &self,
        kind: StreamKind,
        mut inbound: Requests<P::Request>,
        closer: Option<ConnectionCloser>,
        certified: Option<CertifiedNodeTypes>,
        drain: CancellationToken,
    ) -> Result<ResponseBody, Status> {
        let first = tokio::select! {
            first = inbound.message() => first?,
            // Nothing to drain yet: do not hold the shutdown open.
            () = drain.cancelled() => return Err(Status::unavailable("sxds is shutting down or this connection is draining")),
        };
        let first = first.ok_or_else(|| Status::invalid_argument("stream closed before its first request"))?;
        let node_id = match P::node_id(&first)? {
            Some(id) if !id.is_empty() => id,
            _ => return Err(Status::invalid_argument("the first discovery request must carry node.id")),
        };
        let node_type = NodeType::of_node_id(&node_id);
        if let Some(certified) = certified.filter(|c| !c.allows(&node_type)) {
            tracing::warn!(node_id, %node_type, certificate_node_types = %certified, service = kind.service_name(),
                "discovery stream refused: the client certificate does not name its node type");
            return Err(Status::permission_denied(format!(
                "node id {node_id:?} is of node type {:?}, but the client certificate names node types: {certified}",
                node_type.as_str()
            )));
        }
        let handle = self.registry.open(&node_id, &node_type, kind.service_name(), P::NAME);
        tracing::info!(node_id, %node_type, service = kind.service_name(), protocol = P::NAME, stream = handle.id(), "stream opened");

        let (responses, body) = codec::response_channel(RESPONSE_BUFFER);
        let mut stream = XdsStream {
            state: P::new(kind),
            snapshots: self.cache.subscribe(&node_type, &node_id),
            node_id,
            node_type,
            handle,
            responses,
            send_timeout: self.send_timeout,
        };
        stream.receive(&first);
        // The first request carries the node's metadata: it is not kept.
        drop(first);
        let early = stream.send_due().err(); // were the client gone already, `run` ends at once
        tokio::spawn(stream.run(inbound, drain, closer, early));
        Ok(body)
    }
}

/// Whether a status from decoding a request is the client's fault (a limit,
/// a malformed message) rather than the stream going away.
fn is_refusal(status: &Status) -> bool {
    matches!(status.code(), Code::InvalidArgument | Code::OutOfRange)
}

/// Why a stream's loop ended.
enum Ending {
    /// The client left or the daemon shuts down: OK, if anyone listens.
    Closed,
    /// A request was refused (a limit, a malformed message): the stream
    /// ends with that status.
    Refused(Status),
    /// The client stopped taking its responses: the stream ends with this
    /// status where it can still be delivered, and its connection is closed.
    Stalled(Status),
}

/// One open stream: its protocol state and its channels.
struct XdsStream<P> {
    state: P,
    snapshots: SnapshotWatch,
    node_id: String,
    node_type: NodeType,
    handle: StreamHandle,
    responses: ResponseSender,
    send_timeout: Duration,
}

impl<P: Protocol> XdsStream<P> {
    async fn run(
        mut self,
        inbound: Requests<P::Request>,
        shutdown: CancellationToken,
        closer: Option<ConnectionCloser>,
        early: Option<Ending>,
    ) {
        let ending = match early {
            Some(ending) => ending,
            None => self.serve(inbound, shutdown).await,
        };
        match ending {
            Ending::Closed => {}
            Ending::Refused(status) => self.responses.end_with(status),
            Ending::Stalled(status) => {
                self.responses.end_with(status);
                if let Some(closer) = closer {
                    closer.close();
                }
            }
        }
        tracing::info!(node_id = self.node_id, node_type = %self.node_type, stream = self.handle.id(), "stream closed");
    }

    async fn serve(&mut self, mut inbound: Requests<P::Request>, shutdown: CancellationToken) -> Ending {
        // Made once: a turn of the loop polls them, it does not make them again.
        let shutdown = shutdown.cancelled_owned();
        let client_gone = self.responses.closed();
        tokio::pin!(shutdown, client_gone);
        loop {
            // The oldest response the client has not taken in full, if any,
            // must be taken by this deadline.
            let deadline = self.responses.oldest_untaken().map(|queued| queued + self.send_timeout);
            let step = tokio::select! {
                () = &mut shutdown => Err(Ending::Closed),
                () = &mut client_gone => Err(Ending::Closed),
                () = sleep_until(deadline) => self.check_taken(),
                changed = self.snapshots.changed() => match changed {
                    Ok(()) => self.send_due(),
                    Err(_) => Err(Ending::Closed),
                },
                message = inbound.message() => match message {
                    Ok(Some(request)) => {
                        self.receive(&request);
                        self.send_due()
                    }
                    Ok(None) => Err(Ending::Closed),
                    Err(status) if is_refusal(&status) => {
                        tracing::warn!(node_id = self.node_id, node_type = %self.node_type, %status, "discovery request refused; ending the stream");
                        Err(Ending::Refused(status))
                    }
                    Err(status) => {
                        tracing::debug!(node_id = self.node_id, %status, "stream ended by the client");
                        Err(Ending::Closed)
                    }
                },
            };
            if let Err(ending) = step {
                return ending;
            }
        }
    }

    /// At a send deadline: has the client taken its responses since?
    fn check_taken(&mut self) -> Result<(), Ending> {
        let Some(queued) = self.responses.oldest_untaken() else { return Ok(()) };
        if queued.elapsed() < self.send_timeout {
            return Ok(());
        }
        let timeout = self.send_timeout;
        tracing::warn!(node_id = self.node_id, node_type = %self.node_type, stream = self.handle.id(), ?timeout,
            "the client did not take its response within --send-timeout; closing its connection");
        Err(Ending::Stalled(Status::deadline_exceeded(format!(
            "the response was not taken within {timeout:?} (--send-timeout): the client stopped reading"
        ))))
    }

    fn receive(&mut self, request: &P::Request) {
        let node_id = self.node_id.as_str();
        let snapshot = self.snapshots.current();
        match self.state.on_request(request, snapshot.as_deref()) {
            Received::Ack { ty, version } => {
                tracing::debug!(node_id, %ty, version, "ACK");
                self.handle.acked(ty, version);
            }
            Received::Nack { ty, nonce, error } => {
                // R7: visible, and not resent until the bundle changes.
                tracing::warn!(node_id, node_type = %self.node_type, %ty, nonce, error, accepted_version = P::applied_version(request), "NACK: Envoy rejected the config");
                self.handle.rejected(ty, nonce, error);
            }
            Received::Request { ty } => {
                tracing::debug!(node_id, %ty, "discovery request");
            }
            Received::Stale { ty } => {
                tracing::debug!(node_id, %ty, "stale nonce: not an ACK");
            }
            Received::Repeat { ty } => {
                tracing::debug!(node_id, %ty, "repeated request, nothing changed; ignored");
            }
            Received::Unknown { type_url } => {
                tracing::debug!(node_id, type_url, "type not served by sxds; ignored");
            }
        }
    }

    /// Queues every response now due; an `Err` once the stream must end.
    /// Never waits: each type has at most one unanswered response, so the
    /// channel (one slot per type) always has room for a well-behaved client.
    fn send_due(&mut self) -> Result<(), Ending> {
        let snapshot: Option<Arc<Snapshot>> = self.snapshots.borrow_and_update();
        let Some(snapshot) = snapshot else { return Ok(()) };
        let due = self.state.due(&snapshot);
        for ty in self.state.take_in_sync() {
            tracing::debug!(node_id = self.node_id, %ty, version = &**snapshot.type_version(ty), "the client holds everything current; nothing sent");
            self.handle.in_sync(ty, snapshot.type_version(ty));
        }
        for (ty, response) in due {
            self.handle.sent(ty, snapshot.type_version(ty));
            tracing::debug!(node_id = self.node_id, %ty, version = &**snapshot.type_version(ty), bytes = response.len(), "response sent");
            match self.responses.try_send(response) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    tracing::warn!(node_id = self.node_id, node_type = %self.node_type, stream = self.handle.id(),
                        "the client is not taking its responses; closing its connection");
                    return Err(Ending::Stalled(Status::resource_exhausted(
                        "responses are not being taken: the client stopped reading",
                    )));
                }
                Err(TrySendError::Closed(_)) => return Err(Ending::Closed),
            }
        }
        Ok(())
    }
}
