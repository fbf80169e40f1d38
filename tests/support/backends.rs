//! What the Cloud Map end-to-end tests add to [`super::envoy`]: the `sxds`
//! binary with an AWS region and test credentials in its own environment
//! (the test process's environment stays untouched, so tests in one process
//! can run in parallel) and its sources' status, traffic that remembers which backend answered each
//! request and when it was sent, the hosts Envoy holds for a cluster, and a
//! port that accepts connections and never answers (Cloud Map "down"
//! without refusing, so a first poll takes a while to fail).

use std::{collections::BTreeSet, time::Duration};

use serde_json::Value;
use tokio::{net::TcpListener, task::JoinHandle, time::Instant};
use tokio_util::sync::CancellationToken;

use super::{
    envoy::{fetch, Daemon},
    wait_for,
};

/// The region the emulator's clients sign for (moto keeps one backend per region).
const AWS_ENV: [(&str, &str); 3] = [("AWS_REGION", "us-east-1"), ("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test")];

/// The `sxds` binary polling Cloud Map at `cloud_map_endpoint` every 200 ms
/// with a full refresh every 300 ms, with an AWS region and test
/// credentials in its own environment.
pub async fn cloud_map_daemon(cloud_map_endpoint: &str) -> Daemon {
    let flags = ["--cloud-map-endpoint", cloud_map_endpoint, "--cloud-map-interval", "200ms", "--cloud-map-refresh", "300ms"];
    Daemon::start_with_env(&flags, &AWS_ENV).await
}

/// The one source of `node_type`'s bundle, from `GET /resources/{node_type}/sources`.
pub async fn source_of(daemon: &Daemon, node_type: &str) -> Value {
    let answer = daemon.get_json(&format!("/resources/{node_type}/sources")).await;
    let sources = answer["sources"].as_array().cloned().unwrap_or_default();
    assert_eq!(sources.len(), 1, "one source: {answer}");
    sources[0].clone()
}

/// Waits until the source's `state` is `state`; answers the source.
pub async fn wait_source(daemon: &Daemon, node_type: &str, state: &str, limit: Duration) -> Value {
    let what = format!("the {node_type} source to be {state} (GET /resources/{node_type}/sources)");
    wait_for(&what, limit, || async { source_of(daemon, node_type).await["state"] == state }).await;
    source_of(daemon, node_type).await
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build().expect("HTTP client")
}

/// One request through Envoy: when it was sent and what answered.
#[derive(Debug, Clone)]
pub struct Sample {
    pub sent: Instant,
    /// The body of a 200 (the backend's name), or what went wrong.
    pub answer: Result<String, String>,
}

/// Requests sent through Envoy's listener in the background, one after the
/// other (paced 20 ms apart), each remembered.
pub struct Recorder {
    stop: CancellationToken,
    task: JoinHandle<Vec<Sample>>,
}

impl Recorder {
    pub fn start(port: u16) -> Self {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let mut samples = Vec::new();
            while !token.is_cancelled() {
                let sent = Instant::now();
                samples.push(Sample { sent, answer: fetch(port, "/").await });
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            samples
        });
        Self { stop, task }
    }

    /// Stops; answers every sample, after asserting each was a 200 (and some were sent).
    pub async fn stop_all_ok(self, during: &str) -> Vec<Sample> {
        self.stop.cancel();
        let samples = self.task.await.expect("traffic task");
        let failed: Vec<&Sample> = samples.iter().filter(|s| s.answer.is_err()).collect();
        assert!(failed.is_empty(), "{} of {} requests failed {during}: {failed:?}", failed.len(), samples.len());
        assert!(!samples.is_empty(), "no request was sent {during}");
        samples
    }
}

/// The ports of the hosts Envoy's admin `/clusters` lists for `cluster`.
pub async fn envoy_hosts(admin_port: u16, cluster: &str) -> BTreeSet<u16> {
    let url = format!("http://127.0.0.1:{admin_port}/clusters");
    let Ok(response) = http().get(url).send().await else { return BTreeSet::new() };
    let text = response.text().await.unwrap_or_default();
    let prefix = format!("{cluster}::");
    text.lines()
        .filter_map(|line| line.strip_prefix(&prefix))
        .filter(|rest| rest.contains("::health_flags::"))
        .filter_map(|rest| rest.split("::").next())
        .filter_map(|address| address.rsplit_once(':').and_then(|(_, port)| port.parse().ok()))
        .collect()
}

/// Waits until Envoy holds exactly the hosts on `ports` for `cluster`;
/// answers when it saw them.
pub async fn wait_envoy_hosts(admin_port: u16, cluster: &str, ports: &[u16], limit: Duration) -> Instant {
    let wanted: BTreeSet<u16> = ports.iter().copied().collect();
    let what = format!("Envoy's /clusters to list exactly {wanted:?} for {cluster}");
    wait_for(&what, limit, || async { envoy_hosts(admin_port, cluster).await == wanted }).await;
    Instant::now()
}

/// Waits until requests through Envoy have reached every backend in `names`.
pub async fn wait_reached(port: u16, names: &[&str], limit: Duration) {
    let (mut seen, deadline) = (BTreeSet::new(), Instant::now() + limit);
    while !names.iter().all(|name| seen.contains(*name)) {
        assert!(Instant::now() < deadline, "requests through Envoy did not reach each of {names:?} within {limit:?}; reached {seen:?}");
        if let Ok(body) = fetch(port, "/").await {
            seen.insert(body);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A loopback port that accepts connections and holds each for `hold`
/// without answering: a Cloud Map that is down in the slow way.
pub struct Stalling {
    task: JoinHandle<()>,
}

impl Stalling {
    pub async fn bind(port: u16, hold: Duration) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap_or_else(|e| panic!("bind 127.0.0.1:{port}: {e}"));
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    tokio::time::sleep(hold).await;
                    drop(socket);
                });
            }
        });
        Self { task }
    }
}

impl Drop for Stalling {
    fn drop(&mut self) {
        self.task.abort();
    }
}
