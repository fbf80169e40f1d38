//! Keeps the load generator working: simulated Envoys (the same `sim.rs`
//! the `loadgen` example runs) take a bundle and updates, over state of the
//! world and delta, and every one of them converges. The fan-out smoke
//! checks what the benchmark's delta figure rests on: one changed endpoint
//! set reaches each delta stream as one EDS response carrying that one
//! resource, and a dropped cluster is removed from what each node holds.
//! The cloud-map smoke runs that scenario's own code (`cloud_map.rs`) on
//! moto with a few sources; it skips when `moto_server` is not installed
//! (outside CI). No wall-clock bounds are asserted.

mod support;

#[path = "../examples/loadgen/bundles.rs"]
mod bundles;
#[path = "../examples/loadgen/cloud_map.rs"]
mod cloud_map;
#[allow(dead_code)]
#[path = "../examples/loadgen/daemon.rs"]
mod daemon;
#[path = "../examples/loadgen/sim.rs"]
mod sim;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use bundles::Mesh;
use sim::{Fleet, FleetConfig, Protocol, Service, Target, TYPES};
use support::{sidecar_bundle, wait_for, TestDaemon};
use sxds::resource_type::ResourceType;

const STREAMS: usize = 300;
const LIMIT: Duration = Duration::from_secs(60);

fn fleet(daemon: &TestDaemon, node_type: &str, service: Service, protocol: Protocol) -> Fleet {
    // Two sockets per stream in this process: the client's and the daemon's.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    Fleet::new(FleetConfig { xds_url: daemon.xds_url(), node_type: node_type.into(), service, protocol, connect_concurrency: 50 }).expect("xDS URL")
}

/// Connects `streams` nodes and waits until each holds `version` of every type.
async fn connect(fleet: &mut Fleet, streams: usize, version: &str) {
    let since = Instant::now();
    fleet.add(streams);
    let initial = Target { version: version.into(), types: TYPES.to_vec(), since };
    let result = fleet.wait(&initial, LIMIT).await;
    assert_eq!(result.never, 0, "{} of {streams} nodes never got the whole {version} config", result.never);
}

