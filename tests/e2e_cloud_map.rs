//! End to end (issue #10, acceptance 6 and 7): endpoints from AWS Cloud Map
//! (the emulator moto) through the `sxds` binary into a real Envoy 1.40,
//! with real HTTP traffic to backends in this process that answer their own
//! names. Instances come and go, turn unhealthy, Cloud Map goes down and
//! comes back, sxds restarts with Cloud Map down, bad sources are refused,
//! zone-aware routing keeps traffic in Envoy's own zone, and a canary
//! rollout that adds a Cloud Map service moves a canary's traffic onto it.
//!
//! Needs `envoy` and `moto_server` on PATH (scripts/test.sh installs both);
//! without moto a test prints SKIPPED and passes, unless `CI=true`.
//! sxds polls every 200 ms and refreshes every 300 ms (`--cloud-map-interval`,
//! `--cloud-map-refresh`), see [`support::backends::cloud_map_daemon`].

mod support;

use std::{collections::BTreeMap, time::Duration};

use serde_json::{json, Value};
use support::{
    backends::{cloud_map_daemon, envoy_hosts, source_of, wait_envoy_hosts, wait_reached, wait_source, Recorder, Stalling},
    cloud_map::{Admin, Emulator, Service, AVAILABILITY_ZONE, IPV4, PORT, REGION},
    envoy::{bootstrap_yaml, example_bundle, fetch, free_port, wait_for_body, Backend, Envoy, Transport, CONVERGE, RECONNECT},
    wait_for,
};
use tokio::time::Instant;

const NAMESPACE: &str = "sxds-e2e.local";
const SERVICE: &str = "backend";
/// Bundle `sidecar` is served to every node whose id starts with `sidecar-`.
const NODE_TYPE: &str = "sidecar";

/// The shipped example bundle (listener on `listener_port`, RDS route to EDS
/// cluster `backend`) with the cluster's endpoints from Cloud Map instead of
/// an `endpoints` entry: HEALTHY instances of `backend` in [`NAMESPACE`],
/// each at its `AWS_INSTANCE_IPV4:AWS_INSTANCE_PORT`.
fn cloud_map_bundle(version: &str, listener_port: u16) -> Value {
    let mut bundle = example_bundle("sidecar.json", version, listener_port, 1);
    bundle.as_object_mut().expect("a bundle is an object").remove("endpoints");
    bundle["endpoint_sources"] = json!([{
        "cluster_name": "backend",
        "cloud_map": {"namespace": NAMESPACE, "service": SERVICE, "port_attribute": PORT, "health": "HEALTHY"}
    }]);
    bundle
}

/// Registers `id` at 127.0.0.1:`port`, in `zone` of us-east-1 when given.
async fn register(service: &Service, id: &str, port: u16, zone: Option<&str>) {
    let port = port.to_string();
    let mut attributes = vec![(IPV4, "127.0.0.1"), (PORT, port.as_str())];
    if let Some(zone) = zone {
        attributes.extend([(AVAILABILITY_ZONE, zone), (REGION, "us-east-1")]);
    }
    service.register(id, &attributes).await;
}

/// Sends `count` requests through Envoy, one after the other; every one
/// must be a 200 from one of `allowed`. Answers how many each backend got.
async fn requests(port: u16, count: usize, allowed: &[&str]) -> BTreeMap<String, usize> {
    let mut split = BTreeMap::new();
    for i in 0..count {
        match fetch(port, "/").await {
            Ok(body) if allowed.contains(&body.as_str()) => *split.entry(body).or_insert(0) += 1,
            other => panic!("request {i} of {count} answered {other:?}; only {allowed:?} may answer"),
        }
    }
    split
}

/// A moto emulator with an empty service [`SERVICE`] in [`NAMESPACE`];
/// `None` (the test is skipped) without `moto_server`.
async fn emulator() -> Option<(Emulator, Admin, Service)> {
    let emulator = Emulator::start().await?;
    let admin = Admin::new(&emulator).await;
    let service = admin.create_service(NAMESPACE, SERVICE).await;
    Some((emulator, admin, service))
}

