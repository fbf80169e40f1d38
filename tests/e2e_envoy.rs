//! End to end: the `sxds` binary, a real Envoy 1.40 and real HTTP traffic
//! through Envoy's listener to backends in this process. Bundles and
//! bootstraps are the shipped examples with only ports and backends changed,
//! so the examples are proven too.
//!
//! Needs `envoy` on PATH (the README test command installs it).

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{
    envoy::{example_bundle, fetch, free_port, port_of, wait_for_body, Backend, Daemon, Envoy, Transport, Traffic, CONVERGE, RECONNECT},
    wait_for,
};

const ALL_TYPES: [&str; 4] = ["clusters", "endpoints", "listeners", "routes"];
/// What a bundle that only moves an endpoint sends: EDS alone. Versions are
/// per type (R4); unchanged clusters, listeners and routes are not sent (R8).
const ENDPOINT_MOVE: [&str; 1] = ["endpoints"];
/// What a bundle that replaces the cluster (and routes to it) sends.
const CLUSTER_SWAP: [&str; 3] = ["clusters", "endpoints", "routes"];

/// The example's single cluster renamed: a new cluster, its endpoints and
/// the route pointing at it, the old cluster gone.
fn with_cluster_renamed(mut bundle: Value, name: &str) -> Value {
    bundle["clusters"][0]["name"] = name.into();
    bundle["endpoints"][0]["cluster_name"] = name.into();
    bundle["routes"][0]["virtual_hosts"][0]["routes"][0]["route"]["cluster"] = name.into();
    bundle
}

