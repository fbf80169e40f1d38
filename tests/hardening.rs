//! Issue #6, the store and REST side: what a hostile client or an unlucky
//! disk could do to stored state, each tried against the real daemon.
//! (Connections, timeouts and xDS input limits: tests/net_limits.rs.)

mod support;

use std::{path::Path, time::Duration};

use serde_json::{json, Value};
use support::{
    sidecar_bundle,
    xds_client::{names, XdsClient, CDS},
    wait_for, TestDaemon,
};

async fn send(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let body = response.bytes().await.expect("body");
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

async fn get(daemon: &TestDaemon, path: &str) -> (u16, Value) {
    send(reqwest::Client::new().get(daemon.url(path))).await
}

/// A bundle whose one cluster carries `name` and `depth` nested Struct lists.
fn nested_bundle(version: &str, depth: usize) -> Value {
    let mut value = json!("leaf");
    for _ in 0..depth {
        value = json!([value]);
    }
    json!({"version": version, "clusters": [{"name": "deep", "metadata": {"filter_metadata": {"x": {"k": value}}}}]})
}

#[tokio::test]
async fn a_bundle_accepted_at_the_decode_limit_loads_again_after_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let daemon = TestDaemon::start_in(data.path().to_path_buf()).await;
    // The deepest nesting the PUT accepts (found by trying, from deep to shallow).
    let mut accepted = None;
    for depth in (20..=80).rev() {
        let (status, body) = daemon.put("sidecar", nested_bundle(&format!("d{depth}"), depth).to_string()).await;
        if status == 200 {
            accepted = Some(depth);
            break;
        }
        assert_eq!(status, 400, "depth {depth}: {body}");
    }
    let depth = accepted.expect("some depth is accepted");
    assert!(depth < 80, "the decode limit was reached ({depth})");
    let before = get(&daemon, "/resources/sidecar").await;
    daemon.stop().await.unwrap();

    let daemon = TestDaemon::start_in(data.path().to_path_buf()).await;
    assert_eq!(get(&daemon, "/resources/sidecar").await, before, "the bundle at depth {depth} loads and prints as before");
    let mut client = XdsClient::ads(&daemon.xds_url(), support::xds_client::request("sidecar-1", CDS, &[])).await;
    assert_eq!(names(&client.recv().await), ["deep"]);
    daemon.stop().await.unwrap();
}

/// Flips one bit in every copy of `needle` in the data file.
fn flip_bit_in(data_file: &Path, needle: &[u8]) -> usize {
    let mut bytes = std::fs::read(data_file).unwrap();
    let positions: Vec<usize> = bytes.windows(needle.len()).enumerate().filter(|(_, w)| *w == needle).map(|(i, _)| i).collect();
    for &i in &positions {
        bytes[i] ^= 0x01; // 'f' becomes 'g': still valid UTF-8, still decodes
    }
    std::fs::write(data_file, bytes).unwrap();
    positions.len()
}

#[tokio::test]
async fn a_corrupt_record_is_quarantined_and_every_other_node_type_is_served() {
    let data = tempfile::tempdir().unwrap();
    let daemon = TestDaemon::start_in(data.path().to_path_buf()).await;
    let mut sidecar = sidecar_bundle("s1", 10000, 10001);
    sidecar["clusters"][0]["name"] = json!("flippable_cluster_name");
    sidecar["endpoints"][0]["cluster_name"] = json!("flippable_cluster_name");
    sidecar["routes"][0]["virtual_hosts"][0]["routes"][0]["route"]["cluster"] = json!("flippable_cluster_name");
    assert_eq!(daemon.put("sidecar", sidecar.to_string()).await.0, 200);
    assert_eq!(daemon.put("gateway", sidecar_bundle("g1", 10002, 10003).to_string()).await.0, 200);
    daemon.stop().await.unwrap();

    // A bit flipped on disk that still decodes: served as is before the checksum.
    assert!(flip_bit_in(&data.path().join("sxds.redb"), b"flippable_cluster_name") > 0);

    let daemon = TestDaemon::start_in(data.path().to_path_buf()).await;
    let (_, ready) = get(&daemon, "/readyz").await;
    assert_eq!(ready["status"], "degraded", "{ready}");
    assert_eq!(ready["quarantined"][0]["node_type"], "sidecar", "{ready}");
    assert!(ready["quarantined"][0]["reason"].as_str().unwrap().contains("checksum"), "{ready}");
    let (_, listing) = get(&daemon, "/resources").await;
    assert_eq!(listing["node_types"].as_array().unwrap().len(), 1, "{listing}");
    assert_eq!(listing["node_types"][0]["node_type"], "gateway");
    assert_eq!(listing["quarantined"][0]["node_type"], "sidecar");
    assert_eq!(get(&daemon, "/resources/sidecar").await.0, 404, "the altered bundle is not served");

    let mut gateway = XdsClient::ads(&daemon.xds_url(), support::xds_client::request("gateway-1", CDS, &[])).await;
    assert_eq!(names(&gateway.recv().await), ["backend"]);

    // A new PUT replaces the quarantined record, and the quarantine ends.
    assert_eq!(daemon.put("sidecar", sidecar.to_string()).await.0, 200);
    let (_, ready) = get(&daemon, "/readyz").await;
    assert_eq!(ready["status"], "ready", "{ready}");
    daemon.stop().await.unwrap();
    let daemon = TestDaemon::start_in(data.path().to_path_buf()).await;
    let (_, listing) = get(&daemon, "/resources").await;
    assert_eq!(listing["node_types"].as_array().unwrap().len(), 2, "{listing}");
    assert_eq!(listing["quarantined"], json!([]));
    daemon.stop().await.unwrap();
}

