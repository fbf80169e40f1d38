//! Issue #8 on a real etcd: two in-process sxds replicas share one etcd
//! (`--store etcd://...`). A PUT on one reaches streams on the other with
//! the same version and bytes; a 10 MB bundle passes etcd's request limits;
//! If-Match races across replicas have one winner; etcd going away keeps
//! the served config and refuses writes with 503, and its return is caught
//! up; history and rollback work through etcd.
#![cfg(feature = "etcd")]

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{
    etcd::Etcd,
    bundle_with_clusters, one_winner, send, wait_for,
    xds_client::{names, request, XdsClient, CDS},
    TestDaemon,
};

async fn replica(etcd: &Etcd) -> TestDaemon {
    let store = etcd.store();
    TestDaemon::start_with(move |config| config.store = Some(store)).await
}

async fn get(daemon: &TestDaemon, path: &str) -> (u16, Value) {
    send(reqwest::Client::new().get(daemon.url(path))).await
}

async fn version_on(daemon: &TestDaemon, node_type: &str) -> Value {
    get(daemon, &format!("/resources/{node_type}")).await.1["version"].clone()
}

/// Waits (bounded) until `daemon` serves `version` for `node_type`.
async fn wait_version(daemon: &TestDaemon, node_type: &str, version: &str) {
    let what = format!("{node_type} at {version} on {}", daemon.rest_addr);
    wait_for(&what, Duration::from_secs(10), || async { version_on(daemon, node_type).await == version }).await;
}

#[tokio::test]
async fn a_put_on_one_replica_reaches_a_stream_on_the_other_with_the_same_version_and_bytes() {
    let Some(etcd) = Etcd::start().await else { return };
    let (a, b) = (replica(&etcd).await, replica(&etcd).await);
    let mut on_b = XdsClient::ads(&b.xds_url(), request("sidecar-1", CDS, &[])).await;

    let started = Instant::now();
    let (status, answer) = a.put("sidecar", bundle_with_clusters("v1", &["extra"]).to_string()).await;
    assert_eq!(status, 200, "{answer}");
    let from_b = on_b.recv_acked(&[]).await;
    eprintln!("PUT on replica a answered and replica b's stream got it after {:?}", started.elapsed());
    assert_eq!((from_b.version_info.as_str(), names(&from_b)), ("v1", vec!["backend".to_owned(), "extra".to_owned()]));

    // The same version and the same bytes from either replica: an Envoy
    // moving between them is sent nothing it already has.
    let mut on_a = XdsClient::ads(&a.xds_url(), request("sidecar-2", CDS, &[])).await;
    let from_a = on_a.recv_acked(&[]).await;
    assert_eq!((&from_a.version_info, &from_a.resources), (&from_b.version_info, &from_b.resources));
    assert_eq!(get(&a, "/resources/sidecar").await, get(&b, "/resources/sidecar").await);

    // A no-op PUT on the other replica is decided by etcd's state: unchanged, nothing pushed.
    let (status, answer) = b.put("sidecar", bundle_with_clusters("v1", &["extra"]).to_string()).await;
    assert_eq!((status, &answer["changed"]), (200, &json!(false)), "{answer}");
    let (status, answer) = b.put("sidecar", bundle_with_clusters("v1", &["other"]).to_string()).await;
    assert_eq!(status, 409, "v1 names other content, whichever replica is asked: {answer}");
    on_b.expect_silence(Duration::from_millis(300)).await;

    // A delete on b reaches a.
    assert_eq!(send(reqwest::Client::new().delete(b.url("/resources/sidecar"))).await.0, 200);
    wait_for("the delete on a", Duration::from_secs(10), || async { get(&a, "/resources/sidecar").await.0 == 404 }).await;

    // A replica started later loads the whole state before it serves.
    assert_eq!(a.put("sidecar", bundle_with_clusters("v2", &[]).to_string()).await.0, 200);
    let c = replica(&etcd).await;
    assert_eq!(version_on(&c, "sidecar").await, "v2", "loaded at start");
    let mut on_c = XdsClient::ads(&c.xds_url(), request("sidecar-3", CDS, &[])).await;
    assert_eq!(on_c.recv().await.version_info, "v2");
}

