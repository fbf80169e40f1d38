//! Tests of strict reading: repeated keys, YAML depth and aliases, and the
//! costs that must stay linear.

use std::time::{Duration, Instant};

use serde_json::json;

use super::*;
use crate::bundle::{parse, Format};

fn refusal(body: &str, format: Format) -> BundleError {
    parse(body.as_bytes(), format).expect_err("refused")
}

/// CPU time of the calling thread (Linux schedstat), to bound work
/// without trusting the wall clock of a shared machine.
fn thread_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    Some(Duration::from_nanos(stat.split_whitespace().next()?.parse().ok()?))
}

/// Runs `f` and asserts it used less than `bound` of CPU (where the
/// platform tells).
fn within_cpu<T>(bound: Duration, what: &str, f: impl FnOnce() -> T) -> T {
    let before = thread_cpu();
    let result = f();
    if let (Some(before), Some(after)) = (before, thread_cpu()) {
        let used = after - before;
        assert!(used < bound, "{what}: {used:?} of CPU, bound {bound:?}");
    }
    result
}

fn depth(value: &serde_json::Value) -> usize {
    match value {
        serde_json::Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        serde_json::Value::Object(fields) => 1 + fields.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

// --- Repeated keys ---

#[test]
fn repeated_envelope_keys_are_refused_in_json_and_yaml() {
    let cases = [
        (r#"{"version": "a", "version": "b"}"#, "version\n", "version"),
        (r#"{"clusters": [{"name": "a"}], "clusters": [{"name": "b"}]}"#, "", "clusters"),
    ];
    for (json, _, key) in cases {
        let e = refusal(json, Format::Json);
        assert_eq!(e.path.as_deref(), Some(key), "{json}: {e:?}");
        assert_eq!(e.message, format!("duplicate key \"{key}\""));
    }
    for yaml in ["version: a\nversion: b\n", "{version: a, version: b}"] {
        let e = refusal(yaml, Format::Yaml);
        assert_eq!(e.path.as_deref(), Some("version"), "{yaml}: {e:?}");
        assert_eq!(e.message, "duplicate key \"version\"");
    }
    let e = refusal("clusters:\n- name: a\nclusters:\n- name: b\n", Format::Yaml);
    assert_eq!(e.path.as_deref(), Some("clusters"), "{e:?}");
    // One spelling per key: the same key twice is the refusal, not the
    // order or the spelling of different keys.
    assert!(parse(br#"{"version": "a", "clusters": []}"#, Format::Json).is_ok());
}

/// The resources the finding named, each in JSON and in YAML, and the
/// path each refusal must carry.
fn repeated_keys_in_resources() -> Vec<(serde_json::Value, &'static str, &'static str, &'static str)> {
    // (bundle without the repetition, where to splice the repeated key
    // in as "<key>: <value>", the key, the expected path)
    vec![
        (
            json!({"clusters": [{"name": "a"}, {"name": "b"}, {"name": "c"}, {"name": "d", "connect_timeout": "1s"}]}),
            "/clusters/3",
            "name",
            "clusters[3].name",
        ),
        (
            json!({"clusters": [{"name": "a", "metadata": {"filter_metadata": {"envoy.lb": {"canary": true}, "x": {}}}}]}),
            "/clusters/0/metadata/filter_metadata",
            "envoy.lb",
            "clusters[0].metadata.filter_metadata.envoy.lb",
        ),
        (
            json!({"clusters": [{"name": "a", "metadata": {"filter_metadata": {"x": {"k": 1, "list": [{"a": 1}, {"b": {"deep": 1}}]}}}}]}),
            "/clusters/0/metadata/filter_metadata/x/list/1/b",
            "deep",
            "clusters[0].metadata.filter_metadata.x.list[1].b.deep",
        ),
        (
            json!({"endpoints": [{"cluster_name": "e", "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "10.0.0.1", "port_value": 80}}}},
                {"endpoint": {"address": {"socket_address": {"address": "10.0.0.2", "port_value": 80}}}}
            ]}]}]}),
            "/endpoints/0/endpoints/0/lb_endpoints/1/endpoint/address/socket_address",
            "port_value",
            "endpoints[0].endpoints[0].lb_endpoints[1].endpoint.address.socket_address.port_value",
        ),
    ]
}

/// `value` printed as JSON with `"key": <existing value>` added once more
/// at the start of the object at `pointer`.
fn json_with_repeat(value: &serde_json::Value, pointer: &str, key: &str) -> String {
    let mut marked = value.clone();
    let object = marked.pointer_mut(pointer).and_then(serde_json::Value::as_object_mut).expect("an object");
    let repeated = object[key].clone();
    object.insert("\u{0}REPEAT".into(), json!(null));
    let printed = marked.to_string();
    printed.replace(r#""\u0000REPEAT":null"#, &format!("{}:{repeated}", json!(key)))
}

#[test]
fn repeated_keys_inside_resources_are_refused_with_their_path() {
    for (bundle, pointer, key, path) in repeated_keys_in_resources() {
        assert!(parse(bundle.to_string().as_bytes(), Format::Json).is_ok(), "{bundle}");
        let json = json_with_repeat(&bundle, pointer, key);
        let e = refusal(&json, Format::Json);
        assert_eq!(e.path.as_deref(), Some(path), "{json}: {e:?}");
        assert_eq!(e.message, format!("duplicate key {key:?}"));
        // JSON is YAML: the same body read as YAML is refused alike.
        let e = refusal(&json, Format::Yaml);
        assert_eq!(e.path.as_deref(), Some(path), "as YAML {json}: {e:?}");
        assert_eq!(e.message, format!("duplicate key {key:?}"));
    }
}

#[test]
fn repeated_keys_in_block_yaml_are_refused_with_their_path() {
    let yaml = "clusters:\n- name: a\n- name: b\n  metadata:\n    filter_metadata:\n      x: {k: 1}\n      x: {k: 2}\n";
    let e = refusal(yaml, Format::Yaml);
    assert_eq!(e.path.as_deref(), Some("clusters[1].metadata.filter_metadata.x"), "{e:?}");
    let e = refusal("clusters:\n- name: a\n  connect_timeout: 1s\n  name: b\n", Format::Yaml);
    assert_eq!(e.path.as_deref(), Some("clusters[0].name"), "{e:?}");
    // A YAML key is a string to JSON: `1` and "1" are the same key.
    let yaml = "clusters:\n- name: a\n  metadata: {filter_metadata: {x: {1: a, '1': b}}}\n";
    assert_eq!(refusal(yaml, Format::Yaml).path.as_deref(), Some("clusters[0].metadata.filter_metadata.x.1"));
}

#[test]
fn what_prost_reflect_refused_already_is_now_named_a_duplicate() {
    // A oneof member twice and `@type` twice were refused, as "multiple
    // fields for oneof" and "unrecognized field '@type'"; a plain field,
    // a map key and a Struct key were silently last-wins.
    let body = r#"{"clusters": [{"name": "a", "type": "STATIC", "type": "EDS"}]}"#;
    let e = refusal(body, Format::Json);
    assert_eq!((e.path.as_deref(), e.message.as_str()), (Some("clusters[0].type"), "duplicate key \"type\""));
    let hcm = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
    let body = format!(
        r#"{{"listeners": [{{"name": "l", "filter_chains": [{{"filters": [{{"name": "f", "typed_config": {{"@type": "{hcm}", "stat_prefix": "s", "@type": "{hcm}"}}}}]}}]}}]}}"#
    );
    let e = refusal(&body, Format::Json);
    assert_eq!(e.path.as_deref(), Some("listeners[0].filter_chains[0].filters[0].typed_config.@type"), "{e:?}");
    assert_eq!(e.message, "duplicate key \"@type\"");
}

#[test]
fn keys_are_compared_after_unescaping_and_large_objects_too() {
    let e = refusal(r#"{"clusters": [{"name": "a", "na\u006de": "b"}]}"#, Format::Json);
    assert_eq!(e.path.as_deref(), Some("clusters[0].name"), "{e:?}");

    // Past the linear scan: a Struct of 100 keys whose last repeats the 50th.
    let mut fields: Vec<String> = (0..100).map(|i| format!(r#""k{i}": {i}"#)).collect();
    fields.push(r#""k50": 0"#.to_owned());
    let body = format!(r#"{{"clusters": [{{"name": "a", "metadata": {{"filter_metadata": {{"x": {{{}}}}}}}}}]}}"#, fields.join(","));
    let e = refusal(&body, Format::Json);
    assert_eq!(e.path.as_deref(), Some("clusters[0].metadata.filter_metadata.x.k50"), "{e:?}");
    fields.pop();
    let body = body.replace(r#","k50": 0"#, "");
    assert!(parse(body.as_bytes(), Format::Json).is_ok());
}

#[test]
fn the_same_key_in_different_objects_is_not_a_repetition() {
    let body = json!({"clusters": [
        {"name": "a", "metadata": {"filter_metadata": {"name": {"name": [{"name": 1}, {"name": 2}]}}}},
        {"name": "b"}
    ]});
    assert!(parse(body.to_string().as_bytes(), Format::Json).is_ok());
    let json = RawValue::from_string(body["clusters"][0].to_string()).unwrap();
    assert!(unique_keys(&json, || unreachable!("no refusal")).is_ok());
}

#[test]
fn a_huge_object_is_checked_in_linear_time() {
    // 300,000 distinct keys: a linear scan per key would take minutes.
    let fields: Vec<String> = (0..300_000).map(|i| format!(r#""key_{i}": {i}"#)).collect();
    let json = RawValue::from_string(format!("{{{}}}", fields.join(","))).unwrap();
    within_cpu(Duration::from_secs(5), "300,000 keys", || assert!(unique_keys(&json, || unreachable!()).is_ok()));
    let repeated = RawValue::from_string(format!("{{{}, \"key_7\": 0}}", fields.join(","))).unwrap();
    let e = unique_keys(&repeated, || "clusters[0]".to_owned()).unwrap_err();
    assert_eq!(e.path.as_deref(), Some("clusters[0].key_7"));
}

// --- YAML depth ---

fn nested(open: &str, close: &str, levels: usize) -> String {
    format!("{}{}", open.repeat(levels), close.repeat(levels))
}

fn assert_too_deep(body: &str) {
    let e = yaml_shape(body.as_bytes()).expect_err("too deep");
    assert_eq!(e.path, None, "{e:?}");
    assert!(e.message.contains("deeper than the limit of 64 levels"), "{e:?}");
}

#[test]
fn deep_yaml_is_refused_before_the_quadratic_work() {
    // libyaml rescans the simple keys of every flow level for every
    // token: in serde_yaml_ng nested flow mappings of 80 KB took 1.2
    // CPU-s and each doubling takes four times as long (200 KB: about 7
    // s, 2 MB: about 12 min). Every shape is refused within 2 s of CPU.
    for (open, close) in [("[", "]"), ("{", "}"), ("[\n", "]\n"), ("{a: ", "}"), ("[a, ", "]")] {
        for bytes in [200_000, 2_000_000] {
            let levels = bytes / (open.len() + close.len());
            let body = nested(open, close, levels);
            let e = within_cpu(Duration::from_secs(2), &format!("{bytes} bytes of {open:?}"), || {
                parse(body.as_bytes(), Format::Yaml).expect_err("refused")
            });
            assert!(e.message.contains("64 levels") && e.path.is_none(), "{e:?}");
        }
    }
    // Unbalanced and invalid after the brackets: refused all the same,
    // libyaml scans before it finds the error.
    within_cpu(Duration::from_secs(2), "unclosed", || assert_too_deep(&"[".repeat(2_000_000)));
}

#[test]
fn block_nesting_counts_too_and_the_limit_is_exact() {
    let block_sequence = |levels: usize| format!("{}x\n", "- ".repeat(levels));
    let block_mapping = |levels: usize| (0..levels).map(|i| format!("{}k{i}:\n", " ".repeat(i))).collect::<String>() + &" ".repeat(levels) + "x\n";
    for body in [nested("[", "]", 64), block_sequence(64), block_mapping(64), format!("a:\n  b: {}", nested("[", "]", 62))] {
        let shape = yaml_shape(body.as_bytes()).expect("at the limit");
        assert_eq!(shape.depth, 64, "{body}");
    }
    for body in [nested("[", "]", 65), block_sequence(65), block_mapping(65), format!("a:\n  b: {}", nested("[", "]", 63))] {
        assert_too_deep(&body);
        // Whichever way the body is read.
        assert_eq!(yaml_to_json(body.as_bytes()).unwrap_err(), too_deep(), "{body}");
    }
    // Block nesting alone skips the event pass and is counted as the value is built.
    assert!(!needs_event_check(block_sequence(65).as_bytes()));
    assert_eq!(depth(&yaml_to_json(block_sequence(64).as_bytes()).unwrap()), 64);
    assert_eq!(depth(&yaml_to_json(block_mapping(64).as_bytes()).unwrap()), 64);
    within_cpu(Duration::from_secs(2), "2 MB of block sequence", || assert_too_deep(&block_sequence(1_000_000)));
}

#[test]
fn brackets_in_scalars_and_comments_do_not_count() {
    let many = "[".repeat(200);
    let closes = "]".repeat(200);
    for body in [
        format!("a: \"{many}\"\nb: '{closes}'\n"),
        format!("a: x{many}\nb: y{closes}\n"),
        format!("# {many}\na: 1 # {closes}\n"),
        format!("a: |\n  {many}\n  {closes}\nb: >\n  {many}\n"),
        format!("a: [\"{many}\", '{closes}', 'don''t']\n"),
        format!("a: !<t{closes}> x\n"),
    ] {
        let shape = yaml_shape(body.as_bytes()).unwrap_or_else(|e| panic!("{body}: {e:?}"));
        assert!(shape.depth <= 2, "{body}: {shape:?}");
        assert!(yaml_to_json(body.as_bytes()).is_ok(), "{body}");
    }
}

/// Bodies that try to hide deep flow nesting from a scanner that gets a
/// quote, comment or block scalar wrong. Each must still be refused at
/// 65 levels and, with 60, read as serde_yaml_ng reads it.
#[test]
fn nesting_hidden_behind_quotes_comments_and_block_scalars_is_still_counted() {
    type Disguise = (&'static str, fn(usize) -> String);
    let disguises: [Disguise; 10] = [
        // An apostrophe in a plain scalar opens no quote.
        ("apostrophe", |n| format!("a: don't\nb: {}\n", nested("[", "]", n))),
        ("apostrophe in flow", |n| format!("[don't, {}, 'x']\n", nested("[", "]", n - 1))),
        // Closing brackets inside quotes close nothing.
        ("quoted closers", |n| format!("{}{}\n", "[ \"]]]]\", ".repeat(n), "]".repeat(n))),
        ("single-quoted closers", |n| format!("{}{}\n", "[ ']]'']]', ".repeat(n), "]".repeat(n))),
        ("escaped quote", |n| format!("a: \"x\\\" ]]]]\"\nb: {}\n", nested("[", "]", n))),
        // A `#` inside a plain scalar starts no comment.
        ("hash in a scalar", |n| format!("a: x#{}\nb: {}\n", "]".repeat(70), nested("[", "]", n))),
        ("comment", |n| format!("# ]]]]]]]]\na: {} # ]]]]\n", nested("[", "]", n))),
        // A block scalar ends where its indentation does.
        ("block scalar", |n| format!("a: |\n  ]]]]]]]]\n  '\nb: {}\n", nested("[", "]", n))),
        // Closing brackets in a plain scalar of block context and in a verbatim tag.
        ("plain closers", |n| format!("a: x]]]]]]]]\nb: {}\n", nested("[", "]", n))),
        ("tag closers", |n| format!("{}{}\n", "[ !<t]]]]> ".repeat(n), "]".repeat(n))),
    ];
    for (name, body) in disguises {
        let deep = body(65);
        assert_too_deep(&deep);
        assert!(needs_event_check(deep.as_bytes()), "{name}");
        assert_eq!(yaml_to_json(deep.as_bytes()).unwrap_err(), too_deep(), "{name}");
        let shallow = body(60);
        let expected: Result<serde_json::Value, _> = serde_yaml_ng::from_slice(shallow.as_bytes());
        let shape = yaml_shape(shallow.as_bytes());
        match expected {
            Ok(value) => {
                assert_eq!(shape.map(|s| s.depth).ok(), Some(depth(&value)), "{name}: {shallow}");
                assert_eq!(yaml_to_json(shallow.as_bytes()).ok(), Some(value), "{name}");
            }
            // Not valid YAML, but not refused for its depth either.
            Err(_) => assert!(shape.is_err_and(|e| e.message.starts_with("malformed YAML:")), "{name}: {shallow}"),
        }
    }
}

/// Tiny pseudo-random YAML made of the characters that matter to the
/// scanner: wherever serde_yaml_ng (libyaml) reads a value, the
/// pre-check measures its depth exactly and the strict conversion gives
/// the same value; wherever the pre-check finds a syntax error,
/// serde_yaml_ng does too; flow nesting never passes what
/// [`unclosed_openers`] allows.
#[test]
fn the_depth_check_agrees_with_serde_yaml_ng_on_random_yaml() {
    const PIECES: [&str; 32] = [
        "[", "]", "{", "}", ",", ", ", ":", ": ", " ", "\n", "\n  ", "- ", "? ", "a", "b", "'", "\"", "# ", "#", "|\n", ">\n", "&x ",
        "*x", "!t ", "\\", "\t", "[[", "]]", "[]", "{}", "!<a]>", "---\n",
    ];
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut read, mut malformed) = (0, 0);
    for _ in 0..20_000 {
        let len = 1 + next() % 24;
        let body: String = (0..len).map(|_| PIECES[(next() % PIECES.len() as u64) as usize]).collect();
        let expected: Result<serde_json::Value, _> = serde_yaml_ng::from_slice(body.as_bytes());
        match yaml_shape(body.as_bytes()) {
            Ok(shape) => {
                // What lets the event pass be skipped: flow nesting never passes it.
                assert!(shape.flow_depth <= unclosed_openers(body.as_bytes()) + 1, "{body:?}: {shape:?}");
                if let Ok(value) = expected {
                    read += 1;
                    assert_eq!(shape.depth, depth(&value), "{body:?}");
                    match yaml_to_json(body.as_bytes()) {
                        Ok(strict) => assert_eq!(strict, value, "{body:?}"),
                        Err(e) => assert!(e.message.starts_with("duplicate key"), "{body:?}: {e:?}"),
                    }
                }
            }
            Err(e) => {
                malformed += 1;
                assert!(expected.is_err(), "{body:?} refused by the pre-check only: {e:?}");
            }
        }
    }
    // The generator reaches both sides.
    assert!(read > 1_000 && malformed > 1_000, "{read} read, {malformed} malformed");
}

#[test]
fn syntax_errors_read_as_serde_yaml_ng_wrote_them() {
    for body in ["clusters: [1\n", "a: 'x\n", "a: b: c\n", "- a\nb: c\n", "a:\n\t- b\n"] {
        let ours = yaml_shape(body.as_bytes()).expect_err("malformed").message;
        let theirs = serde_yaml_ng::from_slice::<serde_json::Value>(body.as_bytes()).expect_err("malformed").to_string();
        assert_eq!(ours, format!("malformed YAML: {theirs}"), "{body:?}");
    }
}

#[test]
fn machine_written_yaml_skips_the_event_pass_and_anchors_do_not() {
    let bundle = json!({"clusters": [{"name": "a", "type": "EDS", "eds_cluster_config": {"eds_config": {"ads": {}, "resource_api_version": "V3"}}}]});
    let yaml = serde_yaml_ng::to_string(&bundle).unwrap();
    assert!(yaml.contains("ads: {}") && !needs_event_check(yaml.as_bytes()), "{yaml}");
    assert_eq!(yaml_to_json(yaml.as_bytes()).unwrap(), bundle);
    assert!(needs_event_check(b"a: &x 1\nb: *x\n"));
    // A hand-written list per line: each unclosed `[` counts, nested or not.
    let lists = "domains: [\"*\"]\n".repeat(MAX_YAML_DEPTH);
    assert!(needs_event_check(lists.as_bytes()));
    assert!(!needs_event_check(&lists.as_bytes()[lists.len() / 2..]));
}

// --- YAML aliases ---

#[test]
fn aliases_are_read_as_written_out_within_the_budget() {
    let aliased = "eds: &eds {eds_config: {ads: {}, resource_api_version: V3}}\nclusters:\n- {name: a, type: EDS, eds_cluster_config: *eds}\n- {name: b, type: EDS, eds_cluster_config: *eds}\n";
    let value = yaml_to_json(aliased.as_bytes()).unwrap();
    assert_eq!(value["clusters"][1]["eds_cluster_config"], json!({"eds_config": {"ads": {}, "resource_api_version": "V3"}}));
    assert_eq!(value, serde_yaml_ng::from_slice::<serde_json::Value>(aliased.as_bytes()).unwrap());
    let shape = yaml_shape(aliased.as_bytes()).unwrap();
    // Two repetitions of 7 nodes and their scalars.
    assert_eq!(shape.repeated, 2 * (7 + "eds_config".len() + "ads".len() + "resource_api_version".len() + "V3".len()) as u64);
}

#[test]
fn alias_bombs_are_refused_quickly() {
    // Billion laughs: nine levels of ten aliases each, 10^9 strings.
    let mut laughs = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..10 {
        let aliases = vec![format!("*a{}", i - 1); 10].join(", ");
        laughs.push_str(&format!("a{i}: &a{i} [{aliases}]\n"));
    }
    // Quadratic: one anchor of 100,000 nodes and 100,000 aliases to it.
    let big = format!("big: &big [{}]\nuse: [{}]\n", vec!["x"; 100_000].join(", "), vec!["*big"; 100_000].join(", "));
    for body in [laughs, big] {
        let e = within_cpu(Duration::from_secs(2), "alias bomb", || parse(body.as_bytes(), Format::Yaml).expect_err("refused"));
        assert!(e.message.contains("YAML aliases repeat more than the limit of 1048576"), "{e:?}");
        assert_eq!(e.path, None);
    }
}

#[test]
fn aliases_count_for_depth_and_may_not_contain_themselves() {
    // 40 levels anchored, used 30 levels down: 70 in the value.
    let body = format!("a: &deep {}\nb: {}*deep{}\n", nested("[", "]", 40), "[".repeat(29), "]".repeat(29));
    assert_too_deep(&body);
    let body = format!("a: &deep {}\nb: {}*deep{}\n", nested("[", "]", 30), "[".repeat(29), "]".repeat(29));
    assert_eq!(yaml_shape(body.as_bytes()).unwrap().depth, 60);
    let e = refusal("a: &a [1, *a]\n", Format::Yaml);
    assert!(e.message.contains("alias *a is inside the node it names"), "{e:?}");
    // The name taken over inside the node, as serde_yaml_ng resolves it.
    let body = "a: &a [&a x, *a]\nb: *a\n";
    assert_eq!(yaml_to_json(body.as_bytes()).unwrap(), serde_yaml_ng::from_slice::<serde_json::Value>(body.as_bytes()).unwrap());
}

/// A bundle like the load generator's ingest: 10,000 clusters and as
/// many endpoint sets of 7 endpoints, about 10 MB of JSON.
fn ten_mb_bundle() -> String {
    let eds = json!({"ads": {}, "resource_api_version": "V3"});
    let clusters: Vec<_> = (0..10_000)
        .map(|i| json!({"name": format!("cluster_{i:05}"), "type": "EDS", "connect_timeout": "1s", "eds_cluster_config": {"eds_config": eds}}))
        .collect();
    let endpoints: Vec<_> = (0..10_000)
        .map(|i| {
            let lb_endpoints: Vec<_> = (0..7)
                .map(|e| {
                    let address = format!("10.{}.{}.{}", (i >> 8) & 0xff, i & 0xff, e + 1);
                    json!({"endpoint": {"address": {"socket_address": {"address": address, "port_value": 8000}}}, "load_balancing_weight": 1})
                })
                .collect();
            json!({"cluster_name": format!("cluster_{i:05}"), "endpoints": [{"lb_endpoints": lb_endpoints}]})
        })
        .collect();
    json!({"version": "v1", "clusters": clusters, "endpoints": endpoints}).to_string()
}

#[test]
#[ignore = "measurement: cargo test --release --lib bundle::strict -- --ignored --nocapture"]
fn cost_of_the_repeated_key_check_on_a_10_mb_bundle() {
    let body = ten_mb_bundle();
    assert!(body.len() > 9_000_000, "{}", body.len());
    let envelope: BTreeMap<String, &RawValue> = serde_json::from_str::<Object<'_>>(&body).unwrap().into_fields().unwrap();
    let resources: Vec<&RawValue> =
        ["clusters", "endpoints"].iter().flat_map(|key| serde_json::from_str::<Vec<&RawValue>>(envelope[*key].get()).unwrap()).collect();
    assert_eq!(resources.len(), 20_000);
    let median = |f: &dyn Fn()| {
        let mut runs: Vec<Duration> = (0..7)
            .map(|_| {
                let start = Instant::now();
                f();
                start.elapsed()
            })
            .collect();
        runs.sort();
        runs[runs.len() / 2]
    };
    let check = median(&|| resources.iter().for_each(|json| unique_keys(json, || unreachable!()).unwrap()));
    let whole = median(&|| assert_eq!(parse(body.as_bytes(), Format::Json).unwrap().stored.count(crate::resource_type::ResourceType::Cluster), 10_000));
    // The process's CPU (every core) for one parse, in clock ticks.
    let process_ticks = || -> u64 {
        let stat = std::fs::read_to_string("/proc/self/stat").expect("Linux /proc");
        let fields: Vec<&str> = stat.rsplit_once(')').expect("stat").1.split_whitespace().collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    };
    let before = process_ticks();
    (0..5).for_each(|_| assert!(parse(body.as_bytes(), Format::Json).is_ok()));
    let parse_cpu = Duration::from_millis((process_ticks() - before) * 10 / 5);
    println!(
        "{:.1} MB, 20,000 resources: the check alone {check:.2?} on one core (~{:.2?} per core on {} cores); parse() with it {whole:.2?} wall, {parse_cpu:.2?} CPU (100 Hz ticks)",
        body.len() as f64 / 1e6,
        check / std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
    );
}

#[test]
#[ignore = "measurement: cargo test --release --lib bundle::strict -- --ignored --nocapture"]
fn cost_of_the_yaml_limits() {
    // CPU as schedstat tells it, and the wall clock for short runs the
    // scheduler's accounting may not have seen yet.
    struct Cost(Duration, Duration);
    impl fmt::Display for Cost {
        fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
            write!(f, "{:.2?} of CPU ({:.2?} wall)", self.0, self.1)
        }
    }
    let cpu = |f: &dyn Fn()| {
        let (before, start) = (thread_cpu().expect("Linux schedstat"), Instant::now());
        f();
        Cost(thread_cpu().expect("Linux schedstat") - before, start.elapsed())
    };
    for (open, close) in [("[", "]"), ("{a: ", "}"), ("[a, ", "]"), ("[\n", "]\n")] {
        for bytes in [200_000, 2_000_000] {
            let body = nested(open, close, bytes / (open.len() + close.len()));
            let used = cpu(&|| assert_too_deep(&body));
            println!("{bytes} bytes of {open:?}...{close:?}: refused after {used}");
        }
        // What serde_yaml_ng alone costs on smaller ones.
        for bytes in [20_000, 40_000, 80_000, 160_000] {
            let body = nested(open, close, bytes / (open.len() + close.len()));
            let used = cpu(&|| assert!(serde_yaml_ng::from_slice::<serde_json::Value>(body.as_bytes()).is_err()));
            println!("{bytes} bytes of {open:?}...{close:?}, serde_yaml_ng alone: {used}");
        }
    }
    let laughs = (1..10).fold(String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"), |body, i| {
        body + &format!("a{i}: &a{i} [{}]\n", vec![format!("*a{}", i - 1); 10].join(", "))
    });
    let used = cpu(&|| assert!(yaml_shape(laughs.as_bytes()).is_err()));
    println!("billion laughs: refused after {used}");

    let json: serde_json::Value = serde_json::from_str(&ten_mb_bundle()).unwrap();
    let yaml = serde_yaml_ng::to_string(&json).unwrap();
    let check = cpu(&|| assert!(yaml_shape(yaml.as_bytes()).unwrap().depth > 5));
    let convert = cpu(&|| assert!(serde_yaml_ng::from_slice::<serde_json::Value>(yaml.as_bytes()).is_ok()));
    let strict = cpu(&|| assert!(yaml_to_json(yaml.as_bytes()).is_ok()));
    println!(
        "{:.1} MB of machine-written YAML: the event pass (skipped for it) {check}; serde_yaml_ng to a value {convert}; yaml_to_json {strict}",
        yaml.len() as f64 / 1e6
    );
}
