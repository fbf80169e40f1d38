//! Connections that cannot take the daemon down (issue #6): idle and slow
//! REST clients, the open-file limit, dead xDS peers. The in-process daemon
//! on port 0, and once the real binary under a low open-file limit.

mod support;

use std::{
    num::NonZeroUsize,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use support::{
    envoy::free_port,
    sidecar_bundle, wait_for,
    xds_client::{names, request, XdsClient, CDS},
    TestDaemon,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::Mutex,
};

/// These tests count this process's open files or open hundreds of
/// sockets: one at a time.
static SERIAL: Mutex<()> = Mutex::const_new(());

fn open_files() -> usize {
    std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd").count()
}

/// Reads until the peer closes; `Err` with what arrived if it does not within `limit`.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Result<Vec<u8>, Vec<u8>> {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(received),
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            Err(_) => return Err(received),
        }
    }
}

async fn healthy(daemon: &TestDaemon) -> bool {
    reqwest::get(daemon.url("/healthz")).await.is_ok_and(|r| r.status().is_success())
}

#[tokio::test]
async fn idle_rest_connections_beyond_the_cap_wait_in_the_backlog_and_xds_is_still_served() {
    let _serial = SERIAL.lock().await;
    // Tokio listens with a backlog of 128: the idle connections beyond the
    // cap must fit in it, or their handshakes are retried for seconds.
    const CAP: usize = 20;
    const IDLE: usize = 100;
    let daemon = TestDaemon::start_with(|config| {
        config.rest_max_connections = NonZeroUsize::new(CAP).unwrap();
        config.rest_idle_timeout = Duration::from_secs(1);
    })
    .await;
    let (status, _) = daemon.put("sidecar", sidecar_bundle("v1", 10000, 10001).to_string()).await;
    assert_eq!(status, 200);

    // Client and daemon share this process: every connection the daemon
    // accepts is one more open file here, beside the client's own. (The
    // PUT's connection may still be closing: a few files either way.)
    const SLACK: usize = 4;
    let before = open_files();
    let mut idle = Vec::new();
    for _ in 0..IDLE {
        idle.push(TcpStream::connect(daemon.rest_addr).await.expect("the kernel completes the handshake"));
    }
    wait_for("the daemon to accept up to its cap", Duration::from_secs(10), || async { open_files() + SLACK >= before + IDLE + CAP }).await;
    let mut most = 0;
    for _ in 0..40 {
        most = most.max(open_files().saturating_sub(before + IDLE));
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(most <= CAP + SLACK, "{most} REST connections open at once with a cap of {CAP}");

    // xDS has its own descriptors and is served meanwhile.
    let mut client = XdsClient::ads(&daemon.xds_url(), request("sidecar-1", CDS, &[])).await;
    assert_eq!(names(&client.recv().await), ["backend"]);

    // Each idle connection is closed after --rest-idle-timeout, the ones in
    // the backlog once their turn comes: 5 rounds of 1 s.
    let closed = futures::future::join_all(idle.iter_mut().map(|stream| read_until_closed(stream, Duration::from_secs(60)))).await;
    let open = closed.iter().filter(|result| result.is_err()).count();
    assert_eq!(open, 0, "{open} idle REST connections were never closed");
    assert!(closed.iter().all(|result| result.as_ref().is_ok_and(Vec::is_empty)), "an idle connection was sent something");
    drop(idle);
    wait_for("REST to answer again", Duration::from_secs(10), || healthy(&daemon)).await;
}

#[tokio::test]
async fn a_client_that_sends_its_headers_slowly_is_cut_off() {
    let _serial = SERIAL.lock().await;
    let daemon = TestDaemon::start_with(|config| config.rest_header_timeout = Duration::from_millis(300)).await;
    let stream = TcpStream::connect(daemon.rest_addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    writer.write_all(b"GET /healthz HTTP/1.1\r\nHost: sxds\r\nX-Slow: ").await.unwrap();
    // One byte every 50 ms: never silent for long, never done.
    let trickle = tokio::spawn(async move {
        while writer.write_all(b"a").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut received = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), reader.read_to_end(&mut received)).await;
    trickle.abort();
    assert!(closed.is_ok(), "a client trickling its headers is never cut off");
    assert!(received.is_empty(), "no answer is due: {}", String::from_utf8_lossy(&received));
    assert!(healthy(&daemon).await);
}

#[tokio::test]
async fn a_request_body_that_does_not_arrive_in_time_is_answered_408_with_a_json_error() {
    let _serial = SERIAL.lock().await;
    let daemon = TestDaemon::start_with(|config| config.rest_body_timeout = Duration::from_millis(300)).await;
    let mut stream = TcpStream::connect(daemon.rest_addr).await.unwrap();
    let head = "PUT /resources/sidecar HTTP/1.1\r\nHost: sxds\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(br#"{"version": "#).await.unwrap();

    let answer = read_until_closed(&mut stream, Duration::from_secs(10)).await.expect("the answer and a close");
    let answer = String::from_utf8(answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let body = answer.split_once("\r\n\r\n").map(|(_, body)| body).unwrap_or_default();
    let body: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
    assert!(body["error"].as_str().is_some_and(|e| e.contains("--rest-body-timeout")), "{body}");
    // Nothing was stored.
    let bundle = reqwest::get(daemon.url("/resources/sidecar")).await.unwrap();
    assert_eq!(bundle.status(), 404);
}

#[tokio::test]
async fn an_xds_peer_that_stops_answering_pings_is_disconnected_and_a_live_one_is_kept() {
    let _serial = SERIAL.lock().await;
    let daemon = TestDaemon::start_with(|config| {
        // The live client shares this process: give it time to answer on a busy machine.
        config.xds_keepalive_interval = Duration::from_millis(300);
        config.xds_keepalive_timeout = Duration::from_secs(2);
    })
    .await;
    let (status, _) = daemon.put("sidecar", sidecar_bundle("v1", 10000, 10001).to_string()).await;
    assert_eq!(status, 200);
    let mut live = XdsClient::ads(&daemon.xds_url(), request("sidecar-live", CDS, &[])).await;
    live.recv_acked(&[]).await;

    // An HTTP/2 peer that opens the connection and then answers nothing.
    let mut dead = TcpStream::connect(daemon.xds_addr).await.unwrap();
    dead.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").await.unwrap();
    let frames = read_until_closed(&mut dead, Duration::from_secs(20)).await.expect("the dead peer is disconnected");
    assert!(frame_types(&frames).contains(&PING), "the server pinged before giving up");

    // The live client answered every ping (its h2 does) and still gets updates.
    let (status, _) = daemon.put("sidecar", sidecar_bundle("v2", 10000, 10001).to_string()).await;
    assert_eq!(status, 200);
    assert_eq!(live.recv().await.version_info, "v2");
}

const PING: u8 = 0x6;

/// The types of the HTTP/2 frames in `bytes` (a server's side of a connection).
fn frame_types(mut bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    while bytes.len() >= 9 {
        let len = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        types.push(bytes[3]);
        bytes = bytes.get(9 + len..).unwrap_or_default();
    }
    types
}

/// The `sxds` binary, killed on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// User plus system CPU time of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat.rsplit_once(')').expect("stat format").1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let output = Command::new("getconf").arg("CLK_TCK").output().expect("getconf CLK_TCK");
    let per_second: f64 = String::from_utf8_lossy(&output.stdout).trim().parse().unwrap_or(100.0);
    ticks as f64 / per_second
}

fn count(log: &Path, text: &str) -> usize {
    std::fs::read_to_string(log).unwrap_or_default().matches(text).count()
}

#[tokio::test]
async fn at_the_open_file_limit_the_daemon_backs_off_says_so_once_and_recovers() {
    let _serial = SERIAL.lock().await;
    const FILE_LIMIT: usize = 128;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sxds.log");
    let (xds_port, rest_port) = (free_port(), free_port());
    let output = std::fs::File::create(&log).unwrap();
    let mut command = Command::new("bash");
    // `ulimit -n` sets the soft and hard limits: sxds cannot raise it.
    command.args(["-c", &format!("ulimit -n {FILE_LIMIT} && exec \"$0\" \"$@\""), env!("CARGO_BIN_EXE_sxds")]);
    command.args(["--listen-address", "127.0.0.1", "--log", "info"]);
    command.args(["--xds-port", &xds_port.to_string(), "--cacher-port", &rest_port.to_string()]);
    command.arg("--data-dir").arg(dir.path().join("data"));
    command.env_remove("SXDS_PRODUCTION").stdin(Stdio::null()).stdout(output.try_clone().unwrap()).stderr(output);
    let daemon = Process(command.spawn().expect("start sxds under bash"));
    let pid = daemon.0.id();

    let rest = format!("http://127.0.0.1:{rest_port}");
    wait_for("sxds to be healthy", Duration::from_secs(20), || {
        let health = format!("{rest}/healthz");
        async move { reqwest::get(&health).await.is_ok_and(|r| r.status().is_success()) }
    })
    .await;
    let put = reqwest::Client::new()
        .put(format!("{rest}/resources/sidecar"))
        .body(sidecar_bundle("v1", 10000, 10001).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);

    // More raw TCP connections than the limit: the daemon accepts until it
    // runs out of descriptors, the rest wait in the backlog (128 deep).
    let xds = format!("127.0.0.1:{xds_port}");
    let mut held = Vec::new();
    for _ in 0..FILE_LIMIT + 32 {
        held.push(TcpStream::connect(&xds).await.expect("the kernel completes the handshake"));
    }
    let limit_line = "open-file or memory limit reached";
    wait_for("the limit to be logged", Duration::from_secs(10), || async { count(&log, limit_line) > 0 }).await;

    // At the limit, the accept loop sleeps between attempts: a spinning
    // loop burns a whole core (2 s of CPU in 2 s).
    let start = cpu_seconds(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let spent = cpu_seconds(pid) - start;
    assert!(spent < 0.5, "the daemon used {spent:.2} s of CPU in 2 s at the open-file limit");
    assert_eq!(count(&log, limit_line), 1, "the limit is logged once, not per attempt");

    // The connections go; a new client is served.
    drop(held);
    let served = tokio::time::timeout(Duration::from_secs(30), async {
        let mut client = XdsClient::ads(&format!("http://{xds}"), request("sidecar-1", CDS, &[])).await;
        names(&client.recv().await)
    })
    .await;
    assert_eq!(served.expect("a new xDS client is served after the connections closed"), ["backend"]);
    wait_for("the recovery to be logged", Duration::from_secs(10), || async { count(&log, "accepting connections again") == 1 }).await;
    // While the held connections closed, the limit came and went with each
    // freed descriptor: still one warning (at most one a minute).
    assert_eq!(count(&log, limit_line), 1);
}
