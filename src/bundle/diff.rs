//! What a PUT would change: per type and per resource, added, removed and
//! changed, with the fields that changed. Resources are matched by type and
//! name and compared by their encoded bytes, so spelling, key order and
//! defaults in the request never show up as changes; only changed ones are
//! printed (as `GET` prints them, secrets redacted) to find their fields.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::BundleError;
use crate::{
    resource_type::ResourceType,
    schema::{self, StoredBundle, StoredResource},
};

/// Everything a PUT of `version` would change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Diff {
    /// `None` when nothing is stored: everything is added.
    pub stored_version: Option<String>,
    pub version: String,
    /// The types the stored or the new bundle has, in bundle order.
    pub types: Vec<TypeDiff>,
}

/// The changes to one list of the bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TypeDiff {
    /// Its bundle key: `clusters`, `endpoint_sources`, ...
    #[serde(rename = "type")]
    pub ty: String,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<Changed>,
    pub unchanged: usize,
}

/// One changed resource and what changed in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Changed {
    pub name: String,
    pub fields: Vec<FieldChange>,
}

/// One field that differs: absent on one side when added or removed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldChange {
    /// As in error paths: `virtual_hosts[0].routes[1].route.cluster`.
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new: Option<Value>,
}

impl Diff {
    /// Whether the PUT would change no resource.
    pub fn is_empty(&self) -> bool {
        self.types.iter().all(|t| t.added.is_empty() && t.removed.is_empty() && t.changed.is_empty())
    }

    /// Whether the PUT would be refused (409): the stored version with
    /// other content.
    pub fn reuses_version(&self) -> bool {
        self.stored_version.as_deref() == Some(self.version.as_str()) && !self.is_empty()
    }
}

/// Compares the stored bundle (`None`: there is none) with `new`.
pub fn diff(stored: Option<&StoredBundle>, new: &StoredBundle) -> Result<Diff, BundleError> {
    let descriptor = schema::bundle_descriptor();
    let mut types = Vec::new();
    for field in descriptor.fields() {
        let prost_reflect::Kind::Message(message) = field.kind() else { continue };
        let number = field.number();
        let before = stored.map(|bundle| of_field(bundle, number)).unwrap_or_default();
        let after = of_field(new, number);
        if before.is_empty() && after.is_empty() {
            continue;
        }
        let old_by_name: std::collections::HashMap<&str, &StoredResource> = before.iter().map(|r| (r.name.as_str(), *r)).collect();
        let mut changes = TypeDiff { ty: field.name().to_owned(), added: Vec::new(), removed: Vec::new(), changed: Vec::new(), unchanged: 0 };
        for resource in &after {
            match old_by_name.get(resource.name.as_str()) {
                None => changes.added.push(resource.name.clone()),
                Some(old) if old.value == resource.value => changes.unchanged += 1,
                Some(old) => {
                    let (old, new) = (printed(&message, old)?, printed(&message, resource)?);
                    let mut fields = Vec::new();
                    compare("", &old, &new, &mut fields);
                    changes.changed.push(Changed { name: resource.name.clone(), fields });
                }
            }
        }
        let new_names: std::collections::HashSet<&str> = after.iter().map(|r| r.name.as_str()).collect();
        changes.removed = before.iter().filter(|r| !new_names.contains(r.name.as_str())).map(|r| r.name.clone()).collect();
        types.push(changes);
    }
    // The xDS types first, in the table's order of bundle keys, as `counts` lists them.
    types.sort_by_key(|t| ResourceType::ALL.iter().position(|ty| ty.name() == t.ty).unwrap_or(usize::MAX));
    Ok(Diff { stored_version: stored.map(|s| s.version.clone()), version: new.version.clone(), types })
}

fn of_field(bundle: &StoredBundle, field: u32) -> Vec<&StoredResource> {
    bundle.resources.iter().filter(|r| r.field == field).collect()
}

/// A stored resource as GET prints it.
fn printed(message: &prost_reflect::MessageDescriptor, resource: &StoredResource) -> Result<Value, BundleError> {
    super::parse::resource_value(message, resource, true)
}

