//! The `cloud-map` scenario: endpoints from AWS Cloud Map, on the emulator
//! moto. `sources` Cloud Map services of `instances` instances each feed as
//! many EDS clusters of one bundle, and `streams` simulated Envoys take all
//! of them. Measured: the Cloud Map API calls per minute the daemon makes
//! at steady state, and, for each of `updates` new instances (each in
//! another service), how long after the poll that saw it every stream had
//! the new EDS.
//!
//! "The poll that saw it" is the source's `last_change_unix_ms` in
//! `GET /resources/{node_type}/sources`, the daemon's wall clock. The fleet
//! records `Instant`s; each update maps that wall-clock time to an
//! `Instant` through one (`Instant`, `SystemTime`) pair taken just after
//! it, on the same machine, so the only error is the daemon's millisecond
//! rounding (and any step of the wall clock in between).
//!
//! A stream has the change when it holds the EDS version that carries it:
//! `<bundle version>+cloudmap.<revision sum>.<digest>`. The revision sum
//! is known from `/sources` once the change is seen; the digest is not, so
//! the version is recognised by its beginning.
//!
//! Shared by the `loadgen` example and the `loadgen_smoke` test.

#![allow(dead_code)] // each user takes a different part

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, ensure, Context};
use aws_config::{timeout::TimeoutConfig, BehaviorVersion, Region};
use aws_sdk_servicediscovery::{
    config::Credentials,
    types::{HealthCheckCustomConfig, OperationStatus, OperationTargetType},
    Client,
};
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
use futures::{StreamExt, TryStreamExt};
use serde_json::Value;
use sxds::resource_type::ResourceType;

use crate::{
    bundles::{cluster_name, Mesh},
    daemon::{free_port, Daemon, Sample},
    sim::{Convergence, Fleet, Target},
};

pub const NAMESPACE: &str = "bench.local";
/// The bundle version: EDS versions begin with it.
const VERSION: &str = "v0";
/// moto keeps one backend per region: the daemon and the admin client
/// must sign for the same one.
const REGION: &str = "us-east-1";
/// What the daemon's AWS SDK needs in its environment to reach moto
/// (which takes any keys).
pub const DAEMON_ENV: [(&str, &str); 3] = [("AWS_REGION", REGION), ("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test")];
/// Admin calls in flight while the services are filled.
const IN_FLIGHT: usize = 16;
pub const REVISION: &str = "DiscoverInstancesRevision";
pub const INSTANCES: &str = "DiscoverInstances";

/// The Cloud Map service of cluster `i`.
pub fn service_name(i: usize) -> String {
    format!("svc-{i:05}")
}