/// 10,000 EDS clusters and their 10,000 endpoint sets.
fn big_bundle_with_clusters(version: &str) -> Value {
    let eds = json!({"ads": {}, "resource_api_version": "V3"});
    let clusters: Vec<Value> = (0..10_000).map(|i| json!({"name": format!("cluster_{i:05}"), "type": "EDS", "connect_timeout": "1s", "eds_cluster_config": {"eds_config": eds}})).collect();
    let endpoints: Vec<Value> = (0..10_000)
        .map(|i| {
            let lb_endpoints: Vec<Value> = (0..8)
                .map(|e| json!({"endpoint": {"address": {"socket_address": {"address": format!("10.{}.{}.{}", i >> 8, i & 0xff, e + 1), "port_value": 8080}}}, "load_balancing_weight": 1}))
                .collect();
            json!({"cluster_name": format!("cluster_{i:05}"), "endpoints": [{"lb_endpoints": lb_endpoints}]})
        })
        .collect();
    json!({"version": version, "clusters": clusters, "endpoints": endpoints})
}

#[tokio::test]
async fn a_10_mb_bundle_is_stored_through_etcd_and_read_back_whole_on_the_other_replica() {
    let Some(etcd) = Etcd::start().await else { return };
    let (a, b) = (replica(&etcd).await, replica(&etcd).await);
    let body = big_bundle_with_clusters("big-1").to_string();
    assert!(body.len() > 10_000_000, "{} bytes", body.len());

    let mut on_b = XdsClient::ads(&b.xds_url(), request("big-1", CDS, &[])).await;
    let started = Instant::now();
    let (status, answer) = a.put("big", body).await;
    eprintln!("10 MB PUT through etcd answered {status} in {:?}", started.elapsed());
    assert_eq!((status, &answer["clusters"], &answer["endpoints"]), (200, &json!(10_000), &json!(10_000)), "{answer}");

    let answered = Instant::now();
    let response = on_b.recv().await;
    eprintln!("replica b's stream got the 10 MB bundle {:?} after a's answer", answered.elapsed());
    assert_eq!((response.version_info.as_str(), response.resources.len()), ("big-1", 10_000));
    let (from_a, from_b) = (get(&a, "/resources/big").await, get(&b, "/resources/big").await);
    assert_eq!(from_b.1["clusters"].as_array().map(Vec::len), Some(10_000));
    assert!(from_a == from_b, "replica b reads back exactly what a stored");
    let mut on_a = XdsClient::ads(&a.xds_url(), request("big-2", CDS, &[])).await;
    assert!(on_a.recv().await.resources == response.resources, "the same bytes from both replicas");
}

#[tokio::test]
async fn of_concurrent_puts_with_one_if_match_on_two_replicas_exactly_one_wins() {
    let Some(etcd) = Etcd::start().await else { return };
    let (a, b) = (replica(&etcd).await, replica(&etcd).await);
    assert_eq!(a.put("sidecar", bundle_with_clusters("base", &[]).to_string()).await.0, 200);
    wait_version(&b, "sidecar", "base").await;

    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let daemon = if i % 2 == 0 { &a } else { &b };
            let request = reqwest::Client::new()
                .put(daemon.url("/resources/sidecar"))
                .header("If-Match", "base")
                .body(bundle_with_clusters(&format!("racer-{i}"), &[&format!("c{i}")]).to_string());
            tokio::spawn(async move { (i, send(request).await) })
        })
        .collect();
    let winner = one_winner(tasks).await;
    wait_version(&a, "sidecar", &winner).await;
    wait_version(&b, "sidecar", &winner).await;
    let (_, history) = get(&a, "/resources/sidecar/history").await;
    assert_eq!(history["versions"].as_array().map(Vec::len), Some(2), "base and the winner only: {history}");
}

