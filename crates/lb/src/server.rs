//! The two listeners, registration, graceful stop, and upgrades.
//!
//! An upgrade (`rpc-lb --upgrade`, see `rpc_transport::handoff`): the
//! successor takes the frontend, worker and status page listeners and
//! accepts on them ([`start_on`]); the old LB then stops accepting, leaves
//! its registry entry in place, hands each proxy connection over once
//! everything read from it is answered, and keeps its worker connections
//! until the calls it sent them are answered. Then it stops the workers it
//! started and closes the others, which redial `back_address` and reach the
//! successor; until a worker does, the successor queues its calls. Once
//! every connection is over, the successor registers the endpoint at once
//! (replacing the old entry, same path) and says so; only then does the old
//! LB exit, so the endpoint never leaves the registry.
//!
//! With TLS keys (`tls_cert_file`, `tls_key_file`, `tls_client_ca_file`)
//! the frontend accepts TLS only and the endpoint is registered with
//! `"tls": true`. TLS connections are not handed over on an upgrade: they
//! close once everything read from them is answered, and proxies reopen
//! them to the successor.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use bytes::BytesMut;
use rpc_config::otel::Tracing;
use rpc_config::Config;
use rpc_engine::{drain, serve};
use rpc_registry::{Endpoint, Registry};
use rpc_transport::tls::TlsServer;
use rpc_transport::{handoff, Address, Listener, Stream};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::dispatch::{Dispatcher, Stats};
use crate::frontend::{self, Activity, FrontSettings};
use crate::metrics::{Metrics, Page};
use crate::register::{self, Command, RegisterSettings};
use crate::supervise::{Children, SlotView, Supervisor};
use crate::worker::{self, WorkerSettings};

/// A running LB. Dropping it stops the LB gracefully in the background.
pub struct LbHandle {
    front: Address,
    back: Address,
    dispatcher: Arc<Dispatcher>,
    metrics_address: Option<std::net::SocketAddr>,
    supervisor: Option<Arc<Supervisor>>,
    /// How the LB is to end, for its stopping task.
    end: oneshot::Sender<Ending>,
    task: JoinHandle<std::io::Result<()>>,
    register: mpsc::UnboundedSender<Command>,
    /// The listening sockets (frontend, workers), for handing them to a
    /// successor (valid while the accept loops run).
    fds: Vec<(Address, RawFd)>,
    status_fd: Option<RawFd>,
    /// What a proxy connection handed over by a predecessor is served with.
    proxies: Proxies,
    /// The frontend's TLS keys, if it accepts TLS only.
    tls: Option<Arc<TlsServer>>,
}

/// What the LB's proxy connections share (the drain watch: each its own).
#[derive(Clone)]
struct Proxies {
    dispatcher: Arc<Dispatcher>,
    settings: Arc<FrontSettings>,
    activity: Arc<Activity>,
    watch: drain::Watch,
}

/// How an LB ends.
enum Ending {
    /// Graceful stop (SPEC §5).
    Stop,
    /// Everything goes to this successor.
    HandOver(handoff::Upgrade),
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

    /// Reads the TLS files again, if any (connections accepted from now
    /// on use them; on error the current ones stay), then replaces every
    /// supervised worker, one after another, each new one connected before
    /// its old one stops (`SIGHUP`).
    pub async fn reload(&self) {
        if let Some(tls) = &self.tls {
            rpc_transport::tls::log_reload(tls.reload());
        }
        match &self.supervisor {
            Some(s) => s.reload().await,
            None => tracing::info!("reload: no supervised workers (worker_command is not set)"),
        }
    }

    /// Graceful stop (SPEC §5): leave the registry, serve until no request
    /// has arrived for `quiet_period`, let every request in flight finish,
    /// then close every connection. Bounded by `stop_timeout`.
    pub async fn stop(self) {
        let _ = self.end(Ending::Stop).await;
    }

    /// Hands the listening sockets (and the status page's) to the
    /// successor and waits until it accepts on them. On error the successor
    /// is gone and this LB serves on as before.
    pub async fn upgrade_to(&self, up: &mut handoff::Upgrade) -> std::io::Result<()> {
        up.send_listeners(&self.fds, self.status_fd).await?;
        up.wait_ready().await
    }