/// The example's route configuration renamed: the listener changes and warms
/// until the new name arrives over RDS.
fn with_route_renamed(mut bundle: Value, name: &str) -> Value {
    bundle["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["rds"]["route_config_name"] = name.into();
    bundle["routes"][0]["name"] = name.into();
    bundle
}

/// The example bundle with one EDS cluster per `(name, backend port)`, each
/// routed from the path prefix `/{name}`.
fn with_clusters(mut bundle: Value, clusters: &[(&str, u16)]) -> Value {
    let (cluster, endpoints) = (bundle["clusters"][0].clone(), bundle["endpoints"][0].clone());
    let route = bundle["routes"][0]["virtual_hosts"][0]["routes"][0].clone();
    let (mut new_clusters, mut new_endpoints, mut new_routes) = (vec![], vec![], vec![]);
    for (name, port) in clusters {
        let (mut c, mut e, mut r) = (cluster.clone(), endpoints.clone(), route.clone());
        c["name"] = (*name).into();
        e["cluster_name"] = (*name).into();
        *port_of(&mut e["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]) = (*port).into();
        r["match"] = json!({ "prefix": format!("/{name}") });
        r["route"]["cluster"] = (*name).into();
        new_clusters.push(c);
        new_endpoints.push(e);
        new_routes.push(r);
    }
    bundle["clusters"] = new_clusters.into();
    bundle["endpoints"] = new_endpoints.into();
    bundle["routes"][0]["virtual_hosts"][0]["routes"] = new_routes.into();
    bundle
}

/// Envoy accepted every update it got (R6), never gave up waiting for a
/// resource it asked for (R21, R24), and counts successful LDS/CDS/RDS ones.
async fn assert_clean_updates(envoy: &Envoy) {
    let stats = envoy.stats().await;
    let bad: Vec<(&String, &u64)> = stats
        .iter()
        .filter(|(name, value)| (name.ends_with("update_rejected") || name.ends_with("init_fetch_timeout")) && **value > 0)
        .collect();
    assert!(bad.is_empty(), "Envoy rejected an update or timed out waiting for one: {bad:?}");
    for name in ["listener_manager.lds.update_success", "cluster_manager.cds.update_success"] {
        assert!(stats.get(name).copied().unwrap_or(0) >= 1, "{name} should be at least 1");
    }
}

/// Starts a daemon holding `bundle` and an Envoy of `node_id` serving it.
async fn serving(transport: Transport, node_id: &str, bundle: &Value) -> (Daemon, Envoy) {
    let daemon = Daemon::start().await;
    daemon.put_ok("sidecar", bundle).await;
    let envoy = Envoy::start(transport, daemon.xds_port, node_id);
    (daemon, envoy)
}

/// The protocol every stream of `node` speaks, by GET /nodes.
async fn assert_protocol(daemon: &Daemon, node: &str, transport: Transport) {
    let expected = match transport {
        Transport::DeltaAds | Transport::DeltaSeparate => "delta",
        Transport::Rest => "rest",
        Transport::Ads | Transport::Separate => "sotw",
    };
    let streams = daemon.streams(node).await;
    assert!(!streams.is_empty() && streams.iter().all(|s| s["protocol"] == expected), "every stream of {node} speaks {expected}: {streams:?}");
}

/// The example bundle for per-type services, its RDS and EDS config
/// sources speaking delta too when the bootstrap does.
fn separate_bundle(transport: Transport, version: &str, listener_port: u16, backend_port: u16) -> Value {
    let bundle = example_bundle("sidecar-xds.json", version, listener_port, backend_port);
    match transport {
        Transport::DeltaSeparate => serde_json::from_str(&bundle.to_string().replace(r#""api_type":"GRPC""#, r#""api_type":"DELTA_GRPC""#)).unwrap(),
        _ => bundle,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ads_endpoint_then_cluster_change_switch_traffic_without_a_failed_request_r21_r22_r23() {
    switch_traffic_over_ads(Transport::Ads, "sidecar-ads").await;
}

/// The same three changes on delta ADS: the dropped cluster goes out in
/// `removed_resources` only after the routes moved off it (R23, R29).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_ads_endpoint_then_cluster_change_switch_traffic_without_a_failed_request_r23_r29() {
    switch_traffic_over_ads(Transport::DeltaAds, "sidecar-delta-ads").await;
}

async fn switch_traffic_over_ads(transport: Transport, node: &str) {
    let (a, b, c) = (Backend::start("backend-A").await, Backend::start("backend-B").await, Backend::start("backend-C").await);
    let port = free_port();
    let (daemon, envoy) = serving(transport, node, &example_bundle("sidecar.json", "1", port, a.port)).await;
    wait_for_body(port, "/", "backend-A", CONVERGE).await;
    daemon.wait_acked(node, &ALL_TYPES, "1", CONVERGE).await;

    // Same cluster, its endpoint moves to B.
    let traffic = Traffic::start(port, "/", &["backend-A", "backend-B"]);
    daemon.put_ok("sidecar", &example_bundle("sidecar.json", "2", port, b.port)).await;
    wait_for_body(port, "/", "backend-B", CONVERGE).await;
    traffic.assert_all_ok("while the endpoint moved from A to B").await;

    // The cluster and the listener change in place, their endpoints and
    // route do not: Envoy warms the modified cluster (listener) on the
    // fresh EDS (RDS) answer that follows CDS (LDS) unasked (R21, R22). Had
    // that answer not reached them, they would warm until Envoy's init
    // fetch timeout, which `assert_clean_updates` counts below.
    let traffic = Traffic::start(port, "/", &["backend-B"]);
    let mut in_place = example_bundle("sidecar.json", "2b", port, b.port);
    in_place["clusters"][0]["connect_timeout"] = json!("0.75s");
    in_place["listeners"][0]["per_connection_buffer_limit_bytes"] = json!(65536);
    daemon.put_ok("sidecar", &in_place).await;
    daemon.wait_acked(node, &ALL_TYPES, "2b", CONVERGE).await;
    wait_for("the modified cluster and listener to warm", CONVERGE, || async {
        let stats = envoy.stats().await;
        let stat = |name: &str| stats.get(name).copied().unwrap_or(0);
        stat("cluster_manager.cluster_modified") >= 1
            && stat("listener_manager.listener_modified") >= 1
            && stat("cluster_manager.warming_clusters") == 0
            && stat("listener_manager.total_listeners_warming") == 0
    })
    .await;
    wait_for_body(port, "/", "backend-B", CONVERGE).await;
    traffic.assert_all_ok("while the cluster and the listener changed in place").await;

    // A new cluster replaces the old one. It warms on its EDS answer (R21);
    // the route must never point at a cluster Envoy lacks (R23).
    let traffic = Traffic::start(port, "/", &["backend-B", "backend-C"]);
    let v3 = with_cluster_renamed(example_bundle("sidecar.json", "3", port, c.port), "backend_v3");
    daemon.put_ok("sidecar", &v3).await;
    wait_for_body(port, "/", "backend-C", CONVERGE).await;
    traffic.assert_all_ok("while the route moved to a new cluster").await;

    daemon.wait_acked(node, &CLUSTER_SWAP, "3", CONVERGE).await;
    assert!(envoy.stat("cluster.backend_v3.update_success").await >= 1, "EDS answered for the new cluster");

    // The listener now names another route configuration: it warms until
    // that arrives over RDS (R22) while the old listener keeps serving.
    let traffic = Traffic::start(port, "/", &["backend-C"]);
    let v4 = with_route_renamed(with_cluster_renamed(example_bundle("sidecar.json", "4", port, c.port), "backend_v3"), "route_v4");
    daemon.put_ok("sidecar", &v4).await;
    daemon.wait_acked(node, &["listeners", "routes"], "4", CONVERGE).await;
    wait_for("the listener to use route_v4", CONVERGE, || async {
        envoy.stat("http.ingress_http.rds.route_v4.update_success").await >= 1
    })
    .await;
    wait_for_body(port, "/", "backend-C", CONVERGE).await;
    traffic.assert_all_ok("while the listener moved to a new route configuration").await;

    assert_clean_updates(&envoy).await;
    assert_eq!(envoy.stat("control_plane.connected_state").await, 1);
    assert_protocol(&daemon, node, transport).await;
    // The cluster v3 replaced is gone, over delta too (in removed_resources).
    let dump = envoy.config_dump().await;
    let clusters: Vec<&str> = dump["configs"].as_array().into_iter().flatten().filter_map(|c| c["dynamic_active_clusters"].as_array()).flatten().filter_map(|c| c["cluster"]["name"].as_str()).collect();
    assert_eq!(clusters, ["backend_v3"], "the dynamic clusters Envoy holds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separate_services_switch_traffic_and_answer_every_eds_subscription_r16_r19() {
    switch_traffic_over_separate_services(Transport::Separate, "sidecar-separate").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_separate_services_switch_traffic_and_answer_every_eds_subscription_r29_r30() {
    switch_traffic_over_separate_services(Transport::DeltaSeparate, "sidecar-delta-separate").await;
}

async fn switch_traffic_over_separate_services(transport: Transport, node: &str) {
    let (a, b, c) = (Backend::start("backend-A").await, Backend::start("backend-B").await, Backend::start("backend-C").await);
    let port = free_port();
    let (daemon, envoy) = serving(transport, node, &separate_bundle(transport, "1", port, a.port)).await;
    wait_for_body(port, "/", "backend-A", CONVERGE).await;
    daemon.wait_acked(node, &ALL_TYPES, "1", CONVERGE).await;

    let traffic = Traffic::start(port, "/", &["backend-A", "backend-B"]);
    daemon.put_ok("sidecar", &separate_bundle(transport, "2", port, b.port)).await;
    wait_for_body(port, "/", "backend-B", CONVERGE).await;
    traffic.assert_all_ok("while the endpoint moved from A to B").await;
    daemon.wait_acked(node, &ENDPOINT_MOVE, "2", CONVERGE).await;

    // Three EDS clusters: Envoy subscribes to each; every one must be answered.
    let clusters = [("one", a.port), ("two", b.port), ("three", c.port)];
    let v3 = with_clusters(separate_bundle(transport, "3", port, a.port), &clusters);
    daemon.put_ok("sidecar", &v3).await;
    for (path, body) in [("/one", "backend-A"), ("/two", "backend-B"), ("/three", "backend-C")] {
        wait_for_body(port, path, body, CONVERGE).await;
    }
    daemon.wait_acked(node, &CLUSTER_SWAP, "3", CONVERGE).await;
    let streams = daemon.streams(node).await;
    let services: Vec<&str> = streams.iter().filter_map(|s| s["service"].as_str()).collect();
    for service in ["lds", "cds", "rds", "eds"] {
        assert!(services.contains(&service), "no {service} stream in GET /nodes: {services:?}");
    }
    // Envoy opens one EDS stream per cluster here; each ACKed version 3 above.
    let eds_streams = services.iter().filter(|s| **s == "eds").count();
    assert_eq!(eds_streams, clusters.len(), "EDS streams in GET /nodes: {services:?}");
    assert!(!services.contains(&"ads"), "the separate-services bootstrap opened an ADS stream");
    for name in ["one", "two", "three"] {
        assert!(envoy.stat(&format!("cluster.{name}.update_success")).await >= 1, "EDS for cluster {name} answered");
    }
    assert_clean_updates(&envoy).await;
    assert_protocol(&daemon, node, transport).await;
}

/// examples/sidecar-rest.json is examples/sidecar-xds.json with each config
/// source polling over REST (api_type REST, cluster_names, refresh_delay and
/// request_timeout as examples/envoy-rest.yaml has them).
#[test]
fn the_rest_example_bundle_is_the_per_type_one_with_rest_config_sources() {
    let read = |file: &str| -> Value { serde_json::from_str(&std::fs::read_to_string(support::envoy::example_path(file)).unwrap()).unwrap() };
    let rest = json!({"api_type": "REST", "transport_api_version": "V3", "cluster_names": ["xds_cluster"], "refresh_delay": "1s", "request_timeout": "30s"});
    let mut expected = read("sidecar-xds.json");
    expected["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["rds"]["config_source"]["api_config_source"] = rest.clone();
    expected["clusters"][0]["eds_cluster_config"]["eds_config"]["api_config_source"] = rest;
    assert_eq!(read("sidecar-rest.json"), expected);
    let bootstrap = std::fs::read_to_string(support::envoy::example_path("envoy-rest.yaml")).unwrap();
    let settings = |setting: &str| bootstrap.lines().filter(|line| line.trim() == setting).count();
    assert_eq!(settings("api_type: REST"), 2, "LDS and CDS poll");
    assert_eq!(settings("request_timeout: 30s"), 2);
}

/// LDS, CDS, RDS and EDS all polled over REST (R34). Every type answers
/// on its own, with no order between them, so a new cluster comes in one
/// PUT and the route moves to it in the next (make before break by hand).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_polling_switches_traffic_without_a_failed_request_and_envoy_rejects_nothing_r34() {
    let transport = Transport::Rest;
    let node = "sidecar-rest";
    let (a, b, c) = (Backend::start("backend-A").await, Backend::start("backend-B").await, Backend::start("backend-C").await);
    let port = free_port();
    let (daemon, envoy) = serving(transport, node, &mode_bundle(transport, "1", port, a.port)).await;
    wait_for_body(port, "/", "backend-A", CONVERGE).await;
    daemon.wait_acked(node, &ALL_TYPES, "1", CONVERGE).await;

    // The endpoint moves to B: held polls are answered on the PUT.
    let traffic = Traffic::start(port, "/", &["backend-A", "backend-B"]);
    daemon.put_ok("sidecar", &mode_bundle(transport, "2", port, b.port)).await;
    wait_for_body(port, "/", "backend-B", CONVERGE).await;
    traffic.assert_all_ok("while the endpoint moved from A to B").await;
    daemon.wait_acked(node, &ALL_TYPES, "2", CONVERGE).await;

    // A second cluster, then the route to it, then the old one dropped.
    let traffic = Traffic::start(port, "/", &["backend-B", "backend-C"]);
    let mut v3 = mode_bundle(transport, "3", port, b.port);
    let mut added = with_cluster_renamed(mode_bundle(transport, "3", port, c.port), "backend_v3");
    v3["clusters"].as_array_mut().unwrap().push(added["clusters"][0].take());
    v3["endpoints"].as_array_mut().unwrap().push(added["endpoints"][0].take());
    daemon.put_ok("sidecar", &v3).await;
    daemon.wait_acked(node, &["clusters", "endpoints"], "3", CONVERGE).await;
    wait_for("cluster backend_v3 to warm over REST EDS", CONVERGE, || async {
        envoy.stat("cluster.backend_v3.update_success").await >= 1
    })
    .await;
    let mut v4 = v3.clone();
    v4["version"] = "4".into();
    v4["routes"][0]["virtual_hosts"][0]["routes"][0]["route"]["cluster"] = "backend_v3".into();
    daemon.put_ok("sidecar", &v4).await;
    wait_for_body(port, "/", "backend-C", CONVERGE).await;
    daemon.wait_acked(node, &["routes"], "4", CONVERGE).await;
    let v5 = with_cluster_renamed(mode_bundle(transport, "5", port, c.port), "backend_v3");
    daemon.put_ok("sidecar", &v5).await;
    daemon.wait_acked(node, &["clusters"], "5", CONVERGE).await;
    wait_for_body(port, "/", "backend-C", CONVERGE).await;
    traffic.assert_all_ok("while the route moved to a new cluster over REST").await;

    assert_clean_updates(&envoy).await;
    assert_protocol(&daemon, node, transport).await;
    let dump = envoy.config_dump().await;
    let clusters: Vec<&str> = dump["configs"].as_array().into_iter().flatten().filter_map(|c| c["dynamic_active_clusters"].as_array()).flatten().filter_map(|c| c["cluster"]["name"].as_str()).collect();
    assert_eq!(clusters, ["backend_v3"], "the dynamic clusters Envoy holds");
    for name in ["listener_manager.lds", "cluster_manager.cds", "http.ingress_http.rds.local_route", "cluster.backend_v3"] {
        assert_eq!(envoy.stat(&format!("{name}.update_failure")).await, 0, "{name}: a poll failed");
    }
}

/// The example bundle that suits `transport`'s bootstrap.
fn mode_bundle(transport: Transport, version: &str, listener_port: u16, backend_port: u16) -> Value {
    match transport {
        Transport::Ads | Transport::DeltaAds => example_bundle("sidecar.json", version, listener_port, backend_port),
        Transport::Separate | Transport::DeltaSeparate => separate_bundle(transport, version, listener_port, backend_port),
        Transport::Rest => example_bundle("sidecar-rest.json", version, listener_port, backend_port),
    }
}

/// Waits until Envoy noticed the control plane is gone: its gRPC stream is
/// down, or (REST) a poll failed.
async fn wait_control_plane_gone(envoy: &Envoy, transport: Transport) {
    wait_for("Envoy to see the control plane gone", CONVERGE, || async {
        match transport {
            Transport::Rest => envoy.stat("cluster_manager.cds.update_failure").await >= 1,
            _ => envoy.stat("control_plane.connected_state").await == 0,
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_restart_keeps_envoy_serving_then_resyncs_r35_r36() {
    graceful_restart(Transport::Ads, "sidecar-restart").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separate_services_graceful_restart_keeps_envoy_serving_then_resyncs_r35_r36() {
    graceful_restart(Transport::Separate, "sidecar-restart-separate").await;
}

/// A reconnecting delta Envoy names what it holds; nothing current is resent (R33).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_ads_graceful_restart_keeps_envoy_serving_then_resyncs_r33_r35_r36() {
    graceful_restart(Transport::DeltaAds, "sidecar-restart-delta").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_separate_services_graceful_restart_keeps_envoy_serving_then_resyncs_r33_r35_r36() {
    graceful_restart(Transport::DeltaSeparate, "sidecar-restart-delta-separate").await;
}

async fn graceful_restart(transport: Transport, node: &str) {
    let (a, b) = (Backend::start("backend-A").await, Backend::start("backend-B").await);
    let port = free_port();
    let (mut daemon, envoy) = serving(transport, node, &mode_bundle(transport, "1", port, a.port)).await;
    wait_for_body(port, "/", "backend-A", CONVERGE).await;
    daemon.wait_acked(node, &ALL_TYPES, "1", CONVERGE).await;

    let traffic = Traffic::start(port, "/", &["backend-A"]);
    let status = daemon.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "sxds should exit 0 on SIGTERM, got {status}");
    // R35: Envoy notices the control plane is gone and keeps its config.
    wait_control_plane_gone(&envoy, transport).await;
    assert_eq!(fetch(port, "/").await.as_deref(), Ok("backend-A"));

    // R36: Envoy reconnects with backoff and re-syncs from the stored bundle.
    daemon.restart().await;
    daemon.wait_acked(node, &ALL_TYPES, "1", RECONNECT).await;
    traffic.assert_all_ok("while sxds was stopped and restarted").await;

    daemon.put_ok("sidecar", &mode_bundle(transport, "2", port, b.port)).await;
    wait_for_body(port, "/", "backend-B", CONVERGE).await;
    daemon.wait_acked(node, &ENDPOINT_MOVE, "2", CONVERGE).await;
    assert_clean_updates(&envoy).await;
    assert_protocol(&daemon, node, transport).await;
}

/// REST: a held poll is answered 304 at SIGTERM; Envoy keeps its config
/// while polls fail, and its next poll after the restart names what it holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_graceful_restart_keeps_envoy_serving_then_resyncs_r34_r35() {
    graceful_restart(Transport::Rest, "sidecar-restart-rest").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_after_a_put_loses_nothing_and_never_empties_envoy_r37() {
    kill_9_after_a_put(Transport::Ads, "sidecar-kill9").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separate_services_kill_9_after_a_put_loses_nothing_and_never_empties_envoy_r37() {
    kill_9_after_a_put(Transport::Separate, "sidecar-kill9-separate").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_ads_kill_9_after_a_put_loses_nothing_and_never_empties_envoy_r33_r37() {
    kill_9_after_a_put(Transport::DeltaAds, "sidecar-kill9-delta").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_separate_services_kill_9_after_a_put_loses_nothing_and_never_empties_envoy_r33_r37() {
    kill_9_after_a_put(Transport::DeltaSeparate, "sidecar-kill9-delta-separate").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_kill_9_after_a_put_loses_nothing_and_never_empties_envoy_r34_r37() {
    kill_9_after_a_put(Transport::Rest, "sidecar-kill9-rest").await;
}

async fn kill_9_after_a_put(transport: Transport, node: &str) {
    let (a, b) = (Backend::start("backend-A").await, Backend::start("backend-B").await);
    let port = free_port();
    let (mut daemon, envoy) = serving(transport, node, &mode_bundle(transport, "1", port, a.port)).await;
    wait_for_body(port, "/", "backend-A", CONVERGE).await;
    daemon.wait_acked(node, &ALL_TYPES, "1", CONVERGE).await;

    let traffic = Traffic::start(port, "/", &["backend-A", "backend-B"]);
    daemon.put_ok("sidecar", &mode_bundle(transport, "2", port, b.port)).await;
    daemon.kill9();
    daemon.restart().await;
    assert_eq!(daemon.get_json("/resources/sidecar").await["version"], "2", "the answered PUT survived kill -9");

    wait_for_body(port, "/", "backend-B", RECONNECT).await;
    daemon.wait_acked(node, &ALL_TYPES, "2", RECONNECT).await;
    traffic.assert_all_ok("across kill -9 and restart").await;

    // An empty LDS/CDS would have removed the listener or the cluster.
    assert_eq!(envoy.active_listeners().await, ["listener_0"]);
    assert_eq!(envoy.stat("listener_manager.listener_removed").await, 0, "a listener was removed");
    assert_eq!(envoy.stat("cluster_manager.cluster_removed").await, 0, "a cluster was removed");
    assert_clean_updates(&envoy).await;
    assert_protocol(&daemon, node, transport).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_nack_is_visible_not_resent_and_old_config_keeps_serving_r6_r7() {
    let (a, b) = (Backend::start("backend-A").await, Backend::start("backend-B").await);
    let (port, node) = (free_port(), "sidecar-nack");
    let (daemon, envoy) = serving(Transport::Ads, node, &example_bundle("sidecar.json", "1", port, a.port)).await;
    wait_for_body(port, "/", "backend-A", CONVERGE).await;
    daemon.wait_acked(node, &ALL_TYPES, "1", CONVERGE).await;

    // Valid to sxds, refused by Envoy: CLUSTER_PROVIDED is only for
    // ORIGINAL_DST-like cluster types, not EDS.
    let mut v2 = example_bundle("sidecar.json", "2", port, a.port);
    v2["clusters"][0]["lb_policy"] = "CLUSTER_PROVIDED".into();
    daemon.put_ok("sidecar", &v2).await;

    let rejected = "cluster_manager.cds.update_rejected";
    wait_for("Envoy to reject CDS version 2", CONVERGE, || async { envoy.stat(rejected).await >= 1 }).await;
    wait_for("GET /nodes to show the CDS NACK", CONVERGE, || async {
        let streams = daemon.streams(node).await;
        streams.iter().any(|s| s["types"]["clusters"]["rejected"]["error"].as_str().is_some_and(|e| !e.is_empty()))
    })
    .await;
    let clusters = daemon.streams(node).await[0]["types"]["clusters"].clone();
    assert_eq!((&clusters["acked_version"], &clusters["sent_version"]), (&json!("1"), &json!("2")), "{clusters}");

    // R7: not resent in a loop; the old config keeps serving meanwhile.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let count = envoy.stat(rejected).await;
        assert!(count <= 2, "CDS version 2 rejected {count} times: sxds resends a NACKed config");
        assert_eq!(fetch(port, "/").await.as_deref(), Ok("backend-A"));
    }

    // A fixed bundle is accepted and clears the rejection.
    daemon.put_ok("sidecar", &example_bundle("sidecar.json", "3", port, b.port)).await;
    wait_for_body(port, "/", "backend-B", CONVERGE).await;
    // The fixed cluster and the moved endpoint are sent.
    daemon.wait_acked(node, &["clusters", "endpoints"], "3", CONVERGE).await;
    let streams = daemon.streams(node).await;
    assert!(streams.iter().all(|s| s["types"]["clusters"]["rejected"].is_null()), "NACK not cleared by the ACK: {streams:?}");
}

/// Lua that marks every response, to show the filter really runs.
const MARK_RESPONSES: &str = r#"function envoy_on_response(response) response:headers():add("x-sxds-lua", "typed-struct") end"#;

/// HTTP filters configured through TypedStructs instead of their own types:
/// a Lua filter inside cncf/xds's `xds.type.v3.TypedStruct`, the router inside
/// the older `udpa.type.v1.TypedStruct`. sxds takes the bundle, Envoy ACKs the
/// listener (R5, no NACK: R6) and the Lua filter runs on the traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_filters_configured_through_typed_structs_are_acked_and_run_r5() {
    let backend = Backend::start("backend-A").await;
    let (port, node) = (free_port(), "sidecar-typed-struct");
    let mut bundle = example_bundle("sidecar.json", "1", port, backend.port);
    bundle["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"] = json!([
        {"name": "envoy.filters.http.lua", "typed_config": {
            "@type": "type.googleapis.com/xds.type.v3.TypedStruct",
            "type_url": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
            "value": {"default_source_code": {"inline_string": MARK_RESPONSES}},
        }},
        {"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
            "type_url": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
            "value": {},
        }},
    ]);
    let (daemon, envoy) = serving(Transport::Ads, node, &bundle).await;
    daemon.wait_acked(node, &ALL_TYPES, "1", CONVERGE).await;
    wait_for_body(port, "/", "backend-A", CONVERGE).await;
    let streams = daemon.streams(node).await;
    assert!(streams.iter().all(|s| s["types"]["listeners"]["rejected"].is_null()), "listeners NACKed: {streams:?}");
    assert_clean_updates(&envoy).await;

    let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(5)).build().expect("HTTP client");
    let response = http.get(format!("http://127.0.0.1:{port}/")).send().await.expect("a request through Envoy");
    let mark = response.headers().get("x-sxds-lua").and_then(|v| v.to_str().ok()).map(str::to_owned);
    assert_eq!(mark.as_deref(), Some("typed-struct"), "the Lua filter's header on {response:?}");
}
