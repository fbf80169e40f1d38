//! Reads the daemon's status (`GET /nodes`, `GET /metrics`) in a loop
//! during a scenario's updates, as a dashboard would, and reports how many
//! reads ran and how long they took.
//!
//! Shared by the `loadgen` example and the `loadgen_smoke` test.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use serde_json::{json, Value};

/// The paths a dashboard reads.
const PATHS: [&str; 2] = ["/nodes", "/metrics"];

/// Reads `/nodes` and `/metrics` in a loop until stopped.
pub struct StatusPoller {
    pause: Duration,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Polls>,
}

/// What the loop did: one round reads every path once.
#[derive(Default)]
struct Polls {
    rounds: usize,
    /// Per path: the time of each successful read, failed reads, the size of the last body.
    reads: [(Vec<Duration>, usize, usize); PATHS.len()],
}

impl StatusPoller {
    pub fn start(http: reqwest::Client, rest: SocketAddr, pause: Duration) -> Self {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut polls = Polls::default();
            while !*stopped.borrow() {
                for (path, (times, failed, last_bytes)) in PATHS.iter().zip(&mut polls.reads) {
                    let start = Instant::now();
                    let body = match http.get(format!("http://{rest}{path}")).send().await.and_then(|r| r.error_for_status()) {
                        Ok(response) => response.bytes().await.ok(),
                        Err(_) => None,
                    };
                    match body {
                        Some(body) => {
                            times.push(start.elapsed());
                            *last_bytes = body.len();
                        }
                        None => *failed += 1,
                    }
                }
                polls.rounds += 1;
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    _ = stopped.changed() => {}
                }
            }
            polls
        });
        Self { pause, stop, task }
    }

    /// How many rounds ran; per path how many reads succeeded and failed,
    /// their median (p50) and slowest time, and the size of the last body.
    pub async fn stop(self) -> Value {
        let _ = self.stop.send(true);
        let polls = self.task.await.unwrap_or_default();
        let mut summary = json!({ "polls": polls.rounds, "pause_ms": self.pause.as_secs_f64() * 1e3 });
        for (path, (times, failed, last_bytes)) in PATHS.iter().zip(&polls.reads) {
            let mut times: Vec<f64> = times.iter().map(|t| t.as_secs_f64() * 1e3).collect();
            times.sort_by(f64::total_cmp);
            let median = times.get(times.len() / 2).copied().unwrap_or(f64::NAN);
            let max = times.last().copied().unwrap_or(f64::NAN);
            println!("status reads  {path}: {} reads ({failed} failed) in {} rounds, p50 {median:.1} ms, max {max:.1} ms, last body {last_bytes} bytes", times.len(), polls.rounds);
            summary[*path] = json!({ "reads": times.len(), "failed": failed, "median_ms": median, "p50_ms": median, "max_ms": max, "last_bytes": last_bytes });
        }
        summary
    }
}
