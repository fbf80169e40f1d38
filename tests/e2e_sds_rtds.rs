//! A real Envoy 1.40 fed secrets over SDS and runtime over RTDS, on ADS in
//! both protocols: a TLS listener's certificate rotates without the
//! listener draining, and a runtime key moves a route's traffic.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{
    envoy::{bootstrap_yaml, free_port, wait_for_body, Backend, Daemon, Envoy, Traffic, Transport, CONVERGE},
    tls::{client_config, peer_serial, Ca},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::{client::TlsStream, TlsConnector};

const ADS: fn() -> Value = || json!({"ads": {}, "resource_api_version": "V3"});

/// A listener on `port` whose HCM routes everything to the static cluster
/// `to`; with a certificate from SDS when `tls`.
fn listener(name: &str, port: u16, tls: bool, routes: Value) -> Value {
    let mut listener = json!({
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": name,
            "route_config": {"name": format!("{name}-routes"), "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]},
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
        }}]}]
    });
    if tls {
        listener["filter_chains"][0]["transport_socket"] = json!({"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "common_tls_context": {"tls_certificate_sds_secret_configs": [{"name": "server-cert", "sds_config": ADS()}]}
        }});
    }
    listener
}

fn static_cluster(name: &str, port: u16) -> Value {
    json!({"name": name, "type": "STATIC", "connect_timeout": "1s", "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}
    ]}]}})
}

fn secret(issued: &support::tls::Issued) -> Value {
    json!({"name": "server-cert", "tls_certificate": {
        "certificate_chain": {"inline_string": issued.cert_pem},
        "private_key": {"inline_string": issued.key_pem}
    }})
}

/// An HTTP/1.1 GET over an open TLS connection; the response body.
async fn get_over(stream: &mut TlsStream<TcpStream>) -> String {
    stream.write_all(b"GET / HTTP/1.1\r\nhost: tls\r\n\r\n").await.expect("send over TLS");
    let (mut response, mut buf) = (Vec::new(), [0u8; 4096]);
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await.expect("a response in time").expect("read over TLS");
        assert!(n > 0, "the connection closed");
        response.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&response);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head.lines().find_map(|l| l.strip_prefix("content-length: ")).and_then(|n| n.trim().parse::<usize>().ok());
            if length.is_some_and(|length| body.len() >= length) {
                return body.to_owned();
            }
        }
    }
}

