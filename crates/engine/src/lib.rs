//! The connection engine: what every hop (proxy client and backend
//! connections, LB frontend and worker connections, SDK service and worker
//! connections) shares.
//!
//! - [`conn`]: one task per connection runs [`conn::run`], which reads
//!   every waiting frame per wake-up, races writes against reads, drives
//!   one timer, takes events from other tasks and closes through a named
//!   `Closing` state. A hop is a [`conn::Hop`]: what to do with a message,
//!   an event, a tick. Generic, so each hop's loop is compiled for it.
//! - [`seq`]: [`seq::SeqTable`], the one place a hop's own seqids are
//!   assigned, looked up and given back.
//! - [`lost`]: why a connection or a request failed, typed: one wording
//!   for the SPEC §3 exceptions, one label for metrics.
//! - [`drain`]: the shutdown signal servers give their connections, and
//!   the wait for them to finish; [`serve::accept`], the accept loop that
//!   hands each connection its drain watch under a connection limit.
//! - [`balance`]: choosing a peer (P2C, least-loaded, round-robin) over a
//!   small load trait; [`ewma`]: the peak-EWMA latency estimate.

pub mod balance;
pub mod conn;
pub mod drain;
pub mod ewma;
pub mod lost;
pub mod seq;
pub mod serve;

pub use conn::{Cx, Flow, Hop, Options};
pub use lost::{Failure, Lost};
pub use seq::SeqTable;
