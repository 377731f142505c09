//! When the LB is in the registry (SPEC §5): only while it has a worker to
//! serve with. It registers `register_delay` after the first worker
//! connects (if that worker is still there), leaves after `no_worker_grace`
//! without any worker, and comes back when one returns. A graceful stop
//! removes it first of all.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rpc_registry::{Endpoint, Registration, Registry};
use tokio::sync::watch;
use tokio::time::{sleep, Instant};

use crate::metrics::Metrics;

/// Pause between attempts when the registry refuses a registration.
const RETRY: Duration = Duration::from_secs(1);

pub struct RegisterSettings {
    pub endpoint: Endpoint,
    pub register_delay: Duration,
    pub no_worker_grace: Duration,
}

/// Follows the worker count until `stop` turns true; returns once the
/// endpoint is out of the registry. Keeps `metrics.registered` true while in.
pub async fn run(
    registry: Arc<dyn Registry>,
    s: RegisterSettings,
    mut workers: watch::Receiver<usize>,
    mut stop: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
) {
    loop {
        // Unregistered: wait for a worker that stays for the settle delay.
        tokio::select! {
            ok = crate::until(&mut workers, |n| *n > 0) => if !ok { return },
            _ = crate::until(&mut stop, |s| *s) => return,
        }
        let settle = sleep(s.register_delay);
        tokio::pin!(settle);
        let settled = tokio::select! {
            _ = &mut settle => true,
            _ = crate::until(&mut workers, |n| *n == 0) => false,
            _ = crate::until(&mut stop, |s| *s) => return,
        };
        if !settled || *workers.borrow() == 0 {
            continue;
        }
        let registration = loop {
            match registry.register(s.endpoint.clone()).await {
                Ok(r) => break r,
                Err(e) => {
                    tracing::error!(error = %e, "cannot register the LB endpoint; retrying");
                    tokio::select! {
                        _ = sleep(RETRY) => {}
                        _ = crate::until(&mut stop, |s| *s) => return,
                    }
                }
            }
        };
        tracing::info!(service = %s.endpoint.service, frontend = %s.endpoint.frontend, "LB registered");
        metrics.registered.store(true, Ordering::Relaxed);

        // Registered: leave after the grace period without workers.
        loop {
            // An error means the dispatcher is gone: the LB is going down.
            tokio::select! {
                ok = crate::until(&mut workers, |n| *n == 0) => if !ok {
                    return leave(registration, "stopping", &metrics).await;
                },
                _ = crate::until(&mut stop, |s| *s) => return leave(registration, "stopping", &metrics).await,
            }
            let until = Instant::now() + s.no_worker_grace;
            let back = tokio::select! {
                _ = tokio::time::sleep_until(until) => false,
                ok = crate::until(&mut workers, |n| *n > 0) => ok,
                _ = crate::until(&mut stop, |s| *s) => return leave(registration, "stopping", &metrics).await,
            };
            if !back {
                break;
            }
        }
        leave(registration, "no worker connected", &metrics).await;
    }
}

async fn leave(registration: Registration, why: &str, metrics: &Metrics) {
    // Proxies stop choosing the LB from the moment it starts leaving.
    metrics.registered.store(false, Ordering::Relaxed);
    registration.deregister().await;
    tracing::info!(reason = why, "LB deregistered");
}
