//! The state machine, rule by rule (rules of `shared/xds-protocol.md`).
//!
//! Test resources carry a revision in their content (a cluster's connect
//! timeout, an assignment's priority, a listener's filter timeout, a route
//! configuration's body limit), and responses are shown as a client reads
//! them: `"<type> <version> #<nonce>: <name>@<revision> ..."`.

use std::fmt::Write;

use envoy_types::pb::{
    envoy::{
        config::{
            cluster::v3::{
                cluster::{ClusterDiscoveryType, DiscoveryType, EdsClusterConfig},
                Cluster,
            },
            core::v3::{config_source::ConfigSourceSpecifier, ConfigSource},
            endpoint::v3::{ClusterLoadAssignment, LocalityLbEndpoints},
            listener::v3::{filter::ConfigType as FilterConfigType, Filter, FilterChain, Listener},
            route::v3::RouteConfiguration,
        },
        extensions::filters::network::http_connection_manager::v3::{http_connection_manager::RouteSpecifier, HttpConnectionManager, Rds},
        service::discovery::v3::{DiscoveryRequest, DiscoveryResponse},
    },
    google::{
        protobuf::{Any, Duration as ProtoDuration, UInt32Value},
        rpc::Status as RpcStatus,
    },
};
use prost::{Message, Name};

use super::*;
use crate::schema::{StoredBundle, StoredResource};

const CDS: ResourceType = ResourceType::Cluster;
const EDS: ResourceType = ResourceType::Endpoint;
const LDS: ResourceType = ResourceType::Listener;
const RDS: ResourceType = ResourceType::Route;

/// What `due` returns when no response is due, as shown.
const NOTHING: [&str; 0] = [];

/// A resource of a test bundle: its type, name and revision.
type Resource<'a> = (ResourceType, &'a str, u32);

/// EDS clusters `a` and `b` with their endpoints, listeners `l` and `m`
/// taking route configurations `r` and `s` over RDS: all at revision 1.
const MESH: &[Resource<'static>] = &[
    (CDS, "a", 1),
    (CDS, "b", 1),
    (EDS, "a", 1),
    (EDS, "b", 1),
    (LDS, "l", 1),
    (LDS, "m", 1),
    (RDS, "r", 1),
    (RDS, "s", 1),
];

/// What Envoy subscribes to on ADS: every cluster and listener (the
/// wildcard), and by name the endpoints and routes of [`MESH`].
const ENVOY: &[(ResourceType, &[&str])] = &[(CDS, &[]), (EDS, &["a", "b"]), (LDS, &[]), (RDS, &["r", "s"])];

/// A snapshot of `resources`, built after `previous`.
fn bundle(id: u64, version: &str, resources: &[Resource], previous: Option<&Snapshot>) -> Arc<Snapshot> {
    Arc::new(Snapshot::build(id, Arc::new(stored(version, resources)), previous))
}

/// A bundle of `resources` as the store keeps it.
fn stored(version: &str, resources: &[Resource]) -> StoredBundle {
    let resources = resources
        .iter()
        .map(|&(ty, name, revision)| StoredResource {
            field: ty.bundle_field(),
            name: name.to_owned(),
            value: encode(ty, name, revision).into(),
        })
        .collect();
    StoredBundle { version: version.to_owned(), content_hash: version.to_owned(), resources }
}

/// `resources` with `changes`: each replaces the resource of its type and
/// name, or is added.
fn with<'a>(resources: &[Resource<'a>], changes: &[Resource<'a>]) -> Vec<Resource<'a>> {
    let replaced: Vec<_> = changes.iter().map(|&(ty, name, _)| (ty, name)).collect();
    let mut resources = without(resources, &replaced);
    resources.extend_from_slice(changes);
    resources
}

/// `resources` but those of `gone`.
fn without<'a>(resources: &[Resource<'a>], gone: &[(ResourceType, &str)]) -> Vec<Resource<'a>> {
    resources.iter().filter(|&&(ty, name, _)| !gone.contains(&(ty, name))).copied().collect()
}

/// A snapshot with one EDS cluster `a` (at `cluster_revision`) and its
/// endpoints, built after `previous`.
fn snapshot(id: u64, version: &str, cluster_revision: u32, previous: Option<&Snapshot>) -> Arc<Snapshot> {
    bundle(id, version, &[(CDS, "a", cluster_revision), (EDS, "a", 0)], previous)
}

/// A snapshot of clusters named `clusters` and nothing else, built after `previous`.
fn clusters_snapshot(id: u64, version: &str, clusters: &[&str], previous: Option<&Snapshot>) -> Arc<Snapshot> {
    let resources: Vec<Resource> = clusters.iter().map(|name| (CDS, *name, 0)).collect();
    bundle(id, version, &resources, previous)
}

/// The message of a test resource.
fn encode(ty: ResourceType, name: &str, revision: u32) -> Vec<u8> {
    let name = name.to_owned();
    let seconds = Some(ProtoDuration { seconds: revision.into(), nanos: 0 });
    match ty {
        ResourceType::Cluster => eds_cluster(name.clone(), &name, seconds).encode_to_vec(),
        ResourceType::Endpoint => {
            let endpoints = vec![LocalityLbEndpoints { priority: revision, ..Default::default() }];
            ClusterLoadAssignment { cluster_name: name, endpoints, ..Default::default() }.encode_to_vec()
        }
        ResourceType::Listener => {
            let route = if name == "m" { "s" } else { "r" };
            Listener { listener_filters_timeout: seconds, ..rds_listener(name, route) }.encode_to_vec()
        }
        ResourceType::Route => {
            let limit = Some(UInt32Value { value: revision });
            RouteConfiguration { name, max_direct_response_body_size_bytes: limit, ..Default::default() }.encode_to_vec()
        }
        other => panic!("these tests build no {other}"),
    }
}

/// An EDS cluster (over ADS) whose endpoints are the assignment `service`.
fn eds_cluster(name: String, service: &str, connect_timeout: Option<ProtoDuration>) -> Cluster {
    let ads = ConfigSource { config_source_specifier: Some(ConfigSourceSpecifier::Ads(Default::default())), ..Default::default() };
    let service_name = if service == name { String::new() } else { service.to_owned() };
    Cluster {
        name,
        connect_timeout,
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig { eds_config: Some(ads), service_name }),
        ..Default::default()
    }
}

/// A listener whose HTTP connection manager takes route configuration
/// `route` over RDS.
fn rds_listener(name: String, route: &str) -> Listener {
    let rds = Rds { route_config_name: route.to_owned(), config_source: None };
    let hcm = HttpConnectionManager { stat_prefix: "in".into(), route_specifier: Some(RouteSpecifier::Rds(rds)), ..Default::default() };
    let any = Any { type_url: format!("type.googleapis.com/{}", HttpConnectionManager::full_name()), value: hcm.encode_to_vec() };
    let filter = Filter { name: "hcm".into(), config_type: Some(FilterConfigType::TypedConfig(any)) };
    Listener { name, filter_chains: vec![FilterChain { filters: vec![filter], ..Default::default() }], ..Default::default() }
}