#[tokio::test]
async fn a_bundle_with_no_listeners_and_no_clusters_is_refused_unless_allowed() {
    let daemon = TestDaemon::start().await;
    let bundle = sidecar_bundle("v1", 10000, 10001);
    assert_eq!(daemon.put("sidecar", bundle.to_string()).await.0, 200);
    let mut client = XdsClient::ads(&daemon.xds_url(), support::xds_client::request("sidecar-1", CDS, &[])).await;
    let first = client.recv().await;
    client.ack(&first, &[]).await;

    let only_endpoints = json!({"version": "v3", "endpoints": bundle["endpoints"]});
    for empty in [json!({}), json!({"clusters": null}), json!({"version": "v2", "listeners": [], "clusters": []}), only_endpoints] {
        let (status, body) = daemon.put("sidecar", empty.to_string()).await;
        assert_eq!(status, 400, "{empty}: {body}");
        let message = body["error"].as_str().unwrap();
        assert!(message.contains("DELETE") && message.contains("allow_empty"), "{message}");
    }
    client.expect_silence(Duration::from_millis(500)).await;
    let (_, stored) = get(&daemon, "/resources/sidecar").await;
    assert_eq!(stored["version"], "v1", "nothing was stored");

    let url = daemon.url("/resources/sidecar?allow_empty=maybe");
    assert_eq!(send(reqwest::Client::new().put(url).body("{}")).await.0, 400);
    let url = daemon.url("/resources/sidecar?allow_empty=true");
    let (status, body) = send(reqwest::Client::new().put(url).body(r#"{"version": "empty"}"#)).await;
    assert_eq!((status, body["version"].as_str()), (200, Some("empty")), "{body}");
    assert!(client.recv().await.resources.is_empty(), "asked for: the empty config is sent");
    daemon.stop().await.unwrap();
}

#[tokio::test]
async fn a_version_never_names_two_contents_even_after_others_and_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let daemon = TestDaemon::start_in(data.path().to_path_buf()).await;
    let (a, b, c) = (sidecar_bundle("v1", 10000, 1), sidecar_bundle("v2", 10000, 2), sidecar_bundle("v1", 10000, 3));
    assert_eq!(daemon.put("sidecar", a.to_string()).await.0, 200);
    assert_eq!(daemon.put("sidecar", b.to_string()).await.0, 200);
    let (status, body) = daemon.put("sidecar", c.to_string()).await;
    assert_eq!((status, body["path"].as_str()), (409, Some("version")), "{body}");
    assert_eq!(daemon.put("sidecar", a.to_string()).await.0, 200, "back to v1 with v1's content is fine");
    assert_eq!(reqwest::Client::new().delete(daemon.url("/resources/sidecar")).send().await.unwrap().status(), 200);
    daemon.stop().await.unwrap();

    let daemon = TestDaemon::start_in(data.path().to_path_buf()).await;
    assert_eq!(daemon.put("sidecar", c.to_string()).await.0, 409, "remembered across delete and restart");
    daemon.stop().await.unwrap();
}

#[tokio::test]
async fn every_error_is_the_json_shape() {
    let daemon = TestDaemon::start().await;
    let http = reqwest::Client::new();
    let long = format!("/resources/{}", "a".repeat(10_000));
    let cases = [
        (send(http.get(daemon.url("/nope"))).await, 404),
        (send(http.post(daemon.url("/resources/sidecar"))).await, 405),
        (send(http.get(daemon.url(&long))).await, 414),
        (send(http.get(daemon.url("/resources/%ff%fe"))).await, 400),
        (send(http.put(daemon.url("/resources/sidecar?allow_empty=%zz")).body("{}")).await, 400),
    ];
    for ((status, body), expected) in cases {
        assert_eq!(status, expected, "{body}");
        assert!(body["error"].is_string(), "{expected}: {body}");
    }
    daemon.stop().await.unwrap();
}

/// A directory on a small tmpfs that scripts/test.sh mounted, if it could.
fn small_disk() -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("SXDS_TEST_TMPFS").map(std::path::PathBuf::from);
    if dir.is_none() {
        eprintln!("skipped: SXDS_TEST_TMPFS is not set (scripts/test.sh mounts a small tmpfs there when it may)");
    }
    dir
}

