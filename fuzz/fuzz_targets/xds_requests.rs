//! A client's requests, in any order, through the stream state machine.
//!
//! Input: the first byte picks the stream (modulo 5: ADS, CDS, EDS, LDS,
//! RDS); then records of a flags byte, a 16-bit little-endian length and
//! that many bytes of protobuf `DiscoveryRequest` (undecodable ones are
//! skipped).
//! Flags, applied before the request:
//! - `1`: a new bundle is published (the next of `fuzz/bundles/{a,b,c}.json`,
//!   in turn), and the stream is told, as the server does on a change;
//! - `2`: the node type's bundle is deleted (no snapshot until the next `1`);
//! - `4`: the request's `response_nonce` becomes the latest nonce sent for
//!   its type, so that ACKs and NACKs need not be guessed.
//!
//! After each request the responses due are taken and checked against a
//! model of the client, written from the protocol (docs/xds-protocol.md)
//! rather than from the code:
//! - every response decodes, with its type's URL, the snapshot's version
//!   and a nonce greater than every earlier one;
//! - one `due` call sends each type at most once, in ADS order, and never a
//!   type whose last response is unanswered (not yet ACKed, NACKed or
//!   superseded by a request without a nonce); on ADS, listeners and routes
//!   never while clusters or endpoints are unanswered (R23). The final CDS
//!   response of make before break comes in a later call than the CDS that
//!   kept the old clusters, so it obeys the same rule;
//! - no name twice in one response (R13), and only subscribed names
//!   (wildcard: any); a resource of the current bundle has its bytes; only
//!   ADS CDS responses carry others: kept clusters, exactly as the client
//!   holds them (it drops what it unsubscribes from by itself, R17);
//! - whenever a type is neither unanswered nor held back, the client holds
//!   the current bundle's version of every subscribed resource, and of LDS
//!   and CDS nothing else (R18) once no response at all is unanswered
//!   (until then ADS may keep old clusters, R23); a request that was not an
//!   ACK/NACK got its answer (R21, R22) and a newly named resource was sent
//!   (R11).
#![no_main]

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, OnceLock},
};

use envoy_types::pb::envoy::{
    config::{cluster::v3::Cluster, endpoint::v3::ClusterLoadAssignment, listener::v3::Listener, route::v3::RouteConfiguration},
    service::discovery::v3::{DiscoveryRequest, DiscoveryResponse},
};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use sxds::{
    bundle::{self, Format},
    cache::Snapshot,
    resource_type::ResourceType,
    schema::StoredBundle,
    xds::stream::{StreamKind, StreamState},
};

fn tracing() -> bool {
    static TRACE: OnceLock<bool> = OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("SXDS_FUZZ_TRACE").is_some())
}

macro_rules! trace {
    ($($arg:tt)*) => { if tracing() { eprintln!($($arg)*) } };
}

const SWITCH: u8 = 1;
const DELETE: u8 = 2;
const LATEST_NONCE: u8 = 4;

/// A fixed valid bundle and its resources by type and name.
struct Bundle {
    stored: Arc<StoredBundle>,
    resources: [BTreeMap<String, Vec<u8>>; 4],
}

fn bundles() -> &'static [Bundle; 3] {
    static BUNDLES: OnceLock<[Bundle; 3]> = OnceLock::new();
    BUNDLES.get_or_init(|| {
        [include_str!("../bundles/a.json"), include_str!("../bundles/b.json"), include_str!("../bundles/c.json")].map(|json| {
            let stored = bundle::accept(json.as_bytes(), Format::Json).expect("the fixed bundles are valid");
            let resources = ResourceType::ALL.map(|ty| stored.resources(ty).map(|r| (r.name.clone(), r.value.to_vec())).collect());
            Bundle { stored: Arc::new(stored), resources }
        })
    })
}

/// What the client asked for and holds, per type.
#[derive(Debug, Default)]
struct TypeModel {
    requested: bool,
    /// Nonce of the latest response of the type; empty before the first.
    nonce: String,
    /// The latest response is not ACKed, NACKed or superseded yet.
    unanswered: bool,
    /// A request that was not a reply to our latest response awaits its answer.
    owed: bool,
    wildcard: bool,
    names: BTreeSet<String>,
    ever_named: bool,
    /// Names subscribed since the last response of the type (R11).
    newly: BTreeSet<String>,
    /// What the responses sent so far leave the client with.
    held: BTreeMap<String, Vec<u8>>,
}

struct Client {
    kind: StreamKind,
    types: [TypeModel; 4],
    last_nonce: u64,
}

