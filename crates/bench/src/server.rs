//! The benchmark service: `echo`, `sleep` and `fail` (see [`crate::wire`]).
//!
//! It serves either connections it accepts (a service endpoint, SPEC §4)
//! or one connection it dials to an `rpc-lb` (a worker, SPEC §5). Both
//! run the same loop: heartbeats are echoed unchanged, replies go out as
//! soon as they are ready (in any order), and at most `pool_size` calls
//! are served at once, later ones waiting in arrival order, as a worker
//! process with a fixed pool would.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use rpc_codec::{application_exception, ExceptionKind, FrameCodec, Message, MessageType};
use rpc_transport::{Address, FrameReader, FrameWriter, Listener, Stream};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::wire::{self, Method, FAIL_MESSAGE};

/// How the service behaves.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Calls served at once per connection; later calls wait their turn.
    pub pool_size: usize,
    /// `sleep` duration when the call does not carry one.
    pub default_sleep: Duration,
    /// Added to every call (e.g. to make one endpoint slow).
    pub delay: Duration,
    pub max_frame: usize,
    /// Calls waiting for a free slot before reading pauses.
    pub max_queue: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            pool_size: usize::MAX,
            default_sleep: Duration::from_millis(50),
            delay: Duration::ZERO,
            max_frame: rpc_codec::DEFAULT_MAX_FRAME,
            max_queue: 100_000,
        }
    }
}

/// Counters of a serving process (also read by tests).
#[derive(Debug, Default)]
pub struct ServerStats {
    pub calls: AtomicU64,
    pub heartbeats: AtomicU64,
    pub connections: AtomicU64,
}

/// The part a connection plays.
#[derive(Debug, Clone, Copy)]
pub enum Role {
    /// Accepted from a proxy or client.
    Endpoint,
    /// Dialled to an LB: expects heartbeats and stops gracefully.
    Worker {
        heartbeat_timeout: Duration,
        stop_timeout: Duration,
    },
}

/// How a served connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// The peer closed it.
    Closed,
    /// Worker: no heartbeat in time.
    HeartbeatLost,
    /// Worker: stop confirmed and every call answered (or stop timed out).
    Stopped,
    Error(String),
}

type Delayed = Pin<Box<dyn Future<Output = Bytes> + Send>>;

/// Accepts connections on `listener` until `shutdown` turns true.
pub async fn serve_listener(
    listener: Listener,
    cfg: Arc<ServeConfig>,
    stats: Arc<ServerStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => {
                    stats.connections.fetch_add(1, Ordering::Relaxed);
                    let (cfg, stats, sd) = (cfg.clone(), stats.clone(), shutdown.clone());
                    tokio::spawn(async move {
                        let end = serve_connection(s, Role::Endpoint, &cfg, &stats, sd).await;
                        if let Ended::Error(e) = end {
                            tracing::debug!("connection ended: {e}");
                        }
                    });
                }
                Err(e) => {
                    // Out of descriptors or similar: back off, keep serving.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            r = shutdown.changed() => {
                if r.is_err() || *shutdown.borrow() {
                    return;
                }
            }
        }
    }
}

/// Worker mode: dials `back`, serves, redials with 1 s, 2 s, 4 s backoff
/// after a lost LB, and returns once a graceful stop completed (or at
/// once, on shutdown, if not connected).
pub async fn run_worker(
    back: Address,
    cfg: Arc<ServeConfig>,
    stats: Arc<ServerStats>,
    heartbeat_timeout: Duration,
    stop_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        if *shutdown.borrow() {
            return;
        }
        match Stream::connect(&back).await {
            Ok(s) => {
                stats.connections.fetch_add(1, Ordering::Relaxed);
                let role = Role::Worker {
                    heartbeat_timeout,
                    stop_timeout,
                };
                match serve_connection(s, role, &cfg, &stats, shutdown.clone()).await {
                    Ended::Stopped => return,
                    other => {
                        tracing::warn!("worker connection to {back} ended: {other:?}");
                        backoff = Duration::from_secs(1);
                    }
                }
            }
            Err(e) => tracing::warn!("worker cannot reach {back}: {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            r = shutdown.changed() => {
                if r.is_err() {
                    return;
                }
            }
        }
        backoff = (backoff * 2).min(Duration::from_secs(4));
    }
}

/// What the service does with one call.
enum Action {
    Now(BytesMut),
    Later(Duration, BytesMut),
    Nothing,
}

fn answer(msg: Message, cfg: &ServeConfig) -> Action {
    let oneway = msg.kind() == MessageType::Oneway;
    let mut msg = msg;
    msg.strip_service();
    let seqid = msg.seqid();
    let Some(method) = Method::from_name(msg.name()) else {
        if oneway {
            return Action::Nothing;
        }
        let text = format!("unknown method {:?}", String::from_utf8_lossy(msg.name()));
        return Action::Now(application_exception(
            msg.name(),
            seqid,
            ExceptionKind::UnknownMethod,
            &text,
        ));
    };
    let Some(args) = wire::read_args(msg.body()) else {
        if oneway {
            return Action::Nothing;
        }
        return Action::Now(application_exception(
            msg.name(),
            seqid,
            ExceptionKind::ProtocolError,
            "bad arguments",
        ));
    };
    if oneway {
        return Action::Nothing;
    }
    let delay = cfg.delay
        + match method {
            Method::Sleep => args
                .ms
                .map(|ms| Duration::from_millis(ms.into()))
                .unwrap_or(cfg.default_sleep),
            _ => Duration::ZERO,
        };
    let reply = match method {
        Method::Fail => application_exception(b"fail", seqid, ExceptionKind::Unknown, FAIL_MESSAGE),
        Method::Echo | Method::Sleep => {
            let body_at = msg.frame_len() - msg.body().len();
            wire::reply_in_place(msg.into_inner(), body_at, args)
        }
    };
    if delay.is_zero() {
        Action::Now(reply)
    } else {
        Action::Later(delay, reply)
    }
}

