//! The state-of-the-world stream state machine: what one stream has asked
//! for, what it was sent, and when to send again. Pure logic; the I/O
//! (the stream as its response body) lives in `xds::server`.
//!
//! Per type a stream remembers its subscription, the snapshot its last
//! response came from and whether that response is still unanswered. A
//! response is sent when:
//! - the client asked for the type and is not holding an unanswered response
//!   of it (each response is ACKed or NACKed before the next: bursts of
//!   updates coalesce into the latest snapshot);
//! - on ADS, listeners and routes wait while clusters or endpoints are
//!   unanswered, so they never point at a cluster still warming (R23);
//! - and something the client asked for changed (R8), a name was newly
//!   subscribed (R11, R12), or the request was not an ACK/NACK of our last
//!   response: Envoy re-requests when a cluster or listener starts warming
//!   and needs a fresh answer even if nothing changed (R21, R22). On ADS
//!   that answer does not wait to be asked for: it follows the CDS (LDS)
//!   response that started the warming, in the same write.
//!
//! A request that is neither a reply nor a change (the client repeats an ACK
//! or NACK it already sent, same nonce, same names) is answered only if the
//! node type's snapshot moved since the type's last response, or (on ADS) a
//! CDS or LDS response went out after the EDS or RDS one: that is Envoy's
//! warming re-request after a CDS or LDS update. Anything else a client
//! repeats, however often, gets nothing (R7, R8, R10).
//!
//! On ADS, clusters that a new bundle drops are removed last (R23): the
//! first CDS response of the update still carries those the client holds and
//! still subscribes to, so routes that point at them keep working until the
//! new listeners and routes are in; a final CDS response drops them once
//! every other type is answered.

use std::sync::{Arc, Weak};

use bytes::BytesMut;

use super::{
    names::Names,
    request::SotwRequest,
};
use crate::{
    cache::Snapshot,
    resource_type::{Empty, ResourceType, Sparse},
    wire::{self, discovery_response as field, EncodedResponse},
};

/// Which service a stream came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// ADS: every type on one stream, each request naming its type.
    Aggregated,
    /// A per-type service (LDS, CDS, RDS, EDS); the type URL may be empty (R3).
    Single(ResourceType),
}

impl StreamKind {
    /// The type a request of `type_url` is about, if this stream serves it.
    pub fn type_of(self, type_url: &str) -> Option<ResourceType> {
        match self {
            Self::Single(ty) if type_url.is_empty() || type_url == ty.type_url() => Some(ty),
            Self::Single(_) => None,
            Self::Aggregated => ResourceType::from_type_url(type_url),
        }
    }

    pub fn service_name(self) -> &'static str {
        match self {
            Self::Aggregated => "ads",
            Self::Single(ty) => ty.info().short,
        }
    }
}

