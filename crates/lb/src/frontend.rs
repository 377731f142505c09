//! One proxy (L2) connection to the LB (SPEC §4 seen from the endpoint).
//!
//! The proxy pipelines requests with seqids it chose and matches replies
//! by seqid, so replies leave as soon as they are ready, in any order, each
//! carrying the seqid it came with. Heartbeats are echoed unchanged. The
//! number of unanswered requests is capped (`max_inflight`): at the cap the
//! task stops reading and TCP pushes back on the proxy.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rpc_codec::{
    application_exception, ExceptionKind, FrameCodec, FrameError, Header, Message, MessageType,
};
use rpc_transport::{FrameWriter, Stream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::dispatch::{Dispatcher, Job, Outcome};
use crate::metrics::{Ending, Metrics, Tally};
use crate::reply::{Answer, AnswerTx, ReplyTo};
use rpc_transport::FrameReader;

pub struct FrontSettings {
    pub service: Arc<str>,
    pub max_frame: usize,
    pub max_inflight: usize,
    pub rpc_timeout: Duration,
    pub frame_timeout: Duration,
    pub metrics: Arc<Metrics>,
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

/// Replies waiting for a proxy that does not read: beyond this, stop
/// reading its requests.
const WRITE_BUFFER_LIMIT: usize = 4 << 20;

pub async fn serve(
    stream: Stream,
    dispatcher: Arc<Dispatcher>,
    settings: Arc<FrontSettings>,
    activity: Arc<Activity>,
    mut shutdown: watch::Receiver<bool>,
) {
    let peer = stream.peer();
    let (r, w) = stream.into_split();
    let mut reader = FrameReader::new(r, FrameCodec::new(settings.max_frame))
        .with_frame_timeout(settings.frame_timeout);
    let mut writer = FrameWriter::new(w);
    // Every request's answer comes back through this one channel.
    let (tx, mut answers) = mpsc::unbounded_channel();
    // Requests handed to the dispatcher and not yet answered.
    let mut inflight = 0usize;
    let mut jobs = Vec::new();
    // Set when reading must stop: the final frame to send once the replies
    // already owed are out (a protocol error), if any.
    let mut closing: Option<Option<Bytes>> = None;
    // How this wake-up's requests ended; added to the shared counters once.
    let mut tally = Tally::default();
    let stop = crate::until(&mut shutdown, |s| *s);
    tokio::pin!(stop);
    let mut stop_seen = false;

    loop {
        if closing.is_some() && inflight == 0 && writer.is_empty() {
            break;
        }
        let reading = closing.is_none()
            && inflight < settings.max_inflight
            && writer.queued_bytes() < WRITE_BUFFER_LIMIT;
        if !reading {
            reader.reset_frame_clock();
        }
        // Biased, writing last: everything ready is taken in first, so one
        // write carries the whole batch.
        tokio::select! {
            biased;
            Some(answer) = answers.recv(), if inflight > 0 => {
                writer.push(frame_of(answer, &settings.service, &mut tally));
                inflight -= 1;
                while inflight > 0 {
                    match answers.try_recv() {
                        Ok(answer) => {
                            writer.push(frame_of(answer, &settings.service, &mut tally));
                            inflight -= 1;
                        }
                        Err(_) => break,
                    }
                }
                settings.metrics.requests.add(&mut tally);
            }
            frame = reader.next(), if reading => {
                // One clock reading for the whole batch.
                let now = Instant::now();
                let deadline = now + settings.rpc_timeout;
                let mut frame = frame;
                loop {
                    match frame {
                        None => closing = Some(None),
                        Some(Ok(frame)) => match Message::parse_or_peek(frame) {
                            Ok(msg) => {
                                if let Some(f) = request(msg, &tx, &settings, deadline, &mut jobs, &mut inflight, &mut tally) {
                                    writer.push(f);
                                }
                            }
                            Err((e, header)) => {
                                tracing::warn!(%peer, error = %e, "bad message from proxy, closing");
                                closing = Some(Some(protocol_error(&e.to_string(), header)));
                            }
                        },
                        Some(Err(e)) => {
                            if let FrameError::Io(io) = &e {
                                tracing::debug!(%peer, error = %io, "frontend read failed");
                                closing = Some(None);
                            } else {
                                tracing::warn!(%peer, error = %e, "bad frame from proxy, closing");
                                let header = reader.buffered().get(4..).and_then(Header::peek);
                                closing = Some(Some(protocol_error(&e.to_string(), header)));
                            }
                        }
                    }
                    if closing.is_some() || inflight >= settings.max_inflight {
                        break;
                    }
                    match reader.next_buffered() {
                        Some(f) => frame = Some(f),
                        None => break,
                    }
                }
                if !jobs.is_empty() {
                    activity.touch(now);
                    dispatcher.submit_many(&mut jobs);
                    settings.metrics.requests.add(&mut tally);
                }
            }
            _ = &mut stop, if !stop_seen && closing.is_none() => {
                stop_seen = true;
                closing = Some(None);
            }
            // Writing races reading, as in the proxy.
            written = writer.write_some(), if !writer.is_empty() => {
                if let Err(e) = written {
                    tracing::debug!(%peer, error = %e, "frontend write failed");
                    return;
                }
            }
        }
    }
    if let Some(Some(frame)) = closing {
        writer.push(frame);
    }
    let _ = writer.flush().await;
}

/// The frame an answer becomes; counts how the request ended.
fn frame_of(a: Answer, service: &str, tally: &mut Tally) -> Bytes {
    match a {
        Answer::Reply(msg) => {
            tally.count(if msg.kind() == MessageType::Exception {
                Ending::Exception
            } else {
                Ending::Ok
            });
            msg.into_bytes()
        }
        Answer::Error(f) => {
            tally.count(match &f.outcome {
                Outcome::Reply(m) if m.kind() == MessageType::Exception => Ending::Exception,
                Outcome::Reply(_) => Ending::Ok,
                Outcome::Expired => Ending::TimeoutInQueue,
                Outcome::TimedOut => Ending::Timeout,
                Outcome::Rejected(_) => Ending::RejectedQueueFull,
                Outcome::Failed(_) => Ending::WorkerLost,
            });
            answer(f.outcome, service, f.method.as_bytes(), f.seqid)
        }
    }
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
                tally.count(Ending::Oneway);
                None
            } else {
                *inflight += 1;
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

/// The frame that goes back for a request's outcome (SPEC §3 wording).
fn answer(outcome: Outcome, service: &str, method: &[u8], seqid: i32) -> Bytes {
    let m = String::from_utf8_lossy(method);
    let text = match outcome {
        Outcome::Reply(reply) => return reply.into_bytes(),
        Outcome::Expired | Outcome::TimedOut => {
            format!("Timeout Exception: {service}:{m} got no reply in time")
        }
        Outcome::Failed(cause) => format!("{service}:{m} failed: {cause}"),
        Outcome::Rejected(cause) => format!("{service}:{m} rejected: {cause}"),
    };
    application_exception(method, seqid, ExceptionKind::InternalError, &text).freeze()
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
