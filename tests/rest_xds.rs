//! REST xDS (R34) against the real daemon on port 0: `POST
//! /v3/discovery:{type}` on the xDS port with a JSON `DiscoveryRequest`,
//! the canonical JSON `DiscoveryResponse` back; a poll that holds the current
//! version is held until a PUT changes the bundle, and answered 304 when the
//! hold ends; bad requests are refused naming the field. Rules cited are
//! ../shared/xds-protocol.md's.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{wait_for, TestDaemon};

const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const ENDPOINTS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

/// How long an answer that is due at once may take to arrive: far less than
/// the holds these tests configure, so an answer within it was not held.
const PROMPT: Duration = Duration::from_secs(10);

/// A daemon whose current polls are held for `hold`.
async fn daemon(hold: Duration) -> TestDaemon {
    TestDaemon::start_with(|config| config.rest_xds_hold = hold).await
}

/// A bundle of EDS clusters (each with its endpoints and a route
/// configuration `route_<name>`) behind one listener using the first route.
fn bundle(version: &str, clusters: &[&str]) -> Value {
    let eds = json!({"ads": {}, "resource_api_version": "V3"});
    json!({
        "version": version,
        "listeners": [{
            "name": "listener_0",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10000}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "ingress",
                    "rds": {"route_config_name": format!("route_{}", clusters[0]), "config_source": eds},
                    "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
                }
            }]}]
        }],
        "clusters": clusters.iter().map(|name| json!({
            "name": name, "type": "EDS", "connect_timeout": "1s", "eds_cluster_config": {"eds_config": eds}
        })).collect::<Vec<_>>(),
        "routes": clusters.iter().map(|name| json!({
            "name": format!("route_{name}"),
            "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": name}}]}]
        })).collect::<Vec<_>>(),
        "endpoints": clusters.iter().map(|name| json!({
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 8080}}}}]}]
        })).collect::<Vec<_>>(),
    })
}

async fn put(daemon: &TestDaemon, node_type: &str, body: &Value) {
    let (status, answer) = daemon.put(node_type, body.to_string()).await;
    assert_eq!(status, 200, "PUT refused: {answer}");
}

/// An answer: status, content type and body.
#[derive(Debug)]
struct Answer {
    status: u16,
    content_type: Option<String>,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// The names of a 200's resources, by the field that names each type.
    fn names(&self) -> Vec<String> {
        assert_eq!(self.status, 200, "{self:?}");
        let json = self.json();
        let resources = json["resources"].as_array().cloned().unwrap_or_default();
        resources.iter().map(|r| r["name"].as_str().or(r["clusterName"].as_str()).expect("a name").to_owned()).collect()
    }
}

/// POSTs a raw body to `/v3/discovery:{rest}` on the xDS port (HTTP/2, as
/// Envoy's xds_cluster speaks it), with extra headers.
async fn post_raw(daemon: &TestDaemon, rest: &str, body: String, headers: &[(&str, &str)]) -> Answer {
    let http = reqwest::Client::builder().no_proxy().http2_prior_knowledge().build().expect("HTTP/2 client");
    let mut request = http.post(format!("{}/v3/discovery:{rest}", daemon.xds_url())).header("content-type", "application/json").body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = tokio::time::timeout(Duration::from_secs(60), request.send()).await.expect("answered within 60 s").expect("POST");
    let status = response.status().as_u16();
    let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).map(str::to_owned);
    Answer { status, content_type, body: response.bytes().await.expect("body").to_vec() }
}

/// A DiscoveryRequest of `node_id` holding `version`, naming `names`.
fn discovery_request(node_id: &str, version: &str, names: &[&str]) -> String {
    json!({"node": {"id": node_id, "cluster": "test"}, "version_info": version, "resource_names": names}).to_string()
}

async fn post(daemon: &TestDaemon, rest: &str, node_id: &str, version: &str, names: &[&str]) -> Answer {
    post_raw(daemon, rest, discovery_request(node_id, version, names), &[]).await
}

