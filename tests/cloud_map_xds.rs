//! Issue #10 at the xDS level, against the Cloud Map emulator (moto): a
//! change in Cloud Map reaches ADS streams as EDS alone, under a version
//! naming the bundle and the revision (R4: versions are per type); on etcd,
//! two replicas polling the same Cloud Map serve the same bytes under the
//! same version.

mod support;

use std::{sync::Once, time::Duration};

use envoy_types::pb::envoy::{config::endpoint::v3::ClusterLoadAssignment, service::discovery::v3::DiscoveryResponse};
use prost::Message;
use serde_json::{json, Value};
use support::{
    cloud_map::{Admin, Emulator, Service, IPV4, PORT},
    xds_client::{request, XdsClient, CDS, EDS},
    TestDaemon,
};

/// The SDK reads its region and credentials from the environment, once per
/// daemon start: set them before any daemon of this binary starts.
fn aws_environment() {
    static SET: Once = Once::new();
    SET.call_once(|| {
        // SAFETY: called first in every test of this binary, before any daemon
        // (or other thread reading the environment) is started.
        unsafe {
            std::env::set_var("AWS_REGION", support::cloud_map::TEST_REGION);
            std::env::set_var("AWS_ACCESS_KEY_ID", "test");
            std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
        }
    });
}

fn bundle(version: &str) -> Value {
    json!({
        "version": version,
        "clusters": [{"name": "backend", "type": "EDS", "connect_timeout": "1s", "eds_cluster_config": {"eds_config": {"ads": {}}}}],
        "endpoint_sources": [{"cluster_name": "backend", "cloud_map": {"namespace": "prod.local", "service": "backend", "port_attribute": "AWS_INSTANCE_PORT"}}],
    })
}

async fn daemon(emulator: &Emulator, store: Option<sxds::config::EtcdEndpoints>) -> TestDaemon {
    let endpoint = emulator.endpoint_url();
    TestDaemon::start_with(move |config| {
        config.cloud_map_endpoint = Some(endpoint);
        config.cloud_map_interval = Duration::from_millis(100);
        config.store = store;
    })
    .await
}

async fn register(service: &Service, id: &str, port: &str) {
    service.register(id, &[(IPV4, "127.0.0.1"), (PORT, port)]).await;
}

fn endpoints(response: &DiscoveryResponse) -> usize {
    let cla = ClusterLoadAssignment::decode(&response.resources[0].value[..]).expect("a ClusterLoadAssignment");
    cla.endpoints.iter().map(|l| l.lb_endpoints.len()).sum()
}

/// Subscribes CDS (wildcard) and EDS `backend` on one ADS stream and
/// answers the EDS response once it has `count` endpoints.
async fn subscribed(daemon: &TestDaemon, node_id: &str, count: usize) -> (XdsClient, DiscoveryResponse) {
    let mut client = XdsClient::ads(&daemon.xds_url(), request(node_id, CDS, &[])).await;
    let clusters = client.recv_acked(&[]).await;
    assert_eq!(clusters.type_url, CDS);
    let mut eds = client.subscribe(node_id, EDS, &["backend"]).await;
    while endpoints(&eds) != count {
        eds = client.recv_acked(&["backend"]).await;
        assert_eq!(eds.type_url, EDS, "only EDS moves");
    }
    (client, eds)
}

#[tokio::test]
async fn a_cloud_map_change_is_pushed_as_eds_alone_under_the_bundle_version_plus_the_revision() {
    aws_environment();
    let Some(emulator) = Emulator::start().await else { return };
    let admin = Admin::new(&emulator).await;
    let service = admin.create_service("prod.local", "backend").await;
    register(&service, "task-1", "8081").await;
    let daemon = daemon(&emulator, None).await;
    assert_eq!(daemon.put("sidecar", bundle("v1").to_string()).await.0, 200);

    let (mut client, eds) = subscribed(&daemon, "sidecar-a", 1).await;
    assert!(eds.version_info.starts_with("v1+cloudmap.1."), "bundle version plus revision: {}", eds.version_info);

    register(&service, "task-2", "8082").await;
    let moved = client.recv_acked(&["backend"]).await;
    assert_eq!((moved.type_url.as_str(), endpoints(&moved)), (EDS, 2), "the new instance comes as EDS");
    assert!(moved.version_info.starts_with("v1+cloudmap.2."), "{}", moved.version_info);
    // Clusters, listeners and routes are not resent for an endpoint change.
    client.expect_silence(Duration::from_millis(800)).await;

    service.deregister("task-1").await;
    let gone = client.recv_acked(&["backend"]).await;
    assert_eq!((gone.type_url.as_str(), endpoints(&gone)), (EDS, 1));
    assert_ne!(gone.version_info, moved.version_info);
}

