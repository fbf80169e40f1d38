//! Cloud Map instances as an Envoy `ClusterLoadAssignment`.
//!
//! Encoded by hand, field by field, in a fixed order: prost encodes a map
//! (endpoint metadata is `map<string, Struct>` of `map<string, Value>`) in
//! hash order, which would make the same instances different bytes on two
//! replicas, and so a resend to every Envoy that moves between them.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::{address, socket_address::PortSpecifier, Address, HealthStatus, Locality, SocketAddress};
use prost::Message;

use crate::{
    schema::{cloud_map_source::PortFrom, CloudMapSource, DiscoveredInstance},
    wire,
};

/// The attributes ECS and the Cloud Map API give every instance: an
/// endpoint's address, port and locality come from them.
pub const IPV4: &str = "AWS_INSTANCE_IPV4";
pub const IPV6: &str = "AWS_INSTANCE_IPV6";
pub const PORT: &str = "AWS_INSTANCE_PORT";
pub const ZONE: &str = "AVAILABILITY_ZONE";
pub const REGION: &str = "REGION";

/// Endpoint metadata under this filter is what subset load balancing reads.
const LB_METADATA: &str = "envoy.lb";

/// Field numbers of the messages written here.
mod field {
    pub const CLA_CLUSTER_NAME: u32 = 1;
    pub const CLA_ENDPOINTS: u32 = 2;
    pub const LOCALITY_LB_ENDPOINTS_LOCALITY: u32 = 1;
    pub const LOCALITY_LB_ENDPOINTS_LB_ENDPOINTS: u32 = 2;
    pub const LB_ENDPOINT_ENDPOINT: u32 = 1;
    pub const LB_ENDPOINT_HEALTH_STATUS: u32 = 2;
    pub const LB_ENDPOINT_METADATA: u32 = 3;
    pub const ENDPOINT_ADDRESS: u32 = 1;
    pub const METADATA_FILTER_METADATA: u32 = 1;
    pub const STRUCT_FIELDS: u32 = 1;
    pub const MAP_KEY: u32 = 1;
    pub const MAP_VALUE: u32 = 2;
    pub const VALUE_STRING: u32 = 3;
}

/// What rendering made of a set of instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The encoded `ClusterLoadAssignment`.
    pub assignment: Vec<u8>,
    pub endpoints: usize,
    /// Instances left out, each with why (no address, no port).
    pub skipped: Vec<String>,
}

/// The assignment of `cluster_name`: one endpoint per instance with an
/// address and a port, grouped by (region, zone), in instance-id order.
pub fn assignment(cluster_name: &str, source: &CloudMapSource, instances: &[DiscoveredInstance]) -> Rendered {
    let mut localities: BTreeMap<(&str, &str), Vec<Vec<u8>>> = BTreeMap::new();
    let mut skipped = Vec::new();
    let mut sorted: Vec<&DiscoveredInstance> = instances.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    for instance in sorted {
        match lb_endpoint(source, instance) {
            Ok(endpoint) => {
                let attribute = |name: &str| instance.attributes.get(name).map_or("", String::as_str);
                localities.entry((attribute(REGION), attribute(ZONE))).or_default().push(endpoint);
            }
            Err(why) => skipped.push(format!("instance {:?}: {why}", instance.id)),
        }
    }
    let endpoints = localities.values().map(Vec::len).sum();
    let mut assignment = Vec::new();
    wire::put_bytes_field(&mut assignment, field::CLA_CLUSTER_NAME, cluster_name.as_bytes());
    for ((region, zone), lb_endpoints) in localities {
        let mut group = Vec::new();
        let locality = Locality { region: region.to_owned(), zone: zone.to_owned(), ..Default::default() };
        wire::put_bytes_field(&mut group, field::LOCALITY_LB_ENDPOINTS_LOCALITY, &locality.encode_to_vec());
        lb_endpoints.iter().for_each(|endpoint| wire::put_bytes_field(&mut group, field::LOCALITY_LB_ENDPOINTS_LB_ENDPOINTS, endpoint));
        wire::put_bytes_field(&mut assignment, field::CLA_ENDPOINTS, &group);
    }
    Rendered { assignment, endpoints, skipped }
}

