//! `rpc-lb`, the load balancer of SPEC §5: proxies connect to its frontend,
//! worker processes dial its backend address, and each request goes to a
//! worker with a free slot.
//!
//! Request path, top to bottom:
//! - `server`: both listeners, connection limits, graceful stop;
//! - `frontend`: one proxy connection: heartbeats, out-of-order replies,
//!   backpressure; every answer comes back on one channel per connection
//!   (`reply`), so a request costs no allocation of its own beyond its
//!   frame;
//! - `dispatch`: least-loaded (or round-robin) choice of worker, the
//!   bounded FIFO queue for when every slot is busy;
//! - `worker`: one worker connection: seqid rewrite, batching,
//!   deadlines of the requests it wrote (one timer per connection),
//!   heartbeats, lost-worker detection, STOP;
//! - `register`: in the registry only while a worker is connected;
//! - `supervise`: the worker processes the LB starts itself
//!   (`worker_command`): restarts, recycling, reloads;
//! - `metrics`: the status page on `metrics_address` (Prometheus,
//!   JSON, dashboard) and the cheap counters behind it.

mod dispatch;
mod frontend;
mod metrics;
mod procfs;
mod register;
mod reply;
mod server;
mod supervise;
mod worker;

pub use dispatch::Stats;
pub use server::{start, validate, LbHandle};
pub use supervise::SlotView;

/// Waits until `rx` holds a value satisfying `cond`; `false` if the sender
/// is gone. Unlike `watch::Receiver::wait_for`, holds no borrow afterwards,
/// so it can sit in a `select!` of a task that moves between threads.
pub(crate) async fn until<T>(
    rx: &mut tokio::sync::watch::Receiver<T>,
    cond: impl FnMut(&T) -> bool,
) -> bool {
    rx.wait_for(cond).await.is_ok()
}
