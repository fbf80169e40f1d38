//! Discovery streams on the wire: requests are decoded with prost (through
//! tonic's `Streaming`), responses are framed from bytes encoded once per
//! snapshot.
//!
//! A protobuf message may be written as the concatenation of its fields, so a
//! `DiscoveryResponse` is assembled from shared chunks (each resource's
//! encoded `resources` entry, built once per version) plus a few small
//! per-stream fields (`nonce`). Per-stream work is copying bytes into one
//! gRPC frame, which is freed once written: no stream keeps a buffer.

use std::{
    convert::Infallible,
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue};
use http_body::Frame;
use prost::encoding::{encode_key, encode_varint, WireType};
use tokio::sync::mpsc;
use tonic::codec::{BufferSettings, Streaming};
use tonic_prost::ProstDecoder;

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;

/// Largest request accepted from a client (tonic's default).
const MAX_REQUEST_BYTES: usize = 4 << 20;

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

    /// The message as one gRPC length-prefixed frame: a zero "compressed"
    /// flag, the big-endian length, then the message.
    fn into_grpc_frame(self) -> Bytes {
        let len = self.len();
        let mut frame = BytesMut::with_capacity(5 + len);
        frame.put_u8(0);
        frame.put_u32(len as u32);
        self.chunks.iter().for_each(|chunk| frame.put_slice(chunk));
        frame.freeze()
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

/// Decodes the request body of a discovery stream.
pub fn requests<B>(body: B) -> Streaming<DiscoveryRequest>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError>,
{
    // Requests are small (a type, some names, a nonce): start with a small
    // buffer, since every idle stream keeps one.
    let decoder = ProstDecoder::new(BufferSettings::new(1024, 32 << 10));
    Streaming::new_request(decoder, body, None, Some(MAX_REQUEST_BYTES))
}

/// The response body of a discovery stream: one gRPC frame per response,
/// then the OK trailers when the stream's task ends.
pub struct ResponseBody {
    responses: mpsc::Receiver<EncodedResponse>,
    finished: bool,
}

impl ResponseBody {
    pub fn new(responses: mpsc::Receiver<EncodedResponse>) -> Self {
        Self { responses, finished: false }
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.finished {
            return Poll::Ready(None);
        }
        match ready!(self.responses.poll_recv(cx)) {
            Some(response) => Poll::Ready(Some(Ok(Frame::data(response.into_grpc_frame())))),
            None => {
                self.finished = true;
                let mut trailers = HeaderMap::new();
                trailers.insert("grpc-status", HeaderValue::from_static("0"));
                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grpc_frame_is_the_length_prefix_then_the_chunks() {
        let mut response = EncodedResponse::default();
        response.push_string(1, "v1");
        response.push_string(5, "7");
        let frame = response.clone().into_grpc_frame();
        assert_eq!(frame[0], 0, "not compressed");
        assert_eq!(u32::from_be_bytes(frame[1..5].try_into().unwrap()) as usize, response.len());
        assert_eq!(&frame[5..], &response.to_bytes()[..]);
    }
}
