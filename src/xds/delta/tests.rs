//! The delta state machine, rule by rule (rules of `shared/xds-protocol.md`).

use envoy_types::pb::{
    envoy::{
        config::{cluster::v3::Cluster, endpoint::v3::ClusterLoadAssignment, listener::v3::Listener},
        service::discovery::v3::DeltaDiscoveryResponse,
    },
    google::{protobuf::Duration as ProtoDuration, rpc::Status as RpcStatus},
};
use prost::Message;

use super::*;
use crate::schema::{Bundle, StoredBundle};

const CDS: ResourceType = ResourceType::Cluster;
const EDS: ResourceType = ResourceType::Endpoint;
const LDS: ResourceType = ResourceType::Listener;

/// A bundle of clusters (`name`, connect timeout in seconds), each with an
/// endpoints entry, and listeners (whose stat prefix is the version: each
/// version changes them), built after `previous`.
fn snapshot(id: u64, version: &str, clusters: &[(&str, i64)], listeners: &[&str], previous: Option<&Snapshot>) -> Arc<Snapshot> {
    let bundle = Bundle {
        version: version.to_owned(),
        clusters: clusters
            .iter()
            .map(|(name, timeout)| Cluster {
                name: (*name).into(),
                connect_timeout: Some(ProtoDuration { seconds: *timeout, nanos: 0 }),
                ..Default::default()
            })
            .collect(),
        // As many (empty) localities as the timeout: endpoints change with the cluster.
        endpoints: clusters
            .iter()
            .map(|(name, timeout)| ClusterLoadAssignment { cluster_name: (*name).into(), endpoints: vec![Default::default(); *timeout as usize], ..Default::default() })
            .collect(),
        listeners: listeners.iter().map(|name| Listener { name: (*name).into(), stat_prefix: version.into(), ..Default::default() }).collect(),
        ..Default::default()
    };
    Arc::new(Snapshot::build(id, Arc::new(StoredBundle::from_bundle(bundle, version.to_owned())), previous))
}

fn request(ty: ResourceType, subscribe: &[&str], unsubscribe: &[&str], nonce: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: ty.type_url().to_owned(),
        resource_names_subscribe: subscribe.iter().map(|n| (*n).to_owned()).collect(),
        resource_names_unsubscribe: unsubscribe.iter().map(|n| (*n).to_owned()).collect(),
        response_nonce: nonce.to_owned(),
        ..Default::default()
    }
}

fn ack(ty: ResourceType, nonce: &str) -> DeltaDiscoveryRequest {
    request(ty, &[], &[], nonce)
}

fn nack(ty: ResourceType, nonce: &str) -> DeltaDiscoveryRequest {
    let error = RpcStatus { code: 3, message: "rejected".into(), details: vec![] };
    DeltaDiscoveryRequest { error_detail: Some(error), ..ack(ty, nonce) }
}

/// A response as a test reads it.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    ty: ResourceType,
    nonce: String,
    /// (name, version) of each resource sent.
    resources: Vec<(String, String)>,
    removed: Vec<String>,
}

fn seen(responses: Vec<(ResourceType, EncodedResponse)>) -> Vec<Seen> {
    responses
        .into_iter()
        .map(|(ty, response)| {
            let decoded = DeltaDiscoveryResponse::decode(response.to_bytes()).expect("a DeltaDiscoveryResponse");
            assert_eq!(decoded.type_url, ty.type_url());
            for resource in &decoded.resources {
                assert_eq!(resource.resource.as_ref().map(|any| any.type_url.as_str()), Some(ty.type_url()), "each resource is its Any");
            }
            Seen {
                ty,
                nonce: decoded.nonce,
                resources: decoded.resources.into_iter().map(|r| (r.name, r.version)).collect(),
                removed: decoded.removed_resources,
            }
        })
        .collect()
}

/// Takes in `request` and returns what is due.
fn answer(state: &mut DeltaState, request: &DeltaDiscoveryRequest, snapshot: &Arc<Snapshot>) -> Vec<Seen> {
    state.on_request(request, Some(snapshot));
    seen(state.due(snapshot))
}

fn names(seen: &Seen) -> Vec<&str> {
    seen.resources.iter().map(|(name, _)| name.as_str()).collect()
}

fn version_of(snapshot: &Snapshot, ty: ResourceType, name: &str) -> String {
    resource_version(snapshot.digest(ty, name).unwrap())
}

