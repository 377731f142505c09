//! Listeners, the connection limit and graceful stop.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;

use anyhow::Context;
use rpc_config::otel::Tracing;
use rpc_config::Config;
use rpc_engine::{drain, serve};
use rpc_registry::Registry;
use rpc_transport::tls::TlsClient;
use rpc_transport::{handoff, Address, Listener};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::backend::BackendSettings;
use crate::client::{self, ClientSettings};
use crate::metrics::{self, Metrics};
use crate::routes::RouteManager;

/// A running proxy.
pub struct ProxyHandle {
    addresses: Vec<Address>,
    metrics_address: Option<std::net::SocketAddr>,
    drain: Arc<drain::Signal>,
    task: JoinHandle<()>,
    /// The listening sockets, for handing them to a successor (valid while
    /// the accept loops run, which is until the drain starts).
    fds: Vec<(Address, RawFd)>,
    status_fd: Option<RawFd>,
    /// What a connection handed over by a predecessor is served with.
    routes: tokio::sync::watch::Receiver<Arc<crate::routes::Routes>>,
    settings: Arc<ClientSettings>,
    watch: drain::Watch,
    /// The keys endpoints with `"tls": true` are dialled with.
    tls: Option<Arc<TlsClient>>,
}

impl ProxyHandle {
    /// Whether the proxy has TLS keys (dials TLS endpoints).
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Reads the TLS files again (SIGHUP): connections opened from now on
    /// use them; on error the current ones stay, and the error is logged.
    pub fn reload_tls(&self) {
        if let Some(tls) = &self.tls {
            rpc_transport::tls::log_reload(tls.reload());
        }
    }

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
        // Our own watch (for adopted connections) must not hold the drain up.
        let ProxyHandle {
            drain, task, watch, ..
        } = self;
        drop(watch);
        drain.start();
        let _ = task.await;
    }

    /// Hands the listening sockets to the successor and waits until it
    /// accepts on them. On error the successor is gone and this proxy
    /// serves on as before.
    pub async fn upgrade_to(&self, up: &mut handoff::Upgrade) -> std::io::Result<()> {
        up.send_listeners(&self.fds, self.status_fd).await?;
        up.wait_ready().await
    }

    /// After [`Self::upgrade_to`]: stops accepting, hands each client
    /// connection to the successor once everything it read is answered,
    /// and returns when none is left.
    pub async fn hand_off(self, mut up: handoff::Upgrade) -> std::io::Result<()> {
        let (tx, mut handed) = tokio::sync::mpsc::unbounded_channel();
        let _ = self.settings.handoff.set(tx);
        let ProxyHandle {
            drain,
            mut task,
            watch,
            ..
        } = self;
        drop(watch);
        drain.start();
        let mut sent = 0u64;
        loop {
            tokio::select! {
                Some((stream, read)) = handed.recv() => {
                    up.send_connection(stream, &read).await?;
                    sent += 1;
                }
                _ = &mut task => break,
            }
        }
        // Connections hand themselves over before they end.
        while let Ok((stream, read)) = handed.try_recv() {
            up.send_connection(stream, &read).await?;
            sent += 1;
        }
        tracing::info!(connections = sent, successor = up.pid, "handed over");
        up.done().await
    }

    /// Serves a connection a predecessor handed over, `read` being the
    /// bytes it had read past the last request.
    pub fn adopt(&self, stream: rpc_transport::Stream, read: BytesMut) {
        tokio::spawn(serve_client(
            stream,
            read,
            self.routes.clone(),
            self.settings.clone(),
            self.watch.clone(),
        ));
    }
}

/// Binds every `proxy_address`, follows the registry and serves.
pub async fn start(config: &Config, registry: Arc<dyn Registry>) -> anyhow::Result<ProxyHandle> {
    let listeners = bind(config).await?;
    let status = match &config.metrics_address {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot serve metrics on {addr}"))?,
        ),
        None => None,
    };
    start_on(config, registry, handoff::Taken { listeners, status }).await
}

/// [`start`] on sockets already listening (taken over from a predecessor).
pub async fn start_on(
    config: &Config,
    registry: Arc<dyn Registry>,
    sockets: handoff::Taken,
) -> anyhow::Result<ProxyHandle> {
    let handoff::Taken { listeners, status } = sockets;
    let addresses = listeners.iter().map(Listener::local_address).collect();
    let fds = listeners
        .iter()
        .map(|l| (l.local_address(), l.as_raw_fd()))
        .collect();
    let status_fd = status.as_ref().map(|l| l.as_raw_fd());

    let tls = TlsClient::from_files(&config.tls).context("TLS")?;
    let settings = BackendSettings {
        max_frame: config.max_frame_size,
        max_inflight: config.backend_max_inflight,
        heartbeat_interval: config.heartbeat_interval,
        heartbeat_timeout: config.heartbeat_timeout,
        drain_timeout: config.drain_timeout,
        connect_timeout: Duration::from_secs(3),
        latency_decay: config.balance_decay,
        tls: tls.clone(),
    };
    let metrics = Metrics::new(config.metrics_max_methods);
    let tracer = Tracing::from_config(config, "rpc-proxy", env!("CARGO_PKG_VERSION"))
        .map_err(anyhow::Error::msg)?;
    let falcon = rpc_config::falcon::start(config, &metrics.methods);
    let (mut manager, routes) = RouteManager::new(
        config.product.clone(),
        settings,
        config.balance,
        metrics.clone(),
    );
    let metrics_address = match status {
        Some(l) => Some(serve_metrics(l, &metrics, &routes, about(config))?),
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
        handoff: Default::default(),
        tracing: tracer.clone(),
    });
    let (signal, watch) = drain::channel();
    let signal = Arc::new(signal);
    let limit = Arc::new(Semaphore::new(config.max_connections));
    let accepters: Vec<_> = listeners
        .into_iter()
        .map(|l| accept(l, &limit, &watch, &routes, &client_settings))
        .collect();
    let (stop_timeout, drained) = (config.stop_timeout, signal.clone());
    let adopt = (routes.clone(), client_settings.clone(), watch.clone());
    let task = tokio::spawn(async move {
        // Keeps the registry (and its watch) alive while we serve.
        let _registry = registry;
        // Pushes per-method statistics until the proxy stops.
        let _falcon = falcon;
        let mut stop = watch;
        tokio::select! {
            _ = follow(&mut manager, &mut registry_rx) => {}
            _ = stop.signaled() => {}
        }
        drop(stop);
        for a in accepters {
            let _ = a.await;
        }
        // Every connection holds a watch until it has answered what it read.
        if tokio::time::timeout(stop_timeout, drained.drain())
            .await
            .is_err()
        {
            tracing::warn!("stop timeout reached with connections still busy");
        }
        manager.close();
        // The spans of the last calls, sent before the process goes.
        if let Some(t) = tracer {
            let _ = tokio::task::spawn_blocking(move || t.shutdown()).await;
        }
        tracing::info!("proxy stopped");
    });
    let (routes, settings, watch) = adopt;
    Ok(ProxyHandle {
        addresses,
        metrics_address,
        drain: signal,
        task,
        fds,
        status_fd,
        routes,
        settings,
        watch,
        tls,
    })
}

