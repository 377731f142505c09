//! One persistent, pipelined connection to an endpoint (SPEC §4).
//!
//! A single task owns the socket, the seqid space and the table of
//! requests in flight; clients hand it [`Job`]s through a bounded channel
//! and get an [`Outcome`] back on their connection's reply channel
//! ([`ReplyTo`]). The task also heartbeats the
//! endpoint, declares the connection dead when the echo stops, and
//! reconnects with capped backoff for as long as the endpoint is wanted.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use rpc_codec::{heartbeat, FrameCodec, Message, MessageType};
use rpc_transport::{Address, FrameReader, FrameWriter, Stream};
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep, timeout, Instant};

use crate::ewma::{nanos, PeakEwma};

/// What becomes of a request handed to a backend connection.
#[derive(Debug)]
pub enum Outcome {
    /// The endpoint answered (REPLY or EXCEPTION), seqid still the proxy's.
    Reply(Message),
    /// Never written to the socket: safe to send elsewhere.
    NotSent(Message),
    /// Written, then the connection failed; the cause is for the client.
    Failed(String),
}

pub struct Job {
    pub msg: Message,
    /// `None` for oneway calls.
    pub reply: Option<ReplyTo>,
}

/// Where the outcome of one request goes: the reply channel of the client
/// connection it came from, tagged with the request's slot there. One
/// channel per client connection (instead of a oneshot per request) means
/// no allocation per request and one wake-up per batch of replies.
pub struct ReplyTo {
    pub tx: mpsc::UnboundedSender<(u64, Outcome)>,
    pub slot: u64,
}

impl ReplyTo {
    /// Delivers the outcome; a client connection that is gone drops it.
    pub fn send(self, outcome: Outcome) {
        let _ = self.tx.send((self.slot, outcome));
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    Connecting = 0,
    Up = 1,
    Down = 2,
    Draining = 3,
    Closed = 4,
}

/// Settings a backend connection needs, copied out of the config.
#[derive(Debug, Clone)]
pub struct BackendSettings {
    pub max_frame: usize,
    pub max_inflight: usize,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    pub drain_timeout: Duration,
    pub connect_timeout: Duration,
    /// Time constant of the latency estimate (`balance_decay_ms`).
    pub latency_decay: Duration,
}

/// The handle routes hold. Cheap to share; the task does the work.
pub struct Backend {
    pub service: String,
    pub address: Address,
    tx: mpsc::Sender<Job>,
    state: AtomicU8,
    /// Requests handed over and not yet answered: the balancer's load signal.
    outstanding: AtomicUsize,
    /// Reply latency estimate (peak EWMA): the balancer's other signal,
    /// also shown in the metrics and the dashboard.
    latency: PeakEwma,
    drain: watch::Sender<bool>,
}

impl Backend {
    pub fn spawn(service: String, address: Address, settings: BackendSettings) -> Arc<Backend> {
        // The channel only buffers what the task has not picked up yet; the
        // real in-flight bound is `max_inflight`, enforced by the task.
        let (tx, rx) = mpsc::channel(settings.max_inflight.clamp(16, 1024));
        let (drain, drain_rx) = watch::channel(false);
        let backend = Arc::new(Backend {
            service,
            address,
            tx,
            state: AtomicU8::new(State::Connecting as u8),
            outstanding: AtomicUsize::new(0),
            latency: PeakEwma::new(settings.latency_decay),
            drain,
        });
        tokio::spawn(run(backend.clone(), rx, drain_rx, settings));
        backend
    }

    pub fn state(&self) -> State {
        match self.state.load(Ordering::Acquire) {
            0 => State::Connecting,
            1 => State::Up,
            2 => State::Down,
            3 => State::Draining,
            _ => State::Closed,
        }
    }

    fn set_state(&self, s: State) {
        self.state.store(s as u8, Ordering::Release);
    }

