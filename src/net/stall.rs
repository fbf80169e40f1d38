//! Cutting off an xDS client that stopped reading (`--send-timeout`).
//!
//! hyper asks a response body for its next piece only once the previous
//! piece found flow-control window, so the body of a stream whose client
//! grants none is not polled again and cannot time itself out. Each stream instead shows, on a
//! [`SendClock`], since when its oldest response has waited to be taken;
//! its connection's task, which runs for as long as the connection does,
//! watches every clock of the connection ([`StallWatch::stalled`]) and
//! closes the connection once one has waited too long: only that frees
//! what h2 holds for the stream.
//!
//! A response is taken as soon as hyper asks for more, so a well-behaved
//! stream's clock is set and cleared within one poll and the watch never
//! arms a timer for it.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, Weak,
    },
    time::Duration,
};

use tokio::{sync::Notify, time::Instant};

/// One connection's watch over its streams' clocks. A clone rides in the
/// extensions of each request on the connection.
#[derive(Clone)]
pub struct StallWatch(Arc<Shared>);

struct Shared {
    timeout: Duration,
    /// What the clocks count from.
    epoch: Instant,
    /// The connection's streams; a closed stream's entry is dropped when the
    /// next stream opens.
    clocks: Mutex<Vec<Weak<Clock>>>,
    /// A clock started: a response is waiting.
    started: Notify,
}

struct Clock {
    /// The stream's id in the registry, for the log.
    stream: u64,
    /// Nanoseconds after the epoch, plus one, since the oldest response not
    /// yet taken was queued; 0 while none waits.
    waiting_since: AtomicU64,
}

/// A stream's clock, set by the stream and read by its connection.
pub struct SendClock {
    clock: Arc<Clock>,
    watch: Arc<Shared>,
}

impl StallWatch {
    /// A stream stalls once a response has waited `timeout` to be taken.
    pub fn new(timeout: Duration) -> Self {
        Self(Arc::new(Shared { timeout, epoch: Instant::now(), clocks: Mutex::default(), started: Notify::new() }))
    }

    pub fn timeout(&self) -> Duration {
        self.0.timeout
    }

    /// A clock for a new stream of this connection, `stream` its id.
    pub fn clock(&self, stream: u64) -> SendClock {
        let clock = Arc::new(Clock { stream, waiting_since: AtomicU64::new(0) });
        let mut clocks = self.0.clocks.lock().unwrap_or_else(|p| p.into_inner());
        clocks.retain(|clock| clock.strong_count() > 0);
        clocks.push(Arc::downgrade(&clock));
        SendClock { clock, watch: self.0.clone() }
    }

    /// Completes once a stream of the connection has had a response waiting
    /// for longer than the timeout, with that stream's id.
    pub async fn stalled(&self) -> u64 {
        loop {
            let started = self.0.started.notified();
            tokio::pin!(started);
            // Registered before the clocks are read: a clock started after
            // the read still wakes this.
            started.as_mut().enable();
            let Some((oldest, stream)) = self.oldest_waiting() else {
                started.await;
                continue;
            };
            let deadline = oldest + self.0.timeout;
            if Instant::now() >= deadline {
                return stream;
            }
            // At the deadline the clocks are read again: the response may
            // have been taken, and another may be waiting since later. The
            // timer is boxed: it is rare, and this future is part of every
            // connection's task.
            tokio::select! {
                () = super::sleep_until(Some(deadline)) => {}
                () = started => {}
            }
        }
    }

    /// The stream whose response has waited longest, and since when.
    fn oldest_waiting(&self) -> Option<(Instant, u64)> {
        let clocks = self.0.clocks.lock().unwrap_or_else(|p| p.into_inner());
        let waiting = clocks.iter().filter_map(Weak::upgrade).map(|clock| (clock.waiting_since.load(Ordering::Acquire), clock.stream));
        let (nanos, stream) = waiting.filter(|&(nanos, _)| nanos != 0).min()?;
        Some((self.0.epoch + Duration::from_nanos(nanos - 1), stream))
    }
}

impl SendClock {
    /// Since when the oldest response the client has not taken has waited;
    /// `None` once it has taken them all.
    pub fn set(&self, waiting_since: Option<Instant>) {
        let nanos = waiting_since.map_or(0, |at| at.saturating_duration_since(self.watch.epoch).as_nanos() as u64 + 1);
        let before = self.clock.waiting_since.swap(nanos, Ordering::AcqRel);
        if before == 0 && nanos != 0 {
            self.watch.started.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Generous: these tests check what happens, not how fast.
    const BOUND: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn a_response_left_waiting_past_the_timeout_stalls_the_connection() {
        let watch = StallWatch::new(Duration::from_millis(20));
        let idle = watch.clock(1);
        let stuck = watch.clock(2);
        idle.set(None);
        stuck.set(Some(Instant::now()));
        let stalled = tokio::time::timeout(BOUND, watch.stalled()).await;
        assert_eq!(stalled.ok(), Some(2), "the waiting response's stream is named");
    }

    #[tokio::test]
    async fn a_clock_started_while_the_watch_waits_wakes_it() {
        let watch = StallWatch::new(Duration::from_millis(20));
        let clock = watch.clock(1);
        let stalled = tokio::spawn({
            let watch = watch.clone();
            async move { watch.stalled().await }
        });
        tokio::task::yield_now().await;
        clock.set(Some(Instant::now()));
        assert!(tokio::time::timeout(BOUND, stalled).await.is_ok(), "the watch missed a clock started after it looked");
    }

    #[tokio::test]
    async fn taken_responses_and_closed_streams_never_stall_it() {
        let watch = StallWatch::new(Duration::from_millis(20));
        let taken = watch.clock(1);
        taken.set(Some(Instant::now()));
        taken.set(None);
        let closed = watch.clock(2);
        closed.set(Some(Instant::now()));
        drop(closed);
        // Well past the timeout, the watch is still waiting: nothing waits.
        let outcome = tokio::time::timeout(Duration::from_millis(300), watch.stalled()).await;
        assert!(outcome.is_err(), "a connection whose responses were all taken was found stalled");
        assert_eq!(watch.0.clocks.lock().unwrap().len(), 2, "one entry per stream opened");
        let _next = watch.clock(3);
        assert_eq!(watch.0.clocks.lock().unwrap().len(), 2, "the closed stream's entry is dropped when the next opens");
    }
}
