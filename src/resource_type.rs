//! The resource types sxds serves. Everything the protocol says about a
//! type is one row of [`TYPES`]; per-type state is a [`PerType`], an array
//! indexed by the type. Adding a type is a variant and a row.

use std::ops::{Index, IndexMut};

/// An xDS resource type. The declaration order is the ADS send order (R23):
/// clusters, then endpoints, then listeners, then routes, so that nothing
/// refers to a resource the client does not have yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceType {
    Cluster,
    Endpoint,
    Listener,
    Route,
    ScopedRoute,
    Secret,
    Runtime,
    ExtensionConfig,
    VirtualHost,
}

/// What the protocol says about one resource type.
#[derive(Debug)]
pub struct TypeInfo {
    pub ty: ResourceType,
    /// `type.googleapis.com/` and the message's full name.
    pub type_url: &'static str,
    /// The bundle key listing the type, and its name in logs, metrics and
    /// the status API.
    pub key: &'static str,
    /// The number of the `sxds.v1.Bundle` field that lists the type; it
    /// also tags each resource in the stored form.
    pub bundle_field: u32,
    /// The field of the resource message that names it.
    pub name_field: &'static str,
    /// What one resource is called in messages.
    pub noun: &'static str,
    /// One of the four types of Go sxds's bundles: REST answers always
    /// count it, other types only when a bundle has some.
    pub core: bool,
    /// Full-state types (LDS, CDS) accept a wildcard subscription and are
    /// answered with the whole set (R14, R18); named ones (RDS, EDS) may be
    /// answered partially (R19).
    pub full_state: bool,
    /// The per-type gRPC service, its short name, and its state-of-the-world
    /// method (empty when it has none).
    pub service: &'static str,
    pub short: &'static str,
    pub sotw_method: &'static str,
    /// Its delta (incremental) method.
    pub delta_method: &'static str,
    /// Served over delta only, its names resolved on demand (VHDS, see
    /// `xds::vhds`); it has no state-of-the-world method.
    pub on_demand: bool,
    /// Its REST path, `/v3/discovery:` and this (R34); empty when it has none.
    pub rest: &'static str,
    /// On ADS, the types whose unanswered responses hold this one back (R23).
    pub waits_for: &'static [ResourceType],
    /// The types whose update starts resources warming that then re-request
    /// this one (R21, R22): clusters wait for endpoints and secrets,
    /// listeners for routes, scopes, secrets and filter configs.
    pub warmed_by: &'static [ResourceType],
}