/// What a request turned out to be, for logging and status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received<'a> {
    /// First request of a type, or a subscription change.
    Request { ty: ResourceType },
    /// The client applied our last response (R5), of this version (a delta
    /// ACK names none: the version sent).
    Ack { ty: ResourceType, version: Option<&'a str> },
    /// The client rejected our last response (R6).
    Nack { ty: ResourceType, nonce: &'a str, error: &'a str },
    /// A nonce other than our latest for the type: ignored (R10).
    Stale { ty: ResourceType },
    /// The client repeated itself and nothing changed since: ignored
    /// (R7, R8).
    Repeat { ty: ResourceType },
    /// A type sxds does not serve (secrets, runtime, ...), or the wrong type
    /// on a per-type service.
    Unknown { type_url: &'a str },
}

#[derive(Debug, Default)]
struct TypeState {
    /// A request for the type has been seen.
    requested: bool,
    /// LDS/CDS wildcard subscription (R14).
    wildcard: bool,
    /// Explicitly subscribed names.
    names: Names,
    /// The client named resources at some point, so an empty list now means
    /// "none" rather than the legacy wildcard (R15).
    ever_named: bool,
    /// Digests of the last request's `resource_names`: as sent (most
    /// requests are ACKs repeating them), and as a set (the same names in
    /// another order are the same subscription).
    last_names_wire: u64,
    last_names_digest: u64,
    /// Names subscribed since the last response: sent even if unchanged (R11).
    newly_named: Names,
    /// The next response carries the whole subscription (R21, R22).
    refresh: bool,
    /// The next response carries, besides what changed, what a CDS (LDS)
    /// response just sent from this snapshot refers to that is new or
    /// changed: the warming clusters' (listeners') fresh answer (R21, R22).
    /// Sent from another snapshot, or to a client holding one older than
    /// the snapshot it replaced, it is the whole subscription: no list of
    /// changes tells which names then. Weak, like `answered_from`.
    rewarm: Option<Weak<Snapshot>>,
    /// The stream's count of responses when the last one of this type went
    /// out (0 before the first): orders responses across types, and is the
    /// last response's nonce, in decimal.
    sent_seq: u64,
    /// The last response has not been ACKed or NACKed yet.
    awaiting_reply: bool,
    /// The snapshot the last response came from: what the client holds for
    /// every subscribed name.
    sent: Option<Arc<Snapshot>>,
    /// The snapshot the last response was actually built from (`sent`
    /// moves on without a response when nothing the client holds changed).
    /// Weak: a stream must not keep old bundles alive.
    answered_from: Weak<Snapshot>,
    /// CDS only: clusters of an older bundle the client keeps for make
    /// before break, and the snapshot they come from; a final response
    /// removes them.
    /// Boxed: rarely there, and every type of every stream has the field.
    retiring: Option<Box<Retiring>>,
    /// ADS CDS only: the named subscription the last response answered
    /// (`None` for a wildcard one). With `sent`, what the client holds.
    sent_names: Option<Names>,
}

/// CDS clusters of an older bundle kept for make before break, and the
/// snapshot they come from.
type Retiring = (Arc<Snapshot>, Vec<Arc<str>>);

/// Per-stream protocol state.
#[derive(Debug)]
pub struct StreamState {
    kind: StreamKind,
    types: Sparse<TypeState>,
    nonces: u64,
}

impl StreamState {
    pub fn new(kind: StreamKind) -> Self {
        Self { kind, types: Default::default(), nonces: 0 }
    }

    /// Takes in one request: ACK/NACK bookkeeping and subscription changes.
    /// `snapshot` (the node type's current one, if any) lends its copies of
    /// resource names to the subscription, so streams share them.
    pub fn on_request<'a>(&mut self, request: &'a SotwRequest, snapshot: Option<&Snapshot>) -> Received<'a> {
        // On-demand types (VHDS) are delta only.
        let Some(ty) = self.kind.type_of(&request.type_url).filter(|ty| !ty.info().on_demand) else {
            return Received::Unknown { type_url: &request.type_url };
        };
        // On ADS, a CDS (LDS) response sent after this type's last response
        // may have started a cluster (listener) warming, and Envoy repeats
        // its EDS (RDS) request for it: an EDS response sent first, while
        // the CDS one waited for the ACK of the one before, does not count.
        let warming_since = self.kind == StreamKind::Aggregated
            && ty.info().warmed_by.iter().any(|parent| self.types[*parent].sent_seq > self.types[ty].sent_seq);
        let state = &mut self.types[ty];
        let nonce = request.response_nonce.as_str();
        if !nonce.is_empty() && !state.is_last_nonce(nonce) {
            return Received::Stale { ty };
        }

        let is_reply = !nonce.is_empty() && state.awaiting_reply;
        let first = !state.requested;
        let names_changed = update_subscription(ty, state, request, snapshot);
        state.requested = true;
        if is_reply {
            state.awaiting_reply = false;
            return match &request.error_detail {
                Some(error) => Received::Nack { ty, nonce, error: &error.message },
                None => Received::Ack { ty, version: Some(&request.version_info) },
            };
        }
        // Not a reply to our latest response. A new subscription supersedes
        // it (R9) and gets a fresh answer; so does a repeat once the
        // snapshot moved: Envoy's warming re-request (R21, R22).
        let snapshot_moved = snapshot.is_some_and(|snapshot| !snapshot.is(&state.answered_from));
        if first || names_changed || snapshot_moved || warming_since {
            state.awaiting_reply = false;
            state.refresh = true;
            Received::Request { ty }
        } else {
            Received::Repeat { ty }
        }
    }

    /// The responses due now, in ADS order, given the node type's snapshot.
    /// (A node type without a bundle has no snapshot, and its streams are
    /// sent nothing: an empty LDS/CDS would delete the Envoy's config, R37.)
    pub fn due(&mut self, snapshot: &Arc<Snapshot>) -> Vec<(ResourceType, EncodedResponse)> {
        let mut responses = Vec::new();
        for ty in ResourceType::ALL {
            if self.kind == StreamKind::Aggregated && self.any_unanswered(ty.info().waits_for) {
                continue;
            }
            let state = &self.types[ty];
            if !state.requested || state.awaiting_reply {
                continue;
            }
            let Some(names) = names_due(ty, state, snapshot) else {
                // Nothing the client holds changed: it is as good as sent,
                // which keeps the next update on the fast path.
                let state = &mut self.types[ty];
                if !state.refresh && state.newly_named.is_empty() && state.sent.is_some() {
                    state.sent = Some(snapshot.clone());
                    state.rewarm = None;
                }
                continue;
            };
            let retiring = self.clusters_to_retire(ty, snapshot);
            let warming = if self.kind == StreamKind::Aggregated { warms(ty, state, snapshot) } else { Warms::Nothing };
            self.nonces += 1;
            let kept = retiring.as_ref().map(|retiring| (retiring.0.as_ref(), retiring.1.as_slice()));
            let response = frame(snapshot, ty, &names, kept, &self.nonces.to_string());
            let remember_names = ty == ResourceType::Cluster && self.kind == StreamKind::Aggregated;
            let state = &mut self.types[ty];
            state.retiring = retiring.map(Box::new);
            state.mark_sent(self.nonces, snapshot, remember_names);
            responses.push((ty, response));
            self.refresh_warmed_by(ty, warming, snapshot);
        }
        // Everything else is answered: drop the clusters kept for make before break.
        let cds = &self.types[ResourceType::Cluster];
        if cds.retiring.is_some() && !self.any_unanswered(&ResourceType::ALL) {
            self.nonces += 1;
            let response = frame(snapshot, ResourceType::Cluster, &subscribed(ResourceType::Cluster, cds, snapshot), None, &self.nonces.to_string());
            let cds = &mut self.types[ResourceType::Cluster];
            cds.retiring = None;
            cds.mark_sent(self.nonces, snapshot, true);
            responses.push((ResourceType::Cluster, response));
        }
        responses
    }

    /// On ADS, new or changed clusters (listeners) warm until a fresh EDS
    /// (RDS) response arrives (R21, R22), and Envoy asks again by the same
    /// names for it. Those answers are due now, behind the response that
    /// started the warming and in the same write, rather than a round trip
    /// later: Envoy's repeat then carries a stale nonce and is ignored
    /// (R10), and any name it adds comes again in its ACK. Types later in
    /// ADS order go out in this very `due`; one still awaiting its reply,
    /// once the reply arrives. Each carries what the parents that changed
    /// refer to, or, when no list of changes tells which, everything.
    fn refresh_warmed_by(&mut self, parent: ResourceType, warms: Warms, snapshot: &Arc<Snapshot>) {
        if warms == Warms::Nothing {
            return;
        }
        for ty in ResourceType::ALL {
            if ty.info().warmed_by.contains(&parent) && self.types[ty].requested {
                let state = &mut self.types[ty];
                match warms {
                    // Still owed an answer for another snapshot's changes.
                    Warms::Changes if state.rewarm.as_ref().is_some_and(|owed| !snapshot.is(owed)) => state.refresh = true,
                    Warms::Changes => state.rewarm = Some(Arc::downgrade(snapshot)),
                    _ => state.refresh = true,
                }
            }
        }
    }

    fn any_unanswered(&self, types: &[ResourceType]) -> bool {
        types.iter().any(|t| self.types[*t].awaiting_reply)
    }

    /// On ADS, the clusters a CDS response about to be sent would remove
    /// while listeners or routes still have to follow: kept one round longer,
    /// with the snapshot that has them.
    fn clusters_to_retire(&self, ty: ResourceType, snapshot: &Snapshot) -> Option<Retiring> {
        if ty != ResourceType::Cluster || self.kind != StreamKind::Aggregated {
            return None;
        }
        let routing_follows = [ResourceType::Listener, ResourceType::Route].iter().any(|t| self.types[*t].requested);
        let state = &self.types[ty];
        // The usual case: this snapshot replaced the one the client holds,
        // and its own list of removals says no cluster went.
        if state.retiring.is_none() && state.sent.as_ref().is_some_and(|sent| snapshot.removed_since(sent, ty).is_some_and(<[_]>::is_empty)) {
            return None;
        }
        // Still in a transition: keep what the client was told to keep.
        let (from, candidates) = match state.retiring.as_deref() {
            Some((from, names)) => (from.clone(), names.clone()),
            None => {
                let sent = state.sent.clone()?;
                let held = sent.names(ty).filter(|name| state.sent_names.as_ref().is_none_or(|names| names.contains(name)));
                let names = held.filter_map(|name| sent.shared_name(ty, name)).collect();
                (sent, names)
            }
        };
        // Only what the client still subscribes to: a name it never asked
        // for, or has unsubscribed since, is not sent (R17).
        let retired: Vec<Arc<str>> = candidates
            .into_iter()
            .filter(|name| !snapshot.contains(ty, name) && (state.wildcard || state.names.contains(name)))
            .collect();
        (routing_follows && !retired.is_empty()).then_some((from, retired))
    }
}

