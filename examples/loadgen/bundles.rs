//! The bundles the load generator PUTs: a service mesh slice of EDS
//! clusters behind one listener and one route, whose endpoint sets can be
//! changed one at a time (or all clusters and the listener at once), or
//! come from AWS Cloud Map.

use serde_json::{json, Value};

/// `clusters` EDS clusters `cluster_NNNNN`, each with a ClusterLoadAssignment
/// of `endpoints_per_cluster` endpoints, one listener `listener_0` whose
/// route configuration `route_0` routes `/svc_NNNNN` to the first
/// `routed` clusters.
#[derive(Debug, Clone)]
pub struct Mesh {
    pub clusters: usize,
    pub endpoints_per_cluster: usize,
    pub routed: usize,
    /// Per cluster: bumped to change that cluster's endpoint set.
    pub generation: Vec<u32>,
    /// Bumped to change every cluster (its connect timeout) and the
    /// listener (its stat prefix) at once: a full push.
    pub revision: u32,
}

impl Mesh {
    pub fn new(clusters: usize, endpoints_per_cluster: usize, routed: usize) -> Self {
        Self { clusters, endpoints_per_cluster, routed: routed.min(clusters), generation: vec![0; clusters], revision: 0 }
    }

    /// Changes the endpoint set of one cluster (its ports move).
    pub fn change_endpoints(&mut self, cluster: usize) {
        let i = cluster % self.clusters;
        self.generation[i] += 1;
    }

    /// Changes every cluster and the listener, not the endpoints or the route.
    pub fn change_everything(&mut self) {
        self.revision += 1;
    }

    pub fn bundle(&self, version: &str) -> Value {
        let eds = json!({"ads": {}, "resource_api_version": "V3"});
        let connect_timeout = format!("{}s", 1 + self.revision);
        let stat_prefix = match self.revision {
            0 => "ingress_http".to_owned(),
            r => format!("ingress_http_{r}"),
        };
        let clusters: Vec<Value> = (0..self.clusters)
            .map(|i| json!({"name": cluster_name(i), "type": "EDS", "connect_timeout": connect_timeout, "eds_cluster_config": {"eds_config": eds}}))
            .collect();
        let endpoints: Vec<Value> = (0..self.clusters)
            .map(|i| {
                let port = 8000 + self.generation[i] % 50_000;
                let lb_endpoints: Vec<Value> = (0..self.endpoints_per_cluster)
                    .map(|e| {
                        let address = format!("10.{}.{}.{}", (i >> 8) & 0xff, i & 0xff, e + 1);
                        json!({"endpoint": {"address": {"socket_address": {"address": address, "port_value": port}}}, "load_balancing_weight": 1})
                    })
                    .collect();
                json!({"cluster_name": cluster_name(i), "endpoints": [{"lb_endpoints": lb_endpoints}]})
            })
            .collect();
        let routes: Vec<Value> = (0..self.routed)
            .map(|i| json!({"match": {"prefix": format!("/svc_{i:05}")}, "route": {"cluster": cluster_name(i)}}))
            .collect();
        json!({
            "version": version,
            "clusters": clusters,
            "endpoints": endpoints,
            "listeners": [{
                "name": "listener_0",
                "address": {"socket_address": {"address": "0.0.0.0", "port_value": 10000}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": stat_prefix,
                        "rds": {"route_config_name": "route_0", "config_source": {"ads": {}, "resource_api_version": "V3"}},
                        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
                    }
                }]}]
            }],
            "routes": [{
                "name": "route_0",
                "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]
            }]
        })
    }

    /// The same mesh with the endpoints of cluster `i` found in Cloud Map
    /// service `service(i)` of `namespace` (ports from `AWS_INSTANCE_PORT`)
    /// instead of listed in the bundle.
    pub fn cloud_map_bundle(&self, version: &str, namespace: &str, service: impl Fn(usize) -> String) -> Value {
        let mut bundle = self.bundle(version);
        if let Some(fields) = bundle.as_object_mut() {
            fields.remove("endpoints");
            let sources: Vec<Value> = (0..self.clusters)
                .map(|i| json!({"cluster_name": cluster_name(i), "cloud_map": {"namespace": namespace, "service": service(i), "port_attribute": "AWS_INSTANCE_PORT"}}))
                .collect();
            fields.insert("endpoint_sources".into(), sources.into());
        }
        bundle
    }
}

pub fn cluster_name(i: usize) -> String {
    format!("cluster_{i:05}")
}
