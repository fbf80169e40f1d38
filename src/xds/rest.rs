//! REST xDS (R34): `POST /v3/discovery:{rest}` for every type of the table
//! (`listeners`, `clusters`, `routes`, `endpoints`, `secrets`, `runtime`, ...)
//! with a JSON `DiscoveryRequest`, answered with a canonical proto3 JSON
//! `DiscoveryResponse`. State of the world without a stream: each request
//! says which version the client holds (`version_info`) and what it wants
//! (`resource_names`: none or `*` for all of a full-state type, such as
//! listeners and clusters; for the others, the names).
//!
//! - A client behind the bundle's version gets the current set at once.
//! - A client that holds the current version is held until the bundle
//!   changes (200, the new version) or the hold ends (304, empty body). The
//!   hold is `--rest-xds-hold`, but never longer than the client waits: Envoy
//!   announces its `request_timeout` in `x-envoy-expected-rq-timeout-ms`, and
//!   the hold ends a second before it (at the latest at half of it). It is
//!   cut short, with a 304, when the connection drains or sxds shuts down.
//! - A node type without a bundle is never answered with an empty set, which
//!   would delete every listener and cluster (R37): the request is held like
//!   a current one, then answered 503.
//! - REST has no nonce, and Envoy reports no NACK over it: it polls again
//!   with the version it last accepted, so a rejected version is fetched
//!   again on every poll (Envoy counts `update_rejected`). A client that does
//!   send `error_detail` is taken at its word: recorded, and held until the
//!   bundle changes.
//!
//! It is served on the xDS port, not the REST API's: that is what an Envoy's
//! `xds_cluster` already reaches (HTTP/2), with the same TLS and, with
//! `--xds-client-ca`, the same check that the client certificate names the
//! node type (403 otherwise). The REST API's connection cap and timeouts are
//! sized for writers, not for every Envoy holding a poll open.
//!
//! Each resource is printed as JSON once per bundle version, on the first
//! REST request for its type, into one chunk per type that every wildcard
//! answer then sends as it is ([`Snapshot::make_json`]). Pollers
//! are listed in `GET /nodes` (protocol `rest`, an entry per node id and
//! type) until [`POLLER_TTL`] after their last request; their answers are
//! counted in `sxds_rest_requests_total`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    body::Body,
    extract::{Request, State},
    http::{
        header::{CONTENT_TYPE, RETRY_AFTER},
        HeaderMap, StatusCode,
    },
    response::{IntoResponse, Response},
    routing::post,
    Json, Router,
};
use bytes::Bytes;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use http_body_util::BodyExt;
use prost_reflect::{DeserializeOptions, DynamicMessage, MessageDescriptor, SerializeOptions};
use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{
    limits,
    status::{Registry, StreamHandle},
};
use crate::{
    cache::{Cache, JsonResources, Resource, Snapshot, SnapshotWatch},
    net::{CertifiedNodeTypes, ConnectionDrain},
    node_type::NodeType,
    resource_type::{PerType, ResourceType},
    schema,
};

/// Every REST discovery path is this and the type's `rest` name.
pub const PATH_PREFIX: &str = "/v3/discovery:";

/// How long a request body may take to arrive once its headers did.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a client announces how long it waits for an answer: Envoy sends its
/// `api_config_source.request_timeout` (1 s unless set) in every request.
const ANNOUNCED_TIMEOUT: &str = "x-envoy-expected-rq-timeout-ms";

/// A hold ends at least this long before the client's announced timeout,
/// for the answer to reach it in time.
const CLIENT_MARGIN: Duration = Duration::from_secs(1);

/// A poller is listed in `GET /nodes` until this long after its last
/// request: longer than Envoy's pause between polls (`refresh_delay` plus as
/// much jitter) for any usual `refresh_delay`.
pub const POLLER_TTL: Duration = Duration::from_secs(120);

/// How often the pollers gone quiet are forgotten.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Most node ids listed as pollers at once. Node ids come from clients:
/// past this, new ones are served but not listed.
const MAX_POLLERS: usize = 100_000;

const DISCOVERY_REQUEST: &str = "envoy.service.discovery.v3.DiscoveryRequest";

/// The REST discovery endpoints. Cheap to clone.
#[derive(Clone)]
pub struct RestXds {
    cache: Cache,
    registry: Registry,
    pollers: Pollers,
    hold: Duration,
    shutdown: CancellationToken,
}

