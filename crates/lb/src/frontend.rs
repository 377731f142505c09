//! One proxy (L2) connection to the LB (SPEC §4 seen from the endpoint).
//!
//! The proxy pipelines requests with seqids it chose and matches replies
//! by seqid, so replies leave as soon as they are ready, in any order, each
//! carrying the seqid it came with. Heartbeats are echoed unchanged. The
//! number of unanswered requests is capped (`max_inflight`): at the cap the
//! task stops reading and TCP pushes back on the proxy.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use rpc_codec::{
    application_exception, ExceptionKind, FrameCodec, FrameError, Header, Message, MessageType,
};
use rpc_transport::{FrameReader, FrameWriter, Stream};
use tokio::sync::{oneshot, watch};
use tokio::time::{timeout_at, Instant};

use crate::dispatch::{Dispatcher, Job, Outcome};

pub struct FrontSettings {
    pub service: Arc<str>,
    pub max_frame: usize,
    pub max_inflight: usize,
    pub rpc_timeout: Duration,
    pub frame_timeout: Duration,
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

    fn touch(&self) {
        let ms = self.origin.elapsed().as_millis() as u64;
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

type Pending = Pin<Box<dyn Future<Output = Bytes> + Send>>;

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
    let mut pending: FuturesUnordered<Pending> = FuturesUnordered::new();
    // Set when reading must stop: the final frame to send once the replies
    // already owed are out (a protocol error), if any.
    let mut closing: Option<Option<Bytes>> = None;

    loop {
        if closing.is_some() && pending.is_empty() && writer.is_empty() {
            break;
        }
        let reading = closing.is_none()
            && pending.len() < settings.max_inflight
            && writer.queued_bytes() < WRITE_BUFFER_LIMIT;
        if !reading {
            reader.reset_frame_clock();
        }
        tokio::select! {
            biased;
            Some(frame) = pending.next(), if !pending.is_empty() => {
                writer.push(frame);
                while let Some(Some(frame)) = pending.next().now_or_never() {
                    writer.push(frame);
                }
            }
            // Writing races reading, as in the proxy.
            written = writer.write_some(), if !writer.is_empty() => {
                if let Err(e) = written {
                    tracing::debug!(%peer, error = %e, "frontend write failed");
                    return;
                }
            }
            frame = reader.next(), if reading => {
                match frame {
                    None => closing = Some(None),
                    Some(Ok(frame)) => match Message::parse_or_peek(frame) {
                        Ok(msg) => {
                            if let Some(now) = request(msg, &dispatcher, &settings, &activity) {
                                match now {
                                    Immediate::Frame(f) => writer.push(f),
                                    Immediate::Later(p) => pending.push(p),
                                }
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
            }
            _ = crate::until(&mut shutdown, |s| *s), if closing.is_none() => closing = Some(None),
        }
    }
    if let Some(Some(frame)) = closing {
        writer.push(frame);
    }
    let _ = writer.flush().await;
}

enum Immediate {
    /// To write now (heartbeat echo, error).
    Frame(Bytes),
    /// The reply, once a worker answered.
    Later(Pending),
}

/// Starts one request; `None` when nothing is to be answered (oneway).
fn request(
    mut msg: Message,
    dispatcher: &Dispatcher,
    settings: &FrontSettings,
    activity: &Activity,
) -> Option<Immediate> {
    match msg.kind() {
        MessageType::Call | MessageType::Oneway => {
            activity.touch();
            // A multiplexed client talking to the LB directly may keep the
            // `service:` prefix; workers expect the bare method.
            if msg.service() == Some(settings.service.as_bytes()) {
                msg.strip_service();
            }
            let deadline = Instant::now() + settings.rpc_timeout;
            if msg.kind() == MessageType::Oneway {
                dispatcher.submit(Job {
                    msg,
                    reply: None,
                    deadline,
                });
                return None;
            }
            let seqid = msg.seqid();
            let method = Bytes::copy_from_slice(msg.name());
            let (tx, rx) = oneshot::channel();
            dispatcher.submit(Job {
                msg,
                reply: Some(tx),
                deadline,
            });
            let service = settings.service.clone();
            Some(Immediate::Later(Box::pin(async move {
                let outcome = match timeout_at(deadline, rx).await {
                    Ok(Ok(outcome)) => outcome,
                    Ok(Err(_)) => Outcome::Failed("the LB is stopping".into()),
                    Err(_) => Outcome::Expired,
                };
                answer(outcome, &service, &method, seqid)
            })))
        }
        // SPEC §4: the endpoint echoes the heartbeat frame unchanged.
        MessageType::Heartbeat => Some(Immediate::Frame(msg.into_bytes())),
        other => {
            let text = format!("unexpected message type {other:?} from a proxy");
            let reply = application_exception(
                msg.method(),
                msg.seqid(),
                ExceptionKind::ProtocolError,
                &text,
            );
            Some(Immediate::Frame(reply.freeze()))
        }
    }
}

/// The frame that goes back for a request's outcome (SPEC §3 wording).
fn answer(outcome: Outcome, service: &str, method: &[u8], seqid: i32) -> Bytes {
    let m = String::from_utf8_lossy(method);
    let text = match outcome {
        Outcome::Reply(reply) => return reply.into_bytes(),
        Outcome::Expired => format!("Timeout Exception: {service}:{m} got no reply in time"),
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
