//! Listeners, the connection limit and graceful stop.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rpc_config::Config;
use rpc_registry::Registry;
use rpc_transport::{Address, Listener};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use crate::backend::BackendSettings;
use crate::client::{self, ClientSettings};
use crate::metrics::{self, Metrics};
use crate::routes::RouteManager;

/// A running proxy.
pub struct ProxyHandle {
    addresses: Vec<Address>,
    metrics_address: Option<std::net::SocketAddr>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl ProxyHandle {
    /// The addresses actually bound (port 0 resolved).
    pub fn addresses(&self) -> &[Address] {
        &self.addresses
    }

    /// Where `/metrics`, `/status` and the dashboard are served, if enabled.
    pub fn metrics_address(&self) -> Option<std::net::SocketAddr> {
        self.metrics_address
    }

    /// Stops accepting, lets every connection finish the requests it has
    /// in flight, then returns.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}

/// Binds every `proxy_address`, follows the registry and serves.
pub async fn start(config: &Config, registry: Arc<dyn Registry>) -> anyhow::Result<ProxyHandle> {
    anyhow::ensure!(
        !config.proxy_address.is_empty(),
        "`proxy_address` is not set"
    );
    let mut listeners = Vec::new();
    for addr in &config.proxy_address {
        let l = Listener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        tracing::info!(address = %l.local_address(), "proxy listening");
        listeners.push(l);
    }
    let addresses = listeners.iter().map(Listener::local_address).collect();

    let settings = BackendSettings {
        max_frame: config.max_frame_size,
        max_inflight: config.backend_max_inflight,
        heartbeat_interval: config.heartbeat_interval,
        heartbeat_timeout: config.heartbeat_timeout,
        drain_timeout: config.drain_timeout,
        connect_timeout: Duration::from_secs(3),
        latency_decay: config.balance_decay,
    };
    let metrics = Metrics::new();
    let (mut manager, routes) = RouteManager::new(
        config.product.clone(),
        settings,
        config.balance,
        metrics.clone(),
    );
    let metrics_address = match &config.metrics_address {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr.as_str())
                .await
                .with_context(|| format!("cannot serve metrics on {addr}"))?;
            let bound = l.local_addr()?;
            tracing::info!(address = %bound, "metrics and dashboard");
            tokio::spawn(metrics::serve(l, metrics.clone(), routes.clone()));
            Some(bound)
        }
        None => None,
    };
    let mut registry_rx = registry
        .watch()
        .await
        .context("cannot watch the registry")?;
    manager.apply(&registry_rx.borrow_and_update());

    let client_settings = Arc::new(ClientSettings {
        max_frame: config.max_frame_size,
        max_inflight: config.max_inflight,
        rpc_timeout: config.rpc_timeout,
        frame_timeout: config.frame_timeout,
        metrics,
    });
    let (shutdown, shutdown_rx) = watch::channel(false);
    let max_conns = config.max_connections;
    let stop_timeout = config.stop_timeout;
    let task = tokio::spawn(async move {
        // Keeps the registry (and its watch) alive while we serve.
        let _registry = registry;
        let permits = Arc::new(Semaphore::new(max_conns));
        let mut accepters = Vec::new();
        for l in listeners {
            accepters.push(tokio::spawn(accept_loop(
                l,
                routes.clone(),
                client_settings.clone(),
                permits.clone(),
                shutdown_rx.clone(),
            )));
        }
        let mut stop = shutdown_rx.clone();
        tokio::select! {
            _ = async {
                loop {
                    let map = registry_rx.borrow_and_update().clone();
                    manager.apply(&map);
                    if registry_rx.changed().await.is_err() {
                        tracing::error!("registry watch ended; keeping the last routes");
                        std::future::pending::<()>().await;
                    }
                }
            } => {}
            _ = stop.wait_for(|s| *s) => {}
        }
        for a in accepters {
            let _ = a.await;
        }
        // Every connection holds a permit until it has answered what it read.
        if tokio::time::timeout(stop_timeout, permits.acquire_many(max_conns as u32))
            .await
            .is_err()
        {
            tracing::warn!("stop timeout reached with connections still busy");
        }
        manager.close();
        tracing::info!("proxy stopped");
    });
    Ok(ProxyHandle {
        addresses,
        metrics_address,
        shutdown,
        task,
    })
}

async fn accept_loop(
    listener: Listener,
    routes: watch::Receiver<Arc<crate::routes::Routes>>,
    settings: Arc<ClientSettings>,
    permits: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        // At the connection limit, stop accepting: the kernel backlog holds
        // newcomers until a slot frees.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("semaphore never closed"),
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let stream = tokio::select! {
            s = listener.accept() => s,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        match stream {
            Ok(stream) => {
                let (routes, settings, shutdown) =
                    (routes.clone(), settings.clone(), shutdown.clone());
                settings.metrics.accepted.inc();
                settings.metrics.open_connections.inc();
                tokio::spawn(async move {
                    let metrics = settings.metrics.clone();
                    client::serve(stream, routes, settings, shutdown).await;
                    metrics.open_connections.dec();
                    drop(permit);
                });
            }
            Err(e) => {
                // Typically out of file descriptors: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
