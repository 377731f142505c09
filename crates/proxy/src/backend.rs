//! One persistent, pipelined connection to an endpoint (SPEC §4).
//!
//! A single task owns the socket, the seqid space (the rewrite to this
//! connection's seqids and back happens in its [`SeqTable`]) and the
//! requests in flight; clients hand it [`Job`]s through a bounded channel
//! and get an [`Outcome`] back on their connection's reply channel
//! ([`ReplyTo`]). The task also heartbeats the
//! endpoint, declares the connection dead when the echo stops, and
//! reconnects with capped backoff for as long as the endpoint is wanted.
//!
//! Liveness, for peers that stall with their socket open (a stopped
//! process, a silent link):
//! - a reconnected connection carries calls only once the endpoint has
//!   answered a heartbeat on it (`Connecting` until then), so a peer whose
//!   kernel still accepts connections gets no calls after each reconnect
//!   (the first connection to a newly listed endpoint carries calls at
//!   once, as the endpoint just registered);
//! - a heartbeat interval with a heartbeat unanswered and nothing else
//!   heard makes the connection `Suspect`: no new calls go to it, those
//!   in flight wait; anything heard makes it `Up` again;
//! - `heartbeat_timeout` after the last frame heard (to the wake-up, not
//!   the next tick) the connection is lost and its calls in flight fail.
//!
//! An endpoint that registered `"tls": true` is dialled over TLS with the
//! proxy's keys (`BackendSettings::tls`), the handshake inside the connect
//! timeout. A TLS connection the endpoint closed cleanly after at least a
//! second is reopened at once rather than after the backoff: that is how
//! an upgrading LB lets go of TLS connections, which it cannot hand over.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::task::{Context, Poll};

use rpc_codec::{heartbeat, stop_confirm, Message, MessageType};
use rpc_engine::conn::{self, End};
use rpc_engine::{Cx, Failure, Flow, Hop, Lost, Options, SeqTable};
use rpc_transport::tls::TlsClient;
use rpc_transport::{Address, Stream};
use tokio::sync::{mpsc, watch};
use tokio::time::{timeout, Instant};

use rpc_engine::balance::Load;
use rpc_engine::ewma::{nanos, PeakEwma};

/// What becomes of a request handed to a backend connection.
#[derive(Debug)]
pub enum Outcome {
    /// The endpoint answered (REPLY or EXCEPTION), seqid still the proxy's.
    Reply(Message),
    /// Never written to the socket: safe to send elsewhere.
    NotSent(Message),
    /// Written, then the connection failed.
    Failed(Failure),
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
    /// Connecting, or connected and waiting for the first heartbeat echo.
    Connecting = 0,
    Up = 1,
    Down = 2,
    Draining = 3,
    Closed = 4,
    /// Connected, but a heartbeat went unanswered: no new calls.
    Suspect = 5,
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
    /// The proxy's TLS keys (`tls_ca_file` and its certificate), for the
    /// endpoints that registered `"tls": true`.
    pub tls: Option<Arc<TlsClient>>,
}

/// The handle routes hold. Cheap to share; the task does the work.
pub struct Backend {
    pub service: String,
    pub address: Address,
    /// Dialled over TLS (the endpoint registered `"tls": true`).
    pub tls: bool,
    /// The address as failures name it.
    peer: Arc<str>,
    tx: mpsc::Sender<Job>,
    state: AtomicU8,
    /// Requests handed over and not yet answered: the balancer's load signal.
    outstanding: AtomicUsize,
    /// Reply latency estimate (peak EWMA): the balancer's other signal,
    /// also shown in the metrics and the dashboard.
    latency: PeakEwma,
    drain: watch::Sender<bool>,
    /// Drained by an operator (a drain mark in the registry): routes hold
    /// it out of the service's rotation. The connection itself is
    /// untouched: heartbeats go on, calls in flight complete.
    marked_drained: AtomicBool,
    /// Cuts a reconnect backoff short: the endpoint registered again (it
    /// restarted), so it is worth dialling now.
    redial: tokio::sync::Notify,
}

