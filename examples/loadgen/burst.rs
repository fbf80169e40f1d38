//! The `burst` scenario: many PUTs within a short window, and whether
//! every stream ends on the last version without a response for each PUT.
//!
//! Shared by the `loadgen` example and the `loadgen_smoke` test.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};
use sxds::resource_type::ResourceType;

use crate::{
    bundles::Mesh,
    scenario::{update_report, Ctx},
    sim::{Fleet, Target},
};

pub async fn burst(ctx: &mut Ctx<'_>, fleet: &mut Fleet) -> anyhow::Result<Value> {
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
