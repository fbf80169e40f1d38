//! The state machine, rule by rule (rules of `shared/xds-protocol.md`).

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
