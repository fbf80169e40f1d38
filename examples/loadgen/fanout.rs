//! Updates fanned out to every stream: the `fanout` scenario (one
//! endpoint set changes per update) and `replicas` (the same over several
//! daemons sharing a store).
//!
//! Shared by the `loadgen` example and the `loadgen_smoke` test.

#![allow(dead_code)] // each user takes a different part

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};
use sxds::resource_type::ResourceType;

use crate::{
    bundles::Mesh,
    daemon::Daemon,
    poller::StatusPoller,
    scenario::{print_updates, response_sizes, update_report, worst, Ctx},
    sim::{Fleet, Target},
};

pub async fn fanout(ctx: &mut Ctx<'_>, fleet: &mut Fleet) -> anyhow::Result<Value> {
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
