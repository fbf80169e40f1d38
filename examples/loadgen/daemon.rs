//! The daemon under test: started on free loopback ports with a temporary
//! data directory (or attached to by PID), and sampled from /proc.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener},
    path::Path,
    process::{Child, Command},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use serde_json::{json, Value};

pub struct Daemon {
    pub xds_addr: SocketAddr,
    pub rest_addr: SocketAddr,
    pub pid: u32,
    child: Option<Child>,
    _data_dir: Option<tempfile::TempDir>,
}

impl Daemon {
    /// Starts `binary` on two free loopback ports; waits for `/healthz`.
    pub async fn start(binary: &Path) -> anyhow::Result<Self> {
        Self::start_with(binary, &[], &[]).await
    }

    /// [`Daemon::start`] with more flags and environment variables (a
    /// scenario's `--cloud-map-endpoint` and the AWS SDK's region and keys).
    pub async fn start_with(binary: &Path, extra_args: &[String], env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let data_dir = tempfile::tempdir()?;
        let (xds_port, rest_port) = (free_port()?, free_port()?);
        let child = Command::new(binary)
            .args(["--listen-address", "127.0.0.1", "--log", "warn"])
            .args(["--xds-port", &xds_port.to_string(), "--cacher-port", &rest_port.to_string()])
            .arg("--data-dir")
            .arg(data_dir.path())
            .args(extra_args)
            .envs(env.iter().copied())
            .spawn()
            .context("cannot run the daemon (build it with `cargo build --release`)")?;
        let daemon = Self {
            xds_addr: SocketAddr::from(([127, 0, 0, 1], xds_port)),
            rest_addr: SocketAddr::from(([127, 0, 0, 1], rest_port)),
            pid: child.id(),
            child: Some(child),
            _data_dir: Some(data_dir),
        };
        let health = format!("http://{}/healthz", daemon.rest_addr);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if reqwest::get(&health).await.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            if Instant::now() > deadline {
                bail!("the daemon did not answer {health} within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!("loadgen: started {} (pid {}) xds={} rest={}", binary.display(), daemon.pid, daemon.xds_addr, daemon.rest_addr);
        Ok(daemon)
    }

    /// A daemon someone else started.
    pub fn attach(xds_addr: SocketAddr, rest_addr: SocketAddr, pid: u32) -> Self {
        Self { xds_addr, rest_addr, pid, child: None, _data_dir: None }
    }

    pub fn sample(&self) -> anyhow::Result<Sample> {
        Sample::of(&self.pid.to_string())
    }

    /// The daemon's established xDS connections by the client's address,
    /// as the kernel lists them (/proc/net/tcp): the sockets whose local end
    /// is the xDS port. Shows that the fleet's source addresses reached it.
    pub fn clients(&self) -> anyhow::Result<BTreeMap<IpAddr, usize>> {
        let table = std::fs::read_to_string("/proc/net/tcp").context("/proc/net/tcp")?;
        Ok(established_to(&table, self.xds_addr))
    }

    /// File descriptors the daemon holds open now.
    pub fn open_files(&self) -> usize {
        open_files(&self.pid.to_string())
    }

    /// SIGTERM, then SIGKILL if it is still there after 15 s. Only a daemon
    /// this process started; also on drop, so an error never leaves one behind.
    pub fn stop(mut self) {
        self.stop_child();
    }

    fn stop_child(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop_child();
    }
}

/// Counts, by remote address, the ESTABLISHED (`01`) IPv4 sockets of a
/// /proc/net/tcp listing whose local end is `server`: not a client socket
/// that another local address gave the same port number. Addresses are
/// printed as the kernel's 32-bit words in hexadecimal, ports in big-endian hex.
fn established_to(table: &str, server: SocketAddr) -> BTreeMap<IpAddr, usize> {
    let mut clients = BTreeMap::new();
    let address = |field: &str| {
        let (ip, port) = field.split_once(':')?;
        let ip = u32::from_str_radix(ip, 16).ok()?;
        Some((Ipv4Addr::from(ip.to_ne_bytes()), u16::from_str_radix(port, 16).ok()?))
    };
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().take(4).collect();
        let [_, local, remote, "01"] = fields[..] else { continue };
        if let (Some((local_ip, local_port)), Some((ip, _))) = (address(local), address(remote)) {
            if SocketAddr::from((local_ip, local_port)) == server {
                *clients.entry(IpAddr::V4(ip)).or_insert(0) += 1;
            }
        }
    }
    clients
}

/// File descriptors process `pid` (a number or `self`) holds open now.
pub fn open_files(pid: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |entries| entries.count())
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A process's memory and CPU time, from /proc.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    pub rss_kib: u64,
    /// Peak RSS since start (VmHWM).
    pub hwm_kib: u64,
    /// User + system CPU time.
    pub cpu_ms: u64,
}

impl Sample {
    /// `pid` is a number or `self`.
    pub fn of(pid: &str) -> anyhow::Result<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("/proc/{pid}/status"))?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kib| kib.parse().ok())
                .unwrap_or(0)
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the parenthesised command name: state is field 3,
        // utime and stime are fields 14 and 15, in clock ticks.
        let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let ticks: u64 = fields.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
            + fields.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        Ok(Self { rss_kib: field("VmRSS:"), hwm_kib: field("VmHWM:"), cpu_ms: ticks * 1000 / clock_ticks() })
    }

    pub fn of_self() -> Self {
        Self::of("self").unwrap_or_default()
    }

    pub fn to_json(self) -> Value {
        json!({ "rss_kib": self.rss_kib, "hwm_kib": self.hwm_kib, "cpu_ms": self.cpu_ms })
    }
}

/// USER_HZ: 100 on every mainstream Linux; asked of `getconf` to be sure.
fn clock_ticks() -> u64 {
    static HZ: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *HZ.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&hz| hz > 0)
            .unwrap_or(100)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn established_sockets_on_the_port_are_counted_by_client_address() {
        // 127.0.0.1:8080 (1F90) accepted from 127.0.0.2 and 127.0.0.1, a
        // client socket of the other direction, one in TIME_WAIT (06), and
        // a client that bound 127.0.0.2:8080 to connect to 127.0.0.1:8081.
        let table = "  sl  local_address rem_address   st tx_queue rx_queue\n\
            0: 0100007F:1F90 0200007F:A000 01 00000000:00000000\n\
            1: 0100007F:1F90 0100007F:A001 01 00000000:00000000\n\
            2: 0200007F:A000 0100007F:1F90 01 00000000:00000000\n\
            3: 0100007F:1F90 0300007F:A002 06 00000000:00000000\n\
            4: 0200007F:1F90 0100007F:1F91 01 00000000:00000000\n";
        let clients = established_to(table, SocketAddr::from(([127, 0, 0, 1], 8080)));
        let expected: BTreeMap<IpAddr, usize> = [([127, 0, 0, 1], 1), ([127, 0, 0, 2], 1)].into_iter().map(|(ip, n)| (IpAddr::from(ip), n)).collect();
        assert_eq!(clients, expected);
    }
}
