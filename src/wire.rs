//! Protobuf on the wire, the bottom layer: messages assembled from encoded
//! pieces, and the field numbers of the xDS messages sxds writes by hand.
//!
//! A protobuf message may be written as the concatenation of its fields, in
//! any order. So a response is a list of chunks: the few small fields of one
//! stream's response (nonce, version) plus resources encoded once per
//! snapshot and shared by every stream. Nothing here knows about streams.

use bytes::{BufMut, Bytes, BytesMut};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};

/// `google.protobuf.Any`.
pub mod any {
    pub const TYPE_URL: u32 = 1;
    pub const VALUE: u32 = 2;
}

/// `envoy.service.discovery.v3.DiscoveryResponse`.
pub mod discovery_response {
    pub const VERSION_INFO: u32 = 1;
    pub const RESOURCES: u32 = 2;
    pub const TYPE_URL: u32 = 4;
    pub const NONCE: u32 = 5;
}

/// `envoy.service.discovery.v3.DeltaDiscoveryResponse`.
pub mod delta_discovery_response {
    pub const SYSTEM_VERSION_INFO: u32 = 1;
    pub const RESOURCES: u32 = 2;
    pub const TYPE_URL: u32 = 4;
    pub const NONCE: u32 = 5;
    pub const REMOVED_RESOURCES: u32 = 6;
}

/// `envoy.service.discovery.v3.Resource`, an entry of a delta response.
pub mod resource {
    pub const VERSION: u32 = 1;
    /// The `Any`. Its number is that of `DiscoveryResponse.resources`, so
    /// one encoded entry serves both.
    pub const RESOURCE: u32 = 2;
    pub const NAME: u32 = 3;
    pub const ALIASES: u32 = 4;
}

// One encoded `resources` entry of a SotW response is the `resource` field
// of a delta `Resource` too.
const _: () = assert!(discovery_response::RESOURCES == resource::RESOURCE);

/// A message as a list of already encoded fields.
#[derive(Debug, Clone, Default)]
pub struct EncodedResponse {
    chunks: Vec<Bytes>,
}

impl EncodedResponse {
    /// Appends an already encoded field (or run of fields).
    pub fn push_encoded(&mut self, chunk: Bytes) {
        self.chunks.push(chunk);
    }

    /// The chunks, in order.
    pub fn chunks(&self) -> &[Bytes] {
        &self.chunks
    }

    pub fn into_chunks(self) -> Vec<Bytes> {
        self.chunks
    }

    /// The encoded message size.
    pub fn len(&self) -> usize {
        self.chunks.iter().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole message.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.len());
        self.chunks.iter().for_each(|chunk| out.put_slice(chunk));
        out.freeze()
    }
}

/// The encoded size of a length-delimited field of `len` bytes.
pub fn field_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

/// Writes the key and length of a length-delimited field; its `len` bytes follow.
pub fn put_field_head(buf: &mut impl BufMut, tag: u32, len: usize) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
}

/// Writes a string or bytes field; an empty one is left out, as proto3 does.
pub fn put_bytes_field(buf: &mut impl BufMut, tag: u32, value: &[u8]) {
    if !value.is_empty() {
        put_field_head(buf, tag, value.len());
        buf.put_slice(value);
    }
}

/// One length-delimited field (`tag`, then `payload`) as a chunk; tests
/// build expected bytes with it.
#[cfg(test)]
pub fn encode_bytes_field(tag: u32, payload: &[u8]) -> Bytes {
    let mut buf = Vec::with_capacity(field_len(tag, payload.len()));
    put_field_head(&mut buf, tag, payload.len());
    buf.extend_from_slice(payload);
    buf.into()
}

/// Appends field `tag` holding an `Any` of `type_url` around `value`, and
/// answers where the `Any` itself starts in `buf`.
pub fn put_any_field(buf: &mut Vec<u8>, tag: u32, type_url: &str, value: &[u8]) -> usize {
    let any_len = field_len(any::TYPE_URL, type_url.len()) + field_len(any::VALUE, value.len());
    put_field_head(buf, tag, any_len);
    let start = buf.len();
    put_bytes_field(buf, any::TYPE_URL, type_url.as_bytes());
    put_field_head(buf, any::VALUE, value.len());
    buf.extend_from_slice(value);
    start
}

/// A stable 64-bit digest of encoded bytes: equal bytes, equal digest, in
/// every process and every build (xxh3), so replicas agree on versions.
pub fn digest(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// A stable digest of a list of byte strings, in order: each one's length
/// goes in before it, so `["ab"]` and `["a", "b"]` differ.
pub fn list_digest<'a>(items: impl IntoIterator<Item = &'a [u8]>) -> u64 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for item in items {
        hasher.update(&(item.len() as u64).to_le_bytes());
        hasher.update(item);
    }
    hasher.digest()
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::google::protobuf::Any;
    use prost::Message;

    use super::*;

    #[test]
    fn an_any_field_is_the_any_prost_would_encode() {
        let any = Any { type_url: "type.googleapis.com/x.Y".into(), value: vec![1, 2, 3] };
        let mut buf = Vec::new();
        let start = put_any_field(&mut buf, 2, &any.type_url, &any.value);
        assert_eq!(buf, encode_bytes_field(2, &any.encode_to_vec()));
        assert_eq!(Any::decode(&buf[start..]).unwrap(), any);
    }

    #[test]
    fn a_message_is_the_concatenation_of_its_chunks() {
        let mut message = EncodedResponse::default();
        message.push_encoded(encode_bytes_field(1, b"v1"));
        message.push_encoded(encode_bytes_field(5, b"7"));
        let decoded = envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse::decode(message.to_bytes()).unwrap();
        assert_eq!((decoded.version_info.as_str(), decoded.nonce.as_str()), ("v1", "7"));
        assert_eq!(message.len(), message.to_bytes().len());
    }

    #[test]
    fn the_digest_is_stable_across_builds() {
        // A fixed value: a change of algorithm would make every replica and
        // every reconnecting delta client see every resource as changed.
        assert_eq!(digest(b"sxds"), xxhash_rust::xxh3::xxh3_64(b"sxds"));
        assert_eq!(format!("{:016x}", digest(b"")), "2d06800538d394c2");
    }
}