impl Backend {
    /// A connection to `address`, over TLS if `tls` (the proxy's keys are
    /// `settings.tls`, which must then be set).
    pub fn spawn(
        service: String,
        address: Address,
        tls: bool,
        settings: BackendSettings,
    ) -> Arc<Backend> {
        // The channel only buffers what the task has not picked up yet; the
        // real in-flight bound is `max_inflight`, enforced by the task.
        let (tx, rx) = mpsc::channel(settings.max_inflight.clamp(16, 1024));
        let (drain, drain_rx) = watch::channel(false);
        let backend = Arc::new(Backend {
            service,
            peer: address.to_string().into(),
            address,
            tls,
            tx,
            state: AtomicU8::new(State::Connecting as u8),
            outstanding: AtomicUsize::new(0),
            latency: PeakEwma::new(settings.latency_decay),
            drain,
            marked_drained: AtomicBool::new(false),
            redial: tokio::sync::Notify::new(),
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
            5 => State::Suspect,
            _ => State::Closed,
        }
    }

    fn set_state(&self, s: State) {
        self.state.store(s as u8, Ordering::Release);
    }

    pub fn is_up(&self) -> bool {
        self.state() == State::Up
    }

    /// The endpoint registered again: if the connection is waiting out a
    /// reconnect backoff, it dials at once (and its backoff starts over).
    pub fn redial_now(&self) {
        self.redial.notify_one();
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// The latency estimate now, in microseconds (reads the clock: for
    /// the metrics, not the request path).
    pub fn latency_us(&self) -> u64 {
        (self.latency.estimate(nanos(Instant::now())) / 1000.0) as u64
    }

    /// Hands a job over; gives it back if the connection cannot take it.
    pub fn try_send(&self, job: Job) -> Result<(), Job> {
        if !self.is_up() {
            return Err(job);
        }
        self.hold(job)
    }

    /// Queues the job whatever the connection's state: written once the
    /// connection takes calls, turned away (`NotSent`) if it is lost first.
    pub fn hold(&self, job: Job) -> Result<(), Job> {
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

    /// Whether an operator drained the endpoint (see [`Backend::set_marked_drained`]).
    pub fn marked_drained(&self) -> bool {
        self.marked_drained.load(Ordering::Relaxed)
    }

    /// Records the endpoint's drain mark; whether that changed it.
    pub fn set_marked_drained(&self, drained: bool) -> bool {
        self.marked_drained.swap(drained, Ordering::Relaxed) != drained
    }

    fn done(&self) {
        self.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What the balancer weighs: up or not, and latency estimate ×
/// (outstanding + 1), compared without a clock read.
impl Load for Backend {
    fn ready(&self) -> bool {
        self.is_up()
    }

    fn cheaper_than(&self, other: &Self) -> bool {
        self.latency
            .cheaper(self.outstanding(), &other.latency, other.outstanding())
    }
}

struct Pending {
    reply: ReplyTo,
    /// When the batch carrying the request was handed to the socket
    /// ([`nanos`]).
    sent: u64,
}

async fn run(
    b: Arc<Backend>,
    mut rx: mpsc::Receiver<Job>,
    mut drain: watch::Receiver<bool>,
    s: BackendSettings,
) {
    let mut backoff = Duration::from_secs(1);
    // Set once a connection failed or was lost: later ones are admitted
    // by a heartbeat echo.
    let mut probe = false;
    // Replies are read whatever is queued: an endpoint blocked writing
    // them would stop reading our requests (bounded by max_inflight).
    let opts = Options {
        write_buffer_limit: usize::MAX,
        ..Options::new(s.max_frame)
    };
    loop {
        if *drain.borrow() {
            break;
        }
        b.set_state(State::Connecting);
        let connect = async {
            let stream = Stream::connect(&b.address).await?;
            match (&s.tls, b.tls) {
                (Some(tls), true) => tls.handshake(&b.address, stream).await,
                _ => Ok(stream),
            }
        };
        let connected = tokio::select! {
            r = timeout(s.connect_timeout, connect) => r,
            _ = drain.changed() => break,
        };
        let mut at_once = false;
        match connected {
            Ok(Ok(stream)) => {
                tracing::info!(service = %b.service, endpoint = %b.address, tls = b.tls, "backend connected");
                let opened = Instant::now();
                let mut hop = BackendConn::new(&b, &mut rx, &s, probe);
                let mut stop = drain.clone();
                let drained = async move {
                    let _ = stop.wait_for(|d| *d).await;
                };
                let end = conn::run(&mut hop, stream, drained, &opts).await;
                // Asked to stop: dial again at once (the successor listens).
                let stopped = hop.peer_stop.is_some();
                let lost = match end {
                    // (A backend never hands its socket off.)
                    End::Closed | End::HandedOff(_) | End::Lost(Lost::Removed) => None,
                    End::Lost(cause) => Some(cause),
                };
                hop.fail_all(lost.clone().unwrap_or(Lost::Removed));
                if hop.answered_once {
                    backoff = Duration::from_secs(1);
                }
                if lost.is_some() {
                    b.set_state(State::Down);
                    probe = true;
                }
                if stopped && lost.is_none() {
                    // What is queued waits for the new connection.
                    continue;
                }
                reject_queued(&b, &mut rx);
                // A TLS connection closed cleanly after a while: an LB of an
                // earlier release upgrading (it closes without STOP).
                at_once = stopped
                    || (b.tls
                        && lost == Some(Lost::Closed)
                        && opened.elapsed() >= Duration::from_secs(1));
                match lost {
                    None => break,
                    Some(cause) => {
                        tracing::warn!(service = %b.service, endpoint = %b.address, %cause, "backend connection lost")
                    }
                }
            }
            Ok(Err(e)) => {
                b.set_state(State::Down);
                probe = true;
                tracing::warn!(service = %b.service, endpoint = %b.address, error = %e, "backend connect failed")
            }
            Err(_) => {
                b.set_state(State::Down);
                probe = true;
                tracing::warn!(service = %b.service, endpoint = %b.address, "backend connect timed out")
            }
        }
        if at_once {
            continue;
        }
        // Wait out the backoff, turning away anything that slipped in.
        let until = Instant::now() + backoff;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => break,
                _ = b.redial.notified() => {
                    backoff = Duration::from_millis(500);
                    break;
                }
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

/// Where the connection stands with its endpoint.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Liveness {
    /// Nothing heard yet: no calls until the first echo.
    Probing,
    Up,
    /// A heartbeat interval without an answer: no new calls.
    Suspect,
}

/// One connection to the endpoint, as a hop of the engine: jobs from
/// client connections are its events; replies, its messages; heartbeats
/// and the drain deadline, its timer.
struct BackendConn<'a> {
    b: &'a Backend,
    rx: &'a mut mpsc::Receiver<Job>,
    s: &'a BackendSettings,
    pending: SeqTable<Pending>,
    heard: Heard,
    /// When the last frame came (the wake-up's clock).
    last_heard: Instant,
    liveness: Liveness,
    /// A heartbeat went out at the last tick.
    pinged: bool,
    /// The endpoint answered on this connection (so the reconnect backoff
    /// starts over when it is lost).
    answered_once: bool,
    next_tick: Instant,
    /// Requests were waiting at the last tick (and so, if no reply came
    /// since, have waited at least a whole interval).
    waiting_at_tick: bool,
    /// Set once the endpoint left the registry: when in-flight requests fail.
    drain_deadline: Option<Instant>,
    /// Set when the endpoint sent `STOP` (an LB handing over to its
    /// successor a TLS connection it cannot pass on): until when those in
    /// flight may take (the drain timeout). No new requests and no
    /// heartbeats here meanwhile (it reads nothing more, so silence means
    /// nothing); once they are answered the connection closes and is
    /// dialled again.
    peer_stop: Option<Instant>,
}

impl<'a> BackendConn<'a> {
    /// `probe`: calls wait for the endpoint's first heartbeat echo.
    fn new(
        b: &'a Backend,
        rx: &'a mut mpsc::Receiver<Job>,
        s: &'a BackendSettings,
        probe: bool,
    ) -> Self {
        let now = Instant::now();
        if !probe {
            b.set_state(State::Up);
        }
        BackendConn {
            b,
            rx,
            s,
            pending: SeqTable::new(),
            heard: Heard::default(),
            last_heard: now,
            liveness: if probe {
                Liveness::Probing
            } else {
                Liveness::Up
            },
            pinged: false,
            answered_once: false,
            // A probe goes at once: it admits the connection.
            next_tick: if probe {
                now
            } else {
                now + s.heartbeat_interval
            },
            waiting_at_tick: false,
            drain_deadline: None,
            peer_stop: None,
        }
    }

    fn fail_all(&mut self, cause: Lost) {
        for p in self.pending.drain() {
            self.b.done();
            p.reply.send(Outcome::Failed(Failure::Lost {
                peer: self.b.peer.clone(),
                cause: cause.clone(),
            }));
        }
    }

    /// Something came from the endpoint at `now`.
    fn heard(&mut self, now: Instant) {
        self.heard.anything = true;
        self.last_heard = now;
        if self.liveness != Liveness::Up {
            if self.liveness == Liveness::Suspect {
                tracing::info!(service = %self.b.service, endpoint = %self.b.address, "backend answers again");
            }
            self.liveness = Liveness::Up;
            self.answered_once = true;
            // Unless the endpoint left the registry meanwhile.
            if self.drain_deadline.is_none() {
                self.b.set_state(State::Up);
            }
        }
    }

    /// The heartbeat tick: anything heard since the last tick counts.
    fn tick(&mut self, now: Instant, cx: &mut Cx<'_>) -> Flow {
        self.next_tick = now + self.s.heartbeat_interval;
        if self.peer_stop.is_some() {
            // The endpoint reads nothing after our STOP_CONFIRM: a heartbeat
            // would go unanswered, and unread bytes turn its close into a
            // reset that could beat its last replies.
            return Flow::Continue;
        }
        let since_tick = std::mem::take(&mut self.heard);
        let pinged = std::mem::replace(&mut self.pinged, true);
        if pinged && !since_tick.anything && self.liveness == Liveness::Up {
            // The heartbeat sent a tick ago is unanswered, and nothing
            // else came: new calls go elsewhere until something does.
            tracing::warn!(service = %self.b.service, endpoint = %self.b.address, "backend missed a heartbeat: no new calls until it answers");
            self.liveness = Liveness::Suspect;
            if self.drain_deadline.is_none() {
                self.b.set_state(State::Suspect);
            }
        }
        if !since_tick.replies && self.waiting_at_tick && !self.pending.is_empty() {
            // No reply for a whole interval while requests wait: the
            // endpoint is at least that slow, before any reply says so.
            let interval = self.s.heartbeat_interval.as_nanos() as u64;
            self.b.latency.observe(interval, nanos(now));
        }
        self.waiting_at_tick = !self.pending.is_empty();
        cx.send(heartbeat(0).freeze());
        Flow::Continue
    }

    /// When silence makes the connection lost.
    fn silent_until(&self) -> Instant {
        self.last_heard + self.s.heartbeat_timeout
    }
}

impl Hop for BackendConn<'_> {
    type Event = Job;
    const NEEDS_PEER: bool = true;
    const ANSWERS_PEER: bool = false;

    fn poll_event(&mut self, c: &mut Context<'_>) -> Poll<Option<Job>> {
        self.rx.poll_recv(c)
    }

    fn try_event(&mut self) -> Option<Job> {
        self.rx.try_recv().ok()
    }

    fn wants_events(&self) -> bool {
        self.drain_deadline.is_none()
            && self.peer_stop.is_none()
            && self.liveness != Liveness::Probing
            && self.pending.len() < self.s.max_inflight
    }

    /// A job: this connection's seqid, then into the write batch.
    fn on_event(&mut self, Job { mut msg, reply }: Job, cx: &mut Cx<'_>) -> Flow {
        match reply {
            Some(reply) => {
                let sent = nanos(cx.now());
                self.pending.assign(&mut msg, Pending { reply, sent });
            }
            None => self.b.done(), // oneway: done once written
        }
        cx.send(msg.into_bytes());
        Flow::Continue
    }

    fn on_message(&mut self, mut msg: Message, cx: &mut Cx<'_>) -> Flow {
        self.heard(cx.now());
        match msg.kind() {
            MessageType::Heartbeat => {}
            MessageType::Reply | MessageType::Exception => {
                self.heard.replies = true;
                match self.pending.restore(&mut msg) {
                    Some(p) => {
                        self.b.done();
                        let now = nanos(cx.now());
                        self.b.latency.observe(now.saturating_sub(p.sent), now);
                        // The client may have given up (deadline): dropping is fine.
                        p.reply.send(Outcome::Reply(msg));
                        if (self.drain_deadline.is_some() || self.peer_stop.is_some())
                            && self.pending.is_empty()
                        {
                            return Flow::Finish;
                        }
                    }
                    None => {
                        tracing::debug!(endpoint = %self.b.address, seqid = msg.seqid(), "reply to unknown seqid dropped")
                    }
                }
            }
            MessageType::Stop => {
                // Confirmed after every request written so far: the
                // endpoint reads nothing more once it has this.
                cx.send(stop_confirm().freeze());
                if self.peer_stop.is_none() {
                    tracing::info!(service = %self.b.service, endpoint = %self.b.address, "backend asked to stop: reconnecting once its calls are answered");
                    self.peer_stop = Some(cx.now() + self.s.drain_timeout);
                    if self.drain_deadline.is_none() {
                        self.b.set_state(State::Connecting);
                    }
                }
                if self.pending.is_empty() {
                    return Flow::Finish;
                }
            }
            other => {
                tracing::debug!(endpoint = %self.b.address, ?other, "unexpected message type from endpoint ignored")
            }
        }
        Flow::Continue
    }

    fn deadline(&self) -> Option<Instant> {
        if let Some(stop) = self.peer_stop {
            return Some(self.drain_deadline.map_or(stop, |d| d.min(stop)));
        }
        let next = self.next_tick.min(self.silent_until());
        Some(match self.drain_deadline {
            Some(d) => d.min(next),
            None => next,
        })
    }

    fn on_timer(&mut self, cx: &mut Cx<'_>) -> Flow {
        let now = cx.now();
        if self.drain_deadline.is_some_and(|d| d <= now) {
            return Flow::End(Lost::Removed);
        }
        match self.peer_stop {
            Some(stop) if stop <= now => return Flow::End(Lost::StopTimedOut),
            Some(_) => return Flow::Continue,
            None => {}
        }
        if self.silent_until() <= now {
            return Flow::End(Lost::Silent(now - self.last_heard));
        }
        if self.next_tick <= now {
            return self.tick(now, cx);
        }
        Flow::Continue
    }

    /// The endpoint left the registry: no new requests; those in flight
    /// get until the drain timeout.
    fn on_shutdown(&mut self, cx: &mut Cx<'_>) -> Flow {
        self.drain_deadline = Some(cx.now() + self.s.drain_timeout);
        reject_queued(self.b, self.rx);
        if self.pending.is_empty() {
            Flow::Finish
        } else {
            Flow::Continue
        }
    }

    fn on_events_closed(&mut self, _cx: &mut Cx<'_>) -> Flow {
        Flow::Finish
    }
}
