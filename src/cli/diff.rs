//! `sxds diff`: what a PUT would change, as the server's dry run
//! (`PUT ?dry_run=true`) reports it, per resource type and name, with the
//! fields of each changed resource. The server matches resources by their
//! encoded bytes, so spelling, key order and defaults never show up as
//! changes.

use sxds::bundle::Diff;

/// The changes as text; `+`/`-` lines in green/red when `color`.
pub fn render(node_type: &str, changes: &Diff, color: bool) -> String {
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
    if changes.reuses_version() {
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
        for changed in &ty.changed {
            out.push_str(&format!("  ~ {} (changed)\n", changed.name));
            if changed.fields.is_empty() {
                out.push_str("      (only redacted values differ)\n");
            }
            for field in &changed.fields {
                for (sign, code, value) in [("-", "31", &field.old), ("+", "32", &field.new)] {
                    if let Some(value) = value {
                        out.push_str(&paint(code, &format!("    {sign} {}: {value}", field.path)));
                        out.push('\n');
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use sxds::bundle::{accept, diff, Format};

    fn stored(value: serde_json::Value) -> sxds::schema::StoredBundle {
        accept(value.to_string().as_bytes(), Format::Json).unwrap()
    }

    #[test]
    fn added_removed_and_changed_resources_by_name_with_their_changed_fields() {
        let old = stored(json!({"version": "1", "clusters": [{"name": "a", "connect_timeout": "1s"}, {"name": "gone"}, {"name": "same"}]}));
        let new = stored(json!({"version": "2", "clusters": [{"name": "a", "connect_timeout": "2s"}, {"name": "same"}, {"name": "fresh"}]}));
        let changes = diff(Some(&old), &new).unwrap();
        let text = render("sidecar", &changes, false);
        assert!(text.starts_with("sidecar: version \"1\" -> \"2\"\n"), "{text}");
        assert!(
            text.contains("clusters: 1 added, 1 removed, 1 changed, 1 unchanged\n  + fresh (added)\n  - gone (removed)\n  ~ a (changed)\n    - connect_timeout: \"1s\"\n    + connect_timeout: \"2s\"\n"),
            "{text}"
        );
        assert!(!text.contains('\x1b') && render("sidecar", &changes, true).contains("\x1b[32m"));
    }

    #[test]
    fn nothing_stored_means_everything_is_added_and_equal_bundles_have_no_changes() {
        let bundle = stored(json!({"version": "1", "listeners": [{"name": "l"}]}));
        assert!(render("edge", &diff(None, &bundle).unwrap(), false).starts_with("edge: no bundle stored; everything is added"));
        let edited = stored(json!({"version": "1", "listeners": [{"name": "l", "stat_prefix": "x"}]}));
        assert!(render("edge", &diff(Some(&bundle), &edited).unwrap(), false).contains("would refuse this PUT (409)"));
        assert_eq!(render("edge", &diff(Some(&bundle), &bundle).unwrap(), false), "edge: version \"1\" (unchanged)\nno resource changes\n");
    }
}
