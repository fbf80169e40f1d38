//! Admission for the REST API's expensive work, so that no burst of
//! requests can take more memory or CPU than a known bound.
//!
//! - Request bodies are buffered within a byte budget: each PUT reserves
//!   its `Content-Length` (or the body limit) before reading.
//! - Parsing a bundle and printing one (GET) run on at most `workers`
//!   blocking threads at a time; a bounded number of requests may queue
//!   for one.
//!
//! Either bound full is answered 503 with `Retry-After` rather than queued
//! without end.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The unit of the body budget.
const BUDGET_UNIT: usize = 64 << 10;
/// Requests that may wait for a worker beyond those being served.
pub const MAX_WAITING: usize = 64;

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Busy {
    #[error("too many large request bodies are being received; retry shortly")]
    Bodies,
    #[error("too many bundles are being parsed or printed; retry shortly")]
    Workers,
}

/// Cheap to clone.
#[derive(Clone)]
pub struct Admission(Arc<Inner>);

struct Inner {
    bodies: Arc<Semaphore>,
    workers: Arc<Semaphore>,
    waiting: AtomicUsize,
}

impl Admission {
    /// `body_budget` bytes of bodies at once; `workers` parses or prints.
    pub fn new(body_budget: usize, workers: usize) -> Self {
        let units = body_budget.div_ceil(BUDGET_UNIT).min(Semaphore::MAX_PERMITS);
        Self(Arc::new(Inner {
            bodies: Arc::new(Semaphore::new(units)),
            workers: Arc::new(Semaphore::new(workers.max(1))),
            waiting: AtomicUsize::new(0),
        }))
    }

    /// Reserves room to buffer a body of up to `bytes`.
    pub fn body(&self, bytes: usize) -> Result<OwnedSemaphorePermit, Busy> {
        let units = u32::try_from(bytes.div_ceil(BUDGET_UNIT).max(1)).map_err(|_| Busy::Bodies)?;
        self.0.bodies.clone().try_acquire_many_owned(units).map_err(|_| Busy::Bodies)
    }

    /// Waits for a worker, unless too many requests wait already.
    pub async fn worker(&self) -> Result<OwnedSemaphorePermit, Busy> {
        if let Ok(permit) = self.0.workers.clone().try_acquire_owned() {
            return Ok(permit);
        }
        if self.0.waiting.fetch_add(1, Ordering::AcqRel) >= MAX_WAITING {
            self.0.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(Busy::Workers);
        }
        // Counted out however the wait ends, the client going away included.
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let _waiting = Waiting(&self.0.waiting);
        self.0.workers.clone().acquire_owned().await.map_err(|_| Busy::Workers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_budget_is_shared_and_given_back() {
        let admission = Admission::new(4 * BUDGET_UNIT, 1);
        let first = admission.body(3 * BUDGET_UNIT).unwrap();
        assert_eq!(admission.body(2 * BUDGET_UNIT).unwrap_err(), Busy::Bodies);
        let small = admission.body(1).unwrap();
        drop((first, small));
        drop(admission.body(4 * BUDGET_UNIT).unwrap());
        assert_eq!(Admission::new(BUDGET_UNIT, 1).body(usize::MAX).unwrap_err(), Busy::Bodies);
    }

    #[tokio::test]
    async fn workers_queue_up_to_a_bound_then_refuse() {
        let admission = Admission::new(BUDGET_UNIT, 1);
        let busy = admission.worker().await.unwrap();
        let waiters: Vec<_> = (0..MAX_WAITING)
            .map(|_| {
                let admission = admission.clone();
                tokio::spawn(async move { admission.worker().await.map(drop) })
            })
            .collect();
        // Let every waiter start waiting (bounded: each yields once per round).
        for _ in 0..1000 {
            if admission.0.waiting.load(Ordering::Acquire) == MAX_WAITING {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(admission.worker().await.unwrap_err(), Busy::Workers, "the queue is full");
        drop(busy);
        for waiter in waiters {
            waiter.await.unwrap().unwrap();
        }
        assert_eq!(admission.0.waiting.load(Ordering::Acquire), 0);
        drop(admission.worker().await.unwrap());
    }
}
