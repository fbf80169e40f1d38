//! `GET /metrics` against the real daemon: what a Prometheus scrape sees
//! after PUTs, a stream that ACKs one type and NACKs another, and the
//! stream's end.

mod support;

use std::time::Duration;

use support::{
    sidecar_bundle, wait_for,
    xds_client::{nack, request, XdsClient, CDS, LDS},
    TestDaemon,
};

async fn scrape(daemon: &TestDaemon) -> String {
    let response = reqwest::get(daemon.url("/metrics")).await.expect("scrape");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
    response.text().await.unwrap()
}

/// The value of the sample `name{labels}`.
fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let prefix = if labels.is_empty() { format!("{name} ") } else { format!("{name}{{{labels}}} ") };
    text.lines().find_map(|line| line.strip_prefix(&prefix)?.split(' ').next()?.parse().ok())
}

#[tokio::test]
async fn a_scrape_counts_streams_responses_acks_nacks_writes_and_latencies() {
    let daemon = TestDaemon::start().await;
    assert_eq!(daemon.put("metered", sidecar_bundle("m1", 10000, 10001).to_string()).await.0, 200);
    assert_eq!(daemon.put("metered", "{\"version\": \"m2\", \"clusters\": [{}]}").await.0, 400);

    let mut client = XdsClient::ads(&daemon.xds_url(), request("metered-1", CDS, &[])).await;
    client.recv_acked(&[]).await;
    client.send(request("metered-1", LDS, &[])).await;
    let listeners = client.recv().await;
    client.send(nack(&listeners, "", "listener_0: bad filter")).await;
    wait_for("the NACK to be counted", Duration::from_secs(10), || async {
        sample(&scrape(&daemon).await, "sxds_nacks_total", "node_type=\"metered\",type=\"listeners\"") == Some(1.0)
    })
    .await;

    let text = scrape(&daemon).await;
    let expect = |name: &str, labels: &str, wanted: f64| {
        assert_eq!(sample(&text, name, labels), Some(wanted), "{name}{{{labels}}} in\n{text}");
    };
    expect("sxds_streams", "node_type=\"metered\",service=\"ads\"", 1.0);
    expect("sxds_responses_total", "node_type=\"metered\",type=\"clusters\"", 1.0);
    expect("sxds_responses_total", "node_type=\"metered\",type=\"listeners\"", 1.0);
    expect("sxds_acks_total", "node_type=\"metered\",type=\"clusters\"", 1.0);
    expect("sxds_acks_total", "node_type=\"metered\",type=\"listeners\"", 0.0);
    expect("sxds_push_to_ack_seconds_count", "type=\"clusters\"", 1.0);
    expect("sxds_writes_total", "action=\"put\",code=\"200\"", 1.0);
    expect("sxds_writes_total", "action=\"put\",code=\"400\"", 1.0);
    expect("sxds_store_commit_seconds_count", "", 1.0);
    assert!(sample(&text, "sxds_snapshot_build_seconds_count", "").is_some_and(|n| n >= 1.0), "{text}");

    drop(client);
    wait_for("the closed stream to leave the gauge", Duration::from_secs(10), || async {
        sample(&scrape(&daemon).await, "sxds_streams", "node_type=\"metered\",service=\"ads\"") == Some(0.0)
    })
    .await;
}
