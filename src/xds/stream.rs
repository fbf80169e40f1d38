//! The state-of-the-world stream state machine: what one stream has asked
//! for, what it was sent, and when to send again. Pure logic; the I/O loop
//! lives in `xds::server`.
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
//!   and needs a fresh answer even if nothing changed (R21, R22).
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

use std::{
    hash::{Hash, Hasher},
    sync::{Arc, Weak},
};

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;

use crate::{
    cache::{Selection, Snapshot},
    resource_type::ResourceType,
    xds::codec::EncodedResponse,
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
    pub fn service_name(self) -> &'static str {
        match self {
            Self::Aggregated => "ads",
            Self::Single(ResourceType::Listener) => "lds",
            Self::Single(ResourceType::Cluster) => "cds",
            Self::Single(ResourceType::Route) => "rds",
            Self::Single(ResourceType::Endpoint) => "eds",
        }
    }
}

/// What a request turned out to be, for logging and status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received<'a> {
    /// First request of a type, or a subscription change.
    Request { ty: ResourceType },
    /// The client applied our last response (R5).
    Ack { ty: ResourceType, version: &'a str },
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
    /// Digest of the last request's `resource_names`, as sent: most requests
    /// are ACKs repeating them, and this spots that without a lookup per name.
    last_names_digest: u64,
    /// Names subscribed since the last response: sent even if unchanged (R11).
    newly_named: Names,
    /// The next response carries the whole subscription (R21, R22).
    refresh: bool,
    /// Nonce of the last response; empty before the first.
    nonce: String,
    /// The stream's count of responses when the last one of this type went
    /// out (0 before the first): orders responses across types.
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
    retiring: Option<(Arc<Snapshot>, Vec<Arc<str>>)>,
    /// ADS CDS only: the named subscription the last response answered
    /// (`None` for a wildcard one). With `sent`, what the client holds.
    sent_names: Option<Names>,
}

/// Per-stream protocol state.
#[derive(Debug)]
pub struct StreamState {
    kind: StreamKind,
    types: [TypeState; 4],
    nonces: u64,
}

impl StreamState {
    pub fn new(kind: StreamKind) -> Self {
        Self { kind, types: Default::default(), nonces: 0 }
    }

