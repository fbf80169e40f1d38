//! A state-of-the-world request as a stream reads it. Nearly every request
//! is an ACK repeating the names of the one before, and Envoy puts its
//! whole `node` (with its list of extensions, kilobytes) on each: decoding
//! that into a `DiscoveryRequest` allocated a `String` per name and the
//! node's tree, only for the stream to find nothing changed. Here one walk
//! over the wire bytes checks the [`limits`], decodes the few scalar fields
//! and digests the names; the names are read from the bytes again only when
//! the digest says the subscription changed, and the node only on the
//! stream's first request.

use bytes::Bytes;
use envoy_types::pb::{
    envoy::{config::core::v3::Node, service::discovery::v3::DiscoveryRequest},
    google::rpc::Status as RpcStatus,
};
use prost::Message;
use tonic::Status;

use super::limits::{self, Field};
use crate::wire;

// `DiscoveryRequest`'s field numbers.
const VERSION_INFO: u32 = 1;
const NODE: u32 = 2;
const RESOURCE_NAMES: u32 = 3;
const TYPE_URL: u32 = 4;
const RESPONSE_NONCE: u32 = 5;
const ERROR_DETAIL: u32 = 6;
const RESOURCE_LOCATORS: u32 = 7;

/// A decoded `DiscoveryRequest`, names and node left on the wire.
#[derive(Debug, Clone, Default)]
pub struct SotwRequest {
    pub version_info: String,
    pub type_url: String,
    pub response_nonce: String,
    pub error_detail: Option<RpcStatus>,
    /// The encoded message: names and node are read from it.
    message: Bytes,
    /// Whether it has a `node` field.
    has_node: bool,
    names: NamesOnWire,
}

/// Where a request's `resource_names` are in its encoding.
#[derive(Debug, Clone, Default)]
struct NamesOnWire {
    /// From the first name's field to the end of the last one's.
    span: std::ops::Range<usize>,
    /// Nothing else lies between them: how every protobuf library writes
    /// a repeated field (in field order), so the span is the list.
    contiguous: bool,
}

impl SotwRequest {
    /// Decodes and checks one request's wire bytes.
    pub fn decode(message: Bytes) -> Result<Self, Status> {
        let mut request = Self { message, ..Self::default() };
        let mut names: Option<NamesOnWire> = None;
        let mut rest = &request.message[..];
        let mut checks = limits::Checks::new(&limits::SOTW);
        let total = rest.len();
        while !rest.is_empty() {
            let at = total - rest.len();
            let field = limits::next_field(&mut rest)?;
            let Field { number, value: Some(value) } = field else {
                // Every field of a DiscoveryRequest is length-delimited.
                if (VERSION_INFO..=RESOURCE_LOCATORS).contains(&field.number) {
                    return Err(Status::invalid_argument(format!("not a discovery request: field {} has the wrong wire type", field.number)));
                }
                continue;
            };
            match number {
                RESOURCE_NAMES => {
                    checks.name(value.len())?;
                    // The names that follow in one run are taken at once.
                    checks.short_names(take_short_names(&mut rest))?;
                }
                _ => checks.check(&field)?,
            }
            match number {
                VERSION_INFO => request.version_info = text(value)?.to_owned(),
                TYPE_URL => request.type_url = text(value)?.to_owned(),
                RESPONSE_NONCE => request.response_nonce = text(value)?.to_owned(),
                ERROR_DETAIL => {
                    // Rare (a NACK), and prost merges repeated occurrences.
                    let error = request.error_detail.get_or_insert_with(RpcStatus::default);
                    error.merge(value).map_err(malformed)?;
                }
                NODE => request.has_node = true,
                RESOURCE_NAMES => {
                    let end = total - rest.len();
                    let names = names.get_or_insert(NamesOnWire { span: at..at, contiguous: true });
                    names.contiguous &= names.span.end == at;
                    names.span.end = end;
                }
                _ => {}
            }
        }
        request.names = names.unwrap_or_default();
        // Names are text: with only ASCII in the span (the usual case,
        // keys and short lengths included), one pass shows it for all.
        if !(request.names.contiguous && request.message[request.names.span.clone()].is_ascii()) {
            request.names_on_wire().try_for_each(|name| text(name).map(drop))?;
        }
        Ok(request)
    }

    /// The `resource_names`, in the order sent.
    pub fn resource_names(&self) -> impl Iterator<Item = &str> {
        // Checked by `decode`: every name is UTF-8.
        self.names_on_wire().map(|name| std::str::from_utf8(name).unwrap_or_default())
    }

    /// An order-independent digest of `resource_names`: the same set listed
    /// another way is the same subscription (R8). Two different lists
    /// colliding is a 2^-64 event.
    pub fn names_digest(&self) -> u64 {
        let (count, sum) = self.names_on_wire().fold((0u64, 0u64), |(count, sum), name| (count + 1, sum.wrapping_add(wire::digest(name))));
        count.wrapping_add(sum)
    }

