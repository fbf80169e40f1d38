//! The `idle` scenario: daemon RSS per connected idle stream, at each
//! `--streams` level.
//!
//! Shared by the `loadgen` example and the `loadgen_smoke` test.

use serde_json::{json, Value};

use crate::{
    bundles::Mesh,
    daemon::Sample,
    scenario::{bytes_per_stream, Ctx},
    sim::Fleet,
};

pub async fn idle(ctx: &mut Ctx<'_>, fleet: &mut Fleet) -> anyhow::Result<Value> {
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
        let per_stream = bytes_per_stream(&base, &now, n);
        println!("idle  streams={n:>6}  rss={:>8} KiB (base {:>6} KiB)  per stream={:>7.0} B ({:.1} KiB)",
            now.rss_kib, base.rss_kib, per_stream, per_stream / 1024.0);
        levels.push(json!({
            "streams": n, "connect_s": took.as_secs_f64(),
            "rss_base_kib": base.rss_kib, "rss_kib": now.rss_kib,
            "bytes_per_stream": per_stream.round(),
            "loadgen_rss_kib": Sample::of_self().rss_kib,
            "connections": ctx.connections(),
        }));
    }
    Ok(json!({ "clusters": args.clusters, "levels": levels }))
}
