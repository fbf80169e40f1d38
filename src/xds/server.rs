//! The xDS gRPC endpoints. ADS and every per-type service, state of the
//! world and delta, run the same stream ([`XdsStream`]) over a [`Protocol`]'s state
//! machine; only that and the [`StreamKind`] differ.
//!
//! The endpoints are plain HTTP/2 handlers rather than generated tonic
//! services: a response is framed from shared pre-encoded bytes (see
//! `codec`), and no stream keeps an encode buffer of its own. A stream is
//! the body of its response ([`XdsStream`]), run by hyper's task for the
//! HTTP/2 stream rather than a task of its own. A client that stops taking
//! what it is sent (grants no HTTP/2 window) is cut off after
//! `--send-timeout`: its stream's [`SendClock`] shows the connection's task
//! how long a response has waited, and that task closes the connection,
//! since only that frees what h2 buffered for it.
//!
//! With `--xds-client-ca`, a stream whose connection's client certificate
//! does not name its node type ([`CertifiedNodeTypes`]) is refused with
//! PERMISSION_DENIED. gRPC health and reflection ([`super::introspection`])
//! and REST polling ([`super::rest`]) are routed beside the discovery methods.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
    time::Duration,
};

use axum::{
    body::Body,
    extract::{Request, State},
    response::{IntoResponse, Response},
    routing::post,
    Router,
};
use bytes::Bytes;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use http::{header::CONTENT_TYPE, Uri};
use http_body::Frame;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::{Code, Status};

use super::{
    codec::{self, EncodedResponse, Outbox, Requests, WireRequest},
    delta::DeltaState,
    request::SotwRequest,
    rest::{self, RestXds},
    status::{Registry, StreamHandle},
    stream::{Received, StreamKind, StreamState},
};
use crate::{
    cache::{Cache, Snapshot, SnapshotWatch},
    net::{CertifiedNodeTypes, ConnectionDrain, SendClock, StallWatch},
    node_type::NodeType,
    resource_type::ResourceType,
};

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

/// What a stream needs of a protocol: its request message, where
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
    rest_hold: Duration,
}

impl XdsServer {
    /// `rest_hold`: how long a REST poll that is current may be held open.
    /// (How long a client may take to take in a response is the
    /// connection's: `net::XdsConnections::send_timeout`.)
    pub fn new(cache: Cache, registry: Registry, shutdown: CancellationToken, rest_hold: Duration) -> Self {
        Self { cache, registry, shutdown, rest_hold }
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
        let stalls = request.extensions().get::<StallWatch>().cloned();
        // Ends with the connection (--max-stream-age) or at shutdown.
        let drain = request.extensions().get::<ConnectionDrain>().map_or_else(|| self.shutdown.clone(), |d| d.0.clone());
        let certified = request.extensions().get::<CertifiedNodeTypes>().cloned();
        match self.open::<P>(kind, codec::requests(request.into_body()), stalls, certified, drain).await {
            Ok(stream) => {
                let headers = [(CONTENT_TYPE, "application/grpc")];
                (headers, Body::new(stream)).into_response()
            }
            Err(status) => {
                if is_refusal(&status) {
                    tracing::warn!(service = kind.service_name(), %status, "discovery stream refused");
                }
                status.into_http::<Body>()
            }
        }
    }

    /// Reads the first request (it must carry the node, R2) and opens the
    /// stream, which is the body of its response. With a client certificate
    /// (`certified`), the node type must be one it names.
    async fn open<P: Protocol>(
        &self,
        kind: StreamKind,
        mut inbound: Requests<P::Request>,
        stalls: Option<StallWatch>,
        certified: Option<CertifiedNodeTypes>,
        drain: CancellationToken,
    ) -> Result<XdsStream<P>, Status> {
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
        // One copy of the node id for the stream's status and its watch.
        let node_id: Arc<str> = node_id.into();
        let handle = self.registry.open(node_id.clone(), &node_type, kind.service_name(), P::NAME);
        tracing::info!(node_id = &*node_id, %node_type, service = kind.service_name(), protocol = P::NAME, stream = handle.id(), "stream opened");

        let mut stream = Stream {
            state: P::new(kind),
            snapshots: self.cache.subscribe(&node_type, node_id),
            inbound,
            outbox: Outbox::default(),
            clock: stalls.map(|stalls| stalls.clock(handle.id())),
            end: End::Open,
            handle,
        };
        stream.receive(&first);
        // The first request carries the node's metadata: it is not kept.
        drop(first);
        stream.send_due();
        // Shown now as well as after each poll: the clock does not depend
        // on when hyper first polls the body.
        stream.show_clock();
        Ok(XdsStream { stream, drain: drain.cancelled_owned() })
    }
}

/// Whether a status from decoding a request is the client's fault (a limit,
/// a malformed message) rather than the stream going away.
fn is_refusal(status: &Status) -> bool {
    matches!(status.code(), Code::InvalidArgument | Code::OutOfRange)
}

/// How many requests one poll of a stream takes in at most before it lets
/// the other streams of its thread run: a client that floods requests is
/// served in turns, not all at once.
const REQUESTS_PER_POLL: usize = 32;

