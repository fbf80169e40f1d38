//! Discovery streams on the wire: requests are read off the request body
//! ([`Requests`]) and checked against the [`limits`] as they are decoded;
//! responses are framed from bytes encoded once per snapshot.
//!
//! A response is an [`EncodedResponse`] (see [`crate::wire`]): shared chunks
//! (each resource's encoded entry, built once per version) plus a few small
//! per-stream fields (`nonce`). A stream's [`Outbox`] hands hyper the 5-byte
//! gRPC prefix and then slices of those shared chunks: no stream holds a private
//! copy of a response, however slowly its client reads. Only chunks smaller
//! than [`COALESCE_BELOW`] are copied, into one piece of at most
//! [`PIECE_BYTES`].

use std::{
    collections::VecDeque,
    marker::PhantomData,
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue};
use prost::Message;
use tokio::time::Instant;
use tonic::Status;

use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;

use super::{limits, request::SotwRequest};
pub use crate::wire::EncodedResponse;

/// Largest piece of a response handed to hyper at once. h2 takes a whole
/// piece into its send buffer as soon as the stream has any window left, so
/// this bounds what it holds beyond the window of a client that stops
/// reading. 16 KiB is HTTP/2's default frame size: one piece, one frame.
const PIECE_BYTES: usize = 16 << 10;

/// Chunks smaller than this are copied together into one piece rather than
/// sent as a frame each (a response naming 3,000 small clusters would
/// otherwise be 3,000 frames). Larger chunks go out as slices of the
/// shared bytes.
const COALESCE_BELOW: usize = 4 << 10;

// A small chunk always fits in an empty piece, so every piece has bytes.
const _: () = assert!(COALESCE_BELOW <= PIECE_BYTES);

/// The requests of one discovery stream, read off its request body.
/// Checked against the [`limits`]: over one, a request comes out as an
/// `INVALID_ARGUMENT` status naming it; over [`limits::MAX_REQUEST_BYTES`],
/// as `OUT_OF_RANGE`.
///
/// A request that arrives within one HTTP/2 DATA frame (nearly every one)
/// is a slice of that frame, not a copy; only one split over frames is
/// gathered, into a buffer that grows as its bytes arrive and goes with it. An idle
/// stream holds no buffer: tonic's `Streaming` kept one per stream, as large
/// as the stream's largest request (the first, with the node: kilobytes).
pub struct Requests<M, B = axum::body::Body> {
    body: B,
    /// What the last DATA frame holds beyond the requests taken from it.
    rest: Bytes,
    /// A request split over frames, as far as it has arrived.
    partial: BytesMut,
    ended: bool,
    message: PhantomData<fn() -> M>,
}

/// gRPC's prefix of each message: a compressed flag and a 4-byte length.
const PREFIX: usize = 5;

pub fn requests<M: WireRequest, B>(body: B) -> Requests<M, B> {
    Requests { body, rest: Bytes::new(), partial: BytesMut::new(), ended: false, message: PhantomData }
}

