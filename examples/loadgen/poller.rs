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

/// Reads `/nodes` and `/metrics` in a loop until stopped.
pub struct StatusPoller {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Vec<(&'static str, Duration)>>,
}

impl StatusPoller {
    pub fn start(http: reqwest::Client, rest: SocketAddr, pause: Duration) -> Self {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut reads = Vec::new();
            while !*stopped.borrow() {
                for path in ["/nodes", "/metrics"] {
                    let start = Instant::now();
                    let ok = match http.get(format!("http://{rest}{path}")).send().await {
                        Ok(response) => response.bytes().await.is_ok(),
                        Err(_) => false,
                    };
                    if ok {
                        reads.push((path, start.elapsed()));
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    _ = stopped.changed() => {}
                }
            }
            reads
        });
        Self { stop, task }
    }

    /// How many reads of each path, and their median and slowest time.
    pub async fn stop(self) -> Value {
        let _ = self.stop.send(true);
        let reads = self.task.await.unwrap_or_default();
        let mut summary = json!({});
        for path in ["/nodes", "/metrics"] {
            let mut times: Vec<f64> = reads.iter().filter(|(p, _)| *p == path).map(|(_, t)| t.as_secs_f64() * 1e3).collect();
            times.sort_by(f64::total_cmp);
            let median = times.get(times.len() / 2).copied().unwrap_or(f64::NAN);
            let max = times.last().copied().unwrap_or(f64::NAN);
            println!("status reads  {path}: {} reads, median {median:.1} ms, max {max:.1} ms", times.len());
            summary[path] = json!({ "reads": times.len(), "median_ms": median, "max_ms": max });
        }
        summary
    }
}