/// What a held request ended with.
enum Waited {
    /// A snapshot the client does not hold: answer it.
    Due(Arc<Snapshot>),
    /// The hold ended and the client holds the current version: 304.
    Current,
    /// The hold ended and the node type has no bundle: 503.
    NoBundle,
}

impl RestXds {
    /// `hold`: the longest a poll whose version is current is held open.
    pub fn new(cache: Cache, registry: Registry, hold: Duration, shutdown: CancellationToken) -> Self {
        Self { cache, registry, pollers: Pollers::default(), hold, shutdown }
    }

    /// `POST /v3/discovery:{type}` for every type served.
    pub fn router(self) -> Router {
        let mut router = Router::new();
        // On-demand types (VHDS) have no REST path: they are delta only.
        for ty in ResourceType::ALL.into_iter().filter(|ty| !ty.info().rest.is_empty()) {
            let path = format!("{PATH_PREFIX}{}", ty.info().rest);
            router = router.route(&path, post(move |State(rest): State<RestXds>, request: Request| rest.serve(ty, request)));
        }
        router.with_state(self)
    }

    async fn serve(self, ty: ResourceType, request: Request) -> Response {
        let response = self.answer(ty, request).await.unwrap_or_else(IntoResponse::into_response);
        self.registry.metrics().rest_request(ty, response.status().as_u16());
        response
    }

    async fn answer(&self, ty: ResourceType, request: Request) -> Result<Response, RestError> {
        let (parts, body) = request.into_parts();
        // Ends with the connection (--max-stream-age) or at shutdown.
        let drain = parts.extensions.get::<ConnectionDrain>().map_or_else(|| self.shutdown.clone(), |d| d.0.clone());
        let certified = parts.extensions.get::<CertifiedNodeTypes>().cloned();
        let hold = hold_for(self.hold, announced_timeout(&parts.headers));
        let request = parse_request(&read_body(body).await?)?;
        check_request(ty, &request)?;
        let node_id = request.node.as_ref().map_or("", |node| node.id.as_str());
        let node_type = NodeType::of_node_id(node_id);
        if let Some(certified) = certified.filter(|c| !c.allows(&node_type)) {
            tracing::warn!(node_id, %node_type, certificate_node_types = %certified, %ty,
                "REST discovery request refused: the client certificate does not name its node type");
            return Err(RestError::Forbidden(format!(
                "node id {node_id:?} is of node type {:?}, but the client certificate names node types: {certified}",
                node_type.as_str()
            )));
        }
        let (version, nack) = (request.version_info.as_str(), request.error_detail.as_ref().map(|status| status.message.as_str()));
        if let Some(error) = nack {
            tracing::warn!(node_id, %node_type, %ty, error, accepted_version = version, "NACK over REST: the client rejected the config");
        }
        self.pollers.record(&self.registry, node_id, &node_type, ty, |poller| poller.reported(ty, version, nack));

        let mut snapshots = self.cache.subscribe(&node_type, node_id);
        let waited = wait(&mut snapshots, ty, version, nack.is_some(), hold, &drain).await;
        drop(snapshots);
        match waited {
            Waited::Due(snapshot) => {
                let body = Chunks::new(response_body(ty, &snapshot, &request.resource_names).await?);
                tracing::debug!(node_id, %ty, client_version = version, version = &**snapshot.type_version(ty), bytes = body.len, "REST discovery response");
                self.pollers.record(&self.registry, node_id, &node_type, ty, |poller| poller.handle.sent(ty, snapshot.type_version(ty)));
                Ok(([(CONTENT_TYPE, "application/json")], Body::new(body)).into_response())
            }
            Waited::Current => {
                tracing::debug!(node_id, %ty, version, ?hold, "REST discovery request: not modified");
                Ok(StatusCode::NOT_MODIFIED.into_response())
            }
            Waited::NoBundle => Err(RestError::NoBundle(node_type)),
        }
    }
}

/// The hold for a client that announced it waits `announced`.
fn hold_for(hold: Duration, announced: Option<Duration>) -> Duration {
    match announced {
        Some(waits) => hold.min(waits.saturating_sub(CLIENT_MARGIN).max(waits / 2)),
        None => hold,
    }
}

fn announced_timeout(headers: &HeaderMap) -> Option<Duration> {
    let ms: u64 = headers.get(ANNOUNCED_TIMEOUT)?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_millis(ms))
}

