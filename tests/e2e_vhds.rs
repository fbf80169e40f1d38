//! VHDS with a real Envoy 1.40: a route configuration with no virtual
//! hosts of its own fetches each one on demand, over delta, when a request
//! names its host (Envoy's on-demand filter), and follows its changes.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{
    envoy::{free_port, Backend, Daemon, Envoy, Transport, CONVERGE},
    wait_for,
};

/// One request through Envoy with `host` as its Host header: the status and body.
async fn fetch_host(port: u16, host: &str) -> Result<(u16, String), String> {
    let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(5)).build().unwrap();
    let response = client.get(format!("http://127.0.0.1:{port}/")).header("host", host).send().await.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    Ok((status, response.text().await.map_err(|e| e.to_string())?))
}

fn bundle(version: &str, port: u16, app_cluster: &str, backends: &[(&str, u16)]) -> Value {
    let ads = json!({"ads": {}, "resource_api_version": "V3"});
    let delta_to_sxds = json!({"api_config_source": {"api_type": "DELTA_GRPC", "transport_api_version": "V3",
        "grpc_services": [{"envoy_grpc": {"cluster_name": "xds_cluster"}}]}, "resource_api_version": "V3"});
    json!({
        "version": version,
        "listeners": [{"name": "vhds", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "vhds",
                "rds": {"route_config_name": "vh-routes", "config_source": ads},
                "http_filters": [
                    {"name": "envoy.filters.http.on_demand", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.on_demand.v3.OnDemand"}},
                    {"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
                ]
            }}]}]}],
        "routes": [{"name": "vh-routes", "vhds": {"config_source": delta_to_sxds}}],
        "virtual_hosts": [
            {"name": "vh-routes/app", "domains": ["app.example"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": app_cluster}}]}
        ],
        "clusters": backends.iter().map(|(name, port)| json!({"name": name, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}})).collect::<Vec<_>>()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtual_hosts_are_fetched_on_demand_over_delta_and_follow_changes() {
    let (a, b) = (Backend::start("backend-A").await, Backend::start("backend-B").await);
    let (port, node) = (free_port(), "sidecar-vhds");
    let backends = [("a", a.port), ("b", b.port)];
    let daemon = Daemon::start().await;
    daemon.put_ok("sidecar", &bundle("1", port, "a", &backends)).await;
    let envoy = Envoy::start(Transport::Ads, daemon.xds_port, node);
    daemon.wait_acked(node, &["listeners", "routes"], "1", CONVERGE).await;

    // The first request for the host pulls its virtual host in.
    wait_for("app.example to be routed to backend A", CONVERGE, || async {
        fetch_host(port, "app.example").await.is_ok_and(|answer| answer == (200, "backend-A".to_owned()))
    })
    .await;
    let streams = daemon.streams(node).await;
    let vhds = streams.iter().find(|s| s["service"] == "vhds").expect("a VHDS stream in GET /nodes");
    assert_eq!((vhds["protocol"].as_str(), vhds["types"]["virtual_hosts"]["acked_version"].as_str()), (Some("delta"), Some("1")));

    // A host no virtual host serves is answered (no resource): Envoy says 404.
    wait_for("other.example to be a 404", CONVERGE, || async { fetch_host(port, "other.example").await.is_ok_and(|(status, _)| status == 404) }).await;

    // The subscribed virtual host follows the bundle.
    daemon.put_ok("sidecar", &bundle("2", port, "b", &backends)).await;
    wait_for("app.example to move to backend B", CONVERGE, || async {
        fetch_host(port, "app.example").await.is_ok_and(|answer| answer == (200, "backend-B".to_owned()))
    })
    .await;
    let stats = envoy.stats().await;
    let bad: Vec<_> = stats.iter().filter(|(name, value)| (name.ends_with("update_rejected") || name.ends_with("init_fetch_timeout")) && **value > 0).collect();
    assert!(bad.is_empty(), "an update was rejected or waited for: {bad:?}; streams: {:?}", daemon.streams(node).await);
}
