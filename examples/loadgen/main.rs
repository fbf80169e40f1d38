//! Load generator: N simulated Envoys against an sxds daemon, PUTs, and what
//! each update cost.
//!
//! ```text
//! cargo run --release --example loadgen -- --scenario fanout --streams 10000
//! cargo run --release --example loadgen -- --scenario fanout --streams 10000 --protocol delta
//! cargo run --release --example loadgen -- --scenario full-push --streams 10000
//! cargo run --release --example loadgen -- --scenario scale --streams 5000,10000,19900 \
//!     --source-addrs 127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4
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
//!
//! This file starts the daemon and picks the scenario; the scenarios live
//! in modules that the `loadgen_smoke` test includes too: `args.rs` (the
//! flags), `scenario.rs` (what they share: connecting, reports), `idle.rs`,
//! `fanout.rs` (fanout, full-push, scale, replicas), `ingest.rs` (ingest, memory), `burst.rs`,
//! `poller.rs` (status reads during updates), `cloud_map.rs`; below them
//! `sim.rs` (the fleet), `bundles.rs` and `daemon.rs`.

// The daemon's allocator: with glibc's, the simulated fleet's allocations
// (a buffer per request and response) cost it more CPU than the daemon
// spends on the same updates, on the same two cores.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod args;
mod bundles;
mod burst;
mod cloud_map;
mod daemon;
mod fanout;
mod idle;
mod ingest;
mod poller;
mod scenario;
mod sim;

use anyhow::Context;
use clap::Parser;
use serde_json::{json, Value};

use args::{Args, Scenario};
use daemon::{Daemon, Sample};
use scenario::{response_sizes, update_report, worst, Ctx, Samples};
use sim::Fleet;

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
    let mut fleet = Fleet::new(args.fleet_config(daemon.xds_addr))?;
    let mut ctx = Ctx::new(args, daemon, cloud_map_url)?;
    let details = match args.scenario {
        Scenario::Idle => idle::idle(&mut ctx, &mut fleet).await,
        Scenario::Fanout => fanout::fanout(&mut ctx, &mut fleet).await,
        Scenario::FullPush => fanout::full_push(&mut ctx, &mut fleet).await,
        Scenario::Scale => fanout::scale(&mut ctx, &mut fleet).await,
        Scenario::Ingest => ingest::ingest(&mut ctx, &mut fleet).await,
        Scenario::Memory => ingest::memory(&mut ctx).await,
        Scenario::Burst => burst::burst(&mut ctx, &mut fleet).await,
        Scenario::Replicas => fanout::replicas(&mut ctx, &mut fleet).await,
        Scenario::CloudMap => cloud_map_scenario(&mut ctx, &mut fleet).await,
    };
    let errors: u32 = fleet.records().iter().map(|r| r.errors).sum();
    fleet.shutdown().await;
    let mut summary = details?;
    summary["scenario"] = args.scenario_name().into();
    summary["service"] = format!("{:?}", args.service).to_lowercase().into();
    summary["protocol"] = format!("{:?}", args.protocol).to_lowercase().into();
    summary["stream_errors"] = errors.into();
    summary["loadgen"] = Sample::of_self().to_json();
    Ok(summary)
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