impl<M, B> Requests<M, B>
where
    M: WireRequest,
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<tonic::codegen::StdError>,
{
    /// The next request; `None` once the client closed its side.
    pub async fn message(&mut self) -> Result<Option<M>, Status> {
        std::future::poll_fn(|cx| self.poll_message(cx)).await
    }

    pub fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<M>, Status>> {
        loop {
            if let Some(message) = self.take_message()? {
                return Poll::Ready(M::decode(message).map(Some));
            }
            if self.ended {
                return Poll::Ready(Ok(None));
            }
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    // Trailers, which a client has no reason to send, are ignored.
                    if let Ok(data) = frame.into_data() {
                        // `take_message` used up the last frame before asking for one.
                        debug_assert!(self.rest.is_empty());
                        self.rest = data;
                    }
                }
                Some(Err(error)) => return Poll::Ready(Err(Status::from_error(error.into()))),
                None if self.partial.is_empty() && self.rest.is_empty() => self.ended = true,
                None => return Poll::Ready(Err(Status::internal("the request stream ended inside a message"))),
            }
        }
    }

    /// A whole request's bytes, once they have arrived.
    fn take_message(&mut self) -> Result<Option<Bytes>, Status> {
        if self.partial.is_empty() {
            // Within what the frame holds: a slice of it.
            if self.rest.len() >= PREFIX {
                let len = message_len(&self.rest[..PREFIX])?;
                if self.rest.len() >= PREFIX + len {
                    let message = self.rest.split_to(PREFIX + len);
                    return Ok(Some(message.slice(PREFIX..)));
                }
            }
            if self.rest.is_empty() {
                return Ok(None);
            }
        }
        // Split over frames: gathered.
        loop {
            let wanted = match self.partial.len() {
                n if n < PREFIX => PREFIX,
                _ => PREFIX + message_len(&self.partial[..PREFIX])?,
            };
            if self.partial.len() == wanted {
                let message = std::mem::take(&mut self.partial).freeze();
                return Ok(Some(message.slice(PREFIX..)));
            }
            if self.rest.is_empty() {
                return Ok(None);
            }
            // Grown as the bytes arrive, not to the length announced: a
            // client cannot make a stream hold 4 MiB by sending 5 bytes.
            let taken = self.rest.split_to((wanted - self.partial.len()).min(self.rest.len()));
            self.partial.extend_from_slice(&taken);
        }
    }
}

/// The length a gRPC message prefix announces, within the limit.
fn message_len(prefix: &[u8]) -> Result<usize, Status> {
    if prefix[0] != 0 {
        return Err(Status::invalid_argument("compressed discovery requests are not supported (no grpc-encoding is accepted)"));
    }
    let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    if len > limits::MAX_REQUEST_BYTES {
        return Err(Status::out_of_range(format!(
            "a discovery request of {len} bytes is larger than the limit of {} bytes",
            limits::MAX_REQUEST_BYTES
        )));
    }
    Ok(len)
}

/// A discovery request as a stream takes it off the wire: checked against
/// the [`limits`] before anything is allocated for it.
pub trait WireRequest: Sized + Send + 'static {
    fn decode(message: Bytes) -> Result<Self, Status>;
}

impl WireRequest for SotwRequest {
    fn decode(message: Bytes) -> Result<Self, Status> {
        SotwRequest::decode(message)
    }
}

impl WireRequest for DeltaDiscoveryRequest {
    fn decode(message: Bytes) -> Result<Self, Status> {
        limits::check_request(&limits::DELTA, &message)?;
        Message::decode(message).map_err(|error| Status::invalid_argument(format!("not a discovery request: {error}")))
    }
}

/// The responses a stream has due, handed to hyper piece by piece: each as
/// its gRPC prefix and then its chunks, in pieces of at most
/// [`PIECE_BYTES`]. A response is taken once hyper asks for more after its
/// last piece; hyper asks only once the previous piece found flow-control
/// window.
#[derive(Default)]
pub struct Outbox {
    /// Responses not begun yet, and when each was queued.
    queued: VecDeque<(Instant, EncodedResponse)>,
    /// The response being handed out, and when it was queued.
    current: Option<(Instant, Outgoing)>,
}

impl Outbox {
    pub fn push(&mut self, response: EncodedResponse, queued_at: Instant) {
        self.queued.push_back((queued_at, response));
    }

    /// The next piece to send; `None` once every response is taken.
    pub fn next_piece(&mut self) -> Option<Bytes> {
        loop {
            if let Some((_, outgoing)) = &mut self.current {
                if let Some(piece) = outgoing.next_piece() {
                    return Some(piece);
                }
                self.current = None;
            }
            let (queued_at, response) = self.queued.pop_front()?;
            self.current = Some((queued_at, Outgoing::new(response)));
        }
    }

    /// When the oldest response the client has not taken in full was
    /// queued; `None` when it has taken them all.
    pub fn oldest_untaken(&self) -> Option<Instant> {
        self.current.as_ref().map(|(at, _)| *at).or_else(|| self.queued.front().map(|(at, _)| *at))
    }
}

/// The trailers a stream ends with: `status`, or OK.
pub fn trailers(status: Option<Status>) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    let written = status.is_some_and(|status| status.add_header(&mut trailers).is_ok());
    if !written {
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
    }
    trailers
}

