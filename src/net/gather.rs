//! One socket write per turn of an xDS connection's task.
//!
//! h2 writes every DATA frame of 256 bytes or more in a `writev` of its own
//! and flushes before it takes the next, so a push of CDS with its EDS was
//! three writes, each a trip through the kernel's TCP stack and a wakeup of
//! the client. Here hyper writes and flushes into a buffer ([`Gathered`]),
//! and the connection's future ([`Flushed`]) sends the buffer in one write
//! once hyper has done what it could in this poll. Only the connection's
//! task writes to its socket (h2's streams queue frames and wake it), so the
//! lock between the two is never contended.
//!
//! Past [`HIGH_WATER`] bytes a write first waits for the socket, so a client
//! that stops reading holds the mark and one write (h2's 16 KiB buffer and
//! a frame), and its streams' responses wait where `--send-timeout` sees
//! them. An idle connection holds no buffer: each worker thread keeps one.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    task::{ready, Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes a connection may gather before a write waits for the socket: a
/// full push to one Envoy (CDS and EDS of 100 clusters) is about 26 KB.
pub const HIGH_WATER: usize = 64 * 1024;

/// `stream` split into the side hyper reads and writes, and the future that
/// runs `serve` (hyper's connection over that side) and sends what it wrote.
pub fn gather<S, C, F>(stream: S, serve: F) -> Flushed<C, S>
where
    F: FnOnce(Gathered<S>) -> C,
{
    let shared = Socket::shared(stream);
    Flushed { connection: serve(Gathered(shared.clone())), socket: shared }
}

/// The socket as hyper sees it: reads go straight through, writes and
/// flushes go to the buffer.
pub struct Gathered<S>(Arc<Mutex<Socket<S>>>);

/// A connection's future that, after each poll, sends what the connection
/// gathered in it.
pub struct Flushed<C, S> {
    connection: C,
    socket: Arc<Mutex<Socket<S>>>,
}

struct Socket<S> {
    stream: S,
    /// Written by hyper, not yet sent; `sent` bytes of it went out.
    gathered: Vec<u8>,
    sent: usize,
    /// Sending failed: every later read and write says so, and hyper ends
    /// the connection.
    failed: Option<io::ErrorKind>,
}

/// Largest buffer a thread keeps as its spare.
const SPARE_MAX: usize = 2 * HIGH_WATER;

std::thread_local! {
    /// Each worker thread's buffer between turns. Nearly every turn's bytes
    /// are sent before its poll ends, so one buffer per thread serves all its
    /// connections: no allocation per turn, and none of the freed 30 KB
    /// buffers of 10,000 Envoys connecting at once left in the allocator's
    /// dirty pages (+2.6 KB of RSS per stream, measured).
    static SPARE: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

fn take_spare() -> Vec<u8> {
    SPARE.with(|spare| spare.take())
}

fn put_spare(mut buffer: Vec<u8>) {
    if buffer.capacity() <= SPARE_MAX {
        buffer.clear();
        SPARE.with(|spare| spare.set(buffer));
    }
}

fn lock<S>(socket: &Mutex<Socket<S>>) -> MutexGuard<'_, Socket<S>> {
    socket.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<S> Socket<S> {
    fn shared(stream: S) -> Arc<Mutex<Self>> {
        Arc::new(Mutex::new(Socket { stream, gathered: Vec::new(), sent: 0, failed: None }))
    }
}

impl<S: AsyncWrite + Unpin> Socket<S> {
    fn check(&self) -> io::Result<()> {
        self.failed.map_or(Ok(()), |kind| Err(kind.into()))
    }

    /// Sends the gathered bytes; `Pending` (the task woken when the socket
    /// can take more) while some wait.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check()?;
        while self.sent < self.gathered.len() {
            let result = ready!(Pin::new(&mut self.stream).poll_write(cx, &self.gathered[self.sent..]));
            match result {
                Ok(0) => self.failed = Some(io::ErrorKind::WriteZero),
                Ok(n) => self.sent += n,
                Err(error) => self.failed = Some(error.kind()),
            }
            self.check()?;
        }
        // Back to the thread's spare: an idle Envoy's connection holds no buffer.
        put_spare(std::mem::take(&mut self.gathered));
        self.sent = 0;
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    /// Room for more: waits for the socket only past [`HIGH_WATER`].
    fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check()?;
        if self.gathered.len() - self.sent >= HIGH_WATER {
            ready!(self.poll_send(cx))?;
        }
        if self.gathered.capacity() == 0 {
            self.gathered = take_spare();
        }
        Poll::Ready(Ok(()))
    }
}

