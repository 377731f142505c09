//! One proxy (L2) connection to the LB (SPEC §4 seen from the endpoint).
//!
//! The proxy pipelines requests with seqids it chose and matches replies
//! by seqid, so replies leave as soon as they are ready, in any order, each
//! carrying the seqid it came with. Heartbeats are echoed unchanged. The
//! number of unanswered requests is capped (`max_inflight`): at the cap the
//! task stops reading and TCP pushes back on the proxy.
//!
//! During an upgrade ([`FrontSettings::handoff`] set) a connection told to
//! stop hands its socket to the successor instead of closing, once every
//! request it read is answered: the proxy keeps its connection. A TLS
//! connection cannot be handed over (its session lives in this process),
//! and closing it under a proxy that is writing would lose the calls in
//! the socket. So the LB asks first: it sends `STOP` (the SPEC §5 worker
//! message, the other way round), keeps serving, and closes once the proxy
//! answers `STOP_CONFIRM`: the proxy sent nothing after it, and reopens
//! its connection, to the successor. Only our proxies speak TLS, so only
//! they get it; one that stays silent for a heartbeat timeout is closed
//! on anyway.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rpc_codec::{application_exception, encode_message, ExceptionKind, Message, MessageType};
use rpc_config::otel::Tracing;
use rpc_engine::conn::{self, End};
use rpc_engine::drain;
use rpc_engine::{Cx, Failure, Flow, Hop, Options};
use rpc_transport::Stream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::dispatch::{Dispatcher, Job};
use crate::metrics::{Ending, Metrics, Tally};
use crate::reply::{Answer, AnswerRx, AnswerTx, ReplyTo};
use crate::trace::Spans;

pub struct FrontSettings {
    pub service: Arc<str>,
    pub max_frame: usize,
    pub max_inflight: usize,
    pub rpc_timeout: Duration,
    pub frame_timeout: Duration,
    pub metrics: Arc<Metrics>,
    /// Set when an upgrade starts: stopping connections then hand their
    /// socket (between two requests) to the successor through it instead
    /// of closing.
    pub handoff: OnceLock<mpsc::UnboundedSender<(Stream, BytesMut)>>,
    /// A span per call when `otlp_endpoint` is set.
    pub tracing: Option<Arc<Tracing>>,
    /// How long a TLS connection asked to stop waits for the proxy's
    /// `STOP_CONFIRM` (`heartbeat_timeout`).
    pub confirm_wait: Duration,
}

/// When the last request arrived, for the quiet period of a graceful stop.
pub struct Activity {
    origin: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    pub fn new() -> Activity {
        Activity {
            origin: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self, now: Instant) {
        let ms = now.saturating_duration_since(self.origin).as_millis() as u64;
        // Skip the shared write when nothing changed (hot path, many cores).
        if self.last_ms.load(Ordering::Relaxed) != ms {
            self.last_ms.store(ms, Ordering::Relaxed);
        }
    }

    /// Time since the last request (or since start).
    pub fn idle(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.origin.elapsed().saturating_sub(last)
    }
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

/// Serves one proxy connection; `read` holds the bytes already read from
/// it past its last request when the LB we upgrade handed it over.
pub async fn serve(
    stream: Stream,
    read: BytesMut,
    dispatcher: Arc<Dispatcher>,
    settings: Arc<FrontSettings>,
    activity: Arc<Activity>,
    mut shutdown: drain::Watch,
) {
    let opts = Options::new(settings.max_frame).frame_timeout(settings.frame_timeout);
    // Every request's answer comes back through this one channel.
    let (tx, answers) = mpsc::unbounded_channel();
    let mut hop = FrontConn {
        dispatcher: &dispatcher,
        settings: &settings,
        activity: &activity,
        tx,
        answers,
        inflight: 0,
        jobs: Vec::new(),
        tally: Tally::new(
            settings.metrics.methods.clone(),
            settings.service.clone(),
            settings.rpc_timeout,
        ),
        spans: (settings.tracing.clone()).map(|t| Spans::new(t, settings.service.clone())),
        tls: stream.is_tls(),
        confirm_by: None,
    };
    // Borrowed, not moved: the watch must live until the connection ends,
    // since the server's drain waits for it.
    let stop = shutdown.signaled();
    if let End::HandedOff(handed) = conn::run_with(&mut hop, stream, read, stop, &opts).await {
        if let Some(successor) = settings.handoff.get() {
            let _ = successor.send(*handed);
        }
    }
}

/// One proxy connection as a hop of the engine: requests go to the
/// dispatcher in batches, answers (its events) are written as they come.
struct FrontConn<'a> {
    dispatcher: &'a Dispatcher,
    settings: &'a FrontSettings,
    activity: &'a Activity,
    tx: AnswerTx,
    answers: AnswerRx,
    /// Requests handed to the dispatcher and not yet answered.
    inflight: usize,
    /// Requests read in this batch, handed over together.
    jobs: Vec<Job>,
    /// How this wake-up's requests ended; added to the shared counters once.
    tally: Tally,
    spans: Option<Spans>,
    /// A TLS session: closed, not handed over, on an upgrade.
    tls: bool,
    /// `STOP` sent (an upgrade, TLS): until when the proxy may confirm.
    confirm_by: Option<Instant>,
}

impl Hop for FrontConn<'_> {
    type Event = Answer;

