//! Keeps the load generator working: a few hundred simulated Envoys (the
//! same `sim.rs` the `loadgen` example runs) take a bundle and one update,
//! and every one of them converges.

mod support;


/// The types a simulated Envoy subscribes to.
const SIMULATED: [ResourceType; 4] = [ResourceType::Cluster, ResourceType::Endpoint, ResourceType::Listener, ResourceType::Route];

#[path = "../examples/loadgen/sim.rs"]
mod sim;

use std::time::{Duration, Instant};

use sim::{Fleet, FleetConfig, Service, Target};
use support::{sidecar_bundle, TestDaemon};
use sxds::resource_type::ResourceType;

const STREAMS: usize = 300;

async fn smoke(service: Service, streams: usize) {
    // Two sockets per stream in this process: the client's and the daemon's.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let daemon = TestDaemon::start().await;
    let (status, body) = daemon.put("smoke", sidecar_bundle("v1", 10000, 8080).to_string()).await;
    assert_eq!(status, 200, "{body}");

    let mut fleet = Fleet::new(FleetConfig {
        xds_url: daemon.xds_url(),
        node_type: "smoke".into(),
        service,
        connect_concurrency: 50,
    })
    .expect("xDS URL");
    let since = Instant::now();
    fleet.add(streams);
    let initial = Target { version: "v1".into(), types: SIMULATED.to_vec(), since };
    let result = fleet.wait(&initial, Duration::from_secs(60)).await;
    assert_eq!(result.never, 0, "{} of {streams} nodes never got the whole v1 config", result.never);

    // One update: the backend's endpoint moves. Only EDS changes.
    let since = Instant::now();
    let (status, body) = daemon.put("smoke", sidecar_bundle("v2", 10000, 8081).to_string()).await;
    assert_eq!(status, 200, "{body}");
    let update = Target { version: "v2".into(), types: vec![ResourceType::Endpoint], since };
    let result = fleet.wait(&update, Duration::from_secs(60)).await;
    assert_eq!(result.never, 0, "{} of {streams} nodes never got v2", result.never);
    assert_eq!(result.converged(), streams);
    assert!(result.percentile(99.0) <= result.max());

    for (i, record) in fleet.records().iter().enumerate() {
        assert_eq!(record.connects, 1, "node {i} reconnected: {:?}", record.last_error);
        for ty in SIMULATED {
            let seen = &record.types[ty.index()];
            assert_eq!(seen.acks, seen.responses, "node {i} left a {ty} response unACKed");
        }
        // The route did not change, so RDS was not sent again (R8).
        assert_eq!(record.types[ResourceType::Route.index()].last_version(), Some("v1"), "node {i}");
        assert_eq!(record.types[ResourceType::Endpoint.index()].last_version(), Some("v2"), "node {i}");
    }
    fleet.shutdown().await;
    daemon.stop().await.expect("daemon stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_simulated_envoys_on_ads_all_converge() {
    smoke(Service::Ads, STREAMS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_envoys_on_the_separate_services_converge_too() {
    smoke(Service::Separate, 50).await;
}