impl<C: Future + Unpin, S: AsyncWrite + Unpin> Future for Flushed<C, S> {
    type Output = C::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let result = Pin::new(&mut self.connection).poll(cx);
        let mut socket = lock(&self.socket);
        if socket.gathered.is_empty() {
            return result;
        }
        if let Poll::Ready(Err(_)) = socket.poll_send(cx) {
            // hyper learns of it on its next read or write; poll it now,
            // rather than when the client next sends something.
            cx.waker().wake_by_ref();
        }
        result
    }
}

impl<C, S> Flushed<C, S> {
    /// The connection itself, to call its methods (a graceful shutdown).
    pub fn connection(&mut self) -> &mut C {
        &mut self.connection
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Gathered<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let mut socket = lock(&self.0);
        socket.check()?;
        Pin::new(&mut socket.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Gathered<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let mut socket = lock(&self.0);
        ready!(socket.poll_room(cx))?;
        let len = bufs.iter().map(|buf| buf.len()).sum();
        socket.gathered.reserve(len);
        for buf in bufs {
            socket.gathered.extend_from_slice(buf);
        }
        Poll::Ready(Ok(len))
    }

    /// h2 gathers its frames one by one; each may be written as it comes.
    fn is_write_vectored(&self) -> bool {
        true
    }

    /// Done once gathered: [`Flushed`] sends it when hyper's poll ends.
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        lock(&self.0).check().into()
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut socket = lock(&self.0);
        ready!(socket.poll_send(cx))?;
        Pin::new(&mut socket.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use super::*;

    /// A socket that records each write it is given, takes at most
    /// `accept` bytes until `blocked` is lifted, and can fail.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<Vec<u8>>,
        blocked: bool,
        fail: bool,
        shut: bool,
    }

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Recorder>>);

