//! The state-of-the-world protocol, rule by rule (../shared/xds-protocol.md),
//! against the real daemon on port 0 with a scripted gRPC client.

mod support;

use std::time::Duration;

use envoy_types::pb::envoy::service::{
    cluster::v3::cluster_discovery_service_client::ClusterDiscoveryServiceClient,
    discovery::v3::DiscoveryRequest,
    endpoint::v3::endpoint_discovery_service_client::EndpointDiscoveryServiceClient,
    listener::v3::listener_discovery_service_client::ListenerDiscoveryServiceClient,
};
use serde_json::{json, Value};
use support::{
    xds_client::{ack, nack, names, request, XdsClient, CDS, EDS, LDS, RDS},
    TestDaemon,
};

/// How long "nothing is sent" is observed. Long enough for the daemon to have
/// answered had it meant to (it answers in well under a millisecond).
const QUIET: Duration = Duration::from_millis(400);

/// A bundle with one EDS cluster (and its endpoints) per `(name, port)`, a
/// route to the first cluster and a listener using that route.
fn bundle(version: &str, clusters: &[(&str, u16)]) -> Value {
    let eds = json!({"ads": {}, "resource_api_version": "V3"});
    json!({
        "version": version,
        "listeners": [{
            "name": "listener_0",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10000}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "ingress",
                    "rds": {"route_config_name": "route_0", "config_source": eds},
                    "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
                }
            }]}]
        }],
        "clusters": clusters.iter().map(|(name, _)| json!({
            "name": name, "type": "EDS", "connect_timeout": "1s", "eds_cluster_config": {"eds_config": eds}
        })).collect::<Vec<_>>(),
        "routes": [{
            "name": "route_0",
            "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": clusters[0].0}}]}]
        }],
        "endpoints": clusters.iter().map(|(name, port)| json!({
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]
        })).collect::<Vec<_>>(),
    })
}

async fn put(daemon: &TestDaemon, node_type: &str, body: &Value) {
    let (status, answer) = daemon.put(node_type, body.to_string()).await;
    assert_eq!(status, 200, "PUT refused: {answer}");
}

async fn nodes(daemon: &TestDaemon) -> Value {
    reqwest::get(daemon.url("/nodes")).await.unwrap().json().await.unwrap()
}

#[tokio::test]
async fn r14_r18_wildcard_cds_gets_the_full_set_and_the_bundle_version() {
    let daemon = TestDaemon::start().await;
    put(&daemon, "sidecar", &bundle("v1", &[("a", 1), ("b", 2)])).await;

    let mut client = XdsClient::ads(&daemon.xds_url(), request("sidecar-1", CDS, &[])).await;
    let response = client.recv().await;
    assert_eq!(response.version_info, "v1", "the bundle's version is version_info");
    assert_eq!(names(&response), ["a", "b"]);
    assert!(!response.nonce.is_empty(), "R1: every response carries a nonce");
    client.ack(&response, &[]).await;

    // R18: the next CDS response is the full set, so a dropped cluster is absent.
    put(&daemon, "sidecar", &bundle("v2", &[("a", 1)])).await;
    let response = client.recv().await;
    assert_eq!((response.version_info.as_str(), names(&response)), ("v2", vec!["a".to_owned()]));

    // "*" is the explicit wildcard (R14) on a fresh stream.
    let mut star = XdsClient::ads(&daemon.xds_url(), request("sidecar-2", CDS, &["*"])).await;
    assert_eq!(names(&star.recv().await), ["a"]);
}

