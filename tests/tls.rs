//! TLS on both ports, client certificates and node identity on xDS, and
//! gRPC health and reflection: the real daemon on port 0 with certificates
//! made here (rcgen), Rust TLS clients, and a real Envoy over mutual TLS.
//! Protocol rules cited are ../shared/xds-protocol.md's.

mod support;

use std::{path::Path, sync::Arc, time::Duration};

use envoy_types::pb::envoy::service::load_stats::v3::load_reporting_service_client::LoadReportingServiceClient;
use prost::Message;
use rustls::ClientConfig;
use serde_json::Value;
use support::{
    envoy::{example_bundle, free_port, mtls_bootstrap_yaml, wait_for_body, Backend, Envoy, CONVERGE},
    sidecar_bundle,
    tls::{client_config, connect, expiry, grpc_channel, https_client, peer_serial, Ca, Issued},
    wait_for,
    xds_client::{names, request, XdsClient, LDS},
    TestDaemon,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::StreamExt;
use tonic::{transport::Channel, Code};
use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest};

const ADS: &str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
const BOUND: Duration = Duration::from_secs(10);

/// A CA, the daemon's certificate from it, written into a temp dir.
struct Pki {
    ca: Ca,
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let pki = Self { ca: Ca::new("sxds test CA"), dir: tempfile::tempdir().expect("temp dir") };
        pki.ca.server(1).write(pki.dir.path(), "server");
        std::fs::write(pki.dir.path().join("ca.pem"), &pki.ca.pem).expect("write CA");
        pki
    }

    fn path(&self, file: &str) -> std::path::PathBuf {
        self.dir.path().join(file)
    }

    /// The daemon with TLS on both ports; with `client_ca`, mutual TLS on xDS.
    async fn daemon(&self, client_ca: bool) -> TestDaemon {
        let (cert, key, ca) = (self.path("server.pem"), self.path("server.key"), self.path("ca.pem"));
        TestDaemon::start_tls(
            |config| {
                config.tls_cert = Some(cert);
                config.tls_key = Some(key);
                config.xds_client_ca = client_ca.then_some(ca);
            },
            &https_client(&self.ca.pem),
        )
        .await
    }

    /// A TLS client trusting the CA, offering h2, presenting `identity`.
    fn client(&self, identity: Option<&Issued>) -> Arc<ClientConfig> {
        client_config(&self.ca.pem, identity, &[b"h2"])
    }
}

/// PUTs `bundle` over HTTPS; insists on a 200.
async fn put_ok(https: &reqwest::Client, daemon: &TestDaemon, node_type: &str, bundle: &Value) {
    let response = https.put(daemon.https_url(&format!("/resources/{node_type}"))).json(bundle).send().await.expect("PUT over TLS");
    assert_eq!(response.status(), 200, "PUT /resources/{node_type}: {:?}", response.text().await);
}

