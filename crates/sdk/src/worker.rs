//! The L4 worker (SPEC §5): dials the LB's `back_address` and serves the
//! requests the LB sends over that one connection.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rpc_codec::{application_exception, ExceptionKind, FrameCodec, Message, MessageType};
use rpc_config::Config;
use rpc_transport::{Address, FrameReader, Stream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};

use crate::conn::{protocol_error, run_request, spawn_writer};
use crate::tracker::Tracker;
use crate::Handler;

/// A worker process's connection to its LB.
pub struct Worker {
    back_address: Address,
    pool_size: usize,
    handler: Arc<dyn Handler>,
    heartbeat_timeout: Duration,
    backoff_initial: Duration,
    backoff_max: Duration,
    connect_timeout: Duration,
    max_frame: usize,
    max_queued: usize,
    stop_timeout: Duration,
}

/// How a connection to the LB ended.
enum ConnEnd {
    /// The LB went away (EOF, error, silence): redial.
    Lost,
    /// A graceful stop finished.
    Stopped,
}

impl Worker {
    /// Serves at most `pool_size` requests at once. Defaults follow SPEC §5:
    /// 5 s without a heartbeat means the LB is lost; redial backoff 1 s,
    /// 2 s, 4 s.
    pub fn new(back_address: Address, pool_size: usize, handler: impl Handler) -> Worker {
        Worker {
            back_address,
            pool_size: pool_size.max(1),
            handler: Arc::new(handler),
            heartbeat_timeout: Duration::from_secs(5),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(4),
            connect_timeout: Duration::from_secs(3),
            max_frame: rpc_codec::DEFAULT_MAX_FRAME,
            max_queued: 1024,
            stop_timeout: Duration::from_secs(30),
        }
    }

    /// From `back_address`, `worker_pool_size`, `max_frame_size`,
    /// `max_inflight` (requests queued beyond the pool), `stop_timeout`;
    /// a `heartbeat_timeout_ms` below 5 s shortens the LB-lost timeout.
    pub fn from_config(config: &Config, handler: impl Handler) -> anyhow::Result<Worker> {
        let back = config
            .back_address
            .clone()
            .context("`back_address` is not set")?;
        Ok(Worker::new(back, config.worker_pool_size, handler)
            .max_frame_size(config.max_frame_size)
            .max_queued(config.max_inflight)
            .stop_timeout(config.stop_timeout)
            .heartbeat_timeout(config.heartbeat_timeout.min(Duration::from_secs(5))))
    }

    /// Silence from the LB after which the connection counts as lost.
    pub fn heartbeat_timeout(mut self, d: Duration) -> Worker {
        self.heartbeat_timeout = d;
        self
    }

