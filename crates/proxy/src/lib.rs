//! `rpc-proxy`, the local proxy of SPEC §3–§4. Every connection runs on
//! the connection engine (`rpc_engine::conn`); the modules are its hops
//! and what they share.
//!
//! Request path, top to bottom:
//! - `server`: the listeners (`rpc_engine::serve::accept`), connection
//!   limit, graceful stop (`rpc_engine::drain`);
//! - `client`: one client connection: slots in arrival order, deadlines,
//!   replies in order, backpressure;
//! - `forward`: hands one request to a backend of its service, chosen by
//!   the service's `rpc_engine::balance::Balancer`;
//! - `backend`: one endpoint connection: the seqid rewrite and restore
//!   (`rpc_engine::SeqTable`), pipelining, heartbeats, reconnects, draining;
//! - `routes`: registry snapshots → routing table;
//! - `metrics`: the status page;
//! - `trace`: a span per call, when `otlp_endpoint` is set.

mod backend;
mod client;
mod forward;
mod metrics;
mod routes;
mod server;
mod trace;

pub use server::{start, start_on, ProxyHandle};