async fn smoke(service: Service, protocol: Protocol, streams: usize) {
    let daemon = TestDaemon::start().await;
    let (status, body) = daemon.put("smoke", sidecar_bundle("v1", 10000, 8080).to_string()).await;
    assert_eq!(status, 200, "{body}");
    let mut fleet = fleet(&daemon, "smoke", service, protocol);
    connect(&mut fleet, streams, "v1").await;

    // One update: the backend's endpoint moves. Only EDS changes.
    let since = Instant::now();
    let (status, body) = daemon.put("smoke", sidecar_bundle("v2", 10000, 8081).to_string()).await;
    assert_eq!(status, 200, "{body}");
    let update = Target { version: "v2".into(), types: vec![ResourceType::Endpoint], since };
    let result = fleet.wait(&update, LIMIT).await;
    assert_eq!(result.never, 0, "{} of {streams} nodes never got v2", result.never);
    assert_eq!(result.converged(), streams);
    assert!(result.percentile(99.0) <= result.max());

    for (i, record) in fleet.records().iter().enumerate() {
        assert_eq!(record.connects, 1, "node {i} reconnected: {:?}", record.last_error);
        for ty in TYPES {
            let seen = &record.types[ty];
            assert_eq!(seen.acks, seen.responses, "node {i} left a {ty} response unACKed");
            let held = match (protocol, ty.is_full_state()) {
                (Protocol::StateOfTheWorld, false) => None,
                _ => Some(1),
            };
            assert_eq!(seen.held, held, "node {i}'s {ty}");
        }
        // The route did not change, so RDS was not sent again (R8).
        assert_eq!(record.types[ResourceType::Route].last_version(), Some("v1"), "node {i}");
        assert_eq!(record.types[ResourceType::Endpoint].last_version(), Some("v2"), "node {i}");
    }
    fleet.shutdown().await;
    daemon.stop().await.expect("daemon stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_simulated_envoys_on_ads_all_converge() {
    smoke(Service::Ads, Protocol::StateOfTheWorld, STREAMS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_envoys_on_the_separate_services_converge_too() {
    smoke(Service::Separate, Protocol::StateOfTheWorld, 50).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_simulated_envoys_on_delta_ads_all_converge() {
    smoke(Service::Ads, Protocol::Delta, STREAMS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_envoys_on_the_separate_delta_services_converge_too() {
    smoke(Service::Separate, Protocol::Delta, 50).await;
}

const CLUSTERS: usize = 10;
const FANOUT_STREAMS: usize = 20;

/// The fan-out scenario in small: two updates each change one endpoint set
/// of ten; then a cluster is dropped. Each update must reach every node as
/// exactly one EDS response carrying the one changed resource, and nothing
/// else; after the drop, every node holds the nine clusters left.
async fn fanout(protocol: Protocol) {
    let daemon = TestDaemon::start().await;
    let mut mesh = Mesh::new(CLUSTERS, 2, CLUSTERS);
    let (status, body) = daemon.put("mesh", mesh.bundle("v0").to_string()).await;
    assert_eq!(status, 200, "{body}");
    let mut fleet = fleet(&daemon, "mesh", Service::Ads, protocol);
    connect(&mut fleet, FANOUT_STREAMS, "v0").await;

    for u in 1..=2 {
        mesh.change_endpoints(u * 3);
        let version = format!("v{u}");
        let marks: Vec<Vec<usize>> = TYPES.iter().map(|&ty| fleet.marks(ty)).collect();
        let since = Instant::now();
        let (status, body) = daemon.put("mesh", mesh.bundle(&version).to_string()).await;
        assert_eq!(status, 200, "{body}");
        let target = Target { version: version.clone(), types: vec![ResourceType::Endpoint], since };
        let result = fleet.wait(&target, LIMIT).await;
        assert_eq!(result.never, 0, "{} of {FANOUT_STREAMS} nodes never got {version}", result.never);
        for (ty, marks) in TYPES.into_iter().zip(&marks) {
            let expected: Vec<u32> = if ty == ResourceType::Endpoint { vec![1] } else { Vec::new() };
            for (i, sizes) in fleet.sizes_since(ty, marks).iter().enumerate() {
                assert_eq!(*sizes, expected, "{version}: node {i}'s {ty} responses (resources in each)");
            }
        }
    }

    // The last cluster goes: the route to it changes too.
    let since = Instant::now();
    let (status, body) = daemon.put("mesh", Mesh::new(CLUSTERS - 1, 2, CLUSTERS - 1).bundle("v3").to_string()).await;
    assert_eq!(status, 200, "{body}");
    let target = Target { version: "v3".into(), types: vec![ResourceType::Cluster, ResourceType::Route], since };
    let result = fleet.wait(&target, LIMIT).await;
    assert_eq!(result.never, 0, "{} of {FANOUT_STREAMS} nodes never got v3", result.never);
    let nodes = &fleet;
    // What a node on the state of the world holds of EDS is not known to it.
    let endpoints = (protocol == Protocol::Delta).then_some(CLUSTERS - 1);
    let holds_the_rest = move || async move {
        let records = nodes.records();
        records.iter().all(|r| r.types[ResourceType::Cluster].held == Some(CLUSTERS - 1) && r.types[ResourceType::Endpoint].held == endpoints)
    };
    wait_for("every node to hold 9 clusters and (on delta) 9 endpoint sets", LIMIT, holds_the_rest).await;

    for (i, record) in fleet.records().iter().enumerate() {
        assert_eq!(record.connects, 1, "node {i} reconnected: {:?}", record.last_error);
        for ty in TYPES {
            let seen = &record.types[ty];
            assert_eq!(seen.acks, seen.responses, "node {i} left a {ty} response unACKed");
        }
    }
    fleet.shutdown().await;
    daemon.stop().await.expect("daemon stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_fanout_sends_each_stream_only_the_changed_endpoint_set() {
    fanout(Protocol::Delta).await;
}

/// EDS is a named type: a state-of-the-world response may be partial
/// (R19), and sxds sends only the changed set there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_of_the_world_fanout_sends_only_the_changed_endpoint_set_too() {
    fanout(Protocol::StateOfTheWorld).await;
}

const SOURCES: usize = 4;
const INSTANCES: usize = 3;
const CLOUD_MAP_STREAMS: usize = 20;
const CLOUD_MAP_UPDATES: usize = 2;

/// The cloud-map scenario in small, on moto, against the sxds binary: every
/// stream takes every source's endpoints, the steady state counts revision
/// calls and no failures, and each new instance reaches every stream as one
/// EDS response carrying that one cluster, under the version whose
/// revision sum counts it.
async fn cloud_map_scenario(protocol: Protocol) {
    let Some(emulator) = support::cloud_map::Emulator::start().await else { return };
    let polling = cloud_map::Polling { interval: Duration::from_secs(1), refresh: Duration::from_secs(30) };
    let binary = Path::new(env!("CARGO_BIN_EXE_sxds"));
    let daemon = daemon::Daemon::start_with(binary, &polling.daemon_args(&emulator.endpoint_url()), &cloud_map::DAEMON_ENV).await.expect("the daemon starts");
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let config = FleetConfig { xds_url: format!("http://{}", daemon.xds_addr), node_type: "cloudmap".into(), service: Service::Ads, protocol, connect_concurrency: 20 };
    let mut fleet = Fleet::new(config).expect("xDS URL");
    let params = cloud_map::Params {
        node_type: "cloudmap".into(),
        sources: SOURCES,
        instances: INSTANCES,
        streams: CLOUD_MAP_STREAMS,
        polling,
        steady: Duration::from_secs(3),
        updates: CLOUD_MAP_UPDATES,
        settle: Duration::from_millis(300),
        connect_deadline: LIMIT,
        deadline: Duration::from_secs(20),
    };
    let outcome = cloud_map::run(&params, &emulator.endpoint_url(), &daemon, &mut fleet).await.expect("the scenario runs");

    // moto's revision counts one per registration: the sum names what is served.
    let registered = SOURCES * INSTANCES;
    assert_eq!(outcome.registered, registered);
    assert!(outcome.eds_version.starts_with(&format!("v0+cloudmap.{registered}.")), "{}", outcome.eds_version);
    let steady = &outcome.steady;
    assert!(steady.ok_per_minute(cloud_map::REVISION) > 0.0, "no revision calls counted: {steady:?}");
    assert_eq!(steady.failed_per_minute(), 0.0, "{steady:?}");

    assert_eq!(outcome.updates.len(), CLOUD_MAP_UPDATES);
    let clusters: std::collections::BTreeSet<&str> = outcome.updates.iter().map(|u| u.cluster.as_str()).collect();
    assert_eq!(clusters.len(), CLOUD_MAP_UPDATES, "each update changes another service");
    for (u, update) in outcome.updates.iter().enumerate() {
        let version = update.version.as_deref().unwrap_or_else(|| panic!("no stream got update {u}: {update:?}"));
        assert!(version.starts_with(&format!("v0+cloudmap.{}.", registered + u + 1)), "update {u}: {version}");
        assert_eq!(update.endpoints, INSTANCES + 1, "update {u}");
        assert_eq!(update.result.never, 0, "update {u}: {} streams never got {version}", update.result.never);
        assert_eq!(update.result.converged(), CLOUD_MAP_STREAMS);
        for (i, sizes) in update.eds_sizes.iter().enumerate() {
            assert_eq!(*sizes, vec![1], "update {u}: node {i}'s EDS responses (resources in each)");
        }
    }
    for (i, record) in fleet.records().iter().enumerate() {
        assert_eq!(record.connects, 1, "node {i} reconnected: {:?}", record.last_error);
        let eds = &record.types[ResourceType::Endpoint];
        assert_eq!(eds.acks, eds.responses, "node {i} left an EDS response unACKed");
    }
    fleet.shutdown().await;
    daemon.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_map_scenario_times_each_new_instance_on_every_stream() {
    cloud_map_scenario(Protocol::StateOfTheWorld).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_map_scenario_runs_on_delta_too() {
    cloud_map_scenario(Protocol::Delta).await;
}
