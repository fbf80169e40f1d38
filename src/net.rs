//! The two listeners, served from sxds's own accept loops so that nothing a
//! client does with connections can take the daemon down.
//!
//! - Accepting: at a resource limit (EMFILE, ENFILE, ENOBUFS, ENOMEM) a loop
//!   backs off, 10 ms doubling up to 1 s, instead of retrying at once; it
//!   says so once at WARN, and once at INFO when accepting works again.
//!   Errors that concern one connection only (ECONNABORTED and the like) are
//!   skipped.
//! - REST (HTTP/1.1, and HTTP/2 with prior knowledge): at most
//!   `--rest-max-connections` at once; at the cap the loop stops accepting and
//!   newcomers wait in the kernel's backlog. Every connection is timed: its
//!   request headers from their first byte (`--rest-header-timeout`), a
//!   request body (`--rest-body-timeout`, answered 408) and the time without
//!   a request (`--rest-idle-timeout`).
//! - xDS (HTTP/2): TCP_NODELAY; keepalive pings close peers that stopped
//!   answering; every request carries a [`ConnectionCloser`], with which a
//!   stream whose client stopped reading closes its connection.
//! - Shutdown: the loops stop accepting and each connection finishes
//!   gracefully (HTTP/2 GOAWAY, HTTP/1.1 close once idle); `run` bounds the
//!   drain by `--shutdown-grace`. Connection tasks belong to their loop's
//!   `JoinSet`, so dropping the loop aborts them.

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
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::Notify,
    task::JoinSet,
    time::{Instant, Sleep},
};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::Config;

/// First and longest pause of an accept loop at a resource limit.
const BACKOFF_FIRST: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// How long a connection closed by its [`ConnectionCloser`] may still flush
/// what it can (a final status, GOAWAY) before it is dropped.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// How often the "connection cap reached" warning may repeat.
const CAP_WARNING_EVERY: Duration = Duration::from_secs(60);

/// The REST server's limits; see [`Config`] for each.
#[derive(Debug, Clone, Copy)]
pub struct RestLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
}

impl From<&Config> for RestLimits {
    fn from(config: &Config) -> Self {
        Self {
            max_connections: config.rest_max_connections.get(),
            header_timeout: config.rest_header_timeout,
            body_timeout: config.rest_body_timeout,
            idle_timeout: config.rest_idle_timeout,
        }
    }
}

/// The xDS server's HTTP/2 keepalive; see [`Config`].
#[derive(Debug, Clone, Copy)]
pub struct XdsKeepalive {
    pub interval: Duration,
    pub timeout: Duration,
}

impl From<&Config> for XdsKeepalive {
    fn from(config: &Config) -> Self {
        Self { interval: config.xds_keepalive_interval, timeout: config.xds_keepalive_timeout }
    }
}

/// Closes the xDS connection a request came in on. hyper polls a response
/// body only while its stream has flow-control window, so a stream whose
/// client grants none cannot end itself: its handler finds this in the
/// request's extensions and has the connection task drop the connection.
#[derive(Debug, Clone)]
pub struct ConnectionCloser(CancellationToken);

impl ConnectionCloser {
    pub fn close(&self) {
        self.0.cancel();
    }
}

/// Serves the xDS router over HTTP/2 until `shutdown` is cancelled and every
/// connection has finished.
pub async fn serve_xds(listener: TcpListener, router: Router, keepalive: XdsKeepalive, shutdown: CancellationToken) {
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2.timer(TokioTimer::new()).keep_alive_interval(keepalive.interval).keep_alive_timeout(keepalive.timeout);
    accept_loop(listener, "xds", usize::MAX, &shutdown, |stream| {
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        let close = CancellationToken::new();
        let closer = ConnectionCloser(close.clone());
        let router = router.clone();
        let service = service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(closer.clone());
            router.clone().oneshot(request)
        });
        let connection = http2.serve_connection(TokioIo::new(stream), service);
        let shutdown = shutdown.clone();
        async move {
            tokio::pin!(connection);
            let closing = tokio::select! {
                result = connection.as_mut() => return finished("xds", result),
                () = shutdown.cancelled() => false,
                () = close.cancelled() => true,
            };
            connection.as_mut().graceful_shutdown();
            if !closing {
                // Draining: the streams end as they see the shutdown too.
                tokio::select! {
                    result = connection.as_mut() => return finished("xds", result),
                    () = close.cancelled() => {}
                }
            }
            // A stalled stream will never finish: flush what can be, then drop.
            if let Ok(result) = tokio::time::timeout(CLOSE_LINGER, connection).await {
                finished("xds", result);
            }
        }
    })
    .await;
}