/// Waits, at most `hold`, for a snapshot the client does not hold: one of
/// another version than `version`, or, after a NACK (`rejected`), any other
/// than the current one.
async fn wait(snapshots: &mut SnapshotWatch, ty: ResourceType, version: &str, rejected: bool, hold: Duration, drain: &CancellationToken) -> Waited {
    let deadline = Instant::now() + hold;
    let arrived = snapshots.current();
    let mut current = arrived.clone();
    loop {
        match &current {
            Some(snapshot) if rejected && !arrived.as_ref().is_some_and(|a| Arc::ptr_eq(a, snapshot)) => return Waited::Due(snapshot.clone()),
            Some(snapshot) if !rejected && **snapshot.type_version(ty) != *version => return Waited::Due(snapshot.clone()),
            _ => {}
        }
        tokio::select! {
            changed = snapshots.changed() => if changed.is_err() { break },
            () = tokio::time::sleep_until(deadline) => break,
            () = drain.cancelled() => break,
        }
        current = snapshots.current();
    }
    if current.is_some() {
        Waited::Current
    } else {
        Waited::NoBundle
    }
}

async fn read_body(body: Body) -> Result<Bytes, RestError> {
    let limited = http_body_util::Limited::new(body, limits::MAX_REQUEST_BYTES);
    match tokio::time::timeout(BODY_TIMEOUT, limited.collect()).await {
        Err(_) => Err(RestError::BodyTimeout),
        Ok(Err(error)) if error.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(RestError::TooLarge),
        Ok(Err(error)) => Err(RestError::Body(error.to_string())),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// Reads a JSON `DiscoveryRequest`, refusing unknown fields and wrong types
/// with the path of the field. Unknown fields inside `node` are ignored: a
/// newer Envoy may describe itself with fields this sxds does not know yet.
fn parse_request(body: &[u8]) -> Result<DiscoveryRequest, RestError> {
    let descriptor = schema::pool().get_message_by_name(DISCOVERY_REQUEST).ok_or_else(|| RestError::Internal(format!("{DISCOVERY_REQUEST} is not in the descriptor pool")))?;
    let message = match deserialize(&descriptor, body, true) {
        Ok(message) => message,
        Err((path, message)) if unknown_field(&message).is_some() && (path == "node" || path.starts_with("node.")) => {
            deserialize(&descriptor, body, false).map_err(|(path, message)| field_error(&path, message))?
        }
        Err((path, message)) => return Err(field_error(&path, message)),
    };
    message.transcode_to::<DiscoveryRequest>().map_err(|e| RestError::Internal(format!("a parsed DiscoveryRequest does not decode: {e}")))
}

/// The message, or the tracked path of the error and the error.
fn deserialize(descriptor: &MessageDescriptor, body: &[u8], strict: bool) -> Result<DynamicMessage, (String, String)> {
    let options = DeserializeOptions::new().deny_unknown_fields(strict);
    let mut json = serde_json::Deserializer::from_slice(body);
    let mut track = serde_path_to_error::Track::new();
    let parsed = DynamicMessage::deserialize_with_options(descriptor.clone(), serde_path_to_error::Deserializer::new(&mut json, &mut track), &options);
    let parsed = parsed.and_then(|message| json.end().map(|()| message));
    parsed.map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            // Not JSON: no field to blame.
            (String::new(), format!("malformed JSON: {e}"))
        } else {
            (track.path().to_string(), e.to_string())
        }
    })
}

/// The field prost-reflect found unknown, from its message.
fn unknown_field(message: &str) -> Option<&str> {
    message.strip_prefix("unrecognized field name '").and_then(|rest| rest.split_once('\'')).map(|(name, _)| name)
}

/// A refusal at the most precise path known: an unknown field is refused
/// after its key was read, so the tracked path ends at its message.
fn field_error(path: &str, message: String) -> RestError {
    let path = if path == "." || path.is_empty() { "" } else { path };
    let join = |key: &str| if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") };
    let path = match unknown_field(&message) {
        Some(name) => join(name),
        None if message.starts_with("message '") && message.contains("' not found") => join("@type"),
        None => path.to_owned(),
    };
    RestError::Invalid { message: format!("not a DiscoveryRequest: {message}"), path: (!path.is_empty()).then_some(path) }
}

