//! `rpc-proxy`, the local proxy of SPEC §3–§4.
//!
//! Request path, top to bottom:
//! - [`server`]: accept loop, connection limit, graceful stop;
//! - [`client`]: one client connection, in-order replies, backpressure;
//! - [`forward`]: one request: route, deadline, seqid restore, errors;
//! - `rpc_engine::balance`: choose a backend connection (`rpc_engine::ewma`:
//!   latency estimate);
//! - [`backend`]: one endpoint connection: seqid rewrite, pipelining,
//!   heartbeats, reconnects, draining;
//! - [`routes`]: registry snapshots → routing table.

pub mod backend;
pub mod client;
pub mod forward;
pub mod metrics;
pub mod routes;
pub mod server;

pub use server::{start, ProxyHandle};

pub use rpc_config::{runtime, wait_for_signal};