/// R26: every delta response carries a nonce; `system_version_info` is the
/// bundle's version, for debugging.
#[test]
fn r26_every_response_has_a_nonce_and_the_bundle_version_as_system_version_info() {
    let v1 = snapshot(1, "v1", &[("a", 1)], &[], None);
    let mut state = DeltaState::new(StreamKind::Single(CDS));
    let request = DeltaDiscoveryRequest { type_url: String::new(), ..Default::default() };
    state.on_request(&request, Some(&v1));
    let [(_, response)] = <[_; 1]>::try_from(state.due(&v1)).unwrap();
    let decoded = DeltaDiscoveryResponse::decode(response.to_bytes()).unwrap();
    assert_eq!((decoded.nonce.as_str(), decoded.system_version_info.as_str()), ("1", "v1"));
    let any = decoded.resources[0].resource.as_ref().unwrap();
    assert_eq!(Cluster::decode(any.value.as_slice()).unwrap().name, "a", "an empty type URL on a per-type service is its type (R3)");
}

/// R27: the request naming the latest nonce ACKs it, or NACKs it with
/// `error_detail`; a NACKed version is not sent again (no resend loop).
#[test]
fn r27_ack_and_nack_by_the_latest_nonce_and_no_resend_loop_after_a_nack() {
    let v1 = snapshot(1, "v1", &[("a", 1)], &[], None);
    let mut state = DeltaState::new(StreamKind::Aggregated);
    assert_eq!(answer(&mut state, &ack(CDS, ""), &v1).len(), 1);
    assert_eq!(state.on_request(&nack(CDS, "1"), Some(&v1)), Received::Nack { ty: CDS, nonce: "1", error: "rejected" });
    assert!(state.due(&v1).is_empty(), "the rejected version is not resent");
    for _ in 0..1000 {
        assert_ne!(state.on_request(&nack(CDS, "1"), Some(&v1)), Received::Nack { ty: CDS, nonce: "1", error: "rejected" });
        assert!(state.due(&v1).is_empty(), "a repeated NACK is answered");
    }
    // A later change is sent, and its ACK is an ACK.
    let v2 = snapshot(2, "v2", &[("a", 2)], &[], Some(&v1));
    let sent = seen(state.due(&v2));
    assert_eq!((sent[0].nonce.as_str(), names(&sent[0])), ("2", vec!["a"]));
    assert_eq!(state.on_request(&ack(CDS, "2"), Some(&v2)), Received::Ack { ty: CDS, version: None });
}

/// R28: a request with a stale nonce is no ACK, but its subscription
/// changes count.
#[test]
fn r28_a_stale_nonce_request_still_changes_the_subscription() {
    let v1 = snapshot(1, "v1", &[("a", 1), ("b", 1)], &[], None);
    let mut state = DeltaState::new(StreamKind::Aggregated);
    assert_eq!(names(&answer(&mut state, &request(EDS, &["a"], &[], ""), &v1)[0]), ["a"]);
    // Nonce 1 is unanswered; a request naming an older nonce subscribes to b.
    assert_eq!(state.on_request(&request(EDS, &["b"], &[], "0"), Some(&v1)), Received::Request { ty: EDS });
    assert!(state.due(&v1).is_empty(), "still waiting for the reply to nonce 1");
    let sent = answer(&mut state, &ack(EDS, "1"), &v1);
    assert_eq!(names(&sent[0]), ["b"], "b is sent once 1 is ACKed");
}

/// R29: each resource has its own version; only changed ones are sent;
/// deletions go in `removed_resources`.
#[test]
fn r29_only_changed_resources_are_sent_with_their_own_versions_and_deletions_are_removed_resources() {
    let v1 = snapshot(1, "v1", &[("a", 1), ("b", 1), ("c", 1)], &[], None);
    let mut state = DeltaState::new(StreamKind::Single(CDS));
    let first = answer(&mut state, &ack(CDS, ""), &v1);
    assert_eq!(names(&first[0]), ["a", "b", "c"]);
    assert!(first[0].resources.iter().all(|(name, version)| *version == version_of(&v1, CDS, name)));
    answer(&mut state, &ack(CDS, "1"), &v1);

    let v2 = snapshot(2, "v2", &[("a", 1), ("b", 2)], &[], Some(&v1));
    let sent = seen(state.due(&v2));
    assert_eq!(sent, [Seen { ty: CDS, nonce: "2".into(), resources: vec![("b".into(), version_of(&v2, CDS, "b"))], removed: vec!["c".into()] }]);
    assert_ne!(version_of(&v1, CDS, "b"), version_of(&v2, CDS, "b"));
    assert_eq!(version_of(&v1, CDS, "a"), version_of(&v2, CDS, "a"), "an unchanged resource keeps its version");
    answer(&mut state, &ack(CDS, "2"), &v2);
    // A new version with nothing changed sends nothing.
    let v3 = snapshot(3, "v3", &[("a", 1), ("b", 2)], &[], Some(&v2));
    assert!(seen(state.due(&v3)).is_empty());
    // Nor does one compared from further back (not the direct successor).
    let v4 = snapshot(4, "v4", &[("a", 1), ("b", 2), ("d", 1)], &[], Some(&v3));
    let v5 = snapshot(5, "v5", &[("a", 1), ("b", 2), ("d", 1)], &[], Some(&v4));
    assert_eq!(names(&seen(state.due(&v5))[0]), ["d"]);
}

