//! Checks that need the whole bundle: every resource is named, names are
//! unique within a type, and every reference resolves inside the bundle
//! (listener → route, route → cluster, EDS cluster → endpoints). Envoy would
//! otherwise accept the config and leave listeners or clusters warming.
//!
//! Each resource is decoded once, on the parser's core, into the [`Facts`]
//! the checks need; the decoded message is dropped at once, so no bundle is
//! ever held decoded whole.

use std::collections::HashMap;

use envoy_types::pb::envoy::{
    config::{
        cluster::v3::{cluster::ClusterDiscoveryType, cluster::DiscoveryType, Cluster},
        core::v3::{transport_socket, TransportSocket, TypedExtensionConfig},
        endpoint::v3::ClusterLoadAssignment,
        listener::v3::{filter::ConfigType, Filter, FilterChain, Listener},
        route::v3::{route::Action, route_action::ClusterSpecifier, RouteConfiguration, ScopedRouteConfiguration, VirtualHost},
    },
    extensions::{
        filters::network::{
            http_connection_manager::v3::{http_connection_manager::RouteSpecifier, http_filter, HttpConnectionManager},
            tcp_proxy::v3::{tcp_proxy, TcpProxy},
        },
        transport_sockets::tls::v3::{
            common_tls_context::ValidationContextType, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, Secret, UpstreamTlsContext,
        },
    },
    service::runtime::v3::Runtime,
};
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

use super::BundleError;
use crate::{
    resource_type::{PerType, ResourceType},
    schema::{cloud_map_source::PortFrom, EndpointSource, StoredBundle},
};

/// What one resource says about the others: each name it refers to, with
/// the path of the field that names it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Facts {
    references: Vec<Reference>,
    /// For an endpoint source: the path of its `cluster_name`.
    endpoint_source: Option<String>,
}

/// A name one resource refers to, which the bundle must have.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reference {
    /// The type of the resource named.
    ty: ResourceType,
    /// The path of the field that names it.
    path: String,
    name: String,
}

/// Decodes resource `index` of type `ty` and notes what it refers to.
pub fn facts(ty: ResourceType, index: usize, value: &[u8]) -> Result<Facts, BundleError> {
    let path = format!("{}[{index}]", ty.name());
    let mut facts = Facts::default();
    match ty {
        ResourceType::Listener => facts.listener(&path, &decode(&path, value)?)?,
        ResourceType::Route => facts.route_configuration(&path, &decode(&path, value)?),
        ResourceType::Cluster => facts.cluster(&path, &decode(&path, value)?)?,
        ResourceType::ScopedRoute => facts.scoped_route(&path, &decode(&path, value)?),
        ResourceType::VirtualHost => facts.vhds_virtual_host(&path, &decode(&path, value)?)?,
        // Nothing to note, but they must decode like the others.
        ResourceType::Endpoint => drop(decode::<ClusterLoadAssignment>(&path, value)?),
        ResourceType::Secret => drop(decode::<Secret>(&path, value)?),
        ResourceType::Runtime => drop(decode::<Runtime>(&path, value)?),
        ResourceType::ExtensionConfig => drop(decode::<TypedExtensionConfig>(&path, value)?),
    }
    Ok(facts)
}

/// The names of resources of type `ty` that `value`, a resource of type
/// `parent`, refers to; `None` if it does not decode.
pub fn referenced(parent: ResourceType, value: &[u8], ty: ResourceType) -> Option<Vec<String>> {
    let facts = facts(parent, 0, value).ok()?;
    Some(facts.references.into_iter().filter(|r| r.ty == ty).map(|r| r.name).collect())
}

