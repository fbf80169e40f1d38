//! Keeps the load generator working: simulated Envoys (the same `sim.rs`
//! the `loadgen` example runs) take a bundle and updates, over state of the
//! world and delta, and every one of them converges. The fan-out smoke
//! checks what the benchmark's delta figure rests on: one changed endpoint
//! set reaches each delta stream as one EDS response carrying that one
//! resource, and a dropped cluster is removed from what each node holds.
//! The cloud-map smoke runs that scenario's own code (`cloud_map.rs`) on
//! moto with a few sources; it skips when `moto_server` is not installed
//! (outside CI). The other scenarios (idle, ingest, burst, full-push,
//! scale, fanout with status polling, connections from several source
//! addresses) run their own code too, at small sizes, with the flags the
//! load generator parses, against the in-process daemon. No wall-clock
//! bounds are asserted.

mod support;

#[path = "../examples/loadgen/args.rs"]
mod args;
#[path = "../examples/loadgen/bundles.rs"]
mod bundles;
#[path = "../examples/loadgen/burst.rs"]
mod burst;
#[path = "../examples/loadgen/cloud_map.rs"]
mod cloud_map;
#[allow(dead_code)]
#[path = "../examples/loadgen/daemon.rs"]
mod daemon;
#[path = "../examples/loadgen/fanout.rs"]
mod fanout;
#[path = "../examples/loadgen/idle.rs"]
mod idle;
#[path = "../examples/loadgen/ingest.rs"]
mod ingest;
#[path = "../examples/loadgen/poller.rs"]
mod poller;
#[path = "../examples/loadgen/scenario.rs"]
mod scenario;
#[path = "../examples/loadgen/sim.rs"]
mod sim;

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::Path,
    time::{Duration, Instant},
};

use clap::Parser;
use serde_json::Value;

use bundles::Mesh;
use scenario::Ctx;
use sim::{Fleet, FleetConfig, NodeRecord, Protocol, Service, Target, TYPES};
use support::{sidecar_bundle, wait_for, TestDaemon};
use sxds::resource_type::ResourceType;

const STREAMS: usize = 300;
const LIMIT: Duration = Duration::from_secs(60);

fn fleet(daemon: &TestDaemon, node_type: &str, service: Service, protocol: Protocol) -> Fleet {
    // Two sockets per stream in this process: the client's and the daemon's.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    Fleet::new(FleetConfig { xds_url: daemon.xds_url(), node_type: node_type.into(), service, protocol, connect_concurrency: 50, source_addrs: Vec::new() })
        .expect("xDS URL")
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
    let config = FleetConfig {
        xds_url: format!("http://{}", daemon.xds_addr),
        node_type: "cloudmap".into(),
        service: Service::Ads,
        protocol,
        connect_concurrency: 20,
        source_addrs: Vec::new(),
    };
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

/// The in-process daemon and the loadgen's flags for one scenario run.
struct Scenario {
    daemon: TestDaemon,
    attached: daemon::Daemon,
    args: args::Args,
}

impl Scenario {
    /// Starts a daemon for the scenario `flags` name (after `--scenario`,
    /// at the loadgen's command line); short settle times and generous
    /// deadlines, as nothing here is timed.
    async fn start(flags: &[&str]) -> Self {
        let _ = rlimit::increase_nofile_limit(u64::MAX);
        let daemon = TestDaemon::start().await;
        // The daemon runs in this process: its RSS and CPU are this test's.
        let attached = daemon::Daemon::attach(daemon.xds_addr, daemon.rest_addr, std::process::id());
        let fixed = ["loadgen", "--settle", "0.2", "--deadline", "60", "--connect-deadline", "60", "--connect-concurrency", "20"];
        let args = args::Args::parse_from(fixed.iter().chain(flags));
        Self { daemon, attached, args }
    }

    fn fleet(&self) -> Fleet {
        Fleet::new(self.args.fleet_config(self.daemon.xds_addr)).expect("xDS URL")
    }

    fn ctx(&self) -> Ctx<'_> {
        Ctx::new(&self.args, &self.attached, None).expect("HTTP client")
    }

    async fn stop(self, fleet: Fleet) {
        fleet.shutdown().await;
        self.daemon.stop().await.expect("daemon stops cleanly");
    }
}