    /// Takes in one request: ACK/NACK bookkeeping and subscription changes.
    /// `snapshot` (the node type's current one, if any) lends its copies of
    /// resource names to the subscription, so streams share them.
    pub fn on_request<'a>(&mut self, request: &'a DiscoveryRequest, snapshot: Option<&Snapshot>) -> Received<'a> {
        let ty = match (self.kind, request.type_url.as_str()) {
            (StreamKind::Single(ty), "") => ty,
            (StreamKind::Single(ty), url) if url == ty.type_url() => ty,
            (StreamKind::Aggregated, url) => match ResourceType::from_type_url(url) {
                Some(ty) => ty,
                None => return Received::Unknown { type_url: url },
            },
            (StreamKind::Single(_), url) => return Received::Unknown { type_url: url },
        };
        // On ADS, a CDS (LDS) response sent after this type's last response
        // may have started a cluster (listener) warming, and Envoy repeats
        // its EDS (RDS) request for it: an EDS response sent first, while
        // the CDS one waited for the ACK of the one before, does not count.
        let warming_since = self.kind == StreamKind::Aggregated
            && warmed_by(ty).is_some_and(|parent| self.types[parent.index()].sent_seq > self.types[ty.index()].sent_seq);
        let state = &mut self.types[ty.index()];
        let nonce = request.response_nonce.as_str();
        if !nonce.is_empty() && nonce != state.nonce {
            return Received::Stale { ty };
        }

        let is_reply = !nonce.is_empty() && state.awaiting_reply;
        let first = !state.requested;
        let names_changed = update_subscription(ty, state, &request.resource_names, snapshot);
        state.requested = true;
        if is_reply {
            state.awaiting_reply = false;
            return match &request.error_detail {
                Some(error) => Received::Nack { ty, nonce, error: &error.message },
                None => Received::Ack { ty, version: &request.version_info },
            };
        }
        // Not a reply to our latest response. A new subscription supersedes
        // it (R9) and gets a fresh answer; so does a repeat once the
        // snapshot moved: Envoy's warming re-request (R21, R22).
        let snapshot_moved = snapshot.is_some_and(|snapshot| !std::ptr::eq(state.answered_from.as_ptr(), snapshot));
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
            if self.kind == StreamKind::Aggregated && self.any_unanswered(waits_for(ty)) {
                continue;
            }
            let state = &self.types[ty.index()];
            if !state.requested || state.awaiting_reply {
                continue;
            }
            let Some(names) = names_due(ty, state, snapshot) else {
                // Nothing the client holds changed: it is as good as sent,
                // which keeps the next update on the fast path.
                let state = &mut self.types[ty.index()];
                if !state.refresh && state.newly_named.is_empty() && state.sent.is_some() {
                    state.sent = Some(snapshot.clone());
                }
                continue;
            };
            let retiring = self.clusters_to_retire(ty, snapshot);
            let nonce = (self.nonces + 1).to_string();
            let kept = retiring.as_ref().map(|(from, names)| (from.as_ref(), names.as_slice()));
            let response = snapshot.response_keeping(ty, &names, kept, &nonce);
            self.nonces += 1;
            let remember_names = ty == ResourceType::Cluster && self.kind == StreamKind::Aggregated;
            let state = &mut self.types[ty.index()];
            state.retiring = retiring;
            state.mark_sent(nonce, self.nonces, snapshot, remember_names);
            responses.push((ty, response));
        }
        // Everything else is answered: drop the clusters kept for make before break.
        let cds = &self.types[ResourceType::Cluster.index()];
        if cds.retiring.is_some() && !self.any_unanswered(&ResourceType::ALL) {
            let nonce = (self.nonces + 1).to_string();
            let response = snapshot.response(ResourceType::Cluster, &subscribed(ResourceType::Cluster, cds, snapshot), &nonce);
            self.nonces += 1;
            let cds = &mut self.types[ResourceType::Cluster.index()];
            cds.retiring = None;
            cds.mark_sent(nonce, self.nonces, snapshot, true);
            responses.push((ResourceType::Cluster, response));
        }
        responses
    }

    fn any_unanswered(&self, types: &[ResourceType]) -> bool {
        types.iter().any(|t| self.types[t.index()].awaiting_reply)
    }

    /// On ADS, the clusters a CDS response about to be sent would remove
    /// while listeners or routes still have to follow: kept one round longer,
    /// with the snapshot that has them.
    fn clusters_to_retire(&self, ty: ResourceType, snapshot: &Snapshot) -> Option<(Arc<Snapshot>, Vec<Arc<str>>)> {
        if ty != ResourceType::Cluster || self.kind != StreamKind::Aggregated {
            return None;
        }
        let routing_follows = [ResourceType::Listener, ResourceType::Route].iter().any(|t| self.types[t.index()].requested);
        let state = &self.types[ty.index()];
        // Still in a transition: keep what the client was told to keep.
        let (from, candidates) = match &state.retiring {
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

impl TypeState {
    fn mark_sent(&mut self, nonce: String, seq: u64, snapshot: &Arc<Snapshot>, remember_names: bool) {
        self.sent_names = (remember_names && !self.wildcard).then(|| self.names.clone());
        self.nonce = nonce;
        self.sent_seq = seq;
        self.awaiting_reply = true;
        self.sent = Some(snapshot.clone());
        self.answered_from = Arc::downgrade(snapshot);
        self.newly_named = Names::default();
        self.refresh = false;
    }
}

/// On ADS, the types whose unanswered responses hold a type back (R23).
/// Responses always go out in the order clusters, endpoints, listeners,
/// routes; beyond that, listeners and routes wait until the clusters they
/// may use are warm. Envoy ACKs a CDS response only once its new clusters
/// are warm, which takes their EDS answer, so endpoints never wait. Routes
/// do not wait for listeners: a new listener warms until its routes arrive.
fn waits_for(ty: ResourceType) -> &'static [ResourceType] {
    match ty {
        ResourceType::Listener | ResourceType::Route => &[ResourceType::Cluster, ResourceType::Endpoint],
        ResourceType::Cluster | ResourceType::Endpoint => &[],
    }
}

/// The type whose resources start warming on an update and then repeat a
/// request of `ty`: clusters wait for their endpoints, listeners for their
/// routes (R21, R22).
fn warmed_by(ty: ResourceType) -> Option<ResourceType> {
    match ty {
        ResourceType::Endpoint => Some(ResourceType::Cluster),
        ResourceType::Route => Some(ResourceType::Listener),
        ResourceType::Cluster | ResourceType::Listener => None,
    }
}

/// Applies a request's `resource_names` to the subscription (R14, R15, R17);
/// `false` when they are the last request's names.
fn update_subscription(ty: ResourceType, state: &mut TypeState, resource_names: &[String], snapshot: Option<&Snapshot>) -> bool {
    // Most requests are ACKs repeating the last one's names: a 64-bit digest
    // of the list spots them without a lookup per name (two different lists
    // colliding is a 2^-64 event).
    let digest = names_digest(resource_names);
    if state.requested && digest == state.last_names_digest {
        return false;
    }
    state.last_names_digest = digest;
    let star = resource_names.iter().any(|name| name == "*");
    let names = Names::new(resource_names.iter().filter(|name| *name != "*").map(|name| {
        snapshot.and_then(|snapshot| snapshot.shared_name(ty, name)).unwrap_or_else(|| Arc::from(name.as_str()))
    }));
    let was_wildcard = state.wildcard;
    state.wildcard = ty.is_full_state() && (star || (names.is_empty() && !state.ever_named));
    state.ever_named |= !names.is_empty();
    if state.wildcard && !was_wildcard {
        state.refresh = true;
    }
    let still_new = state.newly_named.iter().filter(|name| names.contains(name));
    let added = names.iter().filter(|name| !state.names.contains(name));
    state.newly_named = Names::new(still_new.chain(added).map(|name| names.shared(name)));
    state.names = names;
    true
}

/// A set of resource names: sorted, each shared with the snapshot that has
/// it. A stream subscribed to 100 clusters holds 100 pointers, not 100
/// strings.
#[derive(Debug, Default, Clone)]
struct Names(Box<[Arc<str>]>);

impl Names {
    fn new(names: impl Iterator<Item = Arc<str>>) -> Self {
        let mut names: Vec<Arc<str>> = names.collect();
        names.sort_unstable();
        names.dedup();
        Self(names.into_boxed_slice())
    }

    fn contains(&self, name: &str) -> bool {
        self.0.binary_search_by(|n| (**n).cmp(name)).is_ok()
    }

    /// This set's copy of `name`, which must be in it.
    fn shared(&self, name: &str) -> Arc<str> {
        match self.0.binary_search_by(|n| (**n).cmp(name)) {
            Ok(i) => self.0[i].clone(),
            Err(_) => Arc::from(name),
        }
    }

    fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|name| &**name)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn names_digest(names: &[String]) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    names.hash(&mut hasher);
    hasher.finish()
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
            sent.version() != snapshot.version() && (snapshot.type_differs(sent, ty) || snapshot.same_resources(sent))
        });
        return (moved || state.refresh || !state.newly_named.is_empty()).then(|| subscribed(ty, state, snapshot));
    }
    // RDS/EDS may be partial (R19): only what the client lacks.
    // The common cases: the client holds this very snapshot (nothing to
    // send), or the one it replaced (the snapshot's own list of changes
    // decides). Either way no name is compared.
    let known_changes = match (&state.sent, state.refresh || !state.newly_named.is_empty()) {
        (Some(sent), false) if Arc::ptr_eq(sent, snapshot) => return None,
        (Some(sent), false) => snapshot.changed_since(sent, ty),
        _ => None,
    };
    let changed: Vec<&str> = match known_changes {
        Some(changes) => {
            changes.iter().map(|name| &**name).filter(|name| state.wildcard || state.names.contains(name)).collect()
        }
        None => existing(ty, state, snapshot)
            .filter(|name| {
                state.refresh
                    || state.newly_named.contains(name)
                    || state.sent.as_ref().is_none_or(|sent| sent.digest(ty, name) != snapshot.digest(ty, name))
            })
            .collect(),
    };
    (!changed.is_empty()).then_some(Selection::Named(changed))
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

