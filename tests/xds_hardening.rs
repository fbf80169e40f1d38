//! What a misbehaving xDS client can no longer do (issue #6): pin memory by
//! not reading, cost memory and CPU with huge requests, or draw a response
//! per repeated request. Against the real daemon on port 0.

mod support;

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DiscoveryRequest,
};
use prost::Message;
use serde_json::{json, Value};
use support::{
    sidecar_bundle, wait_for,
    xds_client::{ack, nack, names, request, XdsClient, CDS, EDS},
    TestDaemon,
};
use sxds::xds::limits::{MAX_NODE_ID_BYTES, MAX_REQUEST_BYTES, MAX_RESOURCE_NAMES, MAX_RESOURCE_NAME_BYTES};
use tokio::net::TcpStream;

/// How long "nothing is sent" is observed (as in xds_protocol.rs).
const QUIET: Duration = Duration::from_millis(400);

/// A bundle of `n` clusters: 3,000 make a CDS response of about 200 KB,
/// well over HTTP/2's initial 64 KiB window.
fn clusters_bundle(version: &str, n: usize) -> Value {
    let clusters: Vec<Value> = (0..n).map(|i| json!({"name": format!("cluster-{i:05}"), "connect_timeout": "1s"})).collect();
    json!({"version": version, "clusters": clusters})
}

async fn put(daemon: &TestDaemon, body: &Value) {
    let (status, answer) = daemon.put("sidecar", body.to_string()).await;
    assert_eq!(status, 200, "PUT refused: {answer}");
}

async fn node_ids(daemon: &TestDaemon) -> Vec<String> {
    let nodes: Value = reqwest::get(daemon.url("/nodes")).await.unwrap().json().await.unwrap();
    let streams = nodes["streams"].as_array().cloned().unwrap_or_default();
    streams.iter().filter_map(|s| s["node_id"].as_str().map(str::to_owned)).collect()
}

/// One gRPC length-prefixed message.
fn grpc_frame(message: &impl Message) -> Bytes {
    let encoded = message.encode_to_vec();
    let mut frame = BytesMut::with_capacity(5 + encoded.len());
    frame.put_u8(0);
    frame.put_u32(encoded.len() as u32);
    frame.put_slice(&encoded);
    frame.freeze()
}

#[tokio::test]
async fn a_client_that_grants_no_flow_control_window_is_disconnected_after_the_send_timeout() {
    // The server can send 64 KiB of ~200 KB.
    stuck_client_is_disconnected(65_535).await;
}

#[tokio::test]
async fn a_client_that_grants_no_window_from_the_start_is_disconnected_after_the_send_timeout() {
    // Not a byte of the first response can be sent.
    stuck_client_is_disconnected(0).await;
}

/// A raw HTTP/2 client that asks for CDS on ADS with `window` bytes of
/// initial flow-control window and then never releases more is cut off
/// after --send-timeout, and a good client beside it is not.
async fn stuck_client_is_disconnected(window: u32) {
    let daemon = TestDaemon::start_with(|config| config.send_timeout = Duration::from_secs(2)).await;
    put(&daemon, &clusters_bundle("v1", 3000)).await;
    let mut good = XdsClient::ads(&daemon.xds_url(), request("sidecar-good", CDS, &[])).await;
    assert_eq!(names(&good.recv_acked(&[]).await).len(), 3000);

    // Its connection task keeps answering pings, as a live but stuck peer would.
    let tcp = TcpStream::connect(daemon.xds_addr).await.unwrap();
    let (client, connection) = h2::client::Builder::new().initial_window_size(window).handshake(tcp).await.expect("HTTP/2 handshake");
    let connection = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let path = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
    let stream_request = http::Request::post(format!("http://{}{path}", daemon.xds_addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut send) = client.send_request(stream_request, false).unwrap();
    send.send_data(grpc_frame(&request("sidecar-stuck", CDS, &[])), false).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), response).await.expect("response headers").unwrap();
    assert_eq!(response.status(), 200);
    let _unread = response.into_body(); // held, never read: no WINDOW_UPDATE is sent

    wait_for("/nodes to list the stuck stream", Duration::from_secs(10), || async {
        node_ids(&daemon).await.contains(&"sidecar-stuck".to_owned())
    })
    .await;
    // --send-timeout (2 s) and a moment to flush: the server drops the connection.
    let closed = tokio::time::timeout(Duration::from_secs(30), connection).await;
    assert!(closed.is_ok(), "the connection of a client that takes nothing is never closed");
    wait_for("/nodes to drop the stuck stream", Duration::from_secs(10), || async {
        !node_ids(&daemon).await.contains(&"sidecar-stuck".to_owned())
    })
    .await;

    // The well-behaved client on its own connection is untouched.
    put(&daemon, &clusters_bundle("v2", 3000)).await;
    let update = good.recv().await;
    assert_eq!((update.version_info.as_str(), names(&update).len()), ("v2", 3000));
    assert!(node_ids(&daemon).await.contains(&"sidecar-good".to_owned()));
}

