//! One worker connection (SPEC §5): the worker dialled in; this task owns
//! the socket, the LB's seqid space toward it and its table of requests in
//! flight.
//!
//! Requests arrive from the dispatcher on an unbounded channel whose depth
//! the dispatcher bounds (a worker never holds more than its slots). The
//! caller's seqid is swapped for one unique on this connection and put
//! back on the reply. A request still unanswered at its deadline is
//! answered with a timeout (its slot stays taken until the worker replies).
//! The task heartbeats the worker, declares it lost when nothing comes
//! back for `heartbeat_timeout` or the socket closes, and honours a
//! worker's STOP.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::time::Duration;

use rpc_codec::{heartbeat, stop_confirm, FrameCodec, Message, MessageType};
use rpc_transport::{FrameWriter, Stream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::dispatch::{Dispatcher, Job, Outcome, WorkerId};
use crate::metrics::WorkerCounters;
use crate::reply::ReplyTo;
use rpc_transport::FrameReader;

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub max_frame: usize,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    /// A request arrived `rpc_timeout` before its deadline (for latency).
    pub rpc_timeout: Duration,
}

/// Hashes the seqids this task assigns itself (consecutive integers) with
/// one multiplication: well spread, far cheaper than SipHash.
#[derive(Default)]
struct SeqidHasher(u64);