    /// After [`Self::upgrade_to`]: stops accepting, leaves the registry
    /// entry in place, hands each proxy connection to the successor once
    /// everything read from it is answered, lets the workers finish the
    /// calls sent to them, stops the workers it started and closes the
    /// others' connections (they redial the successor). Returns once the
    /// successor has registered (or `stop_timeout` passed), all of that
    /// done.
    pub async fn hand_off(self, up: handoff::Upgrade) -> std::io::Result<()> {
        self.end(Ending::HandOver(up)).await
    }

    /// Serves a proxy connection a predecessor handed over, `read` being
    /// the bytes it had read past the last request.
    pub fn adopt(&self, stream: Stream, read: BytesMut) {
        tokio::spawn(serve_proxy(stream, read, self.proxies.clone()));
    }

    /// Registers the endpoint now, whether or not a worker is connected,
    /// replacing the entry at its path (a predecessor's); returns once
    /// registered. From then on the registration follows the workers as
    /// usual. For an LB started with [`start_on`], which does not register
    /// before this.
    pub async fn register_now(&self) {
        let (done, registered) = oneshot::channel();
        if self.register.send(Command::RegisterNow(done)).is_ok() {
            let _ = registered.await;
        }
    }

    async fn end(self, how: Ending) -> std::io::Result<()> {
        // Our own watch (for adopted connections) must not hold the drain up.
        let LbHandle {
            end, task, proxies, ..
        } = self;
        drop(proxies);
        let _ = end.send(how);
        task.await.unwrap_or_else(|e| Err(std::io::Error::other(e)))
    }
}

/// Binds the frontend (`front_sock` or `front_host:front_port`) and
/// `back_address`, accepts proxies and workers, and registers under
/// `service` once a worker is connected.
pub async fn start(config: &Config, registry: Arc<dyn Registry>) -> anyhow::Result<LbHandle> {
    let (service, front_addr, back_addr) = validate(config)?;
    let (front, back) = bind(&front_addr, &back_addr, config.socket_mode).await?;
    let status = match &config.metrics_address {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot serve metrics on {addr}"))?,
        ),
        None => None,
    };
    launch(config, &service, registry, (front, back, status), false)
}

/// [`start`] on the sockets of the LB running with this configuration,
/// taken over ([`handoff::take_over`]: the frontend's, then the workers',
/// and the status page's if any). The endpoint is registered already (the
/// same frontend is the same registry path): this LB registers when told
/// to ([`LbHandle::register_now`]), not on its first worker.
pub async fn start_on(
    config: &Config,
    registry: Arc<dyn Registry>,
    sockets: handoff::Taken,
) -> anyhow::Result<LbHandle> {
    let (service, front_addr, back_addr) = match validate(config) {
        Ok(v) => v,
        Err(e) => {
            leave_to_predecessor(sockets.listeners);
            return Err(e);
        }
    };
    let handoff::Taken { listeners, status } = sockets;
    let [front, back]: [Listener; 2] = match listeners.try_into() {
        Ok(l) => l,
        Err(l) => {
            let n = l.len();
            leave_to_predecessor(l);
            anyhow::bail!("expected the frontend and worker listeners, got {n} listener(s)");
        }
    };
    for (what, configured, taken) in [
        ("frontend", &front_addr, front.local_address()),
        ("back_address", &back_addr, back.local_address()),
    ] {
        if *configured != taken && !configured.to_string().ends_with(":0") {
            tracing::warn!(%configured, %taken, "{what} changed: serving on the one taken over (a restart moves it)");
        }
    }
    if status.is_none() && config.metrics_address.is_some() {
        tracing::warn!("the LB taken over had no status page: none until a restart");
    }
    launch(config, &service, registry, (front, back, status), true)
}

/// Until the predecessor hears that we accept, the paths of its Unix
/// listeners are its own, and dropping ours would remove them: closed
/// without that.
fn leave_to_predecessor(listeners: Vec<Listener>) {
    std::mem::forget(listeners);
}

