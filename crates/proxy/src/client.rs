//! One client (L1) connection: read requests, route each, and write the
//! replies back in the order the requests arrived (SPEC §3).
//!
//! The task owns a queue of *slots*, one per request in arrival order.
//! Requests are dispatched to backends synchronously as they are read;
//! outcomes come back on this connection's single reply channel tagged with
//! their slot, and finished slots at the head of the queue are written out.
//! Deadlines need one timer per connection, not one per request: every
//! request gets the same `rpc_timeout`, so the head of the queue always
//! holds the earliest deadline. At `max_inflight` unanswered requests the
//! task stops reading and TCP pushes back on the client.

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rpc_codec::{
    application_exception, heartbeat_reply, ExceptionKind, Header, Message, MessageType, NameBuf,
};
use rpc_config::otel::Tracing;
use rpc_engine::conn::{self, End};
use rpc_engine::drain;
use rpc_engine::lost::protocol_error;
use rpc_engine::{Cx, Failure, Flow, Hop, Options};
use rpc_transport::Stream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::backend::{Job, Outcome, ReplyTo};
use crate::forward::{self, Dropped, Refused, MAX_REROUTES};
use crate::metrics::{CallEnd, CallTally, ErrorKind, Metrics};
use crate::routes::Routes;
use crate::trace::{self, Outcome as SpanOutcome, Traced};

pub struct ClientSettings {
    pub max_frame: usize,
    pub max_inflight: usize,
    pub rpc_timeout: Duration,
    pub frame_timeout: Duration,
    pub metrics: Arc<Metrics>,
    /// Set when an upgrade starts: stopping connections then hand their
    /// socket (between two requests) to the successor through it instead
    /// of closing.
    pub handoff: OnceLock<mpsc::UnboundedSender<(Stream, BytesMut)>>,
    /// Spans per call (`otlp_endpoint`); `None`: no tracing, one branch
    /// per call.
    pub tracing: Option<Arc<Tracing>>,
}

/// Pause before re-trying a service whose connections are all opening.
const CONNECT_WAIT: Duration = Duration::from_millis(5);

/// Serves one client connection; `read` holds the bytes already read from
/// it past its last request when the process we upgrade handed it over.
pub async fn serve(
    stream: Stream,
    read: BytesMut,
    routes: watch::Receiver<Arc<Routes>>,
    settings: Arc<ClientSettings>,
    mut shutdown: drain::Watch,
) {
    let opts = Options::new(settings.max_frame).frame_timeout(settings.frame_timeout);
    let mut hop = ClientConn {
        q: Slots::new(
            routes,
            settings.metrics.clone(),
            settings.rpc_timeout,
            settings.tracing.clone(),
        ),
        settings,
        retry_at: None,
    };
    // Borrowed, not moved: the watch must live until the connection ends,
    // since the server's drain waits for it.
    let stop = shutdown.signaled();
    if let End::HandedOff(handed) = conn::run_with(&mut hop, stream, read, stop, &opts).await {
        if let Some(successor) = hop.settings.handoff.get() {
            let _ = successor.send(*handed);
        }
    }
}

/// One client connection as a hop of the engine: requests are its
/// messages, backends' outcomes its events; its timer serves the
/// earliest deadline (the head slot's) and the retry of requests waiting
/// for a connection to open.
struct ClientConn {
    q: Slots,
    settings: Arc<ClientSettings>,
    retry_at: Option<Instant>,
}

impl ClientConn {
    /// Writes the finished head of the queue and arms the retry timer.
    fn settle(&mut self, cx: &mut Cx<'_>) {
        self.q.pop_done(cx);
        self.q.calls.flush();
        if self.q.connecting > 0 && self.retry_at.is_none() {
            self.retry_at = Some(cx.now() + CONNECT_WAIT);
        }
    }
}

impl Hop for ClientConn {
    type Event = (u64, Outcome);

    fn on_message(&mut self, msg: Message, cx: &mut Cx<'_>) -> Flow {
        // One clock read per batch: every request gets the same timeout.
        let deadline = cx.now() + self.settings.rpc_timeout;
        self.q.request(msg, deadline);
        Flow::Continue
    }

    fn wants_frames(&self, _queued: usize) -> bool {
        self.q.slots.len() < self.settings.max_inflight
    }

    fn poll_event(&mut self, c: &mut Context<'_>) -> Poll<Option<Self::Event>> {
        match &mut self.q.replies {
            Some(rx) => rx.poll_recv(c),
            None => Poll::Pending,
        }
    }

    fn try_event(&mut self) -> Option<Self::Event> {
        self.q.replies.as_mut()?.try_recv().ok()
    }

