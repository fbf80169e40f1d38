//! Prometheus metrics, served at `GET /metrics` on the REST port.
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `sxds_streams` | node_type, service | connected discovery streams |
//! | `sxds_responses_total` | node_type, type | discovery responses sent |
//! | `sxds_acks_total`, `sxds_nacks_total` | node_type, type | what Envoys answered |
//! | `sxds_push_to_ack_seconds` | type | from sending a version to its ACK |
//! | `sxds_writes_total` | action, code | PUT, DELETE and rollback answers |
//! | `sxds_rest_requests_total` | type, code | REST xDS polls, by answer (200, 304, 4xx, 503) |
//! | `sxds_store_commit_seconds` | | a write's store transaction, fsync included |
//! | `sxds_snapshot_build_seconds` | | encoding a new bundle for the streams |
//! | `sxds_cloud_map_requests_total` | operation, outcome | Cloud Map API calls (`ok`, `throttled`, `error`) |
//! | `sxds_endpoint_sources_failing` | | Cloud Map queries whose last poll failed (their last endpoints are served) |
//! | `sxds_tls_not_after_seconds` | file | when the certificate served (`certificate`), or the first of the client CAs (`client_ca`), expires |
//! | `sxds_tls_reload_failing` | file | 1 while a changed TLS file does not load (the last good one is used) |
//!
//! Node ids come from clients, so node type labels are capped: past
//! [`MAX_NODE_TYPES`] distinct node types, the rest count under `(other)`,
//! a label no node type can have.
//! A stream takes its counters once, when it opens; a send or an ACK is
//! then an atomic add, with no label lookup and no shared lock.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};

use crate::{
    node_type::NodeType,
    resource_type::{PerType, ResourceType},
};

