//! Checks that need the whole bundle: every resource is named, names are
//! unique within a type, and every reference resolves inside the bundle
//! (listener → route, route → cluster, EDS cluster → endpoints). Envoy would
//! otherwise accept the config and leave listeners or clusters warming.

use std::collections::HashMap;

use envoy_types::pb::envoy::{
    config::{
        cluster::v3::{cluster::ClusterDiscoveryType, cluster::DiscoveryType, Cluster},
        listener::v3::{filter::ConfigType, Filter, FilterChain, Listener},
        route::v3::{route::Action, route_action::ClusterSpecifier, RouteConfiguration},
    },
    extensions::filters::network::{
        http_connection_manager::v3::{http_connection_manager::RouteSpecifier, HttpConnectionManager},
        tcp_proxy::v3::{tcp_proxy, TcpProxy},
    },
};
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

use super::BundleError;
use crate::schema::Bundle;

/// Validates the cross-resource rules of a parsed bundle.
pub fn validate(bundle: &Bundle) -> Result<(), BundleError> {
    index("listeners", "name", bundle.listeners.iter().map(|l| l.name.as_str()))?;
    let clusters = index("clusters", "name", bundle.clusters.iter().map(|c| c.name.as_str()))?;
    let routes = index("routes", "name", bundle.routes.iter().map(|r| r.name.as_str()))?;
    let endpoints = index("endpoints", "cluster_name", bundle.endpoints.iter().map(|e| e.cluster_name.as_str()))?;
    let refs = References { clusters: &clusters, routes: &routes };

    for (i, listener) in bundle.listeners.iter().enumerate() {
        refs.check_listener(&format!("listeners[{i}]"), listener)?;
    }
    for (i, route) in bundle.routes.iter().enumerate() {
        refs.check_route_configuration(&format!("routes[{i}]"), route)?;
    }
    for (i, cluster) in bundle.clusters.iter().enumerate() {
        if let Some(service) = eds_service_name(cluster) {
            if !endpoints.contains_key(service) {
                // Point at the field that names the missing entry.
                let named_by = match &cluster.eds_cluster_config {
                    Some(eds) if !eds.service_name.is_empty() => "eds_cluster_config.service_name",
                    _ => "name",
                };
                return Err(BundleError::at(
                    format!("clusters[{i}].{named_by}"),
                    format!("EDS cluster {:?} has no endpoints entry with cluster_name {service:?}", cluster.name),
                ));
            }
        }
    }
    Ok(())
}

/// Maps each name to its position, refusing empty and duplicate names.
fn index<'a>(
    kind: &str,
    field: &str,
    names: impl Iterator<Item = &'a str>,
) -> Result<HashMap<&'a str, usize>, BundleError> {
    let mut seen = HashMap::new();
    for (i, name) in names.enumerate() {
        let path = format!("{kind}[{i}].{field}");
        if name.is_empty() {
            return Err(BundleError::at(path, format!("{field} is required")));
        }
        if let Some(first) = seen.insert(name, i) {
            return Err(BundleError::at(path, format!("duplicate name {name:?}: {kind}[{first}] has it too")));
        }
    }
    Ok(seen)
}

/// The ClusterLoadAssignment name an EDS cluster asks for, if it is one.
pub(crate) fn eds_service_name(cluster: &Cluster) -> Option<&str> {
    let is_eds = matches!(cluster.cluster_discovery_type, Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::Eds as i32);
    if !is_eds {
        return None;
    }
    match &cluster.eds_cluster_config {
        Some(eds) if !eds.service_name.is_empty() => Some(&eds.service_name),
        _ => Some(&cluster.name),
    }
}

struct References<'a> {
    clusters: &'a HashMap<&'a str, usize>,
    routes: &'a HashMap<&'a str, usize>,
}