/// Waits until `GET /nodes` lists a REST poll of `node_id` on `service`:
/// the daemon has the request (and holds it, if it is current).
async fn wait_polling(daemon: &TestDaemon, node_id: &str, service: &str) {
    wait_for(&format!("{node_id}'s {service} poll in GET /nodes"), PROMPT, || async {
        let nodes: Value = reqwest::get(daemon.url("/nodes")).await.unwrap().json().await.unwrap();
        let streams = nodes["streams"].as_array().cloned().unwrap_or_default();
        streams.iter().any(|s| s["node_id"] == node_id && s["service"] == service && s["protocol"] == "rest")
    })
    .await;
}

#[tokio::test]
async fn r34_a_post_gets_the_canonical_json_discovery_response_with_typed_resources() {
    let daemon = daemon(Duration::from_secs(30)).await;
    put(&daemon, "sidecar", &bundle("v1", &["b", "a"])).await;

    // No version yet: answered at once, however long the hold.
    let answer = tokio::time::timeout(PROMPT, post(&daemon, "clusters", "sidecar-1", "", &[])).await.expect("answered at once");
    assert_eq!((answer.status, answer.content_type.as_deref()), (200, Some("application/json")));
    let json = answer.json();
    assert_eq!(json["versionInfo"], "v1", "the bundle version is version_info");
    assert_eq!(json["typeUrl"], CLUSTER);
    assert_eq!(answer.names(), ["a", "b"], "R14, R18: the whole set, in name order");
    // Canonical proto3 JSON: lowerCamelCase fields, `@type` on each Any,
    // durations as strings, defaults left out (no nonce: REST has none).
    let keys: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["resources", "typeUrl", "versionInfo"]);
    assert_eq!(
        json["resources"][0],
        json!({"@type": CLUSTER, "name": "a", "type": "EDS", "connectTimeout": "1s",
               "edsClusterConfig": {"edsConfig": {"ads": {}, "resourceApiVersion": "V3"}}})
    );

    let listeners = post(&daemon, "listeners", "sidecar-1", "", &["*"]).await;
    assert_eq!(listeners.names(), ["listener_0"]);
    let listener = &listeners.json()["resources"][0];
    assert_eq!((&listener["@type"], &listeners.json()["typeUrl"]), (&json!(LISTENER), &json!(LISTENER)));
    let manager = &listener["filterChains"][0]["filters"][0]["typedConfig"];
    assert_eq!(manager["@type"], "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager");
    assert_eq!(manager["rds"]["routeConfigName"], "route_b");

    // A client behind the bundle (another version, after a restart or from
    // another replica) gets the current one at once too.
    let stale = tokio::time::timeout(PROMPT, post(&daemon, "clusters", "sidecar-1", "v0", &[])).await.expect("answered at once");
    assert_eq!(stale.json()["versionInfo"], "v1");
}

#[tokio::test]
async fn r16_r19_routes_and_endpoints_by_name_and_named_listeners_and_clusters() {
    let daemon = daemon(Duration::from_secs(30)).await;
    put(&daemon, "sidecar", &bundle("v1", &["a", "b", "c"])).await;

    let endpoints = post(&daemon, "endpoints", "sidecar-1", "", &["c", "a", "missing", "a"]).await;
    assert_eq!(endpoints.json()["typeUrl"], ENDPOINTS);
    assert_eq!(endpoints.names(), ["a", "c"], "the named ones that exist, each once (R13)");
    let routes = post(&daemon, "routes", "sidecar-1", "", &["route_b"]).await;
    assert_eq!((routes.names(), &routes.json()["typeUrl"]), (vec!["route_b".to_owned()], &json!(ROUTE)));
    assert_eq!(routes.json()["resources"][0]["virtualHosts"][0]["routes"][0]["route"]["cluster"], "b");
    // Routes and endpoints take no wildcard: no names, no resources.
    let none = post(&daemon, "routes", "sidecar-1", "", &[]).await;
    assert_eq!((none.status, none.json()["versionInfo"].clone(), none.json().get("resources")), (200, json!("v1"), None));
    // R16: clients that name their clusters get those named.
    assert_eq!(post(&daemon, "clusters", "sidecar-1", "", &["b"]).await.names(), ["b"]);
}

