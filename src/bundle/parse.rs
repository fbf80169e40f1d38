//! From request bytes to a [`StoredBundle`], and back to JSON for GET. The schema `sxds.v1.Bundle`
//! drives the parse: its fields name the top-level keys and the Envoy type of
//! each list, so unknown fields, wrong value types and unknown `@type`s are
//! all refused with the path of the offending field.
//!
//! The envelope is read first with every resource left as raw JSON; the
//! resources (10,000 clusters is a normal bundle) are then parsed, hashed and
//! encoded on every core: most straight to protobuf bytes
//! ([`super::transcode`]), the others, and every refusal, through a
//! prost-reflect `DynamicMessage` ([`super::encode`]).

use std::{
    collections::BTreeMap,
    num::NonZeroUsize,
    sync::atomic::{AtomicUsize, Ordering},
    thread,
};

use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, SerializeOptions};
use serde::de::DeserializeSeed;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use super::{
    transcode::Transcoder,
    validate::{self, Facts},
    BundleError,
};
use crate::{
    resource_type::ResourceType,
    schema::{self, StoredBundle, StoredResource},
};

/// Longest accepted `version`: it is sent in every discovery response and
/// printed in every log line about the bundle.
pub const MAX_VERSION_LEN: usize = 128;

/// A parsed bundle: the encoded form the store keeps, and what each of its
/// resources refers to, for validation.
#[derive(Debug)]
pub struct Parsed {
    pub stored: StoredBundle,
    pub facts: Vec<Facts>,
}

/// The body's syntax, from the request's `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
}

/// Parses a bundle and fills in what the store needs: the content hash and,
/// when the body has none, a version derived from it.
pub fn parse(body: &[u8], format: Format) -> Result<Parsed, BundleError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(BundleError::new("the request body is empty; expected a bundle"));
    }
    match format {
        Format::Json => parse_json(body),
        Format::Yaml => {
            let value = super::strict::yaml_to_json(body)?;
            let json = serde_json::to_vec(&value).map_err(|e| BundleError::new(format!("YAML does not map to JSON: {e}")))?;
            parse_json(&json)
        }
    }
}

/// One resource of the bundle, not parsed yet.
struct RawResource<'a> {
    /// The bundle field it is listed under (`clusters`, ...).
    field: FieldDescriptor,
    message: MessageDescriptor,
    index: usize,
    json: &'a RawValue,
}

/// The resources parsed on one core, in order: their canonical digests,
/// encoded form and facts.
struct Part {
    digests: Vec<[u8; 32]>,
    stored: Vec<StoredResource>,
    facts: Vec<Facts>,
}

fn parse_json(body: &[u8]) -> Result<Parsed, BundleError> {
    let (version, mut resources) = match envelope_at_once(body) {
        Some(envelope) => envelope,
        None => envelope(body)?,
    };
    resources.sort_by_key(|r| (r.field.number(), r.index));

    let parts = on_every_core(&resources, parse_part)?;
    let mut hasher = Sha256::new();
    let digests = parts.iter().flat_map(|part| &part.digests);
    for (resource, digest) in resources.iter().zip(digests) {
        hasher.update(resource.field.number().to_le_bytes());
        hasher.update(digest);
    }
    let content_hash = hex(&hasher.finalize());
    let version = if version.is_empty() { derived_version(&content_hash) } else { check_version(version)? };
    let mut stored = StoredBundle { version, content_hash, resources: Vec::with_capacity(resources.len()) };
    let mut facts = Vec::with_capacity(resources.len());
    for part in parts {
        stored.resources.extend(part.stored);
        facts.extend(part.facts);
    }
    Ok(Parsed { stored, facts })
}

/// The bundle's version and resources, the envelope read first with every
/// value left raw, then each list on its own: what is wrong is found in
/// that order.
fn envelope(body: &[u8]) -> Result<(String, Vec<RawResource<'_>>), BundleError> {
    let envelope: super::strict::Object<'_> = serde_json::from_slice(body).map_err(|e| {
        if e.is_data() {
            BundleError::new(format!("a bundle is a JSON object: {e}"))
        } else {
            malformed_json(e)
        }
    })?;
    let envelope: BTreeMap<String, &RawValue> = envelope.into_fields()?;
    let descriptor = schema::bundle_descriptor();
    let mut version = String::new();
    let mut resources = Vec::new();
    for (key, json) in envelope {
        let field = descriptor
            .get_field_by_name(&key)
            .or_else(|| descriptor.get_field_by_json_name(&key))
            .ok_or_else(|| BundleError::at(&key, format!("unrecognized field name '{key}': a bundle has version, listeners, clusters, routes, endpoints, endpoint_sources and the other resource lists")))?;
        let Kind::Message(message) = field.kind() else {
            version = serde_json::from_str::<Option<String>>(json.get())
                .map_err(|e| BundleError::at(&key, format!("expected a string: {e}")))?
                .unwrap_or_default();
            continue;
        };
        let items: Option<Vec<&RawValue>> =
            serde_json::from_str(json.get()).map_err(|e| BundleError::at(&key, format!("expected a list of {}: {e}", message.full_name())))?;
        for (index, json) in items.unwrap_or_default().into_iter().enumerate() {
            resources.push(RawResource { field: field.clone(), message: message.clone(), index, json });
        }
    }
    Ok((version, resources))
}