impl Client {
    /// The type a request is about, as the protocol resolves it (R3); `None`
    /// for a type the stream does not serve.
    fn type_of(&self, request: &DiscoveryRequest) -> Option<ResourceType> {
        match self.kind {
            StreamKind::Single(ty) if request.type_url.is_empty() || request.type_url == ty.type_url() => Some(ty),
            StreamKind::Single(_) => None,
            StreamKind::Aggregated => ResourceType::from_type_url(&request.type_url),
        }
    }

    fn request(&mut self, request: &DiscoveryRequest) {
        let Some(ty) = self.type_of(request) else { return };
        let t = &mut self.types[ty.index()];
        let nonce = request.response_nonce.as_str();
        if !nonce.is_empty() && nonce != t.nonce {
            return; // stale (R10)
        }
        let is_reply = !nonce.is_empty() && t.unanswered;
        t.unanswered = false;
        t.owed |= !is_reply;
        let names: BTreeSet<String> = request.resource_names.iter().filter(|n| *n != "*").cloned().collect();
        let star = request.resource_names.iter().any(|n| n == "*");
        let was_wildcard = t.wildcard;
        t.wildcard = ty.is_full_state() && (star || (names.is_empty() && !t.ever_named));
        t.owed |= t.wildcard && !was_wildcard;
        t.ever_named |= !names.is_empty();
        let added: Vec<String> = names.difference(&t.names).cloned().collect();
        t.newly.retain(|n| names.contains(n));
        t.newly.extend(added);
        t.names = names;
        t.requested = true;
        // What the client no longer subscribes to, it drops by itself (R17).
        if !t.wildcard {
            t.held.retain(|name, _| t.names.contains(name));
        }
    }

    fn held_back(&self, ty: ResourceType) -> bool {
        let unanswered = |t: ResourceType| self.types[t.index()].unanswered;
        self.kind == StreamKind::Aggregated
            && matches!(ty, ResourceType::Listener | ResourceType::Route)
            && (unanswered(ResourceType::Cluster) || unanswered(ResourceType::Endpoint))
    }

    /// Checks the responses of one `due` call and takes them in.
    fn receive(&mut self, responses: &[(ResourceType, sxds::xds::codec::EncodedResponse)], snapshot: &Snapshot, bundle: &Bundle) {
        let mut previous: Option<ResourceType> = None;
        for (ty, response) in responses {
            let ty = *ty;
            assert!(previous.is_none_or(|p| p < ty), "{ty} after {previous:?} in one call: one response per type, in ADS order");
            previous = Some(ty);
            if let StreamKind::Single(served) = self.kind {
                assert_eq!(ty, served, "a {served} stream is sent {ty}");
            }
            assert!(self.types[ty.index()].requested, "{ty} sent unrequested");
            assert!(!self.types[ty.index()].unanswered, "a second {ty} response before the first was answered");
            assert!(!self.held_back(ty), "{ty} sent while clusters or endpoints are unanswered (R23)");

            let decoded = DiscoveryResponse::decode(response.to_bytes()).expect("a response decodes");
            assert_eq!(decoded.type_url, ty.type_url());
            assert_eq!(decoded.version_info, snapshot.version());
            let nonce: u64 = decoded.nonce.parse().unwrap_or_else(|_| panic!("nonce {:?} is not a number", decoded.nonce));
            assert!(nonce > self.last_nonce, "nonce {nonce} after {}", self.last_nonce);
            self.last_nonce = nonce;

            trace!("  <- {ty} {} nonce {nonce}: {:?}", decoded.version_info, decoded.resources.iter().map(|r| name_of(ty, &r.value)).collect::<Vec<_>>());
            let current = &bundle.resources[ty.index()];
            let t = &mut self.types[ty.index()];
            let mut carried = BTreeMap::new();
            for any in &decoded.resources {
                assert_eq!(any.type_url, ty.type_url());
                let name = name_of(ty, &any.value);
                assert!(t.wildcard || t.names.contains(&name), "{ty} {name:?} sent but not subscribed");
                match current.get(&name) {
                    Some(value) => assert_eq!(value, &any.value, "{ty} {name:?} is not the current bundle's"),
                    None => {
                        assert!(self.kind == StreamKind::Aggregated && ty == ResourceType::Cluster, "{ty} {name:?} is not in the bundle");
                        assert_eq!(t.held.get(&name), Some(&any.value), "kept cluster {name:?} is not the one the client holds");
                    }
                }
                assert!(carried.insert(name.clone(), any.value.clone()).is_none(), "{ty} {name:?} twice in one response (R13)");
            }
            for name in &t.newly {
                assert!(!current.contains_key(name) || carried.contains_key(name), "newly subscribed {ty} {name:?} not sent (R11)");
            }
            if ty.is_full_state() {
                t.held = carried;
            } else {
                t.held.extend(carried);
            }
            t.newly.clear();
            t.owed = false;
            t.unanswered = true;
            t.nonce = decoded.nonce;
        }
    }

