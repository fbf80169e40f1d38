//! What every scenario shares: the context it runs in (the flags, the
//! daemon, an HTTP client), connecting the fleet, and the arithmetic and
//! printing of an update's report.
//!
//! Shared by the `loadgen` example and the `loadgen_smoke` test.

#![allow(dead_code)] // each user takes a different part

use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::{json, Value};

use crate::{
    args::Args,
    daemon::{open_files, Daemon, Sample},
    sim::{Convergence, Fleet, Target, TYPES},
};

/// The daemon's and the load generator's own figures at one moment.
pub struct Samples {
    pub daemon: Sample,
    pub loadgen: Sample,
}

pub struct Ctx<'a> {
    pub args: &'a Args,
    pub daemon: &'a Daemon,
    pub http: reqwest::Client,
    /// The emulator the daemon polls (cloud-map).
    pub cloud_map_url: Option<String>,
}

impl<'a> Ctx<'a> {
    pub fn new(args: &'a Args, daemon: &'a Daemon, cloud_map_url: Option<String>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(120)).build()?;
        Ok(Self { args, daemon, http, cloud_map_url })
    }

    /// PUTs a bundle; answers how long the 200 took.
    pub async fn put(&self, body: Vec<u8>) -> anyhow::Result<Duration> {
        let start = Instant::now();
        let url = format!("http://{}/resources/{}", self.daemon.rest_addr, self.args.node_type);
        let response = self.http.put(url).header("content-type", "application/json").body(body).send().await?;
        let status = response.status();
        if !status.is_success() {
            bail!("PUT answered {status}: {}", response.text().await.unwrap_or_default());
        }
        Ok(start.elapsed())
    }

    /// The version the daemon holds now for the node type.
    pub async fn stored_version(&self) -> anyhow::Result<String> {
        let url = format!("http://{}/resources/{}", self.daemon.rest_addr, self.args.node_type);
        let bundle: Value = self.http.get(url).send().await?.error_for_status()?.json().await?;
        Ok(bundle["version"].as_str().unwrap_or_default().to_owned())
    }

    /// Grows the fleet to `streams` and waits until every new node holds
    /// `version` of every type. (A node that connects after updates takes
    /// every type at the stored version, while the nodes before it keep the
    /// version in which each type last changed.)
    pub async fn connect(&self, fleet: &mut Fleet, streams: usize, version: &str) -> anyhow::Result<Duration> {
        let start = Instant::now();
        let first = fleet.len();
        fleet.add(streams.saturating_sub(first));
        eprintln!("loadgen: connecting {} streams ...", fleet.len());
        let target = Target { version: version.to_owned(), types: TYPES.to_vec(), since: start };
        let result = fleet.wait_from(first, &target, self.args.connect_deadline).await;
        if result.never > 0 {
            let errors: Vec<String> = fleet.records().into_iter().filter_map(|r| r.last_error).take(3).collect();
            let held = fleet.versions(fleet.len() - 1).unwrap_or_default();
            bail!("{} of {} new streams did not take version {version} within {:?}; the last node holds {held:?}; errors: {errors:?}",
                result.never, fleet.len() - first, self.args.connect_deadline);
        }
        eprintln!("loadgen: {} streams connected and converged in {:.1?}", fleet.len(), start.elapsed());
        Ok(start.elapsed())
    }

    pub fn samples(&self) -> anyhow::Result<Samples> {
        Ok(Samples { daemon: self.daemon.sample()?, loadgen: Sample::of_self() })
    }

    /// The daemon's xDS connections by client address, and the files the
    /// daemon and the load generator hold open: each stream is one socket
    /// in each process, under a hard limit of open files.
    pub fn connections(&self) -> Value {
        let clients = self.daemon.clients().unwrap_or_default();
        let by_address: serde_json::Map<String, Value> = clients.iter().map(|(ip, n)| (ip.to_string(), (*n).into())).collect();
        let (daemon_fds, loadgen_fds) = (self.daemon.open_files(), open_files("self"));
        let listed: Vec<String> = clients.iter().map(|(ip, n)| format!("{ip} {n}")).collect();
        println!("  connections to the daemon by client address: {}; open files: daemon {daemon_fds}, loadgen {loadgen_fds}", listed.join(", "));
        json!({ "clients": by_address, "daemon_fds": daemon_fds, "loadgen_fds": loadgen_fds })
    }

    pub async fn settle(&self) {
        tokio::time::sleep(self.args.settle).await;
    }
}

