//! The load generator's command line: the scenarios and their sizes.
//!
//! Shared by the `loadgen` example and the `loadgen_smoke` test, which
//! builds its scenarios' arguments with [`Args::parse_from`], so both run
//! the scenarios with the same flags.

#![allow(dead_code)] // each user takes a different part

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use clap::{Parser, ValueEnum};

use crate::{
    cloud_map,
    sim::{FleetConfig, Protocol, Service},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// RSS per connected idle stream at each `--streams` level.
    Idle,
    /// `--streams` nodes on a mesh of `--clusters`; change one endpoint set `--updates` times.
    Fanout,
    /// The fan-out, but each update changes every cluster and the listener:
    /// CDS and LDS go to every stream.
    FullPush,
    /// On one daemon, for each `--streams` level: RSS per stream, then
    /// `--updates` fan-out updates [default updates: 3].
    Scale,
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
pub enum ServiceArg {
    Ads,
    Separate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProtocolArg {
    /// State of the world: every response carries the whole subscribed set.
    Sotw,
    /// Delta (incremental): only what changed, and the names removed.
    Delta,
}

#[derive(Debug, Parser)]
#[command(about = "Simulates N Envoys against sxds and measures convergence, memory and CPU")]
pub struct Args {
    #[arg(long, value_enum)]
    pub scenario: Scenario,
    /// Streams (simulated Envoys); for `idle` and `scale`, a comma-separated list of levels.
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    pub streams: Vec<usize>,
    #[arg(long, value_enum, default_value = "ads")]
    pub service: ServiceArg,
    #[arg(long, value_enum, default_value = "sotw")]
    pub protocol: ProtocolArg,
    #[arg(long, default_value = "bench")]
    pub node_type: String,
    /// Local addresses the simulated Envoys connect from, taken in turn
    /// (e.g. 127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4): one loopback address
    /// pair has ~28,000 ephemeral ports. Default: the OS picks.
    #[arg(long, value_delimiter = ',')]
    pub source_addrs: Vec<IpAddr>,
    /// The daemon binary to start.
    #[arg(long, default_value = "target/release/sxds")]
    pub sxds: PathBuf,
    /// Use a running daemon instead (with --rest-addr and --pid).
    #[arg(long, requires_all = ["rest_addr", "pid"])]
    pub xds_addr: Option<SocketAddr>,
    #[arg(long)]
    pub rest_addr: Option<SocketAddr>,
    #[arg(long)]
    pub pid: Option<u32>,
    /// EDS clusters in the mesh bundle (idle, fanout, full-push, scale, burst).
    #[arg(long, default_value_t = 100)]
    pub clusters: usize,
    #[arg(long, default_value_t = 3)]
    pub endpoints_per_cluster: usize,
    /// Updates, each changing one endpoint set (full-push: everything) [default: 5; cloud-map and scale: 3].
    #[arg(long)]
    pub updates: Option<usize>,
    /// Daemons in the replicas scenario (the first is the one measured for CPU and RSS).
    #[arg(long, default_value_t = 3)]
    pub replicas: usize,
    /// During the fan-out updates (fanout, full-push, scale), read
    /// `GET /nodes` and `GET /metrics` in a loop with this pause (ms)
    /// between reads, as a dashboard would.
    #[arg(long)]
    pub poll_status_ms: Option<u64>,
    #[arg(long, default_value_t = 10_000)]
    pub ingest_clusters: usize,
    /// 7 endpoints per ClusterLoadAssignment make the 10,000-cluster body ~10 MB.
    #[arg(long, default_value_t = 7)]
    pub ingest_endpoints_per_cluster: usize,
    /// Tiny clusters (`{"name": ...}`) in the first bundle of the memory scenario.
    #[arg(long, default_value_t = 100_000)]
    pub memory_tiny_clusters: usize,
    /// Encoded sizes of the memory scenario's bundles, for a daemon that does not list them.
    #[arg(long, value_delimiter = ',')]
    pub memory_encoded_bytes: Vec<u64>,
    #[arg(long, default_value_t = 100)]
    pub burst_puts: usize,
    #[arg(long, default_value_t = 1000)]
    pub burst_window_ms: u64,
    #[arg(long, default_value_t = 2)]
    pub burst_rounds: usize,
    /// Simulated Envoys connecting at the same time.
    #[arg(long, default_value_t = 100)]
    pub connect_concurrency: usize,
    /// How long to wait for all streams to connect and take the first config.
    #[arg(long, default_value = "300", value_parser = secs)]
    pub connect_deadline: Duration,
    /// How long after a PUT a node may take before it counts as never converged.
    #[arg(long, default_value = "30", value_parser = secs)]
    pub deadline: Duration,
    /// Quiet time before each memory sample and update.
    #[arg(long, default_value = "2", value_parser = secs)]
    pub settle: Duration,
    /// Cloud Map services, one EDS cluster each (cloud-map).
    #[arg(long, default_value_t = 500)]
    pub sources: usize,
    /// Instances registered in each Cloud Map service (cloud-map).
    #[arg(long, default_value_t = 20)]
    pub instances: usize,
    /// The daemon's `--cloud-map-interval`, seconds (cloud-map; the daemon's default).
    #[arg(long, default_value = "5", value_parser = secs)]
    pub cloud_map_interval: Duration,
    /// The daemon's `--cloud-map-refresh`, seconds (cloud-map; the daemon's default).
    #[arg(long, default_value = "30", value_parser = secs)]
    pub cloud_map_refresh: Duration,
    /// How long the steady-state Cloud Map calls are counted, seconds (cloud-map).
    #[arg(long, default_value = "60", value_parser = secs)]
    pub steady_secs: Duration,
    /// The Cloud Map emulator (PyPI moto[server]) to start (cloud-map).
    #[arg(long, default_value = "moto_server")]
    pub moto_server: PathBuf,
}

impl Args {
    pub fn updates(&self) -> usize {
        self.updates.unwrap_or(match self.scenario {
            Scenario::CloudMap | Scenario::Scale => 3,
            _ => 5,
        })
    }

    pub fn polling(&self) -> cloud_map::Polling {
        cloud_map::Polling { interval: self.cloud_map_interval, refresh: self.cloud_map_refresh }
    }

    /// The scenario's name as given on the command line.
    pub fn scenario_name(&self) -> String {
        self.scenario.to_possible_value().map_or_else(String::new, |v| v.get_name().to_owned())
    }

    /// The simulated fleet these flags describe, against the xDS server at `xds_addr`.
    pub fn fleet_config(&self, xds_addr: SocketAddr) -> FleetConfig {
        FleetConfig {
            xds_url: format!("http://{xds_addr}"),
            node_type: self.node_type.clone(),
            service: match self.service {
                ServiceArg::Ads => Service::Ads,
                ServiceArg::Separate => Service::Separate,
            },
            protocol: match self.protocol {
                ProtocolArg::Sotw => Protocol::StateOfTheWorld,
                ProtocolArg::Delta => Protocol::Delta,
            },
            connect_concurrency: self.connect_concurrency,
            source_addrs: self.source_addrs.clone(),
        }
    }
}

fn secs(text: &str) -> Result<Duration, String> {
    text.parse::<f64>().map(Duration::from_secs_f64).map_err(|e| format!("{text:?}: {e} (seconds)"))
}