/// Every type, in ADS order: row `i` describes `ResourceType::ALL[i]`.
///
/// Listeners and routes wait until the clusters they may use are warm.
/// Envoy ACKs a CDS response only once its new clusters are warm, which
/// takes their EDS answer, so endpoints never wait. Routes do not wait for
/// listeners: a new listener warms until its routes arrive.
pub const TYPES: [TypeInfo; COUNT] = [
    TypeInfo {
        ty: ResourceType::Cluster,
        type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster",
        key: "clusters",
        core: true,
        noun: "cluster",
        bundle_field: 3,
        name_field: "name",
        full_state: true,
        service: "envoy.service.cluster.v3.ClusterDiscoveryService",
        short: "cds",
        sotw_method: "StreamClusters",
        delta_method: "DeltaClusters",
        on_demand: false,
        rest: "clusters",
        waits_for: &[],
        warmed_by: &[],
    },
    TypeInfo {
        ty: ResourceType::Endpoint,
        type_url: "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
        key: "endpoints",
        core: true,
        noun: "cluster load assignment",
        bundle_field: 5,
        name_field: "cluster_name",
        full_state: false,
        service: "envoy.service.endpoint.v3.EndpointDiscoveryService",
        short: "eds",
        sotw_method: "StreamEndpoints",
        delta_method: "DeltaEndpoints",
        on_demand: false,
        rest: "endpoints",
        waits_for: &[],
        warmed_by: &[ResourceType::Cluster],
    },
    TypeInfo {
        ty: ResourceType::Listener,
        type_url: "type.googleapis.com/envoy.config.listener.v3.Listener",
        key: "listeners",
        core: true,
        noun: "listener",
        bundle_field: 2,
        name_field: "name",
        full_state: true,
        service: "envoy.service.listener.v3.ListenerDiscoveryService",
        short: "lds",
        sotw_method: "StreamListeners",
        delta_method: "DeltaListeners",
        on_demand: false,
        rest: "listeners",
        waits_for: &[ResourceType::Cluster, ResourceType::Endpoint],
        warmed_by: &[],
    },
    TypeInfo {
        ty: ResourceType::Route,
        type_url: "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
        key: "routes",
        core: true,
        noun: "route configuration",
        bundle_field: 4,
        name_field: "name",
        full_state: false,
        service: "envoy.service.route.v3.RouteDiscoveryService",
        short: "rds",
        sotw_method: "StreamRoutes",
        delta_method: "DeltaRoutes",
        on_demand: false,
        rest: "routes",
        waits_for: &[ResourceType::Cluster, ResourceType::Endpoint],
        warmed_by: &[ResourceType::Listener],
    },
    TypeInfo {
        ty: ResourceType::ScopedRoute,
        type_url: "type.googleapis.com/envoy.config.route.v3.ScopedRouteConfiguration",
        key: "scoped_routes",
        core: false,
        noun: "scoped route configuration",
        bundle_field: 9,
        name_field: "name",
        // Envoy's SRDS subscription takes every scope of the listener's source.
        full_state: true,
        service: "envoy.service.route.v3.ScopedRoutesDiscoveryService",
        short: "srds",
        sotw_method: "StreamScopedRoutes",
        delta_method: "DeltaScopedRoutes",
        on_demand: false,
        rest: "scoped-routes",
        waits_for: &[ResourceType::Cluster, ResourceType::Endpoint],
        warmed_by: &[ResourceType::Listener],
    },
    TypeInfo {
        ty: ResourceType::Secret,
        type_url: "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
        key: "secrets",
        core: false,
        noun: "secret",
        bundle_field: 6,
        name_field: "name",
        full_state: false,
        service: "envoy.service.secret.v3.SecretDiscoveryService",
        short: "sds",
        sotw_method: "StreamSecrets",
        delta_method: "DeltaSecrets",
        on_demand: false,
        rest: "secrets",
        waits_for: &[],
        warmed_by: &[ResourceType::Cluster, ResourceType::Listener],
    },
    TypeInfo {
        ty: ResourceType::Runtime,
        type_url: "type.googleapis.com/envoy.service.runtime.v3.Runtime",
        key: "runtimes",
        core: false,
        noun: "runtime layer",
        bundle_field: 7,
        name_field: "name",
        full_state: false,
        service: "envoy.service.runtime.v3.RuntimeDiscoveryService",
        short: "rtds",
        sotw_method: "StreamRuntime",
        delta_method: "DeltaRuntime",
        on_demand: false,
        rest: "runtime",
        waits_for: &[],
        warmed_by: &[],
    },
    TypeInfo {
        ty: ResourceType::ExtensionConfig,
        type_url: "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
        key: "extension_configs",
        core: false,
        noun: "extension config",
        bundle_field: 8,
        name_field: "name",
        full_state: false,
        service: "envoy.service.extension.v3.ExtensionConfigDiscoveryService",
        short: "ecds",
        sotw_method: "StreamExtensionConfigs",
        delta_method: "DeltaExtensionConfigs",
        on_demand: false,
        rest: "extension_configs",
        waits_for: &[],
        warmed_by: &[ResourceType::Listener],
    },
    TypeInfo {
        ty: ResourceType::VirtualHost,
        type_url: "type.googleapis.com/envoy.config.route.v3.VirtualHost",
        key: "virtual_hosts",
        core: false,
        noun: "virtual host",
        bundle_field: 10,
        // `<route configuration>/<virtual host>`.
        name_field: "name",
        full_state: false,
        service: "envoy.service.route.v3.VirtualHostDiscoveryService",
        short: "vhds",
        sotw_method: "",
        delta_method: "DeltaVirtualHosts",
        on_demand: true,
        rest: "",
        waits_for: &[],
        warmed_by: &[ResourceType::Route],
    },
];

/// How many types there are.
pub const COUNT: usize = 9;

impl ResourceType {
    /// All types, in ADS send order.
    pub const ALL: [ResourceType; COUNT] =
        [Self::Cluster, Self::Endpoint, Self::Listener, Self::Route, Self::ScopedRoute, Self::Secret, Self::Runtime, Self::ExtensionConfig, Self::VirtualHost];

    /// The type's row of [`TYPES`].
    pub const fn info(self) -> &'static TypeInfo {
        &TYPES[self as usize]
    }

    pub const fn type_url(self) -> &'static str {
        self.info().type_url
    }

    pub fn from_type_url(url: &str) -> Option<Self> {
        TYPES.iter().find(|t| t.type_url == url).map(|t| t.ty)
    }

    /// Position in [`Self::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }

    pub const fn is_full_state(self) -> bool {
        self.info().full_state
    }

    /// The bundle key, also the type's name in logs and the status API.
    pub const fn name(self) -> &'static str {
        self.info().key
    }

    pub fn from_name(name: &str) -> Option<Self> {
        TYPES.iter().find(|t| t.key == name).map(|t| t.ty)
    }

    pub const fn bundle_field(self) -> u32 {
        self.info().bundle_field
    }

    pub fn from_bundle_field(number: u32) -> Option<Self> {
        TYPES.iter().find(|t| t.bundle_field == number).map(|t| t.ty)
    }

    pub const fn name_field(self) -> &'static str {
        self.info().name_field
    }
}

impl std::fmt::Display for ResourceType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One `T` per resource type, indexed by the type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct PerType<T>([T; COUNT]);

impl<T> PerType<T> {
    pub fn from_fn(mut f: impl FnMut(ResourceType) -> T) -> Self {
        Self(std::array::from_fn(|i| f(ResourceType::ALL[i])))
    }

