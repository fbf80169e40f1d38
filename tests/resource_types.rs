//! The types beyond the core four: secrets (SDS), runtimes (RTDS),
//! extension configs (ECDS) and scoped routes (SRDS). Validated like the
//! others, their references resolved inside the bundle, served over ADS,
//! their own services and delta; key material never printed.

mod support;

use std::time::Duration;

use envoy_types::pb::envoy::{
    extensions::transport_sockets::tls::v3::Secret,
    service::{
        discovery::v3::{aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DeltaDiscoveryRequest, DeltaDiscoveryResponse},
        runtime::v3::{runtime_discovery_service_client::RuntimeDiscoveryServiceClient, Runtime},
        secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient,
    },
};
use prost::Message;
use serde_json::{json, Value};
use support::{
    xds_client::{node, request, XdsClient},
    TestDaemon,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const SDS: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
const RTDS: &str = "type.googleapis.com/envoy.service.runtime.v3.Runtime";
const ECDS: &str = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";
const SRDS: &str = "type.googleapis.com/envoy.config.route.v3.ScopedRouteConfiguration";

const KEY: &str = "-----BEGIN PRIVATE KEY-----\nnot-a-real-key\n-----END PRIVATE KEY-----\n";

/// A TLS listener whose certificate comes over SDS and whose one HTTP filter
/// config comes over ECDS, routes scoped over SRDS; the secret, a runtime
/// layer, the filter config and the scope.
fn bundle(version: &str) -> Value {
    let ads = json!({"ads": {}, "resource_api_version": "V3"});
    json!({
        "version": version,
        "listeners": [{
            "name": "tls",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10443}},
            "filter_chains": [{
                "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                    "common_tls_context": {"tls_certificate_sds_secret_configs": [{"name": "server-cert", "sds_config": ads}]}
                }},
                "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "tls",
                    "scoped_routes": {
                        "name": "scopes",
                        "scope_key_builder": {"fragments": [{"header_value_extractor": {"name": "x-scope", "index": 0}}]},
                        "rds_config_source": ads,
                        "scoped_rds": {"scoped_rds_config_source": ads}
                    },
                    "http_filters": [
                        {"name": "add-header", "config_discovery": {"config_source": ads, "type_urls": ["type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation"]}},
                        {"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
                    ]
                }}]
            }]
        }],
        "routes": [{"name": "route-a", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 200}}]}]}],
        "scoped_routes": [{"name": "scope-a", "route_configuration_name": "route-a", "key": {"fragments": [{"string_key": "a"}]}}],
        "secrets": [{"name": "server-cert", "tls_certificate": {
            "certificate_chain": {"inline_string": "-----BEGIN CERTIFICATE-----\nnot-a-real-cert\n-----END CERTIFICATE-----\n"},
            "private_key": {"inline_string": KEY}
        }}],
        "runtimes": [{"name": "rtds-layer", "layer": {"routing.fraction": 25, "feature.on": true}}],
        "extension_configs": [{"name": "add-header", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
            "mutations": {"response_mutations": [{"append": {"header": {"key": "x-ecds", "value": version}}}]}
        }}]
    })
}

#[tokio::test]
async fn the_new_types_are_stored_and_served_over_ads_and_their_own_services() {
    let daemon = TestDaemon::start().await;
    let (status, answer) = daemon.put("sidecar", bundle("1").to_string()).await;
    assert_eq!(status, 200, "{answer}");

    // ADS: every new type by its type URL.
    let mut ads = XdsClient::ads(&daemon.xds_url(), request("sidecar-a", SDS, &["server-cert"])).await;
    let secrets = ads.recv().await;
    assert_eq!((secrets.type_url.as_str(), secrets.version_info.as_str()), (SDS, "1"));
    let secret = Secret::decode(secrets.resources[0].value.as_slice()).unwrap();
    assert_eq!(secret.name, "server-cert");
    for (type_url, name) in [(RTDS, "rtds-layer"), (ECDS, "add-header"), (SRDS, "scope-a")] {
        let response = ads.subscribe("sidecar-a", type_url, &[name]).await;
        assert_eq!((response.type_url.as_str(), response.resources.len()), (type_url, 1), "{type_url}");
    }

    // SDS and RTDS on their own services.
    let mut sds = XdsClient::open(&daemon.xds_url(), request("sidecar-b", "", &["server-cert"]), |channel, requests| async move {
        SecretDiscoveryServiceClient::new(channel).stream_secrets(requests).await
    })
    .await
    .unwrap();
    let response = sds.recv().await;
    let secret = Secret::decode(response.resources[0].value.as_slice()).unwrap();
    let Some(envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::secret::Type::TlsCertificate(certificate)) = secret.r#type else { panic!("a TLS certificate") };
    let key = certificate.private_key.unwrap().specifier.unwrap();
    assert_eq!(format!("{key:?}"), format!("{:?}", envoy_types::pb::envoy::config::core::v3::data_source::Specifier::InlineString(KEY.into())), "Envoy gets the key itself");
    let mut rtds = XdsClient::open(&daemon.xds_url(), request("sidecar-c", RTDS, &["rtds-layer"]), |channel, requests| async move {
        RuntimeDiscoveryServiceClient::new(channel).stream_runtime(requests).await
    })
    .await
    .unwrap();
    let layer = Runtime::decode(rtds.recv().await.resources[0].value.as_slice()).unwrap();
    assert_eq!(layer.name, "rtds-layer");

    let nodes = support::send(reqwest::Client::new().get(daemon.url("/nodes"))).await.1;
    let services: Vec<&str> = nodes["streams"].as_array().unwrap().iter().filter_map(|s| s["service"].as_str()).collect();
    assert!(services.contains(&"sds") && services.contains(&"rtds"), "{services:?}");
}