/// Distinct node types with labels of their own.
pub const MAX_NODE_TYPES: usize = 1000;
const OTHER: &str = "(other)";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamLabels {
    node_type: String,
    service: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabels {
    node_type: String,
    r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AckLabels {
    r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RestLabels {
    r#type: &'static str,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CloudMapLabels {
    operation: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TlsLabels {
    file: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WriteLabels {
    action: &'static str,
    code: u16,
}

/// Every metric sxds keeps. Cheap to clone.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

struct Inner {
    registry: Registry,
    streams: Family<StreamLabels, Gauge>,
    responses: Family<TypeLabels, Counter>,
    acks: Family<TypeLabels, Counter>,
    nacks: Family<TypeLabels, Counter>,
    push_to_ack: Family<AckLabels, Histogram, fn() -> Histogram>,
    writes: Family<WriteLabels, Counter>,
    rest_requests: Family<RestLabels, Counter>,
    store_commit: Histogram,
    snapshot_build: Histogram,
    cloud_map_requests: Family<CloudMapLabels, Counter>,
    sources_failing: Gauge,
    tls_not_after: Family<TlsLabels, Gauge>,
    tls_reload_failing: Family<TlsLabels, Gauge>,
    // Taken when a stream opens; a std Mutex, never held across an await.
    node_types: Mutex<HashMap<NodeType, Arc<NodeTypeMetrics>>>,
    /// Shared by the node types past the cap.
    other: OnceLock<Arc<NodeTypeMetrics>>,
}

/// 1 ms to about 33 s, doubling.
fn latency_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("sxds");
        let streams = Family::default();
        registry.register("streams", "Connected discovery streams", streams.clone());
        let responses = Family::default();
        registry.register("responses", "Discovery responses sent", responses.clone());
        let acks = Family::default();
        registry.register("acks", "Responses an Envoy accepted", acks.clone());
        let nacks = Family::default();
        registry.register("nacks", "Responses an Envoy rejected", nacks.clone());
        let push_to_ack = Family::<AckLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency_buckets);
        registry.register("push_to_ack_seconds", "From sending a version to an Envoy to its ACK", push_to_ack.clone());
        let writes = Family::default();
        registry.register("writes", "Answers to PUT, DELETE and rollback, by HTTP status", writes.clone());
        let rest_requests = Family::default();
        registry.register("rest_requests", "REST xDS polls, by type and HTTP status", rest_requests.clone());
        let store_commit = latency_buckets();
        registry.register("store_commit_seconds", "A write's store transaction, fsync included", store_commit.clone());
        let snapshot_build = latency_buckets();
        registry.register("snapshot_build_seconds", "Encoding a changed bundle into what streams send", snapshot_build.clone());
        let cloud_map_requests = Family::default();
        registry.register("cloud_map_requests", "AWS Cloud Map API calls, by operation and outcome", cloud_map_requests.clone());
        let sources_failing = Gauge::default();
        registry.register("endpoint_sources_failing", "Cloud Map queries whose last poll failed; their last endpoints stay served", sources_failing.clone());
        let tls_not_after = Family::default();
        registry.register("tls_not_after_seconds", "Unix time the TLS certificate served, or the first of the client CAs, expires", tls_not_after.clone());
        let tls_reload_failing = Family::default();
        registry.register("tls_reload_failing", "1 while a changed TLS file does not load; the last good one is used", tls_reload_failing.clone());
        Self(Arc::new(Inner {
            registry,
            cloud_map_requests,
            sources_failing,
            tls_not_after,
            tls_reload_failing,
            streams,
            responses,
            acks,
            nacks,
            push_to_ack,
            writes,
            rest_requests,
            store_commit,
            snapshot_build,
            node_types: Mutex::default(),
            other: OnceLock::new(),
        }))
    }
}

impl Metrics {
    /// The counters of a stream of `node_type`; it holds them while open.
    pub fn stream(&self, node_type: &NodeType, service: &'static str) -> StreamMetrics {
        let per_type = {
            let mut map = self.0.node_types.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(known) = map.get(node_type) {
                known.clone()
            } else if map.len() < MAX_NODE_TYPES {
                map.entry(node_type.clone()).or_insert_with(|| Arc::new(self.node_type_metrics(node_type.as_str()))).clone()
            } else {
                self.0.other.get_or_init(|| Arc::new(self.node_type_metrics(OTHER))).clone()
            }
        };
        let streams = self.0.streams.get_or_create_owned(&StreamLabels { node_type: per_type.label.clone(), service });
        streams.inc();
        StreamMetrics { per_type, streams }
    }

    fn node_type_metrics(&self, label: &str) -> NodeTypeMetrics {
        let labels = |ty: ResourceType| TypeLabels { node_type: label.to_owned(), r#type: ty.name() };
        let each = |family: &Family<TypeLabels, Counter>| PerType::from_fn(|ty| family.get_or_create_owned(&labels(ty)));
        NodeTypeMetrics {
            label: label.to_owned(),
            responses: each(&self.0.responses),
            acks: each(&self.0.acks),
            nacks: each(&self.0.nacks),
            push_to_ack: PerType::from_fn(|ty| self.0.push_to_ack.get_or_create_owned(&AckLabels { r#type: ty.name() })),
        }
    }

    /// A write answered with `code`.
    pub fn write(&self, action: &'static str, code: u16) {
        self.0.writes.get_or_create(&WriteLabels { action, code }).inc();
    }

    /// A REST xDS poll of `ty` answered with `code`.
    pub fn rest_request(&self, ty: ResourceType, code: u16) {
        self.0.rest_requests.get_or_create(&RestLabels { r#type: ty.name(), code }).inc();
    }

    pub fn store_commit(&self, took: Duration) {
        self.0.store_commit.observe(took.as_secs_f64());
    }

    pub fn snapshot_build(&self, took: Duration) {
        self.0.snapshot_build.observe(took.as_secs_f64());
    }

    /// A Cloud Map call (`DiscoverInstancesRevision`, `DiscoverInstances`)
    /// ended with `outcome`: `ok`, `throttled` or `error`.
    pub fn cloud_map_request(&self, operation: &'static str, outcome: &'static str) {
        self.0.cloud_map_requests.get_or_create(&CloudMapLabels { operation, outcome }).inc();
    }

    /// How many Cloud Map queries are failing now.
    pub fn sources_failing(&self, failing: usize) {
        self.0.sources_failing.set(i64::try_from(failing).unwrap_or(i64::MAX));
    }

    /// A TLS `file` (`certificate`, `client_ca`) loaded: in use now, and
    /// valid until `not_after` (Unix seconds; `None` when it does not parse).
    pub fn tls_loaded(&self, file: &'static str, not_after: Option<i64>) {
        if let Some(not_after) = not_after {
            self.0.tls_not_after.get_or_create(&TlsLabels { file }).set(not_after);
        }
        self.0.tls_reload_failing.get_or_create(&TlsLabels { file }).set(0);
    }

    /// A changed TLS `file` did not load; the last good one stays in use.
    pub fn tls_reload_failed(&self, file: &'static str) {
        self.0.tls_reload_failing.get_or_create(&TlsLabels { file }).set(1);
    }

    /// The text exposition format (OpenMetrics).
    pub fn render(&self) -> String {
        let mut text = String::new();
        if let Err(error) = encode(&mut text, &self.0.registry) {
            tracing::error!(%error, "cannot encode metrics");
        }
        text
    }
}

/// The counters of one node type, shared by its streams.
struct NodeTypeMetrics {
    label: String,
    responses: PerType<Counter>,
    acks: PerType<Counter>,
    nacks: PerType<Counter>,
    push_to_ack: PerType<Histogram>,
}

/// What one stream counts into; leaving the connected-streams gauge on drop.
pub struct StreamMetrics {
    per_type: Arc<NodeTypeMetrics>,
    streams: Gauge,
}

impl StreamMetrics {
    pub fn sent(&self, ty: ResourceType) {
        self.per_type.responses[ty].inc();
    }

    /// An ACK; `push_to_ack` when it answers the version last sent.
    pub fn acked(&self, ty: ResourceType, push_to_ack: Option<Duration>) {
        self.per_type.acks[ty].inc();
        if let Some(took) = push_to_ack {
            self.per_type.push_to_ack[ty].observe(took.as_secs_f64());
        }
    }

    pub fn rejected(&self, ty: ResourceType) {
        self.per_type.nacks[ty].inc();
    }
}

impl Drop for StreamMetrics {
    fn drop(&mut self) {
        self.streams.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
        text.lines().find_map(|line| line.strip_prefix(&format!("{name}{{{labels}}} "))?.split(' ').next()?.parse().ok())
    }

    #[test]
    fn streams_count_into_their_node_type_and_leave_the_gauge_on_close() {
        let metrics = Metrics::default();
        let sidecar = NodeType::parse("sidecar").unwrap();
        let first = metrics.stream(&sidecar, "ads");
        let second = metrics.stream(&sidecar, "ads");
        first.sent(ResourceType::Cluster);
        second.sent(ResourceType::Cluster);
        first.acked(ResourceType::Cluster, Some(Duration::from_millis(3)));
        second.rejected(ResourceType::Cluster);
        drop(second);
        let text = metrics.render();
        assert_eq!(sample(&text, "sxds_streams", "node_type=\"sidecar\",service=\"ads\""), Some(1.0), "{text}");
        assert_eq!(sample(&text, "sxds_responses_total", "node_type=\"sidecar\",type=\"clusters\""), Some(2.0), "{text}");
        assert_eq!(sample(&text, "sxds_acks_total", "node_type=\"sidecar\",type=\"clusters\""), Some(1.0));
        assert_eq!(sample(&text, "sxds_nacks_total", "node_type=\"sidecar\",type=\"clusters\""), Some(1.0));
        assert_eq!(sample(&text, "sxds_push_to_ack_seconds_count", "type=\"clusters\""), Some(1.0), "{text}");
    }

    #[test]
    fn node_type_labels_are_capped() {
        let metrics = Metrics::default();
        let streams: Vec<StreamMetrics> =
            (0..MAX_NODE_TYPES + 5).map(|i| metrics.stream(&NodeType::parse(&format!("t{i}")).unwrap(), "ads")).collect();
        let text = metrics.render();
        assert_eq!(sample(&text, "sxds_streams", "node_type=\"(other)\",service=\"ads\""), Some(5.0));
        assert_eq!(text.lines().filter(|l| l.starts_with("sxds_streams{")).count(), MAX_NODE_TYPES + 1);
        drop(streams);
    }
}
