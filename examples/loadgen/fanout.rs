//! Updates fanned out to every stream: `fanout` (each update changes one
//! endpoint set: EDS only), `full-push` (each changes every cluster and
//! the listener: CDS and LDS to every stream, then the EDS and RDS the
//! warming clusters and listener wait for), `scale` (fan-out updates at growing
//! numbers of streams on one daemon, with RSS per stream at each level)
//! and `replicas` (the fan-out over several daemons sharing a store). One
//! update is timed and reported by [`update`] for all of them.
//!
//! Shared by the `loadgen` example and the `loadgen_smoke` test.

#![allow(dead_code)] // each user takes a different part

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};
use sxds::resource_type::ResourceType;

use crate::{
    bundles::Mesh,
    daemon::{Daemon, Sample},
    poller::StatusPoller,
    scenario::{bytes_per_stream, print_updates, response_sizes, update_report, worst, Ctx},
    sim::{Fleet, Target, TYPES},
};

/// How long no node may take a response before the responses after an
/// update count as complete (the warming EDS and RDS of a full push come
/// after the CDS and LDS that converge it).
const QUIET: Duration = Duration::from_millis(300);

/// What each update of a fan-out changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// One endpoint set moves: only EDS is sent (fanout, scale).
    OneEndpointSet,
    /// Every cluster's connect timeout and the listener's stat prefix
    /// change: CDS and LDS go to every stream (full-push).
    Everything,
}

impl Push {
    /// The types a node must hold the new version of to have the update.
    pub fn types(self) -> Vec<ResourceType> {
        match self {
            Self::OneEndpointSet => vec![ResourceType::Endpoint],
            Self::Everything => vec![ResourceType::Cluster, ResourceType::Listener],
        }
    }

    fn apply(self, mesh: &mut Mesh, u: usize) {
        match self {
            Self::OneEndpointSet => mesh.change_endpoints(u * 37),
            Self::Everything => mesh.change_everything(),
        }
    }
}

/// `fanout`: `--updates` updates of one endpoint set each.
pub async fn fanout(ctx: &mut Ctx<'_>, fleet: &mut Fleet) -> anyhow::Result<Value> {
    fan_out(ctx, fleet, Push::OneEndpointSet, "fanout").await
}

/// `full-push`: `--updates` updates of every cluster and the listener.
pub async fn full_push(ctx: &mut Ctx<'_>, fleet: &mut Fleet) -> anyhow::Result<Value> {
    fan_out(ctx, fleet, Push::Everything, "full-push").await
}

async fn fan_out(ctx: &mut Ctx<'_>, fleet: &mut Fleet, push: Push, label: &str) -> anyhow::Result<Value> {
    let args = ctx.args;
    let streams = *args.streams.last().context("--streams")?;
    let mut mesh = Mesh::new(args.clusters, args.endpoints_per_cluster, args.clusters);
    ctx.put(serde_json::to_vec(&mesh.bundle("v0"))?).await?;
    ctx.settle().await;
    let base = ctx.daemon.sample()?;
    ctx.connect(fleet, streams, "v0").await?;
    let poller = poller(ctx);
    let mut updates = Vec::new();
    for u in 1..=args.updates() {
        updates.push(update(ctx, fleet, &mut mesh, push, u).await?);
    }
    print_updates(label, streams, &updates);
    print_received(&updates);
    let polled = match poller {
        Some(poller) => poller.stop().await,
        None => Value::Null,
    };
    let idle = ctx.daemon.sample()?;
    Ok(json!({
        "streams": streams, "clusters": args.clusters, "status_reads": polled,
        "rss_base_kib": base.rss_kib,
        "bytes_per_stream": bytes_per_stream(&base, &idle, streams).round(),
        "updates": updates,
        "worst": worst(&updates),
    }))
}

