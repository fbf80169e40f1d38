//! The REST API against the real daemon on port 0: bundles in (JSON or
//! YAML), out, listed and deleted; every kind of bad input refused with a
//! status, a message and the field path, and nothing stored; versions;
//! durability across a restart.

mod support;

use std::time::Duration;

use envoy_types::pb::envoy::{
    config::core::v3::Node,
    service::discovery::v3::{aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DiscoveryRequest, DiscoveryResponse},
};
use serde_json::{json, Value};
use support::{sidecar_bundle, TestDaemon};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const YAML: &str = "application/yaml";
const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";

/// A REST client for one daemon: every call answers the status and the JSON
/// body (`Null` when the body is not JSON).
struct Api<'a> {
    daemon: &'a TestDaemon,
    http: reqwest::Client,
}

impl<'a> Api<'a> {
    fn new(daemon: &'a TestDaemon) -> Self {
        Self { daemon, http: reqwest::Client::new() }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let body = response.bytes().await.expect("response body");
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    async fn put_raw(&self, node_type: &str, body: impl Into<reqwest::Body>, content_type: &str) -> (u16, Value) {
        let url = self.daemon.url(&format!("/resources/{node_type}"));
        self.send(self.http.put(url).header("content-type", content_type).body(body)).await
    }

    async fn put(&self, node_type: &str, bundle: &Value) -> (u16, Value) {
        self.put_raw(node_type, bundle.to_string(), "application/json").await
    }

    async fn put_yaml(&self, node_type: &str, yaml: &str) -> (u16, Value) {
        self.put_raw(node_type, yaml.to_owned(), YAML).await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.send(self.http.get(self.daemon.url(path))).await
    }

    async fn bundle(&self, node_type: &str) -> Value {
        let (status, body) = self.get(&format!("/resources/{node_type}")).await;
        assert_eq!(status, 200, "GET {node_type}: {body}");
        body
    }

    async fn delete(&self, node_type: &str) -> (u16, Value) {
        self.send(self.http.delete(self.daemon.url(&format!("/resources/{node_type}")))).await
    }
}

fn yaml(bundle: &Value) -> String {
    serde_yaml_ng::to_string(bundle).expect("YAML")
}

fn summary(node_type: &str, version: &str, changed: bool) -> Value {
    json!({"node_type": node_type, "version": version, "changed": changed, "listeners": 1, "clusters": 1, "routes": 1, "endpoints": 1})
}

/// Asserts a 4xx JSON error naming `path` (or none), with `words` in the message.
fn assert_error(case: &str, (status, body): &(u16, Value), expected_status: u16, path: Option<&str>, words: &str) {
    assert_eq!(*status, expected_status, "{case}: {body}");
    let message = body["error"].as_str().unwrap_or_else(|| panic!("{case}: no error message in {body}"));
    assert!(message.contains(words), "{case}: {message:?} does not mention {words:?}");
    assert_eq!(body.get("path").and_then(Value::as_str), path, "{case}: {body}");
}

#[tokio::test]
async fn put_answers_a_summary_and_get_returns_the_bundle() {
    let daemon = TestDaemon::start().await;
    let api = Api::new(&daemon);
    let bundle = sidecar_bundle("v1", 10000, 8080);

    let (status, answer) = api.put("sidecar", &bundle).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer, summary("sidecar", "v1", true));