/// The name and revision of a test resource, from its message.
fn name_and_revision(ty: ResourceType, message: &[u8]) -> (String, u32) {
    let seconds = |d: Option<ProtoDuration>| d.map_or(0, |d| u32::try_from(d.seconds).expect("a revision"));
    match ty {
        ResourceType::Cluster => {
            let cluster = Cluster::decode(message).expect("a Cluster");
            (cluster.name, seconds(cluster.connect_timeout))
        }
        ResourceType::Endpoint => {
            let assignment = ClusterLoadAssignment::decode(message).expect("a ClusterLoadAssignment");
            (assignment.cluster_name, assignment.endpoints.first().map_or(0, |e| e.priority))
        }
        ResourceType::Listener => {
            let listener = Listener::decode(message).expect("a Listener");
            (listener.name, seconds(listener.listener_filters_timeout))
        }
        ResourceType::Route => {
            let route = RouteConfiguration::decode(message).expect("a RouteConfiguration");
            (route.name, route.max_direct_response_body_size_bytes.map_or(0, |limit| limit.value))
        }
        other => panic!("these tests build no {other}"),
    }
}

/// A response of `ty` as the client reads it; its type URLs checked.
fn decode(ty: ResourceType, response: &EncodedResponse) -> DiscoveryResponse {
    let decoded = DiscoveryResponse::decode(response.to_bytes()).expect("a DiscoveryResponse");
    assert_eq!(decoded.type_url, ty.type_url(), "the response's type URL");
    assert!(decoded.resources.iter().all(|any| any.type_url == ty.type_url()), "resources of another type in {ty}");
    decoded
}

