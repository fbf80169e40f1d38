//! The two listeners, served from sxds's own accept loops so that nothing a
//! client does with connections can take the daemon down.
//!
//! - Accepting: at a resource limit (EMFILE, ENFILE, ENOBUFS, ENOMEM) a loop
//!   backs off, 10 ms doubling up to 1 s, instead of retrying at once; it
//!   says so once at WARN, and once at INFO when accepting works again (at
//!   most once a minute: the limit comes and goes as connections close).
//!   Errors that concern one connection only (ECONNABORTED and the like) are
//!   skipped.
//! - REST (HTTP/1.1, and HTTP/2 with prior knowledge): at most
//!   `--rest-max-connections` at once; at the cap the loop stops accepting and
//!   newcomers wait in the kernel's backlog. Every connection is timed: its
//!   request headers from their first byte (`--rest-header-timeout`), a
//!   request body (`--rest-body-timeout`, answered 408) and the time without
//!   a request (`--rest-idle-timeout`).
//! - xDS (HTTP/2): TCP_NODELAY; keepalive pings close peers that stopped
//!   answering; every request carries the connection's [`StallWatch`], on
//!   which its stream shows how long a response has waited to be taken, and
//!   a connection whose client stopped reading is closed after
//!   `--send-timeout` ([`stall`]); what hyper writes in one turn of the
//!   connection's task goes out in one write ([`gather`]).
//! - TLS ([`tls`]): with `--tls-cert`, each connection's handshake runs in
//!   its own task, bounded by [`tls::HANDSHAKE_TIMEOUT`], before HTTP starts;
//!   on xDS, the node types a client certificate names ride in every request
//!   as [`CertifiedNodeTypes`].
//! - Shutdown: the loops stop accepting and each connection finishes
//!   gracefully (HTTP/2 GOAWAY, HTTP/1.1 close once idle); `run` bounds the
//!   drain by `--shutdown-grace`. Connection tasks belong to their loop's
//!   `JoinSet`, so dropping the loop aborts them.

mod gather;
mod rest;
pub mod stall;
pub mod tls;

use std::{future::Future, io, time::Duration};