    // Canonical proto3 JSON with Envoy's snake_case names and `@type`: what was PUT.
    let stored = api.bundle("sidecar").await;
    assert_eq!(stored, bundle);
    let hcm = &stored["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
    assert_eq!(hcm["@type"], "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager");
    assert_eq!(hcm["stat_prefix"], "ingress_http");

    assert_error("GET of a node type never PUT", &api.get("/resources/gateway").await, 404, None, "gateway");
}

#[tokio::test]
async fn yaml_bundles_are_equivalent_to_json() {
    let daemon = TestDaemon::start().await;
    let api = Api::new(&daemon);
    let bundle = sidecar_bundle("v1", 10000, 8080);
    assert_eq!(api.put("sidecar", &bundle).await.1, summary("sidecar", "v1", true));

    let (status, answer) = api.put_yaml("edge", &yaml(&bundle)).await;
    assert_eq!((status, answer), (200, summary("edge", "v1", true)));
    assert_eq!(api.bundle("edge").await, api.bundle("sidecar").await);

    // The same content in YAML under the stored version is the same bundle: a no-op.
    let (status, answer) = api.put_raw("sidecar", yaml(&bundle), "application/yaml; charset=utf-8").await;
    assert_eq!((status, answer), (200, summary("sidecar", "v1", false)));

    // The content type decides the syntax: YAML sent as JSON is malformed JSON.
    let refused = api.put_raw("sidecar", yaml(&sidecar_bundle("v2", 10000, 8080)), "application/json").await;
    assert_error("YAML sent as JSON", &refused, 400, None, "malformed JSON");
}

#[tokio::test]
async fn resources_are_listed_and_deleted() {
    let daemon = TestDaemon::start().await;
    let api = Api::new(&daemon);
    assert_eq!(api.get("/resources").await, (200, json!({"node_types": [], "quarantined": []})));
    assert_eq!(api.put("sidecar", &sidecar_bundle("v1", 10000, 8080)).await.0, 200);
    assert_eq!(api.put("gateway", &sidecar_bundle("g7", 10001, 8081)).await.0, 200);

    let (status, listing) = api.get("/resources").await;
    assert_eq!(status, 200);
    let mut gateway = summary("gateway", "g7", false);
    let mut sidecar = summary("sidecar", "v1", false);
    for (entry, listed) in [&mut gateway, &mut sidecar].into_iter().zip(listing["node_types"].as_array().unwrap()) {
        entry.as_object_mut().unwrap().remove("changed");
        let bytes = listed["resource_bytes"].as_u64().expect("encoded size listed");
        assert!(bytes > 200 && bytes < 2000, "{listed}");
        entry["resource_bytes"] = bytes.into();
    }
    assert_eq!(listing, json!({"node_types": [gateway, sidecar], "quarantined": []}));

    let (status, answer) = api.delete("sidecar").await;
    assert_eq!((status, answer), (200, json!({"node_type": "sidecar", "deleted": true})));
    assert_eq!(api.get("/resources/sidecar").await.0, 404);
    assert_eq!(api.get("/resources").await.1, json!({"node_types": [gateway], "quarantined": []}));
    assert_error("DELETE twice", &api.delete("sidecar").await, 404, None, "sidecar");
    assert_error("DELETE of an unknown node type", &api.delete("nobody").await, 404, None, "nobody");
    assert_eq!(api.get("/resources/gateway").await.0, 200, "the other node type is untouched");
}

/// A bundle using extension types sxds knows nothing about by name: only the
/// descriptor pool does.
fn extensions_bundle() -> Value {
    json!({
        "version": "x1",
        "listeners": [{
            "name": "https",
            "address": {"socket_address": {"address": "0.0.0.0", "port_value": 8443}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "https",
                    "access_log": [{
                        "name": "envoy.access_loggers.file",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                            "path": "/dev/stdout",
                            "log_format": {"json_format": {"status": "%RESPONSE_CODE%", "path": "%REQ(:PATH)%"}}
                        }
                    }],
                    "route_config": {
                        "name": "inline",
                        "virtual_hosts": [{
                            "name": "api",
                            "domains": ["api.example.com"],
                            "typed_per_filter_config": {
                                "envoy.filters.http.cors": {
                                    "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy",
                                    "allow_origin_string_match": [{"exact": "https://example.com"}],
                                    "allow_methods": "GET, POST"
                                }
                            },
                            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "api", "timeout": "2.500s"}}]
                        }]
                    },
                    "http_filters": [
                        {"name": "envoy.filters.http.cors", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}},
                        {"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
                    ]
                }
            }]}]
        }],
        "clusters": [{
            "name": "api",
            "type": "STRICT_DNS",
            "connect_timeout": "0.250s",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {"max_concurrent_streams": 100}}
                }
            },
            "transport_socket": {
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                    "sni": "api.internal",
                    "common_tls_context": {"alpn_protocols": ["h2"], "validation_context": {"trusted_ca": {"filename": "/etc/ssl/ca.pem"}}}
                }
            },
            "load_assignment": {
                "cluster_name": "api",
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "api.internal", "port_value": 443}}}}]}]
            }
        }]
    })
}

#[tokio::test]
async fn any_envoy_v3_type_is_accepted_and_round_trips() {
    let daemon = TestDaemon::start().await;
    let api = Api::new(&daemon);
    let bundle = extensions_bundle();
    let (status, answer) = api.put("edge", &bundle).await;
    assert_eq!(status, 200, "{answer}");
    let counts = |changed| json!({"node_type": "edge", "version": "x1", "changed": changed, "listeners": 1, "clusters": 1, "routes": 0, "endpoints": 0});
    assert_eq!(answer, counts(true));
    assert_eq!(api.bundle("edge").await, bundle);

    // And YAML of it reads as the very same bundle.
    assert_eq!(api.put_yaml("edge", &yaml(&bundle)).await, (200, counts(false)));
}