/// Opens an ADS stream whose first request is `first`; the status it is refused with.
async fn refused(daemon: &TestDaemon, first: DiscoveryRequest) -> tonic::Status {
    let opened = XdsClient::open(&daemon.xds_url(), first, |channel, requests| async move {
        AggregatedDiscoveryServiceClient::new(channel).stream_aggregated_resources(requests).await
    })
    .await;
    opened.err().expect("the stream is refused")
}

#[tokio::test]
async fn requests_over_a_size_limit_are_refused_with_invalid_argument_naming_the_limit() {
    let daemon = TestDaemon::start().await;
    put(&daemon, &sidecar_bundle("v1", 10000, 10001)).await;

    let too_many: Vec<String> = (0..=MAX_RESOURCE_NAMES).map(|i| format!("c{i}")).collect();
    let long_name = "n".repeat(MAX_RESOURCE_NAME_BYTES + 1);
    let mut long_node = request("sidecar-1", EDS, &["backend"]);
    long_node.node.as_mut().unwrap().id = format!("sidecar-{}", "x".repeat(MAX_NODE_ID_BYTES));
    let cases = [
        (DiscoveryRequest { resource_names: too_many.clone(), ..request("sidecar-1", EDS, &[]) }, MAX_RESOURCE_NAMES),
        (request("sidecar-1", EDS, &[&long_name]), MAX_RESOURCE_NAME_BYTES),
        (long_node, MAX_NODE_ID_BYTES),
    ];
    for (first, limit) in cases {
        let status = refused(&daemon, first).await;
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(&limit.to_string()), "{:?} does not name the limit {limit}", status.message());
    }

    // The 4 MiB message limit stays.
    let mut huge = request("sidecar-1", CDS, &[]);
    huge.version_info = "v".repeat(MAX_REQUEST_BYTES + 1);
    assert_eq!(refused(&daemon, huge).await.code(), tonic::Code::OutOfRange);

    // A later request over a limit ends its stream with the status...
    let mut client = XdsClient::ads(&daemon.xds_url(), request("sidecar-2", EDS, &["backend"])).await;
    let first = client.recv().await;
    client.send(DiscoveryRequest { resource_names: too_many, ..ack(&first, &[]) }).await;
    let status = client.expect_end().await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains(&MAX_RESOURCE_NAMES.to_string()));

    // ...and exactly the limit is served; the daemon is unharmed.
    let at_limit: Vec<String> = std::iter::once("backend".to_owned()).chain((1..MAX_RESOURCE_NAMES).map(|i| format!("c{i}"))).collect();
    let first = DiscoveryRequest { resource_names: at_limit, ..request("sidecar-3", EDS, &[]) };
    let mut client = XdsClient::ads(&daemon.xds_url(), first).await;
    assert_eq!(names(&client.recv().await), ["backend"]);
}

#[tokio::test]
async fn r7_r8_r10_a_nack_or_an_ack_repeated_a_thousand_times_is_answered_by_nothing() {
    let daemon = TestDaemon::start().await;
    put(&daemon, &sidecar_bundle("v1", 10000, 10001)).await;
    let mut client = XdsClient::ads(&daemon.xds_url(), request("sidecar-1", CDS, &[])).await;
    let clusters = client.recv().await;
    // Each repeat names our latest nonce and an unchanged subscription.
    for _ in 0..1000 {
        client.send(nack(&clusters, "", "cluster backend: rejected")).await;
    }
    client.expect_silence(QUIET).await;

    client.send(request("sidecar-1", EDS, &["backend"])).await;
    let endpoints = client.recv().await;
    for _ in 0..1000 {
        client.ack(&endpoints, &["backend"]).await;
    }
    client.expect_silence(QUIET).await;

    // The stream still takes updates: a PUT gets through.
    put(&daemon, &sidecar_bundle("v2", 10000, 10002)).await;
    let update = client.recv().await;
    assert_eq!(update.version_info, "v2");
}

#[tokio::test]
async fn a_stream_that_never_sends_its_first_request_does_not_hold_up_shutdown() {
    // A grace period far beyond TestDaemon::stop's 20 s bound: only a drain
    // that does not wait for the silent stream stops in time.
    let daemon = TestDaemon::start_with(|config| config.shutdown_grace = Duration::from_secs(120)).await;
    let tcp = TcpStream::connect(daemon.xds_addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let path = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
    let silent = http::Request::post(format!("http://{}{path}", daemon.xds_addr))
        .header("content-type", "application/grpc")
        .body(())
        .unwrap();
    let (_response, _send) = client.send_request(silent, false).unwrap();
    // A REST round trip after the request was written lets the daemon take
    // the stream in (nothing else shows it: it has no node yet).
    assert!(reqwest::get(daemon.url("/healthz")).await.unwrap().status().is_success());
    daemon.stop().await.expect("a clean stop");
}
