//! Envoy's own verdict before a PUT is stored (`--envoy-validate PATH`).
//!
//! Schema and reference checks catch typos, not what only Envoy knows: a
//! regex RE2 cannot compile, a field constraint (an empty `stat_prefix`),
//! an extension's own config rules. So the bundle is rendered as a static
//! bootstrap and checked by a real Envoy in `--mode validate`, in a
//! temporary directory and within a time limit. What validate mode cannot
//! check as written is rendered so that the check still runs:
//!
//! - EDS clusters become STATIC, with their `endpoints` entry (or none, for
//!   an endpoint source) as `load_assignment`;
//! - RDS, SRDS and VHDS route configurations are put inline into their
//!   connection managers (a scoped listener gets its first scope's), ECDS
//!   filters get their `extension_configs` entry as `typed_config`;
//! - SDS secrets become static secrets of the bootstrap, and runtime layers
//!   static layers;
//! - a transport socket that names files (certificates on the Envoy hosts,
//!   not on this one) is left out: its TLS settings are not checked.
//!
//! When Envoy's message names no resource, the clusters and then the
//! listeners are halved until the one it refuses is found (each check takes
//! a fraction of a second), so the 400 says which resource it concerns.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use serde_json::{json, Map, Value};
use tokio::{process::Command, sync::Semaphore};

use crate::{
    bundle::{self, BundleError},
    schema::StoredBundle,
};

const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

/// Why a pre-flight check did not pass.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// Envoy refused the bundle: a 400, with the resource it concerns.
    #[error(transparent)]
    Refused(#[from] BundleError),
    /// Envoy could not give a verdict (it did not start, or took too long):
    /// nothing is stored, and a retry may pass.
    #[error("{0}")]
    Unavailable(String),
}

/// Checks bundles with an Envoy binary, one at a time: each check is a
/// process of a few dozen MB.
#[derive(Debug)]
pub struct Preflight {
    envoy: PathBuf,
    timeout: Duration,
    permits: Semaphore,
}

/// The bundle's resources as canonical JSON, by bundle key, key material
/// included (Envoy must see it).
struct Lists(Map<String, Value>);

impl Lists {
    fn of(stored: &StoredBundle) -> Result<Self, BundleError> {
        let mut lists = Map::new();
        for field in crate::schema::bundle_descriptor().fields() {
            let prost_reflect::Kind::Message(message) = field.kind() else { continue };
            let list = stored.resources.iter().filter(|r| r.field == field.number()).map(|r| bundle::resource_value(&message, r, false));
            lists.insert(field.name().to_owned(), Value::Array(list.collect::<Result<_, _>>()?));
        }
        Ok(Self(lists))
    }

    fn list(&self, key: &str) -> &[Value] {
        self.0.get(key).and_then(Value::as_array).map_or(&[], Vec::as_slice)
    }

    fn named(&self, key: &str, name_field: &str, name: &str) -> Option<&Value> {
        self.list(key).iter().find(|r| r[name_field] == name)
    }
}

impl Preflight {
    pub fn new(envoy: PathBuf, timeout: Duration) -> Self {
        Self { envoy, timeout, permits: Semaphore::new(1) }
    }

    /// Passes when Envoy accepts every listener and cluster of `stored`.
    pub async fn check(&self, stored: &StoredBundle) -> Result<(), PreflightError> {
        let lists = Lists::of(stored)?;
        let (listeners, clusters) = (lists.list("listeners").len(), lists.list("clusters").len());
        let everything = (0..listeners).collect::<Vec<_>>();
        let Some(message) = self.refusal(&lists, &everything, &(0..clusters).collect::<Vec<_>>()).await? else { return Ok(()) };
        let path = match mentioned(&lists, &message) {
            Some(path) => Some(path),
            None => self.culprit(&lists, listeners, clusters).await?,
        };
        let message = format!("Envoy refused the bundle (--envoy-validate): {message}");
        Err(match path {
            Some(path) => BundleError::at(path, message),
            None => BundleError::new(message),
        }
        .into())
    }

    /// Halves the clusters (with no listener), then, when the clusters
    /// pass alone, the listeners (with every cluster, which their routes
    /// name), down to the one Envoy refuses.
    async fn culprit(&self, lists: &Lists, listeners: usize, clusters: usize) -> Result<Option<String>, PreflightError> {
        let all_clusters: Vec<usize> = (0..clusters).collect();
        if self.refusal(lists, &[], &all_clusters).await?.is_some() {
            let found = self.halve(clusters, |some| async move { self.refusal(lists, &[], &some).await }).await?;
            return Ok(found.map(|i| format!("clusters[{i}]")));
        }
        let all_clusters = &all_clusters;
        let found = self.halve(listeners, |some| async move { self.refusal(lists, &some, all_clusters).await }).await?;
        Ok(found.map(|i| format!("listeners[{i}]")))
    }

