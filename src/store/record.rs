//! The stored form of one bundle: a checksummed record.
//!
//! A record is `SXD2`, the SHA-256 of the payload, then the payload (an
//! encoded `sxds.v1.StoredBundle`). The checksum is verified on every load,
//! so a flipped bit is found rather than served. Records written before
//! sxds 0.2 (a bare `LegacyStoredBundle`) are still read, for upgrading.

use bytes::Bytes;
use prost::Message;
use sha2::{Digest, Sha256};

use crate::{
    resource_type::ResourceType,
    schema::{LegacyStoredBundle, StoredBundle},
};

const MAGIC: &[u8; 4] = b"SXD2";
const HEADER_LEN: usize = MAGIC.len() + 32;

/// What was read from a record.
#[derive(Debug)]
pub enum Decoded {
    Current(StoredBundle),
    /// A pre-0.2 record: to be rewritten in the current form.
    Legacy(StoredBundle),
}

/// Why a record cannot be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("checksum mismatch: the record was altered after it was written")]
    Checksum,
    #[error("record is truncated ({0} bytes)")]
    Truncated(usize),
    #[error("record does not decode: {0}")]
    Decode(String),
    #[error("record is inconsistent: {0}")]
    Invalid(String),
}

pub fn encode(bundle: &StoredBundle) -> Vec<u8> {
    let payload = bundle.encode_to_vec();
    let mut record = Vec::with_capacity(HEADER_LEN + payload.len());
    record.extend_from_slice(MAGIC);
    record.extend_from_slice(&Sha256::digest(&payload));
    record.extend_from_slice(&payload);
    record
}

pub fn decode(record: &[u8]) -> Result<Decoded, RecordError> {
    let Some(rest) = record.strip_prefix(MAGIC) else {
        return decode_legacy(record).map(Decoded::Legacy);
    };
    if rest.len() < 32 {
        return Err(RecordError::Truncated(record.len()));
    }
    let (checksum, payload) = rest.split_at(32);
    if Sha256::digest(payload).as_slice() != checksum {
        return Err(RecordError::Checksum);
    }
    // One copy of the payload; every resource is a slice of it.
    let bundle = StoredBundle::decode(Bytes::copy_from_slice(payload)).map_err(|e| RecordError::Decode(e.to_string()))?;
    check(&bundle)?;
    Ok(Decoded::Current(bundle))
}

/// What the cache relies on: every resource of a known type (or an
/// endpoint source), named.
fn check(bundle: &StoredBundle) -> Result<(), RecordError> {
    for (i, resource) in bundle.resources.iter().enumerate() {
        if ResourceType::from_bundle_field(resource.field).is_none() && resource.field != crate::schema::ENDPOINT_SOURCES_FIELD {
            return Err(RecordError::Invalid(format!("resource {i} has unknown field {}", resource.field)));
        }
        if resource.name.is_empty() {
            return Err(RecordError::Invalid(format!("resource {i} has no name")));
        }
    }
    if bundle.version.is_empty() || bundle.content_hash.is_empty() {
        return Err(RecordError::Invalid("no version or content hash".into()));
    }
    Ok(())
}

fn decode_legacy(record: &[u8]) -> Result<StoredBundle, RecordError> {
    let legacy = LegacyStoredBundle::decode(record).map_err(|e| RecordError::Decode(e.to_string()))?;
    let upgraded = StoredBundle::from_bundle(legacy.bundle.unwrap_or_default(), legacy.content_hash);
    check(&upgraded)?;
    Ok(upgraded)
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;

    use super::*;
    use crate::schema::{Bundle, StoredResource};

    fn bundle() -> StoredBundle {
        let value = Cluster { name: "a".into(), ..Default::default() }.encode_to_vec().into();
        let resources = vec![StoredResource { field: ResourceType::Cluster.bundle_field(), name: "a".into(), value }];
        StoredBundle { version: "v1".into(), content_hash: "ab".repeat(32), resources }
    }

    #[test]
    fn records_round_trip_and_every_flipped_bit_is_caught() {
        let record = encode(&bundle());
        assert!(matches!(decode(&record), Ok(Decoded::Current(b)) if b == bundle()));
        for bit in 0..record.len() * 8 {
            let mut flipped = record.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(decode(&flipped).is_err(), "bit {bit} flipped and accepted");
        }
        assert_eq!(decode(&record[..20]).unwrap_err(), RecordError::Truncated(20));
        assert!(decode(&[]).is_err(), "an empty record is not an empty bundle");
    }

    #[test]
    fn legacy_records_are_upgraded() {
        let cluster = Cluster { name: "a".into(), ..Default::default() };
        let legacy = LegacyStoredBundle {
            bundle: Some(Bundle { version: "v1".into(), clusters: vec![cluster], ..Default::default() }),
            content_hash: "ab".repeat(32),
        };
        let Ok(Decoded::Legacy(upgraded)) = decode(&legacy.encode_to_vec()) else { panic!("legacy record not read") };
        assert_eq!(upgraded, bundle());
    }
}