/// Serves the REST router until `shutdown` is cancelled and every
/// connection has finished.
pub async fn serve_rest(listener: TcpListener, router: Router, limits: RestLimits, shutdown: CancellationToken) {
    accept_loop(listener, "rest", limits.max_connections, &shutdown, |stream| {
        let activity = Arc::new(Activity::new());
        let io = TokioIo::new(Watched { stream, activity: activity.clone() });
        let service = {
            let (router, activity) = (router.clone(), activity.clone());
            service_fn(move |request| handle_rest(router.clone(), activity.clone(), limits.body_timeout, request))
        };
        let shutdown = shutdown.clone();
        async move {
            let mut builder = auto::Builder::new(TokioExecutor::new());
            // Headers are timed here, from their first byte; hyper's own
            // timer would also run while the connection waits for a request.
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
    })
    .await;
}

/// Accepts connections and runs `connect`'s future for each, at most
/// `max_connections` at once, until `shutdown`; then waits for them all.
async fn accept_loop<F, Fut>(listener: TcpListener, server: &'static str, max_connections: usize, shutdown: &CancellationToken, mut connect: F)
where
    F: FnMut(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut acceptor = Acceptor { listener, server, backoff: None };
    let mut connections = JoinSet::new();
    let mut cap_warned: Option<Instant> = None;
    loop {
        let room = connections.len() < max_connections;
        if !room && cap_warned.is_none_or(|at| at.elapsed() >= CAP_WARNING_EVERY) {
            tracing::warn!(server, max_connections, "connection cap reached; new connections wait in the listen backlog");
            cap_warned = Some(Instant::now());
        }
        tokio::select! {
            stream = acceptor.next(), if room => {
                connections.spawn(connect(stream));
            }
            Some(done) = connections.join_next() => {
                if let Err(error) = done {
                    if error.is_panic() {
                        tracing::error!(server, %error, "a connection task panicked");
                    }
                }
            }
            () = shutdown.cancelled() => break,
        }
    }
    // Stop listening: new connections are refused while the others drain.
    drop(acceptor);
    while connections.join_next().await.is_some() {}
}

/// A listener with the accept error policy.
struct Acceptor {
    listener: TcpListener,
    server: &'static str,
    /// The current pause, while accepting fails.
    backoff: Option<Duration>,
}

impl Acceptor {
    /// The next connection. Cancel-safe: a pause cut short by another
    /// branch of a `select!` (a connection closing frees a descriptor)
    /// retries at once on the next call.
    async fn next(&mut self) -> TcpStream {
        let server = self.server;
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => {
                    if self.backoff.take().is_some() {
                        tracing::info!(server, "accepting connections again");
                    }
                    return stream;
                }
                Err(error) if is_per_connection(&error) => {
                    tracing::debug!(server, %error, "a connection failed before it was accepted");
                }
                Err(error) => {
                    let pause = match self.backoff {
                        Some(pause) => (pause * 2).min(BACKOFF_MAX),
                        None if is_resource_limit(&error) => {
                            tracing::warn!(server, %error,
                                "open-file or memory limit reached: cannot accept connections; retrying with backoff until it clears");
                            BACKOFF_FIRST
                        }
                        None => {
                            tracing::warn!(server, %error, "cannot accept connections; retrying with backoff");
                            BACKOFF_FIRST
                        }
                    };
                    self.backoff = Some(pause);
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
}

/// The process or system ran out of something a new connection needs.
fn is_resource_limit(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}

/// An error about the one connection being accepted, not about the listener
/// (accept(2) passes pending network errors on this way).
fn is_per_connection(error: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(error.kind(), ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted | WouldBlock | TimedOut)
        || matches!(
            error.raw_os_error(),
            Some(
                libc::EPROTO
                    | libc::EPERM
                    | libc::ENETDOWN
                    | libc::ENETUNREACH
                    | libc::ENOPROTOOPT
                    | libc::EHOSTDOWN
                    | libc::EHOSTUNREACH
                    | libc::ENONET
                    | libc::EOPNOTSUPP
            )
        )
}

fn finished<E: std::fmt::Display>(server: &'static str, result: Result<(), E>) {
    if let Err(error) = result {
        tracing::debug!(server, %error, "connection ended with an error");
    }
}

/// Sleeps until `deadline`; forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
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
    stream: TcpStream,
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
async fn handle_rest(
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
