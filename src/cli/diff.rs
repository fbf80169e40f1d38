//! `sxds diff`: what a PUT would change, per resource type and name. Both
//! sides are bundle JSON as `bundle::to_json` prints it (the server's GET,
//! and the local file through the server's own parser), so spelling, key
//! order and defaults never show up as changes.

use std::collections::BTreeMap;

use serde_json::value::RawValue;

use super::table::pretty_json;

/// The bundle keys in the order they are reported, with each resource's name field.
const TYPES: [(&str, &str); 4] = [("listeners", "name"), ("clusters", "name"), ("routes", "name"), ("endpoints", "cluster_name")];

/// Everything a PUT would change.
#[derive(Debug, PartialEq, Eq)]
pub struct Changes {
    /// `None` when no bundle is stored: everything is added.
    pub stored_version: Option<String>,
    pub version: String,
    pub types: Vec<TypeChanges>,
}

/// The changes to one resource type, by resource name.
#[derive(Debug, PartialEq, Eq)]
pub struct TypeChanges {
    pub ty: &'static str,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Name and a unified diff of the pretty JSON, stored to new.
    pub changed: Vec<(String, String)>,
    pub unchanged: usize,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.types.iter().all(|t| t.added.is_empty() && t.removed.is_empty() && t.changed.is_empty())
    }
}

/// A printed bundle: its version and each type's resources by name, in order.
struct Printed<'a> {
    version: String,
    resources: BTreeMap<&'static str, Vec<(String, &'a RawValue)>>,
}

fn read<'a>(json: &'a [u8], side: &str) -> Result<Printed<'a>, String> {
    let envelope: BTreeMap<String, &RawValue> = serde_json::from_slice(json).map_err(|e| format!("the {side} bundle is not a bundle: {e}"))?;
    let version = match envelope.get("version") {
        Some(raw) => serde_json::from_str(raw.get()).map_err(|e| format!("the {side} bundle's version: {e}"))?,
        None => String::new(),
    };
    let mut resources = BTreeMap::new();
    for (ty, name_field) in TYPES {
        let Some(raw) = envelope.get(ty) else { continue };
        let list: Vec<&RawValue> = serde_json::from_str(raw.get()).map_err(|e| format!("the {side} bundle's {ty}: {e}"))?;
        let mut named = Vec::with_capacity(list.len());
        for resource in list {
            let fields: BTreeMap<String, &RawValue> = serde_json::from_str(resource.get()).map_err(|e| format!("the {side} bundle's {ty}: {e}"))?;
            let name = fields.get(name_field).and_then(|raw| serde_json::from_str::<String>(raw.get()).ok()).unwrap_or_default();
            named.push((name, resource));
        }
        resources.insert(ty, named);
    }
    Ok(Printed { version, resources })
}

/// Compares the stored bundle (`None`: there is none) with the proposed
/// one. This is the one place the comparison is made, so it can move to the
/// server (`?dry_run=true`) without touching the output.
pub fn compare(stored: Option<&[u8]>, proposed: &[u8]) -> Result<Changes, String> {
    let new = read(proposed, "new")?;
    let old = stored.map(|json| read(json, "stored")).transpose()?;
    let mut types = Vec::new();
    for (ty, _) in TYPES {
        let empty = Vec::new();
        let before = old.as_ref().and_then(|old| old.resources.get(ty)).unwrap_or(&empty);
        let after = new.resources.get(ty).unwrap_or(&empty);
        let before_by_name: BTreeMap<&str, &RawValue> = before.iter().map(|(name, raw)| (name.as_str(), *raw)).collect();
        let after_names: std::collections::BTreeSet<&str> = after.iter().map(|(name, _)| name.as_str()).collect();
        let mut changes = TypeChanges { ty, added: Vec::new(), removed: Vec::new(), changed: Vec::new(), unchanged: 0 };
        for (name, raw) in after {
            match before_by_name.get(name.as_str()) {
                None => changes.added.push(name.clone()),
                Some(old) if old.get() == raw.get() => changes.unchanged += 1,
                Some(old) => {
                    let (old, new) = (pretty_json(old.get().as_bytes()) + "\n", pretty_json(raw.get().as_bytes()) + "\n");
                    let diff = similar::TextDiff::from_lines(&old, &new).unified_diff().context_radius(3).header("stored", "new").to_string();
                    changes.changed.push((name.clone(), diff));
                }
            }
        }
        changes.removed = before.iter().map(|(name, _)| name).filter(|name| !after_names.contains(name.as_str())).cloned().collect();
        types.push(changes);
    }
    Ok(Changes { stored_version: old.map(|old| old.version), version: new.version, types })
}

