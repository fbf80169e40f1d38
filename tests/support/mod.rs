//! Shared test helpers: the real daemon on port 0 with a temporary data
//! directory, and bounded waits.

#![allow(dead_code)]

pub mod backends;
pub mod chromium;
pub mod cloud_map;
pub mod etcd;
pub mod run;
pub mod tls;
pub mod xds_client;

use std::{future::Future, net::SocketAddr, path::PathBuf, time::Duration};

use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

/// The daemon started in-process through `sxds::run`.
pub struct TestDaemon {
    pub xds_addr: SocketAddr,
    pub rest_addr: SocketAddr,
    pub data_dir: PathBuf,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), sxds::RunError>>,
    _temp: Option<tempfile::TempDir>,
}

impl TestDaemon {
    /// Starts on loopback port 0 with a fresh data directory.
    pub async fn start() -> Self {
        let temp = tempfile::tempdir().expect("temp dir");
        let mut daemon = Self::start_in(temp.path().to_path_buf()).await;
        daemon._temp = Some(temp);
        daemon
    }

    /// Starts on loopback port 0 with the given data directory.
    pub async fn start_in(data_dir: PathBuf) -> Self {
        Self::start_in_with(data_dir, |_| {}).await
    }

    /// Starts with a fresh data directory and a test config that `adjust`
    /// may change (e.g. a small `body_limit`).
    pub async fn start_with(adjust: impl FnOnce(&mut sxds::Config)) -> Self {
        let temp = tempfile::tempdir().expect("temp dir");
        let mut daemon = Self::start_in_with(temp.path().to_path_buf(), adjust).await;
        daemon._temp = Some(temp);
        daemon
    }

    /// Starts in `data_dir` with a test config that `adjust` may change.
    pub async fn start_in_with(data_dir: PathBuf, adjust: impl FnOnce(&mut sxds::Config)) -> Self {
        let daemon = Self::spawn(data_dir, adjust).await;
        let health = daemon.url("/healthz");
        wait_for("REST health", Duration::from_secs(10), || {
            let health = health.clone();
            async move { reqwest::get(&health).await.is_ok_and(|r| r.status().is_success()) }
        })
        .await;
        daemon
    }

    /// Starts with a fresh data directory and a config `adjust` gives TLS
    /// (`tls_cert`, `tls_key`); waits until `https` answers `/healthz`.
    pub async fn start_tls(adjust: impl FnOnce(&mut sxds::Config), https: &reqwest::Client) -> Self {
        let temp = tempfile::tempdir().expect("temp dir");
        let mut daemon = Self::spawn(temp.path().to_path_buf(), adjust).await;
        daemon._temp = Some(temp);
        let health = daemon.https_url("/healthz");
        wait_for("REST health over TLS", Duration::from_secs(10), || {
            let request = https.get(&health).send();
            async move { request.await.is_ok_and(|r| r.status().is_success()) }
        })
        .await;
        daemon
    }

    /// Runs `sxds::run` on loopback port 0 without waiting for it.
    async fn spawn(data_dir: PathBuf, adjust: impl FnOnce(&mut sxds::Config)) -> Self {
        let mut config = sxds::Config::for_tests(data_dir.clone());
        adjust(&mut config);
        let xds = TcpListener::bind("127.0.0.1:0").await.expect("bind xds");
        let rest = TcpListener::bind("127.0.0.1:0").await.expect("bind rest");
        let (xds_addr, rest_addr) = (xds.local_addr().unwrap(), rest.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move { sxds::run(&config, xds, rest, token).await });
        Self { xds_addr, rest_addr, data_dir, shutdown, task, _temp: None }
    }

    pub fn https_url(&self, path: &str) -> String {
        format!("https://{}{}", self.rest_addr, path)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.rest_addr, path)
    }

    pub fn xds_url(&self) -> String {
        format!("http://{}", self.xds_addr)
    }

    /// PUTs a JSON body; returns status and parsed JSON answer.
    pub async fn put(&self, node_type: &str, body: impl Into<reqwest::Body>) -> (u16, serde_json::Value) {
        let response = reqwest::Client::new()
            .put(self.url(&format!("/resources/{node_type}")))
            .body(body)
            .send()
            .await
            .expect("PUT");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// Graceful stop; returns what `run` returned. Keeps the data directory
    /// when it was given by the caller.
    pub async fn stop(self) -> Result<(), sxds::RunError> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("daemon stops within 20 s")
            .expect("daemon task")
    }
}

/// The `sxds` binary, started from a clean slate whatever `SXDS_*`
/// variables the caller's environment holds.
pub fn sxds_binary() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sxds"));
    for (key, _) in std::env::vars() {
        if key.starts_with("SXDS_") {
            command.env_remove(key);
        }
    }
    command
}

/// Sends a request; answers its status and JSON body (`Null` when not JSON).
pub async fn send(request: reqwest::RequestBuilder) -> (u16, serde_json::Value) {
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(serde_json::Value::Null))
}

/// [`sidecar_bundle`] plus a static cluster per name.
pub fn bundle_with_clusters(version: &str, clusters: &[&str]) -> serde_json::Value {
    let mut bundle = sidecar_bundle(version, 10000, 10001);
    let list = bundle["clusters"].as_array_mut().expect("clusters");
    list.extend(clusters.iter().map(|name| serde_json::json!({"name": name, "connect_timeout": "1s"})));
    bundle
}

/// Awaits PUTs of versions `racer-<i>` that raced with one `If-Match`:
/// exactly one is answered 200, every other 412 naming a racer's version.
/// Answers the winner.
pub async fn one_winner(racers: Vec<JoinHandle<(usize, (u16, serde_json::Value))>>) -> String {
    let mut winners = Vec::new();
    for racer in racers {
        let (i, (status, answer)) = racer.await.expect("racer task");
        match status {
            200 => winners.push(format!("racer-{i}")),
            412 => assert!(answer["stored_version"].as_str().is_some_and(|v| v.starts_with("racer-")), "a loser is told the winner: {answer}"),
            other => panic!("racer {i}: {other} {answer}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one winner: {winners:?}");
    winners.remove(0)
}

/// Polls `check` until it is true; panics naming `what` after `limit`.
pub async fn wait_for<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A small valid bundle: listener `listener_0` on `port` with RDS route
/// `local_route` to EDS cluster `backend` at `backend_port`.
pub fn sidecar_bundle(version: &str, port: u16, backend_port: u16) -> serde_json::Value {
    serde_json::json!({
        "version": version,
        "listeners": [{
            "name": "listener_0",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "ingress_http",
                    "rds": {"route_config_name": "local_route", "config_source": {"ads": {}, "resource_api_version": "V3"}},
                    "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
                }
            }]}]
        }],
        "clusters": [{
            "name": "backend",
            "type": "EDS",
            "connect_timeout": "1s",
            "eds_cluster_config": {"eds_config": {"ads": {}, "resource_api_version": "V3"}}
        }],
        "routes": [{
            "name": "local_route",
            "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "backend"}}]}]
        }],
        "endpoints": [{
            "cluster_name": "backend",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": backend_port}}}}]}]
        }]
    })
}
pub mod envoy;
pub mod proxyless;
