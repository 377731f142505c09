//! `rpc-proxy`, the local proxy of SPEC §3–§4.
//!
//! Request path, top to bottom:
//! - [`server`]: accept loop, connection limit, graceful stop;
//! - [`client`]: one client connection, in-order replies, backpressure;
//! - [`forward`]: one request: route, deadline, seqid restore, errors;
//! - [`balance`]: choose a backend connection;
//! - [`backend`]: one endpoint connection: seqid rewrite, pipelining,
//!   heartbeats, reconnects, draining;
//! - [`routes`]: registry snapshots → routing table.

pub mod backend;
pub mod balance;
pub mod client;
mod fasthash;
pub mod forward;
pub mod metrics;
pub mod routes;
pub mod server;

pub use server::{start, ProxyHandle};

/// The runtime the binaries use: `threads == 1` is a single-threaded
/// runtime (no cross-thread handoff at all), `0` picks one worker per core.
pub fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if threads == 1 {
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
