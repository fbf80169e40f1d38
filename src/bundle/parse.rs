//! From request bytes to a [`StoredBundle`]: one schema (`sxds.v1.Bundle`)
//! drives the parse, so unknown fields, wrong value types and unknown `@type`s
//! are all refused with the path of the offending field.

use prost::Message;
use prost_reflect::{DynamicMessage, SerializeOptions};
use serde::de::DeserializeSeed;
use sha2::{Digest, Sha256};

use super::BundleError;
use crate::schema::{self, Bundle, StoredBundle};

/// The body's syntax, from the request's `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
}

/// Parses a bundle and fills in what the store needs: the content hash and,
/// when the body has none, a version derived from it.
pub fn parse(body: &[u8], format: Format) -> Result<StoredBundle, BundleError> {
    let mut message = match format {
        Format::Json => {
            let mut de = serde_json::Deserializer::from_slice(body);
            let message = deserialize_tracked(&mut de)?;
            de.end().map_err(|e| BundleError::new(format!("malformed JSON: {e}")))?;
            message
        }
        Format::Yaml => {
            let value: serde_json::Value =
                serde_yaml_ng::from_slice(body).map_err(|e| BundleError::new(format!("malformed YAML: {e}")))?;
            deserialize_tracked(value)?
        }
    };

    let version = match message.get_field_by_name("version") {
        Some(v) => v.as_str().unwrap_or_default().to_owned(),
        None => String::new(),
    };
    message.clear_field_by_name("version");
    let content_hash = content_hash(&message)?;

    let mut bundle = Bundle::decode(message.encode_to_vec().as_slice())
        .map_err(|e| BundleError::new(format!("bundle does not decode: {e}")))?;
    bundle.version = if version.is_empty() { derived_version(&content_hash) } else { version };
    Ok(StoredBundle { bundle: Some(bundle), content_hash })
}

/// Deserializes `sxds.v1.Bundle`, remembering where an error happened.
fn deserialize_tracked<'de, D>(de: D) -> Result<DynamicMessage, BundleError>
where
    D: serde::Deserializer<'de>,
    D::Error: std::fmt::Display,
{
    let mut track = serde_path_to_error::Track::new();
    let tracked = serde_path_to_error::Deserializer::new(de, &mut track);
    schema::bundle_descriptor().deserialize(tracked).map_err(|e| {
        let path = track.path().to_string();
        let message = e.to_string();
        if path == "." || path.is_empty() {
            BundleError::new(message)
        } else {
            BundleError::at(path, message)
        }
    })
}

/// SHA-256 over the resources in canonical form: proto3 JSON with sorted
/// keys. Spelling differences (`1s` vs `1.000s`, camelCase vs snake_case,
/// JSON vs YAML) hash alike; map order cannot leak in.
fn content_hash(resources: &DynamicMessage) -> Result<String, BundleError> {
    let canonical = resources
        .serialize_with_options(serde_json::value::Serializer, &SerializeOptions::new())
        .map_err(|e| BundleError::new(format!("bundle cannot be printed as JSON: {e}")))?;
    let mut hasher = Sha256::new();
    write_sorted(&canonical, &mut hasher);
    Ok(hex(&hasher.finalize()))
}

/// Feeds a JSON value to the hasher with object keys in sorted order,
/// independent of serde_json's map implementation.
fn write_sorted(value: &serde_json::Value, hasher: &mut Sha256) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            hasher.update(b"{");
            for key in keys {
                hasher.update(serde_json::to_string(key).unwrap_or_default().as_bytes());
                hasher.update(b":");
                write_sorted(&map[key], hasher);
                hasher.update(b",");
            }
            hasher.update(b"}");
        }
        Value::Array(items) => {
            hasher.update(b"[");
            for item in items {
                write_sorted(item, hasher);
                hasher.update(b",");
            }
            hasher.update(b"]");
        }
        scalar => hasher.update(scalar.to_string().as_bytes()),
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
/// field names, the way users write it.
pub fn to_json(bundle: &Bundle) -> Result<serde_json::Value, BundleError> {
    let message = DynamicMessage::decode(schema::bundle_descriptor(), bundle.encode_to_vec().as_slice())
        .map_err(|e| BundleError::new(format!("stored bundle does not decode: {e}")))?;
    let options = SerializeOptions::new().use_proto_field_name(true);
    message
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| BundleError::new(format!("stored bundle cannot be printed: {e}")))
}