    impl Shared {
        fn get(&self) -> MutexGuard<'_, Recorder> {
            self.0.lock().unwrap()
        }
    }

    impl AsyncRead for Shared {
        fn poll_read(self: Pin<&mut Self>, _: &mut Context<'_>, _: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    impl AsyncWrite for Shared {
        fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            let mut recorder = self.get();
            if recorder.fail {
                return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
            }
            if recorder.blocked {
                return Poll::Pending;
            }
            recorder.writes.push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.get().shut = true;
            Poll::Ready(Ok(()))
        }
    }

    /// Stands in for hyper's connection: each poll runs the next turn, a
    /// list of writes and flushes as h2 makes them; the last turn ends it.
    struct Turns {
        io: Gathered<Shared>,
        turns: Vec<Vec<&'static [u8]>>,
    }

    impl Future for Turns {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.turns.is_empty() {
                return Poll::Ready(());
            }
            let turn = self.turns.remove(0);
            for frame in turn {
                let written = Pin::new(&mut self.io).poll_write(cx, frame);
                assert!(matches!(written, Poll::Ready(Ok(n)) if n == frame.len()));
                assert!(Pin::new(&mut self.io).poll_flush(cx).is_ready());
            }
            Poll::Pending
        }
    }

    fn poll<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
        Pin::new(future).poll(&mut Context::from_waker(Waker::noop()))
    }

    fn connection(socket: &Shared, turns: Vec<Vec<&'static [u8]>>) -> Flushed<Turns, Shared> {
        gather(socket.clone(), |io| Turns { io, turns })
    }

    #[test]
    fn the_frames_of_one_turn_go_out_in_one_write() {
        let socket = Shared::default();
        let mut connection = connection(&socket, vec![vec![b"cds", b"eds-1", b"eds-2"], vec![b"lds"]]);
        assert!(poll(&mut connection).is_pending());
        assert_eq!(socket.get().writes, vec![b"cdseds-1eds-2".to_vec()]);
        assert!(poll(&mut connection).is_pending());
        assert_eq!(socket.get().writes.len(), 2);
        assert_eq!(socket.get().writes[1], b"lds");
        assert!(lock(&connection.socket).gathered.capacity() == 0, "an idle connection holds no buffer");
    }

    #[test]
    fn what_the_socket_cannot_take_yet_is_sent_once_it_can() {
        let socket = Shared::default();
        socket.get().blocked = true;
        let mut connection = connection(&socket, vec![vec![b"cds"], vec![b"eds"], vec![]]);
        assert!(poll(&mut connection).is_pending());
        assert!(poll(&mut connection).is_pending());
        assert!(socket.get().writes.is_empty());
        socket.get().blocked = false;
        assert!(poll(&mut connection).is_pending());
        assert_eq!(socket.get().writes, vec![b"cdseds".to_vec()], "nothing lost, in order, one write");
    }

    #[test]
    fn a_client_that_stops_reading_holds_at_most_the_high_water_mark() {
        let socket = Shared::default();
        socket.get().blocked = true;
        let mut io = Gathered(Socket::shared(socket.clone()));
        let frame = vec![7u8; 16 * 1024];
        let mut cx = Context::from_waker(Waker::noop());
        let mut taken = 0;
        while let Poll::Ready(Ok(n)) = Pin::new(&mut io).poll_write(&mut cx, &frame) {
            taken += n;
            assert!(taken <= HIGH_WATER + frame.len(), "gathered past the mark: {taken}");
        }
        assert!(taken >= HIGH_WATER, "waited before the mark: {taken}");
        socket.get().blocked = false;
        assert!(Pin::new(&mut io).poll_write(&mut cx, &frame).is_ready(), "room again once the socket took it");
        assert_eq!(socket.get().writes.concat().len(), taken);
    }

    #[test]
    fn shutting_down_sends_what_was_gathered_first() {
        let socket = Shared::default();
        let mut io = Gathered(Socket::shared(socket.clone()));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(Pin::new(&mut io).poll_write(&mut cx, b"goaway").is_ready());
        assert!(socket.get().writes.is_empty());
        assert!(matches!(Pin::new(&mut io).poll_shutdown(&mut cx), Poll::Ready(Ok(()))));
        assert_eq!(socket.get().writes, vec![b"goaway".to_vec()]);
        assert!(socket.get().shut);
    }

    #[test]
    fn a_failed_send_fails_the_next_read_and_write() {
        let socket = Shared::default();
        socket.get().fail = true;
        let mut connection = connection(&socket, vec![vec![b"cds"], vec![]]);
        assert!(poll(&mut connection).is_pending());
        let mut cx = Context::from_waker(Waker::noop());
        let io = &mut connection.connection.io;
        let mut bytes = [0u8; 8];
        let read = Pin::new(&mut *io).poll_read(&mut cx, &mut ReadBuf::new(&mut bytes));
        assert!(matches!(read, Poll::Ready(Err(error)) if error.kind() == io::ErrorKind::ConnectionReset));
        assert!(matches!(Pin::new(&mut *io).poll_write(&mut cx, b"x"), Poll::Ready(Err(_))));
        assert!(matches!(Pin::new(&mut *io).poll_flush(&mut cx), Poll::Ready(Err(_))));
    }
}