/// Opens TLS with `config`, speaks the HTTP/2 preface and reads what comes
/// back: the server's SETTINGS once the connection is accepted, an error
/// (a TLS alert) when the client certificate is refused.
async fn http2_hello(addr: std::net::SocketAddr, config: Arc<ClientConfig>) -> Result<usize, String> {
    let mut tls = connect(addr, config).await.map_err(|e| format!("handshake: {e}"))?;
    // The preface, then an empty SETTINGS frame.
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").await.map_err(|e| format!("write: {e}"))?;
    let mut buf = [0u8; 64];
    match tokio::time::timeout(BOUND, tls.read(&mut buf)).await {
        Ok(Ok(0)) => Err("closed without a byte".into()),
        Ok(Ok(n)) => Ok(n),
        Ok(Err(e)) => Err(format!("read: {e}")),
        Err(_) => Err(format!("nothing within {BOUND:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_over_mutual_tls_with_a_certificate_naming_its_node_type_gets_its_config_and_serves_traffic() {
    let pki = Pki::new();
    pki.ca.client(&["spiffe://mesh.example/ecs/sidecar"], 10).write(pki.dir.path(), "client");
    let daemon = pki.daemon(true).await;
    let https = https_client(&pki.ca.pem);
    let backend = Backend::start("backend-over-mtls").await;
    let port = free_port();
    put_ok(&https, &daemon, "sidecar", &example_bundle("sidecar.json", "1", port, backend.port)).await;

    let node = "sidecar-mtls";
    let xds_port = daemon.xds_addr.port();
    let envoy = Envoy::start_with_bootstrap(node, |admin| mtls_bootstrap_yaml(xds_port, admin, pki.dir.path()));
    // Over TLS only: the daemon speaks nothing else, so this is the mTLS stream.
    wait_for_body(port, "/", "backend-over-mtls", CONVERGE).await;
    assert_eq!(envoy.stat("control_plane.connected_state").await, 1);
    assert!(envoy.stat("cluster.xds_cluster.ssl.handshake").await >= 1, "Envoy's xDS connection is TLS");
    let nodes: Value = https.get(daemon.https_url("/nodes")).send().await.expect("GET /nodes").json().await.expect("JSON");
    let streams = nodes["streams"].as_array().cloned().unwrap_or_default();
    assert!(streams.iter().any(|s| s["node_id"] == node && s["service"] == "ads"), "{nodes}");
}

#[tokio::test]
async fn xds_refuses_a_client_certificate_from_another_ca_and_a_client_without_one() {
    let pki = Pki::new();
    let daemon = pki.daemon(true).await;
    let good = pki.ca.client(&["sidecar.xds.internal"], 20);
    // The probe works: a certificate from the daemon's CA gets HTTP/2 SETTINGS.
    assert!(http2_hello(daemon.xds_addr, pki.client(Some(&good))).await.is_ok_and(|n| n > 0));

    let stranger = Ca::new("another CA").client(&["sidecar.xds.internal"], 21);
    for (who, identity) in [("a certificate from another CA", Some(&stranger)), ("no certificate", None)] {
        let refused = http2_hello(daemon.xds_addr, pki.client(identity)).await;
        let error = refused.expect_err(&format!("xDS accepted a client with {who}"));
        assert!(error.contains("alert"), "{who}: expected a TLS alert, got {error}");
        // And a gRPC client gets no stream either.
        let channel = grpc_channel(daemon.xds_addr, pki.client(identity)).await;
        if let Ok(channel) = channel {
            let status = XdsClient::ads_on(channel, request("sidecar-app1", LDS, &[])).await.err();
            assert!(status.is_some(), "{who}: an ADS stream was served");
        }
    }
}

#[tokio::test]
async fn a_node_id_its_certificate_does_not_name_is_refused_with_permission_denied() {
    let pki = Pki::new();
    let daemon = pki.daemon(true).await;
    let https = https_client(&pki.ca.pem);
    put_ok(&https, &daemon, "sidecar", &sidecar_bundle("1", 10000, 10001)).await;
    put_ok(&https, &daemon, "gateway", &sidecar_bundle("1", 10000, 10001)).await;

    // A DNS SAN's first label names the node type: this one may be a gateway only.
    let gateway = pki.ca.client(&["gateway.xds.internal"], 30);
    let channel = grpc_channel(daemon.xds_addr, pki.client(Some(&gateway))).await.expect("TLS channel");
    let status = XdsClient::ads_on(channel.clone(), request("sidecar-app1", LDS, &[])).await.err().expect("refused");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(
        status.message(),
        r#"node id "sidecar-app1" is of node type "sidecar", but the client certificate names node types: gateway"#
    );
    // The same connection serves the node type the certificate names (R14: LDS wildcard).
    let mut served = XdsClient::ads_on(channel, request("gateway-app1", LDS, &[])).await.expect("gateway served");
    assert_eq!(names(&served.recv().await), ["listener_0"]);

    // A URI SAN's last path segment names it too.
    let sidecar = pki.ca.client(&["spiffe://mesh.example/ecs/sidecar"], 31);
    let channel = grpc_channel(daemon.xds_addr, pki.client(Some(&sidecar))).await.expect("TLS channel");
    let mut served = XdsClient::ads_on(channel.clone(), request("sidecar-app1", LDS, &[])).await.expect("sidecar served");
    assert_eq!(names(&served.recv().await), ["listener_0"]);
    let status = XdsClient::ads_on(channel, request("gateway-app1", LDS, &[])).await.err().expect("refused");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
}

/// REST xDS is a read on the xDS port, held to the same identity check as a
/// gRPC stream: a poll for a node type the certificate does not name is 403.
#[tokio::test]
async fn rest_discovery_serves_only_the_node_types_the_client_certificate_names() {
    let pki = Pki::new();
    let daemon = pki.daemon(true).await;
    let https = https_client(&pki.ca.pem);
    put_ok(&https, &daemon, "sidecar", &sidecar_bundle("1", 10000, 10001)).await;
    put_ok(&https, &daemon, "gateway", &sidecar_bundle("1", 10000, 10001)).await;

    let gateway = pki.ca.client(&["gateway.xds.internal"], 40);
    let identity = reqwest::Identity::from_pem(format!("{}{}", gateway.cert_pem, gateway.key_pem).as_bytes()).expect("client identity");
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .no_proxy()
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca.pem.as_bytes()).expect("CA"))
        .identity(identity)
        .build()
        .expect("client");
    let poll = |node_id: &str| {
        let body = serde_json::json!({"node": {"id": node_id}}).to_string();
        client.post(format!("https://{}/v3/discovery:listeners", daemon.xds_addr)).body(body).send()
    };
    let refused = poll("sidecar-app1").await.expect("POST over mutual TLS");
    assert_eq!(refused.status(), 403);
    let error: Value = refused.json().await.expect("JSON");
    assert_eq!(
        error["error"],
        r#"node id "sidecar-app1" is of node type "sidecar", but the client certificate names node types: gateway"#
    );
    let served = poll("gateway-app1").await.expect("POST over mutual TLS");
    assert_eq!((served.version(), served.status().as_u16()), (http::Version::HTTP_2, 200));
    let served: Value = served.json().await.expect("JSON");
    assert_eq!(served["resources"][0]["name"], "listener_0");
}

#[tokio::test]
async fn rest_serves_tls_with_h2_and_http1_and_plaintext_to_a_tls_port_fails() {
    let pki = Pki::new();
    // With a client CA for xDS: REST still asks no client certificate.
    let daemon = pki.daemon(true).await;
    let https = https_client(&pki.ca.pem);
    put_ok(&https, &daemon, "sidecar", &sidecar_bundle("7", 10000, 10001)).await;
    let response = https.get(daemon.https_url("/resources/sidecar")).send().await.expect("GET over TLS");
    assert_eq!(response.version(), http::Version::HTTP_2, "ALPN h2");
    let bundle: Value = response.json().await.expect("JSON");
    assert_eq!(bundle["version"], "7");

    let http1 = reqwest::Client::builder()
        .use_rustls_tls()
        .http1_only()
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca.pem.as_bytes()).expect("CA"))
        .build()
        .expect("client");
    let response = http1.get(daemon.https_url("/healthz")).send().await.expect("HTTP/1.1 over TLS");
    assert_eq!((response.version(), response.status().as_u16()), (http::Version::HTTP_11, 200));

    // Plaintext to either TLS port is not served.
    let plain = reqwest::Client::builder().no_proxy().timeout(BOUND).build().expect("client");
    assert!(plain.get(daemon.url("/healthz")).send().await.is_err(), "plaintext HTTP answered on the TLS REST port");
    let channel = Channel::from_shared(daemon.xds_url()).expect("URL").connect_lazy();
    let status = XdsClient::ads_on(channel, request("sidecar-app1", LDS, &[])).await.err();
    assert!(status.is_some(), "plaintext gRPC served on the TLS xDS port");
}

