//! Limits on what one xDS client may send, and the check that enforces
//! them. A request is checked on its wire bytes before prost allocates
//! anything for it: a 4 MiB request of 700,000 short names otherwise costs
//! 58 MB and most of a CPU-second to decode and subscribe to. A request over
//! a limit ends its stream with `INVALID_ARGUMENT` naming the limit.

use prost::encoding::{decode_key, decode_varint, WireType};
use tonic::Status;

/// Largest request message (tonic's default). Envoy's requests are a type,
/// names, a nonce and, once, the node: kilobytes.
pub const MAX_REQUEST_BYTES: usize = 4 << 20;

/// Most resource names (and xdstp resource locators) in one request. The
/// largest real subscriptions are EDS or RDS for every cluster or route of a
/// big mesh: tens of thousands. With names of 40 bytes or more, the 4 MiB
/// message limit binds first; this bounds the degenerate case of many tiny
/// names, whose decoded form costs about 14 times their wire size.
pub const MAX_RESOURCE_NAMES: usize = 100_000;

/// Longest resource name. Cluster, route and listener names are short;
/// the longest in use are xdstp:// URLs with context parameters, a few
/// hundred bytes. Every stream keeps the names it subscribes to.
pub const MAX_RESOURCE_NAME_BYTES: usize = 4 << 10;

/// Longest node id. Node ids such as Istio's `sidecar~IP~pod.namespace~domain`
/// stay under 700 bytes with every part at its Kubernetes maximum. The id is
/// kept per stream, shown by `GET /nodes` and written into log lines.
pub const MAX_NODE_ID_BYTES: usize = 1 << 10;

/// Where a request message keeps what the limits bound.
#[derive(Debug)]
pub struct Layout {
    /// The `Node` field.
    node: u32,
    /// Repeated string fields of resource names.
    names: &'static [u32],
    /// Repeated message fields whose field 1 is a resource name: resource
    /// locators, and entries of a map keyed by name.
    named: &'static [u32],
}

/// `DiscoveryRequest`: node 2, `resource_names` 3, `resource_locators` 7.
pub const SOTW: Layout = Layout { node: 2, names: &[3], named: &[7] };

/// `DeltaDiscoveryRequest`: node 1, names to subscribe 3 and unsubscribe 4,
/// `initial_resource_versions` 5 (a map), locators 8 and 9.
pub const DELTA: Layout = Layout { node: 1, names: &[3, 4], named: &[5, 8, 9] };

// Field 1 of a Node, of a ResourceLocator and of a map entry.
const NODE_ID: u32 = 1;
const ENTRY_NAME: u32 = 1;

/// Walks the top-level fields of an encoded request (and into its node and
/// named entries), counting names and measuring ids. Allocates nothing.
pub(super) fn check_request(layout: &Layout, mut message: &[u8]) -> Result<(), Status> {
    let mut checks = Checks::new(layout);
    while !message.is_empty() {
        checks.check(&next_field(&mut message)?)?;
    }
    Ok(())
}

/// The limits applied one top-level field at a time, for a decoder that
/// walks the fields itself (see `request`).
pub(super) struct Checks<'a> {
    layout: &'a Layout,
    names: usize,
}

impl<'a> Checks<'a> {
    pub(super) fn new(layout: &'a Layout) -> Self {
        Self { layout, names: 0 }
    }

    pub(super) fn check(&mut self, field: &Field<'_>) -> Result<(), Status> {
        let (layout, Some(value)) = (self.layout, field.value) else { return Ok(()) };
        let (plain, named) = (layout.names.contains(&field.number), layout.named.contains(&field.number));
        if plain {
            self.name(value.len())?;
        } else if named {
            self.name(longest_field(value, ENTRY_NAME)?)?;
        } else if field.number == layout.node {
            let id_len = longest_field(value, NODE_ID)?;
            if id_len > MAX_NODE_ID_BYTES {
                return Err(Status::invalid_argument(format!("a node.id of {id_len} bytes is longer than the limit of {MAX_NODE_ID_BYTES} bytes")));
            }
        }
        Ok(())
    }

    /// One more resource name, of `len` bytes.
    pub(super) fn name(&mut self, len: usize) -> Result<(), Status> {
        self.short_names(1)?;
        if len > MAX_RESOURCE_NAME_BYTES {
            return Err(Status::invalid_argument(format!("a resource name of {len} bytes is longer than the limit of {MAX_RESOURCE_NAME_BYTES} bytes")));
        }
        Ok(())
    }

    /// `count` more resource names whose lengths need no check: each is
    /// shorter than 128 bytes (so within [`MAX_RESOURCE_NAME_BYTES`]), or,
    /// from `name`, checked there.
    pub(super) fn short_names(&mut self, count: usize) -> Result<(), Status> {
        self.names += count;
        if self.names > MAX_RESOURCE_NAMES {
            return Err(Status::invalid_argument(format!("a discovery request may name at most {MAX_RESOURCE_NAMES} resources")));
        }
        Ok(())
    }
}

// A name of a one-byte length needs no length check.
const _: () = assert!(MAX_RESOURCE_NAME_BYTES >= 0x7f);

/// The longest length-delimited `field` of an encoded message.
fn longest_field(mut message: &[u8], field: u32) -> Result<usize, Status> {
    let mut longest = 0;
    while !message.is_empty() {
        if let Field { number, value: Some(value) } = next_field(&mut message)? {
            if number == field {
                longest = longest.max(value.len());
            }
        }
    }
    Ok(longest)
}