/// What [`envelope`] finds in a sound body, in one pass over it instead of
/// two: each list read straight into its items. `None` for anything else (a
/// key unknown or twice, two spellings of one list, a value of the wrong
/// type, bad JSON), for [`envelope`] to explain.
fn envelope_at_once(body: &[u8]) -> Option<(String, Vec<RawResource<'_>>)> {
    struct Envelope;

    impl<'de> serde::de::Visitor<'de> for Envelope {
        type Value = (String, Vec<RawResource<'de>>);

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a bundle")
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let descriptor = schema::bundle_descriptor();
            let (mut version, mut resources, mut seen) = (String::new(), Vec::new(), Vec::new());
            while let Some(key) = map.next_key::<String>()? {
                let field = descriptor.get_field_by_name(&key).or_else(|| descriptor.get_field_by_json_name(&key));
                let Some(field) = field.filter(|field| !seen.contains(&field.number())) else {
                    return Err(serde::de::Error::custom("for the envelope read in two passes to explain"));
                };
                seen.push(field.number());
                let Kind::Message(message) = field.kind() else {
                    version = map.next_value::<Option<String>>()?.unwrap_or_default();
                    continue;
                };
                let items: Option<Vec<&'de RawValue>> = map.next_value()?;
                for (index, json) in items.unwrap_or_default().into_iter().enumerate() {
                    resources.push(RawResource { field: field.clone(), message: message.clone(), index, json });
                }
            }
            Ok((version, resources))
        }
    }

    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let envelope = serde::de::Deserializer::deserialize_map(&mut deserializer, Envelope).ok()?;
    deserializer.end().ok()?;
    Some(envelope)
}

/// A version is sent to Envoys and logged as is: printable ASCII only.
pub fn check_version(version: String) -> Result<String, BundleError> {
    if version.len() > MAX_VERSION_LEN {
        return Err(BundleError::at("version", format!("version is {} bytes long; at most {MAX_VERSION_LEN} are allowed", version.len())));
    }
    if let Some(c) = version.chars().find(|c| !matches!(c, ' '..='~')) {
        return Err(BundleError::at("version", format!("version contains {c:?}; only printable ASCII characters are allowed")));
    }
    Ok(version)
}

