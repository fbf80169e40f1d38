//! The gRPC codec for discovery streams: requests are decoded with prost,
//! responses are written from bytes encoded once per snapshot.
//!
//! A protobuf message may be written as the concatenation of its fields, so a
//! `DiscoveryResponse` is framed from shared chunks (each resource's encoded
//! `resources` entry, built once per version) plus a few small per-stream
//! fields (`nonce`). Per-stream work is copying bytes, never re-encoding.

use std::marker::PhantomData;

use bytes::{BufMut, Bytes};
use prost::encoding::{encode_key, encode_varint, WireType};
use tonic::{
    codec::{Codec, EncodeBuf, Encoder},
    Status,
};
use tonic_prost::ProstDecoder;

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;

/// A response message as a list of already encoded protobuf fields.
#[derive(Debug, Clone, Default)]
pub struct EncodedResponse {
    chunks: Vec<Bytes>,
}

impl EncodedResponse {
    /// Appends an already encoded field (or run of fields).
    pub fn push_encoded(&mut self, chunk: Bytes) {
        self.chunks.push(chunk);
    }

    /// Appends a string field.
    pub fn push_string(&mut self, tag: u32, value: &str) {
        if !value.is_empty() {
            self.chunks.push(encode_bytes_field(tag, value.as_bytes()));
        }
    }

    /// The chunks, in order.
    pub fn chunks(&self) -> &[Bytes] {
        &self.chunks
    }

    /// The whole message, for tests and for logging sizes.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = Vec::with_capacity(self.len());
        for chunk in &self.chunks {
            out.extend_from_slice(chunk);
        }
        out.into()
    }

    pub fn len(&self) -> usize {
        self.chunks.iter().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Encodes one length-delimited field (`tag`, then `payload`) as a chunk.
pub fn encode_bytes_field(tag: u32, payload: &[u8]) -> Bytes {
    let mut buf = Vec::with_capacity(payload.len() + 10);
    encode_key(tag, WireType::LengthDelimited, &mut buf);
    encode_varint(payload.len() as u64, &mut buf);
    buf.extend_from_slice(payload);
    buf.into()
}

/// Codec with prost-decoded requests `Req` and pre-encoded responses.
#[derive(Debug)]
pub struct XdsCodec<Req>(PhantomData<Req>);

impl<Req> Default for XdsCodec<Req> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

/// The state-of-the-world codec named by the generated service stubs.
pub type SotwCodec = XdsCodec<DiscoveryRequest>;

impl<Req: prost::Message + Default + Send + 'static> Codec for XdsCodec<Req> {
    type Encode = EncodedResponse;
    type Decode = Req;
    type Encoder = ResponseEncoder;
    type Decoder = ProstDecoder<Req>;

    fn encoder(&mut self) -> Self::Encoder {
        ResponseEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::default()
    }
}

#[derive(Debug, Default)]
pub struct ResponseEncoder;

impl Encoder for ResponseEncoder {
    type Item = EncodedResponse;
    type Error = Status;

    fn encode(&mut self, item: EncodedResponse, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(item.len());
        for chunk in item.chunks {
            dst.put(chunk);
        }
        Ok(())
    }
}