/// Acceptance 7: instances registered, deregistered and made unhealthy in
/// Cloud Map become Envoy's endpoints; while they change, a steady stream of
/// requests sees only 200s, and once Envoy holds the update no request
/// reaches a host that is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_map_instances_become_envoy_endpoints_without_a_failed_request() {
    let Some((emulator, _admin, service)) = emulator().await else { return };
    let (a, b, c) = (Backend::start("A").await, Backend::start("B").await, Backend::start("C").await);
    let sxds = cloud_map_daemon(&emulator.endpoint_url()).await;
    let port = free_port();
    sxds.put_ok(NODE_TYPE, &cloud_map_bundle("1", port)).await;
    let node = "sidecar-cloud-map";
    let envoy = Envoy::start(Transport::Ads, sxds.xds_port, node);

    register(&service, "A", a.port, None).await;
    wait_for_body(port, "/", "A", CONVERGE).await;
    let source = wait_source(&sxds, NODE_TYPE, "ok", CONVERGE).await;
    assert_eq!((&source["instances"], &source["endpoints"], &source["error"]), (&json!(1), &json!(1), &Value::Null), "{source}");

    // The EDS version Envoy ACKed (its own, per type: R4) says where its
    // endpoints came from.
    wait_for("Envoy to ACK a Cloud Map EDS version", CONVERGE, || async {
        let nodes = sxds.get_json("/nodes").await;
        let streams = nodes["streams"].as_array().cloned().unwrap_or_default();
        streams.iter().filter(|s| s["node_id"] == node).any(|s| s["types"]["endpoints"]["acked_version"].as_str().is_some_and(|v| v.starts_with("1+cloudmap.")))
    })
    .await;

    register(&service, "B", b.port, None).await;
    wait_reached(port, &["A", "B"], CONVERGE).await;

    // Deregister A under traffic: every request a 200; none reaches A once
    // Envoy's /clusters no longer lists it.
    let traffic = Recorder::start(port);
    service.deregister("A").await;
    let applied = wait_envoy_hosts(envoy.admin_port, "backend", &[b.port], CONVERGE).await;
    let after = requests(port, 50, &["B"]).await;
    drop(a); // A's server goes only now, after the check.
    let gone = requests(port, 20, &["B"]).await;
    let samples = traffic.stop_all_ok("while A was deregistered").await;
    let late: Vec<_> = samples.iter().filter(|s| s.sent >= applied && s.answer.as_deref() != Ok("B")).collect();
    assert!(late.is_empty(), "requests sent after Envoy dropped A did not reach B: {late:?}");
    let before = samples.iter().filter(|s| s.sent < applied).count();
    eprintln!("deregister A: {} requests during the change ({before} before Envoy dropped A), then {after:?} and, A stopped, {gone:?}", samples.len());

    // Health: B turns UNHEALTHY. The revision does not move, so only the
    // refresh (300 ms) finds it; the HEALTHY source then drops B.
    register(&service, "C", c.port, None).await;
    wait_reached(port, &["B", "C"], CONVERGE).await;
    wait_for("the source to see B and C", CONVERGE, || async { source_of(&sxds, NODE_TYPE).await["endpoints"] == 2 }).await;
    let revision = source_of(&sxds, NODE_TYPE).await["revision"].clone();
    let traffic = Recorder::start(port);
    service.set_healthy("B", false).await;
    let applied = wait_envoy_hosts(envoy.admin_port, "backend", &[c.port], CONVERGE).await;
    let after = requests(port, 50, &["C"]).await;
    let samples = traffic.stop_all_ok("while B turned unhealthy").await;
    let late: Vec<_> = samples.iter().filter(|s| s.sent >= applied && s.answer.as_deref() != Ok("C")).collect();
    assert!(late.is_empty(), "requests sent after Envoy dropped unhealthy B did not reach C: {late:?}");
    let source = source_of(&sxds, NODE_TYPE).await;
    assert_eq!((&source["revision"], &source["endpoints"]), (&revision, &json!(1)), "health moves no revision; B is gone: {source}");
    eprintln!("B unhealthy: {} requests during the change, then {after:?}", samples.len());
}