/// One instance as an `LbEndpoint`, or why it cannot be one.
fn lb_endpoint(source: &CloudMapSource, instance: &DiscoveredInstance) -> Result<Vec<u8>, String> {
    let attributes = &instance.attributes;
    let ip = attributes.get(IPV4).or_else(|| attributes.get(IPV6)).filter(|ip| ip.parse::<std::net::IpAddr>().is_ok());
    let ip = ip.ok_or_else(|| format!("no {IPV4} or {IPV6} attribute holding an IP address"))?;
    let port = match &source.port_from {
        Some(PortFrom::Port(port)) => *port,
        Some(PortFrom::PortAttribute(name)) => {
            let value = attributes.get(name).ok_or_else(|| format!("no {name} attribute (the source's port_attribute)"))?;
            value.parse().ok().filter(|port| (1..=65535).contains(port)).ok_or_else(|| format!("{name} is {value:?}, not a port"))?
        }
        None => return Err("the source names no port".to_owned()),
    };
    let address = Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.clone(),
            port_specifier: Some(PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    };
    let mut endpoint = Vec::new();
    wire::put_bytes_field(&mut endpoint, field::ENDPOINT_ADDRESS, &address.encode_to_vec());

    let mut lb_endpoint = Vec::new();
    wire::put_bytes_field(&mut lb_endpoint, field::LB_ENDPOINT_ENDPOINT, &endpoint);
    let health = match instance.health.as_str() {
        "HEALTHY" => HealthStatus::Healthy,
        "UNHEALTHY" => HealthStatus::Unhealthy,
        _ => HealthStatus::Unknown, // no health check: Envoy treats it as healthy
    };
    if health != HealthStatus::Unknown {
        prost::encoding::int32::encode(field::LB_ENDPOINT_HEALTH_STATUS, &(health as i32), &mut lb_endpoint);
    }
    let used = |name: &str| [IPV4, IPV6, PORT, ZONE, REGION].contains(&name) || matches!(&source.port_from, Some(PortFrom::PortAttribute(p)) if p == name);
    let mut others: Vec<(&String, &String)> = attributes.iter().filter(|(name, _)| !used(name)).collect();
    if !others.is_empty() {
        others.sort();
        wire::put_bytes_field(&mut lb_endpoint, field::LB_ENDPOINT_METADATA, &metadata(&others));
    }
    Ok(lb_endpoint)
}

/// `Metadata` with the attributes as string values of one `envoy.lb` struct.
fn metadata(attributes: &[(&String, &String)]) -> Vec<u8> {
    let mut structure = Vec::new();
    for (name, value) in attributes {
        let mut string_value = Vec::new();
        wire::put_bytes_field(&mut string_value, field::VALUE_STRING, value.as_bytes());
        wire::put_bytes_field(&mut structure, field::STRUCT_FIELDS, &map_entry(name, &string_value));
    }
    let mut metadata = Vec::new();
    wire::put_bytes_field(&mut metadata, field::METADATA_FILTER_METADATA, &map_entry(LB_METADATA, &structure));
    metadata
}