#[tokio::test]
async fn while_etcd_is_down_writes_are_503_streams_keep_their_config_and_replicas_catch_up_after() {
    let Some(mut etcd) = Etcd::start().await else { return };
    let (a, b) = (replica(&etcd).await, replica(&etcd).await);
    assert_eq!(a.put("sidecar", bundle_with_clusters("v1", &[]).to_string()).await.0, 200);
    let mut on_b = XdsClient::ads(&b.xds_url(), request("sidecar-1", CDS, &[])).await;
    assert_eq!(on_b.recv_acked(&[]).await.version_info, "v1");

    etcd.kill();
    let (status, answer) = a.put("sidecar", bundle_with_clusters("v2", &["new"]).to_string()).await;
    assert_eq!(status, 503, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("nothing was changed"), "{answer}");
    let (status, _) = send(reqwest::Client::new().delete(b.url("/resources/sidecar"))).await;
    assert_eq!(status, 503, "a delete too");
    let (_, ready) = get(&a, "/readyz").await;
    assert_eq!(ready["store"]["writable"], false, "{ready}");
    assert!(ready["store"]["failure"]["error"].as_str().unwrap().contains(&etcd.endpoint()), "{ready}");
    wait_for("b's /readyz to say etcd is away", Duration::from_secs(10), || async { get(&b, "/readyz").await.1["store"]["writable"] == false }).await;
    // Both replicas keep serving what they had; the stream is sent nothing.
    assert_eq!((version_on(&a, "sidecar").await, version_on(&b, "sidecar").await), (json!("v1"), json!("v1")));
    on_b.expect_silence(Duration::from_millis(500)).await;

    etcd.resume().await;
    wait_for("a write through etcd again", Duration::from_secs(20), || async { a.put("sidecar", bundle_with_clusters("v2", &["new"]).to_string()).await.0 == 200 }).await;
    let pushed = on_b.recv_acked(&[]).await;
    assert_eq!((pushed.version_info.as_str(), names(&pushed).contains(&"new".to_owned())), ("v2", true), "b caught up");
    for daemon in [&a, &b] {
        wait_for("writable again in /readyz", Duration::from_secs(10), || async { get(daemon, "/readyz").await.1["store"]["writable"] == true }).await;
    }
}

#[tokio::test]
async fn history_and_rollback_work_through_etcd_from_either_replica() {
    let Some(etcd) = Etcd::start().await else { return };
    let store = etcd.store();
    let a = TestDaemon::start_with({
        let store = store.clone();
        move |config| {
            config.store = Some(store);
            config.history = 3.try_into().unwrap();
        }
    })
    .await;
    let b = TestDaemon::start_with(move |config| {
        config.store = Some(store);
        config.history = 3.try_into().unwrap();
    })
    .await;
    for (version, cluster) in [("h1", "one"), ("h2", "two"), ("h3", "three"), ("h4", "four")] {
        assert_eq!(a.put("hist", bundle_with_clusters(version, &[cluster]).to_string()).await.0, 200);
    }
    let (status, history) = get(&b, "/resources/hist/history").await;
    assert_eq!(status, 200, "{history}");
    let versions: Vec<&str> = history["versions"].as_array().unwrap().iter().map(|v| v["version"].as_str().unwrap()).collect();
    assert_eq!(versions, ["h4", "h3", "h2"], "newest first, bounded by --history");
    assert_eq!(history["versions"][0]["clusters"], 2);
    let (status, old) = get(&b, "/resources/hist/versions/h2").await;
    assert_eq!((status, old["clusters"][1]["name"].as_str()), (200, Some("two")));
    assert_eq!(get(&b, "/resources/hist/versions/h1").await.0, 404, "dropped from the history");

    let mut on_a = XdsClient::ads(&a.xds_url(), request("hist-1", CDS, &[])).await;
    assert_eq!(on_a.recv_acked(&[]).await.version_info, "h4");
    let http = reqwest::Client::new();
    let (status, answer) = send(http.post(b.url("/resources/hist/rollback")).json(&json!({"version": "h2"}))).await;
    assert_eq!((status, answer["version"].as_str()), (200, Some("h2-rollback-5")), "{answer}");
    let pushed = on_a.recv_acked(&[]).await;
    assert_eq!(pushed.version_info, "h2-rollback-5", "the rollback on b reached a's stream");
    assert!(names(&pushed).contains(&"two".to_owned()));
    for (body, status) in [(json!({"version": "h1"}), 404), (json!({"version": "h3", "new_version": "h4"}), 409)] {
        assert_eq!(send(http.post(a.url("/resources/hist/rollback")).json(&body)).await.0, status, "{body}");
    }
    let (_, history) = get(&a, "/resources/hist/history").await;
    assert_eq!((&history["versions"][0]["rollback_of"], history["versions"].as_array().map(Vec::len)), (&json!("h2"), Some(3)));
}

