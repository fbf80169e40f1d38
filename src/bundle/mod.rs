//! Bundles: what a PUT carries. Parsing (JSON or YAML, canonical proto3 JSON
//! for every Envoy type), strict reading (no key twice, YAML depth and alias
//! limits), validation (names, duplicates, references) and the bundle's
//! version.

mod diff;
mod encode;
mod parse;
mod redact;
mod strict;
mod transcode;
mod validate;

pub use diff::{diff, Changed, Diff, FieldChange, TypeDiff};
pub use parse::{check_version, parse, resource_value, to_json, Format, Parsed, MAX_VERSION_LEN};
pub use validate::{referenced, validate, Facts};

use crate::{
    resource_type::{PerType, ResourceType},
    schema::StoredBundle,
};

/// A bad bundle: what is wrong and, where there is one, the field path
/// (`clusters[3].connect_timeout`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BundleError {
    pub message: String,
    pub path: Option<String>,
}

impl BundleError {
    pub fn new(message: impl Into<String>) -> Self {
        Self { message: message.into(), path: None }
    }

    pub fn at(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self { message: message.into(), path: Some(path.into()) }
    }
}

/// Parses and validates a request body into the form the store keeps.
pub fn accept(body: &[u8], format: Format) -> Result<StoredBundle, BundleError> {
    let Parsed { stored, facts } = parse(body, format)?;
    validate(&stored, &facts)?;
    Ok(stored)
}

/// Resource counts per type, for REST answers: by bundle key, the core
/// four always, other types when there are some.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts(PerType<usize>);

impl Counts {
    pub fn from_fn(f: impl FnMut(ResourceType) -> usize) -> Self {
        Self(PerType::from_fn(f))
    }
}

impl std::ops::Deref for Counts {
    type Target = PerType<usize>;
    fn deref(&self) -> &PerType<usize> {
        &self.0
    }
}

impl serde::Serialize for Counts {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let shown = self.0.iter().filter(|(ty, n)| ty.info().core || **n > 0);
        serializer.collect_map(shown.map(|(ty, n)| (ty.name(), n)))
    }
}

/// How many resources of each type `bundle` has.
pub fn counts(bundle: &StoredBundle) -> Counts {
    Counts::from_fn(|ty| bundle.count(ty))
}

/// How many resources a write added, changed and removed, matched by type
/// and name and compared by their encoded bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Changes {
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
}

impl Changes {
    pub fn between(old: Option<&StoredBundle>, new: Option<&StoredBundle>) -> Self {
        let empty = Vec::new();
        let old = old.map_or(&empty, |b| &b.resources);
        let new = new.map_or(&empty, |b| &b.resources);
        let before: std::collections::HashMap<(u32, &str), &[u8]> = old.iter().map(|r| ((r.field, r.name.as_str()), &r.value[..])).collect();
        let mut changes = Self::default();
        let mut kept = 0;
        for resource in new {
            match before.get(&(resource.field, resource.name.as_str())) {
                None => changes.added += 1,
                Some(value) => {
                    kept += 1;
                    if *value != &resource.value[..] {
                        changes.changed += 1;
                    }
                }
            }
        }
        changes.removed = before.len() - kept;
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(clusters: &[(&str, &str)]) -> StoredBundle {
        let clusters: Vec<_> = clusters.iter().map(|(name, timeout)| serde_json::json!({"name": name, "connect_timeout": timeout})).collect();
        accept(serde_json::json!({"version": "v", "clusters": clusters}).to_string().as_bytes(), Format::Json).unwrap()
    }

    #[test]
    fn counts_show_the_core_types_always_and_others_when_present() {
        let mut stored = bundle(&[("a", "1s")]);
        assert_eq!(serde_json::to_value(counts(&stored)).unwrap(), serde_json::json!({"clusters": 1, "endpoints": 0, "listeners": 0, "routes": 0}));
        stored.resources.push(crate::schema::StoredResource { field: ResourceType::Secret.bundle_field(), name: "s".into(), value: Default::default() });
        assert_eq!(serde_json::to_value(counts(&stored)).unwrap()["secrets"], 1);
    }

    #[test]
    fn changes_count_added_changed_and_removed_resources_by_name() {
        let old = bundle(&[("a", "1s"), ("b", "1s"), ("c", "1s")]);
        let new = bundle(&[("a", "1s"), ("b", "2s"), ("d", "1s")]);
        assert_eq!(Changes::between(Some(&old), Some(&new)), Changes { added: 1, changed: 1, removed: 1 });
        assert_eq!(Changes::between(None, Some(&new)), Changes { added: 3, changed: 0, removed: 0 });
        assert_eq!(Changes::between(Some(&old), None), Changes { added: 0, changed: 0, removed: 3 });
    }
}