    pub fn is_up(&self) -> bool {
        self.state() == State::Up
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// The latency estimate now, in microseconds (reads the clock: for
    /// the metrics, not the request path).
    pub fn latency_us(&self) -> u64 {
        (self.latency.estimate(nanos(Instant::now())) / 1000.0) as u64
    }

    /// Whether this backend is cheaper than `other` right now: latency
    /// estimate × (outstanding + 1), compared without a clock read.
    pub fn cheaper_than(&self, other: &Backend) -> bool {
        self.latency
            .cheaper(self.outstanding(), &other.latency, other.outstanding())
    }

    /// Hands a job over; gives it back if the connection cannot take it.
    pub fn try_send(&self, job: Job) -> Result<(), Job> {
        if !self.is_up() {
            return Err(job);
        }
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        self.tx.try_send(job).map_err(|e| {
            self.outstanding.fetch_sub(1, Ordering::Relaxed);
            match e {
                mpsc::error::TrySendError::Full(j) | mpsc::error::TrySendError::Closed(j) => j,
            }
        })
    }

    /// Stops new requests at once; in-flight ones may finish within the
    /// drain timeout, then the connection closes for good.
    pub fn drain(&self) {
        if self.state() != State::Closed {
            self.set_state(State::Draining);
        }
        let _ = self.drain.send(true);
    }

    fn done(&self) {
        self.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Pending {
    reply: ReplyTo,
    /// When the batch carrying the request was handed to the socket
    /// ([`nanos`]).
    sent: u64,
}

type PendingMap = std::collections::HashMap<i32, Pending, crate::fasthash::SeqIdHash>;

async fn run(
    b: Arc<Backend>,
    mut rx: mpsc::Receiver<Job>,
    mut drain: watch::Receiver<bool>,
    s: BackendSettings,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        if *drain.borrow() {
            break;
        }
        b.set_state(State::Connecting);
        let connected = tokio::select! {
            r = timeout(s.connect_timeout, Stream::connect(&b.address)) => r,
            _ = drain.changed() => break,
        };
        match connected {
            Ok(Ok(stream)) => {
                tracing::info!(service = %b.service, endpoint = %b.address, "backend connected");
                backoff = Duration::from_secs(1);
                b.set_state(State::Up);
                let ended = serve(&b, stream, &mut rx, &mut drain, &s).await;
                if !matches!(ended, End::Drained) {
                    b.set_state(State::Down);
                }
                reject_queued(&b, &mut rx);
                match ended {
                    End::Drained => break,
                    End::Lost(cause) => {
                        tracing::warn!(service = %b.service, endpoint = %b.address, %cause, "backend connection lost")
                    }
                }
            }
            Ok(Err(e)) => {
                b.set_state(State::Down);
                tracing::warn!(service = %b.service, endpoint = %b.address, error = %e, "backend connect failed")
            }
            Err(_) => {
                b.set_state(State::Down);
                tracing::warn!(service = %b.service, endpoint = %b.address, "backend connect timed out")
            }
        }
        // Wait out the backoff, turning away anything that slipped in.
        let until = Instant::now() + backoff;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => break,
                _ = drain.changed() => break,
                job = rx.recv() => match job {
                    Some(job) => bounce(&b, job),
                    None => break,
                },
            }
        }
        backoff = (backoff * 2).min(Duration::from_secs(4));
    }
    b.set_state(State::Closed);
    rx.close();
    reject_queued(&b, &mut rx);
}

enum End {
    Drained,
    Lost(String),
}

fn bounce(b: &Backend, job: Job) {
    b.done();
    if let Some(reply) = job.reply {
        reply.send(Outcome::NotSent(job.msg));
    }
}

fn reject_queued(b: &Backend, rx: &mut mpsc::Receiver<Job>) {
    while let Ok(job) = rx.try_recv() {
        bounce(b, job);
    }
}

/// What came from the endpoint since the last heartbeat tick.
#[derive(Default)]
struct Heard {
    anything: bool,
    replies: bool,
}

/// One frame from the endpoint; `Err` when the connection must go.
fn on_reply(
    b: &Backend,
    frame: Option<Result<bytes::BytesMut, rpc_codec::FrameError>>,
    pending: &mut PendingMap,
    heard: &mut Heard,
    now: u64,
) -> Result<(), String> {
    let frame = match frame {
        Some(Ok(f)) => f,
        Some(Err(e)) => return Err(format!("bad frame from {}: {e}", b.address)),
        None => return Err(format!("{} closed the connection", b.address)),
    };
    let msg = Message::parse(frame).map_err(|e| format!("bad message from {}: {e}", b.address))?;
    match msg.kind() {
        MessageType::Heartbeat => heard.anything = true,
        MessageType::Reply | MessageType::Exception => {
            heard.anything = true;
            heard.replies = true;
            match pending.remove(&msg.seqid()) {
                Some(p) => {
                    b.done();
                    b.latency.observe(now.saturating_sub(p.sent), now);
                    // The client may have given up (deadline): dropping is fine.
                    p.reply.send(Outcome::Reply(msg));
                }
                None => {
                    tracing::debug!(endpoint = %b.address, seqid = msg.seqid(), "reply to unknown seqid dropped")
                }
            }
        }
        other => {
            tracing::debug!(endpoint = %b.address, ?other, "unexpected message type from endpoint ignored")
        }
    }
    Ok(())
}

fn fail_all(b: &Backend, pending: &mut PendingMap, cause: &str) {
    for (_, p) in pending.drain() {
        b.done();
        p.reply.send(Outcome::Failed(cause.to_string()));
    }
}

async fn serve(
    b: &Backend,
    stream: Stream,
    rx: &mut mpsc::Receiver<Job>,
    drain: &mut watch::Receiver<bool>,
    s: &BackendSettings,
) -> End {
    let (r, w) = stream.into_split();
    let mut reader = FrameReader::new(r, FrameCodec::new(s.max_frame));
    let mut writer = FrameWriter::new(w);
    let mut pending = PendingMap::default();
    let mut next_seqid: i32 = 0;
    let mut last_echo = Instant::now();
    let mut heard = Heard::default();
    // Requests were waiting at the last tick (and so, if no reply came
    // since, have waited at least a whole interval).
    let mut waiting_at_tick = false;
    let mut ticker = tokio::time::interval(s.heartbeat_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut draining = *drain.borrow();
    let mut drain_deadline = Instant::now() + s.drain_timeout;

    loop {
        if draining && pending.is_empty() {
            return End::Drained;
        }
        tokio::select! {
            job = rx.recv(), if !draining && pending.len() < s.max_inflight => {
                let Some(job) = job else { return End::Drained };
                let mut job = Some(job);
                let sent = nanos(Instant::now());
                // Take everything already queued: one write for the batch.
                while let Some(Job { mut msg, reply }) = job.take() {
                    match reply {
                        Some(reply) => {
                            loop {
                                next_seqid = next_seqid.wrapping_add(1);
                                if !pending.contains_key(&next_seqid) {
                                    break;
                                }
                            }
                            msg.set_seqid(next_seqid);
                            pending.insert(next_seqid, Pending { reply, sent });
                        }
                        None => b.done(), // oneway: done once written
                    }
                    writer.push(msg.into_bytes());
                    if pending.len() < s.max_inflight {
                        job = rx.try_recv().ok();
                    }
                }
            }
            // Writing races reading: replies keep being read while the
            // endpoint is slow to take requests.
            written = writer.write_some(), if !writer.is_empty() => {
                if let Err(e) = written {
                    let cause = format!("write to {} failed: {e}", b.address);
                    fail_all(b, &mut pending, &cause);
                    return End::Lost(cause);
                }
            }
            frame = reader.next() => {
                // Every reply already here in one go, with one clock read.
                let now = nanos(Instant::now());
                let mut frame = Some(frame);
                while let Some(f) = frame.take() {
                    if let Err(cause) = on_reply(b, f, &mut pending, &mut heard, now) {
                        fail_all(b, &mut pending, &cause);
                        return End::Lost(cause);
                    }
                    frame = reader.next().now_or_never();
                }
            }
            tick = ticker.tick() => {
                // Liveness is sampled once per tick (not a clock read per
                // reply): anything heard since the last tick counts.
                let since_tick = std::mem::take(&mut heard);
                if !since_tick.replies && waiting_at_tick && !pending.is_empty() {
                    // No reply for a whole interval while requests wait: the
                    // endpoint is at least that slow, before any reply says so.
                    let interval = s.heartbeat_interval.as_nanos() as u64;
                    b.latency.observe(interval, nanos(tick));
                }
                waiting_at_tick = !pending.is_empty();
                if since_tick.anything {
                    last_echo = Instant::now();
                }
                if last_echo.elapsed() > s.heartbeat_timeout {
                    let cause = format!("no heartbeat echo from {} for {:?}", b.address, last_echo.elapsed());
                    fail_all(b, &mut pending, &cause);
                    return End::Lost(cause);
                }
                writer.push(heartbeat(0).freeze());
            }
            _ = drain.changed(), if !draining => {
                draining = true;
                drain_deadline = Instant::now() + s.drain_timeout;
                reject_queued(b, rx);
            }
            _ = sleep(drain_deadline.saturating_duration_since(Instant::now())), if draining => {
                fail_all(b, &mut pending, &format!("endpoint {} left the registry", b.address));
                return End::Drained;
            }
        }
    }
}