#[tokio::test]
async fn chunks_of_versions_that_left_the_history_are_collected_and_kept_ones_still_read() {
    use sxds::store::{etcd::EtcdConfig, IfMatch, Store};
    let Some(etcd) = Etcd::start().await else { return };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let config = EtcdConfig { endpoints: vec![etcd.endpoint()], history_limit: 2, ..Default::default() };
    let store = Store::open_etcd(config, shutdown.clone()).await.expect("etcd store opens");
    let sidecar = sxds::node_type::NodeType::parse("sidecar").unwrap();
    for (version, cluster) in [("g1", "a"), ("g2", "b"), ("g3", "c"), ("g4", "d")] {
        let stored = sxds::bundle::accept(bundle_with_clusters(version, &[cluster]).to_string().as_bytes(), sxds::bundle::Format::Json).unwrap();
        assert!(store.put(sidecar.clone(), stored, IfMatch::Any).await.unwrap().changed);
    }
    let mut client = etcd_client::Client::connect([format!("http://{}", etcd.endpoint())], None).await.unwrap();
    let mut chunks = async || client.get("/sxds/v1/chunks/", Some(etcd_client::GetOptions::new().with_prefix().with_count_only())).await.unwrap().count();
    assert_eq!(chunks().await, 4, "one small record each");

    assert_eq!(store.collect_chunks().await.unwrap(), 2, "g1 and g2 left the history (--history 2)");
    assert_eq!(chunks().await, 2);
    assert_eq!(store.collect_chunks().await.unwrap(), 0, "what a manifest names stays");
    assert!(store.version(sidecar.clone(), "g3".into()).await.unwrap().is_some(), "a kept version still reads");
    let written = store.rollback(sidecar.clone(), "g3".into(), None, IfMatch::Any).await.unwrap();
    assert_eq!(written.current.unwrap().version, "g3-rollback-5");
    shutdown.cancel();
}

#[tokio::test]
async fn on_a_three_member_etcd_losing_one_member_loses_no_write_and_no_update() {
    let Some(mut etcd) = Etcd::cluster(3).await else { return };
    let (a, b) = (replica(&etcd).await, replica(&etcd).await);
    assert_eq!(a.put("sidecar", bundle_with_clusters("v1", &[]).to_string()).await.0, 200);
    let mut on_b = XdsClient::ads(&b.xds_url(), request("sidecar-1", CDS, &[])).await;
    assert_eq!(on_b.recv_acked(&[]).await.version_info, "v1");

    etcd.kill_member(0);
    // Once the two members left have a leader (at once, unless the killed
    // member led), every write goes through: a request to the dead member
    // moves on to a live one.
    wait_for("a write through the two members left", Duration::from_secs(10), || async { a.put("sidecar", bundle_with_clusters("v2", &["v2"]).to_string()).await.0 == 200 }).await;
    for (i, replica) in [&b, &a, &b, &a, &b, &a].into_iter().enumerate() {
        let version = format!("v{}", i + 3);
        let (status, answer) = replica.put("sidecar", bundle_with_clusters(&version, &[&version]).to_string()).await;
        assert_eq!(status, 200, "{version}: {answer}");
        wait_version(&a, "sidecar", &version).await;
        wait_version(&b, "sidecar", &version).await;
    }
    let mut last = on_b.recv_acked(&[]).await;
    while last.version_info != "v8" {
        last = on_b.recv_acked(&[]).await;
    }
    assert!(names(&last).contains(&"v8".to_owned()));
}