/// Every type of the table has its path: secrets (SDS) and runtime layers
/// (RTDS) by name too. A secret goes out whole, as over gRPC SDS: only the
/// REST API's GET redacts key material.
#[tokio::test]
async fn secrets_and_runtime_layers_by_name() {
    let daemon = daemon(Duration::from_secs(30)).await;
    let mut with_more = bundle("v1", &["a"]);
    with_more["secrets"] = json!([{"name": "server-cert", "tls_certificate": {
        "certificate_chain": {"inline_string": "not-a-real-cert"}, "private_key": {"inline_string": "not-a-real-key"}}}]);
    with_more["runtimes"] = json!([{"name": "rtds-layer", "layer": {"routing.fraction": 25}}]);
    put(&daemon, "sidecar", &with_more).await;

    let secrets = post(&daemon, "secrets", "sidecar-1", "", &["server-cert", "other"]).await;
    assert_eq!(secrets.names(), ["server-cert"]);
    let secret = &secrets.json()["resources"][0];
    assert_eq!(secret["@type"], "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret");
    assert_eq!(secret["tlsCertificate"]["privateKey"]["inlineString"], "not-a-real-key");
    let runtime = post(&daemon, "runtime", "sidecar-1", "", &["rtds-layer"]).await;
    assert_eq!(runtime.names(), ["rtds-layer"]);
    assert_eq!(runtime.json()["resources"][0]["layer"]["routing.fraction"].as_f64(), Some(25.0));
    assert_eq!(runtime.json()["typeUrl"], "type.googleapis.com/envoy.service.runtime.v3.Runtime");
}

#[tokio::test]
async fn a_current_poll_is_held_until_a_put_changes_the_bundle_and_answered_with_the_new_version() {
    let daemon = daemon(Duration::from_secs(50)).await;
    put(&daemon, "sidecar", &bundle("v1", &["a"])).await;

    let poll = tokio::spawn({
        let body = discovery_request("sidecar-held", "v1", &[]);
        let daemon_xds = daemon.xds_url();
        async move {
            let http = reqwest::Client::builder().no_proxy().http2_prior_knowledge().build().unwrap();
            let response = http.post(format!("{daemon_xds}/v3/discovery:clusters")).body(body).send().await.expect("POST");
            (response.status().as_u16(), response.json::<Value>().await.unwrap_or(Value::Null))
        }
    });
    wait_polling(&daemon, "sidecar-held", "cds").await;
    assert!(!poll.is_finished(), "a poll holding the current version was answered at once");
    put(&daemon, "sidecar", &bundle("v2", &["a", "new"])).await;

    // Well before the 50 s hold ends: the PUT ended it.
    let (status, answer) = tokio::time::timeout(PROMPT, poll).await.expect("answered on the PUT").expect("poll task");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["versionInfo"], "v2");
    let names: Vec<&str> = answer["resources"].as_array().unwrap().iter().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(names, ["a", "new"]);
}

#[tokio::test]
async fn a_current_poll_gets_304_with_an_empty_body_when_the_hold_ends() {
    let daemon = daemon(Duration::from_millis(300)).await;
    put(&daemon, "sidecar", &bundle("v1", &["a"])).await;
    let answer = post(&daemon, "clusters", "sidecar-1", "v1", &[]).await;
    assert_eq!((answer.status, answer.body.len()), (304, 0), "{answer:?}");
    let answer = post(&daemon, "endpoints", "sidecar-1", "v1", &["a"]).await;
    assert_eq!(answer.status, 304);
}

