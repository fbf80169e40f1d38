//! sxds's own protobuf schema (`proto/sxds/v1`) and the descriptor pool that
//! holds it beside every Envoy type and the CNCF `xds.*` and `udpa.*` ones
//! Envoy accepts in an `Any`, so canonical JSON with any `@type` can be
//! parsed and printed.

use std::sync::OnceLock;

use prost_reflect::{DescriptorPool, MessageDescriptor};

/// Messages generated from `proto/sxds/v1/bundle.proto`.
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/sxds.v1.rs"));
}

pub use v1::{cloud_map_source, Bundle, CloudMapSource, DiscoveredInstance, DiscoveredInstances, EndpointSource, LegacyStoredBundle, StoredBundle, StoredResource};

/// The `Bundle` field of `endpoint_sources`: stored beside the resources,
/// but not itself an xDS type.
pub const ENDPOINT_SOURCES_FIELD: u32 = 11;

use crate::resource_type::ResourceType;

const DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));

/// The pool of every Envoy and CNCF message plus sxds's. Built once (about
/// 65 ms) on first use and immutable after that, so one process-wide copy is
/// shared.
pub fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| DescriptorPool::decode(DESCRIPTORS).expect("descriptor set compiled in by build.rs is valid"))
}

/// The descriptor of `sxds.v1.Bundle`.
pub fn bundle_descriptor() -> MessageDescriptor {
    pool().get_message_by_name("sxds.v1.Bundle").expect("sxds.v1.Bundle is in the compiled descriptor set")
}

impl StoredBundle {
    /// The stored form of decoded messages (stores before 0.2 kept those).
    pub fn from_bundle(bundle: Bundle, content_hash: String) -> Self {
        use prost::Message;
        let mut resources = Vec::new();
        let mut add = |ty: ResourceType, name: &str, value: Vec<u8>| {
            resources.push(StoredResource { field: ty.bundle_field(), name: name.to_owned(), value: value.into() });
        };
        bundle.listeners.iter().for_each(|r| add(ResourceType::Listener, &r.name, r.encode_to_vec()));
        bundle.clusters.iter().for_each(|r| add(ResourceType::Cluster, &r.name, r.encode_to_vec()));
        bundle.routes.iter().for_each(|r| add(ResourceType::Route, &r.name, r.encode_to_vec()));
        bundle.endpoints.iter().for_each(|r| add(ResourceType::Endpoint, &r.cluster_name, r.encode_to_vec()));
        Self { version: bundle.version, content_hash, resources }
    }

    /// The resources of `ty`, in bundle order.
    pub fn resources(&self, ty: ResourceType) -> impl Iterator<Item = &StoredResource> {
        let field = ty.bundle_field();
        self.resources.iter().filter(move |r| r.field == field)
    }

    /// The bundle's endpoint sources, in bundle order. Each was decoded once
    /// when the bundle was accepted, so it decodes again.
    pub fn endpoint_sources(&self) -> impl Iterator<Item = EndpointSource> + '_ {
        use prost::Message;
        let stored = self.resources.iter().filter(|r| r.field == ENDPOINT_SOURCES_FIELD);
        stored.filter_map(|r| EndpointSource::decode(&r.value[..]).ok())
    }

    pub fn count(&self, ty: ResourceType) -> usize {
        self.resources(ty).count()
    }

    /// Encoded size of the resources: what the snapshot of this bundle
    /// holds, give or take framing.
    pub fn resource_bytes(&self) -> usize {
        self.resources.iter().map(|r| r.value.len()).sum()
    }
}