impl Empty for TypeState {
    fn empty() -> &'static Self {
        static EMPTY: std::sync::LazyLock<TypeState> = std::sync::LazyLock::new(TypeState::default);
        &EMPTY
    }
}

impl TypeState {
    /// Whether `nonce` is the last response's: our nonces are the stream's
    /// count of responses, in decimal, as `u64` writes it.
    fn is_last_nonce(&self, nonce: &str) -> bool {
        self.sent_seq != 0 && !nonce.starts_with(['0', '+']) && nonce.parse() == Ok(self.sent_seq)
    }

    fn mark_sent(&mut self, seq: u64, snapshot: &Arc<Snapshot>, remember_names: bool) {
        self.sent_names = (remember_names && !self.wildcard).then(|| self.names.clone());
        self.sent_seq = seq;
        self.awaiting_reply = true;
        self.sent = Some(snapshot.clone());
        self.answered_from = Arc::downgrade(snapshot);
        self.newly_named = Names::default();
        self.refresh = false;
        self.rewarm = None;
    }
}

/// Applies a request's `resource_names` to the subscription (R14, R15, R17);
/// `false` when they are the last request's names.
fn update_subscription(ty: ResourceType, state: &mut TypeState, request: &SotwRequest, snapshot: Option<&Snapshot>) -> bool {
    // Most requests are ACKs repeating the last one's names: one hash over
    // their encoding spots them without reading a name.
    let wire = request.names_wire_digest();
    if state.requested && wire == state.last_names_wire {
        return false;
    }
    state.last_names_wire = wire;
    let digest = request.names_digest();
    if state.requested && digest == state.last_names_digest {
        return false;
    }
    state.last_names_digest = digest;
    let star = request.resource_names().any(|name| name == "*");
    let names = Names::new(request.resource_names().filter(|name| *name != "*").map(|name| {
        snapshot.and_then(|snapshot| snapshot.shared_name(ty, name)).unwrap_or_else(|| Arc::from(name))
    }));
    let was_wildcard = state.wildcard;
    state.wildcard = ty.is_full_state() && (star || (names.is_empty() && !state.ever_named));
    // An explicit `*` names too: an empty list after it unsubscribes (R15).
    state.ever_named |= !names.is_empty() || star;
    if state.wildcard && !was_wildcard {
        state.refresh = true;
    }
    let still_new = state.newly_named.iter().filter(|name| names.contains(name));
    let added = names.iter().filter(|name| !state.names.contains(name));
    state.newly_named = Names::new(still_new.chain(added).map(|name| names.shared(name)));
    state.names = names;
    true
}