#[tokio::test]
async fn a_replica_cut_off_from_etcd_while_its_watch_revision_is_compacted_lists_again_and_catches_up() {
    let Some(etcd) = Etcd::start().await else { return };
    let relay = support::etcd::Relay::to(etcd.endpoint()).await;
    let a = replica(&etcd).await;
    let via_relay = sxds::config::EtcdEndpoints(vec![relay.addr.to_string()]);
    let b = TestDaemon::start_with(move |config| config.store = Some(via_relay)).await;
    assert_eq!(a.put("sidecar", bundle_with_clusters("v1", &[]).to_string()).await.0, 200);
    assert_eq!(a.put("gone", bundle_with_clusters("g1", &[]).to_string()).await.0, 200);
    wait_version(&b, "gone", "g1").await;
    let mut on_b = XdsClient::ads(&b.xds_url(), request("sidecar-1", CDS, &[])).await;
    assert_eq!(on_b.recv_acked(&[]).await.version_info, "v1");

    // Only b loses etcd: a goes on writing, and etcd compacts past b's revision.
    relay.cut();
    wait_for("b's /readyz to say etcd is away", Duration::from_secs(10), || async { get(&b, "/readyz").await.1["store"]["writable"] == false }).await;
    assert_eq!(a.put("sidecar", bundle_with_clusters("v2", &["late"]).to_string()).await.0, 200);
    assert_eq!(send(reqwest::Client::new().delete(a.url("/resources/gone"))).await.0, 200);
    let mut client = etcd_client::Client::connect([format!("http://{}", etcd.endpoint())], None).await.unwrap();
    let revision = client.get("/sxds/v1/", None).await.unwrap().header().unwrap().revision();
    client.compact(revision, None).await.unwrap();
    assert_eq!(version_on(&b, "sidecar").await, "v1", "b serves its last state meanwhile");

    relay.restore();
    let pushed = on_b.recv_acked(&[]).await;
    assert_eq!((pushed.version_info.as_str(), names(&pushed).contains(&"late".to_owned())), ("v2", true));
    wait_for("the delete seen by b", Duration::from_secs(10), || async { get(&b, "/resources/gone").await.0 == 404 }).await;
}

#[tokio::test]
async fn with_etcd_auth_on_a_replica_writes_as_its_user_and_a_wrong_password_stops_the_start_naming_etcd() {
    let Some(etcd) = Etcd::start().await else { return };
    let mut admin = etcd_client::Client::connect([format!("http://{}", etcd.endpoint())], None).await.unwrap();
    admin.user_add("root", "root-secret", None).await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.auth_enable().await.unwrap();

    let store = etcd.store();
    let a = TestDaemon::start_with(move |config| {
        config.store = Some(store);
        (config.etcd_user, config.etcd_password) = (Some("root".into()), Some("root-secret".into()));
    })
    .await;
    assert_eq!(a.put("sidecar", bundle_with_clusters("v1", &[]).to_string()).await.0, 200);
    // etcd enforces its auth (an anonymous read is refused): the write above went as root.
    let anonymous = admin.get("/sxds/v1/current/sidecar", None).await;
    assert!(anonymous.is_err(), "{anonymous:?}");

    let dir = tempfile::tempdir().unwrap();
    let mut config = sxds::Config::for_tests(dir.path().to_path_buf());
    config.store = Some(etcd.store());
    (config.etcd_user, config.etcd_password) = (Some("root".into()), Some("wrong".into()));
    let (xds, rest) = (tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(), tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap());
    let started = tokio::time::timeout(Duration::from_secs(10), sxds::run(&config, xds, rest, Default::default())).await;
    let error = started.expect("a refused password fails the start at once, without waiting for etcd").expect_err("refused").to_string();
    assert!(error.contains(&etcd.endpoint()), "{error}");
}