impl References<'_> {
    fn check_listener(&self, path: &str, listener: &Listener) -> Result<(), BundleError> {
        let chains = listener.filter_chains.iter().enumerate().map(|(i, c)| (format!("{path}.filter_chains[{i}]"), c));
        let default_chain = listener.default_filter_chain.iter().map(|c| (format!("{path}.default_filter_chain"), c));
        for (chain_path, chain) in chains.chain(default_chain) {
            self.check_filter_chain(&chain_path, chain)?;
        }
        Ok(())
    }

    fn check_filter_chain(&self, path: &str, chain: &FilterChain) -> Result<(), BundleError> {
        for (i, filter) in chain.filters.iter().enumerate() {
            let filter_path = format!("{path}.filters[{i}].typed_config");
            if let Some(any) = typed_config(filter) {
                if let Some(hcm) = decode_as::<HttpConnectionManager>(any, &filter_path)? {
                    self.check_http_connection_manager(&filter_path, &hcm)?;
                } else if let Some(tcp) = decode_as::<TcpProxy>(any, &filter_path)? {
                    self.check_tcp_proxy(&filter_path, &tcp)?;
                }
            }
        }
        Ok(())
    }

    fn check_http_connection_manager(&self, path: &str, hcm: &HttpConnectionManager) -> Result<(), BundleError> {
        match &hcm.route_specifier {
            Some(RouteSpecifier::Rds(rds)) if !self.routes.contains_key(rds.route_config_name.as_str()) => Err(BundleError::at(
                format!("{path}.rds.route_config_name"),
                format!("route configuration {:?} is not in the bundle's routes", rds.route_config_name),
            )),
            Some(RouteSpecifier::RouteConfig(inline)) => self.check_route_configuration(&format!("{path}.route_config"), inline),
            _ => Ok(()),
        }
    }

    fn check_tcp_proxy(&self, path: &str, tcp: &TcpProxy) -> Result<(), BundleError> {
        match &tcp.cluster_specifier {
            Some(tcp_proxy::ClusterSpecifier::Cluster(name)) => self.check_cluster(&format!("{path}.cluster"), name),
            Some(tcp_proxy::ClusterSpecifier::WeightedClusters(weighted)) => {
                for (i, cluster) in weighted.clusters.iter().enumerate() {
                    self.check_cluster(&format!("{path}.weighted_clusters.clusters[{i}].name"), &cluster.name)?;
                }
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn check_route_configuration(&self, path: &str, config: &RouteConfiguration) -> Result<(), BundleError> {
        for (v, host) in config.virtual_hosts.iter().enumerate() {
            for (r, route) in host.routes.iter().enumerate() {
                let Some(Action::Route(action)) = &route.action else { continue };
                let route_path = format!("{path}.virtual_hosts[{v}].routes[{r}].route");
                match &action.cluster_specifier {
                    Some(ClusterSpecifier::Cluster(name)) => self.check_cluster(&format!("{route_path}.cluster"), name)?,
                    Some(ClusterSpecifier::WeightedClusters(weighted)) => {
                        for (i, cluster) in weighted.clusters.iter().enumerate() {
                            self.check_cluster(&format!("{route_path}.weighted_clusters.clusters[{i}].name"), &cluster.name)?;
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    fn check_cluster(&self, path: &str, name: &str) -> Result<(), BundleError> {
        if self.clusters.contains_key(name) {
            Ok(())
        } else {
            Err(BundleError::at(path, format!("cluster {name:?} is not in the bundle's clusters")))
        }
    }
}

fn typed_config(filter: &Filter) -> Option<&Any> {
    match &filter.config_type {
        Some(ConfigType::TypedConfig(any)) => Some(any),
        _ => None,
    }
}

/// Decodes `any` as `M` when its type URL names `M`.
fn decode_as<M: Message + Name + Default>(any: &Any, path: &str) -> Result<Option<M>, BundleError> {
    // The part of a type URL before the last '/' is arbitrary; the name decides.
    if any.type_url.rsplit('/').next() != Some(M::full_name().as_str()) {
        return Ok(None);
    }
    M::decode(any.value.as_slice())
        .map(Some)
        .map_err(|e| BundleError::at(path, format!("{} does not decode: {e}", M::full_name())))
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::bundle::{parse, Format};

    const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
    const TCP_PROXY: &str = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";

    fn check(body: Value) -> Result<(), BundleError> {
        let parsed = parse(body.to_string().as_bytes(), Format::Json).expect("parses");
        validate(&parsed.bundle)
    }

    fn path(body: Value) -> String {
        check(body).expect_err("refused").path.expect("has a path")
    }

    fn listener(typed_config: Value) -> Value {
        json!({"name": "l", "filter_chains": [{"filters": [{"name": "f", "typed_config": typed_config}]}]})
    }

    fn route_to(cluster: Value) -> Value {
        json!({"name": "r", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": cluster}]}]})
    }

    #[test]
    fn names_are_required_and_unique_per_type() {
        assert_eq!(path(json!({"clusters": [{"name": "a"}, {"connect_timeout": "1s"}]})), "clusters[1].name");
        assert_eq!(path(json!({"endpoints": [{}]})), "endpoints[0].cluster_name");
        let e = check(json!({"clusters": [{"name": "a"}, {"name": "b"}, {"name": "a"}]})).unwrap_err();
        assert_eq!(e.path.as_deref(), Some("clusters[2].name"));
        assert!(e.message.contains("clusters[0]"), "{e:?}");
        // The same name in two types is fine: they are different namespaces.
        check(json!({"clusters": [{"name": "x"}], "routes": [{"name": "x"}]})).unwrap();
    }

    #[test]
    fn route_references_resolve_to_clusters() {
        let body = json!({"routes": [route_to(json!({"cluster": "missing"}))]});
        assert_eq!(path(body), "routes[0].virtual_hosts[0].routes[0].route.cluster");
        let weighted = json!({"weighted_clusters": {"clusters": [{"name": "a", "weight": 1}, {"name": "b", "weight": 1}]}});
        let body = json!({"clusters": [{"name": "a"}], "routes": [route_to(weighted.clone())]});
        assert_eq!(path(body), "routes[0].virtual_hosts[0].routes[0].route.weighted_clusters.clusters[1].name");
        check(json!({"clusters": [{"name": "a"}, {"name": "b"}], "routes": [route_to(weighted)]})).unwrap();
    }

    #[test]
    fn listener_references_resolve_inside_the_bundle() {
        let prefix = "listeners[0].filter_chains[0].filters[0].typed_config";
        let rds = json!({"@type": HCM, "stat_prefix": "s", "rds": {"route_config_name": "nope", "config_source": {"ads": {}}}});
        assert_eq!(path(json!({"listeners": [listener(rds)]})), format!("{prefix}.rds.route_config_name"));

        let inline = json!({"@type": HCM, "stat_prefix": "s", "route_config": route_to(json!({"cluster": "nope"}))});
        assert_eq!(
            path(json!({"listeners": [listener(inline)]})),
            format!("{prefix}.route_config.virtual_hosts[0].routes[0].route.cluster")
        );

        let tcp = json!({"@type": TCP_PROXY, "stat_prefix": "s", "cluster": "nope"});
        assert_eq!(path(json!({"listeners": [listener(tcp.clone())]})), format!("{prefix}.cluster"));
        check(json!({"listeners": [listener(tcp)], "clusters": [{"name": "nope"}]})).unwrap();

        let mut default_chain = listener(json!({"@type": TCP_PROXY, "stat_prefix": "s", "cluster": "nope"}));
        default_chain["default_filter_chain"] = default_chain["filter_chains"][0].take();
        default_chain.as_object_mut().unwrap().remove("filter_chains");
        assert_eq!(path(json!({"listeners": [default_chain]})), "listeners[0].default_filter_chain.filters[0].typed_config.cluster");
    }

    #[test]
    fn eds_clusters_need_their_endpoints() {
        let eds = json!({"name": "a", "type": "EDS", "eds_cluster_config": {"eds_config": {"ads": {}}}});
        assert_eq!(path(json!({"clusters": [eds.clone()]})), "clusters[0].name");
        check(json!({"clusters": [eds], "endpoints": [{"cluster_name": "a"}]})).unwrap();

        let named = json!({"name": "a", "type": "EDS", "eds_cluster_config": {"service_name": "svc", "eds_config": {"ads": {}}}});
        let e = check(json!({"clusters": [named.clone()], "endpoints": [{"cluster_name": "a"}]})).unwrap_err();
        assert_eq!(e.path.as_deref(), Some("clusters[0].eds_cluster_config.service_name"));
        check(json!({"clusters": [named], "endpoints": [{"cluster_name": "svc"}]})).unwrap();

        // Static clusters carry their own endpoints.
        check(json!({"clusters": [{"name": "s", "type": "STATIC"}]})).unwrap();
    }
}
