//! The L4 worker (SPEC §5): dials the LB's `back_address` and serves the
//! requests the LB sends over that one connection.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rpc_codec::{application_exception, ExceptionKind, FrameCodec, Message, MessageType};
use rpc_config::Config;
use rpc_transport::{Address, FrameReader, FrameWriter, Stream, WriteHalf};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};

use crate::conn::{protocol_error, start, Done};
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

    /// Serves one connection to the LB, owned by this one task: reads every
    /// waiting frame per wake-up, starts requests while a pool slot is free
    /// (queueing the rest in arrival order), and writes the replies of a
    /// batch together, racing writes against reads.
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
        let (r, w) = stream.into_split();
        let mut reader = FrameReader::new(r, FrameCodec::new(self.max_frame));
        let mut writer = FrameWriter::new(w);
        let mut queue: VecDeque<Message> = VecDeque::new();
        // One timer for the LB's silence: it is pushed back only when it
        // fires, to the last frame's time plus the timeout.
        let mut last_frame = Instant::now();
        let silence = sleep_until(last_frame + self.heartbeat_timeout);
        tokio::pin!(silence);
        // Set once STOP is sent: the deadline of the whole stop.
        let stop_deadline = sleep_until(Instant::now());
        tokio::pin!(stop_deadline);
        let mut stopping = false;
        let mut confirmed = false;
        let end = 'conn: loop {
            if confirmed && pool.running == 0 && queue.is_empty() && writer.is_empty() {
                tracing::info!("stop confirmed and idle; closing");
                break ConnEnd::Stopped;
            }
            tokio::select! {
                biased;
                Some(first) = done_rx.recv(), if pool.running > 0 => {
                    let mut next = Some(first);
                    while let Some((conn, reply)) = next {
                        pool.running -= 1;
                        if conn == pool.conn {
                            writer.extend(reply);
                        }
                        next = if pool.running > 0 { done_rx.try_recv().ok() } else { None };
                    }
                    while pool.running < pool.size {
                        let Some(msg) = queue.pop_front() else { break };
                        self.start_now(msg, tracker, pool, done_tx, &mut writer);
                    }
                }
                r = writer.write_some(), if !writer.is_empty() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "write to the LB failed");
                        break ConnEnd::Lost;
                    }
                }
                _ = stop.wait_for(|s| *s), if !stopping => {
                    tracing::info!("stopping: sending STOP to the LB");
                    writer.push(rpc_codec::stop().freeze());
                    stopping = true;
                    stop_deadline.as_mut().reset(Instant::now() + self.stop_timeout);
                }
                _ = &mut stop_deadline, if stopping => {
                    tracing::warn!(inflight = pool.running + queue.len(), "stop timeout reached");
                    break ConnEnd::Stopped;
                }
                _ = &mut silence => {
                    let due = last_frame + self.heartbeat_timeout;
                    if due <= Instant::now() {
                        tracing::warn!(timeout = ?self.heartbeat_timeout, "no heartbeat from the LB");
                        break ConnEnd::Lost;
                    }
                    silence.as_mut().reset(due);
                }
                frame = reader.next() => {
                    last_frame = Instant::now();
                    let Some(mut frame) = frame else { break ConnEnd::Lost };
                    loop {
                        let msg = match frame.map_err(|e| (e.to_string(), None)).and_then(|f| {
                            Message::parse_or_peek(f).map_err(|(e, h)| (e.to_string(), h))
                        }) {
                            Ok(m) => m,
                            Err((why, header)) => {
                                tracing::warn!(error = %why, "bad input from the LB");
                                let header = header.or_else(|| {
                                    reader
                                        .buffered()
                                        .get(rpc_codec::LEN_PREFIX..)
                                        .and_then(rpc_codec::Header::peek)
                                });
                                writer.push(protocol_error(header, &why));
                                break 'conn ConnEnd::Lost;
                            }
                        };
                        match msg.kind() {
                            MessageType::Heartbeat => writer.push(msg.into_bytes()),
                            MessageType::StopConfirm => {
                                tracing::info!(inflight = pool.running + queue.len(), "LB confirmed the stop");
                                confirmed = true;
                            }
                            MessageType::Call | MessageType::Oneway => {
                                self.dispatch(msg, &mut queue, tracker, pool, done_tx, &mut writer);
                            }
                            other => {
                                tracing::warn!(kind = ?other, "unexpected message from the LB; ignored");
                            }
                        }
                        match reader.next_buffered() {
                            Some(f) => frame = f,
                            None => break,
                        }
                    }
                }
            }
        };
        if matches!(end, ConnEnd::Lost) && stopping {
            // The LB went away during our stop: nothing left to wait for.
            return ConnEnd::Stopped;
        }
        // Replies already produced are written before the socket closes.
        let flushed = tokio::time::timeout(Duration::from_secs(5), writer.flush()).await;
        if let Ok(Ok(())) = flushed {
            let _ = tokio::io::AsyncWriteExt::shutdown(writer.get_mut()).await;
        }
        end
    }

    /// Starts a request now if a pool slot is free, else queues it; beyond
    /// the queue's bound a call is refused.
    fn dispatch(
        &self,
        mut msg: Message,
        queue: &mut VecDeque<Message>,
        tracker: &Arc<Tracker>,
        pool: &mut Pool,
        done: &mpsc::UnboundedSender<Done<u64>>,
        writer: &mut FrameWriter<WriteHalf>,
    ) {
        msg.strip_service();
        if pool.running < pool.size && queue.is_empty() {
            self.start_now(msg, tracker, pool, done, writer);
        } else if queue.len() < self.max_queued {
            queue.push_back(msg);
        } else {
            tracing::warn!("worker queue full; refusing a request");
            if msg.kind() == MessageType::Call {
                let e = application_exception(
                    msg.name(),
                    msg.seqid(),
                    ExceptionKind::InternalError,
                    "worker overloaded: too many queued requests",
                );
                writer.push(e.freeze());
            }
        }
    }

    /// Runs a request in a free pool slot: answered at once, or holding
    /// the slot until its task reports back.
    fn start_now(
        &self,
        msg: Message,
        tracker: &Arc<Tracker>,
        pool: &mut Pool,
        done: &mpsc::UnboundedSender<Done<u64>>,
        writer: &mut FrameWriter<WriteHalf>,
    ) {
        match start(&self.handler, msg, tracker, done, pool.conn) {
            Some(reply) => writer.extend(reply),
            None => pool.running += 1,
        }
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