/// Acceptance 7: Cloud Map down keeps Envoy's endpoints and shows the source
/// failing with its error; Cloud Map back makes it ok again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_map_down_keeps_envoy_endpoints_and_shows_the_source_failing_until_it_is_back() {
    let Some((mut emulator, admin, service)) = emulator().await else { return };
    let (a, b) = (Backend::start("A").await, Backend::start("B").await);
    register(&service, "A", a.port, None).await;
    register(&service, "B", b.port, None).await;
    let sxds = cloud_map_daemon(&emulator.endpoint_url()).await;
    let port = free_port();
    sxds.put_ok(NODE_TYPE, &cloud_map_bundle("1", port)).await;
    let envoy = Envoy::start(Transport::Ads, sxds.xds_port, "sidecar-cloud-map-down");
    wait_reached(port, &["A", "B"], CONVERGE).await;
    wait_source(&sxds, NODE_TYPE, "ok", CONVERGE).await;

    let traffic = Recorder::start(port);
    let stopped = Instant::now();
    emulator.stop();
    let failing = wait_source(&sxds, NODE_TYPE, "failing", CONVERGE).await;
    let error = failing["error"].as_str().unwrap_or_default().to_owned();
    assert!(!error.is_empty(), "a failing source names its error: {failing}");
    assert_eq!(failing["endpoints"], 2, "the last endpoints found stay: {failing}");
    // A few failed polls (backing off) later, Envoy still has both.
    wait_for("three failed polls in a row", RECONNECT, || async { source_of(&sxds, NODE_TYPE).await["consecutive_failures"].as_u64() >= Some(3) }).await;
    assert_eq!(envoy_hosts(envoy.admin_port, "backend").await, [a.port, b.port].into(), "Envoy's hosts while Cloud Map is down");
    wait_reached(port, &["A", "B"], CONVERGE).await;
    let samples = traffic.stop_all_ok("while Cloud Map was down").await;
    let failing = source_of(&sxds, NODE_TYPE).await;
    eprintln!(
        "Cloud Map down {:?}: {} requests all 200; source {} after {} failures: {error}",
        stopped.elapsed(),
        samples.len(),
        failing["state"],
        failing["consecutive_failures"]
    );

    // Back: the poller's backoff (at most a few seconds here) decides when.
    emulator.restart().await;
    admin.recreate().await;
    // `recreate` registers the instances one by one: a poll may see the
    // first alone, so wait for both rather than for the first success.
    wait_for("the source ok again with both instances", RECONNECT, || async {
        let source = source_of(&sxds, NODE_TYPE).await;
        source["state"] == "ok" && source["endpoints"] == 2
    })
    .await;
    let ok = source_of(&sxds, NODE_TYPE).await;
    assert_eq!((&ok["error"], &ok["consecutive_failures"], &ok["endpoints"]), (&Value::Null, &json!(0), &json!(2)), "{ok}");
    wait_reached(port, &["A", "B"], CONVERGE).await;
}

