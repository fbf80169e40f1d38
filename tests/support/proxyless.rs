//! A proxyless gRPC client for the end-to-end tests: `tests/grpc/proxyless.py`
//! runs Python `grpcio` on an `xds:///` target, configured only through the
//! shipped bootstrap (examples/grpc-bootstrap.json) pointed at sxds, with
//! its own gRPC backends on free loopback ports. The test talks to it one
//! JSON line per command over stdin and stdout; the process is killed when
//! the guard drops, and on a failure the tail of its log is printed.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use tempfile::TempDir;
use tokio::sync::mpsc;

use super::envoy::{example_path, log_tail};

/// How long one command may take: the first call waits for the whole
/// config (LDS, RDS, CDS, EDS) to arrive, and 200 calls on a busy 2-core
/// machine take a few seconds.
const COMMAND: Duration = Duration::from_secs(60);

/// The grpcio version `scripts/test.sh` installs.
pub const GRPCIO: &str = "1.85.1";

/// What a batch of calls got: replies by backend name, and failures.
#[derive(Debug, Default)]
pub struct Calls {
    pub replies: BTreeMap<String, u64>,
    pub failures: Vec<String>,
}

impl Calls {
    /// Replies from `backend`.
    pub fn of(&self, backend: &str) -> u64 {
        self.replies.get(backend).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.replies.values().sum()
    }
}

/// `tests/grpc/proxyless.py`: gRPC backends and one client channel.
pub struct Proxyless {
    /// Each backend's port, by name.
    pub ports: BTreeMap<String, u16>,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    log: PathBuf,
    _dir: TempDir,
}

impl Proxyless {
    /// Starts backends named `backends` and a client of `xds:///{target}`
    /// whose bootstrap names sxds at `xds_port` and node id `node_id`.
    pub async fn start(xds_port: u16, node_id: &str, target: &str, backends: &[&str]) -> Self {
        assert!(
            grpcio_importable(),
            "Python `grpc` is not importable: the proxyless gRPC test needs grpcio {GRPCIO}. Run the README test \
             command (scripts/test.sh installs it with `pip install grpcio=={GRPCIO}`)"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let bootstrap = dir.path().join("bootstrap.json");
        std::fs::write(&bootstrap, bootstrap_json(xds_port, node_id)).expect("write bootstrap");
        let log = dir.path().join("proxyless.log");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/grpc/proxyless.py");
        let mut command = Command::new("python3");
        command.arg(script).arg(target).args(backends);
        command.env("GRPC_XDS_BOOTSTRAP", &bootstrap);
        // gRPC honours proxy variables: loopback traffic must not go through one.
        for key in ["http_proxy", "https_proxy", "grpc_proxy", "HTTP_PROXY", "HTTPS_PROXY", "GRPC_PROXY"] {
            command.env_remove(key);
        }
        command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(File::create(&log).expect("create log"));
        let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot start python3 {}: {e}", "tests/grpc/proxyless.py"));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        // A thread turns the blocking pipe into lines the test awaits with a bound.
        let (sender, lines) = mpsc::channel(16);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.blocking_send(line).is_err() {
                    break;
                }
            }
        });
        let mut client = Self { ports: BTreeMap::new(), child: Some(child), stdin, lines, log, _dir: dir };
        let hello = client.answer("the backends' ports").await;
        let ports = hello["ports"].as_object().unwrap_or_else(|| panic!("no ports in {hello}"));
        client.ports = ports.iter().map(|(name, port)| (name.clone(), port.as_u64().and_then(|p| u16::try_from(p).ok()).expect("a port"))).collect();
        client
    }

    /// `n` calls, one after the other.
    pub async fn call(&mut self, n: usize) -> Calls {
        calls(&self.command(&format!("call {n}")).await)
    }

    /// Starts calling in the background until [`Self::stop_traffic`].
    pub async fn start_traffic(&mut self) {
        let answer = self.command("start").await;
        assert_eq!(answer["ok"], true, "start: {answer}");
    }

    /// What the background calls got since [`Self::start_traffic`].
    pub async fn stop_traffic(&mut self) -> Calls {
        calls(&self.command("stop").await)
    }

    /// Everything the client logged (grpcio logs to stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn command(&mut self, line: &str) -> Value {
        let stdin = self.stdin.as_mut().expect("client running");
        writeln!(stdin, "{line}").and_then(|()| stdin.flush()).unwrap_or_else(|e| panic!("write {line:?} to the client: {e}"));
        self.answer(line).await
    }

    async fn answer(&mut self, what: &str) -> Value {
        let line = match tokio::time::timeout(COMMAND, self.lines.recv()).await {
            Ok(Some(line)) => line,
            Ok(None) => panic!("the proxyless client exited before answering {what:?}"),
            Err(_) => panic!("the proxyless client did not answer {what:?} within {COMMAND:?}"),
        };
        let answer: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("answer to {what:?} is not JSON ({e}): {line}"));
        assert!(answer.get("error").is_none(), "{what:?}: {answer}");
        answer
    }
}

impl Drop for Proxyless {
    fn drop(&mut self) {
        // Closing stdin asks the script to stop its servers; the kill makes sure.
        drop(self.stdin.take());
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- proxyless gRPC client log ({}) ----\n{}", self.log.display(), log_tail(&self.log, 60));
        }
    }
}

fn calls(answer: &Value) -> Calls {
    let replies = answer["replies"].as_object().unwrap_or_else(|| panic!("no replies in {answer}"));
    let failures = answer["failures"].as_array().unwrap_or_else(|| panic!("no failures in {answer}"));
    Calls {
        replies: replies.iter().map(|(name, n)| (name.clone(), n.as_u64().expect("a count"))).collect(),
        failures: failures.iter().map(|f| f.as_str().unwrap_or_default().to_owned()).collect(),
    }
}

fn grpcio_importable() -> bool {
    Command::new("python3").args(["-c", "import grpc"]).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// examples/grpc-bootstrap.json with sxds's xDS port and the node id replaced.
pub fn bootstrap_json(xds_port: u16, node_id: &str) -> String {
    let text = std::fs::read_to_string(example_path("grpc-bootstrap.json")).expect("read example bootstrap");
    for fixed in ["127.0.0.1:8081", "\"proxyless-app1\""] {
        assert_eq!(text.matches(fixed).count(), 1, "examples/grpc-bootstrap.json should have exactly one `{fixed}`");
    }
    text.replace("127.0.0.1:8081", &format!("127.0.0.1:{xds_port}")).replace("\"proxyless-app1\"", &format!("{node_id:?}"))
}