#[cfg(test)]
mod tests {
    use envoy_types::pb::{
        envoy::{
            config::{cluster::v3::Cluster, endpoint::v3::ClusterLoadAssignment},
            service::discovery::v3::DiscoveryResponse,
        },
        google::{protobuf::Duration as ProtoDuration, rpc::Status as RpcStatus},
    };
    use prost::Message;

    use super::*;
    use crate::schema::{Bundle, StoredBundle, StoredResource};

    /// A snapshot with one EDS cluster `a` (connect timeout `timeout_s`) and
    /// its endpoints, built after `previous`.
    fn snapshot(id: u64, version: &str, timeout_s: i64, previous: Option<&Snapshot>) -> Arc<Snapshot> {
        let cluster = Cluster {
            name: "a".into(),
            connect_timeout: Some(ProtoDuration { seconds: timeout_s, nanos: 0 }),
            ..Default::default()
        };
        let bundle = Bundle {
            version: version.to_owned(),
            clusters: vec![cluster],
            endpoints: vec![ClusterLoadAssignment { cluster_name: "a".into(), ..Default::default() }],
            ..Default::default()
        };
        let stored = Arc::new(StoredBundle::from_bundle(bundle, version.to_owned()));
        Arc::new(Snapshot::build(id, stored, previous))
    }

