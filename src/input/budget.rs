//! The one memory budget of the Forward input: bytes held by connections (unfinished
//! frames, inflated payloads, requests waiting for their fsync), across all connections.
//!
//! Without it each of `max_connections` connections may hold a frame of up to
//! `max_message_size` plus its inflated payload: 1,024 clients sending 15 MiB of frames they
//! never finish would hold ~16 GiB. With it, a connection that needs more memory than the
//! budget has left stops being read until there is room: the client feels TCP backpressure,
//! nothing is dropped and nothing acknowledged is lost.
//!
//! How connections use it (see `connection.rs`), and why it cannot deadlock:
//! - Each connection has a small allowance ([`CONNECTION_ALLOWANCE`]) outside the budget, so
//!   a client of small frames (Docker's driver: one line per request) never waits for
//!   strangers; only what a connection holds beyond it is taken from the budget.
//! - A frame that outgrows the allowance takes, in one acquire, enough for the largest
//!   frame it can become (and its inflated payload, if it may be gzip). It then never waits
//!   for the budget again until it is whole and decoded: no connection holds part of what
//!   it needs while waiting for the rest, so a few large frames cannot each hold half the
//!   budget and wait for each other. Such a frame is read at most one read past its known
//!   end, so what follows it when it is split fits the allowance: the next frame starts
//!   holding nothing from the budget.
//! - A small frame that may be gzip reserves its inflated payload before it is decoded; if
//!   that means waiting, the connection first stores and acks what it holds.
//! - A connection that waits holds, beyond its allowance, only requests waiting for their
//!   fsync, which finish without anyone else (it keeps completing them while it waits).
//! - A connection holding a reservation and sending slowly is cut by `frame_timeout`.
//! - Enrichment's added fields are counted once added, not reserved before: a connection
//!   may hold that much (a few hundred bytes per record of its current group) over.
//!
//! The budget is a semaphore of bytes (tokio's is fair: first come, first served), so a
//! large waiter is not starved by a stream of small ones.

use crate::metrics::Metrics;
use std::sync::Arc;
use tokio::sync::{Semaphore, TryAcquireError};

/// What a connection may hold without asking the budget: two reads' worth, enough for a
/// read buffer holding a frame of up to 64 KiB and the next read. Part of the fixed cost of
/// a connection, like its socket buffers: bounded by the connection slots, not the budget.
pub const CONNECTION_ALLOWANCE: usize = 128 << 10;

/// The process-wide budget, shared by every listener's connections.
pub struct MemoryBudget {
    sem: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

impl MemoryBudget {
    pub fn new(bytes: usize, metrics: Arc<Metrics>) -> Arc<MemoryBudget> {
        // Bytes beyond tokio's permit limit (usize::MAX >> 3) cannot be held anyway.
        let bytes = bytes.min(Semaphore::MAX_PERMITS);
        metrics.input_memory_budget.set(i64::try_from(bytes).unwrap_or(i64::MAX));
        Arc::new(MemoryBudget { sem: Arc::new(Semaphore::new(bytes)), metrics })
    }

    /// A connection's share, empty at first and returned when dropped.
    pub fn share(self: &Arc<MemoryBudget>) -> Share {
        Share { budget: Arc::clone(self), held: 0 }
    }

    /// Bytes not held by any connection.
    #[cfg(test)]
    pub fn available(&self) -> usize {
        self.sem.available_permits()
    }
}

/// The bytes one connection holds from the budget.
pub struct Share {
    budget: Arc<MemoryBudget>,
    held: usize,
}

impl Share {
    pub fn held(&self) -> usize {
        self.held
    }

    /// Hold `n` bytes if the budget has them now; `false` (holding what it held) if not.
    /// Holding less than before returns the difference at once.
    pub fn try_hold(&mut self, n: usize) -> bool {
        if n <= self.held {
            self.release_to(n);
            return true;
        }
        let more = n - self.held;
        let Ok(more32) = u32::try_from(more) else { return false };
        let got = match self.budget.sem.try_acquire_many(more32) {
            Ok(p) => {
                p.forget();
                true
            }
            Err(TryAcquireError::NoPermits | TryAcquireError::Closed) => false,
        };
        if got {
            self.add(more);
        }
        got
    }

    /// Hold `n` bytes, waiting for others to return them if the budget has not. Cancel
    /// safe: dropped while waiting, it holds what it held before.
    pub async fn hold(&mut self, n: usize) {
        if self.try_hold(n) {
            return;
        }
        self.budget.metrics.input_memory_waits.inc();
        let more = n - self.held;
        // Never above u32::MAX: a reservation is at most twice max_message_size (≤ 1 GiB).
        let more32 = u32::try_from(more).unwrap_or(u32::MAX);
        let sem = Arc::clone(&self.budget.sem);
        match sem.acquire_many(more32).await {
            Ok(p) => p.forget(),
            // The semaphore is never closed; pend like a full budget would.
            Err(_) => std::future::pending().await,
        }
        self.add(more);
    }

    /// Hold at most `n` bytes: return anything above it.
    pub fn release_to(&mut self, n: usize) {
        if n < self.held {
            let back = self.held - n;
            self.held = n;
            self.budget.sem.add_permits(back);
            self.budget.metrics.input_memory_bytes.dec_by(i64::try_from(back).unwrap_or(0));
        }
    }

    fn add(&mut self, more: usize) {
        self.held += more;
        self.budget.metrics.input_memory_bytes.inc_by(i64::try_from(more).unwrap_or(0));
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        self.release_to(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn shares_wait_for_each_other_and_return_on_drop() {
        let metrics = Arc::new(Metrics::new());
        let budget = MemoryBudget::new(100, Arc::clone(&metrics));
        let mut a = budget.share();
        let mut b = budget.share();
        assert!(a.try_hold(70));
        assert!(!b.try_hold(40), "only 30 left");
        assert_eq!(b.held(), 0);
        assert!(b.try_hold(30));
        assert_eq!(budget.available(), 0);
        assert_eq!(metrics.input_memory_bytes.get(), 100);
        // b waits for 10 more; a returning 20 lets it through.
        let waiter = tokio::spawn(async move {
            b.hold(40).await;
            b
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        a.release_to(50);
        let b = waiter.await.unwrap();
        assert_eq!(b.held(), 40);
        assert_eq!(metrics.input_memory_waits.get(), 1);
        drop(a);
        drop(b);
        assert_eq!(budget.available(), 100);
        assert_eq!(metrics.input_memory_bytes.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_wait_holds_nothing_more() {
        let budget = MemoryBudget::new(10, Arc::new(Metrics::new()));
        let mut a = budget.share();
        assert!(a.try_hold(8));
        let mut b = budget.share();
        assert!(b.try_hold(1));
        let r = tokio::time::timeout(std::time::Duration::from_secs(1), b.hold(5)).await;
        assert!(r.is_err());
        assert_eq!(b.held(), 1);
        drop(a);
        assert_eq!(budget.available(), 9);
    }
}