/// `bundle` plus a cluster `fresh` whose endpoints come from Cloud Map's `fresh`.
fn bundle_adding_fresh(version: &str) -> Value {
    let mut bundle = bundle(version);
    let fresh_cluster = json!({"name": "fresh", "type": "EDS", "connect_timeout": "1s", "eds_cluster_config": {"eds_config": {"ads": {}}}});
    let fresh_source = json!({"cluster_name": "fresh", "cloud_map": {"namespace": "prod.local", "service": "fresh", "port_attribute": "AWS_INSTANCE_PORT"}});
    bundle["clusters"].as_array_mut().unwrap().push(fresh_cluster);
    bundle["endpoint_sources"].as_array_mut().unwrap().push(fresh_source);
    bundle
}

/// The endpoint count of each cluster an EDS response carries.
fn endpoints_by_cluster(response: &DiscoveryResponse) -> Vec<(String, usize)> {
    let of = |any: &envoy_types::pb::google::protobuf::Any| {
        let cla = ClusterLoadAssignment::decode(&any.value[..]).expect("a ClusterLoadAssignment");
        (cla.cluster_name.clone(), cla.endpoints.iter().map(|l| l.lb_endpoints.len()).sum())
    };
    response.resources.iter().map(of).collect()
}

#[tokio::test]
async fn a_canary_gets_the_endpoints_of_a_source_its_rollout_adds_before_the_bundle_is_stored() {
    aws_environment();
    let Some(emulator) = Emulator::start().await else { return };
    let admin = Admin::new(&emulator).await;
    register(&admin.create_service("prod.local", "backend").await, "task-1", "8081").await;
    let fresh = admin.create_service("prod.local", "fresh").await;
    register(&fresh, "fresh-1", "9091").await;
    register(&fresh, "fresh-2", "9092").await;
    let daemon = daemon(&emulator, None).await;
    assert_eq!(daemon.put("sidecar", bundle("v1").to_string()).await.0, 200);
    let (mut canary, eds_v1) = subscribed(&daemon, "sidecar-canary-1", 1).await;
    let (mut other, _) = subscribed(&daemon, "sidecar-other", 1).await;

    let url = daemon.url("/resources/sidecar?canary=sidecar-canary-*&wait=60s");
    let put = reqwest::Client::new().put(url).body(bundle_adding_fresh("v2").to_string()).send().await.expect("PUT");
    assert_eq!(put.status(), 202, "{:?}", put.text().await);

    // The canary takes the new clusters (not ACKed yet: the rollout keeps running) and asks for
    // their endpoints (if an EDS response came right behind, this request's nonce is stale and it
    // asks again below).
    let clusters = canary.recv().await;
    assert_eq!((clusters.type_url.as_str(), clusters.resources.len()), (CDS, 2));
    canary.ack(&eds_v1, &["backend", "fresh"]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let eds = loop {
        assert!(tokio::time::Instant::now() < deadline, "the canary never got the endpoints of the source its candidate adds");
        let response = canary.recv().await;
        assert_eq!(response.type_url, EDS);
        if endpoints_by_cluster(&response).contains(&("fresh".into(), 2)) {
            break response;
        }
        canary.ack(&response, &["backend", "fresh"]).await;
    };
    assert!(eds.version_info.starts_with("v2+cloudmap."), "the candidate's EDS version: {}", eds.version_info);
    let rollout: Value = reqwest::get(daemon.url("/resources/sidecar/rollout")).await.expect("GET rollout").json().await.expect("JSON");
    assert_eq!(rollout["state"], "running", "the endpoints came before the bundle was stored: {rollout}");
    other.expect_silence(Duration::from_millis(300)).await;

    // ACKed, the rollout promotes; every stream gets the new source's endpoints.
    canary.ack(&clusters, &[]).await;
    canary.ack(&eds, &["backend", "fresh"]).await;
    support::wait_for("the rollout to be promoted", Duration::from_secs(20), || async {
        let rollout: Value = reqwest::get(daemon.url("/resources/sidecar/rollout")).await.expect("GET rollout").json().await.expect("JSON");
        rollout["state"] == "promoted"
    })
    .await;
    assert_eq!(other.recv_acked(&[]).await.type_url, CDS);
    other.send(support::xds_client::request("sidecar-other", EDS, &["backend", "fresh"])).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        assert!(tokio::time::Instant::now() < deadline, "the other Envoy never got the new source's endpoints");
        let response = other.recv_acked(&["backend", "fresh"]).await;
        if response.type_url == EDS && endpoints_by_cluster(&response).contains(&("fresh".into(), 2)) {
            break;
        }
    }
}

