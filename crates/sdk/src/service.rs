//! The service server (SPEC §4, endpoint side).

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::task::{Context as TaskContext, Poll};

use anyhow::Context;
use rpc_codec::{Message, MessageType};
use rpc_config::Config;
use rpc_engine::lost::protocol_error;
use rpc_engine::{conn, drain, serve};
use rpc_engine::{Cx, Flow, Hop, Options};
use rpc_registry::{Endpoint, Registration, Registry};
use rpc_transport::tls::TlsServer;
use rpc_transport::{Address, Listener, Stream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;

use crate::conn::{start, Done};
use crate::tracker::Tracker;
use crate::Handler;

/// A Thrift service server built from a configuration and a handler.
///
/// It listens on the configured front address (or the addresses given to
/// [`Service::listen_on`]), registers `Endpoint::new(service, address)`
/// for each once listening (unless `stand_alone=1`), echoes heartbeats and
/// runs requests concurrently, writing each reply as soon as it is ready.
///
/// With `tls_cert_file`, `tls_key_file` and `tls_client_ca_file` it
/// accepts TLS only, from clients whose certificate that CA signed, and
/// registers `"tls": true`; a failed handshake closes that connection
/// with a log line naming the peer and why.
pub struct Service {
    config: Config,
    handler: Arc<dyn Handler>,
    registry: Option<Arc<dyn Registry>>,
    code_url_version: Option<String>,
    addresses: Vec<Address>,
}

impl Service {
    pub fn new(config: Config, handler: impl Handler) -> Service {
        Service {
            config,
            handler: Arc::new(handler),
            registry: None,
            code_url_version: None,
            addresses: Vec::new(),
        }
    }

    /// Registers in `registry` instead of the one the configuration names.
    pub fn with_registry(mut self, registry: Arc<dyn Registry>) -> Service {
        self.registry = Some(registry);
        self
    }

    /// The code version recorded in the registry entry.
    pub fn with_code_url_version(mut self, version: impl Into<String>) -> Service {
        self.code_url_version = Some(version.into());
        self
    }

    /// Listens on these addresses (TCP or Unix, port 0 allowed) instead of
    /// the configured front address, and registers each of them: one
    /// service reachable both on a port and on a local socket, say.
    pub fn listen_on(mut self, addresses: impl IntoIterator<Item = Address>) -> Service {
        self.addresses = addresses.into_iter().collect();
        self
    }

    /// Binds, starts serving, then registers. Returns once registered.
    pub async fn start(self) -> anyhow::Result<ServiceHandle> {
        let config = self.config;
        let tls = TlsServer::from_files(&config.tls).context("TLS")?;
        let mut binds = self.addresses;
        if binds.is_empty() {
            binds.push(config.front_address().context("no address to listen on")?);
        }
        let mut listeners = Vec::new();
        for bind in &binds {
            let listener = Listener::bind_with_mode(bind, config.socket_mode)
                .await
                .with_context(|| format!("cannot listen on {bind}"))?;
            tracing::info!(address = %listener.local_address(), "service listening");
            listeners.push(listener);
        }
        let addresses: Vec<Address> = listeners.iter().map(|l| l.local_address()).collect();

        let tracker = Tracker::new();
        let (drain, watch) = drain::channel();
        let conn = Arc::new(ConnShared {
            handler: self.handler,
            tracker: tracker.clone(),
            max_frame: config.max_frame_size,
            max_inflight: config.max_inflight,
            frame_timeout: config.frame_timeout,
        });
        // One limit on connections across every listener.
        let limit = Arc::new(Semaphore::new(config.max_connections));
        let accept = listeners
            .into_iter()
            .map(|l| {
                let conn = conn.clone();
                let tls = tls.clone();
                tokio::spawn(serve::accept(
                    l,
                    limit.clone(),
                    watch.clone(),
                    move |stream, drain| {
                        conn.tracker.accepted();
                        let conn = conn.clone();
                        let tls = tls.clone();
                        async move {
                            let tls = tls.as_deref();
                            let Some(stream) = rpc_transport::tls::accept(tls, stream).await else {
                                return;
                            };
                            serve_conn(stream, &conn, drain).await
                        }
                    },
                ))
            })
            .collect();

        let (registrations, registry) = if config.stand_alone {
            tracing::info!("stand-alone: not registering");
            (Vec::new(), None)
        } else {
            let version = self.code_url_version.as_deref();
            let tls = tls.is_some();
            let (regs, reg) = register(&config, self.registry, &addresses, version, tls).await?;
            (regs, Some(reg))
        };

        Ok(ServiceHandle {
            addresses,
            registrations,
            _registry: registry,
            tracker,
            drain,
            accept,
            quiet_period: config.quiet_period,
            stop_timeout: config.stop_timeout,
            tls,
        })
    }

    /// Serves until SIGTERM or SIGINT, then stops gracefully. With TLS,
    /// SIGHUP reads the certificate files again.
    pub async fn run(self) -> anyhow::Result<()> {
        // Caught before we register: a stop right after is kept.
        let mut stop = crate::StopSignals::new()?;
        let handle = self.start().await?;
        match &handle.tls {
            None => stop.recv().await,
            Some(_) => {
                use tokio::signal::unix::{signal, SignalKind};
                let mut hup = signal(SignalKind::hangup())?;
                loop {
                    tokio::select! {
                        _ = stop.recv() => break,
                        _ = hup.recv() => handle.reload_tls(),
                    }
                }
            }
        }
        tracing::info!("signal received, stopping");
        handle.stop().await;
        Ok(())
    }
}

/// What a running service has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServiceStats {
    /// Connections accepted since the start, on every address.
    pub connections: u64,
    /// Calls and oneways read (heartbeats are not counted).
    pub requests: u64,
}