    fn on_message(&mut self, msg: Message, cx: &mut Cx<'_>) -> Flow {
        if msg.kind() == MessageType::StopConfirm && self.confirm_by.take().is_some() {
            // Nothing follows it: what was read is all there is to answer.
            return Flow::Close;
        }
        let deadline = cx.now() + self.settings.rpc_timeout;
        let (s, tally) = (self.settings, &mut self.tally);
        let msg = match &mut self.spans {
            Some(spans) => traced(spans, msg, s, cx.now()),
            None => msg,
        };
        if let Some(f) = request(
            msg,
            &self.tx,
            s,
            deadline,
            &mut self.jobs,
            &mut self.inflight,
            tally,
        ) {
            cx.send(f);
        }
        Flow::Continue
    }

    fn wants_frames(&self, _queued: usize) -> bool {
        self.inflight < self.settings.max_inflight
    }

    fn poll_event(&mut self, c: &mut Context<'_>) -> Poll<Option<Answer>> {
        self.answers.poll_recv(c)
    }

    fn try_event(&mut self) -> Option<Answer> {
        self.answers.try_recv().ok()
    }

    fn wants_events(&self) -> bool {
        self.inflight > 0
    }

    fn on_event(&mut self, answer: Answer, cx: &mut Cx<'_>) -> Flow {
        let now = cx.now();
        if let Some(spans) = &mut self.spans {
            let (seqid, method) = answer.names();
            spans.end(seqid, method, ending(&answer), now);
        }
        cx.send(frame_of(
            answer,
            &self.settings.service,
            &mut self.tally,
            now,
        ));
        self.inflight -= 1;
        Flow::Continue
    }

    fn on_batch_end(&mut self, cx: &mut Cx<'_>) {
        if !self.jobs.is_empty() {
            self.activity.touch(cx.now());
            self.dispatcher.submit_many(&mut self.jobs);
        }
        self.settings.metrics.requests.add(&mut self.tally);
    }

    fn owes(&self) -> bool {
        self.inflight > 0
    }

    fn on_shutdown(&mut self, cx: &mut Cx<'_>) -> Flow {
        match (self.settings.handoff.get().is_some(), self.tls) {
            (true, false) => Flow::HandOff,
            (true, true) => {
                cx.send(encode_message(MessageType::Stop, b"stop", 0, b"").freeze());
                self.confirm_by = Some(cx.now() + self.settings.confirm_wait);
                Flow::Continue
            }
            (false, _) => Flow::Close,
        }
    }

    fn deadline(&self) -> Option<Instant> {
        self.confirm_by
    }

    fn on_timer(&mut self, cx: &mut Cx<'_>) -> Flow {
        match self.confirm_by {
            Some(by) if by <= cx.now() => {
                self.confirm_by = None;
                tracing::warn!(peer = %cx.peer, "no STOP_CONFIRM from the proxy in time: closing its TLS connection");
                Flow::Close
            }
            _ => Flow::Continue,
        }
    }
}

/// How the request an answer settles ended.
fn ending(a: &Answer) -> Ending {
    match a {
        Answer::Reply(msg) if msg.kind() == MessageType::Exception => Ending::Exception,
        Answer::Reply(_) => Ending::Ok,
        Answer::Error(f) => match &f.failure {
            Failure::TimeoutInQueue => Ending::TimeoutInQueue,
            Failure::Timeout => Ending::Timeout,
            Failure::Rejected(_) => Ending::RejectedQueueFull,
            _ => Ending::WorkerLost,
        },
    }
}

/// The frame an answer becomes; counts how the request ended (at `now`).
fn frame_of(a: Answer, service: &str, tally: &mut Tally, now: Instant) -> Bytes {
    let e = ending(&a);
    match a {
        Answer::Reply(msg) => {
            tally.answered(msg.seqid(), msg.name(), e, now);
            msg.into_bytes()
        }
        Answer::Error(f) => {
            tally.answered(f.seqid, f.method.as_bytes(), e, now);
            f.failure
                .to_exception(service, f.method.as_bytes(), f.seqid)
        }
    }
}

/// A call or oneway with its span started (and its method bare, as the
/// span names it); other messages as they came.
fn traced(spans: &mut Spans, mut msg: Message, settings: &FrontSettings, now: Instant) -> Message {
    let oneway = match msg.kind() {
        MessageType::Call => false,
        MessageType::Oneway => true,
        _ => return msg,
    };
    if msg.service() == Some(settings.service.as_bytes()) {
        msg.strip_service();
    }
    spans.start(msg, oneway, now)
}

/// Starts one request (queued in `jobs`); returns a frame to write at once
/// (heartbeat echo, error), if any.
fn request(
    mut msg: Message,
    tx: &AnswerTx,
    settings: &FrontSettings,
    deadline: Instant,
    jobs: &mut Vec<Job>,
    inflight: &mut usize,
    tally: &mut Tally,
) -> Option<Bytes> {
    match msg.kind() {
        MessageType::Call | MessageType::Oneway => {
            // A multiplexed client talking to the LB directly may keep the
            // `service:` prefix; workers expect the bare method.
            if msg.service() == Some(settings.service.as_bytes()) {
                msg.strip_service();
            }
            let reply = if msg.kind() == MessageType::Oneway {
                tally.oneway(msg.name());
                None
            } else {
                *inflight += 1;
                tally.call(msg.seqid(), msg.name(), deadline);
                Some(ReplyTo::new(tx.clone(), msg.seqid(), msg.name()))
            };
            jobs.push(Job {
                msg,
                reply,
                deadline,
            });
            None
        }
        // SPEC §4: the endpoint echoes the heartbeat frame unchanged.
        MessageType::Heartbeat => Some(msg.into_bytes()),
        other => {
            let text = format!("unexpected message type {other:?} from a proxy");
            let reply = application_exception(
                msg.method(),
                msg.seqid(),
                ExceptionKind::ProtocolError,
                &text,
            );
            Some(reply.freeze())
        }
    }
}