    /// The one index of `0..count` that `refused` still refuses alone, if any.
    async fn halve<F, Fut>(&self, count: usize, refused: F) -> Result<Option<usize>, PreflightError>
    where
        F: Fn(Vec<usize>) -> Fut,
        Fut: std::future::Future<Output = Result<Option<String>, PreflightError>>,
    {
        let mut candidates: Vec<usize> = (0..count).collect();
        while candidates.len() > 1 {
            let (first, second) = candidates.split_at(candidates.len() / 2);
            candidates = if refused(first.to_vec()).await?.is_some() { first.to_vec() } else { second.to_vec() };
        }
        match candidates.first() {
            Some(&i) if refused(vec![i]).await?.is_some() => Ok(Some(i)),
            _ => Ok(None),
        }
    }

    /// Envoy's complaint about the bootstrap of these listeners and
    /// clusters (by index), or `None` when it accepts it.
    async fn refusal(&self, lists: &Lists, listeners: &[usize], clusters: &[usize]) -> Result<Option<String>, PreflightError> {
        let bootstrap = render(lists, listeners, clusters);
        let _permit = self.permits.acquire().await.map_err(|_| PreflightError::Unavailable("the pre-flight check is shut down".into()))?;
        let dir = tempfile::tempdir().map_err(|e| PreflightError::Unavailable(format!("cannot make a temporary directory for the Envoy check: {e}")))?;
        let path = dir.path().join("bootstrap.json");
        std::fs::write(&path, bootstrap.to_string()).map_err(|e| PreflightError::Unavailable(format!("cannot write {}: {e}", path.display())))?;
        self.run(&path).await
    }

    async fn run(&self, bootstrap: &Path) -> Result<Option<String>, PreflightError> {
        let mut command = Command::new(&self.envoy);
        command
            .args(["--mode", "validate", "--log-level", "error", "--disable-hot-restart", "-c"])
            .arg(bootstrap)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = command.spawn().map_err(|e| PreflightError::Unavailable(format!("cannot run {} (--envoy-validate): {e}", self.envoy.display())))?;
        let output = match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Ok(output) => output.map_err(|e| PreflightError::Unavailable(format!("the Envoy check failed: {e}")))?,
            Err(_) => return Err(PreflightError::Unavailable(format!("the Envoy check did not finish within {:?}; nothing was stored", self.timeout))),
        };
        if output.status.success() {
            return Ok(None);
        }
        let text = String::from_utf8_lossy(&output.stderr).into_owned() + &String::from_utf8_lossy(&output.stdout);
        Ok(Some(complaint(&text, bootstrap)))
    }
}

/// The reason in Envoy's output: what follows `error initializing
/// configuration '…': `, without the proto dump some messages carry.
fn complaint(output: &str, bootstrap: &Path) -> String {
    let marker = format!("error initializing configuration '{}': ", bootstrap.display());
    let reason = output.split_once(&marker).map_or(output, |(_, reason)| reason);
    let last = reason.lines().rev().map(str::trim).find(|line| !line.is_empty()).unwrap_or("Envoy refused it");
    let first = reason.lines().next().unwrap_or_default().trim();
    let reason = if reason.lines().count() > 1 { last } else { first };
    reason.trim_start_matches(": ").trim().to_owned()
}

/// The first listener or cluster whose name Envoy's message quotes.
fn mentioned(lists: &Lists, message: &str) -> Option<String> {
    for key in ["listeners", "clusters"] {
        for (i, resource) in lists.list(key).iter().enumerate() {
            let name = resource["name"].as_str().unwrap_or_default();
            if !name.is_empty() && (message.contains(&format!("'{name}'")) || message.contains(&format!("\"{name}\""))) {
                return Some(format!("{key}[{i}]"));
            }
        }
    }
    None
}