/// R30: a name the client subscribes to is sent, even if the server
/// believes the client has it.
#[test]
fn r30_a_name_subscribed_again_is_sent_though_the_client_holds_it() {
    let v1 = snapshot(1, "v1", &[("a", 1)], &[], None);
    let mut state = DeltaState::new(StreamKind::Aggregated);
    answer(&mut state, &request(EDS, &["a"], &[], ""), &v1);
    assert!(answer(&mut state, &ack(EDS, "1"), &v1).is_empty());
    let again = answer(&mut state, &request(EDS, &["a"], &[], "1"), &v1);
    assert_eq!(names(&again[0]), ["a"], "a warming cluster's EDS re-subscription is answered");
}

/// R31: unsubscribing a name the client never had is ignored.
#[test]
fn r31_unsubscribing_a_name_never_held_changes_nothing() {
    let v1 = snapshot(1, "v1", &[("a", 1)], &[], None);
    let mut state = DeltaState::new(StreamKind::Aggregated);
    answer(&mut state, &request(EDS, &["a"], &[], ""), &v1);
    answer(&mut state, &ack(EDS, "1"), &v1);
    assert!(answer(&mut state, &request(EDS, &[], &["never"], "1"), &v1).is_empty());
    // a is still subscribed: its change is sent.
    let v2 = snapshot(2, "v2", &[("a", 2)], &[], Some(&v1));
    assert_eq!(names(&seen(state.due(&v2))[0]), ["a"]);
}

/// R32: a subscribed name that does not exist goes in `removed_resources`;
/// it is sent once it appears.
#[test]
fn r32_a_name_that_does_not_exist_is_removed_then_sent_when_it_appears() {
    let v1 = snapshot(1, "v1", &[("a", 1)], &[], None);
    let mut state = DeltaState::new(StreamKind::Aggregated);
    let first = answer(&mut state, &request(EDS, &["a", "later"], &[], ""), &v1);
    assert_eq!((names(&first[0]), first[0].removed.clone()), (vec!["a"], vec!["later".to_owned()]));
    answer(&mut state, &ack(EDS, "1"), &v1);
    let v2 = snapshot(2, "v2", &[("a", 1), ("later", 1)], &[], Some(&v1));
    let sent = seen(state.due(&v2));
    assert_eq!((names(&sent[0]), sent[0].removed.len()), (vec!["later"], 0));
    // Unsubscribed names are not sent, whatever changes.
    answer(&mut state, &request(EDS, &[], &["later"], &sent[0].nonce), &v2);
    let v3 = snapshot(3, "v3", &[("a", 1), ("later", 2)], &[], Some(&v2));
    assert!(seen(state.due(&v3)).is_empty());
}

/// R33: on reconnect, `initial_resource_versions` is honoured: what the
/// client holds at the current version is not sent, what is gone is removed.
#[test]
fn r33_a_reconnect_with_initial_resource_versions_sends_only_what_changed_and_removes_what_is_gone() {
    let v1 = snapshot(1, "v1", &[("a", 1), ("b", 1)], &[], None);
    let v2 = snapshot(2, "v2", &[("a", 1), ("b", 2)], &[], Some(&v1));
    let mut state = DeltaState::new(StreamKind::Single(CDS));
    let mut reconnect = ack(CDS, "");
    reconnect.initial_resource_versions =
        [("a", version_of(&v1, CDS, "a")), ("b", version_of(&v1, CDS, "b")), ("gone", "0123456789abcdef".to_owned())].into_iter().map(|(n, v)| (n.to_owned(), v)).collect();
    let sent = answer(&mut state, &reconnect, &v2);
    assert_eq!(sent, [Seen { ty: CDS, nonce: "1".into(), resources: vec![("b".into(), version_of(&v2, CDS, "b"))], removed: vec!["gone".into()] }]);

    // A named reconnect that holds everything current gets nothing.
    let mut state = DeltaState::new(StreamKind::Aggregated);
    let mut reconnect = request(EDS, &["a", "b"], &[], "");
    reconnect.initial_resource_versions = [("a", version_of(&v2, EDS, "a")), ("b", version_of(&v2, EDS, "b"))].into_iter().map(|(n, v)| (n.to_owned(), v)).collect();
    assert!(answer(&mut state, &reconnect, &v2).is_empty());
    assert_eq!(state.take_in_sync(), [EDS], "reported in sync, for the status");
    assert!(state.take_in_sync().is_empty());
}

