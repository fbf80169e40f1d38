//! A real etcd (Debian's `etcd-server`, which scripts/test.sh installs) of
//! one or three members on free loopback ports with a temporary data
//! directory, killed on drop.

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use super::wait_for;

const BINARY: &str = "/usr/bin/etcd";

struct Member {
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

pub struct Etcd {
    members: Vec<Member>,
    dir: tempfile::TempDir,
    /// Server certificate, key and the CA client certificates must chain
    /// to: clients speak TLS and must present a certificate.
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
}

impl Etcd {
    /// Starts a one-member etcd, or `None` (with a line saying the test is
    /// skipped) where it is not installed; under `CI=true` a missing etcd fails.
    pub async fn start() -> Option<Self> {
        Self::cluster(1).await
    }

    /// Starts `size` members forming one cluster; `None` as for [`Self::start`].
    pub async fn cluster(size: usize) -> Option<Self> {
        Self::launch(size, None).await
    }

    /// One member serving TLS with `cert`/`key`, requiring client
    /// certificates signed by `ca` (etcd's `--client-cert-auth`).
    pub async fn start_tls(cert: PathBuf, key: PathBuf, ca: PathBuf) -> Option<Self> {
        Self::launch(1, Some((cert, key, ca))).await
    }

    async fn launch(size: usize, tls: Option<(PathBuf, PathBuf, PathBuf)>) -> Option<Self> {
        if !std::path::Path::new(BINARY).exists() {
            assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "{BINARY} is missing under CI: scripts/test.sh installs etcd-server");
            eprintln!("SKIPPED: {BINARY} is not installed (scripts/test.sh installs etcd-server)");
            return None;
        }
        let free = || TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port");
        let members = (0..size).map(|_| Member { client_port: free(), peer_port: free(), child: None }).collect();
        let mut etcd = Self { members, dir: tempfile::tempdir().expect("temp dir"), tls };
        for i in 0..size {
            etcd.spawn(i);
        }
        for i in 0..size {
            etcd.wait_healthy(i).await;
        }
        Some(etcd)
    }

    /// `host:port` of every member, comma-separated (one member: just it).
    pub fn endpoint(&self) -> String {
        self.endpoints().join(",")
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| format!("127.0.0.1:{}", m.client_port)).collect()
    }

    /// For `--store etcd://...`: every member.
    pub fn store(&self) -> sxds::config::EtcdEndpoints {
        sxds::config::EtcdEndpoints(self.endpoints())
    }

    /// Kills every member (SIGKILL); the data stays for [`Self::resume`].
    pub fn kill(&mut self) {
        for i in 0..self.members.len() {
            self.kill_member(i);
        }
    }

    /// Kills member `i` (SIGKILL).
    pub fn kill_member(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts every member again on the same ports and data; waits until healthy.
    pub async fn resume(&mut self) {
        for i in 0..self.members.len() {
            self.spawn(i);
        }
        for i in 0..self.members.len() {
            self.wait_healthy(i).await;
        }
    }

    fn name(i: usize) -> String {
        format!("sxds-test-{i}")
    }

    fn spawn(&mut self, i: usize) {
        let url = |port: u16| format!("http://127.0.0.1:{port}");
        let cluster: Vec<String> = self.members.iter().enumerate().map(|(j, m)| format!("{}={}", Self::name(j), url(m.peer_port))).collect();
        let (mut client, peer) = (url(self.members[i].client_port), url(self.members[i].peer_port));
        let mut tls_args = Vec::new();
        if let Some((cert, key, ca)) = &self.tls {
            client = client.replace("http://", "https://");
            tls_args.extend(["--client-cert-auth".into(), "--cert-file".into(), cert.clone().into_os_string(), "--key-file".into(), key.clone().into_os_string()]);
            tls_args.extend(["--trusted-ca-file".into(), ca.clone().into_os_string()]);
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log()).expect("etcd log");
        let child = Command::new(BINARY)
            .args(["--name", &Self::name(i), "--data-dir"])
            .arg(self.dir.path().join(Self::name(i)))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &cluster.join(","), "--initial-cluster-state", "new"])
            .args(tls_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("etcd log"))
            .stderr(log)
            .spawn()
            .expect("etcd starts");
        self.members[i].child = Some(child);
    }

    async fn wait_healthy(&self, i: usize) {
        if self.tls.is_some() {
            // /health wants a client certificate too: the port is enough here.
            let addr = format!("127.0.0.1:{}", self.members[i].client_port);
            wait_for("etcd listening", Duration::from_secs(20), || {
                let addr = addr.clone();
                async move { tokio::net::TcpStream::connect(addr).await.is_ok() }
            })
            .await;
            return;
        }
        let health = format!("http://127.0.0.1:{}/health", self.members[i].client_port);
        wait_for("etcd healthy", Duration::from_secs(20), || {
            let health = health.clone();
            async move {
                match reqwest::get(&health).await {
                    Ok(response) => response.text().await.is_ok_and(|body| body.contains("\"true\"")),
                    Err(_) => false,
                }
            }
        })
        .await;
    }

    /// Every member's output, for a failing test's message.
    pub fn log(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP relay to an etcd member that a test can cut and restore, so one
/// replica loses etcd while etcd itself and the other replicas go on.
pub struct Relay {
    pub addr: std::net::SocketAddr,
    state: std::sync::Arc<std::sync::Mutex<Option<tokio_util::sync::CancellationToken>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn to(target: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay address");
        let state = std::sync::Arc::new(std::sync::Mutex::new(Some(tokio_util::sync::CancellationToken::new())));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                // Cut: the connection is closed at once.
                let Some(open) = shared.lock().unwrap().clone() else { continue };
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        () = open.cancelled() => {}
                    }
                });
            }
        });
        Self { addr, state, task }
    }

    /// Closes every relayed connection and refuses new ones.
    pub fn cut(&self) {
        if let Some(open) = self.state.lock().unwrap().take() {
            open.cancel();
        }
    }

    pub fn restore(&self) {
        self.state.lock().unwrap().get_or_insert_with(tokio_util::sync::CancellationToken::new);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