/// Serves client connections accepted on `l`.
fn accept(
    l: Listener,
    limit: &Arc<Semaphore>,
    watch: &drain::Watch,
    routes: &tokio::sync::watch::Receiver<Arc<crate::routes::Routes>>,
    settings: &Arc<ClientSettings>,
) -> JoinHandle<()> {
    let (routes, settings) = (routes.clone(), settings.clone());
    tokio::spawn(serve::accept(
        l,
        limit.clone(),
        watch.clone(),
        move |stream, drain| {
            serve_client(
                stream,
                BytesMut::new(),
                routes.clone(),
                settings.clone(),
                drain,
            )
        },
    ))
}

/// One client connection, counted while it lasts.
fn serve_client(
    stream: rpc_transport::Stream,
    read: BytesMut,
    routes: tokio::sync::watch::Receiver<Arc<crate::routes::Routes>>,
    settings: Arc<ClientSettings>,
    drain: drain::Watch,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    settings.metrics.accepted.inc();
    settings.metrics.open_connections.inc();
    async move {
        let metrics = settings.metrics.clone();
        client::serve(stream, read, routes, settings, drain).await;
        metrics.open_connections.dec();
    }
}

/// Binds every `proxy_address`.
async fn bind(config: &Config) -> anyhow::Result<Vec<Listener>> {
    anyhow::ensure!(
        !config.proxy_address.is_empty(),
        "`proxy_address` is not set"
    );
    let mut listeners = Vec::new();
    for addr in &config.proxy_address {
        let l = Listener::bind_with_mode(addr, config.socket_mode)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        tracing::info!(address = %l.local_address(), "proxy listening");
        listeners.push(l);
    }
    Ok(listeners)
}

/// The status page on `l`; the address bound.
fn serve_metrics(
    l: tokio::net::TcpListener,
    metrics: &Arc<Metrics>,
    routes: &tokio::sync::watch::Receiver<Arc<crate::routes::Routes>>,
    about: rpc_config::status_page::About,
) -> anyhow::Result<std::net::SocketAddr> {
    let bound = l.local_addr()?;
    tracing::info!(address = %bound, "metrics and dashboard");
    tokio::spawn(metrics::serve(l, metrics.clone(), routes.clone(), about));
    Ok(bound)
}

/// What the status page says about this proxy.
fn about(config: &Config) -> rpc_config::status_page::About {
    let addresses: Vec<String> = config.proxy_address.iter().map(|a| a.to_string()).collect();
    let spans = match &config.otlp_endpoint {
        Some(endpoint) => format!("{endpoint}, sampling {}", config.trace_sample_ratio),
        None => "off".into(),
    };
    rpc_config::status_page::About::new("rpc-proxy", env!("CARGO_PKG_VERSION"))
        .set("product", &config.product)
        .set("zk", &config.registry)
        // The identity (`digest:user`), never the password.
        .set(
            "zk_auth",
            config
                .zk_auth
                .as_ref()
                .map_or("none".into(), |a| a.to_string()),
        )
        .set("proxy_address", addresses.join(","))
        .set("balance", format!("{:?}", config.balance))
        .set("rpc_timeout", format!("{:?}", config.rpc_timeout))
        .set("max_connections", config.max_connections)
        .set("max_inflight", config.max_inflight)
        .set("tracing", spans)
        .set("tls", config.tls.summary())
        .set(
            "heartbeat",
            format!(
                "{:?} / {:?}",
                config.heartbeat_interval, config.heartbeat_timeout
            ),
        )
}

/// Applies every registry snapshot to the routing table. A registry watch
/// that ends leaves the last routes serving.
async fn follow(
    manager: &mut RouteManager,
    registry: &mut tokio::sync::watch::Receiver<Arc<rpc_registry::ServiceMap>>,
) {
    loop {
        let map = registry.borrow_and_update().clone();
        manager.apply(&map);
        if registry.changed().await.is_err() {
            tracing::error!("registry watch ended; keeping the last routes");
            std::future::pending::<()>().await;
        }
    }
}