#[tokio::test]
async fn a_delta_stream_gets_a_secret_with_its_own_version_and_shows_in_get_nodes_r29() {
    let daemon = TestDaemon::start().await;
    assert_eq!(daemon.put("sidecar", bundle("1").to_string()).await.0, 200);
    let channel = tonic::transport::Channel::from_shared(daemon.xds_url()).unwrap().connect().await.unwrap();
    let (requests, rx) = mpsc::channel(8);
    let first = DeltaDiscoveryRequest {
        node: Some(node("sidecar-delta")),
        type_url: SDS.into(),
        resource_names_subscribe: vec!["server-cert".into(), "missing".into()],
        ..Default::default()
    };
    requests.send(first).await.unwrap();
    let mut responses = AggregatedDiscoveryServiceClient::new(channel).delta_aggregated_resources(ReceiverStream::new(rx)).await.unwrap().into_inner();
    let response: DeltaDiscoveryResponse = tokio::time::timeout(Duration::from_secs(10), responses.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(response.resources.len(), 1);
    let resource = &response.resources[0];
    assert_eq!((resource.name.as_str(), resource.version.len()), ("server-cert", 16), "a per-resource version");
    assert_eq!(response.removed_resources, ["missing"], "R32");
    assert_eq!(response.system_version_info, "1");
    requests.send(DeltaDiscoveryRequest { type_url: SDS.into(), response_nonce: response.nonce.clone(), ..Default::default() }).await.unwrap();

    support::wait_for("the delta ACK in GET /nodes", Duration::from_secs(10), || async {
        let nodes = support::send(reqwest::Client::new().get(daemon.url("/nodes"))).await.1;
        nodes["streams"].as_array().unwrap().iter().any(|s| s["protocol"] == "delta" && s["types"]["secrets"]["acked_version"] == "1")
    })
    .await;
}

#[tokio::test]
async fn references_to_secrets_filter_configs_and_scoped_route_configurations_resolve_inside_the_bundle() {
    let daemon = TestDaemon::start().await;
    let chain = "listeners[0].filter_chains[0]";
    let hcm = format!("{chain}.filters[0].typed_config");
    let cases: [(fn(&mut Value), String); 3] = [
        (|b| b["secrets"] = json!([]), format!("{chain}.transport_socket.typed_config.common_tls_context.tls_certificate_sds_secret_configs[0].name")),
        (|b| b["extension_configs"] = json!([]), format!("{hcm}.http_filters[0].config_discovery")),
        (|b| b["scoped_routes"][0]["route_configuration_name"] = json!("nowhere"), "scoped_routes[0].route_configuration_name".to_owned()),
    ];
    for (break_it, path) in cases {
        let mut body = bundle("1");
        break_it(&mut body);
        let (status, answer) = daemon.put("sidecar", body.to_string()).await;
        assert_eq!((status, answer["path"].as_str()), (400, Some(path.as_str())), "{answer}");
    }
    let (status, _) = support::send(reqwest::Client::new().get(daemon.url("/resources/sidecar"))).await;
    assert_eq!(status, 404, "nothing was stored");
}

#[tokio::test]
async fn key_material_is_redacted_in_get_and_kept_in_the_store() {
    let daemon = TestDaemon::start().await;
    let mut body = bundle("1");
    // An inline client certificate in a cluster's TLS context is key material too.
    body["clusters"] = json!([{"name": "upstream", "connect_timeout": "1s", "transport_socket": {"name": "tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": {"tls_certificates": [{"private_key": {"inline_string": KEY}, "certificate_chain": {"inline_string": "chain"}}]}
    }}}]);
    assert_eq!(daemon.put("sidecar", body.to_string()).await.0, 200);
    let (status, stored) = support::send(reqwest::Client::new().get(daemon.url("/resources/sidecar"))).await;
    assert_eq!(status, 200);
    let text = stored.to_string();
    assert!(!text.contains("not-a-real-key"), "a private key was printed: {text}");
    assert_eq!(stored["secrets"][0]["tls_certificate"]["private_key"]["inline_string"], "[redacted]");
    assert_eq!(stored["secrets"][0]["tls_certificate"]["certificate_chain"]["inline_string"].as_str().map(|c| c.contains("not-a-real-cert")), Some(true), "certificates are not secret");
    let tls = &stored["clusters"][0]["transport_socket"]["typed_config"]["common_tls_context"]["tls_certificates"][0];
    assert_eq!((tls["private_key"]["inline_string"].as_str(), tls["certificate_chain"]["inline_string"].as_str()), (Some("[redacted]"), Some("chain")));

    // The store keeps the key, and Envoy is served it.
    let mut sds = XdsClient::ads(&daemon.xds_url(), request("sidecar-a", SDS, &["server-cert"])).await;
    let secret = sds.recv().await;
    assert!(String::from_utf8_lossy(&secret.resources[0].value).contains("not-a-real-key"));
}