/// Serves on `front` (proxies) and `back` (workers) and the status page on
/// `status`; `taken_over`: the sockets are a predecessor's (see
/// [`start_on`]).
fn launch(
    config: &Config,
    service: &str,
    registry: Arc<dyn Registry>,
    (front, back, status): (Listener, Listener, Option<tokio::net::TcpListener>),
    taken_over: bool,
) -> anyhow::Result<LbHandle> {
    let tracer = match Tracing::from_config(config, "rpc-lb", env!("CARGO_PKG_VERSION")) {
        Ok(t) => t,
        Err(e) => {
            if taken_over {
                leave_to_predecessor(vec![front, back]);
            }
            anyhow::bail!(e);
        }
    };
    let tls = match TlsServer::from_files(&config.tls) {
        Ok(t) => t,
        Err(e) => {
            if taken_over {
                leave_to_predecessor(vec![front, back]);
            }
            anyhow::bail!("TLS: {e}");
        }
    };
    let (front_addr, back_addr) = (front.local_address(), back.local_address());
    let fds = vec![
        (front_addr.clone(), front.as_raw_fd()),
        (back_addr.clone(), back.as_raw_fd()),
    ];
    let status_fd = status.as_ref().map(|l| l.as_raw_fd());
    tracing::info!(%service, frontend = %front_addr, backend = %back_addr, dispatch = ?config.dispatch, taken_over, "LB listening");

    let dispatcher = Dispatcher::new(
        config.dispatch,
        (config.worker_pool_size, config.worker_prefetch),
        config.backend_max_inflight,
        config.queue_size,
    );
    let metrics = Arc::new(Metrics::new(config.metrics_max_methods));
    let falcon = rpc_config::falcon::start(config, &metrics.methods);
    let service_name: Arc<str> = service.into();
    let supervisor = Supervisor::new(config, &back_addr);
    let children = supervisor.as_ref().map(|s| s.children());
    let (front_settings, worker_settings) =
        settings(config, service_name.clone(), &metrics, children, tracer);

    let (end, end_rx) = oneshot::channel();
    let (front_drain, front_watch) = drain::channel();
    let (back_drain, back_watch) = drain::channel();
    let activity = Arc::new(Activity::new());

    let sweeper = tokio::spawn(dispatcher.clone().sweep_expired());
    let mut endpoint = Endpoint::new(service, &front_addr.to_string());
    endpoint.tls = tls.is_some();
    let (register_tx, register_rx) = mpsc::unbounded_channel();
    let registration = register(
        config,
        endpoint,
        registry,
        &dispatcher,
        register_rx,
        &metrics,
        taken_over,
    );
    let limit = config.max_connections;
    let proxies = Proxies {
        dispatcher: dispatcher.clone(),
        settings: front_settings,
        activity: activity.clone(),
        watch: front_watch,
    };
    let front_loop = accept_proxies(front, limit, proxies.clone(), tls.clone());
    let back_loop = accept_workers(back, limit, back_watch, &dispatcher, worker_settings);
    let metrics_address = match status {
        Some(l) => {
            let page = Page::new(
                service_name,
                metrics.clone(),
                dispatcher.clone(),
                supervisor.clone(),
                about(config, &front_addr, &back_addr),
            );
            let bound = l.local_addr().ok();
            if let Some(address) = bound {
                tracing::info!(%address, "metrics and dashboard");
            }
            tokio::spawn(rpc_config::status_page::serve(l, Arc::new(page)));
            bound
        }
        None => None,
    };
    // Workers last: once nothing can fail any more, so none is left behind.
    if let Some(s) = &supervisor {
        s.start(dispatcher.clone());
    }
    let stopping = Stopping {
        register: (register_tx.clone(), registration),
        activity,
        quiet_period: config.quiet_period,
        stop_timeout: config.stop_timeout,
        front: (front_drain, front_loop),
        front_settings: proxies.settings.clone(),
        back: (back_drain, back_loop),
        dispatcher: dispatcher.clone(),
        sweeper,
        supervisor: supervisor.clone(),
    };
    let task = tokio::spawn(async move {
        // Pushes per-method statistics until the LB stops.
        let _falcon = falcon;
        stopping.run(end_rx).await
    });
    Ok(LbHandle {
        front: front_addr,
        back: back_addr,
        dispatcher,
        metrics_address,
        supervisor,
        end,
        task,
        register: register_tx,
        fds,
        status_fd,
        proxies,
        tls,
    })
}

/// Keeps `endpoint` in the registry while the LB has workers, as `commands`
/// say.
fn register(
    config: &Config,
    endpoint: Endpoint,
    registry: Arc<dyn Registry>,
    dispatcher: &Dispatcher,
    commands: mpsc::UnboundedReceiver<Command>,
    metrics: &Arc<Metrics>,
    taken_over: bool,
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
        commands,
        metrics.clone(),
        taken_over,
    ))
}