/// The names a response of `ty` should carry now, or `None` if none is due.
fn names_due<'a>(ty: ResourceType, state: &'a TypeState, snapshot: &'a Arc<Snapshot>) -> Option<Selection<'a>> {
    if ty.is_full_state() {
        if !state.wildcard && state.names.is_empty() {
            return None; // unsubscribed from everything (R15)
        }
        // LDS/CDS responses are the full set (R18): send it when the type
        // changed, the subscription grew, or the client asked afresh. A new
        // version is sent on its own only when it changed nothing at all
        // (versions are per type, R4: an endpoint change leaves CDS alone).
        let moved = state.sent.as_ref().is_none_or(|sent| {
            let changed = if state.wildcard {
                snapshot.type_differs(sent, ty)
            } else {
                // A named subscription (proxyless gRPC): only its names count (R8).
                state.names.iter().any(|name| sent.digest(ty, name) != snapshot.digest(ty, name))
            };
            sent.version() != snapshot.version() && (changed || snapshot.same_resources(sent))
        });
        return (moved || state.refresh || state.rewarm.is_some() || !state.newly_named.is_empty()).then(|| subscribed(ty, state, snapshot));
    }
    // A warming resource's fresh answer, when the parents' changes are
    // this snapshot's and the client holds it or the one it replaced: the
    // snapshot's changes of the type plus what those parents refer to;
    // otherwise everything.
    let rewarmed = match (&state.sent, &state.rewarm) {
        (Some(sent), Some(owed)) if snapshot.is(owed) && (Arc::ptr_eq(sent, snapshot) || snapshot.replaced(sent)) => snapshot.rewarmed(ty),
        _ => None,
    };
    let refresh = state.refresh || (state.rewarm.is_some() && rewarmed.is_none());
    // RDS/EDS may be partial (R19): only what the client lacks.
    // A fresh answer (R21, R22: Envoy's warming re-request after a full
    // push) to a subscription of every resource of the type is the type's
    // shared chunk: told by one pass over the two sorted lists, rather than
    // a lookup per subscribed name on each of thousands of streams.
    if refresh && !snapshot.resources(ty).is_empty() && state.names.is(snapshot.shared_names(ty)) {
        return Some(Selection::All);
    }
    // The common cases: the client holds this very snapshot (nothing to
    // send), or the one it replaced (the snapshot's own list of changes
    // decides). Either way no name is compared.
    let known_changes = match (&state.sent, refresh || !state.newly_named.is_empty()) {
        (Some(_), false) if rewarmed.is_some() => rewarmed,
        (Some(sent), false) if Arc::ptr_eq(sent, snapshot) => return None,
        (Some(sent), false) => snapshot.changed_since(sent, ty),
        _ => None,
    };
    let changed: Vec<&str> = match known_changes {
        Some(changes) if state.wildcard => changes.iter().map(|name| &**name).collect(),
        Some(changes) => state.names.common(changes).into_iter().map(|name| &**name).collect(),
        None => existing(ty, state, snapshot)
            .filter(|name| {
                refresh
                    || state.newly_named.contains(name)
                    || rewarmed.is_some_and(|rewarmed| rewarmed.binary_search_by(|r| (**r).cmp(name)).is_ok())
                    || state.sent.as_ref().is_none_or(|sent| sent.digest(ty, name) != snapshot.digest(ty, name))
            })
            .collect(),
    };
    if changed.is_empty() {
        return None;
    }
    // Every resource of the type (a full push, a stream's first response
    // on a mesh it subscribes to whole): the type's one shared chunk, not
    // one entry per name to look up, gather and copy on every stream.
    if changed.len() == snapshot.resources(ty).len() {
        return Some(Selection::All);
    }
    Some(Selection::Named(changed))
}

