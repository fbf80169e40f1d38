//! What the subcommands print: aligned tables of the server's JSON answers,
//! and JSON indented without reordering its keys.

use serde_json::Value;

/// Left-aligned columns two spaces apart; the header is the first row.
/// Widths count characters, so a version with a `é` does not shift a column.
fn render(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns).map(|c| rows.iter().filter_map(|row| row.get(c)).map(|cell| cell.chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            line.extend(std::iter::repeat_n(' ', widths[c] - cell.chars().count()));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

/// `GET /resources` as a table, quarantined records after it.
pub fn bundles(list: &Value) -> String {
    let mut rows = vec![["NODE TYPE", "VERSION", "LISTENERS", "CLUSTERS", "ROUTES", "ENDPOINTS", "BYTES"].map(String::from).to_vec()];
    for entry in list["node_types"].as_array().into_iter().flatten() {
        rows.push(["node_type", "version", "listeners", "clusters", "routes", "endpoints", "resource_bytes"].iter().map(|key| text(&entry[*key])).collect());
    }
    let mut out = if rows.len() == 1 { "no bundles stored\n".to_owned() } else { render(&rows) };
    for record in list["quarantined"].as_array().into_iter().flatten() {
        out.push_str(&format!("quarantined: {}\n", compact(record)));
    }
    out
}

/// `GET /nodes` as a table: per resource type `sent/acked` versions (one
/// version when they agree), `!` where the last word was a NACK; the NACK
/// errors follow the table, in red on a terminal.
pub fn nodes(nodes: &Value, color: bool) -> String {
    const TYPES: [&str; 4] = ["listeners", "clusters", "routes", "endpoints"];
    let mut rows = vec![["NODE ID", "NODE TYPE", "SERVICE", "LISTENERS", "CLUSTERS", "ROUTES", "ENDPOINTS"].map(String::from).to_vec()];
    let mut nacks = Vec::new();
    for stream in nodes["streams"].as_array().into_iter().flatten() {
        let mut row: Vec<String> = ["node_id", "node_type", "service"].iter().map(|key| text(&stream[*key])).collect();
        for ty in TYPES {
            let status = &stream["types"][ty];
            if status.is_null() {
                row.push("-".to_owned());
                continue;
            }
            let (sent, acked) = (text(&status["sent_version"]), text(&status["acked_version"]));
            let mut cell = if sent == acked { sent } else { format!("{sent}/{acked}") };
            if let Some(rejected) = status["rejected"].as_object() {
                cell.push('!');
                let error = rejected.get("error").map(text).unwrap_or_default();
                // Envoy's errors often carry a multi-line proto dump: indent it under the NACK.
                let error = error.trim_end().replace('\n', "\n    ");
                let (node_id, version, nonce) = (text(&stream["node_id"]), rejected.get("version").map(text).unwrap_or_default(), rejected.get("nonce").map(text).unwrap_or_default());
                nacks.push(format!("NACK {node_id} {ty} version {version} (nonce {nonce}): {error}"));
            }
            row.push(cell);
        }
        rows.push(row);
    }
    if rows.len() == 1 {
        return "no Envoys connected\n".to_owned();
    }
    let mut out = render(&rows);
    out.push_str("(sent/ACKed version per type; ! marks a NACK)\n");
    for nack in nacks {
        if color {
            out.push_str(&format!("\x1b[1;31m{nack}\x1b[0m\n"));
        } else {
            out.push_str(&nack);
            out.push('\n');
        }
    }
    out
}

/// `GET /resources/{t}/history` as a table, newest first as the server lists it.
pub fn history(history: &Value) -> String {
    let mut rows = vec![["VERSION", "STORED AT (UTC)", "LISTENERS", "CLUSTERS", "ROUTES", "ENDPOINTS", "NOTE"].map(String::from).to_vec()];
    for entry in history["versions"].as_array().into_iter().flatten() {
        let at = entry["at_unix_ms"].as_u64().map_or_else(|| "-".to_owned(), utc);
        let mut note = Vec::new();
        if entry["current"].as_bool() == Some(true) {
            note.push("current".to_owned());
        }
        if let Some(of) = entry["rollback_of"].as_str() {
            note.push(format!("rollback to {of}"));
        }
        let mut row = vec![text(&entry["version"]), at];
        row.extend(["listeners", "clusters", "routes", "endpoints"].iter().map(|key| text(&entry[*key])));
        row.push(note.join(", "));
        rows.push(row);
    }
    if rows.len() == 1 {
        return format!("no versions stored for {}\n", text(&history["node_type"]));
    }
    render(&rows)
}

/// `2026-12-01 13:45:07` from milliseconds since the epoch.
fn utc(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}", rest / 3600, rest / 60 % 60, rest % 60)
}

fn compact(value: &Value) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// Indents JSON two spaces per level, keeping its key order (a
/// `serde_json::Value` would sort the keys). Input that is not JSON comes
/// back as it is.
/// A canary rollout (`GET /resources/{t}/rollout`) as a few lines.
pub fn rollout(rollout: &Value) -> String {
    let text = |key: &str| rollout[key].as_str().unwrap_or("-").to_owned();
    let list = |key: &str| {
        let items: Vec<&str> = rollout[key].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        if items.is_empty() { "none".to_owned() } else { items.join(", ") }
    };
    let mut out = format!(
        "{}: rollout of version {:?} (from {:?}) is {}\ncanaries ({}): {}\nacked: {}\n",
        text("node_type"),
        text("version"),
        text("previous_version"),
        text("state"),
        text("canary"),
        list("canaries"),
        list("acked"),
    );
    if let Some(error) = rollout["error"].as_str() {
        out.push_str(&format!("halted because: {error}\n"));
    }
    if let Some(version) = rollout["halted_version"].as_str() {
        out.push_str(&format!("canaries are back on the previous config as version {version:?}\n"));
    }
    out
}

pub fn pretty_json(json: &[u8]) -> String {
    let Ok(text) = std::str::from_utf8(json) else { return String::from_utf8_lossy(json).into_owned() };
    if serde_json::from_str::<serde::de::IgnoredAny>(text).is_err() {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() * 2);
    let mut depth = 0usize;
    let (mut in_string, mut escaped) = (false, false);
    let mut chars = text.chars().peekable();
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.extend(std::iter::repeat_n("  ", depth));
    };
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                while chars.peek().is_some_and(|c| c.is_ascii_whitespace()) {
                    chars.next();
                }
                // `{}` and `[]` stay on one line.
                if let Some(close @ ('}' | ']')) = chars.peek().copied() {
                    out.push(close);
                    chars.next();
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_ascii_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn pretty_json_keeps_key_order_and_strings() {
        let raw = br#"{"version":"1","listeners":[{"name":"a, {b}: \"c\"","x":{},"y":[]}],"clusters":[1,2]}"#;
        let pretty = pretty_json(raw);
        assert_eq!(
            pretty,
            "{\n  \"version\": \"1\",\n  \"listeners\": [\n    {\n      \"name\": \"a, {b}: \\\"c\\\"\",\n      \"x\": {},\n      \"y\": []\n    }\n  ],\n  \"clusters\": [\n    1,\n    2\n  ]\n}"
        );
        let reparsed: Value = serde_json::from_str(&pretty).unwrap();
        assert_eq!(reparsed, serde_json::from_slice::<Value>(raw).unwrap());
        assert_eq!(pretty_json(b"not json"), "not json");
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(1_764_590_000_000), "2025-12-01 11:53:20");
        assert_eq!(utc(951_825_600_000), "2000-02-29 12:00:00");
    }

    #[test]
    fn nodes_table_marks_nacks_and_colors_only_when_asked() {
        let listing = json!({"streams": [{
            "node_id": "sidecar-a", "node_type": "sidecar", "service": "ads",
            "types": {
                "clusters": {"sent_version": "2", "acked_version": "2", "rejected": null},
                "listeners": {"sent_version": "2", "acked_version": "1", "rejected": {"version": "2", "nonce": "6", "error": "bad listener\nline two\n", "at_unix_ms": 1}}
            }
        }]});
        let plain = nodes(&listing, false);
        let lines: Vec<&str> = plain.lines().collect();
        assert_eq!(lines[0], "NODE ID    NODE TYPE  SERVICE  LISTENERS  CLUSTERS  ROUTES  ENDPOINTS");
        assert_eq!(lines[1], "sidecar-a  sidecar    ads      2/1!       2         -       -");
        assert!(plain.contains("NACK sidecar-a listeners version 2 (nonce 6): bad listener\n    line two\n") && !plain.contains('\x1b'), "{plain}");
        assert!(nodes(&listing, true).contains("\x1b[1;31mNACK sidecar-a listeners"));
    }

    #[test]
    fn history_table_notes_current_and_rollbacks() {
        let answer = json!({"node_type": "sidecar", "versions": [
            {"version": "v3", "at_unix_ms": 1_764_590_000_000u64, "listeners": 1, "clusters": 1, "routes": 0, "endpoints": 0, "current": true, "rollback_of": "v1"},
            {"version": "v2", "at_unix_ms": 1_764_580_000_000u64, "listeners": 1, "clusters": 2, "routes": 1, "endpoints": 2, "current": false, "rollback_of": null},
        ]});
        let table = history(&answer);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[1].starts_with("v3       2025-12-01 11:53:20") && lines[1].ends_with("current, rollback to v1"), "{table}");
        assert!(lines[2].starts_with("v2 ") && lines[2].ends_with('2'), "{table}");
    }
}