/// Appends to `out` every leaf under `path` where `old` and `new` differ:
/// objects key by key, lists index by index.
fn compare(path: &str, old: &Value, new: &Value, out: &mut Vec<FieldChange>) {
    let join = |key: &str| if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") };
    match (old, new) {
        (Value::Object(old), Value::Object(new)) => {
            let keys: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
            for key in keys {
                match (old.get(key), new.get(key)) {
                    (Some(a), Some(b)) => compare(&join(key), a, b, out),
                    (a, b) => out.push(FieldChange { path: join(key), old: a.cloned(), new: b.cloned() }),
                }
            }
        }
        (Value::Array(old), Value::Array(new)) => {
            for i in 0..old.len().max(new.len()) {
                let at = format!("{path}[{i}]");
                match (old.get(i), new.get(i)) {
                    (Some(a), Some(b)) => compare(&at, a, b, out),
                    (a, b) => out.push(FieldChange { path: at, old: a.cloned(), new: b.cloned() }),
                }
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(FieldChange { path: path.to_owned(), old: Some(a.clone()), new: Some(b.clone()) }),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::bundle::{accept, Format};

    fn stored(body: Value) -> StoredBundle {
        accept(body.to_string().as_bytes(), Format::Json).unwrap()
    }

    #[test]
    fn resources_are_added_removed_or_changed_by_name_with_the_fields_that_changed() {
        let old = stored(json!({"version": "1", "clusters": [{"name": "a", "connect_timeout": "1s"}, {"name": "gone"}, {"name": "same"}]}));
        let new = stored(json!({"version": "2",
            "clusters": [{"name": "same"}, {"name": "a", "connect_timeout": "2s", "lb_policy": "RANDOM"}, {"name": "fresh", "type": "EDS", "eds_cluster_config": {"eds_config": {"ads": {}}}}],
            "endpoint_sources": [{"cluster_name": "fresh", "cloud_map": {"namespace": "n", "service": "s", "port": 80}}]}));
        let changes = diff(Some(&old), &new).unwrap();
        assert_eq!((changes.stored_version.as_deref(), changes.version.as_str(), changes.is_empty(), changes.reuses_version()), (Some("1"), "2", false, false));
        let keys: Vec<&str> = changes.types.iter().map(|t| t.ty.as_str()).collect();
        assert_eq!(keys, ["clusters", "endpoint_sources"], "only lists either side has");
        let clusters = &changes.types[0];
        assert_eq!((clusters.added.clone(), clusters.removed.clone(), clusters.unchanged), (vec!["fresh".to_owned()], vec!["gone".to_owned()], 1));
        assert_eq!(clusters.changed.len(), 1);
        assert_eq!(clusters.changed[0].name, "a");
        assert_eq!(
            clusters.changed[0].fields,
            [
                FieldChange { path: "connect_timeout".into(), old: Some(json!("1s")), new: Some(json!("2s")) },
                FieldChange { path: "lb_policy".into(), old: None, new: Some(json!("RANDOM")) },
            ]
        );
        assert_eq!(changes.types[1].added, ["fresh"]);
    }

    #[test]
    fn nested_lists_are_compared_index_by_index_and_secrets_stay_redacted() {
        let route = |cluster: &str| {
            json!({"name": "r", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}]}]})
        };
        let secret = |key: &str| json!({"name": "tls", "tls_certificate": {"private_key": {"inline_string": key}}});
        let old = stored(json!({"version": "1", "clusters": [{"name": "a"}, {"name": "b"}], "routes": [route("a")], "secrets": [secret("old-key")]}));
        let new = stored(json!({"version": "1", "clusters": [{"name": "a"}, {"name": "b"}], "routes": [route("b")], "secrets": [secret("new-key")]}));
        let changes = diff(Some(&old), &new).unwrap();
        assert!(changes.reuses_version(), "the same version with other content would be a 409");
        let routes = changes.types.iter().find(|t| t.ty == "routes").unwrap();
        assert_eq!(routes.changed[0].fields, [FieldChange { path: "virtual_hosts[0].routes[0].route.cluster".into(), old: Some(json!("a")), new: Some(json!("b")) }]);
        let secrets = changes.types.iter().find(|t| t.ty == "secrets").unwrap();
        assert_eq!(secrets.changed[0].name, "tls", "a changed key is reported as a change...");
        let printed = serde_json::to_string(&secrets.changed[0]).unwrap();
        assert!(!printed.contains("old-key") && !printed.contains("new-key"), "...but never printed: {printed}");
        assert!(diff(Some(&new), &new).unwrap().is_empty());
        assert_eq!(diff(None, &new).unwrap().types[0].added, ["a", "b"]);
    }
}