    fn wants_events(&self) -> bool {
        self.q.replies.is_some()
    }

    fn on_event(&mut self, (slot, outcome): Self::Event, cx: &mut Cx<'_>) -> Flow {
        self.q.complete(slot, outcome, cx.now());
        Flow::Continue
    }

    fn deadline(&self) -> Option<Instant> {
        let head = self.q.slots.front().map(|s| s.deadline);
        match (head, self.retry_at) {
            (Some(h), Some(r)) => Some(h.min(r)),
            (h, r) => h.or(r),
        }
    }

    fn on_timer(&mut self, cx: &mut Cx<'_>) -> Flow {
        let now = cx.now();
        self.q.expire(now);
        if self.retry_at.is_some_and(|r| r <= now) {
            self.retry_at = None;
            self.q.retry_connecting(now);
        }
        self.settle(cx);
        Flow::Continue
    }

    fn on_batch_end(&mut self, cx: &mut Cx<'_>) {
        self.settle(cx);
    }

    fn owes(&self) -> bool {
        !self.q.slots.is_empty()
    }

    fn on_shutdown(&mut self, _cx: &mut Cx<'_>) -> Flow {
        if self.settings.handoff.get().is_some() {
            Flow::HandOff
        } else {
            Flow::Close
        }
    }

    fn on_bad_input(&mut self, error: &str, header: Option<Header>, cx: &mut Cx<'_>) -> Flow {
        tracing::warn!(peer = %cx.peer, error, "bad input from client, closing");
        self.settings.metrics.error(ErrorKind::Protocol);
        Flow::CloseWith(protocol_error(error, header))
    }
}

/// One request, from arrival until its reply is written.
struct Slot {
    client_seqid: i32,
    deadline: Instant,
    reroutes: u8,
    /// The name as the client sent it (`service:method`), for routing
    /// again and for error replies.
    name: NameBuf,
    state: State,
    /// The call's span, when it is traced and sampled.
    trace: Option<Box<Traced>>,
}

enum State {
    /// With a backend; the outcome will arrive on the reply channel.
    Waiting,
    /// Every connection of the service is still being opened.
    Connecting(Message),
    /// The frame to write (`None`: nothing to answer).
    Done(Option<Bytes>),
}

impl Slot {
    fn service(&self) -> &str {
        let n = self.name.as_bytes();
        match n.iter().position(|&b| b == b':') {
            Some(p) => std::str::from_utf8(&n[..p]).unwrap_or(""),
            None => "",
        }
    }

    fn method(&self) -> &[u8] {
        let n = self.name.as_bytes();
        match n.iter().position(|&b| b == b':') {
            Some(p) => &n[p + 1..],
            None => n,
        }
    }
}

/// The slots of one connection, oldest first. Slot `i` of the queue has
/// the id `base + i`; ids travel with the job to the backend and back.
struct Slots {
    slots: VecDeque<Slot>,
    base: u64,
    /// How many slots are in [`State::Connecting`].
    connecting: usize,
    routes_rx: watch::Receiver<Arc<Routes>>,
    routes: Arc<Routes>,
    /// The reply channel, made on the first routed request: a channel
    /// allocates its first block of slots up front (about 2 KiB), which
    /// a connection that never sends a call should not pay for.
    reply_tx: Option<mpsc::UnboundedSender<(u64, Outcome)>>,
    replies: Option<mpsc::UnboundedReceiver<(u64, Outcome)>>,
    metrics: Arc<Metrics>,
    /// How the calls ended, per service and method.
    calls: CallTally,
    tracing: Option<Arc<Tracing>>,
}

impl Slots {
    fn new(
        mut routes_rx: watch::Receiver<Arc<Routes>>,
        metrics: Arc<Metrics>,
        rpc_timeout: Duration,
        tracing: Option<Arc<Tracing>>,
    ) -> Slots {
        let routes = routes_rx.borrow_and_update().clone();
        Slots {
            slots: VecDeque::new(),
            base: 0,
            connecting: 0,
            routes_rx,
            routes,
            reply_tx: None,
            replies: None,
            calls: CallTally::new(metrics.clone(), rpc_timeout),
            metrics,
            tracing,
        }
    }

    fn reply_tx(&mut self) -> mpsc::UnboundedSender<(u64, Outcome)> {
        if self.reply_tx.is_none() {
            let (tx, rx) = mpsc::unbounded_channel();
            self.reply_tx = Some(tx);
            self.replies = Some(rx);
        }
        self.reply_tx.clone().expect("just made")
    }