    /// Redial delays: `initial`, doubling up to `max`.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Worker {
        self.backoff_initial = initial;
        self.backoff_max = max.max(initial);
        self
    }

    pub fn max_frame_size(mut self, n: usize) -> Worker {
        self.max_frame = n;
        self
    }

    /// Requests accepted while every pool slot is busy; beyond this a call
    /// is refused with `INTERNAL_ERROR` (the LB should never get there).
    pub fn max_queued(mut self, n: usize) -> Worker {
        self.max_queued = n;
        self
    }

    /// Upper bound on a graceful stop.
    pub fn stop_timeout(mut self, d: Duration) -> Worker {
        self.stop_timeout = d;
        self
    }

    /// Starts dialing in the background.
    pub async fn start(self) -> WorkerHandle {
        let (stop, stop_rx) = watch::channel(false);
        let (connected_tx, connected) = watch::channel(false);
        let task = tokio::spawn(self.main_loop(stop_rx, connected_tx));
        WorkerHandle {
            stop,
            connected,
            task,
        }
    }

    /// Serves until SIGTERM or SIGINT, then stops gracefully.
    pub async fn run(self) -> anyhow::Result<()> {
        let handle = self.start().await;
        crate::wait_for_signal().await;
        tracing::info!("signal received, stopping");
        handle.stop().await;
        Ok(())
    }

    async fn main_loop(self, mut stop: watch::Receiver<bool>, connected: watch::Sender<bool>) {
        let me = Arc::new(self);
        let tracker = Tracker::new();
        let pool = Arc::new(Semaphore::new(me.pool_size));
        let mut backoff = me.backoff_initial;
        while !*stop.borrow() {
            let dial = tokio::time::timeout(me.connect_timeout, Stream::connect(&me.back_address));
            let dialed = tokio::select! {
                r = dial => r,
                _ = stop.wait_for(|s| *s) => break,
            };
            match dialed {
                Ok(Ok(stream)) => {
                    tracing::info!(lb = %me.back_address, "connected to LB");
                    backoff = me.backoff_initial;
                    let _ = connected.send(true);
                    let end = me
                        .serve_connection(stream, &tracker, &pool, &mut stop)
                        .await;
                    let _ = connected.send(false);
                    if let ConnEnd::Stopped = end {
                        return;
                    }
                    tracing::warn!(lb = %me.back_address, "lost the LB; redialing");
                }
                Ok(Err(e)) => {
                    tracing::warn!(lb = %me.back_address, error = %e, "cannot reach the LB")
                }
                Err(_) => tracing::warn!(lb = %me.back_address, "connecting to the LB timed out"),
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            backoff = (backoff * 2).min(me.backoff_max);
        }
        // Stopped while not connected: let running requests finish (their
        // replies have nowhere to go, but their side effects complete).
        let _ = tokio::time::timeout(me.stop_timeout, tracker.wait_idle()).await;
    }

    async fn serve_connection(
        &self,
        stream: Stream,
        tracker: &Arc<Tracker>,
        pool: &Arc<Semaphore>,
        stop: &mut watch::Receiver<bool>,
    ) -> ConnEnd {
        let (r, w) = stream.into_split();
        let mut reader = FrameReader::new(r, FrameCodec::new(self.max_frame));
        let (tx, writer) = spawn_writer(w);
        let queue = Arc::new(Semaphore::new(self.pool_size + self.max_queued));
        let mut silence = Instant::now() + self.heartbeat_timeout;
        // Set once STOP is sent: the deadline of the whole stop.
        let mut stopping: Option<Instant> = None;
        let mut confirmed = false;
        let end = loop {
            if confirmed && tracker.inflight() == 0 {
                tracing::info!("stop confirmed and idle; closing");
                break ConnEnd::Stopped;
            }
            tokio::select! {
                _ = stop.wait_for(|s| *s), if stopping.is_none() => {
                    tracing::info!("stopping: sending STOP to the LB");
                    let _ = tx.send(rpc_codec::stop().freeze());
                    stopping = Some(Instant::now() + self.stop_timeout);
                }
                _ = tracker.wait_idle(), if confirmed => {}
                _ = sleep_until(stopping.unwrap_or_else(Instant::now)), if stopping.is_some() => {
                    tracing::warn!(inflight = tracker.inflight(), "stop timeout reached");
                    break ConnEnd::Stopped;
                }
                _ = sleep_until(silence) => {
                    tracing::warn!(timeout = ?self.heartbeat_timeout, "no heartbeat from the LB");
                    break ConnEnd::Lost;
                }
                frame = reader.next() => {
                    silence = Instant::now() + self.heartbeat_timeout;
                    let frame = match frame {
                        None => break ConnEnd::Lost,
                        Some(Ok(f)) => f,
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "bad frame from the LB");
                            let header = reader.buffered().get(rpc_codec::LEN_PREFIX..).and_then(rpc_codec::Header::peek);
                            let _ = tx.send(protocol_error(header, &e.to_string()));
                            break ConnEnd::Lost;
                        }
                    };
                    let msg = match Message::parse_or_peek(frame) {
                        Ok(m) => m,
                        Err((e, header)) => {
                            tracing::warn!(error = %e, "bad message from the LB");
                            let _ = tx.send(protocol_error(header, &e.to_string()));
                            break ConnEnd::Lost;
                        }
                    };
                    match msg.kind() {
                        MessageType::Heartbeat => {
                            let _ = tx.send(msg.into_bytes());
                        }
                        MessageType::StopConfirm => {
                            tracing::info!(inflight = tracker.inflight(), "LB confirmed the stop");
                            confirmed = true;
                        }
                        MessageType::Call | MessageType::Oneway => {
                            self.dispatch(msg, &queue, pool, tracker, &tx);
                        }
                        other => {
                            tracing::warn!(kind = ?other, "unexpected message from the LB; ignored");
                        }
                    }
                }
            }
        };
        if matches!(end, ConnEnd::Lost) && stopping.is_some() {
            // The LB went away during our stop: nothing left to wait for.
            drop(tx);
            writer.abort();
            return ConnEnd::Stopped;
        }
        drop(tx);
        // Replies already produced are written before the socket closes.
        let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
        end
    }

    /// Runs one request once a pool slot is free.
    fn dispatch(
        &self,
        mut msg: Message,
        queue: &Arc<Semaphore>,
        pool: &Arc<Semaphore>,
        tracker: &Arc<Tracker>,
        tx: &tokio::sync::mpsc::UnboundedSender<bytes::Bytes>,
    ) {
        msg.strip_service();
        let Ok(queued) = queue.clone().try_acquire_owned() else {
            tracing::warn!("worker queue full; refusing a request");
            if msg.kind() == MessageType::Call {
                let e = application_exception(
                    msg.name(),
                    msg.seqid(),
                    ExceptionKind::InternalError,
                    "worker overloaded: too many queued requests",
                );
                let _ = tx.send(e.freeze());
            }
            return;
        };
        let guard = tracker.begin();
        let (h, pool, tx) = (self.handler.clone(), pool.clone(), tx.clone());
        tokio::spawn(async move {
            let _slot = pool.acquire_owned().await.expect("never closed");
            if let Some(reply) = run_request(&h, msg).await {
                let _ = tx.send(reply);
            }
            drop((queued, guard));
        });
    }
}

/// A running worker.
pub struct WorkerHandle {
    stop: watch::Sender<bool>,
    connected: watch::Receiver<bool>,
    task: JoinHandle<()>,
}

impl WorkerHandle {
    /// Whether the worker holds a connection to the LB now.
    pub fn is_connected(&self) -> bool {
        *self.connected.borrow()
    }

    /// Waits until connected, at most `timeout`; true if connected.
    pub async fn wait_connected(&mut self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.connected.wait_for(|c| *c))
            .await
            .map(|r| r.is_ok())
            .unwrap_or(false)
    }

    /// Graceful stop: send `STOP`, keep serving what the LB already sent,
    /// and close once the LB confirmed and nothing is in flight (bounded by
    /// the stop timeout).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        tracing::info!("worker stopped");
    }
}
