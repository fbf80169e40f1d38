//! End to end with a proxyless gRPC client: the `sxds` binary and Python
//! `grpcio` on the target `xds:///echo`, configured only by sxds over ADS
//! (state of the world) through the shipped bootstrap
//! (examples/grpc-bootstrap.json) and bundle (examples/proxyless-grpc.json:
//! an `api_listener` with RDS, a route splitting 80/20 over two EDS
//! clusters). The client's calls reach gRPC backends of its own.
//!
//! Needs `python3` with `grpc` importable (the README test command installs it).

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{
    envoy::{example_path, port_of, Daemon, CONVERGE},
    proxyless::{Calls, Proxyless},
    wait_for,
};

const NODE: &str = "proxyless-e2e";
/// The example's api_listener: gRPC asks LDS for the target's name.
const TARGET: &str = "echo";
const ALL_TYPES: [&str; 4] = ["clusters", "endpoints", "listeners", "routes"];
/// What moving an endpoint or fixing the canary cluster sends.
const CLUSTERS_AND_ENDPOINTS: [&str; 2] = ["clusters", "endpoints"];
/// How long calls go on after the NACK while nothing may be sent: a resend
/// loop turns round in milliseconds, so this is generous.
const NO_RESEND_WINDOW: Duration = Duration::from_secs(3);
/// The example's clusters: `echo-main` weighs 80, `echo-canary` 20.
const MAIN: usize = 0;
const CANARY: usize = 1;

/// examples/proxyless-grpc.json with its version and each cluster's one
/// backend port replaced.
fn bundle(version: &str, main_port: u16, canary_port: u16) -> Value {
    let text = std::fs::read_to_string(example_path("proxyless-grpc.json")).expect("read example bundle");
    let mut bundle: Value = serde_json::from_str(&text).expect("example bundle is JSON");
    bundle["version"] = version.into();
    for (i, port) in [(MAIN, main_port), (CANARY, canary_port)] {
        *port_of(&mut bundle["endpoints"][i]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]) = port.into();
    }
    assert_eq!(bundle["listeners"][0]["name"], TARGET, "the example's listener is named after the target");
    bundle
}

/// The one stream of the client (gRPC keeps a single ADS stream).
async fn the_stream(daemon: &Daemon) -> Value {
    let streams = daemon.streams(NODE).await;
    assert_eq!(streams.len(), 1, "one stream for {NODE}: {streams:?}");
    streams[0].clone()
}

/// Discovery responses sent to the node type, all types together, by `/metrics`.
async fn responses_sent(daemon: &Daemon) -> u64 {
    metric_sum(&daemon.get_text("/metrics").await, "sxds_responses_total")
}

async fn nacks(daemon: &Daemon) -> u64 {
    metric_sum(&daemon.get_text("/metrics").await, "sxds_nacks_total")
}

/// The sum of `name` over the samples labelled with this test's node type.
fn metric_sum(text: &str, name: &str) -> u64 {
    let labelled = format!("{name}{{node_type=\"proxyless\"");
    let values = text.lines().filter(|line| line.starts_with(&labelled)).filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok());
    values.sum::<f64>() as u64
}

/// How many NACKs the client itself logged (grpcio logs each at ERROR).
fn nacks_logged(client: &Proxyless) -> usize {
    client.log().lines().filter(|line| line.contains("will NACK")).count()
}

/// Every type answered: ACKed what was sent, or NACKed it.
fn settled(stream: &Value) -> bool {
    let types = stream["types"].as_object().cloned().unwrap_or_default();
    ALL_TYPES.iter().all(|ty| types.get(*ty).is_some_and(|t| t["acked_version"] == t["sent_version"] || !t["rejected"].is_null()))
}

fn assert_no_failures(calls: &Calls, during: &str) {
    assert!(calls.failures.is_empty(), "{} calls failed {during}: {:?}", calls.failures.len(), calls.failures);
    assert!(calls.total() > 0, "no call was made {during}");
}