/// A running service.
pub struct ServiceHandle {
    addresses: Vec<Address>,
    registrations: Vec<Registration>,
    /// Kept open while registered.
    _registry: Option<Arc<dyn Registry>>,
    tracker: Arc<Tracker>,
    drain: drain::Signal,
    accept: Vec<JoinHandle<()>>,
    quiet_period: Duration,
    stop_timeout: Duration,
    tls: Option<Arc<TlsServer>>,
}

impl ServiceHandle {
    /// Whether the service accepts TLS only.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Reads the TLS files again (SIGHUP): connections accepted from now
    /// on use them; on error the current ones stay, and the error is
    /// logged.
    pub fn reload_tls(&self) {
        if let Some(tls) = &self.tls {
            rpc_transport::tls::log_reload(tls.reload());
        }
    }

    /// The (first) address actually bound (port 0 resolved).
    pub fn address(&self) -> &Address {
        &self.addresses[0]
    }

    /// Every address bound, in the order given.
    pub fn addresses(&self) -> &[Address] {
        &self.addresses
    }

    /// Requests waiting on their handler right now.
    pub fn inflight(&self) -> usize {
        self.tracker.inflight()
    }

    pub fn stats(&self) -> ServiceStats {
        ServiceStats {
            connections: self.tracker.connections(),
            requests: self.tracker.requests(),
        }
    }

    /// Graceful stop: deregister first, keep serving until nothing is in
    /// flight and no request arrived for `quiet_period`, then stop reading,
    /// write the replies still due and close every connection. The whole
    /// stop takes at most `stop_timeout`.
    pub async fn stop(mut self) {
        let deadline = Instant::now() + self.stop_timeout;
        if !self.registrations.is_empty() {
            for reg in self.registrations.drain(..) {
                reg.deregister().await;
            }
            tracing::info!("deregistered");
        }
        loop {
            let now = Instant::now();
            if now >= deadline {
                tracing::warn!(inflight = self.tracker.inflight(), "stop timeout reached");
                break;
            }
            let quiet_until = self.tracker.last_request() + self.quiet_period;
            if self.tracker.inflight() == 0 && now >= quiet_until {
                break;
            }
            let wake = quiet_until
                .max(now + Duration::from_millis(10))
                .min(deadline);
            tokio::select! {
                _ = tokio::time::sleep_until(wake.into()) => {}
                _ = self.tracker.wait_idle(), if self.tracker.inflight() > 0 => {}
            }
        }
        // Stop reading; every connection writes the replies still due.
        self.drain.start();
        let rest = deadline.saturating_duration_since(Instant::now()) + Duration::from_millis(100);
        for a in self.accept.drain(..) {
            let _ = a.await;
        }
        if tokio::time::timeout(rest, self.drain.drain())
            .await
            .is_err()
        {
            tracing::warn!("stop timeout reached with connections still open");
        }
        tracing::info!("service stopped");
    }
}