/// A TLS connection to Envoy's listener once it presents certificate `serial`.
async fn connect_presenting(port: u16, ca: &Ca, serial: u64) -> TlsStream<TcpStream> {
    let deadline = tokio::time::Instant::now() + CONVERGE;
    loop {
        match connect_tls(port, ca).await {
            Ok(stream) if peer_serial(&stream) == serial => return stream,
            other => assert!(tokio::time::Instant::now() < deadline, "no TLS connection with certificate {serial}: {:?}", other.map(|s| peer_serial(&s))),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TLS connection to Envoy's listener, trusting `ca`.
async fn connect_tls(port: u16, ca: &Ca) -> std::io::Result<TlsStream<TcpStream>> {
    let connector = TlsConnector::from(client_config(&ca.pem, None, &[b"http/1.1"]));
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    connector.connect("localhost".try_into().unwrap(), tcp).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sds_rotates_a_listener_certificate_without_draining_it() {
    rotate_certificate(Transport::Ads, "sidecar-sds").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_sds_rotates_a_listener_certificate_without_draining_it_r29() {
    rotate_certificate(Transport::DeltaAds, "sidecar-sds-delta").await;
}

async fn rotate_certificate(transport: Transport, node: &str) {
    let backend = Backend::start("over-tls").await;
    let (ca, port) = (Ca::new("sds test CA"), free_port());
    let routes = json!([{"match": {"prefix": "/"}, "route": {"cluster": "backend"}}]);
    let bundle = |version: &str, serial: u64| {
        json!({"version": version, "listeners": [listener("tls", port, true, routes.clone())],
               "clusters": [static_cluster("backend", backend.port)], "secrets": [secret(&ca.server(serial))]})
    };
    let daemon = Daemon::start().await;
    daemon.put_ok("sidecar", &bundle("1", 1)).await;
    let envoy = Envoy::start(transport, daemon.xds_port, node);
    daemon.wait_acked(node, &["clusters", "listeners", "secrets"], "1", CONVERGE).await;

    let mut first = connect_presenting(port, &ca, 1).await;
    assert_eq!(peer_serial(&first), 1);
    assert_eq!(get_over(&mut first).await, "over-tls");

    // A new certificate, nothing else changed: only SDS is sent.
    daemon.put_ok("sidecar", &bundle("2", 2)).await;
    daemon.wait_acked(node, &["secrets"], "2", CONVERGE).await;
    connect_presenting(port, &ca, 2).await;
    // The connection opened before the rotation still serves: nothing drained.
    assert_eq!(get_over(&mut first).await, "over-tls");
    for stat in ["listener_manager.listener_modified", "listener_manager.total_listeners_draining", "listener_manager.listener_removed"] {
        assert_eq!(envoy.stat(stat).await, 0, "{stat}");
    }
    let stats = envoy.stats().await;
    assert!(!stats.iter().any(|(name, value)| name.ends_with("update_rejected") && *value > 0), "an update was rejected");
}

/// The ADS bootstrap with a runtime layer fetched over RTDS.
fn rtds_bootstrap(transport: Transport, xds_port: u16, admin_port: u16) -> String {
    let mut yaml = bootstrap_yaml(transport, xds_port, admin_port);
    yaml.push_str(
        "\nlayered_runtime:\n  layers:\n    - name: rtds\n      rtds_layer:\n        name: rtds-layer\n        rtds_config: { ads: {}, resource_api_version: V3 }\n",
    );
    yaml
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtds_moves_a_runtime_fraction_route() {
    runtime_moves_traffic(Transport::Ads, "sidecar-rtds").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_rtds_moves_a_runtime_fraction_route_r29() {
    runtime_moves_traffic(Transport::DeltaAds, "sidecar-rtds-delta").await;
}

async fn runtime_moves_traffic(transport: Transport, node: &str) {
    let (a, b) = (Backend::start("backend-A").await, Backend::start("backend-B").await);
    let port = free_port();
    // The first route takes the share of requests the runtime key says (0 by default), the second the rest.
    let routes = json!([
        {"match": {"prefix": "/", "runtime_fraction": {"default_value": {"numerator": 0}, "runtime_key": "routing.to_b"}}, "route": {"cluster": "b"}},
        {"match": {"prefix": "/"}, "route": {"cluster": "a"}}
    ]);
    let bundle = |version: &str, to_b: u32| {
        json!({"version": version, "listeners": [listener("plain", port, false, routes.clone())],
               "clusters": [static_cluster("a", a.port), static_cluster("b", b.port)],
               "runtimes": [{"name": "rtds-layer", "layer": {"routing.to_b": to_b}}]})
    };
    let daemon = Daemon::start().await;
    daemon.put_ok("sidecar", &bundle("1", 0)).await;
    let envoy = Envoy::start_with_bootstrap(node, |admin| rtds_bootstrap(transport, daemon.xds_port, admin));
    wait_for_body(port, "/", "backend-A", CONVERGE).await;
    daemon.wait_acked(node, &["runtimes"], "1", CONVERGE).await;

    let traffic = Traffic::start(port, "/", &["backend-A", "backend-B"]);
    daemon.put_ok("sidecar", &bundle("2", 100)).await;
    daemon.wait_acked(node, &["runtimes"], "2", CONVERGE).await;
    wait_for_body(port, "/", "backend-B", CONVERGE).await;
    for _ in 0..20 {
        assert_eq!(support::envoy::fetch(port, "/").await.as_deref(), Ok("backend-B"), "100% of requests take the runtime route");
    }
    daemon.put_ok("sidecar", &bundle("3", 0)).await;
    wait_for_body(port, "/", "backend-A", CONVERGE).await;
    traffic.assert_all_ok("while the runtime key moved traffic").await;
    assert!(envoy.stat("runtime.load_success").await >= 1);
    let stats = envoy.stats().await;
    assert!(!stats.iter().any(|(name, value)| name.ends_with("update_rejected") && *value > 0), "an update was rejected");
}