/// Acceptance 7: a restarted sxds serves the endpoints it stored before its
/// first poll answers, here with Cloud Map down: a fresh Envoy gets them
/// and traffic flows; the source is `stored`, then `failing`. R37 for
/// endpoints: a restarted server never hands out an empty assignment for
/// what it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_sxds_serves_stored_endpoints_to_a_fresh_envoy_while_cloud_map_is_down_r37() {
    let Some((mut emulator, _admin, service)) = emulator().await else { return };
    let (a, b) = (Backend::start("A").await, Backend::start("B").await);
    register(&service, "A", a.port, None).await;
    register(&service, "B", b.port, None).await;
    let mut sxds = cloud_map_daemon(&emulator.endpoint_url()).await;
    let port = free_port();
    sxds.put_ok(NODE_TYPE, &cloud_map_bundle("1", port)).await;
    let learned = wait_source(&sxds, NODE_TYPE, "ok", CONVERGE).await;
    assert_eq!(learned["endpoints"], 2, "{learned}");
    assert!(sxds.terminate(Duration::from_secs(20)).await.success(), "sxds exits cleanly on SIGTERM");

    // Cloud Map down, the slow way: its port accepts and never answers (3 s
    // per attempt), so the first poll after the restart takes seconds to
    // fail and `stored` can be seen. (A refused port fails it in ~0.6 s.)
    emulator.stop();
    let emulator_port = emulator.endpoint_url().rsplit_once(':').and_then(|(_, p)| p.parse().ok()).expect("the emulator's port");
    let _down = Stalling::bind(emulator_port, Duration::from_secs(3)).await;
    sxds.restart().await;
    let first = source_of(&sxds, NODE_TYPE).await;
    assert_eq!((&first["state"], &first["endpoints"], &first["revision"]), (&json!("stored"), &json!(2), &learned["revision"]), "right after the restart: {first}");

    let envoy = Envoy::start(Transport::Ads, sxds.xds_port, "sidecar-cloud-map-stored");
    wait_reached(port, &["A", "B"], CONVERGE).await;
    let traffic = Recorder::start(port);
    let when_reached = source_of(&sxds, NODE_TYPE).await["state"].clone();

    // stored, then failing; never pending or ok.
    let (mut states, deadline) = (vec!["stored".to_owned()], Instant::now() + RECONNECT);
    while states.last().map(String::as_str) != Some("failing") {
        assert!(Instant::now() < deadline, "the source did not fail within {RECONNECT:?} after the restart: {states:?}");
        let state = source_of(&sxds, NODE_TYPE).await["state"].as_str().unwrap_or_default().to_owned();
        if states.last() != Some(&state) {
            states.push(state);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(states, ["stored", "failing"], "the source's states after the restart");
    let failing = source_of(&sxds, NODE_TYPE).await;
    assert!(failing["error"].as_str().is_some_and(|e| !e.is_empty()) && failing["endpoints"] == 2, "{failing}");
    assert_eq!(envoy_hosts(envoy.admin_port, "backend").await, [a.port, b.port].into());
    wait_reached(port, &["A", "B"], CONVERGE).await;
    let samples = traffic.stop_all_ok("from a restarted sxds with Cloud Map down").await;
    eprintln!("restart: source {when_reached} when the fresh Envoy reached A and B; {} requests all 200; error: {}", samples.len(), failing["error"]);
}

/// Acceptance 7: a bad source is a 400 naming the field, and the stored
/// bundle stays as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_endpoint_sources_are_refused_naming_the_field_and_change_nothing() {
    let Some((emulator, _admin, _service)) = emulator().await else { return };
    let sxds = cloud_map_daemon(&emulator.endpoint_url()).await;
    let port = free_port();
    sxds.put_ok(NODE_TYPE, &cloud_map_bundle("1", port)).await;
    let stored = sxds.get_json("/resources/sidecar").await;

    let good = cloud_map_bundle("2", port);
    let mut unknown_cluster = good.clone();
    unknown_cluster["endpoint_sources"][0]["cluster_name"] = "nosuch".into();
    let mut both = good.clone();
    both["endpoints"] = json!([{"cluster_name": "backend", "endpoints": []}]);
    let mut no_port = good.clone();
    no_port["endpoint_sources"][0]["cloud_map"].as_object_mut().unwrap().remove("port_attribute");
    let mut bad_health = good.clone();
    bad_health["endpoint_sources"][0]["cloud_map"]["health"] = "SICK".into();
    let cases = [
        ("unknown cluster", unknown_cluster, "endpoint_sources[0].cluster_name", "nosuch"),
        ("endpoints entry and a source", both, "endpoint_sources[0].cluster_name", "both"),
        ("no port", no_port, "endpoint_sources[0].cloud_map.port", "port"),
        ("bad health", bad_health, "endpoint_sources[0].cloud_map.health", "SICK"),
    ];
    for (case, bundle, path, says) in cases {
        let (status, answer) = sxds.put(NODE_TYPE, &bundle).await;
        assert_eq!((status, answer["path"].as_str()), (400, Some(path)), "{case}: {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(error.contains(says), "{case}: the error should say {says:?}: {answer}");
        assert_eq!(sxds.get_json("/resources/sidecar").await, stored, "{case}: the stored bundle changed");
        eprintln!("{case}: 400 at {path}: {error}");
    }
    sxds.put_ok(NODE_TYPE, &good).await;
}

/// Acceptance 6: zone-aware routing on Cloud Map's AVAILABILITY_ZONE. Envoy's
/// node is in us-east-1a; its local cluster (Envoy's own service, whose
/// membership zone-aware routing weighs against the upstream's) is a static
/// EDS cluster fed over ADS from the same Cloud Map source (the ECS layout:
/// the service calls its own kind). Both zones have two healthy endpoints,
/// so Envoy routes all it can directly to us-east-1a.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_aware_routing_keeps_traffic_in_envoys_zone() {
    let Some((emulator, _admin, service)) = emulator().await else { return };
    let backends = [
        (Backend::start("a1").await, "us-east-1a"),
        (Backend::start("a2").await, "us-east-1a"),
        (Backend::start("b1").await, "us-east-1b"),
        (Backend::start("b2").await, "us-east-1b"),
    ];
    for (i, (backend, zone)) in backends.iter().enumerate() {
        register(&service, &format!("i-{i}"), backend.port, Some(zone)).await;
    }
    let sxds = cloud_map_daemon(&emulator.endpoint_url()).await;
    let port = free_port();
    let mut bundle = cloud_map_bundle("1", port);
    // Envoy's default min_cluster_size is 6 upstream hosts; this test has 4.
    bundle["clusters"][0]["common_lb_config"] = json!({"zone_aware_lb_config": {"min_cluster_size": 2, "routing_enabled": {"value": 100}}});
    sxds.put_ok(NODE_TYPE, &bundle).await;

    let xds_port = sxds.xds_port;
    let envoy = Envoy::start_with_bootstrap("sidecar-cloud-map-zones", |admin_port| zone_aware_bootstrap(xds_port, admin_port));
    let ports: Vec<u16> = backends.iter().map(|(b, _)| b.port).collect();
    wait_envoy_hosts(envoy.admin_port, "backend", &ports, CONVERGE).await;
    wait_envoy_hosts(envoy.admin_port, "local_cluster", &ports, CONVERGE).await;
    wait_for_body(port, "/", "a1", CONVERGE).await;

    let split = requests(port, 200, &["a1", "a2", "b1", "b2"]).await;
    let local: usize = ["a1", "a2"].iter().filter_map(|name| split.get(*name)).sum();
    let stats = envoy.stats().await;
    let zone_stats: BTreeMap<&str, u64> = stats.iter().filter(|(name, _)| name.starts_with("cluster.backend.lb_")).map(|(k, v)| (k.trim_start_matches("cluster.backend."), *v)).collect();
    eprintln!("zone-aware split over 200 requests: {split:?} ({local} to us-east-1a); Envoy: {zone_stats:?}");
    assert!(local * 100 > 200 * 90, "more than 90 % should stay in us-east-1a: {split:?}, Envoy's zone stats {zone_stats:?}");
    assert!(zone_stats.get("lb_zone_routing_all_directly").is_some_and(|n| *n > 0), "Envoy routed by zone: {zone_stats:?}");
}

