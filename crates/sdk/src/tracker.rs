//! Counts requests in flight and remembers when the last one arrived, so a
//! graceful stop can wait for "idle and quiet".

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Notify;

pub(crate) struct Tracker {
    inflight: AtomicUsize,
    idle: Notify,
    last_request: Mutex<Instant>,
}

impl Tracker {
    pub fn new() -> Arc<Tracker> {
        Arc::new(Tracker {
            inflight: AtomicUsize::new(0),
            idle: Notify::new(),
            last_request: Mutex::new(Instant::now()),
        })
    }

    /// Marks a request as started; it ends when the guard drops.
    pub fn begin(self: &Arc<Self>) -> InflightGuard {
        self.inflight.fetch_add(1, Ordering::SeqCst);
        *self.last_request.lock().unwrap() = Instant::now();
        InflightGuard(self.clone())
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::SeqCst)
    }

    pub fn last_request(&self) -> Instant {
        *self.last_request.lock().unwrap()
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
