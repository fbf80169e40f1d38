//! Big bundles: the `ingest` scenario (a ~10 MB PUT to connected
//! streams) and `memory` (what a stored bundle keeps resident).
//!
//! Shared by the `loadgen` example and the `loadgen_smoke` test.

#![allow(dead_code)] // each user takes a different part

use std::time::Instant;

use anyhow::{bail, Context};
use serde_json::{json, Value};
use sxds::resource_type::ResourceType;

use crate::{
    bundles::Mesh,
    scenario::{ms, update_report, Ctx},
    sim::{Fleet, Target},
};

pub async fn ingest(ctx: &mut Ctx<'_>, fleet: &mut Fleet) -> anyhow::Result<Value> {
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
pub async fn memory(ctx: &mut Ctx<'_>) -> anyhow::Result<Value> {
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
