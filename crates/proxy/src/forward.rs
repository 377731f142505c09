//! The life of one client request: route by service, hand it to a backend
//! connection, wait for the reply within the deadline, and restore the
//! client's seqid. Every failure becomes the `EXCEPTION` reply of SPEC §3.

use std::sync::Arc;

use bytes::Bytes;
use rpc_codec::{application_exception, ExceptionKind, Message};
use tokio::sync::{oneshot, watch};
use tokio::time::{timeout_at, Instant};

use crate::backend::{Job, Outcome, State};
use crate::routes::Routes;

/// How many times a request that was never written may be re-routed.
const MAX_REROUTES: usize = 8;
/// Pause before re-checking a service whose connections are all opening.
const CONNECT_WAIT: std::time::Duration = std::time::Duration::from_millis(5);

/// What the client connection gets back for one request: a frame to
/// write, or nothing (oneway).
pub type Answer = Option<Bytes>;

/// Sends a CALL (prefix already stripped) and waits for its reply.
pub async fn call(
    routes: watch::Receiver<Arc<Routes>>,
    service: String,
    mut msg: Message,
    deadline: Instant,
) -> Answer {
    let client_seqid = msg.seqid();
    let method = String::from_utf8_lossy(msg.name()).into_owned();
    let error = |kind, text: String| {
        Some(application_exception(method.as_bytes(), client_seqid, kind, &text).freeze())
    };

    let mut reroutes = 0;
    while reroutes < MAX_REROUTES {
        let (tx, rx) = oneshot::channel();
        let job = Job {
            msg,
            reply: Some(tx),
        };
        if let Err(route) = dispatch(&routes, &service, job) {
            // A connection still being opened (proxy start, new endpoint) is
            // worth a short wait rather than an error.
            if let Route::Connecting(back) = route {
                if Instant::now() + CONNECT_WAIT < deadline {
                    tokio::time::sleep(CONNECT_WAIT).await;
                    msg = back;
                    continue;
                }
                return error(
                    ExceptionKind::InternalError,
                    format!("Service: {service} has no live endpoint for method {method}"),
                );
            }
            return Some(match route {
                Route::Connecting(_) => unreachable!(),
                Route::Unknown => application_exception(
                    method.as_bytes(),
                    client_seqid,
                    ExceptionKind::Unknown,
                    &format!("Service: {service} Not Found"),
                )
                .freeze(),
                Route::NoEndpoint => application_exception(
                    method.as_bytes(),
                    client_seqid,
                    ExceptionKind::InternalError,
                    &format!("Service: {service} has no live endpoint for method {method}"),
                )
                .freeze(),
            });
        }
        match timeout_at(deadline, rx).await {
            Ok(Ok(Outcome::Reply(mut reply))) => {
                reply.set_seqid(client_seqid);
                return Some(reply.into_bytes());
            }
            Ok(Ok(Outcome::NotSent(back))) => {
                msg = back;
                reroutes += 1;
            }
            Ok(Ok(Outcome::Failed(cause))) => {
                return error(
                    ExceptionKind::InternalError,
                    format!("{service}:{method} failed: {cause}"),
                )
            }
            Ok(Err(_)) => {
                return error(
                    ExceptionKind::InternalError,
                    format!("{service}:{method} failed: connection closed"),
                )
            }
            Err(_) => {
                return error(
                    ExceptionKind::InternalError,
                    format!("Timeout Exception: {service}:{method} got no reply in time"),
                )
            }
        }
    }
    error(
        ExceptionKind::InternalError,
        format!("{service}:{method} failed: no endpoint could take the request"),
    )
}

/// Sends a ONEWAY message; nothing is ever answered.
pub fn oneway(routes: &watch::Receiver<Arc<Routes>>, service: &str, msg: Message) {
    let mut job = Job { msg, reply: None };
    for _ in 0..MAX_REROUTES {
        match try_dispatch(routes, service, job) {
            Ok(()) => return,
            Err(Some(back)) => job = back,
            Err(None) => break,
        }
    }
    tracing::warn!(%service, "oneway call dropped: no live endpoint");
}

enum Route {
    Unknown,
    NoEndpoint,
    /// No connection is up yet, but one is being opened; the job comes back.
    Connecting(Message),
}

/// Hands the job to a live backend of `service`, retrying the pick when a
/// connection turns out to be unable to take it.
fn dispatch(
    routes: &watch::Receiver<Arc<Routes>>,
    service: &str,
    mut job: Job,
) -> Result<(), Route> {
    let table = routes.borrow().clone();
    let Some(pool) = table.services.get(service) else {
        return Err(Route::Unknown);
    };
    for _ in 0..pool.backends.len().max(1) {
        let Some(backend) = pool.balancer.pick(&pool.backends) else {
            break;
        };
        match backend.try_send(job) {
            Ok(()) => return Ok(()),
            Err(back) => job = back,
        }
    }
    if pool.backends.iter().any(|b| b.state() == State::Connecting) {
        return Err(Route::Connecting(job.msg));
    }
    Err(Route::NoEndpoint)
}

fn try_dispatch(
    routes: &watch::Receiver<Arc<Routes>>,
    service: &str,
    job: Job,
) -> Result<(), Option<Job>> {
    let table = routes.borrow().clone();
    let pool = table.services.get(service).ok_or(None)?;
    let backend = pool.balancer.pick(&pool.backends).ok_or(None)?;
    backend.try_send(job).map_err(Some)
}
