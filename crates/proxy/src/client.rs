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
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use rpc_codec::{
    application_exception, heartbeat_reply, ExceptionKind, FrameCodec, FrameError, Header, Message,
    MessageType, NameBuf,
};
use rpc_transport::{FrameReader, FrameWriter, Stream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::backend::{Job, Outcome, ReplyTo};
use crate::forward::{self, errors, Refused, MAX_REROUTES};
use crate::metrics::{ErrorKind, Metrics};
use crate::routes::Routes;

pub struct ClientSettings {
    pub max_frame: usize,
    pub max_inflight: usize,
    pub rpc_timeout: Duration,
    pub frame_timeout: Duration,
    pub metrics: Arc<Metrics>,
}

/// Replies waiting for a client that does not read: beyond this, stop
/// reading its requests.
const WRITE_BUFFER_LIMIT: usize = 4 << 20;

/// Pause before re-trying a service whose connections are all opening.
const CONNECT_WAIT: Duration = Duration::from_millis(5);

pub async fn serve(
    stream: Stream,
    routes: watch::Receiver<Arc<Routes>>,
    settings: Arc<ClientSettings>,
    mut shutdown: watch::Receiver<bool>,
) {
    let peer = stream.peer();
    let (r, w) = stream.into_split();
    let mut reader = FrameReader::new(r, FrameCodec::new(settings.max_frame))
        .with_frame_timeout(settings.frame_timeout);
    let mut writer = FrameWriter::new(w);
    let mut q = Slots::new(routes, settings.metrics.clone());
    // Set when reading must stop: the final frame to send after the
    // replies already owed (a protocol error), if any.
    let mut closing: Option<Option<Bytes>> = None;

    let deadline_timer = tokio::time::sleep(settings.rpc_timeout);
    tokio::pin!(deadline_timer);
    let mut timer_at: Option<Instant> = None;
    let retry_timer = tokio::time::sleep(CONNECT_WAIT);
    tokio::pin!(retry_timer);
    let mut retry_armed = false;

    loop {
        q.pop_done(&mut writer);
        if closing.is_some() && q.slots.is_empty() && writer.is_empty() {
            break;
        }
        // The timer follows the head of the queue (the earliest deadline).
        let head = q.slots.front().map(|s| s.deadline);
        if head != timer_at {
            if let Some(t) = head {
                deadline_timer.as_mut().reset(t);
            }
            timer_at = head;
        }
        if q.connecting > 0 && !retry_armed {
            retry_timer.as_mut().reset(Instant::now() + CONNECT_WAIT);
            retry_armed = true;
        }
        let reading = closing.is_none()
            && q.slots.len() < settings.max_inflight
            && writer.queued_bytes() < WRITE_BUFFER_LIMIT;
        if !reading {
            reader.reset_frame_clock();
        }
        tokio::select! {
            biased;
            Some((slot, outcome)) = recv_reply(&mut q.replies) => {
                q.complete(slot, outcome);
                while let Some((slot, outcome)) = q.replies.as_mut().and_then(|r| r.try_recv().ok()) {
                    q.complete(slot, outcome);
                }
            }
            // Writing races reading, so a client that sends a long pipeline
            // before reading cannot deadlock with us.
            written = writer.write_some(), if !writer.is_empty() => {
                if let Err(e) = written {
                    tracing::debug!(%peer, error = %e, "client write failed");
                    return;
                }
            }
            _ = &mut deadline_timer, if timer_at.is_some() => {
                q.expire(Instant::now());
                timer_at = None;
            }
            _ = &mut retry_timer, if retry_armed => {
                retry_armed = false;
                q.retry_connecting();
            }
            frame = reader.next(), if reading => {
                // Take every frame already here in one go: one clock read
                // for the batch, and all of it dispatched before the
                // backends' tasks run (so they write it in one batch too).
                let deadline = Instant::now() + settings.rpc_timeout;
                let mut frame = Some(frame);
                while let Some(f) = frame.take() {
                    closing = on_frame(f, &mut q, &reader, deadline, &peer);
                    if matches!(closing, Some(Some(_))) {
                        settings.metrics.error(ErrorKind::Protocol);
                    }
                    if closing.is_none() && q.slots.len() < settings.max_inflight {
                        frame = reader.next().now_or_never();
                    }
                }
            }
            _ = shutdown.changed(), if closing.is_none() => closing = Some(None),
        }
    }
    if let Some(Some(frame)) = closing {
        writer.push(frame);
    }
    let _ = writer.flush().await;
}

/// Handles what the reader produced; `Some` when the connection must close
/// (with a last frame to send, if any).
fn on_frame(
    frame: Option<Result<bytes::BytesMut, FrameError>>,
    q: &mut Slots,
    reader: &FrameReader,
    deadline: Instant,
    peer: &str,
) -> Option<Option<Bytes>> {
    match frame {
        None => Some(None),
        Some(Ok(frame)) => match Message::parse_or_peek(frame) {
            Ok(msg) => {
                q.request(msg, deadline);
                None
            }
            Err((e, header)) => {
                tracing::warn!(%peer, error = %e, "bad message from client, closing");
                Some(Some(protocol_error(&e.to_string(), header)))
            }
        },
        Some(Err(e)) => {
            if let FrameError::Io(io) = &e {
                tracing::debug!(%peer, error = %io, "client read failed");
                Some(None)
            } else {
                tracing::warn!(%peer, error = %e, "bad frame from client, closing");
                // The header of an oversized frame may already be buffered.
                let header = reader.buffered().get(4..).and_then(Header::peek);
                Some(Some(protocol_error(&e.to_string(), header)))
            }
        }
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
}

impl Slots {
    fn new(mut routes_rx: watch::Receiver<Arc<Routes>>, metrics: Arc<Metrics>) -> Slots {
        let routes = routes_rx.borrow_and_update().clone();
        Slots {
            slots: VecDeque::new(),
            base: 0,
            connecting: 0,
            routes_rx,
            routes,
            reply_tx: None,
            replies: None,
            metrics,
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
                });
                msg.strip_service();
                self.route(idx, msg, true);
            }
            MessageType::Oneway => {
                self.refresh_routes();
                forward::oneway(&self.routes, msg);
            }
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

    /// Hands slot `idx`'s message to a backend, or settles the slot.
    /// `first` is the request's first attempt (counted in the metrics).
    fn route(&mut self, idx: usize, msg: Message, first: bool) {
        self.refresh_routes();
        let id = self.base + idx as u64;
        let tx = self.reply_tx();
        let slot = &mut self.slots[idx];
        let job = Job {
            msg,
            reply: Some(ReplyTo { tx, slot: id }),
        };
        let refused = match forward::dispatch(&self.routes, slot.service(), job, first) {
            Ok(()) => {
                slot.state = State::Waiting;
                return;
            }
            Err(r) => r,
        };
        let (service, method, seqid) = (slot.service(), slot.method(), slot.client_seqid);
        slot.state = match refused {
            Refused::Connecting(job) => {
                self.connecting += 1;
                State::Connecting(job.msg)
            }
            Refused::Unknown => {
                self.metrics.error(ErrorKind::UnknownService);
                State::Done(Some(errors::unknown_service(service, method, seqid)))
            }
            Refused::NoEndpoint => {
                self.metrics.error(ErrorKind::NoEndpoint);
                State::Done(Some(errors::no_endpoint(service, method, seqid)))
            }
        };
    }

    /// An outcome from a backend.
    fn complete(&mut self, id: u64, outcome: Outcome) {
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
                return self.route(idx, msg, false);
            }
            other => other,
        };
        let (service, method, seqid) = (slot.service(), slot.method(), slot.client_seqid);
        slot.state = State::Done(Some(match outcome {
            Outcome::Reply(mut reply) => {
                reply.set_seqid(seqid);
                reply.into_bytes()
            }
            Outcome::Failed(cause) => {
                self.metrics.error(ErrorKind::Failed);
                errors::failed(service, method, seqid, &cause)
            }
            Outcome::NotSent(_) => {
                self.metrics.error(ErrorKind::Failed);
                let cause = "no endpoint could take the request";
                errors::failed(service, method, seqid, cause)
            }
        }));
    }

    /// Settles every slot whose deadline has passed (they are at the head).
    fn expire(&mut self, now: Instant) {
        for slot in self.slots.iter_mut() {
            if slot.deadline > now {
                break;
            }
            let (service, method, seqid) = (slot.service(), slot.method(), slot.client_seqid);
            let reply = match &slot.state {
                State::Done(_) => continue,
                State::Waiting => {
                    self.metrics.error(ErrorKind::Timeout);
                    errors::timeout(service, method, seqid)
                }
                State::Connecting(_) => {
                    self.metrics.error(ErrorKind::NoEndpoint);
                    self.connecting -= 1;
                    errors::no_endpoint(service, method, seqid)
                }
            };
            slot.state = State::Done(Some(reply));
        }
    }

    /// Tries again the slots waiting for a connection to open.
    fn retry_connecting(&mut self) {
        for idx in 0..self.slots.len() {
            if matches!(self.slots[idx].state, State::Connecting(_)) {
                let State::Connecting(msg) =
                    std::mem::replace(&mut self.slots[idx].state, State::Waiting)
                else {
                    unreachable!()
                };
                self.connecting -= 1;
                self.route(idx, msg, false);
            }
        }
    }

    /// Moves finished slots at the head into the writer, in order.
    fn pop_done<W: tokio::io::AsyncWrite + Unpin>(&mut self, writer: &mut FrameWriter<W>) {
        while let Some(Slot {
            state: State::Done(_),
            ..
        }) = self.slots.front()
        {
            let slot = self.slots.pop_front().expect("front exists");
            self.base += 1;
            if let State::Done(Some(frame)) = slot.state {
                writer.push(frame);
            }
        }
    }
}

/// The next outcome on the reply channel; never, while there is none.
async fn recv_reply(
    replies: &mut Option<mpsc::UnboundedReceiver<(u64, Outcome)>>,
) -> Option<(u64, Outcome)> {
    match replies {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn done(deadline: Instant, seqid: i32, frame: Bytes) -> Slot {
    Slot {
        client_seqid: seqid,
        deadline,
        reroutes: 0,
        name: NameBuf::new(b""),
        state: State::Done(Some(frame)),
    }
}

/// The reply to unreadable input: a PROTOCOL_ERROR exception, named and
/// numbered after the offending message when its header could be read.
fn protocol_error(text: &str, header: Option<Header>) -> Bytes {
    let (name, seqid) = match &header {
        Some(h) => (h.bare_name(), h.seqid),
        None => (&b""[..], 0),
    };
    application_exception(name, seqid, ExceptionKind::ProtocolError, text).freeze()
}