#[tokio::test]
async fn the_hold_stays_under_the_timeout_the_client_announces() {
    // A 60 s hold, but this client (like Envoy with its default
    // request_timeout) says it waits one second: it is held half of that.
    let daemon = daemon(Duration::from_secs(60)).await;
    put(&daemon, "sidecar", &bundle("v1", &["a"])).await;
    let body = discovery_request("sidecar-1", "v1", &[]);
    let answer = tokio::time::timeout(PROMPT, post_raw(&daemon, "clusters", body, &[("x-envoy-expected-rq-timeout-ms", "1000")])).await;
    assert_eq!(answer.expect("answered before the client gives up").status, 304);
}

#[tokio::test]
async fn r37_a_node_type_without_a_bundle_is_never_answered_an_empty_set() {
    let short = daemon(Duration::from_millis(300)).await;
    let answer = post(&short, "listeners", "gateway-1", "", &[]).await;
    assert_eq!(answer.status, 503, "{answer:?}");
    assert!(answer.json()["error"].as_str().unwrap().contains("no bundle for node type gateway"), "{answer:?}");

    // Held like a current poll: a bundle PUT meanwhile is the answer.
    let daemon = daemon(Duration::from_secs(50)).await;
    let body = discovery_request("gateway-1", "", &[]);
    let xds = daemon.xds_url();
    let poll = tokio::spawn(async move {
        let http = reqwest::Client::builder().no_proxy().http2_prior_knowledge().build().unwrap();
        let response = http.post(format!("{xds}/v3/discovery:listeners")).body(body).send().await.expect("POST");
        (response.status().as_u16(), response.json::<Value>().await.unwrap_or(Value::Null))
    });
    wait_polling(&daemon, "gateway-1", "lds").await;
    put(&daemon, "gateway", &bundle("g1", &["a"])).await;
    let (status, answer) = tokio::time::timeout(PROMPT, poll).await.expect("answered on the PUT").expect("poll task");
    assert_eq!((status, &answer["versionInfo"]), (200, &json!("g1")), "{answer}");
}