    /// The latest routing table (an atomic version check when unchanged).
    fn refresh_routes(&mut self) {
        if self.routes_rx.has_changed().unwrap_or(false) {
            self.routes = self.routes_rx.borrow_and_update().clone();
        }
    }

    fn push(&mut self, slot: Slot) -> usize {
        self.slots.push_back(slot);
        self.slots.len() - 1
    }

    /// A new message from the client.
    fn request(&mut self, mut msg: Message, deadline: Instant) {
        let seqid = msg.seqid();
        match msg.kind() {
            MessageType::Call => {
                let idx = self.push(Slot {
                    client_seqid: seqid,
                    deadline,
                    reroutes: 0,
                    name: NameBuf::new(msg.name()),
                    state: State::Waiting,
                    trace: None,
                });
                msg.strip_service();
                let now = self.calls.arrival(deadline);
                let msg = match &self.tracing {
                    None => msg,
                    Some(t) => {
                        let (traced, msg) = trace::start(t, msg, now);
                        self.slots[idx].trace = traced;
                        msg
                    }
                };
                self.route(idx, msg, true, now);
            }
            MessageType::Oneway => self.oneway(msg, deadline),
            MessageType::Heartbeat => {
                let reply = heartbeat_reply(seqid).freeze();
                self.push(done(deadline, seqid, reply));
            }
            other => {
                let text = format!("unexpected message type {other:?} from a client");
                self.metrics.error(ErrorKind::Protocol);
                let reply =
                    application_exception(msg.method(), seqid, ExceptionKind::ProtocolError, &text);
                self.push(done(deadline, seqid, reply.freeze()));
            }
        }
    }

    /// Forwards a oneway call (its span, if traced, ends once it is sent
    /// on); a call of a known service is counted, sent or not.
    fn oneway(&mut self, msg: Message, deadline: Instant) {
        self.refresh_routes();
        let (name, seqid) = (NameBuf::new(msg.name()), msg.seqid());
        let now = self.calls.arrival(deadline);
        let (traced, msg) = match &self.tracing {
            None => (None, msg),
            Some(t) => trace::start(t, msg, now),
        };
        let sent = forward::oneway(&self.routes, msg);
        if !matches!(sent, Err(Dropped::Unknown)) {
            self.calls.oneway(name.as_bytes());
        }
        if let (Some(mut traced), Some(t)) = (traced, &self.tracing) {
            let end = match sent {
                Ok(backend) => {
                    traced.sent_to(backend);
                    SpanOutcome::Call(CallEnd::Oneway)
                }
                Err(Dropped::NoEndpoint) => SpanOutcome::Call(CallEnd::NoEndpoint),
                Err(Dropped::Unknown) => SpanOutcome::UnknownService,
            };
            traced.end(t, name.as_bytes(), seqid, end, now);
        }
    }

    /// Hands slot `idx`'s message to a backend, or settles the slot.
    /// `first` is the request's first attempt (counted in the metrics).
    fn route(&mut self, idx: usize, msg: Message, first: bool, now: Instant) {
        self.refresh_routes();
        let id = self.base + idx as u64;
        let tx = self.reply_tx();
        let slot = &mut self.slots[idx];
        let job = Job {
            msg,
            reply: Some(ReplyTo { tx, slot: id }),
        };
        let refused = match forward::dispatch(&self.routes, slot.service(), job, first) {
            Ok(backend) => {
                slot.state = State::Waiting;
                if let Some(traced) = &mut slot.trace {
                    traced.sent_to(backend);
                }
                return;
            }
            Err(r) => r,
        };
        let answered = match &refused {
            Refused::Connecting(_) => None,
            Refused::Unknown => Some(SpanOutcome::UnknownService),
            Refused::NoEndpoint => Some(SpanOutcome::Call(CallEnd::NoEndpoint)),
        };
        if let Some(end) = answered {
            end_span(&self.tracing, slot, end, now);
        }
        let (service, method, seqid) = (slot.service(), slot.method(), slot.client_seqid);
        slot.state = match refused {
            Refused::Connecting(job) => {
                self.connecting += 1;
                State::Connecting(job.msg)
            }
            Refused::Unknown => {
                self.metrics.error(ErrorKind::UnknownService);
                State::Done(Some(
                    Failure::UnknownService.to_exception(service, method, seqid),
                ))
            }
            Refused::NoEndpoint => {
                self.metrics.error(ErrorKind::NoEndpoint);
                let name = slot.name.as_bytes();
                self.calls
                    .ended(name, slot.deadline, CallEnd::NoEndpoint, now);
                State::Done(Some(
                    Failure::NoEndpoint.to_exception(service, method, seqid),
                ))
            }
        };
    }

