//! VHDS: virtual hosts on demand, over delta only. A bundle lists virtual
//! hosts named `<route configuration>/<virtual host>` for route
//! configurations with `vhds`. Envoy's first VHDS request names nothing and
//! waits for an answer in each such route configuration's namespace: a
//! removal of `<route configuration>/` (Envoy refuses an entry without a
//! resource and without aliases), so nothing is loaded before it is needed.
//! Then, for each Host header it cannot route, Envoy subscribes to
//! `<route configuration>/<host>`. sxds resolves the name against the
//! domains of the namespace's virtual hosts, as Envoy matches them (exact,
//! then the longest `*` suffix wildcard, then the longest `*` prefix
//! wildcard, then `*`), and answers the virtual host under its own name with
//! the subscribed name as an alias, or, for a host nothing serves, an entry
//! with that alias and no resource (Envoy then answers 404).

use std::sync::Arc;

use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
use prost::Message;

use crate::{
    cache::{Resource, Snapshot},
    resource_type::ResourceType,
};

/// What a subscribed VHDS name stands for.
#[derive(Debug, Clone, Copy)]
pub enum Resolved<'a> {
    /// A route configuration, subscribed by name: answered at once and
    /// empty; virtual hosts follow on demand.
    Namespace,
    /// A virtual host, by its own name or by a host it serves.
    Host(&'a Resource),
    /// A host that no virtual host of its route configuration serves.
    Missing,
}

/// The namespace entries that answer Envoy's first VHDS request: one,
/// `<route configuration>/`, per route configuration with `vhds`.
pub fn namespaces(snapshot: &Snapshot) -> Vec<Arc<str>> {
    let fetches_virtual_hosts = |resource: &&Resource| {
        let any = envoy_types::pb::google::protobuf::Any::decode(resource.any()).ok();
        any.and_then(|any| RouteConfiguration::decode(any.value.as_slice()).ok()).is_some_and(|config| config.vhds.is_some())
    };
    let routes = snapshot.resources(ResourceType::Route).iter().filter(fetches_virtual_hosts);
    routes.map(|r| Arc::from(format!("{}/", r.name()))).collect()
}

/// What `name` stands for in `snapshot`.
pub fn resolve<'a>(snapshot: &'a Snapshot, name: &str) -> Resolved<'a> {
    if let Some(resource) = snapshot.resource(ResourceType::VirtualHost, name) {
        return Resolved::Host(resource);
    }
    if snapshot.contains(ResourceType::Route, name) {
        return Resolved::Namespace;
    }
    // A host holds no '/'; a route configuration name may.
    let Some((route_config, host)) = name.rsplit_once('/') else { return Resolved::Missing };
    let host = host.to_ascii_lowercase();
    let prefix = format!("{route_config}/");
    let vhosts = snapshot.resources(ResourceType::VirtualHost).iter().zip(snapshot.domains(decode_domains));
    let best = vhosts
        .filter(|(resource, _)| resource.name().starts_with(&prefix))
        .filter_map(|(resource, domains)| Some((domains.iter().filter_map(|domain| rank(domain, &host)).max()?, resource)))
        .max_by_key(|(rank, _)| *rank);
    best.map_or(Resolved::Missing, |(_, resource)| Resolved::Host(resource))
}

/// Each virtual host's domains, lowercased, as [`resolve`] matches them.
fn decode_domains(vhosts: &[Resource]) -> Box<[Box<[String]>]> {
    let decode = |resource: &Resource| {
        let any = envoy_types::pb::google::protobuf::Any::decode(resource.any()).ok()?;
        VirtualHost::decode(any.value.as_slice()).ok()
    };
    let domains = |resource| decode(resource).map(|vhost| vhost.domains.iter().map(|d| d.to_ascii_lowercase()).collect()).unwrap_or_default();
    vhosts.iter().map(domains).collect()
}

/// How well `domain` matches `host`, higher is better, `None` when it does
/// not: exact beats any wildcard, a longer wildcard a shorter one, suffix
/// wildcards prefix ones, and `*` comes last. Both are lowercase.
fn rank(domain: &str, host: &str) -> Option<(u8, usize)> {
    let host_without_port = host.rsplit_once(':').filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit())).map_or(host, |(h, _)| h);
    let matches = |host: &str| {
        if domain == host {
            Some((3, domain.len()))
        } else if domain == "*" {
            Some((0, 0))
        } else if let Some(suffix) = domain.strip_prefix('*') {
            (host.len() > suffix.len() && host.ends_with(suffix)).then_some((2, suffix.len()))
        } else if let Some(prefix) = domain.strip_suffix('*') {
            (host.len() > prefix.len() && host.starts_with(prefix)).then_some((1, prefix.len()))
        } else {
            None
        }
    };
    matches(host).or_else(|| matches(host_without_port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_match_domains_as_envoy_ranks_them() {
        assert_eq!(rank("app.example", "app.example"), Some((3, 11)));
        assert_eq!(rank("app.example", "app.example:8080"), Some((3, 11)), "the port is not part of the match");
        assert!(rank("*.example", "app.example") > rank("app.*", "app.example"), "suffix wildcards beat prefix ones");
        assert!(rank("*.example", "app.example") > rank("*", "app.example"));
        assert!(rank("*.b.example", "a.b.example") > rank("*.example", "a.b.example"), "the longer wildcard wins");
        assert_eq!(rank("*.example", ".example"), None, "a wildcard matches at least one character");
        assert_eq!(rank("other.example", "app.example"), None);
    }
}