/// What a response starts warming on the client, which then asks afresh
/// for what the warming resources refer to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Warms {
    /// Nothing: every resource it carries, the client holds as it is.
    Nothing,
    /// Its type's changes since the snapshot the client holds, which the
    /// new snapshot replaced: its list of changes tells what they refer to.
    Changes,
    /// Resources that no list of changes tells.
    Unknown,
}

/// What a response of `ty` from `snapshot` to this subscription warms.
fn warms(ty: ResourceType, state: &TypeState, snapshot: &Arc<Snapshot>) -> Warms {
    let Some(sent) = &state.sent else { return Warms::Unknown };
    if !state.newly_named.is_empty() {
        return Warms::Unknown;
    }
    match snapshot.changed_since(sent, ty) {
        Some(changed) if changed.iter().any(|name| state.wildcard || state.names.contains(name)) => Warms::Changes,
        Some(_) => Warms::Nothing,
        None if Arc::ptr_eq(sent, snapshot) => Warms::Nothing,
        None => Warms::Unknown,
    }
}

/// What a full response of `ty` to this subscription carries.
fn subscribed<'a>(ty: ResourceType, state: &'a TypeState, snapshot: &'a Snapshot) -> Selection<'a> {
    if state.wildcard {
        Selection::All
    } else {
        Selection::Named(existing(ty, state, snapshot).collect())
    }
}

