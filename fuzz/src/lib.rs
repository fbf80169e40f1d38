//! Checks shared by the fuzz targets in `fuzz_targets/`.

use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use prost::Message;
use sxds::{
    bundle::{self, Format},
    cache::{Selection, Snapshot},
    resource_type::ResourceType,
    schema::StoredBundle,
};

/// `(type, name)` of every resource, in bundle order.
pub fn listing(bundle: &StoredBundle) -> Vec<(u32, &str)> {
    bundle.resources.iter().map(|r| (r.field, r.name.as_str())).collect()
}

/// Whatever `bundle::accept` takes must print (GET) and parse back to the
/// same content, version and resources, and must encode into a snapshot
/// whose responses decode.
pub fn check_accepted_bundle(body: &[u8], format: Format) {
    let Ok(stored) = bundle::accept(body, format) else { return };
    let printed = bundle::to_json(&stored).unwrap_or_else(|e| panic!("an accepted bundle does not print: {e}"));
    let again = bundle::accept(&printed, Format::Json)
        .unwrap_or_else(|e| panic!("the printed bundle is refused: {e:?}\n{}", String::from_utf8_lossy(&printed)));
    assert_eq!(again.content_hash, stored.content_hash, "printing changed the content:\n{}", String::from_utf8_lossy(&printed));
    assert_eq!(again.version, stored.version);
    assert_eq!(listing(&again), listing(&stored));
    check_snapshots(Arc::new(stored), Arc::new(again));
}

/// Snapshots of `first`, then of `second` replacing it, hold every
/// resource once and answer a wildcard request with all of them.
pub fn check_snapshots(first: Arc<StoredBundle>, second: Arc<StoredBundle>) {
    let first = Snapshot::build(0, first, None);
    let second_bundle = second.clone();
    let second = Snapshot::build(1, second, Some(&first));
    for ty in ResourceType::ALL {
        let mut names: Vec<&str> = second_bundle.resources(ty).map(|r| r.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(second.names(ty).collect::<Vec<_>>(), names, "a snapshot holds each {ty} once, in name order");
        let changed = second.changed_since(&first, ty).expect("the second snapshot replaced the first");
        assert!(changed.iter().all(|name| second.contains(ty, name)));
        let response = second.response(ty, &Selection::All, "1");
        let decoded = DiscoveryResponse::decode(response.to_bytes()).expect("a response decodes");
        assert_eq!(decoded.resources.len(), names.len());
        assert_eq!(decoded.type_url, ty.type_url());
        assert_eq!(decoded.version_info, second.version());
    }
}
