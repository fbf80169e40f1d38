//! Issue #11, canary rollouts with real Envoys: two canaries
//! (`sidecar-canary-*`) and two others on one node type. A good bundle is
//! promoted, the others getting it only once both canaries ACKed; a bundle
//! Envoy rejects halts at the canaries, which get the old config back
//! while the others never see the new one; a canary that stops answering
//! times out into a halt; a restart mid-rollout reports it halted.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{
    envoy::{free_port, wait_for_body, Backend, Daemon, Envoy, Traffic, Transport, CONVERGE},
    sidecar_bundle, wait_for,
};

const CANARIES: [&str; 2] = ["sidecar-canary-1", "sidecar-canary-2"];
const OTHERS: [&str; 2] = ["sidecar-web-1", "sidecar-web-2"];
const ALL_TYPES: [&str; 4] = ["listeners", "clusters", "routes", "endpoints"];

/// A daemon serving version 1 (backend A on `port`) to two canaries and two
/// others, all of which have ACKed it. Every Envoy binds `port` (Envoy sets
/// SO_REUSEPORT), so traffic to it reaches all four.
struct Fleet {
    daemon: Daemon,
    envoys: Vec<(String, Envoy)>,
    port: u16,
    a: Backend,
    b: Backend,
}

async fn fleet() -> Fleet {
    let (a, b) = (Backend::start("backend-A").await, Backend::start("backend-B").await);
    let port = free_port();
    let daemon = Daemon::start().await;
    daemon.put_ok("sidecar", &sidecar_bundle("1", port, a.port)).await;
    let mut envoys = Vec::new();
    for node in CANARIES.iter().chain(&OTHERS) {
        envoys.push(((*node).to_owned(), Envoy::start(Transport::Ads, daemon.xds_port, node)));
    }
    for node in CANARIES.iter().chain(&OTHERS) {
        daemon.wait_acked(node, &ALL_TYPES, "1", CONVERGE).await;
    }
    wait_for_body(port, "/", "backend-A", CONVERGE).await;
    Fleet { daemon, envoys, port, a, b }
}