/// Daemon RSS per stream: the growth over `base` (the bundle loaded, no
/// streams), in bytes, shared by `streams`.
pub fn bytes_per_stream(base: &Sample, now: &Sample, streams: usize) -> f64 {
    (now.rss_kib.saturating_sub(base.rss_kib) * 1024) as f64 / streams.max(1) as f64
}

pub fn ms(d: Option<Duration>) -> f64 {
    d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
}

pub fn update_report(version: &str, put: Duration, result: &Convergence, before: &Samples, after: &Samples) -> Value {
    let (before, after, loadgen_cpu_ms) = (&before.daemon, &after.daemon, after.loadgen.cpu_ms.saturating_sub(before.loadgen.cpu_ms));
    json!({
        "version": version, "put_ms": put.as_secs_f64() * 1e3,
        "p50_ms": ms(result.percentile(50.0)), "p90_ms": ms(result.percentile(90.0)),
        "p99_ms": ms(result.percentile(99.0)), "max_ms": ms(result.max()), "first_ms": ms(result.first()),
        "converged": result.converged(), "never": result.never,
        "rss_kib": after.rss_kib, "hwm_kib": after.hwm_kib,
        "daemon_cpu_ms": after.cpu_ms.saturating_sub(before.cpu_ms),
        "loadgen_cpu_ms": loadgen_cpu_ms,
    })
}

/// What the responses of one type after an update carried, over every
/// node: responses per node, and resources per response (mean and max). On
/// delta, one changed endpoint set must be one resource in one response.
pub fn response_sizes(per_node: &[Vec<u32>]) -> Value {
    let responses: usize = per_node.iter().map(Vec::len).sum();
    let resources: u64 = per_node.iter().flatten().map(|&n| u64::from(n)).sum();
    let max = per_node.iter().flatten().copied().max();
    json!({
        "responses_per_stream_mean": responses as f64 / per_node.len().max(1) as f64,
        "responses_per_stream_max": per_node.iter().map(Vec::len).max().unwrap_or(0),
        "resources_per_response_mean": if responses == 0 { f64::NAN } else { resources as f64 / responses as f64 },
        "resources_per_response_max": max,
    })
}

/// The worst p99/max and the total never-converged over updates.
pub fn worst(updates: &[Value]) -> Value {
    let max_of = |key: &str| updates.iter().filter_map(|u| u[key].as_f64()).fold(f64::NAN, f64::max);
    json!({
        "p50_ms": max_of("p50_ms"), "p99_ms": max_of("p99_ms"), "max_ms": max_of("max_ms"),
        "never": updates.iter().filter_map(|u| u["never"].as_u64()).sum::<u64>(),
    })
}

pub fn print_updates(label: &str, streams: usize, updates: &[Value]) {
    println!("{label}  streams={streams}");
    println!("  {:<8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>10} {:>9} {:>9} {:>13}", "version", "put ms", "p50 ms", "p90 ms", "p99 ms", "max ms", "never", "RSS KiB", "CPU ms", "LG CPU", "EDS res/resp");
    for u in updates {
        let f = |k: &str| u[k].as_f64().unwrap_or(f64::NAN);
        let n = |k: &str| u[k].as_u64().unwrap_or(0);
        let eds = &u["eds_responses"];
        let sizes = match eds["resources_per_response_max"].as_u64() {
            Some(max) => format!("{:.1} / {max}", eds["resources_per_response_mean"].as_f64().unwrap_or(f64::NAN)),
            None => "-".to_owned(),
        };
        println!("  {:<8} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>7} {:>10} {:>9} {:>9} {:>13}",
            u["version"].as_str().unwrap_or(""), f("put_ms"), f("p50_ms"), f("p90_ms"), f("p99_ms"), f("max_ms"), n("never"), n("rss_kib"), n("daemon_cpu_ms"), n("loadgen_cpu_ms"), sizes);
    }
}