/// Serves the proxies' connections accepted on `l`, over TLS only if
/// `tls` (the handshake on the connection's own task).
fn accept_proxies(
    l: Listener,
    limit: usize,
    proxies: Proxies,
    tls: Option<Arc<TlsServer>>,
) -> JoinHandle<()> {
    let limit = Arc::new(Semaphore::new(limit));
    let watch = proxies.watch.clone();
    tokio::spawn(serve::accept(l, limit, watch, move |stream, drain| {
        let conn = Proxies {
            dispatcher: proxies.dispatcher.clone(),
            settings: proxies.settings.clone(),
            activity: proxies.activity.clone(),
            watch: drain,
        };
        let tls = tls.clone();
        async move {
            let Some(stream) = rpc_transport::tls::accept(tls.as_deref(), stream).await else {
                return;
            };
            serve_proxy(stream, BytesMut::new(), conn).await
        }
    }))
}

/// One proxy connection, counted while it lasts; `read`: bytes a
/// predecessor read from it past its last request.
fn serve_proxy(
    stream: Stream,
    read: BytesMut,
    conn: Proxies,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let m = conn.settings.metrics.clone();
    m.proxy_connections.fetch_add(1, Ordering::Relaxed);
    async move {
        let Proxies {
            dispatcher,
            settings,
            activity,
            watch,
        } = conn;
        frontend::serve(stream, read, dispatcher, settings, activity, watch).await;
        m.proxy_connections.fetch_sub(1, Ordering::Relaxed);
    }
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
async fn bind(front: &Address, back: &Address, mode: u32) -> anyhow::Result<(Listener, Listener)> {
    let f = Listener::bind_with_mode(front, mode)
        .await
        .with_context(|| format!("cannot listen for proxies on {front}"))?;
    let b = Listener::bind_with_mode(back, mode)
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
    tracing: Option<Arc<Tracing>>,
) -> (Arc<FrontSettings>, Arc<WorkerSettings>) {
    let front = FrontSettings {
        service,
        max_frame: config.max_frame_size,
        max_inflight: config.max_inflight,
        rpc_timeout: config.rpc_timeout,
        frame_timeout: config.frame_timeout,
        metrics: metrics.clone(),
        handoff: OnceLock::new(),
        tracing,
        confirm_wait: config.heartbeat_timeout,
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
        // The identity (`digest:user`), never the password.
        .set(
            "zk_auth",
            config
                .zk_auth
                .as_ref()
                .map_or("none".into(), |a| a.to_string()),
        )
        .set("frontend", front)
        .set("back_address", back)
        .set("tls", config.tls.summary())
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

/// How the LB ends, waiting for the word: graceful stop (SPEC §5) or
/// hand-over to a successor.
struct Stopping {
    register: (mpsc::UnboundedSender<Command>, JoinHandle<()>),
    activity: Arc<Activity>,
    quiet_period: Duration,
    stop_timeout: Duration,
    front: (drain::Signal, JoinHandle<()>),
    front_settings: Arc<FrontSettings>,
    back: (drain::Signal, JoinHandle<()>),
    dispatcher: Arc<Dispatcher>,
    sweeper: JoinHandle<()>,
    supervisor: Option<Arc<Supervisor>>,
}

impl Stopping {
    /// A dropped handle stops gracefully too.
    async fn run(self, end: oneshot::Receiver<Ending>) -> std::io::Result<()> {
        match end.await {
            Ok(Ending::HandOver(up)) => self.hand_over(up).await,
            Ok(Ending::Stop) | Err(_) => {
                self.graceful().await;
                Ok(())
            }
        }
    }

    /// Tells the registration task `command` and waits until it is done.
    async fn registration(&mut self, command: fn(oneshot::Sender<()>) -> Command) {
        let (done, wait) = oneshot::channel();
        if self.register.0.send(command(done)).is_ok() {
            let _ = wait.await;
        }
        let _ = (&mut self.register.1).await;
    }

    /// Sends the spans of the last calls before the process goes.
    async fn last_spans(front: &FrontSettings) {
        if let Some(t) = front.tracing.clone() {
            let _ = tokio::task::spawn_blocking(move || t.shutdown()).await;
        }
    }

    async fn graceful(mut self) {
        let give_up = Instant::now() + self.stop_timeout;
        // 1. Out of the registry, so proxies stop choosing this LB.
        self.registration(Command::Leave).await;
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
        Self::last_spans(&self.front_settings).await;
        tracing::info!("LB stopped");
    }

    /// Everything to the successor, which accepts on our listeners by now
    /// (see the module's doc). Bounded by `stop_timeout`, and as long
    /// again for the successor to register.
    async fn hand_over(mut self, mut up: handoff::Upgrade) -> std::io::Result<()> {
        let give_up = Instant::now() + self.stop_timeout;
        // 1. The successor registers the same endpoint once it has taken
        //    everything over: ours stays listed until then, and nothing of
        //    ours may remove or replace its entry afterwards.
        self.registration(Command::Abandon).await;
        // 2. Workers dial the successor from now on; the connections we
        //    have stay until our calls are answered.
        let (back, back_loop) = self.back;
        back_loop.abort();
        let _ = back_loop.await;
        // 3. Each proxy connection, once everything read from it is
        //    answered, with the bytes of a request already begun.
        let (tx, mut handed) = mpsc::unbounded_channel();
        let _ = self.front_settings.handoff.set(tx);
        let (front, front_loop) = self.front;
        front.start();
        let _ = front_loop.await;
        let mut sent = 0u64;
        let mut result = Ok(());
        {
            let drained = tokio::time::timeout_at(give_up, front.drain());
            tokio::pin!(drained);
            loop {
                tokio::select! {
                    Some((stream, read)) = handed.recv() => {
                        hand(&mut up, stream, &read, &mut result, &mut sent).await;
                    }
                    done = &mut drained => {
                        if done.is_err() {
                            let stats = self.dispatcher.stats();
                            tracing::warn!(?stats, "stop timeout reached with proxy connections still owed answers");
                        }
                        break;
                    }
                }
            }
        }
        // Connections hand themselves over before they end.
        while let Ok((stream, read)) = handed.try_recv() {
            hand(&mut up, stream, &read, &mut result, &mut sent).await;
        }
        tracing::info!(
            connections = sent,
            successor = up.pid,
            "proxy connections handed over"
        );
        // 4. Meanwhile the successor registers, and our workers finish.
        let finished = async {
            if result.is_err() {
                return;
            }
            match tokio::time::timeout(self.stop_timeout, up.done_and_wait()).await {
                Ok(Ok(())) => tracing::info!("the successor has taken over"),
                Ok(Err(e)) => tracing::warn!(error = %e, "upgrade: no word from the successor"),
                Err(_) => tracing::warn!("upgrade: the successor did not finish in time"),
            }
        };
        let workers = close_workers(&self.dispatcher, self.supervisor.as_deref(), back, give_up);
        tokio::join!(finished, workers);
        self.sweeper.abort();
        Self::last_spans(&self.front_settings).await;
        tracing::info!("LB handed over");
        result
    }
}

/// Passes one proxy connection to the successor; after a failure, closes
/// the rest.
async fn hand(
    up: &mut handoff::Upgrade,
    stream: Stream,
    read: &[u8],
    result: &mut std::io::Result<()>,
    sent: &mut u64,
) {
    if result.is_err() {
        return;
    }
    match up.send_connection(stream, read).await {
        Ok(()) => *sent += 1,
        Err(e) => {
            tracing::error!(error = %e, "upgrade: handing connections over failed; closing the rest");
            *result = Err(e);
        }
    }
}

/// After an upgrade: once the calls sent to workers are answered (or
/// `give_up`), stops the workers this LB started and closes the other
/// workers' connections, so they redial the successor.
async fn close_workers(
    dispatcher: &Dispatcher,
    supervisor: Option<&Supervisor>,
    back: drain::Signal,
    give_up: Instant,
) {
    loop {
        let stats = dispatcher.stats();
        if stats.inflight == 0 && stats.queued == 0 {
            break;
        }
        if Instant::now() >= give_up {
            tracing::warn!(?stats, "stop timeout reached with calls in workers");
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if let Some(supervisor) = supervisor {
        supervisor.stop().await;
    }
    back.start();
    let _ = tokio::time::timeout(Duration::from_secs(1), back.drain()).await;
    tracing::info!("worker connections closed: the workers redial the successor");
}
