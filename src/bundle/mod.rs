//! Bundles: what a PUT carries. Parsing (JSON or YAML, canonical proto3 JSON
//! for every Envoy type), strict reading (no key twice, YAML depth and alias
//! limits), validation (names, duplicates, references) and the bundle's
//! version.

mod parse;
mod strict;
mod validate;

pub use parse::{parse, to_json, Format, Parsed, MAX_VERSION_LEN};
pub use validate::{validate, Facts};

use crate::{resource_type::ResourceType, schema::StoredBundle};

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

/// Resource counts per type, for REST answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub listeners: usize,
    pub clusters: usize,
    pub routes: usize,
    pub endpoints: usize,
}

impl Counts {
    pub fn of(bundle: &StoredBundle) -> Self {
        Self {
            listeners: bundle.count(ResourceType::Listener),
            clusters: bundle.count(ResourceType::Cluster),
            routes: bundle.count(ResourceType::Route),
            endpoints: bundle.count(ResourceType::Endpoint),
        }
    }
}