/// Decodes endpoint source `index` and checks what needs no other
/// resource: a cluster name, a namespace, a service and a port.
pub fn source_facts(index: usize, value: &[u8]) -> Result<Facts, BundleError> {
    let path = format!("endpoint_sources[{index}]");
    let source: EndpointSource = decode(&path, value)?;
    let Some(cloud_map) = &source.cloud_map else {
        return Err(BundleError::at(format!("{path}.cloud_map"), "cloud_map is required: the Cloud Map service the endpoints come from"));
    };
    let at = |field: &str| format!("{path}.cloud_map.{field}");
    for (field, value) in [("namespace", &cloud_map.namespace), ("service", &cloud_map.service)] {
        if value.is_empty() {
            return Err(BundleError::at(at(field), format!("{field} is required")));
        }
    }
    match &cloud_map.port_from {
        None => return Err(BundleError::at(at("port"), "a port is required: port (one for every instance) or port_attribute (e.g. AWS_INSTANCE_PORT)")),
        Some(PortFrom::Port(port)) if !(1..=65535).contains(port) => {
            return Err(BundleError::at(at("port"), format!("port {port} is not between 1 and 65535")));
        }
        Some(PortFrom::PortAttribute(name)) if name.is_empty() => return Err(BundleError::at(at("port_attribute"), "port_attribute is empty")),
        Some(_) => {}
    }
    Ok(Facts { references: Vec::new(), endpoint_source: Some(format!("{path}.cluster_name")) })
}

fn decode<M: Message + Default>(path: &str, value: &[u8]) -> Result<M, BundleError> {
    M::decode(value).map_err(|e| BundleError::at(path, format!("resource does not decode (nested too deeply?): {e}")))
}

/// Validates the cross-resource rules of a parsed bundle, given the facts
/// of each of its resources, in order.
pub fn validate(bundle: &StoredBundle, facts: &[Facts]) -> Result<(), BundleError> {
    let mut names = PerType::<HashMap<&str, usize>>::default();
    for ty in ResourceType::ALL {
        names[ty] = index(ty, bundle.resources(ty).map(|r| r.name.as_str()))?;
    }
    let sources = endpoint_sources(bundle, facts, &names[ResourceType::Endpoint])?;
    for Reference { ty, path, name } in facts.iter().flat_map(|facts| &facts.references) {
        let provided = *ty == ResourceType::Endpoint && sources.contains_key(name.as_str());
        if !provided && !names[*ty].contains_key(name.as_str()) {
            let message = match ty {
                ResourceType::Endpoint => format!("EDS cluster has no endpoints entry or endpoint source with cluster_name {name:?}"),
                _ => format!("{} {name:?} is not in the bundle's {ty}", ty.info().noun),
            };
            return Err(BundleError::at(path, message));
        }
    }
    Ok(())
}

/// The cluster names served from endpoint sources. Each is unique, is what
/// an EDS cluster of the bundle asks for, and has no `endpoints` entry too.
fn endpoint_sources<'a>(bundle: &'a StoredBundle, facts: &'a [Facts], entries: &HashMap<&str, usize>) -> Result<HashMap<&'a str, usize>, BundleError> {
    let requested: std::collections::HashSet<&str> = facts
        .iter()
        .flat_map(|facts| &facts.references)
        .filter(|reference| reference.ty == ResourceType::Endpoint)
        .map(|reference| reference.name.as_str())
        .collect();
    let stored = bundle.resources.iter().filter(|r| r.field == crate::schema::ENDPOINT_SOURCES_FIELD);
    let paths = facts.iter().filter_map(|facts| facts.endpoint_source.as_deref());
    let mut seen = HashMap::new();
    for (i, (source, path)) in stored.zip(paths).enumerate() {
        let name = source.name.as_str();
        if name.is_empty() {
            return Err(BundleError::at(path, "cluster_name is required: the EDS cluster these endpoints are for"));
        }
        if let Some(first) = seen.insert(name, i) {
            return Err(BundleError::at(path, format!("duplicate cluster_name {name:?}: endpoint_sources[{first}] has it too")));
        }
        if let Some(entry) = entries.get(name) {
            return Err(BundleError::at(
                path,
                format!("cluster {name:?} has both an endpoints entry (endpoints[{entry}]) and an endpoint source; keep one"),
            ));
        }
        if !requested.contains(name) {
            return Err(BundleError::at(path, format!("no EDS cluster in the bundle asks for endpoints named {name:?}")));
        }
    }
    Ok(seen)
}

/// Maps each name to its position, refusing empty and duplicate names.
fn index<'a>(ty: ResourceType, names: impl Iterator<Item = &'a str>) -> Result<HashMap<&'a str, usize>, BundleError> {
    let (kind, field) = (ty.name(), ty.name_field());
    let mut seen = HashMap::new();
    for (i, name) in names.enumerate() {
        let path = || format!("{kind}[{i}].{field}");
        if name.is_empty() {
            return Err(BundleError::at(path(), format!("{field} is required")));
        }
        if let Some(first) = seen.insert(name, i) {
            return Err(BundleError::at(path(), format!("duplicate name {name:?}: {kind}[{first}] has it too")));
        }
    }
    Ok(seen)
}

