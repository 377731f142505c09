//! The two listeners, registration, and graceful stop.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rpc_config::Config;
use rpc_engine::{drain, serve};
use rpc_registry::{Endpoint, Registry};
use rpc_transport::{Address, Listener};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::dispatch::{Dispatcher, Stats};
use crate::frontend::{self, Activity, FrontSettings};
use crate::metrics::{Metrics, Page};
use crate::register::{self, RegisterSettings};
use crate::supervise::{Children, SlotView, Supervisor};
use crate::worker::{self, WorkerSettings};

/// A running LB.
pub struct LbHandle {
    front: Address,
    back: Address,
    dispatcher: Arc<Dispatcher>,
    metrics_address: Option<std::net::SocketAddr>,
    supervisor: Option<Arc<Supervisor>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl LbHandle {
    /// Where proxies connect (port 0 resolved); also what is registered.
    pub fn front_address(&self) -> &Address {
        &self.front
    }

    /// Where workers dial in (port 0 resolved).
    pub fn back_address(&self) -> &Address {
        &self.back
    }

    /// Where `/metrics`, `/status` and the dashboard are served, if enabled.
    pub fn metrics_address(&self) -> Option<std::net::SocketAddr> {
        self.metrics_address
    }

    /// Workers taking requests, requests in flight and queued, right now.
    pub fn stats(&self) -> Stats {
        self.dispatcher.stats()
    }

    /// The supervised workers (`worker_command`), if any.
    pub fn supervised(&self) -> Vec<SlotView> {
        self.supervisor
            .as_ref()
            .map(|s| s.views())
            .unwrap_or_default()
    }

    /// Replaces every supervised worker, one after another, each new one
    /// connected before its old one stops (`SIGHUP`).
    pub async fn reload(&self) {
        match &self.supervisor {
            Some(s) => s.reload().await,
            None => tracing::info!("reload: no supervised workers (worker_command is not set)"),
        }
    }

    /// Graceful stop (SPEC §5): leave the registry, serve until no request
    /// has arrived for `quiet_period`, let every request in flight finish,
    /// then close every connection. Bounded by `stop_timeout`.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Binds the frontend (`front_sock` or `front_host:front_port`) and
/// `back_address`, accepts proxies and workers, and registers under
/// `service` once a worker is connected.
pub async fn start(config: &Config, registry: Arc<dyn Registry>) -> anyhow::Result<LbHandle> {
    let (service, front_addr, back_addr) = validate(config)?;
    let (front, back) = bind(&front_addr, &back_addr).await?;
    let (front_addr, back_addr) = (front.local_address(), back.local_address());
    tracing::info!(%service, frontend = %front_addr, backend = %back_addr, dispatch = ?config.dispatch, "LB listening");

    let dispatcher = Dispatcher::new(
        config.dispatch,
        (config.worker_pool_size, config.worker_prefetch),
        config.backend_max_inflight,
        config.queue_size,
    );
    let metrics = Arc::new(Metrics::new(config.metrics_max_methods));
    let falcon = rpc_config::falcon::start(config, &metrics.methods);
    let service_name: Arc<str> = service.as_str().into();
    let supervisor = Supervisor::new(config, &back_addr);
    let children = supervisor.as_ref().map(|s| s.children());
    let (front_settings, worker_settings) =
        settings(config, service_name.clone(), &metrics, children);

    let (stop, stop_rx) = watch::channel(false);
    let (front_drain, front_watch) = drain::channel();
    let (back_drain, back_watch) = drain::channel();
    let activity = Arc::new(Activity::new());

    let sweeper = tokio::spawn(dispatcher.clone().sweep_expired());
    let endpoint = Endpoint::new(&service, &front_addr.to_string());
    let registration = register(config, endpoint, registry, &dispatcher, &stop_rx, &metrics);
    let limit = config.max_connections;
    let front_loop = accept_proxies(
        front,
        limit,
        front_watch,
        &dispatcher,
        front_settings,
        &activity,
    );
    let back_loop = accept_workers(back, limit, back_watch, &dispatcher, worker_settings);
    let metrics_address = match &config.metrics_address {
        Some(addr) => {
            let page = Page::new(
                service_name,
                metrics.clone(),
                dispatcher.clone(),
                supervisor.clone(),
                about(config, &front_addr, &back_addr),
            );
            Some(status_page(addr, page).await?)
        }
        None => None,
    };
    // Workers last: once nothing can fail any more, so none is left behind.
    if let Some(s) = &supervisor {
        s.start(dispatcher.clone());
    }
    let stopping = Stopping {
        stop: stop_rx,
        registration,
        activity,
        quiet_period: config.quiet_period,
        stop_timeout: config.stop_timeout,
        front: (front_drain, front_loop),
        back: (back_drain, back_loop),
        dispatcher: dispatcher.clone(),
        sweeper,
        supervisor: supervisor.clone(),
    };
    let task = tokio::spawn(async move {
        // Pushes per-method statistics until the LB stops.
        let _falcon = falcon;
        stopping.run().await
    });
    Ok(LbHandle {
        front: front_addr,
        back: back_addr,
        dispatcher,
        metrics_address,
        supervisor,
        stop,
        task,
    })
}

/// Keeps `endpoint` in the registry while the LB has workers, until `stop`.
fn register(
    config: &Config,
    endpoint: Endpoint,
    registry: Arc<dyn Registry>,
    dispatcher: &Dispatcher,
    stop: &watch::Receiver<bool>,
    metrics: &Arc<Metrics>,
) -> JoinHandle<()> {
    let settings = RegisterSettings {
        endpoint,
        register_delay: config.register_delay,
        no_worker_grace: config.no_worker_grace,
    };
    let workers = dispatcher.accepting_workers();
    tokio::spawn(register::run(
        registry,
        settings,
        workers,
        stop.clone(),
        metrics.clone(),
    ))
}

/// Serves `/metrics`, `/status` and the dashboard on `addr`.
async fn status_page(addr: &str, page: Page) -> anyhow::Result<std::net::SocketAddr> {
    rpc_config::status_page::start(addr, Arc::new(page))
        .await
        .with_context(|| format!("cannot serve metrics on {addr}"))
}

/// Serves the proxies' connections accepted on `l`.
fn accept_proxies(
    l: Listener,
    limit: usize,
    watch: drain::Watch,
    dispatcher: &Arc<Dispatcher>,
    settings: Arc<FrontSettings>,
    activity: &Arc<Activity>,
) -> JoinHandle<()> {
    let (d, a) = (dispatcher.clone(), activity.clone());
    let limit = Arc::new(Semaphore::new(limit));
    tokio::spawn(serve::accept(l, limit, watch, move |stream, drain| {
        let m = settings.metrics.clone();
        m.proxy_connections.fetch_add(1, Ordering::Relaxed);
        let conn = frontend::serve(stream, d.clone(), settings.clone(), a.clone(), drain);
        async move {
            conn.await;
            m.proxy_connections.fetch_sub(1, Ordering::Relaxed);
        }
    }))
}

/// Serves the workers' connections accepted on `l`.
fn accept_workers(
    l: Listener,
    limit: usize,
    watch: drain::Watch,
    dispatcher: &Arc<Dispatcher>,
    settings: Arc<WorkerSettings>,
) -> JoinHandle<()> {
    let d = dispatcher.clone();
    let limit = Arc::new(Semaphore::new(limit));
    tokio::spawn(serve::accept(l, limit, watch, move |stream, drain| {
        worker::serve(stream, d.clone(), settings.clone(), drain)
    }))
}

/// The frontend and worker listeners.
async fn bind(front: &Address, back: &Address) -> anyhow::Result<(Listener, Listener)> {
    let f = Listener::bind(front)
        .await
        .with_context(|| format!("cannot listen for proxies on {front}"))?;
    let b = Listener::bind(back)
        .await
        .with_context(|| format!("cannot listen for workers on {back}"))?;
    Ok((f, b))
}

/// What the frontend and worker connections take from the configuration.
fn settings(
    config: &Config,
    service: Arc<str>,
    metrics: &Arc<Metrics>,
    children: Option<Arc<Children>>,
) -> (Arc<FrontSettings>, Arc<WorkerSettings>) {
    let front = FrontSettings {
        service,
        max_frame: config.max_frame_size,
        max_inflight: config.max_inflight,
        rpc_timeout: config.rpc_timeout,
        frame_timeout: config.frame_timeout,
        metrics: metrics.clone(),
    };
    let worker = WorkerSettings {
        max_frame: config.max_frame_size,
        heartbeat_interval: config.heartbeat_interval,
        heartbeat_timeout: config.heartbeat_timeout,
        rpc_timeout: config.rpc_timeout,
        children,
    };
    (Arc::new(front), Arc::new(worker))
}

/// What the status page says about this LB.
fn about(config: &Config, front: &Address, back: &Address) -> rpc_config::status_page::About {
    let workers = match &config.worker_command {
        Some(argv) => format!("{} × {}", config.worker_count, argv.join(" ")),
        None => "dial in".into(),
    };
    rpc_config::status_page::About::new("rpc-lb", env!("CARGO_PKG_VERSION"))
        .set("product", &config.product)
        .set("zk", &config.registry)
        .set("frontend", front)
        .set("back_address", back)
        .set("worker_pool_size", config.worker_pool_size)
        .set("worker_prefetch", config.worker_prefetch)
        .set("dispatch", format!("{:?}", config.dispatch))
        .set("queue_size", config.queue_size)
        .set("rpc_timeout", format!("{:?}", config.rpc_timeout))
        .set("workers", workers)
}

/// Upper bound of `worker_prefetch`: a few calls hide the round trip
/// between a reply and the next call; more only queue where no other
/// worker can reach them.
const MAX_PREFETCH: usize = 64;

/// What the LB needs from a configuration: its service name, frontend
/// address and worker address, or an error naming the missing key or the
/// value out of bounds.
pub fn validate(config: &Config) -> anyhow::Result<(String, Address, Address)> {
    let service = config
        .service
        .clone()
        .context("`service` is not set: the LB registers under it")?;
    let front = config
        .front_address()
        .context("no frontend address (front_sock, or front_host/ip_prefix and front_port)")?;
    let back = config
        .back_address
        .clone()
        .context("`back_address` is not set: workers dial it")?;
    if config.worker_prefetch > MAX_PREFETCH {
        anyhow::bail!(
            "worker_prefetch = {} is above {MAX_PREFETCH}: calls waiting inside a worker are \
             calls no other worker can take",
            config.worker_prefetch
        );
    }
    Ok((service, front, back))
}

/// The graceful stop (SPEC §5), waiting for the LB's stop signal.
struct Stopping {
    stop: watch::Receiver<bool>,
    registration: JoinHandle<()>,
    activity: Arc<Activity>,
    quiet_period: Duration,
    stop_timeout: Duration,
    front: (drain::Signal, JoinHandle<()>),
    back: (drain::Signal, JoinHandle<()>),
    dispatcher: Arc<Dispatcher>,
    sweeper: JoinHandle<()>,
    supervisor: Option<Arc<Supervisor>>,
}

impl Stopping {
    async fn run(mut self) {
        let _ = crate::until(&mut self.stop, |s| *s).await;
        let give_up = Instant::now() + self.stop_timeout;
        // 1. Out of the registry, so proxies stop choosing this LB.
        let _ = self.registration.await;
        // 2. Keep serving until requests stop arriving.
        loop {
            let idle = self.activity.idle();
            if idle >= self.quiet_period || Instant::now() >= give_up {
                break;
            }
            let wake = (Instant::now() + (self.quiet_period - idle)).min(give_up);
            tokio::time::sleep_until(wake).await;
        }
        // 3. Stop reading from proxies; let every request read be answered.
        let (front, front_loop) = self.front;
        front.start();
        let _ = front_loop.await;
        if tokio::time::timeout_at(give_up, front.drain())
            .await
            .is_err()
        {
            let stats = self.dispatcher.stats();
            tracing::warn!(?stats, "stop timeout reached with requests in flight");
        }
        // 4. Stop the workers this LB started (each sends STOP, finishes
        //    and exits); close the others (they redial whoever listens next).
        if let Some(supervisor) = &self.supervisor {
            supervisor.stop().await;
        }
        let (back, back_loop) = self.back;
        back.start();
        let _ = back_loop.await;
        let _ = tokio::time::timeout(Duration::from_secs(1), back.drain()).await;
        self.sweeper.abort();
        tracing::info!("LB stopped");
    }
}
