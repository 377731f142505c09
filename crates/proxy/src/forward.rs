//! Handing one request to a backend connection of its service (the
//! `EXCEPTION` replies of SPEC §3 are `rpc_engine::Failure`'s).
//!
//! Dispatch is synchronous: the client connection's task picks a backend
//! (`rpc_engine::balance`) and puts the job on its channel; the outcome comes back on
//! the client connection's reply channel (`client.rs` keeps the slots).

use rpc_codec::Message;

use std::sync::Arc;

use rpc_engine::balance::Balancer;

use crate::backend::{Backend, Job, State};
use crate::routes::Routes;

/// How many times a request that was never written may be re-routed.
pub const MAX_REROUTES: u8 = 8;

/// Why a job could not be handed to any backend.
pub enum Refused {
    /// No such service in the registry.
    Unknown,
    /// The service exists but no connection can take the job.
    NoEndpoint,
    /// No connection is up yet, but one is being opened: worth a short
    /// wait. The job comes back.
    Connecting(Job),
}

/// Hands the job to a live backend of `service`, trying another when the
/// chosen connection turns out unable to take it; the backend that took
/// it. Drained endpoints get it only when no other endpoint is up (a busy
/// one does not count: a drain holds under load). `first` counts the call
/// (not its re-routes) in the service's metrics.
pub fn dispatch<'r>(
    routes: &'r Routes,
    service: &str,
    job: Job,
    first: bool,
) -> Result<&'r Arc<Backend>, Refused> {
    let Some(pool) = routes.services.get(service) else {
        return Err(Refused::Unknown);
    };
    if first {
        pool.requests.inc();
    }
    let tries = pool.backends.len().max(1);
    let job = match offer(&pool.balancer, &pool.backends, job, tries) {
        Ok(b) => return Ok(b),
        Err(Offer::NoneUp(job)) if !pool.drained.is_empty() => {
            match offer(&pool.balancer, &pool.drained, job, pool.drained.len()) {
                Ok(b) => return Ok(b),
                Err(Offer::NoneUp(job) | Offer::Refused(job)) => job,
            }
        }
        Err(Offer::NoneUp(job) | Offer::Refused(job)) => job,
    };
    // Worth a short wait: a connection being admitted, or one that missed
    // a heartbeat and may answer again.
    if pool
        .endpoints()
        .any(|b| matches!(b.state(), State::Connecting | State::Suspect))
    {
        return Err(Refused::Connecting(job));
    }
    Err(Refused::NoEndpoint)
}

/// A job [`offer`] could not place, and why.
enum Offer {
    /// No backend was up.
    NoneUp(Job),
    /// Those picked could not take it (full, or closed meanwhile).
    Refused(Job),
}

/// Up to `tries` picks among `backends` until one takes the job; the one
/// that did.
fn offer<'b>(
    balancer: &Balancer,
    backends: &'b [Arc<Backend>],
    mut job: Job,
    tries: usize,
) -> Result<&'b Arc<Backend>, Offer> {
    for _ in 0..tries {
        let Some(i) = balancer.pick(backends) else {
            return Err(Offer::NoneUp(job));
        };
        match backends[i].try_send(job) {
            Ok(()) => return Ok(&backends[i]),
            Err(back) => job = back,
        }
    }
    Err(Offer::Refused(job))
}

/// Why a ONEWAY message went nowhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// No such service in the registry.
    Unknown,
    /// The service exists but no connection could take it.
    NoEndpoint,
}

/// Sends a ONEWAY message (name still `service:method`); nothing is ever
/// answered. The backend it went to, or why it was dropped.
pub fn oneway(routes: &Routes, mut msg: Message) -> Result<&Arc<Backend>, Dropped> {
    let service = msg.service().and_then(|s| std::str::from_utf8(s).ok());
    let Some(pool) = service.and_then(|s| routes.services.get(s)) else {
        let name = String::from_utf8_lossy(msg.name());
        tracing::warn!(%name, "oneway call dropped: unknown service");
        return Err(Dropped::Unknown);
    };
    pool.requests.inc();
    msg.strip_service();
    let job = Job { msg, reply: None };
    let tries = MAX_REROUTES as usize;
    let job = match offer(&pool.balancer, &pool.backends, job, tries) {
        Ok(b) => return Ok(b),
        // Like a call: a drained endpoint only when no other is up.
        Err(Offer::NoneUp(job)) => match offer(&pool.balancer, &pool.drained, job, tries) {
            Ok(b) => return Ok(b),
            Err(Offer::NoneUp(job) | Offer::Refused(job)) => job,
        },
        Err(Offer::Refused(job)) => job,
    };
    // Nothing to wait on for a oneway: a connection still being admitted
    // (or suspect) holds it and writes it once the endpoint answers.
    let mut job = job;
    for b in pool.endpoints() {
        if matches!(b.state(), State::Connecting | State::Suspect) {
            match b.hold(job) {
                Ok(()) => return Ok(b),
                Err(back) => job = back,
            }
        }
    }
    let name = String::from_utf8_lossy(job.msg.name());
    tracing::warn!(method = %name, "oneway call dropped: no live endpoint");
    Err(Dropped::NoEndpoint)
}