/// The ClusterLoadAssignment name an EDS cluster asks for, if it is one.
fn eds_service_name(cluster: &Cluster) -> Option<&str> {
    let is_eds = matches!(cluster.cluster_discovery_type, Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::Eds as i32);
    if !is_eds {
        return None;
    }
    match &cluster.eds_cluster_config {
        Some(eds) if !eds.service_name.is_empty() => Some(&eds.service_name),
        _ => Some(&cluster.name),
    }
}

impl Facts {
    fn refer(&mut self, ty: ResourceType, path: String, name: &str) {
        self.references.push(Reference { ty, path, name: name.to_owned() });
    }

    fn cluster(&mut self, path: &str, cluster: &Cluster) -> Result<(), BundleError> {
        if let Some(socket) = &cluster.transport_socket {
            let socket_path = format!("{path}.transport_socket.typed_config");
            if let Some(any) = socket_typed_config(socket) {
                if let Some(tls) = decode_as::<UpstreamTlsContext>(any, &socket_path)? {
                    self.tls_context(&format!("{socket_path}.common_tls_context"), tls.common_tls_context.as_ref());
                }
            }
        }
        if let Some(service) = eds_service_name(cluster) {
            // Point at the field that names the missing entry.
            let named_by = match &cluster.eds_cluster_config {
                Some(eds) if !eds.service_name.is_empty() => "eds_cluster_config.service_name",
                _ => "name",
            };
            self.refer(ResourceType::Endpoint, format!("{path}.{named_by}"), service);
        }
        Ok(())
    }

    /// The secrets a TLS context fetches over SDS from this control plane:
    /// those with an `sds_config` (without one, Envoy's bootstrap has them).
    fn tls_context(&mut self, path: &str, common: Option<&CommonTlsContext>) {
        let Some(common) = common else { return };
        for (i, secret) in common.tls_certificate_sds_secret_configs.iter().enumerate() {
            self.sds_secret(format!("{path}.tls_certificate_sds_secret_configs[{i}]"), secret);
        }
        match &common.validation_context_type {
            Some(ValidationContextType::ValidationContextSdsSecretConfig(secret)) => {
                self.sds_secret(format!("{path}.validation_context_sds_secret_config"), secret);
            }
            Some(ValidationContextType::CombinedValidationContext(combined)) => {
                if let Some(secret) = &combined.validation_context_sds_secret_config {
                    self.sds_secret(format!("{path}.combined_validation_context.validation_context_sds_secret_config"), secret);
                }
            }
            _ => {}
        }
    }

    fn sds_secret(&mut self, path: String, secret: &SdsSecretConfig) {
        if secret.sds_config.is_some() {
            self.refer(ResourceType::Secret, format!("{path}.name"), &secret.name);
        }
    }

    fn scoped_route(&mut self, path: &str, scope: &ScopedRouteConfiguration) {
        if scope.route_configuration.is_none() {
            self.refer(ResourceType::Route, format!("{path}.route_configuration_name"), &scope.route_configuration_name);
        }
    }

    fn listener(&mut self, path: &str, listener: &Listener) -> Result<(), BundleError> {
        let chains = listener.filter_chains.iter().enumerate().map(|(i, c)| (format!("{path}.filter_chains[{i}]"), c));
        let default_chain = listener.default_filter_chain.iter().map(|c| (format!("{path}.default_filter_chain"), c));
        for (chain_path, chain) in chains.chain(default_chain) {
            self.filter_chain(&chain_path, chain)?;
        }
        // A proxyless gRPC client's listener: no filter chains, one HCM.
        if let Some(any) = listener.api_listener.as_ref().and_then(|api| api.api_listener.as_ref()) {
            let api_path = format!("{path}.api_listener.api_listener");
            if let Some(hcm) = decode_as::<HttpConnectionManager>(any, &api_path)? {
                self.http_connection_manager(&api_path, &hcm);
            }
        }
        Ok(())
    }