/// The wildcard forms: an empty first LDS/CDS subscription (legacy), an
/// explicit `*`, and `*` beside names; unsubscribing `*` ends it.
#[test]
fn wildcard_legacy_explicit_and_with_names() {
    let v1 = snapshot(1, "v1", &[("a", 1), ("b", 1)], &[], None);
    let mut legacy = DeltaState::new(StreamKind::Aggregated);
    assert_eq!(names(&answer(&mut legacy, &ack(CDS, ""), &v1)[0]), ["a", "b"]);
    let mut eds = DeltaState::new(StreamKind::Aggregated);
    assert!(answer(&mut eds, &ack(EDS, ""), &v1).is_empty(), "an empty EDS subscription is not a wildcard");

    let mut explicit = DeltaState::new(StreamKind::Aggregated);
    assert_eq!(names(&answer(&mut explicit, &request(EDS, &["*"], &[], ""), &v1)[0]), ["a", "b"]);

    let mut named = DeltaState::new(StreamKind::Aggregated);
    assert_eq!(names(&answer(&mut named, &request(CDS, &["a"], &[], ""), &v1)[0]), ["a"], "names alone are not a wildcard");
    answer(&mut named, &ack(CDS, "1"), &v1);
    assert_eq!(names(&answer(&mut named, &request(CDS, &["*"], &[], "1"), &v1)[0]), ["b"], "`*` beside a name adds the rest");
    answer(&mut named, &ack(CDS, "2"), &v1);
    answer(&mut named, &request(CDS, &[], &["*"], "2"), &v1);
    let v2 = snapshot(2, "v2", &[("a", 2), ("b", 2)], &[], Some(&v1));
    assert_eq!(names(&seen(named.due(&v2))[0]), ["a"], "without `*`, only the name subscribed");
}

/// R23 on delta ADS: clusters and endpoints go first, listeners wait until
/// they are answered, and clusters a new bundle drops are removed only
/// once everything else is answered (make before break).
#[test]
fn r23_on_delta_ads_listeners_wait_for_clusters_and_dropped_clusters_are_removed_last() {
    let v1 = snapshot(1, "v1", &[("a", 1), ("old", 1)], &["l"], None);
    let mut state = DeltaState::new(StreamKind::Aggregated);
    state.on_request(&ack(CDS, ""), Some(&v1));
    state.on_request(&ack(LDS, ""), Some(&v1));
    let first = seen(state.due(&v1));
    assert_eq!(first.iter().map(|s| s.ty).collect::<Vec<_>>(), [CDS], "listeners wait for the clusters");
    let next = answer(&mut state, &ack(CDS, "1"), &v1);
    assert_eq!(next.iter().map(|s| s.ty).collect::<Vec<_>>(), [LDS]);
    answer(&mut state, &ack(LDS, "2"), &v1);

    // v2 drops `old` and changes the listener (its routes no longer use it).
    let v2 = snapshot(2, "v2", &[("a", 1)], &["l"], Some(&v1));
    let sent = seen(state.due(&v2));
    assert_eq!(sent.iter().map(|s| (s.ty, names(s))).collect::<Vec<_>>(), [(LDS, vec!["l"])], "the removal of `old` waits; the listener goes");
    let last = answer(&mut state, &ack(LDS, &sent[0].nonce), &v2);
    assert_eq!(last, [Seen { ty: CDS, nonce: "4".into(), resources: vec![], removed: vec!["old".into()] }], "then `old` is removed");
    assert!(answer(&mut state, &ack(CDS, "4"), &v2).is_empty());

    // A dropped cluster that comes back before its removal went out is sent, not removed.
    let v3 = snapshot(3, "v3", &[("a", 1)], &["l"], Some(&v2));
    let sent = seen(state.due(&v3));
    assert_eq!(sent.iter().map(|s| s.ty).collect::<Vec<_>>(), [LDS]);
    let v4 = snapshot(4, "v4", &[("a", 1), ("back", 1)], &["l"], Some(&v3));
    assert_eq!(seen(state.due(&v4)).iter().map(|s| (s.ty, names(s))).collect::<Vec<_>>(), [(CDS, vec!["back"])], "CDS goes while LDS is unanswered");
}