/// A bad body, and how it must be refused.
struct BadBundle {
    case: &'static str,
    body: String,
    content_type: &'static str,
    /// The field it must be refused at; `None` when there is no field to name.
    path: Option<String>,
    /// Words the message must contain.
    words: &'static str,
}

/// Every kind of bad bundle, all at version v2 so an accepted one would show.
fn bad_bundles() -> Vec<BadBundle> {
    let good = || sidecar_bundle("v2", 10000, 8080);
    let mut cases = Vec::new();
    let mut push = |case, body: String, content_type, path: Option<&str>, words| {
        cases.push(BadBundle { case, body, content_type, path: path.map(str::to_owned), words });
    };
    let json = "application/json";
    push("malformed JSON", r#"{"version": "v2", "clusters": [{"name": "a",}]}"#.to_owned(), json, None, "malformed JSON");
    push("malformed YAML", "version: v2\nclusters: [{name: a\n".to_owned(), YAML, None, "malformed YAML");
    push("empty body", String::new(), json, None, "empty");

    let mut b = good();
    b["clusters"][0]["conect_timeout"] = json!("1s");
    push("unknown field", b.to_string(), json, Some("clusters[0].conect_timeout"), "conect_timeout");
    push("unknown field in YAML", yaml(&b), YAML, Some("clusters[0].conect_timeout"), "conect_timeout");

    let mut b = good();
    b["clusters"][0]["connect_timeout"] = json!(5);
    push("number for a duration", b.to_string(), json, Some("clusters[0].connect_timeout"), "duration");
    push("number for a duration in YAML", yaml(&b), YAML, Some("clusters[0].connect_timeout"), "duration");

    let mut b = good();
    b["listeners"][0]["address"]["socket_address"]["port_value"] = json!("abc");
    let port = Some("listeners[0].address.socket_address.port_value");
    push("text for a port", b.to_string(), json, port, "invalid");
    push("text for a port in YAML", yaml(&b), YAML, port, "invalid");

    let hcm = "listeners[0].filter_chains[0].filters[0].typed_config";
    let mut b = good();
    b["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0]["typed_config"]["@type"] =
        json!("type.googleapis.com/envoy.extensions.filters.http.router.v3.Routr");
    let type_path = format!("{hcm}.http_filters[0].typed_config.@type");
    push("unknown @type", b.to_string(), json, Some(&type_path), "envoy.extensions.filters.http.router.v3.Routr");

    let mut b = good();
    b["clusters"].as_array_mut().unwrap().push(json!({"type": "STATIC", "connect_timeout": "1s"}));
    push("resource without a name", b.to_string(), json, Some("clusters[1].name"), "name");

    let mut b = good();
    let twin = b["routes"][0].clone();
    b["routes"].as_array_mut().unwrap().push(twin);
    push("duplicate names", b.to_string(), json, Some("routes[1].name"), "duplicate");

    let mut b = good();
    b["routes"][0]["virtual_hosts"][0]["routes"][0]["route"]["cluster"] = json!("nowhere");
    let route = Some("routes[0].virtual_hosts[0].routes[0].route.cluster");
    push("route to a missing cluster", b.to_string(), json, route, "nowhere");
    push("route to a missing cluster in YAML", yaml(&b), YAML, route, "nowhere");

    let mut b = good();
    b["endpoints"] = json!([]);
    push("EDS cluster without endpoints", b.to_string(), json, Some("clusters[0].name"), "backend");

    let mut b = good();
    b["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["rds"]["route_config_name"] = json!("no_route");
    let rds = format!("{hcm}.rds.route_config_name");
    push("listener RDS name without a route", b.to_string(), json, Some(&rds), "no_route");
    cases
}

#[tokio::test]
async fn bad_bundles_are_refused_with_the_field_path_and_change_nothing() {
    let daemon = TestDaemon::start().await;
    let api = Api::new(&daemon);
    let good = sidecar_bundle("v1", 10000, 8080);
    assert_eq!(api.put("sidecar", &good).await.0, 200);

    for bad in bad_bundles() {
        let answer = api.put_raw("sidecar", bad.body, bad.content_type).await;
        assert_error(bad.case, &answer, 400, bad.path.as_deref(), bad.words);
        assert_eq!(api.bundle("sidecar").await, good, "{}: stored bundle changed", bad.case);
    }
    // Refused PUTs to a new node type create nothing either.
    for bad in bad_bundles() {
        assert_eq!(api.put_raw("fresh", bad.body, bad.content_type).await.0, 400, "{}", bad.case);
    }
    let (_, listing) = api.get("/resources").await;
    assert_eq!(listing["node_types"].as_array().map(Vec::len), Some(1), "{listing}");
    assert_eq!(listing["node_types"][0]["version"], "v1");
}

#[tokio::test]
async fn bad_node_types_are_refused() {
    let daemon = TestDaemon::start().await;
    let api = Api::new(&daemon);
    for node_type in ["side-car", "a.b!", "caf%C3%A9"] {
        let case = format!("PUT /resources/{node_type}");
        let answer = api.put(node_type, &sidecar_bundle("v1", 10000, 8080)).await;
        assert_error(&case, &answer, 400, Some("node_type"), "invalid node type");
        assert_error(&format!("GET {node_type}"), &api.get(&format!("/resources/{node_type}")).await, 400, Some("node_type"), "node type");
        assert_error(&format!("DELETE {node_type}"), &api.delete(node_type).await, 400, Some("node_type"), "node type");
    }
    assert_eq!(api.get("/resources").await.1, json!({"node_types": [], "quarantined": []}));
}

#[tokio::test]
async fn bodies_over_the_limit_are_refused_with_413() {
    let daemon = TestDaemon::start_with(|config| config.body_limit = 4096).await;
    let api = Api::new(&daemon);
    let small = sidecar_bundle("v1", 10000, 8080);
    assert!(small.to_string().len() < 4096);
    assert_eq!(api.put("sidecar", &small).await.0, 200);

    // Valid, but too big: a hundred static clusters.
    let mut big = sidecar_bundle("v2", 10000, 8080);
    let clusters = big["clusters"].as_array_mut().unwrap();
    clusters.extend((0..100).map(|i| json!({"name": format!("static_{i}"), "type": "STATIC", "connect_timeout": "1s"})));
    assert!(big.to_string().len() > 4096);
    let answer = api.put("sidecar", &big).await;
    assert_error("body over the limit", &answer, 413, None, "limit");
    assert_eq!(api.bundle("sidecar").await, small);

    // The limit is the only reason: a daemon with the default limit takes it.
    let roomy = TestDaemon::start().await;
    assert_eq!(Api::new(&roomy).put("sidecar", &big).await.0, 200);
}

#[tokio::test]
async fn versions_decide_what_is_new() {
    let daemon = TestDaemon::start().await;
    let api = Api::new(&daemon);
    let v1 = sidecar_bundle("v1", 10000, 8080);
    assert_eq!(api.put("sidecar", &v1).await, (200, summary("sidecar", "v1", true)));
    assert_eq!(api.put("sidecar", &v1).await, (200, summary("sidecar", "v1", false)));

    // A new version of the same resources is a change: Envoys get the new version.
    let v2 = sidecar_bundle("v2", 10000, 8080);
    assert_eq!(api.put("sidecar", &v2).await, (200, summary("sidecar", "v2", true)));
    assert_eq!(api.bundle("sidecar").await["version"], "v2");

    // The same version with other content would never reach an Envoy: 409.
    let conflict = api.put("sidecar", &sidecar_bundle("v2", 10000, 9090)).await;
    assert_error("same version, other content", &conflict, 409, Some("version"), "v2");
    assert_eq!(api.bundle("sidecar").await, v2);
}

#[tokio::test]
async fn versions_are_derived_from_the_content_when_missing() {
    let daemon = TestDaemon::start().await;
    let api = Api::new(&daemon);
    let mut resources = sidecar_bundle("", 10000, 8080);
    resources.as_object_mut().unwrap().remove("version");

    let (status, first) = api.put("sidecar", &resources).await;
    assert_eq!(status, 200, "{first}");
    let derived = first["version"].as_str().expect("a version").to_owned();
    assert!(derived.starts_with("sha256-"), "{derived}");
    assert_eq!(api.bundle("sidecar").await["version"], derived);

    // The same content, keys in another order, durations and field names
    // spelled otherwise: the same version, and nothing new.
    let respelled = r#"{
        "endpoints": [{"endpoints": [{"lbEndpoints": [{"endpoint": {"address": {"socketAddress": {"portValue": 8080, "address": "127.0.0.1"}}}}]}], "clusterName": "backend"}],
        "routes": [{"virtualHosts": [{"routes": [{"route": {"cluster": "backend"}, "match": {"prefix": "/"}}], "domains": ["*"], "name": "all"}], "name": "local_route"}],
        "clusters": [{"eds_cluster_config": {"eds_config": {"resource_api_version": "V3", "ads": {}}}, "connect_timeout": "1.000s", "type": "EDS", "name": "backend"}],
        "listeners": [{"filter_chains": [{"filters": [{"typed_config": {
            "http_filters": [{"typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}, "name": "envoy.filters.http.router"}],
            "rds": {"config_source": {"resource_api_version": "V3", "ads": {}}, "route_config_name": "local_route"},
            "stat_prefix": "ingress_http",
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
        }, "name": "envoy.filters.network.http_connection_manager"}]}], "address": {"socket_address": {"port_value": 10000, "address": "127.0.0.1"}}, "name": "listener_0"}]
    }"#;
    let (status, again) = api.put_raw("sidecar", respelled, "application/json").await;
    assert_eq!((status, &again["version"], &again["changed"]), (200, &json!(derived), &json!(false)), "{again}");
    let (_, from_yaml) = api.put_yaml("sidecar", &yaml(&resources)).await;
    assert_eq!((&from_yaml["version"], &from_yaml["changed"]), (&json!(derived), &json!(false)), "{from_yaml}");

    // Other content, another version.
    let mut other = sidecar_bundle("", 10000, 9090);
    other.as_object_mut().unwrap().remove("version");
    let (status, changed) = api.put("sidecar", &other).await;
    assert_eq!((status, &changed["changed"]), (200, &json!(true)), "{changed}");
    let other_version = changed["version"].as_str().unwrap();
    assert!(other_version.starts_with("sha256-") && other_version != derived, "{other_version} vs {derived}");
}

/// An ADS stream of one Envoy asking for clusters.
struct AdsStream {
    requests: mpsc::Sender<DiscoveryRequest>,
    responses: tonic::Streaming<DiscoveryResponse>,
}

impl AdsStream {
    async fn open(daemon: &TestDaemon, node_id: &str) -> Self {
        let mut client = AggregatedDiscoveryServiceClient::connect(daemon.xds_url()).await.expect("connect to xDS");
        let (requests, rx) = mpsc::channel(8);
        let first = DiscoveryRequest {
            node: Some(Node { id: node_id.to_owned(), ..Default::default() }),
            type_url: CDS.to_owned(),
            ..Default::default()
        };
        requests.send(first).await.expect("queue request");
        let responses = client.stream_aggregated_resources(ReceiverStream::new(rx)).await.expect("ADS stream").into_inner();
        Self { requests, responses }
    }

    async fn next(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(10), self.responses.message())
            .await
            .expect("a response within 10 s")
            .expect("stream ok")
            .expect("stream open")
    }

    async fn ack(&self, response: &DiscoveryResponse) {
        let ack = DiscoveryRequest {
            type_url: CDS.to_owned(),
            version_info: response.version_info.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        };
        self.requests.send(ack).await.expect("queue ACK");
    }
}

#[tokio::test]
async fn an_unchanged_put_pushes_nothing_and_a_new_version_is_pushed() {
    let daemon = TestDaemon::start().await;
    let api = Api::new(&daemon);
    assert_eq!(api.put("sidecar", &sidecar_bundle("v1", 10000, 8080)).await.1["changed"], true);
    let mut envoy = AdsStream::open(&daemon, "sidecar-1").await;
    let first = envoy.next().await;
    assert_eq!(first.version_info, "v1");
    envoy.ack(&first).await;

    assert_eq!(api.put("sidecar", &sidecar_bundle("v1", 10000, 8080)).await.1["changed"], false);
    assert_eq!(api.put("sidecar", &sidecar_bundle("v2", 10000, 8080)).await.1["changed"], true);
    // Had the no-op PUT pushed, a response would be queued ahead of v2.
    let next = envoy.next().await;
    assert_eq!(next.version_info, "v2", "the first response after the ACK is the new version");
}

#[tokio::test]
async fn puts_and_deletes_survive_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let v1 = sidecar_bundle("v1", 10000, 8080);
    let gateway = extensions_bundle();
    {
        let daemon = TestDaemon::start_in(dir.path().to_path_buf()).await;
        let api = Api::new(&daemon);
        assert_eq!(api.put("sidecar", &v1).await.0, 200);
        assert_eq!(api.put_yaml("gateway", &yaml(&gateway)).await.0, 200);
        daemon.stop().await.expect("clean stop");
    }
    {
        let daemon = TestDaemon::start_in(dir.path().to_path_buf()).await;
        let api = Api::new(&daemon);
        assert_eq!(api.bundle("sidecar").await, v1);
        assert_eq!(api.bundle("gateway").await, gateway);
        // The content hash survived too: the same bundle is still a no-op,
        // other content under the same version still a conflict.
        assert_eq!(api.put("sidecar", &v1).await, (200, summary("sidecar", "v1", false)));
        assert_eq!(api.put("sidecar", &sidecar_bundle("v1", 10000, 9090)).await.0, 409);
        assert_eq!(api.delete("gateway").await.0, 200);
        daemon.stop().await.expect("clean stop");
    }
    let daemon = TestDaemon::start_in(dir.path().to_path_buf()).await;
    let api = Api::new(&daemon);
    assert_eq!(api.get("/resources/gateway").await.0, 404, "the DELETE persisted");
    assert_eq!(api.bundle("sidecar").await, v1);
    let (_, listing) = api.get("/resources").await;
    assert_eq!(listing["node_types"].as_array().map(Vec::len), Some(1), "{listing}");
}

#[tokio::test]
async fn a_dry_run_answers_what_would_change_per_type_and_field_and_stores_nothing() {
    let daemon = TestDaemon::start().await;
    let api = Api::new(&daemon);
    let v1 = sidecar_bundle("v1", 10000, 8080);
    let dry_run = |node_type: &str, bundle: &Value| {
        let url = daemon.url(&format!("/resources/{node_type}?dry_run=true"));
        api.send(api.http.put(url).header("content-type", "application/json").body(bundle.to_string()))
    };
    let (status, fresh) = dry_run("sidecar", &v1).await;
    assert_eq!(status, 200, "{fresh}");
    assert_eq!((fresh["dry_run"].clone(), fresh["changed"].clone(), fresh["stored_version"].clone()), (json!(true), json!(true), Value::Null));
    assert_eq!(api.get("/resources/sidecar").await.0, 404, "a dry run stores nothing");
    assert_eq!(api.put("sidecar", &v1).await.0, 200);

    let mut v2 = v1.clone();
    v2["version"] = json!("v2");
    v2["clusters"][0]["connect_timeout"] = json!("2s");
    v2["routes"] = json!([]);
    let hcm = v2["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"].as_object_mut().unwrap();
    hcm.remove("rds");
    hcm.insert("route_config".into(), json!({"name": "inline", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "backend"}}]}]}));
    let (status, answer) = dry_run("sidecar", &v2).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!((answer["stored_version"].clone(), answer["version"].clone(), answer["conflict"].clone()), (json!("v1"), json!("v2"), json!(false)));
    let types: Vec<&Value> = answer["types"].as_array().unwrap().iter().collect();
    let of = |key: &str| types.iter().find(|t| t["type"] == key).copied().unwrap_or_else(|| panic!("{key} in {answer}"));
    let listener_fields: Vec<&str> = of("listeners")["changed"][0]["fields"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert_eq!(listener_fields, ["filter_chains[0].filters[0].typed_config.rds", "filter_chains[0].filters[0].typed_config.route_config"], "{answer}");
    assert_eq!(of("clusters")["changed"], json!([{"name": "backend", "fields": [{"path": "connect_timeout", "old": "1s", "new": "2s"}]}]), "{answer}");
    assert_eq!(of("routes")["removed"].as_array().map(Vec::len), Some(1), "{answer}");
    assert_eq!(of("endpoints")["unchanged"], 1);
    assert_eq!(api.bundle("sidecar").await["version"], "v1", "still v1: nothing stored");

    let mut reused = v2.clone();
    reused["version"] = json!("v1");
    assert_eq!(dry_run("sidecar", &reused).await.1["conflict"], true, "the stored version with other content would be a 409");
    let bad = dry_run("sidecar", &json!({"clusters": [{"name": "a", "bogus": 1}]})).await;
    assert_eq!((bad.0, bad.1["path"].clone()), (400, json!("clusters[0].bogus")), "a dry run validates like a PUT");
}