#[tokio::test]
async fn r5_r6_r7_ack_and_nack_are_told_apart_by_error_detail_and_a_nack_is_not_resent() {
    let daemon = TestDaemon::start().await;
    put(&daemon, "sidecar", &bundle("v1", &[("a", 1)])).await;
    let mut client = XdsClient::ads(&daemon.xds_url(), request("sidecar-ack", CDS, &[])).await;
    client.recv_acked(&[]).await;

    put(&daemon, "sidecar", &bundle("v2", &[("a", 1), ("b", 2)])).await;
    let v2 = client.recv().await;
    // R6: a NACK carries the last accepted version; detect it by error_detail
    // even if a client (wrongly) echoes the new version.
    let mut rejection = nack(&v2, "v2", "cluster b: bad config");
    rejection.version_info = "v2".into();
    client.send(rejection).await;

    // R7: visible in the status API...
    support::wait_for("the NACK in /nodes", Duration::from_secs(10), || async {
        let status = nodes(&daemon).await;
        status["streams"][0]["types"]["clusters"]["rejected"]["error"] == "cluster b: bad config"
    })
    .await;
    let status = nodes(&daemon).await;
    assert_eq!(status["streams"][0]["types"]["clusters"]["acked_version"], "v1", "a NACK is not an ACK");
    assert_eq!(status["streams"][0]["node_id"], "sidecar-ack");
    // ...and never resent in a loop.
    client.expect_silence(QUIET).await;

    // The next bundle is sent, and its ACK clears the rejection.
    put(&daemon, "sidecar", &bundle("v3", &[("a", 1)])).await;
    let v3 = client.recv().await;
    assert_eq!(v3.version_info, "v3");
    client.ack(&v3, &[]).await;
    support::wait_for("the ACK in /nodes", Duration::from_secs(10), || async {
        let status = nodes(&daemon).await;
        let clusters = &status["streams"][0]["types"]["clusters"];
        clusters["acked_version"] == "v3" && clusters["rejected"].is_null()
    })
    .await;
}

#[tokio::test]
async fn r10_a_request_with_a_stale_nonce_is_ignored() {
    let daemon = TestDaemon::start().await;
    put(&daemon, "sidecar", &bundle("v1", &[("a", 1), ("b", 2)])).await;
    let mut client = XdsClient::ads(&daemon.xds_url(), request("sidecar-1", EDS, &["a"])).await;
    let first = client.recv_acked(&["a"]).await;

    put(&daemon, "sidecar", &bundle("v2", &[("a", 3), ("b", 2)])).await;
    let second = client.recv().await;
    assert_eq!(names(&second), ["a"]);

    // A request still answering the first response is stale: even its new
    // subscription is not acted on.
    client.send(ack(&first, &["a", "b"])).await;
    client.expect_silence(QUIET).await;

    // The same change with the current nonce is served (R11).
    client.ack(&second, &["a", "b"]).await;
    assert_eq!(names(&client.recv().await), ["b"]);
}

#[tokio::test]
async fn r11_r12_new_names_are_sent_and_missing_names_are_sent_when_they_appear() {
    let daemon = TestDaemon::start().await;
    put(&daemon, "sidecar", &bundle("v1", &[("a", 1)])).await;
    let mut client = XdsClient::ads(&daemon.xds_url(), request("sidecar-1", EDS, &["a", "later"])).await;
    let first = client.recv().await;
    assert_eq!(names(&first), ["a"], "only names that exist are sent");
    client.ack(&first, &["a", "later"]).await;
    client.expect_silence(QUIET).await;

    // R12: "later" appears in a new bundle: sent, and only it (R19: partial).
    put(&daemon, "sidecar", &bundle("v2", &[("a", 1), ("later", 2)])).await;
    let second = client.recv().await;
    assert_eq!(names(&second), ["later"]);
    client.ack(&second, &["a", "later"]).await;

    // R17: dropping "a" is a new subscription; whatever is sent for it
    // (a fresh answer, see R21) no longer carries "a".
    client.ack(&second, &["later"]).await;
    let third = client.recv().await;
    assert_eq!(names(&third), ["later"]);
    client.ack(&third, &["later"]).await;
    // R11: asking for "a" again brings it back although it did not change.
    client.ack(&third, &["later", "a"]).await;
    let fourth = client.recv().await;
    assert!(names(&fourth).contains(&"a".to_owned()));
    assert_eq!(fourth.version_info, "v2");
}

#[tokio::test]
async fn r11_resubscribing_a_name_resends_it_unchanged() {
    let daemon = TestDaemon::start().await;
    put(&daemon, "sidecar", &bundle("v1", &[("a", 1), ("b", 2)])).await;
    let mut client = XdsClient::ads(&daemon.xds_url(), request("sidecar-1", EDS, &["a"])).await;
    let first = client.recv_acked(&["a"]).await;
    client.expect_silence(QUIET).await;
    // Adding "b" in a request that is also the ACK: only "b" is new.
    let update = ack(&first, &["a", "b"]);
    client.send(update).await;
    let response = client.recv().await;
    assert!(names(&response).contains(&"b".to_owned()));
    assert_eq!(response.version_info, "v1", "the version did not change, the subscription did");
}