/// One field of an encoded message: its number and, when it is
/// length-delimited, its payload.
pub(super) struct Field<'a> {
    pub number: u32,
    pub value: Option<&'a [u8]>,
}

/// Takes one field off the front of `message`. Groups (which no xDS message
/// uses) and malformed input are refused, so nothing can hide behind them.
pub(super) fn next_field<'a>(message: &mut &'a [u8]) -> Result<Field<'a>, Status> {
    // A one-byte key and a one-byte length: a name, a nonce, a type URL,
    // nearly every field of a request. prost's varint decoding costs more
    // than the field.
    if let &[key, len, ref rest @ ..] = *message {
        if key < 0x80 && key & 0x07 == 2 && key >> 3 != 0 && len < 0x80 && rest.len() >= usize::from(len) {
            let (value, rest) = rest.split_at(usize::from(len));
            *message = rest;
            return Ok(Field { number: u32::from(key >> 3), value: Some(value) });
        }
    }
    let malformed = || Status::invalid_argument("not a discovery request: malformed protobuf");
    let (number, wire_type) = decode_key(message).map_err(|_| malformed())?;
    let skip = match wire_type {
        WireType::Varint => {
            decode_varint(message).map_err(|_| malformed())?;
            0
        }
        WireType::SixtyFourBit => 8,
        WireType::ThirtyTwoBit => 4,
        WireType::LengthDelimited => {
            let len = usize::try_from(decode_varint(message).map_err(|_| malformed())?).map_err(|_| malformed())?;
            let value = message.get(..len).ok_or_else(malformed)?;
            *message = &message[len..];
            return Ok(Field { number, value: Some(value) });
        }
        WireType::StartGroup | WireType::EndGroup => return Err(malformed()),
    };
    *message = message.get(skip..).ok_or_else(malformed)?;
    Ok(Field { number, value: None })
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::{config::core::v3::Node, service::discovery::v3::DiscoveryRequest};
    use prost::Message;

    use super::*;

    fn encoded(request: &DiscoveryRequest) -> Vec<u8> {
        request.encode_to_vec()
    }

    #[test]
    fn requests_within_the_limits_pass_and_others_name_the_limit() {
        let node = |id: &str| Some(Node { id: id.to_owned(), cluster: "c".to_owned(), ..Default::default() });
        let names = |n: usize, len: usize| (0..n).map(|i| format!("{i:0len$}")).collect::<Vec<_>>();
        let ok = DiscoveryRequest { node: node(&"n".repeat(MAX_NODE_ID_BYTES)), resource_names: names(10, MAX_RESOURCE_NAME_BYTES), ..Default::default() };
        check_request(&SOTW, &encoded(&ok)).unwrap();
        let ok = DiscoveryRequest { resource_names: names(MAX_RESOURCE_NAMES, 6), ..Default::default() };
        check_request(&SOTW, &encoded(&ok)).unwrap();

        let cases = [
            (DiscoveryRequest { resource_names: names(MAX_RESOURCE_NAMES + 1, 1), ..Default::default() }, "100000 resources"),
            (DiscoveryRequest { resource_names: names(1, MAX_RESOURCE_NAME_BYTES + 1), ..Default::default() }, "4096 bytes"),
            (DiscoveryRequest { node: node(&"n".repeat(MAX_NODE_ID_BYTES + 1)), ..Default::default() }, "1024 bytes"),
        ];
        for (request, limit) in cases {
            let status = check_request(&SOTW, &encoded(&request)).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(status.message().contains(limit), "{:?} does not name {limit}", status.message());
        }
        // A group, which no xDS message has, cannot hide names behind it.
        assert!(check_request(&SOTW, &[0x0b, 0x0c]).is_err());
        assert!(check_request(&SOTW, &[0x12, 0x05, b'a']).is_err(), "a truncated field is refused");
    }

    #[test]
    fn delta_requests_are_held_to_the_same_limits_in_every_name_field() {
        use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
        let names = |n: usize| (0..n).map(|i| format!("{i:06}")).collect::<Vec<_>>();
        let half = MAX_RESOURCE_NAMES / 2;
        let ok = DeltaDiscoveryRequest { resource_names_subscribe: names(half), resource_names_unsubscribe: names(half), ..Default::default() };
        check_request(&DELTA, &ok.encode_to_vec()).unwrap();
        let versions = names(2).into_iter().map(|n| (n, "v".to_owned())).collect();
        let over = DeltaDiscoveryRequest { resource_names_subscribe: names(half), resource_names_unsubscribe: names(half), initial_resource_versions: versions, ..Default::default() };
        assert!(check_request(&DELTA, &over.encode_to_vec()).unwrap_err().message().contains("100000 resources"));
        let long = DeltaDiscoveryRequest { initial_resource_versions: [("x".repeat(MAX_RESOURCE_NAME_BYTES + 1), String::new())].into(), ..Default::default() };
        assert!(check_request(&DELTA, &long.encode_to_vec()).unwrap_err().message().contains("4096 bytes"));
        let node = Some(Node { id: "n".repeat(MAX_NODE_ID_BYTES + 1), ..Default::default() });
        let request = DeltaDiscoveryRequest { node, ..Default::default() };
        assert!(check_request(&DELTA, &request.encode_to_vec()).unwrap_err().message().contains("1024 bytes"));
    }
}
