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

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rpc_codec::{heartbeat, stop_confirm, Message, MessageType};
use rpc_engine::conn::{self, End};
use rpc_engine::drain;
use rpc_engine::{Cx, Failure, Flow, Hop, Lost, Options, SeqTable};
use rpc_transport::Stream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::dispatch::{Dispatcher, Job, WorkerId};
use crate::metrics::WorkerCounters;
use crate::reply::ReplyTo;
use crate::supervise::Children;

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub max_frame: usize,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    /// A request arrived `rpc_timeout` before its deadline (for latency).
    pub rpc_timeout: Duration,
    /// The supervised workers (`worker_command`), among which a TCP
    /// connection's process is looked for.
    pub children: Option<Arc<Children>>,
}

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

pub async fn serve(
    stream: Stream,
    dispatcher: Arc<Dispatcher>,
    settings: Arc<WorkerSettings>,
    mut shutdown: drain::Watch,
) {
    let peer = stream.peer();
    let (tx, rx) = mpsc::unbounded_channel();
    let counters = Arc::new(WorkerCounters::new(peer.to_string()));
    find_pid(&stream, &counters, settings.children.as_ref());
    let id = dispatcher.add_worker(tx, counters.clone());
    match counters.pid.load(std::sync::atomic::Ordering::Relaxed) {
        0 => tracing::info!(worker = id, %peer, "worker connected"),
        pid => tracing::info!(worker = id, %peer, pid, "worker connected"),
    }
    let now = Instant::now();
    let mut hop = WorkerConn {
        id,
        dispatcher: &dispatcher,
        s: &settings,
        counters: &counters,
        rx,
        pending: SeqTable::new(),
        deadlines: Deadlines::default(),
        last_heard: now,
        last_ping: None,
        next_tick: now + settings.heartbeat_interval,
        stopping: false,
        suspect: false,
        freed: 0,
        answered: 0,
    };
    // Replies are read whatever is queued for the worker.
    let opts = Options {
        write_buffer_limit: usize::MAX,
        ..Options::new(settings.max_frame)
    };
    // Borrowed, not moved: the watch must live until the connection ends,
    // since the server's drain waits for it.
    let stop = shutdown.signaled();
    let end = conn::run(&mut hop, stream, stop, &opts).await;
    dispatcher.remove_worker(id);
    // Nothing more can arrive once removed: what is left was never written.
    hop.rx.close();
    let unsent = std::iter::from_fn(|| hop.rx.try_recv().ok()).collect();
    dispatcher.requeue(id, unsent);
    let failure = match end {
        // (A worker connection never hands its socket off.)
        End::Closed | End::HandedOff(_) => Failure::Stopping("the LB"),
        // Announced STOP, answered everything, closed: a graceful end.
        End::Lost(cause) if hop.stopping && hop.pending.is_empty() => Failure::Lost {
            peer: peer.as_str().into(),
            cause,
        },
        End::Lost(cause) => {
            tracing::warn!(worker = id, %peer, %cause, "worker lost");
            Failure::Lost {
                peer: peer.as_str().into(),
                cause,
            }
        }
    };
    for p in hop.pending.drain() {
        if let Some(reply) = p.reply {
            reply.fail(failure.clone());
        }
    }
    tracing::info!(worker = id, %peer, "worker disconnected");
}

/// Records the worker's process id: at once on a Unix socket
/// (`SO_PEERCRED`); for TCP, from `/proc` among the supervised workers.
fn find_pid(stream: &Stream, counters: &Arc<WorkerCounters>, children: Option<&Arc<Children>>) {
    if let Some(pid) = stream.peer_pid() {
        counters
            .pid
            .store(pid, std::sync::atomic::Ordering::Relaxed);
    } else if let (Some((local, peer)), Some(children)) = (stream.tcp_addrs(), children) {
        children.find_tcp_peer(local, peer, counters.clone());
    }
}

/// Deadlines of the requests in flight, in the order they were written
/// (which is deadline order but for requeued jobs, a few ms apart). The
/// connection's timer is armed for the oldest; answered entries leave the
/// front as replies come, and the queue is compacted when a stuck request
/// at its head holds many answered ones behind it.
#[derive(Default)]
struct Deadlines {
    queue: VecDeque<(i32, Instant)>,
}

impl Deadlines {
    /// Drops answered entries from the front (and everywhere, when they
    /// pile up behind a long-running request).
    fn trim(&mut self, pending: &SeqTable<Pending>) {
        while let Some(&(seqid, _)) = self.queue.front() {
            if pending.get(seqid).is_some_and(Pending::waiting) {
                break;
            }
            self.queue.pop_front();
        }
        if self.queue.len() > 2 * pending.len() + 64 {
            self.queue
                .retain(|(seqid, _)| pending.get(*seqid).is_some_and(Pending::waiting));
        }
    }

    /// Tells the callers of requests past their deadline that they timed
    /// out; their slots stay taken until the worker answers.
    fn expire(&mut self, pending: &mut SeqTable<Pending>, now: Instant) {
        while let Some(&(seqid, at)) = self.queue.front() {
            if let Some(p) = pending.get_mut(seqid) {
                if p.waiting() && at > now {
                    break;
                }
                if let Some(reply) = p.reply.take() {
                    reply.fail(Failure::Timeout);
                }
            }
            self.queue.pop_front();
        }
    }
}