/// Every subscribed name of `ty` that exists in `snapshot`, in order.
fn existing<'a>(ty: ResourceType, state: &'a TypeState, snapshot: &'a Snapshot) -> Box<dyn Iterator<Item = &'a str> + 'a> {
    if state.wildcard {
        Box::new(snapshot.names(ty))
    } else {
        Box::new(state.names.iter().filter(move |name| snapshot.contains(ty, name)))
    }
}

/// Which resources of one type a response carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection<'a> {
    /// Every resource of the type (a wildcard subscription).
    All,
    /// These names, where they exist.
    Named(Vec<&'a str>),
}

/// A DiscoveryResponse of `ty` carrying `selection` from `snapshot`, plus
/// resources of an older snapshot the client must keep a while longer: make
/// before break (R23). The small fields come first in one piece; every
/// resource is its snapshot's shared entry.
pub fn frame(snapshot: &Snapshot, ty: ResourceType, selection: &Selection<'_>, kept: Option<(&Snapshot, &[Arc<str>])>, nonce: &str) -> EncodedResponse {
    let (version, type_url) = (snapshot.type_version(ty).as_bytes(), ty.type_url().as_bytes());
    let mut head = BytesMut::with_capacity(version.len() + type_url.len() + nonce.len() + 12);
    wire::put_bytes_field(&mut head, field::VERSION_INFO, version);
    wire::put_bytes_field(&mut head, field::TYPE_URL, type_url);
    wire::put_bytes_field(&mut head, field::NONCE, nonce.as_bytes());
    let mut response = EncodedResponse::default();
    response.push_encoded(head.freeze());
    match selection {
        Selection::All => response.push_encoded(snapshot.all_entries(ty).clone()),
        Selection::Named(names) => {
            names.iter().filter_map(|name| snapshot.resource(ty, name)).for_each(|r| response.push_encoded(r.entry().clone()));
        }
    }
    if let Some((older, names)) = kept {
        names.iter().filter_map(|name| older.resource(ty, name)).for_each(|r| response.push_encoded(r.entry().clone()));
    }
    response
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod frame_tests {
    use envoy_types::pb::envoy::{config::cluster::v3::Cluster, service::discovery::v3::DiscoveryResponse};
    use prost::Message;

    use super::*;
    use crate::schema::{Bundle, StoredBundle};

    fn snapshot(version: &str, clusters: &[&str]) -> Snapshot {
        let clusters = clusters.iter().map(|name| Cluster { name: (*name).into(), ..Default::default() }).collect();
        let bundle = Bundle { version: version.into(), clusters, ..Default::default() };
        Snapshot::build(1, Arc::new(StoredBundle::from_bundle(bundle, String::new())), None)
    }

    #[test]
    fn responses_decode_as_discovery_responses() {
        let snapshot = snapshot("v7", &["b", "a"]);
        let response = frame(&snapshot, ResourceType::Cluster, &Selection::All, None, "42");
        let decoded = DiscoveryResponse::decode(response.to_bytes()).unwrap();
        assert_eq!((decoded.version_info.as_str(), decoded.nonce.as_str()), ("v7", "42"));
        assert_eq!(decoded.type_url, ResourceType::Cluster.type_url());
        let names: Vec<String> = decoded.resources.iter().map(|any| Cluster::decode(any.value.as_slice()).unwrap().name).collect();
        assert_eq!(names, ["a", "b"]);
        assert!(decoded.resources.iter().all(|any| any.type_url == ResourceType::Cluster.type_url()));
        let named = frame(&snapshot, ResourceType::Cluster, &Selection::Named(vec!["a", "b"]), None, "42");
        assert_eq!(named.to_bytes(), response.to_bytes(), "the shared full set is the same bytes");
    }

    #[test]
    fn resources_are_encoded_once_and_shared_by_every_response() {
        let snapshot = snapshot("v1", &["a"]);
        let first = frame(&snapshot, ResourceType::Cluster, &Selection::Named(vec!["a"]), None, "1");
        let second = frame(&snapshot, ResourceType::Cluster, &Selection::Named(vec!["a"]), None, "2");
        // chunk 0 is the stream's own fields, chunk 1 the resource: the snapshot's bytes.
        assert_eq!(first.chunks().len(), 2);
        assert_eq!(first.chunks()[1].as_ptr(), second.chunks()[1].as_ptr());
        assert_eq!(first.chunks()[1].as_ptr(), snapshot.resource(ResourceType::Cluster, "a").unwrap().entry().as_ptr());
    }
}
