//! A real etcd (Debian's `etcd-server`, which scripts/test.sh installs) on
//! free loopback ports with a temporary data directory, killed on drop.

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use super::wait_for;

const BINARY: &str = "/usr/bin/etcd";

pub struct Etcd {
    pub client_port: u16,
    peer_port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Etcd {
    /// Starts etcd, or `None` (with a line saying the test is skipped)
    /// where it is not installed; under `CI=true` a missing etcd fails.
    pub async fn start() -> Option<Self> {
        if !std::path::Path::new(BINARY).exists() {
            assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "{BINARY} is missing under CI: scripts/test.sh installs etcd-server");
            eprintln!("SKIPPED: {BINARY} is not installed (scripts/test.sh installs etcd-server)");
            return None;
        }
        let free = || TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port");
        let mut etcd = Self { client_port: free(), peer_port: free(), dir: tempfile::tempdir().expect("temp dir"), child: None };
        etcd.resume().await;
        Some(etcd)
    }

    /// `host:port` for `--store etcd://...`.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    pub fn store(&self) -> sxds::config::EtcdEndpoints {
        sxds::config::EtcdEndpoints(vec![self.endpoint()])
    }

    /// Kills etcd (SIGKILL); its data directory stays for [`Self::resume`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd (again) on the same ports and data; waits until healthy.
    pub async fn resume(&mut self) {
        let (client, peer) = (format!("http://127.0.0.1:{}", self.client_port), format!("http://127.0.0.1:{}", self.peer_port));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log()).expect("etcd log");
        let child = Command::new(BINARY)
            .args(["--name", "sxds-test", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("sxds-test={peer}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("etcd log"))
            .stderr(log)
            .spawn()
            .expect("etcd starts");
        self.child = Some(child);
        let health = format!("{client}/health");
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

    pub fn log(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}
