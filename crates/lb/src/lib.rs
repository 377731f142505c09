//! `rpc-lb`, the load balancer of SPEC §5: proxies connect to its frontend,
//! worker processes dial its backend address, and each request goes to a
//! worker with a free slot.
//!
//! Request path, top to bottom:
//! - `server`: both listeners, connection limits, graceful stop, upgrades
//!   (a successor takes the sockets, then the proxies' connections);
//! - `frontend`: one proxy connection: heartbeats, out-of-order replies,
//!   backpressure; every answer comes back on one channel per connection
//!   (`reply`), so a request costs no allocation of its own beyond its
//!   frame;
//! - `dispatch`: least-loaded (or round-robin) choice of worker, the
//!   bounded FIFO queue for when every slot is busy;
//! - `worker`: one worker connection: seqid rewrite, batching,
//!   deadlines of the requests it wrote (one timer per connection),
//!   heartbeats, lost-worker detection, STOP;
//! - `register`: in the registry only while a worker is connected (an
//!   upgrade's successor: in its predecessor's place as soon as it has
//!   taken everything over, workers or not);
//! - `supervise`: the worker processes the LB starts itself
//!   (`worker_command`): restarts, recycling, reloads;
//! - `trace`: a span per call when `otlp_endpoint` is set, child of the
//!   proxy's and parent of the worker's;
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
mod trace;
mod worker;

pub use dispatch::Stats;
pub use server::{start, start_on, validate, LbHandle};
pub use supervise::SlotView;