/// One response on its way out.
struct Outgoing {
    /// The gRPC prefix, until it is sent: a zero "compressed" flag and the
    /// big-endian message length.
    prefix: Option<[u8; 5]>,
    /// What is left of the chunk being sent (empty between chunks).
    partial: Bytes,
    /// `partial` is a large chunk going out in slices, its tail included.
    slicing: bool,
    chunks: std::vec::IntoIter<Bytes>,
}

impl Outgoing {
    fn new(response: EncodedResponse) -> Self {
        let mut prefix = [0; 5];
        // A response is at most a bundle's size, which is far below 4 GiB.
        prefix[1..].copy_from_slice(&(response.len() as u32).to_be_bytes());
        Self { prefix: Some(prefix), partial: Bytes::new(), slicing: false, chunks: response.into_chunks().into_iter() }
    }

    /// The next piece: a slice of a large chunk, or the prefix and a run of
    /// small chunks copied together; `None` once all is handed out.
    fn next_piece(&mut self) -> Option<Bytes> {
        if self.partial.is_empty() {
            self.partial = self.chunks.next().unwrap_or_default();
        }
        let prefix = self.prefix.take();
        if prefix.is_none() {
            if self.partial.is_empty() {
                return None;
            }
            if self.slicing || self.partial.len() >= COALESCE_BELOW {
                let piece = self.partial.split_to(self.partial.len().min(PIECE_BYTES));
                self.slicing = !self.partial.is_empty();
                return Some(piece);
            }
        }
        // How many small chunks fit in one piece after the prefix.
        let mut len = prefix.map_or(0, |prefix| prefix.len());
        let mut count = 0;
        for chunk in std::iter::once(&self.partial).chain(self.chunks.as_slice()) {
            if chunk.len() >= COALESCE_BELOW || len + chunk.len() > PIECE_BYTES {
                break;
            }
            len += chunk.len();
            count += 1;
        }
        let mut piece = BytesMut::with_capacity(len);
        if let Some(prefix) = prefix {
            piece.put_slice(&prefix);
        }
        for i in 0..count {
            let chunk = if i == 0 { std::mem::take(&mut self.partial) } else { self.chunks.next().unwrap_or_default() };
            piece.put_slice(&chunk);
        }
        Some(piece.freeze())
    }
}

#[cfg(test)]
mod tests {
    use std::{convert::Infallible, sync::Arc};

    use http_body::Frame;

    use super::*;
    use crate::wire::encode_bytes_field;

    /// A request exactly as it came off the wire.
    struct Raw(Bytes);

    impl WireRequest for Raw {
        fn decode(message: Bytes) -> Result<Self, Status> {
            Ok(Raw(message))
        }
    }

    fn body_of(frames: Vec<Bytes>) -> impl http_body::Body<Data = Bytes, Error = Infallible> + Unpin {
        let frames = frames.into_iter().map(|data| Ok::<_, Infallible>(Frame::data(data)));
        http_body_util::StreamBody::new(futures::stream::iter(frames))
    }

    fn grpc(message: &[u8]) -> Vec<u8> {
        let mut framed = vec![0];
        framed.extend((message.len() as u32).to_be_bytes());
        framed.extend(message);
        framed
    }

    #[tokio::test]
    async fn requests_are_slices_of_their_frame_or_gathered_across_frames() {
        // Two requests and the start of a third in one frame; the third's
        // prefix itself split; an empty request last.
        let third: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let framed_third = grpc(&third);
        let mut first_frame = [grpc(b"one"), grpc(b"two")].concat();
        first_frame.extend(&framed_third[..2]);
        let first_frame = Bytes::from(first_frame);
        let frames = vec![first_frame.clone(), Bytes::copy_from_slice(&framed_third[2..600]), Bytes::copy_from_slice(&framed_third[600..]), Bytes::from(grpc(b""))];
        let mut requests = requests::<Raw, _>(body_of(frames));

        let one = requests.message().await.unwrap().unwrap().0;
        assert_eq!(&one[..], b"one");
        let frame = first_frame.as_ptr_range();
        assert!(frame.contains(&one.as_ptr()), "a request within one frame is not copied");
        assert_eq!(&requests.message().await.unwrap().unwrap().0[..], b"two");
        assert_eq!(&requests.message().await.unwrap().unwrap().0[..], &third[..]);
        assert!(requests.partial.capacity() == 0, "no buffer is kept once a gathered request is out");
        assert!(requests.message().await.unwrap().unwrap().0.is_empty());
        assert!(requests.message().await.unwrap().is_none(), "the client closed its side");
    }