/// Calls in batches until one reaches `to` and never `not`: the client
/// followed a change. Every call must succeed.
async fn wait_for_calls(client: &mut Proxyless, to: &str, not: &str) {
    let deadline = tokio::time::Instant::now() + CONVERGE;
    loop {
        let calls = client.call(50).await;
        assert_no_failures(&calls, &format!("while waiting for calls to reach {to}"));
        if calls.of(to) > 0 && calls.of(not) == 0 {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "calls did not move to {to} and off {not} within {CONVERGE:?}; last batch {calls:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxyless_grpc_follows_a_weighted_split_and_an_endpoint_move_and_survives_a_nack_without_a_resend_r7_r16() {
    let daemon = Daemon::start().await;
    let mut client = Proxyless::start(daemon.xds_port, NODE, TARGET, &["backend-a", "backend-b", "backend-c"]).await;
    let port = |name: &str| client.ports[name];
    let (a, b, c) = (port("backend-a"), port("backend-b"), port("backend-c"));

    // v1: echo-main on backend-a weighs 80, echo-canary on backend-b 20.
    daemon.put_ok("proxyless", &bundle("1", a, b)).await;
    let split = client.call(200).await;
    assert_no_failures(&split, "on v1");
    daemon.wait_acked(NODE, &ALL_TYPES, "1", CONVERGE).await;
    let stream = the_stream(&daemon).await;
    assert!(stream["protocol"] == "sotw" && stream["service"] == "ads", "gRPC speaks SotW ADS: {stream}");
    let (main, canary) = (split.of("backend-a"), split.of("backend-b"));
    assert_eq!(main + canary, 200, "every call reached one of the two clusters: {split:?}");
    // 80/20 over 200 calls: the canary gets 40 on average; below 10 or above 90 is far beyond chance.
    assert!((10..=90).contains(&canary), "about a fifth of the calls reach the canary: {split:?}");
    let stream_id = stream["stream_id"].clone();

    // v2: the canary's endpoint moves to backend-c. EDS alone changes; the
    // client follows without a failed call.
    client.start_traffic().await;
    daemon.put_ok("proxyless", &bundle("2", a, c)).await;
    daemon.wait_acked(NODE, &["endpoints"], "2", CONVERGE).await;
    let stream = the_stream(&daemon).await;
    assert_eq!(stream["types"]["clusters"]["sent_version"], "1", "an endpoint move sends EDS alone: {stream}");
    wait_for_calls(&mut client, "backend-c", "backend-b").await;
    assert_no_failures(&client.stop_traffic().await, "across the endpoint move");

    // v3: a canary cluster gRPC rejects (it has no MAGLEV) but sxds, for
    // Envoy, accepts. The client NACKs it once and keeps calling on v2.
    let mut rejected = bundle("3", a, c);
    rejected["clusters"][CANARY]["lb_policy"] = "MAGLEV".into();
    client.start_traffic().await;
    daemon.put_ok("proxyless", &rejected).await;
    wait_for("the client's NACK of clusters version 3 and every other type answered (GET /nodes)", CONVERGE, || async {
        let stream = the_stream(&daemon).await;
        let clusters = &stream["types"]["clusters"];
        clusters["sent_version"] == "3" && clusters["rejected"]["error"].as_str().is_some_and(|e| e.contains("lb_policy")) && settled(&stream)
    })
    .await;
    let stream = the_stream(&daemon).await;
    assert_eq!(stream["types"]["clusters"]["acked_version"], "1", "the NACK keeps the version accepted before: {stream}");
    let (sent, nacked) = (responses_sent(&daemon).await, nacks(&daemon).await);
    assert_eq!(nacked, 1, "one NACK so far");
    // No resend loop (R7): a resend would be NACKed at once, again and
    // again. Over a few seconds of calls nothing goes out, nothing comes back.
    let (window, mut reached) = (tokio::time::Instant::now() + NO_RESEND_WINDOW, Vec::new());
    while tokio::time::Instant::now() < window {
        let meanwhile = client.call(100).await;
        assert_no_failures(&meanwhile, "after the NACK");
        assert!(meanwhile.of("backend-b") == 0, "calls go on with v2's endpoints: {meanwhile:?}");
        reached.extend(meanwhile.replies.into_keys());
        assert_eq!(responses_sent(&daemon).await, sent, "sxds sent nothing after the NACK");
        assert_eq!(nacks(&daemon).await, 1, "the client NACKed once");
    }
    assert!(reached.iter().any(|b| b == "backend-a") && reached.iter().any(|b| b == "backend-c"), "both of v2's clusters answered: {reached:?}");
    assert_eq!(nacks_logged(&client), 1, "the client logged one NACK (\"will NACK\" in its log)");
    let stream = the_stream(&daemon).await;
    assert_eq!(stream["stream_id"], stream_id, "the same stream all along: {stream}");
    assert_eq!(stream["types"]["clusters"]["sent_version"], "3", "{stream}");
    assert_no_failures(&client.stop_traffic().await, "across the rejected update");

    // v4: the canary fixed and moved back to backend-b; ACKed, and followed.
    client.start_traffic().await;
    daemon.put_ok("proxyless", &bundle("4", a, b)).await;
    daemon.wait_acked(NODE, &CLUSTERS_AND_ENDPOINTS, "4", CONVERGE).await;
    wait_for_calls(&mut client, "backend-b", "backend-c").await;
    assert_no_failures(&client.stop_traffic().await, "across the fix");
    let stream = the_stream(&daemon).await;
    assert!(stream["types"]["clusters"]["rejected"].is_null(), "the ACK clears the NACK: {stream}");
    assert_eq!(stream["stream_id"], stream_id, "the same stream all along: {stream}");
    assert_eq!(nacks(&daemon).await, 1, "no NACK since");
    assert_eq!(nacks_logged(&client), 1, "no NACK since, by the client's log");
}