/// The value of the TLS metric `name` for `file` in the daemon's `/metrics`.
async fn tls_metric(pki: &Pki, daemon: &TestDaemon, name: &str, file: &str) -> Option<i64> {
    let text = https_client(&pki.ca.pem).get(daemon.https_url("/metrics")).send().await.expect("GET /metrics").text().await.expect("text");
    let series = format!("sxds_{name}{{file=\"{file}\"}} ");
    text.lines().find_map(|line| line.strip_prefix(&series)).map(|value| value.parse().expect("an integer gauge"))
}

/// Writes `issued` over the daemon's certificate and key.
fn rotate(dir: &Path, issued: &Issued) {
    issued.write(dir, "server");
}

#[tokio::test]
async fn a_rotated_certificate_is_served_without_restart_and_a_broken_one_keeps_the_last_good() {
    let pki = Pki::new();
    let daemon = pki.daemon(false).await;
    let serial = || async { peer_serial(&connect(daemon.xds_addr, pki.client(None)).await.expect("TLS handshake")) };
    assert_eq!(serial().await, 1);
    let expires = || tls_metric(&pki, &daemon, "tls_not_after_seconds", "certificate");
    let failing = || tls_metric(&pki, &daemon, "tls_reload_failing", "certificate");
    assert_eq!((expires().await, failing().await), (Some(expiry(1)), Some(0)), "the metrics show the certificate in use");

    rotate(pki.dir.path(), &pki.ca.server(2));
    wait_for("a new handshake to present serial 2", BOUND, || async { serial().await == 2 }).await;
    // REST shares the certificate.
    let rest = connect(daemon.rest_addr, pki.client(None)).await.expect("REST handshake");
    assert_eq!(peer_serial(&rest), 2);

    // A broken file: the last good certificate keeps serving.
    std::fs::write(pki.path("server.pem"), "-----BEGIN CERTIFICATE-----\nnot base64\n").expect("write");
    for _ in 0..3 {
        assert_eq!(serial().await, 2);
    }
    assert_eq!((expires().await, failing().await), (Some(expiry(2)), Some(1)), "the metrics show the broken file and the certificate still served");
    rotate(pki.dir.path(), &pki.ca.server(3));
    wait_for("a new handshake to present serial 3", BOUND, || async { serial().await == 3 }).await;
    assert_eq!((expires().await, failing().await), (Some(expiry(3)), Some(0)));
}