/// One worker connection as a hop of the engine: jobs from the
/// dispatcher are its events, the worker's replies its messages; its
/// timer serves the oldest deadline in flight and the heartbeat.
struct WorkerConn<'a> {
    id: WorkerId,
    dispatcher: &'a Dispatcher,
    s: &'a WorkerSettings,
    counters: &'a WorkerCounters,
    rx: mpsc::UnboundedReceiver<Job>,
    /// Where the caller's seqid is swapped for this connection's, and back.
    pending: SeqTable<Pending>,
    deadlines: Deadlines,
    last_heard: Instant,
    /// When the last heartbeat went out, to count intervals without an echo.
    last_ping: Option<Instant>,
    next_tick: Instant,
    stopping: bool,
    /// A heartbeat went unanswered: the dispatcher holds new jobs back.
    suspect: bool,
    /// Slots freed in this batch without a reply to wait for: oneways once
    /// written, jobs whose caller gave up before they left.
    freed: usize,
    /// Slots freed in this batch by replies.
    answered: usize,
}

impl WorkerConn<'_> {
    /// When silence makes the worker lost.
    fn silent_until(&self) -> Instant {
        self.last_heard + self.s.heartbeat_timeout
    }

    /// The worker sent STOP: no new jobs; those handed over before it was
    /// seen go elsewhere.
    fn stop(&mut self, cx: &mut Cx<'_>) {
        self.stopping = true;
        self.dispatcher.stop_worker(self.id);
        let unsent: Vec<Job> = std::iter::from_fn(|| self.rx.try_recv().ok()).collect();
        tracing::info!(
            worker = self.id,
            inflight = self.pending.len(),
            requeued = unsent.len(),
            "worker stopping"
        );
        self.dispatcher.requeue(self.id, unsent);
        cx.send(stop_confirm().freeze());
    }

    fn heartbeat(&mut self, now: Instant, cx: &mut Cx<'_>) -> Flow {
        self.next_tick = now + self.s.heartbeat_interval;
        if self.last_ping.is_some_and(|p| self.last_heard < p) {
            self.counters.heartbeats_missed.add(1);
            if !self.suspect {
                // Nothing since the last heartbeat: the queue goes to the
                // others until this worker answers.
                tracing::warn!(
                    worker = self.id,
                    "worker missed a heartbeat: no new calls until it answers"
                );
                self.suspect = true;
                self.dispatcher.set_suspect(self.id, true);
            }
        }
        self.last_ping = Some(now);
        cx.send(heartbeat(0).freeze());
        self.counters.heartbeats_sent.add(1);
        Flow::Continue
    }
}

impl Hop for WorkerConn<'_> {
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
        !self.stopping
    }

    fn on_event(&mut self, job: Job, cx: &mut Cx<'_>) -> Flow {
        let Job {
            mut msg,
            reply,
            deadline,
        } = job;
        match reply {
            Some(reply) if reply.is_closed() || cx.now() >= deadline => {
                reply.fail(Failure::TimeoutInQueue);
                self.freed += 1;
            }
            Some(reply) => {
                let reply = Some(reply);
                let seqid = self.pending.assign(&mut msg, Pending { reply, deadline });
                self.deadlines.queue.push_back((seqid, deadline));
                cx.send(msg.into_bytes());
            }
            None => {
                cx.send(msg.into_bytes());
                self.freed += 1;
            }
        }
        Flow::Continue
    }

    fn on_events_closed(&mut self, _cx: &mut Cx<'_>) -> Flow {
        Flow::Finish
    }

    fn on_message(&mut self, mut msg: Message, cx: &mut Cx<'_>) -> Flow {
        let now = cx.now();
        self.last_heard = now;
        if self.suspect {
            tracing::info!(worker = self.id, "worker answers again");
            self.suspect = false;
            self.dispatcher.set_suspect(self.id, false);
        }
        match msg.kind() {
            MessageType::Heartbeat => {}
            MessageType::Reply | MessageType::Exception => match self.pending.restore(&mut msg) {
                Some(p) => {
                    // Already told it timed out: dropped.
                    if let Some(reply) = p.reply {
                        let arrived = p.deadline.checked_sub(self.s.rpc_timeout).unwrap_or(now);
                        let us = now.saturating_duration_since(arrived).as_micros();
                        self.counters.observe_latency(us as u64);
                        reply.reply(msg);
                    }
                    self.answered += 1;
                }
                None => {
                    tracing::debug!(
                        worker = self.id,
                        seqid = msg.seqid(),
                        "reply to unknown seqid dropped"
                    )
                }
            },
            MessageType::Stop if !self.stopping => self.stop(cx),
            other => {
                tracing::debug!(
                    worker = self.id,
                    ?other,
                    "unexpected message from worker ignored"
                )
            }
        }
        Flow::Continue
    }

    fn on_batch_end(&mut self, _cx: &mut Cx<'_>) {
        if self.answered > 0 {
            self.counters.served.add(self.answered as u64);
            self.deadlines.trim(&self.pending);
        }
        let freed = std::mem::take(&mut self.answered) + std::mem::take(&mut self.freed);
        if freed > 0 {
            self.dispatcher.release(self.id, freed);
        }
    }

    fn deadline(&self) -> Option<Instant> {
        let next = self.next_tick.min(self.silent_until());
        match self.deadlines.queue.front() {
            Some(&(_, at)) => Some(at.min(next)),
            None => Some(next),
        }
    }

    fn on_timer(&mut self, cx: &mut Cx<'_>) -> Flow {
        let now = cx.now();
        self.deadlines.expire(&mut self.pending, now);
        if self.silent_until() <= now {
            // Lost `heartbeat_timeout` after its last frame, not at the
            // next tick: its calls in flight fail now.
            return Flow::End(Lost::Silent(now - self.last_heard));
        }
        if self.next_tick <= now {
            return self.heartbeat(now, cx);
        }
        Flow::Continue
    }

    /// The LB is stopping: requests still in flight fail.
    fn on_shutdown(&mut self, _cx: &mut Cx<'_>) -> Flow {
        Flow::Finish
    }
}
