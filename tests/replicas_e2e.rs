//! Issue #8 point 7 end to end: one real etcd, three `sxds` binaries on it
//! (`--store etcd://...`) and one real Envoy whose `xds_cluster` lists all
//! three. During a storm of PUTs spread over the replicas, the replica that
//! carries Envoy's ADS stream is killed with SIGKILL and etcd is stopped and
//! started again. Envoy must move to a surviving replica and keep its
//! config, traffic through it must never fail, and at the end every PUT
//! answered 200 is stored, the last one served by every survivor and ACKed
//! by Envoy.
//!
//! Needs `envoy` on PATH and Debian's `etcd-server` (the README test command
//! installs both).
#![cfg(feature = "etcd")]

mod support;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use support::{
    envoy::{example_bundle, replicas_bootstrap_yaml, wait_for_body, Backend, Daemon, Envoy, Traffic, Transport, CONVERGE, RECONNECT},
    etcd::Etcd,
    wait_for,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const NODE: &str = "sidecar-failover";
const ALL_TYPES: [&str; 4] = ["clusters", "endpoints", "listeners", "routes"];
/// What every storm PUT changes: the cluster's metadata and its endpoint's weight.
const STORM_TYPES: [&str; 2] = ["clusters", "endpoints"];
const STORM: usize = 60;
/// Before this PUT the replica carrying Envoy's stream is killed.
const KILL_AT: usize = 20;
/// Before this PUT etcd is killed; it comes back after `ETCD_DOWN_PUTS` PUTs.
const ETCD_DOWN_AT: usize = 35;
const ETCD_DOWN_PUTS: usize = 4;

fn version(i: usize) -> String {
    format!("storm-{i:02}")
}

/// The position of a version in the run: `v1` first, then the storm's.
fn rank(version: &str) -> Option<usize> {
    match version {
        "v1" => Some(0),
        other => other.strip_prefix("storm-")?.parse().ok(),
    }
}

/// The shipped example bundle; PUT `i` of the storm stamps the cluster's
/// metadata and the endpoint's weight with it, so traffic keeps its route.
fn bundle(i: usize, listener_port: u16, backend_port: u16) -> Value {
    if i == 0 {
        return example_bundle("sidecar.json", "v1", listener_port, backend_port);
    }
    let mut bundle = example_bundle("sidecar.json", &version(i), listener_port, backend_port);
    bundle["clusters"][0]["metadata"] = json!({"filter_metadata": {"sxds.test": {"put": i}}});
    bundle["endpoints"][0]["endpoints"][0]["lb_endpoints"][0]["load_balancing_weight"] = (1 + i % 7).into();
    bundle
}

fn http() -> reqwest::Client {
    // Longer than the store's own etcd timeouts: a PUT while etcd is away
    // must be answered (503), not given up on by the client.
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build().expect("HTTP client")
}

/// PUT of `bundle` on `replica`: its status, or the transport error.
async fn put(http: &reqwest::Client, replica: &Daemon, bundle: &Value) -> Result<(u16, Value), String> {
    let response = http.put(replica.url("/resources/sidecar")).json(bundle).send().await.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
}

/// How many xDS streams of [`NODE`] `GET /nodes` at `url` lists; `None`
/// when the replica does not answer.
async fn streams_at(http: &reqwest::Client, url: &str) -> Option<usize> {
    let nodes: Value = http.get(url).send().await.ok()?.json().await.ok()?;
    Some(nodes["streams"].as_array()?.iter().filter(|s| s["node_id"] == NODE).count())
}

/// What Envoy's `/config_dump` shows of the state it accepted.
#[derive(Debug)]
struct Accepted {
    active_listeners: Vec<String>,
    active_clusters: Vec<String>,
    listener_version: Option<String>,
    cluster_version: Option<String>,
}

fn accepted(dump: &Value) -> Accepted {
    let configs = dump["configs"].as_array().cloned().unwrap_or_default();
    let listeners: Vec<&Value> = configs.iter().filter_map(|c| c["dynamic_listeners"].as_array()).flatten().filter(|l| l.get("active_state").is_some()).collect();
    let clusters: Vec<&Value> = configs.iter().filter_map(|c| c["dynamic_active_clusters"].as_array()).flatten().collect();
    let names = |items: &[&Value], name: fn(&Value) -> &Value| items.iter().filter_map(|i| name(i).as_str().map(str::to_owned)).collect();
    Accepted {
        active_listeners: names(&listeners, |l| &l["name"]),
        active_clusters: names(&clusters, |c| &c["cluster"]["name"]),
        listener_version: listeners.first().and_then(|l| l["active_state"]["version_info"].as_str()).map(str::to_owned),
        cluster_version: clusters.first().and_then(|c| c["version_info"].as_str()).map(str::to_owned),
    }
}

/// Samples Envoy's accepted state all along: its listener and cluster stay
/// active (never an empty config) and their versions never go backwards.
struct Monitor {
    stop: CancellationToken,
    task: JoinHandle<(usize, Vec<String>, Vec<String>)>,
}

impl Monitor {
    fn start(envoy: Arc<Envoy>) -> Self {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let (mut samples, mut problems, mut seen) = (0, Vec::new(), Vec::<String>::new());
            let (mut listener_rank, mut cluster_rank) = (0, 0);
            // Samples once more after the stop, so the last sample is the
            // state at the stop.
            loop {
                let now = accepted(&envoy.config_dump().await);
                samples += 1;
                if now.active_listeners != ["listener_0"] || now.active_clusters != ["backend"] {
                    problems.push(format!("Envoy lost its config: {now:?}"));
                }
                for (version, last) in [(&now.listener_version, &mut listener_rank), (&now.cluster_version, &mut cluster_rank)] {
                    match version.as_deref().map(|v| (v, rank(v))) {
                        Some((_, Some(r))) if r >= *last => *last = r,
                        Some((v, Some(_))) => problems.push(format!("version went backwards to {v}: {now:?}")),
                        other => problems.push(format!("unexpected version {other:?}: {now:?}")),
                    }
                }
                if let Some(v) = now.cluster_version.filter(|v| seen.last() != Some(v)) {
                    seen.push(v);
                }
                if token.is_cancelled() {
                    break;
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                    () = token.cancelled() => {}
                }
            }
            (samples, problems, seen)
        });
        Self { stop, task }
    }

    /// Stops; answers the cluster versions Envoy went through, in order,
    /// the last one sampled after the stop.
    async fn assert_clean(self) -> Vec<String> {
        self.stop.cancel();
        let (samples, problems, seen) = self.task.await.expect("monitor task");
        assert!(problems.is_empty(), "{} of {samples} samples of Envoy's config were wrong: {problems:?}", problems.len());
        assert!(samples > 10, "only {samples} samples of Envoy's config");
        seen
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_moves_to_a_live_replica_on_kill_9_during_a_put_storm_and_etcd_restart_losing_nothing() {
    let Some(mut etcd) = Etcd::start().await else { return };
    let store = format!("etcd://{}", etcd.endpoint());
    let flags = ["--store", store.as_str(), "--history", "100"];
    let mut replicas = vec![Daemon::start_with_args(&flags).await, Daemon::start_with_args(&flags).await, Daemon::start_with_args(&flags).await];
    let backend = Backend::start("backend-A").await;
    let port = support::envoy::free_port();
    let http = http();

    replicas[0].put_ok("sidecar", &bundle(0, port, backend.port)).await;
    let xds_ports: Vec<u16> = replicas.iter().map(|r| r.xds_port).collect();
    let envoy = Arc::new(Envoy::start_with_bootstrap(NODE, |admin| replicas_bootstrap_yaml(Transport::Ads, &xds_ports, admin)));
    wait_for_body(port, "/", "backend-A", CONVERGE).await;

    // Which replica carries Envoy's one ADS stream.
    let deadline = tokio::time::Instant::now() + CONVERGE;
    let carrier = loop {
        let mut counts = Vec::new();
        for replica in &replicas {
            counts.push(streams_at(&http, &replica.url("/nodes")).await.unwrap_or(0));
        }
        if counts.iter().sum::<usize>() == 1 {
            break counts.iter().position(|&n| n == 1).expect("the carrier");
        }
        assert!(tokio::time::Instant::now() < deadline, "no single replica lists Envoy's stream: {counts:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    replicas[carrier].wait_acked(NODE, &ALL_TYPES, "v1", CONVERGE).await;
    eprintln!("Envoy's stream is on replica {carrier}");

    let traffic = Traffic::start(port, "/", &["backend-A"]);
    let monitor = Monitor::start(envoy.clone());
    let (mut answered, mut refused) = (vec!["v1".to_owned()], Vec::new());
    let mut alive: Vec<usize> = (0..replicas.len()).collect();
    let mut reconnect: Option<JoinHandle<Option<Duration>>> = None;
    for i in 1..=STORM {
        if i == KILL_AT {
            replicas[carrier].kill9();
            alive.retain(|&r| r != carrier);
            // Times the move to a survivor while the storm goes on.
            let (http, urls) = (http.clone(), alive.iter().map(|&r| replicas[r].url("/nodes")).collect::<Vec<_>>());
            let killed = Instant::now();
            reconnect = Some(tokio::spawn(async move {
                while killed.elapsed() < RECONNECT {
                    for url in &urls {
                        if streams_at(&http, url).await.unwrap_or(0) > 0 {
                            return Some(killed.elapsed());
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                None
            }));
        }
        if i == ETCD_DOWN_AT {
            etcd.kill();
        }
        if i == ETCD_DOWN_AT + ETCD_DOWN_PUTS {
            etcd.resume().await;
        }
        let etcd_down = (ETCD_DOWN_AT..ETCD_DOWN_AT + ETCD_DOWN_PUTS).contains(&i);
        let target = &replicas[alive[i % alive.len()]];
        let body = bundle(i, port, backend.port);
        if etcd_down {
            // Not answered: refused whole, never half-written.
            let (status, answer) = put(&http, target, &body).await.unwrap_or_else(|e| panic!("PUT {i} while etcd is down: {e}"));
            assert_eq!(status, 503, "PUT {i} while etcd is down: {answer}");
            refused.push(version(i));
            continue;
        }
        // etcd up: a 503 (e.g. the client still reconnecting to etcd) is retried, bounded.
        let deadline = tokio::time::Instant::now() + CONVERGE;
        loop {
            let (status, answer) = put(&http, target, &body).await.unwrap_or_else(|e| panic!("PUT {i}: {e}"));
            match status {
                200 => break answered.push(version(i)),
                503 if tokio::time::Instant::now() < deadline => {
                    refused.push(format!("{} (then retried)", version(i)));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                _ => panic!("PUT {i} on replica {}: {status} {answer}", alive[i % alive.len()]),
            }
        }
    }
    let last = answered.last().cloned().expect("answered PUTs");
    assert_eq!(last, version(STORM), "the storm's last PUT is answered");
    eprintln!("PUTs answered 200: {}, answered 503: {} ({refused:?})", answered.len() - 1, refused.len());

    // Every survivor serves the last answered version, the same bundle, and
    // keeps every answered version (none lost) and none of the refused ones.
    let mut bundles = Vec::new();
    for &r in &alive {
        let what = format!("replica {r} to serve {last}");
        wait_for(&what, CONVERGE, || async { replicas[r].get_json("/resources/sidecar").await["version"] == last.as_str() }).await;
        bundles.push(replicas[r].get_json("/resources/sidecar").await);
        let history = replicas[r].get_json("/resources/sidecar/history").await;
        let mut kept: Vec<String> = history["versions"].as_array().expect("versions").iter().filter_map(|v| v["version"].as_str().map(str::to_owned)).collect();
        kept.reverse();
        assert_eq!(kept, answered, "replica {r} keeps exactly the answered versions, in order");
    }
    assert!(bundles.windows(2).all(|w| w[0] == w[1]), "the survivors serve the same bundle");

    // Envoy moved to a survivor and ACKed the last version there.
    let moved = reconnect.expect("the carrier was killed").await.expect("reconnect timer");
    let moved = moved.unwrap_or_else(|| panic!("Envoy's stream not on a surviving replica within {RECONNECT:?} of the kill"));
    eprintln!("Envoy's stream was on a surviving replica {moved:?} after the kill -9");
    let mut counts = Vec::new();
    for &r in &alive {
        counts.push((r, streams_at(&http, &replicas[r].url("/nodes")).await.unwrap_or(0)));
    }
    let holders: Vec<usize> = counts.iter().filter(|(_, n)| *n > 0).map(|(r, _)| *r).collect();
    assert_eq!((holders.len(), counts.iter().map(|(_, n)| n).sum::<usize>()), (1, 1), "one stream on one survivor: {counts:?}");
    replicas[holders[0]].wait_acked(NODE, &STORM_TYPES, &last, CONVERGE).await;
    wait_for("Envoy's config_dump to show the last version", CONVERGE, || async {
        accepted(&envoy.config_dump().await).cluster_version.as_deref() == Some(last.as_str())
    })
    .await;
    wait_for_body(port, "/", "backend-A", CONVERGE).await;

    traffic.assert_all_ok("across the storm, the kill -9 and the etcd restart").await;
    let seen = monitor.assert_clean().await;
    assert!(seen.len() >= 2 && seen.last() == Some(&last), "Envoy went through {seen:?}");
    assert!(seen.iter().all(|v| answered.contains(v)), "Envoy only ever had answered versions: {seen:?}");
    let stats = envoy.stats().await;
    for name in ["listener_manager.lds.update_rejected", "cluster_manager.cds.update_rejected", "listener_manager.listener_removed", "cluster_manager.cluster_removed"] {
        assert_eq!(stats.get(name).copied().unwrap_or(0), 0, "{name}");
    }
    let timeouts: Vec<_> = stats.iter().filter(|(name, value)| name.ends_with("init_fetch_timeout") && **value > 0).collect();
    assert!(timeouts.is_empty(), "Envoy gave up waiting for a resource: {timeouts:?}");
    assert_eq!(stats.get("listener_manager.total_listeners_active").copied(), Some(1));
    assert_eq!(stats.get("control_plane.connected_state").copied(), Some(1), "Envoy is connected at the end");
}