#[tokio::test]
async fn a_rollout_whose_new_source_never_answers_halts_naming_it_and_nobody_else_gets_it() {
    aws_environment();
    let Some(emulator) = Emulator::start().await else { return };
    let admin = Admin::new(&emulator).await;
    register(&admin.create_service("prod.local", "backend").await, "task-1", "8081").await;
    // No Cloud Map service "fresh": the new cluster's endpoints can never be known.
    let daemon = daemon(&emulator, None).await;
    assert_eq!(daemon.put("sidecar", bundle("v1").to_string()).await.0, 200);
    let (mut canary, _) = subscribed(&daemon, "sidecar-canary-1", 1).await;
    let (mut other, _) = subscribed(&daemon, "sidecar-other", 1).await;

    let url = daemon.url("/resources/sidecar?canary=sidecar-canary-*&wait=3s");
    let put = reqwest::Client::new().put(url).body(bundle_adding_fresh("v2").to_string()).send().await.expect("PUT");
    assert_eq!(put.status(), 202, "{:?}", put.text().await);
    // The canary ACKs everything it is sent, as an Envoy does once its cluster gives up warming.
    let clusters = canary.recv_acked(&[]).await;
    assert_eq!((clusters.type_url.as_str(), clusters.resources.len()), (CDS, 2));
    let mut last_clusters = clusters;
    let rollout = loop {
        let rollout: Value = reqwest::get(daemon.url("/resources/sidecar/rollout")).await.expect("GET rollout").json().await.expect("JSON");
        if rollout["state"] != "running" {
            break rollout;
        }
        if let Ok(response) = tokio::time::timeout(Duration::from_millis(100), canary.recv()).await {
            canary.ack(&response, if response.type_url == EDS { &["backend", "fresh"] } else { &[] }).await;
            if response.type_url == CDS {
                last_clusters = response;
            }
        }
    };
    assert_eq!(rollout["state"], "halted", "{rollout}");
    let error = rollout["error"].as_str().unwrap_or_default();
    assert!(error.contains("cluster fresh (Cloud Map prod.local/fresh)") && error.contains("never answered"), "{error}");
    // The canary is put back on version 1's clusters; the other Envoy never saw version 2.
    while last_clusters.resources.len() != 1 {
        let response = canary.recv_acked(&["backend"]).await;
        if response.type_url == CDS {
            last_clusters = response;
        }
    }
    assert!(last_clusters.version_info.starts_with("v1-halted-"), "{}", last_clusters.version_info);
    other.expect_silence(Duration::from_millis(300)).await;
    let stored: Value = reqwest::get(daemon.url("/resources/sidecar")).await.expect("GET").json().await.expect("JSON");
    assert_eq!(stored["version"], "v1");
}

#[cfg(feature = "etcd")]
#[tokio::test]
async fn replicas_on_etcd_serve_the_same_endpoints_as_the_same_bytes_under_the_same_version() {
    aws_environment();
    let Some(etcd) = support::etcd::Etcd::start().await else { return };
    let Some(emulator) = Emulator::start().await else { return };
    let admin = Admin::new(&emulator).await;
    let service = admin.create_service("prod.local", "backend").await;
    for (id, port) in [("task-1", "8081"), ("task-2", "8082"), ("task-3", "8083")] {
        register(&service, id, port).await;
    }
    let (a, b) = (daemon(&emulator, Some(etcd.store())).await, daemon(&emulator, Some(etcd.store())).await);
    assert_eq!(a.put("sidecar", bundle("v1").to_string()).await.0, 200);

    let ((_, on_a), (_, on_b)) = (subscribed(&a, "sidecar-a", 3).await, subscribed(&b, "sidecar-b", 3).await);
    assert_eq!(on_a.version_info, on_b.version_info, "an Envoy moving between replicas is sent nothing it has");
    assert_eq!(on_a.resources, on_b.resources, "byte-identical");
}