/// The example ADS bootstrap plus what zone-aware routing needs: the node's
/// locality (region and zone, as Cloud Map's REGION and AVAILABILITY_ZONE
/// make each endpoint's), `cluster_manager.local_cluster_name`, and that
/// local cluster, which must be a static resource of the bootstrap: an EDS
/// cluster over ADS named `local_cluster` asking for the ClusterLoadAssignment
/// `backend` (`service_name`), so the bundle needs nothing for it.
fn zone_aware_bootstrap(xds_port: u16, admin_port: u16) -> String {
    let mut yaml = bootstrap_yaml(Transport::Ads, xds_port, admin_port);
    let last_key = yaml.lines().rev().find(|line| !line.starts_with([' ', '#']) && !line.is_empty());
    assert_eq!(last_key, Some("static_resources:"), "the example's static clusters come last");
    if !yaml.ends_with('\n') {
        yaml.push('\n');
    }
    yaml.push_str(
        "    - name: local_cluster
      type: EDS
      connect_timeout: 1s
      eds_cluster_config:
        service_name: backend
        eds_config: { ads: {}, resource_api_version: V3 }
cluster_manager:
  local_cluster_name: local_cluster
node:
  locality: { region: us-east-1, zone: us-east-1a }
",
    );
    yaml
}

