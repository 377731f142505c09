//! `rpc-lb`, the load balancer of SPEC §5: proxies connect to its frontend,
//! worker processes dial its backend address, and each request goes to a
//! worker with a free slot.
//!
//! Request path, top to bottom:
//! - [`server`]: both listeners, connection limits, graceful stop;
//! - [`frontend`]: one proxy connection: heartbeats, out-of-order replies,
//!   backpressure; every answer comes back on one channel per connection
//!   ([`reply`]), so a request costs no allocation of its own beyond its
//!   frame;
//! - [`dispatch`]: least-loaded (or round-robin) choice of worker, the
//!   bounded FIFO queue for when every slot is busy;
//! - [`worker`]: one worker connection: seqid rewrite, batching,
//!   deadlines of the requests it wrote (one timer per connection),
//!   heartbeats, lost-worker detection, STOP;
//! - [`register`]: in the registry only while a worker is connected.

pub mod dispatch;
pub mod frontend;
mod reader;
pub mod register;
pub mod reply;
pub mod server;
pub mod worker;

pub use dispatch::Stats;
pub use server::{start, LbHandle};

/// The runtime the binary uses: `threads == 1` is a single-threaded
/// runtime, `n > 1` a multi-threaded one with `n` worker threads, and `0`
/// picks for the machine: single-threaded on up to
/// [`SINGLE_THREAD_MAX_CORES`] cores, one worker thread per core above.
///
/// A request costs the LB a few system calls and little else, so one
/// thread serves far more than the workers behind it usually can; on a
/// small machine shared with those workers a multi-threaded runtime only
/// adds cross-thread wake-ups (measured: about 25 % more CPU per request
/// and lower throughput on 2 cores).
pub fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads == 1 || (threads == 0 && cores <= SINGLE_THREAD_MAX_CORES) {
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
    }
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if threads > 1 {
        b.worker_threads(threads);
    }
    b.enable_all().build()
}

/// With `threads = 0`, machines with at most this many cores get a
/// single-threaded runtime.
pub const SINGLE_THREAD_MAX_CORES: usize = 4;

/// Resolves on SIGTERM or SIGINT.
pub async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Waits until `rx` holds a value satisfying `cond`; `false` if the sender
/// is gone. Unlike `watch::Receiver::wait_for`, holds no borrow afterwards,
/// so it can sit in a `select!` of a task that moves between threads.
pub(crate) async fn until<T>(
    rx: &mut tokio::sync::watch::Receiver<T>,
    cond: impl FnMut(&T) -> bool,
) -> bool {
    rx.wait_for(cond).await.is_ok()
}