#[tokio::test]
async fn r13_a_name_is_never_sent_twice_in_one_response() {
    let daemon = TestDaemon::start().await;
    put(&daemon, "sidecar", &bundle("v1", &[("a", 1)])).await;
    let mut client = XdsClient::ads(&daemon.xds_url(), request("sidecar-1", EDS, &["a", "a", "a"])).await;
    assert_eq!(names(&client.recv().await), ["a"]);
}

#[tokio::test]
async fn r15_r16_named_cds_gets_only_its_names_and_an_empty_list_then_unsubscribes() {
    let daemon = TestDaemon::start().await;
    put(&daemon, "sidecar", &bundle("v1", &[("a", 1), ("b", 2), ("c", 3)])).await;
    // R16: a proxyless client names its clusters.
    let mut client = XdsClient::ads(&daemon.xds_url(), request("sidecar-1", CDS, &["b", "c"])).await;
    let first = client.recv().await;
    assert_eq!(names(&first), ["b", "c"]);
    client.ack(&first, &["b", "c"]).await;

    // R15: having named resources, an empty list means "none", not wildcard.
    client.ack(&first, &[]).await;
    put(&daemon, "sidecar", &bundle("v2", &[("a", 1), ("b", 5), ("c", 3)])).await;
    client.expect_silence(QUIET).await;
}

#[tokio::test]
async fn r19_eds_sends_only_the_changed_assignment() {
    let daemon = TestDaemon::start().await;
    put(&daemon, "sidecar", &bundle("v1", &[("a", 1), ("b", 2), ("c", 3)])).await;
    let mut client = XdsClient::ads(&daemon.xds_url(), request("sidecar-1", EDS, &["a", "b", "c"])).await;
    let first = client.recv().await;
    assert_eq!(names(&first), ["a", "b", "c"]);
    client.ack(&first, &["a", "b", "c"]).await;

    put(&daemon, "sidecar", &bundle("v2", &[("a", 1), ("b", 7), ("c", 3)])).await;
    let second = client.recv().await;
    assert_eq!((second.version_info.as_str(), names(&second)), ("v2", vec!["b".to_owned()]));
}

#[tokio::test]
async fn r21_a_changed_cluster_is_followed_by_a_fresh_eds_response_even_if_endpoints_did_not_change() {
    let daemon = TestDaemon::start().await;
    put(&daemon, "sidecar", &bundle("v1", &[("a", 1)])).await;
    let mut client = XdsClient::ads(&daemon.xds_url(), request("sidecar-1", CDS, &[])).await;
    client.recv_acked(&[]).await;
    let eds = client.subscribe("sidecar-1", EDS, &["a"]).await;

    // The cluster changes (not its endpoints): CDS is pushed, and the fresh
    // EDS response the warming cluster needs follows it unasked...
    let mut changed = bundle("v2", &[("a", 1)]);
    changed["clusters"][0]["connect_timeout"] = json!("2s");
    put(&daemon, "sidecar", &changed).await;
    let cds = client.recv().await;
    let fresh = client.recv().await;
    assert_eq!(cds.type_url, CDS);
    assert_eq!((fresh.type_url.as_str(), fresh.version_info.as_str(), names(&fresh)), (EDS, "v2", vec!["a".to_owned()]));
    // ...so the warming cluster's repeat, sent before it read that one, is
    // stale (R10) and gets nothing; nor do the ACKs.
    client.send(ack(&eds, &["a"])).await;
    client.ack(&cds, &[]).await;
    client.ack(&fresh, &["a"]).await;
    client.expect_silence(QUIET).await;
}