/// Writes the daemon's client CA file: the concatenated PEMs of `cas`.
fn write_client_ca(pki: &Pki, cas: &[&Ca]) {
    let pem: String = cas.iter().map(|ca| ca.pem.as_str()).collect();
    std::fs::write(pki.path("ca.pem"), pem).expect("write the client CA file");
}

#[tokio::test]
async fn a_rotated_client_ca_verifies_without_restart_and_a_broken_one_keeps_the_last_good() {
    let pki = Pki::new();
    let daemon = pki.daemon(true).await;
    let next = Ca::new("next client CA");
    let (old_client, new_client) = (pki.ca.client(&["sidecar.xds.internal"], 40), next.client(&["sidecar.xds.internal"], 41));
    let addr = daemon.xds_addr;
    let accepted = |identity: &Issued| {
        let config = pki.client(Some(identity));
        async move { http2_hello(addr, config).await.is_ok() }
    };
    assert!(accepted(&old_client).await, "a certificate from the CA the daemon started with");
    assert!(!accepted(&new_client).await, "a certificate from a CA not listed yet");

    // A rotation, step one: both CAs listed.
    write_client_ca(&pki, &[&pki.ca, &next]);
    wait_for("a certificate from the added CA to be accepted", BOUND, || accepted(&new_client)).await;
    assert!(accepted(&old_client).await, "the old CA verifies while it is listed");

    // Step two: the old CA goes.
    write_client_ca(&pki, &[&next]);
    wait_for("a certificate from the removed CA to be refused", BOUND, || async { !accepted(&old_client).await }).await;
    assert!(accepted(&new_client).await);

    // A file that does not load: the last good CA keeps verifying, and the metric says so.
    let failing = || tls_metric(&pki, &daemon, "tls_reload_failing", "client_ca");
    assert_eq!(failing().await, Some(0));
    std::fs::write(pki.path("ca.pem"), "-----BEGIN CERTIFICATE-----\nnot base64\n").expect("write");
    for _ in 0..3 {
        assert!(accepted(&new_client).await, "the last good CA still verifies");
        assert!(!accepted(&old_client).await, "a broken file does not bring back the removed CA");
    }
    assert_eq!(failing().await, Some(1));
    // And the next good file is taken.
    write_client_ca(&pki, &[&pki.ca]);
    wait_for("the CA listed again to verify", BOUND, || accepted(&old_client)).await;
    assert!(!accepted(&new_client).await);
    assert_eq!(failing().await, Some(0));
    assert!(tls_metric(&pki, &daemon, "tls_not_after_seconds", "client_ca").await.is_some_and(|t| t > 0), "the CA's expiry shows");
}

#[tokio::test]
async fn a_client_that_never_sends_its_hello_is_cut_off_after_the_handshake_timeout_and_stops_nobody() {
    let pki = Pki::new();
    let daemon = pki.daemon(false).await;
    let mut silent = Vec::new();
    for addr in [daemon.xds_addr, daemon.rest_addr] {
        silent.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
    }
    // Each handshake waits in its own task: others are served meanwhile.
    assert!(http2_hello(daemon.xds_addr, pki.client(None)).await.is_ok_and(|n| n > 0));
    let response = https_client(&pki.ca.pem).get(daemon.https_url("/healthz")).send().await.expect("GET");
    assert!(response.status().is_success());
    // Then the silent ones are closed (the timeout is 10 s; the bound leaves room).
    let bound = sxds::net::tls::HANDSHAKE_TIMEOUT + BOUND;
    for mut socket in silent {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(bound, socket.read(&mut byte)).await.expect("the silent connection was not closed");
        assert!(matches!(read, Ok(0) | Err(_)), "the server sent bytes to a client that never said hello: {read:?}");
    }
}