/// R21 on delta ADS: when a modified cluster takes the endpoints it
/// already has, Envoy subscribes to nothing new and waits for them until
/// its init fetch timeout. They follow the CDS response unasked, and only
/// the modified cluster's.
#[test]
fn r21_a_modified_eds_cluster_is_followed_by_its_unchanged_endpoints() {
    use envoy_types::pb::envoy::config::{
        cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType, EdsClusterConfig},
        core::v3::{config_source::ConfigSourceSpecifier, ConfigSource},
    };
    let build = |id: u64, version: &str, clusters: &[(&str, i64)], previous: Option<&Snapshot>| {
        let ads = ConfigSource { config_source_specifier: Some(ConfigSourceSpecifier::Ads(Default::default())), ..Default::default() };
        let cluster = |(name, timeout): &(&str, i64)| Cluster {
            name: (*name).into(),
            connect_timeout: Some(ProtoDuration { seconds: *timeout, nanos: 0 }),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
            eds_cluster_config: Some(EdsClusterConfig { eds_config: Some(ads.clone()), service_name: String::new() }),
            ..Default::default()
        };
        let bundle = Bundle {
            version: version.to_owned(),
            clusters: clusters.iter().map(cluster).collect(),
            endpoints: clusters.iter().map(|(name, _)| ClusterLoadAssignment { cluster_name: (*name).into(), ..Default::default() }).collect(),
            ..Default::default()
        };
        Arc::new(Snapshot::build(id, Arc::new(StoredBundle::from_bundle(bundle, version.to_owned())), previous))
    };
    let v1 = build(1, "v1", &[("a", 1), ("b", 1)], None);
    let mut state = DeltaState::new(StreamKind::Aggregated);
    assert_eq!(answer(&mut state, &ack(CDS, ""), &v1).iter().map(names).collect::<Vec<_>>(), [["a", "b"]]);
    assert_eq!(answer(&mut state, &request(EDS, &["a", "b"], &[], ""), &v1).iter().map(names).collect::<Vec<_>>(), [["a", "b"]]);
    assert!(answer(&mut state, &ack(CDS, "1"), &v1).is_empty());
    assert!(answer(&mut state, &ack(EDS, "2"), &v1).is_empty());

    let v2 = build(2, "v2", &[("a", 2), ("b", 1)], Some(&v1));
    let sent = seen(state.due(&v2));
    assert_eq!(sent.iter().map(|s| (s.ty, names(s))).collect::<Vec<_>>(), [(CDS, vec!["a"]), (EDS, vec!["a"])]);
    assert_eq!(sent[1].resources[0].1, version_of(&v2, EDS, "a"), "at the version the client holds");
    assert!(answer(&mut state, &ack(CDS, "3"), &v2).is_empty());
    assert!(answer(&mut state, &ack(EDS, "4"), &v2).is_empty());
}

