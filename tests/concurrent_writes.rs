//! Issue #8 point 6: `If-Match: <version>` on PUT, DELETE and rollback,
//! decided inside the store's transaction, against the real daemon.

mod support;

use serde_json::{json, Value};
use support::{one_winner, send, sidecar_bundle, TestDaemon};

fn put(daemon: &TestDaemon, version: &str, if_match: &str) -> reqwest::RequestBuilder {
    reqwest::Client::new().put(daemon.url("/resources/sidecar")).header("If-Match", if_match).body(sidecar_bundle(version, 10000, 10001).to_string())
}

async fn stored_version(daemon: &TestDaemon) -> Value {
    send(reqwest::Client::new().get(daemon.url("/resources/sidecar"))).await.1["version"].clone()
}

#[tokio::test]
async fn a_stale_if_match_is_412_naming_the_stored_version_and_changes_nothing() {
    let daemon = TestDaemon::start().await;
    let http = reqwest::Client::new();

    // Nothing stored: any If-Match fails, and says so.
    let (status, answer) = send(put(&daemon, "v1", "v0")).await;
    assert_eq!((status, &answer["path"], &answer["stored_version"]), (412, &json!("If-Match"), &Value::Null), "{answer}");
    assert_eq!(send(http.get(daemon.url("/resources/sidecar"))).await.0, 404, "nothing stored");

    assert_eq!(daemon.put("sidecar", sidecar_bundle("v1", 10000, 10001).to_string()).await.0, 200);
    let (status, answer) = send(put(&daemon, "v2", "v0")).await;
    assert_eq!((status, &answer["stored_version"]), (412, &json!("v1")), "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("\"v1\""), "{answer}");
    let (status, answer) = send(http.delete(daemon.url("/resources/sidecar")).header("If-Match", "v0")).await;
    assert_eq!((status, &answer["stored_version"]), (412, &json!("v1")), "DELETE: {answer}");
    let rollback = http.post(daemon.url("/resources/sidecar/rollback")).header("If-Match", "v0").json(&json!({"version": "v1"}));
    let (status, answer) = send(rollback).await;
    assert_eq!((status, &answer["stored_version"]), (412, &json!("v1")), "rollback: {answer}");
    assert_eq!(stored_version(&daemon).await, "v1", "refused writes changed nothing");
    let (_, history) = send(http.get(daemon.url("/resources/sidecar/history"))).await;
    assert_eq!(history["versions"].as_array().map(Vec::len), Some(1), "nothing added to the history: {history}");

    // A matching If-Match (quoted as an ETag, too) goes through.
    let (status, answer) = send(put(&daemon, "v2", "\"v1\"")).await;
    assert_eq!((status, &answer["version"]), (200, &json!("v2")), "{answer}");
    let rollback = http.post(daemon.url("/resources/sidecar/rollback")).header("If-Match", "v2").json(&json!({"version": "v1", "new_version": "v3"}));
    assert_eq!(send(rollback).await.0, 200);
    let (status, _) = send(http.delete(daemon.url("/resources/sidecar")).header("If-Match", "v3")).await;
    assert_eq!(status, 200);
    assert_eq!(send(http.get(daemon.url("/resources/sidecar"))).await.0, 404);
}

#[tokio::test]
async fn of_many_concurrent_puts_with_the_same_if_match_exactly_one_wins() {
    let daemon = TestDaemon::start().await;
    assert_eq!(daemon.put("sidecar", sidecar_bundle("base", 10000, 10001).to_string()).await.0, 200);
    let tasks: Vec<_> = (0..24)
        .map(|i| {
            let request = put(&daemon, &format!("racer-{i}"), "base");
            tokio::spawn(async move { (i, send(request).await) })
        })
        .collect();
    let winner = one_winner(tasks).await;
    assert_eq!(stored_version(&daemon).await, json!(winner));
}