/// What gRPC streams are held to as well (see [`limits`]), and the type.
fn check_request(ty: ResourceType, request: &DiscoveryRequest) -> Result<(), RestError> {
    let invalid = |path: String, message: String| RestError::Invalid { message, path: Some(path) };
    if !request.type_url.is_empty() && request.type_url != ty.type_url() {
        let message = format!("{PATH_PREFIX}{} serves {}, not {}", ty.info().rest, ty.type_url(), request.type_url);
        return Err(invalid("type_url".into(), message));
    }
    let node_id = request.node.as_ref().map_or("", |node| node.id.as_str());
    if node_id.is_empty() {
        return Err(invalid("node.id".into(), "a discovery request must carry node.id: the node type is its part before the first '-'".into()));
    }
    if node_id.len() > limits::MAX_NODE_ID_BYTES {
        let message = format!("a node.id of {} bytes is longer than the limit of {} bytes", node_id.len(), limits::MAX_NODE_ID_BYTES);
        return Err(invalid("node.id".into(), message));
    }
    if request.resource_names.len() > limits::MAX_RESOURCE_NAMES {
        let message = format!("a discovery request may name at most {} resources", limits::MAX_RESOURCE_NAMES);
        return Err(invalid("resource_names".into(), message));
    }
    if let Some((i, name)) = request.resource_names.iter().enumerate().find(|(_, name)| name.len() > limits::MAX_RESOURCE_NAME_BYTES) {
        let message = format!("a resource name of {} bytes is longer than the limit of {} bytes", name.len(), limits::MAX_RESOURCE_NAME_BYTES);
        return Err(invalid(format!("resource_names[{i}]"), message));
    }
    Ok(())
}

/// The resources of `ty` a request for `names` gets, by index: `None` for
/// all (a wildcard on listeners or clusters, R14), else those named that
/// exist, each once (R13), in name order.
fn selected(ty: ResourceType, resources: &[Resource], names: &[String]) -> Option<Vec<usize>> {
    if ty.is_full_state() && (names.is_empty() || names.iter().any(|name| name == "*")) {
        return None;
    }
    let mut picked: Vec<usize> = names.iter().filter_map(|name| resources.binary_search_by(|r| (**r.name()).cmp(name)).ok()).collect();
    picked.sort_unstable();
    picked.dedup();
    Some(picked)
}

/// The canonical JSON of the `DiscoveryResponse` for `names` (fields in
/// number order, the empty ones left out), in chunks: a wildcard answer
/// shares the snapshot's chunk of every resource rather than copying it.
async fn response_body(ty: ResourceType, snapshot: &Arc<Snapshot>, names: &[String]) -> Result<Vec<Bytes>, RestError> {
    if snapshot.json(ty).is_none() {
        // Once per version and type: printing a large bundle takes a while.
        let snapshot = snapshot.clone();
        let print = move || {
            // Kept in the snapshot; read below.
            let _ = snapshot.make_json(ty, print_resources);
        };
        tokio::task::spawn_blocking(print).await.map_err(|e| RestError::Internal(format!("printing resources as JSON failed: {e}")))?;
    }
    let json = match snapshot.json(ty) {
        Some(Ok(json)) => json,
        Some(Err(error)) => return Err(RestError::Internal(format!("cannot print the {ty} of version {} as JSON: {error}", snapshot.version()))),
        None => return Err(RestError::Internal("resources not printed".into())),
    };
    let resources = match selected(ty, snapshot.resources(ty), names) {
        None => json.all.clone(),
        // A few names, usually (one cluster's endpoints): copied.
        Some(picked) => {
            let mut joined = Vec::with_capacity(picked.iter().map(|&i| json.each[i].len() + 1).sum());
            for (n, &i) in picked.iter().enumerate() {
                if n > 0 {
                    joined.push(b',');
                }
                joined.extend_from_slice(&json.each[i]);
            }
            joined.into()
        }
    };
    let mut head = b"{\"versionInfo\":".to_vec();
    push_string(&mut head, snapshot.type_version(ty));
    let mut tail = Vec::new();
    if !resources.is_empty() {
        head.extend_from_slice(b",\"resources\":[");
        tail.push(b']');
    }
    tail.extend_from_slice(b",\"typeUrl\":");
    push_string(&mut tail, ty.type_url());
    tail.push(b'}');
    Ok(vec![head.into(), resources, tail.into()])
}

