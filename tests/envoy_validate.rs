//! Issue #11, pre-flight by a real Envoy (`--envoy-validate`): what the
//! schema check lets through, Envoy refuses, with the resource it concerns;
//! a bundle it accepts (EDS, RDS, endpoint sources rendered for validate
//! mode) is stored; a check that hangs stores nothing.

mod support;

use std::{path::PathBuf, time::Duration};

use serde_json::{json, Value};
use support::{sidecar_bundle, TestDaemon};

/// Envoy 1.40, which scripts/test.sh installs; these tests need it.
fn envoy() -> PathBuf {
    let found = std::process::Command::new("envoy").arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(found, "`envoy` is not on PATH: run the README test command (scripts/test.sh installs Envoy 1.40)");
    PathBuf::from("envoy")
}

async fn checked_daemon() -> TestDaemon {
    let envoy = envoy();
    TestDaemon::start_with(move |config| config.envoy_validate = Some(envoy)).await
}

fn hcm(bundle: &mut Value) -> &mut Value {
    &mut bundle["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
}

/// The sample whose route matches with a regex RE2 cannot compile.
fn bad_regex() -> Value {
    let mut bundle = sidecar_bundle("regex", 10000, 8080);
    bundle["routes"][0]["virtual_hosts"][0]["routes"][0]["match"] = json!({"safe_regex": {"regex": "(unclosed"}});
    bundle
}

#[tokio::test]
async fn without_the_flag_a_bundle_only_envoy_would_refuse_is_stored() {
    let daemon = TestDaemon::start().await;
    let (status, answer) = daemon.put("sidecar", bad_regex().to_string()).await;
    assert_eq!(status, 200, "the schema check cannot see a bad regex: {answer}");
}

#[tokio::test]
async fn envoy_refuses_what_the_schema_check_lets_through_naming_the_resource_and_nothing_is_stored() {
    let daemon = checked_daemon().await;
    let good = sidecar_bundle("v1", 10000, 8080);
    let (status, answer) = daemon.put("sidecar", good.to_string()).await;
    assert_eq!(status, 200, "EDS, RDS and its endpoints are rendered so validate mode accepts them: {answer}");

    let (status, answer) = daemon.put("sidecar", bad_regex().to_string()).await;
    assert_eq!(status, 400, "{answer}");
    let error = answer["error"].as_str().unwrap();
    assert!(error.contains("--envoy-validate") && error.contains("missing )"), "Envoy's own message: {answer}");
    assert_eq!(answer["path"], "listeners[0]", "the listener whose routes Envoy refused: {answer}");

    let mut empty_prefix = sidecar_bundle("prefix", 10000, 8080);
    hcm(&mut empty_prefix)["stat_prefix"] = json!("");
    let (status, answer) = daemon.put("sidecar", empty_prefix.to_string()).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("StatPrefix"), "{answer}");
    assert_eq!(answer["path"], "listeners[0]");

    let mut bad_cluster = sidecar_bundle("cluster", 10000, 8080);
    bad_cluster["clusters"].as_array_mut().unwrap().push(json!({"name": "ring", "type": "STATIC", "connect_timeout": "1s", "lb_policy": "RING_HASH",
        "ring_hash_lb_config": {"minimum_ring_size": "1000", "maximum_ring_size": "10"}}));
    let (status, answer) = daemon.put("sidecar", bad_cluster.to_string()).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["path"], "clusters[1]", "found among the clusters: {answer}");

    // A dry run is checked the same way.
    let url = daemon.url("/resources/sidecar?dry_run=true");
    let dry = reqwest::Client::new().put(url).body(bad_regex().to_string()).send().await.unwrap();
    assert_eq!(dry.status(), 400);

    let (_, stored) = support::send(reqwest::Client::new().get(daemon.url("/resources/sidecar"))).await;
    assert_eq!(stored["version"], "v1", "refusals stored nothing");
}

#[tokio::test]
async fn endpoint_sources_secrets_and_ecds_are_rendered_so_the_check_still_runs() {
    let daemon = checked_daemon().await;
    let mut bundle = sidecar_bundle("v1", 10000, 8080);
    bundle["endpoints"] = json!([]);
    bundle["endpoint_sources"] = json!([{"cluster_name": "backend", "cloud_map": {"namespace": "prod.local", "service": "backend", "port": 8080}}]);
    hcm(&mut bundle)["http_filters"] = json!([
        {"name": "lua", "config_discovery": {"config_source": {"ads": {}, "resource_api_version": "V3"},
                                              "type_urls": ["type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"]}},
        {"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
    ]);
    bundle["extension_configs"] = json!([{"name": "lua", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
        "default_source_code": {"inline_string": "function envoy_on_request(handle) end"}}}]);
    let (status, answer) = daemon.put("sidecar", bundle.to_string()).await;
    assert_eq!(status, 200, "{answer}");

    // The filter config Envoy would fetch by ECDS is checked too: Lua that does not compile.
    bundle["version"] = json!("v2");
    bundle["extension_configs"][0]["typed_config"]["default_source_code"]["inline_string"] = json!("function envoy_on_request(");
    let (status, answer) = daemon.put("sidecar", bundle.to_string()).await;
    assert_eq!((status, answer["path"].clone()), (400, json!("listeners[0]")), "{answer}");
}

#[tokio::test]
async fn a_check_that_does_not_finish_in_time_is_a_503_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let hangs = dir.path().join("envoy");
    std::fs::write(&hangs, "#!/bin/sh\n[ \"$1\" = --version ] && { echo 'envoy version: stand-in'; exit 0; }\nexec sleep 30\n").unwrap();
    let mut permissions = std::fs::metadata(&hangs).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
    std::fs::set_permissions(&hangs, permissions).unwrap();
    let daemon = TestDaemon::start_with(move |config| {
        config.envoy_validate = Some(hangs);
        config.envoy_validate_timeout = Duration::from_millis(500);
    })
    .await;
    let (status, answer) = daemon.put("sidecar", sidecar_bundle("v1", 10000, 8080).to_string()).await;
    assert_eq!(status, 503, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("did not finish within"), "{answer}");
    let listing = support::send(reqwest::Client::new().get(daemon.url("/resources"))).await.1;
    assert_eq!(listing["node_types"], json!([]), "nothing stored");
}

#[tokio::test]
async fn an_envoy_that_cannot_run_stops_the_start() {
    let mut config = <sxds::Config as clap::Parser>::try_parse_from(["sxds", "--envoy-validate", "/nonexistent/envoy"]).unwrap();
    config.data_dir = tempfile::tempdir().unwrap().keep();
    let (xds, rest) = (tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(), tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap());
    let error = sxds::run(&config, xds, rest, tokio_util::sync::CancellationToken::new()).await.expect_err("refused at start");
    assert!(error.to_string().contains("--envoy-validate /nonexistent/envoy"), "{error}");
}