    /// What must hold between calls, given the current bundle.
    fn check_settled(&self, bundle: &Bundle) {
        let nothing_unanswered = self.types.iter().all(|t| !t.unanswered);
        for ty in ResourceType::ALL {
            let t = &self.types[ty.index()];
            if !t.requested || t.unanswered || self.held_back(ty) {
                continue;
            }
            let current = &bundle.resources[ty.index()];
            let subscribed: Vec<(&String, &Vec<u8>)> =
                current.iter().filter(|(name, _)| t.wildcard || t.names.contains(*name)).collect();
            if ty.is_full_state() && !t.wildcard && t.names.is_empty() {
                continue; // unsubscribed from everything (R15): nothing is sent
            }
            assert!(!t.owed || (!ty.is_full_state() && subscribed.is_empty()), "a {ty} request was not answered");
            for (name, value) in &subscribed {
                assert_eq!(t.held.get(*name), Some(*value), "the client lacks the current {ty} {name:?}");
            }
            let kept_allowed = self.kind == StreamKind::Aggregated && ty == ResourceType::Cluster && !nothing_unanswered;
            if ty.is_full_state() && !kept_allowed {
                assert_eq!(t.held.len(), subscribed.len(), "the client holds {ty} no longer in the bundle (R18): {:?}", t.held.keys());
            }
        }
    }
}

fn name_of(ty: ResourceType, value: &[u8]) -> String {
    let decoded = match ty {
        ResourceType::Cluster => Cluster::decode(value).map(|r| r.name),
        ResourceType::Endpoint => ClusterLoadAssignment::decode(value).map(|r| r.cluster_name),
        ResourceType::Listener => Listener::decode(value).map(|r| r.name),
        ResourceType::Route => RouteConfiguration::decode(value).map(|r| r.name),
    };
    decoded.expect("a served resource decodes")
}

/// The node type's bundle as the stream sees it.
struct Served {
    /// Index of the current bundle in `bundles()`.
    bundle: usize,
    snapshot: Option<Arc<Snapshot>>,
    next_id: u64,
}

impl Served {
    /// Publishes the next bundle, built against the current snapshot as the
    /// cache does.
    fn switch(&mut self) {
        self.bundle = (self.bundle + 1) % bundles().len();
        let source = bundles()[self.bundle].stored.clone();
        trace!("bundle {} (after {})", source.version, self.snapshot.as_ref().map_or("none", |s| s.version()));
        self.snapshot = Some(Arc::new(Snapshot::build(self.next_id, source, self.snapshot.as_deref())));
        self.next_id += 1;
    }
}

fn step(state: &mut StreamState, client: &mut Client, served: &Served) {
    if let Some(snapshot) = &served.snapshot {
        let bundle = &bundles()[served.bundle];
        let responses = state.due(snapshot);
        client.receive(&responses, snapshot, bundle);
        client.check_settled(bundle);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, mut rest)) = data.split_first() else { return };
    let kind = match first % 5 {
        0 => StreamKind::Aggregated,
        n => StreamKind::Single(ResourceType::ALL[usize::from(n) - 1]),
    };
    let mut state = StreamState::new(kind);
    let mut client = Client { kind, types: Default::default(), last_nonce: 0 };
    let mut served = Served { bundle: bundles().len() - 1, snapshot: None, next_id: 0 };
    served.switch();

    while let [flags, lo, hi, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*lo, *hi])).min(tail.len());
        let (message, after) = tail.split_at(len);
        rest = after;
        if flags & DELETE != 0 {
            trace!("bundle deleted");
            served.snapshot = None;
        }
        if flags & SWITCH != 0 {
            served.switch();
            step(&mut state, &mut client, &served);
        }
        let Ok(mut request) = DiscoveryRequest::decode(message) else { continue };
        if flags & LATEST_NONCE != 0 {
            if let Some(ty) = client.type_of(&request) {
                request.response_nonce = client.types[ty.index()].nonce.clone();
            }
        }
        trace!("-> {} {:?} nonce {:?} version {:?}{}", request.type_url.rsplit('.').next().unwrap_or_default(), request.resource_names, request.response_nonce, request.version_info, if request.error_detail.is_some() { " NACK" } else { "" });
        client.request(&request);
        state.on_request(&request, served.snapshot.as_deref());
        step(&mut state, &mut client, &served);
    }
});