    pub fn map<U>(self, mut f: impl FnMut(ResourceType, T) -> U) -> PerType<U> {
        let mut types = ResourceType::ALL.into_iter();
        PerType(self.0.map(|value| f(types.next().expect("one value per type"), value)))
    }

    /// Each type with its value, in ADS order.
    pub fn iter(&self) -> impl Iterator<Item = (ResourceType, &T)> {
        ResourceType::ALL.into_iter().zip(&self.0)
    }

    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.0.iter()
    }
}

impl<T> Index<ResourceType> for PerType<T> {
    type Output = T;
    fn index(&self, ty: ResourceType) -> &T {
        &self.0[ty.index()]
    }
}

impl<T> IndexMut<ResourceType> for PerType<T> {
    fn index_mut(&mut self, ty: ResourceType) -> &mut T {
        &mut self.0[ty.index()]
    }
}

/// Per-type state that a stream needs for a few types only: a pointer per
/// type, the state boxed when a type is first written. A type never written
/// reads as [`Empty::empty`]. A stream of a per-type service, or an Envoy
/// that uses four types of nine, does not pay for the others.
#[derive(Debug, Default)]
pub struct Sparse<T>(PerType<Option<Box<T>>>);

/// A type's shared empty value, what [`Sparse`] reads for a type not used.
pub trait Empty: Default + 'static {
    fn empty() -> &'static Self;
}

impl<T: Empty> Index<ResourceType> for Sparse<T> {
    type Output = T;
    fn index(&self, ty: ResourceType) -> &T {
        match self.0[ty].as_deref() {
            Some(state) => state,
            None => T::empty(),
        }
    }
}

impl<T: Empty> IndexMut<ResourceType> for Sparse<T> {
    fn index_mut(&mut self, ty: ResourceType) -> &mut T {
        self.0[ty].get_or_insert_with(Box::default)
    }
}

/// A map from each type's name to its value, in ADS order.
impl<T: serde::Serialize> serde::Serialize for PerType<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter().map(|(ty, value)| (ty.name(), value)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_one_row_per_type_in_ads_order() {
        for (i, t) in ResourceType::ALL.into_iter().enumerate() {
            assert_eq!(TYPES[i].ty, t, "row {i}");
            assert_eq!(t.index(), i);
            assert_eq!(ResourceType::from_type_url(t.type_url()), Some(t));
            assert_eq!(ResourceType::from_name(t.name()), Some(t));
            assert!(t.info().waits_for.iter().all(|w| *w < t), "{t} waits only for types sent before it");
            assert!(t.info().warmed_by.iter().all(|w| *w < t), "{t} is warmed by types sent before it");
        }
        assert_eq!(ResourceType::from_type_url("type.googleapis.com/envoy.config.route.v3.Vhds"), None);
        assert!(ResourceType::Cluster < ResourceType::Endpoint && ResourceType::Listener < ResourceType::Route);
    }

    #[test]
    fn bundle_fields_and_name_fields_match_the_schema() {
        let bundle = crate::schema::bundle_descriptor();
        for t in ResourceType::ALL {
            let field = bundle.get_field_by_name(t.name()).expect("the bundle lists every type");
            assert_eq!(field.number(), t.bundle_field());
            assert_eq!(ResourceType::from_bundle_field(t.bundle_field()), Some(t));
            let prost_reflect::Kind::Message(message) = field.kind() else { panic!("{t} is a message list") };
            assert_eq!(format!("type.googleapis.com/{}", message.full_name()), t.type_url());
            assert!(message.get_field_by_name(t.name_field()).is_some(), "{t} is named by {}", t.name_field());
        }
    }

    #[test]
    fn sparse_state_is_boxed_only_for_the_types_written() {
        #[derive(Debug, Default, PartialEq)]
        struct State(u32);
        impl Empty for State {
            fn empty() -> &'static Self {
                static EMPTY: State = State(0);
                &EMPTY
            }
        }
        let mut sparse = Sparse::<State>::default();
        assert_eq!(sparse[ResourceType::Route], State(0), "an unused type reads empty");
        sparse[ResourceType::Cluster].0 = 7;
        assert_eq!(sparse[ResourceType::Cluster], State(7));
        assert_eq!(sparse.0.values().filter(|s| s.is_some()).count(), 1, "only the type written is boxed");
    }

    #[test]
    fn per_type_is_indexed_by_type_and_serializes_by_name() {
        let mut counts = PerType::from_fn(|t| t.index() * 10);
        counts[ResourceType::Route] += 1;
        assert_eq!(counts[ResourceType::Route], 31);
        assert_eq!(counts.iter().map(|(t, n)| (t, *n)).collect::<Vec<_>>()[0], (ResourceType::Cluster, 0));
        let json = serde_json::to_value(&counts).unwrap();
        assert_eq!(json["clusters"], 0);
        assert_eq!(json["routes"], 31);
        assert_eq!(json.as_object().unwrap().len(), COUNT, "one entry per type");
    }
}