#[tokio::test]
async fn bad_requests_get_400_naming_the_field_and_unknown_types_404() {
    let daemon = daemon(Duration::from_millis(300)).await;
    put(&daemon, "sidecar", &bundle("v1", &["a"])).await;
    let refused = |body: &str| {
        let body = body.to_owned();
        let daemon = &daemon;
        async move {
            let answer = post_raw(daemon, "clusters", body.clone(), &[]).await;
            assert_eq!(answer.status, 400, "{body}: {answer:?}");
            let json = answer.json();
            assert!(json["error"].as_str().is_some_and(|e| !e.is_empty()), "{json}");
            json
        }
    };
    assert_eq!(refused(r#"{"node": {"id": "sidecar-1"}, "resource_names": 3}"#).await["path"], "resource_names");
    let unknown = refused(r#"{"node": {"id": "sidecar-1"}, "colour": "red"}"#).await;
    assert_eq!(unknown["path"], "colour", "{unknown}");
    assert_eq!(refused(r#"{"node": {"id": ["sidecar-1"]}}"#).await["path"], "node.id");
    assert_eq!(refused(r#"{"version_info": "v1"}"#).await["path"], "node.id", "the node type comes from node.id");
    let wrong_type = refused(&json!({"node": {"id": "sidecar-1"}, "type_url": LISTENER}).to_string()).await;
    assert_eq!(wrong_type["path"], "type_url");
    let malformed = refused("{\"node\": ").await;
    assert!(malformed["error"].as_str().unwrap().contains("malformed JSON") && malformed.get("path").is_none(), "{malformed}");

    for path in ["nonsense", "vhds"] {
        let answer = post(&daemon, path, "sidecar-1", "", &[]).await;
        assert_eq!(answer.status, 404, "{path}: {answer:?}");
        let error = answer.json()["error"].as_str().unwrap().to_owned();
        assert!(error.contains(&format!("/v3/discovery:{path}")) && error.contains("/v3/discovery:clusters"), "{error}");
    }
}

#[tokio::test]
async fn a_held_poll_is_answered_304_at_shutdown_and_does_not_hold_it_open() {
    let daemon = daemon(Duration::from_secs(50)).await;
    put(&daemon, "sidecar", &bundle("v1", &["a"])).await;
    let body = discovery_request("sidecar-stop", "v1", &[]);
    let xds = daemon.xds_url();
    let poll = tokio::spawn(async move {
        let http = reqwest::Client::builder().no_proxy().http2_prior_knowledge().build().unwrap();
        http.post(format!("{xds}/v3/discovery:clusters")).body(body).send().await.map(|r| r.status().as_u16())
    });
    wait_polling(&daemon, "sidecar-stop", "cds").await;
    // `stop` insists on an exit within 20 s; the hold is 50 s.
    daemon.stop().await.expect("clean stop");
    let status = tokio::time::timeout(PROMPT, poll).await.expect("answered").expect("poll task");
    assert_eq!(status.expect("an answer, not a reset"), 304);
}

#[tokio::test]
async fn pollers_are_listed_in_get_nodes_with_the_version_they_hold_and_counted_in_metrics() {
    let daemon = daemon(Duration::from_millis(200)).await;
    put(&daemon, "sidecar", &bundle("v1", &["a"])).await;
    assert_eq!(post(&daemon, "clusters", "sidecar-rest", "", &[]).await.status, 200);
    // The next poll names the version: the client applied it (REST's ACK).
    assert_eq!(post(&daemon, "clusters", "sidecar-rest", "v1", &[]).await.status, 304);

    let nodes: Value = reqwest::get(daemon.url("/nodes")).await.unwrap().json().await.unwrap();
    let streams: Vec<&Value> = nodes["streams"].as_array().unwrap().iter().filter(|s| s["node_id"] == "sidecar-rest").collect();
    assert_eq!(streams.len(), 1, "one entry per node id and type: {nodes}");
    assert_eq!((&streams[0]["service"], &streams[0]["protocol"], &streams[0]["node_type"]), (&json!("cds"), &json!("rest"), &json!("sidecar")));
    let clusters = &streams[0]["types"]["clusters"];
    assert_eq!((&clusters["sent_version"], &clusters["acked_version"]), (&json!("v1"), &json!("v1")), "{clusters}");

    let metrics = reqwest::get(daemon.url("/metrics")).await.unwrap().text().await.unwrap();
    for (code, count) in [("200", "1"), ("304", "1")] {
        let line = format!("sxds_rest_requests_total{{type=\"clusters\",code=\"{code}\"}} {count}");
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
}

#[tokio::test]
async fn a_poll_reporting_a_rejection_is_recorded_and_not_answered_the_same_version_again_r6_r7() {
    let daemon = daemon(Duration::from_millis(300)).await;
    put(&daemon, "sidecar", &bundle("v2", &["a"])).await;
    // It holds v1 and rejected what came next: not sent v2 again in a loop.
    let body = json!({"node": {"id": "sidecar-nack"}, "version_info": "v1", "error_detail": {"code": 13, "message": "cluster a: bad"}});
    let answer = post_raw(&daemon, "clusters", body.to_string(), &[]).await;
    assert_eq!(answer.status, 304, "{answer:?}");
    let nodes: Value = reqwest::get(daemon.url("/nodes")).await.unwrap().json().await.unwrap();
    let stream = nodes["streams"].as_array().unwrap().iter().find(|s| s["node_id"] == "sidecar-nack").cloned().expect("listed");
    assert_eq!(stream["types"]["clusters"]["rejected"]["error"], "cluster a: bad", "{stream}");
}