/// Registers `service` at every address bound.
async fn register(
    config: &Config,
    registry: Option<Arc<dyn Registry>>,
    addresses: &[Address],
    code_url_version: Option<&str>,
    tls: bool,
) -> anyhow::Result<(Vec<Registration>, Arc<dyn Registry>)> {
    let service = config
        .service
        .clone()
        .context("`service` is not set (or set stand_alone=1)")?;
    let reg = match registry {
        Some(r) => r,
        None => rpc_registry::open(config)
            .await
            .context("cannot open the registry")?,
    };
    let mut registrations = Vec::new();
    for address in addresses {
        let mut endpoint = Endpoint::new(&service, &address.to_string());
        endpoint.tls = tls;
        if let Some(v) = code_url_version {
            endpoint.code_url_version = v.to_string();
        }
        let r = reg
            .register(endpoint)
            .await
            .with_context(|| format!("cannot register {service} at {address}"))?;
        tracing::info!(%service, %address, "registered");
        registrations.push(r);
    }
    Ok((registrations, reg))
}

/// What every connection of a service shares.
struct ConnShared {
    handler: Arc<dyn Handler>,
    tracker: Arc<Tracker>,
    max_frame: usize,
    max_inflight: usize,
    frame_timeout: Duration,
}

/// One connection, as a hop of the engine: answers heartbeats, starts
/// each request (see [`crate::conn::start`]) and writes the replies of a
/// batch together. Reading pauses while `max_inflight` requests are
/// unanswered (running, or answered but not yet written).
async fn serve_conn(stream: Stream, shared: &ConnShared, mut shutdown: drain::Watch) {
    let opts = Options::new(shared.max_frame).frame_timeout(shared.frame_timeout);
    // Outcomes of the requests that went to tasks of their own.
    let (done_tx, done_rx) = mpsc::unbounded_channel::<Done<()>>();
    let mut hop = ServiceConn {
        shared,
        done_tx,
        done_rx,
        running: 0,
        arrived: 0,
    };
    // Borrowed, not moved: the watch must live until the connection ends,
    // since the server's drain waits for it.
    let stop = shutdown.signaled();
    conn::run(&mut hop, stream, stop, &opts).await;
}

struct ServiceConn<'a> {
    shared: &'a ConnShared,
    done_tx: mpsc::UnboundedSender<Done<()>>,
    done_rx: mpsc::UnboundedReceiver<Done<()>>,
    /// Requests on tasks of their own.
    running: usize,
    /// Requests read in this batch.
    arrived: u64,
}

impl Hop for ServiceConn<'_> {
    type Event = Done<()>;

    fn on_message(&mut self, mut msg: Message, cx: &mut Cx<'_>) -> Flow {
        match msg.kind() {
            MessageType::Heartbeat => cx.send(msg.into_bytes()),
            MessageType::Call | MessageType::Oneway => {
                msg.strip_service();
                self.arrived += 1;
                let s = self.shared;
                match start(&s.handler, msg, &s.tracker, &self.done_tx, ()) {
                    Some(reply) => reply.into_iter().for_each(|r| cx.send(r)),
                    None => self.running += 1,
                }
            }
            other => {
                let why = format!("unexpected message type {other:?} sent to a service");
                tracing::warn!(peer = %cx.peer, error = %why, "bad input; closing connection");
                return Flow::CloseWith(protocol_error(&why, Some(msg.header())));
            }
        }
        Flow::Continue
    }

    fn wants_frames(&self, queued: usize) -> bool {
        self.running + queued < self.shared.max_inflight
    }

    fn poll_event(&mut self, c: &mut TaskContext<'_>) -> Poll<Option<Done<()>>> {
        self.done_rx.poll_recv(c)
    }

    fn try_event(&mut self) -> Option<Done<()>> {
        self.done_rx.try_recv().ok()
    }

    fn wants_events(&self) -> bool {
        self.running > 0
    }

    fn on_event(&mut self, (_, reply): Done<()>, cx: &mut Cx<'_>) -> Flow {
        self.running -= 1;
        reply.into_iter().for_each(|r| cx.send(r));
        Flow::Continue
    }

    fn on_batch_end(&mut self, _cx: &mut Cx<'_>) {
        self.shared
            .tracker
            .arrived(std::mem::take(&mut self.arrived));
    }

    fn owes(&self) -> bool {
        self.running > 0
    }
}