/// Serves one connection until it ends.
pub async fn serve_connection(
    stream: Stream,
    role: Role,
    cfg: &ServeConfig,
    stats: &ServerStats,
    mut shutdown: watch::Receiver<bool>,
) -> Ended {
    let (r, w) = stream.into_split();
    let mut reader = FrameReader::new(r, FrameCodec::new(cfg.max_frame));
    let mut writer = FrameWriter::new(w);
    let mut running: FuturesUnordered<Delayed> = FuturesUnordered::new();
    let mut queue: VecDeque<Message> = VecDeque::new();
    // Calls holding a pool slot (waiting out a delay).
    let mut busy = 0usize;
    let worker = matches!(role, Role::Worker { .. });
    let (hb_timeout, stop_timeout) = match role {
        Role::Worker {
            heartbeat_timeout,
            stop_timeout,
        } => (heartbeat_timeout, stop_timeout),
        Role::Endpoint => (Duration::MAX, Duration::MAX),
    };
    let far = Instant::now() + Duration::from_secs(86_400 * 365);
    let hb_deadline = tokio::time::sleep_until(if worker {
        Instant::now() + hb_timeout
    } else {
        far
    });
    tokio::pin!(hb_deadline);
    let stop_deadline = tokio::time::sleep_until(far);
    tokio::pin!(stop_deadline);
    let mut stopping = false;
    let mut confirmed = false;
    let mut shutdown_seen = *shutdown.borrow();

    // Starts a call now, or queues it while every slot is busy.
    let start = |msg: Message,
                 busy: &mut usize,
                 running: &mut FuturesUnordered<Delayed>,
                 writer: &mut FrameWriter<_>| {
        stats.calls.fetch_add(1, Ordering::Relaxed);
        match answer(msg, cfg) {
            Action::Now(b) => writer.push(b.freeze()),
            Action::Later(d, b) => {
                *busy += 1;
                running.push(Box::pin(async move {
                    tokio::time::sleep(d).await;
                    b.freeze()
                }));
            }
            Action::Nothing => {}
        }
    };

    loop {
        if worker && shutdown_seen && !stopping {
            writer.push(rpc_codec::stop().freeze());
            stopping = true;
            stop_deadline
                .as_mut()
                .reset(Instant::now() + stop_timeout.min(Duration::from_secs(86_400)));
        }
        if confirmed && busy == 0 && queue.is_empty() && writer.is_empty() {
            return Ended::Stopped;
        }
        tokio::select! {
            biased;
            Some(reply) = running.next(), if !running.is_empty() => {
                busy -= 1;
                writer.push(reply);
                while busy < cfg.pool_size {
                    let Some(m) = queue.pop_front() else { break };
                    start(m, &mut busy, &mut running, &mut writer);
                }
            }
            f = reader.next(), if queue.len() < cfg.max_queue => {
                let frame = match f {
                    None => return Ended::Closed,
                    Some(Err(e)) => return Ended::Error(e.to_string()),
                    Some(Ok(f)) => f,
                };
                let msg = match Message::parse_or_peek(frame) {
                    Ok(m) => m,
                    Err((e, head)) => {
                        let (name, seqid) = head.map(|h| (h.name, h.seqid)).unwrap_or_default();
                        writer.push(application_exception(&name, seqid, ExceptionKind::ProtocolError, &e.to_string()).freeze());
                        let _ = writer.flush().await;
                        return Ended::Error(e.to_string());
                    }
                };
                match msg.kind() {
                    MessageType::Heartbeat => {
                        stats.heartbeats.fetch_add(1, Ordering::Relaxed);
                        if worker {
                            hb_deadline.as_mut().reset(Instant::now() + hb_timeout);
                        }
                        writer.push(msg.into_bytes());
                    }
                    MessageType::StopConfirm if stopping => confirmed = true,
                    MessageType::Call | MessageType::Oneway => {
                        if busy < cfg.pool_size && queue.is_empty() {
                            start(msg, &mut busy, &mut running, &mut writer);
                        } else {
                            queue.push_back(msg);
                        }
                    }
                    other => {
                        let text = format!("unexpected message type {other:?}");
                        writer.push(application_exception(msg.name(), msg.seqid(), ExceptionKind::ProtocolError, &text).freeze());
                        let _ = writer.flush().await;
                        return Ended::Error(text);
                    }
                }
            }
            r = writer.flush(), if !writer.is_empty() => {
                if let Err(e) = r {
                    return Ended::Error(format!("write: {e}"));
                }
            }
            _ = &mut hb_deadline, if worker && !confirmed => return Ended::HeartbeatLost,
            _ = &mut stop_deadline, if stopping => return Ended::Stopped,
            r = shutdown.changed(), if worker && !shutdown_seen => {
                shutdown_seen = r.is_err() || *shutdown.borrow();
            }
        }
    }
}

pub use rpc_config::wait_for_signal;