/// VHDS, delta only: Envoy first subscribes to its route configuration
/// (answered at once, empty), then to `<route configuration>/<host>` for a
/// host it cannot route, answered with the virtual host serving it under
/// its own name, the subscribed name an alias; or with no resource.
#[test]
fn vhds_answers_a_namespace_at_once_and_hosts_on_demand_by_their_domains() {
    use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;

    use crate::schema::StoredResource;
    const VHDS: ResourceType = ResourceType::VirtualHost;
    let build = |id: u64, version: &str, app_domain: &str, previous: Option<&Snapshot>| {
        let vhost = |name: &str, domain: &str| StoredResource {
            field: VHDS.bundle_field(),
            name: name.into(),
            value: VirtualHost { name: name.into(), domains: vec![domain.into()], ..Default::default() }.encode_to_vec().into(),
        };
        let route = StoredResource { field: ResourceType::Route.bundle_field(), name: "rc".into(), value: RouteConfiguration { name: "rc".into(), ..Default::default() }.encode_to_vec().into() };
        let resources = vec![route, vhost("rc/app", app_domain), vhost("rc/wild", "*.wild.example")];
        Arc::new(Snapshot::build(id, Arc::new(StoredBundle { version: version.into(), content_hash: version.into(), resources }), previous))
    };
    let aliases = |response: &DeltaDiscoveryResponse| -> Vec<(String, Vec<String>, bool)> {
        response.resources.iter().map(|r| (r.name.clone(), r.aliases.clone(), r.resource.is_some())).collect()
    };
    let v1 = build(1, "v1", "app.example", None);
    let mut state = DeltaState::new(StreamKind::Single(VHDS));
    let respond = |state: &mut DeltaState, request: &DeltaDiscoveryRequest, snapshot: &Arc<Snapshot>| {
        state.on_request(request, Some(snapshot));
        state.due(snapshot).into_iter().map(|(_, r)| DeltaDiscoveryResponse::decode(r.to_bytes()).unwrap()).collect::<Vec<_>>()
    };

    let first = respond(&mut state, &request(VHDS, &["rc"], &[], ""), &v1);
    assert_eq!(first.len(), 1, "the namespace subscription is answered");
    assert!(first[0].resources.is_empty() && first[0].removed_resources.is_empty());
    let on_demand = respond(&mut state, &request(VHDS, &["rc/app.example:8080"], &[], &first[0].nonce), &v1);
    assert_eq!(aliases(&on_demand[0]), [("rc/app".to_owned(), vec!["rc/app.example:8080".to_owned()], true)]);
    let more = respond(&mut state, &request(VHDS, &["rc/a.wild.example", "rc/nobody.example"], &[], &on_demand[0].nonce), &v1);
    let mut got = aliases(&more[0]);
    got.sort();
    assert_eq!(got, [("rc/nobody.example".to_owned(), vec!["rc/nobody.example".to_owned()], false), ("rc/wild".to_owned(), vec!["rc/a.wild.example".to_owned()], true)]);
    assert!(respond(&mut state, &ack(VHDS, &more[0].nonce), &v1).is_empty());

    // rc/app changes: resent under the alias that asked for it; nothing else.
    let v2 = build(2, "v2", "app.example:8080", Some(&v1));
    let update = seen_vhds(state.due(&v2));
    assert_eq!(update, [("rc/app".to_owned(), vec!["rc/app.example:8080".to_owned()], true)]);

    // State of the world does not serve VHDS.
    let mut sotw = crate::xds::stream::StreamState::new(StreamKind::Aggregated);
    let vhds_request = DiscoveryRequest { type_url: VHDS.type_url().into(), resource_names: vec!["rc".into()], ..Default::default() };
    assert!(matches!(sotw.on_request(&(&vhds_request).into(), Some(&v2)), Received::Unknown { .. }));

    fn seen_vhds(responses: Vec<(ResourceType, EncodedResponse)>) -> Vec<(String, Vec<String>, bool)> {
        responses
            .into_iter()
            .flat_map(|(_, r)| DeltaDiscoveryResponse::decode(r.to_bytes()).unwrap().resources)
            .map(|r| (r.name, r.aliases, r.resource.is_some()))
            .collect()
    }
}

/// The first response of a wildcard (or every-name) subscription carries the
/// whole set: framed once per snapshot and shared by every stream, and the
/// same bytes as the entries framed one by one.
#[test]
fn the_whole_set_is_one_chunk_shared_by_every_stream() {
    let v1 = snapshot(1, "v1", &[("a", 1), ("b", 1), ("c", 1)], &[], None);
    let first = |state: &mut DeltaState| {
        state.on_request(&ack(CDS, ""), Some(&v1));
        let [(_, response)] = <[_; 1]>::try_from(state.due(&v1)).unwrap();
        response
    };
    let (one, two) = (first(&mut DeltaState::new(StreamKind::Aggregated)), first(&mut DeltaState::new(StreamKind::Aggregated)));
    assert_eq!(one.chunks().len(), 2, "the stream's own fields, then the set");
    assert_eq!(one.chunks()[1].as_ptr(), two.chunks()[1].as_ptr(), "one chunk for every stream");
    let names_of = |response: &EncodedResponse| DeltaDiscoveryResponse::decode(response.to_bytes()).unwrap().resources.into_iter().map(|r| (r.name, r.version)).collect::<Vec<_>>();
    let cds: Vec<&Resource> = v1.resources(CDS).iter().collect();
    let one_by_one = frame(&v1, CDS, &cds[..2], &[], &[], "1");
    assert_eq!(names_of(&one)[..2], names_of(&one_by_one)[..], "entries framed alone read the same");
    assert_eq!(names_of(&one).len(), 3);
}