#[tokio::test]
async fn r23_ads_sends_clusters_and_endpoints_first_and_listeners_and_routes_once_clusters_are_acked() {
    let daemon = TestDaemon::start().await;
    put(&daemon, "sidecar", &bundle("v1", &[("a", 1)])).await;
    let mut client = XdsClient::ads(&daemon.xds_url(), request("sidecar-1", CDS, &[])).await;
    client.recv_acked(&[]).await;
    client.subscribe("sidecar-1", EDS, &["a", "b"]).await;
    client.subscribe("sidecar-1", LDS, &[]).await;
    client.subscribe("sidecar-1", RDS, &["route_0"]).await;

    // Everything changes at once: a new cluster b, endpoints, listener, route.
    let mut v2 = bundle("v2", &[("b", 2), ("a", 5)]);
    v2["listeners"][0]["address"]["socket_address"]["port_value"] = json!(10001);
    put(&daemon, "sidecar", &v2).await;
    let cds = client.recv().await;
    let eds = client.recv().await;
    assert_eq!((cds.type_url.as_str(), eds.type_url.as_str()), (CDS, EDS), "clusters first, then endpoints");
    // Envoy ACKs clusters only once they are warm, which takes endpoints:
    // those are never held back, but listeners and routes wait.
    client.expect_silence(QUIET).await;
    client.ack(&eds, &["a", "b"]).await;
    client.expect_silence(QUIET).await;
    client.ack(&cds, &[]).await;
    let lds = client.recv().await;
    let rds = client.recv().await;
    assert_eq!((lds.type_url.as_str(), rds.type_url.as_str()), (LDS, RDS), "then listeners, then routes");
    assert!([&cds, &eds, &lds, &rds].iter().all(|r| r.version_info == "v2"));
}

#[tokio::test]
async fn r21_r23_endpoints_for_a_new_cluster_are_served_before_the_cluster_is_acked() {
    let daemon = TestDaemon::start().await;
    put(&daemon, "sidecar", &bundle("v1", &[("a", 1)])).await;
    let mut client = XdsClient::ads(&daemon.xds_url(), request("sidecar-1", CDS, &[])).await;
    client.recv_acked(&[]).await;
    let eds = client.subscribe("sidecar-1", EDS, &["a"]).await;

    put(&daemon, "sidecar", &bundle("v2", &[("a", 1), ("b", 2)])).await;
    let _cds = client.recv().await;
    // Like Envoy: the new cluster b warms and asks for its endpoints while
    // the CDS response is still unanswered; b's endpoints must come anyway.
    client.send(ack(&eds, &["a", "b"])).await;
    let fresh = client.recv().await;
    assert_eq!(fresh.type_url, EDS);
    assert!(names(&fresh).contains(&"b".to_owned()));
}

#[tokio::test]
async fn r37_a_node_type_without_a_bundle_gets_nothing_until_its_bundle_arrives() {
    let daemon = TestDaemon::start().await;
    put(&daemon, "other", &bundle("x1", &[("x", 1)])).await;
    let mut client = XdsClient::ads(&daemon.xds_url(), request("sidecar-early", CDS, &[])).await;
    // No empty CDS: that would delete every cluster the Envoy has.
    client.expect_silence(QUIET).await;
    put(&daemon, "sidecar", &bundle("v1", &[("a", 1)])).await;
    let response = client.recv().await;
    assert_eq!((response.version_info.as_str(), names(&response)), ("v1", vec!["a".to_owned()]));
}

#[tokio::test]
async fn deleting_a_bundle_leaves_connected_envoys_alone_and_new_streams_wait() {
    let daemon = TestDaemon::start().await;
    put(&daemon, "sidecar", &bundle("v1", &[("a", 1)])).await;
    let mut client = XdsClient::ads(&daemon.xds_url(), request("sidecar-1", CDS, &[])).await;
    client.recv_acked(&[]).await;

    let deleted = reqwest::Client::new().delete(daemon.url("/resources/sidecar")).send().await.unwrap();
    assert_eq!(deleted.status(), 200);
    client.expect_silence(QUIET).await;
    let mut late = XdsClient::ads(&daemon.xds_url(), request("sidecar-2", CDS, &[])).await;
    late.expect_silence(QUIET).await;
}

#[tokio::test]
async fn node_types_are_separate_and_taken_from_the_node_id() {
    let daemon = TestDaemon::start().await;
    put(&daemon, "sidecar", &bundle("s1", &[("s", 1)])).await;
    put(&daemon, "gateway", &bundle("g1", &[("g", 1)])).await;
    let mut sidecar = XdsClient::ads(&daemon.xds_url(), request("sidecar-app1-eu", CDS, &[])).await;
    let mut gateway = XdsClient::ads(&daemon.xds_url(), request("gateway", CDS, &[])).await;
    assert_eq!(names(&sidecar.recv().await), ["s"]);
    assert_eq!(names(&gateway.recv().await), ["g"]);
}

