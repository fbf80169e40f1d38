//! One REST connection: HTTP/1.1 or HTTP/2 (prior knowledge) through
//! hyper-util's auto builder, with its three timeouts. A connection is idle
//! (`--rest-idle-timeout`), receiving a request's headers (from their first
//! byte, `--rest-header-timeout`) or busy with requests; a busy request's
//! body has `--rest-body-timeout` to arrive, else the answer is a 408.

use std::{
    convert::Infallible,
    future::Future,
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard,
    },
    task::{ready, Context, Poll},
    time::Duration,
};

use axum::{
    body::Body,
    response::{IntoResponse, Response},
    Json, Router,
};
use bytes::Bytes;
use http::{header::CONNECTION, Request, StatusCode};
use http_body::{Frame, SizeHint};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::Notify,
    time::{Instant, Sleep},
};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::{finished, sleep_until, tls::Stream, PeerAddr, RestLimits};

/// Serves one connection until the client closes it, a timeout cuts it
/// off, or it finishes draining after `shutdown`.
pub(super) async fn serve_connection(stream: Stream, router: Router, limits: RestLimits, shutdown: CancellationToken) {
    let activity = Arc::new(Activity::new());
    let peer = super::tls::peer_addr(&stream).ok().map(PeerAddr);
    let io = TokioIo::new(Watched { stream, activity: activity.clone() });
    let service = {
        let activity = activity.clone();
        service_fn(move |mut request: Request<Incoming>| {
            if let Some(peer) = peer {
                request.extensions_mut().insert(peer);
            }
            handle(router.clone(), activity.clone(), limits.body_timeout, request)
        })
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Headers are timed here, from their first byte; hyper's own timer
    // would also run while the connection waits for a request.
    builder.http1().header_read_timeout(None);
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let mut draining = false;
    loop {
        let deadline = activity.deadline(&limits);
        tokio::select! {
            result = connection.as_mut() => return finished("rest", result),
            () = shutdown.cancelled(), if !draining => {
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
            () = activity.changed.notified() => {}
            () = sleep_until(deadline.map(|(at, _)| at)) => {
                if let Some((at, why)) = activity.deadline(&limits) {
                    if at <= Instant::now() {
                        tracing::debug!(why, "REST connection closed");
                        return;
                    }
                }
            }
        }
    }
}

/// What a REST connection is doing, for its timeouts.
struct Activity {
    // A std Mutex: a few instructions per read or request, never across an await.
    phase: Mutex<Phase>,
    /// Wakes the connection task when a deadline starts.
    changed: Notify,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    /// No request in progress and nothing received since this instant.
    Idle(Instant),
    /// The first bytes of a request arrived at this instant.
    Headers(Instant),
    /// This many requests are in progress (HTTP/2 may have several).
    Busy(usize),
}

impl Activity {
    fn new() -> Self {
        Self { phase: Mutex::new(Phase::Idle(Instant::now())), changed: Notify::new() }
    }

    fn lock(&self) -> MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes arrived from the client.
    fn received(&self) {
        let mut phase = self.lock();
        if let Phase::Idle(_) = *phase {
            *phase = Phase::Headers(Instant::now());
            drop(phase);
            self.changed.notify_one();
        }
    }

    /// A request reached the router; it is in progress until the guard drops
    /// (with the response body, once sent).
    fn request_started(self: &Arc<Self>) -> RequestGuard {
        let mut phase = self.lock();
        *phase = match *phase {
            Phase::Busy(n) => Phase::Busy(n + 1),
            Phase::Idle(_) | Phase::Headers(_) => Phase::Busy(1),
        };
        RequestGuard(self.clone())
    }

    /// When the connection is due to be closed, and why; `None` while a
    /// request is in progress (its body has its own timeout).
    fn deadline(&self, limits: &RestLimits) -> Option<(Instant, &'static str)> {
        match *self.lock() {
            Phase::Idle(since) => Some((since + limits.idle_timeout, "idle for --rest-idle-timeout")),
            Phase::Headers(since) => Some((since + limits.header_timeout, "request headers not received within --rest-header-timeout")),
            Phase::Busy(_) => None,
        }
    }
}

/// One request in progress on a REST connection.
struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let mut phase = self.0.lock();
        if let Phase::Busy(n) = *phase {
            *phase = if n > 1 { Phase::Busy(n - 1) } else { Phase::Idle(Instant::now()) };
        }
        drop(phase);
        self.0.changed.notify_one();
    }
}

/// A REST connection's socket, telling its [`Activity`] when bytes arrive.
struct Watched {
    stream: Stream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.received();
        }
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Runs one REST request: its body timed, the connection busy until the
/// response is sent.
async fn handle(
    router: Router,
    activity: Arc<Activity>,
    body_timeout: Duration,
    request: Request<Incoming>,
) -> Result<Response, Infallible> {
    let guard = activity.request_started();
    let timed_out = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + body_timeout;
    let request = request.map(|body| TimedBody { body, deadline, sleep: None, timed_out: timed_out.clone() });
    let response = match router.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let response = if timed_out.load(Ordering::Acquire) {
        // The handler saw the body fail; the client is told why.
        let error = format!("the request body did not arrive within {body_timeout:?} (--rest-body-timeout)");
        (StatusCode::REQUEST_TIMEOUT, [(CONNECTION, "close")], Json(serde_json::json!({ "error": error }))).into_response()
    } else {
        response
    };
    Ok(response.map(|body| Body::new(Tracked { body, _guard: guard })))
}

/// A request body that fails once its deadline passes.
struct TimedBody {
    body: Incoming,
    deadline: Instant,
    /// Made when the body first has to wait.
    sleep: Option<Pin<Box<Sleep>>>,
    timed_out: Arc<AtomicBool>,
}

#[derive(Debug, thiserror::Error)]
#[error("request body timeout")]
struct BodyTimeout;

impl http_body::Body for TimedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        ready!(sleep.as_mut().poll(cx));
        this.timed_out.store(true, Ordering::Release);
        Poll::Ready(Some(Err(BodyTimeout.into())))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A response body that keeps its request in progress until it is sent.
struct Tracked {
    body: Body,
    _guard: RequestGuard,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
