//! What the Cloud Map end-to-end tests add to [`super::envoy`]: the `sxds`
//! binary with an AWS region and test credentials in its own environment
//! (the test process's environment stays untouched, so tests in one process
//! can run in parallel), traffic that remembers which backend answered each
//! request and when it was sent, the hosts Envoy holds for a cluster, and a
//! port that accepts connections and never answers (Cloud Map "down"
//! without refusing, so a first poll takes a while to fail).

use std::{
    collections::BTreeSet,
    fs::OpenOptions,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use tempfile::TempDir;
use tokio::{net::TcpListener, task::JoinHandle, time::Instant};
use tokio_util::sync::CancellationToken;

use super::{
    envoy::{fetch, free_port, log_tail, CONVERGE},
    sxds_binary, wait_for,
};

/// The region the emulator's clients sign for (moto keeps one backend per region).
const AWS_ENV: [(&str, &str); 3] = [("AWS_REGION", "us-east-1"), ("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test")];

/// The `sxds` binary on free loopback ports, polling Cloud Map at
/// `cloud_map_endpoint` every 200 ms with a full refresh every 300 ms.
/// Killed on drop; its log tail is printed when the test panicked.
pub struct Sxds {
    pub xds_port: u16,
    pub rest_port: u16,
    child: Option<Child>,
    endpoint: String,
    // Last: the process goes before its directory.
    dir: TempDir,
}

impl Sxds {
    pub async fn start(cloud_map_endpoint: &str) -> Self {
        let mut sxds = Self { xds_port: free_port(), rest_port: free_port(), child: None, endpoint: cloud_map_endpoint.to_owned(), dir: tempfile::tempdir().expect("temp dir") };
        sxds.restart().await;
        sxds
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("sxds.log")
    }

    /// Starts the binary (again) on the same ports and data directory; waits for `/healthz`.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "sxds still running");
        let file = OpenOptions::new().create(true).append(true).open(self.log()).expect("sxds log");
        let mut command: Command = sxds_binary();
        command.args(["--listen-address", "127.0.0.1", "--log", "info,sxds=debug"]);
        command.args(["--xds-port", &self.xds_port.to_string(), "--cacher-port", &self.rest_port.to_string()]);
        command.arg("--data-dir").arg(self.dir.path().join("data"));
        command.args(["--cloud-map-endpoint", &self.endpoint, "--cloud-map-interval", "200ms", "--cloud-map-refresh", "300ms"]);
        command.env_remove("AWS_ENDPOINT_URL").env_remove("AWS_PROFILE").envs(AWS_ENV);
        command.stdin(Stdio::null()).stdout(file.try_clone().expect("sxds log")).stderr(file);
        self.child = Some(command.spawn().expect("sxds starts"));
        let (http, health) = (http(), self.url("/healthz"));
        wait_for("sxds /healthz", CONVERGE, || {
            let request = http.get(&health).send();
            async { request.await.is_ok_and(|r| r.status().is_success()) }
        })
        .await;
    }

    /// SIGTERM, then waits (bounded) for a clean exit.
    pub async fn stop(&mut self) {
        let mut child = self.child.take().expect("sxds running");
        let sent = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("run kill");
        assert!(sent.success(), "kill -TERM failed");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().expect("wait for sxds") {
                assert!(status.success(), "sxds exited with {status} on SIGTERM");
                return;
            }
            assert!(Instant::now() < deadline, "sxds did not exit within 20 s of SIGTERM");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.rest_port)
    }

    /// PUTs `bundle`; answers the status and JSON body.
    pub async fn put(&self, node_type: &str, bundle: &Value) -> (u16, Value) {
        let response = http().put(self.url(&format!("/resources/{node_type}"))).json(bundle).send().await.expect("PUT");
        (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
    }

    pub async fn put_ok(&self, node_type: &str, bundle: &Value) {
        let (status, answer) = self.put(node_type, bundle).await;
        assert_eq!(status, 200, "PUT /resources/{node_type}: {answer}");
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let response = http().get(self.url(path)).send().await.expect("GET");
        assert!(response.status().is_success(), "GET {path}: {}", response.status());
        response.json().await.expect("JSON answer")
    }

    /// The one source of `node_type`'s bundle, from `GET /resources/{node_type}/sources`.
    pub async fn source(&self, node_type: &str) -> Value {
        let answer = self.get_json(&format!("/resources/{node_type}/sources")).await;
        let sources = answer["sources"].as_array().cloned().unwrap_or_default();
        assert_eq!(sources.len(), 1, "one source: {answer}");
        sources[0].clone()
    }

    /// Waits until the source's `state` is `state`; answers the source.
    pub async fn wait_source(&self, node_type: &str, state: &str, limit: Duration) -> Value {
        let what = format!("the {node_type} source to be {state} (GET /resources/{node_type}/sources)");
        wait_for(&what, limit, || async { self.source(node_type).await["state"] == state }).await;
        self.source(node_type).await
    }
}

impl Drop for Sxds {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- sxds log ({}) ----\n{}", self.log().display(), log_tail(&self.log(), 60));
        }
    }
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