#[tokio::test]
async fn a_first_request_without_node_is_invalid_argument() {
    let daemon = TestDaemon::start().await;
    let mut first = request("x", CDS, &[]);
    first.node = None;
    let result = XdsClient::open(&daemon.xds_url(), first, |channel, requests| async move {
        envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient::new(channel)
            .stream_aggregated_resources(requests)
            .await
    })
    .await;
    let status = result.err().expect("the stream is refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    // The daemon is unharmed.
    put(&daemon, "sidecar", &bundle("v1", &[("a", 1)])).await;
}

#[tokio::test]
async fn r2_only_the_first_request_needs_the_node() {
    let daemon = TestDaemon::start().await;
    put(&daemon, "sidecar", &bundle("v1", &[("a", 1)])).await;
    let mut client = XdsClient::ads(&daemon.xds_url(), request("sidecar-1", CDS, &[])).await;
    client.recv_acked(&[]).await;
    // Later requests carry no node (set_node_on_first_message_only).
    client.send(DiscoveryRequest { type_url: EDS.into(), resource_names: vec!["a".into()], ..Default::default() }).await;
    assert_eq!(names(&client.recv().await), ["a"]);
}

#[tokio::test]
async fn r3_per_type_services_serve_their_type_with_an_empty_type_url() {
    let daemon = TestDaemon::start().await;
    put(&daemon, "sidecar", &bundle("v1", &[("a", 1), ("b", 2)])).await;
    let mut first = request("sidecar-1", "", &[]);
    first.type_url.clear();

    let mut cds = XdsClient::open(&daemon.xds_url(), first.clone(), |channel, requests| async move {
        ClusterDiscoveryServiceClient::new(channel).stream_clusters(requests).await
    })
    .await
    .unwrap();
    let response = cds.recv().await;
    assert_eq!((response.type_url.as_str(), names(&response)), (CDS, vec!["a".to_owned(), "b".to_owned()]));

    let mut lds = XdsClient::open(&daemon.xds_url(), first.clone(), |channel, requests| async move {
        ListenerDiscoveryServiceClient::new(channel).stream_listeners(requests).await
    })
    .await
    .unwrap();
    assert_eq!(names(&lds.recv().await), ["listener_0"]);
}

#[tokio::test]
async fn every_one_of_several_eds_streams_naming_a_subset_is_answered() {
    let daemon = TestDaemon::start().await;
    put(&daemon, "sidecar", &bundle("v1", &[("a", 1), ("b", 2), ("c", 3)])).await;
    let mut streams = Vec::new();
    for name in ["a", "b", "c"] {
        let first = request("sidecar-1", EDS, &[name]);
        let client = XdsClient::open(&daemon.xds_url(), first, |channel, requests| async move {
            EndpointDiscoveryServiceClient::new(channel).stream_endpoints(requests).await
        })
        .await
        .unwrap();
        streams.push((name, client));
    }
    for (name, client) in &mut streams {
        let response = client.recv().await;
        assert_eq!(names(&response), [name.to_owned()]);
        client.ack(&response, &[name]).await;
    }
    // A change to b reaches b's stream only.
    put(&daemon, "sidecar", &bundle("v2", &[("a", 1), ("b", 9), ("c", 3)])).await;
    for (name, client) in &mut streams {
        if *name == "b" {
            assert_eq!(names(&client.recv().await), ["b"]);
        } else {
            client.expect_silence(QUIET).await;
        }
    }
}

#[tokio::test]
async fn an_identical_re_put_pushes_nothing_and_a_new_version_pushes_even_without_changes() {
    let daemon = TestDaemon::start().await;
    let v1 = bundle("v1", &[("a", 1)]);
    put(&daemon, "sidecar", &v1).await;
    let mut client = XdsClient::ads(&daemon.xds_url(), request("sidecar-1", CDS, &[])).await;
    client.recv_acked(&[]).await;

    put(&daemon, "sidecar", &v1).await;
    client.expect_silence(QUIET).await;

    put(&daemon, "sidecar", &bundle("v1-again", &[("a", 1)])).await;
    assert_eq!(client.recv().await.version_info, "v1-again");
}

#[tokio::test]
async fn r1_nonces_are_unique_per_response() {
    let daemon = TestDaemon::start().await;
    put(&daemon, "sidecar", &bundle("v1", &[("a", 1)])).await;
    let mut client = XdsClient::ads(&daemon.xds_url(), request("sidecar-1", CDS, &[])).await;
    let mut nonces = std::collections::HashSet::new();
    for version in ["v2", "v3", "v4"] {
        let response = client.recv().await;
        assert!(nonces.insert(response.nonce.clone()), "nonce {} reused", response.nonce);
        client.ack(&response, &[]).await;
        put(&daemon, "sidecar", &bundle(version, &[("a", 1)])).await;
    }
}

#[tokio::test]
async fn shutdown_ends_open_streams_within_the_grace_period() {
    let daemon = TestDaemon::start().await;
    put(&daemon, "sidecar", &bundle("v1", &[("a", 1)])).await;
    let mut client = XdsClient::ads(&daemon.xds_url(), request("sidecar-1", CDS, &[])).await;
    client.recv_acked(&[]).await;
    daemon.stop().await.expect("a clean stop with a stream open");
}

#[tokio::test]
async fn r23_on_ads_a_dropped_cluster_is_removed_only_after_routes_moved_away_from_it() {
    let daemon = TestDaemon::start().await;
    put(&daemon, "sidecar", &bundle("v1", &[("a", 1)])).await;
    let mut client = XdsClient::ads(&daemon.xds_url(), request("sidecar-1", CDS, &[])).await;
    let subscriptions = [(CDS, vec![]), (EDS, vec!["a"]), (LDS, vec![]), (RDS, vec!["route_0"])];
    for (type_url, names) in &subscriptions {
        if *type_url != CDS {
            client.send(request("sidecar-1", type_url, names)).await;
        }
        let response = client.recv().await;
        client.ack(&response, names).await;
    }

    // v2 replaces cluster a by b and points the route at b.
    put(&daemon, "sidecar", &bundle("v2", &[("b", 2)])).await;
    let first = client.recv().await;
    assert_eq!(first.type_url, CDS);
    let mut held = names(&first);
    held.sort();
    assert_eq!(held, ["a", "b"], "the first CDS response keeps a: the route still points at it");
    client.ack(&first, &[]).await;
    // A repeated CDS request mid-transition must not drop a early; then, like
    // Envoy, ask for the endpoints of every cluster held.
    client.send(ack(&first, &[])).await;
    client.send(request("sidecar-1", EDS, &["a", "b"])).await;

    let mut routes_moved = false;
    for _ in 0..8 {
        let response = client.recv().await;
        match response.type_url.as_str() {
            RDS => routes_moved = true,
            CDS if names(&response).contains(&"a".to_owned()) => {}
            CDS => {
                assert!(routes_moved, "a was removed before the route moved to b");
                assert_eq!(names(&response), ["b"]);
                return;
            }
            _ => {}
        }
        let names: &[&str] = match response.type_url.as_str() {
            EDS => &["a", "b"],
            RDS => &["route_0"],
            _ => &[],
        };
        client.ack(&response, names).await;
    }
    panic!("no final CDS response removing a");
}

#[tokio::test]
async fn r4_an_endpoint_change_sends_endpoints_only_and_a_version_only_change_still_reaches_cds() {
    let daemon = TestDaemon::start().await;
    put(&daemon, "sidecar", &bundle("v1", &[("a", 1), ("b", 2)])).await;
    let mut client = XdsClient::ads(&daemon.xds_url(), request("sidecar-1", CDS, &[])).await;
    client.recv_acked(&[]).await;
    client.subscribe("sidecar-1", EDS, &["a", "b"]).await;

    // Only b's endpoints change: EDS carries b, CDS is not resent.
    put(&daemon, "sidecar", &bundle("v2", &[("a", 1), ("b", 3)])).await;
    let eds = client.recv().await;
    assert_eq!((eds.type_url.as_str(), eds.version_info.as_str(), names(&eds)), (EDS, "v2", vec!["b".to_owned()]));
    client.ack(&eds, &["a", "b"]).await;
    client.expect_silence(QUIET).await;

    // Nothing changes but the version: it is served on CDS (and nothing on EDS).
    put(&daemon, "sidecar", &bundle("v3", &[("a", 1), ("b", 3)])).await;
    let cds = client.recv().await;
    assert_eq!((cds.type_url.as_str(), cds.version_info.as_str()), (CDS, "v3"));
    client.ack(&cds, &[]).await;
    client.expect_silence(QUIET).await;
}