#[tokio::test]
async fn a_full_disk_fails_writes_until_space_returns_then_writes_heal_by_themselves() {
    let Some(disk) = small_disk() else { return };
    let data = tempfile::tempdir_in(&disk).unwrap();
    let daemon = TestDaemon::start_in(data.path().join("store")).await;
    assert_eq!(daemon.put("sidecar", sidecar_bundle("v1", 10000, 10001).to_string()).await.0, 200);

    // Fill the disk to the last byte.
    let filler = data.path().join("filler");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 << 10];
        while file.write_all(&block).is_ok() {}
        while file.write_all(&[0]).is_ok() {}
        let _ = file.sync_all();
    }
    // A bundle large enough to need new pages.
    let mut big = sidecar_bundle("v2", 10000, 10001);
    let filler_metadata: Vec<Value> = (0..2000).map(|i| json!(format!("padding-{i}-{}", "x".repeat(40)))).collect();
    big["clusters"][0]["metadata"] = json!({"filter_metadata": {"pad": {"list": filler_metadata}}});
    for attempt in 0..2 {
        let (status, body) = daemon.put("sidecar", big.to_string()).await;
        assert_eq!(status, 503, "attempt {attempt}: {body}");
        let (_, ready) = get(&daemon, "/readyz").await;
        assert_eq!(ready["store"]["writable"], false, "{ready}");
        assert!(ready["store"]["failure"]["error"].is_string(), "{ready}");
    }
    let (_, stored) = get(&daemon, "/resources/sidecar").await;
    assert_eq!(stored["version"], "v1", "the acknowledged bundle is still served");

    std::fs::remove_file(&filler).unwrap();
    let readyz = daemon.url("/readyz");
    wait_for("the store to heal by itself", Duration::from_secs(30), || {
        let readyz = readyz.clone();
        async move {
            let ready: Value = reqwest::get(&readyz).await.unwrap().json().await.unwrap();
            ready["store"]["writable"] == true
        }
    })
    .await;
    assert_eq!(daemon.put("sidecar", big.to_string()).await.0, 200);
    daemon.stop().await.unwrap();

    let daemon = TestDaemon::start_in(data.path().join("store")).await;
    let (_, stored) = get(&daemon, "/resources/sidecar").await;
    assert_eq!(stored["version"], "v2", "the write after healing is durable");
    daemon.stop().await.unwrap();
}

#[tokio::test]
async fn repeated_keys_and_deep_yaml_are_refused_over_rest_and_change_nothing() {
    let daemon = TestDaemon::start().await;
    assert_eq!(daemon.put("sidecar", sidecar_bundle("v1", 10000, 10001).to_string()).await.0, 200);
    let http = reqwest::Client::new();
    let url = daemon.url("/resources/sidecar");
    let yaml = |body: String| http.put(&url).header("content-type", "application/yaml").body(body);
    let deep_yaml = format!("clusters:\n- name: a\n  metadata: {}{}", "{a: ".repeat(30_000), "}".repeat(30_000));
    let cases = [
        (send(http.put(&url).body(r#"{"version": "v2", "version": "v3", "clusters": [{"name": "a"}]}"#)).await, Some("version")),
        (send(http.put(&url).body(r#"{"version": "v2", "clusters": [{"name": "a", "name": "b"}]}"#)).await, Some("clusters[0].name")),
        (send(yaml("version: v2\nclusters:\n- name: a\n  name: b\n".into())).await, Some("clusters[0].name")),
        (send(yaml(deep_yaml)).await, None),
    ];
    for ((status, body), path) in cases {
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["path"].as_str(), path, "{body}");
    }
    let (_, stored) = get(&daemon, "/resources/sidecar").await;
    assert_eq!(stored["version"], "v1");
    daemon.stop().await.unwrap();
}
