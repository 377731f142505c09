//! The L4 worker (SPEC §5): dials the LB's `back_address` and serves the
//! requests the LB sends over that one connection.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use std::task::{Context, Poll};

use anyhow::Context as _;
use rpc_codec::{application_exception, ExceptionKind, Message, MessageType};
use rpc_config::Config;
use rpc_engine::conn::{self, End};
use rpc_engine::{Cx, Flow, Hop, Lost, Options};
use rpc_transport::{Address, Stream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::conn::{start, Done};
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
    /// 2 s, 4 s (but a lost connection is redialled at once, at most once
    /// per first step: an upgraded LB's successor is already listening).
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
        let mut stop = crate::StopSignals::new()?;
        let handle = self.start().await;
        stop.recv().await;
        tracing::info!("signal received, stopping");
        handle.stop().await;
        Ok(())
    }

    async fn main_loop(self, mut stop: watch::Receiver<bool>, connected: watch::Sender<bool>) {
        let me = Arc::new(self);
        let tracker = Tracker::new();
        // Outcomes of the requests that went to tasks of their own, tagged
        // with the connection that read them: one that ended a connection
        // ago still frees its pool slot, but its reply has nowhere to go.
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done<u64>>();
        let mut pool = Pool {
            size: me.pool_size,
            running: 0,
            conn: 0,
        };
        let mut backoff = me.backoff_initial;
        let mut last_redial: Option<tokio::time::Instant> = None;
        while !*stop.borrow() {
            let dial = tokio::time::timeout(me.connect_timeout, Stream::connect(&me.back_address));
            let dialed = tokio::select! {
                r = dial => r,
                _ = stop.wait_for(|s| *s) => break,
            };
            // A lost connection is redialled at once: an LB handing over to
            // its successor is back before any backoff. At most once per
            // first backoff step, so an LB that accepts and closes is not
            // spun on.
            let mut redial_now = false;
            match dialed {
                Ok(Ok(stream)) => {
                    tracing::info!(lb = %me.back_address, "connected to LB");
                    backoff = me.backoff_initial;
                    let _ = connected.send(true);
                    pool.conn += 1;
                    let channel = (&done_tx, &mut done_rx);
                    let end = me
                        .serve_connection(stream, &tracker, &mut pool, channel, &mut stop)
                        .await;
                    let _ = connected.send(false);
                    if let ConnEnd::Stopped = end {
                        return;
                    }
                    tracing::warn!(lb = %me.back_address, "lost the LB; redialing");
                    let now = tokio::time::Instant::now();
                    redial_now = last_redial.is_none_or(|t| now - t >= me.backoff_initial);
                    if redial_now {
                        last_redial = Some(now);
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(lb = %me.back_address, error = %e, "cannot reach the LB")
                }
                Err(_) => tracing::warn!(lb = %me.back_address, "connecting to the LB timed out"),
            }
            if redial_now {
                continue;
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

    /// Serves one connection to the LB (a [`WorkerConn`] on the engine).
    async fn serve_connection(
        &self,
        stream: Stream,
        tracker: &Arc<Tracker>,
        pool: &mut Pool,
        (done_tx, done_rx): (
            &mpsc::UnboundedSender<Done<u64>>,
            &mut mpsc::UnboundedReceiver<Done<u64>>,
        ),
        stop: &mut watch::Receiver<bool>,
    ) -> ConnEnd {
        let mut hop = WorkerConn {
            w: self,
            tracker,
            pool,
            done_tx,
            done_rx,
            queue: VecDeque::new(),
            last_frame: Instant::now(),
            stop_deadline: None,
        };
        let stopping = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        let opts = Options {
            write_buffer_limit: usize::MAX,
            ..Options::new(self.max_frame)
        };
        let end = conn::run(&mut hop, stream, stopping, &opts).await;
        let stopping = hop.stop_deadline.is_some();
        match end {
            End::Closed if stopping => ConnEnd::Stopped,
            // The LB went away during our stop: nothing left to wait for.
            End::Lost(_) if stopping => ConnEnd::Stopped,
            // (The LB connection never hands its socket off.)
            End::Closed | End::HandedOff(_) => ConnEnd::Lost,
            End::Lost(cause) => {
                tracing::debug!(%cause, "connection to the LB ended");
                ConnEnd::Lost
            }
        }
    }
}

/// One connection to the LB as a hop of the engine: starts requests
/// while a pool slot is free (queueing the rest in arrival order), echoes
/// heartbeats, and runs the graceful stop (`STOP`, then `STOP_CONFIRM`
/// and an empty pool). Its timer is the LB's silence and the stop's
/// deadline.
struct WorkerConn<'a> {
    w: &'a Worker,
    tracker: &'a Arc<Tracker>,
    pool: &'a mut Pool,
    done_tx: &'a mpsc::UnboundedSender<Done<u64>>,
    done_rx: &'a mut mpsc::UnboundedReceiver<Done<u64>>,
    queue: VecDeque<Message>,
    last_frame: Instant,
    /// Set once STOP is sent: the deadline of the whole stop.
    stop_deadline: Option<Instant>,
}

impl WorkerConn<'_> {
    /// Starts a request now if a pool slot is free, else queues it; beyond
    /// the queue's bound a call is refused.
    fn dispatch(&mut self, mut msg: Message, cx: &mut Cx<'_>) {
        msg.strip_service();
        if self.pool.running < self.pool.size && self.queue.is_empty() {
            self.start_now(msg, cx);
        } else if self.queue.len() < self.w.max_queued {
            self.queue.push_back(msg);
        } else {
            tracing::warn!("worker queue full; refusing a request");
            if msg.kind() == MessageType::Call {
                let e = application_exception(
                    msg.name(),
                    msg.seqid(),
                    ExceptionKind::InternalError,
                    "worker overloaded: too many queued requests",
                );
                cx.send(e.freeze());
            }
        }
    }

    /// Runs a request in a free pool slot: answered at once, or holding
    /// the slot until its task reports back.
    fn start_now(&mut self, msg: Message, cx: &mut Cx<'_>) {
        match start(
            &self.w.handler,
            msg,
            self.tracker,
            self.done_tx,
            self.pool.conn,
        ) {
            Some(reply) => reply.into_iter().for_each(|r| cx.send(r)),
            None => self.pool.running += 1,
        }
    }
}

impl Hop for WorkerConn<'_> {
    type Event = Done<u64>;
    const NEEDS_PEER: bool = true;

    fn on_message(&mut self, msg: Message, cx: &mut Cx<'_>) -> Flow {
        self.last_frame = cx.now();
        match msg.kind() {
            MessageType::Heartbeat => cx.send(msg.into_bytes()),
            MessageType::StopConfirm if self.stop_deadline.is_some() => {
                tracing::info!(
                    inflight = self.pool.running + self.queue.len(),
                    "LB confirmed the stop"
                );
                // Nothing new comes; close once the pool is empty.
                return Flow::Close;
            }
            MessageType::Call | MessageType::Oneway => self.dispatch(msg, cx),
            other => tracing::warn!(kind = ?other, "unexpected message from the LB; ignored"),
        }
        Flow::Continue
    }

    fn poll_event(&mut self, c: &mut Context<'_>) -> Poll<Option<Done<u64>>> {
        self.done_rx.poll_recv(c)
    }

    fn try_event(&mut self) -> Option<Done<u64>> {
        self.done_rx.try_recv().ok()
    }

    fn wants_events(&self) -> bool {
        self.pool.running > 0
    }

    fn on_event(&mut self, (conn, reply): Done<u64>, cx: &mut Cx<'_>) -> Flow {
        self.pool.running -= 1;
        // A request read by an earlier connection: its reply has nowhere to go.
        if conn == self.pool.conn {
            reply.into_iter().for_each(|r| cx.send(r));
        }
        Flow::Continue
    }

    fn on_batch_end(&mut self, cx: &mut Cx<'_>) {
        while self.pool.running < self.pool.size {
            let Some(msg) = self.queue.pop_front() else {
                break;
            };
            self.start_now(msg, cx);
        }
    }

    fn deadline(&self) -> Option<Instant> {
        let silence = self.last_frame + self.w.heartbeat_timeout;
        Some(self.stop_deadline.map_or(silence, |d| d.min(silence)))
    }

    fn on_timer(&mut self, cx: &mut Cx<'_>) -> Flow {
        let now = cx.now();
        if self.stop_deadline.is_some_and(|d| d <= now) {
            tracing::warn!(
                inflight = self.pool.running + self.queue.len(),
                "stop timeout reached"
            );
            return Flow::Finish;
        }
        let silent = now.saturating_duration_since(self.last_frame);
        if silent >= self.w.heartbeat_timeout {
            tracing::warn!(timeout = ?self.w.heartbeat_timeout, "no heartbeat from the LB");
            return Flow::End(Lost::Silent(silent));
        }
        Flow::Continue
    }

    fn on_shutdown(&mut self, cx: &mut Cx<'_>) -> Flow {
        tracing::info!("stopping: sending STOP to the LB");
        cx.send(rpc_codec::stop().freeze());
        self.stop_deadline = Some(cx.now() + self.w.stop_timeout);
        Flow::Continue
    }

    fn owes(&self) -> bool {
        self.pool.running > 0 || !self.queue.is_empty()
    }
}

/// The worker's pool: requests running on tasks of their own, across
/// connections (a request outlives a lost connection).
struct Pool {
    size: usize,
    running: usize,
    /// Which connection is current (counts up from 1).
    conn: u64,
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
