//! How the binaries run: the tokio runtime the `threads` key selects, and
//! the signals that stop them.

/// With `threads = 0`, machines with at most this many cores get a
/// single-threaded runtime: on small machines shared with the application
/// and its services, one thread with no cross-thread hand-off measured both
/// cheaper per request and faster than one thread per core.
pub const SINGLE_THREAD_MAX_CORES: usize = 4;

/// `threads == 1` is a single-threaded runtime, `threads > 1` that many
/// worker threads, and `0` picks: single-threaded on up to
/// [`SINGLE_THREAD_MAX_CORES`] cores, else one worker per core.
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

/// SIGTERM and SIGINT, caught from the moment this is made: make it
/// before the process says it is ready (registers, prints its address), so
/// a stop sent right after is not lost (a signal arriving before any
/// listener exists is dropped once the handler is installed, or kills the
/// process before that).
pub struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Needs a tokio runtime.
    pub fn new() -> std::io::Result<StopSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves on the next SIGTERM or SIGINT (or one already caught).
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// Resolves on SIGTERM or SIGINT sent from now on (see [`StopSignals`]
/// for a process announcing readiness first).
pub async fn wait_for_signal() {
    StopSignals::new()
        .expect("install SIGTERM and SIGINT handlers")
        .recv()
        .await
}

/// Runs a graceful stop; a second SIGTERM/SIGINT meanwhile exits at once.
pub async fn stop_or_exit(stop: impl std::future::Future<Output = ()>) {
    tokio::select! {
        _ = stop => {}
        _ = wait_for_signal() => tracing::warn!("second signal: exiting now"),
    }
}