fn push_string(out: &mut Vec<u8>, text: &str) {
    // Writing a string to a Vec cannot fail.
    let _ = serde_json::to_writer(out, text);
}

/// Every resource's `Any` as canonical JSON, `@type` first, comma-separated
/// in one chunk.
fn print_resources(resources: &[Resource]) -> Result<JsonResources, String> {
    let any = schema::pool().get_message_by_name("google.protobuf.Any").ok_or("google.protobuf.Any is not in the descriptor pool")?;
    let options = SerializeOptions::new();
    let mut all = Vec::new();
    let mut bounds = Vec::with_capacity(resources.len());
    for resource in resources {
        if !all.is_empty() {
            all.push(b',');
        }
        let start = all.len();
        let message = DynamicMessage::decode(any.clone(), resource.any()).map_err(|e| format!("{}: {e}", resource.name()))?;
        message.serialize_with_options(&mut serde_json::Serializer::new(&mut all), &options).map_err(|e| format!("{}: {e}", resource.name()))?;
        bounds.push(start..all.len());
    }
    let all = Bytes::from(all);
    let each = bounds.into_iter().map(|range| all.slice(range)).collect();
    Ok(JsonResources { all, each })
}

/// A response body of shared chunks, written as they are.
struct Chunks {
    chunks: std::vec::IntoIter<Bytes>,
    len: u64,
}