    /// A digest of `resource_names` as sent, order included: one hash over
    /// their encoding, to tell an ACK that repeats the last request's list
    /// (nearly every request) without reading a name.
    pub fn names_wire_digest(&self) -> u64 {
        if self.names.contiguous {
            return wire::digest(&self.message[self.names.span.clone()]);
        }
        wire::list_digest(self.names_on_wire())
    }

    /// The node, decoded now (a stream reads it once, from its first request).
    pub fn node(&self) -> Result<Option<Node>, Status> {
        if !self.has_node {
            return Ok(None);
        }
        let mut rest = &self.message[..];
        let mut node: Option<Node> = None;
        while !rest.is_empty() {
            if let Field { number: NODE, value: Some(value) } = limits::next_field(&mut rest)? {
                // As prost does: a message field that repeats is merged.
                node.get_or_insert_with(Node::default).merge(value).map_err(malformed)?;
            }
        }
        Ok(node)
    }

    fn names_on_wire(&self) -> impl Iterator<Item = &[u8]> {
        let mut rest = &self.message[self.names.span.clone()];
        // Checked by `decode`: every field parses.
        std::iter::from_fn(move || loop {
            match limits::next_field(&mut rest).ok()? {
                Field { number: RESOURCE_NAMES, value: Some(value) } => return Some(value),
                _ => continue,
            }
        })
    }
}

impl From<&DiscoveryRequest> for SotwRequest {
    /// The same request as a client would send it (tests, tools).
    fn from(request: &DiscoveryRequest) -> Self {
        Self::decode(request.encode_to_vec().into()).expect("an encoded DiscoveryRequest decodes")
    }
}

/// The key of a `resource_names` entry: field 3, length-delimited.
const NAME_KEY: u8 = (RESOURCE_NAMES as u8) << 3 | 2;

/// Takes the `resource_names` entries at the front of `rest` that have a
/// one-byte length, and says how many. An ACK repeats a list of up to
/// thousands of names, all in one run (protobuf writes a repeated field's
/// entries together): this tight loop walks it at a few instructions per
/// name, where one `next_field` per name cost most of a request's decoding.
fn take_short_names(rest: &mut &[u8]) -> usize {
    let bytes = *rest;
    let (mut at, mut count) = (0, 0);
    while let [NAME_KEY, len, ref after @ ..] = bytes[at..] {
        let len = usize::from(len);
        if len >= 0x80 || after.len() < len {
            break; // a longer name or a malformed one: `next_field` takes it
        }
        at += 2 + len;
        count += 1;
    }
    *rest = &bytes[at..];
    count
}

fn text(value: &[u8]) -> Result<&str, Status> {
    std::str::from_utf8(value).map_err(|_| Status::invalid_argument("not a discovery request: a string field is not UTF-8"))
}

