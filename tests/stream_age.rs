//! `--max-stream-age`: an xDS connection older than the age (±10 %) is
//! drained (GOAWAY, its streams end), so its Envoy reconnects, possibly to
//! another replica, and keeps its config and its traffic meanwhile.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{
    envoy::{example_bundle, free_port, wait_for_body, Backend, Envoy, Transport, Traffic, CONVERGE, RECONNECT},
    send,
    xds_client::{request, XdsClient, CDS},
    TestDaemon,
};

async fn streams_of(daemon: &TestDaemon, node_id: &str) -> Vec<Value> {
    let (_, nodes) = send(reqwest::Client::new().get(daemon.url("/nodes"))).await;
    nodes["streams"].as_array().cloned().unwrap_or_default().into_iter().filter(|s| s["node_id"] == node_id).collect()
}

#[tokio::test]
async fn a_stream_past_the_age_ends_cleanly_and_a_new_one_gets_the_same_version() {
    let daemon = TestDaemon::start_with(|config| config.max_stream_age = Some(Duration::from_millis(300))).await;
    assert_eq!(daemon.put("sidecar", support::sidecar_bundle("v1", 10000, 10001).to_string()).await.0, 200);

    let mut client = XdsClient::ads(&daemon.xds_url(), request("sidecar-aged", CDS, &[])).await;
    assert_eq!(client.recv_acked(&[]).await.version_info, "v1");
    let status = client.expect_end().await;
    assert_eq!(status.code(), tonic::Code::Ok, "a drained stream ends cleanly: {status:?}");

    let mut again = XdsClient::ads(&daemon.xds_url(), request("sidecar-aged", CDS, &[])).await;
    assert_eq!(again.recv_acked(&[]).await.version_info, "v1", "the same version after reconnecting");
}

#[test]
fn the_age_is_jittered_within_ten_percent() {
    let age = Duration::from_secs(100);
    let ages: Vec<Duration> = (0..200).map(|_| sxds::net::jittered(age)).collect();
    assert!(ages.iter().all(|a| *a >= Duration::from_secs(90) && *a < Duration::from_secs(110)), "{ages:?}");
    let distinct: std::collections::BTreeSet<_> = ages.iter().collect();
    assert!(distinct.len() > 100, "spread, not one value: {} distinct", distinct.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_reconnects_after_each_drain_and_keeps_its_config_and_traffic() {
    let daemon = TestDaemon::start_with(|config| config.max_stream_age = Some(Duration::from_secs(2))).await;
    let backend = Backend::start("backend-A").await;
    let (port, node) = (free_port(), "sidecar-aging");
    let (status, answer) = daemon.put("sidecar", example_bundle("sidecar.json", "1", port, backend.port).to_string()).await;
    assert_eq!(status, 200, "{answer}");
    let envoy = Envoy::start(Transport::Ads, daemon.xds_addr.port(), node);
    wait_for_body(port, "/", "backend-A", CONVERGE).await;
    let first = streams_of(&daemon, node).await;
    let first_id = first.first().map(|s| s["stream_id"].clone()).expect("Envoy's stream is listed");

    // Two drains at least: each time a new stream, on the same version, and
    // not one failed request through Envoy.
    let traffic = Traffic::start(port, "/", &["backend-A"]);
    let mut seen = vec![first_id];
    let deadline = tokio::time::Instant::now() + RECONNECT;
    while seen.len() < 3 {
        assert!(tokio::time::Instant::now() < deadline, "Envoy did not reconnect twice within {RECONNECT:?}: streams {seen:?}");
        if let Some(stream) = streams_of(&daemon, node).await.first() {
            let acked = stream["types"]["listeners"]["acked_version"].as_str() == Some("1");
            if acked && !seen.contains(&stream["stream_id"]) {
                seen.push(stream["stream_id"].clone());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    traffic.assert_all_ok("while sxds drained Envoy's connection twice").await;

    let stats = envoy.stats().await;
    for rejected in ["listener_manager.lds.update_rejected", "cluster_manager.cds.update_rejected"] {
        assert_eq!(stats.get(rejected).copied().unwrap_or(0), 0, "{rejected}");
    }
    assert_eq!(envoy.active_listeners().await, ["listener_0"], "the listener stayed");
    wait_for_body(port, "/", "backend-A", CONVERGE).await;
}