impl Chunks {
    fn new(chunks: Vec<Bytes>) -> Self {
        let len = chunks.iter().map(|chunk| chunk.len() as u64).sum();
        Self { chunks: chunks.into_iter(), len }
    }
}

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(mut self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let next = self.chunks.next();
        if let Some(chunk) = &next {
            self.len -= chunk.len() as u64;
        }
        std::task::Poll::Ready(next.map(|chunk| Ok(http_body::Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.len == 0
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.len)
    }
}

/// REST pollers seen lately, by node id: a poll is no stream, so each node
/// id and type gets a registry entry of its own while it keeps polling.
#[derive(Clone, Default)]
struct Pollers(Arc<Mutex<PollerMap>>);

#[derive(Default)]
struct PollerMap {
    // A std Mutex guards it: held to find or update one entry, never across an await.
    by_node: HashMap<String, PerType<Option<Poller>>>,
    swept_at: Option<Instant>,
}

/// One node id's polls of one type.
struct Poller {
    handle: StreamHandle,
    /// The last version its requests said it holds.
    reported: Option<Arc<str>>,
    seen: Instant,
}

impl Poller {
    /// What a request says the client holds: a version not reported before
    /// counts as its ACK (R5); an `error_detail` is a NACK (R6).
    fn reported(&mut self, ty: ResourceType, version: &str, error: Option<&str>) {
        if let Some(error) = error {
            self.handle.rejected(ty, "", error);
        } else if !version.is_empty() && self.reported.as_deref() != Some(version) {
            self.handle.acked(ty, Some(version));
            self.reported = Some(version.into());
        }
    }
}

impl Pollers {
    /// Runs `f` on the entry of `node_id`'s polls of `ty`, made on its first.
    fn record(&self, registry: &Registry, node_id: &str, node_type: &NodeType, ty: ResourceType, f: impl FnOnce(&mut Poller)) {
        let now = Instant::now();
        let mut expired = Vec::new();
        {
            let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
            if map.swept_at.is_none_or(|at| now.duration_since(at) >= SWEEP_EVERY) {
                map.swept_at = Some(now);
                map.by_node.retain(|_, types| {
                    for ty in ResourceType::ALL {
                        if types[ty].as_ref().is_some_and(|p| now.duration_since(p.seen) > POLLER_TTL) {
                            expired.extend(types[ty].take());
                        }
                    }
                    types.values().any(Option::is_some)
                });
            }
            if !map.by_node.contains_key(node_id) {
                if map.by_node.len() >= MAX_POLLERS {
                    return;
                }
                map.by_node.insert(node_id.to_owned(), PerType::default());
            }
            let Some(types) = map.by_node.get_mut(node_id) else { return };
            let poller = types[ty].get_or_insert_with(|| Poller {
                handle: registry.open(node_id, node_type, ty.info().short, "rest"),
                reported: None,
                seen: now,
            });
            poller.seen = now;
            f(poller);
        }
        // Leaving the registry takes its lock: not under this one.
        drop(expired);
    }
}

/// Why a REST discovery request is not answered with resources.
#[derive(Debug, thiserror::Error)]
enum RestError {
    #[error("{message}")]
    Invalid { message: String, path: Option<String> },
    #[error("the request body is larger than {} bytes", limits::MAX_REQUEST_BYTES)]
    TooLarge,
    #[error("the request body did not arrive within {BODY_TIMEOUT:?}")]
    BodyTimeout,
    #[error("cannot read the request body: {0}")]
    Body(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("no bundle for node type {0}: nothing is served until one is PUT (an empty answer would delete every listener and cluster)")]
    NoBundle(NodeType),
    #[error("internal error")]
    Internal(String),
}

impl IntoResponse for RestError {
    fn into_response(self) -> Response {
        let status = match &self {
            Self::Invalid { .. } | Self::Body(_) => StatusCode::BAD_REQUEST,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NoBundle(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(detail) => {
                tracing::error!(detail, "REST discovery request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let mut body = json!({ "error": self.to_string() });
        if let Self::Invalid { path: Some(path), .. } = &self {
            body["path"] = path.as_str().into();
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            return (status, [(RETRY_AFTER, "1")], Json(body)).into_response();
        }
        (status, Json(body)).into_response()
    }
}

/// Whether `path` is a REST discovery path, served or not.
pub fn is_discovery_path(path: &str) -> bool {
    path.starts_with(PATH_PREFIX)
}

/// The 404 of a discovery path for a type sxds does not serve.
pub fn unknown_type(path: &str) -> Response {
    let served: Vec<String> =
        ResourceType::ALL.iter().filter(|ty| !ty.info().rest.is_empty()).map(|ty| format!("{PATH_PREFIX}{}", ty.info().rest)).collect();
    let error = format!("sxds serves no {path}; REST discovery is served at {}", served.join(", "));
    (StatusCode::NOT_FOUND, Json(json!({ "error": error }))).into_response()
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;

    use super::*;
    use crate::schema::{Bundle, StoredBundle};

    fn snapshot(version: &str, clusters: &[&str]) -> Arc<Snapshot> {
        let clusters = clusters.iter().map(|name| Cluster { name: (*name).into(), ..Default::default() }).collect();
        let bundle = Bundle { version: version.into(), clusters, ..Default::default() };
        Arc::new(Snapshot::build(1, Arc::new(StoredBundle::from_bundle(bundle, String::new())), None))
    }

    #[test]
    fn the_hold_stays_under_what_the_client_announces_it_waits() {
        let (hold, s) = (Duration::from_secs(30), Duration::from_secs);
        assert_eq!(hold_for(hold, None), hold);
        assert_eq!(hold_for(hold, Some(s(1))), Duration::from_millis(500), "Envoy's default request_timeout: half of it");
        assert_eq!(hold_for(hold, Some(s(7))), s(6), "a second under it");
        assert_eq!(hold_for(hold, Some(s(60))), hold, "never longer than --rest-xds-hold");
        assert_eq!(hold_for(Duration::ZERO, Some(s(60))), Duration::ZERO);
        assert_eq!(hold_for(hold, Some(Duration::ZERO)), Duration::ZERO);
        let mut headers = HeaderMap::new();
        headers.insert(ANNOUNCED_TIMEOUT, "7000".parse().unwrap());
        assert_eq!(announced_timeout(&headers), Some(s(7)));
        headers.insert(ANNOUNCED_TIMEOUT, "soon".parse().unwrap());
        assert_eq!(announced_timeout(&headers), None);
    }

    #[test]
    fn bad_requests_are_refused_at_the_field() {
        let refused = |body: &str| match parse_request(body.as_bytes()) {
            Err(RestError::Invalid { path, message }) => (path, message),
            other => panic!("{body}: {other:?}"),
        };
        assert_eq!(refused(r#"{"resource_names": 3}"#).0.as_deref(), Some("resource_names"));
        assert_eq!(refused(r#"{"node": {"id": "a"}, "colour": "red"}"#).0.as_deref(), Some("colour"));
        assert_eq!(refused(r#"{"node": {"id": 7}}"#).0.as_deref(), Some("node.id"));
        assert_eq!(refused(r#"{"errorDetail": {"details": [{"@type": "type.googleapis.com/no.Such"}]}}"#).0.as_deref(), Some("errorDetail.details[0].@type"));
        assert_eq!(refused("{").0, None, "malformed JSON has no field to name");
        // A newer Envoy's node may carry fields this pool lacks.
        let parsed = parse_request(br#"{"node": {"id": "sidecar-1", "future_field": {"x": 1}}, "version_info": "v1"}"#).unwrap();
        assert_eq!((parsed.node.unwrap().id.as_str(), parsed.version_info.as_str()), ("sidecar-1", "v1"));
        let parsed = parse_request(br#"{"node": {"id": "sidecar-1"}, "resourceNames": ["a"], "typeUrl": ""}"#).unwrap();
        assert_eq!(parsed.resource_names, ["a"], "lowerCamelCase names too");
    }

    #[test]
    fn requests_must_name_a_node_and_may_name_only_their_paths_type() {
        let request = |body: &str| parse_request(body.as_bytes()).unwrap();
        let path_of = |result: Result<(), RestError>| match result {
            Err(RestError::Invalid { path, .. }) => path,
            other => panic!("{other:?}"),
        };
        assert_eq!(path_of(check_request(ResourceType::Cluster, &request("{}"))).as_deref(), Some("node.id"));
        let listeners = request(r#"{"node": {"id": "a"}, "type_url": "type.googleapis.com/envoy.config.listener.v3.Listener"}"#);
        assert_eq!(path_of(check_request(ResourceType::Cluster, &listeners)).as_deref(), Some("type_url"));
        assert!(check_request(ResourceType::Listener, &listeners).is_ok());
        let long = request(&format!(r#"{{"node": {{"id": "a"}}, "resource_names": ["a", "{}"]}}"#, "x".repeat(limits::MAX_RESOURCE_NAME_BYTES + 1)));
        assert_eq!(path_of(check_request(ResourceType::Route, &long)).as_deref(), Some("resource_names[1]"));
    }

    #[test]
    fn listeners_and_clusters_take_a_wildcard_routes_and_endpoints_their_names() {
        let snapshot = snapshot("v1", &["b", "a", "c"]);
        let resources = snapshot.resources(ResourceType::Cluster);
        let names = |list: &[&str]| list.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
        assert_eq!(selected(ResourceType::Cluster, resources, &[]), None);
        assert_eq!(selected(ResourceType::Cluster, resources, &names(&["c", "*"])), None);
        assert_eq!(selected(ResourceType::Cluster, resources, &names(&["c", "a", "c", "zz"])), Some(vec![0, 2]), "R13, R16");
        assert_eq!(selected(ResourceType::Endpoint, &[], &[]), Some(vec![]), "no names, nothing");
    }

    #[tokio::test]
    async fn the_response_is_what_prost_reflect_prints_for_the_discovery_response() {
        use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
        use prost::Message;
        let snapshot = snapshot("v\"7", &["b", "a"]);
        for (names, expected) in [(vec![], vec!["a", "b"]), (vec!["b".to_owned()], vec!["b"]), (vec!["nope".to_owned()], vec![])] {
            let body = response_body(ResourceType::Cluster, &snapshot, &names).await.unwrap().concat();
            let picked = expected.iter().map(|name| envoy_types::pb::google::protobuf::Any::decode(snapshot.resource(ResourceType::Cluster, name).unwrap().any()).unwrap());
            let response = DiscoveryResponse { version_info: "v\"7".into(), resources: picked.collect(), type_url: ResourceType::Cluster.type_url().into(), ..Default::default() };
            let descriptor = schema::pool().get_message_by_name("envoy.service.discovery.v3.DiscoveryResponse").unwrap();
            let dynamic = DynamicMessage::decode(descriptor, response.encode_to_vec().as_slice()).unwrap();
            let canonical = serde_json::to_vec(&dynamic).unwrap();
            assert_eq!(String::from_utf8(body).unwrap(), String::from_utf8(canonical).unwrap(), "names {names:?}");
        }
        let chunks = response_body(ResourceType::Cluster, &snapshot, &[]).await.unwrap();
        let printed: serde_json::Value = serde_json::from_slice(&chunks.concat()).unwrap();
        assert_eq!(printed["resources"][0], json!({"@type": ResourceType::Cluster.type_url(), "name": "a"}));
        let shared = &snapshot.json(ResourceType::Cluster).unwrap().unwrap().all;
        assert_eq!(chunks[1].as_ptr(), shared.as_ptr(), "a wildcard answer shares the printed resources");
    }
}
