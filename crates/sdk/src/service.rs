//! The service server (SPEC §4, endpoint side).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rpc_codec::{FrameCodec, Message, MessageType};
use rpc_config::Config;
use rpc_registry::{Endpoint, Registration, Registry};
use rpc_transport::{Address, FrameReader, Listener, Stream};
use tokio::sync::{watch, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

use crate::conn::{protocol_error, run_request, spawn_writer};
use crate::tracker::Tracker;
use crate::Handler;

/// A Thrift service server built from a configuration and a handler.
///
/// It listens on the configured front address, registers
/// `Endpoint::new(service, address)` once the listener is up (unless
/// `stand_alone=1`), echoes heartbeats and runs requests concurrently,
/// writing each reply as soon as it is ready.
pub struct Service {
    config: Config,
    handler: Arc<dyn Handler>,
    registry: Option<Arc<dyn Registry>>,
    code_url_version: Option<String>,
}

impl Service {
    pub fn new(config: Config, handler: impl Handler) -> Service {
        Service {
            config,
            handler: Arc::new(handler),
            registry: None,
            code_url_version: None,
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

    /// Binds, starts serving, then registers. Returns once registered.
    pub async fn start(self) -> anyhow::Result<ServiceHandle> {
        let config = self.config;
        let bind = config.front_address().context("no address to listen on")?;
        let listener = Listener::bind(&bind)
            .await
            .with_context(|| format!("cannot listen on {bind}"))?;
        let address = listener.local_address();
        tracing::info!(%address, "service listening");

        let tracker = Tracker::new();
        let (shutdown, shutdown_rx) = watch::channel(false);
        let settings = ConnSettings {
            max_frame: config.max_frame_size,
            max_inflight: config.max_inflight,
            frame_timeout: config.frame_timeout,
        };
        let accept = tokio::spawn(accept_loop(
            listener,
            self.handler,
            tracker.clone(),
            settings,
            config.max_connections,
            shutdown_rx,
        ));

        let registration = if config.stand_alone {
            tracing::info!("stand-alone: not registering");
            None
        } else {
            let service = config
                .service
                .clone()
                .context("`service` is not set (or set stand_alone=1)")?;
            let registry = match self.registry {
                Some(r) => r,
                None => rpc_registry::open(&config)
                    .await
                    .context("cannot open the registry")?,
            };
            let mut endpoint = Endpoint::new(&service, &address.to_string());
            if let Some(v) = self.code_url_version {
                endpoint.code_url_version = v;
            }
            let reg = registry
                .register(endpoint)
                .await
                .with_context(|| format!("cannot register {service} at {address}"))?;
            tracing::info!(%service, %address, "registered");
            Some((reg, registry))
        };

        Ok(ServiceHandle {
            address,
            registration,
            tracker,
            shutdown,
            accept,
            quiet_period: config.quiet_period,
            stop_timeout: config.stop_timeout,
        })
    }

    /// Serves until SIGTERM or SIGINT, then stops gracefully.
    pub async fn run(self) -> anyhow::Result<()> {
        let handle = self.start().await?;
        crate::wait_for_signal().await;
        tracing::info!("signal received, stopping");
        handle.stop().await;
        Ok(())
    }
}

/// A running service.
pub struct ServiceHandle {
    address: Address,
    registration: Option<(Registration, Arc<dyn Registry>)>,
    tracker: Arc<Tracker>,
    shutdown: watch::Sender<bool>,
    accept: JoinHandle<()>,
    quiet_period: Duration,
    stop_timeout: Duration,
}

impl ServiceHandle {
    /// The address actually bound (port 0 resolved).
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// Requests being served right now.
    pub fn inflight(&self) -> usize {
        self.tracker.inflight()
    }

    /// Graceful stop: deregister first, keep serving until nothing is in
    /// flight and no request arrived for `quiet_period`, then close every
    /// connection. The whole stop takes at most `stop_timeout`.
    pub async fn stop(mut self) {
        let deadline = Instant::now() + self.stop_timeout;
        if let Some((reg, _registry)) = self.registration.take() {
            reg.deregister().await;
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
        let _ = self.shutdown.send(true);
        let rest = deadline.saturating_duration_since(Instant::now()) + Duration::from_millis(100);
        if tokio::time::timeout(rest, &mut self.accept).await.is_err() {
            self.accept.abort();
        }
        tracing::info!("service stopped");
    }
}

#[derive(Clone, Copy)]
struct ConnSettings {
    max_frame: usize,
    max_inflight: usize,
    frame_timeout: std::time::Duration,
}

async fn accept_loop(
    listener: Listener,
    handler: Arc<dyn Handler>,
    tracker: Arc<Tracker>,
    settings: ConnSettings,
    max_connections: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(max_connections));
    let mut conns = JoinSet::new();
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("never closed"),
            _ = stopped(&mut shutdown) => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => break,
        };
        while conns.try_join_next().is_some() {}
        let (h, t, s) = (handler.clone(), tracker.clone(), shutdown.clone());
        conns.spawn(async move {
            serve_conn(stream, h, t, settings, s).await;
            drop(permit);
        });
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

/// One connection: reads requests (at most `max_inflight` unanswered, then
/// reading pauses), echoes heartbeats, spawns each request.
async fn serve_conn(
    stream: Stream,
    handler: Arc<dyn Handler>,
    tracker: Arc<Tracker>,
    settings: ConnSettings,
    mut shutdown: watch::Receiver<bool>,
) {
    let peer = stream.peer();
    let (r, w) = stream.into_split();
    let mut reader = FrameReader::new(r, FrameCodec::new(settings.max_frame))
        .with_frame_timeout(settings.frame_timeout);
    let (tx, writer) = spawn_writer(w);
    let limit = Arc::new(Semaphore::new(settings.max_inflight));
    loop {
        let permit = match limit.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let p = tokio::select! {
                    p = limit.clone().acquire_owned() => p.expect("never closed"),
                    _ = stopped(&mut shutdown) => break,
                };
                // The pause was ours (backpressure), not the peer's.
                reader.reset_frame_clock();
                p
            }
        };
        let frame = tokio::select! {
            f = reader.next() => f,
            _ = stopped(&mut shutdown) => break,
        };
        let frame = match frame {
            None => break,
            Some(Ok(f)) => f,
            Some(Err(e)) => {
                tracing::warn!(%peer, error = %e, "bad frame; closing connection");
                let header = reader
                    .buffered()
                    .get(rpc_codec::LEN_PREFIX..)
                    .and_then(rpc_codec::Header::peek);
                let _ = tx.send(protocol_error(header, &e.to_string()));
                break;
            }
        };
        let mut msg = match Message::parse_or_peek(frame) {
            Ok(m) => m,
            Err((e, header)) => {
                tracing::warn!(%peer, error = %e, "bad message; closing connection");
                let _ = tx.send(protocol_error(header, &e.to_string()));
                break;
            }
        };
        match msg.kind() {
            MessageType::Heartbeat => {
                let _ = tx.send(msg.into_bytes());
            }
            MessageType::Call | MessageType::Oneway => {
                msg.strip_service();
                let guard = tracker.begin();
                let (h, tx) = (handler.clone(), tx.clone());
                tokio::spawn(async move {
                    if let Some(reply) = run_request(&h, msg).await {
                        let _ = tx.send(reply);
                    }
                    drop((guard, permit));
                });
            }
            other => {
                tracing::warn!(%peer, kind = ?other, "unexpected message type; closing connection");
                let e = format!("unexpected message type {other:?} sent to a service");
                let _ = tx.send(protocol_error(Some(msg.header()), &e));
                break;
            }
        }
    }
    // In-flight requests hold their own senders; the writer flushes their
    // replies and closes once the last one is done.
    drop(tx);
    let _ = writer.await;
}

/// Resolves once the shutdown flag is set (or its sender is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}