    #[tokio::test]
    async fn oversized_compressed_and_truncated_requests_are_refused() {
        let mut huge = vec![0];
        huge.extend(((limits::MAX_REQUEST_BYTES + 1) as u32).to_be_bytes());
        // Refused from the prefix alone, before the bytes are sent.
        let status = requests::<Raw, _>(body_of(vec![Bytes::from(huge)])).message().await.err().unwrap();
        assert_eq!(status.code(), tonic::Code::OutOfRange);

        let mut compressed = grpc(b"x");
        compressed[0] = 1;
        let status = requests::<Raw, _>(body_of(vec![Bytes::from(compressed)])).message().await.err().unwrap();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);

        let cut = grpc(b"cut short");
        let status = requests::<Raw, _>(body_of(vec![Bytes::copy_from_slice(&cut[..7])])).message().await.err().unwrap();
        assert_eq!(status.code(), tonic::Code::Internal);

        // The limits on what a request holds apply as it is decoded.
        let names = envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest {
            resource_names: vec!["x".into(); limits::MAX_RESOURCE_NAMES + 1],
            ..Default::default()
        };
        let status = requests::<SotwRequest, _>(body_of(vec![Bytes::from(grpc(&names.encode_to_vec()))])).message().await.err().unwrap();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
    }

    /// Every piece the outbox hands out until it is empty.
    fn drain(outbox: &mut Outbox) -> Vec<Bytes> {
        std::iter::from_fn(|| outbox.next_piece()).collect()
    }

    fn response_with(shared_chunk: &Bytes) -> EncodedResponse {
        let mut response = EncodedResponse::default();
        response.push_encoded(encode_bytes_field(1, b"v1"));
        response.push_encoded(shared_chunk.clone());
        response.push_encoded(encode_bytes_field(4, b"type.googleapis.com/envoy.config.cluster.v3.Cluster"));
        response.push_encoded(encode_bytes_field(5, b"7"));
        response
    }

    #[tokio::test]
    async fn a_response_is_its_grpc_prefix_then_slices_of_the_shared_chunks() {
        // A snapshot's wildcard chunk: every resource entry of a type.
        let all = encode_bytes_field(2, &vec![7u8; 100_000]);
        let response = response_with(&all);
        let mut outbox = Outbox::default();
        let queued_at = Instant::now();
        outbox.push(response.clone(), queued_at);

        // Exactly the response's bytes, as hyper would take them.
        let mut pieces = Vec::new();
        while pieces.iter().map(Bytes::len).sum::<usize>() < 5 + response.len() {
            pieces.push(outbox.next_piece().expect("a piece is ready"));
        }
        assert!(pieces.iter().all(|piece| piece.len() <= PIECE_BYTES), "no piece is larger than {PIECE_BYTES}");
        let joined: Vec<u8> = pieces.iter().flat_map(|piece| piece.iter().copied()).collect();
        assert_eq!(joined[0], 0, "not compressed");
        assert_eq!(u32::from_be_bytes(joined[1..5].try_into().unwrap()) as usize, response.len());
        assert_eq!(&joined[5..], &response.to_bytes()[..]);

        // Every byte of the shared chunk goes out from the chunk's own
        // allocation: no stream copies it.
        let range = all.as_ptr() as usize..all.as_ptr() as usize + all.len();
        let from_chunk: usize =
            pieces.iter().filter(|piece| range.contains(&(piece.as_ptr() as usize))).map(|piece| piece.len()).sum();
        assert_eq!(from_chunk, all.len(), "the shared chunk was copied");
        assert!(pieces[0].len() < COALESCE_BELOW + 5, "the prefix and the small version field come first, copied together");

        assert_eq!(outbox.oldest_untaken(), Some(queued_at), "taken only once hyper asks for more");
        assert!(outbox.next_piece().is_none(), "nothing else queued");
        assert!(outbox.oldest_untaken().is_none(), "hyper asked past the last piece: the response is taken");
    }

    #[tokio::test]
    async fn a_snapshot_response_goes_out_from_the_snapshot_own_bytes() {
        use envoy_types::pb::envoy::config::cluster::v3::Cluster;

        use crate::{
            cache::Snapshot,
            xds::stream::{frame, Selection},
            resource_type::ResourceType,
            schema::{Bundle, StoredBundle},
        };

        let clusters = (0..3000).map(|i| Cluster { name: format!("cluster-{i:05}"), ..Default::default() }).collect();
        let bundle = Bundle { version: "v1".into(), clusters, ..Default::default() };
        let stored = Arc::new(StoredBundle::from_bundle(bundle, String::new()));
        let snapshot = Snapshot::build(1, stored, None);
        let response = frame(&snapshot, ResourceType::Cluster, &Selection::All, None, "1");
        let mut outbox = Outbox::default();
        outbox.push(response.clone(), Instant::now());
        let pieces = drain(&mut outbox);

        // Every large chunk of the response (the wildcard set, shared by
        // every stream) is sent from the snapshot's allocation.
        let large: Vec<&Bytes> = response.chunks().iter().filter(|chunk| chunk.len() >= COALESCE_BELOW).collect();
        assert!(!large.is_empty());
        for chunk in large {
            let range = chunk.as_ptr() as usize..chunk.as_ptr() as usize + chunk.len();
            let sent_from_it: usize =
                pieces.iter().filter(|piece| range.contains(&(piece.as_ptr() as usize))).map(|piece| piece.len()).sum();
            assert_eq!(sent_from_it, chunk.len(), "a stream copied the snapshot's bytes");
        }
    }

    #[tokio::test]
    async fn small_chunks_are_coalesced_into_bounded_pieces() {
        let mut response = EncodedResponse::default();
        for i in 0..3000 {
            response.push_encoded(encode_bytes_field(2, format!("cluster-{i:05}").as_bytes()));
        }
        let mut outbox = Outbox::default();
        outbox.push(response.clone(), Instant::now());
        let pieces = drain(&mut outbox);
        assert!(pieces.len() < 10, "3000 small chunks went out as {} pieces", pieces.len());
        assert!(pieces.iter().all(|piece| piece.len() <= PIECE_BYTES));
        let joined: Vec<u8> = pieces.iter().flat_map(|piece| piece.iter().copied()).collect();
        assert_eq!(&joined[5..], &response.to_bytes()[..]);
    }

    #[test]
    fn responses_are_handed_out_in_order_and_the_oldest_untaken_is_the_first_not_finished() {
        let (first, second) = (Instant::now(), Instant::now() + std::time::Duration::from_secs(1));
        let mut outbox = Outbox::default();
        assert_eq!(outbox.oldest_untaken(), None);
        outbox.push(response_with(&encode_bytes_field(2, b"one")), first);
        outbox.push(response_with(&encode_bytes_field(2, b"two")), second);
        assert_eq!(outbox.oldest_untaken(), Some(first));
        let one = outbox.next_piece().unwrap();
        assert!(one.windows(3).any(|w| w == b"one"));
        assert_eq!(outbox.oldest_untaken(), Some(first), "the first is taken only when hyper asks for more");
        let two = outbox.next_piece().unwrap();
        assert!(two.windows(3).any(|w| w == b"two"));
        assert_eq!(outbox.oldest_untaken(), Some(second));
        assert!(outbox.next_piece().is_none());
        assert_eq!(outbox.oldest_untaken(), None);
    }

    #[test]
    fn the_stream_ends_with_ok_or_with_the_status_it_was_given() {
        assert_eq!(trailers(None)["grpc-status"], "0");
        let trailers = trailers(Some(Status::deadline_exceeded("too slow")));
        assert_eq!(trailers["grpc-status"], "4");
        assert!(trailers["grpc-message"].to_str().unwrap().starts_with("too"));
    }
}