/// Parses a run of resources into a part of the bundle.
fn parse_part(transcoder: &mut Transcoder, resources: &[RawResource<'_>]) -> Result<Part, BundleError> {
    let mut part = Part {
        digests: Vec::with_capacity(resources.len()),
        stored: Vec::with_capacity(resources.len()),
        facts: Vec::with_capacity(resources.len()),
    };
    for resource in resources {
        let parsed = parse_resource(resource, transcoder)?;
        let field = resource.field.number();
        // Decoding the stored bytes here is the deepest decode they will
        // ever see (GET decodes each resource the same way; loading decodes
        // none): whatever passes can always be loaded and printed again.
        // An endpoints entry refers to nothing: it is decoded only for that,
        // which the fast path's bytes need not prove.
        let facts = match ResourceType::from_bundle_field(field) {
            Some(ResourceType::Endpoint) if parsed.decodes => Facts::default(),
            Some(ty) => validate::facts(ty, resource.index, &parsed.value)?,
            None if field == schema::ENDPOINT_SOURCES_FIELD => validate::source_facts(resource.index, &parsed.value)?,
            None => return Err(BundleError::at(resource.field.name(), "not a resource list")),
        };
        part.facts.push(facts);
        part.digests.push(parsed.digest);
        part.stored.push(StoredResource { field, name: parsed.name, value: parsed.value.into() });
    }
    Ok(part)
}

/// One resource, parsed.
struct ParsedResource {
    digest: [u8; 32],
    name: String,
    value: Vec<u8>,
    /// Whether `value` is known to decode: the fast path wrote it, no
    /// deeper than [`super::transcode::MAX_DEPTH`].
    decodes: bool,
}

/// Parses one resource: canonical digest, name and protobuf bytes. Most
/// take the fast path; the rest (and whatever is wrong) go through a
/// `DynamicMessage`, after a check for repeated keys.
fn parse_resource(resource: &RawResource<'_>, transcoder: &mut Transcoder) -> Result<ParsedResource, BundleError> {
    let name_field = match ResourceType::from_bundle_field(resource.field.number()) {
        Some(ty) => ty.name_field(),
        None => "cluster_name", // an endpoint source
    };
    if let Some(read) = transcoder.read(resource.json.get(), &resource.message, name_field) {
        let digest = Sha256::digest(read.canon).into();
        return Ok(ParsedResource { digest, name: read.name, value: read.value.to_vec(), decodes: true });
    }
    super::strict::unique_keys(resource.json, || format!("{}[{}]", resource.field.name(), resource.index))?;
    let mut de = serde_json::Deserializer::from_str(resource.json.get());
    let message = match resource.message.clone().deserialize(&mut de) {
        Ok(message) => message,
        Err(_) => return Err(locate_error(resource)),
    };
    let (mut value, mut canon) = (Vec::new(), Vec::new());
    super::encode::encode(&message, &mut value, &mut canon);
    value.shrink_to_fit(); // the store and the snapshot keep it
    let name = message
        .get_field_by_name(name_field)
        .and_then(|name| name.as_str().map(str::to_owned))
        .unwrap_or_default();
    Ok(ParsedResource { digest: Sha256::digest(&canon).into(), name, value, decodes: false })
}

/// Parses a refused resource again, tracking the path of the error. This
/// goes through a value, whose sorted keys put `@type` first: streaming,
/// prost-reflect buffers the fields of an Any that come before its `@type`,
/// and their path is lost. (Sorted: serde_json's `preserve_order` is off; a
/// unit test below would notice.)
fn locate_error(resource: &RawResource<'_>) -> BundleError {
    let prefix = format!("{}[{}]", resource.field.name(), resource.index);
    let value: serde_json::Value = match serde_json::from_str(resource.json.get()) {
        Ok(value) => value,
        Err(e) => return malformed_json(e),
    };
    let mut track = serde_path_to_error::Track::new();
    let tracked = serde_path_to_error::Deserializer::new(value, &mut track);
    match resource.message.clone().deserialize(tracked) {
        Ok(_) => BundleError::at(prefix, "resource refused"),
        Err(e) => {
            let path = track.path().to_string();
            let path = if path == "." { prefix } else { format!("{prefix}.{path}") };
            field_error(&path, e.to_string())
        }
    }
}

/// Runs `f` over `items` on every core, keeping their order; the first
/// error (in order) wins. The items go in batches, each taken by the next
/// core free: they differ in cost (a cluster is a tenth of a
/// ClusterLoadAssignment), and the cores are shared. Each core keeps one
/// `S` for all its batches.
fn on_every_core<T: Sync, S: Default, R: Send>(items: &[T], f: impl Fn(&mut S, &[T]) -> Result<R, BundleError> + Sync) -> Result<Vec<R>, BundleError> {
    const BATCH: usize = 64;
    let cores = thread::available_parallelism().map_or(1, NonZeroUsize::get);
    // Small bundles are not worth a thread.
    let workers = cores.min(items.len().div_ceil(256)).max(1);
    let batches = items.chunks(BATCH).collect::<Vec<_>>();
    let next = AtomicUsize::new(0);
    // No batch after one that failed is started: the first error is in an
    // earlier batch or in that one, and every earlier batch is done.
    let failed = AtomicUsize::new(usize::MAX);
    let work = || {
        let (mut state, mut done) = (S::default(), Vec::new());
        loop {
            let at = next.fetch_add(1, Ordering::Relaxed);
            let Some(batch) = batches.get(at).filter(|_| at <= failed.load(Ordering::Relaxed)) else { return done };
            let result = f(&mut state, batch);
            if result.is_err() {
                failed.fetch_min(at, Ordering::Relaxed);
            }
            done.push((at, result));
        }
    };
    let mut done: Vec<_> = thread::scope(|scope| {
        let workers: Vec<_> = (0..workers).map(|_| scope.spawn(work)).collect();
        workers.into_iter().map(|worker| worker.join().map_err(|_| BundleError::new("the parser failed"))).collect::<Result<Vec<_>, _>>()
    })?
    .into_iter()
    .flatten()
    .collect();
    done.sort_unstable_by_key(|(at, _)| *at);
    done.into_iter().map(|(_, result)| result).collect()
}

fn malformed_json(e: serde_json::Error) -> BundleError {
    BundleError::new(format!("malformed JSON: {e}"))
}

/// A schema error at the most precise path known. prost-reflect refuses an
/// unknown field or `@type` only after reading its key, so the tracked path
/// ends at the enclosing message; the key is added here.
fn field_error(path: &str, message: String) -> BundleError {
    let path = if path == "." { "" } else { path };
    let join = |key: &str| if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") };
    if let Some((name, _)) = message.strip_prefix("unrecognized field name '").and_then(|rest| rest.split_once('\'')) {
        let path = join(name);
        return BundleError::at(path, message);
    }
    if message.starts_with("message '") && message.contains("' not found") {
        return BundleError::at(join("@type"), format!("unknown @type: {message}"));
    }
    if path.is_empty() {
        BundleError::new(message)
    } else {
        BundleError::at(path, message)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The version given to a bundle PUT without one. Derived from the content,
/// so it can never name two different contents (R37).
fn derived_version(content_hash: &str) -> String {
    format!("sha256-{}", &content_hash[..16])
}

/// Prints a stored bundle as canonical proto3 JSON with Envoy's snake_case
/// field names, the way users write it, key material `[redacted]` (see
/// `redact`). Written straight to bytes, one resource at a time: no JSON
/// tree of the whole bundle is ever built.
pub fn to_json(stored: &StoredBundle) -> Result<Vec<u8>, BundleError> {
    let failed = |e: &dyn std::fmt::Display| BundleError::new(format!("stored bundle cannot be printed: {e}"));
    let options = SerializeOptions::new().use_proto_field_name(true);
    let mut out = Vec::with_capacity(2 * stored.resource_bytes() + 64);
    out.extend_from_slice(b"{\"version\":");
    serde_json::to_writer(&mut out, &stored.version).map_err(|e| failed(&e))?;
    for field in schema::bundle_descriptor().fields() {
        let Kind::Message(message) = field.kind() else { continue };
        let mut resources = stored.resources.iter().filter(|r| r.field == field.number()).peekable();
        if resources.peek().is_none() {
            continue;
        }
        out.extend_from_slice(format!(",\"{}\":[", field.name()).as_bytes());
        for (i, resource) in resources.enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let mut decoded = DynamicMessage::decode(message.clone(), resource.value.clone()).map_err(|e| failed(&e))?;
            super::redact::redact(&mut decoded);
            decoded.serialize_with_options(&mut serde_json::Serializer::new(&mut out), &options).map_err(|e| failed(&e))?;
        }
        out.push(b']');
    }
    out.push(b'}');
    Ok(out)
}

/// One stored resource as its canonical JSON (snake_case names), with key
/// material redacted when `redact` (as `GET` prints it) or not (what Envoy
/// is sent).
pub fn resource_value(message: &MessageDescriptor, resource: &StoredResource, redact: bool) -> Result<serde_json::Value, BundleError> {
    let failed = |e: &dyn std::fmt::Display| BundleError::new(format!("{} cannot be printed: {e}", resource.name));
    let mut decoded = DynamicMessage::decode(message.clone(), resource.value.clone()).map_err(|e| failed(&e))?;
    if redact {
        super::redact::redact(&mut decoded);
    }
    let options = SerializeOptions::new().use_proto_field_name(true);
    decoded.serialize_with_options(serde_json::value::Serializer, &options).map_err(|e| failed(&e))
}

#[cfg(test)]
mod tests {

    fn many_clusters(n: usize) -> serde_json::Value {
        let clusters: Vec<serde_json::Value> =
            (0..n).map(|i| serde_json::json!({"name": format!("c{i}"), "connect_timeout": "1s"})).collect();
        serde_json::json!({"version": "v1", "clusters": clusters})
    }

    #[test]
    fn large_bundles_are_parsed_on_every_core_in_order_and_errors_keep_their_index() {
        let mut body = many_clusters(1000);
        let stored = parse(body.to_string().as_bytes(), Format::Json).unwrap().stored;
        let names: Vec<&str> = stored.resources.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names.len(), 1000);
        assert!(names.iter().enumerate().all(|(i, name)| *name == format!("c{i}")), "order kept");

        body["clusters"][777]["connect_timeout"] = serde_json::json!(5);
        body["clusters"][901]["bogus"] = serde_json::json!(1);
        let error = parse(body.to_string().as_bytes(), Format::Json).unwrap_err();
        assert_eq!(error.path.as_deref(), Some("clusters[777].connect_timeout"), "the first error in order: {error:?}");
    }

    #[test]
    fn the_envelope_read_at_once_is_the_envelope_read_in_two_passes() {
        let listed = |(version, resources): (String, Vec<RawResource<'_>>)| {
            (version, resources.iter().map(|r| (r.field.number(), r.index, r.json.get().to_owned())).collect::<Vec<_>>())
        };
        let sound = [
            r#"{"version": "v1", "clusters": [{"name": "a"}, {"name": "b"}], "endpoints": [{"cluster_name": "a"}], "listeners": []}"#,
            r#"{"extensionConfigs": [{"name": "x"}], "virtual_hosts": null, "version": null}"#,
            r#" { "clusters" : [ { "name" : "a" } ] } "#,
            "{}",
        ];
        for body in sound {
            let at_once = envelope_at_once(body.as_bytes()).unwrap_or_else(|| panic!("read at once: {body}"));
            assert_eq!(listed(at_once), listed(envelope(body.as_bytes()).unwrap()), "{body}");
        }
        // What only the two passes explain, or read (two spellings of one list).
        let other = [
            r#"{"clusters": [], "clusters": []}"#,
            r#"{"endpoint_sources": [], "endpointSources": []}"#,
            r#"{"clusterz": []}"#,
            r#"{"version": 2}"#,
            r#"{"clusters": {}}"#,
            r#"{"clusters": [1,]}"#,
            r#"{"clusters": []} x"#,
            "[]",
        ];
        for body in other {
            assert!(envelope_at_once(body.as_bytes()).is_none(), "{body}");
        }
        assert!(envelope(br#"{"endpoint_sources": [], "endpointSources": []}"#).is_ok());
    }

    #[test]
    fn batches_on_every_core_come_back_in_order_and_the_first_error_wins() {
        let items: Vec<usize> = (0..10_000).collect();
        let sum = |calls: &mut usize, batch: &[usize]| {
            *calls += 1;
            match batch.iter().find(|i| **i == 9_000 || **i == 130 || **i == 131) {
                Some(i) => Err(BundleError::new(i.to_string())),
                None => Ok(batch.to_vec()),
            }
        };
        assert_eq!(on_every_core(&items, sum).unwrap_err().message, "130");
        let fine = on_every_core(&items[200..8_000], sum).unwrap().concat();
        assert_eq!(fine, items[200..8_000]);
    }

    use prost::Message;
    use serde_json::json;

    use super::*;

    fn error(body: &str, format: Format) -> BundleError {
        parse(body.as_bytes(), format).expect_err("refused")
    }

    fn stored(body: &serde_json::Value) -> StoredBundle {
        parse(body.to_string().as_bytes(), Format::Json).expect("parses").stored
    }

    const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

    fn listener_with_typed_config(typed_config: serde_json::Value) -> String {
        json!({"listeners": [{"name": "l", "filter_chains": [{"filters": [{"name": "f", "typed_config": typed_config}]}]}]}).to_string()
    }

    #[test]
    fn unknown_fields_are_located_at_the_field_itself() {
        let body = r#"{"clusters": [{"name": "a"}, {"name": "b", "conect_timeout": "1s"}]}"#;
        let e = error(body, Format::Json);
        assert_eq!(e.path.as_deref(), Some("clusters[1].conect_timeout"));
        assert!(e.message.contains("conect_timeout"), "{e:?}");

        let e = error("clusters:\n- name: a\n  conect_timeout: 1s\n", Format::Yaml);
        assert_eq!(e.path.as_deref(), Some("clusters[0].conect_timeout"));

        let e = error(r#"{"clusterz": []}"#, Format::Json);
        assert_eq!(e.path.as_deref(), Some("clusterz"));
    }

    #[test]
    fn wrong_value_types_name_the_field() {
        let e = error(r#"{"clusters": [{"name": "a", "connect_timeout": 5}]}"#, Format::Json);
        assert_eq!(e.path.as_deref(), Some("clusters[0].connect_timeout"));
        let body = r#"{"listeners": [{"name": "l", "address": {"socket_address": {"port_value": "abc"}}}]}"#;
        let e = error(body, Format::Json);
        assert_eq!(e.path.as_deref(), Some("listeners[0].address.socket_address.port_value"));
        // A YAML integer is not a version string; coercing `1.10` to "1.1" would be worse.
        let e = error("version: 2\n", Format::Yaml);
        assert_eq!(e.path.as_deref(), Some("version"));
    }

    #[test]
    fn errors_inside_typed_config_have_full_paths_whatever_the_key_order() {
        let prefix = "listeners[0].filter_chains[0].filters[0].typed_config";
        let at_type_first = listener_with_typed_config(json!({"@type": HCM, "stat_prefix": "s", "route_config": {"bogus": 1}}));
        let at_type_last = listener_with_typed_config(json!({"stat_prefix": "s", "route_config": {"bogus": 1}, "@type": HCM}));
        // serde_json::json! sorts keys; spell the late `@type` out by hand.
        let at_type_last_raw = at_type_last.replace(&format!(r#""@type":"{HCM}","#), "").replace(
            r#""stat_prefix":"s""#,
            &format!(r#""stat_prefix":"s","@type":"{HCM}""#),
        );
        assert!(at_type_last_raw.find("@type") > at_type_last_raw.find("route_config"), "{at_type_last_raw}");
        for body in [at_type_first, at_type_last_raw] {
            let e = error(&body, Format::Json);
            assert_eq!(e.path.as_deref(), Some(format!("{prefix}.route_config.bogus").as_str()), "{body}");
        }
    }

    #[test]
    fn unknown_type_urls_point_at_the_type() {
        let body = listener_with_typed_config(json!({"@type": "type.googleapis.com/envoy.nope.v3.Nope"}));
        let e = error(&body, Format::Json);
        assert_eq!(e.path.as_deref(), Some("listeners[0].filter_chains[0].filters[0].typed_config.@type"));
        assert!(e.message.contains("unknown @type") && e.message.contains("envoy.nope.v3.Nope"), "{e:?}");
    }

    #[test]
    fn http_filters_configured_through_typed_structs_parse_and_print_back() {
        // Both TypedStructs Envoy accepts in an Any: cncf/xds's and its udpa predecessor.
        let lua = json!({
            "@type": "type.googleapis.com/xds.type.v3.TypedStruct",
            "type_url": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
            "value": {"default_source_code": {"inline_string": "function envoy_on_response(h) end"}},
        });
        let router = json!({
            "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
            "type_url": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
            "value": {},
        });
        let hcm = json!({"@type": HCM, "stat_prefix": "s", "http_filters": [
            {"name": "lua", "typed_config": lua},
            {"name": "router", "typed_config": router},
        ]});
        let parsed = parse(listener_with_typed_config(hcm).as_bytes(), Format::Json).expect("TypedStructs are known types");
        let printed: serde_json::Value = serde_json::from_slice(&to_json(&parsed.stored).unwrap()).unwrap();
        let filters = &printed["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"];
        assert_eq!(filters[0]["typed_config"], lua);
        assert_eq!(filters[1]["typed_config"], router);
        assert_eq!(parse(printed.to_string().as_bytes(), Format::Json).unwrap().stored, parsed.stored);
    }

    #[test]
    fn the_xds_matcher_family_is_known() {
        for name in [
            "xds.type.matcher.v3.Matcher",
            "xds.type.matcher.v3.IPMatcher",
            "xds.type.matcher.v3.ServerNameMatcher",
            "xds.type.matcher.v3.CelMatcher",
            "xds.type.matcher.v3.HttpAttributesCelMatchInput",
            "xds.type.matcher.v3.Int64RangeMatcher",
            "xds.type.v3.Int64Range",
        ] {
            assert!(schema::pool().get_message_by_name(name).is_some(), "{name} is in the pool");
        }
        // A listener choosing its filter chain by the client's address with an IPMatcher.
        let ip_matcher = json!({
            "@type": "type.googleapis.com/xds.type.matcher.v3.IPMatcher",
            "range_matchers": [{
                "ranges": [{"address_prefix": "127.0.0.0", "prefix_len": 8}],
                "on_match": {"action": {"name": "chain", "typed_config": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue", "value": "local"}}},
            }],
        });
        let body = json!({"listeners": [{"name": "l", "filter_chain_matcher": {"matcher_tree": {
            "input": {"name": "ip", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.SourceIPInput"}},
            "custom_match": {"name": "ip", "typed_config": ip_matcher},
        }}}]});
        let printed: serde_json::Value = serde_json::from_slice(&to_json(&stored(&body)).unwrap()).unwrap();
        assert_eq!(printed["listeners"][0]["filter_chain_matcher"]["matcher_tree"]["custom_match"]["typed_config"], ip_matcher);
    }

    #[test]
    fn syntax_errors_say_which_syntax_and_have_no_field_path() {
        for body in [r#"{"clusters": [{"name": "a",}]}"#, r#"{"clusters": [{"name": "a""#, r#"{"clusters": []} x"#] {
            let e = error(body, Format::Json);
            assert!(e.message.starts_with("malformed JSON:"), "{e:?}");
            assert_eq!(e.path, None, "{body}");
        }
        let e = error("clusters: [1\n", Format::Yaml);
        assert!(e.message.starts_with("malformed YAML:"), "{e:?}");
        for format in [Format::Json, Format::Yaml] {
            assert!(error(" \n", format).message.contains("empty"));
        }
        assert_eq!(error("[]", Format::Json).path, None);
    }

    #[test]
    fn content_hash_ignores_spelling_key_order_and_format() {
        let snake = json!({"clusters": [{"name": "a", "connect_timeout": "1s", "type": "STATIC"}]});
        let camel_raw = r#"{"clusters": [{"type": "STATIC", "connectTimeout": "1.000s", "name": "a"}]}"#;
        let yaml = "clusters:\n- type: STATIC\n  connect_timeout: 1.0s\n  name: a\n";
        let a = stored(&snake);
        let b = parse(camel_raw.as_bytes(), Format::Json).unwrap().stored;
        let c = parse(yaml.as_bytes(), Format::Yaml).unwrap().stored;
        assert_eq!(a.content_hash, b.content_hash);
        assert_eq!(a.content_hash, c.content_hash);
        assert_eq!(a.version, b.version);

        let other = stored(&json!({"clusters": [{"name": "a", "connect_timeout": "2s", "type": "STATIC"}]}));
        assert_ne!(a.content_hash, other.content_hash);
    }

    /// A bundle touching most of what the parse meets: `Any`s unpacked for
    /// the hash (a filter, a TypedStruct, per-filter configs in a map),
    /// `Struct`s with several keys, packed numbers, enums, wrappers,
    /// durations, doubles, bytes, and every resource list.
    fn rich_bundle() -> serde_json::Value {
        let router = json!({"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"});
        let lua = json!({"@type": "type.googleapis.com/xds.type.v3.TypedStruct", "type_url": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
            "value": {"default_source_code": {"inline_string": "function envoy_on_response(h) end"}, "n": 1.5, "list": [true, null, "x"]}});
        let host = json!({"name": "all", "domains": ["*", "a.example"], "routes": [
            {"match": {"prefix": "/a"}, "route": {"cluster": "c1", "timeout": "2.5s", "retry_policy": {"retry_on": "5xx", "num_retries": 3, "retriable_status_codes": [503, 504]}}},
            {"match": {"safe_regex": {"regex": "^/b.*"}}, "route": {"weighted_clusters": {"clusters": [{"name": "c1", "weight": 30}, {"name": "c2", "weight": 70}]}}},
            {"match": {"path": "/c"}, "direct_response": {"status": 200, "body": {"inline_bytes": "aGVsbG8="}}},
        ], "typed_per_filter_config": {"envoy.filters.http.router": router.clone(), "lua": lua.clone()}});
        let hcm = json!({"@type": HCM, "stat_prefix": "in", "codec_type": "AUTO", "route_config": {"name": "inline", "virtual_hosts": [host.clone()]},
            "http_filters": [{"name": "lua", "typed_config": lua}, {"name": "envoy.filters.http.router", "typed_config": router}],
            "common_http_protocol_options": {"idle_timeout": "30s", "max_headers_count": 50}});
        let metadata = json!({"filter_metadata": {"b": {"k": 1, "s": "v", "n": null, "l": [1, "2", {"x": false}]}, "a": {"z": {"deep": [[]]}}}});
        json!({
            "version": "pinned",
            "listeners": [{"name": "l1", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10000}}, "metadata": metadata.clone(),
                "filter_chains": [{"filter_chain_match": {"server_names": ["a", "b"], "destination_port": 443}, "filters": [{"name": "hcm", "typed_config": hcm}]}]}],
            "clusters": [
                {"name": "c1", "type": "EDS", "connect_timeout": "0.250s", "lb_policy": "LEAST_REQUEST", "eds_cluster_config": {"eds_config": {"ads": {}, "resource_api_version": "V3"}},
                 "per_connection_buffer_limit_bytes": 32768, "metadata": metadata, "dns_lookup_family": "V4_ONLY",
                 "outlier_detection": {"consecutive_5xx": 5, "interval": "10s", "max_ejection_percent": 50},
                 "common_lb_config": {"healthy_panic_threshold": {"value": 40.5}},
                 "circuit_breakers": {"thresholds": [{"priority": "HIGH", "max_connections": 100}, {"max_requests": 7}]}},
                {"name": "c2", "type": "STATIC", "connect_timeout": "1s", "load_assignment": {"cluster_name": "c2", "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {"address": "10.0.0.1", "port_value": 80}}}, "load_balancing_weight": 3},
                    {"endpoint": {"address": {"socket_address": {"address": "10.0.0.2", "port_value": 80}}}, "health_status": "HEALTHY"}]}]}},
            ],
            "routes": [{"name": "r1", "virtual_hosts": [host.clone()]}],
            "endpoints": [{"cluster_name": "c1", "endpoints": [{"locality": {"zone": "z1"}, "priority": 1, "lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "10.1.0.1", "port_value": 8080}}, "hostname": "h1"}, "load_balancing_weight": 1},
                {"endpoint": {"address": {"socket_address": {"address": "10.1.0.2", "port_value": 8080}}}}]}],
                "policy": {"overprovisioning_factor": 140}}],
            "secrets": [{"name": "s1", "generic_secret": {"secret": {"inline_bytes": "c2VjcmV0"}}},
                        {"name": "s2", "validation_context": {"trusted_ca": {"filename": "/etc/ca.pem"}, "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": "a"}}]}}],
            "runtimes": [{"name": "rt", "layer": {"health_check": {"min_interval": 5}, "flags": {"a": true, "b": "x"}}}],
            "extension_configs": [{"name": "ext", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router", "suppress_envoy_headers": true}}],
            "scoped_routes": [{"name": "sr", "route_configuration_name": "r1", "key": {"fragments": [{"string_key": "k"}]}}],
            "virtual_hosts": [{"name": "r1/vh", "domains": ["vh.example"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "c2"}}]}],
        })
    }

    #[test]
    fn content_hashes_stay_what_they_were() {
        // As the parse at 5317284 computed them: a stored bundle's derived
        // version must not change when the daemon is upgraded.
        let bundle = rich_bundle();
        assert_eq!(stored(&bundle).content_hash, "904bbc93ebdbc5a10f640585a69a8980bfc214b2c05970cefd770bbcf3f533ac");
        let each = [
            ("listeners", "273d2272bb3a7aa12b8c89ee8feb794d2fe76f3eac61614847a7ac6f758b975e"),
            ("clusters", "0bc7e41c24ab8fde4f14d979ae56f420ccc349016d639cd0879f3c7a09c62b5d"),
            ("routes", "0676af229984df1f18240fd9fdccb96bfe85b5db033a454f1bed1e47f53d6784"),
            ("endpoints", "c1fbfaf28ad6ca3e8a0ec51290301145af424215200b7c9371433267fdef68f9"),
            ("secrets", "b335c9dfa1d855e30f927cb80f0d1a2b86cfff036664ab5899fccedc3ef55f67"),
            ("runtimes", "b5129595bf4e822183338a23e8ffc2cefbc7777526a4a20d9fc569f57863b032"),
            ("extension_configs", "ea295712122a5fc29a01eafb8072fe3dccebb17a7bd1ac21ede2d6bb605a9635"),
            ("scoped_routes", "a1b878b4c2f25a6a4791385b3f62ab2553f65e6ce5119011a11e0360be1a8553"),
            ("virtual_hosts", "1922e5e2a3df4f73750ee3c3667d1798cdbb67558ee79357736df6aa1db9af7c"),
        ];
        for (key, hash) in each {
            assert_eq!(stored(&json!({key: bundle[key]})).content_hash, hash, "{key}");
        }
    }

    #[test]
    fn stored_bytes_are_the_message_parsed() {
        let bundle = rich_bundle();
        let descriptor = schema::bundle_descriptor();
        let parsed = stored(&bundle);
        let mut next = BTreeMap::<u32, usize>::new();
        for resource in &parsed.resources {
            let field = descriptor.get_field(resource.field).unwrap();
            let Kind::Message(message) = field.kind() else { panic!("{} is a list of messages", field.name()) };
            let index = next.entry(resource.field).or_default();
            let json = bundle[field.name()][*index].to_string();
            *index += 1;
            let expected = message.clone().deserialize(&mut serde_json::Deserializer::from_str(&json)).unwrap();
            // Compared as JSON: the bytes inside an `Any` hold maps in no set order.
            let options = SerializeOptions::new().use_proto_field_name(true);
            let expected = expected.serialize_with_options(serde_json::value::Serializer, &options).unwrap();
            assert_eq!(resource_value(&message, resource, false).unwrap(), expected, "{}", resource.name);
        }
    }

    #[test]
    fn map_order_inside_messages_does_not_change_the_hash() {
        let a = r#"{"clusters": [{"name": "a", "metadata": {"filter_metadata": {"x": {"k": 1}, "y": {"k": 2}}}}]}"#;
        let b = r#"{"clusters": [{"name": "a", "metadata": {"filter_metadata": {"y": {"k": 2}, "x": {"k": 1}}}}]}"#;
        let (a, b) = (parse(a.as_bytes(), Format::Json).unwrap().stored, parse(b.as_bytes(), Format::Json).unwrap().stored);
        assert_eq!(a.content_hash, b.content_hash);
    }

    #[test]
    fn version_is_kept_or_derived_from_the_content_only() {
        let resources = json!({"clusters": [{"name": "a"}]});
        let derived = stored(&resources).version;
        assert!(derived.starts_with("sha256-") && derived.len() == "sha256-".len() + 16, "{derived}");

        let mut versioned = resources.clone();
        versioned["version"] = json!("v7");
        let explicit = stored(&versioned);
        assert_eq!(explicit.version, "v7");
        // The version is not part of the content: the same resources hash alike.
        assert_eq!(explicit.content_hash, stored(&resources).content_hash);
    }

    #[test]
    fn versions_are_short_printable_ascii() {
        for bad in ["v1\u{0}", "v1\nINFO forged log line", "v\u{7f}", "vé", &"v".repeat(MAX_VERSION_LEN + 1)] {
            let body = json!({"version": bad, "clusters": [{"name": "a"}]}).to_string();
            let e = error(&body, Format::Json);
            assert_eq!(e.path.as_deref(), Some("version"), "{bad:?}: {e:?}");
        }
        let e = error(&json!({"version": "x".repeat(1 << 20)}).to_string(), Format::Json);
        assert!(e.message.contains("at most 128"), "{e:?}");
        let fine = "release 2026-12-01 (build #7)";
        assert_eq!(stored(&json!({"version": fine, "clusters": [{"name": "a"}]})).version, fine);
    }

    #[test]
    fn resources_are_kept_encoded_with_their_names_in_bundle_order() {
        let body = json!({
            "endpoints": [{"cluster_name": "e1"}],
            "clusters": [{"name": "c1"}, {"name": "c2"}],
            "listeners": [{"name": "l1"}],
        });
        let parsed = parse(body.to_string().as_bytes(), Format::Json).unwrap();
        let listed: Vec<(u32, &str)> = parsed.stored.resources.iter().map(|r| (r.field, r.name.as_str())).collect();
        assert_eq!(listed, [(2, "l1"), (3, "c1"), (3, "c2"), (5, "e1")]);
        let c2 = envoy_types::pb::envoy::config::cluster::v3::Cluster::decode(parsed.stored.resources[2].value.clone()).unwrap();
        assert_eq!(c2.name, "c2", "the stored bytes are the message");
    }

    #[test]
    fn what_is_accepted_at_the_decode_limit_prints_again() {
        // Nest Struct lists until the parse refuses; the deepest accepted
        // bundle must still print (GET) and parse back to the same content.
        let nested = |depth: usize| {
            let mut value = json!("leaf");
            for _ in 0..depth {
                value = json!([value]);
            }
            json!({"clusters": [{"name": "deep", "metadata": {"filter_metadata": {"x": {"k": value}}}}]}).to_string()
        };
        let deepest = (1..80).take_while(|depth| parse(nested(*depth).as_bytes(), Format::Json).is_ok()).last().unwrap();
        assert!(deepest > 30 && deepest < 79, "the limit is somewhere in between: {deepest}");
        let stored = parse(nested(deepest).as_bytes(), Format::Json).unwrap().stored;
        let printed = to_json(&stored).unwrap();
        assert_eq!(parse(&printed, Format::Json).unwrap().stored.content_hash, stored.content_hash);
    }

    #[test]
    fn printing_uses_proto_field_names_and_type_urls() {
        let body = listener_with_typed_config(json!({"@type": HCM, "statPrefix": "s"}));
        let parsed = parse(body.as_bytes(), Format::Json).unwrap();
        let printed = to_json(&parsed.stored).unwrap();
        let printed: serde_json::Value = serde_json::from_slice(&printed).unwrap();
        let typed_config = &printed["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
        assert_eq!(typed_config["@type"], HCM);
        assert_eq!(typed_config["stat_prefix"], "s");
        assert_eq!(printed["version"], parsed.stored.version);
        assert!(printed.get("clusters").is_none(), "empty lists are left out");
        // What GET prints parses back to the same content.
        let again = parse(printed.to_string().as_bytes(), Format::Json).unwrap();
        assert_eq!(again.stored, parsed.stored);
    }
}