fn malformed(error: prost::DecodeError) -> Status {
    Status::invalid_argument(format!("not a discovery request: {error}"))
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;

    use super::*;

    fn decoded(request: &DiscoveryRequest) -> SotwRequest {
        SotwRequest::decode(request.encode_to_vec().into()).unwrap()
    }

    #[test]
    fn every_field_reads_as_prost_decodes_it() {
        let request = DiscoveryRequest {
            version_info: "v1".into(),
            node: Some(Node { id: "sidecar-1".into(), cluster: "c".into(), ..Default::default() }),
            resource_names: vec!["b".into(), "a".into(), "*".into()],
            type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
            response_nonce: "7".into(),
            error_detail: Some(RpcStatus { code: 3, message: "rejected".into(), details: vec![] }),
            ..Default::default()
        };
        let sotw = decoded(&request);
        assert_eq!(sotw.version_info, request.version_info);
        assert_eq!(sotw.type_url, request.type_url);
        assert_eq!(sotw.response_nonce, request.response_nonce);
        assert_eq!(sotw.error_detail, request.error_detail);
        assert_eq!(sotw.node().unwrap(), request.node);
        assert_eq!(sotw.resource_names().collect::<Vec<_>>(), ["b", "a", "*"]);

        let bare = decoded(&DiscoveryRequest::default());
        assert_eq!(bare.node().unwrap(), None);
        assert_eq!(bare.resource_names().count(), 0);
        assert_eq!(bare.error_detail, None);
    }

    #[test]
    fn the_names_digest_ignores_order_and_nothing_else() {
        let names = |names: &[&str]| decoded(&DiscoveryRequest { resource_names: names.iter().map(|n| n.to_string()).collect(), ..Default::default() });
        assert_eq!(names(&["a", "b"]).names_digest(), names(&["b", "a"]).names_digest());
        assert_ne!(names(&["a", "b"]).names_digest(), names(&["a"]).names_digest());
        assert_ne!(names(&["a"]).names_digest(), names(&["a", "a"]).names_digest());
        assert_ne!(names(&[]).names_digest(), names(&[""]).names_digest());
        // Other fields do not count.
        let acked = decoded(&DiscoveryRequest { resource_names: vec!["a".into()], response_nonce: "3".into(), ..Default::default() });
        assert_eq!(acked.names_digest(), names(&["a"]).names_digest());
        assert_eq!(acked.names_wire_digest(), names(&["a"]).names_wire_digest());
    }

    #[test]
    fn the_wire_digest_tells_the_same_list_in_the_same_order() {
        let names = |names: &[&str]| decoded(&DiscoveryRequest { resource_names: names.iter().map(|n| n.to_string()).collect(), ..Default::default() });
        assert_eq!(names(&["a", "b"]).names_wire_digest(), names(&["a", "b"]).names_wire_digest());
        assert_ne!(names(&["a", "b"]).names_wire_digest(), names(&["b", "a"]).names_wire_digest());
        assert_ne!(names(&["ab"]).names_wire_digest(), names(&["a", "b"]).names_wire_digest());
        assert_ne!(names(&[]).names_wire_digest(), names(&[""]).names_wire_digest());

        // Names split by another field (no library writes that, but it is
        // valid protobuf): read and digested one by one, to the same effect.
        let mut split = DiscoveryRequest { resource_names: vec!["a".into()], ..Default::default() }.encode_to_vec();
        split.extend(DiscoveryRequest { type_url: "t".into(), ..Default::default() }.encode_to_vec());
        split.extend(DiscoveryRequest { resource_names: vec!["é".into()], ..Default::default() }.encode_to_vec());
        let split = SotwRequest::decode(split.into()).unwrap();
        assert_eq!(split.resource_names().collect::<Vec<_>>(), ["a", "é"]);
        assert_eq!(split.type_url, "t");
        assert_eq!(split.names_digest(), names(&["é", "a"]).names_digest());
        assert_eq!(split.names_wire_digest(), split.clone().names_wire_digest());
    }

    #[test]
    fn bad_strings_and_limits_are_refused() {
        // Field 3 (a name) holding invalid UTF-8.
        let invalid = Bytes::from_static(&[0x1a, 0x02, 0xff, 0xfe]);
        let status = SotwRequest::decode(invalid).unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("UTF-8"), "{}", status.message());

        let long = DiscoveryRequest { resource_names: vec!["n".repeat(limits::MAX_RESOURCE_NAME_BYTES + 1)], ..Default::default() };
        let status = SotwRequest::decode(long.encode_to_vec().into()).unwrap_err();
        assert!(status.message().contains("4096 bytes"), "{}", status.message());

        let truncated = Bytes::from_static(&[0x22, 0x05, b'a']);
        assert_eq!(SotwRequest::decode(truncated).unwrap_err().code(), tonic::Code::InvalidArgument);
        // Field 3 as a varint: prost refuses it too.
        let wire_type = Bytes::from_static(&[0x18, 0x01]);
        assert!(SotwRequest::decode(wire_type.clone()).unwrap_err().message().contains("wire type"));
        assert!(DiscoveryRequest::decode(wire_type).is_err());
        // Unknown fields are skipped, as prost does.
        assert_eq!(SotwRequest::decode(Bytes::from_static(&[0x50, 0x01])).unwrap().resource_names().count(), 0);
    }

    #[test]
    fn a_run_of_names_is_counted_checked_and_read_whole() {
        // Short names (taken by the run) around longer ones (taken field by field).
        let names: Vec<String> = (0..300).map(|i| "n".repeat([1, 126, 127, 128, 200, 0][i % 6]) + &i.to_string()).collect();
        let request = DiscoveryRequest { resource_names: names.clone(), type_url: "t".into(), ..Default::default() };
        let sotw = decoded(&request);
        assert_eq!(sotw.resource_names().collect::<Vec<_>>(), names);
        assert_eq!(sotw.type_url, "t");

        // The limit on the count holds inside a run.
        let many = DiscoveryRequest { resource_names: vec!["x".into(); limits::MAX_RESOURCE_NAMES + 1], ..Default::default() };
        assert!(SotwRequest::decode(many.encode_to_vec().into()).unwrap_err().message().contains("100000 resources"));
        let most = DiscoveryRequest { resource_names: vec!["x".into(); limits::MAX_RESOURCE_NAMES], ..Default::default() };
        assert_eq!(decoded(&most).resource_names().count(), limits::MAX_RESOURCE_NAMES);

        // A name cut short at the end of a run is malformed, as prost finds it.
        let mut truncated = DiscoveryRequest { resource_names: vec!["a".into(), "b".into()], ..Default::default() }.encode_to_vec();
        truncated.extend([NAME_KEY, 0x05, b'c']);
        assert!(DiscoveryRequest::decode(&truncated[..]).is_err());
        assert_eq!(SotwRequest::decode(truncated.into()).unwrap_err().code(), tonic::Code::InvalidArgument);
        // So is invalid UTF-8 in a name within a run.
        let mut invalid = DiscoveryRequest { resource_names: vec!["a".into()], ..Default::default() }.encode_to_vec();
        invalid.extend([NAME_KEY, 0x01, 0xff]);
        assert!(SotwRequest::decode(invalid.into()).unwrap_err().message().contains("UTF-8"));
    }
}
