//! The routing table: which backend connections serve which service.
//!
//! A manager task turns every registry snapshot into a fresh immutable
//! [`Routes`] and publishes it; request paths read the latest one without
//! locking anything for longer than an `Arc` clone.
//!
//! Endpoints an operator drained (a drain mark in the registry) keep their
//! connection but sit in [`ServicePool::drained`], out of the rotation:
//! `forward` sends them new calls only while no other endpoint of the
//! service is up (all drained, or the rest down), because failing calls
//! would be worse than using an endpoint that still serves.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use rpc_registry::ServiceMap;
use rpc_transport::Address;
use tokio::sync::watch;

use crate::backend::{Backend, BackendSettings};
use rpc_engine::balance::{Balancer, Strategy};

/// Endpoints of one service, and how to choose among them.
pub struct ServicePool {
    /// The rotation: endpoints not drained.
    pub backends: Vec<Arc<Backend>>,
    /// Endpoints an operator drained: connected, picked only as a last
    /// resort.
    pub drained: Vec<Arc<Backend>>,
    /// Kept across table rebuilds (its round-robin cursor with it).
    pub balancer: Arc<Balancer>,
    /// Calls received for the service (kept across table rebuilds).
    pub requests: prometheus_client::metrics::counter::Counter,
}

impl ServicePool {
    /// Every endpoint, drained ones last.
    pub fn endpoints(&self) -> impl Iterator<Item = &Arc<Backend>> {
        self.backends.iter().chain(&self.drained)
    }
}

#[derive(Default)]
pub struct Routes {
    pub services: HashMap<String, Arc<ServicePool>>,
}

/// Keeps backend connections in step with the registry.
pub struct RouteManager {
    product: String,
    settings: BackendSettings,
    balance: rpc_config::Balance,
    /// By service, frontend and TLS (an endpoint that comes back with TLS
    /// on or off gets a new connection).
    live: HashMap<(String, String, bool), Arc<Backend>>,
    /// Each live endpoint's `start_time` as last read: a new one means the
    /// endpoint restarted and registered again.
    started: HashMap<(String, String, bool), String>,
    /// TLS endpoints skipped for want of TLS keys, warned about once.
    skipped_tls: HashSet<(String, String)>,
    balancers: HashMap<String, Arc<Balancer>>,
    publish: watch::Sender<Arc<Routes>>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl RouteManager {
    pub fn new(
        product: String,
        settings: BackendSettings,
        balance: rpc_config::Balance,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> (Self, watch::Receiver<Arc<Routes>>) {
        let (publish, rx) = watch::channel(Arc::new(Routes::default()));
        (
            RouteManager {
                product,
                settings,
                balance,
                live: HashMap::new(),
                started: HashMap::new(),
                skipped_tls: HashSet::new(),
                balancers: HashMap::new(),
                publish,
                metrics,
            },
            rx,
        )
    }

    /// Rebuilds the table from one registry snapshot: new endpoints get a
    /// connection, removed ones are drained (no new requests at once), and
    /// endpoints with a drain mark leave the rotation (or rejoin it).
    pub fn apply(&mut self, map: &ServiceMap) {
        let mut wanted = HashSet::new();
        let mut services = HashMap::new();
        for (service, endpoints) in map {
            let mut backends = Vec::new();
            let mut drained = Vec::new();
            for ep in endpoints {
                let Ok(address) = ep.frontend.parse::<Address>() else {
                    tracing::warn!(%service, frontend = %ep.frontend, "endpoint with unusable address skipped");
                    continue;
                };
                // A socket path cannot be reached from another machine.
                if address.is_unix() && self.product != "test" {
                    tracing::debug!(%service, frontend = %ep.frontend, "unix endpoint skipped outside product test");
                    continue;
                }
                // A TLS-only endpoint is no use without TLS keys.
                if ep.tls && self.settings.tls.is_none() {
                    if self
                        .skipped_tls
                        .insert((service.clone(), ep.frontend.clone()))
                    {
                        tracing::warn!(%service, frontend = %ep.frontend, "endpoint accepts TLS only and this proxy has no TLS keys (tls_ca_file, tls_cert_file, tls_key_file): skipped");
                    }
                    continue;
                }
                let key = (service.clone(), ep.frontend.clone(), ep.tls);
                if !wanted.insert(key.clone()) {
                    continue;
                }
                // Registered again (a restart): dial now, not after backoff.
                let restarted = self
                    .started
                    .insert(key.clone(), ep.start_time.clone())
                    .is_some_and(|before| before != ep.start_time);
                let backend = self
                    .live
                    .entry(key)
                    .or_insert_with(|| {
                        tracing::info!(%service, endpoint = %address, tls = ep.tls, "endpoint added");
                        let settings = self.settings.clone();
                        Backend::spawn(service.clone(), address.clone(), ep.tls, settings)
                    })
                    .clone();
                if restarted {
                    backend.redial_now();
                }
                if backend.set_marked_drained(ep.draining) {
                    if ep.draining {
                        tracing::info!(%service, endpoint = %address, "endpoint drained: no new calls while another is up");
                    } else {
                        tracing::info!(%service, endpoint = %address, "endpoint undrained");
                    }
                }
                if ep.draining {
                    drained.push(backend);
                } else {
                    backends.push(backend);
                }
            }
            let strategy = match self.balance {
                rpc_config::Balance::P2c => Strategy::P2c,
                rpc_config::Balance::RoundRobin => Strategy::RoundRobin,
            };
            let balancer = self
                .balancers
                .entry(service.clone())
                .or_insert_with(|| Arc::new(Balancer::new(strategy)))
                .clone();
            let pool = ServicePool {
                backends,
                drained,
                balancer,
                requests: self.metrics.service_requests(service),
            };
            services.insert(service.clone(), Arc::new(pool));
        }
        self.balancers
            .retain(|service, _| map.contains_key(service));
        self.skipped_tls.retain(|(service, frontend)| {
            map.get(service)
                .is_some_and(|eps| eps.iter().any(|e| &e.frontend == frontend && e.tls))
        });
        self.started.retain(|key, _| wanted.contains(key));
        self.live.retain(|key, backend| {
            let keep = wanted.contains(key);
            if !keep {
                tracing::info!(service = %key.0, endpoint = %key.1, "endpoint removed, draining");
                backend.drain();
            }
            keep
        });
        self.publish.send_replace(Arc::new(Routes { services }));
    }

    /// Drains every backend (proxy shutdown).
    pub fn close(&mut self) {
        for backend in self.live.values() {
            backend.drain();
        }
        self.live.clear();
    }
}
