//! Counts requests in flight and remembers when the last one arrived, so a
//! graceful stop can wait for "idle and quiet"; also the counters a
//! [`crate::ServiceHandle`] reports.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Notify;

pub(crate) struct Tracker {
    /// Requests running on tasks of their own (ones answered at their
    /// first poll never wait, so they never count).
    inflight: AtomicUsize,
    idle: Notify,
    last_request: Mutex<Instant>,
    requests: AtomicU64,
    connections: AtomicU64,
}

impl Tracker {
    pub fn new() -> Arc<Tracker> {
        Arc::new(Tracker {
            inflight: AtomicUsize::new(0),
            idle: Notify::new(),
            last_request: Mutex::new(Instant::now()),
            requests: AtomicU64::new(0),
            connections: AtomicU64::new(0),
        })
    }

    /// Marks a request as running; it ends when the guard drops.
    pub fn begin(self: &Arc<Self>) -> InflightGuard {
        self.inflight.fetch_add(1, Ordering::SeqCst);
        InflightGuard(self.clone())
    }

    /// Records `n` requests just read: once per batch, not per request.
    pub fn arrived(&self, n: u64) {
        if n > 0 {
            self.requests.fetch_add(n, Ordering::Relaxed);
            *self.last_request.lock().unwrap() = Instant::now();
        }
    }

    pub fn accepted(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::SeqCst)
    }

    pub fn last_request(&self) -> Instant {
        *self.last_request.lock().unwrap()
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Resolves once nothing is in flight.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.inflight() == 0 {
                return;
            }
            notified.await;
        }
    }
}

pub(crate) struct InflightGuard(Arc<Tracker>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        if self.0.inflight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}