    fn filter_chain(&mut self, path: &str, chain: &FilterChain) -> Result<(), BundleError> {
        if let Some(socket) = &chain.transport_socket {
            let socket_path = format!("{path}.transport_socket.typed_config");
            if let Some(any) = socket_typed_config(socket) {
                if let Some(tls) = decode_as::<DownstreamTlsContext>(any, &socket_path)? {
                    self.tls_context(&format!("{socket_path}.common_tls_context"), tls.common_tls_context.as_ref());
                }
            }
        }
        for (i, filter) in chain.filters.iter().enumerate() {
            let filter_path = format!("{path}.filters[{i}].typed_config");
            if let Some(any) = typed_config(filter) {
                if let Some(hcm) = decode_as::<HttpConnectionManager>(any, &filter_path)? {
                    self.http_connection_manager(&filter_path, &hcm);
                } else if let Some(tcp) = decode_as::<TcpProxy>(any, &filter_path)? {
                    self.tcp_proxy(&filter_path, &tcp);
                }
            }
        }
        Ok(())
    }

    fn http_connection_manager(&mut self, path: &str, hcm: &HttpConnectionManager) {
        for (i, filter) in hcm.http_filters.iter().enumerate() {
            // A filter whose config comes over ECDS is named by its filter name.
            if let Some(http_filter::ConfigType::ConfigDiscovery(_)) = &filter.config_type {
                self.refer(ResourceType::ExtensionConfig, format!("{path}.http_filters[{i}].config_discovery"), &filter.name);
            }
        }
        match &hcm.route_specifier {
            Some(RouteSpecifier::Rds(rds)) => self.refer(ResourceType::Route, format!("{path}.rds.route_config_name"), &rds.route_config_name),
            Some(RouteSpecifier::RouteConfig(inline)) => self.route_configuration(&format!("{path}.route_config"), inline),
            _ => {}
        }
    }

    fn tcp_proxy(&mut self, path: &str, tcp: &TcpProxy) {
        match &tcp.cluster_specifier {
            Some(tcp_proxy::ClusterSpecifier::Cluster(name)) => self.refer(ResourceType::Cluster, format!("{path}.cluster"), name),
            Some(tcp_proxy::ClusterSpecifier::WeightedClusters(weighted)) => {
                for (i, cluster) in weighted.clusters.iter().enumerate() {
                    self.refer(ResourceType::Cluster, format!("{path}.weighted_clusters.clusters[{i}].name"), &cluster.name);
                }
            }
            None => {}
        }
    }

    fn route_configuration(&mut self, path: &str, config: &RouteConfiguration) {
        for (v, host) in config.virtual_hosts.iter().enumerate() {
            self.virtual_host(&format!("{path}.virtual_hosts[{v}]"), host);
        }
    }

    /// A VHDS virtual host: named `<route configuration>/<name>`, and its
    /// routes' clusters like any virtual host's.
    fn vhds_virtual_host(&mut self, path: &str, host: &VirtualHost) -> Result<(), BundleError> {
        let Some((route_config, _)) = host.name.rsplit_once('/') else {
            return Err(BundleError::at(format!("{path}.name"), "a VHDS virtual host is named <route configuration>/<virtual host>"));
        };
        self.refer(ResourceType::Route, format!("{path}.name"), route_config);
        self.virtual_host(path, host);
        Ok(())
    }