pin_project_lite::pin_project! {
    /// One open stream, which is also the body of its response: hyper polls
    /// it for the next piece to send, and each poll first takes in what
    /// arrived since (requests, a new snapshot, the connection's drain).
    ///
    /// The stream has no task of its own: hyper's task for the HTTP/2 stream
    /// runs it, so an update wakes one task per stream, not two, and an idle
    /// stream holds no task, no channel and no timer. hyper asks for the
    /// next piece only once the previous one found flow-control window: a
    /// client that grants none is not served more, and the stream's
    /// [`SendClock`] shows its connection's task since when a response has
    /// waited for it (`--send-timeout`).
    struct XdsStream<P: Protocol> {
        stream: Stream<P>,
        #[pin]
        drain: WaitForCancellationFutureOwned,
    }
}

/// The unpinned part of an [`XdsStream`]: its protocol state and its wire.
struct Stream<P: Protocol> {
    state: P,
    snapshots: SnapshotWatch,
    inbound: Requests<P::Request>,
    outbox: Outbox,
    /// Shows the connection since when a response has waited; `None` for a
    /// request that did not come through `net::serve_xds`.
    clock: Option<SendClock>,
    end: End,
    handle: StreamHandle,
}

/// Where a stream is in ending.
enum End {
    Open,
    /// Ends with this status (`None`: OK) once what is due is sent.
    With(Option<Box<Status>>),
    /// The trailers are sent.
    Finished,
}

impl<P: Protocol> http_body::Body for XdsStream<P> {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.project();
        let frame = this.stream.poll_frame(cx, this.drain);
        this.stream.show_clock();
        frame.map(|frame| frame.map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.stream.end, End::Finished)
    }
}

impl<P: Protocol> Stream<P> {
    /// Shows the connection since when a response has waited to be taken.
    fn show_clock(&self) {
        if let Some(clock) = &self.clock {
            clock.set(self.outbox.oldest_untaken());
        }
    }

    /// The next piece to send, or the trailers once the stream ends.
    fn poll_frame(&mut self, cx: &mut Context<'_>, mut drain: Pin<&mut WaitForCancellationFutureOwned>) -> Poll<Option<Frame<Bytes>>> {
        let mut requests = 0;
        loop {
            if let Some(piece) = self.outbox.next_piece() {
                return Poll::Ready(Some(Frame::data(piece)));
            }
            match &mut self.end {
                End::Open => {}
                End::With(status) => {
                    let status = status.take().map(|status| *status);
                    self.end = End::Finished;
                    return Poll::Ready(Some(Frame::trailers(codec::trailers(status))));
                }
                End::Finished => return Poll::Ready(None),
            }
            if drain.as_mut().poll(cx).is_ready() {
                self.end = End::With(None);
                continue;
            }
            match self.snapshots.poll_changed(cx) {
                Poll::Ready(Ok(())) => {
                    self.send_due();
                    continue;
                }
                Poll::Ready(Err(_)) => {
                    self.end = End::With(None);
                    continue;
                }
                Poll::Pending => {}
            }
            if requests == REQUESTS_PER_POLL {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            requests += 1;
            match ready!(self.inbound.poll_message(cx)) {
                Ok(Some(request)) => {
                    self.receive(&request);
                    self.send_due();
                }
                Ok(None) => self.end = End::With(None),
                Err(status) if is_refusal(&status) => {
                    tracing::warn!(node_id = self.snapshots.node_id(), node_type = %self.snapshots.node_type(), %status, "discovery request refused; ending the stream");
                    self.end = End::With(Some(Box::new(status)));
                }
                Err(status) => {
                    tracing::debug!(node_id = self.snapshots.node_id(), %status, "stream ended by the client");
                    self.end = End::With(None);
                }
            }
        }
    }

    fn receive(&mut self, request: &P::Request) {
        let node_id = self.snapshots.node_id();
        let snapshot = self.snapshots.current();
        match self.state.on_request(request, snapshot.as_deref()) {
            Received::Ack { ty, version } => {
                tracing::debug!(node_id, %ty, version, "ACK");
                self.handle.acked(ty, version);
            }
            Received::Nack { ty, nonce, error } => {
                // R7: visible, and not resent until the bundle changes.
                tracing::warn!(node_id, node_type = %self.snapshots.node_type(), %ty, nonce, error, accepted_version = P::applied_version(request), "NACK: Envoy rejected the config");
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

    /// Queues every response now due. Each type has at most one unanswered
    /// response, so what waits for a client that stopped reading is bounded.
    fn send_due(&mut self) {
        let Some(snapshot) = self.snapshots.current() else { return };
        let due = self.state.due(&snapshot);
        for ty in self.state.take_in_sync() {
            tracing::debug!(node_id = self.snapshots.node_id(), %ty, version = &**snapshot.type_version(ty), "the client holds everything current; nothing sent");
            self.handle.in_sync(ty, snapshot.type_version(ty));
        }
        if due.is_empty() {
            return;
        }
        let now = Instant::now();
        for (ty, response) in due {
            self.handle.sent(ty, snapshot.type_version(ty));
            tracing::debug!(node_id = self.snapshots.node_id(), %ty, version = &**snapshot.type_version(ty), bytes = response.len(), "response sent");
            self.outbox.push(response, now);
        }
    }
}

impl<P: Protocol> Drop for Stream<P> {
    fn drop(&mut self) {
        tracing::info!(node_id = self.snapshots.node_id(), node_type = %self.snapshots.node_type(), stream = self.handle.id(), "stream closed");
    }
}