/// A static bootstrap of the given listeners and clusters (by index) and
/// every secret and runtime layer, made checkable (see the module docs).
fn render(lists: &Lists, listeners: &[usize], clusters: &[usize]) -> Value {
    let pick = |key: &str, indices: &[usize]| -> Vec<Value> { indices.iter().filter_map(|&i| lists.list(key).get(i).cloned()).collect() };
    let mut listeners = pick("listeners", listeners);
    listeners.iter_mut().for_each(|listener| inline(lists, listener));
    let mut clusters = pick("clusters", clusters);
    for cluster in &mut clusters {
        make_static(lists, cluster);
        inline(lists, cluster);
    }
    let layers: Vec<Value> = lists.list("runtimes").iter().map(|r| json!({"name": r["name"], "static_layer": r.get("layer").cloned().unwrap_or(json!({}))})).collect();
    let mut bootstrap = json!({
        "node": {"id": "sxds-envoy-validate", "cluster": "sxds"},
        "static_resources": {"listeners": listeners, "clusters": clusters, "secrets": lists.list("secrets")},
    });
    if !layers.is_empty() {
        bootstrap["layered_runtime"] = json!({"layers": layers});
    }
    bootstrap
}

/// An EDS cluster as a STATIC one holding its endpoints.
fn make_static(lists: &Lists, cluster: &mut Value) {
    if cluster["type"] != "EDS" {
        return;
    }
    let name = cluster["name"].as_str().unwrap_or_default().to_owned();
    let Some(object) = cluster.as_object_mut() else { return };
    let service = object.remove("eds_cluster_config").and_then(|eds| eds["service_name"].as_str().map(str::to_owned)).filter(|s| !s.is_empty()).unwrap_or(name);
    let endpoints = lists.named("endpoints", "cluster_name", &service).cloned().unwrap_or_else(|| json!({"cluster_name": service}));
    object.insert("type".into(), json!("STATIC"));
    object.insert("load_assignment".into(), endpoints);
}

/// Puts inline, anywhere under `value`, what Envoy would fetch: route
/// configurations, filter configs and secrets; drops transport sockets
/// that name files.
fn inline(lists: &Lists, value: &mut Value) {
    match value {
        Value::Object(object) => {
            if object.get("@type").and_then(Value::as_str) == Some(HCM) {
                inline_routes(lists, object);
            }
            if let Some(filters) = object.get_mut("http_filters").and_then(Value::as_array_mut) {
                for filter in filters.iter_mut().filter_map(Value::as_object_mut) {
                    if filter.remove("config_discovery").is_some() {
                        let name = filter.get("name").and_then(Value::as_str).unwrap_or_default();
                        let config = lists.named("extension_configs", "name", name).and_then(|c| c.get("typed_config")).cloned();
                        filter.insert("typed_config".into(), config.unwrap_or(Value::Null));
                    }
                }
            }
            // An `SdsSecretConfig` without `sds_config` names a static secret.
            if object.contains_key("name") && object.contains_key("sds_config") && !object.contains_key("@type") {
                object.remove("sds_config");
            }
            if object.get("transport_socket").is_some_and(|socket| socket.to_string().contains("\"filename\"")) {
                object.remove("transport_socket");
            }
            object.values_mut().for_each(|child| inline(lists, child));
        }
        Value::Array(items) => items.iter_mut().for_each(|child| inline(lists, child)),
        _ => {}
    }
}

/// An HTTP connection manager's RDS or SRDS as an inline route configuration.
fn inline_routes(lists: &Lists, hcm: &mut Map<String, Value>) {
    let name = if let Some(rds) = hcm.remove("rds") {
        rds["route_config_name"].as_str().map(str::to_owned)
    } else if hcm.remove("scoped_routes").is_some() {
        lists.list("scoped_routes").first().and_then(|scope| scope["route_configuration_name"].as_str()).map(str::to_owned)
    } else {
        return;
    };
    let name = name.unwrap_or_default();
    let mut route = lists.named("routes", "name", &name).cloned().unwrap_or_else(|| json!({"name": name}));
    if let Some(route) = route.as_object_mut() {
        // VHDS: the on-demand virtual hosts of this configuration, inline.
        if route.remove("vhds").is_some() {
            let prefix = format!("{name}/");
            let hosts = lists.list("virtual_hosts").iter().filter(|v| v["name"].as_str().is_some_and(|n| n.starts_with(&prefix)));
            let hosts: Vec<Value> = hosts.cloned().collect();
            let listed = route.entry("virtual_hosts").or_insert_with(|| json!([]));
            if let Some(listed) = listed.as_array_mut() {
                listed.extend(hosts);
            }
        }
    }
    hcm.insert("route_config".into(), route);
}