/// `scale`: for each `--streams` level on one daemon, the fleet grows to
/// it and converges; after the settle time the daemon's RSS per stream is
/// sampled as `idle` does (over the RSS with the bundle loaded and no
/// streams), then `--updates` fan-out updates run at that level.
pub async fn scale(ctx: &mut Ctx<'_>, fleet: &mut Fleet) -> anyhow::Result<Value> {
    let args = ctx.args;
    let mut streams = args.streams.clone();
    streams.sort();
    let mut mesh = Mesh::new(args.clusters, args.endpoints_per_cluster, args.clusters);
    ctx.put(serde_json::to_vec(&mesh.bundle("v0"))?).await?;
    ctx.settle().await;
    let base = ctx.daemon.sample()?;
    let mut levels = Vec::new();
    let mut all = Vec::new();
    let mut u = 0;
    for n in streams {
        let took = ctx.connect(fleet, n, &format!("v{u}")).await?;
        ctx.settle().await;
        let now = ctx.daemon.sample()?;
        let per_stream = bytes_per_stream(&base, &now, n);
        println!("scale  streams={n:>6}  rss={:>8} KiB (base {:>6} KiB)  per stream={:>7.0} B ({:.1} KiB)",
            now.rss_kib, base.rss_kib, per_stream, per_stream / 1024.0);
        let connections = ctx.connections();
        let poller = poller(ctx);
        let mut updates = Vec::new();
        for _ in 0..args.updates() {
            u += 1;
            updates.push(update(ctx, fleet, &mut mesh, Push::OneEndpointSet, u).await?);
        }
        print_updates("  updates", n, &updates);
        let polled = match poller {
            Some(poller) => poller.stop().await,
            None => Value::Null,
        };
        all.extend(updates.iter().cloned());
        levels.push(json!({
            "streams": n, "connect_s": took.as_secs_f64(),
            "rss_base_kib": base.rss_kib, "rss_kib": now.rss_kib,
            "bytes_per_stream": per_stream.round(),
            "loadgen_rss_kib": Sample::of_self().rss_kib,
            "connections": connections, "status_reads": polled,
            "updates": updates, "worst": worst(&updates),
        }));
    }
    Ok(json!({ "clusters": args.clusters, "levels": levels, "worst": worst(&all) }))
}

fn poller(ctx: &Ctx<'_>) -> Option<StatusPoller> {
    ctx.args.poll_status_ms.map(|pause| StatusPoller::start(ctx.http.clone(), ctx.daemon.rest_addr, Duration::from_millis(pause)))
}

/// Update `u` of a fan-out: after the settle time, `push` applied to
/// `mesh` is PUT as version `v<u>`, and every node is waited for (up to
/// `--deadline`) until it holds that version of the types `push` changes.
/// Reports the convergence, the daemon's and the load generator's CPU
/// over it, and, once no response came for a moment, what each type's
/// responses since the PUT carried (`eds_responses`, and all four types
/// under `received`).
pub async fn update(ctx: &Ctx<'_>, fleet: &Fleet, mesh: &mut Mesh, push: Push, u: usize) -> anyhow::Result<Value> {
    let (version, body) = next_update(ctx, mesh, push, u).await?;
    let marks: Vec<Vec<usize>> = TYPES.iter().map(|&ty| fleet.marks(ty)).collect();
    let before = ctx.samples()?;
    let since = Instant::now();
    let put = ctx.put(body).await?;
    let target = Target { version, types: push.types(), since };
    let result = fleet.wait(&target, ctx.args.deadline).await;
    let after = ctx.samples()?;
    let mut report = update_report(&target.version, put, &result, &before, &after);
    fleet.quiet(QUIET, since + ctx.args.deadline).await;
    let mut received = json!({});
    for (&ty, marks) in TYPES.iter().zip(&marks) {
        let sizes = fleet.sizes_since(ty, marks);
        let mut summary = response_sizes(&sizes);
        summary["streams"] = sizes.iter().filter(|s| !s.is_empty()).count().into();
        if ty == ResourceType::Endpoint {
            report["eds_responses"] = summary.clone();
        }
        received[ty.name()] = summary;
    }
    report["received"] = received;
    Ok(report)
}

/// Per update, the streams that took each type and the responses each took.
fn print_received(updates: &[Value]) {
    println!("  responses since each PUT: streams that took the type, responses per stream (mean / max)");
    for u in updates {
        let types: Vec<String> = TYPES
            .iter()
            .map(|ty| {
                let r = &u["received"][ty.name()];
                let n = |k: &str| r[k].as_u64().unwrap_or(0);
                format!("{} {} ({:.1} / {})", ty.name(), n("streams"), r["responses_per_stream_mean"].as_f64().unwrap_or(f64::NAN), n("responses_per_stream_max"))
            })
            .collect();
        println!("  {:<8} {}", u["version"].as_str().unwrap_or(""), types.join(", "));
    }
}

/// After the settle time, update `u` of a fan-out, as version `v<u>`.
async fn next_update(ctx: &Ctx<'_>, mesh: &mut Mesh, push: Push, u: usize) -> anyhow::Result<(String, Vec<u8>)> {
    ctx.settle().await;
    push.apply(mesh, u);
    let version = format!("v{u}");
    let body = serde_json::to_vec(&mesh.bundle(&version))?;
    Ok((version, body))
}

/// A PUT on one replica until every stream on every replica has it.
pub async fn replicas(ctx: &mut Ctx<'_>, fleet: &mut Fleet) -> anyhow::Result<Value> {
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
        let (version, body) = next_update(ctx, &mut mesh, Push::OneEndpointSet, u).await?;
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