#[tokio::test]
async fn health_says_serving_then_not_serving_at_shutdown_and_reflection_describes_ads() {
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest,
        server_reflection_response::MessageResponse, ServerReflectionRequest,
    };
    let daemon = TestDaemon::start().await;
    let channel = Channel::from_shared(daemon.xds_url()).expect("URL").connect().await.expect("connect");

    let mut health = HealthClient::new(channel.clone());
    for service in ["", ADS, "envoy.service.endpoint.v3.EndpointDiscoveryService"] {
        let answer = health.check(HealthCheckRequest { service: service.into() }).await.expect("Check").into_inner();
        assert_eq!(answer.status(), ServingStatus::Serving, "{service:?}");
    }
    let unknown = health.check(HealthCheckRequest { service: "no.such.Service".into() }).await.expect_err("unknown service");
    assert_eq!(unknown.code(), Code::NotFound);

    // Reflection: list, then the file that defines ADS.
    let requests = [MessageRequest::ListServices(String::new()), MessageRequest::FileContainingSymbol(ADS.into())]
        .map(|message_request| ServerReflectionRequest { host: String::new(), message_request: Some(message_request) });
    let mut answers =
        ServerReflectionClient::new(channel.clone()).server_reflection_info(tokio_stream::iter(requests)).await.expect("reflection").into_inner();
    let listed = match answers.next().await.expect("list answer").expect("list").message_response {
        Some(MessageResponse::ListServicesResponse(list)) => list.service.into_iter().map(|s| s.name).collect::<Vec<_>>(),
        other => panic!("expected a service list, got {other:?}"),
    };
    for service in [ADS, "envoy.service.listener.v3.ListenerDiscoveryService", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"] {
        assert!(listed.iter().any(|s| s == service), "{service} not listed: {listed:?}");
    }
    let files = match answers.next().await.expect("file answer").expect("file").message_response {
        Some(MessageResponse::FileDescriptorResponse(files)) => files.file_descriptor_proto,
        other => panic!("expected descriptors, got {other:?}"),
    };
    let ads = prost_reflect::prost_types::FileDescriptorProto::decode(files[0].as_slice()).expect("a FileDescriptorProto");
    assert_eq!(ads.name(), "envoy/service/discovery/v3/ads.proto");
    assert_eq!(ads.service[0].name(), "AggregatedDiscoveryService");

    // The v1alpha service answers too (older grpcurl).
    use tonic_reflection::pb::v1alpha as alpha;
    let request = alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(alpha::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut answers = alpha::server_reflection_client::ServerReflectionClient::new(channel.clone())
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("v1alpha reflection")
        .into_inner();
    assert!(matches!(
        answers.next().await.expect("answer").expect("list").message_response,
        Some(alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) if list.service.iter().any(|s| s.name == ADS)
    ));

    // Methods sxds does not serve still fall back to UNIMPLEMENTED.
    let lrs = LoadReportingServiceClient::new(channel.clone()).stream_load_stats(tokio_stream::iter(vec![])).await;
    assert_eq!(lrs.err().map(|s| s.code()), Some(Code::Unimplemented));

    // A watcher sees NOT_SERVING once shutdown starts, then its stream ends.
    let mut watch = health.watch(HealthCheckRequest { service: String::new() }).await.expect("Watch").into_inner();
    assert_eq!(watch.next().await.expect("a status").expect("status").status(), ServingStatus::Serving);
    let stopping = tokio::spawn(daemon.stop());
    let next = tokio::time::timeout(BOUND, watch.next()).await.expect("a status at shutdown");
    assert_eq!(next.expect("a status").expect("status").status(), ServingStatus::NotServing);
    let end = tokio::time::timeout(BOUND, watch.next()).await.expect("the watch ends at shutdown");
    assert!(!matches!(end, Some(Ok(_))), "the watch went on: {end:?}");
    stopping.await.expect("stop task").expect("clean stop");
}