    fn virtual_host(&mut self, path: &str, host: &VirtualHost) {
        {
            for (r, route) in host.routes.iter().enumerate() {
                let Some(Action::Route(action)) = &route.action else { continue };
                let route_path = format!("{path}.routes[{r}].route");
                match &action.cluster_specifier {
                    Some(ClusterSpecifier::Cluster(name)) => self.refer(ResourceType::Cluster, format!("{route_path}.cluster"), name),
                    Some(ClusterSpecifier::WeightedClusters(weighted)) => {
                        for (i, cluster) in weighted.clusters.iter().enumerate() {
                            self.refer(ResourceType::Cluster, format!("{route_path}.weighted_clusters.clusters[{i}].name"), &cluster.name);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

fn socket_typed_config(socket: &TransportSocket) -> Option<&Any> {
    match &socket.config_type {
        Some(transport_socket::ConfigType::TypedConfig(any)) => Some(any),
        None => None,
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
        validate(&parsed.stored, &parsed.facts)
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

    fn eds_cluster(name: &str) -> Value {
        json!({"name": name, "type": "EDS", "eds_cluster_config": {"eds_config": {"ads": {}}}})
    }

    fn source(cluster: &str, cloud_map: Value) -> Value {
        json!({"cluster_name": cluster, "cloud_map": cloud_map})
    }

    /// A source's error, as parsing or validation reports it.
    fn source_error(body: Value) -> BundleError {
        match parse(body.to_string().as_bytes(), Format::Json) {
            Ok(parsed) => validate(&parsed.stored, &parsed.facts).expect_err("refused"),
            Err(error) => error,
        }
    }

    #[test]
    fn endpoint_sources_stand_in_for_endpoints_entries_of_eds_clusters() {
        let cloud_map = json!({"namespace": "prod.local", "service": "backend", "port": 8080});
        check(json!({"clusters": [eds_cluster("backend")], "endpoint_sources": [source("backend", cloud_map.clone())]})).unwrap();
        let by_attribute = json!({"namespace": "prod.local", "service": "backend", "port_attribute": "AWS_INSTANCE_PORT", "health": "HEALTHY_OR_ELSE_ALL", "query_parameters": {"stage": "blue"}});
        check(json!({"clusters": [eds_cluster("backend")], "endpoint_sources": [source("backend", by_attribute)]})).unwrap();

        let cases = [
            (json!({"clusters": [eds_cluster("backend")], "endpoint_sources": [source("other", cloud_map.clone())]}), "endpoint_sources[0].cluster_name", "no EDS cluster"),
            (json!({"clusters": [{"name": "backend"}], "endpoint_sources": [source("backend", cloud_map.clone())]}), "endpoint_sources[0].cluster_name", "no EDS cluster"),
            (
                json!({"clusters": [eds_cluster("backend")], "endpoints": [{"cluster_name": "backend"}], "endpoint_sources": [source("backend", cloud_map.clone())]}),
                "endpoint_sources[0].cluster_name",
                "both an endpoints entry",
            ),
            (
                json!({"clusters": [eds_cluster("backend")], "endpoint_sources": [source("backend", cloud_map.clone()), source("backend", cloud_map.clone())]}),
                "endpoint_sources[1].cluster_name",
                "duplicate",
            ),
            (json!({"clusters": [eds_cluster("backend")], "endpoint_sources": [source("backend", json!({"namespace": "prod.local", "service": "backend"}))]}), "endpoint_sources[0].cloud_map.port", "port is required"),
            (json!({"clusters": [eds_cluster("backend")], "endpoint_sources": [source("backend", json!({"namespace": "prod.local", "service": "backend", "port": 70000}))]}), "endpoint_sources[0].cloud_map.port", "65535"),
            (json!({"clusters": [eds_cluster("backend")], "endpoint_sources": [source("backend", json!({"service": "backend", "port": 80}))]}), "endpoint_sources[0].cloud_map.namespace", "required"),
            (json!({"clusters": [eds_cluster("backend")], "endpoint_sources": [{"cluster_name": "backend"}]}), "endpoint_sources[0].cloud_map", "required"),
            (
                json!({"clusters": [eds_cluster("backend")], "endpoint_sources": [source("backend", json!({"namespace": "n", "service": "s", "port": 80, "health": "SICK"}))]}),
                "endpoint_sources[0].cloud_map.health",
                "SICK",
            ),
            (json!({"clusters": [eds_cluster("backend")]}), "clusters[0]", "endpoint source"),
        ];
        for (body, at, says) in cases {
            let error = source_error(body.clone());
            assert!(error.path.as_deref().is_some_and(|p| p.starts_with(at)), "{body}: {error:?}");
            assert!(error.message.contains(says), "{body}: {error:?}");
        }
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

        // A proxyless gRPC client's api_listener.
        let rds = json!({"@type": HCM, "rds": {"route_config_name": "nope", "config_source": {"ads": {}}}});
        let api = json!({"name": "echo", "api_listener": {"api_listener": rds}});
        assert_eq!(path(json!({"listeners": [api.clone()]})), "listeners[0].api_listener.api_listener.rds.route_config_name");
        check(json!({"listeners": [api], "routes": [{"name": "nope"}]})).unwrap();
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