    /// A snapshot of plain clusters named `clusters`, built after `previous`.
    fn clusters_snapshot(id: u64, version: &str, clusters: &[&str], previous: Option<&Snapshot>) -> Arc<Snapshot> {
        let resources = clusters
            .iter()
            .map(|name| StoredResource {
                field: ResourceType::Cluster.bundle_field(),
                name: (*name).to_owned(),
                value: Cluster { name: (*name).to_owned(), ..Default::default() }.encode_to_vec().into(),
            })
            .collect();
        let stored = StoredBundle { version: version.to_owned(), content_hash: version.to_owned(), resources };
        Arc::new(Snapshot::build(id, Arc::new(stored), previous))
    }

    fn request(ty: ResourceType, names: &[&str], nonce: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: ty.type_url().to_owned(),
            resource_names: names.iter().map(|name| (*name).to_owned()).collect(),
            response_nonce: nonce.to_owned(),
            ..Default::default()
        }
    }

    fn nack(ty: ResourceType, nonce: &str) -> DiscoveryRequest {
        let error = RpcStatus { code: 3, message: "rejected".into(), details: vec![] };
        DiscoveryRequest { error_detail: Some(error), ..request(ty, &[], nonce) }
    }

    /// Takes in `request` and returns the types of the responses due.
    fn answer(state: &mut StreamState, request: &DiscoveryRequest, snapshot: &Arc<Snapshot>) -> Vec<ResourceType> {
        state.on_request(request, Some(snapshot));
        state.due(snapshot).into_iter().map(|(ty, _)| ty).collect()
    }

    #[test]
    fn r7_r8_a_repeated_nack_or_ack_is_not_answered_while_nothing_changed() {
        let v1 = snapshot(1, "v1", 1, None);
        let mut state = StreamState::new(StreamKind::Aggregated);
        assert_eq!(answer(&mut state, &request(ResourceType::Cluster, &[], ""), &v1), [ResourceType::Cluster]);
        assert_eq!(state.on_request(&nack(ResourceType::Cluster, "1"), Some(&v1)), Received::Nack { ty: ResourceType::Cluster, nonce: "1", error: "rejected" });
        assert!(state.due(&v1).is_empty(), "R7: a NACK is not answered with the same config");
        for _ in 0..1000 {
            assert_eq!(state.on_request(&nack(ResourceType::Cluster, "1"), Some(&v1)), Received::Repeat { ty: ResourceType::Cluster });
            assert!(state.due(&v1).is_empty(), "a repeated NACK is answered");
        }

        assert_eq!(answer(&mut state, &request(ResourceType::Endpoint, &["a"], ""), &v1), [ResourceType::Endpoint]);
        assert!(answer(&mut state, &request(ResourceType::Endpoint, &["a"], "2"), &v1).is_empty(), "the ACK");
        for _ in 0..1000 {
            assert!(answer(&mut state, &request(ResourceType::Endpoint, &["a"], "2"), &v1).is_empty(), "a repeated ACK is answered");
        }
    }

    #[test]
    fn r11_r21_a_repeat_with_new_names_or_after_the_snapshot_moved_is_answered() {
        let v1 = snapshot(1, "v1", 1, None);
        let mut state = StreamState::new(StreamKind::Aggregated);
        answer(&mut state, &request(ResourceType::Cluster, &[], ""), &v1);
        answer(&mut state, &request(ResourceType::Cluster, &[], "1"), &v1);
        assert_eq!(answer(&mut state, &request(ResourceType::Endpoint, &["a"], ""), &v1), [ResourceType::Endpoint]);
        assert!(answer(&mut state, &request(ResourceType::Endpoint, &["a"], "2"), &v1).is_empty());

        // R11: the same nonce again, with a name added, is a new subscription.
        assert_eq!(answer(&mut state, &request(ResourceType::Endpoint, &["a", "b"], "2"), &v1), [ResourceType::Endpoint]);
        assert!(answer(&mut state, &request(ResourceType::Endpoint, &["a", "b"], "3"), &v1).is_empty());

        // R21: cluster a changes, its endpoints do not. CDS is sent; when the
        // warming cluster repeats the EDS request, it gets a fresh answer.
        let v2 = snapshot(2, "v2", 2, Some(&v1));
        assert_eq!(state.due(&v2).into_iter().map(|(ty, _)| ty).collect::<Vec<_>>(), [ResourceType::Cluster]);
        assert!(answer(&mut state, &request(ResourceType::Cluster, &[], "4"), &v2).is_empty());
        assert_eq!(answer(&mut state, &request(ResourceType::Endpoint, &["a", "b"], "3"), &v2), [ResourceType::Endpoint]);
        // ...once: repeating the ACK of that answer gets nothing more.
        assert!(answer(&mut state, &request(ResourceType::Endpoint, &["a", "b"], "5"), &v2).is_empty());
        assert!(answer(&mut state, &request(ResourceType::Endpoint, &["a", "b"], "5"), &v2).is_empty());
    }

    /// Found by tests/replicas_e2e.rs (a PUT storm through a real Envoy): on
    /// ADS, bundle v3 changes cluster `a` and its endpoints while the CDS
    /// response of v2 is still unanswered. EDS v3 goes out alone and is
    /// ACKed; CDS v3 follows. Envoy's modified cluster warms and repeats
    /// the EDS request with the nonce it just ACKed: the snapshot did not
    /// move since EDS v3, but the request must be answered, or the cluster
    /// warms until Envoy's init fetch timeout (15 s).
    #[test]
    fn r21_an_eds_repeat_after_a_later_cds_response_is_answered_though_the_snapshot_did_not_move() {
        let v1 = snapshot(1, "v1", 1, None);
        let mut state = StreamState::new(StreamKind::Aggregated);
        assert_eq!(answer(&mut state, &request(ResourceType::Cluster, &[], ""), &v1), [ResourceType::Cluster]);
        assert_eq!(answer(&mut state, &request(ResourceType::Endpoint, &["a"], ""), &v1), [ResourceType::Endpoint]);
        assert!(answer(&mut state, &request(ResourceType::Cluster, &[], "1"), &v1).is_empty());
        assert!(answer(&mut state, &request(ResourceType::Endpoint, &["a"], "2"), &v1).is_empty());

        let v2 = snapshot(2, "v2", 2, Some(&v1));
        assert_eq!(state.due(&v2).into_iter().map(|(ty, _)| ty).collect::<Vec<_>>(), [ResourceType::Cluster], "CDS v2 (nonce 3)");
        // v3 before the ACK of CDS v2: only EDS can go, and is ACKed.
        let mut v3 = Bundle::default();
        v3.version = "v3".into();
        v3.clusters = vec![Cluster { name: "a".into(), connect_timeout: Some(ProtoDuration { seconds: 3, nanos: 0 }), ..Default::default() }];
        let mut assignment = ClusterLoadAssignment { cluster_name: "a".into(), ..Default::default() };
        assignment.endpoints = vec![Default::default()];
        v3.endpoints = vec![assignment];
        let v3 = Arc::new(Snapshot::build(3, Arc::new(StoredBundle::from_bundle(v3, "v3".into())), Some(&v2)));
        assert_eq!(state.due(&v3).into_iter().map(|(ty, _)| ty).collect::<Vec<_>>(), [ResourceType::Endpoint], "EDS v3 (nonce 4)");
        assert!(answer(&mut state, &request(ResourceType::Endpoint, &["a"], "4"), &v3).is_empty(), "the EDS ACK");
        assert_eq!(answer(&mut state, &request(ResourceType::Cluster, &[], "3"), &v3), [ResourceType::Cluster], "CDS v3 (nonce 5) after the ACK of v2");
        // The warming cluster's repeat of the EDS request gets an answer...
        assert_eq!(answer(&mut state, &request(ResourceType::Endpoint, &["a"], "4"), &v3), [ResourceType::Endpoint]);
        // ...once.
        assert!(answer(&mut state, &request(ResourceType::Endpoint, &["a"], "6"), &v3).is_empty());
        assert!(answer(&mut state, &request(ResourceType::Endpoint, &["a"], "6"), &v3).is_empty());
        assert!(answer(&mut state, &request(ResourceType::Cluster, &[], "5"), &v3).is_empty(), "the CDS ACK");
        assert!(answer(&mut state, &request(ResourceType::Endpoint, &["a"], "6"), &v3).is_empty());
    }

    /// The one response of `due`: its type, nonce and resource names.
    fn only(responses: Vec<(ResourceType, EncodedResponse)>) -> (ResourceType, String, Vec<String>) {
        let [(ty, response)] = <[_; 1]>::try_from(responses).expect("one response");
        let decoded = DiscoveryResponse::decode(response.to_bytes()).unwrap();
        let names = decoded.resources.iter().map(|any| Cluster::decode(any.value.as_slice()).unwrap().name).collect();
        (ty, decoded.nonce, names)
    }

    /// Found by the xds_requests fuzz target: on ADS, the clusters kept for
    /// make before break (R23) were every cluster of the old snapshot, so a
    /// client naming its clusters was sent ones it never asked for or had
    /// just unsubscribed from.
    #[test]
    fn clusters_kept_for_make_before_break_are_only_those_still_subscribed() {
        let v1 = clusters_snapshot(1, "v1", &["a", "b", "c"], None);
        let mut stream = StreamState::new(StreamKind::Aggregated);
        stream.on_request(&request(ResourceType::Cluster, &["a", "b"], ""), Some(&v1));
        stream.on_request(&request(ResourceType::Listener, &[], ""), Some(&v1));
        assert_eq!(only(stream.due(&v1)), (ResourceType::Cluster, "1".into(), vec!["a".into(), "b".into()]));
        stream.on_request(&request(ResourceType::Cluster, &["a", "b"], "1"), Some(&v1));
        assert_eq!(only(stream.due(&v1)).0, ResourceType::Listener, "routing follows the clusters");
        stream.on_request(&request(ResourceType::Listener, &[], "2"), Some(&v1));

        // b and c are dropped: b is kept a while, c was never asked for.
        let v2 = clusters_snapshot(2, "v2", &["a"], Some(&v1));
        assert_eq!(only(stream.due(&v2)), (ResourceType::Cluster, "3".into(), vec!["a".into(), "b".into()]));
        // The client unsubscribes from b, and asks for d, which does not exist.
        stream.on_request(&request(ResourceType::Cluster, &["a", "d"], "3"), Some(&v2));
        assert_eq!(only(stream.due(&v2)), (ResourceType::Cluster, "4".into(), vec!["a".into()]));
    }

    /// Also found by the fuzz target: a client that named only `a` turns to
    /// the wildcard just as a bundle without `b` arrives. It never held `b`:
    /// nothing is kept, and no final CDS response follows.
    #[test]
    fn clusters_never_sent_are_not_kept_when_the_subscription_grows() {
        let v1 = clusters_snapshot(1, "v1", &["a", "b"], None);
        let mut stream = StreamState::new(StreamKind::Aggregated);
        stream.on_request(&request(ResourceType::Cluster, &["a"], ""), Some(&v1));
        stream.on_request(&request(ResourceType::Listener, &[], ""), Some(&v1));
        assert_eq!(only(stream.due(&v1)), (ResourceType::Cluster, "1".into(), vec!["a".into()]));
        stream.on_request(&request(ResourceType::Cluster, &["a"], "1"), Some(&v1));
        assert_eq!(only(stream.due(&v1)).0, ResourceType::Listener);
        stream.on_request(&request(ResourceType::Listener, &[], "2"), Some(&v1));

        let v2 = clusters_snapshot(2, "v2", &["a"], Some(&v1));
        stream.on_request(&request(ResourceType::Cluster, &["*"], "1"), Some(&v2));
        assert_eq!(only(stream.due(&v2)), (ResourceType::Cluster, "3".into(), vec!["a".into()]));
        stream.on_request(&request(ResourceType::Cluster, &["*"], "3"), Some(&v2));
        assert!(stream.due(&v2).is_empty(), "no final CDS response: nothing was kept");
    }
}