/// Each response as `"<type> <version> #<nonce>: <name>@<revision> ..."`.
fn show(responses: Vec<(ResourceType, EncodedResponse)>) -> Vec<String> {
    responses
        .iter()
        .map(|(ty, response)| {
            let decoded = decode(*ty, response);
            let mut line = format!("{ty} {} #{}:", decoded.version_info, decoded.nonce);
            for any in &decoded.resources {
                let (name, revision) = name_and_revision(*ty, &any.value);
                write!(line, " {name}@{revision}").expect("writing to a String");
            }
            line
        })
        .collect()
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

/// A request as the stream takes it off the wire.
fn sotw(request: &DiscoveryRequest) -> SotwRequest {
    SotwRequest::from(request)
}

/// Takes in `request` and returns the types of the responses due.
fn answer(state: &mut StreamState, request: &DiscoveryRequest, snapshot: &Arc<Snapshot>) -> Vec<ResourceType> {
    state.on_request(&sotw(request), Some(snapshot));
    state.due(snapshot).into_iter().map(|(ty, _)| ty).collect()
}

/// Takes in `request` and shows the responses due.
fn exchange(stream: &mut StreamState, request: &DiscoveryRequest, snapshot: &Arc<Snapshot>) -> Vec<String> {
    stream.on_request(&sotw(request), Some(snapshot));
    show(stream.due(snapshot))
}

/// A stream of `kind` that asked for `subscriptions` and ACKed every
/// response of `snapshot`.
fn settled(kind: StreamKind, subscriptions: &[(ResourceType, &[&str])], snapshot: &Arc<Snapshot>) -> StreamState {
    let mut stream = StreamState::new(kind);
    for (ty, names) in subscriptions {
        stream.on_request(&sotw(&request(*ty, names, "")), Some(snapshot));
    }
    loop {
        let responses = stream.due(snapshot);
        if responses.is_empty() {
            return stream;
        }
        for (ty, response) in responses {
            let (_, names) = subscriptions.iter().find(|(t, _)| *t == ty).expect("a response of a type asked for");
            let ack = request(ty, names, &decode(ty, &response).nonce);
            assert_eq!(stream.on_request(&sotw(&ack), Some(snapshot)), Received::Ack { ty, version: Some("") });
        }
    }
}

/// R1: "Every response carries a nonce; nonces are per stream."
#[test]
fn r1_every_response_carries_a_nonce_of_its_own() {
    let v1 = bundle(1, "v1", MESH, None);
    let mut stream = StreamState::new(StreamKind::Aggregated);
    for (ty, names) in ENVOY {
        stream.on_request(&sotw(&request(*ty, names, "")), Some(&v1));
    }
    assert_eq!(show(stream.due(&v1)), ["clusters v1 #1: a@1 b@1", "endpoints v1 #2: a@1 b@1"]);
    assert_eq!(exchange(&mut stream, &request(CDS, &[], "1"), &v1), NOTHING);
    assert_eq!(exchange(&mut stream, &request(EDS, &["a", "b"], "2"), &v1), ["listeners v1 #3: l@1 m@1", "routes v1 #4: r@1 s@1"]);
    stream.on_request(&sotw(&request(LDS, &[], "3")), Some(&v1));
    stream.on_request(&sotw(&request(RDS, &["r", "s"], "4")), Some(&v1));
    let v2 = bundle(2, "v2", &with(MESH, &[(CDS, "a", 2), (EDS, "a", 2)]), Some(&v1));
    assert_eq!(show(stream.due(&v2)), ["clusters v2 #5: a@2 b@1", "endpoints v2 #6: a@2"]);
}

/// R3: "on a per-type service [the type URL] may be empty (default it)."
#[test]
fn r3_a_per_type_service_defaults_an_empty_type_url_to_its_own() {
    let v1 = bundle(1, "v1", MESH, None);
    let mut stream = StreamState::new(StreamKind::Single(CDS));
    let untyped = |nonce: &str| DiscoveryRequest { type_url: String::new(), ..request(CDS, &[], nonce) };
    assert_eq!(stream.on_request(&sotw(&untyped("")), Some(&v1)), Received::Request { ty: CDS });
    assert_eq!(show(stream.due(&v1)), ["clusters v1 #1: a@1 b@1"]);
    assert_eq!(stream.on_request(&sotw(&untyped("1")), Some(&v1)), Received::Ack { ty: CDS, version: Some("") });
    // Another type on the cluster service is not served, and changes nothing.
    let listeners = request(LDS, &[], "1");
    assert_eq!(stream.on_request(&sotw(&listeners), Some(&v1)), Received::Unknown { type_url: LDS.type_url() });
    assert_eq!(show(stream.due(&v1)), NOTHING);
    let v2 = bundle(2, "v2", &with(MESH, &[(CDS, "a", 2)]), Some(&v1));
    assert_eq!(show(stream.due(&v2)), ["clusters v2 #2: a@2 b@1"]);
}

/// R3: "On ADS every request names its `type_url`": one naming none, or a
/// type sxds does not serve, is ignored.
#[test]
fn r3_on_ads_a_request_without_a_served_type_url_is_ignored() {
    let v1 = bundle(1, "v1", MESH, None);
    let mut stream = StreamState::new(StreamKind::Aggregated);
    let secret = "type.googleapis.com/envoy.config.route.v3.VirtualHost"; // delta-only VHDS
    for type_url in ["", secret] {
        let unserved = DiscoveryRequest { type_url: type_url.to_owned(), ..request(CDS, &[], "") };
        assert_eq!(stream.on_request(&sotw(&unserved), Some(&v1)), Received::Unknown { type_url });
        assert_eq!(show(stream.due(&v1)), NOTHING);
    }
    assert_eq!(exchange(&mut stream, &request(CDS, &[], ""), &v1), ["clusters v1 #1: a@1 b@1"]);
}

/// R4: "Versions are per resource type (in ADS each type has its own). They
/// only need to change, not grow."
#[test]
fn r4_each_type_keeps_its_own_version_and_versions_need_not_grow() {
    let v1 = bundle(1, "9e1f", MESH, None);
    let mut stream = settled(StreamKind::Aggregated, ENVOY, &v1); // nonces 1 to 4
    // Only endpoints change: clusters, listeners and routes stay at 9e1f.
    let v2 = bundle(2, "03ab", &with(MESH, &[(EDS, "b", 2)]), Some(&v1));
    assert_eq!(show(stream.due(&v2)), ["endpoints 03ab #5: b@2"]);
    assert_eq!(exchange(&mut stream, &request(EDS, &["a", "b"], "5"), &v2), NOTHING);
    // Cluster a changes: CDS moves to 5d0c, and so does the fresh answer
    // for a's endpoints that the warming cluster needs (R21).
    let v3 = bundle(3, "5d0c", &with(MESH, &[(EDS, "b", 2), (CDS, "a", 2)]), Some(&v2));
    assert_eq!(show(stream.due(&v3)), ["clusters 5d0c #6: a@2 b@1", "endpoints 5d0c #7: a@1"]);
}

/// R5: "ACK: `response_nonce` = the last nonce sent, `version_info` = that
/// response's version, no `error_detail`."
#[test]
fn r5_an_ack_names_the_nonce_of_the_response_it_applies() {
    let v1 = bundle(1, "v1", MESH, None);
    let mut stream = StreamState::new(StreamKind::Aggregated);
    assert_eq!(exchange(&mut stream, &request(CDS, &[], ""), &v1), ["clusters v1 #1: a@1 b@1"]);
    // Until the client applies #1, newer bundles wait, and coalesce.
    let v2 = bundle(2, "v2", &with(MESH, &[(CDS, "a", 2)]), Some(&v1));
    let v3 = bundle(3, "v3", &with(MESH, &[(CDS, "a", 3)]), Some(&v2));
    assert_eq!(show(stream.due(&v2)), NOTHING);
    assert_eq!(show(stream.due(&v3)), NOTHING);
    // A reply naming another nonce applies nothing.
    assert_eq!(stream.on_request(&sotw(&request(CDS, &[], "2")), Some(&v3)), Received::Stale { ty: CDS });
    assert_eq!(show(stream.due(&v3)), NOTHING);
    let ack = DiscoveryRequest { version_info: "v1".into(), ..request(CDS, &[], "1") };
    assert_eq!(stream.on_request(&sotw(&ack), Some(&v3)), Received::Ack { ty: CDS, version: Some("v1") });
    assert_eq!(show(stream.due(&v3)), ["clusters v3 #2: a@3 b@1"]);
}

/// R6: "NACK: `error_detail` is present ... Detect a NACK by `error_detail`,
/// never by comparing versions."
#[test]
fn r6_a_nack_is_told_by_its_error_detail_not_by_its_version() {
    let v1 = bundle(1, "v1", MESH, None);
    let v2 = bundle(2, "v2", &with(MESH, &[(CDS, "a", 2)]), Some(&v1));
    let mut stream = StreamState::new(StreamKind::Aggregated);
    assert_eq!(exchange(&mut stream, &request(CDS, &[], ""), &v1), ["clusters v1 #1: a@1 b@1"]);
    // The version of the rejected response, as a client might echo it.
    let rejection = DiscoveryRequest { version_info: "v1".into(), ..nack(CDS, "1") };
    assert_eq!(stream.on_request(&sotw(&rejection), Some(&v1)), Received::Nack { ty: CDS, nonce: "1", error: "rejected" });
    assert_eq!(show(stream.due(&v2)), ["clusters v2 #2: a@2 b@1"]);
    // An older version without `error_detail` is an ACK all the same.
    let ack = DiscoveryRequest { version_info: "v1".into(), ..request(CDS, &[], "2") };
    assert_eq!(stream.on_request(&sotw(&ack), Some(&v2)), Received::Ack { ty: CDS, version: Some("v1") });
    assert_eq!(show(stream.due(&v2)), NOTHING);
}

/// R7: "Never resend a rejected config in a loop": after a NACK the next
/// bundle is sent, the rejected one is not.
#[test]
fn r7_after_a_nack_the_next_bundle_is_sent_and_the_rejected_one_is_not() {
    let v1 = bundle(1, "v1", MESH, None);
    let mut stream = settled(StreamKind::Aggregated, &[(EDS, &["a", "b"])], &v1); // nonce 1
    let v2 = bundle(2, "v2", &with(MESH, &[(EDS, "a", 2)]), Some(&v1));
    assert_eq!(show(stream.due(&v2)), ["endpoints v2 #2: a@2"]);
    let rejection = DiscoveryRequest { resource_names: vec!["a".into(), "b".into()], ..nack(EDS, "2") };
    assert_eq!(stream.on_request(&sotw(&rejection), Some(&v2)), Received::Nack { ty: EDS, nonce: "2", error: "rejected" });
    assert_eq!(show(stream.due(&v2)), NOTHING);
    let v3 = bundle(3, "v3", &with(MESH, &[(EDS, "a", 2), (EDS, "b", 3)]), Some(&v2));
    assert_eq!(show(stream.due(&v3)), ["endpoints v3 #3: b@3"]);
}

/// R7, R8: a repeated NACK or ACK is not answered while nothing changed.
#[test]
fn r7_r8_a_repeated_nack_or_ack_is_not_answered_while_nothing_changed() {
    let v1 = snapshot(1, "v1", 1, None);
    let mut state = StreamState::new(StreamKind::Aggregated);
    assert_eq!(answer(&mut state, &request(ResourceType::Cluster, &[], ""), &v1), [ResourceType::Cluster]);
    assert_eq!(state.on_request(&sotw(&nack(ResourceType::Cluster, "1")), Some(&v1)), Received::Nack { ty: ResourceType::Cluster, nonce: "1", error: "rejected" });
    assert!(state.due(&v1).is_empty(), "R7: a NACK is not answered with the same config");
    for _ in 0..1000 {
        assert_eq!(state.on_request(&sotw(&nack(ResourceType::Cluster, "1")), Some(&v1)), Received::Repeat { ty: ResourceType::Cluster });
        assert!(state.due(&v1).is_empty(), "a repeated NACK is answered");
    }

    assert_eq!(answer(&mut state, &request(ResourceType::Endpoint, &["a"], ""), &v1), [ResourceType::Endpoint]);
    assert!(answer(&mut state, &request(ResourceType::Endpoint, &["a"], "2"), &v1).is_empty(), "the ACK");
    for _ in 0..1000 {
        assert!(answer(&mut state, &request(ResourceType::Endpoint, &["a"], "2"), &v1).is_empty(), "a repeated ACK is answered");
    }
}

/// R8: "Send only when something the client asked for changed."
#[test]
fn r8_a_change_to_resources_not_asked_for_is_not_sent() {
    let v1 = bundle(1, "v1", MESH, None);
    let subscriptions: &[(ResourceType, &[&str])] = &[(CDS, &[]), (EDS, &["a"]), (LDS, &[]), (RDS, &["r"])];
    let mut stream = settled(StreamKind::Aggregated, subscriptions, &v1); // nonces 1 to 4
    let v2 = bundle(2, "v2", &with(MESH, &[(EDS, "b", 2), (RDS, "s", 2)]), Some(&v1));
    assert_eq!(show(stream.due(&v2)), NOTHING);
    let v3 = bundle(3, "v3", &with(MESH, &[(EDS, "b", 2), (RDS, "s", 2), (EDS, "a", 2)]), Some(&v2));
    assert_eq!(show(stream.due(&v3)), ["endpoints v3 #5: a@2"]);
}

/// R8 for the named LDS/CDS subscriptions of R16: "Send only when something
/// the client asked for changed."
#[test]
fn r8_a_named_cds_subscription_is_not_answered_when_only_other_clusters_change() {
    let v1 = bundle(1, "v1", MESH, None);
    let mut stream = settled(StreamKind::Single(CDS), &[(CDS, &["a"])], &v1); // nonce 1
    let v2 = bundle(2, "v2", &with(MESH, &[(CDS, "b", 2)]), Some(&v1));
    assert_eq!(show(stream.due(&v2)), NOTHING, "a did not change");
}

/// R8: "Send only when something the client asked for changed": the same
/// names in another order are the same subscription.
#[test]
fn r8_a_repeat_listing_the_same_names_in_another_order_is_not_answered() {
    let v1 = bundle(1, "v1", MESH, None);
    let mut stream = settled(StreamKind::Aggregated, &[(EDS, &["a", "b"])], &v1); // nonce 1
    assert_eq!(stream.on_request(&sotw(&request(EDS, &["b", "a"], "1")), Some(&v1)), Received::Repeat { ty: EDS });
    assert_eq!(show(stream.due(&v1)), NOTHING);
}

/// R9: "A newer request of a type supersedes older ones: answer the latest only."
#[test]
fn r9_only_the_latest_request_of_a_type_is_answered() {
    let v1 = bundle(1, "v1", MESH, None);
    let mut stream = StreamState::new(StreamKind::Aggregated);
    stream.on_request(&sotw(&request(EDS, &["a"], "")), Some(&v1));
    assert_eq!(exchange(&mut stream, &request(EDS, &["b"], ""), &v1), ["endpoints v1 #1: b@1"]);
}

/// R10: "Ignore a request whose nonce is stale (not the latest sent for that
/// type on the stream)."
#[test]
fn r10_a_request_with_a_stale_nonce_is_ignored() {
    let v1 = bundle(1, "v1", MESH, None);
    let mut stream = settled(StreamKind::Aggregated, &[(CDS, &[]), (EDS, &["a"])], &v1); // CDS 1, EDS 2
    let v2 = bundle(2, "v2", &with(MESH, &[(EDS, "a", 2)]), Some(&v1));
    assert_eq!(show(stream.due(&v2)), ["endpoints v2 #3: a@2"]);
    // Sent before #3 was read: the type's previous nonce, or another type's;
    // and nonces sxds never wrote, though they read as the number 3.
    for nonce in ["2", "1", "03", "+3", "3 ", "x"] {
        assert_eq!(stream.on_request(&sotw(&request(EDS, &["a", "b"], nonce)), Some(&v2)), Received::Stale { ty: EDS });
        assert_eq!(show(stream.due(&v2)), NOTHING);
    }
    // #3 is still the one awaited, and b was never subscribed.
    assert_eq!(stream.on_request(&sotw(&request(EDS, &["a"], "3")), Some(&v2)), Received::Ack { ty: EDS, version: Some("") });
    let v3 = bundle(3, "v3", &with(MESH, &[(EDS, "a", 2), (EDS, "b", 2)]), Some(&v2));
    assert_eq!(show(stream.due(&v3)), NOTHING);
}

/// R11: "When the requested name set changes, send the newly named resources
/// even if their version did not change."
#[test]
fn r11_a_newly_named_resource_is_sent_though_it_did_not_change() {
    let v1 = bundle(1, "v1", MESH, None);
    let mut stream = StreamState::new(StreamKind::Aggregated);
    // The subscription grows in the ACK itself: RDS/EDS get what is new, ...
    assert_eq!(exchange(&mut stream, &request(EDS, &["a"], ""), &v1), ["endpoints v1 #1: a@1"]);
    assert_eq!(exchange(&mut stream, &request(EDS, &["a", "b"], "1"), &v1), ["endpoints v1 #2: b@1"]);
    // ...LDS/CDS the whole set (R18).
    assert_eq!(exchange(&mut stream, &request(CDS, &["a"], ""), &v1), ["clusters v1 #3: a@1"]);
    assert_eq!(exchange(&mut stream, &request(CDS, &["a", "b"], "3"), &v1), ["clusters v1 #4: a@1 b@1"]);
}

/// R11: a repeat naming new names is answered. R21: on ADS a changed
/// cluster's fresh endpoints follow it unasked, and the warming cluster's
/// repeat, stale by then, is not answered again.
#[test]
fn r11_a_repeat_with_new_names_is_answered_r21_a_changed_cluster_is_followed_by_its_endpoints() {
    let v1 = snapshot(1, "v1", 1, None);
    let mut state = StreamState::new(StreamKind::Aggregated);
    answer(&mut state, &request(ResourceType::Cluster, &[], ""), &v1);
    answer(&mut state, &request(ResourceType::Cluster, &[], "1"), &v1);
    assert_eq!(answer(&mut state, &request(ResourceType::Endpoint, &["a"], ""), &v1), [ResourceType::Endpoint]);
    assert!(answer(&mut state, &request(ResourceType::Endpoint, &["a"], "2"), &v1).is_empty());

    // R11: the same nonce again, with a name added, is a new subscription.
    assert_eq!(answer(&mut state, &request(ResourceType::Endpoint, &["a", "b"], "2"), &v1), [ResourceType::Endpoint]);
    assert!(answer(&mut state, &request(ResourceType::Endpoint, &["a", "b"], "3"), &v1).is_empty());

    // R21: cluster a changes, its endpoints do not. The warming cluster
    // needs a fresh EDS answer: it goes out with CDS (nonces 4 and 5)...
    let v2 = snapshot(2, "v2", 2, Some(&v1));
    assert_eq!(show(state.due(&v2)), ["clusters v2 #4: a@2", "endpoints v2 #5: a@0"]);
    // ...so the repeat Envoy sends before reading #5 is stale (R10)...
    let repeat = request(ResourceType::Endpoint, &["a", "b"], "3");
    assert_eq!(state.on_request(&sotw(&repeat), Some(&v2)), Received::Stale { ty: ResourceType::Endpoint });
    assert_eq!(show(state.due(&v2)), NOTHING);
    // ...and the ACKs, repeated or not, get nothing more.
    assert!(answer(&mut state, &request(ResourceType::Cluster, &[], "4"), &v2).is_empty());
    assert!(answer(&mut state, &request(ResourceType::Endpoint, &["a", "b"], "5"), &v2).is_empty());
    assert!(answer(&mut state, &request(ResourceType::Endpoint, &["a", "b"], "5"), &v2).is_empty());
}

/// R12: "Remember names asked for that do not exist yet; send them when they appear."
#[test]
fn r12_a_name_that_does_not_exist_yet_is_sent_when_it_appears() {
    let v1 = bundle(1, "v1", MESH, None);
    let mut stream = settled(StreamKind::Aggregated, &[(CDS, &["a", "x"]), (EDS, &["a", "x"])], &v1); // CDS 1, EDS 2
    let v2 = bundle(2, "v2", &with(MESH, &[(CDS, "x", 1), (EDS, "x", 1)]), Some(&v1));
    assert_eq!(show(stream.due(&v2)), ["clusters v2 #3: a@1 x@1", "endpoints v2 #4: x@1"]);
}

/// R13: "Never put the same name twice in one response."
#[test]
fn r13_a_name_asked_for_twice_is_sent_once() {
    let v1 = bundle(1, "v1", MESH, None);
    let mut stream = StreamState::new(StreamKind::Aggregated);
    stream.on_request(&sotw(&request(CDS, &["*", "a", "a"], "")), Some(&v1));
    stream.on_request(&sotw(&request(EDS, &["b", "a", "b"], "")), Some(&v1));
    assert_eq!(show(stream.due(&v1)), ["clusters v1 #1: a@1 b@1", "endpoints v1 #2: a@1 b@1"]);
}

/// R14: "LDS and CDS take a wildcard: `"*"`, or an empty name list on a
/// stream that never named anything."
#[test]
fn r14_lds_and_cds_take_a_star_or_a_first_empty_list_as_the_wildcard() {
    let v1 = bundle(1, "v1", MESH, None);
    let mut stream = StreamState::new(StreamKind::Aggregated);
    stream.on_request(&sotw(&request(CDS, &[], "")), Some(&v1));
    stream.on_request(&sotw(&request(EDS, &[], "")), Some(&v1));
    stream.on_request(&sotw(&request(LDS, &["*"], "")), Some(&v1));
    assert_eq!(show(stream.due(&v1)), ["clusters v1 #1: a@1 b@1"], "endpoints take no wildcard");
    assert_eq!(exchange(&mut stream, &request(CDS, &[], "1"), &v1), ["listeners v1 #2: l@1 m@1"]);
    // The wildcard takes in new resources.
    stream.on_request(&sotw(&request(LDS, &["*"], "2")), Some(&v1));
    let v2 = bundle(2, "v2", &with(MESH, &[(CDS, "c", 1), (LDS, "n", 1)]), Some(&v1));
    assert_eq!(show(stream.due(&v2)), ["clusters v2 #3: a@1 b@1 c@1"]);
    assert_eq!(exchange(&mut stream, &request(CDS, &[], "3"), &v2), ["listeners v2 #4: l@1 m@1 n@1"]);
}

/// R15: "After any name was sent, an empty list means 'unsubscribe from all'
/// for that type."
#[test]
fn r15_after_naming_resources_an_empty_list_unsubscribes_from_all() {
    let v1 = bundle(1, "v1", MESH, None);
    let mut stream = settled(StreamKind::Single(CDS), &[(CDS, &["a"])], &v1); // nonce 1
    assert_eq!(exchange(&mut stream, &request(CDS, &[], "1"), &v1), NOTHING, "not the legacy wildcard");
    let v2 = bundle(2, "v2", &with(MESH, &[(CDS, "a", 2), (CDS, "c", 1)]), Some(&v1));
    assert_eq!(show(stream.due(&v2)), NOTHING);
    assert_eq!(exchange(&mut stream, &request(CDS, &["*"], "1"), &v2), ["clusters v2 #2: a@2 b@1 c@1"]);
}

/// R15, as the xDS protocol words it: once the client "explicitly subscribe[s]
/// to a resource name (whether it be "*" or any other name)", clearing the
/// list is an unsubscription.
#[test]
fn r15_after_an_explicit_star_an_empty_list_unsubscribes_from_all() {
    let v1 = bundle(1, "v1", MESH, None);
    let mut stream = settled(StreamKind::Single(CDS), &[(CDS, &["*"])], &v1); // nonce 1
    assert_eq!(exchange(&mut stream, &request(CDS, &[], "1"), &v1), NOTHING);
    let v2 = bundle(2, "v2", &with(MESH, &[(CDS, "a", 2)]), Some(&v1));
    assert_eq!(show(stream.due(&v2)), NOTHING, "the client unsubscribed");
}

/// R16: "serve named LDS/CDS subscriptions too (every named resource that
/// exists, in each response)."
#[test]
fn r16_a_named_lds_subscription_gets_every_named_listener_that_exists_in_each_response() {
    let listeners: &[Resource] = &[(LDS, "l", 1), (LDS, "m", 1), (LDS, "n", 1)];
    let v1 = bundle(1, "v1", listeners, None);
    let mut stream = StreamState::new(StreamKind::Single(LDS));
    assert_eq!(exchange(&mut stream, &request(LDS, &["l", "n", "x"], ""), &v1), ["listeners v1 #1: l@1 n@1"]);
    stream.on_request(&sotw(&request(LDS, &["l", "n", "x"], "1")), Some(&v1));
    let v2 = bundle(2, "v2", &with(listeners, &[(LDS, "n", 2)]), Some(&v1));
    assert_eq!(show(stream.due(&v2)), ["listeners v2 #2: l@1 n@2"]);
    stream.on_request(&sotw(&request(LDS, &["l", "n", "x"], "2")), Some(&v2));
    let v3 = bundle(3, "v3", &with(listeners, &[(LDS, "n", 2), (LDS, "x", 1)]), Some(&v2));
    assert_eq!(show(stream.due(&v3)), ["listeners v3 #3: l@1 n@2 x@1"]);
}

/// R17: "SotW unsubscribe = send the full list without the name."
#[test]
fn r17_a_name_left_out_of_the_list_is_unsubscribed() {
    let v1 = bundle(1, "v1", MESH, None);
    let mut endpoints = settled(StreamKind::Single(EDS), &[(EDS, &["a", "b"])], &v1); // nonce 1
    let mut clusters = settled(StreamKind::Single(CDS), &[(CDS, &["*", "a"])], &v1); // nonce 1
    // A new list is answered with what it names (a warming cluster may need
    // it, R21); leaving "*" out ends the wildcard.
    assert_eq!(exchange(&mut endpoints, &request(EDS, &["a"], "1"), &v1), ["endpoints v1 #2: a@1"]);
    assert_eq!(exchange(&mut clusters, &request(CDS, &["a"], "1"), &v1), ["clusters v1 #2: a@1"]);
    endpoints.on_request(&sotw(&request(EDS, &["a"], "2")), Some(&v1));
    clusters.on_request(&sotw(&request(CDS, &["a"], "2")), Some(&v1));
    let v2 = bundle(2, "v2", &with(MESH, &[(CDS, "a", 2), (CDS, "b", 2), (EDS, "a", 2), (EDS, "b", 2)]), Some(&v1));
    assert_eq!(show(endpoints.due(&v2)), ["endpoints v2 #3: a@2"]);
    assert_eq!(show(clusters.due(&v2)), ["clusters v2 #3: a@2"]);
}

/// R18: "LDS/CDS responses are the full set: a missing listener/cluster is
/// deleted; an empty response deletes all." (On ADS a dropped cluster goes
/// last, R23.)
#[test]
fn r18_lds_and_cds_responses_carry_the_whole_set() {
    let v1 = bundle(1, "v1", MESH, None);
    let mut clusters = settled(StreamKind::Single(CDS), &[(CDS, &[])], &v1); // nonce 1
    let mut listeners = settled(StreamKind::Single(LDS), &[(LDS, &[])], &v1); // nonce 1
    let v2 = bundle(2, "v2", &with(MESH, &[(CDS, "b", 2), (LDS, "m", 2)]), Some(&v1));
    assert_eq!(show(clusters.due(&v2)), ["clusters v2 #2: a@1 b@2"]);
    assert_eq!(show(listeners.due(&v2)), ["listeners v2 #2: l@1 m@2"]);
    let v3 = bundle(3, "v3", &[(CDS, "b", 2), (LDS, "m", 2)], Some(&v2));
    assert_eq!(exchange(&mut clusters, &request(CDS, &[], "2"), &v3), ["clusters v3 #3: b@2"]);
    assert_eq!(exchange(&mut listeners, &request(LDS, &[], "2"), &v3), ["listeners v3 #3: m@2"]);
    let v4 = bundle(4, "v4", &[(EDS, "a", 1)], Some(&v3));
    assert_eq!(exchange(&mut clusters, &request(CDS, &[], "3"), &v4), ["clusters v4 #4:"]);
    assert_eq!(exchange(&mut listeners, &request(LDS, &[], "3"), &v4), ["listeners v4 #4:"]);
}

/// R19: "RDS/EDS responses may be partial; deletion follows from the parent
/// no longer referring to it."
#[test]
fn r19_rds_and_eds_responses_carry_only_what_changed() {
    let v1 = bundle(1, "v1", MESH, None);
    let mut stream = settled(StreamKind::Aggregated, ENVOY, &v1); // nonces 1 to 4
    let v2 = bundle(2, "v2", &with(MESH, &[(EDS, "b", 2), (RDS, "s", 2)]), Some(&v1));
    assert_eq!(show(stream.due(&v2)), ["endpoints v2 #5: b@2"]);
    assert_eq!(exchange(&mut stream, &request(EDS, &["a", "b"], "5"), &v2), ["routes v2 #6: s@2"]);
    assert_eq!(exchange(&mut stream, &request(RDS, &["r", "s"], "6"), &v2), NOTHING);
    // Endpoints b and routes s leave the bundle: nothing is sent for them...
    let v3_resources = without(MESH, &[(EDS, "b"), (RDS, "s")]);
    let v3 = bundle(3, "v3", &v3_resources, Some(&v2));
    assert_eq!(show(stream.due(&v3)), NOTHING);
    // ...and still subscribed, b is sent when it is back.
    let v4 = bundle(4, "v4", &with(&v3_resources, &[(EDS, "b", 3)]), Some(&v3));
    assert_eq!(show(stream.due(&v4)), ["endpoints v4 #7: b@3"]);
}

/// When every endpoint set changed (a full push) and the stream holds them
/// all, the EDS response is the type's one shared chunk, as a wildcard CDS
/// response is: no entry per name gathered on each stream. When only some
/// changed, just those go, one entry each.
#[test]
fn r19_an_eds_response_carrying_every_resource_of_the_type_is_its_shared_chunk() {
    let v1 = bundle(1, "v1", MESH, None);
    let mut stream = settled(StreamKind::Aggregated, ENVOY, &v1);
    let v2 = bundle(2, "v2", &with(MESH, &[(EDS, "a", 2), (EDS, "b", 2)]), Some(&v1));
    let due = stream.due(&v2);
    let (ty, response) = &due[0];
    assert_eq!(show(due.clone()), ["endpoints v2 #5: a@2 b@2"]);
    // The head (version, type, nonce), then the snapshot's own chunk.
    assert_eq!(response.chunks().len(), 2, "{ty}: one shared chunk for the resources");
    assert_eq!(response.chunks()[1].as_ptr(), v2.all_entries(EDS).as_ptr());

    assert_eq!(exchange(&mut stream, &request(EDS, &["a", "b"], "5"), &v2), NOTHING);
    let v3 = bundle(3, "v3", &with(MESH, &[(EDS, "a", 3), (EDS, "b", 2)]), Some(&v2));
    let due = stream.due(&v3);
    assert_eq!(due[0].1.chunks().len(), 2, "head and the one entry that changed");
    assert_eq!(show(due), ["endpoints v3 #6: a@3"]);
}

/// R21 after a full push: every cluster changed, the endpoints did not, and
/// each cluster warms: on ADS their endpoints follow CDS in the same
/// write, and Envoy's repeat of the EDS request, sent before it read them,
/// is stale (R10). A stream naming every endpoint set is sent the type's
/// one shared chunk; one naming some of them gets those; one also naming a
/// set the snapshot lacks gets every set there is, the shared chunk again.
#[test]
fn r21_a_full_push_is_followed_by_every_endpoint_set_as_the_types_shared_chunk() {
    let v1 = bundle(1, "v1", MESH, None);
    let v2 = bundle(2, "v2", &with(MESH, &[(CDS, "a", 2), (CDS, "b", 2)]), Some(&v1));
    for (names, expected, shared) in [
        (&["a", "b"][..], "endpoints v2 #6: a@1 b@1", true),
        (&["a"][..], "endpoints v2 #6: a@1", false),
        (&["a", "b", "c"][..], "endpoints v2 #6: a@1 b@1", true),
    ] {
        let subscriptions: &[(ResourceType, &[&str])] = &[(CDS, &[]), (EDS, names), (LDS, &[]), (RDS, &["r", "s"])];
        let mut stream = settled(StreamKind::Aggregated, subscriptions, &v1);
        let due = stream.due(&v2);
        assert_eq!(show(due.clone()), ["clusters v2 #5: a@2 b@2", expected], "{names:?}");
        let chunks = due[1].1.chunks();
        let all = v2.all_entries(EDS);
        assert_eq!(chunks.len() == 2 && chunks[1].as_ptr() == all.as_ptr() && chunks[1].len() == all.len(), shared, "{names:?}: the shared chunk");
        assert_eq!(stream.on_request(&sotw(&request(EDS, names, "2")), Some(&v2)), Received::Stale { ty: EDS }, "{names:?}");
        assert_eq!(exchange(&mut stream, &request(CDS, &[], "5"), &v2), NOTHING, "{names:?}");
        assert_eq!(exchange(&mut stream, &request(EDS, names, "6"), &v2), NOTHING, "{names:?}");
    }
}

/// R21 when one cluster changes: only its endpoints follow, found by the
/// name the cluster asks for (`eds_cluster_config.service_name` when set);
/// with its endpoints changed too, they are sent once.
#[test]
fn r21_a_changed_cluster_is_followed_by_the_endpoints_it_asks_for_and_no_others() {
    let v1 = bundle(1, "v1", MESH, None);
    let mut stream = settled(StreamKind::Aggregated, ENVOY, &v1); // nonces 1 to 4
    let v2 = bundle(2, "v2", &with(MESH, &[(CDS, "b", 2)]), Some(&v1));
    assert_eq!(show(stream.due(&v2)), ["clusters v2 #5: a@1 b@2", "endpoints v2 #6: b@1"]);
    stream.on_request(&sotw(&request(CDS, &[], "5")), Some(&v2));
    stream.on_request(&sotw(&request(EDS, &["a", "b"], "6")), Some(&v2));
    let v3 = bundle(3, "v3", &with(MESH, &[(CDS, "b", 2), (CDS, "a", 3), (EDS, "a", 3)]), Some(&v2));
    assert_eq!(show(stream.due(&v3)), ["clusters v3 #7: a@3 b@2", "endpoints v3 #8: a@3"]);
    stream.on_request(&sotw(&request(CDS, &[], "7")), Some(&v3));
    stream.on_request(&sotw(&request(EDS, &["a", "b"], "8")), Some(&v3));

    // Cluster a now takes the endpoints named b: those follow it.
    let mut resources = with(MESH, &[(CDS, "b", 2), (EDS, "a", 3)]);
    resources.retain(|&(ty, name, _)| (ty, name) != (CDS, "a"));
    let mut v4 = stored("v4", &resources);
    v4.resources.push(StoredResource { field: CDS.bundle_field(), name: "a".into(), value: eds_cluster("a".into(), "b", None).encode_to_vec().into() });
    let v4 = Arc::new(Snapshot::build(4, Arc::new(v4), Some(&v3)));
    assert_eq!(show(stream.due(&v4)), ["clusters v4 #9: a@0 b@2", "endpoints v4 #10: b@1"]);
}

/// Found by tests/replicas_e2e.rs (a PUT storm through a real Envoy): on
/// ADS, bundle v3 changes cluster `a` and its endpoints while CDS and EDS
/// responses of v2 are still unanswered. Each type goes on as its reply
/// comes; CDS v3 starts cluster a warming again, and the EDS response
/// after it must be a fresh answer for a, though EDS v3 was sent already:
/// or the cluster warms until Envoy's init fetch timeout (15 s).
#[test]
fn r21_a_cds_response_after_the_eds_one_of_the_same_snapshot_is_followed_by_a_fresh_one() {
    let v1 = snapshot(1, "v1", 1, None);
    let mut state = StreamState::new(StreamKind::Aggregated);
    assert_eq!(answer(&mut state, &request(CDS, &[], ""), &v1), [CDS]);
    assert_eq!(answer(&mut state, &request(EDS, &["a"], ""), &v1), [EDS]);
    assert!(answer(&mut state, &request(CDS, &[], "1"), &v1).is_empty());
    assert!(answer(&mut state, &request(EDS, &["a"], "2"), &v1).is_empty());

    let v2 = snapshot(2, "v2", 2, Some(&v1));
    assert_eq!(show(state.due(&v2)), ["clusters v2 #3: a@2", "endpoints v2 #4: a@0"]);
    // v3 before any ACK: nothing can go; then EDS v3 after the EDS ACK.
    let v3 = bundle(3, "v3", &[(CDS, "a", 3), (EDS, "a", 1)], Some(&v2));
    assert_eq!(show(state.due(&v3)), NOTHING);
    assert_eq!(exchange(&mut state, &request(EDS, &["a"], "4"), &v3), ["endpoints v3 #5: a@1"]);
    // CDS v3 after the CDS ACK; the fresh EDS answer once #5 is ACKed.
    assert_eq!(exchange(&mut state, &request(CDS, &[], "3"), &v3), ["clusters v3 #6: a@3"]);
    assert_eq!(exchange(&mut state, &request(EDS, &["a"], "5"), &v3), ["endpoints v3 #7: a@1"]);
    // The warming cluster's repeat, sent before it read #7, is stale, and
    // the ACKs get nothing more.
    assert_eq!(state.on_request(&sotw(&request(EDS, &["a"], "5")), Some(&v3)), Received::Stale { ty: EDS });
    assert_eq!(exchange(&mut state, &request(EDS, &["a"], "7"), &v3), NOTHING);
    assert_eq!(exchange(&mut state, &request(CDS, &[], "6"), &v3), NOTHING);
    assert_eq!(exchange(&mut state, &request(EDS, &["a"], "7"), &v3), NOTHING);
}

/// R21 for a client two snapshots behind on CDS: no list of changes says
/// which clusters it has not had, so every endpoint set follows.
#[test]
fn r21_clusters_sent_across_several_snapshots_are_followed_by_every_endpoint_set() {
    let v1 = bundle(1, "v1", MESH, None);
    let mut stream = settled(StreamKind::Aggregated, ENVOY, &v1); // nonces 1 to 4
    let v2 = bundle(2, "v2", &with(MESH, &[(CDS, "a", 2)]), Some(&v1));
    assert_eq!(show(stream.due(&v2)), ["clusters v2 #5: a@2 b@1", "endpoints v2 #6: a@1"]);
    assert_eq!(exchange(&mut stream, &request(EDS, &["a", "b"], "6"), &v2), NOTHING);
    // Two bundles while CDS #5 is unanswered: b changes, then a again.
    let v3 = bundle(3, "v3", &with(MESH, &[(CDS, "a", 2), (CDS, "b", 2)]), Some(&v2));
    assert_eq!(show(stream.due(&v3)), NOTHING, "CDS #5 is unanswered");
    let v4 = bundle(4, "v4", &with(MESH, &[(CDS, "a", 3), (CDS, "b", 2)]), Some(&v3));
    assert_eq!(show(stream.due(&v4)), NOTHING, "CDS #5 is unanswered");
    assert_eq!(exchange(&mut stream, &request(CDS, &[], "5"), &v4), ["clusters v4 #7: a@3 b@2", "endpoints v4 #8: a@1 b@1"]);
}

/// R21: "A cluster finishes warming only on a fresh EDS response, even if its
/// endpoints did not change": on per-type streams too.
#[test]
fn r21_on_per_type_streams_an_eds_repeat_after_a_cds_update_is_answered() {
    let v1 = bundle(1, "v1", MESH, None);
    let mut clusters = settled(StreamKind::Single(CDS), &[(CDS, &[])], &v1); // nonce 1
    let mut endpoints = settled(StreamKind::Single(EDS), &[(EDS, &["a", "b"])], &v1); // nonce 1
    let v2 = bundle(2, "v2", &with(MESH, &[(CDS, "a", 2)]), Some(&v1));
    assert_eq!(show(endpoints.due(&v2)), NOTHING, "the endpoints did not change");
    assert_eq!(show(clusters.due(&v2)), ["clusters v2 #2: a@2 b@1"]);
    // Cluster a warms: Envoy repeats the EDS request it sent as its ACK.
    let repeat = request(EDS, &["a", "b"], "1");
    assert_eq!(endpoints.on_request(&sotw(&repeat), Some(&v2)), Received::Request { ty: EDS });
    assert_eq!(show(endpoints.due(&v2)), ["endpoints v2 #2: a@1 b@1"]);
    // ...once.
    assert_eq!(exchange(&mut endpoints, &request(EDS, &["a", "b"], "2"), &v2), NOTHING);
    assert_eq!(endpoints.on_request(&sotw(&request(EDS, &["a", "b"], "2")), Some(&v2)), Received::Repeat { ty: EDS });
    assert_eq!(show(endpoints.due(&v2)), NOTHING);
}

/// R22: "A listener finishes warming when its route configuration
/// arrives": on ADS the routes a changed listener takes follow it in the
/// same write, and no others (the route twin of the R21 tests above).
#[test]
fn r22_a_changed_listener_is_followed_by_its_routes_and_no_others() {
    let v1 = bundle(1, "v1", MESH, None);
    let mut stream = settled(StreamKind::Aggregated, ENVOY, &v1); // nonces 1 to 4
    let v2 = bundle(2, "v2", &with(MESH, &[(LDS, "l", 2)]), Some(&v1));
    assert_eq!(show(stream.due(&v2)), ["listeners v2 #5: l@2 m@1", "routes v2 #6: r@1"]);
    // The warming listener's repeat, sent before it read #6, is stale.
    assert_eq!(stream.on_request(&sotw(&request(RDS, &["r", "s"], "4")), Some(&v2)), Received::Stale { ty: RDS });
    assert_eq!(exchange(&mut stream, &request(LDS, &[], "5"), &v2), NOTHING);
    assert_eq!(exchange(&mut stream, &request(RDS, &["r", "s"], "6"), &v2), NOTHING);
    // Listener m and route s change together: s is sent once.
    let v3 = bundle(3, "v3", &with(MESH, &[(LDS, "l", 2), (LDS, "m", 2), (RDS, "s", 2)]), Some(&v2));
    assert_eq!(show(stream.due(&v3)), ["listeners v3 #7: l@2 m@2", "routes v3 #8: s@2"]);
}

/// R23: "On ADS: clusters, then endpoints, then listeners, then routes ... A
/// route must never point at a cluster that the client does not have yet."
#[test]
fn r23_on_ads_listeners_and_routes_wait_for_clusters_and_endpoints() {
    let v1 = bundle(1, "v1", MESH, None);
    let mut stream = StreamState::new(StreamKind::Aggregated);
    for (ty, names) in ENVOY.iter().rev() {
        stream.on_request(&sotw(&request(*ty, names, "")), Some(&v1));
    }
    assert_eq!(show(stream.due(&v1)), ["clusters v1 #1: a@1 b@1", "endpoints v1 #2: a@1 b@1"]);
    assert_eq!(exchange(&mut stream, &request(CDS, &[], "1"), &v1), NOTHING, "endpoints not ACKed yet");
    assert_eq!(exchange(&mut stream, &request(EDS, &["a", "b"], "2"), &v1), ["listeners v1 #3: l@1 m@1", "routes v1 #4: r@1 s@1"]);
    stream.on_request(&sotw(&request(LDS, &[], "3")), Some(&v1));
    stream.on_request(&sotw(&request(RDS, &["r", "s"], "4")), Some(&v1));
    // A bundle that changes every type: the same order.
    let all_changed: Vec<Resource> = MESH.iter().map(|&(ty, name, _)| (ty, name, 2)).collect();
    let v2 = bundle(2, "v2", &all_changed, Some(&v1));
    assert_eq!(show(stream.due(&v2)), ["clusters v2 #5: a@2 b@2", "endpoints v2 #6: a@2 b@2"]);
    assert_eq!(exchange(&mut stream, &request(EDS, &["a", "b"], "6"), &v2), NOTHING, "clusters not ACKed yet");
    assert_eq!(exchange(&mut stream, &request(CDS, &[], "5"), &v2), ["listeners v2 #7: l@2 m@2", "routes v2 #8: r@2 s@2"]);
}

/// R23: "remove stale clusters/endpoints last": on ADS, a cluster a bundle
/// drops stays in CDS responses until the routes that used it are replaced.
#[test]
fn r23_on_ads_a_dropped_cluster_is_removed_after_the_routes_that_used_it() {
    let v1 = bundle(1, "v1", MESH, None);
    let mut stream = settled(StreamKind::Aggregated, ENVOY, &v1); // nonces 1 to 4
    // v2 drops cluster b; route r, which used it, changes.
    let v2 = bundle(2, "v2", &with(&without(MESH, &[(CDS, "b"), (EDS, "b")]), &[(RDS, "r", 2)]), Some(&v1));
    assert_eq!(show(stream.due(&v2)), ["clusters v2 #5: a@1 b@1"], "b is kept");
    assert_eq!(exchange(&mut stream, &request(CDS, &[], "5"), &v2), ["routes v2 #6: r@2"]);
    assert_eq!(exchange(&mut stream, &request(RDS, &["r", "s"], "6"), &v2), ["clusters v2 #7: a@1"], "b goes last");
    assert_eq!(exchange(&mut stream, &request(CDS, &[], "7"), &v2), NOTHING);
}

/// The one response of `due`: its type, nonce and resource names.
fn only(responses: Vec<(ResourceType, EncodedResponse)>) -> (ResourceType, String, Vec<String>) {
    let [(ty, response)] = <[_; 1]>::try_from(responses).expect("one response");
    let decoded = decode(ty, &response);
    let names = decoded.resources.iter().map(|any| name_and_revision(ty, &any.value).0).collect();
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
    stream.on_request(&sotw(&request(ResourceType::Cluster, &["a", "b"], "")), Some(&v1));
    stream.on_request(&sotw(&request(ResourceType::Listener, &[], "")), Some(&v1));
    assert_eq!(only(stream.due(&v1)), (ResourceType::Cluster, "1".into(), vec!["a".into(), "b".into()]));
    stream.on_request(&sotw(&request(ResourceType::Cluster, &["a", "b"], "1")), Some(&v1));
    assert_eq!(only(stream.due(&v1)).0, ResourceType::Listener, "routing follows the clusters");
    stream.on_request(&sotw(&request(ResourceType::Listener, &[], "2")), Some(&v1));

    // b and c are dropped: b is kept a while, c was never asked for.
    let v2 = clusters_snapshot(2, "v2", &["a"], Some(&v1));
    assert_eq!(only(stream.due(&v2)), (ResourceType::Cluster, "3".into(), vec!["a".into(), "b".into()]));
    // The client unsubscribes from b, and asks for d, which does not exist.
    stream.on_request(&sotw(&request(ResourceType::Cluster, &["a", "d"], "3")), Some(&v2));
    assert_eq!(only(stream.due(&v2)), (ResourceType::Cluster, "4".into(), vec!["a".into()]));
}

/// Also found by the fuzz target: a client that named only `a` turns to
/// the wildcard just as a bundle without `b` arrives. It never held `b`:
/// nothing is kept, and no final CDS response follows.
#[test]
fn clusters_never_sent_are_not_kept_when_the_subscription_grows() {
    let v1 = clusters_snapshot(1, "v1", &["a", "b"], None);
    let mut stream = StreamState::new(StreamKind::Aggregated);
    stream.on_request(&sotw(&request(ResourceType::Cluster, &["a"], "")), Some(&v1));
    stream.on_request(&sotw(&request(ResourceType::Listener, &[], "")), Some(&v1));
    assert_eq!(only(stream.due(&v1)), (ResourceType::Cluster, "1".into(), vec!["a".into()]));
    stream.on_request(&sotw(&request(ResourceType::Cluster, &["a"], "1")), Some(&v1));
    assert_eq!(only(stream.due(&v1)).0, ResourceType::Listener);
    stream.on_request(&sotw(&request(ResourceType::Listener, &[], "2")), Some(&v1));

    let v2 = clusters_snapshot(2, "v2", &["a"], Some(&v1));
    stream.on_request(&sotw(&request(ResourceType::Cluster, &["*"], "1")), Some(&v2));
    assert_eq!(only(stream.due(&v2)), (ResourceType::Cluster, "3".into(), vec!["a".into()]));
    stream.on_request(&sotw(&request(ResourceType::Cluster, &["*"], "3")), Some(&v2));
    assert!(stream.due(&v2).is_empty(), "no final CDS response: nothing was kept");
}

/// R37: "A restarted server must not push an empty LDS/CDS before its stored
/// config is loaded": requests that come first are answered with the bundle.
#[test]
fn r37_requests_before_the_first_bundle_are_answered_with_it() {
    let mut stream = StreamState::new(StreamKind::Aggregated);
    for (ty, names) in ENVOY {
        assert_eq!(stream.on_request(&sotw(&request(*ty, names, "")), None), Received::Request { ty: *ty });
    }
    let v1 = bundle(1, "v1", MESH, None);
    assert_eq!(show(stream.due(&v1)), ["clusters v1 #1: a@1 b@1", "endpoints v1 #2: a@1 b@1"]);
}
