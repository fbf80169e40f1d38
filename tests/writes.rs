//! Who may write, and what each write leaves behind: bearer tokens from a
//! token file (reloaded on change), loopback-only writes without one, the
//! log line and `GET /writes` entry of every accepted write, and each node
//! type's history with rollback, against the real daemon on port 0.

mod support;

use std::{
    io::Write,
    net::SocketAddr,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use axum::body::Body;
use serde_json::{json, Value};
use support::{
    bundle_with_clusters, send, wait_for,
    xds_client::{names, request, XdsClient, CDS},
    TestDaemon,
};
use tower::ServiceExt;

/// Everything the daemons of this test binary log, as text.
fn captured_logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_env_filter("sxds=info")
            .with_writer(move || Sink(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber per test binary");
        logs
    })
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn log_lines_with(needle: &str) -> Vec<String> {
    let logs = captured_logs().lock().unwrap();
    String::from_utf8_lossy(&logs).lines().filter(|line| line.contains(needle)).map(str::to_owned).collect()
}

/// `GET /writes`, newest first.
async fn writes(daemon: &TestDaemon) -> Vec<Value> {
    let (status, answer) = send(reqwest::Client::new().get(daemon.url("/writes"))).await;
    assert_eq!(status, 200);
    answer["writes"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn with_a_token_file_writes_need_a_listed_token_and_the_file_is_reloaded_on_change() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("tokens");
    std::fs::write(&token_file, "# who may write\nci:ci-secret\n").unwrap();
    let path = token_file.clone();
    let daemon = TestDaemon::start_with(move |config| config.token_file = Some(path)).await;
    let http = reqwest::Client::new();
    let url = daemon.url("/resources/sidecar");
    let body = bundle_with_clusters("v1", &[]).to_string();

    let (status, answer) = send(http.put(&url).body(body.clone())).await;
    assert_eq!(status, 401, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("Authorization: Bearer"), "{answer}");
    let (status, _) = send(http.put(&url).bearer_auth("guess").body(body.clone())).await;
    assert_eq!(status, 401);
    let (status, _) = send(http.get(&url)).await;
    assert_eq!(status, 404, "nothing was stored by the refused writes");

    let (status, answer) = send(http.put(&url).bearer_auth("ci-secret").body(body.clone())).await;
    assert_eq!((status, answer["version"].as_str()), (200, Some("v1")), "{answer}");
    // Reads need no token.
    assert_eq!(send(http.get(&url)).await.0, 200);
    let (status, _) = send(http.delete(&url)).await;
    assert_eq!(status, 401, "DELETE is a write");
    let (status, _) = send(http.post(daemon.url("/resources/sidecar/rollback")).json(&json!({"version": "v1"}))).await;
    assert_eq!(status, 401, "rollback is a write");

    // Revoke ci, add deploy: takes effect at the next write, no restart.
    std::fs::write(&token_file, "deploy:deploy-secret\n").unwrap();
    let (status, _) = send(http.put(&url).bearer_auth("ci-secret").body(bundle_with_clusters("v2", &[]).to_string())).await;
    assert_eq!(status, 401, "a revoked token is refused");
    let (status, _) = send(http.put(&url).bearer_auth("deploy-secret").body(bundle_with_clusters("v2", &[]).to_string())).await;
    assert_eq!(status, 200);
    assert_eq!(writes(&daemon).await[0]["who"], "token deploy");
}

#[tokio::test]
async fn a_token_file_that_cannot_be_read_stops_start_up_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = sxds::Config::for_tests(dir.path().join("data"));
    config.token_file = Some(dir.path().join("no-such-file"));
    let (xds, rest) = (tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(), tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap());
    let error = sxds::run(&config, xds, rest, Default::default()).await.expect_err("refused").to_string();
    assert!(error.contains("no-such-file"), "{error}");
}

/// A PUT from `peer`, through the router as the REST server would pass it.
async fn put_from(app: &axum::Router, peer: Option<SocketAddr>) -> (u16, Value) {
    let mut request = http::Request::put("/resources/sidecar").body(Body::from(bundle_with_clusters("v1", &[]).to_string())).unwrap();
    if let Some(peer) = peer {
        request.extensions_mut().insert(sxds::net::PeerAddr(peer));
    }
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn without_a_token_file_only_loopback_peers_may_write_unless_told_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let store = sxds::store::Store::open(dir.path()).unwrap();
    let registry = sxds::xds::status::Registry::default();
    let policy = sxds::api::WritePolicy::new(None, false).unwrap();
    let app = sxds::api::router(sxds::api::ApiState::new(store.clone(), registry.clone(), 1 << 20, policy));

    // The address is only what the REST server would have put in the request.
    let remote: SocketAddr = "192.0.2.7:40000".parse().unwrap();
    let (status, answer) = put_from(&app, Some(remote)).await;
    assert_eq!(status, 403, "{answer}");
    let message = answer["error"].as_str().unwrap();
    assert!(message.contains("192.0.2.7") && message.contains("--token-file") && message.contains("--allow-unauthenticated-writes"), "{message}");
    assert_eq!(put_from(&app, None).await.0, 403, "an unknown peer is not loopback");
    assert!(store.catalog().is_empty(), "nothing stored");
    assert_eq!(put_from(&app, Some("[::ffff:127.0.0.1]:40000".parse().unwrap())).await.0, 200, "IPv4-mapped loopback");

    let open = sxds::api::WritePolicy::new(None, true).unwrap();
    let app = sxds::api::router(sxds::api::ApiState::new(store.clone(), registry, 1 << 20, open));
    let (status, answer) = put_from(&app, Some(remote)).await;
    assert_eq!(status, 200, "--allow-unauthenticated-writes: {answer}");
}

#[tokio::test]
async fn every_accepted_write_is_logged_with_who_versions_and_resource_changes() {
    captured_logs();
    let daemon = TestDaemon::start().await;
    assert_eq!(daemon.put("audited", bundle_with_clusters("a1", &["x", "y"]).to_string()).await.0, 200);
    assert_eq!(daemon.put("audited", bundle_with_clusters("a2", &["x", "z"]).to_string()).await.0, 200);
    let (status, _) = send(reqwest::Client::new().delete(daemon.url("/resources/audited"))).await;
    assert_eq!(status, 200);

    let writes = writes(&daemon).await;
    let ours: Vec<&Value> = writes.iter().filter(|w| w["node_type"] == "audited").collect();
    assert_eq!(ours.len(), 3, "{writes:?}");
    let (delete, second, first) = (ours[0], ours[1], ours[2]);
    assert!(first["who"].as_str().unwrap().starts_with("peer 127.0.0.1:"), "{first}");
    assert_eq!((first["action"].as_str(), first["old_version"].as_str(), first["new_version"].as_str()), (Some("put"), None, Some("a1")));
    // a1 → a2: cluster y removed, z added; the listener, route, endpoints and backend the same.
    assert_eq!((&second["old_version"], &second["new_version"]), (&json!("a1"), &json!("a2")));
    assert_eq!((&second["added"], &second["changed"], &second["removed"]), (&json!(1), &json!(0), &json!(1)), "{second}");
    assert_eq!((delete["action"].as_str(), delete["new_version"].is_null(), &delete["removed"]), (Some("delete"), true, &json!(6)), "{delete}");

    let lines = log_lines_with("write accepted");
    let line = lines.iter().find(|l| l.contains("node_type=audited") && l.contains("new_version=\"a2\"")).unwrap_or_else(|| panic!("{lines:#?}"));
    for field in ["who=peer 127.0.0.1:", "action=\"put\"", "old_version=\"a1\"", "added=1", "changed_resources=0", "removed=1"] {
        assert!(line.contains(field), "{field} missing from {line}");
    }
}

#[tokio::test]
async fn history_lists_kept_versions_and_a_rollback_serves_an_old_content_under_a_new_version() {
    let daemon = TestDaemon::start_with(|config| config.history = 3.try_into().unwrap()).await;
    let http = reqwest::Client::new();
    for (version, cluster) in [("h1", "one"), ("h2", "two"), ("h3", "three"), ("h4", "four")] {
        assert_eq!(daemon.put("hist", bundle_with_clusters(version, &[cluster]).to_string()).await.0, 200);
    }
    let (status, history) = send(http.get(daemon.url("/resources/hist/history"))).await;
    assert_eq!(status, 200);
    let versions: Vec<&str> = history["versions"].as_array().unwrap().iter().map(|v| v["version"].as_str().unwrap()).collect();
    assert_eq!(versions, ["h4", "h3", "h2"], "newest first, bounded by --history");
    let newest = &history["versions"][0];
    assert_eq!((&newest["current"], &newest["clusters"], &history["versions"][1]["current"]), (&json!(true), &json!(2), &json!(false)));
    assert!(newest["at_unix_ms"].as_u64().unwrap() > 1_700_000_000_000);

    let (status, old) = send(http.get(daemon.url("/resources/hist/versions/h2"))).await;
    assert_eq!((status, old["version"].as_str(), old["clusters"][1]["name"].as_str()), (200, Some("h2"), Some("two")));
    let (status, answer) = send(http.get(daemon.url("/resources/hist/versions/h1"))).await;
    assert_eq!((status, answer["path"].as_str()), (404, Some("version")));
    assert!(answer["error"].as_str().unwrap().contains("\"h1\""), "{answer}");

    // An Envoy on h4 is sent h2's clusters under a new version.
    let mut client = XdsClient::ads(&daemon.xds_url(), request("hist-1", CDS, &[])).await;
    let before = client.recv_acked(&[]).await;
    assert_eq!(before.version_info, "h4");
    let (status, answer) = send(http.post(daemon.url("/resources/hist/rollback")).json(&json!({"version": "h2"}))).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!((answer["version"].as_str(), answer["rolled_back_to"].as_str(), &answer["clusters"]), (Some("h2-rollback-5"), Some("h2"), &json!(2)));
    let pushed = client.recv_acked(&[]).await;
    assert_eq!(pushed.version_info, "h2-rollback-5");
    let names = names(&pushed);
    assert!(names.contains(&"two".to_owned()) && !names.contains(&"four".to_owned()), "{names:?}");

    let (_, history) = send(http.get(daemon.url("/resources/hist/history"))).await;
    assert_eq!((&history["versions"][0]["version"], &history["versions"][0]["rollback_of"]), (&json!("h2-rollback-5"), &json!("h2")));
    for (body, status, path) in [
        (json!({"version": "h1"}), 404, "version"),
        (json!({"version": "h3", "new_version": "h4"}), 409, "version"),
        (json!({"version": "h3", "new_version": "bad\u{7}"}), 400, "new_version"),
        (json!({"versoin": "h3"}), 400, "versoin"),
    ] {
        let (got, answer) = send(http.post(daemon.url("/resources/hist/rollback")).json(&body)).await;
        assert_eq!((got, answer["path"].as_str()), (status, Some(path)), "{body}: {answer}");
    }
    assert_eq!(send(http.get(daemon.url("/resources/hist"))).await.1["version"], "h2-rollback-5", "refused rollbacks change nothing");
    wait_for("the rollback in /writes", Duration::from_secs(5), || async { writes(&daemon).await.iter().any(|w| w["action"] == "rollback") }).await;
}