/// A `moto_server` on a free loopback port, killed on drop.
pub struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    /// Starts `binary` (`moto_server`) and waits until it answers.
    pub async fn start(binary: &Path) -> anyhow::Result<Self> {
        let port = free_port()?;
        // Its request log is one line per call: thousands a minute.
        let child = Command::new(binary)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot run {} (pip install 'moto[server]==5.2.5')", binary.display()))?;
        let mut moto = Self { child, port };
        let probe = format!("{}/moto-api/", moto.endpoint_url());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if reqwest::get(&probe).await.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            if let Some(status) = moto.child.try_wait()? {
                bail!("{} exited with {status}", binary.display());
            }
            if Instant::now() > deadline {
                bail!("moto did not answer {probe} within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!("loadgen: started moto (pid {}) at {}", moto.child.id(), moto.endpoint_url());
        Ok(moto)
    }

    pub fn endpoint_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How the daemon polls: its `--cloud-map-interval` and `--cloud-map-refresh`.
#[derive(Debug, Clone, Copy)]
pub struct Polling {
    pub interval: Duration,
    pub refresh: Duration,
}

impl Polling {
    /// The daemon's flags for polling `endpoint_url` this way.
    pub fn daemon_args(&self, endpoint_url: &str) -> Vec<String> {
        let ms = |d: Duration| format!("{}ms", d.as_millis());
        ["--cloud-map-endpoint", endpoint_url, "--cloud-map-interval", &ms(self.interval), "--cloud-map-refresh", &ms(self.refresh)]
            .map(str::to_owned)
            .to_vec()
    }

    /// `DiscoverInstancesRevision` per minute for `sources` distinct
    /// queries: one per jittered interval (80–100 %, so 90 % on average).
    /// Each call's own latency lengthens the period a little.
    pub fn expected_revisions_per_minute(&self, sources: usize) -> f64 {
        sources as f64 * 60.0 / (0.9 * self.interval.as_secs_f64())
    }

    /// `DiscoverInstances` per minute while nothing changes: at the first
    /// poll at least `refresh` after the last one answered, which comes on
    /// average 0.45 interval after the refresh time (the mean residual of a
    /// uniform 0.8–1.0 interval).
    pub fn expected_instances_per_minute(&self, sources: usize) -> f64 {
        let interval = self.interval.as_secs_f64();
        let period = (self.refresh.as_secs_f64() + 0.45 * interval).max(0.9 * interval);
        sources as f64 * 60.0 / period
    }
}

/// The sizes and bounds of one run.
#[derive(Debug, Clone)]
pub struct Params {
    pub node_type: String,
    pub sources: usize,
    pub instances: usize,
    pub streams: usize,
    pub polling: Polling,
    /// How long the steady-state calls are counted.
    pub steady: Duration,
    pub updates: usize,
    /// Quiet time before each update.
    pub settle: Duration,
    /// Bound on finding every source and on connecting the fleet.
    pub connect_deadline: Duration,
    /// How long after the poll that saw a change a stream may take before
    /// it counts as never converged.
    pub deadline: Duration,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Creating the services and registering every instance in moto.
    pub fill: Duration,
    pub registered: usize,
    /// From the PUT until every source had answered with all its instances.
    pub discovered: Duration,
    /// Until every stream held the bundle and every cluster's endpoints.
    pub connect: Duration,
    /// The EDS version every stream held after connecting.
    pub eds_version: String,
    /// The daemon's RSS with the sources found, before any stream.
    pub rss_base_kib: u64,
    pub steady: Steady,
    pub updates: Vec<Update>,
}

/// The Cloud Map calls the daemon made while nothing changed. Every
/// source is found at once after the PUT, so their `DiscoverInstances`
/// refreshes come in step and drift apart only slowly: that figure needs a
/// window of several refresh periods.
#[derive(Debug, Clone)]
pub struct Steady {
    pub seconds: f64,
    /// Calls per minute by (operation, outcome), every pair the daemon counts.
    pub per_minute: BTreeMap<(String, String), f64>,
    pub expected_revisions_per_minute: f64,
    pub expected_instances_per_minute: f64,
    pub daemon_cpu_ms: u64,
    pub rss_kib: u64,
}

impl Steady {
    /// Calls per minute of `operation` that answered.
    pub fn ok_per_minute(&self, operation: &str) -> f64 {
        self.per_minute.get(&(operation.to_owned(), "ok".to_owned())).copied().unwrap_or(0.0)
    }

    /// Calls per minute that were throttled or failed, of both operations.
    pub fn failed_per_minute(&self) -> f64 {
        self.per_minute.iter().filter(|((_, outcome), _)| outcome != "ok").fold(0.0, |sum, (_, n)| sum + n)
    }
}

/// One new instance, and how the fleet took it.
#[derive(Debug, Clone)]
pub struct Update {
    pub cluster: String,
    /// The EDS version carrying it; `None` when no stream got it in time.
    pub version: Option<String>,
    /// From the registration to the poll that saw it.
    pub seen: Duration,
    /// The daemon's `last_change_unix_ms` for the source.
    pub change_unix_ms: u64,
    /// Endpoints the source has after it.
    pub endpoints: usize,
    /// Per stream, from the poll that saw it to the EDS response carrying it.
    pub result: Convergence,
    pub daemon_before: Sample,
    pub daemon_after: Sample,
    pub loadgen_before: Sample,
    pub loadgen_after: Sample,
    /// Per stream, the resources in each EDS response after the registration.
    pub eds_sizes: Vec<Vec<u32>>,
}

/// Fills moto, PUTs the bundle, connects the fleet, counts the calls at
/// steady state, then registers one instance at a time and times it.
pub async fn run(params: &Params, endpoint_url: &str, daemon: &Daemon, fleet: &mut Fleet) -> anyhow::Result<Outcome> {
    ensure!(params.sources > 0 && params.instances > 0, "--sources and --instances must be at least 1");
    let rest = Rest::new(daemon, &params.node_type)?;
    let registry = Registry::new(endpoint_url).await;
    let started = Instant::now();
    let services = registry.fill(params.sources, params.instances).await?;
    let fill = started.elapsed();

    let mesh = Mesh::new(params.sources, 0, params.sources.min(100));
    let put_at = Instant::now();
    rest.put(&mesh.cloud_map_bundle(VERSION, NAMESPACE, service_name)).await?;
    let every_source = |rows: &[Source]| rows.len() == params.sources && rows.iter().all(|r| r.state == "ok" && r.endpoints == params.instances);
    let rows = rest.wait_sources("every source to answer with all its instances", params.connect_deadline, every_source).await?;
    let discovered = put_at.elapsed();
    eprintln!("loadgen: {} sources found {:.1?} after the PUT", params.sources, discovered);
    let rss_base_kib = daemon.sample()?.rss_kib;

    let (connect, eds_version) = connect(fleet, params, &eds_prefix(&rows)).await?;
    tokio::time::sleep(params.settle).await;
    let steady = steady(&rest, daemon, params).await?;

    let mut updates = Vec::new();
    for u in 0..params.updates {
        // A different service each time, spread over the mesh.
        let source = u * params.sources / params.updates.max(1) % params.sources;
        tokio::time::sleep(params.settle).await;
        updates.push(update(params, &rest, &registry, fleet, daemon, &services[source], source, params.instances + u).await?);
    }
    Ok(Outcome { fill, registered: params.sources * params.instances, discovered, connect, eds_version, rss_base_kib, steady, updates })
}

/// Grows the fleet to `params.streams` and waits until every stream holds
/// the bundle and the EDS version beginning with `eds_prefix`.
async fn connect(fleet: &mut Fleet, params: &Params, eds_prefix: &str) -> anyhow::Result<(Duration, String)> {
    let since = Instant::now();
    fleet.add(params.streams.saturating_sub(fleet.len()));
    eprintln!("loadgen: connecting {} streams ...", fleet.len());
    let bundle = Target { version: VERSION.into(), types: vec![ResourceType::Cluster, ResourceType::Listener, ResourceType::Route], since };
    let taken = fleet.wait(&bundle, params.connect_deadline).await;
    ensure_all(fleet, &taken, VERSION, params.connect_deadline)?;
    let version = wait_version(fleet, eds_prefix, since + params.connect_deadline)
        .await
        .with_context(|| format!("no stream got EDS {eds_prefix}* within {:?}", params.connect_deadline))?;
    let endpoints = Target { version: version.clone(), types: vec![ResourceType::Endpoint], since };
    let taken = fleet.wait(&endpoints, params.connect_deadline).await;
    ensure_all(fleet, &taken, &version, params.connect_deadline)?;
    eprintln!("loadgen: {} streams hold every cluster's endpoints ({version}) after {:.1?}", fleet.len(), since.elapsed());
    Ok((since.elapsed(), version))
}

fn ensure_all(fleet: &Fleet, result: &Convergence, version: &str, limit: Duration) -> anyhow::Result<()> {
    if result.never > 0 {
        let errors: Vec<String> = fleet.records().into_iter().filter_map(|r| r.last_error).take(3).collect();
        bail!("{} of {} streams did not take {version} within {limit:?}; errors: {errors:?}", result.never, fleet.len());
    }
    Ok(())
}

/// Counts the daemon's Cloud Map calls over `params.steady`.
async fn steady(rest: &Rest, daemon: &Daemon, params: &Params) -> anyhow::Result<Steady> {
    eprintln!("loadgen: counting Cloud Map calls at steady state for {:?} ...", params.steady);
    let (calls_before, sample_before, start) = (rest.cloud_map_calls().await?, daemon.sample()?, Instant::now());
    tokio::time::sleep(params.steady).await;
    let (calls_after, sample_after) = (rest.cloud_map_calls().await?, daemon.sample()?);
    let seconds = start.elapsed().as_secs_f64();
    let per_minute = calls_after
        .iter()
        .map(|(key, after)| (key.clone(), (after - calls_before.get(key).copied().unwrap_or(0.0)) * 60.0 / seconds))
        .collect();
    Ok(Steady {
        seconds,
        per_minute,
        expected_revisions_per_minute: params.polling.expected_revisions_per_minute(params.sources),
        expected_instances_per_minute: params.polling.expected_instances_per_minute(params.sources),
        daemon_cpu_ms: sample_after.cpu_ms.saturating_sub(sample_before.cpu_ms),
        rss_kib: sample_after.rss_kib,
    })
}

/// Registers instance `n` in `source`'s service; waits for the poll that
/// sees it, then for every stream to hold the EDS version carrying it.
#[allow(clippy::too_many_arguments)]
async fn update(params: &Params, rest: &Rest, registry: &Registry, fleet: &Fleet, daemon: &Daemon, service_id: &str, source: usize, n: usize) -> anyhow::Result<Update> {
    let cluster = cluster_name(source);
    let rows = rest.sources().await?;
    let before = find(&rows, &cluster)?.clone();
    let marks = fleet.marks(ResourceType::Endpoint);
    let (daemon_before, loadgen_before) = (daemon.sample()?, Sample::of_self());
    let registered_at = Instant::now();
    registry.register(service_id, source, n).await?;
    let seen_limit = params.polling.interval * 3 + params.deadline;
    let moved = |rows: &[Source]| {
        find(rows, &cluster).is_ok_and(|r| r.last_change_unix_ms != before.last_change_unix_ms && r.instances == before.instances + 1)
    };
    let rows = rest.wait_sources(&format!("a poll to see the new instance of {cluster}"), seen_limit, moved).await?;
    let row = find(&rows, &cluster)?;
    let change_unix_ms = row.last_change_unix_ms.context("a changed source has last_change_unix_ms")?;
    let changed_at = instant_of(change_unix_ms);
    let seen = changed_at.saturating_duration_since(registered_at);
    let version = wait_version(fleet, &eds_prefix(&rows), changed_at + params.deadline).await;
    let result = match &version {
        Some(version) => fleet.wait(&Target { version: version.clone(), types: vec![ResourceType::Endpoint], since: changed_at }, params.deadline).await,
        None => Convergence { latencies: Vec::new(), never: fleet.len() },
    };
    let (daemon_after, loadgen_after) = (daemon.sample()?, Sample::of_self());
    eprintln!(
        "loadgen: {cluster}: seen {seen:.1?} after the registration; {} of {} streams had it, p99 {:.0?} after the poll",
        result.converged(),
        fleet.len(),
        result.percentile(99.0).unwrap_or_default()
    );
    Ok(Update {
        cluster,
        version,
        seen,
        change_unix_ms,
        endpoints: row.endpoints,
        result,
        daemon_before,
        daemon_after,
        loadgen_before,
        loadgen_after,
        eds_sizes: fleet.sizes_since(ResourceType::Endpoint, &marks),
    })
}

/// The beginning of the EDS version of sources found at `rows`' revisions.
fn eds_prefix(rows: &[Source]) -> String {
    let sum = rows.iter().filter_map(|r| r.revision).fold(0i64, i64::wrapping_add);
    format!("{VERSION}+cloudmap.{sum}.")
}

/// Polls the fleet until some stream holds an EDS version beginning with `prefix`.
async fn wait_version(fleet: &Fleet, prefix: &str, deadline: Instant) -> Option<String> {
    loop {
        if let Some(version) = fleet.version_starting(ResourceType::Endpoint, prefix) {
            return Some(version);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `Instant` of a Unix time in milliseconds, on this machine's clocks.
fn instant_of(unix_ms: u64) -> Instant {
    let (now, wall) = (Instant::now(), SystemTime::now());
    let at = SystemTime::UNIX_EPOCH + Duration::from_millis(unix_ms);
    match wall.duration_since(at) {
        Ok(ago) => now.checked_sub(ago).unwrap_or(now),
        Err(ahead) => now + ahead.duration(),
    }
}

/// One row of `GET /resources/{node_type}/sources`.
#[derive(Debug, Clone, PartialEq)]
struct Source {
    cluster_name: String,
    state: String,
    revision: Option<i64>,
    instances: usize,
    endpoints: usize,
    last_change_unix_ms: Option<u64>,
}

fn find<'a>(rows: &'a [Source], cluster: &str) -> anyhow::Result<&'a Source> {
    rows.iter().find(|r| r.cluster_name == cluster).with_context(|| format!("{cluster} is not among the sources"))
}

/// The daemon's REST API, as far as this scenario uses it.
struct Rest {
    http: reqwest::Client,
    base: String,
    node_type: String,
}

impl Rest {
    fn new(daemon: &Daemon, node_type: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?;
        Ok(Self { http, base: format!("http://{}", daemon.rest_addr), node_type: node_type.to_owned() })
    }

    async fn put(&self, bundle: &Value) -> anyhow::Result<()> {
        let url = format!("{}/resources/{}", self.base, self.node_type);
        let response = self.http.put(url).header("content-type", "application/json").body(serde_json::to_vec(bundle)?).send().await?;
        let status = response.status();
        if !status.is_success() {
            bail!("PUT answered {status}: {}", response.text().await.unwrap_or_default());
        }
        Ok(())
    }

    async fn sources(&self) -> anyhow::Result<Vec<Source>> {
        let url = format!("{}/resources/{}/sources", self.base, self.node_type);
        let listing: Value = self.http.get(url).send().await?.error_for_status()?.json().await?;
        let rows = listing["sources"].as_array().context("GET .../sources lists `sources`")?;
        Ok(rows
            .iter()
            .map(|row| Source {
                cluster_name: row["cluster_name"].as_str().unwrap_or_default().to_owned(),
                state: row["state"].as_str().unwrap_or_default().to_owned(),
                revision: row["revision"].as_i64(),
                instances: row["instances"].as_u64().unwrap_or(0) as usize,
                endpoints: row["endpoints"].as_u64().unwrap_or(0) as usize,
                last_change_unix_ms: row["last_change_unix_ms"].as_u64(),
            })
            .collect())
    }

    /// Reads the sources every 100 ms until `done` holds of them.
    async fn wait_sources(&self, what: &str, limit: Duration, done: impl Fn(&[Source]) -> bool) -> anyhow::Result<Vec<Source>> {
        let deadline = Instant::now() + limit;
        loop {
            let rows = self.sources().await?;
            if done(&rows) {
                return Ok(rows);
            }
            if Instant::now() >= deadline {
                let behind: Vec<&Source> = rows.iter().filter(|r| r.state != "ok").take(3).collect();
                bail!("timed out after {limit:?} waiting for {what}; {} sources listed, some not ok: {behind:?}", rows.len());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `sxds_cloud_map_requests_total` by (operation, outcome).
    async fn cloud_map_calls(&self) -> anyhow::Result<BTreeMap<(String, String), f64>> {
        let text = self.http.get(format!("{}/metrics", self.base)).send().await?.error_for_status()?.text().await?;
        Ok(parse_calls(&text))
    }
}

/// The `sxds_cloud_map_requests_total{operation="...",outcome="..."} N`
/// lines of a Prometheus text exposition.
fn parse_calls(text: &str) -> BTreeMap<(String, String), f64> {
    let mut calls = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("sxds_cloud_map_requests_total{") else { continue };
        let Some((labels, value)) = rest.split_once('}') else { continue };
        let label = |name: &str| labels.split(',').find_map(|pair| pair.trim().strip_prefix(name)?.strip_prefix("=\"")?.strip_suffix('"').map(str::to_owned));
        let value = value.split_whitespace().next().and_then(|v| v.parse::<f64>().ok());
        if let (Some(operation), Some(outcome), Some(value)) = (label("operation"), label("outcome"), value) {
            calls.insert((operation, outcome), value);
        }
    }
    calls
}

/// Cloud Map's admin API on moto: namespace, services, instances.
struct Registry {
    client: Client,
}

impl Registry {
    async fn new(endpoint_url: &str) -> Self {
        let http = aws_smithy_http_client::Builder::new().tls_provider(Provider::Rustls(CryptoMode::Ring)).build_https();
        let config = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .credentials_provider(Credentials::new("test", "test", None, None, "loadgen"))
            .endpoint_url(endpoint_url)
            .http_client(http)
            .timeout_config(TimeoutConfig::builder().operation_timeout(Duration::from_secs(30)).build())
            .load()
            .await;
        Self { client: Client::new(&config) }
    }

    /// Namespace [`NAMESPACE`] with `sources` services of `instances`
    /// instances each, [`IN_FLIGHT`] calls at a time; answers the services' ids.
    async fn fill(&self, sources: usize, instances: usize) -> anyhow::Result<Vec<String>> {
        let namespace = self.create_namespace().await?;
        let services: Vec<String> = futures::stream::iter(0..sources).map(|i| self.create_service(&namespace, i)).buffered(IN_FLIGHT).try_collect().await?;
        let (total, done, start) = (sources * instances, AtomicUsize::new(0), Instant::now());
        let step = (total / 10).max(1);
        eprintln!("loadgen: registering {sources} × {instances} instances in moto ...");
        futures::stream::iter((0..sources).flat_map(|s| (0..instances).map(move |n| (s, n))))
            .map(Ok)
            .try_for_each_concurrent(IN_FLIGHT, |(s, n)| {
                let (services, done) = (&services, &done);
                async move {
                    self.register(&services[s], s, n).await?;
                    let done = done.fetch_add(1, Ordering::Relaxed) + 1;
                    if done % step == 0 || done == total {
                        eprintln!("loadgen: {done}/{total} instances registered ({:.0?})", start.elapsed());
                    }
                    anyhow::Ok(())
                }
            })
            .await?;
        Ok(services)
    }

    async fn create_namespace(&self) -> anyhow::Result<String> {
        let created = self.client.create_http_namespace().name(NAMESPACE).send().await.context("CreateHttpNamespace")?;
        let operation = created.operation_id().context("CreateHttpNamespace answers an operation id")?;
        // moto finishes every operation at once; AWS would take a while.
        let answer = self.client.get_operation().operation_id(operation).send().await.context("GetOperation")?;
        let operation = answer.operation().context("GetOperation answers the operation")?;
        ensure!(operation.status() == Some(&OperationStatus::Success), "creating namespace {NAMESPACE}: {operation:?}");
        operation.targets().and_then(|t| t.get(&OperationTargetType::Namespace)).cloned().context("the operation names the namespace")
    }

    async fn create_service(&self, namespace_id: &str, i: usize) -> anyhow::Result<String> {
        let created = self
            .client
            .create_service()
            .name(service_name(i))
            .namespace_id(namespace_id)
            .health_check_custom_config(HealthCheckCustomConfig::builder().build())
            .send()
            .await
            .context("CreateService")?;
        created.service().and_then(|s| s.id()).map(str::to_owned).context("CreateService answers the service id")
    }

    /// Registers instance `n` of source `source`. moto registers at once,
    /// so the operation is not waited for.
    async fn register(&self, service_id: &str, source: usize, n: usize) -> anyhow::Result<()> {
        self.client
            .register_instance()
            .service_id(service_id)
            .instance_id(format!("i-{source:05}-{n:04}"))
            .set_attributes(Some(attributes(source, n)))
            .send()
            .await
            .with_context(|| format!("RegisterInstance {n} in {}", service_name(source)))?;
        Ok(())
    }
}

/// Instance `n` of source `source`: a loopback address that is never
/// dialled, a port per instance, zones alternating.
fn attributes(source: usize, n: usize) -> HashMap<String, String> {
    let zone = if n.is_multiple_of(2) { "us-east-1a" } else { "us-east-1b" };
    [
        ("AWS_INSTANCE_IPV4", format!("127.0.{}.{}", source % 256, n % 254 + 1)),
        ("AWS_INSTANCE_PORT", (8000 + n).to_string()),
        ("AVAILABILITY_ZONE", zone.to_owned()),
        ("REGION", REGION.to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_read_from_the_metrics_text() {
        let text = "# TYPE sxds_cloud_map_requests counter\n\
            sxds_cloud_map_requests_total{operation=\"DiscoverInstancesRevision\",outcome=\"ok\"} 12\n\
            sxds_cloud_map_requests_total{outcome=\"error\",operation=\"DiscoverInstances\"} 1\n\
            sxds_streams_total 3\n";
        let calls = parse_calls(text);
        assert_eq!(calls.get(&(REVISION.into(), "ok".into())), Some(&12.0));
        assert_eq!(calls.get(&(INSTANCES.into(), "error".into())), Some(&1.0));
        assert_eq!(calls.len(), 2);
    }
}