    /// An outcome from a backend, at `now`.
    fn complete(&mut self, id: u64, outcome: Outcome, now: Instant) {
        let Some(idx) = id.checked_sub(self.base).map(|i| i as usize) else {
            return; // answered already (timed out): drop the late reply
        };
        let Some(slot) = self.slots.get_mut(idx) else {
            return;
        };
        if !matches!(slot.state, State::Waiting) {
            return;
        }
        let outcome = match outcome {
            Outcome::NotSent(msg) if slot.reroutes + 1 < MAX_REROUTES => {
                // Never written: safe to send elsewhere.
                slot.reroutes += 1;
                return self.route(idx, msg, false, now);
            }
            other => other,
        };
        let end = match &outcome {
            Outcome::Reply(r) if r.kind() == MessageType::Exception => CallEnd::Exception,
            Outcome::Reply(_) => CallEnd::Ok,
            Outcome::Failed(failure) => CallEnd::of(failure),
            Outcome::NotSent(_) => CallEnd::NotSent,
        };
        end_span(&self.tracing, slot, SpanOutcome::Call(end), now);
        let (service, method, seqid) = (slot.service(), slot.method(), slot.client_seqid);
        self.calls
            .ended(slot.name.as_bytes(), slot.deadline, end, now);
        slot.state = State::Done(Some(match outcome {
            // The backend gave the reply back the client's seqid.
            Outcome::Reply(reply) => reply.into_bytes(),
            Outcome::Failed(failure) => {
                self.metrics.error(ErrorKind::Failed);
                failure.to_exception(service, method, seqid)
            }
            Outcome::NotSent(_) => {
                self.metrics.error(ErrorKind::Failed);
                Failure::NotSent.to_exception(service, method, seqid)
            }
        }));
    }

    /// Settles every slot whose deadline has passed (they are at the head).
    fn expire(&mut self, now: Instant) {
        for slot in self.slots.iter_mut() {
            if slot.deadline > now {
                break;
            }
            let end = match slot.state {
                State::Done(_) => continue,
                State::Waiting => CallEnd::Timeout,
                State::Connecting(_) => CallEnd::NoEndpoint,
            };
            end_span(&self.tracing, slot, SpanOutcome::Call(end), now);
            let (service, method, seqid) = (slot.service(), slot.method(), slot.client_seqid);
            let reply = match &slot.state {
                State::Done(_) => unreachable!("skipped above"),
                State::Waiting => {
                    self.metrics.error(ErrorKind::Timeout);
                    let name = slot.name.as_bytes();
                    self.calls.ended(name, slot.deadline, CallEnd::Timeout, now);
                    Failure::Timeout.to_exception(service, method, seqid)
                }
                State::Connecting(_) => {
                    self.metrics.error(ErrorKind::NoEndpoint);
                    let name = slot.name.as_bytes();
                    self.calls
                        .ended(name, slot.deadline, CallEnd::NoEndpoint, now);
                    self.connecting -= 1;
                    Failure::NoEndpoint.to_exception(service, method, seqid)
                }
            };
            slot.state = State::Done(Some(reply));
        }
    }

    /// Tries again the slots waiting for a connection to open.
    fn retry_connecting(&mut self, now: Instant) {
        for idx in 0..self.slots.len() {
            if matches!(self.slots[idx].state, State::Connecting(_)) {
                let State::Connecting(msg) =
                    std::mem::replace(&mut self.slots[idx].state, State::Waiting)
                else {
                    unreachable!()
                };
                self.connecting -= 1;
                self.route(idx, msg, false, now);
            }
        }
    }

    /// Moves finished slots at the head into the write batch, in order.
    fn pop_done(&mut self, cx: &mut Cx<'_>) {
        while let Some(Slot {
            state: State::Done(_),
            ..
        }) = self.slots.front()
        {
            let slot = self.slots.pop_front().expect("front exists");
            self.base += 1;
            if let State::Done(Some(frame)) = slot.state {
                cx.send(frame);
            }
        }
    }
}

fn done(deadline: Instant, seqid: i32, frame: Bytes) -> Slot {
    Slot {
        client_seqid: seqid,
        deadline,
        reroutes: 0,
        name: NameBuf::new(b""),
        state: State::Done(Some(frame)),
        trace: None,
    }
}

/// Ends the span of `slot`'s call at `now`, if it has one.
fn end_span(tracing: &Option<Arc<Tracing>>, slot: &mut Slot, end: SpanOutcome, now: Instant) {
    if let (Some(traced), Some(t)) = (slot.trace.take(), tracing) {
        traced.end(t, slot.name.as_bytes(), slot.client_seqid, end, now);
    }
}