/// The changes as text; `+`/`-` lines in green/red when `color`.
pub fn render(node_type: &str, changes: &Changes, color: bool) -> String {
    let paint = |code: &str, line: &str| if color { format!("\x1b[{code}m{line}\x1b[0m") } else { line.to_owned() };
    let mut out = match &changes.stored_version {
        None => format!("{node_type}: no bundle stored; everything is added (version {:?})\n", changes.version),
        Some(stored) if *stored == changes.version => format!("{node_type}: version {stored:?} (unchanged)\n"),
        Some(stored) => format!("{node_type}: version {stored:?} -> {:?}\n", changes.version),
    };
    if changes.stored_version.is_some() && changes.is_empty() {
        out.push_str("no resource changes\n");
        return out;
    }
    if changes.stored_version.as_ref() == Some(&changes.version) {
        out.push_str("note: the same version with other content: the server would refuse this PUT (409); give it a new version\n");
    }
    for ty in &changes.types {
        if ty.added.is_empty() && ty.removed.is_empty() && ty.changed.is_empty() {
            if ty.unchanged > 0 {
                out.push_str(&format!("{}: {} unchanged\n", ty.ty, ty.unchanged));
            }
            continue;
        }
        let summary = [(ty.added.len(), "added"), (ty.removed.len(), "removed"), (ty.changed.len(), "changed"), (ty.unchanged, "unchanged")]
            .iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, what)| format!("{n} {what}"))
            .collect::<Vec<_>>()
            .join(", ");
        out.push_str(&format!("{}: {summary}\n", ty.ty));
        for name in &ty.added {
            out.push_str(&paint("32", &format!("  + {name} (added)")));
            out.push('\n');
        }
        for name in &ty.removed {
            out.push_str(&paint("31", &format!("  - {name} (removed)")));
            out.push('\n');
        }
        for (name, diff) in &ty.changed {
            out.push_str(&format!("  ~ {name} (changed)\n"));
            for line in diff.lines() {
                let line = format!("    {line}");
                let code = match line.trim_start().as_bytes().first() {
                    _ if line.trim_start().starts_with("+++") || line.trim_start().starts_with("---") => "1",
                    Some(b'+') => "32",
                    Some(b'-') => "31",
                    Some(b'@') => "36",
                    _ => "",
                };
                out.push_str(&if code.is_empty() { line } else { paint(code, &line) });
                out.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn bytes(value: serde_json::Value) -> Vec<u8> {
        value.to_string().into_bytes()
    }

    #[test]
    fn added_removed_and_changed_resources_by_name() {
        let stored = bytes(json!({"version": "1", "clusters": [{"name": "a", "connect_timeout": "1s"}, {"name": "gone"}, {"name": "same"}]}));
        let new = bytes(json!({"version": "2", "clusters": [{"name": "a", "connect_timeout": "2s"}, {"name": "same"}, {"name": "fresh"}],
                               "endpoints": [{"cluster_name": "fresh"}]}));
        let changes = compare(Some(&stored), &new).unwrap();
        assert_eq!((changes.stored_version.as_deref(), changes.version.as_str()), (Some("1"), "2"));
        let clusters = &changes.types[1];
        assert_eq!((clusters.added.as_slice(), clusters.removed.as_slice(), clusters.unchanged), (&["fresh".to_owned()][..], &["gone".to_owned()][..], 1));
        let (name, diff) = &clusters.changed[0];
        assert_eq!(name, "a");
        assert!(diff.contains("-  \"connect_timeout\": \"1s\"") && diff.contains("+  \"connect_timeout\": \"2s\""), "{diff}");
        assert_eq!(changes.types[3].added, ["fresh"], "endpoints are named by cluster_name");

        let text = render("sidecar", &changes, false);
        assert!(text.starts_with("sidecar: version \"1\" -> \"2\"\n"), "{text}");
        assert!(text.contains("clusters: 1 added, 1 removed, 1 changed, 1 unchanged\n  + fresh (added)\n  - gone (removed)\n  ~ a (changed)\n"), "{text}");
        assert!(!text.contains('\x1b') && render("sidecar", &changes, true).contains("\x1b[32m"));
    }

    #[test]
    fn nothing_stored_means_everything_is_added_and_equal_bundles_have_no_changes() {
        let bundle = bytes(json!({"version": "1", "listeners": [{"name": "l"}]}));
        let changes = compare(None, &bundle).unwrap();
        assert_eq!(changes.types[0].added, ["l"]);
        assert!(render("edge", &changes, false).starts_with("edge: no bundle stored; everything is added"));
        let edited = bytes(json!({"version": "1", "listeners": [{"name": "l", "stat_prefix": "x"}]}));
        assert!(render("edge", &compare(Some(&bundle), &edited).unwrap(), false).contains("would refuse this PUT (409)"));
        let same = compare(Some(&bundle), &bundle).unwrap();
        assert!(same.is_empty());
        assert_eq!(render("edge", &same, false), "edge: version \"1\" (unchanged)\nno resource changes\n");
    }
}