#[tokio::test]
async fn over_tls_with_a_client_certificate_replicas_share_an_etcd_that_refuses_plain_clients() {
    let certs = tempfile::tempdir().unwrap();
    let ca = support::tls::Ca::new("etcd test CA");
    let ca_file = certs.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let (server_cert, server_key) = ca.server(1).write(certs.path(), "server");
    let (client_cert, client_key) = ca.client(&["sxds"], 2).write(certs.path(), "client");
    let Some(etcd) = Etcd::start_tls(server_cert, server_key, ca_file.clone()).await else { return };

    let tls = |config: &mut sxds::Config| {
        config.store = Some(etcd.store());
        config.etcd_ca = Some(ca_file.clone());
        (config.etcd_cert, config.etcd_key) = (Some(client_cert.clone()), Some(client_key.clone()));
    };
    let (a, b) = (TestDaemon::start_with(tls).await, TestDaemon::start_with(tls).await);
    assert_eq!(a.put("sidecar", bundle_with_clusters("v1", &[]).to_string()).await.0, 200);
    wait_version(&b, "sidecar", "v1").await;

    let mut plain = etcd_client::Client::connect([format!("http://{}", etcd.endpoint())], None).await.unwrap();
    assert!(plain.get("/sxds/v1/current/sidecar", None).await.is_err(), "etcd serves TLS only");
}

#[tokio::test]
async fn endpoint_sources_and_what_cloud_map_found_are_kept_in_etcd_for_the_next_start() {
    use sxds::{
        schema::{DiscoveredInstance, DiscoveredInstances},
        store::{etcd::EtcdConfig, IfMatch, Store},
    };
    let Some(etcd) = Etcd::start().await else { return };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let open = || Store::open_etcd(EtcdConfig { endpoints: vec![etcd.endpoint()], ..Default::default() }, shutdown.clone());
    let store = open().await.expect("etcd store opens");
    let body = json!({
        "version": "s1",
        "clusters": [{"name": "backend", "type": "EDS", "eds_cluster_config": {"eds_config": {"ads": {}}}}],
        "endpoint_sources": [{"cluster_name": "backend", "cloud_map": {"namespace": "prod.local", "service": "backend", "port": 8080}}],
    });
    let stored = sxds::bundle::accept(body.to_string().as_bytes(), sxds::bundle::Format::Json).unwrap();
    let sidecar = sxds::node_type::NodeType::parse("sidecar").unwrap();
    store.put(sidecar.clone(), stored, IfMatch::Any).await.unwrap();
    let found = DiscoveredInstances {
        revision: 4,
        instances: vec![DiscoveredInstance { id: "task-1".into(), attributes: [("AWS_INSTANCE_IPV4".to_owned(), "10.0.0.1".to_owned())].into_iter().collect(), health: "HEALTHY".into() }],
        at_unix_ms: 1,
    };
    store.save_discovered("q1".into(), found.clone()).await.unwrap();
    store.save_discovered("q2".into(), found.clone()).await.unwrap();
    store.forget_discovered("q2".into()).await.unwrap();

    // Another replica starting now reads both.
    let other = open().await.expect("a second etcd store opens");
    let sources: Vec<_> = other.catalog()[&sidecar].endpoint_sources().map(|s| s.cluster_name).collect();
    assert_eq!(sources, ["backend"], "the bundle's endpoint sources read back from etcd");
    let kept = other.discovered().await.unwrap();
    assert_eq!(kept.keys().collect::<Vec<_>>(), ["q1"], "forgotten ones are gone");
    assert_eq!(kept["q1"], found);
    shutdown.cancel();
}