impl Hasher for SeqidHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_i32(&mut self, v: i32) {
        self.0 = u64::from(v as u32).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type SeqidMap<V> = HashMap<i32, V, BuildHasherDefault<SeqidHasher>>;

/// A request written to the worker: its slot is taken until the worker
/// answers (or is lost), even when the caller was already told it timed
/// out (`reply` taken).
struct Pending {
    reply: Option<ReplyTo>,
    deadline: Instant,
}

impl Pending {
    fn waiting(&self) -> bool {
        self.reply.is_some()
    }
}

/// Why a worker connection ended.
enum End {
    /// The LB is stopping.
    Closed,
    Lost(String),
}

pub async fn serve(
    stream: Stream,
    dispatcher: Arc<Dispatcher>,
    settings: Arc<WorkerSettings>,
    mut shutdown: watch::Receiver<bool>,
) {
    let peer = stream.peer();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let counters = Arc::new(WorkerCounters::new(peer.to_string()));
    let id = dispatcher.add_worker(tx, counters.clone());
    tracing::info!(worker = id, %peer, "worker connected");
    let mut pending = SeqidMap::default();
    let end = run(
        stream,
        id,
        &dispatcher,
        &settings,
        &mut rx,
        &mut pending,
        &mut shutdown,
        &counters,
    )
    .await;
    dispatcher.remove_worker(id);
    // Nothing more can arrive once removed: what is left was never written.
    rx.close();
    let mut unsent = Vec::new();
    while let Ok(job) = rx.try_recv() {
        unsent.push(job);
    }
    dispatcher.requeue(id, unsent);
    let cause = match end {
        End::Closed => "the LB is stopping".to_string(),
        End::Lost(cause) => {
            tracing::warn!(worker = id, %peer, %cause, "worker lost");
            cause
        }
    };
    for (_, p) in pending.drain() {
        if let Some(reply) = p.reply {
            reply.send(Outcome::Failed(format!("worker {peer}: {cause}")));
        }
    }
    tracing::info!(worker = id, %peer, "worker disconnected");
}

/// Deadlines of the requests in flight, in the order they were written
/// (which is deadline order but for requeued jobs, a few ms apart). One
/// timer per connection is armed for the oldest; answered entries leave
/// the front as replies come, and the queue is compacted when a stuck
/// request at its head holds many answered ones behind it.
struct Deadlines {
    queue: VecDeque<(i32, Instant)>,
}

impl Deadlines {
    /// Drops answered entries from the front (and everywhere, when they
    /// pile up behind a long-running request).
    fn trim(&mut self, pending: &SeqidMap<Pending>) {
        while let Some(&(seqid, _)) = self.queue.front() {
            if pending.get(&seqid).is_some_and(Pending::waiting) {
                break;
            }
            self.queue.pop_front();
        }
        if self.queue.len() > 2 * pending.len() + 64 {
            self.queue
                .retain(|(seqid, _)| pending.get(seqid).is_some_and(Pending::waiting));
        }
    }
}

// Each argument is a piece of the connection that `serve` sets up and
// cleans up after; bundling them would only rename them.
#[allow(clippy::too_many_arguments)]
async fn run(
    stream: Stream,
    id: WorkerId,
    dispatcher: &Dispatcher,
    s: &WorkerSettings,
    rx: &mut mpsc::UnboundedReceiver<Job>,
    pending: &mut SeqidMap<Pending>,
    shutdown: &mut watch::Receiver<bool>,
    counters: &WorkerCounters,
) -> End {
    let (r, w) = stream.into_split();
    let mut reader = FrameReader::new(r, FrameCodec::new(s.max_frame));
    let mut writer = FrameWriter::new(w);
    let mut next_seqid: i32 = 0;
    let mut last_heard = Instant::now();
    // When the last heartbeat went out, to count intervals without an echo.
    let mut last_ping: Option<Instant> = None;
    let mut ticker =
        tokio::time::interval_at(Instant::now() + s.heartbeat_interval, s.heartbeat_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stopping = false;
    let mut deadlines = Deadlines {
        queue: VecDeque::new(),
    };
    // Armed (`armed`) for the oldest deadline in flight.
    let expiry = tokio::time::sleep_until(Instant::now());
    tokio::pin!(expiry);
    let mut armed = false;
    let stop = crate::until(shutdown, |s| *s);
    tokio::pin!(stop);

    loop {
        if !armed {
            if let Some(&(_, at)) = deadlines.queue.front() {
                expiry.as_mut().reset(at);
                armed = true;
            }
        }
        // Biased, writing last: everything ready is taken in first, so one
        // write carries the whole batch.
        tokio::select! {
            biased;
            frame = reader.next() => {
                let mut frame = frame;
                // One clock reading for the batch.
                let now = Instant::now();
                // Slots freed by this batch of replies.
                let mut done = 0;
                loop {
                    let msg = match frame {
                        Some(Ok(f)) => match Message::parse(f) {
                            Ok(m) => m,
                            Err(e) => return End::Lost(format!("bad message: {e}")),
                        },
                        Some(Err(e)) => return End::Lost(format!("bad frame: {e}")),
                        None => return End::Lost("connection closed".into()),
                    };
                    match msg.kind() {
                        MessageType::Heartbeat => {}
                        MessageType::Reply | MessageType::Exception => {
                            match pending.remove(&msg.seqid()) {
                                Some(p) => {
                                    // Already told it timed out: dropped.
                                    if let Some(reply) = p.reply {
                                        let arrived = p.deadline.checked_sub(s.rpc_timeout).unwrap_or(now);
                                        let us = now.saturating_duration_since(arrived).as_micros();
                                        counters.observe_latency(us as u64);
                                        reply.reply(msg);
                                    }
                                    done += 1;
                                }
                                None => tracing::debug!(worker = id, seqid = msg.seqid(), "reply to unknown seqid dropped"),
                            }
                        }
                        MessageType::Stop if !stopping => {
                            stopping = true;
                            dispatcher.stop_worker(id);
                            // Jobs handed over before the STOP was seen go elsewhere.
                            let mut unsent = Vec::new();
                            while let Ok(job) = rx.try_recv() {
                                unsent.push(job);
                            }
                            tracing::info!(worker = id, inflight = pending.len(), requeued = unsent.len(), "worker stopping");
                            dispatcher.requeue(id, unsent);
                            writer.push(stop_confirm().freeze());
                        }
                        other => tracing::debug!(worker = id, ?other, "unexpected message from worker ignored"),
                    }
                    match reader.next_buffered() {
                        Some(f) => frame = Some(f),
                        None => break,
                    }
                }
                last_heard = now;
                if done > 0 {
                    counters.served.add(done as u64);
                    dispatcher.release(id, done);
                    deadlines.trim(pending);
                }
            }
            job = rx.recv(), if !stopping => {
                let Some(job) = job else { return End::Closed };
                let mut job = Some(job);
                // Done without a reply to wait for: oneways once written,
                // jobs whose caller gave up before they left.
                let mut released = 0;
                let now = Instant::now();
                while let Some(Job { mut msg, reply, deadline }) = job.take() {
                    match reply {
                        Some(reply) if reply.is_closed() || now >= deadline => {
                            reply.send(Outcome::Expired);
                            released += 1;
                        }
                        Some(reply) => {
                            loop {
                                next_seqid = next_seqid.wrapping_add(1);
                                if !pending.contains_key(&next_seqid) {
                                    break;
                                }
                            }
                            msg.set_seqid(next_seqid);
                            pending.insert(next_seqid, Pending { reply: Some(reply), deadline });
                            deadlines.queue.push_back((next_seqid, deadline));
                            writer.push(msg.into_bytes());
                        }
                        None => {
                            writer.push(msg.into_bytes());
                            released += 1;
                        }
                    }
                    // Everything already handed over goes out in one write.
                    job = rx.try_recv().ok();
                }
                if released > 0 {
                    dispatcher.release(id, released);
                }
            }
            () = &mut expiry, if armed => {
                armed = false;
                let now = Instant::now();
                while let Some(&(seqid, at)) = deadlines.queue.front() {
                    if let Some(p) = pending.get_mut(&seqid) {
                        if p.waiting() && at > now {
                            break;
                        }
                        // The slot stays taken until the worker answers.
                        if let Some(reply) = p.reply.take() {
                            reply.send(Outcome::TimedOut);
                        }
                    }
                    deadlines.queue.pop_front();
                }
            }
            _ = ticker.tick() => {
                if last_heard.elapsed() > s.heartbeat_timeout {
                    return End::Lost(format!("no heartbeat echo for {:?}", last_heard.elapsed()));
                }
                if last_ping.is_some_and(|p| last_heard < p) {
                    counters.heartbeats_missed.add(1);
                }
                last_ping = Some(Instant::now());
                writer.push(heartbeat(0).freeze());
                counters.heartbeats_sent.add(1);
            }
            _ = &mut stop => return End::Closed,
            // Writing races reading: replies keep being read while the
            // worker is slow to take requests (no deadlock on full buffers).
            written = writer.write_some(), if !writer.is_empty() => {
                if let Err(e) = written {
                    return End::Lost(format!("write failed: {e}"));
                }
            }
        }
    }
}