/// A canary rollout whose bundle routes to a cluster of a Cloud Map service the stored bundle
/// does not use: the canary Envoy is sent that service's endpoints with the cluster, so its
/// traffic moves from A to F with no failed request and no EDS fetch timing out (R21, R24), and
/// the rollout promotes once it ACKed. Before, the canary's new cluster had no endpoints until
/// the bundle was stored: it warmed for `initial_fetch_timeout`, then answered 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_rollout_adding_a_cloud_map_service_moves_traffic_without_a_failed_request() {
    let Some((emulator, admin, service)) = emulator().await else { return };
    let (a, f) = (Backend::start("A").await, Backend::start("F").await);
    let fresh = admin.create_service(NAMESPACE, "fresh").await;
    register(&service, "A", a.port, None).await;
    register(&fresh, "F", f.port, None).await;
    let sxds = cloud_map_daemon(&emulator.endpoint_url()).await;
    let port = free_port();
    sxds.put_ok(NODE_TYPE, &cloud_map_bundle("1", port)).await;
    let envoy = Envoy::start(Transport::Ads, sxds.xds_port, "sidecar-canary-1");
    wait_for_body(port, "/", "A", CONVERGE).await;

    let mut v2 = cloud_map_bundle("2", port);
    let eds = json!({"ads": {}, "resource_api_version": "V3"});
    let cluster = json!({"name": "fresh", "type": "EDS", "connect_timeout": "1s", "eds_cluster_config": {"eds_config": eds}});
    v2["clusters"].as_array_mut().expect("clusters").push(cluster);
    let source = json!({"cluster_name": "fresh", "cloud_map": {"namespace": NAMESPACE, "service": "fresh", "port_attribute": PORT, "health": "HEALTHY"}});
    v2["endpoint_sources"].as_array_mut().expect("endpoint_sources").push(source);
    v2["routes"][0]["virtual_hosts"][0]["routes"][0]["route"]["cluster"] = "fresh".into();

    let traffic = Recorder::start(port);
    let url = sxds.url(&format!("/resources/{NODE_TYPE}?canary=sidecar-canary-*&wait=60s"));
    let put = reqwest::Client::new().put(url).json(&v2).send().await.expect("PUT");
    assert_eq!(put.status(), 202, "{:?}", put.text().await);
    wait_for_body(port, "/", "F", CONVERGE).await;
    wait_for("the rollout to be promoted", CONVERGE, || async { sxds.get_json(&format!("/resources/{NODE_TYPE}/rollout")).await["state"] == "promoted" }).await;
    let samples = traffic.stop_all_ok("while the canary rollout moved traffic to the new service").await;
    assert!(samples.iter().any(|s| s.answer.as_deref() == Ok("F")), "traffic reached F");
    let stats = envoy.stats().await;
    let timeouts: Vec<_> = stats.iter().filter(|(name, value)| name.ends_with("init_fetch_timeout") && **value > 0).collect();
    assert!(timeouts.is_empty(), "no EDS fetch timed out: {timeouts:?}");
}
