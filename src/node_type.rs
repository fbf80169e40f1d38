//! Node types: the key bundles are stored and served under. An Envoy's node
//! type is its node id up to the first `-` (`sidecar-app1` → `sidecar`).

use std::{fmt, sync::Arc};

/// A validated node type. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeType(Arc<str>);

/// Why a string is not a node type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid node type {value:?}: {reason}")]
pub struct InvalidNodeType {
    pub value: String,
    pub reason: &'static str,
}

const MAX_LEN: usize = 128;

impl NodeType {
    /// Parses the node type named in a REST path. It must be a whole node
    /// type: a `-` would make it unreachable, since node ids split there.
    pub fn parse(value: &str) -> Result<Self, InvalidNodeType> {
        let invalid = |reason| InvalidNodeType { value: value.to_owned(), reason };
        if value.is_empty() {
            return Err(invalid("must not be empty"));
        }
        if value.len() > MAX_LEN {
            return Err(invalid("longer than 128 characters"));
        }
        if value.contains('-') {
            return Err(invalid("must not contain '-': node ids are split at the first '-'"));
        }
        if !value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.')) {
            return Err(invalid("only ASCII letters, digits, '_' and '.' are allowed"));
        }
        Ok(Self(value.into()))
    }

    /// The node type of an Envoy node id: everything before the first `-`,
    /// or the whole id when it has none.
    pub fn of_node_id(node_id: &str) -> Self {
        let end = node_id.find('-').unwrap_or(node_id.len());
        Self(node_id[..end].into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_type_is_the_id_up_to_the_first_dash() {
        assert_eq!(NodeType::of_node_id("sidecar-app1").as_str(), "sidecar");
        assert_eq!(NodeType::of_node_id("sidecar-app1-eu").as_str(), "sidecar");
        assert_eq!(NodeType::of_node_id("gateway").as_str(), "gateway");
        assert_eq!(NodeType::of_node_id("-x").as_str(), "");
    }

    #[test]
    fn rest_node_types_are_validated() {
        assert!(NodeType::parse("sidecar").is_ok());
        assert!(NodeType::parse("edge_v2.eu").is_ok());
        for bad in ["", "side-car", "a/b", "ä", &"x".repeat(129)] {
            assert!(NodeType::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