/// One entry of a protobuf map with string keys and message values.
fn map_entry(key: &str, value: &[u8]) -> Vec<u8> {
    let mut entry = Vec::new();
    wire::put_bytes_field(&mut entry, field::MAP_KEY, key.as_bytes());
    wire::put_bytes_field(&mut entry, field::MAP_VALUE, value);
    entry
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::endpoint::v3::{lb_endpoint::HostIdentifier, ClusterLoadAssignment};

    use super::*;
    use crate::schema::cloud_map_source::Health;

    fn instance(id: &str, attributes: &[(&str, &str)], health: &str) -> DiscoveredInstance {
        let attributes = attributes.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        DiscoveredInstance { id: id.to_owned(), attributes, health: health.to_owned() }
    }

    fn source(port_from: PortFrom) -> CloudMapSource {
        CloudMapSource { namespace: "prod.local".into(), service: "backend".into(), port_from: Some(port_from), health: Health::Healthy as i32, ..Default::default() }
    }

    #[test]
    fn instances_become_endpoints_grouped_by_zone_with_their_other_attributes_as_lb_metadata() {
        let instances = [
            instance("b", &[(IPV4, "10.0.0.2"), (PORT, "8080"), (ZONE, "us-east-1b"), (REGION, "us-east-1"), ("version", "v2"), ("stage", "canary")], "UNHEALTHY"),
            instance("a", &[(IPV4, "10.0.0.1"), (PORT, "8081"), (ZONE, "us-east-1a"), (REGION, "us-east-1"), ("version", "v1")], "HEALTHY"),
            instance("c", &[(IPV6, "fd00::3"), (PORT, "8082"), (ZONE, "us-east-1a"), (REGION, "us-east-1")], "UNKNOWN"),
            instance("no-ip", &[(PORT, "8080")], "HEALTHY"),
            instance("bad-port", &[(IPV4, "10.0.0.9"), (PORT, "http")], "HEALTHY"),
        ];
        let rendered = assignment("backend", &source(PortFrom::PortAttribute(PORT.into())), &instances);
        assert_eq!(rendered.endpoints, 3);
        assert_eq!(rendered.skipped.len(), 2, "{:?}", rendered.skipped);
        assert!(rendered.skipped[0].contains("bad-port") && rendered.skipped[0].contains("not a port"), "{:?}", rendered.skipped);
        let cla = ClusterLoadAssignment::decode(&rendered.assignment[..]).unwrap();
        assert_eq!(cla.cluster_name, "backend");
        let zones: Vec<(&str, &str, usize)> = cla.endpoints.iter().map(|l| {
            let locality = l.locality.as_ref().unwrap();
            (locality.region.as_str(), locality.zone.as_str(), l.lb_endpoints.len())
        }).collect();
        assert_eq!(zones, [("us-east-1", "us-east-1a", 2), ("us-east-1", "us-east-1b", 1)]);
        let address = |l: &envoy_types::pb::envoy::config::endpoint::v3::LbEndpoint| match &l.host_identifier {
            Some(HostIdentifier::Endpoint(e)) => match &e.address.as_ref().unwrap().address {
                Some(address::Address::SocketAddress(s)) => (s.address.clone(), match s.port_specifier { Some(PortSpecifier::PortValue(p)) => p, _ => 0 }),
                _ => unreachable!(),
            },
            _ => unreachable!(),
        };
        let a = &cla.endpoints[0].lb_endpoints[0];
        assert_eq!(address(a), ("10.0.0.1".to_owned(), 8081));
        assert_eq!(a.health_status, HealthStatus::Healthy as i32);
        let lb = &a.metadata.as_ref().unwrap().filter_metadata["envoy.lb"];
        assert_eq!(lb.fields.len(), 1, "address, port and locality attributes are not metadata");
        assert!(matches!(&lb.fields["version"].kind, Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(v)) if v == "v1"));
        let c = &cla.endpoints[0].lb_endpoints[1];
        assert_eq!((address(c), c.health_status, c.metadata.is_none()), (("fd00::3".to_owned(), 8082), HealthStatus::Unknown as i32, true));
        let b = &cla.endpoints[1].lb_endpoints[0];
        assert_eq!((b.health_status, b.metadata.as_ref().unwrap().filter_metadata["envoy.lb"].fields.len()), (HealthStatus::Unhealthy as i32, 2));
    }

    #[test]
    fn the_same_instances_in_any_order_are_the_same_bytes() {
        let attributes: Vec<(String, String)> = (0..20).map(|i| (format!("k{i}"), format!("v{i}"))).collect();
        let with = |order: &[usize]| {
            let mut attrs: Vec<(&str, &str)> = order.iter().map(|&i| (attributes[i].0.as_str(), attributes[i].1.as_str())).collect();
            attrs.extend([(IPV4, "10.0.0.1")]);
            instance("a", &attrs, "HEALTHY")
        };
        let forward: Vec<usize> = (0..20).collect();
        let backward: Vec<usize> = (0..20).rev().collect();
        let one = assignment("x", &source(PortFrom::Port(80)), &[with(&forward), instance("b", &[(IPV4, "10.0.0.2")], "")]);
        let two = assignment("x", &source(PortFrom::Port(80)), &[instance("b", &[(IPV4, "10.0.0.2")], ""), with(&backward)]);
        assert_eq!(one, two);
        assert_eq!(one.endpoints, 2);
    }

    #[test]
    fn zero_instances_are_an_assignment_with_no_endpoints() {
        let rendered = assignment("backend", &source(PortFrom::Port(80)), &[]);
        let cla = ClusterLoadAssignment::decode(&rendered.assignment[..]).unwrap();
        assert_eq!((cla.cluster_name.as_str(), cla.endpoints.len(), rendered.endpoints), ("backend", 0, 0));
    }
}
