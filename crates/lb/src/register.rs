//! When the LB is in the registry (SPEC §5): only while it has a worker to
//! serve with. It registers `register_delay` after the first worker
//! connects (if that worker is still there), leaves after `no_worker_grace`
//! without any worker, and comes back when one returns. A graceful stop
//! removes it first of all.
//!
//! Upgrades: an LB that took over a predecessor's sockets finds the
//! endpoint registered already (same frontend, same path); it registers at
//! once when told to ([`Command::RegisterNow`], replacing the predecessor's
//! entry, workers or not), and follows its workers from then on. The
//! predecessor leaves its entry in place ([`Command::Abandon`]): removing
//! it could remove the successor's.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rpc_registry::{Endpoint, Registration, Registry};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{sleep_until, Instant};

use crate::metrics::Metrics;

/// Pause between attempts when the registry refuses a registration.
const RETRY: Duration = Duration::from_secs(1);

pub struct RegisterSettings {
    pub endpoint: Endpoint,
    pub register_delay: Duration,
    pub no_worker_grace: Duration,
}

/// What the rest of the LB asks of its registration; each is answered
/// once done.
pub enum Command {
    /// Register now, workers or not (an upgrade's successor); answered
    /// once registered.
    RegisterNow(oneshot::Sender<()>),
    /// Graceful stop: leave the registry.
    Leave(oneshot::Sender<()>),
    /// Handed over to a successor: stop, leaving the entry as it is.
    Abandon(oneshot::Sender<()>),
}

enum State {
    /// Taken over: the predecessor's entry stands until `RegisterNow`.
    Predecessor,
    Out,
    /// A worker is connected; registering at the instant unless it goes.
    Settling(Instant),
    /// The registry refused; trying again at the instant.
    Retrying(Instant),
    /// Registered; with no worker since a while, leaving at the instant.
    In(Registration, Option<Instant>),
}

/// Follows the worker count and the commands until told to leave or
/// abandon (or until the LB is gone: then it leaves). Keeps
/// `metrics.registered` true while in. `taken_over`: start in the
/// predecessor's registration (see the module's doc).
pub async fn run(
    registry: Arc<dyn Registry>,
    s: RegisterSettings,
    mut workers: watch::Receiver<usize>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    metrics: Arc<Metrics>,
    taken_over: bool,
) {
    let mut state = if taken_over {
        State::Predecessor
    } else {
        State::Out
    };
    // Who waits for `RegisterNow` to be done.
    let mut registered: Vec<oneshot::Sender<()>> = Vec::new();
    loop {
        let n = *workers.borrow_and_update();
        let now = Instant::now();
        state = match state {
            State::Out if n > 0 => State::Settling(now + s.register_delay),
            State::Settling(_) if n == 0 => State::Out,
            State::In(r, None) if n == 0 => State::In(r, Some(now + s.no_worker_grace)),
            State::In(r, Some(_)) if n > 0 => State::In(r, None),
            other => other,
        };
        if matches!(state, State::In(..)) {
            for done in registered.drain(..) {
                let _ = done.send(());
            }
        }
        let timer = match &state {
            State::Settling(at) | State::Retrying(at) | State::In(_, Some(at)) => Some(*at),
            _ => None,
        };
        let at = timer.unwrap_or_else(|| now + Duration::from_secs(3600));
        tokio::select! {
            cmd = commands.recv() => match cmd {
                Some(Command::RegisterNow(done)) => {
                    registered.push(done);
                    state = match state {
                        State::In(r, leave) => State::In(r, leave),
                        _ => register(&registry, &s, &metrics).await,
                    };
                }
                Some(Command::Abandon(done)) => {
                    if let State::In(r, _) = state {
                        metrics.registered.store(false, Ordering::Relaxed);
                        r.abandon().await;
                        tracing::info!("registration left to the successor");
                    }
                    let _ = done.send(());
                    return;
                }
                Some(Command::Leave(done)) => {
                    leave(state, "stopping", &metrics).await;
                    let _ = done.send(());
                    return;
                }
                None => return leave(state, "stopping", &metrics).await,
            },
            changed = workers.changed() => {
                // The dispatcher is gone: the LB is going down.
                if changed.is_err() {
                    return leave(state, "stopping", &metrics).await;
                }
            }
            _ = sleep_until(at), if timer.is_some() => {
                state = match state {
                    State::Settling(_) | State::Retrying(_) => register(&registry, &s, &metrics).await,
                    State::In(r, Some(_)) => {
                        leave(State::In(r, None), "no worker connected", &metrics).await;
                        State::Out
                    }
                    other => other,
                };
            }
        }
    }
}

/// One attempt: `In` on success, else `Retrying`.
async fn register(registry: &Arc<dyn Registry>, s: &RegisterSettings, metrics: &Metrics) -> State {
    match registry.register(s.endpoint.clone()).await {
        Ok(r) => {
            tracing::info!(service = %s.endpoint.service, frontend = %s.endpoint.frontend, "LB registered");
            metrics.registered.store(true, Ordering::Relaxed);
            State::In(r, None)
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot register the LB endpoint; retrying");
            State::Retrying(Instant::now() + RETRY)
        }
    }
}

async fn leave(state: State, why: &str, metrics: &Metrics) {
    if let State::In(registration, _) = state {
        // Proxies stop choosing the LB from the moment it starts leaving.
        metrics.registered.store(false, Ordering::Relaxed);
        registration.deregister().await;
        tracing::info!(reason = why, "LB deregistered");
    }
}
