//! The four resource types sxds serves, their type URLs, and the order ADS
//! sends them in. Every protocol constant about types lives here.

/// An xDS resource type. The declaration order is the ADS send order (R23):
/// clusters, then endpoints, then listeners, then routes, so that nothing
/// refers to a resource the client does not have yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceType {
    Cluster,
    Endpoint,
    Listener,
    Route,
}

impl ResourceType {
    /// All types, in ADS send order.
    pub const ALL: [ResourceType; 4] = [Self::Cluster, Self::Endpoint, Self::Listener, Self::Route];

    pub const fn type_url(self) -> &'static str {
        match self {
            Self::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            Self::Endpoint => "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
            Self::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            Self::Route => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
        }
    }

    pub fn from_type_url(url: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.type_url() == url)
    }

    /// Position in [`Self::ALL`], for per-type arrays.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// LDS and CDS are full-state and accept a wildcard subscription (R14, R18);
    /// RDS and EDS are named and may be answered partially (R19).
    pub const fn is_full_state(self) -> bool {
        matches!(self, Self::Cluster | Self::Listener)
    }

    /// The short name used in logs, the bundle and the status API.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Cluster => "clusters",
            Self::Endpoint => "endpoints",
            Self::Listener => "listeners",
            Self::Route => "routes",
        }
    }
}

impl ResourceType {
    /// The number of the `sxds.v1.Bundle` field that lists this type; it
    /// also tags each resource in the stored form.
    pub const fn bundle_field(self) -> u32 {
        match self {
            Self::Listener => 2,
            Self::Cluster => 3,
            Self::Route => 4,
            Self::Endpoint => 5,
        }
    }

    pub fn from_bundle_field(number: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.bundle_field() == number)
    }

    /// The field of the resource message that names it.
    pub const fn name_field(self) -> &'static str {
        match self {
            Self::Endpoint => "cluster_name",
            _ => "name",
        }
    }
}

impl std::fmt::Display for ResourceType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_urls_round_trip_and_order_is_ads_order() {
        for t in ResourceType::ALL {
            assert_eq!(ResourceType::from_type_url(t.type_url()), Some(t));
            assert_eq!(ResourceType::ALL[t.index()], t);
        }
        assert_eq!(ResourceType::from_type_url("type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"), None);
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
            assert!(message.get_field_by_name(t.name_field()).is_some(), "{t} is named by {}", t.name_field());
        }
    }
}