impl Fleet {
    async fn canary_put(&self, bundle: &Value, wait: &str) -> (u16, Value) {
        let url = self.daemon.url(&format!("/resources/sidecar?canary=sidecar-canary-*&wait={wait}"));
        let response = reqwest::Client::new().put(url).json(bundle).send().await.expect("PUT");
        (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
    }

    async fn rollout(&self) -> Value {
        self.daemon.get_json("/resources/sidecar/rollout").await
    }

    async fn wait_state(&self, state: &str, limit: Duration) -> Value {
        wait_for(&format!("the rollout to be {state}"), limit, || async { self.rollout().await["state"] == state }).await;
        self.rollout().await
    }

    /// The version of `ty` last sent to each stream of `node`.
    async fn sent(&self, node: &str, ty: &str) -> Vec<Value> {
        self.daemon.streams(node).await.iter().map(|s| s["types"][ty]["sent_version"].clone()).collect()
    }

    fn envoy(&mut self, node: &str) -> &mut Envoy {
        &mut self.envoys.iter_mut().find(|(n, _)| n == node).expect("an Envoy of that node").1
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_bundle_reaches_the_others_only_after_both_canaries_acked_it() {
    let fleet = fleet().await;
    let traffic = Traffic::start(fleet.port, "/", &["backend-A", "backend-B"]);
    let (status, answer) = fleet.canary_put(&sidecar_bundle("2", fleet.port, fleet.b.port), "30s").await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["rollout"]["canaries"], json!(CANARIES), "{answer}");

    // Version 2 moves the endpoints. At every look, an other that was sent
    // them means both canaries had ACKed them.
    let deadline = tokio::time::Instant::now() + CONVERGE;
    loop {
        let nodes = fleet.daemon.get_json("/nodes").await;
        let streams = nodes["streams"].as_array().cloned().unwrap_or_default();
        let of = |node: &str| streams.iter().filter(|s| s["node_id"] == node).cloned().collect::<Vec<Value>>();
        let others_sent = OTHERS.iter().flat_map(|n| of(n)).any(|s| s["types"]["endpoints"]["sent_version"] == "2");
        let canaries_acked = CANARIES.iter().all(|n| of(n).iter().any(|s| s["types"]["endpoints"]["acked_version"] == "2"));
        assert!(!others_sent || canaries_acked, "an other got version 2 before both canaries ACKed it: {nodes}");
        if others_sent {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the others never got version 2; rollout: {}", fleet.rollout().await);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rollout = fleet.wait_state("promoted", CONVERGE).await;
    assert_eq!(rollout["acked"], json!(CANARIES), "{rollout}");
    for node in CANARIES.iter().chain(&OTHERS) {
        fleet.daemon.wait_acked(node, &["endpoints"], "2", CONVERGE).await;
    }
    wait_for_body(fleet.port, "/", "backend-B", CONVERGE).await;
    traffic.assert_all_ok("during the rollout").await;
    assert_eq!(fleet.daemon.get_json("/resources/sidecar").await["version"], "2", "promoted: stored like a PUT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_envoy_rejects_halts_at_the_canaries_and_the_others_never_see_it() {
    let fleet = fleet().await;
    let traffic = Traffic::start(fleet.port, "/", &["backend-A"]);
    // Valid to sxds, refused by Envoy: CLUSTER_PROVIDED is not for EDS clusters.
    let mut bad = sidecar_bundle("2", fleet.port, fleet.a.port);
    bad["clusters"][0]["lb_policy"] = json!("CLUSTER_PROVIDED");
    assert_eq!(fleet.canary_put(&bad, "30s").await.0, 202);

    let rollout = fleet.wait_state("halted", CONVERGE).await;
    let error = rollout["error"].as_str().unwrap_or_default();
    assert!(error.contains("sidecar-canary-") && error.contains("clusters"), "the rollout says which canary rejected what: {rollout}");
    let halted = rollout["halted_version"].as_str().unwrap().to_owned();
    assert!(halted.starts_with("1-halted-"), "{rollout}");
    for node in CANARIES {
        fleet.daemon.wait_acked(node, &["clusters"], &halted, CONVERGE).await;
    }
    for node in OTHERS {
        assert_eq!(fleet.sent(node, "clusters").await, [json!("1")], "{node} never saw version 2");
    }
    assert_eq!(fleet.daemon.put("sidecar", &sidecar_bundle("3", fleet.port, fleet.b.port)).await.0, 409, "a PUT during a halted rollout names it");

    let abandoned = reqwest::Client::new().delete(fleet.daemon.url("/resources/sidecar/rollout")).send().await.unwrap();
    assert_eq!(abandoned.status(), 200);
    for node in CANARIES {
        fleet.daemon.wait_acked(node, &["clusters"], "1", CONVERGE).await;
    }
    traffic.assert_all_ok("while the canaries rejected version 2").await;
    fleet.daemon.put_ok("sidecar", &sidecar_bundle("3", fleet.port, fleet.b.port)).await;
    wait_for_body(fleet.port, "/", "backend-B", CONVERGE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_that_stops_answering_times_out_into_a_halt_and_a_restart_keeps_it_halted() {
    let mut fleet = fleet().await;
    fleet.envoy(CANARIES[1]).freeze();
    assert_eq!(fleet.canary_put(&sidecar_bundle("2", fleet.port, fleet.b.port), "2s").await.0, 202);
    fleet.envoy(CANARIES[1]).kill9();
    let rollout = fleet.wait_state("halted", CONVERGE).await;
    let error = rollout["error"].as_str().unwrap_or_default();
    assert!(error.contains(CANARIES[1]) && error.contains("neither ACKed nor NACKed"), "{rollout}");
    assert_eq!(rollout["acked"], json!([CANARIES[0]]), "the live canary had ACKed: {rollout}");
    for node in OTHERS {
        assert_eq!(fleet.sent(node, "endpoints").await, [json!("1")], "{node} never saw version 2");
    }

    // Retried with only the live canary connected, then interrupted by a restart: reported, not promoted.
    fleet.envoy(CANARIES[0]).freeze();
    let retried = reqwest::Client::new().post(fleet.daemon.url("/resources/sidecar/rollout/retry?wait=60s")).send().await.unwrap();
    assert_eq!(retried.status(), 200);
    assert_eq!(fleet.rollout().await["state"], "running");
    fleet.daemon.terminate(Duration::from_secs(30)).await;
    fleet.daemon.restart().await;
    let after = fleet.rollout().await;
    assert_eq!((after["state"].clone(), after["error"].clone()), (json!("halted"), json!("sxds restarted during the rollout")), "{after}");
    assert_eq!(fleet.daemon.get_json("/resources/sidecar").await["version"], "1", "never silently promoted");
}