use axum::Router;
use http::Request;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{
    net::{TcpListener, TcpStream},
    task::JoinSet,
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

pub use stall::{SendClock, StallWatch};
pub use tls::{CertifiedNodeTypes, Tls, TlsError};

use crate::Config;

/// First and longest pause of an accept loop at a resource limit.
const BACKOFF_FIRST: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// How long a connection closed for a stalled stream may still flush
/// what it can (GOAWAY, the other streams' last frames) before it is dropped.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// How often a warning about a limit may repeat. At the open-file limit,
/// every closing connection lets one accept succeed before the next fails:
/// without this, a busy daemon would log a pair of lines per connection.
const WARNING_EVERY: Duration = Duration::from_secs(60);

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

/// The xDS server's connection settings; see [`Config`].
#[derive(Debug, Clone, Copy)]
pub struct XdsConnections {
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// Connections older than this (±10 %) are drained, so Envoys spread
    /// over replicas again.
    pub max_age: Option<Duration>,
    /// How long a response may wait for its client to take it.
    pub send_timeout: Duration,
}

impl From<&Config> for XdsConnections {
    fn from(config: &Config) -> Self {
        Self {
            keepalive_interval: config.xds_keepalive_interval,
            keepalive_timeout: config.xds_keepalive_timeout,
            max_age: config.max_stream_age,
            send_timeout: config.send_timeout,
        }
    }
}

/// How long an aged connection may take to finish once drained.
const AGED_GRACE: Duration = Duration::from_secs(10);

/// `age` scaled by a random factor in [0.9, 1.1): Envoys that connected
/// together (after a replica came back) do not all leave together.
pub fn jittered(age: Duration) -> Duration {
    use std::hash::BuildHasher;
    // A fresh RandomState is randomly keyed: enough randomness for spreading.
    let random = std::collections::hash_map::RandomState::new().hash_one(0u8);
    age.mul_f64(0.9 + 0.2 * (random >> 11) as f64 / (1u64 << 53) as f64)
}

/// Ends the streams of one xDS connection: cancelled at shutdown, or when
/// the connection reached `--max-stream-age`. In every request's extensions.
#[derive(Debug, Clone)]
pub struct ConnectionDrain(pub CancellationToken);

/// The address a REST request came from, in its extensions: who wrote, and
/// whether a write without a token may be accepted (loopback only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// Serves the xDS router over HTTP/2 (over TLS with `tls`) until `shutdown`
/// is cancelled and every connection has finished.
pub async fn serve_xds(listener: TcpListener, router: Router, settings: XdsConnections, tls: Option<tls::Acceptor>, shutdown: CancellationToken) {
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2.timer(TokioTimer::new()).keep_alive_interval(settings.keepalive_interval).keep_alive_timeout(settings.keepalive_timeout);
    // Shared: each connection task holds it for its whole life, and a copy of
    // the builder's settings per connection would be memory per Envoy.
    let http2 = std::sync::Arc::new(http2);
    accept_loop(listener, "xds", usize::MAX, &shutdown, |stream| {
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        let (http2, router, tls, shutdown) = (http2.clone(), router.clone(), tls.clone(), shutdown.clone());
        // Only what the task needs, not all the settings: it lives as long as its Envoy.
        let (max_age, stalls) = (settings.max_age, StallWatch::new(settings.send_timeout));
        async move {
            let Some(stream) = tls::handshake(tls.as_ref(), stream, "xds", &shutdown).await else { return };
            let identity = tls::peer_node_types(&stream);
            let stream_stalls = stalls.clone();
            let drain = shutdown.child_token();
            let stream_drain = ConnectionDrain(drain.clone());
            let service = service_fn(move |mut request: Request<Incoming>| {
                request.extensions_mut().insert(stream_stalls.clone());
                request.extensions_mut().insert(stream_drain.clone());
                if let Some(identity) = &identity {
                    request.extensions_mut().insert(identity.clone());
                }
                router.clone().oneshot(request)
            });
            // Boxed: hyper's connection (1.5 KB) and the rest of this task
            // (0.5 KB) fit allocation size classes with less slack than the
            // two together, a third of a KiB less per Envoy.
            // Written through `gather`: what hyper writes in one turn goes out in one write.
            let mut connection = gather::gather(stream, |io| Box::pin(http2.serve_connection(TokioIo::new(io), service)));
            let aged = sleep_until(max_age.map(|age| Instant::now() + jittered(age)));
            let (closing, grace) = tokio::select! {
                result = &mut connection => return finished("xds", result),
                () = drain.cancelled() => (false, None),
                () = aged => {
                    tracing::debug!("xDS connection reached --max-stream-age: draining it; its Envoy reconnects");
                    drain.cancel();
                    (false, Some(AGED_GRACE))
                }
                stream = stalls.stalled() => {
                    tracing::warn!(stream, timeout = ?stalls.timeout(),
                        "the client did not take its response within --send-timeout; closing its connection");
                    (true, None)
                }
            };
            // GOAWAY: the client opens its next stream on a new connection.
            connection.connection().as_mut().graceful_shutdown();
            if !closing {
                // Draining: the streams end as they see the drain too. At
                // shutdown, `run` bounds this by --shutdown-grace.
                tokio::select! {
                    result = &mut connection => return finished("xds", result),
                    _ = stalls.stalled() => {}
                    () = sleep_until(grace.map(|grace| Instant::now() + grace)) => {}
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

/// Serves the REST router (over TLS with `tls`) until `shutdown` is
/// cancelled and every connection has finished.
pub async fn serve_rest(listener: TcpListener, router: Router, limits: RestLimits, tls: Option<tls::Acceptor>, shutdown: CancellationToken) {
    accept_loop(listener, "rest", limits.max_connections, &shutdown, |stream| {
        let (router, tls, shutdown) = (router.clone(), tls.clone(), shutdown.clone());
        async move {
            // In the connection's slot: a silent client holds it for the handshake timeout at most.
            let Some(stream) = tls::handshake(tls.as_ref(), stream, "rest", &shutdown).await else { return };
            rest::serve_connection(stream, router, limits, shutdown).await;
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
    let mut acceptor = Acceptor::new(listener, server);
    let mut connections = JoinSet::new();
    let mut cap_warned: Option<Instant> = None;
    loop {
        let room = connections.len() < max_connections;
        if !room && cap_warned.is_none_or(|at| at.elapsed() >= WARNING_EVERY) {
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
    pause: Option<Duration>,
    /// The current failure was logged (so its end will be).
    told: bool,
    warned_at: Option<Instant>,
}

impl Acceptor {
    fn new(listener: TcpListener, server: &'static str) -> Self {
        Self { listener, server, pause: None, told: false, warned_at: None }
    }

    /// The next connection. Cancel-safe: a pause cut short by another
    /// branch of a `select!` (a connection closing frees a descriptor)
    /// retries at once on the next call.
    async fn next(&mut self) -> TcpStream {
        let server = self.server;
        loop {
            let error = match self.listener.accept().await {
                Ok((stream, _)) => {
                    if self.pause.take().is_some() && std::mem::take(&mut self.told) {
                        tracing::info!(server, "accepting connections again");
                    }
                    return stream;
                }
                Err(error) if is_per_connection(&error) => {
                    tracing::debug!(server, %error, "a connection failed before it was accepted");
                    continue;
                }
                Err(error) => error,
            };
            let pause = self.pause.map_or(BACKOFF_FIRST, |pause| (pause * 2).min(BACKOFF_MAX));
            self.pause = Some(pause);
            if !self.told && self.warned_at.is_none_or(|at| at.elapsed() >= WARNING_EVERY) {
                if is_resource_limit(&error) {
                    tracing::warn!(server, %error,
                        "open-file or memory limit reached: cannot accept connections; retrying with backoff until it clears");
                } else {
                    tracing::warn!(server, %error, "cannot accept connections; retrying with backoff");
                }
                self.told = true;
                self.warned_at = Some(Instant::now());
            }
            tokio::time::sleep(pause).await;
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
///
/// The timer is boxed, and made only when there is a deadline: an idle
/// connection holds a pointer here instead of a timer (about 150 bytes) in
/// its task, one of ten thousand, and that is what puts the task in a
/// smaller allocation size class (BENCHMARKS.md, "Idle memory: two tasks
/// moved to smaller allocation size classes").
pub(crate) fn sleep_until(deadline: Option<Instant>) -> Deadline {
    Deadline(deadline.map(|deadline| Box::pin(tokio::time::sleep_until(deadline))))
}

/// The future of [`sleep_until`].
pub(crate) struct Deadline(Option<std::pin::Pin<Box<tokio::time::Sleep>>>);

impl Future for Deadline {
    type Output = ();

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        match &mut self.0 {
            Some(sleep) => sleep.as_mut().poll(cx),
            None => std::task::Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::FutureExt;
    use tokio::time::Instant;

    use super::sleep_until;

    #[tokio::test]
    async fn a_deadline_sleeps_until_it_and_none_sleeps_forever() {
        assert!(sleep_until(None).now_or_never().is_none(), "no deadline: never ready");
        assert!(sleep_until(Some(Instant::now() + Duration::from_secs(3600))).now_or_never().is_none());
        let passed = tokio::time::timeout(Duration::from_secs(10), sleep_until(Some(Instant::now()))).await;
        assert!(passed.is_ok(), "a deadline already reached completes");
    }
}
