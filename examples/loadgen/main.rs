//! Load generator: N simulated Envoys against an sxds daemon, PUTs, and what
//! each update cost.
//!
//! ```text
//! cargo run --release --example loadgen -- --scenario fanout --streams 10000
//! cargo run --release --example loadgen -- --scenario fanout --streams 10000 --protocol delta
//! cargo run --release --example loadgen -- --scenario cloud-map --sources 500 --instances 20 --streams 10000
//! ```
//!
//! By default it starts `target/release/sxds` on free loopback ports with a
//! temporary data directory (or `--xds-addr/--rest-addr/--pid` point it at a
//! running daemon), connects the fleet (see `sim.rs`), triggers the PUTs of
//! the scenario and reports per update: time until every node has ACKed the
//! new version (p50/p90/p99/max over nodes), nodes that never converged, and
//! the daemon's RSS and CPU time from /proc. A human table goes to stdout,
//! then one JSON summary line; progress goes to stderr. The `cloud-map`
//! scenario (see `cloud_map.rs`) also starts the Cloud Map emulator moto
//! and points the daemon at it.

mod bundles;
mod cloud_map;
mod daemon;
mod sim;

use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use serde_json::{json, Value};
use sxds::resource_type::ResourceType;

use bundles::Mesh;
use daemon::{Daemon, Sample};
use sim::{Convergence, Fleet, FleetConfig, Protocol, Service, Target, TYPES};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// RSS per connected idle stream at each `--streams` level.
    Idle,
    /// `--streams` nodes on a mesh of `--clusters`; change one endpoint set `--updates` times.
    Fanout,
    /// PUT `--ingest-clusters` clusters + endpoints (~10 MB JSON) to `--streams` nodes.
    Ingest,
    /// `--burst-puts` PUTs within `--burst-window-ms` against `--streams` nodes, `--burst-rounds` times.
    Burst,
    /// Resident memory a stored bundle keeps, against its encoded size: `--memory-tiny-clusters`
    /// tiny clusters, then the ingest mesh.
    Memory,
    /// `--replicas` daemons sharing the etcd that `SXDS_STORE` names, `--streams` nodes
    /// spread over them; each of `--updates` PUTs goes to the first one.
    Replicas,
    /// `--sources` Cloud Map services × `--instances` on moto as EDS clusters of
    /// `--streams` nodes: API calls per minute at steady state, then `--updates`
    /// new instances, timed from the poll that saw each.
    CloudMap,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ServiceArg {
    Ads,
    Separate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ProtocolArg {
    /// State of the world: every response carries the whole subscribed set.
    Sotw,
    /// Delta (incremental): only what changed, and the names removed.
    Delta,
}

#[derive(Debug, Parser)]
#[command(about = "Simulates N Envoys against sxds and measures convergence, memory and CPU")]
struct Args {
    #[arg(long, value_enum)]
    scenario: Scenario,
    /// Streams (simulated Envoys); for `idle`, a comma-separated list of levels.
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    streams: Vec<usize>,
    #[arg(long, value_enum, default_value = "ads")]
    service: ServiceArg,
    #[arg(long, value_enum, default_value = "sotw")]
    protocol: ProtocolArg,
    #[arg(long, default_value = "bench")]
    node_type: String,
    /// The daemon binary to start.
    #[arg(long, default_value = "target/release/sxds")]
    sxds: PathBuf,
    /// Use a running daemon instead (with --rest-addr and --pid).
    #[arg(long, requires_all = ["rest_addr", "pid"])]
    xds_addr: Option<SocketAddr>,
    #[arg(long)]
    rest_addr: Option<SocketAddr>,
    #[arg(long)]
    pid: Option<u32>,
    /// EDS clusters in the mesh bundle (idle, fanout, burst).
    #[arg(long, default_value_t = 100)]
    clusters: usize,
    #[arg(long, default_value_t = 3)]
    endpoints_per_cluster: usize,
    /// Updates, each changing one endpoint set [default: 5; cloud-map: 3].
    #[arg(long)]
    updates: Option<usize>,
    /// Daemons in the replicas scenario (the first is the one measured for CPU and RSS).
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// During the fan-out updates, read `GET /nodes` and `GET /metrics` in
    /// a loop with this pause (ms) between reads, as a dashboard would.
    #[arg(long)]
    poll_status_ms: Option<u64>,
    #[arg(long, default_value_t = 10_000)]
    ingest_clusters: usize,
    /// 7 endpoints per ClusterLoadAssignment make the 10,000-cluster body ~10 MB.
    #[arg(long, default_value_t = 7)]
    ingest_endpoints_per_cluster: usize,
    /// Tiny clusters (`{"name": ...}`) in the first bundle of the memory scenario.
    #[arg(long, default_value_t = 100_000)]
    memory_tiny_clusters: usize,
    /// Encoded sizes of the memory scenario's bundles, for a daemon that does not list them.
    #[arg(long, value_delimiter = ',')]
    memory_encoded_bytes: Vec<u64>,
    #[arg(long, default_value_t = 100)]
    burst_puts: usize,
    #[arg(long, default_value_t = 1000)]
    burst_window_ms: u64,
    #[arg(long, default_value_t = 2)]
    burst_rounds: usize,
    /// Simulated Envoys connecting at the same time.
    #[arg(long, default_value_t = 100)]
    connect_concurrency: usize,
    /// How long to wait for all streams to connect and take the first config.
    #[arg(long, default_value = "300", value_parser = secs)]
    connect_deadline: Duration,
    /// How long after a PUT a node may take before it counts as never converged.
    #[arg(long, default_value = "30", value_parser = secs)]
    deadline: Duration,
    /// Quiet time before each memory sample and update.
    #[arg(long, default_value = "2", value_parser = secs)]
    settle: Duration,
    /// Cloud Map services, one EDS cluster each (cloud-map).
    #[arg(long, default_value_t = 500)]
    sources: usize,
    /// Instances registered in each Cloud Map service (cloud-map).
    #[arg(long, default_value_t = 20)]
    instances: usize,
    /// The daemon's `--cloud-map-interval`, seconds (cloud-map; the daemon's default).
    #[arg(long, default_value = "5", value_parser = secs)]
    cloud_map_interval: Duration,
    /// The daemon's `--cloud-map-refresh`, seconds (cloud-map; the daemon's default).
    #[arg(long, default_value = "30", value_parser = secs)]
    cloud_map_refresh: Duration,
    /// How long the steady-state Cloud Map calls are counted, seconds (cloud-map).
    #[arg(long, default_value = "60", value_parser = secs)]
    steady_secs: Duration,
    /// The Cloud Map emulator (PyPI moto[server]) to start (cloud-map).
    #[arg(long, default_value = "moto_server")]
    moto_server: PathBuf,
}

impl Args {
    fn updates(&self) -> usize {
        self.updates.unwrap_or(if self.scenario == Scenario::CloudMap { 3 } else { 5 })
    }

    fn polling(&self) -> cloud_map::Polling {
        cloud_map::Polling { interval: self.cloud_map_interval, refresh: self.cloud_map_refresh }
    }
}

fn secs(text: &str) -> Result<Duration, String> {
    text.parse::<f64>().map(Duration::from_secs_f64).map_err(|e| format!("{text:?}: {e} (seconds)"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Every simulated Envoy holds a socket open.
    if let Err(error) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("loadgen: cannot raise the open-file limit: {error}");
    }
    let moto = match args.scenario {
        Scenario::CloudMap => Some(cloud_map::Moto::start(&args.moto_server).await?),
        _ => None,
    };
    let daemon = match (args.xds_addr, args.rest_addr, args.pid) {
        (Some(xds), Some(rest), Some(pid)) => {
            anyhow::ensure!(moto.is_none(), "the cloud-map scenario starts its own daemon, pointed at its own emulator");
            Daemon::attach(xds, rest, pid)
        }
        _ => {
            let (extra, env) = match &moto {
                Some(moto) => (args.polling().daemon_args(&moto.endpoint_url()), &cloud_map::DAEMON_ENV[..]),
                None => (Vec::new(), &[][..]),
            };
            Daemon::start_with(&args.sxds, &extra, env).await.with_context(|| format!("starting {}", args.sxds.display()))?
        }
    };
    let cloud_map_url = moto.as_ref().map(cloud_map::Moto::endpoint_url);
    let result = run(&args, &daemon, cloud_map_url).await;
    daemon.stop();
    drop(moto);
    let summary = result?;
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

async fn run(args: &Args, daemon: &Daemon, cloud_map_url: Option<String>) -> anyhow::Result<Value> {
    let mut fleet = Fleet::new(FleetConfig {
        xds_url: format!("http://{}", daemon.xds_addr),
        node_type: args.node_type.clone(),
        service: match args.service {
            ServiceArg::Ads => Service::Ads,
            ServiceArg::Separate => Service::Separate,
        },
        protocol: match args.protocol {
            ProtocolArg::Sotw => Protocol::StateOfTheWorld,
            ProtocolArg::Delta => Protocol::Delta,
        },
        connect_concurrency: args.connect_concurrency,
    })?;
    let mut ctx = Ctx { args, daemon, http: reqwest::Client::builder().timeout(Duration::from_secs(120)).build()?, cloud_map_url };
    let details = match args.scenario {
        Scenario::Idle => idle(&mut ctx, &mut fleet).await,
        Scenario::Fanout => fanout(&mut ctx, &mut fleet).await,
        Scenario::Ingest => ingest(&mut ctx, &mut fleet).await,
        Scenario::Memory => memory(&mut ctx).await,
        Scenario::Burst => burst(&mut ctx, &mut fleet).await,
        Scenario::Replicas => replicas(&mut ctx, &mut fleet).await,
        Scenario::CloudMap => cloud_map_scenario(&mut ctx, &mut fleet).await,
    };
    let errors: u32 = fleet.records().iter().map(|r| r.errors).sum();
    fleet.shutdown().await;
    let mut summary = details?;
    summary["scenario"] = args.scenario.to_possible_value().map_or_else(String::new, |v| v.get_name().to_owned()).into();
    summary["service"] = format!("{:?}", args.service).to_lowercase().into();
    summary["protocol"] = format!("{:?}", args.protocol).to_lowercase().into();
    summary["stream_errors"] = errors.into();
    summary["loadgen"] = Sample::of_self().to_json();
    Ok(summary)
}

/// The daemon's and the load generator's own figures at one moment.
struct Samples {
    daemon: Sample,
    loadgen: Sample,
}

struct Ctx<'a> {
    args: &'a Args,
    daemon: &'a Daemon,
    http: reqwest::Client,
    /// The emulator the daemon polls (cloud-map).
    cloud_map_url: Option<String>,
}

impl Ctx<'_> {
    /// PUTs a bundle; answers how long the 200 took.
    async fn put(&self, body: Vec<u8>) -> anyhow::Result<Duration> {
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
    async fn stored_version(&self) -> anyhow::Result<String> {
        let url = format!("http://{}/resources/{}", self.daemon.rest_addr, self.args.node_type);
        let bundle: Value = self.http.get(url).send().await?.error_for_status()?.json().await?;
        Ok(bundle["version"].as_str().unwrap_or_default().to_owned())
    }

    /// Grows the fleet to `streams` and waits until every node has `version`.
    async fn connect(&self, fleet: &mut Fleet, streams: usize, version: &str) -> anyhow::Result<Duration> {
        let start = Instant::now();
        fleet.add(streams.saturating_sub(fleet.len()));
        eprintln!("loadgen: connecting {} streams ...", fleet.len());
        let target = Target { version: version.to_owned(), types: TYPES.to_vec(), since: start };
        let result = fleet.wait(&target, self.args.connect_deadline).await;
        if result.never > 0 {
            let errors: Vec<String> = fleet.records().into_iter().filter_map(|r| r.last_error).take(3).collect();
            bail!("{} of {} streams did not take version {version} within {:?}; errors: {errors:?}", result.never, fleet.len(), self.args.connect_deadline);
        }
        eprintln!("loadgen: {} streams connected and converged in {:.1?}", fleet.len(), start.elapsed());
        Ok(start.elapsed())
    }

    fn samples(&self) -> anyhow::Result<Samples> {
        Ok(Samples { daemon: self.daemon.sample()?, loadgen: Sample::of_self() })
    }

    async fn settle(&self) {
        tokio::time::sleep(self.args.settle).await;
    }
}

async fn idle(ctx: &mut Ctx<'_>, fleet: &mut Fleet) -> anyhow::Result<Value> {
    let args = ctx.args;
    let mesh = Mesh::new(args.clusters, args.endpoints_per_cluster, args.clusters);
    ctx.put(serde_json::to_vec(&mesh.bundle("v0"))?).await?;
    ctx.settle().await;
    let base = ctx.daemon.sample()?;
    let mut levels = Vec::new();
    let mut streams: Vec<usize> = args.streams.clone();
    streams.sort();
    for n in streams {
        let took = ctx.connect(fleet, n, "v0").await?;
        ctx.settle().await;
        let now = ctx.daemon.sample()?;
        let per_stream = (now.rss_kib.saturating_sub(base.rss_kib) * 1024) as f64 / n as f64;
        levels.push(json!({
            "streams": n, "connect_s": took.as_secs_f64(),
            "rss_base_kib": base.rss_kib, "rss_kib": now.rss_kib,
            "bytes_per_stream": per_stream.round(),
            "loadgen_rss_kib": Sample::of_self().rss_kib,
        }));
        println!("idle  streams={n:>6}  rss={:>8} KiB (base {:>6} KiB)  per stream={:>7.0} B ({:.1} KiB)",
            now.rss_kib, base.rss_kib, per_stream, per_stream / 1024.0);
    }
    Ok(json!({ "clusters": args.clusters, "levels": levels }))
}

async fn fanout(ctx: &mut Ctx<'_>, fleet: &mut Fleet) -> anyhow::Result<Value> {
    let args = ctx.args;
    let streams = *args.streams.last().context("--streams")?;
    let mut mesh = Mesh::new(args.clusters, args.endpoints_per_cluster, args.clusters);
    ctx.put(serde_json::to_vec(&mesh.bundle("v0"))?).await?;
    ctx.settle().await;
    let base = ctx.daemon.sample()?;
    ctx.connect(fleet, streams, "v0").await?;
    let poller = args.poll_status_ms.map(|pause| StatusPoller::start(ctx.http.clone(), ctx.daemon.rest_addr, Duration::from_millis(pause)));
    let mut updates = Vec::new();
    for u in 1..=args.updates() {
        let (version, body) = next_update(ctx, &mut mesh, u).await?;
        let marks = fleet.marks(ResourceType::Endpoint);
        let before = ctx.samples()?;
        let since = Instant::now();
        let put = ctx.put(body).await?;
        let target = Target { version, types: vec![ResourceType::Endpoint], since };
        let result = fleet.wait(&target, args.deadline).await;
        let after = ctx.samples()?;
        let mut report = update_report(&target.version, put, &result, &before, &after);
        report["eds_responses"] = response_sizes(&fleet.sizes_since(ResourceType::Endpoint, &marks));
        updates.push(report);
    }
    print_updates("fanout", streams, &updates);
    let polled = match poller {
        Some(poller) => poller.stop().await,
        None => Value::Null,
    };
    let idle = ctx.daemon.sample()?;
    Ok(json!({
        "streams": streams, "clusters": args.clusters, "status_reads": polled,
        "rss_base_kib": base.rss_kib,
        "bytes_per_stream": ((idle.rss_kib.saturating_sub(base.rss_kib) * 1024) as f64 / streams as f64).round(),
        "updates": updates,
        "worst": worst(&updates),
    }))
}

/// Reads `/nodes` and `/metrics` in a loop until stopped.
struct StatusPoller {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Vec<(&'static str, Duration)>>,
}

impl StatusPoller {
    fn start(http: reqwest::Client, rest: SocketAddr, pause: Duration) -> Self {
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
    async fn stop(self) -> Value {
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

/// After the settle time, update `u` of a fan-out: one endpoint set moved,
/// as version `v<u>`.
async fn next_update(ctx: &Ctx<'_>, mesh: &mut Mesh, u: usize) -> anyhow::Result<(String, Vec<u8>)> {
    ctx.settle().await;
    mesh.change_endpoints(u * 37);
    let version = format!("v{u}");
    let body = serde_json::to_vec(&mesh.bundle(&version))?;
    Ok((version, body))
}

/// A PUT on one replica until every stream on every replica has it.
async fn replicas(ctx: &mut Ctx<'_>, fleet: &mut Fleet) -> anyhow::Result<Value> {
    let args = ctx.args;
    anyhow::ensure!(std::env::var_os("SXDS_STORE").is_some(), "the replicas scenario needs SXDS_STORE=etcd://... for its daemons");
    let streams = *args.streams.last().context("--streams")?;
    let per_replica = streams / args.replicas.max(1);
    let mut mesh = Mesh::new(args.clusters, args.endpoints_per_cluster, args.clusters);
    ctx.put(serde_json::to_vec(&mesh.bundle("v0"))?).await?;
    let mut others = Vec::new();
    for _ in 1..args.replicas {
        others.push(Daemon::start(&args.sxds).await?);
    }
    let mut fleets = Vec::new();
    for daemon in &others {
        let mut config = fleet.config().clone();
        config.xds_url = format!("http://{}", daemon.xds_addr);
        fleets.push(Fleet::new(config)?);
    }
    ctx.connect(fleet, per_replica, "v0").await?;
    for other in &mut fleets {
        ctx.connect(other, per_replica, "v0").await?;
    }
    let mut updates = Vec::new();
    for u in 1..=args.updates() {
        let (version, body) = next_update(ctx, &mut mesh, u).await?;
        let before = ctx.samples()?;
        let cpu_before: u64 = others.iter().map(|d| d.sample().map_or(0, |s| s.cpu_ms)).sum();
        let since = Instant::now();
        let put = ctx.put(body).await?;
        let target = Target { version, types: vec![ResourceType::Endpoint], since };
        let mut all = fleet.wait(&target, args.deadline).await;
        for other in &fleets {
            let result = other.wait(&target, args.deadline).await;
            all.latencies.extend(result.latencies);
            all.never += result.never;
        }
        all.latencies.sort();
        let after = ctx.samples()?;
        let cpu_after: u64 = others.iter().map(|d| d.sample().map_or(0, |s| s.cpu_ms)).sum();
        let mut report = update_report(&target.version, put, &all, &before, &after);
        report["other_replicas_cpu_ms"] = cpu_after.saturating_sub(cpu_before).into();
        updates.push(report);
    }
    print_updates("replicas", streams, &updates);
    for other in fleets {
        other.shutdown().await;
    }
    for daemon in others {
        daemon.stop();
    }
    Ok(json!({ "streams": streams, "replicas": args.replicas, "clusters": args.clusters, "updates": updates, "worst": worst(&updates) }))
}

/// Endpoints from Cloud Map (see `cloud_map.rs`): calls per minute at
/// steady state, and per new instance the time from the poll that saw it
/// until each stream had it.
async fn cloud_map_scenario(ctx: &mut Ctx<'_>, fleet: &mut Fleet) -> anyhow::Result<Value> {
    let args = ctx.args;
    let url = ctx.cloud_map_url.as_deref().context("the cloud-map scenario runs against its own emulator")?;
    let params = cloud_map::Params {
        node_type: args.node_type.clone(),
        sources: args.sources,
        instances: args.instances,
        streams: *args.streams.last().context("--streams")?,
        polling: args.polling(),
        steady: args.steady_secs,
        updates: args.updates(),
        settle: args.settle,
        connect_deadline: args.connect_deadline,
        deadline: args.deadline,
    };
    let outcome = cloud_map::run(&params, url, ctx.daemon, fleet).await?;
    let steady = &outcome.steady;
    let updates: Vec<Value> = outcome
        .updates
        .iter()
        .map(|u| {
            let before = Samples { daemon: u.daemon_before, loadgen: u.loadgen_before };
            let after = Samples { daemon: u.daemon_after, loadgen: u.loadgen_after };
            // The trigger is a registration, not a PUT: the time it took the
            // daemon's poll to see it stands where `put_ms` would.
            let mut report = update_report(u.version.as_deref().unwrap_or("-"), u.seen, &u.result, &before, &after);
            if let Some(fields) = report.as_object_mut() {
                fields.remove("put_ms");
            }
            report["seen_ms"] = (u.seen.as_secs_f64() * 1e3).into();
            report["cluster"] = u.cluster.clone().into();
            report["change_unix_ms"] = u.change_unix_ms.into();
            report["endpoints"] = u.endpoints.into();
            report["eds_responses"] = response_sizes(&u.eds_sizes);
            report
        })
        .collect();
    let calls: Vec<Value> = steady
        .per_minute
        .iter()
        .map(|((operation, outcome), per_minute)| json!({"operation": operation, "outcome": outcome, "per_minute": per_minute}))
        .collect();
    let interval_s = params.polling.interval.as_secs_f64();
    println!("cloud-map  sources={} instances={} streams={} interval={interval_s}s (jittered 80-100 %) refresh={}s",
        params.sources, params.instances, params.streams, params.polling.refresh.as_secs_f64());
    println!("  setup: {} instances registered in {:.1} s; all sources found {:.1} s after the PUT; {} streams had every cluster in {:.1} s",
        outcome.registered, outcome.fill.as_secs_f64(), outcome.discovered.as_secs_f64(), params.streams, outcome.connect.as_secs_f64());
    println!("  steady state over {:.0} s: {} {:.0}/min (expected ≈ {:.0}), {} {:.0}/min (expected ≈ {:.0}), throttled or failed {:.0}/min; daemon CPU {:.1} % of a core",
        steady.seconds, cloud_map::REVISION, steady.ok_per_minute(cloud_map::REVISION), steady.expected_revisions_per_minute,
        cloud_map::INSTANCES, steady.ok_per_minute(cloud_map::INSTANCES), steady.expected_instances_per_minute,
        steady.failed_per_minute(), steady.daemon_cpu_ms as f64 / 10.0 / steady.seconds);
    if steady.seconds < 2.0 * params.polling.refresh.as_secs_f64() {
        // All sources were found at once, so their refreshes come in step
        // and drift apart only slowly.
        println!("  ({} is rough: the window is shorter than two refresh periods, and the sources refresh nearly in step)", cloud_map::INSTANCES);
    }
    println!("  {:<14} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>10} {:>9} {:>9} {:>13}", "cluster", "seen ms", "p50 ms", "p90 ms", "p99 ms", "max ms", "never", "RSS KiB", "CPU ms", "LG CPU", "EDS res/resp");
    for u in &updates {
        let f = |k: &str| u[k].as_f64().unwrap_or(f64::NAN);
        let n = |k: &str| u[k].as_u64().unwrap_or(0);
        let eds = &u["eds_responses"];
        let sizes = format!("{:.1} / {}", eds["resources_per_response_mean"].as_f64().unwrap_or(f64::NAN), eds["resources_per_response_max"].as_u64().unwrap_or(0));
        println!("  {:<14} {:>8.0} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>7} {:>10} {:>9} {:>9} {:>13}",
            u["cluster"].as_str().unwrap_or(""), f("seen_ms"), f("p50_ms"), f("p90_ms"), f("p99_ms"), f("max_ms"), n("never"), n("rss_kib"), n("daemon_cpu_ms"), n("loadgen_cpu_ms"), sizes);
    }
    println!("  (p50…max: from the poll that saw the new instance, last_change_unix_ms, to each stream's EDS response carrying it)");
    Ok(json!({
        "streams": params.streams, "sources": params.sources, "instances": params.instances,
        "interval_s": interval_s, "refresh_s": params.polling.refresh.as_secs_f64(),
        "fill_s": outcome.fill.as_secs_f64(), "registered": outcome.registered,
        "discovered_s": outcome.discovered.as_secs_f64(), "connect_s": outcome.connect.as_secs_f64(),
        "eds_version": outcome.eds_version, "rss_base_kib": outcome.rss_base_kib,
        "steady": {
            "seconds": steady.seconds, "calls": calls,
            "revision_per_minute": steady.ok_per_minute(cloud_map::REVISION),
            "instances_per_minute": steady.ok_per_minute(cloud_map::INSTANCES),
            "failed_per_minute": steady.failed_per_minute(),
            "expected_revision_per_minute": steady.expected_revisions_per_minute,
            "expected_instances_per_minute": steady.expected_instances_per_minute,
            "daemon_cpu_ms": steady.daemon_cpu_ms, "rss_kib": steady.rss_kib,
        },
        "updates": updates,
        "worst": worst(&updates),
    }))
}

async fn ingest(ctx: &mut Ctx<'_>, fleet: &mut Fleet) -> anyhow::Result<Value> {
    let args = ctx.args;
    let streams = *args.streams.last().context("--streams")?;
    let small = Mesh::new(10, args.endpoints_per_cluster, 10);
    ctx.put(serde_json::to_vec(&small.bundle("v0"))?).await?;
    ctx.connect(fleet, streams, "v0").await?;
    let big = Mesh::new(args.ingest_clusters, args.ingest_endpoints_per_cluster, 100);
    let body = serde_json::to_vec(&big.bundle("v1"))?;
    let body_bytes = body.len();
    ctx.settle().await;
    let before = ctx.samples()?;
    let since = Instant::now();
    let put = ctx.put(body).await?;
    let clusters = Target { version: "v1".into(), types: vec![ResourceType::Cluster], since };
    // Versions are per type: only the types the big bundle changes move to v1.
    let everything = Target { version: "v1".into(), types: vec![ResourceType::Cluster, ResourceType::Endpoint], since };
    let all = fleet.wait(&everything, args.deadline).await;
    let first_cds = fleet.convergence(&clusters);
    let after = ctx.samples()?;
    let report = update_report("v1", put, &all, &before, &after);
    let first = ms(first_cds.first());
    println!("ingest  body={:.1} MB  streams={streams}  200 after {:.0} ms  first CDS after {:.0} ms  all nodes CDS+EDS p99 {:.0} ms max {:.0} ms  never={}  peak RSS {} KiB",
        body_bytes as f64 / 1e6, put.as_secs_f64() * 1e3, first, report["p99_ms"].as_f64().unwrap_or(f64::NAN),
        report["max_ms"].as_f64().unwrap_or(f64::NAN), all.never, after.daemon.hwm_kib);
    Ok(json!({
        "streams": streams, "clusters": args.ingest_clusters, "body_bytes": body_bytes,
        "put_ms": put.as_secs_f64() * 1e3, "first_cds_ms": first,
        "update": report, "rss_before_kib": before.daemon.rss_kib, "peak_rss_kib": after.daemon.hwm_kib,
    }))
}

/// What the daemon keeps resident per stored bundle: RSS growth after the
/// PUT has settled, against the encoded size the daemon reports.
async fn memory(ctx: &mut Ctx<'_>) -> anyhow::Result<Value> {
    let args = ctx.args;
    let tiny: Vec<Value> = (0..args.memory_tiny_clusters).map(|i| json!({"name": format!("tiny_{i:06}")})).collect();
    let bundles = [
        ("tiny clusters", json!({"version": "tiny", "clusters": tiny})),
        ("ingest mesh", Mesh::new(args.ingest_clusters, args.ingest_endpoints_per_cluster, 100).bundle("mesh")),
    ];
    // The first PUT builds the descriptor pool of every Envoy type: not a
    // cost of the bundles measured.
    let warm_up = format!("http://{}/resources/warmup", ctx.daemon.rest_addr);
    ctx.http.put(warm_up).body(r#"{"clusters": [{"name": "warm"}]}"#).send().await?.error_for_status()?;
    let mut results = Vec::new();
    for (i, (what, bundle)) in bundles.into_iter().enumerate() {
        let body = serde_json::to_vec(&bundle)?;
        ctx.settle().await;
        let before = ctx.daemon.sample()?;
        // Each under its own node type: both stay stored.
        let url = format!("http://{}/resources/memory{i}", ctx.daemon.rest_addr);
        let response = ctx.http.put(url).body(body.clone()).send().await?;
        if !response.status().is_success() {
            bail!("PUT answered {}", response.status());
        }
        ctx.settle().await;
        let after = ctx.daemon.sample()?;
        let listing: Value = ctx.http.get(format!("http://{}/resources", ctx.daemon.rest_addr)).send().await?.json().await?;
        // Daemons before 0.2 do not report it: `--memory-encoded-bytes` gives it.
        let listed = listing["node_types"][i]["resource_bytes"].as_u64(); // memory0, memory1 sort before warmup
        let encoded = listed.or(args.memory_encoded_bytes.get(results.len()).copied()).context("resource_bytes in GET /resources")?;
        let retained = after.rss_kib.saturating_sub(before.rss_kib) * 1024;
        let factor = retained as f64 / encoded as f64;
        println!("memory  {what}: JSON {:.1} MB, encoded {:.1} MB, RSS +{:.1} MB after settling ({factor:.2}× encoded), peak RSS {} MiB",
            body.len() as f64 / 1e6, encoded as f64 / 1e6, retained as f64 / 1e6, after.hwm_kib / 1024);
        results.push(json!({"bundle": what, "json_bytes": body.len(), "encoded_bytes": encoded, "retained_bytes": retained,
            "factor": factor, "rss_before_kib": before.rss_kib, "rss_after_kib": after.rss_kib, "peak_rss_kib": after.hwm_kib}));
    }
    Ok(json!({ "bundles": results }))
}

async fn burst(ctx: &mut Ctx<'_>, fleet: &mut Fleet) -> anyhow::Result<Value> {
    let args = ctx.args;
    let streams = *args.streams.last().context("--streams")?;
    let mut mesh = Mesh::new(args.clusters, args.endpoints_per_cluster, args.clusters);
    ctx.put(serde_json::to_vec(&mesh.bundle("v0"))?).await?;
    ctx.connect(fleet, streams, "v0").await?;
    let mut rounds = Vec::new();
    for round in 1..=args.burst_rounds {
        // Every PUT changes a different endpoint set, so the last version
        // always differs from what any node held before it.
        let bodies: Vec<Vec<u8>> = (0..args.burst_puts)
            .map(|i| {
                mesh.change_endpoints(i);
                serde_json::to_vec(&mesh.bundle(&format!("r{round}-{i}")))
            })
            .collect::<Result<_, _>>()?;
        ctx.settle().await;
        let before = ctx.samples()?;
        let counts_before: Vec<u32> = fleet.records().iter().map(|r| r.types[ResourceType::Endpoint].responses).collect();
        let since = Instant::now();
        let gap = Duration::from_millis(args.burst_window_ms) / args.burst_puts.max(1) as u32;
        let puts: Vec<_> = bodies
            .into_iter()
            .enumerate()
            .map(|(i, body)| {
                let (http, url) = (ctx.http.clone(), format!("http://{}/resources/{}", ctx.daemon.rest_addr, args.node_type));
                tokio::spawn(async move {
                    tokio::time::sleep_until((since + gap * i as u32).into()).await;
                    http.put(url).header("content-type", "application/json").body(body).send().await.map(|r| r.status().as_u16())
                })
            })
            .collect();
        let mut failed = 0;
        for put in puts {
            if !matches!(put.await, Ok(Ok(200))) {
                failed += 1;
            }
        }
        let puts_done = since.elapsed();
        let version = ctx.stored_version().await?;
        // Only endpoint sets change: EDS is the type every stream must end on.
        let target = Target { version: version.clone(), types: vec![ResourceType::Endpoint], since };
        let result = fleet.wait(&target, args.deadline).await;
        let converged = ctx.samples()?;
        ctx.settle().await;
        let after = ctx.daemon.sample()?;
        let records = fleet.records();
        let received: Vec<u32> = records
            .iter()
            .zip(&counts_before)
            .map(|(r, before)| r.types[ResourceType::Endpoint].responses - before)
            .collect();
        let unacked: u32 = records.iter().flat_map(|r| r.types.values()).map(|t| t.responses - t.acks).sum();
        let ended_on_last = records
            .iter()
            .filter(|r| r.types[ResourceType::Endpoint].last_version() == Some(&version))
            .count();
        let max_received = received.iter().copied().max().unwrap_or(0);
        let mean_received = received.iter().map(|&n| n as f64).sum::<f64>() / received.len().max(1) as f64;
        let report = update_report(&version, puts_done, &result, &before, &converged);
        println!("burst round {round}: {} PUTs ({failed} failed) in {:.0} ms, last version {version}: {ended_on_last}/{streams} streams on it, p99 {:.0} ms, EDS responses per stream mean {mean_received:.1} max {max_received}, RSS {} -> {} KiB",
            args.burst_puts, puts_done.as_secs_f64() * 1e3, report["p99_ms"].as_f64().unwrap_or(f64::NAN), before.daemon.rss_kib, after.rss_kib);
        rounds.push(json!({
            "round": round, "puts": args.burst_puts, "failed_puts": failed, "puts_ms": puts_done.as_secs_f64() * 1e3,
            "last_version": version, "ended_on_last": ended_on_last, "never": result.never,
            "eds_responses_per_stream_mean": mean_received, "eds_responses_per_stream_max": max_received,
            "more_than_puts": received.iter().filter(|&&n| n as usize > args.burst_puts).count(),
            "unacked_responses": unacked,
            "rss_before_kib": before.daemon.rss_kib, "rss_after_kib": after.rss_kib, "update": report,
        }));
    }
    Ok(json!({ "streams": streams, "clusters": args.clusters, "rounds": rounds }))
}

fn ms(d: Option<Duration>) -> f64 {
    d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
}

fn update_report(version: &str, put: Duration, result: &Convergence, before: &Samples, after: &Samples) -> Value {
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
fn response_sizes(per_node: &[Vec<u32>]) -> Value {
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
fn worst(updates: &[Value]) -> Value {
    let max_of = |key: &str| updates.iter().filter_map(|u| u[key].as_f64()).fold(f64::NAN, f64::max);
    json!({
        "p50_ms": max_of("p50_ms"), "p99_ms": max_of("p99_ms"), "max_ms": max_of("max_ms"),
        "never": updates.iter().filter_map(|u| u["never"].as_u64()).sum::<u64>(),
    })
}

fn print_updates(label: &str, streams: usize, updates: &[Value]) {
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