/// Every node connected once, and ACKed every response it took.
fn all_acked(records: &[NodeRecord]) {
    for (i, record) in records.iter().enumerate() {
        assert_eq!(record.connects, 1, "node {i} reconnected: {:?}", record.last_error);
        for ty in TYPES {
            let seen = &record.types[ty];
            assert_eq!(seen.acks, seen.responses, "node {i} left a {ty} response unACKed");
        }
    }
}

/// The daemon's connections by client address, as a scenario reported them.
fn clients(connections: &Value) -> BTreeMap<String, u64> {
    connections["clients"].as_object().expect("clients").iter().map(|(ip, n)| (ip.clone(), n.as_u64().unwrap_or(0))).collect()
}

fn counted(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(ip, n)| ((*ip).to_owned(), *n)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_scenario_connects_each_level_and_samples_rss_per_stream() {
    let run = Scenario::start(&["--scenario", "idle", "--streams", "30,10", "--clusters", "10"]).await;
    let mut fleet = run.fleet();
    let summary = idle::idle(&mut run.ctx(), &mut fleet).await.expect("idle runs");
    let levels = summary["levels"].as_array().expect("levels");
    assert_eq!(levels.iter().map(|l| l["streams"].as_u64()).collect::<Vec<_>>(), [Some(10), Some(30)], "levels in order");
    for level in levels {
        assert!(level["bytes_per_stream"].as_f64().is_some(), "{level}");
        // The daemon's side of the sockets, from the kernel: all from 127.0.0.1.
        assert_eq!(clients(&level["connections"]), counted(&[("127.0.0.1", level["streams"].as_u64().unwrap())]));
    }
    let records = fleet.records();
    assert_eq!(records.len(), 30);
    for (i, record) in records.iter().enumerate() {
        for ty in TYPES {
            assert_eq!(record.types[ty].last_version(), Some("v0"), "node {i}'s {ty}");
        }
        assert_eq!(record.types[ResourceType::Cluster].held, Some(10), "node {i}");
    }
    all_acked(&records);
    run.stop(fleet).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_addresses_spread_the_connections_over_local_addresses() {
    let flags = ["--scenario", "idle", "--streams", "20", "--clusters", "5", "--source-addrs", "127.0.0.1,127.0.0.2"];
    let run = Scenario::start(&flags).await;
    let mut fleet = run.fleet();
    let summary = idle::idle(&mut run.ctx(), &mut fleet).await.expect("idle runs");
    // What the daemon accepted, by the client's address (/proc/net/tcp).
    assert_eq!(clients(&summary["levels"][0]["connections"]), counted(&[("127.0.0.1", 10), ("127.0.0.2", 10)]));
    let accepted = run.attached.clients().expect("/proc/net/tcp");
    let expected: BTreeMap<IpAddr, usize> = [([127, 0, 0, 1], 10), ([127, 0, 0, 2], 10)].into_iter().map(|(ip, n)| (IpAddr::from(ip), n)).collect();
    assert_eq!(accepted, expected);
    let records = fleet.records();
    for (i, record) in records.iter().enumerate() {
        let source: IpAddr = if i % 2 == 0 { [127, 0, 0, 1].into() } else { [127, 0, 0, 2].into() };
        assert_eq!(record.source, Some(source), "node {i}");
        assert_eq!(record.types[ResourceType::Endpoint].last_version(), Some("v0"), "node {i}");
    }
    all_acked(&records);
    run.stop(fleet).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_scenario_brings_every_stream_the_big_bundle() {
    let flags = ["--scenario", "ingest", "--streams", "10", "--ingest-clusters", "200", "--ingest-endpoints-per-cluster", "2"];
    let run = Scenario::start(&flags).await;
    let mut fleet = run.fleet();
    let summary = ingest::ingest(&mut run.ctx(), &mut fleet).await.expect("ingest runs");
    assert_eq!(summary["clusters"], 200);
    assert!(summary["body_bytes"].as_u64().unwrap_or(0) > 0, "{summary}");
    assert_eq!(summary["update"]["never"], 0, "{summary}");
    assert_eq!(summary["update"]["converged"], 10, "{summary}");
    let records = fleet.records();
    for (i, record) in records.iter().enumerate() {
        let clusters = &record.types[ResourceType::Cluster];
        assert_eq!((clusters.last_version(), clusters.held), (Some("v1"), Some(200)), "node {i}'s clusters");
        assert_eq!(record.types[ResourceType::Endpoint].last_version(), Some("v1"), "node {i}'s endpoints");
    }
    all_acked(&records);
    run.stop(fleet).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_scenario_ends_every_stream_on_the_last_put() {
    let flags = ["--scenario", "burst", "--streams", "20", "--clusters", "10", "--burst-puts", "5", "--burst-window-ms", "200", "--burst-rounds", "2"];
    let run = Scenario::start(&flags).await;
    let mut fleet = run.fleet();
    let summary = burst::burst(&mut run.ctx(), &mut fleet).await.expect("burst runs");
    let rounds = summary["rounds"].as_array().expect("rounds");
    assert_eq!(rounds.len(), 2);
    for round in rounds {
        assert_eq!(round["failed_puts"], 0, "{round}");
        assert_eq!(round["ended_on_last"], 20, "{round}");
        assert_eq!(round["never"], 0, "{round}");
        assert_eq!(round["unacked_responses"], 0, "{round}");
        // Coalesced: never more EDS responses than PUTs.
        assert_eq!(round["more_than_puts"], 0, "{round}");
        assert!(round["eds_responses_per_stream_max"].as_u64().is_some_and(|n| (1..=5).contains(&n)), "{round}");
    }
    let last = rounds[1]["last_version"].as_str().expect("last version").to_owned();
    assert!(last.starts_with("r2-"), "{last}");
    let records = fleet.records();
    for (i, record) in records.iter().enumerate() {
        assert_eq!(record.types[ResourceType::Endpoint].last_version(), Some(last.as_str()), "node {i}");
    }
    all_acked(&records);
    run.stop(fleet).await;
}

/// Each full push changes all ten clusters and the listener: every stream
/// takes exactly one CDS and one LDS response of the new version, carrying
/// every cluster (on delta too: all changed), ACKs them, and one EDS and
/// one RDS response for the warming clusters and listener: asked again on
/// SotW, as Envoy does; sent unasked on delta, where Envoy asks nothing.
async fn full_push(protocol: &str) {
    let flags = ["--scenario", "full-push", "--streams", "20", "--updates", "2", "--clusters", "10", "--protocol", protocol];
    let run = Scenario::start(&flags).await;
    let mut fleet = run.fleet();
    let summary = fanout::full_push(&mut run.ctx(), &mut fleet).await.expect("full-push runs");
    let updates = summary["updates"].as_array().expect("updates");
    assert_eq!(updates.len(), 2);
    for update in updates {
        assert_eq!((update["converged"].as_u64(), update["never"].as_u64()), (Some(20), Some(0)), "{update}");
        let received = &update["received"];
        for ty in ["clusters", "listeners", "endpoints", "routes"] {
            let r = &received[ty];
            assert_eq!(r["streams"], 20, "{ty}: {r}");
            assert_eq!((r["responses_per_stream_mean"].as_f64(), r["responses_per_stream_max"].as_u64()), (Some(1.0), Some(1)), "{ty}: {r}");
        }
        assert_eq!(received["clusters"]["resources_per_response_max"], 10, "{received}");
        assert_eq!(received["clusters"]["resources_per_response_mean"], 10.0, "{received}");
    }
    let records = fleet.records();
    for (i, record) in records.iter().enumerate() {
        for ty in [ResourceType::Cluster, ResourceType::Listener] {
            let versions: Vec<&str> = record.types[ty].versions.iter().map(|(v, _)| v.as_str()).collect();
            assert_eq!(versions, ["v0", "v1", "v2"], "node {i}'s {ty}");
            assert_eq!(record.types[ty].responses, 3, "node {i}'s {ty}: one response per version");
        }
    }
    all_acked(&records);
    run.stop(fleet).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_push_sends_every_stream_one_new_cds_and_lds() {
    full_push("sotw").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_push_on_delta_sends_every_stream_one_new_cds_and_lds() {
    full_push("delta").await;
}

/// Two levels on one daemon: the second level's new streams take the
/// version the first level's updates left, and every update reaches every
/// stream of its level as one EDS response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_scenario_runs_updates_at_each_level_on_one_daemon() {
    let flags = ["--scenario", "scale", "--streams", "10,20", "--updates", "2", "--clusters", "10", "--source-addrs", "127.0.0.1,127.0.0.2"];
    let run = Scenario::start(&flags).await;
    let mut fleet = run.fleet();
    let summary = fanout::scale(&mut run.ctx(), &mut fleet).await.expect("scale runs");
    let levels = summary["levels"].as_array().expect("levels");
    assert_eq!(levels.len(), 2);
    for (level, (streams, versions)) in levels.iter().zip([(10, ["v1", "v2"]), (20, ["v3", "v4"])]) {
        assert_eq!(level["streams"], streams);
        assert!(level["bytes_per_stream"].as_f64().is_some(), "{level}");
        let half = streams / 2;
        assert_eq!(clients(&level["connections"]), counted(&[("127.0.0.1", half), ("127.0.0.2", half)]));
        let updates = level["updates"].as_array().expect("updates");
        assert_eq!(updates.iter().map(|u| u["version"].as_str()).collect::<Vec<_>>(), versions.map(Some));
        for update in updates {
            assert_eq!((update["converged"].as_u64(), update["never"].as_u64()), (Some(streams), Some(0)), "{update}");
            let eds = &update["eds_responses"];
            assert_eq!((eds["streams"].as_u64(), eds["responses_per_stream_max"].as_u64()), (Some(streams), Some(1)), "{eds}");
            assert_eq!(update["received"]["clusters"]["streams"], 0, "only EDS changes: {update}");
        }
    }
    let records = fleet.records();
    assert_eq!(records.len(), 20);
    for (i, record) in records.iter().enumerate() {
        assert_eq!(record.types[ResourceType::Endpoint].last_version(), Some("v4"), "node {i}");
    }
    all_acked(&records);
    run.stop(fleet).await;
}

/// With `--poll-status-ms`, fanout reads GET /nodes and GET /metrics
/// during the updates, every read answered, and reports it; the updates
/// still reach every stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_with_status_polling_reads_nodes_and_metrics_during_the_updates() {
    let flags = ["--scenario", "fanout", "--streams", "20", "--updates", "2", "--clusters", "10", "--poll-status-ms", "20"];
    let run = Scenario::start(&flags).await;
    let mut fleet = run.fleet();
    let summary = fanout::fanout(&mut run.ctx(), &mut fleet).await.expect("fanout runs");
    let polled = &summary["status_reads"];
    let rounds = polled["polls"].as_u64().expect("polls");
    assert!(rounds >= 1, "{polled}");
    for path in ["/nodes", "/metrics"] {
        let reads = &polled[path];
        assert_eq!(reads["failed"], 0, "{path}: {reads}");
        assert_eq!(reads["reads"].as_u64(), Some(rounds), "{path}: one read a round: {reads}");
        assert!(reads["last_bytes"].as_u64().unwrap_or(0) > 0, "{path}: {reads}");
        assert!(reads["p50_ms"].as_f64().is_some() && reads["max_ms"].as_f64().is_some(), "{path}: {reads}");
    }
    for update in summary["updates"].as_array().expect("updates") {
        assert_eq!((update["converged"].as_u64(), update["never"].as_u64()), (Some(20), Some(0)), "{update}");
    }
    all_acked(&fleet.records());
    run.stop(fleet).await;
}

